//! Batches as an operator acting on a fleet sees them: one operation over
//! the resources a selector picks, never more than `max_parallel` drivers at
//! once (measured from the drivers' own traces), a result per target across
//! a SIGKILL of the lead running the batch and of the management instance
//! that accepted it, a `stop` policy that starts nothing after the first
//! failure, and a cancel that reaches the children.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use zerofoot_tests::modules::bundle;
use zerofoot_tests::{sse_frames, wait_until, zone_node, Cluster};

const ZONES: [&str; 3] = ["dc-a", "dc-b", "dc-c"];

/// Appends "<run> <resource> <ms>" to params.file `params.beats` times,
/// 50 ms apart (the run is its HOME, fresh per driver), then "done" on the
/// last line; fails when the resource's config says `fail`.
const STEPPER: &str = r#"#!/bin/sh
input=$(cat)
file=$(printf '%s' "$input" | jq -r '.params.file')
beats=$(printf '%s' "$input" | jq -r '.params.beats')
id=$(printf '%s' "$input" | jq -r '.resource.id')
fail=$(printf '%s' "$input" | jq -r '.resource.config.fail // false')
i=0
while [ "$i" -lt "$beats" ]; do
  echo "$HOME $id $(date +%s%3N)" >> "$file"
  i=$((i + 1))
  sleep 0.05
done
echo "$HOME $id $(date +%s%3N) done" >> "$file"
if [ "$fail" = true ]; then echo "resource $id is broken on purpose" >&2; exit 3; fi
echo "{\"type\":\"result\",\"data\":{\"resource\":\"$id\"}}"
"#;

/// One driver run as its trace file shows it.
#[derive(Debug)]
struct Run {
    /// The driver's HOME: its scratch dir, under its node's data dir.
    home: String,
    resource: String,
    first_ms: u64,
    last_ms: u64,
    done: bool,
}

fn runs(file: &Path) -> Vec<Run> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let mut by_run: BTreeMap<String, Run> = BTreeMap::new();
    for line in text.lines() {
        let parts: Vec<&str> = line.split_whitespace().collect();
        let [run, resource, ms, rest @ ..] = parts.as_slice() else {
            continue;
        };
        let Ok(ms) = ms.parse::<u64>() else { continue };
        let entry = by_run.entry(run.to_string()).or_insert(Run {
            home: run.to_string(),
            resource: resource.to_string(),
            first_ms: ms,
            last_ms: ms,
            done: false,
        });
        entry.first_ms = entry.first_ms.min(ms);
        entry.last_ms = entry.last_ms.max(ms);
        entry.done |= rest.first() == Some(&"done");
    }
    by_run.into_values().collect()
}

/// The most drivers that ran at one time.
fn most_at_once(runs: &[Run]) -> usize {
    let mut edges: Vec<(u64, i32)> = runs
        .iter()
        .flat_map(|r| [(r.first_ms, 1), (r.last_ms, -1)])
        .collect();
    // At one instant an end counts before a start.
    edges.sort();
    let (mut now, mut most) = (0i32, 0i32);
    for (_, step) in edges {
        now += step;
        most = most.max(now);
    }
    most as usize
}

async fn publish_stepper(cluster: &Cluster) {
    let ops = json!({"step": {"kind": "sync", "timeout_ms": 60000, "retries": 3}});
    cluster
        .publish(bundle("stepper", "1.0.0", ops, STEPPER))
        .await;
    cluster.wait_module("stepper", "1.0.0").await;
}

async fn put_host(cluster: &Cluster, id: &str, zone: &str, config: Value) {
    let (status, body) = cluster
        .put_json(
            &format!("/v1/resources/{id}"),
            &json!({"kind": "host", "zone": zone, "labels": {"role": "web"}, "config": config}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
}

async fn submit_batch(cluster: &Cluster, body: &Value) -> String {
    let (status, ctx) = cluster.post_json("/v1/operations", body).await;
    assert_eq!(status, 202, "a batch is accepted at once: {ctx}");
    assert!(ctx["batch"]["targets"].is_array(), "{ctx}");
    ctx["id"].as_str().expect("batch id").to_string()
}

/// The batch once `at_least` of its children are complete.
async fn progressed(cluster: &Cluster, batch: &str, at_least: u64) -> Value {
    wait_until(
        &format!("{at_least} children of batch {batch} complete"),
        Duration::from_secs(60),
        || async {
            let (_, view) = cluster.get(&format!("/v1/operations/{batch}")).await;
            let complete = view["counts"]["complete"].as_u64().unwrap_or(0);
            if complete >= at_least {
                Ok(view)
            } else {
                Err(format!("{}", view["counts"]))
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_keeps_its_limit_and_finishes_across_a_lead_and_management_kill() {
    let mut cluster = Cluster::bare().await;
    cluster.start_repository();
    cluster.start_management();
    for zone in ZONES {
        for rack in 1..=2 {
            // Default timing: six nodes and five jq drivers share two cores
            // here, and a tighter lapse fences starved nodes.
            cluster.add_node(&zone_node(zone, rack, (200, 1000)));
        }
    }
    cluster.wait_healthy().await;
    publish_stepper(&cluster).await;
    for i in 0..30 {
        put_host(&cluster, &format!("host-{i:02}"), ZONES[i % 3], json!({})).await;
    }
    let file = cluster.shared_file("steps");
    let batch = submit_batch(
        &cluster,
        &json!({"module": "stepper", "operation": "step",
                "targets": {"selector": "role=web"}, "max_parallel": 5,
                "params": {"file": file, "beats": 10}}),
    )
    .await;

    // The batch runs on the lead of its first target's zone (host-00: dc-a).
    let view = progressed(&cluster, &batch, 6).await;
    assert_eq!(view["zone"], "dc-a", "{view}");
    let owner = view["owner"]
        .as_str()
        .expect("the batch has an owner")
        .to_string();
    let lead = cluster.node_index(&owner);
    cluster.nodes[lead].kill();

    progressed(&cluster, &batch, 12).await;
    cluster.management[0].process.kill();
    cluster.management[0].process.start();
    cluster.wait_management().await;

    let view = cluster
        .operation_end(&batch, Duration::from_secs(120))
        .await;
    assert_eq!(view["state"], "complete", "{view}");
    assert_eq!(view["counts"]["complete"], 30, "{view}");
    let attempts = view["attempts"].as_array().expect("attempts");
    assert!(
        attempts.len() >= 2 && attempts.last().is_some_and(|a| a["node"] != owner.as_str()),
        "the batch moved off its killed lead {owner}: {view}"
    );
    assert_eq!(view["result"]["counts"]["complete"], 30, "{view}");

    // A result per target, each from its own child.
    let children = view["children"].as_array().expect("children").clone();
    assert_eq!(children.len(), 30);
    for child in &children {
        let id = child["id"].as_str().expect("child id");
        let (status, ctx) = cluster.get(&format!("/v1/operations/{id}")).await;
        assert_eq!(status, 200, "{ctx}");
        assert_eq!(ctx["state"], "complete", "{ctx}");
        assert_eq!(ctx["parent"], batch.as_str(), "{ctx}");
        assert_eq!(ctx["result"]["resource"], child["resource"], "{ctx}");
        assert_eq!(ctx["zone"], child["zone"], "{ctx}");
    }

    // From the drivers: never more than 5 at once, and every target ran to
    // its end exactly once outside the killed node. A child on that node may
    // have finished its driver with no time left to record the result; it
    // is then run again elsewhere (sync operations are retried, not
    // resumed), so only there a second run is allowed.
    let runs = runs(&file);
    let most = most_at_once(&runs);
    assert!(most <= 5, "{most} drivers ran at once: {runs:?}");
    let killed_dir = format!("{}/", cluster.node_dir(lead).display());
    // Per target: (runs to the end elsewhere, runs to the end on the killed node).
    let mut done: HashMap<&str, (usize, usize)> = HashMap::new();
    for run in runs.iter().filter(|r| r.done) {
        let counts = done.entry(run.resource.as_str()).or_default();
        if run.home.starts_with(&killed_dir) {
            counts.1 += 1;
        } else {
            counts.0 += 1;
        }
    }
    for i in 0..30 {
        let resource = format!("host-{i:02}");
        let counts = done.get(resource.as_str()).copied().unwrap_or_default();
        assert!(
            matches!(counts, (1, 0) | (0, 1) | (1, 1)),
            "{resource} ran to its end once (twice only across the kill): {runs:?}"
        );
    }

    // The batch's events: every child's completion, once, whichever lead told it.
    let (_, page) = cluster
        .get(&format!("/v1/operations/{batch}/events?limit=10000"))
        .await;
    let mut completions: HashMap<String, usize> = HashMap::new();
    for event in page["events"].as_array().expect("events") {
        if event["data"]["state"] == "complete" {
            let resource = event["data"]["resource"].as_str().unwrap_or_default();
            *completions.entry(resource.to_string()).or_default() += 1;
        }
    }
    assert_eq!(completions.len(), 30, "{page}");
    assert!(completions.values().all(|n| *n == 1), "{completions:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_policy_starts_nothing_after_the_first_failure() {
    let cluster = Cluster::start(2).await;
    publish_stepper(&cluster).await;
    let ids: Vec<String> = (0..8).map(|i| format!("web-{i}")).collect();
    for (i, id) in ids.iter().enumerate() {
        put_host(&cluster, id, "default", json!({"fail": i == 2})).await;
    }

    // Requests that make no batch say why.
    for (body, status, code, words) in [
        (
            json!({"targets": {"selector": "role=web"}, "resource": "web-0"}),
            400,
            "invalid_body",
            "not both",
        ),
        (
            json!({"targets": {"selector": "role=db"}}),
            422,
            "no_targets",
            "role=db",
        ),
        (
            json!({"targets": {"resources": ["web-0", "web-99"]}}),
            404,
            "resource_not_found",
            "web-99",
        ),
        (
            json!({"targets": {"resources": ["web-0", "web-0"]}}),
            400,
            "invalid_body",
            "twice",
        ),
        (
            json!({"targets": {"selector": "role=web"}, "max_parallel": 0}),
            400,
            "invalid_body",
            "max_parallel is 0",
        ),
        (
            json!({"targets": {"selector": "role=web"}, "fail_policy": "halt"}),
            400,
            "invalid_body",
            "\\\"halt\\\"",
        ),
        (
            json!({"resource": "web-0", "max_parallel": 2}),
            400,
            "invalid_body",
            "go with targets",
        ),
    ] {
        let mut request = json!({"module": "stepper", "operation": "step",
                                 "params": {"file": "/dev/null", "beats": 1}});
        for (k, v) in body.as_object().expect("object") {
            request[k] = v.clone();
        }
        let (got, answer) = cluster.post_json("/v1/operations", &request).await;
        assert_eq!(got, status, "{request} → {answer}");
        assert_eq!(answer["error"]["code"], code, "{answer}");
        let message = answer["error"]["message"].to_string();
        assert!(message.contains(words), "{message} should say {words}");
    }

    let file = cluster.shared_file("steps");
    let batch = submit_batch(
        &cluster,
        &json!({"module": "stepper", "operation": "step",
                "targets": {"resources": ids}, "max_parallel": 1, "fail_policy": "stop",
                "params": {"file": file, "beats": 2}}),
    )
    .await;
    let view = cluster.operation_end(&batch, Duration::from_secs(60)).await;
    assert_eq!(view["state"], "failed", "{view}");
    let error = view["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("1 of 8 targets failed") && error.contains("5 targets not started"),
        "{view}"
    );
    let states: Vec<Value> = view["children"]
        .as_array()
        .expect("children")
        .iter()
        .map(|c| c["state"].clone())
        .collect();
    assert_eq!(
        states,
        [
            json!("complete"),
            json!("complete"),
            json!("failed"),
            Value::Null,
            Value::Null,
            Value::Null,
            Value::Null,
            Value::Null
        ],
        "{view}"
    );
    let failed = &view["children"][2];
    assert!(
        failed["error"]
            .as_str()
            .unwrap_or_default()
            .contains("broken on purpose"),
        "{failed}"
    );
    let runs = runs(&file);
    assert_eq!(most_at_once(&runs), 1, "max_parallel 1: {runs:?}");
    let mut ran_sorted: Vec<&str> = runs.iter().map(|r| r.resource.as_str()).collect();
    ran_sorted.sort();
    assert_eq!(ran_sorted, ["web-0", "web-1", "web-2"], "drivers that ran");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_batch_cancels_its_running_children_and_starts_no_more() {
    let cluster = Cluster::start(2).await;
    publish_stepper(&cluster).await;
    let ids: Vec<String> = (0..6).map(|i| format!("web-{i}")).collect();
    for id in &ids {
        put_host(&cluster, id, "default", json!({})).await;
    }
    let file = cluster.shared_file("steps");
    let batch = submit_batch(
        &cluster,
        &json!({"module": "stepper", "operation": "step",
                "targets": {"resources": ids}, "max_parallel": 2,
                "params": {"file": file, "beats": 100000}}),
    )
    .await;

    // The batch's SSE stream tells of the children as they start.
    let response = cluster
        .http
        .get(cluster.url(&format!("/v1/operations/{batch}/events")))
        .header("accept", "text/event-stream")
        .send()
        .await
        .expect("SSE request");
    let frames = sse_frames(response, 2).await;
    for (_, event) in &frames {
        assert!(
            matches!(event["data"]["state"].as_str(), Some("running" | "pending")),
            "{event}"
        );
    }
    wait_until("two drivers running", Duration::from_secs(30), || async {
        let started = runs(&file).len();
        if started == 2 {
            Ok(())
        } else {
            Err(format!("{started} drivers"))
        }
    })
    .await;

    let (status, answer) = cluster.delete(&format!("/v1/operations/{batch}")).await;
    assert_eq!(status, 202, "{answer}");
    let view = cluster.operation_end(&batch, Duration::from_secs(30)).await;
    assert_eq!(view["state"], "cancelled", "{view}");
    wait_until(
        "the started children to be cancelled",
        Duration::from_secs(30),
        || async {
            let (_, view) = cluster.get(&format!("/v1/operations/{batch}")).await;
            let counts = &view["counts"];
            if counts["cancelled"] == 2 && counts["not_started"] == 4 {
                Ok(())
            } else {
                Err(format!("{counts}"))
            }
        },
    )
    .await;
    assert_eq!(runs(&file).len(), 2, "no driver started after the cancel");
}
