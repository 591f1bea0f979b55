//! Helpers of the SFC API tests: Neutron ports to hang port pairs on, one-call creation of each
//! SFC resource, and the "nothing was stored" check every refused request is followed by.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::common::{assert_error, TestApi};

/// A Neutron network of `project` (None: the admin's).
pub async fn network(api: &TestApi, project: Option<&str>) -> String {
    let (status, body) = api
        .call(
            Method::POST,
            "/v2.0/networks",
            Some(json!({"network": {"name": "sfc-net"}})),
            project,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["network"]["id"].as_str().unwrap().to_string()
}

/// A Neutron port on `net` attached to `device_id` (empty: unattached), owned by `project`.
pub async fn port_as(api: &TestApi, net: &str, device_id: &str, project: Option<&str>) -> String {
    let (status, body) = api
        .call(
            Method::POST,
            "/v2.0/ports",
            Some(json!({"port": {"network_id": net, "device_id": device_id, "name": "p"}})),
            project,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    body["port"]["id"].as_str().unwrap().to_string()
}

/// An admin's port on `net` attached to `device_id`.
pub async fn port(api: &TestApi, net: &str, device_id: &str) -> String {
    port_as(api, net, device_id, None).await
}

/// POST `{key: body}` to `/v2.0/sfc/{collection}` as `project`.
pub async fn post_as(
    api: &TestApi,
    collection: &str,
    body: Value,
    project: Option<&str>,
) -> (StatusCode, Value) {
    let key = singular(collection);
    api.call(
        Method::POST,
        &format!("/v2.0/sfc/{collection}"),
        Some(json!({ key: body })),
        project,
    )
    .await
}

/// POST as the admin.
pub async fn post(api: &TestApi, collection: &str, body: Value) -> (StatusCode, Value) {
    post_as(api, collection, body, None).await
}

/// PUT `{key: body}` to `/v2.0/sfc/{collection}/{id}`.
pub async fn put(api: &TestApi, collection: &str, id: &str, body: Value) -> (StatusCode, Value) {
    let key = singular(collection);
    api.put(
        &format!("/v2.0/sfc/{collection}/{id}"),
        json!({ key: body }),
    )
    .await
}

pub async fn get(api: &TestApi, collection: &str, id: &str) -> (StatusCode, Value) {
    api.get(&format!("/v2.0/sfc/{collection}/{id}")).await
}

pub async fn delete(api: &TestApi, collection: &str, id: &str) -> (StatusCode, Value) {
    api.delete(&format!("/v2.0/sfc/{collection}/{id}")).await
}

/// Creates and returns the resource, asserting 201.
pub async fn create(api: &TestApi, collection: &str, body: Value) -> Value {
    let (status, value) = post(api, collection, body).await;
    assert_eq!(status, StatusCode::CREATED, "create {collection}: {value}");
    value[singular(collection)].clone()
}

/// The id of a new resource.
pub async fn create_id(api: &TestApi, collection: &str, body: Value) -> String {
    create(api, collection, body).await["id"]
        .as_str()
        .unwrap()
        .to_string()
}

pub fn singular(collection: &str) -> &str {
    collection.strip_suffix('s').unwrap_or(collection)
}

/// All resources of `collection` the admin sees.
pub async fn list(api: &TestApi, collection: &str) -> Vec<Value> {
    let (status, body) = api.get(&format!("/v2.0/sfc/{collection}")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body[collection].as_array().unwrap().clone()
}

pub async fn count(api: &TestApi, collection: &str) -> usize {
    list(api, collection).await.len()
}

/// POSTs a body that must be refused with `status`/`kind`, then checks nothing was stored.
pub async fn post_refused(
    api: &TestApi,
    collection: &str,
    body: Value,
    status: StatusCode,
    kind: &str,
) {
    let before = list(api, collection).await;
    let result = post(api, collection, body.clone()).await;
    assert_eq!(result.0, status, "POST {collection} {body}: {}", result.1);
    assert_eq!(
        result.1["NeutronError"]["type"], kind,
        "POST {collection} {body}: {}",
        result.1
    );
    assert_eq!(
        list(api, collection).await,
        before,
        "a refused POST {collection} changed the collection"
    );
}

/// PUTs a body that must be refused with `status`/`kind`, then checks the resource is as it
/// was.
pub async fn put_refused(
    api: &TestApi,
    collection: &str,
    id: &str,
    body: Value,
    status: StatusCode,
    kind: &str,
) {
    let before = get(api, collection, id).await;
    let result = put(api, collection, id, body.clone()).await;
    assert_eq!(result.0, status, "PUT {collection} {body}: {}", result.1);
    assert_eq!(
        result.1["NeutronError"]["type"], kind,
        "PUT {collection} {body}: {}",
        result.1
    );
    assert_eq!(
        get(api, collection, id).await,
        before,
        "a refused PUT {collection} changed the resource"
    );
}

/// DELETEs a resource that must stay, refused with `status`/`kind`.
pub async fn delete_refused(
    api: &TestApi,
    collection: &str,
    id: &str,
    status: StatusCode,
    kind: &str,
) {
    let result = delete(api, collection, id).await;
    assert_error(&result, status, kind);
    assert_eq!(
        get(api, collection, id).await.0,
        StatusCode::OK,
        "a refused DELETE removed {collection}/{id}"
    );
}

/// A service function VM: two ports on one device and the port pair over them.
pub async fn port_pair(
    api: &TestApi,
    net: &str,
    device: &str,
    correlation: Option<&str>,
) -> String {
    let ingress = port(api, net, device).await;
    let egress = port(api, net, device).await;
    create_id(
        api,
        "port_pairs",
        json!({
            "ingress": ingress,
            "egress": egress,
            "service_function_parameters": {"correlation": correlation},
        }),
    )
    .await
}

/// A port pair group of these port pairs.
pub async fn group(api: &TestApi, port_pairs: &[&str]) -> String {
    create_id(api, "port_pair_groups", json!({ "port_pairs": port_pairs })).await
}

/// A group holding one new port pair of `correlation`.
pub async fn group_with_pair(api: &TestApi, net: &str, correlation: Option<&str>) -> String {
    let device = uuid::Uuid::new_v4().to_string();
    let pp = port_pair(api, net, &device, correlation).await;
    group(api, &[&pp]).await
}

/// A chain over these groups with these classifiers.
pub async fn chain(api: &TestApi, groups: &[&str], classifiers: &[&str]) -> String {
    create_id(
        api,
        "port_chains",
        json!({"port_pair_groups": groups, "flow_classifiers": classifiers}),
    )
    .await
}

/// A classifier with these attributes.
pub async fn classifier(api: &TestApi, attrs: Value) -> String {
    create_id(api, "flow_classifiers", attrs).await
}

/// A well-formed UUID nothing has.
pub fn unknown() -> String {
    uuid::Uuid::new_v4().to_string()
}
