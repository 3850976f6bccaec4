"""Command-line plumbing shared by every lgld command: the exit codes (README, Exit codes),
one-line usage errors and failures, LGLD_DEBUG=1 for a traceback, one missing-extra message."""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn

#: Exit codes of all seven commands; lgld-run also uses 3 (model), 4 (source), 5 (output).
EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_MISSING_EXTRA, EXIT_INTERRUPTED = 0, 1, 2, 6, 130

#: Third-party modules of the optional extras (pyproject.toml), by import name.
EXTRA_OF = {"torch": "train", "onnx": "train", "onnxsim": "train", "matplotlib": "train",
            "tqdm": "train"}


class MissingExtra(Exception):
    """A command needs a module of an optional extra that is not installed."""

    def __init__(self, module: str) -> None:
        self.module = module
        extra = EXTRA_OF.get(module, "train")
        super().__init__(f"needs the {extra} extra ({module} is not installed): "
                         f"pip install -e '.[{extra}]' (torch first: README, Install profiles)")


def require_extra(*modules: str) -> None:
    """Raise MissingExtra for the first of ``modules`` that cannot be imported."""
    for module in modules:
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            raise MissingExtra(module)


def missing_extra(exc: BaseException) -> MissingExtra | None:
    """The MissingExtra an exception stands for (an import of an extra's module that failed)."""
    if isinstance(exc, MissingExtra):
        return exc
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        root = exc.name.split(".")[0]
        if root in EXTRA_OF:
            return MissingExtra(root)
    return None


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line (``prog: error: ...``), exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def plural(n: int, word: str, many: str | None = None) -> str:
    """``1 cell``, ``2 cells`` (``many`` for irregular plurals)."""
    return f"{n} {word if n == 1 else many or word + 's'}"


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of an exception's message (its type name when it has none)."""
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:limit]


def quiet_broken_pipe(run: Callable[[Any], Any]) -> Callable[[Any], int]:
    """``run`` as a command body whose output piped into e.g. ``head`` ends quietly: exit 0
    once the reader has gone (what it read was complete)."""

    def body(args: Any) -> int:
        try:
            run(args)
            sys.stdout.flush()
        except BrokenPipeError:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK

    return body


def run_cli(
    prog: str,
    run: Callable[[Any], int],
    args: Any,
    expected: tuple[type[BaseException], ...] = (ValueError, OSError),
) -> int:
    """Run a command's body: Ctrl-C exits 130; a missing extra is one line and exit 6; any
    other error is one line on stderr and exit 1 (types outside ``expected`` are marked
    "unexpected"). LGLD_DEBUG=1 shows the traceback."""
    try:
        return run(args)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # one clear line, never a traceback
        if os.environ.get("LGLD_DEBUG"):
            raise
        extra = missing_extra(exc)
        if extra is not None:
            print(f"{prog}: error: {extra}", file=sys.stderr)
            return EXIT_MISSING_EXTRA
        text = " ".join(str(exc).split()) or type(exc).__name__
        if not isinstance(exc, expected):
            text = f"unexpected {type(exc).__name__}: {text} (LGLD_DEBUG=1 shows the traceback)"
        print(f"{prog}: error: {text}", file=sys.stderr)
        return EXIT_FAILURE
