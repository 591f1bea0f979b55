//! One relay connection: TLS handshake, registration, then a loop that reads the relay's
//! envelopes, answers guests through their sessions, pushes desired configuration and writes
//! through a separate writer task.
//!
//! The loop owns the read half and an output buffer; a writer task owns the write half and takes
//! the output in chunks over a small bounded channel. Reading from the relay stops while the
//! output is above [`HIGH_WATER`], and pushes are sealed only while it is below [`LOW_WATER`]
//! (one pending entry per guest and service, the payload read from the database when it is
//! sealed), so a relay that reads slowly holds the controller to about one largest message
//! plus the high-water mark, and a relay that stops reading is dropped after three heartbeat
//! intervals without write progress.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use relay_protocol::message::{capability, PROTOCOL_VERSION};
use relay_protocol::uplink::{
    self, ControllerMsg, Register, Registered, RelayMsg, MAX_GUESTS, PREAMBLE, UPLINK_VERSION,
};
use relay_protocol::{
    AckOutcome, ConfigPush, Decoded, ErrorCode, ErrorMsg, FrameDecoder, Hello, InstanceKey,
    Message, Pong, RawFrame, ServiceName, Session, Uuid, Welcome, MAX_FRAME,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::store::{self, Report};
use super::{tls, HostEvent, Shared, GUEST_MESSAGE_MAX};

type Tls = TlsStream<TcpStream>;

/// Above this much unwritten output nothing more is read from the relay.
const HIGH_WATER: usize = 4 << 20;
/// Pushes are sealed only while the unwritten output is below this.
const LOW_WATER: usize = 1 << 20;
/// Size of the chunks handed to the writer task.
const WRITE_CHUNK: usize = 256 << 10;
/// Chunks waiting for the writer task.
const WRITE_QUEUE: usize = 16;
/// Frames of one chunked message a guest may send (see [`GUEST_MESSAGE_MAX`]).
const MAX_GUEST_CHUNKS: u32 = (GUEST_MESSAGE_MAX / MAX_FRAME) as u32 + 1;
/// How often a guest whose key is missing is looked up again when its frames keep coming.
const KEY_RETRY: Duration = Duration::from_secs(1);
/// Heartbeat intervals of silence after which the relay is considered gone.
const DEAD_AFTER: u32 = 3;

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
enum ConnError {
    #[error("connection error")]
    Io(#[from] io::Error),
    #[error("the relay broke the uplink protocol")]
    Protocol(#[from] relay_protocol::Error),
    #[error("the relay closed the connection")]
    Closed,
    #[error("expected Register as the relay's first message, got {0}")]
    NotRegister(String),
    #[error("the relay speaks uplink version {0}, this controller {UPLINK_VERSION}")]
    Version(u16),
    #[error("the relay registers as host {host:?} but its certificate names {names:?}")]
    HostMismatch { host: String, names: Vec<String> },
    #[error("no sign of life from the relay for {0:?}")]
    Dead(Duration),
    #[error("database")]
    Db(#[from] sqlx::Error),
    #[error("writing to the relay failed")]
    Write(#[source] io::Error),
    #[error("another connection registered as the same host")]
    Replaced,
}

/// Accepts TLS, registers the relay and serves it until it goes, is replaced or `shutdown`.
pub(super) async fn run(
    tcp: TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    // Frames are small and latency matters more than packet count.
    let _ = tcp.set_nodelay(true);
    let limit = shared.options.handshake_timeout;
    let mut stream = match tokio::time::timeout(limit, acceptor.accept(tcp)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            warn!(error = %e, "TLS handshake failed; relay refused");
            return;
        }
        Err(_) => {
            warn!("TLS handshake timed out; relay refused");
            return;
        }
    };
    let names = stream
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .map(tls::certificate_names)
        .unwrap_or_default();
    let mut buf = BytesMut::with_capacity(64 << 10);
    let register = tokio::select! {
        _ = shutdown.cancelled() => return,
        r = tokio::time::timeout(limit, registration(&mut stream, &mut buf)) => match r {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                warn!(error = %crate::error_chain(&e), "relay did not register");
                return;
            }
            Err(_) => {
                warn!("relay did not register in time");
                return;
            }
        },
    };
    let host = match check_register(&register, &names) {
        Ok(host) => host,
        Err(e) => {
            warn!(error = %crate::error_chain(&e), "registration refused");
            if matches!(e, ConnError::Version(_)) {
                // Answer with our version so that the relay reports the mismatch.
                let mut out = BytesMut::new();
                if uplink::encode(&registered(&shared), &mut out).is_ok() {
                    let _ = tokio::time::timeout(limit, stream.write_all(&out)).await;
                }
            }
            let _ = tokio::time::timeout(Duration::from_secs(1), stream.shutdown()).await;
            return;
        }
    };
    tracing::Span::current().record("relay.host", host.as_str());
    let guests: Vec<(String, String)> = register
        .guests
        .iter()
        .take(MAX_GUESTS)
        .map(|g| (g.instance.to_string(), g.name.clone()))
        .collect();
    let peer_text = peer.to_string();
    let (id, replaced) = match shared
        .registry
        .register(
            &shared.db,
            &host,
            &register.relay_version,
            &peer_text,
            &guests,
        )
        .await
    {
        Ok(r) => r,
        Err(e) => {
            error!(error = %crate::error_chain(&e), "cannot record the registration; closing");
            return;
        }
    };
    info!(
        guests = register.guests.len(),
        relay_version = %register.relay_version,
        "relay registered"
    );
    let notes = shared.notifier.subscribe();
    let links = shared.hosts.attach(&host, id);
    let (rd, wr) = tokio::io::split(stream);
    let stall = shared.options.heartbeat_interval * DEAD_AFTER;
    let (tx, rx) = mpsc::channel(WRITE_QUEUE);
    let mut writer = tokio::spawn(write_loop(wr, rx, stall));
    let mut conn = Conn::new(&shared, host.clone(), peer_text);
    conn.on_register(register);
    let end = conn
        .serve(
            rd,
            buf,
            notes,
            links,
            &tx,
            &mut writer,
            &shutdown,
            &replaced,
        )
        .await;
    match end {
        Ok(()) => {
            // Shutdown: hand over what is queued, then let the writer close TLS.
            let grace = shared.options.shutdown_grace;
            let rest = conn.out.split().freeze();
            let flushed = tokio::time::timeout(grace, async {
                if !rest.is_empty() {
                    let _ = tx.send(rest).await;
                }
                drop(tx);
                (&mut writer).await
            })
            .await;
            if flushed.is_err() {
                writer.abort();
            }
            info!("relay connection closed for shutdown");
        }
        Err(e) => {
            writer.abort();
            match e {
                ConnError::Closed => info!("relay disconnected"),
                ConnError::Replaced => info!("relay connected again; this connection is replaced"),
                e => warn!(error = %crate::error_chain(&e), "relay connection lost"),
            }
        }
    }
    shared.hosts.detach(&host, id);
    shared.registry.unregister(&shared.db, &host, id).await;
}

/// Sends the preamble and reads the relay's preamble and `Register`.
async fn registration(stream: &mut Tls, buf: &mut BytesMut) -> Result<Register, ConnError> {
    stream.write_all(&PREAMBLE).await?;
    stream.flush().await?;
    let mut preamble = false;
    loop {
        if !preamble {
            preamble = uplink::check_preamble(buf)?;
        }
        if preamble {
            if let Some(msg) = uplink::decode::<RelayMsg>(buf)? {
                return match msg {
                    RelayMsg::Register(r) => Ok(r),
                    other => Err(ConnError::NotRegister(relay_msg_name(&other).into())),
                };
            }
        }
        buf.reserve(16 << 10);
        if stream.read_buf(buf).await? == 0 {
            return Err(ConnError::Closed);
        }
    }
}

/// Checks the version and that the certificate names the host; returns the host as the
/// certificate spells it, which is the host's identity from then on.
fn check_register(register: &Register, names: &[String]) -> Result<String, ConnError> {
    if register.version != UPLINK_VERSION {
        return Err(ConnError::Version(register.version));
    }
    names
        .iter()
        .find(|n| n.eq_ignore_ascii_case(&register.host))
        .cloned()
        .ok_or_else(|| ConnError::HostMismatch {
            host: register.host.clone(),
            names: names.to_vec(),
        })
}

fn registered(shared: &Shared) -> ControllerMsg {
    ControllerMsg::Registered(Registered {
        version: UPLINK_VERSION,
        heartbeat_interval_ms: millis(shared.options.heartbeat_interval),
    })
}

fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

fn relay_msg_name(msg: &RelayMsg) -> &'static str {
    match msg {
        RelayMsg::Register(_) => "Register",
        RelayMsg::GuestUp(_) => "GuestUp",
        RelayMsg::GuestDown { .. } => "GuestDown",
        RelayMsg::FromGuest { .. } => "FromGuest",
        RelayMsg::GuestReopened { .. } => "GuestReopened",
        RelayMsg::Ping { .. } => "Ping",
        RelayMsg::Pong { .. } => "Pong",
        RelayMsg::ChainStatus(_) => "ChainStatus",
    }
}

/// Writes chunks in order; a write without progress for `stall` ends the connection.
async fn write_loop(
    mut wr: WriteHalf<Tls>,
    mut rx: mpsc::Receiver<Bytes>,
    stall: Duration,
) -> io::Result<()> {
    let stalled = || io::Error::new(io::ErrorKind::TimedOut, "the relay stopped reading");
    while let Some(chunk) = rx.recv().await {
        tokio::time::timeout(stall, wr.write_all(&chunk))
            .await
            .map_err(|_| stalled())??;
        if rx.is_empty() {
            tokio::time::timeout(stall, wr.flush())
                .await
                .map_err(|_| stalled())??;
        }
    }
    // The loop dropped its sender: a clean close.
    let _ = tokio::time::timeout(Duration::from_secs(1), wr.shutdown()).await;
    Ok(())
}

/// A guest on this connection.
struct Guest {
    /// Listed by the relay (Register or GuestUp), as opposed to only sending frames.
    listed: bool,
    key: Option<InstanceKey>,
    /// When a missing key was last looked up.
    key_checked: Option<Instant>,
    session: Option<Session>,
    /// The agent sent its ConfigRequest in the current session: pushes may go out.
    live: bool,
    /// Version pushed per service in the current session.
    delivered: HashMap<String, i64>,
    /// (config id, version) the agent reported as applied per service in this session.
    reported: HashMap<String, (String, i64)>,
    /// Consecutive frames of the chunked message being received.
    chunk_run: u32,
}

impl Guest {
    fn new(listed: bool) -> Guest {
        Guest {
            listed,
            key: None,
            key_checked: None,
            session: None,
            live: false,
            delivered: HashMap::new(),
            reported: HashMap::new(),
            chunk_run: 0,
        }
    }

    /// Whether `version` (with `config_id`) of `service` should be pushed.
    fn needs(&self, service: &str, version: i64, config_id: &str) -> bool {
        self.live
            && self.delivered.get(service) != Some(&version)
            && self
                .reported
                .get(service)
                .is_none_or(|(id, v)| !(*v == version && id == config_id))
    }
}

struct Conn<'a> {
    shared: &'a Shared,
    host: String,
    peer: String,
    guests: HashMap<Uuid, Guest>,
    /// Pushes to evaluate, once each.
    queue: VecDeque<(Uuid, String)>,
    queued: HashSet<(Uuid, String)>,
    /// Encoded envelopes not yet handed to the writer.
    out: BytesMut,
    /// Right after a Register, GuestUps continue its list (it did not fit one envelope).
    in_register_burst: bool,
    last_rx: Instant,
}

impl<'a> Conn<'a> {
    fn new(shared: &'a Shared, host: String, peer: String) -> Conn<'a> {
        Conn {
            shared,
            host,
            peer,
            guests: HashMap::new(),
            queue: VecDeque::new(),
            queued: HashSet::new(),
            out: BytesMut::new(),
            in_register_burst: false,
            last_rx: Instant::now(),
        }
    }

    fn send(&mut self, msg: &ControllerMsg) {
        if let Err(e) = uplink::encode(msg, &mut self.out) {
            // Only a guest frame could be too large, and sealed frames never are.
            error!(error = %e, "cannot encode an envelope for the relay; dropped");
        }
    }

    /// The registration's guests: answer `Registered` and ask every listed guest to resync,
    /// since no session with it exists on this new connection.
    fn on_register(&mut self, register: Register) {
        self.send(&registered(self.shared));
        for g in register.guests.iter().take(MAX_GUESTS) {
            self.guests
                .entry(g.instance)
                .or_insert_with(|| Guest::new(true))
                .listed = true;
            self.send(&ControllerMsg::ResyncGuest {
                instance: g.instance,
            });
        }
        self.in_register_burst = true;
    }

    #[allow(clippy::too_many_arguments)]
    async fn serve(
        &mut self,
        mut rd: ReadHalf<Tls>,
        mut buf: BytesMut,
        mut notes: broadcast::Receiver<Uuid>,
        mut links: mpsc::Receiver<ControllerMsg>,
        tx: &mpsc::Sender<Bytes>,
        writer: &mut JoinHandle<io::Result<()>>,
        shutdown: &CancellationToken,
        replaced: &CancellationToken,
    ) -> Result<(), ConnError> {
        let heartbeat = self.shared.options.heartbeat_interval;
        let mut beat = tokio::time::interval(heartbeat);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut reconcile = tokio::time::interval(self.shared.options.reconcile_interval);
        reconcile.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Both fire at once; the registration just happened.
        beat.tick().await;
        reconcile.tick().await;
        self.process(&mut buf).await?;
        loop {
            self.fill().await?;
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(()),
                _ = replaced.cancelled() => return Err(ConnError::Replaced),
                ended = &mut *writer => {
                    return Err(match ended {
                        Ok(Ok(())) => ConnError::Closed,
                        Ok(Err(e)) => ConnError::Write(e),
                        Err(e) => ConnError::Write(io::Error::other(e)),
                    });
                }
                permit = tx.reserve(), if !self.out.is_empty() => {
                    let permit = permit.map_err(|_| ConnError::Closed)?;
                    let n = self.out.len().min(WRITE_CHUNK);
                    permit.send(self.out.split_to(n).freeze());
                }
                read = rd.read_buf(&mut buf), if self.out.len() < HIGH_WATER => {
                    if read? == 0 {
                        return Err(ConnError::Closed);
                    }
                    self.last_rx = Instant::now();
                    self.process(&mut buf).await?;
                    buf.reserve(16 << 10);
                }
                Some(msg) = links.recv(), if self.out.len() < HIGH_WATER => self.send(&msg),
                note = notes.recv() => match note {
                    Ok(instance) => self.on_change(instance).await?,
                    Err(broadcast::error::RecvError::Lagged(_)) => self.on_change_all().await?,
                    // `Shared` holds a sender for as long as this connection runs.
                    Err(broadcast::error::RecvError::Closed) => {}
                },
                _ = beat.tick() => {
                    // While output is above the high-water mark nothing is read, so silence
                    // proves nothing; the writer's stall limit covers a relay that stopped.
                    let silent = self.last_rx.elapsed();
                    if self.out.len() < HIGH_WATER && silent > heartbeat * DEAD_AFTER {
                        return Err(ConnError::Dead(silent));
                    }
                    let mut tx = self.shared.db.begin_write().await?;
                    store::host_seen(tx.conn(), &self.host).await?;
                    tx.commit().await?;
                }
                _ = reconcile.tick() => self.on_change_all().await?,
            }
        }
    }

    /// Handles every complete envelope in `buf`.
    async fn process(&mut self, buf: &mut BytesMut) -> Result<(), ConnError> {
        while let Some(msg) = uplink::decode::<RelayMsg>(buf)? {
            self.on_relay_msg(msg).await?;
        }
        Ok(())
    }

    async fn on_relay_msg(&mut self, msg: RelayMsg) -> Result<(), ConnError> {
        let burst = self.in_register_burst && matches!(msg, RelayMsg::GuestUp(_));
        self.in_register_burst = burst;
        match msg {
            RelayMsg::Register(r) => {
                // A second Register on a registered connection: a full new guest set.
                if !r.host.eq_ignore_ascii_case(&self.host) {
                    return Err(ConnError::HostMismatch {
                        host: r.host,
                        names: vec![self.host.clone()],
                    });
                }
                let guests: Vec<(String, String)> = r
                    .guests
                    .iter()
                    .take(MAX_GUESTS)
                    .map(|g| (g.instance.to_string(), g.name.clone()))
                    .collect();
                let mut tx = self.shared.db.begin_write().await?;
                store::register_host(tx.conn(), &self.host, &r.relay_version, &self.peer, &guests)
                    .await?;
                tx.commit().await?;
                for g in self.guests.values_mut() {
                    g.listed = false;
                }
                self.on_register(r);
                // Guests the new list does not name are gone.
                self.guests.retain(|_, g| g.listed);
            }
            RelayMsg::GuestUp(g) => {
                let known = self.guests.contains_key(&g.instance);
                if !known && self.guests.len() >= MAX_GUESTS {
                    warn!(vm.uuid = %g.instance, "more guests than one relay may serve; ignored");
                    return Ok(());
                }
                let mut tx = self.shared.db.begin_write().await?;
                store::guest_up(
                    tx.conn(),
                    &self.host,
                    &g.instance.to_string(),
                    &g.name,
                    &crate::api::timestamp(),
                )
                .await?;
                tx.commit().await?;
                let guest = self
                    .guests
                    .entry(g.instance)
                    .or_insert_with(|| Guest::new(true));
                guest.listed = true;
                let established = guest.session.as_ref().is_some_and(Session::is_established);
                if burst && !established {
                    self.send(&ControllerMsg::ResyncGuest {
                        instance: g.instance,
                    });
                }
                debug!(vm.uuid = %g.instance, name = %g.name, "guest up");
            }
            RelayMsg::GuestDown { instance } => {
                let mut tx = self.shared.db.begin_write().await?;
                store::guest_down(tx.conn(), &self.host, &instance.to_string()).await?;
                tx.commit().await?;
                self.guests.remove(&instance);
                debug!(vm.uuid = %instance, "guest down");
            }
            RelayMsg::FromGuest { instance, frame } => self.on_frame(instance, frame).await?,
            RelayMsg::GuestReopened { instance } => {
                // The guest starts a new session; nothing goes to the old one.
                if let Some(g) = self.guests.get_mut(&instance) {
                    g.live = false;
                }
            }
            RelayMsg::Ping { nonce } => self.send(&ControllerMsg::Pong { nonce }),
            RelayMsg::Pong { .. } => {}
            RelayMsg::ChainStatus(status) => self.shared.hosts.event(HostEvent::ChainStatus {
                host: self.host.clone(),
                status,
            }),
        }
        Ok(())
    }

    fn reject(&mut self, instance: Uuid, reason: String) {
        debug!(vm.uuid = %instance, %reason, "guest frame rejected");
        self.send(&ControllerMsg::FrameRejected { instance, reason });
    }

    /// The instance's key from the database (cached; a missing one is looked up again at
    /// most every [`KEY_RETRY`]).
    async fn key_for(&mut self, instance: Uuid) -> Result<Option<InstanceKey>, ConnError> {
        let Some(guest) = self.guests.get_mut(&instance) else {
            return Ok(None);
        };
        if let Some(k) = &guest.key {
            return Ok(Some(k.clone()));
        }
        if guest.key_checked.is_some_and(|t| t.elapsed() < KEY_RETRY) {
            return Ok(None);
        }
        guest.key_checked = Some(Instant::now());
        let mut conn = self.shared.db.pool().acquire().await?;
        let stored = store::instance_key(&mut conn, &instance.to_string()).await?;
        let key = match stored {
            Some((hex, _)) => match InstanceKey::from_hex(&hex) {
                Ok(k) => Some(k),
                Err(e) => {
                    error!(vm.uuid = %instance, error = %e, "stored instance key is unusable");
                    None
                }
            },
            None => None,
        };
        if let Some(g) = self.guests.get_mut(&instance) {
            g.key.clone_from(&key);
        }
        Ok(key)
    }

    async fn on_frame(&mut self, instance: Uuid, frame: Vec<u8>) -> Result<(), ConnError> {
        if !self.guests.contains_key(&instance) {
            if self.guests.len() >= MAX_GUESTS {
                self.reject(instance, "too many guests on this relay".into());
                return Ok(());
            }
            self.guests.insert(instance, Guest::new(false));
        }
        let Some(key) = self.key_for(instance).await? else {
            self.reject(instance, format!("unknown instance {instance} (no key)"));
            return Ok(());
        };
        let frame = match RawFrame::parse(Bytes::from(frame)) {
            Ok(f) => f,
            Err(e) => {
                self.reject(instance, e.to_string());
                return Ok(());
            }
        };
        let Some(guest) = self.guests.get_mut(&instance) else {
            return Ok(());
        };
        let h = *frame.header();
        if h.more() || h.cont() {
            guest.chunk_run = if h.cont() {
                guest.chunk_run.saturating_add(1)
            } else {
                1
            };
            if guest.chunk_run > MAX_GUEST_CHUNKS {
                self.reject(
                    instance,
                    format!("message longer than the {GUEST_MESSAGE_MAX} bytes a guest may send"),
                );
                return Ok(());
            }
        } else {
            guest.chunk_run = 0;
        }
        let session = guest
            .session
            .get_or_insert_with(|| Session::controller(&key));
        match session.open(&frame) {
            Ok(Some(Message::Hello(hello))) => self.on_hello(instance, hello),
            Ok(Some(msg)) => self.on_message(instance, msg).await?,
            Ok(None) => {}
            Err(e) => self.reject(instance, e.to_string()),
        }
        Ok(())
    }

    fn on_hello(&mut self, instance: Uuid, hello: Hello) {
        if !(hello.protocol_min..=hello.protocol_max).contains(&PROTOCOL_VERSION) {
            self.reject(
                instance,
                format!(
                    "the agent speaks protocol {}..={}, the controller {PROTOCOL_VERSION}",
                    hello.protocol_min, hello.protocol_max
                ),
            );
            return;
        }
        let epoch = match getrandom::u64() {
            Ok(e) => e,
            Err(e) => {
                error!(error = %e, "no randomness for a session epoch");
                self.reject(instance, "the controller cannot start a session".into());
                return;
            }
        };
        let welcome = Welcome {
            protocol: PROTOCOL_VERSION,
            capabilities: hello.capabilities & capability::ALL,
            session_epoch: epoch,
            max_message_len: GUEST_MESSAGE_MAX as u32,
            heartbeat_interval_ms: millis(self.shared.options.guest_heartbeat_interval),
        };
        let Some(guest) = self.guests.get_mut(&instance) else {
            return;
        };
        let Some(session) = guest.session.as_mut() else {
            return;
        };
        let mut sealed = BytesMut::new();
        if let Err(e) = session.accept(&welcome, &mut sealed) {
            self.reject(instance, e.to_string());
            return;
        }
        guest.live = false;
        guest.delivered.clear();
        guest.reported.clear();
        info!(
            vm.uuid = %instance,
            agent = %hello.agent_name,
            agent_version = %hello.agent_version,
            "guest session started"
        );
        self.emit(instance, sealed);
    }

    /// Sends sealed frames to the guest, one envelope each.
    fn emit(&mut self, instance: Uuid, mut sealed: BytesMut) {
        let mut decoder = FrameDecoder::new();
        while let Some(item) = decoder.decode(&mut sealed) {
            if let Decoded::Frame(f) = item {
                self.send(&ControllerMsg::ToGuest {
                    instance,
                    frame: f.as_bytes().to_vec(),
                });
            }
        }
    }

    /// Seals `msg` in the guest's session and sends it.
    fn seal(&mut self, instance: Uuid, msg: &Message) -> Result<(), relay_protocol::Error> {
        let Some(session) = self
            .guests
            .get_mut(&instance)
            .and_then(|g| g.session.as_mut())
        else {
            return Ok(());
        };
        let mut sealed = BytesMut::new();
        session.send(msg, &mut sealed)?;
        self.emit(instance, sealed);
        Ok(())
    }

    fn seal_or_log(&mut self, instance: Uuid, msg: &Message) {
        if let Err(e) = self.seal(instance, msg) {
            warn!(vm.uuid = %instance, error = %e, "cannot send to the guest");
        }
    }

    async fn on_message(&mut self, instance: Uuid, msg: Message) -> Result<(), ConnError> {
        let id = instance.to_string();
        match msg {
            Message::ConfigRequest(request) => {
                let Some(guest) = self.guests.get_mut(&instance) else {
                    return Ok(());
                };
                guest.live = true;
                for a in &request.applied {
                    let (Ok(version), service) = (i64::try_from(a.version), a.service.as_str())
                    else {
                        continue;
                    };
                    guest
                        .reported
                        .insert(service.to_owned(), (a.config_id.to_string(), version));
                }
                for a in request.applied {
                    let Ok(version) = i64::try_from(a.version) else {
                        continue;
                    };
                    let report = Report::Applied {
                        version,
                        config_id: a.config_id.to_string(),
                    };
                    store::report(&self.shared.db, &id, a.service.as_str(), &report).await?;
                }
                self.reconcile(instance).await?;
            }
            Message::Ack(ack) => {
                if ack.instance != instance {
                    warn!(
                        vm.uuid = %instance,
                        claimed = %ack.instance,
                        "guest acked for another instance; refused"
                    );
                    let err = Message::Error(ErrorMsg {
                        code: ErrorCode::NOT_PERMITTED,
                        message: format!(
                            "this session is instance {instance}; an Ack for {} is refused",
                            ack.instance
                        ),
                    });
                    self.seal_or_log(instance, &err);
                    return Ok(());
                }
                let Ok(version) = i64::try_from(ack.version) else {
                    return Ok(());
                };
                let config_id = ack.config_id.to_string();
                let service = ack.service.as_str();
                let report = match ack.outcome {
                    AckOutcome::Applied => {
                        if let Some(g) = self.guests.get_mut(&instance) {
                            g.reported
                                .insert(service.to_owned(), (config_id.clone(), version));
                        }
                        info!(vm.uuid = %instance, %service, version, "applied");
                        Report::Applied { version, config_id }
                    }
                    AckOutcome::Rejected { reason } => {
                        warn!(
                            vm.uuid = %instance,
                            %service,
                            version,
                            %reason,
                            "agent rejected the configuration"
                        );
                        Report::Rejected {
                            version,
                            config_id,
                            reason,
                        }
                    }
                };
                store::report(&self.shared.db, &id, service, &report).await?;
            }
            Message::Event(e) => {
                info!(
                    vm.uuid = %instance,
                    event = %e.name,
                    severity = ?e.severity,
                    message = %e.message,
                    "guest event"
                );
            }
            Message::Ping(p) => self.seal_or_log(instance, &Message::Pong(Pong { nonce: p.nonce })),
            Message::Pong(_) => {}
            Message::Error(e) => {
                warn!(
                    vm.uuid = %instance,
                    code = %e.code,
                    message = %e.message,
                    "the agent reported an error"
                );
            }
            other => {
                let err = Message::Error(ErrorMsg {
                    code: ErrorCode::UNSUPPORTED_MESSAGE,
                    message: format!("{} is not for the controller", other.kind()),
                });
                self.seal_or_log(instance, &err);
            }
        }
        Ok(())
    }

    /// Queues a push for every configuration of a live guest that it lacks.
    async fn reconcile(&mut self, instance: Uuid) -> Result<(), ConnError> {
        if !self.guests.get(&instance).is_some_and(|g| g.live) {
            return Ok(());
        }
        let mut conn = self.shared.db.pool().acquire().await?;
        let desired = store::desired_versions(&mut conn, &instance.to_string()).await?;
        drop(conn);
        let Some(guest) = self.guests.get(&instance) else {
            return Ok(());
        };
        for (service, version, config_id) in desired {
            if guest.needs(&service, version, &config_id)
                && self.queued.insert((instance, service.clone()))
            {
                self.queue.push_back((instance, service));
            }
        }
        Ok(())
    }

    /// Desired state of `instance` changed (or its key appeared).
    async fn on_change(&mut self, instance: Uuid) -> Result<(), ConnError> {
        let Some(guest) = self.guests.get_mut(&instance) else {
            return Ok(());
        };
        if guest.live {
            return self.reconcile(instance).await;
        }
        if guest.key.is_none() && guest.listed {
            // A key was perhaps just created: let the guest start a session now rather than at
            // its next retry.
            guest.key_checked = None;
            if self.key_for(instance).await?.is_some() {
                self.send(&ControllerMsg::ResyncGuest { instance });
            }
        }
        Ok(())
    }

    async fn on_change_all(&mut self) -> Result<(), ConnError> {
        let instances: Vec<Uuid> = self.guests.keys().copied().collect();
        for instance in instances {
            self.on_change(instance).await?;
        }
        Ok(())
    }

    /// Seals queued pushes while the output is below the low-water mark.
    async fn fill(&mut self) -> Result<(), ConnError> {
        while self.out.len() < LOW_WATER {
            let Some((instance, service)) = self.queue.pop_front() else {
                break;
            };
            self.queued.remove(&(instance, service.clone()));
            self.push(instance, &service).await?;
        }
        Ok(())
    }

    async fn push(&mut self, instance: Uuid, service: &str) -> Result<(), ConnError> {
        if !self.guests.get(&instance).is_some_and(|g| g.live) {
            return Ok(());
        }
        let id = instance.to_string();
        let mut conn = self.shared.db.pool().acquire().await?;
        let row = store::get_config(&mut conn, &id, service).await?;
        drop(conn);
        let Some(row) = row.filter(|r| !r.deleted) else {
            return Ok(());
        };
        let d = &row.delivery;
        if !self
            .guests
            .get(&instance)
            .is_some_and(|g| g.needs(service, d.version, &d.config_id))
        {
            return Ok(());
        }
        let built = (|| {
            Ok::<_, String>(ConfigPush {
                instance,
                service: ServiceName::new(service)?,
                config_id: Uuid::parse_str(&d.config_id).map_err(|e| e.to_string())?,
                version: u64::try_from(d.version).map_err(|e| e.to_string())?,
                payload: row.payload.bytes().map_err(|e| e.to_string())?,
            })
        })();
        let sent = match built {
            Ok(push) => self
                .seal(instance, &Message::ConfigPush(push))
                .map_err(|e| e.to_string()),
            Err(e) => Err(format!("stored configuration is unusable: {e}")),
        };
        let report = match sent {
            Ok(()) => {
                if let Some(g) = self.guests.get_mut(&instance) {
                    g.delivered.insert(service.to_owned(), d.version);
                }
                info!(vm.uuid = %instance, %service, version = d.version, "configuration pushed");
                Report::Delivered { version: d.version }
            }
            Err(reason) => {
                error!(vm.uuid = %instance, %service, version = d.version, %reason, "cannot push");
                Report::Rejected {
                    version: d.version,
                    config_id: d.config_id.clone(),
                    reason: format!("the controller could not send it: {reason}"),
                }
            }
        };
        store::report(&self.shared.db, &id, service, &report).await?;
        Ok(())
    }
}
