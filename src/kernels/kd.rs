//! Channel-wise distillation (CWD) on `[rows, len]` f32 buffers: per row a softmax at temperature
//! τ, loss `τ²/rows · Σ KL(p_t ‖ p_s)`, and its gradients, in one pass per row instead of burn's
//! composed log-softmax, exp, product and sum and their backwards.

use rayon::prelude::*;

use super::simd::{self, multiversion};
use super::SharedMut;

/// Per-row softmax probabilities of `x/τ` and log-probabilities, into `p` and `lp` (one `exp`
/// per element, our vectorisable one; callers are compiled for this CPU's SIMD by `multiversion!`).
#[inline(always)]
fn log_softmax_row(x: &[f32], tau: f32, p: &mut [f32], lp: &mut [f32]) {
    let inv = 1.0 / tau;
    let mut top = [f32::NEG_INFINITY; simd::LANES];
    let chunks = x.chunks_exact(simd::LANES);
    let tail = chunks.remainder().iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    for c in chunks {
        top.iter_mut().zip(c).for_each(|(t, &v)| *t = t.max(v));
    }
    let max = top.iter().fold(tail, |m, &v| m.max(v)) * inv;
    for ((l, q), &v) in lp.iter_mut().zip(p.iter_mut()).zip(x) {
        *l = v * inv - max;
        *q = simd::exp(*l);
    }
    let sum = simd::lane_sum(p.len(), |i| p[i]);
    let (lse, scale) = (sum.ln(), 1.0 / sum);
    p.iter_mut().for_each(|q| *q *= scale);
    lp.iter_mut().for_each(|l| *l -= lse);
}

/// `τ²/rows · Σ_rows Σ_j p_t(j)·(log p_t(j) − log p_s(j))`.
pub fn loss(s: &[f32], t: &[f32], len: usize, tau: f32) -> f32 {
    let rows = s.len() / len.max(1);
    let total: f64 = s
        .par_chunks(len)
        .zip(t.par_chunks(len))
        .map_init(
            || vec![0.0f32; 4 * len],
            |buf, (sr, tr)| row_loss_best(sr, tr, tau, buf) as f64,
        )
        .sum();
    (total * (tau * tau) as f64 / rows.max(1) as f64) as f32
}

/// Gradients of [`loss`] times `upstream`, for the student (`ds`) and the teacher (`dt`) maps:
/// ds = g·τ/rows·(p_s − p_t), dt = g·τ/rows·p_t·((log p_t − log p_s) − Σ p_t·(log p_t − log p_s)).
/// A map whose gradient is not wanted gets an empty vector.
pub fn grads(s: &[f32], t: &[f32], len: usize, tau: f32, upstream: f32, want: [bool; 2]) -> (Vec<f32>, Vec<f32>) {
    let rows = s.len() / len.max(1);
    let k = upstream * tau / rows.max(1) as f32;
    let mut ds = vec![0.0f32; if want[0] { s.len() } else { 0 }];
    let mut dt = vec![0.0f32; if want[1] { t.len() } else { 0 }];
    let (dsp, dtp) = (SharedMut(ds.as_mut_ptr()), SharedMut(dt.as_mut_ptr()));
    (0..rows).into_par_iter().for_each_init(
        || vec![0.0f32; 4 * len],
        |buf, r| {
            // SAFETY: row r of ds and dt is written by this task only; the vectors hold rows·len
            // elements when wanted.
            let row = |p: SharedMut, want: bool| want.then(|| unsafe { std::slice::from_raw_parts_mut(p.at(r * len), len) });
            row_grads_best(&s[r * len..][..len], &t[r * len..][..len], (tau, k), buf, row(dsp, want[0]), row(dtp, want[1]));
        },
    );
    (ds, dt)
}

/// Splits a `4·len` buffer into the student's and the teacher's probabilities and
/// log-probabilities of one row.
#[inline(always)]
fn row_buffers(buf: &mut [f32], len: usize) -> [&mut [f32]; 4] {
    let (ps, rest) = buf.split_at_mut(len);
    let (ls, rest) = rest.split_at_mut(len);
    let (pt, lt) = rest.split_at_mut(len);
    [ps, ls, pt, &mut lt[..len]]
}

/// One row's `Σ_j p_t(j)·(log p_t(j) − log p_s(j))`.
#[inline(always)]
fn row_loss(s: &[f32], t: &[f32], tau: f32, buf: &mut [f32]) -> f32 {
    let len = s.len();
    let [ps, ls, pt, lt] = row_buffers(buf, len);
    log_softmax_row(s, tau, ps, ls);
    log_softmax_row(t, tau, pt, lt);
    simd::lane_sum(len, |j| pt[j] * (lt[j] - ls[j]))
}

/// One row of [`grads`] (`k` = upstream·τ/rows) into `ds` and `dt` where given.
#[inline(always)]
fn row_grads(s: &[f32], t: &[f32], (tau, k): (f32, f32), buf: &mut [f32], ds: Option<&mut [f32]>, dt: Option<&mut [f32]>) {
    let len = s.len();
    let [ps, ls, pt, lt] = row_buffers(buf, len);
    log_softmax_row(s, tau, ps, ls);
    log_softmax_row(t, tau, pt, lt);
    if let Some(d) = ds {
        d.iter_mut().zip(ps.iter().zip(pt.iter())).for_each(|(o, (&a, &b))| *o = k * (a - b));
    }
    if let Some(d) = dt {
        let kl = simd::lane_sum(len, |j| pt[j] * (lt[j] - ls[j]));
        d.iter_mut().zip(pt.iter().zip(lt.iter().zip(ls.iter()))).for_each(|(o, (&p, (&a, &b)))| *o = k * p * ((a - b) - kl));
    }
}

multiversion! { fn row_loss_best(s: &[f32], t: &[f32], tau: f32, buf: &mut [f32]) -> f32 = row_loss; }
multiversion! {
    fn row_grads_best(s: &[f32], t: &[f32], tk: (f32, f32), buf: &mut [f32], ds: Option<&mut [f32]>, dt: Option<&mut [f32]>) = row_grads;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rows compiled for this CPU's SIMD give the baseline build's bits.
    #[test]
    fn simd_rows_give_the_baseline_bits() {
        let noise = |n: usize, seed: f32| (0..n).map(|i| ((i as f32 + seed) * 0.754_877_7).sin() * 4.0).collect::<Vec<f32>>();
        for len in [1, 15, 16, 17, 400] {
            let (s, t) = (noise(len, 0.5), noise(len, 9.5));
            let (mut a, mut b) = (vec![0.0; 4 * len], vec![0.0; 4 * len]);
            assert_eq!(row_loss_best(&s, &t, 2.0, &mut a).to_bits(), row_loss(&s, &t, 2.0, &mut b).to_bits());
            let (mut ds_a, mut dt_a, mut ds_b, mut dt_b) = (vec![0.0; len], vec![0.0; len], vec![0.0; len], vec![0.0; len]);
            row_grads_best(&s, &t, (2.0, 0.3), &mut a, Some(&mut ds_a), Some(&mut dt_a));
            row_grads(&s, &t, (2.0, 0.3), &mut b, Some(&mut ds_b), Some(&mut dt_b));
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!((bits(&ds_a), bits(&dt_a)), (bits(&ds_b), bits(&dt_b)));
        }
    }
}
