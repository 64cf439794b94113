//! Annotated images: masks blended in per-class colours, then boxes with a "name conf" label.

use image::RgbImage;

use super::nms::Detection;
use super::predict::Prediction;
use crate::pixels::draw::{class_color, draw_boxes, LabeledBox};

/// Draws a prediction onto its image: masks first, then every detection with its label.
pub fn annotate_prediction(img: &mut RgbImage, pred: &Prediction, names: &[String]) {
    if !pred.masks.is_empty() {
        blend_masks(img, pred);
    }
    annotate(img, &pred.dets, names);
}

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

/// Ultralytics' mask overlay (alpha 0.5): a pixel under masks becomes its colour times
/// Π(1 − α) over them plus the channel-wise largest α·colour, each original pixel reading the
/// mask at the input pixel it maps to.
fn blend_masks(img: &mut RgbImage, pred: &Prediction) {
    const ALPHA: f32 = 0.5;
    let (w, h) = img.dimensions();
    let (gain, (px, py)) = (pred.place.gain, pred.place.pad);
    let to_input = |v: u32, pad: f32| ((v as f32 + 0.5) * gain + pad).floor().max(0.0) as usize;
    let mut keep = vec![1f32; (w * h) as usize];
    let mut add = vec![[0f32; 3]; (w * h) as usize];
    for (d, m) in pred.dets.iter().zip(&pred.masks) {
        let c = class_color(d.cls);
        let color = [c.0, c.1, c.2].map(|v| v as f32 * ALPHA);
        let [x1, y1, x2, y2] = d.xyxy;
        for y in (y1.floor().max(0.0) as u32)..(y2.ceil() as u32).min(h) {
            for x in (x1.floor().max(0.0) as u32)..(x2.ceil() as u32).min(w) {
                if m.contains(to_input(x, px), to_input(y, py)) {
                    let i = (y * w + x) as usize;
                    keep[i] *= 1.0 - ALPHA;
                    for k in 0..3 {
                        add[i][k] = add[i][k].max(color[k]);
                    }
                }
            }
        }
    }
    for (i, p) in img.pixels_mut().enumerate() {
        if keep[i] < 1.0 {
            for k in 0..3 {
                p.0[k] = (p.0[k] as f32 * keep[i] + add[i][k]).round().min(255.0) as u8;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::infer::segment::InstanceMask;
    use crate::pixels::letterbox::Placement;

    #[test]
    fn masks_blend_half_their_colour_into_the_pixels_they_cover() {
        // a 4×2 image at half size in a 2×1 input; the mask covers input pixel (1, 0), which
        // image pixels x 2..4 of both rows map to
        let mut img = RgbImage::from_pixel(4, 2, image::Rgb([100, 100, 100]));
        let place = Placement { gain: 0.5, pad: (0.0, 0.0), orig: (4, 2) };
        let mask = InstanceMask { x0: 0, y0: 0, w: 2, h: 1, bits: vec![false, true] };
        let det = Detection { xyxy: [0.0, 0.0, 4.0, 2.0], conf: 0.9, cls: 0, anchor: 0 };
        let pred = Prediction { dets: vec![det.clone()], masks: vec![mask.clone()], place, input: (2, 1) };
        blend_masks(&mut img, &pred);
        let c = class_color(0);
        let blended = |v: u8| (50.0 + v as f32 * 0.5).round() as u8;
        assert_eq!(img.get_pixel(0, 0).0, [100, 100, 100]);
        assert_eq!(img.get_pixel(3, 1).0, [blended(c.0), blended(c.1), blended(c.2)]);
        // two masks on a pixel: the image keeps a quarter, plus the larger half-colour per channel
        let mut img = RgbImage::from_pixel(4, 2, image::Rgb([100, 100, 100]));
        let other = Detection { cls: 1, ..det.clone() };
        let pred = Prediction { dets: vec![det, other], masks: vec![mask.clone(), mask], place, input: (2, 1) };
        blend_masks(&mut img, &pred);
        let (a, b) = (class_color(0), class_color(1));
        let two = |x: u8, y: u8| (25.0 + (x.max(y) as f32) * 0.5).round() as u8;
        assert_eq!(img.get_pixel(2, 0).0, [two(a.0, b.0), two(a.1, b.1), two(a.2, b.2)]);
    }
}
