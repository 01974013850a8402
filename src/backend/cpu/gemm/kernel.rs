//! The micro-kernel of the CPU matrix multiply: one `r x NR` tile of the output (`r <= MR`),
//! accumulated in registers over one k-block, written once with the epilogue fused in.
//!
//! It is written once, generically over [`Simd`], and instantiated per instruction set inside
//! a `#[target_feature]` function, once for every row count `1..=MR` so that a short last row
//! panel (M = 1, 5, ...) costs only its own rows:
//!
//! | ISA     | MR x NR | accumulators      | per step of k                          |
//! |---------|---------|-------------------|----------------------------------------|
//! | AVX-512 | 12 x 32 | 24 zmm (of 32)    | 2 loads of W, 12 broadcasts, 24 FMA    |
//! | AVX2    |  6 x 16 | 12 ymm (of 16)    | 2 loads of W,  6 broadcasts, 12 FMA    |
//! | NEON    |  8 x 12 | 24 q (of 32)      | 3 loads of W,  8 broadcasts, 24 FMA    |
//! | scalar  |  4 x 4  | 16 f32            | plain multiply-adds                    |

use crate::backend::Activation;
#[cfg(target_arch = "aarch64")]
use crate::backend::cpu::simd::aarch64::Neon;
#[cfg(target_arch = "x86_64")]
use crate::backend::cpu::simd::x86::{Avx2, Avx512};
use crate::backend::cpu::simd::{self, Isa, Scalar, Simd};

/// Steps of k per group in a packed panel of A (`[k / KG][MR][KG]`).
pub(super) const KG: usize = 4;

/// The largest `MR` and `NR` of any kernel (the size of the edge tile on the stack).
const MAX_MR: usize = 12;
const MAX_NR: usize = 32;

/// One micro-kernel call: `c[i, j] = act(init[i, j] + sum_k a[i, k] * w[k][j])` for
/// `i < r`, `j < NR`, where `init` is `bias[j]` on the first k-block and `c[i, j]` after it.
/// Panels are counted in 32-bit words: one f32, or for the bf16 kernel two consecutive steps
/// of k as a pair of bf16 (the even step in the low half).
#[derive(Clone, Copy)]
pub(super) struct Tile {
    /// Depth of this k-block in words.
    pub k: usize,
    /// `[k / KG][MR][KG]` words (the last group may be short): a packed row panel of A.
    pub a: *const f32,
    /// `[k][NR]` words: a packed column panel of W.
    pub w: *const f32,
    /// `[NR]`, or null to continue from the values already in `c`.
    pub bias: *const f32,
    /// `[r][ldc]`, of which the first `NR` columns are written.
    pub c: *mut f32,
    pub ldc: usize,
    /// Applied to the stored values: the layer's activation on the last k-block, else `None`.
    pub act: Activation,
    /// Part of the W panel that later calls will read, brought into L2 while this tile
    /// computes: `prefetch_lines` 64-byte lines per group of [`KG`] words, from `prefetch` on.
    /// Any address will do (a prefetch never faults); 0 lines for none.
    pub prefetch: *const f32,
    pub prefetch_lines: usize,
}

/// A micro-kernel instantiation for one row count.
type TileFn = unsafe fn(&Tile);

/// [`pack_panel`] for one `MR`.
type PackFn = unsafe fn(*const f32, usize, usize, usize, *mut f32);

/// An instruction set's micro-kernel: its register tile, its instantiations and its packing of A.
pub(super) struct Kernel {
    pub isa: Isa,
    /// Steps of k per 32-bit word of a packed panel: 1 for f32, 2 for a pair of bf16.
    pub k_per_word: usize,
    /// Rows and columns of the register tile.
    pub mr: usize,
    pub nr: usize,
    /// `tiles[r - 1]` computes `r` rows.
    tiles: &'static [TileFn],
    pack: PackFn,
}

impl Kernel {
    /// Packs one row panel of A (see [`pack_panel`]).
    ///
    /// # Safety
    /// As for [`pack_panel`].
    pub unsafe fn pack(&self, a: *const f32, lda: usize, rows: usize, depth: usize, dst: *mut f32) {
        // SAFETY: the caller's guarantee.
        unsafe { (self.pack)(a, lda, rows, depth, dst) }
    }

    /// The bf16 kernel (AVX-512 BF16), where this CPU has it.
    pub fn bf16() -> Option<&'static Kernel> {
        #[cfg(target_arch = "x86_64")]
        if x86::has_bf16() {
            return Some(&x86::AVX512_BF16);
        }
        None
    }

    pub fn for_isa(isa: Isa) -> &'static Kernel {
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => &x86::AVX512,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => &x86::AVX2,
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => &arm::NEON,
            _ => &SCALAR,
        }
    }

    /// Runs `t` for `rows` rows (`1..=MR`) and `cols` columns (`1..=NR`). A partial tile (the
    /// last column panel when `NR` does not divide N) goes through a full-width tile on the
    /// stack, so the kernels themselves never mask.
    ///
    /// # Safety
    /// The CPU supports `self.isa`, and `t` satisfies [`Tile`] for `rows` rows, except that
    /// only `cols` columns of `t.c` need to be valid.
    pub unsafe fn run(&self, t: &Tile, rows: usize, cols: usize) {
        let tile = self.tiles[rows - 1];
        if cols == self.nr {
            // SAFETY: the caller's guarantee, for a full tile.
            return unsafe { tile(t) };
        }
        let mut buf = [0f32; MAX_MR * MAX_NR];
        let nr = self.nr;
        if t.bias.is_null() {
            for i in 0..rows {
                // SAFETY: row i of `t.c` has `cols` valid columns.
                let c_row = unsafe { std::slice::from_raw_parts(t.c.add(i * t.ldc), cols) };
                buf[i * nr..i * nr + cols].copy_from_slice(c_row);
            }
        }
        // SAFETY: as above, with `c` now the full-width `[rows][NR]` buffer.
        unsafe {
            tile(&Tile {
                c: buf.as_mut_ptr(),
                ldc: nr,
                ..*t
            })
        };
        for i in 0..rows {
            // SAFETY: as above.
            let c_row = unsafe { std::slice::from_raw_parts_mut(t.c.add(i * t.ldc), cols) };
            c_row.copy_from_slice(&buf[i * nr..i * nr + cols]);
        }
    }
}

/// The micro-kernel: `R` rows of an `MR`-tall panel against `NV` vectors of W.
///
/// # Safety
/// `t` satisfies [`Tile`] for `R` rows and `NR = NV * S::LANES` columns.
#[inline(always)]
unsafe fn tile<S: Simd, St: Step<S>, const MR: usize, const R: usize, const NV: usize>(
    s: S,
    t: &Tile,
) {
    let lanes = S::LANES;
    let mut acc = [[s.splat(0.0); NV]; R];
    // SAFETY: every pointer below stays inside the buffers the caller vouches for: a[g * KG *
    // MR + i * KG + kk] with i < R <= MR, w[k * NR + j * LANES ..] with j < NV, and c[i * ldc +
    // j * LANES ..].
    unsafe {
        for (i, row) in acc.iter_mut().enumerate() {
            for (j, v) in row.iter_mut().enumerate() {
                *v = if t.bias.is_null() {
                    s.load(t.c.add(i * t.ldc + j * lanes))
                } else {
                    s.load(t.bias.add(j * lanes))
                };
            }
        }
        let (mut a, mut w, mut next) = (t.a, t.w, t.prefetch);
        for _ in 0..t.k / KG {
            for _ in 0..t.prefetch_lines {
                s.prefetch_l2(next);
                next = next.wrapping_add(16);
            }
            for kk in 0..KG {
                St::step::<R, NV>(s, &mut acc, a.add(kk), w.add(kk * NV * lanes));
            }
            a = a.add(KG * MR);
            w = w.add(KG * NV * lanes);
        }
        for kk in 0..t.k % KG {
            St::step::<R, NV>(s, &mut acc, a.add(kk), w.add(kk * NV * lanes));
        }
        // `acc` goes to `store` by value: lent by reference, it made LLVM keep a copy of the
        // accumulators in memory up to date in the loop above (24 extra stores per step).
        match t.act {
            Activation::None => store(s, t, acc, |v| v),
            Activation::Gelu => store(s, t, acc, |v| simd::gelu(s, v)),
            Activation::Tanh => store(s, t, acc, |v| simd::tanh(s, v)),
            Activation::Relu => store(s, t, acc, |v| s.max(v, s.splat(0.0))),
        }
    }
}

/// One word of k in the micro-kernel's loop: `acc[i][j] += a[i * KG] * w[j * LANES ..]`.
trait Step<S: Simd> {
    /// # Safety
    /// `a[i * KG]` for `i < R` and `w[.. NV * LANES]` are readable, and the CPU supports the
    /// step's instructions.
    unsafe fn step<const R: usize, const NV: usize>(
        s: S,
        acc: &mut [[S::V; NV]; R],
        a: *const f32,
        w: *const f32,
    );
}

/// f32 words: one fused multiply-add per accumulator.
struct Fma;

impl<S: Simd> Step<S> for Fma {
    #[inline(always)]
    unsafe fn step<const R: usize, const NV: usize>(
        s: S,
        acc: &mut [[S::V; NV]; R],
        a: *const f32,
        w: *const f32,
    ) {
        // SAFETY: the caller's guarantee.
        unsafe {
            let wv: [S::V; NV] = std::array::from_fn(|j| s.load(w.add(j * S::LANES)));
            for (i, row) in acc.iter_mut().enumerate() {
                let ai = s.splat(*a.add(i * KG));
                for (v, &wj) in row.iter_mut().zip(&wv) {
                    *v = s.mul_add(ai, wj, *v);
                }
            }
        }
    }
}

/// Packs one row panel of A for the micro-kernel, in groups of [`KG`] steps of k:
/// `dst[g][i][kk] = a[i * lda + g * KG + kk]` for `i < MR`, `g * KG + kk < depth`. Each group
/// of a row is one 16-byte copy, where a k-major panel (`dst[kk][i]`) would need a transpose.
/// Rows `rows..MR` of a short last panel repeat its last row, which the kernel for `rows` rows
/// never reads; the unused steps of a short last group are left as they were (the kernel stops
/// at `depth`).
///
/// # Safety
/// `a[i * lda .. i * lda + depth]` is readable for `i < rows` (`rows >= 1`), and
/// `dst[.. depth.next_multiple_of(KG) * MR]` is writable.
unsafe fn pack_panel<const MR: usize>(
    a: *const f32,
    lda: usize,
    rows: usize,
    depth: usize,
    dst: *mut f32,
) {
    // SAFETY: reads stay inside rows `min(i, rows - 1)`, `depth` long; writes inside `dst`.
    unsafe {
        let src: [*const f32; MR] = std::array::from_fn(|i| a.add(i.min(rows - 1) * lda));
        let mut dst = dst;
        for g in 0..depth / KG {
            for (i, row) in src.iter().enumerate() {
                std::ptr::copy_nonoverlapping(row.add(g * KG), dst.add(i * KG), KG);
            }
            dst = dst.add(MR * KG);
        }
        let tail = depth % KG;
        if tail > 0 {
            for (i, row) in src.iter().enumerate() {
                std::ptr::copy_nonoverlapping(row.add(depth - tail), dst.add(i * KG), tail);
            }
        }
    }
}

/// Words `first..` of row `i` of a bf16 panel (see `x86::pack_panel_bf16_avx512`), one at a
/// time.
///
/// # Safety
/// The panel at `dst` has room for `row.len().div_ceil(2)` words of `MR` rows.
unsafe fn pack_row_bf16<const MR: usize>(row: &[f32], i: usize, first: usize, dst: *mut u32) {
    for w in first..row.len().div_ceil(2) {
        let lo = bf16_bits(row[2 * w]);
        let hi = row.get(2 * w + 1).map_or(0, |&x| bf16_bits(x));
        // SAFETY: word `w` of row `i` lies inside the panel (the caller's guarantee).
        unsafe { *dst.add((w / KG) * MR * KG + i * KG + w % KG) = lo | hi << 16 };
    }
}

/// `x` rounded to bf16 (to nearest, ties to even), as the low 16 bits.
pub(super) fn bf16_bits(x: f32) -> u32 {
    half::bf16::from_f32(x).to_bits() as u32
}

/// The epilogue: `c[i, j] = f(acc[i][j])`.
///
/// # Safety
/// As for [`tile`].
#[inline(always)]
unsafe fn store<S: Simd, const R: usize, const NV: usize>(
    s: S,
    t: &Tile,
    acc: [[S::V; NV]; R],
    f: impl Fn(S::V) -> S::V,
) {
    for (i, row) in acc.iter().enumerate() {
        for (j, &v) in row.iter().enumerate() {
            // SAFETY: see `tile`.
            unsafe { s.store(t.c.add(i * t.ldc + j * S::LANES), f(v)) };
        }
    }
}

/// Portable fallback: 4 x 4 plain f32 accumulators.
const SCALAR: Kernel = Kernel {
    isa: Isa::Scalar,
    k_per_word: 1,
    mr: 4,
    nr: 4,
    tiles: &[scalar::<1>, scalar::<2>, scalar::<3>, scalar::<4>],
    pack: pack_panel::<4>,
};

/// # Safety
/// See [`tile`].
unsafe fn scalar<const R: usize>(t: &Tile) {
    // SAFETY: the caller's guarantee; scalar code runs on every CPU.
    unsafe { tile::<Scalar, Fma, 4, R, 4>(Scalar, t) }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::*;

    pub const AVX512: Kernel = Kernel {
        isa: Isa::Avx512,
        k_per_word: 1,
        mr: 12,
        nr: 32,
        tiles: &[
            avx512::<1>,
            avx512::<2>,
            avx512::<3>,
            avx512::<4>,
            avx512::<5>,
            avx512::<6>,
            avx512::<7>,
            avx512::<8>,
            avx512::<9>,
            avx512::<10>,
            avx512::<11>,
            avx512::<12>,
        ],
        pack: pack_panel::<12>,
    };

    /// # Safety
    /// The CPU supports AVX-512F (`Kernel::for_isa` is only reached for an available ISA);
    /// otherwise see [`tile`].
    #[target_feature(enable = "avx512f")]
    unsafe fn avx512<const R: usize>(t: &Tile) {
        // SAFETY: the caller's guarantee.
        unsafe { tile::<Avx512, Fma, 12, R, 2>(Avx512::new_unchecked(), t) }
    }

    pub const AVX2: Kernel = Kernel {
        isa: Isa::Avx2,
        k_per_word: 1,
        mr: 6,
        nr: 16,
        tiles: &[
            avx2::<1>, avx2::<2>, avx2::<3>, avx2::<4>, avx2::<5>, avx2::<6>,
        ],
        pack: pack_panel::<6>,
    };

    /// # Safety
    /// The CPU supports AVX2 and FMA; otherwise see [`tile`].
    #[target_feature(enable = "avx2,fma")]
    unsafe fn avx2<const R: usize>(t: &Tile) {
        // SAFETY: the caller's guarantee.
        unsafe { tile::<Avx2, Fma, 6, R, 2>(Avx2::new_unchecked(), t) }
    }

    /// AVX-512 BF16: W and A rounded to bf16, products summed in f32 by `vdpbf16ps`, which
    /// does two steps of k per lane and instruction (twice the multiply-adds of an f32 FMA).
    /// The register tile and loop are the f32 AVX-512 kernel's, counted in words (pairs).
    pub const AVX512_BF16: Kernel = Kernel {
        isa: Isa::Avx512,
        k_per_word: 2,
        mr: 12,
        nr: 32,
        tiles: &[
            avx512_bf16::<1>,
            avx512_bf16::<2>,
            avx512_bf16::<3>,
            avx512_bf16::<4>,
            avx512_bf16::<5>,
            avx512_bf16::<6>,
            avx512_bf16::<7>,
            avx512_bf16::<8>,
            avx512_bf16::<9>,
            avx512_bf16::<10>,
            avx512_bf16::<11>,
            avx512_bf16::<12>,
        ],
        pack: pack_panel_bf16_avx512::<12>,
    };

    /// [`pack_panel`] for the bf16 kernel: the same layout in words, each word the pair
    /// `(a[i, 2w], a[i, 2w + 1])` rounded to bf16 (to nearest, ties to even, by
    /// `vcvtne2ps2bf16`), the even step in the low half; an odd `depth` pairs its last step
    /// with zero. 32 values of a row become 16 words, stored as four groups of `KG`; the tail
    /// of a row goes one word at a time.
    ///
    /// # Safety
    /// `a[i * lda .. i * lda + depth]` is readable for `i < rows` (`rows >= 1`),
    /// `dst[.. depth.div_ceil(2).next_multiple_of(KG) * MR]` is writable, and the CPU supports
    /// AVX-512 BF16.
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn pack_panel_bf16_avx512<const MR: usize>(
        a: *const f32,
        lda: usize,
        rows: usize,
        depth: usize,
        dst: *mut f32,
    ) {
        let dst = dst.cast::<u32>();
        for i in 0..MR {
            // SAFETY: reads stay inside row `min(i, rows - 1)` (`depth` long), writes inside
            // the panel, whose layout puts words `4g..4g + 4` of row `i` at `(g MR + i) KG`.
            unsafe {
                let row = std::slice::from_raw_parts(a.add(i.min(rows - 1) * lda), depth);
                let chunks = depth / 32;
                for c in 0..chunks {
                    let lo = _mm512_loadu_ps(row.as_ptr().add(32 * c));
                    let hi = _mm512_loadu_ps(row.as_ptr().add(32 * c + 16));
                    let words: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
                    let g = 4 * c; // the first group of KG words
                    let at = |q: usize| dst.add(((g + q) * MR + i) * KG).cast::<__m128i>();
                    _mm_storeu_si128(at(0), _mm512_extracti32x4_epi32::<0>(words));
                    _mm_storeu_si128(at(1), _mm512_extracti32x4_epi32::<1>(words));
                    _mm_storeu_si128(at(2), _mm512_extracti32x4_epi32::<2>(words));
                    _mm_storeu_si128(at(3), _mm512_extracti32x4_epi32::<3>(words));
                }
                pack_row_bf16::<MR>(row, i, 16 * chunks, dst);
            }
        }
    }

    pub fn has_bf16() -> bool {
        is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bf16")
    }

    /// bf16 pairs: one `vdpbf16ps` per accumulator, `acc += a.lo * w.lo + a.hi * w.hi`.
    struct DotBf16;

    impl Step<Avx512> for DotBf16 {
        #[inline(always)]
        unsafe fn step<const R: usize, const NV: usize>(
            _: Avx512,
            acc: &mut [[__m512; NV]; R],
            a: *const f32,
            w: *const f32,
        ) {
            // SAFETY: the caller's guarantee (AVX-512F and BF16, readable words); a `__m512`
            // and a `__m512bh` are the same 64 bytes.
            unsafe {
                let wv: [__m512bh; NV] =
                    std::array::from_fn(|j| std::mem::transmute(_mm512_loadu_ps(w.add(j * 16))));
                for (i, row) in acc.iter_mut().enumerate() {
                    let ai: __m512bh =
                        std::mem::transmute(_mm512_set1_epi32(*a.cast::<i32>().add(i * KG)));
                    for (v, &wj) in row.iter_mut().zip(&wv) {
                        *v = _mm512_dpbf16_ps(*v, ai, wj);
                    }
                }
            }
        }
    }

    /// # Safety
    /// The CPU supports AVX-512F and AVX-512 BF16; otherwise see [`tile`].
    #[target_feature(enable = "avx512f,avx512bf16")]
    unsafe fn avx512_bf16<const R: usize>(t: &Tile) {
        // SAFETY: the caller's guarantee.
        unsafe { tile::<Avx512, DotBf16, 12, R, 2>(Avx512::new_unchecked(), t) }
    }
}

#[cfg(target_arch = "aarch64")]
mod arm {
    use super::*;

    pub const NEON: Kernel = Kernel {
        isa: Isa::Neon,
        k_per_word: 1,
        mr: 8,
        nr: 12,
        tiles: &[
            neon::<1>, neon::<2>, neon::<3>, neon::<4>, neon::<5>, neon::<6>, neon::<7>, neon::<8>,
        ],
        pack: pack_panel::<8>,
    };

    /// # Safety
    /// The CPU supports NEON; otherwise see [`tile`].
    #[target_feature(enable = "neon")]
    unsafe fn neon<const R: usize>(t: &Tile) {
        // SAFETY: the caller's guarantee.
        unsafe { tile::<Neon, Fma, 8, R, 3>(Neon::new_unchecked(), t) }
    }
}
