//! The HSV augmentation as OpenCV computes it on 8-bit images (Ultralytics' `augment_hsv`):
//! RGB → HSV with OpenCV's integer arithmetic and rounded reciprocal tables, the gains through
//! lookup tables, HSV → RGB as OpenCV's vectorised path does it (f32 with fused multiply-adds,
//! truncated to u8). On CPUs with AVX2 eight pixels go through at once, with the same operations
//! in the same order, so the same bytes; elsewhere pixel by pixel with a small colour cache.

use image::RgbImage;

/// Applies fixed HSV gains `r` (hue as a fraction of the circle).
pub fn apply_hsv(img: &mut RgbImage, r: [f64; 3]) {
    let luts = Luts::new(r);
    let px: &mut [u8] = img;
    #[cfg(target_arch = "x86_64")]
    let px = if crate::kernels::simd::has_avx2_fma() {
        // SAFETY: the CPU has AVX2 and FMA.
        let done = unsafe { avx2::apply(px, &luts) };
        &mut px[3 * done..]
    } else {
        px
    };
    apply_cached(px, &luts);
}

/// The gains as lookup tables: hue (0..180), saturation and value (0..255).
struct Luts {
    h: [u8; 256],
    s: [u8; 256],
    v: [u8; 256],
}

impl Luts {
    fn new(r: [f64; 3]) -> Luts {
        let h = std::array::from_fn(|x| (x as f64 + r[0] * 180.0).rem_euclid(180.0) as u8);
        let gain = |g: f64| -> [u8; 256] { std::array::from_fn(|x| (x as f64 * (1.0 + g)).clamp(0.0, 255.0) as u8) };
        let (mut s, v) = (gain(r[1]), gain(r[2]));
        // Gray stays gray: zero saturation must not gain any (Ultralytics 8.3.79+).
        s[0] = 0;
        Luts { h, s, v }
    }

    /// One pixel: RGB → HSV, the tables, HSV → RGB.
    fn apply(&self, rgb: [u8; 3]) -> [u8; 3] {
        let [h, s, v] = rgb_to_hsv(hsv_tables(), rgb);
        hsv_to_rgb([self.h[h as usize], self.s[s as usize], self.v[v as usize]])
    }
}

/// Pixel by pixel. Colours repeat (flat backgrounds, the gray border): a small direct-mapped cache
/// of colour → result skips both conversions for most pixels.
fn apply_cached(px: &mut [u8], luts: &Luts) {
    const SLOTS: usize = 1 << 12;
    let (mut keys, mut vals) = ([u32::MAX; SLOTS], [[0u8; 3]; SLOTS]);
    for p in px.chunks_exact_mut(3) {
        let rgb = [p[0], p[1], p[2]];
        let key = u32::from_le_bytes([rgb[0], rgb[1], rgb[2], 0]);
        let slot = (key.wrapping_mul(0x9E37_79B1) >> (32 - 12)) as usize;
        if keys[slot] != key {
            keys[slot] = key;
            vals[slot] = luts.apply(rgb);
        }
        p.copy_from_slice(&vals[slot]);
    }
}

const HSV_SHIFT: u32 = 12;

/// OpenCV's rounded reciprocal tables: (255 << 12) / v and (180 << 12) / (6·diff).
fn hsv_tables() -> &'static ([i32; 256], [i32; 256]) {
    static TABLES: std::sync::OnceLock<([i32; 256], [i32; 256])> = std::sync::OnceLock::new();
    TABLES.get_or_init(|| {
        let (mut sdiv, mut hdiv) = ([0i32; 256], [0i32; 256]);
        for i in 1..256 {
            sdiv[i] = ((255 << HSV_SHIFT) as f64 / i as f64).round_ties_even() as i32;
            hdiv[i] = ((180 << HSV_SHIFT) as f64 / (6.0 * i as f64)).round_ties_even() as i32;
        }
        (sdiv, hdiv)
    })
}

/// OpenCV's 8-bit RGB → HSV (H in 0..180, S and V in 0..255), integer arithmetic with
/// its rounded reciprocal tables.
fn rgb_to_hsv((sdiv, hdiv): &([i32; 256], [i32; 256]), [r, g, b]: [u8; 3]) -> [u8; 3] {
    let (r, g, b) = (r as i32, g as i32, b as i32);
    let v = r.max(g).max(b);
    let diff = v - r.min(g).min(b);
    let round = 1 << (HSV_SHIFT - 1);
    let s = (diff * sdiv[v as usize] + round) >> HSV_SHIFT;
    let h = if v == r {
        g - b
    } else if v == g {
        b - r + 2 * diff
    } else {
        r - g + 4 * diff
    };
    let mut h = (h * hdiv[diff as usize] + round) >> HSV_SHIFT;
    if h < 0 {
        h += 180;
    }
    [h as u8, s as u8, v as u8]
}

/// Per hue sector (0..6), which of [`hsv_to_rgb`]'s four values is red, green and blue.
const SECTORS: [[usize; 3]; 6] = [[0, 3, 1], [2, 0, 1], [1, 0, 3], [1, 2, 0], [3, 1, 0], [0, 1, 2]];

/// OpenCV's 8-bit HSV → RGB as its vectorised path computes it (which is what whole
/// images go through): float maths with fused multiply-adds, then truncation to u8.
pub fn hsv_to_rgb([h, s, v]: [u8; 3]) -> [u8; 3] {
    let (s, v) = (s as f32 * (1.0 / 255.0), v as f32 * (1.0 / 255.0));
    let hh = h as f32 * (6.0 / 180.0);
    let sector = hh as u32; // hh >= 0: the cast truncates without a libm call
    let f = hh - sector as f32;
    let tab = [v, v * (1.0 - s), v * f32::mul_add(-s, f, 1.0), v * f32::mul_add(-s, 1.0 - f, 1.0)];
    let [ri, gi, bi] = SECTORS[sector as usize % 6];
    let q = |x: f32| (x * 255.0).clamp(0.0, 255.0) as u8;
    [q(tab[ri]), q(tab[gi]), q(tab[bi])]
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{hsv_tables, Luts, HSV_SHIFT, SECTORS};

    /// The tables as i32 for gathers.
    fn widen(t: &[u8; 256]) -> [i32; 256] {
        std::array::from_fn(|i| t[i] as i32)
    }

    /// Applies the gains to whole groups of eight pixels of `px` (RGB bytes) and returns how
    /// many pixels it did; the rest (fewer than nine) is left to the caller.
    ///
    /// # Safety
    /// The CPU must have AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn apply(px: &mut [u8], luts: &Luts) -> usize {
        let (sdiv, hdiv) = hsv_tables();
        let (lh, ls, lv) = (widen(&luts.h), widen(&luts.s), widen(&luts.v));
        // (closures here would be compiled without AVX2, their intrinsics called out of line)
        let sector_tables: [[i32; 8]; 3] = std::array::from_fn(|c| std::array::from_fn(|k| if k < 6 { SECTORS[k][c] as i32 } else { 0 }));
        let channel_of = sector_tables.map(|t| _mm256_loadu_si256(t.as_ptr() as *const __m256i));
        let byte = _mm256_set1_epi32(0xFF);
        let round = _mm256_set1_epi32(1 << (HSV_SHIFT - 1));
        let offsets = _mm256_setr_epi32(0, 3, 6, 9, 12, 15, 18, 21);
        // each lane reads 4 bytes from its pixel: the last group needs one byte past its pixels
        let groups = px.len().saturating_sub(1) / 24;
        for gi in 0..groups {
            let base = px.as_mut_ptr().add(24 * gi);
            let rgb = _mm256_i32gather_epi32::<1>(base as *const i32, offsets);
            let r = _mm256_and_si256(rgb, byte);
            let g = _mm256_and_si256(_mm256_srli_epi32::<8>(rgb), byte);
            let b = _mm256_and_si256(_mm256_srli_epi32::<16>(rgb), byte);
            // RGB → HSV
            let v = _mm256_max_epi32(_mm256_max_epi32(r, g), b);
            let diff = _mm256_sub_epi32(v, _mm256_min_epi32(_mm256_min_epi32(r, g), b));
            let s = _mm256_srai_epi32::<{ HSV_SHIFT as i32 }>(_mm256_add_epi32(_mm256_mullo_epi32(diff, _mm256_i32gather_epi32::<4>(sdiv.as_ptr(), v)), round));
            let (is_r, is_g) = (_mm256_cmpeq_epi32(v, r), _mm256_cmpeq_epi32(v, g));
            let h_r = _mm256_sub_epi32(g, b);
            let h_g = _mm256_add_epi32(_mm256_sub_epi32(b, r), _mm256_slli_epi32::<1>(diff));
            let h_b = _mm256_add_epi32(_mm256_sub_epi32(r, g), _mm256_slli_epi32::<2>(diff));
            let h = _mm256_blendv_epi8(_mm256_blendv_epi8(h_b, h_g, is_g), h_r, is_r);
            let h = _mm256_srai_epi32::<{ HSV_SHIFT as i32 }>(_mm256_add_epi32(_mm256_mullo_epi32(h, _mm256_i32gather_epi32::<4>(hdiv.as_ptr(), diff)), round));
            let h = _mm256_add_epi32(h, _mm256_and_si256(_mm256_cmpgt_epi32(_mm256_setzero_si256(), h), _mm256_set1_epi32(180)));
            // the gains
            let h = _mm256_i32gather_epi32::<4>(lh.as_ptr(), h);
            let s = _mm256_i32gather_epi32::<4>(ls.as_ptr(), s);
            let v = _mm256_i32gather_epi32::<4>(lv.as_ptr(), v);
            // HSV → RGB, as hsv_to_rgb
            let s = _mm256_mul_ps(_mm256_cvtepi32_ps(s), _mm256_set1_ps(1.0 / 255.0));
            let v = _mm256_mul_ps(_mm256_cvtepi32_ps(v), _mm256_set1_ps(1.0 / 255.0));
            let hh = _mm256_mul_ps(_mm256_cvtepi32_ps(h), _mm256_set1_ps(6.0 / 180.0));
            let sector = _mm256_cvttps_epi32(hh);
            let f = _mm256_sub_ps(hh, _mm256_cvtepi32_ps(sector));
            // hsv_to_rgb's `% 6` (a hue table entry of 180 is sector 6)
            let sector = _mm256_andnot_si256(_mm256_cmpeq_epi32(sector, _mm256_set1_epi32(6)), sector);
            let one = _mm256_set1_ps(1.0);
            let neg_s = _mm256_sub_ps(_mm256_setzero_ps(), s);
            let tab = [
                v,
                _mm256_mul_ps(v, _mm256_sub_ps(one, s)),
                _mm256_mul_ps(v, _mm256_fmadd_ps(neg_s, f, one)),
                _mm256_mul_ps(v, _mm256_fmadd_ps(neg_s, _mm256_sub_ps(one, f), one)),
            ];
            let mut out = _mm256_setzero_si256();
            for (c, table) in channel_of.iter().enumerate() {
                let which = _mm256_permutevar8x32_epi32(*table, sector);
                let mut x = tab[0];
                for (k, t) in tab.iter().enumerate().skip(1) {
                    let pick = _mm256_castsi256_ps(_mm256_cmpeq_epi32(which, _mm256_set1_epi32(k as i32)));
                    x = _mm256_blendv_ps(x, *t, pick);
                }
                let x = _mm256_min_ps(_mm256_max_ps(_mm256_mul_ps(x, _mm256_set1_ps(255.0)), _mm256_setzero_ps()), _mm256_set1_ps(255.0));
                out = _mm256_or_si256(out, _mm256_sllv_epi32(_mm256_cvttps_epi32(x), _mm256_set1_epi32(8 * c as i32)));
            }
            // 0x00BBGGRR per lane → 12 packed bytes per 128-bit half, stored as 8 + 4 bytes
            let packed = _mm256_shuffle_epi8(out, _mm256_setr_epi8(0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14, -1, -1, -1, -1, 0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14, -1, -1, -1, -1));
            for (half, at) in [(_mm256_castsi256_si128(packed), 0), (_mm256_extracti128_si256::<1>(packed), 12)] {
                _mm_storel_epi64(base.add(at) as *mut __m128i, half);
                (base.add(at + 8) as *mut i32).write_unaligned(_mm_extract_epi32::<2>(half));
            }
        }
        8 * groups
    }
}

#[cfg(test)]
mod tests {
    use image::Rgb;

    use super::*;

    #[test]
    fn opencv_hsv_values() {
        // Both conversions matched cv2.cvtColor on every 8-bit input (RGB order here).
        let to_hsv = |rgb| rgb_to_hsv(hsv_tables(), rgb);
        assert_eq!(to_hsv([255, 0, 0]), [0, 255, 255]);
        assert_eq!(to_hsv([0, 255, 0]), [60, 255, 255]);
        assert_eq!(to_hsv([0, 0, 255]), [120, 255, 255]);
        assert_eq!(to_hsv([128, 128, 128]), [0, 0, 128]);
        assert_eq!(to_hsv([255, 0, 1]), [0, 255, 255]); // -0.1 degree rounds to 0, not 180
        assert_eq!(to_hsv([10, 20, 30]), [105, 170, 30]);
        assert_eq!(hsv_to_rgb([0, 255, 255]), [255, 0, 0]);
        assert_eq!(hsv_to_rgb([0, 0, 77]), [77, 77, 77]);
        assert_eq!(hsv_to_rgb([105, 170, 30]), [10, 19, 30]); // truncated, as OpenCV
        // Round trip stays within a few levels (hue has 2-degree steps).
        for c in [[200u8, 30, 60], [12, 240, 99], [80, 80, 200]] {
            let back = hsv_to_rgb(to_hsv(c));
            for i in 0..3 {
                assert!((back[i] as i32 - c[i] as i32).abs() <= 4, "{c:?} -> {back:?}");
            }
        }
        // Gray keeps zero saturation even with a saturation gain.
        let mut gray = RgbImage::from_pixel(2, 2, Rgb([90; 3]));
        apply_hsv(&mut gray, [0.1, 0.5, 0.0]);
        assert!(gray.pixels().all(|p| p.0 == [90; 3]));
    }

    /// Every 8-bit colour, in an image whose pixel count leaves a tail for the pixel-by-pixel
    /// path: `apply_hsv` (eight at a time where the CPU has AVX2) gives the bytes of the
    /// one-pixel reference, for gains that push the hue round the circle and both tables to
    /// their ends.
    #[test]
    fn every_colour_as_the_one_pixel_reference() {
        let colours: Vec<u8> = (0..1u32 << 24).flat_map(|c| [c as u8, (c >> 8) as u8, (c >> 16) as u8]).chain([7, 8, 9, 250, 1, 0]).collect();
        let n = colours.len() as u32 / 3;
        for r in [[0.015, 0.7, 0.4], [-0.5, -0.7, 0.9], [0.99, 0.2, -0.99]] {
            let luts = Luts::new(r);
            let mut img = RgbImage::from_raw(n, 1, colours.clone()).unwrap();
            apply_hsv(&mut img, r);
            for (i, (got, c)) in img.as_raw().chunks_exact(3).zip(colours.chunks_exact(3)).enumerate() {
                let want = luts.apply([c[0], c[1], c[2]]);
                assert_eq!(got, want, "colour {c:?} (pixel {i}) with gains {r:?}");
            }
        }
    }
}
