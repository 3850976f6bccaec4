"""Reviews under load: does reviewing on the live page slow the count down? Prints what it
measured; exit 1 when a target is missed.

Writes a 60 MB cell-mode log set (``results.jsonl`` and five rotated 10 MB siblings, the
default ``[log]`` cap; ~4 KB frame records as a cell-mode run writes them; the last session
unfinished with ``--cells`` counted cells, their crop files on disk), measures a review in
process, then starts the real ``lgld-run --mode cells`` on the set (``demo:cells``, the
shipped ``wbc5-128`` model, one thread, loopback only), which resumes
that session, then alternates windows without and with reviews: in each review window
``--reviews`` reviews are POSTed to ``/api/review``, spread over the window. Targets: the
95th percentile of the review answer time <= 50 ms, and results/s in the review windows >=
90% of the windows without. Bounded: about ``4 x --window`` seconds after start-up.

Usage: ``python deploy/reviewload.py [--window 10] [--reviews 50] [--cells 600]``.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from soak import free_port, tail, wait_healthy  # noqa: E402 - a script beside soak.py

WBC5 = ["Basophil", "Eosinophil", "Lymphocyte", "Monocyte", "Neutrophil"]
FILE_BYTES = 9_900_000  # under [log] max_bytes (10 MB): lgld-run appends without rotating
FILES = 6  # results.jsonl + .1 ... .5: 60 MB
LATENCY_TARGET_MS = 50.0
RATE_TARGET = 0.90


def _frame(rng: random.Random, sid: str, frame: int) -> dict:
    cells = [{"box": [rng.randrange(600), rng.randrange(400), 700, 500],
              "class": rng.choice(WBC5), "confidence": 0.9, "state": "ok",
              "track": rng.randrange(10**6), "probs": {c: 0.2 for c in WBC5}, "counted": False}
             for _ in range(14)]
    return {"ts": "2026-12-01T10:00:00.000+00:00", "frame": frame, "source": "demo:cells",
            "mode": "cells", "class": None, "confidence": None,
            "probabilities": {c: 0.2 for c in WBC5}, "state": "ok", "latency_ms": 60.0,
            "model": "lgld-wbc5-128", "window": 1, "e2e_ms": 90.0,
            "instant": {"class": None, "confidence": None, "probabilities": {}},
            "quality": {"focus": 100.0, "dark": 0.0, "bright": 0.0}, "region": [0, 0, 640, 480],
            "event": "frame", "session": sid, "cells": cells, "detect_ms": 2.0,
            "classify_ms": 60.0}


def write_log_set(folder: Path, cells: int, seed: int = 0) -> Path:
    """The 60 MB log set; its last session is unfinished and has ``cells`` counted cells."""
    rng = random.Random(seed)
    path = folder / "results.jsonl"
    names = [path.with_name(f"{path.name}.{n}") for n in range(FILES - 1, 0, -1)] + [path]
    track, frame = 0, 0
    for index, name in enumerate(names):
        last = index == len(names) - 1
        sid = f"20261201-{index:06d}-beef"
        lines = [json.dumps({"event": "session_start", "format": 2, "session": sid,
                             "ts": "2026-12-01T10:00:00.000+00:00", "sample": "load",
                             "model": {"name": "lgld-wbc5-128", "classes": WBC5},
                             "target": 100_000})]
        size = len(lines[0]) + 1
        every = max(1, FILE_BYTES // 4300 // cells) if last else 3
        while size < FILE_BYTES - 10_000:
            frame += 1
            line = json.dumps(_frame(rng, sid, frame), separators=(",", ":"))
            if frame % every == 0:
                track += 1
                crop = f"crops/cells-{sid}/f{frame}-t{track}.jpg"
                if last:  # the resumed session's crops are on disk, as with a snapshot folder
                    (folder / crop).parent.mkdir(parents=True, exist_ok=True)
                    (folder / crop).write_bytes(b"\xff\xd8\xff\xd9")
                line += "\n" + json.dumps({
                    "event": "cell", "session": sid, "ts": "2026-12-01T10:00:00.000+00:00",
                    "track": track, "class": rng.choice(WBC5), "confidence": 0.9,
                    "probs": {c: 0.2 for c in WBC5}, "frames_seen": 5, "box": [0, 0, 60, 60],
                    "frame": frame, "crop": crop,
                    "context": None})
            lines.append(line)
            size += len(line) + 1
        if not last:
            lines.append(json.dumps({"event": "session_end", "session": sid, "counted": 0}))
        name.write_text("\n".join(lines) + "\n")
    return path


def call(port: int, path: str, body: dict | None = None) -> tuple[int, dict]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def results(port: int) -> int:
    return call(port, "/api/latest")[1]["stats"]["results"]


def window(port: int, seconds: float, reviews: list[dict]) -> tuple[float, list[float]]:
    """results/s over ``seconds`` while POSTing ``reviews`` spread over them; answer times."""
    times: list[float] = []
    start, first = time.monotonic(), results(port)
    for i, body in enumerate(reviews):
        time.sleep(max(0.0, start + seconds * i / len(reviews) - time.monotonic()))
        t0 = time.perf_counter()
        status, answer = call(port, "/api/review", body)
        times.append(1000 * (time.perf_counter() - t0))
        if status != 200:
            raise RuntimeError(f"review answered {status}: {answer}")
    time.sleep(max(0.0, start + seconds - time.monotonic()))
    return (results(port) - first) / (time.monotonic() - start), times


def in_process(log: Path, reviews: int) -> tuple[float, float, float]:
    """Median ms of resuming the set, of ``CountSession.review`` (what holds the counting lock)
    and of ``ReviewDesk.review`` (the whole answer, before HTTP), in this process."""
    from lgld.runtime.cells.session import CountSession
    from lgld.runtime.cells.stage import CellStage
    from lgld.runtime.review.live import ReviewDesk

    class Model:  # the classifier surface a stage needs; reviews never call the model
        classes = WBC5

        class info:  # noqa: N801 - mirrors OnnxClassifier.info
            input_size = 32

    count = CountSession(CellStage(Model()), lambda record: None, {"classes": WBC5},
                         log_path=log)
    t0 = time.perf_counter()
    count.open(log)
    resume_ms = 1000 * (time.perf_counter() - t0)
    desk, rng = ReviewDesk(count), random.Random(2)
    tracks = [c["track"] for c in desk.gallery()["cells"]]
    timed: dict[str, list[float]] = {"count": [], "desk": []}
    for _ in range(reviews):
        for kind, review in (("count", count.review), ("desk", desk.review)):
            body = {"session": count.id, "track": rng.choice(tracks), "action": "reclassify",
                    "class": rng.choice(WBC5)}
            t0 = time.perf_counter()
            review(body)
            timed[kind].append(1000 * (time.perf_counter() - t0))
    return resume_ms, statistics.median(timed["count"]), statistics.median(timed["desk"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--window", type=float, default=10.0, help="seconds per window")
    p.add_argument("--reviews", type=int, default=50, help="reviews per review window")
    p.add_argument("--cells", type=int, default=600, help="cells of the resumed session")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="lgld-reviewload-") as tmp:
        folder = Path(tmp)
        t0 = time.monotonic()
        log = write_log_set(folder, args.cells)
        total = sum(f.stat().st_size for f in folder.glob("results.jsonl*"))
        print(f"log set: {total / 1e6:.1f} MB in {FILES} files ({time.monotonic() - t0:.1f} s)")
        resume_ms, count_ms, desk_ms = in_process(log, args.reviews)
        print(f"in process: resume {resume_ms:.0f} ms; a review: {count_ms:.3f} ms under the "
              f"counting lock, {desk_ms:.2f} ms with its answer (medians of {args.reviews})")
        port = free_port()
        stderr = folder / "run.stderr"
        command = [sys.executable, "-m", "lgld.runtime.cli", "--model", "wbc5-128", "--mode",
                   "cells", "--source", "demo:cells", "--preview", "off", "--threads", "1",
                   "--http", f"127.0.0.1:{port}", "--log", str(log)]
        with open(stderr, "wb") as err:
            child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err, cwd=tmp)
        try:
            t0 = time.monotonic()
            if not wait_healthy(port, 120.0):
                print(f"lgld-run did not become healthy: {tail(stderr)}")
                return 1
            print(f"lgld-run healthy after {time.monotonic() - t0:.1f} s (resume read the set)")
            t0 = time.perf_counter()
            _, gallery = call(port, "/api/review")
            print(f"first GET /api/review: {1000 * (time.perf_counter() - t0):.1f} ms, "
                  f"session {gallery['session']}, {len(gallery['cells'])} cells")
            rng = random.Random(1)
            tracks = [c["track"] for c in gallery["cells"]]
            rates: dict[str, list[float]] = {"without": [], "with": []}
            times: list[float] = []
            for kind in ("without", "with", "without", "with"):
                bodies = [] if kind == "without" else [
                    {"session": gallery["session"], "track": rng.choice(tracks),
                     "action": "reclassify", "class": rng.choice(WBC5)}
                    for _ in range(args.reviews)]
                rate, answer_ms = window(port, args.window, bodies)
                rates[kind].append(rate)
                times += answer_ms
                print(f"window {kind} reviews: {rate:.2f} results/s"
                      + (f", {len(answer_ms)} reviews" if answer_ms else ""))
            healthy = call(port, "/healthz")[0] == 200
        finally:
            child.terminate()
            child.wait(30)
    p95 = sorted(times)[max(0, math.ceil(0.95 * len(times)) - 1)]
    ratio = statistics.mean(rates["with"]) / max(1e-9, statistics.mean(rates["without"]))
    print(f"review answer: median {statistics.median(times):.1f} ms, p95 {p95:.1f} ms, "
          f"max {max(times):.1f} ms ({len(times)} reviews)")
    print(f"results/s with reviews / without: {ratio:.3f}; /healthz "
          f"{'200' if healthy else 'not 200'} after the reviews")
    ok = p95 <= LATENCY_TARGET_MS and ratio >= RATE_TARGET and healthy
    print("targets: " + ("met" if ok else "MISSED") + f" (p95 <= {LATENCY_TARGET_MS:.0f} ms, "
          f"ratio >= {RATE_TARGET:.2f}, healthy)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
