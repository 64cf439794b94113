//! One training step's arithmetic: the forward pass, the task's loss (over the labeled
//! images, or pseudo-labeled ones), the hook's terms, the backward pass into accumulated
//! gradients, and the gradient norms a hook may ask for.

use burn::module::Param;
use burn::tensor::{Device, Tensor, TensorData};

use super::hook::{HookInput, StepHook, StepPos};
use super::optim::{self, GradStore, Trainable};
use crate::data::loader::Batch;
use crate::loss::segment::InstanceMasks;
use crate::loss::{Assigned, Assignment, LossConfig, LossOutput, Targets};
use crate::model::layers::head::HeadOutput;
use crate::model::walk::Slot;
use crate::model::DetectionModel;

/// Makes every trainable parameter a gradient-tracking leaf on the autodiff device.
pub fn make_trainable<T: Trainable + ?Sized>(model: &mut T) {
    model.walk_params(&mut |name, slot: Slot<'_>| {
        if !optim::is_trainable(name) {
            return;
        }
        match slot {
            Slot::P4(p) => *p = Param::initialized(p.id, p.val().inner().autodiff().require_grad()),
            Slot::P1(p) => *p = Param::initialized(p.id, p.val().inner().autodiff().require_grad()),
            _ => {}
        }
    });
}

/// The named loss items of a step, still on the device (read back when the trainer shows
/// them): the detection loss's three, the hook's terms, then the hook's logged values.
pub struct StepItems {
    pub names: Vec<String>,
    /// [names.len()] the values.
    pub values: Tensor<1>,
    /// Host-side multipliers of the values (1 but for calibrated logs).
    pub factors: Vec<f64>,
}

impl StepItems {
    /// Every item on the host, in order: one read-back.
    pub fn read(self) -> Vec<(String, f64)> {
        Self::read_all(vec![self]).pop().unwrap_or_default()
    }

    /// The items of several steps with one read-back.
    pub fn read_all(steps: Vec<StepItems>) -> Vec<Vec<(String, f64)>> {
        if steps.is_empty() {
            return Vec::new();
        }
        let host = crate::device::read_back(Tensor::cat(steps.iter().map(|s| s.values.clone()).collect(), 0));
        let mut at = 0;
        steps
            .into_iter()
            .map(|s| {
                let vals = &host[at..at + s.names.len()];
                at += s.names.len();
                s.names.into_iter().zip(vals.iter().zip(s.factors).map(|(&v, f)| v as f64 * f)).collect()
            })
            .collect()
    }

    /// These items plus `other`'s (same names, one more shard).
    pub fn add(self, other: StepItems) -> StepItems {
        StepItems { values: self.values + other.values, ..self }
    }

    /// Every value divided by `n`.
    pub fn div(self, n: f64) -> StepItems {
        StepItems { values: self.values / n as f32, ..self }
    }
}

/// The losses of one forward pass of `batch`: the detection loss (Ultralytics' scale: the
/// batch mean times the batch size, over the labeled images and any pseudo-labeled ones), the
/// hook's terms (per image, as the hook weighted them) and the named loss items.
#[allow(clippy::too_many_arguments)]
fn step_losses(
    model: &mut DetectionModel,
    loss_cfg: &LossConfig,
    batch: &Batch,
    ad: &Device,
    taps: &[usize],
    mut hook: Option<&mut dyn StepHook>,
    mean: Option<&DetectionModel>,
    pos: StepPos,
) -> (Tensor<1>, Vec<(String, Tensor<1>)>, StepItems) {
    let [b, c, h, w] = batch.shape;
    let x = Tensor::<4>::from_data(TensorData::new(batch.images.clone(), [b, c, h, w]), ad);
    let e2e = model.head().has_one2one();
    let fwd = model.forward_taps(x.clone(), taps, e2e);
    let labeled = batch.labeled.min(b);
    let targets = Targets { batch_idx: batch.batch_idx.clone(), cls: batch.cls.clone(), bboxes: batch.bboxes.clone(), soft: Vec::new() };
    // Unlabeled images enter the detection loss only with pseudo-labels.
    let pseudo = if labeled < b { hook.as_deref_mut().and_then(|h| h.pseudo_labels(&x, labeled, pos, mean)) } else { None };
    let with_pseudo = pseudo.map(|p| targets.clone().joined(p));
    let (det_targets, det_images) = match &with_pseudo {
        Some(t) => (t, b),
        None => (&targets, labeled),
    };
    let (out, assigned) = task_loss(loss_cfg, &fwd.head, det_targets, batch.masks.as_ref(), det_images, pos);
    let mut names: Vec<String> = loss_cfg.task.logged_names(loss_cfg.reg_max);
    let mut values = vec![out.items.detach()];
    let (mut terms, mut factors) = (Vec::new(), Vec::new());
    if let Some(h) = hook {
        let ctx = HookInput {
            images: &x,
            labeled,
            taps: &fwd.taps,
            student: &fwd.head,
            student_head: model.head(),
            targets: &targets,
            assigned: &assigned,
            loss_cfg,
            pos,
        };
        let extra = h.extra_loss(&ctx);
        for (name, term) in extra.terms {
            names.push(name.clone());
            values.push(term.clone().detach().reshape([1]));
            terms.push((name, term));
        }
        for l in extra.logs {
            names.push(l.name);
            values.push(l.value.detach().reshape([1]));
            factors.push(l.factor);
        }
    }
    // the detection items and the terms are shown as they are; the logs come last
    let factors: Vec<f64> = std::iter::repeat_n(1.0, names.len() - factors.len()).chain(factors).collect();
    (out.total, terms, StepItems { names, values: Tensor::cat(values, 0), factors })
}

/// The task's loss over the first `n` images of the batch (the rest are unlabeled): zero,
/// still on the graph, when `n` is 0.
fn task_loss(loss_cfg: &LossConfig, head: &HeadOutput, targets: &Targets, masks: Option<&InstanceMasks>, n: usize, pos: StepPos) -> (LossOutput, Assignment) {
    let b = head.one2many.scores.dims()[0];
    let task = loss_cfg.task;
    if n == b {
        return task.loss(loss_cfg, head, targets, masks, pos.epoch, pos.epochs);
    }
    if n == 0 {
        let zero = head.one2many.scores.clone().sum() * 0.0;
        let out = LossOutput { total: zero, items: Tensor::zeros([task.loss_names().len()], &head.one2many.scores.device()) };
        let (h, w) = head.shapes[0];
        let s = loss_cfg.strides[0] as f32;
        return (out, Assignment::Host(Assigned::empty((h as f32 * s, w as f32 * s))));
    }
    task.loss(loss_cfg, &head.first_images(n), targets, masks, pos.epoch, pos.epochs)
}

/// One forward + backward pass of `batch`: detection loss (plus the hook's
/// terms), gradients added to `grads`. `mean` is the run's EMA of the student, for a hook that
/// pseudo-labels with it. Returns the named loss items. With `guard` the
/// gradients of a non-finite loss are dropped on the device (for a trainer that reads the
/// loss back only now and then); without it the caller checks the items before stepping.
#[allow(clippy::too_many_arguments)]
pub fn forward_backward<'h>(
    model: &mut DetectionModel,
    loss_cfg: &LossConfig,
    batch: &Batch,
    ad: &Device,
    taps: &[usize],
    mut hook: Option<&mut (dyn StepHook + 'h)>,
    mean: Option<&DetectionModel>,
    pos: StepPos,
    grads: &mut GradStore,
    guard: bool,
) -> StepItems {
    let b = batch.shape[0] as f32;
    let (det, terms, items) = step_losses(model, loss_cfg, batch, ad, taps, hook.as_deref_mut().map(|h| h as &mut dyn StepHook), mean, pos);
    // The terms are per image: scaled by the batch size like the detection loss.
    let total = terms.into_iter().fold(det, |t, (_, term)| t + term * b);
    let finite = guard.then(|| total.clone().detach().is_finite());
    let g = total.backward();
    grads.accumulate(model, &g, finite.clone());
    if let Some(t) = hook.and_then(|h| h.trainable()) {
        grads.accumulate(t, &g, finite);
    }
    items
}

/// L2 norms of the gradients on the student's parameters of the detection loss and of each of
/// the hook's terms (as the trainer adds it) on one batch. One forward and backward per term;
/// nothing is accumulated and no parameter changes.
#[allow(clippy::too_many_arguments)]
pub fn gradient_norms(
    model: &mut DetectionModel,
    loss_cfg: &LossConfig,
    batch: &Batch,
    ad: &Device,
    taps: &[usize],
    hook: &mut dyn StepHook,
    mean: Option<&DetectionModel>,
    pos: StepPos,
) -> (f32, Vec<(String, f32)>) {
    let b = batch.shape[0] as f32;
    let norm_of = |loss: Tensor<1>, model: &mut DetectionModel| {
        let mut g = GradStore::default();
        g.accumulate(model, &loss.backward(), None);
        g.norm()
    };
    let (det, terms, _) = step_losses(model, loss_cfg, batch, ad, taps, Some(&mut *hook), mean, pos);
    let names: Vec<String> = terms.into_iter().map(|(n, _)| n).collect();
    let det_norm = norm_of(det, model);
    let mut out = Vec::new();
    for (k, name) in names.into_iter().enumerate() {
        // A fresh forward per term: a backward pass consumes its graph.
        let (_, mut terms, _) = step_losses(model, loss_cfg, batch, ad, taps, Some(&mut *hook), mean, pos);
        let term = terms.swap_remove(k).1;
        out.push((name, norm_of(term * b, model)));
    }
    (det_norm, out)
}
