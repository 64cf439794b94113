#!/usr/bin/env bash
# Training throughput, ours vs Ultralytics/PyTorch on this machine: a fixed number of training
# iterations (forward, loss, backward, optimizer step; one step per batch on both sides) and of
# data-pipeline batches (mosaic on; DATA_BATCHES after the first, over epochs back to back: about
# three BCCD epochs, as a 12-batch window moved Ultralytics' figure by ±20% between runs), same model,
# batch and image size. Prints images/s and ratios.
# PyTorch's own step (the trainer's model, loss and optimizer on batches already loaded) is also
# timed in fp32 and under bf16 autocast, the mixed precision a bf16 CPU accelerates; where the CPU
# lacks bf16 arithmetic (AVX512-BF16 or AMX) the bf16 step is emulated, about 5x slower than fp32,
# and is timed only with BF16=1. Under the same condition our step is also timed with --amp bf16
# (bf16 products, f32 sums: native on AVX512-BF16, emulated elsewhere).
# NO_BUILD=1 times target/debug/yolodistill as it is; PY names the Python with PyTorch and
# Ultralytics (default: ../shared/tools/ref-env.sh's). Threads: the cores this process may use.
# Usage: [BF16=1] [DATA_BATCHES=36] [NO_BUILD=1] [PY=python3] scripts/bench_train.sh [MODEL_YAML] [IMGSZ] [BATCH] [ITERS]
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-yolov8n.yaml}
IMGSZ=${2:-320}
BATCH=${3:-16}
ITERS=${4:-10}
DATA_BATCHES=${DATA_BATCHES:-36}
for pair in "IMGSZ=$IMGSZ" "BATCH=$BATCH" "ITERS=$ITERS" "DATA_BATCHES=$DATA_BATCHES"; do
    [[ ${pair#*=} =~ ^[1-9][0-9]*$ ]] || { echo "bench_train.sh: ${pair%%=*} must be a positive integer, not '${pair#*=}'" >&2; exit 2; }
done
DATA=$(cd ../shared/data/bccd && pwd)/data.yaml
[[ ${BF16:-0} =~ ^[01]$ ]] || { echo "$(basename "$0"): BF16 must be 0 or 1, not '$BF16'" >&2; exit 2; }
[[ ${NO_BUILD:-0} =~ ^[01]$ ]] || { echo "$(basename "$0"): NO_BUILD must be 0 or 1, not '$NO_BUILD'" >&2; exit 2; }
[[ ${NO_BUILD:-0} == 1 ]] || cargo build --quiet
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) threads"
# the JPEG decoder's SIMD is built only when nasm was on the PATH (1.7x faster decoding, same pixels)
# (grep reads all of nm's output: with -q it would stop early, and pipefail would count nm's SIGPIPE)
nm target/debug/yolodistill 2> /dev/null | grep jsimd_idct_islow_sse2 > /dev/null ||
    echo "warning: this build decodes JPEGs without SIMD (no nasm at build time: apt install nasm, then cargo clean -p mozjpeg-sys); the data pipeline figure is low"
ours=$(target/debug/yolodistill bench-train --model "$MODEL" --data "$DATA" --imgsz "$IMGSZ" --batch "$BATCH" \
    --iters "$ITERS" --data-batches "$DATA_BATCHES" --json 2>/dev/null | tail -n 1)
echo "yolodistill: $ours"
if grep -qwE 'avx512_bf16|amx_bf16' /proc/cpuinfo || [[ ${BF16:-0} == 1 ]]; then TIME_BF16=1; else TIME_BF16=0; fi
ours_bf16='{}'
if [[ $TIME_BF16 == 1 ]]; then
    ours_bf16=$(target/debug/yolodistill bench-train --model "$MODEL" --data "$DATA" --imgsz "$IMGSZ" --batch "$BATCH" \
        --iters "$ITERS" --data-batches 1 --amp bf16 --json 2>/dev/null | tail -n 1)
    echo "yolodistill --amp bf16: $ours_bf16"
fi
PY=${PY:-$(../shared/tools/ref-env.sh | tail -n 1)}
TMP=$(mktemp -d)
theirs=$("$PY" - "$MODEL" "$DATA" "$IMGSZ" "$BATCH" "$ITERS" "$TMP" "$TIME_BF16" "$DATA_BATCHES" <<'PYEOF' 2>/dev/null | tail -n 1
import json, os, sys, time
import torch
from ultralytics import YOLO
name, data, imgsz, batch, iters, tmp = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), sys.argv[6]
time_bf16, data_batches = sys.argv[7] == "1", int(sys.argv[8])
torch.set_num_threads(len(os.sched_getaffinity(0)))
res, stamps = {}, []
class Stop(Exception):
    pass
def on_train_start(tr):
    stream = (b for _ in iter(int, 1) for b in tr.train_loader)  # epochs back to back
    next(stream)  # the clock starts once the workers deliver
    t, n = time.perf_counter(), 0
    for i, b in enumerate(stream):
        n += b["img"].shape[0]
        if i + 1 >= data_batches:
            break
    res["data_images_per_s"] = n / (time.perf_counter() - t)
    # PyTorch's own step, fp32 and bf16 autocast, on batches loaded beforehand (one untimed
    # warm-up step each).
    batches = []
    while len(batches) < iters + 1:
        batches += [tr.preprocess_batch(b) for b in tr.train_loader][: iters + 1 - len(batches)]
    tr.model.train()
    def step(b, bf16):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss, _ = tr.model(b)
        loss.sum().backward()
        torch.nn.utils.clip_grad_norm_(tr.model.parameters(), max_norm=10.0)
        tr.optimizer.step()
        tr.optimizer.zero_grad()
    for key, bf16 in [("step_fp32_images_per_s", False), ("step_bf16_images_per_s", True)][: 1 + time_bf16]:
        step(batches[0], bf16)
        t = time.perf_counter()
        for b in batches[1:]:
            step(b, bf16)
        res[key] = iters * batch / (time.perf_counter() - t)
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
python3 - "$ours" "$theirs" "$ours_bf16" <<'PYEOF'
import json, sys
a, b, a16 = json.loads(sys.argv[1]), json.loads(sys.argv[2]), json.loads(sys.argv[3])
print(f"training: yolodistill {a['train_images_per_s']:.2f} images/s, pytorch {b['train_images_per_s']:.2f} images/s, "
      f"ratio {a['train_images_per_s'] / b['train_images_per_s']:.2f}")
ours = a['train_images_per_s']
fp32, bf16 = b['step_fp32_images_per_s'], b.get('step_bf16_images_per_s')
line = f"pytorch's own step: fp32 {fp32:.2f} images/s (ours/fp32 {ours / fp32:.2f})"
if bf16:
    line += f", bf16 autocast {bf16:.2f} images/s (ours/bf16 {ours / bf16:.2f})"
else:
    line += ", bf16 autocast not timed: this CPU has no bf16 arithmetic (BF16=1 times it emulated)"
print(line)
if a16:
    ips = a16['train_images_per_s']
    kind = "native" if a16['native_bf16'] else "emulated: this CPU has no AVX512-BF16"
    line = f"yolodistill --amp bf16 ({kind}): {ips:.2f} images/s, ours fp32 x{ips / ours:.2f}, pytorch's fp32 step x{ips / fp32:.2f}"
    if bf16:
        line += f", pytorch's bf16 autocast step x{ips / bf16:.2f}"
    print(line)
print(f"data pipeline: yolodistill {a['data_images_per_s']:.1f} images/s, ultralytics {b['data_images_per_s']:.1f} images/s, "
      f"ratio {a['data_images_per_s'] / b['data_images_per_s']:.2f}")
PYEOF
