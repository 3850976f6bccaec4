"""lgld-eval: .pt vs its ONNX export, classes matched by name, split files, perturbations,
skipped images and one-line errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

pytestmark = [pytest.mark.train, pytest.mark.usefixtures("one_torch_thread")]
torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

import torch.nn.functional as F  # noqa: E402
from colour_models import colour_folder, colour_model  # noqa: E402

from lgld.models.checkpoint import save_checkpoint  # noqa: E402
from lgld.models.lgld_net import LGLDNet, ModelConfig  # noqa: E402
from lgld.runtime.core.preprocess import PreprocessSpec, preprocess_batch, read_image  # noqa: E402
from lgld.training.data import discover, make_split  # noqa: E402
from lgld.training.evaluate import main  # noqa: E402
from lgld.training.perturb import PERTURBATIONS, SEVERITIES, conditions, perturb  # noqa: E402

DATA = Path(__file__).resolve().parent / "data" / "zoo_samples"  # bundled samples
WBC5 = ["Basophil", "Eosinophil", "Lymphocyte", "Monocyte", "Neutrophil"]
METRICS = ("accuracy", "macro_precision", "macro_recall", "macro_f1")


def run_eval(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse usage errors
        return int(exc.code or 0)


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def wbc_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three images each of four WBC5 classes (a subset of the model's five)."""
    root = tmp_path_factory.mktemp("wbc")
    for c in ("Basophil", "Eosinophil", "Lymphocyte", "Neutrophil"):
        (root / c).mkdir()
        for f in sorted((DATA / "WBC5" / c).glob("*.jpg"))[:3]:
            shutil.copy(f, root / c / f.name)
    return root


def _tiny_trained_model(folder: Path) -> LGLDNet:
    """A 32 px LGLD-Net fitted for a few steps, with BN statistics of this data, so that its
    predictions differ between images by clear margins (an untrained net predicts one class)."""
    files = sorted(folder.glob("*/*.jpg"))
    x = torch.from_numpy(preprocess_batch([read_image(f) for f in files],
                                          PreprocessSpec(input_size=32)))
    y = torch.tensor([WBC5.index(f.parent.name) for f in files])
    torch.manual_seed(1)
    model = LGLDNet(ModelConfig(num_classes=5, input_size=32))
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(15):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.reset_running_stats()
                m.momentum = None
        model.train()
        model(x)
    return model.eval()


def export_onnx(ckpt: Path, out: Path) -> None:
    """Export with lgld.export (rewrites, simplification, metadata, verification)."""
    from lgld.export.onnx_export import export_checkpoint

    export_checkpoint(ckpt, out, threads=1, verify_limit=2)


@pytest.fixture(scope="module")
def models(wbc_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("models")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = _tiny_trained_model(wbc_folder)
        save_checkpoint(d / "m.pt", model, WBC5, PreprocessSpec(input_size=32),
                        training={"dataset": "toy"})
        export_onnx(d / "m.pt", d / "m.onnx")
    finally:
        torch.set_num_threads(threads)
    return d / "m.pt", d / "m.onnx"


# ---------------------------------------------------------------- .pt vs .onnx


def test_pt_and_onnx_give_identical_metrics(wbc_folder: Path, models, tmp_path: Path) -> None:
    pt, onnx_path = models
    results = []
    for path in (pt, onnx_path):
        out = tmp_path / f"{path.suffix[1:]}.json"
        assert run_eval(["--model", str(path), "--data", str(wbc_folder), "--json", str(out),
                         "--perturb", "--batch-size", "5", "--threads", "1"]) == 0
        results.append(json.loads(out.read_text()))
    a, b = results
    for key in (*METRICS, "per_class", "confusion_matrix", "classes", "num_images",
                "perturbations"):
        assert a[key] == b[key], key
    # The comparison means something: predictions spread over several classes.
    assert sum(1 for col in np.array(a["confusion_matrix"]).sum(0) if col) >= 2
    assert a["num_images"] == 12 and a["classes"] == WBC5 and a["skipped"] == []
    assert all(0.0 <= a[k] <= 1.0 for k in METRICS)
    assert a["per_class"]["Monocyte"]["support"] == 0 and "Monocyte" not in a["macro_over"]
    assert a["model"]["format"] == "pt" and b["model"]["format"] == "onnx"
    assert set(a["perturbations"]) == set(PERTURBATIONS)
    for sevs in a["perturbations"].values():
        assert set(sevs) == set(SEVERITIES)
        assert all(0.0 <= v[k] <= 1.0 for v in sevs.values() for k in ("accuracy", "macro_f1"))


def test_split_file_and_limit(wbc_folder: Path, models, tmp_path: Path, capsys) -> None:
    pt, _ = models
    split = make_split(discover(wbc_folder), 0.34, 0.0, seed=0)
    split.save(tmp_path / "split.json")
    out = tmp_path / "r.json"
    assert run_eval(["--model", str(pt), "--split-file", str(tmp_path / "split.json"),
                     "--split", "val", "--json", str(out)]) == 0  # --data from the split file
    r = json.loads(out.read_text())
    assert r["num_images"] == len(split.parts["val"]) == 4
    assert r["data"]["split"] == "val"
    assert run_eval(["--model", str(pt), "--data", str(wbc_folder), "--limit-per-class", "2",
                     "--json", str(out)]) == 0
    assert json.loads(out.read_text())["num_images"] == 8

    copy = tmp_path / "copy"
    shutil.copytree(wbc_folder, copy)
    victim = copy / split.parts["val"][0].path
    victim.write_bytes(victim.read_bytes() + b"\0")
    capsys.readouterr()
    assert run_eval(["--model", str(pt), "--data", str(copy), "--split-file",
                     str(tmp_path / "split.json"), "--split", "val"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "sha256 mismatch" in err[0]


# ---------------------------------------------------------------- classes by name


def test_classes_matched_by_name(tmp_path: Path) -> None:
    model = colour_model(tmp_path / "c.onnx", ["red", "green", "blue"])
    data = colour_folder(tmp_path / "d", ["blue", "red"])  # sorted order differs from model's
    out = tmp_path / "r.json"
    assert run_eval(["--model", str(model), "--data", str(data), "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["accuracy"] == 1.0 and r["macro_f1"] == 1.0 and r["macro_over"] == ["red", "blue"]
    assert r["classes"] == ["red", "green", "blue"]
    assert r["confusion_matrix"] == [[3, 0, 0], [0, 0, 0], [0, 0, 3]]


def test_raabin_layout_evaluates_testa(tmp_path: Path) -> None:
    model = colour_model(tmp_path / "c.onnx", ["red", "green", "blue"])
    colour_folder(tmp_path / "d" / "Train", ["red", "green", "blue"], n=4)
    colour_folder(tmp_path / "d" / "TestA", ["red", "green", "blue"], n=2)
    out = tmp_path / "r.json"
    assert run_eval(["--model", str(model), "--data", str(tmp_path / "d"), "--json",
                     str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["num_images"] == 6 and r["data"]["layout"] == "raabin" and r["accuracy"] == 1.0


def test_corrupt_images_are_counted_and_listed(tmp_path: Path, capsys) -> None:
    model = colour_model(tmp_path / "c.onnx", ["red", "green", "blue"])
    data = colour_folder(tmp_path / "d", ["red", "blue"])
    (data / "red" / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    out = tmp_path / "r.json"
    assert run_eval(["--model", str(model), "--data", str(data), "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["num_images"] == 6 and r["data"]["images_listed"] == 7
    assert [s["path"] for s in r["skipped"]] == ["red/broken.jpg"]
    assert "skipped 1 unreadable image(s)" in capsys.readouterr().out


# ---------------------------------------------------------------- perturbations


def test_perturbations_deterministic_and_graded() -> None:
    rng = np.random.default_rng(0)
    image = cv2.GaussianBlur(rng.integers(40, 220, (160, 180, 3), dtype=np.uint8), (0, 0), 1)
    for kind, sev in conditions():
        a, b = perturb(image, kind, sev, seed=5), perturb(image, kind, sev, seed=5)
        assert a.shape == image.shape and a.dtype == np.uint8, (kind, sev)
        assert np.array_equal(a, b), (kind, sev)
        assert np.abs(a.astype(int) - image).mean() > 0.5, (kind, sev)
    for kind in PERTURBATIONS:
        mild, strong = (np.abs(perturb(image, kind, s, 5).astype(int) - image).mean()
                        for s in SEVERITIES)
        assert strong > mild, kind
    for kind in ("stain", "noise"):  # random parts follow the seed
        assert not np.array_equal(perturb(image, kind, "mild", 1), perturb(image, kind, "mild", 2))
    with pytest.raises(ValueError, match="unknown perturbation"):
        perturb(image, "rain", "mild")


# ---------------------------------------------------------------- bad input


def _setup(tmp: Path, case: str) -> list[str]:
    model = str(colour_model(tmp / "c.onnx", ["red", "green", "blue"]))
    good = str(colour_folder(tmp / "good", ["red", "blue"]))
    if case == "missing data":
        return ["--model", model, "--data", str(tmp / "nope")]
    if case == "empty class folder":
        (tmp / "good" / "green").mkdir()
        return ["--model", model, "--data", good]
    if case == "single class":
        return ["--model", model, "--data", str(colour_folder(tmp / "one", ["red"]))]
    if case == "unknown layout":
        return ["--model", model, "--data", good, "--layout", "kaggle"]
    if case == "class unknown to the model":
        return ["--model", model, "--data", str(colour_folder(tmp / "p", ["red", "purple"]))]
    if case == "all images unreadable":
        for f in (tmp / "good").glob("*/*.png"):
            f.write_bytes(b"garbage")
        return ["--model", model, "--data", good]
    if case == "missing model":
        return ["--model", str(tmp / "none.onnx"), "--data", good]
    if case == "model of unknown type":
        (tmp / "m.txt").write_text("x")
        return ["--model", str(tmp / "m.txt"), "--data", good]
    if case == "corrupt onnx":
        (tmp / "bad.onnx").write_bytes(b"not onnx")
        return ["--model", str(tmp / "bad.onnx"), "--data", good]
    if case == "onnx without lgld metadata":
        m = onnx.load(model)
        del m.metadata_props[:]
        onnx.save(m, str(tmp / "plain.onnx"))
        return ["--model", str(tmp / "plain.onnx"), "--data", good]
    if case == "corrupt checkpoint":
        (tmp / "bad.pt").write_bytes(b"not a checkpoint")
        return ["--model", str(tmp / "bad.pt"), "--data", good]
    if case == "missing split file":
        return ["--model", model, "--data", good, "--split-file", str(tmp / "no.json")]
    if case == "bad batch size":
        return ["--model", model, "--data", good, "--batch-size", "0"]
    raise AssertionError(case)


@pytest.mark.parametrize("case,needle", [
    ("missing data", "data folder not found"),
    ("empty class folder", "has no images"),
    ("single class", "at least 2 classes"),
    ("unknown layout", "invalid choice"),
    ("class unknown to the model", "'purple' is not known to the model"),
    ("all images unreadable", "none of the 6 images could be read"),
    ("missing model", "model not found"),
    ("model of unknown type", "must be a .pt checkpoint or an .onnx model"),
    ("corrupt onnx", "cannot load ONNX model"),
    ("onnx without lgld metadata", "not an lgld model"),
    ("corrupt checkpoint", "cannot read checkpoint"),
    ("missing split file", "split file not found"),
    ("bad batch size", "--batch-size must be >= 1"),
])
def test_bad_input_one_line_error(tmp_path: Path, capsys, case: str, needle: str) -> None:
    argv = _setup(tmp_path, case)
    capsys.readouterr()
    assert run_eval(argv) == (2 if case == "unknown layout" else 1), case  # usage 2, input 1
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("lgld-eval: error:") and needle in err[0], err[0]
