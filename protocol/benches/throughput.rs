//! Protocol throughput against the raw cost of HMAC-SHA256 over the same bytes, measured side by
//! side in one run: `cargo bench -p relay-protocol` prints the table recorded in BENCHMARKS.md.
//!
//! For a frame of N bytes on the wire, the baseline is HMAC-SHA256 over its N - 32 authenticated
//! bytes (header and body) with the same crate. The sender's path (encode + MAC: postcard
//! encoding of a ConfigPush, chunking, header, CRC, tag, marker check) and the receiver's path
//! (decode + verify: marker scan, header checks, tag check, postcard decoding, validation) each
//! do one such HMAC; a round trip does two, so it is compared with two raw HMACs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use hmac::{Hmac, Mac};
use relay_protocol::{
    ConfigPush, Decoded, FrameDecoder, Hello, InstanceKey, Message, ServiceName, Session, Uuid,
    Welcome, MAX_FRAME,
};
use sha2::Sha256;

const ROUNDS: usize = 7;
const ROUND_TIME: Duration = Duration::from_millis(300);

fn key() -> InstanceKey {
    InstanceKey::from_bytes(&[0x5a; 32]).unwrap()
}

fn pair() -> (Session, Session) {
    let mut guest = Session::guest(&key());
    let mut ctl = Session::controller(&key());
    let hello = Hello {
        protocol_min: 1,
        protocol_max: 1,
        capabilities: 0,
        agent_name: "bench".into(),
        agent_version: "0".into(),
        services: vec![],
    };
    let mut wire = BytesMut::new();
    guest.begin(1, &hello, &mut wire).unwrap();
    open_all(&mut ctl, &mut wire);
    ctl.accept(
        &Welcome {
            protocol: 1,
            capabilities: 0,
            session_epoch: 2,
            max_message_len: 1 << 24,
            heartbeat_interval_ms: 0,
        },
        &mut wire,
    )
    .unwrap();
    open_all(&mut guest, &mut wire);
    (guest, ctl)
}

fn open_all(s: &mut Session, wire: &mut BytesMut) -> usize {
    let mut d = FrameDecoder::new();
    let mut n = 0;
    while let Some(item) = d.decode(wire) {
        if let Decoded::Frame(f) = item {
            if s.open(&f).unwrap().is_some() {
                n += 1;
            }
        }
    }
    n
}

fn push(payload_len: usize) -> Message {
    Message::ConfigPush(ConfigPush {
        instance: Uuid::from_u128(1),
        service: ServiceName::new("firewall").unwrap(),
        config_id: Uuid::from_u128(2),
        version: 1,
        payload: (0..payload_len).map(|i| (i % 251) as u8).collect(),
    })
}

/// The ConfigPush whose single frame is exactly `frame_len` bytes on the wire.
fn message_for(frame_len: usize) -> Message {
    let (_, mut ctl) = pair();
    let mut out = BytesMut::new();
    for payload in (0..frame_len).rev() {
        out.clear();
        let msg = push(payload);
        ctl.send(&msg, &mut out).unwrap();
        if out.len() == frame_len {
            return msg;
        }
    }
    panic!("no payload gives a {frame_len}-byte frame");
}

/// Runs `f` (which processes `bytes_per_call` bytes) for ROUND_TIME; returns bytes per second.
fn rate(bytes_per_call: usize, mut f: impl FnMut()) -> f64 {
    let start = Instant::now();
    let mut calls = 0u64;
    while start.elapsed() < ROUND_TIME {
        for _ in 0..16 {
            f();
        }
        calls += 16;
    }
    (calls as f64 * bytes_per_call as f64) / start.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

struct Row {
    frame: usize,
    hmac: f64,
    seal: f64,
    open: f64,
    round_trip: f64,
}

fn measure(frame_len: usize) -> Row {
    let msg = message_for(frame_len);
    let signed_len = frame_len - 32;
    let data: Vec<u8> = (0..signed_len).map(|i| i as u8).collect();
    let raw_key = Hmac::<Sha256>::new_from_slice(&[0x5a; 32]).unwrap();

    // Frames to open, prepared once per round: opening consumes sequence numbers.
    let batch = (64 * 1024 * 1024 / frame_len).max(64);
    let (mut hmac, mut seal, mut open, mut rt) = (vec![], vec![], vec![], vec![]);
    for _ in 0..ROUNDS {
        // Interleaved rounds so that drift in clock speed hits every column alike.
        hmac.push(rate(signed_len, || {
            let mut m = raw_key.clone();
            m.update(black_box(&data));
            black_box(m.finalize().into_bytes());
        }));

        let (_, mut ctl) = pair();
        let mut out = BytesMut::with_capacity(2 * MAX_FRAME);
        seal.push(rate(frame_len, || {
            out.clear();
            ctl.send(black_box(&msg), &mut out).unwrap();
            black_box(&out);
        }));

        let (mut guest, mut ctl) = pair();
        let mut wire = BytesMut::with_capacity(batch * frame_len);
        for _ in 0..batch {
            ctl.send(&msg, &mut wire).unwrap();
        }
        let mut d = FrameDecoder::new();
        let start = Instant::now();
        let mut n = 0usize;
        while let Some(Decoded::Frame(f)) = d.decode(&mut wire) {
            black_box(guest.open(&f).unwrap().unwrap());
            n += 1;
        }
        open.push((n * frame_len) as f64 / start.elapsed().as_secs_f64());

        let (mut guest, mut ctl) = pair();
        let mut d = FrameDecoder::new();
        let mut wire = BytesMut::with_capacity(2 * MAX_FRAME);
        rt.push(rate(frame_len, || {
            ctl.send(black_box(&msg), &mut wire).unwrap();
            let Some(Decoded::Frame(f)) = d.decode(&mut wire) else {
                unreachable!()
            };
            black_box(guest.open(&f).unwrap().unwrap());
        }));
    }
    Row {
        frame: frame_len,
        hmac: median(hmac),
        seal: median(seal),
        open: median(open),
        round_trip: median(rt),
    }
}

fn main() {
    // `cargo test --benches` runs bench targets with `--bench`-less arguments; measure only
    // when cargo bench asked for it.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let mb = |r: f64| r / 1e6;
    println!(
        "{:>8} | {:>14} | {:>20} | {:>20} | {:>20} | {:>14}",
        "frame",
        "raw HMAC MB/s",
        "encode+MAC MB/s",
        "decode+verify MB/s",
        "round trip MB/s",
        "raw 2xHMAC MB/s"
    );
    println!("{}", "-".repeat(112));
    for frame in [1024, MAX_FRAME] {
        let r = measure(frame);
        let two = r.hmac / 2.0;
        println!(
            "{:>8} | {:>14.0} | {:>12.0} ({:>4.0}%) | {:>12.0} ({:>4.0}%) | {:>12.0} ({:>4.0}%) | {:>14.0}",
            r.frame,
            mb(r.hmac),
            mb(r.seal),
            100.0 * r.seal / r.hmac,
            mb(r.open),
            100.0 * r.open / r.hmac,
            mb(r.round_trip),
            100.0 * r.round_trip / two,
            mb(two),
        );
    }
    println!(
        "\nPercentages: encode+MAC and decode+verify against one raw HMAC over the same bytes; \
         the round trip (two HMACs) against two."
    );
}
