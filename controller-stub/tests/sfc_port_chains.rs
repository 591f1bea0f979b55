//! `/v2.0/sfc/port_chains`: reference/networking-sfc.md §1.5, one test per rule.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod sfc_common;

use common::{assert_error, TestApi};
use controller_stub::db::Db;
use reqwest::{Method, StatusCode};
use serde_json::json;
use sfc_common::*;

const PC: &str = "port_chains";

api_test!(create_show_list_update_delete, |api| async move {
    let g1 = group(&api, &[]).await;
    let g2 = group(&api, &[]).await;
    let fc = classifier(&api, json!({})).await;
    let (status, body) = post(&api, PC, json!({"port_pair_groups": [g1]})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let c = body["port_chain"].clone();
    let id = c["id"].as_str().unwrap().to_string();
    assert_eq!(
        c,
        json!({
            "id": id,
            "name": "",
            "description": "",
            "project_id": "admin",
            "tenant_id": "admin",
            "port_pair_groups": [g1],
            "flow_classifiers": [],
            "chain_parameters": {"correlation": "mpls", "symmetric": false},
            "chain_id": 1,
        })
    );
    assert_eq!(get(&api, PC, &id).await.1["port_chain"], c);
    let (_, listed) = api
        .get("/v2.0/sfc/port_chains?chain_id=1&fields=id&fields=chain_id")
        .await;
    assert_eq!(listed, json!({"port_chains": [{"id": id, "chain_id": 1}]}));
    let (status, updated) = put(
        &api,
        PC,
        &id,
        json!({
            "name": "web",
            "description": "d",
            "port_pair_groups": [g2, g1],
            "flow_classifiers": [fc],
        }),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    let u = &updated["port_chain"];
    assert_eq!(u["name"], "web");
    assert_eq!(u["description"], "d");
    assert_eq!(u["port_pair_groups"], json!([g2, g1]));
    assert_eq!(u["flow_classifiers"], json!([fc]));
    assert_eq!(u["chain_id"], 1);
    assert_eq!(get(&api, PC, &id).await.1, updated);
    // Removing classifiers frees them.
    let (_, cleared) = put(&api, PC, &id, json!({"flow_classifiers": null})).await;
    assert_eq!(cleared["port_chain"]["flow_classifiers"], json!([]));
    assert_eq!(
        delete(&api, "flow_classifiers", &fc).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(delete(&api, PC, &id).await.0, StatusCode::NO_CONTENT);
    assert_error(
        &get(&api, PC, &id).await,
        StatusCode::NOT_FOUND,
        "PortChainNotFound",
    );
    // The groups stay.
    assert_eq!(get(&api, "port_pair_groups", &g1).await.0, StatusCode::OK);
});

api_test!(chain_id_is_the_lowest_free_from_1, |api| async move {
    let mut ids = Vec::new();
    for _ in 0..3 {
        let g = group(&api, &[]).await;
        ids.push(create(&api, PC, json!({"port_pair_groups": [g]})).await);
    }
    let chain_ids: Vec<_> = ids.iter().map(|c| c["chain_id"].clone()).collect();
    assert_eq!(chain_ids, [json!(1), json!(2), json!(3)]);
    delete(&api, PC, ids[1]["id"].as_str().unwrap()).await;
    let g = group(&api, &[]).await;
    assert_eq!(
        create(&api, PC, json!({"port_pair_groups": [g], "chain_id": 0})).await["chain_id"],
        2
    );
});

api_test!(explicit_chain_ids, |api| async move {
    let g = [
        group(&api, &[]).await,
        group(&api, &[]).await,
        group(&api, &[]).await,
        group(&api, &[]).await,
    ];
    let c = create(
        &api,
        PC,
        json!({"port_pair_groups": [g[0]], "chain_id": 88}),
    )
    .await;
    assert_eq!(c["chain_id"], 88);
    post_refused(
        &api,
        PC,
        json!({"port_pair_groups": [g[1]], "chain_id": 88}),
        StatusCode::BAD_REQUEST,
        "PortChainChainIdInConflict",
    )
    .await;
    // The largest value a request may name; as a string, as clients may send it.
    let c = create(
        &api,
        PC,
        json!({"port_pair_groups": [g[2]], "chain_id": "65535"}),
    )
    .await;
    assert_eq!(c["chain_id"], 65535);
    for (chain_id, kind) in [
        (json!(65536), "HTTPBadRequest"),
        (json!(-1), "HTTPBadRequest"),
        (json!("abc"), "InvalidInput"),
        (json!(null), "InvalidInput"),
    ] {
        post_refused(
            &api,
            PC,
            json!({"port_pair_groups": [g[3]], "chain_id": chain_id}),
            StatusCode::BAD_REQUEST,
            kind,
        )
        .await;
    }
    // Automatic ids start below the explicit ones.
    assert_eq!(
        create(&api, PC, json!({"port_pair_groups": [g[3]]})).await["chain_id"],
        1
    );
});

api_test!(no_free_chain_id_is_400, |api| async move {
    // Fill 1..65534 with another project's chains straight in the database (the API's quota
    // would stop us long before), then ask for an automatic id.
    let db = Db::connect(&api.url).await.unwrap();
    let mut tx = db.begin_write().await.unwrap();
    sqlx::query(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 65534) \
         INSERT INTO sfc_port_chains (id, project_id, name, description, chain_id, \
         chain_parameters, created_at) \
         SELECT 'filler-' || CAST(i AS TEXT), 'filler', '', '', i, \
         '{\"correlation\": \"mpls\", \"symmetric\": false}', '2026-01-01T00:00:00Z' FROM n",
    )
    .execute(tx.conn())
    .await
    .unwrap();
    tx.commit().await.unwrap();
    db.close().await;
    // As another project, so that the checks below do not list 65534 chains.
    let (_, g) = post_as(&api, "port_pair_groups", json!({}), Some("p3")).await;
    let g = g["port_pair_group"]["id"].as_str().unwrap().to_string();
    let result = post_as(&api, PC, json!({"port_pair_groups": [g]}), Some("p3")).await;
    assert_error(
        &result,
        StatusCode::BAD_REQUEST,
        "PortChainUnavailableChainId",
    );
    let (_, mine) = api
        .call(Method::GET, "/v2.0/sfc/port_chains", None, Some("p3"))
        .await;
    assert_eq!(mine, json!({"port_chains": []}));
    // 65535 is never assigned automatically but may be asked for.
    let (status, body) = post_as(
        &api,
        PC,
        json!({"port_pair_groups": [g], "chain_id": 65535}),
        Some("p3"),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["port_chain"]["chain_id"], 65535);
});

api_test!(
    port_pair_groups_are_required_and_not_empty,
    |api| async move {
        let g = group(&api, &[]).await;
        for (body, kind) in [
            (json!({}), "HTTPBadRequest"),
            (json!({"port_pair_groups": []}), "PortPairGroupNotSpecified"),
            (
                json!({"port_pair_groups": null}),
                "PortPairGroupNotSpecified",
            ),
            (json!({"port_pair_groups": ["unknown"]}), "HTTPBadRequest"),
            (json!({"port_pair_groups": [g, g]}), "HTTPBadRequest"),
            (json!({"port_pair_groups": {"a": 1}}), "HTTPBadRequest"),
            (
                json!({"port_pair_groups": [g], "hops": 1}),
                "HTTPBadRequest",
            ),
            (
                json!({"port_pair_groups": [g], "id": unknown()}),
                "HTTPBadRequest",
            ),
        ] {
            post_refused(&api, PC, body, StatusCode::BAD_REQUEST, kind).await;
        }
        post_refused(
            &api,
            PC,
            json!({"port_pair_groups": [g, unknown()]}),
            StatusCode::NOT_FOUND,
            "PortPairGroupNotFound",
        )
        .await;
        // A single id is a list of one (neutron-lib's convert_to_list).
        let c = create(&api, PC, json!({"port_pair_groups": g})).await;
        assert_eq!(c["port_pair_groups"], json!([g]));
    }
);

api_test!(
    flow_classifiers_must_be_uuids_of_existing_classifiers,
    |api| async move {
        let g = group(&api, &[]).await;
        post_refused(
            &api,
            PC,
            json!({"port_pair_groups": [g], "flow_classifiers": ["fc1"]}),
            StatusCode::BAD_REQUEST,
            "HTTPBadRequest",
        )
        .await;
        post_refused(
            &api,
            PC,
            json!({"port_pair_groups": [g], "flow_classifiers": [unknown()]}),
            StatusCode::NOT_FOUND,
            "FlowClassifierNotFound",
        )
        .await;
        let c = create(
            &api,
            PC,
            json!({"port_pair_groups": [g], "flow_classifiers": null}),
        )
        .await;
        assert_eq!(c["flow_classifiers"], json!([]));
    }
);

api_test!(chain_parameters_defaults_and_values, |api| async move {
    for (given, stored) in [
        (
            json!(null),
            json!({"correlation": "mpls", "symmetric": false}),
        ),
        (
            json!({}),
            json!({"correlation": "mpls", "symmetric": false}),
        ),
        (
            json!({"correlation": "nsh"}),
            json!({"correlation": "nsh", "symmetric": false}),
        ),
        (
            json!({"symmetric": "true"}),
            json!({"correlation": "mpls", "symmetric": true}),
        ),
        (
            json!({"symmetric": true, "correlation": "mpls"}),
            json!({"correlation": "mpls", "symmetric": true}),
        ),
    ] {
        let g = group(&api, &[]).await;
        let c = create(
            &api,
            PC,
            json!({"port_pair_groups": [g], "chain_parameters": given}),
        )
        .await;
        assert_eq!(c["chain_parameters"], stored, "given {given}");
    }
});

api_test!(invalid_chain_parameters_are_400, |api| async move {
    let g = group(&api, &[]).await;
    for (params, kind) in [
        (json!({"correlation": "unknown"}), "HTTPBadRequest"),
        (json!({"correlation": null}), "HTTPBadRequest"),
        (json!({"symmetric": "abc"}), "InvalidInput"),
        (json!({"hash": "5-tuple"}), "HTTPBadRequest"),
        (json!("mpls"), "HTTPBadRequest"),
    ] {
        post_refused(
            &api,
            PC,
            json!({"port_pair_groups": [g], "chain_parameters": params}),
            StatusCode::BAD_REQUEST,
            kind,
        )
        .await;
    }
});

api_test!(groups_can_be_shared_between_chains, |api| async move {
    let g1 = group(&api, &[]).await;
    let g2 = group(&api, &[]).await;
    let g3 = group(&api, &[]).await;
    chain(&api, &[&g1, &g2], &[]).await;
    // Another list using the same groups, in another order, or partly: all fine.
    chain(&api, &[&g1, &g3], &[]).await;
    chain(&api, &[&g2, &g1], &[]).await;
    chain(&api, &[&g1], &[]).await;
});

api_test!(an_identical_group_list_is_409, |api| async move {
    let g1 = group(&api, &[]).await;
    let g2 = group(&api, &[]).await;
    let first = chain(&api, &[&g1, &g2], &[]).await;
    post_refused(
        &api,
        PC,
        json!({"port_pair_groups": [g1, g2]}),
        StatusCode::CONFLICT,
        "InvalidPortPairGroups",
    )
    .await;
    let other = chain(&api, &[&g2], &[]).await;
    put_refused(
        &api,
        PC,
        &other,
        json!({"port_pair_groups": [g1, g2]}),
        StatusCode::CONFLICT,
        "InvalidPortPairGroups",
    )
    .await;
    // A chain may keep its own list.
    assert_eq!(
        put(&api, PC, &first, json!({"port_pair_groups": [g1, g2]}))
            .await
            .0,
        StatusCode::OK
    );
});

api_test!(consecutive_tap_groups_are_400, |api| async move {
    let net = network(&api, None).await;
    let mut taps = Vec::new();
    for vm in ["tap1", "tap2"] {
        let pp = port_pair(&api, &net, vm, None).await;
        taps.push(
            create_id(
                &api,
                "port_pair_groups",
                json!({"port_pairs": [pp], "tap_enabled": true}),
            )
            .await,
        );
    }
    let plain = group_with_pair(&api, &net, None).await;
    post_refused(
        &api,
        PC,
        json!({"port_pair_groups": [taps[0], taps[1]]}),
        StatusCode::BAD_REQUEST,
        "ConsecutiveTapPPGNotSupported",
    )
    .await;
    // Separated by a normal group they are fine.
    let c = chain(&api, &[&taps[0], &plain, &taps[1]], &[]).await;
    put_refused(
        &api,
        PC,
        &c,
        json!({"port_pair_groups": [plain, taps[0], taps[1]]}),
        StatusCode::BAD_REQUEST,
        "ConsecutiveTapPPGNotSupported",
    )
    .await;
});

api_test!(
    port_pair_correlations_must_fit_the_chain,
    |api| async move {
        let net = network(&api, None).await;
        let mpls = group_with_pair(&api, &net, Some("mpls")).await;
        let nsh = group_with_pair(&api, &net, Some("nsh")).await;
        let none = group_with_pair(&api, &net, None).await;
        post_refused(
            &api,
            PC,
            json!({"port_pair_groups": [nsh, mpls], "chain_parameters": {"correlation": "nsh"}}),
            StatusCode::BAD_REQUEST,
            "PortChainInconsistentCorrelations",
        )
        .await;
        post_refused(
            &api,
            PC,
            json!({"port_pair_groups": [nsh]}),
            StatusCode::BAD_REQUEST,
            "PortChainInconsistentCorrelations",
        )
        .await;
        // No correlation fits any chain; a matching one fits its own.
        let c = chain(&api, &[&none, &mpls], &[]).await;
        create(
            &api,
            PC,
            json!({"port_pair_groups": [none, nsh], "chain_parameters": {"correlation": "nsh"}}),
        )
        .await;
        put_refused(
            &api,
            PC,
            &c,
            json!({"port_pair_groups": [mpls, nsh]}),
            StatusCode::BAD_REQUEST,
            "PortChainInconsistentCorrelations",
        )
        .await;
    }
);

api_test!(a_classifier_steers_into_one_chain, |api| async move {
    let fc = classifier(&api, json!({})).await;
    let g1 = group(&api, &[]).await;
    let g2 = group(&api, &[]).await;
    let first = chain(&api, &[&g1], &[&fc]).await;
    post_refused(
        &api,
        PC,
        json!({"port_pair_groups": [g2], "flow_classifiers": [fc]}),
        StatusCode::CONFLICT,
        "FlowClassifierInUse",
    )
    .await;
    let second = chain(&api, &[&g2], &[]).await;
    put_refused(
        &api,
        PC,
        &second,
        json!({"flow_classifiers": [fc]}),
        StatusCode::CONFLICT,
        "FlowClassifierInUse",
    )
    .await;
    // Released by its chain, it is free again.
    put(&api, PC, &first, json!({"flow_classifiers": []})).await;
    assert_eq!(
        put(&api, PC, &second, json!({"flow_classifiers": [fc]}))
            .await
            .0,
        StatusCode::OK
    );
    // Keeping it in its own chain is no conflict.
    assert_eq!(
        put(
            &api,
            PC,
            &second,
            json!({"flow_classifiers": [fc], "name": "x"})
        )
        .await
        .0,
        StatusCode::OK
    );
});

api_test!(
    classifiers_of_different_chains_must_not_overlap,
    |api| async move {
        let net = network(&api, None).await;
        let p1 = port(&api, &net, "vm1").await;
        let p2 = port(&api, &net, "vm2").await;
        // The same traffic from different logical ports: two classifiers may exist...
        let fc1 = classifier(
            &api,
            json!({"source_ip_prefix": "192.168.100.0/24", "logical_source_port": p1}),
        )
        .await;
        let fc2 = classifier(
            &api,
            json!({"source_ip_prefix": "192.168.100.0/24", "logical_source_port": p2}),
        )
        .await;
        let fc3 = classifier(
            &api,
            json!({"source_ip_prefix": "192.168.101.0/24", "logical_source_port": p1}),
        )
        .await;
        let g1 = group(&api, &[]).await;
        let g2 = group(&api, &[]).await;
        // ... and share one chain ...
        let both = chain(&api, &[&g1], &[&fc1, &fc2]).await;
        put(&api, PC, &both, json!({"flow_classifiers": [fc1]})).await;
        // ... but not steer into two (the basic conflict ignores logical ports).
        post_refused(
            &api,
            PC,
            json!({"port_pair_groups": [g2], "flow_classifiers": [fc2]}),
            StatusCode::BAD_REQUEST,
            "PortChainFlowClassifierInConflict",
        )
        .await;
        let other = chain(&api, &[&g2], &[&fc3]).await;
        put_refused(
            &api,
            PC,
            &other,
            json!({"flow_classifiers": [fc3, fc2]}),
            StatusCode::BAD_REQUEST,
            "PortChainFlowClassifierInConflict",
        )
        .await;
    }
);

api_test!(
    a_conflict_needs_every_term_to_overlap_protocol_and_port_ranges_included,
    |api| async move {
        let net = network(&api, None).await;
        // Each classifier from a port of its own: classifiers of different logical ports
        // may coexist, but a chain's check (the basic conflict) ignores logical ports.
        let mut vms = Vec::new();
        for i in 0..6 {
            vms.push(port(&api, &net, &format!("vm{i}")).await);
        }
        let ranged = classifier(
            &api,
            json!({"logical_source_port": vms[0], "protocol": "tcp", "destination_port_range_min": 100,
                               "destination_port_range_max": 200}),
        )
        .await;
        let (g1, g2, g3, g4, g5) = (
            group(&api, &[]).await,
            group(&api, &[]).await,
            group(&api, &[]).await,
            group(&api, &[]).await,
            group(&api, &[]).await,
        );
        chain(&api, &[&g1], &[&ranged]).await;
        // No protocol (and so no ports) is any protocol and any port.
        let any_protocol = classifier(
            &api,
            json!({"logical_source_port": vms[1], "destination_ip_prefix": "10.0.0.0/8"}),
        )
        .await;
        post_refused(
            &api,
            PC,
            json!({"port_pair_groups": [g2], "flow_classifiers": [any_protocol]}),
            StatusCode::BAD_REQUEST,
            "PortChainFlowClassifierInConflict",
        )
        .await;
        // Another protocol, or a range that starts after 200 or ends before 100: no conflict.
        let udp = classifier(
            &api,
            json!({"logical_source_port": vms[2], "protocol": "udp", "destination_port_range_min": 150,
                            "destination_port_range_max": 150}),
        )
        .await;
        let above = classifier(
            &api,
            json!({"logical_source_port": vms[3], "protocol": "tcp", "destination_port_range_min": 201,
                              "destination_port_range_max": 300}),
        )
        .await;
        let below = classifier(
            &api,
            json!({"logical_source_port": vms[4], "protocol": "tcp", "source_port_range_min": 7,
                              "source_port_range_max": 7, "destination_port_range_min": 1,
                              "destination_port_range_max": 99}),
        )
        .await;
        chain(&api, &[&g2], &[&udp]).await;
        chain(&api, &[&g3], &[&above]).await;
        chain(&api, &[&g4], &[&below]).await;
        // A source range against a classifier without one, inside the destination range.
        let sourced = classifier(
            &api,
            json!({"logical_source_port": vms[5], "protocol": "tcp", "source_port_range_min": 7,
                                "source_port_range_max": 9, "destination_port_range_min": 200,
                                "destination_port_range_max": 200}),
        )
        .await;
        post_refused(
            &api,
            PC,
            json!({"port_pair_groups": [g5], "flow_classifiers": [sourced]}),
            StatusCode::BAD_REQUEST,
            "PortChainFlowClassifierInConflict",
        )
        .await;
    }
);

api_test!(create_only_attributes_cannot_be_updated, |api| async move {
    let g = group(&api, &[]).await;
    let c = chain(&api, &[&g], &[]).await;
    for body in [
        json!({"chain_parameters": {"correlation": "mpls"}}),
        json!({"chain_id": 5}),
        json!({"project_id": "p9"}),
        json!({"id": unknown()}),
        json!({"port_pair_groups": []}),
    ] {
        let kind = if body.get("port_pair_groups").is_some() {
            "PortPairGroupNotSpecified"
        } else {
            "HTTPBadRequest"
        };
        put_refused(&api, PC, &c, body, StatusCode::BAD_REQUEST, kind).await;
    }
});

api_test!(missing_ids_are_404, |api| async move {
    let id = unknown();
    let kind = "PortChainNotFound";
    assert_error(&get(&api, PC, &id).await, StatusCode::NOT_FOUND, kind);
    assert_error(
        &put(&api, PC, &id, json!({"name": "x"})).await,
        StatusCode::NOT_FOUND,
        kind,
    );
    assert_error(&delete(&api, PC, &id).await, StatusCode::NOT_FOUND, kind);
    assert_error(&get(&api, PC, "1").await, StatusCode::NOT_FOUND, kind);
    let g = group(&api, &[]).await;
    let c = chain(&api, &[&g], &[]).await;
    put_refused(
        &api,
        PC,
        &c,
        json!({"port_pair_groups": [unknown()]}),
        StatusCode::NOT_FOUND,
        "PortPairGroupNotFound",
    )
    .await;
    put_refused(
        &api,
        PC,
        &c,
        json!({"flow_classifiers": [unknown()]}),
        StatusCode::NOT_FOUND,
        "FlowClassifierNotFound",
    )
    .await;
});

api_test!(projects_see_only_their_own, |api| async move {
    let (status, g) = post_as(&api, "port_pair_groups", json!({}), Some("p1")).await;
    assert_eq!(status, StatusCode::CREATED);
    let g = g["port_pair_group"]["id"].as_str().unwrap().to_string();
    let (status, body) = post_as(&api, PC, json!({"port_pair_groups": [g]}), Some("p1")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["port_chain"]["project_id"], "p1");
    let id = body["port_chain"]["id"].as_str().unwrap().to_string();
    let path = format!("/v2.0/sfc/port_chains/{id}");
    let (_, theirs) = api
        .call(Method::GET, "/v2.0/sfc/port_chains", None, Some("p2"))
        .await;
    assert_eq!(theirs, json!({"port_chains": []}));
    for method in [Method::GET, Method::DELETE] {
        assert_error(
            &api.call(method, &path, None, Some("p2")).await,
            StatusCode::NOT_FOUND,
            "PortChainNotFound",
        );
    }
    // An identical list in another project is not "in use" for p2: it cannot even see the
    // group, so that is a 404.
    let (status, _) = post_as(&api, PC, json!({"port_pair_groups": [g]}), Some("p2")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = api.call(Method::GET, &path, None, Some("p1")).await;
    assert_eq!(status, StatusCode::OK);
});

api_test!(quota_is_10_per_project, |api| async move {
    let mut groups = Vec::new();
    for _ in 0..4 {
        groups.push(group(&api, &[]).await);
    }
    // Ten distinct group lists out of four groups.
    let lists: Vec<Vec<&String>> = vec![
        vec![&groups[0]],
        vec![&groups[1]],
        vec![&groups[2]],
        vec![&groups[3]],
        vec![&groups[0], &groups[1]],
        vec![&groups[1], &groups[0]],
        vec![&groups[0], &groups[2]],
        vec![&groups[2], &groups[0]],
        vec![&groups[0], &groups[3]],
        vec![&groups[3], &groups[0]],
    ];
    for list in &lists {
        create(&api, PC, json!({ "port_pair_groups": list })).await;
    }
    post_refused(
        &api,
        PC,
        json!({"port_pair_groups": [groups[1], groups[2]]}),
        StatusCode::CONFLICT,
        "OverQuota",
    )
    .await;
});

/// POSTs a raw body (bulk or malformed) to the chains collection.
async fn post_raw(api: &TestApi, body: serde_json::Value) -> (StatusCode, serde_json::Value) {
    api.post("/v2.0/sfc/port_chains", body).await
}

api_test!(
    a_bulk_create_makes_every_chain_in_one_transaction,
    |api| async move {
        let net = network(&api, None).await;
        let mut fcs = Vec::new();
        for i in 0..3 {
            let vm = port(&api, &net, &format!("vm{i}")).await;
            fcs.push(
                classifier(
                    &api,
                    json!({"logical_source_port": vm, "protocol": "udp",
                       "destination_port_range_min": 1000 + i,
                       "destination_port_range_max": 1000 + i}),
                )
                .await,
            );
        }
        let (g1, g2, g3) = (
            group(&api, &[]).await,
            group(&api, &[]).await,
            group(&api, &[]).await,
        );
        let (status, body) = post_raw(
            &api,
            json!({"port_chains": [
                {"name": "a", "port_pair_groups": [g1], "flow_classifiers": [fcs[0]]},
                {"name": "b", "port_pair_groups": [g2], "flow_classifiers": [fcs[1]]},
                {"name": "c", "port_pair_groups": [g1, g2], "chain_id": 9},
            ]}),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let made = body["port_chains"].as_array().unwrap();
        let summary: Vec<(&str, i64)> = made
            .iter()
            .map(|c| (c["name"].as_str().unwrap(), c["chain_id"].as_i64().unwrap()))
            .collect();
        assert_eq!(summary, [("a", 1), ("b", 2), ("c", 9)]);
        for chain in made {
            let (status, shown) = get(&api, PC, chain["id"].as_str().unwrap()).await;
            assert_eq!(status, StatusCode::OK);
            assert_eq!(&shown["port_chain"], chain);
        }

        // Every item is checked against the stored chains and those before it in the request;
        // one refused item refuses them all and nothing is stored.
        for (items, status, kind) in [
            (
                json!([{"port_pair_groups": [g2, g1], "flow_classifiers": [fcs[2]]},
                   {"port_pair_groups": [g2, g1]}]),
                StatusCode::CONFLICT,
                "InvalidPortPairGroups",
            ),
            (
                json!([{"port_pair_groups": [g2, g1], "flow_classifiers": [fcs[2]]},
                   {"port_pair_groups": [g3], "flow_classifiers": [fcs[2]]}]),
                StatusCode::CONFLICT,
                "FlowClassifierInUse",
            ),
            (
                json!([{"port_pair_groups": [g2, g1], "chain_id": 12},
                   {"port_pair_groups": [g3], "chain_id": 12}]),
                StatusCode::BAD_REQUEST,
                "PortChainChainIdInConflict",
            ),
            (
                json!([{"port_pair_groups": [g2, g1]}, {"port_pair_groups": []}]),
                StatusCode::BAD_REQUEST,
                "PortPairGroupNotSpecified",
            ),
            (
                json!([{"port_pair_groups": [g2, g1]}, {"port_pair_groups": [g1], "bogus": 1}]),
                StatusCode::BAD_REQUEST,
                "HTTPBadRequest",
            ),
        ] {
            let before = list(&api, PC).await;
            let (got, body) = post_raw(&api, json!({ "port_chains": items })).await;
            assert_eq!(
                (got, body["NeutronError"]["type"].as_str()),
                (status, Some(kind)),
                "{body}"
            );
            assert_eq!(
                list(&api, PC).await,
                before,
                "a refused bulk create stored something"
            );
        }
        // Classifier conflicts, with a stored chain's and between the request's own.
        let mut clash = Vec::new();
        for i in 0..3 {
            let vm = port(&api, &net, &format!("other{i}")).await;
            clash.push(
                classifier(
                    &api,
                    json!({"logical_source_port": vm, "protocol": "udp",
                       "destination_port_range_min": if i == 0 { 1000 } else { 2000 },
                       "destination_port_range_max": if i == 0 { 1000 } else { 2000 }}),
                )
                .await,
            );
        }
        for items in [
            json!([{"port_pair_groups": [g3], "flow_classifiers": [clash[0]]}]),
            json!([{"port_pair_groups": [g3], "flow_classifiers": [clash[1]]},
               {"port_pair_groups": [g3, g1], "flow_classifiers": [clash[2]]}]),
        ] {
            let before = list(&api, PC).await;
            let (got, body) = post_raw(&api, json!({ "port_chains": items })).await;
            assert_eq!(got, StatusCode::BAD_REQUEST, "{body}");
            assert_eq!(
                body["NeutronError"]["type"],
                "PortChainFlowClassifierInConflict"
            );
            assert_eq!(list(&api, PC).await, before);
        }
        // The quota (10 chains a project) counts the request's own chains.
        let lists = [
            json!([g1, g3]),
            json!([g3, g1]),
            json!([g3]),
            json!([g1, g2, g3]),
            json!([g1, g3, g2]),
            json!([g2, g3, g1]),
            json!([g3, g2, g1]),
            json!([g3, g1, g2]),
        ];
        let over: Vec<serde_json::Value> = lists
            .iter()
            .map(|l| json!({"port_pair_groups": l}))
            .collect();
        let (got, body) = post_raw(&api, json!({ "port_chains": over })).await;
        assert_eq!(got, StatusCode::CONFLICT, "{body}");
        assert_eq!(body["NeutronError"]["type"], "OverQuota");
        assert_eq!(list(&api, PC).await.len(), 3);

        // Chain ids of a refused request are not used up.
        let (status, body) = post_raw(
            &api,
            json!({"port_chains": [{"port_pair_groups": [g2, g1]}]}),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert_eq!(body["port_chains"][0]["chain_id"], 3);

        // The shape of the request itself.
        let many: Vec<serde_json::Value> = (0..1001)
            .map(|_| json!({"port_pair_groups": [g1]}))
            .collect();
        for bad in [
            json!({"port_chains": []}),
            json!({"port_chains": many}),
            json!({"port_chains": {"port_pair_groups": [g1]}}),
            json!({"port_chains": [[]]}),
            json!({"port_chains": [{"port_pair_groups": [g1]}], "port_chain": {}}),
        ] {
            let (status, body) = post_raw(&api, bad).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
            assert_eq!(body["NeutronError"]["type"], "HTTPBadRequest");
        }
    }
);
