"""Checks for what comes from outside: request bodies, flags, config values and the logs a
report or data set is built from (a log may be copied from another machine, or crafted).

One place decides what a label may contain, which names may become a folder, which paths stay
inside a folder and how large an image may be before it is decoded, so every entry point
(HTTP routes, the CLIs, ``lgld-report``, ``lgld-dataset``) refuses the same things the same way.
"""

from __future__ import annotations

import argparse
import os
import re
import stat
from pathlib import Path

from lgld.runtime.core.imageheader import image_size

MAX_LABEL_CHARS = 200  # a sample label, a class name
MAX_NAME_CHARS = 100  # a class name used as a folder name

# C0 and C1 control characters, DEL, the line and paragraph separators, lone surrogates
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
_SURROGATE = re.compile("[\ud800-\udfff]")


class UntrustedError(ValueError):
    """A text, name, path or image that is refused (one-line reason)."""


def check_text(value: object, what: str, limit: int = MAX_LABEL_CHARS) -> str:
    """``value`` when it is a string of valid UTF-8 text (no lone surrogates) without control
    characters and at most ``limit`` characters; else UntrustedError naming ``what``."""
    if not isinstance(value, str):
        raise UntrustedError(f"{what} must be a string")
    bad = _UNSAFE.search(value)
    if bad is not None:
        kind = "a lone surrogate" if _SURROGATE.match(bad.group()) else "a control character"
        raise UntrustedError(f"{what} contains {kind} (U+{ord(bad.group()):04X}): not valid text")
    if len(value) > limit:
        raise UntrustedError(f"{what} is longer than {limit} characters")
    return value


def check_name(value: object, what: str) -> str:
    """``value`` when it can be one folder or file name as it is (valid text, no ``/`` or
    ``\\``, not ``.``/``..``, not hidden, not empty); else UntrustedError."""
    name = check_text(value, what, MAX_NAME_CHARS)
    if not name.strip() or name.startswith(".") or "/" in name or "\\" in name:
        raise UntrustedError(f"{what} {name!r} cannot be a folder name")
    return name


def shown(value: str, limit: int = MAX_LABEL_CHARS) -> str:
    """A text from a log made fit to show: control characters and lone surrogates become
    U+FFFD, and a longer text is cut to ``limit`` characters (ending in an ellipsis)."""
    text = _UNSAFE.sub("\ufffd", value)
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def utf8_safe(text: str) -> str:
    """A whole document with every lone surrogate replaced by U+FFFD, so it encodes as UTF-8
    (a log line's ``\\ud800`` escape decodes to one)."""
    return _SURROGATE.sub("\ufffd", text)


def inside(root: str | os.PathLike, relative: str | os.PathLike) -> Path | None:
    """``root / relative`` resolved (symbolic links followed) when it stays inside ``root``;
    None for an absolute path, one with ``..`` or a NUL, or one that a link leads out of."""
    rel = str(relative)
    if not rel or "\x00" in rel or _SURROGATE.search(rel) or os.path.isabs(rel):
        return None
    if ".." in Path(rel).parts:
        return None
    base = Path(root).resolve()
    try:
        target = (base / rel).resolve()
    except (OSError, RuntimeError, ValueError):  # a link loop, a name the OS refuses
        return None
    return target if target.is_relative_to(base) else None


def check_inside(root: str | os.PathLike, path: str | os.PathLike, what: str) -> Path:
    """``path`` (relative to ``root`` or not) when it resolves inside ``root``; else
    UntrustedError (an output that would land elsewhere)."""
    base = Path(root).resolve()
    target = (base / path).resolve()
    if not target.is_relative_to(base):
        raise UntrustedError(f"{what} {str(path)[:120]!r} would be outside {base}")
    return target


def check_pixels(data: bytes, max_pixels: int, what: str) -> tuple[int, int]:
    """(width, height) of an image's bytes read from its header, before any decoding;
    UntrustedError when the header is not a known image header or claims over ``max_pixels``."""
    size = image_size(data)
    if size is None:
        raise UntrustedError(f"{what}: not a PNG, JPEG, BMP, TIFF or WebP image")
    width, height = size
    if width * height > max_pixels:
        raise UntrustedError(f"{what}: {width}x{height} is over the limit of {max_pixels} pixels")
    return width, height


def text_arg(value: str) -> str:
    """An argparse ``type`` for a free-text flag or a path to write: valid text of bounded
    length, else a usage error (exit 2); a non-UTF-8 byte arrives as a lone surrogate."""
    try:
        return check_text(value, "the value", limit=4096)
    except UntrustedError as exc:
        raise argparse.ArgumentTypeError(f"{value.encode('utf-8', 'backslashreplace').decode()!r}"
                                         f": {str(exc).removeprefix('the value ')}") from None


def read_bounded(path: str | os.PathLike, limit: int) -> bytes:
    """A regular file's bytes, refused (UntrustedError) when it is larger than ``limit``;
    memory is the file's size, never the limit's."""
    with open(path, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_size > limit:
            raise UntrustedError(f"{path}: not a regular file of at most {limit} bytes")
        data = fh.read(st.st_size + 1)
    if len(data) > limit:
        raise UntrustedError(f"{path}: grew past {limit} bytes while read")
    return data
