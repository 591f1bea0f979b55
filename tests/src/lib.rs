//! Support code for end-to-end tests that run real programs inside QEMU guests.
//!
//! [`guest_image`] builds (once, cached under the target directory) a bootable kernel +
//! initramfs whose `/init` runs the program named on the kernel command line; [`qemu`] boots it
//! under TCG with virtio-serial channels and extra UARTs exposed as UNIX sockets on the host.
//! [`ovs`] runs a private Open vSwitch (userspace datapath) whose ports lead into network
//! namespaces ([`netns`]) standing in for VMs and service functions.

pub mod build;
mod cpio;
pub mod guest_image;
pub mod libvirt;
pub mod netns;
pub mod ovs;
pub mod qemu;
pub mod stack;
pub mod vnf;
pub mod wire;

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

/// Hint appended to every error caused by something missing on the host.
pub const SETUP_HINT: &str =
    "run scripts/setup.sh as root to install the guest test prerequisites \
                              (qemu-system-x86, linux-image-amd64, busybox-static)";

/// Errors from building guest images and running guests.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} is missing; {hint}", hint = SETUP_HINT)]
    MissingPrerequisite { what: String },
    #[error("kernel module {name} not found for kernel {release} (neither in modules.dep nor modules.builtin)")]
    ModuleNotFound { name: String, release: String },
    #[error("{tool} failed ({status}): {stderr}")]
    ToolFailed {
        tool: String,
        status: ExitStatus,
        stderr: String,
    },
    #[error("invalid guest configuration: {0}")]
    InvalidConfig(String),
    #[error("timed out after {waited:?} waiting for {what}; console output so far:\n{console}")]
    Timeout {
        what: String,
        waited: Duration,
        console: String,
    },
    #[error("guest stopped ({status}) while waiting for {what}; console output:\n{console}")]
    GuestStopped {
        what: String,
        status: ExitStatus,
        console: String,
    },
    #[error("guest init failed while waiting for {what}; console output:\n{console}")]
    GuestFatal { what: String, console: String },
    #[error("protocol: {0}")]
    Protocol(#[from] relay_protocol::Error),
    #[error(
        "timed out after {waited:?} waiting for {what}; frames rejected meanwhile: {rejected}"
    )]
    NoMessage {
        what: String,
        waited: Duration,
        rejected: String,
    },
    #[error("the stream closed while waiting for {0}")]
    StreamClosed(String),
    #[error("no {kind} named {name:?} was configured for this guest")]
    UnknownPort { kind: &'static str, name: String },
    #[error("cannot determine the cargo target directory from {exe:?}; set one with GuestImageBuilder::cache_dir")]
    NoTargetDir { exe: PathBuf },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}
