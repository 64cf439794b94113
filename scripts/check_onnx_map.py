#!/usr/bin/env python3
"""Dev check: an exported ONNX model, run by onnxruntime, gives the val mAP of our `val`.

1. `yolodistill val` on the model, writing each (rectangular, letterboxed) batch input;
2. the model exported with `--dynamic` runs in onnxruntime on those inputs;
3. `yolodistill val --outputs-from` applies the same NMS and metrics to onnxruntime's outputs.
The two mAPs must agree to 1e-3.

With `--nms false` (YOLOv10, YOLO26) both `val` and the export use the one-to-one head: the
graph ends in the top-k (output0 [B, 300, 6]) and `val --outputs-from` reads those detections.

A segmentation model's graph has two outputs (output0 [B, 4 + nc + 32, A] with the mask
coefficients after the scores, output1 the prototypes): both are handed back, and the mask mAPs
must agree to 1e-3 too.

Usage (from the repository root, after `cargo build`):
    PY=$(../shared/tools/ref-env.sh | tail -n1)
    "$PY" scripts/check_onnx_map.py MODEL DATA_YAML [IMGSZ] [--half] [--nms false]
"""
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "target" / "debug" / "yolodistill"


def val(model, data, imgsz, *extra):
    out = subprocess.run([str(BIN), "val", "--model", model, "--data", data, "--imgsz", str(imgsz), "--json", "--plots", "false", *extra],
                         check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    argv = sys.argv[1:]
    e2e = []
    if "--nms" in argv:
        i = argv.index("--nms")
        e2e = ["--nms", argv[i + 1]]
        del argv[i:i + 2]
    args = [a for a in argv if not a.startswith("--")]
    half = "--half" in argv
    model, data = args[0], args[1]
    imgsz = int(args[2]) if len(args) > 2 else 640
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ours = val(model, data, imgsz, "--dump-inputs", str(tmp), *e2e)
        onnx_path = tmp / "model.onnx"
        subprocess.run([str(BIN), "export", "--model", model, "--dynamic", "--imgsz", str(imgsz), "--output", str(onnx_path),
                        *(["--half"] if half else []), *e2e], check=True, stdout=subprocess.DEVNULL)
        onnx.checker.check_model(onnx.load(str(onnx_path)), full_check=True)
        sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        dtype = np.float16 if half else np.float32
        k, t = 0, 0.0
        d_box = d_cls = r_box = 0.0
        names = [o.name for o in sess.get_outputs()]
        while (tmp / f"input_{k}.npy").exists():
            x = np.load(tmp / f"input_{k}.npy").astype(dtype)
            t0 = time.perf_counter()
            ys = sess.run(names, {"images": x})
            t += time.perf_counter() - t0
            for i, extra in enumerate(ys):
                np.save(tmp / (f"output_{k}.npy" if i == 0 else f"output{i}_{k}.npy"), extra.astype(np.float32))
            ours_y = np.load(tmp / f"ours_{k}.npy")
            # a segmentation graph's coefficient rows follow the boxes and scores ours_k holds
            y = ys[0] if e2e else ys[0][:, : ours_y.shape[1]]
            diff = np.abs(y.astype(np.float32) - ours_y)
            # [B, 4 + nc, A] channels first; end-to-end rows [B, k, 6] (x1 y1 x2 y2 score class) last;
            # rows of tied scores may come in another order.
            box, rest = (diff[..., :4], diff[..., 4:5]) if e2e else (diff[:, :4], diff[:, 4:])
            ref_box = ours_y[..., :4] if e2e else ours_y[:, :4]
            d_box = max(d_box, float(box.max()))
            r_box = max(r_box, float((box / np.maximum(1.0, np.abs(ref_box))).max()))
            d_cls = max(d_cls, float(rest.max()))
            k += 1
        theirs = val(model, data, imgsz, "--outputs-from", str(tmp), *e2e)
    d50 = abs(ours["mAP50"] - theirs["mAP50"])
    d = abs(ours["mAP50-95"] - theirs["mAP50-95"])
    masks = "masks" in ours
    if masks:
        dm50 = abs(ours["masks"]["mAP50"] - theirs["masks"]["mAP50"])
        dm = abs(ours["masks"]["mAP50-95"] - theirs["masks"]["mAP50-95"])
    ok = d50 <= 1e-3 and d <= 1e-3 and (not masks or (dm50 <= 1e-3 and dm <= 1e-3))
    print(f"{model} at {imgsz}{' (--half)' if half else ''}{' (end-to-end, --nms false)' if e2e else ''}, "
          f"{k} rect batches, {ours['images']} images")
    print(f"  yolodistill val:     mAP50 {ours['mAP50']:.5f}  mAP50-95 {ours['mAP50-95']:.5f}")
    print(f"  onnxruntime {'top-k' if e2e else '+ NMS'}:   mAP50 {theirs['mAP50']:.5f}  mAP50-95 {theirs['mAP50-95']:.5f}  "
          f"({t * 1e3 / ours['images']:.1f} ms/image in onnxruntime)")
    print(f"  raw outputs, onnxruntime vs ours: boxes max|Δ| {d_box:.2e} px (rel {r_box:.1e}), scores max|Δ| {d_cls:.1e}")
    if masks:
        print(f"  masks, yolodistill:  mAP50 {ours['masks']['mAP50']:.5f}  mAP50-95 {ours['masks']['mAP50-95']:.5f}")
        print(f"  masks, onnxruntime:  mAP50 {theirs['masks']['mAP50']:.5f}  mAP50-95 {theirs['masks']['mAP50-95']:.5f}"
              f"  (|Δ| {dm50:.1e}, {dm:.1e})")
    print(f"  |Δ| mAP50 {d50:.1e}, mAP50-95 {d:.1e}: {'ok' if ok else 'BAD'} (bound 1e-3)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
