//! The `bge` command line: a thin layer over the library that parses flags, streams JSONL
//! and calls the model types. Every failure prints one line, `bge: error: ...`, on stderr and
//! exits non-zero (2 for usage errors, 1 for the rest).

mod jsonl;

use std::path::PathBuf;
use std::process::ExitCode;
use std::str::FromStr;

use clap::{Parser, Subcommand};
use serde::Serialize;

use bge::backend::gpu::Op;
use bge::internals::{BenchSpec, DEFAULT_BATCH_SIZE, RERANKER_BATCH_SIZE, Shape};
use bge::llm_embedder::{self, Task};
use bge::{Device, Dtype, Error, FlagModel, M3Model, Options, Reranker, Result, Want};

#[derive(Parser)]
#[command(
    name = "bge",
    version,
    about = "BGE embedding models: FlagEmbedding's numbers from one binary"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// Also print, on stderr, the GPU kernel version chosen per shape and any version the
    /// self-check disabled.
    #[arg(long, short, global = true)]
    verbose: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Embed JSONL texts (a JSON string or {"text": ...} per line) into JSONL vectors.
    Embed(EmbedArgs),
    /// BGE-M3 scores of JSONL {"query": ..., "passage": ...} pairs (dense, sparse, ColBERT).
    Score(ScoreArgs),
    /// Reranker scores of JSONL {"query": ..., "passage": ...} pairs.
    Rerank(RerankArgs),
    /// Serve the model over HTTP: TEI's and OpenAI's embedding APIs, BGE-M3's outputs, rerankers.
    #[cfg(feature = "serve")]
    Serve(ServeArgs),
    /// Time the encoder on random or real weights (same JSON fields as peer_bench.py).
    Bench(BenchArgs),
    /// List the GPU adapters wgpu finds, with the features and limits the kernels use.
    Devices(DevicesArgs),
}

#[derive(clap::Args)]
struct DevicesArgs {
    /// Check and time every kernel version on the GPU at a shape's classes (ignoring and then
    /// refreshing the cached choice), and print the table.
    #[arg(long)]
    tune: bool,
    /// The shape whose classes --tune times.
    #[arg(long, default_value = "bge-base", value_parser = parse::<Shape>)]
    shape: Shape,
    /// The adapter --tune uses: gpu or gpu:N.
    #[arg(long, default_value = "gpu", value_parser = parse::<Device>)]
    device: Device,
    /// The precision --tune uses (default: f32, then f16 where the adapter has it).
    #[arg(long, value_parser = parse::<Dtype>)]
    dtype: Option<Dtype>,
}

/// Which model to load, where, and in what precision (every model-running command).
#[derive(clap::Args)]
struct Load {
    /// A model directory or a Hugging Face id such as BAAI/bge-small-en-v1.5.
    #[arg(long)]
    model: String,
    /// auto, cpu, reference, gpu or gpu:N.
    #[arg(long, default_value = "auto", value_parser = parse::<Device>)]
    device: Device,
    /// f32, f16 (GPU) or bf16 (CPU with AVX-512 BF16).
    #[arg(long, default_value = "f32", value_parser = parse::<Dtype>)]
    dtype: Dtype,
}

/// Options every JSONL command shares.
#[derive(clap::Args)]
struct Common {
    #[command(flatten)]
    load: Load,
    /// Truncation length in tokens, special tokens included.
    #[arg(long)]
    max_length: Option<usize>,
    /// Input JSONL (default: stdin).
    #[arg(long)]
    input: Option<PathBuf>,
    /// Output JSONL (default: stdout); written only when every line succeeded.
    #[arg(long)]
    output: Option<PathBuf>,
    /// No progress bar and no notes.
    #[arg(long)]
    quiet: bool,
}

#[derive(clap::Args)]
struct EmbedArgs {
    #[command(flatten)]
    common: Common,
    #[arg(long, default_value_t = DEFAULT_BATCH_SIZE)]
    batch_size: usize,
    /// Encode as queries: the model's default query instruction and query max length.
    #[arg(long, conflicts_with = "instruction")]
    query: bool,
    /// Encode as queries with this instruction prepended.
    #[arg(long, conflicts_with = "task")]
    instruction: Option<String>,
    /// LLM-Embedder task (qa, convsearch, chat, lrlm, icl, tool): its query instruction with
    /// --query, its key instruction otherwise.
    #[arg(long, value_parser = parse::<Task>)]
    task: Option<Task>,
    /// Output the dense vector (the default when no output is named).
    #[arg(long)]
    dense: bool,
    /// Output BGE-M3 lexical weights: {"<token id>": weight}.
    #[arg(long)]
    sparse: bool,
    /// Output BGE-M3 ColBERT vectors (one per token but the first).
    #[arg(long)]
    colbert: bool,
}

#[derive(clap::Args)]
struct ScoreArgs {
    #[command(flatten)]
    common: Common,
    /// Weights of dense, sparse and ColBERT in the combined scores (FlagEmbedding 1.4.2's
    /// default; BGE-M3's model card suggests 0.4,0.2,0.4).
    #[arg(long, default_value = "1,1,1", value_parser = parse_weights)]
    weights: [f32; 3],
    #[arg(long, default_value_t = DEFAULT_BATCH_SIZE)]
    batch_size: usize,
}

#[derive(clap::Args)]
struct RerankArgs {
    #[command(flatten)]
    common: Common,
    /// The sigmoid of the logit instead of the logit.
    #[arg(long)]
    normalize: bool,
    #[arg(long, default_value_t = RERANKER_BATCH_SIZE)]
    batch_size: usize,
}

#[cfg(feature = "serve")]
#[derive(clap::Args)]
struct ServeArgs {
    /// The model (an embedder: bge, BGE-M3, LLM-Embedder; or a reranker), device and dtype.
    #[command(flatten)]
    load: Load,
    /// The address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// The port to listen on (0: a free port, which the log names).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// The most real tokens (no padding) one batch holds.
    #[arg(long, default_value_t = 16384)]
    max_batch_tokens: usize,
    /// The most texts in flight; a request that would pass it gets 429 at once.
    #[arg(long, default_value_t = 512)]
    max_concurrent_requests: usize,
    /// The most inputs one request may hold (422 beyond).
    #[arg(long, default_value_t = 64)]
    max_client_batch_size: usize,
    /// The longest input in tokens, special tokens included (default: 512, or the model's
    /// positions if fewer; LLM-Embedder's query prompts 256).
    #[arg(long)]
    max_input_length: Option<usize>,
    /// Cut longer inputs instead of answering 422 (a request's `truncate` overrides it).
    #[arg(long)]
    auto_truncate: bool,
    /// The largest request body in bytes (413 beyond).
    #[arg(long, default_value_t = 2_000_000)]
    payload_limit: usize,
    /// Require `Authorization: Bearer KEY` on every route but /health (401 otherwise).
    #[arg(long, env = "BGE_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// The model's name in /info, /v1/models and OpenAI answers (default: its directory or
    /// repository name).
    #[arg(long)]
    served_model_name: Option<String>,
    /// The instruction `prompt_name: "query"` puts before a text (default: the model's own).
    #[arg(long)]
    query_instruction: Option<String>,
    /// Threads that tokenize requests (default: the number of CPUs).
    #[arg(long)]
    tokenization_workers: Option<usize>,
}

#[derive(clap::Args)]
struct BenchArgs {
    /// bge-small, bge-base, bge-large or bge-m3 (random weights at the real shape).
    #[arg(long, value_parser = parse::<Shape>)]
    shape: Option<Shape>,
    /// A real model directory instead of random weights.
    #[arg(long)]
    model: Option<PathBuf>,
    #[arg(long)]
    batch: usize,
    #[arg(long)]
    seq: usize,
    #[arg(long)]
    ragged: bool,
    #[arg(long, default_value = "cpu", value_parser = parse::<Device>)]
    device: Device,
    #[arg(long, default_value = "f32", value_parser = parse::<Dtype>)]
    dtype: Dtype,
    #[arg(long)]
    threads: Option<usize>,
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    #[arg(long, default_value_t = 10)]
    iters: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Run only this many layers of the shape (e.g. to measure one layer's memory).
    #[arg(long)]
    layers: Option<usize>,
    /// Time every version of one GPU kernel ladder (matmul or attention) at the shape's
    /// classes, with batch x seq rows, instead of the whole encoder: one JSON line each.
    #[arg(long, value_parser = parse_op)]
    op: Option<Op>,
}

fn parse_op(s: &str) -> std::result::Result<Op, String> {
    Op::ALL
        .into_iter()
        .find(|op| op.name() == s)
        .ok_or_else(|| format!("unknown op `{s}` (expected matmul or attention)"))
}

/// A flag's value through the library's `FromStr`, whose error names the values it takes.
fn parse<T: FromStr<Err = Error>>(s: &str) -> std::result::Result<T, String> {
    s.parse().map_err(|e: Error| e.to_string())
}

fn parse_weights(s: &str) -> std::result::Result<[f32; 3], String> {
    let parts: Vec<f32> = s
        .split(',')
        .map(|p| p.trim().parse::<f32>().map_err(|e| format!("`{p}`: {e}")))
        .collect::<std::result::Result<_, _>>()?;
    match parts[..] {
        [d, s, c] if parts.iter().all(|w| w.is_finite() && *w >= 0.0) => Ok([d, s, c]),
        _ => Err("expected three non-negative numbers: dense,sparse,colbert".into()),
    }
}

fn main() -> ExitCode {
    quiet_mesa_device_select();
    bge::keep_freed_memory();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // clap's first paragraph is the error itself (with, e.g., the missing arguments
            // on following lines); usage and tips come after a blank line.
            let text = e.render().to_string();
            let first: Vec<&str> = text
                .lines()
                .take_while(|l| !l.trim().is_empty())
                .map(str::trim)
                .collect();
            eprintln!("bge: {}", first.join(" "));
            return ExitCode::from(2);
        }
    };
    let verbose = cli.verbose;
    let result = match cli.command {
        Command::Embed(args) => embed(args),
        Command::Score(args) => score(args),
        Command::Rerank(args) => rerank(args),
        #[cfg(feature = "serve")]
        Command::Serve(args) => serve(args),
        Command::Bench(args) => run_bench(args),
        Command::Devices(args) => devices(args),
    };
    if verbose {
        for line in bge::backend::gpu::kernel_notes() {
            eprintln!("bge: {line}");
        }
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bge: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Mesa's Vulkan device-select layer prints `XDG_RUNTIME_DIR is invalid or not set` to stderr
/// when that variable is unset (headless machines, CI), which would break the one-line error
/// contract. The layer only reorders adapters, and `bge` picks its adapter itself, so it is
/// switched off in that case.
fn quiet_mesa_device_select() {
    if std::env::var_os("XDG_RUNTIME_DIR").is_none() {
        // SAFETY: called first thing in main, before any thread exists, so nothing can read the
        // environment concurrently.
        unsafe { std::env::set_var("NODEVICE_SELECT", "1") };
    }
}

fn embed(args: EmbedArgs) -> Result<()> {
    let c = &args.common;
    let model = FlagModel::load(
        &c.load.model,
        &Options {
            device: c.load.device,
            dtype: c.load.dtype,
            batch_size: args.batch_size,
            max_length: c.max_length,
            query_max_length: c.max_length,
            query_instruction: args.instruction.clone(),
            ..Options::default()
        },
    )?;
    // LLM-Embedder's queries default to its `qa` task, as its `encode_queries` does.
    let task = args
        .task
        .or((args.query && llm_embedder::is_llm_embedder(&model)).then_some(Task::Qa));
    let (instruction, max_length) = match task {
        Some(task) => {
            let (query, key) = task.instructions();
            if args.query {
                (
                    Some(query),
                    c.max_length.unwrap_or(llm_embedder::QUERY_MAX_LENGTH),
                )
            } else {
                (
                    Some(key),
                    c.max_length.unwrap_or(llm_embedder::KEY_MAX_LENGTH),
                )
            }
        }
        None if args.query || args.instruction.is_some() => {
            (model.query_instruction(), model.query_max_length())
        }
        None => (None, model.max_length()),
    };
    let want = Want {
        dense: args.dense || !(args.sparse || args.colbert),
        sparse: args.sparse,
        colbert: args.colbert,
    };

    let progress = jsonl::progress(c.input.as_deref(), "texts", c.quiet);
    let mut out = jsonl::Output::open(c.output.as_deref())?;
    let (mut texts, mut truncated) = (0, 0);
    jsonl::stream(c.input.as_deref(), jsonl::text, args.batch_size, |chunk| {
        let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
        let e = model.embed(&refs, instruction, max_length, want, &mut |n| {
            progress.inc(n as u64)
        })?;
        (texts, truncated) = (texts + chunk.len(), truncated + e.truncated);
        for i in 0..chunk.len() {
            out.line(&e.text(i))?;
        }
        out.flush()
    })?;
    progress.finish_and_clear();
    out.commit()?;
    if truncated > 0 && !c.quiet {
        eprintln!(
            "bge: note: {truncated} of {texts} texts were longer than {max_length} tokens and were truncated, as FlagEmbedding does"
        );
    }
    Ok(())
}

fn score(args: ScoreArgs) -> Result<()> {
    let c = &args.common;
    let model = M3Model::load(
        &c.load.model,
        &Options {
            device: c.load.device,
            dtype: c.load.dtype,
            batch_size: args.batch_size,
            max_length: c.max_length,
            query_max_length: c.max_length,
            ..Options::default()
        },
    )?;
    let progress = jsonl::progress(c.input.as_deref(), "pairs", c.quiet);
    let mut out = jsonl::Output::open(c.output.as_deref())?;
    jsonl::stream(c.input.as_deref(), jsonl::pair, args.batch_size, |chunk| {
        for s in model.compute_score(&pair_refs(&chunk), args.weights)? {
            out.line(&s)?;
        }
        progress.inc(chunk.len() as u64);
        out.flush()
    })?;
    progress.finish_and_clear();
    out.commit()
}

fn pair_refs(pairs: &[(String, String)]) -> Vec<(&str, &str)> {
    pairs
        .iter()
        .map(|(q, p)| (q.as_str(), p.as_str()))
        .collect()
}

#[derive(Serialize)]
struct ScoreLine {
    score: f32,
}

fn rerank(args: RerankArgs) -> Result<()> {
    let c = &args.common;
    let mut model = Reranker::load(&c.load.model, c.load.device, c.load.dtype)?;
    model.set_batch_size(args.batch_size)?;
    if let Some(n) = c.max_length {
        model.set_max_length(n)?;
    }
    let progress = jsonl::progress(c.input.as_deref(), "pairs", c.quiet);
    let mut out = jsonl::Output::open(c.output.as_deref())?;
    jsonl::stream(c.input.as_deref(), jsonl::pair, args.batch_size, |chunk| {
        let scores = model.compute_score_with(&pair_refs(&chunk), args.normalize, &mut |n| {
            progress.inc(n as u64)
        })?;
        for score in scores {
            out.line(&ScoreLine { score })?;
        }
        out.flush()
    })?;
    progress.finish_and_clear();
    out.commit()
}

#[cfg(feature = "serve")]
fn serve(args: ServeArgs) -> Result<()> {
    bge::serve::run(bge::serve::ServeOptions {
        model: args.load.model,
        device: args.load.device,
        dtype: args.load.dtype,
        host: args.host,
        port: args.port,
        max_batch_tokens: args.max_batch_tokens,
        max_concurrent_requests: args.max_concurrent_requests,
        max_client_batch_size: args.max_client_batch_size,
        max_input_length: args.max_input_length,
        auto_truncate: args.auto_truncate,
        payload_limit: args.payload_limit,
        api_key: args.api_key,
        served_model_name: args.served_model_name,
        query_instruction: args.query_instruction,
        tokenization_workers: args.tokenization_workers,
    })
}

fn run_bench(args: BenchArgs) -> Result<()> {
    let spec = BenchSpec {
        shape: args.shape,
        model: args.model,
        batch: args.batch,
        seq: args.seq,
        ragged: args.ragged,
        device: args.device,
        dtype: args.dtype,
        threads: args.threads,
        warmup: args.warmup,
        iters: args.iters,
        seed: args.seed,
        layers: args.layers,
    };
    if let Some(op) = args.op {
        for line in bge::internals::run_bench_ops(&spec, op)? {
            println!("{line}");
        }
        return Ok(());
    }
    let line = bge::internals::run_bench(&spec)?;
    println!("{line}");
    Ok(())
}

fn devices(args: DevicesArgs) -> Result<()> {
    print!("{}", bge::backend::gpu::adapter_report());
    if !args.tune {
        return Ok(());
    }
    let Device::Gpu(adapter) = args.device else {
        return Err(Error::InvalidArgument(
            "devices --tune needs --device gpu or gpu:N".into(),
        ));
    };
    let text = bge::backend::gpu::tune::table(adapter, &args.shape.config(), args.dtype)?;
    print!("{text}");
    Ok(())
}
