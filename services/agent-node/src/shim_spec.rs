//! What the node hands `zf-driver-shim` (one JSON argument): the driver to
//! exec, the node it belongs to, and the sandbox to put it in. Shared by the
//! node (`launcher.rs`, `sandbox.rs`) and the shim
//! (`bin/zf-driver-shim.rs`), which are built together, so the two always
//! agree.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ShimSpec {
    /// The node's pid: a shim whose parent is already another process (the
    /// node died while it started) starts nothing.
    pub parent: i32,
    /// The driver's executable and its arguments.
    pub program: PathBuf,
    pub args: Vec<String>,
    pub sandbox: Sandbox,
}

/// Everything that confines one driver.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Sandbox {
    /// The user and group to run as; `None` keeps the node's (a node that
    /// is not root cannot switch).
    pub user: Option<DriverUser>,
    /// setrlimit values, each `None` for unlimited.
    pub limits: Limits,
    /// Landlock: the only paths the driver may touch, and how. `None` when
    /// the kernel has no Landlock.
    pub paths: Option<AllowedPaths>,
    /// A PID namespace and /proc of its own (where the node may make one).
    #[serde(default)]
    pub pid_namespace: bool,
}

#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct DriverUser {
    pub uid: u32,
    pub gid: u32,
}

#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Limits {
    pub address_space_bytes: Option<u64>,
    pub open_files: Option<u64>,
    pub processes: Option<u64>,
    pub cpu_seconds: Option<u64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct AllowedPaths {
    /// Read and execute: the driver's own bundle, system directories, and
    /// what the operator made readable (`--driver-readable`).
    pub read_exec: Vec<PathBuf>,
    /// Read and write files, no creation: device nodes like /dev/null.
    pub read_write_files: Vec<PathBuf>,
    /// Everything: the driver's scratch dir.
    pub full: Vec<PathBuf>,
}
