"""deploy/: the systemd unit, the installer (dry run and its config step), constraints, config.

shellcheck and systemd-analyze run in deploy/ci-checks.sh, not here.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
INSTALL = DEPLOY / "install.sh"
UNIT = DEPLOY / "lgld.service"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="bash not installed")

OS_RELEASES = {
    name: f'PRETTY_NAME="{pretty}"\nID={os_id}\nID_LIKE=debian\nVERSION_CODENAME={name}\n'
    for name, pretty, os_id in [
        ("bookworm", "Debian GNU/Linux 12 (bookworm)", "debian"),
        ("trixie", "Debian GNU/Linux 13 (trixie)", "debian"),
        ("bullseye", "Debian GNU/Linux 11 (bullseye)", "debian"),
        ("noble", "Ubuntu 24.04 LTS", "ubuntu"),
    ]
}


# ------------------------------------------------------------------ unit file


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """A systemd unit as {section: {key: [values...]}} (keys may repeat, e.g. DeviceAllow)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip()
        pending = ""
        if not line or line[0] in "#;":
            continue
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"directive outside a section: {line}"
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {line}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


REQUIRED = {
    "Service": {
        "Type": "notify",
        "NotifyAccess": "main",
        "Restart": "on-failure",
        "User": "lgld",
        "Group": "lgld",
        "WorkingDirectory": "/var/lib/lgld",
        "StateDirectory": "lgld",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "ProtectKernelTunables": "yes",
        "ProtectKernelModules": "yes",
        "ProtectKernelLogs": "yes",
        "ProtectControlGroups": "yes",
        "RestrictNamespaces": "yes",
        "RestrictRealtime": "yes",
        "LockPersonality": "yes",
        "DevicePolicy": "closed",
        "StandardOutput": "journal",
    },
    "Install": {"WantedBy": "multi-user.target"},
}


def unit_problems(text: str) -> list[str]:
    """Everything the lgld unit must have and does not (empty list: fine)."""
    unit = parse_unit(text)
    problems = []

    def last(section: str, key: str) -> str | None:
        values = unit.get(section, {}).get(key)
        return values[-1] if values else None

    for section, keys in REQUIRED.items():
        for key, want in keys.items():
            if last(section, key) != want:
                problems.append(f"[{section}] {key}={last(section, key)!r}, want {want!r}")
    for key in ("StartLimitIntervalSec", "StartLimitBurst"):
        if last("Unit", key) is None:
            problems.append(f"[Unit] {key} missing (start limits belong in [Unit])")
    for key in ("WatchdogSec", "RestartSec"):
        value = last("Service", key) or "0"
        if not value.isdigit() or int(value) <= 0:
            problems.append(f"[Service] {key}={value!r} is not a positive number of seconds")
    exec_start = (last("Service", "ExecStart") or "").split()
    if exec_start[:1] != ["/opt/lgld/venv/bin/lgld-run"]:
        problems.append(f"ExecStart does not run the venv's lgld-run: {exec_start}")
    if "--config" not in exec_start or exec_start[exec_start.index("--config") + 1 :][:1] != [
        "/etc/lgld/lgld.toml"
    ]:
        problems.append("ExecStart does not pass --config /etc/lgld/lgld.toml")
    rw_paths = " ".join(unit.get("Service", {}).get("ReadWritePaths", [])).split()
    if "/var/lib/lgld" not in rw_paths:
        problems.append("ReadWritePaths lacks /var/lib/lgld")
    if last("Service", "PrivateDevices") not in (None, "no", "false"):
        problems.append("PrivateDevices would hide the camera")
    devices = {v.split()[0] for v in unit.get("Service", {}).get("DeviceAllow", [])}
    for dev in ("char-video4linux", "char-media", "char-dma_heap"):
        if dev not in devices:
            problems.append(f"DeviceAllow lacks {dev} (libcamera on a Pi 5 needs it)")
    groups = " ".join(unit.get("Service", {}).get("SupplementaryGroups", [])).split()
    if "video" not in groups:
        problems.append("SupplementaryGroups lacks video")
    env = " ".join(unit.get("Service", {}).get("Environment", [])).split()
    if "PYTHONUNBUFFERED=1" not in env:
        problems.append("Environment lacks PYTHONUNBUFFERED=1")
    families = " ".join(unit.get("Service", {}).get("RestrictAddressFamilies", [])).split()
    if families and not {"AF_INET", "AF_UNIX", "AF_NETLINK"} <= set(families):
        problems.append(f"RestrictAddressFamilies blocks HTTP/sd_notify/udev: {families}")
    return problems


def test_unit_has_every_required_directive():
    assert unit_problems(UNIT.read_text()) == []


@pytest.mark.parametrize(
    "old, new, complaint",
    [
        ("Type=notify", "Type=simple", "Type"),
        ("WatchdogSec=30", "WatchdogSec=0", "WatchdogSec"),
        ("ProtectSystem=strict", "ProtectSystem=full", "ProtectSystem"),
        ("DeviceAllow=char-dma_heap rw", "", "char-dma_heap"),
        ("StartLimitBurst=5", "", "StartLimitBurst"),
        ("PrivateDevices=no", "PrivateDevices=yes", "PrivateDevices"),
    ],
)
def test_unit_check_catches_a_broken_unit(old, new, complaint):
    text = UNIT.read_text()
    assert old in text
    problems = unit_problems(text.replace(old, new))
    assert any(complaint in p for p in problems), problems


def test_watchdog_leaves_room_for_startup():
    unit = parse_unit(UNIT.read_text())["Service"]
    # lgld-run pings every WatchdogSec/2; start-up (model load, camera) is bounded separately.
    assert int(unit["TimeoutStartSec"][-1]) >= int(unit["WatchdogSec"][-1])


# ------------------------------------------------------------------ installer


def run_install(tmp_path: Path, *args: str, release: str = "bookworm", **env: str):
    os_release = tmp_path / f"os-release-{release}"
    os_release.write_text(OS_RELEASES[release])
    full_env = {**os.environ, "LGLD_OS_RELEASE": str(os_release), **env}
    return subprocess.run(
        ["bash", str(INSTALL), *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=60,
    )


def test_dry_run_prints_the_whole_plan_and_changes_nothing(tmp_path):
    watched = ("/opt/lgld", "/etc/lgld", "/var/lib/lgld", "/etc/systemd/system/lgld.service")
    before = {p: Path(p).exists() for p in watched}
    proc = run_install(tmp_path, "--dry-run")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout + proc.stderr
    for step in (
        "DRY RUN",
        "python3-picamera2",
        "--no-install-recommends",
        "--system-site-packages",
        "constraints-bookworm.txt",
        "numpy<2",
        "opencv-python-headless>=4.8,<4.12",
        "pip install",
        "/etc/lgld/lgld.toml",
        "/etc/systemd/system/lgld.service",
        "systemctl daemon-reload",
        "systemctl enable",
        "http://",
    ):
        assert step in out, f"plan does not mention {step!r}"
    # Steps that depend on this machine's state: the command, or why it is skipped.
    assert ("-m venv --system-site-packages /opt/lgld/venv" in out) or ("venv exists" in out)
    assert ("useradd --system" in out) or ("user lgld exists" in out)
    assert ("usermod -a -G video lgld" in out) or ("in group video" in out)
    assert "torch" not in out.replace("no torch", "")
    after = {p: Path(p).exists() for p in before}
    assert after == before, "a dry run changed the system"


def test_dry_run_on_trixie_uses_the_numpy2_constraints(tmp_path):
    proc = run_install(tmp_path, "--dry-run", release="trixie")
    assert proc.returncode == 0, proc.stderr
    assert "expecting Python 3.13" in proc.stdout
    assert "constraints-trixie.txt" in proc.stdout
    assert "numpy>=2" in proc.stdout


@pytest.mark.parametrize("release", ["bullseye", "noble"])
def test_unsupported_release_is_one_clear_error(tmp_path, release):
    proc = run_install(tmp_path, "--dry-run", release=release)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "unsupported" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_options_are_rejected(tmp_path):
    proc = run_install(tmp_path, "--frobnicate")
    assert proc.returncode != 0 and "unknown option: --frobnicate" in proc.stderr
    proc = run_install(tmp_path, "--purge", "--dry-run")
    assert proc.returncode != 0 and "--purge only goes with --uninstall" in proc.stderr


def test_uninstall_dry_run(tmp_path):
    proc = run_install(tmp_path, "--uninstall", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "uninstall lgld" in proc.stdout
    proc = run_install(tmp_path, "--uninstall", "--purge", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "purge" in proc.stdout


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv"
)
def test_real_install_refuses_to_run_without_root(request):
    # a copy in a folder `nobody` can read: the checkout may sit in a private (0700) home
    scratch = Path(tempfile.mkdtemp(prefix="lgld-deploy-"))
    request.addfinalizer(lambda: shutil.rmtree(scratch, ignore_errors=True))
    scratch.chmod(0o755)
    shutil.copytree(INSTALL.parent, scratch / "deploy")
    for path in (scratch / "deploy").rglob("*"):
        path.chmod(0o755 if path.is_dir() or os.access(path, os.X_OK) else 0o644)
    (scratch / "deploy").chmod(0o755)
    os_release = scratch / "os-release"
    os_release.write_text(OS_RELEASES["bookworm"])
    proc = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "bash",
         str(scratch / "deploy" / INSTALL.name)],
        capture_output=True,
        text=True,
        env={**os.environ, "LGLD_OS_RELEASE": str(os_release)},
        timeout=60,
    )
    assert proc.returncode != 0
    assert "run as root" in proc.stderr and "==>" not in proc.stdout


# The config step for real, in a scratch /etc: never overwrite a config the user changed.

CONFIG_STEP = r"""
source "$INSTALL"
# Scratch paths and no chown (the test may run unprivileged).
ETC_DIR=$SCRATCH/etc; CONF=$ETC_DIR/lgld.toml; CONF_SUM=$ETC_DIR/.lgld.toml.default.sha256
SCRIPT_DIR=$SCRATCH/deploy; PREFIX=$SCRATCH/opt; STATE_DIR=$SCRATCH/state
UNIT=$SCRATCH/lgld.service; SVC_USER=lgld-test-nonexistent
install() {
    local a=()
    while (($#)); do case $1 in -o | -g) shift 2 ;; *) a+=("$1"); shift ;; esac; done
    command install "${a[@]}"
}
chown() { :; }
systemd_running() { return 1; }
mkdir -p "$ETC_DIR"
"$@"
"""


def config_step(scratch: Path, *call: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "INSTALL": str(INSTALL), "SCRATCH": str(scratch)}
    return subprocess.run(
        ["bash", "-c", CONFIG_STEP, "config-step", *call],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_config_is_installed_updated_or_kept(tmp_path):
    shipped = tmp_path / "deploy" / "lgld.toml"
    shipped.parent.mkdir()
    conf = tmp_path / "etc" / "lgld.toml"
    checksum = tmp_path / "etc" / ".lgld.toml.default.sha256"
    new = tmp_path / "etc" / "lgld.toml.new"

    shipped.write_text("# default v1\n")
    proc = config_step(tmp_path, "install_config")  # 1. absent: installed
    assert proc.returncode == 0, proc.stderr
    assert conf.read_text() == "# default v1\n"
    assert checksum.read_text().strip() == sha256(shipped)

    proc = config_step(tmp_path, "install_config")  # 2. rerun: idempotent
    assert proc.returncode == 0 and "current default" in proc.stdout
    assert conf.read_text() == "# default v1\n" and not new.exists()

    shipped.write_text("# default v2\n")  # 3. new default, config untouched: replaced
    proc = config_step(tmp_path, "install_config")
    assert proc.returncode == 0 and "unmodified older default" in proc.stdout
    assert conf.read_text() == "# default v2\n" and not new.exists()
    assert checksum.read_text().strip() == sha256(shipped)

    conf.write_text("# default v2\n# my edit\n")  # 4. user edited it, same default: kept
    proc = config_step(tmp_path, "install_config")
    assert proc.returncode == 0 and "has not changed" in proc.stdout
    assert conf.read_text() == "# default v2\n# my edit\n" and not new.exists()

    shipped.write_text("# default v3\n")  # 5. edited, and a new default: kept, .new written
    proc = config_step(tmp_path, "install_config")
    assert proc.returncode == 0 and "modified by you" in proc.stdout
    assert conf.read_text() == "# default v2\n# my edit\n"
    assert new.read_text() == "# default v3\n"

    proc = config_step(tmp_path, "uninstall")  # 6. uninstall keeps the edited config
    assert proc.returncode == 0, proc.stderr
    assert conf.exists() and "kept your modified" in proc.stdout


def test_uninstall_removes_an_unmodified_config_and_purge_removes_everything(tmp_path):
    (tmp_path / "deploy").mkdir()
    (tmp_path / "deploy" / "lgld.toml").write_text("# default\n")
    assert config_step(tmp_path, "install_config").returncode == 0
    (tmp_path / "opt" / "venv").mkdir(parents=True)
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "results.jsonl").write_text("{}\n")

    proc = config_step(tmp_path, "uninstall")
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "etc" / "lgld.toml").exists()
    assert not (tmp_path / "opt").exists()
    assert (tmp_path / "state" / "results.jsonl").exists(), "data must survive --uninstall"

    proc = config_step(tmp_path, "eval", "PURGE=1; uninstall")
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "state").exists() and not (tmp_path / "etc").exists()


# ------------------------------------------------------------------ pip constraints


def constraint_specs(name: str) -> dict[str, str]:
    specs: dict[str, str] = {}
    for line in (DEPLOY / name).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            from packaging.requirements import Requirement

            req = Requirement(line)
            specs[req.name] = str(req.specifier)
    return specs


def test_bookworm_constraints_keep_numpy_1():
    from packaging.specifiers import SpecifierSet

    specs = constraint_specs("constraints-bookworm.txt")
    numpy, opencv = SpecifierSet(specs["numpy"]), SpecifierSet(specs["opencv-python-headless"])
    assert "1.24.2" in numpy and "2.0.0" not in numpy  # apt's numpy on Bookworm is 1.24.2
    # 4.11.0.86 accepts numpy>=1.23.5 on py3.11; 4.12.0.88 requires numpy>=2.
    assert "4.11.0.86" in opencv and "4.12.0.88" not in opencv
    assert "onnxruntime" in specs and "torch" not in specs


def test_trixie_constraints_keep_numpy_2():
    from packaging.specifiers import SpecifierSet

    specs = constraint_specs("constraints-trixie.txt")
    assert "2.2.4" in SpecifierSet(specs["numpy"]) and "1.26.4" not in SpecifierSet(specs["numpy"])
    assert "4.12.0.88" in SpecifierSet(specs["opencv-python-headless"])


# ------------------------------------------------------------------ deploy/lgld.toml

SHIPPED_CONFIG = DEPLOY / "lgld.toml"
# The only settings where the service's config differs from `lgld-run --print-config`'s
# defaults; each is marked "SERVICE:" in deploy/lgld.toml and explained in docs/deploy.md.
SERVICE_OVERRIDES = {
    ("http", "listen"): "127.0.0.1:8080",
    ("http", "snapshot_dir"): "/var/lib/lgld/snapshots",
    ("log", "path"): "/var/lib/lgld/results.jsonl",
    ("display", "preview"): "off",
}

needs_runtime_config = pytest.mark.skipif(
    not (REPO / "runtime" / "config.py").exists(),
    reason="runtime/config.py (lgld-run's config loader) does not exist yet",
)


def as_items(cfg) -> dict[tuple[str, str], object]:
    from dataclasses import asdict

    return {(s, k): v for s, section in asdict(cfg).items() for k, v in section.items()}


@needs_runtime_config
def test_shipped_config_is_the_defaults_plus_documented_service_overrides():
    from lgld.runtime.config import RunConfig, load_config

    shipped = as_items(load_config(SHIPPED_CONFIG).validate())
    defaults = as_items(RunConfig())
    differing = {key: value for key, value in shipped.items() if defaults[key] != value}
    assert differing == SERVICE_OVERRIDES
    text = SHIPPED_CONFIG.read_text()
    assert text.count("# SERVICE:") == len(SERVICE_OVERRIDES)


@needs_runtime_config
def test_shipped_config_spells_out_every_setting():
    import tomllib

    from lgld.runtime.config import RunConfig

    with SHIPPED_CONFIG.open("rb") as fh:
        written = {(s, k) for s, table in tomllib.load(fh).items() for k in table}
    assert written == set(as_items(RunConfig()))


@needs_runtime_config
def test_service_paths_in_config_are_writable_under_the_unit():
    from lgld.runtime.config import load_config, parse_listen

    cfg = load_config(SHIPPED_CONFIG)
    unit = parse_unit(UNIT.read_text())["Service"]
    writable = [Path(p) for v in unit["ReadWritePaths"] for p in v.split()]
    for path in (cfg.log.path, cfg.http.snapshot_dir):
        assert any(Path(path).is_relative_to(w) for w in writable), path
    assert parse_listen(cfg.http.listen)[0] == "127.0.0.1"  # LAN access is opt-in


LGLD_RUN = "import sys; from lgld.runtime.cli import main; sys.exit(main())"


@needs_runtime_config
def test_print_config_of_the_shipped_file_loads_back_unchanged(tmp_path):
    if not (REPO / "runtime" / "cli.py").exists():
        pytest.skip("runtime/cli.py (lgld-run) does not exist yet")
    import sys

    from lgld.runtime.config import load_config

    proc = subprocess.run(
        [sys.executable, "-c", LGLD_RUN, "--config", str(SHIPPED_CONFIG), "--print-config"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    printed = tmp_path / "printed.toml"
    printed.write_text(proc.stdout)
    assert as_items(load_config(printed)) == as_items(load_config(SHIPPED_CONFIG))


def test_import_check_stops_on_a_numpy_abi_break(tmp_path):
    """The installer's import check fails when apt's picamera2 breaks under the venv's NumPy."""
    import sys

    venv_bin = tmp_path / "venv" / "bin"
    venv_bin.mkdir(parents=True)
    # A wrapper, not a symlink: Python finds its venv (pyvenv.cfg) next to the path it was
    # started by, so a symlink in tmp would lose this venv's site-packages.
    wrapper = venv_bin / "python"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    wrapper.chmod(0o755)
    fake = tmp_path / "site" / "picamera2"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(
        'raise ValueError("numpy.dtype size changed, may indicate binary incompatibility")\n'
    )
    script = (
        'source "$INSTALL"; VENV=$SCRATCH/venv; apt_installed() { return "$APT"; }; check_imports'
    )

    def check(apt_has_picamera2: bool, pythonpath: str) -> subprocess.CompletedProcess:
        env = {
            **os.environ,
            "INSTALL": str(INSTALL),
            "SCRATCH": str(tmp_path),
            "APT": "0" if apt_has_picamera2 else "1",
            "PYTHONPATH": pythonpath,
        }
        return subprocess.run(
            ["bash", "-c", script], capture_output=True, text=True, env=env, timeout=120
        )

    broken = check(True, str(tmp_path / "site"))
    assert broken.returncode != 0
    assert "picamera2 does not import" in broken.stderr
    assert "numpy.dtype size changed" in broken.stderr
    fine = check(False, "")  # no picamera2 from apt (not a Pi): reported, not fatal
    assert fine.returncode == 0, fine.stderr
    assert "onnxruntime" in fine.stdout and "picamera2 not importable" in fine.stdout


def test_command_check_runs_the_installed_lgld_run_and_stops_when_it_fails(tmp_path):
    """The installer runs the venv's lgld-run (--version, --check on the demo source) and stops
    with the doctor's output when it fails: an import error in a subpackage cannot pass."""
    venv_bin = tmp_path / "venv" / "bin"
    venv_bin.mkdir(parents=True)
    fake = venv_bin / "lgld-run"
    calls = tmp_path / "calls"
    script = 'source "$INSTALL"; VENV=$SCRATCH/venv; check_commands'
    env = {**os.environ, "INSTALL": str(INSTALL), "SCRATCH": str(tmp_path)}

    def check(body: str) -> subprocess.CompletedProcess:
        fake.write_text(f'#!/bin/sh\necho "$@" >> "{calls}"\n{body}\n')
        fake.chmod(0o755)
        return subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env,
                              timeout=60)

    ok = check('case "$1" in --version) echo "lgld-run 9.9";;'
               ' *) echo "lgld-run --check: all good";; esac')
    assert ok.returncode == 0, ok.stderr
    assert "lgld-run 9.9" in ok.stdout and "all good" in ok.stdout
    assert calls.read_text().splitlines() == ["--version", "--check --source demo --preview off"]
    broken = check('[ "$1" = --version ] && exit 0\n'
                   "echo \"ModuleNotFoundError: No module named 'lgld.runtime.cells'\" >&2; exit 1")
    assert broken.returncode != 0
    assert "lgld.runtime.cells" in broken.stderr and "--check --source demo failed" in broken.stderr
    dead = check("echo 'Traceback: boom' >&2; exit 1")
    assert dead.returncode != 0 and "does not start: Traceback: boom" in dead.stderr
