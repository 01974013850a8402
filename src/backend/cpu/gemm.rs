//! The CPU linear layer, `out = act(a W^T + b)`, as a BLIS / GotoBLAS matrix multiply.
//!
//! ```text
//! a:   [M, K]  row-major (tokens x in)
//! w:   [N, K]  row-major (Hugging Face [out, in]), packed once by PackedLinear::new
//! out: [M, N]  out[m, n] = act(sum_k a[m, k] w[n, k] + bias[n])
//! ```
//!
//! * `W` is packed once, at load time, into column panels `NR` wide (`[N/NR][K][NR]`,
//!   zero-padded, 64-byte aligned), so the micro-kernel reads a panel as one stream.
//! * Per call, each job packs its rows of `A` into row panels `MR` tall, `[K/KG][MR][KG]`:
//!   groups of `KG = 4` steps of k per row, so packing is 16-byte copies, not a transpose.
//! * The micro-kernel (`kernel.rs`) keeps an `MR x NR` tile of `out` in registers (AVX-512:
//!   12 x 32 in 24 zmm): per step of k it loads `NR / LANES` vectors of `W`, broadcasts one
//!   value of `A` per row and issues `MR x NR / LANES` FMAs. The bias initialises the
//!   accumulators and the activation is applied in registers before the one store of the tile,
//!   so the epilogue costs no pass over `out`.
//! * Blocking, measured on Zen 4 (see `KC`, `NC`, `JOB_ROWS`): a single k-block up to
//!   K = 4096, blocks of 256 columns of `W` swept by all row panels of a job, jobs of ~48 rows.
//! * Threads: the rows (or, for few rows, the columns) are shared out evenly among the threads
//!   of the rayon pool, in jobs of whole panels.
//! * Arithmetic: f32 products summed in f32 registers by FMA, one k-block after another.
//!
//! The loop nest of one job (rows `r`, column panels `p`):
//! ```text
//! for each k-block kb (all of K if K <= KC):  pack A[r, kb]
//!   for each block nc of NC columns in p:     W[kb, nc] stays in L2
//!     for each row panel (MR rows of r):      its packed A comes from L1 / L2
//!       for each column panel (NR) in nc:     micro-kernel
//! ```
//!
//! A call with few rows (at most `FEW_ROW_PANELS` row panels: one short sequence, where the
//! latency is) reads each part of W once, from memory rather than the caches. There the
//! column panel is the outer loop, each panel meets every row panel in turn, and meanwhile the
//! micro-kernel prefetches the next panel into L2, a share per row panel, so that W streams in
//! evenly over the whole call rather than in bursts (-2 to -4% for bge-base at 1 x 32).

use std::cell::RefCell;
use std::mem::MaybeUninit;
use std::ops::Range;

use bytemuck::{Pod, Zeroable};
use rayon::prelude::*;

use super::simd::Isa;
use crate::backend::Activation;
use crate::error::{Error, Result};
use kernel::{KG, Kernel, Tile};

mod kernel;

/// The deepest k-block. Measured on Zen 4 (1 MiB L2), the classic choice (KC ~ 384, so that
/// an `MR x KC` panel of A stays in L1) is 3-7% slower at the BGE shapes than one block of all of
/// K: each extra k-block re-reads and re-writes every tile of `out`, which costs more than
/// streaming the A panel from L2 (the kernel needs only 48 bytes of A per 24 FMAs).
const KC: usize = 4096;

/// Columns of W per block, swept by every row panel of a job while they stay in L2.
const NC: usize = 256;

/// Calls of at most this many row panels (one short sequence's rows) take W panel by panel,
/// prefetching the next; larger ones sweep blocks of [`NC`] columns row panel by row panel.
const FEW_ROW_PANELS: usize = 3;

/// Rows per job (rounded to whole row panels): small jobs keep a job's packed A in L2 and give
/// the pool enough jobs to even out a core that is busy with something else.
const JOB_ROWS: usize = 48;

/// Below this many multiply-adds one thread finishes before the pool would have woken up.
const PARALLEL_MIN_MACS: usize = 1 << 18;

/// A linear layer's weight, packed for the micro-kernel of one instruction set, and its bias.
pub struct PackedLinear {
    kernel: &'static Kernel,
    n: usize,
    k: usize,
    /// `[ceil(n / NR)][k][NR]`: panel `p`, step `kk`, lane `j` is `w[p * NR + j, kk]`, and zero
    /// past `n`. For the bf16 kernel `[ceil(n / NR)][ceil(k / 2)][NR]` words, each the pair of
    /// steps `2 kk`, `2 kk + 1`.
    panels: AlignedVec,
    /// `[ceil(n / NR) * NR]`, zero past `n`.
    bias: AlignedVec,
}

impl PackedLinear {
    /// Packs `weight` (`[n, k]`, row-major) and `bias` (`[n]`) for the fastest instruction set
    /// of this CPU.
    pub fn new(weight: &[f32], bias: &[f32], n: usize, k: usize) -> Result<Self> {
        Self::with_isa(weight, bias, n, k, Isa::best())
    }

    /// [`PackedLinear::new`] for a chosen instruction set (tests and benchmarks compare them);
    /// an error if this CPU cannot run it.
    pub fn with_isa(weight: &[f32], bias: &[f32], n: usize, k: usize, isa: Isa) -> Result<Self> {
        if !isa.is_available() {
            return Err(Error::InvalidArgument(format!(
                "this CPU cannot run the {} kernels",
                isa.name()
            )));
        }
        if n.checked_mul(k) != Some(weight.len()) || bias.len() != n {
            return Err(Error::InvalidArgument(format!(
                "linear layer [{n}, {k}]: got {} weights and {} biases",
                weight.len(),
                bias.len()
            )));
        }
        Ok(Self::from_rows(weight.chunks_exact(k.max(1)).take(n), n, k, isa).with_bias(bias))
    }

    /// Packs `weight` (`[n, k]`) and `bias` for the AVX-512 BF16 kernel: weights and, at each
    /// call, inputs rounded to bf16 (8 significant bits), products summed in f32. Twice the
    /// multiply-adds per instruction of f32; an error where the CPU lacks AVX-512 BF16.
    pub fn bf16(weight: &[f32], bias: &[f32], n: usize, k: usize) -> Result<Self> {
        let Some(kernel) = Kernel::bf16() else {
            return Err(Error::InvalidArgument(
                "bf16 needs a CPU with AVX-512 BF16 (Zen 4, Sapphire Rapids or newer)".into(),
            ));
        };
        let f32_layout = Self::with_isa(weight, bias, n, k, kernel.isa)?;
        debug_assert_eq!(f32_layout.kernel.nr, kernel.nr);
        let (nr, words) = (kernel.nr, k.div_ceil(2));
        let mut w = Self::zeros_for(n, k, kernel).with_bias(bias);
        let (src, dst) = (f32_layout.panels.as_slice(), w.panels.as_mut_slice());
        let dst: &mut [u32] = bytemuck::cast_slice_mut(dst);
        for p in 0..n.div_ceil(nr) {
            let panel = &src[p * k * nr..(p + 1) * k * nr]; // [k][NR]
            for kw in 0..words {
                for j in 0..nr {
                    let lo = kernel::bf16_bits(panel[2 * kw * nr + j]);
                    let hi = match 2 * kw + 1 < k {
                        true => kernel::bf16_bits(panel[(2 * kw + 1) * nr + j]),
                        false => 0,
                    };
                    dst[(p * words + kw) * nr + j] = lo | hi << 16;
                }
            }
        }
        Ok(w)
    }

    /// Packs a weight given row by row (`n` rows, each `w[row, ..k]`), with zero bias.
    fn from_rows<'a>(rows: impl Iterator<Item = &'a [f32]>, n: usize, k: usize, isa: Isa) -> Self {
        let mut w = Self::zeros(n, k, isa);
        for (i, row) in rows.enumerate().take(n) {
            w.set_row(i, row);
        }
        w
    }

    /// Sets row `i` of the f32 weight, `w[i, ..k]`: attention packs its keys this way,
    /// straight from the QKV activations.
    pub(super) fn set_row(&mut self, i: usize, row: &[f32]) {
        debug_assert_eq!(self.kernel.k_per_word, 1);
        let (nr, k) = (self.kernel.nr, self.k);
        let (p, j) = (i / nr, i % nr);
        let panel = &mut self.panels.as_mut_slice()[p * k * nr..(p + 1) * k * nr];
        for (dst, &x) in panel[j..].iter_mut().step_by(nr).zip(&row[..k]) {
            *dst = x;
        }
    }

    /// Sets column `kk` of the f32 weight, `w[..n, kk]`: attention packs `V^T` this way from
    /// the rows of `V`, each a run of contiguous copies.
    pub(super) fn set_column(&mut self, kk: usize, column: &[f32]) {
        debug_assert_eq!(self.kernel.k_per_word, 1);
        let (nr, k) = (self.kernel.nr, self.k);
        let panels = self.panels.as_mut_slice();
        for (p, part) in column[..self.n].chunks(nr).enumerate() {
            panels[(p * k + kk) * nr..][..part.len()].copy_from_slice(part);
        }
    }

    /// An all-zero `[n, k]` layer for the f32 kernel of `isa` (an available one), with zero
    /// bias.
    pub(super) fn zeros(n: usize, k: usize, isa: Isa) -> Self {
        Self::zeros_for(n, k, Kernel::for_isa(isa))
    }

    /// Makes this an all-zero `[n, k]` layer for the f32 kernel of `isa` (an available one),
    /// with zero bias, reusing its memory: attention repacks keys and values into the same
    /// layers for every head, without allocating.
    pub(super) fn reset(&mut self, n: usize, k: usize, isa: Isa) {
        let kernel = Kernel::for_isa(isa);
        let n_panels = n.div_ceil(kernel.nr);
        self.kernel = kernel;
        (self.n, self.k) = (n, k);
        self.panels.resize(n_panels * k * kernel.nr);
        self.panels.as_mut_slice().fill(0.0);
        self.bias.resize(n_panels * kernel.nr);
        self.bias.as_mut_slice().fill(0.0);
    }

    fn zeros_for(n: usize, k: usize, kernel: &'static Kernel) -> Self {
        let n_panels = n.div_ceil(kernel.nr);
        PackedLinear {
            kernel,
            n,
            k,
            panels: AlignedVec::zeros(n_panels * k.div_ceil(kernel.k_per_word) * kernel.nr),
            bias: AlignedVec::zeros(n_panels * kernel.nr),
        }
    }

    /// Sets the bias (`[n]`).
    fn with_bias(mut self, bias: &[f32]) -> Self {
        self.bias.as_mut_slice()[..self.n].copy_from_slice(bias);
        self
    }

    /// Output features `N`.
    pub fn out(&self) -> usize {
        self.n
    }

    /// Input features `K`.
    pub fn inp(&self) -> usize {
        self.k
    }

    /// The instruction set the weights were packed for.
    pub fn isa(&self) -> Isa {
        self.kernel.isa
    }

    /// Whether the weights are stored as bf16 (see [`PackedLinear::bf16`]).
    pub fn is_bf16(&self) -> bool {
        self.kernel.k_per_word == 2
    }
}

/// `out[m, n] = act(a[m, :] . w[n, :] + bias[n])` for `a` `[m, K]`, `out` `[m, N]` (row-major),
/// on the threads of `pool`.
pub fn linear(
    a: &[f32],
    m: usize,
    w: &PackedLinear,
    act: Activation,
    out: &mut [f32],
    pool: &rayon::ThreadPool,
) -> Result<()> {
    linear_uninit(a, m, w, act, as_uninit(out), pool)
}

/// [`linear`] into memory that need not be initialised (a fresh `Vec::with_capacity`), which
/// saves zeroing the output first; when it returns `Ok`, every element of `out` is written.
pub fn linear_uninit(
    a: &[f32],
    m: usize,
    w: &PackedLinear,
    act: Activation,
    out: &mut [MaybeUninit<f32>],
    pool: &rayon::ThreadPool,
) -> Result<()> {
    let (n, k) = (w.n, w.k);
    if m.checked_mul(k) != Some(a.len()) || m.checked_mul(n) != Some(out.len()) {
        return Err(Error::InvalidArgument(format!(
            "linear [{m}, {k}] x [{n}, {k}]^T: got {} inputs and room for {} outputs",
            a.len(),
            out.len()
        )));
    }
    // SAFETY: `out` holds the `[m, n]` output, borrowed mutably until the call returns.
    unsafe {
        linear_on(
            a,
            k,
            m,
            w,
            act,
            OutPtr(out.as_mut_ptr().cast()),
            n,
            Some(pool),
        )
    };
    Ok(())
}

/// [`linear`] on the calling thread only, for callers that are themselves one of many parallel
/// tasks (attention runs one per sequence and head), with strided rows: row `i` of `a` is
/// `a[i * lda..][..K]`, and row `i` of the output goes to `out[i * ldc..][..N]`.
///
/// # Safety
/// `out` is valid for writes at `i * ldc + j` for `i < m`, `j < N`, and nothing else reads or
/// writes those elements during the call.
pub(super) unsafe fn linear_strided_here(
    a: &[f32],
    lda: usize,
    m: usize,
    w: &PackedLinear,
    act: Activation,
    out: *mut f32,
    ldc: usize,
) -> Result<()> {
    let (n, k) = (w.n, w.k);
    if m > 0 && (lda < k || ldc < n || (m - 1) * lda + k > a.len()) {
        return Err(Error::InvalidArgument(format!(
            "linear [{m}, {k}] x [{n}, {k}]^T: {} inputs at stride {lda}, outputs at stride {ldc}",
            a.len(),
        )));
    }
    // SAFETY: the caller's guarantee for `out`; `a` was checked above.
    unsafe { linear_on(a, lda, m, w, act, OutPtr(out), ldc, None) };
    Ok(())
}

/// `out` as memory that is only written to.
fn as_uninit(out: &mut [f32]) -> &mut [MaybeUninit<f32>] {
    // SAFETY: `MaybeUninit<f32>` has the layout of `f32`, and the callee writes only
    // initialised values, so `out` stays initialised.
    unsafe { &mut *(out as *mut [f32] as *mut [MaybeUninit<f32>]) }
}

/// The linear layer over rows `a[i * lda..][..K]` into `out[i * ldc..][..N]`, `i < m`.
///
/// # Safety
/// `a` holds the `m` rows, and `out` is valid for writes at `i * ldc + j` (`i < m`, `j < N`)
/// that nothing else touches during the call.
#[allow(clippy::too_many_arguments)]
unsafe fn linear_on(
    a: &[f32],
    lda: usize,
    m: usize,
    w: &PackedLinear,
    act: Activation,
    out: OutPtr,
    ldc: usize,
    pool: Option<&rayon::ThreadPool>,
) {
    let (n, k) = (w.n, w.k);
    if m == 0 || n == 0 {
        return;
    }
    let threads = match pool {
        Some(pool) if m.saturating_mul(n).saturating_mul(k) >= PARALLEL_MIN_MACS => {
            pool.current_num_threads()
        }
        _ => 1,
    };
    let jobs = Jobs::new(m, n.div_ceil(w.kernel.nr), w.kernel.mr, threads);
    // Every tile is written on the first k-block (from the bias) before a later block or a
    // partial tile's copy reads it back, so uninitialised memory is never read.
    let operands = Operands {
        a,
        lda,
        out,
        ldc,
        few_rows: m.div_ceil(w.kernel.mr) <= FEW_ROW_PANELS,
    };
    let run = |j: usize| {
        let (rows, panels) = jobs.job(j);
        // SAFETY: the caller's guarantee for `out`, and the jobs of `Jobs` cover disjoint
        // tiles of it.
        PACKED_A.with_borrow_mut(|buf| unsafe { run_job(w, &operands, act, rows, panels, buf) });
    };
    match pool {
        Some(pool) if threads > 1 => {
            pool.install(|| (0..jobs.count()).into_par_iter().for_each(run))
        }
        _ => (0..jobs.count()).for_each(run),
    }
}

/// How the output (`m` rows = `m_panels` row panels, `n_panels` column panels) is cut into
/// jobs of whole panels: either the rows are shared out evenly among the threads (`row_parts`)
/// or, when that is cheaper (few rows), the columns (`col_jobs`); the rows of each share are
/// then cut into jobs of about [`JOB_ROWS`] rows. Jobs are numbered so that the pool's halving
/// of `0..count` hands each thread one share.
struct Jobs {
    m: usize,
    mr: usize,
    m_panels: usize,
    n_panels: usize,
    row_parts: usize,
    jobs_per_part: usize,
    col_jobs: usize,
}

impl Jobs {
    fn new(m: usize, n_panels: usize, mr: usize, threads: usize) -> Self {
        let m_panels = m.div_ceil(mr);
        // Give each thread an even share of the rows, or of the columns, whichever makes the
        // largest share cheaper, counted in tiles (`MR x NR x K` multiply-adds). Packing a row
        // panel of A costs about a quarter of a tile; a row share packs its own rows of A, a
        // column share all of them.
        let rows_each = m_panels.div_ceil(threads);
        let by_rows = rows_each * n_panels + rows_each / 4;
        let by_cols = n_panels.div_ceil(threads) * m_panels + m_panels / 4;
        let (row_parts, col_jobs) = if by_cols < by_rows {
            (1, threads.min(n_panels))
        } else {
            (threads.min(m_panels), 1)
        };
        Jobs {
            m,
            mr,
            m_panels,
            n_panels,
            row_parts,
            jobs_per_part: m_panels
                .div_ceil(row_parts)
                .div_ceil((JOB_ROWS / mr).max(1)),
            col_jobs,
        }
    }

    fn count(&self) -> usize {
        self.row_parts * self.jobs_per_part * self.col_jobs
    }

    /// Job `j`'s rows of `out` and column panels.
    fn job(&self, j: usize) -> (Range<usize>, Range<usize>) {
        let row_jobs = self.row_parts * self.jobs_per_part;
        let (cj, rj) = (j / row_jobs, j % row_jobs);
        let part = even_split(self.m_panels, self.row_parts, rj / self.jobs_per_part);
        let sub = even_split(part.len(), self.jobs_per_part, rj % self.jobs_per_part);
        let (p0, p1) = (part.start + sub.start, part.start + sub.end);
        let rows = p0 * self.mr..(p1 * self.mr).min(self.m);
        (rows, even_split(self.n_panels, self.col_jobs, cj))
    }
}

/// Part `i` of `0..len` cut into `parts` ranges whose lengths differ by at most one.
fn even_split(len: usize, parts: usize, i: usize) -> Range<usize> {
    let (base, extra) = (len / parts, len % parts);
    let start = i * base + i.min(extra);
    start..start + base + usize::from(i < extra)
}

/// The output matrix, shared by jobs that write disjoint tiles of it.
struct OutPtr(*mut f32);
// SAFETY: jobs only write disjoint tiles through the pointer (see `Jobs`), and `linear_on`'s
// caller keeps the output to itself until every job has finished.
unsafe impl Sync for OutPtr {}

/// A call's input rows (`a[i * lda..]`) and output rows (`out[i * ldc..]`).
struct Operands<'a> {
    a: &'a [f32],
    lda: usize,
    out: OutPtr,
    ldc: usize,
    /// At most [`FEW_ROW_PANELS`] row panels in all.
    few_rows: bool,
}

thread_local! {
    /// Each thread's packed rows of `A` (see [`pack_a`]): its memory grows when a job needs
    /// more and is never given back, so steady-state calls allocate nothing.
    static PACKED_A: RefCell<AlignedVec> = RefCell::new(AlignedVec::zeros(0));
}

/// Computes `out[rows, panels]` (see the module comment for the loop nest).
///
/// # Safety
/// `ops` satisfies [`linear_on`]'s contract, and no other thread touches `out[rows, panels]`.
unsafe fn run_job(
    w: &PackedLinear,
    ops: &Operands,
    act: Activation,
    rows: Range<usize>,
    panels: Range<usize>,
    packed_a: &mut AlignedVec,
) {
    let kern = w.kernel;
    let (mr, nr, n, k, kpw) = (kern.mr, kern.nr, w.n, w.k, kern.k_per_word);
    // W's panels in words, and the blocks of k likewise (a block starts on a whole word).
    let panel_words = k.div_ceil(kpw);
    // Equal k-blocks, so that no block is left with a sliver of K.
    let k_blocks = k.div_ceil(KC).max(1);
    let kc = k.div_ceil(k_blocks).next_multiple_of(kpw);
    let nc_panels = (NC / nr).max(1);
    let row_panels = rows.len().div_ceil(mr);
    packed_a.resize(row_panels * mr * kc.div_ceil(kpw).next_multiple_of(KG));
    for kb in 0..k_blocks {
        let ks = kb * kc..((kb + 1) * kc).min(k);
        let words = ks.len().div_ceil(kpw);
        let panel_len = mr * words.next_multiple_of(KG);
        pack_a(
            ops.a,
            ops.lda,
            rows.clone(),
            ks.clone(),
            kern,
            packed_a.as_mut_slice(),
        );
        let first = kb == 0;
        let step_act = if kb + 1 == k_blocks {
            act
        } else {
            Activation::None
        };
        let w_base = w.panels.as_slice().as_ptr();
        let panel_at = |p: usize| w_base.wrapping_add((p * panel_words + ks.start / kpw) * nr);
        let tile = |rp: usize, r0: usize, p: usize, prefetch: *const f32, prefetch_lines| Tile {
            k: words,
            a: packed_a.as_slice()[rp * panel_len..].as_ptr(),
            w: panel_at(p),
            bias: if first {
                w.bias.as_slice()[p * nr..].as_ptr()
            } else {
                std::ptr::null()
            },
            // SAFETY: row r0 < m, column p * NR < n: inside `out`.
            c: unsafe { ops.out.0.add(r0 * ops.ldc + p * nr) },
            ldc: ops.ldc,
            act: step_act,
            prefetch,
            prefetch_lines,
        };
        // SAFETY (both loops): each tile points at a packed A panel of `words x MR`, a W panel
        // of `words x NR`, NR biases, and `r x cols` of `out` that this job owns.
        if ops.few_rows {
            // Few rows (one short sequence): W is read once, from memory, so each panel goes
            // against every row panel while the next one is prefetched into L2, a share of it
            // during each row panel, spreading the stream over the whole computation.
            let lines_per_group = (KG * nr * size_of::<f32>())
                .div_ceil(64)
                .div_ceil(row_panels);
            for p in panels.clone() {
                let next_lines = if p + 1 < panels.end {
                    lines_per_group
                } else {
                    0
                };
                for (rp, r0) in rows.clone().step_by(mr).enumerate() {
                    let ahead = rp * (words / KG) * lines_per_group * 16;
                    let t = tile(rp, r0, p, panel_at(p + 1).wrapping_add(ahead), next_lines);
                    // SAFETY: see above.
                    unsafe { kern.run(&t, mr.min(rows.end - r0), nr.min(n - p * nr)) };
                }
            }
        } else {
            for nc in panels.clone().step_by(nc_panels) {
                for (rp, r0) in rows.clone().step_by(mr).enumerate() {
                    for p in nc..(nc + nc_panels).min(panels.end) {
                        let t = tile(rp, r0, p, std::ptr::null(), 0);
                        // SAFETY: see above.
                        unsafe { kern.run(&t, mr.min(rows.end - r0), nr.min(n - p * nr)) };
                    }
                }
            }
        }
    }
}

/// Packs `a[rows, ks]` (row `i` at `a[i * lda..]`) into row panels `MR` tall, each
/// `[depth / KG][MR][KG]` (see `kernel::pack_panel`).
fn pack_a(
    a: &[f32],
    lda: usize,
    rows: Range<usize>,
    ks: Range<usize>,
    kern: &Kernel,
    dst: &mut [f32],
) {
    let (mr, depth) = (kern.mr, ks.len());
    let panel_len = mr * depth.div_ceil(kern.k_per_word).next_multiple_of(KG);
    for (panel, r0) in rows.clone().step_by(mr).enumerate() {
        let r = mr.min(rows.end - r0);
        let src = &a[r0 * lda + ks.start..(r0 + r - 1) * lda + ks.end];
        let dst = &mut dst[panel * panel_len..(panel + 1) * panel_len];
        // SAFETY: `src` holds rows `r0 .. r0 + r` of the k-block and `dst` one packed panel.
        unsafe { kern.pack(src.as_ptr(), lda, r, depth, dst.as_mut_ptr()) };
    }
}

/// A growable f32 buffer aligned to 64-byte cache lines, so that no vector load of a packed
/// panel straddles two lines.
struct AlignedVec {
    lines: Vec<CacheLine>,
    len: usize,
}

#[repr(C, align(64))]
#[derive(Clone, Copy, Pod, Zeroable)]
struct CacheLine([f32; 16]);

impl AlignedVec {
    fn zeros(len: usize) -> Self {
        AlignedVec {
            lines: vec![CacheLine([0.0; 16]); len.div_ceil(16)],
            len,
        }
    }

    /// Makes this `len` floats long (contents unspecified), reallocating only to grow beyond
    /// every length it has had.
    fn resize(&mut self, len: usize) {
        if len > self.lines.len() * 16 {
            self.lines = vec![CacheLine([0.0; 16]); len.div_ceil(16)];
        }
        self.len = len;
    }

    fn as_slice(&self) -> &[f32] {
        &bytemuck::cast_slice(&self.lines)[..self.len]
    }

    fn as_mut_slice(&mut self) -> &mut [f32] {
        &mut bytemuck::cast_slice_mut(&mut self.lines)[..self.len]
    }
}

#[cfg(test)]
mod tests {
    //! The arithmetic is tested against the reference backend in `tests/kernels.rs` (every
    //! instruction set, 1 and 3 threads, awkward shapes); here, the bookkeeping.
    use super::*;

    #[test]
    fn jobs_cover_the_output_exactly_once() {
        for (m, n_panels, mr, threads) in [
            (1, 1, 12, 2),
            (31, 36, 12, 2),
            (4096, 24, 12, 2),
            (100, 3, 6, 3),
            (264, 7, 12, 2),
            (7, 5, 4, 1),
        ] {
            let jobs = Jobs::new(m, n_panels, mr, threads);
            let mut seen = vec![0u8; m * n_panels];
            for j in 0..jobs.count() {
                let (rows, panels) = jobs.job(j);
                for r in rows {
                    for p in panels.clone() {
                        seen[r * n_panels + p] += 1;
                    }
                }
            }
            assert!(seen.iter().all(|&s| s == 1), "m {m} panels {n_panels}");
            assert!((0..jobs.count()).all(|j| !jobs.job(j).0.is_empty()));
        }
    }

    #[test]
    fn mismatched_lengths_are_errors() {
        assert!(PackedLinear::new(&[0.0; 6], &[0.0; 2], 2, 4).is_err());
        let w = PackedLinear::new(&[0.0; 8], &[0.0; 2], 2, 4).unwrap();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        let mut out = [0.0; 2];
        assert!(linear(&[0.0; 3], 1, &w, Activation::None, &mut out, &pool).is_err());
        assert!(linear(&[0.0; 4], 1, &w, Activation::None, &mut out, &pool).is_ok());
    }
}
