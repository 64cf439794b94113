//! The pictures of a validation, with Ultralytics 8.4.190's file names: `BoxPR_curve.png`,
//! `BoxF1_curve.png`, `BoxP_curve.png`, `BoxR_curve.png`, `confusion_matrix.png`,
//! `confusion_matrix_normalized.png` and `val_batch{0,1,2}_{labels,pred}.jpg`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::mosaic::{self, ValBatch};
use super::plot::{blues, drawing, line_chart, side_legend, Axes, Canvas, Series, Stroke, FONT, MEAN_BLUE, TAB10};
use crate::eval::confusion::ConfusionMatrix;
use crate::eval::metrics::Curves;
use crate::eval::validate::ValResult;

/// Per-class lines get a legend entry up to this many classes (more: gray, no legend).
const LEGEND_CLASSES: usize = 20;

/// Every file [`write`] makes, in order (the batch mosaics only as far as batches were kept).
pub const CURVE_FILES: [&str; 4] = ["BoxPR_curve.png", "BoxF1_curve.png", "BoxP_curve.png", "BoxR_curve.png"];
pub const CONFUSION_FILES: [&str; 2] = ["confusion_matrix_normalized.png", "confusion_matrix.png"];

/// Writes the curves, both confusion matrices and the mosaics of `batches` (the first
/// validation batches) into `dir`; returns the files written.
pub fn write(dir: &Path, r: &ValResult, batches: &[ValBatch], names: &[String]) -> Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    let mut out = |name: String| {
        let p = dir.join(name);
        written.push(p.clone());
        p
    };
    // the boxes' curves, then the task's own (a segmentation model's `MaskPR_curve.png`, …)
    let own = r.task.iter().map(|t| (t.pictures, &t.curves));
    for (prefix, c) in std::iter::once(("Box", &r.curves)).chain(own) {
        pr_curve(c, names, &out(format!("{prefix}PR_curve.png")))?;
        for (kind, label, rows) in [("F1", "F1", &c.f1), ("P", "Precision", &c.p), ("R", "Recall", &c.r)] {
            confidence_curve(c, rows, label, names, &out(format!("{prefix}{kind}_curve.png")))?;
        }
    }
    confusion(&r.confusion, names, true, &out(CONFUSION_FILES[0].into()))?;
    confusion(&r.confusion, names, false, &out(CONFUSION_FILES[1].into()))?;
    for (i, s) in batches.iter().enumerate() {
        mosaic::save(&s.labels, names, &out(format!("val_batch{i}_labels.jpg")))?;
        mosaic::save(&s.predictions, names, &out(format!("val_batch{i}_pred.jpg")))?;
    }
    Ok(written)
}

fn class_name(names: &[String], c: usize) -> String {
    names.get(c).cloned().unwrap_or_else(|| c.to_string())
}

/// A curve chart: the per-class lines (coloured and in the legend for up to 20 classes, gray
/// otherwise) and the thick blue line of all classes, with the legend beside the chart.
fn curve_chart(path: &Path, axes: &Axes, classes: Vec<Series>, all: Series) -> Result<()> {
    let mut canvas = Canvas::new(1200, 800);
    {
        let root = canvas.area();
        let (chart, legend) = root.split_horizontally(920);
        let mut entries: Vec<(String, RGBColor, u32)> = classes.iter().filter(|s| !s.label.is_empty()).map(|s| (s.label.clone(), s.color, 2)).collect();
        entries.push((all.label.clone(), all.color, 4));
        let mut series = classes;
        series.push(all);
        line_chart(&chart, axes, &series, false)?;
        side_legend(&legend, &entries)?;
        root.present().map_err(drawing)?;
    }
    canvas.save_png(path).with_context(|| format!("cannot write {}", path.display()))
}

fn class_lines(c: &Curves, rows: &[Vec<f64>], label: impl Fn(usize) -> String) -> Vec<Series> {
    let legend = !c.classes.is_empty() && c.classes.len() <= LEGEND_CLASSES;
    rows.iter()
        .enumerate()
        .map(|(i, row)| {
            let (text, color) = if legend { (label(i), TAB10[i % TAB10.len()]) } else { (String::new(), RGBColor(128, 128, 128)) };
            Series::new(text, color, Stroke::Line(2), c.x.iter().copied().zip(row.iter().copied()).collect())
        })
        .collect()
}

/// `BoxPR_curve.png`: precision against recall per class at IoU 0.5, with AP50 in the legend.
fn pr_curve(c: &Curves, names: &[String], path: &Path) -> Result<()> {
    let lines = class_lines(c, &c.pr, |i| format!("{} {:.3}", class_name(names, c.classes[i]), c.ap50[i]));
    let map50 = c.ap50.iter().sum::<f64>() / c.ap50.len().max(1) as f64;
    let mean = Curves::mean(&c.pr);
    let all = Series::new(format!("all classes {map50:.3} mAP@0.5"), MEAN_BLUE, Stroke::Line(4), c.x.iter().copied().zip(mean).collect());
    let axes = Axes { title: "Precision-Recall Curve", x: "Recall", y: "Precision", x_range: Some((0.0, 1.0)), y_range: Some((0.0, 1.0)), x_names: None };
    curve_chart(path, &axes, lines, all)
}

/// `Box{F1,P,R}_curve.png`: a metric against the confidence threshold per class; the smoothed
/// mean over classes is labelled with its maximum and where it is reached.
fn confidence_curve(c: &Curves, rows: &[Vec<f64>], metric: &str, names: &[String], path: &Path) -> Result<()> {
    let lines = class_lines(c, rows, |i| class_name(names, c.classes[i]));
    let mean = Curves::smoothed_mean(rows);
    let (top, at) = c.peak(rows);
    let all = Series::new(format!("all classes {top:.2} at {at:.3}"), MEAN_BLUE, Stroke::Line(4), c.x.iter().copied().zip(mean).collect());
    let title = format!("{metric}-Confidence Curve");
    let axes = Axes { title: &title, x: "Confidence", y: metric, x_range: Some((0.0, 1.0)), y_range: Some((0.0, 1.0)), x_names: None };
    curve_chart(path, &axes, lines, all)
}

/// `confusion_matrix[_normalized].png`: predicted class (rows) against true class (columns),
/// background last; the normalised version divides each true class's column by its total.
/// Values under 0.005 are left blank; the cells carry their value up to 29 rows.
fn confusion(m: &ConfusionMatrix, names: &[String], normalize: bool, path: &Path) -> Result<()> {
    let values = if normalize { m.normalized() } else { m.counts.clone() };
    let n = m.nc + 1;
    let shown = |v: f64| v >= 0.005;
    let vmax = values.iter().flatten().copied().filter(|&v| shown(v)).fold(0.0, f64::max).max(1e-9);
    let mut canvas = Canvas::new(1200, 900);
    {
        let root = canvas.area();
        let title = if normalize { "Confusion Matrix Normalized" } else { "Confusion Matrix" };
        let (left, top, right, bottom) = (170i32, 70i32, 170i32, 170i32);
        let cell = ((1200 - left - right) / n as i32).min((900 - top - bottom) / n as i32).max(1);
        let side = cell * n as i32;
        let centered = |size: i32| TextStyle::from((FONT, size).into_font()).pos(Pos::new(HPos::Center, VPos::Center));
        root.draw(&Text::new(title, (left + side / 2, top / 2), centered(22))).map_err(drawing)?;
        let labels: Vec<String> = (0..n).map(|i| if i == m.nc { "background".into() } else { class_name(names, i) }).collect();
        let tick = (15.0 - 0.1 * n as f64).max(6.0) as i32;
        for (p, row) in values.iter().enumerate() {
            for (t, &v) in row.iter().enumerate() {
                let (x, y) = (left + t as i32 * cell, top + p as i32 * cell);
                let fill = if shown(v) { blues(v / vmax) } else { WHITE };
                root.draw(&Rectangle::new([(x, y), (x + cell, y + cell)], fill.filled())).map_err(drawing)?;
                if shown(v) && n < 30 {
                    let text = if normalize { format!("{v:.2}") } else { format!("{}", v.round() as i64) };
                    let color = if v > 0.45 * vmax { WHITE } else { BLACK };
                    let size = (cell / 4).clamp(8, 18);
                    root.draw(&Text::new(text, (x + cell / 2, y + cell / 2), centered(size).color(&color))).map_err(drawing)?;
                }
            }
        }
        if n < 99 {
            for (i, label) in labels.iter().enumerate() {
                let c = i as i32 * cell + cell / 2;
                let right_aligned = TextStyle::from((FONT, tick).into_font()).pos(Pos::new(HPos::Right, VPos::Center));
                root.draw(&Text::new(label.clone(), (left - 6, top + c), right_aligned.clone())).map_err(drawing)?;
                let down = right_aligned.transform(FontTransform::Rotate270);
                root.draw(&Text::new(label.clone(), (left + c, top + side + 6), down)).map_err(drawing)?;
            }
        }
        root.draw(&Text::new("True", (left + side / 2, top + side + bottom - 20), centered(16))).map_err(drawing)?;
        let rotated = centered(16).transform(FontTransform::Rotate270);
        root.draw(&Text::new("Predicted", (22, top + side / 2), rotated)).map_err(drawing)?;
        colorbar(&root, (left + side + 30, top, 24, side), vmax, normalize)?;
        root.present().map_err(drawing)?;
    }
    canvas.save_png(path).with_context(|| format!("cannot write {}", path.display()))
}

/// A vertical colour scale from 0 (bottom) to `vmax` (top) with five ticks.
fn colorbar<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, (x, y, w, h): (i32, i32, i32, i32), vmax: f64, normalize: bool) -> Result<()> {
    for k in 0..h {
        let t = 1.0 - k as f64 / (h - 1).max(1) as f64;
        root.draw(&Rectangle::new([(x, y + k), (x + w, y + k + 1)], blues(t).filled())).map_err(drawing)?;
    }
    let font = TextStyle::from((FONT, 13).into_font()).pos(Pos::new(HPos::Left, VPos::Center));
    for k in 0..=4 {
        let v = vmax * k as f64 / 4.0;
        let text = if normalize { format!("{v:.2}") } else { format!("{v:.0}") };
        root.draw(&Text::new(text, (x + w + 6, y + h - (h * k) / 4), font.clone())).map_err(drawing)?;
    }
    Ok(())
}
