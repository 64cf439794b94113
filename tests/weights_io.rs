//! Safetensors round trip and clear errors for bad model inputs.

mod common;

use burn::tensor::{Distribution, Tensor};
use yolodistill::model;

#[test]
fn safetensors_round_trip_is_bit_exact() {
    let Some(shared) = common::shared() else { return };
    let device = yolodistill::default_device();
    let pt = shared.join("fixtures/yolo11n.pt");
    let m = model::load(pt.to_str().unwrap(), None, &device).unwrap().model;
    let dir = common::temp_dir("roundtrip");
    let file = dir.join("m.safetensors");
    model::save_safetensors(&m, &file, Default::default()).unwrap();
    let back = model::load(file.to_str().unwrap(), None, &device).unwrap().model;
    assert_eq!(back.names, m.names);
    assert_eq!(back.spec.layers, m.spec.layers);
    let x = Tensor::<4>::random([1, 3, 64, 96], Distribution::Uniform(0.0, 1.0), &device);
    let a = m.predict(x.clone()).try_into_vec_as::<f32>().unwrap();
    let b = back.predict(x).try_into_vec_as::<f32>().unwrap();
    assert!(!a.is_empty() && a.len() == b.len(), "output lengths {} and {}", a.len(), b.len());
    assert!(a.iter().zip(&b).all(|(p, q)| p.to_bits() == q.to_bits()), "outputs differ after a round trip");
}

#[test]
fn yaml_models_round_trip_with_their_class_count() {
    let device = yolodistill::default_device();
    let m = model::load("yolov8n.yaml", Some(3), &device).unwrap().model;
    let tmp = common::temp_dir("roundtrip-yaml");
    let file = tmp.join("v8n.safetensors");
    model::save_safetensors(&m, &file, Default::default()).unwrap();
    let back = model::load(file.to_str().unwrap(), None, &device).unwrap().model;
    assert_eq!(back.nc(), 3);
    assert_eq!(back.param_count(), m.param_count());
}

fn load_err(m: &str) -> String {
    match model::load(m, None, &yolodistill::default_device()) {
        Ok(_) => panic!("{m} should not load"),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn missing_file_is_named() {
    let e = load_err("/nonexistent/model.pt");
    assert!(e.contains("/nonexistent/model.pt"), "{e}");
    let e = load_err("yolov99z.yaml");
    assert!(e.contains("not found"), "{e}");
}

#[test]
fn truncated_checkpoint_is_rejected() {
    let Some(shared) = common::shared() else { return };
    let bytes = std::fs::read(shared.join("fixtures/yolov8n.pt")).unwrap();
    let dir = common::temp_dir("truncated");
    let f = dir.join("cut.pt");
    std::fs::write(&f, &bytes[..bytes.len() / 2]).unwrap();
    let e = load_err(f.to_str().unwrap());
    assert!(e.contains("cut.pt") && e.contains("not a PyTorch checkpoint"), "{e}");
    let f = dir.join("text.pt");
    std::fs::write(&f, b"hello").unwrap();
    let e = load_err(f.to_str().unwrap());
    assert!(e.contains("text.pt"), "{e}");
}

#[test]
fn unknown_module_names_the_layer() {
    let dir = common::temp_dir("badyaml");
    let f = dir.join("bad.yaml");
    std::fs::write(
        &f,
        "nc: 2\nbackbone:\n  - [-1, 1, Conv, [16, 3, 2]]\n  - [-1, 1, FancyBlock, [32]]\nhead:\n  - [[1], 1, Detect, [nc]]\n",
    )
    .unwrap();
    let e = load_err(f.to_str().unwrap());
    assert!(e.contains("bad.yaml") && e.contains("layer 1") && e.contains("FancyBlock"), "{e}");
    let f = dir.join("broken.yaml");
    std::fs::write(&f, "nc: 2\nbackbone: [\n").unwrap();
    let e = load_err(f.to_str().unwrap());
    assert!(e.contains("broken.yaml") && e.contains("line"), "{e}");
}

#[test]
fn weights_of_another_architecture_name_the_first_bad_tensor() {
    let Some(shared) = common::shared() else { return };
    let device = yolodistill::default_device();
    // yolo11n weights under a yolov8n description
    let v8 = model::load("yolov8n.yaml", None, &device).unwrap().model;
    let m = model::load(shared.join("fixtures/yolo11n.pt").to_str().unwrap(), None, &device).unwrap().model;
    let y11 = common::temp_dir("otherarch");
    model::save_safetensors(&m, &y11.join("y11.safetensors"), Default::default()).unwrap();
    let (tensors, _) = yolodistill::weights::st::read_tensors(&y11.join("y11.safetensors")).unwrap();
    let tmp = common::temp_dir("otherarch2");
    let f = tmp.join("mixed.safetensors");
    yolodistill::weights::st::save(
        &f,
        &yolodistill::weights::st::StModel {
            yaml: v8.spec.yaml.clone(),
            names: v8.names.clone(),
            tensors,
            extra: Default::default(),
            state: Vec::new(),
        },
    )
    .unwrap();
    let e = load_err(f.to_str().unwrap());
    assert!(e.contains("mixed.safetensors") && e.contains("model.2.") && e.contains("shape"), "{e}");
}

#[test]
fn folded_batchnorm_keeps_outputs_and_round_trips() {
    let Some(shared) = common::shared() else { return };
    let device = yolodistill::default_device();
    let m = model::load(shared.join("fixtures/yolo12n.pt").to_str().unwrap(), None, &device).unwrap().model;
    let mut fused = m.clone();
    fused.fuse();
    assert!(fused.param_count() < m.param_count());
    let x = Tensor::<4>::random([1, 3, 64, 64], Distribution::Uniform(0.0, 1.0), &device);
    let a = m.predict(x.clone()).try_into_vec_as::<f32>().unwrap();
    let b = fused.predict(x.clone()).try_into_vec_as::<f32>().unwrap();
    let (d, _) = common::max_diff(&b, &a);
    assert!(d < 1e-3, "fused output differs by {d}");
    let tmp = common::temp_dir("fused");
    let file = tmp.join("f.safetensors");
    model::save_safetensors(&fused, &file, Default::default()).unwrap();
    let back = model::load(file.to_str().unwrap(), None, &device).unwrap().model;
    assert!(back.fused);
    let c = back.predict(x).try_into_vec_as::<f32>().unwrap();
    assert!(!b.is_empty() && b.len() == c.len(), "output lengths {} and {}", b.len(), c.len());
    assert!(b.iter().zip(&c).all(|(p, q)| p.to_bits() == q.to_bits()));
}

/// The size a model was trained at travels with it (Ultralytics' `train_args["imgsz"]` in a
/// `.pt`, our `imgsz` metadata in a safetensors file), and `predict`, `val` and `export`
/// default to it as Ultralytics does: the BCCD teacher was trained at 320.
#[test]
fn the_training_image_size_is_the_default_inference_size() {
    let Some(shared) = common::shared() else { return };
    let device = yolodistill::default_device();
    let teacher = shared.join("fixtures/teacher_v8s_bccd.pt");
    let m = model::load(teacher.to_str().unwrap(), None, &device).unwrap().model;
    assert_eq!(m.train_imgsz, Some(320));
    let dir = common::temp_dir("train-imgsz");
    let file = dir.join("t.safetensors");
    model::save_safetensors(&m, &file, Default::default()).unwrap();
    assert_eq!(model::load(file.to_str().unwrap(), None, &device).unwrap().model.train_imgsz, Some(320));
    let built = model::load("yolov8n.yaml", None, &device).unwrap().model;
    assert_eq!(built.train_imgsz, None);
    assert_eq!(yolodistill::options::inference_size(None, m.train_imgsz), 320);
    assert_eq!(yolodistill::options::inference_size(Some(640), m.train_imgsz), 640);
    assert_eq!(yolodistill::options::inference_size(None, None), 640);
    // export without --imgsz makes a 320 graph
    let onnx = dir.join("t.onnx");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_yolodistill"))
        .args(["export", "--model", file.to_str().unwrap(), "--output", onnx.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let g = yolodistill::export::onnx::summarize(&std::fs::read(&onnx).unwrap()).unwrap();
    assert_eq!(g.metadata.get("imgsz").map(String::as_str), Some("[320, 320]"));
}
