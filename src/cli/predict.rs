use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Args;

use crate::infer::draw::annotate_prediction;
use crate::infer::nms::NmsConfig;
use crate::infer::predict::predict_image;
use crate::pixels::load::{list_images, load_rgb, truncated};
use crate::model;

#[derive(Args)]
pub struct PredictArgs {
    /// Built-in YAML name, YAML path, .pt or .safetensors.
    #[arg(long)]
    pub model: String,
    /// An image or a folder of images.
    #[arg(long)]
    pub source: PathBuf,
    /// Inference size (default: the size the model was trained at, else 640; rounded up to a
    /// multiple of 32).
    #[arg(long, value_parser = crate::options::image_size)]
    pub imgsz: Option<usize>,
    /// Confidence threshold.
    #[arg(long, default_value_t = NmsConfig::predict().conf, value_parser = crate::options::unit)]
    pub conf: f32,
    /// IoU threshold for NMS.
    #[arg(long, default_value_t = NmsConfig::predict().iou, value_parser = crate::options::unit)]
    pub iou: f32,
    /// Most detections kept per image.
    #[arg(long = "max-det", default_value_t = NmsConfig::predict().max_det)]
    pub max_det: usize,
    /// Ultralytics' `nms`: `false` runs an end-to-end model's one-to-one head (YOLOv10, YOLO26)
    /// with top-k and no NMS; models without that head ignore it.
    #[arg(long, default_value_t = NmsConfig::predict().nms, action = clap::ArgAction::Set)]
    pub nms: bool,
    /// Folder for annotated images.
    #[arg(long = "save-dir")]
    pub save_dir: Option<PathBuf>,
    /// Half-precision inference: the layers run in f16 (`--half`) or bf16 (`--half bf16`), the
    /// outputs are decoded in f32.
    #[arg(long, value_enum, num_args = 0..=1, default_missing_value = "f16")]
    pub half: Option<crate::options::Half>,
    /// One JSON line per image on stdout: each detection's box, confidence and class, and a
    /// segmentation model's mask outline as `polygon` ([x, y] points in image pixels, as
    /// Ultralytics' `masks.xy`).
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: PredictArgs) -> Result<()> {
    let device = crate::default_device();
    let mut m = model::load(&a.model, None, &device)?.model;
    crate::task::of(m.head()).check_command("predict", m.head(), &a.model)?;
    m.fuse();
    super::apply_half(&mut m, a.half)?;
    let images = list_images(&a.source)?;
    let imgsz = crate::options::inference_size(a.imgsz, m.train_imgsz);
    let cfg = NmsConfig { conf: a.conf, iou: a.iou, max_det: a.max_det, nms: a.nms, ..NmsConfig::predict() };
    if let Some(d) = &a.save_dir {
        check_outputs(&a.model, &images, d)?;
        std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
    }
    for path in images {
        let mut img = load_rgb(&path)?;
        if let Some(why) = truncated(&path)? {
            eprintln!("warning: {}: {why}; its detections may be wrong", path.display());
        }
        let t = std::time::Instant::now();
        let pred = predict_image(&m, &img, imgsz, &cfg, &device);
        let ms = t.elapsed().as_secs_f64() * 1e3;
        let dets = &pred.dets;
        if a.json {
            let polygons = pred.polygons();
            let boxes: Vec<_> = dets
                .iter()
                .enumerate()
                .map(|(k, d)| {
                    let mut found = serde_json::json!({
                        "xyxy": d.xyxy, "conf": d.conf, "cls": d.cls,
                        "name": m.names.get(d.cls).cloned().unwrap_or_default(),
                    });
                    if let Some(p) = polygons.get(k) {
                        found["polygon"] = serde_json::json!(p);
                    }
                    found
                })
                .collect();
            println!("{}", serde_json::json!({"image": path.display().to_string(), "boxes": boxes}));
        } else {
            let mut counts = std::collections::BTreeMap::new();
            for d in dets {
                *counts.entry(m.names.get(d.cls).cloned().unwrap_or_default()).or_insert(0) += 1;
            }
            let summary: Vec<_> = counts.iter().map(|(n, c)| format!("{c} {n}")).collect();
            eprintln!("{}: {} ({ms:.1} ms)", path.display(), if summary.is_empty() { "no detections".into() } else { summary.join(", ") });
        }
        if let Some(d) = &a.save_dir {
            annotate_prediction(&mut img, &pred, &m.names);
            let out = annotated_path(d, &path);
            img.save(&out).with_context(|| format!("cannot write {}", out.display()))?;
        }
    }
    Ok(())
}

/// Where `--save-dir` puts the annotated copy of `image`.
fn annotated_path(save_dir: &Path, image: &Path) -> PathBuf {
    let name = image.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    save_dir.join(PathBuf::from(name).with_extension("jpg"))
}

/// No annotated copy replaces a source image or the model, checked before any is written.
fn check_outputs(model: &str, images: &[PathBuf], save_dir: &Path) -> Result<()> {
    let mut inputs = crate::files::Inputs::default();
    inputs.add("--model", model);
    for i in images {
        inputs.add("--source image", i);
    }
    images.iter().try_for_each(|i| inputs.check_output("--save-dir", &annotated_path(save_dir, i)))
}
