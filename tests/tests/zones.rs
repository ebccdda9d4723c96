//! Zones as an operator with three sites sees them: nodes started with
//! `--zone` run the sync operations of their zone's resources and no
//! other's, a dead owner's operation is taken over inside its zone, the
//! cluster view groups the nodes by zone, and an operation on a resource
//! whose zone has no node fails at once with a 503 naming the zone.

use std::collections::HashMap;
use std::time::Duration;

use serde_json::{json, Value};
use zerofoot_tests::{wait_until, zone_node, Cluster};

const ZONES: [&str; 3] = ["dc-a", "dc-b", "dc-c"];

/// Heartbeats and lapse of the nodes, in ms.
const FAST: (u64, u64) = (100, 500);

/// Three zones of two nodes each; a resource per zone (`res-<zone>`).
async fn three_zones() -> (Cluster, HashMap<String, String>) {
    three_zones_timed(FAST).await
}

async fn three_zones_timed(timing: (u64, u64)) -> (Cluster, HashMap<String, String>) {
    let mut cluster = Cluster::bare().await;
    cluster.start_repository();
    cluster.start_management();
    for zone in ZONES {
        for rack in 1..=2 {
            cluster.add_node(&zone_node(zone, rack, timing));
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
        }
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

/// Starts `sleep SECONDS` on `res-dc-b` without waiting; its context's path
/// and the node that runs it, once it runs.
async fn sleep_in_dc_b(cluster: &Cluster, seconds: &str) -> (String, String) {
    let (status, ctx) = cluster
        .post_json(
            "/v1/operations?wait=false",
            &json!({"module": "shell", "operation": "run", "resource": "res-dc-b",
                    "params": {"command": "sleep", "args": [seconds]}}),
        )
        .await;
    assert_eq!(status, 202, "{ctx}");
    let path = format!("/v1/operations/{}", ctx["id"].as_str().expect("id"));
    let owner = wait_until("the operation to run", Duration::from_secs(10), || async {
        let (_, ctx) = cluster.get(&path).await;
        match ctx["owner"].as_str() {
            Some(owner) if ctx["state"] == "running" => Ok(owner.to_string()),
            _ => Err(ctx.to_string()),
        }
    })
    .await;
    (path, owner)
}

/// The context at `path` once it is complete.
async fn completed(cluster: &Cluster, path: &str, what: &str) -> Value {
    wait_until(what, Duration::from_secs(30), || async {
        let (_, ctx) = cluster.get(path).await;
        if ctx["state"] == "complete" {
            Ok(ctx)
        } else {
            Err(ctx.to_string())
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_owners_operation_is_taken_over_inside_its_zone() {
    let (mut cluster, zone_of) = three_zones().await;
    let (path, first) = sleep_in_dc_b(&cluster, "3").await;
    assert_eq!(zone_of.get(&first).map(String::as_str), Some("dc-b"));
    let index = cluster.node_index(&first);
    cluster.nodes[index].kill();

    let done = completed(&cluster, &path, "the operation to finish on another node").await;
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

/// Counts with keyed events, a checkpoint after each, 20 a second.
const COUNTER: &str = r#"#!/bin/sh
n=$(jq -r '.checkpoint.n // 0')
while true; do
  n=$((n + 1))
  echo "{\"type\":\"event\",\"key\":\"$n\",\"data\":{\"n\":$n}}"
  echo "{\"type\":\"checkpoint\",\"data\":{\"n\":$n}}"
  sleep 0.05
done
"#;

/// Each zone's lead, by zone, once every zone has one.
async fn zone_leads(cluster: &Cluster) -> HashMap<String, String> {
    cluster
        .zone_leads(ZONES.len())
        .await
        .into_iter()
        .map(|(zone, node, _term)| (zone, node))
        .collect()
}

async fn context(cluster: &Cluster, op: &str) -> Value {
    cluster.get(&format!("/v1/operations/{op}")).await.1
}

async fn events(cluster: &Cluster, op: &str) -> Vec<u64> {
    let (_, page) = cluster
        .get(&format!("/v1/operations/{op}/events?limit=10000"))
        .await;
    page["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["data"]["n"].as_u64())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_zone_has_its_own_lead_and_losing_one_moves_only_its_monitors() {
    let (mut cluster, zone_of) = three_zones().await;
    cluster
        .publish(zerofoot_tests::modules::bundle(
            "counter",
            "1.0.0",
            json!({"count": {"kind": "async"}}),
            COUNTER,
        ))
        .await;
    cluster.wait_module("counter", "1.0.0").await;
    let leads = zone_leads(&cluster).await;
    for (zone, lead) in &leads {
        assert_eq!(zone_of.get(lead), Some(zone), "zone {zone} led by {lead}");
    }

    let mut monitors = HashMap::new();
    for zone in ZONES {
        let (status, ctx) = cluster
            .post_json(
                "/v1/operations",
                &json!({"module": "counter", "operation": "count", "resource": format!("res-{zone}")}),
            )
            .await;
        assert_eq!(status, 202, "{ctx}");
        monitors.insert(zone, ctx["id"].as_str().expect("id").to_string());
    }
    for zone in ZONES {
        let op = &monitors[zone];
        wait_until(
            &format!("zone {zone}'s monitor running on its lead"),
            Duration::from_secs(20),
            || async {
                let ctx = context(&cluster, op).await;
                if ctx["owner"].as_str() == Some(leads[zone].as_str())
                    && events(&cluster, op).await.len() >= 5
                {
                    Ok(())
                } else {
                    Err(ctx.to_string())
                }
            },
        )
        .await;
    }

    let (status, body) = cluster
        .put_json(
            "/v1/resources/res-nowhere",
            &json!({"kind": "host", "zone": "dc-x", "config": {}}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = cluster
        .post_json(
            "/v1/operations",
            &json!({"module": "counter", "operation": "count", "resource": "res-nowhere"}),
        )
        .await;
    assert_eq!(status, 503, "a monitor no zone can run: {body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("zone dc-x")),
        "{body}"
    );

    // SIGKILL zone dc-a's lead: only dc-a's monitor moves, inside dc-a.
    let before: HashMap<&str, Value> = {
        let mut m = HashMap::new();
        for zone in ZONES {
            m.insert(zone, context(&cluster, &monitors[zone]).await);
        }
        m
    };
    let killed = leads["dc-a"].clone();
    let index = cluster.node_index(&killed);
    cluster.nodes[index].kill();
    let moved = wait_until(
        "zone dc-a's monitor to move to the other dc-a node",
        Duration::from_secs(20),
        || async {
            let ctx = context(&cluster, &monitors["dc-a"]).await;
            match ctx["owner"].as_str() {
                Some(owner) if owner != killed => Ok(owner.to_string()),
                _ => Err(ctx.to_string()),
            }
        },
    )
    .await;
    assert_eq!(zone_of.get(&moved).map(String::as_str), Some("dc-a"));
    let counted = events(&cluster, &monitors["dc-a"]).await.len();
    wait_until(
        "zone dc-a's monitor to count on after the move",
        Duration::from_secs(20),
        || async {
            let now = events(&cluster, &monitors["dc-a"]).await;
            if now.len() >= counted + 10 {
                Ok(())
            } else {
                Err(format!("{} events", now.len()))
            }
        },
    )
    .await;
    let seen = events(&cluster, &monitors["dc-a"]).await;
    let expected: Vec<u64> = (1..=seen.len() as u64).collect();
    assert_eq!(
        seen, expected,
        "every count once, in order, across the move"
    );
    for zone in ["dc-b", "dc-c"] {
        let now = context(&cluster, &monitors[zone]).await;
        assert_eq!(
            (
                &now["owner"],
                &now["epoch"],
                now["attempts"].as_array().map(Vec::len)
            ),
            (&before[zone]["owner"], &before[zone]["epoch"], Some(1)),
            "zone {zone}'s monitor stayed where it was: {now}"
        );
    }
    let (_, view) = cluster.get("/v1/cluster").await;
    let leads_now = zone_leads(&cluster).await;
    assert_eq!(leads_now["dc-b"], leads["dc-b"], "{view}");
    assert_eq!(leads_now["dc-c"], leads["dc-c"], "{view}");
    assert_eq!(leads_now["dc-a"], moved, "{view}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_in_another_zone_hands_its_old_zones_operation_over() {
    // A lapse long enough for the node to come back, in its new zone,
    // before its old zone would count it dead by silence alone.
    let timing = (200, 3000);
    let (mut cluster, zone_of) = three_zones_timed(timing).await;
    let (path, first) = sleep_in_dc_b(&cluster, "2").await;
    let index = cluster.node_index(&first);
    cluster.replace_node(index, &zone_node("dc-c", 3, timing));
    wait_until(
        "the restarted node to beat from zone dc-c",
        Duration::from_secs(20),
        || async {
            let (_, view) = cluster.get("/v1/cluster").await;
            let moved =
                view["nodes"].as_array().into_iter().flatten().any(|n| {
                    n["id"] == first.as_str() && n["zone"] == "dc-c" && n["status"] == "up"
                });
            if moved {
                Ok(())
            } else {
                Err(view.to_string())
            }
        },
    )
    .await;
    let done = completed(
        &cluster,
        &path,
        "the operation to be taken over in dc-b and finish",
    )
    .await;
    let second = done["attempts"][1]["node"]
        .as_str()
        .expect("a second attempt");
    assert_ne!(second, first, "{done}");
    assert_eq!(
        zone_of.get(second).map(String::as_str),
        Some("dc-b"),
        "taken over inside dc-b: {done}"
    );
}
