//! The whole SFC path for data-path tests: the real controller (API over HTTP, the `ovs`
//! driver, the relay endpoint with `pki init` certificates) and real relay-hosts programming
//! private Open vSwitch instances, with "VMs" and service functions in network namespaces.
//! Flows reach the bridges only through API -> OVS driver -> relay uplink -> relay-host.
//!
//! A [`World`] is one controller (SQLite in a temporary directory) and one Neutron network;
//! a [`Host`] is one `TestOvs` with bridge `br-int` (its own daemons and namespace, so tests
//! run in parallel), named like the `binding:host_id` of the ports on it and served by a
//! relay-host registered under that name. Everything stops on drop (controller tasks by a
//! cancellation token, OVS daemons and namespaces by their own drops), panics included.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use controller_stub::api::sfc::Quotas;
use controller_stub::api::AppState;
use controller_stub::auth::Auth;
use controller_stub::db::Db;
use controller_stub::drivers::ovs::OvsDriver;
use controller_stub::drivers::DriverManager;
use controller_stub::pki::{self, PkiOptions};
use controller_stub::relay::{self, Endpoint, HostLinks, RelayOptions};
use controller_stub::CancellationToken;
use e2e_tests::netns::Netns;
use e2e_tests::ovs::{PortSpec, TestOvs};
use relay_host::ovs::OvsConfig;
use relay_host::testing::TestRelay;
use relay_protocol::Uuid;
use serde_json::{json, Value};

pub const BRIDGE: &str = "br-int";
/// Longest any wait may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(30);
/// The SF's interfaces inside its namespace.
pub const SF_IN: &str = "sfin";
pub const SF_OUT: &str = "sfout";

/// The controller: API, driver and relay endpoint, stopped on drop.
pub struct Controller {
    pub url: String,
    client: reqwest::Client,
    pub db: Db,
    pki: tempfile::TempDir,
    _dbdir: tempfile::TempDir,
    pub relay_addr: SocketAddr,
    shutdown: CancellationToken,
}

impl Drop for Controller {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Controller {
    /// Starts everything, with relay certificates for `hosts` and unlimited quotas.
    pub async fn start(hosts: &[&str]) -> Controller {
        let dbdir = tempfile::tempdir().unwrap();
        let db = Db::connect(&format!(
            "sqlite:{}",
            dbdir.path().join("controller.db").display()
        ))
        .await
        .unwrap();
        let links = HostLinks::default();
        let driver = OvsDriver::new(links.clone());
        let state = AppState::new(
            db.clone(),
            Auth::NoAuth {
                default_project: "admin".into(),
            },
        )
        .with_drivers(DriverManager::new(vec![Arc::new(driver.clone())]))
        .with_quotas(Quotas {
            port_pair: -1,
            port_pair_group: -1,
            flow_classifier: -1,
            port_chain: -1,
            service_graph: -1,
        });
        let shutdown = CancellationToken::new();
        let api = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", api.local_addr().unwrap());
        tokio::spawn(controller_stub::serve(api, state.clone(), shutdown.clone()));

        let pki = tempfile::tempdir().unwrap();
        pki::init(&PkiOptions {
            dir: pki.path().to_owned(),
            server_names: vec![],
            relays: hosts.iter().map(|h| h.to_string()).collect(),
            force: false,
        })
        .unwrap();
        let tls = relay::server_config(
            &pki.path().join("server.pem"),
            &pki.path().join("server.key"),
            &pki.path().join("ca.pem"),
        )
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let relay_addr = listener.local_addr().unwrap();
        let endpoint = Endpoint {
            db: db.clone(),
            notifier: state.vnf.clone(),
            hosts: links,
            tls,
            options: RelayOptions {
                shutdown_grace: Duration::from_secs(1),
                ..RelayOptions::default()
            },
        };
        tokio::spawn(relay::serve(listener, endpoint, shutdown.clone()));
        let (run_db, stop) = (db.clone(), shutdown.clone());
        tokio::spawn(async move { driver.run(run_db, Duration::from_secs(30), stop).await });
        Controller {
            url,
            client: reqwest::Client::new(),
            db,
            pki,
            _dbdir: dbdir,
            relay_addr,
            shutdown,
        }
    }

    /// A relay-host registered as `host`, programming `ovs`'s `br-int`.
    pub async fn relay(&self, host: &str, ovs: &TestOvs) -> TestRelay {
        let files = self.pki.path().join("relays").join(host);
        let mut config = relay_host::Config::new(
            self.relay_addr.to_string(),
            files.join("ca.pem"),
            files.join("relay.pem"),
            files.join("relay.key"),
        );
        config.server_name = "localhost".into();
        config.host = host.into();
        config.shutdown_grace = Duration::from_secs(1);
        let mut o = OvsConfig::new(BRIDGE);
        o.db = Some(ovs.db());
        o.rundir = Some(ovs.rundir().to_owned());
        o.poll_interval = Duration::from_millis(200);
        config.ovs = Some(o);
        TestRelay::start(config, false).await.unwrap()
    }

    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = self.client.request(method, format!("{}{path}", self.url));
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// POSTs `{key: body}` and returns the created resource.
    pub async fn create(&self, path: &str, key: &str, body: Value) -> Value {
        let (status, out) = self
            .call(reqwest::Method::POST, path, Some(json!({ key: body })))
            .await;
        assert_eq!(status, 201, "POST {path}: {out}");
        out[key].clone()
    }

    pub async fn update(&self, path: &str, key: &str, body: Value) -> Value {
        let (status, out) = self
            .call(reqwest::Method::PUT, path, Some(json!({ key: body })))
            .await;
        assert_eq!(status, 200, "PUT {path}: {out}");
        out[key].clone()
    }

    pub async fn delete(&self, path: &str) {
        let (status, out) = self.call(reqwest::Method::DELETE, path, None).await;
        assert_eq!(status, 204, "DELETE {path}: {out}");
    }

    /// The chain's per-host status rows.
    pub async fn status(&self, chain: &str) -> Vec<Value> {
        let (status, out) = self
            .call(
                reqwest::Method::GET,
                &format!("/v2.0/sfc/port_chains/{chain}/status"),
                None,
            )
            .await;
        assert_eq!(status, 200, "{out}");
        out["port_chain_status"]["hosts"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Waits until every host of the chain reports its current rules installed; returns the
    /// rows.
    pub async fn wait_installed(&self, chain: &str, hosts: usize) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let rows = self.status(chain).await;
            if rows.len() == hosts && rows.iter().all(|r| r["state"] == "installed") {
                return rows;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "chain {chain} not installed: {rows:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// One compute host: a private Open vSwitch with `br-int`.
pub struct Host {
    pub name: String,
    pub ovs: TestOvs,
}

impl Host {
    pub fn new(name: &str) -> Host {
        let ovs = TestOvs::start().unwrap();
        ovs.add_bridge(BRIDGE).unwrap();
        Host {
            name: name.into(),
            ovs,
        }
    }

    /// Our flows on the bridge (cookie prefix 0x5fc0), sorted.
    pub fn our_flows(&self) -> Vec<String> {
        let mut f: Vec<String> = self
            .ovs
            .flows(BRIDGE)
            .unwrap()
            .into_iter()
            .filter(|l| l.starts_with("cookie=0x5fc0"))
            .collect();
        f.sort();
        f
    }
}

/// A VM: a namespace with one port.
pub struct Vm {
    pub ns: Netns,
    pub id: String,
    pub mac: String,
    pub ip: String,
}

/// A service function: a namespace forwarding between its two ports.
pub struct Sf {
    pub ns: Netns,
    pub pair: String,
    pub ingress: String,
    pub egress: String,
}

impl Sf {
    /// Frames that reached the SF's ingress interface.
    pub fn received(&self) -> u64 {
        self.ns.link_stats(SF_IN).unwrap().rx_packets
    }

    /// Frames forwarded ingress -> egress (the forward direction).
    pub fn forwarded(&self) -> u64 {
        self.ns.link_stats(SF_OUT).unwrap().tx_packets
    }

    /// Frames forwarded egress -> ingress (the reverse path of a symmetric chain).
    pub fn returned(&self) -> u64 {
        self.ns.link_stats(SF_IN).unwrap().tx_packets
    }
}

/// The controller and one network.
pub struct World {
    pub ctl: Controller,
    pub net: String,
    next: AtomicU8,
}

impl World {
    pub async fn start(hosts: &[&str]) -> World {
        let ctl = Controller::start(hosts).await;
        let net = ctl
            .create("/v2.0/networks", "network", json!({"name": "net"}))
            .await;
        World {
            ctl,
            net: net["id"].as_str().unwrap().to_owned(),
            next: AtomicU8::new(1),
        }
    }

    fn mac(&self) -> String {
        format!(
            "fa:16:3e:00:00:{:02x}",
            self.next.fetch_add(1, Ordering::Relaxed)
        )
    }

    async fn port(&self, host: &Host, mac: &str, device: &str) -> String {
        let p = self
            .ctl
            .create(
                "/v2.0/ports",
                "port",
                json!({"network_id": self.net, "mac_address": mac, "device_id": device,
                       "binding:host_id": host.name}),
            )
            .await;
        p["id"].as_str().unwrap().to_owned()
    }

    /// A VM with address `ip` (/24) on `host`.
    pub async fn vm(&self, host: &Host, tag: &str, ip: &str) -> Vm {
        let mac = self.mac();
        let id = self.port(host, &mac, &format!("vm-{tag}")).await;
        let ns = Netns::new(tag).unwrap();
        host.ovs
            .attach(
                BRIDGE,
                &ns,
                &PortSpec {
                    iface_id: Uuid::parse_str(&id).unwrap(),
                    mac: mac.clone(),
                    ifname: "eth0".into(),
                    addr: Some(format!("{ip}/24")),
                },
            )
            .unwrap();
        Vm {
            ns,
            id,
            mac,
            ip: ip.into(),
        }
    }

    /// An SF on `host` with a port pair; it forwards both ways when `both_ways` (for symmetric
    /// chains).
    pub async fn sf(&self, host: &Host, tag: &str, both_ways: bool, params: Value) -> Sf {
        let sf = self.sf_ports(host, tag, params).await;
        sf.ns.forward(SF_IN, SF_OUT).unwrap();
        if both_ways {
            sf.ns.forward(SF_OUT, SF_IN).unwrap();
        }
        sf
    }

    /// An SF that only receives (a tap's analyser): nothing leaves its egress.
    pub async fn sink(&self, host: &Host, tag: &str) -> Sf {
        self.sf_ports(host, tag, Value::Null).await
    }

    async fn sf_ports(&self, host: &Host, tag: &str, params: Value) -> Sf {
        let device = format!("sf-{tag}");
        let (in_mac, out_mac) = (self.mac(), self.mac());
        let ingress = self.port(host, &in_mac, &device).await;
        let egress = self.port(host, &out_mac, &device).await;
        let ns = Netns::new(tag).unwrap();
        for (id, mac, ifname) in [(&ingress, &in_mac, SF_IN), (&egress, &out_mac, SF_OUT)] {
            host.ovs
                .attach(
                    BRIDGE,
                    &ns,
                    &PortSpec {
                        iface_id: Uuid::parse_str(id).unwrap(),
                        mac: mac.clone(),
                        ifname: ifname.into(),
                        addr: None,
                    },
                )
                .unwrap();
        }
        let mut body = json!({"name": tag, "ingress": ingress, "egress": egress});
        if !params.is_null() {
            body["service_function_parameters"] = params;
        }
        let pair = self
            .ctl
            .create("/v2.0/sfc/port_pairs", "port_pair", body)
            .await;
        Sf {
            ns,
            pair: pair["id"].as_str().unwrap().to_owned(),
            ingress,
            egress,
        }
    }

    pub async fn group(&self, sfs: &[&Sf], params: Value) -> String {
        let mut body =
            json!({"port_pairs": sfs.iter().map(|s| s.pair.clone()).collect::<Vec<_>>()});
        if !params.is_null() {
            body["port_pair_group_parameters"] = params;
        }
        let g = self
            .ctl
            .create("/v2.0/sfc/port_pair_groups", "port_pair_group", body)
            .await;
        g["id"].as_str().unwrap().to_owned()
    }

    /// A UDP (or TCP) classifier from `src` to `dst` on destination port `port`.
    pub async fn classifier(&self, src: &Vm, dst: &Vm, protocol: &str, port: u16) -> String {
        let fc = self
            .ctl
            .create(
                "/v2.0/sfc/flow_classifiers",
                "flow_classifier",
                json!({"protocol": protocol,
                       "source_ip_prefix": format!("{}/32", src.ip),
                       "destination_ip_prefix": format!("{}/32", dst.ip),
                       "destination_port_range_min": port,
                       "destination_port_range_max": port,
                       "logical_source_port": src.id,
                       "logical_destination_port": dst.id}),
            )
            .await;
        fc["id"].as_str().unwrap().to_owned()
    }

    pub async fn chain(&self, groups: &[&str], classifiers: &[&str], params: Value) -> String {
        let mut body = json!({"port_pair_groups": groups, "flow_classifiers": classifiers});
        if !params.is_null() {
            body["chain_parameters"] = params;
        }
        let c = self
            .ctl
            .create("/v2.0/sfc/port_chains", "port_chain", body)
            .await;
        c["id"].as_str().unwrap().to_owned()
    }
}

/// Makes two VMs known to each other and to the bridge's MAC learning: one ARP exchange
/// and a datagram each way (to the discard port). Without it the bridge floods frames to an
/// unlearned MAC to every port, SF ports included, and the SFs forward the copies back.
pub fn neighbours(a: &Vm, b: &Vm) {
    let sa = udp(a, 0);
    let sb = udp(b, 0);
    sa.send_to(b"hello", (b.ip.as_str(), 9)).unwrap();
    sb.send_to(b"hello", (a.ip.as_str(), 9)).unwrap();
    // Both neighbour entries resolved (the kernel answers ARP at once on a veth).
    let deadline = std::time::Instant::now() + WAIT;
    for (vm, peer) in [(a, b), (b, a)] {
        loop {
            let out = vm.ns.ip(&["neigh", "show", &peer.ip]).unwrap();
            if out.contains("REACHABLE") || out.contains("STALE") || out.contains("DELAY") {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "no ARP: {out}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A UDP socket of `vm` on `port` (0: any), reads time out after 3 s.
pub fn udp(vm: &Vm, port: u16) -> UdpSocket {
    let ip = vm.ip.clone();
    let s = vm
        .ns
        .run(move || UdpSocket::bind((ip.as_str(), port)))
        .unwrap()
        .unwrap();
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s
}

/// Sends one datagram and reads it at the receiver; false when it did not arrive.
pub fn udp_roundtrip(tx: &UdpSocket, rx: &UdpSocket, to: (&str, u16), payload: &[u8]) -> bool {
    tx.send_to(payload, to).unwrap();
    let mut buf = [0u8; 2048];
    matches!(rx.recv(&mut buf), Ok(n) if &buf[..n] == payload)
}
