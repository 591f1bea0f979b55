//! A restart keeps everything: a full set of resources (networks, subnets, ports, every
//! networking-sfc resource, a VNF configuration) reads back identical from a new server on the
//! same database, and the allocators (addresses, VXLAN ids, group and chain ids, creation order)
//! carry on where they stopped.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::TestApi;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const VM_SF1: &str = "7d7d2b0e-21c4-4d0e-9f5b-4a51c8e0a001";
const VM_SF2: &str = "7d7d2b0e-21c4-4d0e-9f5b-4a51c8e0a002";

async fn port(api: &TestApi, body: Value) -> Value {
    api.create("/v2.0/ports", "port", body).await
}

fn id(v: &Value) -> String {
    v["id"].as_str().unwrap().to_string()
}

/// Everything a client can read: every collection as the admin, and a project's own view
/// (which hides the binding details).
async fn snapshot(api: &TestApi) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for path in [
        "/v2.0/networks".to_string(),
        "/v2.0/subnets".to_string(),
        "/v2.0/ports".to_string(),
        "/v2.0/sfc/port_pairs".to_string(),
        "/v2.0/sfc/port_pair_groups".to_string(),
        "/v2.0/sfc/flow_classifiers".to_string(),
        "/v2.0/sfc/port_chains".to_string(),
        "/v2.0/sfc/service_graphs".to_string(),
        format!("/v2.0/vnf/instances/{VM_SF1}/configs"),
    ] {
        let (status, body) = api.get(&path).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        out.push((path, body));
    }
    for path in ["/v2.0/networks", "/v2.0/subnets", "/v2.0/ports"] {
        let (status, body) = api.call(Method::GET, path, None, Some("p1")).await;
        assert_eq!(status, StatusCode::OK);
        out.push((format!("p1 {path}"), body));
    }
    out
}

api_test!(everything_survives_a_restart, |api| async move {
    let net_a = api
        .create(
            "/v2.0/networks",
            "network",
            json!({"name": "a", "description": "data"}),
        )
        .await;
    let (status, net_b) = api
        .call(
            Method::POST,
            "/v2.0/networks",
            Some(json!({"network": {"name": "b", "shared": true, "mtu": 1400}})),
            Some("p1"),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let net_b = net_b["network"].clone();
    let a4 = api
        .create(
            "/v2.0/subnets",
            "subnet",
            json!({"network_id": id(&net_a), "cidr": "10.0.0.0/24", "ip_version": 4,
                   "allocation_pools": [{"start": "10.0.0.10", "end": "10.0.0.99"}],
                   "dns_nameservers": ["10.0.0.53"],
                   "host_routes": [{"destination": "192.168.0.0/16", "nexthop": "10.0.0.254"}]}),
        )
        .await;
    api.create(
        "/v2.0/subnets",
        "subnet",
        json!({"network_id": id(&net_a), "cidr": "fd00:1::/64", "ip_version": 6}),
    )
    .await;
    let (status, _) = api
        .call(
            Method::POST,
            "/v2.0/subnets",
            Some(
                json!({"subnet": {"network_id": id(&net_b), "cidr": "10.1.0.0/24",
                                   "ip_version": 4, "gateway_ip": null, "enable_dhcp": false}}),
            ),
            Some("p1"),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);

    let src = port(
        &api,
        json!({"network_id": id(&net_a), "name": "src", "device_id": "vm-src",
                          "binding:host_id": "h1", "tags": ["web"],
                          "binding:profile": {"pci_slot": "0000:00:04.0"},
                          "fixed_ips": [{"ip_address": "10.0.0.5"}, {"subnet_id": id(&a4)}]}),
    )
    .await;
    let sf1_in = port(
        &api,
        json!({"network_id": id(&net_a), "name": "sf1-in", "device_id": VM_SF1,
                             "binding:host_id": "h1", "mac_address": "fa:16:3e:00:01:01"}),
    )
    .await;
    let sf1_out = port(
        &api,
        json!({"network_id": id(&net_a), "name": "sf1-out", "device_id": VM_SF1,
                              "binding:host_id": "h1", "port_security_enabled": false}),
    )
    .await;
    let sf2_in = port(
        &api,
        json!({"network_id": id(&net_a), "name": "sf2-in", "device_id": VM_SF2,
                             "binding:host_id": "h2",
                             "allowed_address_pairs": [{"ip_address": "10.0.0.0/24"}]}),
    )
    .await;
    let sf2_out = port(
        &api,
        json!({"network_id": id(&net_a), "name": "sf2-out", "device_id": VM_SF2,
                              "binding:host_id": "h2", "admin_state_up": false}),
    )
    .await;
    port(
        &api,
        json!({"network_id": id(&net_a), "name": "dst", "device_id": "vm-dst"}),
    )
    .await;
    let (status, _) = api
        .call(
            Method::POST,
            "/v2.0/ports",
            Some(json!({"port": {"network_id": id(&net_b), "name": "p1-port",
                                 "fixed_ips": [{"ip_address": "10.1.0.77"}]}})),
            Some("p1"),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);

    let pp1 = api
        .create(
            "/v2.0/sfc/port_pairs",
            "port_pair",
            json!({"name": "pp1", "ingress": id(&sf1_in), "egress": id(&sf1_out),
                   "service_function_parameters": {"correlation": "mpls", "weight": 2}}),
        )
        .await;
    let pp2 = api
        .create(
            "/v2.0/sfc/port_pairs",
            "port_pair",
            json!({"name": "pp2", "ingress": id(&sf2_in), "egress": id(&sf2_out),
                   "service_function_parameters": {"correlation": "mpls"}}),
        )
        .await;
    let ppg1 = api
        .create(
            "/v2.0/sfc/port_pair_groups",
            "port_pair_group",
            json!({"name": "ppg1", "port_pairs": [id(&pp1)],
                   "port_pair_group_parameters": {"lb_fields": ["ip_src", "ip_dst"]}}),
        )
        .await;
    let ppg2 = api
        .create(
            "/v2.0/sfc/port_pair_groups",
            "port_pair_group",
            json!({"name": "ppg2", "port_pairs": [id(&pp2)]}),
        )
        .await;
    let fc1 = api
        .create(
            "/v2.0/sfc/flow_classifiers",
            "flow_classifier",
            json!({"name": "web", "protocol": "tcp", "destination_port_range_min": 80,
                   "destination_port_range_max": 80, "source_ip_prefix": "10.0.0.0/24",
                   "logical_source_port": id(&src)}),
        )
        .await;
    let fc2 = api
        .create(
            "/v2.0/sfc/flow_classifiers",
            "flow_classifier",
            json!({"name": "dns", "protocol": "udp", "destination_port_range_min": 53,
                   "destination_port_range_max": 53, "logical_source_port": id(&src)}),
        )
        .await;
    let pc1 = api
        .create(
            "/v2.0/sfc/port_chains",
            "port_chain",
            json!({"name": "pc1", "port_pair_groups": [id(&ppg1)], "flow_classifiers": [id(&fc1)],
                   "chain_parameters": {"correlation": "mpls", "symmetric": false}}),
        )
        .await;
    let pc2 = api
        .create(
            "/v2.0/sfc/port_chains",
            "port_chain",
            json!({"name": "pc2", "port_pair_groups": [id(&ppg2)], "flow_classifiers": [id(&fc2)]}),
        )
        .await;
    api.create(
        "/v2.0/sfc/service_graphs",
        "service_graph",
        json!({"name": "g", "port_chains": { id(&pc1): [id(&pc2)] }}),
    )
    .await;
    let (status, body) = api
        .put(
            &format!("/v2.0/vnf/instances/{VM_SF1}/configs/firewall"),
            json!({"config": {"payload": {"rules": [{"allow": "tcp/80"}]}}}),
        )
        .await;
    assert!(status.is_success(), "{status}: {body}");
    // Some updates, so that revisions and timestamps differ from creation.
    let (status, _) = api
        .put(
            &format!("/v2.0/ports/{}", id(&src)),
            json!({"port": {"description": "client"}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _) = api
        .put(
            &format!("/v2.0/sfc/port_chains/{}", id(&pc2)),
            json!({"port_chain": {"description": "second"}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);

    let before = snapshot(&api).await;
    // Nothing is empty: the comparison below compares something.
    for (path, body) in &before {
        let items = body.as_object().unwrap().values().next().unwrap();
        assert!(
            !items.as_array().unwrap().is_empty(),
            "{path} is empty: {body}"
        );
    }
    let api = api.restart().await;
    let after = snapshot(&api).await;
    for ((path, b), (_, a)) in before.iter().zip(&after) {
        assert_eq!(a, b, "{path} changed across the restart");
    }

    // The allocators continue: next free address, VXLAN id, group id, chain id, and the new
    // resources come last in the lists.
    let p = port(
        &api,
        json!({"network_id": id(&net_a), "fixed_ips": [{"subnet_id": id(&a4)}]}),
    )
    .await;
    assert_eq!(p["fixed_ips"][0]["ip_address"], "10.0.0.16");
    let n = api
        .create("/v2.0/networks", "network", json!({"name": "c"}))
        .await;
    assert_eq!(n["provider:segmentation_id"], 3);
    let (_, ports) = api.get("/v2.0/ports").await;
    assert_eq!(
        ports["ports"].as_array().unwrap().last().unwrap()["id"],
        p["id"]
    );
    let ppg3 = api
        .create(
            "/v2.0/sfc/port_pair_groups",
            "port_pair_group",
            json!({"name": "ppg3"}),
        )
        .await;
    assert_eq!(ppg3["group_id"], 3);
    assert_eq!(ppg1["group_id"], 1);
    let pc3 = api
        .create(
            "/v2.0/sfc/port_chains",
            "port_chain",
            json!({"name": "pc3", "port_pair_groups": [id(&ppg2), id(&ppg1)]}),
        )
        .await;
    assert_eq!(pc3["chain_id"], 3);
    assert_eq!(pc1["chain_id"], 1);
});
