//! Fixture parity: Ultralytics checkpoints loaded from `.pt` reproduce the
//! reference outputs (decoded output, raw head maps, intermediate layers).

mod common;

use burn::tensor::{Tensor, TensorData};
use yolodistill::model;
use yolodistill::weights::st::read_tensors;

fn check_arch(arch: &str) {
    let Some(shared) = common::shared() else { return };
    let fx = shared.join("fixtures");
    let device = yolodistill::default_device();
    let m = model::load(fx.join(format!("{arch}.pt")).to_str().unwrap(), None, &device)
        .unwrap_or_else(|e| panic!("{arch}: {e:#}"))
        .model;
    let (refs, _) = read_tensors(&fx.join(format!("{arch}_ref.safetensors"))).unwrap();
    let get = |k: &str| refs.iter().find(|(n, _)| n == k).map(|(_, t)| t.clone()).unwrap();
    let input = get("input");
    let x: Tensor<4> = Tensor::from_data(TensorData::new(input.data.clone(), input.shape.clone()), &device);
    let mut taps: Vec<usize> =
        refs.iter().filter_map(|(n, _)| n.strip_prefix("layer.").and_then(|i| i.parse().ok())).collect();
    taps.sort();
    assert!(!taps.is_empty());
    let fwd = m.forward_taps(x, &taps, false);
    let output = m.head().decode(&fwd.head);

    let (d, _) = common::max_diff(&output.try_into_vec_as::<f32>().unwrap(), &get("output").data);
    assert!(d <= 1e-3, "{arch}: output max |Δ| = {d}");
    let rel = |name: &str, got: Tensor<3>| {
        let want = get(name);
        assert_eq!(got.dims().to_vec(), want.shape, "{arch}: {name} shape");
        let (d, mx) = common::max_diff(&got.try_into_vec_as::<f32>().unwrap(), &want.data);
        assert!(d <= 1e-3 * mx.max(1e-6), "{arch}: {name} max |Δ| = {d} (max |v| = {mx})");
    };
    rel("head.boxes", fwd.head.one2many.boxes.clone());
    rel("head.scores", fwd.head.one2many.scores.clone());
    for (i, t) in taps.iter().zip(fwd.taps) {
        let want = get(&format!("layer.{i}"));
        assert_eq!(t.dims().to_vec(), want.shape, "{arch}: layer.{i} shape");
        let (d, mx) = common::max_diff(&t.try_into_vec_as::<f32>().unwrap(), &want.data);
        assert!(d <= 1e-3 * mx, "{arch}: layer.{i} max |Δ| = {d} (max |v| = {mx})");
    }
    eprintln!("{arch}: output max |Δ| = {d:.2e}");
}

#[test]
fn yolov8n_matches_ultralytics() {
    check_arch("yolov8n");
}

#[test]
fn yolo11n_matches_ultralytics() {
    check_arch("yolo11n");
}

#[test]
fn yolo12n_matches_ultralytics() {
    check_arch("yolo12n");
}

#[test]
fn yolov5nu_matches_ultralytics() {
    check_arch("yolov5nu");
}

#[test]
fn yolov10n_matches_ultralytics() {
    check_arch("yolov10n");
}

#[test]
fn yolo26n_matches_ultralytics() {
    check_arch("yolo26n");
}

/// A segmentation checkpoint of Ultralytics (`scripts/seg_reference.py`: a small `-seg` model
/// of `arch`, 3 classes) loaded from `.pt` reproduces Ultralytics' head maps, mask
/// coefficients, prototypes and (NMS heads) decoded output, within the detection tolerances.
fn check_seg(arch: &str) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/seg");
    let device = yolodistill::default_device();
    let m = model::load(dir.join(format!("{arch}-seg.pt")).to_str().unwrap(), None, &device).unwrap_or_else(|e| panic!("{arch}: {e:#}")).model;
    assert!(m.head().mask.is_some(), "{arch}: a segmentation head");
    let (refs, _) = read_tensors(&dir.join(format!("{arch}-seg_ref.safetensors"))).unwrap();
    let get = |k: &str| refs.iter().find(|(n, _)| n == k).map(|(_, t)| t.clone());
    let input = get("input").unwrap();
    let x: Tensor<4> = Tensor::from_data(TensorData::new(input.data.clone(), input.shape.clone()), &device);
    let head = m.forward(x);
    let masks = head.masks.clone().expect("mask outputs");
    let close = |name: &str, got: Vec<f32>, shape: Vec<usize>| {
        let want = get(name).unwrap_or_else(|| panic!("{arch}: no {name}"));
        assert_eq!(shape, want.shape, "{arch}: {name} shape");
        let (d, mx) = common::max_diff(&got, &want.data);
        assert!(d <= 1e-3 * mx.max(1e-6), "{arch}: {name} max |Δ| = {d} (max |v| = {mx})");
        eprintln!("{arch}: {name} max |Δ| = {d:.2e} (max |v| = {mx:.2e})");
    };
    let host3 = |t: Tensor<3>| (t.dims().to_vec(), t.try_into_vec_as::<f32>().unwrap());
    for (name, t) in [("head.boxes", head.one2many.boxes.clone()), ("head.scores", head.one2many.scores.clone()), ("head.mask_coefficient", masks.coeffs.clone())] {
        let (shape, v) = host3(t);
        close(name, v, shape);
    }
    close("protos", masks.protos.clone().try_into_vec_as::<f32>().unwrap(), masks.protos.dims().to_vec());
    if get("output").is_some() {
        // Ultralytics' inference output: decoded boxes and scores, then the mask coefficients
        let (shape, v) = host3(Tensor::cat(vec![m.head().decode(&head), masks.coeffs], 1));
        let want = get("output").unwrap();
        assert_eq!(shape, want.shape, "{arch}: output shape");
        let (d, _) = common::max_diff(&v, &want.data);
        assert!(d <= 1e-3, "{arch}: output max |Δ| = {d}");
    }
}

#[test]
fn yolov8_seg_matches_ultralytics() {
    check_seg("yolov8t");
}

#[test]
fn yolo11_seg_matches_ultralytics() {
    check_seg("yolo11t");
}

#[test]
fn yolo26_seg_matches_ultralytics() {
    check_seg("yolo26t");
}
