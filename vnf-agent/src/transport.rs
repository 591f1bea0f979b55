//! The agent's byte channel to the host, behind a small trait at the side-effect boundary.
//!
//! The contract follows virtio-serial, the production channel, because it is the least
//! forgiving: the guest never learns that the host connected, and while no host process holds
//! the other end, reads return end-of-file (and poll reports POLLHUP) while writes fail with
//! EAGAIN. [`Transport::read`] and [`Transport::write`] therefore return `Ok(0)` for "the host is
//! absent right now", which the agent answers by backing off and trying again later, never by
//! giving up or spinning. Errors are reserved for a channel that is broken (the device went away);
//! the agent then reopens it through its [`Connector`].
//!
//! Backends: [`VirtioConnector`] (virtio-serial ports by name or path, non-blocking fd under
//! `tokio::io::unix::AsyncFd`), [`UartConnector`] (real UARTs through `tokio-serial`; a UART never
//! reports the host absent, so liveness comes from the handshake and heartbeat timeouts), and
//! [`UnixConnector`] (a UNIX stream socket, for development and tests on a machine without a
//! guest). Unit tests use an in-memory fake that mimics virtio-serial (`transport::fake`).

use std::fmt;
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::str::FromStr;

mod uart;
mod unix;
mod virtio;

#[cfg(test)]
pub(crate) mod fake;

pub use uart::{UartConnector, DEFAULT_BAUD};
pub use unix::UnixConnector;
pub use virtio::{VirtioConnector, VirtioPort, DEFAULT_PORT_NAME};

/// Most bytes one write takes: a virtio-serial port truncates every `write()` to 32 KiB.
/// Protocol frames never exceed it, so the agent writes one frame per call.
pub const MAX_WRITE: usize = 32 * 1024;

/// A boxed, sendable future, so that transports can be used as trait objects.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// An open channel to the host.
///
/// Both methods must be cancel-safe: the agent drops a pending read when a timer fires or
/// shutdown is requested, and reads again later.
pub trait Transport: Send + fmt::Debug {
    /// Reads what the host sent. `Ok(0)` means the host end is absent right now (virtio-serial
    /// EOF / POLLHUP); it says nothing about later. Waits while the host is present but silent.
    fn read<'a>(&'a mut self, buf: &'a mut [u8]) -> BoxFuture<'a, io::Result<usize>>;

    /// Writes a prefix of `buf` (at most [`MAX_WRITE`] bytes) and returns its length. `Ok(0)`
    /// means the host is absent (or the channel is full) and nothing was written.
    fn write<'a>(&'a mut self, buf: &'a [u8]) -> BoxFuture<'a, io::Result<usize>>;
}

/// Opens the channel, once per call: at start and again after the channel broke.
pub trait Connector: Send + fmt::Debug {
    /// Opens the channel. [`io::ErrorKind::NotFound`] and [`io::ErrorKind::ResourceBusy`] (the
    /// port does not exist yet, another process holds it) are retried by the agent with backoff;
    /// other errors end the agent's run.
    fn connect(&mut self) -> BoxFuture<'_, io::Result<Box<dyn Transport>>>;

    /// Where the channel is, for logs (`port.path`).
    fn describe(&self) -> String;
}

/// A transport that was opened by the caller and cannot be reopened: if it breaks, the agent's
/// run ends with the error.
pub struct Once<T>(Option<T>);

impl<T> Once<T> {
    pub fn new(transport: T) -> Once<T> {
        Once(Some(transport))
    }
}

impl<T> fmt::Debug for Once<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Once")
            .field("used", &self.0.is_none())
            .finish()
    }
}

impl<T: Transport + 'static> Connector for Once<T> {
    fn connect(&mut self) -> BoxFuture<'_, io::Result<Box<dyn Transport>>> {
        let t = self.0.take();
        Box::pin(async move {
            match t {
                Some(t) => Ok(Box::new(t) as Box<dyn Transport>),
                None => Err(io::Error::other(
                    "the caller's transport broke and cannot be reopened",
                )),
            }
        })
    }

    fn describe(&self) -> String {
        "caller-provided transport".into()
    }
}

/// Where the agent's channel is, as given on a command line or to the C ABI:
///
/// - `org.opensfc.relay.0`: a virtio-serial port name (`/dev/virtio-ports/<name>`, or found
///   through `/sys/class/virtio-ports/*/name`);
/// - `/dev/vport0p1` (any absolute path): a virtio-serial port device;
/// - `uart:/dev/ttyS1` or `uart:/dev/ttyS1@9600`: a UART (default [`DEFAULT_BAUD`]);
/// - `unix:/run/relay.sock`: a UNIX stream socket, for development and tests without a guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortSpec {
    Virtio(String),
    Uart { device: PathBuf, baud: u32 },
    Unix(PathBuf),
}

impl PortSpec {
    /// The connector for this port, with production defaults.
    pub fn connector(&self) -> Box<dyn Connector> {
        match self {
            PortSpec::Virtio(target) => Box::new(VirtioConnector::new(target.clone())),
            PortSpec::Uart { device, baud } => Box::new(UartConnector::new(device.clone(), *baud)),
            PortSpec::Unix(path) => Box::new(UnixConnector::new(path.clone())),
        }
    }
}

/// A port specification that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid port {spec:?}: {reason}")]
pub struct PortSpecError {
    pub spec: String,
    pub reason: &'static str,
}

impl FromStr for PortSpec {
    type Err = PortSpecError;

    fn from_str(s: &str) -> Result<PortSpec, PortSpecError> {
        let err = |reason| PortSpecError {
            spec: s.to_owned(),
            reason,
        };
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(err("no socket path after unix:"));
            }
            return Ok(PortSpec::Unix(path.into()));
        }
        if let Some(rest) = s.strip_prefix("uart:") {
            let (device, baud) = match rest.rsplit_once('@') {
                Some((dev, baud)) => {
                    let baud = baud
                        .parse::<u32>()
                        .ok()
                        .filter(|b| *b > 0)
                        .ok_or_else(|| err("the baud rate after @ is not a positive number"))?;
                    (dev, baud)
                }
                None => (rest, DEFAULT_BAUD),
            };
            if !device.starts_with('/') {
                return Err(err("the UART device must be an absolute path"));
            }
            return Ok(PortSpec::Uart {
                device: device.into(),
                baud,
            });
        }
        if s.is_empty() {
            return Err(err("empty"));
        }
        if s.starts_with('/') {
            return Ok(PortSpec::Virtio(s.to_owned()));
        }
        if s.contains('/') || s == "." || s == ".." {
            return Err(err(
                "a port name cannot contain '/' (give an absolute path instead)",
            ));
        }
        Ok(PortSpec::Virtio(s.to_owned()))
    }
}

impl fmt::Display for PortSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortSpec::Virtio(t) => f.write_str(t),
            PortSpec::Uart { device, baud } => write!(f, "uart:{}@{baud}", device.display()),
            PortSpec::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_specs_parse() {
        let ok = |s: &str| s.parse::<PortSpec>().unwrap();
        assert_eq!(
            ok("org.opensfc.relay.0"),
            PortSpec::Virtio("org.opensfc.relay.0".into())
        );
        assert_eq!(
            ok("/dev/vport0p1"),
            PortSpec::Virtio("/dev/vport0p1".into())
        );
        assert_eq!(
            ok("uart:/dev/ttyS1"),
            PortSpec::Uart {
                device: "/dev/ttyS1".into(),
                baud: DEFAULT_BAUD
            }
        );
        assert_eq!(
            ok("uart:/dev/ttyS1@9600"),
            PortSpec::Uart {
                device: "/dev/ttyS1".into(),
                baud: 9600
            }
        );
        assert_eq!(ok("unix:/tmp/s"), PortSpec::Unix("/tmp/s".into()));
        for bad in [
            "",
            "unix:",
            "uart:ttyS1",
            "uart:/dev/ttyS1@0",
            "uart:/dev/x@y",
            "a/b",
            "..",
        ] {
            assert!(bad.parse::<PortSpec>().is_err(), "{bad:?} parsed");
        }
        assert_eq!(
            ok("uart:/dev/ttyS1@9600").to_string(),
            "uart:/dev/ttyS1@9600"
        );
    }
}
