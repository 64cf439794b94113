"""Reference outputs of the one-to-one (NMS-free) head of Ultralytics 8.4.190.

The checkpoints are tests/data/<arch>_bccd.pt: yolov10n and yolo26n trained by Ultralytics on BCCD
(320, 20 epochs, seed 0; the `train` lines below), so that their class scores do not tie as the
random-weight fixtures' do. For each, in eval mode with `end2end` switched
on (what `nms=False` does), on the letterboxed BCCD image of ../shared/fixtures/<arch>_ref.safetensors:
(1, 300, 6) = x1, y1, x2, y2, score, class. Also Ultralytics' `val` on BCCD at 320 with and
without `nms=False`.

Writes tests/data/end2end_ref.safetensors and tests/data/end2end_val.json. Run from the repository
root (the checkpoints must exist; to make them again, uncomment `train`):
    "$(bash ../shared/tools/ref-env.sh)" scripts/end2end_reference.py
"""

import json

import torch
from safetensors.torch import load_file, save_file
from ultralytics import YOLO

ARCHS = ["yolov10n", "yolo26n"]
out, val = {}, {}
for arch in ARCHS:
    ckpt = f"tests/data/{arch}_bccd.pt"
    # YOLO(f"{arch}.yaml").train(data="../shared/data/bccd/data.yaml", imgsz=320, epochs=20, batch=16,
    #                            workers=2, device="cpu", val=False, plots=False, seed=0, amp=False)
    # then copy runs/detect/train*/weights/last.pt to tests/data/<arch>_bccd.pt
    model = YOLO(ckpt).model.float().eval()
    model.model[-1].end2end = True
    x = load_file(f"../shared/fixtures/{arch}_ref.safetensors")["input"].float()
    with torch.inference_mode():
        y = model(x)
    y = y[0] if isinstance(y, (tuple, list)) else y
    assert y.shape == (1, 300, 6), y.shape
    out[f"{arch}.input"] = x.contiguous()
    out[f"{arch}.topk"] = y.contiguous()
    for nms in (True, False):
        kw = {} if nms else {"nms": False}
        m = YOLO(ckpt).val(data="../shared/data/bccd/data.yaml", imgsz=320, batch=16, device="cpu", plots=False, verbose=False, **kw)
        val[f"{arch}.{'nms' if nms else 'end2end'}"] = {"map50": float(m.box.map50), "map": float(m.box.map)}
save_file(out, "tests/data/end2end_ref.safetensors")
json.dump(val, open("tests/data/end2end_val.json", "w"), indent=1)
print({k: tuple(v.shape) for k, v in out.items()}, val)
