//! The FlagModel API against FlagEmbedding's own outputs (tiny-bge) and sentence-transformers'
//! (real all-MiniLM-L6-v2), on every backend of this build.

mod common;

use bge::INSTRUCTION_EN;
use bge::{Device, FlagModel, Options, Pooling};
use common::{assert_rows, devices, load, model_dir, reference, texts, tol};

/// The cosine every vector must reach against FlagEmbedding (the bar for f32).
const MIN_COSINE: f64 = 0.99999;

fn tiny_bge(device: Device, options: Options) -> FlagModel {
    let options = Options { device, ..options };
    FlagModel::load(model_dir("tiny-bge").to_str().unwrap(), &options).unwrap()
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn tiny_bge_encode_at_512_and_16() {
    let want = reference("tiny_bge/flagmodel.safetensors");
    let sentences = texts("sentences");
    for device in devices() {
        // A small batch size forces several batches of mixed lengths.
        let model = tiny_bge(
            device,
            Options {
                batch_size: 5,
                ..Options::default()
            },
        );
        let got = model.encode(&refs(&sentences)).unwrap();
        let name = format!("{device:?} encode_max512");
        assert_rows(
            &name,
            &got,
            &load(&want, "encode_max512"),
            tol::NORMALIZED,
            MIN_COSINE,
        );

        let got = model
            .embed(&refs(&sentences), None, 16, bge::Want::DENSE, &mut |_| {})
            .unwrap();
        assert_eq!(
            got.truncated, 9,
            "texts longer than 16 tokens (tokens_sentences_max16.json)"
        );
        let name = format!("{device:?} encode_max16");
        assert_rows(
            &name,
            &got.dense,
            &load(&want, "encode_max16"),
            tol::NORMALIZED,
            MIN_COSINE,
        );
    }
}

#[test]
fn tiny_bge_unnormalized_cls() {
    let want = load(
        &reference("tiny_bge/flagmodel.safetensors"),
        "encode_max512_unnormalized",
    );
    for device in devices() {
        let model = tiny_bge(
            device,
            Options {
                normalize: false,
                ..Options::default()
            },
        );
        let got = model.encode(&refs(&texts("sentences"))).unwrap();
        assert_rows(
            &format!("{device:?} unnormalized"),
            &got,
            &want,
            tol::UNNORMALIZED,
            MIN_COSINE,
        );
    }
}

#[test]
fn tiny_bge_queries_corpus_and_scores() {
    let want = reference("tiny_bge/flagmodel.safetensors");
    for device in devices() {
        let model = tiny_bge(
            device,
            Options {
                query_instruction: Some(INSTRUCTION_EN.into()),
                ..Options::default()
            },
        );
        let q = model.encode_queries(&refs(&texts("queries"))).unwrap();
        let p = model.encode_corpus(&refs(&texts("passages"))).unwrap();
        assert_rows(
            &format!("{device:?} queries"),
            &q,
            &load(&want, "queries"),
            tol::NORMALIZED,
            MIN_COSINE,
        );
        assert_rows(
            &format!("{device:?} passages"),
            &p,
            &load(&want, "passages"),
            tol::NORMALIZED,
            MIN_COSINE,
        );
        let scores: Vec<f64> = q
            .iter()
            .flat_map(|a| {
                p.iter()
                    .map(move |b| a.iter().zip(b).map(|(x, y)| (x * y) as f64).sum())
            })
            .collect();
        common::assert_close(
            "scores",
            &scores,
            &load(&want, "scores").data,
            tol::NORMALIZED,
        );
    }
}

#[test]
fn minilm_mean_and_cls_pooling() {
    let dir = common::minilm_dir();
    let want = reference("minilm/embeddings.safetensors");
    let sentences = texts("sentences");
    for device in devices() {
        let options = Options {
            device,
            max_length: Some(256),
            ..Options::default()
        };
        // 1_Pooling/config.json says mean.
        let model = FlagModel::load(dir.to_str().unwrap(), &options).unwrap();
        assert_eq!(model.pooling(), Pooling::Mean);
        let got = model.encode(&refs(&sentences)).unwrap();
        assert_rows(
            "minilm mean",
            &got,
            &load(&want, "mean_normalized"),
            tol::NORMALIZED,
            MIN_COSINE,
        );
        assert_rows(
            "minilm flagmodel mean",
            &got,
            &load(&want, "flagmodel_mean"),
            tol::NORMALIZED,
            MIN_COSINE,
        );

        let cls = Options {
            pooling: Some(Pooling::Cls),
            ..options
        };
        let model = FlagModel::load(dir.to_str().unwrap(), &cls).unwrap();
        let got = model.encode(&refs(&sentences)).unwrap();
        assert_rows(
            "minilm cls",
            &got,
            &load(&want, "flagmodel_cls"),
            tol::NORMALIZED,
            MIN_COSINE,
        );
    }
}

/// bf16 linear layers on the CPU (where it has AVX-512 BF16): the same bar as f16 on the GPU,
/// cosine >= 0.999 per vector. Elsewhere `--dtype bf16` is a clear error.
#[test]
fn tiny_bge_and_minilm_in_bf16_on_cpu() {
    let bf16 = Options {
        device: Device::Cpu,
        dtype: bge::Dtype::Bf16,
        ..Options::default()
    };
    let tiny = model_dir("tiny-bge");
    let model = match FlagModel::load(tiny.to_str().unwrap(), &bf16) {
        Ok(model) => model,
        Err(e) => {
            let has_bf16 =
                cfg!(target_arch = "x86_64") && std::is_x86_feature_detected!("avx512bf16");
            assert!(!has_bf16, "bf16 refused on a CPU that has it: {e}");
            assert!(e.to_string().contains("AVX-512 BF16"), "{e}");
            return;
        }
    };
    let got = model.encode(&refs(&texts("sentences"))).unwrap();
    let want = load(
        &reference("tiny_bge/flagmodel.safetensors"),
        "encode_max512",
    );
    assert_rows("bf16 tiny-bge", &got, &want, tol::BF16_VECTORS, 0.999);

    let minilm = Options {
        max_length: Some(256),
        ..bf16
    };
    let model = FlagModel::load(common::minilm_dir().to_str().unwrap(), &minilm).unwrap();
    let got = model.encode(&refs(&texts("sentences"))).unwrap();
    let want = load(
        &reference("minilm/embeddings.safetensors"),
        "mean_normalized",
    );
    assert_rows("bf16 minilm", &got, &want, tol::BF16_VECTORS, 0.999);
}

/// An instruction format without two `{}` is refused when the model loads; it can no longer be
/// changed afterwards (it used to be a public field, and `"{}"` made `encode_queries` panic).
#[test]
fn a_query_instruction_format_without_two_slots_is_refused() {
    for format in ["{}", "{}{}{}", "no slots"] {
        let options = Options {
            device: Device::Cpu,
            query_instruction_format: format.into(),
            ..Options::default()
        };
        let err = FlagModel::load(model_dir("tiny-bge").to_str().unwrap(), &options)
            .err()
            .expect("refused");
        assert!(
            err.to_string().contains("must contain `{}` twice"),
            "{format}: {err}"
        );
    }
}
