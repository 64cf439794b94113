//! Unlabeled images: they enter the detection loss never (or only with pseudo-labels), teach
//! through the distillation terms, and reach the student's gradients; a short run with
//! `--label-fraction` and a teacher trains on them.

mod common;

use yolodistill::data::loader::Batch;
use yolodistill::distill::args::DistillArgs;
use yolodistill::distill::distiller::Distiller;
use yolodistill::distill::pseudo::{MeanTeacher, MeanTeacherHook, Thresholds};
use yolodistill::loss::LossConfig;
use yolodistill::model::{self, DetectionModel};
use yolodistill::report::Results;
use yolodistill::train::optim::GradStore;
use yolodistill::train::{forward_backward, make_trainable, StepHook, StepPos};

use common::toy_batch as batch;

const POS: StepPos = StepPos { epoch: 0, epochs: 1, batch: 0, batches: 1 };

struct Setup {
    student: DetectionModel,
    distiller: Distiller,
    loss_cfg: LossConfig,
}

fn setup(a: &DistillArgs, imgsz: usize) -> Setup {
    let plain = yolodistill::default_device();
    // same initial weights in every call
    plain.seed(3);
    let mut student = model::load("yolov8n.yaml", Some(3), &plain).unwrap().model;
    let mut distiller = Distiller::new(a, &student, imgsz, 10, 2, &plain).unwrap();
    make_trainable(&mut distiller);
    make_trainable(&mut student);
    let head = student.head();
    let loss_cfg = LossConfig::new(3, head.reg_max, head.strides.clone());
    Setup { student, distiller, loss_cfg }
}

/// One forward and backward: the logged items and the gradients.
fn run(s: &mut Setup, b: &Batch, with_hook: bool) -> (Vec<(String, f64)>, GradStore) {
    let ad = yolodistill::default_device().autodiff();
    let taps = s.distiller.taps();
    let mut grads = GradStore::default();
    let hook = if with_hook { Some(&mut s.distiller as &mut dyn StepHook) } else { None };
    let items = forward_backward(&mut s.student, &s.loss_cfg, b, &ad, &taps, hook, None, POS, &mut grads, false).read();
    (items, grads)
}

fn item(items: &[(String, f64)], name: &str) -> f64 {
    items.iter().find(|(n, _)| n == name).map(|p| p.1).unwrap_or_else(|| panic!("no {name} in {items:?}"))
}

fn args(logit: &str) -> DistillArgs {
    DistillArgs { teacher: Some("yolov8s.yaml".into()), distill: "cwd".into(), logit: clap::ValueEnum::from_str(logit, false).unwrap(), ..Default::default() }
}

#[test]
fn a_batch_of_unlabeled_images_has_no_detection_loss_but_teaches() {
    let mut s = setup(&args("dense"), 64);
    // every image has a box in the batch's labels, but none counts as labeled
    let (items, grads) = run(&mut s, &batch(2, 64, 0), true);
    for det in ["box_loss", "cls_loss", "dfl_loss"] {
        assert_eq!(item(&items, det), 0.0, "{det}: {items:?}");
    }
    for term in ["d_cwd", "l_dense"] {
        let v = item(&items, term);
        assert!(v > 0.0 && v.is_finite(), "{term} = {v}: {items:?}");
    }
    let student_norm: f32 = grads
        .grads
        .iter()
        .filter(|(n, _)| n.starts_with("model."))
        .map(|(_, g)| g.clone().square().sum().into_scalar::<f32>())
        .sum::<f32>()
        .sqrt();
    assert!(student_norm > 0.0 && student_norm.is_finite(), "the distillation terms must reach the student: {student_norm}");
}

#[test]
fn labels_of_unlabeled_images_are_ignored_and_they_are_not_background() {
    let mut s = setup(&args("none"), 64);
    let det = |items: &[(String, f64)]| ["box_loss", "cls_loss", "dfl_loss"].map(|n| item(items, n));
    // image 1 is unlabeled: whatever labels it carries do not matter
    let with_labels = det(&run(&mut s, &batch(2, 64, 1), false).0);
    let mut stripped = batch(2, 64, 1);
    (stripped.batch_idx, stripped.cls, stripped.bboxes) = (vec![0], vec![0], vec![stripped.bboxes[0]]);
    let without = det(&run(&mut s, &stripped, false).0);
    assert_eq!(with_labels, without);
    // as a labeled image without boxes it would be background, and the loss would change
    let mut background = stripped.clone();
    background.labeled = 2;
    let as_background = det(&run(&mut s, &background, false).0);
    assert!((as_background[1] - without[1]).abs() > 1e-6, "cls {} vs {}", as_background[1], without[1]);
}

#[test]
fn pseudo_labels_are_the_teachers_confident_detections() {
    let Some(shared) = common::shared() else { return };
    let teacher = shared.join("fixtures/teacher_v8s_bccd.pt");
    let a = DistillArgs { teacher: Some(teacher.display().to_string()), pseudo_conf: Some(0.25), ..args("none") };
    let mut s = setup(&a, 320);
    // two BCCD images (640×480) letterboxed to 320×256
    let dev = yolodistill::default_device();
    let dir = shared.join("data/bccd/images/val");
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    let mut images = Vec::new();
    for f in &files[..2] {
        let img = yolodistill::pixels::load::load_rgb(f).unwrap();
        let (t, _) = yolodistill::infer::predict::preprocess(&img, 320, 32, &dev);
        images.push(t);
    }
    let x = burn::tensor::Tensor::cat(images, 0).autodiff();
    let t = s.distiller.pseudo_labels(&x, 1, POS, None).expect("pseudo-labels are on");
    assert!(!t.cls.is_empty(), "the BCCD teacher finds cells at 0.25");
    assert!(t.batch_idx.iter().all(|&i| i == 1), "only the unlabeled image gets pseudo-labels: {:?}", t.batch_idx);
    assert!(t.bboxes.iter().flatten().all(|v| (0.0..=1.0).contains(v)), "normalised boxes");
    // a higher threshold keeps fewer
    s.distiller.args.pseudo_conf = Some(0.8);
    let fewer = s.distiller.pseudo_labels(&x, 1, POS, None).unwrap();
    assert!(fewer.cls.len() < t.cls.len(), "{} at 0.8 vs {} at 0.25", fewer.cls.len(), t.cls.len());
}

/// The mean teacher labels with the model it is given (the run's EMA), after the burn-in only:
/// reliable labels are the detections a single threshold at --pseudo-conf keeps, and the
/// uncertain ones carry their scores, between the two thresholds.
#[test]
fn mean_teacher_splits_its_labels_into_reliable_and_uncertain_after_the_burn_in() {
    let Some(shared) = common::shared() else { return };
    let dev = yolodistill::default_device();
    // the BCCD teacher stands for a run's EMA; two BCCD images, the second one unlabeled
    let ema = model::load(shared.join("fixtures/teacher_v8s_bccd.pt").to_str().unwrap(), None, &dev).unwrap().model;
    let dir = shared.join("data/bccd/images/val");
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    let images: Vec<_> = files[..2]
        .iter()
        .map(|f| yolodistill::infer::predict::preprocess(&yolodistill::pixels::load::load_rgb(f).unwrap(), 320, 32, &dev).0)
        .collect();
    let x = burn::tensor::Tensor::cat(images, 0).autodiff();
    let a = DistillArgs { mean_teacher: true, burn_in: Some(2), ..Default::default() };
    let at = |epoch| StepPos { epoch, ..POS };
    // Efficient Teacher's thresholds by default
    let mut split = MeanTeacherHook(a.mean_teacher(10).unwrap());
    assert_eq!(split.0.thresholds, Thresholds { reliable: 0.6, uncertain: Some(0.1) });
    assert!(split.pseudo_labels(&x, 1, at(1), Some(&ema)).is_none(), "no labels during the burn-in");
    assert!(!split.wants_unlabeled(1) && split.wants_unlabeled(2));
    assert!(split.pseudo_labels(&x, 1, at(2), None).is_none(), "no EMA, no labels");
    let t = split.pseudo_labels(&x, 1, at(2), Some(&ema)).unwrap();
    let single_threshold = MeanTeacher::new(Thresholds { reliable: 0.6, uncertain: None }, 2);
    let single = MeanTeacherHook(single_threshold).pseudo_labels(&x, 1, at(2), Some(&ema)).unwrap();
    assert!(single.soft.is_empty() && !single.cls.is_empty(), "the teacher finds cells at 0.6");
    assert!(t.batch_idx.iter().all(|&i| i == 1), "only the unlabeled image is labelled");
    let reliable: Vec<usize> = (0..t.cls.len()).filter(|&k| t.soft[k].is_none()).collect();
    assert_eq!(reliable.iter().map(|&k| t.bboxes[k]).collect::<Vec<_>>(), single.bboxes, "reliable = the single threshold's labels");
    assert_eq!(reliable.iter().map(|&k| t.cls[k]).collect::<Vec<_>>(), single.cls);
    let scores: Vec<f32> = t.soft.iter().flatten().copied().collect();
    assert!(!scores.is_empty(), "the teacher has detections between 0.1 and 0.6");
    assert!(scores.iter().all(|&s| (0.1..0.6).contains(&s)), "{scores:?}");
    // a run with a teacher file: the mean teacher, not the teacher, labels
    let teacher = shared.join("fixtures/teacher_v8s_bccd.pt");
    let a = DistillArgs { teacher: Some(teacher.display().to_string()), mean_teacher: true, burn_in: Some(0), ..args("none") };
    let mut s = setup(&a, 320);
    assert!(s.distiller.pseudo_labels(&x, 1, POS, None).is_none(), "the teacher does not label in its place");
    assert_eq!(s.distiller.pseudo_labels(&x, 1, POS, Some(&ema)).unwrap().bboxes, t.bboxes);
}

#[test]
fn label_fraction_run_learns_from_the_rest_as_unlabeled_images() {
    let Some(shared) = common::shared() else { return };
    let dir = common::temp_dir("unlabeled-run");
    // 8 training images, 2 others for validation (a validation image is never an unlabeled one)
    let imgs = shared.join("data/bccd/images/train");
    let mut files: Vec<String> = std::fs::read_dir(&imgs).unwrap().map(|e| e.unwrap().path().display().to_string()).collect();
    files.sort();
    std::fs::write(dir.join("train.txt"), files[..8].join("\n")).unwrap();
    std::fs::write(dir.join("val.txt"), files[8..10].join("\n")).unwrap();
    let data = dir.join("data.yaml");
    std::fs::write(&data, format!("path: {}\ntrain: train.txt\nval: val.txt\nnames: [RBC, WBC, Platelets]\n", dir.display())).unwrap();
    let (data, project) = (data.to_str().unwrap().to_string(), dir.join("runs").to_str().unwrap().to_string());
    // a frozen teacher is a weights file (a YAML one needs --online): untrained yolov8s weights
    let teacher = dir.join("teacher.safetensors");
    let dev = yolodistill::default_device();
    yolodistill::model::save_safetensors(&yolodistill::model::load("yolov8s.yaml", Some(3), &dev).unwrap().model, &teacher, Default::default()).unwrap();
    let teacher = teacher.to_str().unwrap().to_string();
    let dense = |name: &str, ratio: &str| -> f64 {
        let flags = [
            "--model", "yolov8n.yaml", "--data", &data, "--project", &project, "--name", name, "--epochs", "1", "--imgsz", "96",
            "--batch", "2", "--nbs", "2", "--workers", "2", "--label-fraction", "0.5", "--unlabeled-ratio", ratio,
            "--teacher", &teacher, "--distill", "none", "--logit", "dense", "--pseudo-conf", "0.001",
        ];
        let s = yolodistill::run::train(yolodistill::run::RunArgs::from_flags(&flags).unwrap()).unwrap();
        let r = Results::load(&s.run_dir.join("results.csv")).unwrap();
        assert!(r.column("train/box_loss").unwrap()[0].is_finite());
        r.column("train/l_dense").expect("the dense term is logged")[0]
    };
    // 4 of 8 images labeled: 2 batches of 2, each with 3 unlabeled images
    let with = dense("u", "1.5");
    assert!(with > 0.0 && with.is_finite(), "{with}");
    // without the unlabeled images (ratio 0) the batches, and so the term, differ
    let without = dense("u0", "0");
    assert!((with - without).abs() > 1e-6 * with.abs(), "{with} vs {without}");
}

#[test]
fn every_method_and_calibration_work_on_batches_with_unlabeled_images() {
    let all = "mimic,cwd,mgd,at,gram,relation,sl2,pkd";
    for logit in ["mse", "kl", "mixed", "ld", "dense", "bckd", "crosskd"] {
        let a = DistillArgs { distill: all.into(), ..args(logit) };
        let mut s = setup(&a, 64);
        let (items, _) = run(&mut s, &batch(3, 64, 1), true);
        assert!(items.iter().all(|(_, v)| v.is_finite()), "{logit}: {items:?}");
        for m in all.split(',') {
            assert!(item(&items, &format!("d_{m}")) != 0.0, "{logit}: d_{m} is 0: {items:?}");
        }
    }
    // calibration measures each term's gradient on such a batch
    let a = DistillArgs { distill_calibrate: Some(0.5), ..args("dense") };
    let mut s = setup(&a, 64);
    let ad = yolodistill::default_device().autodiff();
    let taps = s.distiller.taps();
    let (det, terms) = yolodistill::train::gradient_norms(&mut s.student, &s.loss_cfg, &batch(3, 64, 1), &ad, &taps, &mut s.distiller, None, POS);
    assert!(det > 0.0 && det.is_finite(), "{det}");
    let names: Vec<&str> = terms.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["d_cwd", "l_dense"]);
    assert!(terms.iter().all(|(_, g)| *g > 0.0 && g.is_finite()), "{terms:?}");
}
