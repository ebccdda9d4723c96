//! The end-to-end harness: a real nats-server per test on a free port with its
//! own store, the real service binaries as child processes under a unique
//! cluster name, real HTTP. Everything started here is killed when its handle
//! drops, also when the test panics; a failing test prints the tail of every
//! process's log.

use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

pub mod browser;
pub mod modules;
pub mod prometheus;
pub mod proxy;
pub mod sshd;

/// Polls `probe` until it returns `Some`, or panics after `timeout` saying
/// what was awaited and what the last probe saw.
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let last = match probe().await {
            Ok(v) => return v,
            Err(seen) => seen,
        };
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}; last seen: {last}");
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The cluster secrets key every test service gets.
pub const TEST_SECRETS_KEY: &str =
    "5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a";

/// The host pids of every live process of one driver run: its shims too. A
/// driver and everything it starts carry the run's scratch dir as `HOME`,
/// and its shims run in that dir, which makes a run's identity a test can
/// see from the host; the pids a driver sees itself are its PID
/// namespace's, not the host's.
pub fn run_processes(home: &str) -> Vec<i32> {
    let wanted = format!("HOME={home}");
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map(|stat| {
                    stat.rsplit_once(')')
                        .and_then(|(_, rest)| rest.split_whitespace().next())
                        == Some("Z")
                })
                .unwrap_or(true);
            !zombie
                && (std::fs::read(format!("/proc/{pid}/environ"))
                    .map(|env| env.split(|b| *b == 0).any(|var| var == wanted.as_bytes()))
                    .unwrap_or(false)
                    || std::fs::read_link(format!("/proc/{pid}/cwd"))
                        .is_ok_and(|cwd| cwd == Path::new(home)))
        })
        .collect()
}

/// The pids whose parent is `parent`.
pub fn children_of(parent: i32) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|stat| {
                    let rest = stat.rsplit_once(')')?.1.to_string();
                    rest.split_whitespace().nth(1)?.parse::<i32>().ok()
                })
                == Some(parent)
        })
        .collect()
}

/// A child of `parent` with `arg` among its command line's arguments.
pub fn child_with_arg(parent: i32, arg: &str) -> Option<i32> {
    children_of(parent).into_iter().find(|pid| {
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|line| line.split(|b| *b == 0).any(|a| a == arg.as_bytes()))
            .unwrap_or(false)
    })
}

/// Waits until no process of the driver run with scratch dir `home` is left.
pub async fn wait_run_gone(what: &str, home: &str) {
    wait_until(what, Duration::from_secs(10), || async move {
        match run_processes(home).as_slice() {
            [] => Ok(()),
            pids => Err(format!("pids {pids:?} still run")),
        }
    })
    .await;
}

/// Drivers that log "<run> <ms since epoch>" lines to a file, as fault
/// tests' drivers do (the run is the driver's `HOME`): run → (first, last)
/// beat in ms.
pub fn beat_spans(file: &Path) -> std::collections::BTreeMap<String, (u64, u64)> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let mut spans = std::collections::BTreeMap::new();
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        let (Some(run), Some(Ok(ms))) = (parts.next(), parts.next().map(str::parse::<u64>)) else {
            continue;
        };
        let span = spans.entry(run.to_string()).or_insert((ms, ms));
        span.0 = span.0.min(ms);
        span.1 = span.1.max(ms);
    }
    spans
}

/// The longest time, in ms, two drivers of [`beat_spans`] beat at once.
pub fn longest_overlap(spans: &std::collections::BTreeMap<String, (u64, u64)>) -> u64 {
    let all: Vec<(u64, u64)> = spans.values().copied().collect();
    let mut worst = 0;
    for (i, a) in all.iter().enumerate() {
        for b in &all[i + 1..] {
            worst = worst.max(a.1.min(b.1).saturating_sub(a.0.max(b.0)));
        }
    }
    worst
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free port on 127.0.0.1")
}

/// The workspace's target directory holding the built binaries.
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("own binary path");
    // Tests live in target/<profile>/deps/, the benchmark beside the services.
    let dir = exe.parent().expect("binary has a folder");
    if dir.ends_with("deps") {
        dir.parent().expect("target/<profile>").to_path_buf()
    } else {
        dir.to_path_buf()
    }
}

/// Path of a service binary, built by `cargo build --bins` (scripts/test.sh does).
pub fn service_binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --bins` before the end-to-end tests (scripts/test.sh does)",
        path.display()
    );
    path
}

/// The nats-server binary: $ZF_NATS_SERVER, the project's .venv, or PATH.
pub fn nats_server_binary() -> PathBuf {
    if let Ok(p) = std::env::var("ZF_NATS_SERVER") {
        return PathBuf::from(p);
    }
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/nats-server");
    if venv.exists() {
        return venv;
    }
    PathBuf::from("nats-server")
}

/// A child process with its log in a file; SIGKILLed on drop.
pub struct Process {
    pub name: String,
    child: Option<Child>,
    program: PathBuf,
    args: Vec<String>,
    envs: Vec<(String, String)>,
    pub log: PathBuf,
}

impl Process {
    pub fn spawn(
        name: &str,
        program: &Path,
        args: &[String],
        envs: &[(String, String)],
        log_dir: &Path,
    ) -> Self {
        let mut p = Self {
            name: name.to_string(),
            child: None,
            program: program.to_path_buf(),
            args: args.to_vec(),
            envs: envs.to_vec(),
            log: log_dir.join(format!("{name}.log")),
        };
        p.start();
        p
    }

    /// Starts (again) with the same program, arguments and environment; the
    /// log file is appended to.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open log file");
        let child = Command::new(&self.program)
            .args(&self.args)
            .envs(self.envs.iter().map(|(k, v)| (k, v)))
            .env(
                "RUST_LOG",
                std::env::var("ZF_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start {} ({}): {e}",
                    self.name,
                    self.program.display()
                )
            });
        self.child = Some(child);
    }

    pub fn pid(&self) -> Pid {
        Pid::from_raw(self.child.as_ref().expect("process is running").id() as i32)
    }

    pub fn signal(&self, signal: Signal) {
        kill(self.pid(), signal)
            .unwrap_or_else(|e| panic!("cannot send {signal} to {}: {e}", self.name));
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then wait up to `timeout` for the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // Resume a paused process so that SIGKILL is delivered promptly.
        if let Some(child) = &self.child {
            let _ = kill(Pid::from_raw(child.id() as i32), Signal::SIGCONT);
        }
        self.kill();
        if std::thread::panicking() {
            let text = self.log_text();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            eprintln!(
                "----- last lines of {} ({}) -----",
                self.name,
                self.log.display()
            );
            for line in tail.into_iter().rev() {
                eprintln!("{line}");
            }
        }
    }
}

/// NATS users made by `zf-management nats-auth` for a test's clusters: one
/// per service role and cluster, each limited to its own subjects, and
/// `admin` for the test's own client. Every test runs with them.
#[derive(Clone, Debug)]
pub struct NatsAuth {
    pub dir: PathBuf,
}

impl NatsAuth {
    pub fn generate(dir: &Path, clusters: &[&str]) -> Self {
        let auth_dir = dir.join("nats-auth");
        let nodes: Vec<String> = (0..MAX_NODES).map(node_name).collect();
        let out = Command::new(service_binary("zf-management"))
            .args(["nats-auth", "--dir", &auth_dir.display().to_string()])
            .args(["--cluster", &clusters.join(",")])
            .args(["--nodes", &nodes.join(",")])
            .env_remove("ZF_CLUSTER")
            .output()
            .expect("run zf-management nats-auth");
        assert!(
            out.status.success(),
            "zf-management nats-auth failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self { dir: auth_dir }
    }

    pub fn password(&self, user: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{user}.password")))
            .unwrap_or_else(|e| panic!("password of NATS user {user}: {e}"))
            .trim()
            .to_string()
    }

    /// The environment that makes a service of `role` (`management`,
    /// `repository`) in `cluster` log in as its own user.
    pub fn env(&self, cluster: &str, role: &str) -> Vec<(String, String)> {
        self.env_of(format!("zf-{cluster}-{role}"))
    }

    /// The environment that makes node `node` log in as its own user.
    pub fn node_env(&self, cluster: &str, node: &str) -> Vec<(String, String)> {
        self.env_of(format!("zf-{cluster}-node-{node}"))
    }

    fn env_of(&self, user: String) -> Vec<(String, String)> {
        vec![
            (
                "ZF_NATS_PASSWORD_FILE".into(),
                self.dir
                    .join(format!("{user}.password"))
                    .display()
                    .to_string(),
            ),
            ("ZF_NATS_USER".into(), user),
        ]
    }
}

/// A nats-server with JetStream on a free port and its own store, accepting
/// only the users of its [`NatsAuth`].
pub struct NatsServer {
    pub port: u16,
    pub process: Process,
    pub auth: NatsAuth,
    /// The CA clients verify the server with, when it requires TLS.
    pub tls_ca: Option<PathBuf>,
}

/// A CA and a server certificate for 127.0.0.1 and localhost it signed,
/// as PEM files in their own folder.
pub struct TestTls {
    _dir: tempfile::TempDir,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

impl TestTls {
    pub fn generate() -> Self {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        let dir = tempfile::tempdir().expect("tempdir");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("CA key"))
            .expect("CA certificate");
        let server_key = KeyPair::generate().expect("server key");
        let server = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .expect("server params")
            .signed_by(&server_key, &ca)
            .expect("server certificate");
        let write = |name: &str, text: String| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).expect("write PEM");
            path
        };
        Self {
            ca: write("ca.pem", ca.pem()),
            server_cert: write("server.pem", server.pem()),
            server_key: write("server-key.pem", server_key.serialize_pem()),
            _dir: dir,
        }
    }
}

impl NatsServer {
    pub fn start(dir: &Path, auth: &NatsAuth) -> Self {
        Self::start_on(dir, free_port(), auth)
    }

    /// Starts nats-server on `port`. With `ZF_NATS_SYNC_ALWAYS=1` (the
    /// benchmarks set it) JetStream syncs every write to disk before its ack,
    /// as the shipped configurations do.
    pub fn start_on(dir: &Path, port: u16, auth: &NatsAuth) -> Self {
        Self::start_configured(dir, port, auth, None)
    }

    /// Starts nats-server requiring TLS with `tls`'s server certificate.
    pub fn start_tls(dir: &Path, auth: &NatsAuth, tls: &TestTls) -> Self {
        Self::start_configured(dir, free_port(), auth, Some(tls))
    }

    fn start_configured(dir: &Path, port: u16, auth: &NatsAuth, tls: Option<&TestTls>) -> Self {
        let store = dir.join("nats-store");
        let sync = if std::env::var("ZF_NATS_SYNC_ALWAYS").is_ok_and(|v| v == "1") {
            "sync_interval: always"
        } else {
            ""
        };
        let config = dir.join("nats.conf");
        let text = format!(
            "listen: 127.0.0.1:{port}\njetstream {{\n  store_dir: \"{}\"\n  {sync}\n}}\ninclude \"{}\"\n",
            store.display(),
            // nats-server resolves includes relative to the including file.
            auth.dir
                .join("auth.conf")
                .strip_prefix(dir)
                .expect("the NATS users live in the server's folder")
                .display()
        );
        let text = match tls {
            Some(tls) => format!(
                "{text}tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n}}\n",
                tls.server_cert.display(),
                tls.server_key.display()
            ),
            None => text,
        };
        std::fs::write(&config, text).expect("write nats.conf");
        let args = vec!["-c".into(), config.display().to_string()];
        let process = Process::spawn("nats-server", &nats_server_binary(), &args, &[], dir);
        let server = Self {
            port,
            process,
            auth: auth.clone(),
            tls_ca: tls.map(|t| t.ca.clone()),
        };
        server.wait_ready();
        server
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server did not listen on port {} within 10 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops nats-server cleanly (SIGTERM) and starts it again on the same port and store.
    pub fn restart(&mut self) {
        self.process.terminate(Duration::from_secs(10));
        self.process.start();
        self.wait_ready();
    }

    /// SIGKILLs nats-server and starts it again on the same port and store.
    /// Only writes synced to disk survive: run with `ZF_NATS_SYNC_ALWAYS=1`.
    pub fn crash_restart(&mut self) {
        self.process.kill();
        self.process.start();
        self.wait_ready();
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// A client logged in as `admin`, which may do anything.
    pub async fn client(&self) -> async_nats::Client {
        self.connect_as("admin")
            .await
            .expect("connect to the test nats-server as admin")
    }

    /// A client logged in as NATS user `user` with its generated password.
    pub async fn connect_as(
        &self,
        user: &str,
    ) -> Result<async_nats::Client, async_nats::ConnectError> {
        let mut options = async_nats::ConnectOptions::with_user_and_password(
            user.into(),
            self.auth.password(user),
        );
        if let Some(ca) = &self.tls_ca {
            options = options.add_root_certificates(ca.clone()).require_tls(true);
        }
        options.connect(self.url()).await
    }
}

/// Nodes a test cluster has NATS users for (`node-0` ...).
pub const MAX_NODES: usize = 10;

/// The id of a test cluster's node `index`: fixed, so it has a NATS user.
pub fn node_name(index: usize) -> String {
    format!("node-{index}")
}

/// The folder under a test cluster's dir that drivers may write.
const SHARED_DIR: &str = "shared";
/// The cluster's secrets key, as services read it (`ZF_SECRETS_KEY_FILE`).
const SECRETS_KEY_FILE: &str = "secrets.key";

/// A whole cluster: nats-server, repository, management and agent nodes.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub cluster: String,
    pub nats: NatsServer,
    pub repositories: Vec<Process>,
    pub management: Vec<Management>,
    pub nodes: Vec<Process>,
    pub http: reqwest::Client,
}

pub struct Management {
    pub process: Process,
    pub port: u16,
}

impl Management {
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

/// Extra flags for the agent nodes (e.g. faster heartbeats).
#[derive(Clone, Default)]
pub struct NodeFlags(pub Vec<String>);

/// A node of `zone` labelled `rack=r<rack>`, with its heartbeat and lapse in ms.
pub fn zone_node(zone: &str, rack: usize, (heartbeat, lapse): (u64, u64)) -> NodeFlags {
    NodeFlags(vec![
        "--zone".into(),
        zone.into(),
        "--label".into(),
        format!("rack=r{rack}"),
        "--heartbeat-ms".into(),
        heartbeat.to_string(),
        "--lapse-ms".into(),
        lapse.to_string(),
    ])
}

impl Cluster {
    /// nats-server, repository, one management instance and `nodes` nodes.
    pub async fn start(nodes: usize) -> Self {
        let mut cluster = Self::bare().await;
        cluster.start_repository();
        cluster.start_management();
        for _ in 0..nodes {
            cluster.add_node(&NodeFlags::default());
        }
        cluster.wait_healthy().await;
        cluster
    }

    /// Only nats-server; add services by hand.
    pub async fn bare() -> Self {
        Self::bare_on(None).await
    }

    /// Only nats-server, requiring TLS with `tls`; the services get its CA.
    pub async fn bare_tls(tls: &TestTls) -> Self {
        Self::bare_on(Some(tls)).await
    }

    async fn bare_on(tls: Option<&TestTls>) -> Self {
        let mut dir = tempfile::tempdir().expect("tempdir");
        // Keeps logs and stores for a look after the run.
        dir.disable_cleanup(std::env::var_os("ZF_KEEP_TEST_DIRS").is_some());
        // Driver users (each driver its own uid) must reach the nodes' data
        // dirs below this one, and the shared folder drivers may write.
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711))
                .expect("chmod the test dir");
            std::fs::write(dir.path().join(SECRETS_KEY_FILE), TEST_SECRETS_KEY)
                .expect("write the secrets key file");
            std::fs::set_permissions(
                dir.path().join(SECRETS_KEY_FILE),
                std::fs::Permissions::from_mode(0o600),
            )
            .expect("chmod the secrets key file");
            let shared = dir.path().join(SHARED_DIR);
            std::fs::create_dir(&shared).expect("shared dir");
            std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777))
                .expect("chmod the shared dir");
        }
        let cluster = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let auth = NatsAuth::generate(dir.path(), &[&cluster]);
        let nats = match tls {
            Some(tls) => NatsServer::start_tls(dir.path(), &auth, tls),
            None => NatsServer::start(dir.path(), &auth),
        };
        Self {
            cluster,
            nats,
            repositories: Vec::new(),
            management: Vec::new(),
            nodes: Vec::new(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .expect("http client"),
            dir,
        }
    }

    /// The environment of a service of `role` (`management`, `repository`):
    /// where NATS is, the cluster, its NATS user, and for management the
    /// secrets key file.
    pub fn common_env(&self, role: &str) -> Vec<(String, String)> {
        self.env_with(
            self.nats.auth.env(&self.cluster, role),
            role != "repository",
        )
    }

    /// The environment of node `node` (its id): its own NATS user and the
    /// secrets key file.
    pub fn node_env(&self, node: &str) -> Vec<(String, String)> {
        self.env_with(self.nats.auth.node_env(&self.cluster, node), true)
    }

    fn env_with(&self, user: Vec<(String, String)>, secrets_key: bool) -> Vec<(String, String)> {
        let mut env = vec![
            ("ZF_NATS_URL".into(), self.nats.url()),
            ("ZF_CLUSTER".into(), self.cluster.clone()),
        ];
        if secrets_key {
            env.push((
                "ZF_SECRETS_KEY_FILE".into(),
                self.secrets_key_file().display().to_string(),
            ));
        }
        env.extend(user);
        if let Some(ca) = &self.nats.tls_ca {
            env.push(("ZF_NATS_TLS_CA".into(), ca.display().to_string()));
        }
        env
    }

    pub fn start_repository(&mut self) -> usize {
        self.start_repository_with(&[])
    }

    /// A repository instance with extra flags (e.g. a signing key).
    pub fn start_repository_with(&mut self, args: &[&str]) -> usize {
        let index = self.repositories.len();
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let p = Process::spawn(
            &format!("repository-{index}"),
            &service_binary("zf-repository"),
            &args,
            &self.common_env("repository"),
            self.dir.path(),
        );
        self.repositories.push(p);
        index
    }

    pub fn start_management(&mut self) -> usize {
        self.start_management_with(&[])
    }

    /// A management instance with extra environment (e.g. `ZF_API_TOKENS`);
    /// an empty value leaves the variable out.
    pub fn start_management_with(&mut self, extra_env: &[(&str, &str)]) -> usize {
        let port = free_port();
        let index = self.management.len();
        let mut env = self.common_env("management");
        env.retain(|(k, _)| !extra_env.iter().any(|(extra, _)| extra == k));
        env.extend(
            extra_env
                .iter()
                .filter(|(_, v)| !v.is_empty())
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        let args = [
            "--http-addr".to_string(),
            format!("127.0.0.1:{port}"),
            "--id".to_string(),
            format!("mgmt-{index}"),
        ];
        let process = Process::spawn(
            &format!("management-{index}"),
            &service_binary("zf-management"),
            &args,
            &env,
            self.dir.path(),
        );
        self.management.push(Management { process, port });
        index
    }

    /// The file every service reads the secrets key from.
    pub fn secrets_key_file(&self) -> PathBuf {
        self.dir.path().join(SECRETS_KEY_FILE)
    }

    /// The folder every node lets its drivers read and write
    /// (`--driver-writable`): where test drivers leave their traces.
    pub fn shared(&self) -> PathBuf {
        self.dir.path().join(SHARED_DIR)
    }

    /// An empty file in [`Cluster::shared`] that every driver may append to
    /// (successive drivers of one operation run under different uids).
    pub fn shared_file(&self, name: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = self.shared().join(name);
        std::fs::write(&path, b"").expect("create a shared file");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))
            .expect("chmod a shared file");
        path
    }

    /// Data dir of node `index`.
    pub fn node_dir(&self, index: usize) -> PathBuf {
        self.dir.path().join(format!("node-{index}"))
    }

    pub fn add_node(&mut self, flags: &NodeFlags) -> usize {
        let index = self.nodes.len();
        assert!(
            index < MAX_NODES,
            "the test NATS users cover {MAX_NODES} nodes"
        );
        let p = self.node_process(index, flags);
        self.nodes.push(p);
        index
    }

    /// Adds a node that reaches NATS through a proxy of its own, which the
    /// test can silence or cut (see [`proxy::SilentProxy`]).
    pub async fn add_node_behind_proxy(&mut self, flags: &NodeFlags) -> proxy::SilentProxy {
        let proxy = proxy::SilentProxy::start(self.nats.port).await;
        let mut flags = flags.clone();
        flags.0.extend(["--nats-url".to_string(), proxy.url()]);
        self.add_node(&flags);
        proxy
    }

    /// SIGKILLs node `index` (if it runs) and starts it again, with the
    /// same id and data dir, with other `flags`.
    pub fn replace_node(&mut self, index: usize, flags: &NodeFlags) {
        self.nodes[index].kill();
        self.nodes[index] = self.node_process(index, flags);
    }

    fn node_process(&self, index: usize, flags: &NodeFlags) -> Process {
        let id = node_name(index);
        let mut args = vec![
            "--id".to_string(),
            id.clone(),
            "--data-dir".to_string(),
            self.node_dir(index).display().to_string(),
            "--driver-writable".to_string(),
            self.shared().display().to_string(),
        ];
        args.extend(flags.0.iter().cloned());
        Process::spawn(
            &format!("node-{index}"),
            &service_binary("zf-agent-node"),
            &args,
            &self.node_env(&id),
            self.dir.path(),
        )
    }

    /// URL on the first management instance.
    pub fn url(&self, path: &str) -> String {
        self.management
            .first()
            .expect("a management instance")
            .url(path)
    }

    pub async fn wait_healthy(&self) {
        self.wait_management().await;
        let expected = self.nodes.len();
        if expected > 0 {
            self.wait_nodes_up(expected).await;
        }
        if !self.repositories.is_empty() {
            self.wait_repositories(self.repositories.len()).await;
        }
    }

    /// Waits until every management instance answers `/healthz` with 200.
    pub async fn wait_management(&self) {
        for m in &self.management {
            let url = m.url("/healthz");
            let http = self.http.clone();
            wait_until(
                "management /healthz to answer 200",
                Duration::from_secs(20),
                || {
                    let (http, url) = (http.clone(), url.clone());
                    async move {
                        match http.get(&url).send().await {
                            Ok(r) if r.status() == 200 => Ok(()),
                            Ok(r) => Err(format!("status {}", r.status())),
                            Err(e) => Err(e.to_string()),
                        }
                    }
                },
            )
            .await;
        }
    }

    /// Waits until `count` repository instances of this cluster answer `$SRV.PING`.
    pub async fn wait_repositories(&self, count: usize) {
        let client = self.nats.client().await;
        wait_until(
            &format!("{count} repositories answering $SRV.PING"),
            Duration::from_secs(20),
            || {
                let client = client.clone();
                let cluster = self.cluster.clone();
                async move {
                    let found = zerofoot_shared::nats::discover(
                        &client,
                        "zf-repository",
                        &cluster,
                        Duration::from_millis(200),
                    )
                    .await
                    .map_err(|e| e.to_string())?;
                    if found.len() == count {
                        Ok(())
                    } else {
                        Err(format!("{} answered", found.len()))
                    }
                }
            },
        )
        .await;
    }

    /// Waits until `/v1/cluster` shows `count` nodes up, and returns it.
    pub async fn wait_nodes_up(&self, count: usize) -> Value {
        let url = self.url("/v1/cluster");
        let http = self.http.clone();
        wait_until(
            &format!("{count} nodes up in /v1/cluster"),
            Duration::from_secs(20),
            || {
                let (http, url) = (http.clone(), url.clone());
                async move {
                    let view = get_json(&http, &url).await?;
                    let up = view["nodes"]
                        .as_array()
                        .map(|n| n.iter().filter(|n| n["status"] == "up").count())
                        .unwrap_or(0);
                    if up == count {
                        Ok(view)
                    } else {
                        Err(format!("{up} up: {view}"))
                    }
                }
            },
        )
        .await
    }

    /// Every log line every process wrote so far.
    pub fn all_logs(&self) -> String {
        let mut all = String::new();
        if let Ok(entries) = std::fs::read_dir(self.dir.path()) {
            for e in entries.flatten() {
                if e.path().extension().is_some_and(|x| x == "log") {
                    all.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
                }
            }
        }
        all
    }
}

/// GET a URL and parse its JSON body, as an `Err(String)` for `wait_until`.
pub async fn get_json(http: &reqwest::Client, url: &str) -> Result<Value, String> {
    let response = http.get(url).send().await.map_err(|e| e.to_string())?;
    let status = response.status();
    let body: Value = response.json().await.map_err(|e| e.to_string())?;
    if status.is_success() {
        Ok(body)
    } else {
        Err(format!("status {status}: {body}"))
    }
}

/// Runs a binary to completion with arguments, returning status and stderr.
pub fn run_to_end(
    program: &Path,
    args: &[&str],
    envs: &[(&str, &str)],
) -> (std::process::ExitStatus, String) {
    let out = Command::new(program)
        .args(args)
        .envs(envs.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run binary");
    (
        out.status,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Status and JSON body of a response (a body that is not JSON becomes a string).
pub async fn status_and_json(response: reqwest::Response) -> (u16, Value) {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, body)
}

impl Cluster {
    pub async fn post_json(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self
            .http
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("POST");
        status_and_json(r).await
    }

    pub async fn put_json(&self, path: &str, body: &Value) -> (u16, Value) {
        let r = self
            .http
            .put(self.url(path))
            .json(body)
            .send()
            .await
            .expect("PUT");
        status_and_json(r).await
    }

    /// Operation `id` once it is final (complete, failed or cancelled), as
    /// `GET /v1/operations/{id}` shows it; a batch's counts meanwhile.
    pub async fn operation_end(&self, id: &str, timeout: Duration) -> Value {
        wait_until(&format!("operation {id} to end"), timeout, || async {
            let (_, view) = self.get(&format!("/v1/operations/{id}")).await;
            match view["state"].as_str() {
                Some("complete" | "failed" | "cancelled") => Ok(view),
                _ => Err(format!("state {} counts {}", view["state"], view["counts"])),
            }
        })
        .await
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        let r = self.http.get(self.url(path)).send().await.expect("GET");
        status_and_json(r).await
    }

    /// Each zone's lead node and term, sorted by zone, as `GET /v1/cluster`
    /// shows them, once each of `zones` zones has one.
    pub async fn zone_leads(&self, zones: usize) -> Vec<(String, String, u64)> {
        wait_until(
            &format!("a lead in each of {zones} zones"),
            Duration::from_secs(60),
            || async {
                let (_, view) = self.get("/v1/cluster").await;
                let mut leads: Vec<(String, String, u64)> = view["zones"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|z| {
                        Some((
                            z["zone"].as_str()?.to_string(),
                            z["lead"]["node"].as_str()?.to_string(),
                            z["lead"]["term"].as_u64()?,
                        ))
                    })
                    .collect();
                leads.sort();
                if leads.len() == zones {
                    Ok(leads)
                } else {
                    Err(format!("leads so far: {leads:?}"))
                }
            },
        )
        .await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        let r = self
            .http
            .delete(self.url(path))
            .send()
            .await
            .expect("DELETE");
        status_and_json(r).await
    }

    /// Uploads a bundle; returns status and body.
    pub async fn upload(&self, bundle: Vec<u8>) -> (u16, Value) {
        let r = self
            .http
            .post(self.url("/v1/modules"))
            .body(bundle)
            .send()
            .await
            .expect("POST /v1/modules");
        status_and_json(r).await
    }

    /// Uploads a bundle that must be accepted as new.
    pub async fn publish(&self, bundle: Vec<u8>) -> Value {
        let (status, body) = self.upload(bundle).await;
        assert_eq!(status, 201, "upload refused: {body}");
        body
    }

    /// Waits until the module index (as management sees it) lists `name` `version`.
    pub async fn wait_module(&self, name: &str, version: &str) {
        let path = format!("/v1/modules/{name}");
        wait_until(
            &format!("module {name} {version} listed"),
            Duration::from_secs(10),
            || {
                let fut = self.get(&path);
                async move {
                    let (_, body) = fut.await;
                    let listed = body["versions"]
                        .as_array()
                        .is_some_and(|v| v.iter().any(|m| m["version"] == version));
                    if listed {
                        Ok(())
                    } else {
                        Err(body.to_string())
                    }
                }
            },
        )
        .await;
    }

    /// The default zone's lead claim as written in the lead bucket.
    pub async fn lead_claim(&self) -> Value {
        let js = async_nats::jetstream::new(self.nats.client().await);
        let bucket = js
            .get_key_value(format!("zf_{}_lead", self.cluster))
            .await
            .expect("lead bucket");
        let entry = bucket
            .get("lead")
            .await
            .expect("read the lead claim")
            .expect("a lead claim");
        serde_json::from_slice(&entry).expect("a readable lead claim")
    }

    /// Puts a record into the module index directly, as something with write
    /// access to NATS could, and the bundle bytes under `digest` in the object store.
    pub async fn forge_module(&self, digest: &str, bytes: &[u8], record: &Value) {
        let js = async_nats::jetstream::new(self.nats.client().await);
        let objects = js
            .get_object_store(format!("zf_{}_modules", self.cluster))
            .await
            .expect("object store");
        objects
            .put(digest, &mut &bytes[..])
            .await
            .expect("put forged object");
        let index = js
            .get_key_value(format!("zf_{}_modules", self.cluster))
            .await
            .expect("module index");
        let key = format!(
            "{}.{}",
            record["name"].as_str().expect("name"),
            record["version"].as_str().expect("version")
        );
        index
            .put(key, record.to_string().into())
            .await
            .expect("put forged index entry");
    }

    /// The node id kept in node `index`'s data dir.
    pub fn node_id(&self, index: usize) -> String {
        std::fs::read_to_string(self.node_dir(index).join("node-id"))
            .expect("node-id file")
            .trim()
            .to_string()
    }

    /// Index of the node process whose id is `id`.
    pub fn node_index(&self, id: &str) -> usize {
        (0..self.nodes.len())
            .find(|i| self.node_id(*i) == id)
            .unwrap_or_else(|| panic!("no node with id {id}"))
    }

    /// What node `id`'s redb mirror holds, as it answers on NATS.
    pub async fn mirror(&self, client: &async_nats::Client, id: &str) -> Result<Value, String> {
        let subject = format!("zf.{}.node.{id}.mirror", self.cluster);
        let msg =
            tokio::time::timeout(Duration::from_secs(5), client.request(subject, "{}".into()))
                .await
                .map_err(|_| "mirror request timed out".to_string())?
                .map_err(|e| e.to_string())?;
        let reply: Value = serde_json::from_slice(&msg.payload).map_err(|e| e.to_string())?;
        reply.get("ok").cloned().ok_or_else(|| reply.to_string())
    }
}

/// Reads an SSE response until `count` frames with an `id` and JSON `data`
/// arrived: (id, data) in order. Panics saying so if the stream goes quiet
/// for 30 s or ends first.
pub async fn sse_frames(response: reqwest::Response, count: usize) -> Vec<(u64, Value)> {
    use futures::StreamExt;
    let mut body = response.bytes_stream();
    let mut buffer = String::new();
    let mut frames = Vec::new();
    while frames.len() < count {
        let chunk = tokio::time::timeout(Duration::from_secs(30), body.next())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "SSE stream went quiet after {} of {count} frames",
                    frames.len()
                )
            })
            .unwrap_or_else(|| panic!("SSE stream ended after {} of {count} frames", frames.len()))
            .expect("SSE chunk");
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find("\n\n") {
            let frame: String = buffer.drain(..end + 2).collect();
            let id = frame
                .lines()
                .find_map(|l| l.strip_prefix("id:"))
                .map(|v| v.trim().parse::<u64>().expect("numeric id"));
            let data = frame
                .lines()
                .find_map(|l| l.strip_prefix("data:"))
                .map(|v| serde_json::from_str::<Value>(v.trim()).expect("JSON data"));
            if let (Some(id), Some(data)) = (id, data) {
                frames.push((id, data));
            }
        }
    }
    frames.truncate(count);
    frames
}
