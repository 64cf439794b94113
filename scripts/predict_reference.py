"""Reference detections of Ultralytics 8.4.190's predictor (one-to-many head + NMS) on real images.

The teacher ../shared/fixtures/teacher_v8s_bccd.pt (a yolov8s trained on BCCD) runs `YOLO.predict`
with Ultralytics' predict defaults (conf 0.25, iou 0.7, max_det 300, class-aware NMS, rect
letterbox, fp32 on the CPU) on the first 6 BCCD val images sorted by file name, one image per call,
at two sizes: 640 (no resize: the images are 640x480) and 320 (the teacher's training size, which
`YOLO.predict` uses when imgsz is not given: a half-size resize and padding to 320x256). Boxes are x1, y1, x2, y2, conf, class in original-image pixels, in Ultralytics' output order,
rounded to 6 decimals. Each image also records its original (h, w) and the (h, w) of the tensor the
model was actually given (seen by a forward pre-hook), with the dtype in the header.

Writes tests/data/predict_teacher_ref.json, which tests/predict_parity.rs compares with our
predictor box by box. Run from the repository root:
    ~/.cache/yolodistill-ref/bin/python scripts/predict_reference.py
(the environment comes from `bash ../shared/tools/ref-env.sh`).
"""

import json
import os
import time
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")

from ultralytics import YOLO  # noqa: E402

DATA = Path("../shared/data/bccd")
CKPT = Path("../shared/fixtures/teacher_v8s_bccd.pt")
SIZES, CONF, IOU, N = (640, 320), 0.25, 0.7, 6

images = sorted((DATA / "images/val").glob("*.jpg"), key=lambda p: p.name)[:N]
model = YOLO(str(CKPT))
seen = []  # (shape, dtype) of every forward input
model.model.register_forward_pre_hook(lambda _m, args: seen.append((tuple(args[0].shape), str(args[0].dtype))))

t0 = time.perf_counter()
out = {"model": CKPT.name, "conf": CONF, "iou": IOU, "runs": []}
dtypes = set()
for imgsz in SIZES:
    run = {"imgsz": imgsz, "images": []}
    for path in images:
        seen.clear()
        (r,) = model.predict(str(path), imgsz=imgsz, conf=CONF, iou=IOU, device="cpu", save=False, verbose=False)
        shape, dtype = seen[-1]
        dtypes.add(dtype)
        boxes = [[round(float(v), 6) for v in row[:5]] + [int(row[5])] for row in r.boxes.data.tolist()]
        run["images"].append(
            {
                "image": path.relative_to(DATA).as_posix(),
                "orig_shape": list(r.orig_shape),
                "input_shape": list(shape[2:]),
                "boxes": boxes,
            }
        )
        print(f"{imgsz}: {path.name}: {len(boxes)} boxes, orig {tuple(r.orig_shape)}, input {shape} {dtype}")
    out["runs"].append(run)
out["dtype"] = sorted(dtypes)[0] if len(dtypes) == 1 else sorted(dtypes)
out["ultralytics"] = __import__("ultralytics").__version__
Path("tests/data").mkdir(parents=True, exist_ok=True)
# One box per line (json's indent would put every number on its own line).
head = {k: v for k, v in out.items() if k != "runs"}
lines = ["{" + json.dumps(head)[1:-1] + ', "runs": [']
for j, run in enumerate(out["runs"]):
    lines.append(' {"imgsz": %d, "images": [' % run["imgsz"])
    for i, im in enumerate(run["images"]):
        meta = json.dumps({k: v for k, v in im.items() if k != "boxes"})[1:-1]
        rows = ",\n".join("   " + json.dumps(b) for b in im["boxes"])
        lines.append(" {" + meta + ', "boxes": [' + ("\n" + rows + "\n ]}" if rows else "]}") + ("," if i + 1 < len(run["images"]) else ""))
    lines.append(" ]}" + ("," if j + 1 < len(out["runs"]) else ""))
lines.append("]}")
with open("tests/data/predict_teacher_ref.json", "w") as f:
    f.write("\n".join(lines) + "\n")
assert json.load(open("tests/data/predict_teacher_ref.json")) == out
print(f"tests/data/predict_teacher_ref.json: {len(images)} images in {time.perf_counter() - t0:.1f} s")
