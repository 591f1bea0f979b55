//! How guests get their relay channel.
//!
//! Three ways, one result (a virtio-serial channel with the relay's target name and no source
//! path, so libvirt places the socket, plus the instance key as an SMBIOS OEM string):
//! - the Nova patch (`nova/0001-libvirt-config-relay-channel.patch`), for instances whose flavor
//!   or image asks for the relay; `nova/test.sh` runs its unit tests against Nova 34.0.0;
//! - [`inject`], for hosts without Nova: domain XML in, domain XML out, nothing else changed;
//! - [`hook`], the libvirt hook: it tells relay-host about started and stopped domains and keeps
//!   the channel in the XML of relay guests that migrate in or are restored.
//!
//! [`key`] holds the key and channel-name rules and the key derivation shared with the patch.

#![forbid(unsafe_code)]

pub mod hook;
pub mod inject;
pub mod key;

use std::io::{self, Read};
use std::path::PathBuf;

pub use inject::{ensure_channel, inject};
pub use key::{derive_key, read_secret, ChannelName, RelayKey};

/// Largest domain XML read, in bytes.
pub const MAX_XML: usize = 16 << 20;

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("the domain XML is not well-formed")]
    Xml(#[source] roxmltree::Error),
    #[error("the document is a <{0}>, not a libvirt <domain>")]
    NotADomain(String),
    #[error("the domain has no <os> element to enable the SMBIOS strings in")]
    NoOs,
    #[error("the domain XML has no valid <uuid>")]
    NoUuid,
    #[error("invalid relay key: {0}")]
    InvalidKey(String),
    #[error("invalid channel target name {name:?}: {reason}")]
    InvalidChannelName { name: String, reason: String },
    #[error("cannot read {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("key secret file {}: {reason}", path.display())]
    InvalidSecret { path: PathBuf, reason: String },
    #[error("invalid instance UUID {0:?}")]
    InvalidInstance(String),
    #[error("cannot read the domain XML")]
    Input(#[source] io::Error),
    #[error("the domain XML is larger than {MAX_XML} bytes")]
    InputTooLarge,
    #[error("the domain XML is not UTF-8")]
    InputNotUtf8,
    #[error("cannot write the result")]
    Output(#[source] io::Error),
    #[error("cannot notify relay-host at {}", path.display())]
    Notify {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// An error and its sources on one line, `outer: inner: innermost`.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        source = inner.source();
    }
    s
}

/// Reads a whole domain XML document (at most [`MAX_XML`] bytes, UTF-8). Input beyond the limit
/// is still consumed, so a writer such as libvirtd never sees a broken pipe.
pub fn read_xml(mut input: impl Read) -> Result<String, Error> {
    let mut bytes = Vec::new();
    (&mut input)
        .take(MAX_XML as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(Error::Input)?;
    if bytes.len() > MAX_XML {
        io::copy(&mut input, &mut io::sink()).map_err(Error::Input)?;
        return Err(Error::InputTooLarge);
    }
    String::from_utf8(bytes).map_err(|_| Error::InputNotUtf8)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn input_is_bounded_and_utf8() {
        assert_eq!(read_xml(&b"<domain/>"[..]).unwrap(), "<domain/>");
        assert!(matches!(
            read_xml(&b"<domain>\xff</domain>"[..]),
            Err(Error::InputNotUtf8)
        ));
        let big = vec![b' '; MAX_XML + 10];
        let mut reader = &big[..];
        assert!(matches!(read_xml(&mut reader), Err(Error::InputTooLarge)));
        assert!(reader.is_empty(), "the rest of the input was consumed");
    }

    #[test]
    fn error_chains_name_every_cause() {
        let e = Error::Read {
            path: "/x".into(),
            source: io::Error::new(io::ErrorKind::NotFound, "gone"),
        };
        assert_eq!(error_chain(&e), "cannot read /x: gone");
    }
}
