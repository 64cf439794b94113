//! `compare`: the A/B harness. Trains a plain and a distilled student per seed
//! with identical settings and reports the paired mAP gain, mean ± 95% CI.

use std::path::Path;

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::report::Results;
use crate::train::{train, TrainArgs};

#[derive(Args, Debug)]
pub struct CompareArgs {
    /// Seeds; each trains one plain and one distilled student.
    #[arg(long, default_value = "0,1,2")]
    pub seeds: String,
    /// Training and distillation options as for `train` (`--teacher` is required).
    #[command(flatten)]
    pub train: TrainArgs,
}

/// Two-sided 97.5% quantile of Student's t with `df` degrees of freedom.
pub fn t_quantile_975(df: usize) -> f64 {
    const T: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101,
        2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
    ];
    match df {
        0 => f64::INFINITY,
        d if d <= 30 => T[d - 1],
        _ => 1.96,
    }
}

/// Mean and half-width of the 95% confidence interval of the mean.
pub fn mean_ci95(x: &[f64]) -> (f64, f64) {
    let n = x.len();
    if n == 0 {
        return (f64::NAN, f64::NAN);
    }
    let mean = x.iter().sum::<f64>() / n as f64;
    if n < 2 {
        return (mean, f64::INFINITY);
    }
    let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    (mean, t_quantile_975(n - 1) * (var / n as f64).sqrt())
}

/// Best (mAP50, mAP50-95) of a finished run, from its results.csv (fitness = mAP50-95).
fn best_of(run: &Path, epochs: usize) -> Option<(f64, f64)> {
    let r = Results::load(&run.join("results.csv")).ok()?;
    if r.rows.len() < epochs || !run.join("weights/best.safetensors").exists() {
        return None;
    }
    let m50 = r.column("metrics/mAP50(B)")?;
    let m = r.column("metrics/mAP50-95(B)")?;
    let i = (0..m.len()).max_by(|&a, &b| m[a].total_cmp(&m[b]))?;
    Some((m50[i], m[i]))
}

pub fn run(a: CompareArgs) -> Result<()> {
    if a.train.distill.teacher.is_none() {
        bail!("compare needs --teacher (and the distillation options to test)");
    }
    let seeds: Vec<u64> =
        a.seeds.split(',').map(|s| s.trim().parse::<u64>().with_context(|| format!("bad seed '{s}' in --seeds"))).collect::<Result<_>>()?;
    let project = a.train.project.join(&a.train.name);
    let mut rows = Vec::new();
    for &seed in &seeds {
        let mut pair = Vec::new();
        for distilled in [false, true] {
            let mut t = a.train.clone();
            t.seed = seed;
            t.project = project.clone();
            t.name = format!("{}-s{seed}", if distilled { "distilled" } else { "plain" });
            t.exist_ok = true;
            t.resume = None;
            if !distilled {
                t.distill.teacher = None;
            }
            let dir = project.join(&t.name);
            // Finished runs are reused, so an interrupted comparison picks up where it stopped.
            let best = match best_of(&dir, t.epochs) {
                Some(b) => {
                    eprintln!("compare: reusing the finished run {}", dir.display());
                    b
                }
                None => {
                    eprintln!("\ncompare: seed {seed}, {} student", if distilled { "distilled" } else { "plain" });
                    train(t.clone(), None)?;
                    best_of(&dir, 1).context("the run left no results")?
                }
            };
            pair.push(best);
        }
        rows.push((seed, pair[0], pair[1]));
    }
    let mut out = String::from("| seed | plain mAP50 | plain mAP50-95 | distilled mAP50 | distilled mAP50-95 | gain mAP50-95 |\n|---:|---:|---:|---:|---:|---:|\n");
    let mut csv = String::from("seed,plain_map50,plain_map50_95,distilled_map50,distilled_map50_95\n");
    for (seed, p, d) in &rows {
        out.push_str(&format!("| {seed} | {:.4} | {:.4} | {:.4} | {:.4} | {:+.4} |\n", p.0, p.1, d.0, d.1, d.1 - p.1));
        csv.push_str(&format!("{seed},{},{},{},{}\n", p.0, p.1, d.0, d.1));
    }
    let gains: Vec<f64> = rows.iter().map(|(_, p, d)| d.1 - p.1).collect();
    let gains50: Vec<f64> = rows.iter().map(|(_, p, d)| d.0 - p.0).collect();
    let (g, ci) = mean_ci95(&gains);
    let (g50, ci50) = mean_ci95(&gains50);
    out.push_str(&format!(
        "\nmean gain over {} seeds (distilled − plain, paired by seed, 95% CI):\n  mAP50-95 {g:+.4} ± {ci:.4}\n  mAP50    {g50:+.4} ± {ci50:.4}\n",
        rows.len()
    ));
    std::fs::write(project.join("compare.csv"), csv)?;
    std::fs::write(project.join("compare.md"), &out)?;
    println!("\n{out}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn confidence_interval_of_known_sample() {
        // mean 2, sd 1, n 4 → half-width t(3)·1/2 = 1.591
        let (m, h) = mean_ci95(&[1.0, 2.0, 3.0, 2.0]);
        assert!((m - 2.0).abs() < 1e-12);
        let sd = (2.0f64 / 3.0).sqrt();
        assert!((h - 3.182 * sd / 2.0).abs() < 1e-9, "{h}");
        assert_eq!(t_quantile_975(1), 12.706);
        assert_eq!(t_quantile_975(100), 1.96);
    }
}
