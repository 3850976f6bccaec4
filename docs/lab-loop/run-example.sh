#!/usr/bin/env bash
# The lab loop of docs/lab-loop.md, start to end, on a folder of labelled fields: count, review
# from the labels, adapt (unsupervised + the reviewed cells), compare. Leaves the lab's new
# model as OUT_DIR/adapted.onnx (+ adapted.md, its card), ready for
#   lgld-run --model OUT_DIR/adapted.onnx --mode cells
# Run from a checkout (lgld installed with the train extra; the zoo's wbc5 checkpoint is in
# zoo/):
#
#   docs/lab-loop/run-example.sh FIELDS_DIR OUT_DIR [WBC5_DIR]
#
# FIELDS_DIR is laid out like BCCD-dev: images/, labels.csv (file,types), annotations/
# (Pascal VOC, optional). WBC5_DIR (the wbc5 model's training data, one folder per class;
# default: FIELDS_DIR/../WBC5 when it exists) is mixed into the fine-tune, calibrates the INT8
# model and measures what the adaptation costs on PBC images; without it none of those three.
# Bounded to about 15 minutes on 2 CPU cores (measured times in docs/lab-loop.md).
set -euo pipefail
usage="usage: $0 FIELDS_DIR OUT_DIR [WBC5_DIR]"
FIELDS=$(cd "${1:?$usage}" && pwd)
OUT=${2:?$usage}
WBC5=${3:-$(dirname "$FIELDS")/WBC5}
[[ -d $WBC5 ]] && WBC5=$(cd "$WBC5" && pwd) || WBC5=""
HERE=$(cd "$(dirname "$0")" && pwd)
ZOO=$(python -c 'from lgld.runtime.core.zoo import zoo_dir; print(zoo_dir())')
for need in "$FIELDS/images" "$FIELDS/labels.csv" "$ZOO/lgld-wbc5.pt"; do
    if [[ ! -e $need ]]; then echo "$0: $need not found" >&2; exit 2; fi
done
if [[ -e $OUT ]]; then echo "$0: $OUT exists; choose a new folder" >&2; exit 2; fi
mkdir -p "$OUT"
cd "$OUT"
THREADS=${LGLD_THREADS:-2}

start=$(date +%s.%N)
step() {  # step NAME COMMAND...: run it, print its wall time
    local t0 t1; t0=$(date +%s.%N)
    "${@:2}"
    t1=$(date +%s.%N)
    awk -v a="$t0" -v b="$t1" -v n="$1" 'BEGIN { printf "== %s: %.1f s\n", n, b - a }' >&2
}

# 1. Count: cell mode on every field, crops saved beside the log (the Pi's snapshot folder);
#    the session's microscope check lands in the log (a "domain" event).
printf '[http]\nsnapshot_dir = "crops"\n[cells]\nsample = "%s"\n' "$(basename "$FIELDS")" > lab.toml
step count lgld-run --config lab.toml --model wbc5 --mode cells --source "images:$FIELDS/images" \
    --log results.jsonl --threads "$THREADS" --preview off --precision fp32
# 2. Review: labels.csv plays the person at the page (review events appended to the log).
step review python "$HERE/review_from_labels.py" results.jsonl "$FIELDS"
# 3. Adapt: the classifier layer fitted on the session's reviewed cells (with PBC crops mixed
#    in; no AdaBN unless LGLD_BLEND is set: it helped no learning curve in docs/lab-loop.md),
#    exported, verified, INT8 through its gate.
mix=()
[[ -n $WBC5 ]] && mix=(--mix-data "$WBC5" --mix-ratio 0.5 --int8 --calib-data "$WBC5")
step adapt lgld-adapt results.jsonl -o adapted.onnx --model "$ZOO/lgld-wbc5.pt" \
    ${LGLD_BLEND:+--blend "$LGLD_BLEND"} --reviewed "${mix[@]}" --threads "$THREADS"
# 4. Compare on the reviewed cells (the cells it was adapted on: not held out; the held-out
#    two-fold numbers are docs/lab-loop/measure_adapt.py's) and, with WBC5, on PBC crops.
step dataset lgld-dataset results.jsonl -o lab-data --min-per-class 1
step compare lgld-eval --model adapted.onnx --compare "$ZOO/lgld-wbc5.onnx" --data lab-data \
    --threads "$THREADS" --json compare.json
if [[ -n $WBC5 ]]; then
    python - "$WBC5" <<'PY'
import os, sys
from pathlib import Path
root = Path(sys.argv[1])
for cls in sorted(p.name for p in root.iterdir() if p.is_dir()):
    (Path("pbc-check") / cls).mkdir(parents=True)
    for f in sorted((root / cls).glob("*.jpg"))[-20:]:  # never mixed in (lgld-adapt mixes from the front)
        os.symlink(f.resolve(), Path("pbc-check") / cls / f.name)
PY
    step pbc-check lgld-eval --model adapted.onnx --compare "$ZOO/lgld-wbc5.onnx" \
        --data pbc-check --threads "$THREADS" --json compare-pbc.json
fi
awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "== whole loop: %.1f s\n", b - a }' >&2
echo "the lab's model: $OUT/adapted.onnx (lgld-run --model $OUT/adapted.onnx --mode cells)"
