//! Distillation wired into training: distiller parameters train, the frozen
//! teacher does not, cross-family pairs run, checkpoints hold the student only.

mod common;

use std::collections::HashMap;

use burn::module::Module;
use yolodistill::data::loader::Batch;
use yolodistill::distill::args::DistillArgs;
use yolodistill::distill::distiller::Distiller;
use yolodistill::loss::LossConfig;
use yolodistill::model::walk::Slot;
use yolodistill::model::{self, DetectionModel};
use yolodistill::train::optim::{GradStore, Method, Optimizer, StepParams, Trainable};
use yolodistill::train::{forward_backward, gradient_norms, make_trainable, StepHook, StepPos};

fn snapshot<T: Trainable + ?Sized>(t: &mut T) -> HashMap<String, Vec<f32>> {
    let mut out = HashMap::new();
    t.walk_params(&mut |name, slot: Slot<'_>| {
        let v = match slot {
            Slot::P4(p) => p.val().inner().try_into_vec_as::<f32>().unwrap(),
            Slot::P1(p) => p.val().inner().try_into_vec_as::<f32>().unwrap(),
            _ => return,
        };
        out.insert(name.to_string(), v);
    });
    out
}

fn toy_batch(b: usize, s: usize) -> Batch {
    common::toy_batch(b, s, b)
}

fn args(teacher: &str, methods: &str, logit: &str) -> DistillArgs {
    DistillArgs { teacher: Some(teacher.into()), distill: methods.into(), logit: clap::ValueEnum::from_str(logit, false).unwrap(), temperature: 2.0, ..Default::default() }
}

type Params = HashMap<String, Vec<f32>>;

/// One optimizer step of `student` distilled from `teacher`; returns the distiller, the
/// student, and the distiller's and teacher's tensors before the step.
fn step(student_yaml: &str, teacher: &str, methods: &str, logit: &str, imgsz: usize) -> (Distiller, DetectionModel, Params, Params) {
    step_with(student_yaml, &args(teacher, methods, logit), imgsz).0
}

/// As [`step`] with full distillation arguments; also returns the logged items.
fn step_with(student_yaml: &str, a: &DistillArgs, imgsz: usize) -> ((Distiller, DetectionModel, Params, Params), Vec<(String, f64)>) {
    let plain = yolodistill::default_device();
    let ad = plain.clone().autodiff();
    let mut student = model::load(student_yaml, Some(3), &plain).unwrap().model;
    let mut d = Distiller::new(a, &student, imgsz, 10, 2, &plain).unwrap();
    make_trainable(&mut d);
    make_trainable(&mut student);
    let before = snapshot(&mut d);
    let teacher_before = snapshot(&mut d.teacher);
    let head = student.head();
    let loss_cfg = LossConfig::new(3, head.reg_max, head.strides.clone());
    let taps = d.taps();
    let mut grads = GradStore::default();
    let items = forward_backward(&mut student, &loss_cfg, &toy_batch(2, imgsz), &ad, &taps, Some(&mut d), None, StepPos { epoch: 0, epochs: 1, batch: 0, batches: 1 }, &mut grads, false).read();
    assert!(items.iter().all(|(_, v)| v.is_finite()), "{items:?}");
    assert!(items.len() > 3, "distillation terms are logged: {items:?}");
    // each method's term is logged per level too, and the levels add up to it
    for (name, v) in items.iter().filter(|(n, _)| n.starts_with("d_") && !n.contains('.')) {
        let levels: Vec<f64> = items.iter().filter(|(n, _)| n.starts_with(&format!("{name}.l"))).map(|p| p.1).collect();
        assert_eq!(levels.len(), 3, "{name}: {items:?}");
        let sum: f64 = levels.iter().sum();
        assert!((sum - v).abs() <= 1e-4 * v.abs().max(1e-6), "{name}: levels {levels:?} vs {v}");
    }
    let mut opt = Optimizer::new(Method::AdamW { beta1: 0.9, beta2: 0.999, eps: 1e-8 }, 5e-4);
    let hp = StepParams { lr: [1e-2; 3], momentum: 0.9 };
    opt.tick();
    opt.apply(&mut student, &grads, hp);
    opt.apply(&mut d, &grads, hp);
    ((d, student, before, teacher_before), items)
}

#[test]
fn distiller_parameters_train_and_the_teacher_stays_frozen() {
    let (mut d, student, before, teacher_before) = step("yolov8n.yaml", "yolov8s.yaml", "cwd,mgd,sl2", "ld", 64);
    let after = snapshot(&mut d);
    for prefix in ["distill.adapter.", "distill.mgd.", "distill.projector."] {
        let names: Vec<&String> = before.keys().filter(|k| k.starts_with(prefix)).collect();
        assert!(!names.is_empty(), "no {prefix} tensors");
        assert!(names.iter().any(|k| before[*k] != after[*k]), "{prefix} tensors did not change after a step");
    }
    assert_eq!(snapshot(&mut d.teacher), teacher_before, "the offline teacher must not change");
    // The student checkpoint holds the student alone.
    let dir = common::temp_dir("distill-ckpt");
    let file = dir.join("s.safetensors");
    model::save_safetensors(&student.valid(), &file, Default::default()).unwrap();
    let (tensors, _) = yolodistill::weights::st::read_tensors(&file).unwrap();
    assert!(tensors.iter().all(|(n, _)| n.starts_with("model.")), "distiller tensors leaked into the student file");
    assert!(model::load(file.to_str().unwrap(), None, &yolodistill::default_device()).is_ok());
}

#[test]
fn online_teacher_trains_with_its_own_loss() {
    let a = DistillArgs { online: true, ..args("yolov8s.yaml", "cwd", "kl") };
    let ((mut d, _, before, teacher_before), items) = step_with("yolov8n.yaml", &a, 64);
    let t_det = items.iter().find(|(n, _)| n == "t_det").map(|p| p.1);
    assert!(t_det.is_some_and(|v| v > 0.0), "the teacher's detection loss is a term: {items:?}");
    assert!(items.iter().any(|(n, _)| n == "t_cls"), "{items:?}");
    // its parameters are in the distiller's trainable set and move with the step
    assert!(before.keys().any(|k| k.starts_with("distill.teacher.model.")), "teacher tensors are not trainable");
    let teacher_after = snapshot(&mut d.teacher);
    let changed = teacher_before.iter().filter(|(k, v)| teacher_after[*k] != **v).count();
    assert!(changed > teacher_before.len() / 2, "only {changed} of {} teacher tensors changed", teacher_before.len());
    assert!(d.report(64).contains("online"));
}

#[test]
fn mixed_soft_hard_logits_train() {
    let a = DistillArgs { soft_alpha: 0.7, ..args("yolov8s.yaml", "none", "mixed") };
    let (_, items) = step_with("yolov8n.yaml", &a, 64);
    let v = items.iter().find(|(n, _)| n == "l_mixed").map(|p| p.1);
    assert!(v.is_some_and(|v| v > 0.0 && v.is_finite()), "{items:?}");
}

#[test]
fn end_to_end_heads_train_both_branches() {
    // v10 and 26 heads: one-to-many and one-to-one losses; the one-to-one branch gets
    // gradients (from detached features), so its tensors move with a step.
    for yaml in ["yolov10n.yaml", "yolo26n.yaml"] {
        let plain = yolodistill::default_device();
        let ad = plain.clone().autodiff();
        let mut m = model::load(yaml, Some(3), &plain).unwrap().model;
        make_trainable(&mut m);
        let before = snapshot(&mut m);
        let head = m.head();
        let loss_cfg = LossConfig::new(3, head.reg_max, head.strides.clone());
        let mut grads = GradStore::default();
        let pos = StepPos { epoch: 0, epochs: 10, batch: 0, batches: 1 };
        let items = forward_backward(&mut m, &loss_cfg, &toy_batch(2, 64), &ad, &[], None, None, pos, &mut grads, false).read();
        assert!(items.iter().all(|(_, v)| v.is_finite() && *v >= 0.0), "{yaml}: {items:?}");
        let mut opt = Optimizer::new(Method::AdamW { beta1: 0.9, beta2: 0.999, eps: 1e-8 }, 5e-4);
        opt.tick();
        opt.apply(&mut m, &grads, StepParams { lr: [1e-2; 3], momentum: 0.9 });
        let after = snapshot(&mut m);
        let head_prefix = format!("model.{}.", m.layers.len() - 1);
        for branch in ["one2one_cv2.", "one2one_cv3.", "cv2.", "cv3."] {
            let prefix = format!("{head_prefix}{branch}");
            let names: Vec<&String> = before.keys().filter(|k| k.starts_with(&prefix)).collect();
            assert!(!names.is_empty(), "{yaml}: no {branch} tensors");
            assert!(names.iter().any(|k| before[*k] != after[*k]), "{yaml}: {branch} did not train");
        }
    }
}

#[test]
fn calibration_sets_each_terms_gradient_to_the_asked_share_of_the_detection_gradient() {
    let plain = yolodistill::default_device();
    let ad = plain.clone().autodiff();
    let mut student = model::load("yolov8n.yaml", Some(3), &plain).unwrap().model;
    let a = DistillArgs { distill_calibrate: Some(0.25), logit_weight: 0.5, ..args("yolov8s.yaml", "cwd,at:2", "ld") };
    let mut d = Distiller::new(&a, &student, 64, 10, 2, &plain).unwrap();
    make_trainable(&mut d);
    make_trainable(&mut student);
    let head = student.head();
    let loss_cfg = LossConfig::new(3, head.reg_max, head.strides.clone());
    let taps = d.taps();
    let batch = toy_batch(2, 64);
    let pos = StepPos { epoch: 0, epochs: 1, batch: 0, batches: 1 };
    assert_eq!(d.calibration_pending(), Some(0.25));
    let (det, before) = gradient_norms(&mut student, &loss_cfg, &batch, &ad, &taps, &mut d, None, pos);
    let names: Vec<&str> = before.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["d_cwd", "d_at", "l_ld"]);
    let scales = d.calibrate(det, &before);
    assert_eq!(d.calibration_pending(), None, "calibration runs once");
    assert!(scales.iter().all(|(_, s)| s.is_finite() && *s > 0.0 && (s - 1.0).abs() > 1e-3), "{scales:?}");
    let (det_again, after) = gradient_norms(&mut student, &loss_cfg, &batch, &ad, &taps, &mut d, None, pos);
    assert!((det_again - det).abs() <= 1e-5 * det, "nothing trained: {det} vs {det_again}");
    for ((name, norm), written) in after.iter().zip([1.0, 2.0, 0.5]) {
        let want = 0.25 * written * det;
        assert!((norm - want).abs() <= 1e-3 * want, "{name}: gradient {norm} vs {want} (before {before:?}, scales {scales:?})");
    }
}

#[test]
fn cross_family_pairs_train() {
    // v8s teacher → yolo11n student, v8n → yolo12n (area attention needs H·W/4 at P4: imgsz 128)
    for (student, teacher) in [("yolo11n.yaml", "yolov8s.yaml"), ("yolo12n.yaml", "yolov8n.yaml")] {
        let (mut d, _, _, _) = step(student, teacher, "cwd,at,relation", "mse", 128);
        let report = d.report(128);
        assert!(report.contains("level 2"), "{report}");
        eprintln!("{student} ← {teacher}:\n{report}");
    }
}

#[test]
fn mismatched_classes_are_a_clear_error() {
    let Some(shared) = common::shared() else { return };
    let plain = yolodistill::default_device();
    let student = model::load("yolov8n.yaml", Some(5), &plain).unwrap().model;
    let t = shared.join("fixtures/teacher_v8s_bccd.pt");
    let err = Distiller::new(&args(t.to_str().unwrap(), "cwd", "none"), &student, 64, 10, 2, &plain).err().unwrap();
    assert!(format!("{err:#}").contains("3 classes"), "{err:#}");
}

#[test]
fn distilled_run_resumes_with_its_adapters() {
    let Some(shared) = common::shared() else { return };
    let dir = common::temp_dir("distill-resume");
    let data = common::bccd_subset(&shared, &dir, 8);
    let project = dir.join("runs");
    let teacher = shared.join("fixtures/teacher_v8s_bccd.pt");
    let mut a = yolodistill::run::RunArgs::from_flags(&[
        "--model", "yolov8n.yaml", "--data", data.to_str().unwrap(), "--project", project.to_str().unwrap(),
        "--epochs", "2", "--imgsz", "64", "--batch", "4", "--teacher", teacher.to_str().unwrap(), "--distill", "cwd,mgd",
    ])
    .unwrap();
    a.train.max_batches = Some(2); // stop after the first epoch, as an interruption would
    let first = yolodistill::run::train(a.clone()).unwrap();
    let f = yolodistill::weights::st::load(&first.last).unwrap();
    assert!(f.state.iter().any(|(n, _)| n.starts_with("state.hook.distill.adapter.")), "adapters are saved for resume");
    let mut b = a.clone();
    b.train.max_batches = None;
    b.train.resume = Some(first.last.display().to_string());
    let second = yolodistill::run::train(b).unwrap();
    assert_eq!(second.epochs_done, 2);
    let r = yolodistill::report::Results::load(&second.run_dir.join("results.csv")).unwrap();
    assert!(r.column("train/d_cwd").unwrap().iter().all(|v| v.is_finite() && *v > 0.0));
}

/// A distilled run stopped after its first epoch and resumed trains its second epoch exactly as
/// the uninterrupted run does: weights, optimizer state, adapters, MGD generators and masks
/// all carry over, and the epoch draws the same unlabeled images. Separate processes, because
/// the backend's generator (initial weights) is process-wide and the other tests of this file
/// draw from it concurrently.
#[test]
fn resumed_distillation_matches_the_uninterrupted_run() {
    let Some(shared) = common::shared() else { return };
    let dir = common::temp_dir("distill-resume-exact");
    let data = common::bccd_subset(&shared, &dir, 8);
    let project = dir.join("runs");
    let teacher = shared.join("fixtures/teacher_v8s_bccd.pt");
    let run = |extra: &[&str]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_yolodistill"));
        cmd.arg("train").args(extra).arg("--project").arg(&project).arg("--quiet");
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    };
    // Six other BCCD training images as unlabeled ones: the resumed epoch must draw the same.
    let mut files: Vec<String> =
        std::fs::read_dir(shared.join("data/bccd/images/train")).unwrap().map(|e| e.unwrap().path().display().to_string()).collect();
    files.sort();
    let unlabeled = dir.join("unlabeled.txt");
    std::fs::write(&unlabeled, files[8..14].join("\n")).unwrap();
    let (data, teacher, unlabeled) = (data.to_str().unwrap(), teacher.to_str().unwrap(), unlabeled.to_str().unwrap());
    let common = ["--model", "yolov8n.yaml", "--data", data, "--epochs", "2", "--imgsz", "64", "--batch", "4"];
    // Calibrated weights: a resumed run must keep the first batch's, not measure new ones.
    for logit in ["dense", "bckd", "crosskd"] {
        let distil = [
            "--teacher", teacher, "--distill", "cwd,mgd,pkd", "--distill-calibrate", "0.3", "--workers", "1", "--unlabeled", unlabeled,
            "--logit", logit,
        ];
        let (whole, cut) = (format!("whole-{logit}"), format!("cut-{logit}"));
        run(&[&common[..], &distil, &["--name", &whole]].concat());
        // --max-batches 2 = the first epoch: the run stops there, as an interruption would.
        run(&[&common[..], &distil, &["--name", &cut, "--max-batches", "2"]].concat());
        let last = project.join(&cut).join("weights/last.safetensors");
        run(&["--resume", last.to_str().unwrap()]);
        let load = |name: &str| yolodistill::report::Results::load(&project.join(name).join("results.csv")).unwrap();
        let (c, w) = (load(&cut), load(&whole));
        let saved = std::fs::read_to_string(project.join(&cut).join("args.yaml")).unwrap();
        assert!(saved.contains("calibrated:") && saved.contains("d_mgd") && saved.contains("d_pkd") && saved.contains(&format!("l_{logit}")), "{saved}");
        let term = format!("train/l_{logit}");
        for col in ["train/box_loss", "train/cls_loss", "train/d_cwd", "train/d_mgd", "train/d_pkd", term.as_str()] {
            let (c1, w1) = (c.column(col).unwrap(), w.column(col).unwrap());
            assert_eq!(c1.len(), 2, "{col}: {c1:?}");
            assert!((c1[1] - w1[1]).abs() <= 1e-6 * w1[1].abs(), "{col}: resumed {c1:?} vs uninterrupted {w1:?}");
        }
    }
}

/// A mean-teacher run (the EMA labels, next to a frozen teacher that distils, calibrated) stopped
/// after its first epoch and resumed trains its second epoch as the uninterrupted run does: the
/// EMA, the mean teacher, carries over in `last`. The same without a teacher file. Low
/// thresholds, so that the young EMA labels something.
#[test]
fn mean_teacher_run_resumes_exactly() {
    let Some(shared) = common::shared() else { return };
    let dir = common::temp_dir("mean-teacher-resume");
    let data = common::bccd_subset(&shared, &dir, 8);
    let project = dir.join("runs");
    let teacher = shared.join("fixtures/teacher_v8s_bccd.pt");
    let run = |extra: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_yolodistill")).arg("train").args(extra).arg("--project").arg(&project).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "{err}");
        err
    };
    // four other BCCD training images as the unlabeled ones
    let mut files: Vec<String> =
        std::fs::read_dir(shared.join("data/bccd/images/train")).unwrap().map(|e| e.unwrap().path().display().to_string()).collect();
    files.sort();
    let unlabeled = dir.join("unlabeled.txt");
    std::fs::write(&unlabeled, files[8..12].join("\n")).unwrap();
    let (data, teacher, unlabeled) = (data.to_str().unwrap(), teacher.to_str().unwrap(), unlabeled.to_str().unwrap());
    // --nbs 4: an optimizer step, and so an EMA update, every batch
    let common = [
        "--model", "yolov8n.yaml", "--data", data, "--epochs", "2", "--imgsz", "64", "--batch", "4", "--nbs", "4", "--workers", "1",
        "--unlabeled", unlabeled, "--mean-teacher", "--burn-in", "0", "--pseudo-conf", "0.02", "--pseudo-low", "0.001",
    ];
    for (name, extra) in [("alone", &[][..]), ("with-teacher", &["--teacher", teacher, "--distill", "cwd", "--distill-calibrate", "0.3"][..])] {
        let (whole, cut) = (format!("whole-{name}"), format!("cut-{name}"));
        let said = run(&[&common[..], extra, &["--name", &whole]].concat());
        assert!(said.contains("mean teacher: the EMA of the student labels the unlabeled images from epoch 1"), "{said}");
        // 8 labeled images in batches of 4: --max-batches 2 is the first epoch
        run(&[&common[..], extra, &["--name", &cut, "--max-batches", "2", "--quiet"]].concat());
        let last = project.join(&cut).join("weights/last.safetensors");
        run(&["--resume", last.to_str().unwrap(), "--quiet"]);
        let load = |name: &str| yolodistill::report::Results::load(&project.join(name).join("results.csv")).unwrap();
        let (c, w) = (load(&cut), load(&whole));
        let uncertain = w.column("train/pseudo_uncertain").unwrap();
        assert!(uncertain.iter().all(|&v| v > 0.0), "{name}: the EMA labels something: {uncertain:?}");
        let mut cols = vec!["train/box_loss", "train/cls_loss", "train/dfl_loss", "train/pseudo_reliable", "train/pseudo_uncertain"];
        if name == "with-teacher" {
            cols.push("train/d_cwd");
        }
        for col in cols {
            let (c1, w1) = (c.column(col).unwrap(), w.column(col).unwrap());
            assert_eq!(c1.len(), 2, "{name} {col}: {c1:?}");
            assert!((c1[1] - w1[1]).abs() <= 1e-6 * w1[1].abs(), "{name} {col}: resumed {c1:?} vs uninterrupted {w1:?}");
        }
    }
}

#[test]
fn online_run_saves_and_resumes_its_teacher() {
    let Some(shared) = common::shared() else { return };
    let dir = common::temp_dir("distill-online-resume");
    common::bccd_subset(&shared, &dir, 4);
    let (data, project) = (dir.join("data.yaml"), dir.join("runs"));
    let mut a = yolodistill::run::RunArgs::from_flags(&[
        "--model", "yolov8n.yaml", "--data", data.to_str().unwrap(), "--project", project.to_str().unwrap(),
        "--epochs", "2", "--imgsz", "64", "--batch", "4", "--teacher", "yolov8n.yaml", "--online", "--distill", "at",
    ])
    .unwrap();
    a.train.max_batches = Some(1);
    let first = yolodistill::run::train(a.clone()).unwrap();
    let f = yolodistill::weights::st::load(&first.last).unwrap();
    let saved = |suffix: &str| f.state.iter().any(|(n, _)| n.starts_with("state.hook.distill.teacher.model.") && n.ends_with(suffix));
    assert!(saved("conv.weight") && saved("running_mean"), "the online teacher (weights and BatchNorm statistics) is saved for resume");
    let mut b = a.clone();
    b.train.max_batches = None;
    b.train.resume = Some(first.last.display().to_string());
    let second = yolodistill::run::train(b).unwrap();
    assert_eq!(second.epochs_done, 2);
    let r = yolodistill::report::Results::load(&second.run_dir.join("results.csv")).unwrap();
    assert!(r.column("train/t_det").unwrap().iter().all(|v| v.is_finite() && *v > 0.0));
}

#[test]
fn a_teacher_whose_head_no_term_reads_stops_at_its_last_tap() {
    // Feature-only distillation runs the teacher up to its last tapped layer (its head is a
    // quarter of a v8s forward); the taps are those of the whole forward, bit for bit. A term
    // that reads the head (a response term, SL2's score weights) keeps the whole forward.
    let plain = yolodistill::default_device();
    let student = model::load("yolov8n.yaml", Some(3), &plain).unwrap().model;
    let x = burn::tensor::Tensor::<4>::random([2, 3, 64, 64], burn::tensor::Distribution::Uniform(0.0, 1.0), &plain);
    let d = Distiller::new(&args("yolov8s.yaml", "cwd", "none"), &student, 64, 10, 2, &plain).unwrap();
    let layers: Vec<usize> = d.pairs.iter().map(|p| p.teacher_layer).collect();
    let pass = d.teacher_forward(&x);
    assert!(pass.head.is_none(), "cwd alone reads no teacher head");
    let full = d.teacher.forward_taps(x.clone(), &layers, false).taps;
    assert_eq!(pass.taps.len(), full.len());
    for (a, b) in pass.taps.into_iter().zip(full) {
        assert_eq!(a.try_into_vec_as::<f32>().unwrap(), b.try_into_vec_as::<f32>().unwrap());
    }
    for (methods, logit) in [("cwd", "kl"), ("sl2", "none")] {
        let d = Distiller::new(&args("yolov8s.yaml", methods, logit), &student, 64, 10, 2, &plain).unwrap();
        assert!(d.teacher_forward(&x).head.is_some(), "{methods} with --logit {logit} reads the teacher's head");
    }
}

/// Responses between a YOLO26 head (4 box numbers per anchor) and a DFL head (4 × 16 bins),
/// either way round: bckd's two terms act (it compares decoded boxes); dense keeps its class
/// term alone (it panicked at the first step).
#[test]
fn responses_across_head_families() {
    for (student, teacher) in [("yolo26n.yaml", "yolov8n.yaml"), ("yolov8n.yaml", "yolo26n.yaml")] {
        // bckd compares the boxes each head decodes: both of its terms act across families
        let (_, items) = step_with(student, &args(teacher, "none", "bckd"), 64);
        let item = |n: &str| items.iter().find(|(k, _)| k == n).unwrap_or_else(|| panic!("{n} not logged: {items:?}")).1;
        assert!(item("l_bckd.cls") > 0.0 && item("l_bckd.box") > 0.0, "{student} ← {teacher}: {items:?}");
        // Ultralytics names the distance term l1_loss for a head without DFL bins (YOLO26)
        let distance = if student.starts_with("yolo26") { "l1_loss" } else { "dfl_loss" };
        assert!(item(distance) > 0.0 && items.iter().filter(|(k, _)| k.ends_with("_loss")).count() == 3, "{student}: {items:?}");
        let ((mut d, _, _, _), items) = step_with(student, &args(teacher, "none", "dense"), 64);
        let item = |n: &str| items.iter().find(|(k, _)| k == n).unwrap_or_else(|| panic!("{n} not logged: {items:?}")).1;
        assert!(item("l_dense.cls") > 0.0, "{student} ← {teacher}: {items:?}");
        assert_eq!(item("l_dense.box"), 0.0, "{student} ← {teacher}");
        assert!(d.report(64).contains("class term only"), "{}", d.report(64));
    }
}

/// CrossKD: the student's head features go through the frozen teacher head's later layers; its
/// terms act within and across families, its adapters (where the heads' widths differ) train,
/// and the teacher does not change. It refuses what it cannot do.
#[test]
fn crosskd_trains_through_the_frozen_teacher_head() {
    for (student, teacher) in [("yolov8n.yaml", "yolov8s.yaml"), ("yolo11n.yaml", "yolov8s.yaml"), ("yolo26n.yaml", "yolov8n.yaml")] {
        let ((mut d, _, before, teacher_before), items) = step_with(student, &args(teacher, "none", "crosskd"), 64);
        let item = |n: &str| items.iter().find(|(k, _)| k == n).unwrap_or_else(|| panic!("{n} not logged: {items:?}")).1;
        assert!(item("l_crosskd.cls") > 0.0 && item("l_crosskd.box") > 0.0, "{student} ← {teacher}: {items:?}");
        let after = snapshot(&mut d);
        let cross: Vec<&String> = before.keys().filter(|k| k.starts_with("distill.cross.")).collect();
        assert!(!cross.is_empty(), "{student} ← {teacher}: no adapter, yet the class branches' widths differ");
        assert!(cross.iter().all(|k| before[*k] != after[*k]), "{student} ← {teacher}: an adapter did not train");
        assert_eq!(snapshot(&mut d.teacher), teacher_before, "the teacher must not change");
        let report = d.report(64);
        assert!(report.contains("response: crosskd (the student's head features through the teacher head's later layers"), "{report}");
    }
    // the term's gradient reaches the student's own weights (its head's first stages and below)
    let plain = yolodistill::default_device();
    let ad = plain.clone().autodiff();
    let mut student = model::load("yolo11n.yaml", Some(3), &plain).unwrap().model;
    let mut d = Distiller::new(&args("yolov8s.yaml", "none", "crosskd"), &student, 64, 10, 2, &plain).unwrap();
    make_trainable(&mut d);
    make_trainable(&mut student);
    let head = student.head();
    let loss_cfg = LossConfig::new(3, head.reg_max, head.strides.clone());
    let taps = d.taps();
    let pos = StepPos { epoch: 0, epochs: 1, batch: 0, batches: 1 };
    let (_, terms) = gradient_norms(&mut student, &loss_cfg, &toy_batch(2, 64), &ad, &taps, &mut d, None, pos);
    assert!(terms.iter().any(|(n, g)| n == "l_crosskd" && *g > 0.0 && g.is_finite()), "{terms:?}");
    let student = model::load("yolov8n.yaml", Some(3), &plain).unwrap().model;
    for (a, why) in [
        (DistillArgs { online: true, ..args("yolov8s.yaml", "none", "crosskd") }, "not with --online"),
        (DistillArgs { distill_layers: "15,18,21".into(), ..args("yolov8s.yaml", "none", "crosskd") }, "--distill-layers auto"),
    ] {
        let e = Distiller::new(&a, &student, 64, 10, 2, &plain).err().unwrap();
        assert!(format!("{e:#}").contains(why), "{e:#}");
    }
}

/// A segmentation teacher of a detection student runs without its mask parts: no term reads them,
/// and its prototypes would be a third of its forward.
#[test]
fn a_segmentation_teacher_of_a_detection_student_drops_its_masks() {
    let dev = yolodistill::default_device();
    let seg = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/seg/yolov8t-seg.pt");
    let seg = seg.to_str().unwrap();
    let student = model::load("yolov8n.yaml", Some(3), &dev).unwrap().model;
    let d = Distiller::new(&args(seg, "cwd", "bckd"), &student, 64, 1, 0, &dev).unwrap();
    assert!(d.teacher.head().mask.is_none());
    let mut whole = model::load(seg, None, &dev).unwrap().model;
    whole.fuse();
    let (kept, all) = (yolodistill::model::flops::gflops(&d.teacher, 640), yolodistill::model::flops::gflops(&whole, 640));
    assert!(kept < 0.9 * all, "{kept} GFLOPs of {all}");
}
