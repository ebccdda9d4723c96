//! The stock modules as a user first runs them: shell, http-probe and
//! file-tail, stored by the repository at start.

use std::io::Write;
use std::time::Duration;

use serde_json::{json, Value};
use zerofoot_tests::{wait_until, Cluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shell_http_probe_and_file_tail_work_out_of_the_box() {
    let cluster = Cluster::start(1).await;
    for module in ["shell", "http-probe", "file-tail"] {
        cluster.wait_module(module, "1.0.0").await;
    }

    let (status, ctx) = cluster
        .post_json("/v1/operations", &json!({"module": "shell", "operation": "run", "params": {"command": "printf", "args": ["%s|%s", "a b", "$(nope)"]}}))
        .await;
    assert_eq!(
        (status, ctx["state"].as_str()),
        (200, Some("complete")),
        "{ctx}"
    );
    assert_eq!(
        ctx["result"]["stdout"], "a b|$(nope)",
        "arguments pass through unchanged"
    );
    assert_eq!(ctx["result"]["exit_code"], 0);

    // http-probe against management's own health endpoint.
    let health = cluster.url("/healthz");
    cluster
        .put_json(
            "/v1/resources/api",
            &json!({"kind": "http", "config": {"url": health}}),
        )
        .await;
    let (status, ctx) = cluster
        .post_json(
            "/v1/operations",
            &json!({"module": "http-probe", "operation": "probe", "resource": "api"}),
        )
        .await;
    assert_eq!(
        (status, ctx["state"].as_str()),
        (200, Some("complete")),
        "{ctx}"
    );
    assert_eq!(ctx["result"]["status"], 200, "{ctx}");
    assert!(ctx["result"]["latency_ms"].is_number());

    // file-tail: count, then follow new lines keyed by their byte offset.
    let path = cluster.shared().join("app.log");
    std::fs::write(&path, "one\ntwo\n").expect("write log");
    cluster
        .put_json(
            "/v1/resources/log",
            &json!({"kind": "file", "config": {"path": path}}),
        )
        .await;
    let (status, ctx) = cluster
        .post_json(
            "/v1/operations",
            &json!({"module": "file-tail", "operation": "count", "resource": "log"}),
        )
        .await;
    assert_eq!((status, &ctx["result"]["lines"]), (200, &json!(2)), "{ctx}");
    let (status, ctx) = cluster
        .post_json("/v1/operations", &json!({"module": "file-tail", "operation": "follow", "resource": "log", "params": {"interval_ms": 50}}))
        .await;
    assert_eq!(status, 202, "{ctx}");
    let op = ctx["id"].as_str().expect("id").to_string();
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .expect("open log");
    file.write_all(b"three\npartial").expect("append");
    let events = |n: usize| {
        let path = format!("/v1/operations/{op}/events");
        let cluster = &cluster;
        async move {
            let (_, body) = cluster.get(&path).await;
            let events = body["events"].as_array().cloned().unwrap_or_default();
            if events.len() >= n {
                Ok(events)
            } else {
                Err(body.to_string())
            }
        }
    };
    let seen: Vec<Value> = wait_until("three lines followed", Duration::from_secs(20), || {
        events(3)
    })
    .await;
    let lines: Vec<(&str, &str)> = seen
        .iter()
        .map(|e| {
            (
                e["key"].as_str().unwrap_or(""),
                e["data"]["line"].as_str().unwrap_or(""),
            )
        })
        .collect();
    assert_eq!(
        lines,
        [("0", "one"), ("4", "two"), ("8", "three")],
        "a partial line waits for its end"
    );
    file.write_all(b" done\n").expect("append");
    let seen = wait_until("the completed line", Duration::from_secs(20), || events(4)).await;
    assert_eq!(seen[3]["data"]["line"], "partial done");
    assert_eq!(seen[3]["key"], "14");
    let r = cluster
        .http
        .delete(cluster.url(&format!("/v1/operations/{op}")))
        .send()
        .await
        .expect("cancel");
    assert_eq!(r.status(), 202);
}
