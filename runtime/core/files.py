"""Files: which ones are images, their digests, rotated logs, and the one atomic write."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
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


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A unique, empty temporary file beside ``path`` for the caller to write; on a clean exit
    it gets the permissions a new file would get, is forced to disk, renamed onto ``path`` and
    the rename forced to disk too (the folder's fsync), so a reader sees the old file or the
    complete new one, even after a power cut, and two writers never share a temporary file.
    On an error the temporary file is removed and ``path`` is left as it was.
    """
    target = Path(path).expanduser()
    fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it private; the result is a normal file
        _fsync(tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    with contextlib.suppress(OSError):  # folders some file systems cannot fsync
        _fsync(target.parent)


def write_atomic(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write ``data`` (text as UTF-8, newlines untranslated) to ``path`` atomically and durably
    (:func:`atomic_path`); returns the path written."""
    target = Path(path).expanduser()
    with atomic_path(target) as tmp:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)
    return target

