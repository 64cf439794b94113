use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;
use burn::tensor::{Tensor, TensorData};
use clap::Args;

use crate::data::augment::AugConfig;
use crate::distill::args::DistillArgs;
use crate::distill::distiller::Distiller;
use crate::train::StepHook;
use crate::data::dataset::{DataConfig, Dataset};
use crate::data::loader::{Batch, TrainLoader};
use crate::loss::LossConfig;
use crate::kernels::bf16;
use crate::model;
use crate::train::optim::{GradStore, Method, Optimizer, StepParams};
use crate::train::{forward_backward, make_trainable, StepPos};

#[derive(Args)]
pub struct BenchTrainArgs {
    /// Model to time: built-in YAML, YAML path, .pt or .safetensors.
    #[arg(long, default_value = "yolov8n.yaml")]
    pub model: String,
    /// data.yaml whose training images feed the timed batches.
    #[arg(long)]
    pub data: PathBuf,
    /// Training image size (rounded up to a multiple of 32).
    #[arg(long, default_value_t = 320, value_parser = crate::options::image_size)]
    pub imgsz: usize,
    /// Images per batch.
    #[arg(long, default_value_t = 16, value_parser = crate::options::at_least_one)]
    pub batch: usize,
    /// Timed training iterations (forward, loss, backward, optimizer step), at least 1.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub iters: u32,
    /// Timed data-pipeline batches (mosaic on), after the first one, over as many epochs as they
    /// take.
    #[arg(long = "data-batches", default_value_t = 20, value_parser = crate::options::at_least_one)]
    pub data_batches: usize,
    /// Data-loading threads.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Where targets are assigned (as `train --assign-on`).
    #[arg(long = "assign-on", value_enum, default_value_t = crate::loss::AssignOn::Auto)]
    pub assign_on: crate::loss::AssignOn,
    /// Mixed precision of the timed steps and the teacher's forward (as `train --amp`).
    #[arg(long, default_value = "false", num_args = 0..=1, default_missing_value = "true", value_parser = crate::options::amp)]
    pub amp: crate::options::Amp,
    /// With `--teacher`: also times the same steps distilled, and the teacher's forward alone.
    #[command(flatten)]
    pub distill: DistillArgs,
}

/// Times the data pipeline and training iterations separately, in images/s.
pub fn run(a: BenchTrainArgs) -> Result<()> {
    let a = BenchTrainArgs { imgsz: crate::options::stride_multiple(a.imgsz), ..a };
    let plain = crate::default_device();
    let ad = plain.clone().autodiff();
    let data = DataConfig::load(&a.data)?;
    let nc = data.names.len();
    let ds = Arc::new(Dataset::scan(&data.train, nc, Some(&std::env::temp_dir().join("yolodistill-bench-cache")))?);
    let loader = TrainLoader::new(ds, a.imgsz, a.batch, AugConfig::default(), a.workers, 0)?;

    // The pipeline's steady state: epochs back to back, the clock started once the first batch is
    // out (workers started), as scripts/bench_train.sh times Ultralytics' loader. The training
    // steps reuse the first `iters` batches.
    let mut stream = (0..).flat_map(|e| loader.epoch(e, true));
    let mut batches: Vec<Batch> = stream.next().into_iter().collect();
    let (t, mut images) = (Instant::now(), 0);
    for b in stream.take(a.data_batches) {
        images += b.shape[0];
        if batches.len() < a.iters as usize {
            batches.push(b);
        }
    }
    let data_ips = images as f64 / t.elapsed().as_secs_f64();

    if let Some(w) = a.amp.warning(crate::device::is_cpu(&plain)) {
        eprintln!("warning: {w}");
    }
    let arith = a.amp.arithmetic();
    let mut m = model::load(&a.model, Some(nc), &plain)?.model;
    let head = m.head();
    let mut loss_cfg = LossConfig::new(nc, head.reg_max, head.strides.clone());
    loss_cfg.on_device = a.assign_on.on_device(&plain);
    make_trainable(&mut m);
    let mut opt = Optimizer::new(Method::AdamW { beta1: 0.9, beta2: 0.999, eps: 1e-8 }, 5e-4);
    let mut grads = GradStore::default();
    let hp = StepParams { lr: [1e-3; 3], momentum: 0.9 };
    let pos = |i: usize| StepPos { epoch: 0, epochs: 1, batch: i, batches: batches.len() };
    let mut step = |i: usize, hook: Option<&mut dyn StepHook>| {
        let taps = hook.as_ref().map(|h| h.taps()).unwrap_or_default();
        let items = bf16::with(arith, || forward_backward(&mut m, &loss_cfg, &batches[i % batches.len()], &ad, &taps, hook, None, pos(i), &mut grads, loss_cfg.on_device));
        if loss_cfg.on_device {
            grads.clip_global_norm_on_device(10.0);
        } else {
            grads.clip_global_norm(10.0);
        }
        opt.tick();
        opt.apply(&mut m, &grads, hp);
        grads.clear();
        // one read-back per step, so that a GPU's queue has run the step before the clock stops
        items.read();
    };
    let iters = a.iters as usize;
    let timed = |f: &mut dyn FnMut()| {
        let t = Instant::now();
        f();
        t.elapsed().as_secs_f64()
    };
    let (plain_s, distilled) = match &a.distill.teacher {
        None => {
            step(0, None); // warm-up
            let total: f64 = (1..=iters).map(|i| timed(&mut || step(i, None))).sum();
            (total / iters as f64, None)
        }
        Some(_) => {
            let student = model::load(&a.model, Some(nc), &plain)?.model;
            let mut d = Distiller::new(&a.distill, &student, a.imgsz, 1, 0, &plain)?;
            // The teacher's forward as the step runs it (up to its last tapped layer when no term
            // reads its head); flex computes eagerly, so it is done when it returns.
            let teacher = |d: &Distiller, i: usize| {
                let b = &batches[i % batches.len()];
                bf16::with(arith, || drop(d.teacher_forward(&Tensor::<4>::from_data(TensorData::new(b.images.clone(), b.shape), &plain))));
            };
            // Plain step, distilled step and teacher forward take turns, so that a slow spell of
            // a shared machine falls on all three alike.
            let mut sums = [0.0f64; 3];
            for i in 0..=iters {
                let t = [timed(&mut || step(i, None)), timed(&mut || step(i, Some(&mut d))), timed(&mut || teacher(&d, i))];
                if i > 0 {
                    // iteration 0 is the warm-up
                    sums.iter_mut().zip(t).for_each(|(s, t)| *s += t);
                }
            }
            let [p, d, t] = sums.map(|s| s / iters as f64);
            (p, Some((d, t)))
        }
    };
    let train_ips = a.batch as f64 / plain_s;
    let overhead = distilled.map(|(d, t)| d - plain_s - t);
    if a.json {
        let mut j = serde_json::json!({"model": a.model, "imgsz": a.imgsz, "batch": a.batch, "iters": a.iters,
            "train_images_per_s": train_ips, "data_images_per_s": data_ips, "workers": a.workers, "step_s": plain_s,
            "amp": a.amp, "arithmetic": format!("{arith:?}"), "native_bf16": bf16::native()});
        if let (Some((d, t)), Some(o)) = (distilled, overhead) {
            j["distilled_step_s"] = d.into();
            j["teacher_forward_s"] = t.into();
            j["distill_overhead_s"] = o.into();
        }
        println!("{j}");
    } else {
        println!(
            "{} at {} batch {} ({arith:?} products{}): training {train_ips:.2} images/s ({plain_s:.2} s/iteration), data pipeline {data_ips:.1} images/s",
            a.model,
            a.imgsz,
            a.batch,
            if arith == crate::kernels::Arithmetic::Bf16 && !bf16::native() { ", emulated" } else { "" }
        );
        if let (Some((d, t)), Some(o)) = (distilled, overhead) {
            println!(
                "distilled ({}): {d:.2} s/iteration = plain {plain_s:.2} + teacher forward {t:.2} + distillation terms {o:.2}",
                a.distill.distill
            );
        }
    }
    Ok(())
}
