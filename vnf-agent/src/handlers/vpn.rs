//! `vpn`: strongSwan IPsec connections with pre-shared keys, in the `ipsec.conf` format.
//!
//! The original daemon wrote controller text into `/etc/ipsec.conf` and `/etc/ipsec.secrets`
//! (world-readable while being written) and restarted ipsec. Here connections are structured:
//! names from `[A-Za-z0-9_-]`, endpoints and subnets parsed with `std::net`, identities and
//! proposals from restricted charsets, so nothing can add a line, a `conn` or an `include`.
//! The pre-shared key may be any text: it is written base64-encoded (`PSK 0s...`), so it
//! never needs quoting. `ipsec.secrets` is created 0600 from its first byte (the temporary
//! file is opened with that mode) and `ipsec.conf` 0644; both are replaced together.
//!
//! We use the classic `ipsec.conf` format rather than `swanctl.conf` because it is what the
//! original daemon and most VNF images ship (the `strongswan-starter` package). Applying is
//! `ipsec rereadsecrets` then `ipsec reload` when the starter runs (its pid file exists),
//! else `ipsec start`. If that fails, both files are put back and, if the daemon was
//! running, it is told to read them again. Without the `ipsec` command the update is rejected.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Arc;

use base64::Engine as _;
use serde::Deserialize;

use super::root::{FileMode, RelPath, Root, Transaction};
use super::runner::{CommandLine, CommandRunner};
use super::validate::{
    check_charset, check_count, check_name, check_text, parse_ip, parse_payload, tool_output, Cidr,
};
use crate::handler::{ConfigUpdate, Handler, Rejection};

/// Largest payload accepted.
pub const MAX_PAYLOAD: usize = 256 * 1024;
/// Most connections.
pub const MAX_CONNECTIONS: usize = 64;
/// Most subnets on one side of a connection.
pub const MAX_SUBNETS: usize = 16;
/// Longest pre-shared key.
pub const MAX_PSK: usize = 256;
/// Where the connections are written (below the root).
pub const CONF_PATH: &str = "/etc/ipsec.conf";
/// Where the pre-shared keys are written (below the root), mode 0600.
pub const SECRETS_PATH: &str = "/etc/ipsec.secrets";
/// Written by the running strongSwan starter.
pub const STARTER_PID_PATH: &str = "/run/starter.charon.pid";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Payload {
    connections: Vec<Connection>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Connection {
    name: String,
    #[serde(default = "default_ike_version")]
    ike_version: u8,
    #[serde(default = "default_left")]
    left: String,
    left_id: Option<String>,
    #[serde(default)]
    left_subnets: Vec<String>,
    right: String,
    right_id: Option<String>,
    #[serde(default)]
    right_subnets: Vec<String>,
    ike: Option<String>,
    esp: Option<String>,
    psk: String,
    #[serde(default)]
    auto: Auto,
}

impl std::fmt::Debug for Connection {
    // Never print the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("name", &self.name)
            .field("left", &self.left)
            .field("right", &self.right)
            .finish_non_exhaustive()
    }
}

fn default_ike_version() -> u8 {
    2
}

fn default_left() -> String {
    "%defaultroute".to_owned()
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Auto {
    #[default]
    Start,
    Add,
    Route,
}

impl Auto {
    fn keyword(self) -> &'static str {
        match self {
            Auto::Start => "start",
            Auto::Add => "add",
            Auto::Route => "route",
        }
    }
}

/// An endpoint: an address, or one of the strongSwan wildcards allowed on that side.
fn check_endpoint(field: &str, value: &str, wildcards: &[&str]) -> Result<(), Rejection> {
    if wildcards.contains(&value) {
        return Ok(());
    }
    parse_ip(field, value).map(drop).map_err(|_| {
        let mut allowed = String::from("an IPv4 or IPv6 address");
        for w in wildcards {
            let _ = write!(allowed, " or {w:?}");
        }
        Rejection::new(format!("{field}: {value:?} is not {allowed}"))
    })
}

/// An IKE identity: an address, `@fqdn`, `fqdn` or `user@fqdn`.
fn check_id(field: &str, value: &str) -> Result<(), Rejection> {
    check_charset(field, value, 128, "[A-Za-z0-9@._:-]", |c| {
        c.is_ascii_alphanumeric() || "@._:-".contains(c)
    })
}

/// Comma-separated proposals like `aes256-sha256-modp2048`, each optionally ending in `!`
/// (strict).
fn check_proposals(field: &str, value: &str) -> Result<(), Rejection> {
    check_charset(
        field,
        value,
        256,
        "[a-z0-9_-] proposals separated by ','",
        |c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_-,!".contains(c),
    )?;
    for proposal in value.split(',') {
        let body = proposal.strip_suffix('!').unwrap_or(proposal);
        if body.is_empty() || body.contains('!') || body.starts_with('-') || body.ends_with('-') {
            return Err(Rejection::new(format!(
                "{field}: {proposal:?} is not a proposal like \"aes256-sha256-modp2048\""
            )));
        }
    }
    Ok(())
}

fn subnets(field: &str, values: &[String]) -> Result<Vec<Cidr>, Rejection> {
    check_count(field, values.len(), MAX_SUBNETS)?;
    values
        .iter()
        .enumerate()
        .map(|(i, s)| Cidr::parse(&format!("{field}[{i}]"), s))
        .collect()
}

fn validate(p: &Payload) -> Result<(), Rejection> {
    check_count("connections", p.connections.len(), MAX_CONNECTIONS)?;
    let mut names = BTreeMap::new();
    let mut selectors: BTreeMap<(String, String), usize> = BTreeMap::new();
    for (i, c) in p.connections.iter().enumerate() {
        let field = |name: &str| format!("connections[{i}].{name}");
        check_name(&field("name"), &c.name, false)?;
        if let Some(j) = names.insert(c.name.as_str(), i) {
            return Err(Rejection::new(format!(
                "{}: {:?} is also the name of connections[{j}]",
                field("name"),
                c.name
            )));
        }
        if !matches!(c.ike_version, 1 | 2) {
            return Err(Rejection::new(format!(
                "{}: {} is not 1 or 2",
                field("ike_version"),
                c.ike_version
            )));
        }
        check_endpoint(&field("left"), &c.left, &["%defaultroute", "%any"])?;
        check_endpoint(&field("right"), &c.right, &["%any"])?;
        if let Some(id) = &c.left_id {
            check_id(&field("left_id"), id)?;
        }
        if let Some(id) = &c.right_id {
            check_id(&field("right_id"), id)?;
        }
        subnets(&field("left_subnets"), &c.left_subnets)?;
        subnets(&field("right_subnets"), &c.right_subnets)?;
        if let Some(ike) = &c.ike {
            check_proposals(&field("ike"), ike)?;
        }
        if let Some(esp) = &c.esp {
            check_proposals(&field("esp"), esp)?;
        }
        check_text(&field("psk"), &c.psk, MAX_PSK)?;
        // strongSwan picks the key by the pair of identities; two different keys for the same
        // pair would make one connection fail to authenticate.
        if let Some(j) = selectors.insert(secret_selector(c), i) {
            if p.connections[j].psk != c.psk {
                return Err(Rejection::new(format!(
                    "connections[{i}]: same identities as connections[{j}] but a different psk"
                )));
            }
        }
    }
    Ok(())
}

/// The identities a secret is selected by: the configured IDs, else the endpoint addresses.
fn secret_selector(c: &Connection) -> (String, String) {
    let local = match (&c.left_id, c.left.parse::<IpAddr>()) {
        (Some(id), _) => id.clone(),
        (None, Ok(addr)) => addr.to_string(),
        (None, Err(_)) => "%any".to_owned(),
    };
    let remote = c.right_id.clone().unwrap_or_else(|| c.right.clone());
    (local, remote)
}

fn join(cidrs: &[String]) -> String {
    // Already validated; render the canonical form.
    cidrs
        .iter()
        .filter_map(|s| Cidr::parse("", s).ok())
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

const HEADER: &str = "# Generated by vnf-agent from the controller's VPN configuration.\n\
                      # Do not edit: the next update replaces it.\n";

fn render_conf(p: &Payload) -> String {
    let mut out = format!("{HEADER}config setup\n");
    for c in &p.connections {
        let _ = writeln!(out, "\nconn {}", c.name);
        let _ = writeln!(out, "\tkeyexchange=ikev{}", c.ike_version);
        let _ = writeln!(out, "\tauthby=secret");
        let _ = writeln!(out, "\tleft={}", c.left);
        if let Some(id) = &c.left_id {
            let _ = writeln!(out, "\tleftid={id}");
        }
        if !c.left_subnets.is_empty() {
            let _ = writeln!(out, "\tleftsubnet={}", join(&c.left_subnets));
        }
        let _ = writeln!(out, "\tright={}", c.right);
        if let Some(id) = &c.right_id {
            let _ = writeln!(out, "\trightid={id}");
        }
        if !c.right_subnets.is_empty() {
            let _ = writeln!(out, "\trightsubnet={}", join(&c.right_subnets));
        }
        if let Some(ike) = &c.ike {
            let _ = writeln!(out, "\tike={ike}");
        }
        if let Some(esp) = &c.esp {
            let _ = writeln!(out, "\tesp={esp}");
        }
        let _ = writeln!(out, "\tauto={}", c.auto.keyword());
    }
    out
}

fn render_secrets(p: &Payload) -> String {
    let mut out = HEADER.to_owned();
    let mut seen = std::collections::BTreeSet::new();
    for c in &p.connections {
        let (local, remote) = secret_selector(c);
        if seen.insert((local.clone(), remote.clone())) {
            let key = base64::engine::general_purpose::STANDARD.encode(c.psk.as_bytes());
            let _ = writeln!(out, "{local} {remote} : PSK 0s{key}");
        }
    }
    out
}

/// Parses, validates and renders a VPN payload to `(ipsec.conf, ipsec.secrets)` text.
pub fn render_payload(payload: &[u8]) -> Result<(String, String), Rejection> {
    let payload: Payload = parse_payload("vpn", payload, MAX_PAYLOAD)?;
    validate(&payload)?;
    Ok((render_conf(&payload), render_secrets(&payload)))
}

/// Applies `vpn` payloads to strongSwan.
#[derive(Debug)]
pub struct VpnHandler {
    root: Root,
    runner: Arc<dyn CommandRunner>,
}

impl VpnHandler {
    pub fn new(root: Root, runner: Arc<dyn CommandRunner>) -> VpnHandler {
        VpnHandler { root, runner }
    }

    fn ipsec(&self, verb: &str) -> Result<(), Rejection> {
        let cmd = CommandLine::new("ipsec").arg(verb);
        let out = self
            .runner
            .run(&cmd)
            .map_err(|e| Rejection::new(format!("could not run {cmd}: {e}")))?;
        if out.success {
            Ok(())
        } else {
            Err(Rejection::new(format!(
                "{cmd} failed: {}",
                tool_output(&out.stdout, &out.stderr)
            )))
        }
    }

    fn load(&self, running: bool) -> Result<(), Rejection> {
        if running {
            self.ipsec("rereadsecrets")?;
            self.ipsec("reload")
        } else {
            self.ipsec("start")
        }
    }
}

impl Handler for VpnHandler {
    fn apply(&mut self, update: &ConfigUpdate) -> Result<(), Rejection> {
        let (conf, secrets) = render_payload(&update.payload)?;
        if !self.runner.is_installed("ipsec") {
            return Err(Rejection::new(
                "strongSwan is not installed (no ipsec command): the configuration cannot be applied",
            ));
        }
        let running = match self.root.read(&RelPath::fixed(STARTER_PID_PATH), 64) {
            Ok(found) => found.is_some(),
            Err(e) => return Err(Rejection::new(format!("vpn: {e}"))),
        };
        let mut tx = Transaction::new(&self.root);
        let stage = |tx: &mut Transaction<'_>, path, text: &str, mode| {
            tx.stage(
                &RelPath::fixed(path),
                text.as_bytes(),
                FileMode::Exact(mode),
            )
            .map(drop)
            .map_err(|e| Rejection::new(format!("vpn: {e}")))
        };
        stage(&mut tx, SECRETS_PATH, &secrets, 0o600)?;
        stage(&mut tx, CONF_PATH, &conf, 0o644)?;
        let committed = tx
            .commit()
            .map_err(|e| Rejection::new(format!("vpn: {e}")))?;
        match self.load(running) {
            Ok(()) => {
                committed.finish();
                Ok(())
            }
            Err(e) => {
                let restored = committed.rollback();
                if restored.is_ok() && running {
                    // Best effort: the daemon may have read the new secrets already.
                    let _ = self.load(true);
                }
                Err(match restored {
                    Ok(()) => Rejection::new(format!(
                        "{e}; the previous configuration files were restored"
                    )),
                    Err(r) => Rejection::new(format!("{e}; and {r}")),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::runner::CommandOutput;
    use crate::handlers::testing::{update, FakeRunner, TestDir, HOSTILE};
    use std::os::unix::fs::PermissionsExt;

    fn handler(t: &TestDir, fake: &FakeRunner) -> VpnHandler {
        VpnHandler::new(t.root.clone(), fake.arc())
    }

    const VALID: &str = r#"{"connections": [
        {"name": "branch-1", "left_id": "@gw.example.com", "left_subnets": ["10.1.0.0/24", "2001:db8:1::/48"],
         "right": "198.51.100.7", "right_subnets": ["10.2.0.0/24"],
         "ike": "aes256-sha256-modp2048!", "esp": "aes256gcm16,aes128-sha256",
         "psk": "correct horse \"battery\" staple; $(rm -rf /)"},
        {"name": "legacy", "ike_version": 1, "left": "192.0.2.10", "right": "%any",
         "auto": "add", "psk": "s3cret"}
    ]}"#;

    const GOLDEN_CONF: &str = "\
# Generated by vnf-agent from the controller's VPN configuration.
# Do not edit: the next update replaces it.
config setup

conn branch-1
\tkeyexchange=ikev2
\tauthby=secret
\tleft=%defaultroute
\tleftid=@gw.example.com
\tleftsubnet=10.1.0.0/24,2001:db8:1::/48
\tright=198.51.100.7
\trightsubnet=10.2.0.0/24
\tike=aes256-sha256-modp2048!
\tesp=aes256gcm16,aes128-sha256
\tauto=start

conn legacy
\tkeyexchange=ikev1
\tauthby=secret
\tleft=192.0.2.10
\tright=%any
\tauto=add
";

    const GOLDEN_SECRETS: &str = "\
# Generated by vnf-agent from the controller's VPN configuration.
# Do not edit: the next update replaces it.
@gw.example.com 198.51.100.7 : PSK 0sY29ycmVjdCBob3JzZSAiYmF0dGVyeSIgc3RhcGxlOyAkKHJtIC1yZiAvKQ==
192.0.2.10 %any : PSK 0sczNjcmV0
";

    fn mode(t: &TestDir, rel: &str) -> u32 {
        t.path(rel).metadata().unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn valid_connections_render_golden_files_with_safe_modes_and_reload() {
        let t = TestDir::new();
        t.write(STARTER_PID_PATH, "4242\n");
        // A world-readable secrets file left by the old daemon is replaced by a 0600 one.
        t.write(SECRETS_PATH, "old\n");
        std::fs::set_permissions(t.path(SECRETS_PATH), PermissionsExt::from_mode(0o644)).unwrap();
        let fake = FakeRunner::with_installed(&["ipsec"]);
        handler(&t, &fake).apply(&update("vpn", VALID)).unwrap();
        assert_eq!(t.read(CONF_PATH), GOLDEN_CONF);
        assert_eq!(t.read(SECRETS_PATH), GOLDEN_SECRETS);
        assert_eq!(mode(&t, SECRETS_PATH), 0o600);
        assert_eq!(mode(&t, CONF_PATH), 0o644);
        assert_eq!(
            fake.calls_shown(&t.root),
            ["ipsec rereadsecrets", "ipsec reload"]
        );
        assert_eq!(
            t.root_files(),
            [
                "/etc/ipsec.conf",
                "/etc/ipsec.secrets",
                "/run/starter.charon.pid"
            ]
        );
        fake.assert_no_shell(&["ipsec"], HOSTILE);
        fake.assert_no_shell(&["ipsec"], &["horse", "s3cret"]);
    }

    #[test]
    fn a_stopped_daemon_is_started() {
        let t = TestDir::new();
        let fake = FakeRunner::with_installed(&["ipsec"]);
        handler(&t, &fake).apply(&update("vpn", VALID)).unwrap();
        assert_eq!(fake.calls_shown(&t.root), ["ipsec start"]);
    }

    #[test]
    fn a_failing_reload_restores_both_files() {
        let t = TestDir::new();
        t.write(STARTER_PID_PATH, "4242\n");
        t.write(CONF_PATH, "previous conf\n");
        t.write(SECRETS_PATH, "previous secrets\n");
        std::fs::set_permissions(t.path(SECRETS_PATH), PermissionsExt::from_mode(0o600)).unwrap();
        let fake = FakeRunner::with_installed(&["ipsec"]);
        fake.respond(
            "ipsec reload",
            CommandOutput::failed("charon is not running"),
        );
        let err = handler(&t, &fake).apply(&update("vpn", VALID)).unwrap_err();
        assert_eq!(
            err.0,
            "ipsec reload failed: charon is not running; the previous configuration files were restored"
        );
        assert_eq!(t.read(CONF_PATH), "previous conf\n");
        assert_eq!(t.read(SECRETS_PATH), "previous secrets\n");
        assert_eq!(mode(&t, SECRETS_PATH), 0o600);
        assert_eq!(
            t.root_files(),
            [
                "/etc/ipsec.conf",
                "/etc/ipsec.secrets",
                "/run/starter.charon.pid"
            ]
        );
        // The daemon was told to read the restored files again.
        assert_eq!(
            fake.calls_shown(&t.root),
            [
                "ipsec rereadsecrets",
                "ipsec reload",
                "ipsec rereadsecrets",
                "ipsec reload"
            ]
        );
    }

    #[test]
    fn without_strongswan_the_update_is_rejected() {
        let t = TestDir::new();
        let fake = FakeRunner::with_installed(&[]);
        let err = handler(&t, &fake).apply(&update("vpn", VALID)).unwrap_err();
        assert!(err.0.starts_with("strongSwan is not installed"), "{err}");
        assert!(t.root_files().is_empty());
    }

    fn rejected(connection: &str) -> String {
        let t = TestDir::new();
        let before = t.outside_snapshot();
        let fake = FakeRunner::with_installed(&["ipsec"]);
        let payload = format!(r#"{{"connections": [{connection}]}}"#);
        let err = handler(&t, &fake)
            .apply(&update("vpn", payload))
            .unwrap_err();
        assert!(
            t.root_snapshot().is_empty(),
            "nothing written for {connection}"
        );
        assert_eq!(t.outside_snapshot(), before);
        assert!(fake.calls().is_empty());
        err.0
    }

    fn conn(extra: &str) -> String {
        format!(r#"{{"name": "c", "right": "198.51.100.7", "psk": "k", {extra}}}"#)
    }

    #[test]
    fn injection_into_every_rendered_field_is_rejected_naming_it() {
        for hostile in HOSTILE
            .iter()
            .chain(&["x\nconn evil", "x\ninclude /etc/shadow", "a b"])
        {
            let h = serde_json::to_string(hostile).unwrap();
            for field in ["left", "left_id", "right_id", "ike", "esp"] {
                let msg = rejected(&conn(&format!(r#""{field}": {h}"#)));
                assert!(
                    msg.starts_with(&format!("connections[0].{field}: ")),
                    "{field}={hostile:?}: {msg}"
                );
            }
            let msg = rejected(&format!(r#"{{"name": {h}, "right": "::1", "psk": "k"}}"#));
            assert!(
                msg.starts_with("connections[0].name: "),
                "{hostile:?}: {msg}"
            );
            let msg = rejected(&format!(r#"{{"name": "c", "right": {h}, "psk": "k"}}"#));
            assert!(
                msg.starts_with("connections[0].right: "),
                "{hostile:?}: {msg}"
            );
            let msg = rejected(&conn(&format!(r#""right_subnets": ["10.0.0.0/8", {h}]"#)));
            assert!(
                msg.starts_with("connections[0].right_subnets[1]: "),
                "{hostile:?}: {msg}"
            );
        }
        // A key may hold any printable text (it is base64-encoded) but no line break.
        let msg = rejected(r#"{"name": "c", "right": "::1", "psk": "k\n%any : PSK x"}"#);
        assert_eq!(
            msg,
            "connections[0].psk: contains the control character U+000A"
        );
        let msg = rejected(&conn(r#""ike": "aes256!!""#));
        assert!(msg.contains("is not a proposal"), "{msg}");
        let msg = rejected(&conn(r#""also": "x""#));
        assert!(msg.contains("unknown field `also`"), "{msg}");
    }

    #[test]
    fn inconsistent_and_oversized_connections_are_rejected() {
        let msg = rejected(&format!(
            "{},{}",
            conn(r#""auto": "add""#),
            conn(r#""auto": "add""#)
        ));
        assert_eq!(
            msg,
            "connections[1].name: \"c\" is also the name of connections[0]"
        );
        let msg = rejected(&conn(r#""ike_version": 3"#));
        assert_eq!(msg, "connections[0].ike_version: 3 is not 1 or 2");
        let msg = rejected(&format!(
            r#"{},{{"name": "d", "right": "198.51.100.7", "psk": "other"}}"#,
            conn(r#""auto": "add""#)
        ));
        assert_eq!(
            msg,
            "connections[1]: same identities as connections[0] but a different psk"
        );
        let msg = rejected(&conn(&format!(
            r#""auto": "add", "x": "{}""#,
            "a".repeat(MAX_PAYLOAD)
        )));
        assert!(msg.starts_with("vpn payload is "), "{msg}");
        let subnets = vec![r#""10.0.0.0/8""#; MAX_SUBNETS + 1].join(",");
        let msg = rejected(&conn(&format!(r#""left_subnets": [{subnets}]"#)));
        assert_eq!(
            msg,
            "connections[0].left_subnets: 17 entries, the limit is 16"
        );
        let msg = rejected(&format!(
            r#"{{"name": "c", "right": "::1", "psk": "{}"}}"#,
            "k".repeat(MAX_PSK + 1)
        ));
        assert_eq!(msg, "connections[0].psk: 257 bytes, the limit is 256");
        let many: Vec<String> = (0..=MAX_CONNECTIONS)
            .map(|i| format!(r#"{{"name": "c{i}", "right": "::1", "psk": "k"}}"#))
            .collect();
        assert_eq!(
            rejected(&many.join(",")),
            "connections: 65 entries, the limit is 64"
        );
    }

    #[test]
    fn a_symlinked_secrets_file_is_refused() {
        let t = TestDir::new();
        std::fs::create_dir(t.path("/etc")).unwrap();
        std::os::unix::fs::symlink(t.outside().join("shadow"), t.path(SECRETS_PATH)).unwrap();
        let before = t.outside_snapshot();
        let fake = FakeRunner::with_installed(&["ipsec"]);
        let err = handler(&t, &fake).apply(&update("vpn", VALID)).unwrap_err();
        assert_eq!(
            err.0,
            "vpn: /etc/ipsec.secrets is a symbolic link; links are never followed"
        );
        assert_eq!(t.outside_snapshot(), before);
        assert!(!t.path(CONF_PATH).exists(), "all or nothing");
        assert!(fake.calls().is_empty());
    }
}
