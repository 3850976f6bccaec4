"""Temperature scaling (Guo et al. 2017), fitted under simulated microscope shifts.

A model trained on a few microscopes is well calibrated on their images and overconfident on
others: a call shown as sure must be right on a microscope the model never saw. The
temperature is therefore fitted on validation images of the training microscopes *as other
microscopes would show them* (the ``microscope`` augmentation of :mod:`lgld.training.augment`,
seeded, several draws per image), by minimising the negative log-likelihood over log T.

The temperature is folded into the last linear layer (weights and bias divided by T), so the
checkpoint, its ONNX export and INT8 sibling all carry it with no runtime change; the value
is recorded in the checkpoint's ``training["temperature"]`` for the card.

``python -m lgld.training.calibrate CKPT --split-file SPLIT [--split-file SPLIT2] -o OUT.pt``
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from lgld.runtime.core.cliutil import OneLineParser, run_cli
from lgld.runtime.core.preprocess import (
    PreprocessSpec,
    preprocess_batch,
    read_image,
    resize_rgb,
)
from lgld.training.augment import augment_microscope
from lgld.training.data import DataError, load_split

LOG_T_RANGE = (-2.0, 3.0)  # T from 0.14 to 20


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the labels under softmax(logits / T)."""
    z = logits.astype(np.float64) / temperature
    z -= z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(labels)), labels].mean())


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 10) -> float:
    """ECE: the confidence-weighted gap between confidence and accuracy, over equal bins."""
    conf, pred = probs.max(axis=1), probs.argmax(axis=1)
    edges = np.linspace(0.0, 1.0, bins + 1)
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        inside = (conf > lo) & (conf <= hi)
        if inside.any():
            hit = (pred[inside] == labels[inside]).mean()
            ece += inside.mean() * abs(conf[inside].mean() - hit)
    return float(ece)


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T > 0 minimising the NLL (golden-section search on log T: NLL is unimodal in it)."""
    lo, hi = LOG_T_RANGE
    g = (np.sqrt(5.0) - 1.0) / 2.0
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = nll(logits, labels, np.exp(a)), nll(logits, labels, np.exp(b))
    for _ in range(60):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = nll(logits, labels, np.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = nll(logits, labels, np.exp(b))
    return float(np.exp((lo + hi) / 2.0))


def shifted_images(paths: Sequence[Path], size: int, draws: int, seed: int) -> list[np.ndarray]:
    """Each image (BGR), resized to the input size and shown as ``draws`` other microscopes."""
    spec = PreprocessSpec(input_size=size)
    out = []
    for i, path in enumerate(paths):
        rgb = resize_rgb(read_image(path), spec)
        for d in range(draws):
            out.append(cv2.cvtColor(augment_microscope(rgb, seed + 1000 * i + d),
                                    cv2.COLOR_RGB2BGR))
    return out


def fold_temperature(model, temperature: float) -> None:
    """Divide the model's logits by ``temperature`` for good: the last linear layer's weights
    and bias are scaled (calls unchanged, probabilities softer for T > 1)."""
    import torch

    head = model.head[-1]
    with torch.no_grad():
        head.weight /= temperature
        head.bias /= temperature


def calibrate(args: argparse.Namespace) -> int:
    import torch

    from lgld.models.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(args.checkpoint)
    model = ckpt.build_model()
    paths, labels = [], []
    for split_file in args.split_file:
        split = load_split(split_file)
        if args.part not in split.parts:
            raise DataError(f"{split_file} has no {args.part!r} part")
        for it in split.parts[args.part]:
            paths.append(split.root / it.path)
            labels.append(ckpt.classes.index(it.label))
    images = shifted_images(paths, ckpt.preprocess.input_size, args.draws, args.seed)
    y = np.repeat(np.array(labels), args.draws)
    with torch.inference_mode():
        logits = np.concatenate([
            model(torch.from_numpy(preprocess_batch(images[i : i + 64], ckpt.preprocess))).numpy()
            for i in range(0, len(images), 64)])
    t = fit_temperature(logits, y)
    print(f"{len(paths)} images x {args.draws} shifted draws: temperature {t:.3f}; NLL "
          f"{nll(logits, y):.3f} -> {nll(logits, y, t):.3f}; accuracy "
          f"{(logits.argmax(1) == y).mean():.1%}")
    fold_temperature(model, t)
    training = dict(ckpt.training)
    training["temperature"] = round(t * float(training.get("temperature", 1.0)), 4)
    training["temperature_fit"] = {"split_files": [str(s) for s in args.split_file],
                                   "part": args.part, "draws": args.draws, "seed": args.seed,
                                   "shift": "microscope augmentation"}
    save_checkpoint(args.output, model, ckpt.classes, ckpt.preprocess, training, ckpt.extra)
    print(f"written to {args.output}")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(prog="python -m lgld.training.calibrate",
                      description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("--split-file", action="append", required=True,
                   help="lgld split file whose --part is fitted on (repeatable)")
    p.add_argument("--part", default="val")
    p.add_argument("--draws", type=int, default=4, help="shifted draws per image")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", required=True, help="calibrated checkpoint to write")
    args = p.parse_args(argv)
    if args.draws < 1:
        p.error("--draws must be >= 1")
    return run_cli(p.prog, calibrate, args)


if __name__ == "__main__":
    sys.exit(main())
