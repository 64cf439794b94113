//! COCO bbox evaluation, reproducing the numbers of pycocotools' `COCOeval` (iouType "bbox").
//!
//! Algorithm, all in f64:
//! 1. Per (image, category): detections sorted by descending score (stable), at most 100 kept;
//!    IoU of every detection with every GT box (a crowd GT divides by the detection's area).
//! 2. Per (image, category, area range): GTs that are crowd or outside the area range are
//!    "ignored" and moved last (stable). For every IoU threshold, detections in score order take
//!    the unmatched GT (crowds may be reused) with the highest IoU ≥ the threshold, preferring
//!    non-ignored GTs; on equal IoU the later GT wins. A detection matched to an ignored GT, or
//!    unmatched and outside the area range, is ignored.
//! 3. Per (category, area range, maxDets ∈ {1, 10, 100}): the images' detections (first maxDets
//!    per image) are merged and stably sorted by score; cumulative TP/FP give recall and
//!    precision; the precision envelope is read at 101 recall thresholds (first index whose
//!    recall reaches the threshold, 0 beyond the last recall). Categories without non-ignored
//!    GTs are left out (−1).
//! 4. The 12 summary numbers average the entries that are not −1.
//!
//! Annotation ids are implicit (1, 2, … in input order); pycocotools' quirk of treating a match
//! to a GT whose id is 0 as "no match" is therefore never triggered.

use serde::Deserialize;
use std::collections::BTreeMap;

/// Area ranges all, small, medium, large (inclusive bounds, in squared pixels).
const AREA_RANGES: [(f64, f64); 4] = [(0.0, 1e10), (0.0, 1024.0), (1024.0, 9216.0), (9216.0, 1e10)];
/// Maximum detections per image and category: 1, 10, 100.
const MAX_DETS: [usize; 3] = [1, 10, 100];
const N_IOU: usize = 10;
const N_REC: usize = 101;

/// COCOeval bbox statistics as pycocotools computes them (the 12 `stats`).
/// A value is −1 when no category had any non-ignored ground truth for it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CocoStats {
    /// AP @ IoU 0.50:0.95, all areas, 100 dets.
    pub ap: f64,
    pub ap50: f64,
    pub ap75: f64,
    pub ap_small: f64,
    pub ap_medium: f64,
    pub ap_large: f64,
    /// AR @ IoU 0.50:0.95, all areas, 1 det.
    pub ar1: f64,
    pub ar10: f64,
    pub ar100: f64,
    pub ar_small: f64,
    pub ar_medium: f64,
    pub ar_large: f64,
}

/// COCO-format ground truth: box x, y, w, h with area and iscrowd.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CocoGt {
    pub image_id: u64,
    pub category_id: u64,
    pub bbox: [f64; 4],
    /// The annotation's `area` (used for the area ranges, not for IoU).
    pub area: f64,
    pub iscrowd: bool,
}

/// COCO-format detection: box x, y, w, h with score.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize)]
pub struct CocoDet {
    pub image_id: u64,
    pub category_id: u64,
    pub bbox: [f64; 4],
    pub score: f64,
}

/// Evaluates with the images named by either list (as with a GT file whose `images` list holds
/// every image; detections on an image without GT count as false positives) and the categories
/// that have GT boxes (detections of other categories are not scored, as in pycocotools).
pub fn evaluate(gts: &[CocoGt], dets: &[CocoDet]) -> CocoStats {
    let mut images: Vec<u64> = gts.iter().map(|g| g.image_id).chain(dets.iter().map(|d| d.image_id)).collect();
    images.sort_unstable();
    images.dedup();
    evaluate_with_images(gts, dets, &images)
}

/// Evaluates over an explicit image list (the GT file's `images`); GTs and detections of other
/// images are dropped.
pub fn evaluate_with_images(gts: &[CocoGt], dets: &[CocoDet], image_ids: &[u64]) -> CocoStats {
    let mut images = image_ids.to_vec();
    images.sort_unstable();
    images.dedup();
    let mut cats: Vec<u64> = gts.iter().map(|g| g.category_id).collect();
    cats.sort_unstable();
    cats.dedup();

    // Group by (image, category), keeping input order.
    let mut gt_by: BTreeMap<(u64, u64), Vec<&CocoGt>> = BTreeMap::new();
    for g in gts {
        gt_by.entry((g.image_id, g.category_id)).or_default().push(g);
    }
    let mut dt_by: BTreeMap<(u64, u64), Vec<&CocoDet>> = BTreeMap::new();
    for d in dets {
        dt_by.entry((d.image_id, d.category_id)).or_default().push(d);
    }

    let max_det = MAX_DETS[MAX_DETS.len() - 1];
    let evals: Vec<PerCategory> = cats
        .iter()
        .map(|&c| {
            let cells: Vec<Cell> = images
                .iter()
                .map(|&im| {
                    let gts = gt_by.get(&(im, c)).cloned().unwrap_or_default();
                    let dets = sorted_by_score(dt_by.get(&(im, c)).cloned().unwrap_or_default(), max_det);
                    let ious = iou_matrix(&dets, &gts);
                    Cell { gts, dets, ious }
                })
                .collect();
            AREA_RANGES.iter().map(|&rng| cells.iter().map(|cell| evaluate_image(cell, rng)).collect()).collect()
        })
        .collect();
    let acc = accumulate(&evals);
    summarize(&acc)
}

/// One image and category: its GTs (input order), its detections (score order, at most 100)
/// and their IoUs `[det][gt]`.
struct Cell<'a> {
    gts: Vec<&'a CocoGt>,
    dets: Vec<&'a CocoDet>,
    ious: Vec<Vec<f64>>,
}

/// One category's per-image results, indexed `[area range][image]`.
type PerCategory = Vec<Vec<Option<ImageResult>>>;

/// Detections stably sorted by descending score, truncated to `max_det`.
fn sorted_by_score(mut dets: Vec<&CocoDet>, max_det: usize) -> Vec<&CocoDet> {
    dets.sort_by(|a, b| b.score.total_cmp(&a.score));
    dets.truncate(max_det);
    dets
}

/// IoU of two xywh boxes; for a crowd GT the union is the detection's area.
pub fn bbox_iou(dt: &[f64; 4], gt: &[f64; 4], crowd: bool) -> f64 {
    let w = (dt[0] + dt[2]).min(gt[0] + gt[2]) - dt[0].max(gt[0]);
    if w <= 0.0 {
        return 0.0;
    }
    let h = (dt[1] + dt[3]).min(gt[1] + gt[3]) - dt[1].max(gt[1]);
    if h <= 0.0 {
        return 0.0;
    }
    let inter = w * h;
    let da = dt[2] * dt[3];
    let union = if crowd { da } else { da + gt[2] * gt[3] - inter };
    inter / union
}

/// IoU matrix `[n_dets][n_gts]`.
fn iou_matrix(dets: &[&CocoDet], gts: &[&CocoGt]) -> Vec<Vec<f64>> {
    dets.iter().map(|d| gts.iter().map(|g| bbox_iou(&d.bbox, &g.bbox, g.iscrowd)).collect()).collect()
}

/// IoU thresholds 0.50:0.05:0.95 as numpy's `linspace` gives them (capped at 1 − 1e-10 for
/// matching).
fn iou_thresholds() -> [f64; N_IOU] {
    let v = super::metrics::linspace(0.5, 0.95, N_IOU);
    std::array::from_fn(|i| v[i])
}

/// One (image, category, area range) evaluation, detections in score order.
#[derive(Clone, Debug)]
struct ImageResult {
    scores: Vec<f64>,
    /// `matched[t][d]`: detection d matched some GT at threshold t.
    matched: Vec<Vec<bool>>,
    /// `det_ignore[t][d]`.
    det_ignore: Vec<Vec<bool>>,
    /// One flag per GT.
    gt_ignore: Vec<bool>,
}

/// Greedy matching of one image and category within area range `rng`; `None` when there are
/// neither GTs nor detections.
fn evaluate_image(cell: &Cell, rng: (f64, f64)) -> Option<ImageResult> {
    let (gts, dets, ious) = (&cell.gts, &cell.dets, &cell.ious);
    if gts.is_empty() && dets.is_empty() {
        return None;
    }
    let outside = |area: f64| area < rng.0 || area > rng.1;
    let ignore_of = |g: &CocoGt| g.iscrowd || outside(g.area);
    // GT order: non-ignored first, stable.
    let mut order: Vec<usize> = (0..gts.len()).collect();
    order.sort_by_key(|&i| ignore_of(gts[i]));
    let gt_ignore: Vec<bool> = order.iter().map(|&i| ignore_of(gts[i])).collect();
    let crowd: Vec<bool> = order.iter().map(|&i| gts[i].iscrowd).collect();

    let mut matched = vec![vec![false; dets.len()]; N_IOU];
    let mut det_ignore = vec![vec![false; dets.len()]; N_IOU];
    if !gts.is_empty() {
        for (t, thr) in iou_thresholds().iter().enumerate() {
            let mut gt_taken = vec![false; gts.len()];
            for d in 0..dets.len() {
                let mut best_iou = thr.min(1.0 - 1e-10);
                let mut m: Option<usize> = None;
                for (gi, &g) in order.iter().enumerate() {
                    if gt_taken[gi] && !crowd[gi] {
                        continue;
                    }
                    if matches!(m, Some(mi) if !gt_ignore[mi]) && gt_ignore[gi] {
                        break;
                    }
                    let iou = ious[d][g];
                    if iou < best_iou {
                        continue;
                    }
                    best_iou = iou;
                    m = Some(gi);
                }
                if let Some(mi) = m {
                    det_ignore[t][d] = gt_ignore[mi];
                    matched[t][d] = true;
                    gt_taken[mi] = true;
                }
            }
        }
    }
    for (d, det) in dets.iter().enumerate() {
        if outside(det.bbox[2] * det.bbox[3]) {
            for t in 0..N_IOU {
                det_ignore[t][d] |= !matched[t][d];
            }
        }
    }
    Some(ImageResult { scores: dets.iter().map(|d| d.score).collect(), matched, det_ignore, gt_ignore })
}

/// Precision `[t][r][k][a][m]` and recall `[t][k][a][m]`, −1 where a category had no
/// non-ignored GT.
struct Accumulated {
    precision: Vec<Vec<Vec<Vec<[f64; 3]>>>>,
    recall: Vec<Vec<Vec<[f64; 3]>>>,
}

/// Merges the per-image results into precision and recall tables.
fn accumulate(evals: &[PerCategory]) -> Accumulated {
    let k_n = evals.len();
    let a_n = AREA_RANGES.len();
    let mut precision = vec![vec![vec![vec![[-1.0; 3]; a_n]; k_n]; N_REC]; N_IOU];
    let mut recall = vec![vec![vec![[-1.0; 3]; a_n]; k_n]; N_IOU];
    let rec_thrs = super::metrics::linspace(0.0, 1.0, N_REC);
    for (k, per_area) in evals.iter().enumerate() {
        for (a, per_image) in per_area.iter().enumerate() {
            let results: Vec<&ImageResult> = per_image.iter().flatten().collect();
            if results.is_empty() {
                continue;
            }
            for (m, &max_det) in MAX_DETS.iter().enumerate() {
                // (score, image position, detection index), first max_det per image.
                let mut rows: Vec<(f64, usize, usize)> = results
                    .iter()
                    .enumerate()
                    .flat_map(|(e, r)| r.scores.iter().take(max_det).enumerate().map(move |(d, &s)| (s, e, d)))
                    .collect();
                rows.sort_by(|x, y| y.0.total_cmp(&x.0));
                let npig = results.iter().flat_map(|r| &r.gt_ignore).filter(|&&ig| !ig).count();
                if npig == 0 {
                    continue;
                }
                for t in 0..N_IOU {
                    let (rc, pr) = pr_at(&results, &rows, t, npig);
                    recall[t][k][a][m] = rc.last().copied().unwrap_or(0.0);
                    let q = precision_at_recalls(&rc, pr, &rec_thrs);
                    for (r, v) in q.into_iter().enumerate() {
                        precision[t][r][k][a][m] = v;
                    }
                }
            }
        }
    }
    Accumulated { precision, recall }
}

/// Cumulative recall and precision over the merged, score-sorted detections at threshold `t`;
/// ignored detections add neither TP nor FP.
fn pr_at(results: &[&ImageResult], rows: &[(f64, usize, usize)], t: usize, npig: usize) -> (Vec<f64>, Vec<f64>) {
    let (mut tp, mut fp) = (0u64, 0u64);
    let mut rc = Vec::with_capacity(rows.len());
    let mut pr = Vec::with_capacity(rows.len());
    for &(_, e, d) in rows {
        let r = results[e];
        if !r.det_ignore[t][d] {
            if r.matched[t][d] {
                tp += 1;
            } else {
                fp += 1;
            }
        }
        let (tpf, fpf) = (tp as f64, fp as f64);
        rc.push(tpf / npig as f64);
        pr.push(tpf / (fpf + tpf + f64::EPSILON));
    }
    (rc, pr)
}

/// Precision envelope sampled at the recall thresholds: at each threshold the envelope value at
/// the first index whose recall is ≥ it; 0 where the recall never gets there.
fn precision_at_recalls(rc: &[f64], mut pr: Vec<f64>, rec_thrs: &[f64]) -> Vec<f64> {
    for i in (1..pr.len()).rev() {
        if pr[i] > pr[i - 1] {
            pr[i - 1] = pr[i];
        }
    }
    rec_thrs
        .iter()
        .map(|&thr| {
            let i = rc.partition_point(|&r| r < thr);
            pr.get(i).copied().unwrap_or(0.0)
        })
        .collect()
}

/// Mean of the values that are not −1 (−1 when there are none).
fn mean_valid(values: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = values.filter(|&v| v > -1.0).fold((0.0, 0usize), |(s, n), v| (s + v, n + 1));
    if n == 0 {
        -1.0
    } else {
        sum / n as f64
    }
}

/// The 12 summary numbers.
fn summarize(acc: &Accumulated) -> CocoStats {
    let all_t: Vec<usize> = (0..N_IOU).collect();
    let ap =
        |ts: &[usize], a: usize| {
            mean_valid(ts.iter().flat_map(|&t| {
                acc.precision[t].iter().flat_map(move |per_k| per_k.iter().map(move |per_a| per_a[a][2]))
            }))
        };
    let ar =
        |a: usize, m: usize| mean_valid(acc.recall.iter().flat_map(|per_k| per_k.iter().map(move |per_a| per_a[a][m])));
    CocoStats {
        ap: ap(&all_t, 0),
        ap50: ap(&[0], 0),
        ap75: ap(&[5], 0),
        ap_small: ap(&all_t, 1),
        ap_medium: ap(&all_t, 2),
        ap_large: ap(&all_t, 3),
        ar1: ar(0, 0),
        ar10: ar(0, 1),
        ar100: ar(0, 2),
        ar_small: ar(1, 2),
        ar_medium: ar(2, 2),
        ar_large: ar(3, 2),
    }
}

/// A COCO ground-truth file: its `images` ids and annotations.
#[derive(Clone, Debug)]
pub struct CocoGtFile {
    /// Ids of the `images` list.
    pub image_ids: Vec<u64>,
    /// Ids of the `categories` list.
    pub category_ids: Vec<u64>,
    pub annotations: Vec<CocoGt>,
}

#[derive(Deserialize)]
struct RawId {
    id: u64,
}

#[derive(Deserialize)]
struct RawGt {
    image_id: u64,
    category_id: u64,
    bbox: [f64; 4],
    area: Option<f64>,
    #[serde(default)]
    iscrowd: u8,
}

#[derive(Deserialize)]
struct RawGtFile {
    #[serde(default)]
    images: Vec<RawId>,
    #[serde(default)]
    categories: Vec<RawId>,
    annotations: Vec<RawGt>,
}

/// Parses a COCO ground-truth JSON (`images`, `categories`, `annotations`); a missing `area`
/// becomes w·h.
pub fn parse_gt_json(text: &str) -> Result<CocoGtFile, serde_json::Error> {
    let raw: RawGtFile = serde_json::from_str(text)?;
    Ok(CocoGtFile {
        image_ids: raw.images.iter().map(|i| i.id).collect(),
        category_ids: raw.categories.iter().map(|c| c.id).collect(),
        annotations: raw
            .annotations
            .into_iter()
            .map(|a| CocoGt {
                image_id: a.image_id,
                category_id: a.category_id,
                bbox: a.bbox,
                area: a.area.unwrap_or(a.bbox[2] * a.bbox[3]),
                iscrowd: a.iscrowd != 0,
            })
            .collect(),
    })
}

/// Parses a COCO results JSON (a list of `image_id`, `category_id`, `bbox`, `score`).
pub fn parse_dets_json(text: &str) -> Result<Vec<CocoDet>, serde_json::Error> {
    serde_json::from_str(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gt(image_id: u64, category_id: u64, bbox: [f64; 4]) -> CocoGt {
        CocoGt { image_id, category_id, bbox, area: bbox[2] * bbox[3], iscrowd: false }
    }

    fn dt(image_id: u64, category_id: u64, bbox: [f64; 4], score: f64) -> CocoDet {
        CocoDet { image_id, category_id, bbox, score }
    }

    #[test]
    fn iou_plain_and_crowd() {
        let a = [0.0, 0.0, 10.0, 10.0];
        let b = [5.0, 0.0, 10.0, 10.0];
        assert!((bbox_iou(&a, &b, false) - 50.0 / 150.0).abs() < 1e-12);
        assert!((bbox_iou(&a, &b, true) - 0.5).abs() < 1e-12);
        assert_eq!(bbox_iou(&a, &[10.0, 0.0, 5.0, 5.0], false), 0.0);
    }

    #[test]
    fn perfect_detections() {
        let gts = [gt(1, 1, [0.0, 0.0, 50.0, 50.0]), gt(2, 1, [10.0, 10.0, 200.0, 100.0])];
        let dets = [dt(1, 1, [0.0, 0.0, 50.0, 50.0], 0.9), dt(2, 1, [10.0, 10.0, 200.0, 100.0], 0.8)];
        let s = evaluate(&gts, &dets);
        assert!((s.ap - 1.0).abs() < 1e-12 && (s.ar100 - 1.0).abs() < 1e-12, "{s:?}");
        assert_eq!(s.ap_small, -1.0); // no small GT
        assert!((s.ap_medium - 1.0).abs() < 1e-12 && (s.ap_large - 1.0).abs() < 1e-12);
        assert!((s.ar1 - 1.0).abs() < 1e-12);
    }

    #[test]
    fn false_positive_on_image_without_gt_counts() {
        let gts = [gt(1, 1, [0.0, 0.0, 50.0, 50.0])];
        // A higher-scored FP on image 2 halves precision at the start of the curve.
        let dets = [dt(1, 1, [0.0, 0.0, 50.0, 50.0], 0.8), dt(2, 1, [0.0, 0.0, 50.0, 50.0], 0.9)];
        let with = evaluate(&gts, &dets);
        assert!((with.ap50 - 0.5).abs() < 1e-9, "{with:?}");
        let without = evaluate_with_images(&gts, &dets, &[1]);
        assert!((without.ap50 - 1.0).abs() < 1e-9, "{without:?}");
    }

    #[test]
    fn crowd_gt_absorbs_detections() {
        let mut crowd = gt(1, 1, [100.0, 100.0, 100.0, 100.0]);
        crowd.iscrowd = true;
        let gts = [gt(1, 1, [0.0, 0.0, 50.0, 50.0]), crowd];
        let dets = [
            dt(1, 1, [0.0, 0.0, 50.0, 50.0], 0.9),
            dt(1, 1, [110.0, 110.0, 40.0, 40.0], 0.95),
            dt(1, 1, [150.0, 150.0, 40.0, 40.0], 0.7),
        ];
        let s = evaluate(&gts, &dets);
        assert!((s.ap - 1.0).abs() < 1e-12, "{s:?}");
    }

    #[test]
    fn half_recall() {
        let gts = [gt(1, 1, [0.0, 0.0, 50.0, 50.0]), gt(1, 1, [100.0, 100.0, 50.0, 50.0])];
        let dets = [dt(1, 1, [0.0, 0.0, 50.0, 50.0], 0.9)];
        let s = evaluate(&gts, &dets);
        // Recall thresholds 0..=0.5 reached with precision 1: 51 of 101.
        assert!((s.ap - 51.0 / 101.0).abs() < 1e-12, "{s:?}");
        assert!((s.ar100 - 0.5).abs() < 1e-12);
    }

    #[test]
    fn parse_minimal_files() {
        let g = parse_gt_json(
            r#"{"images":[{"id":3}],"categories":[{"id":1}],"annotations":[{"image_id":3,"category_id":1,"bbox":[0,0,2,3]}]}"#,
        )
        .unwrap();
        assert_eq!(g.image_ids, vec![3]);
        assert_eq!(g.annotations[0].area, 6.0);
        assert!(!g.annotations[0].iscrowd);
        let d = parse_dets_json(r#"[{"image_id":3,"category_id":1,"bbox":[0,0,2,3],"score":0.5}]"#).unwrap();
        assert_eq!(d[0].score, 0.5);
    }
}
