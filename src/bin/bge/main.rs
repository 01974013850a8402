//! The `bge` command line: a thin layer over the library. Every failure prints one line,
//! `bge: error: ...`, on stderr and exits non-zero (2 for usage errors, 1 for the rest).

use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use bge::bench::{self, BenchSpec};
use bge::config::Shape;
use bge::{Device, Dtype, Error, FlagModel, Options, Result};

#[derive(Parser)]
#[command(
    name = "bge",
    version,
    about = "BGE embedding models: FlagEmbedding's numbers from one binary"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Embed JSONL texts (a JSON string or {"text": ...} per line) into JSONL vectors.
    Embed(EmbedArgs),
    /// Time the encoder on random or real weights (same JSON fields as peer_bench.py).
    Bench(BenchArgs),
    /// List the GPU adapters wgpu finds, with the features and limits the kernels use.
    Devices,
}

#[derive(clap::Args)]
struct EmbedArgs {
    /// A model directory or a Hugging Face id such as BAAI/bge-small-en-v1.5.
    #[arg(long)]
    model: String,
    /// auto, cpu, reference, gpu or gpu:N.
    #[arg(long, default_value = "auto", value_parser = parse_device)]
    device: Device,
    #[arg(long, value_enum, default_value = "f32")]
    dtype: Dtype,
    /// Truncation length in tokens, special tokens included (default 512, as FlagModel).
    #[arg(long)]
    max_length: Option<usize>,
    #[arg(long, default_value_t = bge::embedder::DEFAULT_BATCH_SIZE)]
    batch_size: usize,
    /// Encode as queries: the model's default query instruction (as encode_queries).
    #[arg(long, conflicts_with = "instruction")]
    query: bool,
    /// Encode as queries with this instruction prepended.
    #[arg(long)]
    instruction: Option<String>,
    /// Input JSONL (default: stdin).
    #[arg(long)]
    input: Option<PathBuf>,
    /// Output JSONL (default: stdout); written only when every line succeeded.
    #[arg(long)]
    output: Option<PathBuf>,
    /// No progress bar and no warnings.
    #[arg(long)]
    quiet: bool,
}

#[derive(clap::Args)]
struct BenchArgs {
    #[arg(long, value_enum)]
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
    #[arg(long, default_value = "cpu", value_parser = parse_device)]
    device: Device,
    #[arg(long, value_enum, default_value = "f32")]
    dtype: Dtype,
    #[arg(long)]
    threads: Option<usize>,
    #[arg(long, default_value_t = 2)]
    warmup: usize,
    #[arg(long, default_value_t = 10)]
    iters: usize,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

fn parse_device(s: &str) -> std::result::Result<Device, String> {
    s.parse().map_err(|e: Error| e.to_string())
}

fn main() -> ExitCode {
    quiet_mesa_device_select();
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
    let result = match cli.command {
        Command::Embed(args) => embed(args),
        Command::Bench(args) => run_bench(args),
        Command::Devices => {
            print!("{}", bge::backend::gpu::context::adapter_report());
            Ok(())
        }
    };
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

/// How many texts are embedded and written at a time: bounds memory on huge inputs.
const CHUNK: usize = 8192;

#[derive(Serialize)]
struct EmbedLine<'a> {
    dense: &'a [f32],
}

fn embed(args: EmbedArgs) -> Result<()> {
    let texts = match &args.input {
        Some(path) => {
            let file = File::open(path).map_err(|e| Error::Io {
                path: path.clone(),
                source: e,
            })?;
            read_texts(BufReader::new(file))?
        }
        None => read_texts(io::stdin().lock())?,
    };
    let options = Options {
        device: args.device,
        dtype: args.dtype,
        batch_size: args.batch_size,
        max_length: args.max_length,
        query_max_length: args.max_length,
        query_instruction: args.instruction.clone(),
        ..Options::default()
    };
    let model = FlagModel::load(&args.model, &options)?;
    let (instruction, max_length) = if args.query || args.instruction.is_some() {
        (model.query_instruction.as_deref(), model.query_max_length)
    } else {
        (None, model.max_length)
    };

    let progress = if args.quiet || !io::stderr().is_terminal() {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(texts.len() as u64).with_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} texts  {per_sec}  eta {eta}")
                .expect("valid progress template"),
        )
    };
    let mut out = Output::open(args.output.as_deref())?;
    let mut truncated = 0;
    for chunk in texts.chunks(CHUNK) {
        let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
        let dense = model.encode_with(&refs, instruction, max_length, &mut |n| {
            progress.inc(n as u64)
        })?;
        truncated += dense.truncated;
        for v in &dense.vectors {
            out.line(&EmbedLine { dense: v })?;
        }
    }
    progress.finish_and_clear();
    out.commit()?;
    if truncated > 0 && !args.quiet {
        eprintln!(
            "bge: note: {truncated} of {} texts were longer than {max_length} tokens and were truncated, as FlagEmbedding does",
            texts.len()
        );
    }
    Ok(())
}

/// Reads JSONL: each line a JSON string or an object with a string `"text"` field.
fn read_texts(reader: impl BufRead) -> Result<Vec<String>> {
    let mut texts = Vec::new();
    for (i, line) in reader.split(b'\n').enumerate() {
        let number = i + 1;
        let bad = |message: String| Error::InputLine {
            line: number,
            message,
        };
        let mut bytes = line.map_err(|e| bad(e.to_string()))?;
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
        let line = String::from_utf8(bytes).map_err(|_| bad("not valid UTF-8".into()))?;
        let value: serde_json::Value =
            serde_json::from_str(&line).map_err(|e| bad(format!("not valid JSON ({e})")))?;
        let text = match value {
            serde_json::Value::String(s) => s,
            serde_json::Value::Object(mut m) => match m.remove("text") {
                Some(serde_json::Value::String(s)) => s,
                _ => return Err(bad("the object has no string field \"text\"".into())),
            },
            _ => {
                return Err(bad(
                    "expected a JSON string or an object with a \"text\" field".into(),
                ));
            }
        };
        texts.push(text);
    }
    Ok(texts)
}

/// stdout, or a file written under a temporary name and renamed into place on success, so a
/// failed run never leaves a partial output file behind.
struct Output {
    writer: BufWriter<Box<dyn Write>>,
    file: Option<(PathBuf, PathBuf)>,
}

impl Output {
    fn open(path: Option<&Path>) -> Result<Self> {
        let Some(path) = path else {
            return Ok(Output {
                writer: BufWriter::new(Box::new(io::stdout().lock())),
                file: None,
            });
        };
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".partial");
        let tmp = PathBuf::from(tmp);
        let file = File::create(&tmp).map_err(|e| Error::Io {
            path: tmp.clone(),
            source: e,
        })?;
        Ok(Output {
            writer: BufWriter::new(Box::new(file)),
            file: Some((tmp, path.to_owned())),
        })
    }

    fn line(&mut self, value: &impl Serialize) -> Result<()> {
        serde_json::to_writer(&mut self.writer, value).map_err(|e| self.error(e.into()))?;
        self.writer.write_all(b"\n").map_err(|e| self.error(e))
    }

    fn commit(mut self) -> Result<()> {
        self.writer.flush().map_err(|e| self.error(e))?;
        if let Some((tmp, path)) = self.file.take() {
            std::fs::rename(&tmp, &path).map_err(|e| Error::Io { path, source: e })?;
        }
        Ok(())
    }

    fn error(&self, source: io::Error) -> Error {
        let path = self
            .file
            .as_ref()
            .map_or_else(|| PathBuf::from("<stdout>"), |(_, p)| p.clone());
        Error::Io { path, source }
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        if let Some((tmp, _)) = &self.file {
            let _ = std::fs::remove_file(tmp);
        }
    }
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
    };
    let line = bench::run(&spec)?;
    println!("{line}");
    Ok(())
}
