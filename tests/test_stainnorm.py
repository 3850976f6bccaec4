"""Stain normalisation (the measured ablation of the cell-type bench): a crop re-stained with a
known optical-density transform is mapped back to the reference; degenerate crops stay as they
are; references round-trip and a bad one is refused in one line."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lgld.bench.stainnorm import (
    METHODS,
    Stains,
    estimate,
    fit_reference,
    load_reference,
    normalise,
    normalise_bgr,
    save_reference,
)

PBC_LIKE = np.array([[0.47, 0.87, 0.13], [0.69, 0.60, 0.40]])  # nucleus, other stain (RGB OD)
OTHER_SCOPE = np.array([[0.55, 0.83, 0.05], [0.16, 0.44, 0.88]])  # purple nucleus, orange cells


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _crop(vectors: np.ndarray, strength: float = 1.0, seed: int = 0,
          background: tuple[float, float, float] = (250.0, 232.0, 205.0)) -> np.ndarray:
    """An RGB uint8 crop: a textured nucleus in a cytoplasm, four red cells, background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:96, :96].astype(np.float64)
    conc = np.zeros((2, 96, 96))
    cell = np.hypot(yy - 48, xx - 48)
    conc[0][cell < 24] = 0.35  # cytoplasm: a little of both stains
    conc[1][cell < 24] = 0.25
    conc[0][cell < 15] = 1.2 + 0.3 * np.sin(xx[cell < 15] / 3.0)  # nucleus
    conc[1][cell < 15] = 0.0
    for cy, cx in ((12, 12), (12, 84), (84, 12), (84, 84)):
        conc[1][np.hypot(yy - cy, xx - cx) < 11] = 0.6
    od = np.tensordot(conc * strength, _unit(vectors), axes=(0, 0))
    rgb = (np.asarray(background) + 1.0) * np.exp(-od) - 1.0 + rng.normal(0, 1.0, od.shape)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def test_the_stains_of_a_crop_are_the_ones_it_was_stained_with():
    stains = estimate(_crop(PBC_LIKE))
    assert stains is not None
    cosines = np.sum(stains.vectors * _unit(PBC_LIKE), axis=1)
    assert cosines.min() > 0.995  # the nucleus stain comes first, found from the darkest pixels


def test_a_crop_restained_by_another_microscope_is_mapped_back_to_the_reference():
    reference, used = fit_reference([_crop(PBC_LIKE, seed=s) for s in range(3)])
    assert used == 3
    original = _crop(PBC_LIKE, seed=9).astype(np.float64)
    pale = _crop(OTHER_SCOPE, strength=0.5, seed=9)  # other stain vectors, half the stain
    stained = np.abs(original - original[48, 0]).sum(axis=2) > 15  # not background
    before = np.abs(pale - original)[stained].mean()
    after = np.abs(normalise(pale, reference, "macenko") - original)[stained].mean()
    assert before > 25.0 and after < 3.0
    # matching the nucleus stain alone leaves the red cells' stain as it was
    nucleus = normalise(pale, reference, "nucleus").astype(np.float64)
    red_cell = (slice(6, 18), slice(6, 18))
    assert np.abs(nucleus[red_cell] - pale[red_cell]).mean() < 2.0
    centre = (slice(40, 56), slice(40, 56))
    assert np.abs(nucleus[centre] - original[centre]).mean() < 6.0


def test_a_crop_already_at_the_reference_hardly_changes():
    reference = estimate(_crop(PBC_LIKE, seed=1))
    crop = _crop(PBC_LIKE, seed=2)
    for method in METHODS:
        assert np.abs(normalise(crop, reference, method).astype(float) - crop).mean() < 2.0


def test_degenerate_crops_are_returned_unchanged():
    reference = estimate(_crop(PBC_LIKE))
    blank = np.full((64, 64, 3), 240, np.uint8)
    blank[30:33, 30:33] = (90, 40, 120)  # a speck: far too few stained pixels
    assert estimate(blank) is None
    assert normalise(blank, reference) is blank
    one_stain = _crop(np.array([[0.47, 0.87, 0.13], [0.47, 0.87, 0.13]]))
    assert estimate(one_stain) is None  # two stains that cannot be told apart
    bgr = np.ascontiguousarray(blank[..., ::-1])
    assert normalise_bgr(bgr, reference) is bgr
    with pytest.raises(ValueError, match="unknown stain method"):
        normalise(blank, reference, "reinhard")


def test_a_reference_round_trips_and_a_bad_one_is_refused_in_one_line(tmp_path):
    reference = estimate(_crop(PBC_LIKE))
    path = tmp_path / "ref.json"
    save_reference(reference, path, fitted_on="test crops")
    back = load_reference(path)
    assert np.allclose(back.vectors, reference.vectors, atol=1e-5)
    assert np.allclose(back.max_concentrations, reference.max_concentrations, atol=1e-5)
    assert json.loads(path.read_text())["fitted_on"] == "test crops"
    with pytest.raises(ValueError, match="not found"):
        load_reference(tmp_path / "missing.json")
    path.write_text(json.dumps({**reference.to_dict(), "max_concentrations": [1.0, -1.0]}))
    with pytest.raises(ValueError, match="positive concentrations"):
        load_reference(path)
    with pytest.raises(ValueError, match="not an lgld-stain-reference"):
        Stains.from_dict({"vectors": []})


def test_the_cell_type_bench_refuses_a_missing_stain_reference_in_one_line(tmp_path, capsys):
    from lgld.bench.celltypes import main

    (tmp_path / "labels.csv").write_text("file,types\n")
    assert main(["fields", str(tmp_path), "--stain-normalise", str(tmp_path / "no.json")]) == 1
    err = capsys.readouterr().err
    assert "stain reference not found" in err and "Traceback" not in err


def test_a_reference_is_fitted_on_cell_mode_crops_and_the_bench_applies_it(tmp_path, capsys):
    from pathlib import Path

    from lgld.bench import celltypes, stainfit

    wbc5 = Path(__file__).resolve().parent / "data" / "zoo_samples" / "WBC5"
    ref = tmp_path / "ref.json"
    args = [str(wbc5), "--limit", "6", "--diameter", "auto", "-o"]
    assert stainfit.main(["fit", *args, str(ref)]) == 0
    reference = load_reference(ref)
    assert reference.vectors[0] @ reference.vectors[1] < 0.99  # two stains told apart
    assert stainfit.main(["montage", str(ref), *args, str(tmp_path / "m.png"), "--count", "3"]) == 0
    assert (tmp_path / "m.png").stat().st_size > 0
    # the bench's classifier re-stains every crop before the model's own preprocessing
    parsed = celltypes.build_parser().parse_args(
        ["crops", str(wbc5), "--stain-normalise", str(ref), "--stain-method", "nucleus"])
    stage = celltypes.make_session(parsed).stage
    crop = np.ascontiguousarray(_crop(OTHER_SCOPE, strength=0.5)[..., ::-1])
    wrapped = stage.classifier
    assert np.array_equal(wrapped.prepare([crop]), wrapped.classifier.prepare(
        [normalise_bgr(crop, reference, "nucleus")]))
    assert not np.array_equal(wrapped.prepare([crop]), wrapped.classifier.prepare([crop]))
    capsys.readouterr()
    (tmp_path / "empty").mkdir()
    assert stainfit.main(["fit", str(tmp_path / "empty"), "-o", str(ref)]) == 1
    assert "no images in" in capsys.readouterr().err
