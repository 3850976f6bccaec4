#!/usr/bin/env bash
# Install lgld as a systemd service on a Raspberry Pi 5 (Raspberry Pi OS Bookworm or Trixie).
#
#   sudo deploy/install.sh              install or update (idempotent), start the service
#   deploy/install.sh --dry-run         print every action instead of doing it (no root needed)
#   sudo deploy/install.sh --uninstall  stop and remove service and venv; keep data and an edited config
#   sudo deploy/install.sh --uninstall --purge   also remove /etc/lgld, /var/lib/lgld, user lgld
#
# What it does: apt packages (python3-picamera2 without recommends, python3-venv, ...), a system
# user `lgld` (groups video, render), a venv in /opt/lgld/venv that sees apt's picamera2
# (--system-site-packages), a runtime-only pip install of lgld from this checkout (no torch)
# pinned so pip never replaces apt's NumPy, /etc/lgld/lgld.toml (never overwriting your edits),
# /var/lib/lgld, and /etc/systemd/system/lgld.service enabled and started. See docs/deploy.md.
set -euo pipefail

# Paths (plain variables so tests can source this file and point them at a scratch dir).
PREFIX=/opt/lgld
VENV=$PREFIX/venv
ETC_DIR=/etc/lgld
CONF=$ETC_DIR/lgld.toml
CONF_SUM=$ETC_DIR/.lgld.toml.default.sha256
STATE_DIR=/var/lib/lgld
UNIT=/etc/systemd/system/lgld.service
SVC_USER=lgld
# apt's interpreter: the one python3-picamera2 is built for (not a pyenv/conda python3 on PATH).
SYS_PY=/usr/bin/python3
# Tests point this at a fake os-release to see the plan for another release.
OS_RELEASE=${LGLD_OS_RELEASE:-/etc/os-release}

SCRIPT_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$SCRIPT_DIR")

DRY_RUN=0
UNINSTALL=0
PURGE=0
START=1

log() { printf '==> %s\n' "$*"; }
warn() { printf 'install.sh: warning: %s\n' "$*" >&2; }
die() {
    printf 'install.sh: error: %s\n' "$*" >&2
    exit 1
}

# Every action that changes the system goes through `run`: printed in --dry-run, executed otherwise.
run() {
    if ((DRY_RUN)); then
        printf '[dry-run] %s\n' "$(quote "$@")"
    else
        "$@"
    fi
}

quote() {
    local out="" arg
    for arg in "$@"; do
        if [[ $arg =~ ^[A-Za-z0-9_./:=@,+-]+$ ]]; then
            out+="$arg "
        else
            out+="'${arg//\'/\'\\\'\'}' "
        fi
    done
    printf '%s' "${out% }"
}

# write_file DEST MODE OWNER:GROUP  (content on stdin)
write_file() {
    local dest=$1 mode=$2 owner=$3 tmp
    if ((DRY_RUN)); then
        printf '[dry-run] write %s (mode %s, %s):\n' "$dest" "$mode" "$owner"
        sed 's/^/[dry-run]     | /'
        return
    fi
    tmp=$(mktemp "$dest.XXXXXX")
    cat >"$tmp"
    chmod "$mode" "$tmp"
    chown "$owner" "$tmp"
    mv -f "$tmp" "$dest"
}

usage() {
    sed -n '2,8p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    cat <<'EOF'

Options:
  --dry-run     print the plan (every command) and change nothing; no root needed
  --uninstall   stop/disable the service, remove the unit and /opt/lgld; keep /var/lib/lgld
                and a modified /etc/lgld/lgld.toml
  --purge       with --uninstall: also remove /etc/lgld, /var/lib/lgld and the user lgld
  --no-start    install and enable, but do not (re)start the service now
  -h, --help    this help
EOF
}

parse_args() {
    while (($#)); do
        case $1 in
        --dry-run) DRY_RUN=1 ;;
        --uninstall) UNINSTALL=1 ;;
        --purge) PURGE=1 ;;
        --no-start) START=0 ;;
        -h | --help)
            usage
            exit 0
            ;;
        *) die "unknown option: $1 (see --help)" ;;
        esac
        shift
    done
    if ((PURGE && !UNINSTALL)); then
        die "--purge only goes with --uninstall"
    fi
}

# ---------------------------------------------------------------- detection

CODENAME="" PRETTY="" PY_EXPECTED="" CONSTRAINTS="" ARCH=""

detect_os() {
    [[ -r $OS_RELEASE ]] || die "cannot read $OS_RELEASE: is this Raspberry Pi OS / Debian?"
    local id="" id_like="" version_codename="" pretty_name=""
    # shellcheck disable=SC1090
    eval "$(. "$OS_RELEASE" && printf 'id=%q id_like=%q version_codename=%q pretty_name=%q' \
        "${ID:-}" "${ID_LIKE:-}" "${VERSION_CODENAME:-}" "${PRETTY_NAME:-}")"
    PRETTY=$pretty_name
    CODENAME=$version_codename
    if [[ $id != debian && $id != raspbian && $id_like != *debian* ]]; then
        die "unsupported OS '$pretty_name': Raspberry Pi OS (Debian) Bookworm or Trixie required"
    fi
    case $CODENAME in
    bookworm) PY_EXPECTED=3.11 ;;
    trixie) PY_EXPECTED=3.13 ;;
    *) die "unsupported release '$pretty_name' ($CODENAME): Bookworm (Python 3.11) or Trixie (Python 3.13) required" ;;
    esac
    CONSTRAINTS=$SCRIPT_DIR/constraints-$CODENAME.txt
    [[ -r $CONSTRAINTS ]] || die "missing $CONSTRAINTS (incomplete checkout?)"

    ARCH=$(dpkg --print-architecture 2>/dev/null || uname -m)
    case $ARCH in
    arm64 | aarch64) ;;
    armhf | armel | armv7l)
        die "32-bit OS ($ARCH): install the 64-bit Raspberry Pi OS (onnxruntime has no 32-bit ARM wheels)"
        ;;
    *) warn "architecture $ARCH is not a Raspberry Pi 5 (arm64): continuing, but no Pi camera here" ;;
    esac

    local model=""
    [[ -r /proc/device-tree/model ]] && model=$(tr -d '\0' </proc/device-tree/model)
    if [[ $model != *"Raspberry Pi 5"* ]]; then
        warn "board is '${model:-unknown}', not a Raspberry Pi 5: continuing"
    fi
}

system_python_version() {
    "$SYS_PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || echo none
}

# ---------------------------------------------------------------- install steps

# apt: python3-picamera2 pulls libcamera and apt's numpy/simplejpeg; the camera needs those
# exact builds, which is why the venv uses --system-site-packages instead of pip's picamera2.
APT_PACKAGES=(python3 python3-venv python3-pip python3-numpy python3-picamera2)

apt_available() { apt-cache show "$1" >/dev/null 2>&1; }
apt_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'; }

install_apt_packages() {
    log "apt packages: ${APT_PACKAGES[*]} (--no-install-recommends)"
    local missing=() pkg
    for pkg in "${APT_PACKAGES[@]}"; do
        apt_installed "$pkg" || missing+=("$pkg")
    done
    if ((${#missing[@]} == 0)); then
        log "all apt packages already installed (no network needed)"
        return
    fi
    if ! run apt-get update; then
        warn "apt-get update failed (offline?): trying the cached package lists"
    fi
    local todo=()
    for pkg in "${missing[@]}"; do
        if [[ $pkg == python3-picamera2 ]] && ! apt_available "$pkg"; then
            warn "python3-picamera2 is not in this system's apt sources (not Raspberry Pi OS?):" \
                "skipping it; only camera:N/video:/images:/demo sources will work"
            if ((DRY_RUN)); then
                printf '[dry-run] (skipped here; on Raspberry Pi OS:) %s\n' \
                    "apt-get install -y --no-install-recommends python3-picamera2"
            fi
            continue
        fi
        todo+=("$pkg")
    done
    ((${#todo[@]})) || return 0
    if ! run env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        "${todo[@]}"; then
        die "apt-get install failed: check the network (apt-get update) and rerun; nothing else was changed"
    fi
}

ensure_user() {
    log "system user $SVC_USER (groups: video, render if present)"
    if getent passwd "$SVC_USER" >/dev/null; then
        log "user $SVC_USER exists (useradd skipped)"
    else
        run useradd --system --user-group --home-dir "$STATE_DIR" --no-create-home \
            --shell /usr/sbin/nologin --comment "lgld service" "$SVC_USER"
    fi
    local group current=""
    current=$(id -nG "$SVC_USER" 2>/dev/null || true)
    for group in video render; do
        if ! getent group "$group" >/dev/null; then
            log "group $group does not exist here: skipped"
        elif [[ " $current " != *" $group "* ]]; then
            run usermod -a -G "$group" "$SVC_USER"
        else
            log "user $SVC_USER is in group $group (usermod skipped)"
        fi
    done
}

ensure_dirs() {
    log "directories $PREFIX, $ETC_DIR, $STATE_DIR"
    run install -d -o root -g root -m 0755 "$PREFIX" "$ETC_DIR"
    run install -d -o "$SVC_USER" -g "$SVC_USER" -m 0750 "$STATE_DIR" "$STATE_DIR/models" \
        "$STATE_DIR/snapshots"
}

venv_ok() {
    # Reuse the venv only if it uses the current system Python and sees apt's packages.
    [[ -x $VENV/bin/python && -r $VENV/pyvenv.cfg ]] || return 1
    grep -Eq '^include-system-site-packages *= *true' "$VENV/pyvenv.cfg" || return 1
    [[ $("$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null) == \
        "$(system_python_version)" ]]
}

ensure_venv() {
    log "venv $VENV (--system-site-packages, so apt's picamera2/libcamera are importable)"
    if venv_ok; then
        log "venv exists and matches python$(system_python_version)"
        return
    fi
    if [[ -e $VENV ]]; then
        log "venv is stale (other Python or no system site packages): recreating"
        run rm -rf "$VENV"
    fi
    run "$SYS_PY" -m venv --system-site-packages "$VENV"
}

# The numpy pin is apt's own version, so pip can neither upgrade nor shadow it (see the
# constraints files and docs/deploy.md: apt's simplejpeg breaks under a different NumPy ABI).
apt_numpy_version() {
    "$SYS_PY" -c 'import numpy; print(numpy.__version__)' 2>/dev/null || echo "<apt's python3-numpy version>"
}

pip_install_lgld() {
    local numpy_version
    numpy_version=$(apt_numpy_version)
    if ((!DRY_RUN)) && [[ $numpy_version == "<"* ]]; then
        die "$SYS_PY cannot import apt's numpy (is python3-numpy installed?)"
    fi
    log "pip constraints: $CONSTRAINTS + numpy==$numpy_version"
    {
        printf '# Generated by deploy/install.sh from %s\n' "$(basename "$CONSTRAINTS")"
        grep -v '^[[:space:]]*#' "$CONSTRAINTS" | sed '/^[[:space:]]*$/d'
        printf 'numpy==%s\n' "$numpy_version"
    } | write_file "$PREFIX/constraints.txt" 0644 root:root

    log "runtime-only install of lgld from $REPO (no extras: no torch)"
    # Build from a scratch copy: pip builds in-tree and would leave root-owned build/ and
    # *.egg-info in the checkout.
    local src excludes=(--exclude=.git --exclude=runs --exclude=build --exclude='*.egg-info'
        --exclude=.venv --exclude=__pycache__ --exclude=.pytest_cache --exclude=.ruff_cache)
    if ((DRY_RUN)); then
        src=/tmp/lgld-src.XXXXXX
        printf '[dry-run] copy %s to %s without .git, runs/, build/, caches\n' "$REPO" "$src"
    else
        src=$(mktemp -d /tmp/lgld-src.XXXXXX)
        # shellcheck disable=SC2064  # expand $src now
        trap "rm -rf '$src'" EXIT
        tar -C "$REPO" "${excludes[@]}" -cf - . | tar -C "$src" -xf -
    fi
    if ! run "$VENV/bin/pip" install --disable-pip-version-check --no-input \
        --constraint "$PREFIX/constraints.txt" "$src"; then
        die "pip install failed: PyPI must be reachable for onnxruntime/opencv wheels (offline?)." \
            "The previously installed version, if any, is untouched; rerun when online."
    fi
}

check_imports() {
    log "import check: apt's picamera2 (if present) together with pip's numpy/cv2/onnxruntime"
    local code='import numpy, cv2, onnxruntime, lgld.runtime.cli
try:
    import picamera2  # noqa: F401  (fails here when NumPy is ABI-incompatible with simplejpeg)
    cam = "picamera2 ok"
except Exception as exc:  # ImportError, or ValueError "numpy.dtype size changed" (ABI)
    cam = f"picamera2 not importable ({type(exc).__name__}: {exc})"
print(f"numpy {numpy.__version__} ({numpy.__file__}), opencv {cv2.__version__}, "
      f"onnxruntime {onnxruntime.__version__}, {cam}")'
    if ((DRY_RUN)); then
        run "$VENV/bin/python" -c "import numpy, cv2, onnxruntime, lgld.runtime.cli, picamera2"
        return
    fi
    local out
    if ! out=$("$VENV/bin/python" -c "$code" 2>&1); then
        die "the venv cannot import its runtime: $(tail -n 1 <<<"$out")"
    fi
    log "$out"
    if apt_installed python3-picamera2 && [[ $out == *"picamera2 not importable"* ]]; then
        die "apt's picamera2 does not import in the venv: ${out##*picamera2 not importable }"
    fi
}

# The installed commands run: lgld-run's version and its doctor on the bundled demo source (no
# camera, port or log involved, so it also passes while the service holds the camera and port).
check_commands() {
    log "command check: lgld-run --version; lgld-run --check --source demo"
    if ((DRY_RUN)); then
        run "$VENV/bin/lgld-run" --version
        run "$VENV/bin/lgld-run" --check --source demo --preview off
        return
    fi
    local out
    if ! out=$("$VENV/bin/lgld-run" --version 2>&1); then
        die "the installed lgld-run does not start: $(tail -n 1 <<<"$out")"
    fi
    log "$out"
    if ! out=$("$VENV/bin/lgld-run" --check --source demo --preview off 2>&1); then
        printf '%s\n' "$out" >&2
        die "lgld-run --check --source demo failed (above)"
    fi
    log "$(tail -n 1 <<<"$out")"
}

sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

# /etc/lgld/lgld.toml: installed if absent; replaced only if it still equals the default we
# installed last time (checksum in $CONF_SUM); otherwise the new default goes to lgld.toml.new.
install_config() {
    local shipped=$SCRIPT_DIR/lgld.toml new_sum
    [[ -r $shipped ]] || die "missing $shipped (incomplete checkout?)"
    new_sum=$(sha256_of "$shipped")
    if [[ ! -e $CONF ]]; then
        log "config: installing the default $CONF"
        run install -o root -g root -m 0644 "$shipped" "$CONF"
    elif cmp -s "$shipped" "$CONF"; then
        log "config: $CONF is the current default"
    elif [[ -r $CONF_SUM && $(sha256_of "$CONF") == "$(cat "$CONF_SUM")" ]]; then
        log "config: $CONF is an unmodified older default: replacing it"
        run install -o root -g root -m 0644 "$shipped" "$CONF"
    elif [[ -r $CONF_SUM && $new_sum == "$(cat "$CONF_SUM")" ]]; then
        log "config: $CONF was modified by you: kept (the shipped default has not changed)"
        return
    else
        log "config: $CONF was modified by you: kept; the new default is $CONF.new"
        log "        compare: diff -u $CONF $CONF.new"
        run install -o root -g root -m 0644 "$shipped" "$CONF.new"
        return
    fi
    printf '%s\n' "$new_sum" | write_file "$CONF_SUM" 0644 root:root
}

check_config() {
    log "config check: lgld-run --config $CONF --print-config"
    if ((DRY_RUN)); then
        run "$VENV/bin/lgld-run" --config "$CONF" --print-config
        return
    fi
    local out
    if ! out=$("$VENV/bin/lgld-run" --config "$CONF" --print-config 2>&1 >/dev/null); then
        die "$CONF is not valid: ${out:-lgld-run --print-config failed}"
    fi
}

systemd_running() { [[ -d /run/systemd/system ]]; }

install_unit() {
    log "systemd unit $UNIT"
    run install -o root -g root -m 0644 "$SCRIPT_DIR/lgld.service" "$UNIT"
    if ! systemd_running && ((!DRY_RUN)); then
        # chroot/container/image build: enabling only creates the symlinks; it starts at boot.
        run systemctl enable lgld.service
        warn "systemd is not running here (chroot/container?): lgld is enabled but not started"
        return
    fi
    run systemctl daemon-reload
    if ((!START)); then
        run systemctl enable lgld.service
        return
    fi
    local was_active=0
    systemd_running && systemctl is-active --quiet lgld.service && was_active=1
    if ((was_active)); then
        # Pick up the new code/config; Type=notify makes this wait for READY=1.
        run systemctl enable lgld.service
        run_start restart
    else
        run_start "enable --now"
    fi
}

run_start() {
    # shellcheck disable=SC2086  # $1 is "restart" or "enable --now", split on purpose
    if ! run systemctl $1 lgld.service; then
        printf '\n' >&2
        journalctl -u lgld.service -n 25 --no-pager >&2 || true
        die "lgld.service did not start (log above). Diagnose with:" \
            "sudo -u $SVC_USER $VENV/bin/lgld-run --config $CONF --check"
    fi
}

# host:port from the config's [http] listen, parsed by lgld's own config code; "" = HTTP off.
http_listen() {
    [[ -x $VENV/bin/python && -r $CONF ]] || return 1
    "$VENV/bin/python" - "$CONF" <<'EOF' 2>/dev/null
import sys
from lgld.runtime.config import load_config, parse_listen
listen = load_config(sys.argv[1]).http.listen
print("%s:%d" % parse_listen(listen) if listen else "")
EOF
}

print_summary() {
    local listen
    # The shipped default (deploy/lgld.toml) serves 127.0.0.1:8080.
    listen=$(http_listen) || listen=127.0.0.1:8080
    cat <<EOF

$(if ((DRY_RUN)); then echo "End of plan (dry run: nothing was changed)."; else echo "lgld is installed."; fi)
  service : systemctl status lgld      logs: journalctl -u lgld -f
  config  : $CONF   (then: sudo systemctl restart lgld)
  results : $STATE_DIR/results.jsonl
  doctor  : sudo -u $SVC_USER $VENV/bin/lgld-run --config $CONF --check
EOF
    local host=${listen%:*} port=${listen##*:}
    if [[ -z $listen ]]; then
        echo "  live    : HTTP is off ([http] listen = \"\" in $CONF)"
    elif [[ $host == 127.0.0.1 || $host == localhost || $host == ::1 ]]; then
        cat <<EOF
  live    : http://$listen/  (on the Pi only: the service listens on localhost)
            from your computer: ssh -L $port:127.0.0.1:$port <user>@$(hostname).local
            then open http://127.0.0.1:$port/  (LAN access: see docs/deploy.md)
EOF
    else
        local ip
        ip=$(hostname -I 2>/dev/null | cut -d' ' -f1) || true
        printf '  live    : http://%s:%s/  (listening on %s)\n' "${ip:-$(hostname)}" "$port" "$listen"
    fi
}

# ---------------------------------------------------------------- uninstall

uninstall() {
    log "uninstall lgld$( ((PURGE)) && printf ' (purge)')"
    if [[ -e $UNIT ]] || { systemd_running && systemctl cat lgld.service >/dev/null 2>&1; }; then
        if systemd_running || ((DRY_RUN)); then
            run systemctl disable --now lgld.service || warn "could not stop/disable lgld.service"
        else
            run systemctl disable lgld.service || warn "could not disable lgld.service"
        fi
        run rm -f "$UNIT"
        if systemd_running || ((DRY_RUN)); then
            run systemctl daemon-reload
            run systemctl reset-failed lgld.service 2>/dev/null || true
        fi
        log "removed the service"
    else
        log "no unit installed"
    fi
    if [[ -e $PREFIX ]]; then
        run rm -rf "$PREFIX"
        log "removed $PREFIX (venv)"
    else
        log "$PREFIX: absent"
    fi

    if ((PURGE)); then
        [[ -e $ETC_DIR ]] && run rm -rf "$ETC_DIR"
        [[ -e $STATE_DIR ]] && run rm -rf "$STATE_DIR"
        if getent passwd "$SVC_USER" >/dev/null; then run userdel "$SVC_USER"; fi
        log "purged config, data and user $SVC_USER"
    else
        if [[ -e $CONF && -r $CONF_SUM && $(sha256_of "$CONF") == "$(cat "$CONF_SUM")" ]]; then
            run rm -f "$CONF" "$CONF_SUM" "$CONF.new"
            run rmdir --ignore-fail-on-non-empty "$ETC_DIR"
            log "removed the unmodified default config"
        elif [[ -e $CONF ]]; then
            log "kept your modified $CONF (remove with --uninstall --purge)"
        fi
        log "kept $STATE_DIR (results, models) and user $SVC_USER (remove with --uninstall --purge)"
    fi
    log "apt packages (python3-picamera2, ...) are left installed: other software may use them"
}

# ---------------------------------------------------------------- main

main() {
    parse_args "$@"
    if ((!DRY_RUN && EUID != 0)); then
        die "run as root: sudo $0 $* (or --dry-run to see the plan)"
    fi
    if ((DRY_RUN)); then
        log "DRY RUN: printing every action; nothing is changed"
    fi
    detect_os
    log "$PRETTY on $ARCH: expecting Python $PY_EXPECTED (system python3: $(system_python_version))"
    if [[ $(system_python_version) != "$PY_EXPECTED" ]]; then
        warn "system python3 is $(system_python_version), expected $PY_EXPECTED for $CODENAME"
    fi
    if ((UNINSTALL)); then
        uninstall
        return
    fi
    log "installing lgld from $REPO"
    install_apt_packages
    ensure_user
    ensure_dirs
    ensure_venv
    pip_install_lgld
    check_imports
    check_commands
    install_config
    check_config
    install_unit
    print_summary
}

# Run only when executed, not when sourced (tests source it to call single steps).
if [[ ${BASH_SOURCE[0]} == "$0" ]]; then
    main "$@"
fi
