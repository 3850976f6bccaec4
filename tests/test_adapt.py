"""lgld-adapt and its methods: AdaBN with a blend, TENT on the norm parameters, the classifier
fine-tune on reviewed cells, reading a session's crops, the exported model and its card."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
torch.set_num_threads(1)  # a tiny model: more threads only fight over a shared machine

from lgld.models.checkpoint import save_checkpoint  # noqa: E402
from lgld.models.lgld_net import LGLDNet, ModelConfig  # noqa: E402
from lgld.runtime.core.preprocess import PreprocessSpec  # noqa: E402
from lgld.training.adapt import (  # noqa: E402
    AdaptError,
    adabn,
    batch_norms,
    entropy,
    session_cells,
    tent,
)
from lgld.training.finetune import finetune, pooled_features, refit_head  # noqa: E402

WBC5 = ["Basophil", "Eosinophil", "Lymphocyte", "Monocyte", "Neutrophil"]
SAMPLES = Path(__file__).resolve().parent / "data" / "zoo_samples" / "WBC5"


def tiny(seed: int = 0) -> LGLDNet:
    torch.manual_seed(seed)
    return LGLDNet(ModelConfig(num_classes=5, input_size=32, base_channels=8)).eval()


def test_adabn_blend_zero_keeps_and_one_takes_the_new_statistics():
    model = tiny()
    x = torch.rand(40, 3, 32, 32) * 0.5 + 0.5  # brighter than anything the model saw
    before = [bn.running_mean.clone() for bn in batch_norms(model)]
    calls = []
    hook = model.register_forward_hook(lambda *_: calls.append(1))
    adabn(model, x, blend=0.0)
    hook.remove()
    assert not calls  # blend 0 keeps the statistics without a pass over the cells
    assert all(torch.allclose(a, bn.running_mean) for a, bn in
               zip(before, batch_norms(model), strict=True))
    full = adabn(tiny(), x, blend=1.0, batch_size=40)
    # one batch of all 40 cells: the running mean of the first norm is that batch's mean
    first = batch_norms(full)[0]
    with torch.no_grad():
        m = tiny()
        acts = {}
        h = batch_norms(m)[0].register_forward_hook(lambda mod, i, o: acts.setdefault("x", i[0]))
        m(x)
        h.remove()
    assert torch.allclose(first.running_mean, acts["x"].mean(dim=(0, 2, 3)), atol=1e-5)
    half = adabn(tiny(), x, blend=0.5, batch_size=40)
    assert torch.allclose(batch_norms(half)[0].running_mean,
                          (before[0] + first.running_mean) / 2, atol=1e-5)
    assert full.training is False and first.momentum == batch_norms(tiny())[0].momentum
    with pytest.raises(AdaptError):
        adabn(tiny(), x, blend=1.5)


def test_tent_lowers_the_entropy_and_changes_only_norm_parameters():
    model = tiny()
    x = torch.rand(16, 3, 32, 32)
    others = {k: v.clone() for k, v in model.named_parameters() if "bn" not in k
              and not any(k.startswith(n) for n in ("head.1",))}
    stats = [bn.running_var.clone() for bn in batch_norms(model)]
    history = tent(model, x, steps=15, lr=1e-2, batch_size=16)
    with torch.no_grad():
        after = float(entropy(model(x)))
    assert after < history[0]
    norm_params = {id(p) for bn in batch_norms(model) for p in (bn.weight, bn.bias)}
    for name, p in model.named_parameters():
        if id(p) not in norm_params and name in others:
            assert torch.equal(p, others[name]), name
    assert all(torch.equal(a, bn.running_var) for a, bn in
               zip(stats, batch_norms(model), strict=True))


def test_finetune_fits_the_classifier_layer_to_reviewed_cells():
    model = tiny()
    y = torch.tensor([k % 5 for k in range(20)])
    x = torch.rand(20, 3, 32, 32) * 0.1 + (y.float() / 5).view(-1, 1, 1, 1)  # one tint a class
    trunk = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("head.6")}
    history = finetune(model, x, y, steps=1500, lr=0.2, anchor=0.0, label_smoothing=0.0)
    assert history[-1] < history[0] / 2
    with torch.no_grad():
        right = (model(x).argmax(1) == y).float().mean()
        assert torch.allclose(model.head[-1](pooled_features(model, x)), model(x), atol=1e-5)
    assert right >= 0.9
    for k, v in model.state_dict().items():
        if k in trunk:
            assert torch.equal(v, trunk[k]), k


def _separable(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Features labelled by one known linear head; its class 2 wins on no feature."""
    w_true = torch.randn(5, 16, generator=torch.Generator().manual_seed(0)) * 3
    b_true = torch.tensor([0.0, 0.0, -1e3, 0.0, 0.0])
    feats = torch.randn(n, 16, generator=torch.Generator().manual_seed(seed))
    return feats, (feats @ w_true.T + b_true).argmax(1)


def test_refit_head_recovers_a_known_linear_head_and_keeps_classes_without_labels():
    feats, y = _separable(400, 1)
    test_f, test_y = _separable(400, 2)
    torch.manual_seed(3)
    linear = torch.nn.Linear(16, 5)
    w0, b0 = linear.weight.detach().clone(), linear.bias.detach().clone()
    with torch.no_grad():
        assert (linear(test_f).argmax(1) == test_y).float().mean() < 0.5
    info = refit_head(linear, feats, y, l2=1e-4, balanced=False)
    with torch.no_grad():
        assert (linear(test_f).argmax(1) == test_y).float().mean() >= 0.95
    assert info["refitted"] == [0, 1, 3, 4] and info["loss_after"] < info["loss_before"] / 4
    assert torch.equal(linear.weight[2], w0[2]) and torch.equal(linear.bias[2], b0[2])
    # a strong pull stays near the trained head; bad labels and l2 are one clear error
    near = torch.nn.Linear(16, 5)
    near.load_state_dict({"weight": w0, "bias": b0})
    refit_head(near, feats, y, l2=100.0)
    assert (near.weight - w0).norm() < (linear.weight - w0).norm() / 10
    with pytest.raises(ValueError, match="class indices"):
        refit_head(near, feats, y + 5)
    with pytest.raises(ValueError, match="l2"):
        refit_head(near, feats, y, l2=0.0)


def test_refit_head_class_balance_favours_the_rare_class():
    g = torch.Generator().manual_seed(0)
    y = torch.tensor([0] * 95 + [1] * 5)
    feats = torch.randn(100, 2, generator=g) + y.float().view(-1, 1)  # overlapping classes
    calls = {}
    for balanced in (False, True):
        linear = torch.nn.Linear(2, 2)
        torch.nn.init.zeros_(linear.weight)
        torch.nn.init.zeros_(linear.bias)
        refit_head(linear, feats, y, l2=1e-3, balanced=balanced)
        with torch.no_grad():
            calls[balanced] = int((linear(feats).argmax(1) == 1).sum())
    assert calls[True] > calls[False] + 10


def _log(tmp_path: Path, reviews: bool = True) -> Path:
    crops = tmp_path / "crops" / "cells-S"
    crops.mkdir(parents=True)
    events = [{"event": "session_start", "session": "S", "sample": "",
               "model": {"name": "tiny", "sha256": "ab" * 32}}]
    track = 0
    for cls in WBC5:
        for f in sorted((SAMPLES / cls).glob("*.jpg"))[:10] * 2:  # 100 cells
            track += 1
            shutil.copy(f, crops / f"t{track}.jpg")
            events.append({"event": "cell", "session": "S", "track": track, "class": cls,
                           "confidence": 0.9, "probs": {}, "box": [0, 0, 1, 1], "frame": track,
                           "crop": f"crops/cells-S/t{track}.jpg"})
    if reviews:
        events += [{"event": "review", "session": "S", "track": 1, "action": "confirm"},
                   {"event": "review", "session": "S", "track": 2, "action": "reclassify",
                    "class": "Monocyte"},
                   {"event": "review", "session": "S", "track": 3, "action": "reject"}]
    log = tmp_path / "results.jsonl"
    log.write_text("".join(json.dumps(e) + "\n" for e in events))
    return log


def test_session_cells_reads_crops_and_reviewed_labels(tmp_path):
    log = _log(tmp_path)
    cells = session_cells(log)
    assert cells.session == "S" and len(cells.crops) == 99  # the rejected cell is left out
    assert cells.reviewed()[0][1] == "Basophil" and cells.reviewed()[1][1] == "Monocyte"
    moved = tmp_path / "copy"
    shutil.copytree(tmp_path / "crops", moved / "crops")
    shutil.rmtree(tmp_path / "crops")
    with pytest.raises(AdaptError, match="--crops"):
        session_cells(log)
    assert len(session_cells(log, crops_dir=moved).crops) == 99
    with pytest.raises(AdaptError, match="no session"):
        session_cells(log, "other", crops_dir=moved)


def test_lgld_adapt_writes_a_verified_model_with_its_card(tmp_path, capsys):
    from lgld.export.adapt_cli import main
    from lgld.runtime.core.classifier import OnnxClassifier
    from lgld.runtime.core.domain import DomainReference

    log = _log(tmp_path)
    ckpt = save_checkpoint(tmp_path / "m.pt", tiny(), WBC5, PreprocessSpec(input_size=32),
                           {"dataset": "WBC5"})
    out = tmp_path / "out" / "adapted.onnx"
    assert main([str(log), "-o", str(out), "--model", str(ckpt), "--blend", "0.5",
                 "--tent-steps", "3", "--reviewed", "--mix-data", str(SAMPLES),
                 "--threads", "1"]) == 0
    clf = OnnxClassifier(out, threads=1)
    rec = clf.info.training["adaptation"]
    assert rec["session"] == "S" and rec["cells"] == 99 and rec["adabn_blend"] == 0.5
    assert rec["fine_tune"]["reviewed"] == 2 and rec["fine_tune"]["mixed"] == 2
    assert DomainReference.from_dict(clf.info.domain).cells == 99
    card = out.with_suffix(".md").read_text()
    assert "session `S`" in card and "99 counted cells" in card
    probs = clf.probabilities([np.full((40, 40, 3), 200, np.uint8)])
    assert probs.shape == (1, 5) and np.isfinite(probs).all()
    # bad inputs: one line, exit 1, nothing written
    assert main([str(tmp_path / "none.jsonl"), "-o", str(tmp_path / "x.onnx"),
                 "--model", str(ckpt)]) == 1
    assert main([str(log), "-o", str(tmp_path / "y.onnx"), "--model", str(ckpt),
                 "--blend", "2"]) == 1
    err = capsys.readouterr().err
    assert "log not found" in err and "--blend must be in [0, 1]" in err
    assert not (tmp_path / "x.onnx").exists() and not (tmp_path / "y.onnx").exists()
    log2 = _log(tmp_path / "b", reviews=False)
    assert main([str(log2), "-o", str(tmp_path / "z.onnx"), "--model", str(ckpt),
                 "--reviewed"]) == 1
    assert "no reviewed cells" in capsys.readouterr().err


def test_lgld_adapt_blend_defaults_to_no_adabn_before_a_fine_tune():
    from lgld.export.adapt_cli import _check, build_parser

    for argv, blend in ((["--reviewed"], 0.0), ([], 0.5), (["--reviewed", "--blend", "0.3"], 0.3)):
        args = build_parser().parse_args(["log.jsonl", "-o", "out.onnx", *argv])
        _check(args)
        assert args.blend == blend


def test_tent_adapts_a_groupnorm_models_norm_scales_and_blend_zero_passes_it():
    torch.manual_seed(0)
    model = LGLDNet(ModelConfig(num_classes=5, input_size=32, base_channels=8, norm="group"))
    model.eval()
    x = torch.rand(16, 3, 32, 32)
    adabn(model, x, blend=0.0)  # nothing to re-estimate, nothing asked: no error
    with pytest.raises(AdaptError, match="no BatchNorm"):
        adabn(model, x, blend=0.5)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.GroupNorm)]
    scales = [m.weight.clone() for m in norms]
    conv = model.head[0].weight.clone()
    history = tent(model, x, steps=15, lr=1e-2, batch_size=16)
    with torch.no_grad():
        assert float(entropy(model(x))) < history[0]
    assert any(not torch.equal(a, m.weight) for a, m in zip(scales, norms, strict=True))
    assert torch.equal(conv, model.head[0].weight)
