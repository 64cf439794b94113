"""Reference value of YOLO26's semantic term (the `sem_loss` item before its box gain), for
tests/loss_parity.rs.

Random semantic logits [2, 3, 4, 6] (a Proto26 map at an eighth of an 32x48 input) and overlap-form
instance ids [2, 8, 12] (at a quarter), with each image's object classes in id order. The target is
built as Ultralytics 8.4.190's v8SegmentationLoss builds it (one-hot of each covered pixel's object
class, zero where no object is; the class map comes from the data pipeline's sem_masks), then its
BCEDiceLoss(0.5, 0.5) runs (nearest-downsampled target, BCE-with-logits mean, multi-channel Dice with
smoothing 1). Writes tests/data/seg/sem_loss_ref.json. From the repository root:
    ~/.cache/yolodistill-ref/bin/python scripts/sem_loss_reference.py
"""
import json
from pathlib import Path

import torch
from ultralytics.utils.loss import BCEDiceLoss

g = torch.Generator().manual_seed(0)
nc, (b, h, w) = 3, (2, 8, 12)
logits = torch.randn(b, nc, h // 2, w // 2, generator=g)
ids = torch.randint(0, 4, (b, h, w), generator=g)  # objects 1..3 per image, 0 background
ids[1][ids[1] == 3] = 0  # the second image has two objects
classes = [[2, 0, 1], [1, 1]]
# the data pipeline's sem_masks: the class of the object at each pixel (background: any class;
# "present" zeroes it)
sem = torch.zeros(b, h, w, dtype=torch.long)
for i in range(b):
    for k, c in enumerate(classes[i]):
        sem[i][ids[i] == k + 1] = c
present = ids != 0
target = torch.zeros(b, nc, h, w)
target.scatter_(1, sem.unsqueeze(1), present.unsqueeze(1).float())
value = BCEDiceLoss(weight_bce=0.5, weight_dice=0.5)(logits, target)
out = {"logits": logits.flatten().tolist(), "logits_shape": list(logits.shape), "ids": ids.flatten().tolist(),
       "ids_shape": [b, h, w], "classes": classes, "sem_loss": value.item()}
Path("tests/data/seg/sem_loss_ref.json").write_text(json.dumps(out) + "\n")
print(f"sem_loss (before the gain) {value.item():.7f}")
