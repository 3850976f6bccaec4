"""The counted cells' crop budget: whole cells go, unreviewed oldest first, reviewed last;
other snapshot files are never touched."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from lab_logs import reviewed_session

from lgld.runtime.cells.cropstore import CropBudget, prune, reviewed_crops

KB = 1024


def cell_files(folder: Path, stem: str, age_s: float, kb: int = 10) -> list[Path]:
    """A cell's crop and context thumbnail, ``kb`` KiB each, ``age_s`` seconds old."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{stem}.jpg", folder / f"{stem}.context.jpg"]
    when = 1_700_000_000 - age_s
    for p in paths:
        p.write_bytes(b"x" * kb * KB)
        os.utime(p, (when, when))
    return paths


def test_crops_within_their_budget_are_left_alone(tmp_path):
    for i in range(3):
        cell_files(tmp_path / "cells-a", f"f{i}-t{i}", age_s=i)
    deleted, left = prune(tmp_path, 60 * KB, reviewed=[])
    assert deleted == [] and left == 60 * KB


def test_oldest_unreviewed_cells_go_first_whole_and_reviewed_ones_last(tmp_path):
    snapshot = cell_files(tmp_path, "snapshot-raw", age_s=900, kb=50)  # POST /api/snapshot
    old_reviewed = cell_files(tmp_path / "cells-s1", "f1-t1-Neutrophil", age_s=500)
    old = cell_files(tmp_path / "cells-s1", "f2-t2-Monocyte", age_s=400)
    newer = cell_files(tmp_path / "cells-s1", "f3-t3-Monocyte", age_s=300)
    newest = cell_files(tmp_path / "cells-s2", "f1-t1-Lymphocyte", age_s=100)
    # 80 KiB of crops in 4 cells of 20; a 65 KiB budget prunes to <= 58.5 KiB: two cells go
    deleted, left = prune(tmp_path, 65 * KB, reviewed=[old_reviewed[0]])
    assert sorted(deleted) == sorted(old + newer)
    assert left == 40 * KB
    assert all(p.exists() for p in old_reviewed + newest + snapshot)
    deleted, left = prune(tmp_path, 25 * KB, reviewed=[old_reviewed[0]])
    assert sorted(deleted) == sorted(newest) and left == 20 * KB
    assert not (tmp_path / "cells-s2").exists()  # its last cell went: no empty folder left
    # reviewed cells go only when nothing unreviewed is left
    deleted, left = prune(tmp_path, 15 * KB, reviewed=[old_reviewed[0]])
    assert sorted(deleted) == sorted(old_reviewed) and left == 0
    assert all(p.exists() for p in snapshot)


@pytest.mark.parametrize("background", [False, True])
def test_the_budget_counts_new_files_and_prunes_only_when_exceeded(tmp_path, background):
    asked = []

    def reviewed() -> set[Path]:
        asked.append(1)
        return set()

    crops = tmp_path / "snap" / "cells-s"
    budget = CropBudget(tmp_path / "snap", limit_mb=50 * KB / 2**20, reviewed=reviewed,
                        background=background)
    for i in range(2):
        budget.added(*cell_files(crops, f"f{i}-t{i}", age_s=100 - i))
    assert budget.total == 40 * KB and not asked  # under budget: no scan, no log read
    budget.added(*cell_files(crops, "f9-t9", age_s=0), None)
    budget.wait()
    assert asked and budget.deleted == 2 and budget.total == 40 * KB
    assert not (crops / "f0-t0.jpg").exists() and (crops / "f9-t9.jpg").exists()
    with pytest.raises(ValueError, match="crop_budget_mb"):
        CropBudget(tmp_path, 0)


def test_reviewed_crops_are_read_from_the_log(tmp_path):
    log = reviewed_session(tmp_path, per_class=2)
    log.cell("20261201-100000-abcd", 50, "Neutrophil")  # not reviewed
    log.write()
    found = reviewed_crops(log.path)
    assert len(found) == 6
    assert (tmp_path / "crops" / "20261201-100000-abcd" / "t00001.png").resolve() in found
    assert (tmp_path / "crops" / "20261201-100000-abcd" / "t00050.png").resolve() not in found
