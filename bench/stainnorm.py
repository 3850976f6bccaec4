"""Macenko-style stain normalisation of white-cell crops to a reference, torch-free.

A crop's optical density (Beer-Lambert, relative to its own background: the 95th percentile of
each channel) is, on the stained pixels (OD norm > :data:`MIN_OD`), spanned mostly by two stain
vectors: the nucleus stain (blue-purple, absorbs red most) and the eosin/red-cell stain (pink).
Macenko et al. (ISBI 2009): project the stained pixels' OD onto its two main axes, take the
directions at the 1st and 99th percentile of the angle as the two stain vectors, unmix each
pixel into two concentrations (least squares) and scale each so its 99th percentile matches the
reference's; re-stain with the reference's vectors. The residual the two stains do not explain
is kept (granules, grain), and the background keeps the crop's own colour (the illumination
correction is a separate step).

Methods: ``macenko`` (both vectors and both concentration scales), ``nucleus`` (only the
nucleus stain's vector and scale; the red-cell stain as it was), ``nucleus-scale`` (only the
nucleus stain's scale), ``concentration`` (both scales, the crop's own vectors). A crop with
too few stained pixels, or whose two stain directions cannot be told apart, is returned
unchanged.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

METHODS = ("macenko", "nucleus", "nucleus-scale", "concentration")
MIN_OD = 0.15  # OD norm of a stained pixel (Macenko's beta)
MAX_OD = 3.0  # darker than this is padding or a clipped black, not stain: left as it is
DARKEST = 95.0  # the nucleus: the stain nearest the darkest 5% of the stained pixels
ANGLE_PERCENTILE = 1.0  # the stain directions: 1st and 99th percentile of the angle (alpha)
CONCENTRATION_PERCENTILE = 99.0
MIN_STAINED = 0.02  # at least this share of the crop's pixels stained ...
MIN_STAINED_PIXELS = 64  # ... and at least this many
MIN_ANGLE_DEG = 3.0  # two stain vectors closer than this are one stain
MAX_SCALE = 4.0  # a concentration is scaled by at most 4x either way
BACKGROUND_PERCENTILE = 95.0
REFERENCE_FORMAT = "lgld-stain-reference"


@dataclass(frozen=True)
class Stains:
    """A crop's stains: unit OD vectors (rows: nucleus, red-cell; RGB order) and the 99th
    percentile of each stain's concentration."""

    vectors: np.ndarray  # (2, 3)
    max_concentrations: np.ndarray  # (2,)

    def to_dict(self) -> dict:
        return {"format": REFERENCE_FORMAT, "channels": "RGB",
                "vectors": np.round(self.vectors, 6).tolist(),
                "max_concentrations": np.round(self.max_concentrations, 6).tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> Stains:
        if not isinstance(d, dict) or d.get("format") != REFERENCE_FORMAT:
            raise ValueError(f"not an {REFERENCE_FORMAT} file")
        try:
            vectors = np.asarray(d["vectors"], np.float64)
            maxc = np.asarray(d["max_concentrations"], np.float64)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"damaged stain reference ({type(exc).__name__}: {exc})") from None
        if vectors.shape != (2, 3) or maxc.shape != (2,) or not np.all(maxc > 0) \
                or not np.all(np.isfinite(vectors)) or not np.all(vectors >= 0):
            raise ValueError("a stain reference needs 2 non-negative RGB OD vectors and 2 "
                             "positive concentrations")
        return cls(vectors / np.linalg.norm(vectors, axis=1, keepdims=True), maxc)


def load_reference(path: str | Path) -> Stains:
    """Read a reference written by :func:`save_reference` (ValueError with a one-line reason)."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ValueError(f"stain reference not found: {path}") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read stain reference {path}: {exc}") from None
    try:
        return Stains.from_dict(data)
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None


def save_reference(stains: Stains, path: str | Path, **about: object) -> None:
    Path(path).write_text(json.dumps({**stains.to_dict(), **about}, indent=1) + "\n")


def optical_density(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(HxWx3 OD >= 0, the 3 background levels) of an RGB uint8 image, relative to its
    background (the 95th percentile of each channel)."""
    x = rgb.reshape(-1, 3).astype(np.float64)
    bg = np.maximum(np.percentile(x, BACKGROUND_PERCENTILE, axis=0), 8.0)
    od = np.maximum(-np.log(np.maximum(x + 1.0, 1.0) / (bg + 1.0)), 0.0)
    return od.reshape(rgb.shape), bg


def _unit_positive(v: np.ndarray) -> np.ndarray:
    v = v if v.sum() >= 0 else -v
    return v / np.linalg.norm(v)


def estimate(rgb: np.ndarray, nucleus: np.ndarray | None = None) -> Stains | None:
    """The stains of one RGB uint8 crop, or None when it is degenerate.

    The nucleus stain is the one of the two whose direction is nearer ``nucleus`` (a
    reference's nucleus vector), or else nearer the mean OD of the darkest stained pixels.
    """
    od, _ = optical_density(rgb)
    od = od.reshape(-1, 3)
    norm = np.linalg.norm(od, axis=1)
    stained = od[(norm > MIN_OD) & (norm < MAX_OD)]
    if len(stained) < max(MIN_STAINED_PIXELS, MIN_STAINED * len(od)):
        return None
    _, eigvecs = np.linalg.eigh(np.cov(stained.T))
    plane = eigvecs[:, [2, 1]]  # the two largest axes
    plane = plane * np.where(plane.sum(axis=0) < 0, -1.0, 1.0)
    t = stained @ plane
    phi = np.arctan2(t[:, 1], t[:, 0])
    lo, hi = np.percentile(phi, [ANGLE_PERCENTILE, 100 - ANGLE_PERCENTILE])
    if np.degrees(hi - lo) < MIN_ANGLE_DEG:
        return None
    a = _unit_positive(plane @ np.array([np.cos(lo), np.sin(lo)]))
    b = _unit_positive(plane @ np.array([np.cos(hi), np.sin(hi)]))
    if nucleus is None:
        darkest = np.linalg.norm(stained, axis=1)
        nucleus = stained[darkest >= np.percentile(darkest, DARKEST)].mean(axis=0)
    vectors = np.stack([a, b] if a @ nucleus >= b @ nucleus else [b, a])
    if np.degrees(np.arccos(np.clip(vectors[0] @ vectors[1], -1, 1))) < MIN_ANGLE_DEG:
        return None
    conc = np.linalg.lstsq(vectors.T, stained.T, rcond=None)[0]
    maxc = np.percentile(conc, CONCENTRATION_PERCENTILE, axis=1)
    if not np.all(maxc > 1e-3):
        return None
    return Stains(vectors, maxc)


def normalise(rgb: np.ndarray, reference: Stains, method: str = "macenko") -> np.ndarray:
    """One RGB uint8 crop re-stained to ``reference`` (see the module docstring); unchanged
    (the same array) when its stains cannot be estimated."""
    if method not in METHODS:
        raise ValueError(f"unknown stain method {method!r}; choose one of {METHODS}")
    own = estimate(rgb, reference.vectors[0])
    if own is None:
        return rgb
    od, bg = optical_density(rgb)
    flat = od.reshape(-1, 3)
    keep = np.linalg.norm(flat, axis=1) >= MAX_OD
    conc = np.linalg.lstsq(own.vectors.T, flat.T, rcond=None)[0]  # (2, N)
    scale = np.clip(reference.max_concentrations / own.max_concentrations,
                    1 / MAX_SCALE, MAX_SCALE)
    target = reference.vectors if method == "macenko" else own.vectors
    if method in ("nucleus", "nucleus-scale"):  # the red-cell stain stays as it was
        scale[1] = 1.0
    if method == "nucleus":
        target = np.stack([reference.vectors[0], own.vectors[1]])
    new = flat + (target.T @ (conc * scale[:, None])).T - (own.vectors.T @ conc).T
    new[keep] = flat[keep]
    out = (bg + 1.0) * np.exp(-np.maximum(new, 0.0)) - 1.0
    return np.clip(np.rint(out), 0, 255).astype(np.uint8).reshape(rgb.shape)


def normalise_bgr(bgr: np.ndarray, reference: Stains, method: str = "macenko") -> np.ndarray:
    """:func:`normalise` for an OpenCV BGR crop."""
    rgb = np.ascontiguousarray(bgr[..., ::-1])
    out = normalise(rgb, reference, method)
    return bgr if out is rgb else np.ascontiguousarray(out[..., ::-1])


def fit_reference(crops_rgb: list[np.ndarray]) -> tuple[Stains, int]:
    """The median stains over many crops (unit vectors re-normalised), and how many crops
    were usable."""
    found = [s for s in (estimate(c) for c in crops_rgb) if s is not None]
    if not found:
        raise ValueError("no crop had enough stained pixels to estimate its stains")
    vectors = np.median(np.stack([s.vectors for s in found]), axis=0)
    maxc = np.median(np.stack([s.max_concentrations for s in found]), axis=0)
    return Stains(vectors / np.linalg.norm(vectors, axis=1, keepdims=True), maxc), len(found)
