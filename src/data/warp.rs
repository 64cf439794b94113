//! The mosaic's geometric warp (Ultralytics' `random_perspective` through OpenCV's warpAffine /
//! warpPerspective: bilinear, constant border 114), inverse-mapped at f64 positions with f32
//! weights, as OpenCV 5 interpolates. On CPUs with AVX2 an affine warp's rows go eight pixels at
//! a time wherever all eight read four neighbours inside the source, with the same arithmetic.

use image::{Rgb, RgbImage};

use super::augment::{Mat3, FILL};

fn invert(m: &Mat3) -> Option<Mat3> {
    let det = m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1]) - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
        + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0]);
    if det.abs() < 1e-12 {
        return None;
    }
    let c = |r0: usize, c0: usize, r1: usize, c1: usize| m[r0][c0] * m[r1][c1] - m[r0][c1] * m[r1][c0];
    Some([
        [c(1, 1, 2, 2) / det, -c(0, 1, 2, 2) / det, c(0, 1, 1, 2) / det],
        [-c(1, 0, 2, 2) / det, c(0, 0, 2, 2) / det, -c(0, 0, 1, 2) / det],
        [c(1, 0, 2, 1) / det, -c(0, 0, 2, 1) / det, c(0, 0, 1, 1) / det],
    ])
}

/// Inverse-mapped bilinear warp (OpenCV warpAffine/warpPerspective, constant border 114;
/// neighbours outside the source read as the border).
pub fn warp(img: &RgbImage, m: &Mat3, out_w: u32, out_h: u32, projective: bool) -> RgbImage {
    #[cfg(target_arch = "x86_64")]
    let vector = !projective && crate::kernels::simd::has_avx2_fma();
    #[cfg(not(target_arch = "x86_64"))]
    let vector = false;
    warp_with(img, m, (out_w, out_h), projective, vector)
}

/// [`warp`], with the AVX2 rows or without.
fn warp_with(img: &RgbImage, m: &Mat3, (out_w, out_h): (u32, u32), projective: bool, vector: bool) -> RgbImage {
    let mut out = RgbImage::from_pixel(out_w, out_h, Rgb([FILL; 3]));
    let Some(inv) = invert(m) else { return out };
    let src = Source { px: img.as_raw(), w: img.width() as i64, h: img.height() as i64 };
    let row_len = out_w as usize * 3;
    for (y, row) in out.chunks_exact_mut(row_len).enumerate() {
        let fy = y as f64;
        let base = [inv[0][1] * fy + inv[0][2], inv[1][1] * fy + inv[1][2], inv[2][1] * fy + inv[2][2]];
        #[allow(unused_mut)]
        let mut done = 0;
        #[cfg(target_arch = "x86_64")]
        if vector {
            // SAFETY: the CPU has AVX2 (and FMA, unused: the arithmetic is the scalar one's).
            done = unsafe { avx2::affine_row(&src, &inv, base, row) };
        }
        for (x, px) in row.chunks_exact_mut(3).enumerate().skip(done) {
            src.warp_pixel(&inv, base, x, projective, px);
        }
    }
    out
}

/// The source image's bytes and size.
struct Source<'a> {
    px: &'a [u8],
    w: i64,
    h: i64,
}

impl Source<'_> {
    /// Output pixel `x` of a row whose position terms are `base` (the y terms of the inverse
    /// map's three rows); positions with no neighbour inside leave `px` as it is.
    #[inline(always)]
    fn warp_pixel(&self, inv: &Mat3, [bx, by, bz]: [f64; 3], x: usize, projective: bool, px: &mut [u8]) {
        let fx = x as f64;
        let (mut sx, mut sy) = (inv[0][0] * fx + bx, inv[1][0] * fx + by);
        if projective {
            let z = inv[2][0] * fx + bz;
            if z.abs() < 1e-12 {
                return;
            }
            sx /= z;
            sy /= z;
        }
        if !(sx > -1.0 && sy > -1.0 && sx < self.w as f64 && sy < self.h as f64) {
            return;
        }
        // sx, sy > -1 here, so shifting by one makes the integer cast a floor (no libm call).
        let (x0, y0) = ((sx + 1.0) as i64 - 1, (sy + 1.0) as i64 - 1);
        let (ax, ay) = ((sx - x0 as f64) as f32, (sy - y0 as f64) as f32);
        let w = [(1.0 - ax) * (1.0 - ay), ax * (1.0 - ay), (1.0 - ax) * ay, ax * ay];
        if x0 >= 0 && y0 >= 0 && x0 + 1 < self.w && y0 + 1 < self.h {
            // All four neighbours inside: the common case, no border checks.
            let i0 = ((y0 * self.w + x0) * 3) as usize;
            blend_inside(self.px, i0, i0 + (self.w * 3) as usize, w, px);
        } else {
            blend_at_border(self.px, (self.w, self.h), (x0, y0), w, px);
        }
    }
}

/// Bilinear blend of the 2×2 neighbours whose top row starts at byte `i0` and bottom row at
/// `i1`: per channel ((tl·w0 + tr·w1) + bl·w2) + br·w3, rounded half up.
#[inline(always)]
fn blend_inside(src: &[u8], i0: usize, i1: usize, w: [f32; 4], px: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    if i1 + 7 <= src.len() {
        // SAFETY: SSE2 is part of x86-64; the four 4-byte loads end at i1 + 7 ≤ len, checked above.
        unsafe { blend_sse2(src.as_ptr(), i0, i1, w, px) };
        return;
    }
    let (top, bot) = (&src[i0..i0 + 6], &src[i1..i1 + 6]);
    for c in 0..3 {
        let v = top[c] as f32 * w[0] + top[3 + c] as f32 * w[1] + bot[c] as f32 * w[2] + bot[3 + c] as f32 * w[3];
        px[c] = (v + 0.5) as u8;
    }
}

/// The three channels of [`blend_inside`] as lanes of one vector (the fourth lane is ignored):
/// the same multiplications and additions in the same order, so the same bytes.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn blend_sse2(src: *const u8, i0: usize, i1: usize, w: [f32; 4], px: &mut [u8]) {
    use std::arch::x86_64::*;
    let zero = _mm_setzero_si128();
    let load = |at: usize| {
        let bytes = _mm_cvtsi32_si128((src.add(at) as *const i32).read_unaligned());
        _mm_cvtepi32_ps(_mm_unpacklo_epi16(_mm_unpacklo_epi8(bytes, zero), zero))
    };
    let v = _mm_add_ps(
        _mm_add_ps(_mm_add_ps(_mm_mul_ps(load(i0), _mm_set1_ps(w[0])), _mm_mul_ps(load(i0 + 3), _mm_set1_ps(w[1]))), _mm_mul_ps(load(i1), _mm_set1_ps(w[2]))),
        _mm_mul_ps(load(i1 + 3), _mm_set1_ps(w[3])),
    );
    let q = _mm_cvttps_epi32(_mm_add_ps(v, _mm_set1_ps(0.5)));
    let bytes = _mm_cvtsi128_si32(_mm_packus_epi16(_mm_packs_epi32(q, zero), zero)).to_le_bytes();
    px.copy_from_slice(&bytes[..3]);
}

/// Bilinear blend where some of the four neighbours fall outside (they read as 114).
fn blend_at_border(src: &[u8], (sw, sh): (i64, i64), (x0, y0): (i64, i64), w: [f32; 4], px: &mut [u8]) {
    let at = |xx: i64, yy: i64, c: usize| -> f32 {
        if xx < 0 || yy < 0 || xx >= sw || yy >= sh {
            FILL as f32
        } else {
            src[((yy * sw + xx) * 3) as usize + c] as f32
        }
    };
    for (c, p) in px.iter_mut().enumerate() {
        let v =
            at(x0, y0, c) * w[0] + at(x0 + 1, y0, c) * w[1] + at(x0, y0 + 1, c) * w[2] + at(x0 + 1, y0 + 1, c) * w[3];
        *p = (v + 0.5).clamp(0.0, 255.0) as u8;
    }
}


#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{Mat3, Source};

    /// The affine warp of one output row, eight pixels at a time, for every group whose
    /// pixels all have their four neighbours inside the source (and away from its last byte,
    /// which the 4-byte gathers would read past); returns how many leading pixels it wrote,
    /// the caller doing the rest pixel by pixel. The same arithmetic as `Source::warp_pixel`
    /// (f64 positions, f32 weights and blend, no fused multiply-adds), so the same bytes.
    ///
    /// # Safety
    /// The CPU must have AVX2.
    #[target_feature(enable = "avx2")]
    pub unsafe fn affine_row(src: &Source, inv: &Mat3, [bx, by, _]: [f64; 3], row: &mut [u8]) -> usize {
        let n = row.len() / 3;
        let (sw, sh) = (src.w as i32, src.h as i32);
        let last = src.px.len() as i64 - 7;
        let mut x = 0;
        while x + 8 <= n {
            let Some((ix, iy, ax, ay)) = positions(inv, (bx, by), x, (sw, sh)) else { break };
            let at = _mm256_add_epi32(_mm256_mullo_epi32(iy, _mm256_set1_epi32(sw)), ix);
            let at = _mm256_add_epi32(at, _mm256_add_epi32(at, at)); // ·3: byte offsets
            let mut offsets = [0i32; 8];
            _mm256_storeu_si256(offsets.as_mut_ptr() as *mut __m256i, at);
            if offsets.iter().any(|&o| o as i64 + 3 * sw as i64 > last) {
                break;
            }
            let base = src.px.as_ptr() as *const i32;
            let three = _mm256_set1_epi32(3);
            let below = _mm256_add_epi32(at, _mm256_set1_epi32(3 * sw));
            let tl = _mm256_i32gather_epi32::<1>(base, at);
            let tr = _mm256_i32gather_epi32::<1>(base, _mm256_add_epi32(at, three));
            let bl = _mm256_i32gather_epi32::<1>(base, below);
            let br = _mm256_i32gather_epi32::<1>(base, _mm256_add_epi32(below, three));
            let one = _mm256_set1_ps(1.0);
            let (bx_, by_) = (_mm256_sub_ps(one, ax), _mm256_sub_ps(one, ay));
            let w = [_mm256_mul_ps(bx_, by_), _mm256_mul_ps(ax, by_), _mm256_mul_ps(bx_, ay), _mm256_mul_ps(ax, ay)];
            let mut out = _mm256_setzero_si256();
            for c in 0..3 {
                let v = _mm256_add_ps(_mm256_mul_ps(channel(tl, c), w[0]), _mm256_mul_ps(channel(tr, c), w[1]));
                let v = _mm256_add_ps(_mm256_add_ps(v, _mm256_mul_ps(channel(bl, c), w[2])), _mm256_mul_ps(channel(br, c), w[3]));
                let q = _mm256_cvttps_epi32(_mm256_add_ps(v, _mm256_set1_ps(0.5)));
                out = _mm256_or_si256(out, _mm256_sllv_epi32(q, _mm256_set1_epi32(8 * c)));
            }
            // 0x00BBGGRR per lane → 12 packed bytes per 128-bit half
            let packed = _mm256_shuffle_epi8(out, _mm256_setr_epi8(0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14, -1, -1, -1, -1, 0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14, -1, -1, -1, -1));
            let dst = row.as_mut_ptr().add(3 * x);
            for (half, at) in [(_mm256_castsi256_si128(packed), 0), (_mm256_extracti128_si256::<1>(packed), 12)] {
                _mm_storel_epi64(dst.add(at) as *mut __m128i, half);
                (dst.add(at + 8) as *mut i32).write_unaligned(_mm_extract_epi32::<2>(half));
            }
            x += 8;
        }
        x
    }

    /// Source positions of output pixels `x..x + 8` of a row as (whole x, whole y, fraction x,
    /// fraction y), or None unless all eight have their four neighbours inside.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn positions(inv: &Mat3, (bx, by): (f64, f64), x: usize, (sw, sh): (i32, i32)) -> Option<(__m256i, __m256i, __m256, __m256)> {
        let at = _mm256_set1_pd(x as f64);
        let fx = [_mm256_add_pd(_mm256_setr_pd(0.0, 1.0, 2.0, 3.0), at), _mm256_add_pd(_mm256_setr_pd(4.0, 5.0, 6.0, 7.0), at)];
        let (ix, ax, x_in) = axis(inv[0][0], bx, fx, sw);
        let (iy, ay, y_in) = axis(inv[1][0], by, fx, sh);
        (x_in && y_in).then_some((ix, iy, ax, ay))
    }

    /// One coordinate `m·fx + b` of eight pixels (two roundings, as the scalar code): its floor
    /// as i32, its fraction as f32, and whether 0 ≤ floor and floor + 1 < `limit` for all eight.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn axis(m: f64, b: f64, fx: [__m256d; 2], limit: i32) -> (__m256i, __m256, bool) {
        let (m, b, top) = (_mm256_set1_pd(m), _mm256_set1_pd(b), _mm256_set1_pd((limit - 1) as f64));
        let (s0, s1) = (_mm256_add_pd(_mm256_mul_pd(m, fx[0]), b), _mm256_add_pd(_mm256_mul_pd(m, fx[1]), b));
        let (f0, f1) = (_mm256_floor_pd(s0), _mm256_floor_pd(s1));
        let frac = _mm256_set_m128(_mm256_cvtpd_ps(_mm256_sub_pd(s1, f1)), _mm256_cvtpd_ps(_mm256_sub_pd(s0, f0)));
        let whole = _mm256_set_m128i(_mm256_cvttpd_epi32(f1), _mm256_cvttpd_epi32(f0));
        // 0 ≤ s < limit − 1 is 0 ≤ floor(s) and floor(s) + 1 < limit
        let zero = _mm256_setzero_pd();
        let ok0 = _mm256_and_pd(_mm256_cmp_pd::<_CMP_GE_OQ>(s0, zero), _mm256_cmp_pd::<_CMP_LT_OQ>(s0, top));
        let ok1 = _mm256_and_pd(_mm256_cmp_pd::<_CMP_GE_OQ>(s1, zero), _mm256_cmp_pd::<_CMP_LT_OQ>(s1, top));
        (whole, frac, _mm256_movemask_pd(_mm256_and_pd(ok0, ok1)) == 0xF)
    }

    /// Byte `c` of each lane, as f32.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn channel(v: __m256i, c: i32) -> __m256 {
        _mm256_cvtepi32_ps(_mm256_and_si256(_mm256_srlv_epi32(v, _mm256_set1_epi32(8 * c)), _mm256_set1_epi32(0xFF)))
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    use super::super::augment::{perspective_matrix, AugConfig};
    use super::*;

    /// The AVX2 rows give the pixel-by-pixel bytes, on maps that shrink, enlarge, rotate and
    /// cross the border (where both paths meet within a row).
    #[test]
    fn vector_rows_equal_the_pixel_by_pixel_warp() {
        if !crate::kernels::simd::has_avx2_fma() {
            eprintln!("this CPU lacks AVX2: only the pixel-by-pixel warp runs");
            return;
        }
        let src = RgbImage::from_fn(301, 203, |x, y| Rgb([(x * 7 + y) as u8, (y * 13 + x * x) as u8, (x ^ (y * 3)) as u8]));
        for seed in 0..24u64 {
            let mut r = StdRng::seed_from_u64(seed);
            let cfg = AugConfig { degrees: 30.0, shear: 8.0, scale: 0.9, translate: 0.3, ..AugConfig::default() };
            let (m, _) = perspective_matrix(301.0, 203.0, 160.0, &cfg, &mut r);
            assert_eq!(warp_with(&src, &m, (160, 160), false, true), warp_with(&src, &m, (160, 160), false, false), "seed {seed}");
        }
    }

    /// OpenCV's own warps (`tests/data/warp`, written by scripts/warp_reference.py with the
    /// reference environment's OpenCV 5.1, whose warps interpolate at float positions as ours
    /// do): six affine and two perspective maps with borders, enlarging and shrinking. Measured:
    /// 0, 0, 0, 1, 0, 1, 2, 0 bytes of 12288 differ, each by one level (OpenCV computes the
    /// positions in f32 with fused multiply-adds, and the last 16 pixels of a row otherwise).
    #[test]
    fn warp_matches_opencv() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/warp");
        let reference: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("warp_ref.json")).unwrap()).unwrap();
        let src = RgbImage::from_fn(97, 61, |x, y| Rgb([((7 * x + y) % 256) as u8, ((13 * y + x * x) % 256) as u8, ((x ^ (3 * y)) % 256) as u8]));
        let size = reference["size"].as_u64().unwrap() as u32;
        for case in reference["cases"].as_array().unwrap() {
            let rows: Vec<Vec<f64>> = serde_json::from_value(case["matrix"].clone()).unwrap();
            let m: Mat3 = std::array::from_fn(|i| std::array::from_fn(|j| rows[i][j]));
            let want = image::open(dir.join(case["png"].as_str().unwrap())).unwrap().to_rgb8();
            let got = warp(&src, &m, size, size, case["perspective"].as_bool().unwrap());
            assert!(want.as_raw().iter().filter(|&&v| v != FILL).count() > 1000, "{}: mostly border", case["png"]);
            let differ = got.as_raw().iter().zip(want.as_raw()).filter(|(a, b)| a != b).count();
            let worst = got.as_raw().iter().zip(want.as_raw()).map(|(a, b)| a.abs_diff(*b)).max().unwrap();
            assert!(differ <= 4 && worst <= 1, "{}: {differ} bytes differ from OpenCV's, by up to {worst}", case["png"]);
        }
    }

    #[test]
    fn warp_blends_as_the_scalar_formula() {
        // The vector blend against the per-channel formula, for affine and projective maps with
        // parts of the output off the source (border blends and untouched gray included).
        let src = RgbImage::from_fn(97, 61, |x, y| Rgb([(x * 7 + y) as u8, (y * 13 + x * x) as u8, (x ^ (y * 3)) as u8]));
        let (sw, sh) = (97i64, 61i64);
        let raw = src.as_raw();
        for seed in 0..12u64 {
            let mut r = StdRng::seed_from_u64(seed);
            let cfg = AugConfig { perspective: if seed % 2 == 0 { 0.0 } else { 0.0005 }, degrees: 20.0, shear: 5.0, ..AugConfig::default() };
            let (m, _) = perspective_matrix(97.0, 61.0, 80.0, &cfg, &mut r);
            let projective = cfg.perspective != 0.0;
            let out = warp(&src, &m, 80, 80, projective);
            let inv = invert(&m).unwrap();
            let mut blended = 0;
            for (x, y, p) in out.enumerate_pixels() {
                let (fx, fy) = (x as f64, y as f64);
                let (mut sx, mut sy) = (inv[0][0] * fx + (inv[0][1] * fy + inv[0][2]), inv[1][0] * fx + (inv[1][1] * fy + inv[1][2]));
                if projective {
                    let z = inv[2][0] * fx + (inv[2][1] * fy + inv[2][2]);
                    (sx, sy) = (sx / z, sy / z);
                }
                let (x0, y0) = (sx.floor() as i64, sy.floor() as i64);
                if !(x0 >= 0 && y0 >= 0 && x0 + 1 < sw && y0 + 1 < sh) {
                    continue;
                }
                let (ax, ay) = ((sx - x0 as f64) as f32, (sy - y0 as f64) as f32);
                let w = [(1.0 - ax) * (1.0 - ay), ax * (1.0 - ay), (1.0 - ax) * ay, ax * ay];
                let at = |xx: i64, yy: i64, c: usize| raw[((yy * sw + xx) * 3) as usize + c] as f32;
                for c in 0..3 {
                    let v = at(x0, y0, c) * w[0] + at(x0 + 1, y0, c) * w[1] + at(x0, y0 + 1, c) * w[2] + at(x0 + 1, y0 + 1, c) * w[3];
                    assert_eq!(p[c], (v + 0.5) as u8, "seed {seed} at ({x}, {y}) channel {c}");
                }
                blended += 1;
            }
            assert!(blended > 1000, "seed {seed}: {blended} pixels inside");
        }
    }

}
