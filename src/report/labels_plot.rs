//! `labels.jpg`, drawn when training starts, as Ultralytics draws it: how many labels each class
//! has, the shapes of (up to 500) boxes centred on one canvas, and where box centres and sizes
//! fall (2-D histograms of x–y and width–height), so a skewed or broken dataset shows at once.

use std::path::Path;

use anyhow::{Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::plot::{blues, drawing, tick, Canvas, FONT};
use crate::data::dataset::Label;
use crate::pixels::draw::class_color;

/// Boxes drawn on the layout panel.
const LAYOUT_BOXES: usize = 500;
/// Bins per side of the 2-D histograms.
const BINS: usize = 50;

/// Writes labels.jpg for `labels` (normalised xywh) of classes named `names`.
pub fn write(path: &Path, labels: &[Label], names: &[String]) -> Result<()> {
    let mut canvas = Canvas::new(1600, 1600);
    {
        let root = canvas.area();
        let panels = root.split_evenly((2, 2));
        class_counts(&panels[0], labels, names)?;
        layout(&panels[1], labels)?;
        let centres: Vec<(f32, f32)> = labels.iter().map(|l| (l.xywhn[0], l.xywhn[1])).collect();
        let sizes: Vec<(f32, f32)> = labels.iter().map(|l| (l.xywhn[2], l.xywhn[3])).collect();
        histogram_2d(&panels[2], &centres, ("x", "y"))?;
        histogram_2d(&panels[3], &sizes, ("width", "height"))?;
        root.present().map_err(drawing)?;
    }
    super::plot::save_jpeg(&canvas.into_image(), path).with_context(|| format!("cannot write {}", path.display()))
}

/// Label count per class.
pub fn counts(labels: &[Label], nc: usize) -> Vec<usize> {
    let mut n = vec![0; nc];
    for l in labels.iter().filter(|l| l.cls < nc) {
        n[l.cls] += 1;
    }
    n
}

/// Bars of the label count per class, in the class colours, with the counts on top.
fn class_counts<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, labels: &[Label], names: &[String]) -> Result<()> {
    let n = counts(labels, names.len().max(1));
    let top = n.iter().copied().max().unwrap_or(0).max(1) as f64 * 1.1;
    let mut chart = ChartBuilder::on(area)
        .margin(12)
        .x_label_area_size(if names.len() < 30 { 90 } else { 40 })
        .y_label_area_size(70)
        .build_cartesian_2d(-0.5..n.len() as f64 - 0.5, 0.0..top)
        .map_err(drawing)?;
    let named = names.len() < 30;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .y_desc("instances")
        .x_desc(if named { "" } else { "classes" })
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 16))
        .x_labels(n.len().min(30) * 2 + 1)
        .x_label_formatter(&|v| {
            let k = v.round();
            if (v - k).abs() > 1e-6 || k < 0.0 {
                return String::new();
            }
            if named { names.get(k as usize).cloned().unwrap_or_default() } else { format!("{k}") }
        })
        .y_label_formatter(&|v| tick(*v, top))
        .draw()
        .map_err(drawing)?;
    let bars = n.iter().enumerate().map(|(c, &k)| Rectangle::new([(c as f64 - 0.4, 0.0), (c as f64 + 0.4, k as f64)], class_color(c).filled()));
    chart.draw_series(bars).map_err(drawing)?;
    // An outline, so the near-white colour of class 2 shows on white.
    let outlines = n.iter().enumerate().map(|(c, &k)| Rectangle::new([(c as f64 - 0.4, 0.0), (c as f64 + 0.4, k as f64)], RGBColor(120, 120, 120).stroke_width(1)));
    chart.draw_series(outlines).map_err(drawing)?;
    if named {
        let font = TextStyle::from((FONT, 14).into_font()).pos(Pos::new(HPos::Center, VPos::Bottom));
        let texts = n.iter().enumerate().map(|(c, &k)| Text::new(k.to_string(), (c as f64, k as f64), font.clone()));
        chart.draw_series(texts).map_err(drawing)?;
    }
    Ok(())
}

/// The first boxes, all centred, outlined in their class colours: the spread of shapes.
fn layout<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, labels: &[Label]) -> Result<()> {
    let (w, h) = area.dim_in_pixel();
    let side = w.min(h) as f64 - 40.0;
    let (x0, y0) = ((w as f64 - side) / 2.0, (h as f64 - side) / 2.0);
    for l in labels.iter().take(LAYOUT_BOXES) {
        let (bw, bh) = (l.xywhn[2] as f64, l.xywhn[3] as f64);
        let p = |u: f64, v: f64| ((x0 + u * side) as i32, (y0 + v * side) as i32);
        let r = Rectangle::new([p(0.5 - bw / 2.0, 0.5 - bh / 2.0), p(0.5 + bw / 2.0, 0.5 + bh / 2.0)], class_color(l.cls).stroke_width(1));
        area.draw(&r).map_err(drawing)?;
    }
    Ok(())
}

/// Counts of `points` in [0, 1]² on a BINS×BINS grid, row-major by (x bin, y bin).
pub fn bin_2d(points: &[(f32, f32)]) -> Vec<Vec<usize>> {
    let mut grid = vec![vec![0usize; BINS]; BINS];
    let bin = |v: f32| ((v.clamp(0.0, 1.0) * BINS as f32) as usize).min(BINS - 1);
    for &(x, y) in points {
        grid[bin(x)][bin(y)] += 1;
    }
    grid
}

/// A 2-D histogram of `points` over [0, 1]², white (none) to dark blue (most).
fn histogram_2d<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, points: &[(f32, f32)], (xl, yl): (&str, &str)) -> Result<()> {
    let grid = bin_2d(points);
    let most = grid.iter().flatten().copied().max().unwrap_or(0).max(1) as f64;
    let mut chart = ChartBuilder::on(area)
        .margin(12)
        .x_label_area_size(50)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..1.0, 0.0..1.0)
        .map_err(drawing)?;
    chart
        .configure_mesh()
        .disable_mesh()
        .x_desc(xl)
        .y_desc(yl)
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 16))
        .x_label_formatter(&|v| tick(*v, 1.0))
        .y_label_formatter(&|v| tick(*v, 1.0))
        .draw()
        .map_err(drawing)?;
    let step = 1.0 / BINS as f64;
    let cells = grid.iter().enumerate().flat_map(|(i, col)| {
        col.iter().enumerate().filter(|(_, &k)| k > 0).map(move |(j, &k)| {
            let (x, y) = (i as f64 * step, j as f64 * step);
            Rectangle::new([(x, y), (x + step, y + step)], blues(0.15 + 0.85 * k as f64 / most).filled())
        })
    });
    chart.draw_series(cells).map_err(drawing)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_bins() {
        let l = |cls, x, y| Label { cls, xywhn: [x, y, 0.1, 0.2] };
        let labels = [l(0, 0.0, 0.0), l(2, 0.5, 0.5), l(2, 1.0, 0.99)];
        assert_eq!(counts(&labels, 3), [1, 0, 2]);
        let g = bin_2d(&labels.iter().map(|l| (l.xywhn[0], l.xywhn[1])).collect::<Vec<_>>());
        assert_eq!((g[0][0], g[25][25], g[49][49]), (1, 1, 1));
        let dir = std::env::temp_dir().join(format!("yd-labels-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        write(&dir.join("labels.jpg"), &labels, &["a".into(), "b".into(), "c".into()]).unwrap();
        let img = image::open(dir.join("labels.jpg")).unwrap();
        assert_eq!((img.width(), img.height()), (1600, 1600));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
