//! Our CPU convolution as a burn backend extension: the `Flex` implementation runs
//! [`super::conv`], the `Autodiff<Flex>` one records a handwritten backward that runs
//! [`super::conv::backward`]. Other dtypes and depthwise convolutions go to burn-flex's own ops.

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::backend::autodiff::NodeId;
use burn::backend::flex::FlexTensor;
use burn::backend::ops::ModuleOps;
use burn::backend::tensor::FloatTensor;
use burn::backend::{backend_extension, Autodiff, Backend, BackendTensor, DispatchAutodiffContext, DispatchTensor, DispatchTensorKind, Flex, TensorMetadata};
use burn::tensor::ops::ConvOptions;
use burn::tensor::{DType, Shape, TensorData};

use super::conv::{self, ConvGeom};
use super::bf16::Arithmetic;
use super::{decode, kd, pointwise};
use super::norm::{self, Planes};

/// The options of one convolution, as plain numbers (padding: top, bottom, left, right).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvSpec {
    pub stride: [usize; 2],
    pub pad: [usize; 4],
    pub dilation: [usize; 2],
    pub groups: usize,
    /// The arithmetic of its matrix products, also in its backward pass.
    pub arith: Arithmetic,
}

impl ConvSpec {
    pub fn options(&self) -> ConvOptions<2> {
        let [t, b, l, r] = self.pad;
        ConvOptions::new_with_padding(self.stride, [(t, b), (l, r)], self.dilation, self.groups)
    }
    pub fn geom(&self, x: &Shape, w: &Shape) -> ConvGeom {
        ConvGeom {
            n: x[0],
            ci: x[1],
            h: x[2],
            w: x[3],
            co: w[0],
            kh: w[2],
            kw: w[3],
            stride: self.stride,
            pad: self.pad,
            dilation: self.dilation,
            groups: self.groups,
            arith: self.arith,
        }
    }
    /// Depthwise-style convolutions (one input channel per group) stay with burn-flex, whose
    /// direct per-plane kernel suits them better than a GEMM per group. `in_per_group` is the
    /// weight's second dimension.
    pub fn depthwise(&self, in_per_group: usize) -> bool {
        self.groups > 1 && in_per_group == 1
    }
    fn ours(&self, x: &FlexTensor, w: &FlexTensor) -> bool {
        x.dtype() == DType::F32 && w.dtype() == DType::F32 && !self.depthwise(w.shape()[1])
    }
}

/// Differentiable ops: implemented on `Flex` and, with a handwritten backward, on `Autodiff<Flex>`.
#[backend_extension(Flex, Autodiff)]
pub trait CpuOps: Backend {
    /// `conv2d(x, weight)` without bias, `x` in NCHW.
    fn conv2d_nchw(x: FloatTensor<Self>, weight: FloatTensor<Self>, spec: ConvSpec) -> FloatTensor<Self>;
    /// `act(BatchNorm(x))` with the per-channel `stats` `[2, C]` (mean, biased variance): the
    /// batch's own when `norm.batch` (the backward then includes their dependence on `x`), else
    /// running statistics. f32 only.
    fn batch_norm_act(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        stats: FloatTensor<Self>,
        norm: NormSpec,
    ) -> FloatTensor<Self>;
    /// Channel-wise distillation loss `[1]` between student and teacher maps seen as rows of `len`
    /// positions (a softmax at temperature `tau` per row). f32 only.
    fn cwd_loss(s: FloatTensor<Self>, t: FloatTensor<Self>, len: usize, tau: f32) -> FloatTensor<Self>;
}

/// Inference-only ops (no autodiff), f32 only.
#[backend_extension(Flex)]
pub trait CpuInfer: Backend {
    /// Per-channel mean and biased variance of an NCHW tensor, as `[2, C]`.
    fn batch_stats(x: FloatTensor<Self>) -> FloatTensor<Self>;
    /// `act(conv2d(x, weight) + bias)` in one pass (BN-folded inference).
    fn conv2d_bias_act(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        spec: ConvSpec,
        silu: bool,
    ) -> FloatTensor<Self>;
    /// `n` chained `k×k` max poolings (stride 1, padding `k / 2`) of an NCHW tensor, side by side
    /// along the channels.
    fn max_pool_chain(x: FloatTensor<Self>, k: usize, n: usize) -> FloatTensor<Self>;
    /// DFL expectation of `[b, 4·bins, a]` box logits: `[b, 4, a]`.
    fn dfl(boxes: FloatTensor<Self>, bins: usize) -> FloatTensor<Self>;
}

/// Options of [`CpuOps::batch_norm_act`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NormSpec {
    pub eps: f64,
    pub silu: bool,
    /// The statistics are the batch's own (training), not running ones.
    pub batch: bool,
}

fn planes(s: &Shape) -> Planes {
    Planes { n: s[0], c: s[1], hw: s.num_elements() / (s[0] * s[1]).max(1) }
}

/// (mean, variance) rows of a `[2, C]` statistics tensor.
fn stats_rows(stats: &FlexTensor) -> (Vec<f32>, Vec<f32>) {
    let v = f32s(stats);
    let c = v.len() / 2;
    (v[..c].to_vec(), v[c..].to_vec())
}

/// A tensor's f32 values: borrowed when contiguous, else one contiguous copy.
enum F32s<'a> {
    Borrowed(&'a [f32]),
    Copied(FlexTensor),
}

impl std::ops::Deref for F32s<'_> {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        match self {
            F32s::Borrowed(s) => s,
            F32s::Copied(t) => t.as_slice::<f32>().expect("a contiguous f32 copy"),
        }
    }
}

fn f32s(t: &FlexTensor) -> F32s<'_> {
    match t.as_slice::<f32>() {
        Some(s) => F32s::Borrowed(s),
        None => F32s::Copied(t.to_contiguous()),
    }
}

/// The Flex tensor inside a dispatch tensor on the CPU backend without autodiff; `None` for any
/// other (for ops whose variable number of inputs `#[backend_extension]` cannot take).
pub(super) fn flex_of(t: DispatchTensor) -> Option<FlexTensor> {
    #[allow(unreachable_patterns)] // with the flex backend alone
    match t.kind {
        DispatchTensorKind::Flex(BackendTensor::Float(f)) if t.autodiff == DispatchAutodiffContext::Disabled => Some(f),
        _ => None,
    }
}

/// A Flex tensor as a dispatch tensor (the inverse of [`flex_of`]).
pub(super) fn dispatch_of(t: FlexTensor) -> DispatchTensor {
    DispatchTensor { kind: DispatchTensorKind::Flex(BackendTensor::Float(t)), autodiff: DispatchAutodiffContext::Disabled }
}

/// [`pointwise::forward`] on Flex tensors: `act(conv1x1(cat(xs upsampled by their scales)) + bias)`
/// in one pass, each of `xs` read in place; `cat` the concatenation's shape.
pub(super) fn pointwise_parts(xs: &[(FlexTensor, usize)], cat: &Shape, weight: &FlexTensor, bias: &FlexTensor, spec: ConvSpec, silu: bool) -> FlexTensor {
    let values: Vec<F32s> = xs.iter().map(|(x, _)| f32s(x)).collect();
    let parts: Vec<pointwise::Part> = values.iter().zip(xs).map(|(v, (x, scale))| pointwise::Part { x: v, c: x.shape()[1], scale: *scale }).collect();
    let g = spec.geom(cat, &weight.shape());
    let y = pointwise::forward(&g, &parts, &f32s(weight), Some(&f32s(bias)), silu);
    tensor(y, Shape::new([g.n, g.co, g.ho(), g.wo()]))
}

/// [`decode::decode`] on Flex tensors: the head's maps `[b, 4·bins, a]` and `[b, nc, a]` to
/// `[b, 4 + nc, a]`.
pub(super) fn decode_head(boxes: &FlexTensor, scores: &FlexTensor, bins: usize, anchors: (&[[f32; 2]], &[f32]), xywh: bool) -> FlexTensor {
    let (b, nc, a) = (scores.shape()[0], scores.shape()[1], scores.shape()[2]);
    tensor(decode::decode(&f32s(boxes), &f32s(scores), (b, bins, nc, a), anchors, xywh), Shape::new([b, 4 + nc, a]))
}

fn tensor(values: Vec<f32>, shape: Shape) -> FlexTensor {
    FlexTensor::from_data(TensorData::new(values, shape))
}

impl CpuOps for Flex {
    fn conv2d_nchw(x: FlexTensor, weight: FlexTensor, spec: ConvSpec) -> FlexTensor {
        if !spec.ours(&x, &weight) {
            return <Flex as ModuleOps<Flex>>::conv2d(x, weight, None, spec.options());
        }
        let g = spec.geom(&x.shape(), &weight.shape());
        let y = conv::forward(&g, &f32s(&x), &f32s(&weight), None, false);
        tensor(y, Shape::new([g.n, g.co, g.ho(), g.wo()]))
    }

    fn batch_norm_act(x: FlexTensor, gamma: FlexTensor, beta: FlexTensor, stats: FlexTensor, norm: NormSpec) -> FlexTensor {
        let (mean, var) = stats_rows(&stats);
        let shape = x.shape();
        let y = norm::forward(&f32s(&x), planes(&shape), &f32s(&gamma), &f32s(&beta), &mean, &var, norm.eps, norm.silu);
        tensor(y, shape)
    }
    fn cwd_loss(s: FlexTensor, t: FlexTensor, len: usize, tau: f32) -> FlexTensor {
        tensor(vec![kd::loss(&f32s(&s), &f32s(&t), len, tau)], Shape::new([1]))
    }
}

impl CpuInfer for Flex {
    fn batch_stats(x: FlexTensor) -> FlexTensor {
        let p = planes(&x.shape());
        let (mut mean, var) = norm::batch_stats(&f32s(&x), p);
        mean.extend(var);
        tensor(mean, Shape::new([2, p.c]))
    }

    fn conv2d_bias_act(x: FlexTensor, weight: FlexTensor, bias: FlexTensor, spec: ConvSpec, silu: bool) -> FlexTensor {
        let g = spec.geom(&x.shape(), &weight.shape());
        let y = conv::forward_inference(&g, &f32s(&x), &f32s(&weight), Some(&f32s(&bias)), silu);
        tensor(y, Shape::new([g.n, g.co, g.ho(), g.wo()]))
    }

    fn max_pool_chain(x: FlexTensor, k: usize, n: usize) -> FlexTensor {
        let s = x.shape();
        tensor(decode::max_pool_chain(&f32s(&x), (s[0], s[1], s[2], s[3]), k, n), Shape::new([s[0], n * s[1], s[2], s[3]]))
    }

    fn dfl(boxes: FlexTensor, bins: usize) -> FlexTensor {
        let (b, a) = (boxes.shape()[0], boxes.shape()[2]);
        tensor(decode::dfl(&f32s(&boxes), (b, bins, a)), Shape::new([b, 4, a]))
    }
}

/// Input and weight gradients of the convolution, by our kernel or burn-flex's.
fn conv_grads(x: FlexTensor, w: FlexTensor, dy: FlexTensor, spec: ConvSpec, want: [bool; 2]) -> [Option<FlexTensor>; 2] {
    if !spec.ours(&x, &w) || dy.dtype() != DType::F32 {
        let o = spec.options();
        let dx = want[0].then(|| Flex::conv2d_x_backward(x.clone(), w.clone(), dy.clone(), o.clone()));
        let dw = want[1].then(|| Flex::conv2d_weight_backward(x, w, dy, o));
        return [dx, dw];
    }
    let (xs, ws) = (x.shape(), w.shape());
    let g = spec.geom(&xs, &ws);
    let (dx, dw) = conv::backward(&g, &f32s(&x), &f32s(&w), &f32s(&dy), want[0], want[1]);
    [dx.map(|v| tensor(v, xs)), dw.map(|v| tensor(v, ws))]
}

#[derive(Debug)]
struct ConvBackward;

impl Backward<Flex, 2> for ConvBackward {
    type State = (NodeId, NodeId, ConvSpec);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
        let [node_x, node_w] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        let (x_id, w_id, spec) = ops.state;
        let x = checkpointer.retrieve_node_output::<FlexTensor>(x_id);
        let w = checkpointer.retrieve_node_output::<FlexTensor>(w_id);
        let [dx, dw] = conv_grads(x, w, dy, spec, [node_x.is_some(), node_w.is_some()]);
        if let (Some(node), Some(dx)) = (node_x, dx) {
            grads.register::<Flex>(node.id, dx);
        }
        if let (Some(node), Some(dw)) = (node_w, dw) {
            grads.register::<Flex>(node.id, dw);
        }
    }
}

#[derive(Debug)]
struct NormBackward;

impl Backward<Flex, 3> for NormBackward {
    /// x, gamma, beta checkpoints; mean and variance used by the forward; options.
    type State = (NodeId, NodeId, NodeId, Vec<f32>, Vec<f32>, NormSpec);

    fn backward(self, ops: Ops<Self::State, 3>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
        let [node_x, node_g, node_b] = ops.parents;
        let dy = grads.consume::<Flex>(&ops.node);
        let (x_id, g_id, b_id, mean, var, norm) = ops.state;
        let x = checkpointer.retrieve_node_output::<FlexTensor>(x_id);
        let gamma = checkpointer.retrieve_node_output::<FlexTensor>(g_id);
        let beta = checkpointer.retrieve_node_output::<FlexTensor>(b_id);
        let shape = x.shape();
        let (dx, dg, db) = norm::backward(
            &f32s(&x),
            planes(&shape),
            &f32s(&gamma),
            &f32s(&beta),
            &mean,
            &var,
            norm,
            &f32s(&dy),
        );
        let c = Shape::new([planes(&shape).c]);
        for (node, d, s) in [(node_x, dx, shape), (node_g, dg, c.clone()), (node_b, db, c)] {
            if let Some(node) = node {
                grads.register::<Flex>(node.id, tensor(d, s));
            }
        }
    }
}

#[derive(Debug)]
struct CwdBackward;

impl Backward<Flex, 2> for CwdBackward {
    /// Student and teacher checkpoints, row length, temperature.
    type State = (NodeId, NodeId, usize, f32);

    fn backward(self, ops: Ops<Self::State, 2>, grads: &mut Gradients, checkpointer: &mut Checkpointer) {
        let [node_s, node_t] = ops.parents;
        let g = grads.consume::<Flex>(&ops.node);
        let (s_id, t_id, len, tau) = ops.state;
        let s = checkpointer.retrieve_node_output::<FlexTensor>(s_id);
        let t = checkpointer.retrieve_node_output::<FlexTensor>(t_id);
        let (ds, dt) = kd::grads(&f32s(&s), &f32s(&t), len, tau, f32s(&g)[0], [node_s.is_some(), node_t.is_some()]);
        if let Some(node) = node_s {
            grads.register::<Flex>(node.id, tensor(ds, s.shape()));
        }
        if let Some(node) = node_t {
            grads.register::<Flex>(node.id, tensor(dt, t.shape()));
        }
    }
}

impl<C: CheckpointStrategy> CpuOps for Autodiff<Flex, C> {
    fn cwd_loss(s: FloatTensor<Self>, t: FloatTensor<Self>, len: usize, tau: f32) -> FloatTensor<Self> {
        match CwdBackward.prepare::<C>([s.node(), t.node()]).compute_bound().stateful() {
            OpsKind::Tracked(mut prep) => {
                let (s_id, t_id) = (prep.checkpoint(&s), prep.checkpoint(&t));
                let y = Flex::cwd_loss(s.into_primitive(), t.into_primitive(), len, tau);
                prep.finish((s_id, t_id, len, tau), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(Flex::cwd_loss(s.into_primitive(), t.into_primitive(), len, tau)),
        }
    }

    fn batch_norm_act(
        x: FloatTensor<Self>,
        gamma: FloatTensor<Self>,
        beta: FloatTensor<Self>,
        stats: FloatTensor<Self>,
        norm: NormSpec,
    ) -> FloatTensor<Self> {
        let stats = stats.into_primitive();
        let prep = NormBackward.prepare::<C>([x.node(), gamma.node(), beta.node()]).compute_bound().stateful();
        match prep {
            OpsKind::Tracked(mut prep) => {
                let ids = (prep.checkpoint(&x), prep.checkpoint(&gamma), prep.checkpoint(&beta));
                let (mean, var) = stats_rows(&stats);
                let y = Flex::batch_norm_act(x.into_primitive(), gamma.into_primitive(), beta.into_primitive(), stats, norm);
                prep.finish((ids.0, ids.1, ids.2, mean, var, norm), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(Flex::batch_norm_act(
                x.into_primitive(),
                gamma.into_primitive(),
                beta.into_primitive(),
                stats,
                norm,
            )),
        }
    }

    fn conv2d_nchw(x: FloatTensor<Self>, weight: FloatTensor<Self>, spec: ConvSpec) -> FloatTensor<Self> {
        match ConvBackward.prepare::<C>([x.node(), weight.node()]).compute_bound().stateful() {
            OpsKind::Tracked(mut prep) => {
                let x_id = prep.checkpoint(&x);
                let w_id = prep.checkpoint(&weight);
                let y = Flex::conv2d_nchw(x.into_primitive(), weight.into_primitive(), spec);
                prep.finish((x_id, w_id, spec), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(Flex::conv2d_nchw(x.into_primitive(), weight.into_primitive(), spec)),
        }
    }
}
