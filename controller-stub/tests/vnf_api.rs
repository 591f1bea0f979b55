//! `/v2.0/vnf/...`: desired configurations (versions, validation, ownership through ports),
//! instance keys (administrators only, created once) and relay hosts.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{assert_error, TestApi};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const INSTANCE: &str = "0b6e6a4c-5d7e-4f3a-9c1e-2f3a4b5c6d7e";
const OTHER: &str = "1c7f7b5d-6e8f-4a4b-8d2f-3a4b5c6d7e8f";

fn configs(instance: &str) -> String {
    format!("/v2.0/vnf/instances/{instance}/configs")
}

fn config(instance: &str, service: &str) -> String {
    format!("/v2.0/vnf/instances/{instance}/configs/{service}")
}

fn key(instance: &str) -> String {
    format!("/v2.0/vnf/instances/{instance}/key")
}

/// A port of `project` on a fresh network whose device is `instance`.
async fn port_of(api: &TestApi, project: &str, instance: &str) {
    let (status, net) = api
        .call(
            Method::POST,
            "/v2.0/networks",
            Some(json!({"network": {"name": "n"}})),
            Some(project),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{net}");
    let (status, port) = api
        .call(
            Method::POST,
            "/v2.0/ports",
            Some(json!({"port": {"network_id": net["network"]["id"], "device_id": instance}})),
            Some(project),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{port}");
}

async fn set_as(
    api: &TestApi,
    project: Option<&str>,
    instance: &str,
    service: &str,
    payload: Value,
) -> (StatusCode, Value) {
    api.call(
        Method::PUT,
        &config(instance, service),
        Some(json!({"config": {"payload": payload}})),
        project,
    )
    .await
}

api_test!(set_show_list_delete_and_versions, |api| async move {
    let (status, c) = set_as(&api, None, INSTANCE, "firewall", json!({"rules": []})).await;
    assert_eq!(status, StatusCode::OK, "{c}");
    let c = &c["config"];
    assert_eq!(c["instance_id"], INSTANCE);
    assert_eq!(c["service"], "firewall");
    assert_eq!(c["version"], 1);
    assert_eq!(c["status"], "pending");
    assert_eq!(c["applied_version"], Value::Null);
    assert_eq!(c["message"], Value::Null);
    assert_eq!(c["project_id"], "admin");
    assert!(c["updated_at"].as_str().unwrap().ends_with('Z'));
    assert!(
        c.get("payload").is_none(),
        "a set does not echo the payload"
    );

    // The same payload keeps the version (key order and spacing do not matter).
    let (_, again) = set_as(&api, None, INSTANCE, "firewall", json!({ "rules": [] })).await;
    assert_eq!(again["config"], *c);
    let (_, v2) = set_as(&api, None, INSTANCE, "firewall", json!({"rules": [1]})).await;
    assert_eq!(v2["config"]["version"], 2);
    assert_ne!(v2["config"]["config_id"], c["config_id"]);

    let (status, shown) = api.get(&config(INSTANCE, "firewall")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(shown["config"]["payload"], json!({"rules": [1]}));
    assert_eq!(shown["config"]["version"], 2);

    // Raw bytes.
    let (status, b) = api
        .put(
            &config(INSTANCE, "files"),
            json!({"config": {"payload_base64": "AAEC/w=="}}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{b}");
    let (_, shown) = api.get(&config(INSTANCE, "files")).await;
    assert_eq!(shown["config"]["payload_base64"], "AAEC/w==");
    assert!(shown["config"].get("payload").is_none());

    let (status, list) = api.get(&configs(INSTANCE)).await;
    assert_eq!(status, StatusCode::OK);
    let services: Vec<&str> = list["configs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["service"].as_str().unwrap())
        .collect();
    assert_eq!(services, ["files", "firewall"]);
    let (_, filtered) = api
        .get(&format!(
            "{}?service=firewall&fields=version",
            configs(INSTANCE)
        ))
        .await;
    assert_eq!(filtered, json!({"configs": [{"version": 2}]}));

    // Delete: gone from the API, nothing more is pushed; a new set continues the versions.
    assert_eq!(
        api.delete(&config(INSTANCE, "firewall")).await.0,
        StatusCode::NO_CONTENT
    );
    assert_error(
        &api.get(&config(INSTANCE, "firewall")).await,
        StatusCode::NOT_FOUND,
        "VnfConfigNotFound",
    );
    assert_error(
        &api.delete(&config(INSTANCE, "firewall")).await,
        StatusCode::NOT_FOUND,
        "VnfConfigNotFound",
    );
    let (_, list) = api.get(&configs(INSTANCE)).await;
    assert_eq!(list["configs"].as_array().unwrap().len(), 1);
    let (_, v3) = set_as(&api, None, INSTANCE, "firewall", json!({"rules": [1]})).await;
    assert_eq!(v3["config"]["version"], 3);
    assert_eq!(v3["config"]["status"], "pending");

    // Survives a restart.
    let api = api.restart().await;
    let (_, shown) = api.get(&config(INSTANCE, "firewall")).await;
    assert_eq!(shown["config"]["version"], 3);
});

api_test!(bad_input_is_refused_and_stores_nothing, |api| async move {
    for service in ["Firewall", "fire wall", "-x", "svc!"] {
        assert_error(
            &set_as(&api, None, INSTANCE, service, json!({})).await,
            StatusCode::BAD_REQUEST,
            "InvalidInput",
        );
    }
    let long = "x".repeat(65);
    assert_error(
        &set_as(&api, None, INSTANCE, &long, json!({})).await,
        StatusCode::BAD_REQUEST,
        "InvalidInput",
    );
    for body in [
        json!({"config": {"payload": {}, "payload_base64": "AA=="}}),
        json!({"config": {}}),
        json!({"config": {"payload_base64": "%%%"}}),
        json!({"config": {"payload_base64": 5}}),
    ] {
        assert_error(
            &api.put(&config(INSTANCE, "vpn"), body).await,
            StatusCode::BAD_REQUEST,
            "InvalidInput",
        );
    }
    assert_error(
        &api.put(
            &config(INSTANCE, "vpn"),
            json!({"config": {"payload": 1, "status": "applied"}}),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "HTTPBadRequest",
    );
    assert_error(
        &api.put(&config(INSTANCE, "vpn"), json!({"payload": 1}))
            .await,
        StatusCode::BAD_REQUEST,
        "HTTPBadRequest",
    );
    // One byte over the protocol's payload bound, within the body bound: 413.
    let max = relay_protocol::message::MAX_PAYLOAD;
    let over = "x".repeat(max - 1); // plus two quotes
    assert_error(
        &set_as(&api, None, INSTANCE, "files", json!(over)).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "RequestEntityTooLarge",
    );
    // A body over the HTTP bound is refused before it is read whole.
    let huge = "A".repeat(2 * max + 4);
    assert_error(
        &api.put(
            &config(INSTANCE, "files"),
            json!({"config": {"payload_base64": huge}}),
        )
        .await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "RequestEntityTooLarge",
    );
    // Not a UUID: no such instance.
    assert_error(
        &set_as(&api, None, "not-a-uuid", "vpn", json!({})).await,
        StatusCode::NOT_FOUND,
        "InstanceNotFound",
    );
    // Nothing was stored: the instance is unknown.
    assert_error(
        &api.get(&configs(INSTANCE)).await,
        StatusCode::NOT_FOUND,
        "InstanceNotFound",
    );
});

api_test!(
    projects_manage_configs_of_instances_they_have_ports_on,
    |api| async move {
        port_of(&api, "p1", INSTANCE).await;
        let (status, c) = set_as(&api, Some("p1"), INSTANCE, "firewall", json!({"a": 1})).await;
        assert_eq!(status, StatusCode::OK, "{c}");
        assert_eq!(c["config"]["project_id"], "p1");
        let (status, list) = api
            .call(Method::GET, &configs(INSTANCE), None, Some("p1"))
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(list["configs"].as_array().unwrap().len(), 1);

        // Another project: as if the instance did not exist.
        assert_error(
            &set_as(&api, Some("p2"), INSTANCE, "firewall", json!({"a": 2})).await,
            StatusCode::NOT_FOUND,
            "InstanceNotFound",
        );
        assert_error(
            &api.call(Method::GET, &configs(INSTANCE), None, Some("p2"))
                .await,
            StatusCode::NOT_FOUND,
            "InstanceNotFound",
        );
        assert_error(
            &api.call(Method::GET, &config(INSTANCE, "firewall"), None, Some("p2"))
                .await,
            StatusCode::NOT_FOUND,
            "InstanceNotFound",
        );
        assert_error(
            &api.call(
                Method::DELETE,
                &config(INSTANCE, "firewall"),
                None,
                Some("p2"),
            )
            .await,
            StatusCode::NOT_FOUND,
            "InstanceNotFound",
        );
        // An instance nobody has a port on is unknown to projects, and to an admin until it has
        // something.
        assert_error(
            &set_as(&api, Some("p1"), OTHER, "firewall", json!({})).await,
            StatusCode::NOT_FOUND,
            "InstanceNotFound",
        );
        assert_error(
            &api.get(&configs(OTHER)).await,
            StatusCode::NOT_FOUND,
            "InstanceNotFound",
        );

        // An administrator manages any instance; its set keeps the port owner's project.
        let (_, c) = set_as(&api, None, INSTANCE, "vpn", json!({"b": 1})).await;
        assert_eq!(c["config"]["project_id"], "p1");
        let (_, v) = api.get(&config(INSTANCE, "firewall")).await;
        assert_eq!(v["config"]["payload"], json!({"a": 1}));

        // The owner deletes its own.
        let (status, _) = api
            .call(
                Method::DELETE,
                &config(INSTANCE, "firewall"),
                None,
                Some("p1"),
            )
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT);
    }
);

api_test!(
    instance_keys_are_for_admins_and_made_once,
    |api| async move {
        assert_error(
            &api.call(Method::POST, &key(INSTANCE), None, Some("p1"))
                .await,
            StatusCode::FORBIDDEN,
            "PolicyNotAuthorized",
        );
        assert_error(
            &api.call(Method::GET, &key(INSTANCE), None, Some("p1"))
                .await,
            StatusCode::FORBIDDEN,
            "PolicyNotAuthorized",
        );
        assert_error(
            &api.get(&key(INSTANCE)).await,
            StatusCode::NOT_FOUND,
            "InstanceKeyNotFound",
        );

        // No body: a random key.
        let (status, made) = api.call(Method::POST, &key(INSTANCE), None, None).await;
        assert_eq!(status, StatusCode::CREATED, "{made}");
        let k = made["key"]["key"].as_str().unwrap().to_owned();
        assert_eq!(k.len(), 64);
        assert!(k.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(made["key"]["instance_id"], INSTANCE);
        assert_error(
            &api.post(&key(INSTANCE), json!({"key": {}})).await,
            StatusCode::CONFLICT,
            "InstanceKeyExists",
        );
        let (status, shown) = api.get(&key(INSTANCE)).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(shown, made);
        // The instance is known now, with no configurations.
        assert_eq!(
            api.get(&configs(INSTANCE)).await,
            (StatusCode::OK, json!({"configs": []}))
        );

        // Import: validated, stored lowercase.
        for bad in ["ab".repeat(31), "xy".repeat(32), "ab".repeat(33)] {
            assert_error(
                &api.post(&key(OTHER), json!({"key": {"key": bad}})).await,
                StatusCode::BAD_REQUEST,
                "InvalidInput",
            );
        }
        assert_error(
            &api.post(&key(OTHER), json!({"key": {"secret": "x"}})).await,
            StatusCode::BAD_REQUEST,
            "HTTPBadRequest",
        );
        let imported = "0123456789ABCDEF".repeat(4);
        let (status, made) = api
            .post(&key(OTHER), json!({"key": {"key": imported}}))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{made}");
        assert_eq!(made["key"]["key"], imported.to_lowercase());
        assert_ne!(made["key"]["key"], k);
    }
);

api_test!(relay_hosts_are_for_admins, |api| async move {
    assert_error(
        &api.call(Method::GET, "/v2.0/vnf/hosts", None, Some("p1"))
            .await,
        StatusCode::FORBIDDEN,
        "PolicyNotAuthorized",
    );
    assert_eq!(
        api.get("/v2.0/vnf/hosts").await,
        (StatusCode::OK, json!({"hosts": []}))
    );
});

#[tokio::test]
async fn the_sqlite_file_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let api = TestApi::start(common::Backend::Sqlite).await;
    let path = api.url.strip_prefix("sqlite:").unwrap();
    let mode = std::fs::metadata(path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "{path}");
}
