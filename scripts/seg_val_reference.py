"""Segmentation validation fixture: a yolov8n-seg trained by Ultralytics 8.4.190 on the garbage data
set, and the figures of Ultralytics' `SegmentationValidator` on its val split.

Training: `YOLO("yolov8n-seg.yaml")` with the backbone/neck weights of the COCO detector
../shared/fixtures/yolov8n.pt transferred (`pretrained=`; the head's box/class branches transfer
where shapes match, the 6-class and mask branches start fresh), on ../shared/data/garbage (6 classes,
polygon labels) for EPOCHS epochs at imgsz 160, batch 16, seed 0, deterministic, workers 0, CPU,
amp False, plots False, close_mosaic=EPOCHS (mosaic off throughout; a trial of 15 epochs with the
default close_mosaic=10, i.e. 5 mosaic epochs, reached only ~0.014 box and mask mAP50-95), val False
(no per-epoch validation: only the last epoch is validated, so best.pt is the final EMA model, which
strip_optimizer leaves as Ultralytics' usual fp16 checkpoint without optimizer state). It is copied
to tests/data/seg/yolov8n-seg_garbage.pt (~7 MB).

Validation: `YOLO(ckpt).val(data, imgsz=160, batch=16, conf=0.001, iou=0.7, device="cpu",
plots=False)`, otherwise Ultralytics' val defaults (rect batches, overlap_mask True, mask_ratio 4,
save_json False, so `ops.process_mask`: masks at proto resolution, gt masks at imgsz/4). Writes
tests/data/seg/yolov8n-seg_garbage_val.json with
  - "results_dict": metrics/precision|recall|mAP50|mAP50-95 for (B) boxes and (M) masks, and
    "fitness" (= box mAP50-95 + mask mAP50-95: Metric.fitness weights [0, 0, 0, 1] in this version),
  - "box" / "mask": mp, mr, map50, map75, map, "maps" (per-class mAP50-95 indexed by class id, where
    a class without instances gets the overall map) and "ap50"/"ap" over "ap_class_index",
  - "images" (validator.seen), "instances" (sum of nt_per_class), "nt_per_class", "speed" (ms per
    image; CPU, machine dependent), "args" (the validator's effective args), "train" (training args,
    seconds spent).

Ultralytics writes a labels cache next to the label files and run folders under its runs_dir; to
leave ../shared and ./runs untouched the data are read through a temporary mirror of symlinks
(images/<split>/*.jpg and labels/<split>/*.txt), and project= points into the temporary directory.

Run from the repository root (about 12 minutes on 2 busy cores: ~30 s per epoch, plus two ~10 s vals):
    "$(bash ../shared/tools/ref-env.sh)" scripts/seg_val_reference.py
Environment overrides (for trials only): SEG_VAL_EPOCHS, SEG_VAL_OUT (a folder for both outputs).
"""

import json
import os
import shutil
import tempfile
import time
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")

import torch  # noqa: E402
import yaml  # noqa: E402
from ultralytics import YOLO  # noqa: E402

DATA = Path("../shared/data/garbage").resolve()
PRETRAINED = Path("../shared/fixtures/yolov8n.pt").resolve()
EPOCHS = int(os.environ.get("SEG_VAL_EPOCHS", 22))
OUT = Path(os.environ.get("SEG_VAL_OUT", "tests/data/seg"))
CKPT = OUT / "yolov8n-seg_garbage.pt"
JSON = OUT / "yolov8n-seg_garbage_val.json"
IMGSZ, BATCH = 160, 16


def r6(x):
    return round(float(x), 6)


def mirror(tmp):
    """Symlink mirror of the data set (writable folders, so that the label caches land in tmp)."""
    root = Path(tmp) / "garbage"
    for split in ("train", "val"):
        for kind, ext in (("images", "*.jpg"), ("labels", "*.txt")):
            d = root / kind / split
            d.mkdir(parents=True)
            for f in sorted((DATA / kind / split).glob(ext)):
                (d / f.name).symlink_to(f)
    cfg = yaml.safe_load(open(DATA / "data.yaml"))
    cfg["path"] = str(root)
    with open(root / "data.yaml", "w") as f:
        yaml.safe_dump(cfg, f, sort_keys=False)
    return root / "data.yaml"


def metric(m, nc):
    return {
        "mp": r6(m.mp),
        "mr": r6(m.mr),
        "map50": r6(m.map50),
        "map75": r6(m.map75),
        "map": r6(m.map),
        "maps": [r6(x) for x in m.maps],
        "ap_class_index": [int(i) for i in m.ap_class_index],
        "ap50": [r6(x) for x in m.ap50],
        "ap": [r6(x) for x in m.ap],
    }


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        data = str(mirror(tmp))
        train_args = dict(
            data=data, imgsz=IMGSZ, epochs=EPOCHS, batch=BATCH, seed=0, deterministic=True, workers=0,
            device="cpu", amp=False, plots=False, val=False, close_mosaic=EPOCHS, pretrained=str(PRETRAINED),
            project=str(Path(tmp) / "runs"), name="train", exist_ok=True, verbose=False,
        )
        t0 = time.time()
        model = YOLO("yolov8n-seg.yaml")
        model.train(**train_args)
        train_s = time.time() - t0
        wdir = Path(tmp) / "runs/train/weights"
        src = wdir / "best.pt" if (wdir / "best.pt").exists() else wdir / "last.pt"
        shutil.copyfile(src, CKPT)
        print(f"trained {EPOCHS} epochs in {train_s:.0f} s; {src.name} -> {CKPT} ({CKPT.stat().st_size / 1e6:.2f} MB)")

        seen = {}
        model = YOLO(str(CKPT))
        model.add_callback(
            "on_val_end",
            lambda v: seen.update(
                images=int(v.seen),
                args={k: (str(x) if isinstance(x, Path) else x) for k, x in vars(v.args).items()
                      if k in ("conf", "iou", "rect", "imgsz", "batch", "overlap_mask", "mask_ratio", "max_det",
                               "single_cls", "agnostic_nms", "half", "save_json", "split", "task")},
            ),
        )
        t0 = time.time()
        m = model.val(data=data, imgsz=IMGSZ, batch=BATCH, conf=0.001, iou=0.7, device="cpu", plots=False,
                      project=str(Path(tmp) / "runs"), name="val", exist_ok=True)
        val_s = time.time() - t0

    nc = len(m.names)
    out = {
        "results_dict": {k: r6(v) for k, v in m.results_dict.items()},
        "fitness": r6(m.fitness),
        "box": metric(m.box, nc),
        "mask": metric(m.seg, nc),
        "images": seen["images"],
        "instances": int(m.nt_per_class.sum()),
        "nt_per_class": [int(x) for x in m.nt_per_class],
        "names": {int(k): v for k, v in m.names.items()},
        "speed": {k: r6(v) for k, v in m.speed.items()},
        "args": seen["args"],
        "train": {
            **{k: v for k, v in train_args.items() if k not in ("data", "project", "name", "exist_ok")},
            "pretrained": "../shared/fixtures/yolov8n.pt",
            "model": "yolov8n-seg.yaml",
            "data": "../shared/data/garbage/data.yaml",
            "seconds": round(train_s),
            "checkpoint": src.name,
        },
        "val_seconds": round(val_s, 1),
        "torch": torch.__version__,
    }
    with open(JSON, "w") as f:
        json.dump(out, f, indent=1)
    print(json.dumps({k: out[k] for k in ("results_dict", "images", "instances", "speed")}, indent=1))


if __name__ == "__main__":
    main()
