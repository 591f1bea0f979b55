//! Test harness: a controller serving on a loopback port over a fresh database, and a small
//! client that speaks its JSON.
//!
//! Every API test runs once per backend (`api_test!`), so the same suite covers SQLite and
//! PostgreSQL.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;

use controller_stub::api::AppState;
use controller_stub::auth::Auth;
use controller_stub::db::Db;
use controller_stub::CancellationToken;
use reqwest::{Method, StatusCode};
use serde_json::Value;

/// Which database a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
}

/// A running controller and its database.
pub struct TestApi {
    pub base: String,
    pub addr: SocketAddr,
    pub url: String,
    client: reqwest::Client,
    shutdown: CancellationToken,
    server: Option<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl TestApi {
    /// A controller in noauth mode on a fresh database of `backend`.
    pub async fn start(backend: Backend) -> TestApi {
        let dir = tempfile::tempdir().expect("temp dir");
        let url = match backend {
            Backend::Sqlite => format!("sqlite:{}", dir.path().join("controller.db").display()),
        };
        Self::start_on(
            url,
            dir,
            Auth::NoAuth {
                default_project: "admin".into(),
            },
        )
        .await
    }

    async fn start_on(url: String, dir: tempfile::TempDir, auth: Auth) -> TestApi {
        let db = Db::connect(&url).await.expect("database");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        let server = tokio::spawn(async move {
            controller_stub::serve(listener, AppState { db, auth }, token)
                .await
                .expect("serve");
        });
        TestApi {
            base: format!("http://{addr}"),
            addr,
            url,
            client: reqwest::Client::new(),
            shutdown,
            server: Some(server),
            _dir: dir,
        }
    }

    /// Stops the server and starts a new one on the same database: what a restart keeps.
    pub async fn restart(mut self) -> TestApi {
        self.shutdown.cancel();
        if let Some(server) = self.server.take() {
            server.await.expect("server task");
        }
        let dir = std::mem::replace(&mut self._dir, tempfile::tempdir().expect("temp dir"));
        Self::start_on(
            self.url.clone(),
            dir,
            Auth::NoAuth {
                default_project: "admin".into(),
            },
        )
        .await
    }

    /// One request as `project` (None: header-less, i.e. admin in noauth mode).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
        project: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if let Some(p) = project {
            req = req.header("X-Project-Id", p);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status();
        let text = resp.text().await.expect("body");
        let value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        (status, value)
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, None, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(body), None).await
    }

    pub async fn put(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::PUT, path, Some(body), None).await
    }

    pub async fn delete(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::DELETE, path, None, None).await
    }

    /// Creates `{key: body}` at `path`, asserts 201 and returns the created object.
    pub async fn create(&self, path: &str, key: &str, body: Value) -> Value {
        let (status, value) = self.post(path, serde_json::json!({ key: body })).await;
        assert_eq!(status, StatusCode::CREATED, "create {path}: {value}");
        value[key].clone()
    }
}

impl Drop for TestApi {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Asserts a Neutron error: status and exception type.
#[track_caller]
pub fn assert_error(result: &(StatusCode, Value), status: StatusCode, kind: &str) {
    assert_eq!(result.0, status, "{}", result.1);
    assert_eq!(result.1["NeutronError"]["type"], kind, "{}", result.1);
}

/// Defines one test per backend: `api_test!(name, |api| async move { ... });`
#[macro_export]
macro_rules! api_test {
    ($name:ident, |$api:ident| $body:expr) => {
        mod $name {
            use super::*;

            #[tokio::test]
            async fn sqlite() {
                let $api = $crate::common::TestApi::start($crate::common::Backend::Sqlite).await;
                $body.await
            }
        }
    };
}
