//! Many threads on one loaded model: every model type is `Send + Sync` (checked at compile
//! time), and 8 threads encoding different texts at once on one shared model get, bit for bit,
//! what a sequential run gets, on the CPU backend and on the GPU backend (lavapipe in CI).

mod common;

use bge::{Device, FlagModel, LlmEmbedder, M3Model, Options, Reranker, Task, Want};
use std::sync::Barrier;

use common::{Bits, minilm_dir, model_dir, texts};

/// Fails to compile if any model type cannot be shared between threads.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<FlagModel>();
    send_sync::<M3Model>();
    send_sync::<Reranker>();
    send_sync::<LlmEmbedder>();
    send_sync::<bge::backend::reference::Reference>();
    send_sync::<bge::backend::cpu::Cpu>();
    send_sync::<bge::backend::gpu::Gpu>();
};

const THREADS: usize = 8;
const ROUNDS: usize = 3;

/// Thread `t`'s texts: a different slice of the fixture texts for each thread, of different
/// lengths and counts.
fn work() -> Vec<Vec<String>> {
    let all: Vec<String> = ["sentences", "queries", "passages"]
        .into_iter()
        .flat_map(texts)
        .collect();
    (0..THREADS)
        .map(|t| {
            all.iter()
                .skip(t)
                .step_by(THREADS / 2 + t % 3)
                .cloned()
                .collect()
        })
        .collect()
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Runs `call` on every thread's texts one after another, then on all threads at once (they
/// start together and call `ROUNDS` times each, so the calls overlap), and asserts that every
/// result has the sequential run's bits.
fn concurrent_equals_sequential<M: Sync, R: Bits + Send>(
    what: &str,
    model: &M,
    call: impl Fn(&M, &[&str]) -> R + Sync,
) {
    let work = work();
    let sequential: Vec<Vec<u32>> = work.iter().map(|w| call(model, &refs(w)).bits()).collect();
    let start = Barrier::new(THREADS);
    std::thread::scope(|s| {
        let handles: Vec<_> = work
            .iter()
            .map(|w| {
                let (start, call) = (&start, &call);
                s.spawn(move || {
                    start.wait();
                    (0..ROUNDS)
                        .map(|_| call(model, &refs(w)).bits())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        for (t, (h, want)) in handles.into_iter().zip(&sequential).enumerate() {
            for (round, got) in h.join().expect("thread panicked").iter().enumerate() {
                assert!(
                    got == want,
                    "{what}: thread {t}, round {round} differs from the sequential run"
                );
            }
        }
    });
}

fn devices() -> [Device; 2] {
    [Device::Cpu, Device::Gpu(None)]
}

/// The real all-MiniLM-L6-v2 on the CPU, where its 384-wide layers take the parallel GEMM
/// and attention paths with their per-thread working memory; tiny-bge on the GPU, where the
/// shared command encoder and buffer pool are the same at any size and lavapipe takes about
/// a second per MiniLM batch.
#[test]
fn eight_threads_on_one_embedder_match_a_sequential_run() {
    for (device, dir) in [
        (Device::Cpu, minilm_dir()),
        (Device::Gpu(None), model_dir("tiny-bge")),
    ] {
        let options = Options {
            device,
            max_length: Some(128),
            batch_size: 4,
            ..Options::default()
        };
        let model = FlagModel::load(dir.to_str().unwrap(), &options).unwrap();
        let what = format!("{} on {device}", dir.display());
        concurrent_equals_sequential(&what, &model, |m, t| m.encode(t).unwrap());
    }
}

#[test]
fn eight_threads_on_one_m3_model_match_a_sequential_run() {
    for device in devices() {
        let options = Options {
            device,
            batch_size: 3,
            ..Options::default()
        };
        let model = M3Model::load(model_dir("tiny-m3").to_str().unwrap(), &options).unwrap();
        concurrent_equals_sequential(&format!("tiny-m3 on {device}"), &model, |m, t| {
            m.encode(t, Want::ALL).unwrap()
        });
    }
}

#[test]
fn eight_threads_on_one_reranker_match_a_sequential_run() {
    for device in devices() {
        let dir = model_dir("tiny-reranker");
        let model = Reranker::load(dir.to_str().unwrap(), device, bge::Dtype::F32).unwrap();
        concurrent_equals_sequential(&format!("tiny-reranker on {device}"), &model, |m, t| {
            let pairs: Vec<(&str, &str)> = t.windows(2).map(|w| (w[0], w[1])).collect();
            m.compute_score(&pairs, false).unwrap()
        });
    }
}

#[test]
fn eight_threads_on_one_llm_embedder_match_a_sequential_run() {
    for device in devices() {
        let options = Options {
            device,
            batch_size: 3,
            ..Options::default()
        };
        let dir = model_dir("tiny-bge");
        let model = LlmEmbedder::load(dir.to_str().unwrap(), &options).unwrap();
        concurrent_equals_sequential(&format!("llm-embedder on {device}"), &model, |m, t| {
            let queries = m.encode_queries(Task::Qa, t).unwrap();
            (queries, m.encode_keys(Task::Tool, t).unwrap())
        });
    }
}
