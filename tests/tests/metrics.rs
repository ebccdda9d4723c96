//! Metrics as an operator reads them: a real Prometheus (Debian's package)
//! scrapes management's `/metrics` and every node's and the repository's
//! `--metrics-addr`, and its HTTP API answers with the series an operator
//! graphs: requests and submissions, operations by state, drivers, event
//! appends, the lead, module cache misses, repository requests, and a
//! takeover once the lead is SIGKILLed under a monitor.

use std::time::Duration;

use serde_json::json;
use zerofoot_tests::modules::bundle;
use zerofoot_tests::prometheus::Prometheus;
use zerofoot_tests::{free_port, wait_until, Cluster, NodeFlags};

/// Counts from its checkpoint, one keyed event every 50 ms, a checkpoint
/// after each.
const TICKER: &str = r#"#!/bin/sh
n=$(jq -r '.checkpoint.n // 0')
while true; do
  n=$((n + 1))
  echo "{\"type\":\"event\",\"key\":\"$n\",\"data\":{\"n\":$n}}"
  echo "{\"type\":\"checkpoint\",\"data\":{\"n\":$n}}"
  sleep 0.05
done
"#;

/// Waits until `promql` answers with a series whose value passes `wanted`.
async fn wait_series(prometheus: &Prometheus, promql: &str, wanted: impl Fn(f64) -> bool) -> f64 {
    wait_until(
        &format!("Prometheus to answer {promql} as wanted"),
        Duration::from_secs(30),
        || async {
            let series = prometheus.query(promql).await?;
            match series.iter().find(|(_, v)| wanted(*v)) {
                Some((_, v)) => Ok(*v),
                None => Err(format!("{series:?}")),
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_every_service_and_sees_what_happened() {
    let mut cluster = Cluster::bare().await;
    let repository_metrics = format!("127.0.0.1:{}", free_port());
    cluster.start_repository_with(&["--metrics-addr", &repository_metrics]);
    cluster.start_management();
    let mut node_metrics = Vec::new();
    for _ in 0..2 {
        let addr = format!("127.0.0.1:{}", free_port());
        cluster.add_node(&NodeFlags(vec![
            "--heartbeat-ms".into(),
            "100".into(),
            "--lapse-ms".into(),
            "500".into(),
            "--metrics-addr".into(),
            addr.clone(),
        ]));
        node_metrics.push(addr);
    }
    cluster.wait_healthy().await;
    let management = format!("127.0.0.1:{}", cluster.management[0].port);
    let mut targets = vec![
        ("management", management),
        ("repository", repository_metrics),
    ];
    targets.extend(node_metrics.iter().map(|a| ("node", a.clone())));
    let prometheus = Prometheus::start(cluster.dir.path(), &targets);

    cluster
        .publish(bundle(
            "ticker",
            "1.0.0",
            json!({"tick": {"kind": "async"}}),
            TICKER,
        ))
        .await;
    cluster.wait_module("ticker", "1.0.0").await;
    let (status, body) = cluster
        .post_json(
            "/v1/operations",
            &json!({"module": "shell", "operation": "run", "params": {"command": "true"}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = cluster
        .post_json(
            "/v1/operations",
            &json!({"module": "shell", "operation": "run", "params": {}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "failed", "{body}");
    let (status, monitor) = cluster
        .post_json(
            "/v1/operations",
            &json!({"module": "ticker", "operation": "tick"}),
        )
        .await;
    assert_eq!(status, 202, "{monitor}");

    wait_series(&prometheus, "count(up == 1)", |v| v == 4.0).await;
    wait_series(
        &prometheus,
        r#"zf_http_requests_total{job="management",method="POST",route="/v1/operations",status="200"}"#,
        |v| v >= 2.0,
    )
    .await;
    wait_series(
        &prometheus,
        r#"zf_operation_submit_seconds_count{job="management",status="200"}"#,
        |v| v >= 2.0,
    )
    .await;
    wait_series(
        &prometheus,
        r#"zf_operations{module="shell",kind="sync",state="complete"}"#,
        |v| v == 1.0,
    )
    .await;
    wait_series(
        &prometheus,
        r#"zf_operations{module="shell",kind="sync",state="failed"}"#,
        |v| v == 1.0,
    )
    .await;
    wait_series(
        &prometheus,
        r#"sum(zf_driver_starts_total{job="node"})"#,
        |v| v >= 3.0,
    )
    .await;
    wait_series(
        &prometheus,
        r#"sum(zf_driver_failures_total{job="node",reason="exit"})"#,
        |v| v >= 1.0,
    )
    .await;
    wait_series(&prometheus, r#"sum(zf_drivers_running{job="node"})"#, |v| {
        v == 1.0
    })
    .await;
    wait_series(&prometheus, r#"sum(zf_leading{job="node"})"#, |v| v == 1.0).await;
    wait_series(&prometheus, r#"max(zf_lead_term{job="node"})"#, |v| {
        v >= 1.0
    })
    .await;
    wait_series(
        &prometheus,
        r#"sum(zf_event_appends_total{job="node"})"#,
        |v| v >= 10.0,
    )
    .await;
    wait_series(
        &prometheus,
        r#"sum(zf_event_append_seconds_count{job="node"})"#,
        |v| v >= 10.0,
    )
    .await;
    wait_series(
        &prometheus,
        r#"sum(zf_module_cache_misses_total{job="node"})"#,
        |v| v >= 1.0,
    )
    .await;
    wait_series(
        &prometheus,
        r#"sum(zf_module_cache_fetched_bytes_total{job="node"})"#,
        |v| v > 0.0,
    )
    .await;
    wait_series(
        &prometheus,
        r#"zf_mirror_lag_revisions{job="node",table="contexts"}"#,
        |v| v >= 0.0,
    )
    .await;
    wait_series(
        &prometheus,
        r#"zf_repository_requests_total{job="repository",endpoint="put",outcome="ok"}"#,
        |v| v >= 1.0,
    )
    .await;
    let op = monitor["id"].as_str().expect("id");
    let stream = cluster
        .http
        .get(cluster.url(&format!("/v1/operations/{op}/events")))
        .header("accept", "text/event-stream")
        .send()
        .await
        .expect("open an SSE stream");
    assert_eq!(stream.status().as_u16(), 200);
    wait_series(&prometheus, "zf_sse_clients", |v| v == 1.0).await;
    drop(stream);
    wait_series(&prometheus, "zf_sse_clients", |v| v == 0.0).await;

    // The monitor's owner is the lead; SIGKILL it and the other node takes over.
    let (_, view) = cluster.get("/v1/cluster").await;
    let lead = view["lead"]["node"].as_str().expect("a lead").to_string();
    let index = cluster.node_index(&lead);
    cluster.nodes[index].kill();
    let survivor = &node_metrics[1 - index];
    wait_series(
        &prometheus,
        &format!(r#"zf_takeovers_total{{instance="{survivor}",kind="async"}}"#),
        |v| v >= 1.0,
    )
    .await;
    wait_series(
        &prometheus,
        &format!(r#"zf_leading{{instance="{survivor}"}}"#),
        |v| v == 1.0,
    )
    .await;
}
