#!/usr/bin/env python3
"""Table of scripts/amp_accuracy.sh: per seed, the f32 and the bf16 run's mAP50 and mAP50-95 at
their best epoch (by fitness, 0.1·mAP50 + 0.9·mAP50-95, as `best` is chosen) and mAP50-95 at the
last epoch; then bf16 − f32 paired by seed (mean ± 95% CI, Student's t) next to the seed spread of
f32 alone (standard deviation and range over seeds).

Usage: python3 scripts/amp_table.py OUT SEED [SEED …]
"""
import csv
import statistics
import sys
from pathlib import Path

T975 = [12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228]


def load(run):
    rows = list(csv.DictReader(open(run / "results.csv")))
    m50 = [float(r["metrics/mAP50(B)"]) for r in rows]
    m = [float(r["metrics/mAP50-95(B)"]) for r in rows]
    best = max(range(len(rows)), key=lambda i: 0.1 * m50[i] + 0.9 * m[i])
    times = [float(r["time"]) for r in rows]
    per_epoch = statistics.median(b - a for a, b in zip([0.0] + times, times))
    return {"m50": m50[best], "m": m[best], "last": m[-1], "epoch": best + 1, "s": per_epoch}


def ci(xs):
    mean = statistics.mean(xs)
    if len(xs) < 2:
        return mean, float("nan")
    return mean, T975[len(xs) - 2] * statistics.stdev(xs) / len(xs) ** 0.5


out, seeds = Path(sys.argv[1]), sys.argv[2:]
runs = {(a, s): load(out / f"{a}-s{s}") for s in seeds for a in ("fp32", "bf16")}
print("| seed | f32 mAP50 | f32 mAP50-95 (epoch) | bf16 mAP50 | bf16 mAP50-95 (epoch) | bf16 − f32 mAP50-95 | last epoch: f32, bf16 | s/epoch f32, bf16 |")
print("|---:|---:|---:|---:|---:|---:|---:|---:|")
for s in seeds:
    f, b = runs["fp32", s], runs["bf16", s]
    print(f"| {s} | {f['m50']:.4f} | {f['m']:.4f} ({f['epoch']}) | {b['m50']:.4f} | {b['m']:.4f} ({b['epoch']}) | {b['m'] - f['m']:+.4f} "
          f"| {f['last']:.4f}, {b['last']:.4f} | {f['s']:.1f}, {b['s']:.1f} |")
for key, name in [("m", "mAP50-95 at the best epoch"), ("m50", "mAP50 at the best epoch"), ("last", "mAP50-95 at the last epoch")]:
    d, h = ci([runs["bf16", s][key] - runs["fp32", s][key] for s in seeds])
    f32 = [runs["fp32", s][key] for s in seeds]
    sd = statistics.stdev(f32) if len(f32) > 1 else float("nan")
    print(f"\n{name}: bf16 − f32 {d:+.4f} ± {h:.4f} (paired, 95% CI, {len(seeds)} seeds); "
          f"f32 over seeds: sd {sd:.4f}, range {min(f32):.4f}–{max(f32):.4f}", end="")
print()
