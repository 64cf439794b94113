//! Learning-rate schedule and warm-up, per Ultralytics 8.4.190.

/// Epoch factor `lf(e)`: linear from 1 to `lrf`, or cosine with `cos_lr`.
pub fn lr_factor(epoch: usize, epochs: usize, lrf: f64, cosine: bool) -> f64 {
    let (e, n) = (epoch as f64, epochs as f64);
    if cosine {
        ((1.0 - (std::f64::consts::PI * e / n).cos()) / 2.0) * (lrf - 1.0) + 1.0
    } else {
        (1.0 - e / n).max(0.0) * (1.0 - lrf) + lrf
    }
}

/// Warm-up iterations: round(min(warmup_epochs, epochs − 1) · batches per epoch).
pub fn warmup_iters(warmup_epochs: f64, epochs: usize, batches: usize) -> usize {
    (warmup_epochs.min(epochs as f64 - 1.0).max(0.0) * batches as f64).round() as usize
}

/// Linear interpolation of `x` over `[x0, x1]` → `[y0, y1]` (numpy.interp on two points).
pub fn interp(x: f64, x0: f64, x1: f64, y0: f64, y1: f64) -> f64 {
    if x <= x0 {
        y0
    } else if x >= x1 {
        y1
    } else {
        y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn factors_start_at_one_and_end_at_lrf() {
        assert_eq!(lr_factor(0, 10, 0.01, false), 1.0);
        assert!((lr_factor(10, 10, 0.01, false) - 0.01).abs() < 1e-12);
        assert!((lr_factor(10, 10, 0.01, true) - 0.01).abs() < 1e-12);
        assert!((lr_factor(5, 10, 0.01, true) - 0.505).abs() < 1e-12);
        assert_eq!(warmup_iters(3.0, 40, 13), 39);
        assert_eq!(warmup_iters(3.0, 2, 13), 13);
        assert_eq!(interp(5.0, 0.0, 10.0, 0.8, 0.9), 0.85000000000000009);
    }
}
