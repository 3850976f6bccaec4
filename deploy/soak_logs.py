"""The hostile-log phase of deploy/soak.py: lgld-report, lgld-dataset and lgld-run given logs,
labels and crops that a copied or crafted log can hold, as child processes.

* a report of a log whose sample holds a lone surrogate and control characters, whose crops
  point outside its folder (absolute, ``..``, a symbolic link) or at a 12000x12000 PNG, and
  whose model path has a secret ``.md`` beside it: exit 0, valid UTF-8, nothing of the
  outside files in it, the PNG refused by its header (peak RSS far below its decoded size);
* a data set from reviews whose classes are ``/abs/dir``, ``../../x`` and ``..``: nothing
  written outside the output folder; from crops outside the crop folder: refused, nothing
  copied; a temporary folder a killed build left is removed by the next build;
* ``lgld-run --sample $'caf\\xe9'``: exit 2 with one line.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CELLS = REPO / "runtime" / "assets"
WBC5 = ["Basophil", "Eosinophil", "Lymphocyte", "Monocyte", "Neutrophil"]
SID = "20261201-100000-abcd"
BOMB_SIDE = 12000  # 412 MiB decoded as RGB


def run_child(module: str, args: list[str], env: dict[str, str], cwd: Path,
              timeout: float) -> tuple[int, str, float]:
    """(exit status, stderr, peak RSS in MB) of ``python -m module args``."""
    child = subprocess.Popen([sys.executable, "-m", module, *args], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, env=env, cwd=cwd)
    peak = 0.0
    deadline = time.monotonic() + timeout
    while child.poll() is None and time.monotonic() < deadline:
        with contextlib.suppress(OSError, AttributeError):
            text = Path(f"/proc/{child.pid}/status").read_text()
            peak = max(peak, int(re.search(r"VmHWM:\s+(\d+)", text).group(1)) / 1024)
        time.sleep(0.02)
    if child.poll() is None:
        child.kill()
    _, err = child.communicate(timeout=10)
    return child.returncode, err.decode("utf-8", "replace"), peak


def crop_files(n: int) -> list[Path]:
    return sorted(CELLS.glob("cells-*.jpg"))[:n]


def write_log(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))  # "\ud800" stays an escape


def session_start(sample: str, model_path: str) -> dict:
    return {"event": "session_start", "session": SID, "time": "2026-12-01T10:00:00+00:00",
            "sample": sample, "model": {"name": "lgld-wbc5", "path": model_path,
                                        "sha256": "a" * 64, "precision": "fp32",
                                        "classes": WBC5}}


def cell(track: int, name: str, crop: str) -> dict:
    return {"event": "cell", "session": SID, "time": "2026-12-01T10:01:00+00:00", "track": track,
            "class": name, "confidence": 0.95, "probs": {name: 0.95}, "frames_seen": 3,
            "box": [0, 0, 40, 40], "frame": track, "crop": crop}


def review(track: int, action: str, name: str | None = None) -> dict:
    record = {"event": "review", "session": SID, "time": "2026-12-01T10:05:00+00:00",
              "track": track, "action": action}
    return record if name is None else {**record, "class": name}


def hostile_logs(report: Callable[[bool | None, str, str], None], workdir: Path,
                 env: dict[str, str], left: Callable[[], float],
                 write_png: Callable[[Path, int, int], None]) -> None:
    """Run the cases of the module docstring, reporting each through ``report``."""
    base = workdir / "hostile"
    outside = base / "outside"
    outside.mkdir(parents=True)
    secret = outside / "secret.jpg"
    shutil.copyfile(crop_files(1)[0], secret)
    (outside / "model.md").write_text("# SECRET-CARD\n")
    pi = base / "pi"
    (pi / "crops").mkdir(parents=True)
    write_png(pi / "bomb.png", BOMB_SIDE, BOMB_SIDE)
    (pi / "link.jpg").symlink_to(secret)
    records = [session_start("lab \ud800 x\x1b[31m", str(outside / "model.onnx"))]
    inside = []
    for i, src in enumerate(crop_files(10)):
        shutil.copyfile(src, pi / "crops" / src.name)
        inside.append(f"crops/{src.name}")
        records.append(cell(i + 1, WBC5[i % 2], inside[-1]))
    hostile = [str(secret), "../outside/secret.jpg", "link.jpg", "bomb.png"]
    records += [cell(100 + i, "Lymphocyte", c) for i, c in enumerate(hostile)]
    write_log(pi / "r.jsonl", records)
    out = base / "report.html"
    rc, err, peak = run_child("lgld.runtime.review.cli", [str(pi / "r.jsonl"), "-o", str(out)],
                              env, base, max(5.0, min(60.0, left())))
    try:
        html = out.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        html = f"unreadable ({exc})"
    decoded_mb = BOMB_SIDE * BOMB_SIDE * 3 / 2**20
    ok = (rc == 0 and "SECRET-CARD" not in html and html.count("<img ") == len(inside)
          and peak < decoded_mb / 4)
    report(ok, "hostile log: report", f"rc {rc}; {html.count('<img ')} thumbnails (the "
           f"{len(inside)} crops inside the folder; absolute, .., symlinked-out crops and a "
           f"{BOMB_SIDE}x{BOMB_SIDE} PNG left out); card beside a crafted model path "
           f"{'embedded' if 'SECRET-CARD' in html else 'not embedded'}; valid UTF-8; peak RSS "
           f"{peak:.0f} MB ({decoded_mb:.0f} MB decoded)" + ("" if ok else f"; {err[-300:]}"))

    records = [session_start("smear", "/zoo/lgld-wbc5.onnx")]
    for i, name in enumerate(inside):
        records += [cell(i + 1, WBC5[i % 2], name), review(i + 1, "confirm")]
    escapes = [str(base / "abs" / "dir"), "../../x", ".."]
    records += [review(i + 1, "reclassify", n) for i, n in enumerate(escapes)]
    write_log(pi / "r.jsonl", records)
    stale = base / ".lab.tmp-999999999"
    stale.mkdir()
    before = sorted(p.name for p in base.iterdir() if p != stale)
    rc, err, _ = run_child("lgld.lab.cli", [str(pi / "r.jsonl"), "-o", str(base / "lab"),
                                            "--min-per-class", "2"], env, base,
                           max(5.0, min(60.0, left())))
    after = sorted(p.name for p in base.iterdir())
    written = sorted(p.name for p in (base / "lab").iterdir()) if rc == 0 else []
    ok = rc == 0 and after == sorted([*before, "lab"]) and not stale.exists() and \
        not (base / "abs").exists() and written == sorted([*WBC5[:2], "manifest.json"])
    report(ok, "hostile log: data set classes", f"rc {rc}; review classes {escapes}: "
           f"nothing outside the output folder; stale temp folder "
           f"{'still there' if stale.exists() else 'removed'}; the data set holds {written}"
           + ("" if ok else f"; {err[-300:]}"))

    records[7]["crop"] = str(secret)  # track 4, a confirmed cell
    write_log(pi / "r.jsonl", records)
    rc, err, _ = run_child("lgld.lab.cli", [str(pi / "r.jsonl"), "-o", str(base / "lab2")],
                           env, base, max(5.0, min(60.0, left())))
    lines = err.strip().splitlines()
    ok = rc == 1 and len(lines) == 1 and not (base / "lab2").exists()
    report(ok, "hostile log: data set crops", f"a crop outside the crop folder: rc {rc}, "
           f"{lines[-1][:120] if lines else 'no message'!r}")

    rc, err, _ = run_child("lgld.runtime.cli", ["--sample", "caf\udce9", "--check"], env,
                           base, max(5.0, min(30.0, left())))  # argv: the byte 0xe9
    lines = err.strip().splitlines()
    report(rc == 2 and len(lines) == 1, "hostile label", f"--sample $'caf\\xe9': rc {rc}, "
           f"{lines[-1][:100] if lines else 'no message'!r}")
