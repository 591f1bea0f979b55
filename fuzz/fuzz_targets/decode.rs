//! Fuzzes the whole receive path: arbitrary bytes, fed in arbitrary read sizes, through the
//! frame decoder and into guest and controller sessions, both fresh and established, so frames
//! reach the MAC check, replay checks, reassembly and body decoding. Inputs that start with a
//! valid handshake get past the MAC; the seed corpus holds such inputs.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use relay_protocol::{
    Decoded, FrameDecoder, Hello, InstanceKey, Limits, Role, Session, Welcome,
};

fn established() -> (Session, Session) {
    let key = InstanceKey::from_bytes(&[0x42; 32]).expect("32 bytes");
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
    let mut wire = BytesMut::new();
    guest.begin(1, &hello, &mut wire).expect("hello");
    feed(&mut ctl, &wire, 1 << 20);
    let mut wire = BytesMut::new();
    let welcome = Welcome {
        protocol: 1,
        capabilities: 0,
        session_epoch: 2,
        max_message_len: 1 << 20,
        heartbeat_interval_ms: 0,
    };
    ctl.accept(&welcome, &mut wire).expect("welcome");
    feed(&mut guest, &wire, 1 << 20);
    (guest, ctl)
}

fn feed(s: &mut Session, bytes: &[u8], read: usize) {
    let mut d = FrameDecoder::new();
    let mut buf = BytesMut::new();
    for chunk in bytes.chunks(read.max(1)) {
        buf.extend_from_slice(chunk);
        while let Some(item) = d.decode(&mut buf) {
            if let Decoded::Frame(f) = item {
                assert!(f.as_bytes().len() <= relay_protocol::MAX_FRAME);
                let _ = s.open(&f);
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&read, bytes)) = data.split_first() else { return };
    let read = usize::from(read) * 7 + 1;
    let key = InstanceKey::from_bytes(&[0x42; 32]).expect("32 bytes");
    for role in [Role::Guest, Role::Controller] {
        let mut fresh = Session::new(role, &key, Limits { max_message_len: 1 << 20 });
        feed(&mut fresh, bytes, read);
    }
    let (mut guest, mut ctl) = established();
    feed(&mut guest, bytes, read);
    feed(&mut ctl, bytes, read);
});
