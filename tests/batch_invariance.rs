//! The batch-invariance promise: a text's outputs are the same bits whether it is encoded
//! alone, among 40 texts, or at another batch size, on every backend and precision this
//! machine has (the GPU is lavapipe in CI; a missing adapter fails the test).

mod common;

use bge::{Device, Dtype, FlagModel, Options, Reranker, Want};
use common::{Bits, minilm_dir, model_dir, texts};

/// 40 texts of many lengths: the fixture texts, some of them joined, and an empty one.
fn forty() -> Vec<String> {
    let mut all: Vec<String> = ["sentences", "queries", "passages"]
        .into_iter()
        .flat_map(texts)
        .collect();
    let joined: Vec<String> = all.windows(3).step_by(3).map(|w| w.concat()).collect();
    all.extend(joined);
    all.truncate(39);
    all.push(String::new());
    assert_eq!(all.len(), 40);
    all
}

/// Asserts that `encode(texts, batch_size)` gives each text the bits it gets alone, and the
/// same at batch sizes 1, 7 and 256.
fn assert_invariant<R: Bits>(what: &str, mut encode: impl FnMut(&[&str], usize) -> Vec<R>) {
    let texts = forty();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let together: Vec<Vec<u32>> = encode(&refs, 256).iter().map(Bits::bits).collect();
    assert_eq!(together.len(), texts.len(), "{what}");
    for (i, text) in refs.iter().enumerate() {
        let alone: Vec<Vec<u32>> = encode(&[text], 256).iter().map(Bits::bits).collect();
        assert!(
            alone.len() == 1 && alone[0] == together[i],
            "{what}: text {i} alone differs from text {i} among 40"
        );
    }
    for batch_size in [1, 7] {
        let got = encode(&refs, batch_size);
        for (i, (g, w)) in got.iter().zip(&together).enumerate() {
            assert!(
                g.bits() == *w,
                "{what}: text {i} at batch size {batch_size} differs from 256"
            );
        }
    }
}

/// Every (device, dtype) this machine runs: the reference, the CPU in f32 (and bf16 where it
/// has AVX-512 BF16), the GPU in f32 and f16.
fn backends() -> Vec<(Device, Dtype)> {
    let mut all = vec![
        (Device::Reference, Dtype::F32),
        (Device::Cpu, Dtype::F32),
        (Device::Gpu(None), Dtype::F32),
        (Device::Gpu(None), Dtype::F16),
    ];
    if cfg!(target_arch = "x86_64") && std::arch::is_x86_feature_detected!("avx512bf16") {
        all.push((Device::Cpu, Dtype::Bf16));
    }
    all
}

/// The model in `dir` loaded at each batch size the test uses.
struct AtBatchSizes(Vec<(usize, FlagModel)>);

impl AtBatchSizes {
    fn load(dir: &std::path::Path, device: Device, dtype: Dtype) -> Self {
        AtBatchSizes(
            [1, 7, 256]
                .into_iter()
                .map(|batch_size| {
                    let options = Options {
                        device,
                        dtype,
                        batch_size,
                        ..Options::default()
                    };
                    let model = FlagModel::load(dir.to_str().unwrap(), &options).unwrap();
                    (batch_size, model)
                })
                .collect(),
        )
    }

    fn at(&self, batch_size: usize) -> &FlagModel {
        &self.0.iter().find(|(b, _)| *b == batch_size).unwrap().1
    }
}

#[test]
fn dense_vectors_do_not_depend_on_the_batch() {
    let dir = model_dir("tiny-bge");
    for (device, dtype) in backends() {
        let models = AtBatchSizes::load(&dir, device, dtype);
        assert_invariant(&format!("tiny-bge {device} {dtype}"), |t, batch_size| {
            models.at(batch_size).encode(t).unwrap()
        });
    }
}

/// all-MiniLM-L6-v2 (384 wide, mean pooling) on the CPU: one short text alone takes the GEMM's
/// few-row path, forty texts the blocked one.
#[test]
fn minilm_vectors_do_not_depend_on_the_batch_on_the_cpu() {
    let dir = minilm_dir();
    for (device, dtype) in backends().into_iter().filter(|b| b.0 == Device::Cpu) {
        let models = AtBatchSizes::load(&dir, device, dtype);
        assert_invariant(&format!("minilm {device} {dtype}"), |t, batch_size| {
            models.at(batch_size).encode(t).unwrap()
        });
    }
}

#[test]
fn m3_outputs_do_not_depend_on_the_batch() {
    let dir = model_dir("tiny-m3");
    for (device, dtype) in backends() {
        let models = AtBatchSizes::load(&dir, device, dtype);
        assert_invariant(&format!("tiny-m3 {device} {dtype}"), |t, batch_size| {
            let m3 = models.at(batch_size);
            let e = m3
                .embed(t, None, m3.max_length(), Want::ALL, &mut |_| {})
                .unwrap();
            (0..t.len())
                .map(|i| {
                    (
                        e.dense[i].clone(),
                        e.sparse[i].clone(),
                        e.colbert[i].clone(),
                    )
                })
                .collect()
        });
    }
}

#[test]
fn reranker_scores_do_not_depend_on_the_batch() {
    let dir = model_dir("tiny-reranker");
    for (device, dtype) in backends() {
        let mut reranker = Reranker::load(dir.to_str().unwrap(), device, dtype).unwrap();
        assert_invariant(
            &format!("tiny-reranker {device} {dtype}"),
            |t, batch_size| {
                reranker.set_batch_size(batch_size).unwrap();
                let pairs: Vec<(&str, &str)> = t.iter().map(|p| ("what is a panda?", *p)).collect();
                reranker.compute_score(&pairs, false).unwrap()
            },
        );
    }
}
