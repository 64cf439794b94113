#!/usr/bin/env bash
# Issue 30's evidence: is a distilled yolov8n student better than the plain one at each label budget?
# `compare --label-fractions` on one shared dataset, with the teacher that scripts/train_teachers.sh
# trained for it, the images without labels used as unlabeled images by the distilled arm only.
#   bash scripts/label_budget.sh DATASET [OUT]     (DATASET: bccd, aquarium or garbage; OUT: runs/budget)
# garbage (issue 32's comparison) distils a yolov8n-seg student from the segmentation teacher;
# FRACTIONS=1 SEEDS=0,1,2 gives the plain all-labels comparison.
# Resumable: rerun it and finished runs are reused, an interrupted one continues from its last epoch.
# Environment: FRACTIONS (0.25), SEEDS (0,1,2,3,4), EPOCHS (40 on the full set; a fraction f trains
# EPOCHS/f epochs, --scale-epochs, so every fraction makes the same number of optimizer steps),
# IMGSZ (320 for bccd, 416 for aquarium, as the teachers), TEACHER (runs/teachers/DATASET's best),
# RECIPE (the distillation options; default the dense response with the teacher's confident
# detections as pseudo-labels, the best measured on BCCD's quarter so far).
set -euo pipefail
cd "$(dirname "$0")/.."
DATASET=${1:?usage: label_budget.sh bccd|aquarium [OUT]}
OUT=${2:-runs/budget}
MODEL=yolov8n.yaml
case "$DATASET" in
    bccd) IMGSZ=${IMGSZ:-320} ;;
    aquarium) IMGSZ=${IMGSZ:-416} ;;
    garbage) IMGSZ=${IMGSZ:-320}; MODEL=yolov8n-seg.yaml ;;
    *) echo "label_budget.sh: DATASET is bccd, aquarium or garbage, not '$DATASET'" >&2; exit 2 ;;
esac
TEACHER=${TEACHER:-runs/teachers/$DATASET/weights/best.safetensors}
[ -f "$TEACHER" ] || { echo "label_budget.sh: no teacher at $TEACHER (bash scripts/train_teachers.sh trains it)" >&2; exit 2; }
read -r -a RECIPE <<< "${RECIPE:---distill none --logit dense --pseudo-conf 0.5}"
cargo build --quiet
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) threads; teacher $TEACHER"
# --nbs 16: with a few labeled batches per epoch, every batch makes an optimizer step
target/debug/yolodistill compare --label-fractions "${FRACTIONS:-0.25}" --scale-epochs --seeds "${SEEDS:-0,1,2,3,4}" \
    --model "$MODEL" --data "../shared/data/$DATASET/data.yaml" --imgsz "$IMGSZ" --epochs "${EPOCHS:-40}" \
    --batch 16 --nbs 16 --teacher "$TEACHER" "${RECIPE[@]}" --quiet --project "$OUT" --name "$DATASET"
