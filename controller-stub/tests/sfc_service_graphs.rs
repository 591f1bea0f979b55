//! `/v2.0/sfc/service_graphs`: reference/networking-sfc.md §1.5 (chains in graphs) and §1.6,
//! one test per rule.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod sfc_common;

use common::{assert_error, TestApi};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sfc_common::*;

const SG: &str = "service_graphs";

/// `n` chains over empty groups (no port pair, so no correlation rule applies).
async fn chains(api: &TestApi, n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        let g = group(api, &[]).await;
        out.push(chain(api, &[&g], &[]).await);
    }
    out
}

fn edges(pairs: &[(&String, &[&String])]) -> Value {
    let mut map = serde_json::Map::new();
    for (src, dsts) in pairs {
        map.insert(src.to_string(), json!(dsts));
    }
    Value::Object(map)
}

api_test!(create_show_list_update_delete, |api| async move {
    let c = chains(&api, 3).await;
    let port_chains = edges(&[(&c[0], &[&c[1], &c[2]])]);
    let (status, body) = post(
        &api,
        SG,
        json!({"name": "g", "description": "d", "port_chains": port_chains}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let g = body["service_graph"].clone();
    let id = g["id"].as_str().unwrap().to_string();
    assert_eq!(
        g,
        json!({
            "id": id,
            "name": "g",
            "description": "d",
            "project_id": "admin",
            "tenant_id": "admin",
            "port_chains": port_chains,
        })
    );
    assert_eq!(get(&api, SG, &id).await.1["service_graph"], g);
    let (_, listed) = api.get("/v2.0/sfc/service_graphs?name=g&fields=id").await;
    assert_eq!(listed, json!({"service_graphs": [{"id": id}]}));
    let (status, updated) = put(&api, SG, &id, json!({"name": "g2", "description": "e"})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(updated["service_graph"]["name"], "g2");
    assert_eq!(updated["service_graph"]["port_chains"], port_chains);
    assert_eq!(delete(&api, SG, &id).await.0, StatusCode::NO_CONTENT);
    assert_error(
        &get(&api, SG, &id).await,
        StatusCode::NOT_FOUND,
        "ServiceGraphNotFound",
    );
    // The chains are free again.
    assert_eq!(
        delete(&api, "port_chains", &c[0]).await.0,
        StatusCode::NO_CONTENT
    );
});

api_test!(linear_and_branching_graphs_are_allowed, |api| async move {
    let c = chains(&api, 5).await;
    for graph in [
        edges(&[(&c[0], &[&c[1]])]),
        edges(&[(&c[2], &[&c[3], &c[4]])]),
    ] {
        create(&api, SG, json!({ "port_chains": graph })).await;
    }
});

api_test!(
    joining_branches_and_multiple_starts_are_allowed,
    |api| async move {
        let c = chains(&api, 7).await;
        for graph in [
            edges(&[
                (&c[0], &[&c[1]]),
                (&c[1], &[&c[2], &c[3]]),
                (&c[2], &[&c[3]]),
            ]),
            edges(&[(&c[4], &[&c[5]]), (&c[6], &[&c[5]])]),
        ] {
            create(&api, SG, json!({ "port_chains": graph })).await;
        }
    }
);

api_test!(loops_are_400, |api| async move {
    let c = chains(&api, 5).await;
    // Direct: a chain into itself.
    post_refused(
        &api,
        SG,
        json!({"port_chains": edges(&[(&c[0], &[&c[1]]), (&c[1], &[&c[1]])])}),
        StatusCode::BAD_REQUEST,
        "ServiceGraphLoopDetected",
    )
    .await;
    // Indirect: 1 -> 2 -> 3 -> 1.
    post_refused(
        &api,
        SG,
        json!({"port_chains": edges(&[
            (&c[0], &[&c[1]]),
            (&c[1], &[&c[2]]),
            (&c[2], &[&c[3]]),
            (&c[3], &[&c[1], &c[4]]),
        ])}),
        StatusCode::BAD_REQUEST,
        "ServiceGraphLoopDetected",
    )
    .await;
});

api_test!(
    a_destination_appears_once_per_branching_point,
    |api| async move {
        let c = chains(&api, 2).await;
        post_refused(
            &api,
            SG,
            json!({"port_chains": edges(&[(&c[0], &[&c[1], &c[1]])])}),
            StatusCode::BAD_REQUEST,
            "ServiceGraphPortChainInConflict",
        )
        .await;
    }
);

api_test!(a_chain_belongs_to_one_graph, |api| async move {
    let c = chains(&api, 3).await;
    create(
        &api,
        SG,
        json!({"port_chains": edges(&[(&c[0], &[&c[1]])])}),
    )
    .await;
    for graph in [edges(&[(&c[2], &[&c[0]])]), edges(&[(&c[1], &[&c[2]])])] {
        post_refused(
            &api,
            SG,
            json!({ "port_chains": graph }),
            StatusCode::CONFLICT,
            "ServiceGraphInvalidPortChains",
        )
        .await;
    }
});

/// Chain 1 = [g(mpls), g(src_corr)], chain 2 = [g(dst_corr), g(mpls)], as in networking-sfc's
/// `_test_create_service_graph_branching_ppg`.
async fn branching(
    api: &TestApi,
    src_corr: Option<&str>,
    dst_corr: Option<&str>,
) -> (StatusCode, Value) {
    let net = network(api, None).await;
    let g1 = group_with_pair(api, &net, Some("mpls")).await;
    let g2 = group_with_pair(api, &net, src_corr).await;
    let g3 = group_with_pair(api, &net, dst_corr).await;
    let g4 = group_with_pair(api, &net, Some("mpls")).await;
    let pc1 = chain(api, &[&g1, &g2], &[]).await;
    let pc2 = chain(api, &[&g3, &g4], &[]).await;
    let before = count(api, SG).await;
    let result = post(api, SG, json!({"port_chains": edges(&[(&pc1, &[&pc2])])})).await;
    if result.0 != StatusCode::CREATED {
        assert_eq!(count(api, SG).await, before);
    }
    result
}

api_test!(
    branching_needs_correlation_at_the_source_end,
    |api| async move {
        assert_error(
            &branching(&api, None, Some("mpls")).await,
            StatusCode::BAD_REQUEST,
            "ServiceGraphImpossibleBranching",
        );
    }
);

api_test!(
    branching_needs_correlation_at_the_destination_end,
    |api| async move {
        assert_error(
            &branching(&api, Some("mpls"), None).await,
            StatusCode::BAD_REQUEST,
            "ServiceGraphImpossibleBranching",
        );
    }
);

api_test!(
    branching_with_correlation_at_both_ends_is_allowed,
    |api| async move {
        assert_eq!(
            branching(&api, Some("mpls"), Some("mpls")).await.0,
            StatusCode::CREATED
        );
    }
);

api_test!(all_chains_share_one_correlation, |api| async move {
    let g1 = group(&api, &[]).await;
    let g2 = group(&api, &[]).await;
    let mpls = chain(&api, &[&g1], &[]).await;
    let nsh = create_id(
        &api,
        "port_chains",
        json!({"port_pair_groups": [g2], "chain_parameters": {"correlation": "nsh"}}),
    )
    .await;
    for graph in [edges(&[(&mpls, &[&nsh])]), edges(&[(&nsh, &[&mpls])])] {
        post_refused(
            &api,
            SG,
            json!({ "port_chains": graph }),
            StatusCode::BAD_REQUEST,
            "ServiceGraphInconsistentEncapsulation",
        )
        .await;
    }
});

api_test!(
    destinations_of_a_branching_point_must_classify_apart,
    |api| async move {
        let net = network(&api, None).await;
        let mut ports = Vec::new();
        for i in 0..8 {
            ports.push(port(&api, &net, &format!("vm{i}")).await);
        }
        let fc = |i: usize, ethertype: &str, protocol: &str| json!({"ethertype": ethertype, "protocol": protocol, "logical_source_port": ports[i]});
        // Unambiguous: tcp/IPv4, tcp/IPv6 to one chain, udp/IPv4, udp/IPv6 to the other.
        let fcs = [
            classifier(&api, fc(0, "IPv4", "tcp")).await,
            classifier(&api, fc(1, "IPv6", "tcp")).await,
            classifier(&api, fc(2, "IPv4", "udp")).await,
            classifier(&api, fc(3, "IPv6", "udp")).await,
        ];
        let c = chains(&api, 1).await;
        let g2 = group(&api, &[]).await;
        let g3 = group(&api, &[]).await;
        let pc2 = chain(&api, &[&g2], &[&fcs[0], &fcs[1]]).await;
        let pc3 = chain(&api, &[&g3], &[&fcs[2], &fcs[3]]).await;
        create(
            &api,
            SG,
            json!({"port_chains": edges(&[(&c[0], &[&pc2, &pc3])])}),
        )
        .await;

        // Ambiguous: the same traffic leads to two destinations. Chains with overlapping
        // classifiers can only exist side by side in different projects (the chain rule compares
        // with the caller's chains), so p1 and p2 make one each and the admin joins them.
        let mut dsts = Vec::new();
        for project in ["p1", "p2"] {
            let (_, fc) = post_as(
                &api,
                "flow_classifiers",
                json!({"protocol": "tcp"}),
                Some(project),
            )
            .await;
            let (_, g) = post_as(&api, "port_pair_groups", json!({}), Some(project)).await;
            let (status, c) = post_as(
                &api,
                "port_chains",
                json!({
                    "port_pair_groups": [g["port_pair_group"]["id"]],
                    "flow_classifiers": [fc["flow_classifier"]["id"]],
                }),
                Some(project),
            )
            .await;
            assert_eq!(status, StatusCode::CREATED, "{c}");
            dsts.push(c["port_chain"]["id"].as_str().unwrap().to_string());
        }
        let src = chains(&api, 1).await;
        post_refused(
            &api,
            SG,
            json!({"port_chains": edges(&[(&src[0], &[&dsts[0], &dsts[1]])])}),
            StatusCode::BAD_REQUEST,
            "ServiceGraphFlowClassifierInConflict",
        )
        .await;
        // networking-sfc compares every classifier of the branching point with every other, those
        // of one destination chain included: a chain whose own classifiers overlap (allowed for a
        // chain) cannot be a branch.
        let a = classifier(
            &api,
            json!({"protocol": "icmp", "logical_source_port": ports[4]}),
        )
        .await;
        let b = classifier(
            &api,
            json!({"protocol": "icmp", "logical_source_port": ports[5]}),
        )
        .await;
        let g6 = group(&api, &[]).await;
        let both = chain(&api, &[&g6], &[&a, &b]).await;
        let src = chains(&api, 1).await;
        post_refused(
            &api,
            SG,
            json!({"port_chains": edges(&[(&src[0], &[&both])])}),
            StatusCode::BAD_REQUEST,
            "ServiceGraphFlowClassifierInConflict",
        )
        .await;
    }
);

api_test!(
    a_chain_in_a_graph_keeps_its_hops_and_classifiers,
    |api| async move {
        let c = chains(&api, 2).await;
        let graph = create_id(
            &api,
            SG,
            json!({"port_chains": edges(&[(&c[0], &[&c[1]])])}),
        )
        .await;
        let g = group(&api, &[]).await;
        let fc = classifier(&api, json!({})).await;
        for id in [&c[0], &c[1]] {
            delete_refused(
                &api,
                "port_chains",
                id,
                StatusCode::CONFLICT,
                "ServiceGraphPortChainInUse",
            )
            .await;
            for body in [
                json!({"port_pair_groups": [g]}),
                json!({"flow_classifiers": [fc]}),
                // Checked before the ids are even looked up, as networking-sfc does.
                json!({"port_pair_groups": [unknown()]}),
            ] {
                put_refused(
                    &api,
                    "port_chains",
                    id,
                    body,
                    StatusCode::CONFLICT,
                    "ServiceGraphPortChainInUse",
                )
                .await;
            }
            let (status, body) = put(&api, "port_chains", id, json!({"name": "renamed"})).await;
            assert_eq!(status, StatusCode::OK, "{body}");
        }
        assert_eq!(delete(&api, SG, &graph).await.0, StatusCode::NO_CONTENT);
        assert_eq!(
            put(
                &api,
                "port_chains",
                &c[0],
                json!({"flow_classifiers": [fc]})
            )
            .await
            .0,
            StatusCode::OK
        );
    }
);

api_test!(malformed_graphs_are_400, |api| async move {
    let c = chains(&api, 2).await;
    for (body, kind) in [
        (json!({}), "HTTPBadRequest"),
        (json!({"port_chains": {"chain-1": [c[1]]}}), "InvalidUUID"),
        (
            json!({"port_chains": { c[0].clone(): ["chain-2"] }}),
            "InvalidUUID",
        ),
        (
            json!({"port_chains": { c[0].clone(): c[1] }}),
            "HTTPBadRequest",
        ),
        (json!({"port_chains": [c[0], c[1]]}), "HTTPBadRequest"),
        (json!({"port_chains": {}, "branches": 2}), "HTTPBadRequest"),
        (
            json!({"port_chains": {}, "id": unknown()}),
            "HTTPBadRequest",
        ),
    ] {
        post_refused(&api, SG, body, StatusCode::BAD_REQUEST, kind).await;
    }
    post_refused(
        &api,
        SG,
        json!({"port_chains": edges(&[(&c[0], &[&c[1]]), (&c[1], &[&unknown()])])}),
        StatusCode::NOT_FOUND,
        "PortChainNotFound",
    )
    .await;
});

api_test!(the_graph_is_fixed_at_creation, |api| async move {
    let c = chains(&api, 3).await;
    let graph = create_id(
        &api,
        SG,
        json!({"port_chains": edges(&[(&c[0], &[&c[1]])])}),
    )
    .await;
    for body in [
        json!({"port_chains": edges(&[(&c[0], &[&c[2]])])}),
        json!({"project_id": "p9"}),
        json!({"id": unknown()}),
    ] {
        put_refused(
            &api,
            SG,
            &graph,
            body,
            StatusCode::BAD_REQUEST,
            "HTTPBadRequest",
        )
        .await;
    }
});

api_test!(missing_ids_are_404, |api| async move {
    let id = unknown();
    let kind = "ServiceGraphNotFound";
    assert_error(&get(&api, SG, &id).await, StatusCode::NOT_FOUND, kind);
    assert_error(
        &put(&api, SG, &id, json!({"name": "x"})).await,
        StatusCode::NOT_FOUND,
        kind,
    );
    assert_error(&delete(&api, SG, &id).await, StatusCode::NOT_FOUND, kind);
    assert_error(&get(&api, SG, "1").await, StatusCode::NOT_FOUND, kind);
});

api_test!(projects_see_only_their_own, |api| async move {
    let (status, body) = post_as(&api, SG, json!({"port_chains": {}}), Some("p1")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["service_graph"]["tenant_id"], "p1");
    let id = body["service_graph"]["id"].as_str().unwrap().to_string();
    let path = format!("/v2.0/sfc/service_graphs/{id}");
    let (_, theirs) = api
        .call(Method::GET, "/v2.0/sfc/service_graphs", None, Some("p2"))
        .await;
    assert_eq!(theirs, json!({"service_graphs": []}));
    for method in [Method::GET, Method::DELETE] {
        assert_error(
            &api.call(method, &path, None, Some("p2")).await,
            StatusCode::NOT_FOUND,
            "ServiceGraphNotFound",
        );
    }
    // The admin's chains are not p2's to join.
    let c = chains(&api, 2).await;
    let (status, _) = post_as(
        &api,
        SG,
        json!({"port_chains": edges(&[(&c[0], &[&c[1]])])}),
        Some("p2"),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
});

api_test!(quota_is_10_per_project, |api| async move {
    for _ in 0..10 {
        create(&api, SG, json!({"port_chains": {}})).await;
    }
    post_refused(
        &api,
        SG,
        json!({"port_chains": {}}),
        StatusCode::CONFLICT,
        "OverQuota",
    )
    .await;
});

/// `AppState::with_quotas` sets the limits; a negative one is no limit.
mod quotas_are_configurable {
    use super::*;
    use controller_stub::api::sfc::Quotas;

    async fn run(backend: common::Backend) {
        let api = TestApi::start_with(backend, |state| {
            state.with_quotas(Quotas {
                service_graph: 2,
                flow_classifier: 0,
                port_pair_group: -1,
                ..Quotas::default()
            })
        })
        .await;
        let url = api.url.clone();
        for _ in 0..2 {
            create(&api, SG, json!({"port_chains": {}})).await;
        }
        post_refused(
            &api,
            SG,
            json!({"port_chains": {}}),
            StatusCode::CONFLICT,
            "OverQuota",
        )
        .await;
        post_refused(
            &api,
            "flow_classifiers",
            json!({}),
            StatusCode::CONFLICT,
            "OverQuota",
        )
        .await;
        for _ in 0..11 {
            group(&api, &[]).await;
        }
        // The setting survives a restart of the server.
        let api = api.restart().await;
        post_refused(
            &api,
            SG,
            json!({"port_chains": {}}),
            StatusCode::CONFLICT,
            "OverQuota",
        )
        .await;
        drop(api);
        if backend == common::Backend::Postgres {
            common::pg::drop_database(&url).await;
        }
    }

    #[tokio::test]
    async fn sqlite() {
        run(common::Backend::Sqlite).await
    }

    #[tokio::test]
    async fn postgres() {
        run(common::Backend::Postgres).await
    }
}
