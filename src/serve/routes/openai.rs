//! OpenAI's routes: `/v1/embeddings` and `/v1/models`.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use base64::Engine;

use crate::heads::{Head, dense};
use crate::serve::App;
use crate::serve::errors::{ApiError, JsonBody, OpenAi};
use crate::serve::types::*;
use crate::tokenize::Side;

/// `POST /v1/embeddings`: OpenAI's embeddings API.
pub(super) async fn openai_embeddings(
    State(app): State<Arc<App>>,
    body: Result<JsonBody<OpenAiRequest>, ApiError>,
) -> Result<Response, OpenAi> {
    let JsonBody(req) = body?;
    let kind = app.kind(Head::Dense.into(), app.served.normalize());
    app.served.check(kind, "/v1/embeddings")?;
    let texts = app.texts(req.input)?;
    let dimensions = app.dimensions(req.dimensions)?;
    let prompt = app.served.prompt(None)?;
    let mut answer = app
        .embed_texts(texts, prompt, kind, app.options.auto_truncate, Side::Right)
        .await?;
    let data = std::mem::take(&mut answer.outputs)
        .into_iter()
        .enumerate()
        .map(|(index, o)| {
            let v = match dimensions {
                Some(d) => dense::shorten(o.dense, d, app.served.normalize()),
                None => o.dense,
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
pub(super) async fn openai_models(State(app): State<Arc<App>>) -> Response {
    let model = OpenAiModel {
        id: app.model_name.clone(),
        object: "model",
        created: app.started,
        owned_by: "bge",
    };
    axum::Json(serde_json::json!({"object": "list", "data": [model]})).into_response()
}
