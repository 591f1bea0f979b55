//! `loadbalancer`: structured frontends and backends rendered to `haproxy.cfg`.
//!
//! The original daemon wrote a controller-rendered `haproxy.cfg` verbatim and restarted
//! haproxy with `killall -9 haproxy; haproxy -f ...`, dropping every connection. Accepting raw
//! configuration text would let the controller inject any directive (`external-check command`,
//! Lua, `setenv`...), so the payload is structured instead: names from a safe charset,
//! addresses parsed with `std::net` or checked as DNS names, numbers as numbers, modes and
//! balance algorithms from allow-lists. Nothing from the controller can start a new line or a
//! new keyword in the rendered file.
//!
//! The file is staged next to `/etc/haproxy/haproxy.cfg`, validated with `haproxy -c -f`, moved
//! into place, and haproxy is reloaded gracefully: `systemctl reload-or-restart haproxy.service`
//! when systemd runs the guest, else `haproxy -D -f <cfg> -p <pidfile> -sf <old pids>` (the new
//! process takes over the listeners and the old ones finish their connections). If the reload
//! fails the previous file is put back. Without haproxy the update is rejected: a configuration
//! that can be neither validated nor applied must not be acknowledged as applied.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::Arc;

use serde::Deserialize;

use super::root::{FileMode, RelPath, Root, Transaction};
use super::runner::{CommandLine, CommandRunner};
use super::validate::{check_count, check_host, check_name, parse_ip, parse_payload, tool_output};
use crate::handler::{ConfigUpdate, Handler, Rejection};

/// Largest payload accepted.
pub const MAX_PAYLOAD: usize = 256 * 1024;
/// Most frontends, and most backends.
pub const MAX_PROXIES: usize = 64;
/// Most servers in one backend.
pub const MAX_SERVERS: usize = 256;
/// Where haproxy's configuration is written (below the root).
pub const CONFIG_PATH: &str = "/etc/haproxy/haproxy.cfg";
/// The pid file of a haproxy started without systemd.
pub const PID_PATH: &str = "/run/haproxy.pid";
/// Present when systemd manages the guest (what `sd_booted()` checks).
const SYSTEMD_PATH: &str = "/run/systemd/system";
/// Longest timeout, in milliseconds (one hour).
const MAX_TIMEOUT_MS: u32 = 3_600_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Payload {
    #[serde(default)]
    frontends: Vec<Frontend>,
    #[serde(default)]
    backends: Vec<Backend>,
    #[serde(default)]
    timeouts: Timeouts,
    #[serde(default = "default_max_connections")]
    max_connections: u32,
}

fn default_max_connections() -> u32 {
    4096
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Frontend {
    name: String,
    address: String,
    port: u16,
    #[serde(default)]
    mode: ProxyMode,
    default_backend: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Backend {
    name: String,
    #[serde(default)]
    mode: ProxyMode,
    #[serde(default)]
    balance: Balance,
    #[serde(default)]
    servers: Vec<Server>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Server {
    name: String,
    host: String,
    port: u16,
    weight: Option<u16>,
    #[serde(default = "yes")]
    check: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Timeouts {
    #[serde(default = "default_connect")]
    connect_ms: u32,
    #[serde(default = "default_idle")]
    client_ms: u32,
    #[serde(default = "default_idle")]
    server_ms: u32,
}

fn default_connect() -> u32 {
    5_000
}

fn default_idle() -> u32 {
    50_000
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts {
            connect_ms: default_connect(),
            client_ms: default_idle(),
            server_ms: default_idle(),
        }
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum ProxyMode {
    #[default]
    Tcp,
    Http,
}

impl ProxyMode {
    fn keyword(self) -> &'static str {
        match self {
            ProxyMode::Tcp => "tcp",
            ProxyMode::Http => "http",
        }
    }
}

/// The balance algorithms that take no argument.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum Balance {
    #[default]
    Roundrobin,
    StaticRr,
    Leastconn,
    First,
    Source,
}

impl Balance {
    fn keyword(self) -> &'static str {
        match self {
            Balance::Roundrobin => "roundrobin",
            Balance::StaticRr => "static-rr",
            Balance::Leastconn => "leastconn",
            Balance::First => "first",
            Balance::Source => "source",
        }
    }
}

/// `address:port` as haproxy reads it: the port follows the last colon, also for IPv6.
fn socket(host: &str, port: u16) -> String {
    format!("{host}:{port}")
}

fn check_port(field: &str, port: u16) -> Result<(), Rejection> {
    if port == 0 {
        return Err(Rejection::new(format!(
            "{field}: 0 is not a port (1-65535)"
        )));
    }
    Ok(())
}

fn check_timeout(field: &str, ms: u32) -> Result<(), Rejection> {
    if !(1..=MAX_TIMEOUT_MS).contains(&ms) {
        return Err(Rejection::new(format!(
            "{field}: {ms} is outside 1 to {MAX_TIMEOUT_MS} milliseconds"
        )));
    }
    Ok(())
}

fn validate(p: &Payload) -> Result<(), Rejection> {
    check_count("frontends", p.frontends.len(), MAX_PROXIES)?;
    check_count("backends", p.backends.len(), MAX_PROXIES)?;
    if !(1..=1_000_000).contains(&p.max_connections) {
        return Err(Rejection::new(format!(
            "max_connections: {} is outside 1 to 1000000",
            p.max_connections
        )));
    }
    check_timeout("timeouts.connect_ms", p.timeouts.connect_ms)?;
    check_timeout("timeouts.client_ms", p.timeouts.client_ms)?;
    check_timeout("timeouts.server_ms", p.timeouts.server_ms)?;

    // haproxy proxies share one namespace.
    let mut names: BTreeMap<&str, String> = BTreeMap::new();
    let mut backends: BTreeMap<&str, ProxyMode> = BTreeMap::new();
    for (i, b) in p.backends.iter().enumerate() {
        let field = format!("backends[{i}]");
        check_name(&format!("{field}.name"), &b.name, true)?;
        if let Some(other) = names.insert(&b.name, field.clone()) {
            return Err(Rejection::new(format!(
                "{field}.name: {:?} is also the name of {other}",
                b.name
            )));
        }
        backends.insert(&b.name, b.mode);
        check_count(&format!("{field}.servers"), b.servers.len(), MAX_SERVERS)?;
        let mut servers: BTreeMap<&str, usize> = BTreeMap::new();
        for (j, s) in b.servers.iter().enumerate() {
            let sf = format!("{field}.servers[{j}]");
            check_name(&format!("{sf}.name"), &s.name, true)?;
            if let Some(k) = servers.insert(&s.name, j) {
                return Err(Rejection::new(format!(
                    "{sf}.name: {:?} is also the name of {field}.servers[{k}]",
                    s.name
                )));
            }
            check_host(&format!("{sf}.host"), &s.host)?;
            check_port(&format!("{sf}.port"), s.port)?;
            if let Some(w) = s.weight {
                if w > 256 {
                    return Err(Rejection::new(format!(
                        "{sf}.weight: {w} is outside 0 to 256"
                    )));
                }
            }
        }
    }
    let mut binds: BTreeMap<(IpAddr, u16), usize> = BTreeMap::new();
    for (i, f) in p.frontends.iter().enumerate() {
        let field = format!("frontends[{i}]");
        check_name(&format!("{field}.name"), &f.name, true)?;
        if let Some(other) = names.insert(&f.name, field.clone()) {
            return Err(Rejection::new(format!(
                "{field}.name: {:?} is also the name of {other}",
                f.name
            )));
        }
        let addr = parse_ip(&format!("{field}.address"), &f.address)?;
        check_port(&format!("{field}.port"), f.port)?;
        if let Some(j) = binds.insert((addr, f.port), i) {
            return Err(Rejection::new(format!(
                "{field}: {} is also bound by frontends[{j}]",
                socket(&f.address, f.port)
            )));
        }
        check_name(
            &format!("{field}.default_backend"),
            &f.default_backend,
            true,
        )?;
        match backends.get(f.default_backend.as_str()) {
            None => {
                return Err(Rejection::new(format!(
                    "{field}.default_backend: there is no backend {:?}",
                    f.default_backend
                )))
            }
            Some(mode) if *mode != f.mode => {
                return Err(Rejection::new(format!(
                    "{field}.default_backend: backend {:?} is in mode {}, the frontend in mode {}",
                    f.default_backend,
                    mode.keyword(),
                    f.mode.keyword()
                )))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

fn render(p: &Payload) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# Generated by vnf-agent from the controller's load balancer configuration.\n\
         # Do not edit: the next update replaces it.\n\
         global\n\
         \tmaxconn {}\n\
         \n\
         defaults\n\
         \ttimeout connect {}ms\n\
         \ttimeout client {}ms\n\
         \ttimeout server {}ms",
        p.max_connections, p.timeouts.connect_ms, p.timeouts.client_ms, p.timeouts.server_ms
    );
    for f in &p.frontends {
        // The address was parsed by std::net: render its canonical form.
        let addr = f
            .address
            .parse::<IpAddr>()
            .map_or(f.address.clone(), |a| a.to_string());
        let _ = writeln!(
            out,
            "\nfrontend {}\n\tmode {}\n\tbind {}\n\tdefault_backend {}",
            f.name,
            f.mode.keyword(),
            socket(&addr, f.port),
            f.default_backend
        );
    }
    for b in &p.backends {
        let _ = writeln!(
            out,
            "\nbackend {}\n\tmode {}\n\tbalance {}",
            b.name,
            b.mode.keyword(),
            b.balance.keyword()
        );
        for s in &b.servers {
            let mut line = format!("\tserver {} {}", s.name, socket(&s.host, s.port));
            if let Some(w) = s.weight {
                let _ = write!(line, " weight {w}");
            }
            if s.check {
                line.push_str(" check");
            }
            let _ = writeln!(out, "{line}");
        }
    }
    out
}

/// Parses, validates and renders a load balancer payload to haproxy.cfg text.
pub fn render_payload(payload: &[u8]) -> Result<String, Rejection> {
    let payload: Payload = parse_payload("loadbalancer", payload, MAX_PAYLOAD)?;
    validate(&payload)?;
    Ok(render(&payload))
}

/// Applies `loadbalancer` payloads to haproxy.
#[derive(Debug)]
pub struct LoadBalancerHandler {
    root: Root,
    runner: Arc<dyn CommandRunner>,
}

impl LoadBalancerHandler {
    pub fn new(root: Root, runner: Arc<dyn CommandRunner>) -> LoadBalancerHandler {
        LoadBalancerHandler { root, runner }
    }

    fn run(&self, cmd: &CommandLine, what: &str) -> Result<(), Rejection> {
        let out = self
            .runner
            .run(cmd)
            .map_err(|e| Rejection::new(format!("could not run {}: {e}", cmd.program)))?;
        if out.success {
            Ok(())
        } else {
            Err(Rejection::new(format!(
                "{what}: {}",
                tool_output(&out.stdout, &out.stderr)
            )))
        }
    }

    /// The graceful reload command, decided before anything is replaced.
    fn reload_command(&self) -> Result<CommandLine, Rejection> {
        if self.root.is_dir(&RelPath::fixed(SYSTEMD_PATH)) && self.runner.is_installed("systemctl")
        {
            return Ok(CommandLine::new("systemctl")
                .arg("reload-or-restart")
                .arg("haproxy.service"));
        }
        let pid_path = RelPath::fixed(PID_PATH);
        let pids = match self.root.read(&pid_path, 4096) {
            Ok(Some(bytes)) => parse_pids(&bytes).ok_or_else(|| {
                Rejection::new(format!(
                    "{PID_PATH} does not hold process ids; cannot hand over from the running haproxy"
                ))
            })?,
            Ok(None) => Vec::new(),
            Err(e) => return Err(Rejection::new(format!("loadbalancer: {e}"))),
        };
        let mut cmd = CommandLine::new("haproxy")
            .arg("-D")
            .arg("-f")
            .arg(self.root.host_path(&RelPath::fixed(CONFIG_PATH)))
            .arg("-p")
            .arg(self.root.host_path(&pid_path));
        if !pids.is_empty() {
            // `-sf` takes the rest of the command line.
            cmd = cmd.arg("-sf");
            for pid in pids {
                cmd = cmd.arg(pid.to_string());
            }
        }
        Ok(cmd)
    }
}

/// Whitespace-separated process ids above 1, at least one; `None` for anything else.
fn parse_pids(bytes: &[u8]) -> Option<Vec<u32>> {
    let text = std::str::from_utf8(bytes).ok()?;
    let pids = text
        .split_ascii_whitespace()
        .map(|w| {
            w.bytes()
                .all(|b| b.is_ascii_digit())
                .then(|| w.parse::<u32>().ok())
                .flatten()
                .filter(|p| *p > 1)
        })
        .collect::<Option<Vec<u32>>>()?;
    (!pids.is_empty() && pids.len() <= 64).then_some(pids)
}

impl Handler for LoadBalancerHandler {
    fn apply(&mut self, update: &ConfigUpdate) -> Result<(), Rejection> {
        let text = render_payload(&update.payload)?;
        if !self.runner.is_installed("haproxy") {
            return Err(Rejection::new(
                "haproxy is not installed: the configuration can be neither validated nor applied",
            ));
        }
        let reload = self.reload_command()?;
        let mut tx = Transaction::new(&self.root);
        let staged = tx
            .stage(
                &RelPath::fixed(CONFIG_PATH),
                text.as_bytes(),
                FileMode::Exact(0o644),
            )
            .map_err(|e| Rejection::new(format!("loadbalancer: {e}")))?;
        self.run(
            &CommandLine::new("haproxy").arg("-c").arg("-f").arg(staged),
            "haproxy rejected the configuration",
        )?;
        let committed = tx
            .commit()
            .map_err(|e| Rejection::new(format!("loadbalancer: {e}")))?;
        match self.run(&reload, "haproxy reload failed") {
            Ok(()) => {
                committed.finish();
                Ok(())
            }
            Err(e) => Err(match committed.rollback() {
                Ok(()) => {
                    Rejection::new(format!("{e}; the previous configuration file was restored"))
                }
                Err(r) => Rejection::new(format!("{e}; and {r}")),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handlers::runner::CommandOutput;
    use crate::handlers::testing::{update, FakeRunner, TestDir, HOSTILE};

    const TOOLS: &[&str] = &["haproxy", "systemctl"];

    fn handler(t: &TestDir, fake: &FakeRunner) -> LoadBalancerHandler {
        LoadBalancerHandler::new(t.root.clone(), fake.arc())
    }

    const VALID: &str = r#"{
        "frontends": [
            {"name": "web", "address": "0.0.0.0", "port": 80, "mode": "http",
             "default_backend": "web-pool"},
            {"name": "db", "address": "::", "port": 5432, "default_backend": "db.pool"}
        ],
        "backends": [
            {"name": "web-pool", "mode": "http", "balance": "leastconn", "servers": [
                {"name": "web1", "host": "10.0.0.11", "port": 8080, "weight": 10},
                {"name": "web2", "host": "app-2.internal", "port": 8080, "check": false}
            ]},
            {"name": "db.pool", "balance": "source", "servers": [
                {"name": "db1", "host": "2001:db8::5", "port": 5432}
            ]}
        ],
        "timeouts": {"client_ms": 30000},
        "max_connections": 2000
    }"#;

    const GOLDEN: &str = "\
# Generated by vnf-agent from the controller's load balancer configuration.
# Do not edit: the next update replaces it.
global
\tmaxconn 2000

defaults
\ttimeout connect 5000ms
\ttimeout client 30000ms
\ttimeout server 50000ms

frontend web
\tmode http
\tbind 0.0.0.0:80
\tdefault_backend web-pool

frontend db
\tmode tcp
\tbind :::5432
\tdefault_backend db.pool

backend web-pool
\tmode http
\tbalance leastconn
\tserver web1 10.0.0.11:8080 weight 10 check
\tserver web2 app-2.internal:8080

backend db.pool
\tmode tcp
\tbalance source
\tserver db1 2001:db8::5:5432 check
";

    #[test]
    fn valid_config_renders_golden_text_validates_then_reloads_with_systemd() {
        let t = TestDir::new();
        std::fs::create_dir_all(t.path("/run/systemd/system")).unwrap();
        let fake = FakeRunner::with_installed(TOOLS);
        handler(&t, &fake)
            .apply(&update("loadbalancer", VALID))
            .unwrap();
        assert_eq!(t.read(CONFIG_PATH), GOLDEN);
        assert_eq!(
            fake.calls_shown(&t.root),
            [
                "haproxy -c -f <root>/etc/haproxy/.haproxy.cfg.vnf-agent-tmp",
                "systemctl reload-or-restart haproxy.service",
            ]
        );
        assert_eq!(t.root_files(), ["/etc/haproxy/haproxy.cfg"]);
        fake.assert_no_shell(TOOLS, HOSTILE);
    }

    #[test]
    fn without_systemd_haproxy_takes_over_from_the_old_pids() {
        let t = TestDir::new();
        t.write(PID_PATH, "1234\n1235\n");
        let fake = FakeRunner::with_installed(TOOLS);
        handler(&t, &fake)
            .apply(&update("loadbalancer", VALID))
            .unwrap();
        assert_eq!(
            fake.calls_shown(&t.root)[1],
            "haproxy -D -f <root>/etc/haproxy/haproxy.cfg -p <root>/run/haproxy.pid -sf 1234 1235"
        );
        // First start: no pid file, no -sf.
        std::fs::remove_file(t.path(PID_PATH)).unwrap();
        let fake = FakeRunner::with_installed(&["haproxy"]);
        handler(&t, &fake)
            .apply(&update("loadbalancer", VALID))
            .unwrap();
        assert_eq!(
            fake.calls_shown(&t.root)[1],
            "haproxy -D -f <root>/etc/haproxy/haproxy.cfg -p <root>/run/haproxy.pid"
        );
    }

    #[test]
    fn a_garbage_pid_file_is_refused_before_anything_changes() {
        let t = TestDir::new();
        t.write(PID_PATH, "1234; kill -9 1\n");
        t.write(CONFIG_PATH, "previous\n");
        let fake = FakeRunner::with_installed(&["haproxy"]);
        let err = handler(&t, &fake)
            .apply(&update("loadbalancer", VALID))
            .unwrap_err();
        assert!(
            err.0
                .starts_with("/run/haproxy.pid does not hold process ids"),
            "{err}"
        );
        assert_eq!(t.read(CONFIG_PATH), "previous\n");
        assert!(fake.calls().is_empty());
        assert_eq!(parse_pids(b"1"), None);
        assert_eq!(parse_pids(b""), None);
        assert_eq!(parse_pids(b"+5"), None);
        assert_eq!(parse_pids(b" 7 8\n"), Some(vec![7, 8]));
    }

    #[test]
    fn a_failing_check_keeps_the_previous_config() {
        let t = TestDir::new();
        t.write(CONFIG_PATH, "previous\n");
        let fake = FakeRunner::with_installed(TOOLS);
        fake.respond(
            "haproxy -c",
            CommandOutput::failed("[ALERT] config : parsing [x:3] : unknown keyword 'bind'"),
        );
        let err = handler(&t, &fake)
            .apply(&update("loadbalancer", VALID))
            .unwrap_err();
        assert_eq!(
            err.0,
            "haproxy rejected the configuration: [ALERT] config : parsing [x:3] : unknown keyword 'bind'"
        );
        assert_eq!(t.read(CONFIG_PATH), "previous\n");
        assert_eq!(t.root_files(), ["/etc/haproxy/haproxy.cfg"]);
        assert_eq!(fake.calls().len(), 1, "no reload");
    }

    #[test]
    fn a_failing_reload_restores_the_previous_config() {
        let t = TestDir::new();
        t.write(CONFIG_PATH, "previous\n");
        let fake = FakeRunner::with_installed(TOOLS);
        fake.respond("haproxy -D", CommandOutput::failed("cannot bind socket"));
        let err = handler(&t, &fake)
            .apply(&update("loadbalancer", VALID))
            .unwrap_err();
        assert_eq!(
            err.0,
            "haproxy reload failed: cannot bind socket; the previous configuration file was restored"
        );
        assert_eq!(t.read(CONFIG_PATH), "previous\n");
        assert_eq!(t.root_files(), ["/etc/haproxy/haproxy.cfg"]);
    }

    #[test]
    fn without_haproxy_the_update_is_rejected() {
        let t = TestDir::new();
        let fake = FakeRunner::with_installed(&["systemctl"]);
        let err = handler(&t, &fake)
            .apply(&update("loadbalancer", VALID))
            .unwrap_err();
        assert!(err.0.starts_with("haproxy is not installed"), "{err}");
        assert!(t.root_files().is_empty());
        assert!(fake.calls().is_empty());
    }

    fn rejected(payload: &str) -> String {
        let t = TestDir::new();
        let before = t.outside_snapshot();
        let fake = FakeRunner::with_installed(TOOLS);
        let err = handler(&t, &fake)
            .apply(&update("loadbalancer", payload.to_owned()))
            .unwrap_err();
        assert!(
            t.root_snapshot().is_empty(),
            "nothing written for {payload}"
        );
        assert_eq!(t.outside_snapshot(), before);
        assert!(fake.calls().is_empty());
        err.0
    }

    fn with_backend(backend: &str) -> String {
        format!(r#"{{"backends": [{backend}]}}"#)
    }

    #[test]
    fn directive_injection_and_shell_metacharacters_are_rejected() {
        for hostile in HOSTILE.iter().chain(&[
            "web\n\texternal-check command /bin/sh",
            "web lua-load /tmp/x.lua",
            "web#",
        ]) {
            let h = serde_json::to_string(hostile).unwrap();
            let msg = rejected(&with_backend(&format!(r#"{{"name": {h}}}"#)));
            assert!(msg.starts_with("backends[0].name: "), "{hostile:?}: {msg}");
            let msg = rejected(&with_backend(&format!(
                r#"{{"name": "b", "servers": [{{"name": "s", "host": {h}, "port": 80}}]}}"#
            )));
            assert!(
                msg.starts_with("backends[0].servers[0].host: "),
                "{hostile:?}: {msg}"
            );
            let msg = rejected(&with_backend(&format!(
                r#"{{"name": "b", "servers": [{{"name": {h}, "host": "h", "port": 80}}]}}"#
            )));
            assert!(
                msg.starts_with("backends[0].servers[0].name: "),
                "{hostile:?}: {msg}"
            );
            let msg = rejected(&format!(
                r#"{{"frontends": [{{"name": "f", "address": {h}, "port": 80, "default_backend": "b"}}],
                    "backends": [{{"name": "b"}}]}}"#
            ));
            assert!(
                msg.starts_with("frontends[0].address: "),
                "{hostile:?}: {msg}"
            );
        }
        let msg = rejected(&with_backend(r#"{"name": "b", "balance": "uri whole"}"#));
        assert!(
            msg.starts_with("loadbalancer payload: backends[0].balance: unknown variant"),
            "{msg}"
        );
        let msg = rejected(r#"{"global": "daemon\nlua-load /x"}"#);
        assert!(msg.contains("unknown field `global`"), "{msg}");
        let msg = rejected(r#"{"raw": "frontend x"}"#);
        assert!(msg.contains("unknown field `raw`"), "{msg}");
    }

    #[test]
    fn inconsistent_configs_are_rejected_naming_the_field() {
        let msg = rejected(
            r#"{"frontends": [{"name": "f", "address": "0.0.0.0", "port": 80, "default_backend": "nope"}]}"#,
        );
        assert_eq!(
            msg,
            "frontends[0].default_backend: there is no backend \"nope\""
        );
        let msg = rejected(
            r#"{"frontends": [{"name": "f", "address": "0.0.0.0", "port": 80, "mode": "http", "default_backend": "b"}],
                "backends": [{"name": "b"}]}"#,
        );
        assert!(
            msg.contains("is in mode tcp, the frontend in mode http"),
            "{msg}"
        );
        let msg = rejected(r#"{"backends": [{"name": "b"}, {"name": "b"}]}"#);
        assert_eq!(
            msg,
            "backends[1].name: \"b\" is also the name of backends[0]"
        );
        let msg = rejected(&with_backend(
            r#"{"name": "b", "servers": [{"name": "s", "host": "h", "port": 0}]}"#,
        ));
        assert_eq!(
            msg,
            "backends[0].servers[0].port: 0 is not a port (1-65535)"
        );
        let msg = rejected(&with_backend(
            r#"{"name": "b", "servers": [{"name": "s", "host": "h", "port": 70000}]}"#,
        ));
        assert!(msg.contains("backends[0].servers[0].port"), "{msg}");
        let msg = rejected(&with_backend(
            r#"{"name": "b", "servers": [{"name": "s", "host": "h", "port": 1, "weight": 257}]}"#,
        ));
        assert_eq!(
            msg,
            "backends[0].servers[0].weight: 257 is outside 0 to 256"
        );
        let msg = rejected(r#"{"timeouts": {"client_ms": 0}}"#);
        assert_eq!(
            msg,
            "timeouts.client_ms: 0 is outside 1 to 3600000 milliseconds"
        );
    }

    #[test]
    fn oversized_configs_are_rejected() {
        let server = r#"{"name": "s", "host": "h", "port": 1}"#;
        let servers = vec![server; MAX_SERVERS + 1].join(",");
        let msg = rejected(&with_backend(&format!(
            r#"{{"name": "b", "servers": [{servers}]}}"#
        )));
        assert_eq!(msg, "backends[0].servers: 257 entries, the limit is 256");
        let backends: Vec<String> = (0..=MAX_PROXIES)
            .map(|i| format!(r#"{{"name": "b{i}"}}"#))
            .collect();
        let msg = rejected(&format!(r#"{{"backends": [{}]}}"#, backends.join(",")));
        assert_eq!(msg, "backends: 65 entries, the limit is 64");
        let msg = rejected(&with_backend(&format!(
            r#"{{"name": "{}"}}"#,
            "b".repeat(65)
        )));
        assert_eq!(msg, "backends[0].name: 65 bytes, the limit is 64");
        let msg = rejected(&" ".repeat(MAX_PAYLOAD + 1));
        assert_eq!(
            msg,
            "loadbalancer payload is 262145 bytes, the limit is 262144"
        );
    }
}
