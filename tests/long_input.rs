//! An 8192-token input (bge-m3's limit) on the GPU backend: it runs, it matches the reference,
//! and attention memory grows linearly with the sequence (no [seq, seq] buffer anywhere).

mod common;

use bge::ModelConfig;
use bge::backend::gpu::{Gpu, GpuOptions};
use bge::backend::reference::Reference;
use bge::backend::{Backend, Kernels};
use bge::internals::{Arch, ConfigHead as Head};
use bge::internals::{Encoder, RandomParams};
use common::{assert_close, to_f64, tol};

/// bge-m3's architecture and position range at a tiny width.
fn long_config() -> ModelConfig {
    ModelConfig {
        arch: Arch::XlmRoberta,
        head: Head::Encoder,
        vocab_size: 2000,
        hidden_size: 32,
        num_layers: 2,
        num_heads: 4,
        intermediate_size: 64,
        max_position_embeddings: 8194,
        type_vocab_size: 1,
        pad_token_id: 1,
        layer_norm_eps: 1e-5,
    }
}

/// Runs one sequence of `len` tokens; returns the output and the pool's peak and largest
/// buffer during the forward pass.
fn run_gpu(gpu: &Gpu, encoder: &Encoder<Gpu>, len: usize) -> (Vec<f32>, u64, u64) {
    let (packed, _) = bge::internals::bench_inputs(&encoder.config, 1, len, false, 7).unwrap();
    let batch = gpu.batch(&packed).unwrap();
    gpu.reset_pool_peaks();
    let out = encoder.forward(gpu, &batch).unwrap();
    let host = gpu.to_host(&out).unwrap();
    let stats = gpu.pool_stats();
    (host, stats.peak_in_use, stats.largest)
}

#[test]
fn an_8192_token_input_runs_in_linear_memory() {
    let config = long_config();
    let gpu = Gpu::new(GpuOptions::default()).expect("a GPU adapter (in CI: lavapipe)");
    let encoder = Encoder::load(&gpu, &config, &RandomParams { seed: 3 }).unwrap();

    let (_, peak_2k, largest_2k) = run_gpu(&gpu, &encoder, 2048);
    let (out, peak_8k, largest_8k) = run_gpu(&gpu, &encoder, 8192);

    // The widest activation is QKV: 8192 x 96 f32 = 3 MiB. A score matrix for one head
    // would be 8192 x 8192 f32 = 256 MiB.
    let widest = 8192 * 3 * 32 * 4;
    assert!(
        largest_8k <= widest + widest / 8,
        "largest buffer {largest_8k} B"
    );
    assert!(peak_8k <= 8 * widest, "peak {peak_8k} B");
    // Four times the tokens, four times the memory (not sixteen).
    let ratio = peak_8k as f64 / peak_2k as f64;
    assert!(
        (3.5..=4.5).contains(&ratio),
        "peak grew {ratio}x from 2048 to 8192 tokens ({peak_2k} -> {peak_8k} B)"
    );
    assert!(largest_8k >= 4 * largest_2k - largest_2k / 2);

    // And it computes the right thing: the reference on the same 8192 tokens.
    let (packed, _) = bge::internals::bench_inputs(&config, 1, 8192, false, 7).unwrap();
    let reference = Encoder::load(&Reference, &config, &RandomParams { seed: 3 }).unwrap();
    let batch = Reference.batch(&packed).unwrap();
    let want = reference.forward(&Reference, &batch).unwrap().into_data();
    assert_close(
        "8192 tokens, gpu vs reference",
        &to_f64(&out),
        &to_f64(&want),
        tol::HIDDEN,
    );
}
