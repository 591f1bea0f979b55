//! What the relay needs to know about guests, independent of where it learns it: the set of
//! running guests that have the relay channel, as a stream of changes.
//!
//! The libvirt implementation (`crate::libvirt`) produces these from domain lifecycle events and
//! periodic full reconciles; tests produce them directly.

use std::path::PathBuf;

use relay_protocol::Uuid;

/// A running guest whose domain has the relay channel, as the hypervisor reports it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GuestChannel {
    /// The domain UUID (the Nova instance UUID): the identity the relay stamps on everything
    /// it forwards. Nothing the guest says is used instead.
    pub uuid: Uuid,
    /// The domain name, for logs and operators.
    pub name: String,
    /// Host end of the channel (a UNIX socket QEMU listens on), taken from the live XML.
    pub socket: PathBuf,
}

/// A change in the set of guests with a relay channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestChange {
    /// The guest is running with the channel at this socket (new, or its socket changed).
    Up(GuestChannel),
    /// The guest stopped, was undefined, or lost the channel.
    Down(relay_protocol::Uuid),
}
