#!/usr/bin/env bash
# Where a training step's time goes, by op kind: samples `bench-train` with perf (DWARF call
# stacks) and sorts every sample into a kind by the frames on its stack
# (scripts/profile_kinds.py). Prints each kind's share of the sampled training time.
# Usage: scripts/profile_train.sh [MODEL_YAML] [IMGSZ] [BATCH] [ITERS]
#   YOLODISTILL_KERNELS=burn: burn's own ops; BIN=path: profile another build (e.g. an older commit's).
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-yolov8n.yaml}
IMGSZ=${2:-320}
BATCH=${3:-16}
ITERS=${4:-3}
DATA=$(cd ../shared/data/bccd && pwd)/data.yaml
BIN=${BIN:-}
if [ -z "$BIN" ]; then cargo build --quiet; BIN=target/debug/yolodistill; fi
TMP=$(mktemp -d)
echo "CPU: $(grep -m1 "model name" /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) threads; $BIN, kernels: ${YOLODISTILL_KERNELS:-ours}"
perf record -q -F 97 --call-graph dwarf,16384 -o "$TMP/perf.data" -- \
    "$BIN" bench-train --model "$MODEL" --data "$DATA" --imgsz "$IMGSZ" --batch "$BATCH" \
    --iters "$ITERS" --data-batches 2 2>/dev/null | tail -n 1
# Inlined frames are kept: rayon workers carry no caller frames, only the inlined closure names
# tell which kernel a GEMM belongs to (resolving them takes ~20 s).
perf script -i "$TMP/perf.data" -F comm,tid,ip,sym 2>/dev/null | python3 scripts/profile_kinds.py
rm -rf "$TMP"
