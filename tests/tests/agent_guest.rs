//! The real `vnf-agent` binary, built statically, in a QEMU guest (TCG): the test is the
//! controller at the host end of the guest's virtio-serial channel and of a second, UART-based
//! channel (`/dev/ttyS1`, driven through tokio-serial in the agent). Each completes the
//! handshake, receives a ConfigPush, applies it with the reference `files` handler and sends
//! the Ack. The agent reads its instance key from the SMBIOS OEM strings QEMU sets.

#![allow(clippy::unwrap_used)]

use std::os::unix::net::UnixStream;
use std::time::Duration;

use e2e_tests::build::static_binary;
use e2e_tests::guest_image::GuestImageBuilder;
use e2e_tests::qemu::{GuestConfig, BOOT_TIMEOUT};
use e2e_tests::wire::TestController;
use relay_protocol::{
    Ack, AckOutcome, ConfigPush, InstanceKey, Message, ServiceName, Uuid, KEY_LEN,
};

const PORT: &str = "org.opensfc.relay.0";
const INSTANCE: Uuid = Uuid::from_u128(0x9d0c_7e1a_52b4_4f36_a1d2_6c3b_8e4f_0a17);
const STEP: Duration = Duration::from_secs(90);

/// Starts one agent on the virtio port and one on the UART, each with its own root and state,
/// allowed to write below /etc/app only.
const RUN_AGENTS: &str = r#"#!/bin/sh
for t in virtio uart; do
    mkdir -p /run/vnf/$t/root/etc/app /run/vnf/$t/state
done
common="--instance $1 --files-allow-dir /etc/app --log debug"
/bin/vnf-agent --port org.opensfc.relay.0 --root /run/vnf/virtio/root --state-dir /run/vnf/virtio/state $common &
/bin/vnf-agent --uart /dev/ttyS1 --root /run/vnf/uart/root --state-dir /run/vnf/uart/state $common &
echo "agents: started"
wait
"#;

fn files_push(version: u64, path: &str, content: &str) -> Message {
    let payload = serde_json::json!({ "files": [ { "path": path, "content": content } ] });
    Message::ConfigPush(ConfigPush {
        instance: INSTANCE,
        service: ServiceName::new("files").unwrap(),
        config_id: Uuid::from_u128(version as u128),
        version,
        payload: payload.to_string().into_bytes(),
    })
}

fn expect_ack(ctl: &mut TestController<UnixStream>) -> Ack {
    loop {
        match ctl.recv(STEP).unwrap_or_else(|e| panic!("{e}")) {
            Message::Ack(ack) => return ack,
            // ConfigRequest after the handshake, telemetry: not what this step waits for.
            Message::ConfigRequest(_) | Message::Event(_) | Message::Pong(_) => {}
            other => panic!("unexpected message from the agent: {other:?}"),
        }
    }
}

/// Handshake, an applied push, a re-push of the same version (acknowledged, not re-applied), a
/// hostile push (rejected with the handler's reason).
fn converse(stream: UnixStream, key: &InstanceKey, channel: &str) {
    let mut ctl = TestController::open(stream, key).unwrap();
    let hello = ctl
        .handshake(STEP)
        .unwrap_or_else(|e| panic!("{channel}: {e}"));
    assert!(
        hello.services.iter().any(|s| s.as_str() == "files"),
        "{channel}: agent announced {:?}",
        hello.services
    );
    let first = ctl.recv(STEP).unwrap();
    assert!(
        matches!(first, Message::ConfigRequest(_)),
        "{channel}: {first:?}"
    );

    ctl.send(&files_push(
        1,
        "/etc/app/motd",
        &format!("hello over {channel}\n"),
    ))
    .unwrap();
    let ack = expect_ack(&mut ctl);
    assert_eq!(
        (ack.version, &ack.outcome),
        (1, &AckOutcome::Applied),
        "{channel}"
    );
    assert_eq!(ack.instance, INSTANCE);

    ctl.send(&files_push(1, "/etc/app/motd", "not applied twice\n"))
        .unwrap();
    let again = expect_ack(&mut ctl);
    assert_eq!(
        (again.version, &again.outcome),
        (1, &AckOutcome::Applied),
        "{channel}"
    );

    ctl.send(&files_push(2, "/etc/app/../shadow", "x")).unwrap();
    let rejected = expect_ack(&mut ctl);
    let AckOutcome::Rejected { reason } = &rejected.outcome else {
        panic!("{channel}: traversal accepted: {rejected:?}");
    };
    assert_eq!(rejected.version, 2);
    assert!(reason.contains(".."), "{channel}: reason {reason:?}");
    assert!(
        ctl.rejected.is_empty(),
        "{channel}: frames rejected: {:?}",
        ctl.rejected
    );
}

#[test]
fn agent_in_a_guest_applies_and_acknowledges_over_virtio_serial_and_uart() {
    let agent = static_binary("vnf-agent", "vnf-agent").unwrap_or_else(|e| panic!("{e}"));
    let image = GuestImageBuilder::new()
        .file(&agent, "/bin/vnf-agent", 0o755)
        .script("/opt/test/run-agents", RUN_AGENTS)
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let key = InstanceKey::from_bytes(&[0x3c; KEY_LEN]).unwrap();
    let mut guest = GuestConfig::new(&image)
        .run("/opt/test/run-agents")
        .arg(INSTANCE.to_string())
        .channel(PORT)
        .uart("uart")
        .qemu_arg("-smbios")
        .qemu_arg(format!(
            "type=11,value=org.opensfc.relay.key:{}",
            key.to_hex()
        ))
        .launch()
        .unwrap_or_else(|e| panic!("{e}"));
    guest
        .wait_for_console("agents: started", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(guest.uart_guest_device("uart").unwrap(), "/dev/ttyS1");

    converse(guest.connect_channel(PORT).unwrap(), &key, "virtio-serial");
    converse(guest.connect_uart("uart").unwrap(), &key, "uart");

    let console = guest.console_output();
    assert!(!console.contains("panicked"), "agent panicked:\n{console}");
}
