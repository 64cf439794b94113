//! `val` of Ultralytics' BCCD teacher reproduces Ultralytics' own mAP (rect batches at 320).

mod common;

use std::sync::Arc;

use yolodistill::data::dataset::{DataConfig, Dataset};
use yolodistill::data::loader::ValLoader;
use yolodistill::eval::validate::validate;
use yolodistill::infer::nms::NmsConfig;

#[test]
fn teacher_val_map_matches_ultralytics() {
    let Some(shared) = common::shared() else { return };
    let fx: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(shared.join("fixtures/ultralytics_bccd.json")).unwrap()).unwrap();
    let want = &fx["teacher_v8s"]["val_best"];
    let device = yolodistill::default_device();
    let m = yolodistill::model::load(shared.join("fixtures/teacher_v8s_bccd.pt").to_str().unwrap(), None, &device)
        .unwrap()
        .model;
    let data = DataConfig::load(&shared.join("data/bccd/data.yaml")).unwrap();
    let ds = Arc::new(Dataset::scan(&data.val, data.names.len(), None).unwrap());
    let loader = ValLoader::new(ds, 320, 16, 32, 2).unwrap();
    let r = validate(&m, &loader, &NmsConfig::val()).unwrap();
    let (m50, m5095) = (want["mAP50"].as_f64().unwrap(), want["mAP50-95"].as_f64().unwrap());
    eprintln!("mAP50 {:.6} (Ultralytics {m50:.6}), mAP50-95 {:.6} (Ultralytics {m5095:.6})", r.metrics.map50, r.metrics.map);
    // JPEGs decode as OpenCV decodes them, so the numbers agree to 6 decimals (the bound was 0.005 before).
    assert!((r.metrics.map50 - m50).abs() <= 1e-4);
    assert!((r.metrics.map - m5095).abs() <= 1e-4);
    assert_eq!(r.images, 87);
    // COCO statistics come from the same detections
    assert!(r.coco.ap50 > 0.7 && r.coco.ap > 0.4);
}
