//! Run outputs a person reads: results.csv and the pictures (results.png, validation curves,
//! confusion matrices, batch mosaics, the compare chart).

pub mod compare_chart;
pub mod label_budget;
pub mod labels_plot;
pub mod mosaic;
pub mod plot;
pub mod val_plots;

use std::path::Path;

use anyhow::{Context, Result};

use plot::{gaussian_smooth, line_chart, Axes, Canvas, Series, Stroke, TAB10};

/// results.csv: one row per epoch, a column per value any row had.
#[derive(Debug, Clone, Default)]
pub struct Results {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<f64>>,
}

impl Results {
    /// Reads an existing results.csv (for resume); an absent file gives an empty table.
    pub fn load(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Ok(Self::default());
        }
        let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        Ok(Self::parse(&text))
    }

    /// A results.csv's text as a table (unparsable values read as NaN).
    fn parse(text: &str) -> Self {
        let mut lines = text.lines();
        let columns: Vec<String> = lines.next().unwrap_or("").split(',').map(|s| s.trim().to_string()).collect();
        let rows = lines
            .filter(|l| !l.trim().is_empty())
            .map(|l| l.split(',').map(|v| v.trim().parse::<f64>().unwrap_or(f64::NAN)).collect())
            .collect();
        Self { columns, rows }
    }

    /// Appends a row of (column, value) pairs. A column first seen in this row is added, with
    /// NaN in the earlier rows (e.g. the metrics when `--val false` validates only the last
    /// epoch); a column this row lacks gets NaN.
    pub fn push(&mut self, row: &[(String, f64)]) {
        for (k, _) in row {
            if !self.columns.contains(k) {
                self.columns.push(k.clone());
                for r in &mut self.rows {
                    r.push(f64::NAN);
                }
            }
        }
        let vals = self.columns.iter().map(|c| row.iter().find(|(k, _)| k == c).map(|p| p.1).unwrap_or(f64::NAN)).collect();
        self.rows.push(vals);
    }

    /// Keeps the rows of the first `done` epochs (1-based `epoch` column), dropping
    /// rows a crashed run wrote after its last checkpoint.
    pub fn keep_epochs(&mut self, done: usize) {
        self.rows.retain(|r| r.first().is_some_and(|e| (*e as usize) <= done));
    }

    pub fn column(&self, name: &str) -> Option<Vec<f64>> {
        let i = self.columns.iter().position(|c| c == name)?;
        Some(self.rows.iter().map(|r| r[i]).collect())
    }

    /// The suffix of the metrics a run is judged by: a task's own when it logged them (`M`,
    /// a segmentation run's masks), else the boxes' (`B`).
    pub fn judged_suffix(&self) -> &'static str {
        if self.columns.iter().any(|c| c == "metrics/mAP50-95(M)") {
            "M"
        } else {
            "B"
        }
    }

    /// The fitness `best` is chosen by, per epoch: the box mAP50-95, plus the masks' when
    /// logged (Ultralytics 8.4.190's fitness for each task).
    pub fn fitness(&self) -> Option<Vec<f64>> {
        let boxes = self.column("metrics/mAP50-95(B)")?;
        Some(match self.column("metrics/mAP50-95(M)") {
            Some(masks) => boxes.iter().zip(masks).map(|(b, m)| b + m).collect(),
            None => boxes,
        })
    }

    pub fn to_csv(&self) -> String {
        let mut s = self.columns.join(",");
        s.push('\n');
        for r in &self.rows {
            let vals: Vec<String> = r.iter().map(|v| format!("{v:.6}")).collect();
            s.push_str(&vals.join(","));
            s.push('\n');
        }
        s
    }

    pub fn save(&self, path: &Path) -> Result<()> {
        crate::files::write_atomic(path, self.to_csv().as_bytes())
    }

    /// The columns results.png draws: every loss (distillation terms included) and metric, in
    /// the table's order; not epoch, time or learning rates.
    pub fn plotted_columns(&self) -> Vec<&str> {
        self.columns.iter().map(String::as_str).filter(|c| *c != "epoch" && *c != "time" && !c.starts_with("lr/")).collect()
    }

    /// results.png: a panel per plotted column with the raw values per epoch and, dashed, their
    /// Gaussian smoothing (σ = 3), as Ultralytics draws them; five panels per row.
    pub fn plot(&self, path: &Path) -> Result<()> {
        let columns = self.plotted_columns();
        if columns.is_empty() {
            return Ok(());
        }
        let epochs = self.column("epoch").unwrap_or_default();
        let cols = columns.len().min(5);
        let rows = columns.len().div_ceil(cols);
        let mut canvas = Canvas::new(340 * cols as u32, 280 * rows as u32);
        let area = canvas.area();
        let panels = area.split_evenly((rows, cols));
        for (i, (name, panel)) in columns.iter().zip(&panels).enumerate() {
            let points: Vec<(f64, f64)> =
                epochs.iter().zip(self.column(name).unwrap_or_default()).map(|(&x, y)| (x, y)).filter(|p| p.1.is_finite()).collect();
            let smooth = gaussian_smooth(&points.iter().map(|p| p.1).collect::<Vec<_>>(), 3.0);
            let smooth = points.iter().zip(smooth).map(|(p, s)| (p.0, s)).collect();
            let series = [
                Series::new("results", TAB10[0], Stroke::Points, points),
                Series::new("smooth", TAB10[1], Stroke::Dashed, smooth),
            ];
            let axes = Axes { title: name, x: "epoch", y: "", x_range: None, y_range: None, x_names: None };
            line_chart(panel, &axes, &series, i == 0)?;
        }
        drop(panels);
        drop(area);
        canvas.save_png(path).with_context(|| format!("cannot write {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_round_trip_and_truncate() {
        let mut r = Results::default();
        r.push(&[("epoch".into(), 1.0), ("loss".into(), 2.5)]);
        r.push(&[("epoch".into(), 2.0), ("loss".into(), 2.0)]);
        let dir = std::env::temp_dir().join(format!("yd-results-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("results.csv");
        r.save(&p).unwrap();
        let mut back = Results::load(&p).unwrap();
        assert_eq!(back.columns, vec!["epoch", "loss"]);
        assert_eq!(back.column("loss").unwrap(), vec![2.5, 2.0]);
        back.keep_epochs(1);
        assert_eq!(back.rows.len(), 1);
        r.plot(&dir.join("results.png")).unwrap();
        assert!(dir.join("results.png").exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn results_png_has_a_panel_per_loss_term_and_metric() {
        let mut r = Results::default();
        let cols = ["epoch", "time", "train/box_loss", "train/d_cwd", "train/l_ld", "metrics/mAP50(B)", "val/box_loss", "lr/pg0"];
        r.push(&cols.iter().map(|c| (c.to_string(), 1.0)).collect::<Vec<_>>());
        assert_eq!(r.plotted_columns(), ["train/box_loss", "train/d_cwd", "train/l_ld", "metrics/mAP50(B)", "val/box_loss"]);
    }

    #[test]
    fn a_column_that_appears_later_is_kept() {
        // `--val false`: only the last epoch has metrics
        let mut r = Results::default();
        r.push(&[("epoch".into(), 1.0), ("loss".into(), 2.5)]);
        r.push(&[("epoch".into(), 2.0), ("loss".into(), 2.0), ("metrics/mAP50(B)".into(), 0.4)]);
        let m = r.column("metrics/mAP50(B)").expect("the metric column");
        assert!(m[0].is_nan() && m[1] == 0.4, "{m:?}");
        assert_eq!(r.rows.iter().map(Vec::len).collect::<Vec<_>>(), [3, 3]);
        let back = Results::parse(&r.to_csv());
        assert_eq!(back.column("metrics/mAP50(B)").unwrap()[1], 0.4);
    }
}
