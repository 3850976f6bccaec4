"""The lab loop's training side: group-aware splits, mixing other data into train, lgld-train
--init on an lgld-dataset folder, the model card's lab section."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from lab_logs import WBC5, reviewed_session

pytestmark = [pytest.mark.train, pytest.mark.usefixtures("one_torch_thread")]
torch = pytest.importorskip("torch")

from lgld.lab.build import Options, Source, plan, write  # noqa: E402
from lgld.models.checkpoint import save_checkpoint  # noqa: E402
from lgld.models.lgld_net import LGLDNet, ModelConfig  # noqa: E402
from lgld.runtime.core.preprocess import PreprocessSpec  # noqa: E402
from lgld.training.cli import eval_main, train_main  # noqa: E402
from lgld.training.data import DataError, Discovered, Item  # noqa: E402
from lgld.training.groups import group_split  # noqa: E402
from lgld.training.mix import mix_into, mixed_count  # noqa: E402
from lgld.training.modelcard import _lab_section  # noqa: E402


def grouped_items(cells_per_class: int = 10, classes=("a", "b")) -> tuple[list[Item], dict]:
    """Each cell has 1..4 crops; paths ``<class>/c<cell>_<k>.png``, group ``s/<cell>``."""
    items, groups = [], {}
    cell = 0
    for cls in classes:
        for _ in range(cells_per_class):
            cell += 1
            for k in range(1 + cell % 4):
                path = f"{cls}/c{cell}_{k}.png"
                items.append(Item(path, cls, f"{cell:04d}{k:04d}" + "0" * 56))
                groups[path] = f"s/{cell}"
    return items, groups


def where(split) -> dict[str, str]:
    return {it.path: part for part, items in split.parts.items() for it in items}


def test_group_split_keeps_every_crop_of_a_cell_in_one_part_stratified_and_seeded():
    items, groups = grouped_items(10)
    found = Discovered(Path("/lab"), "imagefolder", ["a", "b"], items)
    split = group_split(found, groups, 0.2, 0.3, seed=3, classes=WBC5[:2] + ["a", "b"])
    placed = where(split)
    assert sorted(placed) == sorted(it.path for it in items)
    part_of_group: dict[str, set[str]] = {}
    for path, part in placed.items():
        part_of_group.setdefault(groups[path], set()).add(part)
    assert all(len(parts) == 1 for parts in part_of_group.values())
    for part, n_cells in (("val", 2), ("test", 3), ("train", 5)):  # per class, in cells
        for cls in ("a", "b"):
            cells = {groups[it.path] for it in split.parts[part] if it.label == cls}
            assert len(cells) == n_cells, (part, cls)
    assert split.classes == ["Basophil", "Eosinophil", "a", "b"]  # the model's, absent ones too
    again = group_split(found, groups, 0.2, 0.3, seed=3)
    assert where(again) == placed
    assert where(group_split(found, groups, 0.2, 0.3, seed=4)) != placed


def test_byte_identical_crops_of_different_cells_land_in_one_part():
    items, groups = grouped_items(10)
    twin = Item("b/twin.png", "b", items[0].sha256)  # same bytes as cell 1's crop, other group
    groups["b/twin.png"] = "s/999"
    found = Discovered(Path("/lab"), "imagefolder", ["a", "b"], [*items, twin])
    placed = where(group_split(found, groups, 0.2, 0.2, seed=1))
    assert placed["b/twin.png"] == placed[items[0].path]


def test_model_labelled_cells_only_ever_train():
    items, groups = grouped_items(10)
    model_made = {it.path for it in items if it.label == "b" and int(groups[it.path][2:]) > 15}
    found = Discovered(Path("/lab"), "imagefolder", ["a", "b"], items)
    split = group_split(found, groups, 0.2, 0.2, seed=1, train_only=model_made)
    placed = where(split)
    assert {placed[p] for p in model_made} == {"train"}
    b_cells = {groups[it.path] for part in ("val", "test") for it in split.parts[part]
               if it.label == "b"}
    assert len(b_cells) == 2  # val and test of class b come from its 5 reviewed cells


def test_group_split_refuses_a_class_with_too_few_cells_and_foreign_classes():
    items, groups = grouped_items(2)
    found = Discovered(Path("/lab"), "imagefolder", ["a", "b"], items)
    with pytest.raises(DataError, match="too few reviewed cells"):
        group_split(found, groups, 0.2, 0.2)
    items, groups = grouped_items(5)
    found = Discovered(Path("/lab"), "imagefolder", ["a", "b"], items)
    with pytest.raises(DataError, match="not among the model's classes"):
        group_split(found, groups, 0.2, 0.2, classes=["a", "c"])


def test_mixing_grows_only_train_to_the_ratio_with_classes_in_turn():
    items, groups = grouped_items(10)
    found = Discovered(Path("/lab"), "imagefolder", ["a", "b"], items)
    split = group_split(found, groups, 0.2, 0.2, seed=1, classes=["a", "b", "c"])
    n_train = len(split.parts["train"])
    held_out_copy = Item("/shipped/a/copy.png", "a", split.parts["test"][0].sha256)
    pool = [Item(f"/shipped/{c}/{i}.png", c, f"{c}{i:063d}") for c in "abc" for i in range(40)]
    mixed, summary = mix_into(split, [held_out_copy, *pool], 0.5, seed=2)
    assert summary["images"] == mixed_count(n_train, 0.5) == n_train
    assert len(mixed.parts["train"]) == 2 * n_train
    assert mixed.parts["val"] == split.parts["val"] and mixed.parts["test"] == split.parts["test"]
    assert max(summary["per_class"].values()) - min(summary["per_class"].values()) <= 1
    assert held_out_copy not in mixed.parts["train"]
    assert mixed_count(30, 0.25) == 10 and mixed_count(30, 0.0) == 0
    with pytest.raises(DataError, match="--mix-ratio"):
        mixed_count(30, 1.0)
    with pytest.raises(DataError, match="not among the model's classes"):
        mix_into(split, [Item("/x/d/0.png", "d", "f" * 64)], 0.5, seed=2)


# ---------------------------------------------------------------- end to end


def tiny_wbc5_checkpoint(path: Path) -> Path:
    torch.manual_seed(0)
    model = LGLDNet(ModelConfig(num_classes=5, input_size=32)).eval()
    save_checkpoint(path, model, WBC5, PreprocessSpec(input_size=32), training={"dataset": "t"})
    return path


def shipped_folder(root: Path, per_class: int = 4) -> Path:
    rng = np.random.default_rng(5)
    for c in WBC5:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            cv2.imwrite(str(root / c / f"{i}.png"), rng.integers(0, 256, (24, 24, 3), np.uint8))
    return root


def test_lgld_train_init_on_a_lab_data_set_keeps_cells_whole_and_records_the_manifest(
        tmp_path: Path, capsys):
    log = reviewed_session(tmp_path / "pi", per_class=6)
    log.write()
    lab = tmp_path / "lab"
    manifest = write(plan([Source(log.path, log.folder)], Options()), lab)
    init = tiny_wbc5_checkpoint(tmp_path / "current.pt")
    shipped = shipped_folder(tmp_path / "shipped")
    run = tmp_path / "run"
    code = train_main(["--data", str(lab), "--out", str(run), "--init", str(init),
                       "--mix-data", str(shipped), "--mix-ratio", "0.5", "--input-size", "32",
                       "--epochs", "1", "--batch-size", "8", "--workers", "0", "--device", "cpu",
                       "--val-fraction", "0.2", "--test-fraction", "0.2"])
    assert code == 0, capsys.readouterr().err
    split = json.loads((run / "split.json").read_text())
    assert split["classes"] == WBC5
    lab_paths = {im["path"] for im in manifest["images"]}
    for part in ("val", "test"):
        assert {it["path"] for it in split["splits"][part]} <= lab_paths
    mixed = [it for it in split["splits"]["train"] if it["path"] not in lab_paths]
    lab_train = len(split["splits"]["train"]) - len(mixed)
    assert len(mixed) == lab_train and all(Path(it["path"]).is_absolute() for it in mixed)
    record = json.loads((run / "lab.json").read_text())
    assert record["groups"] == 18 and record["mix"]["images"] == len(mixed)
    assert json.loads((run / "lab-manifest.json").read_text()) == manifest
    section = "\n".join(_lab_section(run))
    assert "18 counted cells" in section and "review:confirm 18" in section
    assert "20261201-100000-abcd \"smear 1\"" in section
    assert f"--mix-data {shipped.resolve()} --mix-ratio 0.5" in section
    assert "--val-fraction 0.2 --test-fraction 0.2" in section

    capsys.readouterr()
    code = eval_main(["--model", str(run / "best.pt"), "--compare", str(init), "--data", str(lab),
                      "--split-file", str(run / "split.json"), "--split", "test"])
    out = capsys.readouterr().out
    assert code == 0
    assert "held-out images: 3 (test split" in out
    assert "recommendation: too few held-out cells to decide (3 < 30)" in out


def test_mix_data_is_refused_with_a_reused_split_file(tmp_path: Path, capsys):
    code = train_main(["--data", str(tmp_path), "--out", str(tmp_path / "r"), "--mix-data",
                       str(tmp_path), "--split-file", str(tmp_path / "split.json")])
    assert code == 1
    assert "--mix-data makes a new split" in capsys.readouterr().err
