"""lgld-train: end to end on a toy subset, splits, exact resume, metrics, bad inputs."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import interrupt_after_first_epoch

pytestmark = pytest.mark.train
torch = pytest.importorskip("torch")


from lgld.training import loop  # noqa: E402
from lgld.training.cli import train_main  # noqa: E402
from lgld.training.data import DataError, discover, make_split  # noqa: E402
from lgld.training.evaluate import summarise  # noqa: E402
from lgld.training.metrics import compute_metrics, confusion_matrix, format_report  # noqa: E402
from lgld.training.recipes import get_recipe  # noqa: E402

SAMPLES = Path(__file__).resolve().parent / "data" / "train_samples"  # 64x64 ALL fields


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny models are fastest on one thread (and CI has two busy cores)."""
    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(det)


def run_cli(fn: Callable[[list[str]], int], argv: list[str]) -> int:
    """Exit code of a console entry point, whether it returns or raises SystemExit."""
    try:
        return fn(argv)
    except SystemExit as exc:
        return int(exc.code or 0)


def toy_folder(dest: Path, classes: list[str], n: int) -> Path:
    """Copy the first ``n`` bundled images of some ALL classes into an ImageFolder."""
    for c in classes:
        (dest / c).mkdir(parents=True)
        for f in sorted((SAMPLES / c).glob("*.jpg"))[:n]:
            shutil.copy(f, dest / c / f.name)
    return dest


def synthetic_folder(dest: Path, per_class: int = 10, classes: tuple = ("a", "b")) -> Path:
    """Small random PNGs, every file unique."""
    rng = np.random.default_rng(0)
    for c in classes:
        (dest / c).mkdir(parents=True)
        for i in range(per_class):
            cv2.imwrite(str(dest / c / f"{i:02d}.png"), rng.integers(0, 256, (20, 20, 3), np.uint8))
    return dest


# ---------------------------------------------------------------- end to end


def test_training_end_to_end_beats_chance(tmp_path: Path) -> None:
    # Early vs Pro fields differ clearly in colour and texture: learnable at 32 px in seconds.
    data = toy_folder(tmp_path / "data", ["Early", "Pro"], 32)
    out = tmp_path / "run"
    code = run_cli(train_main, [
        "--data", str(data), "--out", str(out), "--input-size", "32", "--epochs", "8",
        "--batch-size", "8", "--recipe", "default", "--workers", "0", "--device", "cpu",
        "--val-fraction", "0.25",
    ])
    assert code == 0
    for name in ("split.json", "log.jsonl", "last.pt", "best.pt", "metrics.json",
                 "curves.png", "confusion_matrix.png", "report.txt"):
        assert (out / name).is_file(), name
    split = json.loads((out / "split.json").read_text())
    assert sum(split["counts"].values()) == 64 and set(split["counts"]) == {"train", "val", "test"}
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in log] == list(range(1, 9))
    assert min(e["train_loss"] for e in log[-3:]) < log[0]["train_loss"]
    assert log[-1]["val_accuracy"] >= 0.8  # chance is 0.5
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["checkpoint"] == "best.pt" and metrics["input_size"] == 32
    assert metrics["val"]["accuracy"] >= 0.85 and metrics["val"]["classes"] == ["Early", "Pro"]
    assert metrics["val"]["num_images"] == split["counts"]["val"]
    assert metrics["test"]["num_images"] == split["counts"]["test"]


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="no CUDA device here: the CUDA + mixed-precision path needs one")
def test_cuda_mixed_precision_training_learns_and_saves_float32_weights(tmp_path: Path) -> None:
    data = toy_folder(tmp_path / "data", ["Early", "Pro"], 32)
    out = tmp_path / "run"
    code = run_cli(train_main, [
        "--data", str(data), "--out", str(out), "--input-size", "32", "--epochs", "8",
        "--batch-size", "8", "--device", "cuda", "--workers", "0", "--val-fraction", "0.25",
    ])
    assert code == 0
    ckpt = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    assert ckpt["training"]["device"].startswith("cuda")
    assert ckpt["extra"]["scaler"]  # the GradScaler ran: mixed precision was on
    assert all(v.dtype == torch.float32 for v in ckpt["state_dict"].values()
               if v.is_floating_point())
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert all(np.isfinite(e["train_loss"]) for e in log)
    assert log[-1]["val_accuracy"] >= 0.8  # chance is 0.5


# ---------------------------------------------------------------- splits


def test_split_deterministic_stratified_and_duplicate_free(tmp_path: Path) -> None:
    data = synthetic_folder(tmp_path / "data", per_class=10)
    shutil.copy(data / "a" / "03.png", data / "a" / "copy_of_03.png")  # same class
    shutil.copy(data / "a" / "05.png", data / "b" / "copy_of_a05.png")  # across classes
    found = discover(data)
    assert found.layout == "imagefolder" and found.classes == ["a", "b"]
    s1, s2 = make_split(found, 0.1, 0.1, seed=7), make_split(found, 0.1, 0.1, seed=7)
    s1.save(tmp_path / "s1.json")
    s2.save(tmp_path / "s2.json")
    assert (tmp_path / "s1.json").read_bytes() == (tmp_path / "s2.json").read_bytes()
    assert make_split(found, 0.1, 0.1, seed=8).to_json()["splits"] != s1.to_json()["splits"]

    js = s1.to_json()
    assert js["duplicates_found"] == 2
    where = {it["path"]: part for part, items in js["splits"].items() for it in items}
    assert len(where) == 22  # every file listed exactly once
    assert where["a/03.png"] == where["a/copy_of_03.png"]
    assert where["a/05.png"] == where["b/copy_of_a05.png"]
    hashes = [{it["sha256"] for it in items} for items in js["splits"].values()]
    assert not (hashes[0] & hashes[1] or hashes[0] & hashes[2] or hashes[1] & hashes[2])
    for part in ("train", "val", "test"):  # stratified: every class in every part
        assert {it["label"] for it in js["splits"][part]} == {"a", "b"}


def test_split_with_separate_test_folder(tmp_path: Path) -> None:
    root = tmp_path / "raabin"
    synthetic_folder(root / "Train", per_class=10)
    (root / "TestA").mkdir()
    for c in ("a", "b"):
        (root / "TestA" / c).mkdir()
        shutil.copy(root / "Train" / c / "00.png", root / "TestA" / c / "t.png")
    found = discover(root)
    assert found.layout == "raabin" and len(found.test) == 2
    js = make_split(found, 0.2, seed=1).to_json()
    assert js["counts"] == {"train": 14, "val": 4, "test": 2}  # 80:20 of the 9 left per class
    assert {it["path"] for it in js["splits"]["test"]} == {"TestA/a/t.png", "TestA/b/t.png"}
    trainval = {it["path"] for p in ("train", "val") for it in js["splits"][p]}
    assert "Train/a/00.png" not in trainval  # identical to a test image: kept out


# ---------------------------------------------------------------- exact resume


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def test_resume_is_exact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    data = synthetic_folder(tmp_path / "data", per_class=12)
    args = ["--data", str(data), "--input-size", "48", "--epochs", "2", "--batch-size", "4",
            "--workers", "0", "--deterministic", "--device", "cpu", "--seed", "3"]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert run_cli(train_main, [*args, "--out", str(straight)]) == 0

    interrupt_after_first_epoch(monkeypatch)
    assert run_cli(train_main, [*args, "--out", str(resumed)]) == 130  # Ctrl-C after epoch 1
    monkeypatch.undo()
    assert torch.load(resumed / "last.pt", weights_only=True)["extra"]["epoch"] == 1
    assert run_cli(train_main, [*args, "--out", str(resumed), "--resume"]) == 0

    assert (straight / "split.json").read_bytes() == (resumed / "split.json").read_bytes()
    a, b = _weights(straight / "last.pt"), _weights(resumed / "last.pt")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), atol=1e-6), k
    logs = [[json.loads(x) for x in (d / "log.jsonl").read_text().splitlines()]
            for d in (straight, resumed)]
    drop = {"seconds", "train_seconds", "images_per_second"}
    assert [{k: v for k, v in e.items() if k not in drop} for e in logs[0]] == \
           [{k: v for k, v in e.items() if k not in drop} for e in logs[1]]

    # A run dir that already holds a run, or a resume with other settings: one-line errors.
    capsys.readouterr()
    assert run_cli(train_main, [*args, "--out", str(straight)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("lgld-train: error:") and "already holds a run" in err
    assert len(err.splitlines()) == 1
    other_seed = [*args[:-1], "4", "--out", str(straight), "--resume"]
    assert run_cli(train_main, other_seed) == 1
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("lgld-train: error:") and "different settings" in err


# ---------------------------------------------------------------- metrics


def test_metrics_equal_hand_computed_confusion_matrix() -> None:
    # rows: true a, b, c; columns: predicted a, b, c
    #   a: 3 1 0 | b: 0 2 0 | c: 2 1 1
    y_true = [0, 0, 0, 0, 1, 1, 2, 2, 2, 2]
    y_pred = [0, 1, 0, 0, 1, 1, 0, 1, 2, 0]
    cm = confusion_matrix(y_true, y_pred, 3)
    assert cm.tolist() == [[3, 1, 0], [0, 2, 0], [2, 1, 1]]
    m = compute_metrics(y_true, y_pred, ["a", "b", "c"])
    # a: P 3/5, R 3/4, F1 2/3 | b: P 2/4, R 2/2, F1 2/3 | c: P 1/1, R 1/4, F1 2/5
    expected = {"a": (0.6, 0.75, 2 / 3, 4), "b": (0.5, 1.0, 2 / 3, 2), "c": (1.0, 0.25, 0.4, 4)}
    for c, (p, r, f1, n) in expected.items():
        row = m["per_class"][c]
        assert row["precision"] == pytest.approx(p) and row["recall"] == pytest.approx(r)
        assert row["f1"] == pytest.approx(f1) and row["support"] == n
    assert m["accuracy"] == pytest.approx(0.6)
    assert m["macro_precision"] == pytest.approx(0.7)
    assert m["macro_recall"] == pytest.approx(2 / 3)
    assert m["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 0.4) / 3)
    assert m["num_images"] == 10 and m["classes"] == ["a", "b", "c"]
    report = format_report(m)
    assert "accuracy 60.00%" in report and "macro F1 57.78%" in report

    # A model class absent from the data and never predicted: counted as 0 by the plain
    # metrics; lgld-eval averages over the classes present in the data instead.
    m4 = compute_metrics(y_true, y_pred, ["a", "b", "c", "d"])
    assert m4["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 0.4) / 4)
    s4 = summarise(np.array(y_true), np.array(y_pred), ["a", "b", "c", "d"])
    assert s4["macro_f1"] == pytest.approx(m["macro_f1"]) and s4["macro_over"] == ["a", "b", "c"]


# ---------------------------------------------------------------- bad input


def _empty_class(tmp: Path) -> list[str]:
    data = synthetic_folder(tmp / "d")
    (data / "c").mkdir()
    return ["--data", str(data)]


def _single_class(tmp: Path) -> list[str]:
    return ["--data", str(synthetic_folder(tmp / "d", classes=("a",)))]


def _corrupt_image(tmp: Path) -> list[str]:
    data = synthetic_folder(tmp / "d")
    (data / "a" / "zz_broken.png").write_bytes(b"not an image at all")
    return ["--data", str(data)]


@pytest.mark.parametrize("case,make,needle", [
    ("missing data", lambda t: ["--data", str(t / "nope")], "not found"),
    ("empty class folder", _empty_class, "has no images"),
    ("single class", _single_class, "at least 2 classes"),
    ("unknown layout", lambda t: ["--data", str(t), "--layout", "kaggle"], "invalid choice"),
    ("corrupt image", _corrupt_image, "zz_broken.png"),
    ("bad input size", lambda t: ["--data", str(t), "--input-size", "40"], "multiple of 16"),
    ("bad white balance", lambda t: ["--data", str(t), "--white-balance", "-0.1"], "[0, 1)"),
    ("bad learning rate", lambda t: ["--data", str(t), "--lr", "0"], "--lr must be in (0, 1)"),
    ("resume nothing", lambda t: ["--data", str(t), "--resume"], "nothing to resume"),
])
def test_bad_input_one_line_error(tmp_path: Path, capsys, case: str, make, needle: str) -> None:
    out = tmp_path / "run"
    common = ["--out", str(out), "--workers", "0", "--input-size", "32", "--epochs", "1"]
    code = run_cli(train_main, [*common, *make(tmp_path)])  # the case's options win
    err = capsys.readouterr().err.strip().splitlines()
    assert code == (2 if case == "unknown layout" else 1), case  # usage 2, bad input 1
    assert err and err[-1].startswith("lgld-train: error:") and needle in err[-1], err
    assert not any("Traceback" in line for line in err)
    if case == "corrupt image":  # nothing half-made is left behind: the same --out works later
        assert not out.exists()


def test_a_run_saved_before_the_white_balance_field_still_resumes_at_its_old_range() -> None:
    current = loop.TrainConfig(data="d", out="o", recipe=get_recipe("finetune")).identity()
    saved = json.loads(json.dumps(current))
    del saved["recipe"]["white_balance"]  # a run saved before the field existed used +-0.2
    assert loop.same_run(saved, current)
    wider = loop.TrainConfig(data="d", out="o", recipe=get_recipe("finetune", white_balance=0.3))
    assert not loop.same_run(saved, wider.identity())


def test_data_error_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="unknown layout"):
        discover(tmp_path, "kaggle")


def test_recalibrate_bn_uses_exact_batch_statistics() -> None:
    import torch

    from lgld.training.loop import recalibrate_bn

    torch.manual_seed(0)
    conv, bn = torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4)
    model = torch.nn.Sequential(conv, bn).eval()
    bn.running_mean.fill_(5.0)  # stale statistics, as after fast-moving weights
    batches = [(torch.rand(8, 3, 6, 6) * (i + 1), torch.zeros(8)) for i in range(3)]
    recalibrate_bn(model, batches, torch.device("cpu"), max_batches=2)
    with torch.no_grad():
        feats = [conv(x) for x, _ in batches[:2]]
    expected = torch.stack([f.mean(dim=(0, 2, 3)) for f in feats]).mean(0)
    assert torch.allclose(bn.running_mean, expected, atol=1e-5)
    assert not bn.training and bn.momentum == 0.1


def test_model_card_follows_init_through_runs_and_shipped_copies(tmp_path: Path) -> None:
    from lgld.models.checkpoint import release_copy, save_checkpoint
    from lgld.models.lgld_net import LGLDNet
    from lgld.runtime.core.preprocess import PreprocessSpec
    from lgld.training.modelcard import run_stages

    def fake_run(name: str, recipe: str, size: int, init: str = "") -> Path:
        run = tmp_path / name
        run.mkdir()
        meta = {"data": "ALL", "recipe": {"name": recipe, "epochs": 2}, "input_size": size,
                "seed": 42, "init": init}
        save_checkpoint(run / "best.pt", LGLDNet(input_size=size), list("abcd"),
                        PreprocessSpec(input_size=size), extra={"run": meta, "epoch": 2})
        (run / "log.jsonl").write_text("".join(
            json.dumps({"epoch": e, "input_size": size, "seconds": 60.0}) + "\n"
            for e in (1, 2)))
        return run

    first = fake_run("stage1", "default", 32)
    second = fake_run("stage2", "finetune", 32, init=str(first / "best.pt"))
    shipped = release_copy(second / "best.pt", tmp_path / "zoo" / "shipped.pt")
    menu = fake_run("menu48", "finetune", 48, init=str(shipped))

    chain = run_stages(second)
    assert [s["recipe"] for s in chain] == ["default", "finetune"]
    assert "--init stage1/best.pt --split-file stage1/split.json" in chain[1]["command"]
    alone = run_stages(menu)
    # a checkpoint outside the checkout: a placeholder, never this machine's path
    assert len(alone) == 1 and "--init PATH/shipped.pt" in alone[0]["command"]
    assert str(tmp_path) not in alone[0]["command"]
    full = run_stages(menu, prior=second)
    assert [s["recipe"] for s in full] == ["default", "finetune", "finetune"]
    assert "--init PATH/shipped.pt --split-file stage2/split.json" in full[2]["command"]
    assert all(len(s["history"]) == 2 for s in full)


# ---------------------------------------------------------------- allocator restart


def test_allocator_choice_respects_opt_out_restart_mark_and_user_settings() -> None:
    from lgld.training.allocator import GLIBC_TUNABLES, allocator_environment

    je = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"
    name, env = allocator_environment({}, je)
    assert name == "jemalloc" and env["LD_PRELOAD"] == je and env["LGLD_ALLOCATOR"] == "jemalloc"
    assert "retain:true" in env["MALLOC_CONF"] and env["OMP_WAIT_POLICY"] == "PASSIVE"
    name, env = allocator_environment({"GLIBC_TUNABLES": "glibc.pthread.rseq=0"}, None)
    assert name == "glibc-tunables"
    assert env["GLIBC_TUNABLES"] == f"glibc.pthread.rseq=0:{GLIBC_TUNABLES}"  # kept, extended
    assert allocator_environment({"OMP_WAIT_POLICY": "ACTIVE"}, None)[1]["OMP_WAIT_POLICY"] \
        == "ACTIVE"  # the user's OpenMP wait policy is kept
    assert allocator_environment({"LGLD_NO_REEXEC": "1"}, je) is None
    assert allocator_environment({"LGLD_ALLOCATOR": "jemalloc"}, je) is None  # never twice
    assert allocator_environment({"LD_PRELOAD": "/opt/libtcmalloc.so"}, je) is None
    assert allocator_environment({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, je) is None


@pytest.mark.parametrize("opt_out,restarts", [(None, 1), ("env", 0), ("flag", 0)])
def test_lgld_train_restarts_once_and_keeps_its_exit_code(
    tmp_path: Path, opt_out: str | None, restarts: int
) -> None:
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items()
           if k not in ("LD_PRELOAD", "GLIBC_TUNABLES", "LGLD_ALLOCATOR", "LGLD_NO_REEXEC",
                         "OMP_WAIT_POLICY")}
    argv = [sys.executable, "-m", "lgld.training.cli", "--data", str(tmp_path / "nope"),
            "--out", str(tmp_path / "run")]
    if opt_out == "env":
        env["LGLD_NO_REEXEC"] = "1"
    elif opt_out == "flag":
        argv.append("--no-allocator-tuning")
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1  # the restarted process's exit code is the command's
    assert sum("restarting once" in line for line in lines) == restarts
    assert lines[-1].startswith("lgld-train: error: data folder not found")
    assert len(lines) == 1 + restarts


def test_throughput_table_reports_medians_and_ratios_to_the_reference_step() -> None:
    from lgld.bench.throughput import format_training, summarise

    def run(ips: float, user: float, images: int = 64) -> dict:
        return {"images_per_second": ips, "user_s": user, "sys_s": 1.0, "images": images,
                "allocator": "x"}

    table = summarise({"reference": [run(1.0, 30.0), run(3.0, 50.0), run(2.0, 40.0)],
                       "lgld-train": [run(5.0, 10.0, 128), run(4.0, 12.0, 128),
                                      run(9.0, 11.0, 128)]})
    assert table["reference"]["images_per_second"] == 2.0 and table["reference"]["ratio"] == 1
    assert table["lgld-train"]["ratio"] == pytest.approx(2.5)
    assert table["lgld-train"]["cpu_s_per_image"] == pytest.approx(12.0 / 128)
    text = format_training({"batch": 32, "rounds": 3, "loadavg": [1.0, 2.5],
                            "sizes": {"224": table}})
    assert "2.50x" in text and "load average 1.0-2.5" in text
