//! The module repository as a user meets it: upload, list, immutable
//! versions, refusal of bad bundles, and the node-side cache.

use std::time::Duration;

use serde_json::json;
use zerofoot_tests::modules::bundle;
use zerofoot_tests::{wait_until, Cluster, NodeFlags};

const ECHO: &str = "#!/bin/sh\ncat >/dev/null\necho '{\"type\":\"result\",\"data\":\"ok\"}'\n";

fn sync_ops() -> serde_json::Value {
    json!({"go": {"kind": "sync", "timeout_ms": 10000}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_list_get_and_immutable_versions() {
    let cluster = Cluster::start(0).await;
    let v1 = bundle("demo", "1.0.0", sync_ops(), ECHO);
    let created = cluster.publish(v1.clone()).await;
    assert_eq!(created["name"], "demo");
    assert_eq!(created["version"], "1.0.0");
    assert_eq!(created["size"], v1.len());
    assert_eq!(created["digest"], zerofoot_shared::bundle::digest(&v1));

    let (status, again) = cluster.upload(v1.clone()).await;
    assert_eq!(status, 200, "same bytes again: {again}");
    assert_eq!(again["digest"], created["digest"]);

    let other_bytes = bundle("demo", "1.0.0", sync_ops(), "#!/bin/sh\necho changed\n");
    let (status, conflict) = cluster.upload(other_bytes).await;
    assert_eq!(status, 409, "{conflict}");
    assert_eq!(conflict["error"]["code"], "version_exists");
    assert!(
        conflict["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("1.0.0"),
        "{conflict}"
    );

    cluster
        .publish(bundle("demo", "1.10.0", sync_ops(), ECHO))
        .await;
    cluster
        .publish(bundle("demo", "1.2.0", sync_ops(), ECHO))
        .await;
    cluster.wait_module("demo", "1.2.0").await;
    let (status, versions) = cluster.get("/v1/modules/demo").await;
    assert_eq!(status, 200);
    let listed: Vec<&str> = versions["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .filter_map(|v| v["version"].as_str())
        .collect();
    assert_eq!(listed, ["1.10.0", "1.2.0", "1.0.0"], "newest semver first");

    let (_, all) = cluster.get("/v1/modules").await;
    let names: Vec<&str> = all["modules"]
        .as_array()
        .expect("modules")
        .iter()
        .filter_map(|m| m["name"].as_str())
        .collect();
    for stock in ["shell", "http-probe", "file-tail", "demo"] {
        assert!(names.contains(&stock), "{stock} listed: {names:?}");
    }
    let demo = all["modules"]
        .as_array()
        .expect("modules")
        .iter()
        .find(|m| m["name"] == "demo")
        .expect("demo");
    assert_eq!(demo["operations"]["go"]["kind"], "sync");

    // One stored copy of the bytes that were uploaded twice.
    let client = cluster.nats.client().await;
    let js = async_nats::jetstream::new(client);
    let store = js
        .get_object_store(format!("zf_{}_modules", cluster.cluster))
        .await
        .expect("object store");
    let digest = created["digest"].as_str().expect("digest");
    let info = store
        .info(digest)
        .await
        .expect("bundle stored under its digest");
    assert_eq!(info.size, v1.len());

    let (status, missing) = cluster.get("/v1/modules/nope").await;
    assert_eq!(status, 404);
    assert!(
        missing["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("nope"),
        "{missing}"
    );
}

/// A tar stream written byte by byte, to build what well-behaved tools refuse to write.
fn raw_bundle(entries: &[(&str, tar::EntryType, &str, &[u8])]) -> Vec<u8> {
    use std::io::Write;
    let mut builder = tar::Builder::new(Vec::new());
    for (name, kind, link, data) in entries {
        let mut header = tar::Header::new_old();
        header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        header.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        header.set_entry_type(*kind);
        header.set_mode(0o755);
        header.set_size(data.len() as u64);
        header.set_cksum();
        builder.append(&header, *data).expect("append");
    }
    let tar = builder.into_inner().expect("tar");
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).expect("gzip");
    gz.finish().expect("gzip")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bundles_are_refused_with_a_reason_and_nothing_is_stored() {
    let cluster = Cluster::start(0).await;
    let manifest = |patch: serde_json::Value| {
        let mut m = json!({"name": "bad", "version": "1.0.0", "entrypoint": "bin/run", "operations": {"go": {"kind": "sync"}}});
        for (k, v) in patch.as_object().expect("object") {
            m[k] = v.clone();
        }
        m.to_string()
    };
    let good = manifest(json!({}));
    let with = |extra: (&str, tar::EntryType, &str, &[u8])| {
        raw_bundle(&[
            ("module.json", tar::EntryType::Regular, "", good.as_bytes()),
            ("bin/run", tar::EntryType::Regular, "", b"#!/bin/sh\n"),
            extra,
        ])
    };
    let gz = |bytes: &[u8]| {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(bytes).expect("gzip");
        e.finish().expect("gzip")
    };
    let only_manifest = |m: String| {
        raw_bundle(&[
            ("module.json", tar::EntryType::Regular, "", m.as_bytes()),
            ("bin/run", tar::EntryType::Regular, "", b"x"),
        ])
    };
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("not gzip", b"just some text".to_vec(), "not gzip"),
        (
            "gzip of not tar",
            gz(&[7u8; 4096]),
            "not a valid gzip-compressed tar",
        ),
        (
            "no module.json",
            raw_bundle(&[("bin/run", tar::EntryType::Regular, "", b"x")]),
            "no module.json",
        ),
        (
            "bad name",
            only_manifest(manifest(json!({"name": "Bad_Name"}))),
            "name",
        ),
        (
            "bad semver",
            only_manifest(manifest(json!({"version": "v1"}))),
            "version",
        ),
        (
            "missing entrypoint",
            only_manifest(manifest(json!({"entrypoint": "bin/other"}))),
            "bin/other",
        ),
        (
            "invalid JSON manifest",
            raw_bundle(&[("module.json", tar::EntryType::Regular, "", b"{not json")]),
            "module.json is not valid",
        ),
        (
            "unknown kind",
            only_manifest(manifest(json!({"operations": {"go": {"kind": "weekly"}}}))),
            "weekly",
        ),
        (
            "../evil",
            with(("../evil", tar::EntryType::Regular, "", b"x")),
            "../evil",
        ),
        (
            "absolute path",
            with(("/tmp/evil", tar::EntryType::Regular, "", b"x")),
            "/tmp/evil",
        ),
        (
            "symlink to /etc/passwd",
            with(("pw", tar::EntryType::Symlink, "/etc/passwd", b"")),
            "/etc/passwd",
        ),
        (
            "hard link out of the root",
            with(("hl", tar::EntryType::Link, "../../etc/passwd", b"")),
            "hard link",
        ),
        (
            "device node",
            with(("dev", tar::EntryType::Char, "", b"")),
            "device",
        ),
    ];
    for (what, bytes, expected) in cases {
        let (status, body) = cluster.upload(bytes).await;
        assert!(
            (400..500).contains(&status),
            "{what}: status {status} {body}"
        );
        let message = body["error"]["message"].as_str().unwrap_or("");
        assert!(
            message.contains(expected),
            "{what}: expected {expected:?} in {message:?}"
        );
    }
    let (_, listed) = cluster.get("/v1/modules/bad").await;
    assert_eq!(
        listed["error"]["code"], "module_not_found",
        "nothing stored: {listed}"
    );

    // 65 MiB, streamed: refused with 413 while the server stays up.
    let chunk = bytes::Bytes::from(vec![0u8; 1024 * 1024]);
    let body = futures::stream::iter((0..65).map(move |_| Ok::<_, std::io::Error>(chunk.clone())));
    let response = cluster
        .http
        .post(cluster.url("/v1/modules"))
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await;
    match response {
        Ok(r) => {
            let (status, body) = zerofoot_tests::status_and_json(r).await;
            assert_eq!(status, 413, "{body}");
            assert_eq!(body["error"]["code"], "bundle_too_large");
        }
        // The server may close the connection as soon as it has answered 413.
        Err(e) => assert!(e.is_request() || e.is_body(), "unexpected error: {e}"),
    }
    let mut declared = cluster
        .http
        .post(cluster.url("/v1/modules"))
        .header("content-length", (65u64 << 20).to_string());
    declared = declared.body(vec![0u8; 16]);
    if let Ok(r) = declared.send().await {
        assert_eq!(r.status(), 413);
    }
    let (status, _) = cluster.get("/healthz").await;
    assert_eq!(status, 200, "management is unharmed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarts_and_two_repositories_lose_nothing() {
    let mut cluster = Cluster::start(0).await;
    cluster
        .publish(bundle("kept", "1.0.0", sync_ops(), ECHO))
        .await;
    cluster.repositories[0].kill();
    cluster.repositories[0].start();
    cluster.start_repository();
    cluster.wait_repositories(2).await;
    cluster.wait_module("kept", "1.0.0").await;

    // Two instances serve the same requests: racing uploads of one version
    // with other bytes give one 201 and one 409, never two versions.
    let a = bundle("race", "1.0.0", sync_ops(), ECHO);
    let b = bundle("race", "1.0.0", sync_ops(), "#!/bin/sh\necho b\n");
    let (ra, rb) = tokio::join!(cluster.upload(a.clone()), cluster.upload(b.clone()));
    let mut statuses = [ra.0, rb.0];
    statuses.sort();
    assert_eq!(statuses, [201, 409], "{ra:?} {rb:?}");
    let winner = if ra.0 == 201 { &a } else { &b };
    cluster.wait_module("race", "1.0.0").await;
    let (_, versions) = cluster.get("/v1/modules/race").await;
    assert_eq!(versions["versions"].as_array().map(Vec::len), Some(1));
    assert_eq!(
        versions["versions"][0]["digest"],
        zerofoot_shared::bundle::digest(winner)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_cache_fetches_once_verifies_and_evicts() {
    let mut cluster = Cluster::start(0).await;
    cluster.add_node(&NodeFlags(vec!["--module-cache-ttl-s".into(), "1".into()]));
    cluster.wait_nodes_up(1).await;
    let ops = json!({"go": {"kind": "sync", "timeout_ms": 10000}, "hold": {"kind": "sync", "timeout_ms": 20000}});
    let script = "#!/bin/sh\ncat >/dev/null\n[ \"$1\" = hold ] && sleep 3\necho '{\"type\":\"result\",\"data\":\"ok\"}'\n";
    let published = cluster
        .publish(bundle("cached", "1.0.0", ops, script))
        .await;
    let digest = published["digest"].as_str().expect("digest").to_string();
    cluster.wait_module("cached", "1.0.0").await;

    // 20 concurrent operations on a node that has never seen the bundle.
    let request = json!({"module": "cached", "operation": "go"});
    let runs = (0..20).map(|_| cluster.post_json("/v1/operations", &request));
    for (status, ctx) in futures::future::join_all(runs).await {
        assert_eq!(
            (status, ctx["state"].as_str()),
            (200, Some("complete")),
            "{ctx}"
        );
    }
    let fetches = cluster.nodes[0]
        .log_text()
        .matches("bundle fetched and unpacked")
        .count();
    assert_eq!(fetches, 1, "one fetch for 20 concurrent requests");
    let bundle_dir = cluster.node_dir(0).join("modules").join(&digest);
    assert!(
        bundle_dir.join("module.json").exists(),
        "unpacked under modules/<digest>"
    );

    // Unused: evicted after the TTL.
    wait_until(
        "the unused bundle to be evicted",
        Duration::from_secs(10),
        || {
            let gone = !bundle_dir.exists();
            async move {
                if gone {
                    Ok(())
                } else {
                    Err("still there".into())
                }
            }
        },
    )
    .await;

    // In use: kept past the TTL.
    let hold = cluster
        .post_json(
            "/v1/operations?wait=false",
            &json!({"module": "cached", "operation": "hold"}),
        )
        .await;
    assert_eq!(hold.0, 202, "{}", hold.1);
    let op = hold.1["id"].as_str().expect("id").to_string();
    wait_until("the held bundle unpacked", Duration::from_secs(10), || {
        let there = bundle_dir.exists();
        async move {
            if there {
                Ok(())
            } else {
                Err("not yet".into())
            }
        }
    })
    .await;
    let path = format!("/v1/operations/{op}");
    let mut kept_while_running = true;
    let done = wait_until(
        "the holding operation to complete",
        Duration::from_secs(20),
        || {
            let fut = cluster.get(&path);
            let there = bundle_dir.exists();
            async move {
                let (_, ctx) = fut.await;
                if ctx["state"] == "complete" {
                    Ok(there)
                } else if !there {
                    Ok(false)
                } else {
                    Err(ctx.to_string())
                }
            }
        },
    )
    .await;
    kept_while_running &= done;
    assert!(kept_while_running, "a bundle in use was evicted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_bundle_and_a_half_unpacked_folder_are_never_used() {
    let mut cluster = Cluster::start(1).await;
    // A bundle stored under a digest its bytes do not have, with an index entry.
    let real = bundle("forged", "1.0.0", sync_ops(), ECHO);
    let fake_digest = format!("sha256:{}", "ab".repeat(32));
    let record = json!({"v": 1, "name": "forged", "version": "1.0.0", "digest": fake_digest, "size": real.len(),
        "entrypoint": "bin/run", "operations": {"go": {"kind": "sync"}}, "published_at": "2026-01-01T00:00:00Z"});
    cluster.forge_module(&fake_digest, &real, &record).await;
    cluster.wait_module("forged", "1.0.0").await;

    let (status, ctx) = cluster
        .post_json(
            "/v1/operations",
            &json!({"module": "forged", "operation": "go"}),
        )
        .await;
    assert_eq!(status, 200, "{ctx}");
    assert_eq!(ctx["state"], "failed", "{ctx}");
    assert!(
        ctx["error"].as_str().unwrap_or("").contains("digest"),
        "{ctx}"
    );
    let modules = cluster.node_dir(0).join("modules");
    assert!(!modules.join(&fake_digest).exists(), "never unpacked");

    // A half-unpacked folder left by a killed node is removed at restart.
    cluster.nodes[0].kill();
    let leftover = modules.join(".tmp-leftover");
    std::fs::create_dir_all(leftover.join("bin")).expect("mkdir");
    std::fs::write(leftover.join("module.json"), "{}").expect("write");
    cluster.nodes[0].start();
    cluster.wait_nodes_up(1).await;
    wait_until(
        "the half-unpacked folder removed",
        Duration::from_secs(10),
        || {
            let gone = !leftover.exists();
            async move {
                if gone {
                    Ok(())
                } else {
                    Err("still there".into())
                }
            }
        },
    )
    .await;
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
}
