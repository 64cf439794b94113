//! Object detection: boxes and classes (Detect heads; v10/26's end-to-end heads too).


use super::Task;
use crate::loss::segment::InstanceMasks;
use crate::loss::{model_loss, Assignment, LossConfig, LossOutput, Targets};
use crate::model::layers::head::{Detect, HeadOutput};

#[derive(Debug)]
pub struct ObjectDetection;

impl Task for ObjectDetection {
    fn name(&self) -> &'static str {
        "detect"
    }

    fn serves(&self, head: &Detect) -> bool {
        head.mask.is_none()
    }

    fn loss_names(&self) -> &'static [&'static str] {
        &["box_loss", "cls_loss", "dfl_loss"]
    }

    fn loss(&self, cfg: &LossConfig, head: &HeadOutput, targets: &Targets, _masks: Option<&InstanceMasks>, epoch: usize, epochs: usize) -> (LossOutput, Assignment) {
        model_loss(cfg, head, targets, epoch, epochs)
    }
}
