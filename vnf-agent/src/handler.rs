//! The contract between the agent and the code that applies a service's configuration.
//!
//! Handlers are plain synchronous code: applying a configuration means writing files and running
//! checked commands, which block. The async agent calls them on the blocking pool, the blocking
//! API on the caller's thread, the C ABI through a callback; one update at a time per service.

use relay_protocol::{ServiceName, Uuid};

/// One configuration update handed to a service handler.
#[derive(Clone, PartialEq, Eq)]
pub struct ConfigUpdate {
    pub instance: Uuid,
    pub service: ServiceName,
    pub config_id: Uuid,
    /// Strictly increases with every change of this service's configuration.
    pub version: u64,
    pub payload: Vec<u8>,
}

impl std::fmt::Debug for ConfigUpdate {
    // Payloads may hold secrets (VPN keys) and be megabytes long: show their size only.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConfigUpdate")
            .field("instance", &self.instance)
            .field("service", &self.service)
            .field("config_id", &self.config_id)
            .field("version", &self.version)
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

/// Why a handler refused or failed to apply a configuration. The text goes back to the
/// controller in the Ack, so it says what is wrong in the operator's terms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Rejection(pub String);

impl Rejection {
    pub fn new(reason: impl Into<String>) -> Rejection {
        Rejection(reason.into())
    }
}

/// Applies the configuration of one service.
pub trait Handler: Send + 'static {
    /// Validates and applies `update` completely, or leaves the previous configuration in
    /// place and says why not.
    fn apply(&mut self, update: &ConfigUpdate) -> Result<(), Rejection>;
}
