//! Every intermediate value of the encoder against float64 transformers, layer by layer, with
//! the dumped sentences packed into ONE batch (so sequences must not see each other).

mod common;

use std::path::Path;

use bge::ModelConfig;
use bge::backend::Backend;
use bge::backend::gpu::{Gpu, GpuOptions};
use bge::backend::reference::Reference;
use bge::internals::Encoded;
use bge::internals::Weights;
use bge::internals::{self as model, Checkpoint, Encoder, Probe};
use common::{Tensor, Tolerance, assert_close, load, model_dir, reference, to_f64, tol};

/// Runs sentences `0..n` of `dump` through `dir`'s encoder on backend `b` and compares every
/// probe with the dump. Returns how many values were compared, so a caller can tell the
/// comparison really happened.
fn check_layers<B: Backend>(b: &B, dir: &Path, dump: &Path, n: usize, tol: Tolerance) -> usize {
    check_dump(b, dir, dump, "s", n, tol)
}

/// [`check_layers`] for dumps whose items are named `{item}{i}.*` (`p` for reranker pairs).
fn check_dump<B: Backend>(
    b: &B,
    dir: &Path,
    dump: &Path,
    item: &str,
    n: usize,
    tol: Tolerance,
) -> usize {
    let config = ModelConfig::from_file(&dir.join("config.json")).unwrap();
    let weights = Weights::open(&[dir.join("model.safetensors")]).unwrap();
    let encoder = Encoder::load(b, &config, &Checkpoint::new(&weights).unwrap()).unwrap();

    let seqs: Vec<Encoded> = (0..n)
        .map(|i| {
            let ids: Vec<u32> = load(dump, &format!("{item}{i}.input_ids"))
                .data
                .iter()
                .map(|&v| v as u32)
                .collect();
            Encoded {
                type_ids: vec![0; ids.len()],
                untruncated_len: ids.len(),
                ids,
            }
        })
        .collect();
    let packed = model::pack(&config, &seqs.iter().collect::<Vec<_>>()).unwrap();
    for i in 0..n {
        let want: Vec<u32> = load(dump, &format!("{item}{i}.position_ids"))
            .data
            .iter()
            .map(|&v| v as u32)
            .collect();
        assert_eq!(
            &packed.position_ids[packed.range(i)],
            &want[..],
            "position ids of s{i}"
        );
    }

    let mut probes: Vec<(Probe, Vec<f32>)> = Vec::new();
    let batch = b.batch(&packed).unwrap();
    encoder
        .forward_probed(b, &batch, None, &mut |p, t| {
            probes.push((p, b.to_host(t)?));
            Ok(())
        })
        .unwrap();

    let mut compared = 0;
    for (probe, values) in &probes {
        let (name, layer) = match *probe {
            Probe::EmbeddingsSum => ("embeddings_sum", None),
            Probe::Hidden(l) => ("hidden_states", Some(l)),
            Probe::AttnContext(l) => ("attn_context", Some(l)),
            Probe::AttnOutput(l) => ("attn_output", Some(l)),
            Probe::FfnIntermediate(l) => ("ffn_intermediate", Some(l)),
        };
        let cols = values.len() / packed.tokens();
        for i in 0..n {
            let full = load(dump, &format!("{item}{i}.{name}"));
            let want: Tensor = match layer {
                Some(l) => full.index(l),
                None => full,
            };
            let rows = packed.range(i);
            let got = to_f64(&values[rows.start * cols..rows.end * cols]);
            assert_close(&format!("{item}{i} {probe:?}"), &got, &want.data, tol);
            compared += got.len();
        }
    }
    let layers = config.num_layers;
    assert_eq!(probes.len(), 2 + 4 * layers, "every probe reported");
    compared
}

#[test]
fn tiny_bge_layers_match_float64_on_reference() {
    let dump = reference("tiny_bge/f64_transformers.safetensors");
    let n = check_layers(&Reference, &model_dir("tiny-bge"), &dump, 3, tol::HIDDEN);
    assert!(n > 10_000, "compared {n} values");
}

#[test]
fn minilm_layers_match_float64_on_reference() {
    let dump = reference("minilm/f64_transformers.safetensors");
    let n = check_layers(
        &Reference,
        &common::minilm_dir(),
        &dump,
        1,
        tol::HIDDEN_MINILM,
    );
    assert!(n > 10_000, "compared {n} values");
}

fn gpu() -> Gpu {
    Gpu::new(GpuOptions::default()).expect("a GPU adapter (in CI: lavapipe)")
}

#[test]
fn tiny_bge_layers_match_float64_on_gpu() {
    let dump = reference("tiny_bge/f64_transformers.safetensors");
    let n = check_layers(&gpu(), &model_dir("tiny-bge"), &dump, 3, tol::HIDDEN);
    assert!(n > 10_000, "compared {n} values");
}

#[test]
fn minilm_layers_match_float64_on_gpu() {
    let dump = reference("minilm/f64_transformers.safetensors");
    let n = check_layers(&gpu(), &common::minilm_dir(), &dump, 1, tol::HIDDEN_MINILM);
    assert!(n > 10_000, "compared {n} values");
}

/// XLM-RoBERTa (tiny-m3, positions from padding_idx + 1) and the reranker's encoder.
fn check_xlm_roberta<B: Backend>(b: &B) {
    let dump = reference("tiny_m3/f64_transformers.safetensors");
    let n = check_dump(b, &model_dir("tiny-m3"), &dump, "s", 3, tol::HIDDEN);
    assert!(n > 10_000, "compared {n} values");
    let dump = reference("tiny_reranker/f64_transformers.safetensors");
    let n = check_dump(b, &model_dir("tiny-reranker"), &dump, "p", 2, tol::HIDDEN);
    assert!(n > 10_000, "compared {n} values");
}

#[test]
fn xlm_roberta_layers_match_float64_on_reference() {
    check_xlm_roberta(&Reference);
}

#[test]
fn xlm_roberta_layers_match_float64_on_gpu() {
    check_xlm_roberta(&gpu());
}

/// `forward_rows` (the last layer on the CLS rows only) equals the full forward's rows, with
/// the model's layers and with none (then the rows are cut right after the embeddings).
fn check_forward_rows<B: Backend>(b: &B) {
    let dir = model_dir("tiny-bge");
    let mut config = ModelConfig::from_file(&dir.join("config.json")).unwrap();
    let weights = Weights::open(&[dir.join("model.safetensors")]).unwrap();
    for layers in [config.num_layers, 0] {
        config.num_layers = layers;
        let encoder = Encoder::load(b, &config, &Checkpoint::new(&weights).unwrap()).unwrap();
        let (packed, _) = bge::internals::bench_inputs(&config, 5, 40, true, 3).unwrap();
        let batch = b.batch(&packed).unwrap();
        let rows = packed.first_rows();
        let full = b
            .to_host(
                &b.gather_rows(&encoder.forward(b, &batch).unwrap(), &rows)
                    .unwrap(),
            )
            .unwrap();
        let some = b
            .to_host(&encoder.forward_rows(b, &batch, &rows).unwrap())
            .unwrap();
        assert_close(
            &format!("forward_rows vs forward, {layers} layers"),
            &to_f64(&some),
            &to_f64(&full),
            tol::KERNEL_F32,
        );
    }
}

#[test]
fn forward_rows_equals_the_full_forward() {
    check_forward_rows(&Reference);
    check_forward_rows(&bge::backend::cpu::Cpu::new(Some(3)).unwrap());
    check_forward_rows(&gpu());
}
