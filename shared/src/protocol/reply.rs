//! The answer of every zerofoot request/reply endpoint: either `{"ok": ..}` or
//! `{"error": {status, code, message}}`, readable with `nats req`.

use serde::{Deserialize, Serialize};

/// An error that crossed NATS. `status` is the HTTP status management answers
/// with; `code` is a stable snake_case word; `message` says what was wrong and
/// how to fix it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RemoteError {
    pub status: u16,
    pub code: String,
    pub message: String,
}

impl RemoteError {
    pub fn new(status: u16, code: &str, message: impl Into<String>) -> Self {
        Self {
            status,
            code: code.to_string(),
            message: message.into(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum Reply<T> {
    Ok(T),
    Error(RemoteError),
}

impl<T> Reply<T> {
    pub fn into_result(self) -> Result<T, RemoteError> {
        match self {
            Reply::Ok(v) => Ok(v),
            Reply::Error(e) => Err(e),
        }
    }
}

impl<T> From<Result<T, RemoteError>> for Reply<T> {
    fn from(r: Result<T, RemoteError>) -> Self {
        match r {
            Ok(v) => Reply::Ok(v),
            Err(e) => Reply::Error(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_read_well_on_the_wire() {
        let ok: Reply<u32> = Reply::Ok(3);
        assert_eq!(serde_json::to_string(&ok).expect("json"), r#"{"ok":3}"#);
        let err: Reply<u32> = Reply::Error(RemoteError::new(404, "not_found", "no module x"));
        assert_eq!(
            serde_json::to_string(&err).expect("json"),
            r#"{"error":{"status":404,"code":"not_found","message":"no module x"}}"#
        );
    }
}
