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
        (&["--model", "yolov8n.yaml", "--teacher", "yolov8s.yaml", "--unlabeled", "nowhere/"], "--unlabeled nowhere/"),
    ];
    for (i, (extra, expected)) in cases.iter().enumerate() {
        let name = format!("run{i}");
        let out = bin().arg("train").args(*extra).arg("--data").arg(&data).arg("--project").arg(&dir).args(["--name", &name]).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.code() == Some(1) && err.contains(expected), "{extra:?}: {err}");
        assert!(!dir.join(&name).exists(), "{extra:?} left a run folder");
    }
}

