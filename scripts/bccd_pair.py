#!/usr/bin/env python3
"""Plain vs distilled run of the same command, epoch by epoch (the distillation bench).

Usage: python3 scripts/bccd_pair.py PLAIN_RESULTS_CSV DISTILLED_RESULTS_CSV [EVERY=1]
e.g.   python3 scripts/bccd_pair.py benches/results/bccd_yolov8n_plain_40e.csv runs/dist40/results.csv 5
Seconds per epoch are the differences of the cumulative `time` column; the medians skip nothing,
so a paused or shared epoch shows as an outlier in its row. Runs resumed by builds before the
time column continued across a resume restart it there; such an epoch counts from the restart.
"""
import csv
import statistics
import sys


def load(path):
    rows, prev = [], 0.0
    for r in csv.DictReader(open(path)):
        t = float(r["time"])
        dt = t - prev if t >= prev else t  # an old build's resume restarted the clock
        rows.append((int(float(r["epoch"])), float(r["metrics/mAP50(B)"]), float(r["metrics/mAP50-95(B)"]), dt))
        prev = t
    return rows


plain, dist = load(sys.argv[1]), load(sys.argv[2])
every = int(sys.argv[3]) if len(sys.argv) > 3 else 1
n = min(len(plain), len(dist))
print("| epoch | plain mAP50 | plain mAP50-95 | plain s | distilled mAP50 | distilled mAP50-95 | distilled s |")
print("|---:|---:|---:|---:|---:|---:|---:|")
for i in range(n):
    if (i + 1) % every == 0 or i + 1 == n:
        p, d = plain[i], dist[i]
        print(f"| {p[0]} | {p[1]:.4f} | {p[2]:.4f} | {p[3]:.0f} | {d[1]:.4f} | {d[2]:.4f} | {d[3]:.0f} |")
for name, rows in (("plain", plain[:n]), ("distilled", dist[:n])):
    best = max(rows, key=lambda r: r[2])
    print(f"{name}: best mAP50-95 {best[2]:.4f} (epoch {best[0]}), at epoch {n} {rows[-1][2]:.4f}; "
          f"median {statistics.median(r[3] for r in rows):.0f} s/epoch over {n} epochs")
