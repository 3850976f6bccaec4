"""The live page's side of the review: the current count session's gallery as JSON, reviews,
crops and the report, all served from the running count's in-memory replay (never by reading
the log again, which a long run makes tens of MB).

The web module owns the routes; the count session (:mod:`lgld.runtime.cells.session`) checks
each review, writes it through the app's log writer and moves the live count.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lgld.runtime.cells.session import CountSession
from lgld.runtime.core.countlog import Cell, ReviewError, Session, SessionLog
from lgld.runtime.review.order import review_order
from lgld.runtime.review.report import CropFiles, percentages, render_html

__all__ = ["ReviewDesk", "ReviewError", "gallery"]


def _counts(session: Session) -> dict[str, Any]:
    """The gallery's counts (O(classes): the session keeps them as cells come)."""
    model, reviewed = session.model_counts(), session.reviewed_counts()
    return {
        "session": session.id,
        "sample": session.sample,
        "target": session.target,
        "classes": session.classes(),
        "review_classes": session.review_classes(),
        "model_counts": model,
        "reviewed_counts": reviewed,
        "reviewed_percent": {k: round(v, 1) for k, v in percentages(reviewed).items()},
        "cells_total": len(session.cells),
        "reviewed_total": sum(reviewed.values()),
        "rejected": session.rejected,
    }


def _cell(cell: Cell, crops: CropFiles) -> dict[str, Any]:
    return {
        "track": cell.track,
        "model_class": cell.model_class,
        "class": cell.reviewed_class,  # None: rejected
        "confidence": cell.confidence,
        "review": cell.review,
        "crop": bool(crops.found(cell)),
    }


def gallery(log: SessionLog, session: Session) -> dict[str, Any]:
    """The page's review gallery: counts and every counted cell of the session."""
    crops = CropFiles(log)
    return {**_counts(session), "review_first": review_first(session),
            "cells": [_cell(cell, crops) for cell in session.cells]}


def review_first(session: Session, limit: int = 24) -> list[Any]:
    """Tracks of the unreviewed cells to review first for adapting the model (review.order)."""
    todo = [c for c in session.cells if c.review is None and c.probs]
    classes = session.classes()
    probs = [[float(c.probs.get(k) or 0.0) for k in classes] for c in todo]
    return [todo[i].track for i in review_order(probs)[:limit]]


class ReviewDesk:
    """What the web routes call: the current session's gallery, reviews, crops and report."""

    def __init__(self, count: CountSession) -> None:
        self.count = count

    def _view(self) -> SessionLog:
        view = self.count.view()
        if view is None:
            raise ReviewError("no count session yet", 409)
        return view

    def gallery(self) -> dict[str, Any]:
        view = self.count.view()
        if view is None:
            return {"session": None, "cells": []}
        return gallery(view, view.sessions[0])

    def review(self, body: Any) -> dict[str, Any]:
        """Check, log and count one review; the updated counts and the reviewed cell (not the
        whole gallery: an answer in O(1)). ReviewError when refused."""
        cell = self.count.review(body)
        view = self.count.view(files=False)
        assert view is not None  # a review needs a session
        return {**_counts(view.sessions[0]), "cell": _cell(cell, CropFiles(view))}

    def crop(self, track: Any) -> bytes | None:
        """A counted cell's crop, looked up by track (a request never names a file); None when
        none was saved or it is gone."""
        cell = self.count.cell(track)
        if self.count.log_path is None:
            return None
        crops = CropFiles(SessionLog(self.count.log_path, [], []))
        try:
            return Path(str(crops.path(cell))).read_bytes() if crops.found(cell) else None
        except OSError:
            return None

    def report_html(self) -> str:
        """The current session's lab report (the same HTML as lgld-report)."""
        view = self._view()
        return render_html(view, view.sessions[0])
