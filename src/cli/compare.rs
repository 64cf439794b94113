//! `compare`: the A/B harness. Trains a plain and a distilled student per seed
//! with identical settings and reports the paired mAP gain, mean ± 95% CI.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::report::compare_chart::{self, SeedPair};
use crate::report::label_budget::{self, BudgetRow};
use crate::report::Results;
use crate::distill::args::DistillArgs;
use crate::run::{train, RunArgs};
use crate::train::TrainArgs;

#[derive(Args, Debug)]
pub struct CompareArgs {
    /// Seeds, each different; each trains one plain and one distilled student.
    #[arg(long, default_value = "0,1,2", value_parser = crate::options::seeds)]
    pub seeds: crate::options::Seeds,
    /// The comparison at each of these shares of labeled training images (e.g. `0.1,0.25,1`; with
    /// a teacher, the mean teacher included, the other images are unlabeled images), each into its folder `fraction-<f>`,
    /// and label_budget.md / .csv / .png: each arm's mAP50-95 and the gain per share.
    #[arg(long = "label-fractions", value_parser = crate::options::shares)]
    pub label_fractions: Option<crate::options::Shares>,
    /// With --label-fractions: train share f for --epochs / f epochs (rounded up), so that every share
    /// makes as many optimizer steps as the full set does (a smaller labeled set needs more epochs
    /// before its plain student stops improving).
    #[arg(long = "scale-epochs", requires = "label_fractions")]
    pub scale_epochs: bool,
    /// Train each seed's plain and distilled student at the same time (faster on small models,
    /// where one run does not keep every core busy).
    #[arg(long = "side-by-side")]
    pub side_by_side: bool,
    /// Training and distillation options as for `train` (`--teacher` or `--mean-teacher` is required).
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

/// (mAP50, mAP50-95) of a finished run at its best epoch (the one `best` holds, by fitness),
/// of the metrics it is judged by (a segmentation run's masks, else its boxes).
fn best_of(run: &Path, epochs: usize) -> Option<(f64, f64)> {
    let r = Results::load(&run.join("results.csv")).ok()?;
    if r.rows.len() < epochs || !run.join("weights/best.safetensors").exists() {
        return None;
    }
    let suffix = r.judged_suffix();
    let m50 = r.column(&format!("metrics/mAP50({suffix})"))?;
    let m = r.column(&format!("metrics/mAP50-95({suffix})"))?;
    let fitness = r.fitness()?;
    // epochs without validation (`--val false`) read NaN
    let i = (0..m.len()).filter(|&i| fitness[i].is_finite()).max_by(|&a, &b| fitness[a].total_cmp(&fitness[b]))?;
    Some((m50[i], m[i]))
}

/// mAP50-95 (of the metrics the run is judged by) at its last validated epoch: a figure no
/// choice of epoch on the validation set has touched.
fn last_of(run: &Path) -> f64 {
    let r = Results::load(&run.join("results.csv")).ok();
    let m = r.and_then(|r| r.column(&format!("metrics/mAP50-95({})", r.judged_suffix())));
    m.and_then(|m| m.into_iter().rev().find(|v| v.is_finite())).unwrap_or(f64::NAN)
}

/// Paired results of one seed: (mAP50, mAP50-95) of the plain and of the distilled student at
/// their best epochs, and their mAP50-95 at the last epoch.
pub struct PairResult {
    pub seed: u64,
    pub plain: (f64, f64),
    pub distilled: (f64, f64),
    pub last: (f64, f64),
}

/// The run folder of one arm of a seed, under the comparison's folder.
fn arm_name(seed: u64, distilled: bool) -> String {
    format!("{}-s{seed}", if distilled { "distilled" } else { "plain" })
}

/// How the messages name an arm.
fn arm_title(seed: u64, distilled: bool) -> String {
    format!("compare: seed {seed}, {} student", if distilled { "distilled" } else { "plain" })
}

/// The options of one arm: `base` with its seed, its run folder under `project`, and (plain
/// arm) no teacher nor distillation option.
fn arm(base: &RunArgs, project: &Path, seed: u64, distilled: bool) -> RunArgs {
    let mut r = base.clone();
    let t = &mut r.train;
    t.seed = seed;
    t.project = project.to_path_buf();
    t.name = arm_name(seed, distilled);
    t.exist_ok = true;
    t.resume = None;
    if !distilled {
        r.distill = DistillArgs::default();
    }
    r
}

/// Trains one arm; or reuses its finished run, or continues its interrupted one (so a stopped
/// comparison picks up where it stopped), when that run's settings are the ones asked for.
/// Returns its best (mAP50, mAP50-95); `what` names the run in the messages.
pub(crate) fn finished_or_train(r: RunArgs, what: &str) -> Result<(f64, f64)> {
    let t = &r.train;
    let dir = t.project.join(&t.name);
    let last = dir.join("weights/last.safetensors");
    if !last.exists() {
        eprintln!("\n{what}");
        train(r.clone())?;
        return best_of(&dir, 1).context("the run left no results");
    }
    let differ = crate::run::settings_differ(&r, &last)?;
    if !differ.is_empty() {
        bail!(
            "{} holds a run with other settings ({}); it is not reused: choose another --name (or --project), or remove that folder",
            dir.display(),
            differ.join(", ")
        );
    }
    if let Some(b) = best_of(&dir, t.epochs) {
        eprintln!("{what}: reusing the finished run {} (same settings)", dir.display());
        return Ok(b);
    }
    eprintln!("\n{what}: continuing the interrupted run {}", dir.display());
    let resume = TrainArgs { resume: Some(last.to_string_lossy().into_owned()), quiet: t.quiet, ..TrainArgs::default() };
    train(RunArgs { train: resume, distill: DistillArgs::default() })?;
    best_of(&dir, 1).context("the run left no results")
}

/// Trains (or reuses) a plain and a distilled student per seed under `project` and writes
/// `compare.md` and `compare.csv` there. `side_by_side` trains a seed's two students at once.
pub fn compare_seeds(base: &RunArgs, seeds: &[u64], project: &Path, side_by_side: bool) -> Result<(Vec<PairResult>, String)> {
    if !base.distilled() {
        bail!("compare needs --teacher or --mean-teacher (and the distillation options to test)");
    }
    if base.train.resume.is_some() {
        bail!("compare takes no --resume: it continues by itself; rerun the same command and its interrupted runs go on from their last.safetensors");
    }
    // The distilled arm's settings are checked before the plain arm trains.
    base.train.check(1)?;
    crate::train::Extension::check(&base.distill, &crate::default_device())?;
    check_outputs(base, project)?;
    let mut rows = Vec::new();
    for &seed in seeds {
        let (p, d) = (arm(base, project, seed, false), arm(base, project, seed, true));
        let (plain, distilled) = if side_by_side {
            std::thread::scope(|s| {
                let p = s.spawn(|| finished_or_train(p, &arm_title(seed, false)));
                let d = s.spawn(|| finished_or_train(d, &arm_title(seed, true)));
                let join = |h: std::thread::ScopedJoinHandle<'_, Result<(f64, f64)>>| {
                    h.join().map_err(|_| anyhow::anyhow!("a training of seed {seed} panicked"))?
                };
                (join(p), join(d))
            })
        } else {
            (finished_or_train(p, &arm_title(seed, false)), finished_or_train(d, &arm_title(seed, true)))
        };
        let last = (last_of(&project.join(arm_name(seed, false))), last_of(&project.join(arm_name(seed, true))));
        rows.push(PairResult { seed, plain: plain?, distilled: distilled?, last });
    }
    let first_run = seeds.first().and_then(|&s| Results::load(&project.join(arm_name(s, false)).join("results.csv")).ok());
    let masks = first_run.is_some_and(|r| r.judged_suffix() == "M");
    let mut table = report(&rows);
    if masks {
        table.push_str("  (mask metrics, (M), at each run's best epoch by fitness = box + mask mAP50-95)\n");
    }
    let mut csv = String::from("seed,plain_map50,plain_map50_95,distilled_map50,distilled_map50_95,plain_last_map50_95,distilled_last_map50_95\n");
    for r in &rows {
        csv.push_str(&format!("{},{},{},{},{},{},{}\n", r.seed, r.plain.0, r.plain.1, r.distilled.0, r.distilled.1, r.last.0, r.last.1));
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
    let (gl, cil) = mean_ci95(&rows.iter().map(|r| r.last.1 - r.last.0).collect::<Vec<_>>());
    out.push_str(&format!(
        "\nmean gain over {} seeds (distilled − plain, paired by seed, 95% CI):\n  mAP50-95 {g:+.4} ± {ci:.4}\n  mAP50    {g50:+.4} ± {ci50:.4}\n  \
         mAP50-95 at the last epoch {gl:+.4} ± {cil:.4} (no epoch chosen on the validation set)\n",
        rows.len()
    ));
    out
}

pub fn run(a: CompareArgs) -> Result<()> {
    let project = a.train.train.project.join(&a.train.train.name);
    if let Some(fractions) = &a.label_fractions {
        return compare_by_label_fraction(&a, &fractions.0, &project);
    }
    let (_, table) = compare_seeds(&a.train, &a.seeds.0, &project, a.side_by_side)?;
    println!("\n{table}");
    Ok(())
}

/// The comparison at each label fraction, then the table and chart of the gain by fraction.
fn compare_by_label_fraction(a: &CompareArgs, fractions: &[f64], project: &Path) -> Result<()> {
    if a.train.train.label_fraction != TrainArgs::default().label_fraction {
        bail!("--label-fractions runs the comparison at each share itself: give it or --label-fraction, not both");
    }
    let mut rows = Vec::new();
    for &f in fractions {
        let mut base = a.train.clone();
        base.train.label_fraction = f;
        if a.scale_epochs {
            base.train.epochs = scaled_epochs(base.train.epochs, f);
        }
        eprintln!("\ncompare: {f} of the labeled images, {} epochs", base.train.epochs);
        let (pairs, table) = compare_seeds(&base, &a.seeds.0, &project.join(format!("fraction-{f}")), a.side_by_side)?;
        println!("\nlabeled fraction {f}:\n{table}");
        rows.push(budget_row(f, base.train.epochs, &pairs));
    }
    let table = label_budget::table(&rows);
    std::fs::write(project.join("label_budget.md"), &table).with_context(|| format!("cannot write {}", project.display()))?;
    std::fs::write(project.join("label_budget.csv"), label_budget::csv(&rows))?;
    label_budget::write(&project.join("label_budget.png"), &rows)?;
    println!("\nmAP50-95 by share of labeled images (95% CI over seeds, gain paired by seed):\n{table}");
    Ok(())
}

/// Epochs at a label fraction that make as many optimizer steps as `epochs` on the full set.
fn scaled_epochs(epochs: usize, fraction: f64) -> usize {
    // the small tolerance keeps 40 / 0.1 at 400 despite 0.1's binary rounding
    (epochs as f64 / fraction - 1e-9).ceil() as usize
}

/// The means of each arm and of the gain over the seeds of one fraction.
fn budget_row(fraction: f64, epochs: usize, pairs: &[PairResult]) -> BudgetRow {
    let of = |f: fn(&PairResult) -> f64| mean_ci95(&pairs.iter().map(f).collect::<Vec<_>>());
    BudgetRow {
        fraction,
        epochs,
        seeds: pairs.len(),
        plain: of(|p| p.plain.1),
        distilled: of(|p| p.distilled.1),
        gain: of(|p| p.distilled.1 - p.plain.1),
    }
}

/// compare.md, compare.csv and compare.png replace none of the comparison's inputs.
fn check_outputs(base: &RunArgs, project: &Path) -> Result<()> {
    let mut inputs = crate::files::Inputs::default();
    inputs.add("--model", base.train.model.as_deref().unwrap_or_default());
    inputs.add("--teacher", base.distill.teacher.as_deref().unwrap_or_default());
    if let Some(d) = &base.train.data {
        inputs.add("--data", d);
    }
    for f in ["compare.md", "compare.csv", "compare.png"] {
        inputs.check_output("--name (or --project)", &project.join(f))?;
    }
    std::fs::create_dir_all(project).with_context(|| format!("cannot create {}", project.display()))
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

    #[test]
    fn scaled_epochs_keep_the_optimizer_steps() {
        assert_eq!(scaled_epochs(40, 0.1), 400);
        assert_eq!(scaled_epochs(40, 0.25), 160);
        assert_eq!(scaled_epochs(40, 1.0), 40);
        assert_eq!(scaled_epochs(10, 0.3), 34);
    }
}
