#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;

const HOST_A: &str = "host-a";
const HOST_B: &str = "host-b";

fn id(n: u128) -> Uuid {
    Uuid::from_u128(n)
}

fn mac(n: u8) -> Mac {
    Mac([0xfa, 0x16, 0x3e, 0, 0, n])
}

// Ports of the seed (networking-sfc's system design): the classifier's source and
// destination, and p1..p6 for PP1..PP3.
const SRC: u128 = 0x100;
const DST: u128 = 0x200;

fn p(n: u8) -> u128 {
    u128::from(n)
}

fn ports(host_of: impl Fn(u128) -> &'static str) -> BTreeMap<Uuid, PortInfo> {
    let mut out = BTreeMap::new();
    for (n, m) in [(SRC, 0xa0), (DST, 0xb0)]
        .into_iter()
        .chain((1..=6).map(|i| (p(i), i)))
    {
        out.insert(
            id(n),
            PortInfo {
                mac: mac(m),
                host: host_of(n).into(),
                vni: 77,
            },
        );
    }
    out
}

fn pair(i: u8, e: u8) -> PairInfo {
    PairInfo {
        ingress: id(p(i)),
        egress: id(p(e)),
        weight: 1,
        mpls: false,
    }
}

fn net(s: &str) -> IpNet {
    let (a, l) = s.split_once('/').unwrap();
    IpNet::new(a.parse().unwrap(), l.parse().unwrap())
}

/// FC1 of the seed: 22.1.20.1 -> 172.4.5.6, tcp 23 -> 100.
fn fc1() -> ClassifierInfo {
    ClassifierInfo {
        ipv6: false,
        protocol: Some(6),
        src_ports: Some((23, 23)),
        dst_ports: Some((100, 100)),
        src_prefix: Some(net("22.1.20.1/32")),
        dst_prefix: Some(net("172.4.5.6/32")),
        source: Some(id(SRC)),
        destination: Some(id(DST)),
    }
}

/// PC1 = PG1(PP1, PP2) -> PG2(PP3) with FC1, chain id 1, everything on host A.
fn pc1() -> ChainInput {
    ChainInput {
        chain_id: 1,
        symmetric: false,
        groups: vec![
            GroupInfo {
                tap: false,
                lb_fields: vec![],
                pairs: vec![pair(1, 2), pair(3, 4)],
            },
            GroupInfo {
                tap: false,
                lb_fields: vec![],
                pairs: vec![pair(5, 6)],
            },
        ],
        classifiers: vec![fc1()],
        ports: ports(|_| HOST_A),
        ..ChainInput::default()
    }
}

fn fc_matches(in_port: u128) -> Vec<Match> {
    vec![
        Match::InPort(PortRef::Neutron(id(in_port))),
        Match::EthType(ETH_TYPE_IPV4),
        Match::IpProto(6),
        Match::IpSrc(net("22.1.20.1/32")),
        Match::IpDst(net("172.4.5.6/32")),
        Match::TpSrc(PortMask::exact(23)),
        Match::TpDst(PortMask::exact(100)),
    ]
}

fn push(label: u32) -> Vec<Action> {
    vec![
        Action::PushMpls {
            ethertype: ETH_TYPE_MPLS,
        },
        Action::SetMplsLabel(label),
        Action::SetMplsTtl((label & 0xff) as u8),
    ]
}

fn to_local(label: u32, m: Mac) -> Vec<Action> {
    let mut a = push(label);
    a.push(Action::SetEthDst(m));
    a.push(Action::Resubmit { table: 10 });
    a
}

fn ingress(label: u32, port: u128, m: Mac) -> FlowSpec {
    FlowSpec {
        table: 10,
        priority: 1,
        matches: vec![
            Match::EthType(ETH_TYPE_MPLS),
            Match::EthDst(m),
            Match::MplsLabel(label),
        ],
        actions: vec![
            Action::PopMpls {
                ethertype: ETH_TYPE_IPV4,
            },
            Action::Output(PortRef::Neutron(id(port))),
        ],
    }
}

fn classify(in_port: u128, actions: Vec<Action>) -> FlowSpec {
    FlowSpec {
        table: 0,
        priority: 30,
        matches: fc_matches(in_port),
        actions,
    }
}

fn sorted(mut f: Vec<FlowSpec>) -> Vec<FlowSpec> {
    f.sort();
    f
}

#[test]
fn the_seed_chain_gives_networking_sfcs_path_on_one_host() {
    let out = compute(&pc1()).unwrap();
    assert_eq!(out.keys().collect::<Vec<_>>(), [HOST_A]);
    let r = &out[HOST_A];
    r.validate().unwrap();
    assert_eq!((r.cookie, r.version), (1, 0));
    // Node labels: src 1<<8|255 = 511, SF1 510, SF2 509 (the destination's delivery).
    let g1 = 1 << 12;
    let g2 = (1 << 12) | 1;
    assert_eq!(
        r.groups,
        vec![
            GroupSpec {
                group: g1,
                kind: GroupKind::Select,
                selection: Selection::Default,
                buckets: vec![
                    Bucket {
                        weight: 1,
                        actions: to_local(511, mac(1)),
                    },
                    Bucket {
                        weight: 1,
                        actions: to_local(511, mac(3)),
                    },
                ],
            },
            GroupSpec {
                group: g2,
                kind: GroupKind::Select,
                selection: Selection::Default,
                buckets: vec![Bucket {
                    weight: 1,
                    actions: to_local(510, mac(5)),
                }],
            },
        ]
    );
    let expected = vec![
        // Source: classify on logical_source_port into PG1's group.
        classify(SRC, vec![Action::Group(g1)]),
        ingress(511, p(1), mac(1)),
        ingress(511, p(3), mac(3)),
        // Both SF1 instances' egress: re-classify into PG2's group.
        classify(p(2), vec![Action::Group(g2)]),
        classify(p(4), vec![Action::Group(g2)]),
        ingress(510, p(5), mac(5)),
        // SF3's egress is the end: delivered to the destination port.
        classify(p(6), to_local(509, mac(0xb0))),
        ingress(509, DST, mac(0xb0)),
    ];
    assert_eq!(sorted(r.flows.clone()), sorted(expected));
}

#[test]
fn chain_ids_must_fit_the_label() {
    let mut c = pc1();
    c.chain_id = 4095;
    let r = compute(&c).unwrap();
    let top = label(4095, 255);
    assert_eq!(top, (1 << 20) - 1);
    assert!(r[HOST_A].groups[0].buckets[0]
        .actions
        .contains(&Action::SetMplsLabel(top)));
    r[HOST_A].validate().unwrap();
    c.chain_id = 4096;
    assert_eq!(compute(&c), Err(ComputeError::ChainIdTooLarge(4096)));
    c.chain_id = 65535;
    assert!(compute(&c).is_err());
}

#[test]
fn port_ranges_become_minimal_prefix_masks() {
    let pm = |v, m| Some(PortMask { value: v, mask: m });
    assert_eq!(port_masks(Some((100, 103))), [pm(0x64, 0xfffc)]);
    assert_eq!(port_masks(Some((23, 23))), [pm(23, 0xffff)]);
    assert_eq!(port_masks(None), [None]);
    assert_eq!(port_masks(Some((0, 65535))), [None]);
    // networking-sfc's example: 1-65535 is 16 masks.
    let all = port_masks(Some((1, 65535)));
    assert_eq!(all.len(), 16);
    assert_eq!(all[0], pm(1, 0xffff));
    assert_eq!(all[15], pm(0x8000, 0x8000));
    // Exhaustive over a few awkward ranges: the masks cover exactly the range, once.
    for (lo, hi) in [
        (0u16, 0u16),
        (5, 1000),
        (1023, 1025),
        (65534, 65535),
        (0, 32767),
    ] {
        let masks = port_masks(Some((lo, hi)));
        for port in 0..=u16::MAX {
            let hits = masks
                .iter()
                .filter(|m| {
                    let m = m.unwrap();
                    port & m.mask == m.value
                })
                .count();
            assert_eq!(
                hits,
                usize::from((lo..=hi).contains(&port)),
                "{lo}-{hi} {port}"
            );
        }
    }
    // The classifier is the cross product of source and destination masks.
    let mut fc = fc1();
    fc.src_ports = Some((100, 103));
    fc.dst_ports = Some((1, 65535));
    assert_eq!(classifier_matches(&fc).len(), 16);
    let mut c = pc1();
    c.classifiers = vec![fc];
    let r = compute(&c).unwrap();
    r[HOST_A].validate().unwrap();
    // Source, SF1 x2, SF3: 16 flows each, plus 4 ingress flows.
    assert_eq!(r[HOST_A].flows.len(), 4 * 16 + 4);
}

#[test]
fn lb_fields_hash_and_weights_go_into_the_group() {
    let mut c = pc1();
    c.groups[0].lb_fields = vec!["ip_src".into(), "tcp_dst".into(), "eth_src".into()];
    c.groups[0].pairs[0].weight = 3;
    c.groups[0].pairs[1].weight = 1;
    let r = compute(&c).unwrap();
    let g = &r[HOST_A].groups[0];
    assert_eq!(
        g.selection,
        Selection::Hash(vec![HashField::IpSrc, HashField::TcpDst, HashField::EthSrc])
    );
    assert_eq!(
        g.buckets.iter().map(|b| b.weight).collect::<Vec<_>>(),
        [3, 1]
    );
    // IPv6 chains hash on the IPv6 fields.
    assert_eq!(
        selection(&["ip_dst".into()], true, false, false),
        Selection::Hash(vec![HashField::Ipv6Dst])
    );
}

#[test]
fn a_symmetric_chain_returns_through_the_same_instances() {
    let mut c = pc1();
    c.symmetric = true;
    c.groups[0].lb_fields = vec!["ip_src".into(), "ip_dst".into(), "tcp_dst".into()];
    c.groups[0].pairs[0].weight = 2;
    let r = compute(&c).unwrap();
    let r = &r[HOST_A];
    r.validate().unwrap();
    let group = |n: u32| r.groups.iter().find(|g| g.group == n).unwrap();
    // Forward group of PG1: folded onto the source side.
    let fwd = group(1 << 12);
    assert_eq!(
        fwd.selection,
        Selection::Hash(vec![HashField::IpSrc, HashField::TcpSrc])
    );
    // Reverse path: PG2 first, then PG1; PG1's reverse group is entered from SF3's ingress
    // port (node 1 of the reverse path) and mirrors the fields.
    let rev = group((1 << 12) | (1 << 11) | 1);
    assert_eq!(
        rev.selection,
        Selection::Hash(vec![HashField::IpDst, HashField::TcpDst])
    );
    // Same buckets in the same order with the same weights, into the SFs' egress ports.
    assert_eq!(
        fwd.buckets.iter().map(|b| b.weight).collect::<Vec<_>>(),
        rev.buckets.iter().map(|b| b.weight).collect::<Vec<_>>()
    );
    assert_eq!(rev.buckets[0].actions, to_local(510, mac(2)));
    assert_eq!(rev.buckets[1].actions, to_local(510, mac(4)));
    // The reverse classifier is on the destination port, with the fields swapped.
    let rev_classifier = FlowSpec {
        table: 0,
        priority: 30,
        matches: vec![
            Match::InPort(PortRef::Neutron(id(DST))),
            Match::EthType(ETH_TYPE_IPV4),
            Match::IpProto(6),
            Match::IpSrc(net("172.4.5.6/32")),
            Match::IpDst(net("22.1.20.1/32")),
            Match::TpSrc(PortMask::exact(100)),
            Match::TpDst(PortMask::exact(23)),
        ],
        actions: vec![Action::Group((1 << 12) | (1 << 11))],
    };
    assert!(r.flows.contains(&rev_classifier));
    // The reverse path ends at the classifier's source port.
    assert!(r.flows.contains(&ingress(509, SRC, mac(0xa0))));
    // The reverse path enters SFs through their egress ports.
    assert!(r.flows.contains(&ingress(510, p(2), mac(2))));
    // Without a logical_destination_port a symmetric chain is refused.
    c.classifiers[0].destination = None;
    assert_eq!(compute(&c), Err(ComputeError::SymmetricWithoutDestination));
    // With no lb_fields a symmetric chain hashes on the client side's address and ports.
    assert_eq!(
        selection(&[], false, true, true),
        Selection::Hash(vec![HashField::IpDst, HashField::TcpDst, HashField::UdpDst])
    );
}

#[test]
fn hops_to_other_hosts_go_through_the_vxlan_port_of_that_host() {
    // SF3 (p5, p6) and the destination on host B.
    let mut c = pc1();
    c.ports = ports(|n| {
        if n == p(5) || n == p(6) || n == DST {
            HOST_B
        } else {
            HOST_A
        }
    });
    let out = compute(&c).unwrap();
    assert_eq!(out.keys().collect::<Vec<_>>(), [HOST_A, HOST_B]);
    for r in out.values() {
        r.validate().unwrap();
    }
    let tunnel = tunnel_port(HOST_B);
    assert!(tunnel.len() <= 15 && tunnel.starts_with("sfcvx"));
    assert_ne!(tunnel, tunnel_port(HOST_A));
    let mut remote = push(510);
    remote.extend([
        Action::SetEthDst(mac(5)),
        Action::SetTunId(77),
        Action::Output(PortRef::Named(tunnel)),
    ]);
    assert_eq!(out[HOST_A].groups[1].buckets[0].actions, remote);
    // Host B has SF3's ingress, its egress and the delivery; host A none of them.
    let b = &out[HOST_B];
    assert!(b.flows.contains(&ingress(510, p(5), mac(5))));
    assert!(b.flows.contains(&classify(p(6), to_local(509, mac(0xb0)))));
    assert!(!out[HOST_A]
        .flows
        .iter()
        .any(|f| f.matches.contains(&Match::MplsLabel(510))));
    // An unbound port places nothing: SF3 unbound leaves host A with a bucket that drops.
    c.ports.get_mut(&id(p(5))).unwrap().host.clear();
    let out = compute(&c).unwrap();
    assert!(out[HOST_A].groups[1].buckets[0].actions.is_empty());
}

#[test]
fn mpls_aware_sfs_keep_their_labels() {
    let mut c = pc1();
    c.groups[1].pairs[0].mpls = true;
    let r = &compute(&c).unwrap()[HOST_A];
    r.validate().unwrap();
    // Into SF3: labelled, no pop.
    let mut into = ingress(510, p(5), mac(5));
    into.actions.remove(0);
    assert!(r.flows.contains(&into));
    // Out of SF3: matched on its label (nsi 253), popped at the end.
    let out = r
        .flows
        .iter()
        .find(|f| f.matches.first() == Some(&Match::InPort(PortRef::Neutron(id(p(6))))))
        .unwrap();
    assert_eq!(
        out.matches,
        [
            Match::InPort(PortRef::Neutron(id(p(6)))),
            Match::EthType(ETH_TYPE_MPLS),
            Match::MplsLabel(509),
        ]
    );
    assert_eq!(
        out.actions,
        [
            Action::PopMpls {
                ethertype: ETH_TYPE_IPV4
            },
            Action::Normal
        ]
    );
}

#[test]
fn a_tap_gets_a_copy_and_is_numbered_after_the_destination() {
    // PG1 -> TAP(PP3): SRC 255, SF 254, DST 253, TAP 252 (label nsi 253).
    let mut c = pc1();
    c.groups[1].tap = true;
    let r = &compute(&c).unwrap()[HOST_A];
    r.validate().unwrap();
    let tap_group = r.groups.iter().find(|g| g.kind == GroupKind::All).unwrap();
    assert_eq!(tap_group.group, (1 << 12) | (1 << 10) | 1);
    assert_eq!(tap_group.buckets.len(), 2);
    // First bucket: the chain's end (delivery to the destination with SF1's label).
    assert_eq!(tap_group.buckets[0].actions, to_local(510, mac(0xb0)));
    // Second: the tap, label 1<<8|253.
    assert_eq!(tap_group.buckets[1].actions, to_local(509, mac(5)));
    assert!(r.flows.contains(&ingress(509, p(5), mac(5))));
    assert!(r
        .flows
        .contains(&classify(p(2), vec![Action::Group(tap_group.group)])));
    // The tap's egress leads nowhere: nothing matches on p6.
    assert!(!r.flows.iter().any(|f| f
        .matches
        .contains(&Match::InPort(PortRef::Neutron(id(p(6)))))));
}

#[test]
fn a_service_graph_hands_off_through_reg0() {
    // Chain 1 (PG1) hands off to chain 2 (PG2).
    let mut src = pc1();
    src.groups.truncate(1);
    src.graph_source = true;
    let r = &compute(&src).unwrap()[HOST_A];
    r.validate().unwrap();
    let mut m = fc_matches(p(2));
    m.push(Match::Reg {
        index: 0,
        value: 0,
        mask: u32::MAX,
    });
    let end = r.flows.iter().find(|f| f.matches == m).unwrap();
    assert_eq!(
        end.actions,
        [
            Action::LoadReg {
                index: 0,
                value: 510
            },
            Action::Resubmit { table: 0 }
        ]
    );

    let mut dst = pc1();
    dst.chain_id = 2;
    dst.groups.remove(0);
    dst.graph_sources = vec![GraphSource {
        label: 510,
        hosts: [HOST_A.to_string()].into(),
    }];
    let r = &compute(&dst).unwrap()[HOST_A];
    r.validate().unwrap();
    let entry = r.flows.iter().find(|f| f.priority == PRI_GRAPH).unwrap();
    assert!(entry.matches.contains(&Match::Reg {
        index: 0,
        value: 510,
        mask: u32::MAX
    }));
    assert!(!entry.matches.iter().any(|m| matches!(m, Match::InPort(_))));
    assert_eq!(entry.actions, [Action::Group(2 << 12)]);
}

#[test]
fn ipv6_chains_pop_to_ipv6_and_mixed_families_are_refused() {
    let mut c = pc1();
    c.classifiers[0] = ClassifierInfo {
        ipv6: true,
        protocol: Some(17),
        src_prefix: Some(net("fd00::1/128")),
        ..fc1()
    };
    c.classifiers[0].src_ports = None;
    c.classifiers[0].dst_ports = None;
    c.classifiers[0].dst_prefix = None;
    let r = &compute(&c).unwrap()[HOST_A];
    r.validate().unwrap();
    assert!(r.flows.iter().any(|f| f.actions.first()
        == Some(&Action::PopMpls {
            ethertype: ETH_TYPE_IPV6
        })));
    c.classifiers.push(fc1());
    assert_eq!(compute(&c), Err(ComputeError::MixedEthertypes));
}

#[test]
fn base_rules_validate() {
    base_rules().validate().unwrap();
}
