#!/usr/bin/env python3
"""Dev check of the ONNX exporter against the Ultralytics fixtures.

For each ../shared/fixtures/<arch>.pt: export with our CLI at 320, run
onnx.checker and onnxruntime on the fixture `input`, and compare with our own
fused forward (written by `cargo test --test export fixtures` under
YOLODISTILL_DUMP; |Δ| ≤ 1e-4·max(1, |v|)) and with the fixture `output` (Ultralytics'
decoded output; ≤ 1e-3). A second export with --dynamic (symbolic batch,
height, width) runs at batch 2 on the same input, at 256×384, and at 384×384
against a fixed export at 384 (in-graph anchors vs stored ones).

Usage (from the repository root, after `cargo build`):
    PY=$(../shared/tools/ref-env.sh | tail -n1) && "$PY" scripts/check_onnx.py
"""
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from safetensors.numpy import load_file

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT.parent / "shared" / "fixtures"
BIN = ROOT / "target" / "debug" / "yolodistill"
ARCHS = ["yolov8n", "yolo11n", "yolov5nu", "yolov10n", "yolo12n", "yolo26n"]
# onnxruntime vs our own forward: |Δ| ≤ 1e-4·max(1, |v|). Box coordinates reach
# ~500 px, where 1e-4 absolute is only a few f32 ulps (summation order differs).
TOL_OURS = 1e-4
TOL_REF = 1e-3  # the fixture output itself is within 1e-3 of our forward
# --half (float16 graph) vs our float32 forward: float16 keeps 11 significant bits
# (rel 4.9e-4 per rounding); errors add up over ~100 layers.
TOL_HALF = 1e-2


def export(arch: str, out: Path, *extra: str, imgsz: int = 320) -> onnx.ModelProto:
    subprocess.run([str(BIN), "export", "--model", str(FIX / f"{arch}.pt"), "--format", "onnx",
                    "--imgsz", str(imgsz), "--output", str(out), *extra], check=True, stdout=subprocess.DEVNULL)
    model = onnx.load(str(out))
    onnx.checker.check_model(model, full_check=True)
    return model


def run(path: Path, x: np.ndarray, dtype=np.float32) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(["output0"], {"images": x.astype(dtype)})[0].astype(np.float32)


def main() -> int:
    if not BIN.exists():
        print(f"{BIN} missing: run `cargo build` first")
        return 2
    failed = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        env = dict(os.environ, YOLODISTILL_DUMP=str(tmp))
        subprocess.run(["cargo", "test", "-q", "--test", "export", "fixtures"], cwd=ROOT, env=env, check=True,
                       stdout=subprocess.DEVNULL)
        for arch in ARCHS:
            ref = load_file(str(FIX / f"{arch}_ref.safetensors"))
            x, want = ref["input"], ref["output"]
            ours = np.fromfile(tmp / f"{arch}_ours.bin", dtype="<f4").reshape(want.shape)
            model = export(arch, tmp / f"{arch}.onnx")
            y = run(tmp / f"{arch}.onnx", x)
            export(arch, tmp / f"{arch}_dyn.onnx", "--dynamic")
            y2 = run(tmp / f"{arch}_dyn.onnx", np.concatenate([x, x]))
            y3 = run(tmp / f"{arch}_dyn.onnx", np.zeros((1, 3, 256, 384), np.float32))
            a3 = 8 * 12 + 16 * 24 + 32 * 48
            export(arch, tmp / f"{arch}_384.onnx", imgsz=384)
            x4 = np.random.default_rng(0).random((1, 3, 384, 384), dtype=np.float32)
            y4 = run(tmp / f"{arch}_384.onnx", x4)
            y4d = run(tmp / f"{arch}_dyn.onnx", x4)
            r_384 = float((np.abs(y4d - y4) / np.maximum(1.0, np.abs(y4))).max()) if y4.shape == y4d.shape else 1.0
            if y.shape != want.shape or y2.shape != (2,) + want.shape[1:] or y3.shape != (1, want.shape[1], a3) \
                    or not np.isfinite(y3).all():
                print(f"{arch}: shapes {y.shape} / {y2.shape} / {y3.shape}, want {want.shape}")
                failed.append(arch)
                continue
            scale = np.maximum(1.0, np.abs(ours))
            d_ours = float(np.abs(y - ours).max())
            r_ours = float((np.abs(y - ours) / scale).max())
            d_ref = float(np.abs(y - want).max())
            r_dyn = float(max((np.abs(y2[i] - ours[0]) / scale[0]).max() for i in range(2)))
            export(arch, tmp / f"{arch}_half.onnx", "--half")
            yh = run(tmp / f"{arch}_half.onnx", x, np.float16)
            r_half = float((np.abs(yh - ours) / scale).max())
            d_half_scores = float(np.abs(yh[:, 4:] - ours[:, 4:]).max())
            size_ratio = (tmp / f"{arch}_half.onnx").stat().st_size / (tmp / f"{arch}.onnx").stat().st_size
            ok = r_ours <= TOL_OURS and r_dyn <= TOL_OURS and r_384 <= TOL_OURS and d_ref <= TOL_REF and r_half <= TOL_HALF
            meta = {p.key: p.value for p in model.metadata_props}
            print(f"{arch}: {'ok ' if ok else 'BAD'} vs ours max|Δ| {d_ours:.2e} (rel {r_ours:.1e}), dynamic (batch 2) rel {r_dyn:.1e}, "
                  f"dynamic@384 vs fixed@384 rel {r_384:.1e}, "
                  f"vs fixture {d_ref:.2e}; {len(model.graph.node)} nodes, opset {model.opset_import[0].version}, "
                  f"stride {meta.get('stride')}, imgsz {meta.get('imgsz')}; --half rel {r_half:.1e} "
                  f"(scores max|Δ| {d_half_scores:.1e}), file {size_ratio:.2f}×")
            if not ok:
                failed.append(arch)
    if failed:
        print("FAILED:", ", ".join(failed))
        return 1
    print("all passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
