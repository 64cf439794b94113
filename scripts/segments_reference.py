"""Polygon-label fixture: Ultralytics 8.4.190's resample_segments (to 1000 points), segment2box and
RandomPerspective.apply_segments on the polygons of the first 6 training images of
../shared/data/garbage (pixels of a 640x640 image): resampled as loaded, then moved by a seeded
random affine and a seeded perspective matrix into a 480x480 result whose border cuts through
some of them (their boxes come from the crossings with the border and the corners inside).

Writes tests/data/seg/segments_ref.safetensors: `points`/`lengths` (the polygons, concatenated),
`resampled` [N, 1000, 2], and per matrix `m<k>` [3, 3], `m<k>.boxes` [N, 4], `m<k>.segments`
[N, 1000, 2]. Run from the repository root:
    "$(bash ../shared/tools/ref-env.sh)" scripts/segments_reference.py
"""

import glob
import math
import os

os.environ.setdefault("YOLO_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from ultralytics.data.augment import RandomPerspective  # noqa: E402
from ultralytics.utils.ops import resample_segments  # noqa: E402


def matrices():
    rng = np.random.default_rng(0)
    a = math.radians(rng.uniform(-30, 30))
    s = rng.uniform(0.6, 1.4)
    affine = np.array([[s * math.cos(a), -s * math.sin(a), rng.uniform(-150, 50)], [s * math.sin(a), s * math.cos(a), rng.uniform(-150, 50)], [0, 0, 1]])
    persp = affine.copy()
    persp[2, :2] = rng.uniform(-4e-4, 4e-4, 2)
    return [affine.astype(np.float32), persp.astype(np.float32)]


def main():
    polygons = []
    for f in sorted(glob.glob("../shared/data/garbage/labels/train/*.txt"))[:6]:
        polygons += [np.array(line.split()[1:], dtype=np.float32).reshape(-1, 2) * 640 for line in open(f) if len(line.split()) >= 7]
    out = {
        "points": torch.tensor(np.concatenate(polygons)),
        "lengths": torch.tensor([float(len(p)) for p in polygons]),
    }
    resampled = np.stack(resample_segments([p.copy() for p in polygons], n=1000), 0)
    out["resampled"] = torch.tensor(resampled)
    rp = RandomPerspective()
    for k, m in enumerate(matrices()):
        boxes, segments = rp.apply_segments(resampled.copy(), m, (480, 480))
        out[f"m{k}"] = torch.tensor(m)
        out[f"m{k}.boxes"] = torch.tensor(np.asarray(boxes, dtype=np.float32))
        out[f"m{k}.segments"] = torch.tensor(np.asarray(segments, dtype=np.float32))
    save_file({k: v.float().contiguous() for k, v in out.items()}, "tests/data/seg/segments_ref.safetensors")
    print(len(polygons), "polygons;", {k: tuple(v.shape) for k, v in out.items()})


if __name__ == "__main__":
    main()
