//! The hook run the way libvirtd runs it (`hook <domain> <operation> <sub-operation> <extra>`,
//! the domain XML on standard input) against a running `relay_host::run` with its hook socket
//! in a temporary directory: relay-host reacts to `stopped` and `started`.
//!
//! The domain lives in libvirt's in-process test driver (`test:///default`), with a fake guest
//! on its channel socket. relay-host's reconcile period is an hour and the test driver raises no
//! lifecycle event while the domain keeps running, so only the hook can explain what the test
//! controller sees: the guest going down on `stopped` and coming back up on `started`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use relay_host::testing::{
    self, ControllerEvent, ControllerOptions, FakeGuest, Pki, Result, TestController, TlsFiles,
};
use relay_protocol::uplink::RelayMsg;
use relay_protocol::Uuid;
use tokio_util::sync::CancellationToken;

const GUEST: Uuid = Uuid::from_u128(0x5fc0_e000_0000_4000_8000_0000_0000_0007);
const NAME: &str = "vnf-hook-test";

/// Runs the built hook as libvirtd would and returns its standard error.
fn hook(socket: &std::path::Path, operation: &str, sub_operation: &str, xml: &str) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_nova-patch"))
        .arg("hook")
        .arg("--socket")
        .arg(socket)
        .args([NAME, operation, sub_operation, "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(xml.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the hook failed: {out:?}");
    assert!(out.stdout.is_empty(), "started/stopped print nothing");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Destroys the test-driver domain even when the test fails.
struct Cleanup(virt::domain::Domain);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = self.0.destroy();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_host_hears_the_hook_on_stop_and_start() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let pki = Pki::new("hook CA")?;
    let files = TlsFiles::write(dir.path(), &pki.ca_pem, &pki.client("relay")?)?;
    let tls = testing::server_tls(&pki.ca_pem, &pki.server(&["localhost"])?)?;
    let keys = HashMap::from([(GUEST, testing::test_key(7))]);
    let mut controller = TestController::start(tls, keys, ControllerOptions::default()).await?;
    let guest = FakeGuest::bind(dir.path(), GUEST, testing::test_key(7))?;

    let conn = relay_host::libvirt::Connection::open("test:///default")?;
    let xml = format!(
        "<domain type='test'>
           <name>{NAME}</name>
           <uuid>{GUEST}</uuid>
           <memory unit='MiB'>64</memory>
           <os><type arch='x86_64'>hvm</type></os>
           <devices>
             <channel type='unix'>
               <source mode='bind' path='{}'/>
               <target type='virtio' name='org.opensfc.relay.0'/>
             </channel>
           </devices>
         </domain>",
        guest.socket.display()
    );
    let _domain = Cleanup(virt::domain::Domain::create_xml(&conn, &xml, 0)?);
    let _agent = guest.spawn_agent();

    let socket = dir.path().join("run/hook.sock");
    let mut config = files.config(controller.addr());
    config.libvirt_uri = "test:///default".into();
    config.reconcile_interval = Duration::from_secs(3600);
    config.hook_socket = Some(socket.clone());
    let shutdown = CancellationToken::new();
    let daemon = tokio::spawn(relay_host::run(config, shutdown.clone()));

    let up = |ev: &ControllerEvent| match ev {
        ControllerEvent::Relay(RelayMsg::Register(r))
            if r.guests.iter().any(|g| g.instance == GUEST) =>
        {
            Some(())
        }
        ControllerEvent::Relay(RelayMsg::GuestUp(g)) if g.instance == GUEST => Some(()),
        _ => None,
    };
    controller
        .wait_for("the guest, from the first reconcile", up)
        .await?;
    // The socket exists once the daemon runs (bound before discovery starts).
    assert!(socket.exists());

    // libvirt's `stopped end`: relay-host drops the guest at once (the test driver still runs
    // it, so nothing but the hook can be the reason).
    let stderr = tokio::task::spawn_blocking({
        let (socket, xml) = (socket.clone(), xml.clone());
        move || hook(&socket, "stopped", "end", &xml)
    })
    .await?;
    assert!(stderr.is_empty(), "hook warnings: {stderr}");
    controller
        .wait_for("GuestDown after the hook's stopped", |ev| match ev {
            ControllerEvent::Relay(RelayMsg::GuestDown { instance }) if *instance == GUEST => {
                Some(())
            }
            _ => None,
        })
        .await?;

    // libvirt's `started begin`: relay-host looks the domain up and has the guest again; no
    // event and no reconcile within the hour would have done it.
    let stderr = tokio::task::spawn_blocking({
        let (socket, xml) = (socket.clone(), xml.clone());
        move || hook(&socket, "started", "begin", &xml)
    })
    .await?;
    assert!(stderr.is_empty(), "hook warnings: {stderr}");
    controller
        .wait_for("GuestUp after the hook's started", up)
        .await?;

    shutdown.cancel();
    daemon.await??;
    assert!(
        !socket.exists(),
        "relay-host removes its socket on shutdown"
    );

    // With relay-host gone the hook only warns, and libvirt carries on.
    let stderr =
        tokio::task::spawn_blocking(move || hook(&socket, "started", "begin", &xml)).await?;
    assert!(stderr.contains("relay-host not notified"), "{stderr}");
    controller.stop().await;
    drop(conn);
    Ok(())
}
