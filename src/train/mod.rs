//! Detection training as Ultralytics 8.4.190 does it: warm-up, accumulation to
//! a nominal batch of 64, gradient clipping, EMA, per-epoch validation on the
//! EMA, best/last checkpoints, results.csv/png, resume.

pub mod args;
pub mod checkpoint;
pub mod ema;
pub mod optim;
pub mod run_dir;
pub mod schedule;
pub mod unlabeled;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor, TensorData};
use indicatif::{ProgressBar, ProgressStyle};

pub use args::TrainArgs;
use ema::Ema;
pub use run_dir::run_dir;
use optim::{GradStore, Method, Optimizer, OptimizerKind, StepParams, Trainable};
use schedule::{interp, lr_factor, warmup_iters};

use crate::data::augment::AugConfig;
use crate::data::dataset::{DataConfig, Dataset};
use crate::data::loader::{Batch, TrainLoader, ValLoader};
use crate::eval::validate::{validate, ValResult};
use crate::infer::nms::NmsConfig;
use crate::loss::{model_loss, Assigned, Gains, LossConfig, LossOutput, Targets};
use crate::model::layers::head::HeadOutput;
use crate::model::walk::Slot;
use crate::model::{self, DetectionModel};
use crate::report::Results;

/// Extra losses a caller (distillation) adds to each training step.
pub trait StepHook {
    /// Layer indices whose outputs the hook needs from the student forward.
    fn taps(&self) -> Vec<usize>;
    /// Returns named extra loss terms (already weighted) for this batch. `student`
    /// holds the raw head maps of the student forward.
    fn extra_loss(&mut self, ctx: &HookInput<'_>) -> HookLoss;
    /// The hook's own trainable tensors (adapters, generators), optimised with the model.
    fn trainable(&mut self) -> Option<&mut dyn Trainable> {
        None
    }
    /// While the hook wants its term weights calibrated: the asked fraction of the detection
    /// loss's gradient norm.
    fn calibration_pending(&self) -> Option<f32> {
        None
    }
    /// Sets the term weights from the gradient norms measured on one batch (detection loss,
    /// then each term as currently weighted); returns the multipliers, to be saved with the run.
    fn calibrate(&mut self, _det_norm: f32, _term_norms: &[(String, f32)]) -> Vec<(String, f32)> {
        Vec::new()
    }
    /// Whether unlabeled images should join the batches of `epoch` (they teach through the
    /// hook only, so a hook that has stopped does not want them).
    fn wants_unlabeled(&self, _epoch: usize) -> bool {
        false
    }
    /// Detection targets for the unlabeled images `images[labeled..]` (pseudo-labels), called
    /// before the detection loss; `None` leaves them out of the detection loss.
    fn pseudo_labels(&mut self, _images: &Tensor<4>, _labeled: usize, _pos: StepPos) -> Option<Targets> {
        None
    }
}

/// Extra loss terms of one step (added to the total, logged) and values only logged.
#[derive(Default)]
pub struct HookLoss {
    pub terms: Vec<(String, Tensor<1>)>,
    pub logs: Vec<(String, f64)>,
}

/// What a [`StepHook`] sees of one training step.
pub struct HookInput<'a> {
    /// All images of the batch: the labeled ones first, then the unlabeled ones.
    pub images: &'a Tensor<4>,
    /// How many of `images` carry labels (the targets and the assignment are theirs).
    pub labeled: usize,
    pub taps: &'a [Tensor<4>],
    pub student: &'a crate::model::layers::head::HeadOutput,
    /// The batch's ground truth and the student's (one-to-many) assignment.
    pub targets: &'a Targets,
    pub assigned: &'a Assigned,
    /// The student's loss settings (an online teacher copies them).
    pub loss_cfg: &'a LossConfig,
    pub epoch: usize,
    pub epochs: usize,
    /// Batch index within the epoch and batches per epoch (for per-epoch schedules).
    pub batch: usize,
    pub batches: usize,
}

/// Where a training step is: epoch (0-based) of `epochs`, batch of `batches`.
#[derive(Debug, Clone, Copy)]
pub struct StepPos {
    pub epoch: usize,
    pub epochs: usize,
    pub batch: usize,
    pub batches: usize,
}

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

/// A fresh run folder `project/name`, or `name2`, `name3`, … when taken (unless `exist_ok`).
/// Summary of a finished run.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    pub run_dir: PathBuf,
    pub best: PathBuf,
    pub last: PathBuf,
    pub final_val: Option<ValResult>,
    /// (mAP50, mAP50-95) of the best epoch (the one saved as best).
    pub best_map: Option<(f64, f64)>,
    pub epochs_done: usize,
    /// First epoch (1-based) this call trained: 1, or where a resumed run went on.
    pub first_epoch: usize,
    /// Wall time of this call (a resumed run: since it resumed).
    pub seconds: f64,
}

fn aug_config(a: &TrainArgs) -> AugConfig {
    AugConfig {
        hsv_h: a.hsv_h,
        hsv_s: a.hsv_s,
        hsv_v: a.hsv_v,
        degrees: a.degrees,
        translate: a.translate,
        scale: a.scale,
        shear: a.shear,
        perspective: a.perspective,
        flipud: a.flipud,
        fliplr: a.fliplr,
        mosaic: a.mosaic,
        mixup: a.mixup,
    }
}

/// Loads the model to train, adapting a checkpoint to the dataset's classes
/// (matching tensors are transferred, the class outputs start fresh).
fn initial_model(a: &TrainArgs, names: &[String], device: &Device) -> Result<DetectionModel> {
    let nc = names.len();
    let source = a.model_source()?;
    let ext = Path::new(source).extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    let mut m = if ext == "pt" || ext == "pth" || ext == "safetensors" {
        let loaded = model::load(source, None, device)?.model;
        if loaded.nc() == nc {
            loaded
        } else {
            let spec = crate::model::spec::parse(&loaded.spec.yaml, loaded.spec.scale.as_deref().and_then(|s| s.chars().next()), Some(nc))?;
            let mut fresh = DetectionModel::new(spec, names.to_vec(), device)?;
            let mut src = loaded;
            let n = model::transfer_matching(&mut fresh, model::collect_tensors(&mut src), device);
            eprintln!("Transferred {n} matching tensors from {source} ({} → {nc} classes)", src.nc());
            fresh
        }
    } else {
        model::load(source, Some(nc), device)?.model
    };
    m.names = names.to_vec();
    Ok(m)
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
    hook: Option<&mut dyn StepHook>,
    pos: StepPos,
) -> (Tensor<1>, Vec<(String, Tensor<1>)>, Vec<(String, f64)>) {
    let [b, c, h, w] = batch.shape;
    let x = Tensor::<4>::from_data(TensorData::new(batch.images.clone(), [b, c, h, w]), ad);
    let e2e = model.head().has_one2one();
    let fwd = model.forward_taps(x.clone(), taps, e2e);
    let labeled = batch.labeled.min(b);
    let mut hook = hook;
    let targets = Targets { batch_idx: batch.batch_idx.clone(), cls: batch.cls.clone(), bboxes: batch.bboxes.clone() };
    // Unlabeled images enter the detection loss only with pseudo-labels.
    let pseudo = if labeled < b { hook.as_deref_mut().and_then(|h| h.pseudo_labels(&x, labeled, pos)) } else { None };
    let with_pseudo = pseudo.map(|p| targets.clone().joined(p));
    let (det_targets, det_images) = match &with_pseudo {
        Some(t) => (t, b),
        None => (&targets, labeled),
    };
    let (out, assigned) = detection_part(loss_cfg, &fwd.head, det_targets, det_images, pos);
    let mut items: Vec<(String, f64)> =
        ["box_loss", "cls_loss", "dfl_loss"].iter().zip(out.items).map(|(n, v)| (n.to_string(), v as f64)).collect();
    let mut terms = Vec::new();
    if let Some(h) = hook {
        let ctx = HookInput {
            images: &x,
            labeled,
            taps: &fwd.taps,
            student: &fwd.head,
            targets: &targets,
            assigned: &assigned,
            loss_cfg,
            epoch: pos.epoch,
            epochs: pos.epochs,
            batch: pos.batch,
            batches: pos.batches,
        };
        let extra = h.extra_loss(&ctx);
        for (name, term) in extra.terms {
            items.push((name.clone(), term.clone().into_scalar::<f32>() as f64));
            terms.push((name, term));
        }
        items.extend(extra.logs);
    }
    (out.total, terms, items)
}

/// The detection loss over the first `n` images of the batch (the rest are unlabeled): zero,
/// still on the graph, when `n` is 0.
fn detection_part(loss_cfg: &LossConfig, head: &HeadOutput, targets: &Targets, n: usize, pos: StepPos) -> (LossOutput, Assigned) {
    let b = head.one2many.scores.dims()[0];
    if n == b {
        return model_loss(loss_cfg, head, targets, pos.epoch, pos.epochs);
    }
    if n == 0 {
        let zero = head.one2many.scores.clone().sum() * 0.0;
        let out = LossOutput { total: zero.clone(), items: [0.0; 3], parts: [zero.clone(), zero.clone(), zero] };
        let (h, w) = head.shapes[0];
        let s = loss_cfg.strides[0] as f32;
        return (out, Assigned::empty((h as f32 * s, w as f32 * s)));
    }
    model_loss(loss_cfg, &head.first_images(n), targets, pos.epoch, pos.epochs)
}

/// One forward + backward pass of `batch`: detection loss (plus the hook's
/// terms), gradients added to `grads`. Returns the named loss items.
#[allow(clippy::too_many_arguments)]
pub fn forward_backward<'h>(
    model: &mut DetectionModel,
    loss_cfg: &LossConfig,
    batch: &Batch,
    ad: &Device,
    taps: &[usize],
    hook: Option<&mut (dyn StepHook + 'h)>,
    pos: StepPos,
    grads: &mut GradStore,
) -> Vec<(String, f64)> {
    let b = batch.shape[0] as f32;
    let mut hook = hook;
    let (det, terms, items) = step_losses(model, loss_cfg, batch, ad, taps, hook.as_deref_mut().map(|h| h as &mut dyn StepHook), pos);
    // The terms are per image: scaled by the batch size like the detection loss.
    let total = terms.into_iter().fold(det, |t, (_, term)| t + term * b);
    let g = total.backward();
    grads.accumulate(model, &g);
    if let Some(t) = hook.and_then(|h| h.trainable()) {
        grads.accumulate(t, &g);
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
    pos: StepPos,
) -> (f32, Vec<(String, f32)>) {
    let b = batch.shape[0] as f32;
    let norm_of = |loss: Tensor<1>, model: &mut DetectionModel| {
        let mut g = GradStore::default();
        g.accumulate(model, &loss.backward());
        g.norm()
    };
    let (det, terms, _) = step_losses(model, loss_cfg, batch, ad, taps, Some(&mut *hook), pos);
    let names: Vec<String> = terms.into_iter().map(|(n, _)| n).collect();
    let det_norm = norm_of(det, model);
    let mut out = Vec::new();
    for (k, name) in names.into_iter().enumerate() {
        // A fresh forward per term: a backward pass consumes its graph.
        let (_, mut terms, _) = step_losses(model, loss_cfg, batch, ad, taps, Some(&mut *hook), pos);
        let term = terms.swap_remove(k).1;
        out.push((name, norm_of(term * b, model)));
    }
    (det_norm, out)
}

/// Options given next to `--resume` that the resumed run does not use (it keeps the
/// checkpoint's): every option whose value differs from its default, by argument name.
fn ignored_on_resume(a: &TrainArgs, by_run_name: bool) -> Result<Vec<String>> {
    let flat = |v: serde_json::Value| -> Vec<(String, serde_json::Value)> {
        let mut out = Vec::new();
        if let serde_json::Value::Object(m) = v {
            for (k, v) in m {
                match v {
                    serde_json::Value::Object(inner) => out.extend(inner.into_iter()),
                    v => out.push((k, v)),
                }
            }
        }
        out
    };
    let defaults: std::collections::HashMap<_, _> = flat(serde_json::to_value(TrainArgs::from_flags(&["--resume"])?)?).into_iter().collect();
    // --project/--name find the run when --resume has no path; --quiet applies to this call.
    let used: &[&str] = if by_run_name { &["resume", "quiet", "project", "name", "exist_ok"] } else { &["resume", "quiet"] };
    let mut ignored: Vec<String> = flat(serde_json::to_value(a)?)
        .into_iter()
        .filter(|(k, v)| !used.contains(&k.as_str()) && defaults.get(k) != Some(v))
        .map(|(k, _)| k)
        .collect();
    ignored.sort();
    Ok(ignored)
}

/// Writes results.csv and its plot. The epoch's row is written after `best` and before `last`:
/// a crash in between never leaves `best` worse than the best epoch results.csv records.
fn save_results(results: &Results, dir: &Path) -> Result<()> {
    results.save(&dir.join("results.csv"))?;
    if let Err(e) = results.plot(&dir.join("results.png")) {
        eprintln!("warning: could not draw results.png: {e:#}");
    }
    Ok(())
}

/// Consecutive batches with a non-finite loss after which training stops.
const MAX_NONFINITE_BATCHES: usize = 3;

/// The model, the teacher and the unlabeled images named by `a` exist, and the two models
/// load (so a damaged file is named before the run folder exists).
fn check_inputs(a: &TrainArgs, device: &Device) -> Result<()> {
    // Building a model draws from the backend's process-wide generator.
    let _turn = INIT_TURN.lock().unwrap_or_else(|e| e.into_inner());
    let model_exists = |m: &str| Path::new(m).exists() || model::builtin_yaml(m).is_some();
    let model = a.model_source()?;
    if !model_exists(model) {
        bail!("--model {model}: no such file, and not a built-in model name such as yolov8n.yaml");
    }
    model::load(model, None, device).with_context(|| format!("--model {model}"))?;
    if let Some(t) = &a.distill.teacher {
        if !model_exists(t) {
            bail!("--teacher {t}: no such file, and not a built-in model name such as yolov8s.yaml");
        }
        model::load(t, None, device).with_context(|| format!("--teacher {t}"))?;
    }
    if let Some(u) = &a.unlabeled {
        if !u.exists() {
            bail!("--unlabeled {}: no such file or folder", u.display());
        }
    }
    Ok(())
}

/// Held from seeding the backend's generator until the model and distiller are initialised.
static INIT_TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Trains a model as `a` says. `hook` adds distillation losses.
pub fn train(a: TrainArgs, hook: Option<&mut dyn StepHook>) -> Result<TrainSummary> {
    let t_start = Instant::now();
    let plain = crate::default_device();
    let ad = plain.clone().autodiff();

    // Resume: arguments come from the checkpoint.
    let (a, restored, dir) = match &a.resume {
        Some(p) => {
            let last = if p.is_empty() { a.project.join(&a.name).join("weights/last.safetensors") } else { PathBuf::from(p) };
            let r = checkpoint::load(&last)?;
            let mut saved: TrainArgs = serde_json::from_value(r.state.args.clone()).context("bad saved arguments")?;
            saved.resume = None;
            saved.quiet |= a.quiet;
            let ignored = ignored_on_resume(&a, p.is_empty())?;
            if !ignored.is_empty() {
                eprintln!(
                    "warning: --resume continues {} with its own settings; ignored: {}",
                    last.display(),
                    ignored.join(", ")
                );
            }
            let dir = last.parent().and_then(|p| p.parent()).map(Path::to_path_buf).context("bad checkpoint path")?;
            (saved, Some(r), dir)
        }
        None => {
            let dir = run_dir(&a.project, &a.name, a.exist_ok);
            (a, None, dir)
        }
    };
    let a = TrainArgs { imgsz: crate::options::stride_multiple(a.imgsz), ..a };
    let say = |msg: String| {
        if !a.quiet {
            eprintln!("{msg}");
        }
    };
    // Inputs are checked before the run folder exists, so a typo leaves nothing behind.
    let data = DataConfig::load(a.data_yaml()?)?;
    check_inputs(&a, &plain)?;
    let _lock = run_dir::claim(&dir)?;
    let wdir = dir.join("weights");
    let (last_path, best_path) = (wdir.join("last.safetensors"), wdir.join("best.safetensors"));
    std::fs::write(dir.join("args.yaml"), serde_yaml::to_string(&a)?)?;

    // Data.
    let nc = data.names.len();
    let cache_dir = dir.join("cache");
    let mut train_ds = Dataset::scan(&data.train, nc, Some(&cache_dir)).context("training images")?;
    if a.fraction < 1.0 {
        let keep = ((train_ds.items.len() as f64 * a.fraction).round() as usize).max(1);
        train_ds.items.truncate(keep);
    }
    let val_ds = Dataset::scan(&data.val, nc, Some(&cache_dir)).context("validation images")?;
    let unlabeled = unlabeled::prepare(&a, &data, &mut train_ds, &val_ds, aug_config(&a), &say)?;
    let n_train = train_ds.items.len();
    let train_ds = Arc::new(train_ds);
    let val_ds = Arc::new(val_ds);

    // Model.
    // --seed fixes the initial weights (and the distiller's adapters and MGD masks) as well as
    // the data order, so two runs that differ in one setting start from the same model. The
    // backend's generator is process-wide: trainings started together in one process (threads,
    // tests) take turns from seeding to the last initialised tensor.
    let init_turn = INIT_TURN.lock().unwrap_or_else(|e| e.into_inner());
    plain.seed(a.seed);
    let mut model = initial_model(&a, &data.names, &plain)?;
    let head = model.head();
    let mut loss_cfg = LossConfig::new(nc, head.reg_max, head.strides.clone());
    loss_cfg.gains = Gains { boxes: a.box_gain, cls: a.cls_gain, dfl: a.dfl_gain };
    let stride = model.max_stride().max(32);

    // Optimizer (Ultralytics' `auto` rule; MuSGD of 8.4 is replaced by SGD).
    let accumulate_nominal = ((a.nbs as f64 / a.batch as f64).round() as usize).max(1);
    let weight_decay = a.weight_decay * a.batch as f64 * accumulate_nominal as f64 / a.nbs as f64;
    let nb = n_train.div_ceil(a.batch);
    let (kind, lr0, momentum, warmup_bias_lr) = match a.optimizer {
        OptimizerKind::Auto => {
            let iters = n_train.div_ceil(a.batch.max(a.nbs)) * a.epochs;
            if iters > 10_000 {
                (OptimizerKind::Sgd, 0.01, 0.9, 0.0)
            } else {
                let lr = (0.002 * 5.0 / (4.0 + nc as f64) * 1e6).round() / 1e6;
                (OptimizerKind::Adamw, lr, 0.9, 0.0)
            }
        }
        k => (k, a.lr0, a.momentum, a.warmup_bias_lr),
    };
    let method = match kind {
        OptimizerKind::Adamw => Method::AdamW { beta1: momentum, beta2: 0.999, eps: 1e-8 },
        _ => Method::Sgd { nesterov: true },
    };
    let mut opt = Optimizer::new(method, weight_decay);
    say(format!("optimizer: {kind:?}(lr={lr0}, momentum={momentum}) with parameter groups: weights (decay={weight_decay:.6}), norm weights and biases (no decay)"));

    let mut ema = Ema::new(&model, 0);
    let mut start_epoch = 0;
    let mut best_fitness = f64::NEG_INFINITY;
    let mut best_map = None;
    // A new run (even in a reused folder) starts a new results.csv; a resumed one continues it.
    let mut results = if restored.is_some() { Results::load(&dir.join("results.csv"))? } else { Results::default() };
    let mut restored_hook = Vec::new();
    // Accumulation may span an epoch's end: the pending gradients and the last step go on.
    let mut grads = GradStore::default();
    let mut last_opt_step: i64 = -1;
    // results.csv's time is the run's training time: a resumed run adds to what was done.
    let mut time_before = 0.0;
    if let Some(r) = restored {
        restored_hook = r.hook;
        last_opt_step = r.state.last_opt_step;
        model::apply_tensors(&mut model, r.model, &plain).context("resume: training weights")?;
        ema = Ema::new(&model, r.state.ema_updates);
        model::apply_tensors(&mut ema.model, r.ema, &plain).context("resume: EMA weights")?;
        let to_map = |v: Vec<(String, crate::weights::HostTensor)>| {
            v.into_iter().map(|(n, t)| (n, Tensor::<1>::from_data(TensorData::new(t.data, t.shape), &plain))).collect()
        };
        opt.m = to_map(r.m);
        opt.v = to_map(r.v);
        grads.grads = to_map(r.grads);
        opt.steps = r.state.optimizer_steps;
        start_epoch = r.state.epoch + 1;
        best_fitness = r.state.best_fitness;
        results.keep_epochs(start_epoch);
        time_before = results.column("time").and_then(|t| t.last().copied()).unwrap_or(0.0);
        if start_epoch >= a.epochs {
            bail!("{} already finished all {} epochs", dir.display(), a.epochs);
        }
        eprintln!("Resuming {} from epoch {}", dir.display(), start_epoch + 1);
    }
    let mut distiller = match &a.distill.teacher {
        Some(_) => {
            let mut d = crate::distill::distiller::Distiller::new(&a.distill, &model, a.imgsz, a.epochs, a.close_mosaic, &plain)?;
            d.mask_seed = a.seed;
            // With unlabeled images the teacher is their only teacher: by default it teaches
            // the whole run rather than stopping when mosaic closes.
            if unlabeled.is_some() && a.distill.distill_stop_epoch.is_none() {
                d.stop_epoch = a.epochs;
            }
            let report = d.report(a.imgsz);
            say(report.trim_end().to_string());
            make_trainable(&mut d);
            if !restored_hook.is_empty() {
                checkpoint::restore_trainable(&mut d, std::mem::take(&mut restored_hook))?;
            }
            Some(d)
        }
        None => None,
    };
    drop(init_turn);
    if distiller.is_some() && hook.is_some() {
        bail!("a distillation teacher and a custom step hook cannot be combined");
    }
    let mut hook: Option<&mut dyn StepHook> = match distiller.as_mut() {
        Some(d) => Some(d as &mut dyn StepHook),
        None => hook.map(|h| h as &mut dyn StepHook),
    };
    make_trainable(&mut model);

    let train_loader = TrainLoader::new(train_ds.clone(), a.imgsz, a.batch, aug_config(&a), a.workers, a.seed)?;
    let val_loader = ValLoader::new(val_ds.clone(), a.imgsz, a.batch * 2, stride, a.workers)?;
    let nw = warmup_iters(a.warmup_epochs, a.epochs, nb);
    let taps = hook.as_ref().map(|h| h.taps()).unwrap_or_default();
    // The arguments saved with each checkpoint (plus what calibration finds).
    let mut saved_args = serde_json::to_value(&a)?;
    let mut final_val = None;
    let mut epochs_done = start_epoch;
    let mut stale = 0usize;
    let mut nonfinite = 0usize;
    let mut total_batches = 0usize;
    let nms_cfg = NmsConfig::val();
    say(format!(
        "Training {} on {} train / {} val images at {}, {} epochs, batch {} ({} batches/epoch), results in {}",
        a.model_source()?,
        n_train,
        val_ds.items.len(),
        a.imgsz,
        a.epochs,
        a.batch,
        nb,
        dir.display()
    ));

    for epoch in start_epoch..a.epochs {
        let t_epoch = Instant::now();
        let mosaic_on = epoch + a.close_mosaic < a.epochs;
        if !mosaic_on && epoch + a.close_mosaic == a.epochs {
            say("Closing dataloader mosaic".into());
        }
        let lf = lr_factor(epoch, a.epochs, a.lrf, a.cos_lr);
        let bar = if a.quiet { ProgressBar::hidden() } else { ProgressBar::new(nb as u64) };
        bar.set_style(
            ProgressStyle::with_template("{prefix} {bar:20} {pos}/{len} [{elapsed}<{eta}, {per_sec}] {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_prefix(format!("{:>3}/{}", epoch + 1, a.epochs));
        let mut mean: Vec<(String, f64)> = Vec::new();
        let mut lrs = [0f64; 3];
        // Unlabeled images join this epoch's batches while the hook (the teacher) uses them.
        let mut unlabeled_batches = match (&unlabeled, hook.as_deref()) {
            (Some(u), Some(h)) if h.wants_unlabeled(epoch) => Some(u.loader.epoch_batches(epoch, mosaic_on, nb)),
            _ => None,
        };
        for (i, batch) in train_loader.epoch(epoch, mosaic_on).enumerate() {
            let mut batch: Batch = batch;
            if let Some(u) = unlabeled_batches.as_mut().and_then(|it| it.next()) {
                batch.append_unlabeled(u);
            }
            let ni = (i + nb * epoch) as i64;
            // Warm-up: accumulation, learning rates and momentum ramp up.
            let mut accumulate = accumulate_nominal;
            let mut mom = momentum;
            let base = lr0 * lf;
            lrs = [base; 3];
            if (ni as usize) <= nw {
                let x = ni as f64;
                accumulate = (interp(x, 0.0, nw as f64, 1.0, a.nbs as f64 / a.batch as f64).round() as usize).max(1);
                lrs = [interp(x, 0.0, nw as f64, 0.0, base), interp(x, 0.0, nw as f64, 0.0, base), interp(x, 0.0, nw as f64, warmup_bias_lr, base)];
                if matches!(method, Method::Sgd { .. }) {
                    mom = interp(x, 0.0, nw as f64, a.warmup_momentum, momentum);
                }
            }
            let pos = StepPos { epoch, epochs: a.epochs, batch: i, batches: nb };
            if let Some(h) = hook.as_deref_mut() {
                if let Some(fraction) = h.calibration_pending() {
                    let (det, terms) = gradient_norms(&mut model, &loss_cfg, &batch, &ad, &taps, h, pos);
                    let scales = h.calibrate(det, &terms);
                    let shown: Vec<String> = terms
                        .iter()
                        .zip(&scales)
                        .map(|((n, g), (_, s))| format!("{n} ×{s:.4} (gradient {g:.3e})"))
                        .collect();
                    eprintln!(
                        "calibrated distillation weights to {fraction} of the detection gradient ({det:.3e}) on the first batch: {}",
                        shown.join(", ")
                    );
                    saved_args["distill"]["calibrated"] = serde_json::to_value(&scales)?;
                    std::fs::write(dir.join("args.yaml"), serde_yaml::to_string(&saved_args)?)?;
                }
            }
            let items = forward_backward(&mut model, &loss_cfg, &batch, &ad, &taps, hook.as_deref_mut(), pos, &mut grads);
            // A non-finite loss would turn every weight into NaN: its gradients are dropped, and
            // a run that keeps producing them stops with an error (the checkpoints stay as they are).
            if let Some((name, v)) = items.iter().find(|(_, v)| !v.is_finite()) {
                grads.clear();
                nonfinite += 1;
                eprintln!("warning: {name} is {v} at epoch {} batch {}; its gradients are dropped", epoch + 1, i + 1);
                if nonfinite >= MAX_NONFINITE_BATCHES {
                    bail!(
                        "training diverged: a loss was not finite in {MAX_NONFINITE_BATCHES} consecutive batches (last: {name} = {v} at epoch {}); \
                         the checkpoints in {} are those of the last finished epoch",
                        epoch + 1,
                        wdir.display()
                    );
                }
                continue;
            }
            nonfinite = 0;
            if ni - last_opt_step >= accumulate as i64 {
                grads.clip_global_norm(10.0);
                let hp = StepParams { lr: lrs, momentum: mom };
                opt.tick();
                opt.apply(&mut model, &grads, hp);
                if let Some(t) = hook.as_deref_mut().and_then(|h| h.trainable()) {
                    opt.apply(t, &grads, hp);
                }
                grads.clear();
                ema.update(&mut model);
                last_opt_step = ni;
            }
            // Running means for display and results.csv.
            if mean.is_empty() {
                mean = items.iter().map(|(n, _)| (n.clone(), 0.0)).collect();
            }
            for (k, (_, v)) in items.iter().enumerate() {
                if let Some(m) = mean.get_mut(k) {
                    m.1 = (m.1 * i as f64 + v) / (i + 1) as f64;
                }
            }
            let shown: Vec<String> = mean.iter().map(|(n, v)| format!("{n} {v:.4}")).collect();
            bar.set_message(format!("{}  inst {}  size {}", shown.join("  "), batch.cls.len(), a.imgsz));
            bar.inc(1);
            total_batches += 1;
            if a.max_batches.is_some_and(|m| total_batches >= m) {
                break;
            }
        }
        bar.finish();
        for (n, v) in &mean {
            if !v.is_finite() {
                eprintln!("warning: {n} is not finite in epoch {}", epoch + 1);
            }
        }

        let last_epoch = epoch + 1 == a.epochs || a.max_batches.is_some_and(|m| total_batches >= m);
        let val = if a.val || last_epoch { Some(validate(&ema.model, &val_loader, &nms_cfg)?) } else { None };
        let fitness = val.as_ref().map(|v| v.metrics.fitness).unwrap_or(f64::NEG_INFINITY);
        let mut row: Vec<(String, f64)> = vec![("epoch".into(), epoch as f64 + 1.0), ("time".into(), time_before + t_start.elapsed().as_secs_f64())];
        row.extend(mean.iter().map(|(n, v)| (format!("train/{n}"), *v)));
        if let Some(v) = &val {
            let m = &v.metrics;
            row.extend([
                ("metrics/precision(B)".to_string(), m.precision),
                ("metrics/recall(B)".to_string(), m.recall),
                ("metrics/mAP50(B)".to_string(), m.map50),
                ("metrics/mAP50-95(B)".to_string(), m.map),
                ("val/box_loss".to_string(), v.loss[0] as f64),
                ("val/cls_loss".to_string(), v.loss[1] as f64),
                ("val/dfl_loss".to_string(), v.loss[2] as f64),
            ]);
            say(format!(
                "{:>9} {} images, {} instances: P {:.3}  R {:.3}  mAP50 {:.3}  mAP50-95 {:.3}  ({:.1} ms/image)",
                "val:", v.images, v.instances, m.precision, m.recall, m.map50, m.map, v.ms_per_image
            ));
        }
        row.extend((0..3).map(|g| (format!("lr/pg{g}"), lrs[g])));
        results.push(&row);

        // Checkpoints: best by fitness, last always (with resume state).
        let improved = fitness > best_fitness;
        if improved {
            best_fitness = fitness;
            best_map = val.as_ref().map(|v| (v.metrics.map50, v.metrics.map));
            stale = 0;
        } else {
            stale += 1;
        }
        if !model::all_finite(&mut ema.model) {
            bail!(
                "the weights are not finite after epoch {}; the checkpoints in {} are kept as they were",
                epoch + 1,
                wdir.display()
            );
        }
        let state = checkpoint::TrainState {
            epoch,
            best_fitness,
            ema_updates: ema.updates,
            optimizer_steps: opt.steps,
            last_opt_step,
            args: saved_args.clone(),
        };
        let mut plain_model = model.valid();
        let hook_params = hook.as_deref_mut().and_then(|h| h.trainable());
        let resume = checkpoint::ResumeState { model: &mut plain_model, optimizer: &opt, state: &state, grads: &grads, hook: hook_params };
        // `best`, then results.csv, then `last`: a crash between them leaves `last` one epoch
        // behind (resume trains that epoch again and rewrites `best`), never `best` behind results.csv.
        if improved || !best_path.exists() {
            checkpoint::save(&best_path, &ema.model, epoch, None)?;
        }
        save_results(&results, &dir)?;
        checkpoint::save(&last_path, &ema.model, epoch, Some(resume))?;
        if a.quiet {
            // one line per epoch, prefixed with the run name (runs may share a terminal)
            let m = val.as_ref().map(|v| format!("mAP50 {:.3}  mAP50-95 {:.3}", v.metrics.map50, v.metrics.map)).unwrap_or_default();
            eprintln!("[{}] epoch {}/{} {m} ({:.1}s)", a.name, epoch + 1, a.epochs, t_epoch.elapsed().as_secs_f64());
        } else {
            eprintln!("epoch {} done in {:.1}s", epoch + 1, t_epoch.elapsed().as_secs_f64());
        }
        epochs_done = epoch + 1;
        final_val = val;
        if last_epoch {
            break;
        }
        if stale >= a.patience {
            eprintln!("Stopping early: no improvement in {} epochs", a.patience);
            break;
        }
    }
    if let Some(v) = &final_val {
        if let Err(e) = crate::eval::validate::plot_pr(v, &data.names, &dir.join("PR_curve.png")) {
            eprintln!("warning: {e:#}");
        }
    }
    Ok(TrainSummary {
        run_dir: dir,
        best: best_path,
        last: last_path,
        final_val,
        best_map,
        epochs_done,
        first_epoch: start_epoch + 1,
        seconds: t_start.elapsed().as_secs_f64(),
    })
}

#[cfg(test)]
mod tests {
    use super::{ignored_on_resume, TrainArgs};

    #[test]
    fn options_next_to_resume_are_named_as_ignored() {
        let a = TrainArgs::from_flags(&["--resume", "r/w/last.safetensors", "--epochs", "50", "--model", "m.yaml", "--teacher", "t.pt", "--quiet"]).unwrap();
        assert_eq!(ignored_on_resume(&a, false).unwrap(), ["epochs", "model", "teacher"]);
        // --project/--name locate the run when --resume has no path.
        let a = TrainArgs::from_flags(&["--resume", "--project", "p", "--name", "n"]).unwrap();
        assert!(ignored_on_resume(&a, true).unwrap().is_empty());
        assert_eq!(ignored_on_resume(&a, false).unwrap(), ["name", "project"]);
    }
}
