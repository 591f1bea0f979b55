//! Messages exchanged between the controller and a guest agent.
//!
//! The frame header's kind byte names the message; the body is the postcard encoding of that
//! message's struct. postcard does not describe itself, so the format is pinned by golden byte
//! vectors (`tests/golden.rs`): kinds and enum variants are append-only, fields are never
//! reordered, and a change of meaning needs a new kind or a new protocol version negotiated in
//! [`Hello`]/[`Welcome`]. Every decoded message is validated ([`Message::validate`]) before the
//! session hands it out, so consumers see only bounded, well-formed values.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::Error;

/// Largest configuration payload one [`ConfigPush`] carries.
pub const MAX_PAYLOAD: usize = 16 * 1024 * 1024;
/// Longest free-text field (reasons, messages, attribute values).
pub const MAX_TEXT: usize = 4096;
/// Longest name (agent name and version, event names, attribute keys).
pub const MAX_NAME: usize = 128;
/// Most services one agent announces, applied configs one request lists, or attributes an event
/// carries.
pub const MAX_ITEMS: usize = 64;

/// Protocol versions this crate implements (negotiated in Hello/Welcome).
pub const PROTOCOL_VERSION: u16 = 1;

/// Capability bits announced in [`Hello`] and granted in [`Welcome`].
pub mod capability {
    /// Messages larger than one frame are chunked and reassembled.
    pub const CHUNKING: u64 = 1 << 0;
    /// The agent sends [`super::Event`] telemetry.
    pub const EVENTS: u64 = 1 << 1;
    /// Every bit this crate understands.
    pub const ALL: u64 = CHUNKING | EVENTS;
}

/// Message kinds as written in the frame header. Append-only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    Hello = 1,
    Welcome = 2,
    ConfigPush = 3,
    Ack = 4,
    ConfigRequest = 5,
    Event = 6,
    Ping = 7,
    Pong = 8,
    Error = 9,
}

impl Kind {
    pub const ALL: [Kind; 9] = [
        Kind::Hello,
        Kind::Welcome,
        Kind::ConfigPush,
        Kind::Ack,
        Kind::ConfigRequest,
        Kind::Event,
        Kind::Ping,
        Kind::Pong,
        Kind::Error,
    ];

    pub fn from_u8(b: u8) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| *k as u8 == b)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// A service an agent configures: `firewall`, `loadbalancer`, `vpn`, `files`, or a vendor's own.
/// 1 to 64 bytes of `[a-z0-9._-]`, starting with a letter or digit.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ServiceName(String);

impl ServiceName {
    pub fn new(name: impl Into<String>) -> Result<ServiceName, String> {
        let name = name.into();
        let ok_len = (1..=64).contains(&name.len());
        let ok_first = name
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
        let ok_chars = name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b));
        if ok_len && ok_first && ok_chars {
            Ok(ServiceName(name))
        } else {
            Err(format!("service name {name:?} is not 1-64 bytes of [a-z0-9._-] starting with a letter or digit"))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for ServiceName {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        ServiceName::new(s)
    }
}

impl From<ServiceName> for String {
    fn from(s: ServiceName) -> String {
        s.0
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Guest -> controller, first frame of every session: who the agent is and what it can do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    pub protocol_min: u16,
    pub protocol_max: u16,
    pub capabilities: u64,
    pub agent_name: String,
    pub agent_version: String,
    pub services: Vec<ServiceName>,
}

/// Controller -> guest, the answer to [`Hello`]. It is sent in the epoch the guest chose, which
/// proves it fresh; `session_epoch` is the controller's fresh choice that every later frame of
/// both directions carries, which proves the guest's frames fresh in turn.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    pub protocol: u16,
    pub capabilities: u64,
    pub session_epoch: u64,
    pub max_message_len: u32,
    pub heartbeat_interval_ms: u32,
}

/// Controller -> guest: the desired configuration of one service on this instance.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigPush {
    pub instance: Uuid,
    pub service: ServiceName,
    pub config_id: Uuid,
    /// Increases with every change of this (instance, service); never 0.
    pub version: u64,
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
}

impl fmt::Debug for ConfigPush {
    // Payloads can be megabytes and may hold secrets (VPN keys): show their size only.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfigPush")
            .field("instance", &self.instance)
            .field("service", &self.service)
            .field("config_id", &self.config_id)
            .field("version", &self.version)
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

/// Guest -> controller: the outcome of applying one [`ConfigPush`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    pub instance: Uuid,
    pub service: ServiceName,
    pub config_id: Uuid,
    pub version: u64,
    pub outcome: AckOutcome,
}

/// Append-only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AckOutcome {
    Applied,
    Rejected { reason: String },
}

/// What the agent has applied for one service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedConfig {
    pub service: ServiceName,
    pub config_id: Uuid,
    pub version: u64,
}

/// Guest -> controller, after every handshake: "send me my current desired state". It lists what
/// the agent has applied so the controller resends only what is newer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigRequest {
    pub applied: Vec<AppliedConfig>,
}

/// Append-only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Severity {
    Debug,
    Info,
    Warning,
    Error,
}

/// Guest -> controller telemetry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub name: String,
    pub severity: Severity,
    pub message: String,
    pub attributes: Vec<(String, String)>,
}

/// Either direction; answered by a [`Pong`] with the same nonce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ping {
    pub nonce: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pong {
    pub nonce: u64,
}

/// Wire error codes. A plain number rather than an enum so that a peer keeps (and reports) codes
/// newer than itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ErrorCode(pub u16);

impl ErrorCode {
    pub const INTERNAL: ErrorCode = ErrorCode(1);
    pub const UNSUPPORTED_VERSION: ErrorCode = ErrorCode(2);
    pub const UNSUPPORTED_MESSAGE: ErrorCode = ErrorCode(3);
    pub const MALFORMED: ErrorCode = ErrorCode(4);
    pub const UNAUTHENTICATED: ErrorCode = ErrorCode(5);
    pub const REPLAY: ErrorCode = ErrorCode(6);
    pub const TOO_LARGE: ErrorCode = ErrorCode(7);
    pub const UNKNOWN_SERVICE: ErrorCode = ErrorCode(8);
    pub const NOT_PERMITTED: ErrorCode = ErrorCode(9);
    pub const RATE_LIMITED: ErrorCode = ErrorCode(10);
    pub const NOT_FOUND: ErrorCode = ErrorCode(11);

    /// The code's name, or `None` for codes newer than this crate.
    pub fn name(self) -> Option<&'static str> {
        Some(match self {
            ErrorCode::INTERNAL => "internal",
            ErrorCode::UNSUPPORTED_VERSION => "unsupported-version",
            ErrorCode::UNSUPPORTED_MESSAGE => "unsupported-message",
            ErrorCode::MALFORMED => "malformed",
            ErrorCode::UNAUTHENTICATED => "unauthenticated",
            ErrorCode::REPLAY => "replay",
            ErrorCode::TOO_LARGE => "too-large",
            ErrorCode::UNKNOWN_SERVICE => "unknown-service",
            ErrorCode::NOT_PERMITTED => "not-permitted",
            ErrorCode::RATE_LIMITED => "rate-limited",
            ErrorCode::NOT_FOUND => "not-found",
            _ => return None,
        })
    }

    /// The code a peer should be told for a local rejection.
    pub fn for_error(e: &Error) -> ErrorCode {
        match e {
            Error::BadMac { .. } => ErrorCode::UNAUTHENTICATED,
            Error::OldEpoch { .. } | Error::Replay { .. } => ErrorCode::REPLAY,
            Error::UnknownKind(_) | Error::Unexpected { .. } | Error::NotEstablished(_) => {
                ErrorCode::UNSUPPORTED_MESSAGE
            }
            Error::UnsupportedVersion(_) => ErrorCode::UNSUPPORTED_VERSION,
            Error::MessageTooLarge { .. } | Error::BodyTooLong { .. } => ErrorCode::TOO_LARGE,
            Error::Malformed { .. }
            | Error::Invalid { .. }
            | Error::ChunkGap { .. }
            | Error::OrphanChunk(_)
            | Error::ChunkKindMismatch { .. } => ErrorCode::MALFORMED,
            _ => ErrorCode::INTERNAL,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => write!(f, "{n} ({})", self.0),
            None => write!(f, "code {}", self.0),
        }
    }
}

/// Either direction: a request could not be served.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorMsg {
    pub code: ErrorCode,
    pub message: String,
}

/// Every message of the protocol.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Hello(Hello),
    Welcome(Welcome),
    ConfigPush(ConfigPush),
    Ack(Ack),
    ConfigRequest(ConfigRequest),
    Event(Event),
    Ping(Ping),
    Pong(Pong),
    Error(ErrorMsg),
}

impl Message {
    pub fn kind(&self) -> Kind {
        match self {
            Message::Hello(_) => Kind::Hello,
            Message::Welcome(_) => Kind::Welcome,
            Message::ConfigPush(_) => Kind::ConfigPush,
            Message::Ack(_) => Kind::Ack,
            Message::ConfigRequest(_) => Kind::ConfigRequest,
            Message::Event(_) => Kind::Event,
            Message::Ping(_) => Kind::Ping,
            Message::Pong(_) => Kind::Pong,
            Message::Error(_) => Kind::Error,
        }
    }

    /// Appends the body (postcard) to `out`.
    pub(crate) fn encode_body(&self, out: &mut Vec<u8>) -> Result<(), Error> {
        let res = match self {
            Message::Hello(m) => postcard::to_io(m, out).map(drop),
            Message::Welcome(m) => postcard::to_io(m, out).map(drop),
            Message::ConfigPush(m) => postcard::to_io(m, out).map(drop),
            Message::Ack(m) => postcard::to_io(m, out).map(drop),
            Message::ConfigRequest(m) => postcard::to_io(m, out).map(drop),
            Message::Event(m) => postcard::to_io(m, out).map(drop),
            Message::Ping(m) => postcard::to_io(m, out).map(drop),
            Message::Pong(m) => postcard::to_io(m, out).map(drop),
            Message::Error(m) => postcard::to_io(m, out).map(drop),
        };
        res.map_err(|e| Error::Malformed {
            kind: self.kind(),
            reason: e.to_string(),
        })
    }

    /// Decodes and validates a body of the given kind. The whole body must be consumed.
    pub(crate) fn decode_body(kind: Kind, body: &[u8]) -> Result<Message, Error> {
        fn de<'a, T: Deserialize<'a>>(kind: Kind, body: &'a [u8]) -> Result<T, Error> {
            match postcard::take_from_bytes(body) {
                Ok((v, [])) => Ok(v),
                Ok((_, rest)) => Err(Error::Malformed {
                    kind,
                    reason: format!("{} trailing bytes", rest.len()),
                }),
                Err(e) => Err(Error::Malformed {
                    kind,
                    reason: e.to_string(),
                }),
            }
        }
        let msg = match kind {
            Kind::Hello => Message::Hello(de(kind, body)?),
            Kind::Welcome => Message::Welcome(de(kind, body)?),
            Kind::ConfigPush => Message::ConfigPush(de(kind, body)?),
            Kind::Ack => Message::Ack(de(kind, body)?),
            Kind::ConfigRequest => Message::ConfigRequest(de(kind, body)?),
            Kind::Event => Message::Event(de(kind, body)?),
            Kind::Ping => Message::Ping(de(kind, body)?),
            Kind::Pong => Message::Pong(de(kind, body)?),
            Kind::Error => Message::Error(de(kind, body)?),
        };
        msg.validate()?;
        Ok(msg)
    }

    /// Checks every bound and rule of the message; the session applies it to everything it
    /// decodes and everything it sends.
    pub fn validate(&self) -> Result<(), Error> {
        let kind = self.kind();
        let invalid = |reason: String| Err(Error::Invalid { kind, reason });
        let text = |field: &str, s: &str, max: usize| -> Result<(), Error> {
            if s.len() > max {
                return Err(Error::Invalid {
                    kind,
                    reason: format!("{field} is {} bytes, the bound is {max}", s.len()),
                });
            }
            Ok(())
        };
        let items = |field: &str, n: usize| -> Result<(), Error> {
            if n > MAX_ITEMS {
                return Err(Error::Invalid {
                    kind,
                    reason: format!("{field} has {n} entries, the bound is {MAX_ITEMS}"),
                });
            }
            Ok(())
        };
        match self {
            Message::Hello(h) => {
                if h.protocol_min == 0 || h.protocol_min > h.protocol_max {
                    return invalid(format!(
                        "protocol range {}..={} is empty or starts at 0",
                        h.protocol_min, h.protocol_max
                    ));
                }
                text("agent_name", &h.agent_name, MAX_NAME)?;
                text("agent_version", &h.agent_version, MAX_NAME)?;
                items("services", h.services.len())?;
            }
            Message::Welcome(w) => {
                if w.protocol == 0 {
                    return invalid("protocol version 0".into());
                }
            }
            Message::ConfigPush(p) => {
                if p.version == 0 {
                    return invalid("version 0 (versions start at 1)".into());
                }
                if p.payload.len() > MAX_PAYLOAD {
                    return invalid(format!(
                        "payload is {} bytes, the bound is {MAX_PAYLOAD}",
                        p.payload.len()
                    ));
                }
            }
            Message::Ack(a) => {
                if a.version == 0 {
                    return invalid("version 0 (versions start at 1)".into());
                }
                if let AckOutcome::Rejected { reason } = &a.outcome {
                    text("reason", reason, MAX_TEXT)?;
                }
            }
            Message::ConfigRequest(r) => {
                items("applied", r.applied.len())?;
                if r.applied.iter().any(|a| a.version == 0) {
                    return invalid("applied version 0 (versions start at 1)".into());
                }
            }
            Message::Event(e) => {
                if e.name.is_empty() {
                    return invalid("empty event name".into());
                }
                text("name", &e.name, MAX_NAME)?;
                text("message", &e.message, MAX_TEXT)?;
                items("attributes", e.attributes.len())?;
                for (k, v) in &e.attributes {
                    text("attribute key", k, MAX_NAME)?;
                    text("attribute value", v, MAX_TEXT)?;
                }
            }
            Message::Ping(_) | Message::Pong(_) => {}
            Message::Error(e) => text("message", &e.message, MAX_TEXT)?,
        }
        Ok(())
    }
}
