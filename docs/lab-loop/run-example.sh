#!/usr/bin/env bash
# The lab loop of docs/lab-loop.md on the BCCD-dev fields, start to end, with the wall time of
# each step. Run from the repository root (lgld installed with the train extra):
#
#   docs/lab-loop/run-example.sh /path/to/BCCD-dev runs/lab-loop
#
# BCCD-dev: the 91 BCCD fields of the BCCD data set (MIT licence, docs/lab-loop/ATTRIBUTION.md).
set -euo pipefail
BCCD=${1:?usage: $0 BCCD-DEV-FOLDER OUT-FOLDER [WBC5-FOLDER]}
OUT=${2:?usage: $0 BCCD-DEV-FOLDER OUT-FOLDER [WBC5-FOLDER]}
WBC5=${3:-$(dirname "$BCCD")/WBC5}  # the shipped model's training data, mixed into train
HERE=$(cd "$(dirname "$0")" && pwd)
ZOO=$(python -c 'from lgld.runtime.core.zoo import zoo_dir; print(zoo_dir())')
if [[ -e $OUT ]]; then echo "$OUT exists; choose a new folder" >&2; exit 2; fi
mkdir -p "$OUT"
cd "$OUT"

start=$(date +%s.%N)
step() {  # step NAME COMMAND...: run it, print its wall time
    local t0 t1; t0=$(date +%s.%N)
    "${@:2}"
    t1=$(date +%s.%N)
    awk -v a="$t0" -v b="$t1" -v n="$1" 'BEGIN { printf "== %s: %.1f s\n", n, b - a }' >&2
}

# 1. Count: cell mode on every field, crops saved beside the log (the Pi's snapshot folder).
printf '[http]\nsnapshot_dir = "crops"\n[cells]\nsample = "BCCD-dev, 91 fields"\n' > lab.toml
step count lgld-run --config lab.toml --model wbc5 --mode cells --source "images:$BCCD/images" \
    --log results.jsonl --threads 1 --preview off
# 2. Review: the label file plays the person at the page (review events appended to the log).
step review python "$HERE/review_from_labels.py" results.jsonl "$HERE/bccd-labels.csv"
# 3. Data set: reviewed cells only; Basophil and Monocyte have one reviewed cell each.
step dataset lgld-dataset results.jsonl -o lab-data --min-per-class 5 --omit-small
# 4. Fine-tune the shipped model, half of train from its own training data, whole cells per part.
step finetune lgld-train --data lab-data --out run --init "$ZOO/lgld-wbc5.pt" \
    --recipe finetune --epochs 6 --input-size 160 --batch-size 16 --workers 0 --device cpu \
    --mix-data "$WBC5" --mix-ratio 0.5 --val-fraction 0.2 --test-fraction 0.4
# 5. Compare on the held-out reviewed cells (the test part: never trained on, never selected on).
step compare lgld-eval --model run/best.pt --compare "$ZOO/lgld-wbc5.onnx" --data lab-data \
    --split-file run/split.json --split test --threads 1 --json compare.json
awk -v a="$start" -v b="$(date +%s.%N)" 'BEGIN { printf "== whole loop: %.1f s\n", b - a }' >&2

# 6. (after the loop) What the fine-tune cost on the shipped model's own kind of images: 20 PBC
#    crops per class that were not mixed into train, both models side by side.
python - "$WBC5" <<'PY'
import json, os, sys
from pathlib import Path
mixed = {it["path"] for it in json.load(open("run/split.json"))["splits"]["train"]}
root = Path(sys.argv[1])
for cls in sorted(p.name for p in root.iterdir() if p.is_dir()):
    (Path("pbc-check") / cls).mkdir(parents=True)
    unused = [f for f in sorted((root / cls).glob("*.jpg")) if str(f.resolve()) not in mixed]
    for f in unused[-20:]:
        os.symlink(f.resolve(), Path("pbc-check") / cls / f.name)
PY
step pbc-check lgld-eval --model run/best.pt --compare "$ZOO/lgld-wbc5.onnx" --data pbc-check \
    --threads 1 --json compare-pbc.json
