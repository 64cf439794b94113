"""Segmentation-loss fixture: Ultralytics 8.4.190's v8SegmentationLoss on one seeded batch.

Two 128x128 images, 3 classes, the head of tests/data/seg/yolov8t-seg.pt (strides 8/16/32, reg_max
16, 32 mask coefficients): seeded random head maps (box logits, class logits, mask coefficients),
prototypes at a quarter of the input size, five boxes (two in the first image, three in the
second; one box overlaps another), and their instance masks in Ultralytics' overlap form (one map
per image at the prototypes' size; pixel value i + 1 marks the image's i-th object, ellipses
inside the boxes, the later object drawn over the earlier). Keeps the inputs and the loss items
(box, seg, cls, dfl; gains 7.5, 0.5, 1.5; seg takes the box gain).

Writes tests/data/seg/seg_loss_ref.safetensors. Run from the repository root:
    "$(bash ../shared/tools/ref-env.sh)" scripts/seg_loss_reference.py
"""

import os
from types import SimpleNamespace

os.environ.setdefault("YOLO_OFFLINE", "1")

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from ultralytics import YOLO  # noqa: E402
from ultralytics.utils.loss import v8SegmentationLoss  # noqa: E402

IMG, NC, NM = 128, 3, 32
SHAPES = [(IMG // s, IMG // s) for s in (8, 16, 32)]
A = sum(h * w for h, w in SHAPES)
MASK = IMG // 4


def labels(b=2):
    """The fixture's boxes (normalised xywh; image 0: two, image 1: three, the last two
    overlapping), their images and classes, and their ellipse masks in overlap form."""
    bboxes = torch.tensor(
        [[0.35, 0.40, 0.40, 0.45], [0.72, 0.70, 0.30, 0.35], [0.30, 0.30, 0.35, 0.30], [0.60, 0.62, 0.50, 0.45], [0.70, 0.70, 0.30, 0.30]]
    )
    batch_idx = torch.tensor([0.0, 0.0, 1.0, 1.0, 1.0])
    cls = torch.tensor([0.0, 2.0, 1.0, 0.0, 2.0])
    masks = torch.zeros(b, MASK, MASK)
    ys, xs = torch.meshgrid(torch.arange(MASK) + 0.5, torch.arange(MASK) + 0.5, indexing="ij")
    within = torch.zeros(b, dtype=torch.long)
    for k in range(len(bboxes)):
        i = int(batch_idx[k])
        cx, cy, w, h = (bboxes[k] * MASK).tolist()
        inside = ((xs - cx) / (w / 2)) ** 2 + ((ys - cy) / (h / 2)) ** 2 <= 1.0
        within[i] += 1
        masks[i][inside] = float(within[i])
    return bboxes, batch_idx, cls, masks


def main():
    model = YOLO("tests/data/seg/yolov8t-seg.pt").model.float()
    model.args = SimpleNamespace(box=7.5, cls=0.5, dfl=1.5, overlap_mask=True)
    crit = v8SegmentationLoss(model)
    g = torch.Generator().manual_seed(0)
    b = 2
    boxes = torch.randn(b, 16 * 4, A, generator=g)
    scores = torch.randn(b, NC, A, generator=g) - 1.0
    coeffs = torch.randn(b, NM, A, generator=g) * 0.5
    protos = torch.randn(b, NM, MASK, MASK, generator=g) * 0.5
    bboxes, batch_idx, cls, masks = labels(b)
    feats = [torch.zeros(b, 1, h, w) for h, w in SHAPES]
    preds = {"boxes": boxes, "scores": scores, "mask_coefficient": coeffs, "proto": protos, "feats": feats}
    batch = {"batch_idx": batch_idx, "cls": cls.view(-1, 1), "bboxes": bboxes, "masks": masks}
    total, items = crit(preds, batch)
    items = torch.stack([items[k] for k in ("box_loss", "seg_loss", "cls_loss", "dfl_loss")])
    out = {
        "boxes": boxes,
        "scores": scores,
        "mask_coefficient": coeffs,
        "protos": protos,
        "batch_idx": batch_idx,
        "cls": cls,
        "bboxes": bboxes,
        "masks": masks,
        "items": items.float(),
    }
    save_file({k: v.contiguous() for k, v in out.items()}, "tests/data/seg/seg_loss_ref.safetensors")
    print("items (box, seg, cls, dfl):", items.tolist(), "total", float(total.sum()))


if __name__ == "__main__":
    main()
