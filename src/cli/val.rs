use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};

use crate::data::dataset::{DataConfig, Dataset};
use crate::data::loader::ValLoader;
use crate::eval::validate::{save_coco_json, validate_full, validate_with, Exchange};
use crate::infer::nms::NmsConfig;
use crate::model;
use crate::report::mosaic::ValBatch;
use crate::report::val_plots;

#[derive(Clone, Copy, ValueEnum)]
pub enum Split {
    Val,
    Test,
}

#[derive(Args)]
pub struct ValArgs {
    /// .pt, .safetensors (or a YAML, for an untrained baseline).
    #[arg(long)]
    pub model: String,
    /// data.yaml of a YOLO-format dataset.
    #[arg(long)]
    pub data: PathBuf,
    /// Which split of data.yaml to validate.
    #[arg(long, value_enum, default_value_t = Split::Val)]
    pub split: Split,
    /// Validation image size (default: the size the model was trained at, else 640; rounded up to a
    /// multiple of 32).
    #[arg(long, value_parser = crate::options::image_size)]
    pub imgsz: Option<usize>,
    /// Images per batch.
    #[arg(long, default_value_t = 16, value_parser = crate::options::at_least_one)]
    pub batch: usize,
    /// Confidence threshold of NMS (Ultralytics validates at 0.001).
    #[arg(long, default_value_t = NmsConfig::val().conf, value_parser = crate::options::unit)]
    pub conf: f32,
    /// IoU threshold of NMS.
    #[arg(long, default_value_t = NmsConfig::val().iou, value_parser = crate::options::unit)]
    pub iou: f32,
    /// Most detections kept per image.
    #[arg(long = "max-det", default_value_t = NmsConfig::val().max_det)]
    pub max_det: usize,
    /// Ultralytics' `nms`: `false` runs an end-to-end model's one-to-one head (YOLOv10, YOLO26)
    /// with top-k and no NMS; models without that head ignore it.
    #[arg(long, default_value_t = NmsConfig::val().nms, action = clap::ArgAction::Set)]
    pub nms: bool,
    /// Data-loading threads, at most the CPUs and the batches (as Ultralytics).
    #[arg(long, default_value_t = crate::data::loader::DEFAULT_WORKERS)]
    pub workers: usize,
    /// Half-precision inference: the layers run in f16 (`--half`) or bf16 (`--half bf16`), the
    /// outputs are decoded in f32.
    #[arg(long, value_enum, num_args = 0..=1, default_missing_value = "f16")]
    pub half: Option<crate::options::Half>,
    /// Write detections in COCO results format to this file.
    #[arg(long = "save-json")]
    pub save_json: Option<PathBuf>,
    /// Print one JSON object with the metrics.
    #[arg(long)]
    pub json: bool,
    /// Draw the validation's pictures (PR/F1/P/R curves, confusion matrices, the first batches'
    /// labels and predictions) into --project/--name, as Ultralytics' `plots=True`.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    pub plots: bool,
    /// Folder of the validation folders (for the plots).
    #[arg(long, default_value = "runs")]
    pub project: PathBuf,
    /// Validation folder name under --project (name2, name3, … when taken, unless --exist-ok).
    #[arg(long, default_value = "val")]
    pub name: String,
    /// Reuse an existing validation folder instead of making name2, name3, …
    #[arg(long = "exist-ok")]
    pub exist_ok: bool,
    /// Dev check of exported models: write each batch's input to DIR/input_<k>.npy.
    #[arg(long = "dump-inputs", hide = true)]
    pub dump_inputs: Option<PathBuf>,
    /// Dev check of exported models: take each batch's decoded output from
    /// DIR/output_<k>.npy instead of running the model.
    #[arg(long = "outputs-from", hide = true)]
    pub outputs_from: Option<PathBuf>,
}

pub fn run(a: ValArgs) -> Result<()> {
    let device = crate::default_device();
    let data = DataConfig::load(&a.data)?;
    let plots_dir = crate::train::run_dir(&a.project, &a.name, a.exist_ok);
    check_outputs(&a, &data, &plots_dir)?;
    let mut m = model::load(&a.model, Some(data.names.len()).filter(|_| a.model.ends_with(".yaml")), &device)?.model;
    crate::task::of(m.head()).check_command("val", m.head(), &a.model)?;
    // BatchNorm folded into the convolutions, as Ultralytics' standalone validator runs it.
    m.fuse();
    super::apply_half(&mut m, a.half)?;
    if m.nc() != data.names.len() {
        bail!("{} predicts {} classes but {} has {}", a.model, m.nc(), a.data.display(), data.names.len());
    }
    let (sources, split) = match a.split {
        Split::Val => (&data.val, "val"),
        Split::Test => (&data.test, "test"),
    };
    if sources.is_empty() {
        bail!("{} has no {split} split", a.data.display());
    }
    let task = crate::task::of(m.head());
    let ds = Arc::new(Dataset::scan(sources, data.names.len(), None)?);
    task.check_labels(&ds).with_context(|| format!("--data {}", a.data.display()))?;
    let imgsz = crate::options::inference_size(a.imgsz, m.train_imgsz);
    let workers = crate::data::loader::worker_count(a.workers, ds.len().div_ceil(a.batch.max(1)), 1);
    let loader = ValLoader::new(ds, imgsz, a.batch, m.max_stride().max(32), workers)?.with_masks(task.mask_ratio());
    let cfg = NmsConfig { conf: a.conf, iou: a.iou, max_det: a.max_det, nms: a.nms, ..NmsConfig::val() };
    let exchange = match (&a.dump_inputs, &a.outputs_from) {
        (Some(d), _) => {
            std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
            Some(Exchange::DumpInputs(d.clone()))
        }
        (None, Some(d)) => Some(Exchange::ReadOutputs(d.clone())),
        _ => None,
    };
    let mut batches = Vec::new();
    let r = if a.plots {
        validate_full(&m, &loader, &cfg, exchange.as_ref(), &mut ValBatch::keeper(&mut batches))?
    } else {
        validate_with(&m, &loader, &cfg, exchange.as_ref())?
    };
    if a.plots {
        let dir = plots_dir;
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        val_plots::write(&dir, &r, &batches, &data.names)?;
        eprintln!("plots written to {}", dir.display());
    }
    if let Some(p) = &a.save_json {
        save_coco_json(&r.coco_dets, p)?;
        eprintln!("COCO-format detections written to {}", p.display());
    }
    let names = &data.names;
    if a.json {
        println!("{}", metrics_json(&r, names));
    } else {
        println!("{:>12} {:>7} {:>9} {:>7} {:>7} {:>7} {:>9}", "class", "images", "instances", "P", "R", "mAP50", "mAP50-95");
        let own = r.task.iter().map(|t| (t.suffix, &t.metrics));
        for (suffix, m) in std::iter::once(("B", &r.metrics)).chain(own) {
            if suffix != "B" {
                println!("{suffix}:");
            }
            println!("{:>12} {:>7} {:>9} {:>7.3} {:>7.3} {:>7.3} {:>9.3}", "all", r.images, r.instances, m.precision, m.recall, m.map50, m.map);
            for c in &m.per_class {
                let n = names.get(c.class).cloned().unwrap_or_default();
                println!("{:>12} {:>7} {:>9} {:>7.3} {:>7.3} {:>7.3} {:>9.3}", n, r.images, c.n_labels, c.precision, c.recall, c.ap50, c.ap);
            }
        }
        println!("COCO: AP50-95 {:.3}  AP50 {:.3}  AP75 {:.3}  ({:.1} ms/image)", r.coco.ap, r.coco.ap50, r.coco.ap75, r.ms_per_image);
    }
    Ok(())
}

/// A validation's figures as `--json` prints them (`val`, and `train`'s final validation).
pub(super) fn metrics_json(r: &crate::eval::validate::ValResult, names: &[String]) -> serde_json::Value {
    let per_class = |m: &crate::eval::metrics::DetMetrics| -> serde_json::Map<String, serde_json::Value> {
        m.per_class.iter().map(|c| (names.get(c.class).cloned().unwrap_or_default(), serde_json::json!({"AP50": c.ap50, "AP50-95": c.ap}))).collect()
    };
    let mut j = serde_json::json!({
        "mAP50": r.metrics.map50, "mAP50-95": r.metrics.map, "precision": r.metrics.precision,
        "recall": r.metrics.recall, "per_class": per_class(&r.metrics), "images": r.images, "instances": r.instances,
        "coco": {"AP50-95": r.coco.ap, "AP50": r.coco.ap50, "AP75": r.coco.ap75}, "fitness": r.fitness(),
    });
    // a task's own metrics (a segmentation model's: "masks")
    if let Some(t) = &r.task {
        let m = &t.metrics;
        j["masks"] = serde_json::json!({
            "mAP50": m.map50, "mAP50-95": m.map, "precision": m.precision, "recall": m.recall, "per_class": per_class(m),
        });
    }
    j
}

/// No file val writes (the COCO JSON, the plots, dumped inputs) replaces the model, the
/// data.yaml or an image list of the split, checked before anything runs.
fn check_outputs(a: &ValArgs, data: &DataConfig, plots_dir: &std::path::Path) -> Result<()> {
    let mut inputs = crate::files::Inputs::default();
    inputs.add("--model", &a.model).add("--data", &a.data);
    for s in data.val.iter().chain(&data.test).filter(|s| s.is_file()) {
        inputs.add("the image list", s);
    }
    if let Some(p) = &a.save_json {
        inputs.check_output("--save-json", p)?;
    }
    if a.plots {
        inputs.check_folder("the validation folder", plots_dir, None)?;
    }
    if let Some(d) = &a.dump_inputs {
        inputs.check_folder("the --dump-inputs folder", d, None)?;
    }
    Ok(())
}
