//! One end-to-end session between the controller and a guest agent.
//!
//! Both ends hold the instance's key; the relay between them does not, so it can neither forge
//! nor alter a frame. Each direction has its own key derived from the instance key, so a frame
//! cannot be reflected back to its sender.
//!
//! Freshness comes from a two-step handshake. The guest opens every session with a random
//! `nonce` and sends [`Hello`] in epoch `nonce`; the controller answers with [`Welcome`] in that
//! same epoch (so the guest knows the answer is not a recording) carrying a fresh
//! `session_epoch` of its own choosing; every later frame of both directions carries
//! `session_epoch` (so the controller knows the guest's frames are not recordings either). Within
//! an epoch, sequence numbers strictly increase per direction: a replayed, duplicated or
//! reordered frame, or one from an earlier epoch, is rejected before its body is looked at.
//!
//! A message longer than one frame body is split into consecutive chunks (`MORE` on all but the
//! last, `CONT` on all but the first) and reassembled here, holding at most
//! [`Limits::max_message_len`] bytes.
//!
//! The session does no I/O and reads no clock: the caller supplies the nonce and epoch
//! randomness and moves bytes (see `tests/` for a complete exchange).

use std::borrow::Cow;
use std::fmt;

use bytes::{BufMut, BytesMut};
use hmac::Mac;

use crate::frame::{self, HmacSha256, RawFrame, FLAG_CONT, FLAG_MASKED, FLAG_MORE, MAX_BODY};
use crate::message::{Hello, Kind, Message, Welcome, MAX_PAYLOAD};
use crate::{Error, RESYNC_MARKER};

/// Length of an instance key.
pub const KEY_LEN: usize = 32;

/// The per-instance secret shared by the controller and the instance's agent.
#[derive(Clone, PartialEq, Eq)]
pub struct InstanceKey([u8; KEY_LEN]);

impl InstanceKey {
    pub fn from_bytes(bytes: &[u8]) -> Result<InstanceKey, Error> {
        let key = bytes.try_into().map_err(|_| Error::KeyLength {
            expected: KEY_LEN,
            got: bytes.len(),
        })?;
        Ok(InstanceKey(key))
    }

    /// Parses the 64 hex digits the key is stored and transported as (surrounding whitespace
    /// is ignored, as files and SMBIOS strings often end with a newline).
    pub fn from_hex(s: &str) -> Result<InstanceKey, Error> {
        let s = s.trim();
        if s.len() != KEY_LEN * 2 {
            return Err(Error::KeyLength {
                expected: KEY_LEN,
                got: s.len() / 2,
            });
        }
        let mut key = [0u8; KEY_LEN];
        hex::decode_to_slice(s, &mut key).map_err(|_| Error::KeyEncoding)?;
        Ok(InstanceKey(key))
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// The keyed MAC of one direction; keying once here saves two compressions per frame.
    fn direction(&self, label: &[u8]) -> HmacSha256 {
        // An HMAC accepts keys of any length, so neither call can fail.
        let mut kdf = HmacSha256::new_from_slice(&self.0).unwrap_or_else(|_| unreachable!());
        kdf.update(label);
        HmacSha256::new_from_slice(&kdf.finalize().into_bytes()).unwrap_or_else(|_| unreachable!())
    }
}

impl fmt::Debug for InstanceKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("InstanceKey(<redacted>)")
    }
}

const GUEST_TO_CONTROLLER: &[u8] = b"sfc-relay/1 guest->controller";
const CONTROLLER_TO_GUEST: &[u8] = b"sfc-relay/1 controller->guest";

/// Which end of the session this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Guest,
    Controller,
}

/// Resource bounds of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest message (postcard body, before chunking) sent or reassembled.
    pub max_message_len: usize,
}

impl Default for Limits {
    fn default() -> Self {
        // The largest payload plus room for the other fields of a ConfigPush.
        Limits {
            max_message_len: MAX_PAYLOAD + 64 * 1024,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Guest before `begin`, controller before the first Hello.
    Idle,
    /// Guest: Hello sent in epoch `nonce`, waiting for the Welcome.
    AwaitingWelcome {
        nonce: u64,
    },
    /// Controller: a Hello arrived in epoch `nonce`, `accept` not called yet.
    HelloReceived {
        nonce: u64,
    },
    Established {
        epoch: u64,
    },
}

impl State {
    fn describe(&self) -> &'static str {
        match self {
            State::Idle => "idle",
            State::AwaitingWelcome { .. } => "awaiting Welcome",
            State::HelloReceived { .. } => "Hello received, not yet accepted",
            State::Established { .. } => "established",
        }
    }
}

#[derive(Debug)]
enum Reassembly {
    None,
    Collecting {
        kind: u8,
        next_seq: u64,
        buf: Vec<u8>,
    },
    /// The message grew past the bound; its remaining chunks are dropped quietly.
    Skipping {
        next_seq: u64,
    },
}

/// One end of an authenticated session (see the module documentation).
pub struct Session {
    role: Role,
    tx_mac: HmacSha256,
    rx_mac: HmacSha256,
    state: State,
    tx_epoch: u64,
    tx_seq: u64,
    rx_epoch: u64,
    rx_last: Option<u64>,
    reassembly: Reassembly,
    limits: Limits,
    scratch: Vec<u8>,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("role", &self.role)
            .field("state", &self.state)
            .field("tx_seq", &self.tx_seq)
            .field("rx_last", &self.rx_last)
            .finish_non_exhaustive()
    }
}

impl Session {
    pub fn new(role: Role, key: &InstanceKey, limits: Limits) -> Session {
        let (tx, rx) = match role {
            Role::Guest => (GUEST_TO_CONTROLLER, CONTROLLER_TO_GUEST),
            Role::Controller => (CONTROLLER_TO_GUEST, GUEST_TO_CONTROLLER),
        };
        Session {
            role,
            tx_mac: key.direction(tx),
            rx_mac: key.direction(rx),
            state: State::Idle,
            tx_epoch: 0,
            tx_seq: 0,
            rx_epoch: 0,
            rx_last: None,
            reassembly: Reassembly::None,
            limits,
            scratch: Vec::new(),
        }
    }

    pub fn guest(key: &InstanceKey) -> Session {
        Session::new(Role::Guest, key, Limits::default())
    }

    pub fn controller(key: &InstanceKey) -> Session {
        Session::new(Role::Controller, key, Limits::default())
    }

    pub fn role(&self) -> Role {
        self.role
    }

    pub fn is_established(&self) -> bool {
        matches!(self.state, State::Established { .. })
    }

    /// The epoch of the established session.
    pub fn epoch(&self) -> Option<u64> {
        match self.state {
            State::Established { epoch } => Some(epoch),
            _ => None,
        }
    }

    /// Guest: starts a new session after every (re)open of the channel or resync marker from
    /// the peer. Appends the resync marker and the Hello to `out`. `nonce` must be fresh random
    /// bits: a repeated nonce would let an old Welcome be replayed.
    pub fn begin(&mut self, nonce: u64, hello: &Hello, out: &mut BytesMut) -> Result<(), Error> {
        if self.role != Role::Guest {
            return Err(Error::Unexpected {
                got: Kind::Hello,
                state: "the controller end",
            });
        }
        let msg = Message::Hello(hello.clone());
        let start = out.len();
        out.put_slice(&RESYNC_MARKER);
        if let Err(e) = self.seal_message(&msg, nonce, 0, out) {
            out.truncate(start);
            return Err(e);
        }
        self.reset(State::AwaitingWelcome { nonce }, nonce);
        self.tx_seq = 1;
        Ok(())
    }

    /// Controller: answers the Hello just received and establishes the session in
    /// `welcome.session_epoch`, which must be fresh random bits.
    pub fn accept(&mut self, welcome: &Welcome, out: &mut BytesMut) -> Result<(), Error> {
        let State::HelloReceived { nonce } = self.state else {
            return Err(Error::Unexpected {
                got: Kind::Welcome,
                state: self.state.describe(),
            });
        };
        self.seal_message(&Message::Welcome(welcome.clone()), nonce, 0, out)?;
        self.reset(
            State::Established {
                epoch: welcome.session_epoch,
            },
            welcome.session_epoch,
        );
        Ok(())
    }

    /// Seals `msg` into one frame or more and appends them to `out`. Hello and Welcome go
    /// through [`Session::begin`] and [`Session::accept`].
    pub fn send(&mut self, msg: &Message, out: &mut BytesMut) -> Result<(), Error> {
        let kind = msg.kind();
        if matches!(kind, Kind::Hello | Kind::Welcome) {
            return Err(Error::Unexpected {
                got: kind,
                state: "established; handshake is done",
            });
        }
        if !self.is_established() {
            return Err(Error::NotEstablished(kind));
        }
        let seq = self.tx_seq;
        let used = self.seal_message(msg, self.tx_epoch, seq, out)?;
        self.tx_seq = seq + used;
        Ok(())
    }

    /// Encodes, chunks and seals `msg` starting at sequence `seq`; returns the frames used.
    /// On error `out` is left as it was.
    fn seal_message(
        &mut self,
        msg: &Message,
        epoch: u64,
        seq: u64,
        out: &mut BytesMut,
    ) -> Result<u64, Error> {
        msg.validate()?;
        self.scratch.clear();
        msg.encode_body(&mut self.scratch)?;
        let len = self.scratch.len();
        if len > self.limits.max_message_len {
            return Err(Error::MessageTooLarge {
                len,
                max: self.limits.max_message_len,
            });
        }
        let chunks = len.div_ceil(MAX_BODY).max(1);
        if seq.checked_add(chunks as u64).is_none() {
            return Err(Error::SequenceExhausted);
        }
        let start = out.len();
        let kind = msg.kind() as u8;
        let pieces = self
            .scratch
            .chunks(MAX_BODY)
            .chain((len == 0).then_some(&[][..]));
        for (i, body) in pieces.enumerate() {
            let mut flags = 0;
            if i + 1 < chunks {
                flags |= FLAG_MORE;
            }
            if i > 0 {
                flags |= FLAG_CONT;
            }
            if let Err(e) = frame::seal(out, &self.tx_mac, kind, flags, epoch, seq + i as u64, body)
            {
                out.truncate(start);
                return Err(e);
            }
        }
        Ok(chunks as u64)
    }

    fn reset(&mut self, state: State, epoch: u64) {
        self.state = state;
        self.tx_epoch = epoch;
        self.tx_seq = 0;
        self.rx_epoch = epoch;
        self.rx_last = None;
        self.reassembly = Reassembly::None;
    }

    /// Authenticates and decodes one frame. `Ok(None)` means the frame was a chunk and the
    /// message is not complete yet. A rejected frame changes nothing but the reassembly of a
    /// message it interrupted; the session goes on with the next frame.
    pub fn open(&mut self, frame: &RawFrame) -> Result<Option<Message>, Error> {
        let h = *frame.header();
        if !frame.verify(&self.rx_mac) {
            return Err(Error::BadMac {
                kind: h.kind,
                seq: h.seq,
            });
        }
        let kind = Kind::from_u8(h.kind);
        match (self.role, kind) {
            (Role::Controller, Some(Kind::Hello)) => return self.open_hello(frame),
            (Role::Guest, Some(Kind::Welcome)) => return self.open_welcome(frame),
            _ => {}
        }
        let State::Established { epoch } = self.state else {
            if self.role == Role::Guest && self.state != State::Idle && h.epoch != self.rx_epoch {
                return Err(Error::OldEpoch {
                    epoch: h.epoch,
                    expected: self.rx_epoch,
                });
            }
            return Err(match kind {
                Some(k) => Error::NotEstablished(k),
                None => Error::UnknownKind(h.kind),
            });
        };
        if h.epoch != epoch {
            return Err(Error::OldEpoch {
                epoch: h.epoch,
                expected: epoch,
            });
        }
        if let Some(last) = self.rx_last {
            if h.seq <= last {
                return Err(Error::Replay { seq: h.seq, last });
            }
        }
        self.rx_last = Some(h.seq);
        let Some(kind) = kind else {
            return Err(Error::UnknownKind(h.kind));
        };
        if matches!(kind, Kind::Hello | Kind::Welcome) {
            return Err(Error::Unexpected {
                got: kind,
                state: "established",
            });
        }
        let body = unmasked(frame);
        self.reassemble(kind, &h, body)
    }

    fn reassemble(
        &mut self,
        kind: Kind,
        h: &frame::Header,
        body: Cow<'_, [u8]>,
    ) -> Result<Option<Message>, Error> {
        let max = self.limits.max_message_len;
        if !h.cont() {
            // A new message; a partial one before it lost its tail (frames dropped upstream).
            self.reassembly = Reassembly::None;
            if !h.more() {
                return Message::decode_body(kind, &body).map(Some);
            }
            if body.len() > max {
                self.reassembly = Reassembly::Skipping {
                    next_seq: h.seq + 1,
                };
                return Err(Error::MessageTooLarge {
                    len: body.len(),
                    max,
                });
            }
            self.reassembly = Reassembly::Collecting {
                kind: h.kind,
                next_seq: h.seq + 1,
                buf: body.into_owned(),
            };
            return Ok(None);
        }
        match &mut self.reassembly {
            Reassembly::None => Err(Error::OrphanChunk(h.seq)),
            Reassembly::Skipping { next_seq } => {
                if h.seq != *next_seq {
                    let expected = *next_seq;
                    self.reassembly = Reassembly::None;
                    return Err(Error::ChunkGap {
                        expected,
                        got: h.seq,
                    });
                }
                *next_seq += 1;
                if !h.more() {
                    self.reassembly = Reassembly::None;
                }
                Ok(None)
            }
            Reassembly::Collecting {
                kind: k,
                next_seq,
                buf,
            } => {
                if h.seq != *next_seq {
                    let expected = *next_seq;
                    self.reassembly = Reassembly::None;
                    return Err(Error::ChunkGap {
                        expected,
                        got: h.seq,
                    });
                }
                if *k != h.kind {
                    let expected = Kind::from_u8(*k).unwrap_or(kind);
                    self.reassembly = Reassembly::None;
                    return Err(Error::ChunkKindMismatch {
                        expected,
                        got: h.kind,
                    });
                }
                let len = buf.len() + body.len();
                if len > max {
                    self.reassembly = if h.more() {
                        Reassembly::Skipping {
                            next_seq: h.seq + 1,
                        }
                    } else {
                        Reassembly::None
                    };
                    return Err(Error::MessageTooLarge { len, max });
                }
                buf.extend_from_slice(&body);
                *next_seq += 1;
                if h.more() {
                    return Ok(None);
                }
                let buf = std::mem::take(buf);
                self.reassembly = Reassembly::None;
                Message::decode_body(kind, &buf).map(Some)
            }
        }
    }

    fn open_hello(&mut self, frame: &RawFrame) -> Result<Option<Message>, Error> {
        let h = frame.header();
        if h.more() || h.cont() || h.seq != 0 {
            return Err(Error::Invalid {
                kind: Kind::Hello,
                reason: "a Hello is a single frame with sequence number 0".into(),
            });
        }
        let msg = Message::decode_body(Kind::Hello, &unmasked(frame))?;
        // The guest (re)opened: whatever session there was is over.
        self.reset(State::HelloReceived { nonce: h.epoch }, h.epoch);
        Ok(Some(msg))
    }

    fn open_welcome(&mut self, frame: &RawFrame) -> Result<Option<Message>, Error> {
        let h = frame.header();
        let State::AwaitingWelcome { nonce } = self.state else {
            return Err(Error::Unexpected {
                got: Kind::Welcome,
                state: self.state.describe(),
            });
        };
        if h.epoch != nonce {
            return Err(Error::OldEpoch {
                epoch: h.epoch,
                expected: nonce,
            });
        }
        if h.more() || h.cont() || h.seq != 0 {
            return Err(Error::Invalid {
                kind: Kind::Welcome,
                reason: "a Welcome is a single frame with sequence number 0".into(),
            });
        }
        let msg = Message::decode_body(Kind::Welcome, &unmasked(frame))?;
        if let Message::Welcome(w) = &msg {
            self.reset(
                State::Established {
                    epoch: w.session_epoch,
                },
                w.session_epoch,
            );
        }
        Ok(Some(msg))
    }
}

fn unmasked(frame: &RawFrame) -> Cow<'_, [u8]> {
    let h = frame.header();
    if h.flags & FLAG_MASKED == 0 {
        return Cow::Borrowed(frame.body());
    }
    let mut body = frame.body().to_vec();
    frame::apply_mask(&mut body, h.mask);
    Cow::Owned(body)
}
