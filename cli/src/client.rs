//! The HTTP client of the management API: builds URLs from path segments
//! (escaped), sends the bearer token, and turns every answer into JSON or a
//! [`CliError`] (4xx refused, 5xx or no answer unreachable).

use std::path::Path;
use std::time::Duration;

use reqwest::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use reqwest::{Method, RequestBuilder, Response, Url};
use serde_json::Value;

use crate::error::{ApiRefusal, CliError};

/// How long to wait for a TCP (and TLS) connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a plain request may take; submissions, uploads and streams take
/// as long as they need.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// A status and the JSON body (`Null` when there is none).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
}

pub struct Api {
    http: reqwest::Client,
    base: Url,
    token: Option<HeaderValue>,
}

impl Api {
    /// `url` is the API's base URL; the token, if any, is sent with every request.
    pub fn new(url: &str, token: Option<String>) -> Result<Self, CliError> {
        let base = Url::parse(url).map_err(|e| {
            CliError::Usage(format!(
                "{url:?} is not a URL ({e}): set --url / ZF_URL to e.g. http://127.0.0.1:8080"
            ))
        })?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(CliError::Usage(format!(
                "{url:?} is not an http:// or https:// URL: set --url / ZF_URL to e.g. http://127.0.0.1:8080"
            )));
        }
        let token = token
            .map(|t| {
                let mut value = HeaderValue::from_str(&format!("Bearer {t}")).map_err(|_| {
                    CliError::Usage(
                        "the API token holds characters a header cannot carry".to_string(),
                    )
                })?;
                value.set_sensitive(true);
                Ok::<_, CliError>(value)
            })
            .transpose()?;
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("zf/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| CliError::Local(format!("cannot set up the HTTP client: {e}")))?;
        Ok(Self { http, base, token })
    }

    /// The URL of `segments` under the base URL, each segment escaped, with a query.
    pub fn url(&self, segments: &[&str], query: &[(&str, String)]) -> Url {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        if !query.is_empty() {
            url.query_pairs_mut()
                .extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
        }
        url
    }

    fn request(&self, method: Method, url: Url) -> RequestBuilder {
        let request = self.http.request(method, url);
        match &self.token {
            Some(token) => request.header(AUTHORIZATION, token.clone()),
            None => request,
        }
    }

    pub async fn get(
        &self,
        segments: &[&str],
        query: &[(&str, String)],
    ) -> Result<Value, CliError> {
        let url = self.url(segments, query);
        let request = self.request(Method::GET, url).timeout(REQUEST_TIMEOUT);
        Ok(self.send(request).await?.body)
    }

    /// A JSON body; `wait` lets the call take as long as the server needs.
    pub async fn send_json(
        &self,
        method: Method,
        segments: &[&str],
        body: &Value,
        wait: bool,
    ) -> Result<Answer, CliError> {
        let request = self.request(method, self.url(segments, &[])).json(body);
        let request = if wait {
            request
        } else {
            request.timeout(REQUEST_TIMEOUT)
        };
        self.send(request).await
    }

    pub async fn delete(&self, segments: &[&str]) -> Result<Answer, CliError> {
        let request = self
            .request(Method::DELETE, self.url(segments, &[]))
            .timeout(REQUEST_TIMEOUT);
        self.send(request).await
    }

    pub async fn post_bytes(
        &self,
        segments: &[&str],
        bytes: Vec<u8>,
        content_type: &'static str,
    ) -> Result<Answer, CliError> {
        let request = self
            .request(Method::POST, self.url(segments, &[]))
            .header(CONTENT_TYPE, content_type)
            .body(bytes);
        self.send(request).await
    }

    /// Opens a live SSE stream that starts after `last_id`; the caller reads its body.
    pub async fn open_stream(&self, segments: &[&str], last_id: u64) -> Result<Response, CliError> {
        let request = self
            .request(Method::GET, self.url(segments, &[]))
            .header(ACCEPT, "text/event-stream")
            .header("last-event-id", last_id.to_string());
        let url = request_url(&request);
        let response = request.send().await.map_err(|e| unreachable(&url, &e))?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status().as_u16();
        let text = response.text().await.unwrap_or_default();
        Err(failure(&url, status, &text))
    }

    async fn send(&self, request: RequestBuilder) -> Result<Answer, CliError> {
        let url = request_url(&request);
        let response = request.send().await.map_err(|e| unreachable(&url, &e))?;
        let status = response.status().as_u16();
        let text = response.text().await.map_err(|e| unreachable(&url, &e))?;
        if !(200..300).contains(&status) {
            return Err(failure(&url, status, &text));
        }
        let body = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).map_err(|e| CliError::Server {
                url: url.clone(),
                status,
                code: "unreadable_answer".into(),
                message: format!("the answer is not JSON ({e}): {}", clip(&text)),
            })?
        };
        Ok(Answer { status, body })
    }
}

/// The token: from `file` if given, else `ZF_TOKEN` if set and not empty.
pub fn token(file: Option<&Path>) -> Result<Option<String>, CliError> {
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).map_err(|e| {
            CliError::Usage(format!(
                "cannot read the token file {}: {e}",
                path.display()
            ))
        })?;
        let token = text.trim();
        if token.is_empty() {
            return Err(CliError::Usage(format!(
                "the token file {} is empty: write the API token into it",
                path.display()
            )));
        }
        return Ok(Some(token.to_string()));
    }
    Ok(std::env::var("ZF_TOKEN")
        .ok()
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty()))
}

fn request_url(request: &RequestBuilder) -> String {
    request
        .try_clone()
        .and_then(|r| r.build().ok())
        .map(|r| r.url().to_string())
        .unwrap_or_default()
}

/// A transport error with its causes: reqwest's own message is terse, its
/// sources say why (refused, reset, DNS, TLS).
pub fn describe(err: &reqwest::Error) -> String {
    let mut reason = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !reason.contains(&text) {
            reason = format!("{reason}: {text}");
        }
        source = cause.source();
    }
    reason
}

fn unreachable(url: &str, err: &reqwest::Error) -> CliError {
    CliError::Unreachable {
        url: url.to_string(),
        reason: describe(err),
    }
}

/// A non-2xx answer: 4xx refused (exit 3), anything else a server failure (exit 4).
fn failure(url: &str, status: u16, text: &str) -> CliError {
    let body: Value = serde_json::from_str(text).unwrap_or(Value::Null);
    let error = &body["error"];
    let code = error["code"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| format!("http_{status}"));
    let message = error["message"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| match text.trim() {
            "" => "no explanation came with it".to_string(),
            other => clip(other),
        });
    if (400..500).contains(&status) {
        let violations = error["violations"]
            .as_array()
            .map(|all| {
                all.iter()
                    .map(|v| v.as_str().map(str::to_string).unwrap_or(v.to_string()))
                    .collect()
            })
            .unwrap_or_default();
        return CliError::Refused(ApiRefusal {
            status,
            code,
            message,
            violations,
        });
    }
    CliError::Server {
        url: url.to_string(),
        status,
        code,
        message,
    }
}

fn clip(text: &str) -> String {
    let clipped: String = text.chars().take(300).collect();
    if clipped.len() < text.len() {
        format!("{clipped}...")
    } else {
        clipped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_escaped_under_the_base_path() {
        let api = Api::new("http://127.0.0.1:8080/zerofoot/", None).expect("api");
        let url = api.url(&["v1", "modules", "a b/c"], &[("after", "5".into())]);
        assert_eq!(
            url.as_str(),
            "http://127.0.0.1:8080/zerofoot/v1/modules/a%20b%2Fc?after=5"
        );
        let api = Api::new("http://localhost:8080", None).expect("api");
        assert_eq!(
            api.url(&["v1", "cluster"], &[]).as_str(),
            "http://localhost:8080/v1/cluster"
        );
        assert!(Api::new("localhost:8080", None).is_err());
        assert!(Api::new("ftp://x", None).is_err());
    }

    #[test]
    fn answers_become_errors_by_status() {
        let refused = failure(
            "u",
            422,
            r#"{"error":{"code":"invalid_params","message":"m","violations":["a","b"]}}"#,
        );
        match &refused {
            CliError::Refused(r) => {
                assert_eq!((r.status, r.code.as_str()), (422, "invalid_params"));
                assert_eq!(r.violations, vec!["a", "b"]);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(refused.exit_code(), 3);
        let proxy = failure("u", 502, "<html>bad gateway</html>");
        assert_eq!(proxy.exit_code(), 4);
        assert!(proxy.to_string().contains("bad gateway"), "{proxy}");
    }
}
