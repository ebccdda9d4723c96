//! `zf-driver-shim`: the first thing a driver process runs. It serves
//! the node as its spawner (`--serve <node pid>`): a small single-threaded
//! process the node starts once with `posix_spawn`, which forks a shim for
//! each driver the node asks for. A fork of this process is cheap (it holds
//! almost nothing), and the shim needs no exec of its own; the node's
//! address space is never forked. Each shim sets its driver up where that
//! is safe:
//! - it dies with the spawner, which dies with the node, and starts
//!   nothing if its parent is already gone;
//! - it leads its own session and process group (the group the node and its
//!   watchdog kill), and stays as the driver's parent and subreaper, so
//!   nothing the driver leaves behind outlives it or lingers as a zombie;
//! - it keeps no file descriptor but stdin, stdout and stderr;
//! - where the node can, it gives the driver a PID namespace of its own
//!   with its own /proc: the spawner forks the shim into a new namespace
//!   as its init (`namespace_init`); a shim exec'd for one driver makes the
//!   namespace and forks its init (`in_own_pid_namespace`);
//! - it sets the resource limits, drops to the driver's user and group, and
//!   confines the filesystem with Landlock (and signals to its own domain);
//! - then its child execs the driver.
//!
//! Given a spec as its one argument instead, it is that one shim, for one
//! driver, with the environment and directory it was started with.
//!
//! A shim prints why on stderr and exits 127 when any step fails: a driver
//! never runs less confined than the node asked.

#[path = "../shim_spec.rs"]
mod shim_spec;
#[path = "zf-driver-shim/spawner.rs"]
mod spawner;

use std::convert::Infallible;
use std::os::unix::process::CommandExt;
use std::process::ExitCode;

use landlock::{
    path_beneath_rules, Access, AccessFs, CompatLevel, Compatible, Ruleset, RulesetAttr,
    RulesetCreatedAttr, RulesetStatus, Scope, ABI,
};
use nix::sys::resource::{setrlimit, Resource};
use nix::sys::signal::Signal;
use shim_spec::{AllowedPaths, DriverUser, Limits, ShimSpec};

/// The exit status when the driver could not be started.
const CANNOT_START: u8 = 127;

fn main() -> ExitCode {
    match std::env::args().nth(1).as_deref() {
        Some("--probe-pid-namespace") => return probe_pid_namespace(),
        Some("--serve") => return spawner::serve(std::env::args().nth(2)),
        _ => {}
    }
    let spec = match std::env::args()
        .nth(1)
        .as_deref()
        .map(serde_json::from_str::<ShimSpec>)
    {
        Some(Ok(spec)) => spec,
        Some(Err(e)) => return fail(&format!("unreadable driver spec: {e}")),
        None => return fail("no driver spec given; the agent node starts this program"),
    };
    match start(&spec, None, false) {
        Ok(never) => match never {},
        Err(message) => fail(&message),
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("zf-driver-shim: {message}");
    ExitCode::from(CANNOT_START)
}

/// Sets this process up as the driver's shim and starts the driver, with
/// exactly `env` when given (else this process's own environment).
/// `forked_as_init`: the spawner forked this process into a PID namespace of
/// its own, as its init, so it sets up the rest of the namespace itself;
/// otherwise a driver that needs one gets it through `in_own_pid_namespace`.
fn start(
    spec: &ShimSpec,
    env: Option<&[(String, String)]>,
    forked_as_init: bool,
) -> Result<Infallible, String> {
    // Dies with its parent (the spawner, or the node's runtime thread that
    // spawned it, which lives as long as the node); the watchdog covers the
    // rest.
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
        .map_err(|e| format!("cannot ask to die with its parent: {e}"))?;
    // getppid() is 0 in a namespace of its own; the /proc still mounted
    // there is the spawner's, and its PPid is the one the kernel changes
    // (before it sends the death signal) when the parent dies.
    let parent = match forked_as_init {
        true => parent_in_outer_proc()?,
        false => nix::unistd::getppid().as_raw(),
    };
    if parent != spec.parent {
        return Err("the process that started this shim (the node's spawner) is gone".into());
    }
    nix::unistd::setsid().map_err(|e| format!("cannot start a session: {e}"))?;
    close_inherited_descriptors()?;
    if forked_as_init {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
            .map_err(|e| format!("cannot make a mount namespace: {e}"))?;
        ignore_stop_signals();
        return namespace_init(spec, env);
    }
    if spec.sandbox.pid_namespace {
        return in_own_pid_namespace(spec, env);
    }
    supervised(spec, env)
}

/// Runs the driver as this process's child, with this process as the
/// subreaper of everything the driver starts: whatever the driver leaves
/// behind (even processes that left its group) comes back here, is killed
/// when the driver ends, and is reaped, rather than piling up as zombies
/// under a node that is pid 1 of its container. Signals to the group reach
/// the driver directly; this process ignores SIGTERM, SIGINT and SIGHUP and
/// ends as the driver ended.
fn supervised(spec: &ShimSpec, env: Option<&[(String, String)]>) -> Result<Infallible, String> {
    use nix::unistd::{fork, ForkResult};
    nix::sys::prctl::set_child_subreaper(true)
        .map_err(|e| format!("cannot become the driver's subreaper: {e}"))?;
    ignore_stop_signals();
    let me = nix::unistd::getpid().as_raw();
    // SAFETY: this process has one thread.
    match unsafe { fork() }.map_err(|e| format!("cannot fork the driver: {e}"))? {
        ForkResult::Child => {
            restore_stop_signals();
            run_driver(spec, env, me)
        }
        ForkResult::Parent { child } => {
            release_driver_pipes();
            let status = reap_until_status(child)?;
            kill_descendants();
            end_as(status)
        }
    }
}

/// Reaps every child until `driver` ends; its status.
fn reap_until_status(driver: nix::unistd::Pid) -> Result<nix::sys::wait::WaitStatus, String> {
    use nix::sys::wait::{waitpid, WaitStatus};
    loop {
        match waitpid(None, None) {
            Ok(status @ (WaitStatus::Exited(pid, _) | WaitStatus::Signaled(pid, _, _)))
                if pid == driver =>
            {
                return Ok(status)
            }
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(format!("cannot wait for the driver: {e}")),
        }
    }
}

/// SIGKILLs and reaps every process left below this one, until none is:
/// each one's orphans come back here, as this process is their subreaper.
fn kill_descendants() {
    use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
    let me = nix::unistd::getpid();
    for _ in 0..10_000 {
        let children =
            std::fs::read_to_string(format!("/proc/{me}/task/{me}/children")).unwrap_or_default();
        let pids: Vec<i32> = children
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        if pids.is_empty() {
            // Reap any already dead ones, then done.
            while let Ok(status) = waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                if status == WaitStatus::StillAlive {
                    break;
                }
            }
            return;
        }
        for pid in pids {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
        }
        let _ = waitpid(None, None);
    }
}

/// Ends this process as the driver ended: its exit code, or its signal.
fn end_as(status: nix::sys::wait::WaitStatus) -> Result<Infallible, String> {
    use nix::sys::wait::WaitStatus;
    match status {
        WaitStatus::Exited(_, code) => std::process::exit(code),
        WaitStatus::Signaled(_, sig, _) => {
            restore_stop_signals();
            let _ = nix::sys::signal::raise(sig);
            std::process::exit(128 + sig as i32)
        }
        other => Err(format!("the driver ended oddly: {other:?}")),
    }
}

/// Confines this process and execs the driver; `parent` is who must still
/// be its parent by then.
fn run_driver(
    spec: &ShimSpec,
    env: Option<&[(String, String)]>,
    parent: i32,
) -> Result<Infallible, String> {
    lower_priority()?;
    set_limits(&spec.sandbox.limits)?;
    if let Some(user) = spec.sandbox.user {
        become_user(user)?;
    }
    if let Some(paths) = &spec.sandbox.paths {
        confine(paths)?;
    }
    // Set again after the credential change, which clears it.
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
        .map_err(|e| format!("cannot ask to die with its shim: {e}"))?;
    if nix::unistd::getppid().as_raw() != parent {
        return Err("the shim that started this driver is gone".into());
    }
    let mut command = std::process::Command::new(&spec.program);
    command.args(&spec.args);
    if let Some(env) = env {
        command.env_clear().envs(env.iter().map(|(k, v)| (k, v)));
    }
    let err = command.exec();
    Err(format!("cannot start {}: {err}", spec.program.display()))
}

/// How much below the node drivers run (nice): however many of them are
/// busy, the node's heartbeats and fencing keep their share of the CPU, so
/// a busy node is not taken for a dead one.
const DRIVER_NICENESS: i32 = 10;

fn lower_priority() -> Result<(), String> {
    nix::errno::Errno::clear();
    // SAFETY: nice changes this process's own priority; raising niceness
    // (relative to the node's) needs no privilege.
    let niceness = unsafe { nix::libc::nice(DRIVER_NICENESS) };
    match nix::errno::Errno::last() {
        errno if niceness == -1 && errno != nix::errno::Errno::UnknownErrno => {
            Err(format!("cannot lower the driver's priority: {errno}"))
        }
        _ => Ok(()),
    }
}

/// Runs the driver as pid 2 of a PID namespace of its own, under a small
/// init (pid 1, this program) that only reaps, with its own /proc: the
/// driver sees no process but its own, and when it ends, the kernel kills
/// whatever it left in the namespace, even processes that left its group.
/// This process stays as the spawner's child (the pid the node and watchdog
/// know, leader of the group every process here is in) and ends as the
/// driver ended. Signals to the group reach the driver directly; the two
/// shims ignore SIGTERM, SIGINT and SIGHUP and end with it.
fn in_own_pid_namespace(
    spec: &ShimSpec,
    env: Option<&[(String, String)]>,
) -> Result<Infallible, String> {
    use nix::sched::{unshare, CloneFlags};
    use nix::unistd::{fork, ForkResult};
    unshare(CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWNS)
        .map_err(|e| format!("cannot make a PID namespace: {e}"))?;
    ignore_stop_signals();
    // SAFETY: this process has one thread.
    match unsafe { fork() }.map_err(|e| format!("cannot fork the namespace's init: {e}"))? {
        ForkResult::Parent { child } => {
            release_driver_pipes();
            exit_as(child)
        }
        ForkResult::Child => {
            // pid 1 of the namespace; dies with the outer shim.
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
                .map_err(|e| format!("cannot ask to die with the outer shim: {e}"))?;
            namespace_init(spec, env)
        }
    }
}

/// This process's parent as the mounted /proc shows it (`PPid:`).
fn parent_in_outer_proc() -> Result<i32, String> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| format!("cannot read /proc/self/status: {e}"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("PPid:"))
        .and_then(|pid| pid.trim().parse().ok())
        .ok_or_else(|| "no PPid in /proc/self/status".to_string())
}

/// The namespace's init (pid 1): mounts the namespace's /proc, forks the
/// driver (pid 2) and reaps until it ends, then ends as it did. The shim
/// the spawner forked into the namespace is this init itself (one process
/// fewer per driver); a shim exec'd for one driver forks it.
fn namespace_init(spec: &ShimSpec, env: Option<&[(String, String)]>) -> Result<Infallible, String> {
    use nix::unistd::{fork, ForkResult};
    mount_own_proc()?;
    // SAFETY: this process has one thread.
    match unsafe { fork() }.map_err(|e| format!("cannot fork the driver: {e}"))? {
        ForkResult::Child => {
            restore_stop_signals();
            run_driver(spec, env, 1)
        }
        ForkResult::Parent { child } => {
            release_driver_pipes();
            reap_until(child)
        }
    }
}

fn ignore_stop_signals() {
    use nix::sys::signal::{signal, SigHandler};
    for sig in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        // SAFETY: ignoring a signal installs no handler code.
        let _ = unsafe { signal(sig, SigHandler::SigIgn) };
    }
}

fn restore_stop_signals() {
    use nix::sys::signal::{signal, SigHandler};
    for sig in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        // SAFETY: the default disposition installs no handler code.
        let _ = unsafe { signal(sig, SigHandler::SigDfl) };
    }
}

/// The shims must not keep the driver's stdin or stdout open: the node
/// reads stdout to its end. stderr stays, for their own messages.
fn release_driver_pipes() {
    let _ = nix::unistd::close(0);
    let _ = nix::unistd::close(1);
}

/// A /proc of this namespace alone, on a mount this namespace alone sees.
fn mount_own_proc() -> Result<(), String> {
    use nix::mount::{mount, MsFlags};
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| format!("cannot make mounts private: {e}"))?;
    mount(
        Some("proc"),
        "/proc",
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|e| format!("cannot mount /proc for the namespace: {e}"))
}

/// The namespace's init: reaps every process until `driver` ends, then
/// ends with its status (the kernel then kills the rest).
fn reap_until(driver: nix::unistd::Pid) -> Result<Infallible, String> {
    use nix::sys::wait::WaitStatus;
    // A namespace's init cannot raise a signal on itself: a signal becomes
    // 128 + its number, as a shell reports it.
    match reap_until_status(driver)? {
        WaitStatus::Signaled(_, sig, _) => std::process::exit(128 + sig as i32),
        status => end_as(status),
    }
}

/// Waits for `child` and ends the same way: its exit code, or its signal.
fn exit_as(child: nix::unistd::Pid) -> Result<Infallible, String> {
    use nix::sys::wait::{waitpid, WaitStatus};
    loop {
        match waitpid(child, None) {
            Ok(status @ (WaitStatus::Exited(..) | WaitStatus::Signaled(..))) => {
                return end_as(status)
            }
            Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(format!("cannot wait for the namespace's init: {e}")),
        }
    }
}

/// `--probe-pid-namespace`: whether this machine lets the spawner give a
/// driver a PID namespace with its own /proc (root, and a container allowing
/// mounts), the way it does: a new PID namespace for its next child, then
/// back to its own; in the child, a mount namespace and a /proc.
fn probe_pid_namespace() -> ExitCode {
    use nix::sched::{setns, unshare, CloneFlags};
    use nix::unistd::{fork, ForkResult};
    let own = match std::fs::File::open("/proc/self/ns/pid") {
        Ok(own) => own,
        Err(e) => return fail(&format!("cannot open its own PID namespace: {e}")),
    };
    if let Err(e) = unshare(CloneFlags::CLONE_NEWPID) {
        return fail(&format!("no PID namespace: {e}"));
    }
    // SAFETY: this process has one thread.
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            match unshare(CloneFlags::CLONE_NEWNS)
                .map_err(|e| format!("no mount namespace: {e}"))
                .and_then(|()| mount_own_proc())
            {
                Ok(()) => std::process::exit(0),
                Err(e) => {
                    eprintln!("zf-driver-shim: {e}");
                    std::process::exit(i32::from(CANNOT_START))
                }
            }
        }
        Ok(ForkResult::Parent { child }) => {
            let back = setns(&own, CloneFlags::CLONE_NEWPID);
            match (back, nix::sys::wait::waitpid(child, None)) {
                (Err(e), _) => fail(&format!("cannot return to its own PID namespace: {e}")),
                (Ok(()), Ok(nix::sys::wait::WaitStatus::Exited(_, 0))) => ExitCode::SUCCESS,
                (Ok(()), _) => ExitCode::from(CANNOT_START),
            }
        }
        Err(e) => fail(&format!("cannot fork: {e}")),
    }
}

/// Closes every descriptor above stderr: whatever the node (or a library
/// in it) left open without close-on-exec must not reach module code.
fn close_inherited_descriptors() -> Result<(), String> {
    // SAFETY: close_range only closes descriptors. No Rust value that owns
    // one above 2 is used again: the spawner calls this before it opens
    // any, and a shim forked from it never returns to the spawner's frames
    // (it execs, or ends with _exit).
    let closed = unsafe { nix::libc::syscall(nix::libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    if closed != 0 {
        return Err(format!(
            "cannot close inherited descriptors: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

fn set_limits(limits: &Limits) -> Result<(), String> {
    let pairs = [
        (
            Resource::RLIMIT_AS,
            limits.address_space_bytes,
            "address space",
        ),
        (Resource::RLIMIT_NOFILE, limits.open_files, "open files"),
        (Resource::RLIMIT_NPROC, limits.processes, "processes"),
        (Resource::RLIMIT_CPU, limits.cpu_seconds, "CPU time"),
    ];
    // Unset limits stay as the node's (infinity is not always allowed).
    for (resource, value, what) in pairs {
        let Some(value) = value else { continue };
        setrlimit(resource, value, value)
            .map_err(|e| format!("cannot limit {what} to {value}: {e}"))?;
    }
    Ok(())
}

/// Drops every privilege of the node's user for the driver's: no
/// supplementary groups, then the group, then the user (real, effective and
/// saved, so there is no way back).
fn become_user(user: DriverUser) -> Result<(), String> {
    let gid = nix::unistd::Gid::from_raw(user.gid);
    let uid = nix::unistd::Uid::from_raw(user.uid);
    nix::unistd::setgroups(&[gid]).map_err(|e| format!("cannot drop groups: {e}"))?;
    nix::unistd::setresgid(gid, gid, gid)
        .map_err(|e| format!("cannot become group {}: {e}", user.gid))?;
    nix::unistd::setresuid(uid, uid, uid)
        .map_err(|e| format!("cannot become user {}: {e}", user.uid))?;
    if nix::unistd::setuid(nix::unistd::Uid::from_raw(0)).is_ok() && user.uid != 0 {
        return Err("could become root again after dropping to the driver's user".into());
    }
    Ok(())
}

/// Landlock, as strict as the kernel allows (the node has checked that it
/// has Landlock at all): only `paths`, and no signals or abstract unix
/// sockets outside the driver's own processes.
fn confine(paths: &AllowedPaths) -> Result<(), String> {
    let abi = ABI::V7;
    let existing = |list: &[std::path::PathBuf]| -> Vec<std::path::PathBuf> {
        list.iter().filter(|p| p.exists()).cloned().collect()
    };
    let read_exec = AccessFs::from_read(abi);
    let read_write_files =
        AccessFs::ReadFile | AccessFs::WriteFile | AccessFs::Truncate | AccessFs::IoctlDev;
    let status = Ruleset::default()
        .set_compatibility(CompatLevel::BestEffort)
        .handle_access(AccessFs::from_all(abi))
        .and_then(|r| r.scope(Scope::Signal | Scope::AbstractUnixSocket))
        .and_then(|r| r.create())
        .and_then(|r| r.add_rules(path_beneath_rules(existing(&paths.read_exec), read_exec)))
        .and_then(|r| {
            r.add_rules(path_beneath_rules(
                existing(&paths.read_write_files),
                read_write_files,
            ))
        })
        .and_then(|r| {
            r.add_rules(path_beneath_rules(
                existing(&paths.full),
                AccessFs::from_all(abi),
            ))
        })
        .and_then(|r| r.restrict_self())
        .map_err(|e| format!("cannot confine the driver with Landlock: {e}"))?;
    match status.ruleset {
        RulesetStatus::NotEnforced => Err("Landlock did not enforce the driver's sandbox".into()),
        _ => Ok(()),
    }
}
