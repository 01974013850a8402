//! `cargo bench --bench gemm`: the CPU linear layer (`bge::backend::cpu::gemm::linear`) at the
//! shapes of the BGE encoders, on 1 and 2 threads.
//!
//! One line per shape: M (tokens), N (out features), K (in features), the fused activation,
//! threads, the median time of a call, GFLOP/s (2 M N K per call; the fused bias and activation
//! are not counted) and that as a percentage of this machine's FMA peak, which is measured
//! first with register-only multiply-adds of the same instruction set on as many threads.
//! `BGE_GEMM_ISA=avx512|avx2|neon|scalar` picks an instruction set other than the fastest;
//! `BGE_GEMM_DTYPE=bf16` times the AVX-512 BF16 kernel (its %peak is of the f32 FMA peak, so
//! up to 200).
//! Run it on an idle machine: the load average is printed before and after.

use std::time::Instant;

mod common;

use bge::backend::Activation;
use bge::backend::cpu::gemm::{PackedLinear, linear};
use bge::backend::cpu::simd::Isa;
use common::{loadavg, median_ms, pool, random};

/// (name, hidden size, FFN size) of the BGE encoders.
const MODELS: [(&str, usize, usize); 3] = [
    ("small", 384, 1536),
    ("base", 768, 3072),
    ("large/m3", 1024, 4096),
];

/// Tokens per call: a large batch, a medium one, and one short sequence (latency).
const TOKENS: [usize; 3] = [4096, 512, 32];

fn main() {
    let isa = match std::env::var("BGE_GEMM_ISA") {
        Ok(name) => match Isa::available().into_iter().find(|i| i.name() == name) {
            Some(isa) => isa,
            None => {
                eprintln!(
                    "BGE_GEMM_ISA={name}: not one this CPU runs: {:?}",
                    Isa::available()
                );
                std::process::exit(2);
            }
        },
        Err(_) => Isa::best(),
    };
    let bf16 = std::env::var("BGE_GEMM_DTYPE").is_ok_and(|d| d == "bf16");
    println!(
        "gemm bench: isa {}{}, load average {}",
        isa.name(),
        if bf16 {
            " bf16 (%peak of the f32 FMA peak)"
        } else {
            ""
        },
        loadavg()
    );
    println!(
        "{:<9} {:<8} {:>5} {:>5} {:>5} {:<5} {:>3} {:>10} {:>8} {:>6}",
        "model", "layer", "M", "N", "K", "act", "thr", "median ms", "GFLOP/s", "%peak"
    );
    for threads in [2, 1] {
        let pool = pool(threads);
        let peak = fma_peak_gflops(isa, &pool);
        for (model, h, f) in MODELS {
            let layers = [
                ("qkv", 3 * h, h, Activation::None),
                ("attn-out", h, h, Activation::None),
                ("ffn-up", f, h, Activation::Gelu),
                ("ffn-down", h, f, Activation::None),
            ];
            for (layer, n, k, act) in layers {
                let (weight, bias) = (random(n * k, 1), random(n, 2));
                let w = match bf16 {
                    true => PackedLinear::bf16(&weight, &bias, n, k),
                    false => PackedLinear::with_isa(&weight, &bias, n, k, isa),
                }
                .expect("the bench's shapes are consistent, and bf16 needs AVX-512 BF16");
                for m in TOKENS {
                    let a = random(m * k, 3);
                    let mut out = vec![0f32; m * n];
                    let mut call = || linear(&a, m, &w, act, &mut out, &pool).expect("shapes");
                    let ms = median_ms(&mut call);
                    let gflops = 2.0 * (m * n * k) as f64 / (ms * 1e6);
                    let pct = peak.map_or("-".into(), |p| format!("{:.0}", 100.0 * gflops / p));
                    println!(
                        "{model:<9} {layer:<8} {m:>5} {n:>5} {k:>5} {:<5} {threads:>3} {ms:>10.3} {gflops:>8.1} {pct:>6}",
                        format!("{act:?}").to_lowercase()
                    );
                }
            }
        }
        match peak {
            Some(p) => println!("peak ({threads} threads, register-only FMA): {p:.1} GFLOP/s"),
            None => println!("peak ({threads} threads): not measured for {}", isa.name()),
        }
    }
    println!("load average after: {}", loadavg());
}

/// GFLOP/s of independent register-only FMA chains on every thread of `pool`: the ceiling a
/// matrix multiply can approach. `None` where this bench has no such loop for `isa`.
fn fma_peak_gflops(isa: Isa, pool: &rayon::ThreadPool) -> Option<f64> {
    const ITERS: usize = 10_000_000;
    let flops_per_iter = match isa {
        Isa::Avx512 => 2 * 16 * peak::CHAINS,
        Isa::Avx2 => 2 * 8 * peak::CHAINS,
        _ => return None,
    };
    let run = || {
        pool.broadcast(|_| {
            // SAFETY: `isa` is available on this CPU (`Isa::available` / `Isa::best`).
            unsafe { peak::fma_chains(isa, ITERS) }
        })
    };
    run();
    // The fastest of a few runs: a moment of another process on a core only slows a run down.
    let secs = (0..5)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(run());
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min);
    Some((pool.current_num_threads() * ITERS * flops_per_iter) as f64 / secs / 1e9)
}

#[cfg(target_arch = "x86_64")]
mod peak {
    use std::arch::x86_64::*;

    use bge::backend::cpu::simd::Isa;

    /// Independent accumulators: at least FMA latency x FMA ports on x86 cores (8 on Zen 4),
    /// and with the two constants within AVX2's 16 registers.
    pub const CHAINS: usize = 12;

    /// # Safety
    /// The CPU supports `isa` (AVX-512F, or AVX2 + FMA).
    pub unsafe fn fma_chains(isa: Isa, iters: usize) -> f32 {
        // SAFETY: the caller's guarantee.
        unsafe {
            match isa {
                Isa::Avx512 => avx512(iters),
                _ => avx2(iters),
            }
        }
    }

    #[target_feature(enable = "avx512f")]
    fn avx512(iters: usize) -> f32 {
        let (x, y) = (_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-7));
        let mut acc = [std::hint::black_box(_mm512_set1_ps(1.0)); CHAINS];
        for _ in 0..iters {
            for v in &mut acc {
                *v = _mm512_fmadd_ps(*v, x, y);
            }
        }
        acc.iter().map(|&v| _mm512_reduce_add_ps(v)).sum()
    }

    #[target_feature(enable = "avx2,fma")]
    fn avx2(iters: usize) -> f32 {
        let (x, y) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
        let mut acc = [std::hint::black_box(_mm256_set1_ps(1.0)); CHAINS];
        for _ in 0..iters {
            for v in &mut acc {
                *v = _mm256_fmadd_ps(*v, x, y);
            }
        }
        let mut lanes = [0f32; 8];
        acc.iter()
            .map(|&v| {
                // SAFETY: `lanes` has room for 8 floats.
                unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), v) };
                lanes.iter().sum::<f32>()
            })
            .sum()
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod peak {
    use bge::backend::cpu::simd::Isa;

    pub const CHAINS: usize = 0;

    /// # Safety
    /// Never called: [`super::fma_peak_gflops`] measures no peak off x86-64.
    pub unsafe fn fma_chains(_: Isa, _: usize) -> f32 {
        0.0
    }
}
