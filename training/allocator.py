"""Restart lgld-train / lgld-eval once with a faster memory allocator for CPU training.

A training step on CPU allocates activation maps larger than glibc's dynamic mmap ceiling
(32 MB); glibc then maps and unmaps them on every step, and the kernel spends as long zeroing
pages as PyTorch spends computing. An allocator that keeps freed memory fixes that, but it must
be chosen before the process starts (``LD_PRELOAD``, ``GLIBC_TUNABLES``), hence one re-exec:

* jemalloc (``libjemalloc.so.2``, Debian/Ubuntu ``libjemalloc2``) with freed pages retained,
  when the library is installed;
* otherwise glibc's own tunables: mmap and trim thresholds raised to 4 GiB (no extra package).

The restart replaces the process (same PID, argv and exit code; torchrun's agent keeps
watching it), prints one line on stderr, and happens at most once: the chosen setting is
recorded in ``LGLD_ALLOCATOR`` and a process that finds it set never restarts again. Opt out
with ``LGLD_NO_REEXEC=1`` or ``--no-allocator-tuning``. A user's own ``LD_PRELOAD`` of an
allocator or ``GLIBC_TUNABLES`` malloc setting is respected (no restart).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

OPT_OUT_ENV = "LGLD_NO_REEXEC"
OPT_OUT_FLAG = "--no-allocator-tuning"
MARK_ENV = "LGLD_ALLOCATOR"  # set in the restarted process: never restart twice

GLIBC_TUNABLES = "glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=4294967296"
JEMALLOC_CONF = "retain:true,dirty_decay_ms:-1,muzzy_decay_ms:-1"
JEMALLOC_NAMES = ("libjemalloc.so.2", "libjemalloc.so")
LIBRARY_DIRS = (
    "/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib",
    "/usr/local/lib", "/opt/homebrew/lib",
)


def find_jemalloc(dirs: Sequence[str] = LIBRARY_DIRS) -> str | None:
    """Path of an installed jemalloc shared library, or None."""
    for d in dirs:
        for name in JEMALLOC_NAMES:
            p = Path(d) / name
            if p.is_file():
                return str(p)
    return None


def allocator_environment(
    environ: Mapping[str, str], jemalloc: str | None
) -> tuple[str, dict[str, str]] | None:
    """The allocator to restart with and the environment variables that select it, or None
    when no restart is wanted (opted out, already restarted, not Linux, user's own setting)."""
    if environ.get(OPT_OUT_ENV, "") not in ("", "0") or environ.get(MARK_ENV):
        return None
    if not sys.platform.startswith("linux"):
        return None
    preload = environ.get("LD_PRELOAD", "")
    if "malloc" in preload or "glibc.malloc" in environ.get("GLIBC_TUNABLES", ""):
        return None  # the user chose an allocator setting: keep it
    if jemalloc:
        conf = environ.get("MALLOC_CONF") or JEMALLOC_CONF
        return "jemalloc", {
            "LD_PRELOAD": f"{jemalloc}:{preload}" if preload else jemalloc,
            "MALLOC_CONF": conf,
            MARK_ENV: "jemalloc",
        }
    tunables = environ.get("GLIBC_TUNABLES", "")
    return "glibc-tunables", {
        "GLIBC_TUNABLES": f"{tunables}:{GLIBC_TUNABLES}" if tunables else GLIBC_TUNABLES,
        MARK_ENV: "glibc-tunables",
    }


def current_allocator(environ: Mapping[str, str] | None = None) -> str:
    """The allocator setting this process runs with (for logs and benchmarks)."""
    env = os.environ if environ is None else environ
    if env.get(MARK_ENV):
        return env[MARK_ENV]
    if "jemalloc" in env.get("LD_PRELOAD", ""):
        return "jemalloc (LD_PRELOAD)"
    if "tcmalloc" in env.get("LD_PRELOAD", ""):
        return "tcmalloc (LD_PRELOAD)"
    if "glibc.malloc" in env.get("GLIBC_TUNABLES", ""):
        return "glibc tunables (GLIBC_TUNABLES)"
    return "glibc defaults"


def _quiet_rank() -> bool:
    """Only one process per job announces the restart (torchrun rank 0, or no torchrun)."""
    return os.environ.get("RANK", "0") != "0"


def reexec_with_allocator(prog: str, argv: Sequence[str]) -> None:
    """Re-exec the running command with a faster allocator (returns only when not restarting).

    ``argv`` is the command's own arguments; ``--no-allocator-tuning`` among them opts out.
    """
    if OPT_OUT_FLAG in argv:
        return
    choice = allocator_environment(os.environ, find_jemalloc())
    if choice is None:
        return
    name, changes = choice
    orig = list(getattr(sys, "orig_argv", []))
    if not orig or not sys.executable:
        return
    if not _quiet_rank():
        shown = " ".join(f"{k}={v}" for k, v in changes.items() if k != MARK_ENV)
        print(f"{prog}: restarting once with {name} ({shown}), faster on CPU; "
              f"{OPT_OUT_ENV}=1 or {OPT_OUT_FLAG} skips this", file=sys.stderr, flush=True)
    env = {**os.environ, **changes}
    try:
        os.execve(sys.executable, [sys.executable, *orig[1:]], env)
    except OSError as exc:  # cannot restart: carry on with the default allocator
        print(f"{prog}: could not restart with {name} ({exc}); continuing without it",
              file=sys.stderr)
