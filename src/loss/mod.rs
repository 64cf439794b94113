//! The YOLOv8 detection loss: task-aligned assignment, CIoU box loss, DFL and
//! BCE classification, with Ultralytics' gains and normalisation.
//!
//! Targets are assigned from detached predictions (no gradient flows through the
//! assignment), on the host (`assigner.rs`, the CPU's default: it visits only candidate
//! anchors) or as tensor operations on the training device (`on_device.rs`, the GPU's: no
//! read-back inside a step); the three losses are then computed on tensors so their
//! gradients reach the head outputs. Both give the same numbers.

pub mod assigner;
pub mod iou;
pub mod on_device;
pub mod segment;

use burn::tensor::activation::{log_softmax, sigmoid};
use burn::tensor::{Int, Tensor, TensorData};

use crate::infer::segment::{crop_span, MaskInputs};
use crate::model::layers::head::{anchor_points, dfl_expectation, HeadMaps, HeadOutput};
pub use assigner::AssignerConfig;
use assigner::{assign_with, GtBox};
use iou::ciou_tensor;
pub use on_device::{assign_on_device, loss_on_device, DeviceAssigned};

/// Loss gains (Ultralytics' `box`, `cls`, `dfl` hyper-parameters, and their flags).
#[derive(clap::Args, Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub struct Gains {
    /// Gain of the box (CIoU) loss.
    #[arg(long = "box", default_value_t = 7.5)]
    #[serde(rename = "box_gain")]
    pub boxes: f32,
    /// Gain of the classification (BCE) loss.
    #[arg(long = "cls", default_value_t = 0.5)]
    #[serde(rename = "cls_gain")]
    pub cls: f32,
    /// Gain of the distribution focal loss.
    #[arg(long = "dfl", default_value_t = 1.5)]
    #[serde(rename = "dfl_gain")]
    pub dfl: f32,
}

impl Default for Gains {
    fn default() -> Self {
        crate::options::defaults()
    }
}

/// Ground truth of a batch, Ultralytics' collated layout.
#[derive(Debug, Clone, Default)]
pub struct Targets {
    /// Image index in the batch of each box.
    pub batch_idx: Vec<usize>,
    pub cls: Vec<usize>,
    /// Normalised centre-x, centre-y, width, height.
    pub bboxes: Vec<[f32; 4]>,
    /// Per box, for uncertain pseudo-labels: `Some(score)` scales the class targets of the
    /// anchors assigned to the box by the teacher's score and gives it no box or DFL term
    /// (Efficient Teacher's uncertain labels); `None` is a certain box. Empty: all certain.
    pub soft: Vec<Option<f32>>,
}

impl Targets {
    /// These targets and `more` (whose `batch_idx` already count in the same batch).
    pub fn joined(mut self, more: Targets) -> Targets {
        if !self.soft.is_empty() || !more.soft.is_empty() {
            let (n, m) = (self.cls.len(), more.cls.len());
            self.soft.resize(n, None);
            self.soft.extend(more.soft.into_iter().chain(std::iter::repeat(None)).take(m));
        }
        self.batch_idx.extend(more.batch_idx);
        self.cls.extend(more.cls);
        self.bboxes.extend(more.bboxes);
        self
    }

    /// Whether some box is an uncertain (soft) one.
    pub fn has_soft(&self) -> bool {
        self.soft.iter().any(Option::is_some)
    }

    /// The soft score of box `k` (None: certain).
    fn soft_of(&self, k: usize) -> Option<f32> {
        self.soft.get(k).copied().flatten()
    }
}

/// Where a training step assigns its targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum, Default)]
#[serde(rename_all = "lowercase")]
pub enum AssignOn {
    /// The host on the CPU (faster there: it visits only candidate anchors), the device on a GPU.
    #[default]
    Auto,
    Host,
    /// Tensor operations on the training device: no read-back inside a step.
    Device,
}

impl AssignOn {
    /// Whether a run on `device` assigns on the device.
    pub fn on_device(self, device: &burn::tensor::Device) -> bool {
        match self {
            AssignOn::Auto => !crate::device::is_cpu(device),
            AssignOn::Host => false,
            AssignOn::Device => true,
        }
    }
}

/// What the loss needs to know about the head.
#[derive(Debug, Clone)]
pub struct LossConfig {
    pub nc: usize,
    pub reg_max: usize,
    pub strides: Vec<f64>,
    pub gains: Gains,
    pub assigner: AssignerConfig,
    /// Assign targets with tensor operations on the training device instead of on the host.
    pub on_device: bool,
    /// The model's task, whose loss a training step runs (detection unless set).
    pub task: &'static dyn crate::task::Task,
}

impl LossConfig {
    pub fn new(nc: usize, reg_max: usize, strides: Vec<f64>) -> Self {
        let assigner = AssignerConfig::for_strides(&strides);
        Self { nc, reg_max, strides, gains: Gains::default(), assigner, on_device: false, task: &crate::task::ObjectDetection }
    }
}

/// Loss of one batch.
pub struct LossOutput {
    /// Σ(box, cls, dfl) × batch size: what backward runs on.
    pub total: Tensor<1>,
    /// [3] box, cls, dfl after gains, not multiplied by the batch size (as logged), still on
    /// the device.
    pub items: Tensor<1>,
}

impl LossOutput {
    /// The three items on the host (a read-back).
    pub fn host_items(&self) -> [f32; 3] {
        let v = crate::device::read_back(self.items.clone());
        [v[0], v[1], v[2]]
    }
}

/// The loss of the three gained terms (each [1]) of a batch of `b` images.
fn finish(cfg: &LossConfig, b: usize, [boxes, cls, dfl]: [Tensor<1>; 3]) -> LossOutput {
    let g = cfg.gains;
    let parts = [boxes * g.boxes, cls * g.cls, dfl * g.dfl];
    let total = (parts[0].clone() + parts[1].clone() + parts[2].clone()) * b as f32;
    LossOutput { total, items: Tensor::cat(parts.to_vec(), 0) }
}

/// The targets of a batch, assigned on the host or on the device.
#[derive(Debug, Clone)]
pub enum Assignment {
    Host(Assigned),
    Device(DeviceAssigned),
}

impl Assignment {
    /// Foreground anchors (flat `b·A + a`) and the class assigned to each; a read-back when
    /// the targets were assigned on the device.
    pub fn foreground(&self) -> (Vec<i64>, Vec<usize>) {
        match self {
            Assignment::Host(a) => (a.fg_index.clone(), a.fg_class.clone()),
            Assignment::Device(d) => {
                let fg = crate::device::read_back(d.fg.clone());
                let class = crate::device::read_back(d.class.clone().float());
                let rows: Vec<i64> = (0..fg.len()).filter(|&i| fg[i] > 0.0).map(|i| i as i64).collect();
                let classes = rows.iter().map(|&i| class[i as usize] as usize).collect();
                (rows, classes)
            }
        }
    }
}

/// Targets assigned to one batch (constants for the gradient).
#[derive(Debug, Clone, Default)]
pub struct Assigned {
    /// [B, nc, A] soft class targets.
    pub target_scores: Vec<f32>,
    /// max(Σ target_scores, 1): the normaliser of all three terms.
    pub tss: f32,
    /// Foreground anchors as flat `b·A + a`.
    pub fg_index: Vec<i64>,
    /// [N, 4] target xyxy in grid units.
    pub fg_target: Vec<f32>,
    /// [N, 2] anchor centres in grid units.
    pub fg_anchor: Vec<f32>,
    pub fg_stride: Vec<f32>,
    /// Weight of each foreground anchor's box and DFL terms: its alignment score (Σ of its
    /// target scores), 0 for an uncertain box.
    pub fg_weight: Vec<f32>,
    /// Class of the box assigned to each foreground anchor.
    pub fg_class: Vec<usize>,
    /// Position of that box among its image's targets, in target order (the object's id − 1 in
    /// the image's instance-mask map).
    pub fg_gt: Vec<usize>,
    /// Input size (h, w) in pixels.
    pub img_hw: (f32, f32),
}

impl Assigned {
    /// The assignment of a batch without labeled images: nothing is foreground.
    pub fn empty(img_hw: (f32, f32)) -> Assigned {
        Assigned { tss: 1.0, img_hw, ..Default::default() }
    }

    /// The foreground anchors `keep` (positions in the fg lists) alone; the class targets and
    /// their normaliser unchanged.
    pub fn subset(&self, keep: &[usize]) -> Assigned {
        let pick = |v: &[f32], w: usize| keep.iter().filter_map(|&k| v.get(k * w..(k + 1) * w)).flatten().copied().collect::<Vec<f32>>();
        Assigned {
            target_scores: self.target_scores.clone(),
            tss: self.tss,
            fg_index: keep.iter().map(|&k| self.fg_index[k]).collect(),
            fg_target: pick(&self.fg_target, 4),
            fg_anchor: pick(&self.fg_anchor, 2),
            fg_stride: pick(&self.fg_stride, 1),
            fg_weight: pick(&self.fg_weight, 1),
            fg_class: keep.iter().filter_map(|&k| self.fg_class.get(k).copied()).collect(),
            fg_gt: keep.iter().map(|&k| self.fg_gt[k]).collect(),
            img_hw: self.img_hw,
        }
    }
}

/// Detection loss of raw head maps (`boxes` [B, 4·reg_max, A], `scores` [B, nc, A]).
pub fn detection_loss(cfg: &LossConfig, maps: &HeadMaps, shapes: &[(usize, usize)], targets: &Targets) -> LossOutput {
    branch_loss(cfg, maps, shapes, targets).0
}

/// The loss of one branch's maps, assigned where `cfg` says, and the assignment.
fn branch_loss(cfg: &LossConfig, maps: &HeadMaps, shapes: &[(usize, usize)], targets: &Targets) -> (LossOutput, Assignment) {
    // Soft (uncertain) boxes are weighted on the host only: a batch with some is assigned there.
    if cfg.on_device && !targets.has_soft() {
        let asg = assign_on_device(cfg, maps, shapes, targets);
        (loss_on_device(cfg, maps, &asg), Assignment::Device(asg))
    } else {
        let asg = assign_targets(cfg, maps, shapes, targets);
        (loss_from_assigned(cfg, maps, &asg), Assignment::Host(asg))
    }
}

/// Weight of the one-to-many term of the end-to-end loss during `epoch`
/// (0-based): Ultralytics 8.4 decays it from 0.8 to 0.1 over the run; the
/// one-to-one term gets the rest.
pub fn e2e_one2many_weight(epoch: usize, epochs: usize) -> f32 {
    let x = epoch as f32 / (epochs.max(2) - 1) as f32;
    (1.0 - x).max(0.0) * (0.8 - 0.1) + 0.1
}

/// The training loss of a model's head output: the v8 loss, or for heads with
/// one-to-one branches Ultralytics 8.4's end-to-end loss (one-to-many with
/// topk 10 plus one-to-one with topk 7 / topk2 1, weighted by
/// [`e2e_one2many_weight`]; the logged items are the one-to-one branch's, as
/// Ultralytics logs them). Also returns the one-to-many assignment.
pub fn model_loss(cfg: &LossConfig, head: &HeadOutput, targets: &Targets, epoch: usize, epochs: usize) -> (LossOutput, Assignment) {
    let (o2m, asg) = branch_loss(cfg, &head.one2many, &head.shapes, targets);
    let Some(one2one) = &head.one2one else { return (o2m, asg) };
    let mut cfg2 = cfg.clone();
    cfg2.assigner.topk = 7;
    cfg2.assigner.topk2 = 1;
    let o2o = detection_loss(&cfg2, one2one, &head.shapes, targets);
    let w = e2e_one2many_weight(epoch, epochs);
    let out = LossOutput { total: o2m.total * w + o2o.total * (1.0 - w), items: o2o.items };
    (out, asg)
}

/// What YOLO26's mask-aware assignment reads, on the host: the branch's mask coefficients
/// [B, nm, A] and prototypes [B, nm, h, w] (detached), and the batch's instance masks (of its
/// first images: the labeled ones).
pub struct MaskAssignInputs<'a> {
    pub coeffs: &'a [f32],
    pub protos: &'a [f32],
    pub nm: usize,
    pub ids: &'a segment::InstanceMasks,
}

/// Runs the task-aligned assigner on detached predictions.
pub fn assign_targets(cfg: &LossConfig, maps: &HeadMaps, shapes: &[(usize, usize)], targets: &Targets) -> Assigned {
    assign_targets_with(cfg, maps, shapes, targets, None)
}

/// [`assign_targets`], mask-aware with `masks` (YOLO26 segmentation): a candidate's overlap is
/// the mean of its box IoU and its predicted mask's IoU with the object's (see
/// [`assigner::assign_with`]).
pub fn assign_targets_with(cfg: &LossConfig, maps: &HeadMaps, shapes: &[(usize, usize)], targets: &Targets, masks: Option<&MaskAssignInputs>) -> Assigned {
    let [b, nc, a_n] = maps.scores.dims();
    let r = cfg.reg_max;
    let (pts, stride) = anchor_points(shapes, &cfg.strides);
    let img_h = shapes[0].0 as f32 * cfg.strides[0] as f32;
    let img_w = shapes[0].1 as f32 * cfg.strides[0] as f32;

    // Ground truth per image, xyxy pixels.
    // (and each box's soft score, None for a certain box, and its position among its image's
    // targets, empty ones included)
    let mut gts: Vec<Vec<GtBox>> = vec![Vec::new(); b];
    let mut soft: Vec<Vec<Option<f32>>> = vec![Vec::new(); b];
    let mut slot: Vec<Vec<usize>> = vec![Vec::new(); b];
    let mut seen = vec![0usize; b];
    for (k, ((&i, &c), bb)) in targets.batch_idx.iter().zip(&targets.cls).zip(&targets.bboxes).enumerate() {
        let (cx, cy, w, h) = (bb[0] * img_w, bb[1] * img_h, bb[2] * img_w, bb[3] * img_h);
        let xyxy = [cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0];
        if i >= b {
            continue;
        }
        if xyxy.iter().sum::<f32>() > 0.0 {
            gts[i].push(GtBox { cls: c, xyxy });
            soft[i].push(targets.soft_of(k));
            slot[i].push(seen[i]);
        }
        seen[i] += 1;
    }

    // Detached predictions on the host: sigmoid scores [B][A][nc] and boxes in pixels.
    let scores_host = crate::device::read_back(sigmoid(maps.scores.clone().detach()).swap_dims(1, 2));
    let dist_host = crate::device::read_back(dfl_expectation(maps.boxes.clone().detach(), r));

    // Assignment and targets.
    let mut out = Assigned { target_scores: vec![0f32; b * nc * a_n], img_hw: (img_h, img_w), ..Default::default() };
    for (bi, image_gts) in gts.iter().enumerate() {
        let d = &dist_host[bi * 4 * a_n..(bi + 1) * 4 * a_n];
        let boxes: Vec<[f32; 4]> = (0..a_n)
            .map(|a| {
                let [ax, ay] = pts[a];
                let s = stride[a];
                [(ax - d[a]) * s, (ay - d[a_n + a]) * s, (ax + d[2 * a_n + a]) * s, (ay + d[3 * a_n + a]) * s]
            })
            .collect();
        let px: Vec<[f32; 2]> = (0..a_n).map(|a| [pts[a][0] * stride[a], pts[a][1] * stride[a]]).collect();
        let sc = &scores_host[bi * a_n * nc..(bi + 1) * a_n * nc];
        let mask_iou = masks.and_then(|m| image_mask_iou(m, bi, a_n, img_h, &boxes, &slot[bi]));
        let asg = assign_with(&cfg.assigner, sc, nc, &boxes, &px, image_gts, mask_iou.as_ref().map(|f| f as &dyn Fn(usize, usize) -> f32));
        for a in 0..a_n {
            if !asg.fg[a] {
                continue;
            }
            let g = &image_gts[asg.gt_idx[a]];
            // an uncertain box: a class target scaled by its score, no box or DFL term
            let (class_target, box_weight) = match soft[bi][asg.gt_idx[a]] {
                Some(score) => (asg.score[a] * score, 0.0),
                None => (asg.score[a], asg.score[a]),
            };
            out.target_scores[(bi * nc + g.cls) * a_n + a] = class_target;
            let s = stride[a];
            out.fg_index.push((bi * a_n + a) as i64);
            out.fg_target.extend(g.xyxy.map(|v| v / s));
            out.fg_anchor.extend(pts[a]);
            out.fg_stride.push(s);
            out.fg_weight.push(box_weight);
            out.fg_class.push(g.cls);
            out.fg_gt.push(slot[bi][asg.gt_idx[a]]);
        }
    }
    out.tss = out.target_scores.iter().sum::<f32>().max(1.0);
    out
}

/// Image `bi`'s mask IoU of box g (its object: id `slots[g]` + 1) with the mask anchor a
/// predicts: the prediction's logits above 0 inside the anchor's predicted box at the
/// prototypes' scale (crop_mask's pixel rule), IoU = intersection / max(union, 1). None for an
/// image without masks.
fn image_mask_iou<'a>(m: &'a MaskAssignInputs, bi: usize, a_n: usize, img_h: f32, boxes: &'a [[f32; 4]], slots: &'a [usize]) -> Option<impl Fn(usize, usize) -> f32 + 'a> {
    let (mh, mw) = m.ids.size;
    let plane = mh * mw;
    let ids = m.ids.ids.get(bi * plane..(bi + 1) * plane)?;
    let scale = mh as f32 / img_h;
    let image = MaskInputs {
        coeffs: &m.coeffs[bi * m.nm * a_n..(bi + 1) * m.nm * a_n],
        protos: &m.protos[bi * m.nm * plane..(bi + 1) * m.nm * plane],
        nm: m.nm,
        size: (mh, mw),
        ratio: 1.0 / scale,
    };
    let area: Vec<u32> = slots.iter().map(|&s| ids.iter().filter(|&&v| v as usize == s + 1).count() as u32).collect();
    Some(move |g: usize, a: usize| -> f32 {
        let id = (slots[g] + 1) as u16;
        let [x1, y1, x2, y2] = boxes[a].map(|v| v * scale);
        let coef = image.coefficients(a);
        let (mut inter, mut predicted) = (0u32, 0u32);
        for r in crop_span(y1, y2, mh) {
            for c in crop_span(x1, x2, mw) {
                let p = r * mw + c;
                if image.logit(&coef, p) > 0.0 {
                    predicted += 1;
                    inter += u32::from(ids[p] == id);
                }
            }
        }
        inter as f32 / ((area[g] + predicted - inter) as f32).max(1.0)
    })
}

/// The three loss terms for fixed targets.
pub fn loss_from_assigned(cfg: &LossConfig, maps: &HeadMaps, asg: &Assigned) -> LossOutput {
    let device = maps.scores.device();
    let [b, nc, a_n] = maps.scores.dims();
    let r = cfg.reg_max;
    let tss = asg.tss;
    let (img_h, img_w) = asg.img_hw;
    let (fg_target, fg_anchor, fg_stride, fg_weight) = (&asg.fg_target, &asg.fg_anchor, &asg.fg_stride, &asg.fg_weight);

    // Classification: BCE with logits summed over anchors and classes.
    let t = Tensor::<3>::from_data(TensorData::new(asg.target_scores.clone(), [b, nc, a_n]), &device);
    let x = maps.scores.clone();
    let bce = x.clone().clamp_min(0.0) - x.clone() * t + x.abs().neg().exp().log1p();
    let loss_cls = bce.sum() / tss;

    // Box and distribution losses on the foreground anchors.
    let n = asg.fg_index.len();
    let (loss_box, loss_dfl) = if n == 0 {
        let zero = maps.boxes.clone().sum() * 0.0;
        (zero.clone(), zero)
    } else {
        let idx = Tensor::<1, Int>::from_data(TensorData::new(asg.fg_index.clone(), [n]), &device);
        let logits: Tensor<2> = maps.boxes.clone().swap_dims(1, 2).reshape([b * a_n, 4 * r]).select(0, idx);
        let dist: Tensor<2> = if r > 1 {
            let p = burn::tensor::activation::softmax(logits.clone().reshape([n, 4, r]), 2);
            let proj: Vec<f32> = (0..r).map(|i| i as f32).collect();
            let proj = Tensor::<3>::from_data(TensorData::new(proj, [1, 1, r]), &device);
            (p * proj).sum_dim(2).reshape([n, 4])
        } else {
            logits.clone()
        };
        let anc = Tensor::<2>::from_data(TensorData::new(fg_anchor.clone(), [n, 2]), &device);
        let lt = dist.clone().narrow(1, 0, 2);
        let rb = dist.clone().narrow(1, 2, 2);
        let pred = Tensor::cat(vec![anc.clone() - lt, anc + rb], 1);
        let target = Tensor::<2>::from_data(TensorData::new(fg_target.clone(), [n, 4]), &device);
        let w = Tensor::<1>::from_data(TensorData::new(fg_weight.clone(), [n]), &device);
        let loss_box = ((ciou_tensor(pred, target).neg() + 1.0) * w.clone()).sum() / tss;

        // Target distances (l, t, r, b) in grid units.
        let ltrb: Vec<f32> = (0..n)
            .flat_map(|i| {
                let [ax, ay] = [fg_anchor[2 * i], fg_anchor[2 * i + 1]];
                let t = &fg_target[4 * i..4 * i + 4];
                [ax - t[0], ay - t[1], t[2] - ax, t[3] - ay]
            })
            .collect();
        let loss_dfl = if r > 1 {
            // CE against the two neighbouring bins, weighted by proximity.
            let hi = r as f32 - 1.0 - 0.01;
            let mut wts = vec![0f32; n * 4 * r];
            for (k, &v) in ltrb.iter().enumerate() {
                let v = v.clamp(0.0, hi);
                let tl = v.floor() as usize;
                let wl = (tl + 1) as f32 - v;
                wts[k * r + tl] += wl;
                wts[k * r + tl + 1] += 1.0 - wl;
            }
            let wts = Tensor::<3>::from_data(TensorData::new(wts, [n, 4, r]), &device);
            let ce = (log_softmax(logits.reshape([n, 4, r]), 2) * wts).sum_dim(2).reshape([n, 4]).neg();
            (ce.mean_dim(1).reshape([n]) * w).sum() / tss
        } else {
            // reg_max 1 (YOLO26): L1 on distances normalised by the image size.
            let norm: Vec<f32> = (0..n * 4).map(|k| fg_stride[k / 4] / if k % 2 == 0 { img_w } else { img_h }).collect();
            let norm = Tensor::<2>::from_data(TensorData::new(norm, [n, 4]), &device);
            let tgt = Tensor::<2>::from_data(TensorData::new(ltrb, [n, 4]), &device);
            let l1 = ((dist - tgt) * norm).abs().mean_dim(1).reshape([n]);
            (l1 * w).sum() / tss
        };
        (loss_box, loss_dfl)
    };

    finish(cfg, b, [loss_box, loss_cls, loss_dfl])
}
