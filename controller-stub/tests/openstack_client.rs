//! Acceptance: a stock OpenStack client (python-openstackclient and openstacksdk, with
//! python-neutronclient's `openstack sfc ...` commands) pointed at the controller in noauth
//! mode creates, lists, shows, updates and deletes every resource.
//!
//! The client runs from a venv that `tests/openstack/client.sh` builds from PyPI under
//! `target/tmp/openstack-client/` (pinned in `tests/openstack/requirements.txt`) and reuses
//! afterwards; the scenario itself is `tests/openstack/scenario.py`, which checks every answer
//! and fails on the first wrong one.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use common::{Backend, TestApi};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_openstack_client_drives_every_resource() {
    let api = TestApi::start(Backend::Sqlite).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/openstack/client.sh");
    let cache = concat!(env!("CARGO_TARGET_TMPDIR"), "/openstack-client");
    let endpoint = api.base.clone();
    // The client blocks; the server keeps running on the runtime's other worker.
    let out = tokio::task::spawn_blocking(move || {
        Command::new("bash")
            .arg(script)
            .arg(endpoint)
            .arg(cache)
            .output()
            .expect("run client.sh")
    })
    .await
    .expect("client task");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the OpenStack client scenario failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains("all as expected"),
        "no verdict from the scenario:\n{stdout}\n{stderr}"
    );
    // Everything the scenario made, it deleted.
    let (_, ports) = api.get("/v2.0/ports").await;
    assert_eq!(ports, serde_json::json!({"ports": []}));
}
