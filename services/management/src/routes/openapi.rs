//! `GET /v1/openapi.json`: the OpenAPI 3.1 document of this HTTP API,
//! generated from the handlers' `#[utoipa::path]` annotations and the types
//! they answer with, so it describes what the code does rather than what a
//! hand-kept file remembers. Clients can be generated from it, and
//! `scripts/api-fuzz.sh` runs schemathesis against a live cluster with it:
//! every answer must match its documented status, content type and schema.
//! The tests below hold it to the router's table of endpoints
//! ([`super::ROUTES`]) and to the roles `auth.rs` asks for.

use std::sync::OnceLock;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::error::{ApiError, ErrorBody};

/// The whole API. Schemas are collected from the paths' bodies.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "zerofoot management API",
        version = env!("CARGO_PKG_VERSION"),
        description = "The HTTP API of a zerofoot cluster: modules, resources, operations (sync ones answer with a result; async ones are monitors that stream events), their events and logs, and the cluster's members.\n\n\
Errors are always `{\"error\": {\"code\", \"message\"}}` (plus fields that say more where there are some, like `violations`) with the matching status.\n\n\
Access: with tokens configured (`--api-tokens`, `--tokens-file`) every endpoint but `/healthz` needs `Authorization: Bearer <token>`; `viewer` reads, `operator` also runs and cancels operations, `admin` also manages modules and resources. Each operation's security requirement names the least role it needs. With no token configured, the instance listens only on loopback and answers, without a token, only requests addressed to a loopback name (`Host` `localhost`, `127.x.x.x`, `[::1]`).",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(
        super::health::healthz,
        crate::http_metrics::render,
        serve,
        super::cluster::show,
        super::modules::upload,
        super::modules::list,
        super::modules::show,
        super::operations::submit,
        super::operations::list,
        super::operations::show,
        super::operations::cancel,
        super::events::events,
        super::logs::logs,
        super::resources::list,
        super::resources::put,
        super::resources::get,
        super::resources::delete,
        super::resources::reseal,
    ),
    modifiers(&BearerTokens),
    tags(
        (name = "health", description = "Liveness, metrics and this document."),
        (name = "cluster", description = "Agent nodes, the lead and management instances."),
        (name = "modules", description = "Versioned modules: the code that talks to resources."),
        (name = "resources", description = "The machines, devices and APIs operations act on; secrets are write-only."),
        (name = "operations", description = "Running operations, reading their state, events and logs, cancelling them."),
    )
)]
pub struct ApiDoc;

/// Adds the bearer token scheme the operations' security requirements name.
struct BearerTokens;

impl Modify for BearerTokens {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "An API token as `Authorization: Bearer <token>`, of role `viewer`, `operator` or `admin` (each may do what the ones before it may); a requirement's list names the least role. A missing or unknown token gets 401, a role that may not gets 403. An instance without tokens needs none, but answers only on loopback.",
                    ))
                    .build(),
            ),
        );
    }
}

/// The document as JSON, made once: it cannot change while the service runs.
fn document() -> Result<&'static [u8], ApiError> {
    static DOCUMENT: OnceLock<Vec<u8>> = OnceLock::new();
    if let Some(json) = DOCUMENT.get() {
        return Ok(json);
    }
    let encode = |e: serde_json::Error| ApiError::internal("cannot encode the OpenAPI document", e);
    let mut doc = serde_json::to_value(ApiDoc::openapi()).map_err(encode)?;
    camel_case_links(&mut doc);
    let json = serde_json::to_vec(&doc).map_err(encode)?;
    Ok(DOCUMENT.get_or_init(|| json))
}

/// utoipa 5 writes a Link Object's fields in snake case (`operation_id`),
/// which no OpenAPI reader knows (fixed in utoipa 6): renames them to the
/// spec's `operationId`, `operationRef` and `requestBody`.
fn camel_case_links(doc: &mut serde_json::Value) {
    let Some(paths) = doc.get_mut("paths").and_then(|p| p.as_object_mut()) else {
        return;
    };
    let links = paths
        .values_mut()
        .filter_map(|item| item.as_object_mut())
        .flat_map(|item| item.values_mut())
        .filter_map(|operation| operation.get_mut("responses")?.as_object_mut())
        .flat_map(|responses| responses.values_mut())
        .filter_map(|response| response.get_mut("links")?.as_object_mut())
        .flat_map(|links| links.values_mut())
        .filter_map(|link| link.as_object_mut());
    for link in links {
        for (snake, camel) in [
            ("operation_id", "operationId"),
            ("operation_ref", "operationRef"),
            ("request_body", "requestBody"),
        ] {
            if let Some(value) = link.remove(snake) {
                link.insert(camel.to_string(), value);
            }
        }
    }
}

/// This document.
#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    operation_id = "openapi",
    tag = "health",
    security(("bearer" = ["viewer"])),
    responses(
        (status = 200, description = "The OpenAPI 3.1 document of this API.", body = Object, content_type = "application/json"),
        (status = 401, description = "`unauthorized`: a missing or unknown token.", body = ErrorBody),
        (status = 403, description = "`forbidden` (the token's role may not) or `host_not_allowed` (a token-less instance, not addressed to a loopback name).", body = ErrorBody),
        (status = 500, description = "`internal`: the document cannot be encoded.", body = ErrorBody),
    )
)]
pub async fn serve() -> Result<Response, ApiError> {
    let json = document()?;
    Ok(([(header::CONTENT_TYPE, "application/json")], json).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn document_json() -> Value {
        serde_json::from_slice(document().expect("the document encodes")).expect("valid JSON")
    }

    #[test]
    fn the_document_is_openapi_3_1_of_this_version() {
        let doc = document_json();
        assert_eq!(doc["openapi"], "3.1.0");
        assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));
        assert_eq!(
            doc["components"]["securitySchemes"]["bearer"]["scheme"],
            "bearer"
        );
        let error = &doc["components"]["schemas"]["ErrorDetail"];
        let required: Vec<&str> = error["required"]
            .as_array()
            .expect("required fields")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(required, ["code", "message"], "{error}");
    }

    /// Every endpoint of the router is documented, and nothing else is.
    #[test]
    fn every_route_is_documented() {
        let doc = document_json();
        let paths = doc["paths"].as_object().expect("paths");
        let mut documented = Vec::new();
        for (path, item) in paths {
            for method in item.as_object().expect("path item").keys() {
                documented.push((method.clone(), path.clone()));
            }
        }
        documented.sort();
        let mut routed: Vec<(String, String)> = super::super::ROUTES
            .iter()
            .map(|(m, p)| (m.to_string(), p.to_string()))
            .collect();
        routed.sort();
        assert_eq!(
            routed, documented,
            "the router's endpoints (routes/mod.rs) and the OpenAPI document (#[utoipa::path] in the handlers, paths(...) in routes/openapi.rs) must list the same (method, path) pairs"
        );
    }

    /// Operation ids are unique (OpenAPI requires it) and every link names one.
    #[test]
    fn operation_ids_are_unique() {
        let doc = document_json();
        let mut ids: Vec<String> = super::super::ROUTES
            .iter()
            .map(|(method, path)| {
                doc["paths"][*path][*method]["operationId"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{method} {path}: no operationId"))
                    .to_string()
            })
            .collect();
        ids.sort();
        let count = ids.len();
        ids.dedup();
        assert_eq!(ids.len(), count, "duplicate operationIds: {ids:?}");
        for (method, path) in super::super::ROUTES {
            let responses = doc["paths"][*path][*method]["responses"]
                .as_object()
                .expect("responses");
            for response in responses.values() {
                for link in response["links"]
                    .as_object()
                    .into_iter()
                    .flat_map(|l| l.values())
                {
                    let target = link["operationId"].as_str().unwrap_or_default();
                    assert!(
                        ids.iter().any(|id| id == target),
                        "{method} {path}: a link to unknown operation {target:?}"
                    );
                }
            }
        }
    }

    /// Each operation names the role `auth.rs` asks for, and documents the
    /// answers of the auth layer; only `/healthz` is open.
    #[test]
    fn every_operation_names_its_role_and_the_auth_answers() {
        let doc = document_json();
        for (method, path) in super::super::ROUTES {
            let operation = &doc["paths"][*path][*method];
            let http_method: axum::http::Method = method.to_uppercase().parse().expect("method");
            let security = &operation["security"];
            let responses = operation["responses"].as_object().expect("responses");
            assert!(
                responses.contains_key("403"),
                "{method} {path}: 403 host_not_allowed"
            );
            match crate::auth::required(&http_method, path) {
                None => assert_eq!(security, &serde_json::json!([{}]), "{method} {path}"),
                Some(role) => {
                    assert_eq!(
                        security,
                        &serde_json::json!([{"bearer": [role.name()]}]),
                        "{method} {path}"
                    );
                    assert!(responses.contains_key("401"), "{method} {path}: 401");
                }
            }
            for (status, response) in responses {
                if status != "204" {
                    assert!(
                        response["content"].is_object(),
                        "{method} {path} {status}: a body is documented"
                    );
                }
            }
        }
    }
}
