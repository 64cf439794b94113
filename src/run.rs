//! A training run as the `train` command describes it: detection training (`train`) and,
//! with `--teacher`, distillation (`distill`) plugged into it as its extension.

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

    pub fn distilled(&self) -> bool {
        self.distill.teacher.is_some()
    }
}

/// Trains as `r` says: distilled when it names a teacher (a resumed run: when its
/// checkpoint does).
pub fn train(r: RunArgs) -> Result<TrainSummary> {
    let mut distill = match r.train.resume_path() {
        Some(last) => saved_distillation(&r.distill, &last)?,
        None => Some(r.distill).filter(|d| d.teacher.is_some()),
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
    Ok(Some(d).filter(|d| d.teacher.is_some()))
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
