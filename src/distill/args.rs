//! Distillation options of `train` (all off unless `--teacher` is given).

use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};

use super::pseudo::{MeanTeacher, Thresholds, MEAN_TEACHER_RELIABLE, MEAN_TEACHER_UNCERTAIN};

/// Response (logit) distillation.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Response {
    #[default]
    None,
    /// MSE on the raw head maps.
    Mse,
    /// Binary KD on the class logits.
    Kl,
    /// Soft teacher + hard assigned labels on foreground anchors.
    Mixed,
    /// KL of the DFL side distributions, weighted by the teacher's scores.
    Ld,
    /// Teacher class probabilities on every anchor and confidence-weighted LD, on the detection
    /// loss's scale (made for unlabeled images).
    Dense,
    /// BCKD: binary KD of each class and GIoU of the decoded boxes, both weighted where the two
    /// disagree, on the detection loss's scale (any two head families).
    Bckd,
    /// CrossKD: the student's head features through the frozen teacher head's later layers,
    /// distilled towards the teacher's own predictions (class KL, GIoU of the boxes).
    Crosskd,
}

/// How a choice is written on the command line (`cosine-epoch`).
pub fn flag_value<T: ValueEnum>(v: &T) -> String {
    v.to_possible_value().map(|p| p.get_name().to_string()).unwrap_or_default()
}

/// Weight of the distillation terms over time.
#[derive(ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Schedule {
    #[default]
    Constant,
    /// The seed's per-epoch cosine (1 at each epoch's start, towards 0.1).
    CosineEpoch,
    /// Linear from 1 to 0.1 at the stop epoch.
    Linear,
}

#[derive(Args, Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct DistillArgs {
    /// Teacher: .pt or .safetensors (offline: frozen), or a model YAML with --online
    /// (trained from scratch with the student). Same classes as the dataset.
    #[arg(long)]
    pub teacher: Option<String>,
    /// Online distillation: the teacher trains jointly (train mode, its own detection
    /// loss added to the total, its parameters in the optimizer).
    #[arg(long)]
    pub online: bool,
    /// Feature methods with optional weights, e.g. `cwd`, `cwd:1.0,at:0.5`, `none`.
    /// Methods: mimic, cwd, mgd, at, gram, relation, sl2, pkd.
    #[arg(long, default_value = "cwd", value_parser = method_list)]
    pub distill: String,
    /// Weight of a feature method written without one.
    #[arg(long = "distill-weight", default_value_t = 1.0, value_parser = crate::options::non_negative_f32)]
    pub distill_weight: f32,
    /// Student layers to tap: `auto` (the Detect inputs) or indices like `15,18,21`.
    #[arg(long = "distill-layers", default_value = "auto")]
    pub distill_layers: String,
    /// Teacher layers paired with them (default: the same levels of the teacher's graph).
    #[arg(long = "teacher-layers")]
    pub teacher_layers: Option<String>,
    /// Response method.
    #[arg(long, value_enum, default_value_t = Response::None)]
    pub logit: Response,
    /// Weight of the response term.
    #[arg(long = "logit-weight", default_value_t = 1.0, value_parser = crate::options::non_negative_f32)]
    pub logit_weight: f32,
    /// Temperature of kl, mixed, ld and dense.
    #[arg(long, default_value_t = 1.0, value_parser = crate::options::positive_f32)]
    pub temperature: f32,
    /// Share of the teacher's soft targets in `--logit mixed` (the rest: hard labels).
    #[arg(long = "soft-alpha", default_value_t = 0.5, value_parser = crate::options::unit)]
    pub soft_alpha: f32,
    /// Temperature of cwd.
    #[arg(long = "cwd-tau", default_value_t = 1.0, value_parser = crate::options::positive_f32)]
    pub cwd_tau: f32,
    /// Weight of mgd.
    #[arg(long = "mgd-alpha", default_value_t = 2e-5, value_parser = crate::options::non_negative_f32)]
    pub mgd_alpha: f32,
    /// Share of each map mgd masks out.
    #[arg(long = "mgd-lambda", default_value_t = 0.65, value_parser = crate::options::unit)]
    pub mgd_lambda: f32,
    /// Weight of the distillation terms over time.
    #[arg(long = "distill-schedule", value_enum, default_value_t = Schedule::Constant)]
    pub distill_schedule: Schedule,
    /// Last epoch (1-based, inclusive) with distillation; default: until mosaic closes (with
    /// unlabeled images: the whole run).
    #[arg(long = "distill-stop-epoch", value_parser = crate::options::at_least_one)]
    pub distill_stop_epoch: Option<usize>,
    /// Calibrate the weights on the first batch instead of trusting magic numbers: each term's
    /// gradient on the student becomes this fraction of the detection loss's gradient (L2 norms),
    /// times the term's written weight (`cwd:2` → twice the fraction). Off by default.
    #[arg(long = "distill-calibrate", value_parser = crate::options::positive_f32)]
    pub distill_calibrate: Option<f32>,
    /// Pseudo-labels: the teacher's detections (NMS at IoU 0.7) with at least this confidence
    /// become detection targets of the unlabeled images. Off by default (0.6 with --mean-teacher).
    #[arg(long = "pseudo-conf", value_parser = crate::options::open_unit)]
    pub pseudo_conf: Option<f32>,
    /// Uncertain pseudo-labels: detections from this confidence up to --pseudo-conf enter as soft
    /// class targets (the score times the usual target) without box terms. Off by default (0.1
    /// with --mean-teacher).
    #[arg(long = "pseudo-low", value_parser = crate::options::open_unit)]
    pub pseudo_low: Option<f32>,
    /// Mean teacher: the run's EMA of the student (the weights it validates and saves)
    /// pseudo-labels the unlabeled images after --burn-in, reliable and uncertain ones (see
    /// --pseudo-conf, --pseudo-low). Needs no --teacher; next to one, the EMA labels and the
    /// teacher distils.
    #[arg(long = "mean-teacher")]
    pub mean_teacher: bool,
    /// Epochs on the labeled images alone before the mean teacher labels; default: a quarter
    /// of --epochs, rounded down.
    #[arg(long = "burn-in")]
    pub burn_in: Option<usize>,
    /// Multipliers found by the calibration, by term; saved so a resumed run keeps them.
    #[arg(skip)]
    pub calibrated: Vec<(String, f32)>,
}

/// `--distill`: a list of known methods with optional weights, checked when parsed.
fn method_list(s: &str) -> Result<String, String> {
    super::distiller::parse_methods(s, 1.0).map(|_| s.to_string()).map_err(|e| format!("{e:#}"))
}

impl DistillArgs {
    /// Whether the run has something to teach with: a teacher, or the mean teacher.
    pub fn active(&self) -> bool {
        self.teacher.is_some() || self.mean_teacher
    }

    /// Which teacher detections become pseudo-labels (None: no pseudo-labels). An uncertain
    /// threshold at or above the reliable one (the mean teacher's default under a low
    /// --pseudo-conf) leaves no uncertain labels.
    pub fn pseudo_thresholds(&self) -> Option<Thresholds> {
        let reliable = self.pseudo_conf.or(self.mean_teacher.then_some(MEAN_TEACHER_RELIABLE))?;
        let uncertain = self.pseudo_low.or(self.mean_teacher.then_some(MEAN_TEACHER_UNCERTAIN)).filter(|&u| u < reliable);
        Some(Thresholds { reliable, uncertain })
    }

    /// The mean teacher of a run of `epochs`, when asked for.
    pub fn mean_teacher(&self, epochs: usize) -> Option<MeanTeacher> {
        let th = self.pseudo_thresholds().filter(|_| self.mean_teacher)?;
        Some(MeanTeacher::new(th, self.burn_in.unwrap_or(epochs / 4)))
    }

    /// Checks of the pseudo-label options against each other and the run's `epochs`.
    pub fn check_pseudo(&self, epochs: usize) -> anyhow::Result<()> {
        if let (Some(low), Some(conf)) = (self.pseudo_low, self.pseudo_conf) {
            if low >= conf {
                anyhow::bail!("--pseudo-low {low} must be below --pseudo-conf {conf} (uncertain labels score between the two)");
            }
        }
        if let Some(m) = self.mean_teacher(epochs).filter(|m| m.burn_in >= epochs) {
            anyhow::bail!("--burn-in {} leaves the mean teacher no epoch of the {epochs} (--epochs): it must be below --epochs", m.burn_in);
        }
        Ok(())
    }
}

/// The command-line defaults.
impl Default for DistillArgs {
    fn default() -> Self {
        crate::options::defaults()
    }
}
