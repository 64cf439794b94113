#!/usr/bin/env bash
# Peak memory and wall time of one BCCD training epoch (yolov8n, 320, batch 16, 2 workers, CPU;
# start-up and validation included), ours vs Ultralytics/PyTorch: the resident memory of each
# whole process tree (data workers included), sampled every 0.1 s by scripts/peak_rss.py.
# Usage: scripts/bench_memory.sh [MODEL_YAML] [IMGSZ] [BATCH]
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-yolov8n.yaml}
IMGSZ=${2:-320}
BATCH=${3:-16}
DATA=$(cd ../shared/data/bccd && pwd)/data.yaml
cargo build --quiet
TMP=$(mktemp -d)
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) threads"
ours=$(python3 scripts/peak_rss.py target/debug/yolodistill train --model "$MODEL" --data "$DATA" --imgsz "$IMGSZ" \
    --batch "$BATCH" --epochs 1 --workers 2 --project "$TMP" --name ours | tail -n 1)
echo "yolodistill, 1 epoch: $ours"
PY=$(../shared/tools/ref-env.sh | tail -n 1)
theirs=$(python3 scripts/peak_rss.py "$PY" -c "
from ultralytics import YOLO
YOLO('$MODEL').train(data='$DATA', imgsz=$IMGSZ, batch=$BATCH, epochs=1, workers=2, device='cpu', amp=False,
                     plots=False, project='$TMP', name='ultralytics', exist_ok=True, verbose=False)
" | tail -n 1)
echo "ultralytics/pytorch, 1 epoch: $theirs"
rm -rf "$TMP"
