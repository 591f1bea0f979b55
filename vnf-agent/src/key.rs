//! Loading the per-instance key.
//!
//! The key reaches the guest out of band at boot. The reference path is an SMBIOS OEM string
//! (type 11 structure) that the domain XML sets, e.g.
//! `<oemStrings><entry>org.opensfc.relay.key:0123…</entry></oemStrings>`; the guest kernel
//! exposes each raw structure as `/sys/firmware/dmi/entries/11-<n>/raw`. A key file is the
//! alternative for guests without SMBIOS. Errors name the source and what is wrong with it,
//! never the key material.

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use relay_protocol::InstanceKey;

/// Prefix of the SMBIOS OEM string that carries the key as 64 hex digits.
pub const SMBIOS_KEY_PREFIX: &str = "org.opensfc.relay.key:";

/// Default sysfs mount point; [`from_smbios`] reads `<sysfs>/firmware/dmi/entries/11-*/raw`.
pub const DEFAULT_SYSFS: &str = "/sys";

/// SMBIOS structure type of OEM strings.
const OEM_STRINGS: u8 = 11;

/// Why no key could be loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read {}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no SMBIOS OEM strings in {} (is sysfs mounted, and does the domain define <oemStrings>?)", dir.display())]
    NoOemStrings { dir: PathBuf },
    #[error("no SMBIOS OEM string starts with {SMBIOS_KEY_PREFIX:?} (looked in {} structures under {})", structures, dir.display())]
    NotFound { dir: PathBuf, structures: usize },
    #[error("SMBIOS OEM strings carry {0} different keys")]
    Ambiguous(usize),
    #[error("{} is not a valid SMBIOS type 11 structure: {reason}", path.display())]
    BadStructure { path: PathBuf, reason: String },
    #[error("the key in {source_name} is invalid")]
    Invalid {
        source_name: String,
        #[source]
        source: relay_protocol::Error,
    },
}

/// The OEM strings of one raw SMBIOS type 11 structure (header: type, length, handle; count at
/// offset 4; then the string set, NUL-terminated strings ending with an extra NUL).
pub fn oem_strings(raw: &[u8]) -> Result<Vec<&[u8]>, String> {
    if raw.len() < 5 {
        return Err(format!(
            "{} bytes, shorter than the 5-byte header",
            raw.len()
        ));
    }
    if raw[0] != OEM_STRINGS {
        return Err(format!(
            "type {} (OEM strings are type {OEM_STRINGS})",
            raw[0]
        ));
    }
    let len = usize::from(raw[1]);
    let count = usize::from(raw[4]);
    if len < 5 || len > raw.len() {
        return Err(format!(
            "formatted length {len} is outside 5..={}",
            raw.len()
        ));
    }
    let mut rest = &raw[len..];
    let mut strings = Vec::with_capacity(count);
    while strings.len() < count {
        let Some(end) = rest.iter().position(|&b| b == 0) else {
            return Err(format!(
                "string {} of {count} is not NUL-terminated",
                strings.len() + 1
            ));
        };
        if end == 0 {
            return Err(format!(
                "the string set ends after {} of {count} strings",
                strings.len()
            ));
        }
        strings.push(&rest[..end]);
        rest = &rest[end + 1..];
    }
    Ok(strings)
}

/// Finds the key among the OEM strings of every type 11 structure under `sysfs`.
pub fn from_smbios(sysfs: &Path) -> Result<InstanceKey, KeyError> {
    let dir = sysfs.join("firmware/dmi/entries");
    let entries = fs::read_dir(&dir).map_err(|source| match source.kind() {
        io::ErrorKind::NotFound => KeyError::NoOemStrings { dir: dir.clone() },
        _ => KeyError::Io {
            path: dir.clone(),
            source,
        },
    })?;
    let mut raws = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| KeyError::Io {
            path: dir.clone(),
            source,
        })?;
        let name = entry.file_name();
        if name.to_string_lossy().starts_with("11-") {
            raws.push(entry.path().join("raw"));
        }
    }
    if raws.is_empty() {
        return Err(KeyError::NoOemStrings { dir });
    }
    raws.sort();
    let mut keys: Vec<(PathBuf, String)> = Vec::new();
    for path in &raws {
        let raw = fs::read(path).map_err(|source| KeyError::Io {
            path: path.clone(),
            source,
        })?;
        let strings = oem_strings(&raw).map_err(|reason| KeyError::BadStructure {
            path: path.clone(),
            reason,
        })?;
        for s in strings {
            if let Some(hex) = s.strip_prefix(SMBIOS_KEY_PREFIX.as_bytes()) {
                let hex = String::from_utf8_lossy(hex).trim().to_owned();
                if !keys.iter().any(|(_, k)| *k == hex) {
                    keys.push((path.clone(), hex));
                }
            }
        }
    }
    match keys.as_slice() {
        [] => Err(KeyError::NotFound {
            dir,
            structures: raws.len(),
        }),
        [(path, hex)] => InstanceKey::from_hex(hex).map_err(|source| KeyError::Invalid {
            source_name: format!(
                "SMBIOS OEM string {SMBIOS_KEY_PREFIX}… in {}",
                path.display()
            ),
            source,
        }),
        more => Err(KeyError::Ambiguous(more.len())),
    }
}

/// Reads a key file holding 64 hex digits (surrounding whitespace ignored). Warns when the
/// file is readable by group or others.
pub fn from_file(path: &Path) -> Result<InstanceKey, KeyError> {
    let io_err = |source| KeyError::Io {
        path: path.to_owned(),
        source,
    };
    let meta = fs::metadata(path).map_err(io_err)?;
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(
            path = %path.display(),
            mode = format_args!("{:o}", meta.permissions().mode() & 0o7777),
            "the key file is readable by other users"
        );
    }
    let text = fs::read_to_string(path).map_err(io_err)?;
    InstanceKey::from_hex(&text).map_err(|source| KeyError::Invalid {
        source_name: path.display().to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

    /// A raw type 11 structure as the kernel exposes it.
    fn structure(strings: &[&str]) -> Vec<u8> {
        let mut raw = vec![11, 5, 0x34, 0x12, strings.len() as u8];
        for s in strings {
            raw.extend_from_slice(s.as_bytes());
            raw.push(0);
        }
        if strings.is_empty() {
            raw.push(0);
        }
        raw.push(0);
        raw
    }

    fn sysfs(structures: &[Vec<u8>]) -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        let entries = root.path().join("firmware/dmi/entries");
        // Other structure types sit next to the OEM strings.
        fs::create_dir_all(entries.join("1-0")).unwrap();
        fs::write(entries.join("1-0/raw"), [1, 4, 0, 0]).unwrap();
        for (i, raw) in structures.iter().enumerate() {
            let d = entries.join(format!("11-{i}"));
            fs::create_dir_all(&d).unwrap();
            fs::write(d.join("raw"), raw).unwrap();
        }
        root
    }

    #[test]
    fn key_found_among_oem_strings() {
        let root = sysfs(&[
            structure(&["vendor thing"]),
            structure(&["io.example.x:1", &format!("{SMBIOS_KEY_PREFIX}{KEY}"), "y"]),
        ]);
        let key = from_smbios(root.path()).unwrap();
        assert_eq!(key.to_hex(), KEY);
    }

    #[test]
    fn formatted_area_longer_than_the_header_is_skipped() {
        let mut raw = vec![11, 8, 0, 0, 1, 0xAA, 0xBB, 0xCC];
        raw.extend_from_slice(format!("{SMBIOS_KEY_PREFIX}{KEY}\0\0").as_bytes());
        assert_eq!(
            oem_strings(&raw).unwrap(),
            [format!("{SMBIOS_KEY_PREFIX}{KEY}").as_bytes()]
        );
    }

    #[test]
    fn failures_are_told_apart() {
        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(
            from_smbios(empty.path()),
            Err(KeyError::NoOemStrings { .. })
        ));
        let none = sysfs(&[structure(&["a", "b"])]);
        let err = from_smbios(none.path()).unwrap_err();
        assert!(
            matches!(err, KeyError::NotFound { structures: 1, .. }),
            "{err}"
        );
        assert!(err.to_string().contains(SMBIOS_KEY_PREFIX));

        let short = sysfs(&[structure(&[&format!("{SMBIOS_KEY_PREFIX}abcd")])]);
        let err = from_smbios(short.path()).unwrap_err();
        assert!(matches!(err, KeyError::Invalid { .. }), "{err}");
        // The message names the source but never the key material.
        assert!(!format!("{err:?}{err}").contains("abcd"));

        let two = sysfs(&[
            structure(&[&format!("{SMBIOS_KEY_PREFIX}{KEY}")]),
            structure(&[&format!("{SMBIOS_KEY_PREFIX}{}", KEY.replace('0', "1"))]),
        ]);
        assert!(matches!(
            from_smbios(two.path()),
            Err(KeyError::Ambiguous(2))
        ));
        // The same key twice is not ambiguous.
        let dup = sysfs(&[
            structure(&[&format!("{SMBIOS_KEY_PREFIX}{KEY}")]),
            structure(&[&format!("{SMBIOS_KEY_PREFIX}{KEY}")]),
        ]);
        assert_eq!(from_smbios(dup.path()).unwrap().to_hex(), KEY);
    }

    #[test]
    fn malformed_structures_are_rejected() {
        for (raw, what) in [
            (vec![11, 5, 0], "shorter"),
            (vec![12, 5, 0, 0, 0, 0, 0], "type 12"),
            (vec![11, 40, 0, 0, 1, 0, 0], "formatted length"),
            (b"\x0b\x05\x00\x00\x02one\0\0".to_vec(), "ends after 1 of 2"),
            (
                b"\x0b\x05\x00\x00\x01unterminated".to_vec(),
                "not NUL-terminated",
            ),
        ] {
            let err = oem_strings(&raw).unwrap_err();
            assert!(err.contains(what), "{err}");
        }
        let root = sysfs(&[vec![11, 5, 0]]);
        assert!(matches!(
            from_smbios(root.path()),
            Err(KeyError::BadStructure { .. })
        ));
        assert_eq!(oem_strings(&structure(&[])).unwrap(), Vec::<&[u8]>::new());
    }

    #[test]
    fn key_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        fs::write(&path, format!("{KEY}\n")).unwrap();
        assert_eq!(from_file(&path).unwrap().to_hex(), KEY);
        fs::write(&path, "not hex at all").unwrap();
        assert!(matches!(from_file(&path), Err(KeyError::Invalid { .. })));
        assert!(matches!(
            from_file(&dir.path().join("missing")),
            Err(KeyError::Io { .. })
        ));
    }
}
