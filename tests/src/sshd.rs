//! Real OpenSSH servers for the tests: Debian's `/usr/sbin/sshd` on a free
//! loopback port, with a host key and a user key this harness generates, so
//! a test can manage a machine over SSH exactly as a user would.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::{free_port, wait_until, Process};

const SSHD: &str = "/usr/sbin/sshd";

/// One sshd, logging in as the test's own user (root on CI) with the
/// generated user key; password authentication is on (for refusals).
pub struct Sshd {
    pub process: Process,
    pub port: u16,
    pub dir: PathBuf,
    /// The host's public key, as a known_hosts line without the host part.
    pub host_key: String,
    /// The user's private key, OpenSSH format.
    pub user_key: String,
}

fn keygen(path: &Path) {
    let status = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(path)
        .status()
        .expect("run ssh-keygen (Debian: openssh-client)");
    assert!(status.success(), "ssh-keygen failed for {}", path.display());
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

impl Sshd {
    /// Starts an sshd under `dir` (created) and waits until it accepts.
    pub async fn start(dir: &Path) -> Self {
        assert!(
            Path::new(SSHD).exists(),
            "{SSHD} is missing: scripts/install-deps.sh installs Debian's openssh-server"
        );
        std::fs::create_dir_all(dir).expect("sshd dir");
        // sshd refuses to start without its privilege separation directory.
        std::fs::create_dir_all("/run/sshd").expect("create /run/sshd");
        keygen(&dir.join("host_key"));
        keygen(&dir.join("user_key"));
        std::fs::copy(dir.join("user_key.pub"), dir.join("authorized_keys")).expect("authorize");
        // The remote user's home for sessions: an empty one, because the
        // login shell sources `~/.bashrc` when sshd runs it, and this
        // machine's own (root's, with version-manager hooks) costs ≈300 ms
        // of CPU per remote command, which a managed host would not charge
        // on the node's cores.
        std::fs::create_dir_all(dir.join("home")).expect("sshd session home");
        let port = free_port();
        let config = format!(
            "Port {port}\nListenAddress 127.0.0.1\nHostKey {dir}/host_key\n\
             AuthorizedKeysFile {dir}/authorized_keys\nPasswordAuthentication yes\n\
             KbdInteractiveAuthentication no\nPermitRootLogin yes\nUsePAM no\n\
             StrictModes no\nPidFile none\nMaxStartups 100\nMaxSessions 100\n\
             SetEnv HOME={dir}/home\n",
            dir = dir.display()
        );
        std::fs::write(dir.join("sshd_config"), config).expect("sshd_config");
        let host_key = read(&dir.join("host_key.pub"))
            .split_whitespace()
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
        let user_key = read(&dir.join("user_key"));
        let name = format!("sshd-{port}");
        let process = Process::spawn(
            &name,
            Path::new(SSHD),
            &[
                "-D".into(),
                "-e".into(),
                "-f".into(),
                dir.join("sshd_config").display().to_string(),
            ],
            &[],
            dir,
        );
        let sshd = Self {
            process,
            port,
            dir: dir.to_path_buf(),
            host_key,
            user_key,
        };
        sshd.wait_listening().await;
        sshd
    }

    /// Waits until the port accepts connections (after a start or restart).
    pub async fn wait_listening(&self) {
        let port = self.port;
        wait_until(
            &format!("sshd to listen on 127.0.0.1:{port}"),
            Duration::from_secs(20),
            || async move {
                tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            },
        )
        .await;
    }

    /// SIGKILLs the server and every connection it serves (each is a child
    /// of the listener), then starts it again on the same port and keys.
    pub async fn restart(&mut self) {
        let listener = self.process.pid().to_string();
        let _ = Command::new("pkill")
            .args(["-KILL", "-P", &listener])
            .status();
        self.process.kill();
        self.process.start();
        self.wait_listening().await;
    }

    /// How many times this sshd let someone in with a key, from its own log.
    pub fn logins(&self) -> usize {
        std::fs::read_to_string(&self.process.log)
            .unwrap_or_default()
            .matches("Accepted publickey")
            .count()
    }

    /// The user this sshd lets in with [`Sshd::user_key`]: the test's own.
    pub fn user() -> String {
        std::env::var("USER")
            .ok()
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| "root".to_string())
    }

    /// A resource body of kind `ssh` for this server, with the user key.
    pub fn resource(&self, labels: serde_json::Value) -> serde_json::Value {
        serde_json::json!({
            "kind": "ssh",
            "labels": labels,
            "config": {"host": "127.0.0.1", "port": self.port, "user": Self::user(), "host_key": self.host_key},
            "secrets": {"private_key": self.user_key},
        })
    }
}
