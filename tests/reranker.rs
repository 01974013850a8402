//! bge-reranker (tiny-reranker) against FlagReranker: the pair ids built at the id level as
//! transformers 4's `prepare_for_model` does, and the raw and sigmoid scores at max length 512
//! and 24, on every backend.

mod common;

use bge::internals::Tokenizer;
use bge::{Device, Reranker};
use common::{assert_close, devices, model_dir, read_json, reference, tol};
use serde_json::Value;

fn fixture() -> (Value, Vec<(String, String)>) {
    let f = read_json(&reference("tiny_reranker/scores.json"));
    let pairs = f["pairs"]
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
    (f, pairs)
}

fn reranker(device: Device, max_length: usize) -> Reranker {
    let mut r = Reranker::load(
        model_dir("tiny-reranker").to_str().unwrap(),
        device,
        bge::Dtype::F32,
    )
    .unwrap();
    r.set_max_length(max_length).unwrap();
    r
}

#[test]
fn pair_ids_follow_prepare_for_model() {
    let (f, pairs) = fixture();
    let t = Tokenizer::from_file(&model_dir("tiny-reranker").join("tokenizer.json")).unwrap();
    for run in f["runs"].as_array().unwrap() {
        let max_length = run["max_length"].as_u64().unwrap() as usize;
        let query_max_length = run["query_max_length"].as_u64().unwrap() as usize;
        assert_eq!(query_max_length, max_length * 3 / 4);
        let mut differ_from_v5 = 0;
        for (input, (q, p)) in run["inputs"].as_array().unwrap().iter().zip(&pairs) {
            let want: Vec<u32> =
                serde_json::from_value(input["prepare_for_model_input_ids"].clone()).unwrap();
            let got = t.encode_pair(q, p, query_max_length, max_length).unwrap();
            assert_eq!(got.ids, want, "max {max_length}: {q:?} / {p:?}");
            let v5: Vec<u32> = serde_json::from_value(input["input_ids"].clone()).unwrap();
            differ_from_v5 += (v5 != want) as usize;
        }
        // The fixture's transformers-5 round trip changes 8 pairs (README): we are on ids.
        assert_eq!(differ_from_v5, 8, "max {max_length}");
    }
}

#[test]
fn scores_match_flagreranker_raw_and_normalized() {
    let (f, pairs) = fixture();
    let refs: Vec<(&str, &str)> = pairs
        .iter()
        .map(|(q, p)| (q.as_str(), p.as_str()))
        .collect();
    for device in devices() {
        for run in f["runs"].as_array().unwrap() {
            let max_length = run["max_length"].as_u64().unwrap() as usize;
            let r = reranker(device, max_length);
            let want = |k: &str| -> Vec<f64> { serde_json::from_value(run[k].clone()).unwrap() };
            let raw: Vec<f64> = r
                .compute_score(&refs, false)
                .unwrap()
                .iter()
                .map(|&s| s as f64)
                .collect();
            let what = format!("{device:?} max{max_length}");
            assert_close(
                &format!("{what} logits"),
                &raw,
                &want("prepare_for_model_scores"),
                tol::LOGITS,
            );
            let norm: Vec<f64> = r
                .compute_score(&refs, true)
                .unwrap()
                .iter()
                .map(|&s| s as f64)
                .collect();
            assert_close(
                &format!("{what} sigmoid"),
                &norm,
                &want("prepare_for_model_scores_normalized"),
                tol::SIGMOID,
            );
        }
    }
}

#[test]
fn embedders_are_not_rerankers() {
    let err = Reranker::load(
        model_dir("tiny-bge").to_str().unwrap(),
        Device::Reference,
        bge::Dtype::F32,
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("is not a reranker"), "{err}");
}

#[test]
fn lengths_and_batch_sizes_out_of_range_are_refused() {
    let mut r = reranker(Device::Reference, 512);
    for bad in [0, 1, 515] {
        let err = r.set_max_length(bad).unwrap_err();
        assert!(err.to_string().contains("is outside 2..="), "{err}");
    }
    assert_eq!(r.max_length(), 512, "a refused length changes nothing");
    let err = r.set_batch_size(0).unwrap_err();
    assert!(err.to_string().contains("at least 1"), "{err}");
}

/// A classifier config with no labels is refused when the model loads (it used to pass and
/// panic in the first score).
#[test]
fn a_classifier_without_labels_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let src = model_dir("tiny-reranker");
    for entry in std::fs::read_dir(&src).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
    }
    let config = dir.path().join("config.json");
    let mut v: Value = serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
    v["num_labels"] = 0.into();
    v["id2label"] = serde_json::json!({});
    std::fs::write(&config, serde_json::to_vec(&v).unwrap()).unwrap();
    let err = Reranker::load(dir.path().to_str().unwrap(), Device::Cpu, bge::Dtype::F32)
        .err()
        .expect("refused");
    assert!(
        err.to_string().contains("needs at least one label"),
        "{err}"
    );
}
