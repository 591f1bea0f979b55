//! The wire protocol of the configuration relay, without I/O.
//!
//! Three layers, each usable on its own:
//!
//! - [`frame`]: frames of at most 32 KiB (the most one virtio-serial write carries) with a
//!   checksummed header, and [`FrameDecoder`], which splits a byte stream into frames, skips
//!   stale or garbage bytes, and reports the [`RESYNC_MARKER`] each side writes after every
//!   (re)open. The relay, which has no keys, stops here and forwards [`RawFrame`]s.
//! - [`Session`]: the controller's and the guest's ends of an authenticated session:
//!   HMAC-SHA256 per frame with a per-instance key, a handshake that makes every frame fresh,
//!   replay protection by epoch and sequence number, chunking of messages up to 16 MiB.
//! - [`uplink`]: envelopes between a relay and the controller over mutual TLS, carrying the
//!   guests' sealed frames stamped with the instance the relay learned from libvirt.
//! - [`flow`]: the OpenFlow rules of a port chain that the controller sends a relay over the
//!   uplink for the host's bridge, structured and validated.
//! - [`message`]: the messages themselves (Hello/Welcome, ConfigPush, Ack, ConfigRequest, Event,
//!   Ping/Pong, Error), postcard-encoded, bounded and validated.
//!
//! Nothing here blocks, allocates before a header is validated, or deserialises before a tag is
//! verified. The caller brings the bytes, the randomness for nonces and epochs, and the clock.

#![forbid(unsafe_code)]

mod error;
pub mod flow;
pub mod frame;
pub mod message;
mod session;
pub mod uplink;

pub use error::Error;
pub use frame::{Decoded, FrameDecoder, Header, RawFrame, MAX_FRAME, RESYNC_MARKER};
pub use message::Ack;
pub use message::{
    AckOutcome, AppliedConfig, ConfigPush, ConfigRequest, ErrorCode, ErrorMsg, Event, Hello, Kind,
    Message, Ping, Pong, ServiceName, Severity, Welcome,
};
pub use session::{InstanceKey, Limits, Role, Session, KEY_LEN};
pub use uuid::Uuid;
