"""The built wheel holds every package and data file of the source tree, and nothing else.

Builds the sdist and, from it, the wheel (``python -m build --no-isolation``, as .ci/run does with
isolation) from a copy of the source tree, or inspects the wheel named by ``LGLD_WHEEL`` (.ci/run's
runtime-only venv has no build tools). The expected files come from walking the folders that
pyproject.toml maps to ``lgld.*``, not from setup.py's discovery.
"""

from __future__ import annotations

import configparser
import fnmatch
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Files in the package folders that must not ship (.pt checkpoints stay in the checkout).
NOT_SHIPPED = ("*.pt", "*.pyc", "*.pyo", ".*")


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def package_dirs() -> dict[str, str]:
    return pyproject()["tool"]["setuptools"]["package-dir"]


def expected_files() -> set[str]:
    """Every file below the mapped folders, as its path in the wheel, minus what never ships."""
    out = set()
    for name, folder in package_dirs().items():
        root = REPO / folder
        prefix = Path(*name.split("."))
        for path in root.rglob("*"):
            rel = path.relative_to(root)
            if path.is_dir() or "__pycache__" in rel.parts:
                continue
            if any(part.startswith(".") for part in rel.parts):
                continue
            if any(fnmatch.fnmatch(path.name, p) for p in NOT_SHIPPED):
                continue
            out.add((prefix / rel).as_posix())
    return out


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    given = os.environ.get("LGLD_WHEEL")
    if given:
        return Path(given)
    pytest.importorskip("build", reason="the dev extra's `build` builds the wheel")
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(REPO / name, src / name)
    for folder in package_dirs().values():
        shutil.copytree(REPO / folder, src / folder,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    dist = tmp_path_factory.mktemp("dist")
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(src)],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    (built,) = dist.glob("lgld-*.whl")
    return built


def wheel_names(wheel: Path) -> set[str]:
    with zipfile.ZipFile(wheel) as zf:
        return {n for n in zf.namelist() if not n.endswith("/")}


def test_the_wheel_holds_every_package_and_data_file_of_the_source_tree(wheel: Path) -> None:
    names = wheel_names(wheel)
    shipped = {n for n in names if not n.split("/")[0].endswith(".dist-info")}
    expected = expected_files()
    missing = sorted(expected - shipped)
    assert not missing, f"missing from {wheel.name}: {missing}"
    extra = sorted(shipped - expected)
    assert not extra, f"in {wheel.name} but not in the source tree (or never shipped): {extra}"
    # The source tree's packages themselves, named: a folder of .py files that is not in the
    # wheel is the failure this guards against (lgld.runtime.cells once was).
    packages = {str(Path(n).parent).replace("/", ".") for n in expected if n.endswith(".py")}
    assert {"lgld.runtime.cells", "lgld.runtime.core", "lgld.models", "lgld.zoo"} <= packages
    assert not [n for n in names if n.endswith(".pt")]
    assert any(n.startswith("lgld/zoo/") and n.endswith(".onnx") for n in names)


def test_every_command_of_the_wheel_points_at_a_module_it_holds(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        entry = next(n for n in zf.namelist() if n.endswith(".dist-info/entry_points.txt"))
        parser = configparser.ConfigParser()
        parser.read_string(zf.read(entry).decode())
        names = set(zf.namelist())
        scripts = dict(parser["console_scripts"])
        assert scripts == pyproject()["project"]["scripts"]
        for command, target in scripts.items():
            module, func = target.split(":")
            path = module.replace(".", "/") + ".py"
            assert path in names, f"{command}: {path} is not in the wheel"
            assert f"def {func}(" in zf.read(path).decode(), f"{command}: no {func} in {path}"
