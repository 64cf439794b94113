//! The detection model: layers run by index, outputs of the `save` set kept,
//! any layer's output handed out on request (distillation taps).

use std::sync::Arc;

use anyhow::{bail, Context, Result};
use burn::module::{Module, Param, RunningState};
use burn::tensor::{DType, Device, Tensor};

use super::layers::attention::{A2C2f, C2Psa};
use super::layers::blocks::{Inner, Sppf, C2f, C3};
use super::layers::conv::{Conv, ConvCfg};
use super::layers::head::{Detect, HeadOutput};
use super::layers::v10::{Cib, SCDown};
use super::spec::{source, LayerKind, ModelSpec};
use super::walk::{child, Slot, Visit, Walk};
use crate::export::onnx::{Builder, ToOnnx, V};
use crate::infer::nms::{Detection, NmsConfig};

#[derive(Module, Debug)]
pub enum Layer {
    Conv(Conv),
    /// A Conv row with repeats > 1 (nn.Sequential of Convs).
    Convs(Vec<Conv>),
    C2f(C2f),
    C3(C3),
    Sppf(Sppf),
    C2Psa(C2Psa),
    A2C2f(A2C2f),
    SCDown(SCDown),
    Concat(usize),
    Upsample(usize),
    Detect(Detect),
}

impl Layer {
    /// Multiply-adds of attention's matrix products at `n` positions per image
    /// (what Ultralytics' FLOPs count adds to the convolutions).
    pub fn matmul_macs(&self, n: f64) -> f64 {
        match self {
            Layer::C2f(m) => m.matmul_macs(n),
            Layer::C2Psa(m) => m.matmul_macs(n),
            Layer::A2C2f(m) => m.matmul_macs(n),
            _ => 0.0,
        }
    }
}

/// Post-processes a decoded batch [B, 4 + nc, A] image by image.
pub fn per_image(decoded: &Tensor<3>, nc: usize, end2end: bool, cfg: &NmsConfig) -> Vec<Vec<Detection>> {
    let b = decoded.dims()[0];
    let host: Vec<f32> = decoded.clone().try_into_vec_as::<f32>().expect("f32 output");
    let per = host.len() / b.max(1);
    (0..b)
        .map(|j| crate::infer::nms::postprocess(&host[j * per..(j + 1) * per], nc, end2end, cfg))
        .collect()
}

impl Layer {
    /// A layer with one input (Concat and Detect take several).
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        match self {
            Layer::Conv(m) => m.forward(x),
            Layer::Convs(v) => v.iter().fold(x, |t, m| m.forward(t)),
            Layer::C2f(m) => m.forward(x),
            Layer::C3(m) => m.forward(x),
            Layer::Sppf(m) => m.forward(x),
            Layer::C2Psa(m) => m.forward(x),
            Layer::A2C2f(m) => m.forward(x),
            Layer::SCDown(m) => m.forward(x),
            Layer::Upsample(s) => super::layers::blocks::upsample_nearest(x, *s),
            Layer::Concat(_) | Layer::Detect(_) => unreachable!("multi-input layers are joined by the graph walk"),
        }
    }
}

impl ToOnnx for Layer {
    /// A layer with one input (Concat and Detect are built by the exporter from their inputs).
    fn to_onnx(&self, onnx: &mut Builder, x: &V) -> V {
        match self {
            Layer::Conv(m) => m.to_onnx(onnx, x),
            Layer::Convs(v) => v.iter().fold(x.clone(), |t, m| m.to_onnx(onnx, &t)),
            Layer::C2f(m) => m.to_onnx(onnx, x),
            Layer::C3(m) => m.to_onnx(onnx, x),
            Layer::Sppf(m) => m.to_onnx(onnx, x),
            Layer::C2Psa(m) => m.to_onnx(onnx, x),
            Layer::A2C2f(m) => m.to_onnx(onnx, x),
            Layer::SCDown(m) => m.to_onnx(onnx, x),
            Layer::Upsample(s) => onnx.upsample(x, *s),
            Layer::Concat(_) | Layer::Detect(_) => unreachable!("multi-input layers are built by the exporter"),
        }
    }
}

impl Walk for Layer {
    fn walk(&mut self, prefix: &str, f: &mut Visit<'_>) {
        match self {
            Layer::Conv(m) => m.walk(prefix, f),
            Layer::Convs(m) => m.walk(prefix, f),
            Layer::C2f(m) => m.walk(prefix, f),
            Layer::C3(m) => m.walk(prefix, f),
            Layer::Sppf(m) => m.walk(prefix, f),
            Layer::C2Psa(m) => m.walk(prefix, f),
            Layer::A2C2f(m) => m.walk(prefix, f),
            Layer::SCDown(m) => m.walk(prefix, f),
            Layer::Detect(m) => m.walk(prefix, f),
            Layer::Concat(_) | Layer::Upsample(_) => {}
        }
    }
}

/// What one forward pass returns.
#[derive(Debug, Clone)]
pub struct Forward {
    pub head: HeadOutput,
    /// Outputs of the requested layer indices, in request order.
    pub taps: Vec<Tensor<4>>,
}

#[derive(Module, Debug)]
pub struct DetectionModel {
    pub layers: Vec<Layer>,
    /// Class names by index.
    pub names: Vec<String>,
    /// BatchNorms folded into the convolutions (inference only).
    pub fused: bool,
    #[module(skip)]
    pub spec: Arc<ModelSpec>,
    /// The image size the weights were trained at, when the file says: prediction, validation
    /// and export default to it, as Ultralytics' do.
    #[module(skip)]
    pub train_imgsz: Option<usize>,
    /// The float type of the weights (f32 unless cast for half-precision inference); inputs
    /// are cast to it on the way in.
    #[module(skip)]
    pub dtype: DType,
}

/// Output stride of every layer, derived from the layer arguments.
pub fn layer_strides(spec: &ModelSpec) -> Vec<f64> {
    let mut st: Vec<f64> = Vec::new();
    for l in &spec.layers {
        let input = |f: i64| -> f64 { source(f, l.index).map_or(1.0, |j| st[j]) };
        let s_in = input(l.from[0]);
        let s = match &l.kind {
            LayerKind::Conv { s, .. } | LayerKind::DWConv { s, .. } | LayerKind::SCDown { s, .. } => {
                s_in * (*s as f64).powi(l.repeats as i32)
            }
            LayerKind::Upsample { scale } => s_in / *scale as f64,
            _ => s_in,
        };
        st.push(s);
    }
    st
}

impl DetectionModel {
    pub fn new(spec: ModelSpec, names: Vec<String>, device: &Device) -> Result<Self> {
        let strides = layer_strides(&spec);
        let mut layers = Vec::with_capacity(spec.layers.len());
        for l in &spec.layers {
            let layer = match &l.kind {
                LayerKind::Conv { c1, c2, k, s, p, g, d, act } => {
                    // the copies after the first map c2 to c2
                    let conv = |cin| ConvCfg { c1: cin, c2: *c2, k: *k, s: *s, p: *p, g: *g, d: *d, act: *act }.init(device);
                    if l.repeats > 1 {
                        Layer::Convs((0..l.repeats).map(|i| conv(if i == 0 { *c1 } else { *c2 })).collect())
                    } else {
                        Layer::Conv(conv(*c1))
                    }
                }
                LayerKind::DWConv { c1, c2, k, s, act } => {
                    Layer::Conv(ConvCfg { act: *act, ..ConvCfg::new(*c1, *c2, *k).s(*s).dw() }.init(device))
                }
                LayerKind::C2f { c1, c2, n, shortcut, e } => Layer::C2f(C2f::c2f(*c1, *c2, *n, *shortcut, *e, device)),
                LayerKind::C3 { c1, c2, n, shortcut, e } => Layer::C3(C3::c3(*c1, *c2, *n, *shortcut, *e, device)),
                LayerKind::C3k2 { c1, c2, n, c3k, e, attn, shortcut } => {
                    Layer::C2f(C2f::c3k2(*c1, *c2, *n, *c3k, *e, *attn, *shortcut, device))
                }
                LayerKind::C2fCib { c1, c2, n, shortcut, lk, e } => Layer::C2f(C2f::with_inner(*c1, *c2, *n, *e, device, |c| {
                    Inner::Cib(Cib::new(c, c, *shortcut, 1.0, *lk, device))
                })),
                LayerKind::Sppf { c1, c2, k, n, shortcut, act } => {
                    Layer::Sppf(Sppf::new(*c1, *c2, *k, *n, *shortcut, *act, device))
                }
                // validate::check (run by spec::parse) has checked c1 == c2 of (C2)PSA and the
                // A2C2f hidden width
                LayerKind::C2Psa { c1, n, e, .. } => Layer::C2Psa(C2Psa::c2psa(*c1, *n, *e, device)),
                LayerKind::Psa { c1, e, .. } => Layer::C2Psa(C2Psa::psa(*c1, *e, device)),
                LayerKind::A2C2f { c1, c2, n, a2, area, residual, mlp_ratio, e } => {
                    Layer::A2C2f(A2C2f::new(*c1, *c2, *n, *a2, *area, *residual, *mlp_ratio, *e, device))
                }
                LayerKind::SCDown { c1, c2, k, s } => Layer::SCDown(SCDown::new(*c1, *c2, *k, *s, device)),
                LayerKind::Concat { dim } => Layer::Concat(*dim),
                LayerKind::Upsample { scale } => Layer::Upsample(*scale),
                LayerKind::Detect(d) => {
                    let from: Vec<f64> = spec.detect_from().iter().map(|&i| strides[i]).collect();
                    Layer::Detect(Detect::new(d, from, device))
                }
            };
            layers.push(layer);
        }
        // A model without names (a YAML build) gets Ultralytics' defaults.
        let names = if names.is_empty() { (0..spec.nc).map(|i| format!("class{i}")).collect() } else { names };
        super::check_class_names(&names, spec.nc)?;
        Ok(Self { layers, names, fused: false, spec: Arc::new(spec), train_imgsz: None, dtype: DType::F32 })
    }

    pub fn nc(&self) -> usize {
        self.spec.nc
    }

    pub fn head(&self) -> &Detect {
        match self.layers.last() {
            Some(Layer::Detect(d)) => d,
            _ => unreachable!("a model always ends with Detect"),
        }
    }

    /// Drops a segmentation head's mask parts (a frozen teacher of a detection student: nothing
    /// reads its masks, and its prototypes cost a third of its forward).
    pub fn drop_masks(&mut self) {
        if let Some(Layer::Detect(d)) = self.layers.last_mut() {
            d.mask = None;
        }
    }

    /// Largest stride of the head (32 for the standard models).
    pub fn max_stride(&self) -> usize {
        self.head().strides.iter().cloned().fold(0.0, f64::max) as usize
    }

    /// Forward pass returning the raw head maps.
    pub fn forward(&self, x: Tensor<4>) -> HeadOutput {
        self.forward_taps(x, &[], false).head
    }

    /// Forward pass that also returns the outputs of `taps` (layer indices).
    /// `one2one` also runs the end-to-end head branches when the head has them.
    pub fn forward_taps(&self, x: Tensor<4>, taps: &[usize], one2one: bool) -> Forward {
        crate::kernels::on_pool(x, |x| {
            let (xs, taps) = self.trunk(x, taps);
            Forward { head: self.head().forward(xs, one2one), taps }
        })
    }

    /// The outputs of `taps` alone: the layers after the last of them, the head's included,
    /// do not run (a teacher whose head no term reads).
    pub fn taps_only(&self, x: Tensor<4>, taps: &[usize]) -> Vec<Tensor<4>> {
        crate::kernels::on_pool(x, |x| self.trunk_until(x, taps, taps.iter().copied().max().unwrap_or(0)).1)
    }

    /// Every layer before the head: the head's level inputs and the outputs of `taps`.
    fn trunk(&self, x: Tensor<4>, taps: &[usize]) -> (Vec<Tensor<4>>, Vec<Tensor<4>>) {
        self.trunk_until(x, taps, usize::MAX)
    }

    /// [`trunk`](Self::trunk) computing layers up to `last` only (later ones pass their first
    /// input through unchanged, and the head inputs are then not the real ones).
    fn trunk_until(&self, x: Tensor<4>, taps: &[usize], last: usize) -> (Vec<Tensor<4>>, Vec<Tensor<4>>) {
        let x = if x.dtype() == self.dtype { x } else { x.cast(self.dtype) };
        // A concatenation that only the next layer, a C2f, reads goes to it as parts, which its
        // first convolution reads in place (`Conv::forward_parts`); the concatenation is never
        // made. An upsampling that only such a concatenation reads (as its previous layer) stays
        // at its size: the convolution applies its weights first, at a quarter of the products.
        let unread = |i: usize| !self.spec.save.contains(&i) && !taps.contains(&i);
        let only_for_c2f = |i: usize| {
            let next = (self.layers.get(i + 1), self.spec.layers.get(i + 1));
            unread(i) && matches!(next, (Some(Layer::C2f(_)), Some(s)) if s.from == [-1])
        };
        let only_for_parts = |i: usize| {
            let next = (self.layers.get(i + 1), self.spec.layers.get(i + 1));
            let read_once = |from: &[i64]| from.iter().filter(|&&f| f == -1 || f == i as i64).count() == 1 && from.contains(&-1);
            unread(i) && only_for_c2f(i + 1) && matches!(next, (Some(Layer::Concat(1)), Some(s)) if read_once(&s.from))
        };
        let (mut parts, mut scale) = (None, 1);
        let step = |i: usize, layer: &Layer, mut xs: Vec<Tensor<4>>| {
            Ok(match layer {
                _ if i > last => xs.swap_remove(0),
                Layer::Upsample(s) if only_for_parts(i) => {
                    // stands for the upsampled map: the concatenation below takes it as a part
                    scale = *s;
                    xs.swap_remove(0)
                }
                Layer::Concat(1) if only_for_c2f(i) => {
                    // stands for the concatenation, which nothing reads
                    let first = xs[0].clone();
                    let from = &self.spec.layers[i].from;
                    parts = Some(xs.into_iter().zip(from).map(|(x, &f)| (x, if f == -1 { std::mem::replace(&mut scale, 1) } else { 1 })).collect::<Vec<_>>());
                    first
                }
                Layer::Concat(1) => crate::model::layers::blocks::cat_channels(xs),
                Layer::Concat(dim) => Tensor::cat(xs, *dim),
                Layer::C2f(m) if parts.is_some() => m.forward_parts(parts.take().expect("checked")),
                _ => layer.forward(xs.swap_remove(0)),
            })
        };
        let (head_inputs, outs) = self.run_layers(x, taps, step).expect("parse checks every input index");
        let taps = taps
            .iter()
            .map(|&i| outs.get(i).cloned().flatten().unwrap_or_else(|| panic!("layer {i} has no feature-map output")))
            .collect();
        (head_inputs, taps)
    }

    /// The one walk of the layer graph, for any value (tensors for the forward, named ONNX
    /// values for export): each layer before Detect gets its inputs by `from` and `step` makes its
    /// output. Returns Detect's inputs and the outputs kept (those later layers read, and `keep`).
    pub(crate) fn run_layers<T: Clone>(&self, x: T, keep: &[usize], mut step: impl FnMut(usize, &Layer, Vec<T>) -> Result<T>) -> Result<(Vec<T>, Vec<Option<T>>)> {
        let n = self.layers.len();
        let mut kept = vec![false; n];
        for &i in self.spec.save.iter().chain(keep).filter(|&&i| i < n) {
            kept[i] = true;
        }
        let mut outs: Vec<Option<T>> = vec![None; n];
        let mut x = x;
        for (i, (layer, spec)) in self.layers.iter().zip(&self.spec.layers).enumerate() {
            let input = |f: i64| -> Result<T> {
                if f == -1 {
                    return Ok(x.clone());
                }
                source(f, i).and_then(|j| outs.get(j).cloned().flatten()).with_context(|| format!("layer {i}: bad input {f}"))
            };
            let inputs = spec.from.iter().map(|&f| input(f)).collect::<Result<Vec<T>>>()?;
            if let Layer::Detect(_) = layer {
                return Ok((inputs, outs));
            }
            let y = step(i, layer, inputs)?;
            if kept[i] {
                outs[i] = Some(y.clone());
            }
            x = y;
        }
        bail!("the model has no Detect layer")
    }

    /// Decoded inference output [B, 4 + nc, A] (xywh pixels + class scores).
    pub fn predict(&self, x: Tensor<4>) -> Tensor<3> {
        let out = self.forward(x);
        self.head().decode(&out)
    }

    /// Detections per image after Ultralytics' post-processing: NMS on the one-to-many head, or,
    /// with `cfg.nms` false on a model with a one-to-one head, that head's top-k without NMS.
    pub fn detect(&self, x: Tensor<4>, cfg: &NmsConfig) -> Vec<Vec<Detection>> {
        let head = self.head();
        let end2end = !cfg.nms && head.has_one2one();
        let decoded = if end2end {
            // Only the one-to-one branches run, as in Ultralytics' fused end-to-end model.
            crate::kernels::on_pool(x, |x| head.predict_end2end(self.trunk(x, &[]).0)).expect("a one-to-one head")
        } else {
            self.predict(x)
        };
        per_image(&decoded, self.nc(), end2end, cfg)
    }

    /// [`Self::detect`], and for a segmentation head the mask coefficients [B, nm, A] of the
    /// branch the detections came from with the prototypes [B, nm, H, W] (None for other heads).
    pub fn detect_with_masks(&self, x: Tensor<4>, cfg: &NmsConfig) -> (Vec<Vec<Detection>>, Option<(Tensor<3>, Tensor<4>)>) {
        let head = self.head();
        if head.mask.is_none() {
            return (self.detect(x, cfg), None);
        }
        let end2end = !cfg.nms && head.has_one2one();
        let out = self.forward_taps(x, &[], end2end).head;
        let decoded = if end2end { head.decode_end2end(&out).expect("the one-to-one branch ran") } else { head.decode(&out) };
        let maps = out.masks.expect("a segmentation head gives mask coefficients and prototypes");
        let coeffs = if end2end { maps.coeffs_one2one.unwrap_or(maps.coeffs) } else { maps.coeffs };
        (per_image(&decoded, self.nc(), end2end, cfg), Some((coeffs, maps.protos)))
    }

    /// Casts every weight and running statistic to `dtype` (half-precision inference: the
    /// layers run in it, the head's outputs are decoded in f32).
    pub fn cast(&mut self, dtype: DType) {
        self.walk_all(&mut |_, s: Slot<'_>| match s {
            Slot::P4(p) => *p = Param::initialized(p.id, p.val().cast(dtype)),
            Slot::P1(p) => *p = Param::initialized(p.id, p.val().cast(dtype)),
            Slot::Stat(s) => *s = RunningState::new(s.value().cast(dtype)),
            Slot::Conv(_) => {}
        });
        self.dtype = dtype;
    }

    /// Folds every BatchNorm into its convolution, for faster inference and export.
    pub fn fuse(&mut self) {
        self.walk_all(&mut |_, s: Slot<'_>| {
            if let Slot::Conv(c) = s {
                c.fold_bn();
            }
        });
        self.fused = true;
    }

    /// Every named tensor, in a stable order.
    pub fn walk_all(&mut self, f: &mut Visit<'_>) {
        for (i, l) in self.layers.iter_mut().enumerate() {
            l.walk(&child("model.", i), f);
        }
    }

    /// Number of trainable-parameter elements, counted as Ultralytics does
    /// (DFL weights included, BatchNorm running statistics excluded).
    pub fn param_count(&self) -> usize {
        let mut m = self.clone();
        let mut n = 0;
        m.walk_all(&mut |_, s: Slot<'_>| {
            if s.is_param() {
                n += s.shape().iter().product::<usize>();
            }
        });
        n
    }
}

