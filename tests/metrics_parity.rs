//! Metrics parity: on synthetic BCCD val detections, `eval::metrics` reproduces the numbers of
//! Ultralytics' validator and `eval::coco` those of pycocotools' COCOeval (within 1e-4).

mod common;

use std::collections::BTreeMap;
use yolodistill::eval::{coco, metrics};

const TOL: f64 = 1e-4;

/// Per-image Ultralytics inputs (boxes xywh → xyxy in original pixels), ordered by image id.
fn image_evals(gts: &[coco::CocoGt], dets: &[coco::CocoDet], image_ids: &[u64]) -> Vec<metrics::ImageEval> {
    let mut by_image: BTreeMap<u64, metrics::ImageEval> =
        image_ids.iter().map(|&id| (id, metrics::ImageEval::default())).collect();
    let xyxy = |b: &[f64; 4]| [b[0] as f32, b[1] as f32, (b[0] + b[2]) as f32, (b[1] + b[3]) as f32];
    for g in gts {
        by_image.entry(g.image_id).or_default().gt.push((xyxy(&g.bbox), g.category_id as usize));
    }
    for d in dets {
        by_image.entry(d.image_id).or_default().dets.push(metrics::Det {
            xyxy: xyxy(&d.bbox),
            conf: d.score as f32,
            cls: d.category_id as usize,
        });
    }
    by_image.into_values().collect()
}

/// Prints one comparison and records it in `errors` when it is off by more than `TOL`.
fn check(errors: &mut Vec<String>, name: &str, got: f64, want: f64) {
    let d = (got - want).abs();
    eprintln!("{name:<32} got {got:.10} want {want:.10} |Δ| {d:.2e}");
    if d.is_nan() || d > TOL {
        errors.push(format!("{name}: got {got}, want {want} (|Δ| {d:.2e})"));
    }
}

#[test]
fn bccd_val_metrics_match_ultralytics_and_pycocotools() {
    let Some(shared) = common::shared() else { return };
    let dir = shared.join("fixtures/metrics");
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
    let gt_file = coco::parse_gt_json(&read("bccd_val_gt_coco.json")).unwrap();
    let dets = coco::parse_dets_json(&read("bccd_val_dets_coco.json")).unwrap();
    let expected: serde_json::Value = serde_json::from_str(&read("bccd_val_expected.json")).unwrap();

    let nc = gt_file.category_ids.iter().max().map_or(0, |&c| c as usize + 1);
    let mut acc = metrics::MetricsAccumulator::new(nc);
    for img in image_evals(&gt_file.annotations, &dets, &gt_file.image_ids) {
        acc.add(&img);
    }
    let m = acc.compute();
    let s = coco::evaluate_with_images(&gt_file.annotations, &dets, &gt_file.image_ids);

    let mut errors = Vec::new();
    let mut n_checked = 0;
    let per_class = |class: &str, f: fn(&metrics::ClassAp) -> f64| -> f64 {
        let c: usize = class.parse().unwrap();
        m.per_class.iter().find(|p| p.class == c).map(f).unwrap_or_else(|| panic!("class {c} missing"))
    };
    for (key, want) in expected["ultralytics"].as_object().expect("ultralytics object") {
        let scalar = match key.as_str() {
            "mAP50" => Some(m.map50),
            "mAP50-95" => Some(m.map),
            "mAP75" => Some(m.map75),
            "precision" => Some(m.precision),
            "recall" => Some(m.recall),
            "fitness" => Some(m.fitness),
            "per_class_AP50-95" | "per_class_AP50" => None,
            other => panic!("unhandled expected key ultralytics.{other}"),
        };
        match scalar {
            Some(got) => check(&mut errors, &format!("ultralytics.{key}"), got, want.as_f64().unwrap()),
            None => {
                let f: fn(&metrics::ClassAp) -> f64 = if key == "per_class_AP50" { |c| c.ap50 } else { |c| c.ap };
                for (class, v) in want.as_object().unwrap() {
                    check(&mut errors, &format!("ultralytics.{key}.{class}"), per_class(class, f), v.as_f64().unwrap());
                    n_checked += 1;
                }
                continue;
            }
        }
        n_checked += 1;
    }
    for (key, want) in expected["pycocotools"].as_object().expect("pycocotools object") {
        let got = match key.as_str() {
            "AP50-95" => s.ap,
            "AP50" => s.ap50,
            "AP75" => s.ap75,
            "APsmall" => s.ap_small,
            "APmedium" => s.ap_medium,
            "APlarge" => s.ap_large,
            "AR1" => s.ar1,
            "AR10" => s.ar10,
            "AR100" => s.ar100,
            "ARsmall" => s.ar_small,
            "ARmedium" => s.ar_medium,
            "ARlarge" => s.ar_large,
            other => panic!("unhandled expected key pycocotools.{other}"),
        };
        check(&mut errors, &format!("pycocotools.{key}"), got, want.as_f64().unwrap());
        n_checked += 1;
    }
    assert!(n_checked >= 14, "only {n_checked} expected numbers found");
    assert!(errors.is_empty(), "metrics differ from the fixture:\n{}", errors.join("\n"));
}
