use anyhow::Result;
use burn::tensor::{Distribution, Tensor};
use clap::Args;

use crate::infer::nms::NmsConfig;
use crate::model;

#[derive(Args)]
pub struct BenchmarkArgs {
    /// Built-in YAML name, YAML path, .pt or .safetensors.
    #[arg(long, default_value = "yolov8n.yaml")]
    pub model: String,
    /// Square input size (rounded up to a multiple of 32).
    #[arg(long, default_value_t = 640, value_parser = crate::options::image_size)]
    pub imgsz: usize,
    /// Images per forward pass.
    #[arg(long, default_value_t = 1, value_parser = crate::options::at_least_one)]
    pub batch: usize,
    /// Timed forward passes (after warm-up).
    #[arg(long, default_value_t = 20, value_parser = crate::options::at_least_one)]
    pub runs: usize,
    /// Untimed passes first.
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// Keep BatchNorm unfolded (default folds it, as Ultralytics' predictor does).
    #[arg(long)]
    pub no_fuse: bool,
    /// Ultralytics' `nms`: unset times the decoded forward alone; `true` adds NMS (prediction
    /// thresholds); `false` runs an end-to-end model's one-to-one head with its top-k instead
    /// (YOLOv10, YOLO26; other models keep NMS).
    #[arg(long, action = clap::ArgAction::Set)]
    pub nms: Option<bool>,
    /// Half-precision inference: the layers run in f16 (`--half`) or bf16 (`--half bf16`), the
    /// outputs are decoded in f32.
    #[arg(long, value_enum, num_args = 0..=1, default_missing_value = "f16")]
    pub half: Option<crate::options::Half>,
    /// The convolutions' products in bf16 (as `train --amp`; f32 activations, unlike `--half`):
    /// how a distillation's teacher runs under `--amp`.
    #[arg(long, default_value = "false", num_args = 0..=1, default_missing_value = "true", value_parser = crate::options::amp)]
    pub amp: crate::options::Amp,
    /// Print one JSON object instead of the line.
    #[arg(long)]
    pub json: bool,
}

/// Times the decoded forward pass on random input (no pre-processing; post-processing with `--nms`).
pub fn run(a: BenchmarkArgs) -> Result<()> {
    let a = BenchmarkArgs { imgsz: crate::options::stride_multiple(a.imgsz), ..a };
    let device = crate::default_device();
    let mut m = model::load(&a.model, None, &device)?.model;
    if !a.no_fuse {
        m.fuse();
    }
    super::apply_half(&mut m, a.half)?;
    let x = Tensor::<4>::random([a.batch, 3, a.imgsz, a.imgsz], Distribution::Uniform(0.0, 1.0), &device);
    if let Some(w) = a.amp.warning(crate::device::is_cpu(&device)) {
        eprintln!("warning: {w}");
    }
    let arith = a.amp.arithmetic();
    let once = || -> Result<f64> {
        let t = std::time::Instant::now();
        match a.nms {
            // reading the result back waits for it; a failed read (a GPU out of memory, a buffer
            // over the device's limit) is an error, not a time
            None => _ = m.predict(x.clone()).try_into_vec_as::<f32>().map_err(|e| {
                anyhow::anyhow!("the forward of batch {} at {} on {device:?} failed: {e:?}", a.batch, a.imgsz)
            })?,
            Some(nms) => _ = m.detect(x.clone(), &NmsConfig { nms, ..NmsConfig::predict() }),
        }
        Ok(t.elapsed().as_secs_f64() * 1e3)
    };
    let once = || crate::kernels::bf16::with(arith, once);
    for _ in 0..a.warmup {
        once()?;
    }
    let mut ms = (0..a.runs).map(|_| once()).collect::<Result<Vec<f64>>>()?;
    ms.sort_by(|x, y| x.partial_cmp(y).unwrap());
    let median = ms[ms.len() / 2];
    let mean = ms.iter().sum::<f64>() / ms.len() as f64;
    let what = match a.nms {
        None => "forward",
        Some(true) => "forward + NMS",
        Some(false) if m.head().has_one2one() => "one-to-one forward + top-k (no NMS)",
        Some(false) => "forward + NMS (no one-to-one head)",
    };
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    if a.json {
        println!(
            "{}",
            serde_json::json!({"model": a.model, "imgsz": a.imgsz, "batch": a.batch, "runs": ms.len(),
                "median_ms": median, "mean_ms": mean, "min_ms": ms[0], "threads": threads, "fused": !a.no_fuse, "timed": what,
                "arithmetic": format!("{arith:?}"), "native_bf16": crate::kernels::bf16::native()})
        );
    } else {
        println!(
            "{} {what}, batch {} at {}: median {median:.1} ms, mean {mean:.1} ms, min {:.1} ms over {} runs ({threads} threads)",
            a.model, a.batch, a.imgsz, ms[0], ms.len()
        );
    }
    Ok(())
}
