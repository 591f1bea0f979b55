//! The uplink: one mutual-TLS connection to the controller carrying every guest's traffic.
//!
//! On every connect the relay writes the uplink preamble and a `Register` with the full set of
//! guests it serves, and waits for the controller's preamble and `Registered`; only then does
//! it count as connected. Guest up/down changes are announced from the shared `GuestSet`
//! (coalesced state, see `guests.rs`); guest frames come from the shared queue the guest
//! sessions feed. Frames from the controller go to the router, except heartbeats, which are
//! answered here.
//!
//! Liveness: the relay pings every heartbeat interval (the controller's figure from
//! `Registered`, else the configured one) and declares the peer dead after three intervals
//! without a byte from it, or when a write makes no progress for that long; then it reconnects
//! with backoff.
//!
//! While disconnected, guest messages are kept in a bounded backlog; when it is full the oldest
//! goes (counted per guest). Nothing is lost for good by that: delivery is level-triggered, so
//! after the `Register` the controller and the guests' sessions reconcile to desired state.
//!
//! Shutdown: the uplink keeps writing until every guest session has handed over what it held
//! (their queues close) or the grace period ends, then closes TLS cleanly. Envelopes are
//! written whole; a write is never cut in the middle except by the grace deadline.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use relay_protocol::uplink::{
    self, ControllerMsg, GuestInfo, Register, RelayMsg, PREAMBLE, UPLINK_VERSION,
};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::guests::GuestSet;
use crate::metrics::{Metrics, UplinkMetrics};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A connection that stayed up this long resets the backoff.
const STABLE: Duration = Duration::from_secs(30);
/// Heartbeat intervals without a byte from the controller before it is declared dead.
const DEAD_AFTER: u32 = 3;
/// Envelopes are batched into writes of about this size.
const WRITE_BATCH: usize = 64 * 1024;

/// Why the uplink is not (or no longer) connected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UplinkError {
    #[error("cannot connect to {addr}")]
    Connect {
        addr: String,
        #[source]
        source: io::Error,
    },
    #[error("TLS handshake with {addr} failed")]
    Handshake {
        addr: String,
        #[source]
        source: io::Error,
    },
    #[error("{0} timed out")]
    Timeout(&'static str),
    #[error("connection error")]
    Io(#[source] io::Error),
    #[error("the controller closed the connection")]
    Closed,
    #[error("the controller sent something that is not the uplink protocol")]
    Protocol(#[source] relay_protocol::Error),
    #[error("the controller speaks uplink version {got}, this relay {UPLINK_VERSION}")]
    Version { got: u16 },
    #[error("expected Registered from the controller, got {0}")]
    Unexpected(String),
    #[error("no sign of life from the controller for {0:?}")]
    Dead(Duration),
}

/// What the uplink needs to know.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub controller: String,
    pub server_name: ServerName<'static>,
    pub tls: Arc<ClientConfig>,
    pub host: String,
    pub heartbeat: Duration,
    pub backlog: usize,
    pub grace: Duration,
}

type Tls = TlsStream<TcpStream>;

/// Opens TCP and TLS to the controller.
async fn open(
    controller: &str,
    server_name: ServerName<'static>,
    tls: Arc<ClientConfig>,
) -> Result<Tls, UplinkError> {
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(controller))
        .await
        .map_err(|_| UplinkError::Timeout("TCP connect"))?
        .map_err(|source| UplinkError::Connect {
            addr: controller.to_owned(),
            source,
        })?;
    // Frames are small and latency matters more than packet count.
    tcp.set_nodelay(true).map_err(UplinkError::Io)?;
    tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        TlsConnector::from(tls).connect(server_name, tcp),
    )
    .await
    .map_err(|_| UplinkError::Timeout("TLS handshake"))?
    .map_err(|source| UplinkError::Handshake {
        addr: controller.to_owned(),
        source,
    })
}

/// Reads until the controller's preamble and first envelope; `buf` keeps what follows.
async fn read_first<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut BytesMut,
) -> Result<ControllerMsg, UplinkError> {
    let mut preamble = false;
    loop {
        if !preamble {
            preamble = uplink::check_preamble(buf).map_err(UplinkError::Protocol)?;
        }
        if preamble {
            if let Some(msg) = uplink::decode(buf).map_err(UplinkError::Protocol)? {
                return Ok(msg);
            }
        }
        // In TLS 1.3 the controller's verdict on our certificate arrives here, as an alert.
        if rd.read_buf(buf).await.map_err(UplinkError::Io)? == 0 {
            return Err(UplinkError::Closed);
        }
    }
}

/// Encodes the `Register` for `guests`; if the list does not fit one envelope, as many as fit
/// and the rest as `GuestUp`s right behind it.
fn encode_register(host: &str, guests: Vec<GuestInfo>, out: &mut BytesMut) {
    let mut register = Register {
        version: UPLINK_VERSION,
        host: host.to_owned(),
        relay_version: env!("CARGO_PKG_VERSION").to_owned(),
        guests,
    };
    let mut overflow = Vec::new();
    loop {
        let start = out.len();
        match uplink::encode(&RelayMsg::Register(register.clone()), out) {
            Ok(()) => break,
            Err(_) if !register.guests.is_empty() => {
                out.truncate(start);
                // Halve until it fits; the envelope bound is a fixed number of bytes.
                let keep = register.guests.len() / 2;
                let tail: Vec<GuestInfo> = register.guests.drain(keep..).collect();
                overflow.splice(0..0, tail);
            }
            Err(e) => {
                warn!(error = %e, "cannot encode Register");
                return;
            }
        }
    }
    if !overflow.is_empty() {
        warn!(
            listed = register.guests.len(),
            announced_separately = overflow.len(),
            "guest list does not fit one Register envelope; the rest follow as GuestUp"
        );
        for g in overflow {
            encode_or_log(&RelayMsg::GuestUp(g), out);
        }
    }
}

fn encode_or_log(msg: &RelayMsg, out: &mut BytesMut) {
    if let Err(e) = uplink::encode(msg, out) {
        warn!(error = %e, "cannot encode an uplink message; dropped");
    }
}

/// A registered connection.
struct Connected {
    stream: Tls,
    buf: BytesMut,
    heartbeat: Duration,
}

async fn connect(settings: &Settings, guests: &GuestSet) -> Result<Connected, UplinkError> {
    let mut stream = open(
        &settings.controller,
        settings.server_name.clone(),
        settings.tls.clone(),
    )
    .await?;
    let mut out = BytesMut::new();
    out.extend_from_slice(&PREAMBLE);
    encode_register(&settings.host, guests.register_snapshot(), &mut out);
    let registered = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        stream.write_all(&out).await.map_err(UplinkError::Io)?;
        stream.flush().await.map_err(UplinkError::Io)?;
        let mut buf = BytesMut::with_capacity(1024);
        let first = read_first(&mut stream, &mut buf).await?;
        Ok::<_, UplinkError>((first, buf))
    })
    .await
    .map_err(|_| UplinkError::Timeout("registration"))??;
    match registered {
        (ControllerMsg::Registered(r), buf) => {
            if r.version != UPLINK_VERSION {
                return Err(UplinkError::Version { got: r.version });
            }
            let heartbeat = match r.heartbeat_interval_ms {
                0 => settings.heartbeat,
                ms => Duration::from_millis(u64::from(ms)),
            };
            Ok(Connected {
                stream,
                buf,
                heartbeat,
            })
        }
        (other, _) => Err(UplinkError::Unexpected(format!("{other:?}"))),
    }
}

/// What `relay-host check` learns from a controller without registering with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProbeOutcome {
    /// TLS is up and the controller sent the uplink preamble.
    Answered,
    /// TLS is up; the controller said nothing yet (it may wait for our Register).
    Silent,
}

/// Connects, completes the TLS handshake, exchanges preambles and hangs up, without
/// registering (a `Register` would tell the controller this host has no guests).
pub async fn probe(
    controller: &str,
    server_name: ServerName<'static>,
    tls: Arc<ClientConfig>,
) -> Result<ProbeOutcome, UplinkError> {
    let mut stream = open(controller, server_name, tls).await?;
    stream.write_all(&PREAMBLE).await.map_err(UplinkError::Io)?;
    stream.flush().await.map_err(UplinkError::Io)?;
    let mut buf = BytesMut::new();
    let outcome = tokio::time::timeout(Duration::from_secs(2), async {
        while buf.len() < PREAMBLE.len() {
            if stream.read_buf(&mut buf).await.map_err(UplinkError::Io)? == 0 {
                return Err(UplinkError::Closed);
            }
        }
        uplink::check_preamble(&mut buf).map_err(UplinkError::Protocol)?;
        Ok(ProbeOutcome::Answered)
    })
    .await
    .unwrap_or(Ok(ProbeOutcome::Silent))?;
    let _ = tokio::time::timeout(Duration::from_secs(1), stream.shutdown()).await;
    Ok(outcome)
}

/// How a registered connection ended.
enum SessionEnd {
    Shutdown,
    Lost(UplinkError),
}

/// The uplink task.
pub(crate) struct Uplink {
    settings: Settings,
    guests: Arc<GuestSet>,
    data: mpsc::Receiver<RelayMsg>,
    to_router: mpsc::Sender<ControllerMsg>,
    m: UplinkMetrics,
    backlog: Backlog,
    nonce: u64,
}

/// Guest messages kept while disconnected; the oldest go when it is full.
struct Backlog {
    queue: VecDeque<RelayMsg>,
    cap: usize,
    metrics: Metrics,
}

impl Backlog {
    fn keep(&mut self, msg: RelayMsg) {
        if self.queue.len() >= self.cap {
            if let Some(
                RelayMsg::FromGuest { instance, .. } | RelayMsg::GuestReopened { instance },
            ) = self.queue.pop_front()
            {
                self.metrics.backlog_drop(instance);
            }
        }
        self.queue.push_back(msg);
        self.metrics
            .uplink()
            .queue_depth
            .set(self.queue.len() as i64);
    }
}

impl Uplink {
    pub(crate) fn new(
        settings: Settings,
        guests: Arc<GuestSet>,
        data: mpsc::Receiver<RelayMsg>,
        to_router: mpsc::Sender<ControllerMsg>,
        metrics: Metrics,
    ) -> Uplink {
        let m = metrics.uplink();
        Uplink {
            backlog: Backlog {
                queue: VecDeque::new(),
                cap: settings.backlog,
                metrics,
            },
            settings,
            guests,
            data,
            to_router,
            m,
            nonce: 0,
        }
    }

    pub(crate) async fn run(mut self, shutdown: CancellationToken) {
        let mut backoff = Backoff::new(BACKOFF_MIN, BACKOFF_MAX);
        let mut first = true;
        loop {
            let attempt = {
                let connecting = connect(&self.settings, &self.guests);
                tokio::pin!(connecting);
                loop {
                    tokio::select! {
                        biased;
                        _ = shutdown.cancelled() => return,
                        r = &mut connecting => break r,
                        msg = self.data.recv() => match msg {
                            Some(msg) => self.backlog.keep(msg),
                            None => return,
                        },
                    }
                }
            };
            match attempt {
                Ok(conn) => {
                    if !first {
                        self.m.reconnects.inc();
                    }
                    first = false;
                    self.m.connected.set(1);
                    info!(
                        controller = %self.settings.controller,
                        heartbeat_ms = conn.heartbeat.as_millis() as u64,
                        "uplink registered"
                    );
                    let since = Instant::now();
                    let end = self.session(conn, &shutdown).await;
                    self.m.connected.set(0);
                    match end {
                        SessionEnd::Shutdown => return,
                        SessionEnd::Lost(e) => {
                            warn!(error = %crate::error_chain(&e), "uplink lost; reconnecting")
                        }
                    }
                    if since.elapsed() >= STABLE {
                        backoff.reset();
                    }
                }
                Err(e) => {
                    self.m.connect_errors.inc();
                    warn!(
                        controller = %self.settings.controller,
                        error = %crate::error_chain(&e),
                        "uplink: cannot connect"
                    );
                }
            }
            let pause = tokio::time::sleep(backoff.next_delay());
            tokio::pin!(pause);
            loop {
                tokio::select! {
                    biased;
                    _ = shutdown.cancelled() => return,
                    _ = &mut pause => break,
                    msg = self.data.recv() => match msg {
                        Some(msg) => self.backlog.keep(msg),
                        None => return,
                    },
                }
            }
        }
    }

    async fn session(&mut self, conn: Connected, shutdown: &CancellationToken) -> SessionEnd {
        let heartbeat = conn.heartbeat;
        let (rd, wr) = tokio::io::split(conn.stream);
        let epoch = Instant::now();
        let last_rx = AtomicU64::new(0);
        let (pong_tx, pong_rx) = mpsc::channel(16);
        let reader = read_loop(
            rd,
            conn.buf,
            self.to_router.clone(),
            pong_tx,
            &last_rx,
            epoch,
        );
        let writer = self.write_loop(wr, pong_rx, &last_rx, epoch, heartbeat, shutdown);
        tokio::select! {
            e = reader => SessionEnd::Lost(e),
            end = writer => end,
        }
    }

    async fn write_loop(
        &mut self,
        mut wr: WriteHalf<Tls>,
        mut pongs: mpsc::Receiver<u64>,
        last_rx: &AtomicU64,
        epoch: Instant,
        heartbeat: Duration,
        shutdown: &CancellationToken,
    ) -> SessionEnd {
        let stall = heartbeat * DEAD_AFTER;
        let mut out = BytesMut::new();
        for msg in self.guests.take_pending() {
            encode_or_log(&msg, &mut out);
        }
        while let Some(msg) = self.backlog.queue.pop_front() {
            encode_or_log(&msg, &mut out);
            if out.len() >= WRITE_BATCH {
                if let Err(e) = write(&mut wr, &mut out, stall).await {
                    return SessionEnd::Lost(e);
                }
            }
        }
        self.m.queue_depth.set(0);
        if let Err(e) = write(&mut wr, &mut out, stall).await {
            return SessionEnd::Lost(e);
        }
        let mut tick = tokio::time::interval_at(Instant::now() + heartbeat, heartbeat);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return self.finish(wr, stall).await,
                _ = self.guests.changed() => {
                    for msg in self.guests.take_pending() {
                        encode_or_log(&msg, &mut out);
                    }
                }
                Some(nonce) = pongs.recv() => encode_or_log(&RelayMsg::Pong { nonce }, &mut out),
                _ = tick.tick() => {
                    let silent = epoch.elapsed()
                        .saturating_sub(Duration::from_millis(last_rx.load(Ordering::Relaxed)));
                    if silent >= stall {
                        return SessionEnd::Lost(UplinkError::Dead(silent));
                    }
                    self.nonce = self.nonce.wrapping_add(1);
                    encode_or_log(&RelayMsg::Ping { nonce: self.nonce }, &mut out);
                }
                msg = self.data.recv() => match msg {
                    Some(msg) => {
                        encode_or_log(&msg, &mut out);
                        // Batch whatever else is ready into the same write.
                        while out.len() < WRITE_BATCH {
                            match self.data.try_recv() {
                                Ok(msg) => encode_or_log(&msg, &mut out),
                                Err(_) => break,
                            }
                        }
                        self.m.queue_depth.set(self.data.len() as i64);
                    }
                    // Every guest session and the router are gone: the relay is stopping.
                    None => return self.finish(wr, stall).await,
                },
            }
            if let Err(e) = write(&mut wr, &mut out, stall).await {
                return SessionEnd::Lost(e);
            }
        }
    }

    /// Shutdown: forwards what the guest sessions still hand over, within the grace period,
    /// then closes TLS.
    async fn finish(&mut self, mut wr: WriteHalf<Tls>, stall: Duration) -> SessionEnd {
        let deadline = Instant::now() + self.settings.grace;
        let mut out = BytesMut::new();
        loop {
            match tokio::time::timeout_at(deadline, self.data.recv()).await {
                Ok(Some(msg)) => {
                    encode_or_log(&msg, &mut out);
                    if out.len() >= WRITE_BATCH && write(&mut wr, &mut out, stall).await.is_err() {
                        return SessionEnd::Shutdown;
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    warn!("uplink: shutdown grace period over with guest messages still queued");
                    break;
                }
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if tokio::time::timeout(left, write(&mut wr, &mut out, stall))
            .await
            .is_ok()
        {
            let _ = tokio::time::timeout(Duration::from_secs(1), wr.shutdown()).await;
        }
        debug!("uplink closed");
        SessionEnd::Shutdown
    }
}

/// Writes and flushes `out` whole, then empties it; no progress for `stall` is a dead peer.
async fn write<W: AsyncWrite + Unpin>(
    wr: &mut W,
    out: &mut BytesMut,
    stall: Duration,
) -> Result<(), UplinkError> {
    if out.is_empty() {
        return Ok(());
    }
    tokio::time::timeout(stall, async {
        wr.write_all(out).await?;
        wr.flush().await
    })
    .await
    .map_err(|_| UplinkError::Dead(stall))?
    .map_err(UplinkError::Io)?;
    out.clear();
    Ok(())
}

async fn read_loop(
    mut rd: ReadHalf<Tls>,
    mut buf: BytesMut,
    to_router: mpsc::Sender<ControllerMsg>,
    pongs: mpsc::Sender<u64>,
    last_rx: &AtomicU64,
    epoch: Instant,
) -> UplinkError {
    loop {
        loop {
            let msg = match uplink::decode::<ControllerMsg>(&mut buf) {
                Ok(Some(msg)) => msg,
                Ok(None) => break,
                Err(e) => return UplinkError::Protocol(e),
            };
            match msg {
                ControllerMsg::Ping { nonce } => {
                    // A controller pinging faster than we answer loses some answers, which
                    // is all a ping needs.
                    let _ = pongs.try_send(nonce);
                }
                ControllerMsg::Pong { .. } => {}
                ControllerMsg::Registered(_) => {
                    debug!("Registered again on a registered connection; ignored")
                }
                other => {
                    if to_router.send(other).await.is_err() {
                        // The router is gone: shutdown, the writer side ends it.
                        std::future::pending::<()>().await;
                    }
                }
            }
        }
        match rd.read_buf(&mut buf).await {
            Ok(0) => return UplinkError::Closed,
            Ok(_) => {
                let ms = epoch.elapsed().as_millis().min(u128::from(u64::MAX)) as u64;
                last_rx.store(ms, Ordering::Relaxed);
            }
            Err(e) => return UplinkError::Io(e),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use relay_protocol::Uuid;

    #[test]
    fn the_backlog_drops_the_oldest_and_counts_per_guest() {
        let metrics = Metrics::new();
        let a = Uuid::from_u128(0xa);
        let _handles = metrics.guest(a);
        let mut backlog = Backlog {
            queue: VecDeque::new(),
            cap: 3,
            metrics: metrics.clone(),
        };
        for n in 0..5u8 {
            backlog.keep(RelayMsg::FromGuest {
                instance: a,
                frame: vec![n],
            });
        }
        let kept: Vec<_> = backlog
            .queue
            .iter()
            .map(|m| match m {
                RelayMsg::FromGuest { frame, .. } => frame[0],
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(kept, [2, 3, 4]);
        let text = metrics.encode();
        let labels = [
            ("instance", a.to_string()),
            ("reason", "uplink_backlog".into()),
        ];
        let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
        assert_eq!(
            crate::testing::metric(&text, "relay_frames_dropped_total", &labels),
            Some(2.0)
        );
        assert_eq!(
            crate::testing::metric(&text, "relay_uplink_queue_depth", &[]),
            Some(3.0)
        );
    }

    #[test]
    fn a_guest_list_too_long_for_one_register_continues_as_guest_ups() {
        let guests: Vec<GuestInfo> = (0..2000u128)
            .map(|n| GuestInfo {
                instance: Uuid::from_u128(n),
                name: format!("instance-{n:08x}-with-a-long-name"),
            })
            .collect();
        let mut out = BytesMut::new();
        encode_register("host", guests.clone(), &mut out);
        let mut seen = Vec::new();
        let first = uplink::decode::<RelayMsg>(&mut out).unwrap().unwrap();
        let RelayMsg::Register(r) = first else {
            panic!("Register first")
        };
        assert!(!r.guests.is_empty() && r.guests.len() < guests.len());
        seen.extend(r.guests);
        while let Some(msg) = uplink::decode::<RelayMsg>(&mut out).unwrap() {
            match msg {
                RelayMsg::GuestUp(g) => seen.push(g),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(seen == guests, "every guest once, in order");
    }
}
