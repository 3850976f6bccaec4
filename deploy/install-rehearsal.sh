#!/usr/bin/env bash
# Install rehearsal: deploy/install.sh end to end on an emulated Raspberry Pi, i.e. a Debian
# bookworm arm64 root (Raspberry Pi OS is bookworm-based) run through qemu-user (binfmt_misc):
#   install (apt packages; picamera2, absent from Debian, is reported and skipped; user, venv,
#   constraints, pip install of this checkout, import and command checks, config, unit enabled),
#   systemd-analyze verify of the installed unit (where the root's systemd can run it), the
#   unit's ExecStart command as its user for a bounded number of frames on the demo source,
#   an upgrade over the existing install (a newer version; the edited config kept), uninstall
#   (data kept) and uninstall --purge. Prints the time of each step; exits non-zero on failure.
#
# The root (mmdebstrap minbase + python3, systemd, ca-certificates, as on Raspberry Pi OS Lite)
# is built once and cached; each run works on a copy, so every run starts from a clean system.
# apt's and pip's downloads are cached too. Needs root (chroot, mounts, binfmt_misc); the mounts
# live in a private mount namespace, and a binfmt entry this script registers is removed again.
#
# Usage: sudo deploy/install-rehearsal.sh
# Environment:
#   LGLD_ARM64_CACHE   cache folder (default ${XDG_CACHE_HOME:-$HOME/.cache}/lgld-arm64)
#   LGLD_ARM64_MIRROR  Debian mirror (default http://deb.debian.org/debian)
#   LGLD_REHEARSAL_FRAMES  results the ExecStart run classifies (default 5)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly REPO
CACHE=${LGLD_ARM64_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/lgld-arm64}
MIRROR=${LGLD_ARM64_MIRROR:-http://deb.debian.org/debian}
FRAMES=${LGLD_REHEARSAL_FRAMES:-5}
BASE=$CACHE/bookworm-arm64-pi-root
BINFMT=/proc/sys/fs/binfmt_misc
SRC=/home/pi/lgld # the checkout's place inside the root
started=$SECONDS

say() { printf '== install-rehearsal: %s\n' "$*"; }
fail() {
    printf 'install-rehearsal: FAIL: %s\n' "$*" >&2
    exit 1
}

((EUID == 0)) || fail "needs root (chroot, mounts, binfmt_misc): sudo $0"

# --- tools
need=()
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
command -v qemu-aarch64-static >/dev/null || need+=(qemu-user-static)
command -v arch-test >/dev/null || need+=(arch-test)
command -v unshare >/dev/null || need+=(util-linux)
if ((${#need[@]})); then
    say "installing ${need[*]} with apt-get"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" \
        >/dev/null
fi

# --- binfmt_misc: arm64 binaries run through qemu-aarch64-static (F: usable inside the chroot)
registered=0
if [[ ! -e $BINFMT/qemu-aarch64 ]]; then
    [[ -e $BINFMT/register ]] || mount -t binfmt_misc binfmt_misc "$BINFMT" \
        || fail "cannot mount binfmt_misc (a container without it?)"
    conf=/usr/lib/binfmt.d/qemu-aarch64.conf
    [[ -r $conf ]] || fail "no $conf (qemu-user-static too old?)"
    say "registering qemu-aarch64 with binfmt_misc (removed again at the end)"
    cat "$conf" >"$BINFMT/register"
    registered=1
fi
tmp=$(mktemp -d "${TMPDIR:-/tmp}/lgld-rehearsal.XXXXXX")
cleanup() {
    rm -rf "$tmp"
    if ((registered)); then echo -1 >"$BINFMT/qemu-aarch64" || true; fi
}
trap cleanup EXIT

# --- 1. the base root (cached)
if [[ ! -f $BASE/.lgld-complete ]]; then
    say "building the bookworm arm64 root in $BASE (mmdebstrap minbase under qemu: minutes)"
    t=$SECONDS
    mkdir -p "$CACHE"
    rm -rf "$BASE.tmp"
    mmdebstrap --quiet --mode=root --variant=minbase --architectures=arm64 \
        --include=python3,systemd,ca-certificates bookworm "$BASE.tmp" "$MIRROR"
    touch "$BASE.tmp/.lgld-complete"
    rm -rf "$BASE"
    mv "$BASE.tmp" "$BASE"
    say "root built in $((SECONDS - t)) s"
fi

# --- 2. a scratch copy of it, the checkout inside, downloads cached, in a private mount namespace
t=$SECONDS
root=$tmp/root
cp -a "$BASE" "$root"
mkdir -p "$root$SRC" "$CACHE/apt-archives" "$CACHE/pip" "$root/root/.cache/pip"
tar -C "$REPO" --exclude=.git --exclude=.venv --exclude=build --exclude=runs --exclude='*.egg-info' \
    --exclude=__pycache__ --exclude=.pytest_cache --exclude=.ruff_cache -cf - . \
    | tar -C "$root$SRC" -xf -
cp /etc/resolv.conf "$root/etc/resolv.conf"
# This host's network settings for pip inside: its proxy, and the CA bundle pip trusts here (a
# TLS-intercepting proxy's CA is in it, not in Debian's bundle).
passenv=()
for var in http_proxy https_proxy no_proxy HTTP_PROXY HTTPS_PROXY NO_PROXY; do
    [[ -z ${!var:-} ]] || passenv+=("$var=${!var}")
done
host_ca=${PIP_CERT:-${REQUESTS_CA_BUNDLE:-${SSL_CERT_FILE:-}}}
if [[ -n $host_ca && -r $host_ca ]]; then
    cp "$host_ca" "$root/etc/ssl/certs/lgld-host-ca.crt"
    passenv+=(PIP_CERT=/etc/ssl/certs/lgld-host-ca.crt)
    say "pip inside uses this host's CA bundle ($host_ca)"
fi
say "scratch root ready in $((SECONDS - t)) s"

steps=$tmp/steps.sh
cat >"$steps" <<'EOF'
# Runs inside the private mount namespace: ROOT, SRC, FRAMES, CPUINFO, CACHE, PASSENV set by the
# caller.
set -euo pipefail
mount -t proc proc "$ROOT/proc"
mount --bind "$CPUINFO" "$ROOT/proc/cpuinfo" # onnxruntime's cpuinfo crashes on the host's x86 one
mount --rbind /dev "$ROOT/dev"
mount --rbind /sys "$ROOT/sys"
mount -t tmpfs tmpfs "$ROOT/tmp"
mount --bind "$CACHE/apt-archives" "$ROOT/var/cache/apt/archives"
mount --bind "$CACHE/pip" "$ROOT/root/.cache/pip"
# A Pi 5 CPU; the root's own PATH and locale.
# shellcheck disable=SC2086  # PASSENV: NAME=VALUE words without spaces
emu() { chroot "$ROOT" /usr/bin/env -i QEMU_CPU=cortex-a76 HOME=/root LANG=C.UTF-8 \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin $PASSENV "$@"; }
step() { # NAME CMD...: one timed step, its output in $ROOT/../NAME.out
    local name=$1 t=$SECONDS rc=0
    shift
    "$@" >"$ROOT/../$name.out" 2>&1 || rc=$?
    printf '   %-34s %4d s  %s\n' "$name" $((SECONDS - t)) "$( ((rc == 0)) && echo ok || echo "FAILED ($rc)")"
    if ((rc)); then
        tail -n 25 "$ROOT/../$name.out" | sed 's/^/   | /'
        exit 1
    fi
}
expect() { # NAME TEXT: the step's output holds TEXT
    grep -qF -- "$2" "$ROOT/../$1.out" || { echo "   $1: output lacks '$2'"; exit 1; }
}

step uname emu uname -m
expect uname aarch64
step install emu bash "$SRC/deploy/install.sh"
expect install "python3-picamera2 is not in this system's apt sources"
expect install "lgld-run --check: all good"
expect install "lgld is installed."
step import-check emu /opt/lgld/venv/bin/python -c \
    'import lgld.runtime.cli, onnxruntime, cv2, numpy; print(numpy.__file__)'
expect import-check /usr/lib/python3/dist-packages/numpy # apt's NumPy, not pip's
step unit-enabled emu test -L /etc/systemd/system/multi-user.target.wants/lgld.service
if emu systemd-analyze --version >/dev/null 2>&1; then
    step systemd-analyze-verify emu systemd-analyze verify --man=no /etc/systemd/system/lgld.service
else
    echo "   systemd-analyze verify            n/a (systemd-analyze does not run in this root)"
fi

# The unit's ExecStart, as its user and in its working directory, bounded to FRAMES results on
# the demo source (no camera here) with HTTP on a free port (the host's 8080 may be taken).
exec_start=$(sed -n 's/^ExecStart=//p' "$ROOT/etc/systemd/system/lgld.service")
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])')
service() {
    # shellcheck disable=SC2086  # ExecStart's words, split as systemd does (no quotes in it)
    emu setpriv --reuid=lgld --regid=lgld --init-groups env STATE_DIRECTORY=/var/lib/lgld \
        PYTHONUNBUFFERED=1 sh -c "cd /var/lib/lgld && exec $exec_start --source demo \
        --frames $FRAMES --http 127.0.0.1:$port"
}
step "ExecStart ($FRAMES frames)" service
lines=$(wc -l <"$ROOT/var/lib/lgld/results.jsonl")
((lines >= FRAMES)) || { echo "   results.jsonl has $lines lines, expected $FRAMES"; exit 1; }

# Upgrade: a newer version of the checkout over the running install, with an edited config.
printf '\n# edited by the rehearsal\n' >>"$ROOT/etc/lgld/lgld.toml"
sed -i 's/^version = "\(.*\)"/version = "\1.post1"/' "$ROOT$SRC/pyproject.toml"
new=$(sed -n 's/^version = "\(.*\)"/\1/p' "$ROOT$SRC/pyproject.toml")
step upgrade emu bash "$SRC/deploy/install.sh"
expect upgrade "venv exists and matches"
expect upgrade "was modified by you: kept"
step upgraded-version emu /opt/lgld/venv/bin/lgld-run --version
expect upgraded-version "$new"
grep -q 'edited by the rehearsal' "$ROOT/etc/lgld/lgld.toml" || { echo "   config edit lost"; exit 1; }

step uninstall emu bash "$SRC/deploy/install.sh" --uninstall
[[ ! -e $ROOT/opt/lgld && ! -e $ROOT/etc/systemd/system/lgld.service ]] \
    || { echo "   uninstall left /opt/lgld or the unit"; exit 1; }
[[ -s $ROOT/var/lib/lgld/results.jsonl ]] || { echo "   uninstall removed the results"; exit 1; }
step purge emu bash "$SRC/deploy/install.sh" --uninstall --purge
[[ ! -e $ROOT/var/lib/lgld && ! -e $ROOT/etc/lgld ]] || { echo "   purge left data"; exit 1; }
if emu getent passwd lgld >/dev/null; then echo "   purge left the user lgld"; exit 1; fi
EOF

say "rehearsing deploy/install.sh under qemu-aarch64 (QEMU_CPU=cortex-a76)"
ROOT=$root SRC=$SRC FRAMES=$FRAMES CPUINFO=$REPO/deploy/pi5-cpuinfo.txt CACHE=$CACHE \
    PASSENV="${passenv[*]}" \
    unshare --mount --propagation private bash "$steps" || fail "a step failed (above)"
say "install, check, ExecStart, upgrade and uninstall passed in $((SECONDS - started)) s"
