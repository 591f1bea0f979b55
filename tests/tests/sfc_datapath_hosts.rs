//! A chain across two hosts: two Open vSwitch instances (each its own daemons and namespace,
//! each programmed by its own relay-host registered under the host's `binding:host_id`),
//! joined by VXLAN, deliver packets through an SF on each.
//!
//! The underlay is what an operator sets up for OVS userspace tunnelling: a veth between the
//! two hosts' namespaces on a `br-phy` bridge whose internal port carries the host's tunnel
//! address. On `br-int` each host has the VXLAN port the driver names for the other host
//! (`tunnel_port(<other host>)`, `options:key=flow`), the driver's documented convention.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod sfc_common;

use controller_stub::drivers::ovs::compute::tunnel_port;
use serde_json::Value;
use sfc_common::*;

const A_TEP: &str = "172.31.0.1";
const B_TEP: &str = "172.31.0.2";

/// Connects the two hosts' tunnel endpoints and adds each one's VXLAN port to the other.
fn underlay(a: &Host, b: &Host) {
    a.ovs
        .netns()
        .ip(&[
            "link",
            "add",
            "ul0",
            "type",
            "veth",
            "peer",
            "name",
            "ul0",
            "netns",
            b.ovs.netns().name(),
        ])
        .unwrap();
    let mut macs = Vec::new();
    for (h, ip) in [(a, A_TEP), (b, B_TEP)] {
        let ns = h.ovs.netns();
        ns.ip(&["link", "set", "ul0", "up"]).unwrap();
        h.ovs.add_bridge("br-phy").unwrap();
        h.ovs.vsctl(&["add-port", "br-phy", "ul0"]).unwrap();
        ns.ip(&["addr", "add", &format!("{ip}/24"), "dev", "br-phy"])
            .unwrap();
        ns.ip(&["link", "set", "br-phy", "up"]).unwrap();
        let mac = h
            .ovs
            .vsctl(&["get", "Interface", "br-phy", "mac_in_use"])
            .unwrap();
        macs.push(mac.trim().trim_matches('"').to_owned());
    }
    for (h, me, peer, peer_ip, peer_mac) in [
        (a, A_TEP, b, B_TEP, &macs[1]),
        (b, B_TEP, a, A_TEP, &macs[0]),
    ] {
        let port = tunnel_port(&peer.name);
        h.ovs
            .vsctl(&[
                "add-port",
                BRIDGE,
                &port,
                "--",
                "set",
                "Interface",
                &port,
                "type=vxlan",
                &format!("options:remote_ip={peer_ip}"),
                &format!("options:local_ip={me}"),
                "options:key=flow",
            ])
            .unwrap();
        let ctl = h.ovs.rundir().join("ovs-vswitchd.ctl");
        let appctl = |args: &[&str]| {
            let mut all = vec!["-t", ctl.to_str().unwrap()];
            all.extend_from_slice(args);
            h.ovs.netns().exec("ovs-appctl", &all).unwrap();
        };
        appctl(&["ovs/route/add", &format!("{peer_ip}/32"), "br-phy"]);
        appctl(&["tnl/neigh/set", "br-phy", peer_ip, peer_mac]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_across_two_hosts_goes_through_sfs_on_both_over_vxlan() {
    let w = World::start(&["host-a", "host-b"]).await;
    let a = Host::new("host-a");
    let b = Host::new("host-b");
    underlay(&a, &b);
    let relay_a = w.ctl.relay("host-a", &a.ovs).await;
    let relay_b = w.ctl.relay("host-b", &b.ovs).await;
    // Source and SF1 on A; SF2 and the destination on B.
    let src = w.vm(&a, "src", "10.0.0.1").await;
    let dst = w.vm(&b, "dst", "10.0.0.2").await;
    // The chain delivers by explicit output; the source's kernel just needs the MAC.
    src.ns.neighbour("eth0", &dst.ip, &dst.mac).unwrap();
    let sf1 = w.sf(&a, "sf1", false, Value::Null).await;
    let sf2 = w.sf(&b, "sf2", false, Value::Null).await;
    let pg1 = w.group(&[&sf1], Value::Null).await;
    let pg2 = w.group(&[&sf2], Value::Null).await;
    let fc = w.classifier(&src, &dst, "udp", 5002).await;
    let chain = w.chain(&[&pg1, &pg2], &[&fc], Value::Null).await;
    let rows = w.ctl.wait_installed(&chain, 2).await;
    assert_eq!(rows[0]["host"], "host-a");
    assert_eq!(rows[1]["host"], "host-b");

    let rx = udp(&dst, 5002);
    let tx = udp(&src, 0);
    let (f1, f2) = (sf1.forwarded(), sf2.forwarded());
    for i in 0..20u8 {
        assert!(
            udp_roundtrip(&tx, &rx, (dst.ip.as_str(), 5002), &[i; 64]),
            "datagram {i} lost"
        );
    }
    assert_eq!(sf1.forwarded() - f1, 20);
    assert_eq!(sf2.forwarded() - f2, 20);

    // Host A's group for PG2 sends into the tunnel with the network's VNI; SF2's ingress
    // (label 1 << 8 | 254 = 510) is on B only.
    let groups_a = a
        .ovs
        .ofctl(&["-O", "OpenFlow15", "dump-groups", BRIDGE])
        .unwrap();
    assert!(groups_a.contains("tun_id"), "{groups_a}");
    assert!(b.our_flows().iter().any(|f| f.contains("mpls_label=510")));
    assert!(!a.our_flows().iter().any(|f| f.contains("mpls_label=510")));
    relay_a.stop().await.unwrap();
    relay_b.stop().await.unwrap();
}
