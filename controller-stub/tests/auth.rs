//! Who may do what: noauth project scoping and admin roles, token mode with a tokens file, and
//! the server's authentication options.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use common::{assert_error, Backend, TestApi};
use controller_stub::auth::{Auth, TokenTable};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

fn count(v: &Value, key: &str) -> usize {
    v[key].as_array().map_or(0, Vec::len)
}

api_test!(noauth_projects_and_admin_roles, |api| async move {
    let p1: &[(&str, &str)] = &[("X-Project-Id", "p1")];
    // The older header names the project too.
    let p2: &[(&str, &str)] = &[("X-Tenant-Id", "p2")];
    let member: &[(&str, &str)] = &[("X-Project-Id", "p3"), ("X-Roles", "member,reader")];
    let admin: &[(&str, &str)] = &[("X-Project-Id", "p3"), ("X-Roles", "reader, Admin")];

    let mut nets = Vec::new();
    for (who, name) in [(p1, "n1"), (p2, "n2")] {
        let (status, net) = api
            .request(
                Method::POST,
                "/v2.0/networks",
                Some(json!({"network": {"name": name}})),
                who,
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{net}");
        nets.push(net["network"].clone());
    }
    assert_eq!(nets[0]["project_id"], "p1");
    assert_eq!(nets[1]["project_id"], "p2");
    for (who, net) in [(p1, &nets[0]), (p2, &nets[1])] {
        let (status, sub) = api
            .request(
                Method::POST,
                "/v2.0/subnets",
                Some(json!({"subnet": {"network_id": net["id"], "cidr": "10.0.0.0/24", "ip_version": 4}})),
                who,
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{sub}");
        let (status, port) = api
            .request(
                Method::POST,
                "/v2.0/ports",
                Some(json!({"port": {"network_id": net["id"]}})),
                who,
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{port}");
    }
    for (collection, key) in [
        ("networks", "networks"),
        ("subnets", "subnets"),
        ("ports", "ports"),
    ] {
        let path = format!("/v2.0/{collection}");
        let (_, mine) = api.request(Method::GET, &path, None, p1).await;
        assert_eq!(count(&mine, key), 1, "p1 {collection}: {mine}");
        assert_eq!(mine[key][0]["project_id"], "p1");
        let (_, theirs) = api.request(Method::GET, &path, None, p2).await;
        assert_eq!(count(&theirs, key), 1, "p2 {collection}");
        assert_eq!(theirs[key][0]["project_id"], "p2");
        // A member role is just a project.
        let (_, none) = api.request(Method::GET, &path, None, member).await;
        assert_eq!(count(&none, key), 0, "member {collection}");
        // The admin role sees all, and so does a header-less request (noauth's admin).
        let (_, all) = api.request(Method::GET, &path, None, admin).await;
        assert_eq!(count(&all, key), 2, "admin {collection}");
        assert_eq!(count(&api.get(&path).await.1, key), 2);
    }
    // Another project's network is not there for p2, even by id; an admin may change it.
    let n1 = format!("/v2.0/networks/{}", nets[0]["id"].as_str().unwrap());
    assert_error(
        &api.request(Method::GET, &n1, None, p2).await,
        StatusCode::NOT_FOUND,
        "NetworkNotFound",
    );
    let (status, renamed) = api
        .request(
            Method::PUT,
            &n1,
            Some(json!({"network": {"name": "by-admin"}})),
            admin,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{renamed}");
    // Only an admin creates in another project's name.
    let body = json!({"network": {"name": "x", "project_id": "p9"}});
    assert_eq!(
        api.request(Method::POST, "/v2.0/networks", Some(body.clone()), p1)
            .await
            .0,
        StatusCode::BAD_REQUEST
    );
    let (status, made) = api
        .request(Method::POST, "/v2.0/networks", Some(body), admin)
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(made["network"]["project_id"], "p9");
});

const ADMIN_TOKEN: &str = "admin-secret-0123";
const P1_TOKEN: &str = "p1-secret-4567";
const P2_TOKEN: &str = "p2-secret-89ab";

/// A tokens file as an operator writes it: the admin's token in clear, the projects' as
/// SHA-256 digests only.
fn tokens_file(dir: &std::path::Path) -> std::path::PathBuf {
    let digest = |t: &str| hex::encode(Sha256::digest(t.as_bytes()));
    let path = dir.join("tokens.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[[token]]
token = "{ADMIN_TOKEN}"
project_id = "ops"
roles = ["admin"]

[[token]]
sha256 = "{}"
project_id = "p1"
roles = ["member"]

[[token]]
sha256 = "{}"
project_id = "p2"
"#,
            digest(P1_TOKEN),
            digest(P2_TOKEN)
        ),
    )
    .unwrap();
    path
}

async fn token_mode(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let table = TokenTable::load(&tokens_file(dir.path())).expect("tokens file");
    let api = TestApi::start_with_auth(backend, Auth::Token(table)).await;
    let with = |token: &'static str| [("X-Auth-Token", token)];

    // No token, an unknown token, an empty one: 401, whatever else the request says.
    let p1_digest = hex::encode(Sha256::digest(P1_TOKEN.as_bytes()));
    for headers in [
        vec![],
        vec![("X-Auth-Token", "nope")],
        vec![("X-Auth-Token", "")],
        vec![("X-Project-Id", "p1"), ("X-Roles", "admin")],
        // The digest itself is not a token.
        vec![("X-Auth-Token", p1_digest.as_str())],
    ] {
        for (method, path) in [
            (Method::GET, "/v2.0/networks"),
            (Method::POST, "/v2.0/networks"),
        ] {
            let body = (method == Method::POST).then(|| json!({"network": {"name": "x"}}));
            let result = api.request(method, path, body, &headers).await;
            assert_error(&result, StatusCode::UNAUTHORIZED, "NotAuthorized");
        }
    }

    let (status, n1) = api
        .request(
            Method::POST,
            "/v2.0/networks",
            Some(json!({"network": {"name": "n1"}})),
            &with(P1_TOKEN),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{n1}");
    assert_eq!(n1["network"]["project_id"], "p1");
    let (status, n2) = api
        .request(
            Method::POST,
            "/v2.0/networks",
            Some(json!({"network": {"name": "n2"}})),
            &with(P2_TOKEN),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{n2}");
    assert_eq!(n2["network"]["project_id"], "p2");

    let (_, list) = api
        .request(Method::GET, "/v2.0/networks", None, &with(P1_TOKEN))
        .await;
    assert_eq!(count(&list, "networks"), 1);
    assert_eq!(list["networks"][0]["name"], "n1");
    // In token mode the project and role headers are ignored: the token decides.
    let (_, list) = api
        .request(
            Method::GET,
            "/v2.0/networks",
            None,
            &[
                ("X-Auth-Token", P2_TOKEN),
                ("X-Project-Id", "p1"),
                ("X-Roles", "admin"),
            ],
        )
        .await;
    assert_eq!(count(&list, "networks"), 1);
    assert_eq!(list["networks"][0]["name"], "n2");
    let n1_path = format!("/v2.0/networks/{}", n1["network"]["id"].as_str().unwrap());
    assert_error(
        &api.request(Method::DELETE, &n1_path, None, &with(P2_TOKEN))
            .await,
        StatusCode::NOT_FOUND,
        "NetworkNotFound",
    );
    // The admin token sees and changes everything, and binds ports.
    let (_, all) = api
        .request(Method::GET, "/v2.0/networks", None, &with(ADMIN_TOKEN))
        .await;
    assert_eq!(count(&all, "networks"), 2);
    let (status, port) = api
        .request(
            Method::POST,
            "/v2.0/ports",
            Some(json!({"port": {"network_id": n1["network"]["id"], "binding:host_id": "h1"}})),
            &with(ADMIN_TOKEN),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{port}");
    assert_eq!(port["port"]["project_id"], "ops");
    // ... which the project token may not.
    assert_error(
        &api.request(
            Method::POST,
            "/v2.0/ports",
            Some(json!({"port": {"network_id": n1["network"]["id"], "binding:host_id": "h1"}})),
            &with(P1_TOKEN),
        )
        .await,
        StatusCode::FORBIDDEN,
        "PolicyNotAuthorized",
    );
    let port_path = format!("/v2.0/ports/{}", port["port"]["id"].as_str().unwrap());
    assert_eq!(
        api.request(Method::DELETE, &port_path, None, &with(ADMIN_TOKEN))
            .await
            .0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        api.request(Method::DELETE, &n1_path, None, &with(P1_TOKEN))
            .await
            .0,
        StatusCode::NO_CONTENT
    );

    // The authentication survives a restart.
    let api = api.restart().await;
    assert_error(
        &api.get("/v2.0/networks").await,
        StatusCode::UNAUTHORIZED,
        "NotAuthorized",
    );
    let (_, list) = api
        .request(Method::GET, "/v2.0/networks", None, &with(ADMIN_TOKEN))
        .await;
    assert_eq!(count(&list, "networks"), 1);
    if backend == Backend::Postgres {
        let url = api.url.clone();
        drop(api);
        common::pg::drop_database(&url).await;
    }
}

#[tokio::test]
async fn token_mode_sqlite() {
    token_mode(Backend::Sqlite).await;
}

#[tokio::test]
async fn token_mode_postgres() {
    token_mode(Backend::Postgres).await;
}

#[test]
fn bad_tokens_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        // Both forms in one entry.
        "[[token]]\ntoken = \"a\"\nsha256 = \"00\"\nproject_id = \"p\"\n",
        // Neither.
        "[[token]]\nproject_id = \"p\"\n",
        // A digest that is not 64 hex digits.
        "[[token]]\nsha256 = \"abc\"\nproject_id = \"p\"\n",
        // An empty token would match an empty header.
        "[[token]]\ntoken = \"\"\nproject_id = \"p\"\n",
        // No project.
        "[[token]]\ntoken = \"a\"\n",
        // A misspelt key.
        "[[token]]\ntoken = \"a\"\nproject = \"p\"\n",
        "not toml at all [",
    ];
    for (i, text) in cases.iter().enumerate() {
        let path = dir.path().join(format!("t{i}.toml"));
        std::fs::write(&path, text).unwrap();
        assert!(TokenTable::load(&path).is_err(), "accepted: {text}");
    }
    assert!(TokenTable::load(&dir.path().join("missing.toml")).is_err());
    // An empty file is a valid table that lets nobody in.
    let empty = dir.path().join("empty.toml");
    std::fs::write(&empty, "").unwrap();
    assert!(TokenTable::load(&empty).is_ok());
}

#[test]
fn serve_refuses_incomplete_auth_options() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite:{}", dir.path().join("c.db").display());
    let bad_file = dir.path().join("bad.toml");
    std::fs::write(&bad_file, "[[token]]\nproject_id = \"p\"\n").unwrap();
    let bad_file = bad_file.display().to_string();
    for args in [
        vec!["--auth", "token"],
        vec!["--auth", "kerberos"],
        vec!["--auth", "token", "--tokens", bad_file.as_str()],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_controller-stub"))
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--database",
                db.as_str(),
            ])
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        assert!(!out.stderr.is_empty(), "{args:?} says why");
    }
}
