"""core.files.write_atomic, the one way every writer replaces a file: a unique temporary name
beside the target, the file and its folder forced to disk, the target whole or untouched."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from lgld.runtime import calibration
from lgld.runtime.core import files
from lgld.runtime.core.files import atomic_path, write_atomic
from lgld.training.data import Item, Split


def test_write_atomic_writes_text_and_bytes_with_normal_permissions(tmp_path: Path) -> None:
    umask = os.umask(0o027)
    try:
        text = write_atomic(tmp_path / "a.json", "{\"x\": \"é\"}\r\n")
        raw = write_atomic(tmp_path / "b.bin", b"\x00\x01")
    finally:
        os.umask(umask)
    assert text.read_bytes() == "{\"x\": \"é\"}\r\n".encode()  # UTF-8, newlines as given
    assert raw.read_bytes() == b"\x00\x01"
    assert (text.stat().st_mode & 0o777) == 0o640  # as a plain open() under that umask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.bin"]


def test_the_file_and_its_folder_are_forced_to_disk_before_and_after_the_rename(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[tuple[str, bool]] = []
    real = files._fsync
    target = tmp_path / "out.txt"

    def record(path: Path) -> None:
        synced.append((path.name, target.exists()))
        real(path)

    monkeypatch.setattr(files, "_fsync", record)
    write_atomic(target, "new")
    (tmp_name, existed), (folder, renamed) = synced
    assert tmp_name.startswith(".out.txt.") and not existed  # the data before the rename
    assert folder == tmp_path.name and renamed  # the rename itself after it


def test_two_writers_of_one_file_never_share_a_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "split.json"
    with atomic_path(target) as first, atomic_path(target) as second:
        assert first != second and first.parent == second.parent == tmp_path
        first.write_text("one")
        second.write_text("two")
    assert target.read_text() == "one"  # the outer writer renamed last
    assert [p.name for p in tmp_path.iterdir()] == ["split.json"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary_file(tmp_path: Path) -> None:
    target = write_atomic(tmp_path / "card.md", "old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["card.md"]


def test_a_missing_folder_is_an_error_not_created(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        write_atomic(tmp_path / "nope" / "x.json", "{}")
    assert not (tmp_path / "nope").exists()


def test_writers_that_used_a_fixed_temporary_name_survive_a_stale_one(tmp_path: Path) -> None:
    # A killed or concurrent writer's "<name>.tmp" (here a folder, so it cannot be overwritten)
    # used to make the split and the calibration unwritable.
    (tmp_path / "split.json.tmp").mkdir()
    split = Split(tmp_path, "imagefolder", ["a"], 1, {"train": [Item("a/x.png", "a", "0" * 64)]})
    split.save(tmp_path / "split.json")
    assert '"seed": 1' in (tmp_path / "split.json").read_text()
    (tmp_path / f"{calibration.CALIBRATION_FILE}.tmp").mkdir()
    flat = np.ones((4, 6, 3), np.float32)
    cal = calibration.Calibration(flat=flat, created=1.0, source="camera:0", frame_size=(6, 4),
                                  frames=3, background=(200.0, 200.0, 200.0))
    calibration.save(cal, tmp_path)
    back = calibration.load(tmp_path)
    assert back is not None and np.array_equal(back.flat, flat)
