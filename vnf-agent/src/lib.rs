//! Guest-side SDK of the configuration relay, linked into VNF firmware, and the reference
//! handlers of the `vnf-agent` binary.

#![deny(unsafe_code)]

pub mod handler;
pub mod handlers;

pub use handler::{ConfigUpdate, Handler, Rejection};
