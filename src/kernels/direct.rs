//! The inference forward of a k×k "same" convolution (stride 1 or 2) as a direct convolution with
//! an AVX2+FMA microkernel: no im2col, no GEMM packing, bias and SiLU applied to the tile before
//! it is stored.
//!
//! Each worker copies a band of input rows, [`CHUNK`] channels at a time, into a zero-padded
//! buffer whose rows are `wq` apart. At stride 1, `wq = w + p` (p = k / 2): the right padding of
//! one row is the left padding of the next. Output pixel (y, x) then sits at flat position
//! q = y·wq + x, and tap (i, j) of every output reads the band at q + i·wq + j, so a run of
//! consecutive q reads consecutive memory for every tap. At stride 2 the band is split into
//! phases (see [`Layout`]) so that the same holds. A tile is [`MR`] output channels × [`NR`]
//! consecutive q, accumulated over every (channel, tap) in registers, the weights read in place;
//! the spare positions per row (x ≥ wo) are computed and dropped.
//!
//! Used where the CPU has AVX2+FMA but not AVX-512 (see [`applies`]): with AVX-512 the `gemm`
//! crate's kernels hold twice the floats per register, and this kernel has not been measured there.

use rayon::prelude::*;

use super::conv::ConvGeom;
use super::{shifted, simd, SharedMut};

/// Output channels per tile (one broadcast weight each) and flat positions per tile (two AVX2
/// registers): 12 accumulators + 2 inputs + 1 broadcast of the 16 AVX2 registers.
const MR: usize = 6;
const NR: usize = 16;
/// Fewest input channels per group: below it the padded copy costs more than im2col saves.
const MIN_CHANNELS: usize = 16;
/// Most input channels per group of a stride-2 convolution in the product: with more, the
/// im2col GEMM measured faster (yolov8n's shapes at 640: 16 and 32 channels 1.0–1.3× faster,
/// 64 and 128 0.85–1.0×).
const MAX_STRIDED_CHANNELS: usize = 32;
/// Input channels per pass over a band: their rows stay in L1 while the tiles move along (8 and
/// 32 measured no better on yolov8n's shapes).
const CHUNK: usize = 16;
/// Floats of one band's input chunk and partial sums that should stay in a core's L2 (384 KiB).
const BAND_FLOATS: usize = 96 * 1024;

/// Whether the product uses the direct form for `g`: a shape [`shape_fits`], few enough channels
/// when strided, on a CPU with AVX2+FMA and without AVX-512.
pub(super) fn applies(g: &ConvGeom) -> bool {
    let channels_ok = g.stride == [1, 1] || g.cig() <= MAX_STRIDED_CHANNELS;
    shape_fits(g) && channels_ok && !simd::has_avx512() && simd::has_avx2_fma()
}

/// The shapes the direct form computes: an odd square kernel larger than 1×1, stride 1 or 2,
/// dilation 1, "same" padding (k / 2), at least [`MIN_CHANNELS`] input channels per group.
pub(super) fn shape_fits(g: &ConvGeom) -> bool {
    let p = g.kh / 2;
    g.kh == g.kw && g.kh % 2 == 1 && g.kh > 1 && (g.stride == [1, 1] || g.stride == [2, 2]) && g.dilation == [1, 1] && g.pad == [p; 4] && g.cig() >= MIN_CHANNELS
}

/// `y = act(conv(x, weight) + bias)` for a shape [`shape_fits`] on a CPU with AVX2+FMA.
pub(super) fn forward(g: &ConvGeom, x: &[f32], weight: &[f32], bias: Option<&[f32]>, silu: bool) -> Vec<f32> {
    assert!(shape_fits(g) && simd::has_avx2_fma(), "direct convolution called for {g:?}");
    let mut y: Vec<f32> = Vec::with_capacity(g.out_len());
    let yp = SharedMut(y.as_mut_ptr());
    units(g, MR).into_par_iter().for_each(|u| {
        // SAFETY: units write disjoint (image, channel range, row range) blocks of y; the CPU has
        // AVX2 and FMA (asserted above).
        unsafe { run_unit(g, x, weight, bias, silu, u, yp) }
    });
    // SAFETY: the units cover every (image, channel, output pixel) and have all been written.
    unsafe { y.set_len(g.out_len()) };
    y
}

/// One image and group, a range of output-channel blocks, a band of output rows.
#[derive(Debug, Clone, Copy)]
pub(super) struct Unit {
    pub(super) b: usize,
    pub(super) gi: usize,
    pub(super) blocks: (usize, usize),
    pub(super) rows: (usize, usize),
}

/// Where a band's padded input lies. Stride s splits it into s × s phases: phase (a, b) keeps the
/// padded rows ≡ a and columns ≡ b (mod s), so that tap (i, j) of output (y, x) reads phase
/// (i mod s, j mod s) at row y + i / s, column x + j / s, and each phase row is `wq` floats. At
/// stride 1 the right padding of one row is the left padding of the next (`wq = w + p`); at
/// stride 2 a row holds `wo` outputs' columns and the taps' reach.
#[derive(Clone, Copy)]
struct Layout {
    s: usize,
    wq: usize,
    /// Phase rows (and columns) a tap reaches past its output's: (k − 1) / s.
    reach: usize,
}

impl Layout {
    fn of(g: &ConvGeom) -> Self {
        let (s, reach) = (g.stride[0], (g.kh - 1) / g.stride[0]);
        let wq = if s == 1 { g.w + g.kh / 2 } else { g.wo() + reach };
        Layout { s, wq, reach }
    }
    /// Floats of one phase of a band of `rows` output rows: its rows, then slack for the last
    /// tile, which reads up to `reach + NR − 1` past them.
    fn phase_len(&self, rows: usize) -> usize {
        (rows + self.reach) * self.wq + self.reach + NR
    }
    /// Floats of one channel's band: all its phases.
    fn band_len(&self, rows: usize) -> usize {
        self.s * self.s * self.phase_len(rows)
    }
    /// Where tap `t` of output position 0 reads, within one channel's band.
    fn offset(&self, g: &ConvGeom, t: usize, rows: usize) -> usize {
        let (i, j, s) = (t / g.kw, t % g.kw, self.s);
        ((i % s) * s + j % s) * self.phase_len(rows) + (i / s) * self.wq + j / s
    }
}

/// Bands of rows whose chunk of input and partial sums fit [`BAND_FLOATS`], then split further
/// (by blocks of `block` output channels first, which wastes nothing, then by rows) until every
/// thread has at least two units.
pub(super) fn units(g: &ConvGeom, block: usize) -> Vec<Unit> {
    let (ho, blocks) = (g.ho(), g.cog().div_ceil(block));
    if ho == 0 || blocks == 0 {
        return Vec::new();
    }
    let images = g.n * g.groups;
    let per_row = CHUNK.min(g.cig()) * g.stride[0] * g.w + g.cog() * g.wo();
    let rows_fit = (BAND_FLOATS / per_row.max(1)).saturating_sub(g.kh - 1).max(1);
    let mut bands = ho.div_ceil(rows_fit).max(1);
    let want = 2 * rayon::current_num_threads();
    let parts = want.div_ceil(images * bands).clamp(1, blocks);
    if images * bands * parts < want {
        bands = want.div_ceil(images * parts).min(ho).max(bands);
    }
    let bands = bands.min(ho).max(1);
    // Even splits (22 blocks in 4 parts: 5, 6, 5, 6), so that no thread waits for another.
    let split = |len: usize, parts: usize, i: usize| (i * len / parts, (i + 1) * len / parts);
    let mut out = Vec::new();
    for b in 0..g.n {
        for gi in 0..g.groups {
            for r in 0..bands {
                for k in 0..parts {
                    out.push(Unit { b, gi, blocks: split(blocks, parts, k), rows: split(ho, bands, r) });
                }
            }
        }
    }
    out
}

/// A worker's buffers, kept across calls: the padded band of one chunk of input channels, and
/// the partial sums of the unit's tiles.
#[derive(Default)]
struct Scratch {
    band: Vec<f32>,
    partial: Vec<[[f32; NR]; MR]>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

/// Copies input channels `c0..c0 + chunk` of one image and group (`x`: `[cig, h, w]`) for output
/// rows `r0..r0 + rows` into `band`, zero-padded, one [`Layout::band_len`] per channel.
fn fill_band(g: &ConvGeom, lay: Layout, x: &[f32], (c0, chunk): (usize, usize), (r0, rows): (usize, usize), band: &mut Vec<f32>) {
    let (p, s, wq) = (g.kh / 2, lay.s, lay.wq);
    let phase_len = lay.phase_len(rows);
    band.resize(chunk * lay.band_len(rows), 0.0);
    for (c, dst) in band.chunks_mut(lay.band_len(rows)).enumerate() {
        let plane = &x[(c0 + c) * g.h * g.w..][..g.h * g.w];
        for (ph, phase) in dst.chunks_mut(phase_len).enumerate() {
            let (a, b) = (ph / s, ph % s);
            for (r, out) in phase.chunks_mut(wq).take(rows + lay.reach).enumerate() {
                let iy = ((r0 + r) * s + a) as isize - p as isize;
                match (iy >= 0 && (iy as usize) < g.h).then(|| &plane[iy as usize * g.w..][..g.w]) {
                    // At stride 1 the row's left padding is all it writes before the data; the
                    // right padding is the next row's left.
                    Some(row) if s == 1 => {
                        out[..p].fill(0.0);
                        out[p..].copy_from_slice(row);
                    }
                    Some(row) => shifted::phase_row(row, p, s, b, out),
                    None => out.fill(0.0),
                }
            }
            phase[(rows + lay.reach) * wq..].fill(0.0);
        }
    }
}

/// Computes one unit's tiles and writes them, with bias and activation, into `y`.
///
/// # Safety
/// The CPU must have AVX2 and FMA; no other thread may write this unit's block of `y`.
#[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx2,fma"))]
unsafe fn run_unit(g: &ConvGeom, x: &[f32], weight: &[f32], bias: Option<&[f32]>, silu: bool, u: Unit, y: SharedMut) {
    let (cig, cog, taps, lay) = (g.cig(), g.cog(), g.kh * g.kw, Layout::of(g));
    let rows = u.rows.1 - u.rows.0;
    let offsets: Vec<usize> = (0..taps).map(|t| lay.offset(g, t, rows)).collect();
    let x = &x[(u.b * g.ci + u.gi * cig) * g.h * g.w..][..cig * g.h * g.w];
    let (q_end, len) = (rows * lay.wq, lay.band_len(rows));
    let tiles = q_end.div_ceil(NR);
    let plane_out = g.ho() * g.wo();
    let (segments, seg_start) = segments(rows, lay.wq, g.wo(), tiles);
    SCRATCH.with(|s| {
        let Scratch { band, partial } = &mut *s.borrow_mut();
        partial.resize((u.blocks.1 - u.blocks.0) * tiles, [[0.0; NR]; MR]);
        for c0 in (0..cig).step_by(CHUNK) {
            let chunk = CHUNK.min(cig - c0);
            fill_band(g, lay, x, (c0, chunk), (u.rows.0, rows), band);
            let last = c0 + chunk == cig;
            for blk in u.blocks.0..u.blocks.1 {
                let channels = MR.min(cog - blk * MR);
                // Each output channel's weights `[cig][taps]` from this chunk on, read in place.
                let w: [*const f32; MR] = std::array::from_fn(|m| {
                    let o = u.gi * cog + blk * MR + m.min(channels - 1);
                    weight[(o * cig + c0) * taps..][..chunk * taps].as_ptr()
                });
                for t in 0..tiles {
                    let tile = &mut partial[(blk - u.blocks.0) * tiles + t];
                    // SAFETY: the tile reads the band from t·NR up to t·NR + NR − 1 + the last
                    // tap's offset, within the band's slack (Layout::phase_len); the CPU has AVX2+FMA.
                    microkernel(channels, w, band.as_ptr().add(t * NR), (chunk, len), &offsets, c0 > 0, tile);
                    if !last {
                        continue;
                    }
                    let segs = &segments[seg_start[t]..seg_start[t + 1]];
                    for (m, row) in tile.iter_mut().enumerate().take(channels) {
                        let o = u.gi * cog + blk * MR + m;
                        finish(row, bias.map_or(0.0, |b| b[o]), silu);
                        let dst = y.at((u.b * g.co + o) * plane_out + u.rows.0 * g.wo());
                        for seg in segs {
                            store(row, *seg, dst);
                        }
                    }
                }
            }
        }
    });
}

/// Adds the bias and applies SiLU to one tile row (inlined into the AVX2+FMA caller, hence the
/// fused multiply-adds).
#[inline(always)]
fn finish(row: &mut [f32; NR], bias: f32, silu: bool) {
    if silu {
        row.iter_mut().for_each(|v| {
            *v = simd::silu_fma(*v + bias);
        });
    } else {
        row.iter_mut().for_each(|v| *v += bias);
    }
}

/// A run of one tile row's lanes that lands in one output row: first lane, lane count, and where
/// it goes within the band's output rows.
#[derive(Debug, Clone, Copy)]
struct Segment {
    lane: usize,
    len: usize,
    dst: usize,
}

/// The segments of every tile of a band of `rows` output rows (spare positions x ≥ wo dropped),
/// in tile order, with each tile's first segment index (and an end): computed once per unit, so
/// that the tile loop does no division.
fn segments(rows: usize, wq: usize, wo: usize, tiles: usize) -> (Vec<Segment>, Vec<usize>) {
    let mut segs = Vec::new();
    let mut start = vec![0; tiles + 1];
    for oy in 0..rows {
        let mut ox = 0;
        while ox < wo {
            let q = oy * wq + ox;
            let (t, lane) = (q / NR, q % NR);
            let len = (wo - ox).min(NR - lane);
            segs.push(Segment { lane, len, dst: oy * wo + ox });
            start[t + 1] = segs.len();
            ox += len;
        }
    }
    // Tiles without a segment (all spare) start where the previous one ended.
    for t in 1..=tiles {
        start[t] = start[t].max(start[t - 1]);
    }
    (segs, start)
}

/// Copies one segment of a tile row to `dst`: whole registers, then a half, then single floats
/// (a library call per short copy cost more than the copy; AMD's masked stores are slow).
///
/// # Safety
/// The CPU must have AVX2; `dst` must hold the band's output rows.
#[inline(always)]
unsafe fn store(row: &[f32; NR], seg: Segment, dst: *mut f32) {
    let (src, dst) = (row.as_ptr().add(seg.lane), dst.add(seg.dst));
    let mut k = 0;
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::*;
        while k + 8 <= seg.len {
            _mm256_storeu_ps(dst.add(k), _mm256_loadu_ps(src.add(k)));
            k += 8;
        }
        if k + 4 <= seg.len {
            _mm_storeu_ps(dst.add(k), _mm_loadu_ps(src.add(k)));
            k += 4;
        }
    }
    for _ in k..seg.len {
        *dst.add(k) = *src.add(k);
        k += 1;
    }
}

/// The first `channels` rows of `tile[m][l] (+)= Σ_c Σ_t w[m][c·taps + t] · x[c·len + offsets[t] + l]`
/// over `chunk` input channels, adding to `tile` when `add`: one instance per channel count, so
/// that a partial last block computes no padding.
///
/// # Safety
/// As [`kernel`].
#[inline(always)]
unsafe fn microkernel(channels: usize, w: [*const f32; MR], x: *const f32, chunk: (usize, usize), offsets: &[usize], add: bool, tile: &mut [[f32; NR]; MR]) {
    match channels {
        6 => kernel::<6>(w, x, chunk, offsets, add, tile),
        5 => kernel::<5>(w, x, chunk, offsets, add, tile),
        4 => kernel::<4>(w, x, chunk, offsets, add, tile),
        3 => kernel::<3>(w, x, chunk, offsets, add, tile),
        2 => kernel::<2>(w, x, chunk, offsets, add, tile),
        _ => kernel::<1>(w, x, chunk, offsets, add, tile),
    }
}

/// [`microkernel`] for `M` channels.
///
/// # Safety
/// The CPU must have AVX2 and FMA; each of the first `M` rows of `w` holds `chunk.0 · offsets.len()`
/// floats and every read
/// of `x` lies within its buffer.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn kernel<const M: usize>(w: [*const f32; MR], x: *const f32, (chunk, len): (usize, usize), offsets: &[usize], add: bool, tile: &mut [[f32; NR]; MR]) {
    use std::arch::x86_64::*;
    let z = _mm256_setzero_ps();
    let mut acc = [[z; 2]; M];
    if add {
        for (a, row) in acc.iter_mut().zip(tile.iter()) {
            *a = [_mm256_loadu_ps(row.as_ptr()), _mm256_loadu_ps(row.as_ptr().add(8))];
        }
    }
    let mut k = 0;
    for c in 0..chunk {
        let xc = x.add(c * len);
        for &off in offsets {
            let xp = xc.add(off);
            let (v0, v1) = (_mm256_loadu_ps(xp), _mm256_loadu_ps(xp.add(8)));
            for (a, w) in acc.iter_mut().zip(w) {
                let b = _mm256_broadcast_ss(&*w.add(k));
                a[0] = _mm256_fmadd_ps(b, v0, a[0]);
                a[1] = _mm256_fmadd_ps(b, v1, a[1]);
            }
            k += 1;
        }
    }
    for (row, a) in tile.iter_mut().zip(acc) {
        _mm256_storeu_ps(row.as_mut_ptr(), a[0]);
        _mm256_storeu_ps(row.as_mut_ptr().add(8), a[1]);
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn kernel<const M: usize>(_: [*const f32; MR], _: *const f32, _: (usize, usize), _: &[usize], _: bool, _: &mut [[f32; NR]; MR]) {
    unreachable!("the direct convolution runs only on x86-64 with AVX2+FMA")
}

/// What the tests of this form and of [`super::broadcast`] share: inputs, shapes, and the
/// comparison with the im2col forward.
#[cfg(test)]
pub(super) mod check {
    use super::super::conv::{self, ConvGeom};

    /// Deterministic values in [-1, 1], different for each seed.
    fn noise(len: usize, seed: u32) -> Vec<f32> {
        (0..len).map(|i| ((i as f32 + 0.5) * 0.754_877_7 + seed as f32 * 1.618).sin()).collect()
    }

    /// An n×ci×h×w input, co outputs, a k×k "same" kernel, stride 1.
    pub fn geom(n: usize, ci: usize, h: usize, w: usize, co: usize, k: usize, groups: usize) -> ConvGeom {
        let p = k / 2;
        ConvGeom { n, ci, h, w, co, kh: k, kw: k, stride: [1, 1], pad: [p; 4], dilation: [1, 1], groups, arith: Default::default() }
    }

    /// `g` at stride 2.
    pub fn strided(g: ConvGeom) -> ConvGeom {
        ConvGeom { stride: [2, 2], ..g }
    }

    /// `forward` (in a 2-thread pool) within 1e-5 of the largest magnitude of the im2col forward on
    /// every case, with bias and SiLU and without either.
    pub fn matches_im2col(cases: &[ConvGeom], forward: impl Fn(&ConvGeom, &[f32], &[f32], Option<&[f32]>, bool) -> Vec<f32> + Sync) {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(2).build().unwrap();
        for (i, g) in cases.iter().enumerate() {
            let x = noise(g.n * g.ci * g.h * g.w, 1 + i as u32);
            let w = noise(g.weight_len(), 100 + i as u32);
            let b = noise(g.co, 200 + i as u32);
            for (bias, silu) in [(Some(&b[..]), true), (None, false)] {
                let ours = pool.install(|| forward(g, &x, &w, bias, silu));
                let reference = conv::forward_im2col(g, &x, &w, bias, silu);
                assert_eq!(ours.len(), reference.len());
                let m = reference.iter().fold(1f32, |m, v| m.max(v.abs()));
                let d = ours.iter().zip(&reference).fold(0f32, |d, (a, r)| d.max((a - r).abs()));
                assert!(d <= 1e-5 * m, "{g:?} bias {} silu {silu}: max diff {d} (max {m})", bias.is_some());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::check::{geom, matches_im2col, strided};
    use super::*;

    /// Against the im2col forward, on every path: odd widths and heights, a channel count that is
    /// not a multiple of MR, 5×5, groups, several images, small and large maps, stride 2's phases,
    /// with and without bias and SiLU. Runs wherever the CPU has AVX2+FMA, AVX-512 or not.
    #[test]
    fn direct_convolution_matches_the_im2col_forward() {
        if !simd::has_avx2_fma() {
            eprintln!("skipped: this CPU lacks AVX2+FMA");
            return;
        }
        let cases = [
            geom(1, 16, 13, 11, 12, 3, 1),
            geom(1, 16, 20, 20, 6, 3, 1),
            geom(2, 32, 9, 30, 7, 3, 1),
            geom(1, 20, 17, 19, 8, 5, 1),
            geom(2, 32, 10, 12, 10, 3, 2),
            geom(1, 64, 80, 80, 16, 3, 1),
            geom(1, 128, 20, 20, 128, 3, 1),
            geom(3, 16, 1, 1, 4, 3, 1),
            strided(geom(1, 16, 13, 11, 12, 3, 1)),
            strided(geom(2, 32, 16, 16, 20, 3, 2)),
            strided(geom(1, 16, 12, 15, 8, 5, 1)),
            strided(geom(1, 64, 80, 80, 32, 3, 1)),
        ];
        assert!(cases.iter().all(shape_fits));
        matches_im2col(&cases, forward);
    }
}
