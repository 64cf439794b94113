"""Reference masks and outlines of Ultralytics 8.4.190's segmentation predictor, and OpenCV's contours.

1. The garbage-trained tests/data/seg/yolov8n-seg_garbage.pt runs `YOLO.predict` (conf 0.1, iou 0.7,
   imgsz 320, fp32 CPU) on 3 garbage val images (PICKS, by name order), and on the first one's
   rows from 240 on (a 640x400 image, so that the letterbox pads). Per detection: the box (x1, y1, x2, y2,
   conf, class in original pixels), the mask at the input's resolution (`masks.data`, as runs
   [start, length] of ones in row-major order) and the outline `masks.xy` (original pixels).
2. OpenCV's contours: 12 random masks (smoothed noise, so with holes and several components),
   each with Ultralytics' `masks2segments` outline (findContours RETR_EXTERNAL/CHAIN_APPROX_SIMPLE,
   merged by `merge_multi_segment`).

Writes tests/data/seg/predict_garbage_ref.json, read by tests/seg_predict.rs. From the repository root:
    ~/.cache/yolodistill-ref/bin/python scripts/seg_predict_reference.py
"""

import json
import os
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402
from ultralytics import YOLO  # noqa: E402
from ultralytics.utils import ops  # noqa: E402

DATA = Path("../shared/data/garbage")
CKPT = Path("tests/data/seg/yolov8n-seg_garbage.pt")
OUT = Path("tests/data/seg/predict_garbage_ref.json")
IMGSZ, CONF, IOU = 320, 0.1, 0.7
PICKS = (2, 7, 10)  # of the val images sorted by name: those where this weak model finds the most at 0.1


def runs(mask):
    """Runs [start, length] of ones in a flat row-major mask."""
    flat = np.concatenate([[0], mask.reshape(-1).astype(np.int8), [0]])
    edges = np.flatnonzero(np.diff(flat))
    return [[int(a), int(b - a)] for a, b in zip(edges[::2], edges[1::2])]


def rounded(points):
    return [[round(float(x), 4), round(float(y), 4)] for x, y in points]


model = YOLO(str(CKPT))
names = sorted((DATA / "images/val").glob("*.jpg"), key=lambda p: p.name)
images = [names[i] for i in PICKS]
cases = [(p.relative_to(DATA).as_posix(), None) for p in images] + [(images[0].relative_to(DATA).as_posix(), 240)]
out = {"model": CKPT.name, "imgsz": IMGSZ, "conf": CONF, "iou": IOU, "ultralytics": __import__("ultralytics").__version__, "images": []}
for rel, first_row in cases:
    img = cv2.imread(str(DATA / rel))
    if first_row is not None:
        img = np.ascontiguousarray(img[first_row:])
    (r,) = model.predict(img, imgsz=IMGSZ, conf=CONF, iou=IOU, device="cpu", save=False, verbose=False)
    masks = r.masks.data.cpu().numpy() if r.masks is not None else np.zeros((0, 1, 1))
    dets = []
    for k, row in enumerate(r.boxes.data.tolist()):
        dets.append(
            {
                "box": [round(float(v), 4) for v in row[:5]] + [int(row[5])],
                "mask_runs": runs(masks[k] > 0),
                "polygon": rounded(r.masks.xy[k]),
            }
        )
    out["images"].append({"image": rel, "first_row": first_row, "orig_shape": list(r.orig_shape), "input_shape": list(masks.shape[1:]), "dets": dets})
    print(f"{rel} from row {first_row}: {len(dets)} detections, input {masks.shape[1:]}")

rng = np.random.default_rng(0)
contours = []
for _ in range(12):
    h, w = rng.integers(12, 40, size=2)
    noise = cv2.GaussianBlur(rng.random((h, w)).astype(np.float32), (5, 5), 1.2)
    mask = (noise > np.quantile(noise, rng.uniform(0.4, 0.7))).astype(np.uint8)
    (seg,) = ops.masks2segments(mask[None])
    n = len(cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)[0])
    contours.append({"w": int(w), "h": int(h), "runs": runs(mask), "contours": n, "polygon": seg.astype(int).tolist()})
out["contours"] = contours
print("contours per random mask:", [c["contours"] for c in contours])

# one detection or contour case per line
text = json.dumps(out, separators=(",", ":"))
for key in ('{"box"', '{"image"', '{"w"'):
    text = text.replace(key, "\n" + key)
OUT.write_text(text + "\n")
assert json.loads(OUT.read_text()) == out
print(f"{OUT}: {OUT.stat().st_size} bytes")
