//! BGE-M3 (tiny-m3) against BGEM3FlagModel: dense, lexical and ColBERT outputs at max length
//! 1024 and 32, the retrieval scores, compute_score, and the pytorch_model.bin load path, on
//! every backend.

mod common;

use std::collections::BTreeMap;

use bge::LexicalWeights;
use bge::m3::{self, M3Model, PairScores};
use bge::{Device, Options, Want};
use common::{
    Tensor, assert_close, assert_rows, devices, load, model_dir, read_json, reference, texts,
    to_f64, tol,
};
use serde_json::Value;

const MIN_COSINE: f64 = 0.99999;
const ALL: Want = Want {
    dense: true,
    sparse: true,
    colbert: true,
};

fn tiny_m3(device: Device) -> M3Model {
    let options = Options {
        device,
        ..Options::default()
    };
    M3Model::load(model_dir("tiny-m3").to_str().unwrap(), &options).unwrap()
}

fn refs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// Checks lexical weights against FlagEmbedding's dicts: equal weights (within tol) for ids on
/// both sides; an id on one side only must weigh less than the tolerance (it may cross the ReLU
/// by rounding). Returns the number of ids compared.
fn check_lexical(what: &str, got: &[LexicalWeights], want: &[Value]) -> usize {
    assert_eq!(got.len(), want.len(), "{what}: number of texts");
    let mut compared = 0;
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let w: BTreeMap<u32, f64> = w
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.parse().unwrap(), v.as_f64().unwrap()))
            .collect();
        let g: BTreeMap<u32, f64> = g.0.iter().map(|&(id, v)| (id, v as f64)).collect();
        for id in g.keys().chain(w.keys()) {
            match (g.get(id), w.get(id)) {
                (Some(a), Some(b)) => {
                    assert_close(&format!("{what}[{i}] id {id}"), &[*a], &[*b], tol::LEXICAL)
                }
                (Some(v), None) | (None, Some(v)) => {
                    assert!(
                        *v < tol::LEXICAL.atol,
                        "{what}[{i}]: id {id} ({v}) on one side only"
                    )
                }
                (None, None) => unreachable!(),
            }
            compared += 1;
        }
    }
    compared
}

/// Rows of a concatenated `[sum, dim]` tensor split by an offsets tensor.
fn split_rows(t: &Tensor, offsets: &Tensor) -> Vec<Vec<Vec<f64>>> {
    offsets
        .data
        .windows(2)
        .map(|w| {
            (w[0] as usize..w[1] as usize)
                .map(|r| t.row(r).to_vec())
                .collect()
        })
        .collect()
}

fn check_colbert(what: &str, got: &[Vec<Vec<f32>>], want: &[Vec<Vec<f64>>]) {
    assert_eq!(got.len(), want.len(), "{what}: number of texts");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.len(), w.len(), "{what}[{i}]: ColBERT rows (tokens - 1)");
        for (r, (gr, wr)) in g.iter().zip(w).enumerate() {
            assert_close(
                &format!("{what}[{i}] row {r}"),
                &to_f64(gr),
                wr,
                tol::NORMALIZED,
            );
        }
    }
}

#[test]
fn encode_at_1024_and_32_matches_bgem3flagmodel() {
    let sentences = texts("sentences");
    for device in devices() {
        let model = tiny_m3(device);
        for max_length in [1024, 32] {
            let file = reference(&format!("tiny_m3/encode_max{max_length}.safetensors"));
            let what = format!("{device:?} max{max_length}");
            let got = model
                .model()
                .embed(&refs(&sentences), None, max_length, ALL, &mut |_| {})
                .unwrap();
            assert_rows(
                &format!("{what} dense"),
                &got.dense,
                &load(&file, "dense_vecs"),
                tol::NORMALIZED,
                MIN_COSINE,
            );
            let want = split_rows(
                &load(&file, "colbert_vecs"),
                &load(&file, "colbert_offsets"),
            );
            check_colbert(&format!("{what} colbert"), &got.colbert, &want);
            let lexical = read_json(&reference(&format!(
                "tiny_m3/encode_max{max_length}_lexical_weights.json"
            )));
            let n = check_lexical(
                &format!("{what} sparse"),
                &got.sparse,
                lexical["lexical_weights"].as_array().unwrap(),
            );
            assert!(n > 100, "{what}: compared {n} lexical weights");
        }
    }
}

#[test]
fn empty_texts_have_no_lexical_weights_and_one_colbert_row() {
    let model = tiny_m3(Device::Reference);
    let got = model.encode(&["", " \t\n  "], ALL).unwrap();
    assert!(got.sparse.iter().all(|s| s.0.is_empty()));
    assert!(
        got.colbert.iter().all(|c| c.len() == 1),
        "<s> </s>: only </s> keeps a vector"
    );
}

#[test]
fn retrieval_scores_match() {
    let file = reference("tiny_m3/retrieval.safetensors");
    let lexical = read_json(&reference("tiny_m3/retrieval_lexical_weights.json"));
    let (queries, passages) = (texts("queries"), texts("passages"));
    for device in devices() {
        let model = tiny_m3(device);
        let q = model.encode_queries(&refs(&queries), ALL).unwrap();
        let p = model.encode_corpus(&refs(&passages), ALL).unwrap();
        assert_rows(
            "queries dense",
            &q.dense,
            &load(&file, "queries.dense_vecs"),
            tol::NORMALIZED,
            MIN_COSINE,
        );
        assert_rows(
            "passages dense",
            &p.dense,
            &load(&file, "passages.dense_vecs"),
            tol::NORMALIZED,
            MIN_COSINE,
        );
        check_colbert(
            "queries colbert",
            &q.colbert,
            &split_rows(
                &load(&file, "queries.colbert_vecs"),
                &load(&file, "queries.colbert_offsets"),
            ),
        );
        check_colbert(
            "passages colbert",
            &p.colbert,
            &split_rows(
                &load(&file, "passages.colbert_vecs"),
                &load(&file, "passages.colbert_offsets"),
            ),
        );
        check_lexical(
            "queries sparse",
            &q.sparse,
            lexical["queries"].as_array().unwrap(),
        );
        check_lexical(
            "passages sparse",
            &p.sparse,
            lexical["passages"].as_array().unwrap(),
        );

        let (mut dense, mut sparse, mut colbert) = (vec![], vec![], vec![]);
        for i in 0..queries.len() {
            for j in 0..passages.len() {
                dense.push(
                    q.dense[i]
                        .iter()
                        .zip(&p.dense[j])
                        .map(|(a, b)| (a * b) as f64)
                        .sum(),
                );
                sparse.push(m3::compute_lexical_matching_score(&q.sparse[i], &p.sparse[j]) as f64);
                colbert.push(m3::colbert_score(&q.colbert[i], &p.colbert[j]) as f64);
            }
        }
        assert_close(
            &format!("{device:?} scores.dense"),
            &dense,
            &load(&file, "scores.dense").data,
            tol::NORMALIZED,
        );
        assert_close(
            &format!("{device:?} scores.lexical"),
            &sparse,
            &load(&file, "scores.lexical").data,
            tol::NORMALIZED,
        );
        assert_close(
            &format!("{device:?} scores.colbert"),
            &colbert,
            &load(&file, "scores.colbert").data,
            tol::NORMALIZED,
        );
    }
}

/// compute_score's dense and sparse equal FlagEmbedding's; its ColBERT term is `colbert_score`
/// per pair (no padding rows), so it matches FlagEmbedding exactly where the padding effect
/// did not fire and `colbert_score` everywhere.
#[test]
fn compute_score_scores_colbert_without_padding() {
    let fixture = read_json(&reference("tiny_m3/compute_score.json"));
    let retrieval = load(
        &reference("tiny_m3/retrieval.safetensors"),
        "scores.colbert",
    )
    .data;
    let pairs: Vec<(String, String)> = fixture["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p[0].as_str().unwrap().to_owned(),
                p[1].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let refs: Vec<(&str, &str)> = pairs
        .iter()
        .map(|(q, p)| (q.as_str(), p.as_str()))
        .collect();
    let column = |s: &[PairScores], f: fn(&PairScores) -> f32| -> Vec<f64> {
        s.iter().map(|x| f(x) as f64).collect()
    };
    for device in devices() {
        let model = tiny_m3(device);
        let mut padding_effect = 0;
        for run in ["default_weights", "weighted"] {
            let w: Vec<f32> =
                serde_json::from_value(fixture[run]["weights_for_different_modes"].clone())
                    .unwrap();
            let want = &fixture[run]["scores"];
            let want = |k: &str| -> Vec<f64> { serde_json::from_value(want[k].clone()).unwrap() };
            let got = model.compute_score(&refs, [w[0], w[1], w[2]]).unwrap();
            let what = format!("{device:?} {run}");
            assert_close(
                &format!("{what} dense"),
                &column(&got, |s| s.dense),
                &want("dense"),
                tol::NORMALIZED,
            );
            assert_close(
                &format!("{what} sparse"),
                &column(&got, |s| s.sparse),
                &want("sparse"),
                tol::NORMALIZED,
            );
            assert_close(
                &format!("{what} sparse+dense"),
                &column(&got, |s| s.sparse_dense),
                &want("sparse+dense"),
                tol::NORMALIZED,
            );
            // Pairs are query-major over 5 queries x 7 passages, as retrieval.scores.colbert.
            assert_close(
                &format!("{what} colbert = colbert_score"),
                &column(&got, |s| s.colbert),
                &retrieval,
                tol::NORMALIZED,
            );
            let (fe_colbert, fe_all) = (want("colbert"), want("colbert+sparse+dense"));
            for (i, s) in got.iter().enumerate() {
                if (fe_colbert[i] - s.colbert as f64).abs() <= tol::NORMALIZED.atol {
                    assert_close(
                        &format!("{what} pair {i} colbert+sparse+dense"),
                        &[s.colbert_sparse_dense as f64],
                        &[fe_all[i]],
                        tol::NORMALIZED,
                    );
                } else {
                    // Padding zeros can only raise FlagEmbedding's max.
                    assert!(fe_colbert[i] > s.colbert as f64, "{what} pair {i}");
                    padding_effect += 1;
                }
            }
        }
        assert!(
            padding_effect > 0,
            "the fixture's short passage should show the padding effect"
        );
    }
}

#[test]
fn pytorch_model_bin_alone_loads_the_same_model() {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(model_dir("tiny-m3")).unwrap() {
        let entry = entry.unwrap();
        if entry.file_name() != "model.safetensors" && entry.file_type().unwrap().is_file() {
            std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
        }
    }
    let model = M3Model::load(
        dir.path().to_str().unwrap(),
        &Options {
            device: Device::Reference,
            ..Options::default()
        },
    )
    .unwrap();
    let file = reference("tiny_m3/encode_max32.safetensors");
    let got = model
        .model()
        .embed(&refs(&texts("sentences")), None, 32, ALL, &mut |_| {})
        .unwrap();
    assert_rows(
        "pytorch_model.bin dense",
        &got.dense,
        &load(&file, "dense_vecs"),
        tol::NORMALIZED,
        MIN_COSINE,
    );
}

#[test]
fn convert_id_to_token_reads_the_vocabulary() {
    let model = tiny_m3(Device::Reference);
    let got = model
        .encode(&["what is the capital of China?"], ALL)
        .unwrap();
    let tokens = model.convert_id_to_token(&got.sparse[0]);
    assert_eq!(tokens.len(), got.sparse[0].0.len());
    assert!(
        tokens.iter().all(|(t, w)| !t.is_empty() && *w > 0.0),
        "{tokens:?}"
    );
}

#[test]
fn models_without_the_heads_are_refused() {
    let err = M3Model::load(model_dir("tiny-bge").to_str().unwrap(), &Options::default())
        .err()
        .unwrap();
    assert!(err.to_string().contains("not a BGE-M3 model"), "{err}");
}
