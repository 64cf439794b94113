//! Inference-only elementwise kernels of the forward's tail: SPPF's max pooling and the head's
//! decoding (DFL expectation, score sigmoid). burn-flex runs these with a generic 3-D pooling that
//! also tracks indices and a scalar `exp`; `perf` put them at 8% of yolov8n's forward at 640.

use rayon::prelude::*;

use super::simd::{self, multiversion};
use super::SharedMut;

/// SPPF's `n` chained `k×k` max poolings (stride 1, padding `k / 2` that never wins, as burn's),
/// each of the previous one's result: `[b, c, h, w]` planes in, `[b, n·c, h, w]` out, the n
/// results side by side along the channels as SPPF concatenates them. One task runs all n on a
/// group of planes while they are in L1 (a pass per pooling over 20×20 planes cost more in task
/// scheduling than in comparisons); each pooling takes rows first, then columns.
pub fn max_pool_chain(x: &[f32], (b, c, h, w): (usize, usize, usize, usize), k: usize, n: usize) -> Vec<f32> {
    let plane = h * w;
    let mut y: Vec<f32> = vec![0.0; n * x.len()];
    if plane == 0 || n == 0 {
        return y;
    }
    let yp = SharedMut(y.as_mut_ptr());
    let per_task = (POOL_TASK_FLOATS / plane).max(1);
    (0..b * c).step_by(per_task).collect::<Vec<_>>().into_par_iter().for_each(|first| {
        let (mut rows, mut padded) = (vec![0.0f32; plane], vec![f32::NEG_INFINITY; w + k - 1]);
        for i in first..(first + per_task).min(b * c) {
            let (bi, ci) = (i / c, i % c);
            let mut src = &x[i * plane..][..plane];
            for j in 0..n {
                // SAFETY: plane (bi, j, ci) of y is this task's alone, and within y.
                let dst = unsafe { std::slice::from_raw_parts_mut(yp.at(((bi * n + j) * c + ci) * plane), plane) };
                max_pool_plane(src, dst, (h, w), k, (&mut rows, &mut padded));
                src = dst;
            }
        }
    });
    y
}

/// Planes per task of [`max_pool_chain`], in floats.
const POOL_TASK_FLOATS: usize = 16 * 1024;

/// One `k×k` pooling of an `h × w` plane; `padded` holds `w + k − 1` floats whose ends stay −∞.
fn max_pool_plane(src: &[f32], dst: &mut [f32], (h, w): (usize, usize), k: usize, (rows, padded): (&mut [f32], &mut [f32])) {
    let r = k / 2;
    for (out, row) in rows.chunks_mut(w).zip(src.chunks(w)) {
        padded[r..r + w].copy_from_slice(row);
        out.copy_from_slice(&padded[..w]);
        for j in 1..k {
            out.iter_mut().zip(&padded[j..j + w]).for_each(|(o, &v)| *o = o.max(v));
        }
    }
    for (i, out) in dst.chunks_mut(w).enumerate() {
        out.copy_from_slice(&rows[i.saturating_sub(r) * w..][..w]);
        for j in i.saturating_sub(r) + 1..(i + r + 1).min(h) {
            out.iter_mut().zip(&rows[j * w..][..w]).for_each(|(o, &v)| *o = o.max(v));
        }
    }
}

/// The head's decoded inference output `[b, 4 + nc, a]` in one pass: rows 0–3 the boxes (DFL
/// expectation of `boxes` `[b, 4·bins, a]`, or the distances themselves with one bin, about the
/// anchor centres `anchors`, in pixels by `strides`; xywh or xyxy), rows 4 on the sigmoid of
/// `scores` `[b, nc, a]`. The same arithmetic as the head's tensor ops, without their
/// intermediate tensors and final concatenation.
pub fn decode(boxes: &[f32], scores: &[f32], (b, bins, nc, a): (usize, usize, usize, usize), (anchors, strides): (&[[f32; 2]], &[f32]), xywh: bool) -> Vec<f32> {
    let rows = 4 + nc;
    let mut out = vec![0.0f32; b * rows * a];
    if a == 0 {
        return out;
    }
    // a task per output row: a side's distances or a class's scores
    out.par_chunks_mut(a).enumerate().for_each(|(i, dst)| {
        let (image, row) = (i / rows, i % rows);
        match row {
            0..4 if bins == 1 => dst.copy_from_slice(&boxes[(image * 4 + row) * a..][..a]),
            0..4 => dfl_side_best(&boxes[(image * 4 + row) * bins * a..][..bins * a], dst),
            _ => {
                dst.copy_from_slice(&scores[(image * nc + row - 4) * a..][..a]);
                sigmoid_in_place_best(dst);
            }
        }
    });
    for image in out.chunks_mut(rows * a) {
        to_boxes(&mut image[..4 * a], (anchors, strides), xywh);
    }
    out
}

/// Distances (l, t, r, b) rows `[4, a]` in grid units → boxes in pixels, in place.
fn to_boxes(d: &mut [f32], (anchors, strides): (&[[f32; 2]], &[f32]), xywh: bool) {
    let a = d.len() / 4;
    let (l, rest) = d.split_at_mut(a);
    let (t, rest) = rest.split_at_mut(a);
    let (r, bottom) = rest.split_at_mut(a);
    for i in 0..a {
        let ([ax, ay], s) = (anchors[i], strides[i]);
        let (x1, y1, x2, y2) = (ax - l[i], ay - t[i], ax + r[i], ay + bottom[i]);
        let v = if xywh { [(x1 + x2) / 2.0, (y1 + y2) / 2.0, x2 - x1, y2 - y1] } else { [x1, y1, x2, y2] };
        (l[i], t[i], r[i], bottom[i]) = (v[0] * s, v[1] * s, v[2] * s, v[3] * s);
    }
}

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
