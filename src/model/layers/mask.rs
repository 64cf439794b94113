//! What a segmentation head adds to Detect: a mask-coefficient branch per level (`cv4`) and the
//! prototype module (`Proto`, and YOLO26's `Proto26` with its multi-scale fusion and a semantic
//! branch used only in training). Instance masks are the sigmoid of coefficients · prototypes.

use burn::module::Module;
use burn::nn::conv::{Conv2d, ConvTranspose2d, ConvTranspose2dConfig};
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
use burn::tensor::{Device, Tensor};

use super::conv::{conv2d_bias, Conv, ConvCfg};
use crate::export::onnx::{Builder, ToOnnx, V};
use crate::model::spec::SegSpec;
use crate::model::walk::{child, Visit, Walk};

/// Two 3×3 Convs and a 1×1 Conv2d with bias: the mask coefficients of one level (`cv4.<i>`),
/// and Proto26's semantic branch.
#[derive(Module, Debug)]
pub struct ConvBranch {
    pub c0: Conv,
    pub c1: Conv,
    pub out: Conv2d,
}

impl ConvBranch {
    fn new(c_in: usize, c_mid: usize, c_out: usize, device: &Device) -> Self {
        Self { c0: ConvCfg::new(c_in, c_mid, 3).init(device), c1: ConvCfg::new(c_mid, c_mid, 3).init(device), out: conv2d_bias(c_mid, c_out, device) }
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        crate::kernels::conv2d_layer(&self.out, self.c1.forward(self.c0.forward(x)))
    }
}

crate::model::walk::walk_fields!(ConvBranch: c0 = 0, c1 = 1, out = 2);

/// The prototypes: 3×3 Conv, 2× transposed conv, 3×3 Conv, 1×1 Conv to `nm` prototypes at a
/// quarter of the input size. Proto26 first fuses the three levels into the first one.
#[derive(Module, Debug)]
pub struct Proto {
    /// Proto26: 1×1 Convs bringing P4, P5 to P3's width (then upsampled and added).
    pub feat_refine: Vec<Conv>,
    /// Proto26: 3×3 Conv of the fused features.
    pub feat_fuse: Option<Conv>,
    /// Proto26: the semantic branch (class logits per pixel at P3), used only in training.
    pub semseg: Option<ConvBranch>,
    pub cv1: Conv,
    pub upsample: ConvTranspose2d,
    pub cv2: Conv,
    pub cv3: Conv,
}

impl Proto {
    fn new(spec: &SegSpec, ch: &[usize], nc: usize, device: &Device) -> Self {
        let (c_, nm, c0) = (spec.npr, spec.nm, ch[0]);
        let (feat_refine, feat_fuse, semseg, c1) = if spec.proto26 {
            let refine = ch[1..].iter().map(|&c| ConvCfg::new(c, c0, 1).init(device)).collect();
            (refine, Some(ConvCfg::new(c0, c_, 3).init(device)), Some(ConvBranch::new(c0, c_, nc, device)), c_)
        } else {
            (Vec::new(), None, None, c0)
        };
        Self {
            feat_refine,
            feat_fuse,
            semseg,
            cv1: ConvCfg::new(c1, c_, 3).init(device),
            upsample: ConvTranspose2dConfig::new([c_, c_], [2, 2]).with_stride([2, 2]).with_bias(true).init(device),
            cv2: ConvCfg::new(c_, c_, 3).init(device),
            cv3: ConvCfg::new(c_, nm, 1).init(device),
        }
    }

    /// Prototypes [B, nm, 2H, 2W] of the level inputs (P3 first, at H×W), and with `semantic`
    /// Proto26's semantic logits [B, nc, H, W].
    fn forward(&self, xs: &[Tensor<4>], semantic: bool) -> (Tensor<4>, Option<Tensor<4>>) {
        let mut feat = xs[0].clone();
        let [_, _, h, w] = feat.dims();
        for (i, refine) in self.feat_refine.iter().enumerate() {
            // nearest upsampling to P3's size (Ultralytics: a scale factor of 2^(i+1))
            let up = interpolate(refine.forward(xs[i + 1].clone()), InterpolateOptions::new(InterpolateMode::Nearest).with_output_size([h, w]));
            feat = feat + up;
        }
        let sem = self.semseg.as_ref().filter(|_| semantic).map(|s| s.forward(feat.clone()));
        let x = match &self.feat_fuse {
            Some(f) => f.forward(feat),
            None => feat,
        };
        let p = self.cv3.forward(self.cv2.forward(self.upsample.forward(self.cv1.forward(x))));
        (p, sem)
    }
}

impl Walk for Proto {
    fn walk(&mut self, prefix: &str, f: &mut Visit<'_>) {
        // Ultralytics' order: Proto's own layers, then Proto26's
        self.cv1.walk(&child(prefix, "cv1"), f);
        self.upsample.walk(&child(prefix, "upsample"), f);
        self.cv2.walk(&child(prefix, "cv2"), f);
        self.cv3.walk(&child(prefix, "cv3"), f);
        self.feat_refine.walk(&child(prefix, "feat_refine"), f);
        if let Some(c) = self.feat_fuse.as_mut() {
            c.walk(&child(prefix, "feat_fuse"), f);
        }
        if let Some(s) = self.semseg.as_mut() {
            s.walk(&child(prefix, "semseg"), f);
        }
    }
}

/// The mask parts of a segmentation head.
#[derive(Module, Debug)]
pub struct MaskHead {
    /// Mask coefficients per level (one-to-many branch).
    pub cv4: Vec<ConvBranch>,
    /// The one-to-one branch's (end-to-end heads).
    pub one2one_cv4: Vec<ConvBranch>,
    pub proto: Proto,
    pub nm: usize,
}

/// The mask outputs of a forward pass.
#[derive(Debug, Clone)]
pub struct MaskMaps {
    /// [B, nm, A] mask coefficients of the one-to-many branch.
    pub coeffs: Tensor<3>,
    /// [B, nm, A] of the one-to-one branch, when it ran.
    pub coeffs_one2one: Option<Tensor<3>>,
    /// [B, nm, 2H, 2W] prototypes (H×W: the first level's size).
    pub protos: Tensor<4>,
    /// Proto26's semantic logits [B, nc, H, W] (training only).
    pub semantic: Option<Tensor<4>>,
}

impl MaskMaps {
    /// The outputs of the batch's first `n` images.
    pub fn first_images(&self, n: usize) -> MaskMaps {
        let first3 = |t: &Tensor<3>| t.clone().narrow(0, 0, n);
        let first4 = |t: &Tensor<4>| t.clone().narrow(0, 0, n);
        MaskMaps {
            coeffs: first3(&self.coeffs),
            coeffs_one2one: self.coeffs_one2one.as_ref().map(first3),
            protos: first4(&self.protos),
            semantic: self.semantic.as_ref().map(first4),
        }
    }
}

impl MaskHead {
    pub fn new(spec: &SegSpec, ch: &[usize], nc: usize, end2end: bool, device: &Device) -> Self {
        let c4 = (ch[0] / 4).max(spec.nm);
        let branches = || ch.iter().map(|&c| ConvBranch::new(c, c4, spec.nm, device)).collect::<Vec<_>>();
        Self { cv4: branches(), one2one_cv4: if end2end { branches() } else { Vec::new() }, proto: Proto::new(spec, ch, nc, device), nm: spec.nm }
    }

    /// The mask outputs of the level inputs. `training` also runs the one-to-one coefficients
    /// (on detached inputs, as the box and class branches) when the head has them, and
    /// Proto26's semantic branch.
    pub fn forward(&self, xs: &[Tensor<4>], training: bool) -> MaskMaps {
        let coeffs = |branches: &[ConvBranch], detach: bool| -> Tensor<3> {
            let maps = xs.iter().zip(branches).map(|(x, b)| {
                let x = if detach { x.clone().detach() } else { x.clone() };
                b.forward(x).flatten::<3>(2, 3)
            });
            Tensor::cat(maps.collect(), 2)
        };
        let (protos, semantic) = self.proto.forward(xs, training);
        MaskMaps {
            coeffs: coeffs(&self.cv4, false),
            coeffs_one2one: (training && !self.one2one_cv4.is_empty()).then(|| coeffs(&self.one2one_cv4, true)),
            protos,
            semantic,
        }
    }
}

impl Walk for MaskHead {
    fn walk(&mut self, prefix: &str, f: &mut Visit<'_>) {
        self.proto.walk(&child(prefix, "proto"), f);
        self.cv4.walk(&child(prefix, "cv4"), f);
        self.one2one_cv4.walk(&child(prefix, "one2one_cv4"), f);
    }
}

impl ToOnnx for ConvBranch {
    fn to_onnx(&self, onnx: &mut Builder, x: &V) -> V {
        let y = self.c0.to_onnx(onnx, x);
        let y = self.c1.to_onnx(onnx, &y);
        onnx.conv2d(&y, &self.out)
    }
}
