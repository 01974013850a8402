//! `bge serve` as its clients see it: the real binary on an ephemeral port of 127.0.0.1,
//! called over HTTP. Every route on tiny-bge, tiny-m3, tiny-reranker and all-MiniLM-L6-v2,
//! with answers that are the CLI's bit for bit; every limit and error status with its JSON;
//! 64 concurrent clients, overload, SIGTERM under load, a client that disconnects; and the
//! official `openai` and `huggingface_hub` clients (tests/clients/official_clients.py).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use base64::Engine;
use common::{assert_close, assert_rows, load, model_dir, read_json, reference, texts, tol};
use serde_json::{Value, json};

/// A running `bge serve`, killed when dropped.
struct Server {
    child: Child,
    url: String,
    log: std::sync::Mutex<mpsc::Receiver<String>>,
}

impl Server {
    /// Starts `bge serve --model <model> --device cpu --port 0 <args>` and waits for it to
    /// listen.
    fn start(model: &Path, args: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_bge"))
            .args(["serve", "--model", model.to_str().unwrap()])
            .args(["--device", "cpu", "--host", "127.0.0.1", "--port", "0"])
            .args(args)
            .env("HF_HUB_OFFLINE", "1")
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start bge serve");
        let stderr = BufReader::new(child.stderr.take().unwrap());
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in stderr.lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(120);
        let mut seen = String::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match rx.recv_timeout(left) {
                Ok(line) => line,
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("bge serve did not start:\n{seen}");
                }
            };
            seen.push_str(&line);
            seen.push('\n');
            if let Some(at) = line.find("listening on http://") {
                let url = line[at + "listening on ".len()..].trim().to_owned();
                return Server {
                    child,
                    url,
                    log: std::sync::Mutex::new(rx),
                };
            }
        }
    }

    fn agent() -> ureq::Agent {
        ureq::AgentBuilder::new()
            .timeout(Duration::from_secs(120))
            .build()
    }

    /// POSTs `body` (raw bytes) and returns the status, the headers asked for, and the body.
    fn post_raw(&self, path: &str, body: &[u8], headers: &[(&str, &str)]) -> Reply {
        let mut req = Self::agent().post(&format!("{}{path}", self.url));
        for (k, v) in headers {
            req = req.set(k, v);
        }
        Reply::from(req.send_bytes(body))
    }

    fn post(&self, path: &str, body: &Value) -> Reply {
        let bytes = serde_json::to_vec(body).unwrap();
        self.post_raw(path, &bytes, &[("Content-Type", "application/json")])
    }

    /// POSTs and expects 200 with a JSON body.
    fn ok(&self, path: &str, body: &Value) -> Value {
        let r = self.post(path, body);
        assert_eq!(r.status, 200, "{path} {body}: {}", r.body);
        r.json()
    }

    fn get(&self, path: &str) -> Reply {
        Reply::from(Self::agent().get(&format!("{}{path}", self.url)).call())
    }

    /// The value of a metric in `/metrics`.
    fn metric(&self, name: &str) -> f64 {
        let text = self.get("/metrics").body;
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no metric {name} in\n{text}"))
    }

    /// Sends SIGTERM and waits for the exit status.
    fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "bge serve did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The log lines written so far.
    fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().try_iter().collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP answer.
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
}

impl Reply {
    fn from(result: Result<ureq::Response, ureq::Error>) -> Reply {
        let response = match result {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => panic!("transport error: {e}"),
        };
        let headers = response
            .headers_names()
            .into_iter()
            .map(|n| {
                let v = response.header(&n).unwrap_or("").to_owned();
                (n, v)
            })
            .collect();
        Reply {
            status: response.status(),
            headers,
            body: response.into_string().unwrap(),
        }
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    fn header(&self, name: &str) -> Option<&str> {
        let h = self
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name));
        h.map(|(_, v)| v.as_str())
    }

    /// Asserts the status and TEI's error shape, and returns the message.
    fn tei_error(&self, status: u16, error_type: &str) -> String {
        assert_eq!(self.status, status, "{}", self.body);
        let v = self.json();
        assert_eq!(v["error_type"], error_type, "{}", self.body);
        assert_eq!(v.as_object().unwrap().len(), 2, "{}", self.body);
        v["error"].as_str().unwrap().to_owned()
    }

    /// Asserts the status and OpenAI's error shape, and returns the message.
    fn openai_error(&self, status: u16, kind: &str) -> String {
        assert_eq!(self.status, status, "{}", self.body);
        let e = &self.json()["error"];
        assert_eq!(e["type"], kind, "{}", self.body);
        for key in ["message", "type", "param", "code"] {
            assert!(e.get(key).is_some(), "no `{key}` in {}", self.body);
        }
        e["message"].as_str().unwrap().to_owned()
    }
}

/// Runs the CLI with `args` on JSONL `lines` and returns its output lines as JSON.
fn cli(args: &[&str], lines: &[Value]) -> Vec<Value> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_bge"))
        .args(args)
        .args(["--device", "cpu", "--quiet"])
        .env("HF_HUB_OFFLINE", "1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let input: String = lines.iter().map(|l| l.to_string() + "\n").collect();
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()).unwrap());
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    assert!(
        out.status.success(),
        "bge {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn strings(texts: &[String]) -> Vec<Value> {
    texts.iter().map(|t| json!(t)).collect()
}

/// One field of each CLI line.
fn field(lines: &[Value], key: &str) -> Value {
    Value::Array(lines.iter().map(|l| l[key].clone()).collect())
}

/// `/embed_sparse`'s `[{index, value}]` as the CLI's `{"<id>": w}`, in the same order.
fn as_cli_sparse(weights: &Value) -> Value {
    let map: serde_json::Map<String, Value> = weights
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["index"].to_string(), p["value"].clone()))
        .collect();
    Value::Object(map)
}

fn m3() -> PathBuf {
    model_dir("tiny-m3")
}

fn minilm() -> PathBuf {
    common::minilm_dir()
}

/// `n` English texts of `words` words each (for the tests that need slow requests).
fn long_texts(n: usize, words: usize) -> Vec<String> {
    const VOCAB: [&str; 16] = [
        "dense",
        "retrieval",
        "systems",
        "encode",
        "every",
        "passage",
        "of",
        "a",
        "corpus",
        "into",
        "single",
        "vector",
        "ahead",
        "time",
        "query",
        "tokens",
    ];
    (0..n)
        .map(|i| {
            (0..words)
                .map(|j| VOCAB[(i * 7 + j * 13 + j / 16) % VOCAB.len()])
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

/// The fixture sentences the server takes: all but the empty one (an empty input is 422),
/// with the rows of `expected` that belong to them.
fn sentences_and(expected: Option<common::Tensor>) -> (Vec<String>, Option<common::Tensor>) {
    let all = texts("sentences");
    let keep: Vec<usize> = (0..all.len()).filter(|&i| !all[i].is_empty()).collect();
    let rows = expected.map(|t| {
        let data = keep.iter().flat_map(|&i| t.row(i).to_vec()).collect();
        common::Tensor {
            data,
            shape: vec![keep.len(), t.shape[1]],
        }
    });
    (keep.iter().map(|&i| all[i].clone()).collect(), rows)
}

fn sentences() -> Vec<String> {
    sentences_and(None).0
}

#[test]
fn bge_m3_routes_are_the_clis_bit_for_bit() {
    // The fixture sentences reach 1024 tokens: FlagEmbedding's max length of the fixture.
    let server = Server::start(&m3(), &["--auto-truncate", "--max-input-length", "1024"]);
    let m = m3();
    let model = m.to_str().unwrap();
    fn at_1024<'a>(args: &[&'a str]) -> Vec<&'a str> {
        [args, &["--max-length", "1024"]].concat()
    }
    let fixture = load(
        &reference("tiny_m3/encode_max1024.safetensors"),
        "dense_vecs",
    );
    let (sentences, fixture) = sentences_and(Some(fixture));
    let input = json!(sentences);

    // /embed: the dense vectors of `bge embed`; and the FlagEmbedding fixture.
    let embed = server.post("/embed", &json!({"inputs": input}));
    assert_eq!(embed.status, 200, "{}", embed.body);
    for h in [
        "x-compute-time",
        "x-compute-tokens",
        "x-queue-time",
        "x-inference-time",
        "x-tokenization-time",
    ] {
        assert!(
            embed.header(h).is_some_and(|v| v.parse::<u64>().is_ok()),
            "{h}"
        );
    }
    let dense = cli(&at_1024(&["embed", "--model", model]), &strings(&sentences));
    assert_eq!(embed.json(), field(&dense, "dense"));
    let vectors: Vec<Vec<f32>> = serde_json::from_value(embed.json()).unwrap();
    let fixture = fixture.unwrap();
    assert_rows("/embed", &vectors, &fixture, tol::NORMALIZED, 0.99999);

    // A single string is one input.
    let one = server.ok("/embed", &json!({"inputs": sentences[0]}));
    assert_eq!(one, json!([dense[0]["dense"]]));

    // /embed_sparse and /embed_all: `bge embed --sparse` and `--colbert`.
    let all = cli(
        &at_1024(&[
            "embed",
            "--model",
            model,
            "--dense",
            "--sparse",
            "--colbert",
        ]),
        &strings(&sentences),
    );
    let sparse = server.ok("/embed_sparse", &json!({"inputs": input}));
    let sparse: Vec<Value> = sparse
        .as_array()
        .unwrap()
        .iter()
        .map(as_cli_sparse)
        .collect();
    assert_eq!(Value::Array(sparse), field(&all, "sparse"));
    let colbert = server.ok("/embed_all", &json!({"inputs": input}));
    assert_eq!(colbert, field(&all, "colbert"));

    // /encode: any subset, in `bge embed`'s shape, from one pass.
    let encode = json!({"inputs": input, "return_sparse": true, "return_colbert_vecs": true});
    assert_eq!(server.ok("/encode", &encode), Value::Array(all.clone()));
    let only_sparse = json!({"inputs": input, "return_dense": false, "return_sparse": true});
    let expected: Vec<Value> = all.iter().map(|l| json!({"sparse": l["sparse"]})).collect();
    assert_eq!(server.ok("/encode", &only_sparse), Value::Array(expected));

    // /score: `bge score`'s five values for the query with each text.
    let (queries, passages) = (texts("queries"), texts("passages"));
    let pairs: Vec<Value> = passages
        .iter()
        .map(|p| json!({"query": queries[0], "passage": p}))
        .collect();
    let expected = cli(
        &at_1024(&["score", "--model", model, "--weights", "0.4,0.2,0.4"]),
        &pairs,
    );
    let body = json!({"query": queries[0], "texts": passages, "weights": [0.4, 0.2, 0.4]});
    assert_eq!(server.ok("/score", &body), Value::Array(expected));

    // prompt_name "query" is `bge embed --query` (bge-m3: no instruction, query length).
    let q = server.ok(
        "/embed",
        &json!({"inputs": queries, "prompt_name": "query"}),
    );
    let expected = cli(
        &at_1024(&["embed", "--model", model, "--query"]),
        &strings(&queries),
    );
    assert_eq!(q, field(&expected, "dense"));

    // /v1/embeddings: the same vectors, as floats and as base64 of the little-endian bytes.
    let v1 = server.ok("/v1/embeddings", &json!({"input": input, "model": "x"}));
    assert_eq!(v1["object"], "list");
    assert_eq!(v1["model"], "tiny-m3");
    let floats: Vec<Value> = v1["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["embedding"].clone())
        .collect();
    assert_eq!(Value::Array(floats), field(&dense, "dense"));
    for (i, d) in v1["data"].as_array().unwrap().iter().enumerate() {
        assert_eq!(
            (d["object"].as_str(), d["index"].as_u64()),
            (Some("embedding"), Some(i as u64))
        );
    }
    let tokens = v1["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(tokens >= 2 * sentences.len() as u64 && v1["usage"]["total_tokens"] == tokens);
    let b64 = server.ok(
        "/v1/embeddings",
        &json!({"input": input, "encoding_format": "base64"}),
    );
    for (d, v) in b64["data"].as_array().unwrap().iter().zip(&vectors) {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(d["embedding"].as_str().unwrap())
            .unwrap();
        let decoded: Vec<f32> = bytes
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(
            decoded.iter().map(|x| x.to_bits()).collect::<Vec<_>>(),
            v.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
        );
    }

    // `dimensions` keeps the first components and re-normalises them.
    for route in ["/embed", "/v1/embeddings"] {
        let key = if route == "/embed" { "inputs" } else { "input" };
        let cut = server.ok(route, &json!({key: sentences[0], "dimensions": 8}));
        let cut: Vec<f64> = match route {
            "/embed" => serde_json::from_value(cut[0].clone()).unwrap(),
            _ => serde_json::from_value(cut["data"][0]["embedding"].clone()).unwrap(),
        };
        let full = &vectors[0][..8];
        let norm = full
            .iter()
            .map(|&x| x as f64 * x as f64)
            .sum::<f64>()
            .sqrt();
        assert_eq!(cut.len(), 8);
        for (c, f) in cut.iter().zip(full) {
            assert!(
                (c - *f as f64 / norm).abs() < 1e-6,
                "{route}: {c} vs {f}/{norm}"
            );
        }
    }
    let raw = server.ok(
        "/embed",
        &json!({"inputs": sentences[0], "normalize": false}),
    );
    let norm: f64 = raw[0]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap().powi(2))
        .sum();
    assert!(
        (norm.sqrt() - 1.0).abs() > 1e-3,
        "normalize: false gives the raw CLS state"
    );

    // Token ids are the text's ids: the same vector as the text.
    let ids: Vec<u64> = server.ok(
        "/tokenize",
        &json!({"inputs": sentences[0], "add_special_tokens": false}),
    )[0]
    .as_array()
    .unwrap()
    .iter()
    .map(|t| t["id"].as_u64().unwrap())
    .collect();
    assert_eq!(server.ok("/embed", &json!({"inputs": ids})), one);
    assert_eq!(server.ok("/embed", &json!({"inputs": [ids]})), one);

    // /tokenize: ids, special tokens and the byte spans of the text.
    let tokens = server.ok("/tokenize", &json!({"inputs": ["hello world"]}));
    let tokens = tokens[0].as_array().unwrap();
    assert_eq!(tokens.first().unwrap()["special"], true);
    assert_eq!(tokens.last().unwrap()["special"], true);
    // Each token's text is its span of the input (XLM-R's `▁` shares the next word's start).
    let text = "hello world";
    let mut last_start = 0;
    for t in &tokens[1..tokens.len() - 1] {
        assert_eq!(t["special"], false);
        let (start, stop) = (
            t["start"].as_u64().unwrap() as usize,
            t["stop"].as_u64().unwrap() as usize,
        );
        assert!(
            last_start <= start && start <= stop && stop <= text.len(),
            "{t}"
        );
        assert_eq!(t["text"], text[start..stop], "{t}");
        last_start = start;
    }
    assert_eq!(tokens[tokens.len() - 2]["stop"], text.len());

    // /info, /health, /metrics, /v1/models.
    let info = server.get("/info").json();
    assert_eq!(info["model_id"], "tiny-m3");
    assert_eq!(info["model_type"]["embedding"]["pooling"], "cls");
    assert_eq!(info["outputs"], json!(["dense", "sparse", "ColBERT"]));
    assert_eq!(info["max_input_length"], 1024);
    assert_eq!(info["prompt_names"], json!(["query"]));
    let health = server.get("/health");
    assert_eq!(health.status, 200);
    let metrics = server.get("/metrics");
    assert_eq!(metrics.status, 200);
    assert!(
        metrics
            .body
            .contains("bge_requests_total{route=\"/embed\",status=\"200\"}")
    );
    assert!(server.metric("bge_batch_tokens_total") > 0.0);
    let models = server.get("/v1/models").json();
    assert_eq!(models["data"][0]["id"], "tiny-m3");
    assert_eq!(models["data"][0]["object"], "model");

    // One log line per request, with its timings and never its body.
    let log = server.log().join("\n");
    assert!(
        log.contains("path=\"/embed\"") || log.contains("path=/embed"),
        "{log}"
    );
    assert!(log.contains("inference_ms"), "{log}");
    assert!(
        !log.contains(&sentences[0]),
        "a request body reached the log"
    );
}

#[test]
fn an_embedder_without_m3_heads_answers_clearly() {
    let dir = model_dir("tiny-bge");
    let model = dir.to_str().unwrap();
    let instruction = "Represent this: ";
    let server = Server::start(
        &dir,
        &["--query-instruction", instruction, "--auto-truncate"],
    );
    let fixture = load(
        &reference("tiny_bge/flagmodel.safetensors"),
        "encode_max512",
    );
    let (sentences, expected) = sentences_and(Some(fixture));
    let expected = expected.unwrap();
    let cli_lines = cli(&["embed", "--model", model], &strings(&sentences));
    assert_eq!(
        server.ok("/embed", &json!({"inputs": sentences})),
        field(&cli_lines, "dense")
    );
    let got: Vec<Vec<f32>> =
        serde_json::from_value(server.ok("/embed", &json!({"inputs": sentences}))).unwrap();
    assert_rows("tiny-bge /embed", &got, &expected, tol::NORMALIZED, 0.99999);

    // The query instruction of --query-instruction, as `bge embed --instruction`.
    let queries = texts("queries");
    let q = server.ok(
        "/embed",
        &json!({"inputs": queries, "prompt_name": "query"}),
    );
    let expected = cli(
        &["embed", "--model", model, "--instruction", instruction],
        &strings(&queries),
    );
    assert_eq!(q, field(&expected, "dense"));
    let tokens = server.ok("/tokenize", &json!({"inputs": "x", "prompt_name": "query"}));
    assert!(
        tokens[0].as_array().unwrap().len() > 4,
        "the instruction is tokenized too"
    );

    for (route, body) in [
        ("/embed_sparse", json!({"inputs": "a"})),
        ("/embed_all", json!({"inputs": "a"})),
        (
            "/encode",
            json!({"inputs": "a", "return_colbert_vecs": true}),
        ),
        ("/score", json!({"query": "a", "texts": ["b"]})),
        ("/rerank", json!({"query": "a", "texts": ["b"]})),
    ] {
        let message = server.post(route, &body).tei_error(424, "Backend");
        assert!(message.contains(route), "{route}: {message}");
    }
    let message = server
        .post("/embed", &json!({"inputs": "a", "prompt_name": "qa_query"}))
        .tei_error(422, "Validation");
    assert!(
        message.contains("prompt_name") && message.contains("query"),
        "{message}"
    );
}

#[test]
fn the_reranker_ranks_as_bge_rerank_scores() {
    let dir = model_dir("tiny-reranker");
    let model = dir.to_str().unwrap();
    let server = Server::start(&dir, &["--auto-truncate"]);
    let (queries, passages) = (texts("queries"), texts("passages"));
    let pairs: Vec<Value> = passages
        .iter()
        .map(|p| json!({"query": queries[1], "passage": p}))
        .collect();
    for (raw, flags) in [(false, vec!["--normalize"]), (true, vec![])] {
        let mut args = vec!["rerank", "--model", model];
        args.extend(flags);
        let scores: Vec<f32> = cli(&args, &pairs)
            .iter()
            .map(|l| l["score"].as_f64().unwrap() as f32)
            .collect();
        let body =
            json!({"query": queries[1], "texts": passages, "raw_scores": raw, "return_text": true});
        for route in ["/rerank", "/"] {
            let ranks = server.ok(route, &body);
            let ranks = ranks.as_array().unwrap();
            assert_eq!(ranks.len(), passages.len());
            let mut order: Vec<usize> = (0..scores.len()).collect();
            order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
            for (rank, &i) in ranks.iter().zip(&order) {
                assert_eq!(rank["index"], i, "{route} raw={raw}");
                assert_eq!(rank["score"].as_f64().unwrap() as f32, scores[i]);
                assert_eq!(rank["text"], passages[i]);
            }
        }
    }
    let ranks = server.ok("/rerank", &json!({"query": "q", "texts": ["a", "b"]}));
    assert!(ranks[0].get("text").is_none(), "no text unless return_text");
    // FlagReranker's scores of the fixture pairs at max length 512.
    let fixture = read_json(&reference("tiny_reranker/scores.json"));
    let run = fixture["runs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["max_length"] == 512)
        .unwrap();
    for (key, raw, tol) in [
        ("prepare_for_model_scores", true, tol::LOGITS),
        ("prepare_for_model_scores_normalized", false, tol::SIGMOID),
    ] {
        let got: Vec<f64> = fixture["pairs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                let body = json!({"query": p[0], "texts": [p[1]], "raw_scores": raw});
                server.ok("/rerank", &body)[0]["score"].as_f64().unwrap()
            })
            .collect();
        let want: Vec<f64> = serde_json::from_value(run[key].clone()).unwrap();
        assert_close(key, &got, &want, tol);
    }

    let message = server
        .post("/embed", &json!({"inputs": "a"}))
        .tei_error(424, "Backend");
    assert!(message.contains("reranker"), "{message}");
    server
        .post("/v1/embeddings", &json!({"input": "a"}))
        .openai_error(424, "server_error");
    server
        .post("/rerank", &json!({"query": "q", "texts": []}))
        .tei_error(422, "Empty");
    let long = long_texts(1, 600).remove(0);
    let body = json!({"query": "q", "texts": [long], "truncate": false});
    let message = server.post("/rerank", &body).tei_error(422, "Validation");
    assert!(message.contains("max input length of 512"), "{message}");
    assert_eq!(
        server
            .post("/rerank", &json!({"query": "q", "texts": [long]}))
            .status,
        200
    );
    let info = server.get("/info").json();
    assert!(info["model_type"].get("reranker").is_some(), "{info}");
}

#[test]
fn minilm_routes_match_the_cli() {
    let dir = minilm();
    let model = dir.to_str().unwrap();
    // The fixture's max length, 256; its sentences reach it.
    let server = Server::start(
        &dir,
        &[
            "--served-model-name",
            "minilm",
            "--auto-truncate",
            "--max-input-length",
            "256",
        ],
    );
    let fixture = load(
        &reference("minilm/embeddings.safetensors"),
        "mean_normalized",
    );
    let (sentences, fixture) = sentences_and(Some(fixture));
    let expected = cli(
        &["embed", "--model", model, "--max-length", "256"],
        &strings(&sentences),
    );
    assert_eq!(
        server.ok("/embed", &json!({"inputs": sentences})),
        field(&expected, "dense")
    );
    let v1 = server.ok(
        "/v1/embeddings",
        &json!({"input": sentences, "model": "minilm"}),
    );
    let floats: Vec<Value> = v1["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["embedding"].clone())
        .collect();
    assert_eq!(Value::Array(floats), field(&expected, "dense"));
    assert_eq!(v1["model"], "minilm");
    let info = server.get("/info").json();
    assert_eq!(info["model_type"]["embedding"]["pooling"], "mean");
    assert_eq!(info["model_id"], "minilm");
    let got: Vec<Vec<f32>> = serde_json::from_value(field(&expected, "dense")).unwrap();
    assert_rows(
        "MiniLM /embed",
        &got,
        &fixture.unwrap(),
        tol::NORMALIZED,
        0.99999,
    );
    server
        .post("/embed_sparse", &json!({"inputs": "a"}))
        .tei_error(424, "Backend");
}

#[test]
fn llm_embedder_prompts_are_its_tasks() {
    // LLM-Embedder is known by its name; the fixtures run its instructions on tiny-bge.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("llm-embedder");
    std::fs::create_dir(&dir).unwrap();
    for entry in std::fs::read_dir(model_dir("tiny-bge")).unwrap() {
        let path = entry.unwrap().path();
        std::os::unix::fs::symlink(&path, dir.join(path.file_name().unwrap())).unwrap();
    }
    let model = dir.to_str().unwrap();
    let server = Server::start(&dir, &["--auto-truncate"]);
    let names = server.get("/info").json()["prompt_names"].clone();
    assert!(
        names.as_array().unwrap().contains(&json!("qa_query"))
            && names.as_array().unwrap().contains(&json!("tool_key")),
        "{names}"
    );
    let queries = texts("queries");
    for (prompt, flags) in [
        ("qa_query", vec!["--query", "--task", "qa"]),
        ("query", vec!["--query"]),
        ("chat_key", vec!["--task", "chat"]),
    ] {
        let mut args = vec!["embed", "--model", model];
        args.extend(flags);
        let expected = cli(&args, &strings(&queries));
        let got = server.ok("/embed", &json!({"inputs": queries, "prompt_name": prompt}));
        assert_eq!(got, field(&expected, "dense"), "{prompt}");
    }
    server
        .post(
            "/embed",
            &json!({"inputs": "a", "prompt_name": "nope_query"}),
        )
        .tei_error(422, "Validation");
    let message = server
        .post(
            "/embed",
            &json!({"inputs": [1, 2], "prompt_name": "qa_query"}),
        )
        .tei_error(422, "Validation");
    assert!(message.contains("token ids"), "{message}");
}

#[test]
fn every_limit_and_bad_request_has_its_status_and_json() {
    let server = Server::start(
        &m3(),
        &[
            "--max-client-batch-size",
            "4",
            "--max-input-length",
            "16",
            "--payload-limit",
            "4000",
            "--api-key",
            "sesame",
        ],
    );
    let key = [
        ("Authorization", "Bearer sesame"),
        ("Content-Type", "application/json"),
    ];
    let post =
        |path: &str, body: &Value| server.post_raw(path, &serde_json::to_vec(body).unwrap(), &key);

    // 401: no key, a wrong key; in OpenAI's shape under /v1/. /health needs none.
    server
        .post("/embed", &json!({"inputs": "a"}))
        .tei_error(401, "Unauthorized");
    let wrong = [("Authorization", "Bearer sesamf")];
    server
        .post_raw("/embed", b"{\"inputs\": \"a\"}", &wrong)
        .tei_error(401, "Unauthorized");
    // The scheme is case-insensitive (RFC 9110).
    let lower = [("Authorization", "bearer sesame")];
    assert_eq!(
        server
            .post_raw("/embed", b"{\"inputs\": \"a\"}", &lower)
            .status,
        200
    );
    server
        .post("/v1/embeddings", &json!({"input": "a"}))
        .openai_error(401, "invalid_request_error");
    assert_eq!(server.get("/health").status, 200);
    assert_eq!(post("/embed", &json!({"inputs": "a"})).status, 200);

    // 422: too many inputs, none, an empty one, too long, wrong types, malformed JSON.
    let five = json!({"inputs": ["a", "b", "c", "d", "e"]});
    let m = post("/embed", &five).tei_error(422, "Validation");
    assert!(m.contains("--max-client-batch-size of 4"), "{m}");
    post(
        "/v1/embeddings",
        &json!({"input": ["a", "b", "c", "d", "e"]}),
    )
    .openai_error(422, "invalid_request_error");
    post("/embed", &json!({"inputs": []})).tei_error(422, "Empty");
    post("/embed", &json!({"inputs": ["a", ""]})).tei_error(422, "Empty");
    post("/v1/embeddings", &json!({"input": ""})).openai_error(422, "invalid_request_error");
    let long = long_texts(1, 40).remove(0);
    let m = post("/embed", &json!({"inputs": long})).tei_error(422, "Validation");
    assert!(
        m.contains("max input length of 16") && m.contains("truncate"),
        "{m}"
    );
    post("/v1/embeddings", &json!({"input": long})).openai_error(422, "invalid_request_error");
    assert_eq!(
        post("/embed", &json!({"inputs": long, "truncate": true})).status,
        200
    );
    post("/embed", &json!({"inputs": "a", "normalize": "yes"})).tei_error(422, "Validation");
    post("/embed", &json!({"inputs": {"text": "a"}})).tei_error(422, "Validation");
    post("/embed", &json!({"inputs": [1, -2]})).tei_error(422, "Validation");
    post("/embed", &json!({"inputs": [[1, 2], "a"]})).tei_error(422, "Validation");
    let m = post("/embed", &json!({"inputs": [4000000000u32]})).tei_error(422, "Validation");
    assert!(m.contains("vocabulary"), "{m}");
    post("/embed", &json!({"inputs": "a", "dimensions": 0})).tei_error(422, "Validation");
    post("/embed", &json!({"inputs": "a", "dimensions": 100000})).tei_error(422, "Validation");
    post(
        "/embed",
        &json!({"inputs": "a", "truncation_direction": "middle"}),
    )
    .tei_error(422, "Validation");
    post("/encode", &json!({"inputs": "a", "return_dense": false})).tei_error(422, "Validation");
    post(
        "/score",
        &json!({"query": "a", "texts": ["b"], "weights": [0, 0, 1]}),
    )
    .tei_error(422, "Validation");
    post(
        "/v1/embeddings",
        &json!({"input": "a", "encoding_format": "hex"}),
    )
    .openai_error(422, "invalid_request_error");
    let m = server
        .post_raw("/embed", b"{\"inputs\": ", &key)
        .tei_error(422, "Validation");
    assert!(m.contains("JSON"), "{m}");
    server
        .post_raw("/embed", b"\xff\xfe", &key)
        .tei_error(422, "Validation");
    server
        .post_raw("/v1/embeddings", b"[1,2", &key)
        .openai_error(422, "invalid_request_error");
    server
        .post_raw("/embed", b"", &key)
        .tei_error(422, "Validation");
    let m = server
        .post_raw("/embed", b"{\"inputs\": \"a\"} junk", &key)
        .tei_error(422, "Validation");
    assert!(m.contains("trailing"), "{m}");

    // 413: a body over --payload-limit, with and without a content length.
    let big = json!({"inputs": "x".repeat(5000)});
    post("/embed", &big).tei_error(413, "Validation");
    post("/v1/embeddings", &json!({"input": "x".repeat(5000)}))
        .openai_error(413, "invalid_request_error");
    let chunked = ureq::AgentBuilder::new()
        .build()
        .post(&format!("{}/embed", server.url))
        .set("Authorization", "Bearer sesame");
    let reply = Reply::from(chunked.send(std::io::Cursor::new(serde_json::to_vec(&big).unwrap())));
    reply.tei_error(413, "Validation");

    // 404 and 405 in JSON.
    post("/nowhere", &json!({})).tei_error(404, "NotFound");
    post("/v1/nowhere", &json!({})).openai_error(404, "invalid_request_error");
    let r = Reply::from(
        ureq::get(&format!("{}/embed", server.url))
            .set("Authorization", "Bearer sesame")
            .call(),
    );
    r.tei_error(405, "NotFound");

    // A malformed request line or header: the HTTP layer answers 400, and the server lives on.
    let address = server.url.trim_start_matches("http://");
    let mut raw = TcpStream::connect(address).unwrap();
    raw.write_all(b"GARBAGE\r\n\r\n").unwrap();
    let mut answer = String::new();
    let _ = raw.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert_eq!(post("/embed", &json!({"inputs": "still here"})).status, 200);
}

#[test]
fn an_auto_truncating_server_cuts_as_the_cli_does() {
    let m = m3();
    let server = Server::start(&m, &["--auto-truncate", "--max-input-length", "16"]);
    let long = long_texts(3, 40);
    let expected = cli(
        &[
            "embed",
            "--model",
            m.to_str().unwrap(),
            "--max-length",
            "16",
        ],
        &strings(&long),
    );
    assert_eq!(
        server.ok("/embed", &json!({"inputs": long})),
        field(&expected, "dense")
    );
    // A request may still ask for the refusal.
    server
        .post("/embed", &json!({"inputs": long, "truncate": false}))
        .tei_error(422, "Validation");
    // Left truncation keeps the end of the text.
    let left = server.ok(
        "/embed",
        &json!({"inputs": long[0], "truncation_direction": "left"}),
    );
    let right = server.ok(
        "/embed",
        &json!({"inputs": long[0], "truncation_direction": "Right"}),
    );
    assert_ne!(left, right);
    assert_eq!(right, json!([expected[0]["dense"]]));
}

#[test]
fn sixty_four_concurrent_clients_with_mixed_routes_lose_nothing() {
    let server = Server::start(&m3(), &["--max-batch-tokens", "64", "--auto-truncate"]);
    let sentences = sentences();
    let requests: Vec<(&str, Value)> = (0..64)
        .map(|i| {
            let a = &sentences[i % sentences.len()];
            let b = &sentences[(i * 5 + 1) % sentences.len()];
            match i % 5 {
                0 => ("/embed", json!({"inputs": [a, b]})),
                1 => ("/embed_sparse", json!({"inputs": a})),
                2 => (
                    "/encode",
                    json!({"inputs": [b, a], "return_colbert_vecs": true}),
                ),
                3 => ("/score", json!({"query": a, "texts": [b, a]})),
                _ => ("/v1/embeddings", json!({"input": [a]})),
            }
        })
        .collect();
    // Each request alone, one after another, then all at once from 64 threads, 3 rounds.
    let alone: Vec<Value> = requests.iter().map(|(p, b)| server.ok(p, b)).collect();
    let barrier = std::sync::Barrier::new(requests.len());
    std::thread::scope(|s| {
        for ((path, body), expected) in requests.iter().zip(&alone) {
            let (server, barrier) = (&server, &barrier);
            s.spawn(move || {
                for _ in 0..3 {
                    barrier.wait();
                    assert_eq!(&server.ok(path, body), expected, "{path} under load");
                }
            });
        }
    });
    assert!(server.metric("bge_batches_total") > 0.0);
}

#[test]
fn overload_gets_429_at_once_and_the_server_stays_healthy() {
    let limit = 4;
    let server = Server::start(
        &minilm(),
        &[
            "--max-concurrent-requests",
            &limit.to_string(),
            "--max-batch-tokens",
            "512",
        ],
    );
    let texts = long_texts(16, 200);
    let statuses = std::sync::Mutex::new(Vec::new());
    // 4x the limit: 16 clients, each sending 4 requests of one long text back to back, half
    // of them to TEI's route and half to OpenAI's.
    std::thread::scope(|s| {
        for (i, t) in texts.iter().enumerate() {
            let (server, statuses) = (&server, &statuses);
            s.spawn(move || {
                for _ in 0..4 {
                    let start = Instant::now();
                    let openai = i % 2 == 1;
                    let r = match openai {
                        true => server.post("/v1/embeddings", &json!({"input": t})),
                        false => server.post("/embed", &json!({"inputs": t})),
                    };
                    if r.status == 429 {
                        assert_eq!(r.header("retry-after"), Some("1"));
                        let m = match openai {
                            true => r.openai_error(429, "requests"),
                            false => r.tei_error(429, "Overloaded"),
                        };
                        assert!(m.contains("--max-concurrent-requests"), "{m}");
                        assert!(
                            start.elapsed() < Duration::from_secs(5),
                            "429 must come at once"
                        );
                    }
                    statuses.lock().unwrap().push(r.status);
                }
            });
        }
    });
    let statuses = statuses.into_inner().unwrap();
    let rejected = statuses.iter().filter(|&&s| s == 429).count();
    let served = statuses.iter().filter(|&&s| s == 200).count();
    assert_eq!(rejected + served, 64, "only 200 and 429: {statuses:?}");
    assert!(
        rejected > 0 && served > 0,
        "{rejected} rejected, {served} served"
    );
    // More texts than the limit could never run: 422, not a 429 to retry forever.
    let r = server.post("/v1/embeddings", &json!({"input": vec!["a"; 5]}));
    let m = r.openai_error(422, "invalid_request_error");
    assert!(m.contains("--max-concurrent-requests of 4"), "{m}");
    assert_eq!(server.get("/health").status, 200);
    assert_eq!(
        server
            .post("/embed", &json!({"inputs": "after the storm"}))
            .status,
        200
    );
    assert_eq!(server.metric("bge_in_flight_texts"), 0.0);
}

#[test]
fn sigterm_under_load_answers_every_accepted_request_then_exits_0() {
    let server = Server::start(&minilm(), &["--max-batch-tokens", "1024"]);
    let url = server.url.clone();
    let (clients, per_request) = (12, 16);
    let batches: Vec<Vec<String>> = (0..clients).map(|_| long_texts(per_request, 200)).collect();
    let results = std::thread::scope(|s| {
        let handles: Vec<_> = batches
            .iter()
            .map(|texts| {
                let url = &url;
                s.spawn(move || {
                    let agent = ureq::AgentBuilder::new()
                        .timeout(Duration::from_secs(120))
                        .build();
                    let body = json!({"inputs": texts}).to_string();
                    Reply::from(agent.post(&format!("{url}/embed")).send_string(&body))
                })
            })
            .collect();
        // Every request accepted and in flight (its permits taken), then SIGTERM.
        let deadline = Instant::now() + Duration::from_secs(60);
        while server.metric("bge_in_flight_texts") < (clients * per_request) as f64 {
            assert!(
                Instant::now() < deadline,
                "the requests never got in flight"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        let pid = server.child.id() as libc::pid_t;
        // SAFETY: kill(2) on our own child's pid.
        assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Vec<Reply>>()
    });
    for r in &results {
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.json().as_array().unwrap().len(), per_request);
    }
    let status = server.terminate();
    assert!(status.success(), "exit status {status}");
    let refused = TcpStream::connect(url.trim_start_matches("http://"));
    assert!(refused.is_err(), "the port still accepts connections");
}

#[test]
fn a_client_that_disconnects_leaves_the_queue_and_does_not_stall_it() {
    let server = Server::start(&minilm(), &["--max-batch-tokens", "512"]);
    let texts = long_texts(64, 200);
    let body = serde_json::to_vec(&json!({"inputs": texts})).unwrap();
    let address = server.url.trim_start_matches("http://").to_owned();
    let mut stream = TcpStream::connect(&address).unwrap();
    let head = format!(
        "POST /embed HTTP/1.1\r\nHost: {address}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(&body).unwrap();
    // Wait until the model has started on it, then hang up.
    let deadline = Instant::now() + Duration::from_secs(60);
    while server.metric("bge_batches_total") < 1.0 {
        assert!(Instant::now() < deadline, "the request never ran");
        std::thread::sleep(Duration::from_millis(2));
    }
    drop(stream);
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.metric("bge_cancelled_texts_total") == 0.0 {
        assert!(
            Instant::now() < deadline,
            "the gone client's texts stayed queued"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let computed = server.metric("bge_batch_texts_total");
    let cancelled = server.metric("bge_cancelled_texts_total");
    assert!(
        computed + cancelled <= 64.0 && computed < 64.0,
        "computed {computed}, cancelled {cancelled}"
    );
    // The next client is served at once.
    let start = Instant::now();
    assert_eq!(
        server.post("/embed", &json!({"inputs": "next"})).status,
        200
    );
    assert!(start.elapsed() < Duration::from_secs(5));
    assert_eq!(server.metric("bge_queue_texts"), 0.0);
}

/// The official `openai` and `huggingface_hub` clients, from the venv `.ci/run` makes.
#[test]
fn the_official_clients_work() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let python = std::env::var_os("BGE_CLIENTS_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/venvs/clients/bin/python"));
    assert!(
        python.is_file(),
        "{} is missing: bash .ci/run makes it (python3 -m venv target/venvs/clients && target/venvs/clients/bin/pip install -r tests/clients/requirements.txt)",
        python.display()
    );
    for (model, key) in [
        (m3(), None),
        (model_dir("tiny-bge"), Some("k3y")),
        (minilm(), None),
        (model_dir("tiny-reranker"), None),
    ] {
        let mut args = vec!["--served-model-name", "served", "--auto-truncate"];
        if let Some(k) = key {
            args.extend(["--api-key", k]);
        }
        let server = Server::start(&model, &args);
        let reranker = model.ends_with("tiny-reranker");
        // The expected answers, from the server's own /embed and /rerank, which the tests
        // above tie to the CLI.
        let sentences = sentences();
        let auth = key.map(|k| format!("Bearer {k}")).unwrap_or_default();
        let headers: Vec<(&str, &str)> = match key {
            Some(_) => vec![("Authorization", auth.as_str())],
            None => vec![],
        };
        let expected = match reranker {
            true => server.post_raw(
                "/rerank",
                &serde_json::to_vec(&json!({"query": sentences[0], "texts": sentences})).unwrap(),
                &headers,
            ),
            false => server.post_raw(
                "/embed",
                &serde_json::to_vec(&json!({"inputs": sentences})).unwrap(),
                &headers,
            ),
        };
        assert_eq!(expected.status, 200, "{}", expected.body);
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(
            file.path(),
            json!({"texts": sentences, "expected": expected.json()}).to_string(),
        )
        .unwrap();
        let out = Command::new(&python)
            .arg(root.join("tests/clients/official_clients.py"))
            .args([
                "--url",
                &server.url,
                "--model",
                "served",
                "--cases",
                file.path().to_str().unwrap(),
            ])
            .args(["--kind", if reranker { "reranker" } else { "embedder" }])
            .args(key.map(|k| vec!["--api-key", k]).unwrap_or_default())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}: {}{}",
            model.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
