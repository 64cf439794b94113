#!/usr/bin/env bash
# Forward latency of one model (default yolov8n, batch 1, 640, CPU) on this machine: our forward,
# our ONNX export under onnxruntime, and Ultralytics/PyTorch; BatchNorm folded and all cores
# everywhere, median of RUNS passes after warm-up.
# Usage: scripts/bench_forward.sh [MODEL_YAML] [IMGSZ] [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-yolov8n.yaml}
IMGSZ=${2:-640}
RUNS=${3:-20}
cargo build --quiet
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) threads"
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
ONNX=$(mktemp -d)/model.onnx
target/debug/yolodistill export --model "$MODEL" --imgsz "$IMGSZ" --output "$ONNX" > /dev/null
ortres=$("$PY" - "$ONNX" "$IMGSZ" "$RUNS" <<'PYEOF' | tail -n 1
import json, os, statistics, sys, time
import numpy as np
import onnxruntime as ort
path, imgsz, runs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
so = ort.SessionOptions()
so.intra_op_num_threads = os.cpu_count()
sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
x = np.random.default_rng(0).random((1, 3, imgsz, imgsz), dtype=np.float32)
for _ in range(3):
    sess.run(None, {"images": x})
ts = []
for _ in range(runs):
    t = time.perf_counter(); sess.run(None, {"images": x}); ts.append((time.perf_counter() - t) * 1e3)
print(json.dumps({"median_ms": statistics.median(ts), "mean_ms": statistics.mean(ts), "min_ms": min(ts),
                  "threads": so.intra_op_num_threads, "onnxruntime": ort.__version__}))
PYEOF
)
echo "onnxruntime (our export): $ortres"
python3 - "$ours" "$theirs" "$ortres" <<'PYEOF'
import json, sys
a, b, c = (json.loads(v) for v in sys.argv[1:4])
print(f"median latency: yolodistill {a['median_ms']:.1f} ms, onnxruntime {c['median_ms']:.1f} ms, pytorch {b['median_ms']:.1f} ms")
print(f"ratios: ours/pytorch = {a['median_ms'] / b['median_ms']:.2f}, onnxruntime/pytorch = {c['median_ms'] / b['median_ms']:.2f}, "
      f"ours/onnxruntime = {a['median_ms'] / c['median_ms']:.2f}")
PYEOF
