"""Package discovery for the `lgld` distribution (everything else is in pyproject.toml).

The subpackages of `lgld` live in top-level folders, mapped in pyproject.toml's
[tool.setuptools.package-dir] ("lgld.runtime" = "runtime", ...). setuptools cannot discover
packages below a renamed prefix from pyproject.toml alone, so this file finds them: every package
below each mapped folder, and every data file of those packages (non-Python files in a package's
folder and in its data folders, e.g. zoo/ and runtime/assets/). A new subpackage, a new
mapped folder (one line in package-dir) or a new model file can never be left out of the wheel;
tests/test_packaging.py compares a built wheel with the source tree.
"""

from __future__ import annotations

import fnmatch
import os
import tomllib
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).resolve().parent
# Files of the package folders that never ship: the .pt checkpoints stay in the checkout
# (lgld-bench's reference rows find them there; the runtime cannot load them).
NOT_SHIPPED = ("*.pt", "*.py[cod]", ".*")


def package_dirs() -> dict[str, str]:
    """pyproject.toml's package-dir mapping: lgld subpackage -> top-level folder."""
    with open(HERE / "pyproject.toml", "rb") as f:
        return dict(tomllib.load(f)["tool"]["setuptools"]["package-dir"])


def discover(mapping: dict[str, str]) -> tuple[list[str], dict[str, list[str]]]:
    """Every package below the mapped folders, and each package's data files (relative paths)."""
    packages: list[str] = []
    data: dict[str, list[str]] = {}
    for name, folder in sorted(mapping.items()):
        subpackages = find_packages(str(HERE / folder))
        for package in [name, *(f"{name}.{sub}" for sub in subpackages)]:
            packages.append(package)
            path = HERE / folder / Path(*package.split(".")[name.count(".") + 1 :])
            files = data_files(path)
            if files:
                data[package] = files
    return packages, data


def data_files(folder: Path) -> list[str]:
    """A package's non-Python files: in its folder and its data subfolders (not subpackages)."""
    found = []
    for root, dirs, files in os.walk(folder):
        here = Path(root)
        dirs[:] = sorted(
            d for d in dirs
            if d != "__pycache__" and not d.startswith(".")
            and not (here / d / "__init__.py").exists()
        )
        found += [
            (here / f).relative_to(folder).as_posix()
            for f in sorted(files)
            if not f.endswith(".py") and not any(fnmatch.fnmatch(f, p) for p in NOT_SHIPPED)
        ]
    return found


PACKAGES, PACKAGE_DATA = discover(package_dirs())
setup(packages=PACKAGES, package_data=PACKAGE_DATA)
