//! Distillation losses as pure tensor functions (reference:
//! `../shared/reference/distillation.md`, §2–§6).
//!
//! Conventions:
//! - Feature maps are NCHW `Tensor<4>`, paired level by level (`s[l]` with
//!   `t[l]`); functions over several levels take slices of equal length.
//! - Everything is computed in f32 (the device default), whatever precision
//!   the models run in: softmax/KL overflow in half precision.
//! - Student inputs carry the gradient; teacher inputs are constants: every
//!   function `.detach()`es them, so a teacher forward done on an autodiff
//!   device never receives gradients through a distillation loss.
//! - Each loss returns a scalar `Tensor<1>` of shape `[1]` and is *not*
//!   multiplied by any schedule weight; callers apply [`cosine_epoch_weight`]
//!   and friends.

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::PaddingConfig2d;
use burn::tensor::activation::{log_sigmoid, log_softmax, relu, sigmoid, softmax};
use burn::tensor::{Device, Tensor, TensorData};

use crate::kernels::conv2d_layer;
use crate::model::walk::walk_fields;

/// Seed default of the MGD loss weight `α_mgd`.
pub const MGD_ALPHA: f32 = 2e-5;
/// Seed default of the MGD masking ratio `λ_mgd` (a pixel is dropped with this probability).
pub const MGD_LAMBDA: f32 = 0.65;
/// Seed default of the logit-MSE weight `α`.
pub const LOGIT_MSE_ALPHA: f32 = 0.25;
/// Epsilon of the affine-free BatchNorm of the seed pipeline.
pub const NORM_EPS: f32 = 1e-5;
/// Floor of the seed's per-epoch cosine weight (reached at the end of an epoch).
pub const COSINE_FLOOR: f32 = 0.1;

// ---------------------------------------------------------------------------
// Level helpers

/// Applies `f(student, detached teacher)` to every paired level and sums.
fn sum_levels<const D: usize>(
    s: &[Tensor<D>],
    t: &[Tensor<D>],
    f: impl Fn(Tensor<D>, Tensor<D>) -> Tensor<1>,
) -> Tensor<1> {
    assert!(!s.is_empty(), "distillation loss needs at least one level");
    assert_eq!(s.len(), t.len(), "student and teacher have different numbers of levels");
    s.iter()
        .zip(t)
        .map(|(a, b)| f(a.clone(), b.clone().detach()))
        .reduce(|a, b| a + b)
        .expect("non-empty")
}

/// Like [`sum_levels`] but the mean over levels.
fn mean_levels<const D: usize>(
    s: &[Tensor<D>],
    t: &[Tensor<D>],
    f: impl Fn(Tensor<D>, Tensor<D>) -> Tensor<1>,
) -> Tensor<1> {
    let n = s.len() as f32;
    sum_levels(s, t, f) / n
}

fn assert_same_shape<const D: usize>(s: &Tensor<D>, t: &Tensor<D>, what: &str) {
    assert_eq!(s.dims(), t.dims(), "{what}: student and teacher shapes differ (apply the adapter first)");
}

/// Mean squared error of two equally shaped tensors.
fn mse<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> Tensor<1> {
    (a - b).square().mean()
}

/// Rows L2-normalised (norm clamped at 1e-12, as `F.normalize`).
fn l2_normalise_rows(x: Tensor<2>) -> Tensor<2> {
    let norm = x.clone().square().sum_dim(1).sqrt().clamp_min(1e-12);
    x / norm
}

/// A convolution with the given weight `[out, in, kh, kw]`, bias `[out]`,
/// stride 1 and symmetric `padding`.
fn conv_from_weights(weight: Tensor<4>, bias: Tensor<1>, padding: usize) -> Conv2d {
    let [o, i, kh, kw] = weight.dims();
    assert_eq!(bias.dims(), [o], "bias length must equal the output channels");
    let mut conv = Conv2dConfig::new([i, o], [kh, kw])
        .with_padding(PaddingConfig2d::Explicit(padding, padding, padding, padding))
        .init(&weight.device());
    conv.weight = Param::from_tensor(weight);
    conv.bias = Some(Param::from_tensor(bias));
    conv
}

fn conv_config(c_in: usize, c_out: usize, k: usize) -> Conv2dConfig {
    let p = k / 2;
    Conv2dConfig::new([c_in, c_out], [k, k]).with_padding(PaddingConfig2d::Explicit(p, p, p, p))
}

// ---------------------------------------------------------------------------
// §1 Seed pipeline: adapter + affine-free BatchNorm

/// Channel adapter of the seed: a 1×1 convolution with bias mapping student
/// channels to teacher channels. A trainable distiller parameter.
#[derive(Module, Debug)]
pub struct Adapter {
    pub conv: Conv2d,
}
walk_fields!(Adapter: conv);

impl Adapter {
    /// Randomly initialised adapter `c_student → c_teacher`.
    pub fn new(c_student: usize, c_teacher: usize, device: &Device) -> Self {
        Self { conv: conv_config(c_student, c_teacher, 1).init(device) }
    }

    /// Adapter with explicit weight `[Ct, Cs, 1, 1]` and bias `[Ct]`.
    pub fn from_weights(weight: Tensor<4>, bias: Tensor<1>) -> Self {
        assert_eq!(&weight.dims()[2..], &[1, 1], "adapter is a 1×1 convolution");
        Self { conv: conv_from_weights(weight, bias, 0) }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        conv2d_layer(&self.conv, x)
    }
}

/// Affine-free BatchNorm in training mode: per channel, subtract the batch
/// mean and divide by `sqrt(var + 1e-5)` with the biased batch variance
/// (statistics over N, H, W). Differentiable through the statistics, as
/// PyTorch's training-mode BatchNorm.
pub fn seed_normalise(x: Tensor<4>) -> Tensor<4> {
    crate::kernels::normalise_batch(x, NORM_EPS as f64)
}

/// The seed's feature pipeline for one level: the student map goes through
/// the adapter (when channels differ) and both maps are normalised
/// separately with [`seed_normalise`]. Returns `(student, teacher)` ready for
/// [`mimic`] / [`cwd`]; the teacher output is detached. The distiller runs
/// its mimic and cwd terms through this.
pub fn seed_pipeline(s: Tensor<4>, t: Tensor<4>, adapter: Option<&Adapter>) -> (Tensor<4>, Tensor<4>) {
    let s = match adapter {
        Some(a) => a.forward(s),
        None => s,
    };
    assert_same_shape(&s, &t, "seed pipeline");
    (seed_normalise(s), seed_normalise(t.detach()))
}

// ---------------------------------------------------------------------------
// §2 Feature losses (seed)

/// Mimic loss: `Σ_l mean((s_l − t_l)²)`.
pub fn mimic(s: &[Tensor<4>], t: &[Tensor<4>]) -> Tensor<1> {
    sum_levels(s, t, |s, t| {
        assert_same_shape(&s, &t, "mimic");
        mse(s, t)
    })
}

/// Channel-wise distillation of one level: per (n, c) row a softmax over the
/// H·W positions at temperature `tau`,
/// `τ² · Σ_{n,c} KL(p_t ‖ p_s) / (N·C)`.
pub fn cwd_level(s: Tensor<4>, t: Tensor<4>, tau: f32) -> Tensor<1> {
    assert_same_shape(&s, &t, "cwd");
    if let Some(loss) = crate::kernels::cwd(s.clone(), t.clone().detach(), tau) {
        return loss;
    }
    let [n, c, h, w] = s.dims();
    let ls = log_softmax(s.reshape([n * c, h * w]) / tau, 1);
    let lt = log_softmax(t.detach().reshape([n * c, h * w]) / tau, 1);
    (lt.clone().exp() * (lt - ls)).sum() * (tau * tau / (n * c) as f32)
}

/// CWD (Shu et al. 2021) summed over levels; `tau` defaults to 1 in the seed.
pub fn cwd(s: &[Tensor<4>], t: &[Tensor<4>], tau: f32) -> Tensor<1> {
    sum_levels(s, t, |s, t| cwd_level(s, t, tau))
}

/// MGD generation block of one level: `Conv3×3(C→C) → ReLU → Conv3×3(C→C)`,
/// padding 1, with bias (C = teacher channels). A trainable distiller
/// parameter (registered, optimised and saved with the distiller, unlike the
/// seed's plain-list blocks).
#[derive(Module, Debug)]
pub struct MgdGenerator {
    pub conv1: Conv2d,
    pub conv2: Conv2d,
}
walk_fields!(MgdGenerator: conv1, conv2);

impl MgdGenerator {
    /// Randomly initialised block for `channels` channels.
    pub fn new(channels: usize, device: &Device) -> Self {
        Self { conv1: conv_config(channels, channels, 3).init(device), conv2: conv_config(channels, channels, 3).init(device) }
    }

    /// Block with explicit weights `[C, C, 3, 3]` and biases `[C]`.
    pub fn from_weights(w1: Tensor<4>, b1: Tensor<1>, w2: Tensor<4>, b2: Tensor<1>) -> Self {
        Self { conv1: conv_from_weights(w1, b1, 1), conv2: conv_from_weights(w2, b2, 1) }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        conv2d_layer(&self.conv2, relu(conv2d_layer(&self.conv1, x)))
    }
}

/// A random MGD keep mask `[n, 1, h, w]`: each pixel is 1 (kept) with
/// probability `1 − λ` and 0 otherwise. The draw is a function of `key` (the
/// distiller uses seed, epoch, batch and level), not of the backend's shared
/// generator, so a resumed run and concurrent runs mask reproducibly.
pub fn random_keep_mask(n: usize, h: usize, w: usize, lambda: f32, key: [u64; 4], device: &Device) -> Tensor<4> {
    use rand::{Rng, SeedableRng};
    assert!((0.0..=1.0).contains(&lambda), "λ_mgd must lie in [0, 1]");
    let mut rng = rand::rngs::StdRng::seed_from_u64(crate::data::loader::derive_seed(&key));
    let keep = 1.0 - lambda as f64;
    let v: Vec<f32> = (0..n * h * w).map(|_| if rng.random_bool(keep) { 1.0 } else { 0.0 }).collect();
    Tensor::from_data(TensorData::new(v, [n, 1, h, w]), device)
}

/// Masked generative distillation of one level (Yang et al. 2022):
/// `α · Σ (G(s ⊙ M) − t)² / N`, the sum over all elements. `keep_mask` is
/// `[N, 1, H, W]` with 1 where a pixel is kept (see [`random_keep_mask`]);
/// `s` must already have the teacher's channel count.
pub fn mgd_level(s: Tensor<4>, t: Tensor<4>, keep_mask: Tensor<4>, gen: &MgdGenerator, alpha: f32) -> Tensor<1> {
    assert_same_shape(&s, &t, "mgd");
    let [n, _, h, w] = s.dims();
    assert_eq!(keep_mask.dims(), [n, 1, h, w], "mgd: keep mask must be [N, 1, H, W]");
    let generated = gen.forward(s * keep_mask.detach());
    (generated - t.detach()).square().sum() * (alpha / n as f32)
}

/// MGD summed over levels, one mask and one generation block per level.
pub fn mgd(s: &[Tensor<4>], t: &[Tensor<4>], keep_masks: &[Tensor<4>], gens: &[MgdGenerator], alpha: f32) -> Tensor<1> {
    assert_eq!(keep_masks.len(), s.len(), "mgd: one keep mask per level");
    assert_eq!(gens.len(), s.len(), "mgd: one generation block per level");
    assert!(!s.is_empty() && s.len() == t.len(), "mgd: paired, non-empty levels");
    (0..s.len())
        .map(|l| mgd_level(s[l].clone(), t[l].clone(), keep_masks[l].clone(), &gens[l], alpha))
        .reduce(|a, b| a + b)
        .expect("non-empty")
}

// ---------------------------------------------------------------------------
// §3 Response (logit) losses

/// Seed logit MSE over the raw head maps of each level (box-distribution and
/// class channels together): `α · Σ_l mean((z_s − z_t)²)`, `α` = 0.25 by default.
/// Needs matching head shapes (same nc and reg_max).
pub fn logit_mse(s: &[Tensor<4>], t: &[Tensor<4>], alpha: f32) -> Tensor<1> {
    mimic(s, t) * alpha
}

/// Hinton KD on rows of logits `[rows, classes]`: softmax over the last dim,
/// `T² · mean_rows KL(softmax(z_t/T) ‖ softmax(z_s/T))`.
///
/// This is the softmax form; for YOLO's independent-sigmoid class scores it
/// is applied per anchor on the class logits (rows = anchors), or use
/// [`kd_binary`].
pub fn kd_kl(s: Tensor<2>, t: Tensor<2>, temperature: f32) -> Tensor<1> {
    assert_same_shape(&s, &t, "kd_kl");
    let rows = s.dims()[0];
    let ls = log_softmax(s / temperature, 1);
    let lt = log_softmax(t.detach() / temperature, 1);
    (lt.clone().exp() * (lt - ls)).sum() * (temperature * temperature / rows as f32)
}

/// Binary form of KD for independent sigmoid scores (any shape, mean over
/// all elements): `T² · mean BCE(σ(z_s/T), σ(z_t/T))`
/// `= −T² · mean[σ(z_t/T)·log σ(z_s/T) + (1 − σ(z_t/T))·log σ(−z_s/T)]`.
/// As specified this is the cross-entropy, so it is not zero when `s = t`
/// (it equals the teacher's entropy); its gradient is zero there.
pub fn kd_binary<const D: usize>(s: Tensor<D>, t: Tensor<D>, temperature: f32) -> Tensor<1> {
    assert_same_shape(&s, &t, "kd_binary");
    let s = s / temperature;
    let pt = sigmoid(t.detach() / temperature);
    let ce = pt.clone() * log_sigmoid(s.clone()) + (pt.neg() + 1.0) * log_sigmoid(s.neg());
    ce.mean().neg() * (temperature * temperature)
}

/// Seed's mixed soft/hard target: `q = α·softmax(z_t/T) + (1 − α)·onehot(y)`,
/// `loss = −T² · mean_rows Σ q · log softmax(z_s/T)`. `labels[r]` is the class
/// of row `r` (for detection: the student assigner's target class).
pub fn kd_mixed(s: Tensor<2>, t: Tensor<2>, labels: &[usize], alpha: f32, temperature: f32) -> Tensor<1> {
    assert_same_shape(&s, &t, "kd_mixed");
    let [rows, classes] = s.dims();
    assert_eq!(labels.len(), rows, "kd_mixed: one label per row");
    let mut onehot = vec![0f32; rows * classes];
    for (r, &y) in labels.iter().enumerate() {
        assert!(y < classes, "kd_mixed: label {y} out of range (classes {classes})");
        onehot[r * classes + y] = 1.0;
    }
    let onehot = Tensor::<2>::from_data(TensorData::new(onehot, [rows, classes]), &s.device());
    let q = softmax(t.detach() / temperature, 1) * alpha + onehot * (1.0 - alpha);
    (q * log_softmax(s / temperature, 1)).sum() * (-temperature * temperature / rows as f32)
}

/// Localisation distillation (LD, Zheng et al. 2022) on DFL box logits
/// `[N, 4·reg_max, A]` (the layout of the head's box branch: 4 sides × bins).
///
/// Per anchor and side, `KL(softmax(t/T) ‖ softmax(s/T))` over the `reg_max`
/// bins; the 4 sides are averaged; anchors are combined by the weighted mean
/// with `weights` `[N, A]` (a 0/1 mask of positives from the teacher or the
/// assigner, or teacher scores): `T² · Σ_a w_a·KL_a / max(Σ w, 1e-9)`
/// (so all-zero weights give 0). Weights are constants. Not applicable to
/// reg_max = 1 heads (panics).
pub fn localisation_kl(
    s_box_logits: Tensor<3>,
    t_box_logits: Tensor<3>,
    reg_max: usize,
    temperature: f32,
    weights: Tensor<2>,
) -> Tensor<1> {
    assert!(reg_max > 1, "localisation distillation needs a DFL head (reg_max > 1)");
    assert_same_shape(&s_box_logits, &t_box_logits, "localisation_kl");
    let [n, ch, a] = s_box_logits.dims();
    assert_eq!(ch, 4 * reg_max, "localisation_kl: box channels must be 4·reg_max");
    assert_eq!(weights.dims(), [n, a], "localisation_kl: weights must be [N, A]");
    let ls = log_softmax(s_box_logits.reshape([n, 4, reg_max, a]) / temperature, 2);
    let lt = log_softmax(t_box_logits.detach().reshape([n, 4, reg_max, a]) / temperature, 2);
    let kl = (lt.clone().exp() * (lt - ls)).sum_dim(2).mean_dim(1).reshape([n, a]);
    let w = weights.detach();
    (kl * w.clone()).sum() * (temperature * temperature) / w.sum().clamp_min(1e-9)
}

/// The binary KL from the teacher's class probabilities to the student's, per anchor and
/// class, from logits already divided by the temperature.
fn binary_kl(st: Tensor<3>, tl: Tensor<3>) -> Tensor<3> {
    let p = sigmoid(tl.clone());
    p.clone() * (log_sigmoid(tl.clone()) - log_sigmoid(st.clone())) + (p.neg() + 1.0) * (log_sigmoid(tl.neg()) - log_sigmoid(st.neg()))
}

/// Whether dense response distillation has a box term: both heads predict DFL distributions
/// (`reg_max` > 1 bins) of the same size, from `student` and `teacher` box channels.
pub fn dense_box_term(student: usize, teacher: usize, reg_max: usize) -> bool {
    reg_max > 1 && student == 4 * reg_max && teacher == student
}

/// Dense response targets on every anchor, made for unlabeled images (boxes `[N, 4·reg_max, A]`,
/// class logits `[N, nc, A]`). Class term: the binary KL from the teacher's class probabilities
/// to the student's, on every anchor and class (negatives included, as in the detection loss).
/// Box term (DFL heads of the same reg_max on both sides; 0 otherwise, e.g. YOLO26's reg_max 1
/// against a DFL teacher: the class term alone then): each side's bin-distribution KL, weighted by the
/// teacher's confidence (its highest class probability). Both are summed over the batch and
/// divided by the batch's total teacher confidence (at least 1), as the detection loss divides
/// by its target scores, so its gains apply to them. Returns (class, box); teacher tensors are
/// constants.
pub fn dense_response(
    s_boxes: Tensor<3>,
    s_scores: Tensor<3>,
    t_boxes: Tensor<3>,
    t_scores: Tensor<3>,
    reg_max: usize,
    temperature: f32,
) -> (Tensor<1>, Tensor<1>) {
    assert_same_shape(&s_scores, &t_scores, "dense response (scores)");
    let tt = temperature;
    let t_scores = t_scores.detach();
    let conf = sigmoid(t_scores.clone()).max_dim(1); // [N, 1, A]
    let norm = conf.clone().sum().clamp_min(1.0);
    let kl = binary_kl(s_scores / tt, t_scores / tt);
    // T²/norm rounded once, as the host scalar it was (no read-back for it)
    let scale = Tensor::<1>::full([1], tt * tt, &norm.device()) / norm;
    let cls = kl.sum() * scale.clone();
    let [n, ch, a] = s_boxes.dims();
    let boxes = if dense_box_term(ch, t_boxes.dims()[1], reg_max) {
        let ls = log_softmax(s_boxes.reshape([n, 4, reg_max, a]) / tt, 2);
        let lt = log_softmax(t_boxes.detach().reshape([n, 4, reg_max, a]) / tt, 2);
        let side = (lt.clone().exp() * (lt - ls)).sum_dim(2).mean_dim(1).reshape([n, 1, a]);
        (side * conf).sum() * scale
    } else {
        s_boxes.sum() * 0.0
    };
    (cls, boxes)
}

// ---------------------------------------------------------------------------
// §4 Other feature and relation losses

/// Spatial attention map of Zagoruyko & Komodakis: `mean_c(x²)` flattened
/// per sample and L2-normalised, `[N, H·W]`.
pub fn attention_map(x: Tensor<4>) -> Tensor<2> {
    let [n, _, h, w] = x.dims();
    l2_normalise_rows(x.square().mean_dim(1).reshape([n, h * w]))
}

/// Attention transfer: `mean_l mean((a(s_l) − a(t_l))²)`. Channel counts may differ.
pub fn attention_transfer(s: &[Tensor<4>], t: &[Tensor<4>]) -> Tensor<1> {
    mean_levels(s, t, |s, t| {
        let (sd, td) = (s.dims(), t.dims());
        assert!(sd[0] == td[0] && sd[2..] == td[2..], "attention transfer: N, H, W must match");
        mse(attention_map(s), attention_map(t))
    })
}

/// Gram matrices `X Xᵀ / (H·W)` per sample, `[N, C, C]`.
pub fn gram_matrix(x: Tensor<4>) -> Tensor<3> {
    let [n, c, h, w] = x.dims();
    let m = x.reshape([n, c, h * w]);
    m.clone().matmul(m.swap_dims(1, 2)) / (h * w) as f32
}

/// Gram-matrix loss: `mean_l MSE(G(s_l), G(t_l))`. Needs equal channels
/// (apply after the adapter).
pub fn gram(s: &[Tensor<4>], t: &[Tensor<4>]) -> Tensor<1> {
    mean_levels(s, t, |s, t| {
        assert_same_shape(&s, &t, "gram");
        mse(gram_matrix(s), gram_matrix(t))
    })
}

/// Batch similarity matrix: each sample flattened and L2-normalised,
/// `S = F Fᵀ` `[N, N]` (cosine similarities).
pub fn batch_similarity(x: Tensor<4>) -> Tensor<2> {
    let n = x.dims()[0];
    let f = l2_normalise_rows(x.reshape([n as i32, -1]));
    f.clone().matmul(f.transpose())
}

/// Batch relation (similarity-preserving KD): `mean_l MSE(S_s, S_t)`. Any
/// channel counts and spatial sizes; the batch size must match.
pub fn batch_relation(s: &[Tensor<4>], t: &[Tensor<4>]) -> Tensor<1> {
    mean_levels(s, t, |s, t| {
        assert_eq!(s.dims()[0], t.dims()[0], "batch relation: batch sizes differ");
        mse(batch_similarity(s), batch_similarity(t))
    })
}

// ---------------------------------------------------------------------------
// Methods from the field

/// Added to PKD's standard deviation (as its authors' code does).
pub const PKD_EPS: f32 = 1e-6;

/// PKD's standardisation: each channel to zero mean and unit standard deviation over the batch
/// and the positions, `(x − μ_c) / (σ_c + ε)` with the unbiased σ.
pub fn pearson_standardise(x: Tensor<4>) -> Tensor<4> {
    let [n, c, h, w] = x.dims();
    let count = (n * h * w) as f32;
    let rows = x.swap_dims(0, 1).reshape([c, n * h * w]);
    let centred = rows.clone() - rows.mean_dim(1);
    let sd = (centred.clone().square().sum_dim(1) / (count - 1.0).max(1.0)).sqrt();
    (centred / (sd + PKD_EPS)).reshape([c, n, h, w]).swap_dims(0, 1)
}

/// PKD (Cao et al., NeurIPS 2022) at one level: both maps standardised per channel, then
/// `MSE / 2`, which is 1 − the mean Pearson correlation of the channels: the scale and offset
/// of each channel, which differ between architectures, do not count. Needs equal channels
/// (apply the adapter first).
pub fn pkd_level(s: Tensor<4>, t: Tensor<4>) -> Tensor<1> {
    assert_same_shape(&s, &t, "pkd");
    mse(pearson_standardise(s), pearson_standardise(t.detach())) / 2.0
}

/// Boxes (x1, y1, x2, y2) around each anchor in grid units, from a head's box logits
/// `[N, 4·reg_max, A]` (DFL expectation; reg_max 1: the distances themselves) and the anchor
/// centres `[1, 2, A]`: each column `[N, 1, A]`.
pub fn grid_boxes(boxes: Tensor<3>, reg_max: usize, anchors: Tensor<3>) -> [Tensor<3>; 4] {
    let d = crate::model::layers::head::dfl_expectation(boxes, reg_max);
    let (cx, cy) = (anchors.clone().narrow(1, 0, 1), anchors.narrow(1, 1, 1));
    let side = |i: usize| d.clone().narrow(1, i, 1);
    [cx.clone() - side(0), cy.clone() - side(1), cx + side(2), cy + side(3)]
}

/// Generalised IoU of two box sets given as coordinate columns of one shape.
pub fn giou_columns<const D: usize>(b1: [Tensor<D>; 4], b2: [Tensor<D>; 4]) -> Tensor<D> {
    const EPS: f32 = 1e-7;
    let [p1, q1, p2, q2] = b1;
    let [t1, u1, t2, u2] = b2;
    let area = |x1: &Tensor<D>, y1: &Tensor<D>, x2: &Tensor<D>, y2: &Tensor<D>| (x2.clone() - x1.clone()).clamp_min(0.0) * (y2.clone() - y1.clone()).clamp_min(0.0);
    let iw = (p2.clone().min_pair(t2.clone()) - p1.clone().max_pair(t1.clone())).clamp_min(0.0);
    let ih = (q2.clone().min_pair(u2.clone()) - q1.clone().max_pair(u1.clone())).clamp_min(0.0);
    let inter = iw * ih;
    let union = area(&p1, &q1, &p2, &q2) + area(&t1, &u1, &t2, &u2) - inter.clone() + EPS;
    let hull = (p2.max_pair(t2) - p1.min_pair(t1)) * (q2.max_pair(u2) - q1.min_pair(u1)) + EPS;
    inter / union.clone() - (hull.clone() - union) / hull
}

/// BCKD (Yang et al., ICCV 2023) on every anchor, teacher tensors constant. With `p_s`, `p_t`
/// the class probabilities and `g = |p_t − p_s|` (a constant weight: where the two disagree):
/// class term `Σ g · BCE(p_s, p_t)` over anchors and classes (binary KD of each class);
/// box term `Σ_a max_c g · (1 − GIoU(b_s, b_t))` on the boxes each head decodes with its own
/// reg_max, so it also pairs a YOLO26 head with a DFL one. Both are divided by the batch's total
/// teacher confidence (its highest class probability per anchor, at least 1), as the detection
/// loss divides by its target scores. `anchors`: centres `[1, 2, A]` in grid units. Returns
/// (class, box).
#[allow(clippy::too_many_arguments)]
pub fn bckd(
    s_boxes: Tensor<3>,
    s_scores: Tensor<3>,
    s_reg_max: usize,
    t_boxes: Tensor<3>,
    t_scores: Tensor<3>,
    t_reg_max: usize,
    anchors: Tensor<3>,
) -> (Tensor<1>, Tensor<1>) {
    assert_same_shape(&s_scores, &t_scores, "bckd (scores)");
    let t_scores = t_scores.detach();
    let p_t = sigmoid(t_scores.clone());
    let gap = (p_t.clone() - sigmoid(s_scores.clone())).abs().detach();
    let norm = p_t.clone().max_dim(1).sum().clamp_min(1.0);
    let bce = (p_t.clone() * log_sigmoid(s_scores.clone()) + (p_t.neg() + 1.0) * log_sigmoid(s_scores.neg())).neg();
    let cls = (gap.clone() * bce).sum() / norm.clone();
    let s_box = grid_boxes(s_boxes, s_reg_max, anchors.clone());
    let t_box = grid_boxes(t_boxes.detach(), t_reg_max, anchors).map(|c| c.detach());
    let giou = giou_columns(s_box, t_box);
    let boxes = (gap.max_dim(1) * (giou.neg() + 1.0)).sum() / norm;
    (cls, boxes)
}

/// CrossKD (Wang et al., CVPR 2024): the cross-head predictions (the student's head features
/// through the teacher's later head layers: boxes `[N, 4·reg_max, A]` in the teacher's
/// reg_max, class logits `[N, nc, A]`) against the teacher's own. Class term: the binary KL at
/// temperature `T` on every anchor and class, times T²; box term: `Σ_a conf_a · (1 − GIoU)` of the
/// decoded boxes, `conf_a` the teacher's highest class probability. Both are divided by the
/// batch's total teacher confidence (at least 1). Teacher tensors are constants; the gradient
/// reaches the cross predictions (and through them the student). Returns (class, box).
pub fn crosskd(c_boxes: Tensor<3>, c_scores: Tensor<3>, t_boxes: Tensor<3>, t_scores: Tensor<3>, reg_max: usize, anchors: Tensor<3>, temperature: f32) -> (Tensor<1>, Tensor<1>) {
    assert_same_shape(&c_scores, &t_scores, "crosskd (scores)");
    assert_same_shape(&c_boxes, &t_boxes, "crosskd (boxes)");
    let t_scores = t_scores.detach();
    let conf = sigmoid(t_scores.clone()).max_dim(1); // [N, 1, A]
    let norm = conf.clone().sum().clamp_min(1.0);
    let tt = temperature;
    let cls = binary_kl(c_scores / tt, t_scores / tt).sum() * (tt * tt) / norm.clone();
    let giou = giou_columns(grid_boxes(c_boxes, reg_max, anchors.clone()), grid_boxes(t_boxes.detach(), reg_max, anchors));
    let boxes = (conf * (giou.neg() + 1.0)).sum() / norm;
    (cls, boxes)
}

// ---------------------------------------------------------------------------
// §6 Ultralytics 8.4 native method

/// Ultralytics' per-level projector: `Conv1×1(Cs→Ct) → ReLU → Conv1×1(Ct→Ct)`
/// (with biases). Trainable distiller parameter, dropped from the export.
#[derive(Module, Debug)]
pub struct Projector {
    pub conv1: Conv2d,
    pub conv2: Conv2d,
}
walk_fields!(Projector: conv1, conv2);

impl Projector {
    pub fn new(c_student: usize, c_teacher: usize, device: &Device) -> Self {
        Self { conv1: conv_config(c_student, c_teacher, 1).init(device), conv2: conv_config(c_teacher, c_teacher, 1).init(device) }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        conv2d_layer(&self.conv2, relu(conv2d_layer(&self.conv1, x)))
    }
}

/// Score-weighted L2 of one level: with `w[n, hw] = max_class σ(teacher class
/// logits)` (`teacher_cls_logits` `[N, nc, H·W]`),
/// `Σ (P(s) − t)² · w / (Σ w · C + 1e-9)`. `s_projected` is the student map
/// already through the [`Projector`]; the weights are constants.
pub fn score_weighted_l2(s_projected: Tensor<4>, t: Tensor<4>, teacher_cls_logits: Tensor<3>) -> Tensor<1> {
    assert_same_shape(&s_projected, &t, "score-weighted L2");
    let [n, c, h, w] = s_projected.dims();
    let [ln, _, la] = teacher_cls_logits.dims();
    assert!(ln == n && la == h * w, "score-weighted L2: class logits must be [N, nc, H·W]");
    let weight = sigmoid(teacher_cls_logits.detach()).max_dim(1); // [N, 1, HW]
    let sq = (s_projected - t.detach()).square().reshape([n, c, h * w]);
    (sq * weight.clone()).sum() / (weight.sum() * c as f32 + 1e-9)
}

// ---------------------------------------------------------------------------
// §5 Weight schedules

/// The seed's per-batch cosine weight at batch `i` of an epoch with `n`
/// batches: `((1 − cos(iπ/n)) / 2) · (0.1 − 1) + 1` — 1 at the start of each
/// epoch, decaying towards 0.1. `n = 0` gives 1.
pub fn cosine_epoch_weight(i: usize, n: usize) -> f32 {
    if n == 0 {
        return 1.0;
    }
    let x = i as f64 * std::f64::consts::PI / n as f64;
    (((1.0 - x.cos()) / 2.0) * (COSINE_FLOOR as f64 - 1.0) + 1.0) as f32
}

/// The weight a schedule gives the terms at batch `batch` of `batches` in epoch `epoch`, when
/// distillation stops after `stop_epoch` epochs: constant 1; the seed's per-epoch cosine; or
/// linear from 1 at the first batch to [`COSINE_FLOOR`] (0.1) at the stop.
pub fn schedule_weight(schedule: super::args::Schedule, epoch: usize, batch: usize, batches: usize, stop_epoch: usize) -> f32 {
    use super::args::Schedule;
    match schedule {
        Schedule::CosineEpoch => cosine_epoch_weight(batch, batches),
        Schedule::Linear => {
            let total = stop_epoch.max(1) * batches.max(1);
            linear_weight(epoch * batches + batch, total, 1.0, COSINE_FLOOR)
        }
        Schedule::Constant => 1.0,
    }
}

/// Linear decay over training: `start` at step 0, `end` at `total` (clamped
/// beyond). `total = 0` gives `start`.
pub fn linear_weight(step: usize, total: usize, start: f32, end: f32) -> f32 {
    if total == 0 {
        return start;
    }
    let p = (step as f64 / total as f64).min(1.0);
    (start as f64 + (end as f64 - start as f64) * p) as f32
}

/// "Stop distilling when mosaic closes": whether epoch `epoch` (0-based) of
/// `epochs` still distils when mosaic is switched off for the last
/// `close_mosaic` epochs.
pub fn distill_active(epoch: usize, epochs: usize, close_mosaic: usize) -> bool {
    epoch + close_mosaic < epochs
}
