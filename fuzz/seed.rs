//! Writes the seed corpus of the `decode` target: streams of valid frames sealed in the
//! established session the target builds (`relay_protocol_fuzz::established`), so that mutations start
//! past the MAC check. Run: `cargo run --manifest-path fuzz/Cargo.toml --bin seed-corpus`.

use bytes::BytesMut;
use relay_protocol::{
    Ack, AckOutcome, ConfigPush, ConfigRequest, Event, Message, Ping, ServiceName, Severity, Uuid,
    RESYNC_MARKER,
};
use relay_protocol_fuzz::{established, Established};

fn main() -> std::io::Result<()> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/decode");
    std::fs::create_dir_all(&dir)?;
    let svc = ServiceName::new("firewall").expect("valid name");
    let msgs = [
        Message::ConfigPush(ConfigPush {
            instance: Uuid::from_u128(1),
            service: svc.clone(),
            config_id: Uuid::from_u128(2),
            version: 3,
            payload: b"{\"rules\":[]}".to_vec(),
        }),
        Message::ConfigPush(ConfigPush {
            instance: Uuid::from_u128(1),
            service: svc.clone(),
            config_id: Uuid::from_u128(2),
            version: 4,
            payload: vec![0x5a; 70_000],
        }),
        Message::Ack(Ack {
            instance: Uuid::from_u128(1),
            service: svc.clone(),
            config_id: Uuid::from_u128(2),
            version: 3,
            outcome: AckOutcome::Rejected {
                reason: "no".into(),
            },
        }),
        Message::ConfigRequest(ConfigRequest { applied: vec![] }),
        Message::Event(Event {
            name: "e".into(),
            severity: Severity::Info,
            message: "m".into(),
            attributes: vec![("k".into(), "v".into())],
        }),
        Message::Ping(Ping { nonce: 7 }),
    ];
    for (dir_name, to_guest) in [("to-guest", true), ("to-controller", false)] {
        let Established {
            mut guest,
            controller: mut ctl,
            hello_wire,
            welcome_wire,
        } = established();
        let mut stream = vec![200u8];
        if to_guest {
            stream.extend_from_slice(&welcome_wire);
        } else {
            stream.extend_from_slice(&hello_wire);
        }
        for m in &msgs {
            let mut w = BytesMut::new();
            let sender = if to_guest { &mut ctl } else { &mut guest };
            if sender.send(m, &mut w).is_ok() {
                stream.extend_from_slice(&w);
                std::fs::write(
                    dir.join(format!("{dir_name}-{}", m.kind())),
                    [&[3u8][..], &w].concat(),
                )?;
            }
        }
        stream.extend_from_slice(&RESYNC_MARKER);
        std::fs::write(dir.join(format!("{dir_name}-stream")), &stream)?;
    }
    Ok(())
}
