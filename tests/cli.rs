//! The command line end to end: info, predict, distill-plan, demo (bad inputs: hostile_inputs.rs).

mod common;

use std::process::Command;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_yolodistill"))
}

#[test]
fn info_json_reports_params_gflops_and_layers() {
    let out = bin().args(["info", "--model", "yolov8n.yaml", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["params"], 3_157_200);
    assert!((v["gflops"].as_f64().unwrap() - 8.9).abs() < 0.089);
    assert_eq!(v["layers"].as_array().unwrap().len(), 23);
    let out = bin().args(["info", "--model", "yolov8n.yaml", "--imgsz", "320", "--nc", "3"]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Detect") && text.contains("summary"), "{text}");
}

#[test]
fn predict_on_bccd_prints_boxes_and_writes_an_annotated_image() {
    let Some(shared) = common::shared() else { return };
    let img = shared.join("data/bccd/images/val");
    let first = std::fs::read_dir(&img).unwrap().map(|e| e.unwrap().path()).min().unwrap();
    let dir = common::temp_dir("predict");
    let out = bin()
        .args(["predict", "--model"])
        .arg(shared.join("fixtures/teacher_v8s_bccd.pt"))
        .arg("--source")
        .arg(&first)
        .args(["--imgsz", "320", "--json", "--save-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let boxes = v["boxes"].as_array().unwrap();
    assert!(boxes.len() >= 3, "a trained BCCD teacher finds cells: {v}");
    let names: Vec<&str> = boxes.iter().map(|b| b["name"].as_str().unwrap()).collect();
    assert!(names.iter().any(|n| *n == "RBC"), "{names:?}");
    for b in boxes {
        let c = b["conf"].as_f64().unwrap();
        assert!(c >= 0.25 && c <= 1.0);
        let xy: Vec<f64> = b["xyxy"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        assert!(xy[0] < xy[2] && xy[1] < xy[3] && xy[2] <= 640.0 && xy[3] <= 480.0, "{xy:?}");
    }
    let saved = std::fs::read_dir(&dir).unwrap().count();
    assert_eq!(saved, 1);
    let annotated = image::open(dir.join(first.file_name().unwrap()).with_extension("jpg")).unwrap();
    assert_eq!((annotated.width(), annotated.height()), (640, 480));
}

/// A segmentation model's `predict`: each detection's outline as `polygon` in image pixels,
/// within its box, and the annotated image written (the masks' pixels: src/infer/draw.rs).
#[test]
fn predict_with_a_segmentation_model_gives_polygons() {
    let Some(shared) = common::shared() else { return };
    let mut images: Vec<_> = std::fs::read_dir(shared.join("data/garbage/images/val")).unwrap().map(|e| e.unwrap().path()).collect();
    images.sort();
    let dir = common::temp_dir("predict-seg");
    let model = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/seg/yolov8n-seg_garbage.pt");
    let out = bin().args(["predict", "--model"]).arg(&model).arg("--source").arg(&images[2])
        .args(["--imgsz", "320", "--conf", "0.1", "--json", "--save-dir"]).arg(&dir).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let boxes = v["boxes"].as_array().unwrap();
    assert_eq!(boxes.len(), 6, "the six of tests/data/seg/predict_garbage_ref.json: {v}");
    for b in boxes {
        let xy: Vec<f64> = b["xyxy"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        let poly = b["polygon"].as_array().unwrap();
        assert!(poly.len() >= 3, "{b}");
        for p in poly {
            let (x, y) = (p[0].as_f64().unwrap(), p[1].as_f64().unwrap());
            assert!(x >= xy[0] - 2.0 && x <= xy[2] + 2.0 && y >= xy[1] - 2.0 && y <= xy[3] + 2.0, "{p} outside {xy:?}");
        }
    }
    let annotated = image::open(dir.join(images[2].file_name().unwrap()).with_extension("jpg")).unwrap();
    assert_eq!((annotated.width(), annotated.height()), (640, 640));
}

#[test]
fn predict_in_half_precision_finds_the_same_cells() {
    // `predict --half`: the same boxes as f32 up to half-precision rounding (val's mAP check is
    // in val_parity.rs); a type other than f16/bf16 is refused with the accepted ones.
    let Some(shared) = common::shared() else { return };
    let first = std::fs::read_dir(shared.join("data/bccd/images/val")).unwrap().map(|e| e.unwrap().path()).min().unwrap();
    let boxes = |half: &[&str]| -> Vec<(String, Vec<f64>)> {
        let out = bin().args(["predict", "--model"]).arg(shared.join("fixtures/teacher_v8s_bccd.pt")).arg("--source").arg(&first).args(["--json"]).args(half).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let xyxy = |b: &serde_json::Value| b["xyxy"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
        v["boxes"].as_array().unwrap().iter().map(|b| (b["name"].as_str().unwrap().to_string(), xyxy(b))).collect()
    };
    let full = boxes(&[]);
    for half in [&["--half"][..], &["--half", "bf16"][..]] {
        let got = boxes(half);
        assert_eq!(got.len(), full.len(), "{half:?}: {got:?} vs {full:?}");
        // matched as sets: near-equal confidences may swap places
        for (n, a) in &got {
            let off = |b: &Vec<f64>| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
            let nearest = full.iter().filter(|(m, _)| m == n).map(|(_, b)| off(b)).fold(f64::INFINITY, f64::min);
            assert!(nearest <= 2.0, "{half:?}: {n} {a:?} is {nearest} px from every f32 box");
        }
    }
    let out = bin().args(["benchmark", "--half", "f32"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("f16") && err.contains("bf16"), "{err}");
}

#[test]
fn distill_plan_reports_pairs_adapters_and_cost() {
    let out = bin()
        .args(["distill-plan", "--model", "yolo11n.yaml", "--teacher", "yolov8s.yaml", "--imgsz", "128", "--distill", "cwd,mgd"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    for needle in ["level 0:  16 [64, 16, 16] →  15 [128, 16, 16]", "adapter 1×1 256→512", "distiller parameters", "GFLOPs per image"] {
        assert!(text.contains(needle), "missing '{needle}' in:\n{text}");
    }
}

#[test]
fn demo_runs_teacher_and_student_pairs_and_prints_the_table() {
    // The README's main command at toy size (the real one takes minutes).
    let dir = common::temp_dir("demo");
    let out = bin()
        .args(["demo", "--dir", dir.to_str().unwrap(), "--imgsz", "64", "--train-images", "8", "--val-images", "4"])
        .args(["--teacher-epochs", "1", "--student-epochs", "1", "--seeds", "0,1"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let table = String::from_utf8_lossy(&out.stdout);
    for row in ["teacher (all 8 labels)", "students (2 labels; the distilled one also learns from 6 unlabeled images)", "| 0 |", "| 1 |", "mean gain over 2 seeds"] {
        assert!(table.contains(row), "{row} missing from:\n{table}");
    }
    assert!(dir.join("shapes/data.yaml").exists() && dir.join("demo_results.md").exists());
    for run in ["teacher", "students/plain-s0", "students/distilled-s0", "students/plain-s1", "students/distilled-s1"] {
        assert!(dir.join("runs").join(run).join("weights/best.safetensors").exists(), "{run}");
    }
    // the distilled runs really had a teacher, and the plain ones none
    let header = |run: &str| std::fs::read_to_string(dir.join("runs/students").join(run).join("results.csv")).unwrap().lines().next().unwrap().to_string();
    assert!(header("distilled-s1").contains("train/l_dense"), "{}", header("distilled-s1"));
    assert!(!header("plain-s1").contains("train/l_"), "{}", header("plain-s1"));

    // the demo reruns: the same settings reuse every run; others are refused before any training
    let demo = ["demo", "--dir", dir.to_str().unwrap(), "--imgsz", "64", "--train-images", "8", "--val-images", "4", "--teacher-epochs", "1", "--seeds", "0,1"];
    let out = bin().args(demo).args(["--student-epochs", "1"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.matches("reusing the finished run").count() == 5, "{err}");
    let out = bin().args(demo).args(["--student-epochs", "2"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.code() == Some(1) && err.contains("--student-epochs: 1 → 2"), "{err}");

    // compare on the same data: one seed, paired plain/distilled runs, a CI line
    let teacher = dir.join("runs/teacher/weights/best.safetensors");
    let project = dir.join("cmp");
    let data = dir.join("shapes/data.yaml");
    let args = [
        "compare", "--seeds", "0", "--model", "yolov8n.yaml", "--data", data.to_str().unwrap(),
        "--teacher", teacher.to_str().unwrap(), "--imgsz", "64", "--epochs", "1", "--batch", "4", "--project",
        project.to_str().unwrap(), "--name", "ab",
    ];
    let out = bin().args(args).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("mean gain over 1 seeds") && text.contains("| 0 |"), "{text}");
    // the gain at the last epoch too (no epoch chosen on the validation set): the runs' last rows
    assert!(text.contains("mAP50-95 at the last epoch"), "{text}");
    let csv = std::fs::read_to_string(project.join("ab/compare.csv")).unwrap();
    let row: Vec<f64> = csv.lines().nth(1).unwrap().split(',').map(|v| v.parse().unwrap()).collect();
    let last = |arm: &str| *yolodistill::report::Results::load(&project.join("ab").join(arm).join("results.csv")).unwrap().column("metrics/mAP50-95(B)").unwrap().last().unwrap();
    assert_eq!((row.len(), row[5], row[6]), (7, last("plain-s0"), last("distilled-s0")), "{csv}");
    assert!(project.join("ab/plain-s0/weights/best.safetensors").exists());
    assert!(project.join("ab/distilled-s0/weights/best.safetensors").exists());
    // a second call reuses the finished runs
    let out = bin().args(args).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("reusing the finished run"));
    // with other settings it refuses, naming them (it used to report the old runs as the new comparison)
    let out = bin().args(args).args(["--distill", "mgd"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.code() == Some(1) && err.contains("distilled-s0 holds a run with other settings") && err.contains("--distill: \"cwd\" → \"mgd\""), "{err}");
    // an interrupted comparison continues its interrupted run where it stopped
    let two = args.map(|a| if a == "ab" { "ab2" } else { a });
    let mut two: Vec<&str> = two.to_vec();
    let at = two.iter().position(|a| *a == "--epochs").unwrap() + 1;
    two[at] = "2";
    let out = bin().args(&two).env("YOLODISTILL_TEST_CRASH", "after:last.safetensors@1").output().unwrap();
    assert_eq!(out.status.code(), Some(137), "{}", String::from_utf8_lossy(&out.stderr));
    let out = bin().args(&two).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.contains("continuing the interrupted run"), "{err}");
    let rows = std::fs::read_to_string(project.join("ab2/plain-s0/results.csv")).unwrap().lines().count();
    assert_eq!(rows, 3, "header and two epochs");
    // the gain at each label budget: a comparison per fraction, the table and the chart
    let mut budget = args.map(|a| if a == "ab" { "budget" } else { a });
    budget[2] = "0,1"; // --seeds
    let out = bin().args(budget).args(["--label-fractions", "1,0.5", "--side-by-side", "--scale-epochs"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    let table = std::fs::read_to_string(project.join("budget/label_budget.md")).unwrap();
    // --scale-epochs: half the labels, twice the epochs (the same optimizer steps)
    let rows: Vec<&str> = table.lines().filter(|l| l.starts_with("| 0.5 | 2 | 2 |") || l.starts_with("| 1 | 1 | 2 |")).collect();
    assert_eq!(rows.len(), 2, "{table}");
    assert!(table.find("| 0.5 |") < table.find("| 1 |"), "fractions in increasing order: {table}");
    for f in ["0.5", "1"] {
        assert!(project.join(format!("budget/fraction-{f}/distilled-s1/weights/best.safetensors")).exists(), "{f}");
    }
    // half the labels: the distilled arm learns from the other half as unlabeled images, the plain one not
    let header = |run: &str| std::fs::read_to_string(project.join("budget").join(run).join("results.csv")).unwrap().lines().next().unwrap().to_string();
    assert!(header("fraction-0.5/distilled-s0").contains("train/d_cwd"));
    let epochs = std::fs::read_to_string(project.join("budget/fraction-0.5/plain-s0/results.csv")).unwrap().lines().count() - 1;
    assert_eq!(epochs, 2, "--scale-epochs trains half the labels twice as long");
    let csv = std::fs::read_to_string(project.join("budget/label_budget.csv")).unwrap();
    assert_eq!(csv.lines().count(), 3, "{csv}");
    common::assert_pictures(&project.join("budget"), &["label_budget.png"]);
    let out = bin().args(budget).args(["--label-fractions", "0.5", "--label-fraction", "0.5"]).output().unwrap();
    assert!(out.status.code() == Some(1) && String::from_utf8_lossy(&out.stderr).contains("not both"));
    // the chart of the seeds' runs and gains next to compare.md, for demo and compare
    common::assert_pictures(&dir.join("runs/students"), &["compare.png"]);
    common::assert_pictures(&project.join("ab"), &["compare.png", "plain-s0/results.png", "distilled-s0/results.png"]);
}

/// `val` draws Ultralytics' validation pictures into runs/val (here --project/--name).
#[test]
fn val_writes_curves_confusion_matrices_and_batches() {
    let Some(shared) = common::shared() else { return };
    let dir = common::temp_dir("val-plots");
    let data = common::bccd_subset(&shared, &dir, 20);
    let out = bin()
        .args(["val", "--model", shared.join("fixtures/teacher_v8s_bccd.pt").to_str().unwrap(), "--data", data.to_str().unwrap()])
        .args(["--imgsz", "160", "--batch", "8", "--project", dir.to_str().unwrap(), "--name", "val"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let files = [
        "BoxPR_curve.png", "BoxF1_curve.png", "BoxP_curve.png", "BoxR_curve.png", "confusion_matrix.png", "confusion_matrix_normalized.png",
        "val_batch0_labels.jpg", "val_batch0_pred.jpg", "val_batch1_labels.jpg", "val_batch1_pred.jpg", "val_batch2_labels.jpg", "val_batch2_pred.jpg",
    ];
    common::assert_pictures(&dir.join("val"), &files);
    // --plots false draws nothing
    let out = bin()
        .args(["val", "--model", shared.join("fixtures/teacher_v8s_bccd.pt").to_str().unwrap(), "--data", data.to_str().unwrap()])
        .args(["--imgsz", "160", "--plots", "false", "--project", dir.to_str().unwrap(), "--name", "quiet"])
        .output()
        .unwrap();
    assert!(out.status.success() && !dir.join("quiet").exists());
}

/// An image size that is not a multiple of the stride is rounded up with a warning, as
/// Ultralytics does (it used to fail inside the graph).
#[test]
fn image_sizes_round_up_to_the_stride() {
    let Some(shared) = common::shared() else { return };
    let dir = common::temp_dir("imgsz65");
    let data = common::bccd_subset(&shared, &dir, 2);
    let mut images: Vec<_> = std::fs::read_dir(shared.join("data/bccd/images/val")).unwrap().map(|e| e.unwrap().path()).collect();
    images.sort();
    let image = &images[0];
    let out = bin().args(["predict", "--model", "yolov8n.yaml", "--imgsz", "65", "--source"]).arg(image).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.contains("using 96"), "{err}");
    let out = bin()
        .args(["train", "--model", "yolov8n.yaml", "--imgsz", "65", "--epochs", "1", "--batch", "2", "--max-batches", "1", "--data"])
        .arg(&data)
        .arg("--project")
        .arg(dir.join("runs"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.contains("using 96"), "{err}");
}

/// The demo checks its students' options before it trains the teacher.
#[test]
fn demo_refuses_bad_student_options_before_training() {
    let dir = common::temp_dir("demo-bad");
    for (flag, value, expected) in [("--logit", "kd", "--logit"), ("--distill", "cwdd", "cwdd"), ("--label-fraction", "2", "--label-fraction")] {
        let out = bin().args(["demo", "--dir", dir.to_str().unwrap(), "--imgsz", "64", "--train-images", "8", "--val-images", "4", flag, value]).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.code() == Some(1) && err.contains(expected), "{flag} {value}: {err}");
        assert!(!dir.join("runs/teacher").exists(), "{flag} {value}: the teacher trained first");
    }
}

#[test]
fn a_distillation_whose_terms_stay_zero_says_so() {
    // The all-zero check reads Σ|term| once, at an epoch's last batch: `cwd:0` warns, `cwd` not.
    let Some(shared) = common::shared() else { return };
    let dir = common::temp_dir("zero-terms");
    let data = common::bccd_subset(&shared, &dir, 16);
    for (methods, warns) in [("cwd:0", true), ("cwd", false)] {
        let out = bin()
            .args(["train", "--model", "yolov8n.yaml", "--data"])
            .arg(&data)
            .args(["--imgsz", "64", "--batch", "8", "--epochs", "1", "--workers", "2", "--quiet", "--exist-ok", "--project"])
            .arg(dir.join("runs"))
            .arg("--teacher")
            .arg(shared.join("fixtures/teacher_v8s_bccd.pt"))
            .args(["--distill", methods])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{err}");
        assert_eq!(err.contains("every distillation term was zero for a whole epoch"), warns, "--distill {methods}:\n{err}");
    }
}

/// Ultralytics' command form: `detect train key=value …` writes the same args.yaml as the flag
/// form; an unknown key is refused naming the closest one; `predict` takes it too.
#[test]
fn ultralytics_key_value_commands() {
    let Some(shared) = common::shared() else { return };
    let dir = common::temp_dir("key-value");
    let data = common::bccd_subset(&shared, &dir, 2);
    let d = data.to_str().unwrap();
    let (p1, p2) = (dir.join("a"), dir.join("b"));
    let kv = format!("detect train model=yolov8n.yaml data={d} imgsz=64 epochs=1 batch=2 lr0=0.02 cos_lr=True val=False workers=1 project={} name=run", p1.display());
    let out = bin().args(kv.split_whitespace()).args(["--max-batches", "1"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = bin()
        .args(["train", "--model", "yolov8n.yaml", "--data", d, "--imgsz", "64", "--epochs", "1", "--batch", "2", "--lr0", "0.02", "--cos-lr"])
        .args(["--val", "false", "--workers", "1", "--name", "run", "--max-batches", "1", "--project"])
        .arg(&p2)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let args = |p: &std::path::Path| {
        let text = std::fs::read_to_string(p.join("run/args.yaml")).unwrap();
        text.lines().filter(|l| !l.starts_with("project:")).collect::<Vec<_>>().join("\n")
    };
    assert_eq!(args(&p1), args(&p2));
    let out = bin().args(["train", "model=yolov8n.yaml", "lr=0.01"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.code() == Some(1) && err.contains("'lr' is not a valid key of train; the closest is 'lr0'"), "{err}");
    let out = bin().args(["train", "model=yolov8n.yaml", "data=x.yaml", "lr0=-1"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.code() == Some(1) && err.contains("--lr0") && err.contains("0 or more"), "the flag's own check: {err}");
    let image = std::fs::read_dir(shared.join("data/bccd/images/val")).unwrap().next().unwrap().unwrap().path();
    let out = bin().args(["predict", "model=yolov8n.yaml", "imgsz=64", "conf=0.5", "--json", &format!("source={}", image.display())]).output().unwrap();
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("\"boxes\""), "{}", String::from_utf8_lossy(&out.stderr));
}
