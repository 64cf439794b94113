//! A small synthetic detection dataset (the demo's): filled shapes of three
//! classes on textured backgrounds, written as a YOLO-format dataset.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use image::{Rgb, RgbImage};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

pub const CLASSES: [&str; 3] = ["circle", "square", "triangle"];

#[derive(Debug, Clone)]
pub struct SyntheticConfig {
    /// Square image side in pixels.
    pub size: u32,
    pub train: usize,
    pub val: usize,
    /// Objects per image (inclusive range).
    pub objects: (usize, usize),
    /// Object side as a fraction of the image side (inclusive range).
    pub scale: (f32, f32),
    pub seed: u64,
}

impl Default for SyntheticConfig {
    fn default() -> Self {
        Self { size: 96, train: 128, val: 48, objects: (1, 4), scale: (0.15, 0.45), seed: 0 }
    }
}

/// Writes `root/images/{train,val}`, `root/labels/{train,val}` and
/// `root/data.yaml`; returns the path of data.yaml.
pub fn generate(root: &Path, cfg: &SyntheticConfig) -> Result<PathBuf> {
    let mut rng = StdRng::seed_from_u64(cfg.seed);
    for (split, n) in [("train", cfg.train), ("val", cfg.val)] {
        let img_dir = root.join("images").join(split);
        let lbl_dir = root.join("labels").join(split);
        for d in [&img_dir, &lbl_dir] {
            std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
        }
        for i in 0..n {
            let (img, labels) = sample(&mut rng, cfg);
            let stem = format!("{split}_{i:04}");
            let p = img_dir.join(format!("{stem}.png"));
            img.save(&p).with_context(|| format!("cannot write {}", p.display()))?;
            let text: String = labels.iter().map(|(c, b)| format!("{c} {:.6} {:.6} {:.6} {:.6}\n", b[0], b[1], b[2], b[3])).collect();
            std::fs::write(lbl_dir.join(format!("{stem}.txt")), text)?;
        }
    }
    let names: String = CLASSES.iter().enumerate().map(|(i, n)| format!("  {i}: {n}\n")).collect();
    let yaml = format!("# synthetic shapes (yolodistill demo)\npath: .\ntrain: images/train\nval: images/val\nnames:\n{names}");
    let p = root.join("data.yaml");
    std::fs::write(&p, yaml).with_context(|| format!("cannot write {}", p.display()))?;
    Ok(p)
}

fn rand_color(rng: &mut StdRng) -> [f32; 3] {
    [rng.random::<f32>(), rng.random::<f32>(), rng.random::<f32>()]
}

/// One image and its labels (class, normalised cx cy w h).
fn sample(rng: &mut StdRng, cfg: &SyntheticConfig) -> (RgbImage, Vec<(usize, [f32; 4])>) {
    let s = cfg.size as usize;
    // Background: a base colour, two sinusoidal textures and pixel noise.
    let base = rand_color(rng).map(|c| 0.2 + 0.6 * c);
    let (f1, f2) = (rng.random_range(0.05..0.4f32), rng.random_range(0.05..0.4f32));
    // Phases in [0, 6.28): not TAU, so the demo's dataset (and its measured figures) stay as they were.
    #[allow(clippy::approx_constant)]
    let (p1, p2) = (rng.random_range(0.0..6.28f32), rng.random_range(0.0..6.28f32));
    let amp = rng.random_range(0.05..0.2f32);
    let mut px = vec![[0f32; 3]; s * s];
    for y in 0..s {
        for x in 0..s {
            let t = amp * ((x as f32 * f1 + p1).sin() * (y as f32 * f2 + p2).cos());
            let n = rng.random_range(-0.06..0.06f32);
            px[y * s + x] = base.map(|c| c + t + n);
        }
    }
    let k = rng.random_range(cfg.objects.0..=cfg.objects.1);
    let mut labels = Vec::new();
    for _ in 0..k {
        let cls = rng.random_range(0..CLASSES.len());
        let side = rng.random_range(cfg.scale.0..=cfg.scale.1) * s as f32;
        let (w, h) = (side, side * rng.random_range(0.8..1.25f32));
        let cx = rng.random_range(w / 2.0..s as f32 - w / 2.0);
        let cy = rng.random_range(h / 2.0..(s as f32 - h / 2.0).max(h / 2.0 + 1.0));
        // An object colour far from the background, so every shape is visible.
        let color = loop {
            let c = rand_color(rng);
            let d: f32 = c.iter().zip(&base).map(|(a, b)| (a - b).abs()).sum();
            if d > 0.6 {
                break c;
            }
        };
        let (x0, y0, x1, y1) = (cx - w / 2.0, cy - h / 2.0, cx + w / 2.0, cy + h / 2.0);
        let inside = |x: f32, y: f32| -> bool {
            let (u, v) = ((x - cx) / (w / 2.0), (y - cy) / (h / 2.0));
            match cls {
                0 => u * u + v * v <= 1.0,
                1 => u.abs() <= 1.0 && v.abs() <= 1.0,
                // apex at the top, base at the bottom
                _ => v >= -1.0 && v <= 1.0 && u.abs() <= (v + 1.0) / 2.0,
            }
        };
        let (mut bx0, mut by0, mut bx1, mut by1) = (f32::MAX, f32::MAX, f32::MIN, f32::MIN);
        for y in (y0.floor().max(0.0) as usize)..(y1.ceil() as usize).min(s) {
            for x in (x0.floor().max(0.0) as usize)..(x1.ceil() as usize).min(s) {
                let (fx, fy) = (x as f32 + 0.5, y as f32 + 0.5);
                if inside(fx, fy) {
                    px[y * s + x] = color;
                    bx0 = bx0.min(x as f32);
                    by0 = by0.min(y as f32);
                    bx1 = bx1.max(x as f32 + 1.0);
                    by1 = by1.max(y as f32 + 1.0);
                }
            }
        }
        if bx1 > bx0 && by1 > by0 {
            let n = s as f32;
            labels.push((cls, [(bx0 + bx1) / 2.0 / n, (by0 + by1) / 2.0 / n, (bx1 - bx0) / n, (by1 - by0) / n]));
        }
    }
    let img = RgbImage::from_fn(cfg.size, cfg.size, |x, y| {
        let p = px[y as usize * s + x as usize];
        Rgb(p.map(|c| (c.clamp(0.0, 1.0) * 255.0).round() as u8))
    });
    (img, labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_loadable_dataset_with_boxes_inside_the_image() {
        let root = crate::data::dataset::tests::temp_dir("synth");
        let cfg = SyntheticConfig { train: 4, val: 2, ..Default::default() };
        let yaml = generate(&root, &cfg).unwrap();
        let data = crate::data::dataset::DataConfig::load(&yaml).unwrap();
        assert_eq!(data.names, CLASSES.map(String::from).to_vec());
        // The scan parses every label file (a class over 2 would drop its image); boxes lie inside.
        let ds = crate::data::dataset::Dataset::scan(&data.train, 3, None).unwrap();
        assert_eq!(ds.items.len(), 4);
        let labels: Vec<_> = ds.items.iter().flat_map(|i| &i.labels).collect();
        assert!(labels.iter().all(|l| l.xywhn.iter().all(|x| (0.0..=1.0).contains(x))), "{labels:?}");
    }
}
