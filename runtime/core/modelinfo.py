"""The contract between ``lgld-export`` and the runtime: what an lgld ONNX model says about itself.

Every key lives in the ONNX model's ``metadata_props`` as a string (JSON where structured), so
the runtime needs no side files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from lgld.runtime.core import strictjson
from lgld.runtime.core.preprocess import PreprocessSpec

PREFIX = "lgld."
FORMAT = "lgld-onnx"
FORMAT_VERSION = 1


class ModelInfoError(ValueError):
    """A model is not an lgld model or its metadata is inconsistent."""


def lgld_version() -> str:
    """The installed lgld version ("0+unknown" when running from an uninstalled tree)."""
    try:
        return metadata.version("lgld")
    except metadata.PackageNotFoundError:
        return "0+unknown"


@dataclass
class ModelInfo:
    """Self-description of an exported model."""

    classes: list[str]
    preprocess: PreprocessSpec
    variant: str = "full"
    name: str = "lgld"
    training: dict[str, Any] = field(default_factory=dict)
    checkpoint_sha256: str = ""
    lgld_version: str = field(default_factory=lgld_version)
    quantization: str = "fp32"
    domain: dict[str, Any] = field(default_factory=dict)  # cells.domain's reference, if any

    @property
    def input_size(self) -> int:
        return self.preprocess.input_size

    def to_metadata(self) -> dict[str, str]:
        """All fields as ONNX metadata_props (string -> string)."""
        return {
            PREFIX + "format": FORMAT,
            PREFIX + "format_version": str(FORMAT_VERSION),
            PREFIX + "name": self.name,
            PREFIX + "classes": json.dumps(self.classes),
            PREFIX + "input_size": str(self.input_size),
            PREFIX + "preprocess": json.dumps(self.preprocess.to_dict()),
            PREFIX + "variant": self.variant,
            PREFIX + "training": strictjson.dumps(self.training),
            PREFIX + "checkpoint_sha256": self.checkpoint_sha256,
            PREFIX + "version": self.lgld_version,
            PREFIX + "quantization": self.quantization,
        } | ({PREFIX + "domain": strictjson.dumps(self.domain)} if self.domain else {})

    @classmethod
    def from_metadata(cls, props: dict[str, str], source: str = "model") -> ModelInfo:
        """Parse metadata_props; raise ModelInfoError with a one-line reason."""
        if props.get(PREFIX + "format") != FORMAT:
            raise ModelInfoError(f"{source} is not an lgld model (no lgld metadata)")
        if props.get(PREFIX + "format_version") != str(FORMAT_VERSION):
            raise ModelInfoError(
                f"{source} has lgld metadata version {props.get(PREFIX + 'format_version')}, "
                f"this lgld reads version {FORMAT_VERSION}"
            )
        try:
            classes = [str(c) for c in json.loads(props[PREFIX + "classes"])]
            spec = PreprocessSpec.from_dict(json.loads(props[PREFIX + "preprocess"]))
            info = cls(
                classes=classes,
                preprocess=spec,
                variant=props.get(PREFIX + "variant", "full"),
                name=props.get(PREFIX + "name", "lgld"),
                training=json.loads(props.get(PREFIX + "training", "{}")),
                checkpoint_sha256=props.get(PREFIX + "checkpoint_sha256", ""),
                lgld_version=props.get(PREFIX + "version", ""),
                quantization=props.get(PREFIX + "quantization", "fp32"),
                domain=json.loads(props.get(PREFIX + "domain", "{}")),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelInfoError(f"{source} has damaged lgld metadata: {exc}") from None
        size_text = props.get(PREFIX + "input_size", str(spec.input_size))
        if not size_text.strip().isdigit():
            raise ModelInfoError(f"{source}: lgld.input_size {size_text[:40]!r} is not a number")
        if int(size_text) != spec.input_size:
            raise ModelInfoError(f"{source}: input_size and preprocess disagree")
        if len(classes) < 2:
            raise ModelInfoError(f"{source}: needs at least 2 classes, has {len(classes)}")
        return info
