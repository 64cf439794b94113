//! The trainer: set up once, then per epoch train its batches (warm-up, accumulation,
//! optimizer step, EMA), validate the EMA, record results.csv and write the checkpoints.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use burn::module::Module;
use burn::tensor::Device;
use indicatif::{ProgressBar, ProgressStyle};

use super::checkpoint::{self, Restored};
use super::ema::Ema;
use super::hook::{Extension, RunContext, StepHook, StepPos};
use super::optim::{GradStore, Method, Optimizer, StepParams};
use super::run_dir::{self, RunLock};
use super::schedule::{interp, lr_factor, warmup_iters};
use super::setup::{self, OptimPlan, INIT_TURN};
use super::step::{forward_backward, gradient_norms, make_trainable, StepItems};
use super::unlabeled;
use super::world::World;
use super::{TrainArgs, TrainSummary};
use crate::data::dataset::{DataConfig, Dataset};
use crate::data::loader::{worker_count, Batch, TrainLoader, ValLoader};
use crate::eval::validate::{validate_full, ValResult};
use crate::infer::nms::NmsConfig;
use crate::kernels::{bf16, Arithmetic};
use crate::loss::LossConfig;
use crate::model::named::{self, Fit};
use crate::model::{self, DetectionModel};
use crate::report::mosaic::{self, ValBatch};
use crate::report::{val_plots, Results};

/// Consecutive batches with a non-finite loss after which training stops.
const MAX_NONFINITE_BATCHES: usize = 3;

/// With targets assigned on the device the loss items are read back once per this many
/// steps (and at the epoch's end), so a GPU's queue keeps running in between.
const READ_EVERY: usize = 10;

/// A step's loss items: read back, or still on the device.
enum Recorded {
    Host(Vec<(String, f64)>),
    Pending(StepItems),
}

/// Where the run stands: what resume restores and what the epochs update.
#[derive(Default)]
struct Progress {
    start_epoch: usize,
    best_fitness: f64,
    best_map: Option<(f64, f64)>,
    results: Results,
    /// Accumulation may span an epoch's end: the pending gradients and the last step go on.
    grads: GradStore,
    last_opt_step: i64,
    /// results.csv's time is the run's training time: a resumed run adds to what was done.
    time_before: f64,
    stale: usize,
    nonfinite: usize,
    total_batches: usize,
    epochs_done: usize,
    final_val: Option<ValResult>,
    /// The last validation's first batches, for val_batch*_{labels,pred}.jpg.
    final_batches: Vec<ValBatch>,
}

impl Progress {
    fn new(results: Results) -> Self {
        Progress { results, best_fitness: f64::NEG_INFINITY, last_opt_step: -1, ..Default::default() }
    }
}

pub struct Trainer {
    a: TrainArgs,
    dir: PathBuf,
    /// Rank 0 holds the run folder's lock; the other ranks write nothing.
    _lock: Option<RunLock>,
    world: World,
    plain: Device,
    ad: Device,
    model: DetectionModel,
    ema: Ema,
    opt: Optimizer,
    plan: OptimPlan,
    loss_cfg: LossConfig,
    hook: Option<Box<dyn StepHook>>,
    /// The extension's settings key in args.yaml (where the hook's changed settings go).
    hook_section: String,
    taps: Vec<usize>,
    /// The arithmetic of the step's convolutions (`--amp`).
    arith: Arithmetic,
    train_loader: TrainLoader,
    val_loader: ValLoader,
    /// The unlabeled images' loader (its batch joins each labeled batch).
    unlabeled: Option<TrainLoader>,
    /// Batches per epoch and warm-up iterations.
    nb: usize,
    nw: usize,
    /// The arguments saved with each checkpoint (the extension's settings included).
    saved_args: serde_json::Value,
    p: Progress,
    t_start: Instant,
}

/// The data of a run: training and validation images, and the unlabeled ones.
struct RunData {
    config: DataConfig,
    train: Arc<Dataset>,
    val: Arc<Dataset>,
    unlabeled: Option<TrainLoader>,
}

impl Trainer {
    /// Everything before the first step. Inputs are checked before the run folder exists, so a
    /// typo leaves nothing behind.
    pub fn setup(a: TrainArgs, ext: Option<&mut dyn Extension>) -> Result<Trainer> {
        let t_start = Instant::now();
        let plain = crate::default_device();
        let ad = plain.clone().autodiff();
        let world = World::from_env()?;
        let main = world.is_main();
        let (a, restored, dir) = setup::resolve(a)?;
        let a = TrainArgs { imgsz: crate::options::stride_multiple(a.imgsz), quiet: a.quiet || !main, ..a };
        a.check(world.size())?;
        let config = DataConfig::load(a.data_yaml()?)?;
        setup::check_inputs(&a, ext.as_deref(), &plain)?;
        setup::check_run_folder(&a, ext.as_deref(), &dir)?;
        let lock = if main { Some(run_dir::claim(&dir)?) } else { None };
        let mut saved_args = serde_json::to_value(&a)?;
        if let Some(e) = ext.as_deref() {
            saved_args[e.name()] = e.settings()?;
        }
        if main {
            std::fs::write(dir.join("args.yaml"), serde_yaml::to_string(&saved_args)?)?;
        }
        let data = load_data(&a, config, main.then_some(dir.as_path()), ext.is_some())?;
        if main {
            draw_labels(&data.train, &data.config.names, &dir);
        }
        let nc = data.config.names.len();
        let n_train = data.train.items.len();
        if let (Some(w), true) = (a.amp.warning(crate::device::is_cpu(&plain)), main) {
            eprintln!("warning: {w}");
        }
        if let Some(w) = a.left_out_images(n_train, world.size() * a.shards)? {
            if main {
                eprintln!("warning: {w}");
            }
        }

        // --seed fixes the initial weights (and the extension's random tensors) as well as the
        // data order, so two runs that differ in one setting start from the same model.
        let init_turn = INIT_TURN.lock().unwrap_or_else(|e| e.into_inner());
        let host = crate::device::init_device(&plain);
        host.seed(a.seed);
        plain.seed(a.seed);
        let mut model = crate::model::walk::drawn_to(setup::initial_model(&a, &data.config.names, &host)?, &plain);
        model.train_imgsz = Some(a.imgsz);
        let head = model.head();
        let task = crate::task::of(head);
        task.check_labels(&data.train).context("--data")?;
        task.check_labels(&data.val).context("--data")?;
        let mut loss_cfg = LossConfig::new(nc, head.reg_max, head.strides.clone());
        loss_cfg.gains = a.gains;
        loss_cfg.on_device = a.assign_on.on_device(&plain);
        loss_cfg.task = task;
        let plan = setup::plan_optimizer(&a, n_train, nc);
        let opt = Optimizer::new(plan.method, plan.weight_decay);
        let stride = model.max_stride().max(32);
        let nb = n_train.div_ceil(a.batch);
        let (rank, ranks, here) = (world.rank(), world.size(), world.local_size());
        let val_workers = worker_count(a.workers, data.val.items.len().div_ceil(a.batch * 2), here);
        let mut t = Trainer {
            train_loader: TrainLoader::new(data.train.clone(), a.imgsz, a.batch, a.aug, a.workers, a.seed)?
                .with_masks(task.mask_ratio())
                .for_rank(rank, ranks, here),
            val_loader: ValLoader::new(data.val.clone(), a.imgsz, a.batch * 2, stride, val_workers)?.with_masks(task.mask_ratio()),
            nw: warmup_iters(a.warmup_epochs, a.epochs, nb),
            nb,
            ema: Ema::new(&model, 0),
            model,
            opt,
            plan,
            loss_cfg,
            hook: None,
            hook_section: ext.as_deref().map(|e| e.name().to_string()).unwrap_or_default(),
            taps: Vec::new(),
            arith: a.amp.arithmetic(),
            unlabeled: data.unlabeled.map(|u| u.for_rank(rank, ranks, here)),
            saved_args,
            // A new run (even in a reused folder) starts a new results.csv; a resumed one continues it.
            p: Progress::new(if restored.is_some() && main { Results::load(&dir.join("results.csv"))? } else { Results::default() }),
            dir,
            _lock: lock,
            world,
            plain,
            ad,
            a,
            t_start,
        };
        let restored_hook = match restored {
            Some(r) => t.restore(r)?,
            None => Vec::new(),
        };
        if let Some(e) = ext {
            t.attach(e, restored_hook)?;
        }
        drop(init_turn);
        make_trainable(&mut t.model);
        t.announce(n_train, data.val.items.len())?;
        Ok(t)
    }

    fn announce(&self, n_train: usize, n_val: usize) -> Result<()> {
        let (a, plan) = (&self.a, &self.plan);
        self.say(format!(
            "optimizer: {:?}(lr={}, momentum={}) with parameter groups: weights (decay={:.6}), norm weights and biases (no decay)",
            plan.kind, plan.lr0, plan.momentum, plan.weight_decay
        ));
        self.say(format!(
            "Training {} on {n_train} train / {n_val} val images at {}, {} epochs, batch {} ({} batches/epoch), results in {}",
            a.model_source()?,
            a.imgsz,
            a.epochs,
            a.batch,
            self.nb,
            self.dir.display()
        ));
        Ok(())
    }

    fn say(&self, msg: String) {
        if !self.a.quiet {
            eprintln!("{msg}");
        }
    }

    fn weights_dir(&self) -> PathBuf {
        self.dir.join("weights")
    }

    /// Puts back what `last` saved; returns the extension's tensors (restored once it is attached).
    fn restore(&mut self, r: Restored) -> Result<Vec<(String, crate::weights::HostTensor)>> {
        let plain = &self.plain;
        self.p.last_opt_step = r.state.last_opt_step;
        named::write(&mut self.model, r.model, plain, Fit::Strict).context("resume: training weights")?;
        self.ema = Ema::new(&self.model, r.state.ema_updates);
        named::write(&mut self.ema.model, r.ema, plain, Fit::Strict).context("resume: EMA weights")?;
        self.opt.m = named::write_flat(r.m, plain);
        self.opt.v = named::write_flat(r.v, plain);
        self.p.grads.grads = named::write_flat(r.grads, plain);
        if !self.world.is_main() {
            // rank 0 saved the ranks' pending gradients summed; it alone carries them on
            self.p.grads.clear();
        }
        self.opt.steps = r.state.optimizer_steps;
        self.p.start_epoch = r.state.epoch + 1;
        self.p.epochs_done = self.p.start_epoch;
        self.p.best_fitness = r.state.best_fitness;
        self.p.results.keep_epochs(self.p.start_epoch);
        self.p.time_before = self.p.results.column("time").and_then(|t| t.last().copied()).unwrap_or(0.0);
        if self.p.start_epoch >= self.a.epochs {
            bail!("{} already finished all {} epochs", self.dir.display(), self.a.epochs);
        }
        eprintln!("Resuming {} from epoch {}", self.dir.display(), self.p.start_epoch + 1);
        Ok(r.hook)
    }

    /// Attaches the extension's step hook to the student; its tensors train with the model.
    fn attach(&mut self, ext: &mut dyn Extension, restored: Vec<(String, crate::weights::HostTensor)>) -> Result<()> {
        let ctx = RunContext { student: &self.model, args: &self.a, device: &self.plain, unlabeled: self.unlabeled.is_some() };
        let mut hook = ext.attach(&ctx)?;
        if let Some(t) = hook.trainable() {
            if !restored.is_empty() {
                named::write(t, restored, &self.plain, Fit::Strict).context("resume: the extension's tensors (different distillation settings?)")?;
            }
            make_trainable(t);
        }
        self.taps = hook.taps();
        self.hook = Some(hook);
        Ok(())
    }

    /// Trains the remaining epochs; stops early when fitness stalls for `--patience` epochs.
    pub fn run(mut self) -> Result<TrainSummary> {
        for epoch in self.p.start_epoch..self.a.epochs {
            let t_epoch = Instant::now();
            let (mean, lrs) = self.train_epoch(epoch)?;
            let last_epoch = epoch + 1 == self.a.epochs || self.a.max_batches.is_some_and(|m| self.p.total_batches >= m);
            let main = self.world.is_main();
            let mut batches = Vec::new();
            let val = if main && (self.a.val || last_epoch) {
                Some(validate_full(&self.ema.model, &self.val_loader, &NmsConfig::val(), None, &mut ValBatch::keeper(&mut batches))?)
            } else {
                None
            };
            self.gather_pending_gradients()?;
            if main {
                self.record(epoch, &mean, lrs, val.as_ref());
                self.checkpoint(epoch, val.as_ref())?;
                self.report_epoch(epoch, val.as_ref(), t_epoch);
            }
            self.p.epochs_done = epoch + 1;
            if val.is_some() {
                self.p.final_val = val;
                self.p.final_batches = batches;
            }
            if last_epoch {
                break;
            }
            if self.world.main_says(self.p.stale >= self.a.patience) {
                self.say(format!("Stopping early: no improvement in {} epochs", self.a.patience));
                break;
            }
        }
        self.finish()
    }

    fn progress_bar(&self, epoch: usize) -> ProgressBar {
        let bar = if self.a.quiet { ProgressBar::hidden() } else { ProgressBar::new(self.nb as u64) };
        bar.set_style(
            ProgressStyle::with_template("{prefix} {bar:20} {pos}/{len} [{elapsed}<{eta}, {per_sec}] {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        bar.set_prefix(format!("{:>3}/{}", epoch + 1, self.a.epochs));
        bar
    }

    /// One pass over the labeled images; returns the mean loss items and the last learning rates.
    fn train_epoch(&mut self, epoch: usize) -> Result<(Vec<(String, f64)>, [f64; 3])> {
        let (a, nb) = (&self.a, self.nb);
        let mosaic_on = epoch + a.close_mosaic < a.epochs;
        if !mosaic_on && epoch + a.close_mosaic == a.epochs {
            self.say("Closing dataloader mosaic".into());
        }
        let bar = self.progress_bar(epoch);
        let mut mean: Vec<(String, f64)> = Vec::new();
        let mut lrs = [0f64; 3];
        let mut pending: Vec<(usize, StepItems)> = Vec::new();
        // Unlabeled images join this epoch's batches while the hook (the teacher) uses them.
        let mut unlabeled_batches = match (&self.unlabeled, self.hook.as_deref()) {
            (Some(u), Some(h)) if h.wants_unlabeled(epoch) => Some(u.epoch_batches(epoch, mosaic_on, nb)),
            _ => None,
        };
        for (i, mut batch) in self.train_loader.epoch(epoch, mosaic_on).enumerate() {
            if let Some(u) = unlabeled_batches.as_mut().and_then(|it| it.next()) {
                batch.append_unlabeled(u);
            }
            self.draw_train_batch(&batch, epoch, i);
            let pos = StepPos { epoch, epochs: self.a.epochs, batch: i, batches: nb };
            let (recorded, step_lrs) = self.train_batch(&batch, pos)?;
            lrs = step_lrs;
            match recorded {
                Some(Recorded::Host(items)) => add_to_mean(&mut mean, i, &items),
                Some(Recorded::Pending(items)) => pending.push((i, items)),
                None => continue,
            }
            if pending.len() >= READ_EVERY {
                self.read_pending(std::mem::take(&mut pending), &mut mean)?;
            }
            // Running means for display and results.csv.
            let shown: Vec<String> = mean.iter().map(|(n, v)| format!("{n} {v:.4}")).collect();
            bar.set_message(format!("{}  inst {}  size {}", shown.join("  "), batch.cls.len(), self.a.imgsz));
            bar.inc(1);
            self.p.total_batches += 1;
            if self.a.max_batches.is_some_and(|m| self.p.total_batches >= m) {
                break;
            }
        }
        self.read_pending(pending, &mut mean)?;
        bar.finish();
        for (n, v) in &mean {
            if !v.is_finite() {
                eprintln!("warning: {n} is not finite in epoch {}", epoch + 1);
            }
        }
        Ok((mean, lrs))
    }

    /// Reads the loss items of the steps since the last read (one read-back) into the running
    /// means. A step whose loss was not finite had its gradients dropped on the device; a run
    /// that keeps producing them stops.
    fn read_pending(&mut self, pending: Vec<(usize, StepItems)>, mean: &mut Vec<(String, f64)>) -> Result<()> {
        let (index, steps): (Vec<usize>, Vec<StepItems>) = pending.into_iter().unzip();
        for (i, items) in index.into_iter().zip(StepItems::read_all(steps)) {
            if self.count_nonfinite(&items, i)? {
                continue;
            }
            add_to_mean(mean, i, &items);
        }
        Ok(())
    }

    /// Whether a step's loss was not finite (warned, counted); an error after
    /// [`MAX_NONFINITE_BATCHES`] of them in a row.
    fn count_nonfinite(&mut self, items: &[(String, f64)], batch: usize) -> Result<bool> {
        let Some((name, v)) = items.iter().find(|(_, v)| !v.is_finite()) else {
            self.p.nonfinite = 0;
            return Ok(false);
        };
        self.p.nonfinite += 1;
        let epoch = self.p.epochs_done + 1;
        eprintln!("warning: {name} is {v} at epoch {epoch} batch {}; its gradients are dropped", batch + 1);
        if self.p.nonfinite >= MAX_NONFINITE_BATCHES {
            bail!(
                "training diverged: a loss was not finite in {MAX_NONFINITE_BATCHES} consecutive batches (last: {name} = {v} at epoch {epoch}); \
                 the checkpoints in {} are those of the last finished epoch",
                self.weights_dir().display()
            );
        }
        Ok(true)
    }

    /// `train_batch{ni}.jpg` for the first three batches of the run and of the first epoch
    /// without mosaic (ni = the global batch index), as Ultralytics draws them.
    fn draw_train_batch(&self, batch: &Batch, epoch: usize, i: usize) {
        if !self.world.is_main() {
            return;
        }
        let ni = i + self.nb * epoch;
        let close = self.a.epochs.saturating_sub(self.a.close_mosaic) * self.nb;
        if i < 3 && (ni < 3 || (self.a.close_mosaic > 0 && ni >= close && ni < close + 3)) {
            let path = self.dir.join(format!("train_batch{ni}.jpg"));
            if let Err(e) = mosaic::save(&mosaic::label_tiles(batch), &self.model.names, &path) {
                eprintln!("warning: could not draw {}: {e:#}", path.display());
            }
        }
    }

    /// Warm-up at iteration `ni`: batches to accumulate, learning rates of the three parameter
    /// groups and momentum ramp up from their starting values.
    fn schedule(&self, ni: usize, lf: f64) -> (usize, [f64; 3], f64) {
        let (plan, nw) = (&self.plan, self.nw as f64);
        let base = plan.lr0 * lf;
        // no warm-up iterations (--warmup-epochs 0, or a one-epoch run): none at all, as
        // Ultralytics' `if nw and ni <= nw` (iteration 0 is not a warm-up step with lr 0)
        if self.nw == 0 || ni > self.nw {
            return (plan.accumulate, [base; 3], plan.momentum);
        }
        let x = ni as f64;
        let accumulate = (interp(x, 0.0, nw, 1.0, self.a.nbs as f64 / self.a.batch as f64).round() as usize).max(1);
        let lrs = [interp(x, 0.0, nw, 0.0, base), interp(x, 0.0, nw, 0.0, base), interp(x, 0.0, nw, plan.warmup_bias_lr, base)];
        let momentum = match plan.method {
            Method::Sgd { .. } => interp(x, 0.0, nw, self.a.warmup_momentum, plan.momentum),
            _ => plan.momentum,
        };
        (accumulate, lrs, momentum)
    }

    /// Forward and backward of one batch, and an optimizer step when enough gradients have
    /// accumulated. Returns the loss items (None when the batch was left out, or its loss,
    /// read at once, was not finite: its gradients are dropped) and the learning rates.
    fn train_batch(&mut self, batch: &Batch, pos: StepPos) -> Result<(Option<Recorded>, [f64; 3])> {
        let ni = pos.batch + self.nb * pos.epoch;
        let (accumulate, lrs, momentum) = self.schedule(ni, lr_factor(pos.epoch, self.a.epochs, self.a.lrf, self.a.cos_lr));
        if self.train_loader.batch_len(pos.batch) < self.world.size() * self.a.shards {
            // a last batch with fewer images than shards: it is left out, as no shard may be empty
            return Ok((None, lrs));
        }
        self.measure_gradients_if_asked(batch, pos)?;
        let recorded = self.forward_backward_shards(batch, pos)?;
        // A non-finite loss would turn every weight into NaN: its gradients are dropped, and
        // a run that keeps producing them stops with an error (the checkpoints stay as they are).
        if let Recorded::Host(items) = &recorded {
            if self.count_nonfinite(items, pos.batch)? {
                self.p.grads.clear();
                return Ok((None, lrs));
            }
        }
        if ni as i64 - self.p.last_opt_step >= accumulate as i64 {
            self.optimizer_step(StepParams { lr: lrs, momentum })?;
            self.p.last_opt_step = ni as i64;
        }
        Ok((Some(recorded), lrs))
    }

    /// Whether loss items stay on the device between reads (targets assigned there, one process).
    fn deferred(&self) -> bool {
        self.loss_cfg.on_device && self.world.size() == 1
    }

    /// Forward and backward of this process's shards of `batch` (one unless --shards), the
    /// gradients added up; returns the loss items averaged over the shards of all ranks.
    fn forward_backward_shards(&mut self, batch: &Batch, pos: StepPos) -> Result<Recorded> {
        let (n, guard) = (self.a.shards, self.deferred());
        let mut sum: Option<StepItems> = None;
        for k in 0..n {
            let shard = (n > 1).then(|| batch.shard(k, n));
            let b = shard.as_ref().unwrap_or(batch);
            let it = bf16::with(self.arith, || {
                forward_backward(&mut self.model, &self.loss_cfg, b, &self.ad, &self.taps, self.hook.as_deref_mut(), Some(&self.ema.model), pos, &mut self.p.grads, guard)
            });
            sum = Some(match sum {
                Some(s) => s.add(it),
                None => it,
            });
        }
        let items = sum.expect("at least one shard");
        let items = if n > 1 { items.div(n as f64) } else { items };
        if guard {
            return Ok(Recorded::Pending(items));
        }
        let mut items = items.read();
        let mut sums: Vec<f64> = items.iter().map(|(_, v)| *v).collect();
        self.world.sum_same(&mut sums)?;
        let ranks = self.world.size() as f64;
        items.iter_mut().zip(sums).for_each(|(it, s)| it.1 = s / ranks);
        Ok(Recorded::Host(items))
    }

    /// Clipped gradients (summed over the ranks) applied to the model and the hook's tensors,
    /// then the EMA follows.
    fn optimizer_step(&mut self, hp: StepParams) -> Result<()> {
        self.world.sum_tensors(&mut self.p.grads.grads)?;
        if self.deferred() {
            self.p.grads.clip_global_norm_on_device(10.0);
        } else {
            self.p.grads.clip_global_norm(10.0);
        }
        self.opt.tick();
        self.opt.apply(&mut self.model, &self.p.grads, hp);
        if let Some(t) = self.hook.as_deref_mut().and_then(|h| h.trainable()) {
            self.opt.apply(t, &self.p.grads, hp);
        }
        self.p.grads.clear();
        self.ema.update(&mut self.model);
        Ok(())
    }

    /// Gradients still accumulating at an epoch's end are saved in `last` (resume carries the
    /// accumulation on): rank 0 holds their sum over the ranks, the others start from zero.
    fn gather_pending_gradients(&mut self) -> Result<()> {
        if self.world.size() > 1 {
            self.world.sum_tensors(&mut self.p.grads.grads)?;
            if !self.world.is_main() {
                self.p.grads.clear();
            }
        }
        Ok(())
    }

    /// When the hook asks, measures the gradient norms of the detection loss and of its terms
    /// on this batch, and saves the settings the hook derives from them.
    fn measure_gradients_if_asked(&mut self, batch: &Batch, pos: StepPos) -> Result<()> {
        let Some(h) = self.hook.as_deref_mut().filter(|h| h.wants_gradient_norms()) else { return Ok(()) };
        let (det, mut terms) = bf16::with(self.arith, || gradient_norms(&mut self.model, &self.loss_cfg, batch, &self.ad, &self.taps, h, Some(&self.ema.model), pos));
        // every rank measured its own images: all take the ranks' mean, so all decide alike
        let mut norms: Vec<f64> = std::iter::once(det).chain(terms.iter().map(|t| t.1)).map(f64::from).collect();
        self.world.sum_same(&mut norms)?;
        let mean = |v: f64| (v / self.world.size() as f64) as f32;
        terms.iter_mut().zip(&norms[1..]).for_each(|(t, &v)| t.1 = mean(v));
        if let Some(settings) = h.gradient_norms_measured(mean(norms[0]), &terms) {
            self.saved_args[self.hook_section.as_str()] = settings;
            if self.world.is_main() {
                std::fs::write(self.dir.join("args.yaml"), serde_yaml::to_string(&self.saved_args)?)?;
            }
        }
        Ok(())
    }

    /// Adds the epoch's row to results.csv (in memory) and updates the best fitness.
    fn record(&mut self, epoch: usize, mean: &[(String, f64)], lrs: [f64; 3], val: Option<&ValResult>) {
        let time = self.p.time_before + self.t_start.elapsed().as_secs_f64();
        let mut row: Vec<(String, f64)> = vec![("epoch".into(), epoch as f64 + 1.0), ("time".into(), time)];
        row.extend(mean.iter().map(|(n, v)| (format!("train/{n}"), *v)));
        if let Some(v) = val {
            let m = &v.metrics;
            row.extend(v.metric_columns());
            row.extend(self.loss_cfg.task.logged_names(self.loss_cfg.reg_max).iter().zip(&v.loss).map(|(n, &l)| (format!("val/{n}"), l as f64)));
            let own = v.task.as_ref().map(|t| format!("  {}: mAP50 {:.3}  mAP50-95 {:.3}", t.suffix, t.metrics.map50, t.metrics.map)).unwrap_or_default();
            self.say(format!(
                "{:>9} {} images, {} instances: P {:.3}  R {:.3}  mAP50 {:.3}  mAP50-95 {:.3}{own}  ({:.1} ms/image)",
                "val:", v.images, v.instances, m.precision, m.recall, m.map50, m.map, v.ms_per_image
            ));
        }
        row.extend((0..3).map(|g| (format!("lr/pg{g}"), lrs[g])));
        self.p.results.push(&row);
    }

    /// `best` (when fitness improved), then results.csv, then `last` with the resume state: a
    /// crash between them leaves `last` one epoch behind (resume trains that epoch again and
    /// rewrites `best`), never `best` behind results.csv.
    fn checkpoint(&mut self, epoch: usize, val: Option<&ValResult>) -> Result<()> {
        let fitness = val.map(ValResult::fitness).unwrap_or(f64::NEG_INFINITY);
        let improved = fitness > self.p.best_fitness;
        if improved {
            self.p.best_fitness = fitness;
            self.p.best_map = val.map(|v| (v.metrics.map50, v.metrics.map));
            self.p.stale = 0;
        } else {
            self.p.stale += 1;
        }
        let wdir = self.weights_dir();
        if !model::all_finite(&mut self.ema.model) {
            bail!("the weights are not finite after epoch {}; the checkpoints in {} are kept as they were", epoch + 1, wdir.display());
        }
        let state = checkpoint::TrainState {
            epoch,
            best_fitness: self.p.best_fitness,
            ema_updates: self.ema.updates,
            optimizer_steps: self.opt.steps,
            last_opt_step: self.p.last_opt_step,
            args: self.saved_args.clone(),
        };
        let best = wdir.join("best.safetensors");
        if improved || !best.exists() {
            checkpoint::save(&best, &self.ema.model, epoch, None)?;
        }
        save_results(&self.p.results, &self.dir)?;
        let mut plain_model = self.model.valid();
        let hook = self.hook.as_deref_mut().and_then(|h| h.trainable());
        let resume = checkpoint::ResumeState { model: &mut plain_model, optimizer: &self.opt, state: &state, grads: &self.p.grads, hook };
        checkpoint::save(&wdir.join("last.safetensors"), &self.ema.model, epoch, Some(resume))
    }

    fn report_epoch(&self, epoch: usize, val: Option<&ValResult>, t_epoch: Instant) {
        let secs = t_epoch.elapsed().as_secs_f64();
        if self.a.quiet {
            // one line per epoch, prefixed with the run name (runs may share a terminal)
            let m = val.map(|v| format!("mAP50 {:.3}  mAP50-95 {:.3}", v.metrics.map50, v.metrics.map)).unwrap_or_default();
            eprintln!("[{}] epoch {}/{} {m} ({secs:.1}s)", self.a.name, epoch + 1, self.a.epochs);
        } else {
            eprintln!("epoch {} done in {secs:.1}s", epoch + 1);
        }
    }

    fn finish(mut self) -> Result<TrainSummary> {
        let wdir = self.weights_dir();
        // As Ultralytics' final evaluation: the best weights validated once more (unless the last
        // validation was of them), and that validation's pictures drawn.
        if self.world.is_main() && self.p.final_val.is_some() && self.p.stale > 0 {
            let best = wdir.join("best.safetensors");
            let mut batches = Vec::new();
            let val = model::load(&best.to_string_lossy(), None, &self.plain)
                .and_then(|l| validate_full(&l.model, &self.val_loader, &NmsConfig::val(), None, &mut ValBatch::keeper(&mut batches)));
            match val {
                Ok(v) => (self.p.final_val, self.p.final_batches) = (Some(v), batches),
                Err(e) => eprintln!("warning: could not validate {}: {e:#}", best.display()),
            }
        }
        if let Some(v) = &self.p.final_val {
            if let Err(e) = val_plots::write(&self.dir, v, &self.p.final_batches, &self.model.names) {
                eprintln!("warning: could not draw the validation plots: {e:#}");
            }
        }
        Ok(TrainSummary {
            best: wdir.join("best.safetensors"),
            last: wdir.join("last.safetensors"),
            final_val: self.p.final_val,
            best_map: self.p.best_map,
            epochs_done: self.p.epochs_done,
            first_epoch: self.p.start_epoch + 1,
            seconds: self.t_start.elapsed().as_secs_f64(),
            run_dir: self.dir,
            rank: self.world.rank(),
            names: self.model.names.clone(),
        })
    }
}

/// The datasets of the run (the label scan's cache goes to the run folder).
fn load_data(a: &TrainArgs, config: DataConfig, dir: Option<&Path>, extended: bool) -> Result<RunData> {
    let nc = config.names.len();
    let cache_dir = dir.map(|d| d.join("cache"));
    let cache_dir = cache_dir.as_deref();
    let mut train = Dataset::scan(&config.train, nc, cache_dir).context("training images")?;
    if a.fraction < 1.0 {
        let keep = ((train.items.len() as f64 * a.fraction).round() as usize).max(1);
        train.items.truncate(keep);
    }
    let val = Dataset::scan(&config.val, nc, cache_dir).context("validation images")?;
    let unlabeled = unlabeled::prepare(a, &config, &mut train, &val, extended)?;
    Ok(RunData { config, train: Arc::new(train), val: Arc::new(val), unlabeled })
}

/// labels.jpg: the training labels' classes, shapes and positions (as Ultralytics draws it).
fn draw_labels(train: &Dataset, names: &[String], dir: &Path) {
    let labels: Vec<_> = train.items.iter().flat_map(|i| i.labels.iter().cloned()).collect();
    if let Err(e) = crate::report::labels_plot::write(&dir.join("labels.jpg"), &labels, names) {
        eprintln!("warning: could not draw labels.jpg: {e:#}");
    }
}

/// Writes results.csv and its plot.
fn save_results(results: &Results, dir: &Path) -> Result<()> {
    results.save(&dir.join("results.csv"))?;
    if let Err(e) = results.plot(&dir.join("results.png")) {
        eprintln!("warning: could not draw results.png: {e:#}");
    }
    Ok(())
}

/// Folds one step's items into the epoch's running means (`i`: the batch's index).
fn add_to_mean(mean: &mut Vec<(String, f64)>, i: usize, items: &[(String, f64)]) {
    if mean.is_empty() {
        *mean = items.iter().map(|(n, _)| (n.clone(), 0.0)).collect();
    }
    for (k, (_, v)) in items.iter().enumerate() {
        if let Some(m) = mean.get_mut(k) {
            m.1 = (m.1 * i as f64 + v) / (i + 1) as f64;
        }
    }
}
