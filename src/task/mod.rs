//! The task a model solves, as a seam: what differs between detection and segmentation (and,
//! later, pose or oriented boxes) sits behind [`Task`]: the labels a training batch must carry
//! beside boxes, the loss and the items it logs, and which commands handle the task yet. Each
//! task is one module; [`of`] is the registry, keyed by the head a model ends with.

mod detection;
mod segmentation;

use anyhow::Result;

use crate::data::dataset::Dataset;
use crate::loss::segment::InstanceMasks;
use crate::loss::{Assignment, LossConfig, LossOutput, Targets};
use crate::model::layers::head::{Detect, HeadOutput};

pub use detection::Detection;
pub use segmentation::Segmentation;

pub trait Task: Sync + std::fmt::Debug {
    /// Ultralytics' word for the task (`detect`, `segment`).
    fn name(&self) -> &'static str;

    /// Whether a model ending with `head` solves this task.
    fn serves(&self, head: &Detect) -> bool;

    /// The loss items of a training step, in Ultralytics' order (the `train/…` columns).
    fn loss_names(&self) -> &'static [&'static str];

    /// The downsampling of the instance masks a training batch carries (None: no masks).
    fn mask_ratio(&self) -> Option<usize> {
        None
    }

    /// Whether `command` handles this task's models yet: an error naming the model (`source`)
    /// and saying what does.
    fn check_command(&self, command: &str, head: &Detect, source: &str) -> Result<()>;

    /// Whether `dataset` has the labels training needs: an error naming the first label file
    /// that lacks them.
    fn check_labels(&self, _dataset: &Dataset) -> Result<()> {
        Ok(())
    }

    /// The training loss of `head` for `targets` (whose instance masks are `masks` when the
    /// task asks for them), and the one-to-many assignment (what distillation terms read).
    fn loss(&self, cfg: &LossConfig, head: &HeadOutput, targets: &Targets, masks: Option<&InstanceMasks>, epoch: usize, epochs: usize) -> (LossOutput, Assignment);
}

/// Every task, the most specific head first.
static TASKS: [&dyn Task; 2] = [&Segmentation, &Detection];

/// The task of a model ending with `head`.
pub fn of(head: &Detect) -> &'static dyn Task {
    TASKS.iter().copied().find(|t| t.serves(head)).unwrap_or(&Detection)
}
