//! The relay's OVS programmer against a real Open vSwitch (private daemons, userspace
//! datapath): exactly the desired flows, updates as diffs that keep unchanged flows' counters,
//! removal and resync that clean up only what is stale, chains waiting for their ports, and
//! invalid rules refused before the bridge is touched.
#![allow(clippy::unwrap_used)]

mod ovs_common;

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use ovs_common::*;
use relay_host::ovs::{FlowCommand, OvsMetrics, Programmer};
use relay_protocol::flow::{Action, ChainRules, ChainState, ChainStatus, FlowSpec, Match, PortRef};

async fn install(p: &mut Programmer<relay_host::ovs::OvsBridge>, rules: ChainRules) -> ChainStatus {
    let mut last = Vec::new();
    for part in parts(rules) {
        last = p.handle(FlowCommand::ChainFlows(part)).await;
    }
    last.pop().unwrap()
}

/// The classifier's packet count, from a dump with statistics.
fn packets(t: &Topology, needle: &str) -> (u64, f64) {
    let text = t.ovs.ofctl(&["--no-names", "dump-flows", BRIDGE]).unwrap();
    let line = text
        .lines()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no flow with {needle} in\n{text}"));
    let field = |name: &str| {
        line.split(", ")
            .find_map(|f| f.trim().strip_prefix(name))
            .unwrap()
            .trim_end_matches('s')
            .to_owned()
    };
    (
        field("n_packets=").parse().unwrap(),
        field("duration=").parse().unwrap(),
    )
}

fn send_udp(t: &Topology, port: u16, n: usize) {
    let tx = t.src.run(|| UdpSocket::bind((SRC_IP, 0))).unwrap().unwrap();
    for _ in 0..n {
        tx.send_to(&[0; 64], (DST_IP, port)).unwrap();
    }
}

#[tokio::test(flavor = "current_thread")]
async fn the_bridge_gets_exactly_the_rules_and_a_repeat_changes_nothing() {
    let t = Topology::new(true);
    let m = OvsMetrics::default();
    let mut p = Programmer::new(t.bridge(), m.clone());
    let (sin, sout) = t.sf_ports.clone().unwrap();
    let started = Instant::now();
    let st = install(&mut p, one_hop_chain(1, 1)).await;
    let took = started.elapsed();
    assert_eq!(
        st.state,
        ChainState::Installed {
            flows: 5,
            groups: 1
        }
    );
    let (src, dst) = (t.src_port.ofport, t.dst_port.ofport);
    let mut want = vec![
        format!("cookie=0x5fc0000000000001, priority=30,tcp,in_port={src},nw_src=10.0.0.1,nw_dst=10.0.0.2,tp_dst=5001 actions=group:1593835521"),
        format!("cookie=0x5fc0000000000001, priority=30,udp,in_port={src},nw_src=10.0.0.1,nw_dst=10.0.0.2,tp_dst=5002 actions=group:1593835521"),
        format!("cookie=0x5fc0000000000001, priority=30,ip,in_port={} actions=set_field:{DST_MAC}->eth_dst,output:{dst}", sout.ofport),
        format!("cookie=0x5fc0000000000001, table=5, priority=0,ip,dl_dst={SF_IN_MAC} actions=push_mpls:0x8847,set_field:511->mpls_label,set_mpls_ttl(255),resubmit(,10)"),
        format!("cookie=0x5fc0000000000001, table=10, priority=1,mpls,dl_dst={SF_IN_MAC},mpls_label=511 actions=pop_mpls:0x0800,output:{}", sin.ofport),
    ];
    want.sort();
    assert_eq!(t.our_flows(), want);
    let groups = t.ovs.ofctl(&["dump-groups", BRIDGE]).unwrap();
    assert!(
        groups.contains(&format!("group_id=1593835521,type=select,selection_method=hash,fields(ip_src,ip_dst),bucket=bucket_id:0,actions=set_field:{SF_IN_MAC}->eth_dst,resubmit(,5)")),
        "{groups}"
    );
    // Neutron's (here: the bridge's default) flow is untouched.
    assert!(t
        .ovs
        .flows(BRIDGE)
        .unwrap()
        .contains(&"priority=0 actions=NORMAL".to_owned()));
    assert_eq!(
        (m.bundles.get(), m.flows_added.get(), m.group_mods.get()),
        (1, 5, 1)
    );

    // The same rules again: OVS's canonical forms match ours, so nothing is sent.
    let started = Instant::now();
    let st = install(&mut p, one_hop_chain(1, 1)).await;
    let again = started.elapsed();
    assert!(matches!(st.state, ChainState::Installed { .. }));
    assert_eq!(m.bundles.get(), 1, "no bundle for an unchanged chain");
    assert!(p.reconcile().await.is_empty());
    assert_eq!(m.bundles.get(), 1);
    eprintln!("install of 5 flows + 1 group: {took:?}; unchanged repeat: {again:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn an_update_changes_only_what_changed_and_unchanged_flows_keep_their_counters() {
    let t = Topology::new(true);
    let m = OvsMetrics::default();
    let mut p = Programmer::new(t.bridge(), m.clone());
    install(&mut p, one_hop_chain(1, 1)).await;
    send_udp(&t, STEERED_UDP, 10);
    // The datagrams are in the counters once the dump shows them; poll the dump, no sleep.
    let deadline = Instant::now() + Duration::from_secs(5);
    while packets(&t, "tp_dst=5002").0 < 10 {
        assert!(Instant::now() < deadline, "datagrams never counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (udp_before, udp_age) = packets(&t, "tp_dst=5002");
    let (push_before, _) = packets(&t, "push_mpls");

    // v2: TCP port 5001 -> 5005 (a delete and an add), TTL 255 -> 254 (a modify), the rest
    // as it was.
    let mut v2 = one_hop_chain(1, 2);
    v2.flows[0] = classifier(6, 5005);
    v2.flows[2].actions[2] = Action::SetMplsTtl(254);
    let added = m.flows_added.get();
    let st = install(&mut p, v2).await;
    assert_eq!(st.version, 2);
    assert!(matches!(st.state, ChainState::Installed { flows: 5, .. }));
    assert_eq!(m.flows_added.get() - added, 1);
    assert_eq!(m.flows_deleted.get(), 1);
    assert_eq!(m.flows_modified.get(), 1);
    assert_eq!(m.bundles.get(), 2);

    let (udp_after, udp_age_after) = packets(&t, "tp_dst=5002");
    assert!(
        udp_after >= udp_before,
        "counters kept: {udp_before} -> {udp_after}"
    );
    assert!(
        udp_age_after >= udp_age,
        "not re-created: age {udp_age} -> {udp_age_after}"
    );
    let (push_after, _) = packets(&t, "set_mpls_ttl(254)");
    assert!(
        push_after >= push_before,
        "modified in place keeps counters"
    );
    let flows = t.our_flows();
    assert!(flows.iter().any(|f| f.contains("tp_dst=5005")));
    assert!(!flows.iter().any(|f| f.contains("tp_dst=5001")));
}

#[tokio::test(flavor = "current_thread")]
async fn removal_and_resync_after_a_restart_remove_only_stale_chains() {
    let t = Topology::new(true);
    let other_chain = |cookie, prio| ChainRules {
        cookie,
        version: 1,
        groups: vec![],
        flows: vec![FlowSpec {
            table: 0,
            priority: prio,
            matches: vec![Match::InPort(PortRef::Neutron(DST)), Match::EthType(0x0800)],
            actions: vec![Action::Normal],
        }],
    };
    {
        let mut p = t.programmer();
        p.handle(FlowCommand::FlowSync(vec![])).await;
        install(&mut p, one_hop_chain(1, 1)).await;
        install(&mut p, other_chain(2, 40)).await;
        install(&mut p, other_chain(3, 41)).await;
        let st = p.handle(FlowCommand::ChainRemoved(2)).await;
        assert_eq!(st.last().unwrap().state, ChainState::Removed);
        let flows = t.our_flows();
        assert_eq!(flows.len(), 6);
        assert!(!flows
            .iter()
            .any(|f| f.starts_with("cookie=0x5fc0000000000002")));
    }
    // A stale group from a chain the controller forgot while the relay was down.
    t.ovs
        .ofctl(&[
            "add-group",
            BRIDGE,
            "group_id=1593835529,type=select,bucket=actions=drop",
        ])
        .unwrap();
    let before = t.our_flows();

    // The relay restarts: a new programmer knows nothing yet.
    let m = OvsMetrics::default();
    let mut p = Programmer::new(t.bridge(), m.clone());
    p.reconcile().await;
    assert_eq!(
        t.our_flows(),
        before,
        "nothing touched before the controller speaks"
    );
    let st = install(&mut p, one_hop_chain(1, 1)).await;
    assert!(matches!(st.state, ChainState::Installed { .. }));
    assert_eq!(
        m.bundles.get(),
        0,
        "chain 1 is on the bridge as it should be"
    );
    assert_eq!(
        t.our_flows(),
        before,
        "chain 3 is unknown, not stale, until FlowSync"
    );

    p.handle(FlowCommand::FlowSync(vec![1])).await;
    let after = t.our_flows();
    assert_eq!(after.len(), 5);
    assert!(after
        .iter()
        .all(|f| f.starts_with("cookie=0x5fc0000000000001")));
    let groups = t.ovs.ofctl(&["dump-groups", BRIDGE]).unwrap();
    assert!(!groups.contains("1593835529"), "{groups}");
    assert!(groups.contains("1593835521"), "{groups}");
}

#[tokio::test(flavor = "current_thread")]
async fn a_chain_waits_for_its_sf_and_is_programmed_when_its_ports_appear() {
    let mut t = Topology::new(false);
    let mut p = t.programmer();
    let st = install(&mut p, one_hop_chain(1, 1)).await;
    assert_eq!(
        st.state,
        ChainState::Pending {
            missing: vec![PortRef::Neutron(SF_IN), PortRef::Neutron(SF_OUT)]
        }
    );
    assert!(t.our_flows().is_empty());
    assert!(p.poll_ports().await.is_empty());

    t.plug_sf();
    let started = Instant::now();
    let st = p.poll_ports().await;
    assert_eq!(st.len(), 1);
    assert!(matches!(
        st[0].state,
        ChainState::Installed { flows: 5, .. }
    ));
    assert_eq!(t.our_flows().len(), 5);
    eprintln!(
        "programmed {:?} after the ports appeared",
        started.elapsed()
    );

    // The SF goes away again: its rules go with it (its port numbers may be reused).
    let (sin, _) = t.sf_ports.clone().unwrap();
    t.ovs.detach(&sin).unwrap();
    let st = p.poll_ports().await;
    assert!(matches!(st[0].state, ChainState::Pending { .. }));
    assert!(t.our_flows().is_empty());
}

#[tokio::test(flavor = "current_thread")]
async fn invalid_rules_are_refused_before_the_bridge_is_touched() {
    let t = Topology::new(true);
    let m = OvsMetrics::default();
    let mut p = Programmer::new(t.bridge(), m.clone());
    install(&mut p, one_hop_chain(1, 1)).await;
    let before = t.our_flows();

    // Valid in our grammar, refused by OVS: strip_vlan needs a VLAN match in OpenFlow 1.1+.
    let mut v2 = one_hop_chain(1, 2);
    v2.flows[4].actions.insert(0, Action::StripVlan);
    let st = install(&mut p, v2).await;
    let ChainState::Rejected { reason } = &st.state else {
        panic!("{st:?}")
    };
    assert!(
        reason.starts_with("flow #4: refused by ovs-ofctl"),
        "{reason}"
    );

    // Refused by the grammar: a transport port without a protocol, which OVS would quietly
    // drop from the match.
    let mut v3 = one_hop_chain(1, 3);
    v3.flows[0].matches.retain(|m| *m != Match::IpProto(6));
    let st = install(&mut p, v3).await;
    assert_eq!(
        st.state,
        ChainState::Rejected {
            reason: "flow #0: a transport port needs ip_proto TCP, UDP or SCTP".into()
        }
    );
    assert_eq!(t.our_flows(), before);
    assert_eq!(m.bundles.get(), 1);
    assert_eq!(m.rejected.get(), 2);
}

#[tokio::test(flavor = "current_thread")]
async fn a_large_chain_goes_in_one_bundle() {
    let t = Topology::new(true);
    let m = OvsMetrics::default();
    let mut p = Programmer::new(t.bridge(), m.clone());
    let mut rules = one_hop_chain(7, 1);
    for n in 0..2000u16 {
        rules.flows.push(classifier(17, 10_000 + n));
    }
    let n = rules.flows.len();
    let started = Instant::now();
    let st = install(&mut p, rules.clone()).await;
    let first = started.elapsed();
    assert!(matches!(st.state, ChainState::Installed { .. }), "{st:?}");
    assert_eq!(t.our_flows().len(), n);
    assert_eq!(m.bundles.get(), 1);

    let started = Instant::now();
    install(&mut p, rules.clone()).await;
    let unchanged = started.elapsed();
    assert_eq!(m.bundles.get(), 1);

    rules.version = 2;
    rules.flows.truncate(n - 100);
    let started = Instant::now();
    install(&mut p, rules).await;
    let shrink = started.elapsed();
    assert_eq!(m.flows_deleted.get(), 100);
    eprintln!(
        "{n} flows: install {first:?}, unchanged repeat {unchanged:?}, remove 100 {shrink:?}"
    );
}
