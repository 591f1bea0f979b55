//! `controller-stub pki init`: the files it writes, their modes, that it never overwrites
//! without `--force`, and that its output is what relay-host and `serve --relay-*` load.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

fn pki(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_controller-stub"))
        .arg("pki")
        .arg("init")
        .args(args)
        .output()
        .expect("run controller-stub")
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn init_writes_a_ca_the_endpoint_identity_and_one_identity_per_relay() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("pki");
    let d = out_dir.to_str().unwrap();
    let out = pki(&[
        "--dir",
        d,
        "--server-name",
        "ctl.example,10.0.0.1",
        "--relay",
        "compute-1",
        "--relay",
        "compute-2",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = String::from_utf8(out.stdout).unwrap();
    let files = [
        ("ca.pem", 0o644),
        ("ca.key", 0o600),
        ("server.pem", 0o644),
        ("server.key", 0o600),
        ("relays/compute-1/ca.pem", 0o644),
        ("relays/compute-1/relay.pem", 0o644),
        ("relays/compute-1/relay.key", 0o600),
        ("relays/compute-2/ca.pem", 0o644),
        ("relays/compute-2/relay.pem", 0o644),
        ("relays/compute-2/relay.key", 0o600),
    ];
    for (name, want) in files {
        let path = out_dir.join(name);
        assert_eq!(mode(&path), want, "{name}");
        assert!(
            printed.contains(&format!("wrote {}", path.display())),
            "{name} reported: {printed}"
        );
    }
    assert_eq!(printed.lines().count(), files.len(), "{printed}");
    assert_eq!(mode(&out_dir), 0o700);

    // The relay's directory is what relay-host loads; its certificate chains to the CA.
    let relay = out_dir.join("relays/compute-1");
    let ca = relay_host::tls::load_ca(&relay.join("ca.pem")).unwrap();
    let identity =
        relay_host::tls::load_identity(&relay.join("relay.pem"), &relay.join("relay.key"), &ca)
            .unwrap();
    assert!(identity.report.signed_by_configured_ca);
    relay_host::tls::client_config(
        &relay.join("ca.pem"),
        &relay.join("relay.pem"),
        &relay.join("relay.key"),
    )
    .unwrap();
    let names = controller_stub::relay::tls::certificate_names(&identity.chain[0]);
    assert_eq!(names, ["compute-1"]);

    // The endpoint's files are what `serve --relay-*` loads.
    controller_stub::relay::server_config(
        &out_dir.join("server.pem"),
        &out_dir.join("server.key"),
        &out_dir.join("ca.pem"),
    )
    .unwrap();
    let server = relay_host::tls::load_certs("server", &out_dir.join("server.pem")).unwrap();
    let server_names = controller_stub::relay::tls::certificate_names(&server[0]);
    assert_eq!(server_names, ["ctl.example"]);
}

#[test]
fn init_never_overwrites_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    assert!(pki(&["--dir", d, "--relay", "compute-1"]).status.success());
    let ca_before = std::fs::read(dir.path().join("ca.pem")).unwrap();

    let again = pki(&["--dir", d, "--relay", "compute-1"]);
    assert_eq!(again.status.code(), Some(2));
    let err = String::from_utf8_lossy(&again.stderr);
    assert!(
        err.contains("refusing to overwrite") && err.contains("--force"),
        "{err}"
    );
    assert!(again.stdout.is_empty());
    assert_eq!(std::fs::read(dir.path().join("ca.pem")).unwrap(), ca_before);

    // Loosened permissions are restored by a forced run.
    let key = dir.path().join("server.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let forced = pki(&["--dir", d, "--relay", "compute-1", "--force"]);
    assert!(forced.status.success());
    assert_ne!(std::fs::read(dir.path().join("ca.pem")).unwrap(), ca_before);
    assert_eq!(mode(&key), 0o600);
}

#[test]
fn init_refuses_bad_names() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    for args in [
        vec!["--dir", d, "--relay", "../etc"],
        vec!["--dir", d, "--relay", "a", "--relay", "A"],
        vec!["--dir", d, "--server-name", "not a name"],
    ] {
        let out = pki(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(!out.stderr.is_empty());
    }
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        0,
        "nothing written"
    );
}
