//! bge's own routes: `/encode` (any of BGE-M3's outputs from one pass, in `bge embed`'s shape)
//! and `/score` (BGE-M3's `compute_score`).

use std::sync::Arc;

use axum::extract::State;
use axum::response::Response;

use crate::TextEmbeddings;
use crate::heads::{Head, HeadSet};
use crate::m3::{self, PairScores};
use crate::serve::App;
use crate::serve::errors::{ApiError, JsonBody};
use crate::serve::served::{Prompt, Text, TextOutput};
use crate::serve::types::*;
use crate::tokenize::Side;

/// `POST /encode`: any of dense, sparse and ColBERT from one pass, one object per text in
/// `bge embed`'s shape.
pub(super) async fn encode(
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
pub(super) async fn score(
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
