//! YOLOv10 blocks: SCDown, CIB (inside C2fCIB) and RepVGGDW.

use burn::module::Module;
use burn::tensor::activation::silu;
use burn::tensor::{Device, Tensor};

use super::blocks::residual;
use super::conv::{Conv, ConvCfg};
use crate::model::walk::{child, walk_fields, Visit, Walk};
use crate::export::onnx::{Builder, ToOnnx, V};

/// Spatial-channel decoupled downsampling: 1×1 conv, then a strided depthwise conv.
#[derive(Module, Debug)]
pub struct SCDown {
    pub cv1: Conv,
    pub cv2: Conv,
}

impl SCDown {
    pub fn new(c1: usize, c2: usize, k: usize, s: usize, device: &Device) -> Self {
        Self {
            cv1: ConvCfg::new(c1, c2, 1).init(device),
            cv2: ConvCfg::new(c2, c2, k).s(s).g(c2).no_act().init(device),
        }
    }
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.cv2.forward(self.cv1.forward(x))
    }
}

walk_fields!(SCDown: cv1, cv2);

/// Depthwise 7×7 + 3×3 branches summed, then SiLU.
#[derive(Module, Debug)]
pub struct RepVggDw {
    pub conv: Conv,
    pub conv1: Conv,
}

impl RepVggDw {
    pub fn new(ed: usize, device: &Device) -> Self {
        Self {
            conv: ConvCfg::new(ed, ed, 7).p(3).g(ed).no_act().init(device),
            conv1: ConvCfg::new(ed, ed, 3).p(1).g(ed).no_act().init(device),
        }
    }
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        silu(self.conv.forward(x.clone()) + self.conv1.forward(x))
    }
}

walk_fields!(RepVggDw: conv, conv1);

#[derive(Module, Debug)]
pub enum CibMid {
    Conv(Conv),
    Rep(RepVggDw),
}

/// Compact inverted block: dw 3×3, 1×1 expand, dw (3×3 or RepVGGDW), 1×1, dw 3×3.
#[derive(Module, Debug)]
pub struct Cib {
    pub c0: Conv,
    pub c1: Conv,
    pub mid: CibMid,
    pub c3: Conv,
    pub c4: Conv,
    pub add: bool,
}

impl Cib {
    pub fn new(c1: usize, c2: usize, shortcut: bool, e: f64, lk: bool, device: &Device) -> Self {
        let c_ = (c2 as f64 * e) as usize;
        let mid = if lk {
            CibMid::Rep(RepVggDw::new(2 * c_, device))
        } else {
            CibMid::Conv(ConvCfg::new(2 * c_, 2 * c_, 3).g(2 * c_).init(device))
        };
        Self {
            c0: ConvCfg::new(c1, c1, 3).g(c1).init(device),
            c1: ConvCfg::new(c1, 2 * c_, 1).init(device),
            mid,
            c3: ConvCfg::new(2 * c_, c2, 1).init(device),
            c4: ConvCfg::new(c2, c2, 3).g(c2).init(device),
            add: shortcut && c1 == c2,
        }
    }
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let y = self.c1.forward(self.c0.forward(x.clone()));
        let y = match &self.mid {
            CibMid::Conv(c) => c.forward(y),
            CibMid::Rep(r) => r.forward(y),
        };
        let y = self.c4.forward(self.c3.forward(y));
        residual(self.add, x, y)
    }
}

impl Walk for Cib {
    fn walk(&mut self, prefix: &str, f: &mut Visit<'_>) {
        let p = child(prefix, "cv1");
        self.c0.walk(&child(&p, 0), f);
        self.c1.walk(&child(&p, 1), f);
        match &mut self.mid {
            CibMid::Conv(c) => c.walk(&child(&p, 2), f),
            CibMid::Rep(r) => r.walk(&child(&p, 2), f),
        }
        self.c3.walk(&child(&p, 3), f);
        self.c4.walk(&child(&p, 4), f);
    }
}

impl ToOnnx for SCDown {
    fn to_onnx(&self, onnx: &mut Builder, x: &V) -> V {
        let y = self.cv1.to_onnx(onnx, x);
        self.cv2.to_onnx(onnx, &y)
    }
}

impl ToOnnx for RepVggDw {
    fn to_onnx(&self, onnx: &mut Builder, x: &V) -> V {
        let a = self.conv.to_onnx(onnx, x);
        let b = self.conv1.to_onnx(onnx, x);
        let s = onnx.add(&a, &b);
        V { name: onnx.silu(&s.name), ..s }
    }
}

impl ToOnnx for Cib {
    fn to_onnx(&self, onnx: &mut Builder, x: &V) -> V {
        let y = self.c0.to_onnx(onnx, x);
        let y = self.c1.to_onnx(onnx, &y);
        let y = match &self.mid {
            CibMid::Conv(c) => c.to_onnx(onnx, &y),
            CibMid::Rep(r) => r.to_onnx(onnx, &y),
        };
        let y = self.c3.to_onnx(onnx, &y);
        let y = self.c4.to_onnx(onnx, &y);
        onnx.residual(self.add, x, y)
    }
}
