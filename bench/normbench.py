"""What the illumination correction costs per 640x480 frame, next to the rest of the work.

    python -m lgld.bench.normbench [--model all] [--repeats 300]

CPU time per call (process time, so that other work on a shared machine does not count),
interleaved in one run (median ms, 1 thread): the background estimate of a whole frame,
the correction applied to a whole frame (one lookup table), the model input of the frame's
field of view without and with the correction, and the model's inference; then the ratio of
the correction's extra cost to preprocessing + inference. The frame is a bundled real sample
image at 640x480, so nothing outside the repository is needed.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace

import cv2
import numpy as np

from lgld.bench.inputs import sample_images
from lgld.bench.timing import median_ci
from lgld.runtime.core.classifier import OnnxClassifier
from lgld.runtime.core.preprocess import (
    frame_background,
    illumination_lut,
    preprocess,
)
from lgld.runtime.core.zoo import resolve_model

FRAME_SIZE = (640, 480)


def measure(model: str, repeats: int) -> dict[str, list[float]]:
    """ms per call of each step, ``repeats`` samples each, on one demo frame."""
    clf = OnnxClassifier(resolve_model(model), threads=1)
    corrected = replace(clf.info.preprocess, illumination="background")
    plain = replace(corrected, illumination="none")
    frame = cv2.resize(sample_images(corrected.input_size)[0], FRAME_SIZE,
                       interpolation=cv2.INTER_LINEAR)
    lut = illumination_lut(frame_background(frame, corrected), corrected.background)
    x = preprocess(frame, corrected)
    return cpu_time_interleaved({
        "background estimate, whole frame": lambda: frame_background(frame, corrected),
        "correction of the whole frame (LUT)": lambda: cv2.LUT(frame, lut),
        "preprocess, no correction": lambda: preprocess(frame, plain),
        "preprocess with correction": lambda: preprocess(frame, corrected),
        "inference": lambda: clf.logits(x),
    }, warmup=10, repeats=repeats)


def cpu_time_interleaved(fns: dict, warmup: int, repeats: int) -> dict[str, list[float]]:
    """ms of process CPU time per call; one call of each function per round."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {key: [] for key in fns}
    for _ in range(repeats):
        for key, fn in fns.items():
            t0 = time.process_time_ns()
            fn()
            samples[key].append((time.process_time_ns() - t0) / 1e6)
    return samples


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lgld.bench.normbench", description=__doc__)
    p.add_argument("--model", default="all")
    p.add_argument("--repeats", type=int, default=300)
    a = p.parse_args(argv)
    cv2.setNumThreads(1)
    samples = measure(a.model, a.repeats)
    med = {k: float(np.median(v)) for k, v in samples.items()}
    print(f"{'step (640x480 frame, 1 thread)':<40}{'CPU ms':>10}  95% CI of the median")
    for key, values in samples.items():
        lo, hi = median_ci(values)
        print(f"{key:<40}{med[key]:>10.3f}  {lo:.3f}-{hi:.3f}")
    extra = med["preprocess with correction"] - med["preprocess, no correction"]
    base = med["preprocess, no correction"] + med["inference"]
    whole = med["background estimate, whole frame"] + med["correction of the whole frame (LUT)"]
    print(f"correction adds {extra:.3f} ms to preprocessing = {100 * extra / base:.1f}% of "
          f"preprocess + inference; estimating and correcting a whole frame: {whole:.3f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
