"""Checkpoint format: round trip, safe loading, clear errors on mismatches."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.train
torch = pytest.importorskip("torch")


from lgld.models.checkpoint import CheckpointError, load_checkpoint, save_checkpoint  # noqa: E402
from lgld.models.lgld_net import LGLDNet  # noqa: E402
from lgld.runtime.core.preprocess import PreprocessSpec  # noqa: E402

CLASSES = ["Benign", "Early", "Pre", "Pro"]


def _save(path: Path, num_classes: int = 4, size: int = 32) -> LGLDNet:
    model = LGLDNet(num_classes=num_classes, input_size=size)
    save_checkpoint(path, model, CLASSES[:num_classes] + ["X"] * (num_classes - 4),
                    PreprocessSpec(input_size=size), training={"dataset": "toy", "val": {}})
    return model


def test_round_trip(tmp_path: Path) -> None:
    model = _save(tmp_path / "m.pt")
    ckpt = load_checkpoint(tmp_path / "m.pt", expect_classes=CLASSES, expect_input_size=32)
    assert ckpt.classes == CLASSES
    assert ckpt.config == model.config
    assert ckpt.preprocess == PreprocessSpec(input_size=32)
    assert ckpt.training["dataset"] == "toy"
    rebuilt = ckpt.build_model()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model.eval()(x))
    assert not list(tmp_path.glob(".m.pt.*")), "temporary file left behind"


def test_mismatched_expectations(tmp_path: Path) -> None:
    _save(tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match="trained for classes"):
        load_checkpoint(tmp_path / "m.pt", expect_classes=["a", "b", "c", "d", "e"])
    with pytest.raises(CheckpointError, match="input size 32"):
        load_checkpoint(tmp_path / "m.pt", expect_input_size=224)


def test_weights_for_other_classes_fail_clearly(tmp_path: Path) -> None:
    _save(tmp_path / "m.pt")
    ckpt = load_checkpoint(tmp_path / "m.pt")
    from lgld.models.checkpoint import load_weights

    with pytest.raises(CheckpointError, match="expects"):
        load_weights(LGLDNet(num_classes=5, input_size=32), ckpt.state_dict)
    with pytest.raises(CheckpointError, match="missing"):
        load_weights(LGLDNet(num_classes=4, input_size=32, variant="gce"), ckpt.state_dict)


def test_missing_corrupt_and_foreign_files(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "bad.pt").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(tmp_path / "bad.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="not an lgld checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")


class _Evil:
    def __reduce__(self):
        return (print, ("arbitrary code ran",))


def test_pickled_code_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with open(tmp_path / "evil.pt", "wb") as fh:
        torch.save({"format": "lgld-checkpoint", "payload": _Evil()}, fh)
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(tmp_path / "evil.pt")
    assert "arbitrary code ran" not in capsys.readouterr().out


def test_save_refuses_inconsistent_description(tmp_path: Path) -> None:
    model = LGLDNet(num_classes=4, input_size=32)
    with pytest.raises(CheckpointError, match="class names"):
        save_checkpoint(tmp_path / "m.pt", model, ["a", "b"], PreprocessSpec(input_size=32))
    with pytest.raises(CheckpointError, match="input size"):
        save_checkpoint(tmp_path / "m.pt", model, CLASSES, PreprocessSpec(input_size=64))
    assert not (tmp_path / "m.pt").exists()


def test_release_copy_drops_training_state(tmp_path: Path) -> None:
    from lgld.models.checkpoint import release_copy

    model = LGLDNet(num_classes=4, input_size=32)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.rand(2, 3, 32, 32)).sum().backward()
    opt.step()
    save_checkpoint(tmp_path / "last.pt", model, CLASSES, PreprocessSpec(input_size=32),
                    extra={"optimizer": opt.state_dict(), "run": {"seed": 1}, "epoch": 3})
    release_copy(tmp_path / "last.pt", tmp_path / "release.pt")
    rel = load_checkpoint(tmp_path / "release.pt")
    assert "optimizer" not in rel.extra and rel.extra["run"] == {"seed": 1}
    assert (tmp_path / "release.pt").stat().st_size < (tmp_path / "last.pt").stat().st_size
    for k, v in load_checkpoint(tmp_path / "last.pt").state_dict.items():
        assert torch.equal(v, rel.state_dict[k])
