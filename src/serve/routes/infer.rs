//! What every handler shares: checking a request's texts, taking its permits, tokenizing on a
//! blocking worker, queueing for the model, and TEI's timing headers on the answer.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use tokio::sync::OwnedSemaphorePermit;

use crate::heads::HeadSet;
use crate::serve::App;
use crate::serve::errors::ApiError;
use crate::serve::served::{Kind, Prompt, Refusal, Served, Text, TextOutput};
use crate::serve::types::*;
use crate::tokenize::{Encoded, Side};

/// The outputs of a request's texts, and TEI's timing headers.
pub(super) struct Answer {
    pub outputs: Vec<TextOutput>,
    pub tokens: usize,
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
    pub(super) fn respond(&self, body: impl IntoResponse) -> Response {
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
    pub(super) fn texts(&self, inputs: Inputs) -> Result<Vec<Text>, ApiError> {
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

    pub(super) fn check_count(&self, n: usize, what: &str) -> Result<(), ApiError> {
        let max = self.options.max_client_batch_size;
        match n {
            0 => Err(ApiError::empty(format!("`{what}` cannot be empty"))),
            n if n > max => Err(ApiError::validation(format!(
                "`{what}` holds {n} items, more than the server's --max-client-batch-size of {max}"
            ))),
            _ => Ok(()),
        }
    }

    pub(super) fn truncate(&self, asked: Option<bool>) -> bool {
        asked.unwrap_or(self.options.auto_truncate)
    }

    /// A permit per text: 429 at once when there are not enough free, 422 for more texts than
    /// the server ever takes at once.
    pub(super) fn permits(&self, texts: usize) -> Result<OwnedSemaphorePermit, ApiError> {
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
    pub(super) async fn infer(
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
    pub(super) async fn embed_texts(
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
    pub(super) fn kind(&self, heads: HeadSet, normalize: bool) -> Kind {
        Kind::Embed { heads, normalize }
    }

    /// `dimensions`, checked against the model's vector size.
    pub(super) fn dimensions(&self, asked: Option<usize>) -> Result<Option<usize>, ApiError> {
        let size = self.served.hidden_size();
        match asked {
            Some(d) if d == 0 || d > size => Err(ApiError::validation(format!(
                "`dimensions` must be in 1..={size}, the model's vector size; got {d}"
            ))),
            other => Ok(other),
        }
    }
}
