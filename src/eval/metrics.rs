//! Ultralytics-style detection metrics (as the 8.4.190 validator reports them).
//!
//! Pipeline: per image, [`match_image`] marks every detection true/false positive at the ten IoU
//! thresholds 0.50:0.05:0.95; [`MetricsAccumulator`] gathers those rows with the labels' classes
//! over the whole split and [`MetricsAccumulator::compute`] turns them into per-class AP
//! (101-point interpolation), mAP50, mAP75, mAP50-95, and the precision/recall reported at the
//! confidence that maximises the smoothed mean F1.
//!
//! Number types follow the reference: IoU in f32 (boxes, areas and the `+1e-7` all in f32),
//! confidences stored as f32, all curve and AP arithmetic in f64.

/// Number of IoU thresholds (0.50, 0.55, …, 0.95).
pub const N_IOU: usize = 10;

/// Points on the confidence grid used for the P, R and F1 curves.
const CONF_GRID: usize = 1000;

/// The `eps` added to denominators in the AP and F1 arithmetic.
const EPS: f64 = 1e-16;

/// One detection: a box (x1, y1, x2, y2), its confidence and its class.
#[derive(Clone, Copy, Debug)]
pub struct Det {
    pub xyxy: [f32; 4],
    pub conf: f32,
    pub cls: usize,
}

/// One image's ground truth and detections, boxes xyxy in one coordinate space.
#[derive(Clone, Debug, Default)]
pub struct ImageEval {
    /// Ground-truth boxes (x1, y1, x2, y2) with their class.
    pub gt: Vec<([f32; 4], usize)>,
    /// Detections (typically NMS output), in any order.
    pub dets: Vec<Det>,
}

/// Per-class numbers of [`DetMetrics`].
#[derive(Clone, Debug, PartialEq)]
pub struct ClassAp {
    /// Class index.
    pub class: usize,
    /// AP at IoU 0.5.
    pub ap50: f64,
    /// AP averaged over IoU 0.50:0.05:0.95.
    pub ap: f64,
    /// Precision at the confidence chosen by the max mean F1.
    pub precision: f64,
    /// Recall at the confidence chosen by the max mean F1.
    pub recall: f64,
    /// Number of ground-truth boxes of this class.
    pub n_labels: usize,
}

/// Ultralytics 8.4.190 validator numbers.
#[derive(Clone, Debug, PartialEq)]
pub struct DetMetrics {
    /// Mean over classes of the precision at the max-mean-F1 confidence.
    pub precision: f64,
    /// Mean over classes of the recall at the max-mean-F1 confidence.
    pub recall: f64,
    /// Mean AP at IoU 0.5.
    pub map50: f64,
    /// Mean AP at IoU 0.75.
    pub map75: f64,
    /// mAP50-95: mean AP over classes and the ten IoU thresholds.
    pub map: f64,
    /// One entry per class present in the ground truth, ascending class index.
    pub per_class: Vec<ClassAp>,
    /// Model-selection fitness; in 8.4.190 this is mAP50-95 (classic: 0.1·mAP50 + 0.9·mAP50-95).
    pub fitness: f64,
}

/// IoU thresholds 0.50:0.05:0.95.
///
/// Computed in f32 the way `torch.linspace(0.5, 0.95, 10)` does (first half stepping up from the
/// start, second half stepping down from the end), so `iou >= t` compares exactly as the reference.
pub fn iou_thresholds() -> [f32; N_IOU] {
    let (start, end) = (0.5f32, 0.95f32);
    let step = (end - start) / (N_IOU - 1) as f32;
    let mut t = [0f32; N_IOU];
    for (i, v) in t.iter_mut().enumerate() {
        *v = if i < N_IOU / 2 { start + step * i as f32 } else { end - step * (N_IOU - 1 - i) as f32 };
    }
    t
}

/// IoU of two xyxy boxes in f32: `inter / (area_a + area_b − inter + 1e-7)`.
pub fn box_iou(a: &[f32; 4], b: &[f32; 4]) -> f32 {
    let w = (a[2].min(b[2]) - a[0].max(b[0])).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1])).max(0.0);
    let inter = w * h;
    let area_a = (a[2] - a[0]) * (a[3] - a[1]);
    let area_b = (b[2] - b[0]) * (b[3] - b[1]);
    inter / (area_a + area_b - inter + 1e-7)
}

/// IoU of every detection (rows) with every ground-truth box (columns); pairs of different
/// classes get 0.
fn class_aware_ious(img: &ImageEval) -> Vec<Vec<f32>> {
    img.dets
        .iter()
        .map(|d| img.gt.iter().map(|(g, c)| if *c == d.cls { box_iou(&d.xyxy, g) } else { 0.0 }).collect())
        .collect()
}

/// Detection indices by descending confidence (stable: ties keep their input order).
fn by_confidence(dets: &[Det]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..dets.len()).collect();
    order.sort_by(|&a, &b| dets[b].conf.total_cmp(&dets[a].conf));
    order
}

/// TP matrix `[n_dets][10]` for one image, rows in the order of `img.dets`.
///
/// Ultralytics 8.4 matching (COCO-like greedy by confidence), class-aware: for every IoU
/// threshold independently, detections are visited by descending confidence; each one takes the
/// not-yet-claimed ground-truth box of its class with the highest IoU (first one on ties) and is
/// a true positive, claiming that box, when that IoU is ≥ the threshold.
///
/// This is the variant that reproduces the BCCD metrics fixture (to ~1e-15). The classic 8.0–8.3
/// matching (all pairs ≥ t sorted by IoU, one per prediction, then one per GT) differs there in a
/// single row, enough to move mAP50-95 by 4.8e-4 and class 0's AP50 by 8.3e-4.
pub fn match_image(img: &ImageEval) -> Vec<[bool; N_IOU]> {
    match_with_ious(img, &class_aware_ious(img))
}

/// [`match_image`] with the IoUs given (`ious[det][gt]`, 0 across classes): a segmentation
/// task's mask IoUs.
fn match_with_ious(img: &ImageEval, ious: &[Vec<f32>]) -> Vec<[bool; N_IOU]> {
    let order = by_confidence(&img.dets);
    let mut tp = vec![[false; N_IOU]; img.dets.len()];
    for (ti, &t) in iou_thresholds().iter().enumerate() {
        let mut claimed = vec![false; img.gt.len()];
        for &d in &order {
            let best = (0..img.gt.len()).filter(|&g| !claimed[g]).fold(None, |best: Option<usize>, g| match best {
                Some(b) if ious[d][b] >= ious[d][g] => Some(b),
                _ => Some(g),
            });
            if let Some(g) = best {
                if ious[d][g] >= t {
                    claimed[g] = true;
                    tp[d][ti] = true;
                }
            }
        }
    }
    tp
}

/// One detection as the accumulator keeps it.
#[derive(Clone, Copy, Debug)]
struct PredRecord {
    conf: f32,
    cls: usize,
    tp: [bool; N_IOU],
}

/// Accumulates images then computes the metrics.
///
/// `compute` follows `ap_per_class`: the classes evaluated are the unique ground-truth classes;
/// per class, cumulative TP/FP over detections sorted by descending confidence give recall and
/// precision; AP is the 101-point interpolated area under the precision envelope with the 8.4
/// sentinels; P and R are read at the maximum of the box-smoothed mean F1 over a 1000-point
/// confidence grid; fitness = mAP50-95 (8.4.190).
#[derive(Clone, Debug, Default)]
pub struct MetricsAccumulator {
    preds: Vec<PredRecord>,
    /// Ground-truth box count per class index.
    n_labels: Vec<usize>,
}

impl MetricsAccumulator {
    /// An empty accumulator for `nc` classes (labels of a larger class index are still counted).
    pub fn new(nc: usize) -> Self {
        Self { preds: Vec::new(), n_labels: vec![0; nc] }
    }

    /// Matches one image ([`match_image`]) and records its detections and labels.
    pub fn add(&mut self, img: &ImageEval) {
        self.record(img, match_image(img));
    }

    /// As [`Self::add`], matched by other IoUs than the boxes' (`ious[det][gt]`, e.g. of masks;
    /// pairs of different classes are never matched).
    pub fn add_with_ious(&mut self, img: &ImageEval, ious: &[Vec<f32>]) {
        let aware: Vec<Vec<f32>> =
            img.dets.iter().zip(ious).map(|(d, row)| img.gt.iter().zip(row).map(|((_, c), &v)| if *c == d.cls { v } else { 0.0 }).collect()).collect();
        self.record(img, match_with_ious(img, &aware));
    }

    fn record(&mut self, img: &ImageEval, tp: Vec<[bool; N_IOU]>) {
        self.preds.extend(img.dets.iter().zip(tp).map(|(d, tp)| PredRecord { conf: d.conf, cls: d.cls, tp }));
        for &(_, c) in &img.gt {
            if c >= self.n_labels.len() {
                self.n_labels.resize(c + 1, 0);
            }
            self.n_labels[c] += 1;
        }
    }

    /// Computes the metrics over everything added so far.
    pub fn compute(&self) -> DetMetrics {
        self.compute_with_curves().0
    }

    /// The metrics and the curves Ultralytics plots from the same arithmetic.
    pub fn compute_with_curves(&self) -> (DetMetrics, Curves) {
        let mut preds = self.preds.clone();
        // Stable sort; ties in confidence keep the order images were added in.
        preds.sort_by(|a, b| b.conf.total_cmp(&a.conf));
        let grid = linspace(0.0, 1.0, CONF_GRID);
        let classes: Vec<(usize, usize)> =
            self.n_labels.iter().enumerate().filter(|(_, &n)| n > 0).map(|(c, &n)| (c, n)).collect();
        let curves: Vec<ClassCurves> = classes.iter().map(|&(c, n_l)| class_curves(&preds, c, n_l, &grid)).collect();
        let f1 = |cc: &ClassCurves| cc.p_curve.iter().zip(&cc.r_curve).map(|(p, r)| 2.0 * p * r / (p + r + EPS)).collect();
        let f1: Vec<Vec<f64>> = curves.iter().map(f1).collect();
        // P and R are read where the box-smoothed mean F1 over classes peaks (first index on ties).
        let i = argmax_first(&Curves::smoothed_mean(&f1));
        let per_class: Vec<ClassAp> = classes
            .iter()
            .zip(&curves)
            .map(|(&(class, n_labels), cc)| ClassAp {
                class,
                ap50: cc.ap[0],
                ap: mean(&cc.ap),
                precision: cc.p_curve[i],
                recall: cc.r_curve[i],
                n_labels,
            })
            .collect();
        let col = |f: &dyn Fn(&ClassCurves) -> f64| mean(&curves.iter().map(f).collect::<Vec<_>>());
        let map = mean(&curves.iter().flat_map(|c| c.ap).collect::<Vec<_>>());
        let metrics = DetMetrics {
            precision: mean(&per_class.iter().map(|c| c.precision).collect::<Vec<_>>()),
            recall: mean(&per_class.iter().map(|c| c.recall).collect::<Vec<_>>()),
            map50: col(&|c| c.ap[0]),
            map75: col(&|c| c.ap[5]),
            map,
            per_class,
            fitness: map,
        };
        let plots = Curves {
            classes: classes.iter().map(|c| c.0).collect(),
            ap50: curves.iter().map(|c| c.ap[0]).collect(),
            pr: curves.iter().map(|c| c.pr.clone()).collect(),
            f1,
            p: curves.iter().map(|c| c.p_curve.clone()).collect(),
            r: curves.iter().map(|c| c.r_curve.clone()).collect(),
            x: grid,
        };
        (metrics, plots)
    }
}

/// What Ultralytics plots after a validation (`BoxPR/F1/P/R_curve.png`), per class with labels,
/// all at IoU 0.5 on a 1000-point grid.
#[derive(Clone, Debug, Default)]
pub struct Curves {
    /// The classes with labels, in index order.
    pub classes: Vec<usize>,
    /// AP50 per class.
    pub ap50: Vec<f64>,
    /// The grid: confidence for `p`, `r` and `f1`; recall for `pr`.
    pub x: Vec<f64>,
    /// Per class: the precision envelope at recall x (the PR curve).
    pub pr: Vec<Vec<f64>>,
    /// Per class: precision, recall and F1 at confidence x.
    pub p: Vec<Vec<f64>>,
    pub r: Vec<Vec<f64>>,
    pub f1: Vec<Vec<f64>>,
}

impl Curves {
    /// The mean over classes of `rows` at each grid point.
    pub fn mean(rows: &[Vec<f64>]) -> Vec<f64> {
        let n = rows.first().map_or(0, Vec::len);
        (0..n).map(|i| mean(&rows.iter().map(|r| r[i]).collect::<Vec<_>>())).collect()
    }

    /// Ultralytics' box filter (fraction 0.1) over the mean of a confidence curve.
    pub fn smoothed_mean(rows: &[Vec<f64>]) -> Vec<f64> {
        smooth(&Self::mean(rows), 0.1)
    }

    /// The maximum of [`Curves::smoothed_mean`] of `rows` and the confidence it is reached at
    /// (the first on ties): the "all classes 0.79 at 0.240" of Ultralytics' curve legends.
    pub fn peak(&self, rows: &[Vec<f64>]) -> (f64, f64) {
        let mean = Self::smoothed_mean(rows);
        let i = argmax_first(&mean);
        (mean.get(i).copied().unwrap_or(0.0), self.x.get(i).copied().unwrap_or(0.0))
    }
}

/// Per-class AP at the ten thresholds, precision/recall on the confidence grid and the
/// precision envelope on the recall grid.
struct ClassCurves {
    ap: [f64; N_IOU],
    p_curve: Vec<f64>,
    r_curve: Vec<f64>,
    pr: Vec<f64>,
}

/// AP and P/R curves for class `c` with `n_l` labels; `preds` sorted by descending confidence.
/// A class without detections gets AP 0 and all-zero curves.
fn class_curves(preds: &[PredRecord], c: usize, n_l: usize, grid: &[f64]) -> ClassCurves {
    let mine: Vec<&PredRecord> = preds.iter().filter(|p| p.cls == c).collect();
    if mine.is_empty() || n_l == 0 {
        let zeros = vec![0.0; grid.len()];
        return ClassCurves { ap: [0.0; N_IOU], p_curve: zeros.clone(), r_curve: zeros.clone(), pr: zeros };
    }
    // x-coordinates for the confidence curves: −conf is ascending.
    let neg_conf: Vec<f64> = mine.iter().map(|p| -(p.conf as f64)).collect();
    let mut ap = [0.0; N_IOU];
    let (mut p_curve, mut r_curve, mut pr) = (Vec::new(), Vec::new(), Vec::new());
    for (j, ap_j) in ap.iter_mut().enumerate() {
        let (recall, precision) = pr_curve(&mine, j, n_l);
        let (ap, mrec, mpre) = ap_and_envelope(&recall, &precision);
        if j == 0 {
            r_curve = grid.iter().map(|&x| interp(-x, &neg_conf, &recall, Some(0.0), None)).collect();
            p_curve = grid.iter().map(|&x| interp(-x, &neg_conf, &precision, Some(1.0), None)).collect();
            pr = grid.iter().map(|&x| interp(x, &mrec, &mpre, None, None)).collect();
        }
        *ap_j = ap;
    }
    ClassCurves { ap, p_curve, r_curve, pr }
}

/// Cumulative recall and precision at IoU column `j` over `preds` (already sorted).
fn pr_curve(preds: &[&PredRecord], j: usize, n_l: usize) -> (Vec<f64>, Vec<f64>) {
    let (mut tpc, mut fpc) = (0u64, 0u64);
    let mut recall = Vec::with_capacity(preds.len());
    let mut precision = Vec::with_capacity(preds.len());
    for p in preds {
        if p.tp[j] {
            tpc += 1;
        } else {
            fpc += 1;
        }
        recall.push(tpc as f64 / (n_l as f64 + EPS));
        precision.push(tpc as f64 / (tpc + fpc) as f64);
    }
    (recall, precision)
}

/// Area under the precision–recall curve, 101-point interpolation.
///
/// Sentinels of 8.4: recall `[0, r…, r_last, 1]`, precision `[1, p…, 0, 0]` (precision falls to
/// 0 right after the last recall reached), then the monotone precision envelope, sampled with
/// linear interpolation at recall 0, 0.01, …, 1 and integrated with the trapezoid rule.
pub fn compute_ap(recall: &[f64], precision: &[f64]) -> f64 {
    ap_and_envelope(recall, precision).0
}

/// [`compute_ap`] with the recall points and the precision envelope it integrates.
fn ap_and_envelope(recall: &[f64], precision: &[f64]) -> (f64, Vec<f64>, Vec<f64>) {
    let last = recall.last().copied().unwrap_or(0.0);
    let mrec: Vec<f64> = std::iter::once(0.0).chain(recall.iter().copied()).chain([last, 1.0]).collect();
    let mut mpre: Vec<f64> = std::iter::once(1.0).chain(precision.iter().copied()).chain([0.0, 0.0]).collect();
    for i in (0..mpre.len() - 1).rev() {
        mpre[i] = mpre[i].max(mpre[i + 1]);
    }
    let x = linspace(0.0, 1.0, 101);
    let y: Vec<f64> = x.iter().map(|&xi| interp(xi, &mrec, &mpre, None, None)).collect();
    (trapezoid(&y, &x), mrec, mpre)
}

/// Box filter of width `round(2·f·n)//2 + 1`, the ends padded with the edge values (same length
/// out as in).
fn smooth(y: &[f64], f: f64) -> Vec<f64> {
    if y.is_empty() {
        return Vec::new();
    }
    let nf = ((y.len() as f64 * f * 2.0).round_ties_even() as usize) / 2 + 1;
    let half = nf / 2;
    let (first, last) = (y[0], y[y.len() - 1]);
    let padded: Vec<f64> =
        std::iter::repeat_n(first, half).chain(y.iter().copied()).chain(std::iter::repeat_n(last, half)).collect();
    let w = 1.0 / nf as f64;
    padded.windows(nf).map(|win| win.iter().map(|v| v * w).sum()).collect()
}

/// Index of the first maximum.
fn argmax_first(v: &[f64]) -> usize {
    v.iter().enumerate().fold(0, |best, (i, &x)| if x > v[best] { i } else { best })
}

/// `n` evenly spaced values from `start` to `stop` inclusive, computed as numpy does
/// (`start + i·step`, the last set to `stop`).
pub(crate) fn linspace(start: f64, stop: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![start];
    }
    let step = (stop - start) / (n - 1) as f64;
    let mut v: Vec<f64> = (0..n).map(|i| i as f64 * step + start).collect();
    if let Some(l) = v.last_mut() {
        *l = stop;
    }
    v
}

/// Piecewise-linear interpolation of `(xp, fp)` at `x`, with numpy's rules: `xp` ascending
/// (repeats allowed, the last of equal points wins), `left`/`right` (default `fp[0]`/`fp[last]`)
/// outside the range.
pub(crate) fn interp(x: f64, xp: &[f64], fp: &[f64], left: Option<f64>, right: Option<f64>) -> f64 {
    let n = xp.len();
    assert!(n > 0 && n == fp.len(), "interp: xp and fp must be non-empty and equally long");
    if x < xp[0] {
        return left.unwrap_or(fp[0]);
    }
    if x > xp[n - 1] {
        return right.unwrap_or(fp[n - 1]);
    }
    // Largest j with xp[j] <= x.
    let j = xp.partition_point(|&v| v <= x) - 1;
    if j == n - 1 || xp[j] == x {
        return fp[j];
    }
    let slope = (fp[j + 1] - fp[j]) / (xp[j + 1] - xp[j]);
    slope * (x - xp[j]) + fp[j]
}

/// Trapezoid-rule integral of `y` over `x`.
fn trapezoid(y: &[f64], x: &[f64]) -> f64 {
    (1..y.len()).map(|i| (x[i] - x[i - 1]) * (y[i] + y[i - 1]) / 2.0).sum()
}

/// Arithmetic mean (0 for an empty slice).
fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        0.0
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det(xyxy: [f32; 4], conf: f32, cls: usize) -> Det {
        Det { xyxy, conf, cls }
    }

    #[test]
    fn thresholds_are_point_five_to_point_ninety_five() {
        let t = iou_thresholds();
        assert_eq!(t[0], 0.5);
        assert_eq!(t[9], 0.95);
        for (i, v) in t.iter().enumerate() {
            assert!((v - (0.5 + 0.05 * i as f32)).abs() < 1e-6);
        }
    }

    #[test]
    fn iou_of_identical_and_disjoint_boxes() {
        let a = [0.0, 0.0, 10.0, 10.0];
        assert!((box_iou(&a, &a) - 1.0).abs() < 1e-6);
        assert_eq!(box_iou(&a, &[20.0, 20.0, 30.0, 30.0]), 0.0);
        let half = box_iou(&a, &[5.0, 0.0, 15.0, 10.0]);
        assert!((half - 50.0 / 150.0).abs() < 1e-6);
    }

    #[test]
    fn higher_confidence_claims_the_box_first() {
        // Both detections overlap the one GT; the more confident one (listed second) wins it.
        let img = ImageEval {
            gt: vec![([0.0, 0.0, 10.0, 10.0], 0)],
            dets: vec![det([0.0, 0.0, 10.0, 10.0], 0.5, 0), det([1.0, 0.0, 10.0, 10.0], 0.9, 0)],
        };
        let tp = match_image(&img);
        // The confident one has IoU 0.9: TP up to 0.90; at 0.95 the box is left to the other.
        assert_eq!(tp[1], [true, true, true, true, true, true, true, true, true, false]);
        assert_eq!(tp[0], [false, false, false, false, false, false, false, false, false, true]);
    }

    #[test]
    fn matching_is_class_aware() {
        let img = ImageEval { gt: vec![([0.0, 0.0, 10.0, 10.0], 1)], dets: vec![det([0.0, 0.0, 10.0, 10.0], 0.9, 0)] };
        assert_eq!(match_image(&img), vec![[false; N_IOU]]);
    }

    #[test]
    fn claimed_box_goes_to_next_best_unclaimed() {
        // Det A (conf .9) best overlaps G0; det B (conf .8) also prefers G0 but must take G1.
        let img = ImageEval {
            gt: vec![([0.0, 0.0, 10.0, 10.0], 0), ([2.0, 0.0, 12.0, 10.0], 0)],
            dets: vec![det([0.0, 0.0, 10.0, 10.0], 0.9, 0), det([1.0, 0.0, 11.0, 10.0], 0.8, 0)],
        };
        let tp = match_image(&img);
        assert!(tp[0].iter().all(|&b| b));
        // B vs G1: inter 9×10, union 110 → 0.818.
        assert!(tp[1][6] && !tp[1][7]);
    }

    #[test]
    fn perfect_detections_give_ap_point_995() {
        let mut acc = MetricsAccumulator::new(2);
        acc.add(&ImageEval {
            gt: vec![([0.0, 0.0, 10.0, 10.0], 0), ([20.0, 20.0, 40.0, 40.0], 1)],
            dets: vec![det([0.0, 0.0, 10.0, 10.0], 0.9, 0), det([20.0, 20.0, 40.0, 40.0], 0.8, 1)],
        });
        let m = acc.compute();
        // The last grid sample (recall 1) lands on the sentinel 0: a perfect AP is 0.995.
        assert!((m.map - 0.995).abs() < 1e-9 && (m.map50 - 0.995).abs() < 1e-9, "{m:?}");
        assert!((m.precision - 1.0).abs() < 1e-9 && (m.recall - 1.0).abs() < 1e-9);
        assert_eq!(m.fitness, m.map);
        assert_eq!(m.per_class.len(), 2);
    }

    #[test]
    fn classes_come_from_targets_only() {
        let mut acc = MetricsAccumulator::new(3);
        acc.add(&ImageEval {
            gt: vec![([0.0, 0.0, 10.0, 10.0], 0)],
            dets: vec![det([0.0, 0.0, 10.0, 10.0], 0.9, 0), det([50.0, 50.0, 60.0, 60.0], 0.9, 2)],
        });
        let m = acc.compute();
        assert_eq!(m.per_class.iter().map(|c| c.class).collect::<Vec<_>>(), vec![0]);
        assert!((m.map - 0.995).abs() < 1e-9);
    }

    #[test]
    fn ap_of_half_recall() {
        // One TP then nothing: recall 0.5 at precision 1, then the sentinel drops to 0.
        let ap = compute_ap(&[0.5], &[1.0]);
        // Samples 0..=0.49 are 1, 0.5 is 0 (the repeated recall point), so 0.49 + 0.5·0.01.
        assert!((ap - 0.495).abs() < 1e-12, "{ap}");
    }

    #[test]
    fn interp_matches_numpy_rules() {
        let xp = [0.0, 0.5, 0.5, 1.0];
        let fp = [1.0, 1.0, 0.0, 0.0];
        assert_eq!(interp(0.25, &xp, &fp, None, None), 1.0);
        assert_eq!(interp(0.5, &xp, &fp, None, None), 0.0); // the last repeated point wins
        assert_eq!(interp(-1.0, &xp, &fp, Some(7.0), None), 7.0);
        assert_eq!(interp(2.0, &xp, &fp, None, None), 0.0);
    }

    #[test]
    fn smooth_keeps_constants() {
        let y = vec![0.3; 1000];
        assert!(smooth(&y, 0.1).iter().all(|v| (v - 0.3).abs() < 1e-12));
        assert_eq!(smooth(&y, 0.1).len(), 1000);
    }
}
