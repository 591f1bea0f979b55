//! The `ovs` driver's checks as the API shows them (reference/networking-sfc.md §1.4, §1.5,
//! §2.10), its record of what it computed per host (`/v2.0/sfc/port_chains/{id}/status`), and
//! that no relay being connected does not fail an API call. The data path itself is tested on
//! real Open vSwitch in `tests/tests/sfc_datapath*.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod sfc_common;

use std::sync::Arc;

use common::{assert_error, Backend, TestApi};
use controller_stub::api::sfc::Quotas;
use controller_stub::drivers::ovs::OvsDriver;
use controller_stub::drivers::DriverManager;
use controller_stub::relay::HostLinks;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sfc_common::*;

async fn api(backend: Backend) -> TestApi {
    TestApi::start_with(backend, |state| {
        let driver = OvsDriver::new(HostLinks::default());
        // Quotas lifted: the bulk test makes more chains than the default 10.
        state
            .with_drivers(DriverManager::new(vec![Arc::new(driver)]))
            .with_quotas(Quotas {
                port_pair: -1,
                port_pair_group: -1,
                flow_classifier: -1,
                port_chain: -1,
                service_graph: -1,
            })
    })
    .await
}

/// One test per backend on a controller whose only driver is `ovs`.
macro_rules! ovs_test {
    ($name:ident, |$api:ident| $body:expr) => {
        mod $name {
            use super::*;

            async fn run(backend: Backend) {
                let $api = api(backend).await;
                let url = $api.url.clone();
                $body.await;
                if backend == Backend::Postgres {
                    common::pg::drop_database(&url).await;
                }
            }

            #[tokio::test]
            async fn sqlite() {
                run(Backend::Sqlite).await
            }

            #[tokio::test]
            async fn postgres() {
                run(Backend::Postgres).await
            }
        }
    };
}

/// A port bound to `host`.
async fn bound_port(api: &TestApi, net: &str, device: &str, host: &str) -> String {
    let (status, body) = api
        .post(
            "/v2.0/ports",
            json!({"port": {"network_id": net, "device_id": device, "binding:host_id": host}}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["port"]["id"].as_str().unwrap().to_string()
}

async fn bound_group(api: &TestApi, net: &str, host: &str) -> String {
    let device = uuid::Uuid::new_v4().to_string();
    let ingress = bound_port(api, net, &device, host).await;
    let egress = bound_port(api, net, &device, host).await;
    let pp = create_id(
        api,
        "port_pairs",
        json!({"ingress": ingress, "egress": egress}),
    )
    .await;
    group(api, &[&pp]).await
}

async fn status(api: &TestApi, chain: &str) -> (StatusCode, Value) {
    api.call(
        Method::GET,
        &format!("/v2.0/sfc/port_chains/{chain}/status"),
        None,
        None,
    )
    .await
}

ovs_test!(a_classifier_needs_a_logical_source_port, |api| async move {
    let r = post(&api, "flow_classifiers", json!({"protocol": "udp"})).await;
    assert_error(&r, StatusCode::BAD_REQUEST, "FlowClassifierBadRequest");
    assert_eq!(count(&api, "flow_classifiers").await, 0);
});

ovs_test!(chain_ids_above_4095_are_refused, |api| async move {
    let net = network(&api, None).await;
    let g = bound_group(&api, &net, "h1").await;
    let r = post(
        &api,
        "port_chains",
        json!({"port_pair_groups": [g], "chain_id": 4096}),
    )
    .await;
    assert_error(&r, StatusCode::BAD_REQUEST, "SfcBadRequest");
    assert!(r.1["NeutronError"]["message"]
        .as_str()
        .unwrap()
        .contains("20 bits"));
    assert_eq!(count(&api, "port_chains").await, 0);
    let ok = post(
        &api,
        "port_chains",
        json!({"port_pair_groups": [g], "chain_id": 4095}),
    )
    .await;
    assert_eq!(ok.0, StatusCode::CREATED, "{}", ok.1);
});

ovs_test!(
    a_symmetric_chain_needs_logical_destination_ports,
    |api| async move {
        let net = network(&api, None).await;
        let g = bound_group(&api, &net, "h1").await;
        let src = bound_port(&api, &net, "vm-src", "h1").await;
        let fc = classifier(&api, json!({"logical_source_port": src, "protocol": "udp"})).await;
        let r = post(
            &api,
            "port_chains",
            json!({"port_pair_groups": [g], "flow_classifiers": [fc],
               "chain_parameters": {"symmetric": true}}),
        )
        .await;
        assert_error(&r, StatusCode::BAD_REQUEST, "SfcBadRequest");
        assert_eq!(count(&api, "port_chains").await, 0);
    }
);

ovs_test!(the_status_lists_each_host_of_the_chain, |api| async move {
    let net = network(&api, None).await;
    let g1 = bound_group(&api, &net, "h1").await;
    let g2 = bound_group(&api, &net, "h2").await;
    let src = bound_port(&api, &net, "vm-src", "h1").await;
    let fc = classifier(&api, json!({"logical_source_port": src, "protocol": "udp"})).await;
    // No relay is connected: the chain is created all the same, its rules wait as "sent".
    let chain = chain(&api, &[&g1, &g2], &[&fc]).await;
    let (st, body) = status(&api, &chain).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    let hosts = body["port_chain_status"]["hosts"].as_array().unwrap();
    assert_eq!(hosts.len(), 2, "{body}");
    assert_eq!(hosts[0]["host"], "h1");
    assert_eq!(hosts[1]["host"], "h2");
    assert!(hosts
        .iter()
        .all(|h| h["state"] == "sent" && h["version"] == 1));
    // Dropping the second group leaves h2 without a port on the chain.
    let (st, body) = put(
        &api,
        "port_chains",
        &chain,
        json!({"port_pair_groups": [g1]}),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{body}");
    let (_, body) = status(&api, &chain).await;
    let hosts = body["port_chain_status"]["hosts"].as_array().unwrap();
    assert_eq!(hosts.len(), 1, "{body}");
    assert_eq!(
        (&hosts[0]["host"], &hosts[0]["version"]),
        (&json!("h1"), &json!(2))
    );
    // Other projects do not see it; after a delete nobody does.
    let (st, _) = api
        .call(
            Method::GET,
            &format!("/v2.0/sfc/port_chains/{chain}/status"),
            None,
            Some("someone-else"),
        )
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, _) = delete(&api, "port_chains", &chain).await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    assert_eq!(status(&api, &chain).await.0, StatusCode::NOT_FOUND);
});

ovs_test!(
    a_bulk_create_computes_every_chain_and_a_refused_one_stops_all,
    |api| async move {
        let net = network(&api, None).await;
        // Groups on h1 (even) and h2 (odd); chains of two different groups.
        let mut groups = Vec::new();
        for i in 0..8 {
            let host = if i % 2 == 0 { "h1" } else { "h2" };
            groups.push(bound_group(&api, &net, host).await);
        }
        let pairs: Vec<(usize, usize)> = (0..8)
            .flat_map(|a| (0..8).filter(move |b| *b != a).map(move |b| (a, b)))
            .take(40)
            .collect();
        // More chains than the driver reads one at a time (32), sharing groups and ports.
        let mut items = Vec::new();
        for (i, (a, b)) in pairs.iter().enumerate() {
            let src = bound_port(&api, &net, &format!("vm{i}"), "h1").await;
            let fc = classifier(
                &api,
                json!({"logical_source_port": src, "protocol": "udp",
                       "destination_port_range_min": 1000 + i,
                       "destination_port_range_max": 1000 + i}),
            )
            .await;
            items.push(json!({"port_pair_groups": [groups[*a], groups[*b]],
                              "flow_classifiers": [fc]}));
        }
        let (st, body) = api
            .post("/v2.0/sfc/port_chains", json!({"port_chains": items}))
            .await;
        assert_eq!(st, StatusCode::CREATED, "{body}");
        let made = body["port_chains"].as_array().unwrap();
        assert_eq!(made.len(), pairs.len());
        for (chain, (a, b)) in made.iter().zip(&pairs) {
            let (st, status) = status(&api, chain["id"].as_str().unwrap()).await;
            assert_eq!(st, StatusCode::OK, "{status}");
            let hosts: Vec<&str> = status["port_chain_status"]["hosts"]
                .as_array()
                .unwrap()
                .iter()
                .map(|h| {
                    assert_eq!((&h["state"], &h["version"]), (&json!("sent"), &json!(1)));
                    h["host"].as_str().unwrap()
                })
                .collect();
            let want: &[&str] = if a % 2 == 0 && b % 2 == 0 {
                &["h1"]
            } else {
                &["h1", "h2"]
            };
            assert_eq!(hosts, want, "{status}");
        }

        // The driver's own check refuses one item: nothing of the request is stored.
        let src = bound_port(&api, &net, "vm-x", "h1").await;
        let fc = classifier(&api, json!({"logical_source_port": src, "protocol": "tcp"})).await;
        let r = api
            .post(
                "/v2.0/sfc/port_chains",
                json!({"port_chains": [
                    {"port_pair_groups": [groups[2], groups[1], groups[0]],
                     "flow_classifiers": [fc]},
                    {"port_pair_groups": [groups[1], groups[2], groups[0]], "chain_id": 4096},
                ]}),
            )
            .await;
        assert_error(&r, StatusCode::BAD_REQUEST, "SfcBadRequest");
        assert_eq!(count(&api, "port_chains").await, pairs.len());
    }
);
