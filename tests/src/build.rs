//! Static builds of the workspace's binaries for the guest image.
//!
//! The guest has no libc of its own (busybox is static), so binaries that run inside it are
//! linked statically: `-C target-feature=+crt-static` on the gnu target (this machine has no
//! musl target). They go into their own target directory, so the build neither waits on the
//! `cargo test` that runs us nor invalidates its artifacts, and cargo's own lock makes
//! concurrent test processes share one build.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{io_err, Error, Result};

/// Host triple of the static build; the guest runs the same architecture.
pub const TARGET: &str = "x86_64-unknown-linux-gnu";

/// Builds `bin` of `package` statically (debug profile, no debug info, stripped) and returns the
/// path of the executable.
pub fn static_binary(package: &str, bin: &str) -> Result<PathBuf> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or_else(|| Error::InvalidConfig("tests/ has no parent directory".into()))?;
    let target_dir = crate::guest_image::target_dir()?.join("guest-static");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = Command::new(&cargo)
        .current_dir(workspace)
        .args([
            "build",
            "--locked",
            "--package",
            package,
            "--bin",
            bin,
            "--target",
            TARGET,
        ])
        .arg("--target-dir")
        .arg(&target_dir)
        .env(
            "RUSTFLAGS",
            "-C target-feature=+crt-static -C debuginfo=0 -C strip=symbols",
        )
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .output()
        .map_err(io_err(format!("running {}", Path::new(&cargo).display())))?;
    if !out.status.success() {
        return Err(Error::ToolFailed {
            tool: format!("cargo build -p {package} --bin {bin} (static)"),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(target_dir.join(TARGET).join("debug").join(bin))
}
