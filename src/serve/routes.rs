//! HTTP -> calls -> HTTP: the router, and the middleware around every route (the API key, one
//! log line and the metrics per request, JSON answers for unknown routes and panics). The
//! handlers are in `tei.rs`, `openai.rs` and `bge.rs`, each checking its request, handing the
//! texts to `App::infer` (`infer.rs`) and shaping the outputs; nothing here computes.

mod bge;
mod infer;
mod openai;
mod tei;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{Method, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tower_http::catch_panic::CatchPanicLayer;

use super::App;
use super::errors::{ApiError, OpenAi};

/// Every route, and the layers around them.
pub(super) fn router(app: Arc<App>) -> Router {
    let root = match app.served.is_reranker() {
        true => post(tei::rerank),
        false => post(tei::embed),
    };
    Router::new()
        .route("/", root.clone())
        .route("/invocations", root)
        .route("/embed", post(tei::embed))
        .route("/embed_sparse", post(tei::embed_sparse))
        .route("/embed_all", post(tei::embed_all))
        .route("/encode", post(bge::encode))
        .route("/score", post(bge::score))
        .route("/rerank", post(tei::rerank))
        .route("/tokenize", post(tei::tokenize))
        .route("/info", get(tei::info))
        .route("/health", get(tei::health))
        .route("/metrics", get(tei::metrics))
        .route("/v1/embeddings", post(openai::openai_embeddings))
        .route("/v1/models", get(openai::openai_models))
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
