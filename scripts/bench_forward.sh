#!/usr/bin/env bash
# Forward latency of one model (default yolov8n, batch 1, 640, CPU): ours vs Ultralytics/PyTorch on
# this machine, both with BatchNorm folded and all cores, median of RUNS passes after warm-up.
# Usage: scripts/bench_forward.sh [MODEL_YAML] [IMGSZ] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-yolov8n.yaml}
IMGSZ=${2:-640}
RUNS=${3:-20}
cargo build --quiet
ours=$(target/debug/yolodistill benchmark --model "$MODEL" --imgsz "$IMGSZ" --runs "$RUNS" --json)
echo "yolodistill: $ours"
PY=$(../shared/tools/ref-env.sh | tail -n 1)
theirs=$("$PY" - "$MODEL" "$IMGSZ" "$RUNS" <<'PYEOF' | tail -n 1
import json, os, statistics, sys, time
import torch
from ultralytics import YOLO
name, imgsz, runs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
torch.set_num_threads(os.cpu_count())
m = YOLO(name).model.fuse(verbose=False).eval()
x = torch.rand(1, 3, imgsz, imgsz)
with torch.inference_mode():
    for _ in range(3):
        m(x)
    ts = []
    for _ in range(runs):
        t = time.perf_counter(); m(x); ts.append((time.perf_counter() - t) * 1e3)
print(json.dumps({"median_ms": statistics.median(ts), "mean_ms": statistics.mean(ts), "min_ms": min(ts),
                  "threads": torch.get_num_threads(), "torch": torch.__version__}))
PYEOF
)
echo "ultralytics/pytorch: $theirs"
python3 - "$ours" "$theirs" <<'PYEOF'
import json, sys
a, b = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"median latency: yolodistill {a['median_ms']:.1f} ms, pytorch {b['median_ms']:.1f} ms, "
      f"ratio ours/pytorch = {a['median_ms'] / b['median_ms']:.2f}")
PYEOF
