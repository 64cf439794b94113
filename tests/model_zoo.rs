//! Built-in YAMLs build Ultralytics' exact architectures: parameter counts
//! (from the official YAML summaries) and GFLOPs within 1%.

use yolodistill::model::{self, flops::gflops};

/// (name, parameters, GFLOPs at 640 or 0.0 when Ultralytics publishes none).
const TARGETS: &[(&str, usize, f64)] = &[
    ("yolov8n.yaml", 3_157_200, 8.9),
    ("yolov8s.yaml", 11_166_560, 28.8),
    ("yolov8m.yaml", 25_902_640, 79.3),
    ("yolov8l.yaml", 43_691_520, 165.7),
    ("yolov8x.yaml", 68_229_648, 258.5),
    ("yolov5nu.yaml", 2_654_816, 7.8),
    ("yolov5su.yaml", 9_153_152, 24.2),
    ("yolov5mu.yaml", 25_111_456, 0.0),
    ("yolov5lu.yaml", 53_225_024, 0.0),
    ("yolov5xu.yaml", 97_276_448, 0.0),
    ("yolo11n.yaml", 2_624_080, 6.6),
    ("yolo11s.yaml", 9_458_752, 21.7),
    ("yolo11m.yaml", 20_114_688, 68.5),
    ("yolo11l.yaml", 25_372_160, 87.6),
    ("yolo11x.yaml", 56_966_176, 196.0),
    ("yolo12n.yaml", 2_602_288, 6.7),
    ("yolo12s.yaml", 9_284_096, 21.7),
    ("yolo12m.yaml", 20_199_168, 68.1),
    ("yolo12l.yaml", 26_450_784, 89.7),
    ("yolo12x.yaml", 59_210_784, 200.3),
    ("yolo26n.yaml", 2_572_280, 6.1),
    ("yolo26s.yaml", 10_009_784, 22.8),
    ("yolo26m.yaml", 21_896_248, 75.4),
    ("yolo26l.yaml", 26_299_704, 93.8),
    ("yolo26x.yaml", 58_993_368, 209.5),
    ("yolov10n.yaml", 2_775_520, 8.7),
    ("yolov10s.yaml", 8_128_272, 25.1),
    // v10 m/l/x counts are published outside Ultralytics' YAMLs; b has none (our count only).
    ("yolov10m.yaml", 16_576_768, 64.5),
    ("yolov10b.yaml", 20_574_384, 0.0),
    ("yolov10l.yaml", 25_888_688, 127.9),
    ("yolov10x.yaml", 31_808_960, 171.8),
];

#[test]
fn parameter_counts_and_gflops_match_ultralytics() {
    let device = yolodistill::default_device();
    let mut failures = Vec::new();
    for &(name, params, gf) in TARGETS {
        let m = model::load(name, None, &device).unwrap_or_else(|e| panic!("{name}: {e:#}")).model;
        let got = m.param_count();
        let g = gflops(&m, 640);
        eprintln!("{name}: {got} params (want {params}), {g:.2} GFLOPs (want {gf})");
        if got != params {
            failures.push(format!("{name}: {got} parameters, Ultralytics has {params}"));
        }
        if gf > 0.0 && (g - gf).abs() > 0.01 * gf {
            failures.push(format!("{name}: {g:.2} GFLOPs, Ultralytics reports {gf}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn nc_override_changes_only_the_class_outputs() {
    let device = yolodistill::default_device();
    let m = model::load("yolov8s.yaml", Some(3), &device).unwrap().model;
    assert_eq!(m.nc(), 3);
    // Ultralytics' yolov8s with nc = 3 (the BCCD teacher fixture) has 11,136,761 parameters.
    assert_eq!(m.param_count(), 11_136_761);
}

/// A name with an unknown scale letter is refused (it used to build the family's first scale).
#[test]
fn unknown_scale_letters_are_refused() {
    let dev = yolodistill::default_device();
    for bad in ["yolov8q.yaml", "yolo11z.yaml", "yolov5qu.yaml"] {
        let e = format!("{:#}", yolodistill::model::load(bad, Some(3), &dev).err().unwrap_or_else(|| panic!("{bad} loaded")));
        assert!(e.contains("not found") && e.contains("yolov8n.yaml"), "{bad}: {e}");
    }
    for good in ["yolov8s.yaml", "yolov5nu.yaml", "yolo11x.yaml", "yolov8.yaml"] {
        assert!(yolodistill::model::load(good, Some(3), &dev).is_ok(), "{good}");
    }
}
