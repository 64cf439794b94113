//! Our own CPU kernels, plugged into burn as a backend extension (see `extension`) and used on the
//! `flex` backend only: GPU backends keep burn's ops. `YOLODISTILL_KERNELS=burn` switches back to
//! burn's own CPU ops (for A/B measurements and reference checks), `gemm` keeps ours but without
//! the direct convolutions.

pub mod alloc;
pub mod bf16;
mod broadcast;
pub mod conv;
mod decode;
mod direct;
mod extension;
pub mod kd;
pub mod norm;
mod pointwise;
mod shifted;
mod winograd;
pub(crate) mod simd;

use std::cell::RefCell;
use std::sync::OnceLock;

use burn::backend::Dispatch;
use burn::nn::conv::Conv2d;
use burn::nn::{BatchNorm, PaddingConfig2d};
use burn::tensor::activation::silu;
use burn::tensor::{DType, Shape};
use burn::tensor::Tensor;

pub use bf16::Arithmetic;
pub use extension::{ConvSpec, CpuOps, CpuInfer, NormSpec};

/// A buffer's base pointer shared by workers that write disjoint parts of it.
#[derive(Clone, Copy)]
struct SharedMut(*mut f32);
// SAFETY: users write disjoint elements from each thread and join before the buffer is read.
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

impl SharedMut {
    /// The element at `offset`. (A method, so that closures capture the whole Send wrapper.)
    ///
    /// # Safety
    /// `offset` must lie within the buffer.
    unsafe fn at(self, offset: usize) -> *mut f32 {
        self.0.add(offset)
    }
}

/// What `YOLODISTILL_KERNELS` asks for: unset or `ours`, `direct` (ours without Winograd's
/// convolution: the A/B switch for it), `gemm` (ours without the direct convolutions either), or
/// `burn` (burn's own ops). Another value is named in a warning, once, and means ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Choice {
    Ours,
    Direct,
    Gemm,
    Burn,
}

fn choice() -> Choice {
    static CHOICE: OnceLock<Choice> = OnceLock::new();
    *CHOICE.get_or_init(|| match std::env::var("YOLODISTILL_KERNELS").as_deref() {
        Err(_) | Ok("") | Ok("ours") => Choice::Ours,
        Ok("direct") => Choice::Direct,
        Ok("gemm") => Choice::Gemm,
        Ok("burn") => Choice::Burn,
        Ok(other) => {
            eprintln!("warning: YOLODISTILL_KERNELS={other:?} is not `ours`, `direct`, `gemm` or `burn`; using our kernels");
            Choice::Ours
        }
    })
}

/// Whether our kernels are on (unless `YOLODISTILL_KERNELS=burn`).
pub fn enabled() -> bool {
    choice() != Choice::Burn
}

/// Whether inference's forward and training's input gradient may use the direct convolutions
/// (`direct.rs`, `broadcast.rs`; off with `YOLODISTILL_KERNELS=gemm`).
fn direct_enabled() -> bool {
    matches!(choice(), Choice::Ours | Choice::Direct)
}

/// Whether inference's forward may use Winograd's convolutions (`winograd/`; off with
/// `YOLODISTILL_KERNELS=direct` or `gemm`).
fn winograd_enabled() -> bool {
    choice() == Choice::Ours
}

fn on_cpu<const D: usize>(x: &Tensor<D>) -> bool {
    enabled() && x.dtype() == DType::F32 && crate::device::is_cpu(&x.device())
}

/// Without autodiff on the CPU (inference), where [`CpuInfer`]'s kernels apply.
fn inferring_on_cpu<const D: usize>(x: &Tensor<D>) -> bool {
    on_cpu(x) && !x.device().is_autodiff()
}

/// SPPF's `n` chained `k×k` max poolings (stride 1, padding `k / 2`, each of the previous
/// result) side by side along the channels, `[b, n·c, h, w]`, by our kernel when inferring on the
/// CPU with an odd `k`; `None` elsewhere (the caller pools with burn's op).
pub fn max_pool_chain(x: Tensor<4>, k: usize, n: usize) -> Option<Tensor<4>> {
    (inferring_on_cpu(&x) && k % 2 == 1).then(|| Tensor::from_dispatch(<Dispatch as CpuInfer>::max_pool_chain(x.into_dispatch(), k, n)))
}

/// The head's decoded inference output `[b, 4 + nc, a]` (boxes about the anchor centres, in
/// pixels by their strides, xywh or xyxy; sigmoid scores) from its maps `[b, 4·bins, a]` and
/// `[b, nc, a]` in one pass, when inferring on the CPU in f32; `None` elsewhere (the caller
/// composes it from tensor ops).
pub fn decode_head(boxes: &Tensor<3>, scores: &Tensor<3>, bins: usize, anchors: (&[[f32; 2]], &[f32]), xywh: bool) -> Option<Tensor<3>> {
    let f32_on_cpu = |t: &Tensor<3>| inferring_on_cpu(t) && t.dtype() == DType::F32;
    if !f32_on_cpu(boxes) || !f32_on_cpu(scores) {
        return None;
    }
    let flex = |t: &Tensor<3>| extension::flex_of(t.clone().into_dispatch());
    let y = extension::decode_head(&flex(boxes)?, &flex(scores)?, bins, anchors, xywh);
    Some(Tensor::from_dispatch(extension::dispatch_of(y)))
}

/// DFL expectation `[b, 4·bins, a]` → `[b, 4, a]` in one pass when inferring on the CPU; `None`
/// elsewhere (the caller composes it from tensor ops).
pub fn dfl(boxes: Tensor<3>, bins: usize) -> Option<Tensor<3>> {
    inferring_on_cpu(&boxes).then(|| Tensor::from_dispatch(<Dispatch as CpuInfer>::dfl(boxes.into_dispatch(), bins)))
}

fn act(y: Tensor<4>, with_silu: bool) -> Tensor<4> {
    if with_silu {
        silu(y)
    } else {
        y
    }
}

/// Runs `forward`, an inference forward of `x` on the CPU, on a worker of rayon's pool: each
/// kernel's parallel work then starts from that worker, where the calling thread would sleep and be
/// woken around each of a forward's ~100 kernels (5% of yolov8n's latency at batch 1). The
/// caller's per-thread settings go with it: its arithmetic and any convolution recording.
/// Elsewhere (a GPU, or training's autodiff) `forward` runs here.
pub fn on_pool<R: Send>(x: Tensor<4>, forward: impl FnOnce(Tensor<4>) -> R + Send) -> R {
    let device = x.device();
    if !crate::device::is_cpu(&device) || device.is_autodiff() {
        return forward(x);
    }
    let (arith, recording) = (bf16::current(), RECORDED.with(|r| r.borrow_mut().take()));
    let (out, recorded) = rayon::scope(|_| {
        // the worker's own recording state is put back after (the caller's, when it is the worker)
        let own = RECORDED.with(|r| r.replace(recording));
        let out = bf16::with(arith, || forward(x));
        (out, RECORDED.with(|r| r.replace(own)))
    });
    RECORDED.with(|r| *r.borrow_mut() = recorded);
    out
}

thread_local! {
    static RECORDED: RefCell<Option<Vec<conv::ConvGeom>>> = const { RefCell::new(None) };
}

/// Runs `f` and returns the geometry of every convolution it ran through [`conv2d`] on this thread
/// (for `bench-conv`, which times each convolution of a model).
pub fn record_convs<R>(f: impl FnOnce() -> R) -> (R, Vec<conv::ConvGeom>) {
    RECORDED.with(|r| *r.borrow_mut() = Some(Vec::new()));
    let out = f();
    (out, RECORDED.with(|r| r.borrow_mut().take().unwrap_or_default()))
}

fn record(x: &Shape, weight: &Shape, spec: ConvSpec) {
    RECORDED.with(|r| {
        if let Some(list) = r.borrow_mut().as_mut() {
            list.push(spec.geom(x, weight));
        }
    });
}

/// `conv2d(x, weight) + bias` with our kernel on the CPU and burn's elsewhere.
pub fn conv2d(x: Tensor<4>, weight: Tensor<4>, bias: Option<Tensor<1>>, spec: ConvSpec) -> Tensor<4> {
    record(&x.shape(), &weight.shape(), spec);
    if !on_cpu(&x) {
        return burn::tensor::module::conv2d(x, weight, bias, spec.options());
    }
    let y = Tensor::<4>::from_dispatch(<Dispatch as CpuOps>::conv2d_nchw(x.into_dispatch(), weight.into_dispatch(), spec));
    match bias {
        Some(b) => {
            let c = b.dims()[0];
            y + b.reshape([1, c, 1, 1])
        }
        None => y,
    }
}

/// A burn `Conv2d` layer's forward through [`conv2d`].
pub fn conv2d_layer(layer: &Conv2d, x: Tensor<4>) -> Tensor<4> {
    conv2d_layer_act(layer, x, false)
}

/// `act(layer(x))`: on the CPU without autodiff (inference, BatchNorm folded) bias and SiLU are
/// applied inside the convolution's pass.
pub fn conv2d_layer_act(layer: &Conv2d, x: Tensor<4>, with_silu: bool) -> Tensor<4> {
    // Explicit's fields are (top, left, bottom, right).
    let (t, l, b, r) = match layer.padding {
        PaddingConfig2d::Explicit(t, l, b, r) => (t, l, b, r),
        PaddingConfig2d::Valid => (0, 0, 0, 0),
        PaddingConfig2d::Same => return layer.forward(x),
    };
    let spec = ConvSpec { stride: layer.stride, pad: [t, b, l, r], dilation: layer.dilation, groups: layer.groups, arith: bf16::current() };
    let weight = layer.weight.val();
    if inferring_on_cpu(&x) && !spec.depthwise(weight.dims()[1]) {
        record(&x.shape(), &weight.shape(), spec);
        let bias = match &layer.bias {
            Some(b) => b.val(),
            None => Tensor::zeros([weight.dims()[0]], &x.device()),
        };
        let y = <Dispatch as CpuInfer>::conv2d_bias_act(x.into_dispatch(), weight.into_dispatch(), bias.into_dispatch(), spec, with_silu);
        return Tensor::from_dispatch(y);
    }
    act(conv2d(x, weight, layer.bias.as_ref().map(|b| b.val()), spec), with_silu)
}

/// `act(layer(cat(xs)))`, the channels of the maps `xs` concatenated, each `(map, scale)` first
/// upsampled (nearest) by its scale, without making the concatenation or the upsampled maps
/// ([`pointwise`]) where `layer` is a 1×1 convolution (stride 1, one group, no padding) run in f32
/// inference on the CPU; `None` elsewhere, for the caller to upsample and concatenate.
pub fn conv2d_cat_layer_act(layer: &Conv2d, xs: &[(Tensor<4>, usize)], with_silu: bool) -> Option<Tensor<4>> {
    let weight = layer.weight.val();
    let [_, _, kh, kw] = weight.dims();
    let ([n, _, h, w], s) = xs.first().map(|(x, s)| (x.dims(), *s))?;
    let (h, w) = (h * s, w * s);
    let unpadded = matches!(layer.padding, PaddingConfig2d::Valid | PaddingConfig2d::Explicit(0, 0, 0, 0));
    let pointwise = kh == 1 && kw == 1 && layer.stride == [1, 1] && layer.groups == 1 && unpadded;
    let same_maps = xs.iter().all(|(x, s)| inferring_on_cpu(x) && matches!(x.dims(), [m, _, a, b] if [m, a * s, b * s] == [n, h, w]));
    if !pointwise || !same_maps || bf16::current() != Arithmetic::F32 || !inferring_on_cpu(&weight) {
        return None;
    }
    let flex = |t: Tensor<4>| extension::flex_of(t.into_dispatch());
    let parts = xs.iter().map(|(x, s)| flex(x.clone()).map(|f| (f, *s))).collect::<Option<Vec<_>>>()?;
    let bias = match &layer.bias {
        Some(b) => b.val(),
        None => Tensor::zeros([weight.dims()[0]], &weight.device()),
    };
    let (weight_flex, bias_flex) = (flex(weight.clone())?, extension::flex_of(bias.into_dispatch())?);
    let spec = ConvSpec { stride: [1, 1], pad: [0; 4], dilation: layer.dilation, groups: 1, arith: Arithmetic::F32 };
    let cat = Shape::new([n, xs.iter().map(|(x, _)| x.dims()[1]).sum(), h, w]);
    record(&cat, &weight.shape(), spec);
    let y = extension::pointwise_parts(&parts, &cat, &weight_flex, &bias_flex, spec, with_silu);
    Some(Tensor::from_dispatch(extension::dispatch_of(y)))
}

/// `act(bn(x))` with our fused kernel on the CPU: batch statistics (and the running-statistics
/// update, as burn's `BatchNorm` does it) when training, running statistics otherwise.
pub fn batch_norm_act(bn: &BatchNorm, x: Tensor<4>, with_silu: bool) -> Tensor<4> {
    if !on_cpu(&x) {
        return act(bn.forward(x), with_silu);
    }
    let batch = x.device().is_autodiff() && bn.training.is_enabled();
    let stats = if batch {
        let stats = batch_stats(&x);
        update_running(bn, &stats);
        stats
    } else {
        let c = bn.gamma.dims()[0];
        let rows = [bn.running_mean.value(), bn.running_var.value()].map(|t| t.reshape([1, c]));
        Tensor::cat(rows.to_vec(), 0)
    };
    let norm = NormSpec { eps: bn.epsilon, silu: with_silu, batch };
    let y = <Dispatch as CpuOps>::batch_norm_act(
        x.into_dispatch(),
        bn.gamma.val().into_dispatch(),
        bn.beta.val().into_dispatch(),
        stats.into_dispatch(),
        norm,
    );
    Tensor::from_dispatch(y)
}

/// Per-channel `(x − mean) / √(var + eps)` with the batch's own mean and biased variance
/// (affine-free training-mode BatchNorm), differentiable through the statistics.
pub fn normalise_batch(x: Tensor<4>, eps: f64) -> Tensor<4> {
    if !on_cpu(&x) {
        let stat = |t: Tensor<4>| t.mean_dim(0).mean_dim(2).mean_dim(3); // [1, C, 1, 1]
        let centred = x.clone() - stat(x);
        let var = stat(centred.clone().square());
        return centred / var.add_scalar(eps).sqrt();
    }
    let c = x.dims()[1];
    let device = x.device();
    let stats = batch_stats(&x);
    let (gamma, beta) = (Tensor::<1>::ones([c], &device), Tensor::<1>::zeros([c], &device));
    let norm = NormSpec { eps, silu: false, batch: true };
    let y = <Dispatch as CpuOps>::batch_norm_act(x.into_dispatch(), gamma.into_dispatch(), beta.into_dispatch(), stats.into_dispatch(), norm);
    Tensor::from_dispatch(y)
}

/// Channel-wise distillation loss of one level with our kernel on the CPU (`None` elsewhere):
/// per (n, c) row a softmax over the H·W positions at temperature `tau`,
/// `τ²·Σ KL(p_t ‖ p_s) / (N·C)`.
pub fn cwd(s: Tensor<4>, t: Tensor<4>, tau: f32) -> Option<Tensor<1>> {
    if !on_cpu(&s) || t.dtype() != DType::F32 {
        return None;
    }
    let [_, _, h, w] = s.dims();
    Some(Tensor::from_dispatch(<Dispatch as CpuOps>::cwd_loss(s.into_dispatch(), t.into_dispatch(), h * w, tau)))
}

/// Per-channel (mean, biased variance) of `x` as `[2, C]`, a constant (no autodiff).
fn batch_stats(x: &Tensor<4>) -> Tensor<2> {
    Tensor::from_dispatch(<Dispatch as CpuInfer>::batch_stats(x.clone().inner().into_dispatch()))
}

/// running ← (1 − momentum)·running + momentum·batch, for the mean and the biased variance.
fn update_running(bn: &BatchNorm, stats: &Tensor<2>) {
    let c = stats.dims()[1];
    let m = bn.momentum;
    let blend = |running: Tensor<1>, i: usize| {
        let batch = stats.clone().narrow(0, i, 1).reshape([c]).to_device(&running.device());
        running.mul_scalar(1.0 - m).add(batch.mul_scalar(m)).detach()
    };
    let mean = blend(bn.running_mean.value_sync(), 0);
    let var = blend(bn.running_var.value_sync(), 1);
    bn.running_mean.update(mean);
    bn.running_var.update(var);
}
