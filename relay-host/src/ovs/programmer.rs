//! The desired state of the bridge and the reconcile that makes the bridge match it.
//!
//! State: the latest valid [`ChainRules`] per chain, the chain list of the last `FlowSync`
//! (none before the first), and chains removed but maybe not yet cleaned off the bridge.
//!
//! Reconcile (after every batch of commands that arrived together, see
//! [`Programmer::handle_batch`]; when the bridge's ports change; and as a verification
//! periodically): read the ports; render every chain whose ports are all on the bridge (the
//! others are pending and get nothing on the bridge: their old port numbers may belong to other
//! VMs by now); drop chains whose flows or groups clash with a lower-numbered chain's; diff
//! against our flows (cookie prefix) and groups (id range) on the bridge. The diff keys flows by
//! (table, priority + match): a desired flow already there with the same actions is left alone
//! (counters and duration keep running), one with other actions is changed in place with
//! `modify_strict`, missing ones are added, and flows of managed chains that are no longer
//! desired are removed with `delete_strict`. One bundle carries it all, ordered so that no
//! packet meets a half-made state: group adds and modifies, flow deletes, modifies, adds, then
//! deletes of groups no longer used (deleting a group in OpenFlow deletes the flows that use
//! it). Deletes come before adds so that, should a key be spelt differently from how it is on
//! the bridge, the flow is replaced in the same transaction rather than lost.
//!
//! What the diff compares with: the first reconcile, every verification and the first one
//! after a refused bundle read the bridge (`dump-flows`, `dump-groups`) and compare in the
//! switch's own spelling, the desired rules canonicalised by `ovs-ofctl` (cached); that run
//! finds drift, such as an agent that flushed the bridge. In between, the relay keeps a record
//! of what it wrote, updated by every bundle that went through, and compares with that in its
//! own spelling: a change costs one port read, one check and one bundle, whatever else is on
//! the bridge, instead of reading and parsing every flow back each time.
//!
//! Which flows are ours to delete: those of chains with desired rules, of chains removed with
//! `ChainRemoved`, and, once a `FlowSync` arrived, of every chain it did not list. Before the
//! first `FlowSync` (a relay that just started) flows of chains it has not heard of are kept,
//! so a relay restart leaves the data path alone; the controller's resync then brings the
//! desired state and `FlowSync` prunes the rest. Unused groups are likewise only deleted once
//! synced.
//!
//! New rules are parsed by `ovs-ofctl` (one run per batch, with stand-in port numbers) before
//! anything changes, and a chain whose flows it refuses is rejected with its first bad flow,
//! keeping its previous rules. A bundle that fails anyway is retried per chain, so that one
//! chain the switch refuses does not hold up the others; the failed chain is reported and
//! retried at the next reconcile.

use std::collections::{BTreeMap, HashMap, HashSet};

use relay_protocol::flow::{
    bounded_reason, Assembler, ChainFlows, ChainRules, ChainState, ChainStatus, FlowError, PortRef,
    MAX_MISSING, MAX_SYNC_COOKIES,
};
use tracing::{debug, info, warn};

use super::bridge::{Bridge, PortMap};
use super::render::{
    chain_of, flow_cookie, group_id, is_our_group, render_flow, render_group, AnyPort, BundleOp,
    CanonicalFlow, RenderedFlow, Resolve, COOKIE_PREFIX, COOKIE_PREFIX_MASK,
};
use super::{OvsError, OvsMetrics};

/// What the controller asks of the bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlowCommand {
    ChainFlows(ChainFlows),
    ChainRemoved(u64),
    FlowSync(Vec<u64>),
}

/// A chain's rules rendered for the current ports.
struct Rendered {
    flows: Vec<(RenderedFlow, CanonicalFlow)>,
    /// OpenFlow group id -> (rendered, canonical).
    groups: BTreeMap<u32, (String, String)>,
}

/// What became of one `ChainFlows` part.
enum Accepted {
    /// A part of a multi-part update; more to come.
    Incomplete,
    /// Refused; the status says why.
    Rejected(ChainStatus),
    /// The chain's new rules are the desired state (the previous ones, if any, given back in
    /// case the switch refuses the new ones); a reconcile puts them on the bridge.
    Stored(Option<ChainRules>),
}

/// The outcome of planning one chain.
enum Plan {
    Install(Rendered),
    Pending(Vec<PortRef>),
    Failed(String),
}

/// Who a bundle line is for: a chain, or the group clean-up that runs last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Owner {
    Chain(u64),
    Cleanup,
}

/// Bundle phases in the order that keeps every intermediate state consistent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Phase {
    Groups,
    DeleteFlows,
    ModifyFlows,
    AddFlows,
    DeleteGroups,
}

/// Programs one bridge to the desired state of every chain of this host.
#[derive(Debug)]
pub struct Programmer<B> {
    bridge: B,
    assembler: Assembler,
    chains: BTreeMap<u64, ChainRules>,
    /// Chains of the last `FlowSync`, plus chains heard of since; `None` before the first.
    listed: Option<HashSet<u64>>,
    /// Removed chains whose flows may still be on the bridge.
    removed: HashSet<u64>,
    /// What was last reported per chain: (version, state).
    reported: HashMap<u64, (u64, ChainState)>,
    flow_cache: HashMap<RenderedFlow, CanonicalFlow>,
    group_cache: HashMap<String, String>,
    last_ports: Option<PortMap>,
    /// Our flows and groups on the bridge as this relay wrote them: known after a full
    /// reconcile (which reads the bridge) and kept by every bundle that went through; `None`
    /// at the start, after a bundle failed, and when a verification is due.
    installed: Option<View>,
    metrics: OvsMetrics,
}

/// Our flows and groups on the bridge, in one textual form.
#[derive(Debug, Clone, Default)]
struct View {
    /// (table, priority and match) -> (cookie, actions).
    flows: BTreeMap<(u8, String), (u64, String)>,
    groups: BTreeMap<u32, String>,
    /// Chains whose flows are recorded as the switch printed them (read back, not written by
    /// this relay): comparing rules of theirs takes the switch's spelling, so a bridge read.
    read_back: HashSet<u64>,
}

/// Which text a reconcile compares: the switch's own (a dump against canonical forms) or
/// ours (the record of what was written against the rendered forms, no `ovs-ofctl` needed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    Canonical,
    Rendered,
}

impl<B: Bridge> Programmer<B> {
    pub fn new(bridge: B, metrics: OvsMetrics) -> Programmer<B> {
        Programmer {
            bridge,
            assembler: Assembler::default(),
            chains: BTreeMap::new(),
            listed: None,
            removed: HashSet::new(),
            reported: HashMap::new(),
            flow_cache: HashMap::new(),
            group_cache: HashMap::new(),
            last_ports: None,
            installed: None,
            metrics,
        }
    }

    pub fn bridge(&self) -> &B {
        &self.bridge
    }

    pub fn bridge_mut(&mut self) -> &mut B {
        &mut self.bridge
    }

    /// The state last reported for a chain.
    pub fn state(&self, cookie: u64) -> Option<&ChainState> {
        self.reported.get(&cookie).map(|(_, s)| s)
    }

    /// Whether a `FlowSync` arrived since the start.
    pub fn synced(&self) -> bool {
        self.listed.is_some()
    }

    /// Handles one command; returns the status reports it caused.
    pub async fn handle(&mut self, cmd: FlowCommand) -> Vec<ChainStatus> {
        self.handle_batch(vec![cmd]).await
    }

    /// Handles commands that arrived together with one reconcile at the end, so that a burst
    /// of chains (a controller resync, many chains created at once) costs one dump, diff and
    /// bundle instead of one per chain. The outcome is the one of handling them one by one
    /// (every change lands in the same bundle, which is atomic anyway); returns the status
    /// reports they caused.
    pub async fn handle_batch(&mut self, cmds: Vec<FlowCommand>) -> Vec<ChainStatus> {
        let mut out = Vec::new();
        // Chains removed by this batch, with the version they had: reported `Removed` once
        // their flows are off the bridge.
        let mut gone: Vec<(u64, u64)> = Vec::new();
        // Chains with new rules in this batch, with the rules they had before it.
        let mut fresh: BTreeMap<u64, Option<ChainRules>> = BTreeMap::new();
        let mut dirty = false;
        for cmd in cmds {
            match cmd {
                FlowCommand::ChainFlows(part) => {
                    let cookie = part.cookie;
                    match self.chain_flows(part) {
                        Accepted::Incomplete => {}
                        Accepted::Rejected(status) => out.push(status),
                        Accepted::Stored(previous) => {
                            gone.retain(|(c, _)| *c != cookie);
                            fresh.entry(cookie).or_insert(previous);
                        }
                    }
                }
                FlowCommand::ChainRemoved(cookie) => {
                    gone.retain(|(c, _)| *c != cookie);
                    gone.push((cookie, self.chain_removed(cookie)));
                    fresh.remove(&cookie);
                    dirty = true;
                }
                FlowCommand::FlowSync(cookies) => {
                    if let Some(dropped) = self.flow_sync(cookies) {
                        gone.retain(|(c, _)| !dropped.iter().any(|(d, _)| d == c));
                        for (c, _) in &dropped {
                            fresh.remove(c);
                        }
                        gone.extend(dropped);
                        dirty = true;
                    }
                }
            }
        }
        // New rules the switch would refuse are refused before anything is changed: one
        // `ovs-ofctl` run for the whole batch, chain by chain only if that run fails.
        for (cookie, reason) in self.check_with_ovs(&fresh).await {
            let version = self.chains.get(&cookie).map_or(0, |r| r.version);
            match fresh.remove(&cookie).flatten() {
                Some(previous) => self.chains.insert(cookie, previous),
                None => self.chains.remove(&cookie),
            };
            out.push(self.reject(cookie, version, reason));
        }
        if dirty || !fresh.is_empty() {
            out.extend(self.reconcile().await);
        }
        for (cookie, version) in gone {
            if !self.removed.contains(&cookie) {
                out.push(ChainStatus {
                    cookie,
                    version,
                    state: ChainState::Removed,
                });
            }
        }
        out
    }

    fn chain_flows(&mut self, part: ChainFlows) -> Accepted {
        let (cookie, version) = (part.cookie, part.version);
        let rules = match self.assembler.push(part) {
            Ok(None) => return Accepted::Incomplete,
            Ok(Some(rules)) => rules,
            Err(e) => return Accepted::Rejected(self.reject(cookie, version, e.to_string())),
        };
        if let Err(e) = rules.validate() {
            return Accepted::Rejected(self.reject(cookie, version, e.to_string()));
        }
        debug!(
            chain.cookie = cookie,
            chain.version = version,
            flows = rules.flows.len(),
            groups = rules.groups.len(),
            "chain rules received"
        );
        self.removed.remove(&cookie);
        if let Some(listed) = &mut self.listed {
            listed.insert(cookie);
        }
        // The controller hears back about every update, changed or not.
        self.reported.remove(&cookie);
        Accepted::Stored(self.chains.insert(cookie, rules))
    }

    /// Refuses an update; the chain keeps its previous rules (if any) on the bridge.
    fn reject(&mut self, cookie: u64, version: u64, reason: String) -> ChainStatus {
        warn!(chain.cookie = cookie, chain.version = version, %reason, "chain rules rejected");
        self.metrics.rejected.inc();
        if let Some(listed) = &mut self.listed {
            listed.insert(cookie);
        }
        let state = ChainState::Rejected {
            reason: bounded_reason(reason),
        };
        self.reported.insert(cookie, (version, state.clone()));
        ChainStatus {
            cookie,
            version,
            state,
        }
    }

    /// Has `ovs-ofctl` parse the flows of these chains' current rules (with stand-in port
    /// numbers), so that rules the switch would refuse are refused before anything is changed;
    /// returns the refused chains, each with its first bad flow. Groups are checked by their
    /// types alone (`ChainRules::validate`): a group the switch refuses fails its chain's
    /// bundle instead.
    async fn check_with_ovs(
        &mut self,
        chains: &BTreeMap<u64, Option<ChainRules>>,
    ) -> Vec<(u64, String)> {
        let rendered: Vec<(u64, Vec<RenderedFlow>)> = chains
            .keys()
            .filter_map(|c| self.chains.get(c))
            .map(|r| {
                let flows = r.flows.iter().filter_map(|f| render_flow(f, &AnyPort).ok());
                (r.cookie, flows.collect())
            })
            .collect();
        let all: Vec<RenderedFlow> = rendered.iter().flat_map(|(_, f)| f).cloned().collect();
        if all.is_empty() || self.bridge.canonical_flows(&all).await.is_ok() {
            return Vec::new();
        }
        let mut refused = Vec::new();
        for (cookie, flows) in rendered {
            let Err(e) = self.bridge.canonical_flows(&flows).await else {
                continue;
            };
            if matches!(e, OvsError::Spawn { .. } | OvsError::Timeout(_)) {
                refused.push((cookie, e.to_string()));
                continue;
            }
            // Find the first flow that makes the list fail: a prefix search, log2(n) runs.
            let (mut ok, mut bad) = (0, flows.len());
            while bad - ok > 1 {
                let mid = (ok + bad) / 2;
                if self.bridge.canonical_flows(&flows[..mid]).await.is_ok() {
                    ok = mid;
                } else {
                    bad = mid;
                }
            }
            let reason = FlowError::Flow {
                index: bad - 1,
                reason: format!("refused by ovs-ofctl: {e}"),
            };
            refused.push((cookie, reason.to_string()));
        }
        refused
    }

    /// Forgets a chain; returns the version it had (0 if unknown).
    fn chain_removed(&mut self, cookie: u64) -> u64 {
        let version = self.chains.remove(&cookie).map_or(0, |r| r.version);
        self.assembler.forget(cookie);
        if let Some(listed) = &mut self.listed {
            listed.remove(&cookie);
        }
        self.removed.insert(cookie);
        self.reported.remove(&cookie);
        version
    }

    /// Takes the controller's chain list; returns the chains it dropped with their versions,
    /// or `None` when the list was ignored.
    fn flow_sync(&mut self, cookies: Vec<u64>) -> Option<Vec<(u64, u64)>> {
        if cookies.len() > MAX_SYNC_COOKIES {
            warn!(
                chains = cookies.len(),
                max = MAX_SYNC_COOKIES,
                "FlowSync lists too many chains; ignored"
            );
            return None;
        }
        let listed: HashSet<u64> = cookies.into_iter().collect();
        let dropped: Vec<(u64, u64)> = self
            .chains
            .iter()
            .filter(|(c, _)| !listed.contains(c))
            .map(|(c, r)| (*c, r.version))
            .collect();
        for (c, _) in &dropped {
            self.chains.remove(c);
            self.reported.remove(c);
            self.assembler.forget(*c);
            self.removed.insert(*c);
        }
        info!(
            chains = listed.len(),
            dropped = dropped.len(),
            "flow sync: reconciling the bridge to the controller's chain list"
        );
        self.listed = Some(listed);
        Some(dropped)
    }

    /// Reads the ports and reconciles if they changed since the last reconcile.
    pub async fn poll_ports(&mut self) -> Vec<ChainStatus> {
        match self.bridge.ports().await {
            Ok(ports) if self.last_ports.as_ref() == Some(&ports) => Vec::new(),
            Ok(ports) => {
                debug!("bridge ports changed");
                self.reconcile_with(ports).await
            }
            Err(e) => {
                self.metrics.errors.inc();
                debug!(error = %e, "cannot read the bridge's ports");
                Vec::new()
            }
        }
    }

    /// Makes the bridge match the desired state; returns the status changes. Compares with
    /// the record of what was written when there is one (a bundle, and a port read, per
    /// reconcile), otherwise reads the bridge.
    pub async fn reconcile(&mut self) -> Vec<ChainStatus> {
        match self.bridge.ports().await {
            Ok(ports) => self.reconcile_with(ports).await,
            Err(e) => self.bridge_failed(e),
        }
    }

    /// Reconciles against the bridge itself, read anew: repairs drift (flows or groups
    /// changed or flushed by someone else) that the record of what was written cannot show.
    pub async fn verify(&mut self) -> Vec<ChainStatus> {
        self.installed = None;
        self.reconcile().await
    }

    fn bridge_failed(&mut self, e: OvsError) -> Vec<ChainStatus> {
        self.metrics.errors.inc();
        warn!(error = %e, "cannot reconcile the bridge");
        let reason = bounded_reason(e.to_string());
        let states: Vec<(u64, ChainState)> = self
            .chains
            .keys()
            .map(|c| {
                (
                    *c,
                    ChainState::Failed {
                        reason: reason.clone(),
                    },
                )
            })
            .collect();
        self.report(states)
    }

    /// Our flows and groups as the switch prints them.
    async fn read_bridge(&mut self) -> Result<View, OvsError> {
        let flows = self
            .bridge
            .dump_flows(COOKIE_PREFIX, COOKIE_PREFIX_MASK)
            .await?
            .into_iter()
            .map(|d| ((d.flow.table, d.flow.matches), (d.cookie, d.flow.actions)))
            .collect();
        let groups = self
            .bridge
            .dump_groups()
            .await?
            .into_iter()
            .filter(|(id, _)| is_our_group(*id))
            .collect();
        Ok(View {
            flows,
            groups,
            read_back: HashSet::new(),
        })
    }

    async fn reconcile_with(&mut self, ports: PortMap) -> Vec<ChainStatus> {
        self.last_ports = Some(ports.clone());
        let mut plans = BTreeMap::new();
        for (cookie, rules) in &self.chains {
            plans.insert(*cookie, plan(rules, &ports));
        }
        let installing_read_back = |view: &View| {
            plans
                .iter()
                .any(|(c, p)| matches!(p, Plan::Install(_)) && view.read_back.contains(c))
        };
        let (form, view) = match self.installed.take() {
            Some(view) if !installing_read_back(&view) => (Form::Rendered, view),
            _ => {
                self.canonicalise(&mut plans).await;
                match self.read_bridge().await {
                    Ok(view) => (Form::Canonical, view),
                    Err(e) => return self.bridge_failed(e),
                }
            }
        };
        resolve_conflicts(&mut plans, form);
        let ops = self.diff(&plans, &view, form);
        let failed = self.apply(ops.clone()).await;
        if failed.is_empty() {
            self.installed = Some(written(&plans, view.clone(), &ops, form));
        }

        // Removed chains are clean once their deletes went through.
        let still_there: HashSet<u64> = view
            .flows
            .values()
            .filter_map(|(cookie, _)| chain_of(*cookie))
            .filter(|c| failed.contains_key(&Owner::Chain(*c)))
            .collect();
        self.removed.retain(|c| still_there.contains(c));

        let mut states = Vec::new();
        for (cookie, plan) in plans {
            let state = match (plan, failed.get(&Owner::Chain(cookie))) {
                (_, Some(reason)) => ChainState::Failed {
                    reason: reason.clone(),
                },
                (Plan::Install(r), None) => ChainState::Installed {
                    flows: u32::try_from(r.flows.len()).unwrap_or(u32::MAX),
                    groups: u32::try_from(r.groups.len()).unwrap_or(u32::MAX),
                },
                (Plan::Pending(missing), None) => ChainState::Pending { missing },
                (Plan::Failed(reason), None) => ChainState::Failed { reason },
            };
            states.push((cookie, state));
        }
        self.report(states)
    }

    /// Fills in canonical forms, from the cache or from `ovs-ofctl` (one run per chain with
    /// new flows, one per new group); a chain the switch would refuse fails.
    async fn canonicalise(&mut self, plans: &mut BTreeMap<u64, Plan>) {
        let mut used_flows = HashSet::new();
        let mut used_groups = HashSet::new();
        // One `ovs-ofctl` run for the new flows of every chain (a batch of new chains costs one
        // process, not one each); chain by chain below only if that run fails, to tell which
        // chain's flows the switch refuses.
        let mut seen = HashSet::new();
        let all_new: Vec<RenderedFlow> = plans
            .values()
            .filter_map(|p| match p {
                Plan::Install(r) => Some(r.flows.iter().map(|(f, _)| f)),
                _ => None,
            })
            .flatten()
            .filter(|f| !self.flow_cache.contains_key(*f) && seen.insert(*f))
            .cloned()
            .collect();
        if !all_new.is_empty() {
            if let Ok(canon) = self.bridge.canonical_flows(&all_new).await {
                self.flow_cache.extend(all_new.into_iter().zip(canon));
            }
        }
        for plan in plans.values_mut() {
            let Plan::Install(r) = plan else { continue };
            let mut result = Ok(());
            for (text, canonical) in r.groups.values_mut() {
                match self.group_cache.get(text.as_str()) {
                    Some(c) => *canonical = c.clone(),
                    None => match self.bridge.canonical_group(text).await {
                        Ok(c) => {
                            self.group_cache.insert(text.clone(), c.clone());
                            *canonical = c;
                        }
                        Err(e) => {
                            result = Err(e);
                            break;
                        }
                    },
                }
                used_groups.insert(text.clone());
            }
            let new: Vec<RenderedFlow> = r
                .flows
                .iter()
                .filter(|(f, _)| !self.flow_cache.contains_key(f))
                .map(|(f, _)| f.clone())
                .collect();
            if result.is_ok() && !new.is_empty() {
                match self.bridge.canonical_flows(&new).await {
                    Ok(canon) => self.flow_cache.extend(new.into_iter().zip(canon)),
                    Err(e) => result = Err(e),
                }
            }
            if let Err(e) = result {
                *plan = Plan::Failed(bounded_reason(format!("refused by ovs-ofctl: {e}")));
                continue;
            }
            for (f, canonical) in &mut r.flows {
                if let Some(c) = self.flow_cache.get(f) {
                    *canonical = c.clone();
                }
                used_flows.insert(f.clone());
            }
        }
        // Keep the caches to what the desired state uses.
        self.flow_cache.retain(|f, _| used_flows.contains(f));
        self.group_cache.retain(|g, _| used_groups.contains(g));
    }

    /// Whether flows of `chain` on the bridge are ours to change.
    fn managed(&self, chain: u64) -> bool {
        self.chains.contains_key(&chain)
            || self.removed.contains(&chain)
            || self.listed.as_ref().is_some_and(|l| !l.contains(&chain))
    }

    fn diff(
        &self,
        plans: &BTreeMap<u64, Plan>,
        view: &View,
        form: Form,
    ) -> Vec<(Owner, Phase, BundleOp)> {
        let mut ops = Vec::new();
        // (table, match) -> (cookie, rendered, actions as compared)
        let mut want: BTreeMap<(u8, &str), (u64, &RenderedFlow, &str)> = BTreeMap::new();
        // id -> (chain, rendered, text as compared)
        let mut want_groups: BTreeMap<u32, (u64, &str, &str)> = BTreeMap::new();
        for (chain, plan) in plans {
            let Plan::Install(r) = plan else { continue };
            for (rendered, canonical) in &r.flows {
                let (key, actions) = match form {
                    Form::Canonical => (
                        (canonical.table, canonical.matches.as_str()),
                        canonical.actions.as_str(),
                    ),
                    Form::Rendered => (
                        (rendered.table, rendered.matches.as_str()),
                        rendered.actions.as_str(),
                    ),
                };
                want.insert(key, (*chain, rendered, actions));
            }
            for (id, (text, canonical)) in &r.groups {
                let compared = match form {
                    Form::Canonical => canonical.as_str(),
                    Form::Rendered => text.as_str(),
                };
                want_groups
                    .entry(*id)
                    .or_insert((*chain, text.as_str(), compared));
            }
        }

        for (id, (chain, text, compared)) in &want_groups {
            match view.groups.get(id) {
                None => ops.push((
                    Owner::Chain(*chain),
                    Phase::Groups,
                    BundleOp::AddGroup((*text).to_owned()),
                )),
                Some(there) if there != compared => ops.push((
                    Owner::Chain(*chain),
                    Phase::Groups,
                    BundleOp::ModifyGroup((*text).to_owned()),
                )),
                Some(_) => {}
            }
        }
        if self.synced() {
            for id in view.groups.keys() {
                if !want_groups.contains_key(id) {
                    ops.push((
                        Owner::Cleanup,
                        Phase::DeleteGroups,
                        BundleOp::DeleteGroup(*id),
                    ));
                }
            }
        }

        let mut seen = HashSet::new();
        for ((table, matches), (cookie, actions)) in &view.flows {
            let Some(chain) = chain_of(*cookie) else {
                continue;
            };
            let key = (*table, matches.as_str());
            match want.get(&key) {
                Some((c, rendered, compared)) if flow_cookie(*c) == *cookie => {
                    seen.insert(key);
                    if compared != actions {
                        ops.push((
                            Owner::Chain(*c),
                            Phase::ModifyFlows,
                            BundleOp::ModifyFlow {
                                cookie: *cookie,
                                table: *table,
                                matches: matches.clone(),
                                actions: rendered.actions.clone(),
                            },
                        ));
                    }
                }
                _ if self.managed(chain) => ops.push((
                    Owner::Chain(chain),
                    Phase::DeleteFlows,
                    BundleOp::DeleteFlow {
                        cookie: *cookie,
                        table: *table,
                        matches: matches.clone(),
                    },
                )),
                _ => {}
            }
        }
        for (key, (chain, rendered, _)) in &want {
            if !seen.contains(key) {
                ops.push((
                    Owner::Chain(*chain),
                    Phase::AddFlows,
                    BundleOp::AddFlow {
                        cookie: flow_cookie(*chain),
                        flow: (*rendered).clone(),
                    },
                ));
            }
        }
        ops.sort_by_key(|(owner, phase, _)| (*phase, *owner));
        ops
    }

    /// Applies `ops` as one bundle, or per owner if that fails; returns the owners whose
    /// changes did not go through, with the reason.
    async fn apply(&mut self, ops: Vec<(Owner, Phase, BundleOp)>) -> HashMap<Owner, String> {
        let mut failed = HashMap::new();
        if ops.is_empty() {
            return failed;
        }
        let owners: BTreeMap<Owner, ()> = ops.iter().map(|(o, _, _)| (*o, ())).collect();
        let all: Vec<BundleOp> = ops.iter().map(|(_, _, op)| op.clone()).collect();
        let started = std::time::Instant::now();
        let result = self.bridge.apply(&all).await;
        self.metrics.bundles.inc();
        match result {
            Ok(()) => {
                debug!(
                    ops = all.len(),
                    ms = started.elapsed().as_millis() as u64,
                    "bundle applied"
                );
                self.count(&all);
                return failed;
            }
            Err(e) if owners.len() == 1 => {
                self.metrics.bundle_failures.inc();
                warn!(error = %e, "bundle refused");
                if let Some(owner) = owners.keys().next() {
                    failed.insert(*owner, bounded_reason(e.to_string()));
                }
                return failed;
            }
            Err(e) => {
                self.metrics.bundle_failures.inc();
                warn!(error = %e, "bundle refused; applying chain by chain");
            }
        }
        for owner in owners.keys() {
            let mine: Vec<BundleOp> = ops
                .iter()
                .filter(|(o, _, _)| o == owner)
                .map(|(_, _, op)| op.clone())
                .collect();
            self.metrics.bundles.inc();
            match self.bridge.apply(&mine).await {
                Ok(()) => self.count(&mine),
                Err(e) => {
                    self.metrics.bundle_failures.inc();
                    warn!(?owner, error = %e, "bundle refused");
                    failed.insert(*owner, bounded_reason(e.to_string()));
                }
            }
        }
        failed
    }

    fn count(&self, ops: &[BundleOp]) {
        for op in ops {
            let c = match op {
                BundleOp::AddFlow { .. } => &self.metrics.flows_added,
                BundleOp::ModifyFlow { .. } => &self.metrics.flows_modified,
                BundleOp::DeleteFlow { .. } => &self.metrics.flows_deleted,
                BundleOp::AddGroup(_) | BundleOp::ModifyGroup(_) | BundleOp::DeleteGroup(_) => {
                    &self.metrics.group_mods
                }
            };
            c.inc();
        }
    }

    /// Records the new states and returns the ones that changed.
    fn report(&mut self, states: Vec<(u64, ChainState)>) -> Vec<ChainStatus> {
        let mut out = Vec::new();
        let mut counts = [0i64; 4];
        for (cookie, state) in states {
            let version = self.chains.get(&cookie).map_or(0, |r| r.version);
            counts[match state {
                ChainState::Installed { .. } => 0,
                ChainState::Pending { .. } => 1,
                ChainState::Failed { .. } => 2,
                _ => 3,
            }] += 1;
            let now = (version, state);
            if self.reported.get(&cookie) == Some(&now) {
                continue;
            }
            match &now.1 {
                ChainState::Installed { flows, groups } => {
                    info!(
                        chain.cookie = cookie,
                        chain.version = version,
                        flows,
                        groups,
                        "chain installed"
                    )
                }
                ChainState::Pending { missing } => {
                    info!(chain.cookie = cookie, chain.version = version, missing = ?missing, "chain pending: ports not on the bridge")
                }
                ChainState::Failed { reason } => {
                    warn!(chain.cookie = cookie, chain.version = version, %reason, "chain failed")
                }
                _ => {}
            }
            self.reported.insert(cookie, now.clone());
            out.push(ChainStatus {
                cookie,
                version: now.0,
                state: now.1,
            });
        }
        self.metrics.set_chains(counts);
        out
    }
}

/// Renders a chain for `ports`, or lists the ports it waits for.
fn plan(rules: &ChainRules, ports: &PortMap) -> Plan {
    let missing: Vec<PortRef> = rules
        .ports()
        .into_iter()
        .filter(|p| ports.resolve(p).is_none())
        .take(MAX_MISSING)
        .cloned()
        .collect();
    if !missing.is_empty() {
        return Plan::Pending(missing);
    }
    let mut r = Rendered {
        flows: Vec::with_capacity(rules.flows.len()),
        groups: BTreeMap::new(),
    };
    for f in &rules.flows {
        match render_flow(f, ports) {
            Ok(text) => r.flows.push((
                text,
                CanonicalFlow {
                    table: 0,
                    matches: String::new(),
                    actions: String::new(),
                },
            )),
            Err(m) => return Plan::Pending(vec![m.0]),
        }
    }
    for g in &rules.groups {
        match render_group(g, ports) {
            Ok(text) => {
                r.groups.insert(group_id(g.group), (text, String::new()));
            }
            Err(m) => return Plan::Pending(vec![m.0]),
        }
    }
    Plan::Install(r)
}

/// Fails chains whose groups or flows clash with those of a lower-numbered chain: two chains
/// may share a group only with identical contents, and never a flow. Compares the forms the
/// reconcile compares (canonical ones are filled in only when the bridge was read).
fn resolve_conflicts(plans: &mut BTreeMap<u64, Plan>, form: Form) {
    let mut groups: HashMap<u32, (u64, String)> = HashMap::new();
    let mut flows: HashMap<(u8, String), u64> = HashMap::new();
    let group_text = |(text, canonical): &(String, String)| match form {
        Form::Canonical => canonical.clone(),
        Form::Rendered => text.clone(),
    };
    let flow_key = |(rendered, canonical): &(RenderedFlow, CanonicalFlow)| match form {
        Form::Canonical => (canonical.table, canonical.matches.clone()),
        Form::Rendered => (rendered.table, rendered.matches.clone()),
    };
    for (chain, plan) in plans.iter_mut() {
        let Plan::Install(r) = plan else { continue };
        let clash = r
            .groups
            .iter()
            .find_map(|(id, g)| match groups.get(id) {
                Some((other, c)) if *c != group_text(g) => Some(format!(
                    "group {} differs from the one chain {other} declares",
                    id & relay_protocol::flow::MAX_GROUP
                )),
                _ => None,
            })
            .or_else(|| {
                r.flows.iter().find_map(|f| {
                    let (table, matches) = flow_key(f);
                    flows.get(&(table, matches.clone())).map(|other| {
                        format!("flow table={table},{matches} is also chain {other}'s")
                    })
                })
            });
        if let Some(reason) = clash {
            *plan = Plan::Failed(reason);
            continue;
        }
        for (id, g) in &r.groups {
            groups.entry(*id).or_insert((*chain, group_text(g)));
        }
        for f in &r.flows {
            flows.insert(flow_key(f), *chain);
        }
    }
}

/// What is on the bridge after `ops` went through, in the form kept between reconciles:
/// what was compared in `view`, minus what was deleted, with every installed chain's flows
/// and groups as rendered (replacing their canonical forms when the bridge was read).
fn written(
    plans: &BTreeMap<u64, Plan>,
    mut view: View,
    ops: &[(Owner, Phase, BundleOp)],
    form: Form,
) -> View {
    for (_, _, op) in ops {
        match op {
            BundleOp::DeleteFlow { table, matches, .. } => {
                view.flows.remove(&(*table, matches.clone()));
            }
            BundleOp::DeleteGroup(id) => {
                view.groups.remove(id);
            }
            _ => {}
        }
    }
    let installed = |chain: u64| matches!(plans.get(&chain), Some(Plan::Install(_)));
    if form == Form::Canonical {
        view.flows
            .retain(|_, (cookie, _)| !chain_of(*cookie).is_some_and(installed));
        view.read_back = view
            .flows
            .values()
            .filter_map(|(cookie, _)| chain_of(*cookie))
            .collect();
    } else {
        view.read_back.retain(|c| !installed(*c));
    }
    for (chain, plan) in plans {
        let Plan::Install(r) = plan else { continue };
        for (f, _) in &r.flows {
            view.flows.insert(
                (f.table, f.matches.clone()),
                (flow_cookie(*chain), f.actions.clone()),
            );
        }
        for (id, (text, _)) in &r.groups {
            view.groups.insert(*id, text.clone());
        }
    }
    view
}

#[cfg(test)]
mod tests;
