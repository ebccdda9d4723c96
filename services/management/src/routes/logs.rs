//! `GET /v1/operations/{id}/logs`: the log lines an operation's drivers
//! wrote (and the tails of their stderr), masked by the node that ran them
//! and capped per operation ([`zerofoot_shared::oplog`]). JSON pages
//! (`?after=&limit=`, `after` being a line's `seq`) or, with
//! `Accept: text/event-stream`, a live SSE stream of `log` events whose ids
//! are those seqs, resumable with `Last-Event-ID`.

use std::collections::HashMap;

use axum::extract::{Extension, Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::Event as SseEvent;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use zerofoot_shared::oplog::{self, LogLine};

use super::live;
use crate::auth::ApiClient;
use crate::error::{ApiError, ApiJson};
use crate::startup::AppState;

pub async fn logs(
    State(state): State<AppState>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    Extension(client): Extension<ApiClient>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let op = super::operations::parse_id(&id)?;
    let nats = state.nats()?;
    super::operations::load(nats, &op).await?;
    let subject = state.names().op_logs(&op.to_string());
    let after = live::after(&query, &headers)?;

    if live::wants_stream(&headers) {
        return live::stream(
            &state,
            &client,
            &nats.assets.logs,
            subject,
            after + 1,
            |position, payload| {
                LogLine::decode(position, payload)
                    .map(|line| {
                        live::sse_json(
                            SseEvent::default().id(position.to_string()).event("log"),
                            &line,
                        )
                    })
                    .into_iter()
                    .collect()
            },
        )
        .await;
    }

    let limit = live::limit(&query)?;
    let lines = oplog::read(&nats.assets.logs, &subject, after, limit)
        .await
        .map_err(|e| ApiError::nats("cannot read the operation's log", e))?;
    Ok(ApiJson(json!({"logs": lines})).into_response())
}
