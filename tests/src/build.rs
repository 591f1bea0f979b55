//! Static builds of the workspace's binaries for the guest image.
//!
//! The guest has no libc of its own (busybox is static), so binaries that run inside it are
//! linked statically: `-C target-feature=+crt-static` on the gnu target (this machine has no
//! musl target). They go into their own target directory, so the build neither waits on the
//! `cargo test` that runs us nor invalidates its artifacts, and cargo's own lock makes
//! concurrent test processes share one build.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::{io_err, Error, Result};

/// Host triple of the static build; the guest runs the same architecture.
pub const TARGET: &str = "x86_64-unknown-linux-gnu";

/// Builds `bin` of `package` statically (debug profile, no debug info, stripped) and returns the
/// path of the executable.
pub fn static_binary(package: &str, bin: &str) -> Result<PathBuf> {
    let target_dir = crate::guest_image::target_dir()?.join("guest-static");
    cargo_build(
        &["--package", package, "--bin", bin, "--target", TARGET],
        &target_dir,
        Some("-C target-feature=+crt-static -C debuginfo=0 -C strip=symbols"),
    )
    .map_err(|e| match e {
        Error::ToolFailed { status, stderr, .. } => Error::ToolFailed {
            tool: format!("cargo build -p {package} --bin {bin} (static)"),
            status,
            stderr,
        },
        other => other,
    })?;
    Ok(target_dir.join(TARGET).join("debug").join(bin))
}

/// `cargo build --locked <args> --target-dir <target_dir>` in the workspace, with `rustflags`
/// as `RUSTFLAGS` if given (the outer cargo's encoded flags are never passed on).
pub fn cargo_build(args: &[&str], target_dir: &Path, rustflags: Option<&str>) -> Result<()> {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or_else(|| Error::InvalidConfig("tests/ has no parent directory".into()))?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(&cargo);
    command
        .current_dir(workspace)
        .args(["build", "--locked"])
        .args(args)
        .arg("--target-dir")
        .arg(target_dir)
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .stdin(Stdio::null());
    if let Some(flags) = rustflags {
        command.env("RUSTFLAGS", flags);
    }
    let out = command
        .output()
        .map_err(io_err(format!("running {}", Path::new(&cargo).display())))?;
    if !out.status.success() {
        return Err(Error::ToolFailed {
            tool: format!("cargo build {}", args.join(" ")),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(())
}
