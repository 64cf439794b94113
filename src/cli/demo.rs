//! `demo`: teacher → student distillation end to end on a synthetic dataset
//! the binary makes itself (no download, a few minutes on a laptop CPU).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;

use crate::data::synthetic::{generate, SyntheticConfig};
use crate::train::{train, TrainArgs, TrainSummary};

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Folder for the dataset and the runs (default: <temp>/yolodistill-demo).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    #[arg(long, default_value_t = 96)]
    pub imgsz: usize,
    #[arg(long = "train-images", default_value_t = 128)]
    pub train_images: usize,
    #[arg(long = "val-images", default_value_t = 48)]
    pub val_images: usize,
    #[arg(long = "teacher-epochs", default_value_t = 30)]
    pub teacher_epochs: usize,
    #[arg(long = "student-epochs", default_value_t = 20)]
    pub student_epochs: usize,
    /// Feature distillation of the distilled student (as `train --distill`).
    #[arg(long, default_value = "cwd")]
    pub distill: String,
    /// Response distillation of the distilled student (as `train --logit`).
    #[arg(long, default_value = "kl")]
    pub logit: String,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// The student: YOLOv8 at an extra-small "p" scale (width 0.125), so the
/// teacher (yolov8n) has the capacity to teach it something in minutes.
fn write_student_yaml(dir: &Path) -> Result<PathBuf> {
    let (text, _) = crate::model::builtin_yaml("yolov8n.yaml").context("built-in yolov8 YAML")?;
    let text = text.replacen("scales:\n", "scales:\n  p: [0.33, 0.125, 1024] # demo student\n", 1);
    let p = dir.join("yolov8p.yaml");
    std::fs::write(&p, text).with_context(|| format!("cannot write {}", p.display()))?;
    Ok(p)
}

struct Row {
    name: &'static str,
    model: String,
    params: usize,
    summary: TrainSummary,
}

pub fn run(a: DemoArgs) -> Result<()> {
    let t0 = Instant::now();
    let dir = a.dir.clone().unwrap_or_else(|| std::env::temp_dir().join("yolodistill-demo"));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    // Small images keep the runs short on a CPU.
    let cfg = SyntheticConfig {
        size: a.imgsz as u32,
        train: a.train_images,
        val: a.val_images,
        objects: (1, 4),
        scale: (0.15, 0.45),
        seed: a.seed,
    };
    let data = generate(&dir.join("shapes"), &cfg)?;
    eprintln!("demo: synthetic dataset ({} train / {} val images, {}×{}) in {}", cfg.train, cfg.val, cfg.size, cfg.size, data.parent().unwrap_or(&dir).display());
    let student_yaml = write_student_yaml(&dir)?;
    let runs = dir.join("runs");
    // Short runs: a nominal batch equal to the batch and no warm-up give the most optimizer
    // steps early (with 8 batches per epoch a warm-up would take several epochs).
    let common = |model: &str, name: &str, epochs: usize| -> Vec<String> {
        [
            "--model", model, "--data", &data.to_string_lossy(), "--imgsz", &a.imgsz.to_string(), "--epochs", &epochs.to_string(),
            "--batch", "16", "--nbs", "16", "--warmup-epochs", "0", "--close-mosaic", &(epochs / 5).to_string(), "--seed", &a.seed.to_string(),
            "--project", &runs.to_string_lossy(), "--name", name, "--exist-ok",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let params = |model: &str| -> Result<usize> { Ok(crate::model::load(model, Some(3), &crate::default_device())?.model.param_count()) };
    let mut rows = Vec::new();

    eprintln!("\ndemo 1/3: teacher yolov8n, {} epochs", a.teacher_epochs);
    let teacher = train(TrainArgs::from_flags(&common("yolov8n.yaml", "teacher", a.teacher_epochs))?, None)?;
    rows.push(Row { name: "teacher", model: "yolov8n".into(), params: params("yolov8n.yaml")?, summary: teacher });
    let teacher_weights = rows[0].summary.best.to_string_lossy().to_string();

    let student = student_yaml.to_string_lossy().to_string();
    // The two students train side by side: at these sizes one run keeps about one core busy.
    eprintln!(
        "\ndemo 2/3 and 3/3: student yolov8p, {} epochs, plain and distilled from the teacher (--distill {} --logit {}), side by side",
        a.student_epochs, a.distill, a.logit
    );
    let mut plain_flags = common(&student, "student-plain", a.student_epochs);
    plain_flags.push("--quiet".into());
    let mut flags = common(&student, "student-distilled", a.student_epochs);
    // Distil for the whole (short) run rather than stopping when mosaic closes.
    let stop = a.student_epochs.to_string();
    flags.extend(["--teacher", &teacher_weights, "--distill", &a.distill, "--logit", &a.logit, "--distill-stop-epoch", &stop, "--quiet"].map(String::from));
    let (plain_args, distilled_args) = (TrainArgs::from_flags(&plain_flags)?, TrainArgs::from_flags(&flags)?);
    let (plain, distilled) = std::thread::scope(|s| {
        let p = s.spawn(|| train(plain_args, None));
        let d = s.spawn(|| train(distilled_args, None));
        (p.join(), d.join())
    });
    let plain = plain.map_err(|_| anyhow::anyhow!("the plain student's training panicked"))??;
    let distilled = distilled.map_err(|_| anyhow::anyhow!("the distilled student's training panicked"))??;
    rows.push(Row { name: "student (plain)", model: "yolov8p".into(), params: params(&student)?, summary: plain });
    rows.push(Row { name: "student (distilled)", model: "yolov8p".into(), params: params(&student)?, summary: distilled });

    let mut table = String::from("| run | model | params | epochs | best mAP50 | best mAP50-95 | time (s) |\n|---|---|---:|---:|---:|---:|---:|\n");
    for r in &rows {
        let (m50, m) = r.summary.best_map.unwrap_or((0.0, 0.0));
        table.push_str(&format!(
            "| {} | {} | {} | {} | {m50:.4} | {m:.4} | {:.0} |\n",
            r.name, r.model, r.params, r.summary.epochs_done, r.summary.seconds
        ));
    }
    let gain = rows[2].summary.best_map.map(|x| x.1).unwrap_or(0.0) - rows[1].summary.best_map.map(|x| x.1).unwrap_or(0.0);
    let out = format!("{table}\ndistillation gain (mAP50-95, distilled − plain): {gain:+.4}\n");
    std::fs::write(dir.join("demo_results.md"), &out)?;
    println!("\n{out}");
    eprintln!("demo finished in {:.0}s; runs and weights in {}", t0.elapsed().as_secs_f64(), runs.display());
    Ok(())
}
