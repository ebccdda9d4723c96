//! Runs a module's entrypoint as a driver process (SPEC §3): clean
//! environment, own process group, JSON on stdin, JSON lines on stdout,
//! bounded output, a timeout, and the last 4 KiB of stderr for the error.
//! Whatever way the driver ends, its whole process group is killed, so
//! nothing it started outlives it; if the node itself dies or stalls, the
//! watchdog (`watchdog.rs`) and the parent-death signal do it. The process
//! starts through the node's launcher (`launcher.rs`). Output goes
//! to a bounded channel: a consumer that cannot keep up (JetStream slow to
//! acknowledge) stops the reading, so the driver blocks on its full pipe
//! instead of the node buffering without bound.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use crate::launcher::DriverProcess;
use nix::sys::signal::{killpg, Signal};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio_util::sync::CancellationToken;
use zerofoot_shared::telemetry::{micros_since, TIMING};

/// Longest stdout line a driver may write.
pub const MAX_LINE_BYTES: usize = 1024 * 1024;
/// Most stdout a sync operation may write.
pub const MAX_SYNC_OUTPUT_BYTES: u64 = 16 * 1024 * 1024;
/// How much of stderr an error message carries.
const STDERR_TAIL_BYTES: usize = 4096;
/// How long a cancelled driver gets between SIGTERM and SIGKILL.
const TERM_GRACE: Duration = Duration::from_secs(5);

pub use zerofoot_shared::protocol::{parse_line, Output};

/// Logs a driver's `log` line at its level (already masked by the caller).
pub fn log_line(level: &str, msg: &str) {
    match level {
        "error" => tracing::error!(driver = %msg),
        "warn" => tracing::warn!(driver = %msg),
        _ => tracing::info!(driver = %msg),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("cannot start the driver {program}: {message}")]
    Spawn { program: String, message: String },
    #[error("the driver ran past its timeout of {0} ms and was killed{1}")]
    Timeout(u64, String),
    #[error("the driver wrote a stdout line longer than {0} bytes and was stopped")]
    LineTooLong(usize),
    #[error("the driver wrote more than {0} bytes to stdout and was stopped")]
    TooMuchOutput(u64),
    #[error("the driver {0}{1}")]
    Failed(String, String),
    #[error("the driver was cancelled")]
    Cancelled,
    #[error("reading the driver's output failed: {0}")]
    Io(String),
}

impl DriverError {
    /// A short label for metrics.
    fn reason(&self) -> &'static str {
        match self {
            Self::Spawn { .. } => "spawn",
            Self::Timeout(..) => "timeout",
            Self::LineTooLong(_) | Self::TooMuchOutput(_) => "output_limit",
            Self::Failed(..) => "exit",
            Self::Cancelled => "cancelled",
            Self::Io(_) => "io",
        }
    }
}

/// How to run one driver.
pub struct Invocation {
    pub program: PathBuf,
    pub operation: String,
    pub scratch: PathBuf,
    pub env: Vec<(String, String)>,
    pub stdin: Vec<u8>,
    /// When set, stdin is written only once this fires, so the process can
    /// start while its operation is still being recorded; if the sender is
    /// dropped instead, the driver gets no input at all.
    pub stdin_after: Option<tokio::sync::oneshot::Receiver<()>>,
    pub timeout: Option<Duration>,
    pub max_output: Option<u64>,
    /// Starts the process (and tells the watchdog of it).
    pub launcher: crate::launcher::Launcher,
    /// What confines it.
    pub sandbox: crate::shim_spec::Sandbox,
}

/// The environment every driver starts with, besides the `ZF_*` variables.
pub fn base_env(scratch: &std::path::Path) -> Vec<(String, String)> {
    vec![
        (
            "PATH".into(),
            std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into()),
        ),
        ("HOME".into(), scratch.display().to_string()),
        // The sandbox lets a driver write its scratch dir, not /tmp.
        ("TMPDIR".into(), scratch.display().to_string()),
        (
            "LANG".into(),
            std::env::var("LANG").unwrap_or_else(|_| "C.UTF-8".into()),
        ),
    ]
}

/// Runs the driver to its end, sending every output line to `outputs` in
/// order. `Ok` means exit status 0.
pub async fn run(
    inv: Invocation,
    cancel: &CancellationToken,
    outputs: tokio::sync::mpsc::Sender<Output>,
) -> Result<(), DriverError> {
    metrics::counter!("zf_driver_starts_total").increment(1);
    let _running = Running::start();
    let ended = run_to_end(inv, cancel, outputs).await;
    if let Err(e) = &ended {
        if !matches!(e, DriverError::Cancelled) {
            metrics::counter!("zf_driver_failures_total", "reason" => e.reason()).increment(1);
        }
    }
    ended
}

/// Counts a driver in `zf_drivers_running` while it lives.
struct Running;

impl Running {
    fn start() -> Self {
        metrics::gauge!("zf_drivers_running").increment(1.0);
        Self
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        metrics::gauge!("zf_drivers_running").decrement(1.0);
    }
}

async fn run_to_end(
    inv: Invocation,
    cancel: &CancellationToken,
    outputs: tokio::sync::mpsc::Sender<Output>,
) -> Result<(), DriverError> {
    let began = std::time::Instant::now();
    let deadline = inv.timeout.map(|t| tokio::time::Instant::now() + t);
    let sleep_until_deadline = || async move {
        match deadline {
            Some(d) => tokio::time::sleep_until(d).await,
            None => std::future::pending().await,
        }
    };
    let start = inv.launcher.start(
        &inv.program,
        &inv.operation,
        &inv.scratch,
        &inv.env,
        &inv.sandbox,
    );
    // A start given up here is taken back, or its shim killed.
    let mut child = tokio::select! {
        started = start => started.map_err(|e| DriverError::Spawn {
            program: inv.program.display().to_string(),
            message: e.to_string(),
        })?,
        _ = cancel.cancelled() => return Err(DriverError::Cancelled),
        _ = sleep_until_deadline() => {
            return Err(DriverError::Timeout(inv.timeout.map(|t| t.as_millis() as u64).unwrap_or(0), String::new()))
        }
    };
    let spawned_us = micros_since(began);
    let mut stdout_closed_us = 0;
    let mut exit_status_us = 0;
    // The shim makes its pid the driver's process group; until it has (a
    // moment after the spawn), only the process itself can be signalled.
    let group = child.id();
    let _watched = inv
        .launcher
        .watchdog()
        .map(|watchdog| watchdog.watch(group.as_raw()));
    let kill_group = |child: &mut DriverProcess, signal: Signal| {
        if killpg(group, signal) == Err(nix::errno::Errno::ESRCH) {
            // No group yet: the shim has not started its session. Its
            // end not heard of either, so the pid is still the shim's.
            child.start_kill();
        }
    };

    if let Some(mut stdin) = child.stdin.take() {
        let input = inv.stdin;
        let gate = inv.stdin_after;
        // A driver that never reads stdin must not block us.
        tokio::spawn(async move {
            if let Some(gate) = gate {
                if gate.await.is_err() {
                    return;
                }
            }
            let _ = stdin.write_all(&input).await;
        });
    }
    let stderr_tail = match child.stderr.take() {
        Some(stderr) => tokio::spawn(read_tail(stderr)),
        None => tokio::spawn(async { String::new() }),
    };
    let Some(stdout) = child.stdout.take() else {
        kill_group(&mut child, Signal::SIGKILL);
        return Err(DriverError::Io("no stdout pipe".into()));
    };
    let mut reader = BufReader::new(stdout);

    let mut line = Vec::new();
    let mut total = 0u64;
    let mut exit: Option<ExitStatus> = None;
    let outcome: Result<(), DriverError> = loop {
        tokio::select! {
            _ = cancel.cancelled() => {
                kill_group(&mut child, Signal::SIGTERM);
                if tokio::time::timeout(TERM_GRACE, child.wait()).await.is_err() {
                    kill_group(&mut child, Signal::SIGKILL);
                }
                break Err(DriverError::Cancelled);
            }
            _ = sleep_until_deadline() => {
                kill_group(&mut child, Signal::SIGKILL);
                break Err(DriverError::Timeout(inv.timeout.map(|t| t.as_millis() as u64).unwrap_or(0), String::new()));
            }
            status = child.wait(), if exit.is_none() => {
                exit_status_us = micros_since(began);
                match status {
                    Ok(status) => exit = Some(status),
                    Err(e) => break Err(DriverError::Io(e.to_string())),
                }
                // The driver is gone: so is everything it started. Output
                // already in the pipe is still read below.
                kill_group(&mut child, Signal::SIGKILL);
            }
            read = next_line(&mut reader, &mut line) => {
                match read {
                    Err(e) => break Err(e),
                    Ok(None) => {
                        stdout_closed_us = micros_since(began);
                        if exit.is_none() {
                            // stdout closed before exit: wait for the exit status.
                            let status = child.wait().await;
                            exit_status_us = micros_since(began);
                            match status {
                                Ok(status) => exit = Some(status),
                                Err(e) => break Err(DriverError::Io(e.to_string())),
                            }
                            kill_group(&mut child, Signal::SIGKILL);
                        }
                        break Ok(());
                    }
                    Ok(Some(bytes)) => {
                        total += bytes.len() as u64 + 1;
                        if inv.max_output.is_some_and(|max| total > max) {
                            break Err(DriverError::TooMuchOutput(inv.max_output.unwrap_or(0)));
                        }
                        if let Some(output) = parse_line(&bytes) {
                            // Waiting here is the backpressure; a cancel
                            // still gets through.
                            tokio::select! {
                                sent = outputs.send(output) => {
                                    if sent.is_err() {
                                        break Err(DriverError::Io("nobody reads the driver's output any more".into()));
                                    }
                                }
                                _ = cancel.cancelled() => continue,
                            }
                        }
                    }
                }
            }
        }
    };
    if outcome.is_err() {
        kill_group(&mut child, Signal::SIGKILL);
        let _ = child.wait().await;
    }
    tracing::debug!(
        target: TIMING,
        spawned_us,
        stdout_closed_us,
        exit_status_us,
        "driver ran"
    );
    let tail = stderr_tail.await.unwrap_or_default();
    if !tail.trim().is_empty() {
        // Kept in the operation's log too, whether the driver failed or not.
        let line = Output::Log {
            level: "stderr".into(),
            msg: tail.trim_end().to_string(),
        };
        let _ = tokio::time::timeout(TERM_GRACE, outputs.send(line)).await;
    }
    let with_tail = |tail: &str| {
        if tail.trim().is_empty() {
            String::new()
        } else {
            format!("; stderr: {}", tail.trim_end())
        }
    };
    match outcome {
        Err(DriverError::Timeout(ms, _)) => Err(DriverError::Timeout(ms, with_tail(&tail))),
        Err(e) => Err(e),
        Ok(()) => match exit {
            Some(status) if status.success() => Ok(()),
            Some(status) => Err(DriverError::Failed(describe(status), with_tail(&tail))),
            None => Err(DriverError::Io("no exit status".into())),
        },
    }
}

fn describe(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exited with status {code}"),
        (None, Some(signal)) => format!("was killed by signal {signal}"),
        _ => "ended abnormally".into(),
    }
}

/// Reads one line without holding more than [`MAX_LINE_BYTES`]. Partial
/// progress stays in `line`, so the future may be dropped and called again.
async fn next_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    line: &mut Vec<u8>,
) -> Result<Option<Vec<u8>>, DriverError> {
    loop {
        let available = reader
            .fill_buf()
            .await
            .map_err(|e| DriverError::Io(e.to_string()))?;
        if available.is_empty() {
            return Ok(if line.is_empty() {
                None
            } else {
                Some(std::mem::take(line))
            });
        }
        if let Some(pos) = available.iter().position(|b| *b == b'\n') {
            line.extend_from_slice(&available[..pos]);
            reader.consume(pos + 1);
            if line.len() > MAX_LINE_BYTES {
                line.clear();
                return Err(DriverError::LineTooLong(MAX_LINE_BYTES));
            }
            return Ok(Some(std::mem::take(line)));
        }
        let n = available.len();
        line.extend_from_slice(available);
        reader.consume(n);
        if line.len() > MAX_LINE_BYTES {
            line.clear();
            return Err(DriverError::LineTooLong(MAX_LINE_BYTES));
        }
    }
}

/// Keeps the last [`STDERR_TAIL_BYTES`] of a stream.
async fn read_tail(mut stream: impl tokio::io::AsyncRead + Unpin) -> String {
    let mut tail: VecDeque<u8> = VecDeque::with_capacity(STDERR_TAIL_BYTES);
    let mut buf = [0u8; 8192];
    while let Ok(n) = stream.read(&mut buf).await {
        if n == 0 {
            break;
        }
        tail.extend(&buf[..n]);
        let excess = tail.len().saturating_sub(STDERR_TAIL_BYTES);
        tail.drain(..excess);
    }
    String::from_utf8_lossy(&tail.into_iter().collect::<Vec<u8>>()).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn long_lines_are_refused_without_holding_them() {
        let mut data = vec![b'x'; MAX_LINE_BYTES + 10];
        data.push(b'\n');
        let mut reader = BufReader::new(data.as_slice());
        let mut line = Vec::new();
        assert!(matches!(
            next_line(&mut reader, &mut line).await,
            Err(DriverError::LineTooLong(_))
        ));
        let mut reader = BufReader::new(&b"a\nb"[..]);
        assert_eq!(
            next_line(&mut reader, &mut line).await.ok().flatten(),
            Some(b"a".to_vec())
        );
        assert_eq!(
            next_line(&mut reader, &mut line).await.ok().flatten(),
            Some(b"b".to_vec())
        );
        assert_eq!(next_line(&mut reader, &mut line).await.ok().flatten(), None);
    }

    /// A driver that answers with the first line of its input (or "none").
    async fn run_echo(gate: Option<tokio::sync::oneshot::Receiver<()>>) -> Option<Output> {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let program = dir.path().join("run");
        std::fs::write(
            &program,
            "#!/bin/sh\nread -r line || line=none\nprintf '{\"type\":\"result\",\"data\":\"%s\"}\\n' \"$line\"\n",
        )
        .expect("write driver");
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let invocation = Invocation {
            program,
            operation: "go".into(),
            scratch: dir.path().to_path_buf(),
            env: base_env(dir.path()),
            stdin: b"fed\n".to_vec(),
            stdin_after: gate,
            timeout: Some(Duration::from_secs(10)),
            max_output: None,
            launcher: crate::launcher::tests::launcher(),
            sandbox: crate::shim_spec::Sandbox::default(),
        };
        let (tx, mut rx) = tokio::sync::mpsc::channel(8);
        run(invocation, &CancellationToken::new(), tx)
            .await
            .expect("driver ran");
        let mut result = None;
        while let Some(o) = rx.recv().await {
            result = Some(o);
        }
        result
    }

    #[tokio::test]
    async fn stdin_waits_for_its_gate_and_a_dropped_gate_feeds_nothing() {
        let (open, gate) = tokio::sync::oneshot::channel();
        let run = tokio::spawn(run_echo(Some(gate)));
        open.send(()).expect("driver waiting");
        assert_eq!(
            run.await.expect("run"),
            Some(Output::Result(serde_json::Value::from("fed")))
        );
        let (closed, gate) = tokio::sync::oneshot::channel::<()>();
        drop(closed);
        assert_eq!(
            run_echo(Some(gate)).await,
            Some(Output::Result(serde_json::Value::from("none")))
        );
        assert_eq!(
            run_echo(None).await,
            Some(Output::Result(serde_json::Value::from("fed")))
        );
    }
}
