//! The per-instance relay key as the guest receives it, the channel's target name, and the key
//! derivation the Nova patch uses.
//!
//! The key travels as the SMBIOS OEM string `org.opensfc.relay.key:<64 hex digits>` (what
//! `vnf-agent` looks for). Nova derives it instead of storing it: HMAC-SHA256 keyed with the
//! deployment secret (`[config_relay] key_secret_file`) over the label
//! `org.opensfc.relay.key.v1`, a NUL byte and the instance UUID in lower-case hyphenated form.
//! [`derive_key`] and [`read_secret`] follow `nova/virt/libvirt/config_relay.py` exactly, so an
//! operator can compute the key the controller needs for an instance (`nova-patch derive-key`);
//! both sides test the same vector.

use std::fmt;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::str::FromStr;

use hmac::{Hmac, Mac};
use sha2::Sha256;
use uuid::Uuid;

use crate::Error;

/// Prefix of the SMBIOS OEM string that carries the key.
pub const OEM_KEY_PREFIX: &str = "org.opensfc.relay.key:";
/// The channel target name relay-host and vnf-agent use by default.
pub const DEFAULT_CHANNEL: &str = "org.opensfc.relay.0";
/// Domain separation of the derivation; the Nova patch uses the same bytes.
pub const KEY_LABEL: &[u8] = b"org.opensfc.relay.key.v1\0";
/// Shortest deployment secret accepted, in bytes.
pub const MIN_SECRET_BYTES: usize = 32;
const KEY_LEN: usize = 32;
const MAX_CHANNEL_NAME: usize = 100;

/// A 256-bit relay key. Its `Debug` form does not show the key.
#[derive(Clone, PartialEq, Eq)]
pub struct RelayKey([u8; KEY_LEN]);

impl RelayKey {
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> RelayKey {
        RelayKey(bytes)
    }

    /// Lower-case hex, as written into the domain XML.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The whole OEM string, `org.opensfc.relay.key:<hex>`.
    pub fn oem_string(&self) -> String {
        format!("{OEM_KEY_PREFIX}{}", self.to_hex())
    }

    /// Reads a key file: 64 hex digits, surrounding whitespace ignored.
    pub fn from_file(path: &Path) -> Result<RelayKey, Error> {
        let text = fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        text.trim().parse()
    }
}

impl fmt::Debug for RelayKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("RelayKey(..)")
    }
}

impl FromStr for RelayKey {
    type Err = Error;

    /// Exactly 64 hex digits, either case.
    fn from_str(s: &str) -> Result<RelayKey, Error> {
        if s.len() != KEY_LEN * 2 {
            return Err(Error::InvalidKey(format!(
                "{} characters, expected {} hex digits",
                s.len(),
                KEY_LEN * 2
            )));
        }
        let mut key = [0u8; KEY_LEN];
        hex::decode_to_slice(s, &mut key)
            .map_err(|_| Error::InvalidKey("not hex digits".into()))?;
        Ok(RelayKey(key))
    }
}

/// A virtio-serial target name the guest can find as `/dev/virtio-ports/<name>`: an ASCII
/// letter or digit, then letters, digits, `.`, `_` or `-`, at most 100 in all (the rule of the
/// Nova patch's `[config_relay] channel_name`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelName(String);

impl ChannelName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for ChannelName {
    fn default() -> Self {
        ChannelName(DEFAULT_CHANNEL.to_owned())
    }
}

impl fmt::Display for ChannelName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for ChannelName {
    type Err = Error;

    fn from_str(s: &str) -> Result<ChannelName, Error> {
        let invalid = |reason: &str| Error::InvalidChannelName {
            name: s.to_owned(),
            reason: reason.to_owned(),
        };
        let Some(first) = s.chars().next() else {
            return Err(invalid("it is empty"));
        };
        if s.len() > MAX_CHANNEL_NAME {
            return Err(invalid("it is longer than 100 characters"));
        }
        if !first.is_ascii_alphanumeric() {
            return Err(invalid("it must start with an ASCII letter or digit"));
        }
        if !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        {
            return Err(invalid(
                "only ASCII letters, digits, '.', '_' and '-' are allowed",
            ));
        }
        Ok(ChannelName(s.to_owned()))
    }
}

/// The key of `instance` under deployment secret `secret`.
pub fn derive_key(secret: &[u8], instance: Uuid) -> RelayKey {
    // HMAC takes keys of any length: this cannot fail.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        unreachable!("HMAC accepts keys of every length")
    };
    mac.update(KEY_LABEL);
    mac.update(instance.hyphenated().to_string().as_bytes());
    RelayKey(mac.finalize().into_bytes().into())
}

/// Reads a deployment secret file by the Nova patch's rules: the contents without surrounding
/// whitespace (Python's `bytes.strip()`), at least [`MIN_SECRET_BYTES`] long, and the file not
/// accessible to other users.
pub fn read_secret(path: &Path) -> Result<Vec<u8>, Error> {
    let read_err = |source| Error::Read {
        path: path.to_owned(),
        source,
    };
    let meta = fs::metadata(path).map_err(read_err)?;
    let mode = meta.permissions().mode();
    if mode & 0o007 != 0 {
        return Err(Error::InvalidSecret {
            path: path.to_owned(),
            reason: format!("it is accessible to other users (mode {:o})", mode & 0o7777),
        });
    }
    let bytes = fs::read(path).map_err(read_err)?;
    let secret = strip_python_whitespace(&bytes);
    if secret.len() < MIN_SECRET_BYTES {
        return Err(Error::InvalidSecret {
            path: path.to_owned(),
            reason: format!("it is shorter than {MIN_SECRET_BYTES} bytes"),
        });
    }
    Ok(secret.to_vec())
}

/// `bytes.strip()` of Python: ASCII space, tab, newline, carriage return, vertical tab and
/// form feed at either end.
fn strip_python_whitespace(bytes: &[u8]) -> &[u8] {
    let ws = |b: &u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c);
    let start = bytes.iter().position(|b| !ws(b)).unwrap_or(bytes.len());
    let end = bytes.iter().rposition(|b| !ws(b)).map_or(start, |i| i + 1);
    &bytes[start..end]
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    const INSTANCE: &str = "4b5a2f9c-8d1e-4f6a-9b3c-2d7e8f9a0b1c";
    /// Also asserted by the Nova patch's `test_config_relay.py`.
    const KEY: &str = "ef223a72cf97aca146015682f36fbe1074c79730fd8875dcc16274ac78db44ad";

    #[test]
    fn the_derivation_matches_the_nova_patch() {
        let instance = Uuid::parse_str(INSTANCE).unwrap();
        assert_eq!(derive_key(SECRET, instance).to_hex(), KEY);
        let upper = Uuid::parse_str(&INSTANCE.to_uppercase()).unwrap();
        assert_eq!(derive_key(SECRET, upper).to_hex(), KEY);
        assert_ne!(
            derive_key(b"another secret, 32 bytes at least", instance).to_hex(),
            KEY
        );
    }

    #[test]
    fn keys_are_64_hex_digits() {
        let key: RelayKey = KEY.to_uppercase().parse().unwrap();
        assert_eq!(key.to_hex(), KEY);
        assert_eq!(key.oem_string(), format!("org.opensfc.relay.key:{KEY}"));
        assert_eq!(format!("{key:?}"), "RelayKey(..)");
        for bad in ["", &KEY[..63], &format!("{KEY}0"), &KEY.replace('e', "g")] {
            let err = bad.parse::<RelayKey>().unwrap_err();
            assert!(matches!(err, Error::InvalidKey(_)), "{bad}: {err}");
        }
    }

    #[test]
    fn channel_names_are_validated() {
        for good in ["org.opensfc.relay.0", "a", "X_y-z.1", &"a".repeat(100)] {
            assert_eq!(good.parse::<ChannelName>().unwrap().as_str(), good);
        }
        for bad in [
            "",
            ".hidden",
            "-x",
            "a b",
            "a/b",
            "a'b",
            "a<b",
            "é",
            &"a".repeat(101),
        ] {
            assert!(bad.parse::<ChannelName>().is_err(), "{bad:?} accepted");
        }
        assert_eq!(ChannelName::default().as_str(), DEFAULT_CHANNEL);
    }

    #[test]
    fn secret_files_follow_the_nova_rules() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        let write = |content: &[u8], mode: u32| {
            fs::write(&path, content).unwrap();
            fs::set_permissions(&path, fs::Permissions::from_mode(mode)).unwrap();
        };
        write(b" \x0b0123456789abcdef0123456789abcdef\n\x0c", 0o640);
        assert_eq!(read_secret(&path).unwrap(), SECRET);

        write(SECRET, 0o604);
        let err = read_secret(&path).unwrap_err();
        assert!(err.to_string().contains("other users"), "{err}");

        write(&SECRET[..31], 0o600);
        let err = read_secret(&path).unwrap_err();
        assert!(err.to_string().contains("shorter than 32"), "{err}");

        let err = read_secret(&dir.path().join("absent")).unwrap_err();
        assert!(matches!(err, Error::Read { .. }), "{err}");
    }

    #[test]
    fn key_files_hold_hex() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        fs::write(&path, format!("{KEY}\n")).unwrap();
        assert_eq!(RelayKey::from_file(&path).unwrap().to_hex(), KEY);
        fs::write(&path, "nope").unwrap();
        assert!(RelayKey::from_file(&path).is_err());
    }
}
