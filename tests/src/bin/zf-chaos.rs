//! `zf-chaos DURATION_S [SEED]`: a chaos soak behind `scripts/chaos.sh`. A
//! local cluster (nats-server, repository, two management instances, three
//! nodes) runs keyed monitors and a stream of sync operations while faults
//! hit it at random intervals: SIGKILL and SIGSTOP/SIGCONT of the lead, of
//! auxiliary nodes, of management instances and of the repository, silent
//! partitions of a node from NATS (each node talks to NATS through its own
//! proxy, which stops forwarding without closing anything), and restarts of
//! nats-server. Afterwards it checks that every keyed monitor delivered its
//! events exactly once and in order, that no monitor ran in two drivers at
//! once for longer than a lapse (the drivers log their own pid and time),
//! that every sync operation was answered or recorded failed, and that
//! exactly one node leads. The seed fixes the fault schedule. Exits non-zero
//! on any violation.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::{json, Value};
use zerofoot_tests::modules::bundle;
use zerofoot_tests::{beat_spans, get_json, longest_overlap, Cluster, NodeFlags};

const LAPSE_MS: u64 = 500;

const COUNTER: &str = r#"#!/bin/sh
input=$(cat)
n=$(printf '%s' "$input" | jq -r '.checkpoint.n // 0')
total=$(printf '%s' "$input" | jq -r '.params.total')
beats=$(printf '%s' "$input" | jq -r '.params.beats')
while [ "$n" -lt "$total" ]; do
  echo "$HOME $(date +%s%3N)" >> "$beats"
  n=$((n + 1))
  echo "{\"type\":\"event\",\"key\":\"$n\",\"data\":{\"n\":$n}}"
  [ $((n % 10)) -eq 0 ] && echo "{\"type\":\"checkpoint\",\"data\":{\"n\":$n}}"
  sleep 0.05
done
"#;

const QUICK: &str = "#!/bin/sh\ncat >/dev/null\necho '{\"type\":\"result\",\"data\":\"ok\"}'\n";

/// xorshift64*: a repeatable schedule from a seed, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn millis(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_millis(from + self.below(to - from))
    }
}

/// Any management instance that answers.
async fn api(cluster: &Cluster, path: &str) -> Option<Value> {
    for m in &cluster.management {
        if let Ok(v) = get_json(&cluster.http, &m.url(path)).await {
            return Some(v);
        }
    }
    None
}

async fn lead_of(cluster: &Cluster) -> Option<String> {
    api(cluster, "/v1/cluster").await?["lead"]["node"]
        .as_str()
        .map(str::to_string)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> std::process::ExitCode {
    let mut args = std::env::args().skip(1);
    let duration = Duration::from_secs(args.next().and_then(|a| a.parse().ok()).unwrap_or(60));
    let seed: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    println!(
        "chaos: {}s, seed {seed} (run `scripts/chaos.sh {} {seed}` to repeat the schedule)",
        duration.as_secs(),
        duration.as_secs()
    );
    let mut rng = Rng(seed | 1);

    let mut cluster = Cluster::start(0).await;
    cluster.start_management();
    let mut proxies = Vec::new();
    for _ in 0..3 {
        let flags = NodeFlags(vec![
            "--heartbeat-ms".into(),
            "100".into(),
            "--lapse-ms".into(),
            LAPSE_MS.to_string(),
        ]);
        proxies.push(cluster.add_node_behind_proxy(&flags).await);
    }
    cluster.wait_healthy().await;
    cluster
        .publish(bundle(
            "counter",
            "1.0.0",
            json!({"count": {"kind": "async"}}),
            COUNTER,
        ))
        .await;
    cluster
        .publish(bundle(
            "quick",
            "1.0.0",
            json!({"go": {"kind": "sync", "timeout_ms": 10000, "retries": 3}}),
            QUICK,
        ))
        .await;
    cluster.wait_module("quick", "1.0.0").await;

    // Keyed monitors that outlast the faults.
    let total = duration.as_secs() * 20 + 200;
    let mut monitors = Vec::new();
    for i in 0..3 {
        let beats = cluster.shared_file(&format!("beats-{i}"));
        let (status, ctx) = cluster
            .post_json(
                "/v1/operations",
                &json!({"module": "counter", "operation": "count", "params": {"total": total, "beats": beats}}),
            )
            .await;
        assert_eq!(status, 202, "monitor start: {ctx}");
        monitors.push((ctx["id"].as_str().unwrap_or_default().to_string(), beats));
    }

    // A stream of sync operations through whichever instance answers.
    let submitted: Arc<Mutex<Vec<String>>> = Arc::default();
    let refused = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let ports: Vec<u16> = cluster.management.iter().map(|m| m.port).collect();
    let submitter = {
        let (submitted, refused, stop, http) = (
            submitted.clone(),
            refused.clone(),
            stop.clone(),
            cluster.http.clone(),
        );
        tokio::spawn(async move {
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let url = format!(
                    "http://127.0.0.1:{}/v1/operations?wait=false",
                    ports[i % ports.len()]
                );
                let sent = http
                    .post(url)
                    .json(&json!({"module": "quick", "operation": "go"}))
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await;
                match sent {
                    Ok(r) if r.status() == 202 => {
                        if let Ok(ctx) = r.json::<Value>().await {
                            if let Some(id) = ctx["id"].as_str() {
                                submitted
                                    .lock()
                                    .unwrap_or_else(|e| e.into_inner())
                                    .push(id.to_string());
                            }
                        }
                    }
                    // Not accepted (instance down, NATS down): nothing to track.
                    _ => {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };

    let mut faults: Vec<String> = Vec::new();
    let started = Instant::now();
    while started.elapsed() < duration {
        tokio::time::sleep(rng.millis(1000, 4000)).await;
        let lead = lead_of(&cluster).await;
        let lead_index = lead
            .as_ref()
            .and_then(|id| (0..cluster.nodes.len()).find(|i| &cluster.node_id(*i) == id));
        let fault = rng.below(7);
        let outage = rng.millis(500, 2500);
        let description = match (fault, lead_index) {
            (0, Some(i)) => {
                cluster.nodes[i].kill();
                tokio::time::sleep(outage).await;
                cluster.nodes[i].start();
                format!("SIGKILL lead node-{i} for {outage:?}")
            }
            (1, Some(i)) => {
                cluster.nodes[i].signal(Signal::SIGSTOP);
                tokio::time::sleep(outage).await;
                cluster.nodes[i].signal(Signal::SIGCONT);
                format!("SIGSTOP lead node-{i} for {outage:?}")
            }
            (0..=2, _) => {
                let aux = (0..cluster.nodes.len())
                    .filter(|i| Some(*i) != lead_index)
                    .nth(rng.below(2) as usize)
                    .unwrap_or(0);
                if rng.below(2) == 0 {
                    cluster.nodes[aux].kill();
                    tokio::time::sleep(outage).await;
                    cluster.nodes[aux].start();
                    format!("SIGKILL auxiliary node-{aux} for {outage:?}")
                } else {
                    cluster.nodes[aux].signal(Signal::SIGSTOP);
                    tokio::time::sleep(outage).await;
                    cluster.nodes[aux].signal(Signal::SIGCONT);
                    format!("SIGSTOP auxiliary node-{aux} for {outage:?}")
                }
            }
            (6, _) => {
                let i = match (lead_index, rng.below(2)) {
                    (Some(i), 0) => i,
                    _ => rng.below(cluster.nodes.len() as u64) as usize,
                };
                let role = if Some(i) == lead_index {
                    "lead"
                } else {
                    "auxiliary"
                };
                proxies[i].set_silent(true);
                tokio::time::sleep(outage).await;
                proxies[i].set_silent(false);
                format!("silent partition of {role} node-{i} from NATS for {outage:?}")
            }
            (3, _) => {
                let m = rng.below(cluster.management.len() as u64) as usize;
                cluster.management[m].process.kill();
                tokio::time::sleep(outage).await;
                cluster.management[m].process.start();
                format!("SIGKILL management-{m} for {outage:?}")
            }
            (4, _) => {
                if rng.below(2) == 0 {
                    cluster.repositories[0].kill();
                    tokio::time::sleep(outage).await;
                    cluster.repositories[0].start();
                    format!("SIGKILL repository for {outage:?}")
                } else {
                    cluster.repositories[0].signal(Signal::SIGSTOP);
                    tokio::time::sleep(outage).await;
                    cluster.repositories[0].signal(Signal::SIGCONT);
                    format!("SIGSTOP repository for {outage:?}")
                }
            }
            _ => {
                cluster.nats.crash_restart();
                "SIGKILL and restart of nats-server (same store)".to_string()
            }
        };
        println!(
            "chaos: t={:>5.1}s {description}",
            started.elapsed().as_secs_f64()
        );
        faults.push(description);
    }
    stop.store(true, Ordering::Relaxed);
    let _ = submitter.await;
    println!(
        "chaos: faults over after {} faults; letting the cluster settle",
        faults.len()
    );

    let mut violations: Vec<String> = Vec::new();
    // Monitors: complete, every event exactly once and in order.
    let mut events_total = 0usize;
    let mut worst_overlap = 0u64;
    for (op, beats) in &monitors {
        let overlap = longest_overlap(&beat_spans(beats));
        worst_overlap = worst_overlap.max(overlap);
        if overlap > LAPSE_MS {
            violations.push(format!(
                "monitor {op}: two drivers ran at once for {overlap} ms (lapse {LAPSE_MS} ms)"
            ));
        }
        let deadline = Instant::now() + Duration::from_secs(180);
        let mut state = String::new();
        while Instant::now() < deadline {
            state = api(&cluster, &format!("/v1/operations/{op}"))
                .await
                .map(|c| c["state"].as_str().unwrap_or("").to_string())
                .unwrap_or_default();
            if state == "complete" || state == "failed" || state == "cancelled" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        if state != "complete" {
            violations.push(format!("monitor {op} ended {state:?}, not complete"));
            continue;
        }
        let events = api(&cluster, &format!("/v1/operations/{op}/events?limit=10000"))
            .await
            .unwrap_or(Value::Null);
        let numbers: Vec<u64> = events["events"]
            .as_array()
            .map(|e| e.iter().filter_map(|e| e["data"]["n"].as_u64()).collect())
            .unwrap_or_default();
        events_total += numbers.len();
        if numbers != (1..=total).collect::<Vec<u64>>() {
            let repeats = numbers.len() as i64 - total as i64;
            violations.push(format!("monitor {op}: {} events, not exactly 1..{total} in order ({repeats:+} vs expected)", numbers.len()));
        }
    }
    // Sync operations: each answered (complete) or recorded failed.
    let ids = submitted.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let (mut complete, mut failed) = (0, 0);
    for op in &ids {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut state = String::new();
        while Instant::now() < deadline {
            state = api(&cluster, &format!("/v1/operations/{op}"))
                .await
                .map(|c| c["state"].as_str().unwrap_or("").to_string())
                .unwrap_or_default();
            if state == "complete" || state == "failed" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        match state.as_str() {
            "complete" => complete += 1,
            "failed" => failed += 1,
            other => violations.push(format!("sync operation {op} left {other:?}")),
        }
    }
    // Exactly one lead.
    let view = api(&cluster, "/v1/cluster").await.unwrap_or(Value::Null);
    let leads = view["nodes"]
        .as_array()
        .map(|n| {
            n.iter()
                .filter(|n| n["role"] == "lead" && n["status"] == "up")
                .count()
        })
        .unwrap_or(0);
    if leads != 1 {
        violations.push(format!("{leads} leads at the end: {}", view["nodes"]));
    }

    println!("chaos: faults injected: {}", faults.len());
    println!("chaos: sync operations accepted: {} (complete {complete}, failed {failed}); submissions refused while parts were down: {}", ids.len(), refused.load(Ordering::Relaxed));
    println!(
        "chaos: monitors: {}, events checked: {events_total}, longest two-driver overlap: {worst_overlap} ms",
        monitors.len()
    );
    println!("chaos: violations: {}", violations.len());
    for v in &violations {
        println!("chaos: VIOLATION {v}");
    }
    if violations.is_empty() {
        println!("chaos: PASS (seed {seed})");
        std::process::ExitCode::SUCCESS
    } else {
        println!("chaos: FAIL (seed {seed})");
        std::process::ExitCode::FAILURE
    }
}
