//! The host side of the OVS chain driver: programs the local integration bridge with the
//! OpenFlow rules the controller sends for this host's ports.
//!
//! The controller sends each chain's complete rule set on this host (`ChainFlows`, see
//! `relay_protocol::flow`), `ChainRemoved` when a chain goes, and after every (re)connect,
//! once it has resent every chain, `FlowSync` with the full list. The [`Programmer`] keeps that
//! desired state and reconciles the bridge to it ([`programmer`] explains the diff); the
//! [`Bridge`] trait is the boundary to Open vSwitch, [`OvsBridge`] the real one, which runs
//! `ovs-vsctl` and `ovs-ofctl` and changes flows and groups only in atomic bundles.
//!
//! Ownership on a shared bridge: every flow this host installs carries a cookie whose top 16
//! bits are [`render::COOKIE_PREFIX`] and whose low 48 bits are the chain's cookie; every group
//! it installs has an id in the range starting at [`render::GROUP_ID_BASE`]. Nothing else on
//! the bridge is ever touched, so Neutron's own flows (or anybody's) stay as they are.
//!
//! Ports: rules name Neutron ports by UUID, resolved through OVSDB `Interface`
//! `external_ids:iface-id` on this bridge. A chain whose ports are not all there yet (a VM not
//! booted) is pending and has nothing on the bridge; the task polls OVSDB every
//! `poll_interval` (1 s by default: two short `ovs-vsctl` runs) and programs the chain when the
//! ports appear, and reprograms chains when a port's number changes (a VM rebooted). Polling
//! rather than `ovsdb-client monitor`: one code path, no long-lived child to supervise, and a
//! second of delay is well within what booting a VM takes. A full reconcile also runs every
//! `verify_interval` (30 s) to repair drift, e.g. an agent that flushed the bridge.
//!
//! Base flows: networking-sfc's agent installs a few flows of its own at start (MPLS frames
//! from tunnels to the ingress table, a default drop there). Which tables those are is the
//! driver's table layout, so the controller sends them like any chain's rules (the driver's
//! convention is a chain cookie of 0 for them) rather than this host hard-coding the layout.

mod bridge;
pub mod programmer;
pub mod render;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use relay_protocol::flow::ChainStatus;
use relay_protocol::uplink::RelayMsg;
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tracing::{info, Instrument};

pub use bridge::{Bridge, DumpedFlow, OvsBridge, PortMap, OPENFLOW};
pub use programmer::{FlowCommand, Programmer};

/// The `[ovs]` section: which bridge to program and how to reach Open vSwitch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OvsConfig {
    /// The integration bridge, e.g. `br-int`.
    pub bridge: String,
    /// OVSDB remote for `ovs-vsctl --db` (e.g. `unix:/run/openvswitch/db.sock`); `None` for
    /// its default, which honours `OVS_RUNDIR`.
    pub db: Option<String>,
    /// Directory holding `<bridge>.mgmt`, the bridge's OpenFlow socket; `None` for
    /// `ovs-ofctl`'s default, which honours `OVS_RUNDIR`.
    pub rundir: Option<PathBuf>,
    /// How often OVSDB is polled for ports appearing, going or being renumbered.
    pub poll_interval: Duration,
    /// How often the whole bridge is checked against the desired state.
    pub verify_interval: Duration,
}

impl OvsConfig {
    pub fn new(bridge: impl Into<String>) -> OvsConfig {
        OvsConfig {
            bridge: bridge.into(),
            db: None,
            rundir: None,
            poll_interval: Duration::from_secs(1),
            verify_interval: Duration::from_secs(30),
        }
    }

    /// The real bridge this configuration names.
    pub fn bridge(&self) -> OvsBridge {
        OvsBridge::new(&self.bridge, self.db.clone(), self.rundir.clone())
    }

    /// Checks the bridge name (it goes on `ovs-ofctl`'s command line) and the intervals.
    pub fn validate(&self) -> Result<(), String> {
        let b = &self.bridge;
        let name_ok = !b.is_empty()
            && b.len() <= relay_protocol::flow::MAX_PORT_NAME
            && !b.starts_with('-')
            && b.bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'));
        if !name_ok {
            return Err(format!(
                "bridge {b:?} is not 1-15 characters of [A-Za-z0-9._-]"
            ));
        }
        if self.poll_interval.is_zero() || self.verify_interval.is_zero() {
            return Err("intervals must not be zero".into());
        }
        if self.db.as_deref().is_some_and(|d| d.starts_with('-')) {
            return Err("db must be an OVSDB remote such as unix:/run/openvswitch/db.sock".into());
        }
        Ok(())
    }
}

/// What can go wrong talking to Open vSwitch.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum OvsError {
    #[error("cannot run {tool}")]
    Spawn {
        tool: &'static str,
        #[source]
        source: Arc<std::io::Error>,
    },
    #[error("{0} timed out")]
    Timeout(String),
    #[error("{command} failed: {detail}")]
    Tool { command: String, detail: String },
    #[error("unexpected output: {0}")]
    Unexpected(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

const STATES: [&str; 4] = ["installed", "pending", "failed", "other"];

/// The OVS programmer's metrics (`relay_ovs_*`).
#[derive(Debug, Clone, Default)]
pub struct OvsMetrics {
    pub flows_added: Counter,
    pub flows_modified: Counter,
    pub flows_deleted: Counter,
    pub group_mods: Counter,
    pub bundles: Counter,
    pub bundle_failures: Counter,
    pub rejected: Counter,
    pub errors: Counter,
    chains: Family<StateLabels, Gauge>,
}

impl OvsMetrics {
    /// Creates the metrics and registers them under `ovs_`.
    pub fn register(registry: &mut Registry) -> OvsMetrics {
        let m = OvsMetrics::default();
        let r = registry.sub_registry_with_prefix("ovs");
        r.register(
            "flows_added",
            "Flows added to the bridge",
            m.flows_added.clone(),
        );
        r.register(
            "flows_modified",
            "Flows whose actions were changed in place",
            m.flows_modified.clone(),
        );
        r.register(
            "flows_deleted",
            "Flows deleted from the bridge",
            m.flows_deleted.clone(),
        );
        r.register(
            "group_mods",
            "Groups added, modified or deleted",
            m.group_mods.clone(),
        );
        r.register(
            "bundles",
            "Atomic bundles sent to the bridge",
            m.bundles.clone(),
        );
        r.register(
            "bundle_failures",
            "Bundles the bridge refused (nothing of them was applied)",
            m.bundle_failures.clone(),
        );
        r.register(
            "chains_rejected",
            "Chain updates refused as invalid",
            m.rejected.clone(),
        );
        r.register(
            "errors",
            "Failures to read the bridge (OVSDB or OpenFlow unreachable, bad output)",
            m.errors.clone(),
        );
        r.register(
            "chains",
            "Chains with rules for this host, by state",
            m.chains.clone(),
        );
        for s in STATES {
            let _ = m.chains.get_or_create(&StateLabels { state: s.into() });
        }
        m
    }

    fn set_chains(&self, counts: [i64; 4]) {
        for (s, n) in STATES.iter().zip(counts) {
            self.chains
                .get_or_create(&StateLabels { state: (*s).into() })
                .set(n);
        }
    }
}

/// Most queued commands handled with one reconcile (a controller resync of this many chains
/// costs one bridge dump and one bundle).
const MAX_BATCH: usize = 1024;

/// Runs the programmer until `shutdown`: commands from the controller, port polling, periodic
/// verification; status changes go to the controller through `uplink`.
pub async fn run<B: Bridge>(
    mut programmer: Programmer<B>,
    config: OvsConfig,
    mut commands: mpsc::Receiver<FlowCommand>,
    uplink: mpsc::Sender<RelayMsg>,
    shutdown: CancellationToken,
) {
    let span = tracing::info_span!("ovs", bridge = %config.bridge);
    async move {
        info!(
            poll_ms = config.poll_interval.as_millis() as u64,
            verify_s = config.verify_interval.as_secs(),
            "programming the bridge"
        );
        let mut poll = tokio::time::interval(config.poll_interval);
        poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut verify = tokio::time::interval(config.verify_interval);
        verify.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let statuses: Vec<ChainStatus> = tokio::select! {
                biased;
                _ = shutdown.cancelled() => return,
                cmd = commands.recv() => match cmd {
                    Some(cmd) => {
                        // Whatever else is already queued goes into the same reconcile.
                        let mut batch = vec![cmd];
                        while batch.len() < MAX_BATCH {
                            match commands.try_recv() {
                                Ok(cmd) => batch.push(cmd),
                                Err(_) => break,
                            }
                        }
                        programmer.handle_batch(batch).await
                    }
                    None => return,
                },
                _ = verify.tick() => programmer.verify().await,
                _ = poll.tick() => programmer.poll_ports().await,
            };
            for s in statuses {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    sent = uplink.send(RelayMsg::ChainStatus(s)) => if sent.is_err() { return },
                }
            }
        }
    }
    .instrument(span)
    .await
}
