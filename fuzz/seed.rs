//! Writes the seed corpus of the `decode` target: streams of valid frames sealed in the same
//! established session the target builds (key 0x42.., nonce 1, epoch 2), so that mutations start
//! past the MAC check. Run: `cargo run --manifest-path fuzz/Cargo.toml --bin seed-corpus`.

use bytes::BytesMut;
use relay_protocol::{
    Ack, AckOutcome, ConfigPush, ConfigRequest, Decoded, Event, FrameDecoder, Hello, InstanceKey,
    Message, Ping, ServiceName, Session, Severity, Uuid, Welcome, RESYNC_MARKER,
};

fn main() -> std::io::Result<()> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/decode");
    std::fs::create_dir_all(&dir)?;
    let key = InstanceKey::from_bytes(&[0x42; 32]).expect("32 bytes");
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
            outcome: AckOutcome::Rejected { reason: "no".into() },
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
        let mut guest = Session::guest(&key);
        let mut ctl = Session::controller(&key);
        let hello = Hello {
            protocol_min: 1,
            protocol_max: 1,
            capabilities: 0,
            agent_name: "fuzz".into(),
            agent_version: "0".into(),
            services: vec![],
        };
        let mut hello_wire = BytesMut::new();
        guest.begin(1, &hello, &mut hello_wire).expect("hello");
        open(&mut ctl, &mut hello_wire.clone());
        let mut welcome_wire = BytesMut::new();
        let welcome = Welcome {
            protocol: 1,
            capabilities: 0,
            session_epoch: 2,
            max_message_len: 1 << 20,
            heartbeat_interval_ms: 0,
        };
        ctl.accept(&welcome, &mut welcome_wire).expect("welcome");
        open(&mut guest, &mut welcome_wire.clone());
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
                std::fs::write(dir.join(format!("{dir_name}-{}", m.kind())), [&[3u8][..], &w].concat())?;
            }
        }
        stream.extend_from_slice(&RESYNC_MARKER);
        std::fs::write(dir.join(format!("{dir_name}-stream")), &stream)?;
    }
    Ok(())
}

fn open(s: &mut Session, wire: &mut BytesMut) {
    let mut d = FrameDecoder::new();
    while let Some(item) = d.decode(wire) {
        if let Decoded::Frame(f) = item {
            let _ = s.open(&f);
        }
    }
}
