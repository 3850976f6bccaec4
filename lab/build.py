"""Build an ImageFolder data set from reviewed cell-mode sessions (the lab's own microscope).

Reads logs with :mod:`lgld.runtime.core.countlog` (reviews applied there), picks each
counted cell's saved crop, labels it by its review (confirm keeps the model's class, reclassify
gives the reviewer's, reject leaves it out) and, only when asked, by the model's own confident
class (marked ``"label_source": "model"`` in the manifest). Everything is checked before
anything is written (:func:`plan`); :func:`write` builds the tree in a temporary folder beside
the target and renames it into place, so a failed or refused build leaves nothing behind (and
the next build removes a temporary folder that a killed one left).

A log may come from another machine, or be crafted: crops are read only inside their crop
folder and only up to the ``images:`` source's pixel limit; class names must be the model's
and fit as folder names; every file written is checked to land inside the output folder. Crops
are read one at a time (planning keeps their hashes, not their bytes), so memory stays flat
however many there are.
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import re
import shutil
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from lgld.lab.manifest import MANIFEST_FORMAT, MANIFEST_NAME, MANIFEST_VERSION
from lgld.runtime.core.countlog import (
    UNCLASSIFIED,
    Cell,
    Session,
    SessionLogError,
    read_log,
)
from lgld.runtime.core.files import IMAGE_SUFFIXES
from lgld.runtime.core.untrusted import (
    UntrustedError,
    check_inside,
    check_name,
    check_pixels,
    read_bounded,
    utf8_safe,
)
from lgld.runtime.review.report import MAX_CROP_BYTES, MAX_PIXELS, crop_file


class DatasetError(ValueError):
    """The logs, crops or options cannot make a data set (one-line reason; nothing written)."""


@dataclass(frozen=True)
class Source:
    """One log and the folder its crop paths are relative to (the log's own folder by default)."""

    log: Path
    crops: Path


@dataclass
class Options:
    min_per_class: int = 5
    include_unreviewed: bool = False
    min_confidence: float = 0.9  # for --include-unreviewed: the model's label must be this sure
    omit_small: bool = False  # leave out classes below min_per_class instead of refusing
    sessions: list[str] = field(default_factory=list)  # only these session ids (all if empty)


@dataclass
class Entry:
    """One image of the data set, with where it came from."""

    label: str
    label_source: str  # review:confirm | review:reclassify | model
    source: Path
    sha256: str  # of the bytes checked when planning; writing copies only those bytes
    cell: Cell
    session: Session
    log_index: int

    @property
    def group(self) -> str:
        """The counted cell this crop shows: all crops of one cell stay in one split part."""
        track = self.cell.track if self.cell.track is not None else self.cell.crop
        return f"{self.session.id}/{track}"


@dataclass
class Plan:
    """A checked data set, ready to write: its images, what was left out and why."""

    sources: list[Source]
    sessions: list[tuple[int, Session]]
    entries: list[Entry]
    left_out: Counter
    omitted_classes: dict[str, int]
    duplicates: list[dict[str, str]]
    options: Options

    def counts(self) -> dict[str, Counter]:
        """Per class: images by label source (``reviewed`` / ``model``)."""
        out: dict[str, Counter] = {}
        for e in self.entries:
            kind = "model" if e.label_source == "model" else "reviewed"
            out.setdefault(e.label, Counter())[kind] += 1
        return dict(sorted(out.items()))


def _model_key(session: Session) -> str:
    return session.model.sha256 or session.model.name or "?"


def _describe_model(session: Session) -> str:
    sha = session.model.sha256[:12] if session.model.sha256 else "no sha256"
    return f"{session.model.name or '?'} ({sha})"


def _select_sessions(sources: list[Source], options: Options) -> list[tuple[int, Session]]:
    chosen: list[tuple[int, Session]] = []
    seen_ids: set[str] = set()
    for i, src in enumerate(sources):
        try:
            log = read_log(src.log)
        except SessionLogError as exc:
            raise DatasetError(str(exc)) from None
        sessions = [s for s in log.sessions if s.cells]
        seen_ids.update(s.id for s in log.sessions)
        if options.sessions:
            sessions = [s for s in sessions if s.id in options.sessions]
        if not sessions:
            if options.sessions:
                continue
            raise DatasetError(f"{src.log} has no counted cells (is it a --mode cells log?)")
        if not any(s.reviews for s in sessions):
            raise DatasetError(f"{src.log} has no reviews: review the counted cells on the "
                               "page first (nothing written)")
        chosen += [(i, s) for s in sessions]
    missing = [sid for sid in options.sessions if sid not in seen_ids]
    if missing:
        raise DatasetError(f"session {missing[0]!r} is not in the logs; sessions: "
                           f"{', '.join(sorted(seen_ids))}")
    if not chosen:
        raise DatasetError("none of the chosen sessions has counted cells")
    for i, session in chosen:
        for name in session.model.classes:
            try:
                check_name(name, "model class")
            except UntrustedError as exc:
                raise DatasetError(f"{sources[i].log}, session {session.id!r}: {exc} "
                                   "(nothing written)") from None
    models = {_model_key(s): s for _, s in chosen}
    if len(models) > 1:
        listed = "; ".join(f"{_describe_model(s)} in {s.id}" for s in models.values())
        raise DatasetError(f"sessions used different models ({listed}): build one data set "
                           "per model (--session)")
    return chosen


def _label(cell: Cell, session: Session, options: Options) -> tuple[str, str] | str:
    """(class, label source) for a cell, or the reason it is left out. A class is only ever
    one of the model's classes (a class name from the log never becomes a path by itself)."""
    if cell.review is not None:
        name = cell.reviewed_class
        if name is None:
            return "rejected"
        if name == UNCLASSIFIED:
            return "unclassified"
        if name not in session.model.classes:
            return "class unknown to the model"
        return name, f"review:{cell.review}"
    if not options.include_unreviewed:
        return "unreviewed"
    if cell.model_class == UNCLASSIFIED or cell.confidence is None:
        return "unreviewed, unclassified"
    if cell.confidence < options.min_confidence:
        return "unreviewed, below --min-confidence"
    if cell.model_class not in session.model.classes:
        return "class unknown to the model"
    return cell.model_class, "model"


def read_crop(path: Path) -> bytes:
    """A crop file's bytes, checked: at most MAX_CROP_BYTES, an image header within the
    ``images:`` source's pixel limit (read before decoding), and an image OpenCV decodes;
    UntrustedError otherwise."""
    data = read_bounded(path, MAX_CROP_BYTES)
    check_pixels(data, MAX_PIXELS, str(path))
    try:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    except cv2.error:
        image = None
    if image is None:
        raise UntrustedError(f"{path}: not a readable image")
    return data


def plan(sources: list[Source], options: Options | None = None) -> Plan:
    """Read and check everything; DatasetError (one line) on any refusal. Writes nothing."""
    options = options or Options()
    if options.min_per_class < 1:
        raise DatasetError("--min-per-class must be >= 1")
    if not 0 <= options.min_confidence <= 1:
        raise DatasetError("--min-confidence must be within 0..1")
    for src in sources:
        if not src.crops.is_dir():
            raise DatasetError(f"crop folder not found: {src.crops}")
    chosen = _select_sessions(sources, options)
    left_out: Counter = Counter()
    entries: list[Entry] = []
    by_log: dict[int, list[str]] = {}
    referenced: Counter = Counter()
    for i, session in chosen:
        src = sources[i]
        for cell in session.cells:
            label = _label(cell, session, options)
            if isinstance(label, str):
                left_out[label] += 1
                continue
            if cell.crop is None:
                left_out["no crop saved"] += 1
                continue
            referenced[i] += 1
            path = crop_file(src.crops, cell.crop)
            if path is None and label[1] == "model":
                # the crop budget deletes unreviewed cells first: expected, not a mismatch
                left_out["unreviewed, crop pruned or missing"] += 1
                continue
            try:
                if path is None or path.suffix.lower() not in IMAGE_SUFFIXES:
                    raise UntrustedError(cell.crop)
                sha = hashlib.sha256(read_crop(path)).hexdigest()
            except (OSError, UntrustedError):
                by_log.setdefault(i, []).append(cell.crop)
                continue
            entries.append(Entry(label[0], label[1], path, sha, cell, session, i))
    for i, bad in by_log.items():
        src = sources[i]
        raise DatasetError(f"crop folder {src.crops} does not match {src.log}: {len(bad)} of "
                           f"{referenced[i]} crops missing or unreadable (first: {bad[0]})")
    if not entries:
        reasons = ", ".join(f"{n} {why}" for why, n in left_out.most_common()) or "no cells"
        raise DatasetError(f"no labelled crops in the chosen sessions ({reasons})")
    kept, duplicates = _deduplicate(entries)
    counts = Counter(e.label for e in kept)
    small = {c: n for c, n in sorted(counts.items()) if n < options.min_per_class}
    if small and not options.omit_small:
        shown = ", ".join(f"{c} {n}" for c, n in small.items())
        raise DatasetError(f"too few images for {shown} (--min-per-class {options.min_per_class}"
                           "): review more cells, or --omit-small to leave those classes out "
                           "(nothing written)")
    kept = [e for e in kept if e.label not in small]
    if len({e.label for e in kept}) < 2:
        raise DatasetError(f"fewer than 2 classes have --min-per-class {options.min_per_class} "
                           f"images (counts: {dict(sorted(counts.items()))}); nothing written")
    return Plan(sources, chosen, kept, left_out, small, duplicates, options)


def _deduplicate(entries: list[Entry]) -> tuple[list[Entry], list[dict[str, str]]]:
    """First image of each sha256 kept; the others listed (with both labels when they differ)."""
    first: dict[str, Entry] = {}
    dupes: list[dict[str, str]] = []
    for e in entries:
        if e.sha256 in first:
            k = first[e.sha256]
            dupes.append({"sha256": e.sha256, "kept": f"{k.group} ({k.label})",
                          "dropped": f"{e.group} ({e.label})"})
        else:
            first[e.sha256] = e
    return list(first.values()), dupes


def _file_name(e: Entry) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", e.group.replace("/", "_t")).strip("-.")
    return f"{stem}_{e.sha256[:12]}{e.source.suffix.lower()}"


def _iso(when: datetime | None) -> str | None:
    return when.isoformat() if when else None


def manifest(p: Plan, files: list[str]) -> dict[str, Any]:
    """The manifest of a planned data set (``files``: each entry's path in the data set)."""
    first = p.sessions[0][1]
    sources = []
    for i, src in enumerate(p.sources):
        sources.append({
            "log": str(src.log.resolve()), "crops": str(src.crops.resolve()),
            "sessions": [{
                "id": s.id, "sample": s.sample, "start": _iso(s.start), "end": _iso(s.finish),
                "model": vars(s.model), "calibration": s.calibration, "cells": len(s.cells),
                "reviewed": s.reviewed_cells, "rejected": s.rejected,
            } for j, s in p.sessions if j == i],
        })
    counts = {c: sum(n.values()) for c, n in p.counts().items()}
    return {
        "format": MANIFEST_FORMAT, "version": MANIFEST_VERSION,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "model": vars(first.model),
        "options": {"min_per_class": p.options.min_per_class,
                    "include_unreviewed": p.options.include_unreviewed,
                    "min_confidence": p.options.min_confidence if p.options.include_unreviewed
                    else None, "omit_small": p.options.omit_small},
        "classes": counts,
        "images_total": len(p.entries),
        "groups_total": len({e.group for e in p.entries}),
        "left_out": dict(p.left_out), "omitted_classes": p.omitted_classes,
        "duplicates": p.duplicates,
        "sources": sources,
        "images": [{
            "path": f, "sha256": e.sha256, "class": e.label, "label_source": e.label_source,
            "group": e.group, "session": e.session.id, "sample": e.session.sample,
            "track": e.cell.track, "crop": e.cell.crop, "model_class": e.cell.model_class,
            "confidence": e.cell.confidence, "probs": e.cell.probs,
            "frames_seen": e.cell.frames_seen, "source": e.log_index,
        } for e, f in zip(p.entries, files, strict=True)],
    }


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):  # another user's process; odd pid
        return True
    return True


def remove_stale_temp(out: Path) -> list[Path]:
    """Remove the ``.OUT.tmp-PID`` folders that builds of ``out`` killed midway left behind
    (their process is gone); a running build's folder is kept. Returns what was removed."""
    removed = []
    for tmp in out.parent.glob(f".{glob.escape(out.name)}.tmp-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if tmp.is_dir() and not tmp.is_symlink() and pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
    return removed


def _copy_checked(e: Entry, target: Path) -> None:
    """Copy a planned crop, refusing it when its bytes changed since they were checked."""
    data = read_crop(e.source)
    if hashlib.sha256(data).hexdigest() != e.sha256:
        raise DatasetError(f"crop {e.source} changed while the data set was built (nothing "
                           "written)")
    target.write_bytes(data)


def write(p: Plan, out: Path) -> dict[str, Any]:
    """Write the data set to ``out`` (which must not exist) atomically; return its manifest.
    Each crop is read, checked against its planned sha256 and written, one at a time."""
    out = Path(out)
    if out.exists():
        raise DatasetError(f"{out} already exists; choose a new output folder")
    if not out.parent.is_dir():
        raise DatasetError(f"output's parent folder not found: {out.parent}")
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir()
        files = []
        for e in p.entries:
            rel = f"{check_name(e.label, 'class')}/{_file_name(e)}"
            target = check_inside(tmp, rel, "data-set file")
            target.parent.mkdir(exist_ok=True)
            _copy_checked(e, target)
            files.append(rel)
        data = manifest(p, files)
        text = utf8_safe(json.dumps(data, indent=1, ensure_ascii=False))  # log texts: valid UTF-8
        (tmp / MANIFEST_NAME).write_text(text + "\n", encoding="utf-8")
        os.rename(tmp, out)
    except UntrustedError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DatasetError(f"{exc} (nothing written)") from None
    except BaseException:
        with contextlib.suppress(OSError):
            shutil.rmtree(tmp)
        raise
    return data
