"""Is this microscope one the model knows? The per-session domain check of cell mode.

At export the model's logits on its validation images are summarised (``fit_reference``):
one Gaussian per predicted class with a shared covariance, and the distribution of each
cell's distance to the nearest class (log Mahalanobis distance). In a count session the first
``first_n`` counted cells are scored the same way; their mean distance, in standard errors of
the reference's mean, is ``z``. A class-conditional distance does not move when the class mix
changes (a session of neutrophils is not "new"), but moves when stain, optics or camera do
(docs/lab-loop.md: measured alarm rates).

States: ``checking`` (fewer than ``first_n`` cells yet), ``unchecked`` (the model carries no
reference), ``validated`` (a stored validation of this model on a microscope whose sessions
looked like this one, lgld-report --validate), ``familiar`` (z below the threshold) and
``new microscope``.

A confident call is shown as sure only when the check vouches for it (``DomainCheck.vouches``):
in a ``familiar`` session, in a ``validated`` one that looks familiar or whose validation was
good, and while ``checking`` only for a cell that itself looks like the reference (score within
``CELL_Z`` reference deviations) in a session whose cells so far look like it too (their mean
within ``CELL_MEAN_Z`` deviations, their z within the threshold). A
``new microscope`` session still counts its cells by type, but none is shown as sure. A model
without a reference vouches for everything, as before. Torch-free; a few microseconds a cell.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

METHOD = "logit-mahalanobis-1"
METADATA_KEY = "lgld.domain"
#: z above which a session is a new microscope (sessions of PBC/CellaVision: |z| < 2.5 in 99%).
THRESHOLD_Z = 6.0
#: z within which a session matches a stored validation record.
VALIDATED_Z = 6.0
#: While checking, a cell whose own score is more than this many reference deviations above the
#: reference mean is not shown as sure (PBC val: 95% of cells within; BCCD-dev: 6%).
CELL_Z = 2.0
#: ... and the mean score of the session's cells so far, that one included, must lie within
#: this many (a foreign first cell keeps a familiar-looking second one from being sure).
CELL_MEAN_Z = 1.0
#: A validated microscope that does not look familiar vouches for its calls only when its
#: validation's 95% interval starts at this accuracy or above.
SURE_ACCURACY = 0.9
CHECKING, UNCHECKED = "checking", "unchecked"
VALIDATED, FAMILIAR, NEW = "validated", "familiar", "new microscope"
_RIDGE = 1e-3


class DomainError(ValueError):
    """A domain reference that cannot be read or fitted."""


@dataclass
class DomainReference:
    """What the model's logits look like on the images it was validated on."""

    means: np.ndarray  # (classes, classes): mean logits of the cells called each class
    precision: np.ndarray  # (classes, classes): inverse shared covariance
    score_mean: float  # mean per-cell score on the reference images
    score_sd: float
    cells: int
    source: str = ""
    threshold_z: float = THRESHOLD_Z

    def to_dict(self) -> dict[str, Any]:
        return {"method": METHOD, "means": np.round(self.means, 6).tolist(),
                "precision": np.round(self.precision, 6).tolist(),
                "score_mean": round(self.score_mean, 6), "score_sd": round(self.score_sd, 6),
                "cells": self.cells, "source": self.source, "threshold_z": self.threshold_z}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DomainReference:
        try:
            if d.get("method") != METHOD:
                raise ValueError(f"unknown method {str(d.get('method'))[:40]!r}")
            means = np.asarray(d["means"], np.float64)
            precision = np.asarray(d["precision"], np.float64)
            k = means.shape[1]
            if means.ndim != 2 or precision.shape != (k, k) or not np.isfinite(precision).all():
                raise ValueError("means and precision do not fit together")
            ref = cls(means, precision, float(d["score_mean"]), float(d["score_sd"]),
                      int(d["cells"]), str(d.get("source", "")),
                      float(d.get("threshold_z", THRESHOLD_Z)))
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise DomainError(f"damaged domain reference: {exc}") from None
        if not (ref.score_sd > 0 and math.isfinite(ref.score_mean)):
            raise DomainError("damaged domain reference: score_sd must be > 0")
        return ref


def cell_scores(means: np.ndarray, precision: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """Per cell: log of the Mahalanobis distance of its logits to the nearest class mean."""
    x = np.asarray(logits, np.float64)
    diff = x[:, None, :] - means[None, :, :]  # (n, classes, dims)
    d2 = np.einsum("nkd,de,nke->nk", diff, precision, diff)
    return 0.5 * np.log(np.maximum(d2.min(axis=1), 1e-12))


def fit_reference(logits: np.ndarray, source: str = "") -> DomainReference:
    """Class-conditional Gaussians (shared covariance) of reference logits, and their scores."""
    x = np.asarray(logits, np.float64)
    if x.ndim != 2 or len(x) < 10 * x.shape[1] or not np.isfinite(x).all():
        raise DomainError(f"need at least {10 * max(1, x.shape[-1])} finite logit rows to fit "
                          f"a domain reference, got {len(x)}")
    called = x.argmax(axis=1)
    means = np.stack([x[called == k].mean(axis=0) if (called == k).any() else x.mean(axis=0)
                      for k in range(x.shape[1])])
    resid = x - means[called]
    cov = resid.T @ resid / len(x) + _RIDGE * np.eye(x.shape[1])
    precision = np.linalg.inv(cov)
    s = cell_scores(means, precision, x)
    return DomainReference(means, precision, float(s.mean()), float(s.std()), len(x), source)


def session_z(ref: DomainReference, scores: Sequence[float]) -> float:
    """How far a session's mean score lies from the reference, in standard errors."""
    n = len(scores)
    return (float(np.mean(scores)) - ref.score_mean) / (ref.score_sd / math.sqrt(n))


@dataclass
class DomainCheck:
    """The domain state of one count session, from its first ``first_n`` counted cells."""

    reference: DomainReference | None
    first_n: int = 50
    validations: list[dict[str, Any]] = field(default_factory=list)  # this model's records
    scores: list[float] = field(default_factory=list)

    def reset(self) -> None:
        self.scores = []

    def cell_scores(self, logits: np.ndarray) -> np.ndarray | None:
        """Per row of logits its score (NaN for a row that is not finite); None without a
        reference."""
        if self.reference is None:
            return None
        rows = np.asarray(logits, np.float64)
        if rows.ndim != 2 or not len(rows):
            return np.full(len(rows), np.nan)
        out = np.full(len(rows), np.nan)
        ok = np.isfinite(rows).all(axis=1)
        if ok.any():
            out[ok] = cell_scores(self.reference.means, self.reference.precision, rows[ok])
        return out

    def vouches(self, score: float | None) -> bool:
        """May a confident call of a cell with this score be shown as sure? (module docstring)"""
        ref = self.reference
        if ref is None:
            return True
        if self.decided:
            return self._session_vouches()
        if score is None or not math.isfinite(score):
            return False
        so_far = [*self.scores, score]
        mean_z = (float(np.mean(so_far)) - ref.score_mean) / ref.score_sd
        return ((score - ref.score_mean) / ref.score_sd <= CELL_Z and mean_z <= CELL_MEAN_Z
                and session_z(ref, so_far) <= ref.threshold_z)

    def _session_vouches(self) -> bool:
        assert self.reference is not None
        if session_z(self.reference, self.scores) <= self.reference.threshold_z:
            return True
        rec = self.matching_validation()
        try:
            return rec is not None and float(rec["validation"]["ci95"][0]) >= SURE_ACCURACY
        except (KeyError, TypeError, ValueError, IndexError):
            return False

    @property
    def decided(self) -> bool:
        return self.reference is not None and len(self.scores) >= self.first_n

    def add(self, logits: Sequence[np.ndarray]) -> bool:
        """Score counted cells (only the first ``first_n`` count); True when this call
        completed the check."""
        if self.reference is None or self.decided or not len(logits):
            return False
        rows = np.asarray(logits, np.float64)
        rows = rows[np.isfinite(rows).all(axis=1)]
        if not len(rows):
            return False
        s = cell_scores(self.reference.means, self.reference.precision, rows)
        self.scores.extend(s[: self.first_n - len(self.scores)].tolist())
        return self.decided

    def matching_validation(self) -> dict[str, Any] | None:
        """The stored validation whose session statistics this session matches, if any."""
        mean = float(np.mean(self.scores))
        best = None
        for rec in self.validations:
            d = rec.get("domain") or {}
            try:
                z = (mean - float(d["score_mean"])) / (float(d["score_sd"]) /
                                                        math.sqrt(len(self.scores)))
            except (KeyError, TypeError, ValueError, ZeroDivisionError):
                continue
            if abs(z) <= VALIDATED_Z and (best is None or abs(z) < best[0]):
                best = (abs(z), rec)
        return None if best is None else best[1]

    def state(self) -> dict[str, Any]:
        """The session's domain state for /api/count, /healthz, the page, log and report."""
        if self.reference is None:
            return {"state": UNCHECKED, "cells": 0, "needed": self.first_n,
                    "message": "this model carries no domain statistics: the microscope is "
                               "not checked"}
        n = len(self.scores)
        if n < self.first_n:
            return {"state": CHECKING, "cells": n, "needed": self.first_n,
                    "message": f"checking the microscope: {n} of the first {self.first_n} "
                               "cells scored"}
        z = session_z(self.reference, self.scores)
        out = {"cells": n, "needed": self.first_n, "z": round(z, 2),
               "score_mean": round(float(np.mean(self.scores)), 4),
               "score_sd": round(float(np.std(self.scores)), 4)}
        rec = self.matching_validation()
        if rec is not None:
            v = rec.get("validation", {})
            out.update(state=VALIDATED, validation=rec.get("validation"), message=(
                f"validated on this microscope: {v.get('right')}/{v.get('reviewed')} reviewed "
                f"cells right ({100 * v.get('accuracy', 0):.0f}%, 95% CI "
                f"{100 * v.get('ci95', [0, 0])[0]:.0f}-{100 * v.get('ci95', [0, 0])[1]:.0f}%)"))
        elif z <= self.reference.threshold_z:
            out.update(state=FAMILIAR, message="the cells look like the model's training "
                       "microscopes; cell types not validated on this microscope")
        else:
            out.update(state=NEW, message=(
                "new microscope: these cells do not look like the model's training images, so "
                "its cell types are not validated here: they are counted but none is shown as "
                "sure. Review at least 20 cells on the page "
                "(more narrow the interval), then run lgld-report LOG --validate to measure the "
                "model on this microscope"))
        return out
