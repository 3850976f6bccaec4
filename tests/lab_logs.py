"""Small cell-mode logs with real crop files on disk, for the lab-loop tests (docs/log-format.md
events, format 1: session_start, cell, review, session_end)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

WBC5 = ["Basophil", "Eosinophil", "Lymphocyte", "Monocyte", "Neutrophil"]


def crop_image(seed: int, size: int = 48) -> np.ndarray:
    """A distinct little BGR image per seed (a dark blob on a light background)."""
    rng = np.random.default_rng(seed)
    im = np.full((size, size, 3), 220, np.uint8)
    cv2.circle(im, (size // 2, size // 2), size // 4, tuple(int(v) for v in rng.integers(40, 160,
                                                                                      3)), -1)
    im[rng.integers(0, size, 20), rng.integers(0, size, 20)] = 0
    return im


@dataclass
class LabLog:
    """Writes one log (and its crops under ``crops/<session>/``) in a folder."""

    folder: Path
    name: str = "results.jsonl"
    lines: list[dict] = field(default_factory=list)
    seed: int = 0  # crop images are crop_image(seed + 1), crop_image(seed + 2) ...

    @property
    def path(self) -> Path:
        return self.folder / self.name

    def session(self, sid: str, model: str = "lgld-wbc5", sha: str = "a" * 64,
                sample: str = "smear 1") -> str:
        self.lines.append({"event": "session_start", "session": sid,
                           "time": "2026-12-01T10:00:00+00:00", "sample": sample,
                           "model": {"name": model, "path": f"/zoo/{model}.onnx", "sha256": sha,
                                     "precision": "fp32", "classes": WBC5},
                           "calibration": {"um_per_px": 0.1}, "target": 100})
        return sid

    def cell(self, sid: str, track: int, label: str, confidence: float = 0.95,
             image: np.ndarray | None = None, save: bool = True) -> str:
        """A counted cell; its crop written to disk (unless save=False). Returns the crop path."""
        self.seed += 1
        rel = f"crops/{sid}/t{track:05d}.png"
        if save:
            (self.folder / rel).parent.mkdir(parents=True, exist_ok=True)
            cv2.imwrite(str(self.folder / rel), crop_image(self.seed) if image is None
                        else image)
        rest = (1 - confidence) / 4
        probs = {c: (confidence if c == label else rest) for c in WBC5}
        self.lines.append({"event": "cell", "session": sid, "time": "2026-12-01T10:01:00+00:00",
                           "track": track, "class": label, "confidence": confidence,
                           "probs": probs, "frames_seen": 5, "box": [0, 0, 40, 40],
                           "frame": track, "crop": rel})
        return rel

    def review(self, sid: str, track: int, action: str, label: str | None = None) -> None:
        rec = {"event": "review", "session": sid, "time": "2026-12-01T10:05:00+00:00",
               "track": track, "action": action}
        if label:
            rec["class"] = label
        self.lines.append(rec)

    def end(self, sid: str) -> None:
        self.lines.append({"event": "session_end", "session": sid,
                           "time": "2026-12-01T10:10:00+00:00", "counted": 0})

    def write(self) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path.write_text("".join(json.dumps(x) + "\n" for x in self.lines))
        return self.path


def reviewed_session(folder: Path, sid: str = "20261201-100000-abcd", per_class: int = 6,
                     classes: tuple[str, ...] = ("Eosinophil", "Lymphocyte", "Neutrophil"),
                     seed: int = 0, **session_kwargs) -> LabLog:
    """A session whose cells are all confirmed, ``per_class`` per class, tracks numbered 1..N."""
    log = LabLog(folder, seed=seed)
    log.session(sid, **session_kwargs)
    track = 0
    for name in classes:
        for _ in range(per_class):
            track += 1
            log.cell(sid, track, name)
            log.review(sid, track, "confirm")
    log.end(sid)
    return log
