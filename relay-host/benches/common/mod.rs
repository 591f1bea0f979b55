//! Shared by the relay benchmarks (`relay.rs`, `soak.rs`): the pieces around a relay under
//! measurement.
//!
//! The relay under test runs in a child process (this same binary, re-executed with
//! `BENCH_CHILD=relay`), as it does in production, so that its memory is measured on its own
//! and its threads do not share a runtime with the load generator. Discovery is fed through the
//! child's stdin, one `<uuid> <socket>` line per guest (the libvirt side is not what is measured
//! here). The baseline forwarder (`BENCH_CHILD=forward`) is the same kind of process with the
//! same TLS client configuration: it connects to the controller and to one guest socket and
//! copies bytes both ways, with no framing, routing or queues.
//!
//! The controller end ([`Ctl`]) is written for measurement: the measuring task owns the TLS
//! stream, seals and opens guest frames itself with one [`Session`] per guest, and answers the
//! relay's Register, heartbeats and the guests' Hellos inline, so there is no channel hop on
//! the controller side. The guests are the crate's fake agents (`FakeGuest::spawn_agent`),
//! which answer Ping with Pong and ConfigPush with Ack, each with its own key.

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use relay_host::testing::{self, Agent, FakeGuest, Pki, TlsFiles};
use relay_host::{GuestChange, GuestChannel};
use relay_protocol::message::capability;
use relay_protocol::uplink::{self, ControllerMsg, Registered, RelayMsg, PREAMBLE, UPLINK_VERSION};
use relay_protocol::{
    Decoded, FrameDecoder, InstanceKey, Limits, Message, RawFrame, Session, Uuid, Welcome,
    RESYNC_MARKER,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

pub type Error = Box<dyn std::error::Error + Send + Sync>;
pub type Result<T> = std::result::Result<T, Error>;

/// Guard on every wait, so that a broken run fails instead of hanging.
pub const WAIT: Duration = Duration::from_secs(60);

pub async fn guard<T>(what: &str, fut: impl std::future::Future<Output = T>) -> Result<T> {
    tokio::time::timeout(WAIT, fut)
        .await
        .map_err(|_| format!("gave up waiting for {what} after {WAIT:?}").into())
}

/// Guest `i`'s instance UUID and its own key (derived from the index, distinct per guest).
pub fn guest_id(i: usize) -> (Uuid, InstanceKey) {
    let uuid = Uuid::from_u128(0x5fc0_be0c_0000_4000_8000_0000_0000_0000 | i as u128);
    let mut key = [0u8; relay_protocol::KEY_LEN];
    key[..16].copy_from_slice(uuid.as_bytes());
    key[16..].copy_from_slice(&(!(i as u128)).to_le_bytes());
    // 32 bytes always make a key.
    let key = InstanceKey::from_bytes(&key).unwrap_or_else(|_| unreachable!());
    (uuid, key)
}

/// The throwaway PKI, the relay's TLS files and the controller's TLS acceptor.
pub struct Tls {
    pub dir: tempfile::TempDir,
    pub files: TlsFiles,
    pub acceptor: TlsAcceptor,
}

impl Tls {
    pub fn new() -> Result<Tls> {
        let dir = tempfile::tempdir()?;
        let pki = Pki::new("bench CA")?;
        let files = TlsFiles::write(dir.path(), &pki.ca_pem, &pki.client("relay")?)?;
        let server = testing::server_tls(&pki.ca_pem, &pki.server(&["localhost"])?)?;
        Ok(Tls {
            dir,
            files,
            acceptor: TlsAcceptor::from(server),
        })
    }
}

/// `n` fake guests with running agents, listening in `dir`.
pub fn spawn_guests(
    dir: &Path,
    range: std::ops::Range<usize>,
) -> Result<Vec<(GuestChannel, Agent)>> {
    range
        .map(|i| {
            let (uuid, key) = guest_id(i);
            let guest = FakeGuest::bind(dir, uuid, key)?;
            let channel = guest.channel();
            Ok((channel, guest.spawn_agent()))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Child processes

/// A relay or forwarder process started by the benchmark; killed when dropped.
pub struct ChildProc {
    child: Child,
    stdin: Option<ChildStdin>,
}

impl ChildProc {
    /// Starts this binary as a relay for the controller at `controller`, with at most
    /// `frames_per_sec` frames per second from each guest (burst twice that).
    pub fn relay(
        files: &TlsFiles,
        controller: std::net::SocketAddr,
        frames_per_sec: u32,
    ) -> Result<ChildProc> {
        Self::spawn(
            files,
            controller,
            &[
                ("BENCH_CHILD", "relay".into()),
                ("BENCH_RATE", frames_per_sec.to_string()),
            ],
        )
    }

    /// Starts this binary as the baseline forwarder between the controller and `socket`.
    pub fn forwarder(
        files: &TlsFiles,
        controller: std::net::SocketAddr,
        socket: &Path,
    ) -> Result<ChildProc> {
        Self::spawn(
            files,
            controller,
            &[
                ("BENCH_CHILD", "forward".into()),
                ("BENCH_SOCKET", socket.display().to_string()),
            ],
        )
    }

    fn spawn(
        files: &TlsFiles,
        controller: std::net::SocketAddr,
        env: &[(&str, String)],
    ) -> Result<ChildProc> {
        let mut cmd = Command::new(std::env::current_exe()?);
        cmd.env("BENCH_CA", &files.ca)
            .env("BENCH_CERT", &files.cert)
            .env("BENCH_KEY", &files.key)
            .env("BENCH_CONTROLLER", controller.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn()?;
        let stdin = child.stdin.take();
        Ok(ChildProc { child, stdin })
    }

    /// Tells the relay about guests (its discovery).
    pub fn up(&mut self, channels: &[GuestChannel]) -> Result<()> {
        let stdin = self.stdin.as_mut().ok_or("stdin closed")?;
        let mut text = String::new();
        for c in channels {
            text.push_str(&format!("{} {}\n", c.uuid, c.socket.display()));
        }
        stdin.write_all(text.as_bytes())?;
        stdin.flush()?;
        Ok(())
    }

    /// The child's resident set size in bytes.
    pub fn rss(&self) -> Result<u64> {
        rss_of(self.child.id())
    }
}

impl Drop for ChildProc {
    fn drop(&mut self) {
        // Closing stdin ends discovery, which stops the relay; the kill covers the forwarder
        // and a relay that does not stop.
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// VmRSS of process `pid`, in bytes.
pub fn rss_of(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .ok_or("no VmRSS")?;
    Ok(kib * 1024)
}

/// Runs the child role if this process is one; returns false in the benchmark itself.
pub fn child_main() -> bool {
    let Ok(role) = std::env::var("BENCH_CHILD") else {
        return false;
    };
    let result = match role.as_str() {
        "relay" => run_relay(),
        "forward" => run_forwarder(),
        other => Err(format!("unknown BENCH_CHILD {other:?}").into()),
    };
    if let Err(e) = result {
        eprintln!("bench child {role}: {e}");
        std::process::exit(1);
    }
    true
}

fn env(name: &str) -> Result<String> {
    std::env::var(name).map_err(|_| format!("{name} not set").into())
}

fn child_runtime() -> Result<tokio::runtime::Runtime> {
    // The daemon's runtime (src/main.rs): multi-threaded, one worker per core.
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

fn run_relay() -> Result<()> {
    let mut config = relay_host::Config::new(
        env("BENCH_CONTROLLER")?,
        env("BENCH_CA")?,
        env("BENCH_CERT")?,
        env("BENCH_KEY")?,
    );
    config.server_name = "localhost".into();
    config.host = "bench-host".into();
    let rate: u32 = env("BENCH_RATE")?.parse()?;
    config.limits.guest_frames_per_sec = rate;
    config.limits.guest_burst = rate.saturating_mul(2);
    let runtime = child_runtime()?;
    let (tx, rx) = tokio::sync::mpsc::channel(1024);
    // Discovery: one line per guest on stdin; end of stdin ends discovery and the relay.
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { return };
            let Some((uuid, socket)) = line.split_once(' ') else {
                continue;
            };
            let Ok(uuid) = uuid.parse::<Uuid>() else {
                continue;
            };
            let channel = GuestChannel {
                uuid,
                name: format!("vnf-{}", &uuid.simple().to_string()[24..]),
                socket: PathBuf::from(socket),
            };
            if tx.blocking_send(GuestChange::Up(channel)).is_err() {
                return;
            }
        }
    });
    let shutdown = relay_host::CancellationToken::new();
    match runtime.block_on(relay_host::relay::run(config, rx, shutdown)) {
        Ok(()) | Err(relay_host::Error::DiscoveryEnded) => Ok(()),
        Err(e) => Err(relay_host::error_chain(&e).into()),
    }
}

fn run_forwarder() -> Result<()> {
    let tls = relay_host::tls::client_config(
        Path::new(&env("BENCH_CA")?),
        Path::new(&env("BENCH_CERT")?),
        Path::new(&env("BENCH_KEY")?),
    )?;
    let name = relay_host::tls::server_name("localhost")?;
    let controller = env("BENCH_CONTROLLER")?;
    let socket = env("BENCH_SOCKET")?;
    child_runtime()?.block_on(async move {
        let tcp = TcpStream::connect(&controller).await?;
        tcp.set_nodelay(true)?;
        let mut tls = tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await?;
        let mut unix = UnixStream::connect(&socket).await?;
        tokio::io::copy_bidirectional(&mut tls, &mut unix).await?;
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------
// Controller

/// The controller's end of one relay (or forwarder) connection.
pub struct Ctl {
    stream: TlsStream<TcpStream>,
    buf: BytesMut,
    out: BytesMut,
    /// Baseline: raw frames of `raw_instance`, no envelopes.
    raw: Option<(Uuid, FrameDecoder)>,
    preamble: bool,
    keys: HashMap<Uuid, InstanceKey>,
    sessions: HashMap<Uuid, Session>,
    epoch: u64,
    pub heartbeat_ms: u32,
}

impl Ctl {
    /// Accepts the relay on `listener`: TLS handshake and preamble; its Register is answered
    /// when it arrives.
    pub async fn accept_relay(
        listener: &TcpListener,
        acceptor: &TlsAcceptor,
        keys: HashMap<Uuid, InstanceKey>,
        heartbeat_ms: u32,
    ) -> Result<Ctl> {
        let mut ctl = Self::accept(listener, acceptor, keys, None, heartbeat_ms).await?;
        ctl.stream.write_all(&PREAMBLE).await?;
        ctl.stream.flush().await?;
        Ok(ctl)
    }

    /// Accepts the baseline forwarder for guest `instance` and opens its channel (the resync
    /// marker: the guest starts a session).
    pub async fn accept_raw(
        listener: &TcpListener,
        acceptor: &TlsAcceptor,
        instance: Uuid,
        key: InstanceKey,
    ) -> Result<Ctl> {
        let keys = HashMap::from([(instance, key)]);
        let raw = Some((instance, FrameDecoder::new()));
        let mut ctl = Self::accept(listener, acceptor, keys, raw, 0).await?;
        ctl.stream.write_all(&RESYNC_MARKER).await?;
        ctl.stream.flush().await?;
        Ok(ctl)
    }

    async fn accept(
        listener: &TcpListener,
        acceptor: &TlsAcceptor,
        keys: HashMap<Uuid, InstanceKey>,
        raw: Option<(Uuid, FrameDecoder)>,
        heartbeat_ms: u32,
    ) -> Result<Ctl> {
        let (tcp, _) = guard("a connection", listener.accept()).await??;
        tcp.set_nodelay(true)?;
        let stream = guard("the TLS handshake", acceptor.accept(tcp)).await??;
        Ok(Ctl {
            stream,
            buf: BytesMut::with_capacity(64 * 1024),
            out: BytesMut::with_capacity(64 * 1024),
            raw,
            preamble: false,
            keys,
            sessions: HashMap::new(),
            epoch: getrandom::u64().unwrap_or(0x7e57) | 1,
            heartbeat_ms,
        })
    }

    /// Seals `msg` in `instance`'s session and queues it (call [`Ctl::flush`]).
    pub fn queue(&mut self, instance: Uuid, msg: &Message) -> Result<()> {
        let session = self
            .sessions
            .get_mut(&instance)
            .ok_or("no session with that guest")?;
        let mut sealed = BytesMut::new();
        session.send(msg, &mut sealed)?;
        self.emit(instance, sealed)
    }

    fn emit(&mut self, instance: Uuid, mut sealed: BytesMut) -> Result<()> {
        if self.raw.is_some() {
            self.out.extend_from_slice(&sealed);
            return Ok(());
        }
        let mut decoder = FrameDecoder::new();
        while let Some(item) = decoder.decode(&mut sealed) {
            if let Decoded::Frame(f) = item {
                let frame = f.as_bytes().to_vec();
                uplink::encode(&ControllerMsg::ToGuest { instance, frame }, &mut self.out)?;
            }
        }
        Ok(())
    }

    /// Writes what is queued.
    pub async fn flush(&mut self) -> Result<()> {
        if !self.out.is_empty() {
            self.stream.write_all(&self.out).await?;
            self.stream.flush().await?;
            self.out.clear();
        }
        Ok(())
    }

    /// Takes the queued bytes (to time their write separately).
    pub fn take_out(&mut self) -> BytesMut {
        std::mem::take(&mut self.out)
    }

    pub async fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.stream.write_all(bytes).await?;
        self.stream.flush().await?;
        Ok(())
    }

    /// The next message from a guest (Hellos included, already answered), or `None` when
    /// answers are queued and must be flushed. Cancel-safe: the only await is a read.
    pub async fn next(&mut self) -> Result<Option<(Uuid, Message)>> {
        loop {
            if let Some(m) = self.process()? {
                return Ok(Some(m));
            }
            if !self.out.is_empty() {
                return Ok(None);
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err("the relay closed the connection".into());
            }
        }
    }

    /// [`Ctl::next`], flushing answers as needed.
    pub async fn recv(&mut self) -> Result<(Uuid, Message)> {
        loop {
            match self.next().await? {
                Some(m) => return Ok(m),
                None => self.flush().await?,
            }
        }
    }

    fn process(&mut self) -> Result<Option<(Uuid, Message)>> {
        loop {
            if let Some((instance, decoder)) = &mut self.raw {
                let instance = *instance;
                let Some(item) = decoder.decode(&mut self.buf) else {
                    return Ok(None);
                };
                if let Decoded::Frame(f) = item {
                    if let Some(msg) = self.open(instance, &f)? {
                        return Ok(Some((instance, msg)));
                    }
                }
                continue;
            }
            if !self.preamble {
                self.preamble = uplink::check_preamble(&mut self.buf)?;
                if !self.preamble {
                    return Ok(None);
                }
            }
            let Some(msg) = uplink::decode::<RelayMsg>(&mut self.buf)? else {
                return Ok(None);
            };
            match msg {
                RelayMsg::Register(_) => uplink::encode(
                    &ControllerMsg::Registered(Registered {
                        version: UPLINK_VERSION,
                        heartbeat_interval_ms: self.heartbeat_ms,
                    }),
                    &mut self.out,
                )?,
                RelayMsg::Ping { nonce } => {
                    uplink::encode(&ControllerMsg::Pong { nonce }, &mut self.out)?
                }
                RelayMsg::FromGuest { instance, frame } => {
                    let frame = RawFrame::parse(Bytes::from(frame))?;
                    if let Some(msg) = self.open(instance, &frame)? {
                        return Ok(Some((instance, msg)));
                    }
                }
                RelayMsg::GuestUp(_)
                | RelayMsg::GuestDown { .. }
                | RelayMsg::GuestReopened { .. }
                | RelayMsg::Pong { .. }
                | RelayMsg::ChainStatus(_) => {}
            }
        }
    }

    fn open(&mut self, instance: Uuid, frame: &RawFrame) -> Result<Option<Message>> {
        let key = self
            .keys
            .get(&instance)
            .ok_or("frame of an unknown guest")?;
        let session = self
            .sessions
            .entry(instance)
            .or_insert_with(|| Session::controller(key));
        let msg = session
            .open(frame)
            .map_err(|e| format!("guest {instance}: {e}"))?;
        if let Some(Message::Hello(hello)) = &msg {
            self.epoch = self.epoch.wrapping_add(2);
            let welcome = Welcome {
                protocol: 1,
                capabilities: hello.capabilities & capability::ALL,
                session_epoch: self.epoch,
                max_message_len: u32::try_from(Limits::default().max_message_len)
                    .unwrap_or(u32::MAX),
                heartbeat_interval_ms: 60_000,
            };
            let mut sealed = BytesMut::new();
            session.accept(&welcome, &mut sealed)?;
            self.emit(instance, sealed)?;
        }
        Ok(msg)
    }

    /// Answers whatever arrives for `period`, dropping guest messages.
    pub async fn pump_for(&mut self, period: Duration) -> Result<()> {
        let deadline = tokio::time::Instant::now() + period;
        loop {
            match tokio::time::timeout_at(deadline, self.next()).await {
                Err(_) => return self.flush().await,
                Ok(r) => {
                    if r?.is_none() {
                        self.flush().await?;
                    }
                }
            }
        }
    }

    /// Waits until `n` guests have said Hello (and been welcomed).
    pub async fn wait_hellos(&mut self, n: usize) -> Result<()> {
        let mut seen = 0;
        guard("the guests' Hellos", async {
            while seen < n {
                if let (_, Message::Hello(_)) = self.recv().await? {
                    seen += 1;
                }
            }
            self.flush().await
        })
        .await?
    }
}

/// Sorted samples' percentile.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

pub fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

pub fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

pub fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1 << 20) as f64)
}

/// The benchmark's own runtime: multi-threaded, one worker per core like the daemon's.
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}
