//! Mutual TLS material for the uplink: the CA that must have signed the controller, this
//! relay's certificate chain and key, and the rustls client configuration built from them.
//!
//! TLS 1.3 only, with the `ring` provider (no C toolchain beyond what `ring` itself needs, no
//! cmake). Every loading step fails with an error that names the file and says what is wrong
//! with it (unreadable, not PEM, no certificate in it, key does not match the certificate,
//! certificate expired or not yet valid, certificate not usable for client authentication), so
//! that `relay-host check` and a failed start tell the operator what to fix.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, ClientConfig, RootCertStore};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

/// What is wrong with the TLS material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    #[error("{what} {path}: cannot read")]
    Unreadable {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} {path}: not PEM ({reason})")]
    NotPem {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("{what} {path}: no {expected} found in the PEM file")]
    Empty {
        what: &'static str,
        path: PathBuf,
        expected: &'static str,
    },
    #[error("{what} {path}: unusable certificate")]
    BadCertificate {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("key {path}: unsupported or malformed private key")]
    BadKey {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("key {key} does not match the certificate {cert}")]
    KeyMismatch { key: PathBuf, cert: PathBuf },
    #[error("certificate {path}: expired or not yet valid")]
    NotValidNow {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("certificate {path}: not valid for TLS client authentication (extendedKeyUsage)")]
    NotForClientAuth { path: PathBuf },
    #[error("server name {0:?} is neither a DNS name nor an IP address")]
    ServerName(String),
    #[error("TLS configuration")]
    Config(#[source] rustls::Error),
}

/// The crypto provider of every TLS configuration of the relay.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn pem_error(what: &'static str, path: &Path, e: rustls_pki_types::pem::Error) -> TlsError {
    match e {
        rustls_pki_types::pem::Error::Io(source) => TlsError::Unreadable {
            what,
            path: path.to_owned(),
            source,
        },
        other => TlsError::NotPem {
            what,
            path: path.to_owned(),
            reason: other.to_string(),
        },
    }
}

/// Every certificate of a PEM file, in order; at least one.
pub fn load_certs(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    // Read the file first so that "unreadable" and "not PEM" are told apart cleanly.
    let bytes = std::fs::read(path).map_err(|source| TlsError::Unreadable {
        what,
        path: path.to_owned(),
        source,
    })?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(what, path, e))?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            what,
            path: path.to_owned(),
            expected: "CERTIFICATE",
        });
    }
    Ok(certs)
}

/// The trust anchors that verify the controller.
pub fn load_ca(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs("CA", path)? {
        roots.add(cert).map_err(|source| TlsError::BadCertificate {
            what: "CA",
            path: path.to_owned(),
            source,
        })?;
    }
    Ok(roots)
}

/// The first private key of a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = std::fs::read(path).map_err(|source| TlsError::Unreadable {
        what: "key",
        path: path.to_owned(),
        source,
    })?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        rustls_pki_types::pem::Error::NoItemsFound => TlsError::Empty {
            what: "key",
            path: path.to_owned(),
            expected: "PRIVATE KEY",
        },
        other => pem_error("key", path, other),
    })
}

/// What [`load_identity`] found out about the client certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityReport {
    /// Certificates in the chain file (the relay's own first).
    pub chain_len: usize,
    /// Whether the chain leads to the configured CA. When it does not, the controller must trust
    /// the relay certificate's issuer some other way; that is legitimate but worth saying.
    pub signed_by_configured_ca: bool,
}

/// Checks that `key` is the private key of the first certificate of `chain`.
pub fn check_key_matches(
    chain: &[CertificateDer<'static>],
    key: &PrivateKeyDer<'static>,
    cert_path: &Path,
    key_path: &Path,
) -> Result<(), TlsError> {
    CertifiedKey::from_der(chain.to_vec(), key.clone_key(), &provider())
        .map(drop)
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => TlsError::KeyMismatch {
                key: key_path.to_owned(),
                cert: cert_path.to_owned(),
            },
            rustls::Error::InvalidCertificate(_) => TlsError::BadCertificate {
                what: "certificate",
                path: cert_path.to_owned(),
                source: e,
            },
            source => TlsError::BadKey {
                path: key_path.to_owned(),
                source,
            },
        })
}

/// Checks that the client certificate is valid now and usable for client authentication;
/// returns whether it chains to `ca`.
pub fn check_client_cert(
    chain: &[CertificateDer<'static>],
    ca: &RootCertStore,
    cert_path: &Path,
) -> Result<bool, TlsError> {
    let (end_entity, intermediates) = chain.split_first().ok_or_else(|| TlsError::Empty {
        what: "certificate",
        path: cert_path.to_owned(),
        expected: "CERTIFICATE",
    })?;
    // webpki checks the end-entity's own properties (validity period, extended key usage)
    // before it looks for an issuer, so one verification tells all three apart.
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(ca.clone()), provider())
        .build()
        .map_err(|e| TlsError::Config(rustls::Error::General(e.to_string())))?;
    match verifier.verify_client_cert(end_entity, intermediates, UnixTime::now()) {
        Ok(_) => Ok(true),
        Err(rustls::Error::InvalidCertificate(
            CertificateError::UnknownIssuer | CertificateError::BadSignature,
        )) => Ok(false),
        Err(
            e @ rustls::Error::InvalidCertificate(
                CertificateError::Expired
                | CertificateError::ExpiredContext { .. }
                | CertificateError::NotValidYet
                | CertificateError::NotValidYetContext { .. },
            ),
        ) => Err(TlsError::NotValidNow {
            path: cert_path.to_owned(),
            source: e,
        }),
        Err(rustls::Error::InvalidCertificate(
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. },
        )) => Err(TlsError::NotForClientAuth {
            path: cert_path.to_owned(),
        }),
        Err(source) => Err(TlsError::BadCertificate {
            what: "certificate",
            path: cert_path.to_owned(),
            source,
        }),
    }
}

/// Loads the client certificate chain and key and checks that they belong together, that the
/// certificate is valid now and usable for client authentication.
pub fn load_identity(
    cert_path: &Path,
    key_path: &Path,
    ca: &RootCertStore,
) -> Result<Identity, TlsError> {
    let chain = load_certs("certificate", cert_path)?;
    let key = load_key(key_path)?;
    check_key_matches(&chain, &key, cert_path, key_path)?;
    let signed_by_configured_ca = check_client_cert(&chain, ca, cert_path)?;
    Ok(Identity {
        report: IdentityReport {
            chain_len: chain.len(),
            signed_by_configured_ca,
        },
        chain,
        key,
    })
}

/// A client certificate chain and its key, checked by [`load_identity`].
#[derive(Debug)]
pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    pub key: PrivateKeyDer<'static>,
    pub report: IdentityReport,
}

/// The uplink's TLS client configuration: verify the controller against `ca`, present
/// `cert`/`key`.
pub fn client_config(ca: &Path, cert: &Path, key: &Path) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = load_ca(ca)?;
    let identity = load_identity(cert, key, &roots)?;
    let provider = provider();
    let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| TlsError::Config(rustls::Error::General(e.to_string())))?;
    let config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(TlsError::Config)?
        .with_webpki_verifier(verifier)
        .with_client_auth_cert(identity.chain, identity.key)
        .map_err(TlsError::Config)?;
    Ok(Arc::new(config))
}

/// The server name the controller's certificate is checked against.
pub fn server_name(name: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(name.to_owned()).map_err(|_| TlsError::ServerName(name.to_owned()))
}
