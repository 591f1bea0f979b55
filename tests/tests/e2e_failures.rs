//! The relay path survives failures, on real components only: the `controller-stub` and
//! `relay-host` daemons as processes (SQLite, mutual TLS from `pki init`, the relay's TOML
//! configuration), VNF guests as TCG domains of the shared `libvirtd` running the static
//! `vnf-agent` (or, where a test needs a hostile guest, `guest-probe`), configuration set
//! through the controller's API. The harness is `e2e_tests::stack`.
//!
//! Proof of "applied once, in order" comes from the guests themselves: every configuration is
//! a `files` payload writing a marker (the version number it was set as) and running the
//! reload command `/opt/e2e/record`, which appends the marker to `applied.log` on the guest's
//! 9p share. The agent's state directory is on that share too, so it survives a reboot.
//!
//! Every test has its own controller, relay, relay host name and channel name (a relay picks
//! up only guests with its channel, so tests and other processes on the shared `libvirtd` do
//! not take each other's guests); guests boot in parallel. Everything is killed, destroyed and
//! undefined on drop, also when a test fails. The libvirtd restart test runs alone (a write
//! lock; the others hold a read lock), because it breaks every `virsh` call meanwhile.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use e2e_tests::libvirt::restart_libvirtd;
use e2e_tests::stack::{
    files_payload, random_key, unique_channel, Client, ControllerProc, GuestMode, RelayOptions,
    RelayProc, StackError, VnfGuest,
};
use relay_protocol::message::ErrorCode;
use serde_json::{json, Value};
use tokio::sync::RwLock;

/// A guest's boot under TCG takes about 6 s alone; several at once on a busy 2-core machine
/// take much longer.
const BOOT: Duration = Duration::from_secs(400);
/// Longest any other wait may take before the test fails.
const WAIT: Duration = Duration::from_secs(240);
const FILES: &str = "files";

/// Held for reading by every test, for writing by the one that restarts libvirtd.
static LIBVIRTD: RwLock<()> = RwLock::const_new(());

trait OrPanic<T> {
    fn or_panic(self, what: &str) -> T;
}

impl<T> OrPanic<T> for Result<T, StackError> {
    fn or_panic(self, what: &str) -> T {
        self.unwrap_or_else(|e| panic!("{what}: {e}"))
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.unwrap()
}

/// One controller and one relay (registered as `host`, on a channel of its own).
struct Stack {
    // Field order is drop order: the relay goes before the controller, both before the files.
    relay: RelayProc,
    ctl: ControllerProc,
    api: Client,
    channel: String,
    _dir: tempfile::TempDir,
}

impl Stack {
    async fn start(host: &'static str, tweak: fn(RelayOptions) -> RelayOptions) -> Stack {
        blocking(move || {
            let dir = tempfile::Builder::new()
                .prefix("sfc-e2e-stack-")
                .tempdir()
                .unwrap();
            let ctl = ControllerProc::start(&dir.path().join("controller"), &[host], &["logging"])
                .or_panic("starting the controller");
            let channel = unique_channel();
            let options = tweak(RelayOptions::new(host).channel(&channel));
            let relay = RelayProc::start_with(&dir.path().join("relay"), &ctl, &options)
                .or_panic("starting relay-host");
            let api = ctl.client().unwrap();
            Stack {
                relay,
                ctl,
                api,
                channel,
                _dir: dir,
            }
        })
        .await
    }

    /// Boots guests in parallel, registers their keys, and returns them in `modes`' order.
    async fn guests(&self, modes: &[GuestMode], prepare: fn(&Path)) -> Vec<VnfGuest> {
        let tasks: Vec<_> = modes
            .iter()
            .map(|&mode| {
                let channel = self.channel.clone();
                tokio::task::spawn_blocking(move || {
                    VnfGuest::boot(&channel, mode, |share| {
                        prepare(share);
                        Ok(())
                    })
                })
            })
            .collect();
        let mut guests = Vec::new();
        for t in tasks {
            guests.push(t.await.unwrap().or_panic("booting a guest"));
        }
        for g in &guests {
            self.api
                .set_key(g.instance, &g.key)
                .await
                .or_panic("registering a key");
        }
        guests
    }

    async fn set(&self, guest: &VnfGuest, marker: u64) -> u64 {
        let c = self
            .api
            .set_config(guest.instance, FILES, &files_payload(marker))
            .await
            .or_panic("setting a configuration");
        assert_eq!(
            c.version, marker,
            "markers are set in order, so each is its version"
        );
        c.version
    }

    async fn wait_applied(&self, guest: &VnfGuest, version: u64) {
        if let Err(e) = self
            .api
            .wait_applied(guest.instance, FILES, version, WAIT)
            .await
        {
            panic!(
                "{e}\napplied.log: {:?}\nconsole of {}:\n{}",
                guest.applied_log(),
                guest.domain.name(),
                guest.console()
            );
        }
    }

    async fn status(&self, guest: &VnfGuest) -> e2e_tests::stack::VnfConfig {
        self.api
            .config(guest.instance, FILES)
            .await
            .or_panic("reading a configuration")
    }

    fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.relay.metric(name, labels).or_panic("reading metrics")
    }
}

/// Polls `check` (a blocking look at files or processes) until it holds.
async fn until(what: &str, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < WAIT, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What the guest recorded applying must be strictly increasing (so nothing twice, nothing out
/// of order), start with `first` and end with `last`.
fn assert_applied_in_order(guest: &VnfGuest, first: u64, last: u64) -> Vec<u64> {
    let log = guest.applied_log();
    assert!(
        log.windows(2).all(|w| w[0] < w[1]),
        "{} applied out of order or twice: {log:?}",
        guest.domain.name()
    );
    assert_eq!(
        (log.first(), log.last()),
        (Some(&first), Some(&last)),
        "{}: {log:?}",
        guest.domain.name()
    );
    let state = guest.agent_state().expect("the agent's state file");
    assert_eq!(
        state["services"][FILES]["version"],
        json!(last),
        "the agent's own record: {state}"
    );
    log
}

/// A reload of one second: versions pushed meanwhile queue up behind the one being applied.
fn slow_reload(share: &Path) {
    fs::write(share.join("reload-delay"), "1").unwrap();
}

/// kill -9 of relay-host while versions 2..=4 are on their way to three guests (each guest
/// busy applying one, the others queued in the relay or the guest), versions 5..=7 set while it
/// is down: after the restart every guest applies 7, and what each recorded is increasing
/// (what it had received before the kill, then 7), never a version twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_killed_during_pushes_then_every_guest_converges_in_order() {
    let started = Instant::now();
    let _shared = LIBVIRTD.read().await;
    let mut stack = Stack::start("e2e-kill9", |o| o).await;
    let guests = stack.guests(&[GuestMode::Agent; 3], slow_reload).await;
    for g in &guests {
        stack.set(g, 1).await;
    }
    for g in &guests {
        stack.wait_applied(g, 1).await;
    }

    // Versions 2..=4 go out to all three back to back; the relay dies with them in flight.
    for v in 2..=4 {
        for g in &guests {
            stack.set(g, v).await;
        }
    }
    stack.relay.kill9();
    let mut in_flight = 0;
    for g in &guests {
        let c = stack.status(g).await;
        eprintln!(
            "at the kill: {} {} applied {:?}, log {:?}",
            g.domain.name(),
            c.status,
            c.applied_version,
            g.applied_log()
        );
        in_flight += usize::from(!c.is_applied(4));
    }
    assert!(
        in_flight > 0,
        "the relay must die while pushes are in flight"
    );
    // The desired state moves on while it is down.
    for v in 5..=7 {
        for g in &guests {
            stack.set(g, v).await;
        }
    }
    blocking_restart_relay(&mut stack).await;

    for g in &guests {
        stack.wait_applied(g, 7).await;
    }
    for g in &guests {
        let log = assert_applied_in_order(g, 1, 7);
        eprintln!("{} applied {log:?}", g.domain.name());
    }
    eprintln!("relay kill test took {:?}", started.elapsed());
}

async fn blocking_restart_relay(stack: &mut Stack) {
    let relay = &mut stack.relay;
    tokio::task::block_in_place(|| relay.start_again()).or_panic("restarting relay-host");
}

/// The controller is stopped with SIGTERM (it must exit 0), restarted on the same database
/// and ports: the relay reconnects by itself, the configurations' state is as before, a
/// configuration that was pending (its guest's agent started while the controller was down)
/// is delivered. Then SIGKILL right after two sets: both are delivered after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_restart_keeps_state_reconnects_relays_and_delivers_pending_configs() {
    let started = Instant::now();
    let _shared = LIBVIRTD.read().await;
    let mut stack = Stack::start("e2e-ctl", |o| o).await;
    let guests = stack
        .guests(&[GuestMode::Agent, GuestMode::AgentAfterGo], |_| {})
        .await;
    let (live, late) = (&guests[0], &guests[1]);
    stack.set(live, 1).await;
    stack.wait_applied(live, 1).await;
    // No agent runs in `late` yet: its configuration waits.
    stack.set(late, 1).await;
    assert_eq!(stack.status(late).await.status, "pending");
    let both = [live.instance.to_string(), late.instance.to_string()];
    stack
        .api
        .wait_host("e2e-ctl", "both guests registered", WAIT, |up, guests| {
            up && both.iter().all(|g| guests.contains(g))
        })
        .await
        .or_panic("the relay's guests");

    // SIGTERM; the agent of `late` starts while the controller is down.
    let ctl = &mut stack.ctl;
    let status = tokio::task::block_in_place(|| ctl.stop()).or_panic("stopping the controller");
    assert!(
        status.success(),
        "the controller's exit after SIGTERM: {status}"
    );
    {
        let relay = &stack.relay;
        until("the relay to see its uplink gone", || {
            relay.metric("relay_uplink_connected", &[]).ok() == Some(0.0)
        })
        .await;
    }
    late.go().unwrap();
    tokio::task::block_in_place(|| late.wait_agent(BOOT)).or_panic("the late agent");
    let ctl = &mut stack.ctl;
    tokio::task::block_in_place(|| ctl.start_again()).or_panic("starting the controller again");

    // The relay reconnects by itself; state is intact; the pending configuration is delivered.
    let relay = &mut stack.relay;
    tokio::task::block_in_place(|| relay.wait_uplink()).or_panic("the relay's reconnect");
    assert!(stack.metric("relay_uplink_reconnects_total", &[]) >= 1.0);
    stack
        .api
        .wait_host(
            "e2e-ctl",
            "both guests registered again",
            WAIT,
            |up, guests| up && both.iter().all(|g| guests.contains(g)),
        )
        .await
        .or_panic("the relay's guests after the restart");
    let c = stack.status(live).await;
    assert!(c.is_applied(1), "state after the restart: {:?}", c.raw);
    stack.wait_applied(late, 1).await;
    stack.set(live, 2).await;
    stack.wait_applied(live, 2).await;

    // SIGKILL right after a set: what was committed is delivered after the restart.
    stack.set(live, 3).await;
    stack.set(late, 2).await;
    stack.ctl.kill();
    let ctl = &mut stack.ctl;
    tokio::task::block_in_place(|| ctl.start_again()).or_panic("starting the controller again");
    stack.wait_applied(live, 3).await;
    stack.wait_applied(late, 2).await;
    assert_eq!(assert_applied_in_order(live, 1, 3), vec![1, 2, 3]);
    assert_eq!(assert_applied_in_order(late, 1, 2), vec![1, 2]);
    eprintln!("controller restart test took {:?}", started.elapsed());
}

/// Reboots (power off and on: same domain, key and disk) with the agent's state on the
/// guest's disk. First the Ack of version 2 is lost (relay killed during the apply, guest
/// off before the relay returns): after the reboot the agent's ConfigRequest reports version
/// 2 and the status becomes applied without a second apply. Then a power cut in the middle of
/// applying version 3: the agent reports 2, gets 3 again and applies it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebooted_guest_resynchronises_and_reports_what_it_applied() {
    let started = Instant::now();
    let _shared = LIBVIRTD.read().await;
    let mut stack = Stack::start("e2e-reboot", |o| o).await;
    let guests = stack.guests(&[GuestMode::Agent], |_| {}).await;
    let g = &guests[0];
    stack.set(g, 1).await;
    stack.wait_applied(g, 1).await;

    // The agent applies version 2 but its Ack is lost: the relay dies during the (slow)
    // reload, and the guest is powered off before the relay comes back.
    fs::write(g.share().join("reload-delay"), "3").unwrap();
    stack.set(g, 2).await;
    until("the agent to start applying version 2", || {
        fs::read_to_string(g.share().join("reloading")).is_ok_and(|v| v.trim() == "2")
    })
    .await;
    stack.relay.kill9();
    until("the agent to record version 2 as applied", || {
        g.agent_state()
            .is_some_and(|s| s["services"][FILES]["version"] == json!(2))
    })
    .await;
    let c = stack.status(g).await;
    assert_eq!(
        (c.status.as_str(), c.applied_version),
        ("delivered", Some(1)),
        "the Ack of version 2 must not have arrived: {:?}",
        c.raw
    );
    tokio::task::block_in_place(|| g.power_off()).or_panic("powering the guest off");
    fs::remove_file(g.share().join("reload-delay")).unwrap();
    blocking_restart_relay(&mut stack).await;
    tokio::task::block_in_place(|| g.power_on()).or_panic("powering the guest on");
    // After the reboot the agent's ConfigRequest lists version 2: applied without a push.
    stack.wait_applied(g, 2).await;
    assert_eq!(g.boots(), 2);
    assert_eq!(assert_applied_in_order(g, 1, 2), vec![1, 2]);

    // A power cut in the middle of applying version 3 (with the relay up): after the reboot
    // the agent reports version 2, gets version 3 again and applies it once. (`virsh reset`
    // would end these domains: they are defined with `on_reboot` = destroy.)
    fs::write(g.share().join("reload-delay"), "3").unwrap();
    stack.set(g, 3).await;
    until("the agent to start applying version 3", || {
        fs::read_to_string(g.share().join("reloading")).is_ok_and(|v| v.trim() == "3")
    })
    .await;
    fs::remove_file(g.share().join("reload-delay")).unwrap();
    tokio::task::block_in_place(|| g.reboot()).or_panic("rebooting the guest");
    stack.wait_applied(g, 3).await;
    assert_eq!(g.boots(), 3);
    assert_eq!(assert_applied_in_order(g, 1, 3), vec![1, 2, 3]);
    eprintln!("reboot test took {:?}", started.elapsed());
}

/// libvirtd restarts under a running relay (periodic reconcile off): the relay reconnects,
/// a guest started afterwards is found and configured, the first guest keeps working, and a
/// guest that stops is reported gone (events work again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_libvirtd_restart_the_relay_follows_events_and_finds_new_guests() {
    let started = Instant::now();
    let _alone = LIBVIRTD.write().await;
    // No periodic reconcile during the test: only events (and the reconcile after the relay's
    // reconnect to libvirtd) can tell it about guests.
    let stack = Stack::start("e2e-libvirtd", |o| o.reconcile_interval_secs(3600)).await;
    let first = stack.guests(&[GuestMode::Agent], |_| {}).await;
    stack.set(&first[0], 1).await;
    stack.wait_applied(&first[0], 1).await;

    tokio::task::block_in_place(restart_libvirtd)
        .unwrap_or_else(|e| panic!("restarting libvirtd: {e}"));
    until("the relay to connect to libvirtd again", || {
        stack.relay.log().matches("connected to libvirt").count() >= 2
    })
    .await;

    // A guest started afterwards is found and configured; the first one still is.
    let second = stack.guests(&[GuestMode::Agent], |_| {}).await;
    stack.set(&second[0], 1).await;
    stack.wait_applied(&second[0], 1).await;
    stack.set(&first[0], 2).await;
    stack.wait_applied(&first[0], 2).await;
    let ids = [
        first[0].instance.to_string(),
        second[0].instance.to_string(),
    ];
    stack
        .api
        .wait_host("e2e-libvirtd", "both guests", WAIT, |up, guests| {
            up && ids.iter().all(|g| guests.contains(g))
        })
        .await
        .or_panic("the relay's guests");
    // A guest that stops is reported down through the events.
    let s = &second[0];
    tokio::task::block_in_place(|| s.power_off()).or_panic("powering the guest off");
    let gone = ids[1].clone();
    stack
        .api
        .wait_host(
            "e2e-libvirtd",
            "the stopped guest gone",
            WAIT,
            |up, guests| up && !guests.contains(&gone) && guests.contains(&ids[0]),
        )
        .await
        .or_panic("the relay's guests after a stop");
    assert_applied_in_order(&first[0], 1, 2);
    assert_applied_in_order(&second[0], 1, 1);
    eprintln!("libvirtd restart test took {:?}", started.elapsed());
}

/// A guest writes rounds of random bytes and Hellos sealed with a random key and with another
/// instance's key until told to stop, then replays one of its own frames. The relay drops
/// and counts the garbage and the replay, the controller refuses every forged Hello (counted
/// by the relay as auth failures), the other guest's pushes go on meanwhile with nothing of
/// its own dropped, and the attacker's own agent, started afterwards, gets its configuration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_forged_frames_are_dropped_counted_and_harm_no_one() {
    let started = Instant::now();
    let _shared = LIBVIRTD.read().await;
    let stack = Stack::start("e2e-attack", |o| o).await;
    let victim_key = random_key().unwrap();
    let foreign = victim_key.to_hex();
    let channel = stack.channel.clone();
    let (victim, attacker) = tokio::join!(
        blocking({
            let channel = channel.clone();
            move || VnfGuest::boot_with_key(&channel, GuestMode::Agent, victim_key, |_| Ok(()))
        }),
        blocking(move || {
            VnfGuest::boot(&channel, GuestMode::Attack, |share| {
                fs::write(share.join("foreign-key"), &foreign)
                    .map_err(|e| StackError::Unexpected(format!("writing the foreign key: {e}")))
            })
        })
    );
    let (victim, attacker) = (
        victim.or_panic("booting the victim"),
        attacker.or_panic("booting the attacker"),
    );
    for g in [&victim, &attacker] {
        stack.api.set_key(g.instance, &g.key).await.unwrap();
    }
    stack.set(&victim, 1).await;
    stack.wait_applied(&victim, 1).await;
    stack.set(&attacker, 1).await;

    // The attack starts; the victim keeps getting new versions meanwhile.
    attacker.go().unwrap();
    let probe_log = attacker.share().join("probe.log");
    let attack_over = || {
        fs::read_to_string(&probe_log)
            .is_ok_and(|t| t.contains(r#""event":"done""#) || t.contains(r#""event":"failed""#))
    };
    until("the attack to start", || {
        fs::read_to_string(&probe_log).is_ok_and(|t| t.contains(r#""event":"attacking""#))
    })
    .await;
    for v in 2..=4 {
        stack.set(&victim, v).await;
        stack.wait_applied(&victim, v).await;
    }
    assert!(!attack_over(), "the attack lasts until it is told to stop");
    fs::write(attacker.share().join("stop"), "stop").unwrap();
    until("the attack to end", attack_over).await;
    let v = 4;
    let probe = fs::read_to_string(&probe_log).unwrap();
    eprintln!("probe log:\n{probe}");
    for what in ["garbage", "hello-wrong-key", "hello-foreign-key", "replay"] {
        assert!(
            probe.contains(&format!(r#""what":"{what}""#)),
            "the probe did not write {what}"
        );
    }
    assert!(probe.contains(r#""event":"done""#), "{probe}");

    // The attacker's own agent starts after the attack: its session works.
    stack.wait_applied(&attacker, 1).await;
    stack.set(&attacker, 2).await;
    stack.wait_applied(&attacker, 2).await;

    let a = attacker.instance.to_string();
    let b = victim.instance.to_string();
    let metrics = stack.relay.metrics().unwrap();
    let m = |name: &str, labels: &[(&str, &str)]| {
        e2e_tests::stack::metric_value(&metrics, name, labels).unwrap_or(0.0)
    };
    let garbage = m(
        "relay_frames_dropped_total",
        &[("instance", &a), ("reason", "garbage")],
    );
    let discarded = m("relay_guest_discarded_bytes_total", &[("instance", &a)]);
    let replays = m(
        "relay_frames_dropped_total",
        &[("instance", &a), ("reason", "replay")],
    );
    let auth = m("relay_guest_auth_failures_total", &[("instance", &a)]);
    let rounds = probe
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .find(|e| e["event"] == "rounds")
        .and_then(|e| e["rounds"].as_u64())
        .expect("the probe's round count") as f64;
    eprintln!(
        "attacker: {rounds} rounds; garbage runs {garbage}, discarded bytes {discarded}, \
         replays {replays}, auth failures {auth}"
    );
    // Every garbage byte, the replay and every forged Hello (two a round) are counted.
    assert!(garbage >= rounds, "garbage runs counted:\n{metrics}");
    assert_eq!(
        discarded,
        4096.0 * rounds,
        "garbage bytes counted:\n{metrics}"
    );
    assert_eq!(replays, 1.0, "the replay counted:\n{metrics}");
    assert_eq!(auth, 2.0 * rounds, "the forged Hellos refused:\n{metrics}");
    for reason in ["garbage", "replay", "rate_limited"] {
        assert_eq!(
            m(
                "relay_frames_dropped_total",
                &[("instance", &b), ("reason", reason)]
            ),
            0.0,
            "the victim lost nothing ({reason}):\n{metrics}"
        );
    }
    assert_eq!(
        m("relay_guest_auth_failures_total", &[("instance", &b)]),
        0.0
    );
    assert_applied_in_order(&victim, 1, v);
    assert_eq!(victim.applied_log().len() as u64, v, "every version once");
    assert_applied_in_order(&attacker, 1, 2);
    eprintln!(
        "attack test took {:?} ({v} versions to the victim meanwhile)",
        started.elapsed()
    );
}

/// A guest opens a session with another instance's key (no answer opens with it), then an
/// honest one in which it claims to hold the other instance's configuration and acks it: it
/// only ever receives its own instance's configuration, the Ack is refused with
/// `not-permitted`, and the other instance's status does not move. (The protocol's Hello
/// names no instance: the relay stamps the one libvirt knows, and the key proves it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_gets_and_answers_for_its_own_instance_only() {
    let started = Instant::now();
    let _shared = LIBVIRTD.read().await;
    let stack = Stack::start("e2e-isolation", |o| o).await;
    let other_key = random_key().unwrap();
    let other_hex = other_key.to_hex();
    let channel = stack.channel.clone();
    let (other, prober) = tokio::join!(
        blocking({
            let channel = channel.clone();
            move || {
                VnfGuest::boot_with_key(&channel, GuestMode::AgentAfterGo, other_key, |_| Ok(()))
            }
        }),
        blocking(move || {
            VnfGuest::boot(&channel, GuestMode::Isolation, |share| {
                fs::write(share.join("foreign-key"), &other_hex)
                    .map_err(|e| StackError::Unexpected(format!("writing the foreign key: {e}")))
            })
        })
    );
    let (other, prober) = (
        other.or_panic("booting the other guest"),
        prober.or_panic("booting the probe"),
    );
    for g in [&other, &prober] {
        stack.api.set_key(g.instance, &g.key).await.unwrap();
    }
    // Markers 11 and 22 tell the two configurations apart in what the probe receives.
    let mine = stack
        .api
        .set_config(prober.instance, FILES, &files_payload(11))
        .await
        .unwrap();
    let theirs = stack
        .api
        .set_config(other.instance, FILES, &files_payload(22))
        .await
        .unwrap();
    fs::write(
        prober.share().join("foreign.json"),
        json!({
            "instance": other.instance.to_string(),
            "service": FILES,
            "config_id": theirs.config_id,
            "version": theirs.version,
        })
        .to_string(),
    )
    .unwrap();
    prober.go().unwrap();
    let probe_log = prober.share().join("probe.log");
    until("the probe to finish", || {
        fs::read_to_string(&probe_log)
            .is_ok_and(|t| t.contains(r#""event":"done""#) || t.contains(r#""event":"failed""#))
    })
    .await;
    let text = fs::read_to_string(&probe_log).unwrap();
    eprintln!("probe log:\n{text}");
    let events: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let of = |kind: &str| -> Vec<&Value> { events.iter().filter(|e| e["event"] == kind).collect() };
    assert_eq!(of("done").len(), 1, "the probe finished: {text}");
    // The impostor's Hello (the other instance's key) opened nothing.
    assert!(of("impostor-received").is_empty(), "{text}");
    assert_eq!(of("welcome").len(), 1, "{text}");
    // Only its own configuration came, though it claimed to hold the other's.
    let pushes = of("push");
    assert!(!pushes.is_empty(), "{text}");
    let own_payload = files_payload(11).to_string();
    for p in &pushes {
        assert_eq!(p["instance"], json!(prober.instance.to_string()), "{text}");
        assert_eq!(p["config_id"], json!(mine.config_id), "{text}");
        assert_eq!(
            serde_json::from_str::<Value>(p["payload"].as_str().unwrap()).unwrap(),
            serde_json::from_str::<Value>(&own_payload).unwrap()
        );
        assert!(!p["payload"].as_str().unwrap().contains("22"), "{text}");
    }
    // Its Ack naming the other instance was refused...
    let errors = of("error");
    assert_eq!(errors.len(), 1, "{text}");
    assert_eq!(
        errors[0]["code"],
        json!(ErrorCode::NOT_PERMITTED.0),
        "{text}"
    );
    // ...and changed nothing.
    let c = stack.status(&other).await;
    assert_eq!(
        (c.status.as_str(), c.applied_version),
        ("pending", None),
        "{:?}",
        c.raw
    );
    let auth = stack.metric(
        "relay_guest_auth_failures_total",
        &[("instance", &prober.instance.to_string())],
    );
    assert!(auth >= 1.0, "the impostor's Hello was refused ({auth})");

    // The other instance gets its own configuration, once its agent runs.
    other.go().unwrap();
    stack.wait_applied(&other, 1).await;
    assert_eq!(other.applied_log(), vec![22]);
    assert!(prober.applied_log().is_empty());
    eprintln!("isolation test took {:?}", started.elapsed());
}
