//! Matrix products in bf16 arithmetic for mixed precision (`--amp bf16`).
//!
//! The arithmetic: both operands rounded to bfloat16 (to nearest, ties to even), their products
//! exact in f32 (two 8-bit significands fit in 24 bits), the sums in f32. CPUs with AVX512-BF16
//! (`vdpbf16ps`: AMD Zen 4, Intel Cooper Lake and later) compute it natively on packed bf16
//! panels, half the bytes and twice the multiply-adds per instruction of f32. Other CPUs get the
//! same numbers (up to the order of the f32 sums) from f32 products of rounded copies of the
//! operands: a little slower than plain f32, there for tests and accuracy runs.
//!
//! Which arithmetic a convolution uses is chosen where the model runs (the trainer's step, the
//! teacher's forward) with [`with`], and travels in its `ConvSpec`, so that its backward pass
//! uses what its forward did.

use std::cell::{Cell, RefCell};

use super::conv::{self, Mat};

/// The arithmetic of the convolutions' matrix products.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Arithmetic {
    #[default]
    F32,
    /// bf16 operands, f32 sums.
    Bf16,
}

thread_local! {
    static CURRENT: Cell<Arithmetic> = const { Cell::new(Arithmetic::F32) };
}

/// The arithmetic convolutions started on this thread use now.
pub fn current() -> Arithmetic {
    CURRENT.with(Cell::get)
}

/// Runs `f` with convolutions started on this thread in arithmetic `a` (restored afterwards,
/// also when `f` panics).
pub fn with<R>(a: Arithmetic, f: impl FnOnce() -> R) -> R {
    struct Restore(Arithmetic);
    impl Drop for Restore {
        fn drop(&mut self) {
            CURRENT.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(CURRENT.with(|c| c.replace(a)));
    f()
}

/// Whether this CPU computes bf16 products natively (AVX512-BF16).
pub fn native() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("avx512f") && std::arch::is_x86_feature_detected!("avx512bf16");
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// The bf16 bits of `x`, rounded to nearest even (NaN stays a quiet NaN). Branch-free, so that
/// packing loops vectorise.
#[inline(always)]
pub fn bits(x: f32) -> u16 {
    let b = x.to_bits();
    let rounded = b.wrapping_add(0x7FFF + ((b >> 16) & 1)) >> 16;
    let nan = (b >> 16) | 0x40;
    (if x.is_nan() { nan } else { rounded }) as u16
}

/// `x` rounded to bf16, as an f32.
#[inline(always)]
pub fn round(x: f32) -> f32 {
    f32::from_bits((bits(x) as u32) << 16)
}

/// Every value of `v` rounded to bf16.
pub fn rounded(v: &[f32]) -> Vec<f32> {
    super::simd::run(|| v.iter().map(|&x| round(x)).collect())
}

/// `dst[m×n] (+)= lhs[m×k] · rhs[k×n]` in bf16 arithmetic, single-threaded, on packed panels:
/// natively where the CPU can. Convolutions call it only there (elsewhere they emulate bf16 on
/// whole operands, see `conv::emulated`); the portable tile keeps it correct on any CPU.
///
/// # Safety
/// As [`conv::mm`]: every view addresses valid memory for its extent; `dst` aliases no input.
pub(super) unsafe fn mm(m: usize, n: usize, k: usize, dst: (*mut f32, isize, isize), acc: bool, lhs: Mat, rhs: Mat) {
    #[cfg(target_arch = "x86_64")]
    if native() {
        return packed::<native::Avx512Bf16>(m, n, k, dst, acc, lhs, rhs);
    }
    packed::<Portable>(m, n, k, dst, acc, lhs, rhs)
}

thread_local! {
    static PANELS: RefCell<(Vec<u32>, Vec<u32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// Rows of a register tile.
pub(super) const MR: usize = 8;
/// Columns of a register tile: two 16-lane vectors.
pub(super) const NR: usize = 32;
/// Depth of one packed block (even: the products go in pairs along k). A block of the left
/// operand (m × KC bf16) stays in L2, a panel of the right one (KC × NR) in L1.
const KC: usize = 256;
/// Columns of one packed block of the right operand.
const NC: usize = 512;

/// A register-tile kernel over packed panels: `a` holds `pairs × MR` and `b` `pairs × NR` words,
/// each word the bf16 pair (k = 2p low half, 2p + 1 high half) of one row or column.
pub(super) trait Tile {
    /// `tile[r·NR + c] = Σ_p a[p][r]·b[p][c]` (both halves of each word).
    ///
    /// # Safety
    /// `a` and `b` must hold `pairs` words per row and column of the tile.
    unsafe fn product(pairs: usize, a: *const u32, b: *const u32, tile: &mut [f32; MR * NR]);

    /// The full tile's product written (or added, with `add`) straight into rows of `ld` floats
    /// from `dst`.
    ///
    /// # Safety
    /// As [`Tile::product`]; `dst` must address MR rows of NR floats at stride `ld`.
    unsafe fn product_into(pairs: usize, a: *const u32, b: *const u32, dst: *mut f32, ld: isize, add: bool) {
        let mut tile = [0.0f32; MR * NR];
        Self::product(pairs, a, b, &mut tile);
        store(&tile, (0, 0), (MR, NR), (dst, ld, 1), add);
    }
}

/// The tile kernel in portable code: what the packing is tested with on every CPU, and [`mm`]'s
/// fallback where bf16 is not native.
pub(super) struct Portable;

impl Tile for Portable {
    unsafe fn product(pairs: usize, a: *const u32, b: *const u32, tile: &mut [f32; MR * NR]) {
        let half = |w: u32, hi: bool| f32::from_bits(if hi { w & 0xFFFF_0000 } else { w << 16 });
        tile.fill(0.0);
        for p in 0..pairs {
            for r in 0..MR {
                let wa = *a.add(p * MR + r);
                for c in 0..NR {
                    let wb = *b.add(p * NR + c);
                    tile[r * NR + c] += half(wa, false) * half(wb, false) + half(wa, true) * half(wb, true);
                }
            }
        }
    }
}

/// The packed product with tile kernel `T`: k in blocks of [`KC`], the right operand's columns in
/// blocks of [`NC`], each block packed (rounded) once and multiplied tile by tile.
///
/// # Safety
/// As [`mm`].
pub(super) unsafe fn packed<T: Tile>(m: usize, n: usize, k: usize, dst: (*mut f32, isize, isize), acc: bool, lhs: Mat, rhs: Mat) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        return conv::mm(m, n, 0, dst, acc, lhs, rhs);
    }
    PANELS.with(|p| {
        let (a, b) = &mut *p.borrow_mut();
        let mut tile = [0.0f32; MR * NR];
        for k0 in (0..k).step_by(KC) {
            let kc = KC.min(k - k0);
            let pairs = kc.div_ceil(2);
            pack_left(m, (k0, kc), lhs, a);
            for n0 in (0..n).step_by(NC) {
                let nc = NC.min(n - n0);
                pack_right((k0, kc), (n0, nc), rhs, b);
                for jp in 0..nc.div_ceil(NR) {
                    for ip in 0..m.div_ceil(MR) {
                        let (ap, bp) = (a.as_ptr().add(ip * pairs * MR), b.as_ptr().add(jp * pairs * NR));
                        let (i0, j0, add) = (ip * MR, n0 + jp * NR, acc || k0 > 0);
                        if dst.2 == 1 && i0 + MR <= m && j0 + NR <= n {
                            T::product_into(pairs, ap, bp, dst.0.offset(i0 as isize * dst.1 + j0 as isize), dst.1, add);
                        } else {
                            T::product(pairs, ap, bp, &mut tile);
                            store(&tile, (i0, j0), (m, n), dst, add);
                        }
                    }
                }
            }
        }
    })
}

/// Writes (or adds, with `add`) the part of a register tile at `(i0, j0)` that lies inside the
/// `m × n` destination.
#[inline(always)]
unsafe fn store(tile: &[f32; MR * NR], (i0, j0): (usize, usize), (m, n): (usize, usize), dst: (*mut f32, isize, isize), add: bool) {
    let width = NR.min(n - j0);
    for r in 0..MR.min(m - i0) {
        let row = dst.0.offset((i0 + r) as isize * dst.1 + j0 as isize * dst.2);
        let t = &tile[r * NR..][..width];
        if dst.2 == 1 {
            // contiguous rows (every convolution's case): loops that vectorise
            let d = std::slice::from_raw_parts_mut(row, width);
            if add {
                d.iter_mut().zip(t).for_each(|(d, t)| *d += t);
            } else {
                d.copy_from_slice(t);
            }
        } else {
            for (c, &v) in t.iter().enumerate() {
                let d = row.offset(c as isize * dst.2);
                *d = if add { *d + v } else { v };
            }
        }
    }
}

/// Reads element (i, j) of a view, 0 outside `rows × cols`.
#[inline(always)]
unsafe fn at(v: Mat, (rows, cols): (usize, usize), i: usize, j: usize) -> f32 {
    if i < rows && j < cols {
        *v.0.offset(i as isize * v.1 + j as isize * v.2)
    } else {
        0.0
    }
}

#[inline(always)]
fn word(lo: f32, hi: f32) -> u32 {
    bits(lo) as u32 | (bits(hi) as u32) << 16
}

/// Columns `k0..k0 + kc` of the left operand `[m, k]` as panels of [`MR`] rows: word
/// `(panel·pairs + p)·MR + r` is (row, k = k0 + 2p, 2p + 1); rows past `m` and an odd last k are 0.
unsafe fn pack_left(m: usize, (k0, kc): (usize, usize), lhs: Mat, out: &mut Vec<u32>) {
    let pairs = kc.div_ceil(2);
    let panels = m.div_ceil(MR);
    out.resize(panels * pairs * MR, 0);
    let v = Mat(lhs.0.offset(k0 as isize * lhs.2), lhs.1, lhs.2);
    let full_pairs = kc / 2;
    for ip in 0..panels {
        for r in 0..MR {
            let i = ip * MR + r;
            let at_pair = |p: usize| (ip * pairs + p) * MR + r;
            let mut p0 = 0;
            if i < m && v.2 == 1 {
                // a contiguous row: its pairs are adjacent
                let row = std::slice::from_raw_parts(v.0.offset(i as isize * v.1), 2 * full_pairs);
                for (p, pair) in row.chunks_exact(2).enumerate() {
                    out[at_pair(p)] = word(pair[0], pair[1]);
                }
                p0 = full_pairs;
            }
            for p in p0..pairs {
                out[at_pair(p)] = word(at(v, (m, kc), i, 2 * p), at(v, (m, kc), i, 2 * p + 1));
            }
        }
    }
}

/// Rows `k0..k0 + kc` and columns `n0..n0 + nc` of the right operand `[k, n]` as panels of
/// [`NR`] columns: word `(panel·pairs + p)·NR + c` is (k = k0 + 2p, 2p + 1; column); columns past
/// the block and an odd last k are 0. Compiled for the widest vectors this CPU has.
unsafe fn pack_right(k: (usize, usize), n: (usize, usize), rhs: Mat, out: &mut Vec<u32>) {
    #[cfg(target_arch = "x86_64")]
    {
        if super::simd::has_avx512() {
            return pack_right_avx512(k, n, rhs, out);
        }
        if super::simd::has_avx2_fma() {
            return pack_right_avx2(k, n, rhs, out);
        }
    }
    pack_right_body(k, n, rhs, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn pack_right_avx512(k: (usize, usize), n: (usize, usize), rhs: Mat, out: &mut Vec<u32>) {
    pack_right_body(k, n, rhs, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn pack_right_avx2(k: (usize, usize), n: (usize, usize), rhs: Mat, out: &mut Vec<u32>) {
    pack_right_body(k, n, rhs, out)
}

#[inline(always)]
unsafe fn pack_right_body((k0, kc): (usize, usize), (n0, nc): (usize, usize), rhs: Mat, out: &mut Vec<u32>) {
    let pairs = kc.div_ceil(2);
    let panels = nc.div_ceil(NR);
    out.resize(panels * pairs * NR, 0);
    let v = Mat(rhs.0.offset(k0 as isize * rhs.1 + n0 as isize * rhs.2), rhs.1, rhs.2);
    let full = kc / 2;
    for jp in 0..panels {
        let j0 = jp * NR;
        let panel = &mut out[jp * pairs * NR..][..pairs * NR];
        if NR.min(nc - j0) < NR {
            // the block's last, narrower panel
            for (i, d) in panel.iter_mut().enumerate() {
                let (p, c) = (i / NR, i % NR);
                *d = word(at(v, (kc, nc), 2 * p, j0 + c), at(v, (kc, nc), 2 * p + 1, j0 + c));
            }
            continue;
        }
        if v.2 == 1 {
            // contiguous rows (the forward's and the input gradient's case): two rows at a time
            for (p, dst) in panel.chunks_exact_mut(NR).take(full).enumerate() {
                let lo = std::slice::from_raw_parts(v.0.offset(2 * p as isize * v.1 + j0 as isize), NR);
                let hi = std::slice::from_raw_parts(v.0.offset((2 * p + 1) as isize * v.1 + j0 as isize), NR);
                for ((d, &l), &h) in dst.iter_mut().zip(lo).zip(hi) {
                    *d = word(l, h);
                }
            }
        } else {
            // another layout (the weight gradient's transposed view, whose pairs are adjacent):
            // along each column
            for c in 0..NR {
                let col = v.0.offset((j0 + c) as isize * v.2);
                for p in 0..full {
                    let e = col.offset(2 * p as isize * v.1);
                    panel[p * NR + c] = word(*e, *e.offset(v.1));
                }
            }
        }
        for p in full..pairs {
            for c in 0..NR {
                panel[p * NR + c] = word(at(v, (kc, nc), 2 * p, j0 + c), at(v, (kc, nc), 2 * p + 1, j0 + c));
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod native {
    use std::arch::x86_64::*;

    use super::{Tile, MR, NR};

    /// The tile kernel on `vdpbf16ps`: 16 accumulators (MR rows × two 16-lane halves), each pair
    /// step one broadcast word of the left panel per row against two vectors of the right one.
    pub struct Avx512Bf16;

    impl Tile for Avx512Bf16 {
        unsafe fn product(pairs: usize, a: *const u32, b: *const u32, tile: &mut [f32; MR * NR]) {
            into(pairs, a, b, tile.as_mut_ptr(), NR as isize, false)
        }

        unsafe fn product_into(pairs: usize, a: *const u32, b: *const u32, dst: *mut f32, ld: isize, add: bool) {
            into(pairs, a, b, dst, ld, add)
        }
    }

    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn into(pairs: usize, a: *const u32, b: *const u32, dst: *mut f32, ld: isize, add: bool) {
        let acc = sums(pairs, a, b);
        for (r, row) in acc.iter().enumerate() {
            let d = dst.offset(r as isize * ld);
            for (h, &v) in row.iter().enumerate() {
                let v = if add { _mm512_add_ps(_mm512_loadu_ps(d.add(16 * h)), v) } else { v };
                _mm512_storeu_ps(d.add(16 * h), v);
            }
        }
    }

    #[target_feature(enable = "avx512f,avx512bf16")]
    #[inline]
    unsafe fn sums(pairs: usize, a: *const u32, b: *const u32) -> [[__m512; 2]; MR] {
        let mut acc = [[_mm512_setzero_ps(); 2]; MR];
        for p in 0..pairs {
            let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(p * NR) as *const _));
            let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(p * NR + 16) as *const _));
            for (r, row) in acc.iter_mut().enumerate() {
                let w: __m512bh = std::mem::transmute(_mm512_set1_epi32(*a.add(p * MR + r) as i32));
                row[0] = _mm512_dpbf16_ps(row[0], w, b0);
                row[1] = _mm512_dpbf16_ps(row[1], w, b1);
            }
        }
        acc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deterministic pseudo-random matrix in [-1, 1) with a few large and tiny values.
    fn matrix(len: usize, seed: u32) -> Vec<f32> {
        let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
        (0..len)
            .map(|i| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                let v = (s >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0;
                match i % 97 {
                    0 => v * 300.0,
                    1 => v * 1e-3,
                    _ => v,
                }
            })
            .collect()
    }

    /// `lhs · rhs` in f64 over the given (already rounded or not) operands; and Σ|products|.
    fn reference(m: usize, n: usize, k: usize, lhs: &[f32], rhs: &[f32]) -> (Vec<f64>, Vec<f64>) {
        let (mut y, mut mag) = (vec![0.0; m * n], vec![0.0; m * n]);
        for i in 0..m {
            for j in 0..n {
                for l in 0..k {
                    let p = lhs[i * k + l] as f64 * rhs[l * n + j] as f64;
                    y[i * n + j] += p;
                    mag[i * n + j] += p.abs();
                }
            }
        }
        (y, mag)
    }

    #[test]
    fn rounding_is_to_nearest_even() {
        let one = 1.0f32.to_bits();
        // exactly halfway between 1 and the next bf16 (1 + 2⁻⁷): ties to the even one, 1
        assert_eq!(round(f32::from_bits(one + 0x8000)), 1.0);
        // halfway above an odd significand rounds up
        assert_eq!(round(f32::from_bits(one + 0x18000)).to_bits(), one + 0x20000);
        assert_eq!(round(f32::from_bits(one + 0x8001)).to_bits(), one + 0x10000);
        assert_eq!(round(f32::from_bits(one + 0x7FFF)), 1.0);
        assert_eq!(round(-3.0), -3.0);
        assert_eq!(round(f32::MAX), f32::INFINITY);
        assert_eq!(round(f32::INFINITY), f32::INFINITY);
        assert!(round(f32::NAN).is_nan());
        assert!(round(f32::from_bits(0x7F80_0001)).is_nan(), "a NaN whose payload sits in the low bits stays NaN");
        // relative error at most half a unit in the last place: 2⁻⁸ (8 significant bits)
        for &x in &matrix(1000, 3) {
            assert!((round(x) - x).abs() <= x.abs() / 256.0, "{x} → {}", round(x));
        }
    }

    /// The bf16 products of every path against the f64 product of the rounded operands: the only
    /// differences left are the f32 sums (and none may come from a packing mistake, which would be
    /// of the size of the values themselves).
    fn check(name: &str, m: usize, n: usize, k: usize, mm: unsafe fn(usize, usize, usize, (*mut f32, isize, isize), bool, Mat, Mat)) {
        let (lhs, rhs) = (matrix(m * k, 1 + m as u32), matrix(k * n, 2 + n as u32));
        let r = |v: &[f32]| v.iter().map(|&x| round(x)).collect::<Vec<_>>();
        let (want, mag) = reference(m, n, k, &r(&lhs), &r(&rhs));
        let start = matrix(m * n, 9);
        for (acc, transposed) in [(false, false), (true, false), (false, true)] {
            let mut y = start.clone();
            // the right operand also as a transposed view (the weight gradient reads it so)
            let rhs_t: Vec<f32> = (0..n * k).map(|i| rhs[(i % k) * n + i / k]).collect();
            let view = if transposed { Mat(rhs_t.as_ptr(), 1, k as isize) } else { Mat(rhs.as_ptr(), n as isize, 1) };
            unsafe { mm(m, n, k, (y.as_mut_ptr(), n as isize, 1), acc, Mat(lhs.as_ptr(), k as isize, 1), view) };
            for i in 0..m * n {
                let base = if acc { start[i] as f64 } else { 0.0 };
                let err = (y[i] as f64 - base - want[i]).abs();
                // the bound of k f32 additions (k·2⁻²⁴ of the magnitudes); a packing mistake costs
                // whole products, of the order of mag/k, far above it
                let tol = (k + 1) as f64 * f64::from(f32::EPSILON) / 2.0 * (mag[i] + base.abs()) + 1e-30;
                assert!(err <= tol, "{name} {m}x{n}x{k} acc={acc} transposed={transposed} at {i}: {} vs {} (err {err:e}, tol {tol:e})", y[i], want[i] + base);
            }
        }
        // a column-major destination
        let mut yt = vec![0.0f32; m * n];
        unsafe { mm(m, n, k, (yt.as_mut_ptr(), 1, m as isize), false, Mat(lhs.as_ptr(), k as isize, 1), Mat(rhs.as_ptr(), n as isize, 1)) };
        for i in 0..m * n {
            let (r, c) = (i / n, i % n);
            let tol = (k + 1) as f64 * f64::from(f32::EPSILON) / 2.0 * mag[i] + 1e-30;
            assert!((yt[c * m + r] as f64 - want[i]).abs() <= tol, "{name} {m}x{n}x{k} column-major at ({r}, {c})");
        }
    }

    const SHAPES: [(usize, usize, usize); 7] = [(1, 1, 1), (8, 32, 2), (16, 64, 27), (13, 45, 300), (3, 600, 513), (70, 33, 9), (64, 1100, 64)];

    #[test]
    fn packed_products_are_bf16_arithmetic() {
        for (m, n, k) in SHAPES {
            check("packed, portable tile", m, n, k, packed::<Portable>);
        }
    }

    /// The native tile kernel, on CPUs that have it (the other paths run everywhere).
    #[test]
    fn native_products_are_bf16_arithmetic() {
        if !native() {
            eprintln!("this CPU lacks AVX512-BF16: the native tile kernel is not run");
            return;
        }
        #[cfg(target_arch = "x86_64")]
        for (m, n, k) in SHAPES {
            check("native", m, n, k, packed::<native::Avx512Bf16>);
        }
    }

    #[test]
    fn bf16_products_differ_from_f32_ones() {
        // guards the checks above: with unrounded operands the reference differs beyond their tolerance
        let (m, n, k) = (8, 32, 64);
        let (lhs, rhs) = (matrix(m * k, 5), matrix(k * n, 6));
        let (exact, mag) = reference(m, n, k, &lhs, &rhs);
        let mut y = vec![0.0f32; m * n];
        unsafe { mm(m, n, k, (y.as_mut_ptr(), n as isize, 1), false, Mat(lhs.as_ptr(), k as isize, 1), Mat(rhs.as_ptr(), n as isize, 1)) };
        let worst = (0..m * n).map(|i| (y[i] as f64 - exact[i]).abs() / mag[i]).fold(0.0, f64::max);
        assert!(worst > 1e-5 && worst < 1e-2, "relative difference to f32 products {worst:e}");
    }

    #[test]
    fn the_arithmetic_is_scoped_to_the_thread_and_restored() {
        assert_eq!(current(), Arithmetic::F32);
        with(Arithmetic::Bf16, || {
            assert_eq!(current(), Arithmetic::Bf16);
            assert_eq!(std::thread::spawn(current).join().unwrap(), Arithmetic::F32);
        });
        assert_eq!(current(), Arithmetic::F32);
        let _ = std::panic::catch_unwind(|| with(Arithmetic::Bf16, || panic!("inside")));
        assert_eq!(current(), Arithmetic::F32);
    }
}
