"""lgld-export: exact rewrites, forbidden ops, ORT parity, metadata, atomic failures, INT8."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.train
torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from export_helpers import CLASSES, make_checkpoint, make_model, randomize_bn, sample_folder  # noqa: E402

from lgld.export import ExportError  # noqa: E402
from lgld.export.cli import main  # noqa: E402
from lgld.export.onnx_export import build_graph, export_model  # noqa: E402
from lgld.export.rewrites import (  # noqa: E402
    ExportLGLDNet,
    export_ffm,
    export_gce,
    export_head,
    export_ips,
    export_lgfm,
)
from lgld.export.verify import FORBIDDEN_OPS, check_graph, op_histogram  # noqa: E402
from lgld.models.checkpoint import file_sha256  # noqa: E402
from lgld.models.lgld_net import FFM, GCE, IPS, LGFM, VARIANTS  # noqa: E402
from lgld.runtime.core.classifier import OnnxClassifier  # noqa: E402
from lgld.runtime.core.modelinfo import lgld_version  # noqa: E402
from lgld.runtime.core.preprocess import PreprocessSpec  # noqa: E402

TOL = 1e-4


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Small convs are fastest (and immune to oversubscription) on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or p.suffix == ".tmp")


# ---------------------------------------------------------------- each rewrite, block by block


def _blocks():
    """(name, original block in eval mode with random BN, rewrite, input shape)."""
    c, s = 64, 16
    ffm = randomize_bn(FFM(3, c, 2 * s)).eval()
    yield "ips_involution", randomize_bn(IPS(3, c, True)).eval(), export_ips, (2, 3, 2 * s, 2 * s)
    yield "ips_plain", randomize_bn(IPS(3, c, False)).eval(), export_ips, (2, 3, 2 * s, 2 * s)
    yield "ffm_separable", ffm, export_ffm, (2, 3, 2 * s, 2 * s)
    yield "ffm_full_map", ffm, lambda m: export_ffm(m, separable=False), (2, 3, 2 * s, 2 * s)
    yield "gce", GCE(c).eval(), export_gce, (2, c, s, s)
    head = randomize_bn(make_model(32).head).eval()
    yield "head", head, export_head, (2, c, s, s)


BLOCKS = list(_blocks())


@pytest.mark.parametrize("name,block,rewrite,shape", BLOCKS, ids=[b[0] for b in BLOCKS])
def test_each_rewrite_is_exact(name, block, rewrite, shape) -> None:
    torch.manual_seed(1)
    x = torch.rand(*shape) * 2 - 0.5
    new = rewrite(block)
    with torch.no_grad():
        ref, out = block(x), new(x)
        assert ref.abs().max() > 1e-2, "degenerate test input"
        assert _max_diff(ref, out) <= 1e-5, name
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in new.modules())
    if name.startswith("ffm"):  # the positional channels are gone from the conv
        assert new.conv.in_channels == 3
    if name == "gce":  # no 1x1 compress left: three dilated convs only (+ the SE's 1x1s)
        assert [m.dilation[0] for m in new.dilated] == [2, 4, 8]
        assert all(m.out_channels == m.in_channels for m in new.dilated)
    if name == "ips_involution":  # the stem conv also yields the kernel generator's input
        assert new.conv.out_channels == 64 + 16


def test_lgfm_rewrite_is_exact() -> None:
    torch.manual_seed(2)
    lgfm = LGFM(64).eval()
    with torch.no_grad():
        lgfm.fc[-1].weight.mul_(20)  # sharp gates, far from 0.5
    local, global_ = torch.randn(2, 64, 8, 8), torch.randn(2, 64, 8, 8) + 1
    with torch.no_grad():
        assert _max_diff(lgfm(local, global_), export_lgfm(lgfm)(local, global_)) <= 1e-5


def test_bn_statistics_really_are_folded() -> None:
    """Changing a running statistic after the rewrite must show up (the test can fail)."""
    model = make_model(32)
    form = ExportLGLDNet.from_model(model)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert _max_diff(model(x), form(x)) <= TOL
        model.global_stem.bn.running_var.mul_(4)
        assert _max_diff(model(x), form(x)) > 10 * TOL


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_export_form_parity_every_variant(variant: str) -> None:
    model = make_model(32, variant)
    before = copy.deepcopy(model.state_dict())
    form = ExportLGLDNet.from_model(model)
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert _max_diff(model(x), form(x)) <= TOL
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "input changed"
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in form.modules())


# ------------------------------------------------------------------------- the ONNX graph


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_onnx_every_variant(tmp_path: Path, variant: str) -> None:
    model = make_model(32, variant)
    out = tmp_path / f"{variant}.onnx"
    report = export_model(model, CLASSES, PreprocessSpec(input_size=32), out, threads=1)
    graph = onnx.load(str(out))
    ops = set(op_histogram(graph))
    assert not ops & FORBIDDEN_OPS, ops & FORBIDDEN_OPS
    assert not ops & {"BatchNormalization", "Gather", "Sin", "Cos", "Range", "Softmax"}
    assert report.node_count == len(graph.graph.node)
    assert report.verification.ok and report.verification.max_abs_diff <= TOL
    clf = OnnxClassifier(out, threads=1)
    assert clf.info.variant == variant and clf.classes == CLASSES
    x = np.random.default_rng(0).random((2, 3, 32, 32), dtype=np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    assert np.abs(clf.logits(x) - ref).max() <= TOL
    assert np.array_equal(clf.logits(x).argmax(1), ref.argmax(1))


def test_graph_check_can_fail() -> None:
    """The model exported as written keeps a BatchNormalization, and the check says so."""
    graph, _ = build_graph(make_model(32), rewrite=False)
    assert "BatchNormalization" in op_histogram(graph)
    with pytest.raises(ExportError, match="BatchNormalization"):
        check_graph(graph)


def test_dynamic_batch(tmp_path: Path) -> None:
    model = make_model(32, "lfa_gce")
    out = tmp_path / "dyn.onnx"
    export_model(model, CLASSES, None, out, dynamic_batch=True, threads=1)
    clf = OnnxClassifier(out, threads=1)
    assert clf.fixed_batch is None
    x = np.random.default_rng(1).random((5, 3, 32, 32), dtype=np.float32)
    with torch.no_grad():
        assert np.abs(clf.logits(x) - model(torch.from_numpy(x)).numpy()).max() <= TOL


def test_verification_catches_a_wrong_graph(tmp_path: Path, monkeypatch) -> None:
    """A rewrite that changes outputs must fail the export and leave nothing behind."""
    real = ExportLGLDNet.from_model.__func__

    def broken(cls, model):
        form = real(cls, model)
        with torch.no_grad():
            form.head[0].bias.add_(0.01)
        return form

    monkeypatch.setattr(ExportLGLDNet, "from_model", classmethod(broken))
    out = tmp_path / "bad.onnx"
    with pytest.raises(ExportError, match="verification failed"):
        export_model(make_model(32), CLASSES, None, out, threads=1)
    assert not out.exists() and _leftovers(tmp_path) == []


# ---------------------------------------------------------------------- CLI and metadata


def test_cli_checkpoint_metadata_round_trip(tmp_path: Path, capsys) -> None:
    ckpt = tmp_path / "m.pt"
    training = {"dataset": "ALL (toy)", "epochs": 3, "val": {"accuracy": 0.75}}
    model = make_checkpoint(ckpt, size=64, training=training)
    out = tmp_path / "out" / "m.onnx"
    verify = sample_folder(tmp_path / "verify", per_class=1)
    argv = [str(ckpt), "-o", str(out), "--threads", "1"]
    argv += ["--verify-data", str(verify)] if verify else []
    assert main(argv) == 0
    text = capsys.readouterr().out
    for key in ("nodes:", "ops: ", "parameters:", "MACs:", "verified on"):
        assert key in text
    if verify:
        assert "4 images from" in text
    clf = OnnxClassifier(out, threads=1)
    info = clf.info
    assert info.classes == CLASSES and info.input_size == 64 and info.variant == "full"
    assert info.preprocess == PreprocessSpec(input_size=64)
    assert info.training == training and info.name == "ALL (toy)"
    assert info.checkpoint_sha256 == file_sha256(ckpt)
    assert info.lgld_version == lgld_version() and info.quantization == "fp32"
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(props["lgld.export"])["opset"] == 17
    x = np.random.default_rng(2).random((1, 3, 64, 64), dtype=np.float32)
    with torch.no_grad():
        assert np.abs(clf.logits(x) - model(torch.from_numpy(x)).numpy()).max() <= TOL
    assert _leftovers(out.parent) == []


def _bad_inputs(tmp: Path):
    good = tmp / "good.pt"
    make_checkpoint(good, size=32)
    corrupt = tmp / "corrupt.pt"
    corrupt.write_bytes(b"PK\x03\x04 definitely not a checkpoint")
    blocker = tmp / "a_file"
    blocker.write_text("x")
    wrong = tmp / "calib_wrong"
    for name in ("Cats", "Dogs"):
        (wrong / name).mkdir(parents=True)
    return {
        "missing": ([str(tmp / "nope.pt")], "checkpoint not found"),
        "corrupt": ([str(corrupt)], "cannot read checkpoint"),
        "unwritable": ([str(good), "-o", str(blocker / "m.onnx")], "cannot write"),
        "directory": ([str(good), "-o", str(tmp)], "is a directory"),
        "opset": ([str(good), "--opset", "99"], "opset 99 is not supported"),
        "calib_classes": ([str(good), "--int8", "--calib-data", str(wrong)], "do not match"),
        "int8_no_data": ([str(good), "--int8"], "needs --calib-data"),
        "calib_missing": ([str(good), "--int8", "--calib-data", str(tmp / "no")], "not found"),
        "verify_empty": ([str(good), "--verify-data", str(wrong)], "no images found"),
    }


@pytest.mark.parametrize(
    "case", ["missing", "corrupt", "unwritable", "directory", "opset", "calib_classes",
             "int8_no_data", "calib_missing", "verify_empty"]
)
def test_cli_bad_input(tmp_path: Path, capsys, case: str) -> None:
    argv, message = _bad_inputs(tmp_path)[case]
    if "-o" not in argv:
        argv += ["-o", str(tmp_path / "out.onnx")]
    before = sorted(p.name for p in tmp_path.rglob("*"))
    assert main([*argv, "--threads", "1"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("lgld-export: error: "), err
    assert message in err
    assert sorted(p.name for p in tmp_path.rglob("*")) == before, "something was left behind"


def test_import_needs_no_torch() -> None:
    code = "import sys, lgld.export; assert 'torch' not in sys.modules; lgld.export.ExportError"
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------------- INT8


@pytest.fixture
def calib(tmp_path: Path) -> Path:
    folder = sample_folder(tmp_path / "calib", per_class=2)
    if folder is None:
        pytest.skip("bundled samples tests/data/zoo_samples/ALL missing")
    return folder


def test_int8(tmp_path: Path, calib: Path, capsys, monkeypatch) -> None:
    ckpt = tmp_path / "m.pt"
    make_checkpoint(ckpt, size=32)
    out = tmp_path / "m.int8.onnx"
    base = [str(ckpt), "-o", str(out), "--threads", "1", "--int8", "--calib-data", str(calib),
            "--latency-runs", "5"]
    assert main([*base, "--max-accuracy-drop", "1"]) == 0
    text = capsys.readouterr().out
    assert "INT8 accuracy on 8 calibration images" in text
    assert ("faster (" in text) != ("NOT faster" in text)
    clf = OnnxClassifier(out, threads=1)
    assert clf.info.quantization == "int8-qdq" and clf.classes == CLASSES
    assert clf.info.checkpoint_sha256 == file_sha256(ckpt)
    hist = op_histogram(onnx.load(str(out)))
    assert hist.get("QuantizeLinear", 0) > 0 and hist.get("DequantizeLinear", 0) > 0
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(props["lgld.int8"])["images"] == 8
    assert json.loads(props["lgld.int8"])["runs"] == 5
    assert clf.logits(np.zeros((1, 3, 32, 32), np.float32)).shape == (1, 4)

    # refusal: an accuracy drop above the limit writes nothing
    out.unlink()
    monkeypatch.setattr("lgld.export.quantize.scores",
                        lambda models, items: [(0.9, 0.9), (0.5, 0.5)])
    assert main(base) == 1
    err = capsys.readouterr().err
    assert "INT8 refused" in err and err.count("\n") == 1
    assert not out.exists() and _leftovers(tmp_path) == []


def test_verification_limit_scales_with_the_logits() -> None:
    from lgld.export.verify import ATOL, compare_logits

    ref = np.array([[20.0, -3.0, 1.0, 0.5], [0.2, 0.1, -0.4, 0.3]], np.float32)
    report = compare_logits(ref, ref + 1.5e-4, "x")
    assert report.scale == 20.0 and report.limit == pytest.approx(20 * ATOL) and report.ok
    assert not compare_logits(ref, ref + 3e-3, "x").ok, "an error beyond the scaled limit"
    small = ref / 100
    assert compare_logits(small, small + 5e-5, "x").limit == ATOL, "never below the plain limit"
    assert not compare_logits(small, small + 2e-4, "x").ok


def test_export_records_the_domain_reference_when_given_the_training_data(
        tmp_path: Path, capsys) -> None:
    import cv2

    from lgld.runtime.core.domain import DomainReference

    ckpt = tmp_path / "m.pt"
    make_checkpoint(ckpt, size=32)
    rng = np.random.default_rng(0)
    for name in CLASSES:
        (tmp_path / "data" / name).mkdir(parents=True)
        for i in range(15):
            cv2.imwrite(str(tmp_path / "data" / name / f"{i}.png"),
                        rng.integers(0, 255, (40, 40, 3), dtype=np.uint8))
    plain, stamped = tmp_path / "plain.onnx", tmp_path / "stamped.onnx"
    assert main([str(ckpt), "-o", str(plain), "--threads", "1"]) == 0
    assert "no domain reference" in capsys.readouterr().out
    assert not OnnxClassifier(plain, threads=1).info.domain
    assert main([str(ckpt), "-o", str(stamped), "--threads", "1",
                 "--domain-data", str(tmp_path / "data")]) == 0
    assert "domain reference from data images, 60 images" in capsys.readouterr().out
    ref = DomainReference.from_dict(OnnxClassifier(stamped, threads=1).info.domain)
    assert ref.cells == 60
    assert main([str(ckpt), "-o", str(stamped), "--domain-split", "s.json"]) == 1
    assert capsys.readouterr().err.strip().endswith("--domain-split needs --domain-data DIR")
