//! The crate's one error type. Framing problems (garbage, bad headers, cut-off frames) are
//! reported through [`crate::Decoded::Discarded`] and never end a stream; session problems
//! (authentication, replay, malformed bodies) are returned by [`crate::Session`] and end only the
//! offending message.

use crate::message::Kind;

/// Everything the protocol can reject, each with the reason in its message.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    // Framing: raised while splitting a byte stream into frames.
    #[error("bytes that do not start a frame (no magic, no resync marker)")]
    Garbage,
    #[error("unsupported frame version {0} (this side speaks version {v})", v = crate::frame::VERSION)]
    UnsupportedVersion(u8),
    #[error("frame kind 0 is reserved")]
    ReservedKind,
    #[error(
        "reserved header bits set (flags {flags:#06x}, reserved {reserved:#06x}, mask {mask:#06x})"
    )]
    ReservedBits {
        flags: u16,
        reserved: u16,
        mask: u16,
    },
    #[error("frame body length {len} exceeds the bound of {max} bytes")]
    BodyTooLong { len: u32, max: usize },
    #[error("header checksum mismatch")]
    HeaderChecksum,
    #[error("frame cut off by a resync marker after {0} bytes")]
    Interrupted(usize),

    // Session: raised on frames that were framed correctly.
    #[error("{kind} frame #{seq} failed authentication (wrong key, tampered or forged)")]
    BadMac { kind: u8, seq: u64 },
    #[error("frame from epoch {epoch:#018x}, the session is in epoch {expected:#018x}")]
    OldEpoch { epoch: u64, expected: u64 },
    #[error("frame #{seq} is not newer than #{last}: replayed, duplicated or reordered")]
    Replay { seq: u64, last: u64 },
    #[error("{0} received before the session was established")]
    NotEstablished(Kind),
    #[error("{got} is not expected while {state}")]
    Unexpected { got: Kind, state: &'static str },
    #[error("unknown message kind {0}")]
    UnknownKind(u8),
    #[error("{kind} body does not decode: {reason}")]
    Malformed { kind: Kind, reason: String },
    #[error("invalid {kind}: {reason}")]
    Invalid { kind: Kind, reason: String },
    #[error("message of {len} bytes exceeds the bound of {max} bytes")]
    MessageTooLarge { len: usize, max: usize },
    #[error("chunk #{got} does not follow #{expected} of the message being reassembled")]
    ChunkGap { expected: u64, got: u64 },
    #[error("chunk #{0} continues a message whose start was not received")]
    OrphanChunk(u64),
    #[error("kind {got} chunk arrived while a {expected} message was being reassembled")]
    ChunkKindMismatch { expected: Kind, got: u8 },
    #[error("sequence numbers of this epoch are exhausted; start a new session")]
    SequenceExhausted,
    #[error("no body mask keeps the resync marker out of the frame")]
    MarkerUnavoidable,
    #[error("uplink envelope does not decode: {0}")]
    Envelope(String),
    #[error("key must be {expected} bytes, got {got}")]
    KeyLength { expected: usize, got: usize },
    #[error("key is not valid hex")]
    KeyEncoding,
}
