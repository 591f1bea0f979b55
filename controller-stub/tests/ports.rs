//! `/v2.0/ports`: fixed-IP allocation, MACs, binding, filters and policy, as Neutron has them.

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

async fn subnet(api: &TestApi, net: &str, cidr: &str, extra: Value) -> String {
    let mut body = json!({"network_id": net, "cidr": cidr,
                          "ip_version": if cidr.contains(':') { 6 } else { 4 }});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    api.create("/v2.0/subnets", "subnet", body).await["id"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn port(api: &TestApi, body: Value) -> Value {
    api.create("/v2.0/ports", "port", body).await
}

fn ips(port: &Value) -> Vec<String> {
    port["fixed_ips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["ip_address"].as_str().unwrap().to_string())
        .collect()
}

fn id(v: &Value) -> String {
    v["id"].as_str().unwrap().to_string()
}

async fn ports(api: &TestApi, query: &str) -> Vec<Value> {
    let (status, body) = api.get(&format!("/v2.0/ports{query}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["ports"].as_array().unwrap().clone()
}

api_test!(defaults_one_address_per_version, |api| async move {
    let net = network(&api, "n").await;
    let s4 = subnet(&api, &net, "10.0.0.0/24", json!({})).await;
    let s6 = subnet(&api, &net, "fd00::/64", json!({})).await;
    // A second IPv4 subnet is not used while the first has room.
    subnet(&api, &net, "10.1.0.0/24", json!({})).await;
    let p = port(&api, json!({"network_id": net, "name": "p1"})).await;
    assert_eq!(
        p["fixed_ips"],
        json!([{"subnet_id": s4, "ip_address": "10.0.0.2"},
               {"subnet_id": s6, "ip_address": "fd00::2"}])
    );
    let mac = p["mac_address"].as_str().unwrap();
    assert!(mac.starts_with("fa:16:3e:"), "{mac}");
    assert_eq!(mac.len(), 17);
    assert_eq!(p["status"], "DOWN");
    assert_eq!(p["admin_state_up"], true);
    assert_eq!(p["device_id"], "");
    assert_eq!(p["device_owner"], "");
    assert_eq!(p["binding:host_id"], "");
    assert_eq!(p["binding:vif_type"], "unbound");
    assert_eq!(p["binding:vnic_type"], "normal");
    assert_eq!(p["binding:profile"], json!({}));
    assert_eq!(p["security_groups"], json!([]));
    assert_eq!(p["allowed_address_pairs"], json!([]));
    assert_eq!(p["port_security_enabled"], true);
    assert_eq!(p["project_id"], "admin");
    assert_eq!(p["revision_number"], 1);
    let (status, shown) = api.get(&format!("/v2.0/ports/{}", id(&p))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(shown["port"], p);

    let p2 = port(&api, json!({"network_id": net})).await;
    assert_eq!(ips(&p2), ["10.0.0.3", "fd00::3"]);
    assert_ne!(p2["mac_address"], p["mac_address"]);

    // A network without subnets gives ports without addresses.
    let bare = network(&api, "bare").await;
    let p3 = port(&api, json!({"network_id": bare})).await;
    assert_eq!(p3["fixed_ips"], json!([]));
    // And `fixed_ips: []` asks for none.
    let p4 = port(&api, json!({"network_id": net, "fixed_ips": []})).await;
    assert_eq!(p4["fixed_ips"], json!([]));
});

api_test!(explicit_fixed_ips, |api| async move {
    let net = network(&api, "n").await;
    let s1 = subnet(
        &api,
        &net,
        "10.0.0.0/24",
        json!({"allocation_pools": [{"start": "10.0.0.10", "end": "10.0.0.20"}]}),
    )
    .await;
    let s2 = subnet(&api, &net, "10.1.0.0/24", json!({})).await;
    // By subnet.
    let p = port(
        &api,
        json!({"network_id": net, "fixed_ips": [{"subnet_id": s2}]}),
    )
    .await;
    assert_eq!(
        p["fixed_ips"],
        json!([{"subnet_id": s2, "ip_address": "10.1.0.2"}])
    );
    // By address alone (outside the pool is allowed for an explicit address), and with its
    // subnet; an explicit address is set aside before a bare subnet entry of the same request.
    let p = port(
        &api,
        json!({"network_id": net, "fixed_ips": [
            {"subnet_id": s1}, {"ip_address": "10.0.0.10"}, {"ip_address": "10.0.0.200"},
            {"subnet_id": s2, "ip_address": "10.1.0.9"}]}),
    )
    .await;
    assert_eq!(
        ips(&p),
        ["10.0.0.10", "10.0.0.11", "10.0.0.200", "10.1.0.9"]
    );
    assert_eq!(p["fixed_ips"][3]["subnet_id"], s2);

    let other = network(&api, "o").await;
    let s_other = subnet(&api, &other, "10.2.0.0/24", json!({})).await;
    let before = ports(&api, "").await;
    let cases: Vec<(Value, u16, &str)> = vec![
        (
            json!([{"ip_address": "10.0.0.10"}]),
            409,
            "IpAddressAlreadyAllocated",
        ),
        (
            json!([{"subnet_id": s1, "ip_address": "10.0.0.200"}]),
            409,
            "IpAddressAlreadyAllocated",
        ),
        (
            json!([{"ip_address": "10.9.0.1"}]),
            400,
            "InvalidIpForNetwork",
        ),
        // The network and broadcast addresses are nobody's.
        (
            json!([{"ip_address": "10.0.0.0"}]),
            400,
            "InvalidIpForNetwork",
        ),
        (
            json!([{"ip_address": "10.0.0.255"}]),
            400,
            "InvalidIpForNetwork",
        ),
        (
            json!([{"subnet_id": s1, "ip_address": "10.1.0.50"}]),
            400,
            "InvalidIpForSubnet",
        ),
        (
            json!([{"subnet_id": "6a3b4c1e-0f0e-4c43-a2a9-0e5b0d8c9a77"}]),
            404,
            "SubnetNotFound",
        ),
        (json!([{"subnet_id": s_other}]), 400, "InvalidInput"),
        (json!([{}]), 400, "InvalidInput"),
        (
            json!([{"ip_address": "10.0.0.30"}, {"ip_address": "10.0.0.30"}]),
            400,
            "HTTPBadRequest",
        ),
        (json!([{"ip_address": "10.0.0.300"}]), 400, "HTTPBadRequest"),
        (json!([{"subnet_id": "nope"}]), 400, "HTTPBadRequest"),
        (json!([{"subnet": s1}]), 400, "HTTPBadRequest"),
        (json!(["10.0.0.31"]), 400, "HTTPBadRequest"),
        // The first entry would succeed; the failure of the second leaves nothing behind.
        (
            json!([{"subnet_id": s1}, {"ip_address": "10.0.0.10"}]),
            409,
            "IpAddressAlreadyAllocated",
        ),
    ];
    for (fixed_ips, status, kind) in cases {
        let result = api
            .post(
                "/v2.0/ports",
                json!({"port": {"network_id": net, "fixed_ips": fixed_ips.clone()}}),
            )
            .await;
        assert_eq!(result.0.as_u16(), status, "{fixed_ips}: {}", result.1);
        assert_eq!(
            result.1["NeutronError"]["type"], kind,
            "{fixed_ips}: {}",
            result.1
        );
    }
    assert_eq!(
        ports(&api, "").await,
        before,
        "failed creates stored nothing"
    );
    let p = port(
        &api,
        json!({"network_id": net, "fixed_ips": [{"subnet_id": s1}]}),
    )
    .await;
    assert_eq!(ips(&p), ["10.0.0.12"]);
});

api_test!(pool_exhaustion_and_reuse, |api| async move {
    let net = network(&api, "n").await;
    subnet(
        &api,
        &net,
        "10.0.0.0/24",
        json!({"allocation_pools": [{"start": "10.0.0.5", "end": "10.0.0.6"}]}),
    )
    .await;
    let a = port(&api, json!({"network_id": net})).await;
    let b = port(&api, json!({"network_id": net})).await;
    assert_eq!(
        (ips(&a), ips(&b)),
        (vec!["10.0.0.5".to_string()], vec!["10.0.0.6".to_string()])
    );
    assert_error(
        &api.post("/v2.0/ports", json!({"port": {"network_id": net}}))
            .await,
        StatusCode::CONFLICT,
        "IpAddressGenerationFailure",
    );
    assert_eq!(
        api.delete(&format!("/v2.0/ports/{}", id(&a))).await.0,
        StatusCode::NO_CONTENT
    );
    let c = port(&api, json!({"network_id": net})).await;
    assert_eq!(ips(&c), ["10.0.0.5"]);
    // A second subnet of the same version takes over when the first is full.
    let s2 = subnet(&api, &net, "10.1.0.0/24", json!({})).await;
    let d = port(&api, json!({"network_id": net})).await;
    assert_eq!(
        d["fixed_ips"],
        json!([{"subnet_id": s2, "ip_address": "10.1.0.2"}])
    );
});

api_test!(mac_addresses, |api| async move {
    let net = network(&api, "n").await;
    let p = port(
        &api,
        json!({"network_id": net, "mac_address": "FA:16:3E:AA:BB:0C"}),
    )
    .await;
    assert_eq!(p["mac_address"], "fa:16:3e:aa:bb:0c");
    let other = network(&api, "o").await;
    // Unique across the controller, in any spelling.
    assert_error(
        &api.post(
            "/v2.0/ports",
            json!({"port": {"network_id": other, "mac_address": "fa-16-3e-aa-bb-0c"}}),
        )
        .await,
        StatusCode::CONFLICT,
        "MacAddressInUse",
    );
    for bad in [
        "00:00:00:00:00:00",
        "ff:ff:ff:ff:ff:ff",
        "fa:16:3e:aa:bb",
        "zz:16:3e:aa:bb:0c",
    ] {
        assert_error(
            &api.post(
                "/v2.0/ports",
                json!({"port": {"network_id": net, "mac_address": bad}}),
            )
            .await,
            StatusCode::BAD_REQUEST,
            "HTTPBadRequest",
        );
    }
    let mut seen = std::collections::HashSet::new();
    seen.insert(p["mac_address"].as_str().unwrap().to_string());
    for _ in 0..20 {
        let p = port(&api, json!({"network_id": net})).await;
        assert!(seen.insert(p["mac_address"].as_str().unwrap().to_string()));
    }
});

api_test!(update_binding_status_and_fields, |api| async move {
    let net = network(&api, "n").await;
    let s = subnet(&api, &net, "10.0.0.0/24", json!({})).await;
    let p = port(&api, json!({"network_id": net, "name": "vnf-in"})).await;
    let path = format!("/v2.0/ports/{}", id(&p));
    let (status, u) = api
        .put(
            &path,
            json!({"port": {"name": "renamed", "description": "d", "device_id": "vm-1",
                            "device_owner": "compute:nova", "binding:host_id": "compute-1"}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{u}");
    let u = &u["port"];
    assert_eq!(u["name"], "renamed");
    assert_eq!(u["device_id"], "vm-1");
    assert_eq!(u["device_owner"], "compute:nova");
    assert_eq!(u["binding:host_id"], "compute-1");
    assert_eq!(u["binding:vif_type"], "ovs");
    assert_eq!(u["status"], "ACTIVE");
    assert_eq!(u["revision_number"], 2);
    assert_eq!(u["mac_address"], p["mac_address"]);
    assert_eq!(u["fixed_ips"], p["fixed_ips"]);
    assert_eq!(u["created_at"], p["created_at"]);

    let (_, u) = api
        .put(&path, json!({"port": {"admin_state_up": false}}))
        .await;
    assert_eq!(u["port"]["status"], "DOWN");
    let (_, u) = api
        .put(&path, json!({"port": {"admin_state_up": true}}))
        .await;
    assert_eq!(u["port"]["status"], "ACTIVE");
    // A bound port keeps its MAC.
    assert_error(
        &api.put(&path, json!({"port": {"mac_address": "fa:16:3e:00:00:01"}}))
            .await,
        StatusCode::CONFLICT,
        "PortBound",
    );
    // Unbinding (Nova sends null).
    let (_, u) = api
        .put(
            &path,
            json!({"port": {"binding:host_id": null, "device_id": ""}}),
        )
        .await;
    assert_eq!(u["port"]["binding:host_id"], "");
    assert_eq!(u["port"]["binding:vif_type"], "unbound");
    assert_eq!(u["port"]["status"], "DOWN");
    let (_, u) = api
        .put(&path, json!({"port": {"mac_address": "fa:16:3e:00:00:01"}}))
        .await;
    assert_eq!(u["port"]["mac_address"], "fa:16:3e:00:00:01");

    // Fixed IPs: keep 10.0.0.2, add a named one and one more from the subnet.
    let (status, u) = api
        .put(
            &path,
            json!({"port": {"fixed_ips": [{"ip_address": "10.0.0.2"}, {"ip_address": "10.0.0.40"},
                                          {"subnet_id": s}]}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{u}");
    // The bare subnet entry matches the address the port already has there... which the
    // explicit entry claimed first, so it takes a new one.
    assert_eq!(ips(&u["port"]), ["10.0.0.2", "10.0.0.3", "10.0.0.40"]);
    // Drop 10.0.0.2 and keep "an address on s": the port keeps one of its own.
    let (_, u) = api
        .put(
            &path,
            json!({"port": {"fixed_ips": [{"ip_address": "10.0.0.40"}, {"subnet_id": s}]}}),
        )
        .await;
    assert_eq!(ips(&u["port"]), ["10.0.0.3", "10.0.0.40"]);
    // The released address is free for the next port.
    let q = port(&api, json!({"network_id": net})).await;
    assert_eq!(ips(&q), ["10.0.0.2"]);
    // An address in use elsewhere: 409 and nothing changes.
    let before = api.get(&path).await.1;
    assert_error(
        &api.put(
            &path,
            json!({"port": {"fixed_ips": [{"ip_address": "10.0.0.2"}]}}),
        )
        .await,
        StatusCode::CONFLICT,
        "IpAddressAlreadyAllocated",
    );
    assert_eq!(api.get(&path).await.1, before);
    let (_, u) = api.put(&path, json!({"port": {"fixed_ips": []}})).await;
    assert_eq!(u["port"]["fixed_ips"], json!([]));

    for body in [
        json!({"port": {"network_id": net}}),
        json!({"port": {"tenant_id": "x"}}),
        json!({"port": {"status": "ACTIVE"}}),
        json!({"port": {"binding:vnic_type": "warp"}}),
        json!({"port": {"binding:profile": "x"}}),
        json!({"port": {"mac_address": "nope"}}),
        json!({"prt": {}}),
    ] {
        let (status, b) = api.put(&path, body.clone()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {b}");
    }
    assert_error(
        &api.put(
            "/v2.0/ports/6a3b4c1e-0f0e-4c43-a2a9-0e5b0d8c9a77",
            json!({"port": {"name": "x"}}),
        )
        .await,
        StatusCode::NOT_FOUND,
        "PortNotFound",
    );
});

api_test!(delete_frees_and_404s, |api| async move {
    let net = network(&api, "n").await;
    subnet(&api, &net, "10.0.0.0/24", json!({})).await;
    let p = port(&api, json!({"network_id": net})).await;
    let path = format!("/v2.0/ports/{}", id(&p));
    assert_eq!(api.delete(&path).await.0, StatusCode::NO_CONTENT);
    assert_error(&api.get(&path).await, StatusCode::NOT_FOUND, "PortNotFound");
    assert_error(
        &api.delete(&path).await,
        StatusCode::NOT_FOUND,
        "PortNotFound",
    );
    assert_error(
        &api.get("/v2.0/ports/xyz").await,
        StatusCode::NOT_FOUND,
        "PortNotFound",
    );
    assert_eq!(
        ips(&port(&api, json!({"network_id": net})).await),
        ["10.0.0.2"]
    );
    // A network with ports cannot go.
    assert_error(
        &api.delete(&format!("/v2.0/networks/{net}")).await,
        StatusCode::CONFLICT,
        "NetworkInUse",
    );
});

api_test!(list_filters, |api| async move {
    let n1 = network(&api, "n1").await;
    let n2 = network(&api, "n2").await;
    let s1 = subnet(&api, &n1, "10.0.0.0/24", json!({})).await;
    let s2 = subnet(&api, &n2, "10.0.0.0/24", json!({})).await;
    let a = port(
        &api,
        json!({"network_id": n1, "name": "a", "device_id": "vm-1"}),
    )
    .await;
    let b = port(
        &api,
        json!({"network_id": n1, "name": "b", "device_id": "vm-2"}),
    )
    .await;
    let c = port(
        &api,
        json!({"network_id": n2, "name": "c", "device_id": "vm-1"}),
    )
    .await;
    let names = |list: Vec<Value>| -> Vec<String> {
        list.iter()
            .map(|p| p["name"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(names(ports(&api, "").await), ["a", "b", "c"]);
    assert_eq!(names(ports(&api, "?device_id=vm-1").await), ["a", "c"]);
    assert_eq!(
        names(ports(&api, &format!("?network_id={n1}")).await),
        ["a", "b"]
    );
    assert_eq!(names(ports(&api, "?name=b").await), ["b"]);
    assert_eq!(names(ports(&api, "?name=a&name=c").await), ["a", "c"]);
    // Neutron's fixed_ips filter syntax, as the OpenStack client sends it.
    assert_eq!(
        names(ports(&api, "?fixed_ips=ip_address%3D10.0.0.2").await),
        ["a", "c"]
    );
    assert_eq!(
        names(
            ports(
                &api,
                &format!("?fixed_ips=ip_address%3D10.0.0.2&fixed_ips=subnet_id%3D{s2}")
            )
            .await
        ),
        ["c"]
    );
    assert_eq!(
        names(ports(&api, &format!("?fixed_ips=subnet_id%3D{s1}")).await),
        ["a", "b"]
    );
    assert_eq!(
        names(ports(&api, "?fixed_ips=ip_address_substr%3D0.0.3").await),
        ["b"]
    );
    assert_eq!(
        names(ports(&api, "?fixed_ips=ip_address%3D10.0.0.99").await),
        Vec::<String>::new()
    );
    assert_error(
        &api.get("/v2.0/ports?fixed_ips=mac%3D1").await,
        StatusCode::BAD_REQUEST,
        "InvalidInput",
    );
    let mac = b["mac_address"].as_str().unwrap();
    assert_eq!(
        names(ports(&api, &format!("?mac_address={mac}")).await),
        ["b"]
    );
    let list = ports(&api, &format!("?id={}&fields=id&fields=fixed_ips", id(&a))).await;
    assert_eq!(
        list,
        vec![json!({"id": id(&a), "fixed_ips": a["fixed_ips"]})]
    );
    assert_eq!(names(ports(&api, &format!("?id={}", id(&c))).await), ["c"]);
});

api_test!(projects_shared_networks_and_policy, |api| async move {
    let p1 = Some("p1");
    let p2 = Some("p2");
    let (_, n) = api
        .call(
            Method::POST,
            "/v2.0/networks",
            Some(json!({"network": {"name": "p1net"}})),
            p1,
        )
        .await;
    let net = n["network"]["id"].as_str().unwrap().to_string();
    let (_, s) = api
        .call(
            Method::POST,
            "/v2.0/subnets",
            Some(json!({"subnet": {"network_id": net, "cidr": "10.0.0.0/24", "ip_version": 4}})),
            p1,
        )
        .await;
    assert_eq!(s["subnet"]["project_id"], "p1");
    let body = json!({"port": {"network_id": net}});
    assert_error(
        &api.call(Method::POST, "/v2.0/ports", Some(body.clone()), p2)
            .await,
        StatusCode::NOT_FOUND,
        "NetworkNotFound",
    );
    let (status, mine) = api
        .call(Method::POST, "/v2.0/ports", Some(body.clone()), p1)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{mine}");
    let mine = mine["port"].clone();
    // A project sees no binding details (admin-only in Neutron's policy).
    assert!(mine.get("binding:host_id").is_none(), "{mine}");
    assert_eq!(mine["binding:vnic_type"], "normal");
    let path = format!("/v2.0/ports/{}", id(&mine));
    for method in [Method::GET, Method::DELETE] {
        assert_error(
            &api.call(method, &path, None, p2).await,
            StatusCode::NOT_FOUND,
            "PortNotFound",
        );
    }
    assert_eq!(
        api.call(Method::GET, "/v2.0/ports", None, p2).await.1,
        json!({"ports": []})
    );
    // Binding is the admin's.
    assert_error(
        &api.call(
            Method::PUT,
            &path,
            Some(json!({"port": {"binding:host_id": "h"}})),
            p1,
        )
        .await,
        StatusCode::FORBIDDEN,
        "PolicyNotAuthorized",
    );
    assert_error(
        &api.call(
            Method::POST,
            "/v2.0/ports",
            Some(json!({"port": {"network_id": net, "binding:host_id": "h"}})),
            p1,
        )
        .await,
        StatusCode::FORBIDDEN,
        "PolicyNotAuthorized",
    );
    // ... and an admin of a project (X-Roles: admin) may.
    let (status, u) = api
        .request(
            Method::PUT,
            &path,
            Some(json!({"port": {"binding:host_id": "h"}})),
            &[("X-Project-Id", "p9"), ("X-Roles", "member,admin")],
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{u}");
    assert_eq!(u["port"]["binding:host_id"], "h");

    // Shared network: p2 may attach, but not pick addresses, MACs or port security.
    api.call(
        Method::PUT,
        &format!("/v2.0/networks/{net}"),
        Some(json!({"network": {"shared": true}})),
        p1,
    )
    .await;
    let (status, theirs) = api.call(Method::POST, "/v2.0/ports", Some(body), p2).await;
    assert_eq!(status, StatusCode::CREATED, "{theirs}");
    assert_eq!(theirs["port"]["project_id"], "p2");
    assert_eq!(ips(&theirs["port"]), ["10.0.0.3"]);
    for extra in [
        json!({"fixed_ips": [{"ip_address": "10.0.0.50"}]}),
        json!({"mac_address": "fa:16:3e:12:34:56"}),
        json!({"device_owner": "network:router_interface"}),
        json!({"port_security_enabled": false}),
    ] {
        let mut b = json!({"network_id": net});
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        assert_error(
            &api.call(Method::POST, "/v2.0/ports", Some(json!({ "port": b })), p2)
                .await,
            StatusCode::FORBIDDEN,
            "PolicyNotAuthorized",
        );
    }
    // p2 sees only its port; the network's owner sees both; the admin sees all.
    let count = |v: Value| v["ports"].as_array().unwrap().len();
    assert_eq!(
        count(api.call(Method::GET, "/v2.0/ports", None, p2).await.1),
        1
    );
    assert_eq!(
        count(api.call(Method::GET, "/v2.0/ports", None, p1).await.1),
        2
    );
    assert_eq!(count(api.get("/v2.0/ports").await.1), 2);
    let theirs_path = format!("/v2.0/ports/{}", id(&theirs["port"]));
    assert_eq!(
        api.call(Method::GET, &theirs_path, None, p1).await.0,
        StatusCode::OK
    );
    // A project cannot create in another's name.
    assert_eq!(
        api.call(
            Method::POST,
            "/v2.0/ports",
            Some(json!({"port": {"network_id": net, "project_id": "p1"}})),
            p2,
        )
        .await
        .0,
        StatusCode::BAD_REQUEST
    );
});

api_test!(security_pairs_tags_and_bad_bodies, |api| async move {
    let net = network(&api, "n").await;
    subnet(&api, &net, "10.0.0.0/24", json!({})).await;
    let p = port(
        &api,
        json!({"network_id": net, "allowed_address_pairs": [
                   {"ip_address": "10.0.0.100"},
                   {"ip_address": "192.168.0.0/24", "mac_address": "FA:16:3E:00:00:99"}],
               "tags": ["web", "web", "blue"], "security_groups": [],
               "binding:vnic_type": "normal", "binding:profile": {"k": "v"}}),
    )
    .await;
    assert_eq!(
        p["allowed_address_pairs"],
        json!([{"ip_address": "10.0.0.100", "mac_address": p["mac_address"]},
               {"ip_address": "192.168.0.0/24", "mac_address": "fa:16:3e:00:00:99"}])
    );
    assert_eq!(p["tags"], json!(["web", "blue"]));
    assert_eq!(p["binding:profile"], json!({"k": "v"}));
    let path = format!("/v2.0/ports/{}", id(&p));
    assert_error(
        &api.put(&path, json!({"port": {"port_security_enabled": false}}))
            .await,
        StatusCode::CONFLICT,
        "AddressPairAndPortSecurityRequired",
    );
    let (status, u) = api
        .put(
            &path,
            json!({"port": {"port_security_enabled": false, "allowed_address_pairs": []}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{u}");
    assert_eq!(u["port"]["port_security_enabled"], false);

    let before = ports(&api, "").await;
    let cases: Vec<(Value, u16, &str)> = vec![
        (json!({"port": {}}), 400, "HTTPBadRequest"),
        (json!({"port": {"network_id": "x"}}), 400, "HTTPBadRequest"),
        (
            json!({"port": {"network_id": "6a3b4c1e-0f0e-4c43-a2a9-0e5b0d8c9a77"}}),
            404,
            "NetworkNotFound",
        ),
        (
            json!({"port": {"network_id": net, "colour": 1}}),
            400,
            "HTTPBadRequest",
        ),
        (
            json!({"port": {"network_id": net, "security_groups": ["6a3b4c1e-0f0e-4c43-a2a9-0e5b0d8c9a77"]}}),
            404,
            "SecurityGroupNotFound",
        ),
        (
            json!({"port": {"network_id": net, "port_security_enabled": false,
                          "allowed_address_pairs": [{"ip_address": "10.0.0.9"}]}}),
            409,
            "AddressPairAndPortSecurityRequired",
        ),
        (
            json!({"port": {"network_id": net, "allowed_address_pairs": [{"mac_address": "fa:16:3e:00:00:98"}]}}),
            400,
            "AllowedAddressPairsMissingIP",
        ),
        (
            json!({"port": {"network_id": net, "allowed_address_pairs": [{"ip_address": "10.0.0.9"}, {"ip_address": "10.0.0.9"}]}}),
            400,
            "DuplicateAddressPairInRequest",
        ),
        (
            json!({"port": {"network_id": net, "allowed_address_pairs": [{"ip_address": "ten"}]}}),
            400,
            "HTTPBadRequest",
        ),
        (
            json!({"port": {"network_id": net, "binding:vnic_type": "warp"}}),
            400,
            "HTTPBadRequest",
        ),
        (
            json!({"port": {"network_id": net, "binding:profile": [1]}}),
            400,
            "HTTPBadRequest",
        ),
        (
            json!({"port": {"network_id": net, "name": "x".repeat(256)}}),
            400,
            "HTTPBadRequest",
        ),
        (
            json!({"port": {"network_id": net, "admin_state_up": "yes"}}),
            400,
            "InvalidInput",
        ),
    ];
    for (body, status, kind) in cases {
        let result = api.post("/v2.0/ports", body.clone()).await;
        assert_eq!(result.0.as_u16(), status, "{body}: {}", result.1);
        assert_eq!(
            result.1["NeutronError"]["type"], kind,
            "{body}: {}",
            result.1
        );
    }
    assert_eq!(ports(&api, "").await, before);
});

api_test!(port_lookup_for_other_modules, |api| async move {
    let net = network(&api, "n").await;
    let s = subnet(&api, &net, "10.0.0.0/24", json!({})).await;
    let p = port(
        &api,
        json!({"network_id": net, "device_id": "vm", "binding:host_id": "h1",
               "fixed_ips": [{"ip_address": "10.0.0.9"}, {"ip_address": "10.0.0.10"}]}),
    )
    .await;
    assert_eq!(p["status"], "ACTIVE");
    let db = controller_stub::db::Db::connect(&api.url).await.unwrap();
    let mut tx = db.begin_write().await.unwrap();
    let found = controller_stub::api::ports::get_port(tx.conn(), &id(&p))
        .await
        .unwrap()
        .expect("port");
    assert_eq!(found.mac_address, p["mac_address"].as_str().unwrap());
    assert_eq!(found.host_id, "h1");
    assert_eq!(found.device_id, "vm");
    assert_eq!(found.network_id, net);
    let got: Vec<(String, String)> = found
        .fixed_ips
        .iter()
        .map(|f| (f.subnet_id.clone(), f.ip_address.to_string()))
        .collect();
    assert_eq!(
        got,
        [
            (s.clone(), "10.0.0.9".to_string()),
            (s, "10.0.0.10".to_string())
        ]
    );
    assert!(controller_stub::api::ports::get_port(
        tx.conn(),
        "6a3b4c1e-0f0e-4c43-a2a9-0e5b0d8c9a77"
    )
    .await
    .unwrap()
    .is_none());
    drop(tx);
    db.close().await;
});
