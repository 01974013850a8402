//! TEI's routes: `/embed`, `/embed_sparse`, `/embed_all`, `/rerank`, `/tokenize`, `/info`,
//! `/health`, `/metrics` (text-embeddings-inference's `router/src/http/server.rs`).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::infer::Answer;
use crate::heads::{Head, classifier, dense};
use crate::serve::App;
use crate::serve::errors::{ApiError, JsonBody};
use crate::serve::metrics::Gauges;
use crate::serve::served::{Kind, Prompt, Refusal, Text};
use crate::serve::types::*;

/// `POST /embed`: dense vectors, `[[f32]]`.
pub(super) async fn embed(
    State(app): State<Arc<App>>,
    JsonBody(req): JsonBody<EmbedRequest>,
) -> Result<Response, ApiError> {
    let kind = app.kind(Head::Dense.into(), req.normalize);
    app.served.check(kind, "/embed")?;
    let texts = app.texts(req.inputs)?;
    let prompt = app.served.prompt(req.prompt_name.as_deref())?;
    let dimensions = app.dimensions(req.dimensions)?;
    let side = req.truncation_direction.into();
    let mut answer = app
        .embed_texts(texts, prompt, kind, app.truncate(req.truncate), side)
        .await?;
    let vectors: Vec<Vec<f32>> = std::mem::take(&mut answer.outputs)
        .into_iter()
        .map(|o| match dimensions {
            Some(d) => dense::shorten(o.dense, d, req.normalize),
            None => o.dense,
        })
        .collect();
    Ok(answer.respond(axum::Json(vectors)))
}

/// `POST /embed_sparse`: BGE-M3's lexical weights, `[[{"index", "value"}]]`.
pub(super) async fn embed_sparse(
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
pub(super) async fn embed_all(
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

/// `POST /rerank`: `[{index, score, text?}]`, highest score first; the sigmoid of the logit
/// unless `raw_scores`.
pub(super) async fn rerank(
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
pub(super) async fn tokenize(
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
pub(super) async fn info(State(app): State<Arc<App>>) -> Response {
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
pub(super) async fn health(State(app): State<Arc<App>>) -> Response {
    match app.batcher.is_running() {
        true => StatusCode::OK.into_response(),
        false => ApiError::unhealthy("the inference worker has stopped").into_response(),
    }
}

/// `GET /metrics`: Prometheus' text format.
pub(super) async fn metrics(State(app): State<Arc<App>>) -> Response {
    let gauges = Gauges {
        queued_texts: app.batcher.queued(),
        in_flight_texts: app.options.max_concurrent_requests - app.permits.available_permits(),
        max_concurrent_requests: app.options.max_concurrent_requests,
    };
    let text = app.metrics.render(app.batcher.stats(), &gauges);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response()
}
