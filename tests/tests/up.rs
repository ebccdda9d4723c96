//! `scripts/up.sh` as a newcomer uses it: the local cluster comes up, a
//! monitor runs, `scripts/kill.sh lead` SIGKILLs the lead, and the monitor
//! carries on under a new lead while up.sh starts the killed node again.
//! Runs the debug binaries the test build made (`ZF_BIN_DIR`), in a
//! folder and on ports of its own.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::{json, Value};
use zerofoot_tests::modules::bundle;
use zerofoot_tests::{free_port, get_json, status_and_json, wait_until, Process};

/// Counts with keyed events, a checkpoint every 10, 20 a second.
const COUNTER: &str = r#"#!/bin/sh
input=$(cat)
n=$(printf '%s' "$input" | jq -r '.checkpoint.n // 0')
while [ "$n" -lt 100000 ]; do
  n=$((n + 1))
  echo "{\"type\":\"event\",\"key\":\"$n\",\"data\":{\"n\":$n}}"
  if [ $((n % 10)) -eq 0 ]; then echo "{\"type\":\"checkpoint\",\"data\":{\"n\":$n}}"; fi
  sleep 0.05
done
"#;

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repository root")
        .to_path_buf()
}

async fn cluster_view(http: &reqwest::Client, base: &str) -> Result<Value, String> {
    get_json(http, &format!("{base}/v1/cluster")).await
}

/// How many nodes a cluster view shows `up`.
fn nodes_up(view: &Value) -> usize {
    view["nodes"]
        .as_array()
        .map(|n| n.iter().filter(|n| n["status"] == "up").count())
        .unwrap_or(0)
}

async fn events_so_far(http: &reqwest::Client, base: &str, op: &str) -> u64 {
    get_json(
        http,
        &format!("{base}/v1/operations/{op}/events?limit=10000"),
    )
    .await
    .ok()
    .and_then(|page| page["events"].as_array().map(|e| e.len() as u64))
    .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_sh_keeps_the_cluster_going_when_the_lead_is_killed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let bin = zerofoot_tests::service_binary("zf-agent-node")
        .parent()
        .expect("bin dir")
        .to_path_buf();
    let http_addr = format!("127.0.0.1:{}", free_port());
    let env: Vec<(String, String)> = vec![
        ("ZF_BIN_DIR".into(), bin.display().to_string()),
        ("ZF_UP_DATA".into(), data.display().to_string()),
        ("ZF_NATS_PORT".into(), free_port().to_string()),
        ("ZF_HTTP_ADDR".into(), http_addr.clone()),
        (
            "ZF_CLUSTER".into(),
            format!("up{}", &uuid::Uuid::new_v4().simple().to_string()[..6]),
        ),
    ];
    let mut up = Process::spawn(
        "up",
        &repo_root().join("scripts/up.sh"),
        &[],
        &env,
        dir.path(),
    );
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http");
    let base = format!("http://{http_addr}");
    wait_until(
        "up.sh's cluster: three nodes up and a lead",
        Duration::from_secs(120),
        || async {
            let view = cluster_view(&http, &base).await?;
            let up = nodes_up(&view);
            if up == 3 && view["lead"]["node"].is_string() {
                Ok(())
            } else {
                Err(view.to_string())
            }
        },
    )
    .await;

    let uploaded = http
        .post(format!("{base}/v1/modules"))
        .body(bundle(
            "counter",
            "1.0.0",
            json!({"count": {"kind": "async"}}),
            COUNTER,
        ))
        .send()
        .await
        .expect("upload");
    let (status, body) = status_and_json(uploaded).await;
    assert_eq!(status, 201, "{body}");
    let op = wait_until(
        "the monitor to start (the module index reaching management)",
        Duration::from_secs(30),
        || async {
            let response = http
                .post(format!("{base}/v1/operations"))
                .json(&json!({"module": "counter", "operation": "count"}))
                .send()
                .await
                .map_err(|e| e.to_string())?;
            match status_and_json(response).await {
                (202, ctx) => Ok(ctx["id"].as_str().unwrap_or_default().to_string()),
                (status, body) => Err(format!("{status} {body}")),
            }
        },
    )
    .await;
    wait_until(
        "the monitor's first events",
        Duration::from_secs(30),
        || async {
            match events_so_far(&http, &base, &op).await {
                n if n >= 5 => Ok(()),
                n => Err(format!("{n} events")),
            }
        },
    )
    .await;

    let first_lead = cluster_view(&http, &base).await.expect("view")["lead"]["node"]
        .as_str()
        .expect("lead")
        .to_string();
    let killed = Command::new(repo_root().join("scripts/kill.sh"))
        .arg("lead")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stderr(Stdio::piped())
        .output()
        .expect("scripts/kill.sh");
    assert!(
        killed.status.success(),
        "scripts/kill.sh lead: {}",
        String::from_utf8_lossy(&killed.stderr)
    );
    let said = String::from_utf8_lossy(&killed.stdout);
    assert!(
        said.contains(&first_lead),
        "it names the lead it killed: {said}"
    );

    let before = events_so_far(&http, &base, &op).await;
    wait_until(
        "another node to lead and the monitor to go on",
        Duration::from_secs(30),
        || async {
            let view = cluster_view(&http, &base).await?;
            let lead = view["lead"]["node"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            let now = events_so_far(&http, &base, &op).await;
            if !lead.is_empty() && lead != first_lead && now > before + 10 {
                Ok(())
            } else {
                Err(format!("lead {lead}, {now} events (had {before})"))
            }
        },
    )
    .await;
    wait_until(
        "up.sh to start the killed node again: three nodes up",
        Duration::from_secs(30),
        || async {
            let view = cluster_view(&http, &base).await?;
            let up = nodes_up(&view);
            if up == 3 {
                Ok(())
            } else {
                Err(view.to_string())
            }
        },
    )
    .await;
    let events: Value = get_json(
        &http,
        &format!("{base}/v1/operations/{op}/events?limit=10000"),
    )
    .await
    .expect("events");
    let keys: Vec<&str> = events["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["key"].as_str())
        .collect();
    let mut unique = keys.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(keys.len(), unique.len(), "every keyed event once");

    up.signal(Signal::SIGTERM);
    wait_until("up.sh to stop everything", Duration::from_secs(30), || {
        let gone = !up.is_running();
        async move {
            if gone {
                Ok(())
            } else {
                Err("still running".to_string())
            }
        }
    })
    .await;
    let left = Command::new("pgrep")
        .args(["-f", &data.display().to_string()])
        .output()
        .expect("pgrep");
    assert!(
        left.stdout.is_empty(),
        "up.sh left processes behind: {}",
        String::from_utf8_lossy(&left.stdout)
    );
}
