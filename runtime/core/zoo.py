"""Resolve ``--model``: a shipped model by name (``all``, ``wbc5``) or a path.

Shipped models live in the ``zoo/`` folder of the installed ``lgld.models`` package. That
folder is found with ``importlib.util.find_spec`` only, so no ``lgld.models`` code (and no
torch) is ever imported by the runtime.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from lgld.runtime.core.session import ModelLoadError

ZOO = {
    # the defaults: illumination-corrected preprocessing, robust to exposure and white balance
    "all": "lgld-all.onnx",  # ALL leukemia, whole fields of view (field mode), 160 px
    "wbc5": "lgld-wbc5.onnx",  # five white-cell types, single centred cells (roi mode), 160 px
    # the first ALL model: best on the training microscope's own images, not on others
    "all-v1": "lgld-all-v1.onnx",
    # faster 128 px versions, and the rest of the ALL size menu (docs/performance.md), made
    # from the first models (no illumination correction)
    "all-128": "lgld-all-128.onnx",
    "wbc5-128": "lgld-wbc5-128.onnx",
    "all-192": "lgld-all-192.onnx",
    "all-224": "lgld-all-224.onnx",
}


def zoo_dir() -> Path | None:
    """The installed lgld.models/zoo folder, or None when lgld.models is not installed."""
    try:
        spec = importlib.util.find_spec("lgld.models")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "zoo"


def resolve_model(spec: str) -> Path:
    """A zoo name or a path -> the .onnx path; ModelLoadError when a zoo model is missing."""
    name = spec.strip()
    if name.lower() in ZOO:
        folder = zoo_dir()
        if folder is None:
            raise ModelLoadError(
                f"model {name!r}: the model zoo (lgld.models) is not installed; pass --model PATH"
            )
        path = folder / ZOO[name.lower()]
        if not path.is_file():
            raise ModelLoadError(
                f"model {name!r} is not built yet: {path} not found "
                "(train and export it, or pass --model PATH to an .onnx file)"
            )
        return path
    path = Path(name).expanduser()
    if not path.is_file():
        names = ", ".join(ZOO)
        raise ModelLoadError(f"model not found: {path} (use {names} or a path to an .onnx file)")
    return path
