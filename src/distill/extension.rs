//! Distillation as the trainer's extension: the teacher is checked before the run folder
//! exists, the distiller is built once the student exists, and its settings (calibrated
//! weights included) are saved with the run so that `--resume` rebuilds the same distiller.

use anyhow::{bail, Context, Result};
use burn::tensor::Device;

use super::args::DistillArgs;
use super::distiller::Distiller;
use crate::model;
use crate::train::{Extension, RunContext, StepHook};

/// The key of the distillation settings in args.yaml and checkpoints.
pub const SECTION: &str = "distill";

impl Extension for DistillArgs {
    fn name(&self) -> &str {
        SECTION
    }

    fn settings(&self) -> Result<serde_json::Value> {
        Ok(serde_json::to_value(self)?)
    }

    fn check(&self, device: &Device) -> Result<()> {
        let Some(t) = &self.teacher else { bail!("distillation needs --teacher") };
        if !std::path::Path::new(t).exists() && model::builtin_yaml(t).is_none() {
            bail!("--teacher {t}: no such file, and not a built-in model name such as yolov8s.yaml");
        }
        model::load(t, None, device).with_context(|| format!("--teacher {t}"))?;
        Ok(())
    }

    fn attach(&mut self, ctx: &RunContext<'_>) -> Result<Box<dyn StepHook>> {
        let a = ctx.args;
        let mut d = Distiller::new(self, ctx.student, a.imgsz, a.epochs, a.close_mosaic, ctx.device)?;
        d.mask_seed = a.seed;
        // With unlabeled images the teacher is their only teacher: by default it teaches the
        // whole run rather than stopping when mosaic closes.
        if ctx.unlabeled && self.distill_stop_epoch.is_none() {
            d.stop_epoch = a.epochs;
        }
        if !a.quiet {
            eprintln!("{}", d.report(a.imgsz).trim_end());
        }
        Ok(Box::new(d))
    }
}
