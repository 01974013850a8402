//! `bge embed` as other tools see it: the JSONL contract, the query options, the hub cache,
//! and one clear line on stderr with a non-zero exit for every bad input.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::{assert_rows, load, model_dir, reference, texts, tol};
use serde_json::Value;

const MIN_COSINE: f64 = 0.99999;

fn bge(args: &[&str], stdin: impl AsRef<[u8]>, env: &[(&str, &Path)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_bge"));
    cmd.args(args)
        .env("HF_HUB_OFFLINE", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("run bge");
    // Written from a thread of its own: bge streams, so its output may fill the pipe before it
    // has read all of its input.
    let mut pipe = child.stdin.take().unwrap();
    let input = stdin.as_ref().to_vec();
    let writer = std::thread::spawn(move || match pipe.write_all(&input) {
        // A run that fails before reading its input (a bad flag) closes the pipe.
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => panic!("writing stdin: {e}"),
        _ => {}
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
}

fn jsonl(texts: &[String]) -> String {
    texts
        .iter()
        .map(|t| serde_json::to_string(t).unwrap() + "\n")
        .collect()
}

/// The `dense` vectors of a successful run.
fn dense(out: &Output) -> Vec<Vec<f32>> {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "bge failed: {stderr}");
    String::from_utf8(out.stdout.clone())
        .unwrap()
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            let obj = v.as_object().unwrap();
            assert_eq!(obj.len(), 1, "only `dense` is asked for: {l}");
            serde_json::from_value(obj["dense"].clone()).unwrap()
        })
        .collect()
}

/// The one line a failed run printed; asserts the exit code and that it is a single line.
fn error_line(out: &Output, code: i32) -> String {
    assert_eq!(
        out.status.code(),
        Some(code),
        "exit status; stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8(out.stderr.clone()).unwrap();
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "one line on stderr, got: {stderr}"
    );
    assert!(out.stdout.is_empty(), "no output on error");
    stderr
}

fn tiny_bge() -> String {
    model_dir("tiny-bge").to_str().unwrap().to_owned()
}

#[test]
fn embed_matches_flagmodel_at_512_and_16() {
    let want = reference("tiny_bge/flagmodel.safetensors");
    let input = jsonl(&texts("sentences"));
    let out = bge(&["embed", "--model", &tiny_bge(), "--quiet"], &input, &[]);
    assert_rows(
        "embed 512",
        &dense(&out),
        &load(&want, "encode_max512"),
        tol::NORMALIZED,
        MIN_COSINE,
    );
    let out = bge(
        &["embed", "--model", &tiny_bge(), "--max-length", "16"],
        &input,
        &[],
    );
    assert_rows(
        "embed 16",
        &dense(&out),
        &load(&want, "encode_max16"),
        tol::NORMALIZED,
        MIN_COSINE,
    );
    let note = String::from_utf8(out.stderr).unwrap();
    assert!(
        note.contains("9 of 18 texts were longer than 16 tokens"),
        "{note}"
    );
}

#[test]
fn instruction_flag_encodes_queries() {
    let want = load(&reference("tiny_bge/flagmodel.safetensors"), "queries");
    let input = jsonl(&texts("queries"));
    let ins = bge::INSTRUCTION_EN;
    let out = bge(
        &["embed", "--model", &tiny_bge(), "--instruction", ins],
        &input,
        &[],
    );
    assert_rows(
        "--instruction",
        &dense(&out),
        &want,
        tol::NORMALIZED,
        MIN_COSINE,
    );
}

#[test]
fn objects_with_text_fields_and_files() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    let output = dir.path().join("out.jsonl");
    let sentences = texts("sentences");
    let lines: String = sentences
        .iter()
        .enumerate()
        .map(|(i, t)| serde_json::json!({"id": i, "text": t}).to_string() + "\r\n")
        .collect();
    std::fs::write(&input, lines).unwrap();
    let out = bge(
        &[
            "embed",
            "--model",
            &tiny_bge(),
            "--input",
            input.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
        ],
        "",
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty());
    let written = Output {
        stdout: std::fs::read(&output).unwrap(),
        ..out
    };
    let want = load(
        &reference("tiny_bge/flagmodel.safetensors"),
        "encode_max512",
    );
    assert_rows(
        "--input/--output",
        &dense(&written),
        &want,
        tol::NORMALIZED,
        MIN_COSINE,
    );
}

#[test]
fn minilm_with_mean_pooling() {
    let want = load(
        &reference("minilm/embeddings.safetensors"),
        "mean_normalized",
    );
    let dir = common::minilm_dir();
    let out = bge(
        &[
            "embed",
            "--model",
            dir.to_str().unwrap(),
            "--max-length",
            "256",
        ],
        jsonl(&texts("sentences")),
        &[],
    );
    assert_rows("minilm", &dense(&out), &want, tol::NORMALIZED, MIN_COSINE);
}

#[test]
fn gpu_embed_matches_the_references_in_f32_and_f16() {
    let want = reference("tiny_bge/flagmodel.safetensors");
    let sentences = jsonl(&texts("sentences"));
    let model = tiny_bge();
    for (dtype, tol, min_cosine) in [
        ("f32", tol::NORMALIZED, MIN_COSINE),
        ("f16", tol::F16_VECTORS, 0.999),
    ] {
        let gpu = ["--device", "gpu", "--dtype", dtype];
        let out = bge(
            &[&["embed", "--model", &model][..], &gpu].concat(),
            &sentences,
            &[],
        );
        assert_rows(
            &format!("gpu {dtype} 512"),
            &dense(&out),
            &load(&want, "encode_max512"),
            tol,
            min_cosine,
        );
        let out = bge(
            &[
                &["embed", "--model", &model, "--max-length", "16"][..],
                &gpu,
            ]
            .concat(),
            &sentences,
            &[],
        );
        assert_rows(
            &format!("gpu {dtype} 16"),
            &dense(&out),
            &load(&want, "encode_max16"),
            tol,
            min_cosine,
        );
        let ins = bge::INSTRUCTION_EN;
        let args = [
            &["embed", "--model", &model, "--instruction", ins][..],
            &gpu,
        ]
        .concat();
        let out = bge(&args, jsonl(&texts("queries")), &[]);
        assert_rows(
            &format!("gpu {dtype} queries"),
            &dense(&out),
            &load(&want, "queries"),
            tol,
            min_cosine,
        );
        let minilm = common::minilm_dir();
        let args = [
            &[
                "embed",
                "--model",
                minilm.to_str().unwrap(),
                "--max-length",
                "256",
            ][..],
            &gpu,
        ]
        .concat();
        let out = bge(&args, &sentences, &[]);
        let want = load(
            &reference("minilm/embeddings.safetensors"),
            "mean_normalized",
        );
        assert_rows(
            &format!("gpu {dtype} minilm"),
            &dense(&out),
            &want,
            tol,
            min_cosine,
        );
    }
}

#[test]
fn devices_lists_the_adapters() {
    let out = bge(&["devices"], "", &[]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("0: "), "{text}");
    assert!(
        text.contains("f16: ") && text.contains("limits: storage binding"),
        "{text}"
    );
    assert!(text.contains("device gpu uses adapter"), "{text}");
    let out = bge(
        &["embed", "--model", &tiny_bge(), "--device", "gpu:99"],
        "\"x\"\n",
        &[],
    );
    assert!(error_line(&out, 1).contains("there is no adapter 99"));
}

#[test]
fn empty_input_gives_empty_output() {
    let out = bge(&["embed", "--model", &tiny_bge()], "", &[]);
    assert!(out.status.success());
    assert!(out.stdout.is_empty());
}

/// A Hugging Face cache holding tiny-bge under the name `BAAI/bge-small-en-v1.5`, laid out
/// as Python's huggingface_hub writes it (blobs, refs/main, snapshots/<commit>).
fn fake_hub_cache() -> tempfile::TempDir {
    let home = tempfile::tempdir().unwrap();
    let repo = home.path().join("hub/models--BAAI--bge-small-en-v1.5");
    let commit = "0123456789abcdef0123456789abcdef01234567";
    let snapshot = repo.join("snapshots").join(commit);
    std::fs::create_dir_all(snapshot.join("1_Pooling")).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::create_dir_all(repo.join("blobs")).unwrap();
    // Python writes the commit without a trailing newline; tolerate one anyway.
    std::fs::write(repo.join("refs/main"), format!("{commit}\n")).unwrap();
    for file in [
        "config.json",
        "tokenizer.json",
        "model.safetensors",
        "1_Pooling/config.json",
    ] {
        let blob = repo.join("blobs").join(file.replace('/', "_"));
        std::fs::copy(model_dir("tiny-bge").join(file), &blob).unwrap();
        std::os::unix::fs::symlink(&blob, snapshot.join(file)).unwrap();
    }
    home
}

#[test]
fn hub_id_resolves_through_the_cache_and_picks_the_english_instruction() {
    let home = fake_hub_cache();
    let want = load(&reference("tiny_bge/flagmodel.safetensors"), "queries");
    let env = [("HF_HOME", home.path())];
    let out = bge(
        &["embed", "--model", "BAAI/bge-small-en-v1.5", "--query"],
        jsonl(&texts("queries")),
        &env,
    );
    assert_rows(
        "hub --query",
        &dense(&out),
        &want,
        tol::NORMALIZED,
        MIN_COSINE,
    );
}

#[test]
fn a_model_missing_from_the_cache_says_how_to_get_it() {
    let home = tempfile::tempdir().unwrap();
    let out = bge(
        &["embed", "--model", "BAAI/bge-base-en-v1.5"],
        "\"x\"\n",
        &[("HF_HOME", home.path())],
    );
    let line = error_line(&out, 1);
    assert!(
        line.contains("config.json is not in the Hugging Face cache"),
        "{line}"
    );
    assert!(
        line.contains("huggingface-cli download BAAI/bge-base-en-v1.5"),
        "{line}"
    );
}

/// The one line a run that failed on input line `n` printed, after asserting that the output
/// of the `n - 1` lines before it reached stdout.
fn error_on_line(out: &Output, n: usize) -> String {
    assert_eq!(out.status.code(), Some(1), "exit status");
    let stderr = String::from_utf8(out.stderr.clone()).unwrap();
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    let stdout = String::from_utf8(out.stdout.clone()).unwrap();
    assert_eq!(
        stdout.lines().count(),
        n - 1,
        "the lines before {n}: {stdout}"
    );
    for line in stdout.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        assert!(v["dense"].is_array(), "{line}");
    }
    stderr
}

#[test]
fn malformed_input_lines_are_reported_with_their_number() {
    for (input, n, want) in [
        (
            "\"ok\"\n{\"txt\": \"a\"}\n",
            2,
            "input line 2: the object has no string field \"text\"",
        ),
        (
            "\"ok\"\n\"ok\"\nnot json\n",
            3,
            "input line 3: not valid JSON",
        ),
        (
            "42\n",
            1,
            "input line 1: expected a JSON string or an object",
        ),
        ("\"ok\"\n\n", 2, "input line 2: not valid JSON"),
    ] {
        let out = bge(&["embed", "--model", &tiny_bge()], input, &[]);
        let line = error_on_line(&out, n);
        assert!(line.contains(want), "{input:?}: {line}");
    }
    let mut bytes = b"\"ok\"\n\"".to_vec();
    bytes.extend([0xff, 0xfe, b'"', b'\n']);
    let out = bge(&["embed", "--model", &tiny_bge()], bytes, &[]);
    let line = error_on_line(&out, 2);
    assert!(line.contains("input line 2: not valid UTF-8"), "{line}");
    // Lines before N already answered in earlier batches, and the batch holding line N.
    let input = "\"a\"\n\"b\"\n\"c\"\n\"d\"\n\"e\"\n[\"f\"]\n\"g\"\n";
    let args = ["embed", "--model", &tiny_bge(), "--batch-size", "2"];
    let line = error_on_line(&bge(&args, input, &[]), 6);
    assert!(
        line.contains("input line 6: expected a JSON string"),
        "{line}"
    );
}

#[test]
fn a_failed_run_leaves_no_output_file() {
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("out.jsonl");
    let out = bge(
        &[
            "embed",
            "--model",
            &tiny_bge(),
            "--output",
            output.to_str().unwrap(),
        ],
        "\"fine\"\n[1]\n",
        &[],
    );
    error_line(&out, 1);
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "no output, no .partial"
    );
}

#[test]
fn bad_flags_and_values_are_usage_errors() {
    let out = bge(&["embed", "--model", &tiny_bge(), "--bogus"], "", &[]);
    assert!(error_line(&out, 2).contains("unexpected argument '--bogus'"));
    let out = bge(
        &["embed", "--model", &tiny_bge(), "--device", "tpu"],
        "",
        &[],
    );
    assert!(error_line(&out, 2).contains("unknown device `tpu`"));
    let out = bge(&["embed"], "", &[]);
    assert!(error_line(&out, 2).contains("--model"));
    let out = bge(
        &[
            "embed",
            "--model",
            &tiny_bge(),
            "--query",
            "--instruction",
            "x",
        ],
        "",
        &[],
    );
    assert!(error_line(&out, 2).contains("cannot be used with"));
}

#[test]
fn out_of_range_lengths_and_sizes_are_refused() {
    let out = bge(
        &["embed", "--model", &tiny_bge(), "--max-length", "513"],
        "\"x\"\n",
        &[],
    );
    assert!(error_line(&out, 1).contains("max length 513 is outside 2..=512"));
    let out = bge(
        &["embed", "--model", &tiny_bge(), "--max-length", "1"],
        "\"x\"\n",
        &[],
    );
    assert!(error_line(&out, 1).contains("max length 1 is outside"));
    let out = bge(
        &["embed", "--model", &tiny_bge(), "--batch-size", "0"],
        "\"x\"\n",
        &[],
    );
    assert!(error_line(&out, 1).contains("batch size must be at least 1"));
    let out = bge(
        &[
            "embed",
            "--model",
            &tiny_bge(),
            "--dtype",
            "f16",
            "--device",
            "cpu",
        ],
        "\"x\"\n",
        &[],
    );
    assert!(error_line(&out, 1).contains("dtype f16 needs a GPU device"));
    let gpu_bf16 = ["embed", "--model", &tiny_bge(), "--dtype", "bf16"];
    let out = bge(
        &[&gpu_bf16[..], &["--device", "gpu"]].concat(),
        "\"x\"\n",
        &[],
    );
    assert!(error_line(&out, 1).contains("dtype bf16 is for the CPU backend"));
    let out = bge(
        &[&gpu_bf16[..], &["--device", "reference"]].concat(),
        "\"x\"\n",
        &[],
    );
    assert!(error_line(&out, 1).contains("computes in f32 only"));
}

/// A copy of tiny-bge whose `file` is replaced by `edit(original bytes)`.
fn broken_model(file: &str, edit: impl FnOnce(Vec<u8>) -> Vec<u8>) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for f in ["config.json", "tokenizer.json", "model.safetensors"] {
        std::fs::copy(model_dir("tiny-bge").join(f), dir.path().join(f)).unwrap();
    }
    let path = dir.path().join(file);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, edit(bytes)).unwrap();
    dir
}

fn config_with(key: &str, value: Value) -> impl FnOnce(Vec<u8>) -> Vec<u8> {
    let key = key.to_owned();
    move |bytes| {
        let mut v: Value = serde_json::from_slice(&bytes).unwrap();
        v[key] = value;
        serde_json::to_vec(&v).unwrap()
    }
}

#[test]
fn broken_model_files_are_reported() {
    let cases: Vec<(tempfile::TempDir, &str)> = vec![
        (
            broken_model("model.safetensors", |b| b[..b.len() / 2].to_vec()),
            "corrupt weight file",
        ),
        (
            broken_model("model.safetensors", |_| b"garbage".to_vec()),
            "corrupt weight file",
        ),
        (
            broken_model("config.json", |_| b"{ not json".to_vec()),
            "is not valid JSON",
        ),
        (
            broken_model("config.json", config_with("model_type", "gpt2".into())),
            "unsupported architecture: model_type `gpt2`",
        ),
        (
            broken_model("config.json", config_with("hidden_act", "gelu_new".into())),
            "unsupported hidden_act `gelu_new`",
        ),
        (
            broken_model("config.json", config_with("hidden_size", 48.into())),
            "has shape [30522, 32] but the config implies [30522, 48]",
        ),
        (
            broken_model("config.json", config_with("num_hidden_layers", 3.into())),
            "tensor `encoder.layer.2.attention.self.query.weight` is missing",
        ),
        (
            broken_model("config.json", config_with("vocab_size", 1000.into())),
            "has shape [30522, 32] but the config implies [1000, 32]",
        ),
        (
            broken_model("tokenizer.json", |_| b"{}".to_vec()),
            "tokenizer:",
        ),
    ];
    for (dir, want) in cases {
        let out = bge(
            &["embed", "--model", dir.path().to_str().unwrap()],
            "\"x\"\n",
            &[],
        );
        let line = error_line(&out, 1);
        assert!(line.contains(want), "want {want:?} in: {line}");
    }
    let empty = tempfile::tempdir().unwrap();
    let out = bge(
        &["embed", "--model", empty.path().to_str().unwrap()],
        "\"x\"\n",
        &[],
    );
    assert!(error_line(&out, 1).contains("config.json is missing"));
    let out = bge(&["embed", "--model", "no/such/dir"], "\"x\"\n", &[]);
    assert!(error_line(&out, 1).contains("neither a directory nor a Hugging Face id"));
}

#[test]
fn bench_prints_one_json_line_with_the_peer_fields() {
    let out = bge(
        &[
            "bench",
            "--model",
            &tiny_bge(),
            "--batch",
            "3",
            "--seq",
            "40",
            "--ragged",
            "--iters",
            "2",
            "--warmup",
            "0",
        ],
        "",
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    for field in [
        "system",
        "device",
        "adapter",
        "shape",
        "batch",
        "seq",
        "dtype",
        "threads",
        "median_s",
        "tokens_per_s",
        "gflops",
    ] {
        assert!(v.get(field).is_some(), "missing {field} in {v}");
    }
    assert_eq!(v["system"], "bge");
    assert_eq!(v["batch"], 3);
    assert!(v["tokens_per_s"].as_f64().unwrap() > 0.0);
}

#[test]
fn bench_refuses_zero_layers_batches_and_iterations() {
    let shape = ["bench", "--shape", "bge-small", "--seq", "8"];
    for zero in [
        ["--batch", "1", "--layers", "0"],
        ["--batch", "0", "--iters", "1"],
        ["--batch", "1", "--iters", "0"],
    ] {
        let out = bge(&[&shape[..], &zero].concat(), "", &[]);
        assert!(
            error_line(&out, 1).contains("must be at least 1"),
            "{zero:?}"
        );
    }
}

fn tiny_m3() -> String {
    model_dir("tiny-m3").to_str().unwrap().to_owned()
}

/// Each output line as a JSON object.
fn objects(out: &Output) -> Vec<serde_json::Map<String, Value>> {
    assert!(
        out.status.success(),
        "bge failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone())
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l)
                .unwrap()
                .as_object()
                .unwrap()
                .clone()
        })
        .collect()
}

#[test]
fn embed_gives_exactly_the_m3_outputs_asked_for() {
    let input = jsonl(&texts("sentences"));
    let file = reference("tiny_m3/encode_max32.safetensors");
    let lexical = common::read_json(&reference("tiny_m3/encode_max32_lexical_weights.json"));
    for device in ["cpu", "gpu"] {
        let base = [
            "embed",
            "--model",
            &tiny_m3(),
            "--max-length",
            "32",
            "--device",
            device,
        ];
        let all = objects(&bge(
            &[&base[..], &["--dense", "--sparse", "--colbert"]].concat(),
            &input,
            &[],
        ));
        let offsets = load(&file, "colbert_offsets").data;
        let colbert = load(&file, "colbert_vecs");
        for (i, line) in all.iter().enumerate() {
            let keys: Vec<&str> = line.keys().map(String::as_str).collect();
            assert_eq!(keys, ["colbert", "dense", "sparse"], "line {i}");
            let rows = line["colbert"].as_array().unwrap();
            assert_eq!(
                rows.len(),
                (offsets[i + 1] - offsets[i]) as usize,
                "{device} line {i}: tokens - 1 rows"
            );
            let first: Vec<f64> = serde_json::from_value(rows[0].clone()).unwrap();
            common::assert_close(
                "colbert row",
                &first,
                colbert.row(offsets[i] as usize),
                tol::NORMALIZED,
            );
            let want = lexical["lexical_weights"][i].as_object().unwrap();
            let got = line["sparse"].as_object().unwrap();
            for (id, w) in got {
                let expected = want.get(id).and_then(Value::as_f64).unwrap_or(0.0);
                assert!(
                    (w.as_f64().unwrap() - expected).abs() <= tol::LEXICAL.atol,
                    "{device} line {i} id {id}"
                );
            }
        }
        let dense: Vec<Vec<f32>> = all
            .iter()
            .map(|l| serde_json::from_value(l["dense"].clone()).unwrap())
            .collect();
        assert_rows(
            &format!("{device} m3 dense"),
            &dense,
            &load(&file, "dense_vecs"),
            tol::NORMALIZED,
            MIN_COSINE,
        );

        let sparse_only = objects(&bge(&[&base[..], &["--sparse"]].concat(), &input, &[]));
        assert!(
            sparse_only.iter().all(|l| l.keys().eq(["sparse"].iter())),
            "--sparse alone"
        );
        let default = objects(&bge(&base, &input, &[]));
        assert!(
            default.iter().all(|l| l.keys().eq(["dense"].iter())),
            "dense by default"
        );
    }
}

#[test]
fn task_applies_the_llm_embedder_instructions() {
    let file = reference("llm_embedder/embeddings.safetensors");
    let model = tiny_bge();
    for (flags, texts_key, tensor) in [
        (
            &["--task", "tool", "--query"][..],
            "queries",
            "tool.queries",
        ),
        (&["--task", "chat"][..], "passages", "chat.keys"),
    ] {
        let args = [&["embed", "--model", &model][..], flags].concat();
        let out = bge(&args, jsonl(&texts(texts_key)), &[]);
        assert_rows(
            tensor,
            &dense(&out),
            &load(&file, tensor),
            tol::NORMALIZED,
            MIN_COSINE,
        );
    }
}

#[test]
fn score_prints_the_five_scores_per_pair() {
    let fixture = common::read_json(&reference("tiny_m3/compute_score.json"));
    let pairs = fixture["pairs"].as_array().unwrap();
    let input: String = pairs
        .iter()
        .map(|p| serde_json::json!({"query": p[0], "passage": p[1]}).to_string() + "\n")
        .collect();
    let want = &fixture["weighted"]["scores"];
    let out = bge(
        &["score", "--model", &tiny_m3(), "--weights", "0.4,0.2,0.4"],
        input,
        &[],
    );
    let lines = objects(&out);
    assert_eq!(lines.len(), pairs.len());
    for (i, line) in lines.iter().enumerate() {
        let keys: Vec<&str> = line.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "colbert",
                "colbert+sparse+dense",
                "dense",
                "sparse",
                "sparse+dense"
            ]
        );
        for k in ["dense", "sparse", "sparse+dense"] {
            let (g, w) = (line[k].as_f64().unwrap(), want[k][i].as_f64().unwrap());
            assert!(
                (g - w).abs() <= tol::NORMALIZED.atol,
                "pair {i} {k}: {g} vs {w}"
            );
        }
    }
}

#[test]
fn rerank_prints_one_score_per_pair() {
    let fixture = common::read_json(&reference("tiny_reranker/scores.json"));
    let input: String = fixture["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| serde_json::json!({"query": p[0], "passage": p[1]}).to_string() + "\n")
        .collect();
    let model = model_dir("tiny-reranker").to_str().unwrap().to_owned();
    for run in fixture["runs"].as_array().unwrap() {
        let max = run["max_length"].to_string();
        for (flag, key, tol) in [
            (None, "prepare_for_model_scores", tol::LOGITS),
            (
                Some("--normalize"),
                "prepare_for_model_scores_normalized",
                tol::SIGMOID,
            ),
        ] {
            let mut args = vec!["rerank", "--model", &model, "--max-length", &max];
            args.extend(flag);
            let lines = objects(&bge(&args, &input, &[]));
            let got: Vec<f64> = lines
                .iter()
                .map(|l| {
                    assert!(l.keys().eq(["score"].iter()));
                    l["score"].as_f64().unwrap()
                })
                .collect();
            let want: Vec<f64> = serde_json::from_value(run[key].clone()).unwrap();
            common::assert_close(&format!("rerank {max} {key}"), &got, &want, tol);
        }
    }
}

#[test]
fn m3_and_reranker_errors_are_one_line() {
    let out = bge(
        &["embed", "--model", &tiny_bge(), "--sparse"],
        "\"x\"\n",
        &[],
    );
    assert!(error_line(&out, 1).contains("has no sparse head (sparse_linear.pt)"));
    let out = bge(
        &["embed", "--model", &tiny_bge(), "--colbert"],
        "\"x\"\n",
        &[],
    );
    assert!(error_line(&out, 1).contains("has no ColBERT head (colbert_linear.pt)"));
    let out = bge(
        &["score", "--model", &tiny_bge()],
        "{\"query\": \"q\", \"passage\": \"p\"}\n",
        &[],
    );
    assert!(error_line(&out, 1).contains("is not a BGE-M3 model"));
    let out = bge(
        &["rerank", "--model", &tiny_bge()],
        "{\"query\": \"q\", \"passage\": \"p\"}\n",
        &[],
    );
    assert!(error_line(&out, 1).contains("is not a reranker"));
    let out = bge(
        &["score", "--model", &tiny_m3()],
        "{\"query\": \"q\"}\n",
        &[],
    );
    assert!(
        error_line(&out, 1).contains("input line 1: the object has no string field \"passage\"")
    );
    let reranker = model_dir("tiny-reranker");
    let out = bge(
        &["rerank", "--model", reranker.to_str().unwrap()],
        "\"just text\"\n",
        &[],
    );
    assert!(
        error_line(&out, 1)
            .contains("input line 1: expected an object with \"query\" and \"passage\"")
    );
    let out = bge(
        &["score", "--model", &tiny_m3(), "--weights", "1,2"],
        "",
        &[],
    );
    assert!(error_line(&out, 2).contains("expected three non-negative numbers"));
    let out = bge(
        &[
            "embed",
            "--model",
            &tiny_bge(),
            "--task",
            "qa",
            "--instruction",
            "x",
        ],
        "",
        &[],
    );
    assert!(error_line(&out, 2).contains("cannot be used with"));
}

/// tiny-m3 without model.safetensors, its pytorch_model.bin replaced by `bin`.
fn m3_with_bin(bin: &[u8]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(model_dir("tiny-m3")).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_file() && entry.file_name() != "model.safetensors" {
            std::fs::copy(entry.path(), dir.path().join(entry.file_name())).unwrap();
        }
    }
    std::fs::write(dir.path().join("pytorch_model.bin"), bin).unwrap();
    dir
}

#[test]
fn broken_and_hostile_checkpoints_are_refused() {
    use common::torch_file::{MARK, Pickle, REDUCE, STOP, TUPLE, checkpoint};
    let bin = std::fs::read(model_dir("tiny-m3").join("pytorch_model.bin")).unwrap();
    // os.system("echo pwned") as a pickle would run it on load.
    let pickle = Pickle::new()
        .global("os", "system")
        .op(MARK)
        .str("echo pwned")
        .op(TUPLE)
        .op(REDUCE)
        .op(STOP);
    let hostile = checkpoint(&pickle.0, &[], false);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (bin[..bin.len() / 2].to_vec(), "corrupt weight file"),
        (
            hostile,
            "refusing to load: the pickle references the global os.system",
        ),
    ];
    for (bytes, want) in cases {
        let dir = m3_with_bin(&bytes);
        let out = bge(
            &["embed", "--model", dir.path().to_str().unwrap()],
            "\"x\"\n",
            &[],
        );
        let line = error_line(&out, 1);
        assert!(line.contains(want), "want {want:?} in: {line}");
    }
}

/// `bge bench --device gpu` reports the dispatches of one forward pass, the kernel version of
/// each shape class and the GPU's own time; `BGE_KERNELS` forces versions.
#[test]
fn gpu_bench_reports_dispatches_kernels_and_gpu_time() {
    let cache = tempfile::tempdir().unwrap();
    let args = [
        "bench",
        "--model",
        &tiny_bge(),
        "--device",
        "gpu",
        "--batch",
        "2",
        "--seq",
        "16",
        "--iters",
        "2",
        "--warmup",
        "0",
    ];
    let run = |forced: Option<&str>| {
        let mut env = vec![("BGE_CACHE_DIR", cache.path())];
        if let Some(f) = forced {
            env.push(("BGE_KERNELS", Path::new(f)));
        }
        let out = bge(&args, "", &env);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let tuned = run(None);
    // Embeddings, LayerNorm, 2 layers of 7 operations, the first rows, pooling's normalisation.
    assert!(
        tuned["dispatches_per_pass"].as_u64().unwrap() >= 16,
        "{tuned}"
    );
    assert!(
        tuned["gpu_median_s"].as_f64().is_some(),
        "lavapipe has timestamps: {tuned}"
    );
    let kernels = tuned["kernels"].as_object().unwrap();
    assert!(
        kernels.keys().any(|k| k.starts_with("matmul n=")),
        "{tuned}"
    );
    assert!(
        kernels.keys().any(|k| k.starts_with("attention heads=")),
        "{tuned}"
    );
    assert!(
        kernels
            .values()
            .all(|v| v.as_str().unwrap().ends_with("(tuned)")),
        "{tuned}"
    );

    let forced = run(Some("matmul:3,attention:2"));
    assert_eq!(forced["dispatches_per_pass"], tuned["dispatches_per_pass"]);
    for (class, version) in forced["kernels"].as_object().unwrap() {
        let want = if class.starts_with("matmul") {
            "3 (forced)"
        } else {
            "2 (forced)"
        };
        assert_eq!(version, want, "{class}");
    }
    // A second tuned run reads the cache.
    let again = run(None);
    let cached = again["kernels"].as_object().unwrap();
    assert!(
        cached
            .values()
            .all(|v| v.as_str().unwrap().ends_with("(cached)")),
        "{again}"
    );
}

#[test]
fn forced_kernels_that_cannot_run_or_do_not_exist_are_refused() {
    let input = "\"a text\"\n";
    let embed = ["embed", "--model", &tiny_bge(), "--device", "gpu"];
    // Lavapipe has no cooperative matrices (and version 5 needs f16 storage anyway).
    let out = bge(&embed, input, &[("BGE_KERNELS", Path::new("matmul:5"))]);
    let line = error_line(&out, 1);
    assert!(line.contains("matmul version 5 was forced"), "{line}");
    for bad in ["matmul:9", "conv:1", "matmul"] {
        let out = bge(&embed, input, &[("BGE_KERNELS", Path::new(bad))]);
        let line = error_line(&out, 1);
        assert!(
            line.contains("BGE_KERNELS") && line.contains("matmul:1..5"),
            "{bad}: {line}"
        );
    }
}

#[test]
fn devices_tune_prints_the_table_and_caches_it() {
    let cache = tempfile::tempdir().unwrap();
    let out = bge(
        &[
            "devices",
            "--tune",
            "--shape",
            "bge-small",
            "--dtype",
            "f32",
        ],
        "",
        &[("BGE_CACHE_DIR", cache.path())],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for class in [
        "matmul n=1152 k=384",
        "matmul n=384 k=1536",
        "attention heads=12 d=32",
    ] {
        assert!(
            text.contains(&format!("{class}: version ")),
            "{class}: {text}"
        );
    }
    assert!(
        text.contains("matmul 2: ") && text.contains(" GFLOP/s"),
        "{text}"
    );
    assert!(
        text.contains("matmul 5: unsupported: needs f16 storage"),
        "{text}"
    );
    assert!(text.contains("choices cached in"), "{text}");
    assert!(cache.path().join("kernels.json").is_file());
}

#[test]
fn bench_op_times_every_version_of_a_ladder() {
    let out = bge(
        &[
            "bench",
            "--op",
            "attention",
            "--shape",
            "bge-small",
            "--batch",
            "1",
            "--seq",
            "64",
            "--device",
            "gpu",
            "--iters",
            "1",
        ],
        "",
        &[],
    );
    let lines = objects(&out);
    let versions: Vec<u64> = lines
        .iter()
        .map(|l| l["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, [1, 2, 3]);
    for l in &lines[..2] {
        assert_eq!(l["agrees_with_version_1"], true, "{l:?}");
        assert!(l["gflops"].as_f64().unwrap() > 0.0 && l["gbps"].as_f64().unwrap() > 0.0);
    }
    assert!(
        lines[2]["skipped"]
            .as_str()
            .unwrap()
            .contains("f16 storage"),
        "{:?}",
        lines[2]
    );

    let out = bge(
        &[
            "bench",
            "--op",
            "matmul",
            "--shape",
            "bge-small",
            "--batch",
            "1",
            "--seq",
            "8",
        ],
        "",
        &[],
    );
    assert!(error_line(&out, 1).contains("use --device gpu"));
}

#[test]
fn verbose_prints_the_kernel_version_of_each_class() {
    let cache = tempfile::tempdir().unwrap();
    let env = [
        ("BGE_CACHE_DIR", cache.path()),
        ("BGE_KERNELS", Path::new("matmul:3")),
    ];
    let args = ["embed", "--model", &tiny_bge(), "--device", "gpu", "-v"];
    let out = bge(&args, "\"a text\"\n", &env);
    assert!(out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("f32 matmul n=96 k=32: version 3 (forced)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("f32 attention heads=4 d=8: version "),
        "{stderr}"
    );
    assert!(stderr.contains("(tuned)"), "{stderr}");
}
