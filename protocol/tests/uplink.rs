//! The relay <-> controller envelopes: round trip, bounds, truncation, golden bytes.
#![allow(clippy::unwrap_used)]

use bytes::BytesMut;
use relay_protocol::flow::{
    Action, Bucket, ChainFlows, ChainState, ChainStatus, FlowSpec, GroupKind, GroupSpec, HashField,
    IpNet, Mac, Match, PortMask, PortRef, Selection, MAX_SYNC_COOKIES,
};
use relay_protocol::uplink::{
    self, ControllerMsg, GuestInfo, Register, Registered, RelayMsg, MAX_ENVELOPE, PREAMBLE,
};
use relay_protocol::{Error, Uuid, MAX_FRAME};

const INSTANCE: Uuid = Uuid::from_u128(0x0102_0304_0506_4708_890a_0b0c_0d0e_0f10);

fn relay_samples() -> Vec<RelayMsg> {
    vec![
        RelayMsg::Register(Register {
            version: 1,
            host: "compute-1".into(),
            relay_version: "0.1.0".into(),
            guests: vec![GuestInfo {
                instance: INSTANCE,
                name: "vnf-1".into(),
            }],
        }),
        RelayMsg::GuestUp(GuestInfo {
            instance: INSTANCE,
            name: "vnf-1".into(),
        }),
        RelayMsg::GuestDown { instance: INSTANCE },
        RelayMsg::FromGuest {
            instance: INSTANCE,
            frame: vec![1, 2, 3],
        },
        RelayMsg::GuestReopened { instance: INSTANCE },
        RelayMsg::Ping { nonce: 5 },
        RelayMsg::Pong { nonce: 5 },
        RelayMsg::ChainStatus(ChainStatus {
            cookie: 1,
            version: 2,
            state: ChainState::Pending {
                missing: vec![PortRef::Neutron(INSTANCE)],
            },
        }),
    ]
}

const MAC: Mac = Mac([0x12, 0x34, 0x56, 0x78, 0xcf, 0x23]);

/// A networking-sfc source hop: classifier, select group, MPLS push.
fn chain_flows() -> ChainFlows {
    ChainFlows {
        cookie: 1,
        version: 2,
        part: 0,
        parts: 1,
        groups: vec![GroupSpec {
            group: 1,
            kind: GroupKind::Select,
            selection: Selection::Hash(vec![HashField::IpSrc, HashField::TcpDst]),
            buckets: vec![Bucket {
                weight: 1,
                actions: vec![Action::SetEthDst(MAC), Action::Resubmit { table: 5 }],
            }],
        }],
        flows: vec![
            FlowSpec {
                table: 0,
                priority: 30,
                matches: vec![
                    Match::InPort(PortRef::Neutron(INSTANCE)),
                    Match::EthType(0x0800),
                    Match::IpProto(6),
                    Match::IpSrc(IpNet::new([10, 0, 0, 0].into(), 24)),
                    Match::TpDst(PortMask {
                        value: 0x64,
                        mask: 0xfffc,
                    }),
                ],
                actions: vec![Action::Group(1)],
            },
            FlowSpec {
                table: 5,
                priority: 0,
                matches: vec![Match::EthType(0x0800), Match::EthDst(MAC)],
                actions: vec![
                    Action::PushMpls { ethertype: 0x8847 },
                    Action::SetMplsLabel(511),
                    Action::SetMplsTtl(255),
                    Action::Output(PortRef::Named("patch-tun".into())),
                ],
            },
        ],
    }
}

fn controller_samples() -> Vec<ControllerMsg> {
    vec![
        ControllerMsg::Registered(Registered {
            version: 1,
            heartbeat_interval_ms: 10_000,
        }),
        ControllerMsg::ToGuest {
            instance: INSTANCE,
            frame: vec![9; 4],
        },
        ControllerMsg::FrameRejected {
            instance: INSTANCE,
            reason: "bad MAC".into(),
        },
        ControllerMsg::ResyncGuest { instance: INSTANCE },
        ControllerMsg::Ping { nonce: 6 },
        ControllerMsg::Pong { nonce: 6 },
        ControllerMsg::ChainFlows(chain_flows()),
        ControllerMsg::ChainRemoved { cookie: 1 },
        ControllerMsg::FlowSync {
            cookies: vec![1, 2],
        },
    ]
}

#[test]
fn every_message_round_trips_in_any_split() {
    let mut wire = BytesMut::new();
    for m in relay_samples() {
        uplink::encode(&m, &mut wire).unwrap();
    }
    let all = wire.clone();
    for split in [1, 3, 7, all.len()] {
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for chunk in all.chunks(split) {
            buf.extend_from_slice(chunk);
            while let Some(m) = uplink::decode::<RelayMsg>(&mut buf).unwrap() {
                got.push(m);
            }
        }
        assert_eq!(got, relay_samples());
    }
    let mut wire = BytesMut::new();
    for m in controller_samples() {
        uplink::encode(&m, &mut wire).unwrap();
    }
    let mut got = Vec::new();
    while let Some(m) = uplink::decode::<ControllerMsg>(&mut wire).unwrap() {
        got.push(m);
    }
    assert_eq!(got, controller_samples());
}

#[test]
fn a_full_frame_fits_and_an_oversized_envelope_is_refused() {
    let mut wire = BytesMut::new();
    let full = RelayMsg::FromGuest {
        instance: INSTANCE,
        frame: vec![0; MAX_FRAME],
    };
    uplink::encode(&full, &mut wire).unwrap();
    assert_eq!(uplink::decode::<RelayMsg>(&mut wire).unwrap(), Some(full));

    let big = RelayMsg::FromGuest {
        instance: INSTANCE,
        frame: vec![0; MAX_ENVELOPE],
    };
    assert!(matches!(
        uplink::encode(&big, &mut wire),
        Err(Error::MessageTooLarge { .. })
    ));
    assert!(wire.is_empty());
    // A length prefix beyond the bound is refused before the body is awaited or allocated.
    let mut buf = BytesMut::from(&((MAX_ENVELOPE + 1) as u32).to_be_bytes()[..]);
    assert!(matches!(
        uplink::decode::<RelayMsg>(&mut buf),
        Err(Error::MessageTooLarge { .. })
    ));
}

#[test]
fn truncated_input_needs_more_and_garbage_is_an_error() {
    let mut wire = BytesMut::new();
    uplink::encode(&relay_samples()[0], &mut wire).unwrap();
    for n in 0..wire.len() {
        let mut part = BytesMut::from(&wire[..n]);
        assert_eq!(
            uplink::decode::<RelayMsg>(&mut part).unwrap(),
            None,
            "prefix {n}"
        );
    }
    let mut junk = BytesMut::from(&[0, 0, 0, 3, 0xff, 0xff, 0xff][..]);
    assert!(matches!(
        uplink::decode::<RelayMsg>(&mut junk),
        Err(Error::Envelope(_))
    ));
}

#[test]
fn preamble_is_checked() {
    let mut buf = BytesMut::from(&PREAMBLE[..2]);
    assert_eq!(uplink::check_preamble(&mut buf), Ok(false));
    buf.extend_from_slice(&PREAMBLE[2..]);
    assert_eq!(uplink::check_preamble(&mut buf), Ok(true));
    assert!(buf.is_empty());
    let mut bad = BytesMut::from(&b"GET / HTTP/1.1"[..]);
    assert_eq!(uplink::check_preamble(&mut bad), Err(Error::Garbage));
}

#[test]
fn golden_bytes() {
    let mut wire = BytesMut::new();
    uplink::encode(&relay_samples()[0], &mut wire).unwrap();
    uplink::encode(&relay_samples()[3], &mut wire).unwrap();
    uplink::encode(&controller_samples()[2], &mut wire).unwrap();
    // Register: length 42, variant 0, version 1, "compute-1", "0.1.0", one guest (UUID as 16
    // bytes, "vnf-1"); FromGuest: variant 3, UUID, 3 frame bytes; FrameRejected: variant 2.
    assert_eq!(
        hex::encode(&wire),
        concat!(
            "0000002a000109636f6d707574652d3105302e312e300110",
            "0102030405064708890a0b0c0d0e0f1005766e662d31",
            "0000001603100102030405064708890a0b0c0d0e0f1003010203",
            "0000001a02100102030405064708890a0b0c0d0e0f1007626164204d4143",
        )
    );
}

#[test]
fn golden_bytes_of_the_flow_messages() {
    let mut wire = BytesMut::new();
    uplink::encode(&controller_samples()[6], &mut wire).unwrap();
    uplink::encode(&controller_samples()[7], &mut wire).unwrap();
    uplink::encode(&controller_samples()[8], &mut wire).unwrap();
    uplink::encode(&relay_samples()[7], &mut wire).unwrap();
    // ChainFlows: variant 6, cookie 1, version 2, part 0 of 1, one select group (number 1,
    // kind 0, Hash over IpSrc and TcpDst, one bucket of weight 1: SetEthDst, Resubmit 5), two
    // flows (table 0 priority 30 with five matches and Group 1; table 5 priority 0 with
    // push_mpls 0x8847, label 511, TTL 255, output to "patch-tun"). ChainRemoved: variant 7.
    // FlowSync: variant 8, two cookies. ChainStatus: relay variant 7, Pending with one port.
    assert_eq!(
        hex::encode(&wire),
        concat!(
            "000000660601020001010100010202080101020c12345678",
            "cf23020502001e050000100102030405064708890a0b0c0d",
            "0e0f10038010050606000a000000180964fcff0301010105",
            "00020380100212345678cf230406c7900208ff0309ff0001",
            "0970617463682d74756e",
            "000000020701",
            "0000000408020102",
            "00000017070102010100100102030405064708890a0b0c0d",
            "0e0f10",
        ),
    );
}

#[test]
fn a_full_flow_sync_fits_one_envelope() {
    let mut wire = BytesMut::new();
    let sync = ControllerMsg::FlowSync {
        cookies: vec![relay_protocol::flow::MAX_COOKIE; MAX_SYNC_COOKIES],
    };
    uplink::encode(&sync, &mut wire).unwrap();
    assert_eq!(
        uplink::decode::<ControllerMsg>(&mut wire).unwrap(),
        Some(sync)
    );
}

proptest::proptest! {
    /// Whatever follows the ChainFlows tag, decoding and every check on the result (part
    /// checks, reassembly, rule validation, port listing, splitting) never panic.
    #[test]
    fn arbitrary_chain_flows_bodies_never_panic(body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400)) {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&((body.len() + 1) as u32).to_be_bytes());
        buf.extend_from_slice(&[6]);
        buf.extend_from_slice(&body);
        if let Ok(Some(ControllerMsg::ChainFlows(part))) = uplink::decode::<ControllerMsg>(&mut buf) {
            let mut asm = relay_protocol::flow::Assembler::default();
            if let Ok(Some(rules)) = asm.push(part) {
                if rules.validate().is_ok() {
                    let _ = rules.ports();
                    let _ = rules.into_parts();
                }
            }
        }
    }
}
