#!/usr/bin/env python3
"""OpenCV's warpAffine / warpPerspective (bilinear, constant border 114, as Ultralytics'
random_perspective calls them) on a synthetic image, for tests/data/warp/ (PNG outputs and
warp_ref.json with the matrices). The source image is the formula of the Rust test:
r = (7x + y) mod 256, g = (13y + x²) mod 256, b = x xor 3y (mod 256), 97×61.

Usage: PY=$(bash ../shared/tools/ref-env.sh | tail -1); $PY scripts/warp_reference.py
"""
import json
import math
from pathlib import Path

import cv2
import numpy as np

W, H, S = 97, 61, 64
x, y = np.meshgrid(np.arange(W), np.arange(H))
src = np.stack([(7 * x + y) % 256, (13 * y + x * x) % 256, (x ^ (3 * y)) % 256], axis=-1).astype(np.uint8)
rng = np.random.default_rng(0)
cases = []
out_dir = Path(__file__).resolve().parent.parent / "tests/data/warp"
out_dir.mkdir(parents=True, exist_ok=True)
for i in range(8):
    perspective = i >= 6
    # Ultralytics' M = T·S·R·P·C with wide draws, so that borders, upscaling and shrinking all occur
    C = np.eye(3); C[0, 2], C[1, 2] = -W / 2, -H / 2
    P = np.eye(3)
    if perspective:
        P[2, 0], P[2, 1] = rng.uniform(-0.004, 0.004, 2)
    R = np.eye(3)
    a, s = rng.uniform(-40, 40), rng.uniform(0.4, 1.8)
    R[:2] = cv2.getRotationMatrix2D(angle=a, center=(0, 0), scale=s)
    Sh = np.eye(3); Sh[0, 1], Sh[1, 0] = (math.tan(v * math.pi / 180) for v in rng.uniform(-10, 10, 2))
    T = np.eye(3); T[0, 2], T[1, 2] = rng.uniform(0.2, 0.8, 2) * S
    M = T @ Sh @ R @ P @ C
    if perspective:
        out = cv2.warpPerspective(src, M, dsize=(S, S), borderValue=(114, 114, 114))
    else:
        out = cv2.warpAffine(src, M[:2], dsize=(S, S), borderValue=(114, 114, 114))
    name = f"case{i}.png"
    cv2.imwrite(str(out_dir / name), cv2.cvtColor(out, cv2.COLOR_RGB2BGR))
    cases.append({"matrix": M.tolist(), "perspective": perspective, "png": name})
ref = {"opencv": cv2.__version__, "source": [W, H], "size": S, "border": 114, "cases": cases}
(out_dir / "warp_ref.json").write_text(json.dumps(ref, indent=1) + "\n")
print(f"{len(cases)} cases in {out_dir}")
