//! relay-host's libvirt discovery against a real `libvirtd` and a TCG guest: the channel socket
//! is found through libvirt alone (path from the live XML) and carries bytes to the guest;
//! discovery survives a libvirtd restart (a running guest stays Up, guests started afterwards
//! are seen through the re-registered events). The daemons stay running afterwards (other tests
//! share them); every domain is destroyed and undefined, also on failure.
//!
//! One test function on purpose: it restarts libvirtd, which must not happen under another
//! libvirt test of this binary.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use e2e_tests::guest_image::{GuestImage, GuestImageBuilder};
use e2e_tests::libvirt::{ensure_libvirtd, restart_libvirtd, LibvirtGuest, TestDomain, URI};
use e2e_tests::qemu::BOOT_TIMEOUT;
use relay_host::libvirt::{
    check, Discovery, DiscoveryEvent, LibvirtConfig, LifecycleKind, DEFAULT_CHANNEL,
};
use relay_host::{GuestChange, GuestChannel};
use relay_protocol::Uuid;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Generous for a loaded 2-core CI machine; events arrive in milliseconds.
const WAIT: Duration = Duration::from_secs(30);

/// Echoes each line from the port back with a prefix (see tests/guest_boot.rs).
const ECHO_SCRIPT: &str = r#"#!/bin/sh
exec 3<>"/dev/virtio-ports/$1"
echo "echo-guest: ready on $1"
while :; do
    while IFS= read -r line <&3; do
        printf '%s%s\n' "$2" "$line" >&3
    done
    sleep 0.1
done
"#;

fn image() -> GuestImage {
    GuestImageBuilder::new()
        .script("/opt/test/echo", ECHO_SCRIPT)
        .build()
        .unwrap_or_else(|e| panic!("building the guest image failed: {e}"))
}

struct Watch {
    changes: mpsc::Receiver<GuestChange>,
    observed: std_mpsc::Receiver<DiscoveryEvent>,
    rt: tokio::runtime::Runtime,
}

impl Watch {
    fn change_for(&mut self, uuid: Uuid) -> GuestChange {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let change = self
                .rt
                .block_on(async { tokio::time::timeout(left, self.changes.recv()).await })
                .unwrap_or_else(|_| panic!("no change for {uuid} within {WAIT:?}"))
                .expect("discovery stopped");
            match &change {
                GuestChange::Up(g) if g.uuid == uuid => return change,
                GuestChange::Down(u) if *u == uuid => return change,
                _ => {}
            }
        }
    }

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

    fn lifecycle(&self, uuid: Uuid, kind: LifecycleKind) {
        self.observed(
            &format!("{kind:?} event"),
            |e| matches!(e, DiscoveryEvent::Lifecycle(l) if l.uuid == uuid && l.kind == kind),
        );
    }
}

fn uuid_of(domain: &TestDomain) -> Uuid {
    Uuid::parse_str(domain.uuid()).unwrap()
}

/// One line through the guest's echo program over the host end of its channel.
fn echo(guest: &GuestChannel, line: &str) {
    let stream = UnixStream::connect(&guest.socket).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    writer.write_all(format!("{line}\n").as_bytes()).unwrap();
    let mut reply = String::new();
    reader.read_line(&mut reply).unwrap();
    assert_eq!(reply, format!("echo:{line}\n"));
}

fn expect_up(watch: &mut Watch, domain: &TestDomain) -> GuestChannel {
    match watch.change_for(uuid_of(domain)) {
        GuestChange::Up(guest) => guest,
        other => panic!("expected Up for {}, got {other:?}", domain.name()),
    }
}

#[test]
fn discovery_follows_a_real_libvirtd_across_a_restart() {
    let start = Instant::now();
    ensure_libvirtd().unwrap_or_else(|e| panic!("{e}"));
    let image = image();
    eprintln!("libvirtd and image ready after {:?}", start.elapsed());

    let (tx, changes) = mpsc::channel(16);
    let (otx, observed) = std_mpsc::channel();
    let shutdown = CancellationToken::new();
    let config = LibvirtConfig {
        uri: URI.into(),
        debounce: Duration::from_millis(50),
        reconnect_min: Duration::from_millis(100),
        reconnect_max: Duration::from_secs(1),
        ..LibvirtConfig::default()
    };
    let thread = Discovery::new(config.clone())
        .observe(otx)
        .spawn(tx, shutdown.clone())
        .unwrap();
    // Cancels discovery however the test ends; domains clean up through their own drops.
    let _stop = shutdown.clone().drop_guard();
    let mut watch = Watch {
        changes,
        observed,
        rt: tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap(),
    };
    watch.observed("first reconcile", |e| {
        matches!(e, DiscoveryEvent::Reconciled { .. })
    });

    // 1. A guest with the relay channel: Up with the socket libvirt generated.
    let guest = LibvirtGuest::new(&image)
        .run("/opt/test/echo")
        .args([DEFAULT_CHANNEL, "echo:"])
        .channel(DEFAULT_CHANNEL)
        .oem_string("org.opensfc.relay.key:00112233")
        .start()
        .unwrap_or_else(|e| panic!("{e}"));
    let booted = Instant::now();
    watch.lifecycle(uuid_of(&guest), LifecycleKind::Started);
    let up = expect_up(&mut watch, &guest);
    assert_eq!(up.name, guest.name());
    let live = guest.live_xml().unwrap();
    let quoted = format!("path='{}'", up.socket.display());
    assert!(
        live.contains(&quoted),
        "{quoted} not in the live XML:\n{live}"
    );
    eprintln!("Up after {:?}: {}", booted.elapsed(), up.socket.display());

    // `relay-host check` sees the same.
    let listed = check(&config).unwrap();
    assert!(listed.contains(&up), "{listed:?}");

    // The socket leads to the guest.
    guest
        .wait_for_console("echo-guest: ready on org.opensfc.relay.0", BOOT_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("guest ready after {:?}", booted.elapsed());
    echo(&up, "through libvirt");

    // 2. libvirtd restarts: discovery notices, reconnects and registers again. The guest keeps
    // running, so nothing changes for it, and its socket still works.
    let restarted = Instant::now();
    restart_libvirtd().unwrap_or_else(|e| panic!("{e}"));
    match watch.observed("disconnect", |e| {
        matches!(e, DiscoveryEvent::Disconnected { .. })
    }) {
        DiscoveryEvent::Disconnected { generation, reason } => {
            assert_eq!(generation, 1);
            eprintln!("connection 1 lost: {reason}");
        }
        _ => unreachable!(),
    }
    let generation = match watch.observed("reconnect", |e| {
        matches!(e, DiscoveryEvent::Connected { .. })
    }) {
        DiscoveryEvent::Connected { generation } => generation,
        _ => unreachable!(),
    };
    assert!(generation >= 2);
    watch.observed("reconcile after reconnecting", |e| {
        matches!(e, DiscoveryEvent::Reconciled { .. })
    });
    eprintln!(
        "reconnected (connection {generation}) {:?} after the restart",
        restarted.elapsed()
    );
    assert!(
        watch.changes.try_recv().is_err(),
        "a libvirtd restart must not change the guests"
    );
    echo(&up, "after the restart");

    // 3. Events on the new connection: a guest started afterwards comes Up, and both go Down
    // when destroyed.
    let second = LibvirtGuest::new(&image)
        .run("/opt/test/echo")
        .args([DEFAULT_CHANNEL, "echo:"])
        .channel(DEFAULT_CHANNEL)
        .define_and_start()
        .unwrap_or_else(|e| panic!("{e}"));
    watch.lifecycle(uuid_of(&second), LifecycleKind::Started);
    let second_up = expect_up(&mut watch, &second);
    assert_ne!(second_up.socket, up.socket);
    assert!(second
        .live_xml()
        .unwrap()
        .contains(&format!("path='{}'", second_up.socket.display())));

    for domain in [&guest, &second] {
        domain.destroy().unwrap();
        watch.lifecycle(uuid_of(domain), LifecycleKind::Stopped);
        assert_eq!(
            watch.change_for(uuid_of(domain)),
            GuestChange::Down(uuid_of(domain))
        );
    }
    drop((guest, second));

    shutdown.cancel();
    let stopping = Instant::now();
    thread.join().unwrap();
    assert!(stopping.elapsed() < Duration::from_secs(2));
    eprintln!("done in {:?}", start.elapsed());
}

/// Several callers at once (threads here; processes serialise the same way, through the lock
/// file) all return with libvirtd answering, and at most one starts it.
#[test]
fn ensure_libvirtd_is_idempotent_under_concurrency() {
    let callers: Vec<_> = (0..4)
        .map(|_| std::thread::spawn(ensure_libvirtd))
        .collect();
    for caller in callers {
        caller.join().unwrap().unwrap_or_else(|e| panic!("{e}"));
    }
    assert!(e2e_tests::libvirt::answers());
}
