//! Notifications from the libvirt hook (`nova-patch hook`, installed as
//! `/etc/libvirt/hooks/qemu`): a nudge for discovery, never the discovery mechanism itself.
//!
//! libvirt runs the hook synchronously around domain start and stop; the hook sends one UNIX
//! datagram to the socket configured as `hook_socket` and exits without waiting for an answer,
//! so libvirt is never held up by the relay (and the hook never calls back into libvirt). A
//! datagram is one JSON object of at most [`MAX_NOTIFICATION`] bytes:
//!
//! ```json
//! {"v":1,"event":"started","name":"instance-0000002a","uuid":"8f1c…"}
//! ```
//!
//! `event` is `started` or `stopped`; unknown fields, other versions, oversized datagrams and
//! invalid names or UUIDs are rejected (counted as `relay_hook_rejected_total` and logged).
//! An accepted notification is counted in `relay_hook_notifications_total{event}` and handed
//! to a [`HookSink`]: in the daemon, libvirt discovery's [`crate::libvirt::Hints`], which looks
//! a started domain up at once (a missed libvirt event costs no reconcile period) and drops a
//! stopped one.
//!
//! The socket file is created with mode 0600 (bound under a temporary name, restricted, then
//! renamed into place, so it is never reachable with wider permissions): only its owner and
//! root, which libvirtd's hooks run as, can send. Its parent directory is created 0700 if
//! missing. The file is removed on shutdown unless another listener has replaced it.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::UnixDatagram as StdUnixDatagram;
use std::path::{Path, PathBuf};
use std::time::Duration;

use relay_protocol::Uuid;
use serde::Deserialize;
use tokio::net::UnixDatagram;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::metrics::Metrics;

/// The largest notification accepted, in bytes; a domain name is at most a few hundred.
pub const MAX_NOTIFICATION: usize = 1024;
/// The protocol version this listener speaks (`"v"`).
pub const VERSION: u8 = 1;
/// Longest socket path accepted: `sun_path` holds 107 bytes, and the temporary name used while
/// binding is a few bytes longer than the final one.
pub const MAX_SOCKET_PATH: usize = 90;
/// Longest domain name accepted.
const MAX_NAME: usize = 255;

/// What the hook reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HookEvent {
    /// libvirt's `started begin`: QEMU runs, the live XML has the channel's socket path.
    Started,
    /// libvirt's `stopped end`: QEMU is gone.
    Stopped,
}

impl HookEvent {
    pub const ALL: [HookEvent; 2] = [HookEvent::Started, HookEvent::Stopped];

    pub fn as_str(self) -> &'static str {
        match self {
            HookEvent::Started => "started",
            HookEvent::Stopped => "stopped",
        }
    }
}

/// A validated notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookNotification {
    pub event: HookEvent,
    /// The domain name, for logs.
    pub name: String,
    /// The domain UUID: what discovery looks the domain up by.
    pub uuid: Uuid,
}

/// Where accepted notifications go.
pub trait HookSink: Send + 'static {
    fn deliver(&self, notification: HookNotification);
}

/// Why a datagram is not a notification, or the socket cannot be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HookError {
    #[error("{len} bytes, more than the {MAX_NOTIFICATION} allowed")]
    TooLarge { len: usize },
    #[error("not a notification")]
    Json(#[source] serde_json::Error),
    #[error("protocol version {0}, expected {VERSION}")]
    Version(u8),
    #[error("event {0:?} is neither \"started\" nor \"stopped\"")]
    Event(String),
    #[error("domain name {0:?} is empty, too long or has control characters")]
    Name(String),
    #[error("{0:?} is not a UUID")]
    Uuid(String),
    #[error("hook socket {}: {reason}", path.display())]
    SocketPath { path: PathBuf, reason: String },
    #[error("cannot {what} hook socket {}", path.display())]
    Socket {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire {
    v: u8,
    event: String,
    name: String,
    uuid: String,
}

/// Parses and validates one datagram.
pub fn parse(datagram: &[u8]) -> Result<HookNotification, HookError> {
    if datagram.len() > MAX_NOTIFICATION {
        return Err(HookError::TooLarge {
            len: datagram.len(),
        });
    }
    let wire: Wire = serde_json::from_slice(datagram).map_err(HookError::Json)?;
    if wire.v != VERSION {
        return Err(HookError::Version(wire.v));
    }
    let event = match wire.event.as_str() {
        "started" => HookEvent::Started,
        "stopped" => HookEvent::Stopped,
        _ => return Err(HookError::Event(wire.event)),
    };
    if wire.name.is_empty() || wire.name.len() > MAX_NAME || wire.name.chars().any(char::is_control)
    {
        return Err(HookError::Name(wire.name));
    }
    let uuid = Uuid::parse_str(&wire.uuid).map_err(|_| HookError::Uuid(wire.uuid.clone()))?;
    Ok(HookNotification {
        event,
        name: wire.name,
        uuid,
    })
}

/// Checks a configured socket path without touching the file system.
pub fn check_socket_path(path: &Path) -> Result<(), String> {
    if !path.is_absolute() {
        return Err(format!("{} is not an absolute path", path.display()));
    }
    if path.file_name().is_none() {
        return Err(format!("{} names no file", path.display()));
    }
    if path.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(format!(
            "{} is longer than {MAX_SOCKET_PATH} bytes",
            path.display()
        ));
    }
    Ok(())
}

/// A bound hook socket; the file goes away with it (unless it was replaced meanwhile).
#[derive(Debug)]
pub struct HookSocket {
    socket: StdUnixDatagram,
    file: SocketFile,
}

/// The socket's file, removed on drop if it is still the one we bound.
#[derive(Debug)]
struct SocketFile {
    path: PathBuf,
    /// Device and inode of the file we bound.
    id: (u64, u64),
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let ours = fs::symlink_metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.id);
        if ours {
            let _ = fs::remove_file(&self.path);
        }
    }
}

impl HookSocket {
    /// Binds `path` with mode 0600, replacing a stale socket there but nothing else.
    pub fn bind(path: &Path) -> Result<HookSocket, HookError> {
        check_socket_path(path).map_err(|reason| HookError::SocketPath {
            path: path.to_owned(),
            reason,
        })?;
        let err = |what| {
            move |source| HookError::Socket {
                what,
                path: path.to_owned(),
                source,
            }
        };
        match fs::symlink_metadata(path) {
            Ok(meta) if !meta.file_type().is_socket() => {
                return Err(HookError::SocketPath {
                    path: path.to_owned(),
                    reason: "exists and is not a socket".into(),
                })
            }
            _ => {}
        }
        if let Some(dir) = path.parent() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(err("create the directory of the"))?;
        }
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(format!(".{}", std::process::id()));
        let tmp = PathBuf::from(tmp);
        let _ = fs::remove_file(&tmp);
        let socket = StdUnixDatagram::bind(&tmp).map_err(err("bind the"))?;
        let placed = fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600))
            .map_err(err("restrict the"))
            .and_then(|()| fs::rename(&tmp, path).map_err(err("move into place the")));
        if let Err(e) = placed {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        let meta = fs::metadata(path).map_err(err("inspect the"))?;
        let file = SocketFile {
            path: path.to_owned(),
            id: (meta.dev(), meta.ino()),
        };
        socket.set_nonblocking(true).map_err(err("configure the"))?;
        Ok(HookSocket { socket, file })
    }

    pub fn path(&self) -> &Path {
        &self.file.path
    }
}

/// Receives notifications on `socket` until `shutdown`, counting and logging each, and hands
/// the valid ones to `sink`.
pub async fn serve(
    socket: HookSocket,
    sink: impl HookSink,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let HookSocket { socket, file } = socket;
    let receiver = match UnixDatagram::from_std(socket) {
        Ok(r) => r,
        Err(e) => {
            warn!(path = %file.path.display(), error = %e, "hook socket unusable; no hook notifications");
            return;
        }
    };
    info!(path = %file.path.display(), "listening for libvirt hook notifications");
    // One byte more than allowed, so an oversized datagram shows as such instead of being
    // silently truncated to a valid-looking prefix.
    let mut buf = vec![0u8; MAX_NOTIFICATION + 1];
    loop {
        let len = tokio::select! {
            _ = shutdown.cancelled() => break,
            received = receiver.recv(&mut buf) => match received {
                Ok(len) => len,
                Err(e) => {
                    warn!(error = %e, "hook socket: receive failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        match parse(&buf[..len]) {
            Ok(n) => {
                info!(vm.uuid = %n.uuid, vm.name = %n.name, event = n.event.as_str(), "libvirt hook notification");
                metrics.hook_notification(n.event);
                sink.deliver(n);
            }
            Err(e) => {
                metrics.hook_rejected();
                warn!(error = %crate::error_chain(&e), "hook notification rejected");
            }
        }
    }
    debug!("hook listener stopped");
    drop(receiver);
    drop(file);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::testing::metric;
    use tokio::sync::mpsc;

    const UUID: &str = "8f1c0c5e-2b7d-4e43-9a51-0d6c1e2f3a4b";

    fn datagram(event: &str, name: &str, uuid: &str) -> Vec<u8> {
        serde_json::json!({ "v": 1, "event": event, "name": name, "uuid": uuid })
            .to_string()
            .into_bytes()
    }

    #[test]
    fn valid_notifications_parse() {
        let n = parse(&datagram("started", "instance-0000002a", UUID)).unwrap();
        assert_eq!(
            n,
            HookNotification {
                event: HookEvent::Started,
                name: "instance-0000002a".into(),
                uuid: Uuid::parse_str(UUID).unwrap(),
            }
        );
        let n = parse(&datagram("stopped", "vnf ü", &UUID.to_uppercase())).unwrap();
        assert_eq!(n.event, HookEvent::Stopped);
        assert_eq!(n.uuid, Uuid::parse_str(UUID).unwrap());
    }

    #[test]
    fn invalid_notifications_are_rejected() {
        let long = "n".repeat(MAX_NAME + 1);
        for (bytes, want) in [
            (b"not json".to_vec(), "not a notification"),
            (b"{}".to_vec(), "not a notification"),
            (
                br#"{"v":1,"event":"started","name":"a","uuid":"x","extra":1}"#.to_vec(),
                "not a notification",
            ),
            (
                format!(r#"{{"v":2,"event":"started","name":"a","uuid":"{UUID}"}}"#).into_bytes(),
                "protocol version 2",
            ),
            (datagram("rebooted", "a", UUID), "neither"),
            (datagram("started", "", UUID), "domain name"),
            (datagram("started", "a\nb", UUID), "domain name"),
            (datagram("started", &long, UUID), "domain name"),
            (datagram("started", "a", "not-a-uuid"), "not a UUID"),
            (vec![b' '; MAX_NOTIFICATION + 1], "more than"),
        ] {
            let err = parse(&bytes).unwrap_err();
            assert!(
                err.to_string().contains(want),
                "{err} for {:?}",
                String::from_utf8_lossy(&bytes)
            );
        }
    }

    #[test]
    fn socket_paths_are_checked() {
        assert!(check_socket_path(Path::new("/run/relay-host/hook.sock")).is_ok());
        assert!(check_socket_path(Path::new("hook.sock")).is_err());
        assert!(check_socket_path(Path::new("/")).is_err());
        let long = format!("/run/{}", "x".repeat(MAX_SOCKET_PATH));
        assert!(check_socket_path(Path::new(&long)).is_err());
    }

    #[test]
    fn the_socket_is_private_replaces_only_sockets_and_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/hook.sock");
        let socket = HookSocket::bind(&path).unwrap();
        let meta = fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(
            fs::metadata(path.parent().unwrap())
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o700
        );
        // A second listener (a restart racing the old process) takes the path over; the old
        // one then leaves the new file alone.
        let second = HookSocket::bind(&path).unwrap();
        drop(socket);
        assert!(path.exists());
        drop(second);
        assert!(!path.exists());
        // Only directory entries: nothing of the temporary name is left behind.
        assert_eq!(fs::read_dir(path.parent().unwrap()).unwrap().count(), 0);

        fs::write(&path, "not a socket").unwrap();
        let err = HookSocket::bind(&path).unwrap_err();
        assert!(err.to_string().contains("not a socket"), "{err}");
        assert_eq!(fs::read_to_string(&path).unwrap(), "not a socket");
    }

    struct Collect(mpsc::UnboundedSender<HookNotification>);

    impl HookSink for Collect {
        fn deliver(&self, notification: HookNotification) {
            let _ = self.0.send(notification);
        }
    }

    #[tokio::test]
    async fn valid_datagrams_are_delivered_and_everything_is_counted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hook.sock");
        let socket = HookSocket::bind(&path).unwrap();
        let metrics = Metrics::new();
        let (tx, mut rx) = mpsc::unbounded_channel();
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(serve(
            socket,
            Collect(tx),
            metrics.clone(),
            shutdown.clone(),
        ));
        let count = |event: &str| {
            metric(
                &metrics.encode(),
                "relay_hook_notifications_total",
                &[("event", event)],
            )
        };
        assert_eq!(count("started"), Some(0.0));
        assert_eq!(count("stopped"), Some(0.0));

        let client = UnixDatagram::unbound().unwrap();
        client
            .send_to(&datagram("started", "vnf-1", UUID), &path)
            .await
            .unwrap();
        client.send_to(b"garbage", &path).await.unwrap();
        client.send_to(&[b'{'; 4096], &path).await.unwrap();
        client
            .send_to(&datagram("stopped", "vnf-1", UUID), &path)
            .await
            .unwrap();

        let first = rx.recv().await.unwrap();
        assert_eq!(
            (first.event, first.name.as_str()),
            (HookEvent::Started, "vnf-1")
        );
        // Datagrams are handled in order: the stopped one comes after both rejections.
        let second = rx.recv().await.unwrap();
        assert_eq!(second.event, HookEvent::Stopped);
        assert_eq!(second.uuid, Uuid::parse_str(UUID).unwrap());
        assert_eq!(count("started"), Some(1.0));
        assert_eq!(count("stopped"), Some(1.0));
        assert_eq!(
            metric(&metrics.encode(), "relay_hook_rejected_total", &[]),
            Some(2.0)
        );

        shutdown.cancel();
        server.await.unwrap();
        assert!(!path.exists(), "the socket file is removed on shutdown");
        assert!(rx.recv().await.is_none(), "the sink was dropped");
    }
}
