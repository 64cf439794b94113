//! The mask term of Ultralytics' segmentation loss (v8SegmentationLoss, for Segment heads): for
//! every foreground anchor, the mask its coefficients make with its image's prototypes
//! (`coefficients · prototypes`) against the assigned object's mask, binary cross-entropy inside
//! the object's box only, averaged over the mask's pixels and divided by the box's share of the
//! image; summed, then divided by the number of foreground anchors.

use anyhow::{bail, Result};
use burn::tensor::{Int, Tensor, TensorData};

use super::Assigned;

/// A batch's instance masks in Ultralytics' overlap form (`overlap_mask`): one map per image at the
/// prototypes' size, whose pixels hold 1 + the position of the object covering them among the
/// image's targets (0: background).
#[derive(Debug, Clone, PartialEq)]
pub struct InstanceMasks {
    /// (h, w) of each map.
    pub size: (usize, usize),
    /// [B, h, w] object ids.
    pub ids: Vec<u16>,
}

impl InstanceMasks {
    /// The maps of images `keep` (in that order).
    pub fn images(&self, keep: impl Iterator<Item = usize>) -> InstanceMasks {
        let per = self.size.0 * self.size.1;
        InstanceMasks { size: self.size, ids: keep.flat_map(|i| &self.ids[i * per..(i + 1) * per]).copied().collect() }
    }
}

/// The mask term (before its gain) of `coeffs` [B, nm, A] and `protos` [B, nm, h, w] for the
/// targets of `asg`, whose masks are `gt`.
pub fn mask_loss(coeffs: &Tensor<3>, protos: &Tensor<4>, asg: &Assigned, gt: &InstanceMasks) -> Result<Tensor<1>> {
    let [b, nm, a_n] = coeffs.dims();
    let [_, _, mh, mw] = protos.dims();
    if gt.size != (mh, mw) || gt.ids.len() != b * mh * mw {
        bail!("instance masks of {:?} for prototypes of {mh}×{mw} (mask_ratio must make them the prototypes' size)", gt.size);
    }
    let n = asg.fg_index.len();
    if n == 0 {
        // still on the graph, as Ultralytics keeps it
        return Ok(coeffs.clone().sum() * 0.0 + protos.clone().sum() * 0.0);
    }
    let device = coeffs.device();
    let rows: Tensor<2> = coeffs.clone().swap_dims(1, 2).reshape([b * a_n, nm]);
    let mut total: Option<Tensor<1>> = None;
    let mut k = 0;
    while k < n {
        // the foreground anchors of one image (assigned image by image, so consecutive)
        let image = asg.fg_index[k] as usize / a_n;
        let end = k + asg.fg_index[k..].iter().take_while(|&&f| f as usize / a_n == image).count();
        let idx = Tensor::<1, Int>::from_data(TensorData::new(asg.fg_index[k..end].to_vec(), [end - k]), &device);
        let proto: Tensor<2> = protos.clone().narrow(0, image, 1).reshape([nm, mh * mw]);
        let logits = rows.clone().select(0, idx).matmul(proto);
        let (target, weight) = targets_and_weights(asg, k..end, &gt.ids[image * mh * mw..(image + 1) * mh * mw], (mh, mw));
        let shape = [end - k, mh * mw];
        let t = Tensor::<2>::from_data(TensorData::new(target, shape), &device);
        let w = Tensor::<2>::from_data(TensorData::new(weight, shape), &device);
        let bce = logits.clone().clamp_min(0.0) - logits.clone() * t + logits.abs().neg().exp().log1p();
        let term = (bce * w).sum();
        total = Some(match total {
            Some(s) => s + term,
            None => term,
        });
        k = end;
    }
    Ok(total.expect("at least one foreground anchor") / n as f32)
}

/// Per foreground anchor `ks` of one image and pixel of its mask map `ids`: the target (1 on the
/// assigned object) and the weight (1 / (pixels · the box's share of the image) inside the box,
/// 0 outside).
fn targets_and_weights(asg: &Assigned, ks: std::ops::Range<usize>, ids: &[u16], (mh, mw): (usize, usize)) -> (Vec<f32>, Vec<f32>) {
    let (img_h, img_w) = asg.img_hw;
    let mut target = Vec::with_capacity(ks.len() * mh * mw);
    let mut weight = Vec::with_capacity(ks.len() * mh * mw);
    for k in ks {
        let id = (asg.fg_gt[k] + 1) as u16;
        // the box in input pixels, then normalised, then in mask pixels
        let s = asg.fg_stride[k];
        let [x1, y1, x2, y2] = [0, 1, 2, 3].map(|j| asg.fg_target[4 * k + j] * s / if j % 2 == 0 { img_w } else { img_h });
        let area = (x2 - x1) * (y2 - y1);
        let (mx1, my1, mx2, my2) = (x1 * mw as f32, y1 * mh as f32, x2 * mw as f32, y2 * mh as f32);
        let inside = 1.0 / ((mh * mw) as f32 * area);
        for r in 0..mh {
            let row_in = (r as f32) >= my1 && (r as f32) < my2;
            for c in 0..mw {
                target.push(if ids[r * mw + c] == id { 1.0 } else { 0.0 });
                weight.push(if row_in && (c as f32) >= mx1 && (c as f32) < mx2 { inside } else { 0.0 });
            }
        }
    }
    (target, weight)
}
