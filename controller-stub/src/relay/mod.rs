//! The relay endpoint: where relay-host daemons connect (mutual TLS) to carry their guests'
//! sealed frames, and where desired VNF configuration leaves the controller.
//!
//! Each accepted connection is one task ([`conn`]). TLS 1.3 with a client certificate issued
//! under the configured CA is required ([`tls`]); the relay's host identity is the names its
//! certificate carries, and its `Register` must name one of them. A registered connection
//! records the host and its guest set in the database ([`store`]), so the API can show them;
//! `Register` replaces the set (with the `GuestUp`s right behind it when the list did not fit
//! one envelope), `GuestUp`/`GuestDown` edit it. A host that connects again replaces its
//! previous connection.
//!
//! Per guest the connection holds a protocol [`Session`](relay_protocol::Session) (controller
//! role) keyed with the instance key from the database; a guest without a key, or a frame that
//! fails authentication, gets `FrameRejected`. The instance is the one the relay stamped from
//! libvirt and the key proves it, so everything a session sends or accepts is about that
//! instance only: pushes carry it, an Ack naming another instance is refused, and a
//! ConfigRequest is answered with that instance's configurations alone.
//!
//! Delivery is level-triggered. A session becomes live when the agent sends its ConfigRequest
//! (which proves the guest holds the key in this epoch, so a replayed Hello gets nothing); the
//! connection then pushes every configuration the agent does not report as applied. A change
//! through the API reaches live sessions at once through the [`Notifier`] (a broadcast every
//! connection listens to); a periodic reconcile covers changes made by another controller
//! replica sharing the database. After a relay (re)connects every listed guest is asked to
//! resync, so sessions, and with them delivery, start over.
//!
//! Other parts of the controller reach relay hosts through [`HostLinks`]: the OVS chain
//! driver queues `ChainFlows`/`ChainRemoved`/`FlowSync` for a host, and hears of registrations
//! (to send a host everything it should hold), disconnects and `ChainStatus` reports as
//! [`HostEvent`]s.
//!
//! Everything is bounded: envelopes by `uplink::MAX_ENVELOPE` (checked before allocation),
//! guests per connection by `uplink::MAX_GUESTS`, messages from a guest by
//! [`GUEST_MESSAGE_MAX`], output per connection by a high-water mark above which nothing more
//! is read from the relay, pending pushes by one entry per (guest, service), and connections by
//! [`RelayOptions::max_connections`]. Shutdown cancels every connection, which hands what it has
//! queued to its writer and closes TLS within the grace period.

mod conn;
pub mod store;
pub mod tls;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use relay_protocol::flow::ChainStatus;
use relay_protocol::uplink::ControllerMsg;
use relay_protocol::Uuid;
use rustls::ServerConfig;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc, Semaphore};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn, Instrument};

use crate::db::Db;

pub use tls::{server_config, TlsError};

/// Largest message the controller reassembles from a guest. Guests send Acks, ConfigRequests,
/// Events and heartbeats, all far smaller; the bound keeps a hostile guest from making the
/// controller hold megabytes per guest.
pub const GUEST_MESSAGE_MAX: usize = 1 << 20;

/// Tells the relay connections that an instance's desired state (configurations or key)
/// changed. Cheap to clone; the API holds one in its state.
#[derive(Debug, Clone)]
pub struct Notifier {
    tx: broadcast::Sender<Uuid>,
}

impl Default for Notifier {
    fn default() -> Self {
        // A connection that falls this far behind reconciles all its guests instead.
        let (tx, _) = broadcast::channel(1024);
        Notifier { tx }
    }
}

impl Notifier {
    /// Desired state of `instance` changed; connections serving it deliver it now.
    pub fn changed(&self, instance: Uuid) {
        // No receiver means no relay connection: nothing to tell.
        let _ = self.tx.send(instance);
    }

    fn subscribe(&self) -> broadcast::Receiver<Uuid> {
        self.tx.subscribe()
    }
}

/// Something that happened on a relay host's link.
#[derive(Debug, Clone, PartialEq)]
pub enum HostEvent {
    /// A relay registered as `host` (a new connection, or one replacing the previous): it
    /// holds only what is sent to it from now on, so send it everything it should hold.
    Registered { host: String },
    /// The host's connection ended.
    Disconnected { host: String },
    /// The host reported where a chain's rules stand on its bridge.
    ChainStatus { host: String, status: ChainStatus },
}

/// Why [`HostLinks::send`] did not queue a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostLinkError {
    #[error("no relay is connected as host {0:?}")]
    NotConnected(String),
    #[error("{0} is the relay endpoint's own message and cannot be sent through a host link")]
    NotAllowed(&'static str),
}

/// Messages queued per host connection; [`HostLinks::send`] waits while it is full.
const HOST_QUEUE: usize = 256;

/// The relay hosts' connections as the rest of the controller sees them: a queue per connected
/// host, and the events of all hosts. Cheap to clone.
#[derive(Debug, Clone)]
pub struct HostLinks {
    inner: Arc<HostLinksInner>,
}

#[derive(Debug)]
struct HostLinksInner {
    senders: std::sync::Mutex<HashMap<String, (u64, mpsc::Sender<ControllerMsg>)>>,
    events: broadcast::Sender<HostEvent>,
}

impl Default for HostLinks {
    fn default() -> Self {
        // Room for a status report of every chain a host can hold (a bulk create reports
        // them together); a subscriber that still falls behind resynchronises every host.
        let (events, _) = broadcast::channel(relay_protocol::flow::MAX_SYNC_COOKIES);
        HostLinks {
            inner: Arc::new(HostLinksInner {
                senders: std::sync::Mutex::new(HashMap::new()),
                events,
            }),
        }
    }
}

impl HostLinks {
    /// Events of every host from now on. A receiver that lags gets `Lagged` and should treat
    /// every connected host as newly registered.
    pub fn subscribe(&self) -> broadcast::Receiver<HostEvent> {
        self.inner.events.subscribe()
    }

    /// The hosts with a registered connection now.
    pub fn connected(&self) -> Vec<String> {
        let mut hosts: Vec<String> = self.senders().keys().cloned().collect();
        hosts.sort();
        hosts
    }

    /// Queues `msg` for the relay connected as `host`, waiting while its queue is full.
    /// Messages of the endpoint's own (guest frames, registration, heartbeats) are refused.
    pub async fn send(&self, host: &str, msg: ControllerMsg) -> Result<(), HostLinkError> {
        let own = match &msg {
            ControllerMsg::Registered(_) => Some("Registered"),
            ControllerMsg::ToGuest { .. } => Some("ToGuest"),
            ControllerMsg::FrameRejected { .. } => Some("FrameRejected"),
            ControllerMsg::ResyncGuest { .. } => Some("ResyncGuest"),
            ControllerMsg::Ping { .. } => Some("Ping"),
            ControllerMsg::Pong { .. } => Some("Pong"),
            _ => None,
        };
        if let Some(name) = own {
            return Err(HostLinkError::NotAllowed(name));
        }
        let sender = self.senders().get(host).map(|(_, tx)| tx.clone());
        let not_connected = || HostLinkError::NotConnected(host.to_owned());
        sender
            .ok_or_else(not_connected)?
            .send(msg)
            .await
            .map_err(|_| not_connected())
    }

    fn senders(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, (u64, mpsc::Sender<ControllerMsg>)>> {
        // The map stays consistent whatever a panicking holder did: every update is one call.
        self.inner
            .senders
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Connection `id` registered as `host`: its queue replaces the previous connection's.
    fn attach(&self, host: &str, id: u64) -> mpsc::Receiver<ControllerMsg> {
        let (tx, rx) = mpsc::channel(HOST_QUEUE);
        self.senders().insert(host.to_owned(), (id, tx));
        self.event(HostEvent::Registered {
            host: host.to_owned(),
        });
        rx
    }

    /// Connection `id` of `host` ended (nothing happens if another one replaced it).
    fn detach(&self, host: &str, id: u64) {
        let removed = {
            let mut senders = self.senders();
            match senders.get(host) {
                Some((current, _)) if *current == id => senders.remove(host).is_some(),
                _ => false,
            }
        };
        if removed {
            self.event(HostEvent::Disconnected {
                host: host.to_owned(),
            });
        }
    }

    fn event(&self, event: HostEvent) {
        // No subscriber: nobody is interested.
        let _ = self.inner.events.send(event);
    }
}

/// Timings and bounds of the endpoint.
#[derive(Debug, Clone)]
pub struct RelayOptions {
    /// Announced to relays in `Registered`: they ping this often, and a relay silent for three
    /// intervals is dropped.
    pub heartbeat_interval: Duration,
    /// Announced to agents in `Welcome`: they ping this often.
    pub guest_heartbeat_interval: Duration,
    /// How often every live session is compared with the database, for changes that did not
    /// come through this process's API (another replica).
    pub reconcile_interval: Duration,
    /// Limit on the TLS handshake and on the relay's `Register`.
    pub handshake_timeout: Duration,
    /// Relay connections served at once; more are closed at once.
    pub max_connections: usize,
    /// How long shutdown waits for connections to write what they queued.
    pub shutdown_grace: Duration,
}

impl Default for RelayOptions {
    fn default() -> Self {
        RelayOptions {
            heartbeat_interval: Duration::from_secs(10),
            guest_heartbeat_interval: Duration::from_secs(30),
            reconcile_interval: Duration::from_secs(60),
            handshake_timeout: Duration::from_secs(10),
            max_connections: 1024,
            shutdown_grace: Duration::from_secs(5),
        }
    }
}

/// What the endpoint works with.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub db: Db,
    /// The same notifier the API's state holds.
    pub notifier: Notifier,
    /// The host links the rest of the controller (the chain driver) uses.
    pub hosts: HostLinks,
    pub tls: Arc<ServerConfig>,
    pub options: RelayOptions,
}

/// The connections of registered hosts, so that a host connecting again replaces its previous
/// connection, and only the current one marks the host disconnected when it ends.
#[derive(Debug, Default)]
struct Registry {
    hosts: tokio::sync::Mutex<HashMap<String, (u64, CancellationToken)>>,
    next_id: AtomicU64,
}

impl Registry {
    /// Records the registration (host and guests) and returns the connection's id and the
    /// token that is cancelled when another connection registers as the same host.
    async fn register(
        &self,
        db: &Db,
        host: &str,
        relay_version: &str,
        peer: &str,
        guests: &[(String, String)],
    ) -> Result<(u64, CancellationToken), sqlx::Error> {
        // Held across the write so that a register and an unregister of one host never
        // interleave.
        let mut hosts = self.hosts.lock().await;
        let mut tx = db.begin_write().await?;
        store::register_host(tx.conn(), host, relay_version, peer, guests).await?;
        tx.commit().await?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let token = CancellationToken::new();
        if let Some((_, previous)) = hosts.insert(host.to_owned(), (id, token.clone())) {
            previous.cancel();
        }
        Ok((id, token))
    }

    /// The connection `id` of `host` ended.
    async fn unregister(&self, db: &Db, host: &str, id: u64) {
        let mut hosts = self.hosts.lock().await;
        if hosts.get(host).is_none_or(|(current, _)| *current != id) {
            return;
        }
        hosts.remove(host);
        let result = async {
            let mut tx = db.begin_write().await?;
            store::host_disconnected(tx.conn(), host).await?;
            tx.commit().await
        }
        .await;
        if let Err(e) = result {
            warn!(host, error = %crate::error_chain(&e), "cannot record the relay's disconnect");
        }
    }
}

/// What every connection task shares.
#[derive(Debug)]
struct Shared {
    db: Db,
    notifier: Notifier,
    hosts: HostLinks,
    options: RelayOptions,
    registry: Registry,
}

/// Serves relay connections on an already bound listener until `shutdown` is cancelled, then
/// lets the connections finish within the grace period.
pub async fn serve(listener: TcpListener, endpoint: Endpoint, shutdown: CancellationToken) {
    let Endpoint {
        db,
        notifier,
        hosts,
        tls,
        options,
    } = endpoint;
    // Whatever the previous run recorded, no relay is connected to this process yet.
    match db.begin_write().await {
        Ok(mut tx) => {
            let r = store::all_hosts_disconnected(tx.conn()).await;
            if let Err(e) = match r {
                Ok(()) => tx.commit().await,
                Err(e) => Err(e),
            } {
                warn!(error = %crate::error_chain(&e), "cannot reset the relay hosts' state");
            }
        }
        Err(e) => warn!(error = %crate::error_chain(&e), "cannot reset the relay hosts' state"),
    }
    let acceptor = TlsAcceptor::from(tls);
    let slots = Arc::new(Semaphore::new(options.max_connections));
    let grace = options.shutdown_grace;
    let shared = Arc::new(Shared {
        db,
        notifier,
        hosts,
        options,
        registry: Registry::default(),
    });
    let tracker = TaskTracker::new();
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "relay endpoint listening");
    }
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: pause instead of spinning.
                warn!(error = %e, "relay endpoint: accept failed");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                }
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            warn!(peer.addr = %peer, "relay endpoint: too many connections; refused");
            continue;
        };
        let span =
            tracing::info_span!("relay", peer.addr = %peer, relay.host = tracing::field::Empty);
        let task = conn::run(
            tcp,
            peer,
            acceptor.clone(),
            shared.clone(),
            shutdown.clone(),
        );
        tracker.spawn(
            async move {
                task.await;
                drop(slot);
            }
            .instrument(span),
        );
    }
    tracker.close();
    // Connections bound their own flush by the grace period; the margin covers closing TLS.
    if tokio::time::timeout(grace + Duration::from_secs(1), tracker.wait())
        .await
        .is_err()
    {
        warn!(
            connections = tracker.len(),
            "relay connections still open after the grace period; abandoning them"
        );
    }
    info!("relay endpoint stopped");
}
