//! `compare.png` for `compare` and `demo`: mAP50-95 per epoch of the plain and the distilled
//! run of every seed on one chart, and beside it the gain of each seed with the mean gain and
//! its 95% confidence interval.

use std::path::Path;

use anyhow::{Context, Result};
use plotters::style::RGBColor;

use super::plot::{line_chart, Axes, Canvas, Series, Stroke, TAB10};
use super::Results;


/// One seed's pair of runs (their folders) and its gain.
pub struct SeedPair<'a> {
    pub seed: u64,
    pub plain: &'a Path,
    pub distilled: &'a Path,
    pub gain: f64,
}

/// A lighter or darker shade of `c` for the k-th seed, so seeds of one arm stay one hue.
fn shade(c: RGBColor, k: usize) -> RGBColor {
    let f = [1.0, 0.65, 1.35, 0.45, 1.6][k % 5];
    let m = |v: u8| (v as f64 * f).clamp(0.0, 255.0) as u8;
    RGBColor(m(c.0), m(c.1), m(c.2))
}

/// Writes the chart; `mean_ci` is the mean gain and the half-width of its 95% interval.
pub fn write(path: &Path, pairs: &[SeedPair], mean_ci: (f64, f64)) -> Result<()> {
    let curve = |run: &Path| -> Vec<(f64, f64)> {
        let r = Results::load(&run.join("results.csv")).unwrap_or_default();
        // a segmentation run's mask mAP50-95, as compare judges it
        let metric = format!("metrics/mAP50-95({})", r.judged_suffix());
        let (e, m) = (r.column("epoch").unwrap_or_default(), r.column(&metric).unwrap_or_default());
        e.into_iter().zip(m).filter(|p| p.1.is_finite()).collect()
    };
    let mut runs = Vec::new();
    for (k, p) in pairs.iter().enumerate() {
        runs.push(Series::new(format!("plain, seed {}", p.seed), shade(TAB10[0], k), Stroke::Line(2), curve(p.plain)));
        runs.push(Series::new(format!("distilled, seed {}", p.seed), shade(TAB10[1], k), Stroke::Line(2), curve(p.distilled)));
    }
    let n = pairs.len() as f64;
    let gains: Vec<(f64, f64)> = pairs.iter().enumerate().map(|(k, p)| (k as f64, p.gain)).collect();
    let (mean, ci) = mean_ci;
    let ci = if ci.is_finite() { ci } else { 0.0 };
    let across = |y: f64| vec![(-0.5, y), (n - 0.5, y)];
    let gain_series = [
        Series::new("", RGBColor(150, 150, 150), Stroke::Line(1), across(0.0)),
        Series::new("gain per seed", TAB10[2], Stroke::Points, gains),
        Series::new(format!("mean {mean:+.4}"), TAB10[3], Stroke::Line(3), across(mean)),
        Series::new(format!("95% CI ±{ci:.4}"), TAB10[3], Stroke::Dashed, across(mean + ci)),
        Series::new("", TAB10[3], Stroke::Dashed, across(mean - ci)),
    ];
    let mut canvas = Canvas::new(1400, 600);
    {
        let root = canvas.area();
        let (left, right) = root.split_horizontally(900);
        let axes = Axes { title: "mAP50-95 per epoch: distilled vs plain", x: "epoch", y: "mAP50-95", x_range: None, y_range: None, x_names: None };
        line_chart(&left, &axes, &runs, true)?;
        let seeds: Vec<String> = pairs.iter().map(|p| p.seed.to_string()).collect();
        let title = "gain in mAP50-95 per seed";
        let axes = Axes { title, x: "seed", y: "distilled − plain", x_range: Some((-0.5, n - 0.5)), y_range: None, x_names: Some(&seeds) };
        line_chart(&right, &axes, &gain_series, true)?;
    }
    canvas.save_png(path).with_context(|| format!("cannot write {}", path.display()))
}
