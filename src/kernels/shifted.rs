//! The inference forward of a k×k convolution as k² GEMMs over shifted views of one padded input
//! patch (implicit GEMM), instead of one GEMM over an im2col matrix that holds every input value
//! k² times (`perf` put im2col at 11% of yolov8n's forward at 640). Here the patch is written once.
//!
//! The patch holds a band of input rows, zero-padded, split into stride phases: for stride s,
//! phase (a, b) keeps padded rows ≡ a and columns ≡ b (mod s), so that every tap reads its phase
//! with unit stride. Output pixel (t, x) of the band, tap (i, j) reads phase (i mod s, j mod s) at
//! row t + i / s, column x + j / s. Seen flat, a tap is then one matrix `[channels, rows · wq]`
//! whose columns are consecutive: the GEMM also computes `wq − wo` spare columns per row (reading
//! the next row's start, or one spare zero row at the end), which the epilogue skips.

use super::conv::{mm, ConvGeom, Mat};

/// Most input channels per group for the shifted form, by stride 1 and larger. With more, im2col
/// is a small share of the GEMM's time and k² shorter GEMMs cost more than it saves; strided
/// convolutions gain more, as their im2col gathers element by element (`bench-conv` on a Zen 4,
/// yolov8n at 640, batch 1). With fewer than `MIN_CHANNELS`, each tap's GEMM is too short to pay
/// for accumulating into the output k² times.
const MAX_CHANNELS: [usize; 2] = [32, 64];
const MIN_CHANNELS: usize = 8;

/// Whether the forward of `g` runs as shifted GEMMs: dilation 1, a kernel larger than 1×1,
/// a channel count in range, and few spare columns.
pub(super) fn applies(g: &ConvGeom) -> bool {
    let spare_ok = 4 * phase_width(g) <= 5 * g.wo().max(1);
    let most = MAX_CHANNELS[usize::from(g.stride != [1, 1])];
    let channels_ok = (MIN_CHANNELS..=most).contains(&g.cig());
    g.dilation == [1, 1] && g.kh * g.kw > 1 && channels_ok && g.wo() > 0 && spare_ok
}

/// Columns of one phase row: the padded width over the column stride, rounded up.
fn phase_width(g: &ConvGeom) -> usize {
    (g.w + g.pad[2] + g.pad[3]).div_ceil(g.stride[1])
}

/// Rows of one phase for a band of `rows` output rows: the taps' reach plus one spare row.
fn phase_rows(g: &ConvGeom, rows: usize) -> usize {
    rows + (g.kh - 1) / g.stride[0] + 1
}

/// The weights as `[groups][tap][cog][cig]`: one contiguous `[cog, cig]` matrix per tap.
pub(super) fn weights_by_tap(g: &ConvGeom, weight: &[f32]) -> Vec<f32> {
    let (taps, cog, cig) = (g.kh * g.kw, g.cog(), g.cig());
    let mut out = vec![0.0f32; weight.len()];
    for gi in 0..g.groups {
        for tap in 0..taps {
            for o in 0..cog {
                let dst = &mut out[((gi * taps + tap) * cog + o) * cig..][..cig];
                let src = &weight[(gi * cog + o) * cig * taps..];
                for (c, d) in dst.iter_mut().enumerate() {
                    *d = src[c * taps + tap];
                }
            }
        }
    }
    out
}

/// Writes the phase-split, zero-padded patch of output rows `r0..r0 + rows` of one group's input
/// `x` (`[cig, h, w]`) into `patch`.
fn fill_patch(g: &ConvGeom, x: &[f32], r0: usize, rows: usize, patch: &mut Vec<f32>) {
    let [sh, sw] = g.stride;
    let (wq, rq, cig) = (phase_width(g), phase_rows(g, rows), g.cig());
    let plane = rq * wq;
    patch.resize(sh * sw * cig * plane, 0.0);
    for a in 0..sh {
        for c in 0..cig {
            for q in 0..rq {
                let iy = ((r0 + q) * sh + a) as isize - g.pad[0] as isize;
                let src = (iy >= 0 && (iy as usize) < g.h).then(|| &x[(c * g.h + iy as usize) * g.w..][..g.w]);
                for b in 0..sw {
                    let dst = &mut patch[((a * sw + b) * cig + c) * plane + q * wq..][..wq];
                    match src {
                        Some(src) => phase_row(src, g.pad[2], sw, b, dst),
                        None => dst.fill(0.0),
                    }
                }
            }
        }
    }
}

/// `dst[x] = src[x·stride + phase − pad]`, zero outside `src`.
pub(super) fn phase_row(src: &[f32], pad: usize, stride: usize, phase: usize, dst: &mut [f32]) {
    let offset = phase as isize - pad as isize;
    let s = stride as isize;
    // dst[lo..hi] reads inside src.
    let lo = if offset >= 0 { 0 } else { ((-offset + s - 1) / s) as usize }.min(dst.len());
    let end = src.len() as isize - offset;
    let hi = if end <= 0 { 0 } else { (((end + s - 1) / s) as usize).min(dst.len()) }.max(lo);
    dst[..lo].fill(0.0);
    dst[hi..].fill(0.0);
    let first = (lo as isize * s + offset) as usize;
    if stride == 1 {
        dst[lo..hi].copy_from_slice(&src[first..first + hi - lo]);
    } else {
        super::conv::gather_strided_best(&mut dst[lo..hi], &src[first..], stride);
    }
}

/// `out[cog, rows · wq] = Σ_taps W_tap · shifted patch` for output rows `r0..r0 + rows` of one
/// group's input `x`; returns the row stride `wq` of `out` (its first `wo` columns per row are the
/// output). `wt` is this group's `[tap][cog][cig]` weights.
pub(super) fn band(g: &ConvGeom, x: &[f32], wt: &[f32], (r0, rows): (usize, usize), patch: &mut Vec<f32>, out: &mut Vec<f32>) -> usize {
    let [sh, sw] = g.stride;
    let (wq, rq, cig, cog) = (phase_width(g), phase_rows(g, rows), g.cig(), g.cog());
    fill_patch(g, x, r0, rows, patch);
    let cols = rows * wq;
    out.resize(cog * cols, 0.0);
    for i in 0..g.kh {
        for j in 0..g.kw {
            let tap = i * g.kw + j;
            let phase = ((i % sh) * sw + j % sw) * cig * rq * wq;
            let shifted = &patch[phase + (i / sh) * wq + j / sw..];
            // SAFETY: the view's last element, channel cig − 1 at column cols − 1, lies within
            // the phase's plane thanks to its spare row; out holds cog × cols.
            unsafe {
                mm(
                    cog,
                    cols,
                    cig,
                    (out.as_mut_ptr(), cols as isize, 1),
                    tap > 0,
                    Mat(wt[tap * cog * cig..].as_ptr(), cig as isize, 1),
                    Mat(shifted.as_ptr(), (rq * wq) as isize, 1),
                );
            }
        }
    }
    wq
}
