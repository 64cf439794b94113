//! Instance segmentation (Segment heads): boxes and classes as in detection, plus a mask per
//! object, made from the anchor's mask coefficients and the image's prototypes. Training batches
//! carry the objects' masks in Ultralytics' overlap form at a quarter of the input size.

use anyhow::{bail, Result};
use burn::tensor::Tensor;

use super::Task;
use crate::data::dataset::{label_path, Dataset};
use crate::loss::segment::{mask_loss, InstanceMasks};
use crate::loss::{model_loss, Assignment, LossConfig, LossOutput, Targets};
use crate::model::layers::head::{Detect, HeadOutput};

/// Ultralytics' `mask_ratio`: instance masks at the prototypes' size, a quarter of the input's.
pub const MASK_RATIO: usize = 4;

#[derive(Debug)]
pub struct Segmentation;

impl Task for Segmentation {
    fn name(&self) -> &'static str {
        "segment"
    }

    fn serves(&self, head: &Detect) -> bool {
        head.mask.is_some()
    }

    fn loss_names(&self) -> &'static [&'static str] {
        &["box_loss", "seg_loss", "cls_loss", "dfl_loss"]
    }

    fn mask_ratio(&self) -> Option<usize> {
        Some(MASK_RATIO)
    }

    fn check_command(&self, command: &str, head: &Detect, source: &str) -> Result<()> {
        let trains = command == "train" && !head.has_one2one();
        if !trains {
            let what = if command == "train" { "YOLO26 segmentation models (Segment26: its loss is not written yet)" } else { "segmentation models" };
            bail!(
                "--model {source} is a segmentation model: `{command}` does not handle {what} yet \
                 (segmentation models are built, loaded, shown by `info`, timed by `benchmark`, exported to ONNX, \
                 can teach a detection student, and v8/11/12 -seg models train, with box metrics in validation)"
            );
        }
        Ok(())
    }

    fn check_labels(&self, dataset: &Dataset) -> Result<()> {
        // an image's polygons are kept only when every row of its label file is one
        if let Some(item) = dataset.items.iter().find(|i| i.segments.len() != i.labels.len()) {
            bail!(
                "{}: a box label in a segmentation dataset; accepted: one polygon per row, `class x1 y1 x2 y2 x3 y3 …` \
                 (at least three points, normalised to 0..1)",
                label_path(&item.image).display()
            );
        }
        Ok(())
    }

    /// Ultralytics' v8SegmentationLoss: the detection terms, and the mask term with the box gain,
    /// logged as box, seg, cls, dfl. Assigned on the host, which gives each foreground anchor its
    /// object (the mask term's target).
    fn loss(&self, cfg: &LossConfig, head: &HeadOutput, targets: &Targets, masks: Option<&InstanceMasks>, epoch: usize, epochs: usize) -> (LossOutput, Assignment) {
        let maps = head.masks.as_ref().expect("a segmentation head gives mask coefficients and prototypes");
        let gt = masks.expect("segmentation batches carry instance masks (TrainLoader::with_masks)");
        let host = LossConfig { on_device: false, ..cfg.clone() };
        let (det, asg) = model_loss(&host, head, targets, epoch, epochs);
        let Assignment::Host(assigned) = &asg else { unreachable!("assigned on the host") };
        let seg = mask_loss(&maps.coeffs, &maps.protos, assigned, gt).expect("instance masks at the prototypes' size") * cfg.gains.boxes;
        let b = maps.coeffs.dims()[0] as f32;
        let items = Tensor::cat(vec![det.items.clone().narrow(0, 0, 1), seg.clone().detach(), det.items.narrow(0, 1, 2)], 0);
        (LossOutput { total: det.total + seg * b, items }, asg)
    }
}
