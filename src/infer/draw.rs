//! Annotated images: boxes in per-class colours with a "name conf" label.

use image::{Rgb, RgbImage};

use super::nms::Detection;
use crate::pixels::draw::{class_color, draw_text, fill_rect};

/// Draws every detection with its label onto `img`.
pub fn annotate(img: &mut RgbImage, dets: &[Detection], names: &[String]) {
    let lw = ((img.width() + img.height()) as f32 * 0.002).round().max(2.0) as i64;
    let scale = (lw / 2).max(1);
    for d in dets {
        let c = class_color(d.cls);
        let [x1, y1, x2, y2] = d.xyxy.map(|v| v.round() as i64);
        fill_rect(img, x1, y1, x2, y1 + lw, c);
        fill_rect(img, x1, y2 - lw, x2, y2, c);
        fill_rect(img, x1, y1, x1 + lw, y2, c);
        fill_rect(img, x2 - lw, y1, x2, y2, c);
        let name = names.get(d.cls).cloned().unwrap_or_else(|| d.cls.to_string());
        let label = format!("{name} {:.2}", d.conf);
        let (tw, th) = (label.len() as i64 * 6 * scale, 9 * scale);
        let ty = if y1 - th >= 0 { y1 - th } else { y1 };
        fill_rect(img, x1, ty, x1 + tw + scale, ty + th, c);
        draw_text(img, x1 + scale, ty + scale, &label, scale, Rgb([255, 255, 255]));
    }
}
