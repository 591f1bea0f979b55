//! Behaviour of the authenticated session: exchange, tampering, replay, epochs, bounds,
//! truncation and chunking.
#![allow(clippy::unwrap_used)]

mod common;

use bytes::BytesMut;
use common::*;
use relay_protocol::{
    frame::{HEADER_LEN, MAC_LEN, MAX_BODY},
    Decoded, Error, FrameDecoder, Kind, Limits, Message, Ping, Role, Session, MAX_FRAME,
    RESYNC_MARKER,
};

fn sealed(s: &mut Session, msg: &Message) -> BytesMut {
    let mut out = BytesMut::new();
    s.send(msg, &mut out).unwrap();
    out
}

fn open_one(s: &mut Session, bytes: &[u8]) -> Result<Option<Message>, Error> {
    let f = frames(bytes);
    assert_eq!(f.len(), 1, "expected exactly one frame");
    s.open(&f[0])
}

/// Rewrites the header checksum after a deliberate header change, as a forger would.
fn fix_crc(frame: &mut [u8]) {
    let crc = crc32fast_hash(&frame[..HEADER_LEN - 4]);
    frame[HEADER_LEN - 4..HEADER_LEN].copy_from_slice(&crc.to_be_bytes());
}

fn crc32fast_hash(b: &[u8]) -> u32 {
    // CRC-32 (IEEE), bitwise: independent of the implementation under test.
    let mut crc = !0u32;
    for &byte in b {
        crc ^= byte as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn every_message_kind_crosses_both_ways() {
    let (mut guest, mut ctl) = pair();
    for msg in samples() {
        assert_eq!(
            open_all(&mut ctl, &sealed(&mut guest, &msg)),
            vec![msg.clone()]
        );
        assert_eq!(open_all(&mut guest, &sealed(&mut ctl, &msg)), vec![msg]);
    }
}

#[test]
fn tampered_body_header_or_mac_is_rejected() {
    // A rejected frame leaves the session as it was, so one session sees every attempt.
    let (mut guest, mut ctl) = pair();
    let wire = sealed(&mut guest, &samples()[0]);
    let len = wire.len();
    for (what, at) in [
        ("body", HEADER_LEN + 3),
        ("mac", len - 1),
        ("mac start", len - MAC_LEN),
    ] {
        let mut bad = wire.to_vec();
        bad[at] ^= 0x01;
        assert!(
            matches!(open_one(&mut ctl, &bad), Err(Error::BadMac { .. })),
            "tampered {what} accepted"
        );
    }
    // A header change is caught by the checksum; with the checksum forged too, by the MAC.
    for at in [5, 17, 25] {
        let mut bad = wire.to_vec();
        bad[at] ^= 0x01;
        let mut d = FrameDecoder::new();
        let mut buf = BytesMut::from(&bad[..]);
        assert!(matches!(
            d.decode(&mut buf),
            Some(Decoded::Discarded {
                reason: Error::HeaderChecksum,
                ..
            })
        ));
        fix_crc(&mut bad);
        let res = open_one(&mut ctl, &bad);
        assert!(
            matches!(res, Err(Error::BadMac { .. })),
            "forged header byte {at}: {res:?}"
        );
    }
    assert_eq!(
        open_one(&mut ctl, &wire).unwrap(),
        Some(samples()[0].clone())
    );
}

#[test]
fn wrong_key_and_reflected_frames_are_rejected() {
    let (mut guest, _) = pair();
    let wire = sealed(&mut guest, &samples()[0]);
    let other = relay_protocol::InstanceKey::from_bytes(&[0x43; 32]).unwrap();
    let mut stranger = Session::new(Role::Controller, &other, Limits::default());
    assert!(matches!(
        open_one(&mut stranger, &wire),
        Err(Error::BadMac { .. })
    ));
    // The guest's own frame sent back to it: direction keys differ.
    assert!(matches!(
        open_one(&mut guest, &wire),
        Err(Error::BadMac { .. })
    ));
}

#[test]
fn replayed_duplicated_and_reordered_frames_are_rejected() {
    let (mut guest, mut ctl) = pair();
    let first = sealed(&mut guest, &Message::Ping(Ping { nonce: 1 }));
    let second = sealed(&mut guest, &Message::Ping(Ping { nonce: 2 }));
    assert!(open_one(&mut ctl, &second).unwrap().is_some());
    assert_eq!(
        open_one(&mut ctl, &first),
        Err(Error::Replay { seq: 0, last: 1 })
    );
    assert_eq!(
        open_one(&mut ctl, &second),
        Err(Error::Replay { seq: 1, last: 1 })
    );
    // The session goes on after rejections.
    let third = sealed(&mut guest, &Message::Ping(Ping { nonce: 3 }));
    assert_eq!(
        open_one(&mut ctl, &third).unwrap(),
        Some(Message::Ping(Ping { nonce: 3 }))
    );
}

#[test]
fn frames_of_an_old_epoch_are_rejected_after_a_new_handshake() {
    let (mut guest, mut ctl) = pair();
    let old_to_ctl = sealed(&mut guest, &samples()[1]);
    let old_to_guest = sealed(&mut ctl, &samples()[0]);

    // The guest reopens its port: new nonce, new Hello, new epoch.
    let mut wire = BytesMut::new();
    guest.begin(NONCE + 1, &hello(), &mut wire).unwrap();
    // Before the Welcome, the controller's stale push is refused by epoch.
    assert!(matches!(
        open_one(&mut guest, &old_to_guest),
        Err(Error::OldEpoch { .. })
    ));
    assert_eq!(open_all(&mut ctl, &wire), vec![Message::Hello(hello())]);
    let mut wire = BytesMut::new();
    ctl.accept(&welcome(EPOCH + 1), &mut wire).unwrap();
    // A Welcome recorded from the previous session does not establish this one.
    let mut stale = BytesMut::new();
    let mut c2 = Session::controller(&key());
    let mut g2 = Session::guest(&key());
    let mut hello_wire = BytesMut::new();
    g2.begin(NONCE, &hello(), &mut hello_wire).unwrap();
    open_all(&mut c2, &hello_wire);
    c2.accept(&welcome(EPOCH), &mut stale).unwrap();
    assert_eq!(
        open_one(&mut guest, &stale),
        Err(Error::OldEpoch {
            epoch: NONCE,
            expected: NONCE + 1
        })
    );
    assert_eq!(
        open_all(&mut guest, &wire),
        vec![Message::Welcome(welcome(EPOCH + 1))]
    );

    assert_eq!(
        open_one(&mut ctl, &old_to_ctl),
        Err(Error::OldEpoch {
            epoch: EPOCH,
            expected: EPOCH + 1
        })
    );
    assert_eq!(
        open_one(&mut guest, &old_to_guest),
        Err(Error::OldEpoch {
            epoch: EPOCH,
            expected: EPOCH + 1
        })
    );
    let fresh = sealed(&mut guest, &samples()[1]);
    assert_eq!(open_all(&mut ctl, &fresh), vec![samples()[1].clone()]);
}

#[test]
fn nothing_but_the_handshake_before_it_completes() {
    let mut guest = Session::guest(&key());
    let mut out = BytesMut::new();
    assert_eq!(
        guest.send(&samples()[0], &mut out),
        Err(Error::NotEstablished(Kind::ConfigPush))
    );
    let mut ctl = Session::controller(&key());
    assert!(matches!(
        ctl.accept(&welcome(EPOCH), &mut out),
        Err(Error::Unexpected { .. })
    ));
    assert!(out.is_empty());
}

#[test]
fn oversized_frames_and_messages_are_rejected() {
    // A header announcing more than one frame can carry is refused from the header alone.
    let (mut guest, _) = pair();
    let mut wire = sealed(&mut guest, &samples()[5]).to_vec();
    wire[8..12].copy_from_slice(&((MAX_BODY + 1) as u32).to_be_bytes());
    fix_crc(&mut wire);
    let mut d = FrameDecoder::new();
    let mut buf = BytesMut::from(&wire[..]);
    assert!(matches!(
        d.decode(&mut buf),
        Some(Decoded::Discarded {
            reason: Error::BodyTooLong { .. },
            ..
        })
    ));

    // A message beyond the sender's bound is not sent.
    let small = Limits {
        max_message_len: 100_000,
    };
    let mut tight = Session::new(Role::Controller, &key(), small);
    let big = Message::ConfigPush(push(1, vec![7; 200_000]));
    let mut out = BytesMut::new();
    let mut g = Session::guest(&key());
    g.begin(NONCE, &hello(), &mut out).unwrap();
    open_all(&mut tight, &out);
    out.clear();
    tight.accept(&welcome(EPOCH), &mut out).unwrap();
    open_all(&mut g, &out);
    out.clear();
    assert!(matches!(
        tight.send(&big, &mut out),
        Err(Error::MessageTooLarge { .. })
    ));
    assert!(out.is_empty());

    // A message beyond the receiver's bound is dropped while it is reassembled, its remaining
    // chunks are skipped, and the next message arrives.
    let mut receiver = Session::new(Role::Controller, &key(), small);
    let mut w = BytesMut::new();
    let mut g = Session::guest(&key());
    g.begin(NONCE, &hello(), &mut w).unwrap();
    open_all(&mut receiver, &w);
    w.clear();
    receiver.accept(&welcome(EPOCH), &mut w).unwrap();
    open_all(&mut g, &w);
    let mut results = Vec::new();
    let wire = sealed(&mut g, &big);
    for f in frames(&wire) {
        assert!(f.as_bytes().len() <= MAX_FRAME);
        results.push(receiver.open(&f));
    }
    assert_eq!(
        results
            .iter()
            .filter(|r| matches!(r, Err(Error::MessageTooLarge { .. })))
            .count(),
        1
    );
    assert!(results
        .iter()
        .all(|r| matches!(r, Ok(None) | Err(Error::MessageTooLarge { .. }))));
    let next = sealed(&mut g, &samples()[5]);
    assert_eq!(open_all(&mut receiver, &next), vec![samples()[5].clone()]);
}

#[test]
fn truncated_input_needs_more_bytes() {
    let (mut guest, mut ctl) = pair();
    let wire = sealed(&mut guest, &Message::ConfigPush(push(3, vec![0xAB; 5000])));
    let mut d = FrameDecoder::new();
    let mut buf = BytesMut::new();
    for (i, b) in wire.iter().enumerate() {
        buf.extend_from_slice(&[*b]);
        let got = d.decode(&mut buf);
        if i + 1 < wire.len() {
            assert_eq!(got, None, "prefix of {} bytes", i + 1);
        } else {
            let Some(Decoded::Frame(f)) = got else {
                panic!("whole frame not decoded: {got:?}")
            };
            assert!(ctl.open(&f).unwrap().is_some());
        }
    }
}

#[test]
fn sixteen_mib_payload_is_chunked_and_reassembled() {
    let (mut guest, mut ctl) = pair();
    let payload: Vec<u8> = (0..16 * 1024 * 1024u32)
        .map(|i| (i * 31 % 251) as u8)
        .collect();
    let msg = Message::ConfigPush(push(1, payload));
    let wire = sealed(&mut ctl, &msg);
    let f = frames(&wire);
    assert!(f.len() > 500 && f.iter().all(|f| f.as_bytes().len() <= MAX_FRAME));
    let mut done = Vec::new();
    for fr in &f {
        if let Some(m) = guest.open(fr).unwrap() {
            done.push(m);
        }
    }
    assert_eq!(done, vec![msg]);
    // One byte more than the bound is refused by the sender.
    let too_big = Message::ConfigPush(push(1, vec![0; 16 * 1024 * 1024 + 1]));
    let mut out = BytesMut::new();
    assert!(matches!(
        ctl.send(&too_big, &mut out),
        Err(Error::Invalid { .. })
    ));
}

#[test]
fn a_missing_chunk_drops_its_message_only() {
    let (mut guest, mut ctl) = pair();
    let wire = sealed(
        &mut ctl,
        &Message::ConfigPush(push(1, vec![5; 3 * MAX_BODY])),
    );
    let f = frames(&wire);
    assert_eq!(f.len(), 4);
    assert_eq!(guest.open(&f[0]), Ok(None));
    assert_eq!(
        guest.open(&f[2]),
        Err(Error::ChunkGap {
            expected: f[1].header().seq,
            got: f[2].header().seq
        })
    );
    assert_eq!(
        guest.open(&f[3]),
        Err(Error::OrphanChunk(f[3].header().seq))
    );
    let next = sealed(&mut ctl, &samples()[5]);
    assert_eq!(open_all(&mut guest, &next), vec![samples()[5].clone()]);
}

#[test]
fn invalid_messages_are_not_sent() {
    let (mut guest, mut ctl) = pair();
    let mut out = BytesMut::new();
    assert!(matches!(
        ctl.send(&Message::ConfigPush(push(0, vec![])), &mut out),
        Err(Error::Invalid { .. })
    ));
    let long = Message::Error(relay_protocol::ErrorMsg {
        code: relay_protocol::ErrorCode::INTERNAL,
        message: "x".repeat(5000),
    });
    assert!(matches!(
        guest.send(&long, &mut out),
        Err(Error::Invalid { .. })
    ));
    assert!(out.is_empty());
}

#[test]
fn resync_marker_inside_a_payload_never_reaches_the_wire() {
    let (mut guest, mut ctl) = pair();
    let mut payload = vec![0u8; 40_000];
    for at in [0, 1000, MAX_BODY - 20, MAX_BODY - 3, 39_000] {
        payload[at..at + 16].copy_from_slice(&RESYNC_MARKER);
    }
    let msg = Message::ConfigPush(push(4, payload));
    let wire = sealed(&mut ctl, &msg);
    assert!(memchr_find(&wire, &RESYNC_MARKER).is_none());
    assert_eq!(open_all(&mut guest, &wire), vec![msg]);
}

fn memchr_find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[test]
fn stale_bytes_before_a_resync_are_skipped() {
    // The previous relay died mid-frame; the new one writes the marker, then frames follow.
    let (mut guest, mut ctl) = pair();
    let stale = sealed(&mut ctl, &Message::ConfigPush(push(5, vec![1; 20_000])));
    let fresh = sealed(&mut ctl, &samples()[5]);
    let mut stream = BytesMut::new();
    stream.extend_from_slice(&stale[..9_000]);
    stream.extend_from_slice(&RESYNC_MARKER);
    stream.extend_from_slice(&fresh);
    let mut d = FrameDecoder::new();
    let mut items = Vec::new();
    while let Some(i) = d.decode(&mut stream) {
        items.push(i);
    }
    assert!(matches!(
        items[0],
        Decoded::Discarded {
            bytes: 9000,
            reason: Error::Interrupted(9000)
        }
    ));
    assert_eq!(items[1], Decoded::Resync);
    let Decoded::Frame(f) = &items[2] else {
        panic!("{items:?}")
    };
    assert_eq!(guest.open(f).unwrap(), Some(samples()[5].clone()));
    assert_eq!(items.len(), 3);
}

#[test]
fn instance_keys_parse_from_hex_and_stay_redacted() {
    let k = relay_protocol::InstanceKey::from_hex(&format!("{}\n", "ab".repeat(32))).unwrap();
    assert_eq!(k.as_bytes(), &[0xAB; 32]);
    assert_eq!(k.to_hex(), "ab".repeat(32));
    assert_eq!(format!("{k:?}"), "InstanceKey(<redacted>)");
    assert!(matches!(
        relay_protocol::InstanceKey::from_hex("abcd"),
        Err(Error::KeyLength { .. })
    ));
    assert_eq!(
        relay_protocol::InstanceKey::from_hex(&"zz".repeat(32)),
        Err(Error::KeyEncoding)
    );
}
