//! GFLOPs counted the way Ultralytics 8.4.190 reports them (its thop): 2 × the
//! multiply-adds of every Conv2d (a transposed one at its input's size) and of attention's
//! matrix products, plus 4 operations per BatchNorm element; activations, softmax, pooling and
//! upsampling count zero.
//! `scripts/gflops_reference.py` prints Ultralytics' figures.

use super::graph::{layer_strides, DetectionModel};
use super::spec::LayerKind;
use super::walk::{child, Slot};

/// GFLOPs of one forward pass at `imgsz`×`imgsz`.
pub fn gflops(model: &DetectionModel, imgsz: usize) -> f64 {
    let spec = model.spec.clone();
    let strides = layer_strides(&spec);
    let head_strides = model.head().strides.clone();
    let mut m = model.clone();
    let mut ops = 0f64;
    let res = |s: f64| -> f64 {
        let n = (imgsz as f64 / s).ceil();
        n * n
    };
    for (i, layer) in m.layers.iter_mut().enumerate() {
        let l = &spec.layers[i];
        let out_res = res(strides[i]);
        let in_res = super::spec::source(l.from[0], i).map_or(res(1.0), |j| res(strides[j]));
        ops += layer.matmul_macs(out_res);
        let prefix = child("model.", i);
        let is_scdown = matches!(l.kind, LayerKind::SCDown { .. });
        use super::walk::Walk;
        layer.walk(&prefix, &mut |name, slot: Slot<'_>| {
            let local = &name[prefix.len()..];
            // spatial size this tensor's conv runs at
            let r = if matches!(l.kind, LayerKind::Detect(_)) {
                res(head_tensor_stride(local, &head_strides))
            } else if is_scdown && local.starts_with("cv1.") {
                in_res
            } else {
                out_res
            };
            match slot {
                // Proto26's semantic branch runs in training only
                _ if local.starts_with("proto.semseg.") => {}
                // DFL's fixed 1×1 conv runs over the 4 sides of every anchor of every level.
                Slot::P4(p) if name.ends_with("dfl.conv.weight") => {
                    let anchors: f64 = head_strides.iter().map(|&s| res(s)).sum();
                    ops += 4.0 * anchors * p.lazy_shape().to_vec()[1] as f64;
                }
                Slot::P4(p) => {
                    let d = p.lazy_shape().to_vec();
                    let (co, ci, kh, kw) = (d[0], d[1], d[2], d[3]);
                    ops += r * (co * ci * kh * kw) as f64;
                }
                Slot::P1(p) if name.ends_with("bn.weight") => {
                    ops += 4.0 * r * p.lazy_shape().to_vec()[0] as f64;
                }
                _ => {}
            }
        });
    }
    2.0 * ops / 1e9
}

/// The stride at which a head tensor's convolution runs, from its name under the head:
/// `cv2.<lvl>.` / `cv3.<lvl>.` / `cv4.<lvl>.` / `one2one_cv*.<lvl>.` at their level's; the
/// prototypes' layers before their 2× upsampling (`proto.cv1`, Proto26's `feat_fuse`) at the first
/// level's, and so the transposed convolution that upsamples (thop counts one at its input's size),
/// the rest of `proto` at half of it; Proto26's `feat_refine.<i>` at level i+1's.
fn head_tensor_stride(local: &str, strides: &[f64]) -> f64 {
    let level = |i: usize| strides[i.min(strides.len() - 1)];
    let parts: Vec<&str> = local.split('.').collect();
    let index = |k: usize| parts.get(k).and_then(|s| s.parse::<usize>().ok()).unwrap_or(0);
    match parts.as_slice() {
        ["proto", "feat_refine", ..] => level(index(2) + 1),
        ["proto", "cv1" | "upsample" | "feat_fuse" | "semseg", ..] => level(0),
        ["proto", ..] => level(0) / 2.0,
        _ => level(index(1)),
    }
}
