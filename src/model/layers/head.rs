//! The Detect head (v5u/v8/11/12/26, and v10's dual-assignment head) and its decoding; a
//! segmentation head is Detect with mask parts (`mask.rs`).

use burn::module::{Module, Param};
use burn::nn::conv::Conv2d;
use burn::tensor::activation::{sigmoid, softmax};
use burn::tensor::{DType, Device, Tensor, TensorData};

use super::conv::{conv2d_bias, Conv, ConvCfg};
use super::mask::{MaskHead, MaskMaps};
use crate::model::spec::DetectSpec;
use crate::model::walk::{child, walk_fields, Slot, Visit, Walk};
use crate::export::onnx::{Builder, ToOnnx, V};

/// Box branch: two 3×3 Convs and a 1×1 Conv2d to 4·reg_max channels.
#[derive(Module, Debug)]
pub struct BoxBranch {
    pub c0: Conv,
    pub c1: Conv,
    pub out: Conv2d,
}

impl BoxBranch {
    fn new(ch: usize, c2: usize, reg_max: usize, device: &Device) -> Self {
        Self {
            c0: ConvCfg::new(ch, c2, 3).init(device),
            c1: ConvCfg::new(c2, c2, 3).init(device),
            out: conv2d_bias(c2, 4 * reg_max, device),
        }
    }
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.later_stages(self.first_stage(x))
    }
    /// The first 3×3 Conv: the head features a CrossKD student passes to its teacher's head.
    pub fn first_stage(&self, x: Tensor<4>) -> Tensor<4> {
        self.c0.forward(x)
    }
    /// The second Conv and the output convolution.
    pub fn later_stages(&self, y: Tensor<4>) -> Tensor<4> {
        crate::kernels::conv2d_layer(&self.out, self.c1.forward(y))
    }
    /// Channels between the first stage and the later ones.
    pub fn stage_width(&self) -> usize {
        self.c0.conv.weight.val().dims()[0]
    }
}

walk_fields!(BoxBranch: c0 = 0, c1 = 1, out = 2);

/// Class branch. Legacy (v5u/v8): two 3×3 Convs. Otherwise each stage is a
/// depthwise 3×3 followed by a 1×1 (`a`+`a2`, `b`+`b2`).
#[derive(Module, Debug)]
pub struct ClsBranch {
    pub a: Conv,
    pub a2: Option<Conv>,
    pub b: Conv,
    pub b2: Option<Conv>,
    pub out: Conv2d,
}

impl ClsBranch {
    fn new(ch: usize, c3: usize, nc: usize, legacy: bool, device: &Device) -> Self {
        if legacy {
            Self {
                a: ConvCfg::new(ch, c3, 3).init(device),
                a2: None,
                b: ConvCfg::new(c3, c3, 3).init(device),
                b2: None,
                out: conv2d_bias(c3, nc, device),
            }
        } else {
            Self {
                a: ConvCfg::new(ch, ch, 3).dw().init(device),
                a2: Some(ConvCfg::new(ch, c3, 1).init(device)),
                b: ConvCfg::new(c3, c3, 3).dw().init(device),
                b2: Some(ConvCfg::new(c3, c3, 1).init(device)),
                out: conv2d_bias(c3, nc, device),
            }
        }
    }
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.later_stages(self.first_stage(x))
    }
    /// The first stage (a 3×3 Conv, or a depthwise 3×3 and a 1×1): the head features a CrossKD
    /// student passes to its teacher's head.
    pub fn first_stage(&self, x: Tensor<4>) -> Tensor<4> {
        let y = self.a.forward(x);
        match &self.a2 {
            Some(c) => c.forward(y),
            None => y,
        }
    }
    /// The second stage and the output convolution.
    pub fn later_stages(&self, y: Tensor<4>) -> Tensor<4> {
        let mut y = self.b.forward(y);
        if let Some(c) = &self.b2 {
            y = c.forward(y);
        }
        crate::kernels::conv2d_layer(&self.out, y)
    }
    /// Channels between the first stage and the later ones.
    pub fn stage_width(&self) -> usize {
        self.a2.as_ref().unwrap_or(&self.a).conv.weight.val().dims()[0]
    }
}

impl Walk for ClsBranch {
    fn walk(&mut self, prefix: &str, f: &mut Visit<'_>) {
        match (&mut self.a2, &mut self.b2) {
            (Some(a2), Some(b2)) => {
                self.a.walk(&child(prefix, "0.0"), f);
                a2.walk(&child(prefix, "0.1"), f);
                self.b.walk(&child(prefix, "1.0"), f);
                b2.walk(&child(prefix, "1.1"), f);
            }
            _ => {
                self.a.walk(&child(prefix, 0), f);
                self.b.walk(&child(prefix, 1), f);
            }
        }
        self.out.walk(&child(prefix, 2), f);
    }
}

/// Raw head maps flattened over the levels (P3, P4, P5; row-major).
#[derive(Debug, Clone)]
pub struct HeadMaps {
    /// [B, 4·reg_max, A] box logits (DFL bins, side-major: l, t, r, b).
    pub boxes: Tensor<3>,
    /// [B, nc, A] class logits.
    pub scores: Tensor<3>,
}

#[derive(Debug, Clone)]
pub struct HeadOutput {
    /// One-to-many branch (the one NMS decoding and the v8 loss use).
    pub one2many: HeadMaps,
    /// One-to-one branch of end-to-end heads, when requested.
    pub one2one: Option<HeadMaps>,
    /// (H, W) of each level.
    pub shapes: Vec<(usize, usize)>,
    /// A segmentation head's mask coefficients and prototypes.
    pub masks: Option<MaskMaps>,
}

impl HeadMaps {
    /// These maps in f32 (the loss and the decoding run in it after half-precision layers).
    pub fn to_f32(&self) -> HeadMaps {
        let f32 = |t: &Tensor<3>| if t.dtype() == DType::F32 { t.clone() } else { t.clone().cast(DType::F32) };
        HeadMaps { boxes: f32(&self.boxes), scores: f32(&self.scores) }
    }

    fn first_images(&self, n: usize) -> HeadMaps {
        HeadMaps { boxes: self.boxes.clone().narrow(0, 0, n), scores: self.scores.clone().narrow(0, 0, n) }
    }
}

impl HeadOutput {
    /// The maps of the batch's first `n` images.
    pub fn first_images(&self, n: usize) -> HeadOutput {
        HeadOutput {
            one2many: self.one2many.first_images(n),
            one2one: self.one2one.as_ref().map(|m| m.first_images(n)),
            shapes: self.shapes.clone(),
            masks: self.masks.as_ref().map(|m| m.first_images(n)),
        }
    }
}

#[derive(Module, Debug)]
pub struct Detect {
    pub cv2: Vec<BoxBranch>,
    pub cv3: Vec<ClsBranch>,
    pub one2one_cv2: Vec<BoxBranch>,
    pub one2one_cv3: Vec<ClsBranch>,
    /// The fixed DFL projection [0, 1, …, reg_max−1] (kept for Ultralytics' state dict).
    pub dfl: Option<Param<Tensor<4>>>,
    /// A segmentation head's mask parts (`Segment`, `Segment26`).
    pub mask: Option<MaskHead>,
    pub nc: usize,
    pub reg_max: usize,
    pub strides: Vec<f64>,
}

impl Detect {
    pub fn new(spec: &DetectSpec, strides: Vec<f64>, device: &Device) -> Self {
        let (nc, r) = (spec.nc, spec.reg_max);
        let c2 = 16.max(spec.ch[0] / 4).max(4 * r);
        let c3 = spec.cls_width.unwrap_or(spec.ch[0].max(nc.min(100)));
        let boxes = || spec.ch.iter().map(|&c| BoxBranch::new(c, c2, r, device)).collect::<Vec<_>>();
        let classes = || spec.ch.iter().map(|&c| ClsBranch::new(c, c3, nc, spec.legacy, device)).collect::<Vec<_>>();
        let (o2o_box, o2o_cls) = if spec.end2end { (boxes(), classes()) } else { (Vec::new(), Vec::new()) };
        let dfl = (r > 1).then(|| {
            let w: Vec<f32> = (0..r).map(|i| i as f32).collect();
            Param::from_tensor(Tensor::<4>::from_data(TensorData::new(w, [1, r, 1, 1]), device)).set_require_grad(false)
        });
        let mut d = Self {
            cv2: boxes(),
            cv3: classes(),
            one2one_cv2: o2o_box,
            one2one_cv3: o2o_cls,
            dfl,
            mask: spec.seg.as_ref().map(|seg| MaskHead::new(seg, &spec.ch, nc, spec.end2end, device)),
            nc,
            reg_max: r,
            strides,
        };
        d.bias_init();
        d
    }

    /// Ultralytics 8.4's bias init: box 2.0; class ln(5 / nc / (640 / s)²).
    fn bias_init(&mut self) {
        let nc = self.nc as f64;
        let strides = self.strides.clone();
        let set = |conv: &mut Conv2d, v: f64| {
            if let Some(b) = conv.bias.as_mut() {
                let t = b.val().full_like(v as f32);
                *b = Param::initialized(b.id, t);
            }
        };
        for (branches, cls) in [(&mut self.cv2, &mut self.cv3), (&mut self.one2one_cv2, &mut self.one2one_cv3)] {
            for (i, (bb, cb)) in branches.iter_mut().zip(cls.iter_mut()).enumerate() {
                set(&mut bb.out, 2.0);
                set(&mut cb.out, (5.0 / nc / (640.0 / strides[i]).powi(2)).ln());
            }
        }
    }

    pub fn has_one2one(&self) -> bool {
        !self.one2one_cv2.is_empty()
    }

    /// Runs the branches on the level inputs. `one2one` (training) also runs the end-to-end
    /// branches (on detached inputs, as Ultralytics trains them) and Proto26's semantic branch.
    pub fn forward(&self, xs: Vec<Tensor<4>>, one2one: bool) -> HeadOutput {
        let shapes = level_shapes(&xs);
        let one2many = run_branches(&xs, &self.cv2, &self.cv3, false);
        let o2o = (one2one && self.has_one2one()).then(|| run_branches(&xs, &self.one2one_cv2, &self.one2one_cv3, true));
        let masks = self.mask.as_ref().map(|m| m.forward(&xs, one2one));
        HeadOutput { one2many, one2one: o2o, shapes, masks }
    }

    /// Inference with the one-to-one branches alone (the one-to-many ones are not run):
    /// decoded [B, 4 + nc, A] with xyxy boxes, for the end-to-end top-k. None without them.
    pub fn predict_end2end(&self, xs: Vec<Tensor<4>>) -> Option<Tensor<3>> {
        self.has_one2one().then(|| self.decode_maps(&run_branches(&xs, &self.one2one_cv2, &self.one2one_cv3, false), &level_shapes(&xs), false))
    }

    /// Anchor centres (grid units) and strides for the given level shapes: ([1, 2, A], [1, 1, A]).
    pub fn anchors(&self, shapes: &[(usize, usize)], device: &Device) -> (Tensor<3>, Tensor<3>) {
        anchor_tensors(shapes, &self.strides, device)
    }

    /// Ultralytics' inference output [B, 4 + nc, A]: xywh in input pixels, sigmoid scores.
    pub fn decode(&self, out: &HeadOutput) -> Tensor<3> {
        self.decode_maps(&out.one2many, &out.shapes, true)
    }

    /// The one-to-one branch's output [B, 4 + nc, A] with xyxy boxes (what Ultralytics' top-k
    /// post-processing reads), or None when the head has no such branch or it did not run.
    pub fn decode_end2end(&self, out: &HeadOutput) -> Option<Tensor<3>> {
        out.one2one.as_ref().map(|maps| self.decode_maps(maps, &out.shapes, false))
    }

    fn decode_maps(&self, maps: &HeadMaps, shapes: &[(usize, usize)], xywh: bool) -> Tensor<3> {
        // in f32 whatever the layers ran in (half-precision inference)
        let HeadMaps { boxes, scores } = maps.to_f32();
        let (points, strides) = anchor_points(shapes, &self.strides);
        if let Some(out) = crate::kernels::decode_head(&boxes, &scores, self.reg_max, (&points, &strides), xywh) {
            return out;
        }
        let device = boxes.device();
        let (anc, st) = self.anchors(shapes, &device);
        // expected distances (l, t, r, b) in grid units: [B, 4, A]
        let d = dfl_expectation(boxes, self.reg_max);
        let lt = d.clone().narrow(1, 0, 2);
        let rb = d.narrow(1, 2, 2);
        let x1y1 = anc.clone() - lt;
        let x2y2 = anc + rb;
        let boxes = if xywh {
            let c = (x1y1.clone() + x2y2.clone()).div_scalar(2.0);
            Tensor::cat(vec![c, x2y2 - x1y1], 1)
        } else {
            Tensor::cat(vec![x1y1, x2y2], 1)
        };
        Tensor::cat(vec![boxes * st, sigmoid(scores)], 1)
    }
}

fn level_shapes(xs: &[Tensor<4>]) -> Vec<(usize, usize)> {
    xs.iter().map(|x| (x.dims()[2], x.dims()[3])).collect()
}

/// One set of branches (box and class) over the level inputs, flattened and concatenated
/// to [B, C, A].
fn run_branches(xs: &[Tensor<4>], boxes: &[BoxBranch], classes: &[ClsBranch], detach: bool) -> HeadMaps {
    let (mut b, mut s) = (Vec::new(), Vec::new());
    for (i, x) in xs.iter().enumerate() {
        let x = if detach { x.clone().detach() } else { x.clone() };
        b.push(boxes[i].forward(x.clone()).flatten::<3>(2, 3));
        s.push(classes[i].forward(x).flatten::<3>(2, 3));
    }
    HeadMaps { boxes: Tensor::cat(b, 2), scores: Tensor::cat(s, 2) }
}

/// DFL: softmax over the `reg_max` bins of each side, then the expected bin
/// index. `boxes` is [B, 4·reg_max, A]; the result [B, 4, A]. With reg_max 1
/// the raw outputs already are the distances.
pub fn dfl_expectation(boxes: Tensor<3>, reg_max: usize) -> Tensor<3> {
    if reg_max == 1 {
        return boxes;
    }
    let [b, _, a] = boxes.dims();
    if let Some(d) = crate::kernels::dfl(boxes.clone(), reg_max) {
        return d;
    }
    let p = softmax(boxes.reshape([b, 4, reg_max, a]), 2);
    let proj: Vec<f32> = (0..reg_max).map(|i| i as f32).collect();
    let proj = Tensor::<4>::from_data(TensorData::new(proj, [1, 1, reg_max, 1]), &p.device());
    (p * proj).sum_dim(2).reshape([b, 4, a])
}

/// [`anchor_points`] as tensors on `device`: centres [1, 2, A] (x row, then y) and strides [1, 1, A].
pub fn anchor_tensors(shapes: &[(usize, usize)], strides: &[f64], device: &Device) -> (Tensor<3>, Tensor<3>) {
    let (pts, st) = anchor_points(shapes, strides);
    let a = st.len();
    let mut xy = Vec::with_capacity(2 * a);
    xy.extend(pts.iter().map(|p| p[0]));
    xy.extend(pts.iter().map(|p| p[1]));
    (Tensor::from_data(TensorData::new(xy, [1, 2, a]), device), Tensor::from_data(TensorData::new(st, [1, 1, a]), device))
}

/// Anchor centres (x + 0.5, y + 0.5) per level, row-major, with their strides.
pub fn anchor_points(shapes: &[(usize, usize)], strides: &[f64]) -> (Vec<[f32; 2]>, Vec<f32>) {
    let mut pts = Vec::new();
    let mut st = Vec::new();
    for (&(h, w), &s) in shapes.iter().zip(strides) {
        for y in 0..h {
            for x in 0..w {
                pts.push([x as f32 + 0.5, y as f32 + 0.5]);
                st.push(s as f32);
            }
        }
    }
    (pts, st)
}

impl Walk for Detect {
    fn walk(&mut self, prefix: &str, f: &mut Visit<'_>) {
        self.cv2.walk(&child(prefix, "cv2"), f);
        self.cv3.walk(&child(prefix, "cv3"), f);
        if let Some(d) = self.dfl.as_mut() {
            f(&format!("{prefix}dfl.conv.weight"), Slot::P4(d));
        }
        self.one2one_cv2.walk(&child(prefix, "one2one_cv2"), f);
        self.one2one_cv3.walk(&child(prefix, "one2one_cv3"), f);
        if let Some(m) = self.mask.as_mut() {
            m.walk(prefix, f);
        }
    }
}

impl ToOnnx for BoxBranch {
    fn to_onnx(&self, onnx: &mut Builder, x: &V) -> V {
        let y = self.c0.to_onnx(onnx, x);
        let y = self.c1.to_onnx(onnx, &y);
        onnx.conv2d(&y, &self.out)
    }
}

impl ToOnnx for ClsBranch {
    fn to_onnx(&self, onnx: &mut Builder, x: &V) -> V {
        let mut y = self.a.to_onnx(onnx, x);
        if let Some(c) = &self.a2 {
            y = c.to_onnx(onnx, &y);
        }
        y = self.b.to_onnx(onnx, &y);
        if let Some(c) = &self.b2 {
            y = c.to_onnx(onnx, &y);
        }
        onnx.conv2d(&y, &self.out)
    }
}
