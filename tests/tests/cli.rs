//! The `zf` command-line client as a user drives it: the real binary as a
//! child process, pointed with `ZF_URL` at a real cluster, checked by its
//! exit code and what it prints. Build it first with `cargo build --bins`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, BufReader};
use zerofoot_tests::modules::write_module;
use zerofoot_tests::{free_port, service_binary, wait_until, Cluster, NodeFlags};

/// Answers with the params it was given.
const ECHO_PARAMS: &str = r#"#!/bin/sh
jq -c '{type: "result", data: .params}'
"#;

/// Counts from the checkpoint to params.total, one keyed event per number,
/// a checkpoint every params.every events (as tests/tests/monitors.rs).
const COUNTER: &str = r#"#!/bin/sh
input=$(cat)
n=$(printf '%s' "$input" | jq -r '.checkpoint.n // 0')
total=$(printf '%s' "$input" | jq -r '.params.total')
every=$(printf '%s' "$input" | jq -r '.params.every // 10')
pause=$(printf '%s' "$input" | jq -r '.params.pause // 0.01')
while [ "$n" -lt "$total" ]; do
  n=$((n + 1))
  echo "{\"type\":\"event\",\"key\":\"$n\",\"data\":{\"n\":$n}}"
  if [ $((n % every)) -eq 0 ]; then echo "{\"type\":\"checkpoint\",\"data\":{\"n\":$n}}"; fi
  sleep "$pause"
done
"#;

fn zf_binary() -> PathBuf {
    service_binary("zf")
}

/// What one run of `zf` did.
struct Ran {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Ran {
    /// Asserts the exit code, showing everything zf printed when it differs.
    fn expect(self, code: i32, what: &str) -> Self {
        assert_eq!(
            self.code,
            Some(code),
            "{what}: exit code\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    fn json(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("zf --json printed no JSON ({e}):\n{}", self.stdout))
    }
}

/// `zf ARGS` against the API at `url`, with no token from this environment.
async fn zf(url: &str, args: &[&str]) -> Ran {
    zf_in(url, args, &[], None).await
}

async fn zf_in(url: &str, args: &[&str], envs: &[(&str, &str)], cwd: Option<&Path>) -> Ran {
    let mut command = tokio::process::Command::new(zf_binary());
    command
        .args(args)
        .env("ZF_URL", url)
        .env_remove("ZF_TOKEN")
        .env_remove("ZF_TOKEN_FILE")
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    if let Some(dir) = cwd {
        command.current_dir(dir);
    }
    let out = tokio::time::timeout(Duration::from_secs(180), command.output())
        .await
        .unwrap_or_else(|_| panic!("zf {args:?} did not end within 180 s"))
        .expect("run zf");
    Ran {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn base(cluster: &Cluster) -> String {
    cluster.url("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_api_zf_exits_4_and_bad_arguments_exit_2() {
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    for args in [&["cluster"][..], &["op", "ls"], &["module", "ls", "--json"]] {
        let ran = zf(&nowhere, args).await.expect(4, "no API listening");
        assert!(
            ran.stderr.contains("cannot reach the zerofoot API")
                && ran.stderr.contains(&nowhere)
                && ran.stderr.contains("ZF_URL"),
            "says what is wrong and what to do: {}",
            ran.stderr
        );
    }

    zf(&nowhere, &["op", "run", "shell"])
        .await
        .expect(2, "a missing argument");
    let ran = zf(
        &nowhere,
        &["op", "run", "shell", "run", "--param", "novalue"],
    )
    .await
    .expect(2, "a --param without '='");
    assert!(ran.stderr.contains("KEY=VALUE"), "{}", ran.stderr);
    let ran = zf(&nowhere, &["resource", "put", "/nonexistent/web.yaml"])
        .await
        .expect(2, "an unreadable input file");
    assert!(
        ran.stderr.contains("cannot read /nonexistent/web.yaml"),
        "{}",
        ran.stderr
    );
    zf("not a url", &["cluster"])
        .await
        .expect(2, "ZF_URL that is no URL");

    let help = zf(&nowhere, &["--help"]).await.expect(0, "zf --help");
    for documented in [
        "Exit codes:",
        "  0 ",
        "  1 ",
        "  2 ",
        "  3 ",
        "  4 ",
        "ZF_TOKEN",
    ] {
        assert!(
            help.stdout.contains(documented),
            "--help documents {documented:?}: {}",
            help.stdout
        );
    }
    let completions = zf(&nowhere, &["completions", "bash"])
        .await
        .expect(0, "bash completions");
    assert!(
        completions.stdout.contains("complete") && completions.stdout.contains("zf"),
        "a bash completion script: {}",
        completions.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zf_cluster_lists_the_nodes_and_the_lead() {
    let cluster = Cluster::start(2).await;
    let url = base(&cluster);
    let ids = [cluster.node_id(0), cluster.node_id(1)];
    // The cluster view fills in as heartbeats arrive: wait for a lead.
    let view = wait_until(
        "zf cluster --json to show a lead",
        Duration::from_secs(20),
        || {
            let url = url.clone();
            async move {
                let ran = zf(&url, &["cluster", "--json"])
                    .await
                    .expect(0, "zf cluster --json");
                let view = ran.json();
                if view["lead"]["node"].is_string() {
                    Ok(view)
                } else {
                    Err(ran.stdout)
                }
            }
        },
    )
    .await;
    let mut listed: Vec<String> = view["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter(|n| n["status"] == "up")
        .filter_map(|n| n["id"].as_str().map(str::to_string))
        .collect();
    listed.sort();
    let mut expected = ids.to_vec();
    expected.sort();
    assert_eq!(listed, expected, "both nodes are up: {view}");
    assert_eq!(view["cluster"], cluster.cluster.as_str(), "{view}");

    let lead = view["lead"]["node"].as_str().expect("lead").to_string();
    let text = zf(&url, &["cluster"]).await.expect(0, "zf cluster").stdout;
    assert!(
        text.contains(&format!("lead     {lead} (term")),
        "names the lead and its term: {text}"
    );
    for id in &ids {
        let row = text
            .lines()
            .find(|l| l.starts_with(id.as_str()))
            .unwrap_or_else(|| panic!("a row for {id}: {text}"));
        assert!(row.contains(" up "), "{id} is up: {row}");
    }
    assert!(text.contains("mgmt-0"), "the management instance: {text}");
}

/// `<path> sha256:<hex>`, as zf module pack prints it.
fn path_and_digest(line: &str) -> (PathBuf, String) {
    let (path, digest) = line
        .trim()
        .rsplit_once(' ')
        .unwrap_or_else(|| panic!("<path> sha256:<hex>, not {line:?}"));
    assert!(digest.starts_with("sha256:"), "{line}");
    (PathBuf::from(path), digest.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zf_packs_pushes_lists_and_shows_modules_and_prints_schema_violations() {
    let cluster = Cluster::start(1).await;
    let url = base(&cluster);
    let work = tempfile::tempdir().expect("tempdir");
    let dir = work.path().join("tailer");
    let schema = json!({"type": "object", "required": ["path"],
        "properties": {"path": {"type": "string"}, "lines": {"type": "integer", "minimum": 1}},
        "additionalProperties": false});
    write_module(
        &dir,
        "tailer",
        "1.0.0",
        json!({"tail": {"kind": "sync", "description": "the last lines of a file", "params": schema}}),
        ECHO_PARAMS,
    );
    let dir_arg = dir.display().to_string();

    // Pack: the default name in the current folder, reproducible, and the
    // bytes the repository's own packer makes of the folder.
    let packed = zf_in(&url, &["module", "pack", &dir_arg], &[], Some(work.path()))
        .await
        .expect(0, "zf module pack DIR");
    let (path, digest) = path_and_digest(&packed.stdout);
    assert_eq!(
        path,
        work.path().join("tailer-1.0.0.tar.gz"),
        "{}",
        packed.stdout
    );
    let bytes = std::fs::read(&path).expect("the bundle zf wrote");
    assert_eq!(
        zerofoot_shared::bundle::digest(&bytes),
        digest,
        "the printed sha256"
    );
    let again = work.path().join("again.tar.gz");
    let repacked = zf(
        &url,
        &[
            "module",
            "pack",
            &dir_arg,
            "-o",
            &again.display().to_string(),
        ],
    )
    .await
    .expect(0, "zf module pack DIR -o OUT");
    assert_eq!(
        path_and_digest(&repacked.stdout),
        (again.clone(), digest.clone())
    );
    assert!(
        bytes
            == zerofoot_shared::bundle::pack_dir(&dir).expect("pack with the repository's packer"),
        "zf packs the very bytes the repository's packer makes of the folder"
    );

    // Push the folder: stored with the digest pack printed; the same bytes
    // again are accepted as already stored.
    let pushed = zf(&url, &["module", "push", &dir_arg])
        .await
        .expect(0, "zf module push DIR");
    assert!(
        pushed.stdout.starts_with("stored tailer 1.0.0 ") && pushed.stdout.contains(&digest),
        "{}",
        pushed.stdout
    );
    let repushed = zf(
        &url,
        &["module", "push", &path.display().to_string(), "--json"],
    )
    .await
    .expect(0, "zf module push FILE (same bytes)");
    assert_eq!(
        repushed.json()["digest"],
        digest.as_str(),
        "{}",
        repushed.stdout
    );
    cluster.wait_module("tailer", "1.0.0").await;

    let listed = zf(&url, &["module", "ls"]).await.expect(0, "zf module ls");
    for name in ["tailer", "shell", "http-probe", "file-tail"] {
        assert!(
            listed
                .stdout
                .lines()
                .any(|l| l.starts_with(&format!("{name} "))),
            "lists {name}: {}",
            listed.stdout
        );
    }
    let shown = zf(&url, &["module", "show", "tailer"])
        .await
        .expect(0, "zf module show");
    for expected in [
        "tailer 1.0.0",
        &digest,
        "operation tail (sync",
        "the last lines of a file",
        "\"additionalProperties\": false",
        "\"required\": [",
    ] {
        assert!(
            shown.stdout.contains(expected),
            "shows {expected:?}: {}",
            shown.stdout
        );
    }
    let missing = zf(&url, &["module", "show", "no-such-module"])
        .await
        .expect(3, "an unknown module");
    assert!(
        missing.stderr.contains("404 module_not_found"),
        "{}",
        missing.stderr
    );

    // Params that break the schema: refused with every violation, as the API lists them.
    let refused = zf(
        &url,
        &[
            "op",
            "run",
            "tailer",
            "tail",
            "--param",
            "lines=0",
            "--param",
            "colour=red",
        ],
    )
    .await
    .expect(3, "params that break the schema");
    let (status, body) = cluster
        .post_json(
            "/v1/operations",
            &json!({"module": "tailer", "operation": "tail", "params": {"lines": 0, "colour": "red"}}),
        )
        .await;
    assert_eq!(status, 422, "{body}");
    let violations = body["error"]["violations"].as_array().expect("violations");
    assert_eq!(violations.len(), 3, "{body}");
    assert!(
        refused.stderr.contains("422 invalid_params"),
        "{}",
        refused.stderr
    );
    for violation in violations {
        let line = format!("  - {}", violation.as_str().expect("a violation"));
        assert!(
            refused.stderr.lines().any(|l| l == line),
            "prints {line:?}: {}",
            refused.stderr
        );
    }
    assert!(
        refused.stderr.contains("zf module show"),
        "{}",
        refused.stderr
    );

    // Fitting params run; `lines=5` went up as a number.
    let ran = zf(
        &url,
        &[
            "op",
            "run",
            "tailer",
            "tail",
            "--param",
            "path=/var/log/x",
            "--param",
            "lines=5",
        ],
    )
    .await
    .expect(0, "params that fit");
    assert_eq!(ran.json(), json!({"path": "/var/log/x", "lines": 5}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zf_puts_a_resource_from_yaml_then_gets_lists_and_removes_it() {
    let cluster = Cluster::start(0).await;
    let url = base(&cluster);
    let work = tempfile::tempdir().expect("tempdir");
    let yaml = work.path().join("web-1.yaml");
    std::fs::write(
        &yaml,
        "# a file resource\nid: web-1\nkind: file\nlabels:\n  role: web\n  env: prod\nconfig:\n  path: /var/log/syslog\n  follow: true\n  lines: 20\nsecrets:\n  token: s3cret-value\n",
    )
    .expect("write the YAML");
    let yaml_arg = yaml.display().to_string();

    let created = zf(&url, &["resource", "put", &yaml_arg])
        .await
        .expect(0, "zf resource put (new)");
    assert_eq!(created.stdout.trim(), "created resource web-1 (kind file)");
    let replaced = zf(&url, &["resource", "put", &yaml_arg])
        .await
        .expect(0, "zf resource put (again)");
    assert_eq!(
        replaced.stdout.trim(),
        "replaced resource web-1 (kind file)"
    );

    let got = zf(&url, &["resource", "get", "web-1", "--json"])
        .await
        .expect(0, "zf resource get --json");
    let view = got.json();
    assert_eq!(
        view["config"],
        json!({"path": "/var/log/syslog", "follow": true, "lines": 20}),
        "YAML became the JSON config: {view}"
    );
    assert_eq!(view["secret_names"], json!(["token"]), "{view}");
    assert_eq!(
        view["labels"],
        json!({"role": "web", "env": "prod"}),
        "{view}"
    );
    let text = zf(&url, &["resource", "get", "web-1"])
        .await
        .expect(0, "zf resource get");
    assert!(
        text.stdout.contains("kind:        file")
            && text.stdout.contains("/var/log/syslog")
            && text.stdout.contains("secrets:     token")
            && text.stdout.contains("labels:      env=prod,role=web"),
        "{}",
        text.stdout
    );
    assert!(
        !got.stdout.contains("s3cret-value") && !text.stdout.contains("s3cret-value"),
        "never a secret's value"
    );

    let json_file = work.path().join("db-1.json");
    std::fs::write(
        &json_file,
        r#"{"id": "db-1", "kind": "postgres", "labels": {"role": "db", "env": "prod"}, "config": {"port": 5432}}"#,
    )
    .expect("write the JSON");
    zf(&url, &["resource", "put", &json_file.display().to_string()])
        .await
        .expect(0, "zf resource put FILE.json");
    let listed = zf(&url, &["resource", "ls"])
        .await
        .expect(0, "zf resource ls");
    let rows: Vec<&str> = listed.stdout.lines().skip(1).collect();
    assert_eq!(rows.len(), 2, "{}", listed.stdout);
    assert!(
        rows[0].starts_with("db-1 ") && rows[0].contains("postgres"),
        "{}",
        listed.stdout
    );
    assert!(
        rows[1].starts_with("web-1 ") && rows[1].contains("token"),
        "{}",
        listed.stdout
    );

    // Selectors pick by label; a bad selector or bad labels say what is wrong.
    let picked = zf(
        &url,
        &["resource", "ls", "--selector", "env=prod,role notin (db)"],
    )
    .await
    .expect(0, "zf resource ls --selector");
    let rows: Vec<&str> = picked.stdout.lines().skip(1).collect();
    assert!(
        rows.len() == 1 && rows[0].starts_with("web-1 ") && rows[0].contains("env=prod,role=web"),
        "{}",
        picked.stdout
    );
    let picked = zf(
        &url,
        &[
            "resource",
            "ls",
            "-l",
            "role in (db,cache),!canary",
            "--json",
        ],
    )
    .await
    .expect(0, "zf resource ls -l --json");
    assert_eq!(
        picked.json()["resources"][0]["id"],
        "db-1",
        "{}",
        picked.stdout
    );
    assert_eq!(picked.json()["resources"].as_array().map(Vec::len), Some(1));
    let bad = zf(&url, &["resource", "ls", "-l", "role in (web"])
        .await
        .expect(3, "a selector that does not parse");
    assert!(
        bad.stderr.contains("400 invalid_selector") && bad.stderr.contains("expected ',' or ')'"),
        "{}",
        bad.stderr
    );
    let bad_labels = work.path().join("bad.yaml");
    std::fs::write(
        &bad_labels,
        "id: bad-1\nkind: file\nlabels:\n  role: \"web server\"\n",
    )
    .expect("write");
    let refused = zf(
        &url,
        &["resource", "put", &bad_labels.display().to_string()],
    )
    .await
    .expect(3, "labels out of the rules");
    assert!(
        refused.stderr.contains("422 invalid_labels") && refused.stderr.contains("\"web server\""),
        "{}",
        refused.stderr
    );

    let removed = zf(&url, &["resource", "rm", "web-1"])
        .await
        .expect(0, "zf resource rm");
    assert_eq!(removed.stdout.trim(), "deleted resource web-1");
    let gone = zf(&url, &["resource", "get", "web-1"])
        .await
        .expect(3, "a removed resource");
    assert!(
        gone.stderr.contains("404 resource_not_found"),
        "{}",
        gone.stderr
    );
    zf(&url, &["resource", "rm", "web-1"])
        .await
        .expect(3, "removing it again");
    let listed = zf(&url, &["resource", "ls", "--json"])
        .await
        .expect(0, "zf resource ls --json");
    assert_eq!(
        listed.json()["resources"].as_array().map(Vec::len),
        Some(1),
        "{}",
        listed.stdout
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zf_op_run_prints_a_sync_result_and_exits_by_the_outcome() {
    let mut cluster = Cluster::start(1).await;
    let url = base(&cluster);

    let ran = zf(
        &url,
        &[
            "op",
            "run",
            "shell",
            "run",
            "--param",
            "command=echo",
            "--param",
            r#"args=["hello","zf"]"#,
        ],
    )
    .await
    .expect(0, "a sync operation that completes");
    let result = ran.json();
    assert_eq!(result["stdout"], "hello zf\n", "the result: {result}");
    assert_eq!(result["exit_code"], 0, "{result}");

    let work = tempfile::tempdir().expect("tempdir");
    let params = work.path().join("params.yaml");
    std::fs::write(&params, "command: printf\nargs: ['%s-%s', a, b]\n").expect("params file");
    let ran = zf(
        &url,
        &[
            "op",
            "run",
            "shell",
            "run",
            "--params-file",
            &params.display().to_string(),
            "--json",
        ],
    )
    .await
    .expect(0, "params from a YAML file, --json");
    let ctx = ran.json();
    assert_eq!(ctx["state"], "complete", "--json prints the context: {ctx}");
    assert_eq!(ctx["result"]["stdout"], "a-b", "{ctx}");

    // No command: the driver exits 2, the operation fails, zf exits 1 and says why.
    let failed = zf(&url, &["op", "run", "shell", "run"])
        .await
        .expect(1, "a sync operation that fails");
    assert!(
        failed.stderr.contains("failed") && failed.stderr.contains("params.command is required"),
        "prints the error: {}",
        failed.stderr
    );

    let listed = zf(
        &url,
        &[
            "op", "ls", "--module", "shell", "--state", "failed", "--json",
        ],
    )
    .await
    .expect(0, "zf op ls --state failed");
    let failed_ops = listed.json()["operations"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(failed_ops.len(), 1, "{}", listed.stdout);
    let id = failed_ops[0]["id"].as_str().expect("id").to_string();
    let table = zf(&url, &["op", "ls", "--module", "shell"])
        .await
        .expect(0, "zf op ls");
    assert_eq!(
        table.stdout.lines().count(),
        4,
        "a header and three operations: {}",
        table.stdout
    );
    assert!(table.stdout.contains(&id), "{}", table.stdout);
    let shown = zf(&url, &["op", "show", &id]).await.expect(0, "zf op show");
    assert!(
        shown.stdout.contains("state:      failed")
            && shown.stdout.contains("params.command is required"),
        "{}",
        shown.stdout
    );
    let refused = zf(&url, &["op", "cancel", &id])
        .await
        .expect(3, "cancelling a finished operation");
    assert!(
        refused.stderr.contains("409 already_finished"),
        "{}",
        refused.stderr
    );
    zf(&url, &["op", "show", "not-an-id"])
        .await
        .expect(3, "an operation id that is no UUID");

    // No node left: the API answers 503, which is exit 4.
    cluster.nodes[0].kill();
    let unavailable = wait_until("zf op run to get a 503", Duration::from_secs(30), || {
        let url = url.clone();
        async move {
            let ran = zf(
                &url,
                &["op", "run", "shell", "run", "--param", "command=true"],
            )
            .await;
            if ran.code == Some(4) {
                Ok(ran)
            } else {
                Err(format!("exit {:?}: {}{}", ran.code, ran.stdout, ran.stderr))
            }
        }
    })
    .await;
    assert!(
        unavailable.stderr.contains("503") && unavailable.stderr.contains("no agent node"),
        "{}",
        unavailable.stderr
    );
}

/// The current lead once exactly one live node leads, and its term.
async fn lead(cluster: &Cluster) -> (String, u64) {
    wait_until(
        "exactly one lead in /v1/cluster",
        Duration::from_secs(20),
        || async {
            let (_, view) = cluster.get("/v1/cluster").await;
            let leads: Vec<&Value> = view["nodes"]
                .as_array()
                .map(|n| {
                    n.iter()
                        .filter(|n| n["role"] == "lead" && n["status"] == "up")
                        .collect()
                })
                .unwrap_or_default();
            match (leads.as_slice(), view["lead"]["node"].as_str()) {
                ([one], Some(lead)) if one["id"] == lead => {
                    Ok((lead.to_string(), view["lead"]["term"].as_u64().unwrap_or(0)))
                }
                _ => Err(view.to_string()),
            }
        },
    )
    .await
}

/// Lines a child process printed so far, collected as they come.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<String>>>);

impl Lines {
    fn collect(&self, pipe: impl tokio::io::AsyncRead + Unpin + Send + 'static) {
        let lines = self.0.clone();
        tokio::spawn(async move {
            let mut reader = BufReader::new(pipe).lines();
            while let Ok(Some(line)) = reader.next_line().await {
                lines.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            }
        });
    }

    fn all(&self) -> Vec<String> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn len(&self) -> usize {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    async fn wait_for(&self, at_least: usize, what: &str) {
        wait_until(what, Duration::from_secs(60), || async {
            let n = self.len();
            if n >= at_least {
                Ok(())
            } else {
                Err(format!("{n} lines: {:?}", self.all().last()))
            }
        })
        .await;
    }
}

/// The seq each printed event line starts with.
fn seqs(lines: &[String]) -> Vec<u64> {
    lines
        .iter()
        .map(|l| {
            l.split(' ')
                .next()
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("an event line starts with its seq: {l:?}"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zf_follows_a_monitor_across_a_lead_kill_and_a_management_restart() {
    let mut cluster = Cluster::start(0).await;
    let fast = NodeFlags(vec![
        "--heartbeat-ms".into(),
        "50".into(),
        "--lapse-ms".into(),
        "250".into(),
    ]);
    for _ in 0..3 {
        cluster.add_node(&fast);
    }
    cluster.wait_nodes_up(3).await;
    let url = base(&cluster);
    let work = tempfile::tempdir().expect("tempdir");
    let dir = work.path().join("counter");
    write_module(
        &dir,
        "counter",
        "1.0.0",
        json!({"count": {"kind": "async"}}),
        COUNTER,
    );
    zf(&url, &["module", "push", &dir.display().to_string()])
        .await
        .expect(0, "zf module push");
    cluster.wait_module("counter", "1.0.0").await;

    let mut child = tokio::process::Command::new(zf_binary())
        .args(["op", "run", "counter", "count", "--follow"])
        .args([
            "--param",
            "total=1000000",
            "--param",
            "every=10",
            "--param",
            "pause=0.01",
        ])
        .env("ZF_URL", &url)
        .env_remove("ZF_TOKEN")
        .env_remove("ZF_TOKEN_FILE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start zf op run --follow");
    let (out, err) = (Lines::default(), Lines::default());
    out.collect(child.stdout.take().expect("stdout"));
    err.collect(child.stderr.take().expect("stderr"));

    err.wait_for(1, "zf to say which operation it follows")
        .await;
    let first = err.all().join("\n");
    let id = first
        .split_whitespace()
        .skip_while(|w| *w != "operation")
        .nth(1)
        .unwrap_or_else(|| panic!("zf names the operation it follows: {first}"))
        .to_string();
    out.wait_for(50, "50 events printed").await;

    // SIGKILL the lead: the stream goes on from its successor.
    let (lead_id, term) = lead(&cluster).await;
    let victim = cluster.node_index(&lead_id);
    cluster.nodes[victim].kill();
    let at_kill = out.len();
    wait_until("a new lead", Duration::from_secs(20), || async {
        let (id, t) = lead(&cluster).await;
        if id != lead_id && t > term {
            Ok(())
        } else {
            Err(format!("{id} at term {t}"))
        }
    })
    .await;
    out.wait_for(at_kill + 100, "100 more events after the lead's SIGKILL")
        .await;

    // SIGKILL management and start it again: zf reconnects and resumes.
    cluster.management[0].process.kill();
    let at_restart = out.len();
    cluster.management[0].process.start();
    cluster.wait_management().await;
    out.wait_for(
        at_restart + 100,
        "100 more events after management came back",
    )
    .await;
    assert!(
        err.all().iter().any(|l| l.contains("resuming after seq")),
        "zf saw the connection drop and resumed: {:?}",
        err.all()
    );

    // Cancel: zf sees the final state, prints the rest and exits 1.
    let cancelled = zf(&url, &["op", "cancel", &id])
        .await
        .expect(0, "zf op cancel");
    assert!(cancelled.stdout.contains(&id), "{}", cancelled.stdout);
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .unwrap_or_else(|_| panic!("zf did not end after the cancel: {:?}", err.all()))
        .expect("zf's exit status");
    // The pipes are drained once zf has exited.
    let events = wait_until(
        "zf's stdout to be read to its end",
        Duration::from_secs(10),
        || async {
            let (status, body) = cluster
                .get(&format!("/v1/operations/{id}/events?limit=10000"))
                .await;
            let logged = body["events"].as_array().map(Vec::len).unwrap_or(0);
            if status == 200 && out.len() == logged {
                Ok(logged)
            } else {
                Err(format!("{} printed, {logged} in the log", out.len()))
            }
        },
    )
    .await;
    assert_eq!(
        status.code(),
        Some(1),
        "a cancelled operation: {:?}",
        err.all()
    );
    assert!(
        err.all().iter().any(|l| l.contains("was cancelled")),
        "{:?}",
        err.all()
    );
    let printed = out.all();
    assert_eq!(
        seqs(&printed),
        (1..=events as u64).collect::<Vec<u64>>(),
        "every event printed once, in order, none skipped"
    );
    assert!(events > at_restart + 100);
    let numbers: Vec<u64> = printed
        .iter()
        .map(|l| {
            let data = l.splitn(5, ' ').nth(4).unwrap_or_default();
            serde_json::from_str::<Value>(data).expect("data")["n"]
                .as_u64()
                .expect("n")
        })
        .collect();
    assert_eq!(
        numbers,
        (1..=events as u64).collect::<Vec<u64>>(),
        "keyed events exactly once, in order"
    );

    // The same events, paged instead of streamed.
    let paged = zf(&url, &["op", "events", &id, "--after", "10"])
        .await
        .expect(0, "zf op events --after 10");
    let paged: Vec<String> = paged.stdout.lines().map(str::to_string).collect();
    assert_eq!(
        paged.as_slice(),
        &printed[10..],
        "zf op events pages what --follow printed"
    );
}

/// `talk` (sync): three log lines, a word on stderr, a result; `tick`
/// (async): a numbered log line every 20 ms until stopped.
const TALKER: &str = r#"#!/bin/sh
cat >/dev/null
if [ "$ZF_OPERATION" = talk ]; then
  echo '{"type":"log","level":"info","msg":"line one"}'
  echo '{"type":"log","level":"warn","msg":"careful now"}'
  echo '{"type":"log","level":"error","msg":"it broke"}'
  echo 'goodbye from stderr' >&2
  echo '{"type":"result","data":{"ok":true}}'
  exit 0
fi
i=1
while true; do
  echo "{\"type\":\"log\",\"level\":\"info\",\"msg\":\"tick $i\"}"
  i=$((i + 1))
  sleep 0.02
done
"#;

/// Every log line of `op` as the API pages it, formatted as zf prints one.
async fn api_log_lines(cluster: &Cluster, op: &str) -> Vec<String> {
    let (status, body) = cluster
        .get(&format!("/v1/operations/{op}/logs?limit=10000"))
        .await;
    assert_eq!(status, 200, "{body}");
    body["logs"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|l| {
            format!(
                "{} {} {} {}",
                l["at"].as_str().unwrap_or_default(),
                l["node"].as_str().unwrap_or_default(),
                l["level"].as_str().unwrap_or_default(),
                l["msg"].as_str().unwrap_or_default()
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zf_op_logs_prints_and_follows_an_operations_log_lines() {
    let cluster = Cluster::start(1).await;
    let url = base(&cluster);
    let work = tempfile::tempdir().expect("tempdir");
    let dir = work.path().join("talker");
    write_module(
        &dir,
        "talker",
        "1.0.0",
        json!({"talk": {"kind": "sync"}, "tick": {"kind": "async"}}),
        TALKER,
    );
    zf(&url, &["module", "push", &dir.display().to_string()])
        .await
        .expect(0, "zf module push");
    cluster.wait_module("talker", "1.0.0").await;
    let node = cluster.node_id(0);

    let ran = zf(&url, &["op", "run", "talker", "talk", "--json"])
        .await
        .expect(0, "a sync operation that logs");
    let id = ran.json()["id"].as_str().expect("id").to_string();
    // The stderr tail is kept as the driver ends, possibly just after the result.
    let expected = wait_until("four log lines kept", Duration::from_secs(10), || async {
        let lines = api_log_lines(&cluster, &id).await;
        if lines.len() == 4 {
            Ok(lines)
        } else {
            Err(format!("{lines:?}"))
        }
    })
    .await;
    let printed = zf(&url, &["op", "logs", &id]).await.expect(0, "zf op logs");
    let printed: Vec<&str> = printed.stdout.lines().collect();
    assert_eq!(printed, expected, "`<at> <node> <level> <msg>` per line");
    for (line, (level, msg)) in printed.iter().zip([
        ("info", "line one"),
        ("warn", "careful now"),
        ("error", "it broke"),
        ("stderr", "goodbye from stderr"),
    ]) {
        assert!(
            line.ends_with(&format!(" {node} {level} {msg}")),
            "{line:?} is {level} {msg:?} from {node}"
        );
    }
    let json_lines = zf(&url, &["op", "logs", &id, "--json"])
        .await
        .expect(0, "zf op logs --json");
    let first: Value = serde_json::from_str(json_lines.stdout.lines().next().unwrap_or_default())
        .expect("one JSON object a line");
    assert_eq!(first["msg"], "line one", "{first}");

    // Follow a monitor's log live until it is cancelled.
    let started = zf(&url, &["op", "run", "talker", "tick"])
        .await
        .expect(0, "an async operation starts");
    let tick = started.stdout.trim().to_string();
    let mut child = tokio::process::Command::new(zf_binary())
        .args(["op", "logs", &tick, "--follow"])
        .env("ZF_URL", &url)
        .env_remove("ZF_TOKEN")
        .env_remove("ZF_TOKEN_FILE")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("start zf op logs --follow");
    let (out, err) = (Lines::default(), Lines::default());
    out.collect(child.stdout.take().expect("stdout"));
    err.collect(child.stderr.take().expect("stderr"));
    out.wait_for(30, "30 log lines followed").await;
    zf(&url, &["op", "cancel", &tick])
        .await
        .expect(0, "zf op cancel");
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .unwrap_or_else(|_| panic!("zf op logs --follow did not end: {:?}", err.all()))
        .expect("zf's exit status");
    assert_eq!(
        status.code(),
        Some(1),
        "the operation was cancelled: {:?}",
        err.all()
    );
    let expected = wait_until(
        "zf to have printed every kept line",
        Duration::from_secs(10),
        || async {
            let kept = api_log_lines(&cluster, &tick).await;
            if out.len() == kept.len() {
                Ok(kept)
            } else {
                Err(format!("{} printed, {} kept", out.len(), kept.len()))
            }
        },
    )
    .await;
    let printed = out.all();
    assert_eq!(printed, expected, "each kept line printed once, in order");
    let ticks: Vec<String> = printed
        .iter()
        .filter(|l| l.contains(" info tick "))
        .map(|l| l.rsplit(' ').next().unwrap_or_default().to_string())
        .collect();
    let numbered: Vec<String> = (1..=ticks.len()).map(|i| i.to_string()).collect();
    assert_eq!(ticks, numbered, "ticks 1..N with no gap or repeat");
}

const ADMIN_TOKEN: &str = "admin-token-0123456789abcdef";
const VIEWER_TOKEN: &str = "viewer-token-0123456789abcdef";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zf_sends_the_token_from_zf_token_or_a_token_file() {
    let mut cluster = Cluster::bare().await;
    cluster.start_repository();
    let tokens = format!("admin:{ADMIN_TOKEN},viewer:{VIEWER_TOKEN}");
    cluster.start_management_with(&[("ZF_API_TOKENS", &tokens)]);
    // Tokens are checked before NATS is: a 401 alone does not say that
    // management can answer a viewer yet.
    cluster.wait_management().await;
    let url = base(&cluster);
    let work = tempfile::tempdir().expect("tempdir");
    let resource = work.path().join("r.yaml");
    std::fs::write(&resource, "id: r1\nkind: file\n").expect("write");
    let resource = resource.display().to_string();

    let refused = wait_until(
        "management to refuse zf without a token",
        Duration::from_secs(20),
        || {
            let url = url.clone();
            async move {
                let ran = zf(&url, &["cluster"]).await;
                if ran.code == Some(3) {
                    Ok(ran)
                } else {
                    Err(format!("exit {:?}: {}", ran.code, ran.stderr))
                }
            }
        },
    )
    .await;
    assert!(
        refused.stderr.contains("401 unauthorized") && refused.stderr.contains("ZF_TOKEN"),
        "{}",
        refused.stderr
    );

    let as_viewer = [("ZF_TOKEN", VIEWER_TOKEN)];
    zf_in(&url, &["cluster", "--json"], &as_viewer, None)
        .await
        .expect(0, "a viewer reads");
    let forbidden = zf_in(&url, &["resource", "put", &resource], &as_viewer, None)
        .await
        .expect(3, "a viewer may not write");
    assert!(
        forbidden.stderr.contains("403 forbidden"),
        "{}",
        forbidden.stderr
    );

    let token_file = work.path().join("token");
    std::fs::write(&token_file, format!("{ADMIN_TOKEN}\n")).expect("write the token file");
    let token_file = token_file.display().to_string();
    zf_in(
        &url,
        &["resource", "put", &resource, "--token-file", &token_file],
        &as_viewer,
        None,
    )
    .await
    .expect(0, "--token-file wins over ZF_TOKEN");
    zf_in(
        &url,
        &["resource", "rm", "r1"],
        &[("ZF_TOKEN_FILE", token_file.as_str())],
        None,
    )
    .await
    .expect(0, "ZF_TOKEN_FILE");
    zf_in(
        &url,
        &["resource", "ls"],
        &[("ZF_TOKEN", "wrong-token-0123456789")],
        None,
    )
    .await
    .expect(3, "an unknown token");
}
