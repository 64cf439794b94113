//! Box-by-box parity of our predictor (letterbox, forward, NMS, mapping back to the image) with
//! Ultralytics 8.4.190's `YOLO.predict` on real images: the BCCD teacher
//! (`../shared/fixtures/teacher_v8s_bccd.pt`) on six BCCD val images at 640 and at 320
//! (`tests/data/predict_teacher_ref.json`, made by `scripts/predict_reference.py`).
//! Same boxes in the same order and classes; scores within 1e-3; coordinates within 1e-3·max(1, |v|).
//! And a segmentation model's masks and outlines against Ultralytics' (`tests/data/seg/
//! predict_garbage_ref.json`, made by `scripts/seg_predict_reference.py`).

mod common;

use serde_json::Value;
use yolodistill::infer::nms::NmsConfig;
use yolodistill::infer::predict::predict_image;
use yolodistill::model;
use yolodistill::pixels::load::load_rgb;

#[test]
fn predictor_matches_ultralytics_box_by_box() {
    let Some(shared) = common::shared() else { return };
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/predict_teacher_ref.json");
    let reference: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let device = yolodistill::default_device();
    let mut m = model::load(shared.join("fixtures").join(reference["model"].as_str().unwrap()).to_str().unwrap(), None, &device).unwrap().model;
    m.fuse();
    let cfg = NmsConfig { conf: reference["conf"].as_f64().unwrap() as f32, iou: reference["iou"].as_f64().unwrap() as f32, ..NmsConfig::predict() };
    let (mut boxes, mut worst_conf, mut worst_xy) = (0, 0f32, 0f32);
    for run in reference["runs"].as_array().unwrap() {
        let imgsz = run["imgsz"].as_u64().unwrap() as usize;
        for im in run["images"].as_array().unwrap() {
            let name = im["image"].as_str().unwrap();
            let img = load_rgb(&shared.join("data/bccd").join(name)).unwrap();
            let ours = predict_image(&m, &img, imgsz, &cfg, &device).dets;
            let want: Vec<Vec<f32>> = im["boxes"].as_array().unwrap().iter().map(|b| b.as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect()).collect();
            let classes = |v: Vec<usize>| v;
            assert_eq!(
                classes(ours.iter().map(|d| d.cls).collect()),
                classes(want.iter().map(|w| w[5] as usize).collect()),
                "{name} at {imgsz}: boxes or their order differ\nours {ours:?}\nwant {want:?}"
            );
            for (d, w) in ours.iter().zip(&want) {
                worst_conf = worst_conf.max((d.conf - w[4]).abs());
                for k in 0..4 {
                    worst_xy = worst_xy.max((d.xyxy[k] - w[k]).abs() / w[k].abs().max(1.0));
                }
            }
            boxes += want.len();
        }
    }
    eprintln!("{boxes} boxes in Ultralytics' order; worst |Δscore| {worst_conf:.2e}, worst |Δxy|/max(1, |v|) {worst_xy:.2e}");
    assert!(worst_conf <= 1e-3, "scores differ by {worst_conf:.2e}");
    assert!(worst_xy <= 1e-3, "coordinates differ by {worst_xy:.2e}");
}

/// `tests/data/seg/predict_garbage_ref.json` (scripts/seg_predict_reference.py).
fn seg_reference() -> Value {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/seg/predict_garbage_ref.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// A row-major mask from runs [start, length] of ones.
fn from_runs(runs: &Value, n: usize) -> Vec<bool> {
    let mut bits = vec![false; n];
    for r in runs.as_array().unwrap() {
        let (start, len) = (r[0].as_u64().unwrap() as usize, r[1].as_u64().unwrap() as usize);
        bits[start..start + len].fill(true);
    }
    bits
}

fn points(v: &Value) -> Vec<[f32; 2]> {
    v.as_array().unwrap().iter().map(|p| [p[0].as_f64().unwrap() as f32, p[1].as_f64().unwrap() as f32]).collect()
}

/// Outlines of random masks (holes, several components) equal Ultralytics' `masks2segments`
/// (OpenCV's external contours merged by `merge_multi_segment`) point for point.
#[test]
fn mask_outlines_match_opencv_and_ultralytics() {
    use yolodistill::pixels::contour::{merge_polygons, outer_contours, Bitmap};
    let reference = seg_reference();
    for (k, case) in reference["contours"].as_array().unwrap().iter().enumerate() {
        let (w, h) = (case["w"].as_u64().unwrap() as usize, case["h"].as_u64().unwrap() as usize);
        let bits = from_runs(&case["runs"], w * h);
        let contours = outer_contours(&Bitmap { bits: &bits, w, h });
        assert_eq!(contours.len() as u64, case["contours"].as_u64().unwrap(), "mask {k}: number of outer contours");
        let ours: Vec<[f32; 2]> = merge_polygons(&contours).into_iter().map(|(x, y)| [x as f32, y as f32]).collect();
        assert_eq!(ours, points(&case["polygon"]), "mask {k}");
    }
}

/// A segmentation model's predictions: the same detections as Ultralytics', each mask (at the
/// input's resolution) the same pixels but for logits within float rounding of 0, and the
/// outline (`masks.xy`) the same points wherever the masks agree (all of them but at most one: 20
/// of 20 here), on square and padded inputs.
#[test]
fn segmentation_predictions_match_ultralytics_mask_by_mask() {
    let Some(shared) = common::shared() else { return };
    let reference = seg_reference();
    let device = yolodistill::default_device();
    let model_path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/seg").join(reference["model"].as_str().unwrap());
    let mut m = model::load(model_path.to_str().unwrap(), None, &device).unwrap().model;
    m.fuse();
    let cfg = NmsConfig { conf: reference["conf"].as_f64().unwrap() as f32, iou: reference["iou"].as_f64().unwrap() as f32, ..NmsConfig::predict() };
    let imgsz = reference["imgsz"].as_u64().unwrap() as usize;
    let (mut masks, mut pixels, mut differing, mut same_outline) = (0, 0usize, 0usize, 0);
    for im in reference["images"].as_array().unwrap() {
        let name = im["image"].as_str().unwrap();
        let mut img = load_rgb(&shared.join("data/garbage").join(name)).unwrap();
        if let Some(row) = im["first_row"].as_u64() {
            img = image::imageops::crop_imm(&img, 0, row as u32, img.width(), img.height() - row as u32).to_image();
        }
        let pred = predict_image(&m, &img, imgsz, &cfg, &device);
        let want = im["dets"].as_array().unwrap();
        assert_eq!(pred.dets.len(), want.len(), "{name}: detections");
        let shape: Vec<usize> = im["input_shape"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
        assert_eq!((pred.input.1, pred.input.0), (shape[0], shape[1]), "{name}: input size");
        let polygons = pred.polygons();
        for (k, w) in want.iter().enumerate() {
            let b: Vec<f32> = w["box"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
            let d = &pred.dets[k];
            assert_eq!(d.cls, b[5] as usize, "{name} #{k}: class");
            assert!((d.conf - b[4]).abs() <= 1e-3, "{name} #{k}: conf {} vs {}", d.conf, b[4]);
            for j in 0..4 {
                assert!((d.xyxy[j] - b[j]).abs() <= 1e-3 * b[j].abs().max(1.0), "{name} #{k}: box {:?} vs {b:?}", d.xyxy);
            }
            let theirs = from_runs(&w["mask_runs"], shape[0] * shape[1]);
            let diff = (0..shape[0] * shape[1]).filter(|&p| pred.masks[k].contains(p % shape[1], p / shape[1]) != theirs[p]).count();
            let area = theirs.iter().filter(|&&b| b).count();
            assert!(area > 0 && diff * 200 <= area, "{name} #{k}: {diff} of {area} mask pixels differ");
            if diff == 0 {
                let want_poly = points(&w["polygon"]);
                assert_eq!(polygons[k].len(), want_poly.len(), "{name} #{k}: outline points");
                for (p, q) in polygons[k].iter().zip(&want_poly) {
                    assert!((p[0] - q[0]).abs() <= 1e-3 && (p[1] - q[1]).abs() <= 1e-3, "{name} #{k}: {p:?} vs {q:?}");
                }
                same_outline += 1;
            }
            masks += 1;
            pixels += area;
            differing += diff;
        }
    }
    eprintln!("{masks} masks, {pixels} pixels, {differing} differ; {same_outline} identical masks with identical outlines");
    assert!(same_outline + 1 >= masks, "all masks but at most one are pixel-identical ({same_outline} of {masks})");
}
