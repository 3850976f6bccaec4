"""Frame sources: one small interface (:mod:`.base`), one module per backend, one spec grammar.

``open_source(spec, cfg)`` returns an opened :class:`Source`; see :mod:`.registry` for the
specs and :func:`probe` (what ``lgld-run --check`` reports).
"""

from lgld.runtime.sources.base import (
    NO_CAMERA,
    CameraBusy,
    CameraLost,
    CameraNotFound,
    Frame,
    Source,
    SourceError,
)
from lgld.runtime.sources.registry import (
    SourceSpec,
    cameras_report,
    make_source,
    open_source,
    parse_spec,
    probe,
)

__all__ = [
    "NO_CAMERA",
    "CameraBusy",
    "CameraLost",
    "CameraNotFound",
    "Frame",
    "Source",
    "SourceError",
    "SourceSpec",
    "cameras_report",
    "make_source",
    "open_source",
    "parse_spec",
    "probe",
]
