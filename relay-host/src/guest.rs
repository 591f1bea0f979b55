//! One session per guest: the relay's end of the guest's virtio-serial channel.
//!
//! QEMU exposes the channel as a UNIX socket that takes one client at a time; the relay is that
//! client for as long as the guest is up. After every (re)connect it writes the resync marker
//! (the guest's decoder drops whatever half-frame or stale bytes it held and the agent starts a
//! new session) and tells the controller with `GuestReopened`. It reconnects with backoff when
//! QEMU closes the socket or refuses connections (guest booting, QEMU restarting), and stops
//! when discovery says the guest is down or the relay shuts down.
//!
//! The relay holds no keys. What it can check without them, it checks, so that a hostile or
//! broken guest costs the controller nothing and other guests nothing:
//!
//! - framing: bytes that are not part of a frame with a valid header are dropped and counted;
//! - freshness: within an epoch, sequence numbers must increase; a `Hello` (and the first frame
//!   after it, which carries the session epoch the controller chose) may start a new epoch,
//!   nothing else may. Replays and duplicates stop here;
//! - rate: a token bucket per guest; frames beyond it are dropped and counted.
//!
//! Every frame that passes is stamped with the domain UUID from discovery, never with anything
//! the guest claims.
//!
//! Isolation. Each session is one task with two bounded queues. Frames from the controller are
//! handed to it with `try_send`: the router never waits for a guest, and a guest that stops
//! reading loses the excess (counted; the controller redelivers desired state, which is
//! level-triggered). The queue is long enough for a whole 16 MiB message, which the controller
//! sends back to back, and every queued frame also holds a share of a byte budget common to
//! all guests ([`Budget`]), so that many slow guests at once cannot exhaust memory either. Frames from the guest go into the guest's own queue (dropped when full) and
//! from there into the uplink's shared queue, which the guests' forwarders wait for in turn
//! (tokio's bounded channel serves waiting senders first come, first served), so one busy guest
//! gets one slot at a time however much it sends.
//!
//! Every frame is written to the socket with one `write_all`, whole. On shutdown, frames already
//! queued are still written, within the grace period; a frame is never abandoned halfway unless
//! the guest stops reading for the whole grace period, and then the guest's decoder drops the
//! fragment at the next resync marker.

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use relay_protocol::uplink::RelayMsg;
use relay_protocol::{Decoded, FrameDecoder, Header, Kind, Uuid, RESYNC_MARKER};
use tokio::io::AsyncWriteExt;
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, info_span, trace, warn, Instrument};

use crate::backoff::Backoff;
use crate::config::Limits;
use crate::discovery::GuestChannel;
use crate::metrics::GuestMetrics;

/// Bytes asked of the socket per read; the buffer grows to a whole frame when one is pending.
const READ_CHUNK: usize = 8 * 1024;
/// A connection that lasted this long resets the reconnect backoff.
const STABLE: Duration = Duration::from_secs(10);
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// What the router hands a guest session.
#[derive(Debug)]
pub(crate) enum ToGuest {
    /// One whole frame, already checked to be exactly one frame.
    Frame(Bytes),
    /// Write the resync marker: the guest starts a new session.
    Resync,
}

/// Settings every guest session shares.
#[derive(Debug, Clone)]
pub(crate) struct GuestEnv {
    pub limits: Limits,
    /// The uplink's shared queue.
    pub uplink: mpsc::Sender<RelayMsg>,
    pub grace: Duration,
    pub budget: Budget,
}

/// Bytes queued towards all guests together, bounded: each queued frame holds its share
/// until it is written or dropped.
#[derive(Debug, Clone)]
pub(crate) struct Budget {
    used: Arc<AtomicUsize>,
    cap: usize,
}

impl Budget {
    pub(crate) fn new(cap: usize) -> Budget {
        Budget {
            used: Arc::new(AtomicUsize::new(0)),
            cap,
        }
    }

    fn reserve(&self, n: usize) -> Option<Reservation> {
        let before = self.used.fetch_add(n, Ordering::Relaxed);
        if before + n > self.cap {
            self.used.fetch_sub(n, Ordering::Relaxed);
            return None;
        }
        Some(Reservation {
            used: self.used.clone(),
            n,
        })
    }
}

/// A frame's share of the [`Budget`], given back when dropped.
#[derive(Debug)]
struct Reservation {
    used: Arc<AtomicUsize>,
    n: usize,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        self.used.fetch_sub(self.n, Ordering::Relaxed);
    }
}

/// An item in a guest's queue, with its share of the budget.
#[derive(Debug)]
struct Queued {
    item: ToGuest,
    _share: Option<Reservation>,
}

/// The router's handle on a running session.
#[derive(Debug)]
pub(crate) struct GuestHandle {
    pub channel: GuestChannel,
    tx: mpsc::Sender<Queued>,
    budget: Budget,
    cancel: CancellationToken,
    metrics: GuestMetrics,
}

impl GuestHandle {
    /// Queues a frame for the guest without waiting; a full queue (or a full budget across
    /// all guests) drops it, counted.
    pub(crate) fn deliver(&self, item: ToGuest) {
        let share = match &item {
            ToGuest::Frame(frame) => match self.budget.reserve(frame.len()) {
                Some(share) => Some(share),
                None => {
                    self.metrics.queue_full_to.inc();
                    return;
                }
            },
            ToGuest::Resync => None,
        };
        match self.tx.try_send(Queued {
            item,
            _share: share,
        }) {
            Ok(()) => {
                let depth = self.tx.max_capacity() - self.tx.capacity();
                self.metrics.to_guest_depth.set(depth as i64);
            }
            Err(TrySendError::Full(_)) => {
                self.metrics.queue_full_to.inc();
            }
            // The session is ending; the frame goes with it.
            Err(TrySendError::Closed(_)) => {}
        }
    }

    /// The controller rejected a frame of this guest.
    pub(crate) fn auth_failure(&self) {
        self.metrics.auth_failures.inc();
    }

    /// A frame for this guest from the controller was not a single valid frame.
    pub(crate) fn invalid_from_controller(&self) {
        self.metrics.invalid_from_controller.inc();
    }

    /// Ends the session (its queued frames are still written, within the grace period).
    pub(crate) fn stop(&self) {
        self.cancel.cancel();
    }
}

/// Starts the session of `channel` on `tracker`; it ends when `parent` or the handle's
/// [`GuestHandle::stop`] is cancelled.
pub(crate) fn spawn(
    channel: GuestChannel,
    env: &GuestEnv,
    metrics: GuestMetrics,
    tracker: &TaskTracker,
    parent: &CancellationToken,
) -> GuestHandle {
    let (tx, rx) = mpsc::channel(env.limits.to_guest_queue);
    let (fwd_tx, fwd_rx) = mpsc::channel(env.limits.from_guest_queue);
    let cancel = parent.child_token();
    let span = info_span!(
        "guest",
        vm.uuid = %channel.uuid,
        vm.name = %channel.name,
        port.path = %channel.socket.display(),
    );
    let session = Session {
        socket: channel.socket.clone(),
        cancel: cancel.clone(),
        inbound: Inbound {
            instance: channel.uuid,
            bucket: TokenBucket::new(
                env.limits.guest_frames_per_sec,
                env.limits.guest_burst,
                Instant::now(),
            ),
            guard: ReplayGuard::default(),
            fwd: fwd_tx,
            metrics: metrics.clone(),
        },
        outbound: Outbound {
            rx,
            grace: env.grace,
            metrics: metrics.clone(),
        },
    };
    let forwarder = forward(fwd_rx, env.uplink.clone(), metrics.clone());
    tracker.spawn(
        async move {
            debug!("session starts");
            tokio::join!(session.run(), forwarder);
            debug!("session ended");
        }
        .instrument(span),
    );
    GuestHandle {
        channel,
        tx,
        budget: env.budget.clone(),
        cancel,
        metrics,
    }
}

/// Moves the guest's queued messages into the uplink's shared queue, waiting its turn there.
/// Ends when the session has dropped its end and everything queued has been handed over.
async fn forward(
    mut rx: mpsc::Receiver<RelayMsg>,
    uplink: mpsc::Sender<RelayMsg>,
    metrics: GuestMetrics,
) {
    while let Some(msg) = rx.recv().await {
        metrics.from_guest_depth.set(rx.len() as i64);
        if uplink.send(msg).await.is_err() {
            // The uplink is gone: the relay is stopping.
            break;
        }
    }
}

/// Why a connection to the guest's socket ended.
enum End {
    Shutdown,
    Closed(io::Error),
}

struct Session {
    socket: PathBuf,
    cancel: CancellationToken,
    inbound: Inbound,
    outbound: Outbound,
}

impl Session {
    async fn run(mut self) {
        let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
        loop {
            let connected = tokio::select! {
                biased;
                _ = self.cancel.cancelled() => break,
                r = UnixStream::connect(&self.socket) => r,
            };
            match connected {
                Ok(stream) => {
                    let since = Instant::now();
                    self.inbound.metrics.reconnects.inc();
                    self.inbound.metrics.sessions.inc();
                    let end = self.serve(stream).await;
                    self.inbound.metrics.sessions.dec();
                    match end {
                        End::Shutdown => break,
                        End::Closed(e) => info!(error = %e, "channel closed; reconnecting"),
                    }
                    if since.elapsed() >= STABLE {
                        backoff.reset();
                    }
                }
                // Refused or missing while QEMU (re)starts: normal, retried quietly.
                Err(e) => debug!(error = %e, "cannot connect to the channel yet"),
            }
            let delay = backoff.next_delay();
            tokio::select! {
                biased;
                _ = self.cancel.cancelled() => break,
                _ = tokio::time::sleep(delay) => {}
            }
        }
        // Dropping `self` closes the guest's queue towards the uplink, which lets the forwarder
        // finish once it has handed everything over.
    }

    /// Runs one connection until it closes or the session is stopped.
    async fn serve(&mut self, stream: UnixStream) -> End {
        // Whatever was queued for the previous connection belongs to a session the guest is about
        // to abandon.
        while self.outbound.rx.try_recv().is_ok() {}
        self.outbound.metrics.to_guest_depth.set(0);
        let (mut rd, mut wr) = stream.into_split();
        let marker = tokio::select! {
            biased;
            _ = self.cancel.cancelled() => return End::Shutdown,
            r = wr.write_all(&RESYNC_MARKER) => r,
        };
        if let Err(e) = marker {
            return End::Closed(e);
        }
        debug!("channel open, resync marker written");
        self.inbound.guard.reset();
        self.inbound.queue(RelayMsg::GuestReopened {
            instance: self.inbound.instance,
        });
        tokio::select! {
            end = self.inbound.read_loop(&mut rd) => end,
            end = self.outbound.write_loop(&mut wr, &self.cancel) => end,
        }
    }
}

/// Guest -> controller half of a session.
struct Inbound {
    instance: Uuid,
    bucket: TokenBucket,
    guard: ReplayGuard,
    fwd: mpsc::Sender<RelayMsg>,
    metrics: GuestMetrics,
}

impl Inbound {
    async fn read_loop(&mut self, rd: &mut OwnedReadHalf) -> End {
        let mut decoder = FrameDecoder::new();
        let mut buf = BytesMut::new();
        loop {
            if buf.is_empty() {
                // An idle guest holds no read buffer.
                buf = BytesMut::new();
            }
            if let Err(e) = rd.readable().await {
                return End::Closed(e);
            }
            buf.reserve(READ_CHUNK);
            match rd.try_read_buf(&mut buf) {
                Ok(0) => {
                    return End::Closed(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "QEMU closed the channel socket",
                    ))
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return End::Closed(e),
            }
            while let Some(item) = decoder.decode(&mut buf) {
                self.handle(item);
            }
        }
    }

    fn handle(&mut self, item: Decoded) {
        match item {
            Decoded::Frame(frame) => {
                if !self.bucket.try_take(Instant::now()) {
                    self.metrics.rate_limited.inc();
                    trace!("frame dropped: rate limit");
                    return;
                }
                let h = frame.header();
                if !self.guard.accept(h) {
                    self.metrics.replay.inc();
                    debug!(
                        epoch = h.epoch,
                        seq = h.seq,
                        "frame dropped: replayed or duplicated"
                    );
                    return;
                }
                let bytes = frame.as_bytes();
                let len = bytes.len() as u64;
                if self.queue(RelayMsg::FromGuest {
                    instance: self.instance,
                    frame: bytes.to_vec(),
                }) {
                    self.metrics.frames_from.inc();
                    self.metrics.bytes_from.inc_by(len);
                }
            }
            Decoded::Resync => {
                // The guest (re)opened its end and starts a new session with a Hello.
                debug!("resync marker from the guest");
                self.guard.reset();
            }
            Decoded::Discarded { bytes, reason } => {
                self.metrics.garbage.inc();
                self.metrics.discarded_bytes.inc_by(bytes as u64);
                trace!(bytes, %reason, "bytes discarded");
            }
        }
    }

    /// Queues a message towards the uplink; false if the guest's queue was full (counted).
    fn queue(&self, msg: RelayMsg) -> bool {
        match self.fwd.try_send(msg) {
            Ok(()) => {
                let depth = self.fwd.max_capacity() - self.fwd.capacity();
                self.metrics.from_guest_depth.set(depth as i64);
                true
            }
            Err(TrySendError::Full(_)) => {
                self.metrics.queue_full_from.inc();
                false
            }
            Err(TrySendError::Closed(_)) => false,
        }
    }
}

/// Controller -> guest half of a session.
struct Outbound {
    rx: mpsc::Receiver<Queued>,
    grace: Duration,
    metrics: GuestMetrics,
}

impl Outbound {
    async fn write_loop(&mut self, wr: &mut OwnedWriteHalf, cancel: &CancellationToken) -> End {
        loop {
            let item = tokio::select! {
                biased;
                _ = cancel.cancelled() => return self.drain(wr).await,
                item = self.rx.recv() => item,
            };
            let Some(queued) = item else {
                return End::Shutdown;
            };
            self.metrics.to_guest_depth.set(self.rx.len() as i64);
            if let Err(e) = self.write_one(wr, &queued.item, cancel).await {
                return End::Closed(e);
            }
        }
    }

    /// Shutdown: writes what is already queued, within the grace period, then ends.
    async fn drain(&mut self, wr: &mut OwnedWriteHalf) -> End {
        let deadline = Instant::now() + self.grace;
        while let Ok(queued) = self.rx.try_recv() {
            let write = self.write_item(wr, &queued.item);
            match tokio::time::timeout_at(deadline, write).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => break,
                Err(_) => {
                    warn!("guest did not read its queued frames within the shutdown grace period");
                    break;
                }
            }
        }
        End::Shutdown
    }

    /// Writes one item whole; a shutdown arriving meanwhile waits for it (up to the grace
    /// period) rather than cutting it.
    async fn write_one(
        &mut self,
        wr: &mut OwnedWriteHalf,
        item: &ToGuest,
        cancel: &CancellationToken,
    ) -> io::Result<()> {
        let grace = self.grace;
        let write = self.write_item(wr, item);
        tokio::pin!(write);
        tokio::select! {
            biased;
            r = &mut write => r,
            _ = cancel.cancelled() => match tokio::time::timeout(grace, write).await {
                Ok(r) => r,
                Err(_) => {
                    warn!("guest did not read a frame within the shutdown grace period");
                    Err(io::Error::new(io::ErrorKind::TimedOut, "shutdown grace period over"))
                }
            },
        }
    }

    async fn write_item(&self, wr: &mut OwnedWriteHalf, item: &ToGuest) -> io::Result<()> {
        match item {
            ToGuest::Frame(frame) => {
                // One frame per write: a virtio-serial write carries at most 32 KiB, a frame
                // never more.
                wr.write_all(frame).await?;
                self.metrics.frames_to.inc();
                self.metrics.bytes_to.inc_by(frame.len() as u64);
            }
            ToGuest::Resync => {
                wr.write_all(&RESYNC_MARKER).await?;
                debug!("resync marker written at the controller's request");
            }
        }
        Ok(())
    }
}

/// Frames per second with bursts: `burst` tokens, refilled at `rate` per second.
#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    pub(crate) fn new(rate: u32, burst: u32, now: Instant) -> TokenBucket {
        TokenBucket {
            rate: f64::from(rate),
            burst: f64::from(burst.max(1)),
            tokens: f64::from(burst.max(1)),
            last: now,
        }
    }

    pub(crate) fn try_take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Keyless replay filter over frame headers (see the module documentation).
///
/// A guest's frames follow `Hello` in epoch `nonce` (sequence 0), then the session in the epoch
/// the controller's `Welcome` chose, sequence numbers 0, 1, 2, ... The relay cannot read the
/// Welcome's epoch without the key, so it lets the first frame after a Hello switch epochs once.
/// Frames of any other epoch, and frames not newer than the last one of theirs, are dropped.
/// The controller checks the MAC, the epoch and the order anyway; this only keeps obvious
/// replays off the uplink.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct ReplayGuard {
    epoch: Option<u64>,
    last: u64,
    may_switch: bool,
}

impl ReplayGuard {
    /// Forgets everything: the channel was reopened, by either side.
    pub(crate) fn reset(&mut self) {
        *self = ReplayGuard::default();
    }

    /// Whether a frame with this header is fresh; records it if so.
    pub(crate) fn accept(&mut self, h: &Header) -> bool {
        let hello = h.kind == Kind::Hello as u8;
        match self.epoch {
            Some(epoch) if epoch == h.epoch => {
                if h.seq <= self.last {
                    return false;
                }
                self.last = h.seq;
                true
            }
            Some(_) if !hello && !self.may_switch => false,
            _ => {
                self.epoch = Some(h.epoch);
                self.last = h.seq;
                self.may_switch = hello;
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::metrics::Metrics;
    use relay_protocol::message::capability;
    use relay_protocol::{Event, Hello, InstanceKey, Message, Ping, Session, Severity, Welcome};
    use tokio::io::AsyncReadExt;
    use tokio::net::UnixListener;

    const INSTANCE: Uuid = Uuid::from_u128(0xfeed);

    /// A guest session on a socket in a temp dir, with a plain channel as its uplink.
    struct Fixture {
        _dir: tempfile::TempDir,
        listener: UnixListener,
        handle: GuestHandle,
        uplink: mpsc::Receiver<RelayMsg>,
        metrics: Metrics,
        tracker: TaskTracker,
    }

    fn fixture(limits: Limits) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("guest.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let (tx, uplink) = mpsc::channel(4096);
        let metrics = Metrics::new();
        let tracker = TaskTracker::new();
        let env = GuestEnv {
            limits,
            uplink: tx,
            grace: Duration::from_secs(2),
            budget: Budget::new(usize::MAX / 2),
        };
        let channel = GuestChannel {
            uuid: INSTANCE,
            name: "vnf".into(),
            socket,
        };
        let handle = spawn(
            channel,
            &env,
            metrics.guest(INSTANCE),
            &tracker,
            &CancellationToken::new(),
        );
        Fixture {
            _dir: dir,
            listener,
            handle,
            uplink,
            metrics,
            tracker,
        }
    }

    fn value(m: &Metrics, name: &str, labels: &[(&str, &str)]) -> f64 {
        let id = INSTANCE.to_string();
        let mut all = vec![("instance", id.as_str())];
        all.extend_from_slice(labels);
        crate::testing::metric(&m.encode(), name, &all).unwrap_or(0.0)
    }

    /// A guest and a controller session, established in memory; returns the guest's
    /// opening bytes (resync marker and Hello) too.
    fn sessions() -> (Session, Session, BytesMut) {
        let key = InstanceKey::from_bytes(&[9; 32]).unwrap();
        let (mut guest, mut controller) = (Session::guest(&key), Session::controller(&key));
        let hello = Hello {
            protocol_min: 1,
            protocol_max: 1,
            capabilities: capability::ALL,
            agent_name: "t".into(),
            agent_version: "0".into(),
            services: vec![],
        };
        let mut opening = BytesMut::new();
        guest.begin(0xAB, &hello, &mut opening).unwrap();
        let mut buf = opening.clone();
        let mut d = FrameDecoder::new();
        assert_eq!(d.decode(&mut buf), Some(Decoded::Resync));
        let Some(Decoded::Frame(f)) = d.decode(&mut buf) else {
            panic!("no Hello frame")
        };
        controller.open(&f).unwrap();
        let welcome = Welcome {
            protocol: 1,
            capabilities: 0,
            session_epoch: 0xE,
            max_message_len: 1 << 20,
            heartbeat_interval_ms: 1000,
        };
        let mut w = BytesMut::new();
        controller.accept(&welcome, &mut w).unwrap();
        let Some(Decoded::Frame(f)) = d.decode(&mut w) else {
            panic!("no Welcome frame")
        };
        guest.open(&f).unwrap();
        (guest, controller, opening)
    }

    fn event(n: usize) -> Message {
        Message::Event(Event {
            name: format!("e{n}"),
            severity: Severity::Info,
            message: String::new(),
            attributes: vec![],
        })
    }

    async fn next(uplink: &mut mpsc::Receiver<RelayMsg>) -> RelayMsg {
        uplink.recv().await.unwrap()
    }

    async fn read_marker(stream: &mut UnixStream) {
        let mut marker = [0u8; RESYNC_MARKER.len()];
        stream.read_exact(&mut marker).await.unwrap();
        assert_eq!(marker, RESYNC_MARKER);
    }

    #[tokio::test(start_paused = true)]
    async fn a_flooding_guest_gets_exactly_its_burst_through() {
        let limits = Limits {
            guest_frames_per_sec: 10,
            guest_burst: 20,
            from_guest_queue: 1000,
            ..Limits::default()
        };
        let mut f = fixture(limits);
        let (mut stream, _) = f.listener.accept().await.unwrap();
        read_marker(&mut stream).await;
        assert_eq!(
            next(&mut f.uplink).await,
            RelayMsg::GuestReopened { instance: INSTANCE }
        );
        let (mut guest, _, mut flood) = sessions();
        for n in 0..99 {
            guest.send(&event(n), &mut flood).unwrap();
        }
        stream.write_all(&flood).await.unwrap();
        // Closing makes the relay read everything, then reconnect: its next GuestReopened
        // comes after every frame was judged. No time passes meanwhile (paused clock).
        drop(stream);
        let mut forwarded = 0;
        loop {
            match next(&mut f.uplink).await {
                RelayMsg::FromGuest { instance, .. } => {
                    assert_eq!(instance, INSTANCE);
                    forwarded += 1;
                }
                RelayMsg::GuestReopened { .. } => break,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(forwarded, 20, "the burst, Hello included");
        assert_eq!(
            value(
                &f.metrics,
                "relay_frames_dropped_total",
                &[("reason", "rate_limited")]
            ),
            80.0
        );
        assert_eq!(
            value(&f.metrics, "relay_frames_from_guest_total", &[]),
            20.0
        );
        f.handle.stop();
        f.tracker.close();
        f.tracker.wait().await;
    }

    #[tokio::test(start_paused = true)]
    async fn garbage_and_replays_are_dropped_and_counted() {
        let mut f = fixture(Limits::default());
        let (mut stream, _) = f.listener.accept().await.unwrap();
        read_marker(&mut stream).await;
        next(&mut f.uplink).await;
        let (mut guest, mut controller, opening) = sessions();
        let mut e1 = BytesMut::new();
        guest.send(&event(1), &mut e1).unwrap();
        let mut e2 = BytesMut::new();
        guest.send(&event(2), &mut e2).unwrap();
        let mut wire = BytesMut::from(&b"stale bytes"[..]);
        wire.extend_from_slice(&opening);
        wire.extend_from_slice(&e1);
        wire.extend_from_slice(&e1); // a duplicate
        wire.extend_from_slice(&e2);
        wire.extend_from_slice(&e1); // a replay of an older frame
        stream.write_all(&wire).await.unwrap();
        drop(stream);
        let mut frames = Vec::new();
        loop {
            match next(&mut f.uplink).await {
                RelayMsg::FromGuest { frame, .. } => frames.push(frame),
                RelayMsg::GuestReopened { .. } => break,
                other => panic!("unexpected {other:?}"),
            }
        }
        // Hello, e1, e2: each opens in the controller's session exactly once, in order.
        assert_eq!(frames.len(), 3);
        // (The controller session already took this Hello when `sessions` set it up.)
        for (i, frame) in frames.into_iter().enumerate().skip(1) {
            let raw = relay_protocol::RawFrame::parse(Bytes::from(frame)).unwrap();
            assert_eq!(controller.open(&raw).unwrap(), Some(event(i)));
        }
        let m = &f.metrics;
        assert_eq!(
            value(m, "relay_frames_dropped_total", &[("reason", "replay")]),
            2.0
        );
        assert_eq!(
            value(m, "relay_frames_dropped_total", &[("reason", "garbage")]),
            1.0
        );
        assert_eq!(value(m, "relay_guest_discarded_bytes_total", &[]), 11.0);
        f.handle.stop();
    }

    #[tokio::test(start_paused = true)]
    async fn frames_are_written_whole_one_per_write_and_stop_flushes_the_queue() {
        let mut f = fixture(Limits::default());
        let (mut stream, _) = f.listener.accept().await.unwrap();
        read_marker(&mut stream).await;
        next(&mut f.uplink).await;
        let (_, mut controller, _) = sessions();
        let mut frames = Vec::new();
        for n in 0..3 {
            let mut out = BytesMut::new();
            controller
                .send(&Message::Ping(Ping { nonce: n }), &mut out)
                .unwrap();
            frames.push(out.freeze());
        }
        for frame in &frames {
            f.handle.deliver(ToGuest::Frame(frame.clone()));
        }
        // Stopping right away: what was queued is still written, then the socket closes.
        f.handle.stop();
        let mut got = Vec::new();
        stream.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, frames.concat());
        f.tracker.close();
        f.tracker.wait().await;
        assert_eq!(value(&f.metrics, "relay_frames_to_guest_total", &[]), 3.0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_guest_that_never_reads_cannot_block_delivery_or_shutdown() {
        let limits = Limits {
            to_guest_queue: 4,
            ..Limits::default()
        };
        let f = fixture(limits);
        let (stream, _) = f.listener.accept().await.unwrap();
        let frame = Bytes::from(vec![0u8; relay_protocol::MAX_FRAME]);
        // `deliver` never waits: 1000 frames of 32 KiB to a guest that reads nothing.
        for _ in 0..1000 {
            f.handle.deliver(ToGuest::Frame(frame.clone()));
        }
        let dropped = value(
            &f.metrics,
            "relay_frames_dropped_total",
            &[("reason", "queue_full_to_guest")],
        );
        assert!(dropped >= 1000.0 - 4.0 - 1.0 - 64.0, "{dropped}");
        // Shutdown gives up on the stuck guest after the grace period (paused clock).
        f.handle.stop();
        f.tracker.close();
        f.tracker.wait().await;
        drop(stream);
    }

    #[tokio::test(start_paused = true)]
    async fn reconnects_with_a_new_marker_after_the_socket_closes() {
        let mut f = fixture(Limits::default());
        for _ in 0..3 {
            let (mut stream, _) = f.listener.accept().await.unwrap();
            read_marker(&mut stream).await;
            assert_eq!(
                next(&mut f.uplink).await,
                RelayMsg::GuestReopened { instance: INSTANCE }
            );
        }
        assert_eq!(value(&f.metrics, "relay_guest_reconnects_total", &[]), 3.0);
        f.handle.stop();
        f.tracker.close();
        f.tracker.wait().await;
    }

    fn header(kind: Kind, epoch: u64, seq: u64) -> Header {
        Header {
            kind: kind as u8,
            flags: 0,
            body_len: 0,
            mask: 0,
            epoch,
            seq,
        }
    }

    #[test]
    fn replay_guard_follows_a_session_and_drops_replays() {
        let mut g = ReplayGuard::default();
        assert!(g.accept(&header(Kind::Hello, 0xA, 0)));
        assert!(!g.accept(&header(Kind::Hello, 0xA, 0)), "duplicate Hello");
        // The first frame after the Hello carries the controller's session epoch.
        assert!(g.accept(&header(Kind::ConfigRequest, 0xE, 0)));
        assert!(g.accept(&header(Kind::Ack, 0xE, 1)));
        assert!(!g.accept(&header(Kind::Ack, 0xE, 1)), "duplicate");
        assert!(!g.accept(&header(Kind::Ack, 0xE, 0)), "reordered");
        assert!(g.accept(&header(Kind::Ack, 0xE, 5)), "gaps are fine");
        // Another epoch without a Hello: an old session's frame.
        assert!(!g.accept(&header(Kind::Ack, 0xD, 9)));
        // A new Hello starts over.
        assert!(g.accept(&header(Kind::Hello, 0xB, 0)));
        assert!(g.accept(&header(Kind::ConfigRequest, 0xF, 0)));
        assert!(!g.accept(&header(Kind::Ack, 0xE, 6)), "previous session");
        g.reset();
        assert!(
            g.accept(&header(Kind::Ack, 0xE, 6)),
            "unknown state accepts"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn token_bucket_allows_the_burst_then_the_rate() {
        let start = Instant::now();
        let mut b = TokenBucket::new(10, 20, start);
        let passed = (0..100).filter(|_| b.try_take(start)).count();
        assert_eq!(passed, 20);
        tokio::time::advance(Duration::from_millis(500)).await;
        let passed = (0..100).filter(|_| b.try_take(Instant::now())).count();
        assert_eq!(passed, 5);
        tokio::time::advance(Duration::from_secs(60)).await;
        let passed = (0..100).filter(|_| b.try_take(Instant::now())).count();
        assert_eq!(passed, 20, "refill stops at the burst size");
    }
}
