#!/usr/bin/env python3
"""Per-epoch table of one of our BCCD runs next to Ultralytics' run of the same command
(../shared/fixtures/ultralytics_bccd.json), for the training and distillation benches.

Usage: python3 scripts/bccd_table.py RUN_DIR [v8n_plain|v8n_native_distill|teacher_v8s]
"""
import csv
import json
import statistics
import sys
from pathlib import Path

run = Path(sys.argv[1])
key = sys.argv[2] if len(sys.argv) > 2 else "v8n_plain"
ref = json.loads((Path(__file__).resolve().parent.parent.parent / "shared/fixtures/ultralytics_bccd.json").read_text())[key]
rows = list(csv.DictReader(open(run / "results.csv")))
theirs = {e["epoch"]: dict(e) for e in ref["per_epoch"]}
# Ultralytics' `seconds` are cumulative: per-epoch times are the differences.
last = 0.0
for e in sorted(theirs):
    theirs[e]["dt"], last = theirs[e]["seconds"] - last, theirs[e]["seconds"]
print(f"| epoch | ours mAP50 | ours mAP50-95 | ours s | Ultralytics mAP50 | Ultralytics mAP50-95 | Ultralytics s |")
print("|---:|---:|---:|---:|---:|---:|---:|")
prev = 0.0
secs = []
for r in rows:
    e = int(float(r["epoch"]))
    t = float(r["time"])
    secs.append(t - prev)
    prev = t
    u = theirs.get(e, {})
    print(f"| {e} | {float(r['metrics/mAP50(B)']):.4f} | {float(r['metrics/mAP50-95(B)']):.4f} | {secs[-1]:.0f} | "
          f"{u.get('mAP50', float('nan')):.4f} | {u.get('mAP50-95', float('nan')):.4f} | {u.get('dt', float('nan')):.1f} |")
best = max(rows, key=lambda r: float(r["metrics/mAP50-95(B)"]))
print(f"\nours: best epoch {int(float(best['epoch']))}: mAP50 {float(best['metrics/mAP50(B)']):.4f}, "
      f"mAP50-95 {float(best['metrics/mAP50-95(B)']):.4f}; final mAP50-95 {float(rows[-1]['metrics/mAP50-95(B)']):.4f}; "
      f"median {statistics.median(secs):.0f} s/epoch, total {float(rows[-1]['time']):.0f} s")
vb = ref["val_best"]
print(f"Ultralytics ({key}): best mAP50 {vb['mAP50']:.4f}, mAP50-95 {vb['mAP50-95']:.4f}; "
      f"median {statistics.median(u['dt'] for u in theirs.values()):.1f} s/epoch, total {max(u['seconds'] for u in theirs.values()):.0f} s")
