"""A synthetic blood smear for the cell-mode demo: real PBC white cells on drawn red cells.

The slide is an endless horizontal strip that a stage pans from left to right, so each white
cell crosses the field of view exactly once and the unique cells seen so far are known. It is
rendered in optical density (Beer-Lambert: overlapping cells add their densities, the image is
the lamp colour times ``exp(-density)``), which makes overlaps look like a real smear.

* Red cells: biconcave discs (a denser rim, a pale centre), about 7.5 um wide, with random
  size, ellipticity and overlap; their stain is the red-cell colour measured on PBC.
* White cells: the bundled PBC crops (runtime/assets/cells-*.jpg), each cut out of its crop
  (nucleus from the detector, cell edge where the density falls to the background along rays
  from the nucleus) and placed every 1.4-2.6 cell widths along the strip, wholly inside the
  field of view vertically.

Slide units are pixels of a 640-pixel-wide frame at the default magnification (a red cell is
about :data:`RBC_PX` wide), and everything is a pure function of the seed.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from lgld.runtime.cells.detect import CellDetector, DetectorSettings, background_reference
from lgld.runtime.core.preprocess import read_image

ASSETS = Path(__file__).resolve().parent.parent / "assets"
#: Red-cell diameter on the slide (pixels of a 640-wide frame): the detector's default range
#: (120,330) then frames the cells like PBC crops (crops.CELL_FRACTION); with a mismatched
#: scale the demo's neutrophils came out as monocytes.
RBC_PX = 90.0
#: PBC crops show red cells about 66 px wide (detect.measure_rbc_diameter): their scale factor.
PBC_RBC_PX = 66.0
TILE = 1024  # the strip is rendered in tiles of this width
LAMP_BGR = (204.0, 230.0, 255.0)  # the PBC crops' background (detect.background_reference)
RBC_OD = np.array([0.46, 0.74, 0.50], np.float32)  # B, G, R: PBC red cells (docs/cells.md)


@dataclass(frozen=True)
class WhiteCell:
    """One white cell on the slide: where, which class, which bundled crop."""

    x: float
    y: float
    label: str
    asset: int
    radius: float


def asset_files() -> list[Path]:
    files = sorted(ASSETS.glob("cells-*.jpg"))
    if not files:
        raise FileNotFoundError(f"demo cells missing from {ASSETS} (broken installation)")
    return files


def segment_cell(crop: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cut the central white cell out of a PBC crop: (density HxWx3, alpha HxW in [0, 1])."""
    h, w = crop.shape[:2]
    detector = CellDetector(DetectorSettings(diameter_px=(81.0, 208.0)))
    cells = detector.detect(crop).cells
    if cells:
        cx, cy = min((c.centre for c in cells), key=lambda p: math.hypot(p[0] - w / 2,
                                                                         p[1] - h / 2))
    else:
        cx, cy = w / 2, h / 2
    bg = background_reference(crop)
    density = -np.log(np.clip(crop.astype(np.float32) / bg, 1e-3, 1.0))
    total = cv2.GaussianBlur(density.sum(axis=2), (5, 5), 0)
    angles = np.linspace(0, 2 * math.pi, 64, endpoint=False)
    steps = np.arange(8, min(w, h) // 2 - 2, dtype=np.float32)
    radii = []
    for a in angles:
        xs = np.clip((cx + steps * math.cos(a)).astype(int), 0, w - 1)
        ys = np.clip((cy + steps * math.sin(a)).astype(int), 0, h - 1)
        out = np.flatnonzero(total[ys, xs] < 0.15)
        radii.append(steps[out[0]] if out.size else steps[-1])
    radii = np.asarray(radii)
    typical = np.percentile(radii, 25)  # rays into touching red cells run long
    radii = np.clip(radii, 0.85 * typical, 1.1 * typical)
    radii = np.convolve(np.concatenate([radii[-2:], radii, radii[:2]]), np.ones(5) / 5, "valid")
    poly = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)
    mask = np.zeros((h, w), np.uint8)
    cv2.fillPoly(mask, [np.round(poly).astype(np.int32)], 255)
    alpha = cv2.GaussianBlur(mask.astype(np.float32) / 255, (9, 9), 0)
    r = int(math.ceil(radii.max())) + 6
    x0, y0 = max(0, int(cx) - r), max(0, int(cy) - r)
    x1, y1 = min(w, int(cx) + r), min(h, int(cy) + r)
    return density[y0:y1, x0:x1], alpha[y0:y1, x0:x1]


@functools.lru_cache(maxsize=1)
def load_cells() -> tuple[list[str], list[tuple[np.ndarray, np.ndarray]]]:
    """The bundled white cells, cut out and scaled to the slide: (labels, [(density, alpha)])."""
    labels, cut = [], []
    scale = RBC_PX / PBC_RBC_PX
    for path in asset_files():
        labels.append(path.stem.split("-")[1].capitalize())
        density, alpha = segment_cell(read_image(path))
        size = (round(alpha.shape[1] * scale), round(alpha.shape[0] * scale))
        cut.append((cv2.resize(density, size, interpolation=cv2.INTER_LINEAR),
                    cv2.resize(alpha, size, interpolation=cv2.INTER_LINEAR)))
    return labels, cut


class Slide:
    """An endless strip ``height`` pixels high with white cells at known places."""

    def __init__(self, height: float = 480.0, seed: int = 0) -> None:
        self.height = float(height)
        self.seed = seed
        self.labels, self.cut = load_cells()
        self._cells: list[WhiteCell] = []
        self._placed_to = 0.0
        self._rng = np.random.default_rng(seed)

    def white_cells(self, x_max: float) -> list[WhiteCell]:
        """All white cells whose centre lies left of x_max (placed lazily, in order)."""
        while self._placed_to < x_max:
            k = int(self._rng.integers(len(self.cut)))
            radius = self.cut[k][1].shape[1] / 2
            gap = self._rng.uniform(1.4, 2.6) * 2 * radius
            x = self._placed_to + gap
            margin = radius + 8
            y = self._rng.uniform(margin, max(margin, self.height - margin))
            self._cells.append(WhiteCell(x, y, self.labels[k], k, radius))
            self._placed_to = x
        return [c for c in self._cells if c.x < x_max]

    def _red_cells(self, index: int) -> np.ndarray:
        """Red cells of tile index (strip coordinates): rows of x, y, r, ellipticity, angle, od."""
        rng = np.random.default_rng((self.seed, index + 1000, 7))  # index >= -1
        n = int(0.8 * TILE * self.height / (math.pi / 4 * RBC_PX**2))
        return np.stack([
            rng.uniform(index * TILE, (index + 1) * TILE, n),
            rng.uniform(-RBC_PX / 2, self.height + RBC_PX / 2, n),
            RBC_PX / 2 * rng.uniform(0.88, 1.12, n),
            rng.uniform(0.88, 1.0, n),
            rng.uniform(0, math.pi, n),
            rng.uniform(0.30, 0.42, n),
        ], axis=1)

    @functools.lru_cache(maxsize=4)  # noqa: B019 - one slide per demo source
    def tile(self, index: int) -> np.ndarray:
        """BGR image of the strip from x = index*TILE to (index+1)*TILE."""
        h = int(math.ceil(self.height))
        density = np.zeros((h, TILE, 3), np.float32)
        x0 = index * TILE
        for k in (index - 1, index, index + 1):
            for cell in self._red_cells(k):
                self._red_cell(density, cell, x0)
        for c in self.white_cells((index + 1) * TILE + 4 * RBC_PX):
            d, a = self.cut[c.asset]
            px, py = round(c.x - x0 - a.shape[1] / 2), round(c.y - a.shape[0] / 2)
            sx0, sy0 = max(0, px), max(0, py)
            sx1 = min(density.shape[1], px + a.shape[1])
            sy1 = min(density.shape[0], py + a.shape[0])
            if sx0 >= sx1 or sy0 >= sy1:
                continue
            aa = a[sy0 - py : sy1 - py, sx0 - px : sx1 - px, None]
            dd = d[sy0 - py : sy1 - py, sx0 - px : sx1 - px]
            region = density[sy0:sy1, sx0:sx1]
            density[sy0:sy1, sx0:sx1] = region * (1 - aa) + dd * aa
        lamp = np.asarray(LAMP_BGR, np.float32)
        return np.clip(lamp * np.exp(-density), 0, 255).astype(np.uint8)

    @staticmethod
    def _red_cell(density: np.ndarray, cell: np.ndarray, x_offset: float) -> None:
        x, y, r, e, angle, od = cell
        x -= x_offset
        s = int(r) + 2
        x0, y0 = int(x) - s, int(y) - s
        sx0, sy0 = max(0, x0), max(0, y0)
        sx1, sy1 = min(density.shape[1], x0 + 2 * s + 1), min(density.shape[0], y0 + 2 * s + 1)
        if sx0 >= sx1 or sy0 >= sy1:
            return
        xx = (np.arange(sx0, sx1, dtype=np.float32) - np.float32(x))[None, :]
        yy = (np.arange(sy0, sy1, dtype=np.float32) - np.float32(y))[:, None]
        ca, sa = math.cos(angle), math.sin(angle)
        u = (xx * ca + yy * sa) / r
        v = (-xx * sa + yy * ca) / (r * e)
        rho = np.sqrt(u * u + v * v)
        profile = np.where(rho < 1, 0.5 + 0.5 * rho**2, 0.0)  # pale centre, dense rim
        profile *= np.clip((1 - rho) * r / 1.5, 0, 1)  # anti-aliased edge
        density[sy0:sy1, sx0:sx1] += (od * profile)[:, :, None] * RBC_OD

    def view(self, x: float, y: float, width: float, out_size: tuple[int, int]) -> np.ndarray:
        """The BGR image of the slide window [x, x+width) x [y, y+width*h/w) at out_size."""
        out_w, out_h = out_size
        height = width * out_h / out_w
        i0, i1 = int(math.floor(x / TILE)), int(math.floor((x + width) / TILE))
        strip = self.tile(i0) if i0 == i1 else np.concatenate(
            [self.tile(i) for i in range(i0, i1 + 1)], axis=1)
        m = np.float32([[width / out_w, 0, x - i0 * TILE], [0, height / out_h, y]])
        return cv2.warpAffine(strip, m, (out_w, out_h),
                              flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                              borderMode=cv2.BORDER_REFLECT)


class SlideScan:
    """The slide as a camera sees it while the stage pans right at ``speed`` pixels/second.

    A frame is a pure function of its index (time = index / fps). One frame pixel is one slide
    pixel (the default magnification of a 640-wide frame): a larger frame sees more slide.
    """

    def __init__(self, size: tuple[int, int] = (640, 480), fps: float = 30.0,
                 speed: float = 96.0, seed: int = 0, lead_in: float = 1.0) -> None:
        self.size = (int(size[0]), int(size[1]))
        self.lead_in = float(lead_in)
        self.fps = float(fps)
        self.speed = float(speed)
        self.field_width = float(self.size[0])
        self.field_height = self.field_width * self.size[1] / self.size[0]
        self.slide = Slide(self.field_height, seed)
        rng = np.random.default_rng(seed)
        w, h = self.size
        self._noise = []
        for _ in range(4):
            n = rng.normal(0.0, 2.0, (h, w, 1)).repeat(3, axis=2)
            self._noise.append((np.clip(n, 0, 255).astype(np.uint8),
                                np.clip(-n, 0, 255).astype(np.uint8)))

    def position(self, index: int) -> tuple[float, float]:
        """Top-left corner of the field of view on the slide (slide pixels) at frame index.

        The scan starts ``lead_in`` fields left of the first white cell (1: every cell enters
        from the right and crosses the whole field)."""
        t = index / self.fps
        return self.speed * t - self.lead_in * self.field_width, 3.0 * math.sin(t * 1.3)

    def frame(self, index: int) -> np.ndarray:
        """The camera frame at index (BGR uint8, size)."""
        x, y = self.position(index)
        image = self.slide.view(x, y, self.field_width, self.size)
        gain = 0.985 - 0.015 * math.sin(2 * math.pi * index / self.fps / 5.3)
        image = cv2.convertScaleAbs(image, alpha=gain)
        plus, minus = self._noise[index % len(self._noise)]
        cv2.add(image, plus, dst=image)
        cv2.subtract(image, minus, dst=image)
        return image

    def frames_whole(self, cell: WhiteCell, frames: int) -> int:
        """In how many of frames 0..frames-1 the cell is wholly inside the field of view."""
        n = 0
        for i in range(frames):
            x, _ = self.position(i)
            n += x <= cell.x - cell.radius and cell.x + cell.radius <= x + self.field_width
        return n

    def unique_cells(self, frames: int, min_frames: int) -> list[WhiteCell]:
        """The white cells wholly visible in at least min_frames of frames 0..frames-1."""
        x_end, _ = self.position(frames)
        cells = self.slide.white_cells(x_end + self.field_width)
        return [c for c in cells if self.frames_whole(c, frames) >= min_frames]
