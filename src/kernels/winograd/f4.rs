//! Winograd's F(4×4, 3×3), for inference's forward: each 4×4 block of outputs comes from a 6×6
//! block of inputs with 36 products per channel pair instead of 144, so the GEMMs do 4× fewer
//! multiply-adds (F(2×2, 3×3) does 2.25× fewer). Its transforms (interpolation points 0, ±1, ±2)
//! have coefficients up to 8, so its roundings are larger than F(2×2)'s (unit test: within the
//! same bound on the difference from im2col). Training keeps F(2×2): its runs are chaotic (a
//! rounding changes a run), and F(4×4) was measured for inference only.
//!
//! The layout follows the parent module's: 36 matrices `U_k[co × ci]`, and per band of tile rows
//! `V_k[ci × tiles]`, `M_k = U_k · V_k`, `k = 6·i + j` (i the vertical and j the horizontal index).
//! The inputs are transformed along each padded row first (every row once per band, though tile
//! rows overlap by two), then across rows, which is a run of contiguous adds over the tiles.

use super::{computes, forward_by, Band, Scratch, MIN_CHANNELS, MIN_TILES};
use crate::kernels::conv::{epilogue, mm, ConvGeom, Mat};
use crate::kernels::simd::multiversion;
use crate::kernels::SharedMut;

/// Outputs of a tile each way, inputs each way, and transformed elements per tile.
const SIZE: usize = 4;
const SPAN: usize = 6;
const ELEMS: usize = SPAN * SPAN;

/// Fewest rows and columns of a map: on smaller ones (a few tiles per row, whose transforms run
/// over vectors that short, and up to 44% padding) F(4×4) took 0.8–1.5× F(2×2)'s time on 20×20
/// maps and 1.2–1.9× on 10×10, against 0.75–0.91× on 40×40 to 160×160 (`bench-conv --inference`,
/// yolov8n at 640 batch 1 and yolov8s at 320 batch 16).
const MIN_SIDE: usize = 32;

/// Whether inference's forward uses this form for `g`: a shape the parent module computes, at
/// least [`MIN_SIDE`] each way, with at least [`MIN_CHANNELS`] channels each way and
/// [`MIN_TILES`] of these larger tiles (other maps take F(2×2)).
pub(in crate::kernels) fn applies(g: &ConvGeom) -> bool {
    let tiles = g.n * g.h.div_ceil(SIZE) * g.w.div_ceil(SIZE);
    computes(g) && g.h.min(g.w) >= MIN_SIDE && g.ci >= MIN_CHANNELS && g.co >= MIN_CHANNELS && tiles >= MIN_TILES
}

/// `y = act(conv(x, weight) + bias)` for a convolution the parent module computes (inference
/// only, so its transformed filters are kept for the next call with the same weights).
pub(in crate::kernels) fn forward(g: &ConvGeom, x: &[f32], weight: &[f32], bias: Option<&[f32]>, silu: bool) -> Vec<f32> {
    forward_by(g, (x, weight, bias, silu), (SIZE, ELEMS, true), filter_rows, run_band)
}

/// G applied to one column (a, b, d) of a kernel.
#[inline(always)]
fn g_column(a: f32, b: f32, d: f32) -> [f32; SPAN] {
    const SIXTH: f32 = 1.0 / 6.0;
    let (even, odd) = (a * (1.0 / 24.0) + d * SIXTH, b * (1.0 / 12.0));
    [a * 0.25, -(a + b + d) * SIXTH, -(a - b + d) * SIXTH, even + odd, even - odd, d]
}

multiversion! {
    /// `G w Gᵀ` of one output channel's 3×3 kernels (row-major) into `u` (`[ci][6×6]`).
    fn filter_rows(w: &[f32], u: &mut [f32]) = filter_rows_body;
}

#[inline(always)]
fn filter_rows_body(w: &[f32], u: &mut [f32]) {
    for (w, u) in w.chunks_exact(9).zip(u.chunks_exact_mut(ELEMS)) {
        let columns: [[f32; SPAN]; 3] = std::array::from_fn(|j| g_column(w[j], w[3 + j], w[6 + j]));
        for (i, u) in u.chunks_exact_mut(SPAN).enumerate() {
            u.copy_from_slice(&g_column(columns[0][i], columns[1][i], columns[2][i]));
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
    let tw = w.div_ceil(SIZE);
    let tile_rows = band.rows.1 - band.rows.0;
    let tiles = tile_rows * tw;
    s.v.resize(ELEMS * ci * tiles, 0.0);
    s.m.resize(ELEMS * co * tiles, 0.0);
    // one padded input row and its four phases, then the row transforms of the band's 4·rows + 2
    // padded rows
    let (padded, input_rows) = (SIZE * (tw + 1), SIZE * tile_rows + 2);
    s.rows.resize(2 * padded + input_rows * SPAN * tw, 0.0);
    let plane = h * w;
    for c in 0..ci {
        let xc = &x[(band.b * ci + c) * plane..][..plane];
        let (buf, rest) = s.rows.split_at_mut(padded);
        let (phases, across) = rest.split_at_mut(padded);
        for (l, out) in across.chunks_exact_mut(SPAN * tw).enumerate() {
            match (SIZE * band.rows.0 + l).checked_sub(1).filter(|&r| r < h) {
                Some(r) => {
                    buf[0] = 0.0;
                    buf[1..=w].copy_from_slice(&xc[r * w..][..w]);
                    buf[w + 1..].fill(0.0);
                    deinterleave4(buf, phases);
                    row_transform(phases, out);
                }
                None => out.fill(0.0),
            }
        }
        for ty in 0..tile_rows {
            let at = c * tiles + ty * tw;
            column_transform(&across[SIZE * ty * SPAN * tw..][..SPAN * SPAN * tw], tw, s.v[at..].as_mut_ptr(), ci * tiles);
        }
    }
    for k in 0..ELEMS {
        let dst = (s.m[k * co * tiles..].as_mut_ptr(), tiles as isize, 1);
        mm(co, tiles, ci, dst, false, Mat(u[k * co * ci..].as_ptr(), ci as isize, 1), Mat(s.v[k * ci * tiles..].as_ptr(), tiles as isize, 1));
    }
    let y_plane = yp.at(band.b * co * plane);
    s.rows.resize((SIZE * SPAN + SIZE * SIZE) * tiles, 0.0);
    for o in 0..co {
        let bias_o = bias.map_or(0.0, |b| b[o]);
        let (half, q) = s.rows.split_at_mut(SIZE * SPAN * tiles);
        output_tiles(&s.m[o * tiles..], co * tiles, tiles, half, q);
        let q = |a: usize, b: usize| &q[(SIZE * a + b) * tiles..][..tiles];
        for ty in band.rows.0..band.rows.1 {
            let at = (ty - band.rows.0) * tw;
            let rows = std::slice::from_raw_parts_mut(y_plane.add(o * plane + SIZE * ty * w), w * (h - SIZE * ty).min(SIZE));
            for (a, row) in rows.chunks_exact_mut(w).enumerate() {
                interleave4([&q(a, 0)[at..], &q(a, 1)[at..], &q(a, 2)[at..], &q(a, 3)[at..]], row);
                epilogue(row, bias_o, silu);
            }
        }
    }
}

/// `Bᵀ d` of six values.
#[inline(always)]
fn bt(d: [f32; SPAN]) -> [f32; SPAN] {
    [
        4.0 * d[0] - 5.0 * d[2] + d[4],
        -4.0 * (d[1] + d[2]) + d[3] + d[4],
        4.0 * (d[1] - d[2]) - d[3] + d[4],
        -2.0 * (d[1] - d[3]) - d[2] + d[4],
        2.0 * (d[1] - d[3]) - d[2] + d[4],
        4.0 * d[1] - 5.0 * d[3] + d[5],
    ]
}

/// `phases[r · n + m] = buf[4m + r]` (`n` = a quarter of `buf`): with AVX2 shuffles where the
/// CPU has them (a scalar loop of strided reads was most of the row transform's time).
fn deinterleave4(buf: &[f32], phases: &mut [f32]) {
    let n = buf.len() / SIZE;
    assert!(buf.len() == SIZE * n && phases.len() == buf.len());
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if crate::kernels::simd::has_avx2_fma() {
        // SAFETY: the CPU has AVX2; the lengths are checked above.
        done = unsafe { deinterleave4_avx2(buf, phases, n) };
    }
    for m in done..n {
        for r in 0..SIZE {
            phases[r * n + m] = buf[SIZE * m + r];
        }
    }
}

/// [`deinterleave4`] of whole blocks of 8 groups; returns how many groups it wrote.
///
/// # Safety
/// The CPU must have AVX2; `buf` and `phases` must hold `4 · n` floats.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn deinterleave4_avx2(buf: &[f32], phases: &mut [f32], n: usize) -> usize {
    use std::arch::x86_64::*;
    let blocks = n / 8;
    let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for i in 0..blocks {
        let load = |k: usize| _mm256_loadu_ps(buf.as_ptr().add(32 * i + 8 * k));
        let (a, b, c, d) = (load(0), load(1), load(2), load(3));
        // per 128-bit lane, a 4×4 transpose: lane 0 holds groups 0, 2, 4, 6 and lane 1 groups 1, 3, 5, 7
        let (t0, t1, t2, t3) = (_mm256_unpacklo_ps(a, b), _mm256_unpackhi_ps(a, b), _mm256_unpacklo_ps(c, d), _mm256_unpackhi_ps(c, d));
        let p = [_mm256_shuffle_ps::<0x44>(t0, t2), _mm256_shuffle_ps::<0xEE>(t0, t2), _mm256_shuffle_ps::<0x44>(t1, t3), _mm256_shuffle_ps::<0xEE>(t1, t3)];
        for (r, p) in p.into_iter().enumerate() {
            _mm256_storeu_ps(phases.as_mut_ptr().add(r * n + 8 * i), _mm256_permutevar8x32_ps(p, order));
        }
    }
    8 * blocks
}

multiversion! {
    /// `d B` along one padded row, from its four phases (`phases[r · (tw + 1) + m]` = padded
    /// column 4m + r), for every tile: element j of tile t at `out[j · tw + t]`.
    fn row_transform(phases: &[f32], out: &mut [f32]) = row_transform_body;
}

#[inline(always)]
fn row_transform_body(phases: &[f32], out: &mut [f32]) {
    let tw = out.len() / SPAN;
    let phase = |r: usize, shift: usize| &phases[r * (tw + 1) + shift..][..tw];
    let (d0, d1, d2, d3, d4, d5) = (phase(0, 0), phase(1, 0), phase(2, 0), phase(3, 0), phase(0, 1), phase(1, 1));
    let (o0, rest) = out.split_at_mut(tw);
    let (o1, rest) = rest.split_at_mut(tw);
    let (o2, rest) = rest.split_at_mut(tw);
    let (o3, rest) = rest.split_at_mut(tw);
    let (o4, o5) = rest.split_at_mut(tw);
    for t in 0..tw {
        let b = bt([d0[t], d1[t], d2[t], d3[t], d4[t], d5[t]]);
        (o0[t], o1[t], o2[t], o3[t], o4[t], o5[t]) = (b[0], b[1], b[2], b[3], b[4], b[5]);
    }
}

multiversion! {
    /// `Bᵀ (d B)` across the six row-transformed input rows of one tile row (`across`, each
    /// `6 · tw` floats), written at `v[k · stride + t]`.
    fn column_transform(across: &[f32], tw: usize, v: *mut f32, stride: usize) = column_transform_body;
}

#[inline(always)]
fn column_transform_body(across: &[f32], tw: usize, v: *mut f32, stride: usize) {
    for j in 0..SPAN {
        let r = |i: usize| &across[(i * SPAN + j) * tw..][..tw];
        let (r0, r1, r2, r3, r4, r5) = (r(0), r(1), r(2), r(3), r(4), r(5));
        // SAFETY: the caller's v holds 36 rows of `stride` floats from here, each ≥ tw long.
        let out = |i: usize| unsafe { std::slice::from_raw_parts_mut(v.add((SPAN * i + j) * stride), tw) };
        let (o0, o1, o2, o3, o4, o5) = (out(0), out(1), out(2), out(3), out(4), out(5));
        for t in 0..tw {
            let b = bt([r0[t], r1[t], r2[t], r3[t], r4[t], r5[t]]);
            (o0[t], o1[t], o2[t], o3[t], o4[t], o5[t]) = (b[0], b[1], b[2], b[3], b[4], b[5]);
        }
    }
}

/// `Aᵀ m` of six values.
#[inline(always)]
fn at(m: [f32; SPAN]) -> [f32; SIZE] {
    let (p, q, r, s) = (m[1] + m[2], m[1] - m[2], m[3] + m[4], m[3] - m[4]);
    [m[0] + p + r, q + 2.0 * s, p + 4.0 * r, q + 8.0 * s + m[5]]
}

multiversion! {
    /// `Aᵀ M A` of a band's tiles for one output channel (`m[k · stride + t]`, `tiles` of them):
    /// through `half` (4 × 6 rows of tiles), the 4×4 outputs of tile t at `q[(4·row + column) · tiles + t]`.
    fn output_tiles(m: &[f32], stride: usize, tiles: usize, half: &mut [f32], q: &mut [f32]) = output_tiles_body;
}

#[inline(always)]
fn output_tiles_body(m: &[f32], stride: usize, tiles: usize, half: &mut [f32], q: &mut [f32]) {
    // Aᵀ across rows: half[(6·a + j) · tiles + t]
    for j in 0..SPAN {
        let k = |i: usize| &m[(SPAN * i + j) * stride..][..tiles];
        let (k0, k1, k2, k3, k4, k5) = (k(0), k(1), k(2), k(3), k(4), k(5));
        let (h0, rest) = half[j * tiles..].split_at_mut(SPAN * tiles);
        let (h1, rest) = rest.split_at_mut(SPAN * tiles);
        let (h2, h3) = rest.split_at_mut(SPAN * tiles);
        let (h0, h1, h2, h3) = (&mut h0[..tiles], &mut h1[..tiles], &mut h2[..tiles], &mut h3[..tiles]);
        for t in 0..tiles {
            let a = at([k0[t], k1[t], k2[t], k3[t], k4[t], k5[t]]);
            (h0[t], h1[t], h2[t], h3[t]) = (a[0], a[1], a[2], a[3]);
        }
    }
    // then along rows: q[(4·a + b) · tiles + t]
    for a in 0..SIZE {
        let k = |j: usize| &half[(SPAN * a + j) * tiles..][..tiles];
        let (k0, k1, k2, k3, k4, k5) = (k(0), k(1), k(2), k(3), k(4), k(5));
        let (q0, rest) = q[SIZE * a * tiles..].split_at_mut(tiles);
        let (q1, rest) = rest.split_at_mut(tiles);
        let (q2, rest) = rest.split_at_mut(tiles);
        let q3 = &mut rest[..tiles];
        for t in 0..tiles {
            let b = at([k0[t], k1[t], k2[t], k3[t], k4[t], k5[t]]);
            (q0[t], q1[t], q2[t], q3[t]) = (b[0], b[1], b[2], b[3]);
        }
    }
}

/// One output row from its tiles' four columns (`q[b][t]` = column 4t + b); a last partial tile
/// gives its first columns. With AVX2 shuffles where the CPU has them.
fn interleave4(q: [&[f32]; SIZE], row: &mut [f32]) {
    let full = row.len() / SIZE;
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if crate::kernels::simd::has_avx2_fma() {
        assert!(q.iter().all(|q| q.len() >= full));
        // SAFETY: the CPU has AVX2; each q holds `full` floats and row 4 · full.
        done = unsafe { interleave4_avx2(q, row, full) };
    }
    for (t, out) in row[SIZE * done..SIZE * full].chunks_exact_mut(SIZE).enumerate() {
        let t = done + t;
        out.copy_from_slice(&[q[0][t], q[1][t], q[2][t], q[3][t]]);
    }
    for (b, v) in row[SIZE * full..].iter_mut().enumerate() {
        *v = q[b][full];
    }
}

/// [`interleave4`] of whole blocks of 8 tiles; returns how many tiles it wrote.
///
/// # Safety
/// The CPU must have AVX2; each `q` must hold `full` floats and `row` at least `4 · full`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn interleave4_avx2(q: [&[f32]; SIZE], row: &mut [f32], full: usize) -> usize {
    use std::arch::x86_64::*;
    let blocks = full / 8;
    for i in 0..blocks {
        let load = |b: usize| _mm256_loadu_ps(q[b].as_ptr().add(8 * i));
        let (a, b, c, d) = (load(0), load(1), load(2), load(3));
        // per 128-bit lane, a 4×4 transpose: tiles 0–3 in lane 0, tiles 4–7 in lane 1
        let (u0, u1, u2, u3) = (_mm256_unpacklo_ps(a, b), _mm256_unpackhi_ps(a, b), _mm256_unpacklo_ps(c, d), _mm256_unpackhi_ps(c, d));
        let (v0, v1) = (_mm256_shuffle_ps::<0x44>(u0, u2), _mm256_shuffle_ps::<0xEE>(u0, u2));
        let (v2, v3) = (_mm256_shuffle_ps::<0x44>(u1, u3), _mm256_shuffle_ps::<0xEE>(u1, u3));
        let out = [_mm256_permute2f128_ps::<0x20>(v0, v1), _mm256_permute2f128_ps::<0x20>(v2, v3), _mm256_permute2f128_ps::<0x31>(v0, v1), _mm256_permute2f128_ps::<0x31>(v2, v3)];
        for (k, v) in out.into_iter().enumerate() {
            _mm256_storeu_ps(row.as_mut_ptr().add(32 * i + 8 * k), v);
        }
    }
    8 * blocks
}

#[cfg(test)]
mod tests {
    use super::super::tests::{assert_im2cols, geom};

    /// F(2×2)'s bound holds for F(4×4)'s larger roundings (measured: up to 2.1 of its 4 units, F(2×2)
    /// 1 to 2): sizes that are and are not multiples of 4 (tiles past the right or bottom edge),
    /// one tile row, with and without SiLU, several images, rows of more than 8 tiles (the shuffles).
    #[test]
    fn winograd_f4_forward_is_im2cols() {
        let cases = [
            (geom(1, 16, 8, 8, 16), true),
            (geom(2, 24, 7, 9, 20), false),
            (geom(1, 32, 1, 5, 16), true),
            (geom(1, 64, 13, 22, 48), true),
            (geom(3, 16, 6, 3, 17), false),
            (geom(1, 16, 40, 40, 32), true),
            (geom(1, 16, 9, 70, 16), false),
        ];
        assert_im2cols(super::forward, &cases);
    }
}
