//! Bearer tokens with roles for the HTTP API. `viewer` reads; `operator`
//! also runs and cancels operations; `admin` also manages modules and
//! resources. `/healthz` stays open. Tokens are compared in constant time and
//! never logged. With no token configured the service only listens on a
//! loopback address, and only answers requests addressed to a loopback name
//! (`Host: localhost`, `127.x.x.x`, `[::1]`): a web page the user opens must
//! not reach the API through DNS rebinding (a name of the attacker's that
//! resolves to 127.0.0.1 would carry that name in `Host`). The web
//! console's files hold no data and load without a token from any name:
//! the page then sends the user's token with each API call, which this
//! checks as any other.

use std::path::Path;

use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::startup::AppState;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Viewer,
    Operator,
    Admin,
}

impl Role {
    fn parse(word: &str) -> Option<Self> {
        match word {
            "viewer" => Some(Self::Viewer),
            "operator" => Some(Self::Operator),
            "admin" => Some(Self::Admin),
            _ => None,
        }
    }
    pub(crate) fn name(self) -> &'static str {
        match self {
            Self::Viewer => "viewer",
            Self::Operator => "operator",
            Self::Admin => "admin",
        }
    }
}

/// The configured tokens. Debug output never shows them.
/// One configured token: its role, its bytes, and the label its operations
/// carry (the role and the start of the token's sha256, never the token).
#[derive(Clone)]
struct Token {
    role: Role,
    secret: Vec<u8>,
    label: String,
}

#[derive(Clone, Default)]
pub struct Tokens(Vec<Token>);

/// Who sent a request, as operations record it and as the per-client limit
/// counts it: a token's label, or `local` for loopback without tokens.
#[derive(Clone, Debug)]
pub struct ApiClient(pub String);

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokens({} configured)", self.0.len())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    #[error("token entry {0} is invalid: write ROLE:TOKEN with ROLE admin, operator or viewer and a token of at least 16 characters")]
    Entry(usize),
    #[error("cannot read the tokens file {0}: {1}")]
    File(String, std::io::Error),
}

impl Tokens {
    /// Parses `role:token` entries separated by commas or new lines; `#` starts a comment.
    pub fn parse(text: &str) -> Result<Self, TokensError> {
        let mut tokens = Vec::new();
        let entries = text
            .split(['\n', ','])
            .map(|e| e.split('#').next().unwrap_or("").trim())
            .filter(|e| !e.is_empty());
        for (index, entry) in entries.enumerate() {
            let (role, token) = entry.split_once(':').ok_or(TokensError::Entry(index + 1))?;
            let role = Role::parse(role.trim()).ok_or(TokensError::Entry(index + 1))?;
            let token = token.trim();
            if token.len() < 16 {
                return Err(TokensError::Entry(index + 1));
            }
            let digest = zerofoot_shared::bundle::digest(token.as_bytes());
            let hex = digest.trim_start_matches("sha256:");
            tokens.push(Token {
                role,
                secret: token.as_bytes().to_vec(),
                label: format!("{}-{}", role.name(), &hex[..12]),
            });
        }
        Ok(Self(tokens))
    }

    /// Tokens from `ZF_API_TOKENS`-style text and/or a file.
    pub fn load(inline: Option<&str>, file: Option<&Path>) -> Result<Self, TokensError> {
        let mut all = match inline {
            Some(text) => Self::parse(text)?,
            None => Self::default(),
        };
        if let Some(path) = file {
            let text = std::fs::read_to_string(path)
                .map_err(|e| TokensError::File(path.display().to_string(), e))?;
            all.0.extend(Self::parse(&text)?.0);
        }
        Ok(all)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The role of `presented`, comparing against every token in constant time.
    fn find(&self, presented: &[u8]) -> Option<&Token> {
        let mut found = None;
        for token in &self.0 {
            if constant_time_eq(&token.secret, presented) {
                found = Some(token);
            }
        }
        found
    }

    #[cfg(test)]
    fn role_of(&self, presented: &[u8]) -> Option<Role> {
        self.find(presented).map(|t| t.role)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u8 | u8::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        diff |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0);
    }
    diff == 0
}

/// The role a request needs (the OpenAPI document names it per operation).
pub(crate) fn required(method: &Method, path: &str) -> Option<Role> {
    if path == "/healthz" {
        return None;
    }
    let writes = !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS);
    Some(match (writes, path.starts_with("/v1/operations")) {
        (false, _) => Role::Viewer,
        (true, true) => Role::Operator,
        (true, false) => Role::Admin,
    })
}

/// Whether `host` (a `Host` header value or URI authority: name or
/// address, with or without a port) names this machine's loopback.
fn is_loopback_host(host: &str) -> bool {
    let host = host.trim();
    let name = if let Some(rest) = host.strip_prefix('[') {
        // [v6] or [v6]:port
        match rest.split_once(']') {
            Some((inside, after))
                if after.is_empty() || after.strip_prefix(':').is_some_and(valid_port) =>
            {
                return inside.parse::<std::net::Ipv6Addr>().is_ok_and(|ip| {
                    ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
                });
            }
            _ => return false,
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if valid_port(port) => name,
            Some(_) => return false,
            None => host,
        }
    };
    let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
    if let Ok(ip) = name.parse::<std::net::Ipv4Addr>() {
        return ip.is_loopback();
    }
    name == "localhost"
}

fn valid_port(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) && text.parse::<u16>().is_ok()
}

/// The name a request was addressed to: `Host`, else the URI's authority
/// (absolute-form, HTTP/2); `None` for an HTTP/1.0 request without one.
fn addressed_to(request: &Request) -> Option<String> {
    match request.headers().get(header::HOST) {
        Some(value) => Some(String::from_utf8_lossy(value.as_bytes()).into_owned()),
        None => request.uri().authority().map(|a| a.as_str().to_string()),
    }
}

fn refuse_host(host: &str) -> Response {
    let shown: String = host.chars().take(100).collect();
    ApiError::new(
        StatusCode::FORBIDDEN,
        "host_not_allowed",
        format!(
            "this management instance runs without API tokens, so it only answers requests addressed to a loopback name (localhost, 127.0.0.1, [::1]), not Host {shown:?}: this keeps web pages from reaching it through DNS rebinding. Use http://127.0.0.1:<port>/ or http://localhost:<port>/ (a reverse proxy must pass such a Host), or configure API tokens (--api-tokens / ZF_API_TOKENS or --tokens-file) to serve other names"
        ),
    )
    .into_response()
}

pub async fn authorize(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    if crate::console::serves(request.uri().path()) {
        // Static files without data; every API call the page makes is checked.
        return next.run(request).await;
    }
    let tokens = state.tokens();
    if tokens.is_empty() {
        if let Some(host) = addressed_to(&request) {
            if !is_loopback_host(&host) {
                return refuse_host(&host);
            }
        }
    }
    let Some(needed) = required(request.method(), request.uri().path()) else {
        return next.run(request).await;
    };
    if tokens.is_empty() {
        // Loopback only (checked at start): the machine's users are trusted.
        request
            .extensions_mut()
            .insert(ApiClient("local".to_string()));
        return next.run(request).await;
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().as_bytes().to_vec());
    let Some(token) = presented.and_then(|t| tokens.find(&t)) else {
        let mut response = ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send a valid API token: Authorization: Bearer <token>",
        )
        .into_response();
        response.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer"),
        );
        return response;
    };
    let role = token.role;
    request
        .extensions_mut()
        .insert(ApiClient(token.label.clone()));
    if role < needed {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "the {} role may not {} {}; it needs the {} role",
                role.name(),
                request.method(),
                request.uri().path(),
                needed.name()
            ),
        )
        .into_response();
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_parse_and_roles_nest() {
        let tokens = Tokens::parse(
            "admin:aaaaaaaaaaaaaaaa, viewer:vvvvvvvvvvvvvvvv # reader\noperator:oooooooooooooooo",
        )
        .expect("parse");
        assert_eq!(tokens.role_of(b"aaaaaaaaaaaaaaaa"), Some(Role::Admin));
        assert_eq!(tokens.role_of(b"oooooooooooooooo"), Some(Role::Operator));
        assert_eq!(tokens.role_of(b"vvvvvvvvvvvvvvvv"), Some(Role::Viewer));
        assert_eq!(tokens.role_of(b"vvvvvvvvvvvvvvv"), None);
        assert_eq!(tokens.role_of(b""), None);
        assert!(Tokens::parse("root:aaaaaaaaaaaaaaaa").is_err());
        assert!(Tokens::parse("admin:short").is_err());
        assert!(!format!("{tokens:?}").contains("aaaa"), "never shown");
    }

    #[test]
    fn only_loopback_names_pass_without_tokens() {
        for host in [
            "localhost",
            "LOCALHOST:8080",
            "localhost.",
            "127.0.0.1",
            "127.0.0.1:8080",
            "127.8.9.10:1",
            "[::1]",
            "[::1]:8080",
            "[::ffff:127.0.0.1]:8080",
        ] {
            assert!(is_loopback_host(host), "{host} is loopback");
        }
        for host in [
            "evil.example",
            "evil.example:8080",
            "localhost.evil.example",
            "evillocalhost",
            "api.localhost",
            "128.0.0.1",
            "0.0.0.0:8080",
            "10.0.0.1",
            "[::2]",
            "[::1]x",
            "[::1]8080",
            "localhost:+80",
            "[::1]:99999",
            "localhost:port",
            "::1",
            "2130706433",
            "",
        ] {
            assert!(!is_loopback_host(host), "{host} is not loopback");
        }
    }

    #[test]
    fn each_route_needs_its_role() {
        assert_eq!(required(&Method::GET, "/healthz"), None);
        assert_eq!(required(&Method::GET, "/v1/modules"), Some(Role::Viewer));
        assert_eq!(
            required(&Method::POST, "/v1/operations"),
            Some(Role::Operator)
        );
        assert_eq!(
            required(&Method::DELETE, "/v1/operations/x"),
            Some(Role::Operator)
        );
        assert_eq!(required(&Method::POST, "/v1/modules"), Some(Role::Admin));
        assert_eq!(required(&Method::PUT, "/v1/resources/r"), Some(Role::Admin));
        assert!(Role::Admin > Role::Operator && Role::Operator > Role::Viewer);
    }
}
