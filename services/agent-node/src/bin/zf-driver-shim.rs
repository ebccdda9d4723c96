//! `zf-driver-shim`: the first thing a driver process runs. The node starts
//! it with `posix_spawn` (no fork of the node's address space, so starting a
//! driver costs the same however much memory the node holds) and the shim,
//! a fresh single-threaded process, sets the driver up where that is safe:
//! - it dies with the node, and starts nothing if the node is already gone;
//! - it leads its own session and process group (the group the node and its
//!   watchdog kill);
//! - it keeps no file descriptor but stdin, stdout and stderr;
//! - it sets the resource limits, drops to the driver's user and group, and
//!   confines the filesystem with Landlock (and signals to its own domain);
//! - then it execs the driver in place, so the driver has the shim's pid.
//!
//! It prints why on stderr and exits 127 when any step fails: a driver never
//! runs less confined than the node asked.

#[path = "../shim_spec.rs"]
mod shim_spec;

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
    let spec = match std::env::args()
        .nth(1)
        .as_deref()
        .map(serde_json::from_str::<ShimSpec>)
    {
        Some(Ok(spec)) => spec,
        Some(Err(e)) => return fail(&format!("unreadable driver spec: {e}")),
        None => return fail("no driver spec given; the agent node starts this program"),
    };
    match start(&spec) {
        Ok(never) => match never {},
        Err(message) => fail(&message),
    }
}

fn fail(message: &str) -> ExitCode {
    eprintln!("zf-driver-shim: {message}");
    ExitCode::from(CANNOT_START)
}

fn start(spec: &ShimSpec) -> Result<Infallible, String> {
    // Dies with the node (its runtime thread that spawned it, which lives as
    // long as the node); the watchdog covers the rest.
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
        .map_err(|e| format!("cannot ask to die with the node: {e}"))?;
    if nix::unistd::getppid().as_raw() != spec.parent {
        return Err("the node that started this driver is gone".into());
    }
    nix::unistd::setsid().map_err(|e| format!("cannot start a session: {e}"))?;
    close_inherited_descriptors()?;
    set_limits(&spec.sandbox.limits)?;
    if let Some(user) = spec.sandbox.user {
        become_user(user)?;
    }
    if let Some(paths) = &spec.sandbox.paths {
        confine(paths)?;
    }
    // The driver's own process group gets the parent-death signal too: set
    // again after the credential change, which clears it.
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
        .map_err(|e| format!("cannot ask to die with the node: {e}"))?;
    if nix::unistd::getppid().as_raw() != spec.parent {
        return Err("the node that started this driver is gone".into());
    }
    let err = std::process::Command::new(&spec.program)
        .args(&spec.args)
        .exec();
    Err(format!("cannot start {}: {err}", spec.program.display()))
}

/// Closes every descriptor above stderr: whatever the node (or a library
/// in it) left open without close-on-exec must not reach module code.
fn close_inherited_descriptors() -> Result<(), String> {
    // SAFETY: close_range only closes descriptors; this process holds none
    // above 2 that any Rust value owns.
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
