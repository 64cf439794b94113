//! Unlabeled images for distillation: what `--label-fraction` takes the labels from, plus
//! `--unlabeled` and data.yaml's `unlabeled:`. They join every batch after the labeled images
//! and teach through the teacher only; no validation image is ever among them.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;

use super::TrainArgs;
use crate::data::dataset::{DataConfig, Dataset, Item};
use crate::data::loader::{derive_seed, TrainLoader};

/// Seed stream of the unlabeled images' order and augmentation (apart from the labeled ones').
const UNLABELED_KEY: u64 = 0x7abe1ed;

/// Applies `--label-fraction` to `train` and gathers the unlabeled images; returns their loader
/// (its batch: how many join each labeled batch) when an extension (a teacher: `extended`) will
/// use them. What was decided is printed unless --quiet.
pub fn prepare(a: &TrainArgs, data: &DataConfig, train: &mut Dataset, val: &Dataset, extended: bool) -> Result<Option<TrainLoader>> {
    let say = |msg: String| {
        if !a.quiet {
            eprintln!("{msg}");
        }
    };
    let total = train.items.len();
    let rest = if a.label_fraction < 1.0 { train.split_labels(a.label_fraction, a.seed) } else { Vec::new() };
    let mut sources: Vec<PathBuf> = data.unlabeled.clone();
    sources.extend(a.unlabeled.clone());
    if !extended {
        if !rest.is_empty() {
            say(format!("--label-fraction {}: training on {} of {total} labeled images (the rest teach only with --teacher)", a.label_fraction, train.items.len()));
        }
        if !sources.is_empty() {
            say("unlabeled images teach only through a teacher (--teacher); without one they are not used".into());
        }
        return Ok(None);
    }
    let from_split = rest.len();
    let mut items = rest;
    if !sources.is_empty() {
        items.extend(Dataset::scan_unlabeled(&sources)?.items);
    }
    let n_listed = items.len();
    let items = without_val_images(items, val);
    if items.len() < n_listed {
        eprintln!("warning: {} unlabeled images are validation images; they are left out", n_listed - items.len());
    }
    let per_batch = (a.unlabeled_ratio * a.batch as f64).round() as usize;
    if items.is_empty() && a.unlabeled_ratio != TrainArgs::default().unlabeled_ratio {
        eprintln!("warning: --unlabeled-ratio {} has no unlabeled images to act on (--unlabeled, data.yaml's `unlabeled:`, or --label-fraction below 1)", a.unlabeled_ratio);
    }
    if items.is_empty() || per_batch == 0 {
        if !items.is_empty() {
            say(format!("--unlabeled-ratio {}: no unlabeled image joins a batch of {}", a.unlabeled_ratio, a.batch));
        }
        return Ok(None);
    }
    say(format!(
        "unlabeled images: {} ({from_split} whose labels --label-fraction {} set aside, {} from unlabeled sources); {per_batch} join each batch of {} labeled",
        items.len(),
        a.label_fraction,
        items.len().saturating_sub(from_split),
        a.batch
    ));
    let dataset = Arc::new(Dataset::from_items(items, train.nc));
    Ok(Some(TrainLoader::new(dataset, a.imgsz, per_batch, a.aug, a.workers, derive_seed(&[a.seed, UNLABELED_KEY]))?))
}

/// `items` minus any image of the validation set (compared as canonical paths).
fn without_val_images(items: Vec<Item>, val: &Dataset) -> Vec<Item> {
    let key = |p: &PathBuf| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone());
    let val: HashSet<PathBuf> = val.items.iter().map(|it| key(&it.image)).collect();
    items.into_iter().filter(|it| !val.contains(&key(&it.image))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::dataset::Label;

    fn item(path: &str) -> Item {
        Item { image: PathBuf::from(path), size: (64, 64), labels: vec![Label { cls: 0, xywhn: [0.5, 0.5, 0.2, 0.2] }], ..Default::default() }
    }

    #[test]
    fn label_fraction_is_seeded_and_keeps_order() {
        let ds = || Dataset::from_items((0..40).map(|i| item(&format!("/d/{i:02}.jpg"))).collect(), 1);
        let (mut a, mut b, mut c) = (ds(), ds(), ds());
        let rest_a = a.split_labels(0.25, 7);
        let rest_b = b.split_labels(0.25, 7);
        c.split_labels(0.25, 8);
        assert_eq!(a.items, b.items, "same seed, same split");
        assert_eq!(rest_a, rest_b);
        assert_ne!(a.items, c.items, "another seed, another split");
        assert_eq!((a.items.len(), rest_a.len()), (10, 30));
        assert!(a.items.windows(2).all(|w| w[0].image < w[1].image), "listed order kept");
        assert!(rest_a.iter().all(|it| it.labels.is_empty()), "the rest lose their labels");
        let kept: HashSet<_> = a.items.iter().map(|it| &it.image).collect();
        assert!(rest_a.iter().all(|it| !kept.contains(&it.image)), "no image on both sides");
        // at least one labeled image, however small the fraction
        let mut d = ds();
        d.split_labels(1e-6, 0);
        assert_eq!(d.items.len(), 1);
    }

    #[test]
    fn validation_images_never_become_unlabeled_images() {
        let val = Dataset::from_items(vec![item("/d/val/1.jpg"), item("/d/val/2.jpg")], 1);
        let items = vec![item("/d/u/1.jpg"), item("/d/val/2.jpg"), item("/d/u/3.jpg")];
        let kept: Vec<_> = without_val_images(items, &val).into_iter().map(|it| it.image).collect();
        assert_eq!(kept, [PathBuf::from("/d/u/1.jpg"), PathBuf::from("/d/u/3.jpg")]);
    }

    #[test]
    fn bad_options_are_refused_when_parsed() {
        // (--pseudo-conf is a distillation option: tests/hostile_inputs.rs checks its range)
        for (flag, value) in [("--label-fraction", "0"), ("--label-fraction", "1.5"), ("--unlabeled-ratio", "-1")] {
            let e = TrainArgs::from_flags(&["--model", "m.yaml", "--data", "d.yaml", &format!("{flag}={value}")]).unwrap_err().to_string();
            assert!(e.contains(flag) && e.contains("must be"), "{flag} {value}: {e}");
        }
    }
}
