//! The session both the `decode` target and the seed corpus generator use: the seeds are only
//! useful if they are sealed in exactly the session the target establishes.

use bytes::BytesMut;
use relay_protocol::{Decoded, FrameDecoder, Hello, InstanceKey, Session, Welcome};

/// Largest message the fuzzed sessions reassemble.
pub const MAX_MESSAGE: usize = 1 << 20;

pub fn key() -> InstanceKey {
    InstanceKey::from_bytes(&[0x42; 32]).expect("32 bytes")
}

/// A guest and a controller session after the handshake (nonce 1, session epoch 2), and the
/// Hello and Welcome bytes that established them.
pub struct Established {
    pub guest: Session,
    pub controller: Session,
    pub hello_wire: BytesMut,
    pub welcome_wire: BytesMut,
}

pub fn established() -> Established {
    let key = key();
    let mut guest = Session::guest(&key);
    let mut controller = Session::controller(&key);
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
    feed(&mut controller, &hello_wire, MAX_MESSAGE);
    let welcome = Welcome {
        protocol: 1,
        capabilities: 0,
        session_epoch: 2,
        max_message_len: MAX_MESSAGE as u32,
        heartbeat_interval_ms: 0,
    };
    let mut welcome_wire = BytesMut::new();
    controller
        .accept(&welcome, &mut welcome_wire)
        .expect("welcome");
    feed(&mut guest, &welcome_wire, MAX_MESSAGE);
    Established {
        guest,
        controller,
        hello_wire,
        welcome_wire,
    }
}

/// Feeds `bytes` to `s` in reads of `read` bytes, opening every frame and ignoring the outcome.
pub fn feed(s: &mut Session, bytes: &[u8], read: usize) {
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
