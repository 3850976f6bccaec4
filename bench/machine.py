"""What a result was measured on: CPU, its SIMD features, cores, load and library versions."""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnxruntime as ort

# /proc/cpuinfo flag -> the name people know, in the order they are printed.
X86_FEATURES = {"avx2": "AVX2", "avx512f": "AVX-512", "avx512_vnni": "AVX-512 VNNI",
                "avx_vnni": "AVX-VNNI"}
ARM_FEATURES = {"asimd": "NEON", "asimddp": "NEON dotprod"}
FLAGS_RECORDED = {"avx2", "fma", "avx512f", "asimd", "fphp", "asimddp", "neon"}


def cpuinfo() -> tuple[str | None, list[str]]:
    """(CPU model name, its flag words) from /proc/cpuinfo; (None, []) where there is none."""
    cpu, flags = None, []
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return cpu, flags
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "model") and value.strip():
            cpu = value.strip()
        if key in ("flags", "features") and not flags:
            flags = value.split()
    return cpu, flags


def cpu_features(flags: list[str] | None = None) -> list[str]:
    """The SIMD features INT8 speed depends on: AVX2 / AVX-512 / VNNI on x86, NEON dotprod on
    arm64 (e.g. ``["AVX2", "AVX-512", "AVX-512 VNNI"]``); [] when nothing is known."""
    if flags is None:
        flags = cpuinfo()[1]
    have = set(flags)
    table = ARM_FEATURES if platform.machine().lower() in ("aarch64", "arm64") else X86_FEATURES
    return [name for flag, name in table.items() if flag in have]


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
    cpu, flags = cpuinfo()
    board = Path("/sys/firmware/devicetree/base/model")
    torch = torch_or_none()
    return {
        "cpu": cpu or platform.processor() or platform.machine(),
        "board": board.read_text().strip("\x00\n") if board.is_file() else None,
        "cpu_flags": sorted(set(flags) & FLAGS_RECORDED),
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
