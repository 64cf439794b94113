//! Polygon labels as Ultralytics 8.4.190 handles them: resampled when loaded, moved by the
//! augmentation's matrix with their boxes from the part inside the image, and rasterised into
//! overlap-form instance masks (fixtures of `scripts/segments_reference.py` and
//! `scripts/mask_reference.py`).

use std::path::Path;

use yolodistill::data::segments::{resample, transform, RESAMPLED_POINTS};
use yolodistill::weights::st::read_tensors;

fn fixture(name: &str) -> impl Fn(&str) -> (Vec<f32>, Vec<usize>) {
    let (fx, _) = read_tensors(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/seg").join(name)).unwrap();
    move |k: &str| fx.iter().find(|(n, _)| n == k).map(|(_, t)| (t.data.clone(), t.shape.clone())).unwrap_or_else(|| panic!("no {k}"))
}

/// Polygons from concatenated points and per-polygon lengths.
fn polygons(points: &[f32], lengths: &[f32]) -> Vec<Vec<[f32; 2]>> {
    let mut out = Vec::new();
    let mut at = 0;
    for &n in lengths {
        let n = n as usize;
        out.push((at..at + n).map(|i| [points[2 * i], points[2 * i + 1]]).collect());
        at += n;
    }
    out
}

/// Resampling keeps Ultralytics' 1000 points (the vertices among them), and the affine and the
/// perspective matrices move them and make their boxes as Ultralytics does, for polygons the
/// result's border cuts too.
#[test]
fn polygons_resample_and_move_as_ultralytics_does() {
    let get = fixture("segments_ref.safetensors");
    let polys = polygons(&get("points").0, &get("lengths").0);
    let (want, _) = get("resampled");
    let ours: Vec<Vec<[f32; 2]>> = polys.iter().map(|p| resample(p, RESAMPLED_POINTS)).collect();
    let flat: Vec<f32> = ours.iter().flatten().flatten().copied().collect();
    assert_eq!(flat.len(), want.len());
    let worst = flat.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(worst <= 1e-3, "resampled points differ by up to {worst} px");
    let (mut cut, mut worst_box) = (0, 0f32);
    for k in 0..2 {
        let (m, _) = get(&format!("m{k}"));
        let m: [[f64; 3]; 3] = std::array::from_fn(|r| std::array::from_fn(|c| m[3 * r + c] as f64));
        let (boxes, _) = get(&format!("m{k}.boxes"));
        let (segs, _) = get(&format!("m{k}.segments"));
        for (i, p) in ours.iter().enumerate() {
            let (moved, b) = transform(p, &m, (480.0, 480.0));
            let wb = &boxes[4 * i..4 * i + 4];
            let worst = b.iter().zip(wb).map(|(a, w)| (a - w).abs()).fold(0f32, f32::max);
            worst_box = worst_box.max(worst);
            assert!(worst <= 1e-3, "m{k} polygon {i}: box {b:?} vs Ultralytics {wb:?}");
            let ws = &segs[2000 * i..2000 * (i + 1)];
            let worst = moved.iter().flatten().zip(ws).map(|(a, w)| (a - w).abs()).fold(0f32, f32::max);
            assert!(worst <= 1e-3, "m{k} polygon {i}: points differ by up to {worst} px");
            // a polygon the border cuts has points moved outside the result
            let project = |q: &[f32; 2], r: usize| {
                let (x, y) = (q[0] as f64, q[1] as f64);
                (m[r][0] * x + m[r][1] * y + m[r][2]) / (m[2][0] * x + m[2][1] * y + m[2][2])
            };
            cut += p.iter().any(|q| !(0.0..=480.0).contains(&project(q, 0)) || !(0.0..=480.0).contains(&project(q, 1))) as usize;
        }
    }
    eprintln!("boxes within {worst_box:.2e} px of Ultralytics'; {cut} of 14 moved polygons cut by the border");
    assert!(cut >= 2, "the border cuts some polygons: {cut}");
}

/// Instance masks from polygons are Ultralytics' (`polygons2masks_overlap`: OpenCV's fillPoly, its
/// bilinear resize, ids by decreasing area), pixel for pixel, on real garbage-set polygons and on
/// drawn ones at ratios 4 and 2 (`scripts/mask_reference.py`).
#[test]
fn instance_masks_from_polygons_match_ultralytics() {
    let (fx, _) = read_tensors(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/seg/mask_ref.safetensors")).unwrap();
    let get = |k: &str| fx.iter().find(|(n, _)| n == k).map(|(_, t)| t.data.clone()).unwrap_or_else(|| panic!("no {k}"));
    let cases: Vec<String> = fx.iter().filter_map(|(n, _)| n.strip_suffix(".ids").map(str::to_string)).collect();
    assert_eq!(cases.len(), 8);
    let mut pixels = 0;
    for c in &cases {
        let (pts, lengths, size) = (get(&format!("{c}.points")), get(&format!("{c}.lengths")), get(&format!("{c}.size")));
        let polygons = polygons(&pts, &lengths);
        let (h, w, ratio) = (size[0] as usize, size[1] as usize, size[2] as usize);
        let (ids, order) = yolodistill::data::masks::overlap_masks(&polygons, (h, w), ratio);
        let want: Vec<u16> = get(&format!("{c}.ids")).iter().map(|&v| v as u16).collect();
        let wrong = ids.iter().zip(&want).filter(|(a, b)| a != b).count();
        assert_eq!(wrong, 0, "{c}: {wrong} of {} pixels differ", want.len());
        assert_eq!(order, get(&format!("{c}.order")).iter().map(|&v| v as usize).collect::<Vec<_>>(), "{c}: object order");
        pixels += want.iter().filter(|&&v| v > 0).count();
    }
    assert!(pixels > 10_000, "the cases cover objects: {pixels} pixels");
}
