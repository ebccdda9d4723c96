//! The events API as a client relies on it: pages of a monitor's events
//! (`?after=&limit=`) hold exactly the seqs asked for, wherever they lie in
//! a long log and whatever junk or takeover markers sit in it; a live SSE
//! stream resumes right after `Last-Event-ID`; one client's live streams are
//! capped and a closed one frees its slot; a cancel is recorded before it is
//! acknowledged; a token-less management only answers loopback names; and an
//! ordered read that loses its consumer still reads only its range, once.

use std::time::Duration;

use serde_json::{json, Value};
use zerofoot_tests::modules::bundle;
use zerofoot_tests::{status_and_json, wait_until, Cluster, NodeFlags};

/// Counts from the checkpoint to params.total, one keyed event per number, a
/// checkpoint every 10 events, params.pause seconds apart.
const COUNTER: &str = r#"#!/bin/sh
input=$(cat)
n=$(printf '%s' "$input" | jq -r '.checkpoint.n // 0')
total=$(printf '%s' "$input" | jq -r '.params.total')
pause=$(printf '%s' "$input" | jq -r '.params.pause // 0.01')
while [ "$n" -lt "$total" ]; do
  n=$((n + 1))
  echo "{\"type\":\"event\",\"key\":\"$n\",\"data\":{\"n\":$n}}"
  if [ $((n % 10)) -eq 0 ]; then echo "{\"type\":\"checkpoint\",\"data\":{\"n\":$n}}"; fi
  sleep "$pause"
done
"#;

fn fast() -> NodeFlags {
    NodeFlags(vec![
        "--heartbeat-ms".into(),
        "50".into(),
        "--lapse-ms".into(),
        "250".into(),
    ])
}

/// nats-server, repository, management (with `management_env`) and `nodes`
/// nodes, with the counter module published.
async fn cluster_with_counter(nodes: usize, management_env: &[(&str, &str)]) -> Cluster {
    let mut cluster = Cluster::bare().await;
    cluster.start_repository();
    cluster.start_management_with(management_env);
    for _ in 0..nodes {
        cluster.add_node(&fast());
    }
    cluster.wait_healthy().await;
    cluster
        .publish(bundle(
            "counter",
            "1.0.0",
            json!({"count": {"kind": "async"}}),
            COUNTER,
        ))
        .await;
    cluster.wait_module("counter", "1.0.0").await;
    cluster
}

async fn start_counter(cluster: &Cluster, total: u64, pause: f64) -> String {
    let (status, ctx) = cluster
        .post_json(
            "/v1/operations",
            &json!({"module": "counter", "operation": "count",
                    "params": {"total": total, "pause": pause}}),
        )
        .await;
    assert_eq!(status, 202, "{ctx}");
    ctx["id"].as_str().expect("id").to_string()
}

/// A `counter count` monitor recorded `pending` in the contexts bucket, as
/// management records one; with no node running, nobody takes it.
async fn record_pending_monitor(cluster: &Cluster) -> String {
    use zerofoot_shared::protocol::{encode, ExecutionContext, NewOperation, OperationKind};
    let ctx = ExecutionContext::new(NewOperation {
        module: "counter".into(),
        version: "1.0.0".into(),
        digest: "sha256:00".into(),
        operation: "count".into(),
        kind: OperationKind::Async,
        resource: None,
        zone: "default".into(),
        params: json!({"total": 10, "pause": 0.01}),
        timeout_ms: 0,
        retries: 0,
        client: None,
    });
    let names = zerofoot_shared::names::Names::new(cluster.cluster.parse().expect("cluster"));
    let js = async_nats::jetstream::new(cluster.nats.client().await);
    let contexts = js
        .get_key_value(names.contexts_bucket())
        .await
        .expect("the contexts bucket");
    contexts
        .create(ctx.id.to_string(), encode(&ctx))
        .await
        .expect("record the pending monitor");
    ctx.id.to_string()
}

async fn wait_state(cluster: &Cluster, op: &str, state: &str, within: Duration) -> Value {
    let path = format!("/v1/operations/{op}");
    wait_until(&format!("operation {op} {state}"), within, || async {
        let (_, ctx) = cluster.get(&path).await;
        if ctx["state"] == state {
            Ok(ctx)
        } else {
            Err(ctx.to_string())
        }
    })
    .await
}

/// The seqs of one page.
async fn page(cluster: &Cluster, op: &str, query: &str) -> Vec<u64> {
    let (status, body) = cluster
        .get(&format!("/v1/operations/{op}/events?{query}"))
        .await;
    assert_eq!(status, 200, "?{query}: {body}");
    body["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["seq"].as_u64().expect("seq"))
        .collect()
}

/// Every event by pages of `limit`, following the last seq of each page.
async fn walk(cluster: &Cluster, op: &str, limit: usize) -> Vec<u64> {
    let mut all = Vec::new();
    loop {
        let after = all.last().copied().unwrap_or(0);
        let seqs = page(cluster, op, &format!("after={after}&limit={limit}")).await;
        assert!(seqs.len() <= limit, "a page holds at most its limit");
        if seqs.is_empty() {
            return all;
        }
        all.extend(seqs);
    }
}

fn seqs(range: std::ops::RangeInclusive<u64>) -> Vec<u64> {
    range.collect()
}

/// Publishes `payload` on `subject` with a plain JetStream publish.
async fn publish(js: &async_nats::jetstream::Context, subject: &str, payload: Vec<u8>) -> u64 {
    js.publish(subject.to_string(), payload.into())
        .await
        .expect("publish")
        .await
        .expect("ack")
        .sequence
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_hold_exactly_the_seqs_asked_for_and_junk_does_not_break_them() {
    let cluster = cluster_with_counter(1, &[]).await;
    let total = 300;
    let op = start_counter(&cluster, total, 0.002).await;
    let template = wait_state(&cluster, &op, "complete", Duration::from_secs(120)).await;

    assert_eq!(page(&cluster, &op, "limit=50").await, seqs(1..=50));
    assert_eq!(
        page(&cluster, &op, "after=50&limit=100").await,
        seqs(51..=150)
    );
    assert_eq!(page(&cluster, &op, "after=137&limit=1").await, vec![138]);
    assert_eq!(
        page(&cluster, &op, "after=290&limit=100").await,
        seqs(291..=300)
    );
    assert_eq!(page(&cluster, &op, "after=300").await, Vec::<u64>::new());
    assert_eq!(page(&cluster, &op, "after=100000").await, Vec::<u64>::new());
    assert_eq!(walk(&cluster, &op, 7).await, seqs(1..=total));
    let (status, body) = cluster
        .get(&format!("/v1/operations/{op}/events?limit=0"))
        .await;
    assert_eq!(status, 400, "{body}");

    // Junk at the log's end, where many searches look.
    let js = async_nats::jetstream::new(cluster.nats.client().await);
    let subject = format!("zf.{}.evt.{op}", cluster.cluster);
    for junk in [
        &b"not json at all"[..],
        br#"{"kind":"events"}"#,
        br#"{"kind":"events","v":1,"events":[{"seq":1}]}"#,
        br#"{"kind":"takeover"}"#,
    ] {
        publish(&js, &subject, junk.to_vec()).await;
    }
    for after in [0, 1, 150, 298, 299] {
        let want = seqs(after + 1..=(after + 20).min(total));
        let got = page(&cluster, &op, &format!("after={after}&limit=20")).await;
        assert_eq!(got, want, "after {after}, junk at the end");
    }
    assert_eq!(page(&cluster, &op, "after=300").await, Vec::<u64>::new());
    assert_eq!(walk(&cluster, &op, 64).await, seqs(1..=total));

    // A log written by hand: batches of 1 to 9 events, another operation's
    // messages between them, junk and takeover markers in the middle. Its
    // context is a copy of the finished monitor's under a new id.
    let forged = uuid::Uuid::new_v4().to_string();
    let mut ctx = template.clone();
    ctx["id"] = json!(forged);
    let contexts = js
        .get_key_value(format!("zf_{}_contexts", cluster.cluster))
        .await
        .expect("contexts bucket");
    contexts
        .put(forged.clone(), ctx.to_string().into())
        .await
        .expect("put the context");
    let subject = format!("zf.{}.evt.{forged}", cluster.cluster);
    let other = format!("zf.{}.evt.{}", cluster.cluster, uuid::Uuid::new_v4());
    let event = |seq: u64, epoch: u64| {
        json!({"v": 1, "op": forged, "seq": seq, "key": seq.to_string(), "data": {"n": seq},
               "node": "node-x", "epoch": epoch, "at": "2026-01-01T00:00:00Z"})
    };
    let mut seq = 0;
    let mut epoch = 1;
    for i in 0..60u64 {
        let size = i % 9 + 1;
        let events: Vec<Value> = (seq + 1..=seq + size).map(|s| event(s, epoch)).collect();
        seq += size;
        let entry = json!({"kind": "events", "v": 1, "events": events});
        publish(&js, &subject, entry.to_string().into_bytes()).await;
        publish(&js, &other, b"another operation's message".to_vec()).await;
        if i % 7 == 3 {
            publish(&js, &subject, b"\x00\xffjunk".to_vec()).await;
            publish(
                &js,
                &subject,
                br#"{"kind":"events","events":"no"}"#.to_vec(),
            )
            .await;
        }
        if i % 13 == 6 {
            epoch += 1;
            let marker = json!({"kind": "takeover", "v": 1, "op": forged, "node": "node-y",
                                "epoch": epoch, "after_seq": seq});
            publish(&js, &subject, marker.to_string().into_bytes()).await;
        }
    }
    let last = seq;
    for after in 0..=last + 1 {
        for limit in [1, 4, 25] {
            let want = seqs(after + 1..=(after + limit).min(last));
            let got = page(&cluster, &forged, &format!("after={after}&limit={limit}")).await;
            assert_eq!(got, want, "after {after}, limit {limit}");
        }
    }
    assert_eq!(walk(&cluster, &forged, 10).await, seqs(1..=last));
    // Pages over more messages than a read takes by direct get: the rest
    // comes through a consumer, from where the direct gets stopped.
    for after in [0, 7, 40, 150] {
        let got = page(&cluster, &forged, &format!("after={after}&limit=1000")).await;
        assert_eq!(got, seqs(after + 1..=last), "after {after}, one long page");
    }
}

/// Reads an SSE stream until `count` events arrived; returns their ids.
async fn read_sse(response: reqwest::Response, count: usize) -> Vec<u64> {
    zerofoot_tests::sse_frames(response, count)
        .await
        .into_iter()
        .map(|(id, data)| {
            assert_eq!(data["seq"].as_u64(), Some(id), "the id is the seq");
            id
        })
        .collect()
}

async fn open_sse(cluster: &Cluster, op: &str, last_event_id: Option<&str>) -> reqwest::Response {
    let mut request = cluster
        .http
        .get(cluster.url(&format!("/v1/operations/{op}/events")))
        .header("accept", "text/event-stream");
    if let Some(id) = last_event_id {
        request = request.header("last-event-id", id);
    }
    request.send().await.expect("SSE request")
}

/// Opens an SSE stream once the client has a free slot: streams dropped
/// just before free theirs as soon as management sees the disconnect.
async fn open_sse_when_free(cluster: &Cluster, op: &str, last_event_id: &str) -> reqwest::Response {
    wait_until(
        "a free event stream slot",
        Duration::from_secs(20),
        || async {
            let response = open_sse(cluster, op, Some(last_event_id)).await;
            match response.status().as_u16() {
                200 => Ok(response),
                other => Err(format!("status {other}")),
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_resumes_right_after_the_last_event_id_and_streams_are_capped_per_client() {
    let cluster = cluster_with_counter(1, &[("ZF_MAX_EVENT_STREAMS_PER_CLIENT", "2")]).await;
    let total = 200;
    let done = start_counter(&cluster, total, 0.002).await;
    wait_state(&cluster, &done, "complete", Duration::from_secs(120)).await;

    let resumed = open_sse(&cluster, &done, Some("150")).await;
    assert_eq!(resumed.status(), 200);
    assert_eq!(read_sse(resumed, 50).await, seqs(151..=200));
    let from_query = cluster
        .http
        .get(cluster.url(&format!("/v1/operations/{done}/events?after=37")))
        .header("accept", "text/event-stream")
        .send()
        .await
        .expect("SSE");
    assert_eq!(read_sse(from_query, 3).await, vec![38, 39, 40]);

    // A live monitor: a resumed stream goes on with the events written after it.
    let live = start_counter(&cluster, 100_000, 0.02).await;
    // (Streams just dropped may hold their slots a moment longer.)
    let first = read_sse(open_sse_when_free(&cluster, &live, "0").await, 5).await;
    assert_eq!(first, seqs(1..=5));
    let tail = read_sse(open_sse_when_free(&cluster, &live, "3").await, 10).await;
    assert_eq!(
        tail,
        seqs(4..=13),
        "first id is Last-Event-ID + 1, then live"
    );

    // The cap: two open streams, the third is refused and says how to raise it.
    let one = open_sse_when_free(&cluster, &live, "0").await;
    let two = open_sse_when_free(&cluster, &done, "199").await;
    let (status, body) = status_and_json(open_sse(&cluster, &live, None).await).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "too_many_event_streams", "{body}");
    let message = body["error"]["message"].as_str().unwrap_or("");
    assert!(
        message.contains("2 live event streams")
            && message.contains("--max-event-streams-per-client"),
        "{message}"
    );
    // Pages are not streams: still served.
    assert_eq!(
        page(&cluster, &done, "after=10&limit=2").await,
        vec![11, 12]
    );

    // A client that goes away frees its slot.
    drop(one);
    let three = open_sse_when_free(&cluster, &live, "1").await;
    assert_eq!(read_sse(three, 2).await, vec![2, 3]);
    drop(two);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_is_recorded_before_it_is_acknowledged_and_ends_the_monitor() {
    let cluster = cluster_with_counter(2, &[]).await;
    let op = start_counter(&cluster, 100_000, 0.05).await;
    wait_until(
        "the monitor's first events",
        Duration::from_secs(60),
        || async {
            let n = page(&cluster, &op, "limit=10").await.len();
            if n >= 3 {
                Ok(())
            } else {
                Err(format!("{n} events"))
            }
        },
    )
    .await;
    let r = cluster
        .http
        .delete(cluster.url(&format!("/v1/operations/{op}")))
        .send()
        .await
        .expect("DELETE");
    let (status, ctx) = status_and_json(r).await;
    assert_eq!(status, 202, "{ctx}");
    let state = ctx["state"].as_str().unwrap_or("").to_string();
    assert!(
        state == "cancelling" || state == "cancelled",
        "answered with the recorded cancel: {ctx}"
    );
    // What was answered is what is stored (or later).
    let (_, stored) = cluster.get(&format!("/v1/operations/{op}")).await;
    assert!(
        ["cancelling", "cancelled"].contains(&stored["state"].as_str().unwrap_or("")),
        "{stored}"
    );
    let (status, listed) = cluster
        .get("/v1/operations?state=cancelling&limit=10")
        .await;
    assert_eq!(status, 200, "?state=cancelling is a state: {listed}");
    let again = cluster
        .http
        .delete(cluster.url(&format!("/v1/operations/{op}")))
        .send()
        .await
        .expect("DELETE again");
    assert!(
        [202, 409].contains(&again.status().as_u16()),
        "cancelling again: 202 while cancelling, 409 once cancelled"
    );

    wait_state(&cluster, &op, "cancelled", Duration::from_secs(15)).await;
    let r = cluster
        .http
        .delete(cluster.url(&format!("/v1/operations/{op}")))
        .send()
        .await
        .expect("DELETE");
    let (status, body) = status_and_json(r).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "already_finished", "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_less_management_answers_only_loopback_names() {
    let mut cluster = cluster_with_counter(0, &[]).await;
    let port = cluster.management[0].port;
    let get_as = |host: String| {
        cluster
            .http
            .get(cluster.url("/v1/cluster"))
            .header("host", host)
            .send()
    };
    for host in ["evil.example", "evil.example:80", "10.1.2.3"] {
        let (status, body) = status_and_json(get_as(host.to_string()).await.expect("GET")).await;
        assert_eq!(status, 403, "Host {host}: {body}");
        assert_eq!(body["error"]["code"], "host_not_allowed", "{body}");
        let message = body["error"]["message"].as_str().unwrap_or("");
        assert!(
            message.contains("DNS rebinding") && message.contains("ZF_API_TOKENS"),
            "says why and what to do: {message}"
        );
    }
    for host in [
        format!("localhost:{port}"),
        format!("127.0.0.1:{port}"),
        "[::1]".to_string(),
    ] {
        let response = get_as(host.clone()).await.expect("GET");
        assert_eq!(response.status(), 200, "Host {host}");
    }
    // HTTP/1.0 without a Host header.
    let raw = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream
            .write_all(b"GET /healthz HTTP/1.0\r\n\r\n")
            .expect("write");
        let mut answer = String::new();
        let _ = stream.read_to_string(&mut answer);
        answer
    })
    .await
    .expect("raw request");
    assert!(
        raw.starts_with("HTTP/1.0 200") || raw.starts_with("HTTP/1.1 200"),
        "{raw}"
    );

    // With tokens, any name may be used.
    let token = "admin-token-0123456789abcdef";
    let index = cluster.start_management_with(&[("ZF_API_TOKENS", &format!("admin:{token}"))]);
    cluster.wait_healthy().await;
    let response = cluster
        .http
        .get(cluster.management[index].url("/v1/cluster"))
        .header("host", "zerofoot.example")
        .bearer_auth(token)
        .send()
        .await
        .expect("GET");
    assert_eq!(response.status(), 200);

    // Cancel of a pending operation: cancelled at once. With no node at all,
    // management refuses new monitors (503) once it has listened for a
    // lapse, so the pending one is recorded the way a submission records it.
    let op = record_pending_monitor(&cluster).await;
    let r = cluster
        .http
        .delete(cluster.url(&format!("/v1/operations/{op}")))
        .send()
        .await
        .expect("DELETE");
    let (status, ctx) = status_and_json(r).await;
    assert_eq!(
        (status, ctx["state"].as_str()),
        (202, Some("cancelled")),
        "{ctx}"
    );
    let (_, stored) = cluster.get(&format!("/v1/operations/{op}")).await;
    assert_eq!(stored["state"], "cancelled", "{stored}");
}

/// Every read of a log past its first messages (pages, live streams, a new
/// owner's read) goes through an ordered consumer. One that loses its
/// consumer before the first message (a NATS server crash, here a deleted
/// consumer) is recreated by the client library from the stream's first
/// message; the read must still hand on only its own range, each once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ordered_read_that_loses_its_consumer_keeps_to_its_range() {
    use async_nats::jetstream::stream;
    use futures::StreamExt;
    use zerofoot_shared::ordered_read::OrderedRead;

    let cluster = Cluster::bare().await;
    let js = async_nats::jetstream::new(cluster.nats.client().await);
    let log = js
        .create_stream(stream::Config {
            name: "ORDERED".into(),
            subjects: vec!["ordered.>".into()],
            ..Default::default()
        })
        .await
        .expect("create the test stream");
    let mut positions = Vec::new();
    for n in 0..40u32 {
        let subject = if n % 2 == 0 { "ordered.a" } else { "ordered.b" };
        let position = publish(&js, subject, n.to_string().into_bytes()).await;
        if n % 2 == 0 {
            positions.push(position);
        }
    }
    let (start, last) = (positions[10], positions[positions.len() - 1]);
    let wanted: Vec<u64> = positions.into_iter().filter(|p| *p >= start).collect();

    let read = OrderedRead::open(&log, "ordered.a", start)
        .await
        .expect("open the ordered read");
    log.delete_consumer(&read.name())
        .await
        .expect("delete the read's consumer before its first message");
    let mut messages = read.messages().await.expect("start the ordered read");
    let mut seen = Vec::new();
    while seen.last() != Some(&last) {
        let message = tokio::time::timeout(Duration::from_secs(30), messages.next())
            .await
            .unwrap_or_else(|_| {
                panic!("no message within 30 s after positions {seen:?}; awaited up to {last}")
            })
            .expect("the read ended early")
            .expect("read a message");
        seen.push(message.info().expect("message metadata").stream_sequence);
        assert!(
            seen.len() <= wanted.len(),
            "more messages than the range holds: {seen:?}, wanted {wanted:?}"
        );
    }
    assert_eq!(seen, wanted, "each message of the range once, in order");
}
