//! Configuration latency on a real QEMU guest (issue 8): from the VNF-config API call
//! (`PUT /v2.0/vnf/instances/{id}/configs/files`) to the agent's Ack recorded by the
//! controller, against the baseline of the same bytes echoed by a trivial guest program over
//! the same virtio-serial port of the same guest, in the same run.
//!
//! The stack is the one an operator runs (`e2e_tests::stack`): `controller-stub serve` on a
//! SQLite file, `relay-host` discovering the guest through the shared `libvirtd` and attaching
//! to the channel's host socket, a TCG guest (libvirt domain) with the instance key in its
//! SMBIOS OEM strings. The guest runs `bench-guest` (`src/bin/bench-guest.rs`), which hands the
//! relay channel's port, as told over a second virtio-serial port, either to a plain echo loop
//! or to the static `vnf-agent`. Rounds alternate, so both paths see the same conditions:
//!
//! - echo round: relay-host is stopped, the guest echoes on the channel port, and the bench,
//!   connected straight to the channel's host socket, writes a sealed ConfigPush frame (the
//!   size of the ones the controller sends, sealed with the instance key like theirs) and times
//!   until all its bytes are back;
//! - push round: the guest runs `vnf-agent` on the port, relay-host is started and attaches,
//!   and the bench times `PUT .../configs/files` until the controller's database shows that
//!   version `applied` (the Ack recorded). The `files` handler writes one small file below the
//!   agent's root (a tmpfs), no reload command. The database is read with the controller's own
//!   query (`store::get_config`) on a connection of the bench's (WAL: it never waits for the
//!   writer and writes nothing), right after every change of the database files (inotify on
//!   the controller's directory) and at least every 5 ms, so the status is seen within a query
//!   time of its commit.
//!
//! Every exchange of both paths starts `GAP_MS` (10 ms) after the previous one ended: between
//! real pushes the guest idles while the host does its part, and a TCG guest woken from idle
//! answers later than a busy one. Each echo round then also times as many back-to-back round
//! trips, for reference. `ROUNDS` (3) push rounds of `PER_ROUND` (100) pushes, each preceded by
//! an echo round, and one more echo round at the end; every round starts with warm-up
//! exchanges that are not counted.
//!
//! Where the time goes: the controller's own log lines ("configuration pushed" once the push
//! is sealed, "applied" once the Ack is opened; wall clock, microseconds) split every push into
//! three stages; and after the last push round a direct round times the agent alone: the bench
//! takes the controller's and the relay's place on the channel socket (answers the Hello,
//! seals pushes with the instance key) and times each push from writing the frame to opening
//! the Ack.
//!
//! Environment: `CONFIG_BENCH_ROUNDS`, `CONFIG_BENCH_PER_ROUND` and `CONFIG_BENCH_GAP_MS`
//! change the counts and the pacing; `CONFIG_BENCH_LOGS=DIR` keeps the daemons' logs and the
//! guest's console; `CONFIG_BENCH_AGENT=PATH` puts another static agent build into the guest.
//! The daemons and the agent are otherwise the harness's (debug) builds.
//!
//! `cargo bench -p e2e-tests --bench config_latency` (`make bench-config`); root, like the
//! libvirt tests. It exits non-zero on errors only, never because of the figures.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::mem::MaybeUninit;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::BytesMut;
use controller_stub::db::Db;
use controller_stub::relay::store::{self, Status};
use e2e_tests::guest_image::{GuestImage, GuestImageBuilder};
use e2e_tests::libvirt::{LibvirtGuest, TestDomain};
use e2e_tests::stack::{
    binaries, random_key, unique_channel, Client, ControllerProc, RelayOptions, RelayProc,
};
use relay_protocol::message::capability;
use relay_protocol::{
    AckOutcome, ConfigPush, Decoded, FrameDecoder, Hello, InstanceKey, Kind, Message, Pong,
    ServiceName, Session, Uuid, Welcome, RESYNC_MARKER,
};
use rustix::fs::inotify;
use serde_json::{json, Value};
use tokio::sync::Notify;

type Error = Box<dyn std::error::Error + Send + Sync>;
type Result<T, E = Error> = std::result::Result<T, E>;

/// The relay host name (a certificate of `pki init`).
const HOST: &str = "bench-config";
const SERVICE: &str = "files";
/// The file every push writes (below the agent's root, `/run/vnf/root`).
const BENCH_FILE: &str = "/etc/app/bench";
const RUN: &str = "/opt/bench/run";
/// The guest program: `bench-guest` with the agent's command line.
const RUN_SCRIPT: &str = r#"#!/bin/sh
mkdir -p /run/vnf/root/etc/app /run/vnf/state
exec /bin/bench-guest "$1" "$2" /bin/vnf-agent --port "$1" --root /run/vnf/root \
    --state-dir /run/vnf/state --files-allow-dir /etc/app --log warn
"#;
const READY_MARKER: &str = "bench-guest: waiting for commands";

const ROUNDS: usize = 3;
const PER_ROUND: usize = 100;
/// Exchanges before each round's measured ones. The first pushes of a round also wait for the
/// agent's session through the freshly started relay.
const ECHO_WARMUP: usize = 30;
const PUSH_WARMUP: usize = 10;
/// Idle time before every exchange of every path: the guest idles between real pushes while
/// the host does its part, and a TCG guest woken from idle answers later than a busy one.
const GAP_MS: usize = 10;
/// A TCG boot on a busy two-core machine.
const BOOT: Duration = Duration::from_secs(400);
/// Longest any one exchange or command may take before the run fails.
const WAIT: Duration = Duration::from_secs(180);
/// The database is read at least this often while waiting, even without a change event.
const DB_RECHECK: Duration = Duration::from_millis(5);

fn main() -> ExitCode {
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Error::from)
        .and_then(|rt| rt.block_on(bench()));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench config_latency: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The number in environment variable `name`, at least `min`; `default` if it is not set.
fn env_number(name: &str, default: usize, min: usize) -> Result<usize> {
    match std::env::var(name) {
        Ok(v) => match v.parse() {
            Ok(n) if n >= min => Ok(n),
            _ => Err(format!("{name}={v:?} is not a number of at least {min}").into()),
        },
        Err(_) => Ok(default),
    }
}

/// Everything the run started; field order is drop order (the control connection, whose end
/// stops the guest program, then relay, guest, controller, files), which also holds when the
/// run fails or panics.
struct Rig {
    control: Control,
    relay: Option<RelayProc>,
    guest: TestDomain,
    ctl: ControllerProc,
    channel: String,
    /// The channel's host socket (QEMU listens; the relay or the echo client connects).
    socket: PathBuf,
    instance: Uuid,
    key: InstanceKey,
    dir: tempfile::TempDir,
}

async fn bench() -> Result<()> {
    let rounds = env_number("CONFIG_BENCH_ROUNDS", ROUNDS, 1)?;
    let per_round = env_number("CONFIG_BENCH_PER_ROUND", PER_ROUND, 1)?;
    let started = Instant::now();
    let mut rig = Rig::start()?;
    let result = measure(&mut rig, rounds, per_round, started).await;
    if result.is_err() {
        rig.show_logs();
    }
    if let Some(dir) = std::env::var_os("CONFIG_BENCH_LOGS") {
        rig.save_logs(Path::new(&dir))?;
    }
    result
}

async fn measure(rig: &mut Rig, rounds: usize, per_round: usize, started: Instant) -> Result<()> {
    let gap = Duration::from_millis(env_number("CONFIG_BENCH_GAP_MS", GAP_MS, 0)? as u64);
    println!(
        "config latency: guest {} ({}) booted and listening after {:.1} s; {} cores, load {}",
        rig.guest.name(),
        rig.instance,
        started.elapsed().as_secs_f64(),
        std::thread::available_parallelism()?,
        load_average()
    );
    let api = rig.ctl.client()?;
    api.set_key(rig.instance, &rig.key).await?;
    let db = Db::connect(&rig.ctl.db_url).await?;
    let watch = DbWatch::start(&rig.ctl.dir)?;
    let mut reads = Vec::new();

    let mut marker = 0u64;
    let mut last_version = 0u64;
    // The frame the baseline echoes: a ConfigPush of a payload of the same size the API
    // pushes, sealed with this instance's key, at a version of the same varint width.
    let reference_payload = serde_json::to_vec(&payload(0))?;
    let frame = sealed_push(&rig.key, rig.instance, 300, reference_payload.clone())?;
    println!(
        "payload {} bytes (files handler, one file, no reload), ConfigPush frame {} bytes; \
         {rounds} rounds of {per_round}, {} ms between exchanges",
        reference_payload.len(),
        frame.len(),
        gap.as_millis()
    );

    let (mut echo_paced, mut echo_hot) = (Vec::new(), Vec::new());
    let mut measured: Vec<Push> = Vec::new();
    let mut direct = Vec::new();
    let mut per_push_bytes = Vec::new();
    for round in 1..=rounds + 1 {
        let (paced, hot) = rig.echo_round(&frame, gap, ECHO_WARMUP, per_round)?;
        let (s, h) = (Stats::of(&paced), Stats::of(&hot));
        println!(
            "round {round}: echo  p50 {} p99 {} (back to back: p50 {} p99 {})",
            ms(s.p50),
            ms(s.p99),
            ms(h.p50),
            ms(h.p99)
        );
        echo_paced.extend(paced);
        echo_hot.extend(hot);
        if round > rounds {
            break;
        }

        rig.attach_agent()?;
        let mut pushes = Vec::new();
        let mut counted = None;
        for i in 0..PUSH_WARMUP + per_round {
            if i == PUSH_WARMUP {
                counted = Some(rig.relay_bytes()?);
            }
            tokio::time::sleep(gap).await;
            marker += 1;
            let p = push(&api, &db, &watch, rig.instance, marker, &mut reads).await?;
            last_version = p.version;
            if i >= PUSH_WARMUP {
                pushes.push(p);
            }
        }
        if let Some((to0, from0)) = counted {
            let (to1, from1) = rig.relay_bytes()?;
            per_push_bytes.push((
                (to1 - to0) / per_round as f64,
                (from1 - from0) / per_round as f64,
            ));
        }
        rig.detach_agent()?;
        let s = Stats::of(&pushes.iter().map(|p| p.total).collect::<Vec<_>>());
        println!("round {round}: push  p50 {} p99 {}", ms(s.p50), ms(s.p99));
        measured.extend(pushes);

        if round == rounds {
            // The agent's own share, without the daemons: after the API rounds, because it
            // uses versions above theirs (the agent keeps its applied versions).
            direct = rig.direct_round(last_version + 1, marker, gap, PUSH_WARMUP, per_round)?;
            let d = Stats::of(&direct);
            println!("direct: push  p50 {} p99 {}", ms(d.p50), ms(d.p99));
        }
    }

    let base = Stats::of(&echo_paced);
    let hot = Stats::of(&echo_hot);
    let ours = Stats::of(&measured.iter().map(|p| p.total).collect::<Vec<_>>());
    let put = Stats::of(&measured.iter().map(|p| p.put).collect::<Vec<_>>());
    let direct = Stats::of(&direct);
    println!();
    println!(
        "| path | samples | p50 | p99 | mean | min | max |\n|---|---:|---:|---:|---:|---:|---:|"
    );
    for (what, s) in [
        (
            format!(
                "baseline: {}-byte frame echoed by the guest, {} ms apart",
                frame.len(),
                gap.as_millis()
            ),
            &base,
        ),
        ("API PUT -> Ack recorded".to_owned(), &ours),
        ("(of which the PUT call)".to_owned(), &put),
        (
            "agent alone: push written -> Ack read, on the socket".to_owned(),
            &direct,
        ),
        ("echo back to back (no idle guest)".to_owned(), &hot),
    ] {
        println!(
            "| {what} | {} | {} | {} | {} | {} | {} |",
            s.n,
            ms(s.p50),
            ms(s.p99),
            ms(s.mean),
            ms(s.min),
            ms(s.max)
        );
    }
    println!();
    println!(
        "ratio against the baseline: p50 {:.1}x, p99 {:.1}x (goal: at most 2x) -> {}",
        ours.p50.as_secs_f64() / base.p50.as_secs_f64(),
        ours.p99.as_secs_f64() / base.p99.as_secs_f64(),
        if ours.p50 <= base.p50 * 2 && ours.p99 <= base.p99 * 2 {
            "met"
        } else {
            "NOT met"
        }
    );
    stages(&rig.ctl.log(), rig.instance, &measured);
    println!();
    for (i, (to, from)) in per_push_bytes.iter().enumerate() {
        println!(
            "push round {}: relay wrote {to:.1} bytes to the guest and read {from:.1} from it \
             per measured push",
            i + 1
        );
    }
    let read = Stats::of(&reads);
    println!(
        "database reads while waiting for the Ack: {}, p50 {}, max {}",
        read.n,
        ms(read.p50),
        ms(read.max)
    );
    println!(
        "total {:.0} s; load average now {}",
        started.elapsed().as_secs_f64(),
        load_average()
    );
    db.close().await;
    Ok(())
}

/// The `files` payload of push number `marker`: one file, same size for every marker.
fn payload(marker: u64) -> Value {
    json!({"files": [{"path": BENCH_FILE, "content": format!("{marker:010}\n")}]})
}

/// One measured push.
struct Push {
    version: u64,
    /// Wall-clock time of the call (to compare with the controller's log).
    wall: SystemTime,
    /// The PUT answered, from the start of the call.
    put: Duration,
    /// The Ack recorded, from the start of the call.
    total: Duration,
}

/// One push, timed until the database shows the version applied. `reads` gets the time of
/// every database read (the resolution of the observation).
async fn push(
    api: &Client,
    db: &Db,
    watch: &DbWatch,
    instance: Uuid,
    marker: u64,
    reads: &mut Vec<Duration>,
) -> Result<Push> {
    let id = instance.to_string();
    let wall = SystemTime::now();
    let start = Instant::now();
    let set = api.set_config(instance, SERVICE, &payload(marker)).await?;
    let put = start.elapsed();
    let version = i64::try_from(set.version)?;
    loop {
        // Taken before the read: a change during the read makes the wait below return at once.
        let changed = watch.changed.notified();
        let read = Instant::now();
        let mut conn = db.pool().acquire().await?;
        let row = store::get_config(&mut conn, &id, SERVICE)
            .await?
            .ok_or("the configuration vanished")?;
        drop(conn);
        let now = Instant::now();
        reads.push(now - read);
        let d = &row.delivery;
        if d.version == version && d.status == Status::Applied {
            return Ok(Push {
                version: set.version,
                wall,
                put,
                total: now - start,
            });
        }
        if d.version == version && d.status == Status::Failed {
            return Err(format!("version {version} failed: {:?}", d.message).into());
        }
        if start.elapsed() > WAIT {
            return Err(format!("version {version} not applied after {WAIT:?}: {d:?}").into());
        }
        tokio::select! {
            _ = changed => {}
            _ = tokio::time::sleep(DB_RECHECK) => {}
        }
    }
}

impl Rig {
    /// Builds the programs and the guest image, starts the controller and boots the guest,
    /// and connects to the guest's control port.
    fn start() -> Result<Rig> {
        let bins = binaries()?;
        let guest_program = e2e_tests::build::static_binary("e2e-tests", "bench-guest")?;
        // Another static agent build (e.g. a release one) to see what the build costs.
        let agent = std::env::var_os("CONFIG_BENCH_AGENT")
            .map(PathBuf::from)
            .unwrap_or_else(|| bins.vnf_agent.clone());
        let image: GuestImage = GuestImageBuilder::new()
            .file(&agent, "/bin/vnf-agent", 0o755)
            .file(&guest_program, "/bin/bench-guest", 0o755)
            .script(RUN, RUN_SCRIPT)
            .build()?;
        let dir = tempfile::Builder::new()
            .prefix("sfc-bench-config-")
            .tempdir()?;
        let ctl = ControllerProc::start(&dir.path().join("controller"), &[HOST], &["logging"])?;
        let channel = unique_channel();
        let control_name = format!("{channel}.control");
        let key = random_key()?;
        let guest = LibvirtGuest::new(&image)
            .run(RUN)
            .args([channel.as_str(), control_name.as_str()])
            .channel(&channel)
            .channel(&control_name)
            .oem_string(format!("org.opensfc.relay.key:{}", key.to_hex()))
            .define_and_start()?;
        guest.wait_for_console(READY_MARKER, BOOT)?;
        let xml = guest.live_xml()?;
        let socket = |name: &str| -> Result<PathBuf> {
            Ok(relay_host::libvirt::guest_channel(&xml, name)?
                .ok_or_else(|| format!("no channel {name} in the live XML of {}", guest.name()))?
                .socket)
        };
        let control = Control::connect(&socket(&control_name)?)?;
        let socket = socket(&channel)?;
        let instance = Uuid::parse_str(guest.uuid())?;
        Ok(Rig {
            control,
            relay: None,
            guest,
            ctl,
            channel,
            socket,
            instance,
            key,
            dir,
        })
    }

    /// An echo round: round trips of `frame` through the guest's echo, straight on the
    /// channel's host socket: `warmup`, then `n` each after `gap` of idling, then `n` back to
    /// back. Returns the times of the paced and of the back-to-back ones.
    fn echo_round(
        &mut self,
        frame: &[u8],
        gap: Duration,
        warmup: usize,
        n: usize,
    ) -> Result<(Vec<Duration>, Vec<Duration>)> {
        self.control.send("echo")?;
        self.control.expect("echo open")?;
        let mut stream = UnixStream::connect(&self.socket)?;
        stream.set_read_timeout(Some(WAIT))?;
        let mut back = vec![0u8; frame.len()];
        let (mut paced, mut hot) = (Vec::with_capacity(n), Vec::with_capacity(n));
        for i in 0..warmup + 2 * n {
            if i < warmup + n {
                std::thread::sleep(gap);
            }
            let start = Instant::now();
            stream.write_all(frame)?;
            stream.read_exact(&mut back)?;
            let took = start.elapsed();
            if back != frame {
                return Err("the guest echoed other bytes than it was sent".into());
            }
            if i >= warmup + n {
                hot.push(took);
            } else if i >= warmup {
                paced.push(took);
            }
        }
        drop(stream);
        let done = self.control.expect("echo done")?;
        let bytes = done.split_whitespace().last().and_then(|b| b.parse().ok());
        let sent = ((warmup + 2 * n) * frame.len()) as u64;
        if bytes != Some(sent) {
            return Err(format!("the guest reported {done:?}, {sent} bytes were sent").into());
        }
        Ok((paced, hot))
    }

    /// A direct round: the agent runs in the guest, and the bench takes the controller's and
    /// the relay's place on the channel's host socket (answers the Hello, seals pushes with
    /// the instance key), so neither daemon is involved: `warmup` + `n` pushes of versions
    /// from `first_version` on, each timed from writing the frame to opening its Ack. Returns
    /// the last `n` times.
    fn direct_round(
        &mut self,
        first_version: u64,
        mut marker: u64,
        gap: Duration,
        warmup: usize,
        n: usize,
    ) -> Result<Vec<Duration>> {
        self.control.send("agent")?;
        self.control.expect("agent started")?;
        let mut peer = DirectPeer::connect(&self.socket, &self.key)?;
        let mut samples = Vec::with_capacity(n);
        for (i, version) in (first_version..).take(warmup + n).enumerate() {
            std::thread::sleep(gap);
            marker += 1;
            let push = Message::ConfigPush(ConfigPush {
                instance: self.instance,
                service: ServiceName::new(SERVICE)?,
                config_id: Uuid::from_u128(
                    0x5fc0_be0c_d1ec_4000_8000_0000_0000_0000 | u128::from(version),
                ),
                version,
                payload: serde_json::to_vec(&payload(marker))?,
            });
            let start = Instant::now();
            peer.push(&push, version)?;
            if i >= warmup {
                samples.push(start.elapsed());
            }
        }
        drop(peer);
        self.control.send("stop")?;
        self.control.expect("agent stopped")?;
        Ok(samples)
    }

    /// Starts the agent in the guest, then relay-host (which attaches to the channel).
    fn attach_agent(&mut self) -> Result<()> {
        self.control.send("agent")?;
        self.control.expect("agent started")?;
        match &mut self.relay {
            Some(relay) => relay.start_again()?,
            None => {
                let options = RelayOptions::new(HOST).channel(&self.channel);
                let relay =
                    RelayProc::start_with(&self.dir.path().join("relay"), &self.ctl, &options)?;
                self.relay = Some(relay);
            }
        }
        Ok(())
    }

    /// Stops relay-host (freeing the channel's host socket), then the agent.
    fn detach_agent(&mut self) -> Result<()> {
        if let Some(relay) = &mut self.relay {
            relay.stop()?;
        }
        self.control.send("stop")?;
        self.control.expect("agent stopped")?;
        Ok(())
    }

    /// The ends of the daemons' logs and of the guest's console, for a failed run.
    fn show_logs(&self) {
        let tail = |text: &str| {
            let lines: Vec<&str> = text.lines().collect();
            lines[lines.len().saturating_sub(40)..].join("\n")
        };
        eprintln!("[controller log]\n{}", tail(&self.ctl.log()));
        if let Some(relay) = &self.relay {
            eprintln!("[relay-host log]\n{}", tail(&relay.log()));
        }
        eprintln!(
            "[console of {}]\n{}",
            self.guest.name(),
            tail(&self.guest.console_output())
        );
    }

    /// Copies the daemons' logs and the guest's console into `dir` (`CONFIG_BENCH_LOGS`, for
    /// a closer look at where the time goes, e.g. with `SFC_E2E_LOG=info,sqlx::query=debug`).
    fn save_logs(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("controller.log"), self.ctl.log())?;
        if let Some(relay) = &self.relay {
            std::fs::write(dir.join("relay-host.log"), relay.log())?;
        }
        std::fs::write(dir.join("console.log"), self.guest.console_output())?;
        println!("logs saved in {}", dir.display());
        Ok(())
    }

    /// The relay's counters of bytes written to and read from guests.
    fn relay_bytes(&self) -> Result<(f64, f64)> {
        let relay = self.relay.as_ref().ok_or("relay-host is not running")?;
        Ok((
            relay.metric("relay_bytes_to_guest_total", &[])?,
            relay.metric("relay_bytes_from_guest_total", &[])?,
        ))
    }
}

/// The controller's end of the agent's session, straight on the channel's host socket.
struct DirectPeer {
    stream: UnixStream,
    key: InstanceKey,
    session: Option<Session>,
    /// Sessions established so far.
    sessions: u64,
    buf: BytesMut,
    decoder: FrameDecoder,
}

impl DirectPeer {
    /// Connects, writes the resync marker (as the relay does when it opens a channel) and
    /// waits for the agent's session.
    fn connect(socket: &Path, key: &InstanceKey) -> Result<DirectPeer> {
        let mut stream = UnixStream::connect(socket)?;
        stream.set_read_timeout(Some(WAIT))?;
        stream.write_all(&RESYNC_MARKER)?;
        let mut peer = DirectPeer {
            stream,
            key: key.clone(),
            session: None,
            sessions: 0,
            buf: BytesMut::new(),
            decoder: FrameDecoder::new(),
        };
        while !peer.session.as_ref().is_some_and(Session::is_established) {
            peer.next_message()?;
        }
        Ok(peer)
    }

    fn send(&mut self, msg: &Message) -> Result<()> {
        let session = self.session.as_mut().ok_or("no session")?;
        let mut out = BytesMut::new();
        session.send(msg, &mut out)?;
        self.stream.write_all(&out)?;
        Ok(())
    }

    /// Sends `push` of `version` and reads until the agent acks it. A push sealed in a
    /// session the agent has just left (it starts a new one when it reads the resync marker,
    /// which can cross its first Hello) is sent again in the new one, as the controller does.
    fn push(&mut self, push: &Message, version: u64) -> Result<()> {
        let deadline = Instant::now() + WAIT;
        self.send(push)?;
        let mut sessions = self.sessions;
        loop {
            if Instant::now() > deadline {
                return Err(format!("no Ack of version {version} after {WAIT:?}").into());
            }
            let message = self.next_message()?;
            if self.sessions != sessions {
                sessions = self.sessions;
                self.send(push)?;
            }
            if let Some(Message::Ack(a)) = message {
                if a.version == version {
                    return match a.outcome {
                        AckOutcome::Applied => Ok(()),
                        AckOutcome::Rejected { reason } => {
                            Err(format!("the agent rejected version {version}: {reason}").into())
                        }
                    };
                }
            }
        }
    }

    /// The next message of the session, or `None` for a frame that was handled here: a Hello
    /// (answered with a Welcome in a new session), a Ping (answered), or a chunk.
    fn next_message(&mut self) -> Result<Option<Message>> {
        loop {
            while let Some(item) = self.decoder.decode(&mut self.buf) {
                let Decoded::Frame(frame) = item else {
                    continue;
                };
                if frame.header().kind == Kind::Hello as u8 {
                    let mut session = Session::controller(&self.key);
                    let Some(Message::Hello(hello)) = session.open(&frame)? else {
                        return Err("a Hello frame without a Hello".into());
                    };
                    let welcome = Welcome {
                        protocol: 1,
                        capabilities: hello.capabilities & capability::ALL,
                        session_epoch: u64::from_le_bytes(*b"benchcfg"),
                        max_message_len: 1 << 20,
                        heartbeat_interval_ms: 30_000,
                    };
                    let mut out = BytesMut::new();
                    session.accept(&welcome, &mut out)?;
                    self.stream.write_all(&out)?;
                    self.session = Some(session);
                    self.sessions += 1;
                    return Ok(None);
                }
                let session = self.session.as_mut().ok_or("a frame before the Hello")?;
                return match session.open(&frame)? {
                    Some(Message::Ping(p)) => {
                        self.send(&Message::Pong(Pong { nonce: p.nonce }))?;
                        Ok(None)
                    }
                    other => Ok(other),
                };
            }
            let mut chunk = [0u8; 16 * 1024];
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Err("the guest's channel closed".into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }
}

/// The host end of `bench-guest`'s control port: one command line, one answer line.
struct Control {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Control {
    fn connect(path: &Path) -> Result<Control> {
        let stream = UnixStream::connect(path)?;
        stream.set_read_timeout(Some(WAIT))?;
        Ok(Control {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        })
    }

    fn send(&mut self, command: &str) -> Result<()> {
        self.writer.write_all(format!("{command}\n").as_bytes())?;
        Ok(())
    }

    /// The next answer, which must start with `prefix`.
    fn expect(&mut self, prefix: &str) -> Result<String> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err("the guest closed its control port".into());
        }
        let line = line.trim();
        if !line.starts_with(prefix) {
            return Err(format!("the guest answered {line:?}, expected {prefix:?}").into());
        }
        Ok(line.to_owned())
    }
}

/// Wakes the waiter whenever a file of the controller's database (`controller.db*`, in
/// practice the WAL) is written: inotify on the controller's directory, read by a thread that
/// ends when the directory goes.
struct DbWatch {
    changed: Arc<Notify>,
}

impl DbWatch {
    fn start(dir: &Path) -> Result<DbWatch> {
        let fd = inotify::init(inotify::CreateFlags::CLOEXEC)?;
        inotify::add_watch(&fd, dir, inotify::WatchFlags::MODIFY)?;
        let changed = Arc::new(Notify::new());
        let wake = Arc::clone(&changed);
        std::thread::Builder::new()
            .name("db-watch".into())
            .spawn(move || {
                let mut buf = [MaybeUninit::<u8>::uninit(); 4096];
                let mut events = inotify::Reader::new(&fd, &mut buf);
                loop {
                    match events.next() {
                        Ok(e) if e.events().contains(inotify::ReadFlags::IGNORED) => return,
                        Ok(e) => {
                            if e.file_name()
                                .is_some_and(|n| n.to_bytes().starts_with(b"controller.db"))
                            {
                                wake.notify_one();
                            }
                        }
                        Err(rustix::io::Errno::INTR) => {}
                        Err(_) => return,
                    }
                }
            })?;
        Ok(DbWatch { changed })
    }
}

/// A ConfigPush of `payload` as the controller seals it for `instance`: an in-memory
/// handshake between a guest and a controller session with the instance key, then the push.
fn sealed_push(
    key: &InstanceKey,
    instance: Uuid,
    version: u64,
    payload: Vec<u8>,
) -> Result<Vec<u8>> {
    let mut guest = Session::guest(key);
    let mut controller = Session::controller(key);
    let hello = Hello {
        protocol_min: 1,
        protocol_max: 1,
        capabilities: 0,
        agent_name: "vnf-agent".into(),
        agent_version: "0".into(),
        services: vec![ServiceName::new(SERVICE)?],
    };
    let mut wire = BytesMut::new();
    guest.begin(0x5eed, &hello, &mut wire)?;
    let mut decoder = FrameDecoder::new();
    let hello_frame = std::iter::from_fn(|| decoder.decode(&mut wire))
        .find_map(|d| match d {
            Decoded::Frame(f) => Some(f),
            _ => None,
        })
        .ok_or("no Hello frame")?;
    controller.open(&hello_frame)?;
    let welcome = Welcome {
        protocol: 1,
        capabilities: 0,
        session_epoch: 0x0123_4567_89ab_cdef,
        max_message_len: 16 << 20,
        heartbeat_interval_ms: 30_000,
    };
    controller.accept(&welcome, &mut BytesMut::new())?;
    let push = Message::ConfigPush(ConfigPush {
        instance,
        service: ServiceName::new(SERVICE)?,
        config_id: Uuid::from_u128(0x5fc0_be0c_0000_4000_8000_0000_0000_0001),
        version,
        payload,
    });
    let mut out = BytesMut::new();
    controller.send(&push, &mut out)?;
    Ok(out.to_vec())
}

struct Stats {
    n: usize,
    p50: Duration,
    p99: Duration,
    mean: Duration,
    min: Duration,
    max: Duration,
}

impl Stats {
    fn of(samples: &[Duration]) -> Stats {
        let mut s = samples.to_vec();
        s.sort();
        let at = |p: f64| {
            s.get(((s.len().saturating_sub(1)) as f64 * p).round() as usize)
                .copied()
                .unwrap_or_default()
        };
        Stats {
            n: s.len(),
            p50: at(0.5),
            p99: at(0.99),
            mean: s.iter().sum::<Duration>() / s.len().max(1) as u32,
            min: at(0.0),
            max: at(1.0),
        }
    }
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

/// The 1, 5 and 15 minute load averages.
fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// Where the time of the measured pushes goes, from the controller's own log lines (info level,
/// wall clock, microseconds): "configuration pushed" is logged once the push is sealed (its
/// `delivered` status is written next, and only then does the frame leave), "applied" once
/// the Ack is opened (the status is written next).
fn stages(log: &str, instance: Uuid, pushes: &[Push]) {
    let instance = instance.to_string();
    let mut pushed = HashMap::new();
    let mut applied = HashMap::new();
    for line in log.lines() {
        let line = strip_ansi(line);
        if !line.contains("controller_stub::relay::conn") || !line.contains(&instance) {
            continue;
        }
        let (Some(at), Some(version)) = (
            line.split_whitespace().next().and_then(parse_timestamp),
            line.split_whitespace()
                .find_map(|w| w.strip_prefix("version="))
                .and_then(|v| v.parse::<u64>().ok()),
        ) else {
            continue;
        };
        if line.contains(": configuration pushed ") {
            pushed.insert(version, at);
        } else if line.contains(": applied ") {
            applied.insert(version, at);
        }
    }
    let between = |a: SystemTime, b: SystemTime| b.duration_since(a).unwrap_or_default();
    let (mut to_pushed, mut to_applied, mut to_seen) = (Vec::new(), Vec::new(), Vec::new());
    for p in pushes {
        if let (Some(&t1), Some(&t2)) = (pushed.get(&p.version), applied.get(&p.version)) {
            to_pushed.push(between(p.wall, t1));
            to_applied.push(between(t1, t2));
            to_seen.push(between(t2, p.wall + p.total));
        }
    }
    println!();
    println!("| stage (from the controller's log) | samples | p50 | p99 | mean |\n|---|---:|---:|---:|---:|");
    for (what, samples) in [
        (
            "API call -> push sealed (PUT, notify, read, seal)",
            &to_pushed,
        ),
        (
            "push sealed -> Ack opened (delivered write, relay, guest, back)",
            &to_applied,
        ),
        ("Ack opened -> recorded and seen by the bench", &to_seen),
    ] {
        let s = Stats::of(samples);
        println!(
            "| {what} | {} | {} | {} | {} |",
            s.n,
            ms(s.p50),
            ms(s.p99),
            ms(s.mean)
        );
    }
}

/// `line` without ANSI escape sequences (the daemons log in colour).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC '[' parameters, ended by a letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `2026-11-21T10:28:51.123456Z` (tracing's UTC timestamps) as a wall-clock time.
fn parse_timestamp(text: &str) -> Option<SystemTime> {
    let text = text.strip_suffix('Z')?;
    let (date, time) = text.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, fraction) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.splitn(3, ':').map(|p| p.parse::<i64>().ok());
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    // Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's days_from_civil).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = u64::try_from(days * 86_400 + hh * 3600 + mm * 60 + ss).ok()?;
    let digits = fraction.get(..9.min(fraction.len()))?;
    let nanos = digits.parse::<u64>().ok()? * 10u64.pow(9 - digits.len() as u32);
    Some(UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_nanos(nanos))
}
