//! The agent: keeps a session with the controller over the host channel and applies what it
//! pushes.
//!
//! One task drives everything. It opens the channel (retrying with backoff while the port is
//! missing or busy), then loops: flush pending output, wait for input, a timer or shutdown,
//! handle what came. Every (re)open, every resync marker from the host and every return of the
//! host after an absence starts a new session (resync marker + Hello with a fresh random nonce);
//! a Welcome that does not come in time is asked for again with a new nonce, the timeout
//! growing each time. After the Welcome the agent sends a ConfigRequest listing what it has
//! applied, so the controller re-sends whatever is newer: delivery is level-triggered, and a
//! push lost to a reconnect is recovered by the next handshake.
//!
//! Host absence (read or write returning 0, see [`crate::transport`]) is never an error: reads
//! and writes each back off on their own (50 ms doubling to 2 s by default) and nothing spins.
//! Frames that fail authentication or replay checks are logged and counted ([`AgentStats`]),
//! never fatal.
//!
//! Pushes are applied in order, one at a time, by the service's [`Handler`] on the blocking
//! pool (on the calling thread for the blocking API); the applied `(config id, version)` per
//! service is persisted before the Ack goes out, so a version is applied at most once and an
//! older one never replaces a newer one, across reconnects and restarts alike.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use relay_protocol::message::{capability, MAX_ITEMS, MAX_NAME, MAX_TEXT, PROTOCOL_VERSION};
use relay_protocol::{
    Ack, AckOutcome, ConfigPush, ConfigRequest, Decoded, FrameDecoder, Hello, InstanceKey, Message,
    Ping, Pong, ServiceName, Session, Uuid, Welcome,
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn, Span};

use crate::handler::{ConfigUpdate, Handler, Rejection};
use crate::state::{AppliedEntry, AppliedState, StateError, StateStore};
use crate::transport::{Connector, Once, PortSpec, Transport, DEFAULT_PORT_NAME, MAX_WRITE};

/// Timeouts and backoff of the agent. The defaults suit production; tests shorten nothing
/// (they run on paused time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// First wait for a Welcome after the Hello went out; doubled on every miss.
    pub welcome_timeout: Duration,
    /// Cap of the Welcome wait.
    pub welcome_timeout_max: Duration,
    /// First backoff while the host is absent or the port cannot be opened; doubled per miss.
    pub backoff_min: Duration,
    /// Cap of that backoff.
    pub backoff_max: Duration,
    /// Heartbeats (the interval the Welcome sets) without any frame from the controller after
    /// which the session is considered dead and a new one is started.
    pub heartbeat_misses: u32,
    /// How long shutdown waits to write out pending Acks.
    pub shutdown_grace: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            welcome_timeout: Duration::from_secs(5),
            welcome_timeout_max: Duration::from_secs(60),
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
            heartbeat_misses: 3,
            shutdown_grace: Duration::from_secs(1),
        }
    }
}

impl Timing {
    /// Rejects settings that would make the agent spin or never wait.
    fn check(&self) -> Result<(), AgentError> {
        let t = self;
        let bad = |what| Err(AgentError::BadTiming(what));
        if t.backoff_min.is_zero() || t.backoff_max < t.backoff_min {
            return bad("backoff_min must be positive and at most backoff_max");
        }
        if t.welcome_timeout.is_zero() || t.welcome_timeout_max < t.welcome_timeout {
            return bad("welcome_timeout must be positive and at most welcome_timeout_max");
        }
        if t.heartbeat_misses == 0 {
            return bad("heartbeat_misses must be at least 1");
        }
        Ok(())
    }
}

/// A heartbeat interval below this from a Welcome is raised to it, so a hostile or broken
/// controller cannot make the agent spin.
const MIN_HEARTBEAT: Duration = Duration::from_millis(500);

/// Counters of what the agent saw and did; read them with [`AgentStats::snapshot`].
#[derive(Debug, Default)]
pub struct AgentStats {
    opens: AtomicU64,
    open_failures: AtomicU64,
    channel_errors: AtomicU64,
    sessions_started: AtomicU64,
    handshakes: AtomicU64,
    welcome_timeouts: AtomicU64,
    heartbeat_timeouts: AtomicU64,
    resyncs: AtomicU64,
    host_absent: AtomicU64,
    discarded_bytes: AtomicU64,
    protocol_errors: AtomicU64,
    stale_frames: AtomicU64,
    peer_errors: AtomicU64,
    applied: AtomicU64,
    reacked: AtomicU64,
    rejected: AtomicU64,
    persist_errors: AtomicU64,
    pings_sent: AtomicU64,
}

/// A copy of the counters at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Successful opens of the channel.
    pub opens: u64,
    /// Failed opens (port missing or busy), each retried after a backoff.
    pub open_failures: u64,
    /// Channel errors that made the agent reopen the channel.
    pub channel_errors: u64,
    /// Hellos sent (sessions begun).
    pub sessions_started: u64,
    /// Welcomes received (sessions established).
    pub handshakes: u64,
    pub welcome_timeouts: u64,
    pub heartbeat_timeouts: u64,
    /// Resync markers from the host.
    pub resyncs: u64,
    /// Times the host was found absent (read end-of-file).
    pub host_absent: u64,
    /// Stale or garbage bytes skipped by the frame decoder.
    pub discarded_bytes: u64,
    /// Frames rejected by the session (bad MAC, replay, malformed...) or messages that make no
    /// sense here.
    pub protocol_errors: u64,
    /// Authentic frames of an earlier session or handshake attempt (a Welcome to a Hello that
    /// a resync superseded, a push left in the buffer across a reconnect): normal after a
    /// reconnect, skipped.
    pub stale_frames: u64,
    /// Error messages from the controller.
    pub peer_errors: u64,
    /// Pushes applied by a handler.
    pub applied: u64,
    /// Pushes of the version already applied, acknowledged again without applying.
    pub reacked: u64,
    /// Pushes rejected (by the agent's checks or by the handler).
    pub rejected: u64,
    /// Applied state that could not be persisted.
    pub persist_errors: u64,
    pub pings_sent: u64,
}

impl AgentStats {
    pub fn snapshot(&self) -> StatsSnapshot {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            opens: g(&self.opens),
            open_failures: g(&self.open_failures),
            channel_errors: g(&self.channel_errors),
            sessions_started: g(&self.sessions_started),
            handshakes: g(&self.handshakes),
            welcome_timeouts: g(&self.welcome_timeouts),
            heartbeat_timeouts: g(&self.heartbeat_timeouts),
            resyncs: g(&self.resyncs),
            host_absent: g(&self.host_absent),
            discarded_bytes: g(&self.discarded_bytes),
            protocol_errors: g(&self.protocol_errors),
            stale_frames: g(&self.stale_frames),
            peer_errors: g(&self.peer_errors),
            applied: g(&self.applied),
            reacked: g(&self.reacked),
            rejected: g(&self.rejected),
            persist_errors: g(&self.persist_errors),
            pings_sent: g(&self.pings_sent),
        }
    }
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Errors that stop the agent (or keep it from being built).
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("service {0} is registered twice")]
    DuplicateService(ServiceName),
    #[error("{count} services are registered; a Hello announces at most {MAX_ITEMS}")]
    TooManyServices { count: usize },
    #[error("agent name and version must be 1 to {MAX_NAME} bytes")]
    BadName,
    #[error("invalid timing: {0}")]
    BadTiming(&'static str),
    #[error("applied-state record")]
    State(#[from] StateError),
    #[error("cannot open the channel {port}")]
    Open {
        port: String,
        #[source]
        source: io::Error,
    },
    #[error("the operating system has no randomness for a session nonce")]
    Random(#[source] getrandom::Error),
    #[error("the protocol refused a message the agent built (a bug)")]
    Protocol(#[from] relay_protocol::Error),
    #[error("cannot start the agent's runtime")]
    Runtime(#[source] io::Error),
}

/// Builds an [`Agent`]; see [`Agent::builder`].
pub struct AgentBuilder {
    key: InstanceKey,
    connector: Option<Box<dyn Connector>>,
    instance: Option<Uuid>,
    state_dir: Option<PathBuf>,
    name: String,
    version: String,
    handlers: BTreeMap<ServiceName, Box<dyn Handler>>,
    duplicate: Option<ServiceName>,
    timing: Timing,
}

impl fmt::Debug for AgentBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AgentBuilder")
            .field("connector", &self.connector)
            .field("instance", &self.instance)
            .field("state_dir", &self.state_dir)
            .field("name", &self.name)
            .field("version", &self.version)
            .field("services", &self.handlers.keys().collect::<Vec<_>>())
            .field("timing", &self.timing)
            .finish_non_exhaustive()
    }
}

impl AgentBuilder {
    /// The channel, by port specification (default: the virtio-serial port
    /// [`DEFAULT_PORT_NAME`]).
    pub fn port(mut self, port: PortSpec) -> Self {
        self.connector = Some(port.connector());
        self
    }

    /// The channel, through a connector of the caller's.
    pub fn connector(mut self, connector: impl Connector + 'static) -> Self {
        self.connector = Some(Box::new(connector));
        self
    }

    /// A channel the caller already opened; the run ends if it breaks.
    pub fn transport(self, transport: impl Transport + 'static) -> Self {
        self.connector(Once::new(transport))
    }

    /// The instance this agent runs in; pushes for any other instance are rejected.
    pub fn instance(mut self, instance: Uuid) -> Self {
        self.instance = Some(instance);
        self
    }

    /// Where the applied state is kept (created if missing). Without one it is kept in memory
    /// only, and a restart forgets what was applied.
    pub fn state_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.state_dir = Some(dir.into());
        self
    }

    /// Name and version announced in Hello (default: `vnf-agent` and this crate's version).
    pub fn agent_name(mut self, name: impl Into<String>, version: impl Into<String>) -> Self {
        self.name = name.into();
        self.version = version.into();
        self
    }

    /// The handler of `service`.
    pub fn handler(mut self, service: ServiceName, handler: Box<dyn Handler>) -> Self {
        match self.handlers.entry(service) {
            std::collections::btree_map::Entry::Occupied(e) => {
                self.duplicate.get_or_insert(e.key().clone());
            }
            std::collections::btree_map::Entry::Vacant(e) => {
                e.insert(handler);
            }
        }
        self
    }

    pub fn timing(mut self, timing: Timing) -> Self {
        self.timing = timing;
        self
    }

    /// Checks the configuration and loads the applied state.
    pub fn build(self) -> Result<Agent, AgentError> {
        if let Some(s) = self.duplicate {
            return Err(AgentError::DuplicateService(s));
        }
        if self.handlers.len() > MAX_ITEMS {
            return Err(AgentError::TooManyServices {
                count: self.handlers.len(),
            });
        }
        self.timing.check()?;
        let name_ok = |s: &str| (1..=MAX_NAME).contains(&s.len());
        if !name_ok(&self.name) || !name_ok(&self.version) {
            return Err(AgentError::BadName);
        }
        let (store, applied) = match &self.state_dir {
            Some(dir) => StateStore::open(dir)?,
            None => (StateStore::in_memory(), AppliedState::default()),
        };
        let connector = self
            .connector
            .unwrap_or_else(|| PortSpec::Virtio(DEFAULT_PORT_NAME.into()).connector());
        let hello = Hello {
            protocol_min: PROTOCOL_VERSION,
            protocol_max: PROTOCOL_VERSION,
            // Chunked pushes are reassembled by the session; the agent sends no events.
            capabilities: capability::CHUNKING,
            agent_name: self.name,
            agent_version: self.version,
            services: self.handlers.keys().cloned().collect(),
        };
        Ok(Agent {
            connector,
            key: self.key,
            hello,
            timing: self.timing,
            core: Core {
                instance: self.instance,
                handlers: self
                    .handlers
                    .into_iter()
                    .map(|(s, h)| (s, Some(h)))
                    .collect(),
                applied,
                store,
                stats: Arc::new(AgentStats::default()),
                inline: false,
            },
        })
    }
}

/// The guest agent (see the module documentation).
pub struct Agent {
    connector: Box<dyn Connector>,
    key: InstanceKey,
    hello: Hello,
    timing: Timing,
    core: Core,
}

impl fmt::Debug for Agent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Agent")
            .field("connector", &self.connector)
            .field("hello", &self.hello)
            .field("instance", &self.core.instance)
            .field("applied", &self.core.applied)
            .finish_non_exhaustive()
    }
}

impl Agent {
    /// Starts building an agent that authenticates with `key`.
    pub fn builder(key: InstanceKey) -> AgentBuilder {
        AgentBuilder {
            key,
            connector: None,
            instance: None,
            state_dir: None,
            name: "vnf-agent".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            handlers: BTreeMap::new(),
            duplicate: None,
            timing: Timing::default(),
        }
    }

    /// The agent's counters, shared: keep the handle to watch a running agent.
    pub fn stats(&self) -> Arc<AgentStats> {
        self.core.stats.clone()
    }

    /// What the agent has applied (as loaded at build time, before any run).
    pub fn applied(&self) -> &AppliedState {
        &self.core.applied
    }

    /// Runs handlers on the calling thread instead of the blocking pool (blocking API).
    pub(crate) fn apply_inline(mut self) -> Self {
        self.core.inline = true;
        self
    }

    /// Runs until `shutdown` is cancelled (`Ok`) or a fatal error: a channel that cannot be
    /// opened for another reason than "missing" or "busy", or no randomness.
    pub async fn run(mut self, shutdown: CancellationToken) -> Result<(), AgentError> {
        let port = self.connector.describe();
        let mut backoff = Backoff::new(self.timing.backoff_min, self.timing.backoff_max);
        let mut last_open_error: Option<String> = None;
        let services: Vec<&str> = self.hello.services.iter().map(|s| s.as_str()).collect();
        info!(port = %port, services = %services.join(","), "agent starting");
        loop {
            let opened = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(()),
                r = self.connector.connect() => r,
            };
            let delay = match opened {
                Ok(transport) => {
                    bump(&self.core.stats.opens);
                    backoff.reset();
                    last_open_error = None;
                    info!(port = %port, "channel open");
                    match self.serve(transport, &port, &shutdown).await {
                        Ok(()) => {
                            info!(port = %port, "agent stopped");
                            return Ok(());
                        }
                        Err(Stop::Fatal(e)) => return Err(e),
                        Err(Stop::Channel(e)) => {
                            bump(&self.core.stats.channel_errors);
                            warn!(port = %port, error = %e, "channel failed; reopening");
                            backoff.next()
                        }
                    }
                }
                Err(e) if retryable(&e) => {
                    bump(&self.core.stats.open_failures);
                    let text = e.to_string();
                    if last_open_error.as_deref() != Some(&text) {
                        warn!(port = %port, error = %text, "channel not available yet; retrying");
                        last_open_error = Some(text);
                    }
                    backoff.next()
                }
                Err(source) => return Err(AgentError::Open { port, source }),
            };
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(()),
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    async fn serve(
        &mut self,
        transport: Box<dyn Transport>,
        port: &str,
        shutdown: &CancellationToken,
    ) -> Result<(), Stop> {
        let mut conn = Conn {
            transport,
            port,
            session: Session::guest(&self.key),
            hello: &self.hello,
            timing: self.timing,
            core: &mut self.core,
            decoder: FrameDecoder::new(),
            rx: BytesMut::with_capacity(64 * 1024),
            out: VecDeque::new(),
            phase: Phase::NeedBegin,
            read_absent_until: None,
            write_blocked_until: None,
            read_backoff: Backoff::new(self.timing.backoff_min, self.timing.backoff_max),
            write_backoff: Backoff::new(self.timing.backoff_min, self.timing.backoff_max),
            welcome_backoff: Backoff::new(
                self.timing.welcome_timeout,
                self.timing.welcome_timeout_max,
            ),
            span: Span::none(),
            ping_nonce: 0,
        };
        conn.run(shutdown).await
    }
}

fn retryable(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::ResourceBusy | io::ErrorKind::Interrupted
    )
}

/// Why a connection's loop ended, other than shutdown.
enum Stop {
    /// The channel broke: reopen it.
    Channel(io::Error),
    Fatal(AgentError),
}

/// Exponential backoff between `min` and `max`.
#[derive(Debug, Clone, Copy)]
struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Backoff {
        Backoff {
            min,
            max,
            next: min,
        }
    }

    /// The current delay; the following one is twice as long (up to the cap).
    fn next(&mut self) -> Duration {
        let d = self.next;
        self.grow();
        d
    }

    fn current(&self) -> Duration {
        self.next
    }

    fn grow(&mut self) {
        self.next = (self.next * 2).min(self.max);
    }

    fn reset(&mut self) {
        self.next = self.min;
    }
}

/// Everything that outlives a connection: handlers, applied state, counters.
struct Core {
    instance: Option<Uuid>,
    /// `None` while the handler is out applying (and for good if it was lost).
    handlers: BTreeMap<ServiceName, Option<Box<dyn Handler>>>,
    applied: AppliedState,
    store: StateStore,
    stats: Arc<AgentStats>,
    inline: bool,
}

/// What to do with a push, decided before any handler runs.
#[derive(Debug, PartialEq, Eq)]
enum Decision {
    Apply,
    /// The same version and config are applied already: acknowledge again, do not apply.
    Reack,
    Reject(String),
}

impl Core {
    fn decide(&self, push: &ConfigPush) -> Decision {
        if let Some(instance) = self.instance {
            if push.instance != instance {
                return Decision::Reject(format!(
                    "this agent serves instance {instance}, not {}",
                    push.instance
                ));
            }
        }
        if !self.handlers.contains_key(&push.service) {
            return Decision::Reject(format!(
                "no handler for service {} on this agent",
                push.service
            ));
        }
        match self.applied.get(&push.service) {
            Some(a) if push.version < a.version => Decision::Reject(format!(
                "version {} is older than applied {}",
                push.version, a.version
            )),
            Some(a) if push.version == a.version && push.config_id != a.config_id => {
                Decision::Reject(format!(
                    "version {} was applied with config {}, not {}",
                    a.version, a.config_id, push.config_id
                ))
            }
            Some(a) if push.version == a.version => Decision::Reack,
            _ => Decision::Apply,
        }
    }

    async fn handle_push(&mut self, push: ConfigPush, span: &Span) -> Ack {
        let (instance, service, config_id, version) = (
            push.instance,
            push.service.clone(),
            push.config_id,
            push.version,
        );
        let outcome = match self.decide(&push) {
            Decision::Reject(reason) => {
                bump(&self.stats.rejected);
                warn!(parent: span, %service, version, %reason, "push rejected");
                AckOutcome::Rejected { reason }
            }
            Decision::Reack => {
                bump(&self.stats.reacked);
                info!(parent: span, %service, version, "version already applied; acknowledged again");
                AckOutcome::Applied
            }
            Decision::Apply => match self.apply(push).await {
                Ok(()) => {
                    bump(&self.stats.applied);
                    info!(parent: span, %service, version, "applied");
                    AckOutcome::Applied
                }
                Err(rejection) => {
                    bump(&self.stats.rejected);
                    warn!(parent: span, %service, version, reason = %rejection, "handler rejected the update");
                    AckOutcome::Rejected {
                        reason: truncate(rejection.0, MAX_TEXT),
                    }
                }
            },
        };
        Ack {
            instance,
            service,
            config_id,
            version,
            outcome,
        }
    }

    /// Runs the handler and, if it applied the update, persists the new state.
    async fn apply(&mut self, push: ConfigPush) -> Result<(), Rejection> {
        let service = push.service.clone();
        let Some(mut handler) = self.handlers.get_mut(&service).and_then(Option::take) else {
            return Err(Rejection::new(format!(
                "the handler of {service} was lost to an earlier failure; restart the agent"
            )));
        };
        let entry = AppliedEntry {
            config_id: push.config_id,
            version: push.version,
        };
        let mut next = self.applied.clone();
        next.services.insert(service.clone(), entry);
        let store = self.store.clone();
        let update = ConfigUpdate {
            instance: push.instance,
            service: push.service,
            config_id: push.config_id,
            version: push.version,
            payload: push.payload,
        };
        let work = move || {
            let result =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| handler.apply(&update)))
                    .unwrap_or_else(|panic| {
                        let what = panic
                            .downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| panic.downcast_ref::<String>().cloned())
                            .unwrap_or_default();
                        Err(Rejection::new(format!("the handler panicked: {what}")))
                    });
            // Persisted before the Ack leaves, so that after a crash or reboot the agent still
            // knows this version is applied: it reports it and never applies it again.
            let saved = result.is_ok().then(|| store.save(&next));
            (handler, result, saved, next)
        };
        let (handler, result, saved, next) = if self.inline {
            work()
        } else {
            match tokio::task::spawn_blocking(work).await {
                Ok(done) => done,
                Err(e) => {
                    error!(%service, error = %e, "apply task failed");
                    return Err(Rejection::new("the apply task failed inside the agent"));
                }
            }
        };
        if let Some(slot) = self.handlers.get_mut(&service) {
            *slot = Some(handler);
        }
        result?;
        if let Some(Err(e)) = saved {
            // The update is live; only the record of it is not. After a restart the controller
            // re-sends this version (never an older one) and it is applied once more.
            bump(&self.stats.persist_errors);
            error!(%service, error = %e, "applied, but the applied state could not be saved");
        }
        self.applied = next;
        Ok(())
    }
}

/// Cuts `s` to at most `max` bytes on a character boundary.
fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// A session must be begun as soon as the host can be written to.
    NeedBegin,
    /// Hello queued (`deadline: None`) or sent, waiting for the Welcome until `deadline`.
    AwaitingWelcome { deadline: Option<Instant> },
    Established {
        heartbeat: Option<Duration>,
        last_rx: Instant,
        last_ping: Instant,
    },
}

/// One open channel.
struct Conn<'a> {
    transport: Box<dyn Transport>,
    port: &'a str,
    session: Session,
    hello: &'a Hello,
    timing: Timing,
    core: &'a mut Core,
    decoder: FrameDecoder,
    rx: BytesMut,
    /// Pending writes, each at most one frame (and at most [`MAX_WRITE`] bytes).
    out: VecDeque<BytesMut>,
    phase: Phase,
    /// The host was absent at the last read: no reads until then.
    read_absent_until: Option<Instant>,
    /// The last write found the host absent (or the port full): no writes until then.
    write_blocked_until: Option<Instant>,
    read_backoff: Backoff,
    write_backoff: Backoff,
    welcome_backoff: Backoff,
    /// The current session's span.
    span: Span,
    ping_nonce: u64,
}

enum Wake {
    Shutdown,
    Timer,
    Read(io::Result<usize>),
}

impl Conn<'_> {
    async fn run(&mut self, shutdown: &CancellationToken) -> Result<(), Stop> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            if shutdown.is_cancelled() {
                self.drain_on_shutdown().await;
                return Ok(());
            }
            let now = Instant::now();
            if self.read_absent_until.is_some_and(|t| t <= now) {
                self.read_absent_until = None;
            }
            if self.write_blocked_until.is_some_and(|t| t <= now) {
                self.write_blocked_until = None;
            }
            self.on_timers(now)?;
            if self.write_blocked_until.is_none() {
                if self.phase == Phase::NeedBegin {
                    self.begin()?;
                }
                self.flush(shutdown).await.map_err(Stop::Channel)?;
            }
            let wake = self.next_wake();
            let can_read = self.read_absent_until.is_none();
            let event = tokio::select! {
                biased;
                _ = shutdown.cancelled() => Wake::Shutdown,
                _ = sleep_until(wake) => Wake::Timer,
                r = self.transport.read(&mut buf), if can_read => Wake::Read(r),
            };
            match event {
                Wake::Shutdown | Wake::Timer => {}
                Wake::Read(Ok(0)) => self.host_absent(),
                Wake::Read(Ok(n)) => {
                    self.read_backoff.reset();
                    self.rx.extend_from_slice(&buf[..n]);
                    self.process().await?;
                }
                Wake::Read(Err(e)) if e.kind() == io::ErrorKind::Interrupted => {}
                Wake::Read(Err(e)) => return Err(Stop::Channel(e)),
            }
        }
    }

    /// The earliest timer: end of a backoff, Welcome deadline, heartbeat.
    fn next_wake(&self) -> Option<Instant> {
        let phase = match self.phase {
            Phase::AwaitingWelcome { deadline } => deadline,
            Phase::Established {
                heartbeat: Some(interval),
                last_rx,
                last_ping,
            } => Some(
                (last_rx.max(last_ping) + interval)
                    .min(last_rx + interval * self.timing.heartbeat_misses),
            ),
            _ => None,
        };
        [self.read_absent_until, self.write_blocked_until, phase]
            .into_iter()
            .flatten()
            .min()
    }

    fn on_timers(&mut self, now: Instant) -> Result<(), Stop> {
        match self.phase {
            Phase::AwaitingWelcome {
                deadline: Some(deadline),
            } if deadline <= now => {
                bump(&self.core.stats.welcome_timeouts);
                self.welcome_backoff.grow();
                warn!(parent: &self.span, "no Welcome in time; starting over with a new nonce");
                self.begin()?;
            }
            Phase::Established {
                heartbeat: Some(interval),
                last_rx,
                last_ping,
            } => {
                if now >= last_rx + interval * self.timing.heartbeat_misses {
                    bump(&self.core.stats.heartbeat_timeouts);
                    warn!(parent: &self.span, silent = ?(now - last_rx), "controller silent; starting a new session");
                    self.restart_session();
                } else if now >= last_rx.max(last_ping) + interval {
                    self.ping_nonce += 1;
                    let ping = Message::Ping(Ping {
                        nonce: self.ping_nonce,
                    });
                    self.send(&ping);
                    bump(&self.core.stats.pings_sent);
                    self.phase = Phase::Established {
                        heartbeat: Some(interval),
                        last_rx,
                        last_ping: now,
                    };
                }
            }
            _ => {}
        }
        Ok(())
    }

    /// Forgets the current session; a new one begins when the host can be written to.
    fn restart_session(&mut self) {
        self.out.clear();
        self.phase = Phase::NeedBegin;
    }

    /// Writes the resync marker and a Hello with a fresh nonce, dropping unsent output of the
    /// previous session.
    fn begin(&mut self) -> Result<(), Stop> {
        let mut nonce = [0u8; 8];
        getrandom::fill(&mut nonce).map_err(|e| Stop::Fatal(AgentError::Random(e)))?;
        let nonce = u64::from_le_bytes(nonce);
        let n = self
            .core
            .stats
            .sessions_started
            .fetch_add(1, Ordering::Relaxed)
            + 1;
        self.span = tracing::info_span!(
            "session",
            port = %self.port,
            n,
            epoch = tracing::field::Empty
        );
        let mut out = BytesMut::new();
        // The Hello is built from settings the builder validated: failing here is a bug.
        self.session
            .begin(nonce, self.hello, &mut out)
            .map_err(|e| Stop::Fatal(e.into()))?;
        debug!(parent: &self.span, "Hello queued");
        self.out.clear();
        self.queue(out);
        self.phase = Phase::AwaitingWelcome { deadline: None };
        Ok(())
    }

    /// The host is gone (read end-of-file): back off, and start a new session once it is back.
    fn host_absent(&mut self) {
        bump(&self.core.stats.host_absent);
        let wait = self.read_backoff.next();
        self.read_absent_until = Some(Instant::now() + wait);
        if wait == self.timing.backoff_min {
            info!(parent: &self.span, "host absent; waiting for it");
        }
        match self.phase {
            // The Hello has not gone out yet: it still opens the next session.
            Phase::AwaitingWelcome { deadline: None } | Phase::NeedBegin => {}
            _ => self.restart_session(),
        }
    }

    fn queue(&mut self, mut bytes: BytesMut) {
        while bytes.len() > MAX_WRITE {
            let piece = bytes.split_to(MAX_WRITE);
            self.out.push_back(piece);
        }
        if !bytes.is_empty() {
            self.out.push_back(bytes);
        }
    }

    fn send(&mut self, msg: &Message) {
        let mut out = BytesMut::new();
        match self.session.send(msg, &mut out) {
            Ok(()) => self.queue(out),
            Err(e) => {
                error!(parent: &self.span, kind = %msg.kind(), error = %e, "cannot send");
            }
        }
    }

    /// Writes pending output until it is all out or the host cannot take more.
    async fn flush(&mut self, shutdown: &CancellationToken) -> io::Result<()> {
        while let Some(front) = self.out.front_mut() {
            let written = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return Ok(()),
                r = self.transport.write(front) => r,
            };
            let n = match written {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if n == 0 {
                self.write_blocked_until = Some(Instant::now() + self.write_backoff.next());
                return Ok(());
            }
            self.write_backoff.reset();
            front.advance(n.min(front.len()));
            if front.is_empty() {
                self.out.pop_front();
                if self.phase == (Phase::AwaitingWelcome { deadline: None }) && self.out.is_empty()
                {
                    let wait = self.welcome_backoff.current();
                    self.phase = Phase::AwaitingWelcome {
                        deadline: Some(Instant::now() + wait),
                    };
                    debug!(parent: &self.span, ?wait, "Hello sent");
                }
            }
        }
        Ok(())
    }

    /// Shutdown: write out what is pending (Acks of applied updates), briefly.
    async fn drain_on_shutdown(&mut self) {
        let grace = self.timing.shutdown_grace;
        let never = CancellationToken::new();
        let _ = tokio::time::timeout(grace, async {
            while !self.out.is_empty() && self.write_blocked_until.is_none() {
                if self.flush(&never).await.is_err() {
                    return;
                }
            }
        })
        .await;
    }

    /// Handles every complete item in the receive buffer.
    async fn process(&mut self) -> Result<(), Stop> {
        while let Some(item) = self.decoder.decode(&mut self.rx) {
            match item {
                Decoded::Resync => {
                    bump(&self.core.stats.resyncs);
                    debug!(parent: &self.span, "resync marker from the host");
                    self.begin()?;
                }
                Decoded::Discarded { bytes, reason } => {
                    self.core
                        .stats
                        .discarded_bytes
                        .fetch_add(bytes as u64, Ordering::Relaxed);
                    debug!(parent: &self.span, bytes, %reason, "skipped bytes");
                }
                Decoded::Frame(frame) => match self.session.open(&frame) {
                    Ok(None) => {}
                    Ok(Some(msg)) => self.handle(msg).await,
                    Err(e @ relay_protocol::Error::OldEpoch { .. }) => {
                        bump(&self.core.stats.stale_frames);
                        debug!(parent: &self.span, error = %e, "stale frame skipped");
                    }
                    Err(e) => {
                        bump(&self.core.stats.protocol_errors);
                        warn!(parent: &self.span, error = %e, "frame rejected");
                    }
                },
            }
        }
        Ok(())
    }

    async fn handle(&mut self, msg: Message) {
        let now = Instant::now();
        if let Phase::Established {
            heartbeat,
            last_ping,
            ..
        } = self.phase
        {
            self.phase = Phase::Established {
                heartbeat,
                last_rx: now,
                last_ping,
            };
        }
        match msg {
            Message::Welcome(w) => self.on_welcome(w, now),
            Message::ConfigPush(push) if self.established() => {
                debug!(parent: &self.span, ?push, "push");
                let ack = self.core.handle_push(push, &self.span).await;
                self.send(&Message::Ack(ack));
            }
            Message::Ping(Ping { nonce }) if self.established() => {
                self.send(&Message::Pong(Pong { nonce }));
            }
            Message::Pong(_) if self.established() => {}
            Message::Error(e) => {
                bump(&self.core.stats.peer_errors);
                warn!(parent: &self.span, code = %e.code, message = %e.message, "error from the controller");
            }
            other => {
                bump(&self.core.stats.protocol_errors);
                warn!(parent: &self.span, kind = %other.kind(), "unexpected message from the controller");
            }
        }
    }

    fn established(&self) -> bool {
        matches!(self.phase, Phase::Established { .. })
    }

    fn on_welcome(&mut self, w: Welcome, now: Instant) {
        if w.protocol != PROTOCOL_VERSION {
            // Leave the phase as it is: the Welcome deadline starts another attempt later.
            bump(&self.core.stats.protocol_errors);
            error!(parent: &self.span, protocol = w.protocol, "the controller chose a protocol version this agent does not speak");
            return;
        }
        bump(&self.core.stats.handshakes);
        self.welcome_backoff.reset();
        self.span
            .record("epoch", format_args!("{:#018x}", w.session_epoch));
        let heartbeat = (w.heartbeat_interval_ms > 0)
            .then(|| Duration::from_millis(w.heartbeat_interval_ms.into()).max(MIN_HEARTBEAT));
        info!(parent: &self.span, ?heartbeat, "session established");
        self.phase = Phase::Established {
            heartbeat,
            last_rx: now,
            last_ping: now,
        };
        let applied = self.core.applied.report(self.hello.services.iter());
        self.send(&Message::ConfigRequest(ConfigRequest { applied }));
    }
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests;
