//! Run checkpoints: `last.safetensors` (EMA weights + everything needed to
//! resume) and `best.safetensors` (EMA weights only). Files are written to a
//! temporary name and renamed, so a crash never leaves a corrupt checkpoint.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::optim::{GradStore, Optimizer, Trainable};
use crate::model::{named, DetectionModel};
use crate::weights::st::{self, StModel, STATE_PREFIX};
use crate::weights::HostTensor;

/// Scalar training state stored in the metadata of `last.safetensors`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainState {
    /// Last completed epoch (0-based).
    pub epoch: usize,
    pub best_fitness: f64,
    pub ema_updates: u64,
    pub optimizer_steps: u64,
    /// Iteration (over the whole run) of the last optimizer step: with accumulation across an
    /// epoch's end, the resumed run steps where the uninterrupted one would.
    #[serde(default = "no_step")]
    pub last_opt_step: i64,
    /// The run's arguments (JSON), so `--resume` needs nothing else.
    pub args: serde_json::Value,
}

const STATE_KEY: &str = "train_state";

/// Checkpoints from before `last_opt_step` was saved resume as if a step had just been taken.
fn no_step() -> i64 {
    -1
}
/// Metadata key of the (1-based) epoch whose weights a checkpoint holds.
pub const EPOCH_KEY: &str = "epoch";

/// The training state that `--resume` needs besides the EMA weights.
pub struct ResumeState<'a> {
    pub model: &'a mut DetectionModel,
    pub optimizer: &'a Optimizer,
    pub state: &'a TrainState,
    /// Gradients accumulated since the last optimizer step.
    pub grads: &'a GradStore,
    /// A step hook's trainable tensors (distillation adapters), if any.
    pub hook: Option<&'a mut dyn Trainable>,
}

/// Writes `path` with the EMA model of `epoch` (0-based) as the model and, when `resume` is
/// given, the training model, the hook's tensors and the optimizer moments as `state.` tensors.
pub fn save(path: &Path, ema: &DetectionModel, epoch: usize, resume: Option<ResumeState<'_>>) -> Result<()> {
    let tensors = named::read(&mut ema.clone());
    let mut extra = HashMap::from([(EPOCH_KEY.to_string(), (epoch + 1).to_string())]);
    if let Some(s) = ema.train_imgsz {
        extra.insert(crate::model::IMGSZ_KEY.to_string(), s.to_string());
    }
    let mut state = Vec::new();
    if let Some(r) = resume {
        let opt = r.optimizer;
        extra.insert(STATE_KEY.to_string(), serde_json::to_string(r.state)?);
        let hook = r.hook.map(|h| named::read(h)).unwrap_or_default();
        let groups = [
            ("model", named::read(r.model)),
            ("hook", hook),
            ("grad", named::read_flat(&r.grads.grads)),
            ("m", named::read_flat(&opt.m)),
            ("v", named::read_flat(&opt.v)),
        ];
        for (group, tensors) in groups {
            state.extend(tensors.into_iter().map(|(n, t)| (format!("{STATE_PREFIX}{group}.{n}"), t)));
        }
    }
    st::save(path, &StModel { yaml: ema.spec.yaml.clone(), names: ema.names.clone(), tensors, extra, state })
}

/// What `--resume` restores.
pub struct Restored {
    pub state: TrainState,
    /// Training-model weights (state-dict names).
    pub model: Vec<(String, HostTensor)>,
    /// EMA weights.
    pub ema: Vec<(String, HostTensor)>,
    pub m: Vec<(String, HostTensor)>,
    pub v: Vec<(String, HostTensor)>,
    /// The step hook's tensors (distillation adapters), by name.
    pub hook: Vec<(String, HostTensor)>,
    /// Gradients accumulated since the last optimizer step, by parameter name.
    pub grads: Vec<(String, HostTensor)>,
}

/// The run's arguments saved in a `last` checkpoint; only the file's header is read.
pub fn saved_args(path: &Path) -> Result<serde_json::Value> {
    use std::io::Read;
    let what = || format!("cannot resume from {}", path.display());
    let mut f = std::fs::File::open(path).with_context(what)?;
    let mut len = [0u8; 8];
    if f.read_exact(&mut len).is_err() {
        let size = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        bail!("cannot resume from {}: it is {size} bytes long, too short for a checkpoint (a safetensors file starts with an 8-byte header length)", path.display());
    }
    let len = u64::from_le_bytes(len);
    let mut header = Vec::new();
    f.take(len).read_to_end(&mut header).with_context(what)?;
    let header: serde_json::Value = serde_json::from_slice(&header).with_context(|| format!("{}: not a safetensors file", path.display()))?;
    let s = header.get("__metadata__").and_then(|m| m.get(STATE_KEY)).and_then(|s| s.as_str());
    Ok(parse_state(path, s)?.args)
}

/// The training state of a checkpoint from its metadata entry (`None`: the file has none).
fn parse_state(path: &Path, s: Option<&str>) -> Result<TrainState> {
    let Some(s) = s else {
        bail!("{} holds no training state (was it written by `train`? best.safetensors cannot resume)", path.display());
    };
    serde_json::from_str(s).with_context(|| format!("{}: bad training state", path.display()))
}

pub fn load(path: &Path) -> Result<Restored> {
    let f = st::load(path).with_context(|| format!("cannot resume from {}", path.display()))?;
    let state = parse_state(path, f.extra.get(STATE_KEY).map(String::as_str))?;
    // The `state.` tensors by the group `save` wrote them under.
    let mut groups: [(&str, Vec<(String, HostTensor)>); 5] = ["model", "hook", "grad", "m", "v"].map(|g| (g, Vec::new()));
    for (n, t) in f.state {
        let Some((group, k)) = n[STATE_PREFIX.len()..].split_once('.') else { continue };
        if let Some((_, g)) = groups.iter_mut().find(|(name, _)| *name == group) {
            g.push((k.to_string(), t));
        }
    }
    let [model, hook, grads, m, v] = groups.map(|(_, g)| g);
    Ok(Restored { state, model, ema: f.tensors, m, v, hook, grads })
}
