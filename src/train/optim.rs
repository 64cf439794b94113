//! SGD (Nesterov) and AdamW as Ultralytics configures them: three parameter
//! groups (decayed weights; norm weights and biases without decay), per-group
//! learning rates and a momentum that warms up, global-norm gradient clipping.
//!
//! Written directly over the model's named tensors because burn's optimizers
//! fix momentum at construction and clip per tensor.

use std::collections::HashMap;

use burn::module::Param;
use burn::tensor::{Bool, Tensor};

use crate::model::walk::Slot;

pub use crate::model::walk::Trainable;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    Sgd,
    Adamw,
    /// Ultralytics' choice: SGD for long schedules, AdamW with a class-count learning rate otherwise.
    Auto,
}

/// Parameter group of a tensor, Ultralytics' order: 0 decayed weights, 1 norm weights, 2 biases.
pub fn group_of(name: &str) -> usize {
    if name.ends_with("bias") {
        2
    } else if name.ends_with("bn.weight") {
        1
    } else {
        0
    }
}

/// Names of the trainable tensors (DFL projection excluded).
pub fn is_trainable(name: &str) -> bool {
    !name.ends_with("dfl.conv.weight")
}

/// Accumulated gradients by tensor name, flattened.
#[derive(Default)]
pub struct GradStore {
    pub grads: HashMap<String, Tensor<1>>,
}

impl GradStore {
    /// Adds the gradients of `model`'s parameters from one backward pass; when `finite` ([1])
    /// is false they are added as zeros (the device-side drop of a non-finite loss).
    pub fn accumulate<T: Trainable + ?Sized>(&mut self, model: &mut T, grads: &burn::tensor::Gradients, finite: Option<Tensor<1, Bool>>) {
        let dropped = finite.map(Tensor::bool_not);
        model.walk_params(&mut |name, slot: Slot<'_>| {
            if !is_trainable(name) {
                return;
            }
            let g: Option<Tensor<1>> = match slot {
                Slot::P4(p) => p.val().grad(grads).map(|g| g.flatten(0, 3)),
                Slot::P1(p) => p.val().grad(grads),
                _ => None,
            };
            let g = match &dropped {
                Some(d) => g.map(|g| {
                    let n = g.dims()[0];
                    g.mask_fill(d.clone().expand([n]), 0.0)
                }),
                None => g,
            };
            match (self.grads.get_mut(name), g) {
                (Some(sum), Some(g)) => *sum = sum.clone() + g,
                (None, Some(g)) => drop(self.grads.insert(name.to_string(), g)),
                (_, None) => {}
            }
        });
    }

    /// Scales all gradients so their global L2 norm is at most `max_norm`; returns the norm.
    pub fn clip_global_norm(&mut self, max_norm: f32) -> f32 {
        let norm = self.norm();
        let coef = max_norm / (norm + 1e-6);
        if coef < 1.0 {
            for g in self.grads.values_mut() {
                *g = g.clone() * coef;
            }
        }
        norm
    }

    /// [`clip_global_norm`](Self::clip_global_norm) without a read-back: the norm and the
    /// scale stay on the device (summed in f32, so a clipped step may differ in the last bits).
    /// The sum runs in name order: the map's own order changes from process to process, and an
    /// f32 sum in another order would make two runs of the same settings drift apart.
    pub fn clip_global_norm_on_device(&mut self, max_norm: f32) {
        let Some(first) = self.grads.values().next() else { return };
        let zero = Tensor::<1>::zeros([1], &first.device());
        let mut names: Vec<&String> = self.grads.keys().collect();
        names.sort();
        let norm = names.into_iter().fold(zero, |acc, n| acc + self.grads[n].clone().square().sum()).sqrt();
        let coef = (Tensor::<1>::full([1], max_norm, &norm.device()) / (norm + 1e-6)).clamp_max(1.0);
        for g in self.grads.values_mut() {
            *g = g.clone() * coef.clone();
        }
    }

    /// Global L2 norm of the gradients.
    pub fn norm(&self) -> f32 {
        let total: f64 = self.grads.values().map(|g| crate::device::read_back(g.clone().square().sum())[0] as f64).sum();
        total.sqrt() as f32
    }

    pub fn clear(&mut self) {
        self.grads.clear();
    }
}

/// Optimizer hyper-parameters for one step.
#[derive(Debug, Clone, Copy)]
pub struct StepParams {
    /// Learning rate per group (decayed weights, norm weights, biases).
    pub lr: [f64; 3],
    /// SGD momentum (Adam's beta1 stays fixed, as in Ultralytics).
    pub momentum: f64,
}

#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
pub enum Method {
    Sgd { nesterov: bool },
    AdamW { beta1: f64, beta2: f64, eps: f64 },
}

/// Optimizer state: first/second moments by tensor name.
pub struct Optimizer {
    pub method: Method,
    pub weight_decay: f64,
    pub steps: u64,
    pub m: HashMap<String, Tensor<1>>,
    pub v: HashMap<String, Tensor<1>>,
}

impl Optimizer {
    pub fn new(method: Method, weight_decay: f64) -> Self {
        Self { method, weight_decay, steps: 0, m: HashMap::new(), v: HashMap::new() }
    }

    /// Starts an optimizer step (Adam's bias correction counts steps, not calls to `apply`).
    pub fn tick(&mut self) {
        self.steps += 1;
    }

    /// Applies the current step's update from `grads` to the parameters of `model`.
    pub fn apply<T: Trainable + ?Sized>(&mut self, model: &mut T, grads: &GradStore, hp: StepParams) {
        let t = self.steps.max(1) as i32;
        let (method, weight_decay) = (self.method, self.weight_decay);
        let (ms, vs) = (&mut self.m, &mut self.v);
        model.walk_params(&mut |name, slot: Slot<'_>| {
            let Some(g) = grads.grads.get(name) else { return };
            let group = group_of(name);
            let wd = if group == 0 { weight_decay } else { 0.0 };
            let lr = hp.lr[group];
            let update = |w: Tensor<1>, m: &mut HashMap<String, Tensor<1>>, v: &mut HashMap<String, Tensor<1>>| -> Tensor<1> {
                match method {
                    Method::Sgd { nesterov } => {
                        // torch SGD: weight decay added to the gradient, dampening 0
                        let d = if wd != 0.0 { g.clone() + w.clone() * wd } else { g.clone() };
                        let buf = match m.get(name) {
                            Some(b) => b.clone() * hp.momentum + d.clone(),
                            None => d.clone(),
                        };
                        m.insert(name.to_string(), buf.clone());
                        let step = if nesterov { d + buf * hp.momentum } else { buf };
                        w - step * lr
                    }
                    Method::AdamW { beta1, beta2, eps } => {
                        // decoupled decay, bias-corrected moments
                        let w = if wd != 0.0 { w * (1.0 - lr * wd) } else { w };
                        let (gm, gv) = (g.clone() * (1.0 - beta1), g.clone().square() * (1.0 - beta2));
                        let mm = m.get(name).map_or(gm.clone(), |x| x.clone() * beta1 + gm);
                        let vv = v.get(name).map_or(gv.clone(), |x| x.clone() * beta2 + gv);
                        m.insert(name.to_string(), mm.clone());
                        v.insert(name.to_string(), vv.clone());
                        let bc1 = 1.0 - beta1.powi(t);
                        let bc2 = 1.0 - beta2.powi(t);
                        let denom = (vv / bc2).sqrt() + eps;
                        w - (mm / bc1) / denom * lr
                    }
                }
            };
            match slot {
                Slot::P4(p) => {
                    let shape = p.val().dims();
                    let w = p.val().inner().flatten(0, 3);
                    let nw: Tensor<4> = update(w, ms, vs).reshape(shape);
                    *p = Param::initialized(p.id, nw.autodiff().require_grad());
                }
                Slot::P1(p) => {
                    let w = p.val().inner();
                    let nw = update(w, ms, vs);
                    *p = Param::initialized(p.id, nw.autodiff().require_grad());
                }
                _ => {}
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_follow_ultralytics() {
        assert_eq!(group_of("model.0.conv.weight"), 0);
        assert_eq!(group_of("model.0.bn.weight"), 1);
        assert_eq!(group_of("model.0.bn.bias"), 2);
        assert_eq!(group_of("model.22.cv2.0.2.bias"), 2);
        assert_eq!(group_of("model.6.gamma"), 0);
        assert!(!is_trainable("model.22.dfl.conv.weight"));
    }
}
