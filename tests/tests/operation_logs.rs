//! Per-operation logs as an operator reads them: a driver's `log` lines and
//! the tail of its stderr are kept with the operation, masked, capped at the
//! newest 1000 lines, paged by `seq`, and streamed live over SSE resuming
//! right after `Last-Event-ID`.

use std::time::Duration;

use serde_json::{json, Value};
use zerofoot_tests::modules::bundle;
use zerofoot_tests::{wait_until, Cluster};

const SECRET: &str = "tok-3f9a1c77e2";

/// 1200 info lines, one warning quoting the resource's secret, then a word
/// on stderr and a result.
const CHATTY: &str = r#"#!/bin/sh
token=$(jq -r '.resource.secrets.token')
i=1
while [ "$i" -le 1200 ]; do
  echo "{\"type\":\"log\",\"level\":\"info\",\"msg\":\"line $i\"}"
  i=$((i + 1))
done
echo "{\"type\":\"log\",\"level\":\"warn\",\"msg\":\"calling with $token\"}"
echo "stderr says goodbye with $token" >&2
echo '{"type":"result","data":{"ok":true}}'
"#;

/// One log line every 20 ms, numbered, forever.
const TICKER: &str = r#"#!/bin/sh
cat >/dev/null
i=1
while true; do
  echo "{\"type\":\"log\",\"level\":\"info\",\"msg\":\"tick $i\"}"
  i=$((i + 1))
  sleep 0.02
done
"#;

async fn logs(cluster: &Cluster, op: &str, query: &str) -> Vec<Value> {
    let (status, body) = cluster
        .get(&format!("/v1/operations/{op}/logs{query}"))
        .await;
    assert_eq!(status, 200, "logs of {op}{query}: {body}");
    body["logs"].as_array().cloned().unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_lines_and_stderr_are_kept_per_operation_masked_and_capped() {
    let cluster = Cluster::start(1).await;
    cluster
        .publish(bundle(
            "chatty",
            "1.0.0",
            json!({"talk": {"kind": "sync"}}),
            CHATTY,
        ))
        .await;
    cluster.wait_module("chatty", "1.0.0").await;
    let (status, body) = cluster
        .put_json(
            "/v1/resources/api",
            &json!({"kind": "api", "secrets": {"token": SECRET}}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, ctx) = cluster
        .post_json(
            "/v1/operations",
            &json!({"module": "chatty", "operation": "talk", "resource": "api"}),
        )
        .await;
    assert_eq!(status, 200, "{ctx}");
    assert_eq!(ctx["state"], "complete", "{ctx}");
    let op = ctx["id"].as_str().expect("id").to_string();

    // The stderr tail is the last line once the driver is gone.
    let lines = wait_until(
        "the operation's log to end with its stderr tail",
        Duration::from_secs(10),
        || async {
            let lines = logs(&cluster, &op, "?limit=10000").await;
            match lines.last() {
                Some(last) if last["level"] == "stderr" => Ok(lines),
                last => Err(format!("{} lines, last {last:?}", lines.len())),
            }
        },
    )
    .await;
    assert_eq!(lines.len(), 1000, "the newest 1000 lines are kept");
    let text = serde_json::to_string(&lines).expect("encodes");
    assert!(!text.contains(SECRET), "a secret reached the log: {text}");
    let last = &lines[999];
    assert_eq!(last["msg"], "stderr says goodbye with ***", "{last}");
    assert_eq!(last["node"], cluster.node_id(0), "{last}");
    assert_eq!(lines[998]["level"], "warn");
    assert_eq!(lines[998]["msg"], "calling with ***");
    assert_eq!(
        lines[0]["msg"], "line 203",
        "the oldest lines went first (1202 written, 1000 kept)"
    );
    let seqs: Vec<u64> = lines.iter().filter_map(|l| l["seq"].as_u64()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "seqs grow: {seqs:?}");

    // A page after a seq starts right after it.
    let page = logs(&cluster, &op, &format!("?after={}&limit=5", seqs[9])).await;
    let msgs: Vec<&str> = page.iter().filter_map(|l| l["msg"].as_str()).collect();
    assert_eq!(
        msgs,
        ["line 213", "line 214", "line 215", "line 216", "line 217"]
    );

    let (status, body) = cluster
        .get(&format!("/v1/operations/{op}/logs?limit=0"))
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("limit")),
        "{body}"
    );
}

/// Reads `count` `log` events of an SSE stream: (id, msg) pairs.
async fn read_log_events(response: reqwest::Response, count: usize) -> Vec<(u64, String)> {
    zerofoot_tests::sse_frames(response, count)
        .await
        .into_iter()
        .map(|(id, line)| (id, line["msg"].as_str().unwrap_or_default().to_string()))
        .collect()
}

async fn open_log_stream(cluster: &Cluster, op: &str, last_id: Option<u64>) -> reqwest::Response {
    let mut request = cluster
        .http
        .get(cluster.url(&format!("/v1/operations/{op}/logs")))
        .header("accept", "text/event-stream");
    if let Some(id) = last_id {
        request = request.header("last-event-id", id.to_string());
    }
    let response = request.send().await.expect("open the log stream");
    assert_eq!(response.status().as_u16(), 200);
    response
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_live_log_stream_resumes_right_after_the_last_event_id() {
    let cluster = Cluster::start(1).await;
    cluster
        .publish(bundle(
            "ticker",
            "1.0.0",
            json!({"tick": {"kind": "async"}}),
            TICKER,
        ))
        .await;
    cluster.wait_module("ticker", "1.0.0").await;
    let (status, ctx) = cluster
        .post_json(
            "/v1/operations",
            &json!({"module": "ticker", "operation": "tick"}),
        )
        .await;
    assert_eq!(status, 202, "{ctx}");
    let op = ctx["id"].as_str().expect("id").to_string();

    let first = read_log_events(open_log_stream(&cluster, &op, None).await, 5).await;
    let msgs: Vec<&str> = first.iter().map(|(_, m)| m.as_str()).collect();
    assert_eq!(msgs, ["tick 1", "tick 2", "tick 3", "tick 4", "tick 5"]);

    let (last_id, _) = first[4];
    let resumed = read_log_events(open_log_stream(&cluster, &op, Some(last_id)).await, 3).await;
    let msgs: Vec<&str> = resumed.iter().map(|(_, m)| m.as_str()).collect();
    assert_eq!(msgs, ["tick 6", "tick 7", "tick 8"], "{resumed:?}");
    assert!(resumed[0].0 > last_id);

    let (status, body) = cluster
        .http
        .delete(cluster.url(&format!("/v1/operations/{op}")))
        .send()
        .await
        .map(|r| (r.status().as_u16(), ()))
        .expect("cancel");
    assert_eq!(status, 202, "{body:?}");
}
