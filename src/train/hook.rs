//! The trainer's extension point: what a caller (distillation) adds to a run, without the
//! trainer knowing what it is. An [`Extension`] is checked before the run folder exists, then
//! attached to the student as a [`StepHook`] that adds loss terms and trainable tensors, and its
//! settings are saved with every checkpoint so that `--resume` can rebuild it.

use anyhow::Result;
use burn::tensor::{Device, Tensor};

use super::optim::Trainable;
use super::TrainArgs;
use crate::loss::{Assignment, LossConfig, Targets};
use crate::model::layers::head::HeadOutput;
use crate::model::DetectionModel;

/// What an extension sees of the run when it is attached.
pub struct RunContext<'a> {
    pub student: &'a DetectionModel,
    pub args: &'a TrainArgs,
    pub device: &'a Device,
    /// Unlabeled images join the batches (they teach through the extension only).
    pub unlabeled: bool,
}

/// Something that adds to a training run.
pub trait Extension {
    /// The key of its settings in args.yaml and in checkpoints.
    fn name(&self) -> &str;
    /// Its settings, saved with the run (resume rebuilds the extension from them).
    fn settings(&self) -> Result<serde_json::Value>;
    /// Checks its inputs (e.g. that a teacher file loads) before the run folder is made.
    fn check(&self, device: &Device) -> Result<()>;
    /// The files it reads, by option (e.g. `--teacher`), which no output of the run may replace.
    fn input_files(&self) -> Vec<(String, std::path::PathBuf)> {
        Vec::new()
    }
    /// Builds its step hook for the student. Called once the student exists, while the
    /// backend's generator is still seeded for the run (so its random tensors are too).
    fn attach(&mut self, ctx: &RunContext<'_>) -> Result<Box<dyn StepHook>>;
}

/// Extra losses an extension adds to each training step.
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
    /// Whether the hook wants the gradient norms of the detection loss and of each of its terms
    /// measured on the next batch (e.g. to set its term weights from them).
    fn wants_gradient_norms(&self) -> bool {
        false
    }
    /// The norms measured on one batch (detection loss, then each term as currently weighted).
    /// Returns the hook's settings when they changed, to be saved with the run.
    fn gradient_norms_measured(&mut self, _det_norm: f32, _term_norms: &[(String, f32)]) -> Option<serde_json::Value> {
        None
    }
    /// Whether unlabeled images should join the batches of `epoch` (they teach through the
    /// hook only, so a hook that has stopped does not want them).
    fn wants_unlabeled(&self, _epoch: usize) -> bool {
        false
    }
    /// Detection targets for the unlabeled images `images[labeled..]` (pseudo-labels), called
    /// before the detection loss; `None` leaves them out of the detection loss. `mean` is the
    /// run's EMA of the student (a mean teacher), None outside a trainer.
    fn pseudo_labels(&mut self, _images: &Tensor<4>, _labeled: usize, _pos: StepPos, _mean: Option<&DetectionModel>) -> Option<Targets> {
        None
    }
}

/// Extra loss terms of one step (added to the total, logged) and values only logged. Terms are
/// per image: the trainer multiplies them by the batch size, as Ultralytics' detection loss is
/// (the one place where batch size scales a term).
#[derive(Default)]
pub struct HookLoss {
    pub terms: Vec<(String, Tensor<1>)>,
    pub logs: Vec<Logged>,
}

impl HookLoss {
    /// Logs `value` ([1], on the device; read back with the step's loss items).
    pub fn log(&mut self, name: impl Into<String>, value: Tensor<1>) {
        self.logs.push(Logged { name: name.into(), value, factor: 1.0 });
    }
}

/// A value only logged: shown as `value × factor`, the factor applied on the host in f64 (a
/// calibration multiplier).
pub struct Logged {
    pub name: String,
    pub value: Tensor<1>,
    pub factor: f64,
}

/// What a [`StepHook`] sees of one training step.
pub struct HookInput<'a> {
    /// All images of the batch: the labeled ones first, then the unlabeled ones.
    pub images: &'a Tensor<4>,
    /// How many of `images` carry labels (the targets and the assignment are theirs).
    pub labeled: usize,
    pub taps: &'a [Tensor<4>],
    pub student: &'a HeadOutput,
    /// The student's head (its layers, for methods that run parts of it again).
    pub student_head: &'a crate::model::layers::head::Detect,
    /// The batch's ground truth and the student's (one-to-many) assignment.
    pub targets: &'a Targets,
    pub assigned: &'a Assignment,
    /// The student's loss settings (an online teacher copies them).
    pub loss_cfg: &'a LossConfig,
    /// Epoch and batch of the step (for per-epoch schedules).
    pub pos: StepPos,
}

/// Where a training step is: epoch (0-based) of `epochs`, batch of `batches`.
#[derive(Debug, Clone, Copy)]
pub struct StepPos {
    pub epoch: usize,
    pub epochs: usize,
    pub batch: usize,
    pub batches: usize,
}
