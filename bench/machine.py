"""What a result was measured on: CPU, its SIMD features, cores, load and library versions."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnxruntime as ort

from lgld.runtime.core.cpu import cpu_features

# The /proc/cpuinfo flags every result records (the INT8 ones are in core.cpu's summary).
FLAGS_RECORDED = {"avx2", "fma", "avx512f", "asimd", "fphp", "asimddp", "neon"}


def loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def torch_or_none() -> Any | None:
    """torch (with lgld.models importable), or None when torch is not installed (the Pi)."""
    try:
        import torch

        import lgld.models.lgld_net  # noqa: F401 - needs torch too
    except ImportError:
        return None
    return torch


def machine_info() -> dict[str, Any]:
    """CPU model, cores, load and library versions (recorded with every result)."""
    features = cpu_features()
    board = Path("/sys/firmware/devicetree/base/model")
    torch = torch_or_none()
    return {
        "cpu": features.model or platform.processor() or platform.machine(),
        "board": board.read_text().strip("\x00\n") if board.is_file() else None,
        "cpu_flags": sorted(features.flags & FLAGS_RECORDED),
        "logical_cores": os.cpu_count(),
        "machine": platform.machine(),
        "system": platform.platform(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "onnxruntime": ort.__version__,
        "opencv": cv2.__version__,
        "torch": None if torch is None else torch.__version__,
        "loadavg_start": loadavg(),
    }
