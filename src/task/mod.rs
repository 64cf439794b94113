//! The task a model solves, as a seam: what differs between detection and segmentation (and,
//! later, pose or oriented boxes) sits behind [`Task`]: the labels a training batch must carry
//! beside boxes, the loss and the items it logs, and which commands handle the task yet. Each
//! task is one module; [`of`] is the registry, keyed by the head a model ends with.

mod detection;
mod segmentation;

use anyhow::Result;

use crate::data::dataset::Dataset;
use crate::data::loader::Batch;
use crate::eval::metrics::{Curves, DetMetrics};
use crate::infer::nms::Detection;
use crate::loss::segment::InstanceMasks;
use crate::loss::{detection_loss, Assignment, LossConfig, LossOutput, Targets};
use crate::model::layers::head::{Detect, HeadOutput};
use crate::weights::HostTensor;

pub use detection::ObjectDetection;
pub use segmentation::InstanceSegmentation;

pub trait Task: Sync + std::fmt::Debug {
    /// Ultralytics' word for the task (`detect`, `segment`).
    fn name(&self) -> &'static str;

    /// Whether a model ending with `head` solves this task.
    fn serves(&self, head: &Detect) -> bool;

    /// The loss items of a training step, in Ultralytics' order (the `train/…` columns).
    fn loss_names(&self) -> &'static [&'static str];

    /// The items as a head with `reg_max` bins logs them: Ultralytics names the distance term
    /// `l1_loss` when there are no DFL bins (`reg_max` 1: YOLO26), `dfl_loss` otherwise.
    fn logged_names(&self, reg_max: usize) -> Vec<String> {
        let rename = |n: &&str| if *n == "dfl_loss" && reg_max <= 1 { "l1_loss".to_string() } else { n.to_string() };
        self.loss_names().iter().map(rename).collect()
    }

    /// The downsampling of the instance masks a training batch carries (None: no masks).
    fn mask_ratio(&self) -> Option<usize> {
        None
    }

    /// Whether `command` handles this task's models yet: an error naming the model (`source`)
    /// and saying what does.
    fn check_command(&self, _command: &str, _head: &Detect, _source: &str) -> Result<()> {
        // every task handles train, val and predict, the commands that ask today
        Ok(())
    }

    /// Whether `dataset` has the labels training needs: an error naming the first label file
    /// that lacks them.
    fn check_labels(&self, _dataset: &Dataset) -> Result<()> {
        Ok(())
    }

    /// The training loss of `head` for `targets` (whose instance masks are `masks` when the
    /// task asks for them), and the one-to-many assignment (what distillation terms read).
    fn loss(&self, cfg: &LossConfig, head: &HeadOutput, targets: &Targets, masks: Option<&InstanceMasks>, epoch: usize, epochs: usize) -> (LossOutput, Assignment);

    /// The validation loss items (the `val/…` columns, named as [`Task::loss_names`]) of one
    /// batch's head output, on the host.
    fn val_loss(&self, cfg: &LossConfig, head: &HeadOutput, targets: &Targets, _masks: Option<&InstanceMasks>) -> Vec<f32> {
        detection_loss(cfg, &head.one2many.to_f32(), &head.shapes, targets).host_items().to_vec()
    }

    /// The task's own metrics beside the boxes' in validation (None: boxes only).
    fn metrics(&self, _nc: usize) -> Option<Box<dyn TaskMetrics>> {
        None
    }

    /// What the task's metrics read from a batch's head outputs, on the host (see
    /// [`TaskMetrics::add_batch`]).
    fn metric_inputs(&self, _head: &HeadOutput) -> Vec<HostTensor> {
        Vec::new()
    }

    /// How many outputs an exported graph of this task has (`output0`, `output1`, …).
    fn exported_outputs(&self) -> usize {
        1
    }

    /// An exported graph's outputs, read back, as the decoded boxes and scores [B, 4 + nc, A]
    /// and the metric inputs (as [`Task::metric_inputs`] gives them).
    fn split_exported(&self, nc: usize, mut outputs: Vec<HostTensor>) -> Result<(HostTensor, Vec<HostTensor>)> {
        match outputs.pop() {
            Some(out) if outputs.is_empty() && out.shape.len() == 3 && out.shape[1] == 4 + nc => Ok((out, Vec::new())),
            Some(out) => anyhow::bail!("output0 of shape {:?}: expected [B, {}, A]", out.shape, 4 + nc),
            None => anyhow::bail!("no output0"),
        }
    }
}

/// A task's validation metrics beside the boxes' (a segmentation task's masks), with the same
/// matching and AP arithmetic as the boxes'.
pub trait TaskMetrics {
    /// The letter Ultralytics appends to these metrics' names (`M` for masks).
    fn suffix(&self) -> &'static str;

    /// The first word of their pictures' names (`Mask` in `MaskPR_curve.png`).
    fn pictures(&self) -> &'static str;

    /// One validation batch: the task's metric inputs ([`Task::metric_inputs`], or an exported
    /// graph's), the batch (labels in its masks' object order) and each image's detections, in
    /// input pixels. Returns each image's detection masks for
    /// pictures, in overlap form (detection k's pixels hold k + 1; where several cover a pixel,
    /// the first, best-scoring one).
    fn add_batch(&mut self, inputs: &[HostTensor], batch: &Batch, found: &[Vec<Detection>]) -> Vec<InstanceMasks>;

    /// The metrics and curves over every batch added.
    fn compute(&self) -> (DetMetrics, Curves);
}

/// Every task, the most specific head first.
static TASKS: [&dyn Task; 2] = [&InstanceSegmentation, &ObjectDetection];

/// The task of a model ending with `head`.
pub fn of(head: &Detect) -> &'static dyn Task {
    TASKS.iter().copied().find(|t| t.serves(head)).unwrap_or(&ObjectDetection)
}
