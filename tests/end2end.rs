//! The one-to-one (NMS-free) head of YOLOv10 and YOLO26 against Ultralytics' `nms=False`:
//! `tests/data/<arch>_bccd.pt` (trained by Ultralytics on BCCD, `scripts/end2end_reference.py`)
//! on a letterboxed BCCD image gives Ultralytics' 300 detections (`tests/data/end2end_ref.safetensors`),
//! and `val` in both modes gives Ultralytics' mAP (`tests/data/end2end_val.json`).

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use burn::tensor::{Tensor, TensorData};
use yolodistill::infer::nms::{end2end_topk, NmsConfig};
use yolodistill::model;
use yolodistill::weights::st::read_tensors;

fn data(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data").join(file)
}

#[test]
fn one_to_one_head_matches_ultralytics_without_nms() {
    let (refs, _) = read_tensors(&data("end2end_ref.safetensors")).unwrap();
    let get = |name: &str| refs.iter().find(|(n, _)| n == name).map(|(_, t)| t.clone()).unwrap_or_else(|| panic!("no {name}"));
    let device = yolodistill::default_device();
    for arch in ["yolov10n", "yolo26n"] {
        let m = model::load(data(&format!("{arch}_bccd.pt")).to_str().unwrap(), None, &device).unwrap().model;
        let input = get(&format!("{arch}.input"));
        let x = || Tensor::<4>::from_data(TensorData::new(input.data.clone(), input.shape.clone()), &device);
        let out = m.forward_taps(x(), &[], true).head;
        let host = m.head().decode_end2end(&out).expect("a one-to-one head").try_into_vec_as::<f32>().unwrap();
        let ours = end2end_topk(&host, m.nc(), 300);
        assert!(ours.windows(2).all(|p| p[0].conf >= p[1].conf), "{arch}: not sorted by score");
        let want = get(&format!("{arch}.topk"));
        assert_eq!((want.shape.as_slice(), ours.len()), ([1, 300, 6].as_slice(), 300), "{arch}");
        let rows: Vec<[f32; 6]> = ours.iter().map(|d| [d.xyxy[0], d.xyxy[1], d.xyxy[2], d.xyxy[3], d.conf, d.cls as f32]).collect();
        let worst = common::same_top_k(arch, &rows, &want.data);
        eprintln!("{arch}: 300 detections in Ultralytics' order, worst |Δ|/max(1, |v|) {worst:.2e}");
        assert!(worst <= 1e-3, "{arch}: detections differ by {worst:.2e}");
        // `detect` with `nms` off runs the same path and keeps those above the threshold
        let cfg = NmsConfig { nms: false, conf: 0.01, ..NmsConfig::predict() };
        let found = m.detect(x(), &cfg).remove(0);
        let all = end2end_topk(&host, m.nc(), 300);
        let kept: Vec<_> = all.iter().filter(|d| d.conf > 0.01).copied().collect();
        assert_eq!(found, kept, "{arch}");
        // and with `nms` on (the default), the one-to-many head with NMS
        assert_ne!(m.detect(x(), &NmsConfig { conf: 0.01, ..NmsConfig::predict() }).remove(0), kept);
    }
}

/// `val` with and without NMS (`nms=False`: the one-to-one head) matches Ultralytics' mAP50-95
/// and mAP50 within 1e-4 on BCCD val at 320 (the issue asks 0.005).
#[test]
fn val_in_both_modes_matches_ultralytics() {
    use yolodistill::data::dataset::{DataConfig, Dataset};
    use yolodistill::data::loader::ValLoader;
    use yolodistill::eval::validate::validate;
    let Some(shared) = common::shared() else { return };
    let want: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(data("end2end_val.json")).unwrap()).unwrap();
    let device = yolodistill::default_device();
    let bccd = DataConfig::load(&shared.join("data/bccd/data.yaml")).unwrap();
    let ds = Arc::new(Dataset::scan(&bccd.val, bccd.names.len(), None).unwrap());
    for arch in ["yolov10n", "yolo26n"] {
        let m = model::load(data(&format!("{arch}_bccd.pt")).to_str().unwrap(), None, &device).unwrap().model;
        for (mode, nms) in [("nms", true), ("end2end", false)] {
            let loader = ValLoader::new(ds.clone(), 320, 16, 32, 2).unwrap();
            let r = validate(&m, &loader, &NmsConfig { nms, ..NmsConfig::val() }).unwrap();
            let w = &want[format!("{arch}.{mode}")];
            let (m50, m) = (w["map50"].as_f64().unwrap(), w["map"].as_f64().unwrap());
            eprintln!("{arch} {mode}: mAP50 {:.6} (Ultralytics {m50:.6}), mAP50-95 {:.6} (Ultralytics {m:.6})", r.metrics.map50, r.metrics.map);
            // The issue asks 0.005. With JPEGs decoded as OpenCV decodes them the numbers agree to 6
            // decimals (another decoder's chroma rounding had put yolo26n's end-to-end mAP50 0.0055 off).
            assert!((r.metrics.map - m).abs() <= 1e-4 && (r.metrics.map50 - m50).abs() <= 1e-4, "{arch} {mode}");
        }
    }
}
