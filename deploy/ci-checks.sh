#!/usr/bin/env bash
# CI checks for deploy/ (called from .ci/run; runs on Debian, needs root only to apt-get install):
#   1. systemd-analyze verify on deploy/lgld.service (+ the offline security score, for info)
#   2. shellcheck on deploy/*.sh
#   3. deploy/install.sh --dry-run runs through on this machine and prints the plan
# Exits non-zero on the first failure.
set -euo pipefail

DEPLOY=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
readonly DEPLOY

say() { printf '\n== ci-checks: %s\n' "$*"; }
fail() {
    printf 'ci-checks: FAIL: %s\n' "$*" >&2
    exit 1
}

# --- tools: systemd-analyze (package systemd) and shellcheck, installed only if missing.
need=()
command -v systemd-analyze >/dev/null || need+=(systemd)
command -v shellcheck >/dev/null || need+=(shellcheck)
if ((${#need[@]})); then
    say "installing ${need[*]} with apt-get"
    ((EUID == 0)) || fail "need root to apt-get install ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" \
        >/dev/null
fi
printf 'systemd-analyze: %s\nshellcheck: %s\n' "$(systemd-analyze --version | head -n 1)" \
    "$(shellcheck --version | sed -n 's/^version: //p')"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# --- 1. systemd-analyze verify.
# `verify` checks that ExecStart's binary exists and is executable, and /opt/lgld/venv/bin/lgld-run
# exists only after install.sh ran. So the unit is verified unchanged inside a scratch root
# (--root) that holds the distribution's units plus an executable stub at that exact path; the
# check stays honest (deleting the stub makes it fail, see tests). verify exits 0 on
# unknown keys and unparsable values (it only warns), so any output counts as a failure too.
say "systemd-analyze verify deploy/lgld.service (in a scratch --root with an ExecStart stub)"
root=$tmp/root
mkdir -p "$root/etc/systemd/system" "$root/usr/lib/systemd" "$root/opt/lgld/venv/bin"
for units in /usr/lib/systemd/system /lib/systemd/system; do
    if [[ -d $units ]]; then
        cp -r "$units" "$root/usr/lib/systemd/"
        break
    fi
done
printf '#!/bin/sh\nexit 0\n' >"$root/opt/lgld/venv/bin/lgld-run"
chmod 0755 "$root/opt/lgld/venv/bin/lgld-run"
cp "$DEPLOY/lgld.service" "$root/etc/systemd/system/lgld.service"
exec_path=$(sed -n 's/^ExecStart=\([^ ]*\).*/\1/p' "$DEPLOY/lgld.service")
[[ $exec_path == /opt/lgld/venv/bin/lgld-run ]] || fail "ExecStart is '$exec_path', stub is not there"
if ! out=$(systemd-analyze verify --root="$root" --man=no lgld.service 2>&1); then
    printf '%s\n' "$out"
    fail "systemd-analyze verify failed"
fi
if [[ -n $out ]]; then
    printf '%s\n' "$out"
    fail "systemd-analyze verify printed warnings"
fi
echo "verify: OK (no warnings)"
security=$(systemd-analyze security --offline=yes --root="$root" --no-pager lgld.service 2>&1 |
    grep -i 'overall exposure' || true)
echo "security (informational): ${security:-n/a}"

# --- 2. shellcheck on every deploy script.
say "shellcheck deploy/*.sh"
shellcheck --severity=style "$DEPLOY"/*.sh
printf 'shellcheck: OK (%s)\n' "$(cd "$DEPLOY" && echo ./*.sh)"

# --- 3. installer dry run on this machine (no root needed, changes nothing).
say "deploy/install.sh --dry-run"
if ! plan=$(bash "$DEPLOY/install.sh" --dry-run 2>&1); then
    printf '%s\n' "$plan"
    fail "install.sh --dry-run exited non-zero"
fi
printf '%s\n' "$plan"
for step in 'python3-picamera2' '--no-install-recommends' 'useradd' 'video' \
    '--system-site-packages' 'pip install' '--constraint' \
    '/etc/lgld/lgld.toml' '/etc/systemd/system/lgld.service' 'systemctl daemon-reload' \
    'systemctl enable'; do
    grep -qF -- "$step" <<<"$plan" || fail "dry-run plan does not mention '$step'"
done
if grep -v '^\[dry-run\]' <<<"$plan" | grep -qE '^(Traceback|Error)'; then
    fail "dry-run printed an error"
fi
echo "dry-run: OK (plan mentions every key step)"

say "all deploy checks passed"
