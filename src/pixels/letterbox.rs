//! Ultralytics' LetterBox: resize keeping aspect, pad with gray 114, and the
//! inverse mapping of boxes back onto the original image.

use image::RgbImage;

/// How an image was placed into the network input.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Placement {
    /// Scale applied to the original image.
    pub gain: f32,
    /// Left and top padding in input pixels.
    pub pad: (f32, f32),
    /// Original image size (w, h).
    pub orig: (u32, u32),
}

impl Placement {
    /// Maps an xyxy box from input pixels to the original image, clipped to it.
    pub fn to_original(&self, b: [f32; 4]) -> [f32; 4] {
        let (w, h) = (self.orig.0 as f32, self.orig.1 as f32);
        [
            ((b[0] - self.pad.0) / self.gain).clamp(0.0, w),
            ((b[1] - self.pad.1) / self.gain).clamp(0.0, h),
            ((b[2] - self.pad.0) / self.gain).clamp(0.0, w),
            ((b[3] - self.pad.1) / self.gain).clamp(0.0, h),
        ]
    }
}

/// Letterboxes `img` into `new_shape` (h, w). `auto` pads only to a multiple of
/// `stride` (prediction); `scaleup = false` never enlarges (validation).
pub fn letterbox(img: &RgbImage, new_shape: (u32, u32), auto: bool, scaleup: bool, stride: u32) -> (RgbImage, Placement) {
    let (w0, h0) = img.dimensions();
    let (nh, nw) = new_shape;
    let mut r = (nh as f64 / h0 as f64).min(nw as f64 / w0 as f64);
    if !scaleup {
        r = r.min(1.0);
    }
    let uw = ((w0 as f64 * r).round_ties_even() as u32).max(1);
    let uh = ((h0 as f64 * r).round_ties_even() as u32).max(1);
    let (mut dw, mut dh) = (nw as f64 - uw as f64, nh as f64 - uh as f64);
    if auto {
        dw = dw.rem_euclid(stride as f64);
        dh = dh.rem_euclid(stride as f64);
    }
    dw /= 2.0;
    dh /= 2.0;
    let resized = if (uw, uh) != (w0, h0) { resize_bilinear(img, uw, uh) } else { img.clone() };
    let top = (dh - 0.1).round_ties_even() as u32;
    let bottom = (dh + 0.1).round_ties_even() as u32;
    let left = (dw - 0.1).round_ties_even() as u32;
    let right = (dw + 0.1).round_ties_even() as u32;
    let (ow, oh) = (uw + left + right, uh + top + bottom);
    let mut out = RgbImage::from_pixel(ow, oh, image::Rgb([114, 114, 114]));
    image::imageops::replace(&mut out, &resized, left as i64, top as i64);
    (out, Placement { gain: r as f32, pad: (left as f32, top as f32), orig: (w0, h0) })
}

/// Bilinear resize with half-pixel centres, as OpenCV's INTER_LINEAR (for
/// enlarging and for moderate shrinking; OpenCV does not area-average either).
pub fn resize_bilinear(img: &RgbImage, w: u32, h: u32) -> RgbImage {
    let (sw, sh) = img.dimensions();
    let sx = sw as f32 / w as f32;
    let sy = sh as f32 / h as f32;
    let src = img.as_raw();
    let coords = |i: u32, scale: f32, n: u32| -> (usize, usize, f32) {
        let f = ((i as f32 + 0.5) * scale - 0.5).max(0.0);
        let i0 = (f.floor() as u32).min(n - 1);
        let i1 = (i0 + 1).min(n - 1);
        (i0 as usize, i1 as usize, f - i0 as f32)
    };
    // Byte offsets of the two source columns of each output column.
    let xs: Vec<_> = (0..w).map(|x| coords(x, sx, sw)).map(|(x0, x1, fx)| (x0 * 3, x1 * 3, fx)).collect();
    let mut out = vec![0u8; (w * h * 3) as usize];
    let stride = sw as usize * 3;
    for (y, row) in out.chunks_exact_mut(w as usize * 3).enumerate() {
        let (y0, y1, fy) = coords(y as u32, sy, sh);
        let (top, bot) = (&src[y0 * stride..][..stride], &src[y1 * stride..][..stride]);
        for (px, &(x0, x1, fx)) in row.chunks_exact_mut(3).zip(&xs) {
            for c in 0..3 {
                let t = top[x0 + c] as f32 * (1.0 - fx) + top[x1 + c] as f32 * fx;
                let b = bot[x0 + c] as f32 * (1.0 - fx) + bot[x1 + c] as f32 * fx;
                // The blend of bytes lies in [0, 255]: adding ½ and truncating rounds it (no libm call).
                px[c] = (t * (1.0 - fy) + b * fy + 0.5) as u8;
            }
        }
    }
    RgbImage::from_raw(w, h, out).expect("buffer size matches")
}

/// CHW float RGB in [0, 1], as the network expects.
pub fn to_chw(img: &RgbImage) -> Vec<f32> {
    let mut out = Vec::with_capacity(3 * (img.width() * img.height()) as usize);
    extend_chw(&mut out, img);
    out
}

/// Appends `img` to `out` as [3, H, W] floats in 0..1 (a batch's images go straight into it):
/// `v / 255` of every byte, looked up (a division per byte cost more than the rest of the loop).
pub fn extend_chw(out: &mut Vec<f32>, img: &RgbImage) {
    static SCALED: std::sync::OnceLock<[f32; 256]> = std::sync::OnceLock::new();
    let scaled = SCALED.get_or_init(|| std::array::from_fn(|v| v as f32 / 255.0));
    let raw = img.as_raw();
    let n = raw.len() / 3;
    let start = out.len();
    out.resize(start + 3 * n, 0.0);
    let (r, gb) = out[start..].split_at_mut(n);
    let (g, b) = gb.split_at_mut(n);
    for (((px, r), g), b) in raw.chunks_exact(3).zip(r).zip(g).zip(b) {
        (*r, *g, *b) = (scaled[px[0] as usize], scaled[px[1] as usize], scaled[px[2] as usize]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bccd_sized_image_at_320() {
        let img = RgbImage::new(640, 480);
        let (out, p) = letterbox(&img, (320, 320), false, false, 32);
        assert_eq!(out.dimensions(), (320, 320));
        assert_eq!(p.gain, 0.5);
        assert_eq!(p.pad, (0.0, 40.0));
        assert_eq!(out.get_pixel(0, 0).0, [114, 114, 114]);
        assert_eq!(out.get_pixel(0, 40).0, [0, 0, 0]);
        // auto: pad only to the stride
        let (out, p) = letterbox(&img, (640, 640), true, true, 32);
        assert_eq!(out.dimensions(), (640, 480));
        assert_eq!(p.pad, (0.0, 0.0));
        let b = p.to_original([10., 20., 30., 40.]);
        assert_eq!(b, [10., 20., 30., 40.]);
    }

    #[test]
    fn odd_padding_splits_like_ultralytics() {
        // 100x61 into 64x64 with scaleup: r = 0.64, unpadded 64x39, dh = 25 → top 12, bottom 13
        let img = RgbImage::new(100, 61);
        let (out, p) = letterbox(&img, (64, 64), false, true, 32);
        assert_eq!(out.dimensions(), (64, 64));
        assert_eq!(p.pad, (0.0, 12.0));
    }
}
