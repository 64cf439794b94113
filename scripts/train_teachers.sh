#!/usr/bin/env bash
# Teachers for the real-data distillation experiments, trained by our own trainer: one per dataset
# (BCCD, Aquarium; garbage for segmentation), larger than the yolov8n(-seg) students and on a longer schedule. Prints each teacher's
# val mAP50 / mAP50-95 and its training time.
#   bash scripts/train_teachers.sh [OUT]      (OUT defaults to runs/teachers, outside git)
# Resumable: a teacher whose run stopped (a killed session) continues from its last.safetensors,
# and a finished one is only reported, so the script can be rerun until both are done.
# The recipe (environment variables): MODEL (yolov8s.yaml), SEG_MODEL (yolov8s-seg.yaml, the garbage
# set's segmentation teacher), EPOCHS (100), BCCD_IMGSZ (320), GARBAGE_IMGSZ (320), AQUARIUM_IMGSZ
# (416), BATCH (16), SEED (0). EPOCHS=1 is a smoke run.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-runs/teachers}
MODEL=${MODEL:-yolov8s.yaml}
EPOCHS=${EPOCHS:-100}
BATCH=${BATCH:-16}
SEED=${SEED:-0}
cargo build --quiet
YD=target/debug/yolodistill
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) threads"

# teach NAME DATA IMGSZ [MODEL]: trains (or continues, or reports) the teacher of one dataset.
teach() {
    local name=$1 data=$2 imgsz=$3 model=${4:-$MODEL}
    local run="$OUT/$name" last="$OUT/$name/weights/last.safetensors"
    local done_epochs=0
    [ -f "$run/results.csv" ] && done_epochs=$(($(wc -l < "$run/results.csv") - 1))
    if [ "$done_epochs" -ge "$EPOCHS" ]; then
        echo "$name: finished earlier"
    elif [ -f "$last" ]; then
        echo "$name: continuing from epoch $done_epochs of $EPOCHS"
        "$YD" train --resume "$last" --quiet
    else
        "$YD" train --model "$model" --data "$data" --imgsz "$imgsz" --epochs "$EPOCHS" --batch "$BATCH" \
            --seed "$SEED" --project "$OUT" --name "$name" --exist-ok --quiet
    fi
    # best epoch's metrics and the run's training time (results.csv's `time` column, resumes included)
    awk -F, -v name="$name" 'BEGIN { best = -1 } NR == 1 { for (i = 1; i <= NF; i++) col[$i] = i; next }
        { m = $(col["metrics/mAP50-95(B)"]); if (m > best) { best = m; m50 = $(col["metrics/mAP50(B)"]); ep = NR - 1 } t = $(col["time"]) }
        END { printf "%s: best epoch %d of %d: val mAP50 %.4f, mAP50-95 %.4f; training time %.0f min\n", name, ep, NR - 1, m50, best, t / 60 }' \
        "$run/results.csv"
}

teach bccd "$(cd ../shared/data/bccd && pwd)/data.yaml" "${BCCD_IMGSZ:-320}"
# the segmentation teacher of issue 32's garbage compare (a yolov8n-seg student)
teach garbage "$(cd ../shared/data/garbage && pwd)/data.yaml" "${GARBAGE_IMGSZ:-320}" "${SEG_MODEL:-yolov8s-seg.yaml}"
teach aquarium "$(cd ../shared/data/aquarium && pwd)/data.yaml" "${AQUARIUM_IMGSZ:-416}"
