"""The images every timed call and output check uses: the runtime's bundled sample images."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lgld.runtime.core.preprocess import read_image

ASSETS = Path(__file__).resolve().parents[2] / "runtime" / "assets"


def sample_images(size: int) -> list[np.ndarray]:
    """The runtime's bundled sample images (BGR), else a fixed random image."""
    files = sorted(ASSETS.glob("*.jpg"))
    if files:
        return [read_image(f) for f in files]
    return [np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)]
