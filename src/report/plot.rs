//! Chart primitives on plotters: a white RGB canvas saved as PNG, line charts with titled axes
//! and a legend beside them. Text uses the bundled DejaVu Sans, so images never depend on the
//! system's fonts and the same data gives the same bytes.

use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::coord::Shift;
use plotters::prelude::*;

pub use crate::pixels::draw::{fonts, FONT};

/// Turns a plotters error (generic over the backend) into ours.
pub fn drawing<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("drawing failed: {e:?}")
}

/// matplotlib's default colour cycle (tab10), which Ultralytics' charts use.
pub const TAB10: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// The thick line of class means in Ultralytics' curve plots.
pub const MEAN_BLUE: RGBColor = RGBColor(0, 0, 255);

/// A white RGB image to draw on, saved as PNG.
pub struct Canvas {
    pub w: u32,
    pub h: u32,
    buf: Vec<u8>,
}

impl Canvas {
    pub fn new(w: u32, h: u32) -> Self {
        fonts();
        Self { w, h, buf: vec![255; (w * h * 3) as usize] }
    }

    /// The whole canvas as a plotters drawing area.
    pub fn area(&mut self) -> DrawingArea<BitMapBackend<'_>, Shift> {
        BitMapBackend::with_buffer(&mut self.buf, (self.w, self.h)).into_drawing_area()
    }

    pub fn into_image(self) -> image::RgbImage {
        image::RgbImage::from_raw(self.w, self.h, self.buf).expect("the buffer holds w·h pixels")
    }

    /// Writes the canvas as a PNG, atomically (a crash leaves the previous file or none).
    pub fn save_png(self, path: &Path) -> Result<()> {
        save_png(&self.into_image(), path)
    }
}

/// Encodes `img` as PNG and writes it atomically.
pub fn save_png(img: &image::RgbImage, path: &Path) -> Result<()> {
    let mut bytes = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)?;
    crate::files::write_atomic(path, &bytes)
}

/// Encodes `img` as JPEG (quality 75, as Ultralytics' batch images) and writes it atomically.
pub fn save_jpeg(img: &image::RgbImage, path: &Path) -> Result<()> {
    let mut bytes = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, 75).encode_image(img)?;
    crate::files::write_atomic(path, &bytes)
}

/// How a series is drawn.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Stroke {
    /// A solid line of this width.
    Line(u32),
    /// Dots at the points joined by a thin line (raw values).
    Points,
    /// A dashed line (a smoothed version of another series).
    Dashed,
}

/// One curve: its legend label (empty: none), colour, stroke and (x, y) points.
pub struct Series {
    pub label: String,
    pub color: RGBColor,
    pub stroke: Stroke,
    pub points: Vec<(f64, f64)>,
}

impl Series {
    pub fn new(label: impl Into<String>, color: RGBColor, stroke: Stroke, points: Vec<(f64, f64)>) -> Self {
        Self { label: label.into(), color, stroke, points }
    }
}

/// Title, axis names and ranges of a chart (a range of None fits the data).
pub struct Axes<'a> {
    pub title: &'a str,
    pub x: &'a str,
    pub y: &'a str,
    pub x_range: Option<(f64, f64)>,
    pub y_range: Option<(f64, f64)>,
    /// Names for the integer x positions 0, 1, … (a categorical axis); other ticks stay blank.
    pub x_names: Option<&'a [String]>,
}

/// The data's range on one axis with a margin, or `fixed`; never empty.
fn range(values: impl Iterator<Item = f64>, fixed: Option<(f64, f64)>) -> (f64, f64) {
    if let Some(r) = fixed {
        return r;
    }
    let (lo, hi) = values.filter(|v| v.is_finite()).fold((f64::MAX, f64::MIN), |(a, b), v| (a.min(v), b.max(v)));
    if lo > hi {
        return (0.0, 1.0);
    }
    // A flat series gets a visible band around its value.
    let pad = if hi - lo < 1e-12 { (hi.abs() * 0.1).max(0.1) } else { (hi - lo) * 0.05 };
    (lo - pad, hi + pad)
}

/// Draws a line chart of `series` filling `area`; the legend (labelled series) goes inside
/// the plot's upper-right corner when `legend` is set.
pub fn line_chart<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, axes: &Axes, series: &[Series], legend: bool) -> Result<()> {
    let pts = || series.iter().flat_map(|s| s.points.iter());
    let (x0, x1) = range(pts().map(|p| p.0), axes.x_range);
    let (y0, y1) = range(pts().map(|p| p.1), axes.y_range);
    let mut chart = ChartBuilder::on(area)
        .caption(axes.title, (FONT, 17))
        .margin(8)
        .x_label_area_size(if axes.x.is_empty() { 22 } else { 40 })
        .y_label_area_size(if axes.y.is_empty() { 48 } else { 62 })
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(drawing)?;
    chart
        .configure_mesh()
        .x_desc(axes.x)
        .y_desc(axes.y)
        .label_style((FONT, 13))
        .axis_desc_style((FONT, 14))
        .light_line_style(RGBColor(240, 240, 240))
        .bold_line_style(RGBColor(222, 222, 222))
        .x_labels(6)
        .y_labels(6)
        .y_label_formatter(&|v| tick(*v, y1 - y0))
        .x_label_formatter(&|v| match axes.x_names {
            Some(names) if (v - v.round()).abs() < 1e-9 && v.round() >= 0.0 => names.get(v.round() as usize).cloned().unwrap_or_default(),
            Some(_) => String::new(),
            None => tick(*v, x1 - x0),
        })
        .draw()
        .map_err(drawing)?;
    for s in series {
        let finite: Vec<(f64, f64)> = s.points.iter().copied().filter(|p| p.0.is_finite() && p.1.is_finite()).collect();
        let color = s.color;
        let anno = match s.stroke {
            Stroke::Line(w) => chart.draw_series(LineSeries::new(finite, color.stroke_width(w))).map_err(drawing)?,
            Stroke::Dashed => chart.draw_series(DashedLineSeries::new(finite, 6, 4, color.stroke_width(2))).map_err(drawing)?,
            Stroke::Points => {
                chart.draw_series(LineSeries::new(finite.clone(), color.mix(0.5).stroke_width(1))).map_err(drawing)?;
                chart.draw_series(finite.iter().map(|&p| Circle::new(p, 3, color.filled()))).map_err(drawing)?
            }
        };
        if legend && !s.label.is_empty() {
            let w = if let Stroke::Line(w) = s.stroke { w } else { 2 };
            anno.label(s.label.clone()).legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(w)));
        }
    }
    if legend && series.iter().any(|s| !s.label.is_empty()) {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .label_font((FONT, 13))
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(200, 200, 200))
            .draw()
            .map_err(drawing)?;
    }
    Ok(())
}

/// Draws a legend (colour, width, label) as a column of entries in `area` (beside a chart).
pub fn side_legend<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, entries: &[(String, RGBColor, u32)]) -> Result<()> {
    let (w, h) = area.dim_in_pixel();
    let row = 20i32.min((h as i32 - 40) / entries.len().max(1) as i32).max(8);
    let font = (FONT, (row - 6).clamp(8, 14)).into_font().color(&BLACK);
    for (i, (label, color, width)) in entries.iter().enumerate() {
        let y = 40 + i as i32 * row;
        area.draw(&PathElement::new(vec![(6, y), (28, y)], color.stroke_width(*width))).map_err(drawing)?;
        let max_chars = ((w as i32 - 36) / 7).max(4) as usize;
        let text: String = label.chars().take(max_chars).collect();
        area.draw(&Text::new(text, (34, y - row / 2 + 3), font.clone())).map_err(drawing)?;
    }
    Ok(())
}

/// A tick label on an axis spanning `span`: as many decimals as its ~6 steps need.
pub fn tick(v: f64, span: f64) -> String {
    let step = span.abs() / 6.0;
    let decimals = if step > 0.0 { (-step.log10()).ceil().clamp(0.0, 6.0) as usize } else { 2 };
    let s = format!("{v:.decimals$}");
    // "-0.00" is 0
    if s.trim_start_matches('-').chars().all(|c| c == '0' || c == '.') {
        s.trim_start_matches('-').to_string()
    } else {
        s
    }
}

/// matplotlib's "Blues" colour map at t in [0, 1].
pub fn blues(t: f64) -> RGBColor {
    const STOPS: [(u8, u8, u8); 9] = [
        (247, 251, 255),
        (222, 235, 247),
        (198, 219, 239),
        (158, 202, 225),
        (107, 174, 214),
        (66, 146, 198),
        (33, 113, 181),
        (8, 81, 156),
        (8, 48, 107),
    ];
    let x = t.clamp(0.0, 1.0) * (STOPS.len() - 1) as f64;
    let i = (x.floor() as usize).min(STOPS.len() - 2);
    let f = x - i as f64;
    let mix = |a: u8, b: u8| (a as f64 + (b as f64 - a as f64) * f).round() as u8;
    let (a, b) = (STOPS[i], STOPS[i + 1]);
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

/// Gaussian smoothing as scipy's `gaussian_filter1d(y, sigma)` (truncate 4, reflected edges),
/// the dotted line Ultralytics draws over each results.png curve.
pub fn gaussian_smooth(y: &[f64], sigma: f64) -> Vec<f64> {
    let n = y.len() as i64;
    if n == 0 {
        return Vec::new();
    }
    let radius = (4.0 * sigma + 0.5) as i64;
    let kernel: Vec<f64> = (-radius..=radius).map(|k| (-0.5 * (k as f64 / sigma).powi(2)).exp()).collect();
    let total: f64 = kernel.iter().sum();
    // scipy's "reflect": d c b a | a b c d | d c b a, repeated for short inputs.
    let at = |i: i64| {
        let m = i.rem_euclid(2 * n);
        y[if m < n { m } else { 2 * n - 1 - m } as usize]
    };
    (0..n).map(|i| (-radius..=radius).zip(&kernel).map(|(k, w)| w * at(i + k)).sum::<f64>() / total).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaussian_smoothing_matches_ultralytics() {
        // ultralytics.utils.plotting._gaussian_filter1d(y, 3) (8.4.190), rounded to 6 decimals
        let cases: [(&[f64], &[f64]); 2] = [
            (&[0., 0., 0., 1., 0., 0., 0., 0.], &[0.135375, 0.139806, 0.14431, 0.143203, 0.133396, 0.116704, 0.099171, 0.088036]),
            (
                &[3., 1., 4., 1., 5., 9., 2., 6., 5., 3., 5., 8., 9., 7., 9., 3., 2., 3., 8., 4.],
                &[
                    2.958596, 3.098408, 3.354981, 3.686112, 4.041766, 4.380784, 4.686206, 4.967574, 5.247312, 5.534785, 5.806833,
                    6.010042, 6.085164, 6.002249, 5.782084, 5.490591, 5.207878, 4.992049, 4.861672, 4.804913,
                ],
            ),
        ];
        for (y, want) in cases {
            let s = gaussian_smooth(y, 3.0);
            for (a, b) in s.iter().zip(want) {
                assert!((a - b).abs() < 2e-6, "{s:?}");
            }
        }
        assert_eq!(gaussian_smooth(&[2.0; 5], 3.0).iter().map(|v| (v * 1e9).round() / 1e9).collect::<Vec<_>>(), vec![2.0; 5]);
    }

    #[test]
    fn blues_runs_from_white_to_dark_blue() {
        assert_eq!(blues(0.0), RGBColor(247, 251, 255));
        assert_eq!(blues(1.0), RGBColor(8, 48, 107));
    }

    #[test]
    fn ticks_have_the_decimals_their_axis_needs() {
        assert_eq!(tick(0.123456, 1.0), "0.1");
        assert_eq!(tick(4.1512, 0.01), "4.151");
        assert_eq!(tick(1500.0, 3000.0), "1500");
        assert_eq!(tick(-0.0001, 0.2), "0.00");
    }

    #[test]
    fn a_chart_is_drawn_and_saved_deterministically() {
        let dir = std::env::temp_dir().join(format!("yd-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let draw = |p: &Path| {
            let mut c = Canvas::new(400, 300);
            let s = Series::new("loss", TAB10[0], Stroke::Points, vec![(1.0, 3.0), (2.0, 2.0), (3.0, 1.5)]);
            let axes = Axes { title: "box_loss", x: "epoch", y: "", x_range: None, y_range: None, x_names: None };
            line_chart(&c.area(), &axes, &[s], true).unwrap();
            c.save_png(p).unwrap();
        };
        draw(&dir.join("a.png"));
        draw(&dir.join("b.png"));
        let (a, b) = (std::fs::read(dir.join("a.png")).unwrap(), std::fs::read(dir.join("b.png")).unwrap());
        assert_eq!(a, b, "same data, same bytes");
        let img = image::open(dir.join("a.png")).unwrap().to_rgb8();
        assert!(img.pixels().filter(|p| p.0 != [255, 255, 255]).count() > 2000, "text and lines drawn");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
