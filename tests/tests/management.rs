//! Several management instances: nodes register with each (and drop the gone
//! ones), any instance answers any request, and work finishes when a
//! management instance and a node fail together.

use std::time::Duration;

use serde_json::{json, Value};
use zerofoot_tests::modules::bundle;
use zerofoot_tests::{get_json, wait_until, Cluster, NodeFlags};

fn fast() -> NodeFlags {
    NodeFlags(vec![
        "--heartbeat-ms".into(),
        "50".into(),
        "--lapse-ms".into(),
        "250".into(),
    ])
}

async fn cluster_view(cluster: &Cluster, instance: usize) -> Value {
    get_json(
        &cluster.http,
        &cluster.management[instance].url("/v1/cluster"),
    )
    .await
    .unwrap_or(Value::Null)
}

/// Waits until instance `via` shows every node registered with exactly `expected`.
async fn wait_registered(cluster: &Cluster, via: usize, expected: &[&str], within: Duration) {
    let mut want: Vec<String> = expected.iter().map(|s| s.to_string()).collect();
    want.sort();
    wait_until(
        &format!("every node registered with {want:?}"),
        within,
        || async {
            let view = cluster_view(cluster, via).await;
            let nodes = view["nodes"].as_array().cloned().unwrap_or_default();
            let ok = nodes.len() == cluster.nodes.len()
                && nodes.iter().all(|n| {
                    let mut got: Vec<String> = n["registered_with"]
                        .as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(|v| v.as_str().map(str::to_string))
                                .collect()
                        })
                        .unwrap_or_default();
                    got.sort();
                    got == want
                });
            if ok {
                Ok(())
            } else {
                Err(view["nodes"].to_string())
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_register_with_every_instance_and_drop_gone_ones() {
    let mut cluster = Cluster::start(3).await;
    cluster
        .put_json(
            "/v1/resources/r1",
            &json!({"kind": "host", "config": {"a": 1}, "secrets": {"k": "hidden-value-1"}}),
        )
        .await;
    cluster.start_management();
    cluster.wait_healthy().await;
    wait_registered(&cluster, 0, &["mgmt-0", "mgmt-1"], Duration::from_secs(10)).await;
    wait_registered(&cluster, 1, &["mgmt-0", "mgmt-1"], Duration::from_secs(10)).await;

    // Each instance got every node's inventory.
    let view = cluster_view(&cluster, 1).await;
    assert!(
        view["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .all(|n| n["inventory"] == 1),
        "{view}"
    );
    let listed: Vec<&str> = view["management"]
        .as_array()
        .expect("management")
        .iter()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert_eq!(listed, ["mgmt-0", "mgmt-1"]);

    // A third instance started later is registered with within 2 s.
    let third = cluster.start_management();
    cluster.wait_healthy().await;
    let started = std::time::Instant::now();
    wait_registered(
        &cluster,
        third,
        &["mgmt-0", "mgmt-1", "mgmt-2"],
        Duration::from_secs(10),
    )
    .await;
    let took = started.elapsed();
    eprintln!("a new management instance was registered with after {took:?}");

    // A killed instance is dropped by the nodes.
    cluster.management[1].process.kill();
    wait_registered(&cluster, 0, &["mgmt-0", "mgmt-2"], Duration::from_secs(10)).await;

    // Any instance answers the same way.
    let a = get_json(
        &cluster.http,
        &cluster.management[0].url("/v1/resources/r1"),
    )
    .await
    .expect("r1 on 0");
    let c = get_json(
        &cluster.http,
        &cluster.management[2].url("/v1/resources/r1"),
    )
    .await
    .expect("r1 on 2");
    assert_eq!(a, c);
    assert!(
        !cluster.all_logs().contains("hidden-value-1"),
        "registration never carries secrets"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sync_operation_finishes_when_its_instance_and_its_node_die_together() {
    let mut cluster = Cluster::start(0).await;
    cluster.start_management();
    for _ in 0..3 {
        cluster.add_node(&fast());
    }
    cluster.wait_healthy().await;
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

    let via_a = {
        let http = cluster.http.clone();
        let url = cluster.management[0].url("/v1/operations");
        tokio::spawn(async move {
            http.post(url)
                .json(&json!({"module": "slow", "operation": "work"}))
                .send()
                .await
        })
    };
    let b_port = cluster.management[1].port;
    let b = move |path: &str| format!("http://127.0.0.1:{b_port}{path}");
    let (op, owner) = wait_until(
        "the operation running on a node",
        Duration::from_secs(10),
        || async {
            let list = get_json(&cluster.http, &b("/v1/operations?module=slow")).await?;
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
    cluster.management[0].process.kill();
    let victim = cluster.node_index(&owner);
    cluster.nodes[victim].kill();
    assert!(
        via_a.await.expect("task").is_err(),
        "the client of the killed instance lost its answer"
    );

    let ctx = wait_until(
        "the operation complete, read through B",
        Duration::from_secs(30),
        || async {
            let ctx = get_json(&cluster.http, &b(&format!("/v1/operations/{op}"))).await?;
            if ctx["state"] == "complete" {
                Ok(ctx)
            } else {
                Err(ctx.to_string())
            }
        },
    )
    .await;
    let attempts = ctx["attempts"].as_array().expect("attempts");
    assert_eq!(attempts[0]["node"], owner.as_str());
    assert_eq!(attempts[0]["outcome"], "lost", "{ctx}");
    assert_eq!(
        attempts.last().map(|a| a["outcome"].clone()),
        Some(json!("complete"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_brand_new_instance_shows_the_latest_resource_state() {
    let mut cluster = Cluster::start(0).await;
    for _ in 0..3 {
        cluster.add_node(&fast());
    }
    cluster.wait_healthy().await;
    let script = r#"#!/bin/sh
cat >/dev/null
n=0
while :; do n=$((n + 1)); echo "{\"type\":\"resource_state\",\"data\":{\"tick\":$n}}"; sleep 0.1; done
"#;
    cluster
        .publish(bundle(
            "reporter",
            "1.0.0",
            json!({"report": {"kind": "async"}}),
            script,
        ))
        .await;
    cluster.wait_module("reporter", "1.0.0").await;
    cluster
        .put_json(
            "/v1/resources/dev-1",
            &json!({"kind": "device", "config": {}}),
        )
        .await;
    let (status, ctx) = cluster
        .post_json(
            "/v1/operations",
            &json!({"module": "reporter", "operation": "report", "resource": "dev-1"}),
        )
        .await;
    assert_eq!(status, 202, "{ctx}");
    wait_until("reported state", Duration::from_secs(20), || async {
        let (_, r) = cluster.get("/v1/resources/dev-1").await;
        if r["state"]["tick"].as_u64().is_some() {
            Ok(())
        } else {
            Err(r.to_string())
        }
    })
    .await;

    cluster.management[0].process.kill();
    let client = cluster.nats.client().await;
    let js = async_nats::jetstream::new(client);
    let resources = js
        .get_key_value(format!("zf_{}_resources", cluster.cluster))
        .await
        .expect("bucket");
    // Five seconds with no management at all, proven by the state moving on meanwhile.
    let first = tick_in_kv(&resources).await;
    wait_until(
        "the state to move on with no management running",
        Duration::from_secs(20),
        || async {
            let now = tick_in_kv(&resources).await;
            if now >= first + 40 {
                Ok(())
            } else {
                Err(format!("tick {now}"))
            }
        },
    )
    .await;

    let fresh = cluster.start_management();
    wait_until(
        "the new instance healthy",
        Duration::from_secs(20),
        || async {
            get_json(&cluster.http, &cluster.management[fresh].url("/healthz"))
                .await
                .map(|_| ())
        },
    )
    .await;
    let started = std::time::Instant::now();
    let latest = tick_in_kv(&resources).await;
    let seen = wait_until(
        "the new instance to show the latest state",
        Duration::from_secs(10),
        || async {
            let r = get_json(
                &cluster.http,
                &cluster.management[fresh].url("/v1/resources/dev-1"),
            )
            .await?;
            match r["state"]["tick"].as_u64() {
                Some(t) if t >= latest => Ok(r),
                _ => Err(r.to_string()),
            }
        },
    )
    .await;
    eprintln!(
        "latest state shown {:?} after the new instance was healthy",
        started.elapsed()
    );
    assert!(seen["reported_by"].is_string());
}

async fn tick_in_kv(resources: &async_nats::jetstream::kv::Store) -> u64 {
    let bytes = resources
        .get("dev-1")
        .await
        .expect("get")
        .expect("resource");
    let record: Value = serde_json::from_slice(&bytes).expect("json");
    record["state"]["tick"].as_u64().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_stays_pending_or_running_after_its_owners_die() {
    let mut cluster = Cluster::start(0).await;
    // More nodes than operations, so some node survives the owners' death.
    for _ in 0..5 {
        cluster.add_node(&fast());
    }
    cluster.wait_healthy().await;
    let script = "#!/bin/sh\ncat >/dev/null\nsleep 2\necho '{\"type\":\"result\",\"data\":1}'\n";
    cluster
        .publish(bundle(
            "work",
            "1.0.0",
            json!({"go": {"kind": "sync", "timeout_ms": 5000, "retries": 2}}),
            script,
        ))
        .await;
    cluster.wait_module("work", "1.0.0").await;
    let mut ops = Vec::new();
    for _ in 0..4 {
        let (status, ctx) = cluster
            .post_json(
                "/v1/operations?wait=false",
                &json!({"module": "work", "operation": "go"}),
            )
            .await;
        assert_eq!(status, 202, "{ctx}");
        ops.push(ctx["id"].as_str().expect("id").to_string());
    }
    let owners: std::collections::BTreeSet<String> = wait_until(
        "every operation running",
        Duration::from_secs(10),
        || async {
            let (_, list) = cluster.get("/v1/operations?module=work").await;
            let items = list["operations"].as_array().cloned().unwrap_or_default();
            if items.len() == 4 && items.iter().all(|c| c["state"] == "running") {
                Ok(items
                    .iter()
                    .filter_map(|c| c["owner"].as_str().map(str::to_string))
                    .collect())
            } else {
                Err(list.to_string())
            }
        },
    )
    .await;
    assert!(owners.len() < 5, "some node owns nothing: {owners:?}");
    for owner in &owners {
        let index = cluster.node_index(owner);
        cluster.nodes[index].kill();
    }
    // lapse (250 ms) + timeout (5 s), with room for a loaded machine.
    wait_until(
        "every operation finished",
        Duration::from_secs(30),
        || async {
            let (_, list) = cluster.get("/v1/operations?module=work").await;
            let open: Vec<&Value> = list["operations"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter(|c| c["state"] != "complete" && c["state"] != "failed")
                        .collect()
                })
                .unwrap_or_default();
            if open.is_empty() {
                Ok(())
            } else {
                Err(format!("{} still open", open.len()))
            }
        },
    )
    .await;
    let (_, list) = cluster
        .get("/v1/operations?module=work&state=complete")
        .await;
    assert_eq!(
        list["operations"].as_array().map(Vec::len),
        Some(4),
        "all retried to completion: {list}"
    );
}
