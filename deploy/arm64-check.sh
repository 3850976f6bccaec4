#!/usr/bin/env bash
# arm64 check: the project's own `lgld-run --source images:...` on an emulated Raspberry Pi 5
# (arm64, Cortex-A76) against the same command on this x86 machine, for every shipped model,
# fp32 and INT8. Prints a table (classes and probabilities compared image by image) and exits
# non-zero when a class differs or a probability differs by more than the tolerance.
#
# How (no arm code runs while building, no binfmt needed):
#   1. a Debian bookworm arm64 sysroot with apt's python3.11 and NumPy, made by
#      `mmdebstrap --variant=extract` (cached; the libblas/liblapack links that apt's
#      update-alternatives would make are added by hand),
#   2. the runtime's aarch64 wheels (onnxruntime at this machine's version, OpenCV) installed
#      with `pip install --target --platform manylinux_2_28_aarch64 --only-binary=:all:` under
#      deploy/constraints-bookworm.txt (cached),
#   3. lgld's wheel (built from this checkout with `python -m build`, or $LGLD_WHEEL) installed
#      with `pip install --target`, as users get it: the models are the wheel's own,
#   4. `qemu-aarch64-static -L SYSROOT` with QEMU_CPU=cortex-a76 runs python3.11 -m
#      lgld.runtime.cli from that install, over the sample images with every model and once in
#      cell mode (wbc5 on demo:cells). QEMU 7.2 passes the host's /proc/cpuinfo through and
#      onnxruntime's cpuinfo crashes on an x86 one, so the sysroot holds a Pi 5 /proc/cpuinfo
#      (deploy/pi5-cpuinfo.txt), which -L serves in its place.
#
# Usage: deploy/arm64-check.sh            (root only to apt-get install missing tools)
# Environment:
#   LGLD_ARM64_CACHE      cache folder (default ${XDG_CACHE_HOME:-$HOME/.cache}/lgld-arm64)
#   LGLD_ARM64_MIRROR     Debian mirror (default http://deb.debian.org/debian)
#   LGLD_ARM64_PER_CLASS  bundled sample images per class and model (default 1)
#   LGLD_ARM64_JOBS       emulated runs in parallel (default: number of cores)
#   LGLD_ARM64_CELL_FRAMES  results of the emulated cell-mode run (default 10)
#   LGLD_WHEEL            lgld wheel to check (default: built from this checkout)
#   PYTHON                x86 python with the runtime's dependencies and `build` (default python3)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly REPO
CACHE=${LGLD_ARM64_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/lgld-arm64}
MIRROR=${LGLD_ARM64_MIRROR:-http://deb.debian.org/debian}
PER_CLASS=${LGLD_ARM64_PER_CLASS:-1}
JOBS=${LGLD_ARM64_JOBS:-$(nproc)}
PYTHON=${PYTHON:-python3}
CELL_FRAMES=${LGLD_ARM64_CELL_FRAMES:-10}
CONSTRAINTS=$REPO/deploy/constraints-bookworm.txt
SYSROOT=$CACHE/bookworm-arm64
started=$SECONDS

say() { printf '== arm64-check: %s\n' "$*"; }
fail() {
    printf 'arm64-check: FAIL: %s\n' "$*" >&2
    exit 1
}

# --- tools
need=()
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
command -v qemu-aarch64-static >/dev/null || need+=(qemu-user-static)
if ((${#need[@]})); then
    ((EUID == 0)) || fail "needs ${need[*]}: run as root or: sudo apt-get install ${need[*]}"
    say "installing ${need[*]} with apt-get"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" \
        >/dev/null
fi
"$PYTHON" -c 'import numpy, onnxruntime, cv2' 2>/dev/null \
    || fail "$PYTHON lacks numpy, onnxruntime or cv2 (pip install -e . first, or set PYTHON)"

# --- 1. sysroot (cached)
if [[ ! -f $SYSROOT/.lgld-complete ]]; then
    say "building the bookworm arm64 sysroot in $SYSROOT (mmdebstrap --variant=extract)"
    mkdir -p "$CACHE"
    rm -rf "$SYSROOT.tmp"
    mmdebstrap --quiet --variant=extract --architectures=arm64 \
        --include=python3.11,python3-numpy,libstdc++6 bookworm "$SYSROOT.tmp" "$MIRROR"
    lib=$SYSROOT.tmp/usr/lib/aarch64-linux-gnu
    [[ -e $lib/blas/libblas.so.3 && -e $lib/lapack/liblapack.so.3 ]] \
        || fail "the sysroot has no reference BLAS/LAPACK under $lib"
    ln -sf blas/libblas.so.3 "$lib/libblas.so.3"
    ln -sf lapack/liblapack.so.3 "$lib/liblapack.so.3"
    touch "$SYSROOT.tmp/.lgld-complete"
    rm -rf "$SYSROOT"
    mv "$SYSROOT.tmp" "$SYSROOT"
fi
mkdir -p "$SYSROOT/proc"
cp "$REPO/deploy/pi5-cpuinfo.txt" "$SYSROOT/proc/cpuinfo"

# --- 2. aarch64 wheels (cached per onnxruntime version and constraints)
ort=$("$PYTHON" -c 'import onnxruntime; print(onnxruntime.__version__)')
key=$(sha256sum "$CONSTRAINTS" | cut -c1-12)
SITE=$CACHE/site-ort$ort-$key
if [[ ! -f $SITE/.lgld-complete ]]; then
    say "installing aarch64 wheels into $SITE (onnxruntime $ort, constraints $CONSTRAINTS)"
    rm -rf "$SITE.tmp"
    # manylinux_2_28 is onnxruntime's tag; OpenCV's NumPy-1.x builds carry manylinux_2_17.
    "$PYTHON" -m pip install --quiet --disable-pip-version-check --target "$SITE.tmp" --no-deps \
        --only-binary=:all: --platform manylinux_2_28_aarch64 --platform manylinux_2_17_aarch64 \
        --platform manylinux2014_aarch64 --python-version 3.11 --implementation cp --abi cp311 \
        -c "$CONSTRAINTS" "onnxruntime==$ort" opencv-python-headless
    touch "$SITE.tmp/.lgld-complete"
    rm -rf "$SITE"
    mv "$SITE.tmp" "$SITE"
fi

# --- 3. lgld's wheel, installed as users get it (pure Python: the same files on both)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/logs"
wheel=${LGLD_WHEEL:-}
if [[ -z $wheel ]]; then
    say "building lgld's wheel from $REPO (python -m build)"
    "$PYTHON" -m build --wheel --outdir "$work/dist" "$REPO" >"$work/build.log" 2>&1 \
        || { tail -n 20 "$work/build.log"; fail "python -m build failed"; }
    wheel=$(compgen -G "$work/dist/lgld-*.whl" | head -n 1)
fi
[[ -f $wheel ]] || fail "no lgld wheel at '$wheel'"
"$PYTHON" -m pip install --quiet --disable-pip-version-check --no-deps --target "$work/py" "$wheel"
say "installed $(basename "$wheel") into $work/py"
for data in ALL WBC5; do
    mkdir -p "$work/samples/$data"
    for cls in "$REPO/tests/data/zoo_samples/$data"/*/; do
        find "$cls" -name '*.jpg' | sort | head -n "$PER_CLASS" | while read -r f; do
            ln -s "$f" "$work/samples/$data/$(basename "$cls")--$(basename "$f")"
        done
    done
done

runs=()
while read -r model; do
    name=$(basename "$model" .onnx)
    data=ALL
    [[ $name == *wbc5* ]] && data=WBC5
    runs+=("$name $model $data")
done < <(find "$work/py/lgld" -path '*/zoo/*.onnx' | sort)
((${#runs[@]})) || fail "no models in the wheel (no lgld/**/zoo/*.onnx)"

lgld_run() { # ARCH NAME MODEL DATA: one lgld-run over the samples; log in $work/logs
    local arch=$1 name=$2 model=$3 data=$4
    local args=(-m lgld.runtime.cli --model "$model" --precision fp32 --threads 1
        --source "images:$work/samples/$data" --log "$work/logs/$arch-$name.jsonl" --preview off)
    if [[ $arch == x86 ]]; then
        PYTHONPATH=$work/py "$PYTHON" "${args[@]}"
    else
        QEMU_CPU=cortex-a76 PYTHONPATH=$SITE:$work/py \
            qemu-aarch64-static -L "$SYSROOT" "$SYSROOT/usr/bin/python3.11" "${args[@]}"
    fi >"$work/logs/$arch-$name.out" 2>&1 || {
        echo "$arch $name: lgld-run failed:"
        tail -n 5 "$work/logs/$arch-$name.out"
        return 1
    }
}
export -f lgld_run
export work SITE SYSROOT PYTHON

say "${#runs[@]} models x $PER_CLASS image(s) per class: x86 here, arm64 under qemu-aarch64-static" \
    "(QEMU_CPU=cortex-a76, $JOBS in parallel)"
failed=0
printf '%s\n' "${runs[@]}" | xargs -P "$JOBS" -L 1 bash -c 'lgld_run arm64 "$@"' _ || failed=1
printf '%s\n' "${runs[@]}" | xargs -L 1 bash -c 'lgld_run x86 "$@"' _ || failed=1

# --- 4. compare
"$PYTHON" - "$work/logs" "${runs[@]}" <<'EOF' || failed=1
import json
import sys
from pathlib import Path

logs, runs = Path(sys.argv[1]), [r.split() for r in sys.argv[2:]]
TOL = {"fp32": 0.002, "int8": 0.02}  # max |probability difference| allowed, x86 vs arm64


def load(path: Path) -> dict:
    """file name -> the model's own answer (top-1 and probabilities, before any smoothing)."""
    if not path.is_file():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    out = {}
    for r in rows:
        probs = (r.get("instant") or r).get("probabilities") or {}
        top1 = max(probs, key=probs.get) if probs else None
        out[Path(r["file"]).name] = {"class": top1, "probabilities": probs}
    return out


print(f"{'model':22s} {'prec':5s} {'images':>6s} {'same class':>10s} {'max |dp|':>9s} "
      f"{'x86 right':>9s} {'arm64 right':>11s}  verdict")
bad = 0
for name, _, _ in runs:
    precision = "int8" if name.endswith(".int8") else "fp32"
    x86, arm = load(logs / f"x86-{name}.jsonl"), load(logs / f"arm64-{name}.jsonl")
    files = sorted(set(x86) | set(arm))
    same = sum(x86.get(f, {}).get("class") == arm.get(f, {}).get("class") for f in files)
    both = [f for f in files if f in x86 and f in arm]
    dp = max((abs(x86[f]["probabilities"][c] - arm[f]["probabilities"][c])
              for f in both for c in x86[f]["probabilities"]), default=float("nan"))
    right = {k: sum(r.get("class") == f.split("--")[0] for f, r in d.items())
             for k, d in (("x86", x86), ("arm", arm))}
    ok = bool(files) and len(both) == len(files) and same == len(files) and dp <= TOL[precision]
    bad += not ok
    print(f"{name:22s} {precision:5s} {len(files):6d} {same:6d}/{len(files):<3d} {dp:9.4f} "
          f"{right['x86']:5d}/{len(x86):<3d} {right['arm']:7d}/{len(arm):<3d}  "
          f"{'ok' if ok else 'DISAGREE'}")
print(f"tolerance: same class on every image, max |dp| <= {TOL['fp32']} (fp32), "
      f"{TOL['int8']} (int8)")
sys.exit(1 if bad else 0)
EOF

# --- 5. the main job on the emulated Pi: a cell-mode count. The demo source drops frames while
# the classifier is busy, so its count differs from x86's by design: checked is that it runs,
# opens a count session and classifies white cells.
say "cell mode under qemu: --model wbc5 --mode cells --source demo:cells --frames $CELL_FRAMES"
cells_log=$work/logs/arm64-cells.jsonl
if QEMU_CPU=cortex-a76 PYTHONPATH=$SITE:$work/py \
    qemu-aarch64-static -L "$SYSROOT" "$SYSROOT/usr/bin/python3.11" -m lgld.runtime.cli \
    --model wbc5 --mode cells --source demo:cells --frames "$CELL_FRAMES" --threads 1 \
    --log "$cells_log" --preview off >"$work/logs/arm64-cells.out" 2>&1; then
    tail -n 2 "$work/logs/arm64-cells.out"
    "$PYTHON" - "$cells_log" <<'EOF' || failed=1
import json
import sys

records = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
events = [r.get("event") for r in records]
classified = [r for r in records if r.get("mode") == "cells" and r.get("cells")]
print(f"arm64 cell mode: {len(records)} log lines, session_start {events.count('session_start')},"
      f" {len(classified)} results with classified cells, {events.count('cell')} cells counted")
sys.exit(0 if events.count("session_start") == 1 and classified else 1)
EOF
else
    echo "arm64 cell mode: lgld-run failed:"
    tail -n 5 "$work/logs/arm64-cells.out"
    failed=1
fi
say "done in $((SECONDS - started)) s"
((failed == 0)) || fail "x86 and emulated arm64 disagree, or a run failed: see above"
say "x86 and emulated arm64 (Cortex-A76) agree on every shipped model; cell mode runs on arm64"
