//! A module's tensors by Ultralytics name, to and from the host: the one service behind model
//! files, checkpoints (model, EMA, an extension's tensors, optimizer moments), fine-tuning
//! transfer and the finite-weights check.

use std::collections::HashMap;

use anyhow::{anyhow, bail, Result};
use burn::module::{Param, RunningState};
use burn::tensor::{Device, Tensor, TensorData};

use super::walk::{Slot, Trainable};
use crate::weights::HostTensor;

/// How [`write`] treats names: all must match both ways, or only those that fit are copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fit {
    /// Every tensor of the module is given, with its shape, and nothing else.
    Strict,
    /// Tensors whose name and shape match are copied; the rest is left (fine-tuning).
    Matching,
}

/// Every tensor of `m` (parameters and BatchNorm statistics) on the host, in walk order.
pub fn read(m: &mut dyn Trainable) -> Vec<(String, HostTensor)> {
    let mut out = Vec::new();
    m.walk_params(&mut |name, slot: Slot<'_>| {
        let (shape, data) = match slot {
            Slot::P4(p) => (p.val().dims().to_vec(), p.val().inner().try_into_vec_as::<f32>()),
            Slot::P1(p) => (p.val().dims().to_vec(), p.val().inner().try_into_vec_as::<f32>()),
            Slot::Stat(s) => {
                let t = s.value_sync();
                (t.dims().to_vec(), t.try_into_vec_as::<f32>())
            }
            Slot::Conv(_) => return,
        };
        out.push((name.to_string(), HostTensor::new(shape, data.expect("f32 tensors"))));
    });
    out
}

/// Copies named host tensors into `m` on `device`; returns how many were copied. Strict: fails
/// on the first missing name, shape mismatch or tensor the module does not have.
pub fn write(m: &mut dyn Trainable, tensors: Vec<(String, HostTensor)>, device: &Device, fit: Fit) -> Result<usize> {
    let mut by_name: HashMap<String, HostTensor> = tensors.into_iter().collect();
    let mut err: Option<anyhow::Error> = None;
    let mut copied = 0;
    m.walk_params(&mut |name, slot: Slot<'_>| {
        if err.is_some() || matches!(slot, Slot::Conv(_)) {
            return;
        }
        let want = slot.shape();
        let t = match by_name.remove(name) {
            Some(t) if t.shape == want => t,
            _ if fit == Fit::Matching => return,
            Some(t) => {
                err = Some(anyhow!("tensor '{name}' has shape {:?} in the file but the model expects {want:?}", t.shape));
                return;
            }
            None => {
                err = Some(anyhow!("tensor '{name}' (shape {want:?}) is missing from the file"));
                return;
            }
        };
        copied += 1;
        let data = TensorData::new(t.data, t.shape);
        match slot {
            Slot::P4(p) => *p = Param::initialized(p.id, Tensor::from_data(data, device)),
            Slot::P1(p) => *p = Param::initialized(p.id, Tensor::from_data(data, device)),
            Slot::Stat(s) => *s = RunningState::new(Tensor::from_data(data, device)),
            Slot::Conv(_) => {}
        }
    });
    if let Some(e) = err {
        return Err(e);
    }
    if let Some(extra) = by_name.keys().min().filter(|_| fit == Fit::Strict) {
        bail!("the file has tensor '{extra}' that this architecture does not have");
    }
    Ok(copied)
}

/// Flat device tensors by name (optimizer moments, accumulated gradients) on the host.
pub fn read_flat(map: &HashMap<String, Tensor<1>>) -> Vec<(String, HostTensor)> {
    map.iter()
        .map(|(n, t)| {
            let v: Vec<f32> = t.clone().try_into_vec_as::<f32>().expect("f32 tensors");
            (n.clone(), HostTensor::new(vec![v.len()], v))
        })
        .collect()
}

/// Host tensors back as flat device tensors by name.
pub fn write_flat(tensors: Vec<(String, HostTensor)>, device: &Device) -> HashMap<String, Tensor<1>> {
    tensors.into_iter().map(|(n, t)| (n, Tensor::<1>::from_data(TensorData::new(t.data, t.shape), device))).collect()
}
