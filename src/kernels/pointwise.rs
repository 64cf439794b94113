//! Inference's 1×1 convolution over the channel concatenation of several maps, without making the
//! concatenation: C2f's, C3's and SPPF's last convolution (`cv2(cat(y, m₁(y), …))`) read their
//! parts where they lie. Per tile, one GEMM per part with its columns of the weights, accumulating
//! into the output tile (still in cache), then bias and SiLU. The concatenation it replaces was a
//! single-threaded copy of every part (`perf`: 3–4% of yolov8n's forward at 640, with the neck's).
//!
//! A part may also be a map still to be upsampled (nearest, by an integer `scale`), as the neck's
//! `Upsample → Concat → C2f` has it: a 1×1 convolution commutes with that upsampling, so the part's
//! GEMM runs at its own size (`scale²` times fewer products) and each of its outputs is added to
//! the `scale × scale` outputs it covers.

use rayon::prelude::*;

use super::conv::{epilogue, mm, store_images, with_scratch, ConvGeom, Mat, Scratch};
use super::SharedMut;

/// One input of [`forward`]: values `[n, c, h / scale, w / scale]`, to be upsampled by `scale`.
#[derive(Clone, Copy)]
pub struct Part<'a> {
    pub x: &'a [f32],
    pub c: usize,
    pub scale: usize,
}

/// `act(conv1x1(cat(upsampled parts)) + bias)`: `g` the convolution of the concatenation (1×1,
/// stride 1, one group, f32; `g.ci` the sum of the parts' channels, `g.h` and `g.w` multiples of
/// every scale), `weight` `[co, ci]`.
pub fn forward(g: &ConvGeom, parts: &[Part], weight: &[f32], bias: Option<&[f32]>, silu: bool) -> Vec<f32> {
    let ci: usize = parts.iter().map(|p| p.c).sum();
    let scaled_fits = parts.iter().all(|p| p.scale >= 1 && g.h % p.scale == 0 && g.w % p.scale == 0);
    assert!(g.pointwise() && g.groups == 1 && ci == g.ci && scaled_fits, "pointwise parts {:?} for {g:?}", parts.iter().map(|p| (p.c, p.scale)).collect::<Vec<_>>());
    // each part's first weight column
    let columns: Vec<usize> = parts.iter().scan(0, |c0, p| Some(std::mem::replace(c0, *c0 + p.c))).collect();
    let (p, co, k) = (g.ho() * g.wo(), g.co, g.ci);
    let bias_of = |o: usize| bias.map_or(0.0, |b| b[o]);
    let mut y: Vec<f32> = Vec::with_capacity(g.out_len());
    let yp = SharedMut(y.as_mut_ptr());
    g.units().into_par_iter().for_each(|u| with_scratch(|Scratch { col, dyt: out, .. }| {
        let (p0, tile, cols) = (u.rows.0 * g.wo(), (u.rows.1 - u.rows.0) * g.wo(), u.cols(g.wo()));
        // SAFETY: units write disjoint (image, row range) blocks of y; views stay in bounds.
        unsafe {
            if u.images == 1 {
                let dst = yp.at(u.b * co * p + p0);
                // the parts at full size first: the first one's GEMM sets the tile
                let mut set = false;
                for (part, &c0) in parts.iter().zip(&columns).filter(|(part, _)| part.scale == 1) {
                    let rhs = Mat(part.x[u.b * part.c * p + p0..].as_ptr(), p as isize, 1);
                    mm(co, tile, part.c, (dst, p as isize, 1), set, Mat(weight[c0..].as_ptr(), k as isize, 1), rhs);
                    set = true;
                }
                if !set {
                    for o in 0..co {
                        std::slice::from_raw_parts_mut(dst.add(o * p), tile).fill(0.0);
                    }
                }
                for (part, &c0) in parts.iter().zip(&columns).filter(|(part, _)| part.scale > 1) {
                    add_upsampled(g, (part, c0), weight, (u.b, u.rows), col, |o, r| dst.add(o * p + (r - u.rows.0) * g.wo()));
                }
                if bias.is_some() || silu {
                    for o in 0..co {
                        epilogue(std::slice::from_raw_parts_mut(dst.add(o * p), tile), bias_of(o), silu);
                    }
                }
            } else {
                // Several small images: their parts side by side in one column matrix (upsampled
                // there), one GEMM.
                col.resize(k * cols, 0.0);
                for i in 0..u.images {
                    for (part, &c0) in parts.iter().zip(&columns) {
                        let (s, low) = (part.scale, p / (part.scale * part.scale));
                        for ch in 0..part.c {
                            let src = &part.x[((u.b + i) * part.c + ch) * low..][..low];
                            upsample_into(&mut col[(c0 + ch) * cols + i * p..][..p], src, (g.w, s));
                        }
                    }
                }
                out.resize(co * cols, 0.0);
                mm(co, cols, k, (out.as_mut_ptr(), cols as isize, 1), false, Mat(weight.as_ptr(), k as isize, 1), Mat(col.as_ptr(), cols as isize, 1));
                store_images(out, (u, p), |i, o| yp.at(((u.b + i) * co + o) * p), (bias.map(|_| bias_of), silu));
            }
        }
    }));
    // SAFETY: the units cover every (image, channel, output pixel) and have all been written.
    unsafe { y.set_len(g.out_len()) };
    y
}

/// Adds `W_part · part` of image `b`, computed at the part's size into `tmp`, to output rows
/// `rows` (row r of channel o at `dst(o, r)`), each value to the `scale × scale` outputs it covers.
///
/// # Safety
/// Every `dst(o, r)` must be valid for `g.w` writes that no other thread makes.
unsafe fn add_upsampled(g: &ConvGeom, (part, c0): (&Part, usize), weight: &[f32], (b, rows): (usize, (usize, usize)), tmp: &mut Vec<f32>, dst: impl Fn(usize, usize) -> *mut f32) {
    let (s, co) = (part.scale, g.co);
    let (lw, low) = (g.w / s, (g.h / s) * (g.w / s));
    let (lr0, lr1) = (rows.0 / s, (rows.1 - 1) / s + 1);
    let lt = (lr1 - lr0) * lw;
    tmp.resize(co * lt, 0.0);
    let rhs = Mat(part.x[(b * part.c) * low + lr0 * lw..].as_ptr(), low as isize, 1);
    mm(co, lt, part.c, (tmp.as_mut_ptr(), lt as isize, 1), false, Mat(weight[c0..].as_ptr(), g.ci as isize, 1), rhs);
    for o in 0..co {
        for r in rows.0..rows.1 {
            let src = &tmp[o * lt + (r / s - lr0) * lw..][..lw];
            let row = std::slice::from_raw_parts_mut(dst(o, r), g.w);
            for (d, &v) in row.chunks_exact_mut(s).zip(src) {
                d.iter_mut().for_each(|d| *d += v);
            }
        }
    }
}

/// `dst` (`[h, w]`) = `src` (`[h / s, w / s]`) upsampled by `s` (nearest).
fn upsample_into(dst: &mut [f32], src: &[f32], (w, s): (usize, usize)) {
    for (r, row) in dst.chunks_exact_mut(w).enumerate() {
        let src = &src[(r / s) * (w / s)..][..w / s];
        for (d, &v) in row.chunks_exact_mut(s).zip(src) {
            d.fill(v);
        }
    }
}
