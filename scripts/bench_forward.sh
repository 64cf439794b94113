#!/usr/bin/env bash
# Forward latency of one model (default yolov8n, batch 1, 640, CPU) on this machine: our forward,
# our ONNX export under onnxruntime, and Ultralytics/PyTorch; BatchNorm folded and all the cores
# this process may use (`taskset`) everywhere. The three take turns for ROUNDS rounds of RUNS timed passes each (after warm-up), so
# that a slow spell of a shared machine falls on all of them; each figure is the median over its
# rounds of the per-round medians, and the ratio is printed per round too. PyTorch is also timed
# under bf16 autocast where the CPU has bf16 arithmetic (AVX512-BF16 or AMX), or with BF16=1
# (emulated elsewhere, several times slower than fp32), and so is our forward with bf16 products
# (`benchmark --amp bf16`, as a distillation's teacher runs under --amp).
# NO_BUILD=1 times target/debug/yolodistill as it is; PY names the Python with PyTorch, Ultralytics
# and onnxruntime (default: ../shared/tools/ref-env.sh's).
# Usage: [BF16=1] [NO_BUILD=1] [PY=python3] scripts/bench_forward.sh [MODEL_YAML] [IMGSZ] [RUNS] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-yolov8n.yaml}
IMGSZ=${2:-640}
RUNS=${3:-20}
ROUNDS=${4:-3}
for pair in "IMGSZ=$IMGSZ" "RUNS=$RUNS" "ROUNDS=$ROUNDS"; do
    [[ ${pair#*=} =~ ^[1-9][0-9]*$ ]] || { echo "bench_forward.sh: ${pair%%=*} must be a positive integer, not '${pair#*=}'" >&2; exit 2; }
done
[[ ${BF16:-0} =~ ^[01]$ ]] || { echo "$(basename "$0"): BF16 must be 0 or 1, not '$BF16'" >&2; exit 2; }
[[ ${NO_BUILD:-0} =~ ^[01]$ ]] || { echo "$(basename "$0"): NO_BUILD must be 0 or 1, not '$NO_BUILD'" >&2; exit 2; }
[[ ${NO_BUILD:-0} == 1 ]] || cargo build --quiet
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) threads"
PY=${PY:-$(../shared/tools/ref-env.sh | tail -n 1)}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
cat > "$WORK/time_pytorch.py" <<'PYEOF'
import json, os, statistics, sys, time
import torch
from ultralytics import YOLO
name, imgsz, runs, bf16 = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4] == "1"
torch.set_num_threads(len(os.sched_getaffinity(0)))
m = YOLO(name).model.fuse(verbose=False).eval()
x = torch.rand(1, 3, imgsz, imgsz)
def times(autocast):
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        for _ in range(3):
            m(x)
        ts = []
        for _ in range(runs):
            t = time.perf_counter(); m(x); ts.append((time.perf_counter() - t) * 1e3)
    return ts
ts = times(False)
res = {"median_ms": statistics.median(ts), "mean_ms": statistics.mean(ts), "min_ms": min(ts),
       "threads": torch.get_num_threads(), "torch": torch.__version__}
if bf16:
    res["bf16_median_ms"] = statistics.median(times(True))
print(json.dumps(res))
PYEOF
cat > "$WORK/time_onnxruntime.py" <<'PYEOF'
import json, os, statistics, sys, time
import numpy as np
import onnxruntime as ort
path, imgsz, runs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
so = ort.SessionOptions()
so.intra_op_num_threads = len(os.sched_getaffinity(0))
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
target/debug/yolodistill export --model "$MODEL" --imgsz "$IMGSZ" --output "$WORK/model.onnx" > /dev/null
if grep -qwE 'avx512_bf16|amx_bf16' /proc/cpuinfo || [[ ${BF16:-0} == 1 ]]; then TIME_BF16=1; else TIME_BF16=0; fi
for round in $(seq "$ROUNDS"); do
    ours=$(target/debug/yolodistill benchmark --model "$MODEL" --imgsz "$IMGSZ" --runs "$RUNS" --json)
    if [[ $TIME_BF16 == 1 ]]; then
        ours16=$(target/debug/yolodistill benchmark --model "$MODEL" --imgsz "$IMGSZ" --runs "$RUNS" --amp bf16 --json 2>/dev/null)
        echo "round $round: yolodistill --amp bf16: $ours16"
        ours=$(python3 -c 'import json,sys; a=json.loads(sys.argv[1]); a["bf16_median_ms"]=json.loads(sys.argv[2])["median_ms"]; a["bf16_native"]=json.loads(sys.argv[2])["native_bf16"]; print(json.dumps(a))' "$ours" "$ours16")
    fi
    theirs=$("$PY" "$WORK/time_pytorch.py" "$MODEL" "$IMGSZ" "$RUNS" "$TIME_BF16" | tail -n 1)
    ortres=$("$PY" "$WORK/time_onnxruntime.py" "$WORK/model.onnx" "$IMGSZ" "$RUNS" | tail -n 1)
    echo "round $round: yolodistill: $ours"
    echo "round $round: ultralytics/pytorch: $theirs"
    echo "round $round: onnxruntime (our export): $ortres"
    printf '%s\t%s\t%s\n' "$ours" "$theirs" "$ortres" >> "$WORK/rounds.tsv"
done
python3 - "$WORK/rounds.tsv" <<'PYEOF'
import json, statistics, sys
rounds = [[json.loads(v) for v in line.rstrip("\n").split("\t")] for line in open(sys.argv[1])]
for i, (a, b, c) in enumerate(rounds, 1):
    print(f"round {i}: yolodistill {a['median_ms']:.1f} ms, onnxruntime {c['median_ms']:.1f} ms, "
          f"pytorch {b['median_ms']:.1f} ms, ours/pytorch = {a['median_ms'] / b['median_ms']:.2f}")
a, b, c = (statistics.median(r[i]["median_ms"] for r in rounds) for i in range(3))
print(f"median latency over {len(rounds)} rounds: yolodistill {a:.1f} ms, onnxruntime {c:.1f} ms, pytorch {b:.1f} ms")
print(f"ratios: ours/pytorch = {a / b:.2f}, onnxruntime/pytorch = {c / b:.2f}, ours/onnxruntime = {a / c:.2f}")
# paired: each round's two medians were taken minutes apart at most, so a slow spell falls on both
paired = statistics.median(r[0]["median_ms"] / r[2]["median_ms"] for r in rounds)
print(f"median of the per-round ratios ours/onnxruntime = {paired:.2f}; fastest passes ours {min(r[0]['min_ms'] for r in rounds):.1f} ms, "
      f"onnxruntime {min(r[2]['min_ms'] for r in rounds):.1f} ms")
if "bf16_median_ms" in rounds[0][1]:
    d = statistics.median(r[1]["bf16_median_ms"] for r in rounds)
    print(f"pytorch under bf16 autocast: {d:.1f} ms, ours (fp32)/pytorch bf16 = {a / d:.2f}")
if "bf16_median_ms" in rounds[0][0]:
    e = statistics.median(r[0]["bf16_median_ms"] for r in rounds)
    kind = "native" if rounds[0][0]["bf16_native"] else "emulated: no AVX512-BF16"
    line = f"ours with bf16 products ({kind}): {e:.1f} ms, /ours fp32 = {e / a:.2f}, /onnxruntime = {e / c:.2f}"
    if "bf16_median_ms" in rounds[0][1]:
        line += f", /pytorch bf16 = {e / d:.2f}"
    print(line)
else:
    print("pytorch under bf16 autocast: not timed, this CPU has no bf16 arithmetic (BF16=1 times it emulated)")
PYEOF
