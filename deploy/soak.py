"""Bounded soak and fault run of lgld-run on loopback: prints what held; exit 1 if anything broke.

Runs the real ``lgld-run`` (demo source, the shipped ``all-128`` model) in a child process with
the service unit's environment (``MALLOC_ARENA_MAX`` from deploy/lgld.service), then:

1. viewers: hundreds of /stream.mjpg connections, several at a time, each dropped abruptly
   (TCP reset) after its first frame; the child's RSS must stay flat after a warm-up; then
   more viewers at once than ``max_streams``: the extra ones get 503;
2. snapshot flood: POST /api/snapshot as fast as possible; the rate limit and the folder cap hold;
3. bad requests: a foreign Host, a foreign Origin, the same host on another port as Origin, a
   text/plain POST, Content-Length "abc" and "-5", a client reset mid-body: refused at once,
   and no traceback anywhere in the child's stderr;
4. kill -9 while the log is being written: every line parses, a restart appends whole lines;
5. a full disk (root only: a 64 KiB tmpfs): lgld-run stops with exit 5, and after the disk is
   made larger a restart appends; every line parses;
6. a huge image: a valid 9000x9000 PNG (about a MB; 243 MB decoded) beside a good one in
   an ``images:`` batch is skipped unread, the good one is classified, and the peak RSS of
   lgld-run stays far below the decoded size;
7. hostile logs (``soak_logs.py``): lgld-report and lgld-dataset on logs whose texts, class
   names and crop paths try to leave their folder or exhaust memory, and a non-UTF-8
   ``--sample``: each refused or contained, nothing read or written outside.

Everything is bounded in count and time (well under 2 minutes) and stops by itself; only
127.0.0.1 is used. Usage: ``python deploy/soak.py`` (``--quick`` for fewer connections).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from soak_logs import hostile_logs

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "deploy" / "lgld.service"
DEADLINE_S = 110.0  # the whole run; every phase checks what is left
RSS_GROWTH_LIMIT_MB = 20.0  # after warm-up
MAX_STREAMS = 16
VIEWERS_AT_ONCE = 8  # below MAX_STREAMS: a reset stream frees its slot only at its next frame


class Soak:
    def __init__(self, workdir: Path, connections: int, unit_env: bool = True) -> None:
        self.dir = workdir
        self.connections = connections
        self.started = time.monotonic()
        self.held: list[bool] = []
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if unit_env:
            self.env.update(unit_environment())
        else:
            self.env.pop("MALLOC_ARENA_MAX", None)

    # -- reporting ---------------------------------------------------------------------------

    def report(self, ok: bool | None, name: str, detail: str) -> None:
        mark = "held" if ok else "FAIL" if ok is False else "skip"
        print(f"[{mark}] {name}: {detail}", flush=True)
        if ok is not None:
            self.held.append(ok)

    def left(self) -> float:
        return DEADLINE_S - (time.monotonic() - self.started)

    # -- the child ---------------------------------------------------------------------------

    def config(self, **http: object) -> Path:
        lines = ["[source]", "width = 320", "height = 240", "fps = 30.0", "", "[http]"]
        lines += [f"{k} = {json.dumps(v)}" for k, v in http.items()]
        path = self.dir / "soak.toml"
        path.write_text("\n".join(lines) + "\n")
        return path

    def lgld_run(self, *args: str, stderr: Path | None = None) -> subprocess.Popen:
        command = [sys.executable, "-m", "lgld.runtime.cli", "--model", "all-128",
                   "--preview", "off", "--threads", "1", *args]
        err = open(stderr, "ab") if stderr else subprocess.PIPE  # noqa: SIM115 - child owns it
        return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err, env=self.env,
                                cwd=self.dir)

    # -- phases --------------------------------------------------------------------------------

    def live(self) -> None:
        port = free_port()
        log = self.dir / "live.jsonl"
        stderr = self.dir / "live.stderr"
        snaps = self.dir / "snaps"
        config = self.config(snapshot_dir=str(snaps), snapshot_max_mb=1,
                             snapshot_min_interval_s=0.5, max_streams=MAX_STREAMS)
        child = self.lgld_run("--config", str(config), "--source", "demo", "--http",
                              f"127.0.0.1:{port}", "--log", str(log), stderr=stderr)
        try:
            if not wait_healthy(port, min(40.0, self.left())):
                self.report(False, "start", f"lgld-run did not become healthy; stderr: "
                            f"{tail(stderr)}")
                return
            print(f"soak: lgld-run pid {child.pid} on 127.0.0.1:{port} "
                  f"(MALLOC_ARENA_MAX={self.env.get('MALLOC_ARENA_MAX', 'unset')})", flush=True)
            self.viewers(child.pid, port)
            self.snapshot_flood(port, snaps)
            self.bad_requests(port)
            alive = child.poll() is None and http_status(port, "GET", "/healthz") == 200
            self.report(alive, "alive", "lgld-run still healthy after all of the above"
                        if alive else f"lgld-run died or is unhealthy: {tail(stderr)}")
            self.kill_mid_write(child, log)
        finally:
            if child.poll() is None:
                child.kill()
            child.wait(10)
        text = stderr.read_text(errors="replace")
        ok = "Traceback" not in text
        self.report(ok, "journal", f"no traceback in lgld-run's stderr ({len(text.splitlines())} "
                    "lines)" if ok else "a traceback in stderr:\n" + text[-2000:])

    def viewers(self, pid: int, port: int) -> None:
        statuses: dict[str, int] = {}
        lock = threading.Lock()

        def viewer(_: int) -> None:
            for _ in range(50):  # a reset viewer's slot is freed when its next frame is due
                status = stream_and_drop(port)
                if status != "503" or time.monotonic() > give_up:
                    break
                with lock:
                    statuses["503 then retried"] = statuses.get("503 then retried", 0) + 1
                time.sleep(0.1)
            with lock:
                statuses[status] = statuses.get(status, 0) + 1

        warmup = max(8, self.connections // 6)
        t0 = time.monotonic()
        give_up = t0 + min(45.0, self.left() - 40)
        with ThreadPoolExecutor(VIEWERS_AT_ONCE) as pool:
            list(pool.map(viewer, range(warmup)))
            time.sleep(0.5)
            before, threads_before = rss_mb(pid), threads(pid)
            list(pool.map(viewer, range(self.connections - warmup)))
        time.sleep(1.0)  # let the server notice the resets
        after, threads_after = rss_mb(pid), threads(pid)
        growth = after - before
        counts = ", ".join(f"{k} x{v}" for k, v in sorted(statuses.items()))
        answered = statuses.get("200", 0) + statuses.get("503", 0)
        ok = (growth <= RSS_GROWTH_LIMIT_MB and answered == self.connections
              and statuses.get("200", 0) >= warmup)
        self.report(ok, "viewers", f"{self.connections} abrupt /stream.mjpg connections, "
                    f"{VIEWERS_AT_ONCE} at a time, in {time.monotonic() - t0:.1f} s ({counts}); "
                    f"RSS {before:.1f} MB after {warmup} warm-up connections -> {after:.1f} MB "
                    f"({growth:+.1f} MB, limit +{RSS_GROWTH_LIMIT_MB:g}); threads "
                    f"{threads_before} -> {threads_after}")
        time.sleep(1.0)  # the reset viewers' slots are free again
        held, refused = [], 0
        for _ in range(MAX_STREAMS + 4):
            sock, status = open_stream(port)
            held.append(sock)
            refused += status == "503"
        for sock in held:
            reset(sock)
        self.report(refused >= 4, "viewer cap", f"{MAX_STREAMS + 4} viewers at once with "
                    f"max_streams = {MAX_STREAMS}: {refused} got 503")

    def snapshot_flood(self, port: int, snaps: Path) -> None:
        statuses: dict[int, int] = {}
        lock = threading.Lock()
        t0 = time.monotonic()

        def flood(_: int) -> None:
            while time.monotonic() - t0 < 4.0:
                status = http_status(port, "POST", "/api/snapshot")
                with lock:
                    statuses[status] = statuses.get(status, 0) + 1

        with ThreadPoolExecutor(4) as pool:
            list(pool.map(flood, range(4)))
        size = sum(p.stat().st_size for p in snaps.glob("*")) if snaps.exists() else 0
        total = sum(statuses.values())
        ok = statuses.get(200, 0) >= 2 and statuses.get(429, 0) > 0 and size <= 1_000_000
        saved, refused = statuses.get(200, 0), statuses.get(429, 0)
        self.report(ok, "snapshots", f"{total} POSTs in 4 s, 4 at a time: {saved} saved, "
                    f"{refused} refused (429), {total - saved - refused} other; folder "
                    f"{size / 1e6:.2f} MB "
                    "(cap 1 MB)")

    def bad_requests(self, port: int) -> None:
        cases = [
            ("foreign Host", b"GET /api/latest HTTP/1.1\r\nHost: evil.example\r\n\r\n", b"403"),
            ("foreign Origin", b"POST /api/snapshot HTTP/1.1\r\nHost: 127.0.0.1\r\n"
             b"Origin: http://evil.example\r\nContent-Length: 0\r\n\r\n", b"403"),
            ("Origin on another port", f"POST /api/snapshot HTTP/1.1\r\nHost: 127.0.0.1:{port}"
             "\r\nOrigin: http://127.0.0.1:3000\r\nContent-Type: application/json\r\n"
             "Content-Length: 0\r\n\r\n".encode(), b"403"),
            ("text/plain POST", b"POST /api/snapshot HTTP/1.1\r\nHost: 127.0.0.1\r\n"
             b"Content-Type: text/plain\r\nContent-Length: 0\r\n\r\n", b"415"),
            ("Content-Length abc", b"POST /api/snapshot HTTP/1.1\r\nHost: 127.0.0.1\r\n"
             b"Content-Length: abc\r\n\r\n", b"400"),
            ("Content-Length -5", b"POST /api/snapshot HTTP/1.1\r\nHost: 127.0.0.1\r\n"
             b"Content-Length: -5\r\n\r\n", b"400"),
        ]
        answers = []
        ok = True
        for name, data, expected in cases:
            t0 = time.monotonic()
            try:
                reply = exchange(port, data, timeout=5.0)[:12]
            except OSError as exc:
                reply = f"no answer ({exc})".encode()
            got = reply[9:12]
            ok &= got == expected
            answers.append(f"{name} -> {got.decode(errors='replace') or reply.decode()} "
                           f"in {1000 * (time.monotonic() - t0):.0f} ms")
        reset_mid_body(port)
        self.report(ok, "bad requests", "; ".join(answers) + "; a client reset mid-body")

    def kill_mid_write(self, child: subprocess.Popen, log: Path) -> None:
        lines_before = count_lines(log)
        time.sleep(0.3)
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        bad, n = unparsable(log)
        restart = self.lgld_run("--config", str(self.config()), "--source", "demo", "--frames",
                                "3", "--log", str(log))
        _, err = restart.communicate(timeout=max(5.0, min(40.0, self.left())))
        bad2, n2 = unparsable(log)
        ok = not bad and not bad2 and n2 == n + 3 and restart.returncode == 0
        self.report(ok, "kill -9 mid-write", f"killed while writing (>= {lines_before} lines): "
                    f"{n} lines, {len(bad)} unparsable; a restart appended {n2 - n} (rc "
                    f"{restart.returncode}), {len(bad2)} unparsable"
                    + ("" if ok else f"; stderr {err.decode(errors='replace')[-300:]}"))

    def full_disk(self) -> None:
        if os.geteuid() != 0:
            self.report(None, "full disk", "needs root to mount a 64 KiB tmpfs (run as root to "
                        "include it)")
            return
        mount = self.dir / "full"
        mount.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            self.report(None, "full disk", f"cannot mount a tmpfs here ({done.stderr.strip()})")
            return
        try:
            log = mount / "r.jsonl"
            config = str(self.config())
            first = self.lgld_run("--config", config, "--source", "demo", "--frames", "400",
                                  "--log", str(log))
            _, err1 = first.communicate(timeout=max(5.0, min(40.0, self.left())))
            bad1, n1 = unparsable(log)
            subprocess.run(["mount", "-o", "remount,size=1m", str(mount)], check=True)
            second = self.lgld_run("--config", config, "--source", "demo", "--frames", "3",
                                   "--log", str(log))
            _, err2 = second.communicate(timeout=max(5.0, min(40.0, self.left())))
            bad2, n2 = unparsable(log)
            last1 = (err1.decode(errors="replace").strip().splitlines() or ["?"])[-1]
            ok = (first.returncode == 5 and not bad1 and not bad2 and n2 == n1 + 3
                  and second.returncode == 0 and b"Traceback" not in err1 + err2)
            self.report(ok, "full disk", f"64 KiB tmpfs: rc {first.returncode} after {n1} whole "
                        f"lines ({len(bad1)} unparsable; {last1!r}); after growing it, a restart "
                        f"appended {n2 - n1} (rc {second.returncode}), {len(bad2)} unparsable")
        finally:
            subprocess.run(["umount", str(mount)], capture_output=True)

    def huge_image(self) -> None:
        folder = self.dir / "huge"
        folder.mkdir()
        side = 9000
        write_blank_png(folder / "b-huge.png", side, side)
        good = REPO / "runtime" / "assets"
        (folder / "a-good.jpg").write_bytes(next(good.glob("all-*.jpg")).read_bytes())
        log = folder / "r.jsonl"
        child = self.lgld_run("--config", str(self.config()), "--source", f"images:{folder}",
                              "--log", str(log))
        peak_mb = 0.0
        while child.poll() is None:  # sample the peak while it runs (VmHWM is gone at exit)
            with contextlib.suppress(OSError, AttributeError):
                text = Path(f"/proc/{child.pid}/status").read_text()
                peak_mb = int(re.search(r"VmHWM:\s+(\d+)", text).group(1)) / 1024
            time.sleep(0.05)
        _, err = child.communicate(timeout=10)
        records = [json.loads(line) for line in log.read_text().splitlines()]
        skipped = [r for r in records if r.get("event") == "skip"]
        classified = [r for r in records if r.get("event") is None]
        decoded_mb = side * side * 3 / 1e6
        ok = (child.returncode == 0 and len(skipped) == 1 and len(classified) == 1
              and peak_mb < decoded_mb / 2)
        self.report(ok, "huge image", f"{(folder / 'b-huge.png').stat().st_size / 1e3:.0f} KB PNG "
                    f"of {side}x{side} ({decoded_mb:.0f} MB decoded) skipped "
                    f"({skipped[0]['reason'] if skipped else 'not skipped'!r}), the good image "
                    f"classified ({len(classified)}), rc {child.returncode}, peak RSS "
                    f"{peak_mb:.0f} MB" + ("" if ok else f"; {err.decode(errors='replace')}"))

    def run(self) -> int:
        self.huge_image()
        self.live()
        if self.left() > 15:
            self.full_disk()
        else:
            self.report(False, "full disk", "no time left")
        if self.left() > 20:  # about 10 s on an idle machine
            hostile_logs(self.report, self.dir, self.env, self.left, write_blank_png)
        else:
            self.report(False, "hostile logs", "no time left")
        spent = time.monotonic() - self.started
        verdict = "all held" if all(self.held) else f"{self.held.count(False)} did NOT hold"
        print(f"soak: {verdict} ({len(self.held)} checks) in {spent:.0f} s", flush=True)
        return 0 if all(self.held) and spent < 120 else 1


# -- helpers -------------------------------------------------------------------------------------


def unit_environment() -> dict[str, str]:
    """The Environment= settings of deploy/lgld.service that shape memory (MALLOC_*)."""
    env = {}
    for line in UNIT.read_text().splitlines():
        if line.startswith("Environment="):
            key, _, value = line.split("=", 1)[1].partition("=")
            if key.startswith("MALLOC_"):
                env[key] = value
    return env


def write_blank_png(path: Path, width: int, height: int) -> None:
    """A valid, white RGB PNG of any size, compressed row by row (little memory)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    rows = (b"\0" + b"\xff" * (3 * width)) * 100
    packer = zlib.compressobj(1)
    body = b"".join(packer.compress(rows) for _ in range(height // 100))
    body += packer.compress(rows[: len(rows) // 100 * (height % 100)]) + packer.flush()
    path.write_bytes(b"\x89PNG\r\n\x1a\n"
                     + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", body) + chunk(b"IEND", b""))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmRSS:\s+(\d+)", text).group(1)) / 1024


def threads(pid: int) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"Threads:\s+(\d+)", text).group(1))


def exchange(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
        reply = b""
        while b"\r\n\r\n" not in reply:
            chunk = sock.recv(4096)
            if not chunk:
                break
            reply += chunk
        return reply


def http_status(port: int, method: str, path: str) -> int:
    try:
        kind = "Content-Type: application/json\r\n" if method == "POST" else ""
        reply = exchange(port, f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{kind}"
                         "Content-Length: 0\r\nConnection: close\r\n\r\n".encode())
        return int(reply[9:12])
    except (OSError, ValueError):
        return 0


def wait_healthy(port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if http_status(port, "GET", "/healthz") == 200:
            return True
        time.sleep(0.2)
    return False


def reset(sock: socket.socket) -> None:
    """Close with a TCP reset (what a vanished client looks like)."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def stream_and_drop(port: int) -> str:
    """Open /stream.mjpg, read its response head (the server is then sending the first frame),
    then reset the connection."""
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    except OSError:
        return "connect failed"
    try:
        sock.sendall(b"GET /stream.mjpg HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        data = b""
        while len(data) < 4096 and b"\r\n\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
        return data[9:12].decode(errors="replace") or "no answer"
    except OSError:
        return "error"
    finally:
        reset(sock)


def open_stream(port: int) -> tuple[socket.socket, str]:
    """A viewer that stays: the socket (to be reset later) and its HTTP status."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(b"GET /stream.mjpg HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    head = b""
    with contextlib.suppress(OSError):
        while b"\r\n" not in head:
            chunk = sock.recv(1024)
            if not chunk:
                break
            head += chunk
    return sock, head[9:12].decode(errors="replace")


def reset_mid_body(port: int) -> None:
    with contextlib.suppress(OSError):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(b"POST /api/snapshot HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\nabc")
        time.sleep(0.1)
        reset(sock)


def count_lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def unparsable(path: Path) -> tuple[list[str], int]:
    """(lines that are not strict JSON objects, number of lines)."""

    def refuse(name: str) -> None:
        raise ValueError(name)

    bad, lines = [], path.read_bytes().decode("utf-8", "replace").splitlines() if \
        path.exists() else []
    for line in lines:
        try:
            if not isinstance(json.loads(line, parse_constant=refuse), dict):
                bad.append(line)
        except ValueError:
            bad.append(line)
    return bad, len(lines)


def tail(path: Path) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-3:])
    except OSError:
        return "(no stderr)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="soak", description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=360,
                        help="stream connections in total (default 360)")
    parser.add_argument("--quick", action="store_true", help="120 connections")
    parser.add_argument("--without-unit-env", action="store_true",
                        help="do not apply the unit's MALLOC_* settings (to compare)")
    args = parser.parse_args(argv)
    connections = 120 if args.quick else max(16, min(args.connections, 1000))
    with tempfile.TemporaryDirectory(prefix="lgld-soak-") as tmp:
        return Soak(Path(tmp), connections, not args.without_unit_env).run()


if __name__ == "__main__":
    sys.exit(main())
