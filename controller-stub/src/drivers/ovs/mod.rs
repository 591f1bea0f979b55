//! The OVS driver (`--drivers ovs`): networking-sfc's OVS driver and agent, with the agent's
//! job done by each host's relay-host.
//!
//! The rules are a pure function of the stored resources ([`compute`]): on every change the
//! driver re-reads the affected chains from the API tables, computes each chain's
//! [`ChainRules`] per host, and sends every host whose rules changed the new set over the relay
//! uplink ([`HostLinks`]); a host that no longer has a port on the chain gets `ChainRemoved`.
//! Nothing of the path is stored, only what was sent where: `sfc_ovs_chain_hosts` keeps per
//! (chain, host) the version and digest of the rules (an unchanged host is not sent anything,
//! so an update touches only the hosts and, through the host's diff, the flows it changes) and
//! the last state the host reported for that version (`ChainStatus`), which
//! `GET /v2.0/sfc/port_chains/{id}/status` shows. Recomputing from the API tables rather than
//! keeping networking-sfc's path-node tables in precommit means there is one source of truth
//! and no way for the two to drift.
//!
//! Hosts: a port's host is its `binding:host_id`, and a relay is known by the host name in its
//! `Register`, which the endpoint accepts only when the relay's client certificate carries
//! that name (`controller-stub pki init --relay <binding:host_id>`). So the relay-host of a
//! compute node must be configured with the node's `binding:host_id` as its host name.
//!
//! Delivery is level-triggered: when a relay registers it is sent the base flows, every
//! chain's rules for its host, then `FlowSync` with the complete list, and it removes
//! anything else. A host that is not connected simply misses the live updates and catches up
//! on registration. Every send happens under one lock, so a `FlowSync` never overtakes a
//! chain created while the resync was running. A periodic resync (every `resync` interval of
//! [`OvsDriver::run`]) catches changes that run no SFC hook, such as a port bound to another
//! host.
//!
//! Checks networking-sfc's OVS drivers make in the hooks that pass the driver's own error
//! through: a flow classifier needs `logical_source_port` (400), a symmetric chain needs
//! `logical_destination_port` on every classifier (400); and one networking-sfc misses: a
//! chain id above 4095 does not fit the 20-bit MPLS label (400 instead of silently wrong
//! labels).

pub mod compute;
pub mod status;

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use relay_protocol::flow::{ChainRules, ChainState, ChainStatus, IpNet, Mac};
use relay_protocol::uplink::ControllerMsg;
use relay_protocol::Uuid;
use sha2::{Digest, Sha256};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, Row};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use self::compute::{
    ChainInput, ClassifierInfo, ComputeError, GraphSource, GroupInfo, PairInfo, PortInfo,
};
use super::{DriverError, Event, Precommit, Registry, SfcDriver};
use crate::api::sfc::flow_classifiers::{all_flow_classifiers, get_flow_classifier};
use crate::api::sfc::port_chains::{all_port_chains, get_port_chain};
use crate::api::sfc::port_pair_groups::get_port_pair_group;
use crate::api::sfc::port_pairs::get_port_pair;
use crate::api::sfc::{FlowClassifier, PortChain, PortPairGroup, ServiceGraph};
use crate::db::Db;
use crate::error::ApiError;
use crate::relay::{HostEvent, HostLinkError, HostLinks};

/// The name the driver is configured by.
pub const NAME: &str = "ovs";
/// A row of `sfc_ovs_chain_hosts` to write.
struct HostRow<'a> {
    chain: &'a String,
    host: String,
    cookie: i64,
    version: i64,
    digest: String,
    flows: i64,
    groups: i64,
}

/// Most status reports recorded in one transaction.
const STATUS_BATCH: usize = 1024;
/// The version the base flows are sent with (they never change).
const BASE_VERSION: u64 = 1;

/// The OVS driver. Cheap to clone: the clones share the host links and the send lock.
#[derive(Debug, Clone)]
pub struct OvsDriver {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    links: HostLinks,
    /// Serialises every computation-and-send, see the module doc.
    lock: tokio::sync::Mutex<()>,
}

fn db_err(e: sqlx::Error) -> DriverError {
    DriverError::Db(e)
}

fn bad_request(message: impl Into<String>) -> DriverError {
    DriverError::Api(ApiError::bad_request("SfcBadRequest", message))
}

impl OvsDriver {
    /// A driver that reaches the hosts through `links` (the relay endpoint's).
    pub fn new(links: HostLinks) -> Self {
        OvsDriver {
            inner: Arc::new(Inner {
                links,
                lock: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// Registers this driver (all configurations share it) as `ovs`.
    pub fn register(&self, registry: &mut Registry) {
        let me = self.clone();
        registry.register(NAME, move || Arc::new(me.clone()));
    }

    /// Follows the hosts until `shutdown`: a relay that registers gets its full set, status
    /// reports are recorded, and every `resync` all chains are recomputed.
    pub async fn run(&self, db: Db, resync: Duration, shutdown: CancellationToken) {
        let mut events = self.inner.links.subscribe();
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + resync, resync);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Hosts that registered before this task subscribed.
        for host in self.inner.links.connected() {
            if let Err(e) = self.sync_all(&db, Some(&host)).await {
                warn!(host, error = %crate::error_chain(&e), "OVS driver: host synchronisation failed");
            }
        }
        // An event read while collecting status reports, handled next.
        let mut next: Option<Result<HostEvent, RecvError>> = None;
        loop {
            let event = match next.take() {
                Some(ev) => ev,
                None => tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tick.tick() => {
                        if let Err(e) = self.sync_all(&db, None).await {
                            warn!(error = %crate::error_chain(&e), "OVS driver: host synchronisation failed");
                        }
                        continue;
                    }
                    ev = events.recv() => ev,
                },
            };
            let result = match event {
                Ok(HostEvent::Registered { host }) => self.sync_all(&db, Some(&host)).await,
                Ok(HostEvent::ChainStatus { host, status }) => {
                    // Whatever reports are already queued go into the same transaction.
                    let mut reports = vec![(host, status)];
                    while reports.len() < STATUS_BATCH {
                        match events.try_recv() {
                            Ok(HostEvent::ChainStatus { host, status }) => {
                                reports.push((host, status))
                            }
                            Ok(other) => {
                                next = Some(Ok(other));
                                break;
                            }
                            Err(TryRecvError::Lagged(n)) => {
                                next = Some(Err(RecvError::Lagged(n)));
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    record_statuses(&db, &reports).await.map_err(db_err)
                }
                Ok(HostEvent::Disconnected { .. }) => Ok(()),
                Err(RecvError::Lagged(_)) => {
                    // Missed registrations: treat every connected host as new.
                    let mut r = Ok(());
                    for host in self.inner.links.connected() {
                        if r.is_ok() {
                            r = self.sync_all(&db, Some(&host)).await;
                        }
                    }
                    r
                }
                Err(RecvError::Closed) => return,
            };
            if let Err(e) = result {
                warn!(error = %crate::error_chain(&e), "OVS driver: host synchronisation failed");
            }
        }
    }

    /// Recomputes and delivers these chains (deleted ones are removed from their hosts).
    pub async fn sync_chains(&self, db: &Db, ids: &[String]) -> Result<(), DriverError> {
        let _guard = self.inner.lock.lock().await;
        self.sync_locked(db, ids, None).await
    }

    /// Recomputes every chain; with `full_host`, sends that host everything it should hold
    /// (base flows, each of its chains, then `FlowSync`), changed or not.
    pub async fn sync_all(&self, db: &Db, full_host: Option<&str>) -> Result<(), DriverError> {
        let _guard = self.inner.lock.lock().await;
        let ids: Vec<String> = {
            let mut conn = db.pool().acquire().await.map_err(db_err)?;
            let mut ids: BTreeSet<String> = sqlx::query_scalar("SELECT id FROM sfc_port_chains")
                .fetch_all(&mut *conn)
                .await
                .map_err(db_err)?
                .into_iter()
                .collect();
            let recorded: Vec<String> =
                sqlx::query_scalar("SELECT DISTINCT portchain_id FROM sfc_ovs_chain_hosts")
                    .fetch_all(&mut *conn)
                    .await
                    .map_err(db_err)?;
            ids.extend(recorded);
            ids.into_iter().collect()
        };
        if let Some(host) = full_host {
            self.send(host, base_message()).await;
        }
        self.sync_locked(db, &ids, full_host).await?;
        if let Some(host) = full_host {
            let mut conn = db.pool().acquire().await.map_err(db_err)?;
            let cookies: Vec<i64> =
                sqlx::query_scalar("SELECT cookie FROM sfc_ovs_chain_hosts WHERE host = $1")
                    .bind(host)
                    .fetch_all(&mut *conn)
                    .await
                    .map_err(db_err)?;
            let mut cookies: Vec<u64> = cookies.into_iter().map(|c| c as u64).collect();
            cookies.push(compute::BASE_COOKIE);
            cookies.sort_unstable();
            cookies.dedup();
            if cookies.len() > relay_protocol::flow::MAX_SYNC_COOKIES {
                warn!(
                    host,
                    chains = cookies.len(),
                    "too many chains for one FlowSync; not sent"
                );
            } else {
                info!(host, chains = cookies.len() - 1, "host synchronised");
                self.send(host, ControllerMsg::FlowSync { cookies }).await;
            }
        }
        Ok(())
    }

    /// Queues a message for a host; a host that is not connected catches up on registration.
    async fn send(&self, host: &str, msg: ControllerMsg) {
        match self.inner.links.send(host, msg).await {
            Ok(()) => {}
            Err(HostLinkError::NotConnected(_)) => debug!(host, "host not connected"),
            Err(e) => warn!(host, error = %e, "cannot send to the host"),
        }
    }

    async fn send_rules(&self, host: &str, rules: ChainRules) {
        match rules.into_parts() {
            Ok(parts) => {
                for part in parts {
                    self.send(host, ControllerMsg::ChainFlows(part)).await;
                }
            }
            Err(e) => warn!(host, error = %e, "chain rules do not fit the uplink"),
        }
    }

    /// Chains: compute them all (reading what they share once), record what changed per
    /// host in one write transaction, then send. The caller holds the lock.
    async fn sync_locked(
        &self,
        db: &Db,
        ids: &[String],
        full_host: Option<&str>,
    ) -> Result<(), DriverError> {
        // Each chain once (its rows are written once).
        let mut seen = BTreeSet::new();
        let ids: Vec<&String> = ids.iter().filter(|id| seen.insert(*id)).collect();
        let mut conn = db.pool().acquire().await.map_err(db_err)?;
        let mut hosts_with_chains: BTreeSet<String> =
            sqlx::query_scalar("SELECT DISTINCT host FROM sfc_ovs_chain_hosts")
                .fetch_all(&mut *conn)
                .await
                .map_err(db_err)?
                .into_iter()
                .collect();
        // Many chains at once (a bulk create, a resync): every chain in three queries
        // instead of three each.
        let mut chains: Option<BTreeMap<String, PortChain>> = None;
        let mut recorded: Option<BTreeMap<String, Vec<AnyRow>>> = None;
        let mut loader = Loader::default();
        if ids.len() > 32 {
            let all = all_port_chains(&mut conn).await.map_err(db_err)?;
            chains = Some(all.into_iter().map(|c| (c.id.clone(), c)).collect());
            let rows = sqlx::query(
                "SELECT portchain_id, host, cookie, version, digest FROM sfc_ovs_chain_hosts",
            )
            .fetch_all(&mut *conn)
            .await
            .map_err(db_err)?;
            let mut by_chain: BTreeMap<String, Vec<AnyRow>> = BTreeMap::new();
            for row in rows {
                let chain: String = row.try_get("portchain_id").map_err(db_err)?;
                by_chain.entry(chain).or_default().push(row);
            }
            recorded = Some(by_chain);
            loader.preload(&mut conn).await.map_err(db_err)?;
        }
        let mut planned = Vec::with_capacity(ids.len());
        for id in ids {
            let chain = match &mut chains {
                Some(all) => all.remove(id),
                None => get_port_chain(&mut conn, id).await.map_err(db_err)?,
            };
            let wanted: BTreeMap<String, ChainRules> = match &chain {
                Some(c) => {
                    let input = loader.input(&mut conn, c).await.map_err(db_err)?;
                    match compute::compute(&input) {
                        Ok(r) => r,
                        Err(e) => {
                            warn!(chain = id, error = %e, "chain cannot be rendered; removing its rules");
                            BTreeMap::new()
                        }
                    }
                }
                None => BTreeMap::new(),
            };
            let rows = match &mut recorded {
                Some(all) => all.remove(id.as_str()).unwrap_or_default(),
                None => sqlx::query(
                    "SELECT host, cookie, version, digest FROM sfc_ovs_chain_hosts \
                     WHERE portchain_id = $1",
                )
                .bind(id)
                .fetch_all(&mut *conn)
                .await
                .map_err(db_err)?,
            };
            let mut have: BTreeMap<String, (u64, u64, String)> = BTreeMap::new();
            for r in rows {
                let host: String = r.try_get("host").map_err(db_err)?;
                let cookie: i64 = r.try_get("cookie").map_err(db_err)?;
                let version: i64 = r.try_get("version").map_err(db_err)?;
                let digest: String = r.try_get("digest").map_err(db_err)?;
                have.insert(host, (cookie as u64, version as u64, digest));
            }
            planned.push((id, wanted, have));
        }
        drop(conn);

        let mut to_send: Vec<(&String, String, ChainRules)> = Vec::new();
        let mut to_remove: Vec<(String, u64)> = Vec::new();
        let now = crate::api::timestamp();
        let mut inserts: Vec<HostRow<'_>> = Vec::new();
        let mut tx = db.begin_write().await.map_err(db_err)?;
        for (id, wanted, have) in planned {
            for (host, mut rules) in wanted.clone() {
                let digest = digest(&rules);
                let old = have.get(&host);
                let unchanged = old.is_some_and(|(c, _, d)| *d == digest && *c == rules.cookie);
                let version = match old {
                    Some((_, v, _)) if unchanged => *v,
                    Some((_, v, _)) => v + 1,
                    None => 1,
                };
                rules.version = version;
                if !unchanged {
                    if old.is_some() {
                        sqlx::query(
                            "DELETE FROM sfc_ovs_chain_hosts \
                             WHERE portchain_id = $1 AND host = $2",
                        )
                        .bind(id)
                        .bind(&host)
                        .execute(tx.conn())
                        .await
                        .map_err(db_err)?;
                    }
                    inserts.push(HostRow {
                        chain: id,
                        host: host.clone(),
                        cookie: rules.cookie as i64,
                        version: version as i64,
                        digest,
                        flows: rules.flows.len() as i64,
                        groups: rules.groups.len() as i64,
                    });
                }
                if !unchanged || full_host == Some(host.as_str()) {
                    to_send.push((id, host, rules));
                }
            }
            for (host, (cookie, _, _)) in &have {
                if !wanted.contains_key(host) {
                    sqlx::query(
                        "DELETE FROM sfc_ovs_chain_hosts WHERE portchain_id = $1 AND host = $2",
                    )
                    .bind(id)
                    .bind(host)
                    .execute(tx.conn())
                    .await
                    .map_err(db_err)?;
                    // The cookie may have been taken by another chain on this host meanwhile
                    // (ids are reused): then that chain's rules replace these and no removal
                    // is due.
                    to_remove.push((host.clone(), *cookie));
                }
            }
        }
        // Many rows a statement.
        for batch in inserts.chunks(crate::api::sfc::port_chains::ROWS_PER_INSERT) {
            let values: Vec<String> = (0..batch.len())
                .map(|i| {
                    let p: Vec<String> = (1..=8).map(|k| format!("${}", 8 * i + k)).collect();
                    format!(
                        "({}, {}, {}, {}, {}, {}, {}, 'sent', '', {})",
                        p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7]
                    )
                })
                .collect();
            let sql = format!(
                "INSERT INTO sfc_ovs_chain_hosts (portchain_id, host, cookie, version, digest, \
                 flows, groups, state, detail, updated_at) VALUES {}",
                values.join(", ")
            );
            let mut query = sqlx::query(&sql);
            for r in batch {
                query = query
                    .bind(r.chain.as_str())
                    .bind(r.host.as_str())
                    .bind(r.cookie)
                    .bind(r.version)
                    .bind(r.digest.as_str())
                    .bind(r.flows)
                    .bind(r.groups)
                    .bind(now.as_str());
            }
            query.execute(tx.conn()).await.map_err(db_err)?;
        }
        tx.commit().await.map_err(db_err)?;
        for (host, cookie) in to_remove {
            let mut conn = db.pool().acquire().await.map_err(db_err)?;
            let reused: Option<String> = sqlx::query_scalar(
                "SELECT portchain_id FROM sfc_ovs_chain_hosts WHERE host = $1 AND cookie = $2",
            )
            .bind(&host)
            .bind(cookie as i64)
            .fetch_optional(&mut *conn)
            .await
            .map_err(db_err)?;
            if reused.is_none() {
                self.send(&host, ControllerMsg::ChainRemoved { cookie })
                    .await;
            }
        }
        for (id, host, rules) in to_send {
            // A host's first chain brings the base flows along.
            if hosts_with_chains.insert(host.clone()) && full_host != Some(host.as_str()) {
                self.send(&host, base_message()).await;
            }
            debug!(
                chain = id.as_str(),
                host,
                version = rules.version,
                flows = rules.flows.len(),
                "sending chain rules"
            );
            self.send_rules(&host, rules).await;
        }
        Ok(())
    }

    /// The chains a set of groups is part of.
    async fn chains_of_group(db: &Db, group: &str) -> Result<Vec<String>, DriverError> {
        let mut conn = db.pool().acquire().await.map_err(db_err)?;
        sqlx::query_scalar(
            "SELECT portchain_id FROM sfc_chain_group_associations WHERE portpairgroup_id = $1",
        )
        .bind(group)
        .fetch_all(&mut *conn)
        .await
        .map_err(db_err)
    }
}

fn base_message() -> ControllerMsg {
    let mut base = compute::base_rules();
    base.version = BASE_VERSION;
    // Two flows: always one part.
    match base.into_parts() {
        Ok(mut parts) if parts.len() == 1 => ControllerMsg::ChainFlows(parts.remove(0)),
        _ => unreachable_base(),
    }
}

#[cold]
fn unreachable_base() -> ControllerMsg {
    // Two flows and no group always fit one envelope; an empty removal is the safe fallback.
    ControllerMsg::FlowSync { cookies: vec![] }
}

fn digest(rules: &ChainRules) -> String {
    let mut h = Sha256::new();
    h.update(format!("{:?}{:?}", rules.groups, rules.flows).as_bytes());
    hex::encode(h.finalize())
}

/// How many (chain, host) rule sets their hosts report installed at their current version
/// (for benchmarks and monitoring).
pub async fn count_installed(db: &Db) -> Result<i64, sqlx::Error> {
    let mut conn = db.pool().acquire().await?;
    sqlx::query_scalar("SELECT COUNT(*) FROM sfc_ovs_chain_hosts WHERE state = 'installed'")
        .fetch_one(&mut *conn)
        .await
}

/// Records a host's report about a version it was sent.
/// Records status reports, all in one write transaction (a host reports a bulk of chains
/// at once).
async fn record_statuses(db: &Db, reports: &[(String, ChainStatus)]) -> Result<(), sqlx::Error> {
    let now = crate::api::timestamp();
    let mut tx = db.begin_write().await?;
    for (host, status) in reports {
        let (state, detail) = match &status.state {
            ChainState::Installed { .. } => ("installed", String::new()),
            ChainState::Pending { missing } => (
                "pending",
                missing
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
            ChainState::Rejected { reason } => ("rejected", reason.clone()),
            ChainState::Failed { reason } => ("failed", reason.clone()),
            // Its row went when the removal was sent.
            ChainState::Removed => continue,
        };
        sqlx::query(
            "UPDATE sfc_ovs_chain_hosts SET state = $1, detail = $2, updated_at = $3 \
             WHERE host = $4 AND cookie = $5 AND version = $6",
        )
        .bind(state)
        .bind(detail)
        .bind(&now)
        .bind(host)
        .bind(status.cookie as i64)
        .bind(status.version as i64)
        .execute(tx.conn())
        .await?;
    }
    tx.commit().await
}

fn parse_uuid(s: &str) -> Option<Uuid> {
    Uuid::parse_str(s).ok()
}

fn parse_net(s: &str) -> Option<IpNet> {
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a.parse::<IpAddr>().ok()?, l.parse::<u8>().ok()?),
        None => {
            let a = s.parse::<IpAddr>().ok()?;
            (a, if a.is_ipv4() { 32 } else { 128 })
        }
    };
    Some(IpNet::new(addr, len))
}

fn port_range(min: Option<i64>, max: Option<i64>) -> Option<(u16, u16)> {
    let clamp = |v: i64| v.clamp(0, 65535) as u16;
    match (min, max) {
        (None, None) => None,
        (min, max) => Some((clamp(min.unwrap_or(0)), clamp(max.unwrap_or(65535)))),
    }
}

fn classifier_info(fc: &FlowClassifier) -> ClassifierInfo {
    let ipv6 = fc.ethertype.eq_ignore_ascii_case("ipv6");
    ClassifierInfo {
        ipv6,
        protocol: match fc.protocol.as_deref() {
            Some("tcp") => Some(6),
            Some("udp") => Some(17),
            Some("icmp") if ipv6 => Some(58),
            Some("icmp") => Some(1),
            _ => None,
        },
        src_ports: port_range(fc.source_port_range_min, fc.source_port_range_max),
        dst_ports: port_range(fc.destination_port_range_min, fc.destination_port_range_max),
        src_prefix: fc.source_ip_prefix.as_deref().and_then(parse_net),
        dst_prefix: fc.destination_ip_prefix.as_deref().and_then(parse_net),
        source: fc.logical_source_port.as_deref().and_then(parse_uuid),
        destination: fc.logical_destination_port.as_deref().and_then(parse_uuid),
    }
}

/// Reads what chains refer to, each thing once: a batch of chains (a bulk create, a host's
/// resync) mostly shares its groups, port pairs and ports.
#[derive(Debug, Default)]
struct Loader {
    ports: BTreeMap<Uuid, Option<PortInfo>>,
    groups: BTreeMap<String, Option<GroupInfo>>,
    classifiers: BTreeMap<String, Option<ClassifierInfo>>,
    /// Every service-graph hand-off (source chain, destination chain), when read at once.
    graphs: Option<Vec<(String, String)>>,
    /// Whether `classifiers` holds every classifier (read at once).
    all_classifiers: bool,
}

impl Loader {
    /// Reads every classifier and service-graph hand-off at once, for a batch of chains.
    async fn preload(&mut self, conn: &mut AnyConnection) -> Result<(), sqlx::Error> {
        for fc in all_flow_classifiers(conn).await? {
            self.classifiers
                .insert(fc.id.clone(), Some(classifier_info(&fc)));
        }
        self.all_classifiers = true;
        self.graphs = Some(
            sqlx::query_as("SELECT src_chain, dst_chain FROM sfc_service_graph_chain_associations")
                .fetch_all(&mut *conn)
                .await?,
        );
        Ok(())
    }

    /// A port's MAC, host and VNI; `None` when it is gone or malformed.
    async fn port(
        &mut self,
        conn: &mut AnyConnection,
        id: Uuid,
    ) -> Result<Option<PortInfo>, sqlx::Error> {
        if let Some(known) = self.ports.get(&id) {
            return Ok(known.clone());
        }
        let row = sqlx::query(
            "SELECT p.mac_address, p.host_id, n.segmentation_id FROM ports p \
             JOIN networks n ON n.id = p.network_id WHERE p.id = $1",
        )
        .bind(id.to_string())
        .fetch_optional(&mut *conn)
        .await?;
        let info = match row {
            None => None,
            Some(row) => {
                let mac: String = row.try_get("mac_address")?;
                let vni: i64 = row.try_get("segmentation_id")?;
                match mac.parse::<Mac>() {
                    Ok(mac) => Some(PortInfo {
                        mac,
                        host: row.try_get("host_id")?,
                        vni: vni.max(0) as u64,
                    }),
                    Err(_) => None,
                }
            }
        };
        self.ports.insert(id, info.clone());
        Ok(info)
    }

    /// A port pair group with its pairs; `None` when it is gone.
    async fn group(
        &mut self,
        conn: &mut AnyConnection,
        id: &str,
    ) -> Result<Option<GroupInfo>, sqlx::Error> {
        if let Some(known) = self.groups.get(id) {
            return Ok(known.clone());
        }
        let info = match get_port_pair_group(conn, id).await? {
            None => None,
            Some(g) => {
                let mut pairs = Vec::new();
                for ppid in &g.port_pairs {
                    let Some(pp) = get_port_pair(conn, ppid).await? else {
                        continue;
                    };
                    let (Some(ingress), Some(egress)) =
                        (parse_uuid(&pp.ingress), parse_uuid(&pp.egress))
                    else {
                        continue;
                    };
                    pairs.push(PairInfo {
                        ingress,
                        egress,
                        weight: pp.service_function_parameters.weight.clamp(0, 65535) as u16,
                        mpls: pp.service_function_parameters.correlation.as_deref() == Some("mpls"),
                    });
                }
                Some(GroupInfo {
                    tap: g.tap_enabled,
                    lb_fields: g.lb_fields(),
                    pairs,
                })
            }
        };
        self.groups.insert(id.to_owned(), info.clone());
        Ok(info)
    }

    /// The groups of a chain, in order.
    async fn groups(
        &mut self,
        conn: &mut AnyConnection,
        chain: &PortChain,
    ) -> Result<Vec<GroupInfo>, sqlx::Error> {
        let mut out = Vec::new();
        for gid in &chain.port_pair_groups {
            out.extend(self.group(conn, gid).await?);
        }
        Ok(out)
    }

    async fn classifier(
        &mut self,
        conn: &mut AnyConnection,
        id: &str,
    ) -> Result<Option<ClassifierInfo>, sqlx::Error> {
        if let Some(known) = self.classifiers.get(id) {
            return Ok(known.clone());
        }
        if self.all_classifiers {
            return Ok(None);
        }
        let info = get_flow_classifier(conn, id)
            .await?
            .map(|fc| classifier_info(&fc));
        self.classifiers.insert(id.to_owned(), info.clone());
        Ok(info)
    }

    /// Everything [`compute::compute`] needs about one chain.
    async fn input(
        &mut self,
        conn: &mut AnyConnection,
        chain: &PortChain,
    ) -> Result<ChainInput, sqlx::Error> {
        let groups = self.groups(conn, chain).await?;
        let mut classifiers = Vec::new();
        for fcid in &chain.flow_classifiers {
            classifiers.extend(self.classifier(conn, fcid).await?);
        }
        let mut port_ids: BTreeSet<Uuid> = BTreeSet::new();
        for g in &groups {
            for p in &g.pairs {
                port_ids.insert(p.ingress);
                port_ids.insert(p.egress);
            }
        }
        for fc in &classifiers {
            port_ids.extend(fc.source);
            port_ids.extend(fc.destination);
        }
        let mut ports = BTreeMap::new();
        for id in port_ids {
            if let Some(info) = self.port(conn, id).await? {
                ports.insert(id, info);
            }
        }
        // Service graphs: chains handing off into this one, and whether this one hands off.
        let sources: Vec<String> = match &self.graphs {
            Some(all) => all
                .iter()
                .filter(|(_, dst)| *dst == chain.id)
                .map(|(src, _)| src.clone())
                .collect(),
            None => {
                sqlx::query_scalar(
                    "SELECT src_chain FROM sfc_service_graph_chain_associations \
                     WHERE dst_chain = $1",
                )
                .bind(&chain.id)
                .fetch_all(&mut *conn)
                .await?
            }
        };
        let mut graph_sources = Vec::new();
        for src in sources {
            let Some(src_chain) = get_port_chain(conn, &src).await? else {
                continue;
            };
            let src_groups = self.groups(conn, &src_chain).await?;
            let hops: Vec<&GroupInfo> = src_groups.iter().filter(|g| !g.tap).collect();
            let Some(last) = hops.last() else { continue };
            let mut hosts = BTreeSet::new();
            for p in &last.pairs {
                if let Some(info) = self.port(conn, p.egress).await? {
                    if !info.host.is_empty() {
                        hosts.insert(info.host);
                    }
                }
            }
            if !(0..=compute::MAX_CHAIN_ID).contains(&src_chain.chain_id) {
                continue;
            }
            graph_sources.push(GraphSource {
                label: compute::label(src_chain.chain_id as u32, 255 - hops.len() as u8),
                hosts,
            });
        }
        let graph_source = match &self.graphs {
            Some(all) => all.iter().any(|(src, _)| *src == chain.id),
            None => sqlx::query_scalar::<_, String>(
                "SELECT src_chain FROM sfc_service_graph_chain_associations WHERE src_chain = $1",
            )
            .bind(&chain.id)
            .fetch_optional(&mut *conn)
            .await?
            .is_some(),
        };
        Ok(ChainInput {
            chain_id: chain.chain_id,
            symmetric: chain.chain_parameters.symmetric,
            groups,
            classifiers,
            ports,
            graph_sources,
            graph_source,
        })
    }
}

/// The chain's checks that networking-sfc's client sees as 400s.
async fn check_chain(conn: &mut AnyConnection, chain: &PortChain) -> Result<(), DriverError> {
    if chain.chain_id > compute::MAX_CHAIN_ID {
        return Err(bad_request(format!(
            "chain_id {} is too large for the OVS driver: its MPLS labels (chain_id << 8 | \
             nsi) have 20 bits, so chain_id must be at most {}.",
            chain.chain_id,
            compute::MAX_CHAIN_ID
        )));
    }
    if chain.port_pair_groups.len() > compute::MAX_HOPS {
        return Err(bad_request(
            ComputeError::TooLong(chain.port_pair_groups.len()).to_string(),
        ));
    }
    // What else can refuse a chain is its classifiers: check with those alone (this runs
    // inside the write transaction every API writer waits for).
    let mut classifiers = Vec::new();
    for fcid in &chain.flow_classifiers {
        if let Some(fc) = get_flow_classifier(conn, fcid).await.map_err(db_err)? {
            classifiers.push(classifier_info(&fc));
        }
    }
    let input = ChainInput {
        chain_id: chain.chain_id,
        symmetric: chain.chain_parameters.symmetric,
        classifiers,
        ..ChainInput::default()
    };
    match compute::compute(&input) {
        Ok(_) => Ok(()),
        Err(ComputeError::SymmetricWithoutDestination) => Err(bad_request(
            "The symmetric port chain requires logical_destination_port in every flow \
             classifier.",
        )),
        Err(e) => Err(bad_request(e.to_string())),
    }
}

/// Every chain a graph connects.
fn graph_chains(g: &ServiceGraph) -> Vec<String> {
    let mut ids: BTreeSet<String> = BTreeSet::new();
    for (src, dsts) in &g.port_chains {
        ids.insert(src.clone());
        ids.extend(dsts.iter().cloned());
    }
    ids.into_iter().collect()
}

#[async_trait]
impl SfcDriver for OvsDriver {
    fn name(&self) -> &str {
        NAME
    }

    async fn create_flow_classifier_precommit(
        &self,
        ctx: &mut Precommit<'_, FlowClassifier>,
    ) -> Result<(), DriverError> {
        if ctx.current.logical_source_port.is_none() {
            return Err(DriverError::Api(ApiError::bad_request(
                "FlowClassifierBadRequest",
                "FlowClassifier OVS driver requires logical_source_port.",
            )));
        }
        Ok(())
    }

    async fn create_port_chain_precommit(
        &self,
        ctx: &mut Precommit<'_, PortChain>,
    ) -> Result<(), DriverError> {
        check_chain(ctx.conn, ctx.current).await
    }

    async fn update_port_chain_precommit(
        &self,
        ctx: &mut Precommit<'_, PortChain>,
    ) -> Result<(), DriverError> {
        check_chain(ctx.conn, ctx.current).await
    }

    async fn create_port_chain_postcommit(
        &self,
        ctx: &Event<'_, PortChain>,
    ) -> Result<(), DriverError> {
        self.sync_chains(ctx.db, std::slice::from_ref(&ctx.current.id))
            .await
    }

    async fn create_port_chains_postcommit(
        &self,
        ctxs: &[Event<'_, PortChain>],
    ) -> Result<(), DriverError> {
        let Some(first) = ctxs.first() else {
            return Ok(());
        };
        let ids: Vec<String> = ctxs.iter().map(|c| c.current.id.clone()).collect();
        self.sync_chains(first.db, &ids).await
    }

    async fn update_port_chain_postcommit(
        &self,
        ctx: &Event<'_, PortChain>,
    ) -> Result<(), DriverError> {
        self.sync_chains(ctx.db, std::slice::from_ref(&ctx.current.id))
            .await
    }

    async fn delete_port_chain_postcommit(
        &self,
        ctx: &Event<'_, PortChain>,
    ) -> Result<(), DriverError> {
        self.sync_chains(ctx.db, std::slice::from_ref(&ctx.current.id))
            .await
    }

    async fn update_port_pair_group_postcommit(
        &self,
        ctx: &Event<'_, PortPairGroup>,
    ) -> Result<(), DriverError> {
        let chains = Self::chains_of_group(ctx.db, &ctx.current.id).await?;
        self.sync_chains(ctx.db, &chains).await
    }

    async fn create_service_graph_postcommit(
        &self,
        ctx: &Event<'_, ServiceGraph>,
    ) -> Result<(), DriverError> {
        self.sync_chains(ctx.db, &graph_chains(ctx.current)).await
    }

    async fn delete_service_graph_postcommit(
        &self,
        ctx: &Event<'_, ServiceGraph>,
    ) -> Result<(), DriverError> {
        self.sync_chains(ctx.db, &graph_chains(ctx.current)).await
    }
}
