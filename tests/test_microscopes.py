"""Cell types across microscopes: the augmentation that spans them, splits by cell, crops framed
by the red cells, temperature scaling, and the cell-type scoring of labelled fields."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from lgld.runtime.cells.crops import crop_side
from lgld.runtime.cells.detect import CellDetector, DetectorSettings
from lgld.runtime.core.preprocess import read_image

DATA = Path(__file__).resolve().parent / "data"
WBC5 = DATA / "zoo_samples" / "WBC5"
BCCD = DATA / "bccd"


def test_the_microscope_augmentation_is_seeded_keeps_the_size_and_changes_the_colours():
    from lgld.training.augment import augment_microscope

    image = cv2.resize(read_image(next(WBC5.glob("Neutrophil/*.jpg"))), (96, 96))[..., ::-1]
    image = np.ascontiguousarray(image)
    a, b = augment_microscope(image, 7), augment_microscope(image, 7)
    assert a.shape == image.shape and a.dtype == np.uint8
    assert np.array_equal(a, b)
    draws = np.stack([augment_microscope(image, s) for s in range(24)]).astype(np.float32)
    # across draws, the mean colour moves far more than a lamp-only jitter of 1 % would
    assert draws.mean(axis=(1, 2)).std(axis=0).min() > 5.0


def _copies(src: Path, out: Path, n: int) -> None:
    """n copies of one crop: shifted, flipped, rotated by 90 degrees."""
    image = read_image(src)
    for k in range(n):
        shifted = np.roll(image, (6 * k, -4 * k), axis=(0, 1))
        view = np.rot90(shifted[:, ::-1] if k % 2 else shifted, k)
        cv2.imwrite(str(out / f"{src.stem}-{k}.png"), np.ascontiguousarray(view))


def test_copies_of_one_cell_share_a_group_and_never_span_two_parts(tmp_path):
    from lgld.training.copies import copy_groups, split_by_copies
    from lgld.training.data import discover

    for cls in ("Eosinophil", "Neutrophil"):
        (tmp_path / cls).mkdir()
        for src in sorted((WBC5 / cls).glob("*.jpg"))[:4]:
            _copies(src, tmp_path / cls, 3)
    groups = copy_groups(discover(tmp_path))
    cells = {p: p.split("/")[-1].rsplit("-", 1)[0] for p in groups}
    for p, q in ((p, q) for p in groups for q in groups):
        if cells[p] == cells[q]:  # copies always together (alike cells may join them)
            assert groups[p] == groups[q]
    assert 6 <= len(set(groups.values())) <= 8
    split, n = split_by_copies(tmp_path, 0.25, 0.25, seed=3)
    assert n == len(set(groups.values()))
    where = {cells[it.path]: part for part, items in split.parts.items() for it in items}
    for part, items in split.parts.items():
        assert all(where[cells[it.path]] == part for it in items)


def test_the_fitted_temperature_is_the_one_the_labels_were_drawn_with():
    from lgld.training.calibrate import expected_calibration_error, fit_temperature, nll

    rng = np.random.default_rng(0)
    logits = rng.normal(0.0, 4.0, (20000, 5))
    z = logits / 2.5
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    labels = np.array([rng.choice(5, p=row) for row in p])
    t = fit_temperature(logits, labels)
    assert t == pytest.approx(2.5, rel=0.06)
    assert nll(logits, labels, t) < nll(logits, labels, 1.0)
    assert expected_calibration_error(p, labels) < 0.02


def test_temperature_folded_into_the_head_keeps_the_calls_and_divides_the_logits(tmp_path):
    torch = pytest.importorskip("torch")
    from lgld.models.lgld_net import LGLDNet
    from lgld.training.calibrate import fold_temperature

    torch.manual_seed(0)
    model = LGLDNet(num_classes=5, input_size=64).eval()
    x = torch.rand(4, 3, 64, 64)
    with torch.inference_mode():
        before = model(x)
    fold_temperature(model, 2.0)
    with torch.inference_mode():
        after = model(x)
    assert torch.allclose(after, before / 2.0, atol=1e-5)
    assert torch.equal(after.argmax(1), before.argmax(1))


def test_crops_are_framed_by_the_red_cells_where_they_clearly_disagree_with_the_range():
    """A PBC crop is 360 px wide: framed from its red cells, the crop is about the crop itself
    (as the model was trained), where the 640x480 range would frame it 50 % wider. The same
    crop enlarged to the range's scale measures within its tolerance: the range frames it."""
    pbc = read_image(next(WBC5.glob("Neutrophil/*.jpg")))
    found = CellDetector().detect(pbc)
    assert found.framing_diameter is not None
    assert crop_side(found.crop_diameter) == pytest.approx(pbc.shape[1], rel=0.15)
    assert crop_side(found.typical_diameter) > 1.4 * pbc.shape[1]
    ranged = CellDetector(DetectorSettings(framing="range")).detect(pbc)
    assert ranged.framing_diameter is None and ranged.crop_diameter == ranged.typical_diameter
    enlarged = cv2.resize(pbc, None, fx=1.5, fy=1.5, interpolation=cv2.INTER_CUBIC)
    field = CellDetector().detect(enlarged)
    assert field.framing_diameter is None and field.crop_diameter == field.typical_diameter
    assert len(found.cells) == len(field.cells) == 1


def test_a_bad_framing_is_refused_in_one_line():
    with pytest.raises(ValueError, match="framing"):
        DetectorSettings(framing="sideways")


def test_scores_count_right_types_sure_wrong_calls_and_the_differential_error():
    from lgld.bench.celltypes import Scored

    s = Scored(cells=[("Neutrophil", "Neutrophil", "ok"), ("Neutrophil", "Eosinophil", "ok"),
                      ("Lymphocyte", "Lymphocyte", "uncertain"),
                      ("Eosinophil", "Neutrophil", "uncertain")], images=3)
    r = s.summary(["Eosinophil", "Lymphocyte", "Neutrophil"])
    assert r["right_type"] == 0.5
    assert r["sure"] == 0.5 and r["sure_wrong_of_sure"] == 0.5
    assert r["differential_tv"] == 0.0  # one Eosinophil called, one true: the shares agree
    assert r["macro_f1"] == pytest.approx((0.0 + 1.0 + 0.5) / 3)


def test_labelled_fields_are_scored_through_cell_mode(tmp_path, capsys):
    from lgld.bench.celltypes import main

    fields = tmp_path / "fields"
    shutil.copytree(BCCD, fields)
    (fields / "labels.csv").write_text(
        "file,types\nBloodImage_00000.jpg,Neutrophil\nBloodImage_00034.jpg,Neutrophil;Basophil\n"
        "BloodImage_00290.jpg,Eosinophil\nBloodImage_00378.jpg,Neutrophil\n")
    assert main(["fields", str(fields), "--model", "wbc5", "--json"]) == 0
    out = capsys.readouterr().out
    import json

    r = json.loads(out)
    assert r["images"] == 4 and r["cells"] + r["missed"] == 5
    assert sum(sum(row.values()) for row in r["confusion"].values()) == r["cells"]
    # the microscope check runs as in cell mode: BCCD's cells look foreign, none is sure
    assert r["microscope"]["state"] == "checking" and r["sure"] == 0 and r["unfamiliar"] > 0
    assert main(["fields", str(fields), "--model", "wbc5", "--json", "--no-domain-check"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["microscope"] is None and r["sure"] > 0 and r["unfamiliar"] == 0
    (fields / "labels.csv").write_text("file,types\n")
    assert main(["fields", str(fields), "--model", "wbc5"]) == 1
    assert "no cell could be scored" in capsys.readouterr().err


def test_pbc_crops_keep_their_sure_calls_under_the_microscope_check(tmp_path, capsys):
    import json

    from lgld.bench.celltypes import main

    assets = Path(__file__).resolve().parents[1] / "runtime" / "assets"
    for path in sorted(assets.glob("cells-*.jpg")) + sorted(assets.glob("wbc5-*.jpg")):
        folder = tmp_path / path.stem.split("-")[1].capitalize()
        folder.mkdir(exist_ok=True)
        shutil.copy(path, folder / path.name)
    assert main(["crops", str(tmp_path), "--model", "wbc5", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["cells"] >= 16 and r["microscope"]["state"] == "checking"
    assert main(["crops", str(tmp_path), "--model", "wbc5", "--json", "--no-domain-check"]) == 0
    without = json.loads(capsys.readouterr().out)
    assert r["sure"] >= 0.8 and r["sure"] >= 0.85 * without["sure"]  # 15 of 17 measured


def test_leave_one_microscope_out_marks_what_each_model_saw(tmp_path, capsys):
    import json

    from lgld.bench.celltypes import main as celltypes_main
    from lgld.bench.microscopes import main

    fields = tmp_path / "fields"
    shutil.copytree(BCCD, fields)
    (fields / "labels.csv").write_text(
        "file,types\nBloodImage_00000.jpg,Neutrophil\nBloodImage_00290.jpg,Eosinophil\n")
    argv = ["--crops", f"pbc={WBC5}", "--fields", f"bccd={fields}"]
    assert main(["--model", "pbc=wbc5", "--model", "LISC+bccd=wbc5", *argv, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["trained_on"], r["test"], r["seen"]) for r in rows] == [
        (["pbc"], "pbc", True), (["pbc"], "bccd", False),
        (["bccd", "lisc"], "pbc", False), (["bccd", "lisc"], "bccd", True)]
    # each entry is what celltypes itself reports for that model and test set
    assert celltypes_main(["crops", str(WBC5), "--diameter", "auto", "--json"]) == 0
    direct = json.loads(capsys.readouterr().out)
    assert rows[0]["right_type"] == direct["right_type"] and rows[0]["cells"] == direct["cells"]
    assert main(["--model", "pbc=wbc5", *argv]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0] == "| trained on | pbc | bccd |" and "(seen)" in table[2]
    assert table[2].count("(seen)") == 1
    for bad in (["--model", "wbc5", *argv], ["--model", "pbc=wbc5", "--crops", "nodir"]):
        with pytest.raises(SystemExit) as exc:
            main(bad)
        assert exc.value.code == 2
        assert len(capsys.readouterr().err.strip().splitlines()) == 1
    assert main(["--model", "pbc=wbc5"]) == 1
    assert "at least one" in capsys.readouterr().err
