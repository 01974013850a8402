//! One JSON shape for every error: TEI's `{"error": ..., "error_type": ...}` on its routes
//! and bge's, OpenAI's `{"error": {"message", "type", "param", "code"}}` under `/v1/`. Body
//! rejections (a malformed or oversized body, a wrong type) go through [`JsonBody`], so none
//! of axum's plain-text rejections reach a client.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde_json::json;

use super::served::Refusal;

/// TEI's error types; each has its status code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ErrorType {
    /// A request that is wrong: 422 (413 for an oversized body, 400 for an unreadable one).
    Validation,
    /// No input at all: 422.
    Empty,
    /// More texts in flight than the server takes: 429.
    Overloaded,
    /// The model cannot do what the route does, or inference failed: 424.
    Backend,
    /// A missing or wrong API key: 401.
    Unauthorized,
    /// No such route: 404 (405 for a wrong method).
    NotFound,
    /// The server cannot serve at all (its worker stopped): 503.
    Unhealthy,
}

impl ErrorType {
    fn name(self) -> &'static str {
        match self {
            ErrorType::Validation => "Validation",
            ErrorType::Empty => "Empty",
            ErrorType::Overloaded => "Overloaded",
            ErrorType::Backend => "Backend",
            ErrorType::Unauthorized => "Unauthorized",
            ErrorType::NotFound => "NotFound",
            ErrorType::Unhealthy => "Unhealthy",
        }
    }
}

/// An error answer, rendered in TEI's shape (see [`OpenAi`] for OpenAI's).
#[derive(Debug)]
pub(crate) struct ApiError {
    pub status: StatusCode,
    pub error_type: ErrorType,
    pub message: String,
}

impl ApiError {
    fn new(status: StatusCode, error_type: ErrorType, message: impl Into<String>) -> Self {
        ApiError {
            status,
            error_type,
            message: message.into(),
        }
    }

    pub fn validation(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            ErrorType::Validation,
            message,
        )
    }

    pub fn empty(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, ErrorType::Empty, message)
    }

    pub fn overloaded(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            ErrorType::Overloaded,
            message,
        )
    }

    pub fn backend(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FAILED_DEPENDENCY, ErrorType::Backend, message)
    }

    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            ErrorType::Unauthorized,
            "a valid API key is required: send `Authorization: Bearer <key>`",
        )
    }

    pub fn not_found(path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            ErrorType::NotFound,
            format!("no route {path}"),
        )
    }

    pub fn method_not_allowed(method: &str, path: &str) -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            ErrorType::NotFound,
            format!("{path} does not take {method}"),
        )
    }

    pub fn unhealthy(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            ErrorType::Unhealthy,
            message,
        )
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            ErrorType::Backend,
            message,
        )
    }
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::Invalid(m) => ApiError::validation(m),
            Refusal::Unsupported(m) => ApiError::backend(m),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": self.message, "error_type": self.error_type.name()});
        with_retry_after(
            self.error_type,
            (self.status, axum::Json(body)).into_response(),
        )
    }
}

/// An overloaded answer says when to come back (`Retry-After`, which OpenAI's and other
/// clients honour): in a second, by when the texts in flight are usually done.
fn with_retry_after(error_type: ErrorType, mut response: Response) -> Response {
    if error_type == ErrorType::Overloaded {
        let headers = response.headers_mut();
        headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    response
}

/// An [`ApiError`] in OpenAI's shape, for `/v1/`.
pub(crate) struct OpenAi(pub ApiError);

impl From<ApiError> for OpenAi {
    fn from(e: ApiError) -> Self {
        OpenAi(e)
    }
}

impl From<Refusal> for OpenAi {
    fn from(r: Refusal) -> Self {
        OpenAi(r.into())
    }
}

impl IntoResponse for OpenAi {
    fn into_response(self) -> Response {
        let e = self.0;
        // OpenAI's own types and codes (its Python client raises by status code).
        let (kind, code) = match e.error_type {
            ErrorType::Overloaded => ("requests", Some("rate_limit_exceeded")),
            ErrorType::Unauthorized => ("invalid_request_error", Some("invalid_api_key")),
            ErrorType::NotFound => ("invalid_request_error", Some("not_found")),
            ErrorType::Backend | ErrorType::Unhealthy => ("server_error", None),
            ErrorType::Validation | ErrorType::Empty => ("invalid_request_error", None),
        };
        // Only an empty input is known to be about `input`; other messages name their field.
        let param = (e.error_type == ErrorType::Empty).then_some("input");
        let body =
            json!({"error": {"message": e.message, "type": kind, "param": param, "code": code}});
        with_retry_after(e.error_type, (e.status, axum::Json(body)).into_response())
    }
}

/// A JSON request body of type `T`. Its content type is not checked (`curl -d` sends
/// `application/x-www-form-urlencoded`); a body over the payload limit is 413, an unreadable
/// one 400, and one that is not JSON of the right shape 422 with the path of the field at
/// fault.
pub(crate) struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            let status = e.status();
            match status {
                StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
                    status,
                    ErrorType::Validation,
                    "the request body is larger than the server's --payload-limit",
                ),
                _ => ApiError::new(
                    StatusCode::BAD_REQUEST,
                    ErrorType::Validation,
                    format!("cannot read the request body: {}", e.body_text()),
                ),
            }
        })?;
        let mut de = serde_json::Deserializer::from_slice(&bytes);
        let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            match path.as_str() {
                "." | "" => ApiError::validation(format!("invalid JSON body: {inner}")),
                _ => ApiError::validation(format!("invalid JSON body: `{path}`: {inner}")),
            }
        })?;
        // Nothing but whitespace may follow the value.
        de.end()
            .map_err(|e| ApiError::validation(format!("invalid JSON body: {e}")))?;
        Ok(JsonBody(value))
    }
}
