//! What the node hands `zf-driver-shim` (one JSON argument): the driver to
//! exec and the node it belongs to. Shared by the node (`launcher.rs`) and
//! the shim (`bin/zf-driver-shim.rs`), which are built together, so the two
//! always agree.

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
}
