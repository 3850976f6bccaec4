"""Training throughput: ``lgld-train`` end to end against a bare training step, in one run.

Per input size and round, in fresh processes (an allocator is chosen at process start):

* the reference's bare training step (batch 32, Adam lr 1e-2, cross-entropy, random data) as
  its authors run it: plain ``python``, glibc's default allocator;
* the same step with the process settings lgld-train restarts itself with (allocator and
  OpenMP wait policy: what those alone buy, the fair comparison);
* lgld's model's bare step with those settings;
* the real ``lgld-train`` command, one paper-recipe epoch on a data folder, end to end:
  ``images_per_second`` from its log.jsonl (training, BatchNorm re-estimation and validation)
  and the whole process's user/system CPU time (start-up, decoding, BatchNorm re-estimation
  and validation included, so its CPU seconds per training image are an upper bound); once as
  shipped (it restarts itself with its
  allocator) and once with ``LGLD_NO_REEXEC=1`` (glibc defaults, as before the restart).

Settings alternate within every round, so drifting background load hits them alike; the ratios
to the reference's step are what to read on a shared machine. The reference model is given as
an importable ``module:callable`` (called with a ``ModelConfig``): this package never imports
:mod:`lgld.export`, the benchmark command passes it in.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from lgld.runtime.core.files import write_atomic
from lgld.training.allocator import (
    MARK_ENV,
    OMP_WAIT_ENV,
    OPT_OUT_ENV,
    allocator_environment,
    current_allocator,
    find_jemalloc,
)

LGLD_FACTORY = "lgld.models.lgld_net:LGLDNet"
ALLOCATOR_VARS = ("LD_PRELOAD", "MALLOC_CONF", "GLIBC_TUNABLES", OMP_WAIT_ENV, MARK_ENV,
                  OPT_OUT_ENV)


def load_factory(spec: str) -> Callable[..., Any]:
    """``module:callable`` -> the callable."""
    module, _, name = spec.partition(":")
    if not module or not name:
        raise ValueError(f"model factory must look like module:callable, got {spec!r}")
    return getattr(importlib.import_module(module), name)


def bare_step(factory: str, size: int, batch: int = 32, steps: int = 3, warmup: int = 1,
              num_classes: int = 4) -> dict[str, Any]:
    """Time ``steps`` training steps of a freshly built model in this process."""
    import torch
    import torch.nn.functional as F

    from lgld.models.lgld_net import ModelConfig

    torch.manual_seed(0)
    model = load_factory(factory)(ModelConfig(num_classes=num_classes, input_size=size)).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, num_classes, (batch,))

    def step() -> None:
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(warmup):
        step()
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(steps):
        step()
    wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    return {"images_per_second": batch * steps / wall, "wall_s": wall,
            "user_s": r1.ru_utime - r0.ru_utime, "sys_s": r1.ru_stime - r0.ru_stime,
            "images": batch * steps, "allocator": current_allocator()}


def plain_environment() -> dict[str, str]:
    """This environment without any allocator setting (how the authors' notebook runs)."""
    env = {k: v for k, v in os.environ.items() if k not in ALLOCATOR_VARS}
    env[OPT_OUT_ENV] = "1"
    return env


def tuned_environment() -> dict[str, str]:
    """The environment lgld-train restarts itself with."""
    env = plain_environment()
    env.pop(OPT_OUT_ENV)
    choice = allocator_environment(env, find_jemalloc())
    return {**env, **choice[1]} if choice else env


def _child_rusage(run: Callable[[], subprocess.CompletedProcess]) -> tuple[Any, float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = run()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return done, after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime


def bare_step_in_fresh_process(factory: str, size: int, env: Mapping[str, str], batch: int,
                               steps: int, warmup: int) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "lgld.bench.throughput", "step", "--factory", factory,
           "--size", str(size), "--batch", str(batch), "--steps", str(steps),
           "--warmup", str(warmup)]
    done = subprocess.run(cmd, env=dict(env), capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"bare step of {factory} failed: {done.stderr.strip()[-300:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def lgld_train_epoch(data: str, size: int, env: Mapping[str, str], limit_per_class: int,
                     workdir: Path, extra: Sequence[str] = ()) -> dict[str, Any]:
    """One paper-recipe epoch of the real lgld-train command (it picks its own allocator)."""
    out = Path(tempfile.mkdtemp(dir=workdir)) / "run"
    cmd = [sys.executable, "-m", "lgld.training.cli", "--data", data, "--out", str(out),
           "--recipe", "paper", "--epochs", "1", "--input-size", str(size), "--device", "cpu",
           "--limit-per-class", str(limit_per_class), *extra]
    t0 = time.perf_counter()
    done, user, sys_ = _child_rusage(
        lambda: subprocess.run(cmd, env=dict(env), capture_output=True, text=True))
    wall = time.perf_counter() - t0
    if done.returncode:
        raise RuntimeError(f"lgld-train failed: {done.stderr.strip()[-300:]}")
    entry = json.loads((out / "log.jsonl").read_text().splitlines()[0])
    restarted = [ln for ln in done.stderr.splitlines() if "restarting once" in ln]
    allocator = (restarted[0].split("with ", 1)[1].split(" (", 1)[0] if restarted
                 else current_allocator(env))
    images = round(entry["images_per_second"] * entry["seconds"])  # training images seen
    return {"images_per_second": entry["images_per_second"], "epoch_s": entry["seconds"],
            "train_loop_s": entry.get("train_seconds"), "train_loss": entry["train_loss"],
            "process_wall_s": wall, "user_s": user, "sys_s": sys_, "images": images,
            "allocator": allocator}


def measure_training(reference: str, data: str, sizes: Sequence[int], rounds: int = 2,
                     steps: int = 2, warmup: int = 1, limit_per_class: int = 40,
                     batch: int = 32, log: Callable[[str], None] = print,
                     core_only: bool = False) -> dict[str, Any]:
    """Every setting per size, alternating within each round (see the module docstring);
    ``core_only``: only the authors' step (both settings) and lgld-train as shipped."""
    plain, tuned = plain_environment(), tuned_environment()
    as_shipped = {k: v for k, v in plain.items() if k != OPT_OUT_ENV}  # it restarts itself
    settings: list[tuple[str, Callable[[int, Path], dict]]] = [
        ("authors' step, glibc defaults (as run)",
         lambda s, _w: bare_step_in_fresh_process(reference, s, plain, batch, steps, warmup)),
        ("authors' step, lgld-train's settings",
         lambda s, _w: bare_step_in_fresh_process(reference, s, tuned, batch, steps, warmup)),
        ("lgld step, lgld-train's settings",
         lambda s, _w: bare_step_in_fresh_process(LGLD_FACTORY, s, tuned, batch, steps, warmup)),
        ("lgld-train end to end (as shipped)",
         lambda s, w: lgld_train_epoch(data, s, as_shipped, limit_per_class, w)),
        ("lgld-train, glibc defaults (before)",
         lambda s, w: lgld_train_epoch(data, s, plain, limit_per_class, w)),
    ]
    if core_only:
        settings = [settings[0], settings[1], settings[3]]
    results: dict[str, Any] = {"sizes": {}, "rounds": rounds, "batch": batch,
                               "allocator": tuned.get(MARK_ENV, "glibc defaults"),
                               "loadavg": [], "reference": reference}
    with tempfile.TemporaryDirectory(prefix="lgld-train-bench-") as tmp:
        for size in sizes:
            rows: dict[str, list[dict]] = {name: [] for name, _ in settings}
            for r in range(rounds):
                for name, run in settings:
                    results["loadavg"].append(os.getloadavg()[0])  # before every setting
                    rows[name].append(run(size, Path(tmp)))
                    log(f"  {size}px round {r + 1}: {name}: "
                        f"{rows[name][-1]['images_per_second']:.2f} img/s")
            results["sizes"][str(size)] = summarise(rows)
    results["loadavg"].append(os.getloadavg()[0])
    return results


def summarise(rows: Mapping[str, list[dict]]) -> dict[str, Any]:
    """Median img/s and CPU seconds per image per setting; ratios to the first setting."""
    table = {}
    for name, runs in rows.items():
        table[name] = {
            "images_per_second": statistics.median(r["images_per_second"] for r in runs),
            "all_images_per_second": [round(r["images_per_second"], 3) for r in runs],
            "user_s": statistics.median(r["user_s"] for r in runs),
            "sys_s": statistics.median(r["sys_s"] for r in runs),
            "cpu_s_per_image": statistics.median((r["user_s"] + r["sys_s"]) / r["images"]
                                                 for r in runs),
            "allocator": runs[0]["allocator"],
        }
        if "train_loss" in runs[0]:  # the same in every round and setting: nothing else changes
            table[name]["train_loss"] = [r["train_loss"] for r in runs]
    base = next(iter(table.values()))["images_per_second"]
    for row in table.values():
        row["ratio"] = row["images_per_second"] / base
    return table


def format_training(results: Mapping[str, Any]) -> str:
    """The table per input size as text."""
    load = results["loadavg"]
    lines = [f"training throughput (batch {results['batch']}, median of {results['rounds']} "
             f"rounds; 1-min load average {min(load):.1f}-{max(load):.1f})"]
    for size, table in results["sizes"].items():
        lines.append(f"{size} px  {'setting':<40} {'img/s':>7} {'x ref':>6} {'user s':>7} "
                     f"{'sys s':>6} {'CPU s/img':>9}  allocator")
        for name, row in table.items():
            lines.append(f"        {name:<40} {row['images_per_second']:7.2f} "
                         f"{row['ratio']:5.2f}x {row['user_s']:7.1f} {row['sys_s']:6.1f} "
                         f"{row['cpu_s_per_image']:9.2f}  {row['allocator']}")
    return "\n".join(lines)


def parse_sizes(text: str) -> list[int]:
    """``224,160`` -> [224, 160] (multiples of 16, >= 32, as lgld-train takes them)."""
    try:
        sizes = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ValueError(f"sizes must be comma-separated integers, got {text!r}") from None
    bad = [s for s in sizes if s < 32 or s % 16]
    if not sizes or bad:
        raise ValueError(f"sizes must be multiples of 16, >= 32; got {text!r}")
    return sizes


def _parser() -> argparse.ArgumentParser:
    from lgld.runtime.core.cliutil import OneLineParser

    p = OneLineParser(prog="python -m lgld.bench.throughput",
                      description="lgld-train's img/s against a reference bare training step")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compare", help="the table (what lgld-bench --train runs)")
    c.add_argument("--reference", required=True, metavar="MODULE:CALLABLE",
                   help="the reference model factory, e.g. lgld.export.reference:ReferenceLGLDNet")
    c.add_argument("--data", required=True, help="a labelled image folder (e.g. ALL/)")
    c.add_argument("--sizes", default="224", help="input sizes (default 224)")
    c.add_argument("--rounds", type=int, default=2)
    c.add_argument("--limit-per-class", type=int, default=40)
    c.add_argument("--steps", type=int, default=2, help="timed bare steps per round")
    c.add_argument("--core-only", action="store_true",
                   help="only the authors' step (both settings) and lgld-train as shipped")
    c.add_argument("--json", metavar="OUT", help="also write the results here")
    s = sub.add_parser("step", help="one bare-step measurement as a JSON line (a child)")
    s.add_argument("--factory", default=LGLD_FACTORY)
    s.add_argument("--size", type=int, default=224)
    s.add_argument("--batch", type=int, default=32)
    s.add_argument("--steps", type=int, default=3)
    s.add_argument("--warmup", type=int, default=1)
    return p


def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    if a.command == "step":
        print(json.dumps(bare_step(a.factory, a.size, a.batch, a.steps, a.warmup)))
        return 0
    try:
        if a.rounds < 1 or a.steps < 1 or a.limit_per_class < 3:
            raise ValueError("--rounds and --steps must be >= 1, --limit-per-class >= 3")
        load_factory(a.reference)
        results = measure_training(a.reference, a.data, parse_sizes(a.sizes), a.rounds,
                                   a.steps, limit_per_class=a.limit_per_class,
                                   log=lambda m: print(m, file=sys.stderr, flush=True),
                                   core_only=a.core_only)
    except (ValueError, ImportError, AttributeError, RuntimeError, OSError) as exc:
        print(f"lgld training throughput: error: {exc}", file=sys.stderr)
        return 2
    print(format_training(results))
    if a.json:
        write_atomic(a.json, json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
