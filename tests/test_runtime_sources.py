"""Frame sources through fakes that respect the real APIs (picamera2, cv2.VideoCapture)."""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import ASSETS, install_fake_picamera2, sample_image, write_video

from lgld.runtime.config import SourceSection
from lgld.runtime.sources import (
    CameraBusy,
    CameraLost,
    CameraNotFound,
    SourceError,
    open_source,
    opencv,
    probe,
)
from lgld.runtime.sources.demo import DemoSource
from lgld.runtime.sources.images import ImageFolderSource
from lgld.runtime.sources.opencv import OpenCVSource
from lgld.runtime.sources.picamera import PiCamera2Source, i420_to_bgr


def small_cfg(**kw) -> SourceSection:
    cfg = SourceSection(width=320, height=240, lores_width=160, lores_height=120, timeout_s=0.1)
    for k, v in kw.items():
        setattr(cfg, k, v)
    return cfg


# -- picamera2 ---------------------------------------------------------------------------------


def test_picamera2_frames_are_bgr_with_a_lores_copy_and_no_request_leaks(monkeypatch):
    cam_cls = install_fake_picamera2(monkeypatch)
    with open_source("picamera2", small_cfg()) as src:
        assert isinstance(src, PiCamera2Source)
        frames = [src.read() for _ in range(3)]
        cam = cam_cls.instances[0]
        assert cam.config["main"] == {"format": "RGB888", "size": (320, 240)}
        assert cam.config["lores"] == {"format": "YUV420", "size": (160, 120)}
        assert not cam.outstanding, "every request must be released"
    assert cam.closed and not cam.started
    assert [f.index for f in frames] == [0, 1, 2]
    expected = cam_cls.scene(320, 240, 1)
    first = frames[0]
    assert first.image.shape == (240, 320, 3) and first.image.dtype == np.uint8
    # RGB888 is [B, G, R] in memory: used as is, the frame counter sits in the blue channel
    assert tuple(first.image[0, 0]) == (1, 0, 255)
    assert np.array_equal(first.image, expected)
    # the lores copy (padded-stride I420) decodes to the same picture at half size
    small = cv2.resize(expected, (160, 120), interpolation=cv2.INTER_AREA)
    assert first.lores.shape == (120, 160, 3)
    assert np.abs(first.lores[4:, 4:].astype(int) - small[4:, 4:]).mean() < 6


def test_i420_with_and_without_stride_padding():
    bgr = cv2.resize(sample_image("wbc5-mono"), (96, 64))
    i420 = cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420)
    direct = i420_to_bgr(i420, 96, 64)
    stride = 128
    flat = i420.reshape(-1)
    padded = np.zeros((96, stride), np.uint8).reshape(-1)
    for r in range(64):
        padded[r * stride : r * stride + 96] = flat[r * 96 : (r + 1) * 96]
    for plane in range(2):
        src0 = 96 * 64 + plane * 48 * 32
        dst0 = 64 * stride + plane * 32 * (stride // 2)
        for r in range(32):
            padded[dst0 + r * 64 : dst0 + r * 64 + 48] = flat[src0 + r * 48 : src0 + (r + 1) * 48]
    assert np.array_equal(i420_to_bgr(padded.reshape(96, stride), 96, 64), direct)


def test_picamera2_timeout_reuses_the_pending_job_and_leaks_nothing(monkeypatch):
    cam_cls = install_fake_picamera2(monkeypatch)
    cam_cls.stall_plan = [2]
    src = open_source("picamera2", small_cfg())
    cam = cam_cls.instances[0]
    src.read(), src.read()
    with pytest.raises(CameraLost, match="no frame within 0.1 s"):
        src.read()
    with pytest.raises(CameraLost):
        src.read()
    assert cam.jobs == 3, "a timed-out capture must be waited on again, not queued anew"
    cam.stall_after = None  # the camera recovers: the pending job gets the next frame
    frame = src.read()
    assert frame.index == 2 and cam.jobs == 3
    src.close()
    assert not cam.outstanding


def test_picamera2_no_camera_busy_and_missing_module(monkeypatch):
    install_fake_picamera2(monkeypatch, cameras=[])
    with pytest.raises(CameraNotFound, match="no Raspberry Pi camera found"):
        open_source("picamera2", small_cfg())
    install_fake_picamera2(monkeypatch)
    with pytest.raises(CameraNotFound, match="camera 1 not found"):
        open_source("picamera2:1", small_cfg())
    install_fake_picamera2(monkeypatch, busy=True)
    with pytest.raises(CameraBusy, match="busy"):
        open_source("picamera2", small_cfg())
    monkeypatch.setitem(sys.modules, "picamera2", None)  # import fails
    with pytest.raises(SourceError, match="picamera2 is not installed"):
        open_source("picamera2", small_cfg())


def test_picamera2_init_failure_is_busy_only_when_its_cause_says_so(monkeypatch):
    # picamera2 hides every failure of Picamera2() behind the same generic message
    denied = PermissionError(13, "Permission denied", "/dev/dma_heap/linux,cma")
    install_fake_picamera2(monkeypatch, init_error=denied)
    with pytest.raises(SourceError) as err:
        open_source("picamera2", small_cfg())
    assert not isinstance(err.value, CameraBusy) and "busy" not in str(err.value)
    assert "Permission denied: '/dev/dma_heap/linux,cma'" in str(err.value)
    install_fake_picamera2(monkeypatch, init_error=RuntimeError("did not complete"))
    with pytest.raises(SourceError) as err:
        open_source("picamera2", small_cfg())
    message = str(err.value)
    assert not isinstance(err.value, CameraBusy) and message.startswith("cannot open")
    assert "likely causes: another program holds it" in message and "/dev/dma_heap" in message


def test_auto_prefers_picamera2_then_camera0_and_never_the_demo(monkeypatch, tmp_path):
    install_fake_picamera2(monkeypatch)
    with open_source("auto", small_cfg()) as src:
        assert isinstance(src, PiCamera2Source)
    monkeypatch.setitem(sys.modules, "picamera2", None)
    monkeypatch.setattr(opencv, "camera_device_exists", lambda n: False)
    with pytest.raises(CameraNotFound, match=r"no camera found \(use --source demo"):
        open_source("auto", small_cfg())
    # camera 0 present: auto opens it through cv2.VideoCapture
    video = write_video(tmp_path / "cam.avi", 3)
    monkeypatch.setattr(opencv, "camera_device_exists", lambda n: n == 0)
    real = cv2.VideoCapture
    opened = []

    def fake_capture(target, *args):
        opened.append(target)
        return real(str(video))

    monkeypatch.setattr(cv2, "VideoCapture", fake_capture)
    with open_source("auto", small_cfg()) as src:
        assert isinstance(src, OpenCVSource) and src.name == "camera:0"
        assert src.read().image.shape == (48, 64, 3)
    assert opened == [0]


# -- OpenCV --------------------------------------------------------------------------------------


def test_video_file_plays_every_frame_then_ends(tmp_path):
    video = write_video(tmp_path / "clip.avi", 5)
    with open_source(f"video:{video}", small_cfg()) as src:
        frames = []
        while (frame := src.read()) is not None:
            frames.append(frame)
    assert len(frames) == 5 and frames[0].image.shape == (48, 64, 3)
    assert not src.live and src.fps == pytest.approx(50.0)


def test_video_loops_when_asked(tmp_path):
    video = write_video(tmp_path / "clip.avi", 3)
    with open_source(f"video:{video}", small_cfg(loop=True)) as src:
        assert all(src.read() is not None for _ in range(7))


def test_bad_video_and_camera_errors(tmp_path, monkeypatch):
    with pytest.raises(SourceError, match="video file not found"):
        open_source(f"video:{tmp_path / 'none.avi'}", small_cfg())
    junk = tmp_path / "junk.avi"
    junk.write_bytes(b"not a video at all" * 10)
    with pytest.raises(SourceError, match="cannot decode video"):
        src = open_source(f"video:{junk}", small_cfg())
        src.read()
    monkeypatch.setattr(opencv, "camera_device_exists", lambda n: False)
    with pytest.raises(CameraNotFound, match="camera 3 not found"):
        open_source("camera:3", small_cfg())
    with pytest.raises(SourceError, match="unknown source"):
        open_source("webcam", small_cfg())


def test_usb_camera_that_stops_delivering_is_lost_not_ended(tmp_path, monkeypatch):
    video = write_video(tmp_path / "cam.avi", 3)  # open() grabs one frame as a probe
    real = cv2.VideoCapture
    monkeypatch.setattr(opencv, "camera_device_exists", lambda n: True)
    monkeypatch.setattr(cv2, "VideoCapture", lambda target, *a: real(str(video)))
    with open_source("camera:1", small_cfg()) as src:
        assert src.live and src.read() is not None and src.read() is not None
        with pytest.raises(CameraLost, match="stopped delivering"):
            src.read()


# -- images and demo -----------------------------------------------------------------------------


def test_image_folder_is_a_sorted_batch_and_skips_unreadable_files(tmp_path, caplog):
    for name in ("b", "a", "c"):
        cv2.imwrite(str(tmp_path / f"{name}.png"), sample_image("all-pro"))
    (tmp_path / "d.jpg").write_bytes(b"broken")
    (tmp_path / "notes.txt").write_text("not an image")
    with open_source(f"images:{tmp_path}", small_cfg()) as src:
        assert src.batch and not src.live
        names = []
        while (frame := src.read()) is not None:
            names.append(Path(frame.name).name)
    assert names == ["a.png", "b.png", "c.png"] and src.skipped == 1
    assert "cannot decode image" in caplog.text
    glob_src = ImageFolderSource(str(tmp_path / "[ab].png"))
    glob_src.open()
    assert [p.name for p in glob_src.files] == ["a.png", "b.png"]
    with pytest.raises(SourceError, match="no images found"):
        open_source(f"images:{tmp_path / 'empty' / '*.jpg'}", small_cfg())


def test_demo_is_reproducible_moves_and_drifts_out_of_focus():
    demo = DemoSource("all", size=(320, 180), fps=30, realtime=False)
    demo.open()
    a, b = demo.render(0.5, 0), demo.render(0.5, 0)
    assert np.array_equal(a, b) and a.shape == (180, 320, 3)
    assert np.abs(demo.render(3.8).astype(int) - a).mean() > 10  # the stage has moved
    sharp_t = 0.0
    blurred_t = next(t / 10 for t in range(200) if demo.blur_sigma(t / 10) > 2.0)
    from lgld.runtime.trust import focus_measure

    assert focus_measure(demo.render(blurred_t)) < focus_measure(demo.render(sharp_t)) / 3
    with pytest.raises(SourceError, match="unknown demo scene"):
        DemoSource("nope")
    wbc = open_source("demo:wbc", small_cfg(), roi_size=0.5)
    assert wbc.read().image.shape == (240, 320, 3) and wbc.name == "demo:wbc"


@pytest.mark.parametrize("spec", ["bogus", "video:", "camera:-1", "picamera2:x", "images:"])
def test_the_doctor_and_the_run_reject_a_bad_spec_with_the_same_words(spec):
    with pytest.raises(SourceError) as err:
        open_source(spec, small_cfg())
    assert probe(spec) == (False, str(err.value))


def test_the_doctor_probes_every_backend_without_opening_a_camera(tmp_path):
    cv2.imwrite(str(tmp_path / "a.png"), sample_image())
    assert probe(f"images:{tmp_path}") == (True, f"{tmp_path}: 1 image(s)")
    cells = len(list(ASSETS.glob("wbc5-*.jpg")))
    assert probe("demo:wbc") == (True, f"demo: {cells} bundled sample images")
    assert probe("rtsp://cam/stream")[0] is None
    assert probe("video:/nonexistent.mp4") == (False, "/nonexistent.mp4: cannot read")
