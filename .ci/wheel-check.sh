#!/usr/bin/env bash
# CI: what users install. Builds the sdist and, from it, the wheel (python -m build); installs the
# wheel with no extras into a fresh venv outside the checkout (torch must not be importable there)
# and runs from a scratch folder: the main job (a cell-mode count on demo:cells, one cell reviewed
# over HTTP as the page does), field mode for a bounded number of frames, lgld-report and
# lgld-dataset on the count's log, lgld-run --check and --version, and the runtime test subset
# (pytest -m "not train") against the installed package. Exits non-zero on any failure.
#
# Usage: .ci/wheel-check.sh
# Environment:
#   PYTHON     python to build with and to make the venv from (default python3; needs `build`)
#   LGLD_DIST  a folder with an already built lgld-*.whl and lgld-*.tar.gz (skips the build)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly REPO
PYTHON=${PYTHON:-python3}
started=$SECONDS

say() { printf '== wheel-check: %s\n' "$*"; }
fail() {
    printf 'wheel-check: FAIL: %s\n' "$*" >&2
    exit 1
}

tmp=$(mktemp -d "${TMPDIR:-/tmp}/lgld-wheel.XXXXXX")
pid=""
cleanup() {
    [[ -z $pid ]] || kill "$pid" 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT

# --- build: sdist, then the wheel from the sdist (so the sdist is proven complete too)
dist=${LGLD_DIST:-$tmp/dist}
if [[ -z ${LGLD_DIST:-} ]]; then
    say "python -m build (sdist, then the wheel from it)"
    t=$SECONDS
    "$PYTHON" -m build --outdir "$dist" "$REPO" >"$tmp/build.log" 2>&1 \
        || { tail -n 20 "$tmp/build.log"; fail "python -m build failed"; }
    say "built in $((SECONDS - t)) s"
fi
wheel=$(compgen -G "$dist/lgld-*.whl" | head -n 1) || fail "no lgld-*.whl in $dist"
compgen -G "$dist/lgld-*.tar.gz" >/dev/null || fail "no lgld-*.tar.gz in $dist"
say "$(basename "$wheel") ($(du -k "$wheel" | cut -f1) KiB)"

# --- a fresh runtime-only venv outside the checkout
t=$SECONDS
venv=$tmp/venv
"$PYTHON" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "$wheel"
if "$venv/bin/python" -c 'import torch' 2>/dev/null; then
    fail "torch is importable in the runtime-only venv"
fi
where=$("$venv/bin/python" -c 'import lgld.runtime.cli as m; print(m.__file__)')
[[ $where == "$venv"/* ]] || fail "lgld.runtime.cli imports from $where, not from the venv"
say "runtime-only venv in $((SECONDS - t)) s: no torch; lgld from $where"

work=$tmp/work
mkdir -p "$work"
cd "$work"
export PATH=$venv/bin:$PATH

run() { # NAME CMD...: run one step, its output in NAME.out, shown on failure
    local name=$1
    shift
    if ! "$@" >"$name.out" 2>&1; then
        tail -n 15 "$name.out"
        fail "$name: $*"
    fi
    tail -n 1 "$name.out"
}

run version lgld-run --version
run check lgld-run --check --source demo

# --- the main job: a cell-mode count; two cells reviewed through the page's review API (one
# confirmed, one reclassified: lgld-dataset needs two classes). [http] snapshot_dir is where
# cell mode keeps the crops that lgld-dataset needs.
printf '[http]\nsnapshot_dir = "snapshots"\n' >ci.toml
port=$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])')
lgld-run --config ci.toml --model wbc5 --mode cells --source demo:cells --frames 120 \
    --log cells.jsonl --preview off --http "127.0.0.1:$port" >cells.out 2>&1 &
pid=$!
python - "$port" <<'EOF' || { tail -n 15 cells.out; fail "reviewing counted cells over HTTP"; }
import json
import sys
import time
import urllib.request

base = f"http://127.0.0.1:{sys.argv[1]}"


def call(path, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method="GET" if body is None else "POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)


deadline = time.monotonic() + 120
gallery = {}
while len(gallery.get("cells") or []) < 2:
    if time.monotonic() > deadline:
        sys.exit("fewer than 2 counted cells on GET /api/review within 120 s")
    time.sleep(0.5)
    try:
        gallery = call("/api/review")
    except (OSError, ValueError):
        pass
first, second = gallery["cells"][:2]
other = next(c for c in gallery["review_classes"]
             if c not in (first["model_class"], second["model_class"]))
sid = gallery["session"]  # a review names its session (409 for a stale page's)
call("/api/review", {"session": sid, "track": first["track"], "action": "confirm"})
call("/api/review", {"session": sid, "track": second["track"], "action": "reclassify",
                     "class": other})
print(f"review: track {first['track']} confirmed, track {second['track']} -> {other}")
EOF
wait "$pid" || { tail -n 15 cells.out; fail "lgld-run --mode cells exited non-zero"; }
pid=""
tail -n 2 cells.out
run report lgld-report cells.jsonl -o report.html --json report.json
python - <<'EOF' || fail "the report does not hold the two reviews"
import json

review = json.load(open("report.json"))["review"]
print(f"report: {review}")
assert review["cells_reviewed"] == 2 and review["corrections"] >= 1, review
EOF
run dataset lgld-dataset cells.jsonl -o dataset --min-per-class 1
[[ $(find dataset -mindepth 2 -type f | wc -l) -eq 2 ]] \
    || fail "lgld-dataset did not write the two reviewed cells"

# --- field mode, bounded
run field lgld-run --source demo --frames 10 --log field.jsonl --preview off
[[ $(wc -l <field.jsonl) -ge 10 ]] || fail "field mode logged fewer than 10 results"

# --- the runtime test subset against the installed wheel (pytest only, still no torch).
# From outside the checkout: the tests import lgld from the venv (checked by the wheel test).
t=$SECONDS
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "pytest>=8"
LGLD_WHEEL=$wheel python -m pytest -q -m "not train" "$REPO/tests" \
    || fail "the runtime tests fail against the installed wheel"
say "runtime tests in $((SECONDS - t)) s"
say "all passed in $((SECONDS - started)) s"
