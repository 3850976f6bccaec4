"""White-cell detection in a stained blood-smear frame, torch-free (OpenCV + numpy).

White cells are the only large objects with a nucleus, and the nucleus stain (the blue-purple
of Romanowsky/Wright/May-Grunwald-Giemsa stains) is what sets them apart from red cells. So:

1. Shrink the frame so that a typical white cell is :data:`WORK_DIAMETER` pixels wide.
2. Optical density relative to the frame's own background (the brightest pixels, per channel):
   ``OD_c = -log(I_c / I_background_c)``. A change of exposure or white balance multiplies
   each channel by a constant, which the background reference cancels.
3. Colour deconvolution (Ruifrok & Johnston 2001) with two stain vectors, nucleus and red cell,
   measured on both development data sets (PBC and BCCD): the nucleus-stain amount per pixel.
4. Hysteresis threshold on it (pixels above ``nucleus_low`` in components that reach
   ``nucleus_high``), a small opening against specks, connected components.
5. Lobes of one nucleus become one cell: components closer than a tenth of a cell diameter are
   clustered (a dilation followed by connected components). Touching white cells are split
   (:func:`split_cluster`).
6. A cluster with less nucleus area than a quarter of the smallest cell, or no part thicker
   than 0.3 of the smallest cell, is a platelet (clump), stain debris or noise and is dropped.
7. The cell box is centred on the nucleus, as wide as the nucleus extent plus a cytoplasm rim,
   clamped to the configured diameter range. A cell whose box leaves the frame is ``partial``.

``diameter_px`` is the expected white-cell diameter range in frame pixels; ``None`` measures it
from the red cells (their diameter is a biological constant, about 7.5 um, and a white cell is
:data:`WBC_PER_RBC` red-cell diameters wide on average; see :func:`measure_rbc_diameter`).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import cv2
import numpy as np

from lgld.runtime.config import CellsSection

#: Typical white-cell width in the working image (pixels); the frame is resized to this scale.
WORK_DIAMETER = 40.0
#: Stain vectors: optical density per channel, in OpenCV's B, G, R order (unit length). Measured
#: as the mean OD direction of the darkest nucleus pixels and of red-cell pixels on PBC and BCCD.
NUCLEUS_OD = (0.10, 0.84, 0.52)
RED_CELL_OD = (0.54, 0.72, 0.43)
#: Typical white-cell diameter in measured red-cell diameters (PBC: 0.362 x 5.42; docs/cells.md).
WBC_PER_RBC = 1.96
#: Default white-cell diameter range (config [cells] diameter_px: 640x480 at 100x).
DEFAULT_DIAMETER_PX = CellsSection().diameter_range() or (120.0, 330.0)
#: What sets the crops' scale: the measured red cells (else the range), or the range alone.
FRAMINGS = ("red-cells", "range")
#: The red cells overrule the configured range's framing when they measure a typical white cell
#: more than this factor off it: a per-frame measurement is noisy (+-15 %), a wrong objective
#: or camera is not (a PBC crop: 0.65x the 640x480 range).
FRAMING_TRUST = 1.35
#: More connected components than this in one frame: keep the largest, warn (smear artefacts).
MAX_COMPONENTS = 400


def _stain_unmixing() -> np.ndarray:
    """Row vector that turns an OD pixel (B, G, R) into the amount of nucleus stain."""
    n = np.asarray(NUCLEUS_OD, np.float64)
    r = np.asarray(RED_CELL_OD, np.float64)
    third = np.cross(n, r)
    stains = np.stack([n / np.linalg.norm(n), r / np.linalg.norm(r), third / np.linalg.norm(third)])
    return np.linalg.inv(stains)[:, 0].astype(np.float32)  # OD = c @ stains -> c = OD @ inv


_UNMIX = _stain_unmixing()


@dataclass(frozen=True)
class DetectorSettings:
    """What the detector needs to know; defaults suit a 640x480 frame at 100x."""

    diameter_px: tuple[float, float] | None = DEFAULT_DIAMETER_PX  # None = auto
    framing: str = CellsSection.framing  # red-cells | range: what sets the crops' scale
    max_cells: int = CellsSection.max_cells
    nucleus_low: float = CellsSection.nucleus_low
    nucleus_high: float = CellsSection.nucleus_high

    @classmethod
    def from_config(cls, c: CellsSection) -> DetectorSettings:
        return cls(c.diameter_range(), c.framing, c.max_cells, c.nucleus_low, c.nucleus_high)

    def __post_init__(self) -> None:
        if self.diameter_px is not None:
            lo, hi = self.diameter_px
            if not (4 <= lo <= hi):
                raise ValueError(f"cells diameter range must be 4 <= min <= max, got {lo}, {hi}")
        if self.framing not in FRAMINGS:
            raise ValueError(f"cells framing must be one of {', '.join(FRAMINGS)}, "
                             f"not {self.framing!r}")
        if self.max_cells < 1:
            raise ValueError("cells max_cells must be >= 1")
        if not 0 < self.nucleus_low <= self.nucleus_high:
            raise ValueError("need 0 < nucleus_low <= nucleus_high")


@dataclass
class Detection:
    """One white cell: its box in frame pixels and what it was found from."""

    box: tuple[int, int, int, int]  # x0, y0, x1, y1 (exclusive), clipped to the frame
    centre: tuple[float, float]  # nucleus centre, frame pixels
    diameter: float  # estimated cell diameter, frame pixels
    nucleus_area: float  # frame pixels
    partial: bool  # cut by the frame border: shown, never counted


@dataclass
class Detections:
    """All cells of one frame plus the scale they were found at."""

    cells: list[Detection]
    diameter_px: tuple[float, float]  # the range used (measured when auto)
    framing_diameter: float | None = None  # typical white cell from the red cells, if measured
    capped: bool = False  # more candidates than max_cells (or MAX_COMPONENTS) were found
    candidates: int = 0  # nucleus clusters before the cap
    warnings: list[str] = field(default_factory=list)

    @property
    def typical_diameter(self) -> float:
        return math.sqrt(self.diameter_px[0] * self.diameter_px[1])

    @property
    def crop_diameter(self) -> float:
        """The typical white-cell diameter the crops are framed by: from the red cells where
        they were measured (any objective and camera), else the detection range's."""
        return self.framing_diameter or self.typical_diameter


def background_reference(image: np.ndarray) -> np.ndarray:
    """Per-channel brightness of the empty background: the 95th percentile of each channel."""
    sample = image.reshape(-1, 3)
    if sample.shape[0] > 20000:
        sample = sample[:: sample.shape[0] // 20000]
    k = int(0.95 * (sample.shape[0] - 1))
    bg = np.partition(sample, k, axis=0)[k].astype(np.float32)
    return np.maximum(bg, 8.0)


def nucleus_stain(image: np.ndarray) -> np.ndarray:
    """Amount of nucleus stain per pixel (float32 HxW), relative to the frame's background."""
    bg = background_reference(image)
    levels = np.arange(256, dtype=np.float32)[:, None]
    lut = -np.log(np.clip(np.maximum(levels, 0.5) / bg[None, :], 1e-3, 1.0))  # 256 x 3
    od = cv2.LUT(image, lut.reshape(256, 1, 3).astype(np.float32))
    return cv2.transform(od, _UNMIX.reshape(1, 3)).reshape(image.shape[:2])


def measure_rbc_diameter(image: np.ndarray) -> float | None:
    """Median red-cell diameter in pixels, from the distance transform of the stained area.

    Every stained pixel that is not nucleus belongs to a red cell (or cytoplasm); holes (the
    red cells' pale centres) are filled, and the local maxima of the distance to the
    background are red-cell radii. None when too few red cells are visible.
    """
    h, w = image.shape[:2]
    scale = min(1.0, 240.0 / max(h, w))
    small = cv2.resize(image, (max(8, round(w * scale)), max(8, round(h * scale))),
                       interpolation=cv2.INTER_AREA)
    bg = background_reference(small)
    od = -np.log(np.clip(small.astype(np.float32) / bg, 1e-3, 1.0)).sum(axis=2)
    mask = (cv2.GaussianBlur(od, (3, 3), 0) > 0.25).astype(np.uint8)
    # fill pale centres: everything not reachable from the unstained background is inside a cell
    inverse = 1 - mask
    n, labels, stats, _ = cv2.connectedComponentsWithStats(inverse, connectivity=4)
    if n > 1:
        big = stats[1:, cv2.CC_STAT_AREA] < (0.02 * small.shape[0] * small.shape[1])
        holes = np.concatenate([[False], big])[labels]
        mask[holes] = 1
    dist = cv2.distanceTransform(mask, cv2.DIST_L2, 5)
    peaks = (dist >= cv2.dilate(dist, np.ones((5, 5), np.uint8))) & (dist > 3.0)
    radii = dist[peaks]
    if radii.size < 5:
        return None
    return float(2.0 * np.median(radii) / scale)


class CellDetector:
    """Finds white cells frame by frame; with ``diameter_px=None`` it measures the scale."""

    def __init__(self, settings: DetectorSettings | None = None) -> None:
        self.settings = settings or DetectorSettings()
        self._rbc: deque[float] = deque(maxlen=15)
        self._frames = 0

    def _measure(self, image: np.ndarray) -> float | None:
        """The typical white-cell diameter from the red cells (measured every 10th frame,
        the median of the last 15 measurements), None while none could be measured."""
        if self._frames % 10 == 0 or not self._rbc:
            rbc = measure_rbc_diameter(image)
            if rbc is not None:
                self._rbc.append(rbc)
        self._frames += 1
        return float(np.median(self._rbc)) * WBC_PER_RBC if self._rbc else None

    def diameter_range(self, image: np.ndarray) -> tuple[float, float]:
        """The configured range, or one measured from the red cells."""
        if self.settings.diameter_px is not None:
            return self.settings.diameter_px
        typical = self._measure(image)
        return DEFAULT_DIAMETER_PX if typical is None else (typical / 1.6, typical * 1.6)

    def reset_scale(self) -> None:
        """Forget the measured scale (a new slide or objective)."""
        self._rbc.clear()
        self._frames = 0

    def detect(self, image: np.ndarray) -> Detections:
        """White cells of one BGR uint8 frame."""
        s = self.settings
        d_lo, d_hi = self.diameter_range(image)
        typical = math.sqrt(d_lo * d_hi)
        framing = None  # with diameter_px auto, the range itself comes from the red cells
        if s.framing == "red-cells" and s.diameter_px is not None:
            measured = self._measure(image)
            # the configured objective, unless the red cells clearly differ
            if measured is not None and not 1 / FRAMING_TRUST < measured / typical < FRAMING_TRUST:
                framing = measured
        h, w = image.shape[:2]
        scale = min(1.0, WORK_DIAMETER / typical)
        sw, sh = max(8, round(w * scale)), max(8, round(h * scale))
        small = cv2.resize(image, (sw, sh), interpolation=cv2.INTER_AREA) if scale < 1 else image
        fx, fy = w / sw, h / sh
        result = Detections([], (d_lo, d_hi), framing_diameter=framing)

        stain = cv2.GaussianBlur(nucleus_stain(small), (3, 3), 0)
        low = (stain > s.nucleus_low).astype(np.uint8)
        low = cv2.morphologyEx(low, cv2.MORPH_OPEN, cv2.getStructuringElement(
            cv2.MORPH_ELLIPSE, (3, 3)))
        n, labels = cv2.connectedComponents(low, connectivity=8)
        if n <= 1:
            return result
        # hysteresis: keep components that somewhere reach nucleus_high
        seeded = np.zeros(n, bool)
        seeded[np.unique(labels[stain > s.nucleus_high])] = True
        seeded[0] = False
        areas = np.bincount(labels.ravel(), minlength=n)
        if seeded.sum() > MAX_COMPONENTS:
            keep = np.flatnonzero(seeded)
            keep = keep[np.argsort(areas[keep])[::-1][:MAX_COMPONENTS]]
            seeded[:] = False
            seeded[keep] = True
            result.capped = True
            result.warnings.append(f"more than {MAX_COMPONENTS} stained blobs in the frame "
                                   "(smear artefact?): only the largest were examined")
        nucleus = seeded[labels]
        if not nucleus.any():
            return result

        # lobes of one nucleus -> one cluster: bridge gaps up to a tenth of a cell diameter
        d_work = typical * scale
        r = max(1, round(0.1 * d_work / 2))
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
        bridged = cv2.dilate(nucleus.astype(np.uint8), kernel)
        m, clusters = cv2.connectedComponents(bridged, connectivity=8)
        ys, xs = np.nonzero(nucleus)
        cid = clusters[ys, xs]
        area = np.bincount(cid, minlength=m).astype(np.float64)
        min_area = 0.25 * math.pi / 4 * (d_lo * scale) ** 2
        good = np.flatnonzero(area >= min_area)
        good = good[good > 0]
        result.candidates = int(good.size)
        if good.size > s.max_cells:
            good = good[np.argsort(area[good])[::-1][: s.max_cells]]
            result.capped = True
            result.warnings.append(f"{result.candidates} white-cell candidates in one frame: "
                                   f"kept the {s.max_cells} largest")
        comp = labels[ys, xs]
        thickness = cv2.distanceTransform(nucleus.astype(np.uint8), cv2.DIST_L2, 3)[ys, xs]
        order = np.argsort(cid, kind="stable")
        starts = np.searchsorted(cid[order], good)
        ends = np.searchsorted(cid[order], good, side="right")
        for a, b in zip(starts, ends, strict=True):
            idx = order[a:b]
            if thickness[idx].max() < 0.15 * d_lo * scale:
                continue  # no lobe 0.3 of a cell thick: platelet clump or stain granules
            for px, py in split_cluster(xs[idx], ys[idx], comp[idx], (d_lo * scale, d_hi * scale)):
                result.cells.append(
                    self._cell(px, py, (fx, fy), (w, h), (d_lo, d_hi), (sw, sh)))
        return result

    @staticmethod
    def _cell(xs, ys, f, size, d_range, work_size) -> Detection:
        fx, fy = f
        w, h = size
        cx = (float(xs.min()) + float(xs.max()) + 1) / 2 * fx
        cy = (float(ys.min()) + float(ys.max()) + 1) / 2 * fy
        extent = max((np.ptp(xs) + 1) * fx, (np.ptp(ys) + 1) * fy)
        diameter = float(np.clip(extent * 1.3, d_range[0], d_range[1]))
        half = diameter / 2
        x0, y0, x1, y1 = cx - half, cy - half, cx + half, cy + half
        margin = 0.1 * diameter
        touches = (xs.min() == 0 or ys.min() == 0 or xs.max() >= work_size[0] - 1
                   or ys.max() >= work_size[1] - 1)
        outside = x0 < -margin or y0 < -margin or x1 > w + margin or y1 > h + margin
        partial = bool(touches or outside)
        box = (max(0, int(round(x0))), max(0, int(round(y0))),
               min(w, int(round(x1))), min(h, int(round(y1))))
        return Detection(box, (cx, cy), diameter, float(xs.size * fx * fy), partial)


def split_cluster(
    xs: np.ndarray, ys: np.ndarray, comp: np.ndarray, d_range: tuple[float, float]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The nucleus pixels of one cluster -> one pixel set per cell (working-image pixels).

    A cluster is several touching cells when it holds more than one nucleus-sized component
    (at least half the smallest cell's width) with centres more than 0.6 typical cell
    diameters apart (the lobes of one neutrophil or eosinophil are closer and smaller), or
    when it is wider than 1.2 times the largest cell. Its pixels go to the nearest nucleus.
    """
    d_lo, d_hi = d_range
    _, inverse, counts = np.unique(comp, return_inverse=True, return_counts=True)
    cx = np.bincount(inverse, xs) / counts
    cy = np.bincount(inverse, ys) / counts
    big = np.flatnonzero(np.sqrt(4 / math.pi * counts) >= 0.5 * d_lo)
    big = big[np.argsort(counts[big])[::-1]]
    seeds: list[int] = []
    min_gap = 0.6 * math.sqrt(d_lo * d_hi)
    for k in big:
        if all(math.hypot(cx[k] - cx[j], cy[k] - cy[j]) >= min_gap for j in seeds):
            seeds.append(int(k))
    if len(seeds) >= 2:
        centres = np.stack([cx[seeds], cy[seeds]], axis=1)
    else:
        extent = max(np.ptp(xs), np.ptp(ys)) + 1
        k = int(math.ceil(extent / (1.2 * d_hi)))
        if k <= 1 or xs.size < 2 * k:
            return [(xs, ys)]
        points = np.stack([xs, ys], axis=1).astype(np.float32)
        criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 20, 0.5)
        _, _, centres = cv2.kmeans(points, k, None, criteria, 2, cv2.KMEANS_PP_CENTERS)
    d2 = (xs[:, None] - centres[None, :, 0]) ** 2 + (ys[:, None] - centres[None, :, 1]) ** 2
    assign = d2.argmin(axis=1)
    return [(xs[assign == j], ys[assign == j]) for j in range(len(centres)) if (assign == j).any()]
