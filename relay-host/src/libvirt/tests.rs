//! Discovery against libvirt's in-process test driver (`test:///default`): no daemon, real
//! libvirt event machinery. All connections to `test:///default` in one process share one
//! driver state while any of them is open, so the test defines domains on its own connection
//! and discovery sees them on its own; tests running in parallel see each other's domains,
//! so every assertion filters on the test's own UUIDs.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use super::*;

const TEST_URI: &str = "test:///default";
const WAIT: Duration = Duration::from_secs(10);

fn config() -> LibvirtConfig {
    LibvirtConfig {
        uri: TEST_URI.to_owned(),
        debounce: Duration::from_millis(10),
        // Long enough that only events can explain a change seen within a test.
        reconcile_interval: Duration::from_secs(3600),
        reconnect_min: Duration::from_millis(20),
        reconnect_max: Duration::from_millis(100),
        ..LibvirtConfig::default()
    }
}

/// A unique name and UUID, and the test-driver XML of a domain with `channel` (if any)
/// bound at an explicit path: the test driver keeps the XML as given, it generates no paths.
fn domain_xml(channel: Option<&str>) -> (String, Uuid, String) {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let name = format!("sfc-unit-{}-{n}", std::process::id());
    let uuid = Uuid::from_u128(
        0x5fc0_0000_0000_4000_8000_0000_0000_0000
            | (u128::from(std::process::id()) << 32)
            | u128::from(n),
    );
    let channel = channel
        .map(|target| {
            format!(
                "<channel type='unix'>
                   <source mode='bind' path='/tmp/{name}.{target}.sock'/>
                   <target type='virtio' name='{target}'/>
                 </channel>"
            )
        })
        .unwrap_or_default();
    let xml = format!(
        "<domain type='test'>
           <name>{name}</name>
           <uuid>{uuid}</uuid>
           <memory unit='MiB'>64</memory>
           <os><type arch='x86_64'>hvm</type></os>
           <devices>{channel}</devices>
         </domain>"
    );
    (name, uuid, xml)
}

fn socket_of(name: &str) -> std::path::PathBuf {
    format!("/tmp/{name}.{DEFAULT_CHANNEL}.sock").into()
}

struct Running {
    hints: Hints,
    changes: mpsc::Receiver<GuestChange>,
    observed: std_mpsc::Receiver<DiscoveryEvent>,
    shutdown: CancellationToken,
    thread: Option<JoinHandle<()>>,
    rt: tokio::runtime::Runtime,
}

impl Running {
    fn start(config: LibvirtConfig) -> Self {
        let (tx, changes) = mpsc::channel(16);
        let (otx, observed) = std_mpsc::channel();
        let shutdown = CancellationToken::new();
        let discovery = Discovery::new(config).observe(otx);
        let hints = discovery.hints();
        let thread = discovery.spawn(tx, shutdown.clone()).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        Self {
            hints,
            changes,
            observed,
            shutdown,
            thread: Some(thread),
            rt,
        }
    }

    /// Starts discovery and waits until it is registered for events and has reconciled once:
    /// events from before the registration are not delivered (the reconcile covers them).
    fn start_ready(config: LibvirtConfig) -> Self {
        let running = Self::start(config);
        running.observed("first reconcile", |e| {
            matches!(e, DiscoveryEvent::Reconciled { .. })
        });
        running
    }

    /// The next change concerning `uuid`, skipping other tests' guests.
    fn change_for(&mut self, uuid: Uuid) -> GuestChange {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let change = self
                .rt
                .block_on(async { tokio::time::timeout(left, self.changes.recv()).await })
                .unwrap_or_else(|_| panic!("no change for {uuid} within {WAIT:?}"))
                .expect("discovery stopped");
            let concerns = match &change {
                GuestChange::Up(g) => g.uuid == uuid,
                GuestChange::Down(u) => *u == uuid,
            };
            if concerns {
                return change;
            }
        }
    }

    /// No change concerning `uuid` arrives within `quiet`.
    fn no_change_for(&mut self, uuid: Uuid, quiet: Duration) {
        let deadline = Instant::now() + quiet;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self
                .rt
                .block_on(async { tokio::time::timeout(left, self.changes.recv()).await })
            {
                Err(_) => return,
                Ok(Some(GuestChange::Up(g))) if g.uuid == uuid => panic!("unexpected Up {g:?}"),
                Ok(Some(GuestChange::Down(u))) if u == uuid => panic!("unexpected Down {u}"),
                Ok(Some(_)) => {}
                Ok(None) => panic!("discovery stopped"),
            }
        }
    }

    /// Waits for an observed event matching `pred`, returning it.
    fn observed(&self, what: &str, pred: impl Fn(&DiscoveryEvent) -> bool) -> DiscoveryEvent {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.observed.recv_timeout(left) {
                Ok(event) if pred(&event) => return event,
                Ok(_) => {}
                Err(e) => panic!("no {what} within {WAIT:?}: {e}"),
            }
        }
    }

    fn lifecycle(&self, uuid: Uuid) -> LifecycleKind {
        match self.observed(
            "lifecycle event",
            |e| matches!(e, DiscoveryEvent::Lifecycle(l) if l.uuid == uuid),
        ) {
            DiscoveryEvent::Lifecycle(l) => l.kind,
            _ => unreachable!(),
        }
    }

    /// Cancels and waits for the thread, which must end promptly.
    fn stop(&mut self) -> Duration {
        let start = Instant::now();
        self.shutdown.cancel();
        if let Some(thread) = self.thread.take() {
            thread.join().unwrap();
        }
        start.elapsed()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.shutdown.cancel();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Destroys and undefines on drop, so a failed assertion leaves nothing behind in the shared
/// test-driver state.
struct Cleanup(Domain);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = self.0.destroy();
        let _ = self.0.undefine();
    }
}

#[test]
fn lifecycle_events_drive_up_and_down() {
    let conn = Connection::open(TEST_URI).unwrap();
    let mut discovery = Running::start(config());
    discovery.observed("connection", |e| {
        matches!(e, DiscoveryEvent::Connected { .. })
    });
    discovery.observed("first reconcile", |e| {
        matches!(e, DiscoveryEvent::Reconciled { .. })
    });

    let (name, uuid, xml) = domain_xml(Some(DEFAULT_CHANNEL));
    let dom = Cleanup(Domain::define_xml(&conn, &xml).unwrap());
    assert_eq!(discovery.lifecycle(uuid), LifecycleKind::Defined);
    discovery.no_change_for(uuid, Duration::from_millis(100));

    dom.0.create().unwrap();
    assert_eq!(discovery.lifecycle(uuid), LifecycleKind::Started);
    let up = GuestChannel {
        uuid,
        name: name.clone(),
        socket: socket_of(&name),
    };
    assert_eq!(discovery.change_for(uuid), GuestChange::Up(up.clone()));

    dom.0.destroy().unwrap();
    assert_eq!(discovery.lifecycle(uuid), LifecycleKind::Stopped);
    assert_eq!(discovery.change_for(uuid), GuestChange::Down(uuid));

    // Undefining a running domain leaves it running (transient): still Up until it stops.
    dom.0.create().unwrap();
    assert_eq!(discovery.lifecycle(uuid), LifecycleKind::Started);
    assert_eq!(discovery.change_for(uuid), GuestChange::Up(up));
    dom.0.undefine().unwrap();
    assert_eq!(discovery.lifecycle(uuid), LifecycleKind::Undefined);
    discovery.no_change_for(uuid, Duration::from_millis(100));
    dom.0.destroy().unwrap();
    assert_eq!(discovery.lifecycle(uuid), LifecycleKind::Stopped);
    assert_eq!(discovery.change_for(uuid), GuestChange::Down(uuid));

    let took = discovery.stop();
    assert!(took < Duration::from_secs(1), "shutdown took {took:?}");
}

#[test]
fn domains_without_the_channel_are_ignored() {
    let conn = Connection::open(TEST_URI).unwrap();
    let mut discovery = Running::start_ready(config());
    let (_, plain, xml) = domain_xml(None);
    let plain_dom = Cleanup(Domain::create_xml(&conn, &xml, 0).unwrap());
    let (_, other, xml) = domain_xml(Some("org.qemu.guest_agent.0"));
    let other_dom = Cleanup(Domain::create_xml(&conn, &xml, 0).unwrap());
    assert_eq!(discovery.lifecycle(plain), LifecycleKind::Started);
    assert_eq!(discovery.lifecycle(other), LifecycleKind::Started);
    discovery.no_change_for(plain, Duration::from_millis(200));

    // Stopping them (transient: they vanish) reports nothing either.
    drop((plain_dom, other_dom));
    discovery.no_change_for(other, Duration::from_millis(200));
}

#[test]
fn guests_running_before_discovery_starts_come_from_the_first_reconcile() {
    let conn = Connection::open(TEST_URI).unwrap();
    let (name, uuid, xml) = domain_xml(Some(DEFAULT_CHANNEL));
    let _dom = Cleanup(Domain::create_xml(&conn, &xml, 0).unwrap());

    let found = check(&config()).unwrap();
    let mine: Vec<_> = found.iter().filter(|g| g.uuid == uuid).collect();
    assert_eq!(mine.len(), 1, "{found:?}");
    assert_eq!(mine[0].socket, socket_of(&name));

    let mut discovery = Running::start(config());
    assert!(matches!(discovery.change_for(uuid), GuestChange::Up(g) if g.name == name));
}

#[test]
fn the_channel_name_is_configurable() {
    let conn = Connection::open(TEST_URI).unwrap();
    let mut discovery = Running::start(LibvirtConfig {
        channel: "org.example.custom.0".into(),
        ..config()
    });
    let (_, relay, xml) = domain_xml(Some(DEFAULT_CHANNEL));
    let _relay = Cleanup(Domain::create_xml(&conn, &xml, 0).unwrap());
    let (name, custom, xml) = domain_xml(Some("org.example.custom.0"));
    let _custom = Cleanup(Domain::create_xml(&conn, &xml, 0).unwrap());
    match discovery.change_for(custom) {
        GuestChange::Up(g) => {
            assert_eq!(
                g.socket,
                std::path::PathBuf::from(format!("/tmp/{name}.org.example.custom.0.sock"))
            )
        }
        other => panic!("{other:?}"),
    }
    discovery.no_change_for(relay, Duration::from_millis(100));
}

#[test]
fn unreachable_libvirt_is_retried_until_shutdown() {
    let mut discovery = Running::start(LibvirtConfig {
        uri: "qemu+unix:///system?socket=/nonexistent/sfc-relay-unit.sock".into(),
        ..config()
    });
    for expected in 1..=3 {
        match discovery.observed("disconnect", |e| {
            matches!(e, DiscoveryEvent::Disconnected { .. })
        }) {
            DiscoveryEvent::Disconnected { generation, reason } => {
                assert_eq!(generation, expected);
                assert!(reason.contains("connecting to libvirt"), "{reason}");
            }
            _ => unreachable!(),
        }
    }
    let took = discovery.stop();
    assert!(took < Duration::from_secs(1), "shutdown took {took:?}");
    assert!(matches!(
        check(&LibvirtConfig {
            uri: "qemu+unix:///system?socket=/nonexistent/sfc-relay-unit.sock".into(),
            ..config()
        }),
        Err(Error::Connect { .. })
    ));
}

#[test]
fn dropping_the_receiver_stops_discovery() {
    let conn = Connection::open(TEST_URI).unwrap();
    let (tx, rx) = mpsc::channel(1);
    let shutdown = CancellationToken::new();
    let thread = spawn_discovery(config(), tx, shutdown.clone()).unwrap();
    drop(rx);
    // The next change it tries to report finds the receiver gone.
    let (_, _, xml) = domain_xml(Some(DEFAULT_CHANNEL));
    let _dom = Cleanup(Domain::create_xml(&conn, &xml, 0).unwrap());
    let (joined_tx, joined) = std_mpsc::channel();
    std::thread::spawn(move || joined_tx.send(thread.join().is_ok()));
    assert_eq!(
        joined.recv_timeout(WAIT),
        Ok(true),
        "discovery kept running without a receiver"
    );
    assert!(!shutdown.is_cancelled());
}

#[test]
fn lifecycle_kinds_map_from_libvirt_codes() {
    use virt::sys;
    let raw = |c: u32| i32::try_from(c).unwrap();
    assert_eq!(
        LifecycleKind::from_raw(raw(sys::VIR_DOMAIN_EVENT_DEFINED)),
        LifecycleKind::Defined
    );
    assert_eq!(
        LifecycleKind::from_raw(raw(sys::VIR_DOMAIN_EVENT_CRASHED)),
        LifecycleKind::Crashed
    );
    assert_eq!(LifecycleKind::from_raw(99), LifecycleKind::Other(99));
    assert_eq!(LifecycleKind::from_raw(-1), LifecycleKind::Other(-1));
}

#[test]
fn the_periodic_reconcile_works_without_events() {
    // Events never get acted on within the test (hour-long debounce): only the periodic
    // reconcile can report the guest.
    let conn = Connection::open(TEST_URI).unwrap();
    let mut discovery = Running::start_ready(LibvirtConfig {
        debounce: Duration::from_secs(3600),
        reconcile_interval: Duration::from_millis(50),
        ..config()
    });
    let (name, uuid, xml) = domain_xml(Some(DEFAULT_CHANNEL));
    let dom = Cleanup(Domain::create_xml(&conn, &xml, 0).unwrap());
    assert!(matches!(discovery.change_for(uuid), GuestChange::Up(g) if g.name == name));
    drop(dom);
    assert_eq!(discovery.change_for(uuid), GuestChange::Down(uuid));
}

#[test]
fn hints_look_a_started_domain_up_and_drop_a_stopped_one() {
    let conn = Connection::open(TEST_URI).unwrap();
    let mut discovery = Running::start_ready(config());
    let (name, uuid, xml) = domain_xml(Some(DEFAULT_CHANNEL));
    let _dom = Cleanup(Domain::create_xml(&conn, &xml, 0).unwrap());
    let up = GuestChannel {
        uuid,
        socket: socket_of(&name),
        name,
    };
    assert_eq!(discovery.change_for(uuid), GuestChange::Up(up.clone()));

    // The hook says it stopped: dropped at once, whatever libvirt says (here: still running).
    discovery.hints.stopped(uuid);
    assert_eq!(discovery.change_for(uuid), GuestChange::Down(uuid));
    // The hook says it started: looked up at once. Nothing else would report it again: no
    // lifecycle event happens, and the next reconcile is an hour away.
    discovery.hints.started(uuid);
    assert_eq!(discovery.change_for(uuid), GuestChange::Up(up));
    // Repeated and unknown hints change nothing.
    discovery.hints.started(uuid);
    discovery.no_change_for(uuid, Duration::from_millis(100));
    let unknown = Uuid::from_u128(0x5fc0_ffff_0000_4000_8000_0000_0000_0001);
    discovery.hints.started(unknown);
    discovery.hints.stopped(unknown);
    discovery.no_change_for(unknown, Duration::from_millis(100));
}
