//! The `vnf-agent` binary with the reference handlers, driven over a UNIX socket: it applies a
//! `files` update under its root, refuses hostile ones, and exits 0 on SIGTERM and 2 on a
//! configuration error.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};

use relay_protocol::{AckOutcome, Message};
use tokio::net::UnixListener;

mod common;
use common::{rejected, Controller, Program, INSTANCE, KEY_HEX};

const BIN: &str = env!("CARGO_BIN_EXE_vnf-agent");

#[tokio::test]
async fn binary_applies_files_and_stops_on_sigterm() {
    let work = tempfile::tempdir().unwrap();
    let key = work.path().join("key");
    std::fs::write(&key, format!("{KEY_HEX}\n")).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let root = work.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let socket = work.path().join("relay.sock");
    let listener = UnixListener::bind(&socket).unwrap();

    let child = Command::new(BIN)
        .arg("--port")
        .arg(format!("unix:{}", socket.display()))
        .arg("--key-file")
        .arg(&key)
        .arg("--state-dir")
        .arg(work.path().join("state"))
        .arg("--root")
        .arg(&root)
        .args(["--instance", &INSTANCE.to_string()])
        .args(["--files-allow-dir", "/etc/app", "--log", "debug"])
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut program = Program(child);
    let mut ctl = Controller::accept(&listener, &mut program).await;
    ctl.services = ["files", "firewall", "loadbalancer", "vpn"]
        .map(String::from)
        .to_vec();
    match ctl.recv().await {
        Some(Message::ConfigRequest(req)) => assert!(req.applied.is_empty()),
        other => panic!("expected a ConfigRequest, got {other:?}"),
    }

    let conf = br#"{"files": [{"path": "/etc/app/app.conf", "content": "listen 8080\n", "mode": "0640"}]}"#;
    let ack = ctl.push("files", 1, conf).await;
    assert_eq!(ack.outcome, AckOutcome::Applied, "{ack:?}");
    let written = root.join("etc/app/app.conf");
    assert_eq!(std::fs::read_to_string(&written).unwrap(), "listen 8080\n");
    let mode = std::fs::metadata(&written).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o640);

    let escape = br#"{"files": [{"path": "/etc/app/../../../escaped", "content": "x"}]}"#;
    let ack = ctl.push("files", 2, escape).await;
    assert!(
        rejected(&ack).contains("paths must be normalised"),
        "{ack:?}"
    );
    assert!(!work.path().join("escaped").exists());
    let ack = ctl.push("firewall", 1, b"rm -rf /; $(reboot)").await;
    assert!(rejected(&ack).starts_with("firewall payload"), "{ack:?}");

    let pid = program.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = tokio::task::spawn_blocking(move || program.0.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code(), Some(0), "{status}");
}

#[test]
fn configuration_errors_exit_with_2() {
    let work = tempfile::tempdir().unwrap();
    for args in [
        vec![
            "--key-file",
            "/nonexistent/key",
            "--port",
            "unix:/nonexistent",
        ],
        vec!["--port", "not/a/name"],
        vec!["--no-such-flag"],
    ] {
        let out = Command::new(BIN)
            .args(&args)
            .arg("--state-dir")
            .arg(work.path())
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}: {out:?}");
        assert!(!out.stderr.is_empty());
    }
}
