"""Flat-field calibration: capture and checks, storage and staleness, correction of frames,
picamera2 exposure/white-balance locking, and how a run reports it (page data, /healthz)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import FakeClassifier, install_fake_picamera2, sample_image

from lgld.runtime import calibration, cli
from lgld.runtime.config import CalibrationSection
from lgld.runtime.pipeline import Pipeline, PipelineSettings
from lgld.runtime.sources.base import Frame

W, H = 320, 240


def vignetted(image: np.ndarray, falloff: float = 0.35, seed: int = 0) -> np.ndarray:
    """A BGR image under a lamp whose light falls off towards the corners (linear light),
    plus a little sensor noise."""
    h, w = image.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    r2 = ((xx - w / 2) / (w / 2)) ** 2 + ((yy - h / 2) / (h / 2)) ** 2
    light = 1.0 - falloff * r2 / 2  # relative to the centre
    img = 255.0 * (light[..., None] * (image / 255.0) ** 2.2) ** (1 / 2.2)
    img += np.random.default_rng(seed).normal(0, 1.0, img.shape)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def vignetted_blank(w: int = W, h: int = H, seed: int = 0) -> np.ndarray:
    """An empty, lit, tinted field (BGR) with vignetting."""
    return vignetted(np.full((h, w, 3), (200, 215, 235), np.uint8), seed=seed)


class ListSource:
    """A live source that plays the given frames (then None), named like a camera."""

    batch, live = False, True

    def __init__(self, images: list[np.ndarray], name: str = "camera:0") -> None:
        self.images, self.name, self.i = images, name, 0

    def read(self):
        if self.i >= len(self.images):
            return None
        self.i += 1
        return Frame(self.images[self.i - 1], self.i, time.time(), time.monotonic())


def test_a_blank_field_calibration_undoes_vignetting(tmp_path: Path) -> None:
    frames = [vignetted_blank(seed=i) for i in range(calibration.SETTLE_FRAMES + 4)]
    cal = calibration.capture(ListSource(frames), 4)
    assert cal.frames == 4 and cal.frame_size == (W, H)
    assert 0.68 < cal.vignetting() < 0.8  # the corners get ~73% of the centre's light
    raw = vignetted_blank(seed=99)
    corrected = cal.correct(raw)
    grey = lambda im: cv2.cvtColor(im, cv2.COLOR_BGR2GRAY).astype(float)  # noqa: E731
    corner_drop = lambda im: grey(im)[H // 2 - 5 : H // 2 + 5, W // 2 - 5 : W // 2 + 5].mean() \
        - grey(im)[:10, :10].mean()  # noqa: E731
    assert corner_drop(raw) > 30 and abs(corner_drop(corrected)) < 3
    # the overall colour stays (the model's own illumination correction handles it)
    assert np.abs(corrected.reshape(-1, 3).mean(0) - raw.reshape(-1, 3).mean(0)).max() < 6


def test_correcting_a_crop_uses_the_flat_field_at_its_place_in_the_frame() -> None:
    cal = calibration.capture(ListSource([vignetted_blank(seed=i) for i in range(9)]), 4)
    frame = vignetted_blank(seed=50)
    region = (10, 20, 100, 80)
    whole = cal.correct(frame)[20:100, 10:110]
    crop = cal.correct(frame[20:100, 10:110], region, frame.shape)
    assert np.abs(whole.astype(int) - crop).max() <= 1
    lores = cv2.resize(frame, (W // 2, H // 2), interpolation=cv2.INTER_AREA)[10:50, 5:55]
    assert cal.correct(lores, region, frame.shape).shape == lores.shape


@pytest.mark.parametrize(("image", "words"), [
    (lambda: sample_image("all-early"), "not a blank field"),
    (lambda: np.full((H, W, 3), 12, np.uint8), "too dark"),
    (lambda: np.full((H, W, 3), 255, np.uint8), "overexposed"),
])
def test_a_frame_that_is_not_a_lit_blank_field_is_refused_in_one_line(image, words) -> None:
    frames = [vignetted_blank(seed=i) for i in range(calibration.SETTLE_FRAMES + 2)] + [image()]
    with pytest.raises(calibration.CalibrationError) as info:
        calibration.capture(ListSource(frames), 4)
    message = str(info.value)
    assert words in message and "calibration frame 3 from camera:0" in message
    assert "\n" not in message


def test_saved_calibration_loads_back_and_goes_stale(tmp_path: Path) -> None:
    cal = calibration.capture(ListSource([vignetted_blank(seed=i) for i in range(9)]), 4)
    calibration.save(cal, tmp_path)
    back = calibration.load(tmp_path)
    assert back is not None and np.array_equal(back.flat, cal.flat)
    assert back.record() == cal.record()
    assert calibration.assess(back, "camera:0", (W, H), 168).state == "ok"
    later = cal.created + 200 * 3600
    assert calibration.assess(back, "camera:0", (W, H), 168, now=later).state == "stale"
    assert calibration.assess(back, "camera:0", (W, H), 0, now=later).state == "ok"
    assert calibration.assess(back, "picamera2", (W, H), 168).state == "stale"
    assert calibration.assess(back, "camera:0", (640, 480), 168).state == "stale"
    missing = calibration.assess(calibration.load(tmp_path / "none"), "camera:0", None, 168)
    assert missing.state == "missing" and "--calibrate" in missing.message
    (tmp_path / calibration.FLAT_FILE).write_bytes(b"not numpy")
    with pytest.raises(calibration.CalibrationError, match="unreadable"):
        calibration.load(tmp_path)


def test_state_dir_is_the_config_then_systemd_then_xdg(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/lgld")
    assert calibration.state_dir(CalibrationSection(dir=str(tmp_path))) == tmp_path
    assert calibration.state_dir(CalibrationSection()) == Path("/var/lib/lgld")
    monkeypatch.delenv("STATE_DIRECTORY")
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert calibration.state_dir(CalibrationSection()) == tmp_path / "lgld"


def test_pipeline_flat_fields_frames_when_the_calibration_is_ok() -> None:
    cal = calibration.capture(ListSource([vignetted_blank(seed=i) for i in range(9)]), 4)
    seen: list[np.ndarray] = []

    class Recorder(FakeClassifier):
        def prepare(self, images):
            seen.extend(images)
            return super().prepare(images)

    sharp = cv2.resize(sample_image("all-early"), (W, H), interpolation=cv2.INTER_AREA)
    frame = Frame(vignetted(sharp, seed=7), 0, time.time(), time.monotonic())
    settings = PipelineSettings(mode="roi", roi_size=0.9)
    states = {"ok": calibration.CalibrationState("ok", "", cal),
              "stale": calibration.CalibrationState("stale", "old", cal)}
    for name, state in states.items():
        pipe = Pipeline(ListSource([]), Recorder(), settings, calibration=state)
        pipe.prepare(frame)
        assert pipe.snapshot().calibration["state"] == name
    corrected, untouched = seen
    x, y, w, h = pipe.region_for(frame.image.shape)
    original = sharp[y : y + h, x : x + w].astype(float)
    assert np.array_equal(untouched, frame.image[y : y + h, x : x + w])
    # flat-fielded, the crop is lit evenly: its ratio to the original is nearly constant
    spread = lambda im: (im.astype(float).mean(2) / (original.mean(2) + 1)).std()  # noqa: E731
    assert spread(corrected) < spread(untouched) / 3


def _blank_camera(monkeypatch):
    cam_cls = install_fake_picamera2(monkeypatch)
    cam_cls.scene = staticmethod(lambda w, h, value: vignetted_blank(w, h, seed=value))
    return cam_cls


def test_calibrate_on_picamera2_locks_exposure_and_white_balance(monkeypatch, tmp_path,
                                                                 capsys) -> None:
    cam_cls = _blank_camera(monkeypatch)
    args = ["--source", "picamera2", "--calibrate", "--config", _config(tmp_path)]
    assert cli.main(args) == 0
    saved = json.loads((tmp_path / "state" / calibration.CALIBRATION_FILE).read_text())
    assert saved["source"] == "picamera2" and saved["frame_size"] == [W, H]
    assert saved["camera"] == {"AeEnable": False, "AwbEnable": False, "ExposureTime": 16600,
                               "AnalogueGain": 2.5, "ColourGains": [1.9, 1.6]}
    assert "calibrated picamera2" in capsys.readouterr().err
    assert cam_cls.instances[-1].closed
    # the next run applies the locked controls right after starting the camera, and says so
    with monkeypatch.context():
        state = cli._calibration_state(cli.effective_config(cli.build_parser().parse_args(
            ["--source", "picamera2", "--config", _config(tmp_path)])), _open_picamera())
    assert state.state == "ok"
    cam = cam_cls.instances[-1]
    assert cam.controls["AeEnable"] is False and cam.controls["ExposureTime"] == 16600
    assert cam.metadata()["ColourGains"] == (1.9, 1.6)
    assert "camera locked: AeEnable=False AwbEnable=False ExposureTime=16600" in \
        cli._calibration_text(state)


def _open_picamera():
    from lgld.runtime.sources.picamera import PiCamera2Source

    source = PiCamera2Source(0, (W, H), (W // 2, H // 2))
    source.open()
    return source


def _config(tmp_path: Path) -> str:
    path = tmp_path / "lgld.toml"
    path.write_text(f'[source]\nwidth = {W}\nheight = {H}\nlores_width = {W // 2}\n'
                    f'lores_height = {H // 2}\n[calibration]\ndir = "{tmp_path / "state"}"\n'
                    "frames = 4\n")
    return str(path)


def test_calibrate_on_the_demo_source_says_there_is_nothing_to_do(tmp_path, capsys) -> None:
    assert cli.main(["--source", "demo", "--calibrate", "--config", _config(tmp_path)]) == 0
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert "evenly lit by construction" in err and "nothing to do" in err
    assert not (tmp_path / "state" / calibration.CALIBRATION_FILE).exists()


def test_the_demo_sources_are_calibrated_by_construction_and_cameras_are_not(tmp_path) -> None:
    cfg = cli.effective_config(cli.build_parser().parse_args(
        ["--source", "demo", "--config", _config(tmp_path)]))
    for name in ("demo", "demo:all", "demo:wbc", "demo:cells"):
        state = cli._calibration_state(cfg, ListSource([], name=name))
        assert state.state == "demo" and "run lgld-run --calibrate" not in state.message
    for name in ("camera:0", "picamera2", "video:slide.mp4", "demonstration.mp4"):
        assert cli._calibration_state(cfg, ListSource([], name=name)).state == "missing"


def test_page_data_and_healthz_say_when_the_calibration_is_missing(tiny_model, tmp_path) -> None:
    from lgld.runtime.render import Renderer
    from lgld.runtime.web import App

    cfg = cli.effective_config(cli.build_parser().parse_args(
        ["--source", "demo", "--config", _config(tmp_path)]))
    state = cli._calibration_state(cfg, ListSource([], name="camera:0"))
    assert state.state == "missing"
    pipe = Pipeline(ListSource([], name="camera:0"), FakeClassifier(), PipelineSettings(),
                    calibration=state)
    app = App(pipe, Renderer(pipe))
    assert app.calibration() == {"state": "missing", "message": state.message}
    assert app.latest()["calibration"]["state"] == "missing"
