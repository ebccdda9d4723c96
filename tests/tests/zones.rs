//! Zones as an operator with three sites sees them: nodes started with
//! `--zone` run the sync operations of their zone's resources and no
//! other's, a dead owner's operation is taken over inside its zone, the
//! cluster view groups the nodes by zone, and an operation on a resource
//! whose zone has no node fails at once with a 503 naming the zone.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{json, Value};
use zerofoot_tests::{wait_until, Cluster, NodeFlags};

const ZONES: [&str; 3] = ["dc-a", "dc-b", "dc-c"];

fn zone_node(zone: &str, rack: usize) -> NodeFlags {
    NodeFlags(vec![
        "--zone".into(),
        zone.into(),
        "--label".into(),
        format!("rack=r{rack}"),
        "--heartbeat-ms".into(),
        "100".into(),
        "--lapse-ms".into(),
        "500".into(),
    ])
}

/// Three zones of two nodes each; a resource per zone (`res-<zone>`).
async fn three_zones() -> (Cluster, HashMap<String, String>) {
    let mut cluster = Cluster::bare().await;
    cluster.start_repository();
    cluster.start_management();
    for zone in ZONES {
        for rack in 1..=2 {
            cluster.add_node(&zone_node(zone, rack));
        }
    }
    cluster.wait_healthy().await;
    cluster.wait_module("shell", "1.0.0").await;
    for zone in ZONES {
        let (status, body) = cluster
            .put_json(
                &format!("/v1/resources/res-{zone}"),
                &json!({"kind": "host", "zone": zone, "config": {}}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        assert_eq!(body["zone"], zone, "{body}");
    }
    let (_, view) = cluster.get("/v1/cluster").await;
    let zone_of: HashMap<String, String> = view["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .map(|n| {
            (
                n["id"].as_str().unwrap_or_default().to_string(),
                n["zone"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    (cluster, zone_of)
}

async fn run_on(cluster: &Cluster, resource: &str, command: &[&str]) -> (u16, Value) {
    cluster
        .post_json(
            "/v1/operations",
            &json!({"module": "shell", "operation": "run", "resource": resource,
                    "params": {"command": command[0], "args": &command[1..]}}),
        )
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_operations_run_only_in_their_resources_zone() {
    let (cluster, zone_of) = three_zones().await;

    let (_, view) = cluster.get("/v1/cluster").await;
    let zones: Vec<(String, usize, usize)> = view["zones"]
        .as_array()
        .expect("zones")
        .iter()
        .map(|z| {
            (
                z["zone"].as_str().unwrap_or_default().to_string(),
                z["nodes"].as_array().map_or(0, Vec::len),
                z["up"].as_u64().unwrap_or(0) as usize,
            )
        })
        .collect();
    assert_eq!(
        zones,
        ZONES.map(|z| (z.to_string(), 2, 2)),
        "the cluster view groups the nodes by zone: {view}"
    );
    let racks: Vec<&str> = view["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter_map(|n| n["labels"]["rack"].as_str())
        .collect();
    assert_eq!(racks.len(), 6, "every node shows its labels: {view}");

    for zone in ZONES {
        let mut owners = std::collections::BTreeSet::new();
        for _ in 0..6 {
            let (status, ctx) = run_on(&cluster, &format!("res-{zone}"), &["true"]).await;
            assert_eq!(status, 200, "{ctx}");
            assert_eq!(ctx["state"], "complete", "{ctx}");
            assert_eq!(ctx["zone"], zone, "{ctx}");
            let owner = ctx["owner"].as_str().expect("an owner").to_string();
            assert_eq!(
                zone_of.get(&owner).map(String::as_str),
                Some(zone),
                "an operation on res-{zone} ran on {owner}"
            );
            owners.insert(owner);
        }
        assert!(!owners.is_empty());
    }

    let (status, body) = cluster
        .put_json(
            "/v1/resources/res-nowhere",
            &json!({"kind": "host", "zone": "dc-x", "config": {}}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let started = std::time::Instant::now();
    let (status, body) = run_on(&cluster, "res-nowhere", &["true"]).await;
    assert_eq!(status, 503, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("zone dc-x"), "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "no node in the zone is found out at once, not after a timeout"
    );

    let (status, body) = cluster
        .put_json(
            "/v1/resources/bad-zone",
            &json!({"kind": "host", "zone": "dc.a", "config": {}}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "invalid_zone", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_owners_operation_is_taken_over_inside_its_zone() {
    let (mut cluster, zone_of) = three_zones().await;
    let (status, ctx) = cluster
        .post_json(
            "/v1/operations?wait=false",
            &json!({"module": "shell", "operation": "run", "resource": "res-dc-b",
                    "params": {"command": "sleep", "args": ["3"]}}),
        )
        .await;
    assert_eq!(status, 202, "{ctx}");
    let op = ctx["id"].as_str().expect("id").to_string();
    let path = format!("/v1/operations/{op}");
    let first = wait_until("the operation to run", Duration::from_secs(10), || async {
        let (_, ctx) = cluster.get(&path).await;
        match ctx["owner"].as_str() {
            Some(owner) if ctx["state"] == "running" => Ok(owner.to_string()),
            _ => Err(ctx.to_string()),
        }
    })
    .await;
    assert_eq!(zone_of.get(&first).map(String::as_str), Some("dc-b"));
    let index = cluster.node_index(&first);
    cluster.nodes[index].kill();

    let done = wait_until(
        "the operation to finish on another node",
        Duration::from_secs(30),
        || async {
            let (_, ctx) = cluster.get(&path).await;
            if ctx["state"] == "complete" {
                Ok(ctx)
            } else {
                Err(ctx.to_string())
            }
        },
    )
    .await;
    let attempts = done["attempts"].as_array().expect("attempts");
    assert_eq!(attempts.len(), 2, "{done}");
    assert_eq!(attempts[0]["outcome"], "lost", "{done}");
    let second = attempts[1]["node"].as_str().expect("node");
    assert_ne!(second, first);
    assert_eq!(
        zone_of.get(second).map(String::as_str),
        Some("dc-b"),
        "taken over by {second}, outside zone dc-b: {done}"
    );
}
