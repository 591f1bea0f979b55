//! The pure part of the OVS driver: one chain, with everything it refers to, in; the OpenFlow
//! rules of every host it touches out. No database, no I/O, so every rule the driver produces
//! can be unit-tested from literals.
//!
//! The model is networking-sfc's (reference §2): a chain is a path of nodes with nsp = the
//! chain id and nsi counting down from 255 (source 255, the SF hops 254, 253, ..., the
//! destination next, tap nodes after it); a frame between two nodes carries the MPLS label
//! `nsp << 8 | nsi` of the node it leaves, with TTL = nsi. Tables as the agent's: 0 classifies
//! (priority 30 when matching `in_port`), 10 delivers into ingress ports. What differs, and why:
//!
//! - **The label is pushed in the select group's bucket**, together with the next hop's MAC,
//!   instead of in a table-5 flow keyed on that MAC: networking-sfc's table 5 matches only
//!   `dl_dst`, so two chains sharing an SF would push each other's labels.
//! - **Groups belong to one chain** (`chain_id << 12 | reverse << 11 | tap << 10 | node`),
//!   never shared between chains and refcounted as networking-sfc's are; the host diff keeps
//!   an update incremental.
//! - **`lb_fields` and weights are honoured**: a `selection_method=hash` group over the fields,
//!   and bucket weights from the port pairs' `weight`. A group without `lb_fields` uses OVS's
//!   default selection.
//! - **Symmetric chains pick the same SF instance both ways.** OVS's field hash reads the
//!   fields' values in field-id order and skips fields whose prerequisites fail, so a hash over
//!   a set of "one side" fields (say `ip_src`, `tcp_src`) on the forward path and over their
//!   counterparts (`ip_dst`, `tcp_dst`) on the reverse path sees the same values in the same
//!   order; with identical buckets (same order, ids and weights) it picks the same bucket. So
//!   a symmetric chain's `lb_fields` are folded onto the source side (a field and its
//!   counterpart collapse to one; Ethernet fields are dropped, as the SFs rewrite MACs), and
//!   default to `ip_src, tcp_src, udp_src` (one SF per client connection).
//! - **The end of the chain is delivered, not flooded**: when the classifier names the
//!   destination port (`logical_destination_port`, or the source port on the reverse path),
//!   the last hop sends the frame there like to one more hop (label of the last SF node, the
//!   port's MAC, table 10 pops and outputs), so a bump-in-the-wire SF that leaves the frame
//!   addressed to itself still reaches the destination and the bridge never learns the
//!   source's MAC on an SF port. Without one it pops and hands the frame to `NORMAL`, as
//!   networking-sfc does.
//! - **Across hosts** a hop to a port on another host sets `tun_id` to the VXLAN VNI of the
//!   target port's network and outputs to the bridge port [`tunnel_port`]`(remote host)`, a
//!   VXLAN port with `options:key=flow` to that host's tunnel endpoint which the operator (or
//!   the test) creates; the far side's base flow sends MPLS frames to table 10 as any other.
//!
//! Proxy SFs (no correlation) get the label popped before them and pushed again after them,
//! so their egress is re-classified with the classifier (table 0, `in_port` + classifier
//! match). MPLS-aware SFs (port pair correlation `mpls`) keep the label: their ingress flow
//! only outputs, their egress is matched on `in_port` and the label `nsp << 8 | nsi` they are
//! expected to have set. Tap port pair groups get a copy: the upstream node's egress goes to
//! an `all` group whose first bucket continues the chain and whose second sends to the tap.
//! Service graphs hand off through `reg0` as networking-sfc does: the source chain's end
//! loads its last label into `reg0` and resubmits to table 0, where the destination chain's
//! classifier matches `reg0` instead of `in_port` (the source chain's end matches `reg0=0`, so
//! a frame handed off is never handed off again).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use relay_protocol::flow::{
    Action, Bucket, ChainRules, FlowSpec, GroupKind, GroupSpec, HashField, IpNet, Mac, Match,
    PortMask, PortRef, Selection, ETH_TYPE_IPV4, ETH_TYPE_IPV6, ETH_TYPE_MPLS, MAX_PORT_NAME,
};
use relay_protocol::Uuid;
use sha2::{Digest, Sha256};

/// Table of classification and SF egress (neutron-lib `LOCAL_SWITCHING`).
pub const TABLE_CLASSIFY: u8 = 0;
/// Table delivering labelled frames into ingress ports (networking-sfc `INGRESS_TABLE`).
pub const TABLE_INGRESS: u8 = 10;
/// Priority of flows matching `in_port` (networking-sfc `PC_INGRESS_PRI`).
pub const PRI_IN_PORT: u16 = 30;
/// Priority of the classifier flows of a service graph's destination chain.
pub const PRI_GRAPH: u16 = 31;
/// Largest chain id whose labels fit MPLS's 20 bits (`nsp << 8 | nsi`).
pub const MAX_CHAIN_ID: i64 = (1 << 12) - 1;
/// The cookie of the base flows every host gets (not a chain id: those start at 1).
pub const BASE_COOKIE: u64 = 0;
/// Most port pair groups of a chain: the node index goes in 10 bits of the group number, and
/// nsi (255 down, taps after the destination) must stay above 0.
pub const MAX_HOPS: usize = 250;
/// The register of the service-graph hand-off.
const GRAPH_REG: u8 = 0;

/// The bridge port that reaches `host` over VXLAN: `sfcvx` and the first 10 hex digits of the
/// SHA-256 of the host name (host names are longer than the 15 bytes an interface name has).
/// It must be a VXLAN port with `options:key=flow` and `options:remote_ip` = that host.
pub fn tunnel_port(host: &str) -> String {
    let digest = Sha256::digest(host.as_bytes());
    let name = format!("sfcvx{}", &hex::encode(digest)[..10]);
    debug_assert!(name.len() <= MAX_PORT_NAME);
    name
}

/// The MPLS label of a node.
pub fn label(nsp: u32, nsi: u8) -> u32 {
    (nsp << 8) | u32::from(nsi)
}

/// A Neutron port as the driver needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortInfo {
    pub mac: Mac,
    /// `binding:host_id`; empty when unbound (nothing is placed for it).
    pub host: String,
    /// The VXLAN VNI of its network (`provider:segmentation_id`).
    pub vni: u64,
}

/// A port pair.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairInfo {
    pub ingress: Uuid,
    pub egress: Uuid,
    /// Bucket weight (`service_function_parameters.weight`).
    pub weight: u16,
    /// `correlation: mpls`: the SF keeps and sets labels itself.
    pub mpls: bool,
}

/// A port pair group of the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupInfo {
    pub tap: bool,
    /// `port_pair_group_parameters.lb_fields`, as the API stores them.
    pub lb_fields: Vec<String>,
    pub pairs: Vec<PairInfo>,
}

/// A flow classifier.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClassifierInfo {
    pub ipv6: bool,
    pub protocol: Option<u8>,
    pub src_ports: Option<(u16, u16)>,
    pub dst_ports: Option<(u16, u16)>,
    pub src_prefix: Option<IpNet>,
    pub dst_prefix: Option<IpNet>,
    pub source: Option<Uuid>,
    pub destination: Option<Uuid>,
}

/// A chain that hands off to this one in a service graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphSource {
    /// The label of its last SF node, which it loads into `reg0`.
    pub label: u32,
    /// Hosts of its last group's egress ports: where the hand-off happens.
    pub hosts: BTreeSet<String>,
}

/// One chain and everything it refers to.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ChainInput {
    pub chain_id: i64,
    pub symmetric: bool,
    pub groups: Vec<GroupInfo>,
    pub classifiers: Vec<ClassifierInfo>,
    pub ports: BTreeMap<Uuid, PortInfo>,
    /// Chains that hand off into this one (it is a destination in a service graph).
    pub graph_sources: Vec<GraphSource>,
    /// This chain hands off to others at its end (it is a source in a service graph).
    pub graph_source: bool,
}

/// Why a chain cannot be rendered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ComputeError {
    #[error("chain_id {0} does not fit an MPLS label (nsp << 8 | nsi has 20 bits): at most 4095")]
    ChainIdTooLarge(i64),
    #[error("a chain's flow classifiers must all be IPv4 or all be IPv6")]
    MixedEthertypes,
    #[error("a symmetric chain needs logical_destination_port on every flow classifier")]
    SymmetricWithoutDestination,
    #[error("a chain of {0} port pair groups is too long for its path indexes")]
    TooLong(usize),
}

/// Per-host rules as they are built up.
#[derive(Default)]
struct HostRules {
    flows: Vec<FlowSpec>,
    groups: BTreeMap<u32, GroupSpec>,
}

/// Where a frame goes next: a port, which MAC it is addressed to there, and what to do on the
/// way in.
#[derive(Debug, Clone)]
struct Target {
    port: Uuid,
    pop: bool,
    weight: u16,
}

/// The state of a frame leaving a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Egress {
    /// Plain IP (the source, a proxy SF).
    Ip,
    /// Already labelled by an MPLS-aware SF.
    Mpls,
}

/// The direction-dependent view of a chain.
struct Path<'a> {
    reverse: bool,
    /// Non-tap hops in path order, with their index in the chain's group list.
    hops: Vec<(usize, &'a GroupInfo)>,
    /// Tap groups, keyed by the hop position (into `hops`, or -1 for the source) after which
    /// they copy, with their nsi.
    taps: BTreeMap<isize, Vec<(u8, usize, &'a GroupInfo)>>,
}

struct Ctx<'a> {
    input: &'a ChainInput,
    nsp: u32,
    pop_type: u16,
    hosts: BTreeMap<String, HostRules>,
}

/// The rules of `input` on every host it touches (cookie = chain id, version 0: the caller
/// versions them). A host appears when it has at least one flow.
pub fn compute(input: &ChainInput) -> Result<BTreeMap<String, ChainRules>, ComputeError> {
    if !(0..=MAX_CHAIN_ID).contains(&input.chain_id) {
        return Err(ComputeError::ChainIdTooLarge(input.chain_id));
    }
    if input.groups.len() > MAX_HOPS {
        return Err(ComputeError::TooLong(input.groups.len()));
    }
    let ipv6 = match (
        input.classifiers.iter().all(|c| c.ipv6),
        input.classifiers.iter().any(|c| c.ipv6),
    ) {
        (true, _) if !input.classifiers.is_empty() => true,
        (false, true) => return Err(ComputeError::MixedEthertypes),
        _ => false,
    };
    if input.symmetric && input.classifiers.iter().any(|c| c.destination.is_none()) {
        return Err(ComputeError::SymmetricWithoutDestination);
    }
    let mut ctx = Ctx {
        input,
        // Checked above: 0..=4095.
        nsp: input.chain_id as u32,
        pop_type: if ipv6 { ETH_TYPE_IPV6 } else { ETH_TYPE_IPV4 },
        hosts: BTreeMap::new(),
    };
    ctx.path(&path(input, false));
    if input.symmetric {
        ctx.path(&path(input, true));
    }
    let cookie = input.chain_id as u64;
    Ok(ctx
        .hosts
        .into_iter()
        .filter(|(_, r)| !r.flows.is_empty())
        .map(|(host, r)| {
            let mut flows: Vec<FlowSpec> = Vec::with_capacity(r.flows.len());
            let mut keys = BTreeSet::new();
            for f in r.flows {
                // The same flow twice (say an SF whose ingress is its egress, on both paths)
                // is one flow. Two classifiers that differ only in their logical ports give
                // an SF egress flow with one match and two ends; the first one wins (the
                // host would refuse the pair).
                let mut m = f.matches.clone();
                m.sort();
                if keys.insert((f.table, f.priority, m)) {
                    flows.push(f);
                }
            }
            (
                host,
                ChainRules {
                    cookie,
                    version: 0,
                    groups: r.groups.into_values().collect(),
                    flows,
                },
            )
        })
        .collect())
}

/// The base flows every host with a chain gets (networking-sfc's agent start-up flows): MPLS
/// frames, from local hops or from tunnels, go to the ingress table, where unknown labels are
/// dropped.
pub fn base_rules() -> ChainRules {
    ChainRules {
        cookie: BASE_COOKIE,
        version: 0,
        groups: vec![],
        flows: vec![
            FlowSpec {
                table: TABLE_CLASSIFY,
                priority: 20,
                matches: vec![Match::EthType(ETH_TYPE_MPLS)],
                actions: vec![Action::GotoTable(TABLE_INGRESS)],
            },
            FlowSpec {
                table: TABLE_INGRESS,
                priority: 0,
                matches: vec![],
                actions: vec![Action::Drop],
            },
        ],
    }
}

/// The nodes of one direction: taps are numbered after the destination, as networking-sfc
/// renumbers them.
fn path(input: &ChainInput, reverse: bool) -> Path<'_> {
    let mut order: Vec<(usize, &GroupInfo)> = input.groups.iter().enumerate().collect();
    if reverse {
        order.reverse();
    }
    let mut hops = Vec::new();
    let mut tap_at = Vec::new();
    for (i, g) in order {
        if g.tap {
            tap_at.push((hops.len() as isize - 1, i, g));
        } else {
            hops.push((i, g));
        }
    }
    // src 255, hops 254.., dst next, then the taps.
    let mut next_nsi = 255 - hops.len() as u8 - 2;
    let mut taps: BTreeMap<isize, Vec<(u8, usize, &GroupInfo)>> = BTreeMap::new();
    for (after, i, g) in tap_at {
        taps.entry(after).or_default().push((next_nsi, i, g));
        next_nsi = next_nsi.saturating_sub(1);
    }
    Path {
        reverse,
        hops,
        taps,
    }
}

/// Port range as minimal value/mask pairs (`ovs_ext_lib.get_port_mask`); `None` is any port.
pub fn port_masks(range: Option<(u16, u16)>) -> Vec<Option<PortMask>> {
    let Some((min, max)) = range else {
        return vec![None];
    };
    if (min, max) == (0, u16::MAX) {
        return vec![None];
    }
    let mut out = Vec::new();
    let (mut lo, hi) = (u32::from(min), u32::from(max));
    while lo <= hi {
        // The largest aligned block starting at lo that does not pass hi.
        let mut size = if lo == 0 {
            1 << 16
        } else {
            lo & lo.wrapping_neg()
        };
        while lo + size - 1 > hi {
            size >>= 1;
        }
        out.push(Some(PortMask {
            value: lo as u16,
            mask: !(size - 1) as u16,
        }));
        lo += size;
    }
    out
}

/// The hash fields of a group's `lb_fields` on one path of the chain.
pub fn selection(lb_fields: &[String], ipv6: bool, symmetric: bool, reverse: bool) -> Selection {
    let field = |name: &str| -> Option<HashField> {
        Some(match (name, ipv6) {
            ("eth_src", _) => HashField::EthSrc,
            ("eth_dst", _) => HashField::EthDst,
            ("ip_src", false) => HashField::IpSrc,
            ("ip_dst", false) => HashField::IpDst,
            ("ip_src", true) => HashField::Ipv6Src,
            ("ip_dst", true) => HashField::Ipv6Dst,
            ("tcp_src", _) => HashField::TcpSrc,
            ("tcp_dst", _) => HashField::TcpDst,
            ("udp_src", _) => HashField::UdpSrc,
            ("udp_dst", _) => HashField::UdpDst,
            _ => return None,
        })
    };
    if !symmetric {
        let mut fields: Vec<HashField> = Vec::new();
        for f in lb_fields.iter().filter_map(|n| field(n)) {
            if !fields.contains(&f) {
                fields.push(f);
            }
        }
        return if fields.is_empty() {
            Selection::Default
        } else {
            Selection::Hash(fields)
        };
    }
    // Symmetric: fold onto the source side, then mirror on the reverse path.
    let mut sides: Vec<&str> = Vec::new();
    for name in lb_fields {
        let side = match name.as_str() {
            "ip_src" | "ip_dst" => "ip",
            "tcp_src" | "tcp_dst" => "tcp",
            "udp_src" | "udp_dst" => "udp",
            _ => continue,
        };
        if !sides.contains(&side) {
            sides.push(side);
        }
    }
    if sides.is_empty() {
        sides = vec!["ip", "tcp", "udp"];
    }
    let end = if reverse { "dst" } else { "src" };
    let fields = sides
        .iter()
        .filter_map(|s| field(&format!("{s}_{end}")))
        .collect();
    Selection::Hash(fields)
}

impl Ctx<'_> {
    fn host_of(&self, port: &Uuid) -> Option<&str> {
        self.input
            .ports
            .get(port)
            .map(|p| p.host.as_str())
            .filter(|h| !h.is_empty())
    }

    fn host(&mut self, host: &str) -> &mut HostRules {
        self.hosts.entry(host.to_owned()).or_default()
    }

    fn add_flow(&mut self, host: &str, flow: FlowSpec) {
        self.host(host).flows.push(flow);
    }

    /// The ingress port of a pair on this path (its egress on the reverse path).
    fn pair_in(pair: &PairInfo, reverse: bool) -> Uuid {
        if reverse {
            pair.egress
        } else {
            pair.ingress
        }
    }

    fn pair_out(pair: &PairInfo, reverse: bool) -> Uuid {
        if reverse {
            pair.ingress
        } else {
            pair.egress
        }
    }

    /// The actions that carry a frame leaving a node with label `label` to `target`, from
    /// `host`; `None` when the target port is unknown or unbound.
    fn hop_actions(
        &self,
        host: &str,
        egress: Egress,
        lbl: u32,
        target: &Target,
    ) -> Option<Vec<Action>> {
        let port = self.input.ports.get(&target.port)?;
        if port.host.is_empty() {
            return None;
        }
        let mut a = Vec::with_capacity(7);
        if egress == Egress::Ip {
            a.push(Action::PushMpls {
                ethertype: ETH_TYPE_MPLS,
            });
            a.push(Action::SetMplsLabel(lbl));
            a.push(Action::SetMplsTtl((lbl & 0xff) as u8));
        }
        a.push(Action::SetEthDst(port.mac));
        if port.host == host {
            a.push(Action::Resubmit {
                table: TABLE_INGRESS,
            });
        } else {
            a.push(Action::SetTunId(port.vni));
            a.push(Action::Output(PortRef::Named(tunnel_port(&port.host))));
        }
        Some(a)
    }

    /// The table-10 flow on the target's host that takes a frame with `lbl` in.
    fn ingress_flow(&mut self, lbl: u32, target: &Target) {
        let Some(port) = self.input.ports.get(&target.port).cloned() else {
            return;
        };
        if port.host.is_empty() {
            return;
        }
        let mut actions = Vec::new();
        if target.pop {
            actions.push(Action::PopMpls {
                ethertype: self.pop_type,
            });
        }
        actions.push(Action::Output(PortRef::Neutron(target.port)));
        self.add_flow(
            &port.host,
            FlowSpec {
                table: TABLE_INGRESS,
                priority: 1,
                matches: vec![
                    Match::EthType(ETH_TYPE_MPLS),
                    Match::EthDst(port.mac),
                    Match::MplsLabel(lbl),
                ],
                actions,
            },
        );
    }

    fn group_number(&self, reverse: bool, tap: bool, node: usize) -> u32 {
        (self.nsp << 12) | (u32::from(reverse) << 11) | (u32::from(tap) << 10) | node as u32
    }

    fn path(&mut self, p: &Path<'_>) {
        let ipv6 = self.pop_type == ETH_TYPE_IPV6;
        let n = p.hops.len();
        // Node k: 0 = source, 1..=n = hops; its nsi is 255 - k.
        for k in 0..=n {
            let nsi = 255 - k as u8;
            let lbl = label(self.nsp, nsi);
            // Where frames leaving node k go: the next hop's pairs, or the destination.
            let next: Option<&GroupInfo> = p.hops.get(k).map(|(_, g)| *g);
            let taps = p.taps.get(&(k as isize - 1)).cloned().unwrap_or_default();
            // The egress of node k: (host, match prefix, egress state, classifier) per flow.
            let egresses = self.egresses(p, k, lbl);
            for (host, matches, egress, fc) in egresses {
                let mut actions = Vec::new();
                // The continuation of the chain.
                let mut cont: Vec<Action> = match next {
                    Some(g) => {
                        let group = self.group_number(p.reverse, false, k);
                        let targets: Vec<Target> = g
                            .pairs
                            .iter()
                            .map(|pp| Target {
                                port: Self::pair_in(pp, p.reverse),
                                pop: !pp.mpls,
                                weight: pp.weight,
                            })
                            .collect();
                        let mut buckets = Vec::new();
                        for t in &targets {
                            // A pair whose port is unbound still gets a bucket (empty: drops),
                            // so that bucket ids stay aligned between the two directions.
                            let acts = self.hop_actions(&host, egress, lbl, t).unwrap_or_default();
                            buckets.push(Bucket {
                                weight: t.weight,
                                actions: acts,
                            });
                        }
                        let sel = selection(&g.lb_fields, ipv6, self.input.symmetric, p.reverse);
                        self.host(&host).groups.insert(
                            group,
                            GroupSpec {
                                group,
                                kind: GroupKind::Select,
                                selection: sel,
                                buckets,
                            },
                        );
                        vec![Action::Group(group)]
                    }
                    None => self.chain_end(&host, egress, lbl, fc.as_ref(), p.reverse),
                };
                if !taps.is_empty() {
                    // The copy to the taps: an `all` group, first bucket the chain, then one
                    // bucket per tap.
                    let group = self.group_number(p.reverse, true, k);
                    let mut buckets = vec![Bucket {
                        weight: 1,
                        actions: std::mem::take(&mut cont),
                    }];
                    for (tap_nsi, _, g) in &taps {
                        let tap_lbl = label(self.nsp, *tap_nsi + 1);
                        for pp in &g.pairs {
                            let t = Target {
                                port: Self::pair_in(pp, p.reverse),
                                pop: !pp.mpls,
                                weight: 1,
                            };
                            let mut acts = self
                                .hop_actions(&host, Egress::Ip, tap_lbl, &t)
                                .unwrap_or_default();
                            if egress == Egress::Mpls {
                                // Relabel the copy rather than stacking a second label.
                                acts.retain(|a| !matches!(a, Action::PushMpls { .. }));
                            }
                            buckets.push(Bucket {
                                weight: 1,
                                actions: acts,
                            });
                        }
                    }
                    self.host(&host).groups.insert(
                        group,
                        GroupSpec {
                            group,
                            kind: GroupKind::All,
                            selection: Selection::Default,
                            buckets,
                        },
                    );
                    cont = vec![Action::Group(group)];
                }
                actions.extend(cont);
                self.add_flow(
                    &host,
                    FlowSpec {
                        table: TABLE_CLASSIFY,
                        priority: if matches.iter().any(|m| matches!(m, Match::InPort(_))) {
                            PRI_IN_PORT
                        } else {
                            PRI_GRAPH
                        },
                        matches,
                        actions,
                    },
                );
            }
            // Ingress into the next hop's pairs and the taps.
            if let Some(g) = next {
                for pp in &g.pairs {
                    let t = Target {
                        port: Self::pair_in(pp, p.reverse),
                        pop: !pp.mpls,
                        weight: pp.weight,
                    };
                    self.ingress_flow(lbl, &t);
                }
            }
            for (tap_nsi, _, g) in &taps {
                for pp in &g.pairs {
                    let t = Target {
                        port: Self::pair_in(pp, p.reverse),
                        pop: !pp.mpls,
                        weight: 1,
                    };
                    self.ingress_flow(label(self.nsp, *tap_nsi + 1), &t);
                }
            }
        }
    }

    /// The egress flows' matches of node k: one per classifier (and port-mask combination)
    /// for the source and proxy SFs, one per MPLS-aware SF port.
    #[allow(clippy::type_complexity)]
    fn egresses(
        &self,
        p: &Path<'_>,
        k: usize,
        lbl: u32,
    ) -> Vec<(String, Vec<Match>, Egress, Option<ClassifierInfo>)> {
        let mut out = Vec::new();
        let graph_end = p.hops.len() == k && self.input.graph_source && !p.reverse;
        let reg0_zero = Match::Reg {
            index: GRAPH_REG,
            value: 0,
            mask: u32::MAX,
        };
        if k == 0 {
            for fc in &self.input.classifiers {
                let fc = if p.reverse { swapped(fc) } else { fc.clone() };
                if p.reverse || self.input.graph_sources.is_empty() {
                    let Some(src) = fc.source else { continue };
                    let Some(host) = self.host_of(&src) else {
                        continue;
                    };
                    for mut m in classifier_matches(&fc) {
                        m.insert(0, Match::InPort(PortRef::Neutron(src)));
                        if graph_end {
                            m.push(reg0_zero.clone());
                        }
                        out.push((host.to_owned(), m, Egress::Ip, Some(fc.clone())));
                    }
                } else {
                    // A destination chain of a service graph: classify what the source chains
                    // hand off, where they hand it off; logical_source_port is ignored.
                    for gs in &self.input.graph_sources {
                        for host in &gs.hosts {
                            for mut m in classifier_matches(&fc) {
                                m.push(Match::Reg {
                                    index: GRAPH_REG,
                                    value: gs.label,
                                    mask: u32::MAX,
                                });
                                out.push((host.clone(), m, Egress::Ip, Some(fc.clone())));
                            }
                        }
                    }
                }
            }
            return out;
        }
        let (_, g) = p.hops[k - 1];
        for pp in &g.pairs {
            let port = Self::pair_out(pp, p.reverse);
            let Some(host) = self.host_of(&port) else {
                continue;
            };
            if pp.mpls {
                let mut m = vec![
                    Match::InPort(PortRef::Neutron(port)),
                    Match::EthType(ETH_TYPE_MPLS),
                    Match::MplsLabel(lbl),
                ];
                if graph_end {
                    m.push(reg0_zero.clone());
                }
                out.push((host.to_owned(), m, Egress::Mpls, None));
            } else {
                for fc in &self.input.classifiers {
                    let fc = if p.reverse { swapped(fc) } else { fc.clone() };
                    for mut m in classifier_matches(&fc) {
                        m.insert(0, Match::InPort(PortRef::Neutron(port)));
                        if graph_end {
                            m.push(reg0_zero.clone());
                        }
                        out.push((host.to_owned(), m, Egress::Ip, Some(fc.clone())));
                    }
                }
            }
        }
        out
    }

    /// What the last node does with a frame: hand off (service graph), deliver to the
    /// classifier's destination port, or pop and switch normally.
    fn chain_end(
        &mut self,
        host: &str,
        egress: Egress,
        lbl: u32,
        fc: Option<&ClassifierInfo>,
        reverse: bool,
    ) -> Vec<Action> {
        let mut pop = Vec::new();
        if egress == Egress::Mpls {
            pop.push(Action::PopMpls {
                ethertype: self.pop_type,
            });
        }
        if self.input.graph_source && !reverse {
            let mut a = vec![Action::LoadReg {
                index: GRAPH_REG,
                value: lbl,
            }];
            a.extend(pop);
            a.push(Action::Resubmit {
                table: TABLE_CLASSIFY,
            });
            return a;
        }
        if let Some(dst) = fc.and_then(|fc| fc.destination) {
            let t = Target {
                port: dst,
                pop: true,
                weight: 1,
            };
            if let Some(a) = self.hop_actions(host, egress, lbl, &t) {
                self.ingress_flow(lbl, &t);
                return a;
            }
        }
        pop.push(Action::Normal);
        pop
    }
}

/// The classifier as seen by the reverse path: sources and destinations swapped.
fn swapped(fc: &ClassifierInfo) -> ClassifierInfo {
    ClassifierInfo {
        ipv6: fc.ipv6,
        protocol: fc.protocol,
        src_ports: fc.dst_ports,
        dst_ports: fc.src_ports,
        src_prefix: fc.dst_prefix,
        dst_prefix: fc.src_prefix,
        source: fc.destination,
        destination: fc.source,
    }
}

/// The match sets of a classifier: the cross product of its source and destination port
/// masks.
pub fn classifier_matches(fc: &ClassifierInfo) -> Vec<Vec<Match>> {
    let mut base = vec![Match::EthType(if fc.ipv6 {
        ETH_TYPE_IPV6
    } else {
        ETH_TYPE_IPV4
    })];
    if let Some(p) = fc.protocol {
        base.push(Match::IpProto(p));
    }
    let family_ok = |n: &IpNet| matches!(n.addr, IpAddr::V6(_)) == fc.ipv6;
    if let Some(n) = fc.src_prefix.filter(family_ok) {
        base.push(Match::IpSrc(n));
    }
    if let Some(n) = fc.dst_prefix.filter(family_ok) {
        base.push(Match::IpDst(n));
    }
    let mut out = Vec::new();
    for s in port_masks(fc.src_ports) {
        for d in port_masks(fc.dst_ports) {
            let mut m = base.clone();
            if let Some(s) = s {
                m.push(Match::TpSrc(s));
            }
            if let Some(d) = d {
                m.push(Match::TpDst(d));
            }
            out.push(m);
        }
    }
    out
}

#[cfg(test)]
#[path = "compute_tests.rs"]
mod tests;
