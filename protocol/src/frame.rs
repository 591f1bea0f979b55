//! Frames on the wire and the resynchronising decoder.
//!
//! A frame is a fixed 36-byte header, a body of at most [`MAX_BODY`] bytes and a 32-byte
//! HMAC-SHA256 tag over header and body, so no frame exceeds [`MAX_FRAME`] (32 KiB, the most a
//! virtio-serial `write()` takes). The header carries its own CRC-32 so that a party without the
//! key (the relay) can still find frame boundaries and reject garbage at once instead of waiting
//! for a bogus length's worth of bytes.
//!
//! virtio-serial keeps stale bytes across reconnects and never says that the peer came back, so
//! every side writes [`RESYNC_MARKER`] after each (re)open. The marker wins over everything: when
//! the decoder sees it, whatever came before it, including a frame still waiting for its body, is
//! discarded. To make that safe the encoder guarantees that the marker never occurs inside a
//! frame: in the rare case where a body would contain it, the body is XOR-masked with a 16-bit
//! mask chosen so that it does not (a 32 KiB body has fewer windows than there are masks, so one
//! always exists).
//!
//! Header layout (big-endian):
//!
//! | offset | size | field |
//! |---|---|---|
//! | 0 | 4 | magic `OSR` 0xA7 |
//! | 4 | 1 | version (1) |
//! | 5 | 1 | kind (message kind, 0 reserved) |
//! | 6 | 2 | flags: bit 0 `MORE` (a chunk follows), bit 1 `MASKED`, bit 2 `CONT` (continues a message); others reserved |
//! | 8 | 4 | body length |
//! | 12 | 2 | body mask (0 unless `MASKED`) |
//! | 14 | 2 | reserved, 0 |
//! | 16 | 8 | session epoch |
//! | 24 | 8 | sequence number |
//! | 32 | 4 | CRC-32 of bytes 0..32 |

use bytes::{Buf, BufMut, Bytes, BytesMut};
use hmac::{Hmac, Mac};
use memchr::memmem;
use sha2::Sha256;

use crate::Error;

/// First bytes of every frame.
pub const MAGIC: [u8; 4] = [b'O', b'S', b'R', 0xA7];
/// Frame format version written by this crate; frames of other versions are discarded.
pub const VERSION: u8 = 1;
/// Written after every (re)open of a channel; resets the peer's decoder.
/// It shares no prefix with [`MAGIC`] and contains bytes that never start a header.
pub const RESYNC_MARKER: [u8; 16] = [
    0xFF, 0xFE, 0xFD, 0xFC, b'S', b'F', b'C', b'-', b'R', b'E', b'S', b'Y', b'N', b'C', 0xFC, 0xFD,
];
/// Size of the fixed frame header.
pub const HEADER_LEN: usize = 36;
/// Size of the HMAC-SHA256 tag that ends every frame.
pub const MAC_LEN: usize = 32;
/// Largest frame on the wire: one virtio-serial write.
pub const MAX_FRAME: usize = 32 * 1024;
/// Largest body of one frame.
pub const MAX_BODY: usize = MAX_FRAME - HEADER_LEN - MAC_LEN;

/// Another chunk of the same message follows this frame.
pub const FLAG_MORE: u16 = 1 << 0;
/// The body is XOR-masked with the header's mask (see the module documentation).
pub const FLAG_MASKED: u16 = 1 << 1;
/// This frame continues a message begun by an earlier frame.
pub const FLAG_CONT: u16 = 1 << 2;
const KNOWN_FLAGS: u16 = FLAG_MORE | FLAG_MASKED | FLAG_CONT;

pub(crate) type HmacSha256 = Hmac<Sha256>;

/// The validated fixed header of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub kind: u8,
    pub flags: u16,
    pub body_len: u32,
    pub mask: u16,
    pub epoch: u64,
    pub seq: u64,
}

impl Header {
    /// Writes the header, checksum included.
    fn write(&self, out: &mut [u8]) {
        let mut w = &mut out[..HEADER_LEN];
        w.put_slice(&MAGIC);
        w.put_u8(VERSION);
        w.put_u8(self.kind);
        w.put_u16(self.flags);
        w.put_u32(self.body_len);
        w.put_u16(self.mask);
        w.put_u16(0);
        w.put_u64(self.epoch);
        w.put_u64(self.seq);
        let crc = crc32fast::hash(&out[..HEADER_LEN - 4]);
        out[HEADER_LEN - 4..HEADER_LEN].copy_from_slice(&crc.to_be_bytes());
    }

    /// Parses and checks a header; `bytes` starts with [`MAGIC`] and holds at least
    /// [`HEADER_LEN`] bytes. Nothing is allocated before every check has passed.
    fn parse(bytes: &[u8]) -> Result<Header, Error> {
        let mut r = &bytes[MAGIC.len()..HEADER_LEN];
        let version = r.get_u8();
        let kind = r.get_u8();
        let flags = r.get_u16();
        let body_len = r.get_u32();
        let mask = r.get_u16();
        let reserved = r.get_u16();
        let epoch = r.get_u64();
        let seq = r.get_u64();
        let crc = r.get_u32();
        if crc32fast::hash(&bytes[..HEADER_LEN - 4]) != crc {
            return Err(Error::HeaderChecksum);
        }
        if version != VERSION {
            return Err(Error::UnsupportedVersion(version));
        }
        if kind == 0 {
            return Err(Error::ReservedKind);
        }
        let mask_ok = (flags & FLAG_MASKED != 0) == (mask != 0);
        if flags & !KNOWN_FLAGS != 0 || reserved != 0 || !mask_ok {
            return Err(Error::ReservedBits {
                flags,
                reserved,
                mask,
            });
        }
        if body_len as usize > MAX_BODY {
            return Err(Error::BodyTooLong {
                len: body_len,
                max: MAX_BODY,
            });
        }
        Ok(Header {
            kind,
            flags,
            body_len,
            mask,
            epoch,
            seq,
        })
    }

    /// Length of the whole frame this header announces.
    pub fn frame_len(&self) -> usize {
        HEADER_LEN + self.body_len as usize + MAC_LEN
    }

    /// Whether another chunk of the same message follows.
    pub fn more(&self) -> bool {
        self.flags & FLAG_MORE != 0
    }

    /// Whether this frame continues a message begun by an earlier frame.
    pub fn cont(&self) -> bool {
        self.flags & FLAG_CONT != 0
    }
}

/// A frame whose header is valid; its tag is not verified yet (see [`crate::Session::open`]).
/// A party without the key, such as the relay, forwards it as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame {
    header: Header,
    bytes: Bytes,
}

impl RawFrame {
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The whole frame as it was on the wire.
    pub fn as_bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// Header and body: the bytes the tag authenticates.
    pub(crate) fn signed(&self) -> &[u8] {
        &self.bytes[..self.bytes.len() - MAC_LEN]
    }

    pub(crate) fn tag(&self) -> &[u8] {
        &self.bytes[self.bytes.len() - MAC_LEN..]
    }

    /// The body, still masked if the header says so.
    pub(crate) fn body(&self) -> &[u8] {
        &self.bytes[HEADER_LEN..self.bytes.len() - MAC_LEN]
    }

    /// Checks the tag in constant time.
    pub(crate) fn verify(&self, key: &HmacSha256) -> bool {
        let mut mac = key.clone();
        mac.update(self.signed());
        mac.verify_slice(self.tag()).is_ok()
    }

    /// Parses a single complete frame, as the relay receives them over its uplink.
    pub fn parse(bytes: Bytes) -> Result<RawFrame, Error> {
        if bytes.len() < HEADER_LEN || bytes[..MAGIC.len()] != MAGIC {
            return Err(Error::Garbage);
        }
        let header = Header::parse(&bytes)?;
        if bytes.len() != header.frame_len() {
            return Err(Error::Interrupted(bytes.len()));
        }
        if memmem::find(&bytes, &RESYNC_MARKER).is_some() {
            return Err(Error::Interrupted(0));
        }
        Ok(RawFrame { header, bytes })
    }
}

/// XORs `body` with the 16-bit `mask`, byte `i` with byte `i % 2` of the mask (big-endian).
pub(crate) fn apply_mask(body: &mut [u8], mask: u16) {
    let m = mask.to_be_bytes();
    for pair in body.chunks_mut(2) {
        for (b, m) in pair.iter_mut().zip(m) {
            *b ^= m;
        }
    }
}

/// Appends one sealed frame to `out`: header, `body` (masked if it would otherwise carry the
/// resync marker) and tag.
pub(crate) fn seal(
    out: &mut BytesMut,
    key: &HmacSha256,
    kind: u8,
    flags: u16,
    epoch: u64,
    seq: u64,
    body: &[u8],
) -> Result<(), Error> {
    debug_assert!(body.len() <= MAX_BODY && flags & FLAG_MASKED == 0);
    let start = out.len();
    let frame_len = HEADER_LEN + body.len() + MAC_LEN;
    out.reserve(frame_len);
    out.put_bytes(0, HEADER_LEN);
    out.put_slice(body);
    out.put_bytes(0, MAC_LEN);
    let frame = &mut out[start..];
    let mut header = Header {
        kind,
        flags,
        body_len: body.len() as u32,
        mask: 0,
        epoch,
        seq,
    };
    for mask in 0..=u16::MAX {
        if mask != 0 {
            // Undo the previous mask, apply the next one.
            apply_mask(
                &mut frame[HEADER_LEN..frame_len - MAC_LEN],
                header.mask ^ mask,
            );
            header.mask = mask;
            header.flags |= FLAG_MASKED;
        }
        header.write(frame);
        let mut mac = key.clone();
        mac.update(&frame[..frame_len - MAC_LEN]);
        frame[frame_len - MAC_LEN..].copy_from_slice(&mac.finalize().into_bytes());
        if memmem::find(frame, &RESYNC_MARKER).is_none() {
            return Ok(());
        }
    }
    out.truncate(start);
    Err(Error::MarkerUnavoidable)
}

/// What the decoder found at the front of the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded {
    /// A frame with a valid header; its tag is checked by the session.
    Frame(RawFrame),
    /// The peer (re)opened the channel: start a new handshake.
    Resync,
    /// Bytes skipped, and why. The stream goes on with the next frame or marker.
    Discarded { bytes: usize, reason: Error },
}

/// Splits a byte stream into frames, skipping stale and garbage bytes.
///
/// Call [`FrameDecoder::decode`] with the connection's read buffer until it returns `None`
/// ("need more bytes"), then read more into the same buffer. The decoder only consumes bytes
/// from the front of the buffer.
#[derive(Debug)]
pub struct FrameDecoder {
    /// Bytes of a pending frame (from the front of the buffer) already searched for the marker.
    scanned: usize,
    marker: memmem::Finder<'static>,
}

impl Default for FrameDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameDecoder {
    pub fn new() -> Self {
        FrameDecoder {
            scanned: 0,
            marker: memmem::Finder::new(&RESYNC_MARKER),
        }
    }

    /// Takes the next item off the front of `buf`, or returns `None` when more bytes are needed.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Option<Decoded> {
        if buf.is_empty() {
            return None;
        }
        if buf.starts_with(&RESYNC_MARKER) {
            self.advance(buf, RESYNC_MARKER.len());
            return Some(Decoded::Resync);
        }
        if !buf.starts_with(&MAGIC) {
            let skip = self.next_start(buf, 0);
            if skip == 0 {
                // A prefix of the marker or the magic: wait for the rest.
                return None;
            }
            return Some(self.discard(buf, skip, Error::Garbage));
        }
        if buf.len() < HEADER_LEN {
            return self.interrupted(buf, buf.len());
        }
        let header = match Header::parse(buf) {
            Ok(h) => h,
            Err(reason) => {
                let skip = self.next_start(buf, 1);
                return Some(self.discard(buf, skip, reason));
            }
        };
        let frame_len = header.frame_len();
        if let Some(cut) = self.interrupted(buf, frame_len.min(buf.len())) {
            return Some(cut);
        }
        if buf.len() < frame_len {
            return None;
        }
        let bytes = buf.split_to(frame_len).freeze();
        self.scanned = 0;
        Some(Decoded::Frame(RawFrame { header, bytes }))
    }

    /// Looks for the marker inside the first `extent` bytes of a pending frame; if it is there,
    /// the frame was cut off and everything before the marker goes.
    fn interrupted(&mut self, buf: &mut BytesMut, extent: usize) -> Option<Decoded> {
        let from = self.scanned.saturating_sub(RESYNC_MARKER.len() - 1).max(1);
        if from < extent {
            if let Some(pos) = self.marker.find(&buf[from..extent]) {
                let at = from + pos;
                return Some(self.discard(buf, at, Error::Interrupted(at)));
            }
        }
        self.scanned = extent;
        None
    }

    /// Offset of the first possible frame or marker start at or after `from`: a full magic or
    /// marker, or a prefix of one at the very end of the buffer.
    fn next_start(&self, buf: &[u8], from: usize) -> usize {
        let mut pos = from;
        while pos < buf.len() {
            match memchr::memchr2(MAGIC[0], RESYNC_MARKER[0], &buf[pos..]) {
                None => return buf.len(),
                Some(i) => {
                    let at = pos + i;
                    let rest = &buf[at..];
                    if rest.starts_with(&MAGIC)
                        || rest.starts_with(&RESYNC_MARKER)
                        || (rest.len() < MAGIC.len() && MAGIC.starts_with(rest))
                        || (rest.len() < RESYNC_MARKER.len() && RESYNC_MARKER.starts_with(rest))
                    {
                        return at;
                    }
                    pos = at + 1;
                }
            }
        }
        buf.len()
    }

    fn discard(&mut self, buf: &mut BytesMut, bytes: usize, reason: Error) -> Decoded {
        self.advance(buf, bytes);
        Decoded::Discarded { bytes, reason }
    }

    fn advance(&mut self, buf: &mut BytesMut, n: usize) {
        buf.advance(n);
        self.scanned = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> HmacSha256 {
        HmacSha256::new_from_slice(&[7u8; 32]).unwrap()
    }

    fn frame(body: &[u8]) -> BytesMut {
        let mut out = BytesMut::new();
        seal(&mut out, &key(), 7, 0, 1, 2, body).unwrap();
        out
    }

    #[test]
    fn header_round_trip_and_bounds() {
        let f = frame(b"hello");
        assert_eq!(f.len(), HEADER_LEN + 5 + MAC_LEN);
        let h = Header::parse(&f).unwrap();
        assert_eq!(
            (h.kind, h.body_len, h.epoch, h.seq, h.flags),
            (7, 5, 1, 2, 0)
        );
        let max = frame(&vec![0x11; MAX_BODY]);
        assert_eq!(max.len(), MAX_FRAME);
    }

    #[test]
    fn marker_in_body_is_masked_away() {
        let mut body = vec![0u8; 100];
        body[10..26].copy_from_slice(&RESYNC_MARKER);
        let f = frame(&body);
        assert!(memmem::find(&f, &RESYNC_MARKER).is_none());
        let h = Header::parse(&f).unwrap();
        assert!(h.flags & FLAG_MASKED != 0 && h.mask != 0);
        let mut masked = f[HEADER_LEN..HEADER_LEN + 100].to_vec();
        apply_mask(&mut masked, h.mask);
        assert_eq!(masked, body);
    }

    #[test]
    fn partial_magic_and_marker_wait_for_more() {
        let mut d = FrameDecoder::new();
        let mut buf = BytesMut::from(&b"xxOS"[..]);
        assert!(matches!(
            d.decode(&mut buf),
            Some(Decoded::Discarded { bytes: 2, .. })
        ));
        assert_eq!(d.decode(&mut buf), None);
        let mut buf = BytesMut::from(&RESYNC_MARKER[..9]);
        assert_eq!(d.decode(&mut buf), None);
        buf.extend_from_slice(&RESYNC_MARKER[9..]);
        assert_eq!(d.decode(&mut buf), Some(Decoded::Resync));
    }

    #[test]
    fn marker_cuts_off_a_pending_frame() {
        let mut d = FrameDecoder::new();
        let f = frame(&[1u8; 1000]);
        let mut buf = BytesMut::from(&f[..500]);
        assert_eq!(d.decode(&mut buf), None);
        buf.extend_from_slice(&RESYNC_MARKER);
        buf.extend_from_slice(&f);
        assert_eq!(
            d.decode(&mut buf),
            Some(Decoded::Discarded {
                bytes: 500,
                reason: Error::Interrupted(500)
            })
        );
        assert_eq!(d.decode(&mut buf), Some(Decoded::Resync));
        assert!(matches!(d.decode(&mut buf), Some(Decoded::Frame(_))));
        assert!(buf.is_empty());
    }
}
