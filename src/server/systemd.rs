//! The systemd notify protocol (`sd_notify`): `READY=1`, `STOPPING=1` and `WATCHDOG=1`
//! datagrams to `$NOTIFY_SOCKET`, without libsystemd. A no-op when the variable is unset.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

/// Sends `state` (e.g. `"READY=1"`) to `$NOTIFY_SOCKET`; failures are logged, not fatal.
pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    if let Err(e) = send(&path, state) {
        tracing::warn!(error = %e, state, "cannot notify systemd");
    }
}

fn send(path: &std::ffi::OsStr, state: &str) -> std::io::Result<()> {
    let socket = UnixDatagram::unbound()?;
    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path);
    match bytes.split_first() {
        // `@name` is a Linux abstract socket: a leading NUL byte instead of the '@'.
        Some((b'@', name)) => send_abstract(&socket, name, state),
        Some(_) => socket.send_to(state.as_bytes(), path).map(|_| ()),
        None => Ok(()),
    }
}

#[cfg(target_os = "linux")]
fn send_abstract(socket: &UnixDatagram, name: &[u8], state: &str) -> std::io::Result<()> {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name)?;
    socket.send_to_addr(state.as_bytes(), &addr).map(|_| ())
}

#[cfg(not(target_os = "linux"))]
fn send_abstract(_: &UnixDatagram, _: &[u8], _: &str) -> std::io::Result<()> {
    Err(std::io::Error::other("abstract sockets need linux"))
}

/// Half of `$WATCHDOG_USEC` when the watchdog is on for this process (`$WATCHDOG_PID`
/// unset or equal to our pid): how often to send `WATCHDOG=1`.
pub fn watchdog_interval() -> Option<Duration> {
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
            return None;
        }
    }
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.trim().parse().ok()?;
    (usec > 0).then(|| Duration::from_micros(usec / 2))
}
