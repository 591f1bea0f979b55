//! The whole host path: a controller sends chain rules over the relay's mutual-TLS uplink, the
//! relay (with an `[ovs]` section) programs a real Open vSwitch, reports the chain's state
//! back, and steers real packets; after a reconnect the controller's resync and `FlowSync`
//! leave the bridge with exactly the chains it listed.
#![allow(clippy::unwrap_used)]

mod ovs_common;

use std::collections::HashMap;
use std::net::UdpSocket;
use std::time::Duration;

use ovs_common::*;
use relay_host::ovs::OvsConfig;
use relay_host::testing::{
    self, ControllerEvent, ControllerOptions, Pki, TestController, TestRelay, TlsFiles,
};
use relay_protocol::flow::{ChainRules, ChainState, ChainStatus};
use relay_protocol::uplink::{ControllerMsg, RelayMsg};

async fn status_of(controller: &mut TestController, cookie: u64, version: u64) -> ChainStatus {
    controller
        .wait_for("a chain status", |ev| match ev {
            ControllerEvent::Relay(RelayMsg::ChainStatus(s))
                if s.cookie == cookie && s.version == version =>
            {
                Some(s.clone())
            }
            _ => None,
        })
        .await
        .unwrap()
}

fn send(controller: &TestController, rules: ChainRules) {
    for part in parts(rules) {
        controller
            .send_raw(ControllerMsg::ChainFlows(part))
            .unwrap();
    }
}

fn udp_through_sf(t: &Topology) -> u64 {
    let rx = t
        .dst
        .run(|| UdpSocket::bind((DST_IP, STEERED_UDP)))
        .unwrap()
        .unwrap();
    rx.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let tx = t.src.run(|| UdpSocket::bind((SRC_IP, 0))).unwrap().unwrap();
    let before = t.sf_forwarded();
    for _ in 0..5 {
        tx.send_to(b"hello", (DST_IP, STEERED_UDP)).unwrap();
        let mut buf = [0; 16];
        assert_eq!(rx.recv(&mut buf).unwrap(), 5);
    }
    t.sf_forwarded() - before
}

#[tokio::test]
async fn a_relay_programs_its_bridge_from_the_uplink_and_resyncs_after_a_reconnect() {
    let t = Topology::new(true);
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new("test CA").unwrap();
    let files = TlsFiles::write(dir.path(), &pki.ca_pem, &pki.client("relay-1").unwrap()).unwrap();
    let server = testing::server_tls(&pki.ca_pem, &pki.server(&["localhost"]).unwrap()).unwrap();
    let mut controller =
        TestController::start(server.clone(), HashMap::new(), ControllerOptions::default())
            .await
            .unwrap();
    let mut config = files.config(controller.addr());
    let mut ovs = OvsConfig::new(BRIDGE);
    ovs.db = Some(t.ovs.db());
    ovs.rundir = Some(t.ovs.rundir().to_owned());
    ovs.poll_interval = Duration::from_millis(200);
    config.ovs = Some(ovs);
    let relay = TestRelay::start(config, false).await.unwrap();
    controller
        .wait_for("Register", |ev| {
            matches!(ev, ControllerEvent::Relay(RelayMsg::Register(_))).then_some(())
        })
        .await
        .unwrap();

    send(&controller, base_flows());
    send(&controller, one_hop_chain(1, 1));
    // A chain the controller will forget while the relay is disconnected.
    let mut doomed = one_hop_chain(2, 1);
    doomed.flows.truncate(1);
    doomed.flows[0] = classifier(6, 7000);
    send(&controller, doomed);
    controller
        .send_raw(ControllerMsg::FlowSync {
            cookies: vec![0, 1, 2],
        })
        .unwrap();
    let st = status_of(&mut controller, 1, 1).await;
    assert_eq!(
        st.state,
        ChainState::Installed {
            flows: 5,
            groups: 1
        }
    );
    status_of(&mut controller, 2, 1).await;
    assert_eq!(udp_through_sf(&t), 5);
    assert_eq!(t.our_flows().len(), 2 + 5 + 1);

    // The controller restarts: the relay reconnects, the controller resends what it has now
    // (chain 2 is gone) and lists it.
    let addr = controller.stop().await;
    let mut controller =
        TestController::start_on(addr, server, HashMap::new(), ControllerOptions::default())
            .await
            .unwrap();
    controller
        .wait_for("Register again", |ev| {
            matches!(ev, ControllerEvent::Relay(RelayMsg::Register(_))).then_some(())
        })
        .await
        .unwrap();
    send(&controller, base_flows());
    send(&controller, one_hop_chain(1, 1));
    controller
        .send_raw(ControllerMsg::FlowSync {
            cookies: vec![0, 1],
        })
        .unwrap();
    let st = status_of(&mut controller, 1, 1).await;
    assert!(matches!(st.state, ChainState::Installed { .. }));
    // The relay had chain 2 and the controller no longer lists it.
    let st = status_of(&mut controller, 2, 1).await;
    assert_eq!(st.state, ChainState::Removed);
    assert_eq!(t.our_flows().len(), 7);
    assert!(!t
        .our_flows()
        .iter()
        .any(|f| f.starts_with("cookie=0x5fc0000000000002")));
    assert_eq!(udp_through_sf(&t), 5);
    assert_eq!(
        relay.metric("relay_ovs_bundle_failures_total", &[]),
        Some(0.0)
    );
    assert_eq!(
        relay.metric("relay_ovs_chains", &[("state", "installed")]),
        Some(2.0)
    );
    relay.stop().await.unwrap();
}
