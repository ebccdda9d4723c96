//! How this node confines its drivers (module code is untrusted): the user
//! each runs as, the paths Landlock lets it touch, its resource limits, and
//! how many may run at once. [`Sandboxes`] turns the node's flags into a
//! [`Sandbox`] per run, which `zf-driver-shim` applies before it execs the
//! driver.
//!
//! Users: a node running as root gives every running driver its own uid
//! (from a block derived from the node id, no passwd entry needed) in the
//! primary group of `--driver-user`, so one driver cannot signal, trace,
//! read the scratch dir of, or use up the process limit of another, nor
//! read anything only the node's user may. A node that is not root cannot
//! switch: its drivers run as its own user, under Landlock alone.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use zerofoot_shared::protocol::DriverLimits;

use crate::config::SandboxArgs;
use crate::shim_spec::{AllowedPaths, DriverUser, Limits, Sandbox};

/// System paths every driver may read and execute.
const SYSTEM_READ: &[&str] = &[
    "/bin", "/sbin", "/usr", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt", "/proc", "/sys",
];
/// Device nodes every driver may read and write.
const DEVICES: &[&str] = &[
    "/dev/null",
    "/dev/zero",
    "/dev/full",
    "/dev/random",
    "/dev/urandom",
    "/dev/tty",
];
/// The most drivers a node may run at once (the size of its uid block).
pub const MAX_DRIVERS_LIMIT: usize = 4096;
/// Driver uids start here, far above any account a system creates.
const UID_FLOOR: u32 = 1_000_000_000;
/// How many uid blocks node ids are spread over.
const UID_BLOCKS: u32 = 700_000;

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("driver user {0:?} does not exist; create it (`useradd --system --no-create-home zerofoot-driver`) or name another with --driver-user")]
    NoSuchUser(String),
    #[error("cannot look up driver user {user:?}: {reason}")]
    Lookup { user: String, reason: String },
    #[error("driver user {0:?} is root: drivers would run with every privilege; name an unprivileged user with --driver-user, or pass --allow-root-drivers to accept that")]
    RootDrivers(String),
    #[error("this node runs as uid {uid}, not root, so it cannot run drivers as {user:?}; drop --driver-user (drivers then run as the node's user) or start the node as root")]
    CannotSwitch { uid: u32, user: String },
    #[error("--max-drivers must be 1 to {MAX_DRIVERS_LIMIT}, not {0}")]
    MaxDrivers(usize),
    #[error("{path} must be reachable by driver users (others need search permission, chmod o+x) for drivers to reach their scratch dir and bundle: {reason}")]
    Unreachable { path: String, reason: String },
}

/// Who drivers run as.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Users {
    /// Each driver its own uid: `first_uid + slot`, in group `gid`.
    PerDriver { first_uid: u32, gid: u32 },
    /// The node's own user (not root, or root allowed by the operator).
    Node,
}

#[derive(Clone)]
pub struct Sandboxes {
    inner: Arc<Inner>,
}

struct Inner {
    users: Users,
    landlock: bool,
    pid_namespace: bool,
    readable: Vec<PathBuf>,
    writable: Vec<PathBuf>,
    ceilings: DriverLimits,
    running: Arc<Semaphore>,
    free_slots: Arc<Mutex<Vec<u32>>>,
}

/// One of the node's driver places: held for as long as a driver runs.
pub struct DriverSlot {
    index: u32,
    free_slots: Arc<Mutex<Vec<u32>>>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for DriverSlot {
    fn drop(&mut self) {
        self.free_slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(self.index);
    }
}

impl Sandboxes {
    /// `shim` is asked whether this machine lets it give drivers a PID
    /// namespace of their own.
    pub fn new(args: &SandboxArgs, node_id: &str, shim: &Path) -> Result<Self, SandboxError> {
        if args.max_drivers == 0 || args.max_drivers > MAX_DRIVERS_LIMIT {
            return Err(SandboxError::MaxDrivers(args.max_drivers));
        }
        let users = choose_users(args, node_id)?;
        let landlock = landlock_abi().is_some();
        if !landlock {
            tracing::warn!("this kernel has no Landlock: drivers are not confined to their bundle and scratch dir (GET /v1/cluster shows sandbox: none for this node); run on Linux 5.13 or newer with Landlock enabled");
        }
        match users {
            Users::PerDriver { first_uid, gid } => tracing::info!(
                first_uid,
                gid,
                max_drivers = args.max_drivers,
                landlock,
                "drivers run each under their own uid"
            ),
            Users::Node => tracing::warn!(
                landlock,
                "drivers run as this node's own user: they could read what the node may read outside Landlock's rules; run the node as root to give each driver its own user"
            ),
        }
        let pid_namespace = users != Users::Node && probe_pid_namespace(shim);
        if users != Users::Node && !pid_namespace {
            tracing::warn!("drivers cannot get a PID namespace of their own here (a container without CAP_SYS_ADMIN?): they can list this machine's processes and read their command lines");
        }
        let mb = |v: u64| (v > 0).then_some(v);
        Ok(Self {
            inner: Arc::new(Inner {
                users,
                landlock,
                pid_namespace,
                readable: args.driver_readable.clone(),
                writable: args.driver_writable.clone(),
                ceilings: DriverLimits {
                    memory_mb: mb(args.driver_max_memory_mb),
                    open_files: mb(args.driver_max_open_files),
                    processes: mb(args.driver_max_processes),
                    cpu_s: mb(args.driver_max_cpu_s),
                },
                running: Arc::new(Semaphore::new(args.max_drivers)),
                free_slots: Arc::new(Mutex::new((0..args.max_drivers as u32).rev().collect())),
            }),
        })
    }

    /// What `GET /v1/cluster` shows for this node's sandbox: `landlock`
    /// (filesystem), `+pid-namespace` where drivers get their own, or `none`.
    pub fn kind(&self) -> &'static str {
        match (self.inner.landlock, self.inner.pid_namespace) {
            (true, true) => "landlock+pid-namespace",
            (true, false) => "landlock",
            (false, true) => "pid-namespace",
            (false, false) => "none",
        }
    }

    /// Checks that driver users can reach `dir` (every ancestor searchable
    /// by others) and makes `dir` itself searchable but not listable.
    pub fn make_reachable(&self, dir: &Path) -> Result<(), SandboxError> {
        if self.inner.users == Users::Node {
            return Ok(());
        }
        use std::os::unix::fs::PermissionsExt;
        let unreachable = |path: &Path, reason: String| SandboxError::Unreachable {
            path: path.display().to_string(),
            reason,
        };
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))
            .map_err(|e| unreachable(dir, e.to_string()))?;
        for ancestor in dir.ancestors().skip(1) {
            let mode = std::fs::metadata(ancestor)
                .map_err(|e| unreachable(ancestor, e.to_string()))?
                .permissions()
                .mode();
            if mode & 0o001 == 0 {
                return Err(unreachable(
                    ancestor,
                    format!("its mode is {:o}", mode & 0o7777),
                ));
            }
        }
        Ok(())
    }

    /// A place for one more driver; waits while `--max-drivers` run.
    pub async fn slot(&self) -> DriverSlot {
        let permit = match self.inner.running.clone().acquire_owned().await {
            Ok(permit) => permit,
            // The semaphore is never closed.
            Err(_) => unreachable!("the driver semaphore is never closed"),
        };
        let index = self
            .inner
            .free_slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
            .unwrap_or_default();
        DriverSlot {
            index,
            free_slots: self.inner.free_slots.clone(),
            _permit: permit,
        }
    }

    /// The user a driver in `slot` runs as, when the node switches users.
    pub fn user(&self, slot: &DriverSlot) -> Option<DriverUser> {
        match self.inner.users {
            Users::PerDriver { first_uid, gid } => Some(DriverUser {
                uid: first_uid + slot.index,
                gid,
            }),
            Users::Node => None,
        }
    }

    /// The sandbox of one driver: its bundle, its scratch dir, its limits
    /// (the operation's, under the node's ceilings).
    pub fn sandbox(
        &self,
        slot: &DriverSlot,
        bundle: &Path,
        scratch: &Path,
        wanted: &DriverLimits,
    ) -> Sandbox {
        let limits = wanted.under(&self.inner.ceilings);
        let paths = self.inner.landlock.then(|| {
            let mut read_exec: Vec<PathBuf> = SYSTEM_READ.iter().map(PathBuf::from).collect();
            read_exec.push(bundle.to_path_buf());
            read_exec.extend(self.inner.readable.iter().cloned());
            let mut full = vec![scratch.to_path_buf()];
            full.extend(self.inner.writable.iter().cloned());
            AllowedPaths {
                read_exec,
                read_write_files: DEVICES.iter().map(PathBuf::from).collect(),
                full,
            }
        });
        Sandbox {
            user: self.user(slot),
            limits: Limits {
                address_space_bytes: limits.memory_mb.map(|mb| mb.saturating_mul(1024 * 1024)),
                open_files: limits.open_files,
                processes: limits.processes,
                cpu_seconds: limits.cpu_s,
            },
            paths,
            pid_namespace: self.inner.pid_namespace,
        }
    }
}

/// Runs `shim --probe-pid-namespace` (a root node only: it needs the
/// privilege to make namespaces and mount /proc).
fn probe_pid_namespace(shim: &Path) -> bool {
    match std::process::Command::new(shim)
        .arg("--probe-pid-namespace")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .output()
    {
        Ok(out) if out.status.success() => true,
        Ok(out) => {
            tracing::info!(reason = %String::from_utf8_lossy(&out.stderr).trim(), "no PID namespaces for drivers");
            false
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot ask the driver shim about PID namespaces");
            false
        }
    }
}

fn choose_users(args: &SandboxArgs, node_id: &str) -> Result<Users, SandboxError> {
    let node_uid = nix::unistd::geteuid().as_raw();
    let name = args.driver_user.clone();
    if node_uid != 0 {
        return match name {
            Some(user) if lookup(&user)?.0 != node_uid => Err(SandboxError::CannotSwitch {
                uid: node_uid,
                user,
            }),
            _ => Ok(Users::Node),
        };
    }
    let name = name.unwrap_or_else(|| "zerofoot-driver".into());
    let (uid, gid) = lookup(&name)?;
    if uid == 0 {
        return if args.allow_root_drivers {
            tracing::warn!("--allow-root-drivers: drivers run as root; module code can do anything this machine allows");
            Ok(Users::Node)
        } else {
            Err(SandboxError::RootDrivers(name))
        };
    }
    Ok(Users::PerDriver {
        first_uid: first_uid_of(node_id),
        gid,
    })
}

fn lookup(name: &str) -> Result<(u32, u32), SandboxError> {
    match nix::unistd::User::from_name(name) {
        Ok(Some(user)) => Ok((user.uid.as_raw(), user.gid.as_raw())),
        Ok(None) => Err(SandboxError::NoSuchUser(name.into())),
        Err(e) => Err(SandboxError::Lookup {
            user: name.into(),
            reason: e.to_string(),
        }),
    }
}

/// The first uid of this node's block: spread by the node id, so nodes on
/// one machine (or in containers on one kernel, where process counts are
/// per uid) do not share driver uids.
fn first_uid_of(node_id: &str) -> u32 {
    let hash = node_id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    UID_FLOOR + (hash % u64::from(UID_BLOCKS)) as u32 * MAX_DRIVERS_LIMIT as u32
}

/// The kernel's Landlock ABI version, `None` without Landlock.
fn landlock_abi() -> Option<i64> {
    const LANDLOCK_CREATE_RULESET_VERSION: u32 = 1;
    // SAFETY: with a null attribute and size 0 this only asks for the version.
    let version = unsafe {
        nix::libc::syscall(
            nix::libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    (version > 0).then_some(version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_blocks_stay_in_range_and_differ_by_node() {
        let a = first_uid_of("node-a");
        let b = first_uid_of("node-b");
        assert_ne!(a, b);
        for uid in [a, b] {
            assert!(uid >= UID_FLOOR);
            assert!(u64::from(uid) + MAX_DRIVERS_LIMIT as u64 <= u64::from(u32::MAX - 1));
        }
    }

    #[test]
    fn operation_limits_stay_under_the_node_ceilings() {
        let ceiling = DriverLimits {
            memory_mb: Some(1024),
            open_files: Some(256),
            processes: None,
            cpu_s: Some(60),
        };
        let wanted = DriverLimits {
            memory_mb: Some(4096),
            open_files: Some(64),
            processes: Some(10),
            cpu_s: None,
        };
        assert_eq!(
            wanted.under(&ceiling),
            DriverLimits {
                memory_mb: Some(1024),
                open_files: Some(64),
                processes: Some(10),
                cpu_s: Some(60),
            }
        );
    }
}
