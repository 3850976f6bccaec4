"""INT8 on every CPU: feature detection, the precision choice, and the shipped INT8 models.

The shipped INT8 models must give the fp32 models' answers on the bundled samples whatever the
CPU (x86 AVX2, x86 AVX-512 VNNI, arm64): their weights have 7 bits of range, so no int8 kernel
saturates. deploy/arm64-check.sh runs the same comparison under an emulated Raspberry Pi 5.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from lgld.runtime.core.classifier import ModelLoadError, OnnxClassifier, needs_exact_int8_kernels
from lgld.runtime.core.cpu import parse_cpuinfo
from lgld.runtime.core.precision import (
    choose_precision,
    gate_passed,
    gate_record,
    int8_sibling,
)
from lgld.runtime.core.preprocess import read_image
from lgld.runtime.core.zoo import ZOO, resolve_model

SAMPLES = Path(__file__).resolve().parent / "data" / "zoo_samples"
# A Raspberry Pi 5's /proc/cpuinfo (Cortex-A76); deploy/arm64-check.sh serves it to QEMU too.
PI5 = (Path(__file__).resolve().parents[1] / "deploy" / "pi5-cpuinfo.txt").read_text()
PI4 = "processor\t: 0\nFeatures\t: fp asimd evtstrm crc32 cpuid\nCPU part\t: 0xd08\n"
HASWELL = "processor\t: 0\nflags\t\t: fpu sse4_1 sse4_2 avx fma avx2 bmi2\n"
ICELAKE = "processor\t: 0\nflags\t\t: fpu avx avx2 avx512f avx512bw avx512_vnni\n"
ALDERLAKE = "processor\t: 0\nflags\t\t: fpu avx avx2 avx_vnni\n"

CPUS = {
    "pi5": parse_cpuinfo(PI5, "aarch64"),
    "pi4": parse_cpuinfo(PI4, "aarch64"),
    "haswell": parse_cpuinfo(HASWELL, "x86_64"),
    "icelake": parse_cpuinfo(ICELAKE, "x86_64"),
    "alderlake": parse_cpuinfo(ALDERLAKE, "x86_64"),
}
SHIPPED_INT8 = sorted(
    name for name in ZOO if int8_sibling(resolve_model(name)).is_file()
)


@pytest.mark.parametrize(
    ("cpu", "fast", "relevant"),
    [
        ("pi5", True, ["asimd", "asimddp"]),
        ("pi4", False, ["asimd"]),
        ("haswell", False, ["avx2"]),
        ("icelake", True, ["avx2", "avx512f", "avx512_vnni"]),
        ("alderlake", True, ["avx2", "avx_vnni"]),
    ],
)
def test_cpuinfo_tells_which_cpus_have_int8_dot_products(cpu, fast, relevant) -> None:
    features = CPUS[cpu]
    assert features.fast_int8 is fast and features.relevant == relevant
    assert ("(fast int8)" in features.summary()) is fast


def test_cpuinfo_names_the_cpu_or_the_board() -> None:
    assert CPUS["pi5"].model == "Raspberry Pi 5 Model B Rev 1.0"  # the board's line, last
    named = parse_cpuinfo("processor\t: 0\nmodel name\t: Intel Xeon\n" + ICELAKE, "x86_64")
    assert named.model == "Intel Xeon" and "avx512_vnni" in named.flags
    assert CPUS["haswell"].model is None


def test_exact_int8_kernels_are_asked_for_only_on_x86_without_vnni() -> None:
    assert needs_exact_int8_kernels(CPUS["haswell"])
    assert not any(needs_exact_int8_kernels(CPUS[c]) for c in ("icelake", "alderlake", "pi5"))


def test_an_unreadable_cpuinfo_means_no_features(tmp_path: Path) -> None:
    from lgld.runtime.core.cpu import cpu_features

    features = cpu_features(tmp_path / "missing", arch="x86_64")
    assert features.flags == frozenset() and not features.fast_int8


@pytest.fixture
def model_pair(tmp_path: Path) -> tuple[Path, Path]:
    if "all" not in SHIPPED_INT8:
        pytest.skip("no INT8 version of the default model shipped")
    fp32 = resolve_model("all")
    shutil.copy(fp32, tmp_path / "m.onnx")
    shutil.copy(int8_sibling(fp32), tmp_path / "m.int8.onnx")
    return tmp_path / "m.onnx", tmp_path / "m.int8.onnx"


def test_auto_precision_takes_int8_only_where_the_cpu_has_int8_dot_products(model_pair) -> None:
    fp32, int8 = model_pair
    for cpu in ("pi5", "icelake", "alderlake"):
        assert choose_precision(fp32, "auto", CPUS[cpu]).path == int8
    for cpu in ("pi4", "haswell"):
        choice = choose_precision(fp32, "auto", CPUS[cpu])
        assert choice.path == fp32 and "no int8 dot product" in choice.reason
    assert choose_precision(fp32, "fp32", CPUS["pi5"]).path == fp32
    assert choose_precision(fp32, "int8", CPUS["haswell"]).path == int8
    assert choose_precision(int8, "fp32", CPUS["pi5"]).path == int8, "an explicit file wins"


def test_auto_precision_skips_an_int8_file_without_a_passed_gate(model_pair) -> None:
    fp32, int8 = model_pair
    shutil.copy(fp32, int8)  # an "INT8" file that records no accuracy gate
    choice = choose_precision(fp32, "auto", CPUS["pi5"])
    assert choice.path == fp32 and "no passed accuracy gate" in choice.reason
    record = {"fp32_accuracy": 0.99, "int8_accuracy": 0.98, "max_accuracy_drop": 0.005}
    assert not gate_passed(record) and not gate_passed(None)
    assert gate_passed({**record, "int8_accuracy": 0.988})


def test_int8_precision_without_an_int8_file_is_a_clear_error(tmp_path: Path) -> None:
    fp32 = tmp_path / "m.onnx"
    shutil.copy(resolve_model("all-192"), fp32)
    with pytest.raises(ModelLoadError, match="has no INT8 version"):
        choose_precision(fp32, "int8", CPUS["pi5"])
    assert choose_precision(fp32, "auto", CPUS["pi5"]).path == fp32
    with pytest.raises(ValueError, match="precision must be"):
        choose_precision(fp32, "fast")


@pytest.mark.parametrize("name", SHIPPED_INT8)
def test_shipped_int8_model_records_a_passed_gate_on_its_val_split(name: str) -> None:
    record = gate_record(int8_sibling(resolve_model(name)))
    assert gate_passed(record), record
    assert record["gate"].startswith("val images") and record["weights"] == "s7"


@pytest.mark.parametrize("name", SHIPPED_INT8)
def test_shipped_int8_model_gives_the_fp32_answers_on_bundled_samples(name: str) -> None:
    """Holds on any CPU: this is the test that failed on x86 AVX2 with full-range weights."""
    fp32_path = resolve_model(name)
    fp32 = OnnxClassifier(fp32_path, threads=1)
    int8 = OnnxClassifier(int8_sibling(fp32_path), threads=1)
    assert int8.info.quantization == "int8-qdq" and int8.classes == fp32.classes
    assert int8.fixed_batch is None, "INT8 models take a dynamic batch (cell mode sends N crops)"
    folder = "WBC5" if name.startswith("wbc5") else "ALL"
    files = sorted((SAMPLES / folder).glob("*/*.jpg"))
    batch = fp32.prepare([read_image(p) for p in files])
    ref, got = fp32.logits(batch), int8.logits(batch)
    differ = np.flatnonzero(got.argmax(1) != ref.argmax(1))
    assert differ.size == 0, [files[i].name for i in differ]
    assert np.abs(got - ref).max() <= 0.25


def test_lgld_run_precision_flag_picks_the_file_and_fails_clearly(tmp_path, tiny_model, capsys):
    import json

    from lgld.runtime import cli

    model = tmp_path / "m.onnx"
    shutil.copy(tiny_model, model)
    image = tmp_path / "slides" / "a.jpg"
    image.parent.mkdir()
    shutil.copy(next((SAMPLES / "ALL").glob("*/*.jpg")), image)
    args = ["--model", str(model), "--source", f"images:{image.parent}", "--preview", "off",
            "--threads", "1"]
    rc = cli.main([*args, "--precision", "int8"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 3 and "has no INT8 version" in err[-1] and "Traceback" not in "\n".join(err)
    log = tmp_path / "r.jsonl"
    assert cli.main([*args, "--precision", "fp32", "--log", str(log)]) == 0
    assert len([json.loads(line) for line in log.read_text().splitlines()]) == 1
    assert cli.main([*args, "--precision", "fast"]) != 0


@pytest.mark.train
def test_int8_export_gates_on_the_models_own_val_split_only(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from lgld.export import ExportError
    from lgld.export.quantize import split_items
    from lgld.training.data import Item, Split

    classes = sorted(p.name for p in (SAMPLES / "ALL").iterdir() if p.is_dir())
    parts: dict[str, list[Item]] = {"train": [], "val": [], "test": []}
    for cls in classes:
        files = sorted((SAMPLES / "ALL" / cls).glob("*.jpg"))[:3]
        for part, f in zip(parts, files, strict=True):
            parts[part].append(Item(f"{cls}/{f.name}", cls, ""))
    split = Split(root=SAMPLES / "ALL", layout="imagefolder", classes=classes, seed=42,
                  parts=parts)
    split.save(tmp_path / "split.json")
    train, val = split_items(tmp_path / "split.json", classes,
                             expect_counts={"train": 99, "val": 4, "test": 4})
    assert len(train) == len(val) == 4 and {label for _, label in val} == {0, 1, 2, 3}
    with pytest.raises(ExportError, match="trained on a split"):
        split_items(tmp_path / "split.json", classes, expect_counts={"val": 5, "test": 4})
    with pytest.raises(ExportError, match="classes"):
        split_items(tmp_path / "split.json", ["a", "b"])
