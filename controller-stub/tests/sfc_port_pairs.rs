//! `/v2.0/sfc/port_pairs`: reference/networking-sfc.md §1.2, one test per rule.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod sfc_common;

use common::assert_error;
use reqwest::{Method, StatusCode};
use serde_json::json;
use sfc_common::*;

const PP: &str = "port_pairs";

api_test!(create_show_list_update_delete, |api| async move {
    let net = network(&api, None).await;
    let a = port(&api, &net, "vm1").await;
    let b = port(&api, &net, "vm1").await;
    let (status, body) = post(&api, PP, json!({"ingress": a, "egress": b})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let pp = body["port_pair"].clone();
    let id = pp["id"].as_str().unwrap().to_string();
    assert_eq!(
        pp,
        json!({
            "id": id,
            "name": "",
            "description": "",
            "project_id": "admin",
            "tenant_id": "admin",
            "ingress": a,
            "egress": b,
            "service_function_parameters": {"correlation": null, "weight": 1},
        })
    );
    let (status, shown) = get(&api, PP, &id).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(shown["port_pair"], pp);
    let (_, listed) = api
        .get(&format!(
            "/v2.0/sfc/port_pairs?ingress={a}&fields=id&fields=egress"
        ))
        .await;
    assert_eq!(listed, json!({"port_pairs": [{"id": id, "egress": b}]}));
    let (_, none) = api.get("/v2.0/sfc/port_pairs?name=other").await;
    assert_eq!(none, json!({"port_pairs": []}));
    let (status, updated) = put(&api, PP, &id, json!({"name": "pp1", "description": "d"})).await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!(updated["port_pair"]["name"], "pp1");
    assert_eq!(updated["port_pair"]["description"], "d");
    assert_eq!(get(&api, PP, &id).await.1, updated);
    assert_eq!(delete(&api, PP, &id).await.0, StatusCode::NO_CONTENT);
    assert_error(
        &get(&api, PP, &id).await,
        StatusCode::NOT_FOUND,
        "PortPairNotFound",
    );
});

api_test!(ingress_may_equal_egress, |api| async move {
    let net = network(&api, None).await;
    let a = port(&api, &net, "vm1").await;
    let pp = create(&api, PP, json!({"ingress": a, "egress": a})).await;
    assert_eq!(pp["ingress"], pp["egress"]);
});

api_test!(
    service_function_parameters_defaults_and_conversions,
    |api| async move {
        let net = network(&api, None).await;
        let mut ports = Vec::new();
        for _ in 0..5 {
            ports.push(port(&api, &net, "vm").await);
        }
        let cases = [
            (json!(null), json!({"correlation": null, "weight": 1})),
            (json!({}), json!({"correlation": null, "weight": 1})),
            (
                json!({"weight": 2}),
                json!({"correlation": null, "weight": 2}),
            ),
            // python-neutronclient sends the weight as a string.
            (
                json!({"correlation": "mpls", "weight": "3"}),
                json!({"correlation": "mpls", "weight": 3}),
            ),
            (
                json!({"correlation": "nsh", "weight": 0}),
                json!({"correlation": "nsh", "weight": 0}),
            ),
        ];
        for (port, (given, stored)) in ports.iter().zip(cases) {
            let pp = create(
                &api,
                PP,
                json!({"ingress": port, "egress": port, "service_function_parameters": given}),
            )
            .await;
            assert_eq!(pp["service_function_parameters"], stored, "given {given}");
        }
    }
);

api_test!(
    invalid_service_function_parameters_are_400,
    |api| async move {
        let net = network(&api, None).await;
        let a = port(&api, &net, "vm1").await;
        for (params, kind) in [
            (json!({"abc": "def"}), "HTTPBadRequest"),
            (json!({"correlation": "def"}), "HTTPBadRequest"),
            (json!({"weight": -1}), "HTTPBadRequest"),
            (json!({"weight": "heavy"}), "InvalidInput"),
            (json!("mpls"), "HTTPBadRequest"),
        ] {
            post_refused(
                &api,
                PP,
                json!({"ingress": a, "egress": a, "service_function_parameters": params}),
                StatusCode::BAD_REQUEST,
                kind,
            )
            .await;
        }
    }
);

api_test!(missing_or_malformed_ports_are_400, |api| async move {
    let net = network(&api, None).await;
    let a = port(&api, &net, "vm1").await;
    for body in [
        json!({}),
        json!({"egress": a}),
        json!({"ingress": a}),
        json!({"ingress": "1", "egress": a}),
        json!({"ingress": a, "egress": "1"}),
        json!({"ingress": a, "egress": 5}),
        json!({"ingress": a, "egress": a, "colour": "red"}),
        json!({"ingress": a, "egress": a, "id": unknown()}),
        json!({"ingress": a, "egress": a, "name": "x".repeat(256)}),
    ] {
        post_refused(&api, PP, body, StatusCode::BAD_REQUEST, "HTTPBadRequest").await;
    }
    // Not wrapped in the resource key.
    assert_error(
        &api.post(PP_PATH, json!({"ingress": a, "egress": a})).await,
        StatusCode::BAD_REQUEST,
        "HTTPBadRequest",
    );
    assert_eq!(count(&api, PP).await, 0);
});

const PP_PATH: &str = "/v2.0/sfc/port_pairs";

api_test!(unknown_ports_are_404, |api| async move {
    let net = network(&api, None).await;
    let a = port(&api, &net, "vm1").await;
    for body in [
        json!({"ingress": unknown(), "egress": a}),
        json!({"ingress": a, "egress": unknown()}),
    ] {
        post_refused(
            &api,
            PP,
            body,
            StatusCode::NOT_FOUND,
            "PortPairPortNotFound",
        )
        .await;
    }
});

api_test!(ports_without_a_device_are_400, |api| async move {
    let net = network(&api, None).await;
    let bound = port(&api, &net, "vm1").await;
    let loose = port(&api, &net, "").await;
    post_refused(
        &api,
        PP,
        json!({"ingress": loose, "egress": bound}),
        StatusCode::BAD_REQUEST,
        "PortPairIngressNoHost",
    )
    .await;
    post_refused(
        &api,
        PP,
        json!({"ingress": bound, "egress": loose}),
        StatusCode::BAD_REQUEST,
        "PortPairEgressNoHost",
    )
    .await;
});

api_test!(ports_of_different_devices_are_400, |api| async move {
    let net = network(&api, None).await;
    let a = port(&api, &net, "vm1").await;
    let b = port(&api, &net, "vm2").await;
    post_refused(
        &api,
        PP,
        json!({"ingress": a, "egress": b}),
        StatusCode::BAD_REQUEST,
        "PortPairIngressEgressDifferentHost",
    )
    .await;
});

api_test!(a_pair_of_ports_is_used_once, |api| async move {
    let net = network(&api, None).await;
    let a = port(&api, &net, "vm1").await;
    let b = port(&api, &net, "vm1").await;
    create(&api, PP, json!({"ingress": a, "egress": b})).await;
    // A 400 (InvalidInput), not a 409, as networking-sfc's exception class says.
    post_refused(
        &api,
        PP,
        json!({"ingress": a, "egress": b, "name": "again"}),
        StatusCode::BAD_REQUEST,
        "PortPairIngressEgressInUse",
    )
    .await;
    // The reverse pair is another pair.
    create(&api, PP, json!({"ingress": b, "egress": a})).await;
});

api_test!(create_only_attributes_cannot_be_updated, |api| async move {
    let net = network(&api, None).await;
    let a = port(&api, &net, "vm1").await;
    let b = port(&api, &net, "vm1").await;
    let id = create_id(&api, PP, json!({"ingress": a, "egress": b})).await;
    for body in [
        json!({"ingress": b}),
        json!({"egress": a}),
        json!({"service_function_parameters": {"correlation": null, "weight": 2}}),
        json!({"project_id": "other"}),
        json!({"tenant_id": "other"}),
        json!({"id": unknown()}),
    ] {
        put_refused(
            &api,
            PP,
            &id,
            body,
            StatusCode::BAD_REQUEST,
            "HTTPBadRequest",
        )
        .await;
    }
    put_refused(
        &api,
        PP,
        &id,
        json!({"name": 7}),
        StatusCode::BAD_REQUEST,
        "HTTPBadRequest",
    )
    .await;
});

api_test!(a_port_pair_in_a_group_cannot_be_deleted, |api| async move {
    let net = network(&api, None).await;
    let pp = port_pair(&api, &net, "vm1", None).await;
    let g = group(&api, &[&pp]).await;
    delete_refused(&api, PP, &pp, StatusCode::CONFLICT, "PortPairInUse").await;
    assert_eq!(
        delete(&api, "port_pair_groups", &g).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(delete(&api, PP, &pp).await.0, StatusCode::NO_CONTENT);
});

api_test!(
    deleting_a_neutron_port_of_a_port_pair_fails,
    |api| async move {
        let net = network(&api, None).await;
        let a = port(&api, &net, "vm1").await;
        let b = port(&api, &net, "vm1").await;
        let pp = create(&api, PP, json!({"ingress": a, "egress": b})).await;
        // networking-sfc's foreign keys are RESTRICT and Neutron surfaces the failure as a 500.
        for p in [&a, &b] {
            let (status, body) = api.delete(&format!("/v2.0/ports/{p}")).await;
            assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
            assert_eq!(api.get(&format!("/v2.0/ports/{p}")).await.0, StatusCode::OK);
        }
        assert_eq!(
            get(&api, PP, pp["id"].as_str().unwrap()).await.1["port_pair"],
            pp
        );
        // Once the port pair is gone, the ports can go.
        delete(&api, PP, pp["id"].as_str().unwrap()).await;
        assert_eq!(
            api.delete(&format!("/v2.0/ports/{a}")).await.0,
            StatusCode::NO_CONTENT
        );
    }
);

api_test!(missing_ids_are_404, |api| async move {
    let id = unknown();
    assert_error(
        &get(&api, PP, &id).await,
        StatusCode::NOT_FOUND,
        "PortPairNotFound",
    );
    assert_error(
        &put(&api, PP, &id, json!({"name": "x"})).await,
        StatusCode::NOT_FOUND,
        "PortPairNotFound",
    );
    assert_error(
        &delete(&api, PP, &id).await,
        StatusCode::NOT_FOUND,
        "PortPairNotFound",
    );
    // A path id that is no UUID names nothing (networking-sfc's tests use "1").
    assert_error(
        &get(&api, PP, "1").await,
        StatusCode::NOT_FOUND,
        "PortPairNotFound",
    );
    assert_error(
        &delete(&api, PP, "1").await,
        StatusCode::NOT_FOUND,
        "PortPairNotFound",
    );
});

api_test!(projects_see_only_their_own, |api| async move {
    let net = network(&api, Some("p1")).await;
    let a = port_as(&api, &net, "vm1", Some("p1")).await;
    let (status, body) = post_as(&api, PP, json!({"ingress": a, "egress": a}), Some("p1")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["port_pair"]["project_id"], "p1");
    assert_eq!(body["port_pair"]["tenant_id"], "p1");
    let id = body["port_pair"]["id"].as_str().unwrap().to_string();
    let path = format!("{PP_PATH}/{id}");
    let (_, theirs) = api.call(Method::GET, PP_PATH, None, Some("p2")).await;
    assert_eq!(theirs, json!({"port_pairs": []}));
    for method in [Method::GET, Method::DELETE] {
        assert_error(
            &api.call(method, &path, None, Some("p2")).await,
            StatusCode::NOT_FOUND,
            "PortPairNotFound",
        );
    }
    assert_error(
        &api.call(
            Method::PUT,
            &path,
            Some(json!({"port_pair": {"name": "x"}})),
            Some("p2"),
        )
        .await,
        StatusCode::NOT_FOUND,
        "PortPairNotFound",
    );
    // Another project's Neutron ports are not there for p2 either.
    let (status, _) = post_as(&api, PP, json!({"ingress": a, "egress": a}), Some("p2")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // The admin sees it.
    assert_eq!(count(&api, PP).await, 1);
    let (status, _) = api.call(Method::GET, &path, None, Some("p1")).await;
    assert_eq!(status, StatusCode::OK);
});

api_test!(quota_is_100_per_project, |api| async move {
    let net = network(&api, None).await;
    for i in 0..100 {
        let p = port(&api, &net, &format!("vm{i}")).await;
        create(&api, PP, json!({"ingress": p, "egress": p})).await;
    }
    let p = port(&api, &net, "vm-last").await;
    post_refused(
        &api,
        PP,
        json!({"ingress": p, "egress": p}),
        StatusCode::CONFLICT,
        "OverQuota",
    )
    .await;
    // Another project's quota is its own.
    let net2 = network(&api, Some("p2")).await;
    let q = port_as(&api, &net2, "vm", Some("p2")).await;
    let (status, body) = post_as(&api, PP, json!({"ingress": q, "egress": q}), Some("p2")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
});

api_test!(state_survives_a_restart, |api| async move {
    let net = network(&api, None).await;
    let pp = port_pair(&api, &net, "vm1", Some("mpls")).await;
    let before = get(&api, PP, &pp).await;
    let api = api.restart().await;
    assert_eq!(get(&api, PP, &pp).await, before);
});
