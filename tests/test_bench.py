"""lgld-bench: a tiny end-to-end run, the targets' decisions, checkpoint matching, the
torch-free path."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.train
torch = pytest.importorskip("torch")

from lgld.bench.cli import main  # noqa: E402
from lgld.bench.ort_profile import aggregate_profile  # noqa: E402
from lgld.bench.rss import summarize_rss  # noqa: E402
from lgld.export.onnx_export import export_model  # noqa: E402
from lgld.models.lgld_net import LGLDNet  # noqa: E402

FAST = ["--repeats", "3", "--warmup", "1", "--pipeline-seconds", "1.5", "--peak-size", "128",
        "--threads", "1"]
TIMED = ("reference", "torch", "onnx", "pipeline")

NO_TORCH = """
import sys

class NoTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch is blocked in this test")
        return None

sys.meta_path.insert(0, NoTorch())
from lgld.bench.cli import main
code = main(sys.argv[1:] + ["--input-size", "48"])  # re-export without torch: refused
print("input-size exit", code, flush=True)
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bench") / "tiny.onnx"
    torch.manual_seed(0)
    export_model(LGLDNet(num_classes=4, input_size=32), list("abcd"), None, path)
    return path


@pytest.fixture(scope="module")
def trained_tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 24 px model whose metadata records validation metrics, like a shipped model."""
    path = tmp_path_factory.mktemp("bench") / "tiny24.onnx"
    torch.manual_seed(1)
    training = {"dataset": "tiny", "split_counts": {"train": 80, "val": 20},
                "val": {"accuracy": 0.85, "macro_f1": 0.8125}}
    export_model(LGLDNet(num_classes=4, input_size=24), list("abcd"), None, path,
                 training=training)
    return path


def _rows(report: dict) -> dict[str, dict]:
    assert len(report["tables"]) == 1
    return {row["key"]: row for row in report["tables"][0]["rows"]}


def test_bench_measures_every_row_through_the_real_pipeline_and_checks_outputs(
    tiny_model: Path, trained_tiny_model: Path, tmp_path: Path
) -> None:
    out = tmp_path / "bench.json"
    args = ["--model", str(tiny_model), *FAST, "--profile", "--menu",
            f"32,24,{trained_tiny_model}", "--json", str(out)]
    assert main(args) == 0
    report = json.loads(out.read_text())
    rows = _rows(report)
    assert set(rows) == {"reference", "torch", "onnx", "pipeline", "peak"}
    assert rows["peak"]["gmacs"] > 0 and rows["peak"]["n"] == 5
    for key in TIMED:
        row = rows[key]
        assert not row["skipped"] and row["n"] >= 2, row
        assert row["median_ms"] > 0 and row["pct_of_peak"] > 0
    assert rows["reference"]["ratio_vs_row1"] == 1.0
    table = report["tables"][0]
    assert table["outputs"]["checked"] and table["outputs"]["ok"]
    assert table["outputs"]["max_abs_diff_vs_reference"] <= 1e-4
    stages = table["pipeline"]["stages"]
    assert list(stages) == ["capture", "quality gate", "preprocess", "inference", "smoothing",
                            "overlay", "JPEG encode"]
    assert all(s["median_ms"] > 0 for s in stages.values())
    live = table["pipeline"]["live"]
    assert live["results"] >= 3 and live["stream_fps"] > 0, "the MJPEG viewer sent frames"
    assert "random" in report["settings"]["weights"]  # no checkpoint next to the tiny model
    assert report["machine"]["onnxruntime"] and report["machine"]["torch"]
    menu = report["menu"][0]["sizes"]
    assert [e["input_size"] for e in menu] == [32, 24, 24]
    assert menu[0]["macs"] > menu[1]["macs"] and all(e["median_ms"] > 0 for e in menu)
    assert "val_accuracy" not in menu[0], "re-exported weights claim no accuracy"
    shipped = menu[2]
    assert shipped["model"] == str(trained_tiny_model) and shipped["macs"] > 0
    assert (shipped["val_accuracy"], shipped["val_macro_f1"], shipped["val_images"]) == (
        0.85, 0.8125, 20)
    ops = {op["op"] for op in report["profile"]["ops"]}
    assert "Conv" in ops and "Gather" not in ops
    assert sum(op["share"] for op in report["profile"]["ops"]) == pytest.approx(1.0)


def test_without_torch_the_torch_rows_are_skipped_with_a_note(
    tiny_model: Path, trained_tiny_model: Path, tmp_path: Path
) -> None:
    out = tmp_path / "notorch.json"
    args = ["--model", str(tiny_model), *FAST, "--pipeline-seconds", "0", "--json", str(out),
            "--menu", str(trained_tiny_model)]
    proc = subprocess.run([sys.executable, "-c", NO_TORCH, *args], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "input-size exit 1" in proc.stdout
    assert "lgld-bench: error: --input-size 48 differs" in proc.stderr
    assert "Traceback" not in proc.stderr
    report = json.loads(out.read_text())
    assert report["machine"]["torch"] is None
    rows = _rows(report)
    for key in ("reference", "torch"):
        assert rows[key]["skipped"] and "torch" in rows[key]["note"]
        assert rows[key]["median_ms"] is None
    assert rows["onnx"]["n"] == 3 and rows["onnx"]["ratio_vs_row1"] is None
    assert rows["onnx"]["gmacs"] > 0  # MACs counted on the ONNX graph
    targets = {t["target"]: t["status"] for t in report["tables"][0]["targets"]}
    assert targets == {"speedup": "SKIP", "pipeline": "SKIP"}
    assert "rows 1-2 skipped" in proc.stdout
    assert report["menu"][0]["sizes"][0]["val_accuracy"] == 0.85  # menu of models: no torch


def test_profile_aggregation_skips_warmup_runs() -> None:
    def node(op: str, ts: int, dur: int) -> dict:
        return {"cat": "Node", "name": f"{op}_kernel_time", "ts": ts, "dur": dur,
                "args": {"op_name": op}}

    events = [
        {"cat": "Session", "name": "model_run", "ts": 0, "dur": 100},
        node("Conv", 1, 1000),  # warm-up run: ignored
        {"cat": "Session", "name": "model_run", "ts": 200, "dur": 100},
        node("Conv", 201, 30), node("Gather", 210, 10), node("Gather", 220, 0),
        {"cat": "Session", "name": "model_run", "ts": 400, "dur": 100},
        node("Conv", 401, 50), node("Gather", 410, 10),
    ]
    report = aggregate_profile(events, skip_runs=1)
    assert report["runs"] == 2
    ops = {op["op"]: op for op in report["ops"]}
    assert ops["Conv"]["ms_per_run"] == pytest.approx(0.040)
    assert ops["Gather"]["share"] == pytest.approx(20 / 100)
    assert ops["Gather"]["nodes_per_run"] == 1.5
    assert report["ops"][0]["op"] == "Conv"


def test_rss_summary_flags_growth() -> None:
    flat = [(t * 0.5, 120.0 + (0.3 if t % 2 else 0.0)) for t in range(100)]
    growing = [(t * 0.5, 120.0 + 2.0 * t) for t in range(100)]
    ok = summarize_rss(flat, 1000, "demo")
    assert ok["flat"] and ok["under_limit"] and ok["max_mb"] == pytest.approx(120.3)
    bad = summarize_rss(growing, 1000, "demo")
    assert not bad["flat"] and not bad["under_limit"]
    assert bad["slope_mb_per_min"] == pytest.approx(240.0)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "/nonexistent/model.onnx"], "model not found"),
        (["--threads", "0"], "--threads values must be >= 1"),
        (["--repeats", "0"], "--repeats must be >= 1"),
        (["--input-size", "33"], "--input-size must be an even number"),
        (["--no-such-flag"], "unrecognized arguments"),
    ],
)
def test_bad_input_is_one_line(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(args) in (1, 2)
    err = capsys.readouterr().err
    assert err.startswith("lgld-bench: error: ") and message in err
    assert err.count("\n") == 1


def test_interleaved_timing_runs_rounds_with_an_untimed_call_per_block() -> None:
    from lgld.bench.timing import time_interleaved

    calls: list[str] = []
    fns = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    samples = time_interleaved(fns, warmup=1, repeats=7, block=3)
    assert {k: len(v) for k, v in samples.items()} == {"a": 7, "b": 7}
    assert "".join(calls) == "ab" + "aaaa" "bbbb" + "aaaa" "bbbb" + "aa" "bb"


def test_each_thread_count_gets_its_own_process(tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "threads.json"
    args = ["--model", str(tiny_model), "--repeats", "3", "--warmup", "1", "--peak-size", "0",
            "--pipeline-seconds", "0", "--threads", "1,2", "--json", str(out),
            "--menu", str(tiny_model)]
    assert main(args) == 0
    report = json.loads(out.read_text())
    assert [m["threads"] for m in report["menu"]] == [1, 2]
    assert all(m["sizes"][0]["median_ms"] > 0 for m in report["menu"])
    tables = report["tables"]
    assert [t["threads"] for t in tables] == [1, 2]
    for table in tables:
        rows = {r["key"]: r for r in table["rows"]}
        assert all(rows[k]["n"] == 3 for k in ("reference", "torch", "onnx"))
        assert table["outputs"]["ok"]


def _table(ratio: float | None, parity_ok: bool, pipe_fps: float, camera_fps: float) -> dict:
    onnx = {"key": "onnx", "ratio_vs_row1": ratio, "fps": 100.0, "samples_ms": [10.0] * 3}
    pipe = {"key": "pipeline", "skipped": False, "fps": pipe_fps}
    outputs = {"checked": True, "ok": parity_ok, "max_abs_diff_vs_lgld_torch": 1e-6,
               "max_abs_diff_vs_reference": 1e-6, "top1_identical": 9, "images": 9}
    live = {"camera_fps": camera_fps, "throughput_fps": pipe_fps}
    return {"rows": [onnx, pipe], "outputs": outputs, "pipeline": {"live": live}}


@pytest.mark.parametrize(
    ("ratio", "parity_ok", "pipe_fps", "camera_fps", "expected"),
    [
        (3.1, True, 95.0, 200.0, {"speedup": "PASS", "pipeline": "PASS"}),
        (3.1, False, 85.0, 200.0, {"speedup": "FAIL", "pipeline": "FAIL"}),
        (2.9, True, 28.0, 30.0, {"speedup": "FAIL", "pipeline": "PASS"}),  # camera-limited
        (None, True, 95.0, 200.0, {"speedup": "SKIP", "pipeline": "PASS"}),
    ],
)
def test_targets_pass_only_when_fast_enough_and_outputs_unchanged(
    ratio: float | None, parity_ok: bool, pipe_fps: float, camera_fps: float, expected: dict
) -> None:
    from lgld.bench.targets import targets

    got = {t["target"]: t["status"] for t in targets(_table(ratio, parity_ok, pipe_fps,
                                                             camera_fps))}
    assert got == expected


@pytest.mark.parametrize(("int8_ratio", "expected"), [(4.6, "PASS"), (2.5, "FAIL")])
def test_the_int8_row_is_judged_as_the_best_precision(int8_ratio: float, expected: str) -> None:
    from lgld.bench.targets import targets

    table = _table(2.6, True, 95.0, 200.0)
    table["rows"].append({"key": "int8", "ratio_vs_row1": int8_ratio})
    got = {t["target"]: t["status"] for t in targets(table)}
    assert got == {"speedup": "FAIL", "speedup_int8": expected, "pipeline": "PASS"}


def test_a_shipped_model_without_its_checkpoint_skips_the_torch_rows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """An installed zoo (no .pt, as in the runtime wheel): one note, rows 1-2 skipped."""
    from lgld.runtime.core.zoo import resolve_model

    zoo = tmp_path / "zoo"
    zoo.mkdir()
    shutil.copy(resolve_model("all-128"), zoo / "lgld-all-128.onnx")
    monkeypatch.setattr("lgld.bench.models.zoo_dir", lambda: zoo)
    monkeypatch.chdir(tmp_path)  # not a checkout: no ./zoo either
    out = tmp_path / "r.json"
    assert main(["--model", str(zoo / "lgld-all-128.onnx"), "--repeats", "2", "--warmup", "0",
                 "--pipeline-seconds", "0", "--peak-size", "0", "--threads", "1",
                 "--json", str(out)]) == 0
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "no checkpoint lgld-all-128.pt" in notes[0]
    rows = _rows(json.loads(out.read_text()))
    assert rows["reference"]["skipped"] and rows["torch"]["skipped"]
    assert rows["onnx"]["n"] == 2


def test_the_dev_checkout_finds_the_shipped_checkpoint(tmp_path: Path) -> None:
    """A dev checkout (editable install) benchmarks the shipped weights, sha256-checked."""
    import argparse

    from lgld.bench.models import prepare_models

    args = argparse.Namespace(model="all-128", checkpoint=None, int8=None, input_size=None)
    m = prepare_models(args, tmp_path)
    assert m.weights.startswith("checkpoint ") and "sha256 verified" in m.weights
    assert m.torch_model is not None and m.parity_onnx == m.onnx_path


def test_a_checkpoint_that_does_not_match_the_model_is_refused(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from lgld.runtime.core.zoo import resolve_model

    other = resolve_model("all-128").with_suffix(".pt")
    assert main(["--model", "all", "--checkpoint", str(other)]) == 1
    err = capsys.readouterr().err
    assert "does not match the model" in err and err.count("\n") == 1


def test_the_machine_record_reads_the_cpu_through_the_one_cpuinfo_reader(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    from lgld.bench import machine
    from lgld.runtime.core.cpu import CpuFeatures

    cpu = CpuFeatures("x86_64", frozenset({"fpu", "avx2", "fma", "avx512_vnni"}), "Test CPU")
    monkeypatch.setattr(machine, "cpu_features", lambda: cpu)
    info = machine.machine_info()
    assert info["cpu"] == "Test CPU" and info["cpu_flags"] == ["avx2", "fma"]
