//! The relay between a test controller (mutual TLS, controller sessions with the guests' keys)
//! and fake guests on UNIX sockets (guest sessions): the relay itself holds no key.
//!
//! Real time, real sockets; every assertion is about which messages arrived in which order,
//! never about how long something took. Waits are guarded by `testing::WAIT` so that a broken
//! relay fails the test instead of hanging it.
#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::BytesMut;
use relay_host::testing::{
    self, push, test_key, AgentEvent, ControllerEvent, ControllerOptions, FakeGuest, Pki, Result,
    TestController, TestRelay, TlsFiles,
};
use relay_protocol::message::capability;
use relay_protocol::uplink::{GuestInfo, RelayMsg};
use relay_protocol::{AckOutcome, Event, Hello, InstanceKey, Message, Session, Severity, Uuid};
use rustls::ServerConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const A: Uuid = Uuid::from_u128(0xa000_0000_0000_4000_8000_0000_0000_000a);
const B: Uuid = Uuid::from_u128(0xb000_0000_0000_4000_8000_0000_0000_000b);

/// A PKI, the relay's TLS files, the controller's TLS configuration and two guests' keys.
struct World {
    dir: tempfile::TempDir,
    pki: Pki,
    files: TlsFiles,
    server: Arc<ServerConfig>,
    keys: HashMap<Uuid, InstanceKey>,
}

impl World {
    fn new() -> Result<World> {
        let dir = tempfile::tempdir()?;
        let pki = Pki::new("test CA")?;
        let files = TlsFiles::write(dir.path(), &pki.ca_pem, &pki.client("relay-1")?)?;
        let server = testing::server_tls(&pki.ca_pem, &pki.server(&["localhost"])?)?;
        let keys = HashMap::from([(A, test_key(0xA)), (B, test_key(0xB))]);
        Ok(World {
            dir,
            pki,
            files,
            server,
            keys,
        })
    }

    fn guest(&self, instance: Uuid) -> Result<FakeGuest> {
        FakeGuest::bind(self.dir.path(), instance, self.keys[&instance].clone())
    }

    async fn controller(&self) -> Result<TestController> {
        TestController::start(
            self.server.clone(),
            self.keys.clone(),
            ControllerOptions::default(),
        )
        .await
    }
}

/// Waits until every instance in `want` has opened a session with the controller.
async fn hellos(controller: &mut TestController, want: &[Uuid]) -> Result<()> {
    let mut seen = HashSet::new();
    controller
        .wait_for("the guests' Hellos", |ev| {
            if let ControllerEvent::Hello { instance, .. } = ev {
                seen.insert(*instance);
            }
            want.iter().all(|i| seen.contains(i)).then_some(())
        })
        .await
}

/// Waits for `instance`'s Ack of `version` (skipping the ConfigRequest agents send after
/// every handshake).
async fn ack_from(controller: &mut TestController, instance: Uuid, version: u64) -> Result<()> {
    loop {
        match controller.message_from(instance).await? {
            Message::Ack(ack) => {
                assert_eq!(ack.instance, instance);
                assert_eq!(ack.version, version);
                assert_eq!(ack.outcome, AckOutcome::Applied);
                return Ok(());
            }
            Message::ConfigRequest(_) => {}
            other => return Err(format!("expected an Ack, got {other:?}").into()),
        }
    }
}

fn event(n: usize) -> Message {
    Message::Event(Event {
        name: format!("event-{n}"),
        severity: Severity::Info,
        message: "flood".into(),
        attributes: vec![],
    })
}

fn metric(relay: &TestRelay, name: &str, instance: Uuid, reason: Option<&str>) -> f64 {
    let id = instance.to_string();
    let mut labels = vec![("instance", id.as_str())];
    if let Some(r) = reason {
        labels.push(("reason", r));
    }
    relay.metric(name, &labels).unwrap_or(0.0)
}

#[tokio::test]
async fn config_pushed_over_mutual_tls_reaches_the_guest_and_its_ack_comes_back() -> Result<()> {
    let w = World::new()?;
    let mut controller = w.controller().await?;
    let relay = TestRelay::start(w.files.config(controller.addr()), true).await?;
    let (a, b) = (w.guest(A)?, w.guest(B)?);
    relay.up(a.channel()).await?;
    relay.up(b.channel()).await?;
    let mut agent_a = a.spawn_agent();
    let _agent_b = b.spawn_agent();

    let register = controller
        .wait_for("Register", |ev| match ev {
            ControllerEvent::Relay(RelayMsg::Register(r)) => Some(r.clone()),
            _ => None,
        })
        .await?;
    assert_eq!(register.host, "test-host");
    hellos(&mut controller, &[A, B]).await?;

    // The controller pushes to A; A applies and acks; the Ack is stamped with A's UUID.
    let payload = b"table inet filter { }".to_vec();
    controller
        .push(A, push(A, "firewall", 1, payload.clone())?)
        .await?;
    let pushed = agent_a
        .wait_for("the push", |ev| match ev {
            AgentEvent::Pushed(p) => Some(p.clone()),
            _ => None,
        })
        .await?;
    assert_eq!((pushed.version, pushed.payload), (1, payload));
    ack_from(&mut controller, A, 1).await?;

    // A 16 MiB configuration crosses as 32 KiB frames, one per write, and is reassembled.
    let big = vec![0x5a; 16 * 1024 * 1024];
    let frames = controller.push(A, push(A, "files", 2, big)?).await?;
    assert!(frames > 500, "{frames}");
    ack_from(&mut controller, A, 2).await?;

    // The metrics endpoint shows it.
    let mut http = tokio::net::TcpStream::connect(relay.metrics_addr.unwrap()).await?;
    http.write_all(b"GET /metrics HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n")
        .await?;
    let mut page = String::new();
    http.read_to_string(&mut page).await?;
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    let to_a = testing::metric(
        &page,
        "relay_frames_to_guest_total",
        &[("instance", &A.to_string())],
    );
    assert!(to_a.unwrap() > 500.0, "{page}");
    assert_eq!(testing::metric(&page, "relay_guests", &[]), Some(2.0));
    assert_eq!(
        testing::metric(&page, "relay_guest_sessions", &[]),
        Some(2.0)
    );
    assert_eq!(
        testing::metric(&page, "relay_uplink_connected", &[]),
        Some(1.0)
    );

    // Graceful shutdown: the guests see their channel close after whole frames only, the
    // controller sees the connection end.
    relay.stop().await?;
    let closed = agent_a
        .wait_for("the channel to close", |ev| match ev {
            AgentEvent::Closed(why) => Some(why.clone()),
            _ => None,
        })
        .await?;
    assert_eq!(closed, "end of stream (0 bytes discarded)");
    controller
        .wait_for("the relay to hang up", |ev| {
            matches!(ev, ControllerEvent::Disconnected(_)).then_some(())
        })
        .await?;
    Ok(())
}

#[tokio::test]
async fn the_controller_refuses_clients_without_a_valid_certificate() -> Result<()> {
    let w = World::new()?;
    let mut controller = w.controller().await?;

    // No client certificate at all.
    let roots = relay_host::tls::load_ca(&w.files.ca)?;
    let anonymous = rustls::ClientConfig::builder_with_provider(relay_host::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(controller.addr()).await?;
    let name = rustls::pki_types::ServerName::try_from("localhost")?;
    let refused = async {
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(anonymous))
            .connect(name, tcp)
            .await?;
        // TLS 1.3: the verdict on the client arrives after the client's side of the handshake.
        let mut buf = [0u8; 16];
        tls.read(&mut buf).await
    };
    let outcome = refused.await;
    assert!(!matches!(outcome, Ok(n) if n > 0), "{outcome:?}");
    let why = controller
        .wait_for("the handshake to fail", |ev| match ev {
            ControllerEvent::HandshakeFailed(why) => Some(why.clone()),
            _ => None,
        })
        .await?;
    assert!(why.contains("no certificates"), "{why}");

    // A relay whose certificate comes from another CA: refused on every attempt, never
    // registered.
    let other = Pki::new("some other CA")?;
    let dir = tempfile::tempdir()?;
    let files = TlsFiles::write(dir.path(), &w.pki.ca_pem, &other.client("intruder")?)?;
    let relay = TestRelay::start(files.config(controller.addr()), false).await?;
    for _ in 0..2 {
        let ev = controller.next_event().await?;
        match ev {
            ControllerEvent::HandshakeFailed(why) => {
                assert!(why.contains("UnknownIssuer"), "{why}")
            }
            other => panic!("the intruder got through: {other:?}"),
        }
    }
    assert_eq!(relay.metric("relay_uplink_connected", &[]), Some(0.0));
    relay.stop().await?;
    Ok(())
}

#[tokio::test]
async fn the_relay_refuses_a_controller_not_signed_by_its_ca() -> Result<()> {
    let w = World::new()?;
    // An impostor: trusts the relay's CA for clients, but its own certificate comes from
    // another CA.
    let impostor_ca = Pki::new("impostor CA")?;
    let impostor_tls = testing::server_tls(&w.pki.ca_pem, &impostor_ca.server(&["localhost"])?)?;
    let mut impostor =
        TestController::start(impostor_tls, w.keys.clone(), ControllerOptions::default()).await?;
    let relay = TestRelay::start(w.files.config(impostor.addr()), false).await?;
    for _ in 0..2 {
        match impostor.next_event().await? {
            // The relay aborted the handshake with an alert saying why.
            ControllerEvent::HandshakeFailed(why) => assert!(why.contains("UnknownCA"), "{why}"),
            other => panic!("the relay talked to the impostor: {other:?}"),
        }
    }
    assert_eq!(relay.metric("relay_uplink_connected", &[]), Some(0.0));
    relay.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_guest_that_stops_reading_does_not_delay_configuration_to_another() -> Result<()> {
    let w = World::new()?;
    let mut controller = w.controller().await?;
    let mut config = w.files.config(controller.addr());
    config.limits.to_guest_queue = 8;
    // A never reads again, so shutdown gives up on its frames after the grace period.
    config.shutdown_grace = std::time::Duration::from_millis(200);
    let relay = TestRelay::start(config, false).await?;
    let (a, b) = (w.guest(A)?, w.guest(B)?);
    relay.up(a.channel()).await?;
    relay.up(b.channel()).await?;
    let mut stuck = a.accept().await?;
    stuck.open().await?;
    let _agent_b = b.spawn_agent();
    hellos(&mut controller, &[A, B]).await?;

    // A stops reading (it holds its socket and never reads again). The controller sends it
    // about 3 MiB, far more than A's socket buffer and relay queue hold.
    let _stuck = stuck.into_stream();
    for version in 1..=100 {
        controller
            .push(A, push(A, "files", version, vec![1; 30_000])?)
            .await?;
    }
    // B's configuration, sent after all of that on the same uplink, still arrives and is
    // acked while A's backlog sits unread.
    controller
        .push(B, push(B, "firewall", 1, b"rules".to_vec())?)
        .await?;
    ack_from(&mut controller, B, 1).await?;

    // What A could not take was dropped (and counted) rather than waited for.
    let dropped = metric(
        &relay,
        "relay_frames_dropped_total",
        A,
        Some("queue_full_to_guest"),
    );
    assert!(dropped > 0.0, "{dropped}");
    assert_eq!(
        metric(
            &relay,
            "relay_frames_dropped_total",
            B,
            Some("queue_full_to_guest")
        ),
        0.0
    );
    relay.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_flooding_guest_is_rate_limited_and_counted_and_others_are_unaffected() -> Result<()> {
    let w = World::new()?;
    let mut controller = w.controller().await?;
    let mut config = w.files.config(controller.addr());
    config.limits.guest_frames_per_sec = 1;
    config.limits.guest_burst = 20;
    config.limits.from_guest_queue = 1024;
    let relay = TestRelay::start(config, false).await?;
    let (a, b) = (w.guest(A)?, w.guest(B)?);
    relay.up(a.channel()).await?;
    relay.up(b.channel()).await?;
    let mut flooder = a.accept().await?;
    flooder.open().await?; // the Hello takes one token
    let _agent_b = b.spawn_agent();
    hellos(&mut controller, &[A, B]).await?;

    let started = std::time::Instant::now();
    const FLOOD: usize = 300;
    let mut wire = BytesMut::new();
    for n in 0..FLOOD {
        wire.extend_from_slice(&flooder.seal(&event(n))?);
    }
    flooder.write_raw(&wire).await?;
    // Hanging up makes the relay read everything and then reopen the channel: its
    // GuestReopened comes after every frame of the flood was judged.
    drop(flooder);
    let mut forwarded = 0;
    controller
        .wait_for("A's channel to be reopened", |ev| match ev {
            ControllerEvent::Message { instance, .. } if *instance == A => {
                forwarded += 1;
                None
            }
            ControllerEvent::Relay(RelayMsg::GuestReopened { instance }) if *instance == A => {
                Some(())
            }
            _ => None,
        })
        .await?;
    let refill = started.elapsed().as_secs_f64().ceil() as usize;
    assert!(
        (19..=19 + refill).contains(&forwarded),
        "{forwarded} frames got through, burst 20 and {refill} s at 1/s"
    );
    assert_eq!(
        metric(
            &relay,
            "relay_frames_dropped_total",
            A,
            Some("rate_limited")
        ),
        (FLOOD - forwarded) as f64
    );

    // B is untouched: its configuration goes through, nothing of it is dropped.
    controller
        .push(B, push(B, "firewall", 1, b"rules".to_vec())?)
        .await?;
    ack_from(&mut controller, B, 1).await?;
    assert_eq!(
        metric(
            &relay,
            "relay_frames_dropped_total",
            B,
            Some("rate_limited")
        ),
        0.0
    );
    relay.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_forged_frame_is_rejected_by_the_controller_and_counted_at_the_relay() -> Result<()> {
    let w = World::new()?;
    let mut controller = w.controller().await?;
    let relay = TestRelay::start(w.files.config(controller.addr()), false).await?;
    let (a, b) = (w.guest(A)?, w.guest(B)?);
    relay.up(a.channel()).await?;
    relay.up(b.channel()).await?;
    let mut guest_a = a.accept().await?;
    guest_a.open().await?;
    let mut guest_b = b.accept().await?;
    guest_b.open().await?;
    hellos(&mut controller, &[A, B]).await?;

    // A tampers with the body of its own frame: the header (and its checksum) is intact, so
    // the relay forwards it; the MAC is not.
    let mut forged = guest_a.seal(&event(1))?;
    let body = relay_protocol::frame::HEADER_LEN + 2;
    forged[body] ^= 0x01;
    guest_a.write_raw(&forged).await?;
    let reason = controller
        .wait_for("the forged frame to be rejected", |ev| match ev {
            ControllerEvent::Rejected { instance, reason } if *instance == A => {
                Some(reason.clone())
            }
            ControllerEvent::Message { .. } => panic!("a forged frame was accepted"),
            _ => None,
        })
        .await?;
    assert!(reason.contains("failed authentication"), "{reason}");

    // B tries to speak for A with a frame sealed under A's key: the relay stamps it with B's
    // UUID, so the controller checks it with B's key and rejects it as B's.
    let mut as_a = Session::guest(&w.keys[&A]);
    let mut hello = BytesMut::new();
    let claim = Hello {
        protocol_min: 1,
        protocol_max: 1,
        capabilities: capability::ALL,
        agent_name: "impersonator".into(),
        agent_version: "0".into(),
        services: vec![],
    };
    as_a.begin(7, &claim, &mut hello)?;
    guest_b.write_raw(&hello).await?;
    controller
        .wait_for("B's impersonation to be rejected", |ev| match ev {
            ControllerEvent::Rejected { instance, .. } if *instance == B => Some(()),
            ControllerEvent::Hello { .. } => panic!("B opened a session as A"),
            _ => None,
        })
        .await?;

    // The relay counted both rejections against the guest that sent them. A push sent after
    // the rejections reaches A only once the relay has processed them (one ordered uplink).
    controller
        .push(A, push(A, "firewall", 1, b"rules".to_vec())?)
        .await?;
    assert!(matches!(guest_a.recv().await?, Message::ConfigPush(_)));
    assert_eq!(
        metric(&relay, "relay_guest_auth_failures_total", A, None),
        1.0
    );
    controller
        .push(B, push(B, "firewall", 1, b"rules".to_vec())?)
        .await?;
    assert!(matches!(guest_b.recv().await?, Message::ConfigPush(_)));
    assert_eq!(
        metric(&relay, "relay_guest_auth_failures_total", B, None),
        1.0
    );
    relay.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_replayed_frame_is_dropped_and_counted_by_the_relay() -> Result<()> {
    let w = World::new()?;
    let mut controller = w.controller().await?;
    let relay = TestRelay::start(w.files.config(controller.addr()), false).await?;
    let a = w.guest(A)?;
    relay.up(a.channel()).await?;
    let mut guest = a.accept().await?;
    guest.open().await?;
    hellos(&mut controller, &[A]).await?;

    let first = guest.send(&event(1)).await?;
    assert_eq!(controller.message_from(A).await?, event(1));
    // The same bytes again: a duplicate in the same epoch.
    guest.write_raw(&first).await?;
    guest.send(&event(2)).await?;
    let next = controller
        .wait_for("the next message", |ev| match ev {
            ControllerEvent::Message { instance, msg } if *instance == A => Some(msg.clone()),
            ControllerEvent::Rejected { reason, .. } => {
                panic!("the replay reached the controller: {reason}")
            }
            _ => None,
        })
        .await?;
    assert_eq!(next, event(2));
    assert_eq!(
        metric(&relay, "relay_frames_dropped_total", A, Some("replay")),
        1.0
    );
    relay.stop().await?;
    Ok(())
}

#[tokio::test]
async fn the_uplink_reconnects_after_a_controller_restart_and_registers_every_guest() -> Result<()>
{
    let w = World::new()?;
    let mut controller = w.controller().await?;
    let relay = TestRelay::start(w.files.config(controller.addr()), false).await?;
    let (a, b) = (w.guest(A)?, w.guest(B)?);
    let names = [a.channel().name, b.channel().name];
    relay.up(a.channel()).await?;
    relay.up(b.channel()).await?;
    let _agent_a = a.spawn_agent();
    let _agent_b = b.spawn_agent();
    hellos(&mut controller, &[A, B]).await?;

    // The controller restarts on the same address and has lost every session; like a real
    // one, it asks the relay to resync the guests it has no session with.
    let addr = controller.stop().await;
    let options = ControllerOptions {
        resync_unknown_guests: true,
        ..ControllerOptions::default()
    };
    let mut controller =
        TestController::start_on(addr, w.server.clone(), w.keys.clone(), options).await?;
    let register = controller
        .wait_for("Register", |ev| match ev {
            ControllerEvent::Relay(RelayMsg::Register(r)) => Some(r.clone()),
            _ => None,
        })
        .await?;
    let mut listed = register.guests.clone();
    listed.sort_by_key(|g| g.instance);
    assert_eq!(
        listed,
        vec![
            GuestInfo {
                instance: A,
                name: names[0].clone()
            },
            GuestInfo {
                instance: B,
                name: names[1].clone()
            },
        ]
    );
    // It asked for resyncs; the guests start new sessions and configuration flows again.
    hellos(&mut controller, &[A, B]).await?;
    controller
        .push(A, push(A, "firewall", 1, b"rules".to_vec())?)
        .await?;
    ack_from(&mut controller, A, 1).await?;
    assert_eq!(
        relay.metric("relay_uplink_reconnects_total", &[]),
        Some(1.0)
    );
    relay.stop().await?;
    Ok(())
}

#[tokio::test]
async fn guest_down_ends_its_session_and_is_announced() -> Result<()> {
    let w = World::new()?;
    let mut controller = w.controller().await?;
    let relay = TestRelay::start(w.files.config(controller.addr()), false).await?;
    let (a, b) = (w.guest(A)?, w.guest(B)?);
    relay.up(a.channel()).await?;
    relay.up(b.channel()).await?;
    let mut agent_a = a.spawn_agent();
    let _agent_b = b.spawn_agent();
    hellos(&mut controller, &[A, B]).await?;

    relay.down(A).await?;
    controller
        .wait_for("GuestDown", |ev| match ev {
            ControllerEvent::Relay(RelayMsg::GuestDown { instance }) if *instance == A => Some(()),
            _ => None,
        })
        .await?;
    agent_a
        .wait_for("A's channel to close", |ev| {
            matches!(ev, AgentEvent::Closed(_)).then_some(())
        })
        .await?;
    assert_eq!(relay.metric("relay_guests", &[]), Some(1.0));
    assert!(!relay.metrics.encode().contains(&A.to_string()));
    // B carries on.
    controller
        .push(B, push(B, "firewall", 1, b"rules".to_vec())?)
        .await?;
    ack_from(&mut controller, B, 1).await?;
    relay.stop().await?;
    Ok(())
}

#[tokio::test]
async fn a_controller_that_stops_answering_is_declared_dead_and_replaced() -> Result<()> {
    let w = World::new()?;
    // Registers the relay, asks for 100 ms heartbeats, then never says anything again.
    let options = ControllerOptions {
        heartbeat_interval_ms: 100,
        answer_pings: false,
        ..ControllerOptions::default()
    };
    let mut controller = TestController::start(w.server.clone(), w.keys.clone(), options).await?;
    let relay = TestRelay::start(w.files.config(controller.addr()), false).await?;
    let register = |ev: &ControllerEvent| {
        matches!(ev, ControllerEvent::Relay(RelayMsg::Register(_))).then_some(())
    };
    controller.wait_for("Register", register).await?;
    // The relay hangs up on the silent controller and registers again on a new connection.
    controller
        .wait_for("the relay to hang up", |ev| {
            matches!(ev, ControllerEvent::Disconnected(_)).then_some(())
        })
        .await?;
    controller.wait_for("Register again", register).await?;
    relay.stop().await?;
    Ok(())
}
