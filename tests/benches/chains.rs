//! Port-chain programming time: from the port-chain create API call to every flow of the chain
//! installed on a real Open vSwitch (userspace datapath) by the relay-host, for 1 chain and for
//! N chains (500 unless `CHAIN_BENCH_CHAINS` says otherwise), against the baseline of loading
//! the identical groups and flows in the same run with `ovs-ofctl add-groups` and one
//! `ovs-ofctl --bundle add-flows` into an empty bridge.
//!
//! The whole path runs: HTTP API, database, `ovs` driver, relay uplink (mutual TLS), relay-host,
//! `ovs-ofctl` bundles. "Installed" is the relay's `ChainStatus` report recorded by the driver
//! (`sfc_ovs_chain_hosts.state`), read straight from the database so that polling costs
//! nothing measurable. Chains are two hops over port pair groups from a pool of SFs (ordered
//! pairs of groups, since two chains may not share an identical group list), each with a UDP
//! classifier of its own destination port; SF ports are internal ports with the Neutron ids.
//!
//! N chains are measured twice: created in one bulk call (`{"port_chains": [...]}`, one
//! transaction) and created one call after the other.
//!
//! Run: `make bench-chains` (root, like the data-path tests).
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../tests/sfc_common/mod.rs"]
mod sfc_common;

use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sfc_common::*;

const HOST: &str = "bench-host";

/// A port with a Neutron id on the bridge (an internal port: no namespace needed).
async fn internal_port(w: &World, host: &Host, device: &str, n: usize) -> String {
    let mac = format!("fa:16:3e:01:{:02x}:{:02x}", n / 256, n % 256);
    let p = w
        .ctl
        .create(
            "/v2.0/ports",
            "port",
            json!({"network_id": w.net, "mac_address": mac, "device_id": device,
                   "binding:host_id": HOST}),
        )
        .await;
    let id = p["id"].as_str().unwrap().to_owned();
    let name = format!("ip{n}");
    host.ovs
        .vsctl(&[
            "add-port",
            BRIDGE,
            &name,
            "--",
            "set",
            "Interface",
            &name,
            "type=internal",
            &format!("external_ids:iface-id={id}"),
        ])
        .unwrap();
    id
}

async fn installed(w: &World) -> i64 {
    controller_stub::drivers::ovs::count_installed(&w.ctl.db)
        .await
        .unwrap()
}

async fn wait_installed(w: &World, n: i64) {
    let deadline = Instant::now() + Duration::from_secs(600);
    while installed(w).await < n {
        assert!(Instant::now() < deadline, "chains not installed");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Loads the bridge's groups and flows of ours into a fresh bridge the baseline way; returns
/// (groups time, flows time, flow count).
fn baseline(host: &Host, bridge: &str) -> (Duration, Duration, usize) {
    host.ovs.add_bridge(bridge).unwrap();
    // A new bridge has its default NORMAL flow.
    let preset = host.ovs.flows(bridge).unwrap().len();
    let dir = tempfile::tempdir().unwrap();
    let groups = host
        .ovs
        .ofctl(&["-O", "OpenFlow15", "dump-groups", BRIDGE])
        .unwrap();
    let groups: Vec<&str> = groups
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("group_id="))
        .collect();
    let flows = host.our_flows();
    let gfile = dir.path().join("groups");
    let ffile = dir.path().join("flows");
    std::fs::write(&gfile, groups.join("\n") + "\n").unwrap();
    std::fs::write(&ffile, flows.join("\n") + "\n").unwrap();
    let t = Instant::now();
    host.ovs
        .ofctl(&[
            "-O",
            "OpenFlow15",
            "add-groups",
            bridge,
            gfile.to_str().unwrap(),
        ])
        .unwrap();
    let tg = t.elapsed();
    let t = Instant::now();
    host.ovs
        .ofctl(&[
            "-O",
            "OpenFlow15",
            "--bundle",
            "add-flows",
            bridge,
            ffile.to_str().unwrap(),
        ])
        .unwrap();
    let tf = t.elapsed();
    let loaded = host.ovs.flows(bridge).unwrap().len();
    assert_eq!(
        loaded,
        preset + flows.len(),
        "the baseline loaded every flow"
    );
    (tg, tf, flows.len())
}

/// Waits until only the base flows are left on the bridge.
async fn wait_base_only(host: &Host) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while host.our_flows().len() > 2 {
        assert!(Instant::now() < deadline, "chains not removed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

struct Row {
    chains: usize,
    how: &'static str,
    flows: usize,
    ours: Duration,
    base_groups: Duration,
    base_flows: Duration,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let many: usize = std::env::var("CHAIN_BENCH_CHAINS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500);
    let w = World::start(&[HOST]).await;
    let host = Host::new(HOST);
    let relay = w.ctl.relay(HOST, &host.ovs).await;
    let src = internal_port(&w, &host, "vm-src", 0).await;
    let dst = internal_port(&w, &host, "vm-dst", 1).await;

    // SF pool: k groups of one pair each give k * (k - 1) two-hop chains.
    let k = (2..).find(|k| k * (k - 1) > many).unwrap();
    let mut groups = Vec::new();
    for i in 0..k {
        let device = format!("sf-{i}");
        let ingress = internal_port(&w, &host, &device, 2 + 2 * i).await;
        let egress = internal_port(&w, &host, &device, 3 + 2 * i).await;
        let pp = w
            .ctl
            .create(
                "/v2.0/sfc/port_pairs",
                "port_pair",
                json!({"ingress": ingress, "egress": egress}),
            )
            .await;
        let g = w
            .ctl
            .create(
                "/v2.0/sfc/port_pair_groups",
                "port_pair_group",
                json!({"port_pairs": [pp["id"]], "port_pair_group_parameters": {"lb_fields": ["udp_src"]}}),
            )
            .await;
        groups.push(g["id"].as_str().unwrap().to_owned());
    }
    let pairs: Vec<(usize, usize)> = (0..k)
        .flat_map(|a| (0..k).filter(move |b| *b != a).map(move |b| (a, b)))
        .collect();
    // Classifiers are made up front: the measurement is of the chain create.
    let mut fcs = Vec::new();
    for i in 0..=many {
        let fc = w
            .ctl
            .create(
                "/v2.0/sfc/flow_classifiers",
                "flow_classifier",
                json!({"protocol": "udp", "destination_port_range_min": 10000 + i,
                       "destination_port_range_max": 10000 + i,
                       "logical_source_port": src, "logical_destination_port": dst}),
            )
            .await;
        fcs.push(fc["id"].as_str().unwrap().to_owned());
    }
    // Let the relay settle (base flows) before measuring.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let create = |i: usize| {
        let (a, b) = pairs[i];
        json!({"port_pair_groups": [groups[a], groups[b]], "flow_classifiers": [fcs[i]]})
    };
    let mut rows = Vec::new();
    // One chain.
    let t = Instant::now();
    let c: Value = w
        .ctl
        .create("/v2.0/sfc/port_chains", "port_chain", create(0))
        .await;
    wait_installed(&w, 1).await;
    let ours = t.elapsed();
    let flows = host.our_flows().len();
    let (bg, bf, _) = baseline(&host, "br-base1");
    rows.push(Row {
        chains: 1,
        how: "one call",
        flows,
        ours,
        base_groups: bg,
        base_flows: bf,
    });
    w.ctl
        .delete(&format!(
            "/v2.0/sfc/port_chains/{}",
            c["id"].as_str().unwrap()
        ))
        .await;
    wait_base_only(&host).await;

    // N chains in one bulk create (one API call, one transaction).
    let t = Instant::now();
    let items: Vec<Value> = (1..=many).map(create).collect();
    let (status, body) = w
        .ctl
        .call(
            reqwest::Method::POST,
            "/v2.0/sfc/port_chains",
            Some(json!({ "port_chains": items })),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let bulk_api = t.elapsed();
    wait_installed(&w, many as i64).await;
    let ours = t.elapsed();
    let flows = host.our_flows().len();
    let (bg, bf, _) = baseline(&host, "br-base2");
    rows.push(Row {
        chains: many,
        how: "one bulk call",
        flows,
        ours,
        base_groups: bg,
        base_flows: bf,
    });
    for chain in body["port_chains"].as_array().unwrap() {
        w.ctl
            .delete(&format!(
                "/v2.0/sfc/port_chains/{}",
                chain["id"].as_str().unwrap()
            ))
            .await;
    }
    wait_base_only(&host).await;

    // N chains, one create call after the other.
    let t = Instant::now();
    let mut latencies = Vec::with_capacity(many);
    for i in 1..=many {
        let one = Instant::now();
        w.ctl
            .create("/v2.0/sfc/port_chains", "port_chain", create(i))
            .await;
        latencies.push(one.elapsed());
    }
    let api_done = t.elapsed();
    wait_installed(&w, many as i64).await;
    let ours = t.elapsed();
    let flows = host.our_flows().len();
    let (bg, bf, _) = baseline(&host, "br-base3");
    rows.push(Row {
        chains: many,
        how: "one call each",
        flows,
        ours,
        base_groups: bg,
        base_flows: bf,
    });

    println!("port-chain create -> flows installed (userspace OVS, one host)");
    println!(
        "{:>7} {:>14} {:>7} {:>11} {:>13} {:>13} {:>13} {:>7}",
        "chains", "API", "flows", "flows/chain", "ours", "base groups", "base flows", "ratio"
    );
    for r in &rows {
        let base = r.base_groups + r.base_flows;
        println!(
            "{:>7} {:>14} {:>7} {:>11.1} {:>11.1}ms {:>11.1}ms {:>11.1}ms {:>6.1}x",
            r.chains,
            r.how,
            r.flows,
            (r.flows - 2) as f64 / r.chains as f64,
            r.ours.as_secs_f64() * 1e3,
            r.base_groups.as_secs_f64() * 1e3,
            r.base_flows.as_secs_f64() * 1e3,
            r.ours.as_secs_f64() / base.as_secs_f64()
        );
    }
    println!(
        "({many} chains: the bulk call returned after {:.1} ms, the single calls were done after \
         {:.1} ms; flows counts include the 2 base flows)",
        bulk_api.as_secs_f64() * 1e3,
        api_done.as_secs_f64() * 1e3
    );
    // How the create call itself grows with the number of chains (the API checks a new
    // chain's classifiers against every other chain's).
    let tenth = (many / 10).max(1);
    let mean = |d: &[Duration]| d.iter().sum::<Duration>().as_secs_f64() * 1e3 / d.len() as f64;
    println!(
        "(create call: mean {:.1} ms over the first {tenth} chains, {:.1} ms over the last {tenth})",
        mean(&latencies[..tenth]),
        mean(&latencies[latencies.len() - tenth..])
    );
    relay.stop().await.unwrap();
}
