//! The walking skeleton as a user meets it: services start, find each other
//! over NATS, show up in the cluster view, survive restarts and refuse bad
//! input with a one-line reason.

use std::time::Duration;

use futures::StreamExt;
use nix::sys::signal::Signal;
use serde_json::Value;
use zerofoot_tests::{
    get_json, run_to_end, service_binary, wait_until, Cluster, NatsAuth, NatsServer, NodeFlags,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_answer_ping_and_nodes_show_up_in_the_cluster_view() {
    let cluster = Cluster::start(3).await;
    let client = cluster.nats.client().await;

    for service in ["zf-management", "zf-repository", "zf-agent-node"] {
        let expected = if service == "zf-agent-node" { 3 } else { 1 };
        let found = wait_until(
            &format!("{expected} answer(s) to $SRV.PING.{service}"),
            Duration::from_secs(10),
            || {
                let (client, name) = (client.clone(), cluster.cluster.clone());
                async move {
                    let answers = ping(&client, service).await;
                    let ours = answers
                        .iter()
                        .filter(|a| a["metadata"]["cluster"] == name.as_str())
                        .count();
                    if ours == expected {
                        Ok(answers)
                    } else {
                        Err(format!("{ours} answered"))
                    }
                }
            },
        )
        .await;
        for answer in found {
            assert_eq!(answer["name"], service);
            assert_eq!(answer["version"], env!("CARGO_PKG_VERSION"));
            assert!(
                answer["metadata"]["instance"].is_string(),
                "instance id in metadata: {answer}"
            );
        }
    }

    let view = cluster.wait_nodes_up(3).await;
    assert_eq!(view["cluster"], cluster.cluster.as_str());
    for node in view["nodes"].as_array().expect("nodes") {
        assert!(
            node["id"]
                .as_str()
                .is_some_and(|id| id.starts_with("node-")),
            "{node}"
        );
        assert!(
            node["heartbeat_age_ms"]
                .as_u64()
                .is_some_and(|age| age < 2000),
            "{node}"
        );
        assert_eq!(node["version"], env!("CARGO_PKG_VERSION"));
        assert!(node["running"].is_u64(), "{node}");
        assert!(node["role"].is_string(), "{node}");
    }
    let management = wait_until(
        "the management instance in /v1/cluster",
        Duration::from_secs(10),
        || {
            let (http, url) = (cluster.http.clone(), cluster.url("/v1/cluster"));
            async move {
                let view = get_json(&http, &url).await?;
                match view["management"].as_array() {
                    Some(list) if !list.is_empty() => Ok(list.clone()),
                    _ => Err(view.to_string()),
                }
            }
        },
    )
    .await;
    assert_eq!(management[0]["id"], "mgmt-0");
}

async fn ping(client: &async_nats::Client, service: &str) -> Vec<Value> {
    let inbox = client.new_inbox();
    let mut sub = client.subscribe(inbox.clone()).await.expect("subscribe");
    client
        .publish_with_reply(format!("$SRV.PING.{service}"), inbox, "".into())
        .await
        .expect("publish ping");
    let mut answers = Vec::new();
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_millis(300), sub.next()).await {
        answers.push(serde_json::from_slice(&msg.payload).expect("ping answer is JSON"));
    }
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_is_shown_down_and_comes_back_with_the_same_id() {
    let mut cluster = Cluster::start(3).await;
    let node_id =
        std::fs::read_to_string(cluster.node_dir(1).join("node-id")).expect("node id file");

    cluster.nodes[1].kill();
    let status_of = |view: &Value| -> Option<String> {
        view["nodes"]
            .as_array()?
            .iter()
            .find(|n| n["id"] == node_id.as_str())
            .map(|n| n["status"].as_str().unwrap_or("").to_string())
    };
    wait_until(
        "the killed node shown as down",
        Duration::from_secs(10),
        || {
            let (http, url) = (cluster.http.clone(), cluster.url("/v1/cluster"));
            async move {
                let view = get_json(&http, &url).await?;
                if status_of(&view).as_deref() == Some("down") {
                    Ok(())
                } else {
                    Err(view.to_string())
                }
            }
        },
    )
    .await;

    cluster.nodes[1].start();
    let view = cluster.wait_nodes_up(3).await;
    assert_eq!(
        status_of(&view).as_deref(),
        Some("up"),
        "same id back up: {view}"
    );
    let ids: Vec<&str> = view["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter_map(|n| n["id"].as_str())
        .collect();
    assert_eq!(ids.len(), 3, "no new id appeared: {ids:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn management_waits_for_nats_and_answers_503_meanwhile() {
    let dir = tempfile::tempdir().expect("tempdir");
    let nats_port = zerofoot_tests::free_port();
    let http_port = zerofoot_tests::free_port();
    let auth = NatsAuth::generate(dir.path(), &["default"]);
    let mut env = auth.env("default", "management");
    env.push((
        "ZF_NATS_URL".into(),
        format!("nats://127.0.0.1:{nats_port}"),
    ));
    let mut management = zerofoot_tests::Process::spawn(
        "management",
        &service_binary("zf-management"),
        &["--http-addr".into(), format!("127.0.0.1:{http_port}")],
        &env,
        dir.path(),
    );
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{http_port}/healthz");
    let body: Value = wait_until(
        "/healthz to answer 503 while NATS is down",
        Duration::from_secs(10),
        || {
            let (http, url) = (http.clone(), url.clone());
            async move {
                let r = http.get(&url).send().await.map_err(|e| e.to_string())?;
                if r.status() == 503 {
                    r.json().await.map_err(|e| e.to_string())
                } else {
                    Err(format!("status {}", r.status()))
                }
            }
        },
    )
    .await;
    assert_eq!(body["error"]["code"], "unavailable", "{body}");
    wait_until(
        "a log line saying management waits for NATS",
        Duration::from_secs(10),
        || {
            let text = management.log_text();
            async move {
                if text.contains("waiting for NATS") {
                    Ok(())
                } else {
                    Err(text)
                }
            }
        },
    )
    .await;

    let _nats = NatsServer::start_on(dir.path(), nats_port, &auth);
    wait_until(
        "/healthz to answer 200 once NATS is up",
        Duration::from_secs(20),
        || {
            let (http, url) = (http.clone(), url.clone());
            async move {
                let r = http.get(&url).send().await.map_err(|e| e.to_string())?;
                if r.status() == 200 {
                    Ok(())
                } else {
                    Err(format!("status {}", r.status()))
                }
            }
        },
    )
    .await;
    assert!(management.is_running());
    let status = management
        .terminate(Duration::from_secs(10))
        .expect("management stops on SIGTERM");
    assert!(status.success(), "clean exit on SIGTERM: {status}");
}

fn assert_one_line_refusal(binary: &str, args: &[&str], envs: &[(&str, &str)], expected: &str) {
    let (status, stderr) = run_to_end(&service_binary(binary), args, envs);
    assert!(!status.success(), "{binary} {args:?} must fail");
    assert!(
        !stderr.contains("panicked"),
        "{binary} {args:?} panicked: {stderr}"
    );
    // The reason is the first line (clap adds a usage hint after it).
    let reason = stderr.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    assert!(
        reason.contains(expected),
        "{binary} {args:?}: expected {expected:?} in the first line of {stderr}"
    );
    assert!(
        stderr.lines().count() <= 6,
        "a short reason, not a trace: {stderr}"
    );
}

#[test]
fn bad_input_is_refused_with_a_one_line_reason() {
    for binary in ["zf-management", "zf-repository", "zf-agent-node"] {
        assert_one_line_refusal(binary, &["--no-such-flag"], &[], "--no-such-flag");
        assert_one_line_refusal(binary, &["--cluster", "Bad.Name"], &[], "a-z, 0-9");
        assert_one_line_refusal(binary, &[], &[("ZF_CLUSTER", "UPPER")], "a-z, 0-9");
    }
    assert_one_line_refusal(
        "zf-agent-node",
        &["--data-dir", "/dev/null/node"],
        &[],
        "cannot create the data dir",
    );
    assert_one_line_refusal("zf-management", &["--http-addr", "nowhere"], &[], "nowhere");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_node_on_the_same_data_dir_refuses_to_start() {
    let mut cluster = Cluster::bare().await;
    cluster.add_node(&NodeFlags::default());
    let dir = cluster.node_dir(0);
    wait_until(
        "the node to create its id file",
        Duration::from_secs(10),
        || {
            let exists = dir.join("node-id").exists();
            async move {
                if exists {
                    Ok(())
                } else {
                    Err("no node-id yet".into())
                }
            }
        },
    )
    .await;
    let env = cluster.node_env(&cluster.node_id(0));
    let envs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_one_line_refusal(
        "zf-agent-node",
        &["--data-dir", &dir.display().to_string()],
        &envs,
        "in use by another zf-agent-node",
    );
    assert!(cluster.nodes[0].is_running(), "the first node is unharmed");
    cluster.nodes[0].signal(Signal::SIGTERM);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_stop_on_sigterm_even_with_nats_gone_or_a_client_streaming() {
    let mut cluster = Cluster::start(1).await;
    cluster.wait_module("shell", "1.0.0").await;
    // A live SSE client on a running monitor.
    let script = "#!/bin/sh\ncat >/dev/null\nwhile :; do echo '{\"type\":\"event\",\"data\":1}'; sleep 0.2; done\n";
    cluster
        .publish(zerofoot_tests::modules::bundle(
            "beat",
            "1.0.0",
            serde_json::json!({"go": {"kind": "async"}}),
            script,
        ))
        .await;
    cluster.wait_module("beat", "1.0.0").await;
    let (_, ctx) = cluster
        .post_json(
            "/v1/operations",
            &serde_json::json!({"module": "beat", "operation": "go"}),
        )
        .await;
    let url = cluster.url(&format!(
        "/v1/operations/{}/events",
        ctx["id"].as_str().expect("id")
    ));
    let stream = cluster
        .http
        .get(url)
        .header("accept", "text/event-stream")
        .send()
        .await
        .expect("SSE");
    assert_eq!(stream.status(), 200);
    let status = cluster.management[0]
        .process
        .terminate(Duration::from_secs(10));
    assert!(
        status.is_some_and(|s| s.success()),
        "management stopped cleanly with a client streaming: {status:?}"
    );
    drop(stream);

    cluster.nats.process.kill();
    let status = cluster.nodes[0].terminate(Duration::from_secs(15));
    assert!(
        status.is_some_and(|s| s.success()),
        "the node stopped with NATS gone: {status:?}"
    );
    let status = cluster.repositories[0].terminate(Duration::from_secs(15));
    assert!(
        status.is_some_and(|s| s.success()),
        "the repository stopped with NATS gone: {status:?}"
    );
}

/// Logs once, then answers.
const CHATTY: &str = r#"#!/bin/sh
cat >/dev/null
echo '{"type":"log","level":"info","msg":"hello from the driver"}'
echo '{"type":"result","data":"ok"}'
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_the_node_and_the_operation() {
    let mut cluster = Cluster::bare().await;
    cluster.start_repository();
    cluster.start_management_with(&[("ZF_LOG_FORMAT", "json")]);
    cluster.add_node(&zerofoot_tests::NodeFlags(vec![
        "--log-format".into(),
        "json".into(),
    ]));
    cluster.wait_healthy().await;
    cluster
        .publish(zerofoot_tests::modules::bundle(
            "chatty",
            "1.0.0",
            serde_json::json!({"say": {"kind": "sync"}}),
            CHATTY,
        ))
        .await;
    cluster.wait_module("chatty", "1.0.0").await;
    let (status, ctx) = cluster
        .post_json(
            "/v1/operations",
            &serde_json::json!({"module": "chatty", "operation": "say"}),
        )
        .await;
    assert_eq!(
        (status, &ctx["result"]),
        (200, &serde_json::json!("ok")),
        "{ctx}"
    );
    let op = ctx["id"].as_str().expect("id").to_string();

    let parse = |log: String| -> Vec<Value> {
        log.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))
            })
            .collect()
    };
    let management = parse(cluster.management[0].process.log_text());
    assert!(
        management.iter().any(|l| l["fields"]["message"] == "ready"),
        "management logs JSON, with its messages: {management:?}"
    );
    let node = parse(cluster.nodes[0].log_text());
    let said = node
        .iter()
        .find(|l| l["fields"]["driver"] == "hello from the driver")
        .unwrap_or_else(|| panic!("the driver's log line in the node's log: {node:?}"));
    let spans = said["spans"].as_array().expect("spans");
    assert!(
        spans.iter().any(|s| s["node"] == "node-0"),
        "the node id is a field: {said}"
    );
    assert!(
        spans.iter().any(|s| s["op"] == op.as_str()),
        "the operation id is a field: {said}"
    );
}

/// `GET /healthz` on `port`: its status and body.
async fn health(http: &reqwest::Client, port: u16) -> Result<(u16, Value), String> {
    let response = http
        .get(format!("http://127.0.0.1:{port}/healthz"))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    Ok(zerofoot_tests::status_and_json(response).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_and_the_repository_answer_healthz_as_nats_comes_and_goes() {
    let mut cluster = Cluster::bare().await;
    let (repository_port, node_port) = (zerofoot_tests::free_port(), zerofoot_tests::free_port());
    let repository_addr = format!("127.0.0.1:{repository_port}");
    cluster.start_repository_with(&["--health-addr", &repository_addr]);
    cluster.start_management();
    cluster.add_node(&NodeFlags(vec![
        "--health-addr".into(),
        format!("127.0.0.1:{node_port}"),
    ]));
    cluster.wait_healthy().await;
    let http = cluster.http.clone();
    for (what, port) in [("repository", repository_port), ("node", node_port)] {
        let (_, body) = wait_until(
            &format!("the {what}'s /healthz to answer 200"),
            Duration::from_secs(20),
            || async {
                match health(&http, port).await? {
                    (200, body) => Ok((200, body)),
                    (status, body) => Err(format!("{status} {body}")),
                }
            },
        )
        .await;
        assert_eq!(body["checked"]["nats"], "connected", "{what}: {body}");
    }
    let (_, body) = health(&http, node_port).await.expect("node health");
    assert!(body["checked"]["mirror_lag"].is_u64(), "{body}");

    // NATS gone: both say so.
    cluster.nats.process.kill();
    for (what, port) in [("repository", repository_port), ("node", node_port)] {
        let (_, body) = wait_until(
            &format!("the {what}'s /healthz to answer 503 with NATS gone"),
            Duration::from_secs(20),
            || async {
                match health(&http, port).await? {
                    (503, body) => Ok((503, body)),
                    (status, body) => Err(format!("{status} {body}")),
                }
            },
        )
        .await;
        assert!(
            body["reason"].as_str().is_some_and(|r| !r.is_empty()),
            "{what}: {body}"
        );
    }
    // And back.
    cluster.nats.process.start();
    for (what, port) in [("repository", repository_port), ("node", node_port)] {
        wait_until(
            &format!("the {what}'s /healthz to answer 200 again"),
            Duration::from_secs(30),
            || async {
                match health(&http, port).await? {
                    (200, _) => Ok(()),
                    (status, body) => Err(format!("{status} {body}")),
                }
            },
        )
        .await;
    }
}
