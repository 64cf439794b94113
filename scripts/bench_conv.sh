#!/usr/bin/env bash
# Per-convolution throughput of one model's training step, ours vs burn-flex vs PyTorch, on this CPU:
# every convolution shape of the model's forward (yolov8n at 320, batch 16 by default), timed
# forward, input gradient and weight gradient (median of REPS). Prints GFLOP/s and ours/PyTorch.
# Usage: scripts/bench_conv.sh [MODEL_YAML] [IMGSZ] [BATCH] [REPS]
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${1:-yolov8n.yaml}
IMGSZ=${2:-320}
BATCH=${3:-16}
REPS=${4:-5}
cargo build --quiet
OURS=$(mktemp)
target/debug/yolodistill bench-conv --model "$MODEL" --imgsz "$IMGSZ" --batch "$BATCH" --reps "$REPS" --json > "$OURS"
PY=$(../shared/tools/ref-env.sh | tail -n 1)
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) threads"
"$PY" - "$OURS" "$REPS" <<'PYEOF'
import json, os, statistics, sys, time
import torch
import torch.nn.functional as F
torch.set_num_threads(os.cpu_count())
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
reps = int(sys.argv[2])
def med(f):
    f()
    ts = []
    for _ in range(reps):
        t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
    return statistics.median(ts)
tot = {"ours": [0.0] * 3, "burn": [0.0] * 3, "torch": [0.0] * 3}
print(f"{'shape':<38}{'n':>3}  GFLOP/s forward / input grad / weight grad: ours | burn-flex | pytorch")
for r in rows:
    x = torch.rand(r["n"], r["ci"], r["h"], r["w"])
    w = torch.rand(r["co"], r["ci"] // r["groups"], r["k"], r["k"])
    s, p, g = r["stride"], r["pad"], r["groups"]
    y = F.conv2d(x, w, None, s, p, 1, g)
    dy = torch.rand_like(y)
    with torch.no_grad():
        t = [med(lambda: F.conv2d(x, w, None, s, p, 1, g)),
             med(lambda: torch.nn.grad.conv2d_input(x.shape, w, dy, s, p, 1, g)),
             med(lambda: torch.nn.grad.conv2d_weight(x, w.shape, dy, s, p, 1, g))]
    gf = r["gflop"]
    for i in range(3):
        tot["ours"][i] += r["ours_s"][i] * r["count"]
        tot["burn"][i] += r["burn_s"][i] * r["count"]
        tot["torch"][i] += t[i] * r["count"]
    fmt = lambda ts: " ".join(f"{gf / v:6.1f}" for v in ts)
    print(f"{r['shape']:<38}{r['count']:>3}  {fmt(r['ours_s'])} | {fmt(r['burn_s'])} | {fmt(t)}")
ms = lambda ts: " + ".join(f"{v * 1e3:.0f}" for v in ts) + f" = {sum(ts) * 1e3:.0f} ms"
print(f"all convolutions of one step (forward + input grad + weight grad):")
for k in ("ours", "burn", "torch"):
    print(f"  {k:<6} {ms(tot[k])}")
o, b, t = sum(tot["ours"]), sum(tot["burn"]), sum(tot["torch"])
print(f"ratios (time): ours/pytorch = {o / t:.2f} (forward {tot['ours'][0] / tot['torch'][0]:.2f}, input grad "
      f"{tot['ours'][1] / tot['torch'][1]:.2f}, weight grad {tot['ours'][2] / tot['torch'][2]:.2f}); burn-flex/pytorch = {b / t:.2f}; "
      f"torch {torch.__version__}")
PYEOF
rm -f "$OURS"
