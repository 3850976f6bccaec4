"""Training augmentation and the acquisition shifts of ``lgld-eval --perturb``: linear light."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lgld.runtime.core.preprocess import (
    PreprocessSpec,
    correct_illumination,
    estimate_background,
    linear_gain_lut,
    read_image,
    resize_rgb,
    srgb_to_linear,
)
from lgld.training.augment import augment
from lgld.training.perturb import perturb

SAMPLE = sorted((Path(__file__).resolve().parent / "data" / "zoo_samples" / "WBC5" /
                 "Lymphocyte").glob("*.jpg"))[0]


def _linear(v: float) -> float:
    return float(srgb_to_linear(np.array(v / 255.0)))


def test_linear_gain_lut_multiplies_linear_light_and_clips() -> None:
    lut = linear_gain_lut((0.5, 1.2, 2.0))[:, 0, :].astype(float)
    for level in (40, 128, 200):
        assert abs(_linear(lut[level, 0]) / _linear(level) - 0.5) < 0.02
        assert abs(_linear(lut[level, 1]) / _linear(level) - 1.2) < 0.03
    assert lut[255, 1] == 255 and lut[200, 2] == 255  # clipped, as a sensor clips


def test_white_balance_cast_is_red_up_blue_down_in_linear_light() -> None:
    image = np.full((32, 32, 3), 128, np.uint8)  # BGR mid grey
    b, g, r = perturb(image, "whitebalance", "mild")[0, 0].astype(float)
    assert abs(_linear(r) / _linear(128) - 1.2) < 0.03
    assert abs(_linear(b) / _linear(128) - 0.8) < 0.03 and g == 128
    strong = perturb(image, "whitebalance", "strong")[0, 0].astype(float)
    assert strong[2] > r and strong[0] < b


def test_overexposure_mild_is_plus_point_six_ev() -> None:
    image = np.full((8, 8, 3), 100, np.uint8)
    out = float(perturb(image, "overexposure", "mild")[0, 0, 0])
    assert abs(_linear(out) / _linear(100) - 2**0.6) < 0.03


def test_augment_is_seeded_and_keeps_size_and_type() -> None:
    image = resize_rgb(read_image(SAMPLE), PreprocessSpec(input_size=96))
    a, b, c = augment(image, 7), augment(image, 7), augment(image, 8)
    assert a.shape == image.shape and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_augmented_light_stays_within_one_stop_and_the_correction_takes_most_of_it_out() -> None:
    spec = PreprocessSpec(input_size=96, illumination="background",
                          background=(250.0, 225.0, 200.0))
    image = resize_rgb(read_image(SAMPLE), spec)
    ref = correct_illumination(image, spec).astype(float).mean()
    bg = estimate_background(image).mean()
    shifted, residual = [], []
    for seed in range(40):
        out = augment(image, seed, color=0.0)
        shifted.append(abs(estimate_background(out).mean() - bg))
        residual.append(abs(correct_illumination(out, spec).astype(float).mean() - ref))
    # one stop down moves a 225 background to ~165; never further (the range is +-1 EV)
    assert max(shifted) < 75 and np.median(shifted) > 5
    assert np.median(residual) < np.median(shifted) / 2


def _largest_cast(white_balance: float) -> float:
    """The largest red or blue gain relative to green (linear light) over 200 augmentations of
    a mid-grey image, without stain jitter."""
    grey = np.full((32, 32, 3), 100, np.uint8)
    worst = 0.0
    for seed in range(200):
        r, g, b = augment(grey, seed, color=0.0, white_balance=white_balance).reshape(-1, 3).mean(0)
        for channel in (r, b):
            worst = max(worst, abs(_linear(channel) / _linear(g) - 1.0))
    return worst


def test_the_white_balance_range_sets_how_far_red_and_blue_move() -> None:
    assert _largest_cast(0.0) < 0.04  # only sensor noise and rounding
    assert 0.15 < _largest_cast(0.2) < 0.25
    assert 0.25 < _largest_cast(0.3) < 0.36
