"""Image folders and file digests: the one definition of which files are images."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})


def is_image_file(path: Path) -> bool:
    """True for a regular file with an image suffix (case-insensitive)."""
    return path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()


def list_images(folder: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """The image files in a folder, sorted by path (hidden files skipped)."""
    root = Path(folder)
    found = root.rglob("*") if recursive else root.iterdir()
    return sorted(p for p in found if not p.name.startswith(".") and is_image_file(p))


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def log_files(path: str | os.PathLike) -> list[Path]:
    """A rotated JSONL log's files, oldest first: ``path.N`` ... ``path.1``, ``path`` (the log
    itself is listed even when missing; readers skip what they cannot open)."""
    path = Path(path)
    rotated: list[Path] = []
    n = 1
    while (sibling := path.with_name(f"{path.name}.{n}")).is_file():
        rotated.append(sibling)
        n += 1
    return [*reversed(rotated), path]


def default_state_dir() -> Path:
    """lgld's state directory (calibration, validations) when none is configured: systemd's
    $STATE_DIRECTORY (the service's /var/lib/lgld), else $XDG_STATE_HOME/lgld or
    ~/.local/state/lgld."""
    if os.environ.get("STATE_DIRECTORY"):
        return Path(os.environ["STATE_DIRECTORY"].split(":")[0])
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "lgld"
