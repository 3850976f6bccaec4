"""The one reader of /proc/cpuinfo (no torch, no cpuid): the CPU's model name and the features
that decide how fast INT8 runs.

INT8 pays off where the CPU has int8 dot-product instructions: ``asimddp`` (Armv8.2 dotprod:
Raspberry Pi 5's Cortex-A76) on arm64, ``avx512_vnni`` or ``avx_vnni`` on x86. Without them
ONNX Runtime falls back to slower int8 kernels (x86 AVX2) and INT8 may not beat fp32.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
# Shown by lgld-bench and lgld-run, in this order.
X86_FEATURES = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8")
ARM_FEATURES = ("asimd", "asimddp", "i8mm", "sve")
X86_DOT = ("avx512_vnni", "avx_vnni")
ARM_DOT = ("asimddp",)


@dataclass(frozen=True)
class CpuFeatures:
    """Architecture plus the INT8-relevant flags this CPU reports."""

    arch: str  # "x86_64", "aarch64" or whatever platform.machine() says
    flags: frozenset[str]
    model: str | None = None  # "model name" (x86), or the board's "Hardware"/"Model" (arm64)

    @property
    def is_x86(self) -> bool:
        return self.arch in ("x86_64", "amd64", "i686", "i386")

    @property
    def is_arm64(self) -> bool:
        return self.arch in ("aarch64", "arm64")

    @property
    def relevant(self) -> list[str]:
        """The INT8-relevant features present, in a fixed order."""
        names = X86_FEATURES if self.is_x86 else ARM_FEATURES if self.is_arm64 else ()
        return [f for f in names if f in self.flags]

    @property
    def fast_int8(self) -> bool:
        """True where the CPU has int8 dot-product instructions (VNNI, Arm dotprod)."""
        dot = X86_DOT if self.is_x86 else ARM_DOT if self.is_arm64 else ()
        return any(f in self.flags for f in dot)

    def summary(self) -> str:
        """One line, e.g. ``x86_64 avx2 avx512f avx512_vnni (fast int8)``."""
        feats = " ".join(self.relevant) or "no SIMD int8 features found"
        verdict = "fast int8" if self.fast_int8 else "no int8 dot product"
        return f"{self.arch} {feats} ({verdict})"


def parse_cpuinfo(text: str, arch: str) -> CpuFeatures:
    """Features from the text of /proc/cpuinfo (x86 ``flags``, arm64 ``Features`` lines) and
    the model (the last non-empty ``model name``, ``Hardware`` or ``Model`` line: on a Pi the
    board's name, which comes last).

    Uses the first processor's flags: a mixed big.LITTLE system reports the common subset there
    on every arm64 board lgld targets.
    """
    flags: frozenset[str] | None = None
    model = None
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        key = key.strip().lower()
        if not sep:
            continue
        if key in ("flags", "features") and flags is None:
            flags = frozenset(value.split())
        elif key in ("model name", "hardware", "model") and value.strip():
            model = value.strip()
    return CpuFeatures(arch=arch.lower(), flags=flags or frozenset(), model=model)


def cpu_features(cpuinfo: str | os.PathLike = CPUINFO, arch: str | None = None) -> CpuFeatures:
    """This machine's features; empty flags when /proc/cpuinfo cannot be read (not Linux)."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        text = ""
    return parse_cpuinfo(text, arch or platform.machine() or "unknown")
