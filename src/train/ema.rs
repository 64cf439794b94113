//! Exponential moving average of the model (weights and BatchNorm statistics),
//! Ultralytics' ModelEMA: decay 0.9999·(1 − exp(−updates / 2000)).

use std::collections::HashMap;

use burn::module::{Module, Param, RunningState};
use burn::tensor::Tensor;

use crate::model::walk::Slot;
use crate::model::DetectionModel;

pub struct Ema {
    /// The averaged model, on the plain (non-autodiff) device, BatchNorm in eval mode.
    pub model: DetectionModel,
    pub updates: u64,
    pub decay: f64,
    pub tau: f64,
}

/// Every float tensor of a model, flattened, by name (plain device).
pub fn snapshot(model: &mut DetectionModel) -> HashMap<String, Tensor<1>> {
    let mut out = HashMap::new();
    model.walk_all(&mut |name, slot: Slot<'_>| {
        let t: Tensor<1> = match slot {
            Slot::P4(p) => p.val().inner().flatten(0, 3),
            Slot::P1(p) => p.val().inner(),
            Slot::Stat(s) => s.value_sync().inner(),
            Slot::Conv(_) => return,
        };
        out.insert(name.to_string(), t);
    });
    out
}

impl Ema {
    pub fn new(model: &DetectionModel, updates: u64) -> Self {
        Self { model: model.valid(), updates, decay: 0.9999, tau: 2000.0 }
    }

    pub fn current_decay(&self) -> f64 {
        self.decay * (1.0 - (-(self.updates as f64) / self.tau).exp())
    }

    /// Moves the average towards `model`.
    pub fn update(&mut self, model: &mut DetectionModel) {
        self.updates += 1;
        let d = self.current_decay();
        let src = snapshot(model);
        self.model.walk_all(&mut |name, slot: Slot<'_>| {
            let Some(m) = src.get(name) else { return };
            match slot {
                Slot::P4(p) => {
                    let shape = p.val().dims();
                    let e: Tensor<4> = (p.val().flatten(0, 3) * d + m.clone() * (1.0 - d)).reshape(shape);
                    *p = Param::initialized(p.id, e);
                }
                Slot::P1(p) => {
                    let e = p.val() * d + m.clone() * (1.0 - d);
                    *p = Param::initialized(p.id, e);
                }
                Slot::Stat(s) => {
                    let e = s.value_sync() * d + m.clone() * (1.0 - d);
                    *s = RunningState::new(e);
                }
                Slot::Conv(_) => {}
            }
        });
    }
}
