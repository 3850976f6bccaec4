"""Reading lgld's JSON-lines logs back, the same way for every reader (count resume, review).

A line torn by a crash mid-write is not fatal: when a restart appended the next event to the
same line, that event is recovered; anything else on such a line is skipped. No line is fatal:
one nested deeper than the parser's recursion limit is an unparsable line like any other.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from lgld.runtime.core.files import log_files

#: Events tried after a torn prefix: a real tear has one appended event, and a hostile line
#: with thousands of ``{"event"`` would otherwise be parsed thousands of times.
MAX_RECOVERY_TRIES = 4


def loads(data: bytes | str) -> Any:
    """``json.loads`` whose every failure is a ValueError: bad UTF-8, bad JSON, too many digits,
    and nesting beyond the parser's recursion limit (a RecursionError otherwise)."""
    try:
        return json.loads(data.decode("utf-8") if isinstance(data, bytes) else data)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None


def _after_torn_prefix(line: bytes) -> Any:
    """The event appended right after a torn line, or None: the first ``{"event"`` from which
    the rest of the line parses."""
    start = line.find(b'{"event"', 1)
    for _ in range(MAX_RECOVERY_TRIES):
        if start <= 0:
            break
        try:
            return loads(line[start:])
        except ValueError:
            start = line.find(b'{"event"', start + 1)
    return None


def parse_line(line: bytes) -> tuple[Any, bool]:
    """``(value, whole)``: a line's JSON value and True, or for a torn line (or bad UTF-8, or
    nesting too deep) the event recovered after it (None when there is none) and False."""
    try:
        return loads(line), True
    except ValueError:  # UnicodeDecodeError is a ValueError too
        return _after_torn_prefix(line), False


def iter_lines(files: Iterable[Path]) -> Iterator[bytes]:
    """Every line of the files in order (OSError propagates: the caller says what failed)."""
    for file in files:
        with open(file, "rb") as handle:
            yield from handle


def read_records(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """Every JSON object of a log and its rotated siblings, oldest first, torn lines recovered
    or skipped; files that cannot be opened (a missing log) are skipped."""
    for file in log_files(path):
        try:
            with open(file, "rb") as handle:
                for line in handle:
                    value, _ = parse_line(line)
                    if isinstance(value, dict):
                        yield value
        except OSError:
            continue
