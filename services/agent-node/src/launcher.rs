//! How this node starts driver processes: through its spawner, one
//! `zf-driver-shim --serve` process started with `posix_spawn` the first
//! time a driver is needed (and again if it ever dies), which forks a shim
//! for each driver. The node's address space is never forked (a fork copies
//! the page tables of everything the node holds, and its cost grows with
//! the mirror), no shim costs an exec, and every setup step runs in the
//! shim, a single-threaded process where it is safe. The watchdog hears of
//! each driver's process group while it runs.

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;

use nix::sys::signal::Signal;
use nix::sys::socket::{socketpair, AddressFamily, SockFlag, SockType};
use nix::unistd::Pid;
use tokio::io::unix::AsyncFd;
use tokio::net::unix::pipe;
use tokio::sync::oneshot;

use crate::shim_spec::{receive, Sandbox, SpawnReply, SpawnRequest, MAX_SPAWN_REQUEST};
use crate::watchdog::Watchdog;

/// The shim's file name, next to `zf-agent-node` unless `--driver-shim` says.
pub const SHIM_NAME: &str = "zf-driver-shim";

#[derive(Debug, thiserror::Error)]
#[error("cannot use {path} to start drivers: {reason}; build it with the node (`cargo build --bins`) and keep it next to zf-agent-node, or name it with --driver-shim")]
pub struct LauncherError {
    path: String,
    reason: String,
}

/// The shim's path: `configured`, or next to this program; checked to be
/// an executable file.
pub fn locate_shim(configured: Option<&Path>) -> Result<PathBuf, LauncherError> {
    let shim = match configured {
        Some(path) => path.to_path_buf(),
        None => std::env::current_exe()
            .map_err(|e| LauncherError {
                path: SHIM_NAME.into(),
                reason: format!("cannot find this program: {e}"),
            })?
            .with_file_name(SHIM_NAME),
    };
    let executable = std::fs::metadata(&shim)
        .map(|m| {
            use std::os::unix::fs::PermissionsExt;
            m.is_file() && m.permissions().mode() & 0o111 != 0
        })
        .map_err(|e| LauncherError {
            path: shim.display().to_string(),
            reason: e.to_string(),
        })?;
    if !executable {
        return Err(LauncherError {
            path: shim.display().to_string(),
            reason: "not an executable file".into(),
        });
    }
    Ok(shim)
}

#[derive(Clone)]
pub struct Launcher {
    shim: PathBuf,
    watchdog: Option<Watchdog>,
    spawner: Arc<tokio::sync::Mutex<Option<Arc<Spawner>>>>,
}

#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct SpawnError {
    message: String,
    /// The request never reached the spawner: a new spawner may take it.
    unsent: bool,
}

impl SpawnError {
    fn new(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            unsent: false,
        }
    }

    fn unsent(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            unsent: true,
        }
    }
}

impl Launcher {
    pub fn new(shim: PathBuf, watchdog: Option<Watchdog>) -> Self {
        Self {
            shim,
            watchdog,
            spawner: Arc::default(),
        }
    }

    pub fn watchdog(&self) -> Option<&Watchdog> {
        self.watchdog.as_ref()
    }

    /// Starts `program operation` with exactly `env`, in `dir`, confined by
    /// `sandbox`, with piped stdio. A request that a spawner dying at that
    /// moment never read goes to a new one.
    pub async fn start(
        &self,
        program: &Path,
        operation: &str,
        dir: &Path,
        env: &[(String, String)],
        sandbox: &Sandbox,
    ) -> Result<DriverProcess, SpawnError> {
        let request = SpawnRequest {
            program: program.to_path_buf(),
            args: vec![operation.to_string()],
            dir: dir.to_path_buf(),
            env: env.to_vec(),
            sandbox: sandbox.clone(),
        };
        let mut retried = false;
        loop {
            let spawner = self.spawner().await?;
            match Self::start_through(&spawner, &request).await {
                Err(e) if e.unsent && !retried => {
                    spawner.mark_gone(&e.message);
                    retried = true;
                }
                started => return started,
            }
        }
    }

    async fn start_through(
        spawner: &Spawner,
        request: &SpawnRequest,
    ) -> Result<DriverProcess, SpawnError> {
        let pipe = || {
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
                .map_err(|e| SpawnError::new(format!("cannot make the driver's pipes: {e}")))
        };
        let (stdin_read, stdin_write) = pipe()?;
        let (stdout_read, stdout_write) = pipe()?;
        let (stderr_read, stderr_write) = pipe()?;
        let shim = spawner
            .start(request, [stdin_read, stdout_write, stderr_write])
            .await?;
        let io = |e: std::io::Error| {
            SpawnError::new(format!("cannot read or write the driver's pipes: {e}"))
        };
        Ok(DriverProcess {
            stdin: Some(pipe::Sender::from_owned_fd(stdin_write).map_err(io)?),
            stdout: Some(pipe::Receiver::from_owned_fd(stdout_read).map_err(io)?),
            stderr: Some(pipe::Receiver::from_owned_fd(stderr_read).map_err(io)?),
            shim,
        })
    }

    /// The running spawner, started anew if there is none or it died.
    async fn spawner(&self) -> Result<Arc<Spawner>, SpawnError> {
        let mut current = self.spawner.lock().await;
        if let Some(spawner) = current.as_ref().filter(|s| s.is_alive()) {
            return Ok(spawner.clone());
        }
        let spawner = Spawner::spawn(&self.shim, self.watchdog.as_ref())?;
        *current = Some(spawner.clone());
        Ok(spawner)
    }
}

/// One driver's shim with its stdio, as the node holds it.
pub struct DriverProcess {
    shim: Shim,
    pub stdin: Option<pipe::Sender>,
    pub stdout: Option<pipe::Receiver>,
    pub stderr: Option<pipe::Receiver>,
}

impl DriverProcess {
    /// The shim's pid, also its process group once it has made it.
    pub fn id(&self) -> Pid {
        self.shim.pid
    }

    /// How the shim ended (as its driver ended). Cancel-safe.
    pub async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        self.shim.wait().await
    }

    /// SIGKILLs the shim itself (and nothing else, even once it is reaped:
    /// the signal goes through its pidfd).
    pub fn start_kill(&mut self) {
        self.shim.start_kill();
    }
}

/// A shim the spawner started: its pid, a pidfd for it (which no other
/// process can ever answer to), and its end. Killed when dropped, so a
/// shim nobody holds any more (its start was given up) does not run on.
struct Shim {
    pid: Pid,
    pidfd: OwnedFd,
    exit: Option<oneshot::Receiver<ExitStatus>>,
    status: Option<ExitStatus>,
}

impl Shim {
    async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        let Some(exit) = self.exit.as_mut() else {
            return Err(std::io::Error::other("the driver spawner lost this driver"));
        };
        let ended = exit.await;
        self.exit = None;
        let status =
            ended.map_err(|_| std::io::Error::other("the driver spawner lost this driver"))?;
        self.status = Some(status);
        Ok(status)
    }

    fn start_kill(&mut self) {
        if self.status.is_none() {
            // SAFETY: the pidfd is open and owned here; a signal sent
            // through it reaches this shim or, once it is gone, nobody.
            unsafe {
                nix::libc::syscall(
                    nix::libc::SYS_pidfd_send_signal,
                    self.pidfd.as_raw_fd(),
                    Signal::SIGKILL as i32,
                    std::ptr::null::<nix::libc::siginfo_t>(),
                    0u32,
                );
            }
        }
    }
}

impl Drop for Shim {
    fn drop(&mut self) {
        self.start_kill();
    }
}

/// The node's end of a running spawner.
struct Spawner {
    pid: u32,
    socket: AsyncFd<OwnedFd>,
    /// Held while a request is sent, so the pending starts stay in the
    /// order the spawner reads them.
    sending: tokio::sync::Mutex<()>,
    state: std::sync::Mutex<SpawnerState>,
}

#[derive(Default)]
struct SpawnerState {
    /// One per request sent and not yet answered, oldest first.
    starts: VecDeque<oneshot::Sender<Result<Shim, String>>>,
    /// One per shim started and not yet ended.
    exits: HashMap<i32, oneshot::Sender<ExitStatus>>,
    /// Why the spawner is gone, once it is.
    gone: Option<String>,
}

impl Spawner {
    /// Starts a spawner, its group announced to `watchdog` until it is
    /// reaped: until a shim starts its own session, it is in that group.
    fn spawn(shim: &Path, watchdog: Option<&Watchdog>) -> Result<Arc<Self>, SpawnError> {
        let cannot = |what: &str, e: &dyn std::fmt::Display| {
            SpawnError::new(format!(
                "cannot start the driver spawner ({}): {what}: {e}",
                shim.display()
            ))
        };
        let (node_end, spawner_end) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|e| cannot("socketpair", &e))?;
        let flags = nix::fcntl::fcntl(&node_end, nix::fcntl::FcntlArg::F_GETFL)
            .map_err(|e| cannot("fcntl", &e))?;
        let flags = nix::fcntl::OFlag::from_bits_retain(flags) | nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(&node_end, nix::fcntl::FcntlArg::F_SETFL(flags))
            .map_err(|e| cannot("fcntl", &e))?;
        // Spawned from a runtime thread, which lives as long as the node:
        // the spawner's death signal is tied to it. Its own process group
        // keeps a terminal's ^C away from it; it needs no environment.
        let mut child = tokio::process::Command::new(shim)
            .arg("--serve")
            .arg(std::process::id().to_string())
            .env_clear()
            .process_group(0)
            .stdin(Stdio::from(spawner_end))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(false)
            .spawn()
            .map_err(|e| cannot("spawn", &e))?;
        // SAFETY: the descriptor is owned here and moves into the AsyncFd,
        // which holds it open, as it is, until it is dropped.
        let socket = unsafe { AsyncFd::register(node_end) }.map_err(|e| cannot("register", &e))?;
        let spawner = Arc::new(Self {
            pid: child.id().unwrap_or_default(),
            socket,
            sending: tokio::sync::Mutex::new(()),
            state: std::sync::Mutex::default(),
        });
        tokio::spawn(spawner.clone().read_replies());
        let watched = child
            .id()
            .zip(watchdog)
            .map(|(pid, watchdog)| watchdog.watch(pid as i32));
        tokio::spawn(async move {
            let status = child.wait().await;
            drop(watched);
            tracing::debug!(?status, "the driver spawner exited");
        });
        Ok(spawner)
    }

    fn is_alive(&self) -> bool {
        self.lock().gone.is_none()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SpawnerState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Marks this spawner as gone (if it is not already), so the next start
    /// makes a new one.
    fn mark_gone(&self, why: &str) {
        self.lock().gone.get_or_insert_with(|| why.to_string());
    }

    /// Sends one request with the driver's end of its three pipes; the
    /// shim, once started.
    async fn start(&self, request: &SpawnRequest, stdio: [OwnedFd; 3]) -> Result<Shim, SpawnError> {
        let bytes = serde_json::to_vec(request)
            .map_err(|e| SpawnError::new(format!("cannot encode the driver's request: {e}")))?;
        if bytes.len() > MAX_SPAWN_REQUEST {
            return Err(SpawnError::new(format!(
                "the driver's request is {} bytes, over the {MAX_SPAWN_REQUEST} a spawner reads: its environment is too large",
                bytes.len()
            )));
        }
        let (answer, answered) = oneshot::channel();
        {
            let _sending = self.sending.lock().await;
            {
                let mut state = self.lock();
                if let Some(why) = &state.gone {
                    return Err(SpawnError::unsent(format!(
                        "the driver spawner is gone: {why}"
                    )));
                }
                state.starts.push_back(answer);
            }
            // Until the request is sent, its place in the queue is taken
            // back, however this future ends.
            let mut unsent = Unsent {
                spawner: self,
                sent: false,
            };
            let fds = stdio.each_ref().map(|fd| fd.as_raw_fd());
            loop {
                let mut ready = self.socket.writable().await.map_err(|e| {
                    SpawnError::unsent(format!("cannot write to the driver spawner: {e}"))
                })?;
                let sent = ready.try_io(|socket| {
                    crate::shim_spec::send(socket.as_raw_fd(), &bytes, &fds)
                        .map_err(std::io::Error::from)
                });
                match sent {
                    Ok(Ok(_)) => break,
                    Ok(Err(e)) => {
                        return Err(SpawnError::unsent(format!(
                            "cannot write to the driver spawner: {e}"
                        )))
                    }
                    Err(_would_block) => continue,
                }
            }
            unsent.sent = true;
        }
        drop(stdio);
        // If this future is dropped from here on, the shim (once started)
        // is dropped with the channel, which kills it.
        match answered.await {
            Ok(Ok(shim)) => Ok(shim),
            Ok(Err(reason)) => Err(SpawnError::new(reason)),
            Err(_) => Err(SpawnError::new("the driver spawner is gone")),
        }
    }

    /// Reads the spawner's replies until it is gone, then fails whatever
    /// waits on it: its shims died with it.
    async fn read_replies(self: Arc<Self>) {
        let mut buffer = vec![0u8; 64 * 1024];
        let why = loop {
            let mut ready = match self.socket.readable().await {
                Ok(ready) => ready,
                Err(e) => break format!("cannot read from it: {e}"),
            };
            let read = ready.try_io(|socket| {
                receive(socket.as_raw_fd(), &mut buffer).map_err(std::io::Error::from)
            });
            let datagram = match read {
                Err(_would_block) => continue,
                Ok(Err(e)) => break format!("cannot read from it: {e}"),
                Ok(Ok(datagram)) => datagram,
            };
            if datagram.bytes == 0 {
                break "it exited".to_string();
            }
            if datagram.truncated {
                break "it sent a reply too large to read".to_string();
            }
            match serde_json::from_slice::<SpawnReply>(&buffer[..datagram.bytes]) {
                Ok(reply) => {
                    if let Err(e) = self.take(reply, datagram.fds.into_iter().next()) {
                        break e;
                    }
                }
                Err(e) => break format!("it said something unreadable: {e}"),
            }
        };
        tracing::warn!(reason = %why, spawner = self.pid, "the driver spawner is gone; the drivers it started were killed with it, and the next driver starts a new spawner");
        let mut state = self.lock();
        state.gone = Some(why.clone());
        for start in state.starts.drain(..) {
            let _ = start.send(Err(format!("the driver spawner is gone: {why}")));
        }
        for (_, exit) in state.exits.drain() {
            let _ = exit.send(ExitStatus::from_raw(Signal::SIGKILL as i32));
        }
        drop(state);
        // Dropping the socket lets a spawner that still runs see the end.
        let _ = nix::sys::socket::shutdown(
            self.socket.get_ref().as_raw_fd(),
            nix::sys::socket::Shutdown::Both,
        );
    }

    fn take(&self, reply: SpawnReply, pidfd: Option<OwnedFd>) -> Result<(), String> {
        let mut state = self.lock();
        match reply {
            SpawnReply::Started { pid } => {
                let pidfd = pidfd.ok_or(format!("it started shim {pid} without its pidfd"))?;
                let (ended, end) = oneshot::channel();
                state.exits.insert(pid, ended);
                let shim = Shim {
                    pid: Pid::from_raw(pid),
                    pidfd,
                    exit: Some(end),
                    status: None,
                };
                // Nobody waiting for it any more drops it, which kills it.
                if let Some(waiting) = state.starts.pop_front() {
                    let _ = waiting.send(Ok(shim));
                }
            }
            SpawnReply::Refused { reason } => {
                if let Some(waiting) = state.starts.pop_front() {
                    let _ = waiting.send(Err(reason));
                }
            }
            SpawnReply::Exited { pid, status } => {
                if let Some(ended) = state.exits.remove(&pid) {
                    let _ = ended.send(ExitStatus::from_raw(status));
                }
            }
        }
        Ok(())
    }
}

/// Takes back the last queued start unless its request was sent.
struct Unsent<'a> {
    spawner: &'a Spawner,
    sent: bool,
}

impl Drop for Unsent<'_> {
    fn drop(&mut self) {
        if !self.sent {
            // Only the holder of `sending` queues starts: the last is ours.
            self.spawner.lock().starts.pop_back();
        }
    }
}

#[cfg(test)]
pub mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A launcher with the shim cargo built next to this test binary
    /// (target/<profile>/), and no watchdog.
    pub fn launcher() -> Launcher {
        let exe = std::env::current_exe().expect("test binary path");
        let profile_dir = exe
            .parent()
            .and_then(|deps| deps.parent())
            .expect("target/<profile>/deps");
        let shim = locate_shim(Some(&profile_dir.join(SHIM_NAME)))
            .expect("zf-driver-shim built (cargo build --bins)");
        Launcher::new(shim, None)
    }

    /// The pid of the launcher's spawner, if it has one.
    async fn spawner_pid(launcher: &Launcher) -> Option<u32> {
        launcher.spawner.lock().await.as_ref().map(|s| s.pid)
    }

    /// A driver script in `dir` that runs `body`.
    fn script(dir: &Path, body: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let program = dir.join("run");
        std::fs::write(&program, format!("#!/bin/sh\n{body}\n")).expect("write driver");
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        program
    }

    async fn read_all(from: Option<pipe::Receiver>) -> String {
        let mut text = String::new();
        from.expect("piped")
            .read_to_string(&mut text)
            .await
            .expect("read pipe");
        text
    }

    /// Whether `pid` has ended (gone, or a zombie nobody reaped yet).
    fn ended(pid: i32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|stat| {
                stat.rsplit_once(')')
                    .and_then(|(_, rest)| rest.split_whitespace().next())
                    == Some("Z")
            })
            .unwrap_or(true)
    }

    /// The driver's first line, and its stdout still open for the rest.
    async fn first_line(
        driver: &mut DriverProcess,
    ) -> (String, tokio::io::BufReader<pipe::Receiver>) {
        let mut stdout = tokio::io::BufReader::new(driver.stdout.take().expect("stdout"));
        let mut first = String::new();
        tokio::io::AsyncBufReadExt::read_line(&mut stdout, &mut first)
            .await
            .expect("the driver's first line");
        (first, stdout)
    }

    /// Runs `test`, failing it if it hangs (a pipe end left open would).
    async fn within_a_minute(what: &str, test: impl std::future::Future<Output = ()>) {
        tokio::time::timeout(std::time::Duration::from_secs(60), test)
            .await
            .unwrap_or_else(|_| panic!("{what}: still not done after a minute"));
    }

    #[tokio::test]
    async fn a_shim_that_cannot_start_its_driver_says_why_and_the_next_one_starts() {
        within_a_minute("two starts through one spawner", async {
            let launcher = launcher();
            let dir = tempfile::tempdir().expect("tempdir");
            let missing = dir.path().join("gone");
            let mut shim = launcher
                .start(
                    Path::new("/bin/true"),
                    "go",
                    &missing,
                    &[],
                    &Sandbox::default(),
                )
                .await
                .expect("the spawner starts a shim");
            let stderr = read_all(shim.stderr.take()).await;
            assert!(
                stderr.contains("cannot enter") && stderr.contains("gone"),
                "the shim says which directory it could not enter: {stderr}"
            );
            assert_eq!(shim.wait().await.expect("its end").code(), Some(127));
            let spawner = spawner_pid(&launcher).await;

            // The next request goes to the same spawner, and its driver
            // gets its argument, exactly the given environment, and its
            // directory.
            let program = script(dir.path(), r#"echo "$1 $GREETING home=$HOME in $(pwd)""#);
            let env = [("GREETING".to_string(), "hello".to_string())];
            let mut driver = launcher
                .start(&program, "go", dir.path(), &env, &Sandbox::default())
                .await
                .expect("the same spawner starts the next");
            let out = read_all(driver.stdout.take()).await;
            assert_eq!(
                out.trim(),
                format!("go hello home= in {}", dir.path().display())
            );
            let status = driver.wait().await.expect("its end");
            assert!(status.success());
            assert_eq!(
                spawner_pid(&launcher).await,
                spawner,
                "one spawner for both"
            );
            // Killing an ended shim changes nothing about how it ended.
            driver.start_kill();
            assert_eq!(driver.wait().await.expect("its end, again"), status);
        })
        .await;
    }

    /// Nothing of the node's is needed for a spawner's shims and drivers to
    /// die with it: each dies with its parent.
    #[tokio::test]
    async fn a_killed_spawner_takes_its_shims_and_drivers_along() {
        within_a_minute("a spawner killed under a driver", async {
            use std::os::unix::process::ExitStatusExt;
            let launcher = launcher();
            let dir = tempfile::tempdir().expect("tempdir");
            let program = script(dir.path(), "echo $$\nexec sleep 600");
            let mut driver = launcher
                .start(&program, "go", dir.path(), &[], &Sandbox::default())
                .await
                .expect("started");
            let (first, _stdout) = first_line(&mut driver).await;
            let driver_pid: i32 = first.trim().parse().expect("a pid");
            let shim_pid = driver.id().as_raw();
            let spawner = spawner_pid(&launcher).await.expect("a spawner runs");
            assert!(!ended(driver_pid) && !ended(shim_pid), "the driver runs");

            nix::sys::signal::kill(Pid::from_raw(spawner as i32), Signal::SIGKILL)
                .expect("SIGKILL the spawner");
            assert_eq!(
                driver.wait().await.expect("its end").signal(),
                Some(9),
                "a driver whose spawner died ends as killed"
            );
            // Polled until the minute is up.
            while !(ended(shim_pid) && ended(driver_pid)) {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }

            let mut next = launcher
                .start(
                    &script(dir.path(), "echo next"),
                    "go",
                    dir.path(),
                    &[],
                    &Sandbox::default(),
                )
                .await
                .expect("the next driver starts");
            assert_eq!(read_all(next.stdout.take()).await.trim(), "next");
            assert!(next.wait().await.expect("its end").success());
            assert_ne!(spawner_pid(&launcher).await, Some(spawner), "a new spawner");
        })
        .await;
    }

    /// Each driver asking for a PID namespace gets a new one, as pid 2 under
    /// an init the spawner forked straight into it; the spawner itself stays
    /// in its own namespace, where the drivers that ask for none start.
    #[tokio::test]
    async fn each_driver_in_a_pid_namespace_gets_its_own_and_dies_with_the_spawner() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: only root may make PID namespaces (CI runs this as root)");
            return;
        }
        within_a_minute("drivers in PID namespaces", async {
            let launcher = launcher();
            let dir = tempfile::tempdir().expect("tempdir");
            let in_namespace = Sandbox {
                pid_namespace: true,
                ..Sandbox::default()
            };
            let program = script(
                dir.path(),
                "echo \"$$ $PPID $(tr '\\0' ' ' </proc/1/cmdline)\"\nexec sleep 600",
            );
            let mut namespaced = Vec::new();
            for _ in 0..2 {
                let mut driver = launcher
                    .start(&program, "go", dir.path(), &[], &in_namespace)
                    .await
                    .expect("started in a namespace");
                let (first, stdout) = first_line(&mut driver).await;
                // The second driver is pid 2 while the first still is: each
                // has a namespace of its own, under its own init.
                assert!(
                    first.starts_with("2 1 ") && first.contains("--serve"),
                    "the driver is pid 2 under an init forked from the spawner, and \
                     its /proc is its namespace's: {first}"
                );
                namespaced.push((driver, stdout));
            }

            let plain = script(dir.path(), "echo $$");
            let mut driver = launcher
                .start(&plain, "go", dir.path(), &[], &Sandbox::default())
                .await
                .expect("started without a namespace");
            let pid: i32 = read_all(driver.stdout.take())
                .await
                .trim()
                .parse()
                .expect("a pid");
            assert!(
                pid > 2 && driver.wait().await.expect("its end").success(),
                "a driver that asks for no namespace starts in the spawner's: pid {pid}"
            );

            let spawner = spawner_pid(&launcher).await.expect("a spawner runs");
            let inits: Vec<i32> = namespaced.iter().map(|(d, _)| d.id().as_raw()).collect();
            let drivers: Vec<i32> = inits
                .iter()
                .map(|init| {
                    std::fs::read_to_string(format!("/proc/{init}/task/{init}/children"))
                        .expect("the init's children")
                        .trim()
                        .parse()
                        .expect("one child: the driver")
                })
                .collect();
            nix::sys::signal::kill(Pid::from_raw(spawner as i32), Signal::SIGKILL)
                .expect("SIGKILL the spawner");
            for (driver, _) in &mut namespaced {
                use std::os::unix::process::ExitStatusExt;
                assert_eq!(
                    driver.wait().await.expect("its end").signal(),
                    Some(9),
                    "an init whose spawner died ends as killed"
                );
            }
            // Polled until the minute is up.
            while !inits.iter().chain(&drivers).all(|pid| ended(*pid)) {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        })
        .await;
    }
}
