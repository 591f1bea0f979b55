//! systemd readiness notification (`Type=notify`): one datagram to `$NOTIFY_SOCKET`.
//!
//! Written out here rather than pulled in as a crate: it is a single `sendto`. Without
//! `$NOTIFY_SOCKET` (not started by systemd, or in tests) it does nothing.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

use tracing::debug;

fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let result = (|| {
        let sock = UnixDatagram::unbound()?;
        let bytes = std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str());
        // A leading '@' names a socket in the abstract namespace.
        let addr = match bytes.strip_prefix(b"@") {
            Some(name) => SocketAddr::from_abstract_name(name)?,
            None => SocketAddr::from_pathname(&path)?,
        };
        sock.send_to_addr(state.as_bytes(), &addr).map(drop)
    })();
    if let Err(e) = result {
        debug!(error = %e, state, "sd_notify failed");
    }
}

/// Startup is complete.
pub(crate) fn ready() {
    notify("READY=1");
}

/// Shutdown has begun.
pub(crate) fn stopping() {
    notify("STOPPING=1");
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ready_and_stopping_reach_the_notify_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let sock = UnixDatagram::bind(&path).unwrap();
        // The only test in this binary that touches the variable.
        std::env::set_var("NOTIFY_SOCKET", &path);
        ready();
        stopping();
        std::env::remove_var("NOTIFY_SOCKET");
        let mut buf = [0u8; 64];
        let n = sock.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        let n = sock.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STOPPING=1");
    }
}
