//! The router: the daemon's core, between discovery, the guest sessions and the uplink.
//!
//! It owns the map of guests (domain UUID -> session handle), applies the [`GuestChange`]s
//! discovery sends (start a session, restart it when the socket moved, stop it), records the
//! guest set the uplink announces, and routes what the controller sends: frames and resync
//! requests to the guest they name, rejections to the guest's auth-failure count. It never
//! waits for a guest (see `guest.rs`), so one guest cannot hold up another or the uplink.
//!
//! With an `[ovs]` section the router also hands the controller's chain rules (`ChainFlows`,
//! `ChainRemoved`, `FlowSync`) to the OVS programmer's task (`crate::ovs`), which reports
//! chain states back through the uplink; a full queue towards it holds the router up rather
//! than losing a part of an update.
//!
//! [`Relay::run`] takes the discovery stream as a channel so that tests and benchmarks feed it
//! directly; [`crate::run`] wires libvirt discovery to it.
//!
//! Shutdown (the token is cancelled): the router stops, every session writes what is queued for
//! its guest and hands what it read to the uplink, the uplink forwards that and closes TLS, all
//! within the configured grace period. Frames are written whole or not at all.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use relay_protocol::uplink::ControllerMsg;
use relay_protocol::{RawFrame, Uuid};
use rustls::ClientConfig;
use rustls_pki_types::ServerName;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::discovery::{GuestChange, GuestChannel};
use crate::guest::{self, Budget, GuestEnv, GuestHandle, ToGuest};
use crate::guests::GuestSet;
use crate::metrics::{self, Metrics};
use crate::ovs::{self, FlowCommand, Programmer};
use crate::uplink::{Settings, Uplink};
use crate::{tls, Error};

/// Capacity of the uplink's shared queue that every guest's forwarder feeds.
const UPLINK_CHANNEL: usize = 1024;
/// Capacity of the queue from the uplink to the router.
const ROUTER_CHANNEL: usize = 1024;
/// Capacity of the queue from the router to the OVS programmer.
const OVS_CHANNEL: usize = 1024;

/// A configured relay, TLS material loaded; [`Relay::run`] runs it.
#[derive(Debug)]
pub struct Relay {
    config: Config,
    tls: Arc<ClientConfig>,
    server_name: ServerName<'static>,
    metrics: Metrics,
}

impl Relay {
    /// Validates the configuration and loads the certificates and key; fails on the first
    /// problem, saying what it is.
    pub fn new(config: Config) -> Result<Relay, Error> {
        config.validate()?;
        let tls = tls::client_config(&config.ca, &config.cert, &config.key)?;
        let server_name = tls::server_name(&config.server_name)?;
        Ok(Relay {
            config,
            tls,
            server_name,
            metrics: Metrics::new(),
        })
    }

    /// The relay's metrics (shared: values change as it runs).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Binds the metrics endpoint (if configured) and runs until `shutdown`.
    pub async fn run(
        self,
        discovery: mpsc::Receiver<GuestChange>,
        shutdown: CancellationToken,
    ) -> Result<(), Error> {
        let listener = match self.config.metrics_listen {
            Some(addr) => Some(bind_metrics(addr).await?),
            None => None,
        };
        self.serve(listener, discovery, shutdown).await
    }

    /// Runs with an already bound metrics listener (or none) until `shutdown` is cancelled.
    /// Returns an error if discovery ends first (its sender was dropped): a relay that no
    /// longer learns about guests should be restarted.
    pub async fn serve(
        self,
        metrics_listener: Option<TcpListener>,
        discovery: mpsc::Receiver<GuestChange>,
        shutdown: CancellationToken,
    ) -> Result<(), Error> {
        let stop = shutdown.child_token();
        let tracker = TaskTracker::new();
        if let Some(listener) = metrics_listener {
            if let Ok(addr) = listener.local_addr() {
                info!(%addr, "metrics endpoint listening");
            }
            tracker.spawn(metrics::serve(listener, self.metrics.clone(), stop.clone()));
        }
        let guests = Arc::new(GuestSet::default());
        let (data_tx, data_rx) = mpsc::channel(UPLINK_CHANNEL);
        let (ctl_tx, ctl_rx) = mpsc::channel(ROUTER_CHANNEL);
        let settings = Settings {
            controller: self.config.controller.clone(),
            server_name: self.server_name.clone(),
            tls: self.tls.clone(),
            host: self.config.host.clone(),
            heartbeat: self.config.heartbeat_interval,
            backlog: self.config.limits.uplink_queue,
            grace: self.config.shutdown_grace,
        };
        let uplink = Uplink::new(
            settings,
            guests.clone(),
            data_rx,
            ctl_tx,
            self.metrics.clone(),
        );
        tracker.spawn(uplink.run(stop.clone()));
        let ovs = self.config.ovs.as_ref().map(|cfg| {
            let (tx, rx) = mpsc::channel(OVS_CHANNEL);
            let programmer = Programmer::new(cfg.bridge(), self.metrics.ovs());
            tracker.spawn(ovs::run(
                programmer,
                cfg.clone(),
                rx,
                data_tx.clone(),
                stop.clone(),
            ));
            tx
        });

        let router = Router {
            sessions: HashMap::new(),
            env: GuestEnv {
                limits: self.config.limits.clone(),
                uplink: data_tx,
                grace: self.config.shutdown_grace,
                budget: Budget::new(
                    self.config
                        .limits
                        .to_guest_buffer_mib
                        .saturating_mul(1 << 20),
                ),
            },
            guests,
            metrics: self.metrics.clone(),
            tracker: tracker.clone(),
            stop: stop.clone(),
            ovs,
        };
        crate::notify::ready();
        info!(
            host = %self.config.host,
            controller = %self.config.controller,
            "relay running"
        );
        let ended = router.run(discovery, ctl_rx).await;
        crate::notify::stopping();
        stop.cancel();
        tracker.close();
        // The sessions and the uplink bound their own work by the grace period; the margin
        // covers closing sockets.
        let limit = self.config.shutdown_grace + Duration::from_secs(1);
        if tokio::time::timeout(limit, tracker.wait()).await.is_err() {
            warn!(
                tasks = tracker.len(),
                "tasks still running after the shutdown grace period; abandoning them"
            );
        }
        info!("relay stopped");
        match ended {
            RouterEnd::Shutdown => Ok(()),
            RouterEnd::DiscoveryEnded => Err(Error::DiscoveryEnded),
        }
    }
}

async fn bind_metrics(addr: SocketAddr) -> Result<TcpListener, Error> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| Error::MetricsListen { addr, source })
}

/// Runs a relay on `config` with guests from `discovery` until `shutdown` is cancelled.
pub async fn run(
    config: Config,
    discovery: mpsc::Receiver<GuestChange>,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    Relay::new(config)?.run(discovery, shutdown).await
}

enum RouterEnd {
    Shutdown,
    DiscoveryEnded,
}

struct Router {
    sessions: HashMap<Uuid, GuestHandle>,
    env: GuestEnv,
    guests: Arc<GuestSet>,
    metrics: Metrics,
    tracker: TaskTracker,
    stop: CancellationToken,
    /// The OVS programmer's queue, if OVS programming is configured.
    ovs: Option<mpsc::Sender<FlowCommand>>,
}

impl Router {
    async fn run(
        mut self,
        mut discovery: mpsc::Receiver<GuestChange>,
        mut from_controller: mpsc::Receiver<ControllerMsg>,
    ) -> RouterEnd {
        loop {
            tokio::select! {
                biased;
                _ = self.stop.cancelled() => return RouterEnd::Shutdown,
                msg = from_controller.recv() => match msg {
                    Some(msg) => self.route(msg).await,
                    // The uplink only ends on shutdown.
                    None => return RouterEnd::Shutdown,
                },
                change = discovery.recv() => match change {
                    Some(change) => self.apply(change),
                    None => {
                        warn!("discovery ended; stopping");
                        return RouterEnd::DiscoveryEnded;
                    }
                },
            }
        }
        // Dropping `self` drops the router's sender into the uplink queue and the session
        // handles; the sessions themselves stop on the (cancelled) parent token.
    }

    fn apply(&mut self, change: GuestChange) {
        match change {
            GuestChange::Up(channel) => self.up(channel),
            GuestChange::Down(instance) => self.down(instance),
        }
        self.metrics.set_guests(self.sessions.len());
    }

    fn up(&mut self, channel: GuestChannel) {
        if let Some(existing) = self.sessions.get_mut(&channel.uuid) {
            if existing.channel.socket == channel.socket {
                if existing.channel.name != channel.name {
                    existing.channel.name = channel.name.clone();
                    self.guests.up(channel.uuid, &channel.name);
                }
                // A reconcile repeating what we know.
                return;
            }
            info!(
                vm.uuid = %channel.uuid,
                old = %existing.channel.socket.display(),
                new = %channel.socket.display(),
                "guest channel socket moved; restarting its session"
            );
            existing.stop();
        } else {
            info!(
                vm.uuid = %channel.uuid,
                vm.name = %channel.name,
                port.path = %channel.socket.display(),
                "guest up"
            );
        }
        // Announced before the session starts, so the controller hears of the guest before
        // any of its frames.
        self.guests.up(channel.uuid, &channel.name);
        let instance = channel.uuid;
        let handle = guest::spawn(
            channel,
            &self.env,
            self.metrics.guest(instance),
            &self.tracker,
            &self.stop,
        );
        self.sessions.insert(instance, handle);
    }

    fn down(&mut self, instance: Uuid) {
        let Some(handle) = self.sessions.remove(&instance) else {
            debug!(vm.uuid = %instance, "down for a guest without a session");
            return;
        };
        info!(vm.uuid = %instance, vm.name = %handle.channel.name, "guest down");
        handle.stop();
        self.guests.down(instance);
        self.metrics.remove_guest(instance);
    }

    async fn route(&mut self, msg: ControllerMsg) {
        match msg {
            ControllerMsg::ToGuest { instance, frame } => {
                let Some(session) = self.sessions.get(&instance) else {
                    self.metrics.unroutable();
                    debug!(vm.uuid = %instance, "frame for an unknown guest dropped");
                    return;
                };
                let frame = Bytes::from(frame);
                // Exactly one frame with a valid header and no resync marker inside: the only
                // thing the relay ever writes to a guest, so that a write is always a frame.
                if let Err(e) = RawFrame::parse(frame.clone()) {
                    session.invalid_from_controller();
                    warn!(vm.uuid = %instance, error = %e, "controller sent an invalid frame; dropped");
                    return;
                }
                session.deliver(ToGuest::Frame(frame));
            }
            ControllerMsg::ResyncGuest { instance } => match self.sessions.get(&instance) {
                Some(session) => session.deliver(ToGuest::Resync),
                None => self.metrics.unroutable(),
            },
            ControllerMsg::FrameRejected { instance, reason } => {
                if let Some(session) = self.sessions.get(&instance) {
                    session.auth_failure();
                }
                // Counted; a hostile guest could make a log line per frame.
                debug!(vm.uuid = %instance, %reason, "controller rejected a frame from the guest");
            }
            ControllerMsg::ChainFlows(part) => self.to_ovs(FlowCommand::ChainFlows(part)).await,
            ControllerMsg::ChainRemoved { cookie } => {
                self.to_ovs(FlowCommand::ChainRemoved(cookie)).await
            }
            ControllerMsg::FlowSync { cookies } => {
                self.to_ovs(FlowCommand::FlowSync(cookies)).await
            }
            // Answered by the uplink itself.
            ControllerMsg::Registered(_)
            | ControllerMsg::Ping { .. }
            | ControllerMsg::Pong { .. } => {}
        }
    }

    async fn to_ovs(&self, cmd: FlowCommand) {
        let Some(ovs) = &self.ovs else {
            debug!("chain rules from the controller, but OVS programming is not configured");
            return;
        };
        // Waits when the programmer is behind: parts of an update must not be lost.
        tokio::select! {
            _ = self.stop.cancelled() => {}
            _ = ovs.send(cmd) => {}
        }
    }
}
