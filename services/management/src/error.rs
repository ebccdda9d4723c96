//! The one error type of the HTTP API: every failure becomes
//! `{"error":{"code","message"}}` with the right status (SPEC §8), plus
//! fields that say more where there are some (e.g. `violations`).

use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use zerofoot_shared::protocol::RemoteError;

#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
    /// More fields of the `error` object.
    pub details: serde_json::Map<String, serde_json::Value>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            code: code.to_string(),
            message: message.into(),
            details: serde_json::Map::new(),
        }
    }
    /// Adds a field to the `error` object.
    pub fn with(mut self, field: &str, value: serde_json::Value) -> Self {
        self.details.insert(field.to_string(), value);
        self
    }
    pub fn bad_request(code: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
    pub fn not_found(code: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, code, message)
    }
    pub fn unprocessable(code: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, code, message)
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }
    /// An unexpected failure: logged here with its detail, answered as 500.
    pub fn internal(context: &str, err: impl std::fmt::Display) -> Self {
        tracing::error!(error = %err, "{context}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("{context}: {err}"),
        )
    }
    /// NATS or JetStream did not answer: the cluster, not the request, is at fault.
    pub fn nats(context: &str, err: impl std::fmt::Display) -> Self {
        tracing::warn!(error = %err, "{context}");
        Self::unavailable(format!("{context}: {err}; check that nats-server is up"))
    }
}

impl From<RemoteError> for ApiError {
    fn from(e: RemoteError) -> Self {
        let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        Self::new(status, &e.code, e.message)
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        match rejection {
            JsonRejection::JsonDataError(e) => Self::bad_request(
                "invalid_body",
                format!("the body does not fit: {}", e.body_text()),
            ),
            JsonRejection::JsonSyntaxError(e) => Self::bad_request(
                "invalid_json",
                format!("the body is not valid JSON: {}", e.body_text()),
            ),
            JsonRejection::MissingJsonContentType(_) => Self::bad_request(
                "invalid_content_type",
                "send the body as JSON with Content-Type: application/json",
            ),
            JsonRejection::BytesRejection(e) => Self::new(
                e.status(),
                "unreadable_body",
                format!("cannot read the body: {}", e.body_text()),
            ),
            other => Self::bad_request("invalid_body", other.body_text()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = self.details;
        error.insert("code".into(), self.code.into());
        error.insert("message".into(), self.message.into());
        let body = serde_json::json!({ "error": error });
        (self.status, axum::Json(body)).into_response()
    }
}

/// `Json` whose rejections are [`ApiError`]s.
#[derive(axum::extract::FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

impl<T: serde::Serialize> IntoResponse for ApiJson<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}
