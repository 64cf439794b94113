//! The inference forward of a k×k "same" convolution (stride 1 or 2) as a direct convolution
//! whose microkernel broadcasts input pixels against vectors of [`NB`] output channels: the
//! transpose of [`super::direct`]'s tile. A tile's [`PR`] positions are read one float each, so
//! they may lie `stride` apart: stride 2 needs no split into phases. The price is a transposed
//! store (each position's 16 channels go to 16 planes), hence [`MIN_CHANNELS`].
//!
//! Each worker copies a band of input rows, [`CHUNK`] channels at a time, into a zero-padded
//! buffer whose rows are `wq = w + p` floats apart (p = k / 2): the right padding of one row is
//! the left padding of the next. Tap (i, j) of output (y, x) reads the band at
//! (y·s + i)·wq + x·s + j. At stride 1 a tile is PR consecutive flat positions y·wq + x (the
//! spare ones, x ≥ wo, computed and dropped); at stride 2 a tile stays within one output row.
//! The weights are packed once per call as `[block][channel][tap][NB]`, zero beyond `cog`.

use rayon::prelude::*;

use super::conv::ConvGeom;
use super::direct::{units, Unit};
use super::{simd, SharedMut};

/// Output channels per tile (two AVX2 registers of weights) and positions per tile (one
/// broadcast each): 12 accumulators + 2 weights + 1 broadcast of the 16 AVX2 registers.
const NB: usize = 16;
const PR: usize = 6;
/// Input channels per pass over a band (their rows stay in L1 while the tiles move along).
const CHUNK: usize = 16;

/// Fewest input channels per group: with fewer, the transposed store of each tile costs more
/// than [`super::direct`]'s (yolov8n at 640 on a Zen 3: 16 channels 0.7×, 32 to 256 channels
/// 1.0–1.2× its speed).
const MIN_CHANNELS: usize = 32;
/// Narrowest output rows: a stride-2 tile stays within one row, so 20 outputs take 24 positions
/// (and 20×20 maps measured 0.8–0.95× at stride 1 too).
const MIN_WIDTH: usize = 40;

/// One tile: where its position 0 reads the band (tap (0, 0)), and where each position lands in
/// the unit's output rows (`y·wo + x` from the unit's first row; `u32::MAX` for a spare one).
#[derive(Clone, Copy)]
struct Tile {
    src: usize,
    dst: [u32; PR],
}

/// Whether the product uses this form for `g`: a shape [`shape_fits`] with at least
/// [`MIN_CHANNELS`] input channels per group and outputs at least [`MIN_WIDTH`] wide, on a CPU
/// with AVX2+FMA and without AVX-512 (as [`super::direct`]).
pub(super) fn applies(g: &ConvGeom) -> bool {
    shape_fits(g) && g.cig() >= MIN_CHANNELS && g.wo() >= MIN_WIDTH && !simd::has_avx512() && simd::has_avx2_fma()
}

/// The shapes this form computes: an odd square kernel larger than 1×1, stride 1 or 2, dilation
/// 1, "same" padding (k / 2).
pub(super) fn shape_fits(g: &ConvGeom) -> bool {
    let p = g.kh / 2;
    g.kh == g.kw && g.kh % 2 == 1 && g.kh > 1 && (g.stride == [1, 1] || g.stride == [2, 2]) && g.dilation == [1, 1] && g.pad == [p; 4]
}

/// `y = act(conv(x, weight) + bias)` for a shape [`shape_fits`] on a CPU with AVX2+FMA.
pub(super) fn forward(g: &ConvGeom, x: &[f32], weight: &[f32], bias: Option<&[f32]>, silu: bool) -> Vec<f32> {
    assert!(shape_fits(g) && simd::has_avx2_fma(), "broadcast convolution called for {g:?}");
    let packed = pack(g, weight, bias);
    let mut y: Vec<f32> = Vec::with_capacity(g.out_len());
    let yp = SharedMut(y.as_mut_ptr());
    units(g, NB).into_par_iter().for_each(|u| {
        // SAFETY: units write disjoint (image, channel range, row range) blocks of y; the CPU has
        // AVX2 and FMA (asserted above).
        unsafe { run_unit(g, x, &packed, silu, u, yp) }
    });
    // SAFETY: the units cover every (image, channel, output pixel) and have all been written.
    unsafe { y.set_len(g.out_len()) };
    y
}

/// The weights as `[group][block][channel][tap][NB]` and the bias as `[group][block][NB]`, zero
/// for the channels past `cog` of a group's last block.
struct Packed {
    weights: Vec<f32>,
    bias: Vec<f32>,
}

fn pack(g: &ConvGeom, weight: &[f32], bias: Option<&[f32]>) -> Packed {
    let (cig, cog, taps) = (g.cig(), g.cog(), g.kh * g.kw);
    let blocks = cog.div_ceil(NB);
    let mut weights = vec![0.0; g.groups * blocks * cig * taps * NB];
    let mut packed_bias = vec![0.0; g.groups * blocks * NB];
    for gi in 0..g.groups {
        for o in 0..cog {
            let (blk, m) = (o / NB, o % NB);
            let base = (gi * blocks + blk) * cig * taps * NB + m;
            let src = &weight[(gi * cog + o) * cig * taps..][..cig * taps];
            for (ct, &v) in src.iter().enumerate() {
                weights[base + ct * NB] = v;
            }
            packed_bias[(gi * blocks + blk) * NB + m] = bias.map_or(0.0, |b| b[gi * cog + o]);
        }
    }
    Packed { weights, bias: packed_bias }
}

/// The band's row pitch and the tiles of a band of `rows` output rows, with the band length
/// (per channel) that the last tile's reads need.
fn tiles(g: &ConvGeom, rows: usize) -> (usize, Vec<Tile>, usize) {
    let (s, wq, wo) = (g.stride[0], g.w + g.kh / 2, g.wo());
    let mut tiles = Vec::new();
    if s == 1 {
        for q0 in (0..rows * wq).step_by(PR) {
            let dst = std::array::from_fn(|k| {
                let (y, x) = ((q0 + k) / wq, (q0 + k) % wq);
                if y < rows && x < wo { (y * wo + x) as u32 } else { u32::MAX }
            });
            if dst.iter().any(|&d| d != u32::MAX) {
                tiles.push(Tile { src: q0, dst });
            }
        }
    } else {
        for y in 0..rows {
            for x0 in (0..wo).step_by(PR) {
                let dst = std::array::from_fn(|k| if x0 + k < wo { (y * wo + x0 + k) as u32 } else { u32::MAX });
                tiles.push(Tile { src: y * s * wq + x0 * s, dst });
            }
        }
    }
    let reach = (g.kh - 1) * wq + g.kw;
    let len = tiles.last().map_or(0, |t| t.src + (PR - 1) * s + reach);
    let filled = ((rows - 1) * s + g.kh) * wq;
    (wq, tiles, len.max(filled))
}

/// A worker's buffers, kept across calls: the padded band of one chunk of input channels, and
/// the partial sums of the unit's tiles.
#[derive(Default)]
struct Scratch {
    band: Vec<f32>,
    partial: Vec<[[f32; NB]; PR]>,
}

thread_local! {
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

/// Copies input channels `c0..c0 + chunk` of one image and group (`x`: `[cig, h, w]`), the input
/// rows that output rows `r0..r0 + rows` read, into `band`, zero-padded, `len` floats per channel.
fn fill_band(g: &ConvGeom, wq: usize, x: &[f32], (c0, chunk): (usize, usize), (r0, rows): (usize, usize), len: usize, band: &mut Vec<f32>) {
    let (p, s) = (g.kh / 2, g.stride[0]);
    let rows_in = (rows - 1) * s + g.kh;
    band.resize(chunk * len, 0.0);
    for (c, dst) in band.chunks_mut(len).enumerate() {
        let plane = &x[(c0 + c) * g.h * g.w..][..g.h * g.w];
        for (r, out) in dst.chunks_mut(wq).take(rows_in).enumerate() {
            let iy = (r0 * s + r) as isize - p as isize;
            out[..p].fill(0.0);
            match (iy >= 0 && (iy as usize) < g.h).then(|| &plane[iy as usize * g.w..][..g.w]) {
                Some(row) => out[p..].copy_from_slice(row),
                None => out[p..].fill(0.0),
            }
        }
        dst[rows_in * wq..].fill(0.0);
    }
}

/// Computes one unit's tiles and writes them, with bias and activation, into `y`.
///
/// # Safety
/// The CPU must have AVX2 and FMA; no other thread may write this unit's block of `y`.
#[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx2,fma"))]
unsafe fn run_unit(g: &ConvGeom, x: &[f32], packed: &Packed, silu: bool, u: Unit, y: SharedMut) {
    let (cig, cog, taps) = (g.cig(), g.cog(), g.kh * g.kw);
    let rows = u.rows.1 - u.rows.0;
    let (wq, tiles, len) = tiles(g, rows);
    let offsets: Vec<usize> = (0..taps).map(|t| (t / g.kw) * wq + t % g.kw).collect();
    let x = &x[(u.b * g.ci + u.gi * cig) * g.h * g.w..][..cig * g.h * g.w];
    let blocks = cog.div_ceil(NB);
    let plane_out = g.ho() * g.wo();
    SCRATCH.with(|s| {
        let Scratch { band, partial } = &mut *s.borrow_mut();
        partial.resize((u.blocks.1 - u.blocks.0) * tiles.len(), [[0.0; NB]; PR]);
        for c0 in (0..cig).step_by(CHUNK) {
            let chunk = CHUNK.min(cig - c0);
            fill_band(g, wq, x, (c0, chunk), (u.rows.0, rows), len, band);
            let last = c0 + chunk == cig;
            for blk in u.blocks.0..u.blocks.1 {
                let block = (u.gi * blocks + blk) * cig;
                let w = packed.weights[(block + c0) * taps * NB..][..chunk * taps * NB].as_ptr();
                let channels = NB.min(cog - blk * NB);
                for (t, tile_at) in tiles.iter().enumerate() {
                    let tile = &mut partial[(blk - u.blocks.0) * tiles.len() + t];
                    // SAFETY: the tile reads the band from `src` up to (PR − 1)·s + the last tap's
                    // offset past it, within `len` (see `tiles`); the CPU has AVX2+FMA.
                    microkernel(g.stride[0], w, band.as_ptr().add(tile_at.src), (chunk, len), &offsets, c0 > 0, tile);
                    if !last {
                        continue;
                    }
                    finish(tile, &packed.bias[(u.gi * blocks + blk) * NB..][..NB], silu);
                    let dst = y.at((u.b * g.co + u.gi * cog + blk * NB) * plane_out + u.rows.0 * g.wo());
                    for (row, &d) in tile.iter().zip(&tile_at.dst) {
                        if d != u32::MAX {
                            for (m, v) in row.iter().enumerate().take(channels) {
                                *dst.add(m * plane_out + d as usize) = *v;
                            }
                        }
                    }
                }
            }
        }
    });
}

/// Adds the bias and applies SiLU to a tile (inlined into the AVX2+FMA caller).
#[inline(always)]
fn finish(tile: &mut [[f32; NB]; PR], bias: &[f32], silu: bool) {
    for row in tile.iter_mut() {
        if silu {
            row.iter_mut().zip(bias).for_each(|(v, b)| *v = simd::silu_fma(*v + b));
        } else {
            row.iter_mut().zip(bias).for_each(|(v, b)| *v += b);
        }
    }
}

/// `tile[k][m] (+)= Σ_c Σ_t w[(c·taps + t)·NB + m] · x[c·len + offsets[t] + k·stride]` over
/// `chunk` input channels, adding to `tile` when `add`.
///
/// # Safety
/// As [`kernel`].
#[inline(always)]
unsafe fn microkernel(stride: usize, w: *const f32, x: *const f32, chunk: (usize, usize), offsets: &[usize], add: bool, tile: &mut [[f32; NB]; PR]) {
    match stride {
        1 => kernel::<1>(w, x, chunk, offsets, add, tile),
        _ => kernel::<2>(w, x, chunk, offsets, add, tile),
    }
}

/// [`microkernel`] for stride `S`.
///
/// # Safety
/// The CPU must have AVX2 and FMA; `w` holds `chunk.0 · offsets.len() · NB` floats and every read
/// of `x` lies within its buffer.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn kernel<const S: usize>(w: *const f32, x: *const f32, (chunk, len): (usize, usize), offsets: &[usize], add: bool, tile: &mut [[f32; NB]; PR]) {
    use std::arch::x86_64::*;
    let z = _mm256_setzero_ps();
    let mut acc = [[z; 2]; PR];
    if add {
        for (a, row) in acc.iter_mut().zip(tile.iter()) {
            *a = [_mm256_loadu_ps(row.as_ptr()), _mm256_loadu_ps(row.as_ptr().add(8))];
        }
    }
    let mut wp = w;
    for c in 0..chunk {
        let xc = x.add(c * len);
        for &off in offsets {
            let xp = xc.add(off);
            let (w0, w1) = (_mm256_loadu_ps(wp), _mm256_loadu_ps(wp.add(8)));
            wp = wp.add(NB);
            for (k, a) in acc.iter_mut().enumerate() {
                let b = _mm256_broadcast_ss(&*xp.add(k * S));
                a[0] = _mm256_fmadd_ps(b, w0, a[0]);
                a[1] = _mm256_fmadd_ps(b, w1, a[1]);
            }
        }
    }
    for (row, a) in tile.iter_mut().zip(acc) {
        _mm256_storeu_ps(row.as_mut_ptr(), a[0]);
        _mm256_storeu_ps(row.as_mut_ptr().add(8), a[1]);
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn kernel<const S: usize>(_: *const f32, _: *const f32, _: (usize, usize), _: &[usize], _: bool, _: &mut [[f32; NB]; PR]) {
    unreachable!("the broadcast convolution runs only on x86-64 with AVX2+FMA")
}

#[cfg(test)]
mod tests {
    use super::super::direct::check::{geom, matches_im2col, strided};
    use super::*;

    /// Against the im2col forward: a 3-channel first layer, odd widths and heights, channel
    /// counts that are not a multiple of NB, more channels than one CHUNK, 5×5, groups, several
    /// images, maps smaller than a tile, both strides, with and without bias and SiLU.
    #[test]
    fn broadcast_convolution_matches_the_im2col_forward() {
        if !simd::has_avx2_fma() {
            eprintln!("skipped: this CPU lacks AVX2+FMA");
            return;
        }
        let cases = [
            strided(geom(1, 3, 64, 64, 16, 3, 1)),
            geom(1, 3, 13, 11, 16, 3, 1),
            geom(1, 16, 13, 11, 12, 3, 1),
            geom(2, 40, 9, 30, 21, 3, 1),
            geom(1, 20, 17, 19, 8, 5, 1),
            geom(2, 32, 10, 12, 10, 3, 2),
            geom(1, 64, 40, 40, 80, 3, 1),
            geom(3, 16, 1, 1, 4, 3, 1),
            strided(geom(1, 16, 13, 11, 12, 3, 1)),
            strided(geom(2, 32, 16, 16, 20, 3, 2)),
            strided(geom(1, 16, 12, 15, 8, 5, 1)),
            strided(geom(1, 48, 41, 39, 33, 3, 1)),
            strided(geom(2, 5, 3, 2, 17, 3, 1)),
        ];
        assert!(cases.iter().all(shape_fits));
        matches_im2col(&cases, forward);
    }
}
