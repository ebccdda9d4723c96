//! One owner, one driver, under faults beyond a clean crash: a node killed
//! takes its drivers along, and so does its driver spawner; a paused node's and a silently partitioned
//! lead's drivers stop before (or about when) another node runs the same
//! operation; junk in an operation's log does not stop a takeover; a burst
//! of large events is appended whole; a cancel survives its owner's death.
//!
//! The drivers record their own pids and a timestamp per beat in a file, so
//! overlap is measured from the drivers themselves.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::{json, Value};
use zerofoot_tests::modules::bundle;
use zerofoot_tests::{
    beat_spans, longest_overlap, run_processes, wait_run_gone, wait_until, Cluster, NodeFlags,
};

const LAPSE_MS: u64 = 250;

fn fast() -> Vec<String> {
    vec![
        "--heartbeat-ms".into(),
        "50".into(),
        "--lapse-ms".into(),
        LAPSE_MS.to_string(),
    ]
}

/// Appends "<run> <ms since epoch>" to params.file every 20 ms (the run is
/// its HOME, the scratch dir every process of the run carries) and emits an
/// event per beat, forever, with a child `sleep` beside it.
const BEATER: &str = r#"#!/bin/sh
input=$(cat)
file=$(printf '%s' "$input" | jq -r '.params.file')
sleep 600 &
while true; do
  echo "$HOME $(date +%s%3N)" >> "$file"
  echo "{\"type\":\"event\",\"data\":{\"pid\":$$}}"
  sleep 0.02
done
"#;

/// Records its run (HOME) and starts a child, then sleeps without writing a
/// byte (so no SIGPIPE could end it).
const SLEEPER: &str = r#"#!/bin/sh
input=$(cat)
file=$(printf '%s' "$input" | jq -r '.params.file')
sleep 600 &
echo "$HOME" > "$file"
wait
"#;

/// Counts to params.total with keyed events and a checkpoint every 10.
const COUNTER: &str = r#"#!/bin/sh
input=$(cat)
n=$(printf '%s' "$input" | jq -r '.checkpoint.n // 0')
total=$(printf '%s' "$input" | jq -r '.params.total')
while [ "$n" -lt "$total" ]; do
  n=$((n + 1))
  echo "{\"type\":\"event\",\"key\":\"$n\",\"data\":{\"n\":$n}}"
  if [ $((n % 10)) -eq 0 ]; then echo "{\"type\":\"checkpoint\",\"data\":{\"n\":$n}}"; fi
  sleep 0.01
done
"#;

/// 5 000 keyed events of 2 KiB at once, then one of 700 KiB.
const BURST: &str = r#"#!/bin/sh
cat >/dev/null
awk 'BEGIN {
  pad = "x"; while (length(pad) < 2048) pad = pad pad
  for (i = 1; i <= 5000; i++) printf "{\"type\":\"event\",\"key\":\"%d\",\"data\":{\"n\":%d,\"pad\":\"%s\"}}\n", i, i, pad
  big = "y"; while (length(big) < 524288) big = big big
  big = big substr(big, 1, 716800 - 524288)
  printf "{\"type\":\"event\",\"key\":\"big\",\"data\":{\"big\":\"%s\"}}\n", big
}'
"#;

async fn publish_modules(cluster: &Cluster) {
    let ops = json!({"beat": {"kind": "async"}, "sleep": {"kind": "sync", "timeout_ms": 600000}});
    cluster
        .publish(bundle("beater", "1.0.0", ops, BEATER))
        .await;
    let sleeper = json!({"sleep": {"kind": "sync", "timeout_ms": 600000}});
    cluster
        .publish(bundle("sleeper", "1.0.0", sleeper, SLEEPER))
        .await;
    let counter = json!({"count": {"kind": "async"}});
    cluster
        .publish(bundle("counter", "1.0.0", counter, COUNTER))
        .await;
    let burst = json!({"burst": {"kind": "async"}});
    cluster
        .publish(bundle("burst", "1.0.0", burst, BURST))
        .await;
    cluster.wait_module("burst", "1.0.0").await;
}

/// Two fast nodes, the first of them leading, with the test modules.
async fn two_nodes_led_by_the_first() -> (Cluster, String) {
    let mut cluster = Cluster::start(0).await;
    cluster.add_node(&NodeFlags(fast()));
    let first = lead(&cluster, None).await;
    cluster.add_node(&NodeFlags(fast()));
    cluster.wait_nodes_up(2).await;
    publish_modules(&cluster).await;
    (cluster, first)
}

async fn submit(cluster: &Cluster, module: &str, operation: &str, params: Value) -> String {
    let (status, ctx) = cluster
        .post_json(
            "/v1/operations?wait=false",
            &json!({"module": module, "operation": operation, "params": params}),
        )
        .await;
    assert!(
        status == 202 || status == 200,
        "submit {module}.{operation}: {status} {ctx}"
    );
    ctx["id"].as_str().expect("operation id").to_string()
}

async fn context(cluster: &Cluster, op: &str) -> Value {
    cluster.get(&format!("/v1/operations/{op}")).await.1
}

async fn wait_state(cluster: &Cluster, op: &str, state: &str) -> Value {
    wait_until(
        &format!("operation {op} {state}"),
        Duration::from_secs(60),
        || async {
            let ctx = context(cluster, op).await;
            if ctx["state"] == state {
                Ok(ctx)
            } else {
                Err(ctx.to_string())
            }
        },
    )
    .await
}

/// The lead's node id once exactly one live node leads.
async fn lead(cluster: &Cluster, not: Option<&str>) -> String {
    wait_until(
        "exactly one (new) lead",
        Duration::from_secs(30),
        || async {
            let (_, view) = cluster.get("/v1/cluster").await;
            let leads: Vec<String> = view["nodes"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|n| n["role"] == "lead" && n["status"] == "up")
                .filter_map(|n| n["id"].as_str().map(String::from))
                .collect();
            match leads.as_slice() {
                [one] if Some(one.as_str()) != not => Ok(one.clone()),
                _ => Err(view.to_string()),
            }
        },
    )
    .await
}

/// A run other than `old` beating in `file`.
async fn wait_new_driver(file: &Path, old: &str) -> String {
    wait_until(
        "a driver of another run beating",
        Duration::from_secs(30),
        || async {
            let spans = beat_spans(file);
            spans
                .keys()
                .find(|run| *run != old)
                .cloned()
                .ok_or_else(|| format!("{spans:?}"))
        },
    )
    .await
}

/// The run the sleeper driver records in `file`, once it has.
async fn sleeper_run(file: &Path) -> String {
    wait_until(
        "the sleeper driver's run",
        Duration::from_secs(30),
        || async {
            let text = std::fs::read_to_string(file).map_err(|e| e.to_string())?;
            match text.trim() {
                "" => Err("not yet".to_string()),
                run => Ok(run.to_string()),
            }
        },
    )
    .await
}

/// Cancels `op`, which must be acknowledged.
async fn cancel(cluster: &Cluster, op: &str) {
    let (status, ctx) = cluster.delete(&format!("/v1/operations/{op}")).await;
    assert_eq!(status, 202, "cancel acknowledged: {ctx}");
}

/// The first run beating in `file`.
async fn first_driver(file: &Path) -> String {
    wait_until(
        "the first driver beating",
        Duration::from_secs(30),
        || async {
            beat_spans(file)
                .keys()
                .next()
                .cloned()
                .ok_or_else(|| "no beat yet".to_string())
        },
    )
    .await
}

#[tokio::test]
async fn a_killed_node_takes_its_drivers_along() {
    let mut cluster = Cluster::start(0).await;
    cluster.add_node(&NodeFlags(fast()));
    cluster.wait_nodes_up(1).await;
    publish_modules(&cluster).await;
    let beat_file = cluster.shared_file("beats");
    let sleep_file = cluster.shared_file("sleeper");
    submit(&cluster, "beater", "beat", json!({"file": beat_file})).await;
    submit(&cluster, "sleeper", "sleep", json!({"file": sleep_file})).await;
    let monitor_run = first_driver(&beat_file).await;
    let sync_run = sleeper_run(&sleep_file).await;
    for (what, run) in [("monitor", &monitor_run), ("sync", &sync_run)] {
        assert!(
            run_processes(run).len() >= 2,
            "the {what} driver and its child run: {:?}",
            run_processes(run)
        );
    }

    cluster.nodes[0].kill();
    let killed_at = Instant::now();
    for (what, run) in [
        ("the monitor's driver and its child", &monitor_run),
        ("the sync driver and its child", &sync_run),
    ] {
        wait_run_gone(
            &format!("{what} ({run}) gone after its node was SIGKILLed"),
            run,
        )
        .await;
    }
    eprintln!(
        "all drivers gone {:?} after the node's SIGKILL",
        killed_at.elapsed()
    );
}

/// The node starts its drivers through one spawner process. Killed, it
/// takes its drivers along (each driver's shim dies with it), their
/// operations end failed and say so, and the next driver starts through a
/// new spawner.
#[tokio::test]
async fn a_killed_spawner_takes_its_drivers_along_and_the_next_driver_starts_anew() {
    let mut cluster = Cluster::start(0).await;
    cluster.add_node(&NodeFlags(fast()));
    cluster.wait_nodes_up(1).await;
    publish_modules(&cluster).await;
    let node = cluster.nodes[0].pid().as_raw();
    let sleep_file = cluster.shared_file("sleeper");
    let op = submit(&cluster, "sleeper", "sleep", json!({"file": sleep_file})).await;
    let run = sleeper_run(&sleep_file).await;
    let spawner = zerofoot_tests::child_with_arg(node, "--serve")
        .expect("the node's spawner runs beside its driver");

    nix::sys::signal::kill(nix::unistd::Pid::from_raw(spawner), Signal::SIGKILL)
        .expect("SIGKILL the spawner");
    wait_run_gone(
        &format!("the sync driver and its child ({run}) gone with their spawner"),
        &run,
    )
    .await;
    let failed = wait_state(&cluster, &op, "failed").await;
    assert!(
        failed["error"].to_string().contains("signal 9"),
        "the operation says its driver was killed: {failed}"
    );

    let again = cluster.shared_file("again");
    let op = submit(&cluster, "sleeper", "sleep", json!({"file": again})).await;
    sleeper_run(&again).await;
    let respawned = zerofoot_tests::child_with_arg(node, "--serve")
        .expect("a new spawner runs the next driver");
    assert_ne!(respawned, spawner, "the spawner was started anew");
    cancel(&cluster, &op).await;
    wait_state(&cluster, &op, "cancelled").await;
}

#[tokio::test]
async fn a_paused_lead_does_not_run_beside_its_successor() {
    let (cluster, first) = two_nodes_led_by_the_first().await;
    let file = cluster.shared_file("beats");
    let op = submit(&cluster, "beater", "beat", json!({"file": file})).await;
    let old = first_driver(&file).await;

    let paused = cluster.node_index(&first);
    cluster.nodes[paused].signal(Signal::SIGSTOP);
    let paused_at = Instant::now();
    lead(&cluster, Some(&first)).await;
    let new = wait_new_driver(&file, &old).await;
    // The fault lasts 8 lapses, well past the takeover.
    let pause = Duration::from_millis(8 * LAPSE_MS);
    if let Some(rest) = pause.checked_sub(paused_at.elapsed()) {
        tokio::time::sleep(rest).await;
    }
    assert!(
        run_processes(&old).is_empty(),
        "the paused node's driver {old} is still alive after {pause:?}"
    );
    cluster.nodes[paused].signal(Signal::SIGCONT);

    let spans = beat_spans(&file);
    let overlap = longest_overlap(&spans);
    assert!(
        overlap <= 2 * LAPSE_MS,
        "drivers {old} and {new} of {op} beat together for {overlap} ms (lapse {LAPSE_MS} ms): {spans:?}"
    );
    let ctx = context(&cluster, &op).await;
    assert_eq!(ctx["state"], "running", "{ctx}");
}

#[tokio::test]
async fn a_silently_partitioned_lead_stops_its_drivers() {
    let mut cluster = Cluster::start(0).await;
    let proxy = cluster.add_node_behind_proxy(&NodeFlags(fast())).await;
    let first = lead(&cluster, None).await;
    cluster.add_node(&NodeFlags(fast()));
    cluster.wait_nodes_up(2).await;
    publish_modules(&cluster).await;
    let file = cluster.shared_file("beats");
    let op = submit(&cluster, "beater", "beat", json!({"file": file})).await;
    let old = first_driver(&file).await;
    assert_eq!(
        context(&cluster, &op).await["owner"],
        first.as_str(),
        "the monitor runs on the lead behind the proxy"
    );

    proxy.set_silent(true);
    let cut_at = Instant::now();
    wait_run_gone(&format!("the partitioned lead's driver {old} gone"), &old).await;
    eprintln!("old driver gone {:?} after the cut", cut_at.elapsed());
    lead(&cluster, Some(&first)).await;
    let new = wait_new_driver(&file, &old).await;
    let spans = beat_spans(&file);
    let overlap = longest_overlap(&spans);
    assert!(
        overlap <= 2 * LAPSE_MS,
        "drivers {old} and {new} beat together for {overlap} ms (lapse {LAPSE_MS} ms): {spans:?}"
    );
    proxy.set_silent(false);
    // Healed: the old lead comes back as an auxiliary, the monitor stays put.
    wait_until(
        "the monitor owned by the new lead",
        Duration::from_secs(30),
        || async {
            let ctx = context(&cluster, &op).await;
            if ctx["state"] == "running" && ctx["owner"] != first.as_str() {
                Ok(())
            } else {
                Err(ctx.to_string())
            }
        },
    )
    .await;
    assert!(
        cluster.all_logs().contains("fences itself"),
        "the partitioned node logged that it fenced itself"
    );
}

async fn all_events(cluster: &Cluster, op: &str) -> Vec<Value> {
    let mut out = Vec::new();
    loop {
        let after = out
            .last()
            .and_then(|e: &Value| e["seq"].as_u64())
            .unwrap_or(0);
        let (status, body) = cluster
            .get(&format!(
                "/v1/operations/{op}/events?after={after}&limit=2000"
            ))
            .await;
        assert_eq!(status, 200, "{body}");
        let page = body["events"].as_array().cloned().unwrap_or_default();
        if page.is_empty() {
            return out;
        }
        out.extend(page);
    }
}

#[tokio::test]
async fn junk_in_an_operations_log_does_not_stop_its_takeover() {
    let (mut cluster, first) = two_nodes_led_by_the_first().await;
    let op = submit(&cluster, "counter", "count", json!({"total": 150})).await;
    wait_until("some events", Duration::from_secs(30), || async {
        let n = all_events(&cluster, &op).await.len();
        if n >= 20 {
            Ok(())
        } else {
            Err(format!("{n} events"))
        }
    })
    .await;

    let client = cluster.nats.client().await;
    let js = async_nats::jetstream::new(client);
    let subject = format!("zf.{}.evt.{op}", cluster.cluster);
    js.publish(subject, "this is not an event batch".into())
        .await
        .expect("publish junk")
        .await
        .expect("junk stored");

    let index = cluster.node_index(&first);
    cluster.nodes[index].kill();
    let ctx = wait_state(&cluster, &op, "complete").await;
    let events = all_events(&cluster, &op).await;
    let mut seen = BTreeMap::new();
    for e in &events {
        *seen
            .entry(e["key"].as_str().unwrap_or("").to_string())
            .or_insert(0) += 1;
    }
    let missing: Vec<u32> = (1..=150)
        .filter(|n| !seen.contains_key(&n.to_string()))
        .collect();
    let twice: Vec<_> = seen.iter().filter(|(_, c)| **c > 1).collect();
    assert!(
        missing.is_empty() && twice.is_empty(),
        "missing {missing:?}, twice {twice:?}: {ctx}"
    );
}

#[tokio::test]
async fn a_burst_of_large_events_is_appended_whole() {
    let mut cluster = Cluster::start(0).await;
    cluster.add_node(&NodeFlags(fast()));
    cluster.wait_nodes_up(1).await;
    publish_modules(&cluster).await;
    let op = submit(&cluster, "burst", "burst", json!({})).await;
    let ctx = wait_state(&cluster, &op, "complete").await;
    let events = all_events(&cluster, &op).await;
    assert_eq!(
        events.len(),
        5001,
        "every event, the oversized one replaced: {ctx}"
    );
    let keys: Vec<String> = events
        .iter()
        .take(5000)
        .map(|e| e["key"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(keys, (1..=5000).map(|n| n.to_string()).collect::<Vec<_>>());
    let big = &events[5000];
    assert_eq!(big["key"], "big");
    assert_eq!(big["data"]["error"], "event_too_large", "{}", big["data"]);
}

#[tokio::test]
async fn a_cancel_holds_when_its_owner_is_killed_right_after() {
    let (mut cluster, first) = two_nodes_led_by_the_first().await;
    let file = cluster.shared_file("beats");
    let op = submit(&cluster, "beater", "beat", json!({"file": file})).await;
    let old = first_driver(&file).await;

    cancel(&cluster, &op).await;
    let index = cluster.node_index(&first);
    cluster.nodes[index].kill();
    let ctx = wait_state(&cluster, &op, "cancelled").await;
    wait_run_gone("the cancelled monitor's driver", &old).await;
    // Whoever leads now has had a lapse and more to take it: it must not.
    lead(&cluster, Some(&first)).await;
    let settled = context(&cluster, &op).await;
    assert_eq!(settled["state"], "cancelled", "{settled}");
    let spans = beat_spans(&file);
    assert_eq!(
        spans.keys().cloned().collect::<Vec<_>>(),
        vec![old],
        "never ran again: {ctx}"
    );
}
