"""``demo[:all|:wbc]``: a synthetic live microscope made of a few bundled real sample images.

The "stage" glides from one image of a mosaic to the next and dwells on each for a few seconds
(with a little hand tremor), the focus slowly breathes in and out (so the focus gate has
something to do), the illumination flickers slightly and the sensor adds noise. Scenes:

* ``all`` (field mode): 2x2 whole fields of the ALL data set; at rest the centred square of the
  frame shows exactly one field, as the ALL model was trained on.
* ``wbc`` (roi mode): single white cells of the WBC5 data set; at rest one cell fills the
  centred ROI square.

Frames are a pure function of the frame number, so a run is reproducible.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import cv2
import numpy as np

from lgld.runtime.config import InferenceSection, SourceSection
from lgld.runtime.core.preprocess import read_image
from lgld.runtime.sources.base import Frame, Source, SourceError

ASSETS = Path(__file__).resolve().parents[1] / "assets"
SCENES = {"all": ("all-*.jpg", 224, 2), "wbc": ("wbc5-*.jpg", 180, 3)}  # glob, tile px, columns
DWELL_S = 3.0
MOVE_S = 1.2
FOCUS_PERIOD_S = 17.0
MAX_BLUR_SIGMA = 2.5  # in mosaic pixels (one tile = one training image)
NOISE_SIGMA = 3.0


def load_tiles(scene: str) -> list[np.ndarray]:
    """The bundled images of a scene as square BGR tiles."""
    if scene not in SCENES:
        raise SourceError(f"unknown demo scene {scene!r}: use demo:all, demo:wbc or demo:cells")
    pattern, tile, _ = SCENES[scene]
    files = sorted(ASSETS.glob(pattern))
    if not files:
        raise SourceError(f"demo images missing from {ASSETS} (broken installation)")
    return [cv2.resize(read_image(f), (tile, tile), interpolation=cv2.INTER_AREA) for f in files]


def probe(scene: str) -> tuple[bool, str]:
    """Are the scene's bundled images there? (for the doctor)"""
    try:
        return True, f"demo: {len(load_tiles(scene))} bundled sample images"
    except SourceError as exc:
        return False, str(exc)


def build_mosaic(tiles: list[np.ndarray], columns: int) -> tuple[np.ndarray, list[tuple]]:
    """Tiles in a grid (gaps filled with mirrored tiles); returns the mosaic and tile centres."""
    size = tiles[0].shape[0]
    rows = math.ceil(len(tiles) / columns)
    mosaic = np.zeros((rows * size, columns * size, 3), np.uint8)
    centres = []
    for i in range(rows * columns):
        r, c = divmod(i, columns)
        tile = tiles[i] if i < len(tiles) else cv2.flip(tiles[i % len(tiles)], 1)
        mosaic[r * size : (r + 1) * size, c * size : (c + 1) * size] = tile
        if i < len(tiles):
            centres.append(((c + 0.5) * size, (r + 0.5) * size))
    # visit in a snake order so that every move is to a neighbour
    order = sorted(range(len(centres)), key=lambda k: (k // columns, (k % columns) * (
        1 if (k // columns) % 2 == 0 else -1)))
    return mosaic, [centres[k] for k in order]


def _smoothstep(u: float) -> float:
    u = min(1.0, max(0.0, u))
    return u * u * (3 - 2 * u)


class DemoSource(Source):
    """Synthetic microscope frames at ``fps`` (paced like a camera unless realtime=False)."""

    live = True

    def __init__(
        self,
        scene: str = "all",
        size: tuple[int, int] = (SourceSection.width, SourceSection.height),
        fps: float = SourceSection.fps,
        roi_size: float = InferenceSection.roi_size,
        realtime: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if scene not in SCENES:
            raise SourceError(f"unknown demo scene {scene!r}: use demo:all, demo:wbc or demo:cells")
        self.scene = scene
        self.name = f"demo:{scene}"
        self.size = (int(size[0]), int(size[1]))
        self.fps = float(fps)
        self.realtime = realtime
        self.seed = seed
        tile = SCENES[scene][1]
        # all: one field fills the frame height (the centred square); wbc: one cell = the ROI
        self.view_height = float(tile if scene == "all" else tile / roi_size)
        self._mosaic: np.ndarray | None = None
        self._centres: list[tuple[float, float]] = []
        self._noise: list[tuple[np.ndarray, np.ndarray]] = []
        self._t0 = 0.0

    def open(self) -> None:
        _, _, columns = SCENES[self.scene]
        self._mosaic, self._centres = build_mosaic(load_tiles(self.scene), columns)
        rng = np.random.default_rng(self.seed)
        w, h = self.size
        self._noise = []
        for _ in range(4):
            n = rng.normal(0.0, NOISE_SIGMA, (h, w, 1)).repeat(3, axis=2)
            self._noise.append((np.clip(n, 0, 255).astype(np.uint8),
                                np.clip(-n, 0, 255).astype(np.uint8)))
        self._t0 = time.monotonic()
        self._index = 0

    # -- the scene as a function of time ----------------------------------------------------

    def position(self, t: float) -> tuple[float, float]:
        """Stage position (mosaic pixels) at time t: dwell, glide, dwell, ..."""
        period = DWELL_S + MOVE_S
        k, into = divmod(t, period)
        a = self._centres[int(k) % len(self._centres)]
        b = self._centres[(int(k) + 1) % len(self._centres)]
        u = _smoothstep((into - DWELL_S) / MOVE_S)
        tremor = 1.5 * math.sin(t * 2.1), 1.5 * math.sin(t * 1.7 + 1.0)
        return a[0] + (b[0] - a[0]) * u + tremor[0], a[1] + (b[1] - a[1]) * u + tremor[1]

    @staticmethod
    def blur_sigma(t: float) -> float:
        """Defocus (mosaic pixels): sharp most of the time, blurred for a while every period."""
        return MAX_BLUR_SIGMA * max(0.0, math.sin(2 * math.pi * t / FOCUS_PERIOD_S)) ** 6

    def render(self, t: float, index: int = 0) -> np.ndarray:
        """The frame at time t (BGR uint8, self.size)."""
        if self._mosaic is None:
            self.open()
        w, h = self.size
        vh = self.view_height
        vw = vh * w / h
        cx, cy = self.position(t)
        sw, sh = max(8, round(vw)), max(8, round(vh))
        kx, ky = sw / vw, sh / vh
        m = np.float32([[kx, 0, -(cx - vw / 2) * kx], [0, ky, -(cy - vh / 2) * ky]])
        view = cv2.warpAffine(self._mosaic, m, (sw, sh), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_WRAP)
        sigma = self.blur_sigma(t)
        if sigma > 0.3:
            view = cv2.GaussianBlur(view, (0, 0), sigma)
        gain = 0.98 - 0.02 * math.sin(2 * math.pi * t / 5.3)  # never brighter than the slide
        view = cv2.convertScaleAbs(view, alpha=gain)
        frame = cv2.resize(view, (w, h), interpolation=cv2.INTER_LINEAR)
        plus, minus = self._noise[index % len(self._noise)]
        cv2.add(frame, plus, dst=frame)
        cv2.subtract(frame, minus, dst=frame)
        return frame

    def read(self) -> Frame:
        if self._mosaic is None:
            self.open()
        index = self._index
        t = index / self.fps
        if self.realtime:
            delay = self._t0 + t - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            elif delay < -1.0:  # the machine cannot keep up: do not try to catch up
                self._t0 = time.monotonic() - t
        return self._frame(self.render(t, index))
