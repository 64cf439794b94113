//! Inference's transformed filters (`U = G w Gᵀ`), kept across forwards: a model that predicts or
//! validates batch after batch, or a frozen teacher, transforms its kernels once rather than in
//! every forward (the transform and its transposing writes took 3–4% of yolov8n's forward at 640).
//! An entry keeps an exact copy of the weights it came from and serves only bit-identical
//! weights, so changed weights (an EMA updated in place, a new checkpoint at the same address)
//! never read a stale transform.

use std::sync::{Arc, Mutex};

/// Most floats the entries hold, weights and transforms together: 16 Mi floats = 64 MiB (yolov8n
/// needs about 6.5 Mi). A transform that does not fit is not kept: dropping older entries for it
/// would, for a model larger than the cache (yolov8s needs about 26 Mi), evict each entry before
/// its next use, where keeping the first ones serves them in every forward.
const MAX_FLOATS: usize = 16 << 20;

struct Entry {
    elems: usize,
    weight: Vec<f32>,
    u: Arc<Vec<f32>>,
}

impl Entry {
    fn floats(&self) -> usize {
        self.weight.len() + self.u.len()
    }
}

static CACHE: Mutex<Vec<Entry>> = Mutex::new(Vec::new());

/// The transform of `weight` with `elems` elements per kernel: an entry's for bit-identical
/// weights, else `make()`'s, which is then kept if it fits.
pub(super) fn transformed(weight: &[f32], elems: usize, make: impl FnOnce() -> Vec<f32>) -> Arc<Vec<f32>> {
    // a panic elsewhere while holding the lock leaves a list that is still valid
    let lock = || CACHE.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(e) = lock().iter().find(|e| e.elems == elems && bits(&e.weight) == bits(weight)) {
        return e.u.clone();
    }
    let u = Arc::new(make());
    let mut cache = lock();
    let held: usize = cache.iter().map(Entry::floats).sum();
    if held + weight.len() + u.len() <= MAX_FLOATS {
        cache.push(Entry { elems, weight: weight.to_vec(), u: u.clone() });
    }
    u
}

/// The bytes of `v`, to compare weights bit for bit (−0 ≠ +0, NaN = NaN) with one `memcmp`.
fn bits(v: &[f32]) -> &[u8] {
    // SAFETY: f32 has no padding or invalid bit patterns; u8 needs no alignment; same extent.
    unsafe { std::slice::from_raw_parts(v.as_ptr().cast(), std::mem::size_of_val(v)) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Equal weights get the kept transform without making it again; a weight changed in one
    /// bit (−0 for +0) gets its own.
    #[test]
    fn equal_weights_reuse_the_transform_and_changed_ones_do_not() {
        let w: Vec<f32> = (0..27).map(|i| i as f32 * 0.25 - 3.0).collect();
        let first = transformed(&w, 16, || vec![1.0; 48]);
        let again = transformed(&w.clone(), 16, || panic!("transformed again"));
        assert!(Arc::ptr_eq(&first, &again));
        let mut changed = w.clone();
        changed[12] = -0.0; // w[12] is +0
        assert_eq!(w[12].to_bits(), 0);
        assert_eq!(*transformed(&changed, 16, || vec![2.0; 48]), vec![2.0; 48]);
        assert_eq!(*transformed(&w, 36, || vec![3.0; 108]), vec![3.0; 108], "another form's transform");
    }
}
