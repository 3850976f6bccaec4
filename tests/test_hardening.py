"""Hardening: a full disk, bad images, non-finite model outputs, bad configs and
models, and readiness. Each test reproduces one finding of the probe."""

from __future__ import annotations

import contextlib
import errno
import json
import math
import socket
import struct
import threading
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import FakeClassifier, read_jsonl, sample_image, small_demo_config

from lgld.runtime import cli
from lgld.runtime.config import TrustSection
from lgld.runtime.core.preprocess import ImageError, read_image
from lgld.runtime.pipeline import Pipeline, PipelineSettings
from lgld.runtime.results import ResultLog, ResultLogError
from lgld.runtime.sources.demo import DemoSource


def strict_loads(text: str):
    """json.loads that refuses NaN/Infinity (what every other JSON parser does)."""

    def refuse(name: str):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture
def base(tiny_model, tmp_path):
    config = small_demo_config(tmp_path)
    return ["--model", str(tiny_model), "--config", str(config), "--preview", "off",
            "--threads", "1"]


def error_line(capsys, rc: int, code: int, pattern: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == code, err
    assert "Traceback" not in "\n".join(err)
    assert err and err[-1].startswith("lgld-run: error: ") and pattern in err[-1], err
    return err[-1]


# -- 1. a full disk never tears the log ---------------------------------------------------------


class _DiskFullAfter:
    """A file stand-in that accepts ``room`` more bytes, then fails with ENOSPC (like a full
    filesystem: the bytes that fit are written, the rest is refused)."""

    def __init__(self, handle, room: int) -> None:
        self.handle, self.room = handle, room

    def write(self, data) -> int:
        data = bytes(data)
        if self.room <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        part = data[: self.room]
        self.room -= len(part)
        return self.handle.write(part)

    def __getattr__(self, name):
        return getattr(self.handle, name)


def test_a_write_that_fails_on_a_full_disk_leaves_only_whole_lines(tmp_path):
    path = tmp_path / "r.jsonl"
    log = ResultLog(path)
    log.write({"n": 1})
    log._file = _DiskFullAfter(log._file, room=7)
    with pytest.raises(ResultLogError, match="No space"):
        log.write({"n": 2, "pad": "x" * 100})
    log._file = log._file.handle
    log.close()
    assert path.read_bytes() == b'{"n":1}\n', "the torn record was truncated away"
    with ResultLog(path) as again:  # after a restart (space freed) the log goes on
        again.write({"n": 3})
    assert [strict_loads(line) for line in path.read_text().splitlines()] == [{"n": 1}, {"n": 3}]


def test_a_log_left_without_a_final_newline_is_ended_before_the_next_record(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_bytes(b'{"n":1}\n{"n":2,"tor')  # e.g. a power cut mid-write on another system
    with ResultLog(path) as log:
        log.write({"n": 3})
    lines = path.read_text().splitlines()
    assert lines[0] == '{"n":1}' and lines[1] == '{"n":2,"tor'  # nothing already there is lost
    assert strict_loads(lines[2]) == {"n": 3}, "the new record is a line of its own"


# -- 3. bad and huge images --------------------------------------------------------------------


def png_claiming(width: int, height: int, size: int = 517) -> bytes:
    """A PNG whose (valid, CRC-checked) header claims width x height, padded to size bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    head = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2,
                                                              0, 0, 0))
    idat = chunk(b"IDAT", zlib.compress(b"\0" * 64))
    body = head + idat
    return body + chunk(b"tEXt", b"c\0" + b"x" * max(0, size - len(body) - 14)) + chunk(b"IEND",
                                                                                         b"")


def test_a_png_claiming_ten_billion_pixels_is_refused_without_decoding(tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(png_claiming(100_000, 100_000))
    assert 500 <= bomb.stat().st_size <= 600
    with pytest.raises(ImageError, match="100000x100000"):
        read_image(bomb, max_pixels=50_000_000)


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".bmp", ".tif", ".webp"])
def test_image_headers_are_read_for_every_supported_format(tmp_path, suffix):
    from lgld.runtime.core.imageheader import read_image_size

    image = cv2.resize(sample_image("all-pre"), (123, 77))
    path = tmp_path / f"x{suffix}"
    assert cv2.imwrite(str(path), image)
    assert read_image_size(path) == (123, 77)
    assert read_image(path, max_pixels=123 * 77).shape == (77, 123, 3)
    with pytest.raises(ImageError, match="123x77"):
        read_image(path, max_pixels=123 * 77 - 1)


def test_an_image_over_the_pixel_limit_is_skipped_and_the_good_one_beside_it_classified(
        base, tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    cv2.imwrite(str(folder / "a-good.jpg"), sample_image("all-pre"))
    (folder / "b-bomb.png").write_bytes(png_claiming(100_000, 100_000))
    cv2.imwrite(str(folder / "c-large.png"), np.zeros((400, 300, 3), np.uint8))
    (folder / "d-corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 300)
    config = small_demo_config(tmp_path, source={"max_image_pixels": 300 * 300})
    log = tmp_path / "out.jsonl"
    rc = cli.main(["--model", str(base[1]), "--config", str(config), "--preview", "off",
                   "--threads", "1", "--source", f"images:{folder}", "--log", str(log)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "Traceback" not in captured.err
    records = [strict_loads(line) for line in log.read_text().splitlines()]
    classified = [r for r in records if r.get("event") != "skip"]
    skipped = {Path(r["file"]).name: r["reason"] for r in records if r.get("event") == "skip"}
    assert [Path(r["file"]).name for r in classified] == ["a-good.jpg"]
    assert set(skipped) == {"b-bomb.png", "c-large.png", "d-corrupt.jpg"}
    assert "100000x100000" in skipped["b-bomb.png"] and "120000" in skipped["c-large.png"]
    assert "3 skipped" in captured.err


# -- 5. a batch where nothing could be read ------------------------------------------------------


def test_a_batch_where_no_image_could_be_read_exits_non_zero_and_says_why(base, tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "x.jpg").write_bytes(b"not an image at all")
    (folder / "y.png").write_bytes(png_claiming(100_000, 100_000))
    log = tmp_path / "out.jsonl"
    rc = cli.main([*base, "--source", f"images:{folder}", "--log", str(log)])
    error_line(capsys, rc, cli.EXIT_SOURCE, "no image could be read")
    reasons = {Path(r["file"]).name: r["reason"] for r in read_jsonl(log)
               if r.get("event") == "skip"}
    assert set(reasons) == {"x.jpg", "y.png"} and all(reasons.values())


# -- 4. non-finite model outputs ------------------------------------------------------------------


def _pipeline(classifier):
    source = DemoSource("all", size=(160, 120), fps=60)
    source.open()
    return Pipeline(source, classifier, PipelineSettings(trust=TrustSection(window=4))), source


def test_nan_model_output_is_an_invalid_output_state_never_ok_and_the_record_is_strict_json():
    pipeline, source = _pipeline(FakeClassifier(probs=(math.nan, 0.7, 0.1, 0.1)))
    try:
        results = [pipeline.process(source.read()) for _ in range(3)]
    finally:
        source.close()
    assert {r.state for r in results} == {"invalid_output"}
    assert all(r.label is None for r in results)
    assert pipeline.stats.states["invalid_output"] == 3
    assert 'lgld_results_total{state="invalid_output"} 3' in pipeline.snapshot().prometheus()
    for r in results:
        record = strict_loads(json.dumps(r.to_record(), allow_nan=False))
        assert record["state"] == "invalid_output" and record["class"] is None


def test_a_good_frame_after_an_invalid_output_is_classified_without_the_nan():
    probs = [(math.inf, 0.0, 0.0, 0.0), (0.1, 0.7, 0.1, 0.1)]
    classifier = FakeClassifier()
    pipeline, source = _pipeline(classifier)
    try:
        states = []
        for p in probs:
            classifier.probs = np.asarray(p, np.float32)
            states.append(pipeline.process(source.read()))
    finally:
        source.close()
    assert [r.state for r in states] == ["invalid_output", "ok"]
    assert states[1].label == "Early" and math.isfinite(states[1].confidence)


def test_strict_json_turns_non_finite_numbers_into_null():
    from lgld.runtime.core.strictjson import dumps

    text = dumps({"a": math.nan, "b": [1.0, -math.inf], "c": {"d": np.float32("nan")}, "e": 2})
    assert strict_loads(text) == {"a": None, "b": [1.0, None], "c": {"d": None}, "e": 2}


# -- 7. config and model metadata range checks -------------------------------------------------


@pytest.mark.parametrize(
    "section, key, value, message",
    [
        ("model", "threads", 100000, "model.threads"),
        ("source", "fps", 1e-300, "source.fps"),
        ("http", "stream_max_fps", 1e-300, "http.stream_max_fps"),
        ("source", "width", 100_000_000, "source.width"),
        ("source", "lores_height", 100_000_000, "source.lores"),
        ("source", "timeout_s", 1e300, "source.timeout_s"),
        ("trust", "window", 10**9, "trust.window"),
        ("http", "max_streams", 0, "http.max_streams"),
        ("source", "max_image_pixels", 0, "source.max_image_pixels"),
    ],
)
def test_out_of_range_settings_are_one_line_usage_errors_before_anything_starts(
        base, tmp_path, capsys, section, key, value, message):
    config = tmp_path / "bad.toml"
    config.write_text(f"[{section}]\n{key} = {value!r}\n")
    rc = cli.main([*base[:6], "--config", str(config), "--source", "demo", "--frames", "1"])
    error_line(capsys, rc, cli.EXIT_USAGE, message)


def test_a_config_file_that_is_not_utf8_is_a_one_line_usage_error(base, tmp_path, capsys):
    config = tmp_path / "latin1.toml"
    config.write_bytes('[source]\ninput = "démo"\n'.encode("latin-1"))
    rc = cli.main([*base, "--config", str(config), "--source", "demo", "--frames", "1"])
    error_line(capsys, rc, cli.EXIT_USAGE, "UTF-8")


def _onnx_model(path: Path, channels: int = 3, dtype: str = "float", out_rank: int = 2,
                input_size: str = "16", classes: int = 4) -> Path:
    """A minimal ONNX classifier with lgld metadata (mean over pixels, one MatMul)."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from lgld.runtime.core.modelinfo import ModelInfo
    from lgld.runtime.core.preprocess import PreprocessSpec

    elem = {"float": TensorProto.FLOAT, "uint8": TensorProto.UINT8}[dtype]
    nodes = []
    x = "input"
    if dtype != "float":
        nodes.append(helper.make_node("Cast", ["input"], ["xf"], to=TensorProto.FLOAT))
        x = "xf"
    nodes += [
        helper.make_node("GlobalAveragePool", [x], ["pooled"]),
        helper.make_node("Flatten", ["pooled"], ["flat"]),
        helper.make_node("MatMul", ["flat", "w"], ["logits2"]),
    ]
    out_shape: list = [1, classes]
    if out_rank == 3:
        nodes.append(helper.make_node("Unsqueeze", ["logits2", "axes"], ["logits"]))
        out_shape = [1, 1, classes]
    else:
        nodes.append(helper.make_node("Identity", ["logits2"], ["logits"]))
    inits = [helper.make_tensor("w", TensorProto.FLOAT, [channels, classes],
                                [0.1 * (i + 1) for i in range(channels * classes)]),
             helper.make_tensor("axes", TensorProto.INT64, [1], [1])]
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("input", elem, [1, channels, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, out_shape)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    meta = ModelInfo(["Benign", "Early", "Pre", "Pro"][:classes], PreprocessSpec(input_size=16),
                     name="probe").to_metadata()
    meta["lgld.input_size"] = input_size
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))
    return path


def test_the_minimal_probe_model_itself_runs(tmp_path, base, capsys):
    path = _onnx_model(tmp_path / "good.onnx")
    rc = cli.main([*base, "--model", str(path), "--source", "demo", "--frames", "2"])
    assert rc == 0, capsys.readouterr().err


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"input_size": "abc"}, "input_size"),
        ({"channels": 1}, "channel"),
        ({"dtype": "uint8"}, "float"),
        ({"out_rank": 3}, "output"),
    ],
)
def test_a_model_with_bad_metadata_or_io_is_refused_at_load_with_rc_3(
        tmp_path, base, capsys, kwargs, message):
    path = _onnx_model(tmp_path / "bad.onnx", **kwargs)
    rc = cli.main([*base, "--model", str(path), "--source", "demo", "--frames", "2"])
    error_line(capsys, rc, cli.EXIT_MODEL, message)


# -- 9. READY=1 after the first frame, not when the source opens ---------------------------------


def test_ready_is_sent_after_the_first_frame_not_when_the_source_opens(
        base, tmp_path, monkeypatch, capsys):
    notify = tmp_path / "n.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(notify))
    listener.settimeout(0.05)
    monkeypatch.setenv("NOTIFY_SOCKET", str(notify))
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    release = threading.Event()
    real_open = cli.open_source

    def slow_first_frame(*args, **kwargs):
        source = real_open(*args, **kwargs)
        read = source.read

        def gated_read():
            release.wait(10)
            return read()

        source.read = gated_read
        return source

    monkeypatch.setattr(cli, "open_source", slow_first_frame)
    messages: list[str] = []
    outcome: dict = {}
    thread = threading.Thread(
        target=lambda: outcome.setdefault("rc", cli.main([*base, "--source", "demo",
                                                          "--frames", "2"])), daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 1.5  # model loaded and source open well before this
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                messages.append(listener.recv(256).decode())
        before_frame = list(messages)
        release.set()
        thread.join(20)
        while True:
            try:
                messages.append(listener.recv(256).decode())
            except OSError:
                break
    finally:
        release.set()
        listener.close()
    assert outcome.get("rc") == 0, capsys.readouterr().err
    assert not any(m.startswith("READY=1") for m in before_frame), before_frame
    assert any(m.startswith("READY=1") for m in messages), messages


# -- 8. memory: the unit caps glibc's malloc arenas ----------------------------------------------


def test_the_service_unit_caps_malloc_arenas():
    unit = (Path(__file__).resolve().parents[1] / "deploy" / "lgld.service").read_text()
    env = [line.split("=", 1)[1] for line in unit.splitlines() if line.startswith("Environment=")]
    assert "MALLOC_ARENA_MAX=2" in env
