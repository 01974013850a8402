//! `bge serve`: an HTTP server that speaks TEI's API (`/embed`, `/embed_sparse`,
//! `/embed_all`, `/rerank`, `/tokenize`, `/info`, `/health`, `/metrics`), OpenAI's
//! (`/v1/embeddings`, `/v1/models`), and bge's own `/encode` (any of BGE-M3's outputs from one
//! pass) and `/score` (BGE-M3's `compute_score`).
//!
//! The layers, as in text-embeddings-inference: `types` is the wire format, `routes`
//! turns HTTP into calls and answers (one file per API), `batcher` is the queue and the inference worker
//! (it knows nothing of HTTP), `served` is the model with the library's tokenization and
//! forward pass, `errors` the one JSON error shape, `metrics` the Prometheus counters.
//!
//! A request's path: JSON body -> validation -> permits (429 when too many texts are in
//! flight) -> tokenization on a blocking worker -> the queue -> packed batches on the
//! inference thread -> the answer. A text's answer is the same bits as `bge embed` gives it,
//! whatever shares its batch.

mod batcher;
mod errors;
mod metrics;
mod routes;
mod served;
mod types;

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::error::{Error, Result};
use crate::{Device, Dtype};
use batcher::Batcher;
use metrics::Metrics;
use served::{Kind, LoadOptions, Served, TextOutput};

/// `bge serve`'s settings; `Default` gives TEI's defaults, on 127.0.0.1:8080.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// A model directory or a Hugging Face id: an embedder or a reranker.
    pub model: String,
    /// Where the model runs.
    pub device: Device,
    /// How its weights are stored.
    pub dtype: Dtype,
    /// The address to listen on.
    pub host: String,
    /// The port to listen on (0: any free port; the log says which).
    pub port: u16,
    /// The most real tokens (no padding) one batch holds.
    pub max_batch_tokens: usize,
    /// The most texts in flight; a request that would pass it gets 429 at once.
    pub max_concurrent_requests: usize,
    /// The most inputs one request may hold (422 beyond).
    pub max_client_batch_size: usize,
    /// The longest input in tokens (default: the model's, FlagModel's 512 at most); longer
    /// ones get 422 unless truncated.
    pub max_input_length: Option<usize>,
    /// Cut longer inputs instead of refusing them, unless a request says `truncate: false`.
    pub auto_truncate: bool,
    /// The largest request body in bytes (413 beyond).
    pub payload_limit: usize,
    /// When set, every route but `/health` needs `Authorization: Bearer <key>` (401).
    pub api_key: Option<String>,
    /// The model's name in `/info`, `/v1/models` and OpenAI answers (default: its directory
    /// or repository name).
    pub served_model_name: Option<String>,
    /// The instruction of `prompt_name: "query"` (default: the model's, as FlagEmbedding
    /// infers it from the name).
    pub query_instruction: Option<String>,
    /// Threads that tokenize requests (default: the CPUs, at least 1).
    pub tokenization_workers: Option<usize>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            model: String::new(),
            device: Device::Auto,
            dtype: Dtype::F32,
            host: "127.0.0.1".into(),
            port: 8080,
            max_batch_tokens: 16384,
            max_concurrent_requests: 512,
            max_client_batch_size: 64,
            max_input_length: None,
            auto_truncate: false,
            payload_limit: 2_000_000,
            api_key: None,
            served_model_name: None,
            query_instruction: None,
            tokenization_workers: None,
        }
    }
}

/// What the handlers share.
struct App {
    served: Arc<Served>,
    batcher: Batcher<Kind, TextOutput>,
    /// One permit per text in flight.
    permits: Arc<Semaphore>,
    options: ServeOptions,
    /// `options.served_model_name`, or the model's name.
    model_name: String,
    tokenization_workers: usize,
    metrics: Metrics,
    /// When the server started, in seconds since the Unix epoch (`/v1/models`' `created`).
    started: u64,
}

/// Loads the model, then serves until SIGINT or SIGTERM: it then stops accepting
/// connections, answers every request already accepted, and returns.
pub fn run(options: ServeOptions) -> Result<()> {
    init_logging();
    let check = |ok: bool, what: &str| match ok {
        true => Ok(()),
        false => Err(Error::InvalidArgument(format!("{what} must be at least 1"))),
    };
    check(options.max_batch_tokens > 0, "max batch tokens")?;
    check(
        options.max_concurrent_requests > 0,
        "max concurrent requests",
    )?;
    check(options.max_client_batch_size > 0, "max client batch size")?;
    check(options.payload_limit > 0, "payload limit")?;
    let permits = u32::try_from(options.max_concurrent_requests)
        .ok()
        .filter(|&n| n as usize <= Semaphore::MAX_PERMITS)
        .ok_or_else(|| Error::InvalidArgument("max concurrent requests is too large".into()))?;
    let tokenization_workers = options
        .tokenization_workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let served = Arc::new(Served::load(&LoadOptions {
        model: &options.model,
        device: options.device,
        dtype: options.dtype,
        max_input_length: options.max_input_length,
        query_instruction: options.query_instruction.clone(),
    })?);
    tracing::info!(
        model = served.name(),
        device = %served.describe(),
        "model loaded"
    );
    let batcher = {
        let served = Arc::clone(&served);
        Batcher::start(
            options.max_batch_tokens,
            options.max_concurrent_requests,
            Box::new(move |kind: &Kind, encoded: &[_]| served.run(kind, encoded)),
        )
    };
    let app = Arc::new(App {
        model_name: options
            .served_model_name
            .clone()
            .unwrap_or_else(|| served.name().to_owned()),
        served,
        batcher,
        permits: Arc::new(Semaphore::new(permits as usize)),
        tokenization_workers,
        metrics: Metrics::default(),
        started: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
        options,
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(tokenization_workers)
        .thread_name("bge-serve")
        .build()
        .map_err(|e| Error::Server(format!("cannot start the async runtime: {e}")))?;
    runtime.block_on(serve(Arc::clone(&app)))?;
    drop(runtime);
    // The last handler is gone with the runtime: dropping the batcher lets its worker finish.
    drop(app);
    tracing::info!("stopped");
    Ok(())
}

async fn serve(app: Arc<App>) -> Result<()> {
    let o = &app.options;
    let address = format!("{}:{}", o.host, o.port);
    let listener = tokio::net::TcpListener::bind((o.host.as_str(), o.port))
        .await
        .map_err(|e| Error::Server(format!("cannot listen on {address}: {e}")))?;
    let local: SocketAddr = listener
        .local_addr()
        .map_err(|e| Error::Server(format!("cannot listen on {address}: {e}")))?;
    tracing::info!("listening on http://{local}");
    axum::serve(listener, routes::router(Arc::clone(&app)))
        .with_graceful_shutdown(shutdown_signal())
        .await
        .map_err(|e| Error::Server(e.to_string()))
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
async fn shutdown_signal() {
    let interrupt = async {
        if tokio::signal::ctrl_c().await.is_err() {
            // No SIGINT handler could be installed: wait for SIGTERM only.
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = interrupt => {}
        _ = terminate => {}
    }
    tracing::info!("shutting down: no new connections; answering the requests already accepted");
}

/// Logs to stderr, one line per event (`RUST_LOG` filters; `info` by default).
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}
