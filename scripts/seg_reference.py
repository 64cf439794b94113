"""Segmentation fixtures: small Ultralytics 8.4.190 `-seg` checkpoints and their reference outputs.

For yolov8, yolo11 and yolo26 (heads Segment, Segment with the depthwise class branch, Segment26)
builds the `-seg` model at a reduced width (scale "t": the n scale's depth, width 0.0625, so that
the checkpoints stay small), 3 classes, seeded weights and random BatchNorm statistics (so that
BatchNorm is not the identity), and saves it as Ultralytics saves checkpoints (fp16 model inside a
dict). The reference runs the fp16-rounded weights in fp32, eval mode, on one seeded 1x3x128x128
input, and keeps: the input, the one-to-many head's raw maps (box logits, class logits, mask
coefficients), the prototypes, and for the NMS heads (v8, 11) the decoded output Ultralytics'
inference returns (xywh, sigmoid scores, mask coefficients).

Writes tests/data/seg/<arch>t-seg.pt and tests/data/seg/<arch>t-seg_ref.safetensors. Run from the
repository root:
    "$(bash ../shared/tools/ref-env.sh)" scripts/seg_reference.py
"""

import copy
import os

os.environ.setdefault("YOLO_OFFLINE", "1")

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402
from ultralytics.nn.tasks import SegmentationModel, yaml_model_load  # noqa: E402

ARCHS = ["yolov8", "yolo11", "yolo26"]
OUT = "tests/data/seg"


def build(arch):
    cfg = yaml_model_load(f"{arch}n-seg.yaml")
    depth = cfg["scales"]["n"][0]
    cfg["scales"] = {"t": [depth, 0.0625, 1024]}
    cfg["scale"] = "t"
    torch.manual_seed(0)
    model = SegmentationModel(cfg, nc=3, verbose=False)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
    model.names = {0: "a", 1: "b", 2: "c"}
    model.args = {"imgsz": 128}
    # the weights as the fp16 checkpoint holds them
    return model.half().float().eval()


def main():
    os.makedirs(OUT, exist_ok=True)
    torch.manual_seed(1)
    x = torch.rand(1, 3, 128, 128)
    for arch in ARCHS:
        model = build(arch)
        ckpt = {"model": copy.deepcopy(model).half(), "train_args": {"imgsz": 128}, "epoch": -1, "date": None, "version": "8.4.190"}
        torch.save(ckpt, f"{OUT}/{arch}t-seg.pt")
        head = model.model[-1]
        with torch.inference_mode():
            (y, proto), preds = model(x)
        o2m = preds["one2many"] if "one2many" in preds else preds
        ref = {
            "input": x,
            "head.boxes": o2m["boxes"],
            "head.scores": o2m["scores"],
            "head.mask_coefficient": o2m["mask_coefficient"],
            "protos": proto,
        }
        if "one2one" not in preds:
            ref["output"] = y
        ref = {k: v.float().contiguous() for k, v in ref.items()}
        save_file(ref, f"{OUT}/{arch}t-seg_ref.safetensors")
        params = sum(p.numel() for p in model.parameters())
        print(arch, params, {k: tuple(v.shape) for k, v in ref.items()}, type(head).__name__)


if __name__ == "__main__":
    main()
