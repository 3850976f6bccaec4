"""lgld-train under torchrun: two CPU processes (gloo) write one run, and resume one."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import interrupt_after_first_epoch

torch = pytest.importorskip("torch")


from lgld.training.cli import train_main  # noqa: E402

SAMPLES = Path(__file__).resolve().parent / "data" / "train_samples"
pytestmark = [pytest.mark.train,
              pytest.mark.skipif(not torch.distributed.is_available(),
                                 reason="this torch build has no torch.distributed")]


def small_folder(dest: Path, n: int = 12) -> Path:
    for c in ("Early", "Pro"):
        (dest / c).mkdir(parents=True)
        for f in sorted((SAMPLES / c).glob("*.jpg"))[:n]:
            shutil.copy(f, dest / c / f.name)
    return dest


def torchrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node 2 -m lgld.training.cli ARGS`` on one thread each."""
    own = ("LD_PRELOAD", "GLIBC_TUNABLES", "MALLOC_CONF", "LGLD_ALLOCATOR", "LGLD_NO_REEXEC")
    env = {k: v for k, v in os.environ.items() if k not in own}
    env["OMP_NUM_THREADS"] = "1"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "lgld.training.cli", *args]
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)


def common(data: Path) -> list[str]:
    return ["--data", str(data), "--input-size", "32", "--batch-size", "8", "--workers", "0",
            "--device", "cpu", "--val-fraction", "0.25", "--seed", "5"]


def test_two_gloo_processes_write_one_run(tmp_path: Path) -> None:
    data, out = small_folder(tmp_path / "data"), tmp_path / "run"
    done = torchrun([*common(data), "--out", str(out), "--epochs", "1"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    err = done.stderr
    assert "x 2 processes" in err
    if sys.platform.startswith("linux"):  # each rank restarts with the allocator; rank 0 says so
        assert err.count("restarting once") == 1
        assert "allocator glibc defaults" not in err
    assert err.count("split train") == 1  # only rank 0 made and wrote the split
    names = {p.name for p in out.iterdir()}
    assert {"split.json", "log.jsonl", "last.pt", "best.pt", "metrics.json", "report.txt",
            "curves.png"} <= names
    assert not [n for n in names if n.endswith(".tmp")]
    split = json.loads((out / "split.json").read_text())
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in log] == [1]
    # 16 training images, 8 per process in batches of 4: the log counts both shards (16), not
    # rank 0's alone (8).
    assert split["counts"]["train"] == 16
    assert log[0]["train_images"] == 16
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["extra"]["epoch"] == 1


def test_resume_under_torchrun_continues_a_run(tmp_path: Path, monkeypatch) -> None:
    data, out = small_folder(tmp_path / "data"), tmp_path / "run"
    args = [*common(data), "--out", str(out), "--epochs", "2"]
    interrupt_after_first_epoch(monkeypatch)
    torch.set_num_threads(1)
    assert train_main(args) == 130  # one process, stopped after epoch 1
    monkeypatch.undo()
    first = torch.load(out / "last.pt", weights_only=True)["state_dict"]

    done = torchrun([*args, "--resume"], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "resuming" in done.stderr and done.stderr.count("resuming") == 1
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in log] == [1, 2]
    ckpt = torch.load(out / "last.pt", weights_only=True)
    assert ckpt["extra"]["epoch"] == 2
    assert any(not torch.equal(first[k], ckpt["state_dict"][k]) for k in first)  # it trained
