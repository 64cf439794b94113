//! A segmentation model's masks in prediction, as Ultralytics' segmentation predictor makes them
//! (`process_mask` with `upsample=True`): each detection's mask logits (its coefficients times the
//! image's prototypes) upsampled bilinearly to the input's size, cropped to its box, above 0; and
//! its outline as `Results.masks.xy` gives it (the mask's outer contours, merged into one polygon,
//! in original-image pixels).

use super::nms::Detection;
use crate::pixels::contour::{merge_polygons, outer_contours, Bitmap};

/// An image's prototypes and mask coefficients on the host.
pub struct MaskInputs<'a> {
    /// [nm][A] the image's coefficients.
    pub coeffs: &'a [f32],
    /// [nm][mh·mw] the image's prototypes.
    pub protos: &'a [f32],
    pub nm: usize,
    /// (mh, mw) of the prototypes.
    pub size: (usize, usize),
    /// Input pixels per prototype pixel (4).
    pub ratio: f32,
}

impl MaskInputs<'_> {
    /// The coefficients of `anchor`.
    pub fn coefficients(&self, anchor: usize) -> Vec<f32> {
        let a_n = self.coeffs.len() / self.nm;
        (0..self.nm).map(|k| self.coeffs[k * a_n + anchor]).collect()
    }

    /// The mask logit at prototype pixel `p` (row-major) for `coef`.
    pub fn logit(&self, coef: &[f32], p: usize) -> f32 {
        let plane = self.size.0 * self.size.1;
        coef.iter().enumerate().map(|(k, &w)| w * self.protos[k * plane + p]).sum()
    }
}

/// A detection's mask at the input's resolution, stored over its box's pixels only.
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceMask {
    /// Left column and top row of the stored rectangle, in input pixels.
    pub x0: usize,
    pub y0: usize,
    pub w: usize,
    pub h: usize,
    /// Row-major over the rectangle.
    pub bits: Vec<bool>,
}

impl InstanceMask {
    pub fn area(&self) -> usize {
        self.bits.iter().filter(|&&b| b).count()
    }

    /// Whether input pixel (x, y) belongs to the mask.
    pub fn contains(&self, x: usize, y: usize) -> bool {
        x >= self.x0 && y >= self.y0 && x < self.x0 + self.w && y < self.y0 + self.h && self.bits[(y - self.y0) * self.w + x - self.x0]
    }
}

/// The columns (or rows) `lo ≤ i < hi` of a fractional box side, within `n` (crop_mask's rule).
pub fn crop_span(lo: f32, hi: f32, n: usize) -> std::ops::Range<usize> {
    (lo.ceil().max(0.0) as usize).min(n)..(hi.ceil().max(0.0) as usize).min(n)
}

/// PyTorch's bilinear source taps (align_corners false) of each output index: (i0, i1, λ1).
fn taps(range: std::ops::Range<usize>, n_in: usize, n_out: usize) -> Vec<(usize, usize, f32)> {
    let scale = n_in as f32 / n_out as f32;
    range
        .map(|o| {
            let src = ((o as f32 + 0.5) * scale - 0.5).max(0.0);
            let i0 = (src as usize).min(n_in - 1);
            let i1 = if i0 < n_in - 1 { i0 + 1 } else { i0 };
            (i0, i1, (src - i0 as f32).clamp(0.0, 1.0))
        })
        .collect()
}

/// Each detection's mask at the input's size `input` (w, h); boxes in input pixels.
pub fn input_masks(m: &MaskInputs, input: (usize, usize), dets: &[Detection]) -> Vec<InstanceMask> {
    let (mh, mw) = m.size;
    dets.iter()
        .map(|d| {
            let [x1, y1, x2, y2] = d.xyxy;
            let (cols, rows) = (crop_span(x1, x2, input.0), crop_span(y1, y2, input.1));
            let (x0, y0, w, h) = (cols.start, rows.start, cols.len(), rows.len());
            let (tx, ty) = (taps(cols, mw, input.0), taps(rows, mh, input.1));
            let mut bits = vec![false; w * h];
            if w > 0 && h > 0 {
                // the low-resolution logits the taps read, computed once each
                let (c_lo, c_hi) = (tx[0].0, tx[w - 1].1);
                let (r_lo, r_hi) = (ty[0].0, ty[h - 1].1);
                let lw = c_hi - c_lo + 1;
                let coef = m.coefficients(d.anchor);
                let low: Vec<f32> = (r_lo..=r_hi).flat_map(|r| (c_lo..=c_hi).map(move |c| (r, c))).map(|(r, c)| m.logit(&coef, r * mw + c)).collect();
                let at = |r: usize, c: usize| low[(r - r_lo) * lw + c - c_lo];
                for (j, &(r0, r1, ly)) in ty.iter().enumerate() {
                    for (i, &(c0, c1, lx)) in tx.iter().enumerate() {
                        let v = (1.0 - ly) * ((1.0 - lx) * at(r0, c0) + lx * at(r0, c1)) + ly * ((1.0 - lx) * at(r1, c0) + lx * at(r1, c1));
                        bits[j * w + i] = v > 0.0;
                    }
                }
            }
            InstanceMask { x0, y0, w, h, bits }
        })
        .collect()
}

/// The mask's outline in original-image pixels: its outer contours merged into one polygon and
/// mapped back through the letterbox of an `orig` (w, h) image into `input` (w, h), clipped to
/// the image (Ultralytics' `masks2segments` and `scale_coords`).
pub fn polygon(mask: &InstanceMask, input: (usize, usize), orig: (u32, u32)) -> Vec<[f32; 2]> {
    let contours = outer_contours(&Bitmap { bits: &mask.bits, w: mask.w, h: mask.h });
    let shifted: Vec<Vec<(i32, i32)>> = contours.into_iter().map(|c| c.into_iter().map(|(x, y)| (x + mask.x0 as i32, y + mask.y0 as i32)).collect()).collect();
    let points: Vec<[f32; 2]> = merge_polygons(&shifted).into_iter().map(|(x, y)| [x as f32, y as f32]).collect();
    scale_coords(&points, input, orig)
}

/// Ultralytics' `scale_coords`: points of a letterboxed `input` (w, h) back to the `orig` (w, h)
/// image, each side with its own rounded gain and the padding the letterbox used, clipped.
pub fn scale_coords(points: &[[f32; 2]], input: (usize, usize), orig: (u32, u32)) -> Vec<[f32; 2]> {
    let (iw, ih) = (input.0 as f64, input.1 as f64);
    let (w0, h0) = (orig.0 as f64, orig.1 as f64);
    let gain = (ih / h0).min(iw / w0);
    let (new_w, new_h) = ((w0 * gain).round_ties_even().max(1.0), (h0 * gain).round_ties_even().max(1.0));
    let (gx, gy) = ((new_w / w0) as f32, (new_h / h0) as f32);
    let pad_x = ((iw - new_w) / 2.0 - 0.1).round_ties_even() as f32;
    let pad_y = ((ih - new_h) / 2.0 - 0.1).round_ties_even() as f32;
    points.iter().map(|&[x, y]| [((x - pad_x) / gx).clamp(0.0, w0 as f32), ((y - pad_y) / gy).clamp(0.0, h0 as f32)]).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det(xyxy: [f32; 4]) -> Detection {
        Detection { xyxy, conf: 0.9, cls: 0, anchor: 0 }
    }

    #[test]
    fn masks_are_upsampled_then_cropped_to_the_box() {
        // one 2×2 prototype, logits -1 on the left column and +1 on the right; input 8×8
        let protos = [-1.0, 1.0, -1.0, 1.0];
        let m = MaskInputs { coeffs: &[1.0], protos: &protos, nm: 1, size: (2, 2), ratio: 4.0 };
        let masks = input_masks(&m, (8, 8), &[det([0.0, 0.0, 8.0, 8.0]), det([1.5, 2.0, 6.0, 3.0])]);
        // bilinear with half-pixel centres: columns 0..3 interpolate to ≤ 0, 4..8 to > 0
        let row: Vec<bool> = masks[0].bits[..8].to_vec();
        assert_eq!(row, [false, false, false, false, true, true, true, true]);
        assert_eq!(masks[0].area(), 32);
        // the crop: columns 2 ≤ c < 6, row 2 only
        assert_eq!((masks[1].x0, masks[1].y0, masks[1].w, masks[1].h), (2, 2, 4, 1));
        assert_eq!(masks[1].bits, [false, false, true, true]);
        assert!(masks[1].contains(4, 2) && !masks[1].contains(4, 3) && !masks[1].contains(3, 2));
    }

    #[test]
    fn polygons_come_back_through_the_letterbox() {
        // a 100×50 image letterboxed into 64×32 (gain 0.64, no padding) and into 64×64 (pad 16 on top)
        assert_eq!(scale_coords(&[[32.0, 16.0]], (64, 32), (100, 50)), [[50.0, 25.0]]);
        assert_eq!(scale_coords(&[[32.0, 16.0], [-3.0, 70.0]], (64, 64), (100, 50)), [[50.0, 0.0], [0.0, 50.0]]);
        let mask = InstanceMask { x0: 10, y0: 20, w: 3, h: 2, bits: vec![true; 6] };
        assert_eq!(polygon(&mask, (64, 64), (64, 64)), [[10.0, 20.0], [10.0, 21.0], [12.0, 21.0], [12.0, 20.0]]);
    }
}
