use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use clap::{Args, ValueEnum};

use crate::export;
use crate::export::onnx::OnnxOptions;
use crate::model;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Onnx,
    Safetensors,
}

#[derive(Args)]
pub struct ExportArgs {
    /// Built-in YAML name, YAML path, .pt or .safetensors.
    #[arg(long)]
    pub model: String,
    /// onnx, or safetensors with BatchNorm folded (inference only).
    #[arg(long, value_enum, default_value = "onnx")]
    pub format: Format,
    /// Square input size of the exported graph (default: the size the model was trained at,
    /// else 640; rounded up to a multiple of 32).
    #[arg(long, value_parser = crate::options::image_size)]
    pub imgsz: Option<usize>,
    /// Batch size of the exported graph (ignored with --dynamic).
    #[arg(long, default_value_t = 1, value_parser = crate::options::at_least_one)]
    pub batch: usize,
    /// Symbolic batch, height and width (anchors computed in the graph).
    #[arg(long)]
    pub dynamic: bool,
    /// FP16 ONNX graph (weights, activations, input and output in float16), as
    /// Ultralytics' half export; for GPU runtimes (TensorRT, ONNX Runtime CUDA).
    #[arg(long)]
    pub half: bool,
    /// Ultralytics' `nms`: `false` exports an end-to-end model's one-to-one head (YOLOv10, YOLO26)
    /// with its top-k in the graph, `output0` [B, 300, 6] (x1, y1, x2, y2, score, class), no NMS
    /// needed; unset exports the one-to-many head's [B, 4 + nc, A] for NMS outside the graph.
    #[arg(long, action = clap::ArgAction::Set)]
    pub nms: Option<bool>,
    /// Output file (default: the model's name with the format's extension).
    #[arg(long)]
    pub output: Option<PathBuf>,
    /// Print `{"file": …, "format": …}` on stdout instead of the sentence, as the Python package
    /// reads it.
    #[arg(long)]
    pub json: bool,
}

fn default_output(m: &str, format: Format) -> PathBuf {
    let p = Path::new(m);
    let stem = p.file_stem().and_then(|s| s.to_str()).unwrap_or("model");
    let name = match format {
        Format::Onnx => format!("{stem}.onnx"),
        Format::Safetensors => format!("{stem}_fused.safetensors"),
    };
    match p.parent() {
        Some(dir) if p.is_file() => dir.join(name),
        _ => PathBuf::from(name),
    }
}

/// Loads, fuses and writes the model in the requested format.
pub fn run(a: ExportArgs) -> Result<()> {
    if a.half && a.format != Format::Onnx {
        bail!("--half applies to --format onnx");
    }
    let out = a.output.clone().unwrap_or_else(|| default_output(&a.model, a.format));
    crate::files::Inputs::default().add("--model", &a.model).check_output("--output", &out)?;
    let device = crate::default_device();
    let mut m = model::load(&a.model, None, &device)?.model;
    m.fuse();
    match a.format {
        Format::Onnx => {
            let end2end = match a.nms {
                Some(true) => bail!("--nms true (NMS inside the graph) is not supported: export without --nms and run NMS outside, as `yolodistill predict` does"),
                Some(false) if !m.head().has_one2one() => {
                    eprintln!("warning: {} has no one-to-one head; --nms false is ignored", a.model);
                    false
                }
                Some(false) => true,
                None => false,
            };
            let imgsz = crate::options::inference_size(a.imgsz, m.train_imgsz);
            let opts = OnnxOptions { batch: a.batch, dynamic: a.dynamic, half: a.half, end2end, ..OnnxOptions::new((imgsz, imgsz)) };
            let bytes = export::onnx::export_onnx_with(&m, &opts)?;
            crate::files::write_atomic(&out, &bytes)?;
            report(&a, &out, &format!(
                "{:.1} MB, opset {}{}{}",
                bytes.len() as f64 / 1e6,
                export::onnx::OPSET,
                if a.half { ", float16" } else { "" },
                if end2end { ", end-to-end: output0 [B, 300, 6]" } else { "" }
            ));
        }
        Format::Safetensors => {
            export::export_safetensors_fused(&m, &out)?;
            report(&a, &out, "fused safetensors");
        }
    }
    Ok(())
}

/// What was written: a sentence, or with `--json` one JSON line.
fn report(a: &ExportArgs, out: &Path, details: &str) {
    if a.json {
        let format = match a.format {
            Format::Onnx => "onnx",
            Format::Safetensors => "safetensors",
        };
        println!("{}", serde_json::json!({"file": out, "format": format}));
    } else {
        println!("exported {} to {} ({details})", a.model, out.display());
    }
}
