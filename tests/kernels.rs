//! Our CPU convolution (`yolodistill::kernels`) against burn's own `conv2d` on the same device:
//! the output and the gradients of input, weight and bias, on shapes that exercise every path
//! (odd sizes, stride 2, padding wider than the kernel's half, dilation, groups, depthwise,
//! batch 1, 1×1 with and without stride, several tiles per image).

mod common;

use burn::module::Module;
use burn::nn::conv::Conv2dConfig;
use burn::nn::{BatchNorm, BatchNormConfig, PaddingConfig2d};
use burn::tensor::{Distribution, Tensor, TensorData};
use yolodistill::kernels::{self, Arithmetic, ConvSpec};

#[derive(Debug, Clone, Copy)]
struct Case {
    n: usize,
    ci: usize,
    h: usize,
    w: usize,
    co: usize,
    k: usize,
    stride: usize,
    pad: usize,
    dilation: usize,
    groups: usize,
    bias: bool,
}

#[allow(clippy::too_many_arguments)]
const fn case(n: usize, ci: usize, h: usize, w: usize, co: usize, k: usize, stride: usize, pad: usize) -> Case {
    Case { n, ci, h, w, co, k, stride, pad, dilation: 1, groups: 1, bias: false }
}

const CASES: &[Case] = &[
    case(1, 3, 17, 13, 8, 3, 2, 1),                              // odd sizes, stride 2, batch 1
    case(2, 8, 11, 9, 16, 1, 1, 0),                              // pointwise: GEMM on the planes
    case(1, 4, 7, 7, 5, 1, 2, 0),                                // 1×1 with stride: gathered
    case(2, 4, 9, 8, 6, 5, 2, 2),                                // 5×5, stride 2
    case(2, 3, 6, 5, 4, 3, 1, 3),                                // padding wider than the kernel's half
    case(2, 16, 64, 40, 8, 3, 1, 1),                             // several tiles per image
    Case { dilation: 2, pad: 2, ..case(2, 5, 12, 10, 7, 3, 1, 2) }, // dilation
    Case { groups: 2, ..case(3, 6, 10, 7, 4, 3, 1, 1) },            // groups
    Case { groups: 8, ..case(2, 8, 9, 9, 8, 3, 2, 1) },             // depthwise (burn-flex's path)
    Case { bias: true, ..case(2, 6, 5, 7, 3, 1, 1, 0) },            // bias (head outputs)
    // Shifted GEMMs over a padded patch in inference (8 to 32 input channels per group, 64 when
    // strided): odd sizes, stride 2's phases, 5×5, no padding, groups, several bands per image.
    case(1, 8, 13, 11, 12, 3, 1, 1),
    case(2, 16, 15, 17, 20, 3, 2, 1),
    case(1, 12, 9, 20, 8, 5, 2, 2),
    case(1, 48, 11, 9, 16, 3, 2, 1),
    case(2, 9, 10, 12, 7, 3, 1, 0),
    Case { groups: 2, bias: true, ..case(1, 32, 9, 9, 8, 3, 1, 1) },
    case(1, 24, 70, 64, 6, 3, 1, 1),
    // The broadcast direct convolution in inference (≥ 32 channels, rows ≥ 40 wide, AVX2 CPUs):
    // both strides, output channels not a multiple of its 16 (stride 1 now runs Winograd's).
    case(1, 32, 7, 45, 20, 3, 1, 1),
    case(2, 40, 9, 83, 18, 3, 2, 1),
    // Winograd's forms (3×3 stride 1, ≥ 16 channels each way): odd sizes (tiles past the right and
    // bottom edges), several images, bands of tile rows. Inference runs F(2×2, 3×3) on maps under
    // 32×32 (the first two), F(4×4, 3×3) on the last three (rows of ≥ 8 tiles: its shuffles);
    // training's forward and input gradient run F(2×2) on all five.
    Case { bias: true, ..case(2, 24, 15, 13, 20, 3, 1, 1) },
    case(1, 64, 20, 21, 48, 3, 1, 1),
    case(1, 16, 50, 38, 16, 3, 1, 1),
    Case { bias: true, ..case(1, 32, 37, 35, 24, 3, 1, 1) },
    case(2, 16, 33, 70, 16, 3, 1, 1),
    // The input gradient of a stride-1 "same" convolution as a direct convolution of dY (AVX2
    // CPUs): broadcast (≥ 32 output channels, rows ≥ 40 wide) with groups and 5×5, direct tile.
    case(2, 20, 9, 45, 40, 3, 1, 1),
    Case { groups: 2, ..case(1, 16, 8, 41, 64, 3, 1, 1) },
    case(1, 8, 12, 44, 40, 5, 1, 2),
    case(2, 6, 11, 13, 24, 3, 1, 1),
    // Many small images: whole images share one GEMM (in the 2-thread pool of `two_threads`).
    case(40, 6, 7, 5, 5, 3, 1, 1),
    case(40, 8, 6, 6, 12, 1, 1, 0),
    case(40, 4, 9, 7, 6, 3, 2, 1),
    Case { groups: 2, bias: true, ..case(40, 6, 5, 5, 4, 3, 1, 1) },
];

struct Grads {
    y: Vec<f32>,
    dx: Vec<f32>,
    dw: Vec<f32>,
    db: Option<Vec<f32>>,
}

/// Deterministic values in [-1, 1) (the same for both sides of a comparison).
fn noise(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

fn vec(t: Tensor<4>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

/// Runs `conv` on fixed random inputs and returns its output and gradients of `sum(y · r)`.
fn run(c: Case, ours: bool) -> Grads {
    run_in(c, ours, Arithmetic::F32)
}

/// [`run`] with our kernel in arithmetic `arith`; burn's side (`ours` false) with `Bf16` gets
/// x, the weight and r rounded to bf16, the operands our bf16 products see.
fn run_in(c: Case, ours: bool, arith: Arithmetic) -> Grads {
    let device = burn::tensor::Device::flex().autodiff();
    let spec = ConvSpec { stride: [c.stride; 2], pad: [c.pad; 4], dilation: [c.dilation; 2], groups: c.groups, arith };
    let rounded = !ours && arith == Arithmetic::Bf16;
    let values = |len: usize, seed: u64| {
        let v = noise(len, seed);
        if rounded { v.into_iter().map(kernels::bf16::round).collect() } else { v }
    };
    let x = Tensor::<4>::from_data(TensorData::new(values(c.n * c.ci * c.h * c.w, 1), [c.n, c.ci, c.h, c.w]), &device).require_grad();
    let wshape = [c.co, c.ci / c.groups, c.k, c.k];
    let w = Tensor::<4>::from_data(TensorData::new(values(wshape.iter().product(), 2), wshape), &device).require_grad();
    let b = c.bias.then(|| Tensor::<1>::from_data(TensorData::new(noise(c.co, 3), [c.co]), &device).require_grad());
    let y = if ours {
        kernels::conv2d(x.clone(), w.clone(), b.clone(), spec)
    } else {
        burn::tensor::module::conv2d(x.clone(), w.clone(), b.clone(), spec.options())
    };
    let dims = y.dims();
    let r = Tensor::<4>::from_data(TensorData::new(values(dims.iter().product(), 4), dims), &device);
    let grads = (y.clone() * r).sum().backward();
    Grads {
        y: vec(y.inner()),
        dx: vec(x.grad(&grads).unwrap()),
        dw: vec(w.grad(&grads).unwrap()),
        db: b.map(|b| b.grad(&grads).unwrap().into_data().try_to_vec::<f32>().unwrap()),
    }
}

fn assert_close(what: &str, c: Case, ours: &[f32], reference: &[f32]) {
    assert!(!reference.is_empty(), "{what}: empty reference for {c:?}");
    let (d, m) = common::max_diff(ours, reference);
    assert!(d <= 1e-4 * m.max(1.0), "{what} of {c:?}: max |ours − burn| = {d} (max |burn| = {m})");
}

/// Runs `f` in a pool of two threads: the kernel's work split (tiles, groups of images) depends on
/// the thread count, so the cases cover the same paths on every machine.
fn two_threads<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap().install(f)
}

#[test]
fn conv2d_matches_burn_in_output_and_every_gradient() {
    for &c in CASES {
        let (a, b) = (two_threads(|| run(c, true)), run(c, false));
        assert_close("output", c, &a.y, &b.y);
        assert_close("input gradient", c, &a.dx, &b.dx);
        assert_close("weight gradient", c, &a.dw, &b.dw);
        if let (Some(da), Some(db)) = (&a.db, &b.db) {
            assert_close("bias gradient", c, da, db);
        }
    }
}

/// Mixed precision: our bf16 convolution, forward and both gradients, is burn's f32 convolution
/// of bf16-rounded operands (products exact, sums in f32), on every path of CASES but the
/// depthwise one (burn-flex's, which stays f32). On a CPU with AVX512-BF16 this runs the native
/// kernel, elsewhere the emulation.
#[test]
fn bf16_conv2d_is_burns_conv2d_of_rounded_operands() {
    let mut apart = 0.0f32;
    for &c in CASES.iter().filter(|c| c.groups < c.ci) {
        let (a, b) = (two_threads(|| run_in(c, true, Arithmetic::Bf16)), run_in(c, false, Arithmetic::Bf16));
        assert_close("bf16 output", c, &a.y, &b.y);
        assert_close("bf16 input gradient", c, &a.dx, &b.dx);
        assert_close("bf16 weight gradient", c, &a.dw, &b.dw);
        // the check can tell bf16 from f32: against unrounded operands the outputs differ by more
        let f = run(c, false);
        let (d, m) = common::max_diff(&a.y, &f.y);
        apart = apart.max(d / m.max(1.0));
    }
    assert!(apart > 1e-4, "bf16 outputs within {apart:e} of f32 ones: the comparison above could not see rounding");
}

#[test]
fn conv2d_without_autodiff_matches_burn() {
    let device = burn::tensor::Device::flex();
    for &c in CASES {
        let spec = ConvSpec { stride: [c.stride; 2], pad: [c.pad; 4], dilation: [c.dilation; 2], groups: c.groups, arith: Arithmetic::F32 };
        device.seed(3);
        let x = Tensor::<4>::random([c.n, c.ci, c.h, c.w], Distribution::Normal(0.0, 1.0), &device);
        let w = Tensor::<4>::random([c.co, c.ci / c.groups, c.k, c.k], Distribution::Normal(0.0, 0.5), &device);
        // A channel slice is a strided view: the kernel must read it correctly.
        let xs = Tensor::cat(vec![x.clone(), x.clone()], 1).narrow(1, c.ci / 2, c.ci);
        let xs_ref = xs.clone().into_data();
        let ours = two_threads(|| vec(kernels::conv2d(xs, w.clone(), None, spec)));
        let reference = vec(burn::tensor::module::conv2d(Tensor::from_data(xs_ref, &device), w, None, spec.options()));
        assert_close("output (strided input)", c, &ours, &reference);
    }
}

fn tensor4(shape: [usize; 4], seed: u64, device: &burn::tensor::Device) -> Tensor<4> {
    Tensor::from_data(TensorData::new(noise(shape.iter().product(), seed), shape), device)
}

/// A BatchNorm as the models build it (eps 1e-3, momentum 0.03) with non-trivial γ, β and running
/// statistics, identical for every call with the same arguments.
fn batch_norm(c: usize, device: &burn::tensor::Device) -> BatchNorm {
    use burn::module::Param;
    let mut bn = BatchNormConfig::new(c).with_epsilon(1e-3).with_momentum(0.03).init(device);
    let vec1 = |seed: u64, offset: f32| {
        let v: Vec<f32> = noise(c, seed).into_iter().map(|x| x + offset).collect();
        Tensor::<1>::from_data(TensorData::new(v, [c]), device)
    };
    bn.gamma = Param::from_tensor(vec1(11, 1.5));
    bn.beta = Param::from_tensor(vec1(12, 0.0));
    bn.running_mean = burn::module::RunningState::new(vec1(13, 0.0));
    bn.running_var = burn::module::RunningState::new(vec1(14, 2.0));
    bn
}

const NORM_SHAPES: &[[usize; 4]] = &[[2, 5, 7, 3], [1, 3, 4, 4], [4, 16, 9, 11]];

#[test]
fn batch_norm_silu_matches_burn_in_training_with_gradients_and_running_statistics() {
    let device = burn::tensor::Device::flex().autodiff();
    for &shape in NORM_SHAPES {
        for with_silu in [true, false] {
            let run = |ours: bool| {
                let bn = batch_norm(shape[1], &device);
                let x = tensor4(shape, 21, &device).mul_scalar(3.0).add_scalar(0.5).require_grad();
                let y = if ours {
                    kernels::batch_norm_act(&bn, x.clone(), with_silu)
                } else {
                    let y = bn.forward(x.clone());
                    if with_silu { burn::tensor::activation::silu(y) } else { y }
                };
                let r = tensor4(shape, 22, &device);
                let grads = (y.clone() * r).sum().backward();
                let v1 = |t: Tensor<1>| t.into_data().try_to_vec::<f32>().unwrap();
                (
                    vec(y.inner()),
                    vec(x.grad(&grads).unwrap()),
                    v1(bn.gamma.val().grad(&grads).unwrap()),
                    v1(bn.beta.val().grad(&grads).unwrap()),
                    v1(bn.running_mean.value()),
                    v1(bn.running_var.value()),
                )
            };
            let (a, b) = (run(true), run(false));
            let c = case(shape[0], shape[1], shape[2], shape[3], 0, 0, 0, 0);
            assert_close(&format!("bn output (silu {with_silu})"), c, &a.0, &b.0);
            assert_close(&format!("bn input gradient (silu {with_silu})"), c, &a.1, &b.1);
            assert_close(&format!("bn gamma gradient (silu {with_silu})"), c, &a.2, &b.2);
            assert_close(&format!("bn beta gradient (silu {with_silu})"), c, &a.3, &b.3);
            assert_close("running mean", c, &a.4, &b.4);
            assert_close("running variance", c, &a.5, &b.5);
        }
    }
}

#[test]
fn inference_batch_norm_and_fused_conv_bias_silu_match_burn() {
    let device = burn::tensor::Device::flex();
    for &shape in NORM_SHAPES {
        let bn = batch_norm(shape[1], &device);
        let x = tensor4(shape, 31, &device).mul_scalar(3.0);
        let ours = vec(kernels::batch_norm_act(&bn, x.clone(), true));
        let reference = vec(burn::tensor::activation::silu(bn.forward(x)));
        let c = case(shape[0], shape[1], shape[2], shape[3], 0, 0, 0, 0);
        assert_close("inference bn+silu", c, &ours, &reference);
    }
    for &c in CASES {
        let mut layer = Conv2dConfig::new([c.ci, c.co], [c.k, c.k])
            .with_stride([c.stride; 2])
            .with_padding(PaddingConfig2d::Explicit(c.pad, c.pad, c.pad, c.pad))
            .with_dilation([c.dilation; 2])
            .with_groups(c.groups)
            .with_bias(true)
            .init(&device);
        let wshape = layer.weight.dims();
        layer.weight = burn::module::Param::from_tensor(tensor4(wshape, 41, &device));
        let x = tensor4([c.n, c.ci, c.h, c.w], 42, &device);
        for with_silu in [true, false] {
            let ours = vec(kernels::conv2d_layer_act(&layer, x.clone(), with_silu));
            let y = layer.forward(x.clone());
            let reference = vec(if with_silu { burn::tensor::activation::silu(y) } else { y });
            assert_close(&format!("conv+bias (silu {with_silu})"), c, &ours, &reference);
        }
    }
}

/// A folded 1×1 convolution of concatenated maps, run on the parts in place
/// (`kernels::conv2d_cat_layer_act`), equals burn's convolution of `Tensor::cat`: two to four
/// parts, one image (tiles of rows) and nine small ones (two images per GEMM), a part that is a
/// channel slice of another map (C2f's), parts still to be upsampled (the neck's), first or alone,
/// with and without SiLU. Under autodiff it declines.
#[test]
fn pointwise_conv_of_parts_is_burns_conv_of_their_concatenation() {
    use burn::tensor::module::interpolate;
    use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
    let device = burn::tensor::Device::flex();
    let upsampled = |x: Tensor<4>, s: usize| {
        let [_, _, h, w] = x.dims();
        interpolate(x, InterpolateOptions::new(InterpolateMode::Nearest).with_output_size([h * s, w * s]))
    };
    // (images, height, width, (channels, scale) of each part)
    let cases: [(usize, usize, usize, &[(usize, usize)]); 6] = [
        (1, 40, 24, &[(16, 1), (8, 1)]),
        (9, 5, 7, &[(6, 1), (3, 1), (5, 1), (2, 1)]),
        (2, 9, 11, &[(4, 1), (12, 1), (7, 1)]),
        (1, 40, 24, &[(12, 2), (16, 1)]),
        (9, 6, 8, &[(5, 2), (3, 1)]),
        (2, 12, 8, &[(6, 4), (5, 2)]),
    ];
    for (n, h, w, spec) in cases {
        let ci: usize = spec.iter().map(|p| p.0).sum();
        let co = 10;
        let mut layer = Conv2dConfig::new([ci, co], [1, 1]).with_bias(true).init(&device);
        layer.weight = burn::module::Param::from_tensor(tensor4([co, ci, 1, 1], 51, &device));
        let parts: Vec<(Tensor<4>, usize)> = spec
            .iter()
            .enumerate()
            .map(|(i, &(c, s))| {
                let shape = [n, c, h / s, w / s];
                // the last full-size part is the second half of a wider map, as C2f's bottlenecks read theirs
                let x = if i + 1 == spec.len() && s == 1 { tensor4([n, 2 * c, h, w], 52, &device).narrow(1, c, c) } else { tensor4(shape, 53 + i as u64, &device) };
                (x, s)
            })
            .collect();
        let c = case(n, ci, h, w, co, 1, 1, 0);
        for with_silu in [true, false] {
            let ours = two_threads(|| kernels::conv2d_cat_layer_act(&layer, &parts, with_silu)).expect("a 1×1 convolution inferring on the CPU");
            let y = layer.forward(Tensor::cat(parts.iter().map(|(x, s)| upsampled(x.clone(), *s)).collect(), 1));
            let reference = vec(if with_silu { burn::tensor::activation::silu(y) } else { y });
            assert_close(&format!("1×1 convolution of {spec:?} (silu {with_silu})"), c, &vec(ours), &reference);
        }
        let autodiff = burn::tensor::Device::flex().autodiff();
        let parts: Vec<(Tensor<4>, usize)> = parts.iter().map(|(p, s)| (Tensor::from_data(p.to_data(), &autodiff), *s)).collect();
        assert!(kernels::conv2d_cat_layer_act(&layer.clone().to_device(&autodiff), &parts, true).is_none(), "ran under autodiff");
    }
}

#[test]
fn cwd_matches_burns_composed_loss_and_both_gradients() {
    use burn::tensor::activation::log_softmax;
    let device = burn::tensor::Device::flex().autodiff();
    for &(shape, tau) in &[([2, 3, 5, 7], 1.0f32), ([3, 4, 6, 6], 4.0), ([1, 2, 1, 9], 0.5)] {
        let run = |ours: bool| {
            let s = tensor4(shape, 51, &device).mul_scalar(3.0).require_grad();
            let t = tensor4(shape, 52, &device).mul_scalar(3.0).require_grad();
            let loss = if ours {
                kernels::cwd(s.clone(), t.clone(), tau).expect("flex f32 takes our kernel")
            } else {
                let [n, c, h, w] = shape;
                let ls = log_softmax(s.clone().reshape([n * c, h * w]) / tau, 1);
                let lt = log_softmax(t.clone().reshape([n * c, h * w]) / tau, 1);
                (lt.clone().exp() * (lt - ls)).sum() * (tau * tau / (n * c) as f32)
            };
            let grads = (loss.clone() * 1.5).backward();
            let v = loss.inner().into_data().try_to_vec::<f32>().unwrap();
            (v, vec(s.grad(&grads).unwrap()), vec(t.grad(&grads).unwrap()))
        };
        let (a, b) = (two_threads(|| run(true)), run(false));
        let c = case(shape[0], shape[1], shape[2], shape[3], 0, 0, 0, 0);
        assert_close(&format!("cwd loss (tau {tau})"), c, &a.0, &b.0);
        assert_close(&format!("cwd student gradient (tau {tau})"), c, &a.1, &b.1);
        assert_close(&format!("cwd teacher gradient (tau {tau})"), c, &a.2, &b.2);
    }
}

/// DFL expectation `[b, 4·bins, a]` → `[b, 4, a]` by burn's tensor ops: softmax over the bins, then
/// their mean index.
fn dfl_by_tensor_ops(boxes: Tensor<3>, bins: usize) -> Tensor<3> {
    let [b, _, a] = boxes.dims();
    let p = burn::tensor::activation::softmax(boxes.reshape([b, 4, bins, a]), 2);
    let proj = Tensor::<4>::from_data(TensorData::new((0..bins).map(|i| i as f32).collect::<Vec<_>>(), [1, 1, bins, 1]), &p.device());
    (p * proj).sum_dim(2).reshape([b, 4, a])
}

#[test]
fn max_pooling_and_head_decoding_match_burn() {
    use burn::tensor::activation::sigmoid;
    use burn::tensor::ops::MaxPoolOptions;
    let device = burn::tensor::Device::flex();
    // SPPF's chain: each pooling of the previous one's result, the results side by side along
    // the channels; 1200 planes of 20×20 take several tasks, whose planes straddle images
    for (shape, k, n) in [([1, 3, 7, 5], 5, 3), ([2, 600, 20, 20], 5, 3), ([1, 2, 1, 9], 3, 2), ([1, 1, 6, 6], 9, 1), ([3, 5, 4, 6], 3, 4)] {
        let x = tensor4(shape, 61, &device).mul_scalar(4.0);
        let ours = vec(two_threads(|| kernels::max_pool_chain(x.clone(), k, n).expect("flex f32 without autodiff, odd k")));
        let opts = MaxPoolOptions::new([k, k]).with_stride([1, 1]).with_padding([k / 2, k / 2]);
        let mut pooled = vec![burn::tensor::module::max_pool2d(x, opts.clone())];
        for _ in 1..n {
            pooled.push(burn::tensor::module::max_pool2d(pooled.last().unwrap().clone(), opts.clone()));
        }
        let reference = vec(Tensor::cat(pooled, 1));
        assert_eq!(ours, reference, "{n} max pools {k}x{k} of {shape:?}");
    }
    let x = tensor4([1, 2, 5, 5], 61, &device);
    assert!(kernels::max_pool_chain(x, 4, 1).is_none(), "an even k grows the map: burn's op");
    let c = case(1, 0, 0, 0, 0, 0, 0, 0);
    let v3 = |t: Tensor<3>| t.into_data().try_to_vec::<f32>().unwrap();
    // the decoded output against the head's tensor ops: two levels' anchors, 16 bins and one
    // (distances as they are), xywh and xyxy
    let (points, strides) = yolodistill::model::layers::head::anchor_points(&[(3, 4), (2, 2)], &[8.0, 16.0]);
    let a = points.len();
    let (anc, st) = yolodistill::model::layers::head::anchor_tensors(&[(3, 4), (2, 2)], &[8.0, 16.0], &device);
    for (b, bins, nc, xywh) in [(2, 16, 3, true), (1, 16, 5, false), (2, 1, 2, true)] {
        let boxes = Tensor::<3>::from_data(TensorData::new(noise(b * 4 * bins * a, 64), [b, 4 * bins, a]), &device).mul_scalar(8.0);
        let scores = Tensor::<3>::from_data(TensorData::new(noise(b * nc * a, 65), [b, nc, a]), &device).mul_scalar(20.0);
        let ours = kernels::decode_head(&boxes, &scores, bins, (&points, &strides), xywh).expect("flex f32 without autodiff takes our kernel");
        let d = if bins == 1 { boxes.clone() } else { dfl_by_tensor_ops(boxes.clone(), bins) };
        let (x1y1, x2y2) = (anc.clone() - d.clone().narrow(1, 0, 2), anc.clone() + d.narrow(1, 2, 2));
        let xyxy = if xywh { Tensor::cat(vec![(x1y1.clone() + x2y2.clone()).div_scalar(2.0), x2y2 - x1y1], 1) } else { Tensor::cat(vec![x1y1, x2y2], 1) };
        let reference = Tensor::cat(vec![xyxy * st.clone(), sigmoid(scores)], 1);
        assert_eq!(ours.dims(), [b, 4 + nc, a]);
        assert_close(&format!("decode (b {b}, bins {bins}, nc {nc}, xywh {xywh})"), c, &v3(ours), &v3(reference));
    }
    for (b, bins, a) in [(1, 16, 37), (2, 4, 5)] {
        let boxes = Tensor::<3>::from_data(TensorData::new(noise(b * 4 * bins * a, 63), [b, 4 * bins, a]), &device).mul_scalar(8.0);
        let ours = kernels::dfl(boxes.clone(), bins).expect("flex f32 without autodiff takes our kernel");
        let reference = dfl_by_tensor_ops(boxes, bins);
        assert_close(&format!("dfl ({b}, {bins}, {a})"), c, &v3(ours), &v3(reference));
    }
}

/// `bench-conv` records every convolution of an inference forward, which runs on a worker of
/// rayon's pool (`kernels::on_pool`), as it does where the forward runs on the calling thread
/// (autodiff).
#[test]
fn recording_sees_every_convolution_of_a_forward_on_the_pool() {
    let count = |device: &burn::tensor::Device| {
        let m = yolodistill::model::load("yolov8n.yaml", None, device).expect("built-in model").model;
        let x = Tensor::<4>::random([1, 3, 64, 64], Distribution::Uniform(0.0, 1.0), device);
        kernels::record_convs(|| m.forward(x)).1.len()
    };
    let (on_pool, here) = (count(&burn::tensor::Device::flex()), count(&burn::tensor::Device::flex().autodiff()));
    assert!(on_pool > 0 && on_pool == here, "{on_pool} convolutions recorded on the pool, {here} on the calling thread");
}
