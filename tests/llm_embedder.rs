//! LLM-Embedder's task instructions (on tiny-bge, as the fixtures were made) against
//! FlagEmbedding's LLMEmbedder: the instruction table, and queries, keys and scores per task.

mod common;

use bge::llm_embedder;
use bge::{LlmEmbedder, Options, Task};
use common::{
    assert_close, assert_rows, devices, load, model_dir, read_json, reference, texts, tol,
};

#[test]
fn the_instruction_table_is_flagembeddings() {
    let table = read_json(&reference("llm_embedder/instructions.json"));
    assert_eq!(table["query_max_length"], llm_embedder::QUERY_MAX_LENGTH);
    assert_eq!(table["key_max_length"], llm_embedder::KEY_MAX_LENGTH);
    let tasks = table["instructions"].as_object().unwrap();
    assert_eq!(tasks.len(), Task::ALL.len());
    for task in Task::ALL {
        let name = task.name();
        assert_eq!(name.parse::<Task>().unwrap(), task);
        let (query, key) = task.instructions();
        assert_eq!(tasks[name]["query"], query, "{name}");
        assert_eq!(tasks[name]["key"], key, "{name}");
    }
}

#[test]
fn queries_keys_and_scores_per_task() {
    let file = reference("llm_embedder/embeddings.safetensors");
    let (queries, keys) = (texts("queries"), texts("passages"));
    let q: Vec<&str> = queries.iter().map(String::as_str).collect();
    let k: Vec<&str> = keys.iter().map(String::as_str).collect();
    for device in devices() {
        let options = Options {
            device,
            ..Options::default()
        };
        let model = LlmEmbedder::load(model_dir("tiny-bge").to_str().unwrap(), &options).unwrap();
        for task in Task::ALL {
            let name = task.name();
            let got_q = model.encode_queries(task, &q).unwrap();
            let got_k = model.encode_keys(task, &k).unwrap();
            assert_rows(
                &format!("{name} queries"),
                &got_q,
                &load(&file, &format!("{name}.queries")),
                tol::NORMALIZED,
                0.99999,
            );
            assert_rows(
                &format!("{name} keys"),
                &got_k,
                &load(&file, &format!("{name}.keys")),
                tol::NORMALIZED,
                0.99999,
            );
            let scores: Vec<f64> = got_q
                .iter()
                .flat_map(|a| {
                    got_k
                        .iter()
                        .map(move |b| a.iter().zip(b).map(|(x, y)| (x * y) as f64).sum())
                })
                .collect();
            assert_close(
                &format!("{name} scores"),
                &scores,
                &load(&file, &format!("{name}.scores")).data,
                tol::NORMALIZED,
            );
        }
    }
}
