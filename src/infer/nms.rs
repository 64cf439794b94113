//! Class-aware non-maximum suppression with Ultralytics' semantics.

/// One detection in input-image pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Detection {
    pub xyxy: [f32; 4],
    pub conf: f32,
    pub cls: usize,
    /// The anchor (column of the decoded output) it came from, whose mask coefficients a
    /// segmentation head gives; 0 where there is none (labels drawn as boxes, exported rows).
    pub anchor: usize,
}

#[derive(Debug, Clone, Copy)]
pub struct NmsConfig {
    pub conf: f32,
    pub iou: f32,
    pub max_det: usize,
    /// One row per (anchor, class) above `conf` instead of only the best class.
    pub multi_label: bool,
    pub agnostic: bool,
    /// Cap on candidates entering NMS (Ultralytics' `max_nms`).
    pub max_nms: usize,
    /// Ultralytics' `nms`: false runs the one-to-one head of an end-to-end model (YOLOv10,
    /// YOLO26) with top-k and no NMS; models without that head ignore it.
    pub nms: bool,
}

impl NmsConfig {
    /// Prediction defaults: conf 0.25, iou 0.7, max_det 300, best class only.
    pub fn predict() -> Self {
        Self { conf: 0.25, iou: 0.7, max_det: 300, multi_label: false, agnostic: false, max_nms: 30_000, nms: true }
    }
    /// Validation defaults: conf 0.001, iou 0.7, max_det 300, multi-label.
    pub fn val() -> Self {
        Self { conf: 0.001, multi_label: true, ..Self::predict() }
    }
}

/// The one-to-one head's post-processing (Ultralytics' `get_topk_index`, not class-agnostic):
/// the `k = min(max_det, A)` anchors with the highest class score, then the `k` highest of their
/// (anchor, class) scores, best first. `pred` is one image's output laid out `[4 + nc][A]` with
/// xyxy boxes. No NMS, no confidence threshold.
pub fn end2end_topk(pred: &[f32], nc: usize, max_det: usize) -> Vec<Detection> {
    let a = pred.len() / (4 + nc);
    let at = |c: usize, i: usize| pred[c * a + i];
    let k = max_det.min(a);
    let best = |i: usize| (0..nc).map(|c| at(4 + c, i)).fold(f32::NEG_INFINITY, f32::max);
    let mut anchors: Vec<usize> = (0..a).collect();
    anchors.sort_by(|&x, &y| best(y).total_cmp(&best(x)));
    anchors.truncate(k);
    let mut pairs: Vec<(usize, usize)> = anchors.iter().flat_map(|&i| (0..nc).map(move |c| (i, c))).collect();
    pairs.sort_by(|&(i, c), &(j, d)| at(4 + d, j).total_cmp(&at(4 + c, i)));
    pairs.truncate(k);
    pairs.into_iter().map(|(i, c)| Detection { xyxy: [at(0, i), at(1, i), at(2, i), at(3, i)], conf: at(4 + c, i), cls: c, anchor: i }).collect()
}

/// One image's detections from the one-to-one head: the top-k above `cfg.conf` (Ultralytics'
/// validator and predictor filter end-to-end outputs by confidence only).
pub fn end2end(pred: &[f32], nc: usize, cfg: &NmsConfig) -> Vec<Detection> {
    end2end_topk(pred, nc, cfg.max_det).into_iter().filter(|d| d.conf > cfg.conf).collect()
}

/// Detections as an end-to-end graph's rows: x1, y1, x2, y2, score, class.
pub fn detection_rows(dets: &[Detection]) -> Vec<f32> {
    dets.iter().flat_map(|d| [d.xyxy[0], d.xyxy[1], d.xyxy[2], d.xyxy[3], d.conf, d.cls as f32]).collect()
}

/// One image's detections from an end-to-end graph's rows (as [`detection_rows`] writes
/// them): those above `cfg.conf`, at most `cfg.max_det`.
pub fn detections_from_rows(rows: &[f32], cfg: &NmsConfig) -> Vec<Detection> {
    rows.chunks_exact(6)
        .map(|r| Detection { xyxy: [r[0], r[1], r[2], r[3]], conf: r[4], cls: r[5].max(0.0) as usize, anchor: 0 })
        .filter(|d| d.conf > cfg.conf)
        .take(cfg.max_det)
        .collect()
}

/// One image's detections from a decoded output: the end-to-end top-k when `end2end` (the
/// one-to-one head's output), NMS otherwise.
pub fn postprocess(pred: &[f32], nc: usize, end2end: bool, cfg: &NmsConfig) -> Vec<Detection> {
    if end2end {
        self::end2end(pred, nc, cfg)
    } else {
        nms(pred, nc, cfg)
    }
}

pub fn iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let iw = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let ih = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = iw * ih;
    let ua = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter;
    if ua <= 0.0 {
        0.0
    } else {
        inter / ua
    }
}

/// Runs NMS on one image's decoded head output, laid out channel-major as
/// `[4 + nc][A]` (centre-x, centre-y, w, h, then class scores).
pub fn nms(pred: &[f32], nc: usize, cfg: &NmsConfig) -> Vec<Detection> {
    let a = pred.len() / (4 + nc);
    let at = |c: usize, i: usize| pred[c * a + i];
    let mut cands: Vec<Detection> = Vec::new();
    for i in 0..a {
        let (cx, cy, w, h) = (at(0, i), at(1, i), at(2, i), at(3, i));
        let xyxy = [cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0];
        if cfg.multi_label && nc > 1 {
            for c in 0..nc {
                let s = at(4 + c, i);
                if s > cfg.conf {
                    cands.push(Detection { xyxy, conf: s, cls: c, anchor: i });
                }
            }
        } else {
            // the first class with the highest score (NaN scores never win)
            let (best, bc) = (0..nc).map(|c| (at(4 + c, i), c)).fold((f32::NEG_INFINITY, 0), |b, x| if x.0 > b.0 { x } else { b });
            if best > cfg.conf {
                cands.push(Detection { xyxy, conf: best, cls: bc, anchor: i });
            }
        }
    }
    suppress(cands, cfg)
}

/// Greedy suppression in descending confidence: a box is dropped when its IoU
/// with a kept box of the same class (any class when agnostic) exceeds `iou`.
pub fn suppress(mut cands: Vec<Detection>, cfg: &NmsConfig) -> Vec<Detection> {
    // Stable sort keeps anchor order among equal scores.
    cands.sort_by(|x, y| y.conf.partial_cmp(&x.conf).unwrap_or(std::cmp::Ordering::Equal));
    cands.truncate(cfg.max_nms);
    let mut kept: Vec<Detection> = Vec::new();
    for d in cands {
        if kept.len() >= cfg.max_det {
            break;
        }
        let clash = kept
            .iter()
            .any(|k| (cfg.agnostic || k.cls == d.cls) && iou(&k.xyxy, &d.xyxy) > cfg.iou);
        if !clash {
            kept.push(d);
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det(xyxy: [f32; 4], conf: f32, cls: usize) -> Detection {
        Detection { xyxy, conf, cls, anchor: 0 }
    }

    #[test]
    fn overlapping_boxes_of_one_class_are_suppressed() {
        let cfg = NmsConfig::predict();
        let out = suppress(
            vec![det([0., 0., 10., 10.], 0.8, 0), det([0.5, 0.5, 10.5, 10.5], 0.9, 0), det([50., 50., 60., 60.], 0.5, 0)],
            &cfg,
        );
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].conf, 0.9);
        assert_eq!(out[1].conf, 0.5);
    }

    #[test]
    fn threshold_is_strict_and_classes_do_not_suppress_each_other() {
        // IoU exactly 0.5: kept at iou 0.5 (suppression needs IoU > thr)
        let a = det([0., 0., 10., 10.], 0.9, 0);
        let b = det([0., 0., 10., 5.], 0.8, 0);
        assert!((iou(&a.xyxy, &b.xyxy) - 0.5).abs() < 1e-6);
        let cfg = NmsConfig { iou: 0.5, ..NmsConfig::predict() };
        assert_eq!(suppress(vec![a, b], &cfg).len(), 2);
        let cfg = NmsConfig { iou: 0.49, ..NmsConfig::predict() };
        assert_eq!(suppress(vec![a, b], &cfg).len(), 1);
        // different classes never suppress unless agnostic
        let c = det([0., 0., 10., 10.], 0.8, 1);
        assert_eq!(suppress(vec![a, c], &cfg).len(), 2);
        let cfg = NmsConfig { agnostic: true, ..cfg };
        assert_eq!(suppress(vec![a, c], &cfg).len(), 1);
    }

    #[test]
    fn max_det_keeps_the_most_confident() {
        let boxes: Vec<_> = (0..10).map(|i| det([i as f32 * 20., 0., i as f32 * 20. + 10., 10.], i as f32 / 10., 0)).collect();
        let cfg = NmsConfig { max_det: 3, conf: 0.0, ..NmsConfig::predict() };
        let out = suppress(boxes, &cfg);
        assert_eq!(out.iter().map(|d| d.conf).collect::<Vec<_>>(), vec![0.9, 0.8, 0.7]);
    }

    #[test]
    fn decoded_rows_become_candidates_above_conf() {
        // two anchors, nc 2: [cx, cy, w, h, s0, s1] channel-major
        let pred = vec![
            5., 50., // cx
            5., 50., // cy
            10., 10., // w
            10., 10., // h
            0.3, 0.1, // class 0
            0.6, 0.2, // class 1
        ];
        let out = nms(&pred, 2, &NmsConfig::predict());
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].cls, 1);
        assert_eq!(out[0].xyxy, [0., 0., 10., 10.]);
        let out = nms(&pred, 2, &NmsConfig { conf: 0.15, ..NmsConfig::val() });
        assert_eq!(out.len(), 3);
    }
}
