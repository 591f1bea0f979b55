//! The relay's acceptance benchmark (issue 4), baseline and relay in the same run:
//!
//! (a) round-trip latency controller -> relay -> guest -> controller over the real mutual-TLS
//!     uplink and a real UNIX socket, against a baseline of the same sealed frames over the same
//!     kinds of sockets through a byte-copying forwarder (TLS in, UNIX out, no framing or
//!     routing); rounds of the two alternate so both see the same conditions;
//! (b) one configuration pushed to 1000 guests on one relay, first write to last Ack;
//! (c) the relay process's resident memory with 0 and with 1000 idle guests.
//!
//! `cargo bench -p relay-host --features testing --bench relay` (`make bench-relay`). The relay
//! and the forwarder are child processes (see `common/mod.rs`).

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{guard, ms, percentile, us, ChildProc, Ctl, Result, Tls};
use relay_host::testing::push;
use relay_protocol::{AckOutcome, Message, Ping, Uuid};
use tokio::net::TcpListener;

/// Round trips before measuring, per path.
const WARMUP: usize = 2000;
/// Measured round trips per path and message kind: `ROUNDS` alternating rounds of `PER_ROUND`.
const ROUNDS: usize = 50;
const PER_ROUND: usize = 100;
/// Guests of the fan-out and memory measurements.
const GUESTS: usize = 1000;
const FANOUT_ROUNDS: u64 = 10;
const PAYLOAD: usize = 1024;

fn main() {
    if common::child_main() {
        return;
    }
    let result = common::runtime().and_then(|rt| {
        // Measured on a worker thread, where the I/O driver runs, not on the blocked main
        // thread.
        rt.block_on(async { tokio::spawn(bench()).await? })
    });
    if let Err(e) = result {
        eprintln!("bench relay: {e}");
        std::process::exit(1);
    }
}

async fn bench() -> Result<()> {
    let tls = Tls::new()?;
    println!(
        "relay benchmark: {} cores",
        std::thread::available_parallelism()?
    );
    latency(&tls).await?;
    fanout_and_memory(&tls).await?;
    Ok(())
}

/// A round trip of `kind` to `instance`, from sealing the request to opening the answer.
async fn round_trip(ctl: &mut Ctl, instance: Uuid, kind: Kind, n: u64) -> Result<Duration> {
    let msg = match kind {
        Kind::Ping => Message::Ping(Ping { nonce: n }),
        Kind::Push => push(instance, "firewall", n, vec![0x5a; PAYLOAD])?,
    };
    let start = Instant::now();
    ctl.queue(instance, &msg)?;
    ctl.flush().await?;
    loop {
        match ctl.recv().await? {
            (_, Message::Pong(p)) if p.nonce == n => break,
            (_, Message::Ack(a)) if a.version == n && a.outcome == AckOutcome::Applied => break,
            _ => {}
        }
    }
    Ok(start.elapsed())
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Ping,
    Push,
}

async fn latency(tls: &Tls) -> Result<()> {
    let sockets = tempfile::tempdir()?;
    let mut guests = common::spawn_guests(sockets.path(), 0..2)?;
    let (relay_guest, _relay_agent) = guests.remove(0);
    let (base_guest, _base_agent) = guests.remove(0);

    // The relay: per-guest rate limit raised, since a ping-pong loop sends far more than the
    // default 200 frames/s from one guest.
    let relay_listener = TcpListener::bind("127.0.0.1:0").await?;
    let mut relay = ChildProc::relay(&tls.files, relay_listener.local_addr()?, 1_000_000)?;
    let keys = HashMap::from([(relay_guest.uuid, common::guest_id(0).1)]);
    let mut via_relay = Ctl::accept_relay(&relay_listener, &tls.acceptor, keys, 60_000).await?;
    relay.up(std::slice::from_ref(&relay_guest))?;
    via_relay.wait_hellos(1).await?;

    let base_listener = TcpListener::bind("127.0.0.1:0").await?;
    let _forwarder =
        ChildProc::forwarder(&tls.files, base_listener.local_addr()?, &base_guest.socket)?;
    let mut baseline = Ctl::accept_raw(
        &base_listener,
        &tls.acceptor,
        base_guest.uuid,
        common::guest_id(1).1,
    )
    .await?;
    baseline.wait_hellos(1).await?;

    println!();
    println!(
        "(a) round trip controller -> guest -> controller, {} samples per cell",
        ROUNDS * PER_ROUND
    );
    println!();
    println!("| exchange | baseline p50 | baseline p99 | relay p50 | relay p99 | added at p50 |");
    println!("|---|---:|---:|---:|---:|---:|");
    let mut n = 0u64;
    for kind in [Kind::Ping, Kind::Push] {
        let mut base = Vec::with_capacity(ROUNDS * PER_ROUND);
        let mut relayed = Vec::with_capacity(ROUNDS * PER_ROUND);
        for _ in 0..WARMUP {
            n += 1;
            round_trip(&mut baseline, base_guest.uuid, kind, n).await?;
            round_trip(&mut via_relay, relay_guest.uuid, kind, n).await?;
        }
        for _ in 0..ROUNDS {
            for _ in 0..PER_ROUND {
                n += 1;
                base.push(
                    guard(
                        "a round trip",
                        round_trip(&mut baseline, base_guest.uuid, kind, n),
                    )
                    .await??,
                );
            }
            for _ in 0..PER_ROUND {
                n += 1;
                relayed.push(
                    guard(
                        "a round trip",
                        round_trip(&mut via_relay, relay_guest.uuid, kind, n),
                    )
                    .await??,
                );
            }
        }
        base.sort_unstable();
        relayed.sort_unstable();
        let (b50, r50) = (percentile(&base, 0.5), percentile(&relayed, 0.5));
        let label = match kind {
            Kind::Ping => "Ping -> Pong".to_string(),
            Kind::Push => format!("ConfigPush {PAYLOAD} B -> Ack"),
        };
        println!(
            "| {label} | {} | {} | {} | {} | {} |",
            us(b50),
            us(percentile(&base, 0.99)),
            us(r50),
            us(percentile(&relayed, 0.99)),
            us(r50.saturating_sub(b50)),
        );
    }
    Ok(())
}

async fn fanout_and_memory(tls: &Tls) -> Result<()> {
    let sockets = tempfile::tempdir()?;
    let guests = common::spawn_guests(sockets.path(), 0..GUESTS)?;
    let channels: Vec<_> = guests.iter().map(|(c, _)| c.clone()).collect();
    let keys: HashMap<_, _> = (0..GUESTS).map(common::guest_id).collect();

    // Default limits, as deployed.
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let mut relay = ChildProc::relay(&tls.files, listener.local_addr()?, 200)?;
    let mut ctl = Ctl::accept_relay(&listener, &tls.acceptor, keys, 60_000).await?;
    ctl.pump_for(Duration::from_secs(1)).await?;
    let rss0 = relay.rss()?;

    let start = Instant::now();
    relay.up(&channels)?;
    ctl.wait_hellos(GUESTS).await?;
    let established = start.elapsed();
    // The agents' ConfigRequests, then quiet.
    ctl.pump_for(Duration::from_secs(2)).await?;
    let rss_idle = relay.rss()?;

    let mut times = Vec::new();
    for version in 1..=FANOUT_ROUNDS {
        for c in &channels {
            ctl.queue(
                c.uuid,
                &push(c.uuid, "firewall", version, vec![0xa5; PAYLOAD])?,
            )?;
        }
        // Sealed before the clock starts: what is timed is the relay's part.
        let out = ctl.take_out();
        let start = Instant::now();
        ctl.write(&out).await?;
        let mut acked: HashMap<Uuid, u64> = HashMap::new();
        guard("the Acks", async {
            while acked.len() < GUESTS {
                if let (instance, Message::Ack(a)) = ctl.recv().await? {
                    if a.version != version || a.outcome != AckOutcome::Applied {
                        return Err(format!("unexpected ack {a:?}").into());
                    }
                    if acked.insert(instance, a.version).is_some() {
                        return Err(format!("guest {instance} acked twice").into());
                    }
                }
            }
            Result::Ok(())
        })
        .await??;
        times.push(start.elapsed());
        ctl.pump_for(Duration::from_millis(200)).await?;
    }
    ctl.pump_for(Duration::from_secs(1)).await?;
    let rss_after = relay.rss()?;
    times.sort_unstable();

    println!();
    println!(
        "(b) one {PAYLOAD}-byte ConfigPush to each of {GUESTS} guests, first write to last Ack, {FANOUT_ROUNDS} rounds \
         ({GUESTS} sessions established in {})",
        ms(established)
    );
    println!();
    println!("| guests | min | median | max |");
    println!("|---:|---:|---:|---:|");
    println!(
        "| {GUESTS} | {} | {} | {} |",
        ms(times[0]),
        ms(percentile(&times, 0.5)),
        ms(times[times.len() - 1])
    );
    println!();
    println!("(c) relay process resident memory (VmRSS)");
    println!();
    println!("| 0 guests | {GUESTS} idle guests | per guest | {GUESTS} guests after {FANOUT_ROUNDS} pushes each | per guest |");
    println!("|---:|---:|---:|---:|---:|");
    let per = |rss: u64| (rss as f64 - rss0 as f64) / GUESTS as f64 / 1024.0;
    println!(
        "| {} | {} | {:.1} KiB | {} | {:.1} KiB |",
        common::mib(rss0),
        common::mib(rss_idle),
        per(rss_idle),
        common::mib(rss_after),
        per(rss_after)
    );
    drop(relay);
    drop(guests);
    Ok(())
}
