//! What the node and `zf-driver-shim` say to each other: the driver to
//! exec, the process it belongs to, and the sandbox to put it in; and, for
//! the shim serving as the node's spawner, each request to start a driver
//! and the spawner's replies, and how one datagram with its descriptors
//! goes over their socket. Shared by the node (`launcher.rs`,
//! `sandbox.rs`) and the shim (`bin/zf-driver-shim.rs`), which are built
//! together, so the two always agree.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;

use nix::sys::socket::{recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags, UnixAddr};
use serde::{Deserialize, Serialize};

/// What one shim applies. Only the shim builds it (from its argument, or
/// from a [`SpawnRequest`]); the node builds requests.
#[allow(dead_code)]
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct ShimSpec {
    /// The pid of the process that started the shim (the spawner, or the
    /// node): a shim whose parent is already another process (it died while
    /// the shim started) starts nothing.
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

/// One driver to start, as the node asks its spawner (one datagram, with
/// the driver's stdin, stdout and stderr passed alongside, in that order).
/// The environment travels here, not on a command line others can read.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct SpawnRequest {
    pub program: PathBuf,
    pub args: Vec<String>,
    /// The driver's working directory.
    pub dir: PathBuf,
    /// The driver's whole environment: it inherits nothing else.
    pub env: Vec<(String, String)>,
    pub sandbox: Sandbox,
}

/// What the spawner tells the node, one datagram each. Every request gets
/// exactly one `Started` or `Refused`, in the order the requests came;
/// every started shim later gets one `Exited`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum SpawnReply {
    /// The shim for the next request runs as `pid`, which is also the
    /// process group it is about to lead.
    Started { pid: i32 },
    /// The next request started nothing, and why.
    Refused { reason: String },
    /// Shim `pid` ended; `status` is its raw wait status.
    Exited { pid: i32, status: i32 },
}

/// The largest request a spawner reads; a larger one is refused.
pub const MAX_SPAWN_REQUEST: usize = 128 * 1024;

/// One datagram read from the node–spawner socket.
pub struct Datagram {
    /// How many bytes of the buffer it filled.
    pub bytes: usize,
    /// It, or the descriptors with it, did not fit.
    pub truncated: bool,
    /// The descriptors that came with it, now owned here.
    pub fds: Vec<OwnedFd>,
}

/// Reads one datagram into `buffer`, with up to three descriptors.
pub fn receive(socket: RawFd, buffer: &mut [u8]) -> nix::Result<Datagram> {
    let mut space = nix::cmsg_space!([RawFd; 3]);
    let mut iov = [IoSliceMut::new(buffer)];
    let message = recvmsg::<UnixAddr>(
        socket,
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let mut fds = Vec::new();
    for cmsg in message.cmsgs()? {
        if let ControlMessageOwned::ScmRights(received) = cmsg {
            // SAFETY: the kernel just gave this process these descriptors;
            // nothing else owns them.
            fds.extend(
                received
                    .into_iter()
                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
            );
        }
    }
    Ok(Datagram {
        bytes: message.bytes,
        truncated: message
            .flags
            .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC),
        fds,
    })
}

/// Sends `bytes` as one datagram, with `fds` alongside.
pub fn send(socket: RawFd, bytes: &[u8], fds: &[RawFd]) -> nix::Result<usize> {
    let rights = [ControlMessage::ScmRights(fds)];
    let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &rights };
    sendmsg::<UnixAddr>(
        socket,
        &[IoSlice::new(bytes)],
        cmsgs,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )
}
