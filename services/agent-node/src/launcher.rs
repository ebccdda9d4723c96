//! How this node starts driver processes: through `zf-driver-shim`, spawned
//! with `posix_spawn`, so the node's address space is never forked (a fork
//! copies the page tables of everything the node holds, and its cost grows
//! with the mirror), and every setup step runs in the shim, a fresh
//! single-threaded process where it is safe. The watchdog hears of each
//! driver's process group while it runs.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use crate::shim_spec::{Sandbox, ShimSpec};
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
}

impl Launcher {
    pub fn new(shim: PathBuf, watchdog: Option<Watchdog>) -> Self {
        Self { shim, watchdog }
    }

    pub fn watchdog(&self) -> Option<&Watchdog> {
        self.watchdog.as_ref()
    }

    /// The command that runs `program operation` with exactly `env`, in
    /// `dir`, with piped stdio. Nothing here may add a `pre_exec` hook or a
    /// uid: either would make the standard library fork instead of spawn.
    pub fn command(
        &self,
        program: &Path,
        operation: &str,
        dir: &Path,
        env: &[(String, String)],
        sandbox: &Sandbox,
    ) -> tokio::process::Command {
        let spec = ShimSpec {
            parent: std::process::id() as i32,
            program: program.to_path_buf(),
            args: vec![operation.to_string()],
            sandbox: sandbox.clone(),
        };
        let mut command = tokio::process::Command::new(&self.shim);
        command
            .arg(serde_json::to_string(&spec).unwrap_or_default())
            .current_dir(dir)
            .env_clear()
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        command
    }
}
