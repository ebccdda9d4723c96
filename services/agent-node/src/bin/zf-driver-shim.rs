//! `zf-driver-shim`: the first thing a driver process runs. The node starts
//! it with `posix_spawn` (no fork of the node's address space, so starting a
//! driver costs the same however much memory the node holds) and the shim,
//! a fresh single-threaded process, sets the driver up where that is safe:
//! it dies with the node, leads its own session and process group (the
//! group the node and its watchdog kill), keeps no file descriptor but
//! stdin, stdout and stderr, and then execs the driver in place, so the
//! driver has the shim's pid. It prints why on stderr and exits 127 when
//! it cannot.

#[path = "../shim_spec.rs"]
mod shim_spec;

use std::convert::Infallible;
use std::os::unix::process::CommandExt;
use std::process::ExitCode;

use nix::sys::signal::Signal;
use shim_spec::ShimSpec;

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
