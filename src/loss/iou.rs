//! Complete IoU (CIoU) of xyxy boxes, eps 1e-7, on the host and on tensors.

use burn::tensor::Tensor;

const EPS: f32 = 1e-7;
const FOUR_OVER_PI2: f32 = 4.0 / (std::f32::consts::PI * std::f32::consts::PI);

/// CIoU of two xyxy boxes (f32 arithmetic in Ultralytics' order).
pub fn ciou(b1: &[f32; 4], b2: &[f32; 4]) -> f32 {
    let (w1, h1) = (b1[2] - b1[0], b1[3] - b1[1] + EPS);
    let (w2, h2) = (b2[2] - b2[0], b2[3] - b2[1] + EPS);
    let inter = (b1[2].min(b2[2]) - b1[0].max(b2[0])).max(0.0) * (b1[3].min(b2[3]) - b1[1].max(b2[1])).max(0.0);
    let union = w1 * h1 + w2 * h2 - inter + EPS;
    let iou = inter / union;
    let cw = b1[2].max(b2[2]) - b1[0].min(b2[0]);
    let ch = b1[3].max(b2[3]) - b1[1].min(b2[1]);
    let c2 = cw * cw + ch * ch + EPS;
    let dx = b2[0] + b2[2] - b1[0] - b1[2];
    let dy = b2[1] + b2[3] - b1[1] - b1[3];
    let rho2 = (dx * dx + dy * dy) / 4.0;
    let d = (w2 / h2).atan() - (w1 / h1).atan();
    let v = FOUR_OVER_PI2 * d * d;
    let alpha = v / (v - iou + (1.0 + EPS));
    iou - (rho2 / c2 + v * alpha)
}

/// CIoU of box rows `[N, 4]` (xyxy), differentiable in `pred`; `alpha` is
/// treated as a constant, as in Ultralytics. Returns `[N]`.
pub fn ciou_tensor(pred: Tensor<2>, target: Tensor<2>) -> Tensor<1> {
    let col = |t: &Tensor<2>, i: usize| -> Tensor<1> { t.clone().narrow(1, i, 1).flatten(0, 1) };
    let (iou, dist, d) = ciou_terms([0, 1, 2, 3].map(|i| col(&pred, i)), [0, 1, 2, 3].map(|i| col(&target, i)));
    let v = d.clone() * d * FOUR_OVER_PI2;
    let alpha = (v.clone() / (v.clone() - iou.clone() + (1.0 + EPS))).detach();
    iou - (dist + v * alpha)
}

/// CIoU of boxes given as their coordinate columns (x1, y1, x2, y2, all of one shape), with the
/// host function's arithmetic in its order (`b1` its first box), so both give the same floats.
pub fn ciou_columns<const D: usize>(b1: [Tensor<D>; 4], b2: [Tensor<D>; 4]) -> Tensor<D> {
    let (iou, dist, d) = ciou_terms(b1, b2);
    let v = d.clone() * FOUR_OVER_PI2 * d;
    let alpha = v.clone() / (v.clone() - iou.clone() + (1.0 + EPS));
    iou - (dist + v * alpha)
}

/// IoU, the centre-distance penalty ρ²/c² and the aspect-angle difference of two box sets.
fn ciou_terms<const D: usize>(b1: [Tensor<D>; 4], b2: [Tensor<D>; 4]) -> (Tensor<D>, Tensor<D>, Tensor<D>) {
    let [p1, q1, p2, q2] = b1;
    let [t1, u1, t2, u2] = b2;
    let w1 = p2.clone() - p1.clone();
    let h1 = q2.clone() - q1.clone() + EPS;
    let w2 = t2.clone() - t1.clone();
    let h2 = u2.clone() - u1.clone() + EPS;
    let iw = (p2.clone().min_pair(t2.clone()) - p1.clone().max_pair(t1.clone())).clamp_min(0.0);
    let ih = (q2.clone().min_pair(u2.clone()) - q1.clone().max_pair(u1.clone())).clamp_min(0.0);
    let inter = iw * ih;
    let union = w1.clone() * h1.clone() + w2.clone() * h2.clone() - inter.clone() + EPS;
    let iou = inter / union;
    let cw = p2.clone().max_pair(t2.clone()) - p1.clone().min_pair(t1.clone());
    let ch = q2.clone().max_pair(u2.clone()) - q1.clone().min_pair(u1.clone());
    let c2 = cw.clone() * cw + ch.clone() * ch + EPS;
    let dx = t1 + t2 - p1 - p2;
    let dy = u1 + u2 - q1 - q2;
    let rho2 = (dx.clone() * dx + dy.clone() * dy) / 4.0;
    let d = (w2 / h2).atan() - (w1 / h1).atan();
    (iou, rho2 / c2, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identical_boxes_have_ciou_one() {
        let b = [10.0, 10.0, 50.0, 30.0];
        assert!((ciou(&b, &b) - 1.0).abs() < 1e-5);
    }

    #[test]
    fn tensor_and_host_agree() {
        let device = crate::default_device();
        let a = [[0.0f32, 0.0, 10.0, 10.0], [5.0, 5.0, 20.0, 9.0]];
        let b = [[2.0f32, 1.0, 12.0, 14.0], [0.0, 0.0, 4.0, 4.0]];
        let ta = Tensor::<2>::from_floats(a, &device);
        let tb = Tensor::<2>::from_floats(b, &device);
        let got = ciou_tensor(ta, tb).try_into_vec_as::<f32>().unwrap();
        for i in 0..2 {
            assert!((got[i] - ciou(&a[i], &b[i])).abs() < 1e-6, "{} vs {}", got[i], ciou(&a[i], &b[i]));
        }
    }
}
