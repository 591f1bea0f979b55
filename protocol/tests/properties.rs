//! Property tests: round trip of arbitrary messages, arbitrary bytes never panic, garbage
//! between frames is skipped in any read pattern.
#![allow(clippy::unwrap_used)]

mod common;

use bytes::BytesMut;
use common::*;
use proptest::prelude::*;
use relay_protocol::{
    frame::MAGIC, message::MAX_ITEMS, Ack, AckOutcome, AppliedConfig, ConfigPush, ConfigRequest,
    Decoded, ErrorCode, ErrorMsg, Event, FrameDecoder, Limits, Message, Ping, Pong, Role,
    ServiceName, Session, Severity, Uuid, MAX_FRAME, RESYNC_MARKER,
};

fn service_name() -> impl Strategy<Value = ServiceName> {
    "[a-z0-9][a-z0-9._-]{0,63}".prop_map(|s| ServiceName::new(s).unwrap())
}

fn uuid() -> impl Strategy<Value = Uuid> {
    any::<u128>().prop_map(Uuid::from_u128)
}

fn text(max: usize) -> impl Strategy<Value = String> {
    proptest::string::string_regex(&format!(".{{0,{}}}", max.min(200)))
        .unwrap()
        .prop_filter("within the bound in bytes", move |s| s.len() <= max)
}

fn message() -> impl Strategy<Value = Message> {
    prop_oneof![
        (
            uuid(),
            service_name(),
            uuid(),
            1..u64::MAX,
            prop::collection::vec(any::<u8>(), 0..100_000)
        )
            .prop_map(|(instance, service, config_id, version, payload)| {
                Message::ConfigPush(ConfigPush {
                    instance,
                    service,
                    config_id,
                    version,
                    payload,
                })
            }),
        (
            uuid(),
            service_name(),
            uuid(),
            1..u64::MAX,
            prop::option::of(text(4096))
        )
            .prop_map(|(instance, service, config_id, version, reason)| {
                let outcome = match reason {
                    None => AckOutcome::Applied,
                    Some(reason) => AckOutcome::Rejected { reason },
                };
                Message::Ack(Ack {
                    instance,
                    service,
                    config_id,
                    version,
                    outcome,
                })
            }),
        prop::collection::vec((service_name(), uuid(), 1..u64::MAX), 0..MAX_ITEMS).prop_map(|v| {
            Message::ConfigRequest(ConfigRequest {
                applied: v
                    .into_iter()
                    .map(|(service, config_id, version)| AppliedConfig {
                        service,
                        config_id,
                        version,
                    })
                    .collect(),
            })
        }),
        (
            text(128).prop_filter("non-empty", |s| !s.is_empty()),
            prop_oneof![
                Just(Severity::Debug),
                Just(Severity::Info),
                Just(Severity::Warning),
                Just(Severity::Error)
            ],
            text(4096),
            prop::collection::vec((text(128), text(4096)), 0..8),
        )
            .prop_map(|(name, severity, message, attributes)| {
                Message::Event(Event {
                    name,
                    severity,
                    message,
                    attributes,
                })
            }),
        any::<u64>().prop_map(|nonce| Message::Ping(Ping { nonce })),
        any::<u64>().prop_map(|nonce| Message::Pong(Pong { nonce })),
        (any::<u16>(), text(4096)).prop_map(|(c, message)| Message::Error(ErrorMsg {
            code: ErrorCode(c),
            message
        })),
    ]
}

/// Garbage made to look like the start of things: random bytes, magic and marker prefixes.
fn garbage() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        4 => prop::collection::vec(any::<u8>(), 0..64),
        1 => Just(MAGIC.to_vec()),
        1 => (1..MAGIC.len()).prop_map(|n| MAGIC[..n].to_vec()),
        1 => (1..RESYNC_MARKER.len()).prop_map(|n| RESYNC_MARKER[..n].to_vec()),
        1 => Just(RESYNC_MARKER.to_vec()),
    ];
    prop::collection::vec(piece, 0..4).prop_map(|v| v.concat())
}

/// Feeds `stream` to a decoder in reads of the given sizes (cycled) and opens every frame.
fn receive(session: &mut Session, stream: &[u8], reads: &[usize]) -> Vec<Message> {
    let mut d = FrameDecoder::new();
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut pos = 0;
    let mut i = 0;
    while pos < stream.len() {
        let n = reads[i % reads.len()].clamp(1, stream.len() - pos);
        i += 1;
        buf.extend_from_slice(&stream[pos..pos + n]);
        pos += n;
        while let Some(item) = d.decode(&mut buf) {
            if let Decoded::Frame(f) = item {
                assert!(f.as_bytes().len() <= MAX_FRAME);
                if let Some(m) = session.open(&f).unwrap() {
                    out.push(m);
                }
            }
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    #[test]
    fn round_trip(msg in message(), to_guest in any::<bool>()) {
        let (mut guest, mut ctl) = pair();
        let (tx, rx) = if to_guest { (&mut ctl, &mut guest) } else { (&mut guest, &mut ctl) };
        let mut wire = BytesMut::new();
        tx.send(&msg, &mut wire).unwrap();
        prop_assert_eq!(receive(rx, &wire, &[usize::MAX]), vec![msg]);
    }

    #[test]
    fn garbage_between_frames_is_skipped(
        msgs in prop::collection::vec(message(), 1..5),
        junk in prop::collection::vec(garbage(), 5),
        reads in prop::collection::vec(1usize..40_000, 1..8),
    ) {
        let (mut guest, mut ctl) = pair();
        let mut stream = Vec::new();
        for (i, m) in msgs.iter().enumerate() {
            stream.extend_from_slice(&junk[i]);
            let mut wire = BytesMut::new();
            ctl.send(m, &mut wire).unwrap();
            stream.extend_from_slice(&wire);
        }
        prop_assert_eq!(receive(&mut guest, &stream, &reads), msgs);
    }

    #[test]
    fn arbitrary_bytes_never_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..4096),
        reads in prop::collection::vec(1usize..600, 1..6),
    ) {
        for role in [Role::Guest, Role::Controller] {
            let mut s = Session::new(role, &key(), Limits::default());
            feed_anything(&mut s, &bytes, &reads);
        }
        let (mut guest, mut ctl) = pair();
        feed_anything(&mut guest, &bytes, &reads);
        feed_anything(&mut ctl, &bytes, &reads);
    }

    #[test]
    fn mutated_frames_never_panic_and_never_pass(
        msg in message(),
        flips in prop::collection::vec((any::<prop::sample::Index>(), 1u8..=255), 1..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let (mut guest, mut ctl) = pair();
        let mut wire = BytesMut::new();
        ctl.send(&msg, &mut wire).unwrap();
        let mut bad = wire.to_vec();
        for (at, x) in &flips {
            let i = at.index(bad.len());
            bad[i] ^= x;
        }
        // Two flips of the same byte by the same value cancel out.
        prop_assume!(bad[..] != wire[..]);
        bad.truncate(cut.index(bad.len()) + 1);
        let mut d = FrameDecoder::new();
        let mut buf = BytesMut::from(&bad[..]);
        while let Some(item) = d.decode(&mut buf) {
            if let Decoded::Frame(f) = item {
                // A changed frame never yields a message.
                prop_assert!(!matches!(guest.open(&f), Ok(Some(_))));
            }
        }
    }
}

fn feed_anything(s: &mut Session, bytes: &[u8], reads: &[usize]) {
    let mut d = FrameDecoder::new();
    let mut buf = BytesMut::new();
    let mut pos = 0;
    for n in reads.iter().cycle() {
        if pos >= bytes.len() {
            break;
        }
        let n = (*n).min(bytes.len() - pos);
        buf.extend_from_slice(&bytes[pos..pos + n]);
        pos += n;
        while let Some(item) = d.decode(&mut buf) {
            if let Decoded::Frame(f) = item {
                let _ = s.open(&f);
            }
        }
    }
}
