"""Print reference parameter counts and GFLOPs from Ultralytics for the model-zoo test (detection
and `-seg` segmentation models).

For every zoo YAML (nc=80, built from the YAML only, no weights, eval mode, CPU) prints one JSON object per line:
    {"yaml": ..., "params": <int, sum of p.numel()>, "gflops": <float, exactly ultralytics get_flops(model, 640)>,
     "ops": <float, the thop count behind it: gflops == ops / 1e9 * 2>}
A model that fails to build prints {"yaml": ..., "error": "..."} instead.

Run from the repository root with the reference environment (ultralytics 8.4.190 + thop):
    YOLO_OFFLINE=1 "$(bash ../shared/tools/ref-env.sh)" scripts/gflops_reference.py > /tmp/gflops_ref.jsonl
"""

import json
import logging
import os
import sys

os.environ.setdefault("YOLO_OFFLINE", "1")

import thop  # noqa: E402
import torch  # noqa: E402
from ultralytics.nn.tasks import DetectionModel, SegmentationModel  # noqa: E402
from ultralytics.utils import LOGGER  # noqa: E402
from ultralytics.utils.torch_utils import get_flops  # noqa: E402

FAMILIES = {
    "yolov8{}.yaml": "nsmlx",
    "yolov5{}u.yaml": "nsmlx",
    "yolo11{}.yaml": "nsmlx",
    "yolo12{}.yaml": "nsmlx",
    "yolo26{}.yaml": "nsmlx",
    "yolov10{}.yaml": "nsmblx",
    "yolov8{}-seg.yaml": "nsmlx",
    "yolo11{}-seg.yaml": "nsmlx",
    "yolo12{}-seg.yaml": "nsmlx",
    "yolo26{}-seg.yaml": "nsmlx",
}


def main():
    torch.set_grad_enabled(False)
    LOGGER.setLevel(logging.ERROR)  # LOGGER writes to stdout; e.g. yolov10b.yaml warns "no model scale passed"
    names = sys.argv[1:] or [pattern.format(s) for pattern, scales in FAMILIES.items() for s in scales]
    for name in names:
        try:
            task_model = SegmentationModel if "-seg" in name else DetectionModel
            model = task_model(name, nc=80, verbose=False).eval()
            gflops = get_flops(model, 640)
            # the same call get_flops makes, to expose the unscaled operation count
            stride = max(int(model.stride.max()), 32)
            im = torch.empty((1, 3, 640, 640))
            ops = thop.profile(model, inputs=[im], stride=stride, min_cells=1, verbose=False)[0]
            row = {"yaml": name, "params": sum(p.numel() for p in model.parameters()), "gflops": gflops, "ops": ops}
        except Exception as e:  # report and continue
            row = {"yaml": name, "error": f"{type(e).__name__}: {e}"}
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
