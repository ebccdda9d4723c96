//! The stock `ssh` module against real OpenSSH servers (Debian's sshd on
//! loopback ports, host and user keys made by the test), as an operator
//! managing machines with no agent sees it: a command and a script run
//! remotely, a file put once and then found unchanged, facts gathered and
//! kept as the resource's state, a wrong host key and a wrong password
//! refused with messages that say why, the key never shown anywhere, a
//! batch over a small fleet of servers, repeated commands that log in once
//! per node (the node's kept master connection), a tail and a watch across a
//! SIGKILL of the lead.

use std::time::Duration;

use serde_json::{json, Value};
use zerofoot_tests::modules::bundle;
use zerofoot_tests::sshd::Sshd;
use zerofoot_tests::{wait_until, Cluster};

async fn run(cluster: &Cluster, resource: &str, operation: &str, params: Value) -> Value {
    let (status, ctx) = cluster
        .post_json(
            "/v1/operations",
            &json!({"module": "ssh", "operation": operation, "resource": resource, "params": params}),
        )
        .await;
    assert_eq!(status, 200, "{ctx}");
    ctx
}

/// The error of an `exec` on `resource`, which must fail.
async fn refusal(cluster: &Cluster, resource: &str) -> String {
    let ctx = run(cluster, resource, "exec", json!({"command": "true"})).await;
    assert_eq!(ctx["state"], "failed", "{ctx}");
    ctx["error"].as_str().unwrap_or_default().to_string()
}

async fn put_resource(cluster: &Cluster, id: &str, body: &Value) {
    let (status, answer) = cluster.put_json(&format!("/v1/resources/{id}"), body).await;
    assert_eq!(status, 201, "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_put_and_facts_over_real_sshd_and_clear_refusals() {
    let cluster = Cluster::start(2).await;
    cluster.wait_module("ssh", "1.0.0").await;
    let sshd = Sshd::start(&cluster.shared().join("sshd-a")).await;
    put_resource(&cluster, "host-a", &sshd.resource(json!({"role": "db"}))).await;

    let ctx = run(
        &cluster,
        "host-a",
        "exec",
        json!({"command": "printf", "args": ["%s|", "a b", "$(x)", "c'd"]}),
    )
    .await;
    assert_eq!(ctx["state"], "complete", "{ctx}");
    assert_eq!(ctx["result"]["exit_code"], 0, "{ctx}");
    assert_eq!(
        ctx["result"]["stdout"], "a b|$(x)|c'd|",
        "each argument reaches the remote command as one word: {ctx}"
    );
    assert!(ctx["result"]["duration_ms"].as_u64().is_some(), "{ctx}");

    let ctx = run(
        &cluster,
        "host-a",
        "exec",
        json!({"script": "echo on $(hostname)\necho oops >&2\nexit 3\n"}),
    )
    .await;
    assert_eq!(
        ctx["state"], "complete",
        "a non-zero exit is a result: {ctx}"
    );
    assert_eq!(ctx["result"]["exit_code"], 3, "{ctx}");
    assert_eq!(ctx["result"]["stderr"], "oops\n", "{ctx}");
    let ctx = run(
        &cluster,
        "host-a",
        "exec",
        json!({"script": "exit 3", "check": true}),
    )
    .await;
    assert_eq!(ctx["state"], "failed", "check: true fails it: {ctx}");
    assert!(
        ctx["error"]
            .as_str()
            .unwrap_or("")
            .contains("exited with 3"),
        "{ctx}"
    );

    let target = sshd.dir.join("motd.txt");
    let put = json!({"path": target, "content": "managed by zerofoot\n", "mode": "0640"});
    let first = run(&cluster, "host-a", "put", put.clone()).await;
    assert_eq!(first["result"]["changed"], true, "{first}");
    let second = run(&cluster, "host-a", "put", put).await;
    assert_eq!(second["result"]["changed"], false, "{second}");
    assert_eq!(
        std::fs::read_to_string(&target).expect("the put file"),
        "managed by zerofoot\n"
    );
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&target)
            .expect("meta")
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o640);
    }
    let third = run(
        &cluster,
        "host-a",
        "put",
        json!({"path": target, "content_base64": "bmV3Cg==", "mode": "0640"}),
    )
    .await;
    assert_eq!(third["result"]["changed"], true, "{third}");
    assert_eq!(std::fs::read_to_string(&target).expect("file"), "new\n");

    let facts = run(&cluster, "host-a", "facts", json!({})).await;
    assert_eq!(facts["state"], "complete", "{facts}");
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .expect("hostname")
        .trim()
        .to_string();
    assert_eq!(facts["result"]["hostname"], hostname.as_str(), "{facts}");
    assert!(
        facts["result"]["cpus"].as_u64().unwrap_or(0) >= 1,
        "{facts}"
    );
    assert!(
        facts["result"]["memory_kib"].as_u64().unwrap_or(0) > 0,
        "{facts}"
    );
    assert!(
        facts["result"]["disks"]
            .as_array()
            .is_some_and(|d| !d.is_empty()),
        "{facts}"
    );
    wait_until(
        "the facts as host-a's state",
        Duration::from_secs(20),
        || async {
            let (_, resource) = cluster.get("/v1/resources/host-a").await;
            if resource["state"]["hostname"] == hostname.as_str() {
                Ok(())
            } else {
                Err(resource.to_string())
            }
        },
    )
    .await;

    // Another server's key under host-a's address: refused, both fingerprints named.
    let other = Sshd::start(&cluster.shared().join("sshd-b")).await;
    let mut wrong_key = sshd.resource(json!({}));
    wrong_key["config"]["host_key"] = json!(other.host_key);
    put_resource(&cluster, "host-wrong-key", &wrong_key).await;
    let error = refusal(&cluster, "host-wrong-key").await;
    assert!(
        error.contains("does not match")
            && error.contains("expected SHA256:")
            && error.contains("seen SHA256:"),
        "{error}"
    );

    let mut wrong_password = sshd.resource(json!({}));
    wrong_password["secrets"] = json!({"password": "not-the-password"});
    put_resource(&cluster, "host-wrong-password", &wrong_password).await;
    let error = refusal(&cluster, "host-wrong-password").await;
    assert!(
        error.contains("authentication as") && error.contains("permission denied"),
        "{error}"
    );
    assert!(!error.contains("not-the-password"), "{error}");

    // The private key never leaves the node: not in contexts, logs or state.
    let key_line = sshd
        .user_key
        .lines()
        .nth(1)
        .expect("a key body line")
        .to_string();
    let (_, operations) = cluster.get("/v1/operations?module=ssh&limit=1000").await;
    let mut seen = operations.to_string();
    for op in operations["operations"].as_array().expect("operations") {
        let id = op["id"].as_str().expect("id");
        let (_, logs) = cluster.get(&format!("/v1/operations/{id}/logs")).await;
        seen.push_str(&logs.to_string());
    }
    let (_, resources) = cluster.get("/v1/resources").await;
    seen.push_str(&resources.to_string());
    assert!(!seen.contains(&key_line), "the private key leaked");
}

/// A driver of another module on an ssh resource that tries its relay for
/// more than proxy mode: each `-O` request's exit code, and what a session
/// in proxy mode answered.
const PROBER: &str = r#"#!/bin/sh
input=$(cat)
cd "$HOME" || exit 2
if ! getent passwd "$(id -u)" >/dev/null 2>&1; then
  printf 'p:x:%s:%s::%s:/bin/sh\n' "$(id -u)" "$(id -g)" "$HOME" >"$HOME/passwd"
  export LD_PRELOAD=$(ls /usr/lib/*/libnss_wrapper.so | head -n 1) NSS_WRAPPER_PASSWD="$HOME/passwd" NSS_WRAPPER_GROUP=/etc/group
fi
relay=false; [ -S "${ZF_SSH_CONTROL:-}" ] && relay=true
o() { ssh -F /dev/null -S "$ZF_SSH_CONTROL" -o ProxyCommand=false "$@" x </dev/null >/dev/null 2>&1; echo $?; }
check=$(o -O check)
forward=$(o -O forward -L 127.0.0.1:0:127.0.0.1:22)
proxy=$(ssh -F /dev/null -S "$ZF_SSH_CONTROL" -O proxy -o ProxyCommand=false x uname </dev/null 2>/dev/null)
exit_code=$(o -O exit)
printf '{"type":"result","data":{"relay":%s,"check":%s,"forward":%s,"exit":%s,"proxy":"%s"}}\n' \
  "$relay" "$check" "$forward" "$exit_code" "$proxy"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_commands_reuse_one_login_per_node_and_survive_its_loss() {
    let mut cluster = Cluster::start(2).await;
    cluster.wait_module("ssh", "1.0.0").await;
    let mut sshd = Sshd::start(&cluster.shared().join("sshd-reuse")).await;
    put_resource(&cluster, "host-r", &sshd.resource(json!({}))).await;
    let mut ran_on = std::collections::BTreeSet::new();
    for i in 0..12 {
        let ctx = run(
            &cluster,
            "host-r",
            "exec",
            json!({"command": "echo", "args": [i.to_string()]}),
        )
        .await;
        assert_eq!(ctx["result"]["stdout"], format!("{i}\n"), "{ctx}");
        ran_on.insert(ctx["attempts"][0]["node"].to_string());
    }
    let nodes = cluster.nodes.len();
    assert_eq!(
        ran_on.len(),
        1,
        "operations on one resource go to its preferred node while it lives; they ran on {ran_on:?}"
    );
    assert_eq!(
        sshd.logins(),
        1,
        "12 commands logged in {} times; the node they ran on should log in once and keep the connection",
        sshd.logins()
    );

    // Another module's driver on the same resource finds the relay too, but
    // gets nothing from the master besides a session on this host: no
    // status check, no forward opened by the master, no exit.
    cluster
        .publish(bundle(
            "prober",
            "1.0.0",
            json!({"probe": {"kind": "sync", "timeout_ms": 30000}}),
            PROBER,
        ))
        .await;
    cluster.wait_module("prober", "1.0.0").await;
    let (status, probe) = cluster
        .post_json(
            "/v1/operations",
            &json!({"module": "prober", "operation": "probe", "resource": "host-r"}),
        )
        .await;
    assert_eq!(status, 200, "{probe}");
    assert_eq!(
        probe["result"]["relay"], true,
        "the run got a relay: {probe}"
    );
    for request in ["check", "forward"] {
        assert_ne!(
            probe["result"][request], 0,
            "-O {request} went through: {probe}"
        );
    }
    assert_eq!(
        probe["result"]["proxy"], "Linux",
        "proxy mode works: {probe}"
    );
    // (`-O exit` reports success when the master hangs up on it, so the
    // proof is that no node had to log in again.)
    let before = sshd.logins();
    for _ in 0..4 {
        let ctx = run(&cluster, "host-r", "exec", json!({"command": "true"})).await;
        assert_eq!(ctx["result"]["exit_code"], 0, "{ctx}");
    }
    assert_eq!(
        sshd.logins(),
        before,
        "the masters outlived the probe's -O exit"
    );

    // The server drops every connection: the next command still runs (on a
    // new master, or on its own connection), and so does the one after.
    sshd.restart().await;
    for i in 0..2 {
        let ctx = run(
            &cluster,
            "host-r",
            "exec",
            json!({"command": "echo", "args": ["again"]}),
        )
        .await;
        assert_eq!(
            ctx["result"]["stdout"], "again\n",
            "command {i} after the restart: {ctx}"
        );
    }

    // A node killed with its masters leaves none of them behind.
    let dirs: Vec<String> = (0..nodes)
        .map(|n| format!("{}/ssh/", cluster.node_dir(n).display()))
        .collect();
    let masters_of = |node: usize| processes_matching(&dirs[node]);
    let node = (0..nodes)
        .find(|n| masters_of(*n) > 0)
        .expect("a node keeps an ssh master after running commands on host-r");
    cluster.nodes[node].kill();
    wait_until(
        "the killed node's ssh masters to die with it",
        Duration::from_secs(10),
        || async {
            match masters_of(node) {
                0 => Ok(()),
                left => Err(format!("{left} ssh processes of node {node} left")),
            }
        },
    )
    .await;

    // With the resource's preferred node gone, the other node takes its
    // operations.
    let ctx = run(
        &cluster,
        "host-r",
        "exec",
        json!({"command": "echo", "args": ["elsewhere"]}),
    )
    .await;
    assert_eq!(ctx["result"]["stdout"], "elsewhere\n", "{ctx}");
    assert_ne!(
        ctx["attempts"][0]["node"],
        cluster.node_id(node),
        "a killed node ran an operation: {ctx}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_runs_a_command_on_a_fleet_of_sshd_hosts() {
    let cluster = Cluster::start(2).await;
    cluster.wait_module("ssh", "1.0.0").await;
    let mut servers = Vec::new();
    for i in 0..5 {
        let sshd = Sshd::start(&cluster.shared().join(format!("fleet-{i}"))).await;
        put_resource(
            &cluster,
            &format!("fleet-{i}"),
            &sshd.resource(json!({"role": "fleet"})),
        )
        .await;
        servers.push(sshd);
    }
    let (status, batch) = cluster
        .post_json(
            "/v1/operations",
            &json!({"module": "ssh", "operation": "exec", "targets": {"selector": "role=fleet"},
                    "max_parallel": 5, "params": {"command": "uname", "args": ["-s"]}}),
        )
        .await;
    assert_eq!(status, 202, "{batch}");
    let id = batch["id"].as_str().expect("batch id").to_string();
    let view = cluster.operation_end(&id, Duration::from_secs(60)).await;
    assert_eq!(view["state"], "complete", "{view}");
    for child in view["children"].as_array().expect("children") {
        let (_, ctx) = cluster
            .get(&format!(
                "/v1/operations/{}",
                child["id"].as_str().expect("id")
            ))
            .await;
        assert_eq!(ctx["result"]["stdout"], "Linux\n", "{ctx}");
    }
}

/// Appends `line-<n>` for n in `from..to` to `path`, one write per line,
/// 5 ms apart.
async fn write_lines(path: &std::path::Path, from: usize, to: usize) {
    use std::io::Write;
    for n in from..to {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .expect("open the log");
        file.write_all(format!("line-{n}\n").as_bytes())
            .expect("append a line");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Field `field` of every data of the operation's events that has it, in
/// seq order.
async fn event_texts(cluster: &Cluster, op: &str, field: &str) -> Vec<String> {
    let (_, page) = cluster
        .get(&format!("/v1/operations/{op}/events?limit=10000"))
        .await;
    page["events"]
        .as_array()
        .map(|events| {
            events
                .iter()
                .filter_map(|e| e["data"][field].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Every `line` of a tail's events, in seq order.
async fn tailed_lines(cluster: &Cluster, op: &str) -> Vec<String> {
    event_texts(cluster, op, "line").await
}

async fn wait_lines(cluster: &Cluster, op: &str, at_least: usize) {
    wait_until(
        &format!("{at_least} tailed lines"),
        Duration::from_secs(60),
        || async {
            let lines = tailed_lines(cluster, op).await;
            if lines.len() >= at_least {
                Ok(())
            } else {
                Err(format!("{} lines", lines.len()))
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_follows_a_remote_file_across_a_lead_kill_a_rotation_and_an_sshd_restart() {
    let mut cluster = Cluster::start(3).await;
    cluster.wait_module("ssh", "1.0.0").await;
    let mut sshd = Sshd::start(&cluster.shared().join("sshd-tail")).await;
    put_resource(&cluster, "host-t", &sshd.resource(json!({}))).await;
    let log = sshd.dir.join("app.log");
    write_lines(&log, 0, 100).await;

    let (status, ctx) = cluster
        .post_json(
            "/v1/operations",
            &json!({"module": "ssh", "operation": "tail", "resource": "host-t",
                    "params": {"path": log, "interval_ms": 100}}),
        )
        .await;
    assert_eq!(status, 202, "{ctx}");
    let op = ctx["id"].as_str().expect("id").to_string();
    wait_lines(&cluster, &op, 100).await;

    // SIGKILL the lead running the tail while lines keep coming.
    let (_, view) = cluster.get(&format!("/v1/operations/{op}")).await;
    let owner = view["owner"].as_str().expect("an owner").to_string();
    let lead = cluster.node_index(&owner);
    cluster.nodes[lead].kill();
    write_lines(&log, 100, 200).await;
    cluster.nodes[lead].start();

    // Rotate: the old file is renamed (and written once more), a new one starts.
    let rotated = sshd.dir.join("app.log.1");
    std::fs::rename(&log, &rotated).expect("rotate");
    write_lines(&rotated, 200, 210).await;
    write_lines(&log, 210, 300).await;
    wait_lines(&cluster, &op, 300).await;

    // sshd dies with every connection; the tail comes back on its own.
    sshd.restart().await;
    write_lines(&log, 300, 400).await;
    wait_lines(&cluster, &op, 400).await;

    let lines = tailed_lines(&cluster, &op).await;
    let want: Vec<String> = (0..400).map(|n| format!("line-{n}")).collect();
    let mut sorted = lines.clone();
    sorted.sort_by_key(|l| {
        l.trim_start_matches("line-")
            .parse::<usize>()
            .unwrap_or(usize::MAX)
    });
    assert_eq!(sorted, want, "every line exactly once");
    let (_, view) = cluster.get(&format!("/v1/operations/{op}")).await;
    assert_ne!(
        view["owner"],
        owner.as_str(),
        "the tail moved off the killed lead: {view}"
    );
    let (_, logs) = cluster.get(&format!("/v1/operations/{op}/logs")).await;
    assert!(
        logs.to_string().contains("the ssh session to 127.0.0.1"),
        "the driver told of the dropped session and made it again: {logs}"
    );

    // Cancelled while its file is quiet, the tail leaves nothing behind on
    // the host: no poller of a dead session goes on there.
    let (status, answer) = cluster.delete(&format!("/v1/operations/{op}")).await;
    assert_eq!(status, 202, "{answer}");
    let poller = format!("zf-tail {}", log.display());
    wait_until(
        "every remote poller of the tail to leave the host",
        Duration::from_secs(30),
        || async {
            match processes_matching(&poller) {
                0 => Ok(()),
                n => Err(format!("{n} pollers of {} left on the host", log.display())),
            }
        },
    )
    .await;
}

/// How many processes on this machine have `pattern` in their command line.
fn processes_matching(pattern: &str) -> usize {
    let out = std::process::Command::new("pgrep")
        .args(["-f", pattern])
        .output()
        .expect("pgrep (Debian: procps)");
    String::from_utf8_lossy(&out.stdout).lines().count()
}

/// The `stdout` of every event of a watch, in seq order.
async fn watched(cluster: &Cluster, op: &str) -> Vec<String> {
    event_texts(cluster, op, "stdout").await
}

async fn wait_watched(cluster: &Cluster, op: &str, want: &[&str]) {
    wait_until(
        &format!("the watch to tell {want:?}"),
        Duration::from_secs(60),
        || async {
            let seen = watched(cluster, op).await;
            if seen == want {
                Ok(())
            } else {
                Err(format!("{seen:?}"))
            }
        },
    )
    .await;
}

fn line_count(path: &std::path::Path) -> usize {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_tells_each_change_once_across_a_lead_kill() {
    let mut cluster = Cluster::start(3).await;
    cluster.wait_module("ssh", "1.0.0").await;
    let sshd = Sshd::start(&cluster.shared().join("sshd-watch")).await;
    put_resource(&cluster, "host-w", &sshd.resource(json!({}))).await;
    let state = sshd.dir.join("state");
    let polls = sshd.dir.join("polls");
    std::fs::write(&state, "v1\n").expect("write the state");
    let command = format!("cat {}; echo . >> {}", state.display(), polls.display());

    let (status, ctx) = cluster
        .post_json(
            "/v1/operations",
            &json!({"module": "ssh", "operation": "watch", "resource": "host-w",
                    "params": {"command": "sh", "args": ["-c", command], "interval_ms": 100}}),
        )
        .await;
    assert_eq!(status, 202, "{ctx}");
    let op = ctx["id"].as_str().expect("id").to_string();
    wait_watched(&cluster, &op, &["v1\n"]).await;
    std::fs::write(&state, "v2\n").expect("write the state");
    wait_watched(&cluster, &op, &["v1\n", "v2\n"]).await;

    // SIGKILL the lead running the watch; its successor resumes from the
    // checkpoint and, polling the same output, tells nothing.
    let (_, view) = cluster.get(&format!("/v1/operations/{op}")).await;
    let owner = view["owner"].as_str().expect("an owner").to_string();
    let lead = cluster.node_index(&owner);
    cluster.nodes[lead].kill();
    wait_until(
        "another node to run the watch",
        Duration::from_secs(30),
        || async {
            let (_, view) = cluster.get(&format!("/v1/operations/{op}")).await;
            match view["owner"].as_str() {
                Some(now) if now != owner && view["state"] == "running" => Ok(()),
                _ => Err(view.to_string()),
            }
        },
    )
    .await;
    let seen_polls = line_count(&polls);
    wait_until(
        "the new owner to poll twice",
        Duration::from_secs(30),
        || async {
            match line_count(&polls) {
                n if n >= seen_polls + 2 => Ok(()),
                n => Err(format!("{n} polls")),
            }
        },
    )
    .await;
    assert_eq!(
        watched(&cluster, &op).await,
        ["v1\n", "v2\n"],
        "no change told twice"
    );

    std::fs::write(&state, "v3\n").expect("write the state");
    wait_watched(&cluster, &op, &["v1\n", "v2\n", "v3\n"]).await;
    let (_, page) = cluster.get(&format!("/v1/operations/{op}/events")).await;
    let changes: Vec<u64> = page["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter_map(|e| e["data"]["change"].as_u64())
        .collect();
    assert_eq!(changes, [1, 2, 3], "{page}");
}
