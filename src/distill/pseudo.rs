//! Pseudo-labels of unlabeled images: a teacher's detections become detection targets. With
//! two thresholds they are split as Efficient Teacher splits them: reliable ones (score ≥
//! `--pseudo-conf`) are boxes like the ground truth, uncertain ones (`--pseudo-low` ≤ score <
//! `--pseudo-conf`) only soft class targets (see [`Targets::soft`]). The teacher is the frozen
//! one, or with `--mean-teacher` the run's EMA of the student, which labels from the end of the
//! burn-in on.

use burn::tensor::{Tensor, TensorData};

use crate::infer::nms::{nms, NmsConfig};
use crate::loss::Targets;
use crate::model::layers::head::{Detect, HeadOutput};
use crate::model::DetectionModel;
use crate::train::{HookInput, HookLoss, StepHook, StepPos};

/// The mean teacher's reliable threshold when `--pseudo-conf` is not given (Efficient Teacher's).
pub const MEAN_TEACHER_RELIABLE: f32 = 0.6;
/// The mean teacher's uncertain threshold when `--pseudo-low` is not given (Efficient Teacher's).
pub const MEAN_TEACHER_UNCERTAIN: f32 = 0.1;
/// NMS IoU of pseudo-labels (prediction's).
const PSEUDO_IOU: f32 = 0.7;

/// Which detections become pseudo-labels, and how.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Thresholds {
    /// Detections scoring at least this are reliable: boxes with every loss term.
    pub reliable: f32,
    /// Detections scoring at least this (and below `reliable`) are uncertain: soft class
    /// targets, no box terms. None: no uncertain labels.
    pub uncertain: Option<f32>,
}

/// A detection head's detections on images `from..` of its output `out` as normalised targets
/// of those images (boxes clipped to the `size` (h, w) of the input).
pub fn detections_as_targets(head: &Detect, out: &HeadOutput, from: usize, size: (usize, usize), th: Thresholds) -> Targets {
    let decoded = head.decode(out).detach();
    let [b, rows, a] = decoded.dims();
    // NMS runs on the host: pseudo-labels are the one read-back of such a step
    let host = crate::device::read_back(decoded.narrow(0, from, b - from));
    let lowest = th.uncertain.map_or(th.reliable, |u| u.min(th.reliable));
    let cfg = NmsConfig { conf: lowest, iou: PSEUDO_IOU, multi_label: false, ..NmsConfig::predict() };
    let (h, w) = (size.0 as f32, size.1 as f32);
    let mut t = Targets::default();
    for (j, img) in host.chunks(rows * a).enumerate() {
        for d in nms(img, head.nc, &cfg) {
            let [x1, y1, x2, y2] = d.xyxy.map(|v| v.max(0.0));
            let (x2, y2) = (x2.min(w), y2.min(h));
            if x2 > x1 && y2 > y1 {
                t.batch_idx.push(from + j);
                t.cls.push(d.cls);
                t.bboxes.push([(x1 + x2) / 2.0 / w, (y1 + y2) / 2.0 / h, (x2 - x1) / w, (y2 - y1) / h]);
                if th.uncertain.is_some() {
                    t.soft.push((d.conf < th.reliable).then_some(d.conf));
                }
            }
        }
    }
    t
}

/// The pseudo-labels per unlabeled image of the last labelled batch, reliable and uncertain,
/// logged as `pseudo_reliable` and `pseudo_uncertain` (so a user tuning the thresholds sees how
/// many labels they make).
#[derive(Debug, Clone, Default)]
pub struct PseudoCounts([f32; 2]);

impl PseudoCounts {
    /// Counts the labels `t` made for `unlabeled` images.
    pub fn record(&mut self, t: &Targets, unlabeled: usize) {
        let uncertain = t.soft.iter().filter(|s| s.is_some()).count();
        let per_image = unlabeled.max(1) as f32;
        self.0 = [(t.cls.len() - uncertain) as f32 / per_image, uncertain as f32 / per_image];
    }

    /// Logs the last counts, then forgets them (0 in a batch without pseudo-labels).
    pub fn log(&mut self, ctx: &HookInput<'_>, out: &mut HookLoss) {
        let device = ctx.images.device();
        for (name, v) in ["pseudo_reliable", "pseudo_uncertain"].into_iter().zip(std::mem::take(&mut self.0)) {
            out.log(name, Tensor::from_data(TensorData::new(vec![v], [1]), &device));
        }
    }
}

/// The mean teacher: the run's EMA of the student labels the unlabeled images once the burn-in
/// (epochs on the labels alone) is over.
#[derive(Debug, Clone)]
pub struct MeanTeacher {
    pub thresholds: Thresholds,
    /// Epochs (0-based bound) before the first pseudo-label.
    pub burn_in: usize,
    counts: PseudoCounts,
}

impl MeanTeacher {
    pub fn new(thresholds: Thresholds, burn_in: usize) -> Self {
        Self { thresholds, burn_in, counts: PseudoCounts::default() }
    }

    /// Whether `epoch` (0-based) is past the burn-in.
    pub fn labels_in(&self, epoch: usize) -> bool {
        epoch >= self.burn_in
    }

    /// The EMA model's pseudo-labels of `images[labeled..]` (none during the burn-in, or when no
    /// EMA is given).
    pub fn labels(&mut self, mean: Option<&DetectionModel>, images: &Tensor<4>, labeled: usize, epoch: usize) -> Option<Targets> {
        self.counts = PseudoCounts::default();
        let mean = mean.filter(|_| self.labels_in(epoch))?;
        let [b, _, h, w] = images.dims();
        let out = mean.forward(images.clone().inner());
        let t = detections_as_targets(mean.head(), &out, labeled, (h, w), self.thresholds);
        self.counts.record(&t, b - labeled);
        Some(t)
    }

    /// Logs the last batch's pseudo-labels per unlabeled image (0 in a batch without, e.g.
    /// during the burn-in).
    pub fn log(&mut self, ctx: &HookInput<'_>, out: &mut HookLoss) {
        self.counts.log(ctx, out);
    }

    /// What the mean teacher does, in words (printed at the start of training).
    pub fn describe(&self) -> String {
        let uncertain = match self.thresholds.uncertain {
            Some(u) => format!(", uncertain from {u} (class targets only)"),
            None => String::new(),
        };
        format!(
            "mean teacher: the EMA of the student labels the unlabeled images from epoch {}: reliable from score {}{uncertain}",
            self.burn_in + 1,
            self.thresholds.reliable
        )
    }
}

/// The mean teacher alone (no teacher file): its pseudo-labels are its only teaching.
pub struct MeanTeacherHook(pub MeanTeacher);

impl StepHook for MeanTeacherHook {
    fn taps(&self) -> Vec<usize> {
        Vec::new()
    }

    fn extra_loss(&mut self, ctx: &HookInput<'_>) -> HookLoss {
        let mut out = HookLoss::default();
        self.0.log(ctx, &mut out);
        out
    }

    /// During the burn-in the batches are the labeled images alone.
    fn wants_unlabeled(&self, epoch: usize) -> bool {
        self.0.labels_in(epoch)
    }

    fn pseudo_labels(&mut self, images: &Tensor<4>, labeled: usize, pos: StepPos, mean: Option<&DetectionModel>) -> Option<Targets> {
        self.0.labels(mean, images, labeled, pos.epoch)
    }
}
