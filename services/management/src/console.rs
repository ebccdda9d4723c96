//! The web console: plain HTML, CSS and JavaScript modules from
//! `services/management/console/`, compiled into the binary and served on
//! the API's own origin at `/` and `/console/<file>`. The files hold no data
//! (the page reads everything from the API with the token the user gives
//! it), so they load without a token (see [`serves`] and `auth::authorize`).
//! Nothing is fetched from elsewhere: the Content-Security-Policy allows
//! this origin only, so the console works offline and a script injected
//! into it could not send anything away.

use std::sync::OnceLock;

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::error::ApiError;
use crate::startup::AppState;

/// One file of the console.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

macro_rules! assets {
    ($($name:literal => $content_type:literal,)*) => {
        /// Every file the console is made of, by name under `/console/`.
        const ASSETS: &[Asset] = &[$(Asset {
            name: $name,
            content_type: $content_type,
            body: include_bytes!(concat!("../console/", $name)),
        },)*];
    };
}

assets! {
    "index.html" => "text/html; charset=utf-8",
    "style.css" => "text/css; charset=utf-8",
    "icon.svg" => "image/svg+xml",
    "boot.js" => "text/javascript; charset=utf-8",
    "app.js" => "text/javascript; charset=utf-8",
    "api.js" => "text/javascript; charset=utf-8",
    "dom.js" => "text/javascript; charset=utf-8",
    "stream.js" => "text/javascript; charset=utf-8",
    "schema-form.js" => "text/javascript; charset=utf-8",
    "view-login.js" => "text/javascript; charset=utf-8",
    "view-cluster.js" => "text/javascript; charset=utf-8",
    "view-operations.js" => "text/javascript; charset=utf-8",
    "view-operation.js" => "text/javascript; charset=utf-8",
    "view-modules.js" => "text/javascript; charset=utf-8",
    "view-resources.js" => "text/javascript; charset=utf-8",
}

/// This origin only; no inline script or style, no framing, no form posts
/// (forms are sent by the scripts, with the token, as JSON).
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
img-src 'self'; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Whether `path` is one of the console's (none of them needs a token).
pub fn serves(path: &str) -> bool {
    path == "/" || path.starts_with("/console/")
}

/// The routes of the console, to merge with the API's.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(index))
        .route("/console/{file}", get(file))
}

async fn index(headers: HeaderMap) -> Response {
    match find("index.html") {
        Some(asset) => respond(asset, &headers),
        None => missing("index.html"),
    }
}

async fn file(Path(name): Path<String>, headers: HeaderMap) -> Response {
    match find(&name) {
        Some(asset) => respond(asset, &headers),
        None => missing(&name),
    }
}

/// The asset called `name` and its entity tag.
fn find(name: &str) -> Option<(&'static Asset, &'static str)> {
    static TAGS: OnceLock<Vec<String>> = OnceLock::new();
    let tags = TAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|asset| {
                let digest = zerofoot_shared::bundle::digest(asset.body);
                let hex = digest.trim_start_matches("sha256:");
                format!("\"{}\"", &hex[..hex.len().min(20)])
            })
            .collect()
    });
    let index = ASSETS.iter().position(|asset| asset.name == name)?;
    Some((&ASSETS[index], tags[index].as_str()))
}

/// The file, or 304 when the browser's copy is current. Browsers revalidate
/// every time (`no-cache`): the names carry no version, and a new binary
/// must not leave a page running an old script against a new API.
fn respond((asset, tag): (&'static Asset, &'static str), request: &HeaderMap) -> Response {
    let current = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag || t.trim() == "*"));
    let mut headers = HeaderMap::new();
    let fixed = [
        (header::CACHE_CONTROL, "no-cache"),
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::X_FRAME_OPTIONS, "DENY"),
        (
            HeaderName::from_static("cross-origin-opener-policy"),
            "same-origin",
        ),
    ];
    for (name, value) in fixed {
        headers.insert(name, HeaderValue::from_static(value));
    }
    headers.insert(header::ETAG, HeaderValue::from_static(tag));
    if current {
        return (StatusCode::NOT_MODIFIED, headers).into_response();
    }
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    (headers, asset.body).into_response()
}

fn missing(name: &str) -> Response {
    let shown: String = name.chars().take(100).collect();
    ApiError::not_found(
        "no_such_file",
        format!("the console has no file {shown:?}; open / for the console"),
    )
    .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(asset: &Asset) -> &'static str {
        std::str::from_utf8(asset.body).expect("assets are UTF-8 text")
    }

    /// A file added to the folder but not to [`ASSETS`] would be a 404 in
    /// the browser, and one listed but gone fails the build already.
    #[test]
    fn every_file_of_the_folder_is_served() {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/console");
        let mut on_disk: Vec<String> = std::fs::read_dir(dir)
            .expect("the console folder")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        on_disk.sort();
        let mut served: Vec<String> = ASSETS.iter().map(|a| a.name.to_string()).collect();
        served.sort();
        assert_eq!(on_disk, served);
    }

    /// The console works offline and the policy would block anything else.
    #[test]
    fn nothing_comes_from_elsewhere() {
        for asset in ASSETS {
            let body = text(asset);
            for needle in ["http://", "https://", "//cdn", "innerHTML", "eval("] {
                let allowed = asset.name == "icon.svg" && needle == "http://";
                assert!(
                    allowed || !body.contains(needle),
                    "{} contains {needle}",
                    asset.name
                );
            }
        }
    }

    /// Every module a script imports and every file the page names is served.
    #[test]
    fn every_reference_is_an_asset() {
        let names: Vec<&str> = ASSETS.iter().map(|a| a.name).collect();
        for asset in ASSETS {
            let body = text(asset);
            let mut references = Vec::new();
            for line in body.lines() {
                if let Some((_, rest)) = line.split_once("from './") {
                    references.extend(rest.split('\'').next());
                }
                for (_, rest) in line
                    .match_indices("/console/")
                    .map(|(i, _)| line.split_at(i))
                {
                    let rest = &rest["/console/".len()..];
                    references.extend(rest.split(['"', '\'', ' ', '>']).next());
                }
            }
            for reference in references {
                assert!(
                    names.contains(&reference),
                    "{} names {reference}, which is not served",
                    asset.name
                );
            }
        }
    }

    #[tokio::test]
    async fn files_come_with_their_type_policy_and_tag() {
        let asset = find("app.js").expect("app.js");
        let response = respond(asset, &HeaderMap::new());
        assert_eq!(response.status(), StatusCode::OK);
        let headers = response.headers();
        assert_eq!(
            headers[header::CONTENT_TYPE],
            "text/javascript; charset=utf-8"
        );
        assert!(headers[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .expect("ascii")
            .contains("default-src 'none'"));
        let tag = headers[header::ETAG].clone();
        let mut again = HeaderMap::new();
        again.insert(header::IF_NONE_MATCH, tag);
        let response = respond(asset, &again);
        assert_eq!(response.status(), StatusCode::NOT_MODIFIED);
        assert!(find("../Cargo.toml").is_none());
        assert!(serves("/") && serves("/console/app.js"));
        assert!(!serves("/v1/cluster") && !serves("/consoles"));
    }
}
