//! Guest discovery through libvirt: which running domains have the relay channel, and where
//! its host socket is.
//!
//! A dedicated thread (`libvirt-discovery`) owns a connection and keeps the consumer's view
//! current with [`GuestChange`]s on a tokio channel; libvirt calls are blocking FFI and never
//! run on the async runtime. The thread
//! - registers for domain lifecycle events (started, stopped, defined, undefined, ...) through
//!   the small unsafe module `events`, whose event loop runs on its own thread. An event does
//!   not carry the channel, so each one only marks its domain dirty; after a short debounce the
//!   dirty domains are looked up again (live XML, [`xml::guest_channel`]) and the differences
//!   reported;
//! - runs a full reconcile (all active domains) on every (re)connect and periodically, as the
//!   safety net for anything the events miss (e.g. channel hot-plug, which is no lifecycle
//!   event);
//! - notices a lost connection through libvirt's close callback (keepalive or EOF, e.g. a
//!   libvirtd restart) or a failing call, and reconnects with exponential backoff, registering
//!   the callbacks again. Guests keep running while libvirtd is away, so nothing is reported
//!   Down for the outage itself; the reconcile after reconnecting settles what changed
//!   meanwhile;
//! - takes [`Hints`] from outside the event stream (the libvirt hook's notifications, see
//!   `crate::hook`): a started domain is looked up after the same debounce as an event, so a
//!   missed event costs no reconcile period; a stopped domain is reported Down at once. Hints
//!   that arrive while libvirt is unreachable are dropped: the reconcile after reconnecting
//!   covers them.
//!
//! Shutdown: cancelling the token wakes the thread at once (a watcher thread turns the
//! cancellation into a message); it deregisters, closes the connection, stops the event loop
//! thread when it was its last user and returns. It does not report the known guests Down:
//! the consumer shuts down on the same token.

mod events;
mod state;
mod xml;

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::ops::Deref;
use std::pin::pin;
use std::sync::mpsc as std_mpsc;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use relay_protocol::Uuid;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use virt::connect::Connect;
use virt::domain::Domain;
use virt::error::ErrorNumber;

use crate::discovery::{GuestChange, GuestChannel};
use events::{EventLoopGuard, Notice, Registration};
use state::KnownGuests;

pub use events::EventLoopError;
pub use xml::{guest_channel, XmlError};

/// libvirt's URI for the local system QEMU driver, the one Nova uses.
pub const DEFAULT_URI: &str = "qemu:///system";
/// The virtio-serial port name the relay's guests carry.
pub const DEFAULT_CHANNEL: &str = "org.opensfc.relay.0";

/// How discovery talks to libvirt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LibvirtConfig {
    /// Connection URI; `test:///default` is libvirt's in-process test driver.
    pub uri: String,
    /// Target name of the `<channel type='unix'>` that leads to the guest agent.
    pub channel: String,
    /// Period of the full reconcile that backs up the events.
    pub reconcile_interval: Duration,
    /// How long to gather lifecycle events before looking at the domains they name.
    pub debounce: Duration,
    /// First delay before reconnecting to libvirt; doubles up to `reconnect_max`.
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// Client keepalive: a ping every `keepalive_interval`, the connection is declared dead
    /// after `keepalive_count` unanswered ones. Ignored by drivers without keepalive.
    pub keepalive_interval: Duration,
    pub keepalive_count: u32,
}

impl Default for LibvirtConfig {
    fn default() -> Self {
        Self {
            uri: DEFAULT_URI.to_owned(),
            channel: DEFAULT_CHANNEL.to_owned(),
            reconcile_interval: Duration::from_secs(30),
            debounce: Duration::from_millis(100),
            reconnect_min: Duration::from_millis(250),
            reconnect_max: Duration::from_secs(10),
            keepalive_interval: Duration::from_secs(5),
            keepalive_count: 3,
        }
    }
}

/// Errors of libvirt discovery.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("connecting to libvirt at {uri}")]
    Connect {
        uri: String,
        #[source]
        source: virt::error::Error,
    },
    #[error("setting up libvirt's event loop")]
    EventLoop(#[from] EventLoopError),
    #[error("listing the active domains")]
    ListDomains(#[source] virt::error::Error),
    #[error("registering for domain events")]
    RegisterEvents(#[source] virt::error::Error),
    #[error("starting thread {name}")]
    Thread {
        name: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// A libvirt connection opened after the event loop implementation was registered (without
/// that, libvirt delivers no events on it), closed on drop.
#[derive(Debug)]
pub struct Connection {
    conn: Connect,
    uri: String,
}

impl Connection {
    pub fn open(uri: &str) -> Result<Self, Error> {
        events::ensure_event_impl()?;
        let conn = Connect::open(Some(uri)).map_err(|source| Error::Connect {
            uri: uri.to_owned(),
            source,
        })?;
        Ok(Self {
            conn,
            uri: uri.to_owned(),
        })
    }

    pub fn uri(&self) -> &str {
        &self.uri
    }
}

impl Deref for Connection {
    type Target = Connect;

    fn deref(&self) -> &Connect {
        &self.conn
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        // `Connect` has no destructor of its own; without this the connection would leak.
        if let Err(e) = self.conn.close() {
            tracing::debug!(uri = %self.uri, error = %e, "closing the libvirt connection");
        }
    }
}

/// One look at libvirt, for `relay-host check`: the running guests that have the channel.
/// Domains whose channel is unusable are logged and left out.
pub fn check(config: &LibvirtConfig) -> Result<Vec<GuestChannel>, Error> {
    let conn = Connection::open(&config.uri)?;
    let scan = scan(&conn, &config.channel).map_err(Error::ListDomains)?;
    let mut guests: Vec<GuestChannel> = scan.found.into_values().collect();
    guests.sort_by(|a, b| a.name.cmp(&b.name).then(a.uuid.cmp(&b.uuid)));
    Ok(guests)
}

/// The kind of a domain lifecycle event (`virDomainEventType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LifecycleKind {
    Defined,
    Undefined,
    Started,
    Suspended,
    Resumed,
    Stopped,
    Shutdown,
    PmSuspended,
    Crashed,
    /// A kind newer than this code.
    Other(i32),
}

impl LifecycleKind {
    fn from_raw(event: i32) -> Self {
        use virt::sys;
        match u32::try_from(event) {
            Ok(sys::VIR_DOMAIN_EVENT_DEFINED) => Self::Defined,
            Ok(sys::VIR_DOMAIN_EVENT_UNDEFINED) => Self::Undefined,
            Ok(sys::VIR_DOMAIN_EVENT_STARTED) => Self::Started,
            Ok(sys::VIR_DOMAIN_EVENT_SUSPENDED) => Self::Suspended,
            Ok(sys::VIR_DOMAIN_EVENT_RESUMED) => Self::Resumed,
            Ok(sys::VIR_DOMAIN_EVENT_STOPPED) => Self::Stopped,
            Ok(sys::VIR_DOMAIN_EVENT_SHUTDOWN) => Self::Shutdown,
            Ok(sys::VIR_DOMAIN_EVENT_PMSUSPENDED) => Self::PmSuspended,
            Ok(sys::VIR_DOMAIN_EVENT_CRASHED) => Self::Crashed,
            _ => Self::Other(event),
        }
    }
}

/// A domain lifecycle event as libvirt delivered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LifecycleEvent {
    pub uuid: Uuid,
    pub name: String,
    pub kind: LifecycleKind,
    /// The kind-specific detail code (`virDomainEvent*DetailType`).
    pub detail: i32,
}

/// What the discovery thread is doing, for tests and diagnostics ([`Discovery::observe`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiscoveryEvent {
    /// Connection number `generation` (from 1) is open and registered for events.
    Connected { generation: u64 },
    /// Connection `generation` was lost or could not be opened; a reconnect follows.
    Disconnected { generation: u64, reason: String },
    /// A lifecycle event arrived on the current connection.
    Lifecycle(LifecycleEvent),
    /// A full reconcile finished; `guests` are known now.
    Reconciled { guests: usize },
}

/// Libvirt discovery, configured; [`Discovery::spawn`] starts it.
#[derive(Debug)]
pub struct Discovery {
    config: LibvirtConfig,
    observer: Option<std_mpsc::Sender<DiscoveryEvent>>,
    notice_tx: std_mpsc::Sender<Notice>,
    notices: std_mpsc::Receiver<Notice>,
}

/// Hints for a running discovery about single domains, from outside libvirt's event stream;
/// cheap to clone. Hints sent after discovery stopped are dropped.
#[derive(Debug, Clone)]
pub struct Hints {
    tx: std_mpsc::Sender<Notice>,
}

impl Hints {
    /// The domain started: look it up now rather than at the next reconcile.
    pub fn started(&self, uuid: Uuid) {
        let _ = self.tx.send(Notice::Hint {
            uuid,
            started: true,
        });
    }

    /// The domain stopped: report it Down now if it was known.
    pub fn stopped(&self, uuid: Uuid) {
        let _ = self.tx.send(Notice::Hint {
            uuid,
            started: false,
        });
    }
}

impl crate::hook::HookSink for Hints {
    fn deliver(&self, notification: crate::hook::HookNotification) {
        match notification.event {
            crate::hook::HookEvent::Started => self.started(notification.uuid),
            crate::hook::HookEvent::Stopped => self.stopped(notification.uuid),
        }
    }
}

impl Discovery {
    pub fn new(config: LibvirtConfig) -> Self {
        let (notice_tx, notices) = std_mpsc::channel();
        Self {
            config,
            observer: None,
            notice_tx,
            notices,
        }
    }

    /// A handle for hints about single domains (see [`Hints`]).
    pub fn hints(&self) -> Hints {
        Hints {
            tx: self.notice_tx.clone(),
        }
    }

    /// Also reports what the thread does (connections, raw lifecycle events, reconciles).
    pub fn observe(mut self, observer: std_mpsc::Sender<DiscoveryEvent>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Starts the discovery thread. It reports on `tx` until `shutdown` is cancelled or the
    /// receiver is dropped, and retries libvirt forever meanwhile.
    pub fn spawn(
        self,
        tx: mpsc::Sender<GuestChange>,
        shutdown: CancellationToken,
    ) -> Result<JoinHandle<()>, Error> {
        let event_loop = EventLoopGuard::acquire()?;
        let worker = Worker {
            config: self.config,
            observer: self.observer,
            tx,
            shutdown,
            known: KnownGuests::default(),
        };
        let (notice_tx, notices) = (self.notice_tx, self.notices);
        std::thread::Builder::new()
            .name("libvirt-discovery".into())
            .spawn(move || worker.run(event_loop, notice_tx, notices))
            .map_err(|source| Error::Thread {
                name: "libvirt-discovery",
                source,
            })
    }
}

/// Starts libvirt discovery; see [`Discovery`] for the options.
pub fn spawn_discovery(
    config: LibvirtConfig,
    tx: mpsc::Sender<GuestChange>,
    shutdown: CancellationToken,
) -> Result<JoinHandle<()>, Error> {
    Discovery::new(config).spawn(tx, shutdown)
}

/// The running domains with the channel, and the domains whose XML could not be read.
#[derive(Debug, Default)]
struct Scan {
    found: HashMap<Uuid, GuestChannel>,
    unreadable: HashSet<Uuid>,
}

fn scan(conn: &Connect, channel: &str) -> Result<Scan, virt::error::Error> {
    let domains = conn.list_all_domains(virt::sys::VIR_CONNECT_LIST_DOMAINS_ACTIVE)?;
    let mut scan = Scan::default();
    for domain in domains {
        let uuid = match domain.get_uuid() {
            Ok(uuid) => uuid,
            Err(e) => {
                tracing::warn!(error = %e, "reading a domain's UUID");
                continue;
            }
        };
        match read_channel(&domain, channel) {
            Ok(Some(guest)) => {
                scan.found.insert(uuid, guest);
            }
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(vm.uuid = %uuid, error = %e, "reading the live domain XML");
                scan.unreadable.insert(uuid);
            }
        }
    }
    Ok(scan)
}

/// The relay channel of one domain from its live XML; `Ok(None)` when it has none, has an
/// unusable one (logged), or vanished meanwhile.
fn read_channel(
    domain: &Domain,
    channel: &str,
) -> Result<Option<GuestChannel>, virt::error::Error> {
    let xml = match domain.get_xml_desc(0) {
        Ok(xml) => xml,
        Err(e) if e.code() == ErrorNumber::NoDomain => return Ok(None),
        Err(e) => return Err(e),
    };
    match xml::guest_channel(&xml, channel) {
        Ok(found) => Ok(found),
        Err(e) => {
            tracing::warn!(error = %e, "ignoring a domain with an unusable relay channel");
            Ok(None)
        }
    }
}

/// One domain's current relay channel, looked up by UUID.
fn lookup_channel(
    conn: &Connect,
    uuid: Uuid,
    channel: &str,
) -> Result<Option<GuestChannel>, virt::error::Error> {
    let domain = match Domain::lookup_by_uuid(conn, uuid) {
        Ok(domain) => domain,
        Err(e) if e.code() == ErrorNumber::NoDomain => return Ok(None),
        Err(e) => return Err(e),
    };
    if !domain.is_active()? {
        return Ok(None);
    }
    read_channel(&domain, channel)
}

/// A connection registered for events; dropping it deregisters, then closes.
struct Session {
    _registration: Registration,
    conn: Connection,
    generation: u64,
}

impl Session {
    fn open(
        config: &LibvirtConfig,
        generation: u64,
        notices: std_mpsc::Sender<Notice>,
    ) -> Result<Self, Error> {
        let conn = Connection::open(&config.uri)?;
        let interval = i32::try_from(config.keepalive_interval.as_secs().max(1)).unwrap_or(5);
        if let Err(e) = conn.set_keep_alive(interval, config.keepalive_count) {
            // The test driver has no keepalive; remote connections have.
            tracing::debug!(error = %e, "libvirt keepalive not enabled");
        }
        let registration =
            Registration::new(&conn, generation, notices).map_err(Error::RegisterEvents)?;
        Ok(Self {
            _registration: registration,
            conn,
            generation,
        })
    }

    /// Whether a failed call means the connection is gone.
    fn is_lost(&self) -> bool {
        !matches!(self.conn.is_alive(), Ok(true))
    }
}

/// Why the session loop ended.
enum SessionEnd {
    Reconnect(String),
    Stop,
}

struct Worker {
    config: LibvirtConfig,
    observer: Option<std_mpsc::Sender<DiscoveryEvent>>,
    tx: mpsc::Sender<GuestChange>,
    shutdown: CancellationToken,
    known: KnownGuests,
}

impl Worker {
    fn run(
        mut self,
        event_loop: EventLoopGuard,
        notice_tx: std_mpsc::Sender<Notice>,
        notices: std_mpsc::Receiver<Notice>,
    ) {
        let span = tracing::info_span!("libvirt_discovery", uri = %self.config.uri);
        let _entered = span.enter();

        // Turns the cancellation into a message, so waits below need no polling. `done` also
        // releases the watcher when the worker stops for another reason.
        let done = self.shutdown.child_token();
        let watcher = {
            let done = done.clone();
            let notice_tx = notice_tx.clone();
            std::thread::Builder::new()
                .name("libvirt-discovery-cancel".into())
                .spawn(move || {
                    block_on(done.cancelled());
                    let _ = notice_tx.send(Notice::Cancelled);
                })
        };
        let watcher = match watcher {
            Ok(w) => w,
            Err(e) => {
                tracing::error!(error = %e, "cannot start the discovery cancellation watcher");
                return;
            }
        };

        let mut generation = 0;
        let mut backoff = self.config.reconnect_min;
        loop {
            if self.shutdown.is_cancelled() {
                break;
            }
            generation += 1;
            let (end, was_connected) =
                match Session::open(&self.config, generation, notice_tx.clone()) {
                    Ok(session) => {
                        tracing::info!(generation, "connected to libvirt");
                        self.observe(DiscoveryEvent::Connected { generation });
                        // The session (callbacks, connection) is released before any wait.
                        (self.serve(&session, &notices), true)
                    }
                    Err(e) => (SessionEnd::Reconnect(error_chain(&e)), false),
                };
            let reason = match end {
                SessionEnd::Stop => break,
                SessionEnd::Reconnect(reason) => reason,
            };
            if was_connected {
                // The connection worked: retry quickly.
                backoff = self.config.reconnect_min;
                tracing::warn!(generation, %reason, retry_in = ?backoff, "libvirt connection lost");
            } else {
                tracing::warn!(generation, %reason, retry_in = ?backoff, "cannot connect to libvirt");
            }
            self.observe(DiscoveryEvent::Disconnected { generation, reason });
            if wait_for_cancel(&notices, backoff) {
                break;
            }
            backoff = (backoff * 2).min(self.config.reconnect_max);
        }

        done.cancel();
        if watcher.join().is_err() {
            tracing::error!("the discovery cancellation watcher panicked");
        }
        drop(event_loop);
        tracing::debug!("libvirt discovery stopped");
    }

    /// Serves one connection until it is lost or discovery stops.
    fn serve(&mut self, session: &Session, notices: &std_mpsc::Receiver<Notice>) -> SessionEnd {
        let mut next_full = Instant::now();
        let mut dirty: HashSet<Uuid> = HashSet::new();
        let mut dirty_deadline: Option<Instant> = None;
        loop {
            let now = Instant::now();
            if now >= next_full {
                if let Some(end) = self.full_reconcile(session) {
                    return end;
                }
                // A full reconcile covers whatever was dirty.
                dirty.clear();
                dirty_deadline = None;
                next_full = Instant::now() + self.config.reconcile_interval;
            } else if dirty_deadline.is_some_and(|d| now >= d) {
                dirty_deadline = None;
                for uuid in std::mem::take(&mut dirty) {
                    if let Some(end) = self.refresh(session, uuid) {
                        return end;
                    }
                }
            }

            let deadline = dirty_deadline.map_or(next_full, |d| d.min(next_full));
            let timeout = deadline.saturating_duration_since(Instant::now());
            match notices.recv_timeout(timeout) {
                Ok(Notice::Lifecycle {
                    generation,
                    uuid,
                    name,
                    event,
                    detail,
                }) => {
                    if generation != session.generation {
                        continue;
                    }
                    let kind = LifecycleKind::from_raw(event);
                    tracing::debug!(vm.uuid = %uuid, vm.name = %name, ?kind, detail, "domain event");
                    self.observe(DiscoveryEvent::Lifecycle(LifecycleEvent {
                        uuid,
                        name,
                        kind,
                        detail,
                    }));
                    dirty.insert(uuid);
                    dirty_deadline.get_or_insert_with(|| Instant::now() + self.config.debounce);
                }
                Ok(Notice::Closed { generation, reason }) => {
                    if generation == session.generation {
                        return SessionEnd::Reconnect(format!(
                            "libvirt closed the connection ({})",
                            close_reason(reason)
                        ));
                    }
                }
                Ok(Notice::Hint {
                    uuid,
                    started: true,
                }) => {
                    tracing::debug!(vm.uuid = %uuid, "hint: domain started");
                    dirty.insert(uuid);
                    dirty_deadline.get_or_insert_with(|| Instant::now() + self.config.debounce);
                }
                Ok(Notice::Hint {
                    uuid,
                    started: false,
                }) => {
                    tracing::debug!(vm.uuid = %uuid, "hint: domain stopped");
                    if let Some(change) = self.known.update(uuid, None) {
                        if !self.emit(change) {
                            return SessionEnd::Stop;
                        }
                    }
                }
                Ok(Notice::Cancelled) | Err(std_mpsc::RecvTimeoutError::Disconnected) => {
                    return SessionEnd::Stop
                }
                Err(std_mpsc::RecvTimeoutError::Timeout) => {}
            }
        }
    }

    fn full_reconcile(&mut self, session: &Session) -> Option<SessionEnd> {
        let scan = match scan(&session.conn, &self.config.channel) {
            Ok(scan) => scan,
            Err(e) => return self.call_failed(session, "listing the active domains", &e),
        };
        for change in self.known.reconcile(scan.found, &scan.unreadable) {
            if !self.emit(change) {
                return Some(SessionEnd::Stop);
            }
        }
        self.observe(DiscoveryEvent::Reconciled {
            guests: self.known.len(),
        });
        None
    }

    fn refresh(&mut self, session: &Session, uuid: Uuid) -> Option<SessionEnd> {
        let now = match lookup_channel(&session.conn, uuid, &self.config.channel) {
            Ok(now) => now,
            Err(e) => return self.call_failed(session, "looking up a domain", &e),
        };
        let change = self.known.update(uuid, now)?;
        if self.emit(change) {
            None
        } else {
            Some(SessionEnd::Stop)
        }
    }

    /// A libvirt call failed: reconnect when the connection is gone, else carry on (the next
    /// reconcile tries again).
    fn call_failed(
        &self,
        session: &Session,
        what: &str,
        e: &virt::error::Error,
    ) -> Option<SessionEnd> {
        if session.is_lost() {
            return Some(SessionEnd::Reconnect(format!("{what}: {e}")));
        }
        tracing::warn!(error = %e, "{what}");
        None
    }

    /// Hands a change to the consumer, waiting for room; false when discovery must stop.
    fn emit(&self, change: GuestChange) -> bool {
        match &change {
            GuestChange::Up(g) => {
                tracing::info!(vm.uuid = %g.uuid, vm.name = %g.name, port.path = %g.socket.display(), "guest up")
            }
            GuestChange::Down(uuid) => tracing::info!(vm.uuid = %uuid, "guest down"),
        }
        block_on(async {
            tokio::select! {
                biased;
                () = self.shutdown.cancelled() => false,
                sent = self.tx.send(change) => sent.is_ok(),
            }
        })
    }

    fn observe(&self, event: DiscoveryEvent) {
        if let Some(observer) = &self.observer {
            let _ = observer.send(event);
        }
    }
}

/// Waits `delay` unless cancelled first; true when cancelled. Stale notices are dropped.
fn wait_for_cancel(notices: &std_mpsc::Receiver<Notice>, delay: Duration) -> bool {
    let deadline = Instant::now() + delay;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match notices.recv_timeout(left) {
            Ok(Notice::Cancelled) | Err(std_mpsc::RecvTimeoutError::Disconnected) => return true,
            Ok(_) => {}
            Err(std_mpsc::RecvTimeoutError::Timeout) => return false,
        }
    }
}

fn close_reason(reason: i32) -> &'static str {
    use virt::sys;
    match u32::try_from(reason) {
        Ok(sys::VIR_CONNECT_CLOSE_REASON_ERROR) => "error",
        Ok(sys::VIR_CONNECT_CLOSE_REASON_EOF) => "end of file",
        Ok(sys::VIR_CONNECT_CLOSE_REASON_KEEPALIVE) => "keepalive timeout",
        Ok(sys::VIR_CONNECT_CLOSE_REASON_CLIENT) => "closed by the client",
        _ => "unknown reason",
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Runs a future to completion on this (non-async) thread, parking between polls.
fn block_on<F: Future>(fut: F) -> F::Output {
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
        fn wake_by_ref(self: &Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut fut = pin!(fut);
    loop {
        if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::park();
    }
}

#[cfg(test)]
mod tests;
