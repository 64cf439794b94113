//! Batch mosaics (`train_batch0.jpg`, `val_batch0_labels.jpg`, `val_batch0_pred.jpg`): up to 16
//! images of a batch tiled column by column, scaled to fit 1920 pixels, each with its file name
//! and its boxes, as Ultralytics' `plot_images` lays them out, so a user sees at a glance that
//! labels, augmentation and predictions are right.

use std::path::{Path, PathBuf};

use image::{imageops, Rgb, RgbImage};
use plotters::style::RGBColor;

use crate::data::loader::Batch;
use crate::infer::nms::Detection;
use crate::loss::segment::InstanceMasks;
use crate::pixels::draw::{class_color, draw_boxes, draw_text, LabeledBox};

/// Most images in one mosaic.
const MAX_TILES: usize = 16;
/// Largest side of a mosaic in pixels.
const MAX_SIZE: f64 = 1920.0;
/// Predictions drawn on `val_batch*_pred.jpg` score above this (Ultralytics' `conf_thres`).
pub const DRAW_CONF: f32 = 0.25;

/// One image of a mosaic with its boxes (pixels of that image).
#[derive(Clone, Debug)]
pub struct Tile {
    pub image: RgbImage,
    pub path: PathBuf,
    pub boxes: Vec<Detection>,
    /// Predictions: labelled "name score"; labels: the name alone.
    pub scored: bool,
    /// A segmentation batch's instance masks of this image, in overlap form (one image): id
    /// k + 1 is box k's object.
    pub masks: Option<InstanceMasks>,
}

/// The first images of `batch` (network input, RGB 0–1) with their labels.
pub fn label_tiles(batch: &Batch) -> Vec<Tile> {
    (0..batch.shape[0].min(MAX_TILES))
        .map(|j| {
            let boxes = batch.labels_xyxy(j).into_iter().map(|(xyxy, cls)| Detection { xyxy, conf: 1.0, cls, anchor: 0 }).collect();
            // the labels of a segmentation batch are in its masks' object order
            let masks = batch.masks.as_ref().filter(|_| j < batch.labeled).map(|m| m.images(std::iter::once(j)));
            Tile { image: image_of(batch, j), path: batch.paths.get(j).cloned().unwrap_or_default(), boxes, scored: false, masks }
        })
        .collect()
}

/// `tiles` with detections (input pixels) instead of labels, and a segmentation model's
/// detection masks (`masks`, per image; empty for boxes alone); only detections scoring above
/// [`DRAW_CONF`] are kept, with their masks.
pub fn prediction_tiles(tiles: &[Tile], dets: &[Vec<Detection>], masks: &[InstanceMasks]) -> Vec<Tile> {
    tiles
        .iter()
        .zip(dets)
        .enumerate()
        .map(|(j, (t, d))| {
            let kept: Vec<usize> = (0..d.len()).filter(|&k| d[k].conf > DRAW_CONF).collect();
            // ids renumbered to the kept detections; the others' pixels cleared
            let masks = masks.get(j).map(|m| {
                let mut new_id = vec![0u16; d.len() + 1];
                for (n, &k) in kept.iter().enumerate() {
                    new_id[k + 1] = (n + 1) as u16;
                }
                InstanceMasks { size: m.size, ids: m.ids.iter().map(|&v| new_id.get(v as usize).copied().unwrap_or(0)).collect() }
            });
            Tile { boxes: kept.iter().map(|&k| d[k]).collect(), scored: true, masks, ..t.clone() }
        })
        .collect()
}

/// How many validation batches get mosaics (Ultralytics' `val_batch0..2`).
pub const VAL_BATCHES: usize = 3;

/// A validation batch's two mosaics: its labels and its predictions.
pub struct ValBatch {
    pub labels: Vec<Tile>,
    pub predictions: Vec<Tile>,
}

impl ValBatch {
    /// A validation callback keeping the first [`VAL_BATCHES`] batches into `kept`.
    pub fn keeper(kept: &mut Vec<ValBatch>) -> impl FnMut(usize, &Batch, &[Vec<Detection>], &[InstanceMasks]) + '_ {
        move |i, batch, dets, masks| {
            if i < VAL_BATCHES {
                let labels = label_tiles(batch);
                kept.push(ValBatch { predictions: prediction_tiles(&labels, dets, masks), labels });
            }
        }
    }
}

/// Image `j` of a batch as 8-bit RGB (values truncated, as Ultralytics' cast does).
fn image_of(batch: &Batch, j: usize) -> RgbImage {
    let [_, c, h, w] = batch.shape;
    let plane = h * w;
    let base = j * c * plane;
    RgbImage::from_fn(w as u32, h as u32, |x, y| {
        let i = y as usize * w + x as usize;
        let at = |ch: usize| (batch.images[base + ch.min(c - 1) * plane + i] * 255.0).clamp(0.0, 255.0) as u8;
        Rgb([at(0), at(1), at(2)])
    })
}

/// Tiles up to 16 images into an n×n grid (n = ⌈√count⌉), filled column by column, on white;
/// scaled down so the mosaic is at most 1920 pixels; white tile borders, file names and boxes
/// labelled with class names (and scores for predictions).
pub fn mosaic(tiles: &[Tile], names: &[String]) -> RgbImage {
    let tiles = &tiles[..tiles.len().min(MAX_TILES)];
    let Some(first) = tiles.first() else { return RgbImage::from_pixel(1, 1, Rgb([255, 255, 255])) };
    let n = (tiles.len() as f64).sqrt().ceil() as u32;
    let (w0, h0) = first.image.dimensions();
    let scale = (MAX_SIZE / n as f64 / w0.max(h0) as f64).min(1.0);
    let (w, h) = ((w0 as f64 * scale).ceil() as u32, (h0 as f64 * scale).ceil() as u32);
    let mut out = RgbImage::from_pixel(w * n, h * n, Rgb([255, 255, 255]));
    let font_px = (((h + w) * n) as f64 * 0.01).max(18.0) as u32;
    let lw = ((font_px as f64) / 10.0).round().max(1.0) as u32;
    for (i, t) in tiles.iter().enumerate() {
        let (x0, y0) = (w * (i as u32 / n), h * (i as u32 % n));
        let img = if scale < 1.0 { imageops::resize(&t.image, w, h, imageops::FilterType::Triangle) } else { t.image.clone() };
        imageops::replace(&mut out, &img, x0 as i64, y0 as i64);
        if let Some(m) = &t.masks {
            paint_masks(&mut out, (x0, y0, w, h), m, &t.boxes);
        }
        let (sx, sy) = (w as f32 / w0 as f32, h as f32 / h0 as f32);
        let boxes: Vec<LabeledBox> = t
            .boxes
            .iter()
            .map(|d| {
                let [a, b, c, e] = d.xyxy;
                let name = names.get(d.cls).cloned().unwrap_or_else(|| d.cls.to_string());
                let label = if t.scored { format!("{name} {:.1}", d.conf) } else { name };
                LabeledBox { xyxy: [x0 as f32 + a * sx, y0 as f32 + b * sy, x0 as f32 + c * sx, y0 as f32 + e * sy], cls: d.cls, label }
            })
            .collect();
        border(&mut out, (x0, y0, w, h));
        let name: String = t.path.file_name().map(|f| f.to_string_lossy().chars().take(40).collect()).unwrap_or_default();
        draw_text(&mut out, (x0 as i32 + 5, y0 as i32 + 5), &name, font_px, RGBColor(220, 220, 220));
        draw_boxes(&mut out, &boxes, lw, font_px);
    }
    out
}

/// Each object's mask over its tile, as Ultralytics' `plot_images` paints it: 40% of the image
/// and 60% of the class colour, the mask read at the nearest of its pixels.
fn paint_masks(img: &mut RgbImage, (x0, y0, w, h): (u32, u32, u32, u32), masks: &InstanceMasks, boxes: &[Detection]) {
    let ((mh, mw), ids) = (masks.size, &masks.ids);
    for y in 0..h {
        let my = (y as usize * mh / h as usize).min(mh - 1);
        for x in 0..w {
            let mx = (x as usize * mw / w as usize).min(mw - 1);
            let id = ids[my * mw + mx] as usize;
            let Some(b) = (id > 0).then(|| boxes.get(id - 1)).flatten() else { continue };
            let c = class_color(b.cls);
            let p = img.get_pixel_mut(x0 + x, y0 + y);
            for (v, k) in p.0.iter_mut().zip([c.0, c.1, c.2]) {
                *v = (*v as f32 * 0.4 + k as f32 * 0.6) as u8;
            }
        }
    }
}

/// A white frame 2 pixels wide around a tile.
fn border(img: &mut RgbImage, (x0, y0, w, h): (u32, u32, u32, u32)) {
    let (iw, ih) = img.dimensions();
    for y in y0..(y0 + h).min(ih) {
        for x in x0..(x0 + w).min(iw) {
            if x < x0 + 2 || y < y0 + 2 || x + 2 >= x0 + w || y + 2 >= y0 + h {
                img.put_pixel(x, y, Rgb([255, 255, 255]));
            }
        }
    }
}

/// Writes a mosaic as JPEG (quality 75).
pub fn save(tiles: &[Tile], names: &[String], path: &Path) -> anyhow::Result<()> {
    super::plot::save_jpeg(&mosaic(tiles, names), path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(b: usize, s: usize) -> Batch {
        let mut batch = Batch {
            images: vec![0.5; b * 3 * s * s],
            shape: [b, 3, s, s],
            batch_idx: vec![0, 1],
            cls: vec![0, 1],
            bboxes: vec![[0.5, 0.5, 0.5, 0.5], [0.25, 0.25, 0.2, 0.2]],
            paths: (0..b).map(|i| PathBuf::from(format!("img{i}.jpg"))).collect(),
            ori_sizes: vec![(s as u32, s as u32); b],
            placements: Vec::new(),
            labeled: b,
            masks: None,
        };
        batch.images[0] = 1.0;
        batch
    }

    #[test]
    fn layout_follows_ultralytics() {
        // 5 images of 320: a 3×3 grid (column by column), no scaling, 960 pixels
        let tiles = label_tiles(&batch(5, 320));
        assert_eq!(tiles.len(), 5);
        assert_eq!(tiles[0].boxes.len(), 1);
        let m = mosaic(&tiles, &["a".into(), "b".into()]);
        assert_eq!(m.dimensions(), (960, 960));
        assert_eq!(m.get_pixel(700, 700).0, [255, 255, 255], "the empty ninth tile stays white");
        assert_eq!(m.get_pixel(160, 640 + 200).0, [127, 127, 127], "the third image sits below the second (column-major)");
        // 16 images of 640: 4×4 scaled by 0.75 to 1920
        let big = label_tiles(&batch(16, 640));
        assert_eq!(mosaic(&big, &[]).dimensions(), (1920, 1920));
    }

    #[test]
    fn predictions_below_the_drawing_threshold_are_left_out() {
        let b = batch(2, 64);
        let d = |conf| Detection { xyxy: [1.0, 1.0, 20.0, 20.0], conf, cls: 0, anchor: 0 };
        let tiles = prediction_tiles(&label_tiles(&b), &[vec![d(0.9), d(0.2)], vec![]], &[]);
        assert_eq!(tiles[0].boxes, [d(0.9)]);
        assert!(tiles[0].scored && tiles[1].boxes.is_empty());
        // with masks: the kept detection's pixels renumbered, the dropped one's cleared
        let masks = [InstanceMasks { size: (1, 3), ids: vec![0, 1, 2] }, InstanceMasks { size: (1, 3), ids: vec![0; 3] }];
        let low_first = [vec![d(0.2), d(0.9)], vec![]];
        let tiles = prediction_tiles(&label_tiles(&b), &low_first, &masks);
        assert_eq!(tiles[0].masks.as_ref().unwrap().ids, [0, 0, 1]);
    }

    #[test]
    fn segmentation_labels_paint_their_masks() {
        // image 0's first label (class 0) covers the top-left quarter of a 2×2 mask map
        let mut b = batch(1, 64);
        b.batch_idx = vec![0];
        b.cls = vec![0];
        b.bboxes = vec![[0.25, 0.25, 0.5, 0.5]];
        b.masks = Some(InstanceMasks { size: (2, 2), ids: vec![1, 0, 0, 0] });
        let tiles = label_tiles(&b);
        let m = mosaic(&tiles, &["a".into()]);
        let c = class_color(0);
        let painted = |v: u8, k: u8| (v as f32 * 0.4 + k as f32 * 0.6) as u8;
        assert_eq!(m.get_pixel(20, 20).0, [painted(127, c.0), painted(127, c.1), painted(127, c.2)]);
        assert_eq!(m.get_pixel(50, 50).0, [127, 127, 127], "outside the mask");
    }
}
