//! Conv = Conv2d (no bias) → BatchNorm (eps 1e-3, momentum 0.03) → SiLU.

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, PaddingConfig2d};
use burn::tensor::{Device, Tensor};

use crate::kernels;
use crate::model::walk::{child, Slot, Visit, Walk};
use crate::export::onnx::{Builder, ToOnnx, V};

/// Convolution options of [`Conv`], Ultralytics' argument order.
#[derive(Debug, Clone, Copy)]
pub struct ConvCfg {
    pub c1: usize,
    pub c2: usize,
    pub k: usize,
    pub s: usize,
    /// Padding; `None` means "same" (`autopad`).
    pub p: Option<usize>,
    pub g: usize,
    pub d: usize,
    pub act: bool,
}

impl ConvCfg {
    pub fn new(c1: usize, c2: usize, k: usize) -> Self {
        Self { c1, c2, k, s: 1, p: None, g: 1, d: 1, act: true }
    }
    pub fn s(mut self, s: usize) -> Self {
        self.s = s;
        self
    }
    pub fn g(mut self, g: usize) -> Self {
        self.g = g;
        self
    }
    pub fn p(mut self, p: usize) -> Self {
        self.p = Some(p);
        self
    }
    pub fn no_act(mut self) -> Self {
        self.act = false;
        self
    }
    /// Depthwise-style grouping: `g = gcd(c1, c2)` (Ultralytics' DWConv).
    pub fn dw(mut self) -> Self {
        self.g = gcd(self.c1, self.c2);
        self
    }
    pub fn init(self, device: &Device) -> Conv {
        // autopad: effective kernel d(k-1)+1, padding half of it
        let p = self.p.unwrap_or((self.d * (self.k - 1) + 1) / 2);
        let conv = Conv2dConfig::new([self.c1, self.c2], [self.k, self.k])
            .with_stride([self.s, self.s])
            .with_padding(PaddingConfig2d::Explicit(p, p, p, p))
            .with_dilation([self.d, self.d])
            .with_groups(self.g)
            .with_bias(false)
            .init(device);
        let bn = BatchNormConfig::new(self.c2).with_epsilon(1e-3).with_momentum(0.03).init(device);
        Conv { conv, bn: Some(bn), act: self.act }
    }
}

pub fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

#[derive(Module, Debug)]
pub struct Conv {
    pub conv: Conv2d,
    /// None once folded into `conv` (inference/export).
    pub bn: Option<BatchNorm>,
    pub act: bool,
}

impl Conv {
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        match &self.bn {
            Some(bn) => kernels::batch_norm_act(bn, kernels::conv2d_layer(&self.conv, x), self.act),
            None => kernels::conv2d_layer_act(&self.conv, x, self.act),
        }
    }

    /// `forward(cat_channels(xs))`; a folded 1×1 convolution in CPU inference reads the parts in
    /// place instead of concatenating them (`kernels::conv2d_cat_layer_act`).
    pub fn forward_cat(&self, xs: Vec<Tensor<4>>) -> Tensor<4> {
        self.forward_parts(xs.into_iter().map(|x| (x, 1)).collect())
    }

    /// [`forward_cat`](Self::forward_cat) of `(map, scale)` parts, each map first upsampled
    /// (nearest) by its scale; the folded 1×1 convolution in CPU inference makes neither.
    pub fn forward_parts(&self, mut parts: Vec<(Tensor<4>, usize)>) -> Tensor<4> {
        if let [(_, 1)] = parts[..] {
            return self.forward(parts.remove(0).0);
        }
        let fused = match &self.bn {
            None => kernels::conv2d_cat_layer_act(&self.conv, &parts, self.act),
            Some(_) => None,
        };
        fused.unwrap_or_else(|| self.forward(super::blocks::cat_channels(parts.into_iter().map(|(x, s)| super::blocks::upsample_nearest(x, s)).collect())))
    }

    /// Folds the BatchNorm (running statistics) into the convolution:
    /// W' = W·γ/√(var+eps) per output channel, b' = β − γ·mean/√(var+eps).
    pub fn fold_bn(&mut self) {
        let Some(bn) = self.bn.take() else { return };
        let c = bn.gamma.dims()[0];
        let scale = bn.gamma.val() / bn.running_var.value_sync().add_scalar(bn.epsilon).sqrt();
        let bias = bn.beta.val() - scale.clone() * bn.running_mean.value_sync();
        let w = self.conv.weight.val() * scale.reshape([c, 1, 1, 1]);
        self.conv.weight = Param::initialized(self.conv.weight.id, w);
        self.conv.bias = Some(Param::from_tensor(bias));
    }
}

impl Walk for Conv {
    fn walk(&mut self, prefix: &str, f: &mut Visit<'_>) {
        f(prefix, Slot::Conv(self));
        self.conv.walk(&child(prefix, "conv"), f);
        if let Some(bn) = self.bn.as_mut() {
            bn.walk(&child(prefix, "bn"), f);
        }
    }
}

/// A plain Conv2d with bias (the last 1×1 of each head branch).
pub fn conv2d_bias(c1: usize, c2: usize, device: &Device) -> Conv2d {
    Conv2dConfig::new([c1, c2], [1, 1]).with_bias(true).init(device)
}

impl ToOnnx for Conv {
    fn to_onnx(&self, onnx: &mut Builder, x: &V) -> V {
        let mut y = onnx.conv2d(x, &self.conv);
        if let Some(bn) = &self.bn {
            y = onnx.batch_norm(&y, bn);
        }
        if self.act {
            y.name = onnx.silu(&y.name);
        }
        y
    }
}
