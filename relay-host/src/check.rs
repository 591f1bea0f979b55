//! `relay-host check`: everything the daemon needs, tried once, one line per check.
//!
//! The checks run in dependency order (configuration, CA, certificate, key, libvirt,
//! controller) and each says what is wrong in terms an operator can act on. A check whose
//! inputs failed is reported as not tried rather than failing with a confusing second error.

use std::fmt;
use std::time::Duration;

use crate::config::{Config, ConfigError};
use crate::tls::{self, TlsError};
use crate::uplink::{self, ProbeOutcome};
use crate::{error_chain, libvirt_config};

/// How long the controller check waits in all.
const CONTROLLER_TIMEOUT: Duration = Duration::from_secs(15);

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckLine {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

impl CheckLine {
    fn ok(name: &'static str, detail: impl Into<String>) -> CheckLine {
        CheckLine {
            name,
            ok: true,
            detail: detail.into(),
        }
    }

    fn fail(name: &'static str, detail: impl Into<String>) -> CheckLine {
        CheckLine {
            name,
            ok: false,
            detail: detail.into(),
        }
    }
}

impl fmt::Display for CheckLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let verdict = if self.ok { "ok" } else { "FAIL" };
        write!(f, "{verdict:<4}  {:<10}  {}", self.name, self.detail)
    }
}

/// The line for a configuration that did not load.
pub fn config_failed(e: &ConfigError) -> CheckLine {
    CheckLine::fail("config", error_chain(e))
}

/// Runs every check on a loaded configuration.
pub async fn check(config: &Config) -> Vec<CheckLine> {
    let mut lines = vec![CheckLine::ok(
        "config",
        format!(
            "host {:?}, controller {} (server name {}), libvirt {}, channel {}",
            config.host, config.controller, config.server_name, config.libvirt_uri, config.channel
        ),
    )];

    let roots = match tls::load_ca(&config.ca) {
        Ok(roots) => {
            lines.push(CheckLine::ok(
                "ca",
                format!("{}: {} certificate(s)", config.ca.display(), roots.len()),
            ));
            Some(roots)
        }
        Err(e) => {
            lines.push(CheckLine::fail("ca", error_chain(&e)));
            None
        }
    };

    let chain = tls::load_certs("certificate", &config.cert);
    let key = tls::load_key(&config.key);
    let mut identity_ok = false;
    match (&chain, &roots) {
        (Err(e), _) => lines.push(CheckLine::fail("cert", error_chain(e))),
        (Ok(_), None) => lines.push(CheckLine::fail(
            "cert",
            format!(
                "{}: not verified (the CA file is unusable)",
                config.cert.display()
            ),
        )),
        (Ok(chain), Some(roots)) => match tls::check_client_cert(chain, roots, &config.cert) {
            Ok(signed) => {
                identity_ok = true;
                let issuer = if signed {
                    "issued under the configured CA"
                } else {
                    "not issued under the configured CA (the controller must trust its issuer)"
                };
                lines.push(CheckLine::ok(
                    "cert",
                    format!(
                        "{}: {} certificate(s), valid now, usable for client authentication, {issuer}",
                        config.cert.display(),
                        chain.len()
                    ),
                ));
            }
            Err(e) => lines.push(CheckLine::fail("cert", error_chain(&e))),
        },
    }
    match (&key, &chain) {
        (Err(e), _) => {
            identity_ok = false;
            lines.push(CheckLine::fail("key", error_chain(e)));
        }
        (Ok(_), Err(_)) => {
            identity_ok = false;
            lines.push(CheckLine::fail(
                "key",
                format!(
                    "{}: not matched (the certificate is unusable)",
                    config.key.display()
                ),
            ));
        }
        (Ok(key), Ok(chain)) => {
            match tls::check_key_matches(chain, key, &config.cert, &config.key) {
                Ok(()) => lines.push(CheckLine::ok(
                    "key",
                    format!("{}: matches the certificate", config.key.display()),
                )),
                Err(e) => {
                    identity_ok = false;
                    lines.push(CheckLine::fail("key", error_chain(&e)));
                }
            }
        }
    }

    lines.push(check_libvirt(config).await);

    if identity_ok {
        lines.push(check_controller(config).await);
    } else {
        lines.push(CheckLine::fail(
            "controller",
            format!(
                "{}: not tried (fix the TLS material first)",
                config.controller
            ),
        ));
    }
    lines
}

async fn check_libvirt(config: &Config) -> CheckLine {
    let libvirt = libvirt_config(config);
    let uri = libvirt.uri.clone();
    let channel = libvirt.channel.clone();
    // libvirt calls block; keep them off the runtime's workers.
    match tokio::task::spawn_blocking(move || crate::libvirt::check(&libvirt)).await {
        Ok(Ok(guests)) => CheckLine::ok(
            "libvirt",
            format!(
                "{uri}: {} running guest(s) with channel {channel}",
                guests.len()
            ),
        ),
        Ok(Err(e)) => CheckLine::fail("libvirt", error_chain(&e)),
        Err(e) => CheckLine::fail("libvirt", format!("{uri}: the check panicked: {e}")),
    }
}

async fn check_controller(config: &Config) -> CheckLine {
    let probe = async {
        let tls = tls::client_config(&config.ca, &config.cert, &config.key)
            .map_err(|e| error_chain(&e as &TlsError))?;
        let name = tls::server_name(&config.server_name).map_err(|e| error_chain(&e))?;
        uplink::probe(&config.controller, name, tls)
            .await
            .map_err(|e| error_chain(&e))
    };
    match tokio::time::timeout(CONTROLLER_TIMEOUT, probe).await {
        Ok(Ok(ProbeOutcome::Answered)) => CheckLine::ok(
            "controller",
            format!(
                "{}: mutual TLS handshake done, controller speaks the uplink protocol",
                config.controller
            ),
        ),
        Ok(Ok(ProbeOutcome::Silent)) => CheckLine::ok(
            "controller",
            format!(
                "{}: mutual TLS handshake done (the controller sent nothing yet)",
                config.controller
            ),
        ),
        Ok(Err(e)) => CheckLine::fail("controller", e),
        Err(_) => CheckLine::fail(
            "controller",
            format!(
                "{}: no answer within {CONTROLLER_TIMEOUT:?}",
                config.controller
            ),
        ),
    }
}
