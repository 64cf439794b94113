//! The detection confusion matrix of Ultralytics 8.4.190's validator: detections above the
//! validation confidence matched one-to-one to labels by IoU > 0.45, class-agnostic, highest
//! confidence first; a label nobody matched counts as missed (background row), a detection
//! that matched nothing as a false alarm (background column).

use super::metrics::{box_iou, Det};

/// IoU above which a detection and a label are paired (Ultralytics' `iou_thres`).
pub const MATCH_IOU: f32 = 0.45;

/// Counts indexed `[predicted][true]`, with index `nc` the background.
#[derive(Clone, Debug, PartialEq)]
pub struct ConfusionMatrix {
    pub nc: usize,
    pub counts: Vec<Vec<f64>>,
}

impl ConfusionMatrix {
    pub fn new(nc: usize) -> Self {
        Self { nc, counts: vec![vec![0.0; nc + 1]; nc + 1] }
    }

    /// Adds one image: its labels (box, class) and detections (same coordinates), keeping the
    /// detections with confidence above `conf`. Classes beyond `nc` count as background.
    pub fn add(&mut self, gt: &[([f32; 4], usize)], dets: &[Det], conf: f32) {
        let bg = self.nc;
        let cls = |c: usize| c.min(bg);
        let kept: Vec<&Det> = dets.iter().filter(|d| d.conf > conf).collect();
        if gt.is_empty() {
            for d in &kept {
                self.counts[cls(d.cls)][bg] += 1.0;
            }
            return;
        }
        // Labels and detections below `conf` are matched (with nothing) like any others.
        let mut iou: Vec<Vec<f32>> = gt.iter().map(|(g, _)| kept.iter().map(|d| box_iou(g, &d.xyxy)).collect()).collect();
        let mut order: Vec<usize> = (0..kept.len()).filter(|&j| iou.iter().any(|row| row[j] > MATCH_IOU)).collect();
        order.sort_by(|&a, &b| kept[b].conf.total_cmp(&kept[a].conf));
        let mut matched_det = vec![false; kept.len()];
        let mut det_of_gt = vec![None; gt.len()];
        for j in order {
            let best = (0..gt.len()).fold(None, |b: Option<usize>, i| match b {
                Some(k) if iou[k][j] >= iou[i][j] => Some(k),
                _ => Some(i),
            });
            if let Some(i) = best.filter(|&i| iou[i][j] > MATCH_IOU) {
                det_of_gt[i] = Some(j);
                matched_det[j] = true;
                iou[i].iter_mut().for_each(|v| *v = 0.0);
            }
        }
        for (i, &(_, g)) in gt.iter().enumerate() {
            let predicted = det_of_gt[i].map_or(bg, |j| cls(kept[j].cls));
            self.counts[predicted][cls(g)] += 1.0;
        }
        for (j, d) in kept.iter().enumerate() {
            if !matched_det[j] {
                self.counts[cls(d.cls)][bg] += 1.0;
            }
        }
    }

    /// Each column (true class) divided by its sum (+1e-9), as the normalised plot shows it.
    pub fn normalized(&self) -> Vec<Vec<f64>> {
        let n = self.nc + 1;
        let sums: Vec<f64> = (0..n).map(|t| (0..n).map(|p| self.counts[p][t]).sum::<f64>() + 1e-9).collect();
        (0..n).map(|p| (0..n).map(|t| self.counts[p][t] / sums[t]).collect()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det(xyxy: [f32; 4], conf: f32, cls: usize) -> Det {
        Det { xyxy, conf, cls }
    }

    #[test]
    fn matching_is_one_to_one_class_agnostic_and_by_confidence() {
        // Checked with Ultralytics 8.4.190's ConfusionMatrix.process_batch (conf 0.001): a label
        // of class 0 under two detections (class 1 at 0.9, class 0 at 0.8) and a far label of
        // class 1; a third detection under the threshold is dropped.
        let mut m = ConfusionMatrix::new(2);
        let gt = [([0.0, 0.0, 10.0, 10.0], 0), ([100.0, 100.0, 110.0, 110.0], 1)];
        let dets = [det([0.0, 0.0, 10.0, 10.0], 0.9, 1), det([0.0, 0.0, 10.0, 10.0], 0.8, 0), det([50.0, 50.0, 60.0, 60.0], 0.0005, 0)];
        m.add(&gt, &dets, 0.001);
        let want = vec![vec![0.0, 0.0, 1.0], vec![1.0, 0.0, 0.0], vec![0.0, 1.0, 0.0]];
        assert_eq!(m.counts, want);
        let n = m.normalized();
        assert!((n[1][0] - 1.0).abs() < 1e-6 && (n[2][1] - 1.0).abs() < 1e-6);
    }

    #[test]
    fn images_without_labels_or_detections() {
        let mut m = ConfusionMatrix::new(1);
        m.add(&[], &[det([0.0, 0.0, 1.0, 1.0], 0.5, 0)], 0.25);
        m.add(&[([0.0, 0.0, 1.0, 1.0], 0)], &[], 0.25);
        m.add(&[([0.0, 0.0, 1.0, 1.0], 0)], &[det([0.0, 0.0, 1.0, 1.0], 0.1, 0)], 0.25);
        assert_eq!(m.counts, vec![vec![0.0, 1.0], vec![2.0, 0.0]]);
    }
}
