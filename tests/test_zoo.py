"""The shipped models: resolvable by name, self-consistent, and accurate on bundled val samples.

The samples in tests/data/zoo_samples are the first 10 images per class of each model's own
validation split (never trained on). A broken model, export or preprocessing change shows up
here as an accuracy drop.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lgld.runtime.core.classifier import OnnxClassifier
from lgld.runtime.core.preprocess import read_image
from lgld.runtime.core.zoo import ZOO, resolve_model
from lgld.training.perturb import exposure, white_balance

SAMPLES = Path(__file__).resolve().parent / "data" / "zoo_samples"
# name -> (sample folder, minimum accuracy on the bundled samples). Measured with lgld-eval on
# tests/data/zoo_samples: all 97.5%, wbc5 94.0%, all-v1 97.5%, all-128 95.0%, wbc5-128 94.0%,
# all-192 92.5%, all-224 97.5%; floors below.
EXPECTED = {"all": ("ALL", 0.92), "wbc5": ("WBC5", 0.88), "all-v1": ("ALL", 0.92),
            "all-128": ("ALL", 0.90), "wbc5-128": ("WBC5", 0.88), "all-192": ("ALL", 0.90),
            "all-224": ("ALL", 0.92)}


def _samples(folder: str) -> tuple[list[Path], list[str]]:
    files = sorted(p for p in (SAMPLES / folder).glob("*/*.jpg"))
    return files, [p.parent.name for p in files]


@pytest.mark.parametrize("name", sorted(ZOO))
def test_shipped_model_accuracy_on_bundled_samples(name: str) -> None:
    folder, floor = EXPECTED[name]
    model = OnnxClassifier(resolve_model(name), threads=1)
    files, labels = _samples(folder)
    assert sorted(set(labels)) == sorted(model.classes)
    probs = model.probabilities([read_image(p) for p in files])
    predicted = [model.classes[i] for i in probs.argmax(1)]
    accuracy = float(np.mean([p == t for p, t in zip(predicted, labels, strict=True)]))
    assert accuracy >= floor, f"{name}: accuracy {accuracy:.3f} on bundled samples < {floor}"


@pytest.mark.parametrize("name", sorted(ZOO))
def test_shipped_model_matches_its_checkpoint(name: str) -> None:
    torch = pytest.importorskip("torch")
    from lgld.models.checkpoint import file_sha256, load_checkpoint
    from lgld.runtime.core.preprocess import preprocess_batch

    onnx_path = resolve_model(name)
    ckpt_path = onnx_path.with_suffix(".pt")
    model = OnnxClassifier(onnx_path, threads=1)
    assert model.info.checkpoint_sha256 == file_sha256(ckpt_path)
    ckpt = load_checkpoint(ckpt_path, expect_classes=model.classes)
    assert ckpt.preprocess == model.info.preprocess
    files, _ = _samples(EXPECTED[name][0])
    batch = preprocess_batch([read_image(p) for p in files[::5]], ckpt.preprocess)
    with torch.no_grad():
        expected = ckpt.build_model()(torch.from_numpy(batch)).numpy()
    assert np.abs(model.logits(batch) - expected).max() <= 1e-4
    assert "val" in model.info.training and model.info.training["val"]["accuracy"] > 0.5


def test_model_cards_exist_and_cite_the_data() -> None:
    for onnx_name in ZOO.values():
        card = (resolve_model("all").parent / onnx_name).with_suffix(".md")
        text = card.read_text()
        assert "not a diagnostic device" in text
        assert "Acevedo" in text or "Taleqani" in text


def test_size_menu_models_are_the_first_all_model_at_their_sizes() -> None:
    from dataclasses import replace

    base = OnnxClassifier(resolve_model("all-v1"), threads=1)
    menu = [name for name in ZOO if name.startswith("all-") and name[4:].isdigit()]
    assert menu, "the size menu ships at least one model"
    for name in menu:
        model = OnnxClassifier(resolve_model(name), threads=1)
        size = int(name.split("-")[1])
        assert model.info.input_size == size and model.classes == base.classes
        assert model.info.preprocess == replace(base.info.preprocess, input_size=size)
        assert model.info.training["split_counts"] == base.info.training["split_counts"]


# Acquisition shifts in linear light (lgld-eval --perturb's definitions): the defaults must hold
# up under them (all-v1 fell to 52.5%, 65.0% and 27.5% on these samples). Measured on the bundled
# samples: all 97.5% (-1 EV), 95.0% (+0.6 EV), 95.0% (cast); wbc5 94.0% under each; floors below.
SHIFT_FLOORS = {
    "all": {"-1 EV": 0.92, "+0.6 EV": 0.90, "white balance R x1.2, B x0.8": 0.90},
    "wbc5": {"-1 EV": 0.88, "+0.6 EV": 0.88, "white balance R x1.2, B x0.8": 0.88},
}
SHIFTS = {
    "-1 EV": lambda im: exposure(im, 0.5),
    "+0.6 EV": lambda im: exposure(im, 2**0.6),
    "white balance R x1.2, B x0.8": lambda im: white_balance(im, (1.2, 1.0, 0.8)),
}


@pytest.mark.parametrize("name", ["all", "wbc5"])
@pytest.mark.parametrize("shift", sorted(SHIFTS))
def test_default_models_hold_up_under_exposure_and_white_balance_shifts(name, shift) -> None:
    folder, _ = EXPECTED[name]
    model = OnnxClassifier(resolve_model(name), threads=1)
    assert model.info.preprocess.illumination == "background"
    files, labels = _samples(folder)
    images = [SHIFTS[shift](read_image(p)) for p in files]
    predicted = [model.classes[i] for i in model.probabilities(images).argmax(1)]
    accuracy = float(np.mean([p == t for p, t in zip(predicted, labels, strict=True)]))
    assert accuracy >= SHIFT_FLOORS[name][shift], f"{name}, {shift}: {accuracy:.3f}"
