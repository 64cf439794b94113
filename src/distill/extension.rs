//! Distillation as the trainer's extension: the teacher is checked before the run folder
//! exists, the distiller is built once the student exists, and its settings (calibrated
//! weights included) are saved with the run so that `--resume` rebuilds the same distiller.

use anyhow::{bail, Context, Result};
use burn::tensor::Device;

use super::args::DistillArgs;
use super::distiller::Distiller;
use super::pseudo::MeanTeacherHook;
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
        let Some(t) = &self.teacher else {
            if self.mean_teacher {
                return Ok(());
            }
            bail!("distillation needs --teacher (or --mean-teacher)")
        };
        if !std::path::Path::new(t).exists() && model::builtin_yaml(t).is_none() {
            bail!("--teacher {t}: no such file, and not a built-in model name such as yolov8s.yaml");
        }
        if !self.online && (t.ends_with(".yaml") || t.ends_with(".yml")) {
            bail!(
                "--teacher {t} is a model description with random weights: a frozen teacher needs trained weights (.pt or \
                 .safetensors); add --online to train it together with the student"
            );
        }
        model::load(t, None, device).with_context(|| format!("--teacher {t}"))?;
        for w in self.idle_options() {
            eprintln!("warning: {w}");
        }
        Ok(())
    }

    fn input_files(&self) -> Vec<(String, std::path::PathBuf)> {
        self.teacher.iter().map(|t| ("--teacher".to_string(), t.into())).collect()
    }

    fn attach(&mut self, ctx: &RunContext<'_>) -> Result<Box<dyn StepHook>> {
        let a = ctx.args;
        if self.mean_teacher && !ctx.unlabeled {
            eprintln!(
                "warning: --mean-teacher labels unlabeled images, and this run has none (--unlabeled, data.yaml's `unlabeled:`, \
                 or --label-fraction below 1); it does nothing"
            );
        }
        if self.teacher.is_none() {
            let m = self.mean_teacher(a.epochs).context("an extension without a teacher is a mean teacher")?;
            if !a.quiet {
                eprintln!("{}", m.describe());
            }
            return Ok(Box::new(MeanTeacherHook(m)));
        }
        let mut d = Distiller::new(self, ctx.student, a.imgsz, a.epochs, a.close_mosaic, ctx.device)?;
        d.mask_seed = a.seed;
        // With unlabeled images the teacher is their only teacher: by default it teaches the
        // whole run rather than stopping when mosaic closes.
        if ctx.unlabeled && self.distill_stop_epoch.is_none() {
            d.stop_epoch = a.epochs;
        }
        if self.pseudo_conf.is_some() && !self.mean_teacher && !ctx.unlabeled {
            eprintln!(
                "warning: --pseudo-conf labels unlabeled images, and this run has none (--unlabeled, data.yaml's `unlabeled:`, \
                 or --label-fraction below 1); it does nothing"
            );
        }
        if !a.quiet {
            eprintln!("{}", d.report(a.imgsz).trim_end());
        }
        Ok(Box::new(d))
    }
}

impl DistillArgs {
    /// Settings that leave a teacher nothing to do, in words (printed as warnings).
    pub fn idle_options(&self) -> Vec<String> {
        let no_terms = super::distiller::parse_methods(&self.distill, self.distill_weight).map_or(false, |m| m.is_empty())
            && self.logit == super::args::Response::None;
        let mut out = Vec::new();
        if no_terms && self.mean_teacher && !self.online {
            out.push("the teacher teaches nothing: --distill none and --logit none, and the mean teacher labels in its place; the run pays for the teacher's forward".into());
        } else if no_terms && self.pseudo_conf.is_none() && !self.online {
            out.push("the teacher teaches nothing: --distill none, --logit none and no --pseudo-conf; the run trains as a plain one, at the teacher's cost".into());
        }
        if self.pseudo_low.is_some() && self.pseudo_conf.is_none() && !self.mean_teacher {
            out.push("--pseudo-low sets the uncertain labels below --pseudo-conf, and neither --pseudo-conf nor --mean-teacher is given; it does nothing".into());
        }
        if no_terms && self.distill_calibrate.is_some() {
            out.push("--distill-calibrate has no term to calibrate (--distill none, --logit none); it does nothing".into());
        }
        out
    }

    /// Distillation options given without `--teacher`, as flags: they do nothing (but the
    /// mean teacher's own with `--mean-teacher`).
    pub fn given_without_teacher(&self) -> Vec<String> {
        if self.teacher.is_some() {
            return Vec::new();
        }
        let given = serde_json::to_value(self).unwrap_or_default();
        let defaults = serde_json::to_value(DistillArgs::default()).unwrap_or_default();
        let mean_teachers = ["mean_teacher", "burn_in", "pseudo_conf", "pseudo_low"];
        crate::train::setup::changed_options(&given, &defaults)
            .iter()
            .filter(|k| !(self.mean_teacher && mean_teachers.contains(&k.as_str())))
            .map(|k| format!("--{}", k.replace('_', "-")))
            .collect()
    }
}
