#!/usr/bin/env bash
# Distillation method ranking on BCCD (bench of the distillation issue): yolov8n student,
# teacher_v8s_bccd.pt, same seed and schedule for every method, plus the plain baseline.
# Prints best mAP50 / mAP50-95 and seconds per epoch of each run.
# Each method distils over the whole run (--distill-stop-epoch EPOCHS): with the default stop at
# mosaic close, a 15-epoch run would distil for 5 epochs only.
# Usage: scripts/rank_methods.sh [EPOCHS=15] [IMGSZ=320] [METHODS="none cwd mgd mimic sl2 ld at relation"]
# On a GPU: FEATURES=vulkan YOLODISTILL_DEVICE=vulkan scripts/rank_methods.sh
# YD=path/to/yolodistill uses that binary instead of building one. A finished run is reused and an
# interrupted one resumed, so the ranking can be spread over several sittings (or split between
# processes: METHODS in each, then once more with all of them for the table).
set -euo pipefail
cd "$(dirname "$0")/.."
EPOCHS=${1:-15}
IMGSZ=${2:-320}
METHODS=${3:-"none cwd mgd mimic sl2 ld at relation"}
DATA=../shared/data/bccd/data.yaml
TEACHER=../shared/fixtures/teacher_v8s_bccd.pt
PROJECT=runs/rank-e${EPOCHS}-i${IMGSZ}
if [ -z "${YD:-}" ]; then
  cargo build --quiet ${FEATURES:+--features "$FEATURES"}
  YD=target/debug/yolodistill
fi
for m in $METHODS; do
  case $m in
    none) extra=() ;;
    ld) extra=(--teacher "$TEACHER" --distill none --logit ld) ;;
    sl2) extra=(--teacher "$TEACHER" --distill sl2:6) ;;   # Ultralytics' native weight dis = 6
    *) extra=(--teacher "$TEACHER" --distill "$m") ;;
  esac
  [ "$m" = none ] || extra+=(--distill-stop-epoch "$EPOCHS")
  done_epochs=0
  [ -f "$PROJECT/$m/results.csv" ] && done_epochs=$(($(wc -l < "$PROJECT/$m/results.csv") - 1))
  if [ "$done_epochs" -ge "$EPOCHS" ]; then
    echo "reusing $PROJECT/$m"
  elif [ "$done_epochs" -gt 0 ] && [ -f "$PROJECT/$m/weights/last.safetensors" ]; then
    "$YD" train --resume "$PROJECT/$m/weights/last.safetensors"
  else
    "$YD" train --model yolov8n.yaml --data "$DATA" --imgsz "$IMGSZ" --epochs "$EPOCHS" \
      --batch 16 --seed 0 --project "$PROJECT" --name "$m" --exist-ok "${extra[@]}"
  fi
done
python3 - "$PROJECT" $METHODS <<'PYEOF'
import csv, statistics, sys
project, methods = sys.argv[1], sys.argv[2:]
rows = []
for m in methods:
    try:
        r = list(csv.DictReader(open(f"{project}/{m}/results.csv")))
    except FileNotFoundError:
        r = []
    if not r:
        print(f"{m}: not run yet")
        continue
    best = max(r, key=lambda x: float(x["metrics/mAP50-95(B)"]))
    t = [0.0] + [float(x["time"]) for x in r]
    secs = statistics.median(b - a for a, b in zip(t, t[1:]))  # a paused or shared epoch is an outlier
    rows.append((float(best["metrics/mAP50-95(B)"]), float(best["metrics/mAP50(B)"]), m, secs, len(r)))
base = next((x[0] for x in rows if x[2] == "none"), None)
print("| rank | method | best mAP50 | best mAP50-95 | gain vs plain | median s/epoch | epochs |\n|---:|---|---:|---:|---:|---:|---:|")
for i, (m95, m50, m, s, n) in enumerate(sorted(rows, reverse=True), 1):
    gain = f"{m95 - base:+.4f}" if base is not None else ""
    print(f"| {i} | {m} | {m50:.4f} | {m95:.4f} | {gain} | {s:.0f} | {n} |")
PYEOF
