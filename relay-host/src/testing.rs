//! Test support (cargo feature `testing`), used by this crate's tests and the workspace's
//! end-to-end tests:
//!
//! - [`Pki`]: a throwaway CA issuing controller (server) and relay (client) certificates with
//!   `rcgen`, written as PEM files the relay's configuration points at;
//! - [`TestController`]: the controller's end of the uplink, a rustls mutual-TLS server that
//!   registers relays, holds a [`Session`] (role controller) per guest with that guest's key,
//!   answers Hellos and heartbeats, reports `FrameRejected` for frames that fail, and lets the
//!   test push messages and watch everything as [`ControllerEvent`]s;
//! - [`FakeGuest`]: a UNIX listener standing in for QEMU's channel socket, driven by hand
//!   ([`GuestConn`]) or as an automatic agent ([`FakeGuest::spawn_agent`]) that handshakes on
//!   every resync marker and acks every push, like the reference agent;
//! - [`TestRelay`] to run a relay on a channel-fed discovery, and [`metric`] to read a value
//!   from the text exposition.
//!
//! Every wait has a generous guard ([`WAIT`]) so that a broken test fails instead of hanging;
//! no test depends on it for timing.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use relay_protocol::message::capability;
use relay_protocol::uplink::{self, ControllerMsg, Registered, RelayMsg, PREAMBLE, UPLINK_VERSION};
use relay_protocol::{
    Ack, AckOutcome, ConfigPush, ConfigRequest, Decoded, FrameDecoder, Hello, InstanceKey, Limits,
    Message, Pong, RawFrame, ServiceName, Session, Uuid, Welcome,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::{Config, GuestChange, GuestChannel, Metrics, Relay};

/// Errors of test helpers.
pub type TestError = Box<dyn std::error::Error + Send + Sync>;
pub type Result<T> = std::result::Result<T, TestError>;

/// How long a helper waits before declaring the awaited thing lost.
pub const WAIT: Duration = Duration::from_secs(20);

fn lost(what: &str) -> TestError {
    format!("gave up waiting for {what} after {WAIT:?}").into()
}

async fn guard<T>(what: &str, fut: impl std::future::Future<Output = T>) -> Result<T> {
    tokio::time::timeout(WAIT, fut)
        .await
        .map_err(|_| lost(what))
}

/// Skips events until `f` accepts one; `stopped` is the error when the sender went away.
async fn wait_for_event<E, T>(
    events: &mut mpsc::UnboundedReceiver<E>,
    what: &str,
    stopped: &str,
    mut f: impl FnMut(&E) -> Option<T>,
) -> Result<T> {
    guard(what, async {
        loop {
            match events.recv().await {
                Some(ev) => {
                    if let Some(t) = f(&ev) {
                        return Ok(t);
                    }
                }
                None => return Err(TestError::from(stopped)),
            }
        }
    })
    .await?
}

// ---------------------------------------------------------------------------------------------
// PKI

/// A certificate and its key, PEM-encoded.
#[derive(Debug, Clone)]
pub struct Identity {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A throwaway certificate authority.
pub struct Pki {
    pub ca_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki").finish_non_exhaustive()
    }
}

impl Pki {
    /// A new CA named `name`.
    pub fn new(name: &str) -> Result<Pki> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        Ok(Pki {
            ca_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    fn leaf(
        &self,
        cn: &str,
        names: &[&str],
        eku: ExtendedKeyUsagePurpose,
        validity: Option<(Ymd, Ymd)>,
    ) -> Result<Identity> {
        let names: Vec<String> = names.iter().map(|s| (*s).to_owned()).collect();
        let mut params = CertificateParams::new(names)?;
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![eku];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        if let Some((from, to)) = validity {
            params.not_before = rcgen::date_time_ymd(from.0, from.1, from.2);
            params.not_after = rcgen::date_time_ymd(to.0, to.1, to.2);
        }
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Identity {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// A controller certificate for `names` (DNS names or IP addresses).
    pub fn server(&self, names: &[&str]) -> Result<Identity> {
        self.leaf(
            "controller",
            names,
            ExtendedKeyUsagePurpose::ServerAuth,
            None,
        )
    }

    /// A relay (client) certificate.
    pub fn client(&self, cn: &str) -> Result<Identity> {
        self.leaf(cn, &[], ExtendedKeyUsagePurpose::ClientAuth, None)
    }

    /// A relay certificate valid only between two dates (year, month, day), e.g. in the past.
    pub fn client_valid(&self, cn: &str, from: Ymd, to: Ymd) -> Result<Identity> {
        self.leaf(
            cn,
            &[],
            ExtendedKeyUsagePurpose::ClientAuth,
            Some((from, to)),
        )
    }

    /// A certificate for server authentication only, which a relay must not use as a client.
    pub fn server_only(&self, cn: &str) -> Result<Identity> {
        self.leaf(cn, &[], ExtendedKeyUsagePurpose::ServerAuth, None)
    }
}

/// A date as (year, month, day).
type Ymd = (i32, u8, u8);

/// PEM files of a relay's TLS material.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsFiles {
    /// Writes `ca_pem` and `client` into `dir` as `ca.pem`, `relay.pem`, `relay.key`.
    pub fn write(dir: &Path, ca_pem: &str, client: &Identity) -> Result<TlsFiles> {
        let files = TlsFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join("relay.pem"),
            key: dir.join("relay.key"),
        };
        std::fs::write(&files.ca, ca_pem)?;
        std::fs::write(&files.cert, &client.cert_pem)?;
        std::fs::write(&files.key, &client.key_pem)?;
        Ok(files)
    }

    /// A relay configuration for a controller at `addr` (certificate name `localhost`), with
    /// the metrics endpoint off and short timings for tests.
    pub fn config(&self, addr: SocketAddr) -> Config {
        let mut config = Config::new(addr.to_string(), &self.ca, &self.cert, &self.key);
        config.server_name = "localhost".into();
        config.host = "test-host".into();
        config.shutdown_grace = Duration::from_secs(2);
        config
    }
}

/// The rustls server configuration of a controller: `server` as its identity, clients
/// verified against `client_ca_pem`. TLS 1.3 only, like the relay.
pub fn server_tls(client_ca_pem: &str, server: &Identity) -> Result<Arc<ServerConfig>> {
    let provider = crate::tls::provider();
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(client_ca_pem.as_bytes()) {
        roots.add(cert?)?;
    }
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build()?;
    let chain = CertificateDer::pem_slice_iter(server.cert_pem.as_bytes())
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(server.key_pem.as_bytes())?;
    let config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    Ok(Arc::new(config))
}

/// A deterministic per-guest key for tests.
pub fn test_key(n: u8) -> InstanceKey {
    // 32 bytes always make a key.
    InstanceKey::from_bytes(&[n; relay_protocol::KEY_LEN]).unwrap_or_else(|_| unreachable!())
}

/// A ConfigPush of `payload` for `instance`.
pub fn push(instance: Uuid, service: &str, version: u64, payload: Vec<u8>) -> Result<Message> {
    Ok(Message::ConfigPush(ConfigPush {
        instance,
        service: ServiceName::new(service)?,
        config_id: Uuid::from_u128(u128::from(version)),
        version,
        payload,
    }))
}

// ---------------------------------------------------------------------------------------------
// Test controller

/// What the test controller saw.
#[derive(Debug, Clone, PartialEq)]
pub enum ControllerEvent {
    /// A relay completed the mutual-TLS handshake.
    Accepted,
    /// A TLS handshake failed: the client's certificate was refused, or the client refused
    /// ours (then the reason names the alert it sent).
    HandshakeFailed(String),
    /// An uplink message other than guest frames and heartbeats (Register, GuestUp,
    /// GuestDown, GuestReopened).
    Relay(RelayMsg),
    /// A guest opened a session; it was answered with a Welcome.
    Hello { instance: Uuid, hello: Hello },
    /// A verified message from a guest (heartbeats are answered, not reported).
    Message { instance: Uuid, msg: Message },
    /// A guest frame failed; `FrameRejected` went back to the relay with `reason`.
    Rejected { instance: Uuid, reason: String },
    /// The relay connection ended.
    Disconnected(String),
}

/// Knobs of the test controller.
#[derive(Debug, Clone)]
pub struct ControllerOptions {
    /// Announced in `Registered`.
    pub heartbeat_interval_ms: u32,
    /// On `Register`, ask the relay to resync every listed guest without a session here (what
    /// a controller that lost its sessions, e.g. by restarting, does). Off by default: a guest
    /// whose channel the relay opens at the same moment would handshake twice, and a test
    /// that pushes after the first Welcome would race the second.
    pub resync_unknown_guests: bool,
    /// Answer the relay's heartbeats; off plays a controller that hangs after registering.
    pub answer_pings: bool,
}

impl Default for ControllerOptions {
    fn default() -> Self {
        ControllerOptions {
            heartbeat_interval_ms: 60_000,
            resync_unknown_guests: false,
            answer_pings: true,
        }
    }
}

enum Command {
    Push {
        instance: Uuid,
        msg: Message,
        reply: oneshot::Sender<Result<usize>>,
    },
    Raw(ControllerMsg),
}

/// The controller end of the uplink, running on its own task.
#[derive(Debug)]
pub struct TestController {
    addr: SocketAddr,
    events: mpsc::UnboundedReceiver<ControllerEvent>,
    commands: mpsc::UnboundedSender<Command>,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Command")
    }
}

impl TestController {
    /// Listens on an ephemeral loopback port.
    pub async fn start(
        tls: Arc<ServerConfig>,
        keys: HashMap<Uuid, InstanceKey>,
        options: ControllerOptions,
    ) -> Result<TestController> {
        Self::start_on("127.0.0.1:0".parse()?, tls, keys, options).await
    }

    /// Listens on `addr` (e.g. the address of a controller that was stopped: a restart).
    pub async fn start_on(
        addr: SocketAddr,
        tls: Arc<ServerConfig>,
        keys: HashMap<Uuid, InstanceKey>,
        options: ControllerOptions,
    ) -> Result<TestController> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (events_tx, events) = mpsc::unbounded_channel();
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let state = ControllerState {
            acceptor: TlsAcceptor::from(tls),
            keys,
            options,
            sessions: HashMap::new(),
            events: events_tx,
            conn: None,
            next_epoch: getrandom::u64().unwrap_or(0x7e57) | 1,
        };
        let task = tokio::spawn(state.run(listener, commands_rx, stop.clone()));
        Ok(TestController {
            addr,
            events,
            commands,
            stop,
            task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops listening and drops the relay connection (without a TLS close); returns the
    /// address, free for [`TestController::start_on`].
    pub async fn stop(self) -> SocketAddr {
        self.stop.cancel();
        let _ = self.task.await;
        self.addr
    }

    /// The next event.
    pub async fn next_event(&mut self) -> Result<ControllerEvent> {
        guard("a controller event", self.events.recv())
            .await?
            .ok_or_else(|| "the test controller stopped".into())
    }

    /// Skips events until `f` accepts one.
    pub async fn wait_for<T>(
        &mut self,
        what: &str,
        f: impl FnMut(&ControllerEvent) -> Option<T>,
    ) -> Result<T> {
        wait_for_event(&mut self.events, what, "the test controller stopped", f).await
    }

    /// Waits for the next verified message from `instance` (other events are skipped).
    pub async fn message_from(&mut self, instance: Uuid) -> Result<Message> {
        self.wait_for("a message from the guest", |ev| match ev {
            ControllerEvent::Message { instance: i, msg } if *i == instance => Some(msg.clone()),
            _ => None,
        })
        .await
    }

    /// Waits for `instance`'s Hello (its session is then established here).
    pub async fn hello_from(&mut self, instance: Uuid) -> Result<Hello> {
        self.wait_for("the guest's Hello", |ev| match ev {
            ControllerEvent::Hello { instance: i, hello } if *i == instance => Some(hello.clone()),
            _ => None,
        })
        .await
    }

    /// Seals `msg` in `instance`'s session and sends it as ToGuest frames; returns how many.
    pub async fn push(&self, instance: Uuid, msg: Message) -> Result<usize> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command::Push {
                instance,
                msg,
                reply,
            })
            .map_err(|_| "the test controller stopped")?;
        guard("the push to be sent", rx)
            .await?
            .map_err(|_| "the test controller stopped")?
    }

    /// Sends any envelope to the relay.
    pub fn send_raw(&self, msg: ControllerMsg) -> Result<()> {
        self.commands
            .send(Command::Raw(msg))
            .map_err(|_| "the test controller stopped".into())
    }
}

type ServerTls = TlsStream<tokio::net::TcpStream>;

struct Conn {
    stream: ServerTls,
    buf: BytesMut,
    preamble: bool,
}

struct ControllerState {
    acceptor: TlsAcceptor,
    keys: HashMap<Uuid, InstanceKey>,
    options: ControllerOptions,
    sessions: HashMap<Uuid, Session>,
    events: mpsc::UnboundedSender<ControllerEvent>,
    conn: Option<Conn>,
    next_epoch: u64,
}

async fn read_conn(conn: &mut Option<Conn>) -> std::io::Result<usize> {
    match conn {
        Some(c) => c.stream.read_buf(&mut c.buf).await,
        None => std::future::pending().await,
    }
}

impl ControllerState {
    fn event(&self, ev: ControllerEvent) {
        let _ = self.events.send(ev);
    }

    async fn run(
        mut self,
        listener: TcpListener,
        mut commands: mpsc::UnboundedReceiver<Command>,
        stop: CancellationToken,
    ) {
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                accepted = listener.accept() => {
                    let Ok((tcp, _)) = accepted else { continue };
                    let _ = tcp.set_nodelay(true);
                    match tokio::time::timeout(WAIT, self.acceptor.accept(tcp)).await {
                        Ok(Ok(mut stream)) => {
                            if stream.write_all(&PREAMBLE).await.is_ok() {
                                // A relay reconnecting replaces its previous connection.
                                self.conn = Some(Conn { stream, buf: BytesMut::new(), preamble: false });
                                self.event(ControllerEvent::Accepted);
                            }
                        }
                        Ok(Err(e)) => self.event(ControllerEvent::HandshakeFailed(e.to_string())),
                        Err(_) => self.event(ControllerEvent::HandshakeFailed("timeout".into())),
                    }
                }
                cmd = commands.recv() => match cmd {
                    Some(Command::Push { instance, msg, reply }) => {
                        let r = self.push(instance, &msg).await;
                        let _ = reply.send(r);
                    }
                    Some(Command::Raw(msg)) => { let _ = self.send(&[msg]).await; }
                    None => break,
                },
                read = read_conn(&mut self.conn) => match read {
                    Ok(0) => self.disconnect("closed by the relay".into()),
                    Ok(_) => {
                        if let Err(e) = self.on_bytes().await {
                            self.disconnect(e.to_string());
                        }
                    }
                    Err(e) => self.disconnect(e.to_string()),
                },
            }
        }
    }

    fn disconnect(&mut self, why: String) {
        self.conn = None;
        self.event(ControllerEvent::Disconnected(why));
    }

    async fn send(&mut self, msgs: &[ControllerMsg]) -> Result<()> {
        let Some(conn) = &mut self.conn else {
            return Err("no relay connected".into());
        };
        let mut out = BytesMut::new();
        for m in msgs {
            uplink::encode(m, &mut out)?;
        }
        conn.stream.write_all(&out).await?;
        conn.stream.flush().await?;
        Ok(())
    }

    async fn push(&mut self, instance: Uuid, msg: &Message) -> Result<usize> {
        let session = self
            .sessions
            .get_mut(&instance)
            .ok_or("no session with that guest")?;
        let mut out = BytesMut::new();
        session.send(msg, &mut out)?;
        let frames = split_frames(out);
        let n = frames.len();
        let msgs: Vec<ControllerMsg> = frames
            .into_iter()
            .map(|frame| ControllerMsg::ToGuest { instance, frame })
            .collect();
        for chunk in msgs.chunks(16) {
            self.send(chunk).await?;
        }
        Ok(n)
    }

    async fn on_bytes(&mut self) -> Result<()> {
        loop {
            let Some(conn) = &mut self.conn else {
                return Ok(());
            };
            if !conn.preamble {
                conn.preamble = uplink::check_preamble(&mut conn.buf)?;
                if !conn.preamble {
                    return Ok(());
                }
            }
            let Some(msg) = uplink::decode::<RelayMsg>(&mut conn.buf)? else {
                return Ok(());
            };
            match msg {
                RelayMsg::Register(r) => {
                    let mut reply = vec![ControllerMsg::Registered(Registered {
                        version: UPLINK_VERSION,
                        heartbeat_interval_ms: self.options.heartbeat_interval_ms,
                    })];
                    if self.options.resync_unknown_guests {
                        for g in &r.guests {
                            let established = self
                                .sessions
                                .get(&g.instance)
                                .is_some_and(Session::is_established);
                            if !established {
                                reply.push(ControllerMsg::ResyncGuest {
                                    instance: g.instance,
                                });
                            }
                        }
                    }
                    self.send(&reply).await?;
                    self.event(ControllerEvent::Relay(RelayMsg::Register(r)));
                }
                RelayMsg::Ping { nonce } => {
                    if self.options.answer_pings {
                        self.send(&[ControllerMsg::Pong { nonce }]).await?
                    }
                }
                RelayMsg::Pong { .. } => {}
                RelayMsg::FromGuest { instance, frame } => {
                    self.on_guest_frame(instance, frame).await?
                }
                other => self.event(ControllerEvent::Relay(other)),
            }
        }
    }

    async fn reject(&mut self, instance: Uuid, reason: String) -> Result<()> {
        self.send(&[ControllerMsg::FrameRejected {
            instance,
            reason: reason.clone(),
        }])
        .await?;
        self.event(ControllerEvent::Rejected { instance, reason });
        Ok(())
    }

    async fn on_guest_frame(&mut self, instance: Uuid, frame: Vec<u8>) -> Result<()> {
        let Some(key) = self.keys.get(&instance) else {
            return self.reject(instance, "unknown instance".into()).await;
        };
        let frame = match RawFrame::parse(Bytes::from(frame)) {
            Ok(f) => f,
            Err(e) => return self.reject(instance, e.to_string()).await,
        };
        let session = self
            .sessions
            .entry(instance)
            .or_insert_with(|| Session::controller(key));
        match session.open(&frame) {
            Ok(Some(Message::Hello(hello))) => {
                self.next_epoch = self.next_epoch.wrapping_add(2);
                let welcome = Welcome {
                    protocol: 1,
                    capabilities: hello.capabilities & capability::ALL,
                    session_epoch: self.next_epoch,
                    max_message_len: u32::try_from(Limits::default().max_message_len)
                        .unwrap_or(u32::MAX),
                    heartbeat_interval_ms: 60_000,
                };
                let mut out = BytesMut::new();
                session.accept(&welcome, &mut out)?;
                let msgs: Vec<_> = split_frames(out)
                    .into_iter()
                    .map(|frame| ControllerMsg::ToGuest { instance, frame })
                    .collect();
                self.send(&msgs).await?;
                self.event(ControllerEvent::Hello { instance, hello });
            }
            Ok(Some(Message::Ping(p))) => {
                let mut out = BytesMut::new();
                session.send(&Message::Pong(Pong { nonce: p.nonce }), &mut out)?;
                let msgs: Vec<_> = split_frames(out)
                    .into_iter()
                    .map(|frame| ControllerMsg::ToGuest { instance, frame })
                    .collect();
                self.send(&msgs).await?;
            }
            Ok(Some(msg)) => self.event(ControllerEvent::Message { instance, msg }),
            Ok(None) => {}
            Err(e) => return self.reject(instance, e.to_string()).await,
        }
        Ok(())
    }
}

/// Splits sealed output into its frames.
fn split_frames(mut out: BytesMut) -> Vec<Vec<u8>> {
    let mut decoder = FrameDecoder::new();
    let mut frames = Vec::new();
    while let Some(item) = decoder.decode(&mut out) {
        if let Decoded::Frame(f) = item {
            frames.push(f.as_bytes().to_vec());
        }
    }
    frames
}

// ---------------------------------------------------------------------------------------------
// Fake guests

/// A guest's channel socket: what QEMU would listen on, one client at a time.
#[derive(Debug)]
pub struct FakeGuest {
    pub instance: Uuid,
    pub socket: PathBuf,
    key: InstanceKey,
    listener: UnixListener,
}

impl FakeGuest {
    /// Listens on `<dir>/<instance>.sock`.
    pub fn bind(dir: &Path, instance: Uuid, key: InstanceKey) -> Result<FakeGuest> {
        let socket = dir.join(format!("{instance}.sock"));
        let listener = UnixListener::bind(&socket)?;
        Ok(FakeGuest {
            instance,
            socket,
            key,
            listener,
        })
    }

    /// What discovery would report for this guest.
    pub fn channel(&self) -> GuestChannel {
        GuestChannel {
            uuid: self.instance,
            name: format!("vnf-{}", &self.instance.simple().to_string()[..8]),
            socket: self.socket.clone(),
        }
    }

    /// Waits for the relay to connect.
    pub async fn accept(&self) -> Result<GuestConn> {
        let (stream, _) = guard("the relay to connect", self.listener.accept()).await??;
        Ok(GuestConn::new(stream, self.instance, &self.key))
    }

    /// Runs an agent on this socket: it accepts the relay (again after every disconnect),
    /// starts a session on every resync marker, answers heartbeats and acks every push as
    /// applied.
    pub fn spawn_agent(self) -> Agent {
        let (tx, events) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = self.listener.accept().await else {
                    return;
                };
                let _ = tx.send(AgentEvent::Connected);
                let mut conn = GuestConn::new(stream, self.instance, &self.key);
                let end = conn.agent(&tx).await;
                let _ = tx.send(AgentEvent::Closed(end));
            }
        });
        Agent { events, task }
    }
}

/// What an agent did.
#[derive(Debug, Clone, PartialEq)]
pub enum AgentEvent {
    /// The relay connected to the channel.
    Connected,
    /// A session was established (after a Welcome).
    Established,
    /// A push arrived and was acked as applied.
    Pushed(ConfigPush),
    /// The connection ended, with the reason; `discarded` bytes were not part of a frame.
    Closed(String),
}

/// A running fake agent; stops when dropped.
#[derive(Debug)]
pub struct Agent {
    events: mpsc::UnboundedReceiver<AgentEvent>,
    task: JoinHandle<()>,
}

impl Agent {
    pub async fn next_event(&mut self) -> Result<AgentEvent> {
        guard("an agent event", self.events.recv())
            .await?
            .ok_or_else(|| "the agent stopped".into())
    }

    pub async fn wait_for<T>(
        &mut self,
        what: &str,
        f: impl FnMut(&AgentEvent) -> Option<T>,
    ) -> Result<T> {
        wait_for_event(&mut self.events, what, "the agent stopped", f).await
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What a guest connection read.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    /// The relay's resync marker: start a new session.
    Resync,
    Message(Message),
    /// A frame the guest's session rejected.
    Rejected(relay_protocol::Error),
}

/// The guest's end of one relay connection, driven by the test.
#[derive(Debug)]
pub struct GuestConn {
    pub instance: Uuid,
    stream: UnixStream,
    session: Session,
    decoder: FrameDecoder,
    buf: BytesMut,
    /// Bytes the guest's decoder skipped (stale, garbage or a cut-off frame).
    pub discarded: usize,
}

impl GuestConn {
    fn new(stream: UnixStream, instance: Uuid, key: &InstanceKey) -> GuestConn {
        GuestConn {
            instance,
            stream,
            session: Session::guest(key),
            decoder: FrameDecoder::new(),
            buf: BytesMut::new(),
            discarded: 0,
        }
    }

    /// The next resync marker or message; `None` at end of stream.
    pub async fn next(&mut self) -> Result<Option<Incoming>> {
        guard("a frame from the relay", self.next_unguarded()).await?
    }

    async fn next_unguarded(&mut self) -> Result<Option<Incoming>> {
        loop {
            while let Some(item) = self.decoder.decode(&mut self.buf) {
                match item {
                    Decoded::Resync => return Ok(Some(Incoming::Resync)),
                    Decoded::Discarded { bytes, .. } => self.discarded += bytes,
                    Decoded::Frame(f) => match self.session.open(&f) {
                        Ok(Some(msg)) => return Ok(Some(Incoming::Message(msg))),
                        Ok(None) => {}
                        Err(e) => return Ok(Some(Incoming::Rejected(e))),
                    },
                }
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Ok(None);
            }
        }
    }

    /// Waits for the relay's resync marker.
    pub async fn wait_resync(&mut self) -> Result<()> {
        loop {
            match self.next().await? {
                Some(Incoming::Resync) => return Ok(()),
                Some(_) => {}
                None => return Err("the relay closed the channel".into()),
            }
        }
    }

    /// Starts a session (resync marker and Hello) and waits for the Welcome.
    pub async fn hello(&mut self) -> Result<Welcome> {
        let mut out = BytesMut::new();
        let nonce = getrandom::u64().map_err(|e| e.to_string())?;
        self.session.begin(nonce, &test_hello(), &mut out)?;
        self.stream.write_all(&out).await?;
        loop {
            match self.next().await? {
                Some(Incoming::Message(Message::Welcome(w))) => return Ok(w),
                Some(_) => {}
                None => return Err("the relay closed the channel".into()),
            }
        }
    }

    /// Waits for the relay's marker, then handshakes.
    pub async fn open(&mut self) -> Result<Welcome> {
        self.wait_resync().await?;
        self.hello().await
    }

    /// Seals `msg` without writing it (for replays and tampering).
    pub fn seal(&mut self, msg: &Message) -> Result<BytesMut> {
        let mut out = BytesMut::new();
        self.session.send(msg, &mut out)?;
        Ok(out)
    }

    /// Seals and writes `msg`; returns the bytes written.
    pub async fn send(&mut self, msg: &Message) -> Result<BytesMut> {
        let out = self.seal(msg)?;
        self.stream.write_all(&out).await?;
        Ok(out)
    }

    /// Writes bytes as they are.
    pub async fn write_raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.stream.write_all(bytes).await?;
        Ok(())
    }

    /// The next message other than heartbeats (which are answered).
    pub async fn recv(&mut self) -> Result<Message> {
        loop {
            match self.next().await? {
                Some(Incoming::Message(Message::Ping(p))) => {
                    self.send(&Message::Pong(Pong { nonce: p.nonce })).await?;
                }
                Some(Incoming::Message(msg)) => return Ok(msg),
                Some(_) => {}
                None => return Err("the relay closed the channel".into()),
            }
        }
    }

    /// Waits until the relay closes the channel.
    pub async fn closed(&mut self) -> Result<()> {
        while self.next().await?.is_some() {}
        Ok(())
    }

    /// The agent loop of [`FakeGuest::spawn_agent`]; returns why it ended.
    async fn agent(&mut self, tx: &mpsc::UnboundedSender<AgentEvent>) -> String {
        loop {
            let item = match self.next_unguarded().await {
                Ok(Some(item)) => item,
                Ok(None) => return format!("end of stream ({} bytes discarded)", self.discarded),
                Err(e) => return e.to_string(),
            };
            let result = match item {
                Incoming::Resync => {
                    let mut out = BytesMut::new();
                    let nonce = getrandom::u64().unwrap_or(1);
                    match self.session.begin(nonce, &test_hello(), &mut out) {
                        Ok(()) => self.stream.write_all(&out).await.map_err(TestError::from),
                        Err(e) => Err(e.into()),
                    }
                }
                Incoming::Message(Message::Welcome(_)) => {
                    let _ = tx.send(AgentEvent::Established);
                    self.send(&Message::ConfigRequest(ConfigRequest { applied: vec![] }))
                        .await
                        .map(drop)
                }
                Incoming::Message(Message::Ping(p)) => self
                    .send(&Message::Pong(Pong { nonce: p.nonce }))
                    .await
                    .map(drop),
                Incoming::Message(Message::ConfigPush(p)) => {
                    let ack = Message::Ack(Ack {
                        instance: p.instance,
                        service: p.service.clone(),
                        config_id: p.config_id,
                        version: p.version,
                        outcome: AckOutcome::Applied,
                    });
                    let _ = tx.send(AgentEvent::Pushed(p));
                    self.send(&ack).await.map(drop)
                }
                Incoming::Message(_) | Incoming::Rejected(_) => Ok(()),
            };
            if let Err(e) = result {
                return e.to_string();
            }
        }
    }

    /// The socket, e.g. to hold it open without ever reading.
    pub fn into_stream(self) -> UnixStream {
        self.stream
    }
}

fn test_hello() -> Hello {
    Hello {
        protocol_min: 1,
        protocol_max: 1,
        capabilities: capability::ALL,
        agent_name: "fake-guest".into(),
        agent_version: "0".into(),
        services: vec![],
    }
}

// ---------------------------------------------------------------------------------------------
// Relay under test

/// A relay running on its own task, its discovery fed by the test.
#[derive(Debug)]
pub struct TestRelay {
    pub discovery: mpsc::Sender<GuestChange>,
    pub metrics: Metrics,
    pub shutdown: CancellationToken,
    /// The metrics endpoint, when started with one.
    pub metrics_addr: Option<SocketAddr>,
    task: JoinHandle<std::result::Result<(), crate::Error>>,
}

impl TestRelay {
    /// Starts a relay on `config`; `metrics_endpoint` binds one on an ephemeral port.
    pub async fn start(config: Config, metrics_endpoint: bool) -> Result<TestRelay> {
        let relay = Relay::new(config)?;
        let metrics = relay.metrics().clone();
        let (discovery, rx) = mpsc::channel(64);
        let shutdown = CancellationToken::new();
        let (listener, metrics_addr) = if metrics_endpoint {
            let l = TcpListener::bind("127.0.0.1:0").await?;
            let addr = l.local_addr()?;
            (Some(l), Some(addr))
        } else {
            (None, None)
        };
        let task = tokio::spawn(relay.serve(listener, rx, shutdown.clone()));
        Ok(TestRelay {
            discovery,
            metrics,
            shutdown,
            metrics_addr,
            task,
        })
    }

    pub async fn up(&self, channel: GuestChannel) -> Result<()> {
        self.discovery.send(GuestChange::Up(channel)).await?;
        Ok(())
    }

    pub async fn down(&self, instance: Uuid) -> Result<()> {
        self.discovery.send(GuestChange::Down(instance)).await?;
        Ok(())
    }

    /// A metric's current value (see [`metric`]).
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        metric(&self.metrics.encode(), name, labels)
    }

    /// Cancels the shutdown token and waits for the relay to return.
    pub async fn stop(self) -> Result<()> {
        self.shutdown.cancel();
        guard("the relay to stop", self.task).await???;
        Ok(())
    }
}

/// The value of the sample `name{labels}` in a text exposition (labels in any order, all of
/// them given).
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines().find_map(|line| {
        let (series, value) = line.rsplit_once(' ')?;
        let (n, rest) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.strip_suffix('}')?),
            None => (series, ""),
        };
        if n != name {
            return None;
        }
        let mut got: Vec<(&str, &str)> = rest
            .split(',')
            .filter(|s| !s.is_empty())
            .filter_map(|kv| {
                let (k, v) = kv.split_once('=')?;
                Some((k, v.trim_matches('"')))
            })
            .collect();
        let mut want = labels.to_vec();
        got.sort_unstable();
        want.sort_unstable();
        (got == want).then(|| value.parse().ok()).flatten()
    })
}
