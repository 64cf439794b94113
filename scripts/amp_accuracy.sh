#!/usr/bin/env bash
# Accuracy of mixed precision: BCCD yolov8n students trained from scratch (40 epochs, 320, batch 16)
# in f32 (--amp fp32) and with bf16 products (--amp bf16; emulated on a CPU without AVX512-BF16,
# the same arithmetic), paired by seed, then the table of scripts/amp_table.py.
#   bash scripts/amp_accuracy.sh [OUT] [SEEDS]   (OUT defaults to runs/amp, SEEDS to "0 1 2";
#   about 15 minutes per run on 2 cores; finished runs are kept and not trained again)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/amp}
SEEDS=${2:-0 1 2}
YD=${YD:-target/debug/yolodistill}
[[ $YD == target/debug/yolodistill ]] && cargo build --quiet
for s in $SEEDS; do
    [[ $s =~ ^[0-9]+$ ]] || { echo "amp_accuracy.sh: a seed must be a number, not '$s'" >&2; exit 2; }
    for amp in fp32 bf16; do
        run="$OUT/$amp-s$s"
        if [[ -f $run/results.csv && $(($(wc -l < "$run/results.csv") - 1)) -ge 40 ]]; then continue; fi
        $YD train --model yolov8n.yaml --data ../shared/data/bccd/data.yaml --imgsz 320 --epochs 40 --batch 16 --nbs 16 \
            --seed "$s" --amp "$amp" --project "$OUT" --name "$amp-s$s" --exist-ok --quiet
    done
done
python3 scripts/amp_table.py "$OUT" $SEEDS
