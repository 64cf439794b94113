//! The forward of 3×3, stride-1 "same" convolutions (inference and training, and training's input
//! gradient, itself such a convolution) by Winograd's minimal filtering F(2×2, 3×3): each 2×2
//! block of outputs comes from a 4×4 block of inputs with 16 products per (input, output) channel
//! pair instead of 36, so the GEMMs do 2.25× fewer multiply-adds.
//!
//! With B, G and A the transforms of F(2, 3), per output channel o and 2×2 tile t:
//! `Y[o, t] = Aᵀ (Σ_c U[o, c] ⊙ V[c, t]) A` where `U = G w Gᵀ` (4×4, once per call) and
//! `V = Bᵀ d B` (the tile's 4×4 input block d). Element k of the 4×4 products, over all channel
//! pairs and a block of tiles, is one GEMM: `M_k[co × T] = U_k[co × ci] · V_k[ci × T]`.
//!
//! A worker takes a band of tile rows of one image: it transforms the band's inputs into V (split
//! into even and odd columns first, so that every transform is a run of contiguous, vectorised
//! adds over the tiles of a row), runs the 16 GEMMs, and transforms M back into output rows with
//! bias and SiLU applied while they are in cache.
//!
//! The sums run in another order than im2col's, and the transforms add a few roundings: outputs
//! differ from im2col's by a few units in the last place of the largest term (unit test).
//!
//! Inference's forward runs the larger tiles of F(4×4, 3×3) on maps of at least 32×32 ([`f4`]).

use std::cell::RefCell;

use rayon::prelude::*;

use super::conv::{epilogue, mm, ConvGeom, Mat};
use super::simd::multiversion;
use super::{Arithmetic, SharedMut};

pub(super) mod f4;
mod filters;

/// Fewest input and output channels, and fewest tiles in a call: below them the transforms and
/// small GEMMs cost more than the products save (a 10×10 map of one image, 25 tiles, ran 0.6–0.9×
/// im2col's speed; 20×20, 100 tiles, 1.06–1.22×; `bench-conv --inference`).
const MIN_CHANNELS: usize = 16;
const MIN_TILES: usize = 64;
/// Floats of one worker's transformed inputs (V, 16 or 36 × ci × tiles): about a core's L2 (512 KiB).
const BLOCK_FLOATS: usize = 128 * 1024;

/// Whether the product uses this form for `g`: a shape it [`computes`], with at least
/// [`MIN_CHANNELS`] channels each way and [`MIN_TILES`] tiles.
pub(super) fn applies(g: &ConvGeom) -> bool {
    let tiles = g.n * g.h.div_ceil(2) * g.w.div_ceil(2);
    computes(g) && g.ci >= MIN_CHANNELS && g.co >= MIN_CHANNELS && tiles >= MIN_TILES
}

/// The convolutions this form computes: 3×3, stride 1, padding 1, no dilation, one group, f32
/// products.
fn computes(g: &ConvGeom) -> bool {
    g.kh == 3 && g.kw == 3 && g.stride == [1, 1] && g.pad == [1; 4] && g.dilation == [1, 1] && g.groups == 1 && g.arith == Arithmetic::F32
}

/// `y = act(conv(x, weight) + bias)` for a convolution this form [`computes`]; `keep_filters`
/// (inference) keeps the transformed filters for later calls with the same weights ([`filters`]).
pub(super) fn forward(g: &ConvGeom, x: &[f32], weight: &[f32], bias: Option<&[f32]>, silu: bool, keep_filters: bool) -> Vec<f32> {
    forward_by(g, (x, weight, bias, silu), (2, 16, keep_filters), filter_rows, run_band)
}

/// A band's transforms, products and inverse transforms (see [`run_band`]).
type BandFn = unsafe fn(&ConvGeom, &[f32], &[f32], Option<&[f32]>, bool, Band, SharedMut, &mut Scratch);

/// The frame both forms share: the filter transform (`elems` elements per kernel, from
/// `filter_rows`; kept across calls with `keep`), then the bands of tiles of `size` outputs each
/// way, in parallel.
fn forward_by(g: &ConvGeom, (x, weight, bias, silu): (&[f32], &[f32], Option<&[f32]>, bool), (size, elems, keep): (usize, usize, bool), filter_rows: fn(&[f32], &mut [f32]), run_band: BandFn) -> Vec<f32> {
    assert!(computes(g), "Winograd convolution called for {g:?}");
    let transform = || filter_transform(g, weight, elems, filter_rows);
    let u = if keep { filters::transformed(weight, elems, transform) } else { std::sync::Arc::new(transform()) };
    let mut y: Vec<f32> = Vec::with_capacity(g.out_len());
    let yp = SharedMut(y.as_mut_ptr());
    bands(g, size, elems).into_par_iter().for_each(|band| {
        SCRATCH.with(|s| {
            // SAFETY: bands write disjoint (image, row range) blocks of y.
            unsafe { run_band(g, x, &u, bias, silu, band, yp, &mut s.borrow_mut()) }
        })
    });
    // SAFETY: the bands cover every (image, channel, output pixel) and have all been written.
    unsafe { y.set_len(g.out_len()) };
    y
}

/// One image's tile rows `rows.0..rows.1`.
#[derive(Clone, Copy)]
struct Band {
    b: usize,
    rows: (usize, usize),
}

/// Bands of tile rows of about [`BLOCK_FLOATS`] transformed inputs each, as many in all as a
/// multiple of the thread count and of equal height (so that no thread waits at the end).
/// `size`: a tile's outputs each way (2 or 4), `elems` the transformed elements per tile (16 or 36).
fn bands(g: &ConvGeom, size: usize, elems: usize) -> Vec<Band> {
    let (th, tw) = (g.h.div_ceil(size), g.w.div_ceil(size));
    let by_size = (BLOCK_FLOATS / (elems * g.ci * tw)).max(1);
    let threads = rayon::current_num_threads();
    let per_image = (g.n * th.div_ceil(by_size)).next_multiple_of(threads).div_ceil(g.n);
    let rows = th.div_ceil(per_image.min(th)).max(1);
    (0..g.n).flat_map(|b| (0..th).step_by(rows).map(move |r| Band { b, rows: (r, (r + rows).min(th)) })).collect()
}

/// A worker's buffers, kept across calls.
#[derive(Default)]
struct Scratch {
    /// Transformed inputs: 16 (F(4×4): 36) × ci × tiles.
    v: Vec<f32>,
    /// Products: 16 (36) × co × tiles.
    m: Vec<f32>,
    /// Rows split into column phases, and the transforms' intermediate rows.
    rows: Vec<f32>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// `U_k[o, c]`: `G w Gᵀ` of each 3×3 kernel, `elems` of them per kernel from `filter_rows` (one
/// output channel's kernels as `[ci][elems]`), laid out as `elems` matrices `co × ci` (rows that the
/// GEMMs read contiguously: a strided view made their packing slower than the transform).
fn filter_transform(g: &ConvGeom, weight: &[f32], elems: usize, filter_rows: fn(&[f32], &mut [f32])) -> Vec<f32> {
    let (co, ci) = (g.co, g.ci);
    let mut u: Vec<f32> = Vec::with_capacity(elems * co * ci);
    let up = SharedMut(u.as_mut_ptr());
    weight.par_chunks(9 * ci).enumerate().for_each(|(o, w)| {
        let mut row = vec![0.0f32; elems * ci];
        filter_rows(w, &mut row);
        for k in 0..elems {
            // SAFETY: each output channel o writes its own row of each of the matrices.
            let dst = unsafe { std::slice::from_raw_parts_mut(up.at((k * co + o) * ci), ci) };
            dst.iter_mut().zip(row[k..].iter().step_by(elems)).for_each(|(d, v)| *d = *v);
        }
    });
    // SAFETY: every (k, o) row has been written.
    unsafe { u.set_len(elems * co * ci) };
    u
}

multiversion! {
    /// [`filter_transform`] of one output channel's kernels, as `[ci][16]`.
    fn filter_rows(w: &[f32], u: &mut [f32]) = filter_rows_body;
}

#[inline(always)]
fn filter_rows_body(w: &[f32], u: &mut [f32]) {
    for (w, u) in w.chunks_exact(9).zip(u.chunks_exact_mut(16)) {
        // G w: 4 × 3, then (G w) Gᵀ: 4 × 4
        let mut gw = [[0.0f32; 3]; 4];
        for j in 0..3 {
            let (a, b, d) = (w[j], w[3 + j], w[6 + j]);
            gw[0][j] = a;
            gw[1][j] = 0.5 * (a + b + d);
            gw[2][j] = 0.5 * (a - b + d);
            gw[3][j] = d;
        }
        for (i, r) in gw.iter().enumerate() {
            let row = [r[0], 0.5 * (r[0] + r[1] + r[2]), 0.5 * (r[0] - r[1] + r[2]), r[2]];
            u[4 * i..4 * i + 4].copy_from_slice(&row);
        }
    }
}

/// Transforms, products and inverse transforms of one band.
///
/// # Safety
/// No other worker may write the band's rows of `y` meanwhile.
#[allow(clippy::too_many_arguments)]
unsafe fn run_band(g: &ConvGeom, x: &[f32], u: &[f32], bias: Option<&[f32]>, silu: bool, band: Band, yp: SharedMut, s: &mut Scratch) {
    let (ci, co, h, w) = (g.ci, g.co, g.h, g.w);
    let tw = w.div_ceil(2);
    let tiles = (band.rows.1 - band.rows.0) * tw;
    s.v.resize(16 * ci * tiles, 0.0);
    s.m.resize(16 * co * tiles, 0.0);
    let plane = h * w;
    // the split input rows: 2·rows + 2 of them, each as e and o of n = tw + 1 floats
    let (n, split_rows) = (tw + 1, 2 * (band.rows.1 - band.rows.0) + 2);
    s.rows.resize(2 * split_rows * n, 0.0);
    for c in 0..ci {
        let xc = &x[(band.b * ci + c) * plane..][..plane];
        split_band(xc, (h, w), band.rows, &mut s.rows);
        for ty in band.rows.0..band.rows.1 {
            let at = c * tiles + (ty - band.rows.0) * tw;
            input_tile_row(&s.rows, 2 * (ty - band.rows.0), n, s.v[at..].as_mut_ptr(), ci * tiles);
        }
    }
    for k in 0..16 {
        let dst = (s.m[k * co * tiles..].as_mut_ptr(), tiles as isize, 1);
        mm(co, tiles, ci, dst, false, Mat(u[k * co * ci..].as_ptr(), ci as isize, 1), Mat(s.v[k * ci * tiles..].as_ptr(), tiles as isize, 1));
    }
    let y_plane = yp.at(band.b * co * plane);
    s.rows.resize(4 * tiles, 0.0);
    for o in 0..co {
        let bias_o = bias.map_or(0.0, |b| b[o]);
        output_tiles(&s.m[o * tiles..], co * tiles, tiles, &mut s.rows);
        let q = |i: usize| &s.rows[i * tiles..][..tiles];
        for ty in band.rows.0..band.rows.1 {
            let at = (ty - band.rows.0) * tw;
            let rows = std::slice::from_raw_parts_mut(y_plane.add(o * plane + 2 * ty * w), w * (h - 2 * ty).min(2));
            for (r, row) in rows.chunks_exact_mut(w).enumerate() {
                interleave(&q(2 * r)[at..at + tw], &q(2 * r + 1)[at..at + tw], row);
                epilogue(row, bias_o, silu);
            }
        }
    }
}

multiversion! {
    /// Splits the input rows a band reads (`2·r0 − 1` to `2·r1`, zero outside the image) into the
    /// even and odd columns of the padded row, `n = ⌈w/2⌉ + 1` each: `e[m] = x[2m − 1]`,
    /// `o[m] = x[2m]`, so that tile tx reads `e[tx], o[tx], e[tx + 1], o[tx + 1]`.
    fn split_band(xc: &[f32], hw: (usize, usize), rows: (usize, usize), out: &mut [f32]) = split_band_body;
}

#[inline(always)]
fn split_band_body(xc: &[f32], (h, w): (usize, usize), (r0, r1): (usize, usize), out: &mut [f32]) {
    let n = w.div_ceil(2) + 1;
    for (i, pair) in out[..2 * n * (2 * (r1 - r0) + 2)].chunks_exact_mut(2 * n).enumerate() {
        let (e, o) = pair.split_at_mut(n);
        let Some(row) = (2 * r0 + i).checked_sub(1).filter(|&r| r < h).map(|r| &xc[r * w..][..w]) else {
            e.fill(0.0);
            o.fill(0.0);
            continue;
        };
        e[0] = 0.0;
        o[0] = row[0];
        let pairs = (w - 1) / 2;
        let (src, ed, od) = (&row[1..1 + 2 * pairs], &mut e[1..1 + pairs], &mut o[1..1 + pairs]);
        deinterleave(src, ed, od);
        // the padded row's last columns: x[w − 1] when w is even, then zeros
        for m in pairs + 1..n {
            e[m] = 0.0;
            o[m] = 0.0;
        }
        if w % 2 == 0 {
            e[w / 2] = row[w - 1];
        }
    }
}

/// `e[m] = src[2m]`, `o[m] = src[2m + 1]`: with AVX2 shuffles where the CPU has them (LLVM left
/// the loop scalar, 3.5% of the forward's time).
fn deinterleave(src: &[f32], e: &mut [f32], o: &mut [f32]) {
    assert!(src.len() == 2 * e.len() && e.len() == o.len());
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if super::simd::has_avx2_fma() {
        // SAFETY: the CPU has AVX2; the lengths are checked above.
        done = unsafe { deinterleave_avx2(src, e, o) };
    }
    for m in done..e.len() {
        e[m] = src[2 * m];
        o[m] = src[2 * m + 1];
    }
}

/// [`deinterleave`] of whole blocks of 8 pairs; returns how many pairs it wrote.
///
/// # Safety
/// The CPU must have AVX2; `src` must hold `2 · e.len()` floats and `o` as many as `e`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn deinterleave_avx2(src: &[f32], e: &mut [f32], o: &mut [f32]) -> usize {
    use std::arch::x86_64::*;
    let blocks = e.len() / 8;
    for i in 0..blocks {
        let a = _mm256_loadu_ps(src.as_ptr().add(16 * i));
        let b = _mm256_loadu_ps(src.as_ptr().add(16 * i + 8));
        // per 128-bit lane: (a0 a2 b0 b2), (a1 a3 b1 b3); then the 64-bit quarters in order
        let even = _mm256_permute4x64_pd::<0xD8>(_mm256_castps_pd(_mm256_shuffle_ps::<0x88>(a, b)));
        let odd = _mm256_permute4x64_pd::<0xD8>(_mm256_castps_pd(_mm256_shuffle_ps::<0xDD>(a, b)));
        _mm256_storeu_ps(e.as_mut_ptr().add(8 * i), _mm256_castpd_ps(even));
        _mm256_storeu_ps(o.as_mut_ptr().add(8 * i), _mm256_castpd_ps(odd));
    }
    8 * blocks
}

multiversion! {
    /// `V = Bᵀ d B` of every tile of one tile row of one channel, from its four split input rows
    /// (from row `first` of `split`), written at `v[k · stride + tx]`.
    fn input_tile_row(split: &[f32], first: usize, n: usize, v: *mut f32, stride: usize) = input_tile_row_body;
}

#[inline(always)]
fn input_tile_row_body(split: &[f32], first: usize, n: usize, v: *mut f32, stride: usize) {
    let part = |i: usize, odd: usize| &split[(2 * (first + i) + odd) * n..][..n];
    let tw = n - 1;
    for i in 0..4 {
        // Bᵀ over rows (d0 − d2, d1 + d2, d2 − d1, d1 − d3), then B over columns (c0 − c2,
        // c1 + c2, c2 − c1, c1 − c3 with c = e[tx], o[tx], e[tx + 1], o[tx + 1]).
        let (a, b, sign) = match i {
            0 => (0, 2, -1.0f32),
            1 => (1, 2, 1.0),
            2 => (2, 1, -1.0),
            _ => (1, 3, -1.0),
        };
        let (ea, eb, oa, ob) = (part(a, 0), part(b, 0), part(a, 1), part(b, 1));
        // SAFETY: the caller's v holds 16 rows of `stride` floats from here, each ≥ tw long.
        unsafe {
            let out = |j: usize| std::slice::from_raw_parts_mut(v.add((4 * i + j) * stride), tw);
            let (v0, v1, v2, v3) = (out(0), out(1), out(2), out(3));
            for t in 0..tw {
                let (e0, e1) = (ea[t] + sign * eb[t], ea[t + 1] + sign * eb[t + 1]);
                let (o0, o1) = (oa[t] + sign * ob[t], oa[t + 1] + sign * ob[t + 1]);
                v0[t] = e0 - e1;
                v1[t] = o0 + e1;
                v2[t] = e1 - o0;
                v3[t] = o0 - o1;
            }
        }
    }
}

multiversion! {
    /// `Aᵀ M A` of a band's tiles for one output channel (`m[k · stride + t]`, `tiles` of them):
    /// the 2×2 outputs of tile t at `q[(2·row + column) · tiles + t]`.
    fn output_tiles(m: &[f32], stride: usize, tiles: usize, q: &mut [f32]) = output_tiles_body;
}

#[inline(always)]
fn output_tiles_body(m: &[f32], stride: usize, tiles: usize, q: &mut [f32]) {
    let k: [&[f32]; 16] = std::array::from_fn(|k| &m[k * stride..][..tiles]);
    let (q0, rest) = q[..4 * tiles].split_at_mut(tiles);
    let (q1, rest) = rest.split_at_mut(tiles);
    let (q2, q3) = rest.split_at_mut(tiles);
    for t in 0..tiles {
        // Aᵀ over rows (m0 + m1 + m2, m1 − m2 − m3), then over columns
        let s: [f32; 4] = std::array::from_fn(|j| k[j][t] + k[4 + j][t] + k[8 + j][t]);
        let d: [f32; 4] = std::array::from_fn(|j| k[4 + j][t] - k[8 + j][t] - k[12 + j][t]);
        q0[t] = s[0] + s[1] + s[2];
        q1[t] = s[1] - s[2] - s[3];
        q2[t] = d[0] + d[1] + d[2];
        q3[t] = d[1] - d[2] - d[3];
    }
}

/// One output row from its tiles' left (`a`) and right (`b`) columns; a last odd column takes
/// only `a`.
fn interleave(a: &[f32], b: &[f32], row: &mut [f32]) {
    let w = row.len();
    let (pairs, last) = row.split_at_mut(w / 2 * 2);
    for ((pair, &x), &y) in pairs.chunks_exact_mut(2).zip(a).zip(b) {
        pair[0] = x;
        pair[1] = y;
    }
    if let Some(v) = last.first_mut() {
        *v = a[w / 2];
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A 3×3, stride-1 "same" convolution of `n` images.
    pub(in crate::kernels) fn geom(n: usize, ci: usize, h: usize, w: usize, co: usize) -> ConvGeom {
        ConvGeom { n, ci, h, w, co, kh: 3, kw: 3, stride: [1, 1], pad: [1, 1, 1, 1], dilation: [1, 1], groups: 1, arith: Default::default() }
    }

    /// `forward`'s outputs equal im2col's within a few units in the last place of the largest term
    /// on each `(shape, silu)` case, with bias.
    pub(in crate::kernels) fn assert_im2cols(forward: fn(&ConvGeom, &[f32], &[f32], Option<&[f32]>, bool) -> Vec<f32>, cases: &[(ConvGeom, bool)]) {
        for &(g, silu) in cases {
            let values = |len: usize, seed: usize| (0..len).map(|i| (((i * 7919 + seed * 104_729) % 1000) as f32 / 500.0) - 1.0).collect::<Vec<f32>>();
            let (x, weight, bias) = (values(g.n * g.ci * g.h * g.w, 1), values(g.weight_len(), 2), values(g.co, 3));
            let want = super::super::conv::forward_im2col(&g, &x, &weight, Some(&bias), silu);
            let got = forward(&g, &x, &weight, Some(&bias), silu);
            // each output sums 9·ci terms of magnitude ≤ 1
            let bound = 9.0 * g.ci as f32 * 4.0 * f32::EPSILON;
            let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
            assert!(worst <= bound, "{g:?}: max difference {worst} (bound {bound})");
        }
    }

    /// Even and odd sizes (a tile reaching past the right or bottom edge), one tile row, with and
    /// without SiLU, several images; training's form, then inference's twice (its filters made,
    /// then kept).
    #[test]
    fn winograd_forward_is_im2cols() {
        let cases = [(geom(1, 16, 8, 8, 16), true), (geom(2, 24, 7, 9, 20), false), (geom(1, 32, 1, 5, 16), true), (geom(1, 64, 13, 20, 48), true), (geom(3, 16, 2, 3, 17), false)];
        assert_im2cols(|g, x, w, b, silu| forward(g, x, w, b, silu, false), &cases);
        for _ in 0..2 {
            assert_im2cols(|g, x, w, b, silu| forward(g, x, w, b, silu, true), &cases);
        }
    }
}
