//! `/v2.0/networks`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::assert_error;
use reqwest::{Method, StatusCode};
use serde_json::json;

api_test!(create_show_list_update_delete, |api| async move {
    let net = api
        .create("/v2.0/networks", "network", json!({"name": "net1"}))
        .await;
    assert_eq!(net["mtu"], 1450);
    assert_eq!(net["provider:segmentation_id"], 1);
    let id = net["id"].as_str().unwrap().to_string();
    let (status, shown) = api.get(&format!("/v2.0/networks/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(shown["network"], net);
    let (_, list) = api.get("/v2.0/networks?name=net1&fields=id").await;
    assert_eq!(list, json!({"networks": [{"id": id}]}));
    let (status, updated) = api
        .put(
            &format!("/v2.0/networks/{id}"),
            json!({"network": {"name": "n2"}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(updated["network"]["name"], "n2");
    assert_eq!(updated["network"]["revision_number"], 2);
    assert_eq!(
        api.delete(&format!("/v2.0/networks/{id}")).await.0,
        StatusCode::NO_CONTENT
    );
    assert_error(
        &api.get(&format!("/v2.0/networks/{id}")).await,
        StatusCode::NOT_FOUND,
        "NetworkNotFound",
    );
});

api_test!(bad_input_is_a_400_and_stores_nothing, |api| async move {
    assert_error(
        &api.post("/v2.0/networks", json!({"network": {"nme": "x"}}))
            .await,
        StatusCode::BAD_REQUEST,
        "HTTPBadRequest",
    );
    assert_error(
        &api.post("/v2.0/networks", json!({"netwrk": {}})).await,
        StatusCode::BAD_REQUEST,
        "HTTPBadRequest",
    );
    assert_error(
        &api.post("/v2.0/networks", json!({"network": {"mtu": 5}}))
            .await,
        StatusCode::BAD_REQUEST,
        "HTTPBadRequest",
    );
    assert_error(
        &api.post("/v2.0/networks", json!({"network": {"name": 5}}))
            .await,
        StatusCode::BAD_REQUEST,
        "InvalidInput",
    );
    assert_eq!(api.get("/v2.0/networks").await.1, json!({"networks": []}));
});

api_test!(projects_see_only_their_own, |api| async move {
    let (status, mine) = api
        .call(
            Method::POST,
            "/v2.0/networks",
            Some(json!({"network": {"name": "a"}})),
            Some("p1"),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let id = mine["network"]["id"].as_str().unwrap().to_string();
    let (_, theirs) = api
        .call(Method::GET, "/v2.0/networks", None, Some("p2"))
        .await;
    assert_eq!(theirs, json!({"networks": []}));
    assert_error(
        &api.call(
            Method::GET,
            &format!("/v2.0/networks/{id}"),
            None,
            Some("p2"),
        )
        .await,
        StatusCode::NOT_FOUND,
        "NetworkNotFound",
    );
    assert_error(
        &api.call(
            Method::DELETE,
            &format!("/v2.0/networks/{id}"),
            None,
            Some("p2"),
        )
        .await,
        StatusCode::NOT_FOUND,
        "NetworkNotFound",
    );
    // The admin (header-less in noauth) sees it.
    assert_eq!(
        api.get("/v2.0/networks").await.1["networks"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
});

api_test!(state_survives_a_restart, |api| async move {
    let net = api
        .create("/v2.0/networks", "network", json!({"name": "kept"}))
        .await;
    let api = api.restart().await;
    let (_, list) = api.get("/v2.0/networks").await;
    assert_eq!(list["networks"][0], net);
});
