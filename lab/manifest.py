"""The lab data-set manifest contract: written by ``lgld-dataset`` (runtime), read by
``lgld-train`` and the model card (training), so its name and fields are defined once, here.

A lab data set is an ImageFolder tree (``<class>/<file>``) with ``manifest.json`` at its root:
``{"format": "lgld-dataset", "version": 1, "images": [{"path", "sha256", "class", "group",
...provenance}], ...}``. ``group`` names the counted cell (session and track) an image came
from: every crop of one cell must land in one part of a split.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "lgld-dataset"
MANIFEST_VERSION = 1


class ManifestError(ValueError):
    """A manifest exists but is not a readable lgld-dataset manifest (one-line reason)."""


def read_manifest(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The folder's lgld-dataset manifest, None when it has none; ManifestError when damaged."""
    path = Path(folder) / MANIFEST_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        return None  # some other manifest.json: not ours, the folder is a plain ImageFolder
    images = data.get("images")
    if not isinstance(images, list) or not all(
        isinstance(im, dict) and isinstance(im.get("path"), str) and im.get("group") is not None
        for im in images
    ):
        raise ManifestError(f"{path} is a damaged lgld-dataset manifest (images without path "
                            "or group)")
    return data


def image_groups(manifest: dict[str, Any]) -> dict[str, str]:
    """Image path (relative to the data set, forward slashes) -> its group id."""
    return {im["path"]: str(im["group"]) for im in manifest["images"]}


def model_labelled(manifest: dict[str, Any]) -> set[str]:
    """Paths of the images labelled by the model, not by a reviewer (``--include-unreviewed``):
    fit for training, never for judging a model."""
    return {im["path"] for im in manifest["images"] if im.get("label_source") == "model"}
