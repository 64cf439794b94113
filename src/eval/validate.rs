//! Validation: run a model over a validation loader, NMS with validation
//! defaults, Ultralytics metrics (in letterboxed input space, as 8.4.190 does),
//! COCO statistics (original pixels), validation losses, COCO-format JSON.

use std::path::Path;

use anyhow::{Context, Result};
use burn::tensor::{Tensor, TensorData};

use super::coco::{self, CocoDet, CocoGt, CocoStats};
use super::confusion::ConfusionMatrix;
use super::metrics::{Curves, Det, DetMetrics, ImageEval, MetricsAccumulator};
use crate::data::loader::{Batch, ValLoader};
use crate::infer::nms::{detection_rows, detections_from_rows, end2end_topk, postprocess, Detection, NmsConfig};
use crate::loss::segment::InstanceMasks;
use crate::loss::{LossConfig, Targets};
use crate::model::DetectionModel;

/// Everything one validation pass measures.
#[derive(Debug, Clone)]
pub struct ValResult {
    pub metrics: DetMetrics,
    pub coco: CocoStats,
    /// Mean loss items over the validation batches, named as the task's (`Task::loss_names`).
    pub loss: Vec<f32>,
    /// The task's own metrics beside the boxes' (a segmentation model's masks).
    pub task: Option<TaskResult>,
    pub images: usize,
    pub instances: usize,
    /// Milliseconds per image of the forward pass.
    pub ms_per_image: f64,
    /// COCO-format detections (original pixels), for `--save-json`.
    pub coco_dets: Vec<CocoDet>,
    /// PR, F1, P and R curves per class (IoU 0.5), for the plots.
    pub curves: Curves,
    /// Detections against labels (Ultralytics' confusion matrix at the validation confidence).
    pub confusion: ConfusionMatrix,
}

/// A task's own validation metrics (see [`crate::task::TaskMetrics`]).
#[derive(Clone, Debug)]
pub struct TaskResult {
    /// The letter of their names (`metrics/mAP50(M)`).
    pub suffix: &'static str,
    /// The first word of their pictures' names (`MaskPR_curve.png`).
    pub pictures: &'static str,
    pub metrics: DetMetrics,
    pub curves: Curves,
}

impl ValResult {
    /// Model-selection fitness: the boxes' plus the task's own (Ultralytics' SegmentMetrics sums
    /// the box and mask fitness).
    pub fn fitness(&self) -> f64 {
        self.metrics.fitness + self.task.as_ref().map_or(0.0, |t| t.metrics.fitness)
    }

    /// The metrics as results columns: `metrics/{name}(B)`, then the task's own.
    pub fn metric_columns(&self) -> Vec<(String, f64)> {
        let mut out = Vec::new();
        for (suffix, m) in std::iter::once(("B", &self.metrics)).chain(self.task.iter().map(|t| (t.suffix, &t.metrics))) {
            let named = [("precision", m.precision), ("recall", m.recall), ("mAP50", m.map50), ("mAP50-95", m.map)];
            out.extend(named.map(|(n, x)| (format!("metrics/{n}({suffix})"), x)));
        }
        out
    }
}

fn xyxy_to_xywh(b: [f32; 4]) -> [f64; 4] {
    [b[0] as f64, b[1] as f64, (b[2] - b[0]) as f64, (b[3] - b[1]) as f64]
}

/// Where a validation's network outputs come from, for checking an exported
/// model with the same preprocessing, NMS and metrics.
#[derive(Debug, Clone)]
pub enum Exchange {
    /// Run the model and also write each batch's input as `<dir>/input_<k>.npy`
    /// and its decoded output as `<dir>/ours_<k>.npy`.
    DumpInputs(std::path::PathBuf),
    /// Read each batch's decoded output [B, 4+nc, A] (end-to-end: detections [B, k, 6]) from
    /// `<dir>/output_<k>.npy` instead of running the model (validation losses are then 0).
    ReadOutputs(std::path::PathBuf),
}

/// Validates `model` (eval mode) on every batch of `loader`.
pub fn validate(model: &DetectionModel, loader: &ValLoader, nms_cfg: &NmsConfig) -> Result<ValResult> {
    validate_with(model, loader, nms_cfg, None)
}

/// As [`validate`], with network inputs dumped or outputs read from files.
pub fn validate_with(model: &DetectionModel, loader: &ValLoader, nms_cfg: &NmsConfig, exchange: Option<&Exchange>) -> Result<ValResult> {
    validate_full(model, loader, nms_cfg, exchange, &mut |_, _, _, _| {})
}

/// As [`validate_with`]; `on_batch(k, batch, detections, masks)` sees every batch with its
/// detections (input pixels) and a segmentation model's detection masks (overlap form per
/// image; empty otherwise), e.g. to draw the first ones.
pub fn validate_full(
    model: &DetectionModel,
    loader: &ValLoader,
    nms_cfg: &NmsConfig,
    exchange: Option<&Exchange>,
    on_batch: &mut dyn FnMut(usize, &Batch, &[Vec<Detection>], &[InstanceMasks]),
) -> Result<ValResult> {
    let device = crate::default_device();
    let nc = model.nc();
    let head = model.head();
    // Ultralytics' `nms=False` on an end-to-end model: the one-to-one head's top-k, no NMS.
    let end2end = !nms_cfg.nms && head.has_one2one();
    let task = crate::task::of(head);
    let mut loss_cfg = LossConfig::new(nc, head.reg_max, head.strides.clone());
    loss_cfg.task = task;
    let mut task_metrics = task.metrics(nc);
    let mut acc = MetricsAccumulator::new(nc);
    let mut confusion = ConfusionMatrix::new(nc);
    let (mut gts, mut dets) = (Vec::new(), Vec::new());
    let mut loss_sum = vec![0f64; task.loss_names().len()];
    let (mut n_batches, mut n_images, mut n_inst) = (0usize, 0usize, 0usize);
    let mut forward_s = 0f64;
    let mut paths: Vec<std::path::PathBuf> = Vec::new();
    let per_image = |host: &[f32], b: usize| -> Vec<Vec<Detection>> {
        let per = host.len() / b;
        (0..b).map(|j| postprocess(&host[j * per..(j + 1) * per], nc, end2end, nms_cfg)).collect()
    };
    for batch in loader.batches() {
        let [b, c, h, w] = batch.shape;
        let x = Tensor::<4>::from_data(TensorData::new(batch.images.clone(), [b, c, h, w]), &device);
        let t0 = std::time::Instant::now();
        // what the task's metrics read beside the boxes (none for boxes alone)
        let mut metric_inputs = Vec::new();
        let found_per_image = if let Some(Exchange::ReadOutputs(dir)) = exchange {
            if end2end {
                let data = read_outputs(&dir.join(format!("output_{n_batches}.npy")), b)?;
                let per = data.len() / b;
                (0..b).map(|j| detections_from_rows(&data[j * per..(j + 1) * per], nms_cfg)).collect()
            } else {
                let (decoded, inputs) = read_exported(dir, n_batches, b, nc, task)?;
                metric_inputs = inputs;
                per_image(&decoded.data, b)
            }
        } else {
            if let Some(Exchange::DumpInputs(dir)) = exchange {
                crate::weights::npy::write_f32(&dir.join(format!("input_{n_batches}.npy")), &[b, c, h, w], &batch.images)?;
            }
            let out = model.forward_taps(x, &[], end2end).head;
            let pred = if end2end { head.decode_end2end(&out).expect("the one-to-one branch ran") } else { head.decode(&out) };
            let host = pred.try_into_vec_as::<f32>().expect("f32 output");
            if let Some(Exchange::DumpInputs(dir)) = exchange {
                dump_outputs(&dir.join(format!("ours_{n_batches}.npy")), &host, b, nc, end2end, nms_cfg.max_det)?;
            }
            let targets = Targets { batch_idx: batch.batch_idx.clone(), cls: batch.cls.clone(), bboxes: batch.bboxes.clone(), soft: Vec::new() };
            for (sum, l) in loss_sum.iter_mut().zip(task.val_loss(&loss_cfg, &out, &targets, batch.masks.as_ref())) {
                *sum += l as f64;
            }
            if task_metrics.is_some() {
                metric_inputs = task.metric_inputs(&out);
            }
            per_image(&host, b)
        };
        // a task's detection masks, for pictures (none for boxes alone)
        let drawn = task_metrics.as_mut().map(|tm| tm.add_batch(&metric_inputs, &batch, &found_per_image)).unwrap_or_default();
        forward_s += t0.elapsed().as_secs_f64();
        on_batch(n_batches, &batch, &found_per_image, &drawn);
        n_batches += 1;
        for (j, found) in found_per_image.into_iter().enumerate() {
            let gt = batch.labels_xyxy(j);
            n_inst += gt.len();
            let image_id = (n_images + j) as u64;
            let place = &batch.placements[j];
            for (bx, cls) in &gt {
                let o = xyxy_to_xywh(place.to_original(*bx));
                gts.push(CocoGt { image_id, category_id: *cls as u64, bbox: o, area: o[2] * o[3], iscrowd: false });
            }
            for d in &found {
                dets.push(CocoDet {
                    image_id,
                    category_id: d.cls as u64,
                    bbox: xyxy_to_xywh(place.to_original(d.xyxy)),
                    score: d.conf as f64,
                });
            }
            let img_eval = ImageEval { gt, dets: found.iter().map(|d| Det { xyxy: d.xyxy, conf: d.conf, cls: d.cls }).collect() };
            confusion.add(&img_eval.gt, &img_eval.dets, nms_cfg.conf);
            acc.add(&img_eval);
        }
        paths.extend(batch.paths.iter().cloned());
        n_images += b;
    }
    // COCO image ids are indices in the sorted file list (rect batches reorder images).
    let mut order: Vec<usize> = (0..paths.len()).collect();
    order.sort_by(|&i, &j| paths[i].cmp(&paths[j]));
    let mut remap = vec![0u64; paths.len()];
    for (rank, &i) in order.iter().enumerate() {
        remap[i] = rank as u64;
    }
    for g in gts.iter_mut() {
        g.image_id = remap[g.image_id as usize];
    }
    for d in dets.iter_mut() {
        d.image_id = remap[d.image_id as usize];
    }
    let image_ids: Vec<u64> = (0..n_images as u64).collect();
    let coco = coco::evaluate_with_images(&gts, &dets, &image_ids);
    let nb = n_batches.max(1) as f64;
    let (metrics, curves) = acc.compute_with_curves();
    Ok(ValResult {
        metrics,
        curves,
        confusion,
        coco,
        loss: loss_sum.iter().map(|v| (v / nb) as f32).collect(),
        task: task_metrics.map(|tm| {
            let (metrics, curves) = tm.compute();
            TaskResult { suffix: tm.suffix(), pictures: tm.pictures(), metrics, curves }
        }),
        images: n_images,
        instances: n_inst,
        ms_per_image: forward_s * 1e3 / n_images.max(1) as f64,
        coco_dets: dets,
    })
}

/// An end-to-end graph's detection rows for a batch of `b`: [b, k, 6]; a file of another shape
/// is an error naming it.
fn read_outputs(p: &Path, b: usize) -> Result<Vec<f32>> {
    let (shape, data) = read_finite(p)?;
    if !(shape.len() == 3 && shape[0] == b && shape[2] == 6) {
        anyhow::bail!("{}: shape {shape:?}, expected end-to-end detections [{b}, k, 6]", p.display());
    }
    Ok(data)
}

/// An .npy file of finite values (its shape and data).
fn read_finite(p: &Path) -> Result<(Vec<usize>, Vec<f32>)> {
    let (shape, data) = crate::weights::npy::read_f32(p)?;
    // NaN would rank as no detection in mAP but as a detection in the COCO AP and the JSON.
    if let Some(i) = data.iter().position(|v| !v.is_finite()) {
        let n = data.iter().filter(|v| !v.is_finite()).count();
        anyhow::bail!("{}: {n} values are not finite (NaN or infinity), the first at flat index {i}: the model gave broken outputs", p.display());
    }
    Ok((shape, data))
}

/// Batch `k`'s outputs of an exported graph (`output_<k>.npy`, then `output1_<k>.npy`, … as
/// many as the task's graph has), as the decoded boxes and scores of `b` images and the task's
/// metric inputs.
fn read_exported(dir: &Path, k: usize, b: usize, nc: usize, task: &dyn crate::task::Task) -> Result<(crate::weights::HostTensor, Vec<crate::weights::HostTensor>)> {
    let mut outputs = Vec::new();
    for i in 0..task.exported_outputs() {
        let p = dir.join(if i == 0 { format!("output_{k}.npy") } else { format!("output{i}_{k}.npy") });
        let (shape, data) = read_finite(&p)?;
        outputs.push(crate::weights::HostTensor::new(shape, data));
    }
    let (decoded, inputs) = task.split_exported(nc, outputs).with_context(|| format!("{}: the outputs of batch {k}", dir.display()))?;
    if decoded.shape[0] != b {
        anyhow::bail!("{}: output_{k}.npy holds {} images, the batch {b}", dir.display(), decoded.shape[0]);
    }
    Ok((decoded, inputs))
}

/// Our decoded output as an exported graph gives it: [B, 4 + nc, A], or an end-to-end
/// graph's top-k rows [B, k, 6].
fn dump_outputs(path: &Path, host: &[f32], b: usize, nc: usize, end2end: bool, max_det: usize) -> Result<()> {
    let per = host.len() / b;
    if !end2end {
        return crate::weights::npy::write_f32(path, &[b, 4 + nc, per / (4 + nc)], host);
    }
    let rows: Vec<Vec<f32>> = host.chunks(per).map(|p| detection_rows(&end2end_topk(p, nc, max_det))).collect();
    let k = rows.first().map_or(0, |r| r.len() / 6);
    crate::weights::npy::write_f32(path, &[b, k, 6], &rows.concat())
}

/// Writes detections in COCO results format (image_id = index in the sorted file list).
pub fn save_coco_json(dets: &[CocoDet], path: &Path) -> Result<()> {
    let v: Vec<_> = dets
        .iter()
        .map(|d| {
            serde_json::json!({"image_id": d.image_id, "category_id": d.category_id,
                "bbox": d.bbox.map(|x| (x * 1000.0).round() / 1000.0), "score": (d.score * 1e5).round() / 1e5})
        })
        .collect();
    crate::files::write_atomic(path, serde_json::to_string(&v)?.as_bytes())
}
