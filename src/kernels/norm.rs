//! BatchNorm over NCHW `f32` buffers with the SiLU that follows it fused in, forward and backward.
//!
//! burn's default `batch_norm_train` is a dozen tensor ops (two of them copies through swapped
//! dimensions) and its SiLU two more with their own backward; here it is one pass for the
//! statistics, one for the output and two for the gradients, per channel in parallel.

use rayon::prelude::*;

use super::simd::{self, multiversion, sigmoid};
use super::{NormSpec, SharedMut};

/// `[n, c, hw]` view of an NCHW buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Planes {
    pub n: usize,
    pub c: usize,
    pub hw: usize,
}

impl Planes {
    fn plane(&self, b: usize, ch: usize) -> std::ops::Range<usize> {
        let s = (b * self.c + ch) * self.hw;
        s..s + self.hw
    }
    fn count(&self) -> f64 {
        (self.n * self.hw) as f64
    }
}

/// Per-channel mean and biased variance: two passes (mean, then squared deviations), each plane
/// summed in 16 f32 lanes (vectorised) and the planes accumulated in f64.
pub fn batch_stats(x: &[f32], p: Planes) -> (Vec<f32>, Vec<f32>) {
    (0..p.c)
        .into_par_iter()
        .map(|ch| {
            let planes = || (0..p.n).map(|b| &x[p.plane(b, ch)]);
            let sum: f64 = planes().map(|v| lane_sum_best(v, None) as f64).sum();
            let mean = sum / p.count();
            let sq: f64 = planes().map(|v| lane_sum_best(v, Some(mean as f32)) as f64).sum();
            (mean as f32, (sq / p.count()) as f32)
        })
        .unzip()
}

// The per-plane loops compiled for this CPU's best SIMD.
multiversion! { fn lane_sum_best(v: &[f32], centre: Option<f32>) -> f32 = lane_sum; }
multiversion! { fn affine_act_best(out: &mut [f32], x: &[f32], s: f32, t: f32, silu: bool) = affine_act; }
multiversion! {
    #[allow(clippy::too_many_arguments)]
    fn grad_plane_best(out: &mut [f32], x: &[f32], dy: &[f32], m: f32, inv: f32, g: f32, bt: f32, silu: bool) -> (f32, f32) = grad_plane;
}
multiversion! { fn input_grad_plane_best(out: &mut [f32], x: &[f32], m: f32, inv: f32, k: f32, mdz: f32, mdzx: f32) = input_grad_plane; }

/// Σ v, or Σ (v − c)² with `centre` Some(c).
#[inline(always)]
fn lane_sum(v: &[f32], centre: Option<f32>) -> f32 {
    match centre {
        Some(c) => lanes(v, |x| (x - c) * (x - c)),
        None => lanes(v, |x| x),
    }
}

/// Σ term(v) in [`simd::LANES`] lanes, then the tail: [`simd::lane_sum`]'s order, over chunks so
/// that no bounds check stops the loop from vectorising.
#[inline(always)]
fn lanes(v: &[f32], term: impl Fn(f32) -> f32) -> f32 {
    let mut acc = [0.0f32; simd::LANES];
    let chunks = v.chunks_exact(simd::LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (a, &x) in acc.iter_mut().zip(chunk) {
            *a += term(x);
        }
    }
    acc.iter().sum::<f32>() + tail.iter().map(|&x| term(x)).sum::<f32>()
}

/// Per-channel `(scale, shift)` so that `bn(x) = x·scale + shift`.
fn affine(gamma: &[f32], beta: &[f32], mean: &[f32], var: &[f32], eps: f64) -> Vec<(f32, f32)> {
    (0..gamma.len())
        .map(|c| {
            let inv = (1.0 / (var[c] as f64 + eps).sqrt()) as f32;
            let scale = gamma[c] * inv;
            (scale, beta[c] - mean[c] * scale)
        })
        .collect()
}

/// `y = act(gamma·(x − mean)/√(var + eps) + beta)`, `act` SiLU or identity.
#[allow(clippy::too_many_arguments)]
pub fn forward(x: &[f32], p: Planes, gamma: &[f32], beta: &[f32], mean: &[f32], var: &[f32], eps: f64, silu: bool) -> Vec<f32> {
    let ab = affine(gamma, beta, mean, var, eps);
    let mut y = vec![0.0f32; x.len()];
    y.par_chunks_mut(p.hw).zip(x.par_chunks(p.hw)).enumerate().for_each(|(i, (yo, xi))| {
        let (s, t) = ab[i % p.c];
        affine_act_best(yo, xi, s, t, silu);
    });
    y
}

#[inline(always)]
fn affine_act(out: &mut [f32], x: &[f32], s: f32, t: f32, silu: bool) {
    if silu {
        out.iter_mut().zip(x).for_each(|(o, &v)| {
            *o = simd::silu(v * s + t);
        });
    } else {
        out.iter_mut().zip(x).for_each(|(o, &v)| *o = v * s + t);
    }
}

/// Pass 1 of the backward over one plane: dz into `out`; returns (Σdz, Σdz·x̂).
/// The sums run in 16 lanes so that the loop vectorises (float sums are not reordered otherwise).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn grad_plane(out: &mut [f32], x: &[f32], dy: &[f32], m: f32, inv: f32, g: f32, bt: f32, silu: bool) -> (f32, f32) {
    const L: usize = 16;
    let dz_of = |xv: f32, d: f32| {
        let xh = (xv - m) * inv;
        let dz = if silu {
            let z = xh * g + bt;
            let s = sigmoid(z);
            d * s * (1.0 + z * (1.0 - s))
        } else {
            d
        };
        (dz, xh)
    };
    let (mut a, mut c) = ([0.0f32; L], [0.0f32; L]);
    let n = out.len() / L * L;
    for ((o, xv), d) in out[..n].chunks_exact_mut(L).zip(x[..n].chunks_exact(L)).zip(dy[..n].chunks_exact(L)) {
        for i in 0..L {
            let (dz, xh) = dz_of(xv[i], d[i]);
            o[i] = dz;
            a[i] += dz;
            c[i] += dz * xh;
        }
    }
    let (mut sa, mut sc) = (a.iter().sum::<f32>(), c.iter().sum::<f32>());
    for ((o, &xv), &d) in out[n..].iter_mut().zip(&x[n..]).zip(&dy[n..]) {
        let (dz, xh) = dz_of(xv, d);
        *o = dz;
        sa += dz;
        sc += dz * xh;
    }
    (sa, sc)
}

/// Pass 2 over one plane: dx = k·(dz − mdz − x̂·mdzx) in place.
#[inline(always)]
fn input_grad_plane(out: &mut [f32], x: &[f32], m: f32, inv: f32, k: f32, mdz: f32, mdzx: f32) {
    for (o, &xv) in out.iter_mut().zip(x) {
        let xh = (xv - m) * inv;
        *o = k * (*o - mdz - xh * mdzx);
    }
}

/// Gradients `(dx, dgamma, dbeta)` of [`forward`]. With `norm.batch` the statistics are this
/// `x`'s own (mean, biased variance) and their dependence on `x` is part of `dx`.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    x: &[f32],
    p: Planes,
    gamma: &[f32],
    beta: &[f32],
    mean: &[f32],
    var: &[f32],
    norm: NormSpec,
    dy: &[f32],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let NormSpec { eps, silu, batch } = norm;
    let mut dx = vec![0.0f32; x.len()];
    let dxp = SharedMut(dx.as_mut_ptr());
    let sums: Vec<(f32, f32)> = (0..p.c)
        .into_par_iter()
        .map(|ch| {
            let inv = (1.0 / (var[ch] as f64 + eps).sqrt()) as f32;
            let (g, bt, m) = (gamma[ch], beta[ch], mean[ch]);
            // Pass 1: dz (the gradient before the affine map) into dx, and its two sums.
            let (mut s_dz, mut s_dzx) = (0.0f64, 0.0f64);
            for b in 0..p.n {
                let r = p.plane(b, ch);
                // SAFETY: channel `ch`'s planes are written by this task only.
                let out = unsafe { std::slice::from_raw_parts_mut(dxp.at(r.start), p.hw) };
                let (a, c) = grad_plane_best(out, &x[r.clone()], &dy[r], m, inv, g, bt, silu);
                s_dz += a as f64;
                s_dzx += c as f64;
            }
            // Pass 2: dx = γ/σ · (dz − mean(dz) − x̂·mean(dz·x̂)).
            let (mdz, mdzx) = if batch { ((s_dz / p.count()) as f32, (s_dzx / p.count()) as f32) } else { (0.0, 0.0) };
            let k = g * inv;
            for b in 0..p.n {
                let r = p.plane(b, ch);
                let out = unsafe { std::slice::from_raw_parts_mut(dxp.at(r.start), p.hw) };
                input_grad_plane_best(out, &x[r], m, inv, k, mdz, mdzx);
            }
            (s_dzx as f32, s_dz as f32)
        })
        .collect();
    let (dgamma, dbeta) = sums.into_iter().unzip();
    (dx, dgamma, dbeta)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The copies compiled for this CPU's SIMD give the baseline build's bits (sums in the same 16
    /// lanes, no fused multiply-adds), on plane lengths around the lane count.
    #[test]
    fn simd_copies_give_the_baseline_bits() {
        let noise = |n: usize, seed: f32| (0..n).map(|i| ((i as f32 + seed) * 0.754_877_7).sin() * 3.0).collect::<Vec<f32>>();
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        for n in [1, 15, 16, 17, 100, 1600] {
            let (x, dy) = (noise(n, 0.5), noise(n, 7.5));
            assert_eq!(lane_sum_best(&x, None).to_bits(), lane_sum(&x, None).to_bits());
            assert_eq!(lane_sum_best(&x, Some(0.3)).to_bits(), lane_sum(&x, Some(0.3)).to_bits());
            // the order of the generic lane sum the statistics used before
            assert_eq!(lane_sum(&x, Some(0.3)).to_bits(), simd::lane_sum(n, |i| (x[i] - 0.3) * (x[i] - 0.3)).to_bits());
            for silu in [false, true] {
                let (mut a, mut b) = (vec![0.0; n], vec![0.0; n]);
                affine_act_best(&mut a, &x, 1.3, -0.2, silu);
                affine_act(&mut b, &x, 1.3, -0.2, silu);
                assert_eq!(bits(&a), bits(&b));
                let sa = grad_plane_best(&mut a, &x, &dy, 0.1, 0.9, 1.2, 0.3, silu);
                let sb = grad_plane(&mut b, &x, &dy, 0.1, 0.9, 1.2, 0.3, silu);
                assert_eq!((bits(&a), sa.0.to_bits(), sa.1.to_bits()), (bits(&b), sb.0.to_bits(), sb.1.to_bits()));
                input_grad_plane_best(&mut a, &x, 0.1, 0.9, 1.1, 0.02, -0.03);
                input_grad_plane(&mut b, &x, 0.1, 0.9, 1.1, 0.02, -0.03);
                assert_eq!(bits(&a), bits(&b));
            }
        }
    }
}
