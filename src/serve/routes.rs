//! HTTP -> calls -> HTTP: each handler checks its request, hands the texts to
//! [`App::infer`] and shapes the outputs; nothing here computes. Also the middleware: the API
//! key, one log line and the metrics per request, and JSON answers for unknown routes and
//! panics.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine;
use tokio::sync::OwnedSemaphorePermit;
use tower_http::catch_panic::CatchPanicLayer;

use super::App;
use super::errors::{ApiError, JsonBody, OpenAi};
use super::metrics::Gauges;
use super::served::{Kind, Prompt, Refusal, Served, Text, TextOutput};
use super::types::*;
use crate::TextEmbeddings;
use crate::heads::{Head, HeadSet, classifier, dense};
use crate::m3::{self, PairScores};
use crate::tokenize::{Encoded, Side};

/// Every route, and the layers around them.
pub(super) fn router(app: Arc<App>) -> Router {
    let root = match app.served.is_reranker() {
        true => post(rerank),
        false => post(embed),
    };
    Router::new()
        .route("/", root.clone())
        .route("/invocations", root)
        .route("/embed", post(embed))
        .route("/embed_sparse", post(embed_sparse))
        .route("/embed_all", post(embed_all))
        .route("/encode", post(encode))
        .route("/score", post(score))
        .route("/rerank", post(rerank))
        .route("/tokenize", post(tokenize))
        .route("/info", get(info))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/embeddings", post(openai_embeddings))
        .route("/v1/models", get(openai_models))
        .fallback(|uri: Uri| async move { in_shape(uri.path(), ApiError::not_found(uri.path())) })
        .method_not_allowed_fallback(|method: Method, uri: Uri| async move {
            let e = ApiError::method_not_allowed(method.as_str(), uri.path());
            in_shape(uri.path(), e)
        })
        // Innermost first: a panicking handler still gets its log line and metrics.
        .layer(CatchPanicLayer::custom(|_| {
            ApiError::internal("the server failed on this request").into_response()
        }))
        .layer(middleware::from_fn_with_state(Arc::clone(&app), authorize))
        .layer(middleware::from_fn_with_state(Arc::clone(&app), observe))
        .layer(DefaultBodyLimit::max(app.options.payload_limit))
        .with_state(app)
}

/// An error in the shape of the route `path` belongs to.
fn in_shape(path: &str, e: ApiError) -> Response {
    match path.starts_with("/v1/") {
        true => OpenAi(e).into_response(),
        false => e.into_response(),
    }
}

/// With `--api-key`, every route but `/health` needs `Authorization: Bearer <key>`.
async fn authorize(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    if let Some(key) = &app.options.api_key {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim());
        let path = req.uri().path();
        if path != "/health" && !given.is_some_and(|g| same_secret(g, key)) {
            return in_shape(path, ApiError::unauthorized());
        }
    }
    next.run(req).await
}

/// Compares in time that depends on the lengths only, not on where the strings differ.
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0, |d, (x, y)| d | (x ^ y)) == 0
}

/// One log line per request (method, route, status, timings; never the body), and the
/// request metrics.
async fn observe(State(app): State<Arc<App>>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let response = next.run(req).await;
    let took = start.elapsed();
    let status = response.status().as_u16();
    let route = match ROUTES.contains(&path.as_str()) {
        true => path.as_str(),
        false => "other",
    };
    app.metrics.answered(route, status, took);
    let h = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned()
    };
    tracing::info!(
        %method,
        path = route,
        status,
        total_ms = format!("{:.2}", took.as_secs_f64() * 1e3),
        tokenization_ms = h("x-tokenization-time"),
        queue_ms = h("x-queue-time"),
        inference_ms = h("x-inference-time"),
        tokens = h("x-compute-tokens"),
        "request"
    );
    response
}

const ROUTES: [&str; 14] = [
    "/",
    "/invocations",
    "/embed",
    "/embed_sparse",
    "/embed_all",
    "/encode",
    "/score",
    "/rerank",
    "/tokenize",
    "/info",
    "/health",
    "/metrics",
    "/v1/embeddings",
    "/v1/models",
];

/// The outputs of a request's texts, and TEI's timing headers.
struct Answer {
    outputs: Vec<TextOutput>,
    tokens: usize,
    characters: usize,
    tokenization: Duration,
    queue: Duration,
    inference: Duration,
    start: Instant,
}

impl Answer {
    /// `body` with `x-compute-time`, `x-compute-tokens`, `x-compute-characters`,
    /// `x-total-time`, `x-tokenization-time`, `x-queue-time` and `x-inference-time` (whole
    /// milliseconds, as TEI sends them).
    fn respond(&self, body: impl IntoResponse) -> Response {
        let ms = |d: Duration| HeaderValue::from(d.as_millis() as u64);
        let mut headers = HeaderMap::new();
        let compute = self.tokenization + self.queue + self.inference;
        headers.insert("x-compute-time", ms(compute));
        headers.insert("x-compute-tokens", HeaderValue::from(self.tokens));
        headers.insert("x-compute-characters", HeaderValue::from(self.characters));
        headers.insert("x-total-time", ms(self.start.elapsed()));
        headers.insert("x-tokenization-time", ms(self.tokenization));
        headers.insert("x-queue-time", ms(self.queue));
        headers.insert("x-inference-time", ms(self.inference));
        (headers, body).into_response()
    }
}

impl App {
    /// `inputs` as texts, refused when empty, holding an empty text, or more than
    /// `--max-client-batch-size`.
    fn texts(&self, inputs: Inputs) -> Result<Vec<Text>, ApiError> {
        let texts = inputs.0;
        self.check_count(texts.len(), "inputs")?;
        let empty = texts.iter().position(|t| match t {
            Text::Str(s) => s.is_empty(),
            Text::Ids(ids) => ids.is_empty(),
        });
        if let Some(i) = empty {
            return Err(ApiError::empty(format!("input {i} is empty")));
        }
        Ok(texts)
    }

    fn check_count(&self, n: usize, what: &str) -> Result<(), ApiError> {
        let max = self.options.max_client_batch_size;
        match n {
            0 => Err(ApiError::empty(format!("`{what}` cannot be empty"))),
            n if n > max => Err(ApiError::validation(format!(
                "`{what}` holds {n} items, more than the server's --max-client-batch-size of {max}"
            ))),
            _ => Ok(()),
        }
    }

    fn truncate(&self, asked: Option<bool>) -> bool {
        asked.unwrap_or(self.options.auto_truncate)
    }

    /// A permit per text: 429 at once when there are not enough free, 422 for more texts than
    /// the server ever takes at once.
    fn permits(&self, texts: usize) -> Result<OwnedSemaphorePermit, ApiError> {
        let limit = self.options.max_concurrent_requests;
        if texts > limit {
            return Err(ApiError::validation(format!(
                "{texts} texts are more than the server's --max-concurrent-requests of {limit}; send fewer at once"
            )));
        }
        u32::try_from(texts)
            .ok()
            .and_then(|n| Arc::clone(&self.permits).try_acquire_many_owned(n).ok())
            .ok_or_else(|| {
                ApiError::overloaded(format!(
                    "the server is overloaded: more than --max-concurrent-requests = {limit} texts would be in flight; retry later"
                ))
            })
    }

    /// Takes a permit per text (429 at once when there are not enough), tokenizes on a
    /// blocking worker with `tokenize`, queues the texts as `kind` and waits for their outputs.
    async fn infer(
        &self,
        texts: usize,
        characters: usize,
        kind: Kind,
        tokenize: impl FnOnce(&Served) -> Result<Vec<Encoded>, Refusal> + Send + 'static,
    ) -> Result<Answer, ApiError> {
        let start = Instant::now();
        let permits = self.permits(texts)?;
        let served = Arc::clone(&self.served);
        // The permits travel with the work: a client that leaves during tokenization frees
        // them only when its tokenization is done.
        let (encoded, permits) = tokio::task::spawn_blocking(move || (tokenize(&served), permits))
            .await
            .map_err(|_| ApiError::internal("tokenization failed"))?;
        let encoded = encoded?;
        let _permits = permits;
        let tokenization = start.elapsed();
        let tokens = encoded.iter().map(Encoded::len).sum();
        let ticket = self
            .batcher
            .submit(kind, encoded)
            .map_err(|_| ApiError::overloaded("the queue is full; retry later"))?;
        let done = ticket
            .wait()
            .await
            .map_err(|e| ApiError::backend(e.to_string()))?;
        let m = &self.metrics;
        m.tokenization.observe(tokenization);
        m.queue.observe(done.queue);
        m.inference.observe(done.inference);
        m.texts.fetch_add(texts as u64, Ordering::Relaxed);
        m.tokens.fetch_add(tokens as u64, Ordering::Relaxed);
        Ok(Answer {
            outputs: done.outputs,
            tokens,
            characters,
            tokenization,
            queue: done.queue,
            inference: done.inference,
            start,
        })
    }

    /// Embeds `texts` as `kind` with `prompt` (the common part of the embedding routes).
    async fn embed_texts(
        &self,
        texts: Vec<Text>,
        prompt: Prompt,
        kind: Kind,
        truncate: bool,
        side: Side,
    ) -> Result<Answer, ApiError> {
        let characters = texts
            .iter()
            .map(|t| match t {
                Text::Str(s) => s.chars().count(),
                Text::Ids(_) => 0,
            })
            .sum();
        self.infer(texts.len(), characters, kind, move |s| {
            s.tokenize(&texts, &prompt, truncate, side)
        })
        .await
    }

    /// The dense kind of the embedding routes.
    fn kind(&self, heads: HeadSet, normalize: bool) -> Kind {
        Kind::Embed { heads, normalize }
    }

    /// `dimensions`, checked against the model's vector size.
    fn dimensions(&self, asked: Option<usize>) -> Result<Option<usize>, ApiError> {
        let size = self.served.hidden_size();
        match asked {
            Some(d) if d == 0 || d > size => Err(ApiError::validation(format!(
                "`dimensions` must be in 1..={size}, the model's vector size; got {d}"
            ))),
            other => Ok(other),
        }
    }
}

/// `POST /embed`: dense vectors, `[[f32]]`.
async fn embed(
    State(app): State<Arc<App>>,
    JsonBody(req): JsonBody<EmbedRequest>,
) -> Result<Response, ApiError> {
    let kind = app.kind(Head::Dense.into(), req.normalize);
    app.served.check(kind, "/embed")?;
    let texts = app.texts(req.inputs)?;
    let prompt = app.served.prompt(req.prompt_name.as_deref())?;
    let dimensions = app.dimensions(req.dimensions)?;
    let side = req.truncation_direction.into();
    let answer = app
        .embed_texts(texts, prompt, kind, app.truncate(req.truncate), side)
        .await?;
    let vectors: Vec<Vec<f32>> = answer
        .outputs
        .iter()
        .map(|o| match dimensions {
            Some(d) => dense::shorten(o.dense.clone(), d, req.normalize),
            None => o.dense.clone(),
        })
        .collect();
    Ok(answer.respond(axum::Json(vectors)))
}

/// `POST /embed_sparse`: BGE-M3's lexical weights, `[[{"index", "value"}]]`.
async fn embed_sparse(
    State(app): State<Arc<App>>,
    JsonBody(req): JsonBody<TokensRequest>,
) -> Result<Response, ApiError> {
    let kind = app.kind(Head::Sparse.into(), app.served.normalize());
    app.served.check(kind, "/embed_sparse")?;
    let answer = tokens_route(&app, req, kind).await?;
    let weights: Vec<Vec<SparseValue>> = answer
        .outputs
        .iter()
        .map(|o| {
            let pairs = o.sparse.0.iter();
            pairs
                .map(|&(index, value)| SparseValue { index, value })
                .collect()
        })
        .collect();
    Ok(answer.respond(axum::Json(weights)))
}

/// `POST /embed_all`: BGE-M3's ColBERT vectors, `[[[f32]]]`.
async fn embed_all(
    State(app): State<Arc<App>>,
    JsonBody(req): JsonBody<TokensRequest>,
) -> Result<Response, ApiError> {
    let kind = app.kind(Head::Colbert.into(), app.served.normalize());
    app.served.check(kind, "/embed_all")?;
    let answer = tokens_route(&app, req, kind).await?;
    let vectors: Vec<&Vec<Vec<f32>>> = answer.outputs.iter().map(|o| &o.colbert).collect();
    Ok(answer.respond(axum::Json(vectors)))
}

async fn tokens_route(app: &App, req: TokensRequest, kind: Kind) -> Result<Answer, ApiError> {
    let texts = app.texts(req.inputs)?;
    let prompt = app.served.prompt(req.prompt_name.as_deref())?;
    let side = req.truncation_direction.into();
    app.embed_texts(texts, prompt, kind, app.truncate(req.truncate), side)
        .await
}

/// `POST /encode`: any of dense, sparse and ColBERT from one pass, one object per text in
/// `bge embed`'s shape.
async fn encode(
    State(app): State<Arc<App>>,
    JsonBody(req): JsonBody<EncodeRequest>,
) -> Result<Response, ApiError> {
    let heads: HeadSet = [
        (Head::Dense, req.return_dense),
        (Head::Sparse, req.return_sparse),
        (Head::Colbert, req.return_colbert_vecs),
    ]
    .into_iter()
    .filter(|&(_, asked)| asked)
    .map(|(head, _)| head)
    .collect();
    if heads.is_empty() {
        return Err(ApiError::validation(
            "ask for at least one of return_dense, return_sparse and return_colbert_vecs",
        ));
    }
    let kind = app.kind(heads, app.served.normalize());
    app.served.check(kind, "/encode")?;
    let texts = app.texts(req.inputs)?;
    let prompt = app.served.prompt(req.prompt_name.as_deref())?;
    let side = req.truncation_direction.into();
    let answer = app
        .embed_texts(texts, prompt, kind, app.truncate(req.truncate), side)
        .await?;
    let lines: Vec<TextEmbeddings> = answer
        .outputs
        .iter()
        .map(|o| text_embeddings(o, heads))
        .collect();
    Ok(answer.respond(axum::Json(lines)))
}

/// A text's outputs as `bge embed` writes them: exactly the heads asked for.
fn text_embeddings(o: &TextOutput, heads: HeadSet) -> TextEmbeddings<'_> {
    TextEmbeddings {
        dense: heads.contains(Head::Dense).then_some(o.dense.as_slice()),
        sparse: heads.contains(Head::Sparse).then_some(&o.sparse),
        colbert: heads
            .contains(Head::Colbert)
            .then_some(o.colbert.as_slice()),
    }
}

/// `POST /score`: BGE-M3's five `compute_score` values for the query with each text.
async fn score(
    State(app): State<Arc<App>>,
    JsonBody(req): JsonBody<ScoreRequest>,
) -> Result<Response, ApiError> {
    let all = [Head::Dense, Head::Sparse, Head::Colbert]
        .into_iter()
        .collect();
    let kind = app.kind(all, app.served.normalize());
    app.served.check(kind, "/score")?;
    app.check_count(req.texts.len(), "texts")?;
    let weights = req.weights.unwrap_or(m3::DEFAULT_WEIGHTS);
    m3::check_weights(weights).map_err(|e| ApiError::validation(e.to_string()))?;
    if req.query.is_empty() || req.texts.iter().any(String::is_empty) {
        return Err(ApiError::empty(
            "the query and every text must be non-empty",
        ));
    }
    let truncate = app.truncate(req.truncate);
    let characters =
        req.query.chars().count() + req.texts.iter().map(|t| t.chars().count()).sum::<usize>();
    // The query first, at the query max length; then the passages: compute_score's way.
    let (query_prompt, passage_prompt) =
        (app.served.prompt(Some("query"))?, app.served.prompt(None)?);
    let query_prompt = Prompt {
        instruction: None,
        ..query_prompt
    };
    let (query, texts) = (req.query, req.texts);
    let n = texts.len();
    let answer = app
        .infer(n + 1, characters, kind, move |s| {
            let mut encoded =
                s.tokenize(&[Text::Str(query)], &query_prompt, truncate, Side::Right)?;
            let texts: Vec<Text> = texts.into_iter().map(Text::Str).collect();
            encoded.extend(s.tokenize(&texts, &passage_prompt, truncate, Side::Right)?);
            Ok(encoded)
        })
        .await?;
    let (q, passages) = answer
        .outputs
        .split_first()
        .ok_or_else(|| ApiError::internal("no query output"))?;
    let scores: Vec<PairScores> = passages
        .iter()
        .map(|p| PairScores::of(text_embeddings(q, all), text_embeddings(p, all), weights))
        .collect();
    Ok(answer.respond(axum::Json(scores)))
}

/// `POST /rerank`: `[{index, score, text?}]`, highest score first; the sigmoid of the logit
/// unless `raw_scores`.
async fn rerank(
    State(app): State<Arc<App>>,
    JsonBody(req): JsonBody<RerankRequest>,
) -> Result<Response, ApiError> {
    app.served.check(Kind::Classify, "/rerank")?;
    // A pair is never empty (its special tokens), so an empty query or text is scored, as
    // FlagReranker scores it.
    app.check_count(req.texts.len(), "texts")?;
    if matches!(req.truncation_direction, Direction::Left) {
        return Err(ApiError::validation(
            "/rerank cuts pairs as FlagReranker does (the passage's end): truncation_direction must be right",
        ));
    }
    let truncate = app.truncate(req.truncate);
    let characters = req.texts.iter().map(|t| t.chars().count()).sum::<usize>()
        + req.texts.len() * req.query.chars().count();
    let (query, texts) = (req.query, Arc::new(req.texts));
    let pairs = Arc::clone(&texts);
    let answer = app
        .infer(texts.len(), characters, Kind::Classify, move |s| {
            s.tokenize_pairs(&query, &pairs, truncate)
        })
        .await?;
    let mut ranks: Vec<Rank> = answer
        .outputs
        .iter()
        .enumerate()
        .map(|(index, o)| Rank {
            index,
            text: req.return_text.then(|| texts[index].clone()),
            score: classifier::score(&o.logits, !req.raw_scores),
        })
        .collect();
    ranks.sort_by(|a, b| b.score.total_cmp(&a.score).then(a.index.cmp(&b.index)));
    Ok(answer.respond(axum::Json(ranks)))
}

/// `POST /tokenize`: each text's tokens, `[[{id, text, special, start, stop}]]`.
async fn tokenize(
    State(app): State<Arc<App>>,
    JsonBody(req): JsonBody<TokenizeRequest>,
) -> Result<Response, ApiError> {
    let texts = app.texts(req.inputs)?;
    let prompt = match &req.prompt_name {
        Some(name) => app.served.prompt(Some(name))?,
        None => Prompt {
            instruction: None,
            max_length: app.served.max_input_length(),
        },
    };
    let strings = texts
        .into_iter()
        .map(|t| match t {
            Text::Str(s) => Ok(s),
            Text::Ids(_) => Err(ApiError::validation("/tokenize takes texts, not token ids")),
        })
        .collect::<Result<Vec<String>, _>>()?;
    let permits = app.permits(strings.len())?;
    let served = Arc::clone(&app.served);
    let add = req.add_special_tokens;
    let tokens = tokio::task::spawn_blocking(move || {
        let _permits = permits;
        strings
            .iter()
            .map(|s| served.tokens(s, &prompt, add))
            .collect::<Result<Vec<_>, Refusal>>()
    })
    .await
    .map_err(|_| ApiError::internal("tokenization failed"))??;
    Ok(axum::Json(tokens).into_response())
}

/// `GET /info`: TEI's fields, and the device, outputs and prompt names.
async fn info(State(app): State<Arc<App>>) -> Response {
    let s = &app.served;
    let o = &app.options;
    let model_type = match s.pooling() {
        Some(pooling) => serde_json::json!({"embedding": {"pooling": pooling}}),
        None => serde_json::json!({"reranker": {"id2label": {"0": "LABEL_0"}}}),
    };
    let outputs = s.heads().iter().map(|h| h.name()).collect();
    axum::Json(Info {
        model_id: app.model_name.clone(),
        model_sha: None,
        model_dtype: o.dtype.to_string(),
        model_type,
        max_concurrent_requests: o.max_concurrent_requests,
        max_input_length: s.max_input_length(),
        max_batch_tokens: o.max_batch_tokens,
        max_batch_requests: None,
        max_client_batch_size: o.max_client_batch_size,
        auto_truncate: o.auto_truncate,
        tokenization_workers: app.tokenization_workers,
        version: env!("CARGO_PKG_VERSION"),
        device: s.describe(),
        outputs,
        prompt_names: match s.is_reranker() {
            true => Vec::new(),
            false => s.prompt_names(),
        },
    })
    .into_response()
}

/// `GET /health`: 200 while the inference worker runs, 503 otherwise.
async fn health(State(app): State<Arc<App>>) -> Response {
    match app.batcher.is_running() {
        true => StatusCode::OK.into_response(),
        false => ApiError::unhealthy("the inference worker has stopped").into_response(),
    }
}

/// `GET /metrics`: Prometheus' text format.
async fn metrics(State(app): State<Arc<App>>) -> Response {
    let gauges = Gauges {
        queued_texts: app.batcher.queued(),
        in_flight_texts: app.options.max_concurrent_requests - app.permits.available_permits(),
        max_concurrent_requests: app.options.max_concurrent_requests,
    };
    let text = app.metrics.render(app.batcher.stats(), &gauges);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}

/// `POST /v1/embeddings`: OpenAI's embeddings API.
async fn openai_embeddings(
    State(app): State<Arc<App>>,
    body: Result<JsonBody<OpenAiRequest>, ApiError>,
) -> Result<Response, OpenAi> {
    let JsonBody(req) = body?;
    let kind = app.kind(Head::Dense.into(), app.served.normalize());
    app.served.check(kind, "/v1/embeddings")?;
    let texts = app.texts(req.input)?;
    let dimensions = app.dimensions(req.dimensions)?;
    let prompt = app.served.prompt(None)?;
    let answer = app
        .embed_texts(texts, prompt, kind, app.options.auto_truncate, Side::Right)
        .await?;
    let data = answer
        .outputs
        .iter()
        .enumerate()
        .map(|(index, o)| {
            let v = match dimensions {
                Some(d) => dense::shorten(o.dense.clone(), d, app.served.normalize()),
                None => o.dense.clone(),
            };
            let embedding = match req.encoding_format {
                Format::Float => OpenAiVector::Float(v),
                Format::Base64 => {
                    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                    OpenAiVector::Base64(base64::engine::general_purpose::STANDARD.encode(bytes))
                }
            };
            OpenAiEmbedding {
                object: "embedding",
                index,
                embedding,
            }
        })
        .collect();
    let body = OpenAiResponse {
        object: "list",
        data,
        model: app.model_name.clone(),
        usage: OpenAiUsage {
            prompt_tokens: answer.tokens,
            total_tokens: answer.tokens,
        },
    };
    Ok(answer.respond(axum::Json(body)))
}

/// `GET /v1/models`: the one model served.
async fn openai_models(State(app): State<Arc<App>>) -> Response {
    let model = OpenAiModel {
        id: app.model_name.clone(),
        object: "model",
        created: app.started,
        owned_by: "bge",
    };
    axum::Json(serde_json::json!({"object": "list", "data": [model]})).into_response()
}
