"""YOLO26 segmentation-loss fixture: Ultralytics 8.4.190's E2ELoss around SegmentLoss26 on one
seeded batch, at the first epoch (one-to-many weight 0.8).

The batch of scripts/seg_loss_reference.py (two 128x128 images, 3 classes, five boxes with
overlap-form instance masks) on the head of tests/data/seg/yolo26t-seg.pt (strides 8/16/32,
reg_max 1: the box maps are the l, t, r, b distances in grid units; 32 mask coefficients). Seeded
maps for both branches: distances of 0.5-3.5 cells (so that most candidates overlap their box and
the 3*topk choice is untied), class logits, mask coefficients; prototypes at a quarter of the input
and semantic logits at an eighth, shared by both branches as in the model. The data pipeline's
sem_masks (each pixel's object class; background takes the last object's class, as Ultralytics'
indexing with -1 gives it) are built here. Keeps the inputs, the one-to-one items (box, seg, cls,
l1, sem; what Ultralytics logs) and the total.

Writes tests/data/seg/seg26_loss_ref.safetensors. From the repository root:
    "$(bash ../shared/tools/ref-env.sh)" scripts/seg26_loss_reference.py
"""

import os
from types import SimpleNamespace

os.environ.setdefault("YOLO_OFFLINE", "1")

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from ultralytics import YOLO  # noqa: E402
from ultralytics.utils.loss import E2ELoss, SegmentLoss26  # noqa: E402

from seg_loss_reference import labels  # noqa: E402  (the same boxes and masks)

IMG, NC, NM, EPOCHS = 128, 3, 32, 10
SHAPES = [(IMG // s, IMG // s) for s in (8, 16, 32)]
A = sum(h * w for h, w in SHAPES)
MASK = IMG // 4


def main():
    model = YOLO("tests/data/seg/yolo26t-seg.pt").model.float()
    model.args = SimpleNamespace(box=7.5, cls=0.5, dfl=1.5, overlap_mask=True, epochs=EPOCHS)
    crit = E2ELoss(model, SegmentLoss26)
    g = torch.Generator().manual_seed(0)
    b = 2

    def branch():
        boxes = torch.rand(b, 4, A, generator=g) * 3.0 + 0.5
        scores = torch.randn(b, NC, A, generator=g) - 1.0
        coeffs = torch.randn(b, NM, A, generator=g) * 0.5
        return boxes, scores, coeffs

    o2m, o2o = branch(), branch()
    protos = torch.randn(b, NM, MASK, MASK, generator=g) * 0.5
    semantic = torch.randn(b, NC, IMG // 8, IMG // 8, generator=g)
    bboxes, batch_idx, cls, masks = labels(b)
    sem_masks = torch.zeros(b, MASK, MASK)
    for i in range(b):
        image_cls = cls[batch_idx == i]
        sem_masks[i] = image_cls[(masks[i].long() - 1)]  # -1 (background) takes the last object's class
    feats = [torch.zeros(b, 1, h, w) for h, w in SHAPES]

    def preds(p):
        return {"boxes": p[0], "scores": p[1], "mask_coefficient": p[2], "proto": (protos, semantic), "feats": feats}

    batch = {"batch_idx": batch_idx, "cls": cls.view(-1, 1), "bboxes": bboxes, "masks": masks, "sem_masks": sem_masks}
    total, items = crit({"one2many": preds(o2m), "one2one": preds(o2o)}, batch)
    names = list(items)
    items = torch.stack([items[k] for k in names])
    out = {
        "o2m.boxes": o2m[0], "o2m.scores": o2m[1], "o2m.mask_coefficient": o2m[2],
        "o2o.boxes": o2o[0], "o2o.scores": o2o[1], "o2o.mask_coefficient": o2o[2],
        "protos": protos, "semantic": semantic, "batch_idx": batch_idx, "cls": cls, "bboxes": bboxes, "masks": masks,
        "items": items.float(), "total": total.sum().reshape(1).float(),
    }
    save_file({k: v.contiguous() for k, v in out.items()}, "tests/data/seg/seg26_loss_ref.safetensors")
    print("items", names, [round(v, 6) for v in items.tolist()], "total", float(total.sum()))


if __name__ == "__main__":
    main()
