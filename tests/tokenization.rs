//! Token ids must equal, exactly, the ids FlagEmbedding fed to the model.

mod common;

use bge::internals::Tokenizer;
use common::{model_dir, read_json, reference};

/// Checks every item of a `tokens_*.json` fixture: ids, type ids, untruncated length.
fn check(tokenizer: &Tokenizer, fixture: &str) {
    let f = read_json(&reference(fixture));
    let max_length = f["max_length"].as_u64().unwrap() as usize;
    let items = f["items"].as_array().unwrap();
    let texts: Vec<&str> = items.iter().map(|i| i["text"].as_str().unwrap()).collect();
    let got = tokenizer.encode_batch(&texts, max_length).unwrap();
    for (item, enc) in items.iter().zip(&got) {
        let ids: Vec<u32> = serde_json::from_value(item["input_ids"].clone()).unwrap();
        assert_eq!(enc.ids, ids, "{fixture}: ids of {:?}", item["text"]);
        if let Some(types) = item.get("token_type_ids") {
            let types: Vec<u32> = serde_json::from_value(types.clone()).unwrap();
            assert_eq!(
                enc.type_ids, types,
                "{fixture}: type ids of {:?}",
                item["text"]
            );
        }
        let untruncated = item["untruncated_length"].as_u64().unwrap() as usize;
        assert_eq!(
            enc.untruncated_len, untruncated,
            "{fixture}: {:?}",
            item["text"]
        );
        assert_eq!(enc.truncated(), item["truncated"].as_bool().unwrap());
    }
}

#[test]
fn tiny_bge_ids_match_flagembedding() {
    let t = Tokenizer::from_file(&model_dir("tiny-bge").join("tokenizer.json")).unwrap();
    for fixture in [
        "tiny_bge/tokens_sentences_max512.json",
        "tiny_bge/tokens_sentences_max16.json",
        "tiny_bge/tokens_queries.json",
        "tiny_bge/tokens_passages.json",
    ] {
        check(&t, fixture);
    }
}

#[test]
fn minilm_ids_match_despite_its_fixed_padding() {
    // all-MiniLM-L6-v2's tokenizer.json carries truncation 128 and Fixed(128) padding,
    // which transformers overrides per call; so must we.
    let t = Tokenizer::from_file(&common::minilm_dir().join("tokenizer.json")).unwrap();
    check(&t, "minilm/tokens_sentences_max256.json");
}

#[test]
fn llm_embedder_ids_match() {
    let t = Tokenizer::from_file(&model_dir("tiny-bge").join("tokenizer.json")).unwrap();
    let f = read_json(&reference("llm_embedder/tokens.json"));
    let table = read_json(&reference("llm_embedder/instructions.json"));
    let (queries, keys) = (common::texts("queries"), common::texts("passages"));
    for (task, ids) in f["tasks"].as_object().unwrap() {
        let ins = &table["instructions"][task];
        for (kind, texts, max_length) in [("queries", &queries, 256), ("keys", &keys, 512)] {
            let prefix = ins[if kind == "queries" { "query" } else { "key" }]
                .as_str()
                .unwrap();
            let joined: Vec<String> = texts.iter().map(|t| format!("{prefix}{t}")).collect();
            let refs: Vec<&str> = joined.iter().map(String::as_str).collect();
            let got = t.encode_batch(&refs, max_length).unwrap();
            let want: Vec<Vec<u32>> = ids[kind]
                .as_array()
                .unwrap()
                .iter()
                .map(|item| serde_json::from_value(item["input_ids"].clone()).unwrap())
                .collect();
            let got: Vec<Vec<u32>> = got.into_iter().map(|e| e.ids).collect();
            assert_eq!(got, want, "llm_embedder {task} {kind}");
        }
    }
}

#[test]
fn a_max_length_below_the_special_tokens_is_refused() {
    let t = Tokenizer::from_file(&model_dir("tiny-bge").join("tokenizer.json")).unwrap();
    let err = t.encode("hello", 1).unwrap_err().to_string();
    assert!(err.contains("max length 1 leaves no room"), "{err}");
}

#[test]
fn tiny_m3_unigram_ids_match_flagembedding() {
    let t = Tokenizer::from_file(&model_dir("tiny-m3").join("tokenizer.json")).unwrap();
    for fixture in [
        "tiny_m3/tokens_sentences_max1024.json",
        "tiny_m3/tokens_sentences_max32.json",
        "tiny_m3/tokens_queries.json",
        "tiny_m3/tokens_passages.json",
    ] {
        check(&t, fixture);
    }
}

#[test]
fn special_tokens_come_from_the_model_files() {
    let dir = model_dir("tiny-m3");
    let files = [
        dir.join("special_tokens_map.json"),
        dir.join("tokenizer_config.json"),
    ];
    let refs: Vec<&std::path::Path> = files.iter().map(|p| p.as_path()).collect();
    let t = Tokenizer::from_file(&dir.join("tokenizer.json"))
        .unwrap()
        .with_special_tokens(&refs)
        .unwrap();
    // cls <s>=0, eos </s>=2, pad <pad>=1, unk <unk>=3; <mask> is not skipped.
    let mut ids = t.sparse_skip_ids().to_vec();
    ids.sort();
    assert_eq!(ids, [0, 1, 2, 3]);
    let dir = model_dir("tiny-bge");
    let map = dir.join("special_tokens_map.json");
    let t = Tokenizer::from_file(&dir.join("tokenizer.json"))
        .unwrap()
        .with_special_tokens(&[&map])
        .unwrap();
    // BERT declares no eos: [CLS]=101, [PAD]=0, [UNK]=100.
    let mut ids = t.sparse_skip_ids().to_vec();
    ids.sort();
    assert_eq!(ids, [0, 100, 101]);
}
