//! Task-aligned assigner (TAL), computed on the host from detached predictions.
//!
//! Per image: anchors whose centre lies inside a ground-truth box (small boxes
//! enlarged to the middle stride first, as Ultralytics 8.4 does) are scored by
//! `score^alpha · CIoU^beta`; each box keeps its `topk` best anchors; an anchor
//! claimed by several boxes goes to the box it overlaps most; soft class targets
//! are the alignment normalised per box to that box's best IoU.

use super::iou::ciou;

#[derive(Debug, Clone, Copy)]
pub struct AssignerConfig {
    pub topk: usize,
    /// End-to-end (one-to-one) heads keep only this many of each box's positives
    /// (Ultralytics 8.4 `topk2`); equal to `topk` otherwise.
    pub topk2: usize,
    pub alpha: f32,
    pub beta: f32,
    pub eps: f32,
    /// Boxes with a side below this (pixels) are enlarged to it for the inside test.
    pub min_side: f32,
}

impl AssignerConfig {
    /// Ultralytics' defaults for a head with the given strides.
    pub fn for_strides(strides: &[f64]) -> Self {
        let mid = if strides.len() > 1 { strides[1] } else { strides[0] };
        Self { topk: 10, topk2: 10, alpha: 0.5, beta: 6.0, eps: 1e-9, min_side: mid as f32 }
    }
}

/// One ground-truth box: class and xyxy in pixels.
#[derive(Debug, Clone, Copy)]
pub struct GtBox {
    pub cls: usize,
    pub xyxy: [f32; 4],
}

/// Assignment of one image: per anchor, the target (when foreground).
#[derive(Debug, Clone)]
pub struct Assignment {
    pub fg: Vec<bool>,
    /// Index of the assigned ground truth (0 for background, as Ultralytics).
    pub gt_idx: Vec<usize>,
    /// Soft score of the assigned class (0 for background).
    pub score: Vec<f32>,
}

/// Assigns anchors of one image.
/// `scores`: [A][nc] sigmoid scores; `boxes`: [A] predicted xyxy in pixels;
/// `anchors`: [A] centres in pixels.
pub fn assign(cfg: &AssignerConfig, scores: &[f32], nc: usize, boxes: &[[f32; 4]], anchors: &[[f32; 2]], gts: &[GtBox]) -> Assignment {
    assign_with(cfg, scores, nc, boxes, anchors, gts, None)
}

/// The mask IoU of box `g`'s object with the mask anchor `a` predicts (YOLO26 segmentation's
/// mask-aware assignment).
pub type MaskIou<'a> = &'a dyn Fn(usize, usize) -> f32;

/// [`assign`], and with `mask_iou` Ultralytics' mask-aware assignment (SegTaskAlignedAssigner):
/// each box's 3·topk best candidates by the box metric (plus 1e-9, so that every candidate
/// outranks the other anchors) get their mask IoU, the others 0, and every candidate's overlap
/// becomes the mean of its box IoU and its mask IoU, for the alignment and all that follows.
pub fn assign_with(cfg: &AssignerConfig, scores: &[f32], nc: usize, boxes: &[[f32; 4]], anchors: &[[f32; 2]], gts: &[GtBox], mask_iou: Option<MaskIou>) -> Assignment {
    let a_n = anchors.len();
    let g_n = gts.len();
    let mut out = Assignment { fg: vec![false; a_n], gt_idx: vec![0; a_n], score: vec![0.0; a_n] };
    if g_n == 0 {
        return out;
    }
    // Inside test, on boxes whose tiny sides are floored to `min_side` about the centre.
    let inside = |g: &GtBox, p: &[f32; 2]| -> bool {
        let [x1, y1, x2, y2] = g.xyxy;
        let (cx, cy, mut w, mut h) = ((x1 + x2) / 2.0, (y1 + y2) / 2.0, x2 - x1, y2 - y1);
        if w < cfg.min_side {
            w = cfg.min_side;
        }
        if h < cfg.min_side {
            h = cfg.min_side;
        }
        let (l, t, r, b) = (cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0);
        p[0] - l > cfg.eps && p[1] - t > cfg.eps && r - p[0] > cfg.eps && b - p[1] > cfg.eps
    };
    // Metrics [G][A]; zero outside the candidate set.
    let mut overlaps = vec![0f32; g_n * a_n];
    let mut align = vec![0f32; g_n * a_n];
    let mut in_gt = vec![false; g_n * a_n];
    for (g, gt) in gts.iter().enumerate() {
        for a in 0..a_n {
            if inside(gt, &anchors[a]) {
                let k = g * a_n + a;
                in_gt[k] = true;
                let o = ciou(&gt.xyxy, &boxes[a]).max(0.0);
                let s = scores[a * nc + gt.cls];
                overlaps[k] = o;
                align[k] = s.powf(cfg.alpha) * o.powf(cfg.beta);
            }
        }
    }
    if let Some(mask_iou) = mask_iou {
        let k = (3 * cfg.topk).min(a_n);
        let mut order: Vec<usize> = (0..a_n).collect();
        for g in 0..g_n {
            let dense = |a: usize| if in_gt[g * a_n + a] { align[g * a_n + a] + cfg.eps } else { 0.0 };
            order.select_nth_unstable_by(k.saturating_sub(1), |&i, &j| dense(j).total_cmp(&dense(i)).then(i.cmp(&j)));
            let mut miou = vec![0f32; a_n];
            for &a in order[..k].iter().filter(|&&a| in_gt[g * a_n + a]) {
                miou[a] = mask_iou(g, a);
            }
            for a in (0..a_n).filter(|&a| in_gt[g * a_n + a]) {
                let o = (overlaps[g * a_n + a] + miou[a]) / 2.0;
                overlaps[g * a_n + a] = o;
                align[g * a_n + a] = scores[a * nc + gts[g].cls].powf(cfg.alpha) * o.powf(cfg.beta);
            }
            order.sort_unstable();
        }
    }
    // Top-k anchors by alignment per box (over all anchors, ties to the lower index).
    let mut pos = vec![false; g_n * a_n];
    let mut order: Vec<usize> = (0..a_n).collect();
    for g in 0..g_n {
        let row = &align[g * a_n..(g + 1) * a_n];
        let k = cfg.topk.min(a_n);
        order.select_nth_unstable_by(k.saturating_sub(1), |&i, &j| row[j].total_cmp(&row[i]).then(i.cmp(&j)));
        for &a in &order[..k] {
            pos[g * a_n + a] = in_gt[g * a_n + a];
        }
        order.sort_unstable();
    }
    // Anchors positive for several boxes keep the box with the highest overlap (over all boxes).
    for a in 0..a_n {
        let n_pos = (0..g_n).filter(|&g| pos[g * a_n + a]).count();
        if n_pos > 1 {
            let mut best = 0;
            for g in 1..g_n {
                if overlaps[g * a_n + a] > overlaps[best * a_n + a] {
                    best = g;
                }
            }
            for g in 0..g_n {
                pos[g * a_n + a] = g == best;
            }
        }
    }
    // One-to-one heads: each box keeps its `topk2` best-aligned positives.
    if cfg.topk2 < cfg.topk {
        for g in 0..g_n {
            let mut cand: Vec<usize> = (0..a_n).filter(|&a| pos[g * a_n + a]).collect();
            cand.sort_by(|&i, &j| align[g * a_n + j].total_cmp(&align[g * a_n + i]).then(i.cmp(&j)));
            for &a in cand.iter().skip(cfg.topk2) {
                pos[g * a_n + a] = false;
            }
        }
    }
    // Normalisation: per box, alignment scaled so its best anchor gets the box's best IoU.
    let mut norm = vec![0f32; a_n];
    for g in 0..g_n {
        let (mut max_align, mut max_iou) = (0f32, 0f32);
        for a in 0..a_n {
            if pos[g * a_n + a] {
                max_align = max_align.max(align[g * a_n + a]);
                max_iou = max_iou.max(overlaps[g * a_n + a]);
            }
        }
        for a in 0..a_n {
            if pos[g * a_n + a] {
                let v = align[g * a_n + a] * max_iou / (max_align + cfg.eps);
                norm[a] = norm[a].max(v);
            }
        }
    }
    for a in 0..a_n {
        if let Some(g) = (0..g_n).find(|&g| pos[g * a_n + a]) {
            out.fg[a] = true;
            out.gt_idx[a] = g;
            out.score[a] = norm[a];
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_box_gets_at_most_topk_inside_anchors() {
        // 8×8 grid of anchors at stride 8 (64 px image); one 24 px box
        let anchors: Vec<[f32; 2]> = (0..64).map(|i| [(i % 8) as f32 * 8.0 + 4.0, (i / 8) as f32 * 8.0 + 4.0]).collect();
        let boxes: Vec<[f32; 4]> = anchors.iter().map(|p| [p[0] - 10.0, p[1] - 10.0, p[0] + 10.0, p[1] + 10.0]).collect();
        let scores = vec![0.5f32; 64];
        let gt = GtBox { cls: 0, xyxy: [16.0, 16.0, 40.0, 40.0] };
        let cfg = AssignerConfig { topk: 4, ..AssignerConfig::for_strides(&[8.0, 16.0, 32.0]) };
        let a = assign(&cfg, &scores, 1, &boxes, &anchors, &[gt]);
        let fg: Vec<usize> = (0..64).filter(|&i| a.fg[i]).collect();
        assert_eq!(fg.len(), 4);
        for &i in &fg {
            let p = anchors[i];
            assert!(p[0] > 16.0 && p[0] < 40.0 && p[1] > 16.0 && p[1] < 40.0);
        }
        // the best-aligned anchor's soft score equals the box's best IoU
        let best = fg.iter().map(|&i| a.score[i]).fold(0.0, f32::max);
        let best_iou = fg.iter().map(|&i| ciou(&gt.xyxy, &boxes[i]).max(0.0)).fold(0.0, f32::max);
        assert!((best - best_iou).abs() < 1e-6);
    }

    #[test]
    fn topk2_keeps_the_best_aligned_anchor_per_box() {
        let anchors: Vec<[f32; 2]> = (0..64).map(|i| [(i % 8) as f32 * 8.0 + 4.0, (i / 8) as f32 * 8.0 + 4.0]).collect();
        let boxes: Vec<[f32; 4]> = anchors.iter().map(|p| [p[0] - 10.0, p[1] - 10.0, p[0] + 10.0, p[1] + 10.0]).collect();
        let scores: Vec<f32> = (0..64).map(|i| 0.1 + i as f32 / 100.0).collect();
        let gt = GtBox { cls: 0, xyxy: [16.0, 16.0, 40.0, 40.0] };
        let base = AssignerConfig { topk: 7, ..AssignerConfig::for_strides(&[8.0, 16.0, 32.0]) };
        let many = assign(&base, &scores, 1, &boxes, &anchors, &[gt]);
        let one = assign(&AssignerConfig { topk2: 1, ..base }, &scores, 1, &boxes, &anchors, &[gt]);
        let fg: Vec<usize> = (0..64).filter(|&i| one.fg[i]).collect();
        assert_eq!(fg.len(), 1);
        // the survivor is the best-aligned of the seven
        let align = |i: usize| scores[i].powf(0.5) * ciou(&gt.xyxy, &boxes[i]).max(0.0).powf(6.0);
        let best = (0..64).filter(|&i| many.fg[i]).max_by(|&i, &j| align(i).total_cmp(&align(j))).unwrap();
        assert_eq!(fg[0], best);
    }

    #[test]
    fn no_boxes_means_background() {
        let a = assign(&AssignerConfig::for_strides(&[8.0]), &[0.5; 4], 1, &[[0.0; 4]; 4], &[[1.0, 1.0]; 4], &[]);
        assert!(a.fg.iter().all(|f| !f));
    }
}
