//! The one error type of the HTTP API: every failure becomes
//! `{"error":{"code","message"}}` with the right status (SPEC §8), plus
//! fields that say more where there are some (e.g. `violations`). The
//! body's type, [`ErrorBody`], is the one the OpenAPI document shows.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;
use zerofoot_shared::protocol::RemoteError;

#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub code: String,
    pub message: String,
    /// Every violation of an operation's params schema (422 `invalid_params`).
    pub violations: Option<Vec<String>>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            code: code.to_string(),
            message: message.into(),
            violations: None,
        }
    }
    /// Lists every violation of an operation's params schema.
    pub fn with_violations(mut self, violations: Vec<String>) -> Self {
        self.violations = Some(violations);
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
            JsonRejection::MissingJsonContentType(_) => Self::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
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

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        Self::bad_request(
            "invalid_path",
            format!("the path does not fit: {}", rejection.body_text()),
        )
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        Self::bad_request(
            "invalid_query",
            format!("the query string does not fit: {}", rejection.body_text()),
        )
    }
}

/// The body of every error answer. The OpenAPI document shows this type,
/// and [`ApiError`] is written through it, so the two cannot drift apart.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

/// What went wrong: a stable `code` to act on, a `message` for people, and
/// fields that say more where there are some (a client should ignore the
/// ones it does not know: more may come).
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// A stable snake_case word, e.g. `operation_not_found`.
    #[schema(pattern = "^[a-z0-9_]+$")]
    pub code: String,
    /// What was wrong and how to fix it.
    pub message: String,
    /// With 422 `invalid_params`: every way the params break the
    /// operation's schema, as `<path>: <what>`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub violations: Option<Vec<String>>,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: self.message,
                violations: self.violations,
            },
        };
        (self.status, axum::Json(body)).into_response()
    }
}

/// `Path` whose rejections are [`ApiError`]s (e.g. a segment that is not
/// UTF-8 once percent-decoded), not axum's plain-text answers.
#[derive(axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(ApiError))]
pub struct ApiPath<T>(pub T);

/// `Query` whose rejections are [`ApiError`]s.
#[derive(axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(ApiError))]
pub struct ApiQuery<T>(pub T);

/// `Json` whose rejections are [`ApiError`]s.
#[derive(axum::extract::FromRequest)]
#[from_request(via(axum::Json), rejection(ApiError))]
pub struct ApiJson<T>(pub T);

impl<T: serde::Serialize> IntoResponse for ApiJson<T> {
    fn into_response(self) -> Response {
        axum::Json(self.0).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body_of(error: ApiError) -> (StatusCode, serde_json::Value) {
        let response = error.into_response();
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("a body");
        (status, serde_json::from_slice(&bytes).expect("JSON"))
    }

    #[tokio::test]
    async fn errors_answer_with_the_documented_body() {
        let (status, body) = body_of(ApiError::not_found("x_not_found", "no x")).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(
            body,
            serde_json::json!({"error": {"code": "x_not_found", "message": "no x"}})
        );
        let (status, body) = body_of(
            ApiError::unprocessable("invalid_params", "bad")
                .with_violations(vec!["/: \"path\" is a required property".into()]),
        )
        .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(
            body["error"]["violations"],
            serde_json::json!(["/: \"path\" is a required property"])
        );
    }
}
