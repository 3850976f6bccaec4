"""lgld-run configuration: TOML sections as dataclasses, CLI overrides, and TOML output.

The effective configuration is the defaults below, then the ``--config`` file, then the
command-line flags. ``lgld-run --print-config`` prints it as commented TOML that loads back
unchanged (deploy/lgld.toml is made from it), so section and key names are a stable interface.
"""

from __future__ import annotations

import json
import math
import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from lgld.runtime.core.untrusted import UntrustedError, check_text

#: [log] path meaning "the default": the state directory's log in cells mode, else no log.
LOG_AUTO = "auto"


class ConfigError(ValueError):
    """A configuration file or value is invalid (one-line reason)."""


def _f(default: Any, help: str) -> Any:  # noqa: A002 - "help" reads best in the tables below
    """A config field with its TOML comment."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class SourceSection:
    """[source]: where frames come from."""

    input: str = _f(
        "auto",
        "auto | picamera2 | picamera2:N | camera:N | video:PATH | images:DIR_OR_GLOB | demo\n"
        "| demo:all | demo:wbc | demo:cells | a network stream URL (rtsp://..., http://...).\n"
        "auto = the Raspberry Pi camera, else USB camera 0, else an error (never the demo).",
    )
    width: int = _f(1280, "Display (main stream) width in pixels.")
    height: int = _f(720, "Display (main stream) height in pixels.")
    fps: float = _f(30.0, "Requested camera frame rate (demo: generated frame rate).")
    lores_width: int = _f(640, "picamera2 only: low-resolution YUV420 stream fed to the model in\n"
                               "field mode (same field of view as the main stream).")
    lores_height: int = _f(360, "picamera2 only: low-resolution stream height.")
    timeout_s: float = _f(2.0, "Seconds to wait for a frame before the camera counts as lost.")
    retry_initial_s: float = _f(1.0, "A lost camera is reopened after this many seconds, doubling\n"
                                     "up to retry_max_s while it stays away.")
    retry_max_s: float = _f(30.0, "Longest wait between two reconnection attempts.")
    loop: bool = _f(False, "video:PATH only: start again at the end instead of stopping.")
    max_image_pixels: int = _f(40_000_000, "images:... only: an image whose header claims more\n"
                                           "pixels is skipped unread (a log line says so).")


@dataclass
class ModelSection:
    """[model]: which ONNX model runs and how."""

    path: str = _f("all", "all (ALL leukemia fields) | wbc5 (single white cells) | a .onnx path.")
    threads: int = _f(0, "ONNX Runtime threads; 0 = all cores but one (left for capture/encoding).")
    precision: str = _f("auto", "auto | fp32 | int8: the model's fp32 file or its INT8 version\n"
                                "(NAME.int8.onnx beside it); auto = INT8 where the CPU has int8\n"
                                "dot products (arm64 dotprod, x86 VNNI) and the INT8 file passed\n"
                                "its accuracy gate.")


@dataclass
class InferenceSection:
    """[inference]: what part of the frame is classified."""

    mode: str = _f("field", "field: classify the field of view (the ALL model is trained on whole\n"
                            "fields); roi: classify a square region, put one cell in it (WBC5);\n"
                            "cells: find, classify and count every white cell (WBC5, [cells]).")
    field_crop: str = _f("square", "field mode: square = the largest centred square (cells keep\n"
                                   "their shape); full = the whole frame, squashed to a square.")
    roi: list[int] = _f([], "roi mode: [x, y, w, h] in display pixels; [] = a centred square.")
    roi_size: float = _f(0.5, "roi mode without roi: side of the centred square, as a fraction of\n"
                              "the frame's shorter side.")
    frames: int = _f(0, "Stop after this many results (0 = run until stopped).")


@dataclass
class TrustSection:
    """[trust]: when a prediction is shown at all."""

    window: int = _f(8, "Average the class probabilities of the last `window` classified frames\n"
                        "(images:... sources classify each image on its own).")
    min_confidence: float = _f(0.6, "Below this averaged confidence the result is 'uncertain'.")
    min_focus: float = _f(6.0, "Focus gate: variance of the Laplacian of the classified region\n"
                               "(grey, 256 px, lightly smoothed); below it = 'out of focus'.\n"
                               "Sharp sample images score 10-60; defocused by 2 px at 224 px: 3-8.")
    dark_level: int = _f(25, "Grey level at or below which a pixel counts as dark.")
    bright_level: int = _f(250, "Grey level at or above which a pixel counts as clipped.")
    max_dark_fraction: float = _f(0.5, "More dark pixels than this fraction = 'too dark'.")
    max_bright_fraction: float = _f(0.5, "More clipped pixels than this fraction = 'too bright'.")


@dataclass
class CalibrationSection:
    """[calibration]: the flat-field calibration (lgld-run --calibrate)."""

    dir: str = _f("", "Folder of calibration.json and flatfield.npy; \"\" = $STATE_DIRECTORY (the\n"
                      "service's /var/lib/lgld), else ~/.local/state/lgld.")
    frames: int = _f(16, "Frames of an empty field of the slide that --calibrate averages.")
    max_age_h: float = _f(168.0, "A calibration older than this many hours is stale (0 = never).")
    apply: bool = _f(True, "Flat-field correct every frame with a valid calibration.")


@dataclass
class CellsSection:
    """[cells]: cell mode (--mode cells): white-cell detection, tracking, differential count."""

    diameter_px: str = _f("120,330", "White-cell diameter range MIN,MAX in frame pixels (120,330\n"
                                     "suits 640x480 at 100x), or auto: measured on the red cells.")
    framing: str = _f("red-cells", "What scales the crops the model sees: red-cells (the range,\n"
                                   "unless the measured red cells put the white cells more than\n"
                                   "1.35x off it: another objective or camera still gives crops\n"
                                   "framed like the training data) or range (the range alone).")
    max_cells: int = _f(24, "At most this many cells per frame (the largest); more = a warning.")
    nucleus_low: float = _f(0.30, "Nucleus stain (optical density unmixed, relative to the\n"
                                  "background) at which a pixel may belong to a nucleus ...")
    nucleus_high: float = _f(0.50, "... and which a nucleus must reach somewhere.")
    min_frames: int = _f(5, "A tracked cell is counted once, after it was seen whole in this many\n"
                            "classified frames.")
    min_confidence: float = _f(0.6, "Mean class probability below which a counted cell is\n"
                                    "'unclassified' (and a shown one 'uncertain').")
    max_speed: float = _f(0.5, "Fastest stage movement, in frame widths per second (motion gate).")
    max_missed: int = _f(8, "A track ends after this many frames without its cell.")
    target: int = _f(100, "Cells per differential count (100 or 200); then 'count complete'.")
    sample: str = _f("", "Free-text label of the sample, written with each count session.")
    resume: bool = _f(True, "On start, continue the log's last count session unless it ended\n"
                            "(target reached, a new count, --new-session); docs/cells.md.")
    crops_dir: str = _f("", "Folder of the counted cells' crops (lgld-run --crops); \"\" =\n"
                            "[http] snapshot_dir when set, else a crops/ folder beside the log.")
    domain_cells: int = _f(50, "The microscope check of each count session scores its first\n"
                               "this many counted cells against the model's training images\n"
                               "(validated / familiar / new microscope).")
    crop_budget_mb: float = _f(500.0, "Disk budget of the counted cells' crops (saved in\n"
                                      "crops_dir): past it the oldest unreviewed cells'\n"
                                      "crops go first, reviewed ones last; 0 = no limit.")

    def diameter_range(self) -> tuple[float, float] | None:
        """(MIN, MAX) in pixels, or None for auto; ConfigError when malformed."""
        text = self.diameter_px.strip().lower()
        if text == "auto":
            return None
        try:
            lo, hi = (float(v) for v in text.replace(" ", "").split(","))
        except ValueError:
            raise ConfigError(f"cells.diameter_px must be MIN,MAX or auto, not {text!r}") from None
        if not 4 <= lo <= hi:
            raise ConfigError("cells.diameter_px needs 4 <= MIN <= MAX")
        return lo, hi


@dataclass
class HttpSection:
    """[http]: the live page, MJPEG stream, snapshots, JSON API and Prometheus metrics."""

    listen: str = _f("", "HOST:PORT (or PORT) to serve on; \"\" = off. A bare port binds\n"
                         "127.0.0.1 only. Any other address opens the page to the network:\n"
                         "set token_file too (docs/deploy.md, Opening the page to the LAN).")
    allowed_hosts: str = _f("", "Extra names the page may be reached by (comma-separated), for\n"
                                "the Host header check; localhost, this machine's names and the\n"
                                "address a request arrives on are always allowed.")
    token_file: str = _f("", "File holding an access token (16+ characters); \"\" = none.\n"
                             "$LGLD_HTTP_TOKEN overrides it. With a token every request but\n"
                             "/healthz needs it (Authorization: Bearer, or ?token= once).")
    max_streams: int = _f(4, "Concurrent /stream.mjpg viewers; more get 503.")
    jpeg_quality: int = _f(80, "JPEG quality of the stream and snapshots (1-100).")
    stream_max_fps: float = _f(30.0, "Upper bound on MJPEG frames per second for each viewer.")
    snapshot_dir: str = _f("", "Folder where POST /api/snapshot saves the raw frame, the overlay\n"
                               "and the result JSON; \"\" = saving off (GET /snapshot.* works).")
    snapshot_min_interval_s: float = _f(2.0, "Snapshots closer together than this are refused\n"
                                             "(429).")
    snapshot_max_mb: int = _f(500, "Size cap of snapshot_dir: the oldest snapshots are removed\n"
                                   "(and the log says so) to stay under it.")


@dataclass
class LogSection:
    """[log]: the JSONL result log."""

    path: str = _f(LOG_AUTO, "JSONL result log, one line per result; auto = in cells mode\n"
                             "<state dir>/counts.jsonl (a count is kept and resumed), in the\n"
                             "other modes off; \"\" = off (lgld-run --no-log).")
    max_bytes: int = _f(10_000_000, "Rotate when the log would grow past this size (bytes).")
    backups: int = _f(5, "Rotated logs kept: path.1 (newest) ... path.N.")
    fsync_interval_s: float = _f(5.0, "Every line reaches the OS at once; it is also forced to\n"
                                      "disk (fsync) at most this many seconds apart and on exit.")


@dataclass
class DisplaySection:
    """[display]: the local preview window."""

    preview: str = _f("auto", "auto: a window only with a display, outside systemd, and an OpenCV\n"
                              "with GUI support (not opencv-python-headless); on; off.")


@dataclass
class RunConfig:
    """The whole lgld-run configuration."""

    source: SourceSection = field(default_factory=SourceSection)
    model: ModelSection = field(default_factory=ModelSection)
    inference: InferenceSection = field(default_factory=InferenceSection)
    trust: TrustSection = field(default_factory=TrustSection)
    calibration: CalibrationSection = field(default_factory=CalibrationSection)
    http: HttpSection = field(default_factory=HttpSection)
    log: LogSection = field(default_factory=LogSection)
    display: DisplaySection = field(default_factory=DisplaySection)
    cells: CellsSection = field(default_factory=CellsSection)

    def validate(self) -> RunConfig:
        """Raise ConfigError for the first invalid value; return self."""
        s, i, t, h = self.source, self.inference, self.trust, self.http
        _check(16 <= s.width <= MAX_SIDE and 16 <= s.height <= MAX_SIDE,
               f"source.width/height must be 16-{MAX_SIDE}")
        _check(16 <= s.lores_width <= MAX_SIDE and 16 <= s.lores_height <= MAX_SIDE,
               f"source.lores_width/lores_height must be 16-{MAX_SIDE}")
        _check(MIN_FPS <= s.fps <= MAX_FPS, f"source.fps must be {MIN_FPS:g}-{MAX_FPS:g}")
        _check(0 < s.timeout_s <= MAX_WAIT_S, f"source.timeout_s must be in (0, {MAX_WAIT_S:g}]")
        _check(0 < s.retry_initial_s <= s.retry_max_s <= MAX_WAIT_S,
               f"need 0 < retry_initial_s <= retry_max_s <= {MAX_WAIT_S:g}")
        _check(1 <= s.max_image_pixels <= 1_000_000_000,
               "source.max_image_pixels must be 1-1000000000")
        _check(0 <= self.model.threads <= max_threads(),
               f"model.threads must be 0 (automatic) to {max_threads()}")
        _check(self.model.precision in ("auto", "fp32", "int8"),
               f"model.precision must be auto, fp32 or int8, not {self.model.precision!r}")
        _check(i.mode in ("field", "roi", "cells"),
               f"inference.mode must be field, roi or cells, not {i.mode!r}")
        c = self.cells
        c.diameter_range()
        _check(c.framing in ("red-cells", "range"), "cells.framing must be red-cells or range")
        try:
            check_text(c.sample, "cells.sample (--sample)")
        except UntrustedError as exc:
            raise ConfigError(str(exc)) from None
        _check(c.max_cells >= 1, "cells.max_cells must be >= 1")
        _check(0 < c.nucleus_low <= c.nucleus_high, "need 0 < cells.nucleus_low <= nucleus_high")
        _check(c.min_frames >= 1, "cells.min_frames must be >= 1")
        _check(0 <= c.min_confidence <= 1, "cells.min_confidence must be in [0, 1]")
        _check(c.max_speed > 0, "cells.max_speed must be > 0")
        _check(c.max_missed >= 0, "cells.max_missed must be >= 0")
        _check(c.target >= 1, "cells.target must be >= 1")
        _check(c.crop_budget_mb >= 0, "cells.crop_budget_mb must be >= 0")
        _check(i.field_crop in ("square", "full"), "inference.field_crop must be square or full")
        _check(len(i.roi) in (0, 4), "inference.roi must be [] or [x, y, w, h]")
        if i.roi:
            _check(i.roi[0] >= 0 and i.roi[1] >= 0, "inference.roi x and y must be >= 0")
            _check(i.roi[2] >= 8 and i.roi[3] >= 8, "inference.roi w and h must be >= 8 pixels")
        _check(0 < i.roi_size <= 1, "inference.roi_size must be in (0, 1]")
        _check(i.frames >= 0, "inference.frames must be >= 0")
        _check(1 <= t.window <= 1000, "trust.window must be 1-1000")
        _check(0 <= t.min_confidence <= 1, "trust.min_confidence must be in [0, 1]")
        _check(t.min_focus >= 0, "trust.min_focus must be >= 0")
        _check(0 <= t.dark_level < t.bright_level <= 255,
               "need 0 <= trust.dark_level < trust.bright_level <= 255")
        for name in ("max_dark_fraction", "max_bright_fraction"):
            _check(0 < getattr(t, name) <= 1, f"trust.{name} must be in (0, 1]")
        _check(1 <= self.calibration.frames <= 1000, "calibration.frames must be 1-1000")
        _check(self.calibration.max_age_h >= 0, "calibration.max_age_h must be >= 0")
        _check(1 <= self.http.jpeg_quality <= 100, "http.jpeg_quality must be 1-100")
        _check(MIN_FPS <= h.stream_max_fps <= MAX_FPS,
               f"http.stream_max_fps must be {MIN_FPS:g}-{MAX_FPS:g}")
        if h.listen:
            parse_listen(h.listen)
        allowed_hosts(h.allowed_hosts)
        _check(1 <= h.max_streams <= 64, "http.max_streams must be 1-64")
        _check(0 <= h.snapshot_min_interval_s <= MAX_WAIT_S,
               f"http.snapshot_min_interval_s must be 0-{MAX_WAIT_S:g}")
        _check(1 <= h.snapshot_max_mb <= 1_000_000, "http.snapshot_max_mb must be 1-1000000")
        _check(1024 <= self.log.max_bytes <= 1 << 40, "log.max_bytes must be 1024 to 2**40")
        _check(0 <= self.log.backups <= 1000, "log.backups must be 0-1000")
        _check(0 <= self.log.fsync_interval_s <= MAX_WAIT_S,
               f"log.fsync_interval_s must be 0-{MAX_WAIT_S:g}")
        _check(self.display.preview in ("auto", "on", "off"), "display.preview: auto, on or off")
        return self


MAX_SIDE = 16384  # pixels: above any camera the runtime drives; 1e8 would need 536 GiB
MIN_FPS, MAX_FPS = 0.1, 1000.0  # a 1e-300 fps makes 1/fps overflow
MAX_WAIT_S = 3600.0  # longest timeout, retry, fsync or snapshot interval


def state_dir() -> Path:
    """lgld's state directory (counts, crops, calibration): systemd's $STATE_DIRECTORY (the
    service's /var/lib/lgld), else $XDG_STATE_HOME/lgld, else ~/.local/state/lgld."""
    if os.environ.get("STATE_DIRECTORY"):
        return Path(os.environ["STATE_DIRECTORY"].split(":")[0])
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "lgld"


def output_paths(cfg: RunConfig) -> tuple[str, str]:
    """(log path, crops folder) a run writes, "" for none: ``log.path = auto`` is the state
    directory's counts.jsonl in cells mode (no log otherwise); crops only in cells mode."""
    log_path = cfg.log.path
    if log_path == LOG_AUTO:
        log_path = str(state_dir() / "counts.jsonl") if cfg.inference.mode == "cells" else ""
    if cfg.inference.mode != "cells":
        return log_path, ""
    crops = cfg.cells.crops_dir or cfg.http.snapshot_dir
    if not crops and log_path:
        crops = str(Path(log_path).expanduser().parent / "crops")
    return log_path, crops


def max_threads() -> int:
    """Most ONNX Runtime threads accepted: 4 per core (100000 made the session hang)."""
    return 4 * (os.cpu_count() or 1)


def allowed_hosts(text: str) -> list[str]:
    """[http] allowed_hosts "a, b" -> ["a", "b"] (lower case); ConfigError for a bad name."""
    names = [n.strip().lower() for n in text.split(",") if n.strip()]
    for name in names:
        _check(all(c.isalnum() or c in ".-_:[]" for c in name),
               f"http.allowed_hosts: {name!r} is not a host name or address")
    return names


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def parse_listen(text: str) -> tuple[str, int]:
    """"PORT", "HOST:PORT", ":PORT" or "[v6]:PORT" -> (host, port); default host 127.0.0.1."""
    text = text.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host, port_text = "", text
    host = host.strip("[]") or "127.0.0.1"
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"http address must be HOST:PORT or PORT, got {text!r}") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"http port must be 0-65535, got {port}")
    return host, port


def parse_roi(text: str) -> list[int]:
    """"x,y,w,h" -> [x, y, w, h]."""
    try:
        values = [int(v) for v in text.replace(" ", "").split(",")]
    except ValueError:
        values = []
    if len(values) != 4:
        raise ConfigError(f"--roi needs x,y,w,h in pixels, got {text!r}")
    return values


# ---------------------------------------------------------------------------------------------
# TOML in and out


def _sections(cfg: RunConfig) -> list[tuple[str, Any]]:
    return [(f.name, getattr(cfg, f.name)) for f in fields(cfg)]


def _coerce(section: str, key: str, default: Any, value: Any) -> Any:
    where = f"[{section}] {key}"
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer")
        return value
    if isinstance(default, float):
        number = isinstance(value, int | float) and not isinstance(value, bool)
        if not number or not math.isfinite(value):
            raise ConfigError(f"{where} must be a number")
        return float(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string")
        return value
    if isinstance(default, list):
        if not isinstance(value, list) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in value
        ):
            raise ConfigError(f"{where} must be a list of integers")
        return list(value)
    raise ConfigError(f"{where}: unsupported type")  # pragma: no cover


def apply_mapping(cfg: RunConfig, data: dict[str, Any], origin: str = "config") -> RunConfig:
    """Overlay a parsed TOML mapping onto cfg; unknown sections or keys are errors (typos)."""
    known = dict(_sections(cfg))
    for section, values in data.items():
        if section not in known:
            raise ConfigError(f"{origin}: unknown section [{section}] (known: {', '.join(known)})")
        if not isinstance(values, dict):
            raise ConfigError(f"{origin}: [{section}] must be a table")
        target = known[section]
        names = {f.name for f in fields(target)}
        for key, value in values.items():
            if key not in names:
                raise ConfigError(f"{origin}: unknown key {key!r} in [{section}]")
            setattr(target, key, _coerce(section, key, getattr(target, key), value))
    return cfg


def load_config(path: str | Path | None = None) -> RunConfig:
    """Defaults, overlaid with the TOML file at path (if given)."""
    cfg = RunConfig()
    if path is None:
        return cfg
    path = Path(path)
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8 text (byte {exc.start}); TOML must be UTF-8"
                          ) from None
    return apply_mapping(cfg, data, origin=str(path))


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} as TOML")  # pragma: no cover


def to_toml(cfg: RunConfig) -> str:
    """The configuration as commented TOML (tomllib reads it back to the same values)."""
    lines = [
        "# lgld-run configuration (lgld-run --print-config). Use it with --config FILE;",
        "# command-line flags override the values here.",
    ]
    for name, section in _sections(cfg):
        title = (type(section).__doc__ or "").strip().split(": ", 1)[-1]
        lines += ["", f"# {title[:1].upper()}{title[1:]}", f"[{name}]"]
        for f in fields(section):
            lines += [f"# {line}" for line in f.metadata.get("help", "").splitlines()]
            lines.append(f"{f.name} = {_toml_value(getattr(section, f.name))}")
    return "\n".join(lines) + "\n"
