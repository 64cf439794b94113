//! Instance masks in validation, as Ultralytics 8.4.190's segmentation validator makes and
//! compares them: at the prototypes' resolution (a quarter of the input), a detection's mask is
//! where its coefficients times the prototypes are above 0 (sigmoid above 0.5) inside its box;
//! a label's mask is its id in the overlap-form map; their IoU feeds the same matching and AP
//! arithmetic as the boxes'.

use crate::infer::nms::Detection;
pub use crate::infer::segment::MaskInputs;
use crate::infer::segment::crop_span;

/// Each detection's mask as the flat indices of its pixels (row-major at the prototypes' size):
/// those whose column c and row r satisfy x1 ≤ c < x2 and y1 ≤ r < y2 for the box divided by the
/// ratio (Ultralytics' `crop_mask` compares pixel indices with the fractional box), and whose
/// logit is above 0. Only pixels inside the box are computed.
pub fn predicted_masks(m: &MaskInputs, dets: &[Detection]) -> Vec<Vec<u32>> {
    let (mh, mw) = m.size;
    dets.iter()
        .map(|d| {
            let coef = m.coefficients(d.anchor);
            let [x1, y1, x2, y2] = d.xyxy.map(|v| v / m.ratio);
            let mut pixels = Vec::new();
            for r in crop_span(y1, y2, mh) {
                for c in crop_span(x1, x2, mw) {
                    let p = r * mw + c;
                    if m.logit(&coef, p) > 0.0 {
                        pixels.push(p as u32);
                    }
                }
            }
            pixels
        })
        .collect()
}

/// IoU `[det][label]` of predicted masks (pixel lists) with the `nl` labels of an overlap-form
/// map `ids` (label k is the pixels of id k + 1), as Ultralytics' `mask_iou`:
/// inter / (area₁ + area₂ − inter + 1e-7) in f32.
pub fn mask_ious(pred: &[Vec<u32>], ids: &[u16], nl: usize) -> Vec<Vec<f32>> {
    let mut label_area = vec![0u32; nl];
    for &v in ids {
        if v > 0 && (v as usize) <= nl {
            label_area[v as usize - 1] += 1;
        }
    }
    pred.iter()
        .map(|pixels| {
            let mut inter = vec![0u32; nl];
            for &p in pixels {
                let v = ids[p as usize] as usize;
                if v > 0 && v <= nl {
                    inter[v - 1] += 1;
                }
            }
            (0..nl)
                .map(|k| {
                    let i = inter[k] as f32;
                    i / (label_area[k] as f32 + pixels.len() as f32 - i + 1e-7)
                })
                .collect()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn det(xyxy: [f32; 4], anchor: usize) -> Detection {
        Detection { xyxy, conf: 0.9, cls: 0, anchor }
    }

    #[test]
    fn masks_are_cropped_by_pixel_index_against_the_fractional_box() {
        // one prototype of ones on 4×4, coefficient 1 at anchor 1 (-1 at anchor 0)
        let protos = vec![1.0; 16];
        let coeffs = vec![-1.0, 1.0];
        let m = MaskInputs { coeffs: &coeffs, protos: &protos, nm: 1, size: (4, 4), ratio: 4.0 };
        // box /4 = (0.5, 1.0, 2.0, 3.25): columns 1 (0.5 ≤ c < 2), rows 1..3 (1 ≤ r < 3.25)
        let masks = predicted_masks(&m, &[det([2.0, 4.0, 8.0, 13.0], 1), det([2.0, 4.0, 8.0, 13.0], 0)]);
        assert_eq!(masks[0], vec![5, 9, 13]);
        assert!(masks[1].is_empty(), "negative logits are background");
    }

    #[test]
    fn mask_iou_counts_pixels_of_each_label_id() {
        // labels: id 1 on pixels 0..4, id 2 on 4..6
        let ids = [1, 1, 1, 1, 2, 2, 0, 0];
        let ious = mask_ious(&[vec![2, 3, 4, 7], vec![]], &ids, 2);
        assert!((ious[0][0] - 2.0 / 6.0).abs() < 1e-6);
        assert!((ious[0][1] - 1.0 / 5.0).abs() < 1e-6);
        assert_eq!(ious[1], [0.0, 0.0]);
    }
}
