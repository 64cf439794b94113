//! Inference's 1×1 convolution over the channel concatenation of several maps, without making the
//! concatenation: C2f's, C3's and SPPF's last convolution (`cv2(cat(y, m₁(y), …))`) read their
//! parts where they lie. Per tile, one GEMM per part with its columns of the weights, accumulating
//! into the output tile (still in cache), then bias and SiLU. The concatenation it replaces was a
//! single-threaded copy of every part (`perf`: 3–4% of yolov8n's forward at 640, with the neck's).

use rayon::prelude::*;

use super::conv::{epilogue, mm, store_images, with_scratch, ConvGeom, Mat, Scratch};
use super::SharedMut;

/// `act(conv1x1(cat(parts)) + bias)`: `parts` are `(values [n, c, h, w], c)`, `g` the
/// convolution of their concatenation (1×1, stride 1, one group, f32; `g.ci` the sum of the `c`),
/// `weight` `[co, ci]`.
pub fn forward(g: &ConvGeom, parts: &[(&[f32], usize)], weight: &[f32], bias: Option<&[f32]>, silu: bool) -> Vec<f32> {
    let ci: usize = parts.iter().map(|&(_, c)| c).sum();
    assert!(g.pointwise() && g.groups == 1 && ci == g.ci, "pointwise parts {:?} for {g:?}", parts.iter().map(|p| p.1).collect::<Vec<_>>());
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
                let mut c0 = 0;
                for (j, &(x, c)) in parts.iter().enumerate() {
                    let rhs = Mat(x[u.b * c * p + p0..].as_ptr(), p as isize, 1);
                    mm(co, tile, c, (dst, p as isize, 1), j > 0, Mat(weight[c0..].as_ptr(), k as isize, 1), rhs);
                    c0 += c;
                }
                if bias.is_some() || silu {
                    for o in 0..co {
                        epilogue(std::slice::from_raw_parts_mut(dst.add(o * p), tile), bias_of(o), silu);
                    }
                }
            } else {
                // Several small images: their parts side by side in one column matrix, one GEMM.
                col.resize(k * cols, 0.0);
                for i in 0..u.images {
                    let mut c0 = 0;
                    for &(x, c) in parts {
                        for ch in 0..c {
                            col[(c0 + ch) * cols + i * p..][..p].copy_from_slice(&x[((u.b + i) * c + ch) * p..][..p]);
                        }
                        c0 += c;
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
