"""Instance-mask fixture: Ultralytics 8.4.190's polygons2masks_overlap (OpenCV's fillPoly, then its
bilinear resize to a quarter) on real polygons: the labels of the first 6 training images of
../shared/data/garbage at 640x640, plus three drawn polygons (concave, with nearly horizontal and
vertical edges, and one crossing another) on a 96x128 image at ratios 4 and 2.

Writes tests/data/seg/mask_ref.safetensors: per case `<case>.points` (all polygons' pixel points,
concatenated), `<case>.lengths` (points per polygon), `<case>.size` (h, w, ratio), `<case>.ids`
(the overlap map) and `<case>.order` (the objects by decreasing area). Run from the repository root:
    "$(bash ../shared/tools/ref-env.sh)" scripts/mask_reference.py
"""

import glob
import os

os.environ.setdefault("YOLO_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from ultralytics.data.utils import polygons2masks_overlap  # noqa: E402


def case(out, name, polygons, h, w, ratio):
    ids, order = polygons2masks_overlap((h, w), [p.astype(np.float32) for p in polygons], downsample_ratio=ratio)
    out[f"{name}.points"] = torch.tensor(np.concatenate(polygons), dtype=torch.float32)
    out[f"{name}.lengths"] = torch.tensor([len(p) for p in polygons], dtype=torch.float32)
    out[f"{name}.size"] = torch.tensor([h, w, ratio], dtype=torch.float32)
    out[f"{name}.ids"] = torch.tensor(ids.astype(np.float32))
    out[f"{name}.order"] = torch.tensor(order.astype(np.float32))


def main():
    out = {}
    files = sorted(glob.glob("../shared/data/garbage/labels/train/*.txt"))[:6]
    for i, f in enumerate(files):
        polygons = [np.array(line.split()[1:], dtype=np.float64).reshape(-1, 2) * 640 for line in open(f) if len(line.split()) >= 7]
        case(out, f"garbage{i}", polygons, 640, 640, 4)
    drawn = [
        np.array([[5.3, 4.9], [120.7, 10.2], [60.5, 40.0], [118.2, 90.8], [8.9, 70.1]]),  # concave
        np.array([[30.0, 20.0], [90.9, 20.4], [91.2, 60.0], [30.4, 59.6]]),  # nearly axis-aligned
        np.array([[50.5, 2.2], [70.1, 93.7], [20.8, 50.3]]),  # a triangle over both
    ]
    for ratio in (4, 2):
        case(out, f"drawn_r{ratio}", drawn, 96, 128, ratio)
    save_file({k: v.contiguous() for k, v in out.items()}, "tests/data/seg/mask_ref.safetensors")
    print(len(out) // 5, "cases")


if __name__ == "__main__":
    main()
