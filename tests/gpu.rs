//! The GPU backend against the CPU on the same inputs, through the command the product runs:
//! `cargo test --features wgpu --test gpu` (any Vulkan, Metal or DX12 device; `.ci/run` runs it
//! on Mesa's software Vulkan, lavapipe). The device is `YOLODISTILL_TEST_GPU` (default: the
//! feature's name). Without an adapter the tests fail: this file is only built when a GPU
//! feature was asked for.
#![cfg(any(feature = "wgpu-untuned", feature = "vulkan"))]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use yolodistill::weights::st::read_tensors;

fn gpu() -> String {
    std::env::var("YOLODISTILL_TEST_GPU").unwrap_or_else(|_| if cfg!(feature = "wgpu-untuned") { "wgpu" } else { "vulkan" }.into())
}

/// `yolodistill --device <device> <args>`, its output checked for success.
fn run(device: &str, args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_yolodistill")).args(["--device", device]).args(args).output().unwrap();
    assert!(out.status.success(), "--device {device} {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    out
}

fn json(out: &Output) -> serde_json::Value {
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last().unwrap_or_default()).unwrap_or_else(|e| panic!("{e}: {text}"))
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// The GPU device of this run (chosen once per process; later calls find it chosen).
fn gpu_device() -> burn::tensor::Device {
    let _ = yolodistill::select_device(&gpu());
    let device = yolodistill::default_device();
    assert!(!yolodistill::is_cpu(&device), "YOLODISTILL_DEVICE chose the CPU; this suite compares a GPU with it");
    device
}

/// The BCCD teacher: the shared fixture, or `YOLODISTILL_TEST_TEACHER` where a run cannot carry
/// it (a lent GPU machine takes 64 MiB per call).
fn teacher(shared: &Path) -> PathBuf {
    std::env::var_os("YOLODISTILL_TEST_TEACHER").map(PathBuf::from).unwrap_or_else(|| shared.join("fixtures/teacher_v8s_bccd.pt"))
}

#[test]
fn the_gpu_runs_a_tensor_operation() {
    use burn::tensor::Tensor;
    let device = gpu_device();
    let x = Tensor::<1>::from_floats([1.0, 2.0, 3.0], &device);
    let y = (x.clone() * x).sum();
    assert_eq!(y.into_scalar::<f32>(), 14.0);
}

/// Two steps of yolov8n training from one seed on the CPU and on the GPU, through the command:
/// losses, and every tensor of last.safetensors (weights, EMA, optimizer state). The initial
/// weights are drawn on the CPU on both (crate::device::init_device), as PyTorch draws them.
fn train_both(name: &str, extra: &[&str]) {
    let Some(shared) = common::shared() else { return };
    let dir = common::temp_dir(&format!("gpu-train-{name}"));
    let data = common::bccd_subset(&shared, &dir, 4);
    let runs = dir.join("runs");
    let train = |device: &str| -> PathBuf {
        let mut args = vec![
            "train", "--model", "yolov8n.yaml", "--data", path(&data), "--imgsz", "64", "--batch", "2", "--epochs", "1",
            "--val", "false", "--workers", "1", "--project", path(&runs), "--name", device,
            // an optimizer step after each batch (not one per 64 images), so both steps update the weights
            "--nbs", "2",
            // SGD: AdamW's first step moves each weight by ±lr whatever its gradient's size, so a gradient
            // that is rounding noise on both devices (zero in exact arithmetic) would move by 2·lr apart
            "--optimizer", "SGD",
        ];
        args.extend_from_slice(extra);
        run(device, &args);
        runs.join(device)
    };
    let (cpu, gpu_run) = (train("cpu"), train(&gpu()));
    let losses = |d: &Path| {
        let r = yolodistill::report::Results::load(&d.join("results.csv")).unwrap();
        r.columns.iter().filter(|c| c.starts_with("train/")).map(|c| (c.clone(), r.column(c).unwrap()[0] as f32)).collect::<Vec<_>>()
    };
    let (lc, lg) = (losses(&cpu), losses(&gpu_run));
    eprintln!("{name}: cpu {lc:?}\n{name}: gpu {lg:?}");
    assert_eq!(lc.len(), lg.len());
    for ((n, a), (_, b)) in lc.iter().zip(&lg) {
        assert!(a.is_finite() && (a - b).abs() <= LOSS_TOL * a.abs().max(1e-3), "{name}: {n} cpu {a} gpu {b}");
    }
    let weights = |d: &Path| read_tensors(&d.join("weights/last.safetensors")).unwrap().0;
    let (wc, wg) = (weights(&cpu), weights(&gpu_run));
    assert_eq!(wc.len(), wg.len());
    // Optimizer state (momentum buffers, pending gradients) holds single steps' gradients; the
    // weights (model, EMA, the distiller's adapters) hold what the run produces.
    let is_state = |n: &str| ["state.m.", "state.v.", "state.grad."].iter().any(|p| n.starts_with(p));
    // A tensor near zero on both devices (a BatchNorm bias two small steps from 0, an adapter's
    // bias gradient: zero in exact arithmetic, since CWD's spatial softmax ignores a per-channel
    // shift) is measured against a floor of 1e-4 of the largest value of its kind.
    let largest = |state: bool| wc.iter().filter(|(n, _)| is_state(n) == state).map(|(_, t)| common::max_diff(&t.data, &t.data).1).fold(0f32, f32::max);
    let floors = [largest(false) * 1e-4, largest(true) * 1e-4];
    let mut worst = [(0f32, String::new()), (0f32, String::new())];
    for ((n, a), (m, b)) in wc.iter().zip(&wg) {
        assert_eq!(n, m);
        let kind = is_state(n) as usize;
        let (d, mx) = common::max_diff(&b.data, &a.data);
        let rel = d / mx.max(floors[kind]);
        if rel > worst[kind].0 {
            worst[kind] = (rel, n.clone());
        }
    }
    eprintln!("{name}: weights max |Δ|/max|w| = {:.2e} ({}), optimizer state {:.2e} ({})", worst[0].0, worst[0].1, worst[1].0, worst[1].1);
    assert!(worst[0].0 <= WEIGHT_TOL, "{name}: weights {} differ by {:.2e} of their largest value", worst[0].1, worst[0].0);
    assert!(worst[1].0 <= OPTIMIZER_STATE_TOL, "{name}: optimizer state {} differs by {:.2e} of its largest value", worst[1].1, worst[1].0);
}

/// One training step's losses and gradients (yolov8n, random weights from one seed, a 2-image batch
/// of 64 px noise with three boxes, common::noise_batch), through the trainer's own `forward_backward`, on `device`;
/// assigned on the device or on the host.
fn one_step(file: &Path, device: &burn::tensor::Device, on_device: bool) -> (Vec<(String, f64)>, Vec<(String, Vec<f32>)>) {
    use yolodistill::loss::LossConfig;
    use yolodistill::train::optim::GradStore;
    use yolodistill::train::{forward_backward, make_trainable, StepPos};
    let mut model = yolodistill::model::load(path(file), None, device).unwrap().model;
    make_trainable(&mut model);
    let head = model.head();
    let mut cfg = LossConfig::new(3, head.reg_max, head.strides.clone());
    cfg.on_device = on_device;
    let batch = common::noise_batch();
    let pos = StepPos { epoch: 0, epochs: 1, batch: 0, batches: 1 };
    let mut grads = GradStore::default();
    let items = forward_backward(&mut model, &cfg, &batch, &device.clone().autodiff(), &[], None, None, pos, &mut grads, false).read();
    let mut g: Vec<(String, Vec<f32>)> = grads.grads.into_iter().map(|(n, t)| (n, t.try_into_vec_as::<f32>().unwrap())).collect();
    g.sort_by(|a, b| a.0.cmp(&b.0));
    (items, g)
}

#[test]
fn one_training_step_matches_the_cpu() {
    let gpu_dev = gpu_device();
    let dir = common::temp_dir("gpu-step");
    let file = weights_file("yolov8n.yaml", &dir);
    for on_device in [false, true] {
        let (li, gi) = one_step(&file, &burn::tensor::Device::flex(), on_device);
        let (lg, gg) = one_step(&file, &gpu_dev, on_device);
        eprintln!("assigned on the device: {on_device}\n  cpu {li:?}\n  gpu {lg:?}");
        for ((n, a), (_, b)) in li.iter().zip(&lg) {
            assert!((a - b).abs() <= LOSS_TOL as f64 * a.abs().max(1e-3), "{n}: cpu {a} gpu {b}");
        }
        let worst = worst_difference("gradients", &gi, &gg, |_| true, WEIGHT_TOL);
        eprintln!("  {} gradients within {worst:.2e} of their largest value", gi.len());
    }
}

/// Loss items of the two steps, relative (GPU reductions sum in another order than the CPU's).
const LOSS_TOL: f32 = 1e-3;
/// Every weight of last.safetensors after two steps, relative to its largest value. The first
/// step's gradients agree within 1.4e-4 (one_training_step_matches_the_cpu); the second step's
/// start from weights a rounding apart, and a BatchNorm scale's gradient on a 2-image batch (a
/// sum that cancels) then differs by up to 2.3e-2 and moves its layer's bias by up to 7.0e-3 of
/// the bias's largest value (lavapipe, session 21).
const WEIGHT_TOL: f32 = 2e-2;
/// Momentum buffers after two steps: the second step's gradients (2.3e-2 measured, above).
const OPTIMIZER_STATE_TOL: f32 = 5e-2;

#[test]
fn training_steps_assigned_on_the_host_match_the_cpu() {
    train_both("host", &["--assign-on", "host"]);
}

#[test]
fn training_steps_assigned_on_the_device_match_the_cpu() {
    train_both("device", &["--assign-on", "device"]);
}

#[test]
fn distilled_steps_match_the_cpu() {
    let Some(shared) = common::shared() else { return };
    let teacher = teacher(&shared);
    train_both("distilled", &["--teacher", path(&teacher), "--distill", "cwd", "--logit", "dense"]);
}

#[test]
fn distilled_steps_with_unlabeled_images_match_the_cpu() {
    let Some(shared) = common::shared() else { return };
    let teacher = teacher(&shared);
    let unlabeled = shared.join("data/bccd/images/val");
    train_both("unlabeled", &["--teacher", path(&teacher), "--distill", "cwd", "--unlabeled", path(&unlabeled), "--unlabeled-ratio", "0.5"]);
}

#[test]
fn val_of_the_bccd_teacher_gives_the_cpus_map() {
    let Some(shared) = common::shared() else { return };
    let dir = common::temp_dir("gpu-val");
    let data = shared.join("data/bccd/data.yaml");
    // the teacher (NMS head) and a trained end-to-end model (one-to-one head, no NMS)
    let e2e = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/yolo26n_bccd.pt");
    for model in [teacher(&shared), e2e] {
        let val = |device: &str| {
            // at 320 px: a quarter of 640's work on lavapipe, the same code path
            let args = ["val", "--model", path(&model), "--data", path(&data), "--imgsz", "320", "--json", "--plots", "false", "--project", path(&dir), "--exist-ok"];
            json(&run(device, &args))
        };
        let (cpu, gpu_val) = (val("cpu"), val(&gpu()));
        for key in ["mAP50", "mAP50-95"] {
            let (a, b) = (cpu[key].as_f64().unwrap(), gpu_val[key].as_f64().unwrap());
            eprintln!("{}: {key}: cpu {a:.6} gpu {b:.6}", model.display());
            assert!((a - b).abs() <= 1e-3, "{}: {key}: cpu {a} gpu {b}", model.display());
        }
    }
}

/// The weights file of `model`: a built-in name (random weights, saved into `dir`) or a file.
fn weights_file(model: &str, dir: &Path) -> PathBuf {
    if !model.ends_with(".yaml") {
        return Path::new(env!("CARGO_MANIFEST_DIR")).join(model);
    }
    let built = yolodistill::model::load(model, Some(3), &burn::tensor::Device::flex()).unwrap().model;
    let file = dir.join("weights.safetensors");
    yolodistill::model::save_safetensors(&built, &file, Default::default()).unwrap();
    file
}

/// Every layer's map and the head's maps of the model in `file` on `device`, cast to `dtype` when
/// given, for a fixed batch of 2 images of 128 px.
fn maps(file: &Path, device: &burn::tensor::Device, dtype: Option<burn::tensor::DType>) -> Vec<(String, Vec<f32>)> {
    use burn::tensor::{Tensor, TensorData};
    let (s, b) = (128, 2);
    let input: Vec<f32> = (0..b * 3 * s * s).map(|i| ((i * 7919) % 255) as f32 / 255.0).collect();
    let mut m = yolodistill::model::load(path(file), None, device).unwrap().model;
    if let Some(dtype) = dtype {
        m.cast(dtype);
    }
    // the model casts its input to its own type
    let x: Tensor<4> = Tensor::from_data(TensorData::new(input, [b, 3, s, s]), device);
    // every layer before the head too: a random model's head maps are mostly its biases
    let taps: Vec<usize> = (0..m.layers.len() - 1).collect();
    let fwd = m.forward_taps(x, &taps, true);
    let head = fwd.head;
    let host = |t: Tensor<3>| t.try_into_vec_as::<f32>().unwrap();
    let mut out: Vec<(String, Vec<f32>)> =
        fwd.taps.into_iter().enumerate().map(|(i, t)| (format!("layer.{i}"), t.try_into_vec_as::<f32>().unwrap())).collect();
    out.extend([("boxes".into(), host(head.one2many.boxes.clone())), ("scores".into(), host(head.one2many.scores.clone()))]);
    if let Some(o) = &head.one2one {
        out.push(("one2one.boxes".into(), host(o.boxes.clone())));
        out.push(("one2one.scores".into(), host(o.scores.clone())));
    }
    if let Some(mk) = &head.masks {
        out.push(("mask_coefficients".into(), host(mk.coeffs.clone())));
        out.push(("protos".into(), mk.protos.clone().try_into_vec_as::<f32>().unwrap()));
    }
    out
}

/// The largest difference of `got` from `want` over the maps named by `keep`, each relative to its
/// map's largest value; panics at the first map beyond `tol`.
fn worst_difference(label: &str, want: &[(String, Vec<f32>)], got: &[(String, Vec<f32>)], keep: impl Fn(&str) -> bool, tol: f32) -> f32 {
    assert_eq!(want.len(), got.len());
    let mut worst = 0f32;
    for ((name, w), (_, g)) in want.iter().zip(got).filter(|((n, _), _)| keep(n)) {
        assert!(w.iter().all(|v| v.is_finite()), "{label}: {name}: the CPU's maps are not finite");
        let (d, mx) = common::max_diff(g, w);
        worst = worst.max(d / mx.max(1e-6));
        assert!(d <= tol * mx.max(1e-6), "{label}: {name} max |Δ| = {d} (max |v| = {mx})");
    }
    worst
}

/// Every head map of `model` (a built-in name or a file) on the GPU against the CPU, from the
/// same weights and input: the per-family parity of tests/parity.rs without its fixtures, so that
/// it runs wherever the GPU is (random weights for the built-ins, trained ones for the files).
fn forward_matches_the_cpu(model: &str) {
    let gpu_dev = gpu_device();
    let dir = common::temp_dir("gpu-forward");
    let file = weights_file(model, &dir);
    let (want, got) = (maps(&file, &burn::tensor::Device::flex(), None), maps(&file, &gpu_dev, None));
    let worst = worst_difference(model, &want, &got, |_| true, 1e-3);
    eprintln!("{model}: {} maps, the largest difference {worst:.2e} of the map's largest value", want.len());
}

#[test]
fn every_family_forward_matches_the_cpu() {
    for model in ["yolov5nu.yaml", "yolov8n.yaml", "yolov10n.yaml", "yolo11n.yaml", "yolo12n.yaml", "yolo26n.yaml"] {
        forward_matches_the_cpu(model);
    }
}

#[test]
fn segmentation_forward_matches_the_cpu() {
    for model in ["yolov8n-seg.yaml", "yolo11n-seg.yaml", "yolo26n-seg.yaml"] {
        forward_matches_the_cpu(model);
    }
}

#[test]
fn trained_models_forward_matches_the_cpu() {
    // trained weights: BatchNorm statistics and activations as in use
    for model in ["tests/data/yolo26n_bccd.pt", "tests/data/yolov10n_bccd.pt", "tests/data/seg/yolo11t-seg.pt"] {
        forward_matches_the_cpu(model);
    }
}

/// Bounds of half-precision inference against the CPU's f32, relative to each head map's largest
/// value: f16 keeps 11 significant bits (8.5e-3 measured on lavapipe, session 21), bf16 8.
const F16_TOL: f32 = 2e-2;
const BF16_TOL: f32 = 5e-2;

/// `--half <half>` on a device without that arithmetic is refused with what the device has.
fn refuses_half(half: &str) {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/yolov10n_bccd.pt");
    let out = Command::new(env!("CARGO_BIN_EXE_yolodistill"))
        .args(["--device", &gpu(), "benchmark", "--model", path(&model), "--imgsz", "64", "--runs", "1", "--half", half])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains(&format!("--half {half}")) && err.contains("it supports"), "{err}");
}

#[test]
fn half_precision_forward_is_close_to_the_cpus_f32() {
    use burn::tensor::DType;
    let gpu_dev = gpu_device();
    let dir = common::temp_dir("gpu-half");
    // trained weights: the scores of a random model say little about rounding
    let file = weights_file("tests/data/yolov10n_bccd.pt", &dir);
    let want = maps(&file, &burn::tensor::Device::flex(), None);
    let head = |name: &str| !name.starts_with("layer.");
    let mut ran = 0;
    for (dtype, tol) in [(DType::F16, F16_TOL), (DType::BF16, BF16_TOL)] {
        if !gpu_dev.supports_dtype(dtype) {
            eprintln!("{dtype:?}: this device has no such arithmetic; not checked");
            refuses_half(if dtype == DType::F16 { "f16" } else { "bf16" });
            continue;
        }
        let got = maps(&file, &gpu_dev, Some(dtype));
        let worst = worst_difference(&format!("{dtype:?}"), &want, &got, head, tol);
        eprintln!("{dtype:?}: head maps within {worst:.2e} of their largest value (bound {tol:.0e})");
        ran += 1;
    }
    // a device without f16 is no GPU anyone trains on: say so rather than pass silently
    assert!(ran > 0, "the device supports neither f16 nor bf16");
}

// Tuned builds only: what a second process finds in YOLODISTILL_CACHE is the first one's autotune
// results (both backends) and compiled SPIR-V (`vulkan`); cubecl persists no compiled WGSL, so the
// untuned `wgpu` build of CI has nothing to find (both of its starts took 1.6-1.9 s on lavapipe).
#[cfg(any(feature = "wgpu", feature = "vulkan"))]
#[test]
fn a_second_process_finds_the_first_ones_kernels() {
    // Times both starts (the choice: time or count): the first process compiles and
    // tunes every kernel of the forward, the second reads the results from YOLODISTILL_CACHE.
    let dir = common::temp_dir("gpu-cache");
    let start = || {
        let t = std::time::Instant::now();
        let out = Command::new(env!("CARGO_BIN_EXE_yolodistill"))
            .args(["--device", &gpu(), "benchmark", "--model", "yolov8n.yaml", "--imgsz", "64", "--runs", "1"])
            .env("YOLODISTILL_CACHE", dir.join("kernels"))
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        t.elapsed().as_secs_f64()
    };
    let (cold, warm) = (start(), start());
    eprintln!("cold start {cold:.1} s, warm start {warm:.1} s");
    assert!(warm * 5.0 < cold, "the second process took {warm:.1} s against the first's {cold:.1} s");
}

/// `vulkan` builds: a Vulkan device this build cannot compile for (cubecl 0.11.3 writes invalid
/// SPIR-V for a device without VK_KHR_workgroup_memory_explicit_layout, such as lavapipe) is
/// refused with an error naming the extension and the alternative; any other device runs a
/// forward. Never a crash.
#[cfg(all(feature = "vulkan", not(feature = "vulkan-spirv-dump")))]
#[test]
fn a_vulkan_device_runs_or_is_refused_by_name() {
    let out = Command::new(env!("CARGO_BIN_EXE_yolodistill"))
        .args(["--device", "vulkan", "benchmark", "--model", "yolov8n.yaml", "--imgsz", "64", "--runs", "1"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    match out.status.code() {
        Some(0) => {}
        Some(1) => assert!(err.contains("VK_KHR_workgroup_memory_explicit_layout") && err.contains("--device wgpu"), "{err}"),
        code => panic!("exit code {code:?} (a signal or a panic):\n{err}"),
    }
}
