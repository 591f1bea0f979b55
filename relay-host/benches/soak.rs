//! Soak run of the relay (issue 4): 1000 guests on one relay, every guest pushed a new version
//! of its configuration every second for 60 s while the guests ack each one. Checks that every
//! version is acked exactly once and in order (nothing lost, duplicated or reordered) and
//! samples the relay process's resident memory every 5 s.
//!
//! `cargo bench -p relay-host --features testing --bench soak` (`make bench-soak`);
//! `SOAK_SECS` and `SOAK_GUESTS` change the duration and the number of guests.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{mib, ms, ChildProc, Ctl, Result, Tls};
use relay_host::testing::push;
use relay_protocol::{AckOutcome, Message, Uuid};
use tokio::net::TcpListener;
use tokio::time::{Instant, MissedTickBehavior};

const PAYLOAD: usize = 1024;
/// How long the last round may take to be acked completely.
const DRAIN: Duration = Duration::from_secs(10);

fn main() {
    if common::child_main() {
        return;
    }
    let result =
        common::runtime().and_then(|rt| rt.block_on(async { tokio::spawn(soak()).await? }));
    match result {
        Ok(true) => {}
        Ok(false) => {
            eprintln!("soak: FAILED");
            std::process::exit(1);
        }
        Err(e) => {
            eprintln!("soak: {e}");
            std::process::exit(1);
        }
    }
}

fn env_or(name: &str, default: u64) -> Result<u64> {
    match std::env::var(name) {
        Ok(v) => Ok(v.parse()?),
        Err(_) => Ok(default),
    }
}

/// Per guest: the last version acked, and the faults seen.
#[derive(Debug, Default)]
struct Tally {
    acks: u64,
    duplicates: u64,
    out_of_order: u64,
    rejected: u64,
}

async fn soak() -> Result<bool> {
    let secs = env_or("SOAK_SECS", 60)?;
    let n = usize::try_from(env_or("SOAK_GUESTS", 1000)?)?;
    let tls = Tls::new()?;
    let sockets = tempfile::tempdir()?;
    let guests = common::spawn_guests(sockets.path(), 0..n)?;
    let channels: Vec<_> = guests.iter().map(|(c, _)| c.clone()).collect();
    let keys: HashMap<_, _> = (0..n).map(common::guest_id).collect();

    // Default limits, as deployed; heartbeats every 5 s so that they run during the soak.
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let mut relay = ChildProc::relay(&tls.files, listener.local_addr()?, 200)?;
    let mut ctl = Ctl::accept_relay(&listener, &tls.acceptor, keys, 5_000).await?;
    relay.up(&channels)?;
    ctl.wait_hellos(n).await?;
    ctl.pump_for(Duration::from_secs(1)).await?;

    println!("soak: {n} guests, one {PAYLOAD}-byte push per guest per second for {secs} s");
    let mut last: HashMap<Uuid, u64> = channels.iter().map(|c| (c.uuid, 0)).collect();
    let mut tally = Tally::default();
    let mut rss = vec![(0u64, relay.rss()?)];
    // Per round: when it was written and when its last Ack arrived.
    let mut sent_at: Vec<Instant> = Vec::new();
    let mut done_in: Vec<Duration> = Vec::new();
    let mut acked_in_round: HashMap<u64, usize> = HashMap::new();

    let start = Instant::now();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut sample =
        tokio::time::interval_at(start + Duration::from_secs(5), Duration::from_secs(5));
    let mut version = 0u64;
    let mut drain_until: Option<Instant> = None;
    loop {
        if drain_until.is_some() && done_in.len() as u64 == secs {
            break;
        }
        let deadline = drain_until.unwrap_or(start + Duration::from_secs(secs + 3600));
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => break,
            _ = tick.tick(), if drain_until.is_none() => {
                version += 1;
                for c in &channels {
                    ctl.queue(c.uuid, &push(c.uuid, "firewall", version, vec![0xa5; PAYLOAD])?)?;
                }
                sent_at.push(Instant::now());
                ctl.flush().await?;
                if version == secs {
                    drain_until = Some(Instant::now() + DRAIN);
                }
            }
            _ = sample.tick() => {
                let t = start.elapsed().as_secs();
                let r = relay.rss()?;
                println!("  t={t:>3} s  relay RSS {}", mib(r));
                rss.push((t, r));
            }
            got = ctl.next() => match got? {
                Some((instance, Message::Ack(a))) => {
                    tally.acks += 1;
                    if a.outcome != AckOutcome::Applied {
                        tally.rejected += 1;
                    }
                    let prev = last.get_mut(&instance).ok_or("ack from an unknown guest")?;
                    if a.version <= *prev {
                        tally.duplicates += 1;
                    } else {
                        if a.version != *prev + 1 {
                            tally.out_of_order += 1;
                        }
                        *prev = a.version;
                    }
                    let count = acked_in_round.entry(a.version).or_default();
                    *count += 1;
                    if *count == n {
                        let sent = sent_at.get(a.version as usize - 1).ok_or("ack before push")?;
                        done_in.push(sent.elapsed());
                    }
                }
                Some(_) => {}
                None => ctl.flush().await?,
            },
        }
    }
    let elapsed = start.elapsed();
    rss.push((elapsed.as_secs(), relay.rss()?));

    let expected = secs * n as u64;
    let complete = last.values().filter(|v| **v == secs).count();
    let lost = expected.saturating_sub(tally.acks - tally.duplicates);
    done_in.sort_unstable();
    let first = rss[0].1;
    let final_rss = rss[rss.len() - 1].1;
    let max = rss.iter().map(|(_, r)| *r).max().unwrap_or(0);

    println!();
    println!("| guests | duration | pushes | acks | lost | duplicated | out of order | round p50 | round max | RSS first | RSS last | RSS max |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    println!(
        "| {n} | {:.1} s | {expected} | {} | {lost} | {} | {} | {} | {} | {} | {} | {} |",
        elapsed.as_secs_f64(),
        tally.acks,
        tally.duplicates,
        tally.out_of_order,
        ms(common::percentile(&done_in, 0.5)),
        ms(done_in.last().copied().unwrap_or_default()),
        mib(first),
        mib(final_rss),
        mib(max),
    );
    println!("(round: from writing one version to all guests to the last of their Acks; {} of {secs} rounds complete, {complete} of {n} guests at the final version)", done_in.len());
    let ok = lost == 0
        && tally.duplicates == 0
        && tally.out_of_order == 0
        && tally.rejected == 0
        && complete == n;
    println!("soak: {}", if ok { "PASS" } else { "FAIL" });
    drop(relay);
    drop(guests);
    Ok(ok)
}
