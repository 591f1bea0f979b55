//! The Nova patch against the released Nova: `nova/test.sh` downloads the Nova 34.0.0 sdist
//! (cached, sha256 checked), applies the patch to a fresh copy (it must apply exactly), builds or
//! reuses a venv with Nova's Python dependencies, and runs the patch's unit tests and the
//! existing Nova test modules it touches. Any failure of the script fails this test.
//!
//! The cache (sdist, venv) is `<target dir>/nova-cache`. A first run needs PyPI and takes a few
//! minutes; later runs take about a minute. The script runs in its own process group, killed
//! when the test ends for any reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use wait_timeout::ChildExt;

/// Far above a first run on a loaded 2-core machine (about 5 minutes).
const LIMIT: Duration = Duration::from_secs(30 * 60);

/// The script's process group, killed on drop (pip, stestr and its workers included).
struct Group(Child);

impl Drop for Group {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", self.0.id())])
                .status();
            let _ = self.0.wait();
        }
    }
}

#[test]
fn the_patch_applies_to_nova_34_and_its_unit_tests_pass() {
    use std::os::unix::process::CommandExt;

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("nova/test.sh");
    let target = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("the target directory");
    let log = tempfile::NamedTempFile::new().unwrap();
    let started = Instant::now();
    let mut group = Group(
        Command::new("bash")
            .arg(&script)
            .env("NOVA_PATCH_CACHE", target.join("nova-cache"))
            .stdin(Stdio::null())
            .stdout(log.reopen().unwrap())
            .stderr(log.reopen().unwrap())
            .process_group(0)
            .spawn()
            .expect("running bash"),
    );
    let status = group.0.wait_timeout(LIMIT).unwrap();
    let output = std::fs::read_to_string(log.path()).unwrap_or_default();
    // Shown by the harness on failure, and with --nocapture.
    println!("{output}");
    println!("nova/test.sh took {:?}", started.elapsed());
    match status {
        Some(s) => assert!(s.success(), "nova/test.sh failed ({s}):\n{output}"),
        None => panic!("nova/test.sh did not finish within {LIMIT:?}:\n{output}"),
    }
    assert!(
        output.contains("applied cleanly")
            && output.contains("of them the patch's config-relay tests"),
        "the script did not report the patch and its tests:\n{output}"
    );
}
