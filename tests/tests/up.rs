//! The README's walkthrough, run as printed: the commands between its
//! `<!-- walkthrough -->` markers must be exactly the ones below, and each is
//! run through bash from the repository root, as a newcomer would type it.
//! `scripts/up.sh` brings the local cluster up, `zf` follows a counting
//! monitor, `scripts/kill.sh lead` SIGKILLs the lead, the count goes on under
//! a new lead with no number skipped or repeated, up.sh starts the killed
//! node again, and a cancel ends the follow. The test's only departures: up.sh
//! runs the debug binaries the test build made (`ZF_BIN_DIR`, also first on
//! `PATH` in place of `target/release`), in a folder and on ports of its own.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use zerofoot_tests::{free_port, get_json, wait_until, Process};

/// The walkthrough's commands, in order, as the README must print them.
const WALKTHROUGH: [&str; 8] = [
    "scripts/up.sh",
    r#"export PATH="$PWD/target/release:$PATH""#,
    "zf cluster",
    "zf module push examples/ticker",
    "zf op run ticker count --follow",
    "scripts/kill.sh lead",
    "zf cluster",
    "zf op cancel <id>",
];

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repository root")
        .to_path_buf()
}

/// The shell commands between the README's walkthrough markers, comments
/// and blank lines left out.
fn readme_walkthrough() -> Vec<String> {
    let readme = std::fs::read_to_string(repo_root().join("README.md")).expect("README.md");
    let start = readme
        .find("<!-- walkthrough -->")
        .expect("README.md has a <!-- walkthrough --> marker");
    let end = readme
        .find("<!-- /walkthrough -->")
        .expect("README.md has a <!-- /walkthrough --> marker");
    let mut commands = Vec::new();
    let mut in_code = false;
    for line in readme[start..end].lines() {
        if line.starts_with("```") {
            in_code = !in_code;
            continue;
        }
        let command = line.split(" # ").next().unwrap_or_default().trim();
        if in_code && !command.is_empty() {
            commands.push(command.to_string());
        }
    }
    commands
}

/// Runs one walkthrough command through bash, from the repository root.
fn run(command: &str, env: &[(String, String)]) -> Output {
    let output = Command::new("bash")
        .args(["-c", command])
        .current_dir(repo_root())
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed ({}): {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The node `zf cluster` names on its `lead` line.
fn lead_of(cluster_text: &str) -> Option<String> {
    cluster_text
        .lines()
        .find_map(|l| l.strip_prefix("lead"))
        .and_then(|rest| rest.split_whitespace().next())
        .filter(|node| node.starts_with("node-"))
        .map(str::to_string)
}

/// How many nodes a cluster view shows `up`.
fn nodes_up(view: &Value) -> usize {
    view["nodes"]
        .as_array()
        .map(|n| n.iter().filter(|n| n["status"] == "up").count())
        .unwrap_or(0)
}

/// The seqs `zf op run --follow` printed so far (first column of each line).
fn seqs(lines: &Mutex<Vec<String>>) -> Vec<u64> {
    lines
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter_map(|l| l.split_whitespace().next()?.parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_walkthrough_works_as_printed() {
    assert_eq!(
        readme_walkthrough(),
        WALKTHROUGH,
        "the README's walkthrough and this test must run the same commands"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let bin = zerofoot_tests::service_binary("zf")
        .parent()
        .expect("bin dir")
        .to_path_buf();
    let http_addr = format!("127.0.0.1:{}", free_port());
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let env: Vec<(String, String)> = vec![
        ("ZF_BIN_DIR".into(), bin.display().to_string()),
        ("ZF_UP_DATA".into(), data.display().to_string()),
        ("ZF_NATS_PORT".into(), free_port().to_string()),
        ("ZF_HTTP_ADDR".into(), http_addr.clone()),
        ("ZF_URL".into(), format!("http://{http_addr}")),
        ("PATH".into(), path),
        (
            "ZF_CLUSTER".into(),
            format!("up{}", &uuid::Uuid::new_v4().simple().to_string()[..6]),
        ),
    ];

    // scripts/up.sh
    let mut up = Process::spawn(
        "up",
        &repo_root().join(WALKTHROUGH[0]),
        &[],
        &env,
        dir.path(),
    );
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http");
    let base = format!("http://{http_addr}");
    wait_until(
        "up.sh's cluster: three nodes up and a lead",
        Duration::from_secs(120),
        || async {
            let view = get_json(&http, &format!("{base}/v1/cluster")).await?;
            if nodes_up(&view) == 3 && view["lead"]["node"].is_string() {
                Ok(())
            } else {
                Err(view.to_string())
            }
        },
    )
    .await;

    // zf cluster: three nodes up, one of them the lead.
    let shown = stdout(&run(WALKTHROUGH[2], &env));
    let first_lead = lead_of(&shown).unwrap_or_else(|| panic!("zf cluster names a lead: {shown}"));
    assert_eq!(
        shown.lines().filter(|l| l.contains(" up ")).count(),
        3,
        "three nodes up: {shown}"
    );

    // zf module push examples/ticker
    let pushed = stdout(&run(WALKTHROUGH[3], &env));
    assert!(pushed.contains("ticker 1.0.0"), "{pushed}");

    // zf op run ticker count --follow, left running.
    let mut follow = tokio::process::Command::new("bash")
        .args(["-c", WALKTHROUGH[4]])
        .current_dir(repo_root())
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("zf op run --follow");
    let printed = Arc::new(Mutex::new(Vec::<String>::new()));
    let said = Arc::new(Mutex::new(Vec::<String>::new()));
    for (pipe, into) in [
        (
            follow
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
            printed.clone(),
        ),
        (
            follow
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
            said.clone(),
        ),
    ] {
        let pipe = pipe.expect("piped");
        tokio::spawn(async move {
            let mut lines = BufReader::new(pipe).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                into.lock().unwrap_or_else(|e| e.into_inner()).push(line);
            }
        });
    }
    wait_until("the count to reach 5", Duration::from_secs(30), || {
        let seen = seqs(&printed);
        async move {
            if seen.len() >= 5 {
                Ok(())
            } else {
                Err(format!("{seen:?}"))
            }
        }
    })
    .await;
    let op = said
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .find_map(|l| l.strip_prefix("zf: following operation "))
        .and_then(|rest| rest.split_whitespace().next())
        .map(str::to_string)
        .expect("zf names the operation it follows");

    // scripts/kill.sh lead
    let killed = stdout(&run(WALKTHROUGH[5], &env));
    assert!(
        killed.contains(&first_lead),
        "it names the lead it killed: {killed}"
    );
    let before = seqs(&printed).len();

    // zf cluster, until it shows a new lead; the count goes on meanwhile.
    wait_until(
        "zf cluster to show a new lead and the count to go on",
        Duration::from_secs(30),
        || {
            let lead = lead_of(&stdout(&run(WALKTHROUGH[6], &env)));
            let now = seqs(&printed).len();
            let first = first_lead.clone();
            async move {
                match lead {
                    Some(lead) if lead != first && now >= before + 10 => Ok(()),
                    lead => Err(format!("lead {lead:?}, {now} numbers (had {before})")),
                }
            }
        },
    )
    .await;
    wait_until(
        "up.sh to start the killed node again: three nodes up",
        Duration::from_secs(30),
        || async {
            let view = get_json(&http, &format!("{base}/v1/cluster")).await?;
            if nodes_up(&view) == 3 {
                Ok(())
            } else {
                Err(view.to_string())
            }
        },
    )
    .await;

    // zf op cancel <id>: the follow ends, as a cancelled operation.
    run(&WALKTHROUGH[7].replace("<id>", &op), &env);
    let ended = tokio::time::timeout(Duration::from_secs(30), follow.wait())
        .await
        .expect("the follow ends after the cancel")
        .expect("zf's exit status");
    assert_eq!(ended.code(), Some(1), "a cancelled operation exits 1");
    let seen = seqs(&printed);
    let expected: Vec<u64> = (1..=seen.len() as u64).collect();
    assert_eq!(
        seen, expected,
        "the count across the kill: every number once, in order"
    );

    up.signal(Signal::SIGTERM);
    wait_until("up.sh to stop everything", Duration::from_secs(30), || {
        let gone = !up.is_running();
        async move {
            if gone {
                Ok(())
            } else {
                Err("still running".to_string())
            }
        }
    })
    .await;
    let left = Command::new("pgrep")
        .args(["-f", &data.display().to_string()])
        .output()
        .expect("pgrep");
    assert!(
        left.stdout.is_empty(),
        "up.sh left processes behind: {}",
        String::from_utf8_lossy(&left.stdout)
    );
    assert!(Path::new(&data).join("logs").is_dir());
}
