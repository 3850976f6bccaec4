"""Export LGLD-Net checkpoints to simplified, verified, self-describing ONNX (``lgld-export``).

Modules: ``onnx_export`` (torch -> ONNX), ``rewrites`` (export-friendly blocks), ``verify``
(parity checks), ``quantize`` (INT8), ``cli``. Importing the package itself needs no torch.
"""

from __future__ import annotations


class ExportError(RuntimeError):
    """An export step failed; the message is one line and nothing was written."""


__all__ = ["ExportError"]
