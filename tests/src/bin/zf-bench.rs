//! `zf-bench`: the benchmarks behind `scripts/bench.sh`. Each scenario starts
//! a fresh cluster from the release binaries and measures zerofoot next to
//! the raw cost of the same work in the same run (a bare process spawn, a raw
//! object-store put and get), reporting ratios. Prints a Markdown table and
//! writes the same figures as JSON under `target/bench/`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use zerofoot_tests::modules::{bundle, write_module};
use zerofoot_tests::Cluster;

#[derive(Serialize)]
struct Figure {
    figure: String,
    value: f64,
    unit: &'static str,
    baseline: Option<f64>,
    baseline_what: Option<String>,
    /// value / baseline
    ratio: Option<f64>,
    target: &'static str,
    meets_target: Option<bool>,
}

impl Figure {
    /// A figure in ms with no target of its own, next to the p50 of a bare
    /// spawn of the benchmark's driver.
    fn against_bare_p50(figure: String, value: f64, bare_p50: f64) -> Self {
        Self {
            figure,
            value,
            unit: "ms",
            baseline: Some(bare_p50),
            baseline_what: Some("bare spawn of the same driver, p50".into()),
            ratio: Some(value / bare_p50),
            target: "-",
            meets_target: None,
        }
    }
}

struct Sizes {
    latency_ops: usize,
    clients: usize,
    ops_per_client: usize,
    propagation_samples: usize,
    failover_kills: usize,
    /// Times the lead's connection is closed in the flap scenario.
    flaps: usize,
    stream_events: u64,
    /// Events of the 100-monitor figure, in all: enough that starting the
    /// 100 drivers is not most of what it measures.
    many_monitor_events: u64,
    monitors: usize,
}

const DRIVER: &str = "#!/bin/sh\ncat >/dev/null\necho '{\"type\":\"result\",\"data\":1}'\n";

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * (sorted.len() as f64 - 1.0)).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn sorted_ms(samples: &[Duration]) -> Vec<f64> {
    let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1000.0).collect();
    ms.sort_by(|a, b| a.total_cmp(b));
    ms
}

/// Three nodes and the `bench` module (`go`: [`DRIVER`]), fetched by nobody yet.
async fn bench_cluster() -> Cluster {
    let cluster = Cluster::start(3).await;
    cluster
        .publish(bundle(
            "bench",
            "1.0.0",
            json!({"go": {"kind": "sync"}}),
            DRIVER,
        ))
        .await;
    cluster.wait_module("bench", "1.0.0").await;
    cluster
}

/// Runs the driver script the way a node does, minus zerofoot: spawn, stdin, read stdout.
async fn bare_spawn(script: &PathBuf) {
    spawn_and_feed(tokio::process::Command::new(script).arg("go")).await;
}

/// The same driver through `zf-driver-shim` exec'd for it alone (as a node
/// started drivers before it kept a spawner, which forks the shim instead):
/// its own session, limits and, with `confined`, a PID namespace with its
/// own /proc and Landlock rules (the user switch is left out: it cost
/// nothing measurable). The JSON is the shim's `ShimSpec`.
async fn shim_spawn(script: &std::path::Path, confined: bool) {
    let shim = std::env::current_exe()
        .expect("own path")
        .with_file_name("zf-driver-shim");
    let dir = script
        .parent()
        .and_then(|bin| bin.parent())
        .expect("bundle dir");
    let spec = json!({
        "parent": std::process::id(),
        "program": script,
        "args": ["go"],
        "sandbox": {
            "user": null,
            "limits": {"address_space_bytes": 2u64 << 30, "open_files": 1024,
                       "processes": 1024, "cpu_seconds": 600},
            "paths": confined.then(|| json!({
                "read_exec": ["/usr", "/bin", "/lib", "/lib64", "/etc", dir],
                "read_write_files": ["/dev/null"],
                "full": [std::env::temp_dir()],
            })),
            "pid_namespace": confined,
        }
    });
    spawn_and_feed(tokio::process::Command::new(shim).arg(spec.to_string())).await;
}

/// The raw costs under every sync operation, measured on the same cluster:
/// each sorted, in ms.
struct RawCosts {
    /// `GET /healthz` on management: the HTTP round trip alone.
    http: Vec<f64>,
    /// A core NATS request to a responder that echoes it: the hop from
    /// management to a node and back.
    nats: Vec<f64>,
    /// A put of a context-sized value into a file-backed KV bucket, acked
    /// once synced to disk (the server runs with `sync_interval: always`):
    /// the result's write.
    synced_write: Vec<f64>,
}

async fn raw_costs(cluster: &Cluster, samples: usize) -> RawCosts {
    use futures::StreamExt;
    let mut http = Vec::new();
    for _ in 0..samples {
        let t = Instant::now();
        let (status, _) = cluster.get("/healthz").await;
        assert_eq!(status, 200, "management is healthy");
        http.push(t.elapsed());
    }
    let client = cluster.nats.client().await;
    let mut requests = client
        .subscribe("bench.floor.echo")
        .await
        .expect("subscribe");
    let responder = client.clone();
    let echo = tokio::spawn(async move {
        while let Some(msg) = requests.next().await {
            if let Some(reply) = msg.reply {
                let _ = responder.publish(reply, msg.payload).await;
            }
        }
    });
    let (_, list) = cluster.get("/v1/operations?limit=1").await;
    let context = bytes::Bytes::from(list["operations"][0].to_string());
    let mut nats = Vec::new();
    for _ in 0..samples {
        let t = Instant::now();
        client
            .request("bench.floor.echo", context.clone())
            .await
            .expect("an echo");
        nats.push(t.elapsed());
    }
    echo.abort();
    let js = async_nats::jetstream::new(client);
    let bucket = js
        .create_key_value(async_nats::jetstream::kv::Config {
            bucket: "bench_floor".into(),
            storage: async_nats::jetstream::stream::StorageType::File,
            ..Default::default()
        })
        .await
        .expect("a scratch bucket");
    let mut synced_write = Vec::new();
    for i in 0..samples {
        let t = Instant::now();
        bucket
            .put(format!("k{i}"), context.clone())
            .await
            .expect("a synced put");
        synced_write.push(t.elapsed());
    }
    RawCosts {
        http: sorted_ms(&http),
        nats: sorted_ms(&nats),
        synced_write: sorted_ms(&synced_write),
    }
}

/// The raw costs, and the floor they put under a sync operation that keeps
/// its rules: the driver's run, the HTTP round trip, the hop to the node
/// and back, and the result's synced write, which must land before the
/// answer (the take's synced write overlaps the spawn, so it is left out:
/// this is a lower bound).
fn floor_figures(raw: &RawCosts, bare_p50: f64, figures: &mut Vec<Figure>) {
    let parts = [
        ("HTTP round trip (GET /healthz), p50", &raw.http),
        ("NATS request round trip (echo), p50", &raw.nats),
        (
            "KV put synced to disk (sync_interval: always), p50",
            &raw.synced_write,
        ),
    ];
    let mut floor = bare_p50;
    for (what, samples) in parts {
        let value = percentile(samples, 50.0);
        floor += value;
        figures.push(Figure::against_bare_p50(
            format!("raw cost: {what}"),
            value,
            bare_p50,
        ));
    }
    figures.push(Figure::against_bare_p50(
        "floor of a sync op through HTTP: bare spawn + HTTP + NATS round trip + \
         one synced write, p50 each"
            .into(),
        floor,
        bare_p50,
    ));
}

async fn spawn_and_feed(command: &mut tokio::process::Command) {
    let mut child = command
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("spawn driver");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(br#"{"v":1,"operation":"go","params":{}}"#)
        .await
        .expect("write stdin");
    drop(stdin);
    let mut out = Vec::new();
    child
        .stdout
        .take()
        .expect("stdout")
        .read_to_end(&mut out)
        .await
        .expect("read stdout");
    assert!(child.wait().await.expect("wait").success());
}

async fn sync_operations(sizes: &Sizes, figures: &mut Vec<Figure>) {
    let cluster = bench_cluster().await;
    let dir = tempfile::tempdir().expect("tempdir");
    write_module(
        dir.path(),
        "bench",
        "1.0.0",
        json!({"go": {"kind": "sync"}}),
        DRIVER,
    );
    let script = dir.path().join("bin/run");
    let request = json!({"module": "bench", "operation": "go"});
    // Warm up: every node fetches the bundle once.
    for _ in 0..10 {
        cluster.post_json("/v1/operations", &request).await;
    }

    let mut bare = Vec::new();
    for _ in 0..sizes.latency_ops {
        let t = Instant::now();
        bare_spawn(&script).await;
        bare.push(t.elapsed());
    }
    let logs: Vec<PathBuf> = cluster
        .management
        .iter()
        .map(|m| m.process.log.clone())
        .chain(cluster.nodes.iter().map(|n| n.log.clone()))
        .collect();
    let log_starts: Vec<u64> = logs
        .iter()
        .map(|log| std::fs::metadata(log).map(|m| m.len()).unwrap_or(0))
        .collect();
    let mut shimmed = [Vec::new(), Vec::new()];
    for (confined, samples) in [false, true].into_iter().zip(shimmed.iter_mut()) {
        for _ in 0..sizes.latency_ops.min(200) {
            let t = Instant::now();
            shim_spawn(&script, confined).await;
            samples.push(t.elapsed());
        }
    }
    let mut http = Vec::new();
    for _ in 0..sizes.latency_ops {
        let t = Instant::now();
        let (status, ctx) = cluster.post_json("/v1/operations", &request).await;
        assert_eq!(
            (status, ctx["state"].as_str()),
            (200, Some("complete")),
            "{ctx}"
        );
        http.push(t.elapsed());
    }
    let (bare_ms, http_ms) = (sorted_ms(&bare), sorted_ms(&http));
    let p50 = percentile(&http_ms, 50.0);
    let bare_p50 = percentile(&bare_ms, 50.0);
    let raw = raw_costs(&cluster, sizes.latency_ops).await;
    figures.push(Figure {
        figure: "sync op latency through HTTP, 1 client, p50".into(),
        value: p50,
        unit: "ms",
        baseline: Some(bare_p50),
        baseline_what: Some("bare spawn of the same driver, p50".into()),
        ratio: Some(p50 / bare_p50),
        target: "p50 <= 1.3x bare spawn",
        meets_target: Some(p50 <= 1.3 * bare_p50),
    });
    let p99 = percentile(&http_ms, 99.0);
    let bare_p99 = percentile(&bare_ms, 99.0);
    figures.push(Figure {
        figure: "sync op latency through HTTP, 1 client, p99".into(),
        value: p99,
        unit: "ms",
        baseline: Some(bare_p99),
        baseline_what: Some("bare spawn, p99".into()),
        ratio: Some(p99 / bare_p99),
        target: "p99 <= 1.6x bare spawn",
        meets_target: Some(p99 <= 1.6 * bare_p99),
    });
    for (samples, what) in shimmed.iter().zip([
        "the same driver through zf-driver-shim exec'd for it (session, limits), p50",
        "the same driver through zf-driver-shim exec'd for it, confined (PID namespace with its own /proc, Landlock), p50",
    ]) {
        let value = percentile(&sorted_ms(samples), 50.0);
        figures.push(Figure::against_bare_p50(what.into(), value, bare_p50));
    }
    floor_figures(&raw, bare_p50, figures);
    // Where the single client's time went: the services' own timings of
    // each phase (debug events of target zerofoot::timing), median of each.
    for (phase, median_ms) in timing_medians(&logs, &log_starts) {
        figures.push(Figure::against_bare_p50(
            format!("sync op, 1 client, phase `{phase}`, median"),
            median_ms,
            bare_p50,
        ));
    }

    let total = sizes.clients * sizes.ops_per_client;
    let me = nix::unistd::Pid::this();
    let bare_cpu = cpu_ticks_and_children(me).1;
    let t = Instant::now();
    let spawns = (0..sizes.clients).map(|_| async {
        for _ in 0..sizes.ops_per_client {
            bare_spawn(&script).await;
        }
    });
    futures::future::join_all(spawns).await;
    let bare_rate = total as f64 / t.elapsed().as_secs_f64();
    let bare_cpu_ms = (cpu_ticks_and_children(me).1 - bare_cpu) as f64 * 10.0 / total as f64;
    // Where the CPU of the concurrent run goes, per operation.
    let processes: Vec<(&str, nix::unistd::Pid)> =
        std::iter::once(("nats-server", cluster.nats.process.pid()))
            .chain(
                cluster
                    .management
                    .iter()
                    .map(|m| ("management", m.process.pid())),
            )
            .chain(cluster.nodes.iter().map(|n| ("agent nodes", n.pid())))
            .collect();
    let cpu_before: Vec<(u64, u64)> = processes
        .iter()
        .map(|(_, pid)| cpu_ticks_and_children(*pid))
        .collect();
    let spawners_before: Vec<Option<(i32, u64)>> = processes
        .iter()
        .map(|(_, pid)| spawner_ticks(*pid))
        .collect();
    let t = Instant::now();
    let clients = (0..sizes.clients).map(|_| async {
        for _ in 0..sizes.ops_per_client {
            let (status, ctx) = cluster.post_json("/v1/operations", &request).await;
            assert_eq!(
                (status, ctx["state"].as_str()),
                (200, Some("complete")),
                "{ctx}"
            );
        }
    });
    futures::future::join_all(clients).await;
    let http_rate = total as f64 / t.elapsed().as_secs_f64();
    let mut cpu_per_op: Vec<(String, f64)> = Vec::new();
    for (((name, pid), (own, children)), spawner_before) in
        processes.iter().zip(&cpu_before).zip(&spawners_before)
    {
        let (own_after, children_after) = cpu_ticks_and_children(*pid);
        let mut add = |what: String, ticks: u64| {
            let ms = ticks as f64 * 10.0 / total as f64;
            match cpu_per_op.iter_mut().find(|(w, _)| *w == what) {
                Some((_, sum)) => *sum += ms,
                None => cpu_per_op.push((what, ms)),
            }
        };
        add(name.to_string(), own_after - own);
        if *name == "agent nodes" {
            let spawner = match (spawner_before, spawner_ticks(*pid)) {
                (Some((before, ticks)), Some((after, ticks_after))) if *before == after => {
                    ticks_after - ticks
                }
                (_, Some((_, ticks_after))) => ticks_after,
                (_, None) => 0,
            };
            add(
                "shims and drivers".into(),
                children_after - children + spawner,
            );
        }
    }
    for (what, ms) in cpu_per_op.iter().cloned() {
        figures.push(Figure {
            figure: format!("CPU per sync op, {} clients: {what}", sizes.clients),
            value: ms,
            unit: "ms",
            baseline: Some(bare_cpu_ms),
            baseline_what: Some("CPU of one bare spawn of the same driver".into()),
            ratio: Some(ms / bare_cpu_ms),
            target: "-",
            meets_target: None,
        });
    }
    let control_plane_cpu_ms: f64 = cpu_per_op
        .iter()
        .filter(|(what, _)| what != "shims and drivers")
        .map(|(_, ms)| ms)
        .sum();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let bound = cores * 1000.0 / (bare_cpu_ms + control_plane_cpu_ms);
    figures.push(Figure {
        figure: format!(
            "bound on sync ops/s, {} clients, were each driver to cost only a bare spawn's CPU: \
             {cores} cores / (bare spawn CPU + control plane CPU {control_plane_cpu_ms:.2} ms per op)",
            sizes.clients
        ),
        value: bound,
        unit: "ops/s",
        baseline: Some(bare_rate),
        baseline_what: Some(format!(
            "bare spawns of the same driver, {} at a time",
            sizes.clients
        )),
        ratio: Some(bound / bare_rate),
        target: "-",
        meets_target: None,
    });
    figures.push(Figure {
        figure: format!(
            "sync ops through HTTP, {} concurrent clients",
            sizes.clients
        ),
        value: http_rate,
        unit: "ops/s",
        baseline: Some(bare_rate),
        baseline_what: Some(format!(
            "bare spawns of the same driver, {} at a time",
            sizes.clients
        )),
        ratio: Some(http_rate / bare_rate),
        target: ">= 0.8x bare spawn throughput",
        meets_target: Some(http_rate >= 0.8 * bare_rate),
    });

    // A context change until every node's redb mirror has applied it.
    let client = cluster.nats.client().await;
    let js = async_nats::jetstream::new(client.clone());
    let contexts = js
        .get_key_value(format!("zf_{}_contexts", cluster.cluster))
        .await
        .expect("contexts bucket");
    let (_, list) = cluster.get("/v1/operations?limit=1").await;
    let template = list["operations"][0].clone();
    let nodes: Vec<String> = (0..3).map(|i| cluster.node_id(i)).collect();
    let mut samples = Vec::new();
    for i in 0..sizes.propagation_samples {
        let mut ctx = template.clone();
        let id = uuid::Uuid::new_v4();
        ctx["id"] = json!(id);
        ctx["params"] = json!({"probe": i});
        let t = Instant::now();
        let revision = contexts
            .put(id.to_string(), ctx.to_string().into())
            .await
            .expect("put");
        for node in &nodes {
            loop {
                let subject = format!("zf.{}.node.{node}.mirror", cluster.cluster);
                let msg = client
                    .request(subject, r#"{"only_revisions":true}"#.into())
                    .await
                    .expect("mirror");
                let reply: serde_json::Value = serde_json::from_slice(&msg.payload).expect("json");
                if reply["ok"]["contexts_revision"].as_u64().unwrap_or(0) >= revision {
                    break;
                }
            }
        }
        samples.push(t.elapsed());
    }
    let ms = sorted_ms(&samples);
    let p99 = percentile(&ms, 99.0);
    figures.push(Figure {
        figure: "context change visible in all 3 redb mirrors, p50".into(),
        value: percentile(&ms, 50.0),
        unit: "ms",
        baseline: None,
        baseline_what: None,
        ratio: None,
        target: "-",
        meets_target: None,
    });
    figures.push(Figure {
        figure: "context change visible in all 3 redb mirrors, p99".into(),
        value: p99,
        unit: "ms",
        baseline: None,
        baseline_what: None,
        ratio: None,
        target: "p99 <= 50 ms",
        meets_target: Some(p99 <= 50.0),
    });
}

/// A batch over `BATCH_TARGETS` resources next to the same number of single
/// operations, both `BATCH_PARALLEL` at a time, on one cluster.
async fn batch_throughput(figures: &mut Vec<Figure>) {
    const BATCH_TARGETS: usize = 200;
    const BATCH_PARALLEL: usize = 20;
    let cluster = bench_cluster().await;
    for i in 0..BATCH_TARGETS {
        let (status, body) = cluster
            .put_json(
                &format!("/v1/resources/t-{i:03}"),
                &json!({"kind": "host", "labels": {"fleet": "bench"}, "config": {}}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
    // Warm up: every node fetches the bundle once.
    for i in 0..10 {
        let request =
            json!({"module": "bench", "operation": "go", "resource": format!("t-{i:03}")});
        cluster.post_json("/v1/operations", &request).await;
    }

    let t = Instant::now();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let clients = (0..BATCH_PARALLEL).map(|_| async {
        loop {
            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if i >= BATCH_TARGETS {
                return;
            }
            let request =
                json!({"module": "bench", "operation": "go", "resource": format!("t-{i:03}")});
            let (status, ctx) = cluster.post_json("/v1/operations", &request).await;
            assert_eq!(status, 200, "{ctx}");
        }
    });
    futures::future::join_all(clients).await;
    let singles_rate = BATCH_TARGETS as f64 / t.elapsed().as_secs_f64();

    let t = Instant::now();
    let (status, batch) = cluster
        .post_json(
            "/v1/operations",
            &json!({"module": "bench", "operation": "go",
                    "targets": {"selector": "fleet=bench"}, "max_parallel": BATCH_PARALLEL}),
        )
        .await;
    assert_eq!(status, 202, "{batch}");
    let id = batch["id"].as_str().expect("batch id").to_string();
    wait_state(&cluster, &id, "complete", Duration::from_secs(300)).await;
    let batch_rate = BATCH_TARGETS as f64 / t.elapsed().as_secs_f64();
    figures.push(Figure {
        figure: format!("batch of {BATCH_TARGETS} targets, {BATCH_PARALLEL} at a time"),
        value: batch_rate,
        unit: "ops/s",
        baseline: Some(singles_rate),
        baseline_what: Some(format!(
            "{BATCH_TARGETS} single sync ops through HTTP, {BATCH_PARALLEL} clients"
        )),
        ratio: Some(batch_rate / singles_rate),
        target: "-",
        meets_target: None,
    });
}

/// The median of every `<phase>_us=<n>` field of the zerofoot::timing
/// lines the services logged past `starts` (byte offsets, one per log), in
/// milliseconds, in the order the phases were first seen.
fn timing_medians(logs: &[PathBuf], starts: &[u64]) -> Vec<(String, f64)> {
    use std::io::{Read, Seek};
    let mut phases: Vec<(String, Vec<f64>)> = Vec::new();
    for (log, start) in logs.iter().zip(starts) {
        let mut text = String::new();
        if let Ok(mut file) = std::fs::File::open(log) {
            let _ = file.seek(std::io::SeekFrom::Start(*start));
            let _ = file.read_to_string(&mut text);
        }
        for line in text.lines().filter(|l| l.contains("zerofoot::timing")) {
            for field in line.split_whitespace() {
                let Some((name, value)) = field.split_once("_us=") else {
                    continue;
                };
                let Ok(us) = value.parse::<f64>() else {
                    continue;
                };
                match phases.iter_mut().find(|(n, _)| n == name) {
                    Some((_, values)) => values.push(us / 1000.0),
                    None => phases.push((name.to_string(), vec![us / 1000.0])),
                }
            }
        }
    }
    phases
        .into_iter()
        .map(|(name, mut values)| {
            values.sort_by(f64::total_cmp);
            (name, percentile(&values, 50.0))
        })
        .collect()
}

/// Runs `program args` and returns how long it took; panics with its
/// output when it fails.
fn timed_command(program: &std::path::Path, args: &[String], envs: &[(&str, String)]) -> Duration {
    let t = Instant::now();
    let out = std::process::Command::new(program)
        .args(args)
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", program.display()));
    let took = t.elapsed();
    assert!(
        out.status.success(),
        "{} {args:?} failed: {}{}",
        program.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    took
}

/// `ssh host uname` with nothing of zerofoot's: the user key, the host's
/// known_hosts line, a handshake every time.
fn plain_ssh_uname(key: &std::path::Path, known: &std::path::Path, port: u16) -> Vec<String> {
    [
        "-F",
        "/dev/null",
        "-i",
        &key.display().to_string(),
        "-o",
        "IdentitiesOnly=yes",
        "-o",
        &format!("UserKnownHostsFile={}", known.display()),
        "-o",
        "BatchMode=yes",
        "-p",
        &port.to_string(),
        &format!("{}@127.0.0.1", zerofoot_tests::sshd::Sshd::user()),
        "uname",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// The stock `ssh` module: sequential `exec uname` against one host (after
/// the first, no handshake: the node keeps a master connection) next to a
/// plain `ssh host uname` with its handshake; and one command on a fleet
/// of sshd hosts through a batch next to `ansible -m command` (forks = the
/// fleet) over the same hosts and keys, each run cold (no connection yet)
/// and warm (Ansible's ControlPersist, zerofoot's masters).
async fn ssh_module(quick: bool, figures: &mut Vec<Figure>) {
    use zerofoot_tests::sshd::Sshd;
    let (sequential, hosts) = if quick { (30, 10) } else { (100, 50) };
    let ansible = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/ansible");
    assert!(
        ansible.exists(),
        "{} is missing: scripts/install-deps.sh installs ansible-core",
        ansible.display()
    );

    // One node, so every exec goes through the same node and its master.
    let cluster = Cluster::start(1).await;
    cluster.wait_module("ssh", "1.0.0").await;
    let sshd = Sshd::start(&cluster.shared().join("sshd-seq")).await;
    let (status, body) = cluster
        .put_json("/v1/resources/seq", &sshd.resource(json!({})))
        .await;
    assert_eq!(status, 201, "{body}");
    let request = json!({"module": "ssh", "operation": "exec", "resource": "seq",
                         "params": {"command": "uname"}});
    let mut samples = Vec::with_capacity(sequential);
    for _ in 0..=sequential {
        let t = Instant::now();
        let (status, ctx) = cluster.post_json("/v1/operations", &request).await;
        assert!(
            status == 200 && ctx["result"]["stdout"] == "Linux\n",
            "{ctx}"
        );
        samples.push(t.elapsed());
    }
    let first = samples.remove(0);
    let logins = sshd.logins();
    let key = sshd.dir.join("user_key");
    let known = sshd.dir.join("known_hosts");
    std::fs::write(
        &known,
        format!("[127.0.0.1]:{} {}\n", sshd.port, sshd.host_key),
    )
    .expect("known_hosts");
    let plain = plain_ssh_uname(&key, &known, sshd.port);
    let mut raw = Vec::new();
    for _ in 0..sequential.min(30) {
        raw.push(timed_command(
            std::path::Path::new("/usr/bin/ssh"),
            &plain,
            &[],
        ));
    }
    let (ms, raw_ms) = (sorted_ms(&samples), sorted_ms(&raw));
    let raw_p50 = percentile(&raw_ms, 50.0);
    for (p, what) in [(50.0, "p50"), (99.0, "p99")] {
        let value = percentile(&ms, p);
        figures.push(Figure {
            figure: format!(
                "ssh exec uname, {sequential} sequential, {what} (first: {:.0} ms)",
                first.as_secs_f64() * 1000.0
            ),
            value,
            unit: "ms",
            baseline: Some(raw_p50),
            baseline_what: Some("plain `ssh host uname` p50, handshake included".into()),
            ratio: Some(value / raw_p50),
            target: "no handshake after the first",
            meets_target: (p == 50.0).then_some(logins == 1),
        });
    }
    figures.push(Figure {
        figure: format!("sshd logins for {} execs from one node", sequential + 1),
        value: logins as f64,
        unit: "logins",
        baseline: None,
        baseline_what: None,
        ratio: None,
        target: "1",
        meets_target: Some(logins == 1),
    });
    drop(cluster);

    // The fleet: zerofoot's batch next to Ansible over the same hosts.
    let cluster = Cluster::start(3).await;
    cluster.wait_module("ssh", "1.0.0").await;
    let mut servers = Vec::new();
    let mut inventory = String::from("[fleet]\n");
    let mut known_hosts = String::new();
    for i in 0..hosts {
        let sshd = Sshd::start(&cluster.shared().join(format!("fleet-{i}"))).await;
        let (status, body) = cluster
            .put_json(
                &format!("/v1/resources/fleet-{i:02}"),
                &sshd.resource(json!({"fleet": "bench"})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        inventory.push_str(&format!(
            "fleet-{i:02} ansible_host=127.0.0.1 ansible_port={} ansible_user={} ansible_ssh_private_key_file={}\n",
            sshd.port,
            Sshd::user(),
            sshd.dir.join("user_key").display()
        ));
        known_hosts.push_str(&format!("[127.0.0.1]:{} {}\n", sshd.port, sshd.host_key));
        servers.push(sshd);
    }
    let work = cluster.shared().join("ansible");
    std::fs::create_dir_all(work.join("cp")).expect("ansible dir");
    std::fs::write(work.join("inventory"), inventory).expect("inventory");
    std::fs::write(work.join("known_hosts"), known_hosts).expect("known_hosts");
    let envs = [
        ("ANSIBLE_SSH_CONTROL_PATH_DIR", work.join("cp").display().to_string()),
        ("ANSIBLE_LOCAL_TEMP", work.join("tmp").display().to_string()),
        ("ANSIBLE_PYTHON_INTERPRETER", "/usr/bin/python3".to_string()),
        (
            "ANSIBLE_SSH_ARGS",
            format!(
                "-F /dev/null -o ControlMaster=auto -o ControlPersist=60s -o UserKnownHostsFile={} -o IdentitiesOnly=yes",
                work.join("known_hosts").display()
            ),
        ),
        ("ANSIBLE_HOST_KEY_CHECKING", "True".to_string()),
    ];
    let ansible_args: Vec<String> = [
        "fleet",
        "-i",
        &work.join("inventory").display().to_string(),
        "-m",
        "command",
        "-a",
        "uname",
        "-f",
        &hosts.to_string(),
        "-o",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let ansible_cold = timed_command(&ansible, &ansible_args, &envs);
    let ansible_warm = timed_command(&ansible, &ansible_args, &envs);

    let batch = |round: usize| {
        let cluster = &cluster;
        async move {
            let t = Instant::now();
            let (status, batch) = cluster
                .post_json(
                    "/v1/operations",
                    &json!({"module": "ssh", "operation": "exec",
                            "targets": {"selector": "fleet=bench"}, "max_parallel": hosts,
                            "params": {"command": "uname"}}),
                )
                .await;
            assert_eq!(status, 202, "batch {round}: {batch}");
            let id = batch["id"].as_str().expect("batch id").to_string();
            let view = cluster.operation_end(&id, Duration::from_secs(300)).await;
            let took = t.elapsed();
            assert_eq!(view["state"], "complete", "ssh batch {round}: {view}");
            took
        }
    };
    let zerofoot_cold = batch(1).await;
    let zerofoot_warm = batch(2).await;
    // The floor of a cold round on this machine: a plain `ssh host uname`
    // to every host at once, each paying its key exchange on both ends
    // (client and sshd share these cores).
    let handshakes = {
        let t = Instant::now();
        let children: Vec<_> = servers
            .iter()
            .map(|sshd| {
                std::process::Command::new("/usr/bin/ssh")
                    .args(plain_ssh_uname(
                        &sshd.dir.join("user_key"),
                        &work.join("known_hosts"),
                        sshd.port,
                    ))
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::piped())
                    .spawn()
                    .expect("spawn ssh")
            })
            .collect();
        for child in children {
            let out = child.wait_with_output().expect("wait for ssh");
            assert!(
                out.status.success(),
                "plain ssh failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        t.elapsed()
    };
    let floor = hosts as f64 / handshakes.as_secs_f64();
    let cold_rate = hosts as f64 / zerofoot_cold.as_secs_f64();
    figures.push(Figure {
        figure: format!("`uname` on {hosts} sshd hosts, cold, next to the handshakes alone"),
        value: cold_rate,
        unit: "hosts/s",
        baseline: Some(floor),
        baseline_what: Some(format!(
            "{hosts} plain `ssh host uname` at once, handshake included"
        )),
        ratio: Some(cold_rate / floor),
        target: "-",
        meets_target: None,
    });
    for (what, ours, theirs) in [
        ("cold", zerofoot_cold, ansible_cold),
        ("warm", zerofoot_warm, ansible_warm),
    ] {
        let rate = hosts as f64 / ours.as_secs_f64();
        let baseline = hosts as f64 / theirs.as_secs_f64();
        figures.push(Figure {
            figure: format!("`uname` on {hosts} sshd hosts, {what}: batch (max_parallel {hosts})"),
            value: rate,
            unit: "hosts/s",
            baseline: Some(baseline),
            baseline_what: Some(format!(
                "ansible -m command, forks={hosts}, same hosts and keys"
            )),
            ratio: Some(rate / baseline),
            target: ">= 5x Ansible",
            meets_target: Some(rate / baseline >= 5.0),
        });
    }
    drop(servers);
}

/// Incompressible bytes without a random-number crate.
fn noise(len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

async fn module_transfer(figures: &mut Vec<Figure>) {
    let mut cluster = Cluster::start(0).await;
    let payload = noise(10 * 1024 * 1024);
    let dir = tempfile::tempdir().expect("tempdir");
    write_module(
        dir.path(),
        "big",
        "1.0.0",
        json!({"go": {"kind": "sync"}}),
        DRIVER,
    );
    std::fs::write(dir.path().join("payload.bin"), &payload).expect("payload");
    let big = zerofoot_shared::bundle::pack_dir(dir.path()).expect("pack");

    let client = cluster.nats.client().await;
    let js = async_nats::jetstream::new(client);
    let raw = js
        .create_object_store(async_nats::jetstream::object_store::Config {
            bucket: "bench_raw".into(),
            ..Default::default()
        })
        .await
        .expect("raw object store");
    let t = Instant::now();
    raw.put("raw", &mut big.as_slice()).await.expect("raw put");
    let mut object = raw.get("raw").await.expect("raw get");
    let mut back = Vec::new();
    object.read_to_end(&mut back).await.expect("raw read");
    let raw_time = t.elapsed();
    assert_eq!(back.len(), big.len());

    let t = Instant::now();
    cluster.publish(big.clone()).await;
    let upload = t.elapsed();
    cluster.add_node(&Default::default());
    cluster.wait_nodes_up(1).await;
    cluster.wait_module("big", "1.0.0").await;
    let t2 = Instant::now();
    let (status, ctx) = cluster
        .post_json(
            "/v1/operations",
            &json!({"module": "big", "operation": "go"}),
        )
        .await;
    assert_eq!(
        (status, ctx["state"].as_str()),
        (200, Some("complete")),
        "{ctx}"
    );
    let first_op = t2.elapsed();
    let total = (upload + first_op).as_secs_f64() * 1000.0;
    let raw_ms = raw_time.as_secs_f64() * 1000.0;
    figures.push(Figure {
        figure: format!(
            "10 MiB module: upload ({:.0} ms) + first operation on a fresh node ({:.0} ms)",
            upload.as_secs_f64() * 1000.0,
            first_op.as_secs_f64() * 1000.0
        ),
        value: total,
        unit: "ms",
        baseline: Some(raw_ms),
        baseline_what: Some("raw object-store put + get of the same bytes".into()),
        ratio: Some(total / raw_ms),
        target: "-",
        meets_target: None,
    });
}

/// Writes `count` keyed events as fast as the shell can, a checkpoint every 1000.
const FIREHOSE: &str = r#"#!/bin/sh
# sed, not jq: jq 1.6 spends about 40 ms of CPU starting, which for 100
# monitors at once would be most of what the figure measures.
count=$(sed -n 's/.*"count":\([0-9]*\).*/\1/p')
awk -v count="$count" 'BEGIN {
  for (n = 1; n <= count; n++) {
    printf "{\"type\":\"event\",\"key\":\"%d\",\"data\":{\"n\":%d}}\n", n, n
    if (n % 1000 == 0) printf "{\"type\":\"checkpoint\",\"data\":{\"n\":%d}}\n", n
  }
}'
"#;

/// A keyed event every 20 ms, for ever, each followed by its checkpoint:
/// a resumed ticker has nothing to replay, so the failover figure measures
/// zerofoot and not the pace at which a driver re-emits events it had not
/// checkpointed (20 ms each here; the keyed exactly-once tests cover replay).
/// It reads its checkpoint with sed, not jq: jq takes about 40 ms to start
/// on the development VM, and five of them at once on two cores would be
/// most of what the figure measures.
const TICKER: &str = r#"#!/bin/sh
n=$(sed -n 's/.*"checkpoint":{"n":\([0-9]*\)}.*/\1/p')
n=${n:-0}
while :; do
  n=$((n + 1))
  echo "{\"type\":\"event\",\"key\":\"$n\",\"data\":{\"n\":$n}}"
  echo "{\"type\":\"checkpoint\",\"data\":{\"n\":$n}}"
  sleep 0.02
done
"#;

/// Holds a monitor open doing nothing; a blank line now and then ends it
/// (SIGPIPE) once its node is gone.
const IDLE: &str = "#!/bin/sh\ncat >/dev/null\nwhile :; do sleep 2; echo; done\n";

async fn wait_state(cluster: &Cluster, op: &str, state: &str, within: Duration) {
    let path = format!("/v1/operations/{op}");
    zerofoot_tests::wait_until(&format!("{op} {state}"), within, || async {
        let (_, ctx) = cluster.get(&path).await;
        if ctx["state"] == state {
            Ok(())
        } else {
            Err(ctx.to_string())
        }
    })
    .await;
}

async fn event_throughput(sizes: &Sizes, figures: &mut Vec<Figure>) {
    let cluster = Cluster::start(1).await;
    cluster
        .publish(bundle(
            "firehose",
            "1.0.0",
            json!({"pour": {"kind": "async"}}),
            FIREHOSE,
        ))
        .await;
    cluster.wait_module("firehose", "1.0.0").await;
    let count = sizes.stream_events;

    // Raw: event-sized messages published to JetStream with acks
    // pipelined, by one client; each is synced to disk, so 20 000 of them
    // (a few seconds) give the rate.
    let client = cluster.nats.client().await;
    let js = async_nats::jetstream::new(client);
    js.get_or_create_stream(async_nats::jetstream::stream::Config {
        name: "BENCH_RAW".into(),
        subjects: vec!["bench.raw".into()],
        ..Default::default()
    })
    .await
    .expect("raw stream");
    let payload = bytes::Bytes::from(
        r#"{"v":1,"op":"00000000-0000-0000-0000-000000000000","seq":1,"key":"1","data":{"n":1},"node":"node-x","epoch":1,"at":"2026-01-01T00:00:00Z"}"#,
    );
    let raw_count = count.min(20_000);
    let t = Instant::now();
    let mut acks = Vec::with_capacity(1024);
    for _ in 0..raw_count {
        acks.push(
            js.publish("bench.raw", payload.clone())
                .await
                .expect("publish"),
        );
        if acks.len() == 1024 {
            for ack in acks.drain(..) {
                ack.await.expect("ack");
            }
        }
    }
    for ack in acks.drain(..) {
        ack.await.expect("ack");
    }
    let raw_rate = raw_count as f64 / t.elapsed().as_secs_f64();

    let t = Instant::now();
    let (status, ctx) = cluster
        .post_json(
            "/v1/operations",
            &json!({"module": "firehose", "operation": "pour", "params": {"count": count}}),
        )
        .await;
    assert_eq!(status, 202, "{ctx}");
    let op = ctx["id"].as_str().expect("id").to_string();
    wait_state(&cluster, &op, "complete", Duration::from_secs(300)).await;
    let path = format!("/v1/operations/{op}/events?after={}&limit=1", count - 1);
    let (_, last) = cluster.get(&path).await;
    assert_eq!(
        last["events"][0]["seq"], count,
        "every event reached management"
    );
    let one_monitor_rate = count as f64 / t.elapsed().as_secs_f64();

    // Events from 100 monitors at once.
    let monitors = 100;
    let many = sizes.many_monitor_events;
    let t = Instant::now();
    let mut ops = Vec::new();
    for _ in 0..monitors {
        let (status, ctx) = cluster
            .post_json("/v1/operations", &json!({"module": "firehose", "operation": "pour", "params": {"count": many / monitors as u64}}))
            .await;
        assert_eq!(status, 202, "{ctx}");
        ops.push(ctx["id"].as_str().expect("id").to_string());
    }
    for op in &ops {
        wait_state(&cluster, op, "complete", Duration::from_secs(300)).await;
    }
    let many_rate = many as f64 / t.elapsed().as_secs_f64();
    let each = many / monitors as u64;
    for op in &ops {
        let (_, last) = cluster
            .get(&format!(
                "/v1/operations/{op}/events?after={}&limit=1",
                each - 1
            ))
            .await;
        assert_eq!(
            last["events"][0]["seq"], each,
            "every event of {op} reached management"
        );
    }
    figures.push(Figure {
        figure: format!(
            "events from {monitors} monitors at once to management ({each} keyed events each, from the first submission to the last monitor complete)"
        ),
        value: many_rate,
        unit: "events/s",
        baseline: Some(raw_rate),
        baseline_what: Some("raw JetStream publish, one message per event, acks pipelined".into()),
        ratio: Some(many_rate / raw_rate),
        target: ">= 200000 events/s",
        meets_target: Some(many_rate >= 200_000.0),
    });
    let rate = one_monitor_rate;
    figures.push(Figure {
        figure: format!("events from one monitor to management ({count} keyed events)"),
        value: rate,
        unit: "events/s",
        baseline: Some(raw_rate),
        baseline_what: Some("raw JetStream publish, one message per event, acks pipelined".into()),
        ratio: Some(rate / raw_rate),
        target: ">= 20000 events/s",
        meets_target: Some(rate >= 20_000.0),
    });
}

/// SIGKILLs the lead again and again; for each kill, the time until the first
/// event of the new epoch of every monitor reached management (SSE).
async fn failover(sizes: &Sizes, figures: &mut Vec<Figure>, label: &str, flags: &[&str]) {
    use futures::StreamExt;
    let mut cluster = Cluster::start(0).await;
    let flags = zerofoot_tests::NodeFlags(flags.iter().map(|f| f.to_string()).collect());
    for _ in 0..3 {
        cluster.add_node(&flags);
    }
    cluster.wait_nodes_up(3).await;
    cluster
        .publish(bundle(
            "ticker",
            "1.0.0",
            json!({"tick": {"kind": "async"}}),
            TICKER,
        ))
        .await;
    cluster.wait_module("ticker", "1.0.0").await;
    let monitors = 5;
    let (epochs_tx, mut epochs_rx) =
        tokio::sync::mpsc::unbounded_channel::<(usize, u64, Instant)>();
    let mut ops = Vec::new();
    for m in 0..monitors {
        let (status, ctx) = cluster
            .post_json(
                "/v1/operations",
                &json!({"module": "ticker", "operation": "tick"}),
            )
            .await;
        assert_eq!(status, 202, "{ctx}");
        let op = ctx["id"].as_str().expect("id").to_string();
        let response = cluster
            .http
            .get(cluster.url(&format!("/v1/operations/{op}/events")))
            .header("accept", "text/event-stream")
            .timeout(Duration::from_secs(3600))
            .send()
            .await
            .expect("SSE");
        let tx = epochs_tx.clone();
        tokio::spawn(async move {
            let mut body = response.bytes_stream();
            let mut buffer = String::new();
            let mut epoch = 0;
            while let Some(Ok(chunk)) = body.next().await {
                buffer.push_str(&String::from_utf8_lossy(&chunk));
                while let Some(end) = buffer.find("\n\n") {
                    let frame: String = buffer.drain(..end + 2).collect();
                    let Some(data) = frame.lines().find_map(|l| l.strip_prefix("data:")) else {
                        continue;
                    };
                    let Ok(event) = serde_json::from_str::<serde_json::Value>(data.trim()) else {
                        continue;
                    };
                    let e = event["epoch"].as_u64().unwrap_or(0);
                    if e > epoch {
                        epoch = e;
                        let _ = tx.send((m, e, Instant::now()));
                    }
                }
            }
        });
        ops.push(op);
    }
    let mut samples = Vec::new();
    let mut term = 0;
    // Every monitor running under the first lead.
    let mut seen = std::collections::HashMap::new();
    while seen.len() < monitors {
        let (m, e, _) = epochs_rx.recv().await.expect("monitor events");
        seen.insert(m, e);
        term = term.max(e);
    }
    for _ in 0..sizes.failover_kills {
        let (_, view) = cluster.get("/v1/cluster").await;
        let lead = view["lead"]["node"].as_str().expect("a lead").to_string();
        let victim = cluster.node_index(&lead);
        let killed_at = Instant::now();
        cluster.nodes[victim].kill();
        let mut resumed = std::collections::HashMap::new();
        while resumed.len() < monitors {
            let (m, e, at) = tokio::time::timeout(Duration::from_secs(60), epochs_rx.recv())
                .await
                .expect("monitors resumed within 60 s")
                .expect("monitor events");
            if e > term {
                resumed.entry(m).or_insert(at);
            }
        }
        term = cluster.get("/v1/cluster").await.1["lead"]["term"]
            .as_u64()
            .unwrap_or(term + 1)
            .max(term + 1);
        for at in resumed.values() {
            samples.push(at.duration_since(killed_at));
        }
        cluster.nodes[victim].start();
        cluster.wait_nodes_up(3).await;
    }
    let ms = sorted_ms(&samples);
    let (p50, p99, max) = (
        percentile(&ms, 50.0),
        percentile(&ms, 99.0),
        ms.last().copied().unwrap_or(f64::NAN),
    );
    let (target, meets) = if label == "defaults" {
        ("p50 <= 100 ms, p99 <= 200 ms", p50 <= 100.0 && p99 <= 200.0)
    } else {
        ("p99 <= 350 ms", p99 <= 350.0)
    };
    figures.push(Figure {
        figure: format!(
            "failover, {label}: lead SIGKILL to first new event of each of {monitors} monitors, {} kills, p99 (max {max:.0} ms)",
            sizes.failover_kills
        ),
        value: p99,
        unit: "ms",
        baseline: Some(p50),
        baseline_what: Some("p50 of the same run".into()),
        ratio: None,
        target,
        meets_target: Some(meets),
    });
    for op in ops {
        let _ = cluster
            .http
            .delete(cluster.url(&format!("/v1/operations/{op}")))
            .send()
            .await;
    }
}

/// Resets the lead's NATS connection again and again (each node reaches
/// NATS through a proxy of its own, which closes what it carries, as a
/// flapping network path does; the lead reconnects at once) and counts the
/// elections that follow. A lead that writes its claim again within the
/// reconnect grace keeps its term.
async fn lead_flaps(sizes: &Sizes, figures: &mut Vec<Figure>) {
    let mut cluster = Cluster::start(0).await;
    let mut links = Vec::new();
    for _ in 0..3 {
        links.push(
            cluster
                .add_node_behind_proxy(&zerofoot_tests::NodeFlags::default())
                .await,
        );
    }
    cluster.wait_nodes_up(3).await;
    let first = zerofoot_tests::wait_until("a lead", Duration::from_secs(30), || async {
        let (_, view) = cluster.get("/v1/cluster").await;
        view["lead"]["term"].as_u64().ok_or(view.to_string())
    })
    .await;
    let every = Duration::from_secs(1);
    let started = Instant::now();
    let mut rewrites = Vec::new();
    for _ in 0..sizes.flaps {
        let claim = cluster.lead_claim().await;
        let (Some(lead), Some(cid)) = (
            claim["node"].as_str(),
            claim["connection"]["client"].as_u64(),
        ) else {
            panic!("the lead claim names no node or connection: {claim}");
        };
        let kicked = Instant::now();
        links[cluster.node_index(lead)].cut();
        zerofoot_tests::wait_until(
            "the lead claim written again or taken over",
            Duration::from_secs(30),
            || async {
                let now = cluster.lead_claim().await;
                if now["connection"]["client"].as_u64() != Some(cid) || now["term"] != claim["term"]
                {
                    Ok(())
                } else {
                    Err(now.to_string())
                }
            },
        )
        .await;
        rewrites.push(kicked.elapsed());
        // The pace of the flaps, not a synchronisation.
        tokio::time::sleep(every).await;
    }
    let hours = started.elapsed().as_secs_f64() / 3600.0;
    let last = cluster.lead_claim().await["term"].as_u64().unwrap_or(first);
    let elections = last.saturating_sub(first) as f64;
    figures.push(Figure {
        figure: format!(
            "lead connection reset every {} s ({} times, defaults): elections per hour ({elections} elections)",
            every.as_secs(),
            sizes.flaps
        ),
        value: elections / hours,
        unit: "elections/h",
        baseline: Some(sizes.flaps as f64 / hours),
        baseline_what: Some("connection resets per hour".into()),
        ratio: Some(elections / sizes.flaps as f64),
        target: "no election",
        meets_target: Some(elections == 0.0),
    });
    let ms = sorted_ms(&rewrites);
    figures.push(Figure {
        figure: format!(
            "lead connection reset: claim written again (or taken over) as the harness polls it, p99 of {} (max {:.0} ms)",
            sizes.flaps,
            ms.last().copied().unwrap_or(f64::NAN)
        ),
        value: percentile(&ms, 99.0),
        unit: "ms",
        baseline: Some(percentile(&ms, 50.0)),
        baseline_what: Some("p50 of the same run".into()),
        ratio: None,
        target: "-",
        meets_target: None,
    });
}

fn rss_kib(pid: nix::unistd::Pid) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Holds a monitor open doing nothing, without waking: at ten thousand
/// monitors a driver that woke to print would be most of what the machine
/// does. It ends with its shim when its node goes.
const HOLD: &str = "#!/bin/sh\ncat >/dev/null\nexec sleep 2147483647\n";

/// Zones of the scale scenario, two nodes each.
const SCALE_ZONES: usize = 5;

/// `sizes.monitors` monitors across ten nodes in five zones of two (each
/// zone's monitors on its lead): the nodes' memory per monitor, drivers
/// excluded, and whether every zone kept its lead while they started. Each
/// monitor is two processes (the shim, which is its PID namespace's init,
/// and the driver), which with the nodes' threads and everything else on the
/// machine can pass a `kernel.pid_max` of 32768, which `scripts/bench.sh`
/// raises where it may.
async fn many_monitors(sizes: &Sizes, figures: &mut Vec<Figure>) {
    use futures::StreamExt;
    let monitors = sizes.monitors;
    let pid_max: usize = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(
        pid_max >= 3 * monitors + 5_000,
        "{monitors} monitors need about {} process ids and kernel.pid_max is {pid_max}: raise it (sysctl kernel.pid_max=4194304) or run --quick",
        3 * monitors + 5_000
    );
    let mut cluster = Cluster::bare().await;
    cluster.start_repository();
    let limit = (monitors + 100).to_string();
    cluster.start_management_with(&[("ZF_MAX_OPERATIONS_PER_CLIENT", &limit)]);
    let per_lead = monitors.div_ceil(SCALE_ZONES) + 16;
    for zone in 0..SCALE_ZONES {
        for rack in 0..2 {
            let mut flags = zerofoot_tests::zone_node(&format!("z{zone}"), rack, (200, 1000));
            flags
                .0
                .extend(["--max-drivers".to_string(), per_lead.to_string()]);
            cluster.add_node(&flags);
        }
    }
    cluster.wait_healthy().await;
    for zone in 0..SCALE_ZONES {
        let (status, body) = cluster
            .put_json(
                &format!("/v1/resources/scale-z{zone}"),
                &json!({"kind": "host", "zone": format!("z{zone}"), "config": {}}),
            )
            .await;
        assert!(
            status == 200 || status == 201,
            "resource scale-z{zone}: {status} {body}"
        );
    }
    cluster
        .publish(bundle(
            "hold",
            "1.0.0",
            json!({"hold": {"kind": "async"}}),
            HOLD,
        ))
        .await;
    cluster.wait_module("hold", "1.0.0").await;
    let request = |n: usize| json!({"module": "hold", "operation": "hold", "resource": format!("scale-z{}", n % SCALE_ZONES)});
    // One monitor per zone first, cancelled, so every lead has the bundle
    // cached and has run a driver: then measure from idle nodes.
    for zone in 0..SCALE_ZONES {
        let (status, ctx) = cluster.post_json("/v1/operations", &request(zone)).await;
        assert_eq!(status, 202, "{ctx}");
        let warm = ctx["id"].as_str().expect("id").to_string();
        wait_state(&cluster, &warm, "running", Duration::from_secs(30)).await;
        cluster.delete(&format!("/v1/operations/{warm}")).await;
        wait_state(&cluster, &warm, "cancelled", Duration::from_secs(30)).await;
    }
    let leads_before = cluster.zone_leads(SCALE_ZONES).await;
    let pids: Vec<_> = cluster.nodes.iter().map(|n| n.pid()).collect();
    let rss = |pids: &[nix::unistd::Pid]| pids.iter().map(|p| rss_kib(*p)).collect::<Vec<u64>>();
    let before = rss(&pids);

    let t = Instant::now();
    let submitted: Vec<(u16, serde_json::Value)> = futures::stream::iter(0..monitors)
        .map(|n| {
            let cluster = &cluster;
            let body = request(n);
            async move { cluster.post_json("/v1/operations", &body).await }
        })
        .buffer_unordered(16)
        .collect()
        .await;
    for (status, ctx) in &submitted {
        assert_eq!(*status, 202, "{ctx}");
    }
    let want = monitors as u64;
    zerofoot_tests::wait_until(
        &format!("{want} monitors running across the nodes"),
        Duration::from_secs(900),
        || async {
            let (_, view) = cluster.get("/v1/cluster").await;
            let running: u64 = view["nodes"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|n| n["running"].as_u64())
                .sum();
            if running >= want {
                Ok(())
            } else {
                Err(format!("{running} running"))
            }
        },
    )
    .await;
    let started = t.elapsed();
    let after = rss(&pids);
    let leads_after = cluster.zone_leads(SCALE_ZONES).await;
    let grown: u64 = after
        .iter()
        .zip(&before)
        .map(|(a, b)| a.saturating_sub(*b))
        .sum();
    let per_monitor = grown as f64 / monitors as f64;
    // The most any one node grew, over the monitors its zone holds.
    let lead_per_monitor = after
        .iter()
        .zip(&before)
        .map(|(a, b)| a.saturating_sub(*b) as f64)
        .fold(0.0, f64::max)
        / (monitors as f64 / SCALE_ZONES as f64);
    let kept_leads = leads_before == leads_after;
    figures.push(Figure {
        figure: format!(
            "{monitors} monitors across 10 nodes in {SCALE_ZONES} zones: all running after {:.0} s, nodes' RSS {:.0} -> {:.0} MiB in all, the busiest lead {lead_per_monitor:.1} KiB per monitor, every zone kept its lead: {kept_leads}; node memory per monitor (drivers excluded)",
            started.as_secs_f64(),
            before.iter().sum::<u64>() as f64 / 1024.0,
            after.iter().sum::<u64>() as f64 / 1024.0,
        ),
        value: per_monitor,
        unit: "KiB",
        baseline: None,
        baseline_what: None,
        ratio: None,
        target: "10000 monitors, <= 128 KiB each, no lead lost",
        // A run of fewer monitors (--quick) cannot show the target.
        meets_target: (monitors >= 10_000)
            .then_some(per_monitor <= 128.0 && lead_per_monitor <= 128.0 && kept_leads),
    });
}

/// One operation's log of `events` events (batches of 1000, appended with
/// plain JetStream publishes, as an owner's batches look), then a page of
/// the last 1000 read through the API again and again: its latency next to
/// a raw direct get of the log's last message, and management's memory
/// around it. A page's start is found with a few direct gets and read from
/// there, so neither should grow with the log.
async fn large_log(quick: bool, figures: &mut Vec<Figure>) {
    let events: u64 = if quick { 100_000 } else { 1_000_000 };
    let (batch, requests) = (1000u64, 50usize);
    let cluster = Cluster::start(0).await;
    cluster
        .publish(bundle(
            "idle",
            "1.0.0",
            json!({"hold": {"kind": "async"}}),
            IDLE,
        ))
        .await;
    cluster.wait_module("idle", "1.0.0").await;
    // No node: the context stays pending and nobody else writes the log.
    let (status, ctx) = cluster
        .post_json(
            "/v1/operations",
            &json!({"module": "idle", "operation": "hold"}),
        )
        .await;
    assert_eq!(status, 202, "{ctx}");
    let op = ctx["id"].as_str().expect("id").to_string();
    let subject = format!("zf.{}.evt.{op}", cluster.cluster);
    let js = async_nats::jetstream::new(cluster.nats.client().await);
    let t = Instant::now();
    let mut acks = Vec::with_capacity(64);
    for first in (1..=events).step_by(batch as usize) {
        let batch: Vec<serde_json::Value> = (first..first + batch)
            .map(|seq| {
                json!({"v": 1, "op": op, "seq": seq, "key": seq.to_string(), "data": {"n": seq},
                       "node": "node-bench", "epoch": 1, "at": "2026-01-01T00:00:00Z"})
            })
            .collect();
        let entry = json!({"kind": "events", "v": 1, "events": batch});
        acks.push(
            js.publish(subject.clone(), entry.to_string().into())
                .await
                .expect("publish a batch"),
        );
        if acks.len() == 64 {
            for ack in acks.drain(..) {
                ack.await.expect("ack");
            }
        }
    }
    for ack in acks.drain(..) {
        ack.await.expect("ack");
    }
    let written = t.elapsed();

    let stream = js
        .get_stream(format!("ZF_{}_EVENTS", cluster.cluster.to_uppercase()))
        .await
        .expect("events stream");
    let mut raw = Vec::new();
    for _ in 0..requests {
        let t = Instant::now();
        let last = stream
            .direct_get_last_for_subject(subject.as_str())
            .await
            .expect("raw direct get");
        raw.push(t.elapsed());
        assert!(!last.payload.is_empty());
    }

    let pid = cluster.management[0].process.pid();
    let before = rss_kib(pid);
    // The last 1000 (a poller or a resume near the end) and 1000 from the
    // middle, straddling two batches (the search's general case).
    let places = [
        ("the last", events - batch),
        ("the middle", events / 2 + batch / 2),
    ];
    for (place, after) in places {
        let url = cluster.url(&format!(
            "/v1/operations/{op}/events?after={after}&limit={batch}"
        ));
        let mut pages = Vec::new();
        for _ in 0..requests {
            let t = Instant::now();
            let response = cluster.http.get(&url).send().await.expect("GET a page");
            let status = response.status();
            let body = response.bytes().await.expect("page body");
            pages.push(t.elapsed());
            let page: serde_json::Value = serde_json::from_slice(&body).expect("page JSON");
            assert_eq!(status, 200, "{page}");
            let seqs: Vec<u64> = page["events"]
                .as_array()
                .expect("events")
                .iter()
                .filter_map(|e| e["seq"].as_u64())
                .collect();
            assert_eq!(seqs, (after + 1..=after + batch).collect::<Vec<u64>>());
        }
        let (raw_ms, page_ms) = (sorted_ms(&raw), sorted_ms(&pages));
        for (label, p) in [("p50", 50.0), ("p99", 99.0)] {
            let (value, baseline) = (percentile(&page_ms, p), percentile(&raw_ms, p));
            figures.push(Figure {
                figure: format!(
                    "page of {batch} events from {place} of a {events}-event log (written in {:.1} s), {requests} GETs, {label}",
                    written.as_secs_f64()
                ),
                value,
                unit: "ms",
                baseline: Some(baseline),
                baseline_what: Some(format!("raw direct get of the log's last message, {label}")),
                ratio: Some(value / baseline),
                target: "-",
                meets_target: None,
            });
        }
    }
    let rss_after = rss_kib(pid);
    figures.push(Figure {
        figure: format!(
            "management RSS around {} pages of a {events}-event log: {:.1} MiB before",
            2 * requests,
            before as f64 / 1024.0
        ),
        value: rss_after as f64 / 1024.0,
        unit: "MiB",
        baseline: Some(before as f64 / 1024.0),
        baseline_what: Some("RSS before the first page".into()),
        ratio: Some(rss_after as f64 / before.max(1) as f64),
        target: "-",
        meets_target: None,
    });
}

/// CPU time (user + system) a process has used, in clock ticks.
fn cpu_ticks(pid: nix::unistd::Pid) -> u64 {
    cpu_ticks_and_children(pid).0
}

/// CPU ticks (1/100 s) of `pid` itself, and of its children it has reaped
/// (for a node's spawner: the shims and drivers it ran).
fn cpu_ticks_and_children(pid: nix::unistd::Pid) -> (u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which ends with the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line, cutime and
    // cstime 16 and 17.
    let field = |i: usize| {
        fields
            .get(i - 3)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (field(14) + field(15), field(16) + field(17))
}

/// A node's driver spawner (its child `zf-driver-shim --serve`), and the
/// CPU ticks it has used with the shims and drivers it has reaped.
fn spawner_ticks(node: nix::unistd::Pid) -> Option<(i32, u64)> {
    let spawner = zerofoot_tests::child_with_arg(node.as_raw(), "--serve")?;
    let (own, children) = cpu_ticks_and_children(nix::unistd::Pid::from_raw(spawner));
    Some((spawner, own + children))
}

/// The nodes' CPU use while nothing is submitted, in % of one core.
async fn idle_node_cpu(cluster: &Cluster, window: Duration) -> f64 {
    let pids: Vec<_> = cluster.nodes.iter().map(|n| n.pid()).collect();
    let ticks = || pids.iter().map(|p| cpu_ticks(*p)).sum::<u64>();
    let (before, t) = (ticks(), Instant::now());
    tokio::time::sleep(window).await;
    let used = ticks().saturating_sub(before);
    // /proc counts in USER_HZ, which Linux fixes at 100 for user space.
    const TICKS_PER_SECOND: f64 = 100.0;
    100.0 * used as f64 / TICKS_PER_SECOND / t.elapsed().as_secs_f64()
}

/// p50 of `count` sync operations through HTTP, in ms.
async fn sync_p50(cluster: &Cluster, request: &serde_json::Value, count: usize) -> f64 {
    let mut samples = Vec::with_capacity(count);
    for _ in 0..count {
        let t = Instant::now();
        let (status, ctx) = cluster.post_json("/v1/operations", request).await;
        assert_eq!(
            (status, ctx["state"].as_str()),
            (200, Some("complete")),
            "{ctx}"
        );
        samples.push(t.elapsed());
    }
    percentile(&sorted_ms(&samples), 50.0)
}

/// p50 of what a sync operation costs the contexts bucket alone: a create
/// and two compare-and-set updates of a context, in ms.
async fn raw_context_writes_p50(
    bucket: &async_nats::jetstream::kv::Store,
    template: &zerofoot_shared::protocol::ExecutionContext,
    count: usize,
) -> f64 {
    let mut samples = Vec::with_capacity(count);
    for _ in 0..count {
        let mut ctx = template.clone();
        ctx.id = uuid::Uuid::new_v4();
        let key = ctx.id.to_string();
        let value: bytes::Bytes = serde_json::to_vec(&ctx).expect("json").into();
        let t = Instant::now();
        let mut revision = bucket.create(&key, value.clone()).await.expect("create");
        for _ in 0..2 {
            revision = bucket
                .update(&key, value.clone(), revision)
                .await
                .expect("update");
        }
        samples.push(t.elapsed());
    }
    percentile(&sorted_ms(&samples), 50.0)
}

/// Idle node CPU and sync latency with an empty contexts table, then again
/// once `finished` finished contexts sit in it (written straight into the
/// bucket, as a busy week leaves them) and every node's mirror holds them:
/// the sweeper and scheduler walk the unfinished index, so neither should
/// grow with history.
async fn many_finished(quick: bool, figures: &mut Vec<Figure>) {
    let finished: usize = if quick { 20_000 } else { 100_000 };
    let (window, samples) = if quick {
        (Duration::from_secs(10), 100)
    } else {
        (Duration::from_secs(20), 500)
    };
    let cluster = bench_cluster().await;
    let request = json!({"module": "bench", "operation": "go"});
    for _ in 0..10 {
        cluster.post_json("/v1/operations", &request).await;
    }
    let (_, list) = cluster.get("/v1/operations?limit=1").await;
    let template: zerofoot_shared::protocol::ExecutionContext =
        serde_json::from_value(list["operations"][0].clone()).expect("a finished context");
    let client = cluster.nats.client().await;
    let js = async_nats::jetstream::new(client.clone());
    let bucket = format!("zf_{}_contexts", cluster.cluster);
    let contexts = js.get_key_value(&bucket).await.expect("contexts bucket");

    let empty_cpu = idle_node_cpu(&cluster, window).await;
    let empty_p50 = sync_p50(&cluster, &request, samples).await;
    let empty_raw = raw_context_writes_p50(&contexts, &template, samples).await;
    let t = Instant::now();
    let mut acks = Vec::with_capacity(256);
    let mut last_revision = 0;
    for _ in 0..finished {
        let mut ctx = template.clone();
        ctx.id = uuid::Uuid::new_v4();
        let subject = format!("$KV.{bucket}.{}", ctx.id);
        acks.push(
            js.publish(subject, serde_json::to_vec(&ctx).expect("json").into())
                .await
                .expect("publish a context"),
        );
        if acks.len() == 256 {
            for ack in acks.drain(..) {
                last_revision = ack.await.expect("ack").sequence;
            }
        }
    }
    for ack in acks.drain(..) {
        last_revision = ack.await.expect("ack").sequence;
    }
    let written = t.elapsed();
    for i in 0..cluster.nodes.len() {
        let subject = format!("zf.{}.node.{}.mirror", cluster.cluster, cluster.node_id(i));
        zerofoot_tests::wait_until(
            &format!("node {i}'s mirror to hold the {finished} finished contexts"),
            Duration::from_secs(600),
            || {
                let (client, subject) = (client.clone(), subject.clone());
                async move {
                    let msg = client
                        .request(subject, r#"{"only_revisions":true}"#.into())
                        .await
                        .map_err(|e| e.to_string())?;
                    let reply: serde_json::Value =
                        serde_json::from_slice(&msg.payload).map_err(|e| e.to_string())?;
                    let applied = reply["ok"]["contexts_revision"].as_u64().unwrap_or(0);
                    if applied >= last_revision {
                        Ok(())
                    } else {
                        Err(format!("at revision {applied} of {last_revision}"))
                    }
                }
            },
        )
        .await;
    }
    let mirrored = t.elapsed();
    let full_cpu = idle_node_cpu(&cluster, window).await;
    let full_p50 = sync_p50(&cluster, &request, samples).await;
    let full_raw = raw_context_writes_p50(&contexts, &template, samples).await;
    figures.push(Figure {
        figure: format!(
            "idle CPU of 3 nodes with {finished} finished contexts (written in {:.1} s, in every mirror after {:.1} s)",
            written.as_secs_f64(),
            mirrored.as_secs_f64()
        ),
        value: full_cpu,
        unit: "% of a core",
        baseline: Some(empty_cpu),
        baseline_what: Some("the same nodes with an empty table".into()),
        ratio: Some(full_cpu / empty_cpu.max(f64::EPSILON)),
        target: "within 10 % of an empty table",
        meets_target: Some(full_cpu <= empty_cpu * 1.1),
    });
    figures.push(Figure {
        figure: format!("sync op latency with {finished} finished contexts, p50"),
        value: full_p50,
        unit: "ms",
        baseline: Some(empty_p50),
        baseline_what: Some("the same cluster with an empty table, p50".into()),
        ratio: Some(full_p50 / empty_p50),
        target: "within 10 % of an empty table",
        meets_target: Some(full_p50 <= empty_p50 * 1.1),
    });
    figures.push(Figure {
        figure: format!(
            "raw KV create + 2 updates of a context with {finished} finished contexts, p50"
        ),
        value: full_raw,
        unit: "ms",
        baseline: Some(empty_raw),
        baseline_what: Some("the same writes with an empty table, p50".into()),
        ratio: Some(full_raw / empty_raw),
        target: "-",
        meets_target: None,
    });
}

fn render(figures: &[Figure]) -> String {
    let mut out = String::from("| figure | value | raw baseline (same run) | ratio | target | meets |\n| --- | --- | --- | --- | --- | --- |\n");
    for f in figures {
        let baseline = match (&f.baseline, &f.baseline_what) {
            (Some(b), Some(what)) => format!("{b:.2} {} ({what})", f.unit),
            _ => "-".into(),
        };
        let ratio = f
            .ratio
            .map(|r| format!("{r:.2}"))
            .unwrap_or_else(|| "-".into());
        let meets = match f.meets_target {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "-",
        };
        out.push_str(&format!(
            "| {} | {:.2} {} | {baseline} | {ratio} | {} | {meets} |\n",
            f.figure, f.value, f.unit, f.target
        ));
    }
    out
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let sizes = if quick {
        Sizes {
            latency_ops: 200,
            clients: 32,
            ops_per_client: 10,
            propagation_samples: 100,
            failover_kills: 10,
            flaps: 20,
            stream_events: 50_000,
            many_monitor_events: 200_000,
            monitors: 1000,
        }
    } else {
        Sizes {
            latency_ops: 1000,
            clients: 32,
            ops_per_client: 50,
            propagation_samples: 500,
            failover_kills: 50,
            flaps: 120,
            stream_events: 200_000,
            many_monitor_events: 1_000_000,
            monitors: 10_000,
        }
    };
    let mut sizes = sizes;
    if let Some(n) = std::env::args().skip_while(|a| a != "--monitors").nth(1) {
        sizes.monitors = n
            .parse()
            .unwrap_or_else(|_| panic!("--monitors takes a count, not {n:?}"));
    }
    let only: Option<String> = std::env::args().skip_while(|a| a != "--only").nth(1);
    let wanted = |name: &str| only.as_deref().is_none_or(|o| o == name);
    let started = Instant::now();
    let mut figures = Vec::new();
    if wanted("modules") {
        module_transfer(&mut figures).await;
    }
    if wanted("sync") {
        sync_operations(&sizes, &mut figures).await;
    }
    if wanted("batch") {
        batch_throughput(&mut figures).await;
    }
    if wanted("ssh") {
        ssh_module(quick, &mut figures).await;
    }
    if wanted("events") {
        event_throughput(&sizes, &mut figures).await;
    }
    if wanted("failover") {
        failover(&sizes, &mut figures, "defaults", &[]).await;
        failover(
            &sizes,
            &mut figures,
            "--heartbeat-ms 50 --lapse-ms 250",
            &["--heartbeat-ms", "50", "--lapse-ms", "250"],
        )
        .await;
    }
    if wanted("flaps") {
        lead_flaps(&sizes, &mut figures).await;
    }
    if wanted("monitors") {
        many_monitors(&sizes, &mut figures).await;
    }
    if wanted("large-log") {
        large_log(quick, &mut figures).await;
    }
    if wanted("many-finished") {
        many_finished(quick, &mut figures).await;
    }
    let table = render(&figures);
    println!("{table}");
    let out_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/bench");
    std::fs::create_dir_all(&out_dir).expect("target/bench");
    let report = json!({
        "quick": quick,
        "seconds": started.elapsed().as_secs_f64(),
        "machine": {"cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)},
        "figures": figures,
    });
    let path = out_dir.join("latest.json");
    std::fs::write(&path, serde_json::to_string_pretty(&report).expect("json"))
        .expect("write report");
    eprintln!(
        "figures written to {} in {:.0} s",
        path.display(),
        started.elapsed().as_secs_f64()
    );
}
