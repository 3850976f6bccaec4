"""Resolve ``--model``: a shipped model by name (``all``, ``wbc5``) or a path.

Shipped models live in the ``lgld.zoo`` data package (the top-level ``zoo/`` folder), which
holds no code, so the runtime imports it without pulling in ``lgld.models`` or torch.
"""

from __future__ import annotations

from pathlib import Path

from lgld.runtime.core.classifier import ModelLoadError
from lgld.zoo import ZOO_DIR

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


def zoo_dir() -> Path:
    """The installed zoo folder."""
    return ZOO_DIR


def resolve_model(spec: str) -> Path:
    """A zoo name or a path -> the .onnx path; ModelLoadError when a zoo model is missing."""
    name = spec.strip()
    if name.lower() in ZOO:
        path = zoo_dir() / ZOO[name.lower()]
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
