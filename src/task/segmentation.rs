//! Instance segmentation (Segment heads): boxes and classes as in detection, plus a mask per
//! object, made from the anchor's mask coefficients and the image's prototypes. Training batches
//! carry the objects' masks in Ultralytics' overlap form at a quarter of the input size.

use anyhow::{bail, Result};
use burn::tensor::Tensor;

use super::{Task, TaskMetrics};
use crate::data::dataset::{label_path, Dataset};
use crate::data::loader::Batch;
use crate::eval::masks::{mask_ious, predicted_masks, MaskInputs};
use crate::eval::metrics::{Curves, Det, DetMetrics, ImageEval, MetricsAccumulator};
use crate::infer::nms::Detection;
use crate::loss::segment::{mask_loss, object_classes, semantic_loss, InstanceMasks};
use crate::loss::{assign_targets_with, e2e_one2many_weight, loss_from_assigned, model_loss, Assignment, LossConfig, LossOutput, MaskAssignInputs, Targets};
use crate::model::layers::head::{Detect, HeadMaps, HeadOutput};
use crate::weights::HostTensor;

/// Ultralytics' `mask_ratio`: instance masks at the prototypes' size, a quarter of the input's.
pub const MASK_RATIO: usize = 4;

#[derive(Debug)]
pub struct InstanceSegmentation;

impl Task for InstanceSegmentation {
    fn name(&self) -> &'static str {
        "segment"
    }

    fn serves(&self, head: &Detect) -> bool {
        head.mask.is_some()
    }

    fn loss_names(&self) -> &'static [&'static str] {
        // sem_loss: YOLO26's semantic term, 0 for Segment heads (Ultralytics 8.4 logs it for every seg model)
        &["box_loss", "seg_loss", "cls_loss", "dfl_loss", "sem_loss"]
    }

    fn mask_ratio(&self) -> Option<usize> {
        Some(MASK_RATIO)
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
        if let (Some(one2one), Some(coeffs_o2o)) = (&head.one2one, &maps.coeffs_one2one) {
            return end2end_loss(cfg, head, one2one, coeffs_o2o, targets, gt, e2e_one2many_weight(epoch, epochs));
        }
        let host = LossConfig { on_device: false, ..cfg.clone() };
        let (det, asg) = model_loss(&host, head, targets, epoch, epochs);
        let Assignment::Host(assigned) = &asg else { unreachable!("assigned on the host") };
        let seg = mask_loss(&maps.coeffs, &maps.protos, assigned, gt).expect("instance masks at the prototypes' size") * cfg.gains.boxes;
        let b = maps.coeffs.dims()[0] as f32;
        let sem = Tensor::zeros([1], &seg.device());
        let items = Tensor::cat(vec![det.items.clone().narrow(0, 0, 1), seg.clone().detach(), det.items.narrow(0, 1, 2), sem], 0);
        (LossOutput { total: det.total + seg * b, items }, asg)
    }

    fn val_loss(&self, cfg: &LossConfig, head: &HeadOutput, targets: &Targets, masks: Option<&InstanceMasks>) -> Vec<f32> {
        let head = HeadOutput { one2many: head.one2many.to_f32(), ..head.clone() };
        crate::device::read_back(self.loss(cfg, &head, targets, masks, 0, 1).0.items)
    }

    fn metrics(&self, nc: usize) -> Option<Box<dyn TaskMetrics>> {
        Some(Box::new(MaskMetrics { acc: MetricsAccumulator::new(nc) }))
    }

    /// The mask coefficients of the branch that detected [B, nm, A] (an end-to-end head's
    /// one-to-one branch has its own) and the prototypes [B, nm, h, w].
    fn metric_inputs(&self, head: &HeadOutput) -> Vec<HostTensor> {
        let maps = head.masks.as_ref().expect("a segmentation head gives mask coefficients and prototypes");
        let coeffs = if head.one2one.is_some() { maps.coeffs_one2one.as_ref().unwrap_or(&maps.coeffs) } else { &maps.coeffs };
        let host = |shape: &[usize], data| HostTensor::new(shape.to_vec(), data);
        vec![host(&coeffs.dims(), crate::device::read_back(coeffs.clone())), host(&maps.protos.dims(), crate::device::read_back(maps.protos.clone()))]
    }

    /// Ultralytics' segmentation graph: output0 [B, 4 + nc + nm, A] (the coefficients after the
    /// scores) and output1, the prototypes.
    fn split_exported(&self, nc: usize, mut outputs: Vec<HostTensor>) -> Result<(HostTensor, Vec<HostTensor>)> {
        let (Some(protos), Some(out0)) = (outputs.pop().filter(|_| outputs.len() == 1), outputs.pop()) else {
            bail!("a segmentation graph has two outputs (detections with mask coefficients, prototypes)");
        };
        let (&[b, rows, a_n], &[pb, nm, _, _]) = (out0.shape.as_slice(), protos.shape.as_slice()) else {
            bail!("output0 of shape {:?} and output1 of shape {:?}: expected [B, 4 + nc + nm, A] and [B, nm, h, w]", out0.shape, protos.shape);
        };
        if rows != 4 + nc + nm || pb != b {
            bail!("output0 has {rows} rows for {nc} classes and {nm} prototypes (expected {}), output1 {pb} images for {b}", 4 + nc + nm);
        }
        let per = rows * a_n;
        let part = |from: usize, n: usize| out0.data.chunks(per).flat_map(|img| img[from * a_n..(from + n) * a_n].iter().copied()).collect::<Vec<f32>>();
        let decoded = HostTensor::new(vec![b, 4 + nc, a_n], part(0, 4 + nc));
        let coeffs = HostTensor::new(vec![b, nm, a_n], part(4 + nc, nm));
        Ok((decoded, vec![coeffs, protos]))
    }

    fn exported_outputs(&self) -> usize {
        2
    }
}

/// YOLO26's segmentation loss (Ultralytics' end-to-end loss around SegmentLoss26): each branch
/// assigned mask-aware and scored with box, seg, cls, distance and semantic terms; the one-to-many
/// branch with its coefficients, the prototypes and the semantic map, the one-to-one branch with
/// its own coefficients and both maps detached; weighted `w` and 1 − w, the one-to-one branch's
/// items logged.
fn end2end_loss(cfg: &LossConfig, head: &HeadOutput, one2one: &HeadMaps, coeffs_o2o: &Tensor<3>, targets: &Targets, gt: &InstanceMasks, w: f32) -> (LossOutput, Assignment) {
    let maps = head.masks.as_ref().expect("a segmentation head");
    let host = LossConfig { on_device: false, ..cfg.clone() };
    let mut o2o_cfg = host.clone();
    o2o_cfg.assigner.topk = 7;
    o2o_cfg.assigner.topk2 = 1;
    let detached = |t: &Option<Tensor<4>>| t.as_ref().map(|s| s.clone().detach());
    // the prototypes the two branches' assignments read, on the host once
    let protos_host = crate::device::read_back(maps.protos.clone().detach());
    let o2m_maps = BranchMaps { scores: &head.one2many, coeffs: &maps.coeffs, protos: maps.protos.clone(), protos_host: &protos_host, semantic: maps.semantic.clone() };
    let (o2m, asg) = seg_branch(&host, o2m_maps, &head.shapes, targets, gt);
    let o2o_maps = BranchMaps { scores: one2one, coeffs: coeffs_o2o, protos: maps.protos.clone().detach(), protos_host: &protos_host, semantic: detached(&maps.semantic) };
    let (o2o, _) = seg_branch(&o2o_cfg, o2o_maps, &head.shapes, targets, gt);
    (LossOutput { total: o2m.total * w + o2o.total * (1.0 - w), items: o2o.items }, Assignment::Host(asg))
}

/// What one branch of YOLO26's segmentation loss reads.
struct BranchMaps<'a> {
    /// Its box and class maps.
    scores: &'a HeadMaps,
    /// Its mask coefficients [B, nm, A].
    coeffs: &'a Tensor<3>,
    /// The prototypes (detached for the one-to-one branch) and their values on the host.
    protos: Tensor<4>,
    protos_host: &'a [f32],
    /// Proto26's semantic logits (training only; detached for the one-to-one branch).
    semantic: Option<Tensor<4>>,
}

/// One branch of YOLO26's segmentation loss: the items box, seg, cls, distance, semantic (gains
/// applied) and their sum times the batch size.
fn seg_branch(cfg: &LossConfig, m: BranchMaps, shapes: &[(usize, usize)], targets: &Targets, gt: &InstanceMasks) -> (LossOutput, crate::loss::Assigned) {
    let (maps, coeffs, protos) = (m.scores, m.coeffs, &m.protos);
    let nm = coeffs.dims()[1];
    let coeffs_host = crate::device::read_back(coeffs.clone().detach());
    let inputs = MaskAssignInputs { coeffs: &coeffs_host, protos: m.protos_host, nm, ids: gt };
    let asg = assign_targets_with(cfg, maps, shapes, targets, Some(&inputs));
    let det = loss_from_assigned(cfg, maps, &asg);
    let gain = cfg.gains.boxes;
    let seg = mask_loss(coeffs, protos, &asg, gt).expect("instance masks at the prototypes' size") * gain;
    let b = coeffs.dims()[0] as f32;
    let sem = match &m.semantic {
        // only with a foreground anchor, on the images that have masks (the labeled ones)
        Some(sem) if !asg.fg_index.is_empty() => {
            let n = gt.ids.len() / (gt.size.0 * gt.size.1);
            let classes = object_classes(&targets.batch_idx, &targets.cls, n);
            semantic_loss(&sem.clone().narrow(0, 0, n), gt, &classes).expect("semantic logits of the masks' images") * gain
        }
        Some(sem) => sem.clone().sum() * 0.0,
        None => Tensor::zeros([1], &coeffs.device()),
    };
    let items = Tensor::cat(vec![det.items.clone().narrow(0, 0, 1), seg.clone().detach(), det.items.narrow(0, 1, 2), sem.clone().detach()], 0);
    (LossOutput { total: det.total + (seg + sem) * b, items }, asg)
}

/// Pixel lists (detection k's, best first) as one overlap-form map of `size`: k + 1 where
/// detection k is the best-scoring one to cover the pixel.
fn overlap_form(masks: &[Vec<u32>], size: (usize, usize)) -> InstanceMasks {
    let mut ids = vec![0u16; size.0 * size.1];
    for (k, pixels) in masks.iter().enumerate().rev() {
        for &p in pixels {
            ids[p as usize] = (k + 1).min(u16::MAX as usize) as u16;
        }
    }
    InstanceMasks { size, ids }
}

/// Mask metrics: each detection's mask against its image's labels' masks, at the prototypes' size.
struct MaskMetrics {
    acc: MetricsAccumulator,
}

impl TaskMetrics for MaskMetrics {
    fn suffix(&self) -> &'static str {
        "M"
    }

    fn pictures(&self) -> &'static str {
        "Mask"
    }

    fn add_batch(&mut self, inputs: &[HostTensor], batch: &Batch, found: &[Vec<Detection>]) -> Vec<InstanceMasks> {
        let [coeffs, protos] = inputs else { panic!("mask metrics read the mask coefficients and the prototypes (InstanceSegmentation::metric_inputs)") };
        let labels = batch.masks.as_ref().expect("segmentation validation batches carry instance masks (ValLoader::with_masks)");
        let (&[_, nm, a_n], &[_, _, mh, mw]) = (coeffs.shape.as_slice(), protos.shape.as_slice()) else { panic!("coefficients [B, nm, A], prototypes [B, nm, h, w]") };
        let (coeffs, protos) = (&coeffs.data, &protos.data);
        let ratio = batch.shape[3] as f32 / mw as f32;
        let mut drawn = Vec::with_capacity(found.len());
        for (j, dets) in found.iter().enumerate() {
            let inputs = MaskInputs {
                coeffs: &coeffs[j * nm * a_n..(j + 1) * nm * a_n],
                protos: &protos[j * nm * mh * mw..(j + 1) * nm * mh * mw],
                nm,
                size: (mh, mw),
                ratio,
            };
            let gt = batch.labels_xyxy(j);
            let ids = &labels.ids[j * mh * mw..(j + 1) * mh * mw];
            let masks = predicted_masks(&inputs, dets);
            let ious = mask_ious(&masks, ids, gt.len());
            let img = ImageEval { gt, dets: dets.iter().map(|d| Det { xyxy: d.xyxy, conf: d.conf, cls: d.cls }).collect() };
            self.acc.add_with_ious(&img, &ious);
            drawn.push(overlap_form(&masks, (mh, mw)));
        }
        drawn
    }

    fn compute(&self) -> (DetMetrics, Curves) {
        self.acc.compute_with_curves()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_best_detection_keeps_the_pixels_it_shares() {
        // detection 0 (best) and 1 both cover pixel 1; only 1 covers pixel 2
        let m = overlap_form(&[vec![0, 1], vec![1, 2]], (1, 4));
        assert_eq!(m.ids, [1, 1, 2, 0]);
    }
}
