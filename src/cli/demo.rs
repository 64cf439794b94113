//! `demo`: teacher → student distillation end to end on a synthetic dataset the binary makes
//! itself (no download; about seven minutes on a 2-core CPU). The students see a quarter of the
//! labels; the distilled one also learns from the teacher on the other images, given unlabeled.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde::Serialize;

use super::compare::{compare_seeds, finished_or_train, PairResult};
use crate::data::synthetic::{generate, SyntheticConfig};
use crate::run::RunArgs;

#[derive(Args, Debug, Serialize)]
pub struct DemoArgs {
    /// Folder for the dataset and the runs (default: <temp>/yolodistill-demo): new, empty, or
    /// an earlier demo's with the same settings (its finished runs are reused).
    #[arg(long)]
    #[serde(skip)]
    pub dir: Option<PathBuf>,
    /// Image size of the synthetic images and of training.
    #[arg(long, default_value_t = 96, value_parser = crate::options::image_size)]
    pub imgsz: usize,
    /// Synthetic training images.
    #[arg(long = "train-images", default_value_t = 512, value_parser = crate::options::at_least_one)]
    pub train_images: usize,
    /// Synthetic validation images.
    #[arg(long = "val-images", default_value_t = 96, value_parser = crate::options::at_least_one)]
    pub val_images: usize,
    /// Share of the training images whose labels the students see (the teacher sees all).
    #[arg(long = "label-fraction", default_value_t = 0.25, value_parser = crate::options::share)]
    pub label_fraction: f64,
    /// Epochs of the teacher (yolov8n, all labels).
    #[arg(long = "teacher-epochs", default_value_t = 15, value_parser = crate::options::at_least_one)]
    pub teacher_epochs: usize,
    /// Epochs of each student.
    #[arg(long = "student-epochs", default_value_t = 30, value_parser = crate::options::at_least_one)]
    pub student_epochs: usize,
    /// Feature distillation of the distilled student (as `train --distill`).
    #[arg(long, default_value = "none")]
    pub distill: String,
    /// Response distillation of the distilled student (as `train --logit`).
    #[arg(long, default_value = "dense")]
    pub logit: String,
    /// Seed of the dataset and the teacher.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Seeds of the student pairs, each different (each: which labels are kept, initial weights,
    /// data order).
    #[arg(long, default_value = "0,1,2", value_parser = crate::options::seeds)]
    #[serde(skip)]
    pub seeds: crate::options::Seeds,
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

fn params(model: &str) -> Result<usize> {
    Ok(crate::model::load(model, Some(3), &crate::default_device())?.model.param_count())
}

pub fn run(a: DemoArgs) -> Result<()> {
    let t0 = Instant::now();
    let seeds = a.seeds.0.clone();
    let dir = a.dir.clone().unwrap_or_else(|| std::env::temp_dir().join("yolodistill-demo"));
    claim_folder(&dir, &a)?;
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
    let labeled = crate::data::dataset::labeled_count(cfg.train, a.label_fraction);
    eprintln!(
        "demo: a synthetic detection dataset: {} training and {} validation images of {}×{} px with circles, squares and triangles to find, in {}",
        cfg.train,
        cfg.val,
        cfg.size,
        cfg.size,
        data.parent().unwrap_or(&dir).display()
    );
    let student_yaml = write_student_yaml(&dir)?;
    let runs = dir.join("runs");
    // Short runs: a nominal batch equal to the batch and no warm-up give the most optimizer
    // steps early.
    let common = |model: &str, epochs: usize| -> Vec<String> {
        [
            "--model", model, "--data", &data.to_string_lossy(), "--imgsz", &a.imgsz.to_string(), "--epochs", &epochs.to_string(),
            "--batch", "16", "--nbs", "16", "--warmup-epochs", "0", "--close-mosaic", &(epochs / 5).to_string(), "--seed", &a.seed.to_string(),
            "--project", &runs.to_string_lossy(), "--exist-ok",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };

    let student = student_yaml.to_string_lossy().to_string();
    // The students' options are checked now, not after the teacher has trained for minutes.
    let mut flags = common(&student, a.student_epochs);
    let stop = a.student_epochs.to_string();
    let fraction = a.label_fraction.to_string();
    flags.extend(
        [
            "--label-fraction", &fraction, "--teacher", "(the teacher trained first)", "--distill", &a.distill, "--logit", &a.logit, "--distill-stop-epoch", &stop,
            "--quiet",
        ]
        .map(String::from),
    );
    let mut students = RunArgs::from_flags(&flags)?;
    crate::distill::distiller::parse_methods(&students.distill.distill, students.distill.distill_weight)?;

    eprintln!(
        "\ndemo 1/2: the teacher, yolov8n ({} parameters), learns from all {} labeled training images ({} epochs)",
        params("yolov8n.yaml")?,
        cfg.train,
        a.teacher_epochs
    );
    let mut flags = common("yolov8n.yaml", a.teacher_epochs);
    flags.extend(["--name", "teacher"].map(String::from));
    let teacher_map = finished_or_train(RunArgs::from_flags(&flags)?, "demo: the teacher")?;
    let teacher_weights = runs.join("teacher/weights/best.safetensors").to_string_lossy().to_string();

    eprintln!(
        "\ndemo 2/2: two students, yolov8 at a smaller \"p\" scale ({} parameters), see the labels of only {labeled} of the {} \
         training images, as when labelling is what costs. The plain student learns from those alone. The distilled \
         student learns from the same labeled images (same initial weights, same order) and from the other {} images \
         without their labels, through the teacher's predictions on them (--distill {} --logit {}). One pair per seed \
         ({}); a seed also picks which images keep their labels. Each pair trains side by side, {} epochs.",
        params(&student)?,
        cfg.train,
        cfg.train - labeled,
        a.distill,
        a.logit,
        a.seeds,
        a.student_epochs
    );
    students.distill.teacher = Some(teacher_weights);
    let (rows, table) = compare_seeds(&students, &seeds, &runs.join("students"), true)?;
    let out = summary(&rows, &table, teacher_map, labeled, cfg.train);
    std::fs::write(dir.join("demo_results.md"), &out)?;
    println!("\n{out}");
    eprintln!("demo finished in {:.0}s; runs and weights in {}", t0.elapsed().as_secs_f64(), runs.display());
    Ok(())
}

/// The demo's own files in its folder (and the file that records its settings).
const DEMO_ENTRIES: [&str; 5] = ["shapes", "runs", "yolov8p.yaml", "demo_results.md", SETTINGS];
const SETTINGS: &str = "demo_settings.json";

/// Makes `dir` the demo's folder: a new or empty one, or an earlier demo's whose settings are
/// `a`'s (seeds aside: other seeds add pairs). A folder with other files, or an earlier demo
/// with other settings, is refused before anything is written, naming what differs.
fn claim_folder(dir: &Path, a: &DemoArgs) -> Result<()> {
    let settings = serde_json::to_value(a)?;
    if dir.is_dir() {
        let entries = std::fs::read_dir(dir).with_context(|| format!("cannot list {}", dir.display()))?;
        for e in entries {
            let name = e?.file_name().to_string_lossy().into_owned();
            if !DEMO_ENTRIES.contains(&name.as_str()) {
                bail!(
                    "--dir {} holds {name}, which the demo did not write: it writes shapes/, runs/ and its results there, so give \
                     it a new or empty folder",
                    dir.display()
                );
            }
        }
        let saved_path = dir.join(SETTINGS);
        if let Ok(text) = std::fs::read_to_string(&saved_path) {
            let saved: serde_json::Value = serde_json::from_str(&text).with_context(|| format!("{}: not the demo's settings", saved_path.display()))?;
            let differ: Vec<String> = crate::run::changed_values(&saved, &settings).into_iter().map(|(_, shown)| shown).collect();
            if !differ.is_empty() {
                bail!(
                    "--dir {} holds a demo run with other settings ({}); its runs are not reused: choose another --dir, or remove it",
                    dir.display(),
                    differ.join(", ")
                );
            }
        }
    }
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    crate::files::write_atomic(&dir.join(SETTINGS), serde_json::to_string_pretty(&settings)?.as_bytes())
}

/// What the demo found, for a newcomer.
fn summary(rows: &[PairResult], table: &str, teacher: (f64, f64), labeled: usize, total: usize) -> String {
    let gains: Vec<f64> = rows.iter().map(|r| r.distilled.1 - r.plain.1).collect();
    let (g, ci) = super::compare::mean_ci95(&gains);
    let mean = |f: fn(&PairResult) -> f64| rows.iter().map(f).sum::<f64>() / rows.len().max(1) as f64;
    let verdict = if rows.len() < 2 {
        "one seed gives no confidence interval: run more seeds (--seeds 0,1,2) to tell a gain from chance".to_string()
    } else if g - ci > 0.0 {
        format!("the gain is larger than its 95% confidence interval ({:+.3} to {:+.3}): it is not chance", g - ci, g + ci)
    } else {
        format!("the 95% confidence interval ({:+.3} to {:+.3}) includes zero: no gain shown at this size", g - ci, g + ci)
    };
    format!(
        "teacher (all {total} labels): mAP50-95 {:.3}, mAP50 {:.3}\n\nstudents ({labeled} labels; the distilled one also learns from {} unlabeled images):\n\n{table}\n\
         mean mAP50-95: plain {:.3}, distilled {:.3}; {verdict}.\n",
        teacher.1,
        teacher.0,
        total - labeled,
        mean(|r| r.plain.1),
        mean(|r| r.distilled.1),
    )
}
