"""Export LGLD-Net checkpoints to simplified, verified, self-describing ONNX.

Importing ``lgld.export`` itself needs neither torch nor onnx: the public names below are loaded
on first use, so torch-free tools (e.g. the benchmark on a Pi) can live in this package too.

* :func:`export_checkpoint` / :func:`write_onnx` / :func:`export_model` (``onnx_export``)
* :class:`ExportLGLDNet` and the per-block rewrites (``rewrites``)
* :func:`verify_onnx` (``verify``), :func:`quantize_int8` (``quantize``)
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from typing import Any

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class ExportError(RuntimeError):
    """An export step failed; the message is one line and nothing was written."""


def run_cli(
    prog: str,
    run: Callable[[Any], int],
    args: Any,
    known: tuple[type[BaseException], ...] = (),
) -> int:
    """Run a command's body: Ctrl-C exits 130; any error is one line on stderr and exit 1
    (types outside ExportError/ValueError/OSError/``known`` are marked "unexpected").
    Set LGLD_DEBUG=1 to see the traceback instead."""
    try:
        return run(args)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # one clear line, never a traceback
        if os.environ.get("LGLD_DEBUG"):
            raise
        text = " ".join(str(exc).split()) or type(exc).__name__
        expected = (ExportError, ValueError, OSError, *known)  # CheckpointError: a ValueError
        if not isinstance(exc, expected):
            text = f"unexpected {type(exc).__name__}: {text}"
        print(f"{prog}: error: {text}", file=sys.stderr)
        return 1


_LAZY = {
    "ExportReport": "onnx_export",
    "export_checkpoint": "onnx_export",
    "export_model": "onnx_export",
    "write_onnx": "onnx_export",
    "DEFAULT_OPSET": "onnx_export",
    "ExportLGLDNet": "rewrites",
    "VerifyReport": "verify",
    "verify_onnx": "verify",
    "Int8Report": "quantize",
    "quantize_int8": "quantize",
}

__all__ = ["IMAGE_SUFFIXES", "ExportError", "run_cli", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
