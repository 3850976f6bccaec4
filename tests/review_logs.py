"""Synthetic cell-mode JSONL logs for the review/report tests, in log format 1
(docs/log-format.md: session_start, frame, cell, review, session_end, with ``time``, which
format 2 still reads), with real PBC crops from tests/data.

``LogBuilder`` keeps every event it wrote (``events``), so a test computes the expected counts
from the events themselves, not from the reader under test.
"""

from __future__ import annotations

import json
import random
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

WBC5 = ["Basophil", "Eosinophil", "Lymphocyte", "Monocyte", "Neutrophil"]
SAMPLES = Path(__file__).resolve().parent / "data" / "zoo_samples" / "WBC5"
# a differential-count-like mix: mostly neutrophils and lymphocytes
MIX = {"Neutrophil": 0.55, "Lymphocyte": 0.28, "Monocyte": 0.08, "Eosinophil": 0.06,
       "Basophil": 0.03}


class LogBuilder:
    """Write a cell-mode log into ``folder`` event by event (crops under ``folder/crops``).

    crops: "copy" saves one crop file per cell (like lgld-run with a snapshot folder),
    "shared" points every cell of a class at one of a few shared files (big logs), None logs
    ``"crop": null``.
    """

    def __init__(self, folder: Path, name: str = "results.jsonl", seed: int = 0,
                 crops: str | None = "copy", start: datetime | None = None) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / name
        self.rng = random.Random(seed)
        self.crops = crops
        self.now = start or datetime(2026, 12, 1, 9, 30, 0, tzinfo=UTC)
        self.lines: list[str] = []
        self.events: list[dict[str, Any]] = []
        self.session: str | None = None
        self.track = 0
        self.frame = 0
        self._samples = {c: sorted((SAMPLES / c).glob("*.jpg")) for c in WBC5}
        self._shared: dict[str, list[str]] = {}

    # --- events ---------------------------------------------------------------------------
    def _emit(self, record: dict[str, Any]) -> dict[str, Any]:
        self.events.append(record)
        self.lines.append(json.dumps(record, separators=(",", ":")))
        return record

    def _time(self, seconds: float) -> str:
        self.now += timedelta(seconds=seconds)
        return self.now.isoformat(timespec="milliseconds")

    def start(self, sample: str = "slide 7, donor A", target: int = 100,
              calibration: dict[str, Any] | None = None, model_path: str = "",
              sha256: str = "ab" * 32) -> str:
        sid = f"{self.now:%Y%m%d-%H%M%S}-{self.rng.randrange(16**4):04x}"
        self.session = sid
        self._emit({
            "event": "session_start", "session": sid, "time": self._time(0.5), "sample": sample,
            "model": {"name": "lgld-wbc5", "path": model_path or "/opt/lgld/lgld-wbc5.onnx",
                      "sha256": sha256, "precision": "fp32", "classes": list(WBC5)},
            "calibration": calibration, "target": target,
        })
        return sid

    def _crop(self, name: str, track: int) -> str | None:
        if self.crops is None or name not in self._samples:
            return None
        if self.crops == "shared":
            if name not in self._shared:
                rel = []
                for i, src in enumerate(self._samples[name][:3]):
                    dst = self.folder / "crops" / "shared" / f"{name}-{i}.jpg"
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(src, dst)
                    rel.append(dst.relative_to(self.folder).as_posix())
                self._shared[name] = rel
            return self.rng.choice(self._shared[name])
        dst = self.folder / "crops" / str(self.session) / f"{track:06d}.jpg"
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.rng.choice(self._samples[name]), dst)
        return dst.relative_to(self.folder).as_posix()

    def cell(self, name: str | None = None, confidence: float | None = None,
             frames: int = 2) -> dict[str, Any]:
        """A counted cell: ``frames`` frame events showing it, then its cell event."""
        self.track += 1
        true = name or self.rng.choices(list(MIX), weights=list(MIX.values()))[0]
        conf = confidence if confidence is not None else round(self.rng.uniform(0.55, 1.0), 4)
        label = true if conf >= 0.6 else "unclassified"
        rest = (1.0 - conf) / (len(WBC5) - 1)
        probs = {c: round(conf if c == true else rest, 4) for c in WBC5}
        x, y = self.rng.randrange(0, 560), self.rng.randrange(0, 400)
        box = [x, y, x + 70, y + 72]
        for _ in range(frames):
            self.frame += 1
            self._emit({
                "event": "frame", "time": self._time(0.25), "frame": self.frame, "mode": "cells",
                "session": self.session,
                "cells": [{"box": box, "class": true, "confidence": conf, "state": "ok",
                           "track": self.track, "probs": probs}],
                "latency_ms": 21.5,
            })
        return self._emit({
            "event": "cell", "session": self.session, "time": self._time(0.1),
            "track": self.track, "class": label, "confidence": conf, "probs": probs,
            "frames_seen": frames, "box": box, "frame": self.frame,
            "crop": self._crop(true, self.track),
        })

    def cells(self, n: int, frames: int = 2) -> list[dict[str, Any]]:
        return [self.cell(frames=frames) for _ in range(n)]

    def review(self, track: int, action: str, name: str | None = None) -> dict[str, Any]:
        record = {"event": "review", "session": self.session, "time": self._time(1.0),
                  "track": track, "action": action}
        if name is not None:
            record["class"] = name
        return self._emit(record)

    def end(self) -> dict[str, Any]:
        counted = sum(1 for e in self.events if e["event"] == "cell"
                      and e["session"] == self.session)
        return self._emit({"event": "session_end", "session": self.session,
                           "time": self._time(0.5), "counted": counted})

    def raw(self, line: str) -> None:
        """A line as is (torn JSON, a foreign record, an old field-mode record ...)."""
        self.lines.append(line)

    # --- output ---------------------------------------------------------------------------
    def write(self, rotate_every: int | None = None) -> Path:
        """Write the lines; with ``rotate_every``, split them like ResultLog's rotation
        (oldest in the highest-numbered ``.N``, newest in the log itself)."""
        chunks = ([self.lines[i:i + rotate_every] for i in range(0, len(self.lines),
                                                                 rotate_every)]
                  if rotate_every else [self.lines])
        names = [self.path.with_name(f"{self.path.name}.{n}") for n in
                 range(len(chunks) - 1, 0, -1)] + [self.path]
        for target, chunk in zip(names, chunks, strict=True):
            target.write_text("".join(line + "\n" for line in chunk), encoding="utf-8")
        return self.path


def session_cells(events: list[dict[str, Any]], session: str) -> list[dict[str, Any]]:
    return [e for e in events if e.get("event") == "cell" and e.get("session") == session]


def expected_reviewed(events: list[dict[str, Any]], session: str) -> dict[str, int]:
    """Reviewed counts straight from the events: last review per track wins, reject drops."""
    final = {e["track"]: e["class"] for e in session_cells(events, session)}
    for e in events:
        if e.get("event") == "review" and e.get("session") == session and e["track"] in final:
            if e["action"] == "reject":
                final[e["track"]] = None
            elif e["action"] == "reclassify":
                final[e["track"]] = e["class"]
            else:  # confirm: back to the model's class
                final[e["track"]] = next(c["class"] for c in session_cells(events, session)
                                         if c["track"] == e["track"])
    counts: dict[str, int] = {}
    for name in final.values():
        if name is not None:
            counts[name] = counts.get(name, 0) + 1
    return counts
