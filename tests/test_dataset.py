"""lgld-dataset: reviewed cell-mode sessions become an ImageFolder data set with a manifest;
bad input is refused with one line and nothing is written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from lab_logs import LabLog, crop_image, reviewed_session

from lgld.lab.build import DatasetError, Options, Source, plan, write
from lgld.lab.cli import main
from lgld.lab.manifest import image_groups, read_manifest
from lgld.runtime.core.files import file_sha256

SID = "20261201-100000-abcd"


def build(log: LabLog, out: Path, **options) -> dict:
    return write(plan([Source(log.path, log.folder)], Options(**options)), out)


def build_from(log: Path, crops: Path, out: Path) -> dict:
    return write(plan([Source(log, crops)], Options()), out)


def test_reviewed_cells_become_an_imagefolder_whose_manifest_holds_provenance_and_hashes(tmp_path):
    log = reviewed_session(tmp_path / "pi", per_class=6)
    log.review(SID, 2, "reclassify", "Monocyte")  # the last review of a track wins
    log.review(SID, 2, "reclassify", "Neutrophil")
    log.write()
    out = tmp_path / "lab"
    data = build(log, out)

    assert sorted(p.name for p in out.iterdir()) == [
        "Eosinophil", "Lymphocyte", "Neutrophil", "manifest.json"]
    assert data["classes"] == {"Eosinophil": 5, "Lymphocyte": 6, "Neutrophil": 7}
    assert read_manifest(out) == data
    for im in data["images"]:
        assert file_sha256(out / im["path"]) == im["sha256"]
        assert im["path"].split("/")[0] == im["class"]
        assert im["session"] == SID and im["sample"] == "smear 1"
        assert im["group"] == f"{SID}/{im['track']}"
    moved = next(im for im in data["images"] if im["track"] == 2)
    assert (moved["class"], moved["model_class"], moved["label_source"]) == (
        "Neutrophil", "Eosinophil", "review:reclassify")
    session = data["sources"][0]["sessions"][0]
    assert session["calibration"] == {"um_per_px": 0.1}
    assert data["model"]["sha256"] == "a" * 64 and data["model"]["name"] == "lgld-wbc5"
    assert len(image_groups(data)) == 18


def test_rejected_and_unreviewed_cells_are_left_out_by_default(tmp_path):
    log = reviewed_session(tmp_path, per_class=5)
    log.cell(SID, 100, "Neutrophil")  # never reviewed
    log.cell(SID, 101, "Neutrophil")
    log.review(SID, 101, "reject")
    log.write()
    data = build(log, tmp_path / "lab")
    assert data["images_total"] == 15
    assert data["left_out"] == {"unreviewed": 1, "rejected": 1}


def test_include_unreviewed_adds_only_confident_model_labels_marked_as_such(tmp_path):
    log = reviewed_session(tmp_path, per_class=5)
    log.cell(SID, 100, "Neutrophil", confidence=0.97)
    log.cell(SID, 101, "Neutrophil", confidence=0.6)
    log.cell(SID, 102, "unclassified", confidence=0.4)
    log.write()
    data = build(log, tmp_path / "lab", include_unreviewed=True, min_confidence=0.9)
    added = [im for im in data["images"] if im["label_source"] == "model"]
    assert [im["track"] for im in added] == [100]
    assert data["left_out"] == {"unreviewed, below --min-confidence": 1,
                                "unreviewed, unclassified": 1}


def test_byte_identical_crops_are_kept_once(tmp_path):
    log = reviewed_session(tmp_path, per_class=5)
    same = crop_image(999)
    for track in (200, 201):
        log.cell(SID, track, "Lymphocyte", image=same)
        log.review(SID, track, "confirm")
    log.write()
    data = build(log, tmp_path / "lab")
    assert data["classes"]["Lymphocyte"] == 6
    assert len(data["duplicates"]) == 1
    assert len({im["sha256"] for im in data["images"]}) == data["images_total"]


def test_crops_of_several_logs_and_sessions_share_one_data_set(tmp_path):
    a = reviewed_session(tmp_path / "a", sid="20261201-100000-aaaa", per_class=3)
    b = reviewed_session(tmp_path / "b", sid="20261202-100000-bbbb", per_class=3,
                         seed=100)
    a.write(), b.write()
    checked = plan([Source(a.path, a.folder), Source(b.path, b.folder)], Options())
    data = write(checked, tmp_path / "lab")
    assert data["classes"] == {"Eosinophil": 6, "Lymphocyte": 6, "Neutrophil": 6}
    assert [s["sessions"][0]["id"] for s in data["sources"]] == [
        "20261201-100000-aaaa", "20261202-100000-bbbb"]
    assert data["groups_total"] == 18


def refused(log: LabLog, out: Path, crops: Path | None = None, **options) -> str:
    with pytest.raises(DatasetError) as info:
        write(plan([Source(log.path, crops or log.folder)], Options(**options)), out)
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.tmp-*"))
    message = str(info.value)
    assert "\n" not in message
    return message


def test_a_log_without_reviews_is_refused(tmp_path):
    log = LabLog(tmp_path)
    log.session(SID)
    for track in range(1, 8):
        log.cell(SID, track, "Neutrophil")
    log.write()
    assert "has no reviews" in refused(log, tmp_path / "lab")


def test_a_crop_folder_that_does_not_match_the_log_is_refused(tmp_path):
    log = reviewed_session(tmp_path / "pi", per_class=5)
    log.write()
    other = tmp_path / "other"
    (other / "crops").mkdir(parents=True)
    message = refused(log, tmp_path / "lab", crops=other)
    assert "does not match" in message and "15 of 15 crops missing" in message
    (log.folder / "crops" / SID / "t00003.png").write_bytes(b"not an image")
    assert "1 of 15 crops missing or unreadable" in refused(log, tmp_path / "lab")


def test_crops_logged_outside_the_log_folder_are_found_in_a_copied_crop_folder(tmp_path):
    log = reviewed_session(tmp_path / "pi", per_class=5)
    for line in log.lines:  # the Pi kept its crops in /var/lib/lgld/crops, beside /var/log
        if line.get("crop"):
            line["crop"] = "../../lib/lgld/" + line["crop"]
    log.write()
    assert build_from(log.path, log.folder, tmp_path / "lab")["images_total"] == 15
    shutil.move(tmp_path / "pi" / "crops", tmp_path / "usb" / "crops")  # copied elsewhere
    assert "15 of 15 crops missing" in refused(log, tmp_path / "lab2")
    assert build_from(log.path, tmp_path / "usb", tmp_path / "lab2")["images_total"] == 15


def test_sessions_that_used_different_models_are_refused(tmp_path):
    log = reviewed_session(tmp_path, per_class=5)
    second = "20261201-120000-ffff"
    log.session(second, model="lgld-wbc5-128", sha="b" * 64)
    log.cell(second, 1, "Neutrophil")
    log.review(second, 1, "confirm")
    log.write()
    message = refused(log, tmp_path / "lab")
    assert "different models" in message and "lgld-wbc5-128" in message
    data = build(log, tmp_path / "lab", sessions=[SID])  # one session at a time is fine
    assert data["images_total"] == 15


def test_a_class_below_min_per_class_is_refused_unless_omitted_on_request(tmp_path):
    log = reviewed_session(tmp_path, per_class=5)
    log.cell(SID, 300, "Monocyte")
    log.review(SID, 300, "confirm")
    log.write()
    assert "too few images for Monocyte 1" in refused(log, tmp_path / "lab", min_per_class=5)
    data = build(log, tmp_path / "lab", min_per_class=5, omit_small=True)
    assert "Monocyte" not in data["classes"]
    assert data["omitted_classes"] == {"Monocyte": 1}


def test_the_command_prints_per_class_counts_and_refuses_in_one_line(tmp_path, capsys):
    log = reviewed_session(tmp_path, per_class=5)
    log.write()
    out = tmp_path / "lab"
    assert main([str(log.path), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Eosinophil" in printed and "15 " in printed
    assert json.loads((out / "manifest.json").read_text())["images_total"] == 15

    assert main([str(log.path), "-o", str(out)]) == 1  # exists
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "already exists" in err
    assert main([str(tmp_path / "missing.jsonl"), "-o", str(tmp_path / "x")]) == 1
    assert "log not found" in capsys.readouterr().err
    assert main([str(log.path), "--session", "nope", "-o", str(tmp_path / "y")]) == 1
    assert "sessions: " + SID in capsys.readouterr().err
