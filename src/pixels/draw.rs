//! Drawing on RGB images: boxes in Ultralytics' per-class colours with a filled label, in the
//! bundled DejaVu Sans (no system fonts, so the same input gives the same pixels).

use std::sync::Once;

use image::RgbImage;
use plotters::prelude::*;
use plotters::style::FontStyle;

/// The font family of every label and chart (registered from the bundled font).
pub const FONT: &str = "sans-serif";

/// Registers the bundled font once; plotters' text drawing needs it before any text.
pub fn fonts() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The bundled files are valid fonts, so registration cannot fail.
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular());
        let _ = plotters::style::register_font(FONT, FontStyle::Bold, dejavu::sans::bold());
    });
}

/// Ultralytics 8.4's palette, cycled by class index.
const PALETTE: [u32; 20] = [
    0x042AFF, 0x0BDBEB, 0xF3F3F3, 0x00DFB7, 0x111F68, 0xFF6FDD, 0xFF444F, 0xCCED00, 0x00F344, 0xBD00FF, 0x00B4FF, 0xDD00BA,
    0x00FFFF, 0x26C000, 0x01FFB3, 0x7D24FF, 0x7B0068, 0xFF1B6C, 0xFC6D2F, 0xA2FF0B,
];

pub fn class_color(cls: usize) -> RGBColor {
    let c = PALETTE[cls % PALETTE.len()];
    RGBColor((c >> 16) as u8, (c >> 8) as u8, c as u8)
}

/// Label text colour on a class's colour: white, dark on the near-white one (as Ultralytics).
fn text_color(cls: usize) -> RGBColor {
    if cls % PALETTE.len() == 2 {
        RGBColor(104, 31, 17)
    } else {
        WHITE
    }
}

/// A box to draw (image pixels) and its label text.
#[derive(Clone, Debug, PartialEq)]
pub struct LabeledBox {
    pub xyxy: [f32; 4],
    pub cls: usize,
    pub label: String,
}

/// Draws the boxes with outlines `lw` pixels wide and labels `font_px` high on the box's top
/// edge (inside the box when there is no room above), as Ultralytics' annotator places them.
pub fn draw_boxes(img: &mut RgbImage, boxes: &[LabeledBox], lw: u32, font_px: u32) {
    fonts();
    let (w, h) = img.dimensions();
    let area = BitMapBackend::with_buffer(img, (w, h)).into_drawing_area();
    let font = (FONT, font_px as f64).into_font();
    for b in boxes {
        let color = class_color(b.cls);
        let [x1, y1, x2, y2] = b.xyxy.map(|v| v.round() as i32);
        // Drawing outside the image is clipped by the backend; errors cannot happen on a buffer.
        let _ = area.draw(&Rectangle::new([(x1, y1), (x2, y2)], color.stroke_width(lw.max(1))));
        if b.label.is_empty() {
            continue;
        }
        let (tw, th) = font.box_size(&b.label).map(|(a, b)| (a as i32, b as i32)).unwrap_or((0, 0));
        let x = x1.min(w as i32 - tw).max(0);
        let outside = y1 >= th;
        let top = if outside { y1 - th } else { y1 };
        let _ = area.draw(&Rectangle::new([(x, top), (x + tw + 1, top + th + 1)], color.filled()));
        let _ = area.draw(&Text::new(b.label.clone(), (x, top), font.clone().color(&text_color(b.cls))));
    }
    let _ = area.present();
}

/// Writes `text` at (x, y) (top-left) in `color`, `font_px` high.
pub fn draw_text(img: &mut RgbImage, (x, y): (i32, i32), text: &str, font_px: u32, color: RGBColor) {
    fonts();
    let (w, h) = img.dimensions();
    let area = BitMapBackend::with_buffer(img, (w, h)).into_drawing_area();
    let _ = area.draw(&Text::new(text.to_string(), (x, y), (FONT, font_px as f64).into_font().color(&color)));
    let _ = area.present();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boxes_and_labels_are_drawn_in_class_colours() {
        let mut img = RgbImage::from_pixel(200, 120, image::Rgb([0, 0, 0]));
        let b = LabeledBox { xyxy: [20.0, 40.0, 120.0, 100.0], cls: 0, label: "cell 0.9".into() };
        draw_boxes(&mut img, &[b], 2, 14);
        assert_eq!(img.get_pixel(70, 99).0, [0x04, 0x2A, 0xFF], "outline in class 0's colour");
        // white (anti-aliased) text on the class colour above the box
        let label_px = (20..120).flat_map(|x| (20..40).map(move |y| (x, y))).filter(|&(x, y)| img.get_pixel(x, y).0[0] > 200).count();
        assert!(label_px > 20, "white label text above the box: {label_px}");
        assert_eq!(img.get_pixel(150, 20).0, [0, 0, 0], "nothing drawn elsewhere");
    }
}
