//! `label_budget.png` and its table, for `compare --label-fractions`: at each share of labeled
//! images, each arm's mean mAP50-95 and the paired gain, with their 95% confidence intervals.

use std::path::Path;

use anyhow::{Context, Result};
use plotters::style::RGBColor;

use super::plot::{line_chart, Axes, Canvas, Series, Stroke, TAB10};

/// A mean and the half-width of its 95% confidence interval (infinite with one seed).
pub type MeanCi = (f64, f64);

/// The comparison at one label fraction.
pub struct BudgetRow {
    pub fraction: f64,
    pub epochs: usize,
    pub seeds: usize,
    pub plain: MeanCi,
    pub distilled: MeanCi,
    pub gain: MeanCi,
}

fn shown(v: MeanCi) -> String {
    if v.1.is_finite() {
        format!("{:.4} ± {:.4}", v.0, v.1)
    } else {
        format!("{:.4}", v.0)
    }
}

/// The markdown table: one row per fraction, the gain's interval and whether it excludes zero.
pub fn table(rows: &[BudgetRow]) -> String {
    let mut out = String::from(
        "| labeled fraction | epochs | seeds | plain mAP50-95 | distilled mAP50-95 | gain (95% CI) | CI excludes 0 |\n|---:|---:|---:|---:|---:|---:|:---:|\n",
    );
    for r in rows {
        let (g, ci) = r.gain;
        let sure = if !ci.is_finite() { "n/a (one seed)" } else if g - ci > 0.0 { "yes, gain" } else if g + ci < 0.0 { "yes, loss" } else { "no" };
        out.push_str(&format!(
            "| {} | {} | {} | {} | {} | {:+.4}{} | {sure} |\n",
            r.fraction,
            r.epochs,
            r.seeds,
            shown(r.plain),
            shown(r.distilled),
            g,
            if ci.is_finite() { format!(" ± {ci:.4}") } else { String::new() }
        ));
    }
    out
}

/// The same as CSV (the half-widths empty with one seed).
pub fn csv(rows: &[BudgetRow]) -> String {
    let ci = |v: f64| if v.is_finite() { v.to_string() } else { String::new() };
    let mut out = String::from("fraction,epochs,seeds,plain_map50_95,plain_ci95,distilled_map50_95,distilled_ci95,gain,gain_ci95\n");
    for r in rows {
        out.push_str(&format!(
            "{},{},{},{},{},{},{},{},{}\n",
            r.fraction,
            r.epochs,
            r.seeds,
            r.plain.0,
            ci(r.plain.1),
            r.distilled.0,
            ci(r.distilled.1),
            r.gain.0,
            ci(r.gain.1)
        ));
    }
    out
}

/// A mean's line and its interval's two dashed bounds (the bounds only when finite).
fn with_interval(label: &str, color: RGBColor, values: &[MeanCi]) -> Vec<Series> {
    let at = |f: &dyn Fn(MeanCi) -> f64| values.iter().enumerate().map(|(k, v)| (k as f64, f(*v))).collect::<Vec<_>>();
    let mut out = vec![Series::new(label, color, Stroke::Line(3), at(&|v| v.0))];
    if values.iter().all(|v| v.1.is_finite()) {
        out.push(Series::new(format!("{label}: 95% CI"), color, Stroke::Dashed, at(&|v| v.0 + v.1)));
        out.push(Series::new("", color, Stroke::Dashed, at(&|v| v.0 - v.1)));
    }
    out
}

/// Writes the chart: each arm's mAP50-95 per labeled fraction (left) and the gain (right).
pub fn write(path: &Path, rows: &[BudgetRow]) -> Result<()> {
    let names: Vec<String> = rows.iter().map(|r| format!("{}", r.fraction)).collect();
    let n = rows.len() as f64;
    let pick = |f: fn(&BudgetRow) -> MeanCi| rows.iter().map(f).collect::<Vec<_>>();
    let mut arms = with_interval("plain", TAB10[0], &pick(|r| r.plain));
    arms.extend(with_interval("distilled", TAB10[1], &pick(|r| r.distilled)));
    let mut gains = vec![Series::new("", RGBColor(150, 150, 150), Stroke::Line(1), vec![(-0.5, 0.0), (n - 0.5, 0.0)])];
    gains.extend(with_interval("gain", TAB10[3], &pick(|r| r.gain)));
    let mut canvas = Canvas::new(1400, 600);
    {
        let root = canvas.area();
        let (left, right) = root.split_horizontally(700);
        let range = Some((-0.5, n - 0.5));
        let axes = Axes { title: "mAP50-95 by share of labeled images (mean over seeds)", x: "labeled fraction", y: "mAP50-95", x_range: range, y_range: None, x_names: Some(&names) };
        line_chart(&left, &axes, &arms, true)?;
        let axes = Axes { title: "gain of distillation (paired by seed)", x: "labeled fraction", y: "distilled − plain", x_range: range, y_range: None, x_names: Some(&names) };
        line_chart(&right, &axes, &gains, true)?;
    }
    canvas.save_png(path).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_says_whether_each_interval_excludes_zero() {
        let row = |fraction, gain| BudgetRow { fraction, epochs: 40, seeds: 3, plain: (0.3, 0.01), distilled: (0.35, 0.02), gain };
        let t = table(&[row(0.1, (0.05, 0.02)), row(0.25, (0.01, 0.03)), row(1.0, (-0.04, 0.01)), BudgetRow { seeds: 1, ..row(0.5, (0.02, f64::INFINITY)) }]);
        let lines: Vec<&str> = t.lines().skip(2).collect();
        assert!(lines[0].starts_with("| 0.1 | 40 | 3 | 0.3000 ± 0.0100 | 0.3500 ± 0.0200 | +0.0500 ± 0.0200 | yes, gain |"), "{t}");
        assert!(lines[1].ends_with("| no |") && lines[2].ends_with("| yes, loss |") && lines[3].ends_with("| n/a (one seed) |"), "{t}");
        assert!(csv(&[BudgetRow { seeds: 1, ..row(0.5, (0.02, f64::INFINITY)) }]).ends_with("0.02,\n"));
    }
}
