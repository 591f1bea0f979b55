//! The relay endpoint against the real relay daemon library (`relay_host`, with fake guests on
//! UNIX sockets standing in for QEMU's channels), with certificates from `pki init`: a relay
//! with a valid certificate registers, its guests get their desired configuration, and their
//! Acks move the status the API shows; relays without a valid certificate are refused; a guest
//! only ever gets, and answers for, its own instance.
//!
//! Every test runs once per database backend. Waits are bounded (`WAIT`) so that a broken
//! endpoint fails a test instead of hanging it; the API is polled where the endpoint's effect
//! is only visible there (a status, a host entry).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use common::{Backend, TestApi};
use controller_stub::api::AppState;
use controller_stub::pki::{self, PkiOptions};
use controller_stub::relay::{self, Endpoint, HostLinks, RelayOptions};
use controller_stub::CancellationToken;
use relay_host::testing::{AgentEvent, FakeGuest, GuestConn, TestRelay};
use relay_protocol::uplink::{self, GuestInfo, Register, RelayMsg, PREAMBLE, UPLINK_VERSION};
use relay_protocol::{
    Ack, AckOutcome, ConfigRequest, ErrorCode, InstanceKey, Message, ServiceName, Uuid,
};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const A: Uuid = Uuid::from_u128(0xa000_0000_0000_4000_8000_0000_0000_000a);
const B: Uuid = Uuid::from_u128(0xb000_0000_0000_4000_8000_0000_0000_000b);

/// How long any one wait may take before the test fails.
const WAIT: Duration = Duration::from_secs(20);

/// Polls `f` until it returns `Some`, failing the test after [`WAIT`].
async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(t) = f().await {
            return t;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The API, the relay endpoint on the same state, and the PKI `pki init` made.
struct World {
    api: TestApi,
    state: AppState,
    /// `pki init` output: ca.pem, server.pem/key, relays/compute-{1,2}/...
    pki: tempfile::TempDir,
    /// Fake guests' channel sockets.
    guests: tempfile::TempDir,
    endpoint: Option<(SocketAddr, CancellationToken, tokio::task::JoinHandle<()>)>,
}

impl World {
    async fn start(backend: Backend) -> World {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let api = TestApi::start_with(backend, move |state: AppState| {
            let _ = tx.send(state.clone());
            state
        })
        .await;
        let state = tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("the API's state")
            .expect("state");
        let pki = tempfile::tempdir().unwrap();
        pki::init(&PkiOptions {
            dir: pki.path().to_owned(),
            server_names: vec![],
            relays: vec!["compute-1".into(), "compute-2".into()],
            force: false,
        })
        .unwrap();
        let mut world = World {
            api,
            state,
            pki,
            guests: tempfile::tempdir().unwrap(),
            endpoint: None,
        };
        world.start_endpoint("127.0.0.1:0".parse().unwrap()).await;
        world
    }

    fn addr(&self) -> SocketAddr {
        self.endpoint.as_ref().expect("endpoint").0
    }

    async fn start_endpoint(&mut self, addr: SocketAddr) {
        let dir = self.pki.path();
        let tls = relay::server_config(
            &dir.join("server.pem"),
            &dir.join("server.key"),
            &dir.join("ca.pem"),
        )
        .unwrap();
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let endpoint = Endpoint {
            db: self.state.db.clone(),
            notifier: self.state.vnf.clone(),
            hosts: HostLinks::default(),
            tls,
            options: RelayOptions {
                shutdown_grace: Duration::from_secs(1),
                ..RelayOptions::default()
            },
        };
        let stop = CancellationToken::new();
        let task = tokio::spawn(relay::serve(listener, endpoint, stop.clone()));
        self.endpoint = Some((addr, stop, task));
    }

    async fn stop_endpoint(&mut self) -> SocketAddr {
        let (addr, stop, task) = self.endpoint.take().expect("endpoint");
        stop.cancel();
        tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
        addr
    }

    /// A relay-host configuration for `host` with the TLS files in `files`
    /// (`ca.pem`, `relay.pem`, `relay.key`, as `pki init` writes them per relay).
    fn relay_config(&self, host: &str, files: &Path) -> relay_host::Config {
        let mut config = relay_host::Config::new(
            self.addr().to_string(),
            files.join("ca.pem"),
            files.join("relay.pem"),
            files.join("relay.key"),
        );
        config.server_name = "localhost".into();
        config.host = host.into();
        config.shutdown_grace = Duration::from_secs(1);
        config
    }

    fn relay_files(&self, host: &str) -> PathBuf {
        self.pki.path().join("relays").join(host)
    }

    async fn relay(&self, host: &str) -> TestRelay {
        TestRelay::start(self.relay_config(host, &self.relay_files(host)), false)
            .await
            .unwrap()
    }

    /// Creates the instance's key through the API.
    async fn key(&self, instance: Uuid) -> InstanceKey {
        let (status, body) = self
            .api
            .post(
                &format!("/v2.0/vnf/instances/{instance}/key"),
                json!({"key": {}}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        InstanceKey::from_hex(body["key"]["key"].as_str().unwrap()).unwrap()
    }

    fn guest(&self, instance: Uuid, key: InstanceKey) -> FakeGuest {
        FakeGuest::bind(self.guests.path(), instance, key).unwrap()
    }

    async fn set(&self, instance: Uuid, service: &str, payload: Value) -> Value {
        let (status, body) = self
            .api
            .put(
                &format!("/v2.0/vnf/instances/{instance}/configs/{service}"),
                json!({"config": {"payload": payload}}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["config"].clone()
    }

    async fn config(&self, instance: Uuid, service: &str) -> Value {
        let (status, body) = self
            .api
            .get(&format!("/v2.0/vnf/instances/{instance}/configs/{service}"))
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["config"].clone()
    }

    /// Waits until the configuration has `status` at `version`; returns it.
    async fn wait_status(
        &self,
        instance: Uuid,
        service: &str,
        status: &str,
        version: u64,
    ) -> Value {
        eventually(
            &format!("{service} of {instance} {status} at v{version}"),
            || async {
                let c = self.config(instance, service).await;
                (c["status"] == status && c["version"] == version).then_some(c)
            },
        )
        .await
    }

    async fn hosts(&self) -> Vec<Value> {
        let (status, body) = self.api.get("/v2.0/vnf/hosts").await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["hosts"].as_array().unwrap().clone()
    }

    /// Waits until `host` is registered and connected (`true`) or disconnected (`false`) with
    /// exactly `guests`.
    async fn wait_host(&self, host: &str, connected: bool, guests: &[Uuid]) -> Value {
        let mut want: Vec<String> = guests.iter().map(Uuid::to_string).collect();
        want.sort();
        eventually(
            &format!("host {host} connected={connected} with {want:?}"),
            || {
                let want = want.clone();
                async move {
                    let hosts = self.hosts().await;
                    let h = hosts.into_iter().find(|h| h["host"] == host)?;
                    let got: Vec<String> = h["guests"]
                        .as_array()?
                        .iter()
                        .map(|g| g["instance_id"].as_str().unwrap_or_default().to_owned())
                        .collect();
                    (h["connected"] == connected && got == want).then_some(h)
                }
            },
        )
        .await
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if let Some((_, stop, _)) = &self.endpoint {
            stop.cancel();
        }
    }
}

/// One test per backend, each with a fresh [`World`].
macro_rules! relay_test {
    ($name:ident, |$w:ident| $body:expr) => {
        mod $name {
            use super::*;

            #[tokio::test]
            async fn sqlite() {
                #[allow(unused_mut)]
                let mut $w = World::start(Backend::Sqlite).await;
                $body.await
            }

            #[tokio::test]
            async fn postgres() {
                #[allow(unused_mut)]
                let mut $w = World::start(Backend::Postgres).await;
                let url = $w.api.url.clone();
                $body.await;
                common::pg::drop_database(&url).await;
            }
        }
    };
}

/// Waits for the agent to receive (and ack) `version` of `service`. Earlier pushes are
/// skipped: a guest whose channel opens while the relay registers handshakes twice, and a
/// level-triggered controller may then send the same version to both sessions.
async fn pushed(
    agent: &mut relay_host::testing::Agent,
    service: &str,
    version: u64,
) -> relay_protocol::ConfigPush {
    agent
        .wait_for(
            &format!("the push of {service} v{version}"),
            |ev| match ev {
                AgentEvent::Pushed(p) if p.service.as_str() == service && p.version == version => {
                    Some(p.clone())
                }
                _ => None,
            },
        )
        .await
        .unwrap()
}

relay_test!(
    relays_register_and_guests_converge_to_desired_config,
    |w| async move {
        let (key_a, key_b) = (w.key(A).await, w.key(B).await);
        // Set before any relay is connected: delivered on connect.
        let early = w.set(A, "files", json!({"files": []})).await;
        assert_eq!(
            (early["status"].clone(), early["version"].clone()),
            (json!("pending"), json!(1))
        );

        // Two relays at once, one guest each.
        let relay1 = w.relay("compute-1").await;
        let relay2 = w.relay("compute-2").await;
        let (guest_a, guest_b) = (w.guest(A, key_a), w.guest(B, key_b));
        relay1.up(guest_a.channel()).await.unwrap();
        relay2.up(guest_b.channel()).await.unwrap();
        let mut agent_a = guest_a.spawn_agent();
        let mut agent_b = guest_b.spawn_agent();
        let h1 = w.wait_host("compute-1", true, &[A]).await;
        w.wait_host("compute-2", true, &[B]).await;
        assert!(!h1["relay_version"].as_str().unwrap().is_empty());
        assert!(h1["guests"][0]["name"]
            .as_str()
            .unwrap()
            .starts_with("vnf-"));

        let p = pushed(&mut agent_a, "files", 1).await;
        assert_eq!(p.instance, A);
        assert_eq!(p.payload, br#"{"files":[]}"#);
        let applied = w.wait_status(A, "files", "applied", 1).await;
        assert_eq!(applied["applied_version"], 1);
        assert_eq!(applied["message"], Value::Null);

        // A set on a connected guest is pushed at once; the payload is the compact JSON.
        w.set(
            A,
            "firewall",
            json!({"rules": [ {"port": 22, "action": "accept"} ]}),
        )
        .await;
        let p = pushed(&mut agent_a, "firewall", 1).await;
        let sent: Value = serde_json::from_slice(&p.payload).unwrap();
        assert_eq!(sent, json!({"rules": [{"port": 22, "action": "accept"}]}));
        assert!(!p.payload.contains(&b' '), "compact JSON");
        w.wait_status(A, "firewall", "applied", 1).await;
        let v2 = w.set(A, "firewall", json!({"rules": []})).await;
        assert_eq!(v2["version"], 2);
        pushed(&mut agent_a, "firewall", 2).await;
        let c = w.wait_status(A, "firewall", "applied", 2).await;
        assert_eq!(c["applied_version"], 2);

        // The other relay's guest gets its own configuration, through its own relay.
        let raw = vec![0u8, 1, 2, 255];
        let (status, body) = w
            .api
            .put(
                &format!("/v2.0/vnf/instances/{B}/configs/vpn"),
                json!({"config": {"payload_base64": "AAEC/w=="}}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let p = pushed(&mut agent_b, "vpn", 1).await;
        assert_eq!((p.instance, p.payload), (B, raw));
        w.wait_status(B, "vpn", "applied", 1).await;

        // A guest going away leaves its relay's set.
        relay1.down(A).await.unwrap();
        w.wait_host("compute-1", true, &[]).await;
        relay1.stop().await.unwrap();
        relay2.stop().await.unwrap();
        w.wait_host("compute-1", false, &[]).await;
        w.wait_host("compute-2", false, &[B]).await;
    }
);

relay_test!(
    a_rejecting_guest_fails_the_config_with_its_reason,
    |w| async move {
        let key = w.key(A).await;
        w.set(A, "loadbalancer", json!({"backends": ["10.0.0.1:80"]}))
            .await;
        let relay = w.relay("compute-1").await;
        let guest = w.guest(A, key);
        relay.up(guest.channel()).await.unwrap();
        let mut conn: GuestConn = guest.accept().await.unwrap();
        conn.open().await.unwrap();
        conn.send(&Message::ConfigRequest(ConfigRequest { applied: vec![] }))
            .await
            .unwrap();
        let push = match conn.recv().await.unwrap() {
            Message::ConfigPush(p) => p,
            other => panic!("expected a push, got {other:?}"),
        };
        assert_eq!((push.instance, push.version), (A, 1));
        w.wait_status(A, "loadbalancer", "delivered", 1).await;
        conn.send(&Message::Ack(Ack {
            instance: A,
            service: push.service.clone(),
            config_id: push.config_id,
            version: 1,
            outcome: AckOutcome::Rejected {
                reason: "haproxy -c: unknown keyword 'backends'".into(),
            },
        }))
        .await
        .unwrap();
        let c = w.wait_status(A, "loadbalancer", "failed", 1).await;
        assert_eq!(c["message"], "haproxy -c: unknown keyword 'backends'");
        assert_eq!(c["applied_version"], Value::Null);

        // The fix is the next version; the guest applies it.
        w.set(A, "loadbalancer", json!({"servers": ["10.0.0.1:80"]}))
            .await;
        let push = match conn.recv().await.unwrap() {
            Message::ConfigPush(p) => p,
            other => panic!("expected a push, got {other:?}"),
        };
        assert_eq!(push.version, 2);
        conn.send(&Message::Ack(Ack {
            instance: A,
            service: push.service,
            config_id: push.config_id,
            version: 2,
            outcome: AckOutcome::Applied,
        }))
        .await
        .unwrap();
        let c = w.wait_status(A, "loadbalancer", "applied", 2).await;
        assert_eq!(c["message"], Value::Null);
        relay.stop().await.unwrap();
    }
);

relay_test!(
    a_reboot_report_updates_the_status_without_a_push,
    |w| async move {
        let key = w.key(A).await;
        let set = w.set(A, "firewall", json!({"rules": []})).await;
        let config_id = Uuid::parse_str(set["config_id"].as_str().unwrap()).unwrap();
        let relay = w.relay("compute-1").await;
        let guest = w.guest(A, key);
        relay.up(guest.channel()).await.unwrap();
        let mut conn = guest.accept().await.unwrap();
        conn.open().await.unwrap();
        // The agent reports version 1 as applied (it applied it before a controller database
        // restore, say): the status follows and nothing is pushed.
        conn.send(&Message::ConfigRequest(ConfigRequest {
            applied: vec![relay_protocol::AppliedConfig {
                service: ServiceName::new("firewall").unwrap(),
                config_id,
                version: 1,
            }],
        }))
        .await
        .unwrap();
        let c = w.wait_status(A, "firewall", "applied", 1).await;
        assert_eq!(c["applied_version"], 1);
        // The next version is pushed; nothing else came before it.
        w.set(A, "firewall", json!({"rules": [1]})).await;
        match conn.recv().await.unwrap() {
            Message::ConfigPush(p) => assert_eq!(p.version, 2),
            other => panic!("expected the push of version 2, got {other:?}"),
        }
        relay.stop().await.unwrap();
    }
);

relay_test!(relay_and_controller_restarts_converge, |w| async move {
    let key = w.key(A).await;
    w.set(A, "firewall", json!({"v": 1})).await;
    let relay = w.relay("compute-1").await;
    let guest = w.guest(A, key);
    let channel = guest.channel();
    relay.up(channel.clone()).await.unwrap();
    let mut agent = guest.spawn_agent();
    pushed(&mut agent, "firewall", 1).await;
    w.wait_status(A, "firewall", "applied", 1).await;

    // The relay restarts; meanwhile the desired state moves on.
    relay.stop().await.unwrap();
    w.wait_host("compute-1", false, &[A]).await;
    let v2 = w.set(A, "firewall", json!({"v": 2})).await;
    assert_eq!(v2["status"], "pending");
    let relay = w.relay("compute-1").await;
    relay.up(channel.clone()).await.unwrap();
    let p = pushed(&mut agent, "firewall", 2).await;
    assert_eq!(p.payload, br#"{"v":2}"#);
    w.wait_status(A, "firewall", "applied", 2).await;
    w.wait_host("compute-1", true, &[A]).await;

    // The controller's endpoint restarts: the relay reconnects and registers again, the guest
    // is asked to resync, and gets what changed while the endpoint was down.
    let addr = w.stop_endpoint().await;
    w.wait_host("compute-1", false, &[A]).await;
    w.set(A, "firewall", json!({"v": 3})).await;
    w.start_endpoint(addr).await;
    let p = pushed(&mut agent, "firewall", 3).await;
    assert_eq!(p.payload, br#"{"v":3}"#);
    w.wait_status(A, "firewall", "applied", 3).await;
    w.wait_host("compute-1", true, &[A]).await;
    relay.stop().await.unwrap();
});

relay_test!(
    relays_without_a_valid_certificate_are_refused,
    |w| async move {
        // A relay certificate from another CA (the relay itself trusts the endpoint).
        let other = tempfile::tempdir().unwrap();
        pki::init(&PkiOptions {
            dir: other.path().to_owned(),
            server_names: vec![],
            relays: vec!["compute-1".into()],
            force: false,
        })
        .unwrap();
        let files = other.path().join("relays/compute-1");
        std::fs::copy(w.pki.path().join("ca.pem"), files.join("ca.pem")).unwrap();
        let relay = TestRelay::start(w.relay_config("compute-1", &files), false)
            .await
            .unwrap();
        eventually("the relay's failed connects", || async {
            let errors = relay
                .metric("relay_uplink_connect_errors_total", &[])
                .unwrap_or(0.0);
            (errors >= 2.0).then_some(())
        })
        .await;
        assert_eq!(relay.metric("relay_uplink_connected", &[]), Some(0.0));
        relay.stop().await.unwrap();

        // A valid certificate for compute-1 registering as another host.
        let relay = TestRelay::start(
            w.relay_config("compute-2", &w.relay_files("compute-1")),
            false,
        )
        .await
        .unwrap();
        eventually("the relay's failed registrations", || async {
            let errors = relay
                .metric("relay_uplink_connect_errors_total", &[])
                .unwrap_or(0.0);
            (errors >= 2.0).then_some(())
        })
        .await;
        relay.stop().await.unwrap();

        // No client certificate at all.
        let roots = {
            let mut roots = rustls::RootCertStore::empty();
            let pem = std::fs::read(w.pki.path().join("ca.pem")).unwrap();
            use rustls_pki_types::pem::PemObject;
            for c in rustls_pki_types::CertificateDer::pem_slice_iter(&pem) {
                roots.add(c.unwrap()).unwrap();
            }
            roots
        };
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let tcp = tokio::net::TcpStream::connect(w.addr()).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let outcome = async {
            // In TLS 1.3 the client finishes its side first; the refusal arrives as an alert.
            let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
                .connect(name, tcp)
                .await?;
            let mut out = BytesMut::from(&PREAMBLE[..]);
            uplink::encode(
                &RelayMsg::Register(Register {
                    version: UPLINK_VERSION,
                    host: "compute-1".into(),
                    relay_version: "0".into(),
                    guests: vec![GuestInfo {
                        instance: A,
                        name: "a".into(),
                    }],
                }),
                &mut out,
            )
            .unwrap();
            tls.write_all(&out).await?;
            tls.flush().await?;
            let mut buf = Vec::new();
            tls.read_to_end(&mut buf).await.map(|_| buf)
        };
        match tokio::time::timeout(WAIT, outcome).await.unwrap() {
            Err(e) => assert!(
                e.to_string().to_lowercase().contains("certificate"),
                "refused for the certificate: {e}"
            ),
            Ok(bytes) => panic!(
                "a client without a certificate was served {} bytes",
                bytes.len()
            ),
        }

        // Nothing registered.
        assert_eq!(w.hosts().await, Vec::<Value>::new());
    }
);

relay_test!(
    a_guest_gets_and_answers_for_its_own_instance_only,
    |w| async move {
        w.key(A).await;
        let key_b = w.key(B).await;
        let config_a = w.set(A, "firewall", json!({"owner": "a"})).await;
        w.set(B, "firewall", json!({"owner": "b"})).await;
        let relay = w.relay("compute-1").await;

        // A guest on A's channel holding B's key: its frames do not verify as A's.
        let impostor = w.guest(A, key_b.clone());
        let honest = w.guest(B, key_b.clone());
        relay.up(impostor.channel()).await.unwrap();
        relay.up(honest.channel()).await.unwrap();
        let mut fake = impostor.accept().await.unwrap();
        fake.wait_resync().await.unwrap();
        let mut hello = BytesMut::new();
        let mut session = relay_protocol::Session::guest(&key_b);
        session
            .begin(
                7,
                &relay_protocol::Hello {
                    protocol_min: 1,
                    protocol_max: 1,
                    capabilities: 0,
                    agent_name: "impostor".into(),
                    agent_version: "0".into(),
                    services: vec![],
                },
                &mut hello,
            )
            .unwrap();
        fake.write_raw(&hello).await.unwrap();
        let a = A.to_string();
        eventually("the impostor's Hello to be rejected", || async {
            let n = relay
                .metric("relay_guest_auth_failures_total", &[("instance", &a)])
                .unwrap_or(0.0);
            (n >= 1.0).then_some(())
        })
        .await;

        // The honest guest B gets B's configuration only, and cannot ack for A.
        let mut conn = honest.accept().await.unwrap();
        conn.open().await.unwrap();
        conn.send(&Message::ConfigRequest(ConfigRequest { applied: vec![] }))
            .await
            .unwrap();
        let push = match conn.recv().await.unwrap() {
            Message::ConfigPush(p) => p,
            other => panic!("expected a push, got {other:?}"),
        };
        assert_eq!(
            (push.instance, push.payload.as_slice()),
            (B, &br#"{"owner":"b"}"#[..])
        );
        conn.send(&Message::Ack(Ack {
            instance: A,
            service: ServiceName::new("firewall").unwrap(),
            config_id: Uuid::parse_str(config_a["config_id"].as_str().unwrap()).unwrap(),
            version: 1,
            outcome: AckOutcome::Applied,
        }))
        .await
        .unwrap();
        match conn.recv().await.unwrap() {
            Message::Error(e) => assert_eq!(e.code, ErrorCode::NOT_PERMITTED, "{}", e.message),
            other => panic!("expected a refusal, got {other:?}"),
        }
        let a_config = w.config(A, "firewall").await;
        assert_eq!(a_config["status"], "pending", "{a_config}");
        assert_eq!(a_config["applied_version"], Value::Null);
        // B's own Ack counts.
        conn.send(&Message::Ack(Ack {
            instance: B,
            service: push.service,
            config_id: push.config_id,
            version: 1,
            outcome: AckOutcome::Applied,
        }))
        .await
        .unwrap();
        w.wait_status(B, "firewall", "applied", 1).await;
        assert_eq!(w.config(A, "firewall").await["status"], "pending");
        relay.stop().await.unwrap();
    }
);

/// A relay speaking the uplink by hand, for what relay-host does not do on request.
struct RawRelay {
    tls: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    buf: BytesMut,
    preamble: bool,
}

impl RawRelay {
    /// Connects with the client identity in `files` (as `pki init` wrote it).
    async fn connect(addr: SocketAddr, files: &Path) -> RawRelay {
        let ca = relay_host::tls::load_ca(&files.join("ca.pem")).unwrap();
        let identity =
            relay_host::tls::load_identity(&files.join("relay.pem"), &files.join("relay.key"), &ca)
                .unwrap();
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(ca)
        .with_client_auth_cert(identity.chain, identity.key)
        .unwrap();
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .unwrap();
        tls.write_all(&PREAMBLE).await.unwrap();
        RawRelay {
            tls,
            buf: BytesMut::new(),
            preamble: false,
        }
    }

    async fn send(&mut self, msgs: &[RelayMsg]) {
        let mut out = BytesMut::new();
        for m in msgs {
            uplink::encode(m, &mut out).unwrap();
        }
        self.tls.write_all(&out).await.unwrap();
        self.tls.flush().await.unwrap();
    }

    /// The next envelope; `None` when the controller closed the connection.
    async fn next(&mut self) -> Option<uplink::ControllerMsg> {
        tokio::time::timeout(WAIT, async {
            loop {
                if !self.preamble {
                    self.preamble = uplink::check_preamble(&mut self.buf).unwrap();
                }
                if self.preamble {
                    if let Some(m) = uplink::decode(&mut self.buf).unwrap() {
                        return Some(m);
                    }
                }
                match self.tls.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        })
        .await
        .expect("an envelope from the controller")
    }
}

fn guest_info(n: u128) -> GuestInfo {
    GuestInfo {
        instance: Uuid::from_u128(0xc000_0000_0000_4000_8000_0000_0000_0000 | n),
        name: format!("vm-{n}"),
    }
}

relay_test!(the_uplink_protocol_by_hand, |w| async move {
    use uplink::ControllerMsg;
    let files = w.relay_files("compute-1");
    let mut relay = RawRelay::connect(w.addr(), &files).await;
    let (g1, g2, g3, g4, g5, g6) = (
        guest_info(1),
        guest_info(2),
        guest_info(3),
        guest_info(4),
        guest_info(5),
        guest_info(6),
    );
    // A Register whose list continues as GuestUps (as relay-host sends a list too long for one
    // envelope), a heartbeat, and a frame from an instance without a key.
    relay
        .send(&[
            RelayMsg::Register(Register {
                version: UPLINK_VERSION,
                host: "Compute-1".into(),
                relay_version: "raw".into(),
                guests: vec![g1.clone(), g2.clone()],
            }),
            RelayMsg::GuestUp(g3.clone()),
            RelayMsg::GuestUp(g4.clone()),
            RelayMsg::Ping { nonce: 7 },
            RelayMsg::FromGuest {
                instance: g5.instance,
                frame: vec![1, 2, 3],
            },
        ])
        .await;
    match relay.next().await.unwrap() {
        ControllerMsg::Registered(r) => {
            assert_eq!(r.version, UPLINK_VERSION);
            assert_eq!(r.heartbeat_interval_ms, 10_000);
        }
        other => panic!("expected Registered, got {other:?}"),
    }
    // Every guest of the set is asked to resync: no session with it exists here.
    for g in [&g1, &g2, &g3, &g4] {
        assert_eq!(
            relay.next().await.unwrap(),
            ControllerMsg::ResyncGuest {
                instance: g.instance
            }
        );
    }
    assert_eq!(
        relay.next().await.unwrap(),
        ControllerMsg::Pong { nonce: 7 }
    );
    match relay.next().await.unwrap() {
        ControllerMsg::FrameRejected { instance, reason } => {
            assert_eq!(instance, g5.instance);
            assert!(reason.contains("no key"), "{reason}");
        }
        other => panic!("expected FrameRejected, got {other:?}"),
    }
    let host = w
        .wait_host(
            "compute-1",
            true,
            &[g1.instance, g2.instance, g3.instance, g4.instance],
        )
        .await;
    assert_eq!(host["relay_version"], "raw");

    // Later: a guest starting is not asked to resync (the relay's own marker starts its
    // session); a guest stopping leaves the set.
    relay
        .send(&[
            RelayMsg::GuestUp(g6.clone()),
            RelayMsg::GuestDown {
                instance: g1.instance,
            },
            RelayMsg::Ping { nonce: 8 },
        ])
        .await;
    assert_eq!(
        relay.next().await.unwrap(),
        ControllerMsg::Pong { nonce: 8 }
    );
    w.wait_host(
        "compute-1",
        true,
        &[g2.instance, g3.instance, g4.instance, g6.instance],
    )
    .await;

    // The same host connecting again replaces this connection and its guest set.
    let mut again = RawRelay::connect(w.addr(), &files).await;
    again
        .send(&[RelayMsg::Register(Register {
            version: UPLINK_VERSION,
            host: "compute-1".into(),
            relay_version: "raw-2".into(),
            guests: vec![g2.clone()],
        })])
        .await;
    assert!(matches!(
        again.next().await.unwrap(),
        ControllerMsg::Registered(_)
    ));
    // The old connection gets nothing more and is closed.
    if let Some(other) = relay.next().await {
        panic!("the replaced connection got {other:?}");
    }
    let host = w.wait_host("compute-1", true, &[g2.instance]).await;
    assert_eq!(host["relay_version"], "raw-2");

    // A relay speaking another uplink version is told ours and refused.
    let mut old = RawRelay::connect(w.addr(), &w.relay_files("compute-2")).await;
    old.send(&[RelayMsg::Register(Register {
        version: UPLINK_VERSION + 1,
        host: "compute-2".into(),
        relay_version: "future".into(),
        guests: vec![],
    })])
    .await;
    match old.next().await {
        Some(ControllerMsg::Registered(r)) => assert_eq!(r.version, UPLINK_VERSION),
        other => panic!("expected our version, got {other:?}"),
    }
    assert_eq!(old.next().await, None);
    assert_eq!(w.hosts().await.len(), 1, "compute-2 was not registered");
});
