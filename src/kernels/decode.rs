//! Inference-only elementwise kernels of the forward's tail: SPPF's max pooling and the head's
//! decoding (DFL expectation, score sigmoid). burn-flex runs these with a generic 3-D pooling that
//! also tracks indices and a scalar `exp`; `perf` put them at 8% of yolov8n's forward at 640.

use rayon::prelude::*;

use super::simd::{self, multiversion};

/// `k×k` max pooling, stride 1, padding `k / 2` that never wins (as burn's), over planes of
/// `h × w`; rows first, then columns, so each element costs about 2k comparisons.
pub fn max_pool_same(x: &[f32], (h, w): (usize, usize), k: usize) -> Vec<f32> {
    let r = k / 2;
    let plane = h * w;
    let mut y = vec![0.0f32; x.len()];
    if plane == 0 {
        return y;
    }
    // `rows`: the row maxima of one plane, a buffer per worker.
    y.par_chunks_mut(plane).zip(x.par_chunks(plane)).for_each_init(|| vec![0.0f32; plane], |rows, (out, src)| {
        for (dst, row) in rows.chunks_mut(w).zip(src.chunks(w)) {
            for (i, d) in dst.iter_mut().enumerate() {
                *d = row[i.saturating_sub(r)..(i + r + 1).min(w)].iter().copied().fold(f32::NEG_INFINITY, f32::max);
            }
        }
        for (i, dst) in out.chunks_mut(w).enumerate() {
            dst.copy_from_slice(&rows[i.saturating_sub(r) * w..][..w]);
            for j in i.saturating_sub(r) + 1..(i + r + 1).min(h) {
                dst.iter_mut().zip(&rows[j * w..][..w]).for_each(|(d, &v)| *d = d.max(v));
            }
        }
    });
    y
}

/// `1 / (1 + e^−x)` elementwise, in chunks over the threads (the head's 80 × 8400 scores at 640).
pub fn sigmoid(x: &[f32]) -> Vec<f32> {
    let mut y = x.to_vec();
    y.par_chunks_mut(SIGMOID_CHUNK).for_each(sigmoid_in_place_best);
    y
}

/// Floats per task of [`sigmoid`].
const SIGMOID_CHUNK: usize = 32 * 1024;

#[inline(always)]
fn sigmoid_in_place(v: &mut [f32]) {
    v.iter_mut().for_each(|v| *v = simd::sigmoid(*v));
}

multiversion! { fn sigmoid_in_place_best(v: &mut [f32]) = sigmoid_in_place; }

/// DFL expectation: `boxes` `[b, 4·bins, a]` → `[b, 4, a]`, per (image, side, anchor) the softmax
/// over the bins dotted with 0, 1, …, bins − 1.
pub fn dfl(boxes: &[f32], (b, bins, a): (usize, usize, usize)) -> Vec<f32> {
    let mut out = vec![0.0f32; b * 4 * a];
    out.par_chunks_mut(a).enumerate().for_each(|(side, dst)| {
        dfl_side_best(&boxes[side * bins * a..][..bins * a], dst);
    });
    out
}

/// One (image, side) of [`dfl`]: `src` `[bins, a]` → `dst` `[a]`.
#[inline(always)]
fn dfl_side(src: &[f32], dst: &mut [f32]) {
    let a = dst.len();
    let mut top = vec![f32::NEG_INFINITY; a];
    for bin in src.chunks(a) {
        top.iter_mut().zip(bin).for_each(|(t, &v)| *t = t.max(v));
    }
    let mut sum = vec![0.0f32; a];
    dst.fill(0.0);
    for (i, bin) in src.chunks(a).enumerate() {
        for (((d, s), &t), &v) in dst.iter_mut().zip(sum.iter_mut()).zip(&top).zip(bin) {
            let e = simd::exp(v - t);
            *s += e;
            *d += e * i as f32;
        }
    }
    dst.iter_mut().zip(&sum).for_each(|(d, s)| *d /= s);
}

multiversion! { fn dfl_side_best(src: &[f32], dst: &mut [f32]) = dfl_side; }

#[cfg(test)]
mod tests {
    use super::*;

    /// The DFL side compiled for this CPU's SIMD gives the baseline build's bits.
    #[test]
    fn simd_dfl_gives_the_baseline_bits() {
        for a in [1, 7, 16, 8400] {
            let src: Vec<f32> = (0..16 * a).map(|i| ((i as f32 + 0.5) * 0.754_877_7).sin() * 6.0).collect();
            let (mut x, mut y) = (vec![0.0; a], vec![0.0; a]);
            dfl_side_best(&src, &mut x);
            dfl_side(&src, &mut y);
            assert_eq!(x.iter().map(|f| f.to_bits()).collect::<Vec<_>>(), y.iter().map(|f| f.to_bits()).collect::<Vec<_>>());
        }
    }
}
