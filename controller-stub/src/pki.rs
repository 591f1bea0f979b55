//! `controller-stub pki init`: a certificate authority, the relay endpoint's server certificate
//! and one client certificate per relay host, for local use and tests. Production points the
//! `--relay-*` options at certificates from its own PKI instead.
//!
//! Layout of the output directory (keys 0600, directories 0700 when created):
//!
//! ```text
//! DIR/ca.pem                 CA certificate    serve --relay-ca
//! DIR/ca.key                 CA key            keep offline; issues more certificates
//! DIR/server.pem, server.key                   serve --relay-cert / --relay-key
//! DIR/relays/HOST/ca.pem     CA certificate    relay-host `ca`
//! DIR/relays/HOST/relay.pem  client cert       relay-host `cert`
//! DIR/relays/HOST/relay.key  client key        relay-host `key`
//! ```
//!
//! A relay's directory holds exactly the three files relay-host's configuration names, under
//! its default names, so it can be copied to `/etc/relay-host/` as it is. The relay certificate
//! carries the host name as its common name and DNS name; the relay must register as that host
//! (relay-host `host`). Nothing is overwritten unless `force` is set; every file is written to a
//! temporary name and renamed into place, so a reader never sees half a key.

use std::fs::{DirBuilder, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// What `pki init` makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PkiOptions {
    pub dir: PathBuf,
    /// DNS names and IP addresses of the server certificate; empty means `localhost` and
    /// `127.0.0.1`.
    pub server_names: Vec<String>,
    /// Host names of the relays to issue client certificates for.
    pub relays: Vec<String>,
    /// Overwrite existing files.
    pub force: bool,
}

/// One file written, and what it is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub path: PathBuf,
    pub purpose: String,
}

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{0}")]
    Invalid(String),
    #[error("refusing to overwrite {} (use --force)", list(.0))]
    Exists(Vec<PathBuf>),
    #[error("cannot generate the certificates")]
    Generate(#[from] rcgen::Error),
    #[error("cannot write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn list(paths: &[PathBuf]) -> String {
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Years the CA is valid; leaf certificates are valid for [`LEAF_YEARS`].
const CA_YEARS: i32 = 10;
const LEAF_YEARS: i32 = 5;

/// Civil date (year, month, day) of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil(days: i64) -> (i32, u8, u8) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    // Day 1..=31 and month 1..=12 by construction; the year fits for any realistic clock.
    (y as i32, m as u8, d as u8)
}

/// Valid from yesterday (tolerates clocks somewhat behind) for `years` years.
fn validity(params: &mut CertificateParams, years: i32) {
    let days = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() / 86_400)
        .unwrap_or_default() as i64;
    let (y, m, d) = civil(days - 1);
    params.not_before = rcgen::date_time_ymd(y, m, d);
    // Day 28 at most, so that the date exists in every year.
    params.not_after = rcgen::date_time_ymd(y + years, m, d.min(28));
}

fn check_relay_host(host: &str) -> Result<(), PkiError> {
    let ok = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        && !host.starts_with(['.', '-'])
        && !host.contains("..");
    if ok {
        Ok(())
    } else {
        Err(PkiError::Invalid(format!(
            "relay host {host:?} is not a host name (letters, digits, '.', '-', '_')"
        )))
    }
}

fn check_server_name(name: &str) -> Result<(), PkiError> {
    if name.parse::<std::net::IpAddr>().is_ok() || rustls_pki_types::DnsName::try_from(name).is_ok()
    {
        Ok(())
    } else {
        Err(PkiError::Invalid(format!(
            "server name {name:?} is neither a DNS name nor an IP address"
        )))
    }
}

/// A file to write: path, contents, whether it is a private key, purpose.
struct Output {
    path: PathBuf,
    contents: String,
    secret: bool,
    purpose: String,
}

/// Creates the CA, the server certificate and the relays' client certificates in
/// `options.dir`; returns what was written.
pub fn init(options: &PkiOptions) -> Result<Vec<Written>, PkiError> {
    let server_names = if options.server_names.is_empty() {
        vec!["localhost".to_owned(), "127.0.0.1".to_owned()]
    } else {
        options.server_names.clone()
    };
    for name in &server_names {
        check_server_name(name)?;
    }
    let mut seen = std::collections::HashSet::new();
    for host in &options.relays {
        check_relay_host(host)?;
        if !seen.insert(host.to_ascii_lowercase()) {
            return Err(PkiError::Invalid(format!(
                "relay host {host:?} given twice"
            )));
        }
    }

    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "controller-stub relay CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut ca_params, CA_YEARS);
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let ca_pem = ca_cert.pem();
    let ca_key_pem = ca_key.serialize_pem();
    let issuer = Issuer::new(ca_params, ca_key);

    let leaf = |cn: &str,
                names: Vec<String>,
                eku: ExtendedKeyUsagePurpose|
     -> Result<(String, String), PkiError> {
        let mut params = CertificateParams::new(names)?;
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![eku];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        validity(&mut params, LEAF_YEARS);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    };

    let dir = &options.dir;
    let out = |name: &str, contents: &str, secret: bool, purpose: &str| Output {
        path: dir.join(name),
        contents: contents.to_owned(),
        secret,
        purpose: purpose.to_owned(),
    };
    let (server_pem, server_key) = leaf(
        &server_names[0],
        server_names.clone(),
        ExtendedKeyUsagePurpose::ServerAuth,
    )?;
    let mut files = vec![
        out(
            "ca.pem",
            &ca_pem,
            false,
            "CA certificate (serve --relay-ca)",
        ),
        out(
            "ca.key",
            &ca_key_pem,
            true,
            "CA private key (keep it offline; it issues certificates)",
        ),
        out(
            "server.pem",
            &server_pem,
            false,
            &format!(
                "relay endpoint certificate for {} (serve --relay-cert)",
                server_names.join(", ")
            ),
        ),
        out(
            "server.key",
            &server_key,
            true,
            "relay endpoint private key (serve --relay-key)",
        ),
    ];
    for host in &options.relays {
        let (pem, key) = leaf(
            host,
            vec![host.clone()],
            ExtendedKeyUsagePurpose::ClientAuth,
        )?;
        let sub = format!("relays/{host}");
        files.push(out(
            &format!("{sub}/ca.pem"),
            &ca_pem,
            false,
            &format!("relay {host}: CA certificate (relay-host ca)"),
        ));
        files.push(out(
            &format!("{sub}/relay.pem"),
            &pem,
            false,
            &format!("relay {host}: client certificate (relay-host cert; host = \"{host}\")"),
        ));
        files.push(out(
            &format!("{sub}/relay.key"),
            &key,
            true,
            &format!("relay {host}: client private key (relay-host key)"),
        ));
    }

    if !options.force {
        let existing: Vec<PathBuf> = files
            .iter()
            .filter(|f| f.path.exists())
            .map(|f| f.path.clone())
            .collect();
        if !existing.is_empty() {
            return Err(PkiError::Exists(existing));
        }
    }
    let mut written = Vec::new();
    for f in files {
        write_file(&f)?;
        written.push(Written {
            path: f.path,
            purpose: f.purpose,
        });
    }
    Ok(written)
}

fn write_file(f: &Output) -> Result<(), PkiError> {
    let err = |source| PkiError::Write {
        path: f.path.clone(),
        source,
    };
    let parent = f.path.parent().unwrap_or(Path::new("."));
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(parent)
        .map_err(err)?;
    let name = f
        .path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    // A temporary left by a crashed run is ours to replace.
    let _ = std::fs::remove_file(&tmp);
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(if f.secret { 0o600 } else { 0o644 })
            .open(&tmp)?;
        file.write_all(f.contents.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&tmp, &f.path)
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil(0), (1970, 1, 1));
        assert_eq!(civil(19_782), (2024, 2, 29));
        assert_eq!(civil(-1), (1969, 12, 31));
    }

    #[test]
    fn names_are_checked() {
        assert!(check_relay_host("compute-1.example").is_ok());
        assert!(check_relay_host("compute_1").is_ok());
        for bad in ["", "../x", "a/b", ".hidden", "-x", "a b"] {
            assert!(check_relay_host(bad).is_err(), "{bad}");
        }
        assert!(check_server_name("ctl.example").is_ok());
        assert!(check_server_name("::1").is_ok());
        assert!(check_server_name("not a name").is_err());
    }
}
