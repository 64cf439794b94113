#!/usr/bin/env bash
# The GPU check of issue 18, in two steps:
#   scripts/gpu_check.sh --prepare   here (network, any CPU): builds the binary with the GPU
#       feature, strips and compresses it, and copies what the check reads into .gpu/ (ignored by
#       git; carry it): the binary, BCCD and the BCCD teacher. Then fetch the Vulkan loader debs
#       into .gl/ as the device tool's README says.
#   scripts/gpu_check.sh             on the GPU machine (no network), from the repository root:
#       prints one JSON object (and writes it to $OUT/gpu_check.json when $OUT is set):
#       - val of the BCCD teacher vs the CPU's figures (val parity), in f32, f16 and bf16,
#       - yolov8n BCCD training epoch times, plain and distilled, with a cold and a warm kernel
#         cache (a first process fills the cache, a second one reads it),
#       - images/s of the training step alone at batch 16 and 64 (bench-train; targets
#         assigned on the device, the GPU's default),
#       - forward latency at batch 1 and 32 (benchmark), in f32 and f16.
# Environment: DEVICE (default vulkan), FEATURE (default vulkan), EPOCHS per training run (1),
# RUNS of each timing (20), BIN (default .gpu/yolodistill). DEVICE=cpu RUNS=3 checks the plumbing
# on any machine (after `cargo build`, with BIN=target/debug/yolodistill).
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-vulkan}
FEATURE=${FEATURE-vulkan}
EPOCHS=${EPOCHS:-1}
RUNS=${RUNS:-20}
G=.gpu

if [ "${1:-}" = "--prepare" ]; then
    grep -qx '/.gpu/' .git/info/exclude 2> /dev/null || echo '/.gpu/' >> .git/info/exclude
    cargo build --features "$FEATURE"
    mkdir -p $G
    strip -o $G/yolodistill target/debug/yolodistill
    xz -T2 -6 -f $G/yolodistill
    rm -rf $G/bccd && cp -r --no-preserve=mode ../shared/data/bccd $G/bccd
    rm -f $G/bccd/labels/*.cache*
    cp --no-preserve=mode ../shared/fixtures/teacher_v8s_bccd.pt $G/
    du -sh $G
    exit 0
fi

# The carried binary and the Vulkan loader (device README: .gl holds the loader debs).
BIN=${BIN:-$G/yolodistill}
[ -x "$BIN" ] || { xz -dkf "$BIN.xz" && chmod +x "$BIN"; }
if [ -d .gl ] && ! ldconfig -p | grep libvulkan > /dev/null; then
    for f in .gl/*.deb; do dpkg -x "$f" /; done
    ldconfig
fi
DATA=$PWD/$G/bccd/data.yaml
TEACHER=$PWD/$G/teacher_v8s_bccd.pt
W=$(mktemp -d)
export YOLODISTILL_CACHE=$W/kernel-cache    # the kernel cache both training processes share
RESULTS=$W/results.jsonl
note() { echo "$1" >> "$RESULTS"; }
secs() { python3 -c "import time; print(time.time())"; }

# 1. val parity: the CPU gives mAP50 0.807062, mAP50-95 0.496903 (tests/val_parity.rs)
# (f16 and bf16 within 0.002 of f32 on the CPU: 0.807129/0.496944 and 0.807359/0.497078)
for half in "" "--half f16" "--half bf16"; do
    v=$("$BIN" --device "$DEVICE" val --model "$TEACHER" --data "$DATA" --json --plots false --project "$W/val" --exist-ok $half 2> "$W/val.log" | tail -n 1)
    note "{\"check\": \"val_teacher\", \"half\": \"${half#--half }\", \"result\": $v, \"cpu_map50\": 0.807062, \"cpu_map\": 0.496903}"
done

# 2. training epochs: cold cache (first process), then warm (second process), plain and distilled
train() { # name, extra flags...
    local name=$1; shift
    local t0; t0=$(secs)
    "$BIN" --device "$DEVICE" train --model yolov8n.yaml --data "$DATA" --imgsz 320 --batch 16 --epochs "$EPOCHS" \
        --project "$W/runs" --name "$name" --quiet "$@" 2> "$W/$name.log"
    local t1; t1=$(secs)
    python3 - "$W/runs/$name/results.csv" "$name" "$t0" "$t1" >> "$RESULTS" <<'PY'
import csv, json, sys
rows = list(csv.DictReader(open(sys.argv[1])))
t = [float(r["time"]) for r in rows]
epochs = [t[0]] + [b - a for a, b in zip(t, t[1:])]
print(json.dumps({"check": "train", "run": sys.argv[2], "process_s": float(sys.argv[4]) - float(sys.argv[3]),
                  "epoch_s": epochs, "cls_loss": [float(r["train/cls_loss"]) for r in rows],
                  "map50": [float(r["metrics/mAP50(B)"]) for r in rows]}))
PY
}
train plain_cold
train plain_warm
train distilled_cold --teacher "$TEACHER" --distill cwd --logit ld   # the teacher's kernels are new
train distilled_warm --teacher "$TEACHER" --distill cwd --logit ld

# 3. the training step alone, 4. forward latency
for b in 16 64; do
    note "{\"check\": \"train_step\", \"batch\": $b, \"result\": $("$BIN" --device "$DEVICE" bench-train --data "$DATA" --batch $b --iters "$RUNS" --json 2> /dev/null | tail -n 1)}"
done
for half in "" "--half f16"; do
    for b in 1 32; do
        r=$("$BIN" --device "$DEVICE" benchmark --model yolov8n.yaml --imgsz 640 --batch $b --runs "$RUNS" --json $half 2> /dev/null | tail -n 1)
        note "{\"check\": \"forward\", \"batch\": $b, \"half\": \"${half#--half }\", \"result\": $r}"
    done
done

python3 - "$RESULTS" "$DEVICE" <<'PY' | tee "${OUT:-$W}/gpu_check.json"
import json, platform, sys
checks = [json.loads(l) for l in open(sys.argv[1])]
print(json.dumps({"device": sys.argv[2], "host": platform.node(), "checks": checks}, indent=1))
PY
