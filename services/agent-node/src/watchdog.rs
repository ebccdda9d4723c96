//! A driver never outlives its node's right to run it. The node starts one
//! small watchdog process (`zf-agent-node watchdog`, the same binary) in its
//! own process group, and tells it over a pipe which driver process groups
//! are running (`+<pgid>`, `-<pgid>`) and that the node is alive (`.`), as
//! container runtimes' shims do:
//! - the node dies by any signal: the kernel closes the pipe, the watchdog
//!   reads end-of-file and SIGKILLs every group it was told of, then exits;
//! - the node stalls (SIGSTOP, starved of CPU) and stops feeding it for the
//!   starvation limit (the node's lapse): the watchdog SIGKILLs the groups,
//!   so a paused node's drivers do not run on beside its successor's.
//!
//! A driver spawned in the instant before its group was announced, or before
//! its shim made the group, is still covered: the node announces its
//! spawner's group too, which holds every shim until the shim starts its
//! own session, and whose end takes every shim along (each shim sets
//! PR_SET_PDEATHSIG, SIGKILL, tied to the spawner, and the spawner one tied
//! to the tokio worker thread that started it, which lives as long as the
//! node). The
//! watchdog ignores SIGINT, SIGTERM and SIGHUP so a terminal's Ctrl-C or a
//! `pkill zf-agent-node` cannot take it down before the node's own cleanup.

use std::collections::BTreeSet;
use std::io::BufRead;
use std::path::Path;
use std::process::Stdio;
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, signal, SigHandler, Signal};
use nix::unistd::Pid;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc as tokio_mpsc;

/// The watchdog process: runs until the node's pipe closes.
pub fn run(starve: Duration) -> std::process::ExitCode {
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        // SAFETY: ignoring a signal installs no handler code.
        let _ = unsafe { signal(sig, SigHandler::SigIgn) };
    }
    let (tx, rx) = mpsc::channel::<Option<String>>();
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        for line in stdin.lock().lines() {
            match line {
                Ok(line) => {
                    if tx.send(Some(line)).is_err() {
                        return;
                    }
                }
                Err(_) => break,
            }
        }
        let _ = tx.send(None);
    });
    let mut groups = BTreeSet::new();
    let mut fed = Instant::now();
    loop {
        let wait = starve.saturating_sub(fed.elapsed());
        match rx.recv_timeout(wait) {
            Ok(Some(line)) => {
                fed = Instant::now();
                apply(&mut groups, &line);
            }
            Ok(None) | Err(RecvTimeoutError::Disconnected) => {
                let killed = kill_all(&mut groups);
                if killed > 0 {
                    eprintln!("zf-agent-node watchdog: the node is gone; killed {killed} process group(s) of drivers and their spawner");
                }
                return std::process::ExitCode::SUCCESS;
            }
            Err(RecvTimeoutError::Timeout) => {
                let killed = kill_all(&mut groups);
                if killed > 0 {
                    eprintln!(
                        "zf-agent-node watchdog: the node was silent for {starve:?} (stopped or starved); killed {killed} process group(s) of drivers and their spawner, so they cannot run beside another node's"
                    );
                }
                fed = Instant::now();
            }
        }
    }
}

/// Applies one line of the node's pipe to the set of running groups.
fn apply(groups: &mut BTreeSet<i32>, line: &str) {
    let (sign, number) = line.split_at(line.len().min(1));
    let Ok(pgid) = number.trim().parse::<i32>() else {
        return;
    };
    if pgid <= 1 {
        return;
    }
    match sign {
        "+" => {
            groups.insert(pgid);
        }
        "-" => {
            groups.remove(&pgid);
        }
        _ => {}
    }
}

/// SIGKILLs every group, twice over: a shim that was not yet the leader of
/// its own group when the first pass reached that group, and left the
/// spawner's group before the first pass reached that one, is the leader
/// of its group by the second pass.
fn kill_all(groups: &mut BTreeSet<i32>) -> usize {
    for _ in 0..2 {
        for pgid in groups.iter() {
            let _ = killpg(Pid::from_raw(*pgid), Signal::SIGKILL);
        }
    }
    let n = groups.len();
    groups.clear();
    n
}

/// The node's end of the watchdog's pipe.
#[derive(Clone)]
pub struct Watchdog {
    lines: tokio_mpsc::UnboundedSender<String>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot start the driver watchdog ({program}): {source}; without it drivers could outlive this node")]
pub struct StartError {
    program: String,
    #[source]
    source: std::io::Error,
}

impl Watchdog {
    /// Starts the watchdog process (`program watchdog --starve-ms N`) and the
    /// tasks that feed it every quarter of `starve`.
    pub fn start(program: &Path, starve: Duration) -> Result<Self, StartError> {
        let mut child = tokio::process::Command::new(program)
            .arg("watchdog")
            .arg("--starve-ms")
            .arg(starve.as_millis().to_string())
            .process_group(0)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(false)
            .spawn()
            .map_err(|source| StartError {
                program: program.display().to_string(),
                source,
            })?;
        let mut stdin = child.stdin.take().ok_or_else(|| StartError {
            program: program.display().to_string(),
            source: std::io::Error::other("no stdin pipe"),
        })?;
        let (lines, mut rx) = tokio_mpsc::unbounded_channel::<String>();
        tokio::spawn(async move {
            while let Some(line) = rx.recv().await {
                if let Err(e) = stdin.write_all(line.as_bytes()).await {
                    tracing::error!(error = %e, "the driver watchdog is gone: drivers of this node could outlive it; restart the node");
                    return;
                }
            }
        });
        // Reaps the watchdog if it ever exits while the node runs.
        tokio::spawn(async move {
            if let Ok(status) = child.wait().await {
                tracing::error!(%status, "the driver watchdog exited; restart the node");
            }
        });
        // Fed from the node's runtime: a stalled node stops feeding it. Not
        // tied to shutdown, so drivers keep their TERM grace while stopping.
        let feed = lines.clone();
        let every = (starve / 4).max(Duration::from_millis(5));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tick.tick().await;
                if feed.send(".\n".into()).is_err() {
                    return;
                }
            }
        });
        Ok(Self { lines })
    }

    /// Announces a process group (a driver's, or the spawner's) until the
    /// guard is dropped.
    pub fn watch(&self, pgid: i32) -> Watched {
        let _ = self.lines.send(format!("+{pgid}\n"));
        Watched {
            lines: self.lines.clone(),
            pgid,
        }
    }
}

/// A process group known to the watchdog; dropped once it is dead.
pub struct Watched {
    lines: tokio_mpsc::UnboundedSender<String>,
    pgid: i32,
}

impl Drop for Watched {
    fn drop(&mut self) {
        let _ = self.lines.send(format!("-{}\n", self.pgid));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pipe_adds_and_removes_groups_and_ignores_noise() {
        let mut groups = BTreeSet::new();
        for line in ["+42", "+43", ".", "-42", "+1", "+x", "", "-", "+-5"] {
            apply(&mut groups, line);
        }
        assert_eq!(groups.into_iter().collect::<Vec<_>>(), vec![43]);
    }
}
