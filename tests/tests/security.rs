//! Who may do what over HTTP: bearer tokens with roles, an open /healthz,
//! and no unauthenticated API on anything but loopback.

use serde_json::json;
use zerofoot_tests::modules::bundle;
use zerofoot_tests::{run_to_end, service_binary, status_and_json, Cluster};

const ADMIN: &str = "admin-token-0123456789";
const OPERATOR: &str = "operator-token-0123456789";
const VIEWER: &str = "viewer-token-0123456789";

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
    cluster.start_management_with(&[("ZF_SECRETS_KEY", "")]);
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
