//! A one-bridge topology for the OVS tests and the rules of a one-hop chain over it, written by
//! hand the way the controller's OVS driver will produce them.
//!
//! `src` (10.0.0.1) and `dst` (10.0.0.2) are VMs with one port each; `sf` is a service
//! function with an ingress and an egress port and no address, which forwards IP frames from
//! one to the other unchanged (a bump in the wire: tc `mirred`, see `Netns::forward_between`;
//! ARP is not forwarded, so the SF does not loop broadcasts back into the bridge).
#![allow(dead_code, clippy::unwrap_used)]

use e2e_tests::netns::Netns;
use e2e_tests::ovs::{Port, PortSpec, TestOvs};
use relay_host::ovs::{OvsBridge, OvsMetrics, Programmer};
use relay_protocol::flow::{
    Action, Bucket, ChainFlows, ChainRules, FlowSpec, GroupKind, GroupSpec, HashField, IpNet, Mac,
    Match, PortMask, PortRef, Selection,
};
use relay_protocol::Uuid;

pub const BRIDGE: &str = "br-int";
pub const SRC: Uuid = Uuid::from_u128(0x5c5c_0000_0000_4000_8000_0000_0000_0001);
pub const DST: Uuid = Uuid::from_u128(0xd5d5_0000_0000_4000_8000_0000_0000_0002);
pub const SF_IN: Uuid = Uuid::from_u128(0x5f10_0000_0000_4000_8000_0000_0000_0003);
pub const SF_OUT: Uuid = Uuid::from_u128(0x5f0e_0000_0000_4000_8000_0000_0000_0004);
pub const SRC_MAC: &str = "fa:16:3e:00:00:01";
pub const DST_MAC: &str = "fa:16:3e:00:00:02";
pub const SF_IN_MAC: &str = "fa:16:3e:00:00:03";
pub const SF_OUT_MAC: &str = "fa:16:3e:00:00:04";
pub const SRC_IP: &str = "10.0.0.1";
pub const DST_IP: &str = "10.0.0.2";
/// Traffic to these destination ports goes through the SF; everything else does not.
pub const STEERED_TCP: u16 = 5001;
pub const STEERED_UDP: u16 = 5002;

/// The SF's interfaces inside its namespace.
pub const SF_IN_IF: &str = "sfin";
pub const SF_OUT_IF: &str = "sfout";

pub struct Topology {
    pub ovs: TestOvs,
    pub src: Netns,
    pub dst: Netns,
    pub sf: Netns,
    pub src_port: Port,
    pub dst_port: Port,
    /// `None` until [`Topology::plug_sf`].
    pub sf_ports: Option<(Port, Port)>,
}

impl Topology {
    /// A bridge with `src` and `dst` plugged in, and the SF too if `with_sf`.
    pub fn new(with_sf: bool) -> Topology {
        let ovs = TestOvs::start().unwrap();
        ovs.add_bridge(BRIDGE).unwrap();
        let src = Netns::new("src").unwrap();
        let dst = Netns::new("dst").unwrap();
        let sf = Netns::new("sf").unwrap();
        let vm = |ns: &Netns, id, mac: &str, ip: &str| {
            ovs.attach(
                BRIDGE,
                ns,
                &PortSpec {
                    iface_id: id,
                    mac: mac.into(),
                    ifname: "eth0".into(),
                    addr: Some(format!("{ip}/24")),
                },
            )
            .unwrap()
        };
        let src_port = vm(&src, SRC, SRC_MAC, SRC_IP);
        let dst_port = vm(&dst, DST, DST_MAC, DST_IP);
        let mut t = Topology {
            ovs,
            src,
            dst,
            sf,
            src_port,
            dst_port,
            sf_ports: None,
        };
        if with_sf {
            t.plug_sf();
        }
        t
    }

    /// Plugs the SF's two ports into the bridge (the SF "VM boots").
    pub fn plug_sf(&mut self) {
        let port = |id, mac: &str, ifname: &str| {
            self.ovs
                .attach(
                    BRIDGE,
                    &self.sf,
                    &PortSpec {
                        iface_id: id,
                        mac: mac.into(),
                        ifname: ifname.into(),
                        addr: None,
                    },
                )
                .unwrap()
        };
        let ports = (
            port(SF_IN, SF_IN_MAC, SF_IN_IF),
            port(SF_OUT, SF_OUT_MAC, SF_OUT_IF),
        );
        self.sf.forward(SF_IN_IF, SF_OUT_IF).unwrap();
        self.sf_ports = Some(ports);
    }

    /// The relay's bridge for this topology.
    pub fn bridge(&self) -> OvsBridge {
        OvsBridge::new(
            BRIDGE,
            Some(self.ovs.db()),
            Some(self.ovs.rundir().to_owned()),
        )
    }

    pub fn programmer(&self) -> Programmer<OvsBridge> {
        Programmer::new(self.bridge(), OvsMetrics::default())
    }

    /// Frames the SF forwarded from its ingress to its egress.
    pub fn sf_forwarded(&self) -> u64 {
        self.sf.link_stats(SF_OUT_IF).unwrap().tx_packets
    }

    /// Our flows on the bridge (cookie prefix 0x5fc0), sorted.
    pub fn our_flows(&self) -> Vec<String> {
        let mut f: Vec<String> = self
            .ovs
            .flows(BRIDGE)
            .unwrap()
            .into_iter()
            .filter(|l| l.starts_with("cookie=0x5fc0"))
            .collect();
        f.sort();
        f
    }
}

pub fn mac(s: &str) -> Mac {
    s.parse().unwrap()
}

fn host(ip: &str) -> IpNet {
    IpNet::new(ip.parse().unwrap(), 32)
}

/// Classifies `proto` traffic from `src` to `dst` on `port` into group 1.
pub fn classifier(proto: u8, port: u16) -> FlowSpec {
    FlowSpec {
        table: 0,
        priority: 30,
        matches: vec![
            Match::InPort(PortRef::Neutron(SRC)),
            Match::EthType(0x0800),
            Match::IpProto(proto),
            Match::IpSrc(host(SRC_IP)),
            Match::IpDst(host(DST_IP)),
            Match::TpDst(PortMask::exact(port)),
        ],
        actions: vec![Action::Group(1)],
    }
}

/// The rules of a one-hop chain on one host, as networking-sfc's driver lays them out: table 0
/// classifies on the source port into the port pair group's select group, whose bucket sends
/// to the SF's ingress MAC via table 5, which pushes the MPLS label of (nsp 1, nsi 255); table
/// 10 takes the label off and delivers to the SF's ingress port. The SF's egress is the end
/// of the chain: back to the destination. The SF here is a bump in the wire that leaves the
/// destination MAC at the SF's own, so the last hop restores the destination's MAC and
/// outputs to it directly (an L3 SF would route, and NORMAL would do; NORMAL here would learn
/// the source's MAC on the SF's port).
pub fn one_hop_chain(cookie: u64, version: u64) -> ChainRules {
    let label = (1 << 8) | 255;
    ChainRules {
        cookie,
        version,
        groups: vec![GroupSpec {
            group: 1,
            kind: GroupKind::Select,
            selection: Selection::Hash(vec![HashField::IpSrc, HashField::IpDst]),
            buckets: vec![Bucket {
                weight: 1,
                actions: vec![
                    Action::SetEthDst(mac(SF_IN_MAC)),
                    Action::Resubmit { table: 5 },
                ],
            }],
        }],
        flows: vec![
            classifier(6, STEERED_TCP),
            classifier(17, STEERED_UDP),
            FlowSpec {
                table: 5,
                priority: 0,
                matches: vec![Match::EthType(0x0800), Match::EthDst(mac(SF_IN_MAC))],
                actions: vec![
                    Action::PushMpls { ethertype: 0x8847 },
                    Action::SetMplsLabel(label),
                    Action::SetMplsTtl(255),
                    Action::Resubmit { table: 10 },
                ],
            },
            FlowSpec {
                table: 10,
                priority: 1,
                matches: vec![
                    Match::EthType(0x8847),
                    Match::EthDst(mac(SF_IN_MAC)),
                    Match::MplsLabel(label),
                ],
                actions: vec![
                    Action::PopMpls { ethertype: 0x0800 },
                    Action::Output(PortRef::Neutron(SF_IN)),
                ],
            },
            FlowSpec {
                table: 0,
                priority: 30,
                matches: vec![
                    Match::InPort(PortRef::Neutron(SF_OUT)),
                    Match::EthType(0x0800),
                ],
                actions: vec![
                    Action::SetEthDst(mac(DST_MAC)),
                    Action::Output(PortRef::Neutron(DST)),
                ],
            },
        ],
    }
}

/// The base flows networking-sfc's agent installs at start, sent as chain 0.
pub fn base_flows() -> ChainRules {
    ChainRules {
        cookie: 0,
        version: 1,
        groups: vec![],
        flows: vec![
            FlowSpec {
                table: 0,
                priority: 20,
                matches: vec![Match::EthType(0x8847)],
                actions: vec![Action::GotoTable(10)],
            },
            FlowSpec {
                table: 10,
                priority: 0,
                matches: vec![],
                actions: vec![Action::Drop],
            },
        ],
    }
}

/// One message per part.
pub fn parts(rules: ChainRules) -> Vec<ChainFlows> {
    rules.into_parts().unwrap()
}
