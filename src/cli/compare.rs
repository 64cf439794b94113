//! `compare`: the A/B harness. Trains a plain and a distilled student per seed
//! with identical settings and reports the paired mAP gain, mean ± 95% CI.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::report::compare_chart::{self, SeedPair};
use crate::report::Results;
use crate::run::{train, RunArgs};

#[derive(Args, Debug)]
pub struct CompareArgs {
    /// Seeds; each trains one plain and one distilled student.
    #[arg(long, default_value = "0,1,2")]
    pub seeds: String,
    /// Train each seed's plain and distilled student at the same time (faster on small models,
    /// where one run does not keep every core busy).
    #[arg(long = "side-by-side")]
    pub side_by_side: bool,
    /// Training and distillation options as for `train` (`--teacher` is required).
    #[command(flatten)]
    pub train: RunArgs,
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
    // epochs without validation (`--val false`) read NaN
    let i = (0..m.len()).filter(|&i| m[i].is_finite()).max_by(|&a, &b| m[a].total_cmp(&m[b]))?;
    Some((m50[i], m[i]))
}

/// Paired results of one seed: (mAP50, mAP50-95) of the plain and of the distilled student.
pub struct PairResult {
    pub seed: u64,
    pub plain: (f64, f64),
    pub distilled: (f64, f64),
}

/// The run folder of one arm of a seed, under the comparison's folder.
fn arm_name(seed: u64, distilled: bool) -> String {
    format!("{}-s{seed}", if distilled { "distilled" } else { "plain" })
}

/// The options of one arm: `base` with its seed, its run folder under `project`, and (plain
/// arm) no teacher.
fn arm(base: &RunArgs, project: &Path, seed: u64, distilled: bool) -> RunArgs {
    let mut r = base.clone();
    let t = &mut r.train;
    t.seed = seed;
    t.project = project.to_path_buf();
    t.name = arm_name(seed, distilled);
    t.exist_ok = true;
    t.resume = None;
    if !distilled {
        r.distill.teacher = None;
    }
    r
}

/// Trains one arm, or reuses its finished run (so an interrupted comparison picks up where it
/// stopped); returns its best (mAP50, mAP50-95).
fn finished_or_train(r: RunArgs) -> Result<(f64, f64)> {
    let t = &r.train;
    let dir = t.project.join(&t.name);
    if let Some(b) = best_of(&dir, t.epochs) {
        eprintln!("compare: reusing the finished run {}", dir.display());
        return Ok(b);
    }
    eprintln!("\ncompare: seed {}, {} student", t.seed, if r.distilled() { "distilled" } else { "plain" });
    train(r)?;
    best_of(&dir, 1).context("the run left no results")
}

/// Trains (or reuses) a plain and a distilled student per seed under `project` and writes
/// `compare.md` and `compare.csv` there. `side_by_side` trains a seed's two students at once.
pub fn compare_seeds(base: &RunArgs, seeds: &[u64], project: &Path, side_by_side: bool) -> Result<(Vec<PairResult>, String)> {
    if !base.distilled() {
        bail!("compare needs --teacher (and the distillation options to test)");
    }
    let mut rows = Vec::new();
    for &seed in seeds {
        let (p, d) = (arm(base, project, seed, false), arm(base, project, seed, true));
        let (plain, distilled) = if side_by_side {
            std::thread::scope(|s| {
                let p = s.spawn(|| finished_or_train(p));
                let d = s.spawn(|| finished_or_train(d));
                let join = |h: std::thread::ScopedJoinHandle<'_, Result<(f64, f64)>>| {
                    h.join().map_err(|_| anyhow::anyhow!("a training of seed {seed} panicked"))?
                };
                (join(p), join(d))
            })
        } else {
            (finished_or_train(p), finished_or_train(d))
        };
        rows.push(PairResult { seed, plain: plain?, distilled: distilled? });
    }
    let table = report(&rows);
    let mut csv = String::from("seed,plain_map50,plain_map50_95,distilled_map50,distilled_map50_95\n");
    for r in &rows {
        csv.push_str(&format!("{},{},{},{},{}\n", r.seed, r.plain.0, r.plain.1, r.distilled.0, r.distilled.1));
    }
    std::fs::write(project.join("compare.csv"), csv)?;
    std::fs::write(project.join("compare.md"), &table)?;
    chart(&rows, project)?;
    Ok((rows, table))
}

/// compare.png next to compare.md: every seed's two runs per epoch, and the gains.
fn chart(rows: &[PairResult], project: &Path) -> Result<()> {
    let dirs: Vec<(PathBuf, PathBuf)> = rows.iter().map(|r| (project.join(arm_name(r.seed, false)), project.join(arm_name(r.seed, true)))).collect();
    let pairs: Vec<SeedPair> = rows
        .iter()
        .zip(&dirs)
        .map(|(r, (p, d))| SeedPair { seed: r.seed, plain: p, distilled: d, gain: r.distilled.1 - r.plain.1 })
        .collect();
    let gains: Vec<f64> = pairs.iter().map(|p| p.gain).collect();
    compare_chart::write(&project.join("compare.png"), &pairs, mean_ci95(&gains))
}

/// The per-seed table and the mean gains with their 95% confidence intervals.
fn report(rows: &[PairResult]) -> String {
    let mut out = String::from("| seed | plain mAP50 | plain mAP50-95 | distilled mAP50 | distilled mAP50-95 | gain mAP50-95 |\n|---:|---:|---:|---:|---:|---:|\n");
    for r in rows {
        let (p, d) = (r.plain, r.distilled);
        out.push_str(&format!("| {} | {:.4} | {:.4} | {:.4} | {:.4} | {:+.4} |\n", r.seed, p.0, p.1, d.0, d.1, d.1 - p.1));
    }
    let gains: Vec<f64> = rows.iter().map(|r| r.distilled.1 - r.plain.1).collect();
    let gains50: Vec<f64> = rows.iter().map(|r| r.distilled.0 - r.plain.0).collect();
    let (g, ci) = mean_ci95(&gains);
    let (g50, ci50) = mean_ci95(&gains50);
    out.push_str(&format!(
        "\nmean gain over {} seeds (distilled − plain, paired by seed, 95% CI):\n  mAP50-95 {g:+.4} ± {ci:.4}\n  mAP50    {g50:+.4} ± {ci50:.4}\n",
        rows.len()
    ));
    out
}

pub fn run(a: CompareArgs) -> Result<()> {
    let seeds = parse_seeds(&a.seeds)?;
    let project = a.train.train.project.join(&a.train.train.name);
    std::fs::create_dir_all(&project).with_context(|| format!("cannot create {}", project.display()))?;
    let (_, table) = compare_seeds(&a.train, &seeds, &project, a.side_by_side)?;
    println!("\n{table}");
    Ok(())
}

/// `0,1,2` → [0, 1, 2]; errors name the option.
pub fn parse_seeds(s: &str) -> Result<Vec<u64>> {
    let seeds: Vec<u64> = s.split(',').map(|x| x.trim().parse::<u64>().with_context(|| format!("bad seed '{x}' in --seeds"))).collect::<Result<_>>()?;
    if seeds.is_empty() {
        bail!("--seeds needs at least one seed");
    }
    Ok(seeds)
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
