//! Built-in YAMLs build Ultralytics' exact architectures: the parameter counts and
//! GFLOPs that Ultralytics 8.4.190 reports for the same YAMLs.

use yolodistill::model::{self, flops::gflops};

/// (name, parameters, GFLOPs at 640) as Ultralytics 8.4.190 builds and counts them from the
/// YAML with 80 classes (`scripts/gflops_reference.py` prints them).
const TARGETS: &[(&str, usize, f64)] = &[
    ("yolov8n.yaml", 3_157_200, 8.8550912),
    ("yolov8s.yaml", 11_166_560, 28.8119296),
    ("yolov8m.yaml", 25_902_640, 79.3136640),
    ("yolov8l.yaml", 43_691_520, 165.7346560),
    ("yolov8x.yaml", 68_229_648, 258.5370112),
    ("yolov5nu.yaml", 2_654_816, 7.8388736),
    ("yolov5su.yaml", 9_153_152, 24.2104832),
    ("yolov5mu.yaml", 25_111_456, 64.6027776),
    ("yolov5lu.yaml", 53_225_024, 135.6200448),
    ("yolov5xu.yaml", 97_276_448, 247.3129472),
    ("yolo11n.yaml", 2_624_080, 6.6733184),
    ("yolo11s.yaml", 9_458_752, 21.8363392),
    ("yolo11m.yaml", 20_114_688, 68.6430720),
    ("yolo11l.yaml", 25_372_160, 87.8510592),
    ("yolo11x.yaml", 56_966_176, 196.3150848),
    ("yolo12n.yaml", 2_602_288, 7.6341376),
    ("yolo12s.yaml", 9_284_096, 23.6531200),
    ("yolo12m.yaml", 20_199_168, 71.3478656),
    ("yolo12l.yaml", 26_450_784, 96.2949376),
    ("yolo12x.yaml", 59_210_784, 210.1457408),
    ("yolo26n.yaml", 2_572_280, 6.2396672),
    ("yolo26s.yaml", 10_009_784, 23.0793216),
    ("yolo26m.yaml", 21_896_248, 75.6350976),
    ("yolo26l.yaml", 26_299_704, 94.1582336),
    ("yolo26x.yaml", 58_993_368, 210.0747264),
    ("yolov10n.yaml", 2_775_520, 8.7994112),
    ("yolov10s.yaml", 8_128_272, 25.2277248),
    ("yolov10m.yaml", 16_576_768, 64.6086912),
    ("yolov10b.yaml", 20_574_384, 99.4681344),
    ("yolov10l.yaml", 25_888_688, 127.9894016),
    ("yolov10x.yaml", 31_808_960, 171.9898112),
    // segmentation (Segment, YOLO26's Segment26; eval mode, so without Proto26's semantic branch)
    ("yolov8n-seg.yaml", 3_409_968, 12.1411072),
    ("yolov8s-seg.yaml", 11_821_056, 40.3390976),
    ("yolov8m-seg.yaml", 27_285_968, 104.9772544),
    ("yolov8l-seg.yaml", 45_997_728, 211.0597632),
    ("yolov8x-seg.yaml", 71_827_888, 329.1888128),
    ("yolo11n-seg.yaml", 2_876_848, 9.9593344),
    ("yolo11s-seg.yaml", 10_113_248, 33.3635072),
    ("yolo11m-seg.yaml", 22_420_896, 113.9681792),
    ("yolo11l-seg.yaml", 27_678_368, 133.1761664),
    ("yolo11x-seg.yaml", 62_142_656, 297.8924032),
    ("yolo12n-seg.yaml", 2_855_056, 10.9201536),
    ("yolo12s-seg.yaml", 9_938_592, 35.1802880),
    ("yolo12m-seg.yaml", 22_505_376, 116.6729728),
    ("yolo12l-seg.yaml", 28_756_992, 141.6200448),
    ("yolo12x-seg.yaml", 64_387_264, 311.7230592),
    ("yolo26n-seg.yaml", 3_126_280, 10.6303744),
    ("yolo26s-seg.yaml", 11_505_800, 37.6619008),
    ("yolo26m-seg.yaml", 27_112_072, 132.7808512),
    ("yolo26l-seg.yaml", 31_515_528, 151.3039872),
    ("yolo26x-seg.yaml", 70_693_800, 338.2033408),
];

#[test]
fn parameter_counts_and_gflops_match_ultralytics() {
    let device = yolodistill::default_device();
    let mut failures = Vec::new();
    for &(name, params, gf) in TARGETS {
        let m = model::load(name, None, &device).unwrap_or_else(|e| panic!("{name}: {e:#}")).model;
        let got = m.param_count();
        let g = gflops(&m, 640);
        eprintln!("{name}: {got} params (want {params}), {g:.7} GFLOPs (want {gf})");
        if got != params {
            failures.push(format!("{name}: {got} parameters, Ultralytics has {params}"));
        }
        if (g - gf).abs() > 1e-6 * gf {
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
