//! Rules to `ovs-ofctl` text and back.
//!
//! Rendering is the only place text for `ovs-ofctl` is made, and it is made from validated,
//! typed values (`relay_protocol::flow`) and port numbers from OVSDB: numbers, MACs, IP
//! prefixes and a fixed vocabulary of keywords. Nothing the controller sends is copied into
//! the text verbatim except interface names, which were checked against `[A-Za-z0-9._-]` and
//! are used only to look up port numbers, never written out.
//!
//! The other direction parses the two canonical forms `ovs-ofctl` prints: `dump-flows` lines
//! and `parse-flows` lines. Both are split into table, "match" (everything between table and
//! actions, priority included, exactly as printed) and actions.

use std::fmt::Write;

use relay_protocol::flow::{
    Action, FlowSpec, GroupKind, GroupSpec, Match, PortRef, Selection, MAX_COOKIE, MAX_GROUP,
};

use super::bridge::PortMap;
use super::OvsError;

/// The top 16 bits of every flow cookie this host installs: which flows are ours.
pub const COOKIE_PREFIX: u64 = 0x5fc0 << 48;
/// The bits of the prefix.
pub const COOKIE_PREFIX_MASK: u64 = !MAX_COOKIE;
/// The first OpenFlow group id of the range this host owns; group number `n` is `BASE + n`.
pub const GROUP_ID_BASE: u32 = 0x5f00_0000;

/// The OpenFlow cookie of a chain's flows.
pub fn flow_cookie(chain: u64) -> u64 {
    COOKIE_PREFIX | (chain & MAX_COOKIE)
}

/// The chain a cookie of ours belongs to.
pub fn chain_of(cookie: u64) -> Option<u64> {
    (cookie & COOKIE_PREFIX_MASK == COOKIE_PREFIX).then_some(cookie & MAX_COOKIE)
}

/// The OpenFlow group id of a group number.
pub fn group_id(group: u32) -> u32 {
    GROUP_ID_BASE | (group & MAX_GROUP)
}

/// Whether an OpenFlow group id is in the range this host owns.
pub fn is_our_group(id: u32) -> bool {
    id & !MAX_GROUP == GROUP_ID_BASE
}

/// A flow as text for `ovs-ofctl`, before OVS normalised it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RenderedFlow {
    pub table: u8,
    /// `priority=N,field=value,...`
    pub matches: String,
    pub actions: String,
}

impl RenderedFlow {
    /// The line `parse-flows` reads: no cookie, so its output has none either.
    pub fn parse_line(&self) -> String {
        format!(
            "table={},{},actions={}",
            self.table, self.matches, self.actions
        )
    }
}

/// A flow in the form the switch prints it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CanonicalFlow {
    pub table: u8,
    /// Priority and match fields as printed (priority is omitted when it is 32768).
    pub matches: String,
    pub actions: String,
}

/// One line of an atomic `ovs-ofctl bundle`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BundleOp {
    /// `group add` of a rendered group.
    AddGroup(String),
    /// `group modify` of a rendered group: buckets replaced in place, flows untouched.
    ModifyGroup(String),
    DeleteGroup(u32),
    /// `flow add`, with the chain's cookie.
    AddFlow {
        cookie: u64,
        flow: RenderedFlow,
    },
    /// `flow modify_strict`: new actions for the flow with exactly this table, priority,
    /// match and cookie; counters and duration stay.
    ModifyFlow {
        cookie: u64,
        table: u8,
        matches: String,
        actions: String,
    },
    /// `flow delete_strict` of exactly this flow, and only if it carries `cookie`.
    DeleteFlow {
        cookie: u64,
        table: u8,
        matches: String,
    },
}

fn join(parts: &[&str]) -> String {
    parts
        .iter()
        .filter(|p| !p.is_empty())
        .copied()
        .collect::<Vec<_>>()
        .join(",")
}

impl BundleOp {
    /// The bundle file line.
    pub fn line(&self) -> String {
        match self {
            BundleOp::AddGroup(g) => format!("group add {g}"),
            BundleOp::ModifyGroup(g) => format!("group modify {g}"),
            BundleOp::DeleteGroup(id) => format!("group delete group_id={id}"),
            BundleOp::AddFlow { cookie, flow } => format!(
                "flow add {},actions={}",
                join(&[
                    &format!("table={}", flow.table),
                    &format!("cookie={cookie:#x}"),
                    &flow.matches
                ]),
                flow.actions
            ),
            BundleOp::ModifyFlow {
                cookie,
                table,
                matches,
                actions,
            } => format!(
                "flow modify_strict {},actions={actions}",
                join(&[
                    &format!("table={table}"),
                    &format!("cookie={cookie:#x}/-1"),
                    matches
                ])
            ),
            BundleOp::DeleteFlow {
                cookie,
                table,
                matches,
            } => format!(
                "flow delete_strict {}",
                join(&[
                    &format!("table={table}"),
                    &format!("cookie={cookie:#x}/-1"),
                    matches
                ])
            ),
        }
    }
}

/// Resolves ports to OpenFlow numbers; `None` for a port not on the bridge.
pub trait Resolve {
    fn resolve(&self, port: &PortRef) -> Option<String>;
}

impl Resolve for PortMap {
    fn resolve(&self, port: &PortRef) -> Option<String> {
        match port {
            PortRef::Neutron(id) => self.by_iface_id.get(id).map(u32::to_string),
            PortRef::Named(name) => self.by_name.get(name).map(u32::to_string),
            PortRef::InPort => Some("in_port".into()),
        }
    }
}

/// Resolves every port to the same number: for checking syntax before the ports exist.
#[derive(Debug)]
pub struct AnyPort;

impl Resolve for AnyPort {
    fn resolve(&self, port: &PortRef) -> Option<String> {
        Some(match port {
            PortRef::InPort => "in_port".into(),
            _ => "1".into(),
        })
    }
}

/// A port the rules name that is not on the bridge.
#[derive(Debug)]
pub struct Missing(pub PortRef);

fn port(r: &impl Resolve, p: &PortRef) -> Result<String, Missing> {
    r.resolve(p).ok_or_else(|| Missing(p.clone()))
}

fn render_match(out: &mut String, m: &Match, r: &impl Resolve) -> Result<(), Missing> {
    // `write!` into a String cannot fail.
    let _ = match m {
        Match::InPort(p) => write!(out, "in_port={}", port(r, p)?),
        Match::EthSrc(mac) => write!(out, "dl_src={mac}"),
        Match::EthDst(mac) => write!(out, "dl_dst={mac}"),
        Match::EthType(t) => write!(out, "dl_type={t:#06x}"),
        Match::VlanVid(v) => write!(out, "dl_vlan={v}"),
        Match::IpProto(p) => write!(out, "nw_proto={p}"),
        Match::IpSrc(net) if net.addr.is_ipv6() => write!(out, "ipv6_src={net}"),
        Match::IpSrc(net) => write!(out, "nw_src={net}"),
        Match::IpDst(net) if net.addr.is_ipv6() => write!(out, "ipv6_dst={net}"),
        Match::IpDst(net) => write!(out, "nw_dst={net}"),
        Match::TpSrc(pm) => write!(out, "tp_src={:#x}/{:#x}", pm.value & pm.mask, pm.mask),
        Match::TpDst(pm) => write!(out, "tp_dst={:#x}/{:#x}", pm.value & pm.mask, pm.mask),
        Match::MplsLabel(l) => write!(out, "mpls_label={l}"),
        Match::Reg { index, value, mask } => {
            write!(out, "reg{index}={:#x}/{mask:#x}", value & mask)
        }
        Match::TunId(id) => write!(out, "tun_id={id:#x}"),
    };
    Ok(())
}

fn render_action(out: &mut String, a: &Action, r: &impl Resolve) -> Result<(), Missing> {
    let _ = match a {
        Action::Output(p) => write!(out, "output:{}", port(r, p)?),
        Action::Group(g) => write!(out, "group:{}", group_id(*g)),
        Action::Resubmit { table } => write!(out, "resubmit(,{table})"),
        Action::GotoTable(t) => write!(out, "goto_table:{t}"),
        Action::Normal => write!(out, "normal"),
        Action::Drop => write!(out, "drop"),
        Action::PushMpls { ethertype } => write!(out, "push_mpls:{ethertype:#06x}"),
        Action::PopMpls { ethertype } => write!(out, "pop_mpls:{ethertype:#06x}"),
        Action::SetMplsLabel(l) => write!(out, "set_mpls_label:{l}"),
        Action::SetMplsTtl(t) => write!(out, "set_mpls_ttl:{t}"),
        Action::DecMplsTtl => write!(out, "dec_mpls_ttl"),
        Action::SetEthSrc(mac) => write!(out, "mod_dl_src:{mac}"),
        Action::SetEthDst(mac) => write!(out, "mod_dl_dst:{mac}"),
        Action::SetVlanVid(v) => write!(out, "mod_vlan_vid:{v}"),
        Action::StripVlan => write!(out, "strip_vlan"),
        Action::LoadReg { index, value } => write!(out, "load:{value:#x}->NXM_NX_REG{index}[]"),
        Action::SetTunId(id) => write!(out, "set_field:{id:#x}->tun_id"),
        Action::DecTtl => write!(out, "dec_ttl"),
    };
    Ok(())
}

fn render_actions(actions: &[Action], r: &impl Resolve) -> Result<String, Missing> {
    if actions.is_empty() {
        // An empty action list drops; say so, as `ovs-ofctl` prints it.
        return Ok("drop".into());
    }
    let mut out = String::new();
    for (i, a) in actions.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        render_action(&mut out, a, r)?;
    }
    Ok(out)
}

/// A flow as `ovs-ofctl` text.
pub fn render_flow(f: &FlowSpec, r: &impl Resolve) -> Result<RenderedFlow, Missing> {
    let mut matches = format!("priority={}", f.priority);
    for m in &f.matches {
        matches.push(',');
        render_match(&mut matches, m, r)?;
    }
    Ok(RenderedFlow {
        table: f.table,
        matches,
        actions: render_actions(&f.actions, r)?,
    })
}

/// A group as `ovs-ofctl` text, with explicit bucket ids and weights so that it reads back
/// the same from a dump.
pub fn render_group(g: &GroupSpec, r: &impl Resolve) -> Result<String, Missing> {
    let kind = match g.kind {
        GroupKind::Select => "select",
        GroupKind::All => "all",
        GroupKind::Indirect => "indirect",
    };
    let mut out = format!("group_id={},type={kind}", group_id(g.group));
    if let Selection::Hash(fields) = &g.selection {
        let names: Vec<&str> = fields.iter().map(|f| f.oxm_name()).collect();
        let _ = write!(out, ",selection_method=hash,fields({})", names.join(","));
    }
    for (i, b) in g.buckets.iter().enumerate() {
        let _ = write!(out, ",bucket=bucket_id:{i}");
        if g.kind == GroupKind::Select {
            let _ = write!(out, ",weight:{}", b.weight);
        }
        // A bucket without actions drops; `ovs-ofctl` takes `actions=` with nothing after it
        // only at the end of the line, so leave the keyword out instead.
        if !b.actions.is_empty() {
            let _ = write!(out, ",actions={}", render_actions(&b.actions, r)?);
        }
    }
    Ok(out)
}

fn unexpected(what: &str, line: &str) -> OvsError {
    OvsError::Unexpected(format!("cannot read {what} line {line:?}"))
}

/// Splits `<head> actions=<actions>`; `head` loses its trailing `", "`.
fn split_actions<'a>(line: &'a str, what: &str) -> Result<(&'a str, &'a str), OvsError> {
    let i = line
        .find("actions=")
        .ok_or_else(|| unexpected(what, line))?;
    let head = line[..i].trim_end().trim_end_matches(',');
    Ok((head, line[i + "actions=".len()..].trim()))
}

/// Parses a `dump-flows --no-stats` line: ` cookie=0x.., table=5, priority=0,ip,... actions=..`
/// (cookie and table are left out when zero).
pub fn parse_dumped_flow(line: &str) -> Result<super::bridge::DumpedFlow, OvsError> {
    let (head, actions) = split_actions(line.trim(), "dump-flows")?;
    let mut cookie = 0;
    let mut table = 0;
    let mut matches = "";
    // Header fields are separated by ", ", match fields by "," alone.
    for part in head.split(", ") {
        if let Some(c) = part.strip_prefix("cookie=") {
            cookie = parse_hex(c).ok_or_else(|| unexpected("dump-flows", line))?;
        } else if let Some(t) = part.strip_prefix("table=") {
            table = t.parse().map_err(|_| unexpected("dump-flows", line))?;
        } else {
            matches = part;
        }
    }
    Ok(super::bridge::DumpedFlow {
        cookie,
        flow: CanonicalFlow {
            table,
            matches: matches.to_owned(),
            actions: actions.to_owned(),
        },
    })
}

/// Parses a `parse-flows` line: `OFPT_FLOW_MOD (OF1.5) (xid=0x1): ADD table:5 priority=0,ip
/// actions=...` (no table when zero, no cookie: none was given).
pub fn parse_parsed_flow(line: &str) -> Result<CanonicalFlow, OvsError> {
    let rest = line
        .split_once("): ADD ")
        .map(|(_, r)| r)
        .ok_or_else(|| unexpected("parse-flows", line))?;
    let (table, rest) = match rest.strip_prefix("table:") {
        Some(t) => {
            let (n, rest) = t.split_once(' ').unwrap_or((t, ""));
            (
                n.parse().map_err(|_| unexpected("parse-flows", line))?,
                rest,
            )
        }
        None => (0, rest),
    };
    let (matches, actions) = split_actions(rest, "parse-flows")?;
    Ok(CanonicalFlow {
        table,
        matches: matches.trim().to_owned(),
        actions: actions.to_owned(),
    })
}

fn parse_hex(s: &str) -> Option<u64> {
    u64::from_str_radix(s.strip_prefix("0x")?, 16).ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use relay_protocol::flow::{Bucket, HashField, IpNet, Mac, PortMask};
    use relay_protocol::Uuid;

    const MAC: Mac = Mac([0x12, 0x34, 0x56, 0x78, 0xcf, 0x23]);

    fn ports() -> PortMap {
        let mut p = PortMap::default();
        p.by_iface_id.insert(Uuid::from_u128(1), 42);
        p.by_name.insert("patch-tun".into(), 2);
        p
    }

    #[test]
    fn a_classifier_and_an_mpls_push_render_like_networking_sfc_writes_them() {
        let f = FlowSpec {
            table: 0,
            priority: 30,
            matches: vec![
                Match::InPort(PortRef::Neutron(Uuid::from_u128(1))),
                Match::EthType(0x0800),
                Match::IpProto(6),
                Match::IpSrc(IpNet::new([10, 0, 0, 7].into(), 24)),
                Match::TpDst(PortMask {
                    value: 0x65,
                    mask: 0xfffc,
                }),
            ],
            actions: vec![Action::Group(1)],
        };
        let r = render_flow(&f, &ports()).unwrap();
        assert_eq!(
            r.matches,
            "priority=30,in_port=42,dl_type=0x0800,nw_proto=6,nw_src=10.0.0.0/24,tp_dst=0x64/0xfffc"
        );
        assert_eq!(r.actions, "group:1593835521");
        let op = BundleOp::AddFlow {
            cookie: flow_cookie(1),
            flow: r,
        };
        assert_eq!(
            op.line(),
            "flow add table=0,cookie=0x5fc0000000000001,priority=30,in_port=42,dl_type=0x0800,\
             nw_proto=6,nw_src=10.0.0.0/24,tp_dst=0x64/0xfffc,actions=group:1593835521"
        );

        let push = FlowSpec {
            table: 5,
            priority: 0,
            matches: vec![Match::EthType(0x0800), Match::EthDst(MAC)],
            actions: vec![
                Action::PushMpls { ethertype: 0x8847 },
                Action::SetMplsLabel(511),
                Action::SetMplsTtl(255),
                Action::SetVlanVid(5),
                Action::Output(PortRef::Named("patch-tun".into())),
            ],
        };
        assert_eq!(
            render_flow(&push, &ports()).unwrap().actions,
            "push_mpls:0x8847,set_mpls_label:511,set_mpls_ttl:255,mod_vlan_vid:5,output:2"
        );
        let missing = FlowSpec {
            actions: vec![Action::Output(PortRef::Neutron(Uuid::from_u128(9)))],
            ..push
        };
        assert!(render_flow(&missing, &ports()).is_err());
        assert!(render_flow(&missing, &AnyPort).is_ok());
    }

    #[test]
    fn groups_render_with_bucket_ids_weights_and_hash_fields() {
        let g = GroupSpec {
            group: 7,
            kind: GroupKind::Select,
            selection: Selection::Hash(vec![HashField::IpSrc, HashField::TcpSrc]),
            buckets: vec![
                Bucket {
                    weight: 10,
                    actions: vec![Action::SetEthDst(MAC), Action::Resubmit { table: 5 }],
                },
                Bucket {
                    weight: 20,
                    actions: vec![],
                },
            ],
        };
        assert_eq!(
            render_group(&g, &ports()).unwrap(),
            "group_id=1593835527,type=select,selection_method=hash,fields(ip_src,tcp_src),\
             bucket=bucket_id:0,weight:10,actions=mod_dl_dst:12:34:56:78:cf:23,resubmit(,5),\
             bucket=bucket_id:1,weight:20"
        );
    }

    #[test]
    fn bundle_lines_for_strict_changes_carry_the_cookie_as_a_filter() {
        let m = BundleOp::ModifyFlow {
            cookie: flow_cookie(3),
            table: 10,
            matches: "priority=1,mpls,mpls_label=511".into(),
            actions: "output:3".into(),
        };
        assert_eq!(
            m.line(),
            "flow modify_strict table=10,cookie=0x5fc0000000000003/-1,priority=1,mpls,mpls_label=511,actions=output:3"
        );
        let d = BundleOp::DeleteFlow {
            cookie: flow_cookie(3),
            table: 3,
            matches: String::new(),
        };
        assert_eq!(
            d.line(),
            "flow delete_strict table=3,cookie=0x5fc0000000000003/-1"
        );
        assert_eq!(
            BundleOp::DeleteGroup(group_id(2)).line(),
            "group delete group_id=1593835522"
        );
    }

    #[test]
    fn dumped_and_parsed_lines_split_the_same_way() {
        let d = parse_dumped_flow(
            " cookie=0x5fc0000000000001, table=5, priority=0,ip,dl_dst=12:34:56:78:cf:23 actions=push_mpls:0x8847,set_field:511->mpls_label",
        )
        .unwrap();
        assert_eq!(d.cookie, 0x5fc0000000000001);
        assert_eq!(
            d.flow,
            CanonicalFlow {
                table: 5,
                matches: "priority=0,ip,dl_dst=12:34:56:78:cf:23".into(),
                actions: "push_mpls:0x8847,set_field:511->mpls_label".into()
            }
        );
        let p = parse_parsed_flow(
            "OFPT_FLOW_MOD (OF1.5) (xid=0x2): ADD table:5 priority=0,ip,dl_dst=12:34:56:78:cf:23 actions=push_mpls:0x8847,set_field:511->mpls_label",
        )
        .unwrap();
        assert_eq!(p, d.flow);

        let d = parse_dumped_flow(" table=3, actions=NORMAL").unwrap();
        let p = parse_parsed_flow("OFPT_FLOW_MOD (OF1.5) (xid=0x2): ADD table:3 actions=NORMAL")
            .unwrap();
        assert_eq!((d.cookie, &d.flow), (0, &p));
        assert_eq!(p.matches, "");
        let p = parse_parsed_flow("OFPT_FLOW_MOD (OF1.5) (xid=0x1): ADD actions=drop").unwrap();
        assert_eq!(
            (p.table, p.matches.as_str(), p.actions.as_str()),
            (0, "", "drop")
        );
        assert!(parse_dumped_flow("garbage").is_err());
    }

    #[test]
    fn cookies_and_group_ids_are_scoped() {
        assert_eq!(chain_of(flow_cookie(77)), Some(77));
        assert_eq!(chain_of(0x8000_0000_0000_0001), None);
        assert!(is_our_group(group_id(MAX_GROUP)));
        assert!(!is_our_group(1));
    }
}
