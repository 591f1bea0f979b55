//! `/v2.0/sfc/port_pair_groups`: reference/networking-sfc.md §1.3, one test per rule.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod sfc_common;

use common::assert_error;
use reqwest::{Method, StatusCode};
use serde_json::json;
use sfc_common::*;

const PPG: &str = "port_pair_groups";

api_test!(create_show_list_update_delete, |api| async move {
    let net = network(&api, None).await;
    let pp1 = port_pair(&api, &net, "vm1", None).await;
    let pp2 = port_pair(&api, &net, "vm2", None).await;
    let g = create(&api, PPG, json!({"name": "g", "port_pairs": [pp1]})).await;
    let id = g["id"].as_str().unwrap().to_string();
    assert_eq!(
        g,
        json!({
            "id": id,
            "name": "g",
            "description": "",
            "project_id": "admin",
            "tenant_id": "admin",
            "port_pairs": [pp1],
            "tap_enabled": false,
            "port_pair_group_parameters": {
                "lb_fields": [],
                "ppg_n_tuple_mapping": {"ingress_n_tuple": {}, "egress_n_tuple": {}},
            },
            "group_id": 1,
        })
    );
    assert_eq!(get(&api, PPG, &id).await.1["port_pair_group"], g);
    let (_, listed) = api
        .get(&format!(
            "/v2.0/sfc/port_pair_groups?port_pairs={pp1}&fields=id"
        ))
        .await;
    assert_eq!(listed, json!({"port_pair_groups": [{"id": id}]}));
    // Members are replaced as a whole, in the order given.
    let (status, updated) = put(
        &api,
        PPG,
        &id,
        json!({"name": "g2", "description": "d", "port_pairs": [pp2, pp1]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!(updated["port_pair_group"]["port_pairs"], json!([pp2, pp1]));
    assert_eq!(updated["port_pair_group"]["name"], "g2");
    assert_eq!(get(&api, PPG, &id).await.1, updated);
    let (_, emptied) = put(&api, PPG, &id, json!({"port_pairs": []})).await;
    assert_eq!(emptied["port_pair_group"]["port_pairs"], json!([]));
    assert_eq!(delete(&api, PPG, &id).await.0, StatusCode::NO_CONTENT);
    assert_error(
        &get(&api, PPG, &id).await,
        StatusCode::NOT_FOUND,
        "PortPairGroupNotFound",
    );
});

api_test!(an_empty_group_is_allowed, |api| async move {
    for body in [
        json!({}),
        json!({"port_pairs": null}),
        json!({"port_pairs": []}),
    ] {
        let g = create(&api, PPG, body).await;
        assert_eq!(g["port_pairs"], json!([]));
    }
});

api_test!(group_id_is_the_lowest_free_from_1, |api| async move {
    let a = create(&api, PPG, json!({})).await;
    let b = create(&api, PPG, json!({})).await;
    let c = create(&api, PPG, json!({})).await;
    assert_eq!(
        [&a["group_id"], &b["group_id"], &c["group_id"]],
        [&json!(1), &json!(2), &json!(3)]
    );
    delete(&api, PPG, b["id"].as_str().unwrap()).await;
    assert_eq!(create(&api, PPG, json!({})).await["group_id"], 2);
    assert_eq!(create(&api, PPG, json!({})).await["group_id"], 4);
    post_refused(
        &api,
        PPG,
        json!({"group_id": 9}),
        StatusCode::BAD_REQUEST,
        "HTTPBadRequest",
    )
    .await;
});

api_test!(group_parameters_defaults_and_values, |api| async move {
    let default_n_tuple = json!({"ingress_n_tuple": {}, "egress_n_tuple": {}});
    for (given, stored) in [
        (
            json!(null),
            json!({"lb_fields": [], "ppg_n_tuple_mapping": default_n_tuple}),
        ),
        (
            json!({}),
            json!({"lb_fields": [], "ppg_n_tuple_mapping": default_n_tuple}),
        ),
        (
            json!({"lb_fields": ["ip_src", "ip_dst"]}),
            json!({"lb_fields": ["ip_src", "ip_dst"], "ppg_n_tuple_mapping": default_n_tuple}),
        ),
        // Given sub-dictionaries are kept as given (networking-sfc fills top-level keys only).
        (
            json!({"lb_fields": [], "ppg_n_tuple_mapping": {}}),
            json!({"lb_fields": [], "ppg_n_tuple_mapping": {}}),
        ),
        (
            json!({"ppg_n_tuple_mapping": {
                "ingress_n_tuple": {"source_ip_prefix": null, "destination_port_range_min": "80"},
                "egress_n_tuple": {"destination_ip_prefix": "10.0.0.0/24"}}}),
            json!({"lb_fields": [], "ppg_n_tuple_mapping": {
                "ingress_n_tuple": {"source_ip_prefix": null, "destination_port_range_min": 80},
                "egress_n_tuple": {"destination_ip_prefix": "10.0.0.0/24"}}}),
        ),
    ] {
        let g = create(&api, PPG, json!({"port_pair_group_parameters": given})).await;
        assert_eq!(g["port_pair_group_parameters"], stored, "given {given}");
    }
});

api_test!(invalid_group_parameters_are_400, |api| async move {
    for (params, kind) in [
        (json!({"lb_fields": ["ip_proto"]}), "HTTPBadRequest"),
        (json!({"lb_fields": "ip_src"}), "HTTPBadRequest"),
        (json!({"weight": 1}), "HTTPBadRequest"),
        (json!([]), "HTTPBadRequest"),
        (
            json!({"ppg_n_tuple_mapping": {"ingress_n_tuple": {"vlan": 5}}}),
            "PPGParametersInvalidNTupleMappingParameter",
        ),
        (
            json!({"ppg_n_tuple_mapping": {"sideways_n_tuple": {}}}),
            "PPGParametersInvalidNTupleMappingParameter",
        ),
        (
            json!({"ppg_n_tuple_mapping": {"egress_n_tuple": {"source_ip_prefix": "x"}}}),
            "HTTPBadRequest",
        ),
        (
            json!({"ppg_n_tuple_mapping": {"egress_n_tuple": {"source_port_range_min": 70000}}}),
            "FlowClassifierInvalidPortValue",
        ),
    ] {
        post_refused(
            &api,
            PPG,
            json!({"port_pair_group_parameters": params}),
            StatusCode::BAD_REQUEST,
            kind,
        )
        .await;
    }
});

api_test!(
    port_pairs_must_be_distinct_uuids_of_existing_pairs,
    |api| async move {
        let net = network(&api, None).await;
        let pp = port_pair(&api, &net, "vm1", None).await;
        for body in [
            json!({"port_pairs": ["pp-1"]}),
            json!({"port_pairs": [pp, pp]}),
            json!({"port_pairs": pp}),
        ] {
            post_refused(&api, PPG, body, StatusCode::BAD_REQUEST, "HTTPBadRequest").await;
        }
        post_refused(
            &api,
            PPG,
            json!({"port_pairs": [pp, unknown()]}),
            StatusCode::NOT_FOUND,
            "PortPairNotFound",
        )
        .await;
        let g = group(&api, &[]).await;
        put_refused(
            &api,
            PPG,
            &g,
            json!({"port_pairs": [unknown()]}),
            StatusCode::NOT_FOUND,
            "PortPairNotFound",
        )
        .await;
    }
);

api_test!(a_port_pair_belongs_to_one_group, |api| async move {
    let net = network(&api, None).await;
    let pp1 = port_pair(&api, &net, "vm1", None).await;
    let pp2 = port_pair(&api, &net, "vm2", None).await;
    let g1 = group(&api, &[&pp1]).await;
    post_refused(
        &api,
        PPG,
        json!({"port_pairs": [pp2, pp1]}),
        StatusCode::CONFLICT,
        "PortPairInUse",
    )
    .await;
    let g2 = group(&api, &[&pp2]).await;
    put_refused(
        &api,
        PPG,
        &g2,
        json!({"port_pairs": [pp2, pp1]}),
        StatusCode::CONFLICT,
        "PortPairInUse",
    )
    .await;
    // Naming its own members again is fine; a pair a group lets go is free for another.
    assert_eq!(
        put(&api, PPG, &g1, json!({"port_pairs": [pp1]})).await.0,
        StatusCode::OK
    );
    assert_eq!(
        put(&api, PPG, &g1, json!({"port_pairs": []})).await.0,
        StatusCode::OK
    );
    assert_eq!(
        put(&api, PPG, &g2, json!({"port_pairs": [pp2, pp1]}))
            .await
            .0,
        StatusCode::OK
    );
    // Deleting a group frees its pairs too.
    assert_eq!(delete(&api, PPG, &g2).await.0, StatusCode::NO_CONTENT);
    group(&api, &[&pp1, &pp2]).await;
});

api_test!(
    port_pairs_of_a_group_share_one_correlation,
    |api| async move {
        let net = network(&api, None).await;
        let mpls1 = port_pair(&api, &net, "vm1", Some("mpls")).await;
        let mpls2 = port_pair(&api, &net, "vm2", Some("mpls")).await;
        let none = port_pair(&api, &net, "vm3", None).await;
        let nsh = port_pair(&api, &net, "vm4", Some("nsh")).await;
        for pps in [[&mpls1, &none], [&none, &mpls1], [&mpls1, &nsh]] {
            post_refused(
                &api,
                PPG,
                json!({ "port_pairs": pps }),
                StatusCode::BAD_REQUEST,
                "InconsistentCorrelations",
            )
            .await;
        }
        let g = group(&api, &[&mpls1, &mpls2]).await;
        put_refused(
            &api,
            PPG,
            &g,
            json!({"port_pairs": [mpls1, mpls2, none]}),
            StatusCode::BAD_REQUEST,
            "InconsistentCorrelations",
        )
        .await;
    }
);

api_test!(a_tap_group_holds_one_port_pair, |api| async move {
    let net = network(&api, None).await;
    let pp1 = port_pair(&api, &net, "vm1", None).await;
    let pp2 = port_pair(&api, &net, "vm2", None).await;
    post_refused(
        &api,
        PPG,
        json!({"port_pairs": [pp1, pp2], "tap_enabled": true}),
        StatusCode::BAD_REQUEST,
        "MultiplePortPairsInTapPPGNotSupported",
    )
    .await;
    // The client's "true" string is a boolean too.
    let tap = create(
        &api,
        PPG,
        json!({"port_pairs": [pp1], "tap_enabled": "true"}),
    )
    .await;
    assert_eq!(tap["tap_enabled"], true);
    put_refused(
        &api,
        PPG,
        tap["id"].as_str().unwrap(),
        json!({"port_pairs": [pp1, pp2]}),
        StatusCode::BAD_REQUEST,
        "MultiplePortPairsInTapPPGNotSupported",
    )
    .await;
    post_refused(
        &api,
        PPG,
        json!({"tap_enabled": "maybe"}),
        StatusCode::BAD_REQUEST,
        "InvalidInput",
    )
    .await;
    // A group with several pairs is not a tap group by default.
    let g = create(&api, PPG, json!({"port_pairs": [pp2]})).await;
    assert_eq!(g["tap_enabled"], false);
});

api_test!(create_only_attributes_cannot_be_updated, |api| async move {
    let g = group(&api, &[]).await;
    for body in [
        json!({"tap_enabled": true}),
        json!({"port_pair_group_parameters": {"lb_fields": ["ip_src"]}}),
        json!({"group_id": 7}),
        json!({"project_id": "p9"}),
        json!({"id": unknown()}),
        json!({"ports": []}),
    ] {
        put_refused(
            &api,
            PPG,
            &g,
            body,
            StatusCode::BAD_REQUEST,
            "HTTPBadRequest",
        )
        .await;
    }
});

api_test!(a_group_in_a_chain_cannot_be_deleted, |api| async move {
    let g = group(&api, &[]).await;
    let c = chain(&api, &[&g], &[]).await;
    delete_refused(&api, PPG, &g, StatusCode::CONFLICT, "PortPairGroupInUse").await;
    assert_eq!(
        delete(&api, "port_chains", &c).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(delete(&api, PPG, &g).await.0, StatusCode::NO_CONTENT);
});

api_test!(missing_ids_are_404, |api| async move {
    let id = unknown();
    let kind = "PortPairGroupNotFound";
    assert_error(&get(&api, PPG, &id).await, StatusCode::NOT_FOUND, kind);
    assert_error(
        &put(&api, PPG, &id, json!({"name": "x"})).await,
        StatusCode::NOT_FOUND,
        kind,
    );
    assert_error(&delete(&api, PPG, &id).await, StatusCode::NOT_FOUND, kind);
    assert_error(&get(&api, PPG, "1").await, StatusCode::NOT_FOUND, kind);
});

api_test!(projects_see_only_their_own, |api| async move {
    let (status, body) = post_as(&api, PPG, json!({}), Some("p1")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let id = body["port_pair_group"]["id"].as_str().unwrap().to_string();
    let path = format!("/v2.0/sfc/port_pair_groups/{id}");
    let (_, theirs) = api
        .call(Method::GET, "/v2.0/sfc/port_pair_groups", None, Some("p2"))
        .await;
    assert_eq!(theirs, json!({"port_pair_groups": []}));
    for method in [Method::GET, Method::DELETE] {
        assert_error(
            &api.call(method, &path, None, Some("p2")).await,
            StatusCode::NOT_FOUND,
            "PortPairGroupNotFound",
        );
    }
    // p2 cannot put an admin's port pair in its group.
    let net = network(&api, None).await;
    let pp = port_pair(&api, &net, "vm1", None).await;
    let (status, _) = post_as(&api, PPG, json!({"port_pairs": [pp]}), Some("p2")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // p2 cannot chain p1's group either.
    let (status, _) = post_as(
        &api,
        "port_chains",
        json!({"port_pair_groups": [id]}),
        Some("p2"),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
});

api_test!(quota_is_10_per_project, |api| async move {
    for _ in 0..10 {
        group(&api, &[]).await;
    }
    post_refused(&api, PPG, json!({}), StatusCode::CONFLICT, "OverQuota").await;
    let (status, _) = post_as(&api, PPG, json!({}), Some("p2")).await;
    assert_eq!(status, StatusCode::CREATED);
});
