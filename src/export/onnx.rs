//! ONNX export (opset 17) of a detection model's decoded inference output,
//! Ultralytics' convention: input `images` [B, 3, H, W], output `output0`
//! [B, 4 + nc, A] (xywh in input pixels, sigmoid class scores; anchors of
//! P3, P4, P5 row-major); end-to-end (`nms=False`) graphs of YOLOv10/YOLO26
//! end in the one-to-one head's top-k: `output0` [B, 300, 6].
//!
//! By default every size is fixed (anchors and strides are initializers);
//! `dynamic` makes batch, height and width symbolic (anchors computed in the
//! graph from the level maps' shapes), as Ultralytics' `dynamic=True` does.

use std::collections::BTreeMap;

use anyhow::{bail, Result};
use burn::nn::conv::{Conv2d, ConvTranspose2d};
use burn::nn::{BatchNorm, PaddingConfig2d};
use burn::tensor::Tensor;

use super::onnx_proto::{read_fields, Msg};
use crate::model::graph::{DetectionModel, Layer};
use crate::model::layers::attention::A2Inner;
use crate::model::layers::head::{anchor_points, Detect};
use crate::model::layers::mask::Proto;

pub const OPSET: i64 = 17;
const IR_VERSION: i64 = 8;
const FLOAT: i64 = 1;
const INT64: i64 = 7;
const FLOAT16: i64 = 10;
/// Detections kept by an end-to-end graph (Ultralytics' `max_det` default, baked into TopK).
const MAX_DET: usize = 300;

/// An attribute value of a node.
pub(crate) enum Attr {
    Int(i64),
    Float(f32),
    Ints(Vec<i64>),
    Str(String),
}

/// A value in the graph: its name and per-image shape (C, H, W).
#[derive(Clone)]
pub(crate) struct V {
    pub name: String,
    pub c: usize,
    pub h: usize,
    pub w: usize,
}

/// A module's ONNX nodes, next to its forward in the module's own file.
pub(crate) trait ToOnnx {
    /// Adds the nodes computing this module on `x`; returns the output.
    fn to_onnx(&self, onnx: &mut Builder, x: &V) -> V;
}

/// The graph under construction and its primitives (what every module's nodes are made of).
#[derive(Default)]
pub(crate) struct Builder {
    nodes: Vec<Msg>,
    inits: Vec<Msg>,
    next: usize,
    /// FP16 graph: weights, constants, activations and I/O in float16.
    half: bool,
}

impl Builder {
    /// Element type of the graph's float values.
    pub(crate) fn elem(&self) -> i64 {
        if self.half {
            FLOAT16
        } else {
            FLOAT
        }
    }

    pub(crate) fn fresh(&mut self, hint: &str) -> String {
        self.next += 1;
        format!("/{hint}_{}", self.next)
    }

    /// Adds a node with one output and returns the output's name.
    pub(crate) fn node(&mut self, op: &str, inputs: &[&str], attrs: Vec<(&str, Attr)>) -> String {
        self.node_n(op, inputs, 1, attrs).remove(0)
    }

    pub(crate) fn node_n(&mut self, op: &str, inputs: &[&str], n_out: usize, attrs: Vec<(&str, Attr)>) -> Vec<String> {
        let base = self.fresh(op);
        let outs: Vec<String> = (0..n_out).map(|i| format!("{base}:{i}")).collect();
        self.emit(op, inputs, outs, attrs)
    }

    pub(crate) fn emit(&mut self, op: &str, inputs: &[&str], outs: Vec<String>, attrs: Vec<(&str, Attr)>) -> Vec<String> {
        let mut m = Msg::new();
        for i in inputs {
            m.string(1, i);
        }
        for o in &outs {
            m.string(2, o);
        }
        m.string(3, &format!("{op}_{}", self.nodes.len()));
        m.string(4, op);
        for (name, a) in attrs {
            let mut am = Msg::new();
            am.string(1, name);
            match a {
                Attr::Int(v) => am.int(3, v).int(20, 2),
                Attr::Float(v) => am.float(2, v).int(20, 1),
                Attr::Str(s) => am.string(4, &s).int(20, 3),
                Attr::Ints(vs) => am.ints(8, &vs).int(20, 7),
            };
            m.msg(5, &am);
        }
        self.nodes.push(m);
        outs
    }

    /// A float initializer in the graph's element type (float16 with `half`).
    pub(crate) fn init_f32(&mut self, hint: &str, dims: &[usize], data: &[f32]) -> String {
        if self.half {
            let raw: Vec<u8> = data.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect();
            self.init_raw(hint, dims, FLOAT16, raw)
        } else {
            self.init_exact_f32(hint, dims, data)
        }
    }

    /// A float32 initializer whatever the graph's type (e.g. Resize scales).
    pub(crate) fn init_exact_f32(&mut self, hint: &str, dims: &[usize], data: &[f32]) -> String {
        let raw: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.init_raw(hint, dims, FLOAT, raw)
    }

    pub(crate) fn init_raw(&mut self, hint: &str, dims: &[usize], dtype: i64, raw: Vec<u8>) -> String {
        let name = self.fresh(hint);
        let mut t = Msg::new();
        t.ints(1, &dims.iter().map(|&d| d as i64).collect::<Vec<_>>()).int(2, dtype).string(8, &name);
        t.bytes(9, &raw);
        self.inits.push(t);
        name
    }

    pub(crate) fn init_i64(&mut self, hint: &str, data: &[i64]) -> String {
        let raw = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.init_raw(hint, &[data.len()], INT64, raw)
    }

    pub(crate) fn tensor<const D: usize>(&mut self, hint: &str, t: Tensor<D>) -> String {
        let dims = t.dims();
        let data = t.try_into_vec_as::<f32>().expect("f32 weights");
        self.init_f32(hint, &dims, &data)
    }

    pub(crate) fn scalar(&mut self, v: f32) -> String {
        self.init_f32("const", &[], &[v])
    }

    pub(crate) fn binary(&mut self, op: &str, a: &str, b: &str) -> String {
        self.node(op, &[a, b], vec![])
    }

    /// Reshape to a constant target (`0` copies the input's dimension, `-1` is inferred).
    pub(crate) fn reshape(&mut self, x: &str, shape: &[i64]) -> String {
        let s = self.init_i64("shape", shape);
        self.node("Reshape", &[x, &s], vec![])
    }

    /// The shape of `x` as an int64 tensor, or the dims of it at `idx` (Gather).
    pub(crate) fn shape_of(&mut self, x: &str, idx: Option<&[i64]>) -> String {
        let shp = self.node("Shape", &[x], vec![]);
        match idx {
            Some(idx) => {
                let i = self.init_i64("idx", idx);
                self.node("Gather", &[&shp, &i], vec![("axis", Attr::Int(0))])
            }
            None => shp,
        }
    }

    pub(crate) fn cast(&mut self, x: &str, to: i64) -> String {
        self.node("Cast", &[x], vec![("to", Attr::Int(to))])
    }

    pub(crate) fn transpose(&mut self, x: &str, perm: &[i64]) -> String {
        self.node("Transpose", &[x], vec![("perm", Attr::Ints(perm.to_vec()))])
    }

    pub(crate) fn split(&mut self, x: &str, axis: i64, sizes: &[usize]) -> Vec<String> {
        let s = self.init_i64("split", &sizes.iter().map(|&d| d as i64).collect::<Vec<_>>());
        self.node_n("Split", &[x, &s], sizes.len(), vec![("axis", Attr::Int(axis))])
    }

    pub(crate) fn silu(&mut self, x: &str) -> String {
        let s = self.node("Sigmoid", &[x], vec![]);
        self.binary("Mul", x, &s)
    }

    pub(crate) fn add(&mut self, a: &V, b: &V) -> V {
        V { name: self.binary("Add", &a.name, &b.name), ..a.clone() }
    }
    /// `x + y` for a residual block with a shortcut, else `y`.
    pub(crate) fn residual(&mut self, add: bool, x: &V, y: V) -> V {
        if add { self.add(x, &y) } else { y }
    }

    pub(crate) fn concat(&mut self, xs: &[V], axis: i64) -> V {
        let names: Vec<&str> = xs.iter().map(|v| v.name.as_str()).collect();
        let name = self.node("Concat", &names, vec![("axis", Attr::Int(axis))]);
        let mut out = xs[0].clone();
        out.name = name;
        if axis == 1 {
            out.c = xs.iter().map(|v| v.c).sum();
        }
        out
    }

    // ---- modules ----

    pub(crate) fn conv2d(&mut self, x: &V, conv: &Conv2d) -> V {
        let [co, _, kh, kw] = conv.weight.dims();
        let (t, l, b, r) = match conv.padding {
            PaddingConfig2d::Explicit(t, l, b, r) => (t, l, b, r),
            PaddingConfig2d::Valid => (0, 0, 0, 0),
            PaddingConfig2d::Same => (kh / 2, kw / 2, kh / 2, kw / 2),
        };
        let inputs = self.conv_inputs(x, conv.weight.val(), conv.bias.as_ref().map(|b| b.val()));
        let ins: Vec<&str> = inputs.iter().map(String::as_str).collect();
        let [sh, sw] = conv.stride;
        let [dh, dw] = conv.dilation;
        let name = self.node(
            "Conv",
            &ins,
            vec![
                ("dilations", Attr::Ints(vec![dh as i64, dw as i64])),
                ("group", Attr::Int(conv.groups as i64)),
                ("kernel_shape", Attr::Ints(vec![kh as i64, kw as i64])),
                ("pads", Attr::Ints(vec![t as i64, l as i64, b as i64, r as i64])),
                ("strides", Attr::Ints(vec![sh as i64, sw as i64])),
            ],
        );
        let h = (x.h + t + b - dh * (kh - 1) - 1) / sh + 1;
        let w = (x.w + l + r - dw * (kw - 1) - 1) / sw + 1;
        V { name, c: co, h, w }
    }

    /// A convolution node's inputs: `x`, the weight and the bias when there is one.
    fn conv_inputs(&mut self, x: &V, weight: Tensor<4>, bias: Option<Tensor<1>>) -> Vec<String> {
        let mut inputs = vec![x.name.clone(), self.tensor("weight", weight)];
        if let Some(b) = bias {
            inputs.push(self.tensor("bias", b));
        }
        inputs
    }

    /// A transposed convolution without padding (Proto's 2× upsampling).
    pub(crate) fn conv_transpose2d(&mut self, x: &V, conv: &ConvTranspose2d) -> V {
        let [_, co_per_group, kh, kw] = conv.weight.dims();
        let inputs = self.conv_inputs(x, conv.weight.val(), conv.bias.as_ref().map(|b| b.val()));
        let ins: Vec<&str> = inputs.iter().map(String::as_str).collect();
        let [sh, sw] = conv.stride;
        let name = self.node(
            "ConvTranspose",
            &ins,
            vec![
                ("group", Attr::Int(conv.groups as i64)),
                ("kernel_shape", Attr::Ints(vec![kh as i64, kw as i64])),
                ("strides", Attr::Ints(vec![sh as i64, sw as i64])),
            ],
        );
        V { name, c: co_per_group * conv.groups, h: (x.h - 1) * sh + kh, w: (x.w - 1) * sw + kw }
    }

    pub(crate) fn batch_norm(&mut self, x: &V, bn: &BatchNorm) -> V {
        let scale = self.tensor("bn_scale", bn.gamma.val());
        let bias = self.tensor("bn_bias", bn.beta.val());
        let mean = self.tensor("bn_mean", bn.running_mean.value_sync());
        let var = self.tensor("bn_var", bn.running_var.value_sync());
        let name = self.node(
            "BatchNormalization",
            &[&x.name, &scale, &bias, &mean, &var],
            vec![("epsilon", Attr::Float(bn.epsilon as f32))],
        );
        V { name, ..x.clone() }
    }

    /// softmax(qᵀk · scale) applied to v: returns v·attnᵀ. q, k, v: [*, nh, d, n].
    pub(crate) fn attend(&mut self, q: &str, k: &str, v: &str, scale: f32) -> String {
        let qt = self.transpose(q, &[0, 1, 3, 2]);
        let qk = self.binary("MatMul", &qt, k);
        let s = self.scalar(scale);
        let qk = self.binary("Mul", &qk, &s);
        let attn = self.node("Softmax", &[&qk], vec![("axis", Attr::Int(3))]);
        let at = self.transpose(&attn, &[0, 1, 3, 2]);
        self.binary("MatMul", v, &at)
    }

    pub(crate) fn upsample(&mut self, x: &V, s: usize) -> V {
        let scales = self.init_exact_f32("scales", &[4], &[1.0, 1.0, s as f32, s as f32]);
        let name = self.node(
            "Resize",
            &[&x.name, "", &scales],
            vec![
                ("coordinate_transformation_mode", Attr::Str("asymmetric".into())),
                ("mode", Attr::Str("nearest".into())),
                ("nearest_mode", Attr::Str("floor".into())),
            ],
        );
        V { name, c: x.c, h: x.h * s, w: x.w * s }
    }

    /// Anchor centres [1, 2, A] and strides [1, 1, A] computed from the level
    /// maps' runtime sizes (Shape → Range), for inputs of any size.
    pub(crate) fn anchors_in_graph(&mut self, xs: &[V], strides: &[f64]) -> (String, String) {
        // Computed in float32 (Range has no float16 kernel), cast at the end for half graphs.
        let half_graph = std::mem::replace(&mut self.half, false);
        let (xy, st) = self.anchors_f32(xs, strides);
        self.half = half_graph;
        if !half_graph {
            return (xy, st);
        }
        (self.cast(&xy, FLOAT16), self.cast(&st, FLOAT16))
    }

    pub(crate) fn anchors_f32(&mut self, xs: &[V], strides: &[f64]) -> (String, String) {
        let zero = self.scalar(0.0);
        let one = self.scalar(1.0);
        let half = self.scalar(0.5);
        let (mut gx, mut gy, mut gs) = (Vec::new(), Vec::new(), Vec::new());
        for (x, &s) in xs.iter().zip(strides) {
            let mut coords = Vec::new();
            for (axis, shape) in [(2i64, [-1i64, 1]), (3, [1, -1])] {
                let n = self.shape_of(&x.name, Some(&[axis]));
                let n = self.cast(&n, self.elem());
                let n = self.reshape(&n, &[]);
                let r = self.node("Range", &[&zero, &n, &one], vec![]);
                let r = self.binary("Add", &r, &half);
                coords.push(self.reshape(&r, &shape));
            }
            let (col, row) = (coords[0].clone(), coords[1].clone());
            let zc = self.binary("Mul", &col, &zero);
            let zr = self.binary("Mul", &row, &zero);
            let gxi = self.binary("Add", &row, &zc);
            let gyi = self.binary("Add", &col, &zr);
            let gxi = self.reshape(&gxi, &[1, -1]);
            let gyi = self.reshape(&gyi, &[1, -1]);
            let z = self.binary("Mul", &gxi, &zero);
            let sv = self.scalar(s as f32);
            gs.push(self.binary("Add", &z, &sv));
            gx.push(gxi);
            gy.push(gyi);
        }
        let cat = |b: &mut Self, v: &[String]| -> String {
            let refs: Vec<&str> = v.iter().map(String::as_str).collect();
            b.node("Concat", &refs, vec![("axis", Attr::Int(1))])
        };
        let ax = cat(self, &gx);
        let ay = cat(self, &gy);
        let st = cat(self, &gs);
        let xy = self.node("Concat", &[&ax, &ay], vec![("axis", Attr::Int(0))]);
        (self.reshape(&xy, &[1, 2, -1]), self.reshape(&st, &[1, 1, -1]))
    }

    /// The one-to-many branches decoded to [B, 4 + nc, A] (xywh), or with `end2end` the
    /// one-to-one branches decoded to xyxy and reduced to the top-k detections [B, k, 6].
    /// The output is named `output0`; returns its second dimension (A, or k).
    pub(crate) fn detect(&mut self, xs: &[V], d: &Detect, dynamic: bool, end2end: bool) -> Result<usize> {
        if xs.len() != d.cv2.len() {
            bail!("Detect has {} levels but receives {} inputs", d.cv2.len(), xs.len());
        }
        let (box_branches, cls_branches) = if end2end { (&d.one2one_cv2, &d.one2one_cv3) } else { (&d.cv2, &d.cv3) };
        let (mut boxes, mut scores, mut shapes) = (Vec::new(), Vec::new(), Vec::new());
        for (i, x) in xs.iter().enumerate() {
            let b = box_branches[i].to_onnx(self, x);
            let s = cls_branches[i].to_onnx(self, x);
            let hw = x.h * x.w;
            boxes.push(V { name: self.reshape(&b.name, &[0, b.c as i64, -1]), c: b.c, h: 1, w: hw });
            scores.push(V { name: self.reshape(&s.name, &[0, s.c as i64, -1]), c: s.c, h: 1, w: hw });
            shapes.push((x.h, x.w));
        }
        let boxes = self.concat(&boxes, 2).name;
        let scores = self.concat(&scores, 2).name;
        let (pts, st) = anchor_points(&shapes, &d.strides);
        let a = st.len();
        let r = d.reg_max;
        let dist = if r > 1 {
            let p = self.reshape(&boxes, &[0, 4, r as i64, -1]);
            let p = self.node("Softmax", &[&p], vec![("axis", Attr::Int(2))]);
            let proj: Vec<f32> = (0..r).map(|i| i as f32).collect();
            let proj = self.init_f32("dfl_proj", &[1, r], &proj);
            let e = self.binary("MatMul", &proj, &p);
            self.reshape(&e, &[0, 4, -1])
        } else {
            boxes
        };
        let (anchors, strides) = if dynamic {
            self.anchors_in_graph(xs, &d.strides)
        } else {
            let mut xy = Vec::with_capacity(2 * a);
            xy.extend(pts.iter().map(|p| p[0]));
            xy.extend(pts.iter().map(|p| p[1]));
            (self.init_f32("anchors", &[1, 2, a], &xy), self.init_f32("strides", &[1, 1, a], &st))
        };
        let lt_rb = self.split(&dist, 1, &[2, 2]);
        let x1y1 = self.binary("Sub", &anchors, &lt_rb[0]);
        let x2y2 = self.binary("Add", &anchors, &lt_rb[1]);
        let cls = self.node("Sigmoid", &[&scores], vec![]);
        if end2end {
            let xyxy = self.node("Concat", &[&x1y1, &x2y2], vec![("axis", Attr::Int(1))]);
            let xyxy = self.binary("Mul", &xyxy, &strides);
            return Ok(self.top_k_detections(&xyxy, &cls, d.nc, a, dynamic));
        }
        let sum = self.binary("Add", &x1y1, &x2y2);
        let half = self.scalar(0.5);
        let c = self.binary("Mul", &sum, &half);
        let wh = self.binary("Sub", &x2y2, &x1y1);
        let xywh = self.node("Concat", &[&c, &wh], vec![("axis", Attr::Int(1))]);
        let xywh = self.binary("Mul", &xywh, &strides);
        let mut parts = vec![xywh, cls];
        if let Some(m) = &d.mask {
            // a segmentation head: its mask coefficients after the scores, its prototypes as output1
            let coeffs: Vec<V> = xs
                .iter()
                .zip(&m.cv4)
                .map(|(x, branch)| {
                    let c = branch.to_onnx(self, x);
                    V { name: self.reshape(&c.name, &[0, c.c as i64, -1]), c: c.c, h: 1, w: x.h * x.w }
                })
                .collect();
            parts.push(self.concat(&coeffs, 2).name);
            let protos = self.proto(xs, &m.proto);
            self.emit("Identity", &[&protos.name], vec!["output1".into()], vec![]);
        }
        let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
        self.emit("Concat", &parts, vec!["output0".into()], vec![("axis", Attr::Int(1))]);
        Ok(a)
    }

    /// The prototypes of a segmentation head [B, nm, 2H, 2W] from the level inputs (P3 at H×W).
    fn proto(&mut self, xs: &[V], p: &Proto) -> V {
        let mut feat = xs[0].clone();
        for (i, refine) in p.feat_refine.iter().enumerate() {
            let up = refine.to_onnx(self, &xs[i + 1]);
            let up = self.upsample(&up, 1 << (i + 1));
            feat.name = self.binary("Add", &feat.name, &up.name);
        }
        let x = match &p.feat_fuse {
            Some(f) => f.to_onnx(self, &feat),
            None => feat,
        };
        let y = p.cv1.to_onnx(self, &x);
        let y = self.conv_transpose2d(&y, &p.upsample);
        let y = p.cv2.to_onnx(self, &y);
        p.cv3.to_onnx(self, &y)
    }

    /// The one-to-one head's post-processing in the graph, as Ultralytics' end-to-end export
    /// (and our `infer::nms::end2end_topk`): the k = min(300, A) anchors with the highest class
    /// score, then the k highest of their (anchor, class) scores, best first. `boxes` [B, 4, A]
    /// (xyxy), `scores` [B, nc, A]; writes `output0` [B, k, 6] = x1, y1, x2, y2, score, class.
    /// Float32 throughout (TopK has no float16 kernel on CPU runtimes); returns k.
    fn top_k_detections(&mut self, boxes: &str, scores: &str, nc: usize, anchors: usize, dynamic: bool) -> usize {
        let half_graph = self.half;
        let as_f32 = |b: &mut Self, x: &str| if half_graph { b.cast(x, FLOAT) } else { x.to_string() };
        let boxes = as_f32(self, boxes);
        let scores = as_f32(self, scores);
        let boxes = self.transpose(&boxes, &[0, 2, 1]);
        let scores = self.transpose(&scores, &[0, 2, 1]);
        let best = self.node("ReduceMax", &[&scores], vec![("axes", Attr::Ints(vec![2])), ("keepdims", Attr::Int(0))]);
        let k_fixed = MAX_DET.min(anchors);
        let k = if dynamic {
            // k = min(300, A) from the runtime anchor count.
            let a = self.shape_of(&best, Some(&[1]));
            let cap = self.init_i64("max_det", &[MAX_DET as i64]);
            self.node("Min", &[&a, &cap], vec![])
        } else {
            self.init_i64("k", &[k_fixed as i64])
        };
        let top = |b: &mut Self, x: &str| b.node_n("TopK", &[x, &k], 2, vec![("axis", Attr::Int(-1)), ("largest", Attr::Int(1)), ("sorted", Attr::Int(1))]);
        let last = self.init_i64("axis", &[-1]);
        let gather = |b: &mut Self, x: &str, idx: &str| {
            let idx = b.node("Unsqueeze", &[idx, &last], vec![]);
            b.node("GatherND", &[x, &idx], vec![("batch_dims", Attr::Int(1))])
        };
        let anchor_idx = top(self, &best).remove(1);
        let boxes = gather(self, &boxes, &anchor_idx);
        let scores = gather(self, &scores, &anchor_idx);
        let flat = self.reshape(&scores, &[0, -1]);
        let mut best_k = top(self, &flat);
        let (conf, flat_idx) = (best_k.remove(0), best_k.remove(0));
        let nc_i = self.init_i64("nc", &[nc as i64]);
        let which = self.binary("Div", &flat_idx, &nc_i);
        let class = self.binary("Mod", &flat_idx, &nc_i);
        let boxes = gather(self, &boxes, &which);
        let conf = self.node("Unsqueeze", &[&conf, &last], vec![]);
        let class = self.node("Unsqueeze", &[&class, &last], vec![]);
        let class = self.cast(&class, FLOAT);
        let out = if half_graph { "output0_f32".to_string() } else { "output0".to_string() };
        self.emit("Concat", &[&boxes, &conf, &class], vec![out.clone()], vec![("axis", Attr::Int(2))]);
        if half_graph {
            self.emit("Cast", &[&out], vec!["output0".into()], vec![("to", Attr::Int(FLOAT16))]);
        }
        k_fixed
    }
}

fn value_info(name: &str, dims: &[Result<usize, &str>], elem: i64) -> Msg {
    let mut shape = Msg::new();
    for d in dims {
        let mut dm = Msg::new();
        match d {
            Ok(v) => dm.int(1, *v as i64),
            Err(p) => dm.string(2, p),
        };
        shape.msg(1, &dm);
    }
    let mut tt = Msg::new();
    tt.int(1, elem).msg(2, &shape);
    let mut ty = Msg::new();
    ty.msg(1, &tt);
    let mut vi = Msg::new();
    vi.string(1, name).msg(2, &ty);
    vi
}

/// Python `repr` of a str (single quotes unless the text holds one and no double quote).
fn py_str(s: &str) -> String {
    let q = if s.contains('\'') && !s.contains('"') { '"' } else { '\'' };
    let mut out = String::from(q);
    for ch in s.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c == q => {
                out.push('\\');
                out.push(c);
            }
            c => out.push(c),
        }
    }
    out.push(q);
    out
}

/// Class names as Python's dict repr: `{0: 'RBC', 1: 'WBC'}`.
pub fn names_repr(names: &[String]) -> String {
    let items: Vec<String> = names.iter().enumerate().map(|(i, n)| format!("{i}: {}", py_str(n))).collect();
    format!("{{{}}}", items.join(", "))
}

/// What to export: sizes, and the choices Ultralytics' exporter offers.
#[derive(Debug, Clone, Copy)]
pub struct OnnxOptions {
    /// Input size (H, W), multiples of the model stride.
    pub imgsz: (usize, usize),
    /// Batch size (ignored with `dynamic`).
    pub batch: usize,
    /// Symbolic batch, height and width (anchors computed in the graph).
    pub dynamic: bool,
    /// Whole graph in float16 (weights, activations, input `images` and output `output0`),
    /// as Ultralytics' `half=True` export.
    pub half: bool,
    /// The one-to-one head with its top-k in the graph (Ultralytics' `nms=False` on YOLOv10 and
    /// YOLO26): `output0` is [B, 300, 6] = x1, y1, x2, y2, score, class. Ignored by models
    /// without a one-to-one head.
    pub end2end: bool,
}

impl OnnxOptions {
    pub fn new(imgsz: (usize, usize)) -> Self {
        Self { imgsz, batch: 1, dynamic: false, half: false, end2end: false }
    }
}

/// Builds the ONNX model of `model.predict(x)` for inputs of size `imgsz` (H, W).
/// `model` should be fused (unfused BatchNorms are exported as BatchNormalization).
pub fn export_onnx(model: &DetectionModel, imgsz: (usize, usize), batch: usize, dynamic: bool) -> Result<Vec<u8>> {
    export_onnx_with(model, &OnnxOptions { batch, dynamic, ..OnnxOptions::new(imgsz) })
}

/// As [`export_onnx`], with every option.
pub fn export_onnx_with(model: &DetectionModel, opts: &OnnxOptions) -> Result<Vec<u8>> {
    let OnnxOptions { imgsz, batch, dynamic, half, end2end } = *opts;
    let end2end = end2end && model.head().has_one2one();
    let mask = model.head().mask.as_ref();
    if end2end && mask.is_some() {
        bail!("the end-to-end (NMS-free, --nms false) export of a segmentation model is not supported yet; export it with NMS");
    }
    let (h, w) = imgsz;
    let stride = model.max_stride().max(1);
    if h == 0 || w == 0 || h % stride != 0 || w % stride != 0 {
        bail!("image size {h}x{w} must be a positive multiple of the model stride {stride}");
    }
    if batch == 0 {
        bail!("batch must be at least 1");
    }
    let mut b = Builder { half, ..Default::default() };
    let input = V { name: "images".into(), c: 3, h, w };
    let step = |i: usize, layer: &Layer, mut xs: Vec<V>| -> Result<V> {
        if let Layer::Concat(dim) = layer {
            return Ok(b.concat(&xs, *dim as i64));
        }
        let inp = xs.swap_remove(0);
        if let Layer::A2C2f(m) = layer {
            let area = m.m.iter().find_map(|a| match a {
                A2Inner::Area(blocks) => blocks.first().map(|blk| blk.attn.area.max(1)),
                A2Inner::C3k(_) => None,
            });
            if let Some(area) = area.filter(|a| (inp.h * inp.w) % a != 0) {
                bail!("layer {i}: area attention needs H·W ({}) divisible by area ({area})", inp.h * inp.w);
            }
        }
        Ok(layer.to_onnx(&mut b, &inp))
    };
    let (head_inputs, _) = model.run_layers(input, &[], step)?;
    let rows = b.detect(&head_inputs, model.head(), dynamic, end2end)?;
    let dim = |name: &'static str, v: usize| -> Result<usize, &'static str> { if dynamic { Err(name) } else { Ok(v) } };
    let mut graph = Msg::new();
    for nd in &b.nodes {
        graph.msg(1, nd);
    }
    graph.string(2, "main_graph");
    for t in &b.inits {
        graph.msg(5, t);
    }
    let elem = b.elem();
    graph.msg(11, &value_info("images", &[dim("batch", batch), Ok(3), dim("height", h), dim("width", w)], elem));
    let nm = mask.map_or(0, |m| m.nm);
    let output = if end2end {
        [dim("batch", batch), dim("detections", rows), Ok(6)]
    } else {
        [dim("batch", batch), Ok(4 + model.nc() + nm), dim("anchors", rows)]
    };
    graph.msg(12, &value_info("output0", &output, elem));
    if mask.is_some() {
        let p = head_inputs[0].clone();
        let protos = [dim("batch", batch), Ok(nm), dim("proto_height", 2 * p.h), dim("proto_width", 2 * p.w)];
        graph.msg(12, &value_info("output1", &protos, elem));
    }

    let stem = model.spec.yaml.get("yaml_file").and_then(|v| v.as_str()).unwrap_or("model");
    let stem = std::path::Path::new(stem).file_stem().and_then(|s| s.to_str()).unwrap_or("model").to_string();
    let meta: Vec<(&str, String)> = vec![
        ("description", format!("yolodistill {stem} model")),
        ("author", "yolodistill".into()),
        ("version", env!("CARGO_PKG_VERSION").into()),
        ("stride", stride.to_string()),
        ("task", if mask.is_some() { "segment" } else { "detect" }.into()),
        ("batch", batch.to_string()),
        ("imgsz", format!("[{h}, {w}]")),
        ("names", names_repr(&model.names)),
        ("end2end", if end2end { "True" } else { "False" }.into()),
    ];
    let mut opset = Msg::new();
    opset.string(1, "").int(2, OPSET);
    let mut mp = Msg::new();
    mp.int(1, IR_VERSION).string(2, "yolodistill").string(3, env!("CARGO_PKG_VERSION")).msg(7, &graph).msg(8, &opset);
    for (k, v) in meta {
        let mut e = Msg::new();
        e.string(1, k).string(2, &v);
        mp.msg(14, &e);
    }
    Ok(mp.buf)
}

/// What an exported file holds, read back from its bytes (for tests and checks).
#[derive(Debug, Clone, Default)]
pub struct GraphSummary {
    pub ir_version: i64,
    /// (domain, version) pairs.
    pub opsets: Vec<(String, i64)>,
    pub node_count: usize,
    pub op_counts: BTreeMap<String, usize>,
    pub initializer_count: usize,
    /// Initializers by ONNX element type (1 float, 7 int64, 10 float16).
    pub initializer_types: BTreeMap<i64, usize>,
    /// Element type of each graph input and output, in order.
    pub io_types: Vec<i64>,
    /// Name and dims; a symbolic dimension reads as its name.
    pub inputs: Vec<(String, Vec<String>)>,
    pub outputs: Vec<(String, Vec<String>)>,
    pub metadata: BTreeMap<String, String>,
}

/// Name, dims and element type of a ValueInfoProto.
fn read_value_info(b: &[u8]) -> Result<((String, Vec<String>), i64)> {
    let mut name = String::new();
    let mut dims = Vec::new();
    let mut elem = 0;
    for (f, v) in read_fields(b)? {
        match f {
            1 => name = v.as_str()?.to_string(),
            2 => {
                for (f, v) in read_fields(v.as_bytes()?)? {
                    if f != 1 {
                        continue;
                    }
                    for (f, v) in read_fields(v.as_bytes()?)? {
                        if f == 1 {
                            elem = v.as_int()?;
                        }
                        if f != 2 {
                            continue;
                        }
                        for (f, v) in read_fields(v.as_bytes()?)? {
                            if f != 1 {
                                continue;
                            }
                            for (f, v) in read_fields(v.as_bytes()?)? {
                                match f {
                                    1 => dims.push(v.as_int()?.to_string()),
                                    2 => dims.push(v.as_str()?.to_string()),
                                    _ => {}
                                }
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
    Ok(((name, dims), elem))
}

/// Decodes the parts of an ONNX ModelProto that [`GraphSummary`] reports.
pub fn summarize(bytes: &[u8]) -> Result<GraphSummary> {
    let mut s = GraphSummary::default();
    for (f, v) in read_fields(bytes)? {
        match f {
            1 => s.ir_version = v.as_int()?,
            7 => {
                for (f, v) in read_fields(v.as_bytes()?)? {
                    match f {
                        1 => {
                            s.node_count += 1;
                            for (f, v) in read_fields(v.as_bytes()?)? {
                                if f == 4 {
                                    *s.op_counts.entry(v.as_str()?.to_string()).or_default() += 1;
                                }
                            }
                        }
                        5 => {
                            s.initializer_count += 1;
                            let dtype = read_fields(v.as_bytes()?)?.iter().find(|(f, _)| *f == 2).map(|(_, v)| v.as_int()).transpose()?.unwrap_or(0);
                            *s.initializer_types.entry(dtype).or_default() += 1;
                        }
                        11 | 12 => {
                            let (vi, elem) = read_value_info(v.as_bytes()?)?;
                            s.io_types.push(elem);
                            if f == 11 {
                                s.inputs.push(vi);
                            } else {
                                s.outputs.push(vi);
                            }
                        }
                        _ => {}
                    }
                }
            }
            8 => {
                let (mut d, mut ver) = (String::new(), 0);
                for (f, v) in read_fields(v.as_bytes()?)? {
                    match f {
                        1 => d = v.as_str()?.to_string(),
                        2 => ver = v.as_int()?,
                        _ => {}
                    }
                }
                s.opsets.push((d, ver));
            }
            14 => {
                let (mut k, mut val) = (String::new(), String::new());
                for (f, v) in read_fields(v.as_bytes()?)? {
                    match f {
                        1 => k = v.as_str()?.to_string(),
                        2 => val = v.as_str()?.to_string(),
                        _ => {}
                    }
                }
                s.metadata.insert(k, val);
            }
            _ => {}
        }
    }
    Ok(s)
}
