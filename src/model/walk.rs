//! Naming of model tensors with Ultralytics' state-dict keys.
//!
//! Every layer implements [`Walk`]: it hands each of its tensors, under its
//! full Ultralytics name, to a callback that may read or replace it. Loading,
//! saving and counting parameters are all built on this one traversal.

use burn::module::{Param, RunningState};
use burn::nn::conv::{Conv2d, ConvTranspose2d};
use burn::nn::BatchNorm;
use burn::tensor::Tensor;

/// A mutable reference to one named tensor of a model.
pub enum Slot<'a> {
    /// A 4-d parameter (convolution weights).
    P4(&'a mut Param<Tensor<4>>),
    /// A 1-d parameter (biases, BatchNorm affine, layer scale).
    P1(&'a mut Param<Tensor<1>>),
    /// A running statistic (BatchNorm mean/variance): not trained by gradients.
    Stat(&'a mut RunningState<Tensor<1>>),
    /// A whole Conv+BN block, offered (before its tensors) for structural
    /// edits such as BatchNorm folding; tensor visitors ignore it.
    Conv(&'a mut crate::model::layers::conv::Conv),
}

impl Slot<'_> {
    pub fn shape(&self) -> Vec<usize> {
        match self {
            // lazy_shape does not materialise lazily initialised weights
            Slot::P4(p) => p.lazy_shape().to_vec(),
            Slot::P1(p) => p.lazy_shape().to_vec(),
            Slot::Stat(s) => s.value().dims().to_vec(),
            Slot::Conv(_) => Vec::new(),
        }
    }
    pub fn is_param(&self) -> bool {
        matches!(self, Slot::P4(_) | Slot::P1(_))
    }
}

pub type Visit<'f> = dyn FnMut(&str, Slot<'_>) + 'f;

/// Anything with named tensors: the model, and the distiller's adapters (what the optimizer
/// trains, checkpoints save and `named` reads and writes).
pub trait Trainable {
    fn walk_params(&mut self, f: &mut Visit<'_>);
}

impl Walk for crate::model::DetectionModel {
    fn walk(&mut self, prefix: &str, f: &mut Visit<'_>) {
        self.walk_all(&mut |name, slot| f(&format!("{prefix}{name}"), slot));
    }
}

impl Trainable for crate::model::DetectionModel {
    fn walk_params(&mut self, f: &mut Visit<'_>) {
        self.walk_all(f);
    }
}

pub trait Walk {
    /// Calls `f` with every tensor of `self`, named `prefix` + Ultralytics' key.
    fn walk(&mut self, prefix: &str, f: &mut Visit<'_>);
}

/// A visitor that draws a lazily initialised parameter now, on the device it was made for: burn
/// draws a parameter at its first use, on whatever device it is by then.
fn draw_now(_: &str, slot: Slot<'_>) {
    match slot {
        Slot::P4(p) => drop(p.val()),
        Slot::P1(p) => drop(p.val()),
        Slot::Stat(_) | Slot::Conv(_) => {}
    }
}

/// `m`, made on the CPU (crate::device::init_device), with its parameters drawn there in walk
/// order and then moved to `device`: a seed gives the same weights on every device.
pub fn drawn_to<M: burn::module::Module + Walk>(mut m: M, device: &burn::tensor::Device) -> M {
    m.walk("", &mut draw_now);
    m.to_device(device)
}

/// `prefix` + `name` + `.`, the prefix of a child module.
pub fn child(prefix: &str, name: impl std::fmt::Display) -> String {
    format!("{prefix}{name}.")
}

/// A convolution's `weight` and optional `bias`.
macro_rules! walk_weight_and_bias {
    ($($ty:ty),+) => {
        $(impl Walk for $ty {
            fn walk(&mut self, prefix: &str, f: &mut Visit<'_>) {
                f(&format!("{prefix}weight"), Slot::P4(&mut self.weight));
                if let Some(b) = self.bias.as_mut() {
                    f(&format!("{prefix}bias"), Slot::P1(b));
                }
            }
        })+
    };
}

walk_weight_and_bias!(Conv2d, ConvTranspose2d);

impl Walk for BatchNorm {
    fn walk(&mut self, prefix: &str, f: &mut Visit<'_>) {
        f(&format!("{prefix}weight"), Slot::P1(&mut self.gamma));
        f(&format!("{prefix}bias"), Slot::P1(&mut self.beta));
        f(&format!("{prefix}running_mean"), Slot::Stat(&mut self.running_mean));
        f(&format!("{prefix}running_var"), Slot::Stat(&mut self.running_var));
    }
}

impl<T: Walk> Walk for Vec<T> {
    fn walk(&mut self, prefix: &str, f: &mut Visit<'_>) {
        for (i, m) in self.iter_mut().enumerate() {
            m.walk(&child(prefix, i), f);
        }
    }
}

/// `impl Walk` for a module that walks each listed field, in order, under the field's
/// own name or the given key: `walk_fields!(Mlp: fc1 = 0, fc2 = 1);`.
macro_rules! walk_fields {
    (@key $field:ident $key:literal) => {
        $key
    };
    (@key $field:ident) => {
        stringify!($field)
    };
    ($ty:ty: $($field:ident $(= $key:literal)?),+) => {
        impl $crate::model::walk::Walk for $ty {
            fn walk(&mut self, prefix: &str, f: &mut $crate::model::walk::Visit<'_>) {
                $(
                    let key = $crate::model::walk::walk_fields!(@key $field $($key)?);
                    $crate::model::walk::Walk::walk(&mut self.$field, &$crate::model::walk::child(prefix, key), f);
                )+
            }
        }
    };
}
pub(crate) use walk_fields;
