//! The whole relay path on real components: a TCG guest defined in a real `libvirtd` runs the
//! static `vnf-agent`; `relay-host` finds the guest's channel through libvirt alone (the socket
//! path comes from the live domain XML) and carries its session over a mutual-TLS uplink to a
//! test controller, which pushes a configuration and gets the agent's Ack back. The relay holds
//! no key: the guest reads its instance key from the SMBIOS OEM strings of its domain XML, the
//! controller has the same key, and every frame is sealed end to end.
//!
//! libvirtd stays running afterwards (other tests share it); the domain is destroyed and
//! undefined on drop, also when the test fails.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::Duration;

use e2e_tests::build::static_binary;
use e2e_tests::guest_image::GuestImageBuilder;
use e2e_tests::libvirt::{ensure_libvirtd, LibvirtGuest};
use relay_host::testing::{
    push, server_tls, test_key, ControllerOptions, Pki, TestController, TlsFiles,
};
use relay_protocol::uplink::RelayMsg;
use relay_protocol::{AckOutcome, Message, Uuid};
use tokio_util::sync::CancellationToken;

const CHANNEL: &str = "org.opensfc.relay.0";

/// Boot takes about 6 s under TCG; generous for a loaded 2-core CI machine.
const BOOT: Duration = Duration::from_secs(120);

const RUN_AGENT: &str = r#"#!/bin/sh
mkdir -p /run/vnf/root/etc/app /run/vnf/state
echo "agent: starting"
exec /bin/vnf-agent --port org.opensfc.relay.0 --root /run/vnf/root --state-dir /run/vnf/state \
    --files-allow-dir /etc/app --log debug
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_reaches_the_agent_of_a_libvirt_guest_through_the_relay() {
    let (image, domain, key) = tokio::task::spawn_blocking(|| {
        ensure_libvirtd().unwrap_or_else(|e| panic!("{e}"));
        let agent = static_binary("vnf-agent", "vnf-agent").unwrap_or_else(|e| panic!("{e}"));
        let image = GuestImageBuilder::new()
            .file(&agent, "/bin/vnf-agent", 0o755)
            .script("/opt/test/run-agent", RUN_AGENT)
            .build()
            .unwrap_or_else(|e| panic!("{e}"));
        let key = test_key(0x5e);
        let domain = LibvirtGuest::new(&image)
            .run("/opt/test/run-agent")
            .channel(CHANNEL)
            .oem_string(format!("org.opensfc.relay.key:{}", key.to_hex()))
            .define_and_start()
            .unwrap_or_else(|e| panic!("{e}"));
        (image, domain, key)
    })
    .await
    .unwrap();
    let _ = image;
    let instance = Uuid::parse_str(domain.uuid()).unwrap();

    let pki = Pki::new("relay-e2e").unwrap();
    let tls = server_tls(&pki.ca_pem, &pki.server(&["localhost"]).unwrap()).unwrap();
    let mut controller = TestController::start(
        tls,
        HashMap::from([(instance, key)]),
        ControllerOptions::default(),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let files = TlsFiles::write(dir.path(), &pki.ca_pem, &pki.client("relay").unwrap()).unwrap();
    let config = files.config(controller.addr());
    assert_eq!(config.libvirt_uri, "qemu:///system");
    let shutdown = CancellationToken::new();
    let relay = tokio::spawn(relay_host::run(config, shutdown.clone()));

    // The relay announces the guest it found through libvirt, stamped with the domain UUID.
    let found = tokio::time::timeout(
        BOOT,
        controller.wait_for("the guest announced by the relay", |ev| match ev {
            relay_host::testing::ControllerEvent::Relay(RelayMsg::Register(r))
                if r.guests.iter().any(|g| g.instance == instance) =>
            {
                Some(())
            }
            relay_host::testing::ControllerEvent::Relay(RelayMsg::GuestUp(g))
                if g.instance == instance =>
            {
                Some(())
            }
            _ => None,
        }),
    )
    .await;
    assert!(
        matches!(found, Ok(Ok(()))),
        "relay did not announce the guest: {found:?}\nconsole:\n{}",
        domain.console_output()
    );

    let hello = tokio::time::timeout(BOOT, controller.hello_from(instance)).await;
    let hello = match hello {
        Ok(Ok(h)) => h,
        other => panic!("no Hello: {other:?}\nconsole:\n{}", domain.console_output()),
    };
    assert!(hello.services.iter().any(|s| s.as_str() == "files"));

    // Level-triggered, as the controller is: the desired config goes out after every
    // ConfigRequest, which the agent sends at the start of each session (it starts a second one
    // when the relay's resync marker arrives after its first Hello).
    let payload =
        serde_json::json!({ "files": [ { "path": "/etc/app/motd", "content": "via relay\n" } ] });
    let deadline = tokio::time::Instant::now() + BOOT;
    let ack = loop {
        match controller.message_from(instance).await {
            Ok(Message::ConfigRequest(_)) => {
                let msg = push(instance, "files", 1, payload.to_string().into_bytes()).unwrap();
                controller.push(instance, msg).await.unwrap();
            }
            Ok(Message::Ack(ack)) => break ack,
            Ok(_) => {}
            Err(e) if tokio::time::Instant::now() < deadline => eprintln!("still waiting: {e}"),
            Err(e) => panic!("no Ack: {e}\nconsole:\n{}", domain.console_output()),
        }
    };
    assert_eq!(
        (ack.instance, ack.version, &ack.outcome),
        (instance, 1, &AckOutcome::Applied)
    );

    shutdown.cancel();
    relay.await.unwrap().unwrap();
    controller.stop().await;
    tokio::task::spawn_blocking(move || drop(domain))
        .await
        .unwrap();
}
