//! OpenFlow rules of one port chain on one host, as the controller's OVS driver sends them to
//! the relay-host that programs the local integration bridge.
//!
//! Design:
//!
//! - **Structured, not text.** A rule is a [`FlowSpec`] of typed [`Match`]es and [`Action`]s
//!   and a group a [`GroupSpec`], never an `ovs-ofctl` string: the host renders the text
//!   itself from values it checked, so nothing the controller sends can smuggle extra fields,
//!   actions or commands into `ovs-ofctl`. The vocabulary is what the networking-sfc OVS
//!   driver needs (classification on ports, MACs, IP 5-tuples with port masks, MPLS labels,
//!   VLANs, registers and tunnel ids; MPLS push/pop, MAC and VLAN rewrites, register loads,
//!   resubmit/goto, groups, output, NORMAL) and nothing else. Every enum is append-only, like
//!   the messages that carry them.
//! - **Symbolic ports.** Rules name Neutron ports by UUID ([`PortRef::Neutron`], the OVSDB
//!   `Interface` `external_ids:iface-id`) or bridge ports by name ([`PortRef::Named`], e.g.
//!   `patch-tun`); the host resolves them to OpenFlow port numbers and keeps a chain pending
//!   until every port it names is on the bridge.
//! - **Scoped ids.** `cookie` is the chain's id in the driver's namespace (at most
//!   [`MAX_COOKIE`]); the host ORs it into the flow cookies under a fixed prefix that marks
//!   the flows it owns. Group numbers are likewise relative ([`MAX_GROUP`]) and land in a
//!   reserved range of OpenFlow group ids. A group may be declared by several chains only
//!   with identical contents; a flow may only use groups its own chain declares.
//! - **Desired state, level-triggered.** One [`ChainRules`] is the complete rule set of a
//!   chain on a host; sending it again is harmless, the host applies the difference. When it
//!   does not fit one uplink envelope it travels as several [`ChainFlows`] parts (see
//!   [`ChainRules::into_parts`]), sent back to back; the host acts once the last arrives.
//!
//! [`ChainRules::validate`] checks everything that can be checked without the bridge:
//! bounds, value ranges, the prerequisites OpenFlow sets on match fields (an IP address
//! needs an IP ethertype, a transport port a transport protocol, ...), action placement
//! (`drop` alone, `goto_table` last and forward), and group references. The host still
//! parses the rendered text with `ovs-ofctl` before touching the bridge, which catches the
//! finer action/match consistency rules OpenFlow 1.1+ imposes.

use std::collections::{BTreeSet, HashSet};
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::uplink::MAX_ENVELOPE;

/// Largest chain cookie: the low 48 bits of the OpenFlow cookie; the host owns the top 16.
pub const MAX_COOKIE: u64 = (1 << 48) - 1;
/// Largest group number: the low 24 bits of the OpenFlow group id; the host owns the rest.
pub const MAX_GROUP: u32 = (1 << 24) - 1;
/// Highest OpenFlow table a rule may use (255 is `OFPTT_ALL`).
pub const MAX_TABLE: u8 = 254;
/// Most parts one chain's rules may be split into.
pub const MAX_PARTS: u16 = 64;
/// Most flows of one chain on one host.
pub const MAX_CHAIN_FLOWS: usize = 8192;
/// Most groups one chain declares.
pub const MAX_CHAIN_GROUPS: usize = 512;
/// Most match fields of one flow.
pub const MAX_MATCHES: usize = 16;
/// Most actions of one flow.
pub const MAX_ACTIONS: usize = 32;
/// Most buckets of one group.
pub const MAX_BUCKETS: usize = 64;
/// Most actions of one bucket.
pub const MAX_BUCKET_ACTIONS: usize = 16;
/// Most fields a select group hashes on.
pub const MAX_HASH_FIELDS: usize = 8;
/// Most chains one `FlowSync` lists (4096 cookies of 7 varint bytes fit one envelope).
pub const MAX_SYNC_COOKIES: usize = 4096;
/// Longest bridge port name (Linux interface names are at most 15 bytes).
pub const MAX_PORT_NAME: usize = 15;
/// Longest reason text in a [`ChainState`].
pub const MAX_REASON: usize = 1024;
/// Most missing ports a [`ChainState::Pending`] lists.
pub const MAX_MISSING: usize = 32;
/// Highest OpenFlow register index (`reg0`..`reg15`).
pub const MAX_REG: u8 = 15;

/// Room left in an envelope for the part's own fields when splitting.
const PART_OVERHEAD: usize = 64;

pub const ETH_TYPE_IPV4: u16 = 0x0800;
pub const ETH_TYPE_IPV6: u16 = 0x86dd;
pub const ETH_TYPE_MPLS: u16 = 0x8847;
pub const ETH_TYPE_MPLS_MCAST: u16 = 0x8848;
pub const IP_PROTO_TCP: u8 = 6;
pub const IP_PROTO_UDP: u8 = 17;
pub const IP_PROTO_SCTP: u8 = 132;

/// Why a rule set was refused; says which flow or group and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FlowError {
    #[error("chain: {0}")]
    Chain(String),
    #[error("flow #{index}: {reason}")]
    Flow { index: usize, reason: String },
    #[error("group {group}: {reason}")]
    Group { group: u32, reason: String },
}

/// A MAC address; `Display`/`FromStr` use the `aa:bb:cc:dd:ee:ff` form.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Mac(pub [u8; 6]);

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Mac {
    type Err = FlowError;
    fn from_str(s: &str) -> Result<Mac, FlowError> {
        let bad = || FlowError::Chain(format!("{s:?} is not a MAC address"));
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut out {
            let p = parts.next().ok_or_else(bad)?;
            if p.len() != 2 {
                return Err(bad());
            }
            *byte = u8::from_str_radix(p, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(Mac(out))
    }
}

/// An IP prefix; host bits are ignored (the host renders the network address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct IpNet {
    pub addr: IpAddr,
    pub prefix: u8,
}

impl IpNet {
    pub fn new(addr: IpAddr, prefix: u8) -> IpNet {
        IpNet { addr, prefix }
    }

    fn max_prefix(&self) -> u8 {
        match self.addr {
            IpAddr::V4(_) => 32,
            IpAddr::V6(_) => 128,
        }
    }

    /// The address with the host bits cleared.
    pub fn network(&self) -> IpAddr {
        let prefix = u32::from(self.prefix.min(self.max_prefix()));
        match self.addr {
            IpAddr::V4(a) => {
                let mask = u32::MAX.checked_shl(32 - prefix).unwrap_or(0);
                IpAddr::V4((u32::from(a) & mask).into())
            }
            IpAddr::V6(a) => {
                let mask = u128::MAX.checked_shl(128 - prefix).unwrap_or(0);
                IpAddr::V6((u128::from(a) & mask).into())
            }
        }
    }
}

impl fmt::Display for IpNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network(), self.prefix)
    }
}

/// A transport port match as value and mask (networking-sfc expands port ranges into such
/// pairs: 100-103 is `0x64/0xfffc`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PortMask {
    pub value: u16,
    pub mask: u16,
}

impl PortMask {
    pub fn exact(port: u16) -> PortMask {
        PortMask {
            value: port,
            mask: 0xffff,
        }
    }
}

/// A port of the bridge, by what the controller knows it as.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum PortRef {
    /// A Neutron port: the interface whose `external_ids:iface-id` is this UUID.
    Neutron(Uuid),
    /// A bridge port by interface name, e.g. `patch-tun`.
    Named(String),
    /// OpenFlow's `IN_PORT`: only as an output, to send a packet back where it came from.
    InPort,
}

impl fmt::Display for PortRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortRef::Neutron(id) => write!(f, "port {id}"),
            PortRef::Named(name) => write!(f, "interface {name:?}"),
            PortRef::InPort => f.write_str("IN_PORT"),
        }
    }
}

/// One match field. Append-only.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Match {
    InPort(PortRef),
    EthSrc(Mac),
    EthDst(Mac),
    EthType(u16),
    /// 802.1Q VLAN id, 0..=4095 (`dl_vlan`).
    VlanVid(u16),
    /// IP protocol number; needs an IPv4 or IPv6 `EthType`.
    IpProto(u8),
    /// Source prefix; needs `EthType` 0x0800 (IPv4) or 0x86dd (IPv6) to match its family.
    IpSrc(IpNet),
    IpDst(IpNet),
    /// Transport source port; needs `IpProto` TCP, UDP or SCTP.
    TpSrc(PortMask),
    TpDst(PortMask),
    /// MPLS label, 20 bits; needs an MPLS `EthType`.
    MplsLabel(u32),
    /// A register `reg0`..`reg15` under a mask.
    Reg {
        index: u8,
        value: u32,
        mask: u32,
    },
    TunId(u64),
}

/// One action. Append-only.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Action {
    Output(PortRef),
    /// A group declared by the same chain, by its number.
    Group(u32),
    /// `resubmit(,table)`: continue in `table`, then come back.
    Resubmit {
        table: u8,
    },
    /// `goto_table`: only last, and only to a later table.
    GotoTable(u8),
    /// The bridge's normal L2 switching.
    Normal,
    /// Only as the sole action.
    Drop,
    /// Push an MPLS header: ethertype 0x8847 or 0x8848.
    PushMpls {
        ethertype: u16,
    },
    /// Pop an MPLS header, leaving `ethertype` (IPv4, IPv6 or MPLS).
    PopMpls {
        ethertype: u16,
    },
    SetMplsLabel(u32),
    SetMplsTtl(u8),
    DecMplsTtl,
    SetEthSrc(Mac),
    SetEthDst(Mac),
    /// Set the VLAN id, pushing a tag if there is none (`mod_vlan_vid`).
    SetVlanVid(u16),
    /// Remove the outer VLAN tag (`strip_vlan`).
    StripVlan,
    /// `load:value->NXM_NX_REG<index>[]`.
    LoadReg {
        index: u8,
        value: u32,
    },
    SetTunId(u64),
    DecTtl,
}

/// What a select group hashes on (networking-sfc's `lb_fields`). Append-only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum HashField {
    EthSrc,
    EthDst,
    IpSrc,
    IpDst,
    Ipv6Src,
    Ipv6Dst,
    IpProto,
    TcpSrc,
    TcpDst,
    UdpSrc,
    UdpDst,
    SctpSrc,
    SctpDst,
}

impl HashField {
    /// The OXM field name `ovs-ofctl` expects in `fields(...)`.
    pub fn oxm_name(self) -> &'static str {
        match self {
            HashField::EthSrc => "eth_src",
            HashField::EthDst => "eth_dst",
            HashField::IpSrc => "ip_src",
            HashField::IpDst => "ip_dst",
            HashField::Ipv6Src => "ipv6_src",
            HashField::Ipv6Dst => "ipv6_dst",
            HashField::IpProto => "ip_proto",
            HashField::TcpSrc => "tcp_src",
            HashField::TcpDst => "tcp_dst",
            HashField::UdpSrc => "udp_src",
            HashField::UdpDst => "udp_dst",
            HashField::SctpSrc => "sctp_src",
            HashField::SctpDst => "sctp_dst",
        }
    }
}

/// OpenFlow group type. Append-only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum GroupKind {
    /// One bucket per packet (load balancing over a port pair group).
    Select,
    /// Every bucket (a tap that copies).
    All,
    /// Exactly one bucket.
    Indirect,
}

/// How a select group picks a bucket. Append-only.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Selection {
    /// The switch's default (Open vSwitch: `dp_hash`, over the 5-tuple).
    Default,
    /// `selection_method=hash,fields(...)`: the same fields always pick the same bucket.
    Hash(Vec<HashField>),
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Bucket {
    /// Relative share of a select group's traffic; ignored by other group types.
    pub weight: u16,
    pub actions: Vec<Action>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct GroupSpec {
    /// Group number in the driver's namespace (at most [`MAX_GROUP`]).
    pub group: u32,
    pub kind: GroupKind,
    /// Only [`Selection::Default`] for groups other than select.
    pub selection: Selection,
    pub buckets: Vec<Bucket>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FlowSpec {
    pub table: u8,
    pub priority: u16,
    /// Conjunction of fields, each kind at most once.
    pub matches: Vec<Match>,
    pub actions: Vec<Action>,
}

/// One part of a chain's rules on this host (controller -> relay).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainFlows {
    /// The chain's id in the driver's namespace, at most [`MAX_COOKIE`].
    pub cookie: u64,
    /// The controller's revision of these rules; echoed in [`ChainStatus`].
    pub version: u64,
    /// This part's index, `0..parts`. Part 0 starts an update and drops any unfinished one of
    /// the same chain; the host applies the rules once part `parts - 1` arrived.
    pub part: u16,
    pub parts: u16,
    pub groups: Vec<GroupSpec>,
    pub flows: Vec<FlowSpec>,
}

/// A chain's complete rule set on one host, assembled from its parts.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ChainRules {
    pub cookie: u64,
    pub version: u64,
    pub groups: Vec<GroupSpec>,
    pub flows: Vec<FlowSpec>,
}

/// Where a chain stands on a host (relay -> controller). Append-only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChainState {
    /// Every rule is on the bridge.
    Installed { flows: u32, groups: u32 },
    /// Waiting for these ports to appear on the bridge (at most [`MAX_MISSING`] listed);
    /// nothing of the chain is on the bridge meanwhile.
    Pending { missing: Vec<PortRef> },
    /// The rules are invalid; the host will not retry this version.
    Rejected { reason: String },
    /// The bridge refused or could not be reached; the host retries.
    Failed { reason: String },
    /// The chain's rules are gone from the bridge (after `ChainRemoved`).
    Removed,
}

/// A chain's state on the relay's host, reported after every change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChainStatus {
    pub cookie: u64,
    /// The version the state refers to (0 for `Removed` of an unknown chain).
    pub version: u64,
    pub state: ChainState,
}

fn flow_err(index: usize, reason: impl Into<String>) -> FlowError {
    FlowError::Flow {
        index,
        reason: reason.into(),
    }
}

fn check_port_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= MAX_PORT_NAME
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "port name {name:?} is not 1-{MAX_PORT_NAME} characters of [A-Za-z0-9._-]"
        ))
    }
}

fn check_port(port: &PortRef, as_output: bool) -> Result<(), String> {
    match port {
        PortRef::Named(name) => check_port_name(name),
        PortRef::Neutron(_) => Ok(()),
        PortRef::InPort if as_output => Ok(()),
        PortRef::InPort => Err("IN_PORT can only be an output".into()),
    }
}

const MPLS_LABEL_MAX: u32 = (1 << 20) - 1;
const VLAN_MAX: u16 = 4095;

/// Checks one action's values; placement rules are the caller's.
fn check_action(a: &Action, table: Option<u8>) -> Result<(), String> {
    match a {
        Action::Output(p) => check_port(p, true),
        Action::Group(g) if *g > MAX_GROUP => Err(format!("group {g} exceeds {MAX_GROUP}")),
        Action::Resubmit { table: t } | Action::GotoTable(t) if *t > MAX_TABLE => {
            Err(format!("table {t} exceeds {MAX_TABLE}"))
        }
        Action::GotoTable(t) => match table {
            None => Err("goto_table is not allowed in a group bucket".into()),
            Some(own) if *t <= own => Err(format!(
                "goto_table:{t} does not lead forward from table {own}"
            )),
            Some(_) => Ok(()),
        },
        Action::PushMpls { ethertype }
            if !matches!(*ethertype, ETH_TYPE_MPLS | ETH_TYPE_MPLS_MCAST) =>
        {
            Err(format!(
                "push_mpls ethertype {ethertype:#06x} is not 0x8847 or 0x8848"
            ))
        }
        Action::PopMpls { ethertype }
            if !matches!(
                *ethertype,
                ETH_TYPE_IPV4 | ETH_TYPE_IPV6 | ETH_TYPE_MPLS | ETH_TYPE_MPLS_MCAST
            ) =>
        {
            Err(format!(
                "pop_mpls ethertype {ethertype:#06x} is not IPv4, IPv6 or MPLS"
            ))
        }
        Action::SetMplsLabel(l) if *l > MPLS_LABEL_MAX => {
            Err(format!("MPLS label {l} exceeds 20 bits"))
        }
        Action::SetVlanVid(v) if *v > VLAN_MAX => Err(format!("VLAN id {v} exceeds 4095")),
        Action::LoadReg { index, .. } if *index > MAX_REG => Err(format!(
            "register reg{index} does not exist (reg0-reg{MAX_REG})"
        )),
        _ => Ok(()),
    }
}

/// Checks an action list: each action, `drop` alone, `goto_table` last.
fn check_actions(actions: &[Action], table: Option<u8>, max: usize) -> Result<(), String> {
    if actions.len() > max {
        return Err(format!("{} actions, at most {max}", actions.len()));
    }
    for (i, a) in actions.iter().enumerate() {
        check_action(a, table)?;
        if *a == Action::Drop && actions.len() != 1 {
            return Err("drop must be the only action".into());
        }
        if matches!(a, Action::GotoTable(_)) && i + 1 != actions.len() {
            return Err("goto_table must be the last action".into());
        }
    }
    Ok(())
}

/// The match kind, for "each kind at most once" (registers count per index).
fn match_kind(m: &Match) -> (u8, u8) {
    let k = match m {
        Match::InPort(_) => 0,
        Match::EthSrc(_) => 1,
        Match::EthDst(_) => 2,
        Match::EthType(_) => 3,
        Match::VlanVid(_) => 4,
        Match::IpProto(_) => 5,
        Match::IpSrc(_) => 6,
        Match::IpDst(_) => 7,
        Match::TpSrc(_) => 8,
        Match::TpDst(_) => 9,
        Match::MplsLabel(_) => 10,
        Match::Reg { index, .. } => return (11, *index),
        Match::TunId(_) => 12,
    };
    (k, 0)
}

fn check_matches(matches: &[Match]) -> Result<(), String> {
    if matches.len() > MAX_MATCHES {
        return Err(format!(
            "{} match fields, at most {MAX_MATCHES}",
            matches.len()
        ));
    }
    let mut kinds = HashSet::new();
    let mut eth_type = None;
    let mut ip_proto = None;
    for m in matches {
        if !kinds.insert(match_kind(m)) {
            return Err(format!("match field {m:?} given twice"));
        }
        match m {
            Match::EthType(t) => eth_type = Some(*t),
            Match::IpProto(p) => ip_proto = Some(*p),
            _ => {}
        }
    }
    let is_ip = matches!(eth_type, Some(ETH_TYPE_IPV4 | ETH_TYPE_IPV6));
    for m in matches {
        match m {
            Match::InPort(p) => check_port(p, false)?,
            Match::VlanVid(v) if *v > VLAN_MAX => return Err(format!("VLAN id {v} exceeds 4095")),
            Match::IpProto(_) if !is_ip => {
                return Err("ip_proto needs eth_type 0x0800 or 0x86dd".into())
            }
            Match::IpSrc(net) | Match::IpDst(net) => {
                let (want, family) = match net.addr {
                    IpAddr::V4(_) => (ETH_TYPE_IPV4, "IPv4"),
                    IpAddr::V6(_) => (ETH_TYPE_IPV6, "IPv6"),
                };
                if eth_type != Some(want) {
                    return Err(format!("an {family} prefix needs eth_type {want:#06x}"));
                }
                if net.prefix > net.max_prefix() {
                    return Err(format!("prefix length /{} is too long", net.prefix));
                }
            }
            Match::TpSrc(_) | Match::TpDst(_)
                if !is_ip
                    || !matches!(ip_proto, Some(IP_PROTO_TCP | IP_PROTO_UDP | IP_PROTO_SCTP)) =>
            {
                return Err("a transport port needs ip_proto TCP, UDP or SCTP".into())
            }
            Match::MplsLabel(l) => {
                if !matches!(eth_type, Some(ETH_TYPE_MPLS | ETH_TYPE_MPLS_MCAST)) {
                    return Err("mpls_label needs eth_type 0x8847 or 0x8848".into());
                }
                if *l > MPLS_LABEL_MAX {
                    return Err(format!("MPLS label {l} exceeds 20 bits"));
                }
            }
            Match::Reg { index, .. } if *index > MAX_REG => {
                return Err(format!(
                    "register reg{index} does not exist (reg0-reg{MAX_REG})"
                ))
            }
            _ => {}
        }
    }
    Ok(())
}

impl FlowSpec {
    /// Checks the flow on its own (group references are checked by the chain).
    pub fn validate(&self) -> Result<(), String> {
        if self.table > MAX_TABLE {
            return Err(format!("table {} exceeds {MAX_TABLE}", self.table));
        }
        check_matches(&self.matches)?;
        check_actions(&self.actions, Some(self.table), MAX_ACTIONS)
    }

    /// The (table, priority, match set) that identifies the flow on a bridge.
    fn key(&self) -> (u8, u16, BTreeSet<&Match>) {
        (self.table, self.priority, self.matches.iter().collect())
    }
}

impl GroupSpec {
    /// Checks the group on its own (references to other groups are checked by the chain).
    pub fn validate(&self) -> Result<(), String> {
        if self.group > MAX_GROUP {
            return Err(format!("group number exceeds {MAX_GROUP}"));
        }
        if self.buckets.len() > MAX_BUCKETS {
            return Err(format!(
                "{} buckets, at most {MAX_BUCKETS}",
                self.buckets.len()
            ));
        }
        if self.kind == GroupKind::Indirect && self.buckets.len() != 1 {
            return Err("an indirect group has exactly one bucket".into());
        }
        match (&self.selection, self.kind) {
            (Selection::Default, _) => {}
            (Selection::Hash(_), GroupKind::All | GroupKind::Indirect) => {
                return Err("only a select group has a selection method".into())
            }
            (Selection::Hash(fields), GroupKind::Select) => {
                if fields.is_empty() || fields.len() > MAX_HASH_FIELDS {
                    return Err(format!("hash over 1-{MAX_HASH_FIELDS} fields"));
                }
                let distinct: HashSet<_> = fields.iter().collect();
                if distinct.len() != fields.len() {
                    return Err("a hash field is listed twice".into());
                }
            }
        }
        for (i, b) in self.buckets.iter().enumerate() {
            if b.actions.contains(&Action::Drop) {
                return Err(format!("bucket {i}: drop is not a bucket action"));
            }
            check_actions(&b.actions, None, MAX_BUCKET_ACTIONS)
                .map_err(|e| format!("bucket {i}: {e}"))?;
        }
        Ok(())
    }

    fn actions(&self) -> impl Iterator<Item = &Action> {
        self.buckets.iter().flat_map(|b| b.actions.iter())
    }
}

fn groups_used<'a>(
    actions: impl Iterator<Item = &'a Action> + 'a,
) -> impl Iterator<Item = u32> + 'a {
    actions.filter_map(|a| match a {
        Action::Group(g) => Some(*g),
        _ => None,
    })
}

impl ChainFlows {
    /// Checks what a part can be checked for on its own, before the host buffers it.
    pub fn validate_part(&self) -> Result<(), FlowError> {
        if self.cookie > MAX_COOKIE {
            return Err(FlowError::Chain(format!(
                "cookie {:#x} exceeds {MAX_COOKIE:#x}",
                self.cookie
            )));
        }
        if self.parts == 0 || self.parts > MAX_PARTS || self.part >= self.parts {
            return Err(FlowError::Chain(format!(
                "part {} of {} (at most {MAX_PARTS} parts)",
                self.part, self.parts
            )));
        }
        if self.flows.len() > MAX_CHAIN_FLOWS || self.groups.len() > MAX_CHAIN_GROUPS {
            return Err(FlowError::Chain(format!(
                "{} flows and {} groups in one part, at most {MAX_CHAIN_FLOWS} and {MAX_CHAIN_GROUPS}",
                self.flows.len(),
                self.groups.len()
            )));
        }
        Ok(())
    }
}

impl ChainRules {
    /// Checks the whole rule set: every flow and group, duplicate flows and groups, and that
    /// every group a flow or bucket uses is declared here.
    pub fn validate(&self) -> Result<(), FlowError> {
        if self.cookie > MAX_COOKIE {
            return Err(FlowError::Chain(format!(
                "cookie {:#x} exceeds {MAX_COOKIE:#x}",
                self.cookie
            )));
        }
        if self.flows.len() > MAX_CHAIN_FLOWS {
            return Err(FlowError::Chain(format!(
                "{} flows, at most {MAX_CHAIN_FLOWS}",
                self.flows.len()
            )));
        }
        if self.groups.len() > MAX_CHAIN_GROUPS {
            return Err(FlowError::Chain(format!(
                "{} groups, at most {MAX_CHAIN_GROUPS}",
                self.groups.len()
            )));
        }
        let mut declared = HashSet::new();
        for g in &self.groups {
            g.validate().map_err(|reason| FlowError::Group {
                group: g.group,
                reason,
            })?;
            if !declared.insert(g.group) {
                return Err(FlowError::Group {
                    group: g.group,
                    reason: "declared twice".into(),
                });
            }
        }
        for g in &self.groups {
            if let Some(missing) = groups_used(g.actions()).find(|u| !declared.contains(u)) {
                return Err(FlowError::Group {
                    group: g.group,
                    reason: format!("uses group {missing}, which this chain does not declare"),
                });
            }
        }
        let mut keys = HashSet::new();
        for (index, f) in self.flows.iter().enumerate() {
            f.validate().map_err(|reason| flow_err(index, reason))?;
            if let Some(missing) = groups_used(f.actions.iter()).find(|u| !declared.contains(u)) {
                return Err(flow_err(
                    index,
                    format!("uses group {missing}, which this chain does not declare"),
                ));
            }
            if !keys.insert(f.key()) {
                return Err(flow_err(
                    index,
                    "same table, priority and match as an earlier flow",
                ));
            }
        }
        Ok(())
    }

    /// Every port the rules name, each once, in first-use order.
    pub fn ports(&self) -> Vec<&PortRef> {
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for f in &self.flows {
            for m in &f.matches {
                if let Match::InPort(p) = m {
                    if seen.insert(p) {
                        out.push(p);
                    }
                }
            }
            for p in from_actions(&f.actions) {
                if seen.insert(p) {
                    out.push(p);
                }
            }
        }
        for g in &self.groups {
            for b in &g.buckets {
                for p in from_actions(&b.actions) {
                    if seen.insert(p) {
                        out.push(p);
                    }
                }
            }
        }
        out.retain(|p| **p != PortRef::InPort);
        out
    }
}

fn from_actions(actions: &[Action]) -> impl Iterator<Item = &PortRef> {
    actions.iter().filter_map(|a| match a {
        Action::Output(p) => Some(p),
        _ => None,
    })
}

impl ChainRules {
    /// Splits the rules into parts that each fit one uplink envelope, groups first; at least
    /// one part, even for an empty rule set (which removes the chain's flows).
    pub fn into_parts(self) -> Result<Vec<ChainFlows>, FlowError> {
        let budget = MAX_ENVELOPE - PART_OVERHEAD;
        let mut parts: Vec<(Vec<GroupSpec>, Vec<FlowSpec>, usize)> = vec![(vec![], vec![], 0)];
        for g in self.groups {
            let n = encoded_len(&g);
            let last = last_with_room(&mut parts, n, budget)?;
            last.0.push(g);
            last.2 += n;
        }
        for f in self.flows {
            let n = encoded_len(&f);
            let last = last_with_room(&mut parts, n, budget)?;
            last.1.push(f);
            last.2 += n;
        }
        let total = u16::try_from(parts.len())
            .ok()
            .filter(|n| *n <= MAX_PARTS)
            .ok_or_else(|| {
                FlowError::Chain(format!(
                    "the rules need {} parts, at most {MAX_PARTS}",
                    parts.len()
                ))
            })?;
        Ok(parts
            .into_iter()
            .zip(0u16..)
            .map(|((groups, flows, _), part)| ChainFlows {
                cookie: self.cookie,
                version: self.version,
                part,
                parts: total,
                groups,
                flows,
            })
            .collect())
    }
}

type PartAcc = (Vec<GroupSpec>, Vec<FlowSpec>, usize);

fn last_with_room(
    parts: &mut Vec<PartAcc>,
    n: usize,
    budget: usize,
) -> Result<&mut PartAcc, FlowError> {
    if n > budget {
        return Err(FlowError::Chain(format!(
            "one rule encodes to {n} bytes, more than an envelope holds"
        )));
    }
    if parts.last().is_none_or(|p| p.2 + n > budget) {
        parts.push((vec![], vec![], 0));
    }
    // Just ensured non-empty.
    parts
        .last_mut()
        .ok_or_else(|| FlowError::Chain("no part".into()))
}

fn encoded_len<T: Serialize>(v: &T) -> usize {
    // Serialising plain data into a Vec cannot fail; a failure would count as "too big".
    postcard::to_stdvec(v).map_or(usize::MAX, |v| v.len())
}

/// Reassembles [`ChainFlows`] parts into [`ChainRules`]; the parts of one update arrive back to
/// back over one connection, so only in-order parts of the latest update are kept.
#[derive(Debug, Default)]
pub struct Assembler {
    pending: std::collections::HashMap<u64, (ChainFlows, u16)>,
}

/// Most chains with an unfinished update at once.
const MAX_ASSEMBLING: usize = 64;

impl Assembler {
    /// Takes one part; returns the complete rules when this was the last part.
    pub fn push(&mut self, part: ChainFlows) -> Result<Option<ChainRules>, FlowError> {
        part.validate_part()?;
        if part.part == 0 {
            self.pending.remove(&part.cookie);
            if part.parts == 1 {
                return Ok(Some(ChainRules {
                    cookie: part.cookie,
                    version: part.version,
                    groups: part.groups,
                    flows: part.flows,
                }));
            }
            if self.pending.len() >= MAX_ASSEMBLING {
                return Err(FlowError::Chain(format!(
                    "more than {MAX_ASSEMBLING} chains with unfinished multi-part updates"
                )));
            }
            self.pending.insert(part.cookie, (part, 1));
            return Ok(None);
        }
        let Some((acc, next)) = self.pending.get_mut(&part.cookie) else {
            return Err(FlowError::Chain(format!(
                "part {} of {} without part 0",
                part.part, part.parts
            )));
        };
        if part.version != acc.version || part.parts != acc.parts || part.part != *next {
            let expected = *next;
            self.pending.remove(&part.cookie);
            return Err(FlowError::Chain(format!(
                "part {} of {} (version {}) does not continue the update in progress (expected part {expected})",
                part.part, part.parts, part.version
            )));
        }
        if acc.flows.len() + part.flows.len() > MAX_CHAIN_FLOWS
            || acc.groups.len() + part.groups.len() > MAX_CHAIN_GROUPS
        {
            self.pending.remove(&part.cookie);
            return Err(FlowError::Chain(format!(
                "more than {MAX_CHAIN_FLOWS} flows or {MAX_CHAIN_GROUPS} groups"
            )));
        }
        acc.groups.extend(part.groups);
        acc.flows.extend(part.flows);
        *next += 1;
        if *next < acc.parts {
            return Ok(None);
        }
        let (done, _) = self
            .pending
            .remove(&part.cookie)
            .ok_or_else(|| FlowError::Chain("update vanished".into()))?;
        Ok(Some(ChainRules {
            cookie: done.cookie,
            version: done.version,
            groups: done.groups,
            flows: done.flows,
        }))
    }

    /// Forgets unfinished updates (the connection they came on is gone).
    pub fn clear(&mut self) {
        self.pending.clear();
    }

    /// Forgets an unfinished update of one chain.
    pub fn forget(&mut self, cookie: u64) {
        self.pending.remove(&cookie);
    }
}

/// Truncates a reason to [`MAX_REASON`] bytes on a character boundary.
pub fn bounded_reason(mut s: String) -> String {
    if s.len() > MAX_REASON {
        let mut cut = MAX_REASON;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::net::Ipv4Addr;

    const SF_IN: Uuid = Uuid::from_u128(0x51);
    const SRC: Uuid = Uuid::from_u128(0x5c);

    fn v4(a: [u8; 4], prefix: u8) -> IpNet {
        IpNet::new(IpAddr::V4(Ipv4Addr::from(a)), prefix)
    }

    fn classifier() -> FlowSpec {
        FlowSpec {
            table: 0,
            priority: 30,
            matches: vec![
                Match::InPort(PortRef::Neutron(SRC)),
                Match::EthType(ETH_TYPE_IPV4),
                Match::IpProto(IP_PROTO_TCP),
                Match::IpSrc(v4([10, 0, 0, 0], 24)),
                Match::TpDst(PortMask {
                    value: 100,
                    mask: 0xfffc,
                }),
            ],
            actions: vec![Action::Group(1)],
        }
    }

    fn group() -> GroupSpec {
        GroupSpec {
            group: 1,
            kind: GroupKind::Select,
            selection: Selection::Hash(vec![HashField::IpSrc, HashField::IpDst]),
            buckets: vec![Bucket {
                weight: 1,
                actions: vec![
                    Action::SetEthDst("12:34:56:78:cf:23".parse().unwrap()),
                    Action::Resubmit { table: 5 },
                ],
            }],
        }
    }

    fn rules() -> ChainRules {
        ChainRules {
            cookie: 1,
            version: 3,
            groups: vec![group()],
            flows: vec![
                classifier(),
                FlowSpec {
                    table: 10,
                    priority: 1,
                    matches: vec![
                        Match::EthType(ETH_TYPE_MPLS),
                        Match::MplsLabel(511),
                        Match::EthDst("12:34:56:78:cf:23".parse().unwrap()),
                    ],
                    actions: vec![
                        Action::PopMpls {
                            ethertype: ETH_TYPE_IPV4,
                        },
                        Action::Output(PortRef::Neutron(SF_IN)),
                    ],
                },
            ],
        }
    }

    fn reason(r: &ChainRules) -> String {
        r.validate().unwrap_err().to_string()
    }

    #[test]
    fn a_networking_sfc_hop_is_valid_and_names_its_ports() {
        let r = rules();
        r.validate().unwrap();
        assert_eq!(
            r.ports(),
            [&PortRef::Neutron(SRC), &PortRef::Neutron(SF_IN)]
        );
    }

    #[test]
    fn prerequisites_ranges_and_placement_are_enforced() {
        let mut r = rules();
        r.flows[0]
            .matches
            .retain(|m| *m != Match::EthType(ETH_TYPE_IPV4));
        assert!(
            reason(&r).contains("ip_proto needs eth_type"),
            "{}",
            reason(&r)
        );

        let mut r = rules();
        r.flows[0]
            .matches
            .retain(|m| *m != Match::IpProto(IP_PROTO_TCP));
        assert!(
            reason(&r).contains("transport port needs"),
            "{}",
            reason(&r)
        );

        let mut r = rules();
        r.flows[1].matches.remove(0);
        assert!(reason(&r).contains("mpls_label needs"), "{}", reason(&r));

        let mut r = rules();
        r.flows[1].actions.push(Action::SetMplsLabel(1 << 20));
        assert_eq!(reason(&r), "flow #1: MPLS label 1048576 exceeds 20 bits");

        let mut r = rules();
        r.flows[0].actions = vec![Action::Drop, Action::Normal];
        assert_eq!(reason(&r), "flow #0: drop must be the only action");

        let mut r = rules();
        r.flows[1].actions.insert(0, Action::GotoTable(11));
        assert_eq!(reason(&r), "flow #1: goto_table must be the last action");
        r.flows[1].actions = vec![Action::GotoTable(5)];
        assert!(reason(&r).contains("does not lead forward"));

        let mut r = rules();
        r.flows[0].actions = vec![Action::Output(PortRef::Named("patch tun;rm".into()))];
        assert!(
            reason(&r).contains("is not 1-15 characters"),
            "{}",
            reason(&r)
        );

        let mut r = rules();
        r.flows[0].matches[0] = Match::InPort(PortRef::InPort);
        assert!(reason(&r).contains("IN_PORT can only be an output"));

        let mut r = rules();
        r.flows[0].matches.push(Match::EthType(ETH_TYPE_IPV6));
        assert!(reason(&r).contains("given twice"));

        let mut r = rules();
        r.flows[0].matches[3] = Match::IpSrc(IpNet::new("fd00::".parse().unwrap(), 64));
        assert!(reason(&r).contains("IPv6 prefix needs eth_type 0x86dd"));
    }

    #[test]
    fn group_references_and_duplicates_are_checked() {
        let mut r = rules();
        r.flows[0].actions = vec![Action::Group(2)];
        assert_eq!(
            reason(&r),
            "flow #0: uses group 2, which this chain does not declare"
        );

        let mut r = rules();
        r.groups.push(group());
        assert_eq!(reason(&r), "group 1: declared twice");

        let mut r = rules();
        r.groups[0].kind = GroupKind::All;
        assert_eq!(
            reason(&r),
            "group 1: only a select group has a selection method"
        );

        let mut r = rules();
        r.groups[0].buckets[0].actions.push(Action::GotoTable(3));
        assert!(reason(&r).contains("not allowed in a group bucket"));

        let mut r = rules();
        let mut dup = r.flows[0].clone();
        dup.matches.reverse();
        dup.actions = vec![Action::Normal];
        r.flows.push(dup);
        assert_eq!(
            reason(&r),
            "flow #2: same table, priority and match as an earlier flow"
        );
    }

    #[test]
    fn big_rule_sets_split_into_envelopes_and_reassemble() {
        let mut r = rules();
        for n in 0..3000u32 {
            let mut f = classifier();
            f.priority = 40;
            f.matches.push(Match::Reg {
                index: 0,
                value: n,
                mask: u32::MAX,
            });
            r.flows.push(f);
        }
        r.validate().unwrap();
        let parts = r.clone().into_parts().unwrap();
        assert!(parts.len() > 1, "{}", parts.len());
        let mut asm = Assembler::default();
        let mut done = None;
        for p in parts {
            let mut buf = bytes::BytesMut::new();
            crate::uplink::encode(
                &crate::uplink::ControllerMsg::ChainFlows(p.clone()),
                &mut buf,
            )
            .unwrap();
            assert!(done.is_none());
            done = asm.push(p).unwrap();
        }
        assert_eq!(done.unwrap(), r);

        let empty = ChainRules {
            cookie: 9,
            ..ChainRules::default()
        };
        let parts = empty.clone().into_parts().unwrap();
        assert_eq!(parts.len(), 1);
        assert_eq!(asm.push(parts[0].clone()).unwrap(), Some(empty));
    }

    #[test]
    fn out_of_order_parts_are_refused_and_a_new_part_zero_restarts() {
        let part = |part, parts, version| ChainFlows {
            cookie: 4,
            version,
            part,
            parts,
            groups: vec![],
            flows: vec![classifier()],
        };
        let mut asm = Assembler::default();
        assert!(asm.push(part(1, 3, 1)).is_err());
        assert_eq!(asm.push(part(0, 3, 1)).unwrap(), None);
        assert!(asm.push(part(2, 3, 1)).is_err(), "skipped part 1");
        assert!(asm.push(part(1, 3, 1)).is_err(), "the update was dropped");
        assert_eq!(asm.push(part(0, 2, 1)).unwrap(), None);
        assert_eq!(asm.push(part(0, 2, 2)).unwrap(), None, "restart");
        let done = asm.push(part(1, 2, 2)).unwrap().unwrap();
        assert_eq!((done.version, done.flows.len()), (2, 2));
        assert!(asm.push(part(0, 0, 1)).is_err());
        assert!(asm.push(part(3, 2, 1)).is_err());
    }

    #[test]
    fn macs_and_prefixes_print_as_ovs_reads_them() {
        let mac: Mac = "00:1A:2b:3c:4d:5e".parse().unwrap();
        assert_eq!(mac.to_string(), "00:1a:2b:3c:4d:5e");
        assert!("00:1a:2b:3c:4d".parse::<Mac>().is_err());
        assert!("00:1a:2b:3c:4d:5e:6f".parse::<Mac>().is_err());
        assert!("0:1a:2b:3c:4d:5e".parse::<Mac>().is_err());
        assert_eq!(v4([10, 1, 2, 3], 8).to_string(), "10.0.0.0/8");
        assert_eq!(v4([10, 1, 2, 3], 0).to_string(), "0.0.0.0/0");
        assert_eq!(v4([10, 1, 2, 3], 32).to_string(), "10.1.2.3/32");
        let v6 = IpNet::new("fd00:1:2::9".parse().unwrap(), 48);
        assert_eq!(v6.to_string(), "fd00:1:2::/48");
        assert_eq!(bounded_reason("é".repeat(600)).len(), 1024);
    }
}
