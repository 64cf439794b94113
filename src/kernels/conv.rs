//! 2-D convolution on contiguous NCHW `f32` buffers, forward and both backwards.
//!
//! Why not burn-flex's convolution: it converts every input to channels-last and back, builds a
//! full im2col matrix, computes the input gradient as a transposed convolution (a scatter) and the
//! weight gradient as a convolution of swapped tensors. Here the layout stays NCHW throughout:
//! - a 1×1 stride-1 convolution is one GEMM straight on the input planes, no copy;
//! - other convolutions gather a tile of output rows into a cache-sized column buffer (im2col per
//!   tile, reused by each worker) and multiply it in place into the output;
//! - the input gradient is `Wᵀ·dY` per tile followed by the column-to-image accumulation (a gather
//!   of the same tile), the weight gradient `dY·colᵀ` accumulates per worker over its images, and
//!   both share one pass over the tiles.
//!
//! The GEMMs are the `gemm` crate's (runtime-dispatched AVX-512 / AVX2+FMA / portable kernels).
//! Work is split over (image, tile) units with rayon; each GEMM then runs single-threaded.

use gemm::{gemm, Parallelism};
use rayon::prelude::*;

use super::simd;

/// Shape and options of one convolution; `pad` is (top, bottom, left, right).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeom {
    pub n: usize,
    pub ci: usize,
    pub h: usize,
    pub w: usize,
    pub co: usize,
    pub kh: usize,
    pub kw: usize,
    pub stride: [usize; 2],
    pub pad: [usize; 4],
    pub dilation: [usize; 2],
    pub groups: usize,
}

/// Target size of one worker's column buffer (floats): 128 Ki floats = 512 KiB, within L2.
const TILE_FLOATS: usize = 128 * 1024;

impl ConvGeom {
    pub fn ho(&self) -> usize {
        out_size(self.h, self.kh, self.stride[0], self.pad[0] + self.pad[1], self.dilation[0])
    }
    pub fn wo(&self) -> usize {
        out_size(self.w, self.kw, self.stride[1], self.pad[2] + self.pad[3], self.dilation[1])
    }
    fn cig(&self) -> usize {
        self.ci / self.groups
    }
    fn cog(&self) -> usize {
        self.co / self.groups
    }
    /// Rows of the per-group column matrix: input channels × kernel taps.
    fn k(&self) -> usize {
        self.cig() * self.kh * self.kw
    }
    /// A 1×1, stride-1, unpadded convolution reads its input planes as the column matrix.
    fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == [1, 1] && self.pad == [0; 4]
    }
    pub fn weight_len(&self) -> usize {
        self.co * self.k()
    }
    pub fn out_len(&self) -> usize {
        self.n * self.co * self.ho() * self.wo()
    }
    /// (image, first output row, end output row) work units.
    fn units(&self) -> Vec<(usize, usize, usize)> {
        let (ho, wo) = (self.ho(), self.wo());
        let per_row = if self.pointwise() { self.cig().max(1) * wo } else { self.k() * wo };
        let rows = (TILE_FLOATS / per_row.max(1)).clamp(1, ho.max(1));
        let mut units = Vec::new();
        for b in 0..self.n {
            let mut r = 0;
            while r < ho {
                let end = (r + rows).min(ho);
                units.push((b, r, end));
                r = end;
            }
        }
        units
    }
}

fn out_size(size: usize, k: usize, stride: usize, pad: usize, dilation: usize) -> usize {
    let span = dilation * (k - 1) + 1;
    if size + pad < span {
        0
    } else {
        (size + pad - span) / stride + 1
    }
}

/// A raw pointer shared by workers that write disjoint parts of one buffer.
#[derive(Clone, Copy)]
struct SharedMut(*mut f32);
unsafe impl Send for SharedMut {}
unsafe impl Sync for SharedMut {}

/// Output columns `[start, end)` of output rows `ox` for which `ox·stride + offset` lies in `0..len`.
fn valid_cols(wo: usize, stride: usize, offset: isize, len: usize) -> (usize, usize) {
    let s = stride as isize;
    let lo = if offset >= 0 { 0 } else { ((-offset + s - 1) / s) as usize };
    let hi_num = len as isize - offset;
    let hi = if hi_num <= 0 { 0 } else { (((hi_num + s - 1) / s) as usize).min(wo) };
    (lo.min(hi), hi)
}

/// Calls `f(row_of_col, input_plane_row_index or None, out_lo, out_hi, x_offset)` for each
/// (channel, tap, output row) of a tile: the shared index arithmetic of im2col and col2im.
#[inline]
fn for_each_tap_row(
    g: &ConvGeom,
    rows: (usize, usize),
    mut f: impl FnMut(usize, usize, Option<usize>, (usize, usize), isize),
) {
    let (wo, tile) = (g.wo(), (rows.1 - rows.0) * g.wo());
    for c in 0..g.cig() {
        for ki in 0..g.kh {
            for kj in 0..g.kw {
                let r = (c * g.kh + ki) * g.kw + kj;
                let x_off = (kj * g.dilation[1]) as isize - g.pad[2] as isize;
                let cols = valid_cols(wo, g.stride[1], x_off, g.w);
                for (t, oy) in (rows.0..rows.1).enumerate() {
                    let iy = (oy * g.stride[0] + ki * g.dilation[0]) as isize - g.pad[0] as isize;
                    let iy = (iy >= 0 && (iy as usize) < g.h).then_some(iy as usize);
                    f(r * tile + t * wo, c, iy, cols, x_off);
                }
            }
        }
    }
}

/// Gathers the column matrix `[k, tile]` of output rows `rows` from one group's input `[cig, h, w]`.
fn im2col(g: &ConvGeom, x: &[f32], rows: (usize, usize), col: &mut [f32]) {
    let (wo, sw, plane) = (g.wo(), g.stride[1], g.h * g.w);
    for_each_tap_row(g, rows, |at, c, iy, (lo, hi), x_off| {
        let out = &mut col[at..at + wo];
        let Some(iy) = iy else {
            out.fill(0.0);
            return;
        };
        out[..lo].fill(0.0);
        out[hi..].fill(0.0);
        let src = &x[c * plane + iy * g.w..][..g.w];
        if sw == 1 {
            let s0 = (lo as isize + x_off) as usize;
            out[lo..hi].copy_from_slice(&src[s0..s0 + hi - lo]);
        } else {
            for (ox, o) in out.iter_mut().enumerate().take(hi).skip(lo) {
                *o = src[(ox as isize * sw as isize + x_off) as usize];
            }
        }
    });
}

/// Adds the column matrix `[k, tile]` back into one group's input gradient `[cig, h, w]`.
fn col2im(g: &ConvGeom, col: &[f32], rows: (usize, usize), dx: &mut [f32]) {
    let (wo, sw, plane) = (g.wo(), g.stride[1], g.h * g.w);
    for_each_tap_row(g, rows, |at, c, iy, (lo, hi), x_off| {
        let Some(iy) = iy else { return };
        let src = &col[at..at + wo];
        let dst = &mut dx[c * plane + iy * g.w..][..g.w];
        if sw == 1 {
            let d0 = (lo as isize + x_off) as usize;
            for (d, s) in dst[d0..d0 + hi - lo].iter_mut().zip(&src[lo..hi]) {
                *d += s;
            }
        } else {
            for (ox, s) in src.iter().enumerate().take(hi).skip(lo) {
                dst[(ox as isize * sw as isize + x_off) as usize] += s;
            }
        }
    });
}

/// A row-major matrix view: pointer, row stride, column stride.
#[derive(Clone, Copy)]
struct Mat(*const f32, isize, isize);

/// `dst[m×n] (+)= lhs[m×k] · rhs[k×n]`, single-threaded.
///
/// # Safety
/// Every view must address valid memory for its extent; `dst` must not alias the inputs.
unsafe fn mm(m: usize, n: usize, k: usize, dst: (*mut f32, isize, isize), acc: bool, lhs: Mat, rhs: Mat) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !acc {
            for i in 0..m {
                for j in 0..n {
                    *dst.0.offset(i as isize * dst.1 + j as isize * dst.2) = 0.0;
                }
            }
        }
        return;
    }
    gemm(
        m,
        n,
        k,
        dst.0,
        dst.2,
        dst.1,
        acc,
        lhs.0,
        lhs.2,
        lhs.1,
        rhs.0,
        rhs.2,
        rhs.1,
        if acc { 1.0 } else { 0.0 },
        1.0,
        false,
        false,
        false,
        Parallelism::None,
    );
}

/// `y = act(conv(x, weight) + bias)`, act SiLU or identity; `x` is `[n, ci, h, w]`, `weight`
/// `[co, ci/groups, kh, kw]`. Bias and SiLU are applied to each tile while it is in cache.
pub fn forward(g: &ConvGeom, x: &[f32], weight: &[f32], bias: Option<&[f32]>, silu: bool) -> Vec<f32> {
    let (ho, wo) = (g.ho(), g.wo());
    let p = ho * wo;
    let (cig, cog, k) = (g.cig(), g.cog(), g.k());
    let mut y = vec![0.0f32; g.out_len()];
    let yp = SharedMut(y.as_mut_ptr());
    let pointwise = g.pointwise();
    g.units().into_par_iter().for_each_init(Vec::new, |col: &mut Vec<f32>, (b, r0, r1)| {
        let yp = yp;
        let (p0, tile) = (r0 * wo, (r1 - r0) * wo);
        for gi in 0..g.groups {
            let xg = &x[(b * g.ci + gi * cig) * g.h * g.w..][..cig * g.h * g.w];
            let rhs = if pointwise {
                Mat(xg[p0..].as_ptr(), p as isize, 1)
            } else {
                col.resize(k * tile, 0.0);
                im2col(g, xg, (r0, r1), col);
                Mat(col.as_ptr(), tile as isize, 1)
            };
            // SAFETY: units write disjoint (image, row range) blocks of y; views stay in bounds.
            unsafe {
                let dst = yp.0.add((b * g.co + gi * cog) * p + p0);
                mm(cog, tile, k, (dst, p as isize, 1), false, Mat(weight[gi * cog * k..].as_ptr(), k as isize, 1), rhs);
                if bias.is_some() || silu {
                    for o in 0..cog {
                        let row = std::slice::from_raw_parts_mut(dst.add(o * p), tile);
                        epilogue(row, bias.map_or(0.0, |b| b[gi * cog + o]), silu);
                    }
                }
            }
        }
    });
    y
}

/// `v = act(v + bias)` over one output row.
fn epilogue(row: &mut [f32], bias: f32, silu: bool) {
    if silu {
        simd::run(|| row.iter_mut().for_each(|v| *v = silu_of(*v + bias)));
    } else {
        row.iter_mut().for_each(|v| *v += bias);
    }
}

#[inline(always)]
fn silu_of(z: f32) -> f32 {
    z * simd::sigmoid(z)
}

/// Gradients of `conv(x, weight)` for `x` and/or `weight` given the output gradient `dy`.
pub fn backward(
    g: &ConvGeom,
    x: &[f32],
    weight: &[f32],
    dy: &[f32],
    want_dx: bool,
    want_dw: bool,
) -> (Option<Vec<f32>>, Option<Vec<f32>>) {
    let (ho, wo) = (g.ho(), g.wo());
    let p = ho * wo;
    let (cig, cog, k) = (g.cig(), g.cog(), g.k());
    let plane = g.h * g.w;
    let pointwise = g.pointwise();
    let mut dx = want_dx.then(|| vec![0.0f32; x.len()]);
    let dxp = SharedMut(dx.as_mut().map_or(std::ptr::null_mut(), |v| v.as_mut_ptr()));
    let wlen = if want_dw { g.weight_len() } else { 0 };

    // Units of one image run in order on one worker (their col2im halos overlap); images in parallel.
    let units = g.units();
    let by_image: Vec<&[(usize, usize, usize)]> = units.chunk_by(|a, b| a.0 == b.0).collect();
    let dw = by_image
        .into_par_iter()
        .fold(
            || (vec![0.0f32; wlen], Vec::new(), Vec::new()),
            |(mut dw, mut col, mut dcol), image_units| {
                let dxp = dxp;
                for &(b, r0, r1) in image_units {
                    let (p0, tile) = (r0 * wo, (r1 - r0) * wo);
                    for gi in 0..g.groups {
                        let xg = &x[(b * g.ci + gi * cig) * plane..][..cig * plane];
                        let dyg = Mat(dy[(b * g.co + gi * cog) * p + p0..].as_ptr(), p as isize, 1);
                        let wg = &weight[gi * cog * k..][..cog * k];
                        // SAFETY: this worker alone writes image b of dx; views stay in bounds.
                        unsafe {
                            if want_dw {
                                // dW_g[cog, k] += dY_g[cog, tile] · col[k, tile]ᵀ
                                let colt = if pointwise {
                                    Mat(xg[p0..].as_ptr(), 1, p as isize)
                                } else {
                                    col.resize(k * tile, 0.0);
                                    im2col(g, xg, (r0, r1), &mut col);
                                    Mat(col.as_ptr(), 1, tile as isize)
                                };
                                let dst = dw[gi * cog * k..].as_mut_ptr();
                                mm(cog, k, tile, (dst, k as isize, 1), true, dyg, colt);
                            }
                            if want_dx {
                                let wt = Mat(wg.as_ptr(), 1, k as isize); // Wᵀ[k, cog]
                                let dxg = dxp.0.add((b * g.ci + gi * cig) * plane);
                                if pointwise {
                                    mm(k, tile, cog, (dxg.add(p0), p as isize, 1), false, wt, dyg);
                                } else {
                                    dcol.resize(k * tile, 0.0);
                                    mm(k, tile, cog, (dcol.as_mut_ptr(), tile as isize, 1), false, wt, dyg);
                                    let dx_img = std::slice::from_raw_parts_mut(dxg, cig * plane);
                                    col2im(g, &dcol, (r0, r1), dx_img);
                                }
                            }
                        }
                    }
                }
                (dw, col, dcol)
            },
        )
        .map(|(dw, _, _)| dw)
        .reduce(
            || vec![0.0f32; wlen],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
                a
            },
        );
    (dx, want_dw.then_some(dw))
}
