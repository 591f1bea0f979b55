//! The relay's uplink: messages between a relay-host and the controller over one mutual-TLS
//! connection, carrying the sealed frames of every guest on the host.
//!
//! TLS authenticates and protects the connection, so these envelopes carry no MAC of their own;
//! the guest frames inside them stay sealed end to end with the instance keys, which the relay
//! does not hold. The relay stamps each frame with the domain UUID it learned from libvirt: the
//! controller routes by that stamp and verifies the frame with that instance's key, so a guest
//! can only ever speak for itself.
//!
//! Wire format: a 4-byte magic and version, then per message a big-endian u32 length and a
//! postcard body of at most [`MAX_ENVELOPE`] bytes. The length is checked before anything is
//! allocated. Enum variants are append-only; golden vectors pin them (`tests/uplink.rs`).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::flow::{ChainFlows, ChainStatus};
use crate::frame::MAX_FRAME;
use crate::Error;

/// Sent once by each side when the TLS connection is up, before any message.
pub const PREAMBLE: [u8; 4] = [b'O', b'S', b'R', b'U'];
/// Version of the uplink format, negotiated by exact match in [`Register`]/[`Registered`].
pub const UPLINK_VERSION: u16 = 1;
/// Largest envelope body: one guest frame plus room for the envelope's own fields.
pub const MAX_ENVELOPE: usize = MAX_FRAME + 1024;
/// Most guests one Register lists.
pub const MAX_GUESTS: usize = 4096;

/// A guest with a relay channel, as the relay found it through libvirt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestInfo {
    /// The libvirt domain UUID, which is the Nova instance UUID.
    pub instance: Uuid,
    /// The libvirt domain name, for operators.
    pub name: String,
}

/// Relay -> controller, first message of every connection: who the relay is and the full set
/// of guests it currently serves (the controller reconciles to it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Register {
    pub version: u16,
    /// The host name the controller knows the hypervisor by (`binding:host_id`).
    pub host: String,
    pub relay_version: String,
    pub guests: Vec<GuestInfo>,
}

/// Controller -> relay, the answer to [`Register`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registered {
    pub version: u16,
    pub heartbeat_interval_ms: u32,
}

/// Relay -> controller. Append-only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RelayMsg {
    Register(Register),
    /// A guest's channel appeared (domain started, relay started).
    GuestUp(GuestInfo),
    /// A guest's channel went away (domain stopped or undefined).
    GuestDown {
        instance: Uuid,
    },
    /// One sealed frame a guest wrote, exactly as it was on its channel.
    FromGuest {
        instance: Uuid,
        #[serde(with = "serde_bytes")]
        frame: Vec<u8>,
    },
    /// The relay (re)opened a guest's channel and wrote the resync marker: the guest will start
    /// a new session.
    GuestReopened {
        instance: Uuid,
    },
    Ping {
        nonce: u64,
    },
    Pong {
        nonce: u64,
    },
    /// Where a chain's OpenFlow rules stand on this host's bridge, after every change: a
    /// complete update handled, a pending chain installed, a failure, a removal.
    ChainStatus(ChainStatus),
}

/// Controller -> relay. Append-only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControllerMsg {
    Registered(Registered),
    /// One sealed frame to write to a guest's channel.
    ToGuest {
        instance: Uuid,
        #[serde(with = "serde_bytes")]
        frame: Vec<u8>,
    },
    /// The controller dropped a frame from this guest (failed authentication, replay, ...); the
    /// relay counts it against the guest.
    FrameRejected {
        instance: Uuid,
        reason: String,
    },
    /// Ask the relay to write the resync marker to a guest, making it start a new session (the
    /// controller lost the session, e.g. after its own restart).
    ResyncGuest {
        instance: Uuid,
    },
    Ping {
        nonce: u64,
    },
    Pong {
        nonce: u64,
    },
    /// One part of the complete OpenFlow rule set of a chain on this host: the host makes its
    /// bridge hold exactly these rules for the chain (see [`crate::flow`]).
    ChainFlows(ChainFlows),
    /// The chain has no rules on this host any more.
    ChainRemoved {
        cookie: u64,
    },
    /// Sent after every (re)connect once every chain of this host went out as `ChainFlows`:
    /// the complete list of chains the host should have (at most
    /// [`crate::flow::MAX_SYNC_COOKIES`]). The host removes the rules of every other chain.
    FlowSync {
        cookies: Vec<u64>,
    },
}

/// Appends one envelope (length and postcard body) to `out`.
pub fn encode<T: Serialize>(msg: &T, out: &mut BytesMut) -> Result<(), Error> {
    let start = out.len();
    out.put_u32(0);
    let body = postcard::to_io(msg, out.writer()).map_err(|e| Error::Envelope(e.to_string()));
    if let Err(e) = body {
        out.truncate(start);
        return Err(e);
    }
    let len = out.len() - start - 4;
    if len > MAX_ENVELOPE {
        out.truncate(start);
        return Err(Error::MessageTooLarge {
            len,
            max: MAX_ENVELOPE,
        });
    }
    out[start..start + 4].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(())
}

/// Takes one envelope off the front of `buf`; `Ok(None)` means more bytes are needed. An error
/// means the stream is corrupt and the connection must be closed.
pub fn decode<T: for<'de> Deserialize<'de>>(buf: &mut BytesMut) -> Result<Option<T>, Error> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > MAX_ENVELOPE {
        return Err(Error::MessageTooLarge {
            len,
            max: MAX_ENVELOPE,
        });
    }
    if buf.len() < 4 + len {
        return Ok(None);
    }
    buf.advance(4);
    let body: Bytes = buf.split_to(len).freeze();
    match postcard::from_bytes(&body) {
        Ok(msg) => Ok(Some(msg)),
        Err(e) => Err(Error::Envelope(e.to_string())),
    }
}

/// Checks the peer's [`PREAMBLE`] at the front of `buf` and consumes it; `Ok(false)` means more
/// bytes are needed.
pub fn check_preamble(buf: &mut BytesMut) -> Result<bool, Error> {
    let n = buf.len().min(PREAMBLE.len());
    if buf[..n] != PREAMBLE[..n] {
        return Err(Error::Garbage);
    }
    if n < PREAMBLE.len() {
        return Ok(false);
    }
    buf.advance(PREAMBLE.len());
    Ok(true)
}
