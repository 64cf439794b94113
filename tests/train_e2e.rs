//! A short real training run on a few BCCD images: the loss falls, mAP rises,
//! checkpoints are written and load back; an interrupted run resumes.

mod common;

use std::path::Path;

use yolodistill::report::Results;
use yolodistill::train::{train, TrainArgs};

fn args(model: &str, data: &Path, project: &Path, epochs: usize) -> TrainArgs {
    let (data, project, epochs) = (data.to_str().unwrap(), project.to_str().unwrap(), epochs.to_string());
    TrainArgs::from_flags(&[
        "--model", model, "--data", data, "--project", project, "--epochs", &epochs,
        "--imgsz", "160", "--batch", "8", "--close-mosaic", "2", "--workers", "2",
    ])
    .unwrap()
}

#[test]
fn short_training_learns_and_resumes() {
    let Some(shared) = common::shared() else { return };
    let dir = common::temp_dir("train-e2e");
    let data = common::bccd_subset(&shared, &dir, 16);
    let project = dir.join("runs");
    // 30 epochs of 4 batches, one optimizer step per batch (nbs = batch) so that
    // BatchNorm statistics and weights move enough for a from-scratch model.
    let mut a = args("yolov8n.yaml", &data, &project, 30);
    a.name = "short".into();
    a.batch = 4;
    a.nbs = 4;
    a.close_mosaic = 5;
    let s = train(a.clone(), None).unwrap();
    let results = Results::load(&s.run_dir.join("results.csv")).unwrap();
    let cls = results.column("train/cls_loss").unwrap();
    let map = results.column("metrics/mAP50(B)").unwrap();
    eprintln!("cls_loss per epoch: {cls:?}\nmAP50 per epoch: {map:?}");
    assert!(cls.last().unwrap() < &(cls[0] * 0.5), "classification loss should fall: {cls:?}");
    // Observed final mAP50 over runs: 0.05–0.34 (that spread came from the initial weights, which
    // --seed did not fix before `same_seed_same_run`); the bar is well below the worst seen.
    assert!(map[0] < 0.01 && *map.last().unwrap() > 0.02, "mAP50 should rise above 0.02: {map:?}");
    assert!(s.best.exists() && s.last.exists() && s.run_dir.join("results.png").exists());
    assert!(s.run_dir.join("PR_curve.png").exists());
    // best.safetensors is a complete model
    let m = yolodistill::model::load(s.best.to_str().unwrap(), None, &yolodistill::default_device()).unwrap().model;
    assert_eq!(m.names, vec!["RBC", "WBC", "Platelets"]);

    // Kill a run (SIGKILL) once its first checkpoint exists, then resume it to the end.
    let run = project.join("killed");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_yolodistill"))
        .args(["train", "--model", "yolov8n.yaml", "--data", data.to_str().unwrap(), "--project"])
        .arg(&project)
        .args(["--name", "killed", "--epochs", "3", "--imgsz", "160", "--batch", "8", "--workers", "2"])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let last = run.join("weights/last.safetensors");
    let t0 = std::time::Instant::now();
    while !last.exists() {
        assert!(t0.elapsed().as_secs() < 600, "no checkpoint after 10 minutes");
        assert!(child.try_wait().unwrap().is_none(), "training exited early");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    // the checkpoint left behind is complete and loadable
    yolodistill::model::load(last.to_str().unwrap(), None, &yolodistill::default_device()).unwrap();
    // `train --resume LAST` needs nothing else: model, data and options come from the checkpoint.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_yolodistill"))
        .args(["train", "--resume"])
        .arg(&last)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("(resumed) in") && stderr.contains("-3 (resumed)"), "{stderr}");
    assert!(stderr.contains(&format!("Results in {}", run.display())), "{stderr}");
    let r = Results::load(&run.join("results.csv")).unwrap();
    assert_eq!(r.column("epoch").unwrap(), vec![1.0, 2.0, 3.0]);
    // The time column is the run's training time: the resumed epochs add to the first one's
    // (a resumed run that restarted its clock would put epoch 2 near epoch 1's time).
    let t = r.column("time").unwrap();
    assert!(t[1] - t[0] >= 0.5 * (t[2] - t[1]) && t[2] > t[1], "time should continue across the resume: {t:?}");
}

/// `--seed` decides the run: the same seed gives the same losses (initial weights and data
/// order), another seed other ones.
#[test]
fn same_seed_same_run() {
    let Some(shared) = common::shared() else { return };
    let dir = common::temp_dir("train-seed");
    let data = common::bccd_subset(&shared, &dir, 8);
    let project = dir.join("runs");
    let run = |name: &str, seed: u64| -> Vec<f64> {
        let mut a = args("yolov8n.yaml", &data, &project, 1);
        (a.name, a.seed, a.imgsz, a.batch, a.nbs, a.max_batches) = (name.into(), seed, 96, 4, 4, Some(2));
        let s = train(a, None).unwrap();
        let r = Results::load(&s.run_dir.join("results.csv")).unwrap();
        ["train/box_loss", "train/cls_loss", "train/dfl_loss"].iter().map(|c| r.column(c).unwrap()[0]).collect()
    };
    let (a, b, c) = (run("a", 0), run("b", 0), run("c", 1));
    let rel = |x: &[f64], y: &[f64]| x.iter().zip(y).map(|(p, q)| (p - q).abs() / p.abs().max(1e-9)).fold(0.0, f64::max);
    eprintln!("seed 0: {a:?}\nseed 0: {b:?}\nseed 1: {c:?}");
    assert!(rel(&a, &b) < 1e-5, "same seed, different losses: {a:?} vs {b:?}");
    assert!(rel(&a, &c) > 1e-3, "another seed, same losses: {a:?} vs {c:?}");
}

/// A run whose loss turns non-finite (here: a NaN learning rate, which the command line would
/// refuse) stops with an error after three such batches and writes no NaN checkpoint.
#[test]
fn diverged_training_stops_with_an_error_and_keeps_no_nan_weights() {
    let Some(shared) = common::shared() else { return };
    let dir = common::temp_dir("train-nan");
    let data = common::bccd_subset(&shared, &dir, 8);
    let project = dir.join("runs");
    let mut a = args("yolov8n.yaml", &data, &project, 2);
    (a.name, a.imgsz, a.batch, a.nbs, a.warmup_epochs) = ("nan".into(), 64, 1, 1, 0.0);
    a.optimizer = yolodistill::train::optim::OptimizerKind::Sgd;
    a.lr0 = f64::NAN;
    let err = format!("{:#}", train(a, None).unwrap_err());
    assert!(err.contains("diverged") && err.contains("not finite in 3 consecutive batches"), "{err}");
    assert!(!project.join("nan/weights/last.safetensors").exists() && !project.join("nan/weights/best.safetensors").exists());
}
