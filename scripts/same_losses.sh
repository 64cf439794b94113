#!/usr/bin/env bash
# Behaviour check for refactors: trains the same short BCCD runs (plain; sl2 calibrated with
# --logit kl; cwd+mgd+at with --logit dense, half the labels and pseudo-labels) with two builds
# of the binary, and says whether every results.csv value except the time is identical.
# Usage: scripts/same_losses.sh OLD_BINARY NEW_BINARY [WORKDIR]
set -euo pipefail
OLD=$1; NEW=$2; W=${3:-$(mktemp -d)}
D=../shared/data/bccd/data.yaml
TEA=../shared/fixtures/teacher_v8s_bccd.pt
for tag in old new; do
  B=$OLD; [ $tag = new ] && B=$NEW
  common=(--data $D --workers 2 --quiet --project "$W/$tag" --exist-ok --epochs 2)
  "$B" train --model yolov8n.yaml "${common[@]}" --imgsz 320 --batch 16 --fraction 0.3 --seed 3 --name plain
  "$B" train --model yolov8n.yaml "${common[@]}" --imgsz 320 --batch 16 --fraction 0.3 --seed 3 --name sl2 \
    --teacher $TEA --distill sl2 --distill-calibrate 0.25 --logit kl
  "$B" train --model yolov8n.yaml "${common[@]}" --imgsz 256 --batch 8 --fraction 0.2 --seed 5 --name mix \
    --teacher $TEA --distill cwd,mgd,at --logit dense --label-fraction 0.5 --pseudo-conf 0.2
done
python3 - "$W" <<'PYEOF'
import csv, sys
w = sys.argv[1]
for run in ["plain", "sl2", "mix"]:
    a = list(csv.DictReader(open(f"{w}/old/{run}/results.csv")))
    b = list(csv.DictReader(open(f"{w}/new/{run}/results.csv")))
    bad = [(k, x[k], y.get(k)) for x, y in zip(a, b) for k in x if k != "time" and x[k] != y.get(k)]
    same = not bad and len(a) == len(b) and a[0].keys() == b[0].keys()
    print(f"{run}: {len(a)} epochs, {len(a[0]) - 1} columns: {'identical' if same else 'DIFFERENT ' + str(bad[:3])}")
PYEOF
