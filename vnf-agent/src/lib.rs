//! Guest-side SDK of the configuration relay, linked into VNF firmware, and the reference
//! handlers of the `vnf-agent` binary.
//!
//! - [`Agent`]: the async agent. It keeps an authenticated session with the controller over
//!   the host channel ([`transport`]: virtio-serial, UART, or a UNIX socket for development),
//!   resynchronises after every reconnect, and hands each configuration push to the
//!   [`Handler`] of its service, applying every version at most once and never an older one.
//! - [`BlockingAgent`]: the same agent for firmware without an async runtime.
//! - [`ffi`]: a C ABI over the blocking agent (`include/vnf_agent.h`; static and shared
//!   library).
//! - [`key`]: the per-instance key, from SMBIOS OEM strings or a file.
//! - [`handlers`]: the reference firewall, load balancer, VPN and files handlers.

#![deny(unsafe_code)]

pub mod agent;
pub mod blocking;
pub mod ffi;
pub mod handler;
pub mod handlers;
pub mod key;
pub mod state;
pub mod transport;

pub use agent::{Agent, AgentBuilder, AgentError, AgentStats, StatsSnapshot, Timing};
pub use blocking::BlockingAgent;
pub use handler::{ConfigUpdate, Handler, Rejection};
pub use relay_protocol::{InstanceKey, ServiceName, Uuid};
pub use tokio_util::sync::CancellationToken;
pub use transport::PortSpec;

/// The message chain of an error, `outer: inner: innermost`, as the binary and the C ABI
/// report it.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}
