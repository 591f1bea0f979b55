//! `/v2.0/sfc/flow_classifiers`: reference/networking-sfc.md §1.4, one test per rule, and
//! one per term of the overlap rule.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod sfc_common;

use common::{assert_error, TestApi};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sfc_common::*;

const FC: &str = "flow_classifiers";

/// Creates `a`, then POSTs `b`: true when `b` is refused as conflicting with `a` (and nothing
/// was stored), false when it is accepted. Both are gone afterwards.
async fn conflicts(api: &TestApi, a: Value, b: Value) -> bool {
    let a_id = classifier(api, a.clone()).await;
    let before = count(api, FC).await;
    let (status, body) = post(api, FC, b.clone()).await;
    let conflict = match status {
        StatusCode::CREATED => {
            let b_id = body["flow_classifier"]["id"].as_str().unwrap();
            assert_eq!(delete(api, FC, b_id).await.0, StatusCode::NO_CONTENT);
            false
        }
        StatusCode::BAD_REQUEST => {
            assert_eq!(
                body["NeutronError"]["type"], "FlowClassifierInConflict",
                "{a} vs {b}: {body}"
            );
            assert!(
                body["NeutronError"]["message"]
                    .as_str()
                    .unwrap()
                    .contains(&a_id),
                "{body}"
            );
            assert_eq!(
                count(api, FC).await,
                before,
                "a conflicting classifier was stored"
            );
            true
        }
        other => panic!("{a} vs {b}: unexpected {other} {body}"),
    };
    assert_eq!(delete(api, FC, &a_id).await.0, StatusCode::NO_CONTENT);
    conflict
}

api_test!(create_show_list_update_delete, |api| async move {
    let net = network(&api, None).await;
    let lsp = port(&api, &net, "vm1").await;
    let (status, body) = post(&api, FC, json!({"logical_source_port": lsp, "name": null})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let fc = body["flow_classifier"].clone();
    let id = fc["id"].as_str().unwrap().to_string();
    assert_eq!(
        fc,
        json!({
            "id": id,
            "name": "",
            "description": "",
            "project_id": "admin",
            "tenant_id": "admin",
            "ethertype": "IPv4",
            "protocol": null,
            "source_port_range_min": null,
            "source_port_range_max": null,
            "destination_port_range_min": null,
            "destination_port_range_max": null,
            "source_ip_prefix": null,
            "destination_ip_prefix": null,
            "logical_source_port": lsp,
            "logical_destination_port": null,
            "l7_parameters": {},
        })
    );
    assert_eq!(get(&api, FC, &id).await.1["flow_classifier"], fc);
    let (_, listed) = api
        .get("/v2.0/sfc/flow_classifiers?ethertype=IPv4&fields=id")
        .await;
    assert_eq!(listed, json!({"flow_classifiers": [{"id": id}]}));
    let (status, updated) = put(&api, FC, &id, json!({"name": "web", "description": "d"})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(updated["flow_classifier"]["name"], "web");
    assert_eq!(updated["flow_classifier"]["description"], "d");
    assert_eq!(get(&api, FC, &id).await.1, updated);
    assert_eq!(delete(&api, FC, &id).await.0, StatusCode::NO_CONTENT);
    assert_error(
        &get(&api, FC, &id).await,
        StatusCode::NOT_FOUND,
        "FlowClassifierNotFound",
    );
});

api_test!(every_attribute_is_stored_and_normalised, |api| async move {
    let net = network(&api, None).await;
    let lsp = port(&api, &net, "vm1").await;
    let ldp = port(&api, &net, "vm2").await;
    let fc = create(
        &api,
        FC,
        json!({
            "name": "all",
            "description": "every field",
            "ethertype": "ipv6",
            "protocol": "TCP",
            "source_port_range_min": "100",
            "source_port_range_max": 200,
            "destination_port_range_min": 0,
            "destination_port_range_max": 65535,
            "source_ip_prefix": "2001:db8::/64",
            "destination_ip_prefix": "2001:db8:1::1/128",
            "logical_source_port": lsp,
            "logical_destination_port": ldp,
            "l7_parameters": {},
        }),
    )
    .await;
    assert_eq!(fc["ethertype"], "IPv6");
    assert_eq!(fc["protocol"], "tcp");
    assert_eq!(fc["source_port_range_min"], 100);
    assert_eq!(fc["source_port_range_max"], 200);
    assert_eq!(fc["destination_port_range_min"], 0);
    assert_eq!(fc["destination_port_range_max"], 65535);
    assert_eq!(fc["source_ip_prefix"], "2001:db8::/64");
    assert_eq!(fc["destination_ip_prefix"], "2001:db8:1::1/128");
    assert_eq!(fc["logical_destination_port"], json!(ldp));
    assert_eq!(fc["l7_parameters"], json!({}));
});

api_test!(invalid_ethertype_is_400, |api| async move {
    for e in [json!("IPv5"), json!(4)] {
        post_refused(
            &api,
            FC,
            json!({"ethertype": e}),
            StatusCode::BAD_REQUEST,
            "FlowClassifierInvalidEthertype",
        )
        .await;
    }
});

api_test!(invalid_protocol_is_400, |api| async move {
    for p in [json!("sctp"), json!(6)] {
        post_refused(
            &api,
            FC,
            json!({"protocol": p}),
            StatusCode::BAD_REQUEST,
            "FlowClassifierInvalidProtocol",
        )
        .await;
    }
});

api_test!(port_values_outside_0_to_65535_are_400, |api| async move {
    for attr in [
        "source_port_range_min",
        "source_port_range_max",
        "destination_port_range_min",
        "destination_port_range_max",
    ] {
        for v in [json!(65536), json!(-1), json!("http"), json!([80])] {
            post_refused(
                &api,
                FC,
                json!({"protocol": "tcp", attr: v}),
                StatusCode::BAD_REQUEST,
                "FlowClassifierInvalidPortValue",
            )
            .await;
        }
    }
});

api_test!(min_port_above_max_port_is_400, |api| async move {
    for (min, max) in [
        ("source_port_range_min", "source_port_range_max"),
        ("destination_port_range_min", "destination_port_range_max"),
    ] {
        post_refused(
            &api,
            FC,
            json!({"protocol": "udp", min: 101, max: 100}),
            StatusCode::BAD_REQUEST,
            "FlowClassifierInvalidPortRange",
        )
        .await;
    }
    // Equal bounds are one port.
    create(
        &api,
        FC,
        json!({"protocol": "udp", "source_port_range_min": 100, "source_port_range_max": 100}),
    )
    .await;
});

api_test!(ports_need_tcp_or_udp, |api| async move {
    for protocol in [json!(null), json!("icmp")] {
        for attr in [
            "source_port_range_min",
            "source_port_range_max",
            "destination_port_range_min",
            "destination_port_range_max",
        ] {
            post_refused(
                &api,
                FC,
                json!({"protocol": protocol, attr: 80}),
                StatusCode::BAD_REQUEST,
                "FlowClassifierProtocolRequiredWithPorts",
            )
            .await;
        }
    }
});

api_test!(malformed_prefixes_are_400, |api| async move {
    for attr in ["source_ip_prefix", "destination_ip_prefix"] {
        for v in [
            json!("abc"),
            json!("10.0.0.0"),
            json!("10.0.0.0/33"),
            json!(10),
        ] {
            post_refused(
                &api,
                FC,
                json!({ attr: v }),
                StatusCode::BAD_REQUEST,
                "HTTPBadRequest",
            )
            .await;
        }
    }
});

api_test!(prefix_version_must_match_ethertype, |api| async move {
    for (ethertype, prefix) in [("IPv4", "2001:db8::/32"), ("IPv6", "10.0.0.0/8")] {
        for attr in ["source_ip_prefix", "destination_ip_prefix"] {
            post_refused(
                &api,
                FC,
                json!({"ethertype": ethertype, attr: prefix}),
                StatusCode::BAD_REQUEST,
                "FlowClassifierIpPrefixFormatConflictWithEthertype",
            )
            .await;
        }
    }
});

api_test!(
    logical_ports_must_be_uuids_of_existing_ports,
    |api| async move {
        for attr in ["logical_source_port", "logical_destination_port"] {
            post_refused(
                &api,
                FC,
                json!({ attr: "port-1" }),
                StatusCode::BAD_REQUEST,
                "HTTPBadRequest",
            )
            .await;
            post_refused(
                &api,
                FC,
                json!({ attr: unknown() }),
                StatusCode::NOT_FOUND,
                "FlowClassifierPortNotFound",
            )
            .await;
        }
    }
);

api_test!(any_l7_parameter_is_400, |api| async move {
    post_refused(
        &api,
        FC,
        json!({"l7_parameters": {"url": "/index.html"}}),
        StatusCode::BAD_REQUEST,
        "FlowClassifierInvalidL7Parameter",
    )
    .await;
    post_refused(
        &api,
        FC,
        json!({"l7_parameters": "url"}),
        StatusCode::BAD_REQUEST,
        "HTTPBadRequest",
    )
    .await;
    // Empty or null is no parameter.
    let fc = create(&api, FC, json!({"l7_parameters": null})).await;
    assert_eq!(fc["l7_parameters"], json!({}));
});

api_test!(unknown_attributes_and_ids_are_400, |api| async move {
    post_refused(
        &api,
        FC,
        json!({"direction": "in"}),
        StatusCode::BAD_REQUEST,
        "HTTPBadRequest",
    )
    .await;
    post_refused(
        &api,
        FC,
        json!({"id": unknown()}),
        StatusCode::BAD_REQUEST,
        "HTTPBadRequest",
    )
    .await;
});

api_test!(identical_classifiers_conflict, |api| async move {
    assert!(conflicts(&api, json!({}), json!({})).await);
    let full = json!({
        "protocol": "tcp",
        "source_ip_prefix": "10.0.0.0/24",
        "destination_ip_prefix": "10.1.0.0/24",
        "source_port_range_min": 1000,
        "source_port_range_max": 2000,
        "destination_port_range_min": 80,
        "destination_port_range_max": 80,
    });
    assert!(conflicts(&api, full.clone(), full).await);
});

api_test!(overlap_rule_ethertype, |api| async move {
    assert!(
        !conflicts(
            &api,
            json!({"ethertype": "IPv4"}),
            json!({"ethertype": "IPv6"})
        )
        .await
    );
    assert!(
        conflicts(
            &api,
            json!({"ethertype": "IPv6"}),
            json!({"ethertype": "ipv6"})
        )
        .await
    );
});

api_test!(overlap_rule_protocol_none_matches_any, |api| async move {
    assert!(!conflicts(&api, json!({"protocol": "tcp"}), json!({"protocol": "udp"})).await);
    assert!(
        !conflicts(
            &api,
            json!({"protocol": "icmp"}),
            json!({"protocol": "tcp"})
        )
        .await
    );
    assert!(conflicts(&api, json!({"protocol": "tcp"}), json!({"protocol": "tcp"})).await);
    assert!(conflicts(&api, json!({"protocol": "tcp"}), json!({})).await);
    assert!(conflicts(&api, json!({}), json!({"protocol": "udp"})).await);
});

api_test!(overlap_rule_prefixes, |api| async move {
    for attr in ["source_ip_prefix", "destination_ip_prefix"] {
        let p = |v: &str| json!({ attr: v });
        assert!(
            !conflicts(&api, p("10.0.0.0/24"), p("10.0.1.0/24")).await,
            "{attr}"
        );
        assert!(
            conflicts(&api, p("10.0.0.0/8"), p("10.1.0.0/16")).await,
            "{attr}"
        );
        assert!(
            conflicts(&api, p("10.1.0.0/16"), p("10.0.0.0/8")).await,
            "{attr}"
        );
        // Host bits do not widen a prefix.
        assert!(
            conflicts(&api, p("10.0.0.7/24"), p("10.0.0.200/32")).await,
            "{attr}"
        );
        assert!(
            !conflicts(&api, p("10.0.0.7/24"), p("10.0.1.200/32")).await,
            "{attr}"
        );
        // An unset prefix is any address.
        assert!(
            conflicts(&api, json!({}), p("192.168.0.0/16")).await,
            "{attr}"
        );
        assert!(
            conflicts(&api, p("192.168.0.0/16"), json!({})).await,
            "{attr}"
        );
    }
});

api_test!(overlap_rule_port_ranges, |api| async move {
    for (min, max) in [
        ("source_port_range_min", "source_port_range_max"),
        ("destination_port_range_min", "destination_port_range_max"),
    ] {
        let r = |lo: Option<i64>, hi: Option<i64>| {
            let mut v = json!({"protocol": "tcp"});
            if let Some(lo) = lo {
                v[min] = json!(lo);
            }
            if let Some(hi) = hi {
                v[max] = json!(hi);
            }
            v
        };
        assert!(!conflicts(&api, r(Some(10), Some(20)), r(Some(21), Some(30))).await);
        assert!(!conflicts(&api, r(Some(21), Some(30)), r(Some(10), Some(20))).await);
        assert!(conflicts(&api, r(Some(10), Some(20)), r(Some(20), Some(30))).await);
        assert!(conflicts(&api, r(Some(10), Some(30)), r(Some(15), Some(16))).await);
        // No range is every port.
        assert!(conflicts(&api, r(None, None), r(Some(15), Some(16))).await);
        // Open-ended ranges: only the bounds both sides have can separate them.
        assert!(!conflicts(&api, r(Some(100), None), r(Some(1), Some(99))).await);
        assert!(conflicts(&api, r(Some(100), None), r(Some(1), Some(100))).await);
        assert!(conflicts(&api, r(Some(100), None), r(Some(5000), None)).await);
        assert!(!conflicts(&api, r(None, Some(99)), r(Some(100), Some(200))).await);
        assert!(conflicts(&api, r(None, Some(99)), r(None, Some(5))).await);
        assert!(!conflicts(&api, r(None, Some(99)), r(Some(100), None)).await);
    }
});

api_test!(overlap_rule_logical_ports, |api| async move {
    let net = network(&api, None).await;
    let p1 = port(&api, &net, "vm1").await;
    let p2 = port(&api, &net, "vm2").await;
    for attr in ["logical_source_port", "logical_destination_port"] {
        let l = |p: &str| json!({ attr: p });
        assert!(!conflicts(&api, l(&p1), l(&p2)).await, "{attr}");
        assert!(conflicts(&api, l(&p1), l(&p1)).await, "{attr}");
        // Unset on either side matches any port.
        assert!(conflicts(&api, l(&p1), json!({})).await, "{attr}");
        assert!(conflicts(&api, json!({}), l(&p2)).await, "{attr}");
    }
});

api_test!(one_differing_term_is_enough, |api| async move {
    // Everything overlaps but the destination ports: no conflict.
    let base = json!({
        "protocol": "udp",
        "source_ip_prefix": "10.0.0.0/8",
        "destination_port_range_min": 53,
        "destination_port_range_max": 53,
    });
    let mut other = base.clone();
    other["destination_port_range_min"] = json!(54);
    other["destination_port_range_max"] = json!(60);
    assert!(!conflicts(&api, base, other).await);
});

api_test!(
    conflicts_are_checked_within_the_callers_view,
    |api| async move {
        // networking-sfc queries the classifiers under the caller's context: another project's
        // classifiers do not conflict with mine, but an administrator's view is everything.
        let (status, body) = post_as(&api, FC, json!({}), Some("p1")).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let (status, body) = post_as(&api, FC, json!({}), Some("p2")).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        post_refused(
            &api,
            FC,
            json!({}),
            StatusCode::BAD_REQUEST,
            "FlowClassifierInConflict",
        )
        .await;
    }
);

api_test!(only_name_and_description_can_be_updated, |api| async move {
    let net = network(&api, None).await;
    let lsp = port(&api, &net, "vm1").await;
    let id = classifier(&api, json!({"protocol": "tcp", "logical_source_port": lsp})).await;
    for (attr, value) in [
        ("ethertype", json!("IPv6")),
        ("protocol", json!("udp")),
        ("source_port_range_min", json!(1)),
        ("source_port_range_max", json!(2)),
        ("destination_port_range_min", json!(1)),
        ("destination_port_range_max", json!(2)),
        ("source_ip_prefix", json!("10.0.0.0/8")),
        ("destination_ip_prefix", json!("10.0.0.0/8")),
        ("logical_source_port", json!(null)),
        ("logical_destination_port", json!(lsp)),
        ("l7_parameters", json!({})),
        ("project_id", json!("p9")),
        ("id", json!(unknown())),
    ] {
        put_refused(
            &api,
            FC,
            &id,
            json!({ attr: value }),
            StatusCode::BAD_REQUEST,
            "HTTPBadRequest",
        )
        .await;
    }
    // `null` is the empty string for a classifier's name (networking-sfc's normalize_string).
    let (status, body) = put(&api, FC, &id, json!({"name": null})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["flow_classifier"]["name"], "");
});

api_test!(
    a_classifier_in_a_chain_cannot_be_deleted,
    |api| async move {
        let fc = classifier(&api, json!({})).await;
        let g = group(&api, &[]).await;
        let c = chain(&api, &[&g], &[&fc]).await;
        delete_refused(&api, FC, &fc, StatusCode::CONFLICT, "FlowClassifierInUse").await;
        assert_eq!(
            delete(&api, "port_chains", &c).await.0,
            StatusCode::NO_CONTENT
        );
        assert_eq!(delete(&api, FC, &fc).await.0, StatusCode::NO_CONTENT);
    }
);

api_test!(deleting_a_logical_port_fails, |api| async move {
    let net = network(&api, None).await;
    let lsp = port(&api, &net, "vm1").await;
    let ldp = port(&api, &net, "vm2").await;
    let fc = classifier(
        &api,
        json!({"logical_source_port": lsp, "logical_destination_port": ldp}),
    )
    .await;
    for p in [&lsp, &ldp] {
        let (status, body) = api.delete(&format!("/v2.0/ports/{p}")).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
        assert_eq!(api.get(&format!("/v2.0/ports/{p}")).await.0, StatusCode::OK);
    }
    assert_eq!(get(&api, FC, &fc).await.0, StatusCode::OK);
});

api_test!(missing_ids_are_404, |api| async move {
    let id = unknown();
    let kind = "FlowClassifierNotFound";
    assert_error(&get(&api, FC, &id).await, StatusCode::NOT_FOUND, kind);
    assert_error(
        &put(&api, FC, &id, json!({"name": "x"})).await,
        StatusCode::NOT_FOUND,
        kind,
    );
    assert_error(&delete(&api, FC, &id).await, StatusCode::NOT_FOUND, kind);
    assert_error(&get(&api, FC, "1").await, StatusCode::NOT_FOUND, kind);
});

api_test!(projects_see_only_their_own, |api| async move {
    let (status, body) = post_as(&api, FC, json!({"name": "mine"}), Some("p1")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["flow_classifier"]["tenant_id"], "p1");
    let id = body["flow_classifier"]["id"].as_str().unwrap().to_string();
    let path = format!("/v2.0/sfc/flow_classifiers/{id}");
    let (_, theirs) = api
        .call(Method::GET, "/v2.0/sfc/flow_classifiers", None, Some("p2"))
        .await;
    assert_eq!(theirs, json!({"flow_classifiers": []}));
    for method in [Method::GET, Method::DELETE] {
        assert_error(
            &api.call(method, &path, None, Some("p2")).await,
            StatusCode::NOT_FOUND,
            "FlowClassifierNotFound",
        );
    }
    // Another project's Neutron port is not there for p2.
    let net = network(&api, Some("p1")).await;
    let p = port_as(&api, &net, "vm", Some("p1")).await;
    let (status, body) = post_as(&api, FC, json!({"logical_source_port": p}), Some("p2")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(count(&api, FC).await, 1);
});

api_test!(quota_is_100_per_project, |api| async move {
    for i in 0..100 {
        // Distinct destination ports keep them from conflicting.
        classifier(
            &api,
            json!({"protocol": "tcp", "destination_port_range_min": i, "destination_port_range_max": i}),
        )
        .await;
    }
    post_refused(
        &api,
        FC,
        json!({"protocol": "tcp", "destination_port_range_min": 1000, "destination_port_range_max": 1000}),
        StatusCode::CONFLICT,
        "OverQuota",
    )
    .await;
});
