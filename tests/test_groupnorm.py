"""The GroupNorm variant of LGLD-Net: per-image statistics, weights from a BatchNorm model,
the same export form (no BatchNormalization, exact parity), ONNX, INT8 and lgld-train."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.train
torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

from export_helpers import CLASSES, make_model, sample_folder  # noqa: E402

from lgld.export.cli import main as export_main  # noqa: E402
from lgld.export.onnx_export import export_model  # noqa: E402
from lgld.export.rewrites import ExportLGLDNet  # noqa: E402
from lgld.export.verify import FORBIDDEN_OPS, op_histogram  # noqa: E402
from lgld.models.checkpoint import (  # noqa: E402
    load_checkpoint,
    load_weights,
    save_checkpoint,
    weights_across_norms,
)
from lgld.models.lgld_net import LGLDNet, ModelConfig  # noqa: E402
from lgld.runtime.core.classifier import OnnxClassifier  # noqa: E402
from lgld.runtime.core.preprocess import PreprocessSpec  # noqa: E402

TOL = 1e-4


def group_model(size: int = 32, variant: str = "full", seed: int = 0) -> LGLDNet:
    """A random eval-mode GroupNorm model with non-trivial GroupNorm scales and shifts."""
    torch.manual_seed(seed)
    model = LGLDNet(ModelConfig(num_classes=len(CLASSES), input_size=size, variant=variant,
                                norm="group"))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.GroupNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
    return model.eval()


def test_config_checks_the_norm_and_old_configs_mean_batchnorm() -> None:
    with pytest.raises(ValueError, match="unknown norm 'layer'"):
        ModelConfig(norm="layer")
    old = ModelConfig(**{k: v for k, v in ModelConfig().to_dict().items() if k != "norm"})
    assert old.norm == "batch"
    norms = [type(m) for m in group_model().modules()
             if isinstance(m, (torch.nn.GroupNorm, torch.nn.BatchNorm2d))]
    assert norms == [torch.nn.GroupNorm] * 3


def test_groupnorm_outputs_do_not_depend_on_the_batch_in_training_mode() -> None:
    """The point of GroupNorm: an image is normalised by itself, not by its batch-mates."""
    x = torch.rand(4, 3, 32, 32)
    other = torch.cat([x[:1], torch.rand(3, 3, 32, 32) * 0.2])
    for norm, independent in (("group", True), ("batch", False)):
        model = make_model(32) if norm == "batch" else group_model()
        model.train()
        torch.manual_seed(0)
        model.head[5].p = 0.0  # no dropout, so only normalisation can differ
        with torch.no_grad():
            a, b = model(x)[0], model(other)[0]
        assert torch.allclose(a, b, atol=1e-5) == independent, norm


def test_batchnorm_weights_load_into_a_groupnorm_model_and_back() -> None:
    bn = make_model(32)
    gn = LGLDNet(replace(bn.config, norm="group"))
    with pytest.raises(Exception, match="do not fit"):
        load_weights(gn, bn.state_dict())
    load_weights(gn, weights_across_norms(gn, bn.state_dict()))
    for k, v in gn.state_dict().items():
        assert torch.equal(v, bn.state_dict()[k]), k  # every shared weight carried over
    back = LGLDNet(bn.config)
    load_weights(back, weights_across_norms(back, gn.state_dict()))
    assert torch.equal(back.head[1].running_var, torch.ones(back.config.base_channels))


@pytest.mark.parametrize("variant", ["full", "lfa_gce"])
def test_export_form_keeps_groupnorm_and_is_exact(variant: str) -> None:
    model = group_model(32, variant)
    form = ExportLGLDNet.from_model(model)
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert (model(x) - form(x)).abs().max().item() <= TOL
    assert sum(isinstance(m, torch.nn.GroupNorm) for m in form.modules()) == 3


def test_onnx_of_a_groupnorm_model_is_verified_and_matches(tmp_path: Path) -> None:
    model = group_model(32)
    out = tmp_path / "gn.onnx"
    report = export_model(model, CLASSES, PreprocessSpec(input_size=32), out, threads=1)
    ops = set(op_histogram(onnx.load(str(out))))
    assert not ops & FORBIDDEN_OPS and "BatchNormalization" not in ops
    assert report.verification.ok
    x = np.random.default_rng(0).random((2, 3, 32, 32), dtype=np.float32)
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    assert np.abs(OnnxClassifier(out, threads=1).logits(x) - ref).max() <= TOL


def test_int8_export_of_a_groupnorm_model(tmp_path: Path) -> None:
    calib = sample_folder(tmp_path / "calib", per_class=2)
    if calib is None:
        pytest.skip("bundled samples tests/data/zoo_samples/ALL missing")
    ckpt = tmp_path / "gn.pt"
    save_checkpoint(ckpt, group_model(32), CLASSES, PreprocessSpec(input_size=32),
                    training={"dataset": "toy", "epochs": 1})
    assert load_checkpoint(ckpt).config.norm == "group"
    out = tmp_path / "gn.int8.onnx"
    assert export_main([str(ckpt), "-o", str(out), "--threads", "1", "--int8", "--calib-data",
                        str(calib), "--latency-runs", "3", "--max-accuracy-drop", "1"]) == 0
    clf = OnnxClassifier(out, threads=1)
    assert clf.info.quantization == "int8-qdq"
    assert clf.logits(np.zeros((1, 3, 32, 32), np.float32)).shape == (1, len(CLASSES))


def test_lgld_train_groupnorm_from_batchnorm_weights(tmp_path: Path, capsys) -> None:
    from test_training import run_cli, synthetic_folder

    from lgld.training.cli import train_main

    data = synthetic_folder(tmp_path / "data", per_class=8)
    init = tmp_path / "bn.pt"
    bn = make_model(48, num_classes=2)
    save_checkpoint(init, bn, ["a", "b"], PreprocessSpec(input_size=48))
    out = tmp_path / "run"
    args = ["--data", str(data), "--out", str(out), "--input-size", "48", "--epochs", "1",
            "--batch-size", "4", "--workers", "0", "--device", "cpu", "--norm", "group",
            "--recipe", "finetune", "--init", str(init)]
    assert run_cli(train_main, args) == 0
    ckpt = load_checkpoint(out / "last.pt")
    assert ckpt.config.norm == "group"
    identity = json.loads((out / "split.json").read_text())
    assert identity["counts"]["train"] > 0
    # a resume with the other norm is another run
    other = [("batch" if a == "group" else a) for a in args]
    capsys.readouterr()
    assert run_cli(train_main, [*other, "--resume"]) == 1
    assert "different settings" in capsys.readouterr().err
