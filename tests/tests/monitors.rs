//! Async monitors on the lead as a user relies on them: they survive the
//! lead's death (SIGKILL, SIGSTOP), a whole-cluster restart and a NATS
//! restart, resuming from their checkpoint with every keyed event exactly
//! once and in order; they fail after five crashes and stop when cancelled.

use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::{json, Value};
use zerofoot_tests::modules::bundle;
use zerofoot_tests::{sse_frames, wait_until, Cluster, NodeFlags};

/// Counts from the checkpoint to params.total, one event per number (keyed
/// unless params.keyed is false), a checkpoint every params.every events.
const COUNTER: &str = r#"#!/bin/sh
input=$(cat)
n=$(printf '%s' "$input" | jq -r '.checkpoint.n // 0')
total=$(printf '%s' "$input" | jq -r '.params.total')
every=$(printf '%s' "$input" | jq -r '.params.every // 10')
keyed=$(printf '%s' "$input" | jq -r 'if .params.keyed == false then "no" else "yes" end')
pause=$(printf '%s' "$input" | jq -r '.params.pause // 0.01')
pidfile=$(printf '%s' "$input" | jq -r '.params.pidfile // empty')
[ -n "$pidfile" ] && echo "$HOME" > "$pidfile"
while [ "$n" -lt "$total" ]; do
  n=$((n + 1))
  if [ "$keyed" = yes ]; then
    echo "{\"type\":\"event\",\"key\":\"$n\",\"data\":{\"n\":$n}}"
  else
    echo "{\"type\":\"event\",\"data\":{\"n\":$n}}"
  fi
  if [ $((n % every)) -eq 0 ]; then echo "{\"type\":\"checkpoint\",\"data\":{\"n\":$n}}"; fi
  sleep "$pause"
done
"#;

const CRASHER: &str = "#!/bin/sh\ncat >/dev/null\necho \"boom at $(date +%s%N)\" >&2\nexit 7\n";

fn fast() -> NodeFlags {
    NodeFlags(vec![
        "--heartbeat-ms".into(),
        "50".into(),
        "--lapse-ms".into(),
        "250".into(),
    ])
}

async fn cluster_with_monitors(nodes: usize) -> Cluster {
    let mut cluster = Cluster::start(0).await;
    for _ in 0..nodes {
        cluster.add_node(&fast());
    }
    cluster.wait_nodes_up(nodes).await;
    let ops = json!({"count": {"kind": "async"}, "crash": {"kind": "async"}});
    cluster
        .publish(bundle("counter", "1.0.0", ops.clone(), COUNTER))
        .await;
    cluster
        .publish(bundle("crasher", "1.0.0", ops, CRASHER))
        .await;
    cluster.wait_module("crasher", "1.0.0").await;
    cluster
}

async fn start_monitor(cluster: &Cluster, module: &str, operation: &str, params: Value) -> String {
    let (status, ctx) = cluster
        .post_json(
            "/v1/operations",
            &json!({"module": module, "operation": operation, "params": params}),
        )
        .await;
    assert_eq!(status, 202, "{ctx}");
    assert_eq!(ctx["state"], "pending", "{ctx}");
    ctx["id"].as_str().expect("id").to_string()
}

async fn events(cluster: &Cluster, op: &str) -> Vec<Value> {
    let (status, body) = cluster
        .get(&format!("/v1/operations/{op}/events?limit=10000"))
        .await;
    assert_eq!(status, 200, "{body}");
    body["events"].as_array().cloned().unwrap_or_default()
}

async fn context(cluster: &Cluster, op: &str) -> Value {
    cluster.get(&format!("/v1/operations/{op}")).await.1
}

async fn wait_events(cluster: &Cluster, op: &str, at_least: usize) {
    wait_until(
        &format!("{at_least} events of {op}"),
        Duration::from_secs(60),
        || async {
            let n = events(cluster, op).await.len();
            if n >= at_least {
                Ok(())
            } else {
                Err(format!("{n} events"))
            }
        },
    )
    .await;
}

async fn wait_state(cluster: &Cluster, op: &str, state: &str, within: Duration) -> Value {
    wait_until(&format!("operation {op} {state}"), within, || async {
        let ctx = context(cluster, op).await;
        if ctx["state"] == state {
            Ok(ctx)
        } else {
            Err(ctx.to_string())
        }
    })
    .await
}

/// The current lead (node id, term) once exactly one live node leads.
async fn lead(cluster: &Cluster) -> (String, u64) {
    wait_until(
        "exactly one lead in /v1/cluster",
        Duration::from_secs(20),
        || async {
            let (_, view) = cluster.get("/v1/cluster").await;
            let leads: Vec<&Value> = view["nodes"]
                .as_array()
                .map(|n| {
                    n.iter()
                        .filter(|n| n["role"] == "lead" && n["status"] == "up")
                        .collect()
                })
                .unwrap_or_default();
            match (leads.as_slice(), view["lead"]["node"].as_str()) {
                ([one], Some(lead)) if one["id"] == lead => {
                    Ok((lead.to_string(), view["lead"]["term"].as_u64().unwrap_or(0)))
                }
                _ => Err(view.to_string()),
            }
        },
    )
    .await
}

fn numbers(events: &[Value]) -> Vec<u64> {
    events
        .iter()
        .filter_map(|e| e["data"]["n"].as_u64())
        .collect()
}

fn assert_gapless_seqs(events: &[Value]) {
    for (i, e) in events.iter().enumerate() {
        assert_eq!(
            e["seq"].as_u64(),
            Some(i as u64 + 1),
            "seq counts from 1 with no gap: {e}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_events_are_exactly_once_across_five_lead_kills() {
    let mut cluster = cluster_with_monitors(3).await;
    let total = 1500;
    let op = start_monitor(
        &cluster,
        "counter",
        "count",
        json!({"total": total, "every": 10, "pause": 0.005}),
    )
    .await;
    let mut killed: Option<usize> = None;
    let mut last_term = 0;
    for kill in 1..=5 {
        let (lead_id, term) = lead(&cluster).await;
        assert!(term > last_term, "a new term after each kill");
        last_term = term;
        wait_events(&cluster, &op, kill * 150).await;
        let victim = cluster.node_index(&lead_id);
        cluster.nodes[victim].kill();
        if let Some(previous) = killed.replace(victim) {
            cluster.nodes[previous].start();
        }
        // A new lead must appear before the next kill.
        wait_until(
            "a new lead after the kill",
            Duration::from_secs(20),
            || async {
                let (id, t) = lead(&cluster).await;
                if id != lead_id && t > term {
                    Ok(())
                } else {
                    Err(format!("{id} at {t}"))
                }
            },
        )
        .await;
    }
    let ctx = wait_state(&cluster, &op, "complete", Duration::from_secs(120)).await;
    let all = events(&cluster, &op).await;
    assert_eq!(
        numbers(&all),
        (1..=total).collect::<Vec<u64>>(),
        "exactly 1..N in order, no gap, no repeat"
    );
    assert_gapless_seqs(&all);
    let lost = ctx["attempts"]
        .as_array()
        .expect("attempts")
        .iter()
        .filter(|a| a["outcome"] == "lost")
        .count();
    assert!(lost >= 5, "every loss listed: {ctx}");
    let epochs: Vec<u64> = all.iter().filter_map(|e| e["epoch"].as_u64()).collect();
    assert!(
        epochs.windows(2).all(|w| w[0] <= w[1]),
        "epochs never go back"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unkeyed_events_repeat_only_after_the_last_checkpoint_under_a_newer_epoch() {
    let mut cluster = cluster_with_monitors(3).await;
    let (total, every, kills) = (600u64, 10u64, 2usize);
    let op = start_monitor(
        &cluster,
        "counter",
        "count",
        json!({"total": total, "every": every, "keyed": false, "pause": 0.005}),
    )
    .await;
    for kill in 1..=kills {
        let (lead_id, term) = lead(&cluster).await;
        wait_events(&cluster, &op, kill * 150).await;
        let victim = cluster.node_index(&lead_id);
        cluster.nodes[victim].kill();
        wait_until("a new lead", Duration::from_secs(20), || async {
            let (_, t) = lead(&cluster).await;
            if t > term {
                Ok(())
            } else {
                Err(format!("term {t}"))
            }
        })
        .await;
        cluster.nodes[victim].start();
    }
    wait_state(&cluster, &op, "complete", Duration::from_secs(120)).await;
    let all = events(&cluster, &op).await;
    assert_gapless_seqs(&all);
    let mut first_seen: std::collections::HashMap<u64, u64> = std::collections::HashMap::new();
    let mut repeats = 0u64;
    for e in &all {
        let (n, epoch) = (
            e["data"]["n"].as_u64().expect("n"),
            e["epoch"].as_u64().expect("epoch"),
        );
        match first_seen.get(&n) {
            None => {
                first_seen.insert(n, epoch);
            }
            Some(first_epoch) => {
                repeats += 1;
                assert!(
                    epoch > *first_epoch,
                    "a repeat of {n} comes under a newer epoch: {e}"
                );
            }
        }
    }
    assert_eq!(first_seen.len() as u64, total, "every number at least once");
    assert!(
        repeats <= kills as u64 * every,
        "repeats only after the last checkpoint: {repeats}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_lead_steps_down_and_writes_nothing_after_its_successor() {
    let cluster = cluster_with_monitors(3).await;
    let total = 800;
    let op = start_monitor(
        &cluster,
        "counter",
        "count",
        json!({"total": total, "every": 10, "pause": 0.005}),
    )
    .await;
    wait_events(&cluster, &op, 100).await;
    let (old_lead, old_term) = lead(&cluster).await;
    let index = cluster.node_index(&old_lead);
    cluster.nodes[index].signal(Signal::SIGSTOP);
    // Three lapses (250 ms each) of silence, and a successor in charge.
    let (new_lead, new_term) = wait_until("a successor lead", Duration::from_secs(20), || async {
        let (id, t) = lead(&cluster).await;
        if t > old_term && id != old_lead {
            Ok((id, t))
        } else {
            Err(format!("{id} at {t}"))
        }
    })
    .await;
    wait_until(
        "the successor's first event",
        Duration::from_secs(20),
        || async {
            let all = events(&cluster, &op).await;
            if all.iter().any(|e| e["epoch"] == new_term) {
                Ok(())
            } else {
                Err(format!("{} events", all.len()))
            }
        },
    )
    .await;
    cluster.nodes[index].signal(Signal::SIGCONT);
    let (lead_now, _) = lead(&cluster).await;
    assert_eq!(lead_now, new_lead, "the resumed node does not lead");
    let ctx = wait_state(&cluster, &op, "complete", Duration::from_secs(120)).await;

    let all = events(&cluster, &op).await;
    assert_eq!(numbers(&all), (1..=total).collect::<Vec<u64>>());
    let first_new = all
        .iter()
        .position(|e| e["epoch"] == new_term)
        .expect("an event of the new epoch");
    assert!(
        all[first_new..]
            .iter()
            .all(|e| e["epoch"].as_u64() >= Some(new_term)),
        "no event of the old epoch after the first of the new one"
    );
    let attempts = ctx["attempts"].as_array().expect("attempts");
    let old_attempts = attempts
        .iter()
        .filter(|a| a["node"] == old_lead.as_str() && a["epoch"].as_u64() > Some(old_term))
        .count();
    assert_eq!(
        old_attempts, 0,
        "the old lead started nothing after resuming: {ctx}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monitors_resume_after_every_node_restarts_and_after_nats_restarts() {
    let mut cluster = cluster_with_monitors(3).await;
    let total = 600;
    let op = start_monitor(
        &cluster,
        "counter",
        "count",
        json!({"total": total, "every": 10, "pause": 0.01}),
    )
    .await;
    wait_events(&cluster, &op, 100).await;
    for node in cluster.nodes.iter_mut() {
        node.kill();
    }
    let checkpoint = context(&cluster, &op).await["checkpoint"]["n"]
        .as_u64()
        .expect("a checkpoint was stored");
    assert!(checkpoint >= 90, "checkpoint {checkpoint}");
    for node in cluster.nodes.iter_mut() {
        node.start();
    }
    cluster.wait_nodes_up(3).await;
    wait_events(&cluster, &op, 300).await;
    assert!(
        context(&cluster, &op).await["attempts"]
            .as_array()
            .map(Vec::len)
            >= Some(2)
    );

    cluster.nats.restart();
    lead(&cluster).await;
    let ctx = wait_state(&cluster, &op, "complete", Duration::from_secs(120)).await;
    let all = events(&cluster, &op).await;
    assert_eq!(
        numbers(&all),
        (1..=total).collect::<Vec<u64>>(),
        "nothing lost or repeated: {ctx}"
    );
    assert_gapless_seqs(&all);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashing_monitor_fails_after_five_tries_and_cancel_stops_a_running_one() {
    let cluster = cluster_with_monitors(2).await;
    let op = start_monitor(&cluster, "crasher", "crash", json!({})).await;
    let ctx = wait_state(&cluster, &op, "failed", Duration::from_secs(60)).await;
    let error = ctx["error"].as_str().unwrap_or("");
    assert!(
        error.contains("5 times in a row")
            && error.contains("status 7")
            && error.contains("boom at"),
        "{error}"
    );

    let pidfile = cluster.shared_file("monitor.pid");
    let op = start_monitor(
        &cluster,
        "counter",
        "count",
        json!({"total": 100000, "pause": 0.05, "pidfile": pidfile}),
    )
    .await;
    wait_events(&cluster, &op, 5).await;
    // The run's scratch dir: every process of the run carries it as HOME.
    let run = std::fs::read_to_string(&pidfile)
        .expect("run file")
        .trim()
        .to_string();
    let r = cluster
        .http
        .delete(cluster.url(&format!("/v1/operations/{op}")))
        .send()
        .await
        .expect("DELETE");
    assert_eq!(r.status(), 202);
    let started = std::time::Instant::now();
    wait_state(&cluster, &op, "cancelled", Duration::from_secs(10)).await;
    zerofoot_tests::wait_run_gone("the driver's processes to be gone", &run).await;
    assert!(
        started.elapsed() < Duration::from_secs(12),
        "gone within the TERM grace: {:?}",
        started.elapsed()
    );
    let r = cluster
        .http
        .delete(cluster.url(&format!("/v1/operations/{op}")))
        .send()
        .await
        .expect("DELETE");
    assert_eq!(r.status(), 409, "cancelling a finished operation");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sse_client_follows_a_monitor_across_a_failover_and_resumes_without_repeats() {
    let mut cluster = cluster_with_monitors(3).await;
    let total = 400;
    let op = start_monitor(
        &cluster,
        "counter",
        "count",
        json!({"total": total, "every": 10, "pause": 0.01}),
    )
    .await;
    let url = cluster.url(&format!("/v1/operations/{op}/events"));
    let stream = cluster
        .http
        .get(&url)
        .header("accept", "text/event-stream")
        .send()
        .await
        .expect("SSE");
    assert_eq!(stream.status(), 200);
    let reader = tokio::spawn(sse_frames(stream, 250));
    wait_events(&cluster, &op, 50).await;
    let (lead_id, _) = lead(&cluster).await;
    let victim = cluster.node_index(&lead_id);
    cluster.nodes[victim].kill();
    let first = reader.await.expect("SSE reader");
    let ids: Vec<u64> = first.iter().map(|(id, _)| *id).collect();
    assert_eq!(
        ids,
        (1..=250).collect::<Vec<u64>>(),
        "the stream went on across the failover"
    );
    assert!(first.iter().all(|(id, e)| e["seq"].as_u64() == Some(*id)));

    let resumed = cluster
        .http
        .get(&url)
        .header("accept", "text/event-stream")
        .header("last-event-id", "250")
        .send()
        .await
        .expect("SSE");
    let rest = sse_frames(resumed, (total - 250) as usize).await;
    assert_eq!(
        rest.first().map(|(id, _)| *id),
        Some(251),
        "no repeat after Last-Event-ID"
    );
    let numbers: Vec<u64> = first
        .iter()
        .chain(rest.iter())
        .filter_map(|(_, e)| e["data"]["n"].as_u64())
        .collect();
    assert_eq!(numbers, (1..=total).collect::<Vec<u64>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_lead_is_replaced_on_the_brokers_notice_and_a_reconnecting_one_keeps_its_term() {
    // A lapse no part of this test waits out: only nats-server's notice that
    // the lead's connection closed can explain a takeover within it.
    let lapse = Duration::from_secs(12);
    // A grace a loaded test machine always reconnects within.
    let flags = NodeFlags(vec![
        "--heartbeat-ms".into(),
        "300".into(),
        "--lapse-ms".into(),
        lapse.as_millis().to_string(),
        "--reconnect-grace-ms".into(),
        "1500".into(),
    ]);
    let mut cluster = Cluster::start(0).await;
    // Each node reaches NATS through a proxy of its own, which can reset its
    // connection as a flapping network path does.
    let mut links = Vec::new();
    for _ in 0..3 {
        links.push(cluster.add_node_behind_proxy(&flags).await);
    }
    cluster.wait_nodes_up(3).await;
    cluster
        .publish(bundle(
            "counter",
            "1.0.0",
            json!({"count": {"kind": "async"}}),
            COUNTER,
        ))
        .await;
    cluster.wait_module("counter", "1.0.0").await;
    let op = start_monitor(
        &cluster,
        "counter",
        "count",
        json!({"total": 100000, "every": 1, "pause": 0.05}),
    )
    .await;
    wait_events(&cluster, &op, 3).await;
    let (first, term) = lead(&cluster).await;
    let claim = cluster.lead_claim().await;
    assert_eq!(claim["node"], first.as_str(), "{claim}");
    assert!(
        claim["connection"]["server"].is_string(),
        "the claim names its connection's server: {claim}"
    );
    let cid = claim["connection"]["client"]
        .as_u64()
        .expect("the claim names its connection's client id");

    // A blip: the lead's connection is reset, the lead reconnects and writes
    // its claim again from the new connection, same term.
    links[cluster.node_index(&first)].cut();
    let rewritten = wait_until(
        "the lead to write its claim again from a new connection",
        lapse / 2,
        || async {
            let claim = cluster.lead_claim().await;
            if claim["connection"]["client"]
                .as_u64()
                .is_some_and(|c| c != cid)
            {
                Ok(claim)
            } else {
                Err(claim.to_string())
            }
        },
    )
    .await;
    assert_eq!(
        (rewritten["node"].as_str(), rewritten["term"].as_u64()),
        (Some(first.as_str()), Some(term)),
        "a reconnect is no election: {rewritten}"
    );
    let before = events(&cluster, &op).await.len();
    wait_events(&cluster, &op, before + 3).await;
    let after_blip = events(&cluster, &op).await;
    assert!(
        after_blip
            .iter()
            .all(|e| e["epoch"] == after_blip[0]["epoch"]),
        "the monitor stayed with its lead and term: one epoch throughout"
    );

    // A death: the process is gone, its connection closed by the kernel.
    let victim = cluster.node_index(&first);
    cluster.nodes[victim].kill();
    let successor = wait_until(
        "another node to claim the lead on nats-server's notice, well within the lapse",
        lapse / 2,
        || async {
            let claim = cluster.lead_claim().await;
            if claim["node"] != first.as_str() {
                Ok(claim)
            } else {
                Err(claim.to_string())
            }
        },
    )
    .await;
    assert_eq!(successor["term"].as_u64(), Some(term + 1), "{successor}");
    let resumed_epoch = wait_until(
        "the monitor to resume under its new owner",
        lapse / 2,
        || async {
            let events = events(&cluster, &op).await;
            let epoch = events.last().and_then(|e| e["epoch"].as_u64()).unwrap_or(0);
            if epoch > after_blip[0]["epoch"].as_u64().unwrap_or(0) {
                Ok(epoch)
            } else {
                Err(format!("{} events, last epoch {epoch}", events.len()))
            }
        },
    )
    .await;
    let all = events(&cluster, &op).await;
    let mut numbers = numbers(&all);
    let count = numbers.len();
    numbers.dedup();
    assert_eq!(numbers.len(), count, "keyed events exactly once");
    assert_eq!(
        numbers,
        (1..=count as u64).collect::<Vec<_>>(),
        "counted from 1 with no gap (epoch {resumed_epoch})"
    );
    assert_gapless_seqs(&all);
}
