//! The mask term of Ultralytics' segmentation loss (v8SegmentationLoss, for Segment heads): for
//! every foreground anchor, the mask its coefficients make with its image's prototypes
//! (`coefficients · prototypes`) against the assigned object's mask, binary cross-entropy inside
//! the object's box only, averaged over the mask's pixels and divided by the box's share of the
//! image; summed, then divided by the number of foreground anchors. Mask distillation is the same
//! term with a teacher's mask probabilities at those anchors as soft targets.

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

/// What a foreground anchor's mask is compared with.
enum MaskTarget<'a> {
    /// The assigned object's pixels in the batch's instance masks (the task's own term).
    Objects(&'a InstanceMasks),
    /// A teacher's mask probabilities at the same anchor: sigmoid(its coefficients · its
    /// prototypes), [B, nm, A] and [B, nm, h, w], constants (mask distillation).
    Teacher(&'a Tensor<3>, &'a Tensor<4>),
}

/// The mask term (before its gain) of `coeffs` [B, nm, A] and `protos` [B, nm, h, w] for the
/// targets of `asg`, whose masks are `gt`. `gt` may hold fewer images than the batch: the
/// labeled images come first, and the foreground anchors of the others (pseudo-labeled
/// unlabeled images, which have no masks) are left out of the term and of its count.
pub fn mask_loss(coeffs: &Tensor<3>, protos: &Tensor<4>, asg: &Assigned, gt: &InstanceMasks) -> Result<Tensor<1>> {
    let [b, _, a_n] = coeffs.dims();
    let [_, _, mh, mw] = protos.dims();
    if gt.size != (mh, mw) || gt.ids.len() % (mh * mw) != 0 || gt.ids.len() > b * mh * mw {
        bail!("instance masks of {:?} for prototypes of {mh}×{mw} (mask_ratio must make them the prototypes' size)", gt.size);
    }
    let with_masks = gt.ids.len() / (mh * mw);
    if asg.fg_index.iter().all(|&f| (f as usize) / a_n < with_masks) {
        return Ok(masked_bce(coeffs, protos, asg, MaskTarget::Objects(gt)));
    }
    let keep: Vec<usize> = (0..asg.fg_index.len()).filter(|&k| (asg.fg_index[k] as usize) / a_n < with_masks).collect();
    Ok(masked_bce(coeffs, protos, &asg.subset(&keep), MaskTarget::Objects(gt)))
}

/// Mask distillation: the mask term with the teacher's mask probabilities at each of the
/// student's foreground anchors as soft targets, inside the assigned box, weighted as the mask
/// term is. The teacher's prototypes must have the student's size.
pub fn mask_distillation(coeffs: &Tensor<3>, protos: &Tensor<4>, asg: &Assigned, t_coeffs: &Tensor<3>, t_protos: &Tensor<4>) -> Result<Tensor<1>> {
    let ([_, _, mh, mw], [_, _, th, tw]) = (protos.dims(), t_protos.dims());
    if (mh, mw) != (th, tw) || coeffs.dims()[2] != t_coeffs.dims()[2] {
        bail!("the teacher's prototypes ({th}×{tw}) or anchors differ from the student's ({mh}×{mw})");
    }
    Ok(masked_bce(coeffs, protos, asg, MaskTarget::Teacher(t_coeffs, t_protos)))
}

/// Σ over foreground anchors of the box-weighted BCE of their mask logits against `target`,
/// divided by the number of foreground anchors.
fn masked_bce(coeffs: &Tensor<3>, protos: &Tensor<4>, asg: &Assigned, target: MaskTarget) -> Tensor<1> {
    let [b, nm, a_n] = coeffs.dims();
    let [_, _, mh, mw] = protos.dims();
    let n = asg.fg_index.len();
    if n == 0 {
        // still on the graph, as Ultralytics keeps it
        return coeffs.clone().sum() * 0.0 + protos.clone().sum() * 0.0;
    }
    let device = coeffs.device();
    let rows_of = |c: &Tensor<3>| -> Tensor<2> {
        let nm = c.dims()[1];
        c.clone().swap_dims(1, 2).reshape([b * a_n, nm])
    };
    let rows = rows_of(coeffs);
    let mut total: Option<Tensor<1>> = None;
    let mut k = 0;
    while k < n {
        // the foreground anchors of one image (assigned image by image, so consecutive)
        let image = asg.fg_index[k] as usize / a_n;
        let end = k + asg.fg_index[k..].iter().take_while(|&&f| f as usize / a_n == image).count();
        let idx = Tensor::<1, Int>::from_data(TensorData::new(asg.fg_index[k..end].to_vec(), [end - k]), &device);
        let proto: Tensor<2> = protos.clone().narrow(0, image, 1).reshape([nm, mh * mw]);
        let logits = rows.clone().select(0, idx.clone()).matmul(proto);
        let shape = [end - k, mh * mw];
        let t = match &target {
            MaskTarget::Objects(gt) => {
                let ids = &gt.ids[image * mh * mw..(image + 1) * mh * mw];
                Tensor::<2>::from_data(TensorData::new(object_targets(asg, k..end, ids), shape), &device)
            }
            MaskTarget::Teacher(tc, tp) => {
                let t_nm = tc.dims()[1];
                let t_proto: Tensor<2> = (*tp).clone().narrow(0, image, 1).reshape([t_nm, mh * mw]);
                burn::tensor::activation::sigmoid(rows_of(tc).select(0, idx).matmul(t_proto)).detach()
            }
        };
        let w = Tensor::<2>::from_data(TensorData::new(box_weights(asg, k..end, (mh, mw)), shape), &device);
        let bce = logits.clone().clamp_min(0.0) - logits.clone() * t + logits.abs().neg().exp().log1p();
        let term = (bce * w).sum();
        total = Some(match total {
            Some(s) => s + term,
            None => term,
        });
        k = end;
    }
    total.expect("at least one foreground anchor") / n as f32
}

/// Per foreground anchor `ks` of one image and pixel of its mask map `ids`: 1 on the assigned
/// object, else 0.
fn object_targets(asg: &Assigned, ks: std::ops::Range<usize>, ids: &[u16]) -> Vec<f32> {
    ks.flat_map(|k| {
        let id = (asg.fg_gt[k] + 1) as u16;
        ids.iter().map(move |&v| if v == id { 1.0 } else { 0.0 })
    })
    .collect()
}

/// Per foreground anchor `ks` of one image and pixel: 1 / (pixels · the box's share of the
/// image) inside its assigned box, 0 outside.
fn box_weights(asg: &Assigned, ks: std::ops::Range<usize>, (mh, mw): (usize, usize)) -> Vec<f32> {
    let (img_h, img_w) = asg.img_hw;
    let mut weight = Vec::with_capacity(ks.len() * mh * mw);
    for k in ks {
        // the box in input pixels, then normalised, then in mask pixels
        let s = asg.fg_stride[k];
        let [x1, y1, x2, y2] = [0, 1, 2, 3].map(|j| asg.fg_target[4 * k + j] * s / if j % 2 == 0 { img_w } else { img_h });
        let area = (x2 - x1) * (y2 - y1);
        let (mx1, my1, mx2, my2) = (x1 * mw as f32, y1 * mh as f32, x2 * mw as f32, y2 * mh as f32);
        let inside = 1.0 / ((mh * mw) as f32 * area);
        for r in 0..mh {
            let row_in = (r as f32) >= my1 && (r as f32) < my2;
            for c in 0..mw {
                weight.push(if row_in && (c as f32) >= mx1 && (c as f32) < mx2 { inside } else { 0.0 });
            }
        }
    }
    weight
}

/// YOLO26's semantic term before its gain (Ultralytics' BCEDiceLoss with weights 0.5 and 0.5):
/// the semantic logits [B, nc, h, w] against the one-hot class map of the objects, built at the
/// instance masks' size from their overlap ids (`classes[b][k]`: image b's object k + 1's class;
/// no class where no object is), nearest-downsampled to the logits' size as PyTorch does; a BCE
/// mean over every value plus a Dice loss (smoothing 1) per image and class, averaged.
pub fn semantic_loss(logits: &Tensor<4>, gt: &InstanceMasks, classes: &[Vec<usize>]) -> Result<Tensor<1>> {
    let [b, nc, h, w] = logits.dims();
    let (mh, mw) = gt.size;
    if gt.ids.len() != b * mh * mw || classes.len() != b || h == 0 || w == 0 {
        bail!("semantic targets: {} images of masks {mh}×{mw} and {} of classes for logits of {b} images", gt.ids.len() / (mh * mw).max(1), classes.len());
    }
    // PyTorch's nearest: source index floor(dst · in/out)
    let source = |dst: usize, n_in: usize, n_out: usize| ((dst as f32 * (n_in as f32 / n_out as f32)).floor() as usize).min(n_in - 1);
    let mut target = vec![0f32; b * nc * h * w];
    for (i, cls) in classes.iter().enumerate() {
        for y in 0..h {
            let row = i * mh * mw + source(y, mh, h) * mw;
            for x in 0..w {
                let id = gt.ids[row + source(x, mw, w)] as usize;
                if let Some(&c) = id.checked_sub(1).and_then(|k| cls.get(k)).filter(|&&c| c < nc) {
                    target[((i * nc + c) * h + y) * w + x] = 1.0;
                }
            }
        }
    }
    let t = Tensor::<4>::from_data(TensorData::new(target, [b, nc, h, w]), &logits.device());
    let bce = (logits.clone().clamp_min(0.0) - logits.clone() * t.clone() + logits.clone().abs().neg().exp().log1p()).mean();
    let p = burn::tensor::activation::sigmoid(logits.clone());
    let per_map = |m: Tensor<4>| -> Tensor<2> { m.sum_dim(3).sum_dim(2).reshape([b, nc]) };
    let inter = per_map(p.clone() * t.clone());
    let union = per_map(p) + per_map(t);
    let dice = (inter * 2.0 + 1.0) / (union + 1.0);
    let dice_loss = (dice.neg() + 1.0).mean();
    Ok(bce * 0.5 + dice_loss * 0.5)
}

/// Each image's object classes in the order of its targets (the masks' object order), for
/// [`semantic_loss`].
pub fn object_classes(batch_idx: &[usize], cls: &[usize], images: usize) -> Vec<Vec<usize>> {
    let mut out = vec![Vec::new(); images];
    for (&i, &c) in batch_idx.iter().zip(cls) {
        if let Some(v) = out.get_mut(i) {
            v.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::Device;

    /// Images beyond the masks' (pseudo-labeled unlabeled images) leave the term as if their
    /// foreground anchors were not there.
    #[test]
    fn anchors_of_images_without_masks_are_left_out() {
        let device = Device::flex();
        let (a_n, nm) = (4, 2);
        let values = |n: usize, k: f32| (0..n).map(|i| (i as f32 * 0.37 + k).sin()).collect::<Vec<f32>>();
        let coeffs = Tensor::<3>::from_data(TensorData::new(values(2 * nm * a_n, 0.1), [2, nm, a_n]), &device);
        let protos = Tensor::<4>::from_data(TensorData::new(values(2 * nm * 16, 0.7), [2, nm, 4, 4]), &device);
        let asg = Assigned {
            fg_index: vec![1, 2, (a_n + 3) as i64],
            fg_target: vec![0.0, 0.0, 2.0, 2.0, 1.0, 1.0, 4.0, 3.0, 0.0, 1.0, 3.0, 4.0],
            fg_stride: vec![4.0; 3],
            fg_gt: vec![0, 0, 0],
            img_hw: (16.0, 16.0),
            ..Default::default()
        };
        let one_image = InstanceMasks { size: (4, 4), ids: (0..16).map(|p| u16::from(p % 3 == 0)).collect() };
        let got = mask_loss(&coeffs, &protos, &asg, &one_image).unwrap().into_scalar::<f32>();
        let first = asg.subset(&[0, 1]);
        let want = mask_loss(&coeffs.clone().narrow(0, 0, 1), &protos.clone().narrow(0, 0, 1), &first, &one_image).unwrap().into_scalar::<f32>();
        assert!(got > 0.0 && (got - want).abs() <= 1e-6 * want, "{got} vs {want}");
        // more maps than images is an error
        let three = InstanceMasks { size: (4, 4), ids: vec![0; 48] };
        assert!(mask_loss(&coeffs, &protos, &asg, &three).is_err());
    }
}
