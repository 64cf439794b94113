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
