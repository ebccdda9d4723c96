//! Who may do what over HTTP: bearer tokens with roles, an open /healthz,
//! and no unauthenticated API on anything but loopback.

use serde_json::json;
use zerofoot_tests::modules::bundle;
use zerofoot_tests::{run_to_end, service_binary, status_and_json, Cluster, NodeFlags};

const ADMIN: &str = "admin-token-0123456789";
const OPERATOR: &str = "operator-token-0123456789";
const VIEWER: &str = "viewer-token-0123456789";
const OTHER_OPERATOR: &str = "operator-token-9876543210";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_and_roles_guard_the_api() {
    let mut cluster = Cluster::bare().await;
    cluster.start_repository();
    let tokens = format!("admin:{ADMIN},operator:{OPERATOR},viewer:{VIEWER}");
    cluster.start_management_with(&[("ZF_API_TOKENS", &tokens)]);
    cluster.add_node(&Default::default());
    zerofoot_tests::wait_until(
        "healthz open without a token",
        std::time::Duration::from_secs(20),
        || async {
            match cluster.http.get(cluster.url("/healthz")).send().await {
                Ok(r) if r.status() == 200 => Ok(()),
                Ok(r) => Err(r.status().to_string()),
                Err(e) => Err(e.to_string()),
            }
        },
    )
    .await;
    cluster.wait_repositories(1).await;
    let call = |method: reqwest::Method, path: &str, token: Option<&str>| {
        let mut request = cluster.http.request(method, cluster.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request
    };

    let (status, body) = status_and_json(
        call(reqwest::Method::GET, "/v1/modules", None)
            .send()
            .await
            .expect("GET"),
    )
    .await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "unauthorized");
    let (status, _) = status_and_json(
        call(
            reqwest::Method::GET,
            "/v1/modules",
            Some("wrong-token-0123456789"),
        )
        .send()
        .await
        .expect("GET"),
    )
    .await;
    assert_eq!(status, 401);
    let (status, _) = status_and_json(
        call(reqwest::Method::GET, "/v1/cluster", Some(VIEWER))
            .send()
            .await
            .expect("GET"),
    )
    .await;
    assert_eq!(status, 200, "a viewer reads");

    let op = json!({"module": "shell", "operation": "run", "params": {"command": "true"}});
    let (status, body) = status_and_json(
        call(reqwest::Method::POST, "/v1/operations", Some(VIEWER))
            .json(&op)
            .send()
            .await
            .expect("POST"),
    )
    .await;
    assert_eq!(status, 403, "a viewer may not run operations: {body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("operator"),
        "{body}"
    );

    let module = bundle(
        "guarded",
        "1.0.0",
        json!({"go": {"kind": "sync"}}),
        "#!/bin/sh\necho '{\"type\":\"result\",\"data\":1}'\n",
    );
    let (status, body) = status_and_json(
        call(reqwest::Method::POST, "/v1/modules", Some(OPERATOR))
            .body(module.clone())
            .send()
            .await
            .expect("POST"),
    )
    .await;
    assert_eq!(status, 403, "an operator may not upload modules: {body}");

    let (status, body) = status_and_json(
        call(reqwest::Method::POST, "/v1/modules", Some(ADMIN))
            .body(module)
            .send()
            .await
            .expect("POST"),
    )
    .await;
    assert_eq!(status, 201, "an admin uploads: {body}");
    let run = zerofoot_tests::wait_until(
        "an admin's operation to complete",
        std::time::Duration::from_secs(20),
        || async {
            let (status, body) = status_and_json(
                call(reqwest::Method::POST, "/v1/operations", Some(ADMIN))
                    .json(&op)
                    .send()
                    .await
                    .map_err(|e| e.to_string())?,
            )
            .await;
            if status == 200 && body["state"] == "complete" {
                Ok(body)
            } else {
                Err(format!("{status} {body}"))
            }
        },
    )
    .await;
    assert_eq!(run["result"]["exit_code"], 0);
    let (status, _) = status_and_json(
        call(reqwest::Method::POST, "/v1/operations", Some(OPERATOR))
            .json(&op)
            .send()
            .await
            .expect("POST"),
    )
    .await;
    assert_eq!(status, 200, "an operator runs operations");
    assert!(
        !cluster.all_logs().contains(ADMIN),
        "tokens are never logged"
    );
}

#[test]
fn without_tokens_the_api_refuses_to_listen_beyond_loopback() {
    let (status, stderr) = run_to_end(
        &service_binary("zf-management"),
        &["--http-addr", "0.0.0.0:0"],
        &[],
    );
    assert!(!status.success());
    assert!(stderr.contains("no API token is configured"), "{stderr}");
    let (status, stderr) = run_to_end(
        &service_binary("zf-management"),
        &["--http-addr", "0.0.0.0:0", "--api-tokens", "admin:short"],
        &[],
    );
    assert!(!status.success());
    assert!(stderr.contains("at least 16 characters"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_secrets_key_secrets_are_refused_not_stored_in_the_clear() {
    let mut cluster = Cluster::bare().await;
    cluster.start_management_with(&[("ZF_SECRETS_KEY_FILE", "")]);
    cluster.wait_healthy().await;
    let (status, body) = cluster
        .put_json(
            "/v1/resources/r",
            &json!({"kind": "host", "secrets": {"pw": "p4ssw0rd-p4ssw0rd"}}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "no_secrets_key");
    let (status, _) = cluster
        .put_json("/v1/resources/r", &json!({"kind": "host"}))
        .await;
    assert_eq!(status, 201, "a resource without secrets is fine");
}

/// Puts a bundle into the object store and the module index directly, as an
/// attacker with write access to NATS would, with the given signature.
async fn forge(cluster: &Cluster, name: &str, signature: Option<String>) -> String {
    let bytes = bundle(
        name,
        "1.0.0",
        json!({"go": {"kind": "sync"}}),
        "#!/bin/sh\necho pwned > /tmp/zf-forged\n",
    );
    let digest = zerofoot_shared::bundle::digest(&bytes);
    let mut record = json!({"v": 1, "name": name, "version": "1.0.0", "digest": digest, "size": bytes.len(),
        "entrypoint": "bin/run", "operations": {"go": {"kind": "sync"}}, "published_at": "2026-01-01T00:00:00Z"});
    if let Some(signature) = signature {
        record["signature"] = json!(signature);
    }
    cluster.forge_module(&digest, &bytes, &record).await;
    cluster.wait_module(name, "1.0.0").await;
    digest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_run_only_modules_signed_by_a_trusted_key() {
    let keygen = std::process::Command::new(service_binary("zf-repository"))
        .arg("keygen")
        .output()
        .expect("keygen");
    assert!(keygen.status.success());
    let pair: serde_json::Value =
        serde_json::from_slice(&keygen.stdout).expect("keygen prints JSON");
    let (private, public) = (
        pair["private_key"].as_str().expect("private"),
        pair["public_key"].as_str().expect("public"),
    );

    let mut cluster = Cluster::bare().await;
    cluster.start_repository_with(&["--signing-key", private]);
    cluster.start_management();
    cluster.add_node(&zerofoot_tests::NodeFlags(vec![
        "--trusted-keys".into(),
        public.into(),
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
        "a signed stock module runs: {ctx}"
    );
    let (_, listed) = cluster.get("/v1/modules/shell").await;
    assert!(listed["versions"][0]["signature"].is_string(), "{listed}");

    let modules_dir = cluster.node_dir(0).join("modules");
    let unsigned = forge(&cluster, "forged-unsigned", None).await;
    let (status, ctx) = cluster
        .post_json(
            "/v1/operations",
            &json!({"module": "forged-unsigned", "operation": "go"}),
        )
        .await;
    assert_eq!(
        (status, ctx["state"].as_str()),
        (200, Some("failed")),
        "{ctx}"
    );
    assert!(
        ctx["error"].as_str().unwrap_or("").contains("no signature"),
        "{ctx}"
    );
    assert!(!modules_dir.join(&unsigned).exists(), "never unpacked");

    let (other_private, _) = zerofoot_shared::signing::ModuleSigner::generate();
    let other = zerofoot_shared::signing::ModuleSigner::from_hex(&other_private).expect("signer");
    let bytes = bundle(
        "forged-signed",
        "1.0.0",
        json!({"go": {"kind": "sync"}}),
        "#!/bin/sh\necho pwned > /tmp/zf-forged\n",
    );
    let mut record = zerofoot_shared::protocol::ModuleRecord::new(
        zerofoot_shared::protocol::Manifest::parse(br#"{"name":"forged-signed","version":"1.0.0","entrypoint":"bin/run","operations":{"go":{"kind":"sync"}}}"#).expect("manifest"),
        zerofoot_shared::bundle::digest(&bytes),
        bytes.len() as u64,
    );
    other.sign(&mut record);
    let wrong = forge(&cluster, "forged-signed", record.signature.clone()).await;
    let (status, ctx) = cluster
        .post_json(
            "/v1/operations",
            &json!({"module": "forged-signed", "operation": "go"}),
        )
        .await;
    assert_eq!(
        (status, ctx["state"].as_str()),
        (200, Some("failed")),
        "{ctx}"
    );
    assert!(
        ctx["error"]
            .as_str()
            .unwrap_or("")
            .contains("does not verify"),
        "{ctx}"
    );
    assert!(!modules_dir.join(&wrong).exists(), "never unpacked");
}

/// A monitor that waits until it is cancelled.
const WAITER: &str = "#!/bin/sh\ncat >/dev/null\nwhile true; do sleep 1; done\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_client_gets_a_limited_number_of_unfinished_operations() {
    let mut cluster = Cluster::bare().await;
    cluster.start_repository();
    let tokens = format!("admin:{ADMIN},operator:{OPERATOR},operator:{OTHER_OPERATOR}");
    cluster.start_management_with(&[
        ("ZF_API_TOKENS", &tokens),
        ("ZF_MAX_OPERATIONS_PER_CLIENT", "2"),
    ]);
    cluster.add_node(&Default::default());
    let authorized = |method: reqwest::Method, path: &str, token: &str| {
        cluster
            .http
            .request(method, cluster.url(path))
            .bearer_auth(token)
    };
    zerofoot_tests::wait_until(
        "management connected",
        std::time::Duration::from_secs(20),
        || async {
            let r = cluster.http.get(cluster.url("/healthz")).send().await;
            match r {
                Ok(r) if r.status() == 200 => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    cluster.wait_repositories(1).await;
    let ops = json!({"wait": {"kind": "async"}});
    let (status, body) = status_and_json(
        authorized(reqwest::Method::POST, "/v1/modules", ADMIN)
            .body(bundle("waiter", "1.0.0", ops, WAITER))
            .send()
            .await
            .expect("upload"),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let submit = |token: &'static str| {
        authorized(reqwest::Method::POST, "/v1/operations", token)
            .json(&json!({"module": "waiter", "operation": "wait"}))
            .send()
    };

    let mut mine = Vec::new();
    for _ in 0..2 {
        let (status, body) = status_and_json(submit(OPERATOR).await.expect("submit")).await;
        assert_eq!(status, 202, "{body}");
        assert!(
            body["client"]
                .as_str()
                .is_some_and(|c| c.starts_with("operator-")),
            "the operation names its client: {body}"
        );
        assert!(
            !body.to_string().contains(OPERATOR),
            "the token is never shown"
        );
        mine.push(body["id"].as_str().expect("id").to_string());
    }
    let (status, body) = status_and_json(submit(OPERATOR).await.expect("submit")).await;
    assert_eq!(
        status, 429,
        "the third unfinished operation is refused: {body}"
    );
    assert_eq!(body["error"]["code"], "too_many_operations", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("2 unfinished operations")),
        "{body}"
    );
    let (status, body) = status_and_json(submit(OTHER_OPERATOR).await.expect("submit")).await;
    assert_eq!(status, 202, "another client is not affected: {body}");

    let (status, body) = status_and_json(
        authorized(
            reqwest::Method::DELETE,
            &format!("/v1/operations/{}", mine[0]),
            OPERATOR,
        )
        .send()
        .await
        .expect("cancel"),
    )
    .await;
    assert!(status < 300, "cancel: {status} {body}");
    zerofoot_tests::wait_until(
        "a place freed by the cancelled operation",
        std::time::Duration::from_secs(20),
        || async {
            let (status, body) =
                status_and_json(submit(OPERATOR).await.map_err(|e| e.to_string())?).await;
            if status == 202 {
                Ok(())
            } else {
                Err(format!("{status} {body}"))
            }
        },
    )
    .await;
    let (status, _) = status_and_json(
        cluster
            .http
            .get(cluster.url("/healthz"))
            .send()
            .await
            .expect("healthz"),
    )
    .await;
    assert_eq!(status, 200, "management is unharmed");
}

const OLD_KEY: &str = zerofoot_tests::TEST_SECRETS_KEY;
const NEW_KEY: &str = "7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b7b";
const ROTATED_SECRET: &str = "r0tate-me-Kx7-secret";

/// Answers with the sha256 of the resource's `token` secret it got.
const PEEK: &str = r#"#!/bin/sh
jq -r '.resource.secrets.token // ""' | tr -d '\n' | sha256sum | cut -d' ' -f1 | jq -cR '{type: "result", data: {token_sha256: .}}'
"#;

/// Runs `peek` against resource `vault` and returns the sha256 its driver saw.
async fn token_seen_by_a_driver(cluster: &Cluster) -> serde_json::Value {
    let (status, body) = cluster
        .post_json(
            "/v1/operations",
            &json!({"module": "peek", "operation": "run", "resource": "vault"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_secrets_key_rotates_in_place() {
    let mut cluster = Cluster::start(1).await;
    cluster
        .publish(bundle(
            "peek",
            "1.0.0",
            json!({"run": {"kind": "sync"}}),
            PEEK,
        ))
        .await;
    cluster.wait_module("peek", "1.0.0").await;
    let (status, body) = cluster
        .put_json(
            "/v1/resources/vault",
            &json!({"kind": "api", "secrets": {"token": ROTATED_SECRET}}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let expected = zerofoot_shared::bundle::digest(ROTATED_SECRET.as_bytes())
        .trim_start_matches("sha256:")
        .to_string();

    // Every service gets the new key, and the old one as a previous key.
    cluster.management.clear();
    cluster.nodes.clear();
    cluster.start_management_with(&[
        ("ZF_SECRETS_KEY", NEW_KEY),
        ("ZF_SECRETS_PREVIOUS_KEYS", OLD_KEY),
    ]);
    let rotated = NodeFlags(vec![
        "--secrets-key".into(),
        NEW_KEY.into(),
        "--secrets-previous-keys".into(),
        OLD_KEY.into(),
    ]);
    cluster.add_node(&rotated);
    cluster.wait_healthy().await;
    let body = token_seen_by_a_driver(&cluster).await;
    assert_eq!(
        body["state"], "complete",
        "the old sealing still opens: {body}"
    );
    assert_eq!(body["result"]["token_sha256"], expected.as_str(), "{body}");

    let (status, report) = cluster
        .post_json("/v1/admin/reseal-secrets", &json!({}))
        .await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["resealed"], 1, "{report}");
    assert_eq!(report["failed"], json!([]), "{report}");
    let (_, again) = cluster
        .post_json("/v1/admin/reseal-secrets", &json!({}))
        .await;
    assert_eq!(
        again["resealed"], 0,
        "resealing twice changes nothing: {again}"
    );
    assert_eq!(again["already_current"], 1, "{again}");

    // The old key can go: a node with only the new key opens the secret.
    cluster.nodes.clear();
    cluster.add_node(&NodeFlags(vec!["--secrets-key".into(), NEW_KEY.into()]));
    cluster.wait_healthy().await;
    let body = token_seen_by_a_driver(&cluster).await;
    assert_eq!(body["state"], "complete", "{body}");
    assert_eq!(body["result"]["token_sha256"], expected.as_str(), "{body}");

    // And a node that only knows the old key cannot, and says why.
    cluster.nodes.clear();
    cluster.add_node(&NodeFlags(vec!["--secrets-key".into(), OLD_KEY.into()]));
    cluster.wait_healthy().await;
    let body = token_seen_by_a_driver(&cluster).await;
    assert_eq!(body["state"], "failed", "{body}");
    assert!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("do not open with this key")),
        "{body}"
    );
    assert!(
        !cluster.all_logs().contains(ROTATED_SECRET),
        "secret in a log"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_deeply_nested_input_gets_4xx_on_every_endpoint() {
    let cluster = Cluster::start(1).await;
    cluster.wait_module("shell", "1.0.0").await;
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let deep_params = format!(
        r#"{{"module":"shell","operation":"run","params":{{"a":{}{}}}}}"#,
        "[".repeat(5_000),
        "]".repeat(5_000)
    );
    let big_body = format!(
        r#"{{"module":"shell","operation":"run","params":{{"pad":"{}"}}}}"#,
        "x".repeat(2 * 1024 * 1024)
    );
    let big_params = format!(
        r#"{{"module":"shell","operation":"run","params":{{"pad":"{}"}}}}"#,
        "x".repeat(300 * 1024)
    );
    let big_resource = format!(
        r#"{{"kind":"x","config":{{"pad":"{}"}}}}"#,
        "x".repeat(2 * 1024 * 1024)
    );
    let deep_resource = format!(
        r#"{{"kind":"x","config":{{"a":{}{}}}}}"#,
        "[".repeat(5_000),
        "]".repeat(5_000)
    );
    let long_id = "a".repeat(10_000);
    let cases: Vec<(reqwest::Method, String, Option<String>)> = vec![
        (
            reqwest::Method::POST,
            "/v1/operations".into(),
            Some(deep.clone()),
        ),
        (
            reqwest::Method::POST,
            "/v1/operations".into(),
            Some(deep_params),
        ),
        (
            reqwest::Method::POST,
            "/v1/operations".into(),
            Some(big_body),
        ),
        (
            reqwest::Method::POST,
            "/v1/operations".into(),
            Some(big_params),
        ),
        (
            reqwest::Method::PUT,
            "/v1/resources/r1".into(),
            Some(deep.clone()),
        ),
        (
            reqwest::Method::PUT,
            "/v1/resources/r1".into(),
            Some(deep_resource),
        ),
        (
            reqwest::Method::PUT,
            "/v1/resources/r1".into(),
            Some(big_resource),
        ),
        (
            reqwest::Method::PUT,
            format!("/v1/resources/{long_id}"),
            Some(r#"{"kind":"x"}"#.into()),
        ),
        (
            reqwest::Method::GET,
            format!("/v1/resources/{long_id}"),
            None,
        ),
        (
            reqwest::Method::POST,
            "/v1/modules".into(),
            Some(deep.clone()),
        ),
        (reqwest::Method::GET, format!("/v1/modules/{long_id}"), None),
        (
            reqwest::Method::GET,
            format!("/v1/operations/{long_id}"),
            None,
        ),
        (
            reqwest::Method::DELETE,
            format!("/v1/operations/{long_id}"),
            None,
        ),
        (
            reqwest::Method::GET,
            format!("/v1/operations/{long_id}/events"),
            None,
        ),
        (
            reqwest::Method::GET,
            "/v1/operations?limit=99999999999999999999".into(),
            None,
        ),
        (
            reqwest::Method::GET,
            format!("/v1/operations?module={long_id}&limit=-1"),
            None,
        ),
        (reqwest::Method::GET, format!("/v1/{long_id}"), None),
    ];
    // A fresh connection per request: the server answers an oversized body
    // before reading it and then closes that connection, and a pooled client
    // could race that close on its next request.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(std::time::Duration::from_secs(60))
        .build()
        .expect("HTTP client");
    for (method, path, body) in cases {
        let mut request = http
            .request(method.clone(), cluster.url(&path))
            .header("content-type", "application/json");
        if let Some(body) = body {
            request = request.body(body);
        }
        let shown = &path[..path.len().min(60)];
        let (status, answer) = status_and_json(request.send().await.expect("request")).await;
        assert!(
            (400..500).contains(&status),
            "{method} {shown}: expected 4xx, got {status}: {answer}"
        );
        assert!(
            answer["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{method} {shown}: the error says what was wrong: {answer}"
        );
        let health = http
            .get(cluster.url("/healthz"))
            .send()
            .await
            .map(|r| r.status().as_u16());
        assert!(
            matches!(health, Ok(200)),
            "management unharmed after {method} {shown}: /healthz gave {health:?}"
        );
    }
    let (status, body) = cluster
        .post_json(
            "/v1/operations",
            &json!({"module": "shell", "operation": "run", "params": {"command": "true"}}),
        )
        .await;
    assert_eq!(status, 200, "a good request still works: {body}");
}
