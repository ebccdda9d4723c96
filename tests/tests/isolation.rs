//! Module code is untrusted: a hostile module tries to reach what only the
//! node may (its environment and command line, its redb file, the secrets key, the NATS
//! passwords, other modules' bundles, inherited descriptors, NATS itself)
//! and to exhaust the machine (a fork bomb, 8 GiB). Every attempt fails, the
//! operation reports what the driver printed, the node stays up and a
//! concurrent operation is unaffected.

use std::time::Duration;

use serde_json::{json, Value};
use zerofoot_tests::modules::bundle;
use zerofoot_tests::Cluster;

/// Tries everything; prints `name: denied` or `name: ALLOWED <evidence>` a
/// line each, and answers with the lines.
const HOSTILE: &str = r#"#!/bin/sh
input=$(cat)
param() { printf '%s' "$input" | jq -r ".params.$1"; }
# What a program the driver starts holds: ls's own descriptors are 0-2 and
# the one it reads the directory with, which is 3 unless 3 was inherited.
ls /proc/self/fd > "$HOME/fds"
bundle=$(cd "$(dirname "$0")/.." && pwd)
report="$HOME/report"
try() { # name command...
  name=$1; shift
  if out=$("$@" 2>&1); then
    echo "$name: ALLOWED $(printf '%s' "$out" | head -c 120 | tr '\n' ' ')" >> "$report"
  else
    echo "$name: denied ($(printf '%s' "$out" | head -c 120 | tr '\n' ' '))" >> "$report"
  fi
}
try node_environ cat /proc/$(param node_pid)/environ
try node_cmdline cat /proc/$(param node_pid)/cmdline
try parent_environ cat /proc/$PPID/environ
try init_environ cat /proc/1/environ
try node_store head -c 64 "$(param store)"
try secrets_key cat "$(param secrets_key)"
try nats_passwords_list ls "$(param nats_auth)"
try nats_password cat "$(param nats_password)"
try other_bundle_list ls "$(param other_bundle)"
try other_bundle_read cat "$(param other_bundle)/module.json"
try other_bundle_write sh -c "echo pwned >> '$(param other_bundle)/bin/run'"
try own_bundle_write sh -c "echo pwned >> '$bundle/bin/run'"
try own_bundle_create sh -c "echo pwned > '$bundle/new-file'"
try signal_node kill -0 "$PPID"
try memory_8g dd if=/dev/zero of=/dev/null bs=8G count=1
# NATS with the only credentials a driver could find: none.
try nats_publish sh -c "printf 'CONNECT {\"verbose\":true}\r\nPUB zf.$(param cluster).node.$(param other_node).heartbeat 2\r\nhi\r\nPING\r\n' | curl -s --max-time 2 telnet://127.0.0.1:$(param nats_port) | grep -q PONG"
# A fork bomb, stopped by the operation's process limit.
( n=0; while [ $n -lt 400 ]; do sleep 30 & n=$((n+1)); echo $n >> "$HOME/forks"; done ) 2>"$HOME/bomb"
forks=$(tail -n 1 "$HOME/forks" 2>/dev/null)
echo "fork bomb stopped after ${forks:-0} processes: $(head -c 200 "$HOME/bomb")" >&2
jq -cn --rawfile report "$report" --rawfile fds "$HOME/fds" --arg uid "$(id -u)" --arg forks "${forks:-0}" \
  '{type: "result", data: {report: ($report | split("\n") | map(select(. != ""))), fds: ($fds | split("\n") | map(select(. != ""))), uid: ($uid | tonumber), forks: ($forks | tonumber)}}'
"#;

/// An innocent module: its bundle is the hostile one's target.
const VICTIM: &str = "#!/bin/sh\ncat >/dev/null\necho '{\"type\":\"result\",\"data\":\"fine\"}'\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_module_reaches_nothing_of_the_node_and_harms_no_one() {
    let cluster = Cluster::start(1).await;
    let victim = cluster
        .publish(bundle(
            "victim",
            "1.0.0",
            json!({"run": {"kind": "sync"}}),
            VICTIM,
        ))
        .await;
    cluster
        .publish(bundle(
            "hostile",
            "1.0.0",
            json!({"attack": {"kind": "sync", "timeout_ms": 60000,
                   "limits": {"processes": 32, "memory_mb": 512}}}),
            HOSTILE,
        ))
        .await;
    cluster.wait_module("victim", "1.0.0").await;
    cluster.wait_module("hostile", "1.0.0").await;
    let run_victim = || async {
        let (status, ctx) = cluster
            .post_json(
                "/v1/operations",
                &json!({"module": "victim", "operation": "run"}),
            )
            .await;
        assert_eq!(
            (status, &ctx["result"]),
            (200, &json!("fine")),
            "an innocent operation beside the hostile one: {ctx}"
        );
    };
    // The victim's bundle is unpacked on the node before the attack.
    run_victim().await;
    let digest = victim["digest"].as_str().expect("digest").to_string();
    let other_bundle = cluster.node_dir(0).join("modules").join(&digest);
    assert!(other_bundle.is_dir(), "{} unpacked", other_bundle.display());

    let (_, view) = cluster.get("/v1/cluster").await;
    assert_eq!(
        view["nodes"][0]["sandbox"], "landlock+pid-namespace",
        "this kernel has Landlock (ABI 7), and the node runs as root: {view}"
    );
    let node_id = cluster.node_id(0);
    let auth_dir = cluster.dir.path().join("nats-auth");
    let params = json!({
        "store": cluster.node_dir(0).join("node.redb"),
        "secrets_key": cluster.secrets_key_file(),
        "nats_auth": auth_dir,
        "nats_password": auth_dir.join(format!("zf-{}-agent.password", cluster.cluster)),
        "other_bundle": other_bundle,
        "cluster": cluster.cluster,
        "other_node": format!("{node_id}-not"),
        "nats_port": cluster.nats.port,
        "node_pid": cluster.nodes[0].pid().as_raw(),
    });
    let attack = {
        let http = cluster.http.clone();
        let url = cluster.url("/v1/operations");
        let body = json!({"module": "hostile", "operation": "attack", "params": params});
        tokio::spawn(async move {
            let response = http.post(url).json(&body).send().await.expect("POST");
            zerofoot_tests::status_and_json(response).await
        })
    };
    // Innocent work goes on while the attack runs.
    for _ in 0..3 {
        run_victim().await;
    }
    let (status, ctx) = attack.await.expect("attack task");
    assert_eq!(
        (status, ctx["state"].as_str()),
        (200, Some("complete")),
        "{ctx}"
    );
    let result = &ctx["result"];
    let report: Vec<String> = result["report"]
        .as_array()
        .expect("report lines")
        .iter()
        .filter_map(Value::as_str)
        .map(str::to_string)
        .collect();
    assert_eq!(report.len(), 16, "every attempt reported: {report:#?}");
    let allowed: Vec<&String> = report.iter().filter(|l| l.contains("ALLOWED")).collect();
    assert!(
        allowed.is_empty(),
        "attempts that got through: {allowed:#?}"
    );

    let fds: Vec<&str> = result["fds"]
        .as_array()
        .expect("fds")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(
        fds,
        ["0", "1", "2", "3"],
        "the driver holds stdin, stdout and stderr only (3 is ls reading /proc/self/fd)"
    );
    let uid = result["uid"].as_u64().expect("uid");
    assert!(
        uid != 0 && uid != u64::from(nix::unistd::getuid().as_raw()),
        "the driver runs as its own user, not the node's: uid {uid}"
    );
    let forks = result["forks"].as_u64().expect("forks");
    assert!(
        forks < 32,
        "the fork bomb stops at the operation's limit of 32 processes: {forks}"
    );

    // The bundles are as they were, and the node is up and still works.
    let victim_script = std::fs::read_to_string(other_bundle.join("bin/run")).expect("victim");
    assert_eq!(victim_script, VICTIM, "the victim's bundle is unchanged");
    cluster.wait_nodes_up(1).await;
    run_victim().await;
    zerofoot_tests::wait_until(
        "the fork bomb's processes to be gone with their driver",
        Duration::from_secs(10),
        || async {
            let out = std::process::Command::new("pgrep")
                .args(["-u", &uid.to_string()])
                .output()
                .map_err(|e| e.to_string())?;
            if out.stdout.is_empty() {
                Ok(())
            } else {
                Err(String::from_utf8_lossy(&out.stdout).into_owned())
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_given_in_the_environment_reaches_no_child() {
    let mut cluster = Cluster::start(0).await;
    let id = zerofoot_tests::node_name(0);
    let mut env = cluster.node_env(&id);
    env.retain(|(k, _)| k != "ZF_SECRETS_KEY_FILE");
    env.push((
        "ZF_SECRETS_KEY".into(),
        zerofoot_tests::TEST_SECRETS_KEY.into(),
    ));
    let node = zerofoot_tests::Process::spawn(
        "node-0",
        &zerofoot_tests::service_binary("zf-agent-node"),
        &[
            "--id".into(),
            id.clone(),
            "--data-dir".into(),
            cluster.node_dir(0).display().to_string(),
        ],
        &env,
        cluster.dir.path(),
    );
    let node_pid = node.pid().as_raw();
    cluster.nodes.push(node);
    cluster.wait_nodes_up(1).await;
    // The watchdog is the node's child from the start.
    let watchdog = zerofoot_tests::wait_until(
        "the node's watchdog process",
        Duration::from_secs(10),
        || async {
            zerofoot_tests::child_with_arg(node_pid, "watchdog")
                .ok_or_else(|| "no watchdog child yet".to_string())
        },
    )
    .await;
    let environ = std::fs::read(format!("/proc/{watchdog}/environ")).expect("watchdog environ");
    let environ = String::from_utf8_lossy(&environ);
    assert!(
        !environ.contains("ZF_SECRETS_KEY") && !environ.contains(zerofoot_tests::TEST_SECRETS_KEY),
        "the watchdog inherited the secrets key: {environ}"
    );
    assert!(
        environ.contains("ZF_CLUSTER="),
        "the rest of the environment is inherited: {environ}"
    );
    assert!(
        cluster.nodes[0]
            .log_text()
            .contains("a secret came from the environment"),
        "the node says the key should be a file"
    );
}

/// Notes its run (HOME) and the time when it starts and ends, a second apart.
const SLOW: &str = r#"#!/bin/sh
file=$(jq -r '.params.file')
echo "$HOME $(date +%s%3N)" >> "$file"
sleep 1
echo "$HOME $(date +%s%3N)" >> "$file"
echo '{"type":"result","data":"done"}'
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_max_drivers_work_waits_for_a_place() {
    let mut cluster = Cluster::start(0).await;
    cluster.add_node(&zerofoot_tests::NodeFlags(vec![
        "--max-drivers".into(),
        "1".into(),
    ]));
    cluster.wait_nodes_up(1).await;
    cluster
        .publish(bundle(
            "slow",
            "1.0.0",
            json!({"run": {"kind": "sync", "timeout_ms": 30000}}),
            SLOW,
        ))
        .await;
    cluster.wait_module("slow", "1.0.0").await;
    let file = cluster.shared_file("runs");
    let calls = (0..2).map(|_| {
        let http = cluster.http.clone();
        let url = cluster.url("/v1/operations");
        let body = json!({"module": "slow", "operation": "run", "params": {"file": file}});
        tokio::spawn(async move {
            let response = http.post(url).json(&body).send().await.expect("POST");
            zerofoot_tests::status_and_json(response).await
        })
    });
    for call in futures::future::join_all(calls).await {
        let (status, ctx) = call.expect("call");
        assert_eq!(
            (status, &ctx["result"]),
            (200, &json!("done")),
            "both complete, one after the other: {ctx}"
        );
    }
    let spans = zerofoot_tests::beat_spans(&file);
    assert_eq!(spans.len(), 2, "two runs: {spans:?}");
    assert_eq!(
        zerofoot_tests::longest_overlap(&spans),
        0,
        "with --max-drivers 1 the second driver waited for the first: {spans:?}"
    );
}
