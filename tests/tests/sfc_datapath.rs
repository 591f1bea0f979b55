//! Issue 6's acceptance on real Open vSwitch (userspace datapath): port chains created through
//! the controller's API steer real TCP and UDP packets between network namespaces through
//! service-function namespaces, with the flows programmed only by the controller's `ovs`
//! driver over the relay uplink and a real relay-host (see `sfc_common`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod sfc_common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use sfc_common::*;

const HOST: &str = "host-a";
const SRC_IP: &str = "10.0.0.1";
const DST_IP: &str = "10.0.0.2";
const STEERED_UDP: u16 = 5002;
const STEERED_TCP: u16 = 5001;
const BYPASS_UDP: u16 = 6000;

/// The seed's PC1 = PG1(SF1, SF2) -> PG2(SF3) with a UDP and a TCP classifier, on one host.
struct Seed {
    w: World,
    host: Host,
    relay: Option<relay_host::testing::TestRelay>,
    src: Vm,
    dst: Vm,
    sf: [Sf; 3],
    pg1: String,
    chain: String,
}

async fn seed(pg1_params: Value, chain_params: Value, both_ways: bool) -> Seed {
    let w = World::start(&[HOST]).await;
    let host = Host::new(HOST);
    let relay = w.ctl.relay(HOST, &host.ovs).await;
    let src = w.vm(&host, "src", SRC_IP).await;
    let dst = w.vm(&host, "dst", DST_IP).await;
    neighbours(&src, &dst);
    let sf = [
        w.sf(&host, "sf1", both_ways, Value::Null).await,
        w.sf(&host, "sf2", both_ways, Value::Null).await,
        w.sf(&host, "sf3", both_ways, Value::Null).await,
    ];
    let pg1 = w.group(&[&sf[0], &sf[1]], pg1_params).await;
    let pg2 = w.group(&[&sf[2]], Value::Null).await;
    let udp = w.classifier(&src, &dst, "udp", STEERED_UDP).await;
    let tcp = w.classifier(&src, &dst, "tcp", STEERED_TCP).await;
    let chain = w.chain(&[&pg1, &pg2], &[&udp, &tcp], chain_params).await;
    w.ctl.wait_installed(&chain, 1).await;
    Seed {
        w,
        host,
        relay: Some(relay),
        src,
        dst,
        sf,
        pg1,
        chain,
    }
}

impl Seed {
    fn counts(&self) -> [u64; 3] {
        [
            self.sf[0].forwarded(),
            self.sf[1].forwarded(),
            self.sf[2].forwarded(),
        ]
    }
}

fn delta(after: [u64; 3], before: [u64; 3]) -> [u64; 3] {
    [
        after[0] - before[0],
        after[1] - before[1],
        after[2] - before[2],
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn matching_traffic_traverses_the_chain_in_order_and_the_rest_bypasses_it() {
    let s = seed(json!({"lb_fields": ["udp_src"]}), Value::Null, false).await;
    let rx = udp(&s.dst, STEERED_UDP);
    let bypass_rx = udp(&s.dst, BYPASS_UDP);
    let tx = udp(&s.src, 0);

    // UDP on the classified port: every datagram through SF1 or SF2, then SF3.
    let before = s.counts();
    for i in 0..20u8 {
        assert!(
            udp_roundtrip(&tx, &rx, (DST_IP, STEERED_UDP), &[i; 32]),
            "datagram {i} lost"
        );
    }
    let d = delta(s.counts(), before);
    assert_eq!(d[0] + d[1], 20, "{d:?}");
    assert_eq!(d[2], 20, "{d:?}");

    // Not classified: straight to the destination, no SF sees it.
    let before = s.counts();
    for i in 0..10u8 {
        assert!(udp_roundtrip(
            &tx,
            &bypass_rx,
            (DST_IP, BYPASS_UDP),
            &[i; 16]
        ));
    }
    assert_eq!(delta(s.counts(), before), [0, 0, 0]);

    // TCP on the classified port: the connection works and its packets go through the chain
    // (the replies are not classified and go back directly).
    let dst_ip = DST_IP.to_string();
    let listener = s
        .dst
        .ns
        .run(move || TcpListener::bind((dst_ip.as_str(), STEERED_TCP)))
        .unwrap()
        .unwrap();
    let server = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut got = Vec::new();
        conn.read_to_end(&mut got).unwrap();
        got
    });
    let before = s.counts();
    s.src
        .ns
        .run(|| {
            let mut c = TcpStream::connect_timeout(
                &(DST_IP.parse::<std::net::IpAddr>().unwrap(), STEERED_TCP).into(),
                Duration::from_secs(5),
            )
            .unwrap();
            c.write_all(&[7u8; 10_000]).unwrap();
        })
        .unwrap();
    assert_eq!(server.join().unwrap(), vec![7u8; 10_000]);
    // The client's last ACK may still be between the SFs.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let d = delta(s.counts(), before);
    assert!(d[2] >= 3, "SYN, data and FIN through SF3: {d:?}");
    assert_eq!(d[0] + d[1], d[2], "{d:?}");
    s.relay.unwrap().stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flows_spread_over_the_group_by_the_lb_fields_hash_and_stick() {
    let s = seed(json!({"lb_fields": ["udp_src"]}), Value::Null, false).await;
    let rx = udp(&s.dst, STEERED_UDP);
    let mut per_sf = [0u32; 2];
    for _ in 0..24 {
        // A new source port is a new flow; each flow's datagrams all take one SF.
        let tx = udp(&s.src, 0);
        let before = s.counts();
        for i in 0..3u8 {
            assert!(udp_roundtrip(&tx, &rx, (DST_IP, STEERED_UDP), &[i; 8]));
        }
        let d = delta(s.counts(), before);
        assert!(d == [3, 0, 3] || d == [0, 3, 3], "one flow split: {d:?}");
        per_sf[usize::from(d[0] == 0)] += 1;
    }
    // 24 flows over two equal buckets: both get some (all on one: probability 2^-23).
    assert!(per_sf[0] > 0 && per_sf[1] > 0, "{per_sf:?}");
    s.relay.unwrap().stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symmetric_chain_returns_through_the_same_sf_instances() {
    let s = seed(Value::Null, json!({"symmetric": true}), true).await;
    let server = udp(&s.dst, STEERED_UDP);
    let mut seen = [false; 2];
    for _ in 0..16 {
        let client = udp(&s.src, 0);
        let fwd = s.counts();
        let rev = [s.sf[0].returned(), s.sf[1].returned(), s.sf[2].returned()];
        client.send_to(b"ping", (DST_IP, STEERED_UDP)).unwrap();
        let mut buf = [0u8; 16];
        let (n, from) = server.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"ping");
        server.send_to(b"pong", from).unwrap();
        let n = client.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"pong");
        let f = delta(s.counts(), fwd);
        let r = delta(
            [s.sf[0].returned(), s.sf[1].returned(), s.sf[2].returned()],
            rev,
        );
        assert_eq!(f[2], 1, "forward through SF3: {f:?}");
        assert_eq!(r[2], 1, "reverse through SF3: {r:?}");
        assert_eq!(f[0] + f[1], 1, "{f:?}");
        // The reply came back through the instance the request went through.
        assert_eq!((r[0], r[1]), (f[0], f[1]), "forward {f:?}, reverse {r:?}");
        seen[usize::from(f[0] == 0)] = true;
    }
    assert!(seen[0] && seen[1], "16 flows all on one SF: {seen:?}");
    s.relay.unwrap().stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updating_a_running_chain_loses_no_packet() {
    // PG1 starts with SF1 alone; SF2 and SF4 are plugged in but unused.
    let w = World::start(&[HOST]).await;
    let host = Host::new(HOST);
    let relay = w.ctl.relay(HOST, &host.ovs).await;
    let src = w.vm(&host, "src", SRC_IP).await;
    let dst = w.vm(&host, "dst", DST_IP).await;
    neighbours(&src, &dst);
    let sf1 = w.sf(&host, "sf1", false, Value::Null).await;
    let sf2 = w.sf(&host, "sf2", false, Value::Null).await;
    let sf3 = w.sf(&host, "sf3", false, Value::Null).await;
    let sf4 = w.sf(&host, "sf4", false, Value::Null).await;
    let pg1 = w.group(&[&sf1], json!({"lb_fields": ["udp_src"]})).await;
    let pg2 = w.group(&[&sf3], Value::Null).await;
    let pg3 = w.group(&[&sf4], Value::Null).await;
    let fc = w.classifier(&src, &dst, "udp", STEERED_UDP).await;
    let chain = w.chain(&[&pg1, &pg2], &[&fc], Value::Null).await;
    w.ctl.wait_installed(&chain, 1).await;

    // A stream of datagrams from many flows, counted at both ends.
    let rx = udp(&dst, STEERED_UDP);
    let stop = Arc::new(AtomicBool::new(false));
    let counter = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            rx.set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            let mut got = 0u64;
            let mut buf = [0u8; 64];
            loop {
                match rx.recv(&mut buf) {
                    Ok(_) => got += 1,
                    Err(_) if stop.load(Ordering::Relaxed) => return got,
                    Err(_) => {}
                }
            }
        })
    };
    let senders: Vec<_> = (0..8).map(|_| udp(&src, 0)).collect();
    let sender = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut sent = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for s in &senders {
                    s.send_to(&sent.to_be_bytes(), (DST_IP, STEERED_UDP))
                        .unwrap();
                    sent += 1;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            sent
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Add a port pair to a group, then a group to the chain, while the stream runs.
    w.ctl
        .update(
            &format!("/v2.0/sfc/port_pair_groups/{pg1}"),
            "port_pair_group",
            json!({"port_pairs": [sf1.pair, sf2.pair]}),
        )
        .await;
    w.ctl.wait_installed(&chain, 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    w.ctl
        .update(
            &format!("/v2.0/sfc/port_chains/{chain}"),
            "port_chain",
            json!({"port_pair_groups": [pg1, pg2, pg3]}),
        )
        .await;
    w.ctl.wait_installed(&chain, 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    let sent = sender.join().unwrap();
    // Everything in flight arrives within the receiver's 500 ms idle timeout.
    let got = counter.join().unwrap();
    assert!(sent > 500, "{sent}");
    assert_eq!(got, sent, "lost {} of {sent}", sent - got);
    // The updates took effect: SF2 took flows after the first, SF4 is on the path after the
    // second.
    assert!(sf2.forwarded() > 0);
    assert!(sf4.forwarded() > 0);
    assert_eq!(sf1.forwarded() + sf2.forwarded(), sf3.forwarded());
    relay.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_relay_restart_the_bridge_holds_exactly_the_desired_flows() {
    let mut s = seed(Value::Null, Value::Null, false).await;
    let first = s.host.our_flows();
    let rows = s.w.ctl.status(&s.chain).await;
    let chain_flows = rows[0]["flows"].as_u64().unwrap() as usize;
    // The chain's flows and the two base flows.
    assert_eq!(first.len(), chain_flows + 2, "{first:#?}");

    // A second chain (one empty group: its datagrams are dropped), installed next to the
    // first.
    let fc2 = s.w.classifier(&s.src, &s.dst, "udp", 7000).await;
    let pg2 = s.w.group(&[], Value::Null).await;
    let c2 = s.w.chain(&[&pg2], &[&fc2], Value::Null).await;
    let rows2 = s.w.ctl.wait_installed(&c2, 1).await;
    let c2_flows = rows2[0]["flows"].as_u64().unwrap() as usize;
    let both = s.host.our_flows();
    assert_eq!(
        both.len(),
        chain_flows + c2_flows + 2,
        "{rows2:?} {both:#?}"
    );

    // While the relay is down the second chain is deleted (its flows would be stale) and the
    // first changes (SF2 leaves PG1: flows to change and to go).
    s.relay.take().unwrap().stop().await.unwrap();
    s.w.ctl.delete(&format!("/v2.0/sfc/port_chains/{c2}")).await;
    s.w.ctl
        .update(
            &format!("/v2.0/sfc/port_pair_groups/{}", s.pg1),
            "port_pair_group",
            json!({"port_pairs": [s.sf[0].pair]}),
        )
        .await;
    let relay = s.w.ctl.relay(HOST, &s.host.ovs).await;
    let rows = s.w.ctl.wait_installed(&s.chain, 1).await;
    let chain_flows = rows[0]["flows"].as_u64().unwrap() as usize;
    // FlowSync follows the chains' rules: the stale chain goes right after.
    let deadline = std::time::Instant::now() + WAIT;
    let mut after = s.host.our_flows();
    while after.len() != chain_flows + 2 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        after = s.host.our_flows();
    }
    assert_eq!(after.len(), chain_flows + 2, "{after:#?}");
    assert!(
        !after
            .iter()
            .any(|f| f.starts_with("cookie=0x5fc0000000000002")),
        "{after:#?}"
    );
    // SF2 (ports of the second pair) is on no flow of ours any more.
    let sf2_in = s
        .host
        .ovs
        .vsctl(&[
            "--bare",
            "--columns=ofport",
            "find",
            "Interface",
            &format!("external_ids:iface-id={}", s.sf[1].ingress),
        ])
        .unwrap();
    let sf2_out = format!("output:{}", sf2_in.trim());
    assert!(!after.iter().any(|f| f.ends_with(&sf2_out)), "{after:#?}");
    // And traffic takes the new path.
    let rx = udp(&s.dst, STEERED_UDP);
    let tx = udp(&s.src, 0);
    let before = s.counts();
    for i in 0..5u8 {
        assert!(udp_roundtrip(&tx, &rx, (DST_IP, STEERED_UDP), &[i; 8]));
    }
    assert_eq!(delta(s.counts(), before), [5, 0, 5]);
    relay.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tap_group_gets_a_copy_of_the_traffic_that_goes_on_through_the_chain() {
    // PG1(SF1) -> TAP(analyser): the analyser sees a copy of what leaves SF1, and the chain
    // still delivers every datagram once.
    let w = World::start(&[HOST]).await;
    let host = Host::new(HOST);
    let relay = w.ctl.relay(HOST, &host.ovs).await;
    let src = w.vm(&host, "src", SRC_IP).await;
    let dst = w.vm(&host, "dst", DST_IP).await;
    neighbours(&src, &dst);
    let sf1 = w.sf(&host, "sf1", false, Value::Null).await;
    let analyser = w.sink(&host, "tap").await;
    let pg1 = w.group(&[&sf1], Value::Null).await;
    let tap = w
        .ctl
        .create(
            "/v2.0/sfc/port_pair_groups",
            "port_pair_group",
            json!({"port_pairs": [analyser.pair], "tap_enabled": true}),
        )
        .await;
    let tap = tap["id"].as_str().unwrap().to_owned();
    let fc = w.classifier(&src, &dst, "udp", STEERED_UDP).await;
    let chain = w.chain(&[&pg1, &tap], &[&fc], Value::Null).await;
    w.ctl.wait_installed(&chain, 1).await;

    let rx = udp(&dst, STEERED_UDP);
    let tx = udp(&src, 0);
    let (f1, copies) = (sf1.forwarded(), analyser.received());
    for i in 0..10u8 {
        assert!(udp_roundtrip(&tx, &rx, (DST_IP, STEERED_UDP), &[i; 16]));
    }
    // Nothing arrives twice at the destination.
    rx.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    assert!(rx.recv(&mut [0u8; 64]).is_err(), "a datagram arrived twice");
    assert_eq!(sf1.forwarded() - f1, 10);
    assert_eq!(analyser.received() - copies, 10);
    relay.stop().await.unwrap();
}
