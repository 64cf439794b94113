//! CSP-style blocks: Bottleneck, C2f, C3/C3k, C3k2, SPPF.

use burn::module::Module;
use burn::tensor::module::{interpolate, max_pool2d};
use burn::tensor::ops::{InterpolateMode, InterpolateOptions, MaxPoolOptions};
use burn::tensor::{Device, Tensor};

use super::attention::PsaBlock;
use super::conv::{Conv, ConvCfg};
use crate::model::walk::{walk_fields, Visit, Walk};
use crate::export::onnx::{Attr, Builder, ToOnnx, V};

#[derive(Module, Debug)]
pub struct Bottleneck {
    pub cv1: Conv,
    pub cv2: Conv,
    pub add: bool,
}

impl Bottleneck {
    /// Bottleneck(c1, c2, shortcut, g, k=(k1, k2), e).
    pub fn new(c1: usize, c2: usize, shortcut: bool, k: (usize, usize), e: f64, device: &Device) -> Self {
        let c_ = (c2 as f64 * e) as usize;
        Self {
            cv1: ConvCfg::new(c1, c_, k.0).init(device),
            cv2: ConvCfg::new(c_, c2, k.1).init(device),
            add: shortcut && c1 == c2,
        }
    }
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let y = self.cv2.forward(self.cv1.forward(x.clone()));
        residual(self.add, x, y)
    }
}

walk_fields!(Bottleneck: cv1, cv2);

/// `x + y` for a residual block with a shortcut, else `y`.
pub fn residual(add: bool, x: Tensor<4>, y: Tensor<4>) -> Tensor<4> {
    if add { x + y } else { y }
}

/// The maps concatenated along the channels. With one image this is a concatenation of
/// `[c, h, w]` blocks along their first dimension, which burn-flex copies straight from channel
/// slices (C2f's halves); along dimension 1 it first copies each slice whole (`perf`: 1.5% of
/// yolov8n's forward at 640).
pub fn cat_channels(xs: Vec<Tensor<4>>) -> Tensor<4> {
    let [n, _, h, w] = xs[0].dims();
    if n != 1 {
        return Tensor::cat(xs, 1);
    }
    let blocks = xs.into_iter().map(|x| {
        let c = x.dims()[1];
        x.reshape([c, h, w])
    });
    Tensor::<3>::cat(blocks.collect(), 0).unsqueeze()
}

/// `x` upsampled by `s` (nearest), as Ultralytics' `nn.Upsample(None, s, "nearest")`.
pub fn upsample_nearest(x: Tensor<4>, s: usize) -> Tensor<4> {
    if s == 1 {
        return x;
    }
    let [_, _, h, w] = x.dims();
    interpolate(x, InterpolateOptions::new(InterpolateMode::Nearest).with_output_size([h * s, w * s]))
}

/// C3 (and C3k, which only changes the bottleneck kernels).
#[derive(Module, Debug)]
pub struct C3 {
    pub cv1: Conv,
    pub cv2: Conv,
    pub cv3: Conv,
    pub m: Vec<Bottleneck>,
}

impl C3 {
    /// C3(c1, c2, n, shortcut, e): bottleneck kernels (1, 3).
    pub fn c3(c1: usize, c2: usize, n: usize, shortcut: bool, e: f64, device: &Device) -> Self {
        Self::with_kernels(c1, c2, n, shortcut, e, (1, 3), device)
    }
    /// C3k(c1, c2, n, shortcut, e, k=3): bottleneck kernels (k, k).
    pub fn c3k(c1: usize, c2: usize, n: usize, shortcut: bool, device: &Device) -> Self {
        Self::with_kernels(c1, c2, n, shortcut, 0.5, (3, 3), device)
    }
    fn with_kernels(c1: usize, c2: usize, n: usize, shortcut: bool, e: f64, k: (usize, usize), device: &Device) -> Self {
        let c_ = (c2 as f64 * e) as usize;
        Self {
            cv1: ConvCfg::new(c1, c_, 1).init(device),
            cv2: ConvCfg::new(c1, c_, 1).init(device),
            cv3: ConvCfg::new(2 * c_, c2, 1).init(device),
            m: (0..n).map(|_| Bottleneck::new(c_, c_, shortcut, k, 1.0, device)).collect(),
        }
    }
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let mut a = self.cv1.forward(x.clone());
        for b in &self.m {
            a = b.forward(a);
        }
        self.cv3.forward_cat(vec![a, self.cv2.forward(x)])
    }
}

walk_fields!(C3: cv1, cv2, cv3, m);

/// The inner block of a C2f-style layer.
#[derive(Module, Debug)]
pub enum Inner {
    Bottleneck(Bottleneck),
    C3k(C3),
    /// YOLO26's C3k2 with attention: Sequential(Bottleneck, PSABlock).
    BottleneckPsa(BottleneckPsa),
    Cib(super::v10::Cib),
}

impl Inner {
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        match self {
            Inner::Bottleneck(m) => m.forward(x),
            Inner::C3k(m) => m.forward(x),
            Inner::BottleneckPsa(m) => m.forward(x),
            Inner::Cib(m) => m.forward(x),
        }
    }
}

impl Walk for Inner {
    fn walk(&mut self, prefix: &str, f: &mut Visit<'_>) {
        match self {
            Inner::Bottleneck(m) => m.walk(prefix, f),
            Inner::C3k(m) => m.walk(prefix, f),
            Inner::BottleneckPsa(m) => m.walk(prefix, f),
            Inner::Cib(m) => m.walk(prefix, f),
        }
    }
}

#[derive(Module, Debug)]
pub struct BottleneckPsa {
    pub bottleneck: Bottleneck,
    pub psa: PsaBlock,
}

impl BottleneckPsa {
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.psa.forward(self.bottleneck.forward(x))
    }
}

walk_fields!(BottleneckPsa: bottleneck = 0, psa = 1);

/// C2f and its relatives (C3k2, C2fCIB): split, chain of inner blocks, concat all.
#[derive(Module, Debug)]
pub struct C2f {
    pub cv1: Conv,
    pub cv2: Conv,
    pub m: Vec<Inner>,
}

impl C2f {
    /// Builds the shell; `inner(c)` makes each of the `n` inner blocks of width `c`.
    pub fn with_inner(c1: usize, c2: usize, n: usize, e: f64, device: &Device, inner: impl Fn(usize) -> Inner) -> Self {
        let c = (c2 as f64 * e) as usize;
        Self {
            cv1: ConvCfg::new(c1, 2 * c, 1).init(device),
            cv2: ConvCfg::new((2 + n) * c, c2, 1).init(device),
            m: (0..n).map(|_| inner(c)).collect(),
        }
    }
    /// Multiply-adds of the attention products of YOLO26's C3k2 with attention, per image.
    pub fn matmul_macs(&self, n: f64) -> f64 {
        self.m
            .iter()
            .map(|m| match m {
                Inner::BottleneckPsa(b) => b.psa.attn.matmul_macs(n),
                _ => 0.0,
            })
            .sum()
    }
    /// C2f(c1, c2, n, shortcut, e): bottlenecks with e = 1.0.
    pub fn c2f(c1: usize, c2: usize, n: usize, shortcut: bool, e: f64, device: &Device) -> Self {
        Self::with_inner(c1, c2, n, e, device, |c| Inner::Bottleneck(Bottleneck::new(c, c, shortcut, (3, 3), 1.0, device)))
    }
    /// C3k2(c1, c2, n, c3k, e, attn, shortcut).
    pub fn c3k2(c1: usize, c2: usize, n: usize, c3k: bool, e: f64, attn: bool, shortcut: bool, device: &Device) -> Self {
        Self::with_inner(c1, c2, n, e, device, |c| {
            if attn {
                Inner::BottleneckPsa(BottleneckPsa {
                    bottleneck: Bottleneck::new(c, c, shortcut, (3, 3), 0.5, device),
                    psa: PsaBlock::new(c, 0.5, (c / 64).max(1), true, device),
                })
            } else if c3k {
                Inner::C3k(C3::c3k(c, c, 2, shortcut, device))
            } else {
                Inner::Bottleneck(Bottleneck::new(c, c, shortcut, (3, 3), 0.5, device))
            }
        })
    }
    /// `cv2(cat(y₀, y₁, m₁(y₁), m₂(m₁(y₁)), …))` with `(y₀, y₁)` the halves of `y = cv1(x)`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.forward_parts(vec![(x, 1)])
    }

    /// [`forward`](Self::forward) of the channel concatenation of `(map, scale)` parts, each map
    /// upsampled by its scale (the neck's `Upsample → Concat`), which `cv1` reads in place.
    /// `cv2` reads `cv1`'s halves as two parts, as the concatenation had them: a graph that
    /// passed `cv1`'s output whole changed training's roundings from the first epoch on (its
    /// backward through burn's `chunk` and `cat`), and so its chaotic runs.
    pub fn forward_parts(&self, xs: Vec<(Tensor<4>, usize)>) -> Tensor<4> {
        let y = self.cv1.forward_parts(xs);
        let mut ys = y.chunk(2, 1);
        for m in &self.m {
            let last = ys.last().expect("two halves").clone();
            ys.push(m.forward(last));
        }
        self.cv2.forward_cat(ys)
    }
}

walk_fields!(C2f: cv1, cv2, m);

/// Spatial pyramid pooling (fast): `n` chained max-pools, concatenated.
#[derive(Module, Debug)]
pub struct Sppf {
    pub cv1: Conv,
    pub cv2: Conv,
    pub k: usize,
    pub n: usize,
    pub add: bool,
}

impl Sppf {
    pub fn new(c1: usize, c2: usize, k: usize, n: usize, shortcut: bool, act: bool, device: &Device) -> Self {
        let c_ = c1 / 2;
        Self {
            cv1: ConvCfg { act, ..ConvCfg::new(c1, c_, 1) }.init(device),
            cv2: ConvCfg::new(c_ * (n + 1), c2, 1).init(device),
            k,
            n,
            add: shortcut && c1 == c2,
        }
    }
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let y = self.cv1.forward(x.clone());
        let ys = match crate::kernels::max_pool_chain(y.clone(), self.k, self.n) {
            Some(pooled) => vec![y, pooled],
            None => {
                let opts = MaxPoolOptions::new([self.k, self.k]).with_stride([1, 1]).with_padding([self.k / 2, self.k / 2]);
                let mut ys = vec![y];
                for _ in 0..self.n {
                    let last = ys.last().expect("one map").clone();
                    ys.push(max_pool2d(last, opts.clone()));
                }
                ys
            }
        };
        let y = self.cv2.forward_cat(ys);
        residual(self.add, x, y)
    }
}

walk_fields!(Sppf: cv1, cv2);

impl ToOnnx for Bottleneck {
    fn to_onnx(&self, onnx: &mut Builder, x: &V) -> V {
        let a = self.cv1.to_onnx(onnx, x);
        let y = self.cv2.to_onnx(onnx, &a);
        onnx.residual(self.add, x, y)
    }
}

impl ToOnnx for C3 {
    fn to_onnx(&self, onnx: &mut Builder, x: &V) -> V {
        let mut a = self.cv1.to_onnx(onnx, x);
        for b in &self.m {
            a = b.to_onnx(onnx, &a);
        }
        let b = self.cv2.to_onnx(onnx, x);
        let cat = onnx.concat(&[a, b], 1);
        self.cv3.to_onnx(onnx, &cat)
    }
}

impl ToOnnx for Inner {
    fn to_onnx(&self, onnx: &mut Builder, x: &V) -> V {
        match self {
            Inner::Bottleneck(b) => b.to_onnx(onnx, x),
            Inner::C3k(c) => c.to_onnx(onnx, x),
            Inner::BottleneckPsa(bp) => {
                let y = bp.bottleneck.to_onnx(onnx, x);
                bp.psa.to_onnx(onnx, &y)
            }
            Inner::Cib(c) => c.to_onnx(onnx, x),
        }
    }
}

impl ToOnnx for C2f {
    fn to_onnx(&self, onnx: &mut Builder, x: &V) -> V {
        let y = self.cv1.to_onnx(onnx, x);
        let half = y.c / 2;
        let parts = onnx.split(&y.name, 1, &[half, y.c - half]);
        let mut ys: Vec<V> = parts.into_iter().map(|name| V { name, c: half, ..y.clone() }).collect();
        for inner in &self.m {
            let last = ys.last().expect("two halves").clone();
            let o = inner.to_onnx(onnx, &last);
            ys.push(o);
        }
        let cat = onnx.concat(&ys, 1);
        self.cv2.to_onnx(onnx, &cat)
    }
}

impl ToOnnx for Sppf {
    fn to_onnx(&self, onnx: &mut Builder, x: &V) -> V {
        let (k, p) = (self.k as i64, (self.k / 2) as i64);
        let mut ys = vec![self.cv1.to_onnx(onnx, x)];
        for _ in 0..self.n {
            let last = ys.last().expect("one map").clone();
            let name = onnx.node(
                "MaxPool",
                &[&last.name],
                vec![
                    ("kernel_shape", Attr::Ints(vec![k, k])),
                    ("pads", Attr::Ints(vec![p, p, p, p])),
                    ("strides", Attr::Ints(vec![1, 1])),
                ],
            );
            ys.push(V { name, ..last });
        }
        let cat = onnx.concat(&ys, 1);
        let y = self.cv2.to_onnx(onnx, &cat);
        onnx.residual(self.add, x, y)
    }
}
