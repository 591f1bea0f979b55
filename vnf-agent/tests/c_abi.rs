//! A C program (`tests/c/agent_test.c`) linked against the C ABI — once with the static library,
//! once with the shared one — receives configuration from this test, which plays the
//! controller on a UNIX socket (the agent's `unix:` port), and acknowledges it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use relay_protocol::{AckOutcome, Message};
use tokio::net::UnixListener;

mod common;
use common::{rejected, Controller, Program, CONFIG, INSTANCE, KEY_HEX};

/// `target/<profile>/deps`, where cargo writes the static and shared library (without a hash
/// in their names) whenever it builds the lib for this test; only `cargo build` also copies them
/// up to `target/<profile>`, so the copies there may be stale.
fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.parent().unwrap().to_owned()
}

fn compile(out: &Path, link: &[&str]) {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let status = Command::new("cc")
        .args(["-std=gnu11", "-Wall", "-Wextra", "-Werror", "-o"])
        .arg(out)
        .arg("-I")
        .arg(manifest.join("include"))
        .arg(manifest.join("tests/c/agent_test.c"))
        .args(link)
        .status()
        .expect("running cc (install build-essential)");
    assert!(status.success(), "cc failed for {}", out.display());
}

async fn drive(program: &Path, work: &Path) {
    let socket = work.join("relay.sock");
    let state = work.join("state");
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket).unwrap();
    let child = Command::new(program)
        .arg(format!("unix:{}", socket.display()))
        .arg(KEY_HEX)
        .arg(&state)
        .arg(INSTANCE.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        // cargo points LD_LIBRARY_PATH at target/<profile>, whose copy of the shared library
        // may be stale; the program's rpath names the fresh one.
        .env_remove("LD_LIBRARY_PATH")
        .spawn()
        .unwrap();
    let mut program = Program(child);

    let mut ctl = Controller::accept(&listener, &mut program).await;
    match ctl.recv().await {
        Some(Message::ConfigRequest(req)) => assert!(req.applied.is_empty()),
        other => panic!("expected a ConfigRequest, got {other:?}"),
    }
    let ack = ctl.push("files", 1, b"hello").await;
    assert_eq!(ack.outcome, AckOutcome::Applied, "{ack:?}");
    assert_eq!(
        (ack.instance, ack.config_id, ack.version),
        (INSTANCE, CONFIG, 1)
    );
    let ack = ctl.push("files", 2, b"bad").await;
    assert_eq!(rejected(&ack), "files: payload 'bad' is not acceptable");
    let ack = ctl.push("firewall", 1, b"{}").await;
    assert_eq!(
        rejected(&ack),
        "no handler for service firewall on this agent"
    );
    // Already applied: acknowledged again, the callback is not called.
    let ack = ctl.push("files", 1, b"hello").await;
    assert_eq!(ack.outcome, AckOutcome::Applied);
    // The program stops the agent when this one is applied; the Ack must still arrive.
    let ack = ctl.push("files", 3, b"last").await;
    assert_eq!(ack.outcome, AckOutcome::Applied, "{ack:?}");
    assert_eq!(
        ctl.recv().await,
        None,
        "the agent closes the channel on stop"
    );

    let child = std::mem::replace(&mut program.0, Command::new("true").spawn().unwrap());
    let output = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}: {stdout}", output.status);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines,
        [
            format!("applied files v1 config {CONFIG} payload hello").as_str(),
            "rejected files v2",
            format!("applied files v3 config {CONFIG} payload last").as_str(),
            "OK after 3 callbacks",
        ]
    );
    let record = std::fs::read_to_string(state.join("applied.json")).unwrap();
    assert!(
        record.contains("\"files\"") && record.contains("\"version\": 3"),
        "{record}"
    );
}

#[tokio::test]
async fn c_program_receives_and_acknowledges_configuration() {
    let dir = lib_dir();
    let staticlib = dir.join("libvnf_agent.a");
    let sharedlib = dir.join("libvnf_agent.so");
    assert!(
        staticlib.exists() && sharedlib.exists(),
        "cargo did not build {} and {} (crate-type of the vnf-agent lib)",
        staticlib.display(),
        sharedlib.display()
    );
    let work = tempfile::tempdir().unwrap();

    let static_bin = work.path().join("agent_test_static");
    compile(
        &static_bin,
        &[
            staticlib.to_str().unwrap(),
            "-lpthread",
            "-ldl",
            "-lm",
            "-lrt",
            "-lutil",
            "-lgcc_s",
        ],
    );
    let shared_bin = work.path().join("agent_test_shared");
    let rpath = format!("-Wl,-rpath,{}", dir.display());
    compile(
        &shared_bin,
        &[
            "-L",
            dir.to_str().unwrap(),
            "-lvnf_agent",
            &rpath,
            "-lpthread",
        ],
    );

    let static_work = work.path().join("static");
    let shared_work = work.path().join("shared");
    std::fs::create_dir_all(&static_work).unwrap();
    std::fs::create_dir_all(&shared_work).unwrap();
    drive(&static_bin, &static_work).await;
    drive(&shared_bin, &shared_work).await;
}
