//! ONNX export: the written bytes decode to the expected graph (ops, input,
//! output, opset, metadata), and, where the reference environment exists, onnxruntime
//! computes our forward for every family and the end-to-end (`--nms false`) graphs give
//! Ultralytics' detections. scripts/check_onnx.py adds dynamic sizes,
//! float16 and Ultralytics' outputs.

mod common;

use std::path::Path;

use burn::tensor::{Tensor, TensorData};
use yolodistill::export::onnx::{export_onnx, export_onnx_with, names_repr, summarize, GraphSummary, OnnxOptions, OPSET};
use yolodistill::export::onnx_proto::{read_fields, Msg, Value};
use yolodistill::model;
use yolodistill::weights::st::read_tensors;

fn export(m: &str, imgsz: usize, dynamic: bool) -> (GraphSummary, usize) {
    let device = yolodistill::default_device();
    let mut model = model::load(m, None, &device).unwrap_or_else(|e| panic!("{m}: {e:#}")).model;
    model.fuse();
    let bytes = export_onnx(&model, (imgsz, imgsz), 1, dynamic).unwrap_or_else(|e| panic!("{m}: {e:#}"));
    (summarize(&bytes).unwrap(), model.nc())
}

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

fn check(m: &str, extra_ops: &[&str]) {
    let (g, nc) = export(m, 320, false);
    assert!(g.node_count > 0, "{m}: empty graph");
    assert_eq!(g.node_count, g.op_counts.values().sum::<usize>());
    assert!(g.initializer_count > 0);
    assert_eq!(g.ir_version, 8);
    assert_eq!(g.opsets, vec![(String::new(), OPSET)]);
    assert_eq!(OPSET, 17);
    for op in ["Conv", "Sigmoid", "Mul", "Add", "Sub", "Concat", "Split", "Resize", "Reshape"].iter()
        .chain(extra_ops)
    {
        assert!(g.op_counts.contains_key(*op), "{m}: no {op} node in {:?}", g.op_counts);
    }
    let allowed = [
        "Conv", "Sigmoid", "Mul", "Add", "Sub", "Div", "Concat", "Split", "MaxPool", "Resize", "Reshape", "Softmax", "MatMul",
        "Transpose", "Shape", "Gather",
    ];
    for op in g.op_counts.keys() {
        assert!(allowed.contains(&op.as_str()), "{m}: unexpected op {op} (fused model)");
    }
    assert_eq!(g.inputs, vec![("images".to_string(), s(&["1", "3", "320", "320"]))]);
    // 40² + 20² + 10² = 2100 anchors
    assert_eq!(g.outputs, vec![("output0".to_string(), vec!["1".to_string(), (4 + nc).to_string(), "2100".to_string()])]);
    for k in ["names", "stride", "imgsz", "task", "batch", "description", "author", "version"] {
        assert!(g.metadata.contains_key(k), "{m}: metadata key {k} missing");
    }
    assert_eq!(g.metadata["stride"], "32");
    assert_eq!(g.metadata["imgsz"], "[320, 320]");
    assert_eq!(g.metadata["task"], "detect");
    assert_eq!(g.metadata["batch"], "1");
    assert!(g.metadata["names"].starts_with("{0: '"), "{}", g.metadata["names"]);
}

#[test]
fn yolov8n_yaml() {
    check("yolov8n.yaml", &["MaxPool", "Softmax", "MatMul"]);
    let (g, _) = export("yolov8n.yaml", 320, false);
    assert_eq!(g.outputs[0].1, s(&["1", "84", "2100"]));
}

#[test]
fn yolo11n_yaml() {
    // C2PSA attention adds Transpose
    check("yolo11n.yaml", &["MaxPool", "Softmax", "MatMul", "Transpose"]);
}

#[test]
fn dynamic_sizes_are_symbolic() {
    let (g, _) = export("yolo11n.yaml", 320, true);
    assert_eq!(g.inputs[0].1, s(&["batch", "3", "height", "width"]));
    assert_eq!(g.outputs[0].1, s(&["batch", "84", "anchors"]));
    // anchors are computed in the graph
    for op in ["Shape", "Gather", "Cast", "Range"] {
        assert!(g.op_counts.contains_key(op), "no {op} in {:?}", g.op_counts);
    }
}

#[test]
fn half_graph_is_float16_throughout() {
    let mut model = model::load("yolov8n.yaml", Some(3), &yolodistill::default_device()).unwrap().model;
    model.fuse();
    let full = summarize(&export_onnx(&model, (64, 64), 1, true).unwrap()).unwrap();
    let bytes = export_onnx_with(&model, &OnnxOptions { dynamic: true, half: true, ..OnnxOptions::new((64, 64)) }).unwrap();
    let half = summarize(&bytes).unwrap();
    assert_eq!(full.io_types, vec![1, 1]);
    assert_eq!(half.io_types, vec![10, 10], "input and output are float16");
    // the in-graph anchors are computed in float32 (Range has no float16) and cast once
    assert_eq!(half.node_count, full.node_count + 2);
    // every other float initializer is float16; Resize's scales are float by the standard
    let resizes = half.op_counts.get("Resize").copied().unwrap_or(0);
    let anchor_consts = 3 + 3; // 0, 1, 0.5 and one stride per level
    assert_eq!(half.initializer_types.get(&1).copied().unwrap_or(0), resizes + anchor_consts, "{:?}", half.initializer_types);
    assert!(half.initializer_types[&10] > 100);
    let weights_full: usize = full.initializer_types[&1];
    assert_eq!(half.initializer_types[&10] + resizes + anchor_consts, weights_full);
}

#[test]
fn bad_size_is_refused() {
    let device = yolodistill::default_device();
    let model = model::load("yolov8n.yaml", None, &device).unwrap().model;
    assert!(export_onnx(&model, (330, 330), 1, false).is_err());
}

#[test]
fn names_as_python_dict() {
    assert_eq!(names_repr(&["RBC".into(), "WBC".into()]), "{0: 'RBC', 1: 'WBC'}");
    assert_eq!(names_repr(&["it's".into()]), "{0: \"it's\"}");
}

#[test]
fn protobuf_roundtrip() {
    let mut inner = Msg::new();
    inner.string(1, "x").int(2, -1);
    let mut m = Msg::new();
    m.int(1, 300).msg(7, &inner).ints(8, &[1, 2]).packed_ints(9, &[3, 150]).float(2, 1.5);
    let f = read_fields(&m.buf).unwrap();
    assert_eq!(f.iter().map(|(n, _)| *n).collect::<Vec<_>>(), vec![1, 7, 8, 8, 9, 2]);
    assert_eq!(f[0].1.as_int().unwrap(), 300);
    let g = read_fields(f[1].1.as_bytes().unwrap()).unwrap();
    assert_eq!(g[0].1.as_str().unwrap(), "x");
    assert_eq!(g[1].1.as_int().unwrap(), -1);
    assert_eq!(f[2].1.ints().unwrap(), vec![1]);
    assert_eq!(f[4].1.ints().unwrap(), vec![3, 150]);
    assert!(matches!(f[5].1, Value::Fixed32(v) if f32::from_bits(v) == 1.5));
    assert!(read_fields(&[0x0a, 0x05, 0x01]).is_err(), "truncated field accepted");
}

/// Every fixture checkpoint exports. With YOLODISTILL_DUMP=<dir> it also writes
/// our decoded output on the fixture input (raw f32 LE, `<arch>_ours.bin`)
/// for scripts/check_onnx.py to compare with onnxruntime.
#[test]
fn fixtures() {
    let Some(shared) = common::shared() else { return };
    let dump = std::env::var_os("YOLODISTILL_DUMP").map(std::path::PathBuf::from);
    for arch in ["yolov8n", "yolo11n", "yolov5nu", "yolov10n", "yolo12n", "yolo26n"] {
        let fx = shared.join("fixtures");
        let p = fx.join(format!("{arch}.pt"));
        check(p.to_str().unwrap(), &[]);
        if let Some(dir) = &dump {
            let device = yolodistill::default_device();
            let mut m = model::load(p.to_str().unwrap(), None, &device).unwrap().model;
            m.fuse();
            let (refs, _) = read_tensors(&fx.join(format!("{arch}_ref.safetensors"))).unwrap();
            let input = refs.iter().find(|(n, _)| n == "input").map(|(_, t)| t.clone()).unwrap();
            let x: Tensor<4> = Tensor::from_data(TensorData::new(input.data, input.shape), &device);
            let y = m.predict(x).try_into_vec_as::<f32>().unwrap();
            let bytes: Vec<u8> = y.iter().flat_map(|v| v.to_le_bytes()).collect();
            std::fs::write(dir.join(format!("{arch}_ours.bin")), bytes).unwrap();
        }
    }
}

fn cli(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_yolodistill")).args(args).output().unwrap()
}

#[test]
fn cli_exports_onnx_and_fused_safetensors() {
    let dir = common::temp_dir("export-cli");
    let onnx = dir.join("m.onnx");
    let o = cli(&["export", "--model", "yolov8n.yaml", "--imgsz", "64", "--batch", "2", "--output", onnx.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let g = summarize(&std::fs::read(&onnx).unwrap()).unwrap();
    assert_eq!(g.inputs[0].1, s(&["2", "3", "64", "64"]));
    assert_eq!(g.outputs[0].1, s(&["2", "84", "84"]));
    assert_eq!(g.metadata["batch"], "2");

    let o = cli(&["export", "--model", "yolov8n.yaml", "--imgsz", "64", "--half", "--output", onnx.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(summarize(&std::fs::read(&onnx).unwrap()).unwrap().io_types, vec![10, 10]);
    let o = cli(&["export", "--model", "yolov8n.yaml", "--half", "--format", "safetensors", "--output", onnx.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--half applies to --format onnx"));
    // --nms: `true` (NMS in the graph) is refused; `false` on a model without a one-to-one head
    // warns and exports the usual graph; a value that is not a bool names the option
    let o = cli(&["export", "--model", "yolov8n.yaml", "--imgsz", "64", "--nms", "true", "--output", onnx.to_str().unwrap()]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("--nms true (NMS inside the graph) is not supported"));
    let o = cli(&["export", "--model", "yolov8n.yaml", "--imgsz", "64", "--nms", "false", "--output", onnx.to_str().unwrap()]);
    assert!(o.status.success() && String::from_utf8_lossy(&o.stderr).contains("no one-to-one head; --nms false is ignored"));
    assert_eq!(summarize(&std::fs::read(&onnx).unwrap()).unwrap().outputs[0].1, s(&["1", "84", "84"]));
    let o = cli(&["export", "--model", "yolov8n.yaml", "--nms", "maybe"]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("invalid value 'maybe' for '--nms"));

    // fused safetensors: loads back fused and predicts what the fused model predicts
    let st = dir.join("m.safetensors");
    let o = cli(&["export", "--model", "yolov8n.yaml", "--format", "safetensors", "--output", st.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let device = yolodistill::default_device();
    assert!(model::load(st.to_str().unwrap(), None, &device).unwrap().model.fused);

    let m = model::load("yolov8n.yaml", None, &device).unwrap().model;
    yolodistill::export::export_safetensors_fused(&m, &st).unwrap();
    let back = model::load(st.to_str().unwrap(), None, &device).unwrap().model;
    assert!(back.fused && !m.fused);
    let x = Tensor::<4>::random([1, 3, 64, 64], burn::tensor::Distribution::Uniform(0.0, 1.0), &device);
    let a = m.predict(x.clone()).try_into_vec_as::<f32>().unwrap();
    let b = back.predict(x).try_into_vec_as::<f32>().unwrap();
    let (d, mx) = common::max_diff(&b, &a);
    assert!(d <= 1e-4 * mx.max(1.0), "fused safetensors differs: {d} (max {mx})");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The reference environment's python with onnxruntime (`../shared/tools/ref-env.sh` makes it),
/// or None: it is a dev-only tool, so the check is skipped without it.
fn onnxruntime_python() -> Option<std::path::PathBuf> {
    let dir = std::env::var_os("REF_ENV").map(std::path::PathBuf::from).or_else(|| {
        let cache = std::env::var_os("XDG_CACHE_HOME").map(std::path::PathBuf::from).or_else(|| Some(std::path::PathBuf::from(std::env::var_os("HOME")?).join(".cache")))?;
        Some(cache.join("yolodistill-ref"))
    })?;
    let py = dir.join("bin/python");
    let ok = std::process::Command::new(&py).args(["-c", "import onnxruntime"]).output().is_ok_and(|o| o.status.success());
    ok.then_some(py)
}

/// Runs `onnx` in onnxruntime on `input` (shape `shape`) and returns `output0`, flattened.
fn onnxruntime_run(py: &Path, onnx: &Path, input: &[f32], shape: &[usize], dir: &Path) -> Vec<f32> {
    onnxruntime_output(py, onnx, input, shape, dir, "output0")
}

/// Runs `onnx` in onnxruntime on `input` (shape `shape`) and returns its output `name`, flattened.
fn onnxruntime_output(py: &Path, onnx: &Path, input: &[f32], shape: &[usize], dir: &Path, name: &str) -> Vec<f32> {
    let raw: Vec<u8> = input.iter().flat_map(|x| x.to_le_bytes()).collect();
    std::fs::write(dir.join("input.bin"), raw).unwrap();
    let shape: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let script = format!(
        "import numpy as np, onnxruntime as ort\n\
         s = ort.InferenceSession('{}', providers=['CPUExecutionProvider'])\n\
         x = np.fromfile('{}', dtype=np.float32).reshape({})\n\
         s.run(['{}'], {{'images': x}})[0].astype(np.float32).tofile('{}')\n",
        onnx.display(),
        dir.join("input.bin").display(),
        shape.join(", "),
        name,
        dir.join("ort.bin").display()
    );
    let out = std::process::Command::new(py).args(["-c", &script]).output().unwrap();
    assert!(out.status.success(), "{}: onnxruntime failed: {}", onnx.display(), String::from_utf8_lossy(&out.stderr));
    std::fs::read(dir.join("ort.bin")).unwrap().chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect()
}

/// Every family's fixture checkpoint, exported and run by onnxruntime on its fixture input,
/// gives our fused forward's output within 1e-4·max(1, |v|).
#[test]
fn onnxruntime_computes_our_forward_for_every_family() {
    let Some(shared) = common::shared() else { return };
    let Some(py) = onnxruntime_python() else {
        eprintln!("notice: no reference environment with onnxruntime (../shared/tools/ref-env.sh); skipping");
        return;
    };
    let dir = common::temp_dir("onnx-ort");
    let device = yolodistill::default_device();
    for arch in ["yolov8n", "yolov5nu", "yolo11n", "yolo12n", "yolov10n", "yolo26n"] {
        let fx = shared.join("fixtures");
        let mut m = model::load(fx.join(format!("{arch}.pt")).to_str().unwrap(), None, &device).unwrap().model;
        m.fuse();
        let (refs, _) = read_tensors(&fx.join(format!("{arch}_ref.safetensors"))).unwrap();
        let input = refs.iter().find(|(n, _)| n == "input").map(|(_, t)| t.clone()).unwrap();
        let (h, w) = (input.shape[2], input.shape[3]);
        let onnx = dir.join(format!("{arch}.onnx"));
        std::fs::write(&onnx, export_onnx(&m, (h, w), 1, false).unwrap()).unwrap();
        let x: Tensor<4> = Tensor::from_data(TensorData::new(input.data.clone(), input.shape.clone()), &device);
        let ours = m.predict(x).try_into_vec_as::<f32>().unwrap();
        let theirs = onnxruntime_run(&py, &onnx, &input.data, &input.shape, &dir);
        assert_eq!(theirs.len(), ours.len(), "{arch}: output sizes");
        let worst = ours.iter().zip(&theirs).map(|(a, b)| (a - b).abs() / a.abs().max(1.0)).fold(0f32, f32::max);
        eprintln!("{arch}: onnxruntime vs our forward, worst |Δ|/max(1, |v|) = {worst:.2e} over {} values", ours.len());
        assert!(worst <= 1e-4, "{arch}: onnxruntime differs from our forward by {worst:.2e}");
    }
}

/// The end-to-end graph (`--nms false`: one-to-one head and top-k in the graph, output0
/// [1, 300, 6]) of the Ultralytics-trained yolov10n and yolo26n (`tests/data/<arch>_bccd.pt`),
/// run by onnxruntime on a letterboxed BCCD image, gives Ultralytics' 300 detections
/// (`tests/data/end2end_ref.safetensors`) within 1e-3, with fixed and with dynamic sizes.
#[test]
fn onnxruntime_runs_the_end_to_end_graph() {
    let Some(py) = onnxruntime_python() else {
        eprintln!("notice: no reference environment with onnxruntime (../shared/tools/ref-env.sh); skipping");
        return;
    };
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data");
    let (refs, _) = read_tensors(&data.join("end2end_ref.safetensors")).unwrap();
    let get = |name: &str| refs.iter().find(|(n, _)| n == name).map(|(_, t)| t.clone()).unwrap_or_else(|| panic!("no {name}"));
    let dir = common::temp_dir("onnx-e2e");
    let device = yolodistill::default_device();
    for arch in ["yolov10n", "yolo26n"] {
        let mut m = model::load(data.join(format!("{arch}_bccd.pt")).to_str().unwrap(), None, &device).unwrap().model;
        m.fuse();
        let (input, want) = (get(&format!("{arch}.input")), get(&format!("{arch}.topk")));
        let (h, w) = (input.shape[2], input.shape[3]);
        for dynamic in [false, true] {
            let opts = OnnxOptions { dynamic, end2end: true, ..OnnxOptions::new((h, w)) };
            let bytes = export_onnx_with(&m, &opts).unwrap();
            let g = summarize(&bytes).unwrap();
            let dims = if dynamic { s(&["batch", "detections", "6"]) } else { s(&["1", "300", "6"]) };
            assert_eq!(g.outputs, vec![("output0".to_string(), dims)], "{arch}");
            assert_eq!(g.metadata.get("end2end").map(String::as_str), Some("True"));
            assert!(g.op_counts.contains_key("TopK") && !g.op_counts.contains_key("NonMaxSuppression"));
            let onnx = dir.join(format!("{arch}_e2e.onnx"));
            std::fs::write(&onnx, bytes).unwrap();
            let theirs = onnxruntime_run(&py, &onnx, &input.data, &input.shape, &dir);
            assert_eq!(theirs.len(), 300 * 6, "{arch}");
            let rows: Vec<[f32; 6]> = theirs.chunks_exact(6).map(|r| r.try_into().unwrap()).collect();
            let what = format!("{arch} end-to-end ONNX{}", if dynamic { " (dynamic)" } else { "" });
            let worst = common::same_top_k(&what, &rows, &want.data);
            eprintln!("{what}: onnxruntime vs Ultralytics, worst |Δ|/max(1, |v|) {worst:.2e}");
            assert!(worst <= 1e-3, "{what}: differs from Ultralytics by {worst:.2e}");
        }
    }
}

/// A segmentation model's graph (the small `-seg` fixtures of `tests/data/seg`): `output0` holds the
/// decoded boxes, the scores and the 32 mask coefficients per anchor, `output1` the prototypes at a
/// quarter of the input size, as Ultralytics exports them; the task is `segment`. The end-to-end
/// export of a segmentation model is refused by name.
#[test]
fn segmentation_graph_has_coefficients_and_prototypes() {
    let device = yolodistill::default_device();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/seg");
    for arch in ["yolov8t", "yolo11t", "yolo26t"] {
        let mut m = model::load(dir.join(format!("{arch}-seg.pt")).to_str().unwrap(), None, &device).unwrap().model;
        m.fuse();
        let g = summarize(&export_onnx(&m, (128, 128), 1, false).unwrap()).unwrap();
        // 16² + 8² + 4² = 336 anchors; 4 + 3 classes + 32 coefficients
        assert_eq!(g.outputs, vec![("output0".to_string(), s(&["1", "39", "336"])), ("output1".to_string(), s(&["1", "32", "32", "32"]))], "{arch}");
        assert_eq!(g.metadata["task"], "segment");
        assert!(g.op_counts.contains_key("ConvTranspose"), "{arch}: {:?}", g.op_counts);
    }
    let m = model::load(dir.join("yolo26t-seg.pt").to_str().unwrap(), None, &device).unwrap().model;
    let e = export_onnx_with(&m, &OnnxOptions { end2end: true, ..OnnxOptions::new((128, 128)) }).unwrap_err().to_string();
    assert!(e.contains("segmentation model") && e.contains("--nms false"), "{e}");
}

/// onnxruntime runs the segmentation graphs and gives our fused forward: `output0` against our
/// decoded output with the mask coefficients, `output1` against our prototypes.
#[test]
fn onnxruntime_computes_our_segmentation_forward() {
    let Some(py) = onnxruntime_python() else {
        eprintln!("notice: no reference environment with onnxruntime (../shared/tools/ref-env.sh); skipping");
        return;
    };
    let tmp = common::temp_dir("onnx-ort-seg");
    let device = yolodistill::default_device();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/seg");
    for arch in ["yolov8t", "yolo11t", "yolo26t"] {
        let mut m = model::load(dir.join(format!("{arch}-seg.pt")).to_str().unwrap(), None, &device).unwrap().model;
        m.fuse();
        let (refs, _) = read_tensors(&dir.join(format!("{arch}-seg_ref.safetensors"))).unwrap();
        let input = refs.iter().find(|(n, _)| n == "input").map(|(_, t)| t.clone()).unwrap();
        let onnx = tmp.join(format!("{arch}.onnx"));
        std::fs::write(&onnx, export_onnx(&m, (128, 128), 1, false).unwrap()).unwrap();
        let x: Tensor<4> = Tensor::from_data(TensorData::new(input.data.clone(), input.shape.clone()), &device);
        let head = m.forward(x);
        let masks = head.masks.clone().unwrap();
        let output0 = Tensor::cat(vec![m.head().decode(&head), masks.coeffs], 1).try_into_vec_as::<f32>().unwrap();
        let protos = masks.protos.try_into_vec_as::<f32>().unwrap();
        for (name, ours) in [("output0", output0), ("output1", protos)] {
            let theirs = onnxruntime_output(&py, &onnx, &input.data, &input.shape, &tmp, name);
            assert_eq!(theirs.len(), ours.len(), "{arch} {name}: sizes");
            let worst = ours.iter().zip(&theirs).map(|(a, b)| (a - b).abs() / a.abs().max(1.0)).fold(0f32, f32::max);
            eprintln!("{arch} {name}: onnxruntime vs our forward, worst |Δ|/max(1, |v|) = {worst:.2e} over {} values", ours.len());
            assert!(worst <= 1e-4, "{arch} {name}: onnxruntime differs from our forward by {worst:.2e}");
        }
    }
    let _ = std::fs::remove_dir_all(&tmp);
}
