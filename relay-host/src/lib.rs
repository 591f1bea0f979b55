//! The relay host daemon: finds the guests with a relay channel through libvirt, keeps one
//! session per guest on its channel socket, and carries their sealed frames over one mutual-TLS
//! uplink to the controller.

#![deny(unsafe_code)]

pub mod discovery;

pub use discovery::{GuestChange, GuestChannel};
