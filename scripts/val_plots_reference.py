"""Reference confusion matrix, F1 curve peak and plot files of Ultralytics 8.4.190's validator.

The teacher ../shared/fixtures/teacher_v8s_bccd.pt (a yolov8s trained on BCCD) runs `YOLO.val` on
the BCCD val split at 320, batch 16, fp32 on the CPU, with `plots=True` and Ultralytics' val
defaults otherwise (conf 0.001, NMS iou 0.7, rect batches). The validator's confusion matrix counts
detections with conf > args.conf (0.001 here: `conf=None` becomes 0.001 in BaseValidator) matched
greedily, class-agnostically, at box IoU > 0.45. Records:
  - "confusion": the raw counts, metrics.confusion_matrix.matrix as ints, [predicted][true], with
    background as the last row/column,
  - "f1_best": {"f1", "conf"}: the peak of the box-smoothed (fraction 0.1) class-mean F1 curve and the
    confidence px[argmax] where it is reached, i.e. the "all classes X at Y" label of BoxF1_curve.png,
  - "map50", "map", "ap50_per_class" (indexed by class, from metrics.box.ap_class_index),
  - "files": the sorted paths (relative, "/"-separated) of what the validator wrote into its save_dir,
  - "args": the validator's effective conf / iou / rect / imgsz, read from it by an on_val_end callback.
Floats are rounded to 6 decimals.

Ultralytics saves a labels cache next to the label files (labels/val.cache) when it can write there;
to leave ../shared untouched the validator reads the data through a temporary mirror made of symlinks
(images/val/*.jpg and labels/val point into ../shared/data/bccd, with a data.yaml of the same names),
so the cache lands in the temporary directory.

Writes tests/data/val_plots_ref.json. Run from the repository root:
    ~/.cache/yolodistill-ref/bin/python scripts/val_plots_reference.py
(the environment comes from `bash ../shared/tools/ref-env.sh`).
"""

import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")

import yaml  # noqa: E402
from ultralytics import YOLO  # noqa: E402
from ultralytics.utils.metrics import smooth  # noqa: E402  (the smoothing plot_mc_curve applies)

DATA = Path("../shared/data/bccd")
CKPT = Path("../shared/fixtures/teacher_v8s_bccd.pt")
OUT = Path("tests/data/val_plots_ref.json")


def r6(x):
    return round(float(x), 6)


model = YOLO(str(CKPT))
seen = {}
model.add_callback(
    "on_val_end",
    lambda v: seen.update(
        conf=v.args.conf, iou=v.args.iou, rect=v.args.rect, imgsz=v.args.imgsz, save_dir=str(v.save_dir)
    ),
)
with tempfile.TemporaryDirectory() as tmp:
    mirror = Path(tmp) / "bccd"
    (mirror / "images/val").mkdir(parents=True)
    (mirror / "labels").mkdir()
    for im in sorted((DATA / "images/val").iterdir()):
        (mirror / "images/val" / im.name).symlink_to(im.resolve())
    (mirror / "labels/val").symlink_to((DATA / "labels/val").resolve(), target_is_directory=True)
    names = yaml.safe_load((DATA / "data.yaml").read_text())["names"]
    (mirror / "data.yaml").write_text(yaml.safe_dump({"train": "images/val", "val": "images/val", "names": names}))
    t0 = time.perf_counter()
    m = model.val(
        data=str(mirror / "data.yaml"), imgsz=320, batch=16, device="cpu", plots=True, project=f"{tmp}/runs",
        workers=0, verbose=False,
    )  # fmt: skip
    secs = time.perf_counter() - t0
    save_dir = Path(m.save_dir)
    assert Path(seen["save_dir"]) == save_dir and save_dir.is_relative_to(tmp), (seen, save_dir)
    assert (mirror / "labels/val.cache").exists() and not (DATA / "labels/val.cache").exists()
    files = sorted(p.relative_to(save_dir).as_posix() for p in save_dir.rglob("*") if p.is_file())

matrix = m.confusion_matrix.matrix
assert (matrix == matrix.round()).all()
confusion = [[int(v) for v in row] for row in matrix]

# BoxF1_curve.png's "all classes" line: smooth(f1_curve.mean(0), 0.1), label at its max.
px, f1_curve, xlabel, ylabel = m.box.curves_results[1]
assert (xlabel, ylabel) == ("Confidence", "F1"), (xlabel, ylabel)
y = smooth(f1_curve.mean(0), 0.1)
i = int(y.argmax())

nc = len(m.names)
ap50 = [None] * nc
for c, v in zip(m.box.ap_class_index, m.box.ap50):
    ap50[int(c)] = r6(v)

out = {
    "model": CKPT.name,
    "data": "../shared/data/bccd (val split)",
    "ultralytics": __import__("ultralytics").__version__,
    "args": {"imgsz": seen["imgsz"], "batch": 16, "conf": seen["conf"], "iou": seen["iou"], "rect": seen["rect"]},
    "names": [m.names[k] for k in range(nc)],
    "confusion": confusion,
    "f1_best": {"f1": r6(y[i]), "conf": r6(px[i]), "index": i},
    "map50": r6(m.box.map50),
    "map": r6(m.box.map),
    "ap50_per_class": ap50,
    "files": files,
}
OUT.parent.mkdir(parents=True, exist_ok=True)
# One key per line, one matrix row per line (json's indent would put every number on its own line).
body = []
for k, v in out.items():
    if k == "confusion":
        body.append(' "confusion": [\n' + ",\n".join("  " + json.dumps(r) for r in v) + "\n ]")
    else:
        body.append(f" {json.dumps(k)}: {json.dumps(v)}")
OUT.write_text("{\n" + ",\n".join(body) + "\n}\n")
assert json.loads(OUT.read_text()) == out
print(json.dumps({k: out[k] for k in ("args", "confusion", "f1_best", "map50", "map", "ap50_per_class", "files")}))
print(f"{OUT}: val in {secs:.1f} s")
