//! Box-by-box parity of our predictor (letterbox, forward, NMS, mapping back to the image) with
//! Ultralytics 8.4.190's `YOLO.predict` on real images: the BCCD teacher
//! (`../shared/fixtures/teacher_v8s_bccd.pt`) on six BCCD val images at 640 and at 320
//! (`tests/data/predict_teacher_ref.json`, made by `scripts/predict_reference.py`).
//! Same boxes in the same order and classes; scores within 1e-3; coordinates within 1e-3·max(1, |v|).

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
            let ours = predict_image(&m, &img, imgsz, &cfg, &device);
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
