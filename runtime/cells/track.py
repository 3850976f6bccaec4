"""Tracking white cells across frames, so that a cell seen in 40 frames is counted once.

Association is greedy nearest-centre matching with a motion gate: a detection continues a track
when its centre is within ``gate = max_speed * frame_width * dt + 0.5 * cell diameter`` of where
the track's constant-velocity prediction puts it (the stage moves at most ``max_speed`` frame
widths per second). Unmatched detections start tracks; a track not seen for ``max_missed``
frames ends. A track's class is the mean of its class probabilities over the frames in which
the cell was whole (partial crops are not averaged in). It is counted once, the first time it
has been seen whole in ``min_frames`` frames: as its class when the mean confidence reaches
``min_confidence``, else as "unclassified". Optional per-detection domain scores
(core.domain) are averaged the same way, for the stage to decide whether a call is shown as sure.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from lgld.runtime.cells.detect import Detection
from lgld.runtime.config import CellsSection

UNCLASSIFIED = "unclassified"
#: Per-cell states: a sure call, below the confidence gate, confident but not vouched for on
#: this microscope (core.domain), cut by the frame's border.
OK, UNCERTAIN, UNFAMILIAR, PARTIAL = "ok", "uncertain", "unfamiliar", "partial"


@dataclass(frozen=True)
class TrackerSettings:
    """Association and counting rules (see the module docstring)."""

    min_frames: int = CellsSection.min_frames
    min_confidence: float = CellsSection.min_confidence
    max_speed: float = CellsSection.max_speed  # frame widths per second
    max_missed: int = CellsSection.max_missed

    @classmethod
    def from_config(cls, c: CellsSection) -> TrackerSettings:
        return cls(c.min_frames, c.min_confidence, c.max_speed, c.max_missed)

    def __post_init__(self) -> None:
        if self.min_frames < 1:
            raise ValueError("cells min_frames must be >= 1")
        if not 0 <= self.min_confidence <= 1:
            raise ValueError("cells min_confidence must be in [0, 1]")
        if self.max_speed <= 0:
            raise ValueError("cells max_speed must be > 0")
        if self.max_missed < 0:
            raise ValueError("cells max_missed must be >= 0")


@dataclass
class Track:
    """One cell followed across frames."""

    id: int
    centre: tuple[float, float]
    box: tuple[int, int, int, int]
    diameter: float
    time: float
    velocity: tuple[float, float] = (0.0, 0.0)  # pixels per second
    prob_sum: np.ndarray | None = None
    score_sum: float = 0.0  # domain scores of the whole frames that had one
    scored: int = 0
    frames_seen: int = 0  # frames in which the cell was whole and classified
    missed: int = 0
    partial: bool = False
    counted_as: str | None = None  # class it was counted as (None = not yet counted)

    def mean_probs(self) -> np.ndarray | None:
        if self.prob_sum is None or self.frames_seen == 0:
            return None
        return self.prob_sum / self.frames_seen

    def mean_score(self) -> float | None:
        return self.score_sum / self.scored if self.scored else None


@dataclass
class TrackedCell:
    """What a frame shows for one cell: its track's class so far and its state."""

    track: int
    box: tuple[int, int, int, int]
    label: str | None  # class name (None until the cell was seen whole once)
    confidence: float
    state: str  # ok | uncertain | partial (the stage may make an ok one unfamiliar)
    probs: dict[str, float]
    frames_seen: int
    counted: bool
    domain_score: float | None = None  # mean domain score of the track's whole frames


@dataclass
class CountedCell:
    """A track that was just counted (one per track, ever)."""

    track: int
    label: str  # a class name or UNCLASSIFIED
    confidence: float
    probs: dict[str, float]
    frames_seen: int
    box: tuple[int, int, int, int]
    detection_index: int  # index of the cell in this frame's detections (for its crop)
    state: str = OK  # ok, or uncertain when counted as unclassified (the stage: unfamiliar)
    domain_score: float | None = None


@dataclass
class TrackUpdate:
    """One frame's tracking result."""

    cells: list[TrackedCell] = field(default_factory=list)
    counted: list[CountedCell] = field(default_factory=list)


class CellTracker:
    """Follows detections across frames and decides when a cell is counted."""

    def __init__(self, classes: Sequence[str], settings: TrackerSettings | None = None) -> None:
        self.classes = list(classes)
        self.settings = settings or TrackerSettings()
        self.tracks: list[Track] = []
        self._next_id = 1

    def reset(self, next_id: int | None = None) -> None:
        """Forget every track (a new count); ids keep increasing unless next_id is given."""
        self.tracks = []
        if next_id is not None:
            self._next_id = next_id

    def continue_after(self, track: int) -> None:
        """New tracks get ids above ``track`` (ids already in a log are never reused)."""
        self._next_id = max(self._next_id, track + 1)

    def update(self, detections: Sequence[Detection], probs: np.ndarray | None,
               frame_width: int, now: float, scores: np.ndarray | None = None) -> TrackUpdate:
        """Associate one frame's detections (and their class probabilities, and optionally
        their domain scores) with the tracks."""
        s = self.settings
        pairs = []
        for ti, t in enumerate(self.tracks):
            dt = max(0.0, now - t.time)
            px, py = t.centre[0] + t.velocity[0] * dt, t.centre[1] + t.velocity[1] * dt
            gate = s.max_speed * frame_width * max(dt, 1e-3) + 0.5 * t.diameter
            for di, d in enumerate(detections):
                dist = math.hypot(d.centre[0] - px, d.centre[1] - py)
                if dist <= gate:
                    pairs.append((dist, ti, di))
        pairs.sort()
        track_of: dict[int, Track] = {}
        used_tracks: set[int] = set()
        for _, ti, di in pairs:
            if ti in used_tracks or di in track_of:
                continue
            used_tracks.add(ti)
            track_of[di] = self.tracks[ti]
        for ti, t in enumerate(self.tracks):
            if ti not in used_tracks:
                t.missed += 1
        self.tracks = [t for t in self.tracks if t.missed <= s.max_missed]

        update = TrackUpdate()
        for di, d in enumerate(detections):
            t = track_of.get(di)
            if t is None:
                t = Track(self._next_id, d.centre, d.box, d.diameter, now)
                self._next_id += 1
                self.tracks.append(t)
            else:
                dt = now - t.time
                if dt > 0:
                    v = ((d.centre[0] - t.centre[0]) / dt, (d.centre[1] - t.centre[1]) / dt)
                    t.velocity = ((t.velocity[0] + v[0]) / 2, (t.velocity[1] + v[1]) / 2)
                t.centre, t.box, t.diameter, t.time, t.missed = d.centre, d.box, d.diameter, now, 0
            t.partial = d.partial
            if not d.partial and probs is not None:
                p = probs[di].astype(np.float64)
                t.prob_sum = p.copy() if t.prob_sum is None else t.prob_sum + p
                t.frames_seen += 1
                if scores is not None and np.isfinite(scores[di]):
                    t.score_sum += float(scores[di])
                    t.scored += 1
            counted = self._maybe_count(t, di)
            if counted is not None:
                update.counted.append(counted)
            update.cells.append(self._shown(t))
        return update

    def _label(self, t: Track) -> tuple[str | None, float, dict[str, float]]:
        mean = t.mean_probs()
        if mean is None:
            return None, 0.0, {}
        k = int(np.argmax(mean))
        return self.classes[k], float(mean[k]), dict(zip(self.classes, mean.round(4).tolist(),
                                                         strict=True))

    def _maybe_count(self, t: Track, index: int) -> CountedCell | None:
        if t.counted_as is not None or t.frames_seen < self.settings.min_frames:
            return None
        label, conf, probs = self._label(t)
        if label is None:
            return None
        state = OK
        if conf < self.settings.min_confidence:
            label, state = UNCLASSIFIED, UNCERTAIN
        t.counted_as = label
        return CountedCell(t.id, label, conf, probs, t.frames_seen, t.box, index, state,
                           t.mean_score())

    def _shown(self, t: Track) -> TrackedCell:
        label, conf, probs = self._label(t)
        if t.partial:
            state = PARTIAL
        elif label is None or conf < self.settings.min_confidence:
            state = UNCERTAIN
        else:
            state = OK
        return TrackedCell(t.id, t.box, label, conf, state, probs, t.frames_seen,
                           t.counted_as is not None, t.mean_score())
