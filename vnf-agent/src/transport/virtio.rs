//! virtio-serial ports: a plain character device driven through a non-blocking fd.
//!
//! `tokio-serial` cannot open these (its termios ioctls get ENOTTY) and `tokio::fs` would park a
//! blocking-pool thread on every read, so the port is opened `O_RDWR | O_NONBLOCK | O_CLOEXEC`
//! and registered with the reactor through [`AsyncFd`]. The driver's rules
//! (`drivers/char/virtio_console.c`): `read()` returns 0 while no host process is connected and
//! EAGAIN while one is connected but silent; `write()` fails with EAGAIN while the host is absent
//! and takes at most 32 KiB; `open()` fails with EBUSY while another process holds the port.
//!
//! Reads wait on readiness only after EAGAIN (the host is there), so a read never blocks
//! because the host is absent: it returns `Ok(0)` and the agent backs off. Writes never wait
//! on readiness at all: POLLHUP makes the port look writable for as long as the host is absent,
//! which would turn a readiness wait into a spin.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use tokio::io::unix::AsyncFd;

use super::{BoxFuture, Connector, Transport, MAX_WRITE};

/// The port name the relay's Nova patch gives the channel.
pub const DEFAULT_PORT_NAME: &str = "org.opensfc.relay.0";

/// Opens a virtio-serial port by name (`/dev/virtio-ports/<name>`, or a scan of
/// `/sys/class/virtio-ports/*/name` when udev did not create the link) or by device path.
#[derive(Debug, Clone)]
pub struct VirtioConnector {
    target: String,
    dev: PathBuf,
    sys: PathBuf,
}

impl VirtioConnector {
    /// `target` is a port name or an absolute device path.
    pub fn new(target: impl Into<String>) -> VirtioConnector {
        VirtioConnector {
            target: target.into(),
            dev: "/dev".into(),
            sys: "/sys".into(),
        }
    }

    /// Looks names up under other `/dev` and `/sys` roots (tests).
    pub fn with_roots(mut self, dev: impl Into<PathBuf>, sys: impl Into<PathBuf>) -> Self {
        self.dev = dev.into();
        self.sys = sys.into();
        self
    }

    /// The device path of the port, if it exists now.
    pub fn resolve(&self) -> io::Result<PathBuf> {
        if self.target.starts_with('/') {
            return Ok(PathBuf::from(&self.target));
        }
        let link = self.dev.join("virtio-ports").join(&self.target);
        if link.exists() {
            return Ok(link);
        }
        let class = self.sys.join("class/virtio-ports");
        let entries = match std::fs::read_dir(&class) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(not_found(&self.target, &class));
            }
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = entry?;
            // A port whose name the host has not sent yet has an empty or missing `name`.
            let Ok(name) = std::fs::read_to_string(entry.path().join("name")) else {
                continue;
            };
            if name.trim_end_matches('\n') == self.target {
                return Ok(self.dev.join(entry.file_name()));
            }
        }
        Err(not_found(&self.target, &class))
    }
}

fn not_found(name: &str, class: &Path) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!(
            "no virtio-serial port named {name:?} (neither /dev/virtio-ports/{name} nor a match in {}/*/name)",
            class.display()
        ),
    )
}

impl Connector for VirtioConnector {
    fn connect(&mut self) -> BoxFuture<'_, io::Result<Box<dyn Transport>>> {
        Box::pin(async move {
            let path = self.resolve()?;
            let port = VirtioPort::open(&path)?;
            Ok(Box::new(port) as Box<dyn Transport>)
        })
    }

    fn describe(&self) -> String {
        self.target.clone()
    }
}

/// An open virtio-serial port.
#[derive(Debug)]
pub struct VirtioPort {
    fd: AsyncFd<File>,
}

impl VirtioPort {
    /// Opens the port device at `path`; must be called within a tokio runtime.
    pub fn open(path: &Path) -> io::Result<VirtioPort> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(
                (rustix::fs::OFlags::NONBLOCK | rustix::fs::OFlags::CLOEXEC).bits() as i32,
            )
            .open(path)
            .map_err(|e| io::Error::new(e.kind(), format!("opening {}: {e}", path.display())))?;
        // tokio 1.54 deprecated the safe constructor because an arbitrary `AsRawFd` may close or
        // swap its fd while registered; a `File` owns its fd until it is dropped with the
        // `AsyncFd`, so the constructor is sound here. Its replacement, `AsyncFd::register`, is
        // `unsafe`, which this workspace keeps to the C ABI module.
        #[allow(deprecated)]
        let fd = AsyncFd::new(file)?;
        Ok(VirtioPort { fd })
    }
}

impl Transport for VirtioPort {
    fn read<'a>(&'a mut self, buf: &'a mut [u8]) -> BoxFuture<'a, io::Result<usize>> {
        Box::pin(async move {
            loop {
                // Readiness is set when the fd is registered and stays set until a read hits
                // EAGAIN, so the first pass always reads; after EAGAIN (host present, no data)
                // the wait ends on data or on the host leaving (the driver wakes the queue).
                let mut guard = self.fd.readable().await?;
                match guard.try_io(|fd| fd.get_ref().read(buf)) {
                    Ok(Err(e)) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Ok(result) => return result,
                    Err(_would_block) => continue,
                }
            }
        })
    }

    fn write<'a>(&'a mut self, buf: &'a [u8]) -> BoxFuture<'a, io::Result<usize>> {
        Box::pin(async move {
            let buf = &buf[..buf.len().min(MAX_WRITE)];
            loop {
                return match self.fd.get_ref().write(buf) {
                    Ok(n) => Ok(n),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => Err(e),
                };
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_resolve_through_the_link_or_sysfs() {
        let root = tempfile::tempdir().unwrap();
        let dev = root.path().join("dev");
        let sys = root.path().join("sys");
        std::fs::create_dir_all(dev.join("virtio-ports")).unwrap();
        for (port, name) in [("vport0p1", "org.qemu.guest_agent.0\n"), ("vport0p2", "")] {
            let d = sys.join("class/virtio-ports").join(port);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("name"), name).unwrap();
        }
        let c = VirtioConnector::new(DEFAULT_PORT_NAME).with_roots(&dev, &sys);
        assert_eq!(c.resolve().unwrap_err().kind(), io::ErrorKind::NotFound);

        // The host named the port: found by the scan, as /dev/<vportNpM>.
        std::fs::write(
            sys.join("class/virtio-ports/vport0p2/name"),
            format!("{DEFAULT_PORT_NAME}\n"),
        )
        .unwrap();
        assert_eq!(c.resolve().unwrap(), dev.join("vport0p2"));

        // udev's link wins.
        let link = dev.join("virtio-ports").join(DEFAULT_PORT_NAME);
        std::fs::write(&link, "").unwrap();
        assert_eq!(c.resolve().unwrap(), link);

        let by_path = VirtioConnector::new("/dev/vport9p9").with_roots(&dev, &sys);
        assert_eq!(by_path.resolve().unwrap(), Path::new("/dev/vport9p9"));
    }

    /// A FIFO opened read-write loops our writes back to our reads: enough to check the open
    /// flags, the reactor registration and the EAGAIN path of a real non-blocking fd.
    #[tokio::test]
    async fn a_real_nonblocking_fd_reads_and_writes() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("port");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            &fifo,
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let mut port = VirtioPort::open(&fifo).unwrap();
        let flags = rustix::fs::fcntl_getfl(port.fd.get_ref()).unwrap();
        assert!(flags.contains(rustix::fs::OFlags::NONBLOCK));
        assert_eq!(port.write(b"hello").await.unwrap(), 5);
        let mut buf = [0u8; 16];
        assert_eq!(port.read(&mut buf).await.unwrap(), 5);
        assert_eq!(&buf[..5], b"hello");
        // Nothing buffered: the read waits (EAGAIN, then readiness) instead of returning.
        let pending =
            tokio::time::timeout(std::time::Duration::from_millis(20), port.read(&mut buf)).await;
        assert!(pending.is_err());
        let big = vec![7u8; MAX_WRITE + 100];
        let n = port.write(&big).await.unwrap();
        assert!(n <= MAX_WRITE && n > 0, "wrote {n}");
    }
}
