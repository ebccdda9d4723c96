//! Connection reuse for resources of kind `ssh`: this node keeps one OpenSSH
//! master connection per resource (`ssh -M`, its control socket in a
//! directory only the node's user may enter, `<data-dir>/ssh/`), so repeated
//! operations against a host pay its handshake once. A run on such a
//! resource gets a [`Relay`]: a socket in its own scratch dir, owned by its
//! driver's uid, that the node joins to the master's socket byte for byte.
//! Drivers speak to it with `ssh -S "$ZF_SSH_CONTROL" -O proxy`, OpenSSH's
//! proxy mode, which passes no file descriptors; the relay lets through the
//! hello and the request for proxy mode only (no forwards opened by the
//! master, no exit), then plain SSH channel traffic for this resource's
//! host. Only a node that gives each driver a uid of its own shares masters
//! (else drivers could reach the sockets themselves), and at most
//! [`MAX_SHARED`] runs share one.
//!
//! The master authenticates with the resource's own secrets (a key goes into
//! an `ssh-agent` of this master that is stopped once it is logged in, a
//! password through `SSH_ASKPASS` from the environment of that one child), so
//! nothing secret touches the disk, and the socket grants a driver nothing its
//! stdin does not already hold. A master that cannot be made is logged and
//! skipped for a while: runs then connect on their own, and report the
//! refusal in their own words. Masters idle for a minute are closed; they die
//! with the node (PR_SET_PDEATHSIG, from a tokio worker thread, which lives
//! as long as the node).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::process::{Child, Command};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use zerofoot_shared::protocol::ResourceRecord;

use crate::shim_spec::DriverUser;

/// The resource kind whose runs get a master.
pub const SSH_KIND: &str = "ssh";
/// A master nobody used for this long is closed.
const IDLE: Duration = Duration::from_secs(60);
/// After a master could not be made, runs connect on their own this long.
const BACKOFF: Duration = Duration::from_secs(30);
/// Longest wait for a master to log in (ssh's own connect timeout is 10 s).
const LOGIN_TIMEOUT: Duration = Duration::from_secs(15);
/// The most masters one node keeps; the least recently used goes first.
const MAX_MASTERS: usize = 256;
/// The most runs sharing one master at once: sshd's default MaxSessions is
/// 10 per connection; runs beyond these connect on their own.
const MAX_SHARED: usize = 8;
/// Prints the secret a child was given in its environment, for ssh-add and
/// ssh; the secret itself is never written anywhere.
const ASKPASS: &str = "#!/bin/sh\nprintf '%s\\n' \"$ZF_SSH_SECRET\"\n";

/// This node's masters, one per resource.
#[derive(Clone)]
pub struct SshMasters {
    root: PathBuf,
    slots: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<Slot>>>>>,
}

#[derive(Default)]
struct Slot {
    master: Option<Master>,
    /// Masters replaced (another config or secret) while runs used them.
    retired: Vec<Master>,
    /// The settings a master could not be made with, and since when.
    failed: Option<(String, Instant)>,
}

struct Master {
    /// What the master was made with: another config or secret, another master.
    settings: String,
    child: Child,
    dir: PathBuf,
    last_used: Instant,
    /// Held by every relay of a running driver: a master in use is not idle.
    users: Arc<()>,
}

impl Master {
    fn socket(&self) -> PathBuf {
        self.dir.join("c")
    }

    fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None)) && self.socket().exists()
    }
}

impl Drop for Master {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let dir = std::mem::take(&mut self.dir);
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn_blocking(move || std::fs::remove_dir_all(dir));
            }
            Err(_) => {
                let _ = std::fs::remove_dir_all(dir);
            }
        }
    }
}

/// How to reach and log in to one resource's host, from its config and secrets.
struct Target {
    host: String,
    port: u16,
    user: String,
    known_hosts: String,
    checking: &'static str,
    auth: Auth,
}

enum Auth {
    Key {
        private_key: String,
        passphrase: String,
    },
    Password(String),
}

impl Target {
    /// `None` when the resource is not a complete ssh resource: its driver
    /// then says what is missing.
    fn of(resource: &ResourceRecord, secrets: &BTreeMap<String, String>) -> Option<Self> {
        if resource.kind != SSH_KIND {
            return None;
        }
        let config = &resource.config;
        let text = |key: &str| config.get(key).and_then(Value::as_str).map(str::to_string);
        let host = text("host").filter(|h| !h.is_empty() && !h.starts_with('-'))?;
        let user = text("user").filter(|u| !u.is_empty() && !u.starts_with('-'))?;
        let port = match config.get("port") {
            None => 22,
            Some(port) => u16::try_from(port.as_u64()?).ok()?,
        };
        let pattern = if port == 22 {
            host.clone()
        } else {
            format!("[{host}]:{port}")
        };
        let (known_hosts, checking) = match text("host_key") {
            Some(key) if ["ssh-", "ecdsa-", "sk-"].iter().any(|p| key.starts_with(p)) => {
                (format!("{pattern} {key}\n"), "yes")
            }
            Some(line) if !line.is_empty() => (format!("{line}\n"), "yes"),
            _ if text("host_key_policy").as_deref() == Some("accept-new") => {
                (String::new(), "accept-new")
            }
            _ => return None,
        };
        let auth = match (secrets.get("private_key"), secrets.get("password")) {
            (Some(key), _) if !key.is_empty() => Auth::Key {
                private_key: key.clone(),
                passphrase: secrets.get("passphrase").cloned().unwrap_or_default(),
            },
            (_, Some(password)) if !password.is_empty() => Auth::Password(password.clone()),
            _ => return None,
        };
        Some(Self {
            host,
            port,
            user,
            known_hosts,
            checking,
            auth,
        })
    }

    /// A digest of everything the master depends on (secrets included, so
    /// it is kept in memory only).
    fn settings(&self) -> String {
        let mut hash = Sha256::new();
        let (kind, secret, passphrase) = match &self.auth {
            Auth::Key {
                private_key,
                passphrase,
            } => ("key", private_key.as_str(), passphrase.as_str()),
            Auth::Password(password) => ("password", password.as_str(), ""),
        };
        let port = self.port.to_string();
        for part in [
            self.host.as_str(),
            &port,
            &self.user,
            &self.known_hosts,
            self.checking,
            kind,
            secret,
            passphrase,
        ] {
            hash.update((part.len() as u64).to_be_bytes());
            hash.update(part.as_bytes());
        }
        hex::encode(hash.finalize())
    }
}

impl SshMasters {
    /// Masters under `root`, emptied of whatever a previous life left there.
    pub async fn new(root: PathBuf) -> std::io::Result<Self> {
        let dir = root.clone();
        tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::PermissionsExt;
            if dir.exists() {
                std::fs::remove_dir_all(&dir)?;
            }
            std::fs::create_dir_all(&dir)?;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
        })
        .await
        .map_err(std::io::Error::other)??;
        Ok(Self {
            root,
            slots: Arc::default(),
        })
    }

    /// A relay for one run on `resource` to its master, at `at` and usable
    /// by `user` only; `None` when the resource is not of kind ssh or no
    /// master can be had (the driver then connects on its own).
    pub async fn relay(
        &self,
        resource: &ResourceRecord,
        secrets: &BTreeMap<String, String>,
        at: &Path,
        user: Option<DriverUser>,
    ) -> Option<Relay> {
        // Without a uid of its own, a driver could reach the masters'
        // sockets directly: no sharing then.
        let user = user?;
        let target = Target::of(resource, secrets)?;
        let settings = target.settings();
        let slot = {
            let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            slots.entry(resource.id.clone()).or_default().clone()
        };
        let mut slot = slot.lock().await;
        if let Some((failed, since)) = &slot.failed {
            if *failed == settings && since.elapsed() < BACKOFF {
                return None;
            }
        }
        slot.retired.retain(|m| Arc::strong_count(&m.users) > 1);
        let reusable = match slot.master.as_mut() {
            Some(master) => master.settings == settings && master.alive(),
            None => false,
        };
        if !reusable {
            // Runs still using the old master keep it until they end.
            if let Some(old) = slot.master.take() {
                if Arc::strong_count(&old.users) > 1 {
                    slot.retired.push(old);
                }
            }
            match self.open(&resource.id, &target, settings.clone()).await {
                Ok(master) => {
                    slot.failed = None;
                    slot.master = Some(master);
                }
                Err(reason) => {
                    tracing::warn!(
                        resource = %resource.id,
                        %reason,
                        "cannot keep an ssh connection to this resource; its runs connect on their own for {}s",
                        BACKOFF.as_secs()
                    );
                    slot.failed = Some((settings, Instant::now()));
                    return None;
                }
            }
        }
        let master = slot.master.as_mut()?;
        if Arc::strong_count(&master.users) > MAX_SHARED {
            // sshd allows 10 sessions per connection (MaxSessions).
            return None;
        }
        master.last_used = Instant::now();
        match Relay::start(master.socket(), at, user, master.users.clone()).await {
            Ok(relay) => Some(relay),
            Err(e) => {
                tracing::warn!(resource = %resource.id, error = %e, "cannot open a relay to the ssh master in the run's scratch dir; the run connects on its own");
                None
            }
        }
    }

    /// Logs a new master in; the error says why it could not.
    async fn open(
        &self,
        resource: &str,
        target: &Target,
        settings: String,
    ) -> Result<Master, String> {
        // Named by resource and settings: a relay of a replaced master never
        // reaches its successor.
        let name = hex::encode(&Sha256::digest(format!("{resource}\n{settings}").as_bytes())[..8]);
        let dir = self.root.join(name);
        let files = dir.clone();
        let known_hosts = target.known_hosts.clone();
        tokio::task::spawn_blocking(move || prepare_dir(&files, &known_hosts))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("cannot prepare {}: {e}", dir.display()))?;
        // Stops the agent (and with it the key) once the master is logged in.
        let mut agent = None;
        let mut command = ssh_command(&dir);
        command.args([
            "-M",
            "-N",
            "-S",
            &dir.join("c").display().to_string(),
            "-p",
            &target.port.to_string(),
            "-l",
            &target.user,
            "-o",
            "ControlPersist=no",
            "-o",
            &format!("StrictHostKeyChecking={}", target.checking),
            "-o",
            &format!("UserKnownHostsFile={}", dir.join("known_hosts").display()),
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "ConnectTimeout=10",
            "-o",
            "ServerAliveInterval=15",
            "-o",
            "ServerAliveCountMax=3",
            "-o",
            "ClearAllForwardings=yes",
            "-o",
            "LogLevel=ERROR",
        ]);
        match &target.auth {
            Auth::Key {
                private_key,
                passphrase,
            } => {
                let socket = dir.join("a");
                agent = Some(start_agent(&dir, &socket, private_key, passphrase).await?);
                command.args([
                    "-o",
                    &format!("IdentityAgent={}", socket.display()),
                    "-o",
                    "PreferredAuthentications=publickey",
                    "-o",
                    "PasswordAuthentication=no",
                    "-o",
                    "BatchMode=yes",
                ]);
            }
            Auth::Password(password) => {
                command
                    .env("ZF_SSH_SECRET", password)
                    .env("SSH_ASKPASS", dir.join("askpass"))
                    .env("SSH_ASKPASS_REQUIRE", "force")
                    .args([
                        "-o",
                        "IdentityAgent=none",
                        "-o",
                        "PreferredAuthentications=password,keyboard-interactive",
                        "-o",
                        "PubkeyAuthentication=no",
                        "-o",
                        "NumberOfPasswordPrompts=1",
                    ]);
            }
        }
        command.arg(&target.host);
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start ssh (Debian: openssh-client): {e}"))?;
        let logged_in = wait_logged_in(&mut child, &dir.join("c")).await;
        drop(agent);
        match logged_in {
            Ok(()) => {
                // The master's stderr is drained, so it never blocks on it.
                if let Some(stderr) = child.stderr.take() {
                    tokio::spawn(log_master_stderr(resource.to_string(), stderr));
                }
                tracing::info!(resource, host = %target.host, port = target.port, "an ssh master connection is open");
                Ok(Master {
                    settings,
                    child,
                    dir,
                    last_used: Instant::now(),
                    users: Arc::new(()),
                })
            }
            Err(reason) => {
                let _ = child.start_kill();
                let _ = tokio::fs::remove_dir_all(&dir).await;
                Err(reason)
            }
        }
    }

    /// Closes masters idle for a minute (no run used them, no relay open),
    /// and all of them at shutdown.
    pub async fn close_idle(self, shutdown: CancellationToken) {
        let mut every = tokio::time::interval(Duration::from_secs(5));
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = every.tick() => {}
            }
            let slots: Vec<_> = self
                .slots
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .values()
                .cloned()
                .collect();
            let mut kept = Vec::new();
            for slot in slots {
                let Ok(mut slot) = slot.try_lock() else {
                    continue;
                };
                slot.retired.retain(|m| Arc::strong_count(&m.users) > 1);
                let idle = slot.master.as_ref().is_some_and(|m| {
                    Arc::strong_count(&m.users) == 1 && m.last_used.elapsed() > IDLE
                });
                if idle {
                    slot.master = None;
                }
                if let Some(master) = &slot.master {
                    kept.push(master.last_used);
                }
            }
            if kept.len() > MAX_MASTERS {
                self.close_oldest(kept.len() - MAX_MASTERS);
            }
            // Resources with nothing kept (and no backoff running) leave the
            // map, unless a run holds the slot (it took it under this lock).
            self.slots
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|_, slot| {
                    Arc::strong_count(slot) > 1
                        || slot.try_lock().map_or(true, |slot| {
                            slot.master.is_some()
                                || !slot.retired.is_empty()
                                || slot
                                    .failed
                                    .as_ref()
                                    .is_some_and(|(_, since)| since.elapsed() < BACKOFF)
                        })
                });
        }
        self.slots.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Closes the `count` least recently used masters that no relay holds.
    fn close_oldest(&self, count: usize) {
        let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let mut unused: Vec<_> = slots
            .values()
            .filter_map(|slot| {
                let guard = slot.try_lock().ok()?;
                let master = guard.master.as_ref()?;
                (Arc::strong_count(&master.users) == 1).then_some((master.last_used, slot.clone()))
            })
            .collect();
        unused.sort_by_key(|(used, _)| *used);
        for (_, slot) in unused.into_iter().take(count) {
            if let Ok(mut slot) = slot.try_lock() {
                slot.master = None;
            }
        }
    }
}

/// A fresh directory for one master: only the node's user may enter it.
fn prepare_dir(dir: &Path, known_hosts: &str) -> std::io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    if dir.exists() {
        std::fs::remove_dir_all(dir)?;
    }
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    std::fs::write(dir.join("known_hosts"), known_hosts)?;
    let mut askpass = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o700)
        .open(dir.join("askpass"))?;
    std::io::Write::write_all(&mut askpass, ASKPASS.as_bytes())
}

/// `program` with a bare environment: HOME is the master's dir, so no file of
/// the node user's own `~/.ssh` takes part; it dies with the node.
fn command_in(program: &str, dir: &Path) -> Command {
    let mut command = Command::new(program);
    command
        .env_clear()
        .env(
            "PATH",
            std::env::var("PATH").unwrap_or_else(|_| "/usr/local/bin:/usr/bin:/bin".into()),
        )
        .env("HOME", dir)
        .kill_on_drop(true);
    // SAFETY: prctl and nice are async-signal-safe; nothing else runs
    // between fork and exec. Like drivers, masters run below the node's
    // priority, so their handshakes never starve its heartbeats.
    unsafe {
        command.pre_exec(|| {
            nix::libc::nice(10);
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        });
    }
    command
}

fn ssh_command(dir: &Path) -> Command {
    let mut command = command_in("ssh", dir);
    command.args(["-F", "/dev/null"]);
    command
}

/// An agent holding the resource's key, for the master's login only.
async fn start_agent(
    dir: &Path,
    socket: &Path,
    private_key: &str,
    passphrase: &str,
) -> Result<Child, String> {
    let mut agent = command_in("ssh-agent", dir)
        .args(["-D", "-a"])
        .arg(socket)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start ssh-agent (Debian: openssh-client): {e}"))?;
    // The agent binds its socket before it listens: a socket file alone may
    // still refuse ssh-add, so wait until a connection is taken.
    let deadline = Instant::now() + Duration::from_secs(5);
    while tokio::net::UnixStream::connect(socket).await.is_err() {
        if Instant::now() > deadline || !matches!(agent.try_wait(), Ok(None)) {
            return Err("ssh-agent did not start".into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut add = command_in("ssh-add", dir)
        .args(["-q", "-"])
        .env("SSH_AUTH_SOCK", socket)
        .env("ZF_SSH_SECRET", passphrase)
        .env("SSH_ASKPASS", dir.join("askpass"))
        .env("SSH_ASKPASS_REQUIRE", "force")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start ssh-add: {e}"))?;
    if let Some(mut stdin) = add.stdin.take() {
        use tokio::io::AsyncWriteExt;
        let key = format!("{}\n", private_key.trim_end());
        stdin
            .write_all(key.as_bytes())
            .await
            .map_err(|e| format!("cannot hand the key to ssh-add: {e}"))?;
    }
    let output = tokio::time::timeout(Duration::from_secs(10), add.wait_with_output())
        .await
        .map_err(|_| "ssh-add did not finish in 10 s".to_string())?
        .map_err(|e| format!("ssh-add failed: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "the private_key secret cannot be loaded: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        ));
    }
    Ok(agent)
}

/// Waits until the master has logged in (it opens its control socket only
/// then), or says why it did not.
async fn wait_logged_in(child: &mut Child, socket: &Path) -> Result<(), String> {
    let deadline = Instant::now() + LOGIN_TIMEOUT;
    loop {
        if socket.exists() {
            return Ok(());
        }
        match child.try_wait() {
            Ok(Some(status)) => {
                let mut err = String::new();
                if let Some(mut stderr) = child.stderr.take() {
                    use tokio::io::AsyncReadExt;
                    let _ = stderr.read_to_string(&mut err).await;
                }
                return Err(format!("ssh exited ({status}): {}", err.trim()));
            }
            Ok(None) => {}
            Err(e) => return Err(format!("cannot watch ssh: {e}")),
        }
        if Instant::now() > deadline {
            return Err(format!("not logged in after {} s", LOGIN_TIMEOUT.as_secs()));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn log_master_stderr(resource: String, stderr: tokio::process::ChildStderr) {
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(stderr).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        tracing::info!(resource = %resource, "ssh master: {line}");
    }
}

/// One run's way to its resource's master: a socket only the run's driver
/// may use, each connection to it joined to the master's socket. Dropping
/// it closes the socket and every connection through it.
pub struct Relay {
    path: PathBuf,
    accept: tokio::task::JoinHandle<()>,
    _uses: Arc<()>,
}

impl Relay {
    async fn start(
        master: PathBuf,
        at: &Path,
        user: DriverUser,
        uses: Arc<()>,
    ) -> std::io::Result<Self> {
        let listener = tokio::net::UnixListener::bind(at)?;
        let path = at.to_path_buf();
        let owned = path.clone();
        tokio::task::spawn_blocking(move || {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&owned, std::fs::Permissions::from_mode(0o600))?;
            std::os::unix::fs::chown(&owned, Some(user.uid), Some(user.gid))
        })
        .await
        .map_err(std::io::Error::other)??;
        let accept = tokio::spawn(async move {
            let mut joined = JoinSet::new();
            while let Ok((driver, _)) = listener.accept().await {
                while joined.try_join_next().is_some() {}
                if joined.len() >= MAX_SHARED {
                    continue; // dropped: the driver connects on its own
                }
                joined.spawn(join_in_proxy_mode(driver, master.clone()));
            }
        });
        Ok(Self {
            path,
            accept,
            _uses: uses,
        })
    }

    /// Where the driver finds it (`ZF_SSH_CONTROL`).
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The mux protocol's hello (both ways) and a client's request for proxy
/// mode (OpenSSH's PROTOCOL.mux).
const MUX_MSG_HELLO: u32 = 0x0000_0001;
const MUX_C_PROXY: u32 = 0x1000_000f;
/// The longest opening message let through (a hello may carry extensions).
const MUX_MAX_OPENING: usize = 64 * 1024;

/// Joins one driver connection to the master, letting through the client's
/// hello and its request for proxy mode only: the master's other requests
/// (port forwards, which the master would open as the node's user; exit;
/// stop) never reach it. In proxy mode what follows is plain SSH channel
/// traffic for this resource's host. A master gone: the driver sees the
/// socket close and connects on its own.
async fn join_in_proxy_mode(driver: tokio::net::UnixStream, master: PathBuf) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(to_master) = tokio::net::UnixStream::connect(&master).await else {
        return;
    };
    let (mut from_driver, mut to_driver) = driver.into_split();
    let (mut from_master, mut master_in) = to_master.into_split();
    // The master speaks first (its hello) and is never filtered.
    let answers = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut from_master, &mut to_driver).await;
        let _ = to_driver.shutdown().await;
    });
    let requests = async {
        for wanted in [MUX_MSG_HELLO, MUX_C_PROXY] {
            let length = from_driver.read_u32().await.ok()? as usize;
            if !(4..=MUX_MAX_OPENING).contains(&length) {
                return None;
            }
            let mut body = vec![0u8; length];
            from_driver.read_exact(&mut body).await.ok()?;
            if body[..4] != wanted.to_be_bytes() {
                tracing::warn!(
                    asked = %hex::encode(&body[..4]),
                    "a driver asked its ssh relay for something other than proxy mode; refused"
                );
                return None;
            }
            master_in
                .write_all(&(length as u32).to_be_bytes())
                .await
                .ok()?;
            master_in.write_all(&body).await.ok()?;
        }
        tokio::io::copy(&mut from_driver, &mut master_in)
            .await
            .ok()?;
        master_in.shutdown().await.ok()
    };
    if requests.await.is_none() {
        answers.abort();
        return;
    }
    let _ = answers.await;
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn resource(config: Value) -> ResourceRecord {
        serde_json::from_value(json!({"id": "web-1", "kind": "ssh", "config": config, "updated_at": "2026-01-01T00:00:00Z"}))
            .expect("a resource")
    }

    fn key() -> BTreeMap<String, String> {
        BTreeMap::from([("private_key".to_string(), "KEY".to_string())])
    }

    #[test]
    fn a_complete_ssh_resource_is_a_target_with_its_host_key_pinned() {
        let target = Target::of(
            &resource(
                json!({"host": "h", "port": 2222, "user": "u", "host_key": "ssh-ed25519 AAAA"}),
            ),
            &key(),
        )
        .expect("a target");
        assert_eq!(target.known_hosts, "[h]:2222 ssh-ed25519 AAAA\n");
        assert_eq!(target.checking, "yes");
        let default_port = Target::of(
            &resource(json!({"host": "h", "user": "u", "host_key": "ssh-ed25519 AAAA"})),
            &key(),
        )
        .expect("a target");
        assert_eq!(default_port.known_hosts, "h ssh-ed25519 AAAA\n");
    }

    #[test]
    fn incomplete_or_other_resources_get_no_master() {
        let no_key = resource(json!({"host": "h", "user": "u"}));
        assert!(
            Target::of(&no_key, &key()).is_none(),
            "no host key, no policy"
        );
        let ok = resource(json!({"host": "h", "user": "u", "host_key_policy": "accept-new"}));
        assert!(Target::of(&ok, &BTreeMap::new()).is_none(), "no secret");
        let option = resource(
            json!({"host": "-oProxyCommand=x", "user": "u", "host_key_policy": "accept-new"}),
        );
        assert!(
            Target::of(&option, &key()).is_none(),
            "a host that reads as an option"
        );
        let mut other = ok.clone();
        other.kind = "http".into();
        assert!(Target::of(&other, &key()).is_none());
        assert_eq!(
            Target::of(&ok, &key()).map(|t| t.checking),
            Some("accept-new")
        );
    }

    #[test]
    fn another_secret_or_host_key_means_another_master() {
        let config = json!({"host": "h", "user": "u", "host_key": "ssh-ed25519 AAAA"});
        let a = Target::of(&resource(config.clone()), &key()).expect("a");
        let other_key = BTreeMap::from([("private_key".to_string(), "KEY2".to_string())]);
        let b = Target::of(&resource(config), &other_key).expect("b");
        let c = Target::of(
            &resource(json!({"host": "h", "user": "u", "host_key": "ssh-ed25519 BBBB"})),
            &key(),
        )
        .expect("c");
        assert_ne!(a.settings(), b.settings());
        assert_ne!(a.settings(), c.settings());
        assert_eq!(
            a.settings(),
            Target::of(
                &resource(json!({"host": "h", "user": "u", "host_key": "ssh-ed25519 AAAA"})),
                &key()
            )
            .expect("a again")
            .settings()
        );
    }
}
