//! The demo's path as a test: `make demo`'s driver (`src/bin/demo.rs`) run to its end on the
//! real components — Open vSwitch, the shared libvirtd, the controller and relay-host as
//! processes, three TCG VNF guests with two virtio-net ports each — so the test command covers
//! the seed workflow through the `sfc` CLI, the firewall pushes through the relay and the
//! traffic through the chain, not only the failures (`e2e_failures.rs`). The demo checks every
//! step itself (where each connection went, measured on the bridge; each VNF's config status)
//! and exits non-zero, with the daemons' logs, when one fails. It cleans up after itself.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::{Command, Stdio};

#[test]
fn the_seed_workflow_steers_traffic_through_three_vnf_guests() {
    let out = Command::new(env!("CARGO_BIN_EXE_demo"))
        .stdin(Stdio::null())
        .output()
        .expect("running the demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the demo failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(stdout.contains("DEMO PASSED"), "{stdout}");
    // The matching connection went through PG1 and PG2; the others bypassed the chain.
    for line in [
        "[ ok ] matches FC1 ",
        "[ ok ] other destination port",
        "[ ok ] other source port",
        "[ ok ] matches FC1, VNF3 drops",
    ] {
        assert!(stdout.contains(line), "no {line:?} in:\n{stdout}");
    }
}
