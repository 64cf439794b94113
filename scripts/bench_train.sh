#!/usr/bin/env bash
# Training throughput, ours vs Ultralytics/PyTorch on this machine: a fixed number of training
# iterations (forward, loss, backward, optimizer step; one step per batch on both sides) and of
# data-pipeline batches (mosaic on), same model, batch and image size. Prints images/s and ratios.
# Usage: scripts/bench_train.sh [MODEL_YAML] [IMGSZ] [BATCH] [ITERS]
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-yolov8n.yaml}
IMGSZ=${2:-320}
BATCH=${3:-16}
ITERS=${4:-10}
DATA=$(cd ../shared/data/bccd && pwd)/data.yaml
cargo build --quiet
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) threads"
# the JPEG decoder's SIMD is built only when nasm was on the PATH (1.7x faster decoding, same pixels)
nm target/debug/yolodistill 2> /dev/null | grep -q jsimd_idct_islow_sse2 ||
    echo "warning: this build decodes JPEGs without SIMD (no nasm at build time: apt install nasm, then cargo clean -p mozjpeg-sys); the data pipeline figure is low"
ours=$(target/debug/yolodistill bench-train --model "$MODEL" --data "$DATA" --imgsz "$IMGSZ" --batch "$BATCH" \
    --iters "$ITERS" --data-batches 12 --json 2>/dev/null | tail -n 1)
echo "yolodistill: $ours"
PY=$(../shared/tools/ref-env.sh | tail -n 1)
TMP=$(mktemp -d)
theirs=$("$PY" - "$MODEL" "$DATA" "$IMGSZ" "$BATCH" "$ITERS" "$TMP" <<'PYEOF' 2>/dev/null | tail -n 1
import json, os, sys, time
import torch
from ultralytics import YOLO
name, data, imgsz, batch, iters, tmp = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
torch.set_num_threads(os.cpu_count())
res, stamps = {}, []
class Stop(Exception):
    pass
def on_train_start(tr):
    t, n = time.perf_counter(), 0
    for i, b in enumerate(tr.train_loader):
        n += b["img"].shape[0]
        if i + 1 >= 12:
            break
    res["data_images_per_s"] = n / (time.perf_counter() - t)
def on_train_batch_end(tr):
    stamps.append(time.perf_counter())
    if len(stamps) > iters:
        raise Stop
m = YOLO(name)
m.add_callback("on_train_start", on_train_start)
m.add_callback("on_train_batch_end", on_train_batch_end)
try:
    m.train(data=data, imgsz=imgsz, batch=batch, nbs=batch, epochs=1, workers=2, device="cpu", amp=False,
            plots=False, val=False, project=tmp, name="bench", exist_ok=True, verbose=False)
except Stop:
    pass
res["train_images_per_s"] = iters * batch / (stamps[-1] - stamps[0])
res["torch"] = torch.__version__
print(json.dumps(res))
PYEOF
)
echo "ultralytics/pytorch: $theirs"
rm -rf "$TMP"
python3 - "$ours" "$theirs" <<'PYEOF'
import json, sys
a, b = json.loads(sys.argv[1]), json.loads(sys.argv[2])
print(f"training: yolodistill {a['train_images_per_s']:.2f} images/s, pytorch {b['train_images_per_s']:.2f} images/s, "
      f"ratio {a['train_images_per_s'] / b['train_images_per_s']:.2f}")
print(f"data pipeline: yolodistill {a['data_images_per_s']:.1f} images/s, ultralytics {b['data_images_per_s']:.1f} images/s, "
      f"ratio {a['data_images_per_s'] / b['data_images_per_s']:.2f}")
PYEOF
