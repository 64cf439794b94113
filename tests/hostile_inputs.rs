//! Hostile but realistic inputs: each ends with exit code 1 and a message that names the
//! option, file or line and what is accepted; never a panic, and never a run folder or a
//! checkpoint left behind by an input that could have been checked first.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_yolodistill"))
}

/// Exit code 1, every needle in the message, no panic.
fn refused(out: &Output, what: &str, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{what}: {err}");
    assert!(!err.contains("panicked"), "{what} panicked: {err}");
    for n in needles {
        assert!(err.contains(n), "{what}: no '{n}' in: {err}");
    }
}

const YOLOV8: &str = include_str!("../src/model/cfg/yolov8.yaml");

/// Model YAMLs that used to panic inside the graph (or build something else) are refused when
/// they are parsed, naming the layer and the accepted values.
#[test]
fn damaged_model_yamls_are_refused_when_parsed() {
    let dir = common::temp_dir("hostile-yaml");
    let cases: &[(&str, &str, &[&str])] = &[
        ("[-1, 1, Conv, [64, 3, 2]]", "[-1, 1, Conv, [64, 0, 2]]", &["layer 0 (Conv)", "kernel size is 0", "1 to 63"]),
        ("[-1, 1, Conv, [64, 3, 2]]", "[-1, 1, Conv, [64, 3, 0]]", &["layer 0 (Conv)", "stride is 0", "1 to 32"]),
        ("[-1, 1, Conv, [64, 3, 2]]", "[-1, 1, Conv, [0, 3, 2]]", &["layer 0 (Conv)", "output channels", "above 0"]),
        ("[-1, 1, Conv, [64, 3, 2]]", "[[], 1, Conv, [64, 3, 2]]", &["layer 0", "bad `from`", "a layer index"]),
        ("[-1, 3, C2f, [128, true]]", "[-1, 0, C2f, [128, true]]", &["layer 2", "repeats are 0", "1 to 64"]),
        ("[-1, 3, C2f, [128, true]]", "[-1, -2, C2f, [128, true]]", &["layer 2", "repeats are -2"]),
        ("[-1, 1, SPPF, [1024, 5]]", "[-1, 1, SPPF, [1024, 0]]", &["layer 9 (SPPF)", "kernel size is 0"]),
        ("[-1, 1, SPPF, [1024, 5]]", "[-1, 1, SPPF, [1024, 4]]", &["layer 9 (SPPF)", "must be odd"]),
        ("[None, 2, \"nearest\"]]\n  - [[-1, 6]", "[None, 0, \"nearest\"]]\n  - [[-1, 6]", &["layer 10 (Upsample)", "scale factor is 0", "1 to 32"]),
        ("[[-1, 6], 1, Concat, [1]]", "[[-1, 6], 1, Concat, [3]]", &["layer 11 (Concat)", "dimension 3", "1 (channels)"]),
        ("[[-1, 6], 1, Concat, [1]]", "[[-1, 4], 1, Concat, [1]]", &["layer 11 (Concat)", "different sizes"]),
        ("n: [0.33, 0.25, 1024]", "n: [0.33, 0, 1024]", &["width multiple is 0", "above 0"]),
        ("n: [0.33, 0.25, 1024]", "n: [0.33, -0.25, 1024]", &["width multiple is -0.25"]),
        ("n: [0.33, 0.25, 1024]", "n: [0, 0.25, 1024]", &["depth multiple is 0"]),
        ("nc: 80", "nc: 0", &["`nc` is 0", "1 to 65536"]),
        ("nc: 80", "nc: -3", &["`nc` is -3"]),
        ("nc: 80", "nc: 2.5", &["`nc` is 2.5"]),
    ];
    for (i, (from, to, needles)) in cases.iter().enumerate() {
        assert!(YOLOV8.contains(from), "{from}");
        let path = dir.join(format!("yolov8n-bad{i}.yaml"));
        std::fs::write(&path, YOLOV8.replacen(from, to, 1)).unwrap();
        let out = bin().args(["info", "--model"]).arg(&path).output().unwrap();
        let mut all = needles.to_vec();
        let name = path.file_name().unwrap().to_str().unwrap().to_string();
        all.push(&name);
        refused(&out, to, &all);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A zip archive with one `data.pkl` entry holding `pickle`.
fn pt_with_pickle(path: &Path, pickle: &[u8]) {
    let mut w = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    w.start_file("m/data.pkl", zip::write::SimpleFileOptions::default()).unwrap();
    w.write_all(pickle).unwrap();
    w.finish().unwrap();
}

/// Damaged checkpoints, and checkpoints whose class names do not fit their head.
#[test]
fn damaged_checkpoints_are_refused() {
    let dir = common::temp_dir("hostile-ckpt");
    let truncated = dir.join("truncated.pt");
    std::fs::write(&truncated, b"PK\x03\x04 a torn download").unwrap();
    let no_newline = dir.join("global.pt");
    pt_with_pickle(&no_newline, b"\x80\x02ctorch._utils\n_rebuild_tensor_v2");
    let pop_below_mark = dir.join("mark.pt");
    pt_with_pickle(&pop_below_mark, b"\x80\x02NN(00t.");
    let negative = dir.join("long4.pt");
    pt_with_pickle(&negative, &[&[0x80, 2, 0x8b][..], &(-7i32).to_le_bytes(), b"."].concat());

    // our own format with fewer names than classes, and with a name twice
    let dev = yolodistill::default_device();
    let m = yolodistill::model::load("yolov8n.yaml", Some(3), &dev).unwrap().model;
    let good = dir.join("good.safetensors");
    yolodistill::model::save_safetensors(&m, &good, Default::default()).unwrap();
    let with_names = |file: &str, names: &[&str]| -> PathBuf {
        let mut f = yolodistill::weights::st::load(&good).unwrap();
        f.names = names.iter().map(|s| s.to_string()).collect();
        let p = dir.join(file);
        yolodistill::weights::st::save(&p, &f).unwrap();
        p
    };
    let few = with_names("few.safetensors", &["RBC", "WBC"]);
    let twice = with_names("twice.safetensors", &["RBC", "WBC", "RBC"]);

    let cases: Vec<(PathBuf, Vec<&str>)> = vec![
        (truncated, vec!["truncated.pt", "not a PyTorch checkpoint"]),
        (no_newline, vec!["global.pt", "corrupt pickle", "ends inside a text argument"]),
        (pop_below_mark, vec!["mark.pt", "corrupt pickle", "below its MARK"]),
        (negative, vec!["long4.pt", "corrupt pickle", "negative length -7"]),
        (few, vec!["few.safetensors", "2 class names for 3 classes"]),
        (twice, vec!["twice.safetensors", "class name 'RBC' is given twice (classes 0 and 2)"]),
    ];
    for (path, needles) in cases {
        let out = bin().args(["info", "--model"]).arg(&path).output().unwrap();
        refused(&out, &path.display().to_string(), &needles);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A damaged teacher, a dataset that names a class twice, and a run folder another training
/// holds are all refused before anything is written.
#[test]
fn bad_training_inputs_leave_no_run_folder() {
    let Some(shared) = common::shared() else { return };
    let dir = common::temp_dir("hostile-train");
    let data = common::bccd_subset(&shared, &dir, 2);
    let teacher = dir.join("teacher.pt");
    std::fs::write(&teacher, &std::fs::read(shared.join("fixtures/teacher_v8s_bccd.pt")).unwrap()[..4096]).unwrap();
    let dup = dir.join("dup.yaml");
    std::fs::write(&dup, std::fs::read_to_string(&data).unwrap().replace("[RBC, WBC, Platelets]", "[RBC, WBC, RBC]")).unwrap();
    let train = |name: &str, extra: &[&str], data: &Path| -> Output {
        bin().arg("train").args(extra).arg("--data").arg(data).arg("--project").arg(&dir).args(["--name", name]).output().unwrap()
    };
    let out = train("t1", &["--model", "yolov8n.yaml", "--teacher", teacher.to_str().unwrap()], &data);
    refused(&out, "damaged teacher", &["--teacher", "teacher.pt", "not a PyTorch checkpoint"]);
    assert!(!dir.join("t1").exists(), "a damaged teacher left a run folder");
    let out = train("t2", &["--model", "yolov8n.yaml"], &dup);
    refused(&out, "duplicate names", &["dup.yaml", "class name 'RBC' is given twice"]);
    assert!(!dir.join("t2").exists());

    // a run folder whose lock another process holds
    let held = dir.join("t3");
    std::fs::create_dir_all(&held).unwrap();
    let lock = std::fs::File::create(held.join(".lock")).unwrap();
    lock.try_lock().unwrap();
    let out = train("t3", &["--model", "yolov8n.yaml", "--exist-ok", "--epochs", "1"], &data);
    refused(&out, "locked run folder", &["another training is writing to", "t3"]);
    assert!(!held.join("weights/last.safetensors").exists());
    drop(lock);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_inputs_exit_non_zero_with_a_message() {
    let dir = common::temp_dir("cli-bad");
    let bad_img = dir.join("broken.jpg");
    std::fs::write(&bad_img, b"\xff\xd8\xff\xe0 not really a jpeg").unwrap();
    let cases: Vec<(Vec<String>, &str)> = vec![
        (vec!["info".into(), "--model".into(), "missing.pt".into()], "missing.pt"),
        (vec!["info".into(), "--model".into(), "model.onnx".into()], "unsupported model file type"),
        (
            vec!["predict".into(), "--model".into(), "yolov8n.yaml".into(), "--source".into(), bad_img.display().to_string()],
            "broken.jpg",
        ),
        (
            vec!["predict".into(), "--model".into(), "yolov8n.yaml".into(), "--source".into(), "/no/such/dir".into()],
            "/no/such/dir",
        ),
    ];
    for (args, needle) in cases {
        let out = bin().args(&args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} should fail");
        assert!(err.contains(needle), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    }
}

/// Values outside an option's range are refused when parsed (exit 1, the flag and the range
/// named), before any file is read: each of these used to panic mid-run or act silently.
#[test]
fn out_of_range_options_are_refused_before_anything_runs() {
    let train = ["train", "--model", "yolov8n.yaml", "--data", "missing.yaml"];
    let cases: &[(&[&str], &str)] = &[
        (&["--batch", "0"], "at least 1"),
        (&["--epochs", "0"], "at least 1"),
        (&["--mgd-lambda", "5"], "[0, 1]"),
        (&["--soft-alpha", "1.5"], "[0, 1]"),
        (&["--temperature", "0"], "above 0"),
        (&["--lr0=-1"], "0 or more"),
        (&["--lr0", "NaN"], "0 or more"),
        (&["--fraction", "0"], "(0, 1]"),
        (&["--label-fraction", "0"], "(0, 1]"),
        (&["--pseudo-conf", "1"], "(0, 1)"),
        (&["--distill-schedule", "cosine"], "possible values: constant, cosine-epoch, linear"),
        (&["--logit", "kd"], "possible values: none, mse, kl, mixed, ld, dense"),
        (&["--imgsz", "0"], "32..=8192"),
    ];
    for (extra, expected) in cases {
        let out = bin().args(train).args(*extra).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{extra:?}: {err}");
        let flag = extra[0].split('=').next().unwrap();
        assert!(err.contains(flag) && err.contains(expected), "{extra:?}: {err}");
    }
    for (cmd, input) in [("predict", "--source"), ("val", "--data")] {
        let out = bin().args([cmd, "--model", "m.pt", input, "x", "--conf", "2"]).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.code() == Some(1) && err.contains("--conf") && err.contains("[0, 1]"), "{cmd}: {err}");
    }
}

/// A missing teacher, model or unlabeled folder is named before the run folder is made.
#[test]
fn missing_inputs_are_named_before_the_run_folder_exists() {
    let Some(shared) = common::shared() else { return };
    let dir = common::temp_dir("missing-inputs");
    let data = common::bccd_subset(&shared, &dir, 2);
    let cases: &[(&[&str], &str)] = &[
        (&["--model", "yolov8n.yaml", "--teacher", "nowhere/teacher.pt"], "--teacher nowhere/teacher.pt"),
        (&["--model", "nowhere/student.pt"], "--model nowhere/student.pt"),
        (&["--model", "yolov8n.yaml", "--teacher", "yolov8s.yaml", "--online", "--unlabeled", "nowhere/"], "--unlabeled nowhere/"),
    ];
    for (i, (extra, expected)) in cases.iter().enumerate() {
        let name = format!("run{i}");
        let out = bin().arg("train").args(*extra).arg("--data").arg(&data).arg("--project").arg(&dir).args(["--name", &name]).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.code() == Some(1) && err.contains(expected), "{extra:?}: {err}");
        assert!(!dir.join(&name).exists(), "{extra:?} left a run folder");
    }
}


// ------------------------------------------------------------------ reliability, second round

/// A 64×64 picture with a few shapes, written as `path` (its suffix picks the format).
fn picture(path: &Path) {
    let img = image::RgbImage::from_fn(64, 64, |x, y| image::Rgb([(x * 4) as u8, (y * 4) as u8, if (x / 8 + y / 8) % 2 == 0 { 200 } else { 40 }]));
    img.save(path).unwrap();
}

/// Our model file of an untrained yolov8n with 3 classes.
fn model_file(path: &Path) {
    let dev = yolodistill::default_device();
    let m = yolodistill::model::load("yolov8n.yaml", Some(3), &dev).unwrap().model;
    yolodistill::model::save_safetensors(&m, path, Default::default()).unwrap();
}

/// No command writes an output over one of its inputs: each refuses, naming both, and the
/// input keeps its bytes.
#[test]
fn no_output_replaces_an_input() {
    let dir = common::temp_dir("overwrite");
    let imgs = dir.join("imgs");
    std::fs::create_dir_all(&imgs).unwrap();
    for name in ["a.jpg", "b.png"] {
        picture(&imgs.join(name));
    }
    let jpg = std::fs::read(imgs.join("a.jpg")).unwrap();
    let out = bin().args(["predict", "--model", "yolov8n.yaml", "--imgsz", "64", "--source"]).arg(&imgs).arg("--save-dir").arg(&imgs).output().unwrap();
    refused(&out, "predict --save-dir = --source", &["refusing to write", "a.jpg", "--source image", "--save-dir"]);
    assert_eq!(std::fs::read(imgs.join("a.jpg")).unwrap(), jpg, "the source image was overwritten");
    assert!(!imgs.join("b.jpg").exists(), "an annotated image was written before the refusal");
    // into another folder it works
    let out = bin().args(["predict", "--model", "yolov8n.yaml", "--imgsz", "64", "--source"]).arg(&imgs).arg("--save-dir").arg(dir.join("out")).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let model = dir.join("mine.safetensors");
    model_file(&model);
    let before = std::fs::read(&model).unwrap();
    // the same file by another spelling
    let other = dir.join("imgs/../mine.safetensors");
    let out = bin().args(["export", "--imgsz", "64", "--model"]).arg(&model).arg("--output").arg(&other).output().unwrap();
    refused(&out, "export --output = --model", &["refusing to write", "--model", "mine.safetensors", "--output"]);
    let out = bin().args(["export", "--format", "safetensors", "--imgsz", "64", "--model"]).arg(&model).arg("--output").arg(&model).output().unwrap();
    refused(&out, "export --format safetensors --output = --model", &["--model", "--output"]);
    assert_eq!(std::fs::read(&model).unwrap(), before, "the checkpoint was replaced");

    // a demo folder with files the demo did not write
    let mine = dir.join("mine");
    std::fs::create_dir_all(&mine).unwrap();
    let foreign = mine.join("notes.txt");
    std::fs::write(&foreign, "mine").unwrap();
    let out = bin().args(["demo", "--imgsz", "64", "--train-images", "8", "--val-images", "4", "--dir"]).arg(&mine).output().unwrap();
    refused(&out, "demo --dir <a folder of other files>", &["notes.txt", "new or empty folder"]);
    assert!(!mine.join("shapes").exists() && std::fs::read_to_string(&foreign).unwrap() == "mine");
}

/// `val --save-json` and a reused run folder refuse to replace the run's inputs.
#[test]
fn val_and_train_outputs_never_replace_their_inputs() {
    let Some(shared) = common::shared() else { return };
    let dir = common::temp_dir("overwrite-run");
    let data = common::bccd_subset(&shared, &dir, 2);
    let yaml = std::fs::read(&data).unwrap();
    let out = bin().args(["val", "--model", "yolov8n.yaml", "--imgsz", "64", "--plots", "false", "--data"]).arg(&data).arg("--save-json").arg(&data).output().unwrap();
    refused(&out, "val --save-json = --data", &["refusing to write", "--data", "data.yaml", "--save-json"]);
    assert_eq!(std::fs::read(&data).unwrap(), yaml);

    // fine-tuning the best weights of a run, into that same run folder
    let run = dir.join("runs/ft");
    std::fs::create_dir_all(run.join("weights")).unwrap();
    let best = run.join("weights/best.safetensors");
    model_file(&best);
    let before = std::fs::read(&best).unwrap();
    let out = bin()
        .args(["train", "--imgsz", "64", "--epochs", "1", "--batch", "2", "--exist-ok", "--name", "ft", "--model"])
        .arg(&best)
        .arg("--data")
        .arg(&data)
        .arg("--project")
        .arg(dir.join("runs"))
        .output()
        .unwrap();
    refused(&out, "train --model inside the reused run folder", &["refusing to write into the run folder", "--model", "best.safetensors"]);
    assert_eq!(std::fs::read(&best).unwrap(), before, "the run replaced its own input");
    assert!(!run.join("args.yaml").exists());
}

/// Options that only the teacher acts on, or that leave it nothing to do, are named; a YAML
/// teacher without --online (random weights) and `--shards` above `--batch` are refused.
#[test]
fn options_that_cannot_act_are_named() {
    let Some(shared) = common::shared() else { return };
    let dir = common::temp_dir("idle-options");
    let data = common::bccd_subset(&shared, &dir, 6);
    let teacher = shared.join("fixtures/teacher_v8s_bccd.pt");
    let train = |extra: &[&str]| -> Output {
        bin()
            .args(["train", "--model", "yolov8n.yaml", "--imgsz", "64", "--epochs", "1", "--workers", "1", "--exist-ok", "--quiet", "--data"])
            .arg(&data)
            .arg("--project")
            .arg(dir.join("runs"))
            .args(extra)
            .output()
            .unwrap()
    };
    // without a teacher: named as doing nothing (the run itself goes on)
    let out = train(&["--batch", "6", "--max-batches", "1", "--pseudo-conf", "0.5", "--logit", "dense", "--distill-calibrate", "0.5"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("--distill-calibrate, --logit, --pseudo-conf act only with --teacher"), "{err}");
    // a teacher with nothing to teach, and a calibration with no term
    let t = teacher.to_str().unwrap();
    let out = train(&["--batch", "6", "--max-batches", "1", "--teacher", t, "--distill", "none", "--logit", "none", "--distill-calibrate", "0.5"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("the teacher teaches nothing") && err.contains("--distill-calibrate has no term to calibrate"), "{err}");
    assert!(!err.contains("calibrated distillation weights"), "an empty calibration was announced: {err}");
    // pseudo-labels without unlabeled images
    let out = train(&["--batch", "6", "--max-batches", "1", "--teacher", t, "--pseudo-conf", "0.5", "--unlabeled-ratio", "2"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.contains("--pseudo-conf labels unlabeled images, and this run has none"), "{err}");
    assert!(err.contains("--unlabeled-ratio 2 has no unlabeled images to act on"), "{err}");
    // the mean teacher: its own options act without a teacher, the others are named; it has no
    // unlabeled images here; thresholds out of order and a burn-in past the run are refused
    let out = train(&["--batch", "6", "--max-batches", "1", "--mean-teacher", "--burn-in", "0", "--pseudo-low", "0.2", "--distill", "mgd"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("warning: --distill act only with --teacher"), "{err}");
    assert!(err.contains("--mean-teacher labels unlabeled images, and this run has none"), "{err}");
    let out = train(&["--batch", "6", "--max-batches", "1", "--teacher", t, "--pseudo-low", "0.2"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.contains("--pseudo-low sets the uncertain labels below --pseudo-conf"), "{err}");
    let out = train(&["--batch", "6", "--mean-teacher", "--pseudo-conf", "0.3", "--pseudo-low", "0.3"]);
    refused(&out, "--pseudo-low at --pseudo-conf", &["--pseudo-low 0.3 must be below --pseudo-conf 0.3"]);
    let out = train(&["--batch", "6", "--mean-teacher", "--burn-in", "1"]);
    refused(&out, "--burn-in of every epoch", &["--burn-in 1 leaves the mean teacher no epoch", "--epochs"]);
    // a YAML teacher is random unless it trains (--online)
    let out = train(&["--batch", "2", "--teacher", "yolov8s.yaml"]);
    refused(&out, "an offline YAML teacher", &["--teacher yolov8s.yaml", "random weights", "--online"]);
    // shards: more than the batch is refused; a last batch smaller than the shards is named
    let out = train(&["--batch", "2", "--shards", "3"]);
    refused(&out, "--shards 3 --batch 2", &["--shards 3", "batch of 2", "at most 2"]);
    let out = train(&["--batch", "4", "--shards", "3", "--max-batches", "1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.contains("2 of the 6 images are left out each epoch"), "{err}");
}

/// Every command that takes an image size, a batch, seeds or distillation options checks them
/// as `train` does: refused when parsed, or (a size off the stride) rounded up; no panic.
#[test]
fn every_command_checks_sizes_batches_seeds_and_methods() {
    let cases: &[(&[&str], &[&str])] = &[
        (&["benchmark", "--imgsz", "0"], &["--imgsz", "32..=8192"]),
        (&["benchmark", "--batch", "0"], &["--batch", "at least 1"]),
        (&["benchmark", "--runs", "0"], &["--runs", "at least 1"]),
        (&["distill-plan", "--model", "yolov8n.yaml", "--teacher", "yolov8s.yaml", "--imgsz", "0"], &["--imgsz", "32..=8192"]),
        (&["bench-train", "--data", "d.yaml", "--imgsz", "0"], &["--imgsz", "32..=8192"]),
        (&["bench-train", "--data", "d.yaml", "--batch", "0"], &["--batch", "at least 1"]),
        (&["export", "--model", "yolov8n.yaml", "--batch", "0"], &["--batch", "at least 1"]),
        (&["val", "--model", "m.pt", "--data", "d.yaml", "--batch", "0"], &["--batch", "at least 1"]),
        (&["info", "--model", "yolov8n.yaml", "--imgsz", "0"], &["--imgsz", "32..=8192"]),
        (&["compare", "--model", "yolov8n.yaml", "--data", "d.yaml", "--teacher", "t.pt", "--seeds", "0,0"], &["--seeds", "seed 0 is given twice"]),
        (&["demo", "--seeds", "1,2,1"], &["--seeds", "seed 1 is given twice"]),
        (&["demo", "--imgsz", "0"], &["--imgsz", "32..=8192"]),
        (&["demo", "--student-epochs", "0"], &["--student-epochs", "at least 1"]),
        (&["train", "--model", "yolov8n.yaml", "--data", "d.yaml", "--distill", "cwd:-0.5,at:-2"], &["--distill", "cwd:-0.5", "0 or more"]),
        (&["train", "--model", "yolov8n.yaml", "--data", "d.yaml", "--distill", "cwd:inf"], &["--distill", "finite"]),
        (&["train", "--model", "yolov8n.yaml", "--data", "d.yaml", "--distill", "cwd,none"], &["--distill", "'none'", "stands alone"]),
        (&["train", "--model", "yolov8n.yaml", "--data", "d.yaml", "--distill-stop-epoch", "0"], &["--distill-stop-epoch", "at least 1"]),
        (&["compare", "--model", "yolov8n.yaml", "--data", "d.yaml", "--teacher", "t.pt", "--resume", "x.safetensors"], &["compare takes no --resume", "rerun the same command"]),
    ];
    for (args, needles) in cases {
        let out = bin().args(*args).output().unwrap();
        refused(&out, &args.join(" "), needles);
    }
    // sizes off the stride are rounded up where they used to panic in the graph
    let out = bin().args(["benchmark", "--model", "yolov8n.yaml", "--imgsz", "100", "--runs", "1", "--warmup", "0"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.contains("using 128"), "{err}");
    let out = bin().args(["distill-plan", "--model", "yolov8n.yaml", "--teacher", "yolov8s.yaml", "--imgsz", "100"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.contains("using 128"), "{err}");
}

/// bench-train at a size off the stride trains at the rounded size (it panicked in the graph).
#[test]
fn bench_train_rounds_its_image_size() {
    let Some(shared) = common::shared() else { return };
    let dir = common::temp_dir("bench-train-100");
    let data = common::bccd_subset(&shared, &dir, 2);
    let out = bin().args(["bench-train", "--imgsz", "100", "--batch", "2", "--iters", "1", "--data-batches", "1", "--workers", "1", "--data"]).arg(&data).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.contains("using 128"), "{err}");
}

/// Distillation between a YOLO26 head (boxes as 4 numbers) and a DFL head (4 × 16 bins): the
/// plan says what the dense response does (class term only), and mse that it is skipped.
#[test]
fn distill_plan_says_what_a_response_does_across_head_families() {
    for (student, teacher) in [("yolo26n.yaml", "yolov8s.yaml"), ("yolov8n.yaml", "yolo26s.yaml")] {
        let out = bin().args(["distill-plan", "--imgsz", "64", "--logit", "dense", "--model", student, "--teacher", teacher]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && text.contains("response: dense (class term only"), "{student} ← {teacher}: {text}");
    }
    let out = bin().args(["distill-plan", "--imgsz", "64", "--logit", "mse", "--model", "yolo26n.yaml", "--teacher", "yolov8s.yaml"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("response: mse (skipped at every step"));
}

/// Files that used to give unclear errors: a byte-order mark at the start of an image list or a
/// label file is read past; a checkpoint of a few bytes is named as too short.
#[test]
fn byte_order_marks_and_tiny_checkpoints() {
    let dir = common::temp_dir("bom");
    let images = dir.join("images");
    let labels = dir.join("labels");
    std::fs::create_dir_all(&images).unwrap();
    std::fs::create_dir_all(&labels).unwrap();
    picture(&images.join("a.png"));
    std::fs::write(labels.join("a.txt"), "\u{feff}0 0.5 0.5 0.2 0.2\n1 0.3 0.3 0.1 0.1\n").unwrap();
    let list = dir.join("train.txt");
    std::fs::write(&list, format!("\u{feff}{}\n", images.join("a.png").display())).unwrap();
    let ds = yolodistill::data::dataset::Dataset::scan(&[list], 2, None).unwrap();
    assert_eq!(ds.items.len(), 1, "{:?}", ds.warnings);
    assert_eq!(ds.items[0].labels.len(), 2, "{:?}", ds.warnings);
    assert!(ds.warnings.is_empty(), "{:?}", ds.warnings);

    let tiny = dir.join("last.safetensors");
    std::fs::write(&tiny, b"abc").unwrap();
    let out = bin().arg("train").arg("--resume").arg(&tiny).output().unwrap();
    refused(&out, "a 3-byte checkpoint", &["last.safetensors", "3 bytes long", "too short for a checkpoint"]);
}

/// predict warns about an image whose end is missing, as the dataset scan does.
#[test]
fn predict_warns_about_a_truncated_image() {
    let dir = common::temp_dir("cut-image-predict");
    let whole = dir.join("whole.jpg");
    picture(&whole);
    let bytes = std::fs::read(&whole).unwrap();
    let cut = dir.join("cut.jpg");
    std::fs::write(&cut, &bytes[..bytes.len() * 3 / 4]).unwrap();
    let out = bin().args(["predict", "--model", "yolov8n.yaml", "--imgsz", "64", "--source"]).arg(&cut).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.contains("cut.jpg: Jpeg file is truncated but decodes"), "{err}");
    let out = bin().args(["predict", "--model", "yolov8n.yaml", "--imgsz", "64", "--source"]).arg(&whole).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && !err.contains("is truncated"), "{err}");
}

/// `val --outputs-from` with non-finite outputs is refused (it scored mAP 0 but COCO AP 0.247
/// and wrote null boxes).
#[test]
fn val_refuses_non_finite_outputs() {
    let Some(shared) = common::shared() else { return };
    let dir = common::temp_dir("nan-outputs");
    let data = common::bccd_subset(&shared, &dir, 2);
    let outputs = dir.join("outputs");
    std::fs::create_dir_all(&outputs).unwrap();
    // [2 images, 4 + 3 classes, 84 anchors at 64]
    let mut values = vec![0.5f32; 2 * 7 * 84];
    values[10] = f32::NAN;
    yolodistill::weights::npy::write_f32(&outputs.join("output_0.npy"), &[2, 7, 84], &values).unwrap();
    let json = dir.join("dets.json");
    let out = bin()
        .args(["val", "--model", "yolov8n.yaml", "--imgsz", "64", "--plots", "false", "--data"])
        .arg(&data)
        .arg("--outputs-from")
        .arg(&outputs)
        .arg("--save-json")
        .arg(&json)
        .output()
        .unwrap();
    refused(&out, "non-finite outputs", &["output_0.npy", "not finite"]);
    assert!(!json.exists());
}

/// Segmentation models load, teach, validate, predict and train; a segmentation run or
/// validation on box labels names the label file.
#[test]
fn segmentation_models_refuse_box_labels_by_file() {
    let Some(shared) = common::shared() else { return };
    let dir = common::temp_dir("seg-refused");
    let data = common::bccd_subset(&shared, &dir, 4);
    let seg = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/seg/yolov8t-seg.pt");
    let (data, seg) = (data.to_str().unwrap(), seg.to_str().unwrap());
    let project = dir.join("runs");
    let project = project.to_str().unwrap();
    // BCCD's labels are boxes: validating a segmentation model on them names the first label file
    let out = bin().args(["val", "--model", seg, "--data", data, "--plots", "false"]).output().unwrap();
    refused(&out, "seg val on boxes", &["BloodImage_0000", "a box label in a segmentation dataset"]);
    assert!(!dir.join("runs").exists(), "a refused command left files");
    // and so does a segmentation training run
    let out = bin().args(["train", "--model", "yolov8n-seg.yaml", "--data", data, "--epochs", "1", "--imgsz", "64", "--project", project]).output().unwrap();
    refused(&out, "seg on boxes", &["BloodImage_0000", "a box label in a segmentation dataset", "class x1 y1 x2 y2 x3 y3"]);
    // a segmentation teacher teaches a detection student (its mask parts unused)
    let out = bin()
        .args(["train", "--model", "yolov8n.yaml", "--data", data, "--epochs", "1", "--imgsz", "64", "--batch", "4", "--quiet"])
        .args(["--teacher", seg, "--distill", "cwd", "--logit", "bckd", "--project", project])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
