//! Channel-wise distillation (CWD) on `[rows, len]` f32 buffers: per row a softmax at temperature
//! τ, loss `τ²/rows · Σ KL(p_t ‖ p_s)`, and its gradients, in one pass per row instead of burn's
//! composed log-softmax, exp, product and sum and their backwards.

use rayon::prelude::*;

use super::{simd, SharedMut};

/// Per-row softmax probabilities of `x/τ` and log-probabilities, into `p` and `lp` (one `exp`
/// per element, our vectorisable one; callers run it under [`simd::run`]).
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
            |buf, (sr, tr)| {
                let (ps, rest) = buf.split_at_mut(len);
                let (ls, rest) = rest.split_at_mut(len);
                let (pt, lt) = rest.split_at_mut(len);
                simd::run(|| {
                    log_softmax_row(sr, tau, ps, ls);
                    log_softmax_row(tr, tau, pt, lt);
                    simd::lane_sum(len, |j| pt[j] * (lt[j] - ls[j])) as f64
                })
            },
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
            let (ps, rest) = buf.split_at_mut(len);
            let (ls, rest) = rest.split_at_mut(len);
            let (pt, lt) = rest.split_at_mut(len);
            simd::run(|| {
                log_softmax_row(&s[r * len..][..len], tau, ps, ls);
                log_softmax_row(&t[r * len..][..len], tau, pt, lt);
                // SAFETY: row r of ds and dt is written by this task only; the vectors hold
                // rows·len elements when wanted.
                if want[0] {
                    let d = unsafe { std::slice::from_raw_parts_mut(dsp.at(r * len), len) };
                    d.iter_mut().zip(ps.iter().zip(pt.iter())).for_each(|(o, (&a, &b))| *o = k * (a - b));
                }
                if want[1] {
                    let kl = simd::lane_sum(len, |j| pt[j] * (lt[j] - ls[j]));
                    let d = unsafe { std::slice::from_raw_parts_mut(dtp.at(r * len), len) };
                    d.iter_mut().zip(pt.iter().zip(lt.iter().zip(ls.iter()))).for_each(|(o, (&p, (&a, &b)))| *o = k * p * ((a - b) - kl));
                }
            });
        },
    );
    (ds, dt)
}
