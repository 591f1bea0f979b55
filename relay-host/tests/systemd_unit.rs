//! The shipped unit passes `systemd-analyze verify` (no systemd needs to run: verify only
//! loads unit files).
//!
//! verify insists that ExecStart's binary exists, and /usr/bin/relay-host does not on a build
//! machine; so the test checks the shipped ExecStart line, then verifies a copy of the unit
//! whose ExecStart names the binary cargo just built, everything else unchanged. Warnings
//! (unknown or misspelt keys, which verify reports but does not fail on) fail the test too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

const SHIPPED_EXEC: &str = "ExecStart=/usr/bin/relay-host ";

#[test]
fn the_unit_passes_systemd_analyze_verify() {
    let unit = include_str!("../relay-host.service");
    assert_eq!(
        unit.lines().filter(|l| l.starts_with("ExecStart=")).count(),
        1,
        "one ExecStart"
    );
    assert!(
        unit.contains(SHIPPED_EXEC),
        "ExecStart names /usr/bin/relay-host"
    );

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay-host.service");
    let built = format!("ExecStart={} ", env!("CARGO_BIN_EXE_relay-host"));
    std::fs::write(&path, unit.replace(SHIPPED_EXEC, &built)).unwrap();

    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&path)
        .current_dir(dir.path())
        .output()
        .expect("systemd-analyze is missing: install the `systemd` package (scripts/setup.sh)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify: {}\n{stderr}",
        out.status
    );
}

#[test]
fn the_unit_is_hardened() {
    let unit = include_str!("../relay-host.service");
    for line in [
        "Type=notify",
        "Restart=on-failure",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "PrivateTmp=yes",
        "CapabilityBoundingSet=\n",
        "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6",
        "SystemCallFilter=@system-service",
        "SupplementaryGroups=libvirt libvirt-qemu",
    ] {
        assert!(unit.contains(line), "missing {line:?}");
    }
}
