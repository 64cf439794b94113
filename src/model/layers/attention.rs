//! Attention blocks: yolo11's Attention/PSABlock/C2PSA, v10's PSA, and
//! yolo12's area attention (AAttn/ABlock/A2C2f).

use burn::module::{Module, Param};
use burn::tensor::activation::softmax;
use burn::tensor::{Device, Tensor};

use super::blocks::{residual, C3};
use super::conv::{Conv, ConvCfg};
use crate::model::walk::{child, walk_fields, Slot, Visit, Walk};
use crate::export::onnx::{Attr, Builder, ToOnnx, V};

/// Multi-head self-attention over all positions with a depthwise positional conv.
#[derive(Module, Debug)]
pub struct Attention {
    pub qkv: Conv,
    pub proj: Conv,
    pub pe: Conv,
    pub num_heads: usize,
    pub key_dim: usize,
    pub head_dim: usize,
}

impl Attention {
    pub fn new(dim: usize, num_heads: usize, attn_ratio: f64, device: &Device) -> Self {
        let head_dim = dim / num_heads;
        let key_dim = (head_dim as f64 * attn_ratio) as usize;
        let h = dim + 2 * num_heads * key_dim;
        Self {
            qkv: ConvCfg::new(dim, h, 1).no_act().init(device),
            proj: ConvCfg::new(dim, dim, 1).no_act().init(device),
            pe: ConvCfg::new(dim, dim, 3).g(dim).no_act().init(device),
            num_heads,
            key_dim,
            head_dim,
        }
    }

    /// Multiply-adds of its two matrix products over `n` positions (q·k and v·attn), per image.
    pub fn matmul_macs(&self, n: f64) -> f64 {
        (self.num_heads * (self.key_dim + self.head_dim)) as f64 * n * n
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [b, c, h, w] = x.dims();
        let n = h * w;
        let (nh, kd, hd) = (self.num_heads, self.key_dim, self.head_dim);
        let qkv: Tensor<4> = self.qkv.forward(x).reshape([b, nh, 2 * kd + hd, n]);
        let parts = qkv.split_with_sizes(vec![kd, kd, hd], 2);
        let (q, k, v) = (parts[0].clone(), parts[1].clone(), parts[2].clone());
        let scale = (kd as f64).powf(-0.5);
        let attn = softmax(q.swap_dims(2, 3).matmul(k).mul_scalar(scale), 3);
        let o: Tensor<4> = v.clone().matmul(attn.swap_dims(2, 3)).reshape([b, c, h, w]);
        let v: Tensor<4> = v.reshape([b, c, h, w]);
        self.proj.forward(o + self.pe.forward(v))
    }
}

walk_fields!(Attention: qkv, proj, pe);

/// Two 1×1 convs, the second without activation (`ffn` / `mlp`).
#[derive(Module, Debug)]
pub struct Mlp {
    pub fc1: Conv,
    pub fc2: Conv,
}

impl Mlp {
    pub fn new(c: usize, hidden: usize, device: &Device) -> Self {
        Self { fc1: ConvCfg::new(c, hidden, 1).init(device), fc2: ConvCfg::new(hidden, c, 1).no_act().init(device) }
    }
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.fc2.forward(self.fc1.forward(x))
    }
}

walk_fields!(Mlp: fc1 = 0, fc2 = 1);

/// x + attn(x), then x + ffn(x).
#[derive(Module, Debug)]
pub struct PsaBlock {
    pub attn: Attention,
    pub ffn: Mlp,
    pub add: bool,
}

impl PsaBlock {
    pub fn new(c: usize, attn_ratio: f64, num_heads: usize, shortcut: bool, device: &Device) -> Self {
        Self { attn: Attention::new(c, num_heads, attn_ratio, device), ffn: Mlp::new(c, 2 * c, device), add: shortcut }
    }
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let x = residual(self.add, x.clone(), self.attn.forward(x));
        residual(self.add, x.clone(), self.ffn.forward(x))
    }
}

walk_fields!(PsaBlock: attn, ffn);

/// C2PSA (yolo11, a chain of PSABlocks on half the channels) and PSA (v10, one inline block).
#[derive(Module, Debug)]
pub struct C2Psa {
    pub cv1: Conv,
    pub cv2: Conv,
    pub m: Vec<PsaBlock>,
    pub c: usize,
    /// v10 PSA names its block's parts directly (`attn`, `ffn`), not under `m.<j>`.
    pub inline: bool,
}

impl C2Psa {
    pub fn c2psa(c1: usize, n: usize, e: f64, device: &Device) -> Self {
        let c = (c1 as f64 * e) as usize;
        Self {
            cv1: ConvCfg::new(c1, 2 * c, 1).init(device),
            cv2: ConvCfg::new(2 * c, c1, 1).init(device),
            m: (0..n).map(|_| PsaBlock::new(c, 0.5, (c / 64).max(1), true, device)).collect(),
            c,
            inline: false,
        }
    }
    pub fn psa(c1: usize, e: f64, device: &Device) -> Self {
        Self { inline: true, ..Self::c2psa(c1, 1, e, device) }
    }
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let parts = self.cv1.forward(x).split(self.c, 1);
        let (a, mut b) = (parts[0].clone(), parts[1].clone());
        for blk in &self.m {
            b = blk.forward(b);
        }
        self.cv2.forward_cat(vec![a, b])
    }
    pub fn matmul_macs(&self, n: f64) -> f64 {
        self.m.iter().map(|b| b.attn.matmul_macs(n)).sum()
    }
}

impl Walk for C2Psa {
    fn walk(&mut self, prefix: &str, f: &mut Visit<'_>) {
        self.cv1.walk(&child(prefix, "cv1"), f);
        self.cv2.walk(&child(prefix, "cv2"), f);
        if self.inline {
            self.m[0].walk(prefix, f);
        } else {
            self.m.walk(&child(prefix, "m"), f);
        }
    }
}

/// Area attention: tokens split into `area` horizontal stripes, attention inside each.
#[derive(Module, Debug)]
pub struct AAttn {
    pub qkv: Conv,
    pub proj: Conv,
    pub pe: Conv,
    pub num_heads: usize,
    pub head_dim: usize,
    pub area: usize,
}

impl AAttn {
    pub fn new(dim: usize, num_heads: usize, area: usize, device: &Device) -> Self {
        let head_dim = dim / num_heads;
        let all = head_dim * num_heads;
        Self {
            qkv: ConvCfg::new(dim, 3 * all, 1).no_act().init(device),
            proj: ConvCfg::new(all, dim, 1).no_act().init(device),
            pe: ConvCfg::new(all, all, 7).p(3).g(all).no_act().init(device),
            num_heads,
            head_dim,
            area,
        }
    }

    /// Multiply-adds of its matrix products over `n` positions, per image: each of the
    /// `area` stripes attends within itself.
    pub fn matmul_macs(&self, n: f64) -> f64 {
        let area = self.area.max(1) as f64;
        2.0 * (self.num_heads * self.head_dim) as f64 * n * n / area
    }

    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [b, c, h, w] = x.dims();
        let n = h * w;
        let (nh, hd, area) = (self.num_heads, self.head_dim, self.area.max(1));
        assert!(n % area == 0, "area attention needs H·W ({n}) divisible by area ({area})");
        // (B, 3C, N) → tokens (B, N, 3C) → areas (B·area, N/area, 3C)
        let t: Tensor<3> = self.qkv.forward(x).flatten(2, 3).swap_dims(1, 2);
        let (ba, na) = (b * area, n / area);
        // (ba, na, nh, 3hd) → (ba, nh, 3hd, na)
        let t: Tensor<4> = t.reshape([ba, na, nh, 3 * hd]).permute([0, 2, 3, 1]);
        let parts = t.split(hd, 2);
        let (q, k, v) = (parts[0].clone(), parts[1].clone(), parts[2].clone());
        let scale = (hd as f64).powf(-0.5);
        let attn = softmax(q.swap_dims(2, 3).matmul(k).mul_scalar(scale), 3);
        let o = v.clone().matmul(attn.swap_dims(2, 3));
        // (ba, nh, hd, na) → (ba, na, nh, hd) → (B, H, W, C) → (B, C, H, W)
        let to_map = |t: Tensor<4>| -> Tensor<4> { t.permute([0, 3, 1, 2]).reshape([b, h, w, c]).permute([0, 3, 1, 2]) };
        self.proj.forward(to_map(o) + self.pe.forward(to_map(v)))
    }
}

walk_fields!(AAttn: qkv, proj, pe);

#[derive(Module, Debug)]
pub struct ABlock {
    pub attn: AAttn,
    pub mlp: Mlp,
}

impl ABlock {
    pub fn new(dim: usize, num_heads: usize, mlp_ratio: f64, area: usize, device: &Device) -> Self {
        let hidden = (dim as f64 * mlp_ratio) as usize;
        Self { attn: AAttn::new(dim, num_heads, area, device), mlp: Mlp::new(dim, hidden, device) }
    }
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let x = x.clone() + self.attn.forward(x);
        x.clone() + self.mlp.forward(x)
    }
}

walk_fields!(ABlock: attn, mlp);

#[derive(Module, Debug)]
pub enum A2Inner {
    Area(Vec<ABlock>),
    C3k(C3),
}

impl Walk for A2Inner {
    fn walk(&mut self, prefix: &str, f: &mut Visit<'_>) {
        match self {
            A2Inner::Area(v) => v.walk(prefix, f),
            A2Inner::C3k(m) => m.walk(prefix, f),
        }
    }
}

/// R-ELAN block of yolo12: chain of area-attention pairs (or C3k), concat, optional layer scale.
#[derive(Module, Debug)]
pub struct A2C2f {
    pub cv1: Conv,
    pub cv2: Conv,
    pub m: Vec<A2Inner>,
    pub gamma: Option<Param<Tensor<1>>>,
}

impl A2C2f {
    #[allow(clippy::too_many_arguments)]
    pub fn new(c1: usize, c2: usize, n: usize, a2: bool, area: usize, residual: bool, mlp_ratio: f64, e: f64, device: &Device) -> Self {
        let c_ = (c2 as f64 * e) as usize;
        let m = (0..n)
            .map(|_| {
                if a2 {
                    A2Inner::Area((0..2).map(|_| ABlock::new(c_, c_ / 32, mlp_ratio, area, device)).collect())
                } else {
                    A2Inner::C3k(C3::c3k(c_, c_, 2, true, device))
                }
            })
            .collect();
        let gamma = (a2 && residual).then(|| Param::from_tensor(Tensor::<1>::full([c2], 0.01, device)));
        Self {
            cv1: ConvCfg::new(c1, c_, 1).init(device),
            cv2: ConvCfg::new((1 + n) * c_, c2, 1).init(device),
            m,
            gamma,
        }
    }
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let mut ys = vec![self.cv1.forward(x.clone())];
        for m in &self.m {
            let mut y = ys.last().expect("one map").clone();
            match m {
                A2Inner::Area(blocks) => {
                    for blk in blocks {
                        y = blk.forward(y);
                    }
                }
                A2Inner::C3k(c) => y = c.forward(y),
            }
            ys.push(y);
        }
        let y = self.cv2.forward_cat(ys);
        match &self.gamma {
            Some(g) => {
                let [c] = g.dims();
                let g: Tensor<4> = g.val().reshape([1, c, 1, 1]);
                x + g * y
            }
            None => y,
        }
    }
    pub fn matmul_macs(&self, n: f64) -> f64 {
        let blocks = self.m.iter().flat_map(|m| match m {
            A2Inner::Area(blocks) => blocks.as_slice(),
            A2Inner::C3k(_) => &[],
        });
        blocks.map(|b| b.attn.matmul_macs(n)).sum()
    }
}

impl Walk for A2C2f {
    fn walk(&mut self, prefix: &str, f: &mut Visit<'_>) {
        if let Some(g) = self.gamma.as_mut() {
            f(&format!("{prefix}gamma"), Slot::P1(g));
        }
        self.cv1.walk(&child(prefix, "cv1"), f);
        self.cv2.walk(&child(prefix, "cv2"), f);
        self.m.walk(&child(prefix, "m"), f);
    }
}

impl ToOnnx for Attention {
    fn to_onnx(&self, onnx: &mut Builder, x: &V) -> V {
        let (nh, kd, hd) = (self.num_heads, self.key_dim, self.head_dim);
        let qkv = self.qkv.to_onnx(onnx, x);
        let qkv = onnx.reshape(&qkv.name, &[0, nh as i64, (2 * kd + hd) as i64, -1]);
        let p = onnx.split(&qkv, 2, &[kd, kd, hd]);
        let o = onnx.attend(&p[0], &p[1], &p[2], (kd as f64).powf(-0.5) as f32);
        let shp = onnx.shape_of(&x.name, None);
        let o = V { name: onnx.node("Reshape", &[&o, &shp], vec![]), ..x.clone() };
        let v = V { name: onnx.node("Reshape", &[&p[2], &shp], vec![]), ..x.clone() };
        let pe = self.pe.to_onnx(onnx, &v);
        let sum = onnx.add(&o, &pe);
        self.proj.to_onnx(onnx, &sum)
    }
}

impl ToOnnx for Mlp {
    fn to_onnx(&self, onnx: &mut Builder, x: &V) -> V {
        let h = self.fc1.to_onnx(onnx, x);
        self.fc2.to_onnx(onnx, &h)
    }
}

impl ToOnnx for PsaBlock {
    fn to_onnx(&self, onnx: &mut Builder, x: &V) -> V {
        let a = self.attn.to_onnx(onnx, x);
        let x = onnx.residual(self.add, x, a);
        let f = self.ffn.to_onnx(onnx, &x);
        onnx.residual(self.add, &x, f)
    }
}

impl ToOnnx for C2Psa {
    fn to_onnx(&self, onnx: &mut Builder, x: &V) -> V {
        // cv1 has 2·c output channels (its weight shape is checked on load)
        let y = self.cv1.to_onnx(onnx, x);
        let parts = onnx.split(&y.name, 1, &[self.c, self.c]);
        let a = V { name: parts[0].clone(), c: self.c, ..y.clone() };
        let mut b = V { name: parts[1].clone(), c: self.c, ..y.clone() };
        for blk in &self.m {
            b = blk.to_onnx(onnx, &b);
        }
        let cat = onnx.concat(&[a, b], 1);
        self.cv2.to_onnx(onnx, &cat)
    }
}

impl ToOnnx for AAttn {
    fn to_onnx(&self, onnx: &mut Builder, x: &V) -> V {
        let (nh, hd, area) = (self.num_heads, self.head_dim, self.area.max(1));
        let qkv = self.qkv.to_onnx(onnx, x);
        let t = onnx.reshape(&qkv.name, &[0, qkv.c as i64, -1]);
        let t = onnx.transpose(&t, &[0, 2, 1]);
        // (B, N, 3C) → (B·area, N/area, nh, 3hd), sizes read from the tensor
        let bn = onnx.shape_of(&t, Some(&[0, 1]));
        let num = onnx.init_i64("area_num", &[area as i64, 1]);
        let den = onnx.init_i64("area_den", &[1, area as i64]);
        let scaled = onnx.binary("Mul", &bn, &num);
        let bana = onnx.binary("Div", &scaled, &den);
        let rest = onnx.init_i64("shape", &[nh as i64, 3 * hd as i64]);
        let shp = onnx.node("Concat", &[&bana, &rest], vec![("axis", Attr::Int(0))]);
        let t = onnx.node("Reshape", &[&t, &shp], vec![]);
        let t = onnx.transpose(&t, &[0, 2, 3, 1]);
        let p = onnx.split(&t, 2, &[hd, hd, hd]);
        let o = onnx.attend(&p[0], &p[1], &p[2], (hd as f64).powf(-0.5) as f32);
        // (B, H, W, C) from the input's shape
        let bhwc = onnx.shape_of(&x.name, Some(&[0, 2, 3, 1]));
        let to_map = |onnx: &mut Builder, t: &str| -> V {
            let t = onnx.transpose(t, &[0, 3, 1, 2]);
            let t = onnx.node("Reshape", &[&t, &bhwc], vec![]);
            V { name: onnx.transpose(&t, &[0, 3, 1, 2]), ..x.clone() }
        };
        let o = to_map(onnx, &o);
        let v = to_map(onnx, &p[2]);
        let pe = self.pe.to_onnx(onnx, &v);
        let sum = onnx.add(&o, &pe);
        self.proj.to_onnx(onnx, &sum)
    }
}

impl ToOnnx for ABlock {
    fn to_onnx(&self, onnx: &mut Builder, x: &V) -> V {
        let a = self.attn.to_onnx(onnx, x);
        let x = onnx.add(x, &a);
        let f = self.mlp.to_onnx(onnx, &x);
        onnx.add(&x, &f)
    }
}

impl ToOnnx for A2C2f {
    fn to_onnx(&self, onnx: &mut Builder, x: &V) -> V {
        let mut ys = vec![self.cv1.to_onnx(onnx, x)];
        for inner in &self.m {
            let mut y = ys.last().expect("one map").clone();
            match inner {
                A2Inner::Area(blocks) => {
                    for blk in blocks {
                        y = blk.to_onnx(onnx, &y);
                    }
                }
                A2Inner::C3k(c) => y = c.to_onnx(onnx, &y),
            }
            ys.push(y);
        }
        let cat = onnx.concat(&ys, 1);
        let y = self.cv2.to_onnx(onnx, &cat);
        match &self.gamma {
            Some(g) => {
                let [c] = g.dims();
                let g = onnx.tensor("gamma", g.val().reshape([1, c, 1, 1]));
                let gy = V { name: onnx.binary("Mul", &g, &y.name), ..y };
                onnx.add(x, &gy)
            }
            None => y,
        }
    }
}
