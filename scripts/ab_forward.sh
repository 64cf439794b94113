#!/usr/bin/env bash
# A/B of the forward's latency between builds or kernel settings on this machine: each round runs
# `benchmark` (yolov8n, batch 1, 640, 20 timed passes) once per side, the sides taking turns, so that
# a slow spell of a shared machine falls on all of them. Prints each round's medians, the median of
# the per-round ratios to the first side, and the best (min) pass of each side.
# A side is BINARY[:KERNELS], KERNELS being a YOLODISTILL_KERNELS value (ours, direct, gemm, burn).
# Usage: scripts/ab_forward.sh ROUNDS SIDE SIDE [SIDE...]
#   e.g. scripts/ab_forward.sh 12 /tmp/old-yolodistill target/debug/yolodistill target/debug/yolodistill:gemm
set -euo pipefail
[[ $# -ge 3 && $1 =~ ^[1-9][0-9]*$ ]] || { echo "usage: $0 ROUNDS SIDE SIDE [SIDE...] (SIDE = BINARY[:KERNELS])" >&2; exit 2; }
ROUNDS=$1
shift
for side in "$@"; do
    [[ -x ${side%%:*} ]] || { echo "ab_forward.sh: ${side%%:*} is not an executable" >&2; exit 2; }
done
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) threads"
for _ in $(seq "$ROUNDS"); do
    row=()
    for side in "$@"; do
        bin=${side%%:*}
        kernels=ours
        [[ $side == *:* ]] && kernels=${side#*:}
        row+=("$(YOLODISTILL_KERNELS=$kernels "$bin" benchmark --model yolov8n.yaml --imgsz 640 --runs 20 --json)")
    done
    (IFS=$'\t'; echo "${row[*]}")
done | python3 -c '
import json, statistics, sys
names = sys.argv[1:]
rounds = [[json.loads(v) for v in line.rstrip("\n").split("\t")] for line in sys.stdin]
for i, r in enumerate(rounds, 1):
    print(f"round {i}: " + ", ".join("%s %.1f ms" % (n, s["median_ms"]) for n, s in zip(names, r)))
for j, n in enumerate(names):
    med = statistics.median(r[j]["median_ms"] for r in rounds)
    ratio = statistics.median(r[j]["median_ms"] / r[0]["median_ms"] for r in rounds)
    best = min(r[j]["min_ms"] for r in rounds)
    print(f"{n}: median {med:.1f} ms, per-round ratio to the first side {ratio:.3f}, best pass {best:.1f} ms")
' "$@"
