//! Runtime choice of the instruction set for our elementwise loops: the crate is compiled for
//! baseline x86-64 (SSE2), so a loop only uses AVX2 or AVX-512 when it is inlined into a function
//! compiled with those features. [`run`] calls its closure inside such a function for the best set
//! this CPU has; the loops it runs must be `#[inline(always)]` to be compiled there.

/// Whether this CPU has AVX-512 (F): [`run`]'s first choice.
#[inline(always)]
pub fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("avx512f");
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Whether this CPU has AVX2 and FMA: [`run`]'s second choice.
#[inline(always)]
pub fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma");
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Calls `f` compiled for AVX-512, AVX2+FMA or the baseline, whichever this CPU supports best:
/// only where LLVM inlines the closure, which it does for short ones (a one-line elementwise loop);
/// for anything longer use [`multiversion!`].
#[inline(always)]
pub fn run<R>(f: impl FnOnce() -> R) -> R {
    #[cfg(target_arch = "x86_64")]
    {
        if has_avx512() {
            // SAFETY: the CPU has the features the function is compiled for.
            return unsafe { avx512(f) };
        }
        if has_avx2_fma() {
            // SAFETY: as above.
            return unsafe { avx2(f) };
        }
    }
    f()
}

/// `vis fn name(args) -> R = body;` defines `name`, which calls the `#[inline(always)]` function
/// `body` compiled for AVX-512, AVX2+FMA or the baseline, whichever this CPU supports best. Unlike
/// [`run`], whose closure LLVM may leave out of line (then compiled for the baseline: BatchNorm's
/// statistics and backward ran in scalar SSE code that way), the body is inlined into each
/// `#[target_feature]` copy. Arithmetic is the same in every copy (no fused multiply-adds unless
/// the body asks for them), so results do not depend on the CPU.
macro_rules! multiversion {
    ($(#[$attr:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? = $body:path;) => {
        $(#[$attr])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx512dq,avx2,fma")]
                $(#[$attr])*
                unsafe fn avx512($($arg: $ty),*) $(-> $ret)? {
                    $body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                $(#[$attr])*
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    $body($($arg),*)
                }
                if $crate::kernels::simd::has_avx512() {
                    // SAFETY: the CPU has the features the function is compiled for.
                    return unsafe { avx512($($arg),*) };
                }
                if $crate::kernels::simd::has_avx2_fma() {
                    // SAFETY: as above.
                    return unsafe { avx2($($arg),*) };
                }
            }
            $body($($arg),*)
        }
    };
}
pub(crate) use multiversion;

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx512dq,avx2,fma")]
unsafe fn avx512<R>(f: impl FnOnce() -> R) -> R {
    f()
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn avx2<R>(f: impl FnOnce() -> R) -> R {
    f()
}

/// `e^x` in f32 without a libm call, so that loops over it vectorise: 2^n · e^r with
/// n = round(x·log₂e) (by the 1.5·2²³ trick, no `round` call) and a degree-6 Taylor polynomial for
/// |r| ≤ ln2/2 (relative error below 4e-7 over the whole range, see the test).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    exp_with(x, |a, b, c| a * b + c)
}

/// [`exp`] with fused multiply-adds: a third less time, but only for a caller compiled with FMA
/// (inside a `#[target_feature(enable = "fma")]` function, not merely under [`run`], whose
/// closures may stay out of line); anywhere else each one is a library call.
#[inline(always)]
pub fn exp_fma(x: f32) -> f32 {
    exp_with(x, f32::mul_add)
}

/// The one polynomial of [`exp`] and [`exp_fma`], with `madd(a, b, c) = a·b + c`.
#[inline(always)]
fn exp_with(x: f32, madd: impl Fn(f32, f32, f32) -> f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5·2²³: adding it rounds to an integer in the low bits
    let x = x.clamp(-87.0, 88.0);
    let t = madd(x, std::f32::consts::LOG2_E, MAGIC);
    let n = t - MAGIC;
    let r = madd(-n, 1.428_606_8e-6, madd(-n, 0.693_145_75, x));
    let p = [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0].into_iter().fold(1.0 / 720.0, |p, c| madd(p, r, c));
    let two_n = t.to_bits().wrapping_sub(MAGIC.to_bits()).wrapping_add(127) << 23;
    p * f32::from_bits(two_n)
}

/// 1 / (1 + e^−z).
#[inline(always)]
pub fn sigmoid(z: f32) -> f32 {
    1.0 / (1.0 + exp(-z))
}

/// SiLU, z · sigmoid(z), as one division (one rounding and one multiplication fewer).
#[inline(always)]
pub fn silu(z: f32) -> f32 {
    z / (1.0 + exp(-z))
}

/// [`silu`] with [`exp_fma`]: for callers compiled with FMA only.
#[inline(always)]
pub fn silu_fma(z: f32) -> f32 {
    z / (1.0 + exp_fma(-z))
}

/// Lanes of our vectorised reductions: one AVX-512 register (two AVX2 ones).
pub const LANES: usize = 16;

/// `Σ f(i)` over `0..n`, accumulated in [`LANES`] independent lanes so that the loop vectorises.
#[inline(always)]
pub fn lane_sum(n: usize, f: impl Fn(usize) -> f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let whole = n / LANES * LANES;
    for c in 0..n / LANES {
        for (l, a) in acc.iter_mut().enumerate() {
            *a += f(c * LANES + l);
        }
    }
    acc.iter().sum::<f32>() + (whole..n).map(f).sum::<f32>()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_4e_7_relative_over_the_range() {
        let mut worst = 0f64;
        for i in 0..=1_750_000 {
            let x = -87.0 + i as f32 * 1e-4;
            let exact = (x as f64).exp();
            for ours in [exp(x), exp_fma(x)] {
                worst = worst.max((ours as f64 - exact).abs() / exact);
            }
        }
        assert!(worst < 4e-7, "worst relative error {worst}");
        assert_eq!(exp(-1000.0), exp(-87.0));
        assert!(exp(1000.0).is_finite());
        assert!((sigmoid(0.0) - 0.5).abs() < 1e-7);
    }
}
