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
//!   both share one pass over the tiles;
//! - where Winograd's form or the direct convolutions apply, the input gradient of a stride-1
//!   "same" convolution runs as that convolution of dY with the flipped, transposed weights.
//!
//! The GEMMs are the `gemm` crate's (runtime-dispatched AVX-512 / AVX2+FMA / portable kernels).
//! Work is split over (image, tile) units with rayon; each GEMM then runs single-threaded.

use std::borrow::Cow;

use gemm::{gemm, Parallelism};
use rayon::prelude::*;

use super::bf16::{self, Arithmetic};
use super::simd::{self, multiversion};
use super::{broadcast, direct, shifted, winograd, SharedMut};

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
    /// The arithmetic of its matrix products (f32, or bf16 under `--amp bf16`).
    pub arith: Arithmetic,
}

/// Target size of one worker's column buffer (floats): 512 Ki floats = 2 MiB (128 Ki to 1 Mi
/// measured with `bench-conv` on a Zen 4: 790, 761, 749 and 792 ms for yolov8n's convolutions).
const TILE_FLOATS: usize = 512 * 1024;

impl ConvGeom {
    pub fn ho(&self) -> usize {
        out_size(self.h, self.kh, self.stride[0], self.pad[0] + self.pad[1], self.dilation[0])
    }
    pub fn wo(&self) -> usize {
        out_size(self.w, self.kw, self.stride[1], self.pad[2] + self.pad[3], self.dilation[1])
    }
    pub(super) fn cig(&self) -> usize {
        self.ci / self.groups
    }
    pub(super) fn cog(&self) -> usize {
        self.co / self.groups
    }
    /// Rows of the per-group column matrix: input channels × kernel taps.
    fn k(&self) -> usize {
        self.cig() * self.kh * self.kw
    }
    /// A 1×1, stride-1, unpadded convolution reads its input planes as the column matrix.
    pub(super) fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == [1, 1] && self.pad == [0; 4]
    }
    pub fn weight_len(&self) -> usize {
        self.co * self.k()
    }
    pub fn out_len(&self) -> usize {
        self.n * self.co * self.ho() * self.wo()
    }
    /// Work units: a band of output rows of one image or, for small maps, several whole images
    /// side by side (so that each GEMM has enough columns to run at full speed).
    pub(super) fn units(&self) -> Vec<Unit> {
        let (ho, wo, p) = (self.ho(), self.wo(), self.ho() * self.wo());
        let per_col = if self.pointwise() { self.cig() } else { self.k() }.max(1);
        let mut units = Vec::new();
        // At least two units per thread, so that every thread has work and the load evens out.
        let want = 2 * rayon::current_num_threads();
        if p > 0 && per_col * p * 2 <= TILE_FLOATS && self.n >= want {
            let nb = (TILE_FLOATS / (per_col * p)).min(self.n / want).max(1);
            let mut b = 0;
            while b < self.n {
                let images = nb.min(self.n - b);
                units.push(Unit { b, images, rows: (0, ho) });
                b += images;
            }
            return units;
        }
        let by_size = TILE_FLOATS / (per_col * wo).max(1);
        let by_threads = (ho * self.n).div_ceil(want);
        let rows = by_size.min(by_threads).clamp(1, ho.max(1));
        // Bands of equal height, as many in all as a multiple of the thread count, so that no
        // thread waits for another at the end.
        let threads = rayon::current_num_threads();
        let bands = (self.n * ho.div_ceil(rows)).next_multiple_of(threads).div_ceil(self.n).max(1);
        let rows = ho.div_ceil(bands).max(1);
        for b in 0..self.n {
            let mut r = 0;
            while r < ho {
                let end = (r + rows).min(ho);
                units.push(Unit { b, images: 1, rows: (r, end) });
                r = end;
            }
        }
        units
    }
}

/// `images` consecutive images from `b`, output rows `rows` of each (all rows when images > 1).
#[derive(Debug, Clone, Copy)]
pub(super) struct Unit {
    pub(super) b: usize,
    pub(super) images: usize,
    pub(super) rows: (usize, usize),
}

impl Unit {
    /// Columns of the unit's column matrix: each image's rows side by side.
    pub(super) fn cols(&self, wo: usize) -> usize {
        self.images * (self.rows.1 - self.rows.0) * wo
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

/// Output columns `[start, end)` of output rows `ox` for which `ox·stride + offset` lies in `0..len`.
fn valid_cols(wo: usize, stride: usize, offset: isize, len: usize) -> (usize, usize) {
    let s = stride as isize;
    let lo = if offset >= 0 { 0 } else { ((-offset + s - 1) / s) as usize };
    let hi_num = len as isize - offset;
    let hi = if hi_num <= 0 { 0 } else { (((hi_num + s - 1) / s) as usize).min(wo) };
    (lo.min(hi), hi)
}

/// Calls `f(offset in col, channel, input row or None, (out_lo, out_hi), x_offset)` for each
/// (channel, tap, output row) of a tile whose column matrix has row stride `ld` and starts at
/// column `base`: the shared index arithmetic of im2col and col2im.
#[inline]
fn for_each_tap_row(
    g: &ConvGeom,
    rows: (usize, usize),
    (ld, base): (usize, usize),
    mut f: impl FnMut(usize, usize, Option<usize>, (usize, usize), isize),
) {
    let wo = g.wo();
    for c in 0..g.cig() {
        for ki in 0..g.kh {
            for kj in 0..g.kw {
                let r = (c * g.kh + ki) * g.kw + kj;
                let x_off = (kj * g.dilation[1]) as isize - g.pad[2] as isize;
                let cols = valid_cols(wo, g.stride[1], x_off, g.w);
                for (t, oy) in (rows.0..rows.1).enumerate() {
                    let iy = (oy * g.stride[0] + ki * g.dilation[0]) as isize - g.pad[0] as isize;
                    let iy = (iy >= 0 && (iy as usize) < g.h).then_some(iy as usize);
                    f(r * ld + base + t * wo, c, iy, cols, x_off);
                }
            }
        }
    }
}

/// Gathers the column matrix `[k, tile]` of output rows `rows` from one group's input `[cig, h, w]`
/// into `col` at (row stride, first column) `place`.
fn im2col(g: &ConvGeom, x: &[f32], rows: (usize, usize), place: (usize, usize), col: &mut [f32]) {
    let same_width = g.stride == [1, 1] && g.dilation == [1, 1] && g.wo() == g.w && g.w > g.pad[2].max(g.pad[3]);
    if same_width {
        im2col_same_width(g, x, rows, place, col)
    } else {
        im2col_gather(g, x, rows, place, col)
    }
}

/// [`im2col`] row by row (any stride, dilation and padding).
fn im2col_gather(g: &ConvGeom, x: &[f32], rows: (usize, usize), place: (usize, usize), col: &mut [f32]) {
    let (wo, sw, plane) = (g.wo(), g.stride[1], g.h * g.w);
    for_each_tap_row(g, rows, place, |at, c, iy, (lo, hi), x_off| {
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
        } else if hi > lo {
            let s0 = (lo as isize * sw as isize + x_off) as usize;
            gather_strided_best(&mut out[lo..hi], &src[s0..], sw);
        }
    });
}

/// Zeroes a few floats: one store for the usual one (a `fill` is a `memset` call).
#[inline(always)]
fn zero(v: &mut [f32]) {
    match v {
        [] => {}
        [one] => *one = 0.0,
        more => more.fill(0.0),
    }
}

/// `out[i] = src[i·stride]` (its own loop: inside the tap-row closure the loop kept its state on
/// the stack), pairs taken whole at stride 2 so that the loop vectorises.
#[inline(always)]
fn gather_strided(out: &mut [f32], src: &[f32], stride: usize) {
    if stride == 2 {
        let pairs = src.chunks_exact(2);
        let last = pairs.remainder().first();
        let n = out.len().min(pairs.len());
        for (o, pair) in out[..n].iter_mut().zip(pairs) {
            *o = pair[0];
        }
        if let (Some(o), Some(&v)) = (out.get_mut(n), last) {
            *o = v;
        }
        return;
    }
    for (o, s) in out.iter_mut().zip(src.chunks(stride)) {
        *o = s[0];
    }
}

/// `dst[i] += src[i]`.
#[inline(always)]
fn add_into(dst: &mut [f32], src: &[f32]) {
    dst.iter_mut().zip(src).for_each(|(d, s)| *d += s);
}

/// `dst[i·stride] += src[i]`.
#[inline(always)]
fn scatter_add(dst: &mut [f32], src: &[f32], stride: usize) {
    dst.iter_mut().step_by(stride).zip(src).for_each(|(d, s)| *d += s);
}

// The row loops of im2col and col2im compiled for this CPU's SIMD: inside their callers' closures
// they ran at the baseline (SSE2), four floats at a time or one.
multiversion! { pub(super) fn gather_strided_best(out: &mut [f32], src: &[f32], stride: usize) = gather_strided; }
multiversion! { fn add_into_best(dst: &mut [f32], src: &[f32]) = add_into; }
multiversion! { fn scatter_add_best(dst: &mut [f32], src: &[f32], stride: usize) = scatter_add; }
multiversion! { fn silu_row_best(row: &mut [f32], bias: f32) = silu_row; }

/// [`im2col`] at stride 1 and dilation 1 with output rows as wide as the input's (and wider than
/// the side padding): each (channel, tap)'s rows of the tile are one shifted copy of consecutive
/// input rows, after which the columns that fall in the padding are zeroed. The same values as
/// the row-by-row gather, which cost a library call per row of 10–160 floats.
fn im2col_same_width(g: &ConvGeom, x: &[f32], rows: (usize, usize), (ld, base): (usize, usize), col: &mut [f32]) {
    let (w, plane, n) = (g.w, g.h * g.w, rows.1 - rows.0);
    for c in 0..g.cig() {
        let src = &x[c * plane..][..plane];
        for ki in 0..g.kh {
            // Tile rows t0..t1 read input rows inside the image: iy = rows.0 + t + ki − pad top.
            let shift = (rows.0 + ki) as isize - g.pad[0] as isize;
            let t0 = (-shift).clamp(0, n as isize) as usize;
            let t1 = (g.h as isize - shift).clamp(t0 as isize, n as isize) as usize;
            let start = (t0 as isize + shift).max(0) as usize * w;
            let len = (t1 - t0) * w;
            for kj in 0..g.kw {
                let r = (c * g.kh + ki) * g.kw + kj;
                let dst = &mut col[r * ld + base..][..n * w];
                dst[..t0 * w].fill(0.0);
                dst[t1 * w..].fill(0.0);
                let valid = &mut dst[t0 * w..t1 * w];
                let x_off = kj as isize - g.pad[2] as isize;
                let a = x_off.unsigned_abs();
                if len == 0 {
                    continue;
                }
                // (Single stores where a = 1: a fill per row was a library call per row.)
                if x_off <= 0 {
                    valid[a..].copy_from_slice(&src[start..start + len - a]);
                    valid.chunks_mut(w).for_each(|row| zero(&mut row[..a]));
                } else {
                    valid[..len - a].copy_from_slice(&src[start + a..start + len]);
                    valid.chunks_mut(w).for_each(|row| zero(&mut row[w - a..]));
                }
            }
        }
    }
}

/// Adds the column matrix `[k, tile]` (at `place` in `col`) back into one group's input gradient
/// `[cig, h, w]`.
fn col2im(g: &ConvGeom, col: &[f32], rows: (usize, usize), place: (usize, usize), dx: &mut [f32]) {
    let (wo, sw, plane) = (g.wo(), g.stride[1], g.h * g.w);
    for_each_tap_row(g, rows, place, |at, c, iy, (lo, hi), x_off| {
        let Some(iy) = iy else { return };
        let src = &col[at..at + wo];
        let dst = &mut dx[c * plane + iy * g.w..][..g.w];
        if sw == 1 {
            let d0 = (lo as isize + x_off) as usize;
            add_into_best(&mut dst[d0..d0 + hi - lo], &src[lo..hi]);
        } else if hi > lo {
            let d0 = (lo as isize * sw as isize + x_off) as usize;
            scatter_add_best(&mut dst[d0..], &src[lo..hi], sw);
        }
    });
}

/// A row-major matrix view: pointer, row stride, column stride.
#[derive(Clone, Copy)]
pub(super) struct Mat(pub(super) *const f32, pub(super) isize, pub(super) isize);

/// `dst[m×n] (+)= lhs[m×k] · rhs[k×n]`, single-threaded.
///
/// # Safety
/// Every view must address valid memory for its extent; `dst` must not alias the inputs.
pub(super) unsafe fn mm(m: usize, n: usize, k: usize, dst: (*mut f32, isize, isize), acc: bool, lhs: Mat, rhs: Mat) {
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

/// Where bf16 arithmetic is not native, a bf16 convolution is the f32 convolution of its operands
/// rounded to bf16 (the same products, exact in f32, and f32 sums; only the order of the sums may
/// differ from a native run): this returns that f32 convolution's geometry.
fn emulated(g: &ConvGeom) -> Option<ConvGeom> {
    (g.arith == Arithmetic::Bf16 && !bf16::native()).then_some(ConvGeom { arith: Arithmetic::F32, ..*g })
}

/// [`mm`] in the convolution's arithmetic.
///
/// # Safety
/// As [`mm`].
#[allow(clippy::too_many_arguments)]
unsafe fn product(g: &ConvGeom, m: usize, n: usize, k: usize, dst: (*mut f32, isize, isize), acc: bool, lhs: Mat, rhs: Mat) {
    match g.arith {
        Arithmetic::F32 => mm(m, n, k, dst, acc, lhs, rhs),
        Arithmetic::Bf16 => bf16::mm(m, n, k, dst, acc, lhs, rhs),
    }
}

/// `y = act(conv(x, weight) + bias)`, act SiLU or identity; `x` is `[n, ci, h, w]`, `weight`
/// `[co, ci/groups, kh, kw]`. Bias and SiLU are applied to each tile while it is in cache.
/// Training's forward: im2col GEMMs, or Winograd's form where it applies.
pub fn forward(g: &ConvGeom, x: &[f32], weight: &[f32], bias: Option<&[f32]>, silu: bool) -> Vec<f32> {
    forward_with(g, x, weight, bias, silu, Form::Training { winograd: super::winograd_enabled() })
}

/// [`forward`] with im2col GEMMs only (the reference of the other forms' unit tests).
pub fn forward_im2col(g: &ConvGeom, x: &[f32], weight: &[f32], bias: Option<&[f32]>, silu: bool) -> Vec<f32> {
    forward_with(g, x, weight, bias, silu, Form::Training { winograd: false })
}

/// [`forward`] for inference, where the convolutions [`winograd`] suits run as Winograd's
/// F(4×4, 3×3) or, on smaller maps, F(2×2, 3×3) (`YOLODISTILL_KERNELS=direct` turns them off),
/// those [`broadcast`] or [`direct`] suits as a direct convolution (on CPUs with AVX2 and without
/// AVX-512; `YOLODISTILL_KERNELS=gemm` turns them off as well) and those [`shifted`] suits as one
/// GEMM per tap.
/// Training keeps im2col where Winograd's form does not apply: the shifted and direct thresholds
/// were measured on batch-1 inference.
pub fn forward_inference(g: &ConvGeom, x: &[f32], weight: &[f32], bias: Option<&[f32]>, silu: bool) -> Vec<f32> {
    forward_with(g, x, weight, bias, silu, Form::Inference { direct: super::direct_enabled(), winograd: if super::winograd_enabled() { Winograd::Large } else { Winograd::Off } })
}

/// [`forward_inference`] without the direct convolutions or Winograd's (the baseline `bench-conv --inference`
/// compares it with).
pub fn forward_inference_gemm(g: &ConvGeom, x: &[f32], weight: &[f32], bias: Option<&[f32]>, silu: bool) -> Vec<f32> {
    forward_with(g, x, weight, bias, silu, Form::Inference { direct: false, winograd: Winograd::Off })
}

/// Which forward runs: training's im2col GEMMs (or Winograd's form), or inference's faster forms
/// where they apply.
#[derive(Clone, Copy)]
enum Form {
    Training { winograd: bool },
    /// `direct`: the direct convolutions where they apply; `winograd`: Winograd's forms where they
    /// apply (before them).
    Inference { direct: bool, winograd: Winograd },
}

/// Which of Winograd's forms a forward may use.
#[derive(Clone, Copy)]
enum Winograd {
    Off,
    /// F(2×2, 3×3): training's forward and input gradient.
    Small,
    /// F(4×4, 3×3) where its larger tiles are enough, else F(2×2, 3×3): inference's forward
    /// (its roundings are larger: `winograd/f4.rs`).
    Large,
}

fn forward_with(g: &ConvGeom, x: &[f32], weight: &[f32], bias: Option<&[f32]>, silu: bool, form: Form) -> Vec<f32> {
    if let Some(f32_geom) = emulated(g) {
        // exact products of the rounded operands, as native bf16 has: not Winograd's transforms
        let form = match form {
            Form::Training { .. } => Form::Training { winograd: false },
            Form::Inference { direct, .. } => Form::Inference { direct, winograd: Winograd::Off },
        };
        return forward_with(&f32_geom, &bf16::rounded(x), &bf16::rounded(weight), bias, silu, form);
    }
    // the direct, shifted and Winograd forms are f32 kernels: native bf16 takes the im2col GEMMs
    let form = if g.arith == Arithmetic::F32 { form } else { Form::Training { winograd: false } };
    if let Form::Inference { winograd: Winograd::Large, .. } = form {
        if winograd::f4::applies(g) {
            return winograd::f4::forward(g, x, weight, bias, silu);
        }
    }
    if let Form::Training { winograd: true } | Form::Inference { winograd: Winograd::Small | Winograd::Large, .. } = form {
        if winograd::applies(g) {
            return winograd::forward(g, x, weight, bias, silu, matches!(form, Form::Inference { .. }));
        }
    }
    if let Form::Inference { direct: true, .. } = form {
        if broadcast::applies(g) {
            return broadcast::forward(g, x, weight, bias, silu);
        }
        if direct::applies(g) {
            return direct::forward(g, x, weight, bias, silu);
        }
    }
    let (wo, p) = (g.wo(), g.ho() * g.wo());
    let (cig, cog, k, plane) = (g.cig(), g.cog(), g.k(), g.h * g.w);
    // Not zero-filled: the units below write every element (through raw pointers only) before
    // `set_len`, so no reference to an unwritten element is ever made.
    let mut y: Vec<f32> = Vec::with_capacity(g.out_len());
    let yp = SharedMut(y.as_mut_ptr());
    let by_tap = (matches!(form, Form::Inference { .. }) && shifted::applies(g)).then(|| shifted::weights_by_tap(g, weight));
    g.units().into_par_iter().for_each(|u| with_scratch(|Scratch { col, dyt: out, .. }| {
        let (p0, tile, cols) = (u.rows.0 * wo, (u.rows.1 - u.rows.0) * wo, u.cols(wo));
        for gi in 0..g.groups {
            let xg = |b: usize| &x[(b * g.ci + gi * cig) * plane..][..cig * plane];
            let w = Mat(weight[gi * cog * k..].as_ptr(), k as isize, 1);
            let bias_of = |o: usize| bias.map_or(0.0, |b| b[gi * cog + o]);
            let y_at = |b: usize, o: usize| (b * g.co + gi * cog + o) * p;
            // SAFETY: units write disjoint (image, row range) blocks of y; views stay in bounds.
            unsafe {
                if let (1, Some(wt)) = (u.images, &by_tap) {
                    let wt = &wt[gi * cog * k..][..cog * k];
                    let rows = u.rows.1 - u.rows.0;
                    let wq = shifted::band(g, xg(u.b), wt, (u.rows.0, rows), col, out);
                    for o in 0..cog {
                        for t in 0..rows {
                            let dst = std::slice::from_raw_parts_mut(yp.at(y_at(u.b, o) + p0 + t * wo), wo);
                            dst.copy_from_slice(&out[(o * rows + t) * wq..][..wo]);
                            if bias.is_some() || silu {
                                epilogue(dst, bias_of(o), silu);
                            }
                        }
                    }
                } else if u.images == 1 {
                    let rhs = if g.pointwise() {
                        Mat(xg(u.b)[p0..].as_ptr(), p as isize, 1)
                    } else {
                        col.resize(k * tile, 0.0);
                        im2col(g, xg(u.b), u.rows, (tile, 0), col);
                        Mat(col.as_ptr(), tile as isize, 1)
                    };
                    let dst = yp.at(y_at(u.b, 0) + p0);
                    product(g, cog, tile, k, (dst, p as isize, 1), false, w, rhs);
                    if bias.is_some() || silu {
                        for o in 0..cog {
                            epilogue(std::slice::from_raw_parts_mut(dst.add(o * p), tile), bias_of(o), silu);
                        }
                    }
                } else {
                    // Several small images: one GEMM over all their columns, then scattered to y.
                    col.resize(k * cols, 0.0);
                    for i in 0..u.images {
                        im2col(g, xg(u.b + i), u.rows, (cols, i * p), col);
                    }
                    out.resize(cog * cols, 0.0);
                    product(g, cog, cols, k, (out.as_mut_ptr(), cols as isize, 1), false, w, Mat(col.as_ptr(), cols as isize, 1));
                    store_images(out, (u, p), |i, o| yp.at(y_at(u.b + i, o)), (bias.map(|_| bias_of), silu));
                }
            }
        }
    }));
    // SAFETY: the units cover every (image, channel, output pixel) and have all been written.
    unsafe { y.set_len(g.out_len()) };
    y
}

/// Copies the GEMM output `out` (`[cog, images · p]`, the unit's images side by side) to each
/// image's planes at `dst(image, channel)`, with bias and activation.
///
/// # Safety
/// Every `dst(i, o)` must be valid for `p` writes that no other thread makes.
pub(super) unsafe fn store_images(out: &[f32], (u, p): (Unit, usize), dst: impl Fn(usize, usize) -> *mut f32, (bias_of, silu): (Option<impl Fn(usize) -> f32>, bool)) {
    let cols = u.images * p;
    for i in 0..u.images {
        for (o, row) in out.chunks_exact(cols).enumerate() {
            let dst = dst(i, o);
            std::ptr::copy_nonoverlapping(row[i * p..][..p].as_ptr(), dst, p);
            if bias_of.is_some() || silu {
                epilogue(std::slice::from_raw_parts_mut(dst, p), bias_of.as_ref().map_or(0.0, |b| b(o)), silu);
            }
        }
    }
}

/// `v = act(v + bias)` over one output row.
pub(super) fn epilogue(row: &mut [f32], bias: f32, silu: bool) {
    if silu {
        silu_row_best(row, bias);
    } else {
        row.iter_mut().for_each(|v| *v += bias);
    }
}

/// `v = SiLU(v + bias)` with fused multiply-adds (0.7× the time of separate ones on yolov8n's
/// GEMM outputs): the same roundings on every CPU, only slower on one without FMA.
#[inline(always)]
fn silu_row(row: &mut [f32], bias: f32) {
    row.iter_mut().for_each(|v| *v = simd::silu_fma(*v + bias));
}

/// The input and weight gradients, each where asked for.
pub type Gradients = (Option<Vec<f32>>, Option<Vec<f32>>);

/// Gradients of `conv(x, weight)` for `x` and/or `weight` given the output gradient `dy`.
pub fn backward(
    g: &ConvGeom,
    x: &[f32],
    weight: &[f32],
    dy: &[f32],
    want_dx: bool,
    want_dw: bool,
) -> Gradients {
    if let Some(f32_geom) = emulated(g) {
        // dX = Wᵀ·dY reads W and dW = dY·colᵀ reads x: each is rounded only when its product runs
        let x = if want_dw { Cow::Owned(bf16::rounded(x)) } else { Cow::Borrowed(x) };
        let w = if want_dx { Cow::Owned(bf16::rounded(weight)) } else { Cow::Borrowed(weight) };
        // exact products of the rounded operands, as native bf16 has: not Winograd's transforms
        return backward_with(&f32_geom, &x, &w, &bf16::rounded(dy), (want_dx, want_dw), false);
    }
    backward_with(g, x, weight, dy, (want_dx, want_dw), super::winograd_enabled())
}

/// [`backward`] in f32: the input gradient as a direct (or, with `winograd`, Winograd's)
/// convolution where one applies, im2col for the rest.
fn backward_with(g: &ConvGeom, x: &[f32], weight: &[f32], dy: &[f32], (want_dx, want_dw): (bool, bool), winograd: bool) -> Gradients {
    if let Some(dx) = want_dx.then(|| input_grad_as_convolution(g, weight, dy, winograd)).flatten() {
        return (Some(dx), want_dw.then(|| backward_by_columns(g, x, weight, dy, false, true).1).flatten());
    }
    backward_by_columns(g, x, weight, dy, want_dx, want_dw)
}

/// [`backward`] over im2col columns: `dW += dY·colᵀ` and `dcol = Wᵀ·dY` scattered into dX by
/// col2im, in one pass over the units.
fn backward_by_columns(g: &ConvGeom, x: &[f32], weight: &[f32], dy: &[f32], want_dx: bool, want_dw: bool) -> Gradients {
    let mut dx = want_dx.then(|| vec![0.0f32; x.len()]);
    let dxp = SharedMut(dx.as_mut().map_or(std::ptr::null_mut(), |v| v.as_mut_ptr()));
    let wlen = if want_dw { g.weight_len() } else { 0 };
    // Units of one image run in order on one worker (their col2im halos overlap); images, and
    // groups of whole images, in parallel.
    let units = g.units();
    let by_image: Vec<&[Unit]> = units.chunk_by(|a, b| a.b == b.b).collect();
    let dw = by_image
        .into_par_iter()
        .fold(
            || vec![0.0f32; wlen],
            |mut dw, image_units| {
                for &u in image_units {
                    for gi in 0..g.groups {
                        // SAFETY: this worker alone writes the unit's images of dx.
                        with_scratch(|s| unsafe { backward_unit(g, (x, weight, dy), u, gi, (dxp, want_dx), (&mut dw, want_dw), s) });
                    }
                }
                dw
            },
        )
        .reduce(
            || vec![0.0f32; wlen],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
                a
            },
        );
    (dx, want_dw.then_some(dw))
}

/// The input gradient of a stride-1 "same" convolution is itself a "same" convolution: of dY with
/// the weights flipped and their input and output channels swapped. Where Winograd's form (with
/// `winograd`) or a direct form applies to that convolution, it runs there (no `Wᵀ·dY` columns, no
/// col2im); `None` elsewhere.
fn input_grad_as_convolution(g: &ConvGeom, weight: &[f32], dy: &[f32], winograd: bool) -> Option<Vec<f32>> {
    let t = ConvGeom { ci: g.co, co: g.ci, h: g.ho(), w: g.wo(), ..*g };
    let same = g.stride == [1, 1] && broadcast::shape_fits(g);
    let form = Form::Inference { direct: super::direct_enabled(), winograd: if winograd { Winograd::Small } else { Winograd::Off } };
    let fits = (winograd && winograd::applies(&t)) || (super::direct_enabled() && (broadcast::applies(&t) || direct::applies(&t)));
    let eligible = g.arith == Arithmetic::F32 && same && fits;
    eligible.then(|| forward_with(&t, dy, &flipped_transpose(g, weight), None, false, form))
}

/// `weight` (`[co, cig, kh, kw]`) as `[ci, cog, kh, kw]`, each kernel turned by 180°: the weights
/// of the convolution that maps dY to dX.
fn flipped_transpose(g: &ConvGeom, weight: &[f32]) -> Vec<f32> {
    let (cig, cog, taps) = (g.cig(), g.cog(), g.kh * g.kw);
    let mut out = vec![0.0f32; weight.len()];
    for gi in 0..g.groups {
        for o in 0..cog {
            for c in 0..cig {
                let src = &weight[((gi * cog + o) * cig + c) * taps..][..taps];
                let dst = &mut out[((gi * cig + c) * cog + o) * taps..][..taps];
                dst.iter_mut().zip(src.iter().rev()).for_each(|(d, s)| *d = *s);
            }
        }
    }
    out
}

/// A worker's reusable buffers: columns of x, their gradient, and gathered output gradients (or
/// the forward's GEMM output). Kept per thread across calls, so they are allocated and zeroed once.
#[derive(Default)]
pub(super) struct Scratch {
    pub(super) col: Vec<f32>,
    dcol: Vec<f32>,
    pub(super) dyt: Vec<f32>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

/// Runs `f` with this thread's scratch buffers. `f` must not start rayon work: a task stolen
/// meanwhile on this thread would find the buffers borrowed.
pub(super) fn with_scratch<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
    SCRATCH.with(|s| f(&mut s.borrow_mut()))
}

/// One unit and group of [`backward`]: dW_g += dY·colᵀ and dcol = Wᵀ·dY scattered into dx.
///
/// # Safety
/// No other worker may write the unit's images of `dx` meanwhile.
#[allow(clippy::too_many_arguments)]
unsafe fn backward_unit(
    g: &ConvGeom,
    (x, weight, dy): (&[f32], &[f32], &[f32]),
    u: Unit,
    gi: usize,
    (dxp, want_dx): (SharedMut, bool),
    (dw, want_dw): (&mut [f32], bool),
    s: &mut Scratch,
) {
    let (wo, p) = (g.wo(), g.ho() * g.wo());
    let (cig, cog, k, plane) = (g.cig(), g.cog(), g.k(), g.h * g.w);
    let (p0, tile, cols) = (u.rows.0 * wo, (u.rows.1 - u.rows.0) * wo, u.cols(wo));
    let xg = |b: usize| &x[(b * g.ci + gi * cig) * plane..][..cig * plane];
    let dy_at = |b: usize| (b * g.co + gi * cog) * p;
    let single = u.images == 1;
    let direct = single && g.pointwise();
    let dyg = if single {
        Mat(dy[dy_at(u.b) + p0..].as_ptr(), p as isize, 1)
    } else {
        // Several small images: their output gradients side by side, as the columns are.
        s.dyt.resize(cog * cols, 0.0);
        for i in 0..u.images {
            for o in 0..cog {
                s.dyt[o * cols + i * p..][..p].copy_from_slice(&dy[dy_at(u.b + i) + o * p..][..p]);
            }
        }
        Mat(s.dyt.as_ptr(), cols as isize, 1)
    };
    if want_dw {
        // dW_g[cog, k] += dY_g[cog, cols] · col[k, cols]ᵀ
        let colt = if direct {
            Mat(xg(u.b)[p0..].as_ptr(), 1, p as isize)
        } else {
            s.col.resize(k * cols, 0.0);
            for i in 0..u.images {
                im2col(g, xg(u.b + i), u.rows, (cols, i * tile), &mut s.col);
            }
            Mat(s.col.as_ptr(), 1, cols as isize)
        };
        product(g, cog, k, cols, (dw[gi * cog * k..].as_mut_ptr(), k as isize, 1), true, dyg, colt);
    }
    if want_dx {
        let wt = Mat(weight[gi * cog * k..].as_ptr(), 1, k as isize); // Wᵀ[k, cog]
        let dx_of = |b: usize| dxp.at((b * g.ci + gi * cig) * plane);
        if direct {
            product(g, k, tile, cog, (dx_of(u.b).add(p0), p as isize, 1), false, wt, dyg);
        } else {
            s.dcol.resize(k * cols, 0.0);
            product(g, k, cols, cog, (s.dcol.as_mut_ptr(), cols as isize, 1), false, wt, dyg);
            for i in 0..u.images {
                let dx_img = std::slice::from_raw_parts_mut(dx_of(u.b + i), cig * plane);
                col2im(g, &s.dcol, u.rows, (cols, i * tile), dx_img);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The input gradient as a direct convolution of dY equals col2im's, where the direct forms
    /// apply (AVX2 CPUs without AVX-512): 3×3 and 5×5, the broadcast (≥ 32 output channels, rows
    /// ≥ 40 wide) and the direct tile, groups, several images.
    #[test]
    fn input_gradient_as_a_direct_convolution_is_col2ims() {
        if !(simd::has_avx2_fma() && !simd::has_avx512() && super::super::direct_enabled()) {
            return;
        }
        let geom = |n: usize, ci: usize, h: usize, w: usize, co: usize, k: usize, groups: usize| ConvGeom {
            n, ci, h, w, co, kh: k, kw: k, stride: [1, 1], pad: [k / 2; 4], dilation: [1, 1], groups, arith: Default::default(),
        };
        let cases = [geom(2, 20, 9, 45, 40, 3, 1), geom(1, 16, 8, 41, 64, 3, 2), geom(1, 8, 12, 44, 40, 5, 1), geom(2, 6, 11, 13, 24, 3, 1)];
        for g in cases {
            let values = |len: usize, seed: usize| (0..len).map(|i| (((i * 7919 + seed * 104_729) % 1000) as f32 / 500.0) - 1.0).collect::<Vec<f32>>();
            let (x, weight, dy) = (values(g.n * g.ci * g.h * g.w, 1), values(g.weight_len(), 2), values(g.out_len(), 3));
            let direct = input_grad_as_convolution(&g, &weight, &dy, false).unwrap_or_else(|| panic!("no direct form for {g:?}"));
            let columns = backward_by_columns(&g, &x, &weight, &dy, true, false).0.unwrap();
            let worst = direct.iter().zip(&columns).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            let scale = columns.iter().fold(1.0f32, |m, v| m.max(v.abs()));
            assert!(worst <= 1e-5 * scale, "{g:?}: max difference {worst} (scale {scale})");
        }
    }

    /// The shifted-copy im2col writes exactly the row-by-row gather's values: 3×3 and 5×5 "same"
    /// kernels, padding all on one side, one-row-wide images, tiles that start and end inside the
    /// image or reach past it, and a column matrix with other images' columns beside the tile.
    #[test]
    fn same_width_im2col_is_the_gather_bit_for_bit() {
        let geom = |ci: usize, h: usize, w: usize, k: usize, pad: [usize; 4]| ConvGeom {
            n: 1, ci, h, w, co: 1, kh: k, kw: k, stride: [1, 1], pad, dilation: [1, 1], groups: 1, arith: Default::default(),
        };
        let cases = [
            (geom(3, 9, 7, 3, [1; 4]), (0, 9)),
            (geom(3, 9, 7, 3, [1; 4]), (2, 5)),
            (geom(2, 6, 5, 5, [2; 4]), (1, 6)),
            (geom(2, 6, 5, 3, [0, 2, 2, 0]), (0, 4)),
            (geom(2, 6, 5, 3, [2, 0, 0, 2]), (3, 6)),
            (geom(1, 4, 2, 3, [1; 4]), (0, 4)),
        ];
        for (g, rows) in cases {
            assert_eq!(g.wo(), g.w, "{g:?}");
            let x: Vec<f32> = (0..g.ci * g.h * g.w).map(|i| i as f32 + 1.0).collect();
            let tile = (rows.1 - rows.0) * g.wo();
            let (ld, base) = (3 * tile + 2, tile + 1);
            let mut fast = vec![f32::NAN; g.k() * ld];
            let mut gather = fast.clone();
            im2col_same_width(&g, &x, rows, (ld, base), &mut fast);
            im2col_gather(&g, &x, rows, (ld, base), &mut gather);
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&fast), bits(&gather), "{g:?} rows {rows:?}");
        }
    }
}
