"""Fixtures and helpers shared by the tests (fixtures are found by pytest; helpers are imported
with ``from conftest import ...``).

* ``tiny_model``: a small, untrained LGLD-Net (4 classes, 64 px) exported to ONNX once per
  session, with lgld metadata. Uses ``lgld.export.export_model`` when it is available, else
  ``torch.onnx.export`` plus metadata written with the onnx package.
* ``FakePicamera2`` / ``install_fake_picamera2``: a stand-in for the ``picamera2`` module with
  the API surface the runtime uses (Picamera2(camera_num), global_camera_info,
  create_video_configuration / create_preview_configuration, configure, start, stop, close,
  capture_request(wait=...) returning a request or a job, wait(job, timeout), captured_request,
  capture_array, request.make_array / release). Frames: "RGB888" main arrays are BGR in memory
  like the real thing; the "YUV420" lores array is planar I420 with a padded stride.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import sys
import threading
import time
import types
import urllib.request
import warnings
from collections.abc import Iterator
from concurrent.futures import Future
from importlib import metadata
from pathlib import Path

import cv2
import numpy as np
import pytest


@pytest.fixture(autouse=True)
def _private_state_dir(tmp_path_factory, monkeypatch):
    """lgld's state directory (cell mode's default log and crops, calibrations) in a scratch
    folder: no test writes to, or resumes a count from, the user's own."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path_factory.mktemp("xdg-state")))
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)


CLASSES = ["Benign", "Early", "Pre", "Pro"]
ASSETS = Path(__file__).resolve().parents[1] / "runtime" / "assets"


class FakeClassifier:
    """OnnxClassifier's surface: classes, prepare(list of BGR) and predict(batch) -> (N, C)."""

    def __init__(self, probs=(0.1, 0.7, 0.1, 0.1), delay: float = 0.0, on_call=None) -> None:
        self.classes = list(CLASSES)
        self.probs = np.asarray(probs, np.float32)
        self.delay = delay
        self.on_call = on_call
        self.calls = 0

    def prepare(self, images):
        return np.stack([np.asarray(im.shape, np.float32) for im in images])

    def predict(self, batch):
        self.calls += 1
        if self.on_call:
            self.on_call()
        if self.delay:
            time.sleep(self.delay)
        return np.tile(self.probs, (len(batch), 1))

    def probabilities(self, images):
        return self.predict(self.prepare(images))


def sample_image(name: str = "all-pre") -> np.ndarray:
    """A bundled real sample image (BGR)."""
    path = next(ASSETS.glob(f"{name}*.jpg"))
    return cv2.imread(str(path))


def export_tiny(path: Path, input_size: int = 64, num_classes: int = 4, seed: int = 0) -> Path:
    """Export an untrained LGLD-Net with lgld metadata to path (needs torch and onnx).

    Plain ``torch.onnx.export`` plus metadata, not ``lgld.export.export_model``: the runtime
    tests need any valid lgld model quickly, and the project exporter also simplifies and
    verifies (several times slower on a 2-core CI runner); the export tests cover it.
    """
    import onnx
    import torch

    from lgld.models.lgld_net import LGLDNet, ModelConfig
    from lgld.runtime.core.modelinfo import ModelInfo
    from lgld.runtime.core.preprocess import PreprocessSpec

    torch.manual_seed(seed)
    model = LGLDNet(ModelConfig(num_classes=num_classes, input_size=input_size)).eval()
    classes = CLASSES[:num_classes] if num_classes <= 4 else [f"c{i}" for i in range(num_classes)]
    spec = PreprocessSpec(input_size=input_size)
    x = torch.zeros(1, 3, input_size, input_size)
    tmp = path.with_suffix(".tmp")
    with warnings.catch_warnings():  # tracer chatter about constant folding
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), str(tmp), input_names=["input"],
                          output_names=["logits"], opset_version=17, dynamo=False)
    proto = onnx.load(str(tmp))
    for key, value in ModelInfo(classes, spec, name="tiny-test").to_metadata().items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))
    tmp.unlink()
    return path


def _cache_key() -> str:
    """Changes when the network or the metadata format change (torch's version is in the name)."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for rel in ("models/lgld_net.py", "runtime/core/modelinfo.py", "runtime/core/preprocess.py"):
        digest.update((root / rel).read_bytes())
    return digest.hexdigest()[:16]


def _torch_version() -> str | None:
    with contextlib.suppress(metadata.PackageNotFoundError):
        return metadata.version("torch")
    return None


@pytest.fixture(scope="session")
def tiny_model(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-class, 64 px untrained lgld ONNX model, exported once and kept in pytest's cache
    (so repeated runs need no torch import at all; without the cache plugin: once a session).
    Skips the test where torch is missing and no run with torch cached the model."""
    cache = getattr(request.config, "cache", None)
    if cache is not None:
        folder = Path(cache.mkdir("lgld-runtime-tiny-model"))
    else:
        folder = tmp_path_factory.mktemp("tiny-model")
    key, torch_version = _cache_key(), _torch_version()
    path = folder / f"tiny-{key}-{torch_version or 'none'}.onnx"
    if not path.is_file() and torch_version is None:
        # A runtime-only install (no torch: .ci/run's wheel venv) uses the model a run with torch
        # exported for the same network, so the runtime tests run there too.
        path = next(iter(sorted(folder.glob(f"tiny-{key}-*.onnx"))), path)
    if not path.is_file():
        pytest.importorskip("torch")
        pytest.importorskip("onnx")
        for old in folder.glob("tiny-*.onnx"):
            old.unlink()
        export_tiny(path)
    return path


def small_demo_config(tmp_path: Path, **sections: dict) -> Path:
    """A config file with small demo frames (fast) plus the given sections."""
    from lgld.runtime.config import RunConfig, apply_mapping, to_toml

    data = {"source": {"width": 320, "height": 240, "fps": 60.0}}
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    path = tmp_path / "lgld.toml"
    path.write_text(to_toml(apply_mapping(RunConfig(), data)))
    return path


def write_video(path: Path, frames: int, size=(64, 48), fps: float = 50.0) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    assert writer.isOpened()
    base = cv2.resize(sample_image("all-benign"), size)
    for i in range(frames):
        frame = base.copy()
        frame[:8, :8] = (i * 20) % 256
        writer.write(frame)
    writer.release()
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def interrupt_after_first_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make lgld-train stop as Ctrl-C would, right after it saved epoch 1's last.pt (exit 130);
    ``monkeypatch.undo()`` lets the next run go on normally."""
    from lgld.training import loop  # torch: only the training tests that call this pay for it

    save = loop.Trainer._save

    def save_then_interrupt(self, name: str, epoch: int, val_metrics) -> None:
        save(self, name, epoch, val_metrics)
        if name == "last.pt" and epoch == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(loop.Trainer, "_save", save_then_interrupt)


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """torch on one thread during the test (restored after)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)



def get_json(url: str) -> dict:
    """GET a JSON answer from a test server on loopback."""
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


def post_json(url: str, body: dict | bytes = b"") -> dict:
    """POST a JSON body (a dict, or bytes as they are) and read the JSON answer."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def wait_for_json(url: str, ok, timeout: float = 120.0) -> dict:
    """Poll a JSON URL until ``ok(answer)``; generous by default, CI cores are shared."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = get_json(url)
            if ok(state):
                return state
        except OSError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"{url} never reached the expected state")


def run_lgld_with_client(args: list[str], client, stop: int = signal.SIGTERM) -> int:
    """lgld-run's main(args) in this (main) thread while client() talks to it in another, then
    ``stop`` (SIGTERM, or SIGINT for Ctrl-C); a client failure is raised after the run ends."""
    from lgld.runtime import cli

    failure: list[BaseException] = []

    def body() -> None:
        try:
            client()
        except BaseException as exc:  # reported after the run has stopped
            failure.append(exc)
        finally:
            os.kill(os.getpid(), stop)

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    rc = cli.main(args)
    thread.join(10)
    if failure:
        raise failure[0]
    return rc

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------------------------------------
# A fake picamera2


class FakeRequest:
    """A CompletedRequest: make_array(name) copies a stream out; release() must be called."""

    def __init__(self, camera: FakePicamera2, value: int) -> None:
        self.camera = camera
        self.value = value
        self.released = False

    def make_array(self, name: str) -> np.ndarray:
        assert not self.released, "make_array after release"
        stream = self.camera.config[name]
        w, h = stream["size"]
        bgr = self.camera.scene(w, h, self.value)
        if stream["format"] in ("RGB888", "XRGB8888"):  # [B, G, R] in memory = OpenCV BGR
            return bgr.copy()
        if stream["format"] == "BGR888":
            return bgr[:, :, ::-1].copy()
        if stream["format"] == "YUV420":  # I420 planes in an array padded to a 64-byte stride
            i420 = cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV_I420).reshape(-1)
            stride = (w + 63) // 64 * 64 + (64 if w % 64 == 0 else 0)
            out = np.zeros((h * 3 // 2, stride), np.uint8)
            flat = out.reshape(-1)
            y, u, v = i420[: w * h], i420[w * h : w * h * 5 // 4], i420[w * h * 5 // 4 :]
            for r in range(h):
                flat[r * stride : r * stride + w] = y[r * w : (r + 1) * w]
            half = stride // 2
            for plane, base in ((u, h * stride), (v, h * stride + (h // 2) * half)):
                for r in range(h // 2):
                    flat[base + r * half : base + r * half + w // 2] = plane[
                        r * (w // 2) : (r + 1) * (w // 2)]
            return out
        raise AssertionError(f"unsupported format {stream['format']}")

    def get_metadata(self) -> dict:
        """Per-frame metadata, as libcamera reports it: the exposure and gains in use."""
        return self.camera.metadata()

    def release(self) -> None:
        assert not self.released, "released twice"
        self.released = True
        self.camera.outstanding.discard(self)


class FakeJob:
    """picamera2.job.Job: completes with the next frame; get_result(timeout) raises
    TimeoutError while the camera delivers none (like a concurrent.futures.Future)."""

    def __init__(self, camera: FakePicamera2) -> None:
        self.camera = camera
        self._future: Future = Future()
        camera.jobs += 1

    def _try(self) -> None:
        if not self._future.done():
            request = self.camera._next_request()
            if request is not None:
                self._future.set_result(request)

    def get_result(self, timeout: float | None = None):
        self._try()
        if not self._future.done() and timeout:
            threading.Event().wait(timeout)
            self._try()
        if not self._future.done():
            if timeout is None:
                raise AssertionError("would block forever: no frame and no timeout")
            raise TimeoutError()
        return self._future.result()


class FakePicamera2:
    """The subset of picamera2.Picamera2 the runtime uses, with knobs for failures."""

    cameras: list[dict] = [{"Model": "imx477", "Location": 2, "Rotation": 0, "Id": "/base/fake"}]
    busy = False
    init_error: BaseException | None = None  # raised inside __init__, then hidden like picamera2
    instances: list[FakePicamera2] = []
    stall_plan: list[int | None] = []  # instance i stops after stall_plan[i] frames

    def __init__(self, camera_num: int = 0) -> None:
        if not type(self).cameras:
            raise RuntimeError("Camera __init__ sequence did not complete.")
        if type(self).busy:
            try:
                raise RuntimeError("Failed to acquire camera: Device or resource busy")
            except RuntimeError:
                raise RuntimeError("Camera __init__ sequence did not complete.")  # noqa: B904
        if type(self).init_error is not None:
            try:
                raise type(self).init_error
            except BaseException:
                raise RuntimeError("Camera __init__ sequence did not complete.")  # noqa: B904
        self.camera_num = camera_num
        self.config: dict | None = None
        self.started = False
        self.closed = False
        self.frames = 0
        self.outstanding: set[FakeRequest] = set()
        plan, n = type(self).stall_plan, len(type(self).instances)
        self.stall_after: int | None = plan[n] if n < len(plan) else None
        self.jobs = 0
        self.lock = threading.Lock()
        self.controls: dict = {}
        type(self).instances.append(self)

    @staticmethod
    def global_camera_info() -> list[dict]:
        return list(FakePicamera2.cameras)

    @staticmethod
    def scene(w: int, h: int, value: int) -> np.ndarray:
        """A sharp real sample image with a frame counter in the blue channel of pixel (0,0)."""
        image = cv2.resize(sample_image("all-early"), (w, h), interpolation=cv2.INTER_AREA)
        image[0, 0] = (value % 256, 0, 255)  # B, G, R
        return image

    def _configuration(self, main=None, lores=None, raw=None, controls=None, buffer_count=4,
                       **kwargs) -> dict:
        main = {"format": "XBGR8888", "size": (640, 480), **(main or {})}
        config = {"main": main, "lores": None, "raw": raw, "controls": controls or {},
                  "buffer_count": buffer_count, **kwargs}
        if lores is not None:
            lores = {"format": "YUV420", "size": (320, 240), **lores}
            assert lores["size"][0] <= main["size"][0] and lores["size"][1] <= main["size"][1]
            config["lores"] = lores
        return config

    create_video_configuration = _configuration
    create_preview_configuration = _configuration

    def configure(self, config: dict) -> None:
        assert not self.started, "configure while started"
        self.config = config

    def start(self) -> None:
        assert self.config is not None, "start before configure"
        self.started = True

    def stop(self) -> None:
        self.started = False

    def close(self) -> None:
        self.started = False
        self.closed = True

    # Controls picamera2 accepts (a subset of libcamera's); an unknown name raises like it does.
    CONTROLS = ("AeEnable", "AwbEnable", "ExposureTime", "AnalogueGain", "ColourGains",
                "FrameRate")

    def set_controls(self, controls: dict) -> None:
        unknown = set(controls) - set(self.CONTROLS)
        if unknown:
            raise RuntimeError(f"Control {sorted(unknown)[0]} is not advertised by libcamera")
        self.controls.update(controls)

    def metadata(self) -> dict:
        """What auto-exposure/white balance chose, or the locked values once they are off."""
        auto = {"ExposureTime": 16600, "AnalogueGain": 2.5, "ColourGains": (1.9, 1.6)}
        out = {"SensorTimestamp": self.frames, "Lux": 400.0, **auto}
        if self.controls.get("AeEnable") is False:
            out.update({k: self.controls[k] for k in ("ExposureTime", "AnalogueGain")
                        if k in self.controls})
        if self.controls.get("AwbEnable") is False and "ColourGains" in self.controls:
            out["ColourGains"] = tuple(self.controls["ColourGains"])
        return out

    def capture_metadata(self, wait=None, signal_function=None) -> dict:
        with self.captured_request(wait=wait) as request:
            return request.get_metadata()

    def _next_request(self) -> FakeRequest | None:
        with self.lock:
            if not self.started or (self.stall_after is not None and
                                    self.frames >= self.stall_after):
                return None
            self.frames += 1
            request = FakeRequest(self, self.frames)
            self.outstanding.add(request)
            return request

    def capture_request(self, wait=None, signal_function=None, flush=None):
        job = FakeJob(self)
        if wait is False:
            return job
        return job.get_result(timeout=None if wait in (None, True) else wait)

    def wait(self, job: FakeJob, timeout: float | None = None):
        return job.get_result(timeout=timeout)

    @contextlib.contextmanager
    def captured_request(self, wait=None, flush=None):
        request = self.capture_request(wait=wait, flush=flush)
        try:
            yield request
        finally:
            request.release()

    def capture_array(self, name: str = "main", wait=None):
        with self.captured_request(wait=wait) as request:
            return request.make_array(name)


def install_fake_picamera2(monkeypatch: pytest.MonkeyPatch, cameras: list[dict] | None = None,
                           busy: bool = False,
                           init_error: BaseException | None = None) -> type[FakePicamera2]:
    """Put a fake ``picamera2`` module into sys.modules (undone after the test)."""
    cls = type("FakePicamera2", (FakePicamera2,), {})
    cls.cameras = FakePicamera2.cameras if cameras is None else cameras
    cls.busy = busy
    cls.init_error = init_error
    cls.instances = []
    cls.stall_plan = []
    cls.global_camera_info = staticmethod(lambda: list(cls.cameras))
    module = types.ModuleType("picamera2")
    module.Picamera2 = cls
    monkeypatch.setitem(sys.modules, "picamera2", module)
    return cls
