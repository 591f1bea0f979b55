//! Golden byte vectors: the exact bytes of one frame of every message kind, sealed with a fixed
//! key, nonce and epoch. They pin the wire format: a change that alters them breaks deployed
//! peers and needs a new protocol version, not new vectors. `UPDATE_GOLDEN=1 cargo test` rewrites
//! them on purpose.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;

use bytes::BytesMut;
use common::*;
use relay_protocol::{Kind, Message, Session};

fn check(name: &str, bytes: &[u8]) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{name}.hex"));
    let hex: String = hex::encode(bytes)
        .as_bytes()
        .chunks(64)
        .map(|l| format!("{}\n", std::str::from_utf8(l).unwrap()))
        .collect();
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &hex).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 writes it)", path.display()));
    assert_eq!(hex, want, "wire bytes of {name} changed");
}

fn from_golden(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(format!("{name}.hex"));
    let text = std::fs::read_to_string(path).unwrap();
    hex::decode(text.split_whitespace().collect::<String>()).unwrap()
}

#[test]
fn every_kind_has_pinned_bytes() {
    let mut guest = Session::guest(&key());
    let mut ctl = Session::controller(&key());

    let mut wire = BytesMut::new();
    guest.begin(NONCE, &hello(), &mut wire).unwrap();
    check("hello", &wire);
    open_all(&mut ctl, &wire);

    let mut wire = BytesMut::new();
    ctl.accept(&welcome(EPOCH), &mut wire).unwrap();
    check("welcome", &wire);
    open_all(&mut guest, &wire);

    let mut seen = vec![Kind::Hello, Kind::Welcome];
    for (i, msg) in samples().iter().enumerate() {
        let mut wire = BytesMut::new();
        ctl.send(msg, &mut wire).unwrap();
        check(&format!("{i}-{}", msg.kind()), &wire);
        seen.push(msg.kind());
    }
    for k in Kind::ALL {
        assert!(seen.contains(&k), "no golden vector for {k}");
    }
}

#[test]
fn pinned_bytes_decode_to_their_messages() {
    let mut guest = Session::guest(&key());
    let mut ctl = Session::controller(&key());
    let mut sink = BytesMut::new();
    guest.begin(NONCE, &hello(), &mut sink).unwrap();
    assert_eq!(
        open_all(&mut ctl, &from_golden("hello")),
        vec![Message::Hello(hello())]
    );
    ctl.accept(&welcome(EPOCH), &mut sink).unwrap();
    assert_eq!(
        open_all(&mut guest, &from_golden("welcome")),
        vec![Message::Welcome(welcome(EPOCH))]
    );
    for (i, msg) in samples().into_iter().enumerate() {
        let name = format!("{i}-{}", msg.kind());
        assert_eq!(
            open_all(&mut guest, &from_golden(&name)),
            vec![msg],
            "{name}"
        );
    }
}
