//! Real packets through a private Open vSwitch (userspace datapath): namespaces as VMs, a
//! namespace as a service function, and the relay's programmer installing a one-hop chain
//! written the way the controller's OVS driver will write it.
//!
//! Traffic is real TCP and UDP from `std::net` sockets opened inside the namespaces; every
//! wait is a socket timeout, never a sleep.
#![allow(clippy::unwrap_used)]

mod ovs_common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, UdpSocket};
use std::time::Duration;

use ovs_common::*;
use relay_host::ovs::FlowCommand;
use relay_protocol::flow::ChainState;

const TIMEOUT: Duration = Duration::from_secs(3);

/// Sends `n` datagrams from src to dst's `port`; returns how many arrived intact.
fn udp(t: &Topology, port: u16, n: u8) -> usize {
    let rx = t
        .dst
        .run(move || UdpSocket::bind((DST_IP, port)))
        .unwrap()
        .unwrap();
    rx.set_read_timeout(Some(TIMEOUT)).unwrap();
    let tx = t.src.run(|| UdpSocket::bind((SRC_IP, 0))).unwrap().unwrap();
    for i in 0..n {
        tx.send_to(&[i; 200], (DST_IP, port)).unwrap();
    }
    let mut got = 0;
    let mut buf = [0u8; 512];
    while got < usize::from(n) {
        match rx.recv_from(&mut buf) {
            Ok((200, from)) if from.ip().to_string() == SRC_IP && buf[0] == got as u8 => got += 1,
            Ok(other) => panic!("unexpected datagram {other:?}"),
            Err(_) => break,
        }
    }
    got
}

/// A TCP exchange from src to dst's `port`: a request and its echo.
fn tcp_echo(t: &Topology, port: u16) -> Vec<u8> {
    let listener = t
        .dst
        .run(move || TcpListener::bind((DST_IP, port)))
        .unwrap()
        .unwrap();
    let mut client = t
        .src
        .run(move || {
            TcpStream::connect_timeout(&format!("{DST_IP}:{port}").parse().unwrap(), TIMEOUT)
        })
        .unwrap()
        .unwrap();
    client.set_read_timeout(Some(TIMEOUT)).unwrap();
    let request = b"through the chain, please".repeat(100);
    client.write_all(&request).unwrap();
    client.shutdown(std::net::Shutdown::Write).unwrap();
    let (mut server, _) = listener.accept().unwrap();
    server.set_read_timeout(Some(TIMEOUT)).unwrap();
    let mut got = Vec::new();
    server.read_to_end(&mut got).unwrap();
    assert_eq!(got, request);
    server.write_all(&got).unwrap();
    drop(server);
    let mut echo = Vec::new();
    client.read_to_end(&mut echo).unwrap();
    echo
}

#[test]
fn tcp_and_udp_cross_the_bridge_between_namespaces() {
    let t = Topology::new(true);
    assert_eq!(udp(&t, 6000, 20), 20);
    let echo = tcp_echo(&t, 6001);
    assert_eq!(echo.len(), 2500);
    // Without chain rules the SF is just another port: nothing is sent through it.
    assert_eq!(t.sf_forwarded(), 0);
}

#[tokio::test(flavor = "current_thread")]
async fn a_one_hop_chain_steers_matching_traffic_through_the_sf_and_nothing_else() {
    let t = Topology::new(true);
    let mut p = t.programmer();
    for part in parts(base_flows())
        .into_iter()
        .chain(parts(one_hop_chain(1, 1)))
    {
        let st = p.handle(FlowCommand::ChainFlows(part)).await;
        assert!(
            matches!(st[0].state, ChainState::Installed { .. }),
            "{st:?}\n{}",
            t.ovs.logs()
        );
    }

    let before = t.sf_forwarded();
    assert_eq!(udp(&t, STEERED_UDP, 20), 20, "steered UDP arrives");
    let udp_through_sf = t.sf_forwarded() - before;
    assert_eq!(
        udp_through_sf, 20,
        "every steered datagram went through the SF"
    );

    let before = t.sf_forwarded();
    assert_eq!(tcp_echo(&t, STEERED_TCP).len(), 2500, "steered TCP works");
    assert!(
        t.sf_forwarded() - before >= 3,
        "SYN, data and FIN went through the SF"
    );

    let before = t.sf_forwarded();
    assert_eq!(udp(&t, 5003, 20), 20);
    assert_eq!(tcp_echo(&t, 6001).len(), 2500);
    assert_eq!(t.sf_forwarded(), before, "other traffic bypasses the SF");

    // Without the chain, the steered ports go straight to the destination again.
    p.handle(FlowCommand::ChainRemoved(1)).await;
    let before = t.sf_forwarded();
    assert_eq!(udp(&t, STEERED_UDP, 20), 20);
    assert_eq!(t.sf_forwarded(), before);
}
