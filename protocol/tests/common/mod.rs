//! Shared fixtures: a key, a completed handshake, one sample message of every kind.
#![allow(dead_code, clippy::unwrap_used)]

use bytes::BytesMut;
use relay_protocol::{
    message::capability, Ack, AckOutcome, AppliedConfig, ConfigPush, ConfigRequest, Decoded,
    ErrorCode, ErrorMsg, Event, FrameDecoder, Hello, InstanceKey, Message, Ping, Pong, RawFrame,
    ServiceName, Session, Severity, Uuid, Welcome,
};

pub const NONCE: u64 = 0x1111_2222_3333_4444;
pub const EPOCH: u64 = 0x5555_6666_7777_8888;
pub const INSTANCE: Uuid = Uuid::from_u128(0x6f1c_2d3e_4a5b_4c6d_8e7f_9a0b_1c2d_3e4f);
pub const CONFIG: Uuid = Uuid::from_u128(0x0123_4567_89ab_4cde_8f01_2345_6789_abcd);

pub fn key() -> InstanceKey {
    InstanceKey::from_bytes(&[0x42; 32]).unwrap()
}

pub fn service(s: &str) -> ServiceName {
    ServiceName::new(s).unwrap()
}

pub fn hello() -> Hello {
    Hello {
        protocol_min: 1,
        protocol_max: 1,
        capabilities: capability::ALL,
        agent_name: "vnf-agent".into(),
        agent_version: "0.1.0".into(),
        services: vec![service("firewall"), service("files")],
    }
}

pub fn welcome(epoch: u64) -> Welcome {
    Welcome {
        protocol: 1,
        capabilities: capability::ALL,
        session_epoch: epoch,
        max_message_len: 16 * 1024 * 1024,
        heartbeat_interval_ms: 15_000,
    }
}

pub fn push(version: u64, payload: Vec<u8>) -> ConfigPush {
    ConfigPush {
        instance: INSTANCE,
        service: service("firewall"),
        config_id: CONFIG,
        version,
        payload,
    }
}

/// One message of every kind that flows after the handshake.
pub fn samples() -> Vec<Message> {
    vec![
        Message::ConfigPush(push(7, br#"{"rules":[]}"#.to_vec())),
        Message::Ack(Ack {
            instance: INSTANCE,
            service: service("firewall"),
            config_id: CONFIG,
            version: 7,
            outcome: AckOutcome::Applied,
        }),
        Message::Ack(Ack {
            instance: INSTANCE,
            service: service("vpn"),
            config_id: CONFIG,
            version: 2,
            outcome: AckOutcome::Rejected {
                reason: "ipsec.conf: bad proposal".into(),
            },
        }),
        Message::ConfigRequest(ConfigRequest {
            applied: vec![AppliedConfig {
                service: service("firewall"),
                config_id: CONFIG,
                version: 6,
            }],
        }),
        Message::Event(Event {
            name: "link".into(),
            severity: Severity::Warning,
            message: "eth1 down".into(),
            attributes: vec![("ifname".into(), "eth1".into())],
        }),
        Message::Ping(Ping { nonce: 9 }),
        Message::Pong(Pong { nonce: 9 }),
        Message::Error(ErrorMsg {
            code: ErrorCode::UNKNOWN_SERVICE,
            message: "no handler for lb".into(),
        }),
    ]
}

/// Decodes every frame in `bytes`, ignoring markers and discarded bytes.
pub fn frames(bytes: &[u8]) -> Vec<RawFrame> {
    let mut buf = BytesMut::from(bytes);
    let mut d = FrameDecoder::new();
    let mut out = Vec::new();
    while let Some(item) = d.decode(&mut buf) {
        if let Decoded::Frame(f) = item {
            out.push(f);
        }
    }
    out
}

/// Opens every frame and returns the completed messages (errors fail the test).
pub fn open_all(s: &mut Session, bytes: &[u8]) -> Vec<Message> {
    frames(bytes)
        .iter()
        .filter_map(|f| s.open(f).unwrap())
        .collect()
}

/// A guest and a controller session after a completed handshake.
pub fn pair() -> (Session, Session) {
    let mut guest = Session::guest(&key());
    let mut ctl = Session::controller(&key());
    let mut wire = BytesMut::new();
    guest.begin(NONCE, &hello(), &mut wire).unwrap();
    assert_eq!(open_all(&mut ctl, &wire), vec![Message::Hello(hello())]);
    let mut wire = BytesMut::new();
    ctl.accept(&welcome(EPOCH), &mut wire).unwrap();
    assert_eq!(
        open_all(&mut guest, &wire),
        vec![Message::Welcome(welcome(EPOCH))]
    );
    assert!(guest.is_established() && ctl.is_established());
    (guest, ctl)
}
