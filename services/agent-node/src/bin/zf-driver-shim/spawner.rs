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
        if request_ready && !serve_one(&mut buffer, &mut shims)? {
            return Ok(());
        }
    }
}

/// Reads one request and starts its shim; `false` once the node has closed
/// its end.
fn serve_one(buffer: &mut [u8], shims: &mut HashSet<i32>) -> Result<bool, String> {
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
        (Ok(request), Ok(stdio)) => match start_shim(&request, stdio) {
            Ok((pid, pidfd)) => {
                shims.insert(pid.as_raw());
                send(&SpawnReply::Started { pid: pid.as_raw() }, Some(&pidfd))?;
                return Ok(true);
            }
            Err(reason) => SpawnReply::Refused { reason },
        },
    };
    send(&reply, None)?;
    Ok(true)
}

/// Forks the shim for `request`, with `stdio` as its stdin, stdout and
/// stderr; its pid, and a pidfd for it (taken before anything can reap it).
fn start_shim(request: &SpawnRequest, stdio: [OwnedFd; 3]) -> Result<(Pid, OwnedFd), String> {
    let spec = ShimSpec {
        parent: nix::unistd::getpid().as_raw(),
        program: request.program.clone(),
        args: request.args.clone(),
        sandbox: request.sandbox.clone(),
    };
    // SAFETY: this process has one thread.
    match unsafe { fork() }.map_err(|e| format!("cannot fork a shim: {e}"))? {
        ForkResult::Parent { child } => {
            // SAFETY: pidfd_open takes a pid and flags, and returns a new
            // descriptor or -1; only this thread reaps, so the pid is the
            // child's.
            let fd = unsafe { nix::libc::syscall(nix::libc::SYS_pidfd_open, child.as_raw(), 0u32) };
            if fd < 0 {
                let error = std::io::Error::last_os_error();
                let _ = nix::sys::signal::kill(child, Signal::SIGKILL);
                return Err(format!("cannot hold the shim by a pidfd: {error}"));
            }
            // SAFETY: a descriptor the kernel just made, owned by nothing else.
            Ok((child, unsafe { OwnedFd::from_raw_fd(fd as RawFd) }))
        }
        ForkResult::Child => {
            // Never back into the spawner's frames: not by returning, not
            // by unwinding.
            let message = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                become_shim(request, &spec, stdio)
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

/// In the forked child: takes the driver's stdio and directory, undoes what
/// only the spawner wants, and goes on as a shim.
fn become_shim(
    request: &SpawnRequest,
    spec: &ShimSpec,
    stdio: [OwnedFd; 3],
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
    super::start(spec, Some(&request.env))
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
