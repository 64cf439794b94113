//! Distillation options of `train` (all off unless `--teacher` is given).

use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};

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
    /// become detection targets of the unlabeled images. Off by default.
    #[arg(long = "pseudo-conf", value_parser = crate::options::open_unit)]
    pub pseudo_conf: Option<f32>,
    /// Multipliers found by the calibration, by term; saved so a resumed run keeps them.
    #[arg(skip)]
    pub calibrated: Vec<(String, f32)>,
}

/// `--distill`: a list of known methods with optional weights, checked when parsed.
fn method_list(s: &str) -> Result<String, String> {
    super::distiller::parse_methods(s, 1.0).map(|_| s.to_string()).map_err(|e| format!("{e:#}"))
}

/// The command-line defaults.
impl Default for DistillArgs {
    fn default() -> Self {
        crate::options::defaults()
    }
}
