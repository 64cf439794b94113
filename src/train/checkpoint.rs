//! Run checkpoints: `last.safetensors` (EMA weights + everything needed to
//! resume) and `best.safetensors` (EMA weights only). Files are written to a
//! temporary name and renamed, so a crash never leaves a corrupt checkpoint.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::optim::Optimizer;
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
    /// The run's arguments (JSON), so `--resume` needs nothing else.
    pub args: serde_json::Value,
}

const STATE_KEY: &str = "train_state";

fn flat(t: burn::tensor::Tensor<1>) -> HostTensor {
    let v: Vec<f32> = t.try_into_vec_as::<f32>().expect("f32 tensor");
    HostTensor::new(vec![v.len()], v)
}

/// Writes `path` with the EMA model as the model and, when `resume` is given,
/// the training model and optimizer moments as `state.` tensors.
pub fn save(path: &Path, ema: &DetectionModel, resume: Option<(&mut DetectionModel, &Optimizer, &TrainState)>) -> Result<()> {
    let mut e = ema.clone();
    let tensors = collect_tensors(&mut e);
    let mut extra = HashMap::new();
    let mut state = Vec::new();
    if let Some((model, opt, ts)) = resume {
        extra.insert(STATE_KEY.to_string(), serde_json::to_string(ts)?);
        for (n, t) in collect_tensors(model) {
            state.push((format!("{STATE_PREFIX}model.{n}"), t));
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
}

pub fn load(path: &Path) -> Result<Restored> {
    let f = st::load(path).with_context(|| format!("cannot resume from {}", path.display()))?;
    let Some(s) = f.extra.get(STATE_KEY) else {
        bail!("{} holds no training state (was it written by `train`? best.safetensors cannot resume)", path.display());
    };
    let state: TrainState = serde_json::from_str(s).with_context(|| format!("{}: bad training state", path.display()))?;
    let (mut model, mut m, mut v) = (Vec::new(), Vec::new(), Vec::new());
    for (n, t) in f.state {
        let rest = &n[STATE_PREFIX.len()..];
        if let Some(k) = rest.strip_prefix("model.") {
            model.push((k.to_string(), t));
        } else if let Some(k) = rest.strip_prefix("m.") {
            m.push((k.to_string(), t));
        } else if let Some(k) = rest.strip_prefix("v.") {
            v.push((k.to_string(), t));
        }
    }
    Ok(Restored { state, model, ema: f.tensors, m, v })
}
