"""White-cell detection on bundled real fields (BCCD) and on composed PBC cells."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from lgld.bench.cellmode import iou, voc_boxes
from lgld.runtime.cells.crops import cell_crop, check_white_cell_model, crop_side
from lgld.runtime.cells.detect import (
    CellDetector,
    DetectorSettings,
    background_reference,
    measure_rbc_diameter,
)
from lgld.runtime.cells.slide import RBC_PX, SlideScan, load_cells
from lgld.runtime.core.preprocess import read_image

BCCD = Path(__file__).resolve().parent / "data" / "bccd"
FIELDS = sorted((BCCD / "images").glob("*.jpg"))


def _truth(path: Path) -> list[list[int]]:
    return voc_boxes(BCCD / "annotations" / (path.stem + ".xml"))


@pytest.mark.parametrize("path", FIELDS, ids=lambda p: p.stem)
def test_every_annotated_white_cell_is_found_and_nothing_whole_is_invented(path: Path) -> None:
    cells = CellDetector().detect(read_image(path)).cells
    truth = _truth(path)
    for box in truth:
        assert max((iou(c.box, box) for c in cells), default=0) >= 0.3, (box, cells)
    unmatched = [c for c in cells if max(iou(c.box, b) for b in truth) < 0.3]
    assert all(c.partial for c in unmatched), unmatched


def test_a_platelet_clump_beside_a_neutrophil_is_not_a_cell() -> None:
    cells = CellDetector().detect(read_image(BCCD / "images" / "BloodImage_00378.jpg")).cells
    assert len(cells) == 1


@pytest.mark.parametrize("gains", [(0.55, 0.55, 0.55), (1.0, 0.85, 0.7), (0.75, 0.9, 1.0)])
def test_detection_does_not_depend_on_exposure_or_white_balance(gains) -> None:
    detector = CellDetector()
    for path in FIELDS:
        image = read_image(path)
        shifted = np.clip(image.astype(np.float32) * np.float32(gains), 0, 255).astype(np.uint8)
        a, b = detector.detect(image).cells, detector.detect(shifted).cells
        assert len(a) == len(b), path.name
        for c in a:
            assert max(iou(c.box, d.box) for d in b) > 0.8


def test_a_cell_cut_by_the_frame_border_is_partial() -> None:
    image = read_image(BCCD / "images" / "BloodImage_00000.jpg")
    whole = CellDetector().detect(image).cells
    assert len(whole) == 1 and not whole[0].partial
    cut = np.ascontiguousarray(image[:, : (whole[0].box[0] + whole[0].box[2]) // 2])
    cells = CellDetector().detect(cut).cells
    assert len(cells) == 1 and cells[0].partial


def test_a_frame_without_stain_has_no_cells() -> None:
    blank = np.full((480, 640, 3), (205, 225, 235), np.uint8)
    assert CellDetector().detect(blank).cells == []
    red_cells_only = SlideScan((640, 480)).slide.view(-700, 0, 640, (640, 480))
    assert CellDetector().detect(red_cells_only).cells == []


def _compose(assets: list[int], centres: list[tuple[int, int]]) -> np.ndarray:
    """Bundled PBC cells cut out and placed on a plain slide background."""
    _, cut = load_cells()
    density = np.zeros((480, 640, 3), np.float32)
    for k, (x, y) in zip(assets, centres, strict=True):
        d, a = cut[k]
        h, w = a.shape
        x0, y0 = x - w // 2, y - h // 2
        region = density[y0 : y0 + h, x0 : x0 + w]
        density[y0 : y0 + h, x0 : x0 + w] = region * (1 - a[..., None]) + d * a[..., None]
    return np.clip(np.float32([204, 230, 255]) * np.exp(-density), 0, 255).astype(np.uint8)


def _asset(label: str) -> list[int]:
    labels, _ = load_cells()
    return [i for i, name in enumerate(labels) if name == label]


def test_a_multi_lobed_neutrophil_is_one_cell() -> None:
    for k in _asset("Neutrophil") + _asset("Eosinophil"):
        cells = CellDetector().detect(_compose([k], [(320, 240)])).cells
        assert len(cells) == 1, k


@pytest.mark.parametrize("pair", [("Lymphocyte", "Lymphocyte"), ("Lymphocyte", "Neutrophil"),
                                  ("Neutrophil", "Eosinophil")])
def test_touching_white_cells_are_separated(pair: tuple[str, str]) -> None:
    a, b = _asset(pair[0])[0], _asset(pair[1])[1]
    _, cut = load_cells()
    gap = (cut[a][1].shape[1] + cut[b][1].shape[1]) // 2 - 12  # the cut-outs touch
    image = _compose([a, b], [(200, 240), (200 + gap, 240)])
    cells = CellDetector().detect(image).cells
    assert len(cells) == 2
    assert abs(cells[0].centre[0] - cells[1].centre[0]) > 0.5 * gap


def test_thousands_of_stain_specks_are_no_cells() -> None:
    rng = np.random.default_rng(0)
    image = np.full((480, 640, 3), (205, 225, 235), np.uint8)
    for x, y in rng.integers(0, (640, 480), size=(3000, 2)):
        cv2.circle(image, (int(x), int(y)), int(rng.integers(1, 4)), (120, 40, 90), -1)
    assert CellDetector().detect(image).cells == []


def test_a_frame_full_of_nucleus_like_blobs_is_capped_with_a_warning(monkeypatch) -> None:
    image = np.full((480, 640, 3), (205, 225, 235), np.uint8)
    for y in range(40, 480, 100):
        for x in range(40, 640, 100):
            cv2.circle(image, (x, y), 30, (120, 40, 90), -1)
    found = CellDetector(DetectorSettings(max_cells=10)).detect(image)
    assert found.capped and found.warnings and len(found.cells) == 10
    assert found.candidates > 10
    monkeypatch.setattr("lgld.runtime.cells.detect.MAX_COMPONENTS", 5)
    found = CellDetector().detect(image)
    assert found.capped and "smear artefact" in found.warnings[0] and len(found.cells) <= 5


def test_auto_scale_measures_the_red_cells() -> None:
    frame = SlideScan((640, 480)).frame(0)
    measured = measure_rbc_diameter(frame)
    assert measured is not None and 0.75 * RBC_PX < measured < 1.25 * RBC_PX
    auto = CellDetector(DetectorSettings(diameter_px=None)).detect(frame)
    fixed = CellDetector().detect(frame)
    assert len(auto.cells) == len(fixed.cells)


def test_crops_frame_a_typical_cell_like_the_pbc_crops() -> None:
    assert 350 <= crop_side(130.0) <= 370  # 130 px cells in 360 px PBC crops
    image = read_image(BCCD / "images" / "BloodImage_00000.jpg")
    crop = cell_crop(image, (0.0, 0.0), 100)
    assert crop.shape == (100, 100, 3)
    corner = crop[:40, :40].reshape(-1, 3).astype(int)
    assert np.abs(corner - background_reference(image).round().astype(int)).max() <= 1


def test_only_white_cell_models_may_run_in_cell_mode() -> None:
    check_white_cell_model(["Basophil", "Eosinophil", "Lymphocyte", "Monocyte", "Neutrophil"])
    with pytest.raises(ValueError, match="white-cell model"):
        check_white_cell_model(["Benign", "Early", "Pre", "Pro"])
