//! Portable SIMD for the CPU kernels: one small trait, [`Simd`], that each instruction set
//! implements with a handful of intrinsics ([`x86`], `aarch64`, and the one-lane [`Scalar`]
//! below), and the vector maths written once on top of it ([`exp`], [`gelu`], [`tanh`]).
//!
//! A value of an instruction set's token type (`x86::Avx512`, ...) can only be made where the
//! CPU has been checked to support it, so the token's arithmetic methods are safe. Speed comes
//! from inlining: every method is `#[inline(always)]`, and kernels are generic functions that
//! are instantiated inside a `#[target_feature]` function, where each method becomes one
//! instruction: the GEMM's micro-kernel has its own (one per row count), and the others
//! (softmax, LayerNorm) go through [`Isa::dispatch`], which checks the CPU first.

#[cfg(target_arch = "aarch64")]
pub mod aarch64;
#[cfg(target_arch = "x86_64")]
pub mod x86;

/// The instruction sets the CPU kernels are written for. [`Isa::best`] picks one at run time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Isa {
    /// Plain Rust, one lane: runs everywhere, the fallback.
    Scalar,
    /// x86-64 AVX2 + FMA: 8 lanes, 16 registers.
    Avx2,
    /// x86-64 AVX-512F: 16 lanes, 32 registers.
    Avx512,
    /// aarch64 Advanced SIMD: 4 lanes, 32 registers.
    Neon,
}

impl Isa {
    /// Every instruction set, fastest first.
    pub const ALL: [Isa; 4] = [Isa::Avx512, Isa::Avx2, Isa::Neon, Isa::Scalar];

    /// Whether this CPU can run the instruction set (checked at run time).
    pub fn is_available(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => x86::Avx2::new().is_some(),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => x86::Avx512::new().is_some(),
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => aarch64::Neon::new().is_some(),
            _ => false,
        }
    }

    /// The fastest instruction set this CPU supports.
    pub fn best() -> Isa {
        Isa::ALL
            .into_iter()
            .find(|isa| isa.is_available())
            .unwrap_or(Isa::Scalar)
    }

    /// The instruction sets this CPU supports, fastest first (tests and benchmarks run each).
    pub fn available() -> Vec<Isa> {
        Isa::ALL
            .into_iter()
            .filter(|isa| isa.is_available())
            .collect()
    }

    /// Runs `f` with the vectors of this instruction set, inside a function compiled for it
    /// (`#[target_feature]`), so that `f`'s inlined arithmetic becomes its instructions. An
    /// instruction set this CPU lacks runs the scalar lanes instead.
    #[inline]
    pub fn dispatch<F: SimdFn>(self, f: F) -> F::Output {
        match self {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the token exists, so the CPU supports AVX-512F.
            Isa::Avx512 if let Some(s) = x86::Avx512::new() => unsafe { on_avx512(s, f) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the token exists, so the CPU supports AVX2 and FMA.
            Isa::Avx2 if let Some(s) = x86::Avx2::new() => unsafe { on_avx2(s, f) },
            #[cfg(target_arch = "aarch64")]
            // SAFETY: the token exists, so the CPU supports NEON.
            Isa::Neon if let Some(s) = aarch64::Neon::new() => unsafe { on_neon(s, f) },
            _ => f.call(Scalar),
        }
    }

    /// The instruction set's name: `avx512`, `avx2`, `neon` or `scalar`.
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Neon => "neon",
        }
    }
}

/// A computation written once over [`Simd`], for [`Isa::dispatch`] to run with one
/// instruction set's vectors. `call` and everything it calls must be `#[inline(always)]`, so
/// that it is compiled inside the dispatcher's `#[target_feature]` function.
pub trait SimdFn {
    /// What the computation returns.
    type Output;
    /// Runs the computation with the vectors of `s`.
    fn call<S: Simd>(self, s: S) -> Self::Output;
}

/// # Safety
/// The CPU supports AVX-512F (`s` proves it).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn on_avx512<F: SimdFn>(s: x86::Avx512, f: F) -> F::Output {
    f.call(s)
}

/// # Safety
/// The CPU supports AVX2 and FMA (`s` proves it).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn on_avx2<F: SimdFn>(s: x86::Avx2, f: F) -> F::Output {
    f.call(s)
}

/// # Safety
/// The CPU supports NEON (`s` proves it).
#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
unsafe fn on_neon<F: SimdFn>(s: aarch64::Neon, f: F) -> F::Output {
    f.call(s)
}

/// A vector of `LANES` f32 values and its operations, implemented by a zero-sized token whose
/// existence proves that the CPU supports the instruction set. The arithmetic is lane-wise and
/// does what its name says.
#[allow(missing_docs)] // add, sub, mul, div, min, max, abs, splat
pub trait Simd: Copy {
    /// The register type, e.g. `__m512`.
    type V: Copy;
    /// f32 values per vector.
    const LANES: usize;

    fn splat(self, x: f32) -> Self::V;
    /// Loads `LANES` floats from `p` (no alignment needed).
    ///
    /// # Safety
    /// `p .. p + LANES` must be readable.
    unsafe fn load(self, p: *const f32) -> Self::V;
    /// Stores `LANES` floats to `p` (no alignment needed).
    ///
    /// # Safety
    /// `p .. p + LANES` must be writable.
    unsafe fn store(self, p: *mut f32, v: Self::V);
    fn add(self, a: Self::V, b: Self::V) -> Self::V;
    fn sub(self, a: Self::V, b: Self::V) -> Self::V;
    fn mul(self, a: Self::V, b: Self::V) -> Self::V;
    fn div(self, a: Self::V, b: Self::V) -> Self::V;
    /// `a * b + c`, fused where the instruction set has FMA.
    fn mul_add(self, a: Self::V, b: Self::V, c: Self::V) -> Self::V;
    fn min(self, a: Self::V, b: Self::V) -> Self::V;
    fn max(self, a: Self::V, b: Self::V) -> Self::V;
    fn abs(self, a: Self::V) -> Self::V;
    /// Lane-wise `if a < b { yes } else { no }`.
    fn select_lt(self, a: Self::V, b: Self::V, yes: Self::V, no: Self::V) -> Self::V;
    /// Rounds to the nearest integer (ties to even).
    fn round(self, a: Self::V) -> Self::V;
    /// `2^n` for integral `n` in `-126..=127` (builds the exponent bits directly).
    fn pow2(self, n: Self::V) -> Self::V;

    /// Asks for the cache line holding `p` to be brought into the L2 cache; any address will do
    /// (a prefetch never faults). A no-op where the instruction set has no such hint here.
    #[inline(always)]
    fn prefetch_l2(self, p: *const f32) {
        let _ = p;
    }

    /// The lanes of `v`, in the first `LANES` of 16 (off the hot loops: a store and reloads).
    #[inline(always)]
    fn lanes(self, v: Self::V) -> [f32; 16] {
        let mut lanes = [0f32; 16];
        // SAFETY: `lanes` holds 16 >= LANES floats.
        unsafe { self.store(lanes.as_mut_ptr(), v) };
        lanes
    }
    /// The sum of the lanes of `v`.
    #[inline(always)]
    fn reduce_add(self, v: Self::V) -> f32 {
        self.lanes(v)[..Self::LANES].iter().sum()
    }
    /// The largest lane of `v`.
    #[inline(always)]
    fn reduce_max(self, v: Self::V) -> f32 {
        self.lanes(v)[..Self::LANES]
            .iter()
            .fold(f32::NEG_INFINITY, |m, &x| m.max(x))
    }
}

/// The one-lane fallback: plain f32 arithmetic, available everywhere.
#[derive(Clone, Copy, Debug, Default)]
pub struct Scalar;

impl Simd for Scalar {
    type V = f32;
    const LANES: usize = 1;

    #[inline(always)]
    fn splat(self, x: f32) -> f32 {
        x
    }
    #[inline(always)]
    unsafe fn load(self, p: *const f32) -> f32 {
        // SAFETY: the caller guarantees that `p` is readable.
        unsafe { p.read_unaligned() }
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32, v: f32) {
        // SAFETY: the caller guarantees that `p` is writable.
        unsafe { p.write_unaligned(v) }
    }
    #[inline(always)]
    fn add(self, a: f32, b: f32) -> f32 {
        a + b
    }
    #[inline(always)]
    fn sub(self, a: f32, b: f32) -> f32 {
        a - b
    }
    #[inline(always)]
    fn mul(self, a: f32, b: f32) -> f32 {
        a * b
    }
    #[inline(always)]
    fn div(self, a: f32, b: f32) -> f32 {
        a / b
    }
    // Not `f32::mul_add`: without hardware FMA that is a slow library call.
    #[inline(always)]
    fn mul_add(self, a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }
    #[inline(always)]
    fn min(self, a: f32, b: f32) -> f32 {
        a.min(b)
    }
    #[inline(always)]
    fn max(self, a: f32, b: f32) -> f32 {
        a.max(b)
    }
    #[inline(always)]
    fn abs(self, a: f32) -> f32 {
        a.abs()
    }
    #[inline(always)]
    fn select_lt(self, a: f32, b: f32, yes: f32, no: f32) -> f32 {
        if a < b { yes } else { no }
    }
    #[inline(always)]
    fn round(self, a: f32) -> f32 {
        a.round_ties_even()
    }
    #[inline(always)]
    fn pow2(self, n: f32) -> f32 {
        f32::from_bits(((n as i32 + 127) as u32) << 23)
    }
}

/// `e^x` to about 1 ulp (Cephes `expf`): `e^x = 2^n e^r` with `n = round(x / ln 2)` and
/// `|r| <= ln 2 / 2`, `e^r` by a degree-6 polynomial. `x` is clamped to `[-87, 88]`, so the
/// result is finite and normal (`e^-87 ~ 1.6e-38`, `e^88 ~ 1.7e38`).
#[inline(always)]
pub fn exp<S: Simd>(s: S, x: S::V) -> S::V {
    let x = s.min(s.max(x, s.splat(-87.0)), s.splat(88.0));
    let n = s.round(s.mul(x, s.splat(std::f32::consts::LOG2_E)));
    // r = x - n ln 2 with ln 2 = 0.693359375 - 2.12194440e-4, whose first part has so few bits
    // that n times it is exact (Cody and Waite).
    let r = s.mul_add(n, s.splat(-0.693_359_4), x);
    let r = s.mul_add(n, s.splat(2.121_944_4e-4), r);
    let mut p = s.splat(1.987_569_1e-4);
    for c in [
        1.398_199_9e-3,
        8.333_452e-3,
        4.166_579_6e-2,
        1.666_666_5e-1,
        0.5,
    ] {
        p = s.mul_add(p, r, s.splat(c));
    }
    let er = s.add(s.mul_add(p, s.mul(r, r), r), s.splat(1.0));
    s.mul(er, s.pow2(n))
}

/// Exact (erf) GELU, `x Phi(x)`, with the same formula as `fn gelu` in every matmul shader
/// (`shaders/matmul_*.wgsl`): the upper tail `P(N(0,1) > |x|) = erfc(|x|/sqrt 2) / 2` from
/// Numerical Recipes' `erfcc` (relative error < 1.2e-7 everywhere), then
/// `Phi(x) = 1 - tail` for `x >= 0` and `tail` for `x < 0`, so no digits cancel for negative x.
/// In f32 the rounding of `x^2 / 2` in the exponent adds to that: the result is within
/// `6e-7 + 2e-7 x^2` of exact, relatively (1.4e-6 at x = -2, where |gelu| < 0.05 anyway).
#[inline(always)]
pub fn gelu<S: Simd>(s: S, x: S::V) -> S::V {
    // Beyond |x| = 12.7 the tail is below 1e-36: clamping z at 9 keeps it (and x * tail) a
    // normal float, as denormal arithmetic is slow on many cores.
    let z = s.min(
        s.mul(s.abs(x), s.splat(std::f32::consts::FRAC_1_SQRT_2)),
        s.splat(9.0),
    );
    let one = s.splat(1.0);
    let t = s.div(one, s.mul_add(s.splat(0.5), z, one));
    let mut poly = s.splat(0.170_872_77);
    for c in [
        -0.822_152_23,
        1.488_515_9,
        -1.135_204,
        0.278_868_07,
        -0.186_288_06,
        0.096_784_18,
        0.374_091_96,
        1.000_023_7,
        -1.265_512_2,
    ] {
        poly = s.mul_add(poly, t, s.splat(c));
    }
    let tail = s.mul(
        s.mul(s.splat(0.5), t),
        exp(s, s.mul_add(z, s.sub(s.splat(0.0), z), poly)),
    );
    s.mul(x, s.select_lt(x, s.splat(0.0), tail, s.sub(one, tail)))
}

/// `tanh x` to a few ulp (Cephes `tanhf`): an odd polynomial for `|x| < 0.625`, where
/// `1 - 2 / (e^2|x| + 1)` would lose digits, that formula elsewhere. `|x|` is clamped to 9,
/// beyond which `tanh` rounds to 1 in f32.
#[inline(always)]
pub fn tanh<S: Simd>(s: S, x: S::V) -> S::V {
    let one = s.splat(1.0);
    let ax = s.min(s.abs(x), s.splat(9.0));
    let z = s.mul(x, x);
    let mut p = s.splat(-5.704_988_7e-3);
    for c in [2.063_909e-2, -5.373_971_6e-2, 1.333_144_2e-1, -3.333_328e-1] {
        p = s.mul_add(p, z, s.splat(c));
    }
    let small = s.mul_add(s.mul(p, z), x, x);
    let e = exp(s, s.add(ax, ax));
    let large = s.sub(one, s.div(s.splat(2.0), s.add(e, one)));
    let large = s.select_lt(x, s.splat(0.0), s.sub(s.splat(0.0), large), large);
    s.select_lt(ax, s.splat(0.625), small, large)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Copy, Debug)]
    enum Op {
        Exp,
        Gelu,
        Tanh,
    }

    /// `op` on `xs` (a multiple of 16 long), for [`Isa::dispatch`].
    struct Eval<'a> {
        op: Op,
        xs: &'a [f32],
    }

    impl SimdFn for Eval<'_> {
        type Output = Vec<f32>;

        #[inline(always)]
        fn call<S: Simd>(self, s: S) -> Vec<f32> {
            let mut out = vec![0.0; self.xs.len()];
            for (x, y) in self
                .xs
                .chunks_exact(S::LANES)
                .zip(out.chunks_exact_mut(S::LANES))
            {
                // SAFETY: both chunks hold LANES floats.
                let v = unsafe { s.load(x.as_ptr()) };
                let v = match self.op {
                    Op::Exp => exp(s, v),
                    Op::Gelu => gelu(s, v),
                    Op::Tanh => tanh(s, v),
                };
                // SAFETY: as above.
                unsafe { s.store(y.as_mut_ptr(), v) };
            }
            out
        }
    }

    fn eval_on(isa: Isa, op: Op, xs: &[f32]) -> Vec<f32> {
        isa.dispatch(Eval { op, xs })
    }

    /// `n` (a multiple of 16) evenly spaced points from `lo` to `hi`.
    fn grid(lo: f32, hi: f32, n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| lo + (hi - lo) * i as f32 / (n - 1) as f32)
            .collect()
    }

    /// The largest error of `got` against `exact(xs)`, in units of the f32 spacing at the
    /// exact value.
    fn max_ulps(got: &[f32], xs: &[f32], exact: impl Fn(f64) -> f64) -> f64 {
        got.iter()
            .zip(xs)
            .map(|(&g, &x)| {
                let want = exact(x as f64);
                let w = (want.abs() as f32).max(f32::MIN_POSITIVE);
                let ulp = (f32::from_bits(w.to_bits() + 1) - w) as f64;
                (g as f64 - want).abs() / ulp
            })
            .fold(0.0, f64::max)
    }

    #[test]
    fn exp_is_within_2_ulps_on_every_isa() {
        let xs = grid(-80.0, 80.0, 160_000);
        for isa in Isa::available() {
            let ulps = max_ulps(&eval_on(isa, Op::Exp, &xs), &xs, f64::exp);
            assert!(ulps <= 2.0, "{}: exp is off by {ulps} ulps", isa.name());
        }
    }

    #[test]
    fn tanh_is_within_4_ulps_on_every_isa() {
        let xs = grid(-12.0, 12.0, 160_000);
        for isa in Isa::available() {
            let ulps = max_ulps(&eval_on(isa, Op::Tanh, &xs), &xs, f64::tanh);
            assert!(ulps <= 4.0, "{}: tanh is off by {ulps} ulps", isa.name());
        }
    }

    #[test]
    fn gelu_is_close_to_exact_on_every_isa() {
        let xs = grid(-14.0, 14.0, 160_000);
        for isa in Isa::available() {
            let got = eval_on(isa, Op::Gelu, &xs);
            for (&g, &x) in got.iter().zip(&xs) {
                // x Phi(x) through erfc, exact in the far negative tail too (unlike the
                // reference's 1 + erf, which rounds to 0 below x = -8).
                let x64 = x as f64;
                let want = x64 * 0.5 * libm::erfc(-x64 / std::f64::consts::SQRT_2);
                // Relative: see `gelu`. Absolute 1e-33: below x = -12.7 the clamped tail stays
                // above the true one.
                let err = (g as f64 - want).abs();
                let rel = 6e-7 + 2e-7 * x64 * x64;
                assert!(
                    err <= 1e-33 + rel * want.abs(),
                    "{}: gelu({x}) = {g}, want {want}",
                    isa.name()
                );
            }
        }
    }

    #[test]
    fn gelu_of_large_negative_inputs_is_tiny_but_not_denormal() {
        let xs = grid(-1e4, -8.0, 16_000);
        for isa in Isa::available() {
            for (g, x) in eval_on(isa, Op::Gelu, &xs).into_iter().zip(&xs) {
                assert!(
                    g <= 0.0 && g > -1e-12 && !g.is_subnormal(),
                    "gelu({x}) = {g}"
                );
            }
        }
    }
}
