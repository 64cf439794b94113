#!/usr/bin/env bash
# BCCD with 25% of the labels: yolov8n students from scratch, plain vs distilled from the shared
# teacher with the other 75% of the training images as unlabeled images, three seeds.
#   bash scripts/bccd_label25.sh [OUT]    (OUT defaults to runs/bccd25; about an hour on 2 cores)
# 1. `compare` with --logit dense (plain and dense runs, the table with the 95% CI).
# 2. The same distillation plus --pseudo-conf 0.5, paired with the same plain runs (copied, since a
#    plain run does not depend on the distillation options), and compared the same way.
set -euo pipefail
OUT=${1:-runs/bccd25}
YD=${YD:-cargo run --quiet --}
COMMON=(--model yolov8n.yaml --data ../shared/data/bccd/data.yaml --imgsz 320 --epochs 40 --batch 16 --nbs 16
        --label-fraction 0.25 --teacher ../shared/fixtures/teacher_v8s_bccd.pt --distill none --logit dense --quiet)
$YD compare --seeds 0,1,2 "${COMMON[@]}" --project "$OUT" --name cmp
mkdir -p "$OUT/cmp_pseudo"
for s in 0 1 2; do
    [ -e "$OUT/cmp_pseudo/plain-s$s" ] || cp -r "$OUT/cmp/plain-s$s" "$OUT/cmp_pseudo/plain-s$s"
done
$YD compare --seeds 0,1,2 "${COMMON[@]}" --pseudo-conf 0.5 --project "$OUT" --name cmp_pseudo
