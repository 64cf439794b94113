//! Run checkpoints: `last.safetensors` (EMA weights + everything needed to
//! resume) and `best.safetensors` (EMA weights only). Files are written to a
//! temporary name and renamed, so a crash never leaves a corrupt checkpoint.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use burn::module::{Param, RunningState};
use burn::tensor::{Tensor, TensorData};

use super::optim::{GradStore, Optimizer, Trainable};
use crate::model::walk::Slot;
use crate::model::{collect_tensors, DetectionModel};
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

fn flat(t: burn::tensor::Tensor<1>) -> HostTensor {
    let v: Vec<f32> = t.try_into_vec_as::<f32>().expect("f32 tensor");
    HostTensor::new(vec![v.len()], v)
}

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
    let mut e = ema.clone();
    let tensors = collect_tensors(&mut e);
    let mut extra = HashMap::from([(EPOCH_KEY.to_string(), (epoch + 1).to_string())]);
    let mut state = Vec::new();
    if let Some(r) = resume {
        let opt = r.optimizer;
        extra.insert(STATE_KEY.to_string(), serde_json::to_string(r.state)?);
        for (n, t) in collect_tensors(r.model) {
            state.push((format!("{STATE_PREFIX}model.{n}"), t));
        }
        if let Some(h) = r.hook {
            for (n, t) in trainable_tensors(h) {
                state.push((format!("{STATE_PREFIX}hook.{n}"), t));
            }
        }
        for (n, t) in &r.grads.grads {
            state.push((format!("{STATE_PREFIX}grad.{n}"), flat(t.clone())));
        }
        for (n, t) in &opt.m {
            state.push((format!("{STATE_PREFIX}m.{n}"), flat(t.clone())));
        }
        for (n, t) in &opt.v {
            state.push((format!("{STATE_PREFIX}v.{n}"), flat(t.clone())));
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

/// Parameters of a trainable (e.g. the distiller) on the host, by name.
pub fn trainable_tensors(t: &mut dyn Trainable) -> Vec<(String, HostTensor)> {
    let mut out = Vec::new();
    t.walk_params(&mut |name, slot: Slot<'_>| {
        let (shape, v): (Vec<usize>, Vec<f32>) = match slot {
            Slot::P4(p) => (p.val().dims().to_vec(), p.val().inner().try_into_vec_as::<f32>().expect("f32")),
            Slot::P1(p) => (p.val().dims().to_vec(), p.val().inner().try_into_vec_as::<f32>().expect("f32")),
            Slot::Stat(rs) => {
                let t = rs.value_sync();
                (t.dims().to_vec(), t.try_into_vec_as::<f32>().expect("f32"))
            }
            _ => return,
        };
        out.push((name.to_string(), HostTensor::new(shape, v)));
    });
    out
}

/// Restores a trainable's parameters saved by [`trainable_tensors`] (as trainable leaves).
pub fn restore_trainable(t: &mut dyn Trainable, tensors: Vec<(String, HostTensor)>) -> Result<()> {
    let mut by_name: HashMap<String, HostTensor> = tensors.into_iter().collect();
    let device = crate::default_device().autodiff();
    let mut missing = None;
    t.walk_params(&mut |name, slot: Slot<'_>| {
        let Some(h) = by_name.remove(name) else {
            if slot.is_param() && missing.is_none() {
                missing = Some(name.to_string());
            }
            return;
        };
        match slot {
            Slot::P4(p) => *p = Param::initialized(p.id, Tensor::<4>::from_data(TensorData::new(h.data, h.shape), &device).require_grad()),
            Slot::P1(p) => *p = Param::initialized(p.id, Tensor::<1>::from_data(TensorData::new(h.data, h.shape), &device).require_grad()),
            Slot::Stat(rs) => *rs = RunningState::new(Tensor::<1>::from_data(TensorData::new(h.data, h.shape), &crate::default_device())),
            _ => {}
        }
    });
    match missing {
        Some(n) => bail!("resume: the checkpoint has no '{n}' (different distillation settings?)"),
        None => Ok(()),
    }
}

/// The run's arguments saved in a `last` checkpoint; only the file's header is read.
pub fn saved_args(path: &Path) -> Result<serde_json::Value> {
    use std::io::Read;
    let what = || format!("cannot resume from {}", path.display());
    let mut f = std::fs::File::open(path).with_context(what)?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len).with_context(what)?;
    let len = u64::from_le_bytes(len);
    let mut header = Vec::new();
    f.take(len).read_to_end(&mut header).with_context(what)?;
    let header: serde_json::Value = serde_json::from_slice(&header).with_context(|| format!("{}: not a safetensors file", path.display()))?;
    let Some(s) = header.get("__metadata__").and_then(|m| m.get(STATE_KEY)).and_then(|s| s.as_str()) else {
        bail!("{} holds no training state (was it written by `train`? best.safetensors cannot resume)", path.display());
    };
    let state: TrainState = serde_json::from_str(s).with_context(|| format!("{}: bad training state", path.display()))?;
    Ok(state.args)
}

pub fn load(path: &Path) -> Result<Restored> {
    let f = st::load(path).with_context(|| format!("cannot resume from {}", path.display()))?;
    let Some(s) = f.extra.get(STATE_KEY) else {
        bail!("{} holds no training state (was it written by `train`? best.safetensors cannot resume)", path.display());
    };
    let state: TrainState = serde_json::from_str(s).with_context(|| format!("{}: bad training state", path.display()))?;
    let (mut model, mut m, mut v, mut hook, mut grads) = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (n, t) in f.state {
        let rest = &n[STATE_PREFIX.len()..];
        if let Some(k) = rest.strip_prefix("model.") {
            model.push((k.to_string(), t));
        } else if let Some(k) = rest.strip_prefix("m.") {
            m.push((k.to_string(), t));
        } else if let Some(k) = rest.strip_prefix("v.") {
            v.push((k.to_string(), t));
        } else if let Some(k) = rest.strip_prefix("hook.") {
            hook.push((k.to_string(), t));
        } else if let Some(k) = rest.strip_prefix("grad.") {
            grads.push((k.to_string(), t));
        }
    }
    Ok(Restored { state, model, ema: f.tensors, m, v, hook, grads })
}
