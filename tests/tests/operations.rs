//! Operations as a user runs them: resources, sync operations through driver
//! processes, failures with clear errors, the redb mirror on every node, and
//! a node lost mid-operation.

use std::time::Duration;

use serde_json::{json, Value};
use zerofoot_tests::modules::bundle;
use zerofoot_tests::{wait_until, Cluster};

const SECRET: &str = "s3cr3t-Zq8-do-not-leak";

/// Answers with what it read on stdin and the sha256 of the secret it got.
const ECHO: &str = r#"#!/bin/sh
input=$(cat)
hash=$(printf '%s' "$input" | jq -r '.resource.secrets.password // ""' | tr -d '\n' | sha256sum | cut -d' ' -f1)
echo "driver saw the request" >&2
jq -cn --argjson stdin "$input" --arg hash "$hash" --arg env "$ZF_OPERATION $ZF_MODULE $ZF_MODULE_VERSION" \
  '{type: "result", data: {stdin: $stdin, secret_sha256: $hash, env: $env}}'
"#;

/// A monitor that writes its resource's password into an event's key and data.
const LEAKY: &str = r#"#!/bin/sh
pw=$(jq -r '.resource.secrets.password')
jq -cn --arg pw "$pw" '{type: "event", key: ("x-" + $pw), data: {pw: $pw}}'
"#;

fn sha256_hex(text: &str) -> String {
    let digest = zerofoot_shared::bundle::digest(text.as_bytes());
    digest.trim_start_matches("sha256:").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_operation_returns_what_the_driver_answered_and_no_secret_leaks() {
    let cluster = Cluster::start(2).await;
    cluster
        .publish(bundle(
            "echo",
            "1.0.0",
            json!({"echo": {"kind": "sync", "timeout_ms": 10000}}),
            ECHO,
        ))
        .await;
    cluster.wait_module("echo", "1.0.0").await;

    let resource = json!({"kind": "ssh-host", "config": {"host": "10.0.0.5", "port": 22}, "secrets": {"password": SECRET}});
    let (status, created) = cluster.put_json("/v1/resources/web-1", &resource).await;
    assert_eq!(status, 201, "{created}");
    let (status, replaced) = cluster.put_json("/v1/resources/web-1", &resource).await;
    assert_eq!(status, 200, "{replaced}");
    assert_eq!(replaced["secret_names"], json!(["password"]));

    let params = json!({"greeting": "hello", "nested": {"n": [1, 2, 3]}});
    let (status, ctx) = cluster
        .post_json(
            "/v1/operations",
            &json!({"module": "echo", "operation": "echo", "resource": "web-1", "params": params}),
        )
        .await;
    assert_eq!(status, 200, "{ctx}");
    assert_eq!(ctx["state"], "complete", "{ctx}");
    let result = &ctx["result"];
    let stdin = &result["stdin"];
    assert_eq!(stdin["v"], 1);
    assert_eq!(stdin["operation_id"], ctx["id"]);
    assert_eq!(stdin["operation"], "echo");
    assert_eq!(stdin["params"], params);
    assert_eq!(stdin["checkpoint"], Value::Null);
    assert_eq!(stdin["resource"]["id"], "web-1");
    assert_eq!(stdin["resource"]["kind"], "ssh-host");
    assert_eq!(stdin["resource"]["config"], resource["config"]);
    assert_eq!(
        stdin["resource"]["secrets"]["password"], "***",
        "masked before it left the node"
    );
    assert_eq!(
        result["secret_sha256"],
        sha256_hex(SECRET),
        "the driver received the secret"
    );
    assert_eq!(result["env"], "echo echo 1.0.0");
    assert_eq!(ctx["attempts"].as_array().map(Vec::len), Some(1));
    assert_eq!(ctx["attempts"][0]["outcome"], "complete");

    // The context is recorded at the cluster and served by GET.
    let id = ctx["id"].as_str().expect("id");
    let (status, stored) = cluster.get(&format!("/v1/operations/{id}")).await;
    assert_eq!(status, 200);
    assert_eq!(stored["state"], "complete");
    let (_, listed) = cluster
        .get("/v1/operations?state=complete&module=echo")
        .await;
    assert_eq!(listed["operations"][0]["id"], id);

    // The resources bucket holds the secret sealed, never in the clear.
    let client = cluster.nats.client().await;
    let js = async_nats::jetstream::new(client);
    let bucket = js
        .get_key_value(format!("zf_{}_resources", cluster.cluster))
        .await
        .expect("resources bucket");
    let raw = bucket.get("web-1").await.expect("get").expect("stored");
    let raw = String::from_utf8_lossy(&raw);
    assert!(!raw.contains(SECRET), "secret in the clear at rest: {raw}");
    assert!(raw.contains("sealed_secrets"), "{raw}");

    // A monitor that puts the secret in an event's key and data: both
    // reach the log masked.
    cluster
        .publish(bundle(
            "leaky",
            "1.0.0",
            json!({"leak": {"kind": "async"}}),
            LEAKY,
        ))
        .await;
    cluster.wait_module("leaky", "1.0.0").await;
    let (status, monitor) = cluster
        .post_json(
            "/v1/operations",
            &json!({"module": "leaky", "operation": "leak", "resource": "web-1"}),
        )
        .await;
    assert_eq!(status, 202, "{monitor}");
    let events_path = format!(
        "/v1/operations/{}/events",
        monitor["id"].as_str().expect("id")
    );
    let events = wait_until(
        "the leaky monitor's event",
        Duration::from_secs(30),
        || async {
            let (_, body) = cluster.get(&events_path).await;
            match body["events"].as_array() {
                Some(events) if !events.is_empty() => Ok(body),
                _ => Err(body.to_string()),
            }
        },
    )
    .await;
    assert_eq!(events["events"][0]["key"], "x-***", "{events}");
    assert_eq!(events["events"][0]["data"]["pw"], "***", "{events}");

    // No API response and no log line carries the secret.
    let mut responses = vec![created, replaced, ctx, stored, listed, events];
    responses.push(cluster.get("/v1/resources/web-1").await.1);
    responses.push(cluster.get("/v1/resources").await.1);
    for body in &responses {
        assert!(
            !body.to_string().contains(SECRET),
            "secret in a response: {body}"
        );
    }
    assert!(!cluster.all_logs().contains(SECRET), "secret in a log");

    // Drivers run below the node's priority, so busy drivers cannot starve
    // its heartbeats (`nice` prints the niceness it runs at).
    let node_niceness = std::fs::read_to_string(format!("/proc/{}/stat", cluster.nodes[0].pid()))
        .ok()
        .and_then(|stat| {
            let after_name = stat.rsplit_once(')')?.1.to_string();
            after_name.split_whitespace().nth(16)?.parse::<i32>().ok()
        })
        .expect("the node's niceness from /proc");
    cluster.wait_module("shell", "1.0.0").await;
    let (_, ctx) = cluster
        .post_json(
            "/v1/operations",
            &json!({"module": "shell", "operation": "run", "params": {"command": "nice"}}),
        )
        .await;
    assert_eq!(
        ctx["result"]["stdout"],
        format!("{}\n", (node_niceness + 10).min(19)),
        "{ctx}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_slow_and_noisy_drivers_fail_clearly_and_the_node_stays_up() {
    let cluster = Cluster::start(1).await;
    let pid_file = cluster.shared_file("grandchild.pid");
    let script = format!(
        r#"#!/bin/sh
cat >/dev/null
case "$1" in
fail) echo "disk on fire" >&2; exit 3 ;;
slow) sleep 300 & echo "$HOME" > {pid}; sleep 300 ;;
noisy) head -c 2097152 /dev/zero | tr '\0' 'x'; echo ;;
ok) echo '{{"type":"result","data":"fine"}}' ;;
esac
"#,
        pid = pid_file.display()
    );
    let ops = json!({
        "fail": {"kind": "sync"}, "slow": {"kind": "sync", "timeout_ms": 1500},
        "noisy": {"kind": "sync"}, "ok": {"kind": "sync"}
    });
    cluster.publish(bundle("bad", "1.0.0", ops, &script)).await;
    cluster.wait_module("bad", "1.0.0").await;
    let cluster = &cluster;
    let run = |op: &'static str| async move {
        cluster
            .post_json("/v1/operations", &json!({"module": "bad", "operation": op}))
            .await
    };

    let (status, ctx) = run("fail").await;
    assert_eq!(
        (status, ctx["state"].as_str()),
        (200, Some("failed")),
        "{ctx}"
    );
    let error = ctx["error"].as_str().unwrap_or("");
    assert!(
        error.contains("status 3") && error.contains("disk on fire"),
        "{error}"
    );

    let started = std::time::Instant::now();
    let (status, ctx) = run("slow").await;
    let took = started.elapsed();
    assert_eq!(
        (status, ctx["state"].as_str()),
        (200, Some("failed")),
        "{ctx}"
    );
    assert!(
        ctx["error"]
            .as_str()
            .unwrap_or("")
            .contains("timeout of 1500 ms"),
        "{ctx}"
    );
    assert!(
        took < Duration::from_secs(60),
        "answered long after the timeout: {took:?}"
    );
    let slow_run = std::fs::read_to_string(&pid_file)
        .expect("the slow run's HOME")
        .trim()
        .to_string();
    zerofoot_tests::wait_run_gone("the driver and its grandchild to be gone", &slow_run).await;

    let (status, ctx) = run("noisy").await;
    assert_eq!(
        (status, ctx["state"].as_str()),
        (200, Some("failed")),
        "{ctx}"
    );
    assert!(
        ctx["error"]
            .as_str()
            .unwrap_or("")
            .contains("longer than 1048576 bytes"),
        "{ctx}"
    );

    let (status, ctx) = run("ok").await;
    assert_eq!(
        (status, &ctx["result"]),
        (200, &json!("fine")),
        "the node is healthy: {ctx}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_errors() {
    let cluster = Cluster::start(1).await;
    let cases = [
        (json!({"module": "nope", "operation": "run"}), 404, "nope"),
        (json!({"module": "shell", "operation": "dance"}), 422, "run"),
        (
            json!({"module": "shell", "operation": "run", "params": [1]}),
            400,
            "params must be a JSON object",
        ),
        (
            json!({"module": "shell", "operation": "run", "resource": "ghost"}),
            404,
            "ghost",
        ),
        (
            json!({"module": "shell", "version": "9.9.9", "operation": "run"}),
            404,
            "9.9.9",
        ),
        (json!({"operation": "run"}), 400, "module"),
    ];
    for (body, status, expected) in cases {
        let (got, answer) = cluster.post_json("/v1/operations", &body).await;
        assert_eq!(got, status, "{body}: {answer}");
        let message = answer["error"]["message"].as_str().unwrap_or("");
        assert!(
            message.contains(expected),
            "{body}: expected {expected:?} in {message:?}"
        );
    }
    let r = cluster
        .http
        .post(cluster.url("/v1/operations"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("POST");
    let (status, answer) = zerofoot_tests::status_and_json(r).await;
    assert_eq!(status, 400, "{answer}");
    assert_eq!(answer["error"]["code"], "invalid_json");
    let (status, _) = cluster.get("/v1/operations/not-a-uuid").await;
    assert_eq!(status, 400);
    let (status, _) = cluster
        .get(&format!("/v1/operations/{}", uuid::Uuid::new_v4()))
        .await;
    assert_eq!(status, 404);
    let (status, _) = cluster
        .put_json("/v1/resources/bad.id", &json!({"kind": "x"}))
        .await;
    assert_eq!(status, 400);
    let (status, _) = cluster
        .put_json(
            "/v1/resources/ok",
            &json!({"kind": "x", "secrets": {"a": 1}}),
        )
        .await;
    assert_eq!(status, 400, "secrets must be strings");
    let (status, _) = cluster.get("/healthz").await;
    assert_eq!(status, 200);
}

async fn mirror_holds(cluster: &Cluster, client: &async_nats::Client, node: &str, expected: usize) {
    wait_until(
        &format!("node {node}'s redb mirror to hold {expected} contexts"),
        Duration::from_secs(30),
        || async move {
            let mirror = cluster.mirror(client, node).await?;
            let count = mirror["contexts"].as_array().map(Vec::len).unwrap_or(0);
            let complete = mirror["contexts"]
                .as_array()
                .map(|c| c.iter().filter(|c| c["state"] == "complete").count())
                .unwrap_or(0);
            if count == expected && complete == expected {
                Ok(())
            } else {
                Err(format!("{count} contexts, {complete} complete"))
            }
        },
    )
    .await;
}

async fn run_many(cluster: &Cluster, count: usize, clients: usize) {
    let request = &json!({"module": "shell", "operation": "run", "params": {"command": "true"}});
    let tasks = (0..clients).map(|client| async move {
        // Client k runs every clients-th operation, so the total is exact.
        for _ in (client..count).step_by(clients) {
            let (status, ctx) = cluster.post_json("/v1/operations", request).await;
            assert_eq!(
                (status, ctx["state"].as_str()),
                (200, Some("complete")),
                "{ctx}"
            );
        }
    });
    futures::future::join_all(tasks).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_mirrors_every_context_and_catches_up_after_a_restart() {
    let mut cluster = Cluster::start(3).await;
    cluster.wait_module("shell", "1.0.0").await;
    let client = cluster.nats.client().await;
    let ids: Vec<String> = (0..3).map(|i| cluster.node_id(i)).collect();

    run_many(&cluster, 200, 16).await;
    for id in &ids {
        mirror_holds(&cluster, &client, id, 200).await;
    }

    cluster.nodes[2].kill();
    cluster.wait_nodes_up(2).await;
    run_many(&cluster, 500, 16).await;
    cluster.nodes[2].start();
    cluster.wait_nodes_up(3).await;
    for id in &ids {
        mirror_holds(&cluster, &client, id, 700).await;
    }
    assert!(
        cluster.nodes[2]
            .log_text()
            .contains("replaying missed changes"),
        "the restarted node replayed from its revision rather than rebuilding"
    );

    // The redb file itself, read from outside once the node stopped.
    cluster.nodes[1].terminate(Duration::from_secs(10));
    let out = std::process::Command::new(zerofoot_tests::service_binary("zf-agent-node"))
        .args([
            "inspect",
            "--data-dir",
            &cluster.node_dir(1).display().to_string(),
        ])
        .output()
        .expect("inspect");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dump: Value = serde_json::from_slice(&out.stdout).expect("inspect prints JSON");
    assert_eq!(dump["contexts"].as_array().map(Vec::len), Some(700));
    assert!(dump["contexts_revision"].as_u64().unwrap_or(0) > 700);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operation_whose_node_dies_completes_on_another_node() {
    let mut cluster = Cluster::start(3).await;
    let script =
        "#!/bin/sh\ncat >/dev/null\nsleep 3\necho '{\"type\":\"result\",\"data\":\"done\"}'\n";
    cluster
        .publish(bundle(
            "slow",
            "1.0.0",
            json!({"work": {"kind": "sync", "timeout_ms": 20000}}),
            script,
        ))
        .await;
    cluster.wait_module("slow", "1.0.0").await;

    let waiting = {
        let http = cluster.http.clone();
        let url = cluster.url("/v1/operations");
        tokio::spawn(async move {
            let r = http
                .post(url)
                .json(&json!({"module": "slow", "operation": "work"}))
                .send()
                .await
                .expect("POST");
            zerofoot_tests::status_and_json(r).await
        })
    };
    let (op, owner) = wait_until(
        "the operation to be running on a node",
        Duration::from_secs(10),
        || async {
            let (_, list) = cluster.get("/v1/operations?module=slow").await;
            let ctx = &list["operations"][0];
            match (ctx["state"].as_str(), ctx["owner"].as_str()) {
                (Some("running"), Some(owner)) => Ok((
                    ctx["id"].as_str().unwrap_or("").to_string(),
                    owner.to_string(),
                )),
                _ => Err(list.to_string()),
            }
        },
    )
    .await;
    let victim = cluster.node_index(&owner);
    cluster.nodes[victim].kill();

    let (status, ctx) = waiting.await.expect("waiting request");
    assert_eq!(
        status, 200,
        "the waiting HTTP call got the final answer: {ctx}"
    );
    assert_eq!(ctx["id"], op.as_str());
    assert_eq!(ctx["state"], "complete", "{ctx}");
    assert_eq!(ctx["result"], "done");
    let attempts = ctx["attempts"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 2, "{ctx}");
    assert_eq!(attempts[0]["node"], owner.as_str());
    assert_eq!(attempts[0]["outcome"], "lost");
    assert_ne!(attempts[1]["node"], owner.as_str());
    assert_eq!(attempts[1]["outcome"], "complete");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reported_resource_state_reaches_the_api() {
    let cluster = Cluster::start(1).await;
    let script = "#!/bin/sh\ncat >/dev/null\necho '{\"type\":\"resource_state\",\"data\":{\"disk\":\"ok\",\"load\":0.5}}'\necho '{\"type\":\"result\",\"data\":null}'\n";
    cluster
        .publish(bundle(
            "reporter",
            "1.0.0",
            json!({"check": {"kind": "sync"}}),
            script,
        ))
        .await;
    cluster.wait_module("reporter", "1.0.0").await;
    cluster
        .put_json("/v1/resources/db-1", &json!({"kind": "db", "config": {}}))
        .await;
    let (status, ctx) = cluster
        .post_json(
            "/v1/operations",
            &json!({"module": "reporter", "operation": "check", "resource": "db-1"}),
        )
        .await;
    assert_eq!(
        (status, ctx["state"].as_str()),
        (200, Some("complete")),
        "{ctx}"
    );
    let node = cluster.node_id(0);
    let resource = wait_until(
        "the reported state on the resource",
        Duration::from_secs(10),
        || async {
            let (_, r) = cluster.get("/v1/resources/db-1").await;
            if r["state"]["disk"] == "ok" {
                Ok(r)
            } else {
                Err(r.to_string())
            }
        },
    )
    .await;
    assert_eq!(resource["reported_by"], node.as_str());
    assert!(resource["state_updated_at"].is_string(), "{resource}");
    let (status, _) = cluster
        .http
        .delete(cluster.url("/v1/resources/db-1"))
        .send()
        .await
        .map(|r| (r.status().as_u16(), ()))
        .expect("DELETE");
    assert_eq!(status, 204);
    let (status, _) = cluster.get("/v1/resources/db-1").await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_operations_are_purged_after_their_retention() {
    let mut cluster = Cluster::bare().await;
    // The contexts bucket as an earlier zerofoot made it: without per-message
    // TTLs, so purges would leave markers behind for ever.
    let admin = cluster.nats.client().await;
    let js = async_nats::jetstream::new(admin);
    let bucket = format!("zf_{}_contexts", cluster.cluster);
    js.create_key_value(async_nats::jetstream::kv::Config {
        bucket: bucket.clone(),
        history: 1,
        ..Default::default()
    })
    .await
    .expect("create the contexts bucket the old way");
    cluster.start_repository();
    cluster.start_management();
    // Default lapse: a shorter one can make a loaded machine's only node
    // fence itself and give its own operation up, which is not this story.
    cluster.add_node(&zerofoot_tests::NodeFlags(vec![
        "--context-retention-s".into(),
        "2".into(),
    ]));
    cluster.wait_healthy().await;
    cluster.wait_module("shell", "1.0.0").await;
    let (status, ctx) = cluster
        .post_json(
            "/v1/operations",
            &json!({"module": "shell", "operation": "run", "params": {"command": "true"}}),
        )
        .await;
    assert_eq!(
        (status, ctx["state"].as_str()),
        (200, Some("complete")),
        "{ctx}"
    );
    let path = format!("/v1/operations/{}", ctx["id"].as_str().expect("id"));
    assert_eq!(
        cluster.get(&path).await.0,
        200,
        "kept right after it finished"
    );
    wait_until(
        "the finished operation to be purged",
        Duration::from_secs(20),
        || async {
            let (status, body) = cluster.get(&path).await;
            if status == 404 {
                Ok(())
            } else {
                Err(body.to_string())
            }
        },
    )
    .await;
    let mut stream = js
        .get_stream(format!("KV_{bucket}"))
        .await
        .expect("the contexts stream");
    let info = stream.info().await.expect("contexts stream info");
    assert!(
        info.config.allow_message_ttl,
        "the services turn per-message TTLs on for an old bucket"
    );
    let marker = stream
        .get_last_raw_message_by_subject(&format!(
            "$KV.{bucket}.{}",
            ctx["id"].as_str().unwrap_or_default()
        ))
        .await
        .expect("the purge marker");
    assert!(
        marker.headers.get("Nats-TTL").is_some(),
        "the purge marker expires (Nats-TTL header); headers: {:?}",
        marker.headers
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submission_nobody_confirms_is_recorded_pending_and_still_runs_once() {
    let cluster = Cluster::start(1).await;
    cluster.wait_module("shell", "1.0.0").await;
    // The only node is paused: it holds the request but cannot answer.
    cluster.nodes[0].signal(nix::sys::signal::Signal::SIGSTOP);
    let call = {
        let http = cluster.http.clone();
        let url = cluster.url("/v1/operations");
        tokio::spawn(async move {
            let r = http
                .post(url)
                .json(&json!({"module": "shell", "operation": "run",
                    "params": {"command": "echo", "args": ["swept"]}}))
                .send()
                .await
                .expect("POST");
            zerofoot_tests::status_and_json(r).await
        })
    };
    let pending = wait_until(
        "management to record the unconfirmed submission as pending",
        Duration::from_secs(20),
        || async {
            let (_, list) = cluster.get("/v1/operations?state=pending").await;
            match list["operations"].as_array().and_then(|ops| ops.first()) {
                Some(op) => Ok(op["id"].as_str().unwrap_or_default().to_string()),
                None => Err(list.to_string()),
            }
        },
    )
    .await;
    cluster.nodes[0].signal(nix::sys::signal::Signal::SIGCONT);
    let (status, body) = call.await.expect("the call returns");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["id"], pending.as_str(), "{body}");
    assert_eq!(body["state"], "complete", "{body}");
    assert_eq!(body["result"]["stdout"], "swept\n", "{body}");
    assert_eq!(
        body["attempts"].as_array().map(Vec::len),
        Some(1),
        "run once, by the node that swept it up: {body}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn params_are_checked_against_the_operation_schema_before_anything_runs() {
    let cluster = Cluster::start(1).await;
    let schema = json!({"type": "object", "required": ["path"],
        "properties": {"path": {"type": "string"}, "lines": {"type": "integer", "minimum": 1}},
        "additionalProperties": false});
    let ops = json!({"tail": {"kind": "sync", "description": "the last lines of a file", "params": schema}});
    cluster.publish(bundle("tailer", "1.0.0", ops, ECHO)).await;
    cluster.wait_module("tailer", "1.0.0").await;

    let (status, body) = cluster
        .post_json(
            "/v1/operations",
            &json!({"module": "tailer", "operation": "tail", "params": {"lines": 0, "colour": "red"}}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "invalid_params", "{body}");
    let violations = body["error"]["violations"].as_array().expect("violations");
    assert_eq!(
        violations.len(),
        3,
        "missing path, lines below 1, unknown colour: {body}"
    );
    let (_, listed) = cluster.get("/v1/operations?module=tailer").await;
    assert_eq!(
        listed["operations"].as_array().map(Vec::len),
        Some(0),
        "nothing was recorded or run: {listed}"
    );

    let (status, ctx) = cluster
        .post_json(
            "/v1/operations",
            &json!({"module": "tailer", "operation": "tail", "params": {"path": "/var/log/x", "lines": 5}}),
        )
        .await;
    assert_eq!(
        (status, ctx["state"].as_str()),
        (200, Some("complete")),
        "{ctx}"
    );

    let (status, module) = cluster.get("/v1/modules/tailer").await;
    assert_eq!(status, 200, "{module}");
    let text = module.to_string();
    assert!(
        text.contains("the last lines of a file") && text.contains("additionalProperties"),
        "the module shows its operations' descriptions and schemas: {module}"
    );

    let (status, body) = cluster
        .upload(bundle(
            "badschema",
            "1.0.0",
            json!({"x": {"kind": "sync", "params": {"type": "no-such-type"}}}),
            ECHO,
        ))
        .await;
    assert_eq!(status, 422, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("params is not a valid JSON Schema"),
        "{body}"
    );
}
