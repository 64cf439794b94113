//! Detection training as Ultralytics 8.4.190 does it: warm-up, accumulation to
//! a nominal batch of 64, gradient clipping, EMA, per-epoch validation on the
//! EMA, best/last checkpoints, results.csv/png, resume. Distillation plugs in through
//! [`hook::Extension`]; this module knows nothing of it.

pub mod args;
pub mod checkpoint;
pub mod ema;
pub mod hook;
pub mod optim;
pub mod run_dir;
pub mod schedule;
pub mod setup;
pub mod step;
pub mod trainer;
pub mod unlabeled;
pub mod world;

use std::path::PathBuf;

use anyhow::Result;

pub use args::TrainArgs;
pub use hook::{Extension, HookInput, HookLoss, Logged, RunContext, StepHook, StepPos};
pub use run_dir::run_dir;
pub use step::{forward_backward, gradient_norms, make_trainable};
pub use trainer::Trainer;

use crate::eval::validate::ValResult;

/// Summary of a finished run.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    pub run_dir: PathBuf,
    pub best: PathBuf,
    pub last: PathBuf,
    /// The validation of the best weights at the end (Ultralytics' final evaluation), which the
    /// validation pictures show.
    pub final_val: Option<ValResult>,
    /// (mAP50, mAP50-95) of the best epoch (the one saved as best).
    pub best_map: Option<(f64, f64)>,
    pub epochs_done: usize,
    /// First epoch (1-based) this call trained: 1, or where a resumed run went on.
    pub first_epoch: usize,
    /// Wall time of this call (a resumed run: since it resumed).
    pub seconds: f64,
    /// This process's rank under mpirun (0 alone): rank 0 wrote the run folder and reports.
    pub rank: usize,
    /// The class names of the trained model.
    pub names: Vec<String>,
}

/// Trains a model as `a` says; `ext` (distillation) adds to every step.
pub fn train(a: TrainArgs, ext: Option<&mut dyn Extension>) -> Result<TrainSummary> {
    Trainer::setup(a, ext)?.run()
}
