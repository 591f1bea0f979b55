//! The agent against a fake virtio-serial host end, on paused tokio time: the test plays the
//! controller with a real `Session` and scripts the host's presence, restarts and stale bytes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::Mutex;

use relay_protocol::message::capability;
use relay_protocol::{ErrorCode, ErrorMsg, Kind, RawFrame, RESYNC_MARKER};
use tokio::task::JoinHandle;

use super::*;
use crate::transport::fake::FakeHost;

const INSTANCE: Uuid = Uuid::from_u128(0x6f1c_2d3e_4a5b_4c6d_8e7f_9a0b_1c2d_3e4f);
const OTHER_INSTANCE: Uuid = Uuid::from_u128(0x1111_2222_3333_4444_5555_6666_7777_8888);
const CONFIG: Uuid = Uuid::from_u128(0x0123_4567_89ab_4cde_8f01_2345_6789_abcd);
const CONFIG_B: Uuid = Uuid::from_u128(0x0bbb_4567_89ab_4cde_8f01_2345_6789_abcd);

/// Longest any single expected event may take (virtual time).
const PATIENCE: Duration = Duration::from_secs(600);

fn key() -> InstanceKey {
    InstanceKey::from_bytes(&[0x42; 32]).unwrap()
}

fn svc(s: &str) -> ServiceName {
    ServiceName::new(s).unwrap()
}

fn push(version: u64, payload: &[u8]) -> ConfigPush {
    ConfigPush {
        instance: INSTANCE,
        service: svc("firewall"),
        config_id: CONFIG,
        version,
        payload: payload.to_vec(),
    }
}

/// One update a handler applied: (service, version, payload).
type Record = (String, u64, Vec<u8>);

/// Every update a handler applied, in order.
#[derive(Debug, Clone, Default)]
struct Applied(Arc<Mutex<Vec<Record>>>);

impl Applied {
    fn versions(&self) -> Vec<(String, u64)> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|(s, v, _)| (s.clone(), *v))
            .collect()
    }

    fn payloads(&self) -> Vec<Vec<u8>> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|(_, _, p)| p.clone())
            .collect()
    }
}

/// Applies anything but the payloads `bad` (rejected) and `panic` (panics).
struct Recording(Applied);

impl Handler for Recording {
    fn apply(&mut self, update: &ConfigUpdate) -> Result<(), Rejection> {
        match update.payload.as_slice() {
            b"bad" => Err(Rejection::new("bad payload")),
            b"panic" => panic!("handler bug"),
            _ => {
                self.0 .0.lock().unwrap().push((
                    update.service.to_string(),
                    update.version,
                    update.payload.clone(),
                ));
                Ok(())
            }
        }
    }
}

struct Running {
    task: JoinHandle<Result<(), AgentError>>,
    shutdown: CancellationToken,
    stats: Arc<AgentStats>,
    applied: Applied,
}

impl Running {
    async fn stop(self) -> StatsSnapshot {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
        self.stats.snapshot()
    }
}

fn start(host: &FakeHost, state: &Path, instance: Option<Uuid>) -> Running {
    let applied = Applied::default();
    let mut b = Agent::builder(key())
        .connector(host.connector())
        .state_dir(state)
        .handler(svc("firewall"), Box::new(Recording(applied.clone())))
        .handler(svc("files"), Box::new(Recording(applied.clone())));
    if let Some(i) = instance {
        b = b.instance(i);
    }
    let agent = b.build().unwrap();
    let stats = agent.stats();
    let shutdown = CancellationToken::new();
    let task = tokio::spawn(agent.run(shutdown.clone()));
    Running {
        task,
        shutdown,
        stats,
        applied,
    }
}

/// The controller, speaking through the fake host end (as the relay would forward).
struct Ctl {
    host: FakeHost,
    session: Session,
    decoder: FrameDecoder,
    rx: BytesMut,
    epoch: u64,
    heartbeat_ms: u32,
    /// Hellos answered so far.
    hellos: Vec<Hello>,
    rejected: Vec<relay_protocol::Error>,
}

impl Ctl {
    fn new(host: &FakeHost) -> Ctl {
        Ctl {
            host: host.clone(),
            session: Session::controller(&key()),
            decoder: FrameDecoder::new(),
            rx: BytesMut::new(),
            epoch: 0x7e57_0000_0000_0000,
            heartbeat_ms: 0,
            hellos: Vec::new(),
            rejected: Vec::new(),
        }
    }

    /// A (new) host process attaches to the channel and writes the resync marker.
    fn attach(&mut self) {
        self.session = Session::controller(&key());
        self.decoder = FrameDecoder::new();
        self.rx.clear();
        self.host.connect();
        self.host.write(&RESYNC_MARKER);
    }

    /// The host process goes away.
    fn detach(&mut self) {
        self.host.disconnect();
    }

    fn seal(&mut self, msg: &Message) -> BytesMut {
        let mut out = BytesMut::new();
        self.session.send(msg, &mut out).unwrap();
        out
    }

    fn send(&mut self, msg: &Message) {
        let out = self.seal(msg);
        self.host.write(&out);
    }

    async fn fill(&mut self) {
        let bytes = tokio::time::timeout(PATIENCE, self.host.read())
            .await
            .expect("the agent wrote nothing in time");
        self.rx.extend_from_slice(&bytes);
    }

    /// The next message other than Hello (answered with a Welcome) and Ping (answered).
    async fn recv(&mut self) -> Message {
        loop {
            while let Some(item) = self.decoder.decode(&mut self.rx) {
                let Decoded::Frame(frame) = item else {
                    continue;
                };
                match self.session.open(&frame) {
                    Ok(Some(Message::Hello(hello))) => {
                        self.epoch += 1;
                        let welcome = Welcome {
                            protocol: 1,
                            capabilities: hello.capabilities & capability::ALL,
                            session_epoch: self.epoch,
                            max_message_len: 16 * 1024 * 1024,
                            heartbeat_interval_ms: self.heartbeat_ms,
                        };
                        self.hellos.push(hello);
                        let mut out = BytesMut::new();
                        self.session.accept(&welcome, &mut out).unwrap();
                        self.host.write(&out);
                    }
                    Ok(Some(Message::Ping(Ping { nonce }))) => {
                        self.send(&Message::Pong(Pong { nonce }));
                    }
                    Ok(Some(msg)) => return msg,
                    Ok(None) => {}
                    Err(e) => self.rejected.push(e),
                }
            }
            self.fill().await;
        }
    }

    async fn expect_request(&mut self) -> ConfigRequest {
        match self.recv().await {
            Message::ConfigRequest(r) => r,
            other => panic!("expected a ConfigRequest, got {other:?}"),
        }
    }

    async fn expect_ack(&mut self) -> Ack {
        match self.recv().await {
            Message::Ack(a) => a,
            other => panic!("expected an Ack, got {other:?}"),
        }
    }

    async fn push(&mut self, p: ConfigPush) -> Ack {
        self.send(&Message::ConfigPush(p));
        self.expect_ack().await
    }

    /// Every frame the agent writes within `span` of virtual time, unopened.
    async fn raw_frames_for(&mut self, span: Duration) -> Vec<RawFrame> {
        let end = Instant::now() + span;
        let mut frames = Vec::new();
        loop {
            while let Some(item) = self.decoder.decode(&mut self.rx) {
                if let Decoded::Frame(f) = item {
                    frames.push(f);
                }
            }
            match tokio::time::timeout_at(end, self.host.read()).await {
                Ok(bytes) => self.rx.extend_from_slice(&bytes),
                Err(_) => return frames,
            }
        }
    }
}

fn applied_outcome(a: &Ack) -> bool {
    a.outcome == AckOutcome::Applied
}

fn rejection(a: &Ack) -> &str {
    match &a.outcome {
        AckOutcome::Rejected { reason } => reason,
        AckOutcome::Applied => panic!("expected a rejection, got Applied for {a:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn handshake_push_ack_and_persisted_state() {
    let state = tempfile::tempdir().unwrap();
    let host = FakeHost::new();
    let agent = start(&host, state.path(), Some(INSTANCE));
    let mut ctl = Ctl::new(&host);
    ctl.attach();
    let req = ctl.expect_request().await;
    assert!(req.applied.is_empty());
    let hello = &ctl.hellos[0];
    assert_eq!(hello.services, [svc("files"), svc("firewall")]);
    assert_eq!((hello.protocol_min, hello.protocol_max), (1, 1));

    let ack = ctl.push(push(1, b"{}")).await;
    assert!(applied_outcome(&ack), "{ack:?}");
    assert_eq!(
        (ack.instance, ack.config_id, ack.version),
        (INSTANCE, CONFIG, 1)
    );
    assert_eq!(agent.applied.versions(), [("firewall".into(), 1)]);

    let stats = agent.stop().await;
    assert_eq!(stats.applied, 1);
    assert_eq!(stats.protocol_errors, 0, "{:?}", ctl.rejected);
    let (_, saved) = StateStore::open(state.path()).unwrap();
    assert_eq!(
        saved.get(&svc("firewall")),
        Some(AppliedEntry {
            config_id: CONFIG,
            version: 1
        })
    );
}

/// The acceptance line "host absent (EOF) phases ... backoff without busy looping": a minute
/// of absence costs a few dozen calls, and the agent finds the host within one backoff cap of
/// its return.
#[tokio::test(start_paused = true)]
async fn host_absence_backs_off_without_spinning() {
    let state = tempfile::tempdir().unwrap();
    let host = FakeHost::new();
    let agent = start(&host, state.path(), None);
    tokio::time::sleep(Duration::from_secs(60)).await;
    let calls = host.calls();
    // 50 ms doubling to 2 s: about 34 reads and 34 writes a minute; a spin would be millions.
    assert!(
        calls.reads + calls.writes < 80,
        "{calls:?} in one minute of absence"
    );
    assert!(
        calls.reads >= 20 && calls.writes >= 20,
        "{calls:?}: gave up?"
    );
    assert_eq!(calls.connects, 1, "absence is not a reason to reopen");
    let stats = agent.stats.snapshot();
    assert_eq!(stats.sessions_started, 1, "one Hello waits for the host");
    assert!(stats.host_absent >= 20);

    let mut ctl = Ctl::new(&host);
    let back = Instant::now();
    ctl.attach();
    ctl.expect_request().await;
    assert!(
        back.elapsed() <= Timing::default().backoff_max + Duration::from_millis(100),
        "found the host after {:?}",
        back.elapsed()
    );
    assert!(applied_outcome(&ctl.push(push(1, b"a")).await));

    // Absent again, mid-session, for ten minutes.
    ctl.detach();
    let before = host.calls();
    tokio::time::sleep(Duration::from_secs(600)).await;
    let after = host.calls();
    let spent = (after.reads - before.reads) + (after.writes - before.writes);
    assert!(spent < 10 * 70, "{spent} calls in ten minutes of absence");

    // It comes back: a fresh session, which reports what is applied.
    ctl.attach();
    let req = ctl.expect_request().await;
    assert_eq!(req.applied.len(), 1);
    assert_eq!(req.applied[0].version, 1);
    // Shutdown is immediate even while the host is away.
    ctl.detach();
    let stopped = Instant::now();
    agent.stop().await;
    assert!(stopped.elapsed() < Duration::from_millis(10));
}

#[tokio::test(start_paused = true)]
async fn missing_port_is_retried_with_backoff() {
    let state = tempfile::tempdir().unwrap();
    let host = FakeHost::new();
    host.missing_for(5);
    let agent = start(&host, state.path(), None);
    let mut ctl = Ctl::new(&host);
    ctl.attach();
    let t = Instant::now();
    ctl.expect_request().await;
    // 50 + 100 + 200 + 400 + 800 ms of backoff before the sixth attempt succeeds.
    assert!(
        t.elapsed() >= Duration::from_millis(1550),
        "{:?}",
        t.elapsed()
    );
    let stats = agent.stop().await;
    assert_eq!((stats.open_failures, stats.opens), (5, 1));
}

/// Stale bytes in the guest's buffer (garbage, a complete frame of an older session, half a
/// frame) are skipped; the old push is never applied.
#[tokio::test(start_paused = true)]
async fn stale_bytes_at_reconnect_are_skipped() {
    let state = tempfile::tempdir().unwrap();
    let host = FakeHost::new();

    // Record a valid push of an earlier session (same key).
    let mut old_guest = Session::guest(&key());
    let mut old_ctl = Ctl::new(&FakeHost::new());
    let mut wire = BytesMut::new();
    old_guest.begin(99, &hello_for_test(), &mut wire).unwrap();
    old_ctl.rx.extend_from_slice(&wire);
    old_ctl.decoder = FrameDecoder::new();
    while let Some(item) = old_ctl.decoder.decode(&mut old_ctl.rx) {
        if let Decoded::Frame(f) = item {
            old_ctl.session.open(&f).unwrap();
        }
    }
    let mut welcome = BytesMut::new();
    old_ctl
        .session
        .accept(
            &Welcome {
                protocol: 1,
                capabilities: 0,
                session_epoch: 5,
                max_message_len: 1 << 20,
                heartbeat_interval_ms: 0,
            },
            &mut welcome,
        )
        .unwrap();
    let old_push = old_ctl.seal(&Message::ConfigPush(push(7, b"stale")));

    let mut stale = b"leftover garbage from the firmware's last life".to_vec();
    stale.extend_from_slice(&old_push);
    stale.extend_from_slice(&old_push[..old_push.len() / 2]);
    host.write(&stale);

    let agent = start(&host, state.path(), None);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut ctl = Ctl::new(&host);
    ctl.attach();
    let req = ctl.expect_request().await;
    assert!(req.applied.is_empty());
    assert!(applied_outcome(&ctl.push(push(2, b"fresh")).await));
    assert_eq!(agent.applied.versions(), [("firewall".into(), 2)]);
    let stats = agent.stop().await;
    assert!(stats.discarded_bytes >= 40, "{stats:?}");
    assert_eq!(stats.applied, 1);
    assert!(
        stats.stale_frames >= 1,
        "the stale push was seen and refused"
    );
}

fn hello_for_test() -> Hello {
    Hello {
        protocol_min: 1,
        protocol_max: 1,
        capabilities: 0,
        agent_name: "old".into(),
        agent_version: "0".into(),
        services: vec![],
    }
}

/// The host restarts in the middle of a push frame, and again after an apply whose Ack it
/// never read: every version is applied exactly once, none is lost.
#[tokio::test(start_paused = true)]
async fn host_restarts_mid_frame_apply_exactly_once() {
    let state = tempfile::tempdir().unwrap();
    let host = FakeHost::new();
    let agent = start(&host, state.path(), None);
    let mut ctl = Ctl::new(&host);
    ctl.attach();
    ctl.expect_request().await;

    // Half a push, then the host dies.
    let frame = ctl.seal(&Message::ConfigPush(push(1, &[0x55; 2000])));
    host.write(&frame[..frame.len() / 2]);
    tokio::time::sleep(Duration::from_millis(10)).await;
    ctl.detach();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(agent.applied.versions().is_empty());

    // The new host process: marker, handshake, the agent reports nothing applied.
    ctl.attach();
    let req = ctl.expect_request().await;
    assert!(req.applied.is_empty());
    assert!(applied_outcome(&ctl.push(push(1, &[0x55; 2000])).await));

    // v2 arrives, and the host dies before reading the Ack.
    let frame = ctl.seal(&Message::ConfigPush(push(2, b"two")));
    host.write(&frame);
    ctl.detach();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(agent.applied.versions().len(), 2, "applied from the buffer");

    // The controller never saw that Ack: the new session's request says it, and a re-push of
    // the same version is acknowledged without applying it again.
    ctl.attach();
    let req = ctl.expect_request().await;
    assert_eq!(
        req.applied
            .iter()
            .map(|a| (a.service.as_str(), a.version))
            .collect::<Vec<_>>(),
        [("firewall", 2)]
    );
    assert!(applied_outcome(&ctl.push(push(2, b"two")).await));
    assert_eq!(
        agent.applied.versions(),
        [("firewall".into(), 1), ("firewall".into(), 2)]
    );
    let stats = agent.stop().await;
    assert_eq!((stats.applied, stats.reacked), (2, 1));
    assert!(stats.resyncs >= 3 && stats.handshakes >= 3, "{stats:?}");
}

#[tokio::test(start_paused = true)]
async fn versions_are_idempotent_and_monotonic() {
    let state = tempfile::tempdir().unwrap();
    let host = FakeHost::new();
    let agent = start(&host, state.path(), Some(INSTANCE));
    let mut ctl = Ctl::new(&host);
    ctl.attach();
    ctl.expect_request().await;

    assert!(applied_outcome(&ctl.push(push(3, b"three")).await));
    // Same version again (say, after a reconnect): acknowledged, not applied.
    assert!(applied_outcome(&ctl.push(push(3, b"three")).await));
    // Older: rejected, never applied.
    let ack = ctl.push(push(2, b"two")).await;
    assert_eq!(rejection(&ack), "version 2 is older than applied 3");
    // Same version, different config: refused rather than silently re-acknowledged.
    let mut other_config = push(3, b"three");
    other_config.config_id = CONFIG_B;
    assert!(rejection(&ctl.push(other_config).await).contains("was applied with config"));
    // Another instance's push.
    let mut foreign = push(4, b"four");
    foreign.instance = OTHER_INSTANCE;
    let ack = ctl.push(foreign).await;
    assert!(
        rejection(&ack).contains(&OTHER_INSTANCE.to_string()),
        "{ack:?}"
    );
    assert_eq!(ack.instance, OTHER_INSTANCE, "the Ack answers the push");
    // A service without a handler.
    let mut vpn = push(1, b"{}");
    vpn.service = svc("vpn");
    assert!(rejection(&ctl.push(vpn).await).contains("no handler for service vpn"));
    // The handler refuses: the reason goes back, the applied version stays.
    assert_eq!(rejection(&ctl.push(push(4, b"bad")).await), "bad payload");
    // The handler panics: a rejection, and the handler is still there afterwards.
    assert!(
        rejection(&ctl.push(push(4, b"panic")).await).contains("the handler panicked: handler bug")
    );
    assert!(applied_outcome(&ctl.push(push(4, b"four")).await));
    // Other services are independent.
    let mut files = push(1, b"f");
    files.service = svc("files");
    assert!(applied_outcome(&ctl.push(files).await));

    assert_eq!(
        agent.applied.versions(),
        [
            ("firewall".into(), 3),
            ("firewall".into(), 4),
            ("files".into(), 1)
        ]
    );
    let stats = agent.stop().await;
    assert_eq!((stats.applied, stats.reacked, stats.rejected), (3, 1, 6));
}

/// A restart (or reboot) reloads the applied state: reported in the request, not re-applied,
/// and an older version is still refused.
#[tokio::test(start_paused = true)]
async fn restart_remembers_applied_versions() {
    let state = tempfile::tempdir().unwrap();
    let host = FakeHost::new();
    let first = start(&host, state.path(), None);
    let mut ctl = Ctl::new(&host);
    ctl.attach();
    ctl.expect_request().await;
    assert!(applied_outcome(&ctl.push(push(3, b"x")).await));
    first.stop().await;

    let second = start(&host, state.path(), None);
    ctl.attach();
    let req = ctl.expect_request().await;
    assert_eq!(req.applied.len(), 1);
    assert_eq!(
        (req.applied[0].config_id, req.applied[0].version),
        (CONFIG, 3)
    );
    assert!(applied_outcome(&ctl.push(push(3, b"x")).await));
    assert_eq!(
        rejection(&ctl.push(push(2, b"y")).await),
        "version 2 is older than applied 3"
    );
    assert!(second.applied.versions().is_empty(), "nothing re-applied");
    second.stop().await;
}

/// No Welcome: the Hello is repeated with a new nonce, 5 s, then 10 s, 20 s, 40 s later.
#[tokio::test(start_paused = true)]
async fn welcome_timeout_retries_with_new_nonce_and_backoff() {
    let state = tempfile::tempdir().unwrap();
    let host = FakeHost::new();
    let agent = start(&host, state.path(), None);
    let mut ctl = Ctl::new(&host);
    ctl.attach();
    let frames = ctl.raw_frames_for(Duration::from_secs(80)).await;
    let hellos: Vec<u64> = frames
        .iter()
        .filter(|f| f.header().kind == Kind::Hello as u8)
        .map(|f| f.header().epoch)
        .collect();
    // t = 0 (and possibly once more for the host's marker), 5, 15, 35, 75.
    assert!((5..=6).contains(&hellos.len()), "{} Hellos", hellos.len());
    let mut unique = hellos.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), hellos.len(), "every Hello has a fresh nonce");
    assert!(agent.stats.snapshot().welcome_timeouts >= 4);

    // Answering the latest Hello establishes the session.
    ctl.session = Session::controller(&key());
    let last = frames
        .iter()
        .rev()
        .find(|f| f.header().kind == Kind::Hello as u8)
        .unwrap()
        .clone();
    ctl.session.open(&last).unwrap();
    let mut out = BytesMut::new();
    ctl.session
        .accept(
            &Welcome {
                protocol: 1,
                capabilities: 0,
                session_epoch: 77,
                max_message_len: 1 << 20,
                heartbeat_interval_ms: 0,
            },
            &mut out,
        )
        .unwrap();
    host.write(&out);
    ctl.expect_request().await;
    agent.stop().await;
}

/// With a heartbeat interval, the agent pings an idle controller and starts over when the
/// controller stays silent for three intervals (a UART never reports the host gone).
#[tokio::test(start_paused = true)]
async fn silent_controller_is_detected_by_heartbeat() {
    let state = tempfile::tempdir().unwrap();
    let host = FakeHost::new();
    let agent = start(&host, state.path(), None);
    let mut ctl = Ctl::new(&host);
    ctl.heartbeat_ms = 1000;
    ctl.attach();
    ctl.expect_request().await;
    // Answered pings keep the session up.
    let t = Instant::now();
    let pong_wait = tokio::time::timeout(Duration::from_secs(10), ctl.recv()).await;
    assert!(pong_wait.is_err(), "only pings (answered) in 10 s");
    assert!(t.elapsed() >= Duration::from_secs(10));
    let stats = agent.stats.snapshot();
    assert!(stats.pings_sent >= 9, "{stats:?}");
    assert_eq!(stats.heartbeat_timeouts, 0);

    // The controller stops answering: pings, then a new Hello after 3 s of silence.
    let frames = ctl.raw_frames_for(Duration::from_secs(4)).await;
    let kinds: Vec<u8> = frames.iter().map(|f| f.header().kind).collect();
    assert!(kinds.contains(&(Kind::Ping as u8)), "{kinds:?}");
    assert_eq!(kinds.last(), Some(&(Kind::Hello as u8)), "{kinds:?}");
    assert_eq!(agent.stats.snapshot().heartbeat_timeouts, 1);
    agent.stop().await;
}

/// Tampered, replayed and foreign-key frames are counted and skipped; the session goes on.
#[tokio::test(start_paused = true)]
async fn bad_frames_are_counted_not_fatal() {
    let state = tempfile::tempdir().unwrap();
    let host = FakeHost::new();
    let agent = start(&host, state.path(), None);
    let mut ctl = Ctl::new(&host);
    ctl.attach();
    ctl.expect_request().await;

    let good = ctl.seal(&Message::ConfigPush(push(1, b"one")));
    let mut tampered = good.clone();
    let at = tampered.len() - 40;
    tampered[at] ^= 1;
    host.write(&tampered);
    host.write(&good);
    assert!(applied_outcome(&ctl.expect_ack().await));
    host.write(&good); // replay
    ctl.send(&Message::Error(ErrorMsg {
        code: ErrorCode::NOT_FOUND,
        message: "no such instance".into(),
    }));
    ctl.send(&Message::Ping(Ping { nonce: 42 }));
    assert_eq!(
        ctl.recv().await,
        Message::Pong(Pong { nonce: 42 }),
        "the agent answers pings"
    );
    let stats = agent.stop().await;
    assert_eq!(stats.protocol_errors, 2, "{stats:?}");
    assert_eq!(stats.peer_errors, 1);
    assert_eq!(stats.applied, 1);
}

#[tokio::test(start_paused = true)]
async fn large_pushes_are_reassembled() {
    let state = tempfile::tempdir().unwrap();
    let host = FakeHost::new();
    let agent = start(&host, state.path(), None);
    let mut ctl = Ctl::new(&host);
    ctl.attach();
    ctl.expect_request().await;
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    assert!(applied_outcome(&ctl.push(push(1, &payload)).await));
    assert_eq!(agent.applied.payloads(), [payload]);
    agent.stop().await;
}

/// Stops the agent from inside the apply, as firmware might.
struct StopWhenApplied(CancellationToken);

impl Handler for StopWhenApplied {
    fn apply(&mut self, _: &ConfigUpdate) -> Result<(), Rejection> {
        self.0.cancel();
        Ok(())
    }
}

/// Shutdown requested while an update is applied: the Ack still goes out.
#[tokio::test(start_paused = true)]
async fn pending_ack_is_flushed_on_shutdown() {
    let host = FakeHost::new();
    let shutdown = CancellationToken::new();
    let agent = Agent::builder(key())
        .connector(host.connector())
        .handler(svc("firewall"), Box::new(StopWhenApplied(shutdown.clone())))
        .build()
        .unwrap();
    let task = tokio::spawn(agent.run(shutdown.clone()));
    let mut ctl = Ctl::new(&host);
    ctl.attach();
    ctl.expect_request().await;
    ctl.send(&Message::ConfigPush(push(1, b"x")));
    task.await.unwrap().unwrap();
    assert!(applied_outcome(&ctl.expect_ack().await));
}

#[test]
fn builder_checks_its_configuration() {
    let h = || Box::new(Recording(Applied::default())) as Box<dyn Handler>;
    let err = Agent::builder(key())
        .handler(svc("a"), h())
        .handler(svc("a"), h())
        .build()
        .unwrap_err();
    assert!(matches!(err, AgentError::DuplicateService(_)), "{err}");
    let mut b = Agent::builder(key());
    for i in 0..=MAX_ITEMS {
        b = b.handler(svc(&format!("s{i}")), h());
    }
    assert!(matches!(
        b.build().unwrap_err(),
        AgentError::TooManyServices { count: 65 }
    ));
    let err = Agent::builder(key())
        .agent_name("", "1")
        .build()
        .unwrap_err();
    assert!(matches!(err, AgentError::BadName));
    let spin = Timing {
        backoff_min: Duration::ZERO,
        ..Timing::default()
    };
    let err = Agent::builder(key()).timing(spin).build().unwrap_err();
    assert!(matches!(err, AgentError::BadTiming(_)), "{err}");
}

#[test]
fn reasons_are_truncated_on_a_char_boundary() {
    let long = "é".repeat(MAX_TEXT);
    let cut = truncate(long, MAX_TEXT);
    assert!(cut.len() <= MAX_TEXT && cut.len() >= MAX_TEXT - 1);
    assert!(cut.chars().all(|c| c == 'é'));
    assert_eq!(truncate("short".into(), MAX_TEXT), "short");
}

/// Records the thread each update is applied on.
struct ThreadRecorder(Arc<Mutex<Vec<std::thread::ThreadId>>>);

impl Handler for ThreadRecorder {
    fn apply(&mut self, _: &ConfigUpdate) -> Result<(), Rejection> {
        self.0.lock().unwrap().push(std::thread::current().id());
        Ok(())
    }
}

/// The blocking API: same protocol behaviour, handlers on the thread that called
/// `run_until`, stopped from another thread.
#[tokio::test]
async fn blocking_agent_runs_handlers_on_the_calling_thread() {
    let state = tempfile::tempdir().unwrap();
    let host = FakeHost::new();
    let mut ctl = Ctl::new(&host);
    ctl.attach();
    let threads = Arc::new(Mutex::new(Vec::new()));
    let agent = crate::BlockingAgent::new(
        Agent::builder(key())
            .connector(host.connector())
            .state_dir(state.path())
            .handler(svc("firewall"), Box::new(ThreadRecorder(threads.clone()))),
    )
    .unwrap();
    let stats = agent.stats();
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let runner = std::thread::spawn(move || {
        let me = std::thread::current().id();
        (me, agent.run_until(stop))
    });

    ctl.expect_request().await;
    assert!(applied_outcome(&ctl.push(push(2, b"x")).await));
    assert!(applied_outcome(&ctl.push(push(2, b"x")).await));
    assert_eq!(
        rejection(&ctl.push(push(1, b"x")).await),
        "version 1 is older than applied 2"
    );
    shutdown.cancel();
    let (runner_thread, result) = tokio::task::spawn_blocking(move || runner.join().unwrap())
        .await
        .unwrap();
    result.unwrap();
    assert_eq!(*threads.lock().unwrap(), [runner_thread]);
    let stats = stats.snapshot();
    assert_eq!((stats.applied, stats.reacked, stats.rejected), (1, 1, 1));
}
