//! Minimal line charts rendered to PNG with the built-in bitmap font: enough for
//! loss/metric curves and PR curves without a plotting or font dependency.

use image::{Rgb, RgbImage};

use crate::pixels::draw::{class_color, draw_text};

const BG: Rgb<u8> = Rgb([255, 255, 255]);
const AXIS: Rgb<u8> = Rgb([90, 90, 90]);
const GRID: Rgb<u8> = Rgb([230, 230, 230]);

/// One curve: label and (x, y) points.
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

fn line(img: &mut RgbImage, (x0, y0): (f64, f64), (x1, y1): (f64, f64), c: Rgb<u8>) {
    let n = ((x1 - x0).abs().max((y1 - y0).abs()).ceil() as usize).max(1);
    for i in 0..=n {
        let t = i as f64 / n as f64;
        let (x, y) = (x0 + (x1 - x0) * t, y0 + (y1 - y0) * t);
        for (dx, dy) in [(0i64, 0i64), (1, 0), (0, 1)] {
            let (px, py) = (x.round() as i64 + dx, y.round() as i64 + dy);
            if px >= 0 && py >= 0 && (px as u32) < img.width() && (py as u32) < img.height() {
                img.put_pixel(px as u32, py as u32, c);
            }
        }
    }
}

fn fmt(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// A chart of `series` with a title, axes with min/max labels and a legend.
/// `y_range` fixes the y axis (e.g. 0..1 for PR curves).
pub fn chart(title: &str, series: &[Series], w: u32, h: u32, y_range: Option<(f64, f64)>) -> RgbImage {
    let mut img = RgbImage::from_pixel(w, h, BG);
    let (l, r, t, b) = (48.0, 10.0, 22.0, 20.0);
    let (pw, ph) = (w as f64 - l - r, h as f64 - t - b);
    draw_text(&mut img, l as i64, 6, title, 1, AXIS);
    let pts = series.iter().flat_map(|s| s.points.iter()).filter(|p| p.0.is_finite() && p.1.is_finite());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        return img;
    }
    if let Some((a, bb)) = y_range {
        y0 = a;
        y1 = bb;
    }
    if x1 - x0 < 1e-12 {
        x1 = x0 + 1.0;
    }
    if y1 - y0 < 1e-12 {
        y1 = y0 + 1.0;
    }
    let map = |x: f64, y: f64| (l + (x - x0) / (x1 - x0) * pw, t + (1.0 - (y - y0) / (y1 - y0)) * ph);
    for k in 0..=4 {
        let gy = t + ph * k as f64 / 4.0;
        line(&mut img, (l, gy), (l + pw, gy), GRID);
    }
    line(&mut img, (l, t), (l, t + ph), AXIS);
    line(&mut img, (l, t + ph), (l + pw, t + ph), AXIS);
    draw_text(&mut img, 2, t as i64, &fmt(y1), 1, AXIS);
    draw_text(&mut img, 2, (t + ph) as i64 - 7, &fmt(y0), 1, AXIS);
    draw_text(&mut img, l as i64, (t + ph) as i64 + 6, &fmt(x0), 1, AXIS);
    let xl = fmt(x1);
    draw_text(&mut img, (l + pw) as i64 - 6 * xl.len() as i64, (t + ph) as i64 + 6, &xl, 1, AXIS);
    for (i, s) in series.iter().enumerate() {
        let c = class_color(i);
        for wdw in s.points.windows(2) {
            let (a, bb) = (wdw[0], wdw[1]);
            if a.1.is_finite() && bb.1.is_finite() {
                line(&mut img, map(a.0, a.1), map(bb.0, bb.1), c);
            }
        }
        if s.points.len() == 1 {
            let p = map(s.points[0].0, s.points[0].1);
            line(&mut img, (p.0 - 2.0, p.1), (p.0 + 2.0, p.1), c);
        }
        draw_text(&mut img, (l + pw) as i64 - 6 * s.label.len() as i64 - 4, t as i64 + 4 + 10 * i as i64, &s.label, 1, c);
    }
    img
}

/// Tiles equally sized charts into a grid with `cols` columns.
pub fn grid(charts: &[RgbImage], cols: usize) -> RgbImage {
    let (w, h) = charts.first().map(|c| c.dimensions()).unwrap_or((1, 1));
    let rows = charts.len().div_ceil(cols.max(1));
    let mut out = RgbImage::from_pixel(w * cols as u32, h * rows.max(1) as u32, BG);
    for (i, c) in charts.iter().enumerate() {
        let (x, y) = ((i % cols) as u32 * w, (i / cols) as u32 * h);
        image::imageops::replace(&mut out, c, x as i64, y as i64);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chart_draws_something() {
        let s = Series { label: "loss".into(), points: vec![(1.0, 3.0), (2.0, 2.0), (3.0, 1.5)] };
        let img = chart("box_loss", &[s], 200, 120, None);
        let non_white = img.pixels().filter(|p| p.0 != [255, 255, 255]).count();
        assert!(non_white > 200);
        let g = grid(&[img.clone(), img], 2);
        assert_eq!(g.dimensions(), (400, 120));
    }
}
