//! The daemon's entry point, `relay_host::run`, with libvirt discovery wired in: a domain
//! defined in libvirt's in-process test driver (`test:///default`) whose relay channel is a
//! fake guest's socket is found through libvirt alone, configuration flows both ways, and
//! destroying the domain ends the session. (The same with a real libvirtd and a QEMU guest is
//! the workspace's end-to-end test.)
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;

use relay_host::testing::{
    self, push, test_key, AgentEvent, ControllerEvent, ControllerOptions, FakeGuest, Pki, Result,
    TestController, TlsFiles,
};
use relay_protocol::uplink::RelayMsg;
use relay_protocol::{AckOutcome, Message, Uuid};
use tokio_util::sync::CancellationToken;

const GUEST: Uuid = Uuid::from_u128(0x5fc0_d000_0000_4000_8000_0000_0000_0001);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_finds_guests_through_libvirt_and_relays_their_configuration() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let pki = Pki::new("daemon CA")?;
    let files = TlsFiles::write(dir.path(), &pki.ca_pem, &pki.client("relay")?)?;
    let tls = testing::server_tls(&pki.ca_pem, &pki.server(&["localhost"])?)?;
    let keys = HashMap::from([(GUEST, test_key(1))]);
    let mut controller = TestController::start(tls, keys, ControllerOptions::default()).await?;
    let guest = FakeGuest::bind(dir.path(), GUEST, test_key(1))?;

    // The domain, as Nova's patch would define it: a unix channel with the relay's name.
    // The test driver's state lives as long as one connection to it is open.
    let conn = relay_host::libvirt::Connection::open("test:///default")?;
    let xml = format!(
        "<domain type='test'>
           <name>vnf-daemon-test</name>
           <uuid>{GUEST}</uuid>
           <memory unit='MiB'>64</memory>
           <os><type arch='x86_64'>hvm</type></os>
           <devices>
             <channel type='unix'>
               <source mode='bind' path='{}'/>
               <target type='virtio' name='org.opensfc.relay.0'/>
             </channel>
           </devices>
         </domain>",
        guest.socket.display()
    );
    let domain = virt::domain::Domain::create_xml(&conn, &xml, 0)?;
    let mut agent = guest.spawn_agent();

    let mut config = files.config(controller.addr());
    config.libvirt_uri = "test:///default".into();
    let shutdown = CancellationToken::new();
    let daemon = tokio::spawn(relay_host::run(config, shutdown.clone()));

    controller.hello_from(GUEST).await?;
    controller
        .push(GUEST, push(GUEST, "firewall", 1, b"rules".to_vec())?)
        .await?;
    agent
        .wait_for("the push", |ev| {
            matches!(ev, AgentEvent::Pushed(_)).then_some(())
        })
        .await?;
    let ack = controller
        .wait_for("the Ack", |ev| match ev {
            ControllerEvent::Message {
                instance,
                msg: Message::Ack(a),
            } if *instance == GUEST => Some(a.clone()),
            _ => None,
        })
        .await?;
    assert_eq!(ack.outcome, AckOutcome::Applied);

    // The domain goes away: libvirt's event ends the session and the controller hears of it.
    domain.destroy()?;
    controller
        .wait_for("GuestDown", |ev| match ev {
            ControllerEvent::Relay(RelayMsg::GuestDown { instance }) if *instance == GUEST => {
                Some(())
            }
            _ => None,
        })
        .await?;
    agent
        .wait_for("the channel to close", |ev| {
            matches!(ev, AgentEvent::Closed(_)).then_some(())
        })
        .await?;

    shutdown.cancel();
    daemon.await??;
    drop(conn);
    Ok(())
}
