"""Validation of a model on a microscope: reviewed cells -> accuracy with a Wilson interval.

A count session whose cells were reviewed on the page says how often the model was right on
this microscope: a confirmed cell was right, a reclassified one wrong, a rejected one (not a
white cell) does not count. ``lgld-report LOG --validate`` stores that figure, with the
session's domain statistics (its ``domain`` event), in ``validations.json`` in the state
directory beside the calibration. A later session of the same model whose domain statistics
match is then ``validated`` (:mod:`lgld.runtime.core.domain`), and the report carries it.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from lgld.runtime.core.files import write_atomic
from lgld.runtime.core.jsonlog import read_records

VALIDATIONS_FILE = "validations.json"
#: Fewer reviewed cells than this give an interval too wide to call a microscope validated.
MIN_REVIEWED = 20


class ValidationError(ValueError):
    """A session that cannot validate the model, or an unreadable validations file."""


def wilson(right: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion (95% by default)."""
    if n <= 0:
        return 0.0, 1.0
    p = right / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def session_validation(cells: list[dict[str, Any]], reviews: dict[Any, dict[str, Any]],
                       ) -> dict[str, Any]:
    """Right / reviewed of a session's counted cells (rejected and unreviewed left out)."""
    right = wrong = 0
    for cell in cells:
        review = reviews.get(cell.get("track"))
        if review is None or review.get("action") == "reject":
            continue
        if review.get("action") == "confirm":
            right += 1
        elif review.get("action") == "reclassify":
            right += review.get("class") == cell.get("class")
            wrong += review.get("class") != cell.get("class")
    n = right + wrong
    lo, hi = wilson(right, n)
    return {"reviewed": n, "right": right, "accuracy": round(right / n, 4) if n else None,
            "ci95": [round(lo, 4), round(hi, 4)]}


def load(folder: Path) -> list[dict[str, Any]]:
    """All stored validation records (an empty list when there are none)."""
    path = Path(folder) / VALIDATIONS_FILE
    if not path.is_file():
        return []
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
            raise ValueError("not a list of records")
    except (OSError, ValueError) as exc:
        raise ValidationError(f"{path} is unreadable ({exc}); move it away to start "
                              "afresh") from None
    return records


def for_model(records: list[dict[str, Any]], sha256: str) -> list[dict[str, Any]]:
    """The records of one model file (by its sha256)."""
    return [r for r in records if (r.get("model") or {}).get("sha256") == sha256 and sha256]


def read_session(log_path: str | os.PathLike, session_id: str | None = None) -> dict[str, Any]:
    """One session of a log as plain events: id, sample, model, cells, last review per
    track, and its domain check (the ``domain`` event, else the one in ``session_end``)."""
    sessions: dict[str, dict[str, Any]] = {}
    order: list[str] = []
    for r in read_records(log_path):
        sid = r.get("session")
        if not isinstance(sid, str):
            continue
        if sid not in sessions:
            sessions[sid] = {"id": sid, "sample": "", "model": {}, "cells": [], "reviews": {},
                             "domain": None}
            order.append(sid)
        s, event = sessions[sid], r.get("event")
        if event == "session_start":
            s["sample"] = str(r.get("sample") or "")
            s["model"] = r.get("model") if isinstance(r.get("model"), dict) else {}
        elif event == "cell":
            s["cells"].append(r)
        elif event == "review":
            s["reviews"][r.get("track")] = r
        elif event == "domain" or (event == "session_end" and isinstance(r.get("domain"), dict)
                                   and s["domain"] is None):
            s["domain"] = r if event == "domain" else r["domain"]
    if not order:
        raise ValidationError(f"{log_path}: no count session in the log")
    sid = session_id or order[-1]
    if sid not in sessions:
        raise ValidationError(f"{log_path}: no session {sid[:40]!r}")
    return sessions[sid]


def record(session: dict[str, Any], min_reviewed: int = MIN_REVIEWED) -> dict[str, Any]:
    """The validation record of a reviewed session (:func:`read_session`)."""
    model, domain = session["model"], session["domain"]
    if not model.get("sha256"):
        raise ValidationError(f"session {session['id']} does not name its model's sha256")
    v = session_validation(session["cells"], session["reviews"])
    if v["reviewed"] < min_reviewed:
        raise ValidationError(f"session {session['id']} has {v['reviewed']} reviewed cells "
                              f"(confirmed or reclassified); validating needs at least "
                              f"{min_reviewed}: review more cells on the page")
    if not domain or domain.get("score_mean") is None:
        raise ValidationError(f"session {session['id']} has no domain check result (the model "
                              "carries no domain reference, or fewer cells than the check "
                              "needs were counted)")
    return {"model": {k: model.get(k) for k in ("name", "sha256", "precision")},
            "session": session["id"], "sample": session.get("sample", ""),
            "time_unix": round(time.time(), 3), "validation": v,
            "domain": {k: domain.get(k) for k in ("score_mean", "score_sd", "cells", "z")}}


def save(folder: Path, new: dict[str, Any]) -> Path:
    """Add a record (replacing one of the same model and session) atomically."""
    folder = Path(folder)
    records = [r for r in load(folder) if not (r.get("session") == new["session"] and
               (r.get("model") or {}).get("sha256") == new["model"]["sha256"])]
    records.append(new)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        write_atomic(folder / VALIDATIONS_FILE, json.dumps(records, indent=1) + "\n")
    except OSError as exc:
        raise ValidationError(f"cannot write {folder / VALIDATIONS_FILE}: "
                              f"{exc.strerror or exc}") from None
    return folder / VALIDATIONS_FILE
