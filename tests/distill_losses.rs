//! Distillation-loss parity with the reference values of
//! `../shared/fixtures/distill_losses.safetensors` and, for the response losses it lacks (binary
//! KD, LD, dense), of `tests/data/distill_extra.safetensors`; the schedules; gradient flow into
//! the trainable distiller parts; properties of the losses.

mod common;

use burn::tensor::{Device, Distribution, Tensor, TensorData};
use yolodistill::distill::losses::*;
use yolodistill::weights::st::read_tensors;
use yolodistill::weights::HostTensor;

const TOL: f32 = 1e-5;

struct Fixture {
    tensors: Vec<(String, HostTensor)>,
    device: Device,
}

impl Fixture {
    fn load(device: Device) -> Option<Self> {
        let shared = common::shared()?;
        let (tensors, _) = read_tensors(&shared.join("fixtures/distill_losses.safetensors")).unwrap();
        Some(Self { tensors, device })
    }

    fn host(&self, name: &str) -> &HostTensor {
        self.tensors.iter().find(|(n, _)| n == name).map(|(_, t)| t).unwrap_or_else(|| panic!("fixture lacks {name}"))
    }

    fn get<const D: usize>(&self, name: &str) -> Tensor<D> {
        let h = self.host(name);
        assert_eq!(h.shape.len(), D, "{name}: rank");
        Tensor::from_data(TensorData::new(h.data.clone(), h.shape.clone()), &self.device)
    }

    fn levels(&self, prefix: &str, n: usize) -> Vec<Tensor<4>> {
        (0..n).map(|l| self.get(&format!("{prefix}.{l}"))).collect()
    }

    fn value(&self, name: &str) -> f32 {
        let h = self.host(name);
        assert_eq!(h.data.len(), 1, "{name}: scalar");
        h.data[0]
    }

    /// Asserts `got` matches the fixture scalar `name` within 1e-5 relative.
    fn check(&self, name: &str, got: Tensor<1>) {
        let got: f32 = got.into_scalar();
        let want = self.value(name);
        let rel = (got - want).abs() / want.abs();
        eprintln!("{name}: ours {got} reference {want} (rel {rel:.2e})");
        assert!(rel <= TOL, "{name}: {got} vs {want} (rel {rel:.2e})");
    }
}

fn plain() -> Device {
    yolodistill::default_device()
}

#[test]
fn mimic_matches_reference() {
    let Some(fx) = Fixture::load(plain()) else { return };
    fx.check("mimic", mimic(&fx.levels("feat.s", 3), &fx.levels("feat.t", 3)));
}

#[test]
fn cwd_matches_reference() {
    let Some(fx) = Fixture::load(plain()) else { return };
    let (s, t) = (fx.levels("feat.s", 3), fx.levels("feat.t", 3));
    fx.check("cwd.t1", cwd(&s, &t, 1.0));
    fx.check("cwd.t4", cwd(&s, &t, 4.0));
}

fn fixture_generators(fx: &Fixture) -> Vec<MgdGenerator> {
    (0..3)
        .map(|l| {
            MgdGenerator::from_weights(
                fx.get(&format!("mgd.w1.{l}")),
                fx.get(&format!("mgd.b1.{l}")),
                fx.get(&format!("mgd.w2.{l}")),
                fx.get(&format!("mgd.b2.{l}")),
            )
        })
        .collect()
}

#[test]
fn mgd_matches_reference() {
    let Some(fx) = Fixture::load(plain()) else { return };
    let gens = fixture_generators(&fx);
    let loss = mgd(&fx.levels("feat.s", 3), &fx.levels("feat.t", 3), &fx.levels("mgd.keep", 3), &gens, MGD_ALPHA);
    fx.check("mgd", loss);
}

fn fixture_adapters(fx: &Fixture) -> Vec<Adapter> {
    (0..3)
        .map(|l| Adapter::from_weights(fx.get(&format!("pipe.adapter_w.{l}")), fx.get(&format!("pipe.adapter_b.{l}"))))
        .collect()
}

fn pipeline(fx: &Fixture, adapters: &[Adapter]) -> (Vec<Tensor<4>>, Vec<Tensor<4>>) {
    let s = fx.levels("feat.s", 3);
    let t = fx.levels("pipe.t", 3);
    (0..3).map(|l| seed_pipeline(s[l].clone(), t[l].clone(), Some(&adapters[l]))).unzip()
}

#[test]
fn seed_pipeline_matches_reference() {
    let Some(fx) = Fixture::load(plain()) else { return };
    let (s, t) = pipeline(&fx, &fixture_adapters(&fx));
    fx.check("pipe.mimic", mimic(&s, &t));
    fx.check("pipe.cwd.t1", cwd(&s, &t, 1.0));
}

#[test]
fn seed_normalise_standardises_channels() {
    let x = Tensor::<4>::random([3, 4, 5, 5], Distribution::Normal(2.0, 3.0), &plain());
    let y = seed_normalise(x);
    let m = y.clone().mean_dim(0).mean_dim(2).mean_dim(3).try_into_vec_as::<f32>().unwrap();
    let v = y.square().mean_dim(0).mean_dim(2).mean_dim(3).try_into_vec_as::<f32>().unwrap();
    for (m, v) in m.iter().zip(&v) {
        assert!(m.abs() < 1e-5, "mean {m}");
        assert!((v - 1.0).abs() < 1e-3, "var {v}");
    }
}

#[test]
fn logit_mse_matches_reference() {
    let Some(fx) = Fixture::load(plain()) else { return };
    fx.check("logit_mse", logit_mse(&fx.levels("logit.s", 2), &fx.levels("logit.t", 2), LOGIT_MSE_ALPHA));
}

#[test]
fn kd_kl_matches_reference() {
    let Some(fx) = Fixture::load(plain()) else { return };
    fx.check("kd_kl.t1", kd_kl(fx.get("kd.s"), fx.get("kd.t"), 1.0));
    fx.check("kd_kl.t4", kd_kl(fx.get("kd.s"), fx.get("kd.t"), 4.0));
}

#[test]
fn kd_mixed_matches_reference() {
    let Some(fx) = Fixture::load(plain()) else { return };
    let labels: Vec<usize> = fx.host("kd.y").data.iter().map(|&v| v as usize).collect();
    fx.check("kd_mixed.a0.7.t4", kd_mixed(fx.get("kd.s"), fx.get("kd.t"), &labels, 0.7, 4.0));
}

#[test]
fn attention_transfer_matches_reference() {
    let Some(fx) = Fixture::load(plain()) else { return };
    fx.check("at", attention_transfer(&fx.levels("feat.s", 3), &fx.levels("feat.t", 3)));
}

#[test]
fn gram_matches_reference() {
    let Some(fx) = Fixture::load(plain()) else { return };
    fx.check("gram", gram(&fx.levels("feat.s", 3), &fx.levels("feat.t", 3)));
}

#[test]
fn batch_relation_matches_reference() {
    let Some(fx) = Fixture::load(plain()) else { return };
    fx.check("relation", batch_relation(&fx.levels("rel.s", 2), &fx.levels("rel.t", 2)));
}

#[test]
fn score_weighted_l2_matches_reference() {
    // The fixture's `sl2.s` already has the teacher's channels: it is the
    // projected student map (no projector weights in the file).
    let Some(fx) = Fixture::load(plain()) else { return };
    fx.check("sl2", score_weighted_l2(fx.get("sl2.s"), fx.get("sl2.t"), fx.get("sl2.teacher_cls_logits")));
}

#[test]
fn cosine_schedule_matches_reference() {
    let Some(fx) = Fixture::load(plain()) else { return };
    let want = &fx.host("sched.cosine.n10").data;
    assert_eq!(want.len(), 10);
    for (i, &w) in want.iter().enumerate() {
        let got = cosine_epoch_weight(i, 10);
        let rel = (got - w).abs() / w.abs();
        assert!(rel <= TOL, "cosine weight {i}: {got} vs {w} (rel {rel:.2e})");
    }
}

#[test]
fn schedules_basic() {
    assert_eq!(cosine_epoch_weight(0, 7), 1.0);
    assert!((cosine_epoch_weight(7, 7) - COSINE_FLOOR).abs() < 1e-6);
    assert_eq!(linear_weight(0, 10, 1.0, 0.0), 1.0);
    assert!((linear_weight(5, 10, 1.0, 0.0) - 0.5).abs() < 1e-6);
    assert_eq!(linear_weight(20, 10, 1.0, 0.0), 0.0);
    // the schedules the distiller runs: 3 epochs of 4 batches before the stop
    use yolodistill::distill::args::Schedule;
    let w = |s, epoch, batch| schedule_weight(s, epoch, batch, 4, 3);
    assert_eq!(w(Schedule::Linear, 0, 0), 1.0);
    assert!((w(Schedule::Linear, 1, 2) - (1.0 - 0.9 * 6.0 / 12.0)).abs() < 1e-6);
    assert!((w(Schedule::Linear, 3, 0) - COSINE_FLOOR).abs() < 1e-6, "linear ends at the floor 0.1, not 0");
    assert_eq!(w(Schedule::Constant, 2, 3), 1.0);
    assert_eq!(w(Schedule::CosineEpoch, 2, 0), 1.0);
    assert!((w(Schedule::CosineEpoch, 0, 2) - cosine_epoch_weight(2, 4)).abs() < 1e-9);
    assert!(distill_active(89, 100, 10));
    assert!(!distill_active(90, 100, 10));
}

#[test]
fn keep_mask_is_bernoulli_with_keep_probability_one_minus_lambda() {
    let mask = |key| random_keep_mask(4, 1, 64 * 64, MGD_LAMBDA, key, &plain()).try_into_vec_as::<f32>().unwrap();
    let m = random_keep_mask(4, 1, 64 * 64, MGD_LAMBDA, [0, 0, 0, 0], &plain());
    assert_eq!(m.dims(), [4, 1, 1, 4096]);
    let v = m.try_into_vec_as::<f32>().unwrap();
    assert!(v.iter().all(|&x| x == 0.0 || x == 1.0));
    let rate = v.iter().sum::<f32>() / v.len() as f32;
    assert!((rate - (1.0 - MGD_LAMBDA)).abs() < 0.03, "keep rate {rate}");
    // The same key gives the same mask; another step (or seed) another one.
    assert_eq!(v, mask([0, 0, 0, 0]));
    assert_ne!(v, mask([0, 0, 1, 0]));
    assert_ne!(v, mask([1, 0, 0, 0]));
}

fn grad_abs_sum<const D: usize>(t: &Tensor<D>, grads: &burn::tensor::Gradients) -> f32 {
    t.grad(grads).map(|g| g.abs().sum().into_scalar::<f32>()).unwrap_or(0.0)
}

#[test]
fn generators_adapters_and_projector_receive_gradients_teacher_does_not() {
    let Some(fx) = Fixture::load(Device::flex().autodiff()) else { return };
    let gens = fixture_generators(&fx);
    let adapters = fixture_adapters(&fx);
    let s: Vec<Tensor<4>> = fx.levels("feat.s", 3).into_iter().map(|t| t.require_grad()).collect();
    let t: Vec<Tensor<4>> = fx.levels("pipe.t", 3).into_iter().map(|t| t.require_grad()).collect();
    let keep = fx.levels("mgd.keep", 3);
    // MGD on the adapted student (teacher channels), as the pipeline would run it.
    let adapted: Vec<Tensor<4>> = (0..3).map(|l| adapters[l].forward(s[l].clone())).collect();
    let gens_t: Vec<MgdGenerator> = (0..3).map(|l| MgdGenerator::new(t[l].dims()[1], &fx.device)).collect();
    let loss_mgd = mgd(&adapted, &t, &keep, &gens_t, MGD_ALPHA);
    let (ps, pt) = (0..3).map(|l| seed_pipeline(s[l].clone(), t[l].clone(), Some(&adapters[l]))).unzip::<_, _, Vec<_>, Vec<_>>();
    let loss_pipe = mimic(&ps, &pt) + cwd(&ps, &pt, 1.0);
    // MGD on the fixture's own (equal-channel) features with the fixture generators.
    let ft = fx.levels("feat.t", 3);
    let loss_fx = mgd(&s, &ft, &keep, &gens, MGD_ALPHA);
    let proj = Projector::new(8, 8, &fx.device);
    let loss_sl2 = score_weighted_l2(proj.forward(fx.get::<4>("sl2.s")), fx.get("sl2.t"), fx.get("sl2.teacher_cls_logits"));
    let total = loss_mgd + loss_pipe + loss_fx + loss_sl2;
    assert!(total.clone().into_scalar::<f32>().is_finite());
    let grads = total.backward();
    for l in 0..3 {
        for (what, g) in [
            ("generator conv1 weight", grad_abs_sum(&gens_t[l].conv1.weight, &grads)),
            ("generator conv2 weight", grad_abs_sum(&gens_t[l].conv2.weight, &grads)),
            ("generator conv2 bias", grad_abs_sum(gens_t[l].conv2.bias.as_ref().unwrap(), &grads)),
            ("fixture generator conv1 weight", grad_abs_sum(&gens[l].conv1.weight, &grads)),
            ("fixture generator conv1 bias", grad_abs_sum(gens[l].conv1.bias.as_ref().unwrap(), &grads)),
            ("adapter weight", grad_abs_sum(&adapters[l].conv.weight, &grads)),
            ("adapter bias", grad_abs_sum(adapters[l].conv.bias.as_ref().unwrap(), &grads)),
            ("student features", grad_abs_sum(&s[l], &grads)),
        ] {
            assert!(g > 0.0 && g.is_finite(), "level {l}: {what} has gradient {g}");
        }
        assert!(t[l].grad(&grads).is_none(), "level {l}: the teacher must not receive gradients");
    }
    assert!(grad_abs_sum(&proj.conv1.weight, &grads) > 0.0, "projector conv1 has no gradient");
    assert!(grad_abs_sum(&proj.conv2.weight, &grads) > 0.0, "projector conv2 has no gradient");
}

#[test]
fn localisation_kl_properties() {
    let dev = Device::flex().autodiff();
    let (n, reg_max, a) = (2, 16, 10);
    let t = Tensor::<3>::random([n, 4 * reg_max, a], Distribution::Normal(0.0, 2.0), &dev);
    let s = Tensor::<3>::random([n, 4 * reg_max, a], Distribution::Normal(0.0, 2.0), &dev).require_grad();
    let mut w = vec![0f32; n * a];
    for i in [0, 3, 7, 12, 19] {
        w[i] = 1.0;
    }
    let w = Tensor::<2>::from_data(TensorData::new(w, [n, a]), &dev);
    // Zero when the distributions agree.
    let same: f32 = localisation_kl(t.clone(), t.clone(), reg_max, 2.0, w.clone()).into_scalar();
    assert!(same.abs() < 1e-5, "LD of identical logits: {same}");
    // Positive otherwise, and the gradient reaches the student logits of the weighted anchors only.
    let loss = localisation_kl(s.clone(), t.clone(), reg_max, 2.0, w.clone());
    assert!(loss.clone().into_scalar::<f32>() > 0.0);
    let grads = loss.backward();
    let g = s.grad(&grads).unwrap();
    assert!(g.clone().abs().sum().into_scalar::<f32>() > 0.0);
    let per_anchor = g.abs().sum_dim(1).reshape([n * a]).try_into_vec_as::<f32>().unwrap();
    for (i, v) in per_anchor.iter().enumerate() {
        let weighted = [0, 3, 7, 12, 19].contains(&i);
        assert_eq!(*v > 0.0, weighted, "anchor {i}: gradient {v}");
    }
    // All-zero weights give zero, not NaN.
    let zero: f32 = localisation_kl(s.clone(), t, reg_max, 2.0, w.zeros_like()).into_scalar();
    assert_eq!(zero, 0.0);
}

#[test]
#[should_panic(expected = "reg_max > 1")]
fn localisation_kl_rejects_reg_max_one() {
    let dev = plain();
    let x = Tensor::<3>::zeros([1, 4, 3], &dev);
    let _ = localisation_kl(x.clone(), x, 1, 1.0, Tensor::<2>::ones([1, 3], &dev));
}

#[test]
fn kd_binary_has_zero_gradient_at_the_teacher() {
    let dev = Device::flex().autodiff();
    let t = Tensor::<2>::random([5, 3], Distribution::Normal(0.0, 2.0), &dev);
    let s = t.clone().inner().autodiff().require_grad();
    let loss = kd_binary(s.clone(), t.clone(), 2.0);
    let grads = loss.backward();
    let g = s.grad(&grads).unwrap().abs().max().into_scalar::<f32>();
    assert!(g < 1e-6, "gradient at s = t: {g}");
    let s2 = Tensor::<2>::random([5, 3], Distribution::Normal(0.0, 2.0), &dev).require_grad();
    let loss2 = kd_binary(s2.clone(), t, 2.0);
    let g2 = s2.grad(&loss2.backward()).unwrap().abs().sum().into_scalar::<f32>();
    assert!(g2 > 0.0);
}

#[test]
fn kd_kl_is_zero_for_equal_logits() {
    let t = Tensor::<2>::random([4, 6], Distribution::Normal(0.0, 1.0), &plain());
    let v: f32 = kd_kl(t.clone(), t, 3.0).into_scalar();
    assert!(v.abs() < 1e-6);
}

/// The dense response computed plainly on the host: Σ binary KL over anchors and classes,
/// and Σ_a conf_a · mean_sides KL(bins), both over max(Σ conf, 1), times T².
fn dense_on_host(s_box: &[f32], s_cls: &[f32], t_box: &[f32], t_cls: &[f32], [n, nc, a, r]: [usize; 4], tt: f32) -> (f32, f32) {
    let sig = |x: f32| 1.0 / (1.0 + (-x).exp());
    let conf: Vec<f32> = (0..n * a).map(|i| (0..nc).map(|c| sig(t_cls[(i / a * nc + c) * a + i % a])).fold(0.0, f32::max)).collect();
    let norm = conf.iter().sum::<f32>().max(1.0);
    let mut cls = 0.0;
    for (s, t) in s_cls.iter().zip(t_cls) {
        let (p, q) = (sig(t / tt), sig(s / tt));
        cls += p * (p / q).ln() + (1.0 - p) * ((1.0 - p) / (1.0 - q)).ln();
    }
    let mut boxes = 0.0;
    for b in 0..n {
        for i in 0..a {
            let mut side_sum = 0.0;
            for side in 0..4 {
                let bins = |m: &[f32]| -> Vec<f32> {
                    let z: Vec<f32> = (0..r).map(|k| m[(b * 4 * r + side * r + k) * a + i] / tt).collect();
                    let mx = z.iter().cloned().fold(f32::MIN, f32::max);
                    let e: Vec<f32> = z.iter().map(|v| (v - mx).exp()).collect();
                    let sum: f32 = e.iter().sum();
                    e.iter().map(|v| v / sum).collect()
                };
                let (ps, pt) = (bins(s_box), bins(t_box));
                side_sum += pt.iter().zip(&ps).map(|(p, q)| p * (p / q).ln()).sum::<f32>();
            }
            boxes += conf[b * a + i] * side_sum / 4.0;
        }
    }
    (cls * tt * tt / norm, boxes * tt * tt / norm)
}

#[test]
fn dense_response_matches_its_formula_and_vanishes_at_the_teacher() {
    let dev = Device::flex().autodiff();
    let [n, nc, a, r] = [2, 3, 5, 4];
    let rand = |dims: [usize; 3], scale: f32| Tensor::<3>::random(dims, Distribution::Normal(0.0, scale as f64), &dev);
    let (s_box, t_box) = (rand([n, 4 * r, a], 1.5).require_grad(), rand([n, 4 * r, a], 1.5));
    // teacher scores: some anchors confident, most not
    let (s_cls, t_cls) = (rand([n, nc, a], 2.0).require_grad(), rand([n, nc, a], 3.0) - 2.0);
    let host = |t: &Tensor<3>| t.clone().inner().try_into_vec_as::<f32>().unwrap();
    for tt in [1.0, 2.0] {
        let (cls, boxes) = dense_response(s_box.clone(), s_cls.clone(), t_box.clone(), t_cls.clone(), r, tt);
        let (hc, hb) = dense_on_host(&host(&s_box), &host(&s_cls), &host(&t_box), &host(&t_cls), [n, nc, a, r], tt);
        let (c, b) = (cls.into_scalar::<f32>(), boxes.into_scalar::<f32>());
        assert!((c - hc).abs() <= 1e-4 * hc.abs().max(1e-3), "T={tt}: class term {c} vs {hc}");
        assert!((b - hb).abs() <= 1e-4 * hb.abs().max(1e-3), "T={tt}: box term {b} vs {hb}");
        assert!(c > 0.0 && b > 0.0);
    }
    // student = teacher: both terms and the student's gradient vanish
    let (s2_box, s2_cls) = (t_box.clone().inner().autodiff().require_grad(), t_cls.clone().inner().autodiff().require_grad());
    let (cls, boxes) = dense_response(s2_box.clone(), s2_cls.clone(), t_box.clone(), t_cls.clone(), r, 1.0);
    let total = cls + boxes;
    assert!(total.clone().into_scalar::<f32>().abs() < 1e-5);
    let g = total.backward();
    assert!(grad_abs_sum(&s2_box, &g) < 1e-4 && grad_abs_sum(&s2_cls, &g) < 1e-4);
    // reg_max 1 heads: the class term only
    let (_, b1) = dense_response(rand([n, 4, a], 1.0), s_cls.clone(), rand([n, 4, a], 1.0), t_cls.clone(), 1, 1.0);
    assert_eq!(b1.into_scalar::<f32>(), 0.0);
}

/// Reference values and student gradients of the response losses the distiller runs for
/// `--logit kl` ([`kd_binary`]), `--logit ld` ([`localisation_kl`]) and `--logit dense`
/// ([`dense_response`]), from `scripts/distill_extra_reference.py` (PyTorch, written from the
/// formulas): `tests/data/distill_extra.safetensors`.
mod response_reference {
    use super::*;

    fn fixture() -> Vec<(String, HostTensor)> {
        read_tensors(std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/distill_extra.safetensors"))).unwrap().0
    }

    fn get<const D: usize>(fx: &[(String, HostTensor)], name: &str, dev: &Device) -> Tensor<D> {
        let h = &fx.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("fixture lacks {name}")).1;
        Tensor::from_data(TensorData::new(h.data.clone(), h.shape.clone()), dev)
    }

    /// A value within 1e-5 relative, and a gradient within 1e-4 of its largest magnitude.
    fn check_value_and_grad<const D: usize>(fx: &[(String, HostTensor)], name: &str, got: Tensor<1>, x: &Tensor<D>, grad_name: &str, grads: &burn::tensor::Gradients) {
        let dev = Device::flex();
        let want = get::<1>(fx, name, &dev).into_scalar::<f32>();
        let v = got.into_scalar::<f32>();
        assert!((v - want).abs() <= 1e-5 * want.abs(), "{name}: ours {v} reference {want}");
        let g = x.grad(grads).expect("a gradient").try_into_vec_as::<f32>().unwrap();
        let r = get::<D>(fx, grad_name, &dev).try_into_vec_as::<f32>().unwrap();
        let (d, m) = common::max_diff(&g, &r);
        assert!(d <= 1e-4 * m, "{grad_name}: max difference {d} of {m}");
    }

    #[test]
    fn kd_binary_matches_reference() {
        let fx = fixture();
        let dev = Device::flex().autodiff();
        for t in ["1.0", "2.5"] {
            let s = get::<3>(&fx, "kd.s", &dev).require_grad();
            let loss = kd_binary(s.clone(), get::<3>(&fx, "kd.t", &dev), t.parse().unwrap());
            let grads = loss.clone().backward();
            check_value_and_grad(&fx, &format!("kd_binary.t{t}"), loss, &s, &format!("kd_binary.t{t}.grad"), &grads);
        }
    }

    #[test]
    fn localisation_kl_matches_reference() {
        let fx = fixture();
        let dev = Device::flex().autodiff();
        for t in ["1.0", "2.0"] {
            let s = get::<3>(&fx, "ld.s", &dev).require_grad();
            let loss = localisation_kl(s.clone(), get::<3>(&fx, "ld.t", &dev), 16, t.parse().unwrap(), get::<2>(&fx, "ld.w", &dev));
            let grads = loss.clone().backward();
            check_value_and_grad(&fx, &format!("ld.t{t}"), loss, &s, &format!("ld.t{t}.grad"), &grads);
        }
    }

    #[test]
    fn dense_response_matches_reference() {
        let fx = fixture();
        let dev = Device::flex().autodiff();
        for t in ["1.0", "2.0"] {
            let scores = get::<3>(&fx, "kd.s", &dev).require_grad();
            let boxes = get::<3>(&fx, "ld.s", &dev).require_grad();
            let (cls, bx) =
                dense_response(boxes.clone(), scores.clone(), get::<3>(&fx, "ld.t", &dev), get::<3>(&fx, "kd.t", &dev), 16, t.parse().unwrap());
            let grads = (cls.clone() + bx.clone()).backward();
            check_value_and_grad(&fx, &format!("dense.t{t}.cls"), cls, &scores, &format!("dense.t{t}.grad_scores"), &grads);
            check_value_and_grad(&fx, &format!("dense.t{t}.box"), bx, &boxes, &format!("dense.t{t}.grad_boxes"), &grads);
        }
    }
}

/// PKD against a plain host computation of its formula (f64 loops): each channel standardised
/// over batch and positions with the unbiased σ plus 1e-6, then MSE / 2; equal to one minus
/// the mean per-channel Pearson correlation; blind to each channel's scale and offset; the
/// student alone gets the gradient.
#[test]
fn pkd_matches_a_host_computation_of_its_formula() {
    let dev = plain();
    let (n, c, h, w) = (3, 5, 4, 6);
    let s = Tensor::<4>::random([n, c, h, w], Distribution::Normal(0.3, 2.0), &dev);
    let t = Tensor::<4>::random([n, c, h, w], Distribution::Normal(-1.0, 0.5), &dev);
    let (sv, tv) = (s.clone().try_into_vec_as::<f32>().unwrap(), t.clone().try_into_vec_as::<f32>().unwrap());
    let at = |v: &[f32], i: usize, ch: usize, p: usize| v[(i * c + ch) * h * w + p] as f64;
    let standardised = |v: &[f32], ch: usize| -> Vec<f64> {
        let xs: Vec<f64> = (0..n).flat_map(|i| (0..h * w).map(move |p| (i, p))).map(|(i, p)| at(v, i, ch, p)).collect();
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        let sd = (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (xs.len() - 1) as f64).sqrt();
        xs.iter().map(|x| (x - mean) / (sd + 1e-6)).collect()
    };
    let (mut sq, mut corr) = (0f64, 0f64);
    for ch in 0..c {
        let (a, b) = (standardised(&sv, ch), standardised(&tv, ch));
        sq += a.iter().zip(&b).map(|(x, y)| (x - y).powi(2)).sum::<f64>();
        corr += a.iter().zip(&b).map(|(x, y)| x * y).sum::<f64>() / (a.len() - 1) as f64;
    }
    let want = sq / (n * c * h * w) as f64 / 2.0;
    let got = pkd_level(s.clone(), t.clone()).into_scalar::<f32>() as f64;
    assert!((got - want).abs() <= 1e-5 * want.max(1e-3), "pkd {got} vs host {want}");
    // MSE/2 of standardised maps = (M−1)/M · (1 − mean correlation), M = N·H·W values per channel
    let m = (n * h * w) as f64;
    let via_corr = (m - 1.0) / m * (1.0 - corr / c as f64);
    assert!((want - via_corr).abs() <= 1e-5, "{want} vs {via_corr}");
    // a channel's scale and offset do not count
    let rescaled = t.clone() * 7.0 + 3.0;
    let again = pkd_level(s.clone(), rescaled).into_scalar::<f32>() as f64;
    assert!((again - got).abs() <= 1e-4 * got, "{again} vs {got}");
    // identical maps give 0
    assert!(pkd_level(s.clone(), s.clone()).into_scalar::<f32>().abs() < 1e-6);
    // gradient reaches the student only
    let ad = dev.clone().autodiff();
    let sa = Tensor::<4>::from_data(TensorData::new(sv, [n, c, h, w]), &ad).require_grad();
    let ta = Tensor::<4>::from_data(TensorData::new(tv, [n, c, h, w]), &ad).require_grad();
    let g = pkd_level(sa.clone(), ta.clone()).backward();
    assert!(sa.grad(&g).is_some_and(|x| x.abs().sum().into_scalar::<f32>() > 0.0));
    assert!(ta.grad(&g).is_none_or(|x| x.abs().sum().into_scalar::<f32>() == 0.0));
}

/// Host (f64) helpers of the response-method reference tests.
mod host {
    pub fn values(t: &burn::tensor::Tensor<3>) -> Vec<f64> {
        t.clone().try_into_vec_as::<f32>().unwrap().into_iter().map(f64::from).collect()
    }

    pub fn sigmoid(x: f64) -> f64 {
        1.0 / (1.0 + (-x).exp())
    }

    /// Side `k` of anchor `j` of image `i` from box logits `[n, 4·r, a]`: the expectation of the
    /// softmax over the r bins (r = 1: the value itself).
    pub fn side(v: &[f64], r: usize, a: usize, i: usize, k: usize, j: usize) -> f64 {
        let logits: Vec<f64> = (0..r).map(|b| v[(i * 4 * r + k * r + b) * a + j]).collect();
        if r == 1 {
            return logits[0];
        }
        let m = logits.iter().cloned().fold(f64::MIN, f64::max);
        let e: Vec<f64> = logits.iter().map(|l| (l - m).exp()).collect();
        e.iter().enumerate().map(|(b, v)| b as f64 * v).sum::<f64>() / e.iter().sum::<f64>()
    }

    /// The box (x1, y1, x2, y2) of anchor `j` centred at `c`.
    pub fn anchor_box(v: &[f64], r: usize, a: usize, i: usize, j: usize, c: (f64, f64)) -> [f64; 4] {
        [c.0 - side(v, r, a, i, 0, j), c.1 - side(v, r, a, i, 1, j), c.0 + side(v, r, a, i, 2, j), c.1 + side(v, r, a, i, 3, j)]
    }

    pub fn giou(b1: [f64; 4], b2: [f64; 4]) -> f64 {
        let area = |b: [f64; 4]| (b[2] - b[0]).max(0.0) * (b[3] - b[1]).max(0.0);
        let inter = (b1[2].min(b2[2]) - b1[0].max(b2[0])).max(0.0) * (b1[3].min(b2[3]) - b1[1].max(b2[1])).max(0.0);
        let union = area(b1) + area(b2) - inter + 1e-7;
        let hull = (b1[2].max(b2[2]) - b1[0].min(b2[0])) * (b1[3].max(b2[3]) - b1[1].min(b2[1])) + 1e-7;
        inter / union - (hull - union) / hull
    }
}

/// BCKD against a plain host computation of its formula (f64), between a DFL student head
/// (reg_max 4) and a YOLO26-style teacher head (reg_max 1); zero at the teacher; the gradient
/// reaches the student's class and box logits only.
#[test]
fn bckd_matches_a_host_computation_of_its_formula() {
    let dev = plain();
    let (n, nc, a, r) = (2, 3, 6, 4);
    let s_box = Tensor::<3>::random([n, 4 * r, a], Distribution::Normal(0.0, 1.5), &dev);
    let s_cls = Tensor::<3>::random([n, nc, a], Distribution::Normal(-1.0, 2.0), &dev);
    let t_box = Tensor::<3>::random([n, 4, a], Distribution::Uniform(0.2, 3.0), &dev);
    let t_cls = Tensor::<3>::random([n, nc, a], Distribution::Normal(-0.5, 2.0), &dev);
    let centres: Vec<f32> = (0..a).map(|i| i as f32 + 0.5).chain((0..a).map(|i| (i % 2) as f32 + 0.5)).collect();
    let anchors = Tensor::<3>::from_data(TensorData::new(centres.clone(), [1, 2, a]), &dev);
    let (sb, sc, tb, tc) = (host::values(&s_box), host::values(&s_cls), host::values(&t_box), host::values(&t_cls));
    let (mut cls, mut boxes, mut norm) = (0f64, 0f64, 0f64);
    for i in 0..n {
        for j in 0..a {
            let c = (centres[j] as f64, centres[a + j] as f64);
            let (mut gap_max, mut conf) = (0f64, 0f64);
            for k in 0..nc {
                let (ps, pt) = (host::sigmoid(sc[(i * nc + k) * a + j]), host::sigmoid(tc[(i * nc + k) * a + j]));
                let gap = (pt - ps).abs();
                cls += gap * -(pt * ps.ln() + (1.0 - pt) * (1.0 - ps).ln());
                gap_max = gap_max.max(gap);
                conf = conf.max(pt);
            }
            norm += conf;
            boxes += gap_max * (1.0 - host::giou(host::anchor_box(&sb, r, a, i, j, c), host::anchor_box(&tb, 1, a, i, j, c)));
        }
    }
    let norm = norm.max(1.0);
    let (want_cls, want_box) = (cls / norm, boxes / norm);
    let (got_cls, got_box) = bckd(s_box.clone(), s_cls.clone(), r, t_box.clone(), t_cls.clone(), 1, anchors.clone());
    let (got_cls, got_box) = (got_cls.into_scalar::<f32>() as f64, got_box.into_scalar::<f32>() as f64);
    assert!((got_cls - want_cls).abs() <= 1e-5 * want_cls, "class term {got_cls} vs host {want_cls}");
    assert!((got_box - want_box).abs() <= 1e-5 * want_box, "box term {got_box} vs host {want_box}");
    // at the teacher (same head family) both terms vanish
    let tb16 = Tensor::<3>::random([n, 4 * r, a], Distribution::Normal(0.0, 1.5), &dev);
    let (c0, b0) = bckd(tb16.clone(), t_cls.clone(), r, tb16, t_cls.clone(), r, anchors.clone());
    assert!(c0.into_scalar::<f32>().abs() < 1e-6 && b0.into_scalar::<f32>().abs() < 1e-6);
    let (c, b) = with_gradients(&[&s_box, &s_cls, &t_box, &t_cls], &centres, |t, anchors| bckd(t[0].clone(), t[1].clone(), r, t[2].clone(), t[3].clone(), 1, anchors));
    assert!(c && !b, "the student's logits get the gradient, the teacher's none");
}

/// Runs a response loss on autodiff copies of `tensors` (student first two, teacher last two);
/// returns whether the student's and whether the teacher's tensors got a gradient.
fn with_gradients(tensors: &[&Tensor<3>], centres: &[f32], f: impl Fn(&[Tensor<3>], Tensor<3>) -> (Tensor<1>, Tensor<1>)) -> (bool, bool) {
    let ad = plain().autodiff();
    let on = |t: &Tensor<3>| Tensor::<3>::from_data(TensorData::new(t.clone().try_into_vec_as::<f32>().unwrap(), t.dims()), &ad).require_grad();
    let copies: Vec<Tensor<3>> = tensors.iter().map(|t| on(t)).collect();
    let anchors = Tensor::<3>::from_data(TensorData::new(centres.to_vec(), [1, 2, centres.len() / 2]), &ad);
    let (c, b) = f(&copies, anchors);
    let g = (c + b).backward();
    let has = |t: &Tensor<3>| t.grad(&g).is_some_and(|x| x.abs().sum().into_scalar::<f32>() > 0.0);
    (has(&copies[0]) && has(&copies[1]), has(&copies[2]) || has(&copies[3]))
}

/// CrossKD's loss against a host computation: the binary KL at temperature T (times T²) on
/// every anchor and class, and the teacher-confidence-weighted (1 − GIoU) of the decoded boxes,
/// both over the total confidence; zero when the cross predictions are the teacher's.
#[test]
fn crosskd_matches_a_host_computation_of_its_formula() {
    let dev = plain();
    let (n, nc, a, r, tt) = (2, 3, 6, 4, 2.0f64);
    let c_box = Tensor::<3>::random([n, 4 * r, a], Distribution::Normal(0.0, 1.5), &dev);
    let c_cls = Tensor::<3>::random([n, nc, a], Distribution::Normal(-1.0, 2.0), &dev);
    let t_box = Tensor::<3>::random([n, 4 * r, a], Distribution::Normal(0.0, 1.5), &dev);
    let t_cls = Tensor::<3>::random([n, nc, a], Distribution::Normal(-0.5, 2.0), &dev);
    let centres: Vec<f32> = (0..a).map(|i| i as f32 + 0.5).chain((0..a).map(|i| (i % 3) as f32 + 0.5)).collect();
    let anchors = Tensor::<3>::from_data(TensorData::new(centres.clone(), [1, 2, a]), &dev);
    let (cb, cc, tb, tc) = (host::values(&c_box), host::values(&c_cls), host::values(&t_box), host::values(&t_cls));
    let (mut cls, mut boxes, mut norm) = (0f64, 0f64, 0f64);
    for i in 0..n {
        for j in 0..a {
            let c = (centres[j] as f64, centres[a + j] as f64);
            let mut conf = 0f64;
            for k in 0..nc {
                let (zs, zt) = (cc[(i * nc + k) * a + j] / tt, tc[(i * nc + k) * a + j] / tt);
                let (ps, pt) = (host::sigmoid(zs), host::sigmoid(zt));
                cls += tt * tt * (pt * (pt.ln() - ps.ln()) + (1.0 - pt) * ((1.0 - pt).ln() - (1.0 - ps).ln()));
                conf = conf.max(host::sigmoid(tc[(i * nc + k) * a + j]));
            }
            norm += conf;
            boxes += conf * (1.0 - host::giou(host::anchor_box(&cb, r, a, i, j, c), host::anchor_box(&tb, r, a, i, j, c)));
        }
    }
    let norm = norm.max(1.0);
    let (want_cls, want_box) = (cls / norm, boxes / norm);
    let (got_cls, got_box) = crosskd(c_box.clone(), c_cls.clone(), t_box.clone(), t_cls.clone(), r, anchors.clone(), tt as f32);
    let (got_cls, got_box) = (got_cls.into_scalar::<f32>() as f64, got_box.into_scalar::<f32>() as f64);
    assert!((got_cls - want_cls).abs() <= 1e-5 * want_cls, "class term {got_cls} vs host {want_cls}");
    assert!((got_box - want_box).abs() <= 1e-5 * want_box, "box term {got_box} vs host {want_box}");
    let (c0, b0) = crosskd(t_box.clone(), t_cls.clone(), t_box.clone(), t_cls.clone(), r, anchors, tt as f32);
    assert!(c0.into_scalar::<f32>().abs() < 1e-6 && b0.into_scalar::<f32>().abs() < 1e-6);
    let (c, b) = with_gradients(&[&c_box, &c_cls, &t_box, &t_cls], &centres, |t, anchors| crosskd(t[0].clone(), t[1].clone(), t[2].clone(), t[3].clone(), r, anchors, 2.0));
    assert!(c && !b, "the cross predictions get the gradient, the teacher's none");
}

/// Mask distillation against a plain host computation of its formula: at each of the student's
/// foreground anchors, BCE of its mask logits (coefficients · prototypes) against the teacher's
/// sigmoid(coefficients · prototypes) at that anchor, inside the assigned box, weighted by
/// 1 / (pixels · the box's share of the image), summed and divided by the foreground count. The
/// teacher has other mask channels than the student (3 and 2); gradients reach the student's
/// coefficients and prototypes, never the teacher's.
#[test]
fn mask_distillation_matches_its_formula() {
    use yolodistill::loss::segment::mask_distillation;
    use yolodistill::loss::Assigned;
    let device = Device::flex().autodiff();
    let (b, a_n, (mh, mw)) = (2, 5, (4usize, 6usize));
    let rand = |shape: Vec<usize>| Tensor::<1>::random([shape.iter().product::<usize>()], Distribution::Normal(0.0, 1.0), &device).into_data();
    let (sc, sp) = (rand(vec![b, 3, a_n]), rand(vec![b, 3, mh, mw]));
    let (tc, tp) = (rand(vec![b, 2, a_n]), rand(vec![b, 2, mh, mw]));
    let student_c = Tensor::<3>::from_data(TensorData::new(sc.try_to_vec::<f32>().unwrap(), [b, 3, a_n]), &device).require_grad();
    let student_p = Tensor::<4>::from_data(TensorData::new(sp.try_to_vec::<f32>().unwrap(), [b, 3, mh, mw]), &device).require_grad();
    let teacher_c = Tensor::<3>::from_data(TensorData::new(tc.try_to_vec::<f32>().unwrap(), [b, 2, a_n]), &device).require_grad();
    let teacher_p = Tensor::<4>::from_data(TensorData::new(tp.try_to_vec::<f32>().unwrap(), [b, 2, mh, mw]), &device).require_grad();
    // input 16×24 pixels; boxes in grid units of stride 4 (x1, y1, x2, y2)
    let asg = Assigned {
        fg_index: vec![1, 3, (a_n + 2) as i64],
        fg_target: vec![0.0, 0.0, 3.0, 2.0, 1.5, 0.5, 6.0, 4.0, 2.0, 1.0, 4.0, 3.0],
        fg_stride: vec![4.0; 3],
        fg_gt: vec![0, 1, 0],
        img_hw: (16.0, 24.0),
        ..Default::default()
    };
    let got = mask_distillation(&student_c, &student_p, &asg, &teacher_c, &teacher_p).unwrap();
    let (sc, sp, tc, tp) = (sc.try_to_vec::<f32>().unwrap(), sp.try_to_vec::<f32>().unwrap(), tc.try_to_vec::<f32>().unwrap(), tp.try_to_vec::<f32>().unwrap());
    let logit = |c: &[f32], p: &[f32], nm: usize, img: usize, a: usize, px: usize| -> f64 {
        (0..nm).map(|j| c[(img * nm + j) * a_n + a] as f64 * p[(img * nm + j) * mh * mw + px] as f64).sum()
    };
    let mut want = 0f64;
    for (k, &f) in asg.fg_index.iter().enumerate() {
        let (img, a) = (f as usize / a_n, f as usize % a_n);
        let bx: Vec<f64> = (0..4).map(|j| asg.fg_target[4 * k + j] as f64 * 4.0 / if j % 2 == 0 { 24.0 } else { 16.0 }).collect();
        let area = (bx[2] - bx[0]) * (bx[3] - bx[1]);
        for r in 0..mh {
            for c in 0..mw {
                let inside = (c as f64) >= bx[0] * mw as f64 && (c as f64) < bx[2] * mw as f64 && (r as f64) >= bx[1] * mh as f64 && (r as f64) < bx[3] * mh as f64;
                if !inside {
                    continue;
                }
                let l = logit(&sc, &sp, 3, img, a, r * mw + c);
                let t = 1.0 / (1.0 + (-logit(&tc, &tp, 2, img, a, r * mw + c)).exp());
                let bce = l.max(0.0) - l * t + (-l.abs()).exp().ln_1p();
                want += bce / ((mh * mw) as f64 * area);
            }
        }
    }
    want /= asg.fg_index.len() as f64;
    let got_v = got.clone().into_scalar::<f32>() as f64;
    eprintln!("mask distillation: ours {got_v} formula {want}");
    assert!((got_v - want).abs() <= 1e-5 * want.abs().max(1.0), "{got_v} vs {want}");
    let grads = got.backward();
    assert!(grad_abs_sum(&student_c, &grads) > 0.0 && grad_abs_sum(&student_p, &grads) > 0.0, "the student learns");
    assert!(teacher_c.grad(&grads).is_none() && teacher_p.grad(&grads).is_none(), "the teacher must not receive gradients");
    // prototypes of another size are refused
    let small = Tensor::<4>::zeros([b, 2, 2, 3], &device);
    assert!(mask_distillation(&student_c, &student_p, &asg, &teacher_c, &small).is_err());
}
