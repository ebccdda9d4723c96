//! `zf-driver-shim --serve <node pid>`: the node's spawner. Started once by
//! the node, with a unix datagram socket as its stdin, it forks one shim
//! per request (see `SpawnRequest`), reaps them, and tells the node about
//! each (`SpawnReply`). It is one thread, so each fork is safe and cheap,
//! and each shim starts without an exec of its own.
//!
//! It dies with the node (the death signal, and the node's end of the socket
//! closing), and every shim dies with it.

use std::collections::HashSet;
use std::convert::Infallible;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::process::ExitCode;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::unistd::{fork, ForkResult, Pid};

use crate::shim_spec::{receive, Datagram, ShimSpec, SpawnReply, SpawnRequest, MAX_SPAWN_REQUEST};

/// The socket to the node: this process's stdin.
const NODE: RawFd = 0;

pub fn serve(node: Option<String>) -> ExitCode {
    match serve_until_the_node_is_gone(node) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("zf-driver-shim (spawner): {message}");
            ExitCode::from(super::CANNOT_START)
        }
    }
}

fn serve_until_the_node_is_gone(node: Option<String>) -> Result<(), String> {
    let node: i32 = node
        .as_deref()
        .and_then(|pid| pid.parse().ok())
        .ok_or("--serve needs the node's pid; the agent node starts this program")?;
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)
        .map_err(|e| format!("cannot ask to die with the node: {e}"))?;
    if nix::unistd::getppid().as_raw() != node {
        return Err("the node that started this spawner is gone".into());
    }
    // Whatever a killed shim leaves behind comes back here to be reaped,
    // rather than to the node (pid 1 of its container, which reaps only
    // its own children).
    nix::sys::prctl::set_child_subreaper(true)
        .map_err(|e| format!("cannot become the shims' subreaper: {e}"))?;
    // Nothing the node left open without close-on-exec stays here.
    super::close_inherited_descriptors()?;
    // Children's ends arrive as a readable descriptor, not as a handler.
    let mut sigchld = SigSet::empty();
    sigchld.add(Signal::SIGCHLD);
    sigchld
        .thread_block()
        .map_err(|e| format!("cannot block SIGCHLD: {e}"))?;
    let children = SignalFd::with_flags(&sigchld, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(|e| format!("cannot watch for children: {e}"))?;
    // Its own PID namespace, to come back to after each fork into a new one.
    let own_pid_namespace = std::fs::File::open("/proc/self/ns/pid")
        .map_err(|e| format!("cannot open this spawner's PID namespace: {e}"));
    // SAFETY: fd 0 is this process's stdin, open for its whole life.
    let socket = unsafe { BorrowedFd::borrow_raw(NODE) };
    let mut buffer = vec![0u8; MAX_SPAWN_REQUEST];
    let mut shims = HashSet::new();
    loop {
        let mut fds = [
            PollFd::new(socket, PollFlags::POLLIN),
            PollFd::new(children.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(format!("cannot wait for requests: {e}")),
        }
        let request_ready = fds[0].any().unwrap_or(false);
        let child_ended = fds[1].any().unwrap_or(false);
        if child_ended {
            while let Ok(Some(_)) = children.read_signal() {}
            reap_and_report(&mut shims)?;
        }
        if request_ready && !serve_one(&mut buffer, &mut shims, &own_pid_namespace)? {
            return Ok(());
        }
    }
}

/// Reads one request and starts its shim; `false` once the node has closed
/// its end.
fn serve_one(
    buffer: &mut [u8],
    shims: &mut HashSet<i32>,
    own_pid_namespace: &Result<std::fs::File, String>,
) -> Result<bool, String> {
    let Datagram {
        bytes,
        truncated,
        fds,
    } = match receive(NODE, buffer) {
        Ok(datagram) => datagram,
        Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => return Ok(true),
        Err(e) => return Err(format!("cannot read from the node: {e}")),
    };
    if bytes == 0 && fds.is_empty() {
        return Ok(false);
    }
    let request = if truncated {
        Err(format!(
            "the request is larger than {MAX_SPAWN_REQUEST} bytes"
        ))
    } else {
        serde_json::from_slice::<SpawnRequest>(&buffer[..bytes])
            .map_err(|e| format!("unreadable request: {e}"))
    };
    let reply = match (request, <[OwnedFd; 3]>::try_from(fds)) {
        (Err(reason), _) => SpawnReply::Refused { reason },
        (Ok(_), Err(fds)) => SpawnReply::Refused {
            reason: format!(
                "a request comes with stdin, stdout and stderr; this one came with {} descriptors",
                fds.len()
            ),
        },
        (Ok(request), Ok(stdio)) => match start_shim(&request, stdio, own_pid_namespace) {
            Ok((pid, pidfd)) => {
                shims.insert(pid.as_raw());
                send(&SpawnReply::Started { pid: pid.as_raw() }, Some(&pidfd))?;
                return Ok(true);
            }
            Err(StartError::Refused(reason)) => SpawnReply::Refused { reason },
            Err(StartError::Broken(message)) => return Err(message),
        },
    };
    send(&reply, None)?;
    Ok(true)
}

enum StartError {
    /// This driver cannot start; the next one may.
    Refused(String),
    /// This spawner can start none any more.
    Broken(String),
}

/// Forks the shim for `request`, with `stdio` as its stdin, stdout and
/// stderr; its pid, and a pidfd for it (taken before anything can reap it).
/// A shim for a driver in a PID namespace of its own is forked straight
/// into a new namespace, as its init: one process fewer per driver than a
/// shim that makes the namespace and forks its init.
fn start_shim(
    request: &SpawnRequest,
    stdio: [OwnedFd; 3],
    own_pid_namespace: &Result<std::fs::File, String>,
) -> Result<(Pid, OwnedFd), StartError> {
    use nix::sched::CloneFlags;
    let spec = ShimSpec {
        parent: nix::unistd::getpid().as_raw(),
        program: request.program.clone(),
        args: request.args.clone(),
        sandbox: request.sandbox.clone(),
    };
    let own_pid_namespace = match (own_pid_namespace, spec.sandbox.pid_namespace) {
        (_, false) => None,
        (Ok(own), true) => Some(own),
        (Err(e), true) => return Err(StartError::Refused(e.clone())),
    };
    if own_pid_namespace.is_some() {
        // The next child is pid 1 of a new namespace (this process stays
        // where it is).
        nix::sched::unshare(CloneFlags::CLONE_NEWPID)
            .map_err(|e| StartError::Refused(format!("cannot make a PID namespace: {e}")))?;
    }
    // SAFETY: this process has one thread.
    let forked = unsafe { fork() };
    if let (Some(own), Ok(ForkResult::Parent { .. }) | Err(_)) = (own_pid_namespace, &forked) {
        // Children after this one start in this process's own namespace
        // again (and a later unshare may make another). The node's probe
        // checked that this works; should it fail now, every later fork
        // would, and this spawner ends (the node starts another).
        if let Err(e) = nix::sched::setns(own, CloneFlags::CLONE_NEWPID) {
            if let Ok(ForkResult::Parent { child }) = forked {
                let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
            }
            return Err(StartError::Broken(format!(
                "cannot return to its own PID namespace after a fork: {e}"
            )));
        }
    }
    match forked.map_err(|e| StartError::Refused(format!("cannot fork a shim: {e}")))? {
        ForkResult::Parent { child } => {
            // Only this thread reaps, so the pid is the child's.
            match pidfd_open(child) {
                Ok(pidfd) => Ok((child, pidfd)),
                Err(error) => {
                    let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
                    Err(StartError::Refused(format!(
                        "cannot hold the shim by a pidfd: {error}"
                    )))
                }
            }
        }
        ForkResult::Child => {
            // Never back into the spawner's frames: not by returning, not
            // by unwinding.
            let message = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                become_shim(request, &spec, stdio, own_pid_namespace.is_some())
            })) {
                Ok(Err(message)) => message,
                Err(_) => "the shim panicked while setting up".to_string(),
            };
            eprintln!("zf-driver-shim: {message}");
            // SAFETY: ends this process at once, running nothing of the
            // spawner's.
            unsafe { nix::libc::_exit(i32::from(super::CANNOT_START)) }
        }
    }
}

/// A pidfd for `pid`.
fn pidfd_open(pid: Pid) -> std::io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags, and returns a new
    // descriptor or -1.
    let fd = unsafe { nix::libc::syscall(nix::libc::SYS_pidfd_open, pid.as_raw(), 0u32) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a descriptor the kernel just made, owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// In the forked child: takes the driver's stdio and directory, undoes what
/// only the spawner wants, and goes on as a shim; as the init of its own
/// PID namespace when it was forked into one.
fn become_shim(
    request: &SpawnRequest,
    spec: &ShimSpec,
    stdio: [OwnedFd; 3],
    forked_as_init: bool,
) -> Result<Infallible, String> {
    let [stdin, stdout, stderr] = stdio;
    nix::unistd::dup2_stdin(&stdin)
        .and_then(|()| nix::unistd::dup2_stdout(&stdout))
        .and_then(|()| nix::unistd::dup2_stderr(&stderr))
        .map_err(|e| format!("cannot take the driver's stdio: {e}"))?;
    drop((stdin, stdout, stderr));
    SigSet::empty()
        .thread_set_mask()
        .map_err(|e| format!("cannot unblock signals: {e}"))?;
    nix::unistd::chdir(&request.dir)
        .map_err(|e| format!("cannot enter {}: {e}", request.dir.display()))?;
    super::start(spec, Some(&request.env), forked_as_init)
}

/// Reaps every ended child, and tells the node how each shim ended.
fn reap_and_report(shims: &mut HashSet<i32>) -> Result<(), String> {
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes the status into a local.
        let pid = unsafe { nix::libc::waitpid(-1, &mut status, nix::libc::WNOHANG) };
        if pid <= 0 {
            return Ok(());
        }
        if shims.remove(&pid) {
            send(&SpawnReply::Exited { pid, status }, None)?;
        }
    }
}

/// Sends one reply, with `fd` alongside when given.
fn send(reply: &SpawnReply, fd: Option<&OwnedFd>) -> Result<(), String> {
    let bytes = serde_json::to_vec(reply).map_err(|e| format!("cannot encode a reply: {e}"))?;
    let fds: Vec<RawFd> = fd.iter().map(|fd| fd.as_raw_fd()).collect();
    loop {
        match crate::shim_spec::send(NODE, &bytes, &fds) {
            Ok(_) => return Ok(()),
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(format!("cannot tell the node: {e}")),
        }
    }
}
