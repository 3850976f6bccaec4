"""Images decoded once and kept in memory, resized per training stage with the shared
preprocessing, served to a DataLoader with explicitly seeded augmentation."""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from lgld.runtime.core.preprocess import (
    ImageError,
    PreprocessSpec,
    correct_illumination,
    estimate_background,
    normalize,
    read_image,
    resize_rgb,
)
from lgld.training.augment import WHITE_BALANCE, augment, augment_microscope
from lgld.training.data import DataError, Item


class ImageCache:
    """Decoded BGR images of a split, plus resized copies per input size."""

    def __init__(self, root: Path, items: Sequence[Item], classes: Sequence[str]) -> None:
        index = {c: i for i, c in enumerate(classes)}
        unknown = sorted({it.label for it in items} - set(index))
        if unknown:
            raise DataError(f"classes {unknown} are not among the model's classes {list(classes)}")
        self.items = list(items)
        self.labels = np.array([index[it.label] for it in items], dtype=np.int64)
        self.originals: list[np.ndarray] = []
        for it in self.items:
            try:
                self.originals.append(read_image(root / it.path))
            except ImageError as exc:
                raise DataError(str(exc)) from None
        self._resized: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.items)

    def resized(self, spec: PreprocessSpec) -> np.ndarray:
        """All images as one (N, S, S, 3) uint8 array in the model's colour order."""
        if spec.input_size not in self._resized:
            self._resized[spec.input_size] = np.stack(
                [resize_rgb(im, spec) for im in self.originals]
            )
        return self._resized[spec.input_size]

    def median_background(self, size: int) -> tuple[float, float, float]:
        """The median slide background of these images (RGB, sRGB 0-255) at an input size:
        the fixed reference the illumination correction maps every image to."""
        images = self.resized(PreprocessSpec(input_size=size))
        bg = np.median([estimate_background(im) for im in images], axis=0)
        return (float(bg[0]), float(bg[1]), float(bg[2]))


class SeededSampler(Sampler):
    """Yields (index, augmentation seed) pairs: a fresh permutation per epoch, sharded by rank."""

    def __init__(
        self, n: int, seed: int, shuffle: bool, rank: int = 0, world: int = 1, pad: bool = False
    ) -> None:
        self.n, self.seed, self.shuffle, self.rank, self.world = n, seed, shuffle, rank, world
        self.pad = pad
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self) -> list[int]:
        if not self.shuffle:
            order = list(range(self.n))
        else:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.n, generator=g).tolist()
        if self.pad and self.world > 1 and len(order) % self.world:
            order += order[: self.world - len(order) % self.world]
        return order[self.rank :: self.world]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        base = (self.seed * 7_919 + self.epoch) * 1_000_003
        for pos, idx in enumerate(self._order()):
            yield idx, base + pos * self.world + self.rank

    def __len__(self) -> int:
        return len(self._order())


class CachedDataset(Dataset):
    """Serves (CHW float32 tensor, label) from an ImageCache at one input size: augmented
    (training), then illumination-corrected and normalised with the shared preprocessing."""

    def __init__(
        self, cache: ImageCache, spec: PreprocessSpec, train: bool, color: float = 1.0,
        white_balance: float = WHITE_BALANCE, augmentation: str = "lamp",
    ) -> None:
        self.images = cache.resized(spec)
        self.color = color
        self.white_balance = white_balance
        self.augment = augment_microscope if augmentation == "microscope" else augment
        self.labels = cache.labels
        self.spec = spec
        self.train = train

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int]:
        idx, seed = key
        image = self.images[idx]
        if self.train:
            image = self.augment(image, seed, self.color, self.white_balance)
        image = correct_illumination(image, self.spec)
        return torch.from_numpy(normalize(image, self.spec)), int(self.labels[idx])


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
