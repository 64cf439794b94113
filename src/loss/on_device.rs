//! The task-aligned assignment and the detection loss as tensor operations on the training
//! device: the host assigner's rules (`assigner.rs`) and arithmetic order, without reading the
//! head outputs back, so that a GPU step never waits on a transfer. Ground truth goes up once
//! per batch, padded to the batch's largest box count as Ultralytics collates it. Background
//! anchors are computed too and weighted by zero.

use burn::tensor::activation::{log_softmax, sigmoid};
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};

use super::iou::{ciou_columns, ciou_tensor};
use super::{AssignerConfig, LossConfig, LossOutput, Targets};
use crate::model::layers::head::{anchor_tensors, dfl_expectation, HeadMaps};

/// Targets of one batch, on the device (constants for the gradient).
#[derive(Debug, Clone)]
pub struct DeviceAssigned {
    /// [B, nc, A] soft class targets.
    pub target_scores: Tensor<3>,
    /// [B, A] 1 on foreground anchors, else 0.
    pub fg: Tensor<2>,
    /// [B, A] class of the box assigned to each anchor (0 on background).
    pub class: Tensor<2, Int>,
    /// [B, A, 4] target xyxy in grid units; on background a unit box about the anchor, so
    /// that every anchor's CIoU stays finite.
    pub target: Tensor<3>,
    /// [1] max(Σ target_scores, 1): the normaliser of all three terms.
    pub tss: Tensor<1>,
    /// Anchor centres [1, 2, A] and strides [1, 1, A] (grid units), made once for both steps.
    pub anchors: Tensor<3>,
    pub strides: Tensor<3>,
    /// Input size (h, w) in pixels.
    pub img_hw: (f32, f32),
}

/// The batch's ground truth padded to G boxes per image: [B, G, 4] xyxy pixels, [B, G]
/// classes, and [B, G, 4] the boxes of the inside test (sides floored to `min_side`).
struct PaddedGt {
    xyxy: Tensor<3>,
    cls: Tensor<2, Int>,
    inside_box: Tensor<3>,
    valid: Tensor<3, Bool>,
    g: usize,
}

fn pad_targets(cfg: &AssignerConfig, targets: &Targets, b: usize, img_hw: (f32, f32), device: &Device) -> PaddedGt {
    let (img_h, img_w) = img_hw;
    let mut per_image: Vec<Vec<(usize, [f32; 4])>> = vec![Vec::new(); b];
    for ((&i, &c), bb) in targets.batch_idx.iter().zip(&targets.cls).zip(&targets.bboxes) {
        let (cx, cy, w, h) = (bb[0] * img_w, bb[1] * img_h, bb[2] * img_w, bb[3] * img_h);
        let xyxy = [cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0];
        if i < b && xyxy.iter().sum::<f32>() > 0.0 {
            per_image[i].push((c, xyxy));
        }
    }
    let g = per_image.iter().map(Vec::len).max().unwrap_or(0).max(1);
    let (mut xyxy, mut inside, mut cls, mut valid) = (vec![0f32; b * g * 4], vec![0f32; b * g * 4], vec![0i64; b * g], vec![false; b * g]);
    for (bi, boxes) in per_image.iter().enumerate() {
        for (k, &(c, bx)) in boxes.iter().enumerate() {
            let row = bi * g + k;
            xyxy[4 * row..4 * row + 4].copy_from_slice(&bx);
            inside[4 * row..4 * row + 4].copy_from_slice(&inside_box(cfg, bx));
            cls[row] = c as i64;
            valid[row] = true;
        }
    }
    PaddedGt {
        xyxy: Tensor::from_data(TensorData::new(xyxy, [b, g, 4]), device),
        cls: Tensor::from_data(TensorData::new(cls, [b, g]), device),
        inside_box: Tensor::from_data(TensorData::new(inside, [b, g, 4]), device),
        valid: Tensor::<3, Bool>::from_data(TensorData::new(valid, [b, g, 1]), device),
        g,
    }
}

/// The box of the inside test: sides below `min_side` widened about the centre (as the host).
fn inside_box(cfg: &AssignerConfig, [x1, y1, x2, y2]: [f32; 4]) -> [f32; 4] {
    let (cx, cy) = ((x1 + x2) / 2.0, (y1 + y2) / 2.0);
    let (w, h) = ((x2 - x1).max(cfg.min_side), (y2 - y1).max(cfg.min_side));
    [cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0]
}

/// Coordinate `i` of boxes laid out [.., .., 4] as a [.., .., 1] column.
fn coord(t: &Tensor<3>, i: usize) -> Tensor<3> {
    t.clone().narrow(2, i, 1)
}

/// The `k` largest values of each row along dim 2, ties going to the lower index (the host's
/// rule, independent of how the backend sorts).
fn top_k_mask(values: Tensor<3>, k: usize) -> Tensor<3, Bool> {
    let shape = values.dims();
    let kth = values.clone().topk(k, 2).narrow(2, k - 1, 1).expand(shape);
    let above = values.clone().greater(kth.clone());
    let tied = values.equal(kth);
    let room = above.clone().int().sum_dim(2).neg().add_scalar(k as i64).expand(shape);
    let rank = tied.clone().int().cumsum(2);
    above.bool_or(tied.bool_and(rank.lower_equal(room)))
}

/// Task-aligned assignment of a batch on its device (the host's `assign_targets`).
pub fn assign_on_device(cfg: &LossConfig, maps: &HeadMaps, shapes: &[(usize, usize)], targets: &Targets) -> DeviceAssigned {
    let device = maps.scores.device();
    let [b, nc, a_n] = maps.scores.dims();
    let ac = &cfg.assigner;
    let img_hw = (shapes[0].0 as f32 * cfg.strides[0] as f32, shapes[0].1 as f32 * cfg.strides[0] as f32);
    let (anchors, s) = anchor_tensors(shapes, &cfg.strides, &device);
    let gt = pad_targets(ac, targets, b, img_hw, &device);
    let g_n = gt.g;
    let full = [b, g_n, a_n];

    // Detached predictions: boxes in pixels as [B, 1, A] columns, scores [B, nc, A].
    let scores = sigmoid(maps.scores.clone().detach());
    let dist = dfl_expectation(maps.boxes.clone().detach(), cfg.reg_max);
    let (ax, ay) = (anchors.clone().narrow(1, 0, 1), anchors.clone().narrow(1, 1, 1));
    let side = |i: usize| dist.clone().narrow(1, i, 1);
    let pred = [(ax.clone() - side(0)) * s.clone(), (ay.clone() - side(1)) * s.clone(), (ax.clone() + side(2)) * s.clone(), (ay.clone() + side(3)) * s.clone()];
    let (px, py) = (ax.clone() * s.clone(), ay.clone() * s.clone());

    // Candidates: anchor centres inside a (widened) box.
    let ib = |i: usize| coord(&gt.inside_box, i).expand(full);
    let (pxf, pyf) = (px.expand(full), py.expand(full));
    let in_gt = (pxf.clone() - ib(0))
        .greater_elem(ac.eps)
        .bool_and((pyf.clone() - ib(1)).greater_elem(ac.eps))
        .bool_and((ib(2) - pxf).greater_elem(ac.eps))
        .bool_and((ib(3) - pyf).greater_elem(ac.eps))
        .bool_and(gt.valid.clone().expand(full));
    let in_gt_f = in_gt.clone().float();

    // Overlaps and alignment [B, G, A], zero outside the candidates.
    let gt_cols = [0, 1, 2, 3].map(|i| coord(&gt.xyxy, i).expand(full));
    let overlaps = ciou_columns(gt_cols, pred.map(|p| p.expand(full))).clamp_min(0.0) * in_gt_f.clone();
    let cls_idx = gt.cls.clone().reshape([b, g_n, 1]).expand(full);
    let gt_scores = scores.gather(1, cls_idx);
    let align = (gt_scores.powf_scalar(ac.alpha) * overlaps.clone().powf_scalar(ac.beta)) * in_gt_f;

    // Each box's top-k candidates; an anchor claimed twice goes to the box it overlaps most.
    let mut pos = top_k_mask(align.clone(), ac.topk.min(a_n)).bool_and(in_gt).float();
    let claimed = pos.clone().sum_dim(1).greater_elem(1.0).expand(full);
    let g_ids = Tensor::<1, Int>::arange(0..g_n as i64, &device).reshape([1, g_n, 1]).expand(full);
    let best = overlaps.clone().argmax(1).expand(full).equal(g_ids).float();
    pos = pos.mask_where(claimed, best);
    if ac.topk2 < ac.topk {
        // One-to-one heads: each box keeps its `topk2` best-aligned positives.
        let ranked = align.clone() * pos.clone() + (pos.clone() - 1.0);
        pos = pos * top_k_mask(ranked, ac.topk2.min(a_n)).float();
    }

    // Soft scores: alignment scaled per box so that its best anchor gets the box's best IoU.
    let align_pos = align * pos.clone();
    let max_align = align_pos.clone().max_dim(2);
    let max_iou = (overlaps * pos.clone()).max_dim(2);
    let norm = (align_pos * max_iou.expand(full) / (max_align + ac.eps).expand(full)).max_dim(1);
    let fg = pos.clone().max_dim(1); // [B, 1, A]
    let gt_idx = pos.argmax(1); // [B, 1, A]

    // Targets of each anchor's box.
    let class = gt.cls.reshape([b, g_n, 1]).expand(full).gather(1, gt_idx.clone());
    let class_ids = Tensor::<1, Int>::arange(0..nc as i64, &device).reshape([1, nc, 1]).expand([b, nc, a_n]);
    let one_hot = class.clone().expand([b, nc, a_n]).equal(class_ids).float();
    let target_scores = one_hot * (norm * fg.clone()).expand([b, nc, a_n]);
    let box_idx = gt_idx.reshape([b, a_n, 1]).expand([b, a_n, 4]);
    let grid = |t: Tensor<3>| t.swap_dims(1, 2); // [1, 1, A] → [1, A, 1]
    let target_px = gt.xyxy.gather(1, box_idx);
    let target = target_px / grid(s.clone());
    let unit = Tensor::cat(vec![ax.clone() - 0.5, ay.clone() - 0.5, ax + 0.5, ay + 0.5], 1).swap_dims(1, 2).expand([b, a_n, 4]);
    let fg_rows = grid(fg.clone()).greater_elem(0.0).expand([b, a_n, 4]);
    let target = unit.mask_where(fg_rows, target);
    let tss = target_scores.clone().sum().clamp_min(1.0);
    DeviceAssigned { target_scores, fg: fg.reshape([b, a_n]), class: class.reshape([b, a_n]), target, tss, anchors, strides: s, img_hw }
}

/// The three loss terms for targets assigned on the device (the host's `loss_from_assigned`
/// over every anchor, background weighted by zero).
pub fn loss_on_device(cfg: &LossConfig, maps: &HeadMaps, asg: &DeviceAssigned) -> LossOutput {
    let device = maps.scores.device();
    let [b, _, a_n] = maps.scores.dims();
    let r = cfg.reg_max;
    let tss = asg.tss.clone();

    // Classification: BCE with logits summed over anchors and classes.
    let x = maps.scores.clone();
    let t = asg.target_scores.clone();
    let bce = x.clone().clamp_min(0.0) - x.clone() * t + x.abs().neg().exp().log1p();
    let loss_cls = bce.sum() / tss.clone();

    // Box: CIoU of every anchor's prediction, weighted by its soft score.
    let anc = asg.anchors.clone();
    let (ax, ay) = (anc.clone().narrow(1, 0, 1), anc.clone().narrow(1, 1, 1));
    let dist = dfl_expectation(maps.boxes.clone(), r); // [B, 4, A]
    let pred = Tensor::cat(vec![anc.clone() - dist.clone().narrow(1, 0, 2), anc + dist.clone().narrow(1, 2, 2)], 1);
    let rows = |t: Tensor<3>| t.swap_dims(1, 2).reshape([b * a_n, 4]);
    let weight = asg.target_scores.clone().sum_dim(1).reshape([b * a_n]);
    let loss_box = ((ciou_tensor(rows(pred), asg.target.clone().reshape([b * a_n, 4])).neg() + 1.0) * weight.clone()).sum() / tss.clone();

    // Target distances (l, t, r, b) in grid units, [B, 4, A].
    let tgt = asg.target.clone().swap_dims(1, 2);
    let tc = |i: usize| tgt.clone().narrow(1, i, 1);
    let ltrb = Tensor::cat(vec![ax.clone() - tc(0), ay.clone() - tc(1), tc(2) - ax, tc(3) - ay], 1);
    let weight = weight.reshape([b, a_n]);
    let loss_dfl = if r > 1 {
        // CE against the two neighbouring bins, weighted by proximity.
        let v = ltrb.clamp(0.0, r as f32 - 1.0 - 0.01).reshape([b, 4, 1, a_n]);
        let tl = v.clone().floor();
        let wl = (tl.clone() + 1.0) - v;
        let wr = wl.clone().neg() + 1.0;
        let bins = Tensor::<1, Int>::arange(0..r as i64, &device).float().reshape([1, 1, r, 1]).expand([b, 4, r, a_n]);
        let at = |t: Tensor<4>| bins.clone().equal(t.expand([b, 4, r, a_n])).float();
        let wts = at(tl.clone()) * wl.expand([b, 4, r, a_n]) + at(tl + 1.0) * wr.expand([b, 4, r, a_n]);
        let ce = (log_softmax(maps.boxes.clone().reshape([b, 4, r, a_n]), 2) * wts).sum_dim(2).reshape([b, 4, a_n]).neg();
        (ce.mean_dim(1).reshape([b, a_n]) * weight).sum() / tss
    } else {
        // reg_max 1 (YOLO26): L1 on distances normalised by the image size.
        let (img_h, img_w) = asg.img_hw;
        let (sx, sy) = (asg.strides.clone() / img_w, asg.strides.clone() / img_h);
        let norm = Tensor::cat(vec![sx.clone(), sy.clone(), sx, sy], 1);
        let l1 = ((dist - ltrb) * norm).abs().mean_dim(1).reshape([b, a_n]);
        (l1 * weight).sum() / tss
    };
    super::finish(cfg, b, [loss_box, loss_cls, loss_dfl])
}
