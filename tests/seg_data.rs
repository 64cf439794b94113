//! Polygon labels as Ultralytics 8.4.190 handles them: resampled when loaded, moved by the
//! augmentation's matrix with their boxes from the part inside the image, and rasterised into
//! overlap-form instance masks (fixtures of `scripts/segments_reference.py` and
//! `scripts/mask_reference.py`).

use std::path::Path;

use yolodistill::data::segments::{resample, transform, RESAMPLED_POINTS};
use yolodistill::weights::st::read_tensors;

fn fixture(name: &str) -> impl Fn(&str) -> (Vec<f32>, Vec<usize>) {
    let (fx, _) = read_tensors(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/seg").join(name)).unwrap();
    move |k: &str| fx.iter().find(|(n, _)| n == k).map(|(_, t)| (t.data.clone(), t.shape.clone())).unwrap_or_else(|| panic!("no {k}"))
}

/// Polygons from concatenated points and per-polygon lengths.
fn polygons(points: &[f32], lengths: &[f32]) -> Vec<Vec<[f32; 2]>> {
    let mut out = Vec::new();
    let mut at = 0;
    for &n in lengths {
        let n = n as usize;
        out.push((at..at + n).map(|i| [points[2 * i], points[2 * i + 1]]).collect());
        at += n;
    }
    out
}

/// Resampling keeps Ultralytics' 1000 points (the vertices among them), and the affine and the
/// perspective matrices move them and make their boxes as Ultralytics does, for polygons the
/// result's border cuts too.
#[test]
fn polygons_resample_and_move_as_ultralytics_does() {
    let get = fixture("segments_ref.safetensors");
    let polys = polygons(&get("points").0, &get("lengths").0);
    let (want, _) = get("resampled");
    let ours: Vec<Vec<[f32; 2]>> = polys.iter().map(|p| resample(p, RESAMPLED_POINTS)).collect();
    let flat: Vec<f32> = ours.iter().flatten().flatten().copied().collect();
    assert_eq!(flat.len(), want.len());
    let worst = flat.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(worst <= 1e-3, "resampled points differ by up to {worst} px");
    let (mut cut, mut worst_box) = (0, 0f32);
    for k in 0..2 {
        let (m, _) = get(&format!("m{k}"));
        let m: [[f64; 3]; 3] = std::array::from_fn(|r| std::array::from_fn(|c| m[3 * r + c] as f64));
        let (boxes, _) = get(&format!("m{k}.boxes"));
        let (segs, _) = get(&format!("m{k}.segments"));
        for (i, p) in ours.iter().enumerate() {
            let (moved, b) = transform(p, &m, (480.0, 480.0));
            let wb = &boxes[4 * i..4 * i + 4];
            let worst = b.iter().zip(wb).map(|(a, w)| (a - w).abs()).fold(0f32, f32::max);
            worst_box = worst_box.max(worst);
            assert!(worst <= 1e-3, "m{k} polygon {i}: box {b:?} vs Ultralytics {wb:?}");
            let ws = &segs[2000 * i..2000 * (i + 1)];
            let worst = moved.iter().flatten().zip(ws).map(|(a, w)| (a - w).abs()).fold(0f32, f32::max);
            assert!(worst <= 1e-3, "m{k} polygon {i}: points differ by up to {worst} px");
            // a polygon the border cuts has points moved outside the result
            let project = |q: &[f32; 2], r: usize| {
                let (x, y) = (q[0] as f64, q[1] as f64);
                (m[r][0] * x + m[r][1] * y + m[r][2]) / (m[2][0] * x + m[2][1] * y + m[2][2])
            };
            cut += p.iter().any(|q| !(0.0..=480.0).contains(&project(q, 0)) || !(0.0..=480.0).contains(&project(q, 1))) as usize;
        }
    }
    eprintln!("boxes within {worst_box:.2e} px of Ultralytics'; {cut} of 14 moved polygons cut by the border");
    assert!(cut >= 2, "the border cuts some polygons: {cut}");
}

/// Instance masks from polygons are Ultralytics' (`polygons2masks_overlap`: OpenCV's fillPoly, its
/// bilinear resize, ids by decreasing area), pixel for pixel, on real garbage-set polygons and on
/// drawn ones at ratios 4 and 2 (`scripts/mask_reference.py`).
#[test]
fn instance_masks_from_polygons_match_ultralytics() {
    let (fx, _) = read_tensors(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/seg/mask_ref.safetensors")).unwrap();
    let get = |k: &str| fx.iter().find(|(n, _)| n == k).map(|(_, t)| t.data.clone()).unwrap_or_else(|| panic!("no {k}"));
    let cases: Vec<String> = fx.iter().filter_map(|(n, _)| n.strip_suffix(".ids").map(str::to_string)).collect();
    assert_eq!(cases.len(), 8);
    let mut pixels = 0;
    for c in &cases {
        let (pts, lengths, size) = (get(&format!("{c}.points")), get(&format!("{c}.lengths")), get(&format!("{c}.size")));
        let polygons = polygons(&pts, &lengths);
        let (h, w, ratio) = (size[0] as usize, size[1] as usize, size[2] as usize);
        let (ids, order) = yolodistill::data::masks::overlap_masks(&polygons, (h, w), ratio);
        let want: Vec<u16> = get(&format!("{c}.ids")).iter().map(|&v| v as u16).collect();
        let wrong = ids.iter().zip(&want).filter(|(a, b)| a != b).count();
        assert_eq!(wrong, 0, "{c}: {wrong} of {} pixels differ", want.len());
        assert_eq!(order, get(&format!("{c}.order")).iter().map(|&v| v as usize).collect::<Vec<_>>(), "{c}: object order");
        pixels += want.iter().filter(|&&v| v > 0).count();
    }
    assert!(pixels > 10_000, "the cases cover objects: {pixels} pixels");
}

mod common;

use std::sync::Arc;

use yolodistill::data::augment::AugConfig;
use yolodistill::data::dataset::Dataset;
use yolodistill::data::loader::TrainLoader;

/// The first `n` garbage training images (instance polygons, 6 classes) as a dataset YAML.
fn garbage_subset(shared: &Path, dir: &Path, n: usize) -> std::path::PathBuf {
    let imgs = shared.join("data/garbage/images/train");
    let mut files: Vec<String> = std::fs::read_dir(&imgs).unwrap().map(|e| e.unwrap().path().display().to_string()).collect();
    files.sort();
    std::fs::write(dir.join("subset.txt"), files[..n].join("\n")).unwrap();
    let yaml = dir.join("data.yaml");
    let names = "[biological, cardboard, glass, metal, paper, plastic]";
    std::fs::write(&yaml, format!("path: {}\ntrain: subset.txt\nval: subset.txt\nnames: {names}\n", dir.display())).unwrap();
    yaml
}

/// A segmentation task's training batches carry overlap-form masks at a quarter of the image
/// size, with each image's labels in the masks' object order: object k of an image (k-th label)
/// has id k + 1, and its pixels lie in its box.
#[test]
fn training_batches_carry_masks_in_their_labels_order() {
    let Some(shared) = common::shared() else { return };
    let dir = common::temp_dir("seg-batches");
    let ds = Arc::new(Dataset::scan(&[shared.join("data/garbage/images/train")], 6, Some(&dir)).unwrap());
    let loader = |masks| TrainLoader::new(ds.clone(), 128, 4, AugConfig::default(), 0, 5).unwrap().with_masks(masks);
    let (plain, seg) = (loader(None).epoch(0, true).next().unwrap(), loader(Some(4)).epoch(0, true).next().unwrap());
    assert_eq!(plain.images, seg.images, "masks change no pixel");
    assert!(plain.masks.is_none());
    let masks = seg.masks.as_ref().expect("masks");
    assert_eq!(masks.size, (32, 32));
    assert_eq!(masks.ids.len(), 4 * 32 * 32);
    let sorted = |b: &yolodistill::data::loader::Batch| {
        let mut v: Vec<String> = b.batch_idx.iter().zip(&b.cls).zip(&b.bboxes).map(|((i, c), x)| format!("{i} {c} {x:?}")).collect();
        v.sort();
        v
    };
    assert_eq!(sorted(&plain), sorted(&seg), "the same labels, reordered");
    let mut objects_drawn = 0;
    for j in 0..4 {
        let ids = &masks.ids[j * 1024..(j + 1) * 1024];
        let labels: Vec<[f32; 4]> = seg.batch_idx.iter().zip(&seg.bboxes).filter(|(&i, _)| i == j).map(|(_, b)| *b).collect();
        assert!(ids.iter().all(|&v| (v as usize) <= labels.len()), "image {j}: ids up to its {} labels", labels.len());
        for (k, b) in labels.iter().enumerate() {
            let (x1, y1, x2, y2) = ((b[0] - b[2] / 2.0) * 32.0, (b[1] - b[3] / 2.0) * 32.0, (b[0] + b[2] / 2.0) * 32.0, (b[1] + b[3] / 2.0) * 32.0);
            let pixels: Vec<(f32, f32)> = (0..1024).filter(|&p| ids[p] as usize == k + 1).map(|p| ((p % 32) as f32, (p / 32) as f32)).collect();
            objects_drawn += usize::from(!pixels.is_empty());
            for (x, y) in pixels {
                assert!(x >= x1 - 1.0 && x <= x2 + 1.0 && y >= y1 - 1.0 && y <= y2 + 1.0, "image {j} object {k}: pixel ({x}, {y}) outside its box");
            }
        }
    }
    assert!(objects_drawn > 0, "some object has mask pixels");
}

/// A segmentation model trains on polygon labels at toy size: the run logs Ultralytics 8.4.190's five
/// items, its mask loss falls, and its weights are a segmentation model's. Also YOLO26's (its
/// end-to-end loss with the semantic term, the distance term named l1_loss).
#[test]
fn a_segmentation_model_learns_at_toy_size() {
    let Some(shared) = common::shared() else { return };
    let dir = common::temp_dir("seg-train");
    let data = garbage_subset(&shared, &dir, 8);
    // YOLO26 logs its one-to-one branch, whose coefficients learn on detached features: slower
    for (model, epochs) in [("yolov8n-seg.yaml", "6"), ("yolo26n-seg.yaml", "10")] {
        learns(model, epochs, &data, &dir.join(model));
    }
}

fn learns(model: &str, epochs: &str, data: &Path, project: &Path) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_yolodistill"))
        .args(["train", "--model", model, "--data", data.to_str().unwrap(), "--imgsz", "96", "--batch", "8", "--nbs", "8", "--epochs", epochs])
        // the same eight images every step, unaugmented: one optimizer step per epoch on one batch
        .args(["--mosaic", "0", "--scale", "0", "--translate", "0", "--fliplr", "0", "--hsv-h", "0", "--hsv-s", "0", "--hsv-v", "0"])
        .args(["--warmup-epochs", "0", "--lr0", "0.004", "--val", "false", "--workers", "1", "--quiet", "--project", project.to_str().unwrap(), "--name", "seg"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let run = project.join("seg");
    let r = yolodistill::report::Results::load(&run.join("results.csv")).unwrap();
    let items: Vec<&str> = r.columns.iter().filter(|c| c.starts_with("train/")).map(String::as_str).collect();
    let yolo26 = model.starts_with("yolo26");
    let distance = if yolo26 { "train/l1_loss" } else { "train/dfl_loss" };
    assert_eq!(items, ["train/box_loss", "train/seg_loss", "train/cls_loss", distance, "train/sem_loss"]);
    let seg = r.column("train/seg_loss").unwrap();
    eprintln!("{model}: seg_loss by epoch: {seg:?}");
    let sem = r.column("train/sem_loss").unwrap();
    assert!(if yolo26 { sem.iter().all(|&v| v > 0.0) && sem[sem.len() - 1] < sem[0] } else { sem.iter().all(|&v| v == 0.0) }, "{model}: sem_loss {sem:?}");
    assert!(seg.iter().all(|v| v.is_finite()));
    assert!(seg[seg.len() - 1] < 0.7 * seg[0], "the mask loss falls: {seg:?}");
    // --warmup-epochs 0 is no warm-up: the first step already moves the weights
    assert!((seg[1] - seg[0]).abs() > 1e-3 * seg[0], "epoch 2 starts from other weights than epoch 1: {seg:?}");
    let m = yolodistill::model::load(run.join("weights/last.safetensors").to_str().unwrap(), None, &yolodistill::default_device()).unwrap().model;
    assert_eq!(yolodistill::task::of(m.head()).name(), "segment");
}

/// A segmentation teacher distils into a segmentation student with the detection options: feature
/// terms on the taps, response terms on the box and class maps and on the masks (`l_mask`),
/// beside the student's own mask loss. `compare` judges segmentation runs by their mask metrics.
#[test]
fn a_segmentation_student_distils_from_a_segmentation_teacher() {
    let Some(shared) = common::shared() else { return };
    let dir = common::temp_dir("seg-distill");
    let data = garbage_subset(&shared, &dir, 8);
    let teacher = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/seg/yolov8n-seg_garbage.pt");
    let project = dir.join("runs");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_yolodistill"))
        .args(["train", "--model", "yolov8n-seg.yaml", "--data", data.to_str().unwrap(), "--imgsz", "64", "--batch", "8", "--epochs", "1"])
        .args(["--teacher", teacher.to_str().unwrap(), "--distill", "cwd", "--logit", "ld"])
        .args(["--val", "false", "--workers", "1", "--quiet", "--project", project.to_str().unwrap(), "--name", "d"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r = yolodistill::report::Results::load(&project.join("d/results.csv")).unwrap();
    for column in ["train/seg_loss", "train/d_cwd", "train/l_ld", "train/l_mask"] {
        let v = r.column(column).unwrap_or_else(|| panic!("no {column}"))[0];
        assert!(v.is_finite() && v > 0.0, "{column} = {v}");
    }
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_yolodistill"))
        .args(["compare", "--seeds", "0", "--model", "yolov8n-seg.yaml", "--data", data.to_str().unwrap(), "--imgsz", "64", "--batch", "8", "--epochs", "1"])
        .args(["--teacher", teacher.to_str().unwrap(), "--distill", "none", "--logit", "ld"])
        .args(["--workers", "1", "--quiet", "--project", project.to_str().unwrap(), "--name", "cmp"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let table = std::fs::read_to_string(project.join("cmp/compare.md")).unwrap();
    assert!(table.contains("(mask metrics, (M)") && table.contains("| 0 |"), "{table}");
    // the table's plain mAP50-95 is the run's mask mAP50-95 at its best epoch
    let plain = yolodistill::report::Results::load(&project.join("cmp/plain-s0/results.csv")).unwrap();
    let masks = plain.column("metrics/mAP50-95(M)").unwrap()[0];
    let row = table.lines().find(|l| l.starts_with("| 0 |")).unwrap();
    assert_eq!(row.split('|').nth(3).unwrap().trim(), format!("{masks:.4}"), "{table}");
    // unlabeled images (half the labels): boxes from the teacher's pseudo-labels, masks from its
    // mask probabilities (l_mask); the mask term keeps to the labeled images. Validation on other
    // images, since a validation image is never an unlabeled one.
    let imgs = shared.join("data/garbage/images/val");
    let mut val: Vec<String> = std::fs::read_dir(&imgs).unwrap().map(|e| e.unwrap().path().display().to_string()).collect();
    val.sort();
    std::fs::write(dir.join("val.txt"), val[..4].join("\n")).unwrap();
    let split = dir.join("split.yaml");
    std::fs::write(&split, std::fs::read_to_string(&data).unwrap().replace("val: subset.txt", "val: val.txt")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_yolodistill"))
        // at 160, the teacher's training size: at 64 it finds nothing to label
        .args(["train", "--model", "yolov8n-seg.yaml", "--data", split.to_str().unwrap(), "--imgsz", "160", "--batch", "4", "--epochs", "1"])
        .args(["--teacher", teacher.to_str().unwrap(), "--distill", "none", "--logit", "ld", "--label-fraction", "0.5", "--pseudo-conf", "0.01"])
        .args(["--val", "false", "--workers", "1", "--quiet", "--project", project.to_str().unwrap(), "--name", "u"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && !err.contains("this run has none"), "{err}");
    let r = yolodistill::report::Results::load(&project.join("u/results.csv")).unwrap();
    // a fixed teacher's pseudo-labels are counted per unlabeled image, as the mean teacher's
    for column in ["train/seg_loss", "train/l_mask", "train/pseudo_reliable"] {
        let v = r.column(column).unwrap_or_else(|| panic!("no {column} in {:?}", r.columns))[0];
        assert!(v.is_finite() && v > 0.0, "{column} = {v}");
    }
    assert!(r.column("metrics/mAP50-95(M)").is_some_and(|m| m[0].is_finite()), "validated with masks: {:?}", r.columns);
}
