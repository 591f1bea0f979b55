//! `/v2.0/subnets`: Neutron's defaults and validation rules.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{assert_error, TestApi};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

async fn network(api: &TestApi, name: &str) -> String {
    api.create("/v2.0/networks", "network", json!({ "name": name }))
        .await["id"]
        .as_str()
        .unwrap()
        .to_string()
}

fn subnet_body(net: &str, cidr: &str, extra: Value) -> Value {
    let mut body = json!({"network_id": net, "cidr": cidr, "ip_version": 4});
    if cidr.contains(':') {
        body["ip_version"] = json!(6);
    }
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    json!({ "subnet": body })
}

async fn subnets(api: &TestApi) -> Value {
    api.get("/v2.0/subnets").await.1["subnets"].clone()
}

api_test!(defaults_show_list_and_network_link, |api| async move {
    let net = network(&api, "n").await;
    let s = api
        .create(
            "/v2.0/subnets",
            "subnet",
            json!({"network_id": net, "cidr": "10.0.0.0/24", "ip_version": 4, "name": "s1"}),
        )
        .await;
    assert_eq!(s["cidr"], "10.0.0.0/24");
    assert_eq!(s["gateway_ip"], "10.0.0.1");
    assert_eq!(
        s["allocation_pools"],
        json!([{"start": "10.0.0.2", "end": "10.0.0.254"}])
    );
    assert_eq!(s["enable_dhcp"], true);
    assert_eq!(s["dns_nameservers"], json!([]));
    assert_eq!(s["host_routes"], json!([]));
    assert_eq!(s["ip_version"], 4);
    assert_eq!(s["project_id"], "admin");
    assert_eq!(s["tenant_id"], "admin");
    assert_eq!(s["revision_number"], 1);
    let id = s["id"].as_str().unwrap();

    let (status, shown) = api.get(&format!("/v2.0/subnets/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(shown["subnet"], s);
    let (_, n) = api.get(&format!("/v2.0/networks/{net}")).await;
    assert_eq!(n["network"]["subnets"], json!([id]));

    let other = network(&api, "other").await;
    api.create(
        "/v2.0/subnets",
        "subnet",
        json!({"network_id": other, "cidr": "10.9.0.0/24", "ip_version": "4"}),
    )
    .await;
    let (_, list) = api
        .get(&format!(
            "/v2.0/subnets?network_id={net}&fields=id&fields=cidr"
        ))
        .await;
    assert_eq!(
        list,
        json!({"subnets": [{"id": id, "cidr": "10.0.0.0/24"}]})
    );
    let (_, list) = api.get("/v2.0/subnets?cidr=10.9.0.0/24").await;
    assert_eq!(list["subnets"][0]["network_id"], other);
    assert_eq!(subnets(&api).await.as_array().unwrap().len(), 2);
});

api_test!(host_bits_are_cleared_and_ipv6_works, |api| async move {
    let net = network(&api, "n").await;
    let s = api
        .create(
            "/v2.0/subnets",
            "subnet",
            json!({"network_id": net, "cidr": "10.0.1.77/24", "ip_version": 4}),
        )
        .await;
    assert_eq!(s["cidr"], "10.0.1.0/24");
    assert_eq!(s["gateway_ip"], "10.0.1.1");

    let s6 = api
        .create(
            "/v2.0/subnets",
            "subnet",
            json!({"network_id": net, "cidr": "fd00:0:0:1::5/64", "ip_version": 6}),
        )
        .await;
    assert_eq!(s6["cidr"], "fd00:0:0:1::/64");
    assert_eq!(s6["gateway_ip"], "fd00:0:0:1::1");
    // IPv6 has no broadcast address: the pool runs to the last address.
    assert_eq!(
        s6["allocation_pools"],
        json!([{"start": "fd00:0:0:1::2", "end": "fd00::1:ffff:ffff:ffff:ffff"}])
    );
});

api_test!(gateway_and_pool_rules, |api| async move {
    let net = network(&api, "n").await;
    // No gateway: the pool covers every host address.
    let s = api
        .create(
            "/v2.0/subnets",
            "subnet",
            json!({"network_id": net, "cidr": "10.1.0.0/24", "ip_version": 4, "gateway_ip": null}),
        )
        .await;
    assert_eq!(s["gateway_ip"], Value::Null);
    assert_eq!(
        s["allocation_pools"],
        json!([{"start": "10.1.0.1", "end": "10.1.0.254"}])
    );
    // A gateway in the middle splits the default pool.
    let s = api
        .create(
            "/v2.0/subnets",
            "subnet",
            json!({"network_id": net, "cidr": "10.2.0.0/28", "ip_version": 4, "gateway_ip": "10.2.0.5"}),
        )
        .await;
    assert_eq!(
        s["allocation_pools"],
        json!([{"start": "10.2.0.1", "end": "10.2.0.4"}, {"start": "10.2.0.6", "end": "10.2.0.14"}])
    );
    // As in Neutron, a gateway outside the CIDR is accepted.
    let s = api
        .create(
            "/v2.0/subnets",
            "subnet",
            json!({"network_id": net, "cidr": "10.3.0.0/29", "ip_version": 4, "gateway_ip": "192.168.0.1"}),
        )
        .await;
    assert_eq!(s["gateway_ip"], "192.168.0.1");
    assert_eq!(
        s["allocation_pools"],
        json!([{"start": "10.3.0.1", "end": "10.3.0.6"}])
    );
    // Explicit pools.
    let s = api
        .create(
            "/v2.0/subnets",
            "subnet",
            json!({"network_id": net, "cidr": "10.4.0.0/24", "ip_version": 4,
                   "allocation_pools": [{"start": "10.4.0.100", "end": "10.4.0.110"},
                                        {"start": "10.4.0.20", "end": "10.4.0.20"}]}),
        )
        .await;
    assert_eq!(s["gateway_ip"], "10.4.0.1");
    assert_eq!(
        s["allocation_pools"][1],
        json!({"start": "10.4.0.20", "end": "10.4.0.20"})
    );
    let before = subnets(&api).await;

    let bad = |extra: Value| subnet_body(&net, "10.5.0.0/24", extra);
    for (extra, status, kind) in [
        (json!({"gateway_ip": "10.5.0.0"}), 400, "InvalidInput"),
        (json!({"gateway_ip": "10.5.0.255"}), 400, "InvalidInput"),
        (json!({"gateway_ip": "fd00::1"}), 400, "InvalidInput"),
        (json!({"gateway_ip": "10.5.0"}), 400, "HTTPBadRequest"),
        (
            json!({"allocation_pools": [{"start": "10.5.0.10", "end": "10.5.1.10"}]}),
            400,
            "OutOfBoundsAllocationPool",
        ),
        (
            json!({"allocation_pools": [{"start": "10.5.0.0", "end": "10.5.0.10"}]}),
            400,
            "OutOfBoundsAllocationPool",
        ),
        (
            json!({"allocation_pools": [{"start": "10.5.0.2", "end": "10.5.0.255"}]}),
            400,
            "OutOfBoundsAllocationPool",
        ),
        (
            json!({"allocation_pools": [{"start": "10.5.0.20", "end": "10.5.0.10"}]}),
            400,
            "InvalidAllocationPool",
        ),
        (
            json!({"allocation_pools": [{"start": "10.5.0.10", "end": "10.5.0.20"},
                                        {"start": "10.5.0.20", "end": "10.5.0.30"}]}),
            409,
            "OverlappingAllocationPools",
        ),
        (
            json!({"allocation_pools": [{"start": "10.5.0.1", "end": "10.5.0.20"}]}),
            409,
            "GatewayConflictWithAllocationPools",
        ),
        (
            json!({"allocation_pools": [{"start": "10.5.0.1"}]}),
            400,
            "HTTPBadRequest",
        ),
        (
            json!({"allocation_pools": [{"start": "10.5.0.2", "end": "10.5.0.3", "x": 1}]}),
            400,
            "HTTPBadRequest",
        ),
    ] {
        let result = api.post("/v2.0/subnets", bad(extra.clone())).await;
        assert_error(&result, StatusCode::from_u16(status).unwrap(), kind);
    }
    assert_eq!(subnets(&api).await, before, "failed creates stored nothing");
});

api_test!(attribute_and_cidr_validation, |api| async move {
    let net = network(&api, "n").await;
    let other = network(&api, "o").await;
    api.create(
        "/v2.0/subnets",
        "subnet",
        json!({"network_id": net, "cidr": "10.0.0.0/16", "ip_version": 4}),
    )
    .await;
    let cases: Vec<(Value, u16, &str)> = vec![
        (
            json!({"subnet": {"cidr": "10.1.0.0/24", "ip_version": 4}}),
            400,
            "HTTPBadRequest",
        ),
        (
            json!({"subnet": {"network_id": "nope", "cidr": "10.1.0.0/24", "ip_version": 4}}),
            400,
            "HTTPBadRequest",
        ),
        (
            json!({"subnet": {"network_id": "0b0e8e1c-7b0a-4a7e-9a52-6b6f0c7e9d11", "cidr": "10.1.0.0/24", "ip_version": 4}}),
            404,
            "NetworkNotFound",
        ),
        (
            json!({"subnet": {"network_id": net, "cidr": "10.1.0.0/24"}}),
            400,
            "HTTPBadRequest",
        ),
        (
            json!({"subnet": {"network_id": net, "cidr": "10.1.0.0/24", "ip_version": 5}}),
            400,
            "HTTPBadRequest",
        ),
        (
            json!({"subnet": {"network_id": net, "cidr": "10.1.0.0/24", "ip_version": "four"}}),
            400,
            "HTTPBadRequest",
        ),
        (
            json!({"subnet": {"network_id": net, "ip_version": 4}}),
            400,
            "BadRequest",
        ),
        (
            json!({"subnet": {"network_id": net, "cidr": "10.1.0.0", "ip_version": 4}}),
            400,
            "HTTPBadRequest",
        ),
        (
            json!({"subnet": {"network_id": net, "cidr": "10.1.0.0/33", "ip_version": 4}}),
            400,
            "HTTPBadRequest",
        ),
        (
            json!({"subnet": {"network_id": net, "cidr": "fd00::/64", "ip_version": 4}}),
            400,
            "InvalidInput",
        ),
        (
            json!({"subnet": {"network_id": net, "cidr": "0.0.0.0/0", "ip_version": 4}}),
            400,
            "InvalidInput",
        ),
        // DHCP (on by default) needs room for its addresses.
        (
            json!({"subnet": {"network_id": net, "cidr": "10.1.0.0/31", "ip_version": 4}}),
            400,
            "InvalidInput",
        ),
        (
            json!({"subnet": {"network_id": net, "cidr": "127.0.0.0/8", "ip_version": 4}}),
            400,
            "InvalidInput",
        ),
        // Overlaps the /16 of this network (another network may reuse it, see below).
        (
            json!({"subnet": {"network_id": net, "cidr": "10.0.5.0/24", "ip_version": 4}}),
            400,
            "InvalidInput",
        ),
        (
            json!({"subnet": {"network_id": net, "cidr": "10.0.0.0/8", "ip_version": 4}}),
            400,
            "InvalidInput",
        ),
        (
            json!({"subnet": {"network_id": net, "cidr": "10.1.0.0/24", "ip_version": 4, "dns_nameservers": ["8.8.8.x"]}}),
            400,
            "HTTPBadRequest",
        ),
        (
            json!({"subnet": {"network_id": net, "cidr": "10.1.0.0/24", "ip_version": 4, "dns_nameservers": ["fd00::53"]}}),
            400,
            "InvalidInput",
        ),
        (
            json!({"subnet": {"network_id": net, "cidr": "10.1.0.0/24", "ip_version": 4, "dns_nameservers": ["1.1.1.1", "1.1.1.1"]}}),
            400,
            "HTTPBadRequest",
        ),
        (
            json!({"subnet": {"network_id": net, "cidr": "10.1.0.0/24", "ip_version": 4,
                              "dns_nameservers": ["1.1.1.1", "1.1.1.2", "1.1.1.3", "1.1.1.4", "1.1.1.5", "1.1.1.6"]}}),
            400,
            "DNSNameServersExhausted",
        ),
        (
            json!({"subnet": {"network_id": net, "cidr": "10.1.0.0/24", "ip_version": 4, "host_routes": [{"destination": "10.9.0.0/24"}]}}),
            400,
            "HTTPBadRequest",
        ),
        (
            json!({"subnet": {"network_id": net, "cidr": "10.1.0.0/24", "ip_version": 4, "host_routes": [{"destination": "10.9.0.0/24", "nexthop": "fd00::1"}]}}),
            400,
            "InvalidInput",
        ),
        (
            json!({"subnet": {"network_id": net, "cidr": "10.1.0.0/24", "ip_version": 4, "ipv6_ra_mode": "slaac"}}),
            400,
            "InvalidInput",
        ),
        (
            json!({"subnet": {"network_id": net, "cidr": "10.1.0.0/24", "ip_version": 4, "colour": "red"}}),
            400,
            "HTTPBadRequest",
        ),
        (
            json!({"subnet": {"network_id": net, "cidr": "10.1.0.0/24", "ip_version": 4, "name": "x".repeat(256)}}),
            400,
            "HTTPBadRequest",
        ),
    ];
    for (body, status, kind) in cases {
        let result = api.post("/v2.0/subnets", body.clone()).await;
        assert_eq!(result.0.as_u16(), status, "{body}: {}", result.1);
        assert_eq!(
            result.1["NeutronError"]["type"], kind,
            "{body}: {}",
            result.1
        );
    }
    assert_eq!(subnets(&api).await.as_array().unwrap().len(), 1);

    // Overlap is per network, and a /31 is fine without DHCP.
    api.create(
        "/v2.0/subnets",
        "subnet",
        json!({"network_id": other, "cidr": "10.0.5.0/24", "ip_version": 4}),
    )
    .await;
    let s = api
        .create(
            "/v2.0/subnets",
            "subnet",
            json!({"network_id": other, "cidr": "10.7.0.0/31", "ip_version": 4, "enable_dhcp": false}),
        )
        .await;
    assert_eq!(s["allocation_pools"], json!([]));
    let s = api
        .create(
            "/v2.0/subnets",
            "subnet",
            json!({"network_id": other, "cidr": "10.8.0.0/24", "ip_version": 4,
                   "dns_nameservers": ["9.9.9.9", "1.1.1.1"],
                   "host_routes": [{"destination": "192.168.7.9/24", "nexthop": "10.8.0.254"}]}),
        )
        .await;
    assert_eq!(s["dns_nameservers"], json!(["9.9.9.9", "1.1.1.1"]));
    assert_eq!(
        s["host_routes"],
        json!([{"destination": "192.168.7.0/24", "nexthop": "10.8.0.254"}])
    );
});

api_test!(update_rules, |api| async move {
    let net = network(&api, "n").await;
    let s = api
        .create(
            "/v2.0/subnets",
            "subnet",
            json!({"network_id": net, "cidr": "10.0.0.0/24", "ip_version": 4}),
        )
        .await;
    let path = format!("/v2.0/subnets/{}", s["id"].as_str().unwrap());
    let (status, u) = api
        .put(&path, json!({"subnet": {"name": "renamed", "description": "d", "enable_dhcp": false, "dns_nameservers": ["10.0.0.53"]}}))
        .await;
    assert_eq!(status, StatusCode::OK, "{u}");
    assert_eq!(u["subnet"]["name"], "renamed");
    assert_eq!(u["subnet"]["enable_dhcp"], false);
    assert_eq!(u["subnet"]["dns_nameservers"], json!(["10.0.0.53"]));
    assert_eq!(u["subnet"]["revision_number"], 2);
    assert_eq!(u["subnet"]["created_at"], s["created_at"]);

    // The new gateway must stay out of the (unchanged) pools.
    assert_error(
        &api.put(&path, json!({"subnet": {"gateway_ip": "10.0.0.9"}}))
            .await,
        StatusCode::CONFLICT,
        "GatewayConflictWithAllocationPools",
    );
    let (status, u) = api
        .put(
            &path,
            json!({"subnet": {"gateway_ip": "10.0.0.254",
                              "allocation_pools": [{"start": "10.0.0.10", "end": "10.0.0.99"}]}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{u}");
    assert_eq!(u["subnet"]["gateway_ip"], "10.0.0.254");
    assert_eq!(
        u["subnet"]["allocation_pools"],
        json!([{"start": "10.0.0.10", "end": "10.0.0.99"}])
    );
    let (_, u) = api
        .put(&path, json!({"subnet": {"gateway_ip": null}}))
        .await;
    assert_eq!(u["subnet"]["gateway_ip"], Value::Null);

    for body in [
        json!({"subnet": {"cidr": "10.9.0.0/24"}}),
        json!({"subnet": {"ip_version": 6}}),
        json!({"subnet": {"network_id": net}}),
        json!({"subnet": {"allocation_pools": [{"start": "10.0.0.10", "end": "10.0.1.1"}]}}),
        json!({"subnet": {"gateway_ip": "10.0.0.0"}}),
        json!({"subnet": {"name": 7}}),
    ] {
        let (status, body) = api.put(&path, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    }
    // Turning DHCP back on checks the prefix again (fine here).
    let (status, u) = api
        .put(&path, json!({"subnet": {"enable_dhcp": true}}))
        .await;
    assert_eq!(status, StatusCode::OK, "{u}");
    let (_, shown) = api.get(&path).await;
    assert_eq!(shown["subnet"], u["subnet"]);
    assert_eq!(shown["subnet"]["revision_number"], 5);
    assert_error(
        &api.put(
            "/v2.0/subnets/0b0e8e1c-7b0a-4a7e-9a52-6b6f0c7e9d11",
            json!({"subnet": {"name": "x"}}),
        )
        .await,
        StatusCode::NOT_FOUND,
        "SubnetNotFound",
    );
});

api_test!(delete_in_use_and_with_network, |api| async move {
    let net = network(&api, "n").await;
    let s = api
        .create(
            "/v2.0/subnets",
            "subnet",
            json!({"network_id": net, "cidr": "10.0.0.0/24", "ip_version": 4}),
        )
        .await;
    let sid = s["id"].as_str().unwrap();
    let port = api
        .create("/v2.0/ports", "port", json!({"network_id": net}))
        .await;
    assert_error(
        &api.delete(&format!("/v2.0/subnets/{sid}")).await,
        StatusCode::CONFLICT,
        "SubnetInUse",
    );
    assert_eq!(subnets(&api).await[0], s);
    assert_eq!(
        api.delete(&format!("/v2.0/ports/{}", port["id"].as_str().unwrap()))
            .await
            .0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        api.delete(&format!("/v2.0/subnets/{sid}")).await.0,
        StatusCode::NO_CONTENT
    );
    assert_error(
        &api.get(&format!("/v2.0/subnets/{sid}")).await,
        StatusCode::NOT_FOUND,
        "SubnetNotFound",
    );
    assert_error(
        &api.delete(&format!("/v2.0/subnets/{sid}")).await,
        StatusCode::NOT_FOUND,
        "SubnetNotFound",
    );
    assert_error(
        &api.get("/v2.0/subnets/not-a-uuid").await,
        StatusCode::NOT_FOUND,
        "SubnetNotFound",
    );
    // Deleting a network takes its subnets along.
    api.create(
        "/v2.0/subnets",
        "subnet",
        json!({"network_id": net, "cidr": "10.0.0.0/24", "ip_version": 4}),
    )
    .await;
    assert_eq!(
        api.delete(&format!("/v2.0/networks/{net}")).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(subnets(&api).await, json!([]));
});

api_test!(projects_and_shared_networks, |api| async move {
    let as_p = |p: &'static str| Some(p);
    let (_, n) = api
        .call(
            Method::POST,
            "/v2.0/networks",
            Some(json!({"network": {"name": "p1net"}})),
            as_p("p1"),
        )
        .await;
    let net = n["network"]["id"].as_str().unwrap().to_string();
    let body = json!({"subnet": {"network_id": net, "cidr": "10.0.0.0/24", "ip_version": 4}});
    // Another project cannot even see the network.
    assert_error(
        &api.call(
            Method::POST,
            "/v2.0/subnets",
            Some(body.clone()),
            as_p("p2"),
        )
        .await,
        StatusCode::NOT_FOUND,
        "NetworkNotFound",
    );
    let (status, s) = api
        .call(Method::POST, "/v2.0/subnets", Some(body), as_p("p1"))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{s}");
    assert_eq!(s["subnet"]["project_id"], "p1");
    let path = format!("/v2.0/subnets/{}", s["subnet"]["id"].as_str().unwrap());
    assert_eq!(
        api.call(Method::GET, "/v2.0/subnets", None, as_p("p2"))
            .await
            .1,
        json!({"subnets": []})
    );
    for method in [Method::GET, Method::DELETE] {
        assert_error(
            &api.call(method, &path, None, as_p("p2")).await,
            StatusCode::NOT_FOUND,
            "SubnetNotFound",
        );
    }
    assert_error(
        &api.call(
            Method::PUT,
            &path,
            Some(json!({"subnet": {"name": "x"}})),
            as_p("p2"),
        )
        .await,
        StatusCode::NOT_FOUND,
        "SubnetNotFound",
    );
    // Shared: p2 sees the subnets, but only the owner adds them.
    let (status, _) = api
        .call(
            Method::PUT,
            &format!("/v2.0/networks/{net}"),
            Some(json!({"network": {"shared": true}})),
            as_p("p1"),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let (_, seen) = api.call(Method::GET, &path, None, as_p("p2")).await;
    assert_eq!(seen["subnet"]["id"], s["subnet"]["id"]);
    assert_error(
        &api.call(
            Method::POST,
            "/v2.0/subnets",
            Some(json!({"subnet": {"network_id": net, "cidr": "10.1.0.0/24", "ip_version": 4}})),
            as_p("p2"),
        )
        .await,
        StatusCode::FORBIDDEN,
        "PolicyNotAuthorized",
    );
    // The admin sees everything and can create in another project's network.
    let s2 = api
        .create(
            "/v2.0/subnets",
            "subnet",
            json!({"network_id": net, "cidr": "10.2.0.0/24", "ip_version": 4, "project_id": "p1"}),
        )
        .await;
    assert_eq!(s2["project_id"], "p1");
    assert_eq!(subnets(&api).await.as_array().unwrap().len(), 2);
});
