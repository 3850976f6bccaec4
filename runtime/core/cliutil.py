"""Command-line plumbing shared by every lgld command: one-line usage errors, one-line failures."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line (``prog: error: ...``), exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (its type name when it has none)."""
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:limit]


def run_cli(
    prog: str,
    run: Callable[[Any], int],
    args: Any,
    expected: tuple[type[BaseException], ...] = (ValueError, OSError),
) -> int:
    """Run a command's body: Ctrl-C exits 130; any error is one line on stderr and exit 1
    (types outside ``expected`` are marked "unexpected"). LGLD_DEBUG=1 shows the traceback."""
    try:
        return run(args)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one clear line, never a traceback
        if os.environ.get("LGLD_DEBUG"):
            raise
        text = " ".join(str(exc).split()) or type(exc).__name__
        if not isinstance(exc, expected):
            text = f"unexpected {type(exc).__name__}: {text}"
        print(f"{prog}: error: {text}", file=sys.stderr)
        return 1
