//! Annotated images: boxes in per-class colours with a "name conf" label.

use image::RgbImage;

use super::nms::Detection;
use crate::pixels::draw::{draw_boxes, LabeledBox};

/// Draws every detection with its label onto `img`, sized as Ultralytics' annotator sizes them.
pub fn annotate(img: &mut RgbImage, dets: &[Detection], names: &[String]) {
    let size = (img.width() + img.height() + 3) as f32 / 2.0;
    let lw = (size * 0.003).round().max(2.0) as u32;
    let font_px = (size * 0.035).round().max(12.0) as u32;
    let boxes: Vec<LabeledBox> = dets
        .iter()
        .map(|d| {
            let name = names.get(d.cls).cloned().unwrap_or_else(|| d.cls.to_string());
            LabeledBox { xyxy: d.xyxy, cls: d.cls, label: format!("{name} {:.2}", d.conf) }
        })
        .collect();
    draw_boxes(img, &boxes, lw, font_px);
}
