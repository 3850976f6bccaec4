"""Flat-field calibration: what an empty field of this microscope looks like, and undoing it.

``lgld-run --calibrate`` reads N frames of an empty area of the slide (glass or plasma, no
cells), checks each one is a blank field, averages them in linear light and smooths the mean
into a flat field: the lamp's fall-off towards the corners (vignetting) and any colour
gradient. It is stored in the state directory (``flatfield.npy``, ``calibration.json`` with
the time, source, frame size, mean background colour and, on a Raspberry Pi camera, the
exposure and colour gains then locked). Every later frame is divided by the flat field
(normalised to its mean, so the overall brightness and colour stay for the model's own
illumination correction) before the model's preprocessing.

A calibration is *stale* when it is older than ``max_age_h`` or was made with another source
or frame size; a run without a usable one says so on the page, in ``/healthz`` and in the
log header, and classifies without flat-field correction.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np

from lgld.runtime.config import CalibrationSection
from lgld.runtime.config import state_dir as lgld_state_dir
from lgld.runtime.core.files import atomic_path, write_atomic
from lgld.runtime.core.preprocess import srgb_to_linear

CALIBRATION_FILE = "calibration.json"
FLAT_FILE = "flatfield.npy"
FLAT_WIDTH = 160  # the flat field is smooth: stored and computed this small
SETTLE_FRAMES = 5  # frames read and dropped first (auto-exposure settles)
# A blank field: at most this fraction of it darker than DARK_RATIO x the local background.
MAX_FEATURE_FRACTION = 0.01
DARK_RATIO = 0.8
MIN_LEVEL, MAX_CLIPPED_FRACTION = 40.0, 0.05  # median grey level; clipped pixels
GAIN_SCALE = 128.0  # flat-field gains are applied as uint8 fixed point (1.0 = 128)
CAMERA_CONTROLS = ("ExposureTime", "AnalogueGain", "ColourGains")


class CalibrationError(ValueError):
    """A calibration frame is unusable, or the calibration cannot be read or written."""


class FrameSource(Protocol):
    name: str

    def read(self) -> Any: ...


@dataclass
class Calibration:
    """A flat field (linear light, FLAT_WIDTH wide, BGR) and what it was made with."""

    flat: np.ndarray
    created: float  # seconds since the epoch
    source: str
    frame_size: tuple[int, int]  # width, height of the frames it was made from
    frames: int
    background: tuple[float, float, float]  # mean blank-field colour, sRGB 0-255, RGB order
    camera: dict[str, Any] = field(default_factory=dict)  # locked picamera2 controls, if any
    _gains: dict[tuple[int, int], np.ndarray] = field(default_factory=dict, repr=False)

    def record(self) -> dict[str, Any]:
        """What calibration.json holds (everything but the flat field itself)."""
        return {
            "created": datetime.fromtimestamp(self.created, UTC).isoformat(timespec="seconds"),
            "source": self.source,
            "frame_size": list(self.frame_size),
            "frames": self.frames,
            "background_rgb": [round(v, 1) for v in self.background],
            "vignetting": round(self.vignetting(), 4),
            "camera": self.camera,
        }

    def vignetting(self) -> float:
        """Darkest corner of the flat field relative to its centre (1.0 = none), in light."""
        grey = self.flat.mean(axis=2)
        h, w = grey.shape
        centre = grey[h * 2 // 5 : h * 3 // 5, w * 2 // 5 : w * 3 // 5].mean()
        k = max(1, min(h, w) // 10)
        corners = [grey[:k, :k], grey[:k, -k:], grey[-k:, :k], grey[-k:, -k:]]
        return float(min(c.mean() for c in corners) / centre)

    def gain_map(self, shape: tuple[int, int]) -> np.ndarray:
        """uint8 fixed-point gains (GAIN_SCALE = 1) for a BGR image of ``shape`` (h, w) that
        shows the whole calibrated field of view (a frame, or its low-resolution copy)."""
        key = (int(shape[0]), int(shape[1]))
        if key not in self._gains:
            flat = cv2.resize(self.flat, (key[1], key[0]), interpolation=cv2.INTER_LINEAR)
            gains = flat.reshape(-1, 3).mean(axis=0) / np.maximum(flat, 1e-4)
            # sRGB is close to linear ** (1 / 2.2): a linear gain g scales sRGB values by g^0.45
            srgb_gains = np.clip(gains, 0.25, 4.0) ** (1 / 2.2)
            self._gains[key] = np.clip(np.rint(srgb_gains * GAIN_SCALE), 0, 255).astype(np.uint8)
        return self._gains[key]

    def correct(self, image: np.ndarray, region: tuple[int, int, int, int] | None = None,
                frame_shape: tuple[int, ...] | None = None) -> np.ndarray:
        """Flat-field correct a BGR uint8 image: the whole field of view, or the part of it at
        ``region`` (x, y, w, h in pixels of a frame of ``frame_shape``)."""
        if region is None or frame_shape is None:
            gains = self.gain_map(image.shape[:2])
        else:
            full = self.gain_map(frame_shape[:2])
            x, y, w, h = region
            gains = full[y : y + h, x : x + w]
            if gains.shape[:2] != image.shape[:2]:  # a crop of the low-resolution copy
                gains = cv2.resize(gains, (image.shape[1], image.shape[0]),
                                   interpolation=cv2.INTER_LINEAR)
        return cv2.multiply(image, gains, scale=1.0 / GAIN_SCALE)


@dataclass(frozen=True)
class CalibrationState:
    """Whether a calibration applies to this run: ``ok``, ``stale``, ``missing``, or ``demo``
    (a generated demo source: evenly lit by construction, nothing to calibrate)."""

    state: str
    message: str
    calibration: Calibration | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"state": self.state, "message": self.message}
        if self.calibration is not None:
            out.update(self.calibration.record())
        return out


def blank_field_problem(image: np.ndarray) -> str | None:
    """Why a BGR frame is not a usable picture of an empty, lit field (None when it is)."""
    grey = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    level = float(np.median(grey))
    if level < MIN_LEVEL:
        return f"too dark (median grey level {level:.0f} of 255): turn the light up"
    clipped = float(np.mean(grey >= 254))
    if clipped > MAX_CLIPPED_FRACTION:
        return (f"overexposed ({100 * clipped:.0f}% of the pixels clipped): turn the light "
                "or the exposure down")
    small = cv2.resize(grey, (FLAT_WIDTH, max(1, FLAT_WIDTH * grey.shape[0] // grey.shape[1])),
                       interpolation=cv2.INTER_AREA).astype(np.float32)
    background = cv2.GaussianBlur(small, (0, 0), sigmaX=FLAT_WIDTH / 16)
    features = float(np.mean(small < DARK_RATIO * background))
    if features > MAX_FEATURE_FRACTION:
        return (f"not a blank field: {100 * features:.1f}% of it is darker than the background "
                "around it (cells or debris); move to an empty area of the slide")
    return None


def flat_field(frames: list[np.ndarray]) -> np.ndarray:
    """Mean of blank BGR frames in linear light, smoothed: (h, FLAT_WIDTH, 3) float32."""
    h, w = frames[0].shape[:2]
    size = (FLAT_WIDTH, max(1, round(FLAT_WIDTH * h / w)))
    lut = srgb_to_linear(np.arange(256) / 255.0).astype(np.float32)
    mean = np.mean([cv2.resize(lut[f], size, interpolation=cv2.INTER_AREA) for f in frames],
                   axis=0)
    return cv2.GaussianBlur(mean, (0, 0), sigmaX=FLAT_WIDTH / 80).astype(np.float32)


def capture(source: FrameSource, frames: int, camera: dict[str, Any] | None = None
            ) -> Calibration:
    """Read ``frames`` blank frames from an open source and make a calibration of them.

    Raises CalibrationError naming the first frame that is not a blank field.
    """
    images: list[np.ndarray] = []
    for _ in range(SETTLE_FRAMES):
        if source.read() is None:
            break
    while len(images) < frames:
        frame = source.read()
        if frame is None:
            raise CalibrationError(f"{source.name} ended after {len(images)} calibration "
                                   f"frame(s) of {frames}")
        problem = blank_field_problem(frame.image)
        if problem:
            raise CalibrationError(f"calibration frame {len(images) + 1} from {source.name} is "
                                   f"{problem}")
        if images and frame.image.shape != images[0].shape:
            raise CalibrationError("the frame size changed during calibration")
        images.append(frame.image)
    flat = flat_field(images)
    mean_bgr = flat.reshape(-1, 3).mean(axis=0)
    srgb = 255.0 * _linear_to_srgb(mean_bgr[::-1])
    h, w = images[0].shape[:2]
    return Calibration(flat=flat, created=time.time(), source=source.name, frame_size=(w, h),
                       frames=len(images), background=(srgb[0], srgb[1], srgb[2]),
                       camera=dict(camera or {}))


def _linear_to_srgb(v: np.ndarray) -> np.ndarray:
    v = np.clip(v.astype(np.float64), 0.0, 1.0)
    return np.where(v <= 0.0031308, v * 12.92, 1.055 * v ** (1 / 2.4) - 0.055)


def state_dir(cfg: CalibrationSection) -> Path:
    """Where calibrations live: the configured folder, else lgld's state directory."""
    return Path(cfg.dir).expanduser() if cfg.dir else lgld_state_dir()


def save(cal: Calibration, folder: Path) -> Path:
    """Write flatfield.npy and calibration.json (the JSON last: it marks a complete one)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with atomic_path(folder / FLAT_FILE) as tmp, open(tmp, "wb") as fh:
            np.save(fh, cal.flat, allow_pickle=False)
        write_atomic(folder / CALIBRATION_FILE,
                     json.dumps({**cal.record(), "created_unix": cal.created}, indent=1) + "\n")
    except OSError as exc:
        raise CalibrationError(f"cannot write the calibration to {folder}: "
                               f"{exc.strerror or exc}") from None
    return folder / CALIBRATION_FILE


def load(folder: Path) -> Calibration | None:
    """The calibration in ``folder``; None when there is none; CalibrationError when broken."""
    path = folder / CALIBRATION_FILE
    if not path.is_file():
        return None
    try:
        rec = json.loads(path.read_text())
        flat = np.load(folder / FLAT_FILE, allow_pickle=False)
        ok = (flat.ndim == 3 and flat.shape[2] == 3 and flat.dtype == np.float32
              and math.isfinite(float(flat.sum())) and float(flat.min()) > 0)
        if not ok:
            raise ValueError("flat field has the wrong shape or values")
        return Calibration(
            flat=flat, created=float(rec["created_unix"]), source=str(rec["source"]),
            frame_size=(int(rec["frame_size"][0]), int(rec["frame_size"][1])),
            frames=int(rec["frames"]),
            background=tuple(float(v) for v in rec["background_rgb"]),  # type: ignore[arg-type]
            camera=dict(rec.get("camera") or {}),
        )
    except (OSError, ValueError, KeyError, TypeError, IndexError) as exc:
        raise CalibrationError(f"calibration in {folder} is unreadable ({exc}); run lgld-run "
                               "--calibrate again") from None


#: The state of a demo source, which needs no flat field (it has no vignetting or cast).
DEMO = CalibrationState("demo", "demo source, evenly lit by construction: no flat field needed")


def needs_calibration(source_name: str) -> bool:
    """False for the generated demo sources (``demo``, ``demo:cells`` ...): they are calibrated
    by construction; every camera, video or image folder needs one."""
    return not (source_name == "demo" or source_name.startswith("demo:"))


def assess(cal: Calibration | None, source: str, frame_size: tuple[int, int] | None,
           max_age_h: float, now: float | None = None) -> CalibrationState:
    """Whether ``cal`` applies to frames of ``frame_size`` (w, h) from ``source``."""
    if cal is None:
        return CalibrationState("missing", "no flat-field calibration: run lgld-run --calibrate "
                                "on an empty area of the slide")
    age_h = ((time.time() if now is None else now) - cal.created) / 3600
    if cal.source != source:
        return CalibrationState("stale", f"calibrated with {cal.source}, not {source}: "
                                "calibrate again", cal)
    if frame_size is not None and tuple(frame_size) != tuple(cal.frame_size):
        return CalibrationState("stale", f"calibrated at {cal.frame_size[0]}x{cal.frame_size[1]}"
                                f", frames are {frame_size[0]}x{frame_size[1]}: calibrate again",
                                cal)
    if max_age_h > 0 and age_h > max_age_h:
        return CalibrationState("stale", f"calibration is {age_h:.0f} h old (limit "
                                f"{max_age_h:g} h): calibrate again", cal)
    return CalibrationState("ok", f"flat-field calibrated {age_h:.1f} h ago", cal)


def lock_controls(metadata: dict[str, Any]) -> dict[str, Any]:
    """picamera2 controls that freeze the exposure and white balance picamera2 settled on."""
    controls: dict[str, Any] = {"AeEnable": False, "AwbEnable": False}
    for key in CAMERA_CONTROLS:
        if key in metadata:
            value = metadata[key]
            controls[key] = [float(v) for v in value] if key == "ColourGains" else (
                int(value) if key == "ExposureTime" else float(value))
    return controls
