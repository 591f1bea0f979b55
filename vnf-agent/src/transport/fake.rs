//! An in-memory channel that behaves like a virtio-serial port, with a scriptable host end.
//!
//! The guest end follows the driver: buffered bytes are read first, even while the host is
//! away (that is how stale bytes survive a reconnect); with nothing buffered a read returns 0
//! while the host is absent and waits while it is present; a write fails (`Ok(0)`, EAGAIN)
//! while the host is absent. When the host end closes, whatever the guest wrote and the host
//! did not read is dropped, as QEMU does. Every call is counted so that tests can show the
//! agent does not spin.

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use super::{BoxFuture, Connector, Transport, MAX_WRITE};

#[derive(Debug, Default)]
struct State {
    present: bool,
    to_guest: VecDeque<u8>,
    from_guest: Vec<u8>,
    reads: u64,
    writes: u64,
    connects: u64,
    /// Connect attempts that fail with ENOENT before the port appears.
    missing_for: u64,
}

#[derive(Debug, Default)]
struct Shared {
    state: Mutex<State>,
    to_guest_ready: Notify,
    from_guest_ready: Notify,
}

/// Call counts of the guest end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Calls {
    pub reads: u64,
    pub writes: u64,
    pub connects: u64,
}

/// The host end (and the test's handle on the whole channel).
#[derive(Debug, Clone, Default)]
pub(crate) struct FakeHost {
    shared: Arc<Shared>,
}

impl FakeHost {
    pub fn new() -> FakeHost {
        FakeHost::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The guest's side, to hand to the agent.
    pub fn connector(&self) -> FakeConnector {
        FakeConnector { host: self.clone() }
    }

    /// The next `n` opens of the port fail with ENOENT (the port has not appeared yet).
    pub fn missing_for(&self, n: u64) {
        self.state().missing_for = n;
    }

    /// A host process connects to the channel.
    pub fn connect(&self) {
        self.state().present = true;
        self.shared.to_guest_ready.notify_waiters();
    }

    /// The host process goes away: the guest reads EOF once its buffer is drained, and what the
    /// guest wrote but the host did not read is lost.
    pub fn disconnect(&self) {
        let mut s = self.state();
        s.present = false;
        s.from_guest.clear();
        drop(s);
        self.shared.to_guest_ready.notify_waiters();
    }

    /// Bytes from the host into the guest's receive buffer.
    pub fn write(&self, bytes: &[u8]) {
        self.state().to_guest.extend(bytes);
        self.shared.to_guest_ready.notify_waiters();
    }

    /// Everything the guest wrote since the last call, waiting until there is something.
    pub async fn read(&self) -> Vec<u8> {
        loop {
            let notified = self.shared.from_guest_ready.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let bytes = std::mem::take(&mut self.state().from_guest);
            if !bytes.is_empty() {
                return bytes;
            }
            notified.await;
        }
    }

    pub fn calls(&self) -> Calls {
        let s = self.state();
        Calls {
            reads: s.reads,
            writes: s.writes,
            connects: s.connects,
        }
    }
}

#[derive(Debug)]
pub(crate) struct FakeConnector {
    host: FakeHost,
}

impl Connector for FakeConnector {
    fn connect(&mut self) -> BoxFuture<'_, io::Result<Box<dyn Transport>>> {
        Box::pin(async move {
            let mut s = self.host.state();
            s.connects += 1;
            if s.missing_for > 0 {
                s.missing_for -= 1;
                return Err(io::Error::new(
                    io::ErrorKind::NotFound,
                    "no such port (fake)",
                ));
            }
            drop(s);
            Ok(Box::new(FakeGuest {
                host: self.host.clone(),
            }) as Box<dyn Transport>)
        })
    }

    fn describe(&self) -> String {
        "fake".into()
    }
}

#[derive(Debug)]
struct FakeGuest {
    host: FakeHost,
}

impl Transport for FakeGuest {
    fn read<'a>(&'a mut self, buf: &'a mut [u8]) -> BoxFuture<'a, io::Result<usize>> {
        Box::pin(async move {
            self.host.state().reads += 1;
            loop {
                let notified = self.host.shared.to_guest_ready.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                {
                    let mut s = self.host.state();
                    if !s.to_guest.is_empty() {
                        let n = buf.len().min(s.to_guest.len());
                        for (dst, src) in buf.iter_mut().zip(s.to_guest.drain(..n)) {
                            *dst = src;
                        }
                        return Ok(n);
                    }
                    if !s.present {
                        return Ok(0);
                    }
                }
                notified.await;
            }
        })
    }

    fn write<'a>(&'a mut self, buf: &'a [u8]) -> BoxFuture<'a, io::Result<usize>> {
        Box::pin(async move {
            let mut s = self.host.state();
            s.writes += 1;
            if !s.present {
                return Ok(0);
            }
            let n = buf.len().min(MAX_WRITE);
            s.from_guest.extend_from_slice(&buf[..n]);
            drop(s);
            self.host.shared.from_guest_ready.notify_waiters();
            Ok(n)
        })
    }
}
