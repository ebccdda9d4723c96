//! The NATS users of `zf-management nats-auth`, against a real nats-server
//! with a running cluster: nobody connects without credentials, and a
//! service's user can do only what that service needs.

use std::time::Duration;

use async_nats::jetstream;
use futures::StreamExt;
use tokio::sync::mpsc;
use zerofoot_tests::Cluster;

/// A client logged in as the NATS user of `role` (`agent`: node-0's own
/// user), as that service connects, whose refused operations (server
/// errors) arrive on the returned channel.
async fn connect_watching(
    cluster: &Cluster,
    role: &str,
) -> (async_nats::Client, mpsc::UnboundedReceiver<String>) {
    let user = match role {
        "agent" => format!("zf-{}-node-node-0", cluster.cluster),
        _ => format!("zf-{}-{role}", cluster.cluster),
    };
    let names = zerofoot_shared::names::Names::new(cluster.cluster.parse().expect("cluster"));
    let (errors_tx, errors) = mpsc::unbounded_channel();
    let client = async_nats::ConnectOptions::with_user_and_password(
        user.clone(),
        cluster.nats.auth.password(&user),
    )
    .custom_inbox_prefix(names.inbox_prefix(role))
    .event_callback(move |event| {
        let errors_tx = errors_tx.clone();
        async move {
            if let async_nats::Event::ServerError(e) = event {
                let _ = errors_tx.send(e.to_string());
            }
        }
    })
    .connect(cluster.nats.url())
    .await
    .unwrap_or_else(|e| panic!("{user} must be able to connect: {e}"));
    (client, errors)
}

/// Waits for the server to refuse something naming `subject`.
async fn expect_violation(errors: &mut mpsc::UnboundedReceiver<String>, subject: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, errors.recv()).await {
            Ok(Some(error))
                if error.contains("Permissions Violation") && error.contains(subject) =>
            {
                return
            }
            Ok(Some(error)) => seen.push(error),
            _ => panic!(
                "no permissions violation for {subject} within 10 s; server errors seen: {seen:?}"
            ),
        }
    }
}

fn short_timeout(client: async_nats::Client) -> jetstream::Context {
    jetstream::ContextBuilder::new()
        .timeout(Duration::from_secs(2))
        .build(client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_credentials_or_a_wrong_password_cannot_connect() {
    let cluster = Cluster::bare().await;
    let anonymous = async_nats::ConnectOptions::new()
        .connect(cluster.nats.url())
        .await;
    let err = anonymous.expect_err("an anonymous client must be refused");
    assert_eq!(
        err.kind(),
        async_nats::ConnectErrorKind::AuthorizationViolation,
        "{err}"
    );
    let agent = format!("zf-{}-agent", cluster.cluster);
    let wrong =
        async_nats::ConnectOptions::with_user_and_password(agent, "not-the-password".into())
            .connect(cluster.nats.url())
            .await;
    let err = wrong.expect_err("a wrong password must be refused");
    assert_eq!(
        err.kind(),
        async_nats::ConnectErrorKind::AuthorizationViolation,
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_speaks_only_for_itself_cannot_touch_modules_the_repository_cannot_touch_contexts_and_nobody_reads_another_cluster(
) {
    let cluster = Cluster::start(1).await;
    let names = zerofoot_shared::names::Names::new(cluster.cluster.parse().expect("cluster"));
    let admin = short_timeout(cluster.nats.client().await);
    let (agent, mut agent_errors) = connect_watching(&cluster, "agent").await;
    let agent_js = short_timeout(agent.clone());

    // What a node needs works: its own cluster's heartbeats arrive.
    let mut heartbeats = agent
        .subscribe(names.all_heartbeats())
        .await
        .expect("subscribe");
    tokio::time::timeout(Duration::from_secs(10), heartbeats.next())
        .await
        .expect("the agent user receives its cluster's heartbeats")
        .expect("subscription open");

    // Its own heartbeat, not another node's: a node speaks only for itself.
    agent
        .publish(names.heartbeat("node-0"), "{}".into())
        .await
        .expect("publish is buffered");
    agent
        .publish(names.heartbeat("node-1"), "{}".into())
        .await
        .expect("publish is buffered");
    expect_violation(&mut agent_errors, &names.heartbeat("node-1")).await;
    let _ = agent.subscribe(names.node_mirror("node-1")).await;
    expect_violation(&mut agent_errors, &names.node_mirror("node-1")).await;

    // The repository's endpoint.
    agent
        .publish(names.repository_put(), "{}".into())
        .await
        .expect("publish is buffered");
    expect_violation(&mut agent_errors, &names.repository_put()).await;

    // The module index.
    let index = agent_js
        .get_key_value(names.module_index_bucket())
        .await
        .expect("an agent may read the module index");
    let put = index.put("forged.1.0.0", "{}".into()).await;
    assert!(put.is_err(), "an agent wrote the module index");
    expect_violation(
        &mut agent_errors,
        &format!("$KV.{}", names.module_index_bucket()),
    )
    .await;
    let admin_index = admin
        .get_key_value(names.module_index_bucket())
        .await
        .expect("index");
    assert!(
        admin_index
            .get("forged.1.0.0")
            .await
            .expect("get")
            .is_none(),
        "the refused write must not be stored"
    );

    // The module object store.
    let objects = agent_js
        .get_object_store(names.module_objects())
        .await
        .expect("an agent may read module bundles");
    let put = objects.put("forged", &mut &b"not a bundle"[..]).await;
    assert!(put.is_err(), "an agent wrote the module object store");
    expect_violation(&mut agent_errors, &format!("$O.{}", names.module_objects())).await;
    let admin_objects = admin
        .get_object_store(names.module_objects())
        .await
        .expect("objects");
    assert!(
        admin_objects.info("forged").await.is_err(),
        "the refused object must not be stored"
    );

    // Another cluster's subjects and buckets.
    let other = zerofoot_shared::names::Names::new("other-cluster".parse().expect("cluster"));
    let mut foreign = agent
        .subscribe(other.op_submit("default"))
        .await
        .expect("subscribe is sent");
    expect_violation(&mut agent_errors, &other.op_submit("default")).await;
    let admin_client = cluster.nats.client().await;
    admin_client
        .publish(other.op_submit("default"), "secret work".into())
        .await
        .expect("admin publishes");
    admin_client.flush().await.expect("flush");
    assert!(
        tokio::time::timeout(Duration::from_millis(500), foreign.next())
            .await
            .ok()
            .flatten()
            .is_none(),
        "an agent received another cluster's message"
    );
    admin
        .create_key_value(jetstream::kv::Config {
            bucket: other.contexts_bucket(),
            ..Default::default()
        })
        .await
        .expect("admin creates the other cluster's contexts");
    assert!(
        agent_js
            .get_key_value(other.contexts_bucket())
            .await
            .is_err(),
        "an agent opened another cluster's contexts"
    );

    // The repository may not write execution contexts.
    let (repository, mut repository_errors) = connect_watching(&cluster, "repository").await;
    let contexts = short_timeout(repository)
        .get_key_value(names.contexts_bucket())
        .await
        .expect("the repository may look the contexts bucket up");
    assert!(
        contexts.put("forged", "{}".into()).await.is_err(),
        "the repository wrote an execution context"
    );
    expect_violation(
        &mut repository_errors,
        &format!("$KV.{}", names.contexts_bucket()),
    )
    .await;

    // The cluster is unharmed.
    cluster.wait_nodes_up(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_the_cluster_works_and_a_node_without_the_ca_is_refused() {
    let tls = zerofoot_tests::TestTls::generate();
    let mut cluster = Cluster::bare_tls(&tls).await;
    cluster.start_repository();
    cluster.start_management();
    cluster.add_node(&Default::default());
    cluster.wait_healthy().await;
    cluster.wait_module("shell", "1.0.0").await;
    let (status, body) = cluster
        .post_json(
            "/v1/operations",
            &serde_json::json!({"module": "shell", "operation": "run",
                "params": {"command": "echo", "args": ["over tls"]}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["result"]["stdout"], "over tls\n", "{body}");

    // A node that does not know the CA cannot verify the server.
    let dir = tempfile::tempdir().expect("tempdir");
    let env: Vec<(String, String)> = cluster
        .node_env("node-0")
        .into_iter()
        .filter(|(k, _)| k != "ZF_NATS_TLS_CA")
        .collect();
    let node = zerofoot_tests::Process::spawn(
        "node-without-ca",
        &zerofoot_tests::service_binary("zf-agent-node"),
        &[
            "--data-dir".into(),
            dir.path().join("data").display().to_string(),
        ],
        &env,
        dir.path(),
    );
    zerofoot_tests::wait_until(
        "the node without the CA to log that TLS failed",
        Duration::from_secs(20),
        || {
            let text = node.log_text();
            async move {
                if text.contains("TLS with NATS failed") {
                    Ok(())
                } else {
                    Err(text)
                }
            }
        },
    )
    .await;
    let plain = async_nats::ConnectOptions::with_user_and_password(
        "admin".into(),
        cluster.nats.auth.password("admin"),
    )
    .connect(cluster.nats.url())
    .await;
    assert!(
        plain.is_err(),
        "a client that cannot verify the server must not connect"
    );
}
