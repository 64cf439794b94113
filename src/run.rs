//! A training run as the `train` command describes it: detection training (`train`) and,
//! with `--teacher` or `--mean-teacher`, distillation (`distill`) plugged into it as its extension.

use anyhow::{Context, Result};
use clap::Args;
use serde::{Deserialize, Serialize};

use crate::distill::args::DistillArgs;
use crate::distill::extension::SECTION;
use crate::train::{self, setup::changed_options, TrainArgs, TrainSummary};

#[derive(Args, Debug, Clone, Serialize, Deserialize)]
pub struct RunArgs {
    #[command(flatten)]
    pub train: TrainArgs,
    #[command(flatten)]
    pub distill: DistillArgs,
}

impl RunArgs {
    /// Arguments from command-line flags (e.g. `["--model", "yolov8n.yaml", …]`),
    /// with every other option at its default.
    pub fn from_flags<S: AsRef<str>>(flags: &[S]) -> Result<Self> {
        crate::options::from_flags(flags)
    }

    /// Whether the run learns from a teacher (a file, or the mean teacher).
    pub fn distilled(&self) -> bool {
        self.distill.active()
    }
}

/// Trains as `r` says: distilled when it names a teacher or the mean teacher (a resumed run: when its
/// checkpoint does).
pub fn train(r: RunArgs) -> Result<TrainSummary> {
    let mut distill = match r.train.resume_path() {
        Some(last) => saved_distillation(&r.distill, &last)?,
        None => {
            let idle = r.distill.given_without_teacher();
            if !idle.is_empty() {
                eprintln!("warning: {} act only with --teacher; without one they do nothing", idle.join(", "));
            }
            r.distill.check_pseudo(r.train.epochs)?;
            Some(r.distill).filter(DistillArgs::active)
        }
    };
    train::train(r.train, distill.as_mut().map(|d| d as &mut dyn train::Extension))
}

/// The distillation settings a checkpoint was trained with (None for a plain run); options
/// given next to `--resume` are named as ignored.
fn saved_distillation(given: &DistillArgs, last: &std::path::Path) -> Result<Option<DistillArgs>> {
    let ignored = changed_options(&serde_json::to_value(given)?, &serde_json::to_value(DistillArgs::default())?);
    if !ignored.is_empty() {
        eprintln!("warning: --resume continues {} with its own settings; ignored: {}", last.display(), ignored.join(", "));
    }
    let args = train::checkpoint::saved_args(last)?;
    let Some(v) = args.get(SECTION) else { return Ok(None) };
    let d: DistillArgs = serde_json::from_value(v.clone()).with_context(|| format!("{}: bad distillation settings", last.display()))?;
    Ok(Some(d).filter(DistillArgs::active))
}

/// Options that change where or how a run is shown or written, not what it computes.
const NOT_COMPARED: [&str; 7] = ["project", "name", "exist_ok", "resume", "quiet", "workers", "calibrated"];

/// The options (`--flag: saved → requested`) whose values differ between the run `r` asks for
/// and the one whose `last` checkpoint is given; empty when `r` would compute the same run.
pub fn settings_differ(r: &RunArgs, last: &std::path::Path) -> Result<Vec<String>> {
    let saved = train::checkpoint::saved_args(last)?;
    let bad = || format!("{}: bad saved settings", last.display());
    // Through the types, so that options a saved run predates read their defaults.
    let saved_train: TrainArgs = serde_json::from_value(saved.clone()).with_context(bad)?;
    let saved_distill: Option<DistillArgs> = saved.get(SECTION).map(|v| serde_json::from_value(v.clone())).transpose().with_context(bad)?;
    let pack = |t: &TrainArgs, d: Option<&DistillArgs>| -> Result<serde_json::Value> {
        let mut v = serde_json::to_value(TrainArgs { imgsz: crate::options::fit_stride(t.imgsz), ..t.clone() })?;
        if let Some(d) = d.filter(|d| d.active()) {
            v[SECTION] = serde_json::to_value(d)?;
        }
        Ok(v)
    };
    let (was, now) = (pack(&saved_train, saved_distill.as_ref())?, pack(&r.train, Some(&r.distill))?);
    Ok(changed_values(&was, &now).into_iter().filter(|(k, _)| !NOT_COMPARED.contains(&k.as_str())).map(|(_, shown)| shown).collect())
}

/// Differences as (name, `--flag: was → now`).
pub fn changed_values(was: &serde_json::Value, now: &serde_json::Value) -> Vec<(String, String)> {
    let show = |v: &serde_json::Value| if v.is_null() { "unset".to_string() } else { v.to_string() };
    train::setup::differences(was, now)
        .into_iter()
        .map(|(k, a, b)| (k.clone(), format!("--{}: {} → {}", k.replace('_', "-"), show(&a), show(&b))))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distillation_flags_next_to_resume_are_named_as_ignored() {
        let r = RunArgs::from_flags(&["--resume", "x.safetensors", "--teacher", "t.pt", "--distill", "mgd"]).unwrap();
        let ignored = changed_options(&serde_json::to_value(&r.distill).unwrap(), &serde_json::to_value(DistillArgs::default()).unwrap());
        assert_eq!(ignored, ["distill", "teacher"]);
        assert_eq!(serde_json::to_value(RunArgs::from_flags(&["--resume"]).unwrap().distill).unwrap(), serde_json::to_value(DistillArgs::default()).unwrap());
    }
}
