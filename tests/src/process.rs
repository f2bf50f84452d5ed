//! Child-process plumbing shared by the broker wrappers: spawn with a log
//! file, signal, wait with a deadline, wait for a TCP port, free ports.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use tokio::time::Instant;

/// How long a broker may take to start accepting connections or to exit.
pub(crate) const STARTUP_TIMEOUT: Duration = Duration::from_secs(15);
pub(crate) const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(15);
const POLL: Duration = Duration::from_millis(10);

/// Spawns `cmd` with stdin closed and stdout/stderr appended to `log`.
pub(crate) fn spawn(cmd: &mut Command, log: &Path) -> std::io::Result<Child> {
    let out = OpenOptions::new().create(true).append(true).open(log)?;
    let err = out.try_clone()?;
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err))
        .spawn()
}

/// Sends `signal` to the child, unless it has already exited.
pub(crate) fn signal(child: &mut Child, signal: libc::c_int) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    let Ok(pid) = libc::pid_t::try_from(child.id()) else {
        return;
    };
    // SAFETY: kill(2) with a pid we spawned and have not yet reaped, so the pid
    // cannot have been reused by another process.
    unsafe {
        libc::kill(pid, signal);
    }
}

/// Waits for the child to exit, polling so the async runtime keeps running.
/// Returns `None` if it is still running at the deadline.
pub(crate) async fn wait_exit(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// SIGTERM, wait for a clean exit; SIGKILL if it does not come in time.
/// Returns whether the exit was clean (within the deadline).
pub(crate) async fn terminate(child: &mut Child) -> bool {
    signal(child, libc::SIGTERM);
    if wait_exit(child, SHUTDOWN_TIMEOUT).await.is_some() {
        return true;
    }
    kill_now(child);
    false
}

/// SIGKILL and reap, synchronously (usable from `Drop`).
pub(crate) fn kill_now(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Whether a TCP connection to 127.0.0.1:`port` succeeds.
pub(crate) fn accepts(port: u16) -> bool {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
}

/// Asks the kernel for a free port on 127.0.0.1. Another process may take it
/// before we use it; callers retry on "address in use".
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind 127.0.0.1:0 to find a free port")
}

/// The last few KiB of a log file, for panic messages.
pub(crate) fn log_tail(path: &Path) -> String {
    const TAIL: usize = 4096;
    let mut text = String::new();
    if let Ok(mut file) = File::open(path) {
        let mut bytes = Vec::new();
        let _ = file.read_to_end(&mut bytes);
        let start = bytes.len().saturating_sub(TAIL);
        text = String::from_utf8_lossy(&bytes[start..]).into_owned();
    }
    format!("--- {} ---\n{}", path.display(), text)
}
