//! `firewall`: structured rules rendered to an nftables ruleset and applied atomically.
//!
//! The original daemon ran `iptables -F` and then one `iptables -A ...` per rule through
//! `os.system`, concatenating controller strings into shell commands, so a failed rule left a
//! half-built firewall and a crafted address ran arbitrary commands. Here the payload is
//! parsed into typed rules (addresses with `std::net`, ports as numbers, verdicts from an
//! enum), rendered into one file that owns a dedicated table (`table inet vnf_firewall`,
//! deleted and recreated inside the file so `nft -f` replaces it in one kernel transaction),
//! checked with `nft -c -f`, then applied with `nft -f`. If the check or the apply fails,
//! the kernel keeps the previous ruleset and `/etc/vnf-agent/firewall.nft` the previous file.
//! Only nftables is supported: an iptables-restore backend would own the whole `filter`
//! table and need a second, non-atomic `ip6tables-restore` for IPv6.

use std::fmt::Write as _;
use std::sync::Arc;

use serde::Deserialize;

use super::root::{FileMode, RelPath, Root, Transaction};
use super::runner::{CommandLine, CommandRunner};
use super::validate::{check_charset, check_count, parse_payload, tool_output, Cidr};
use crate::handler::{ConfigUpdate, Handler, Rejection};

/// Largest payload accepted.
pub const MAX_PAYLOAD: usize = 1024 * 1024;
/// Most rules in one ruleset.
pub const MAX_RULES: usize = 1024;
/// Longest rule comment.
pub const MAX_COMMENT: usize = 64;
/// Where the applied ruleset is kept (below the root).
pub const RULESET_PATH: &str = "/etc/vnf-agent/firewall.nft";
/// The nftables table the agent owns; nothing else in the ruleset is touched.
pub const TABLE: &str = "vnf_firewall";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Payload {
    rules: Vec<RuleIn>,
    #[serde(default)]
    default_policy: Policies,
    #[serde(default = "yes")]
    allow_established: bool,
}

fn yes() -> bool {
    true
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Policies {
    #[serde(default)]
    input: Policy,
    #[serde(default)]
    forward: Policy,
    #[serde(default)]
    output: Policy,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Policy {
    #[default]
    Accept,
    Drop,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleIn {
    position: Option<u32>,
    action: Action,
    protocol: Protocol,
    source: Option<String>,
    destination: Option<String>,
    source_port: Option<String>,
    destination_port: Option<String>,
    #[serde(default, alias = "direction")]
    chain: Chain,
    comment: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Action {
    Accept,
    Drop,
    Reject,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Protocol {
    Tcp,
    Udp,
    Icmp,
    Any,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Chain {
    Input,
    #[default]
    Forward,
    Output,
}

impl Chain {
    const ALL: [Chain; 3] = [Chain::Input, Chain::Forward, Chain::Output];

    fn name(self) -> &'static str {
        match self {
            Chain::Input => "input",
            Chain::Forward => "forward",
            Chain::Output => "output",
        }
    }
}

/// An inclusive port range, `lo == hi` for a single port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ports {
    lo: u16,
    hi: u16,
}

impl Ports {
    /// `"80"`, `"1024-65535"` or Neutron's `"1024:65535"`.
    fn parse(field: &str, value: &str) -> Result<Ports, Rejection> {
        let bad = || {
            Rejection::new(format!(
                "{field}: {value:?} is not a port (1-65535) or a range \"N-M\""
            ))
        };
        let number = |s: &str| -> Result<u16, Rejection> {
            if s.is_empty() || s.len() > 5 || !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            match s.parse::<u16>() {
                Ok(n) if n > 0 => Ok(n),
                _ => Err(bad()),
            }
        };
        let (lo, hi) = match value.split_once(['-', ':']) {
            Some((a, b)) => (number(a)?, number(b)?),
            None => (number(value)?, number(value)?),
        };
        if lo > hi {
            return Err(Rejection::new(format!(
                "{field}: {value:?} is an empty range (start above end)"
            )));
        }
        Ok(Ports { lo, hi })
    }
}

impl std::fmt::Display for Ports {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Rule {
    position: Option<u32>,
    action: Action,
    protocol: Protocol,
    source: Option<Cidr>,
    destination: Option<Cidr>,
    source_port: Option<Ports>,
    destination_port: Option<Ports>,
    chain: Chain,
    comment: Option<String>,
}

/// A validated ruleset, rules in application order.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Ruleset {
    rules: Vec<Rule>,
    policies: [Policy; 3],
    allow_established: bool,
}

fn validate(payload: Payload) -> Result<Ruleset, Rejection> {
    check_count("rules", payload.rules.len(), MAX_RULES)?;
    let mut rules = Vec::with_capacity(payload.rules.len());
    let mut positions = std::collections::BTreeMap::new();
    for (i, r) in payload.rules.into_iter().enumerate() {
        let field = |name: &str| format!("rules[{i}].{name}");
        if let Some(p) = r.position {
            if let Some(j) = positions.insert(p, i) {
                return Err(Rejection::new(format!(
                    "{}: {p} is also the position of rules[{j}]",
                    field("position")
                )));
            }
        }
        let source = r
            .source
            .as_deref()
            .map(|s| Cidr::parse(&field("source"), s))
            .transpose()?;
        let destination = r
            .destination
            .as_deref()
            .map(|s| Cidr::parse(&field("destination"), s))
            .transpose()?;
        if let (Some(s), Some(d)) = (source, destination) {
            if s.is_ipv4() != d.is_ipv4() {
                return Err(Rejection::new(format!(
                    "rules[{i}]: source {s} and destination {d} are of different address families"
                )));
            }
        }
        let ports = |name: &str, value: Option<String>| -> Result<Option<Ports>, Rejection> {
            let Some(value) = value else { return Ok(None) };
            if !matches!(r.protocol, Protocol::Tcp | Protocol::Udp) {
                return Err(Rejection::new(format!(
                    "{}: ports need protocol \"tcp\" or \"udp\"",
                    field(name)
                )));
            }
            Ports::parse(&field(name), &value).map(Some)
        };
        let source_port = ports("source_port", r.source_port)?;
        let destination_port = ports("destination_port", r.destination_port)?;
        if let Some(c) = &r.comment {
            // Rendered inside double quotes, and nft strings have no escapes: a charset with
            // no quote, backslash or shell metacharacter keeps the comment inert anywhere.
            check_charset(
                &field("comment"),
                c,
                MAX_COMMENT,
                "letters, digits, space and _.,:/+=@-",
                |c| c.is_ascii_alphanumeric() || " _.,:/+=@-".contains(c),
            )?;
        }
        rules.push(Rule {
            position: r.position,
            action: r.action,
            protocol: r.protocol,
            source,
            destination,
            source_port,
            destination_port,
            chain: r.chain,
            comment: r.comment,
        });
    }
    // Like the original: by position; rules without one follow, in payload order.
    rules.sort_by_key(|r| (r.position.is_none(), r.position));
    let p = payload.default_policy;
    Ok(Ruleset {
        rules,
        policies: [p.input, p.forward, p.output],
        allow_established: payload.allow_established,
    })
}

fn render_rule(r: &Rule) -> String {
    let mut parts: Vec<String> = Vec::new();
    let v4 = r.source.or(r.destination).map(|c| c.is_ipv4());
    let family = match v4 {
        Some(true) => "ip",
        _ => "ip6",
    };
    if let Some(s) = r.source {
        parts.push(format!("{family} saddr {s}"));
    }
    if let Some(d) = r.destination {
        parts.push(format!("{family} daddr {d}"));
    }
    let l4 = match r.protocol {
        Protocol::Tcp => Some("tcp"),
        Protocol::Udp => Some("udp"),
        Protocol::Icmp => {
            parts.push(
                match v4 {
                    Some(true) => "meta l4proto icmp",
                    Some(false) => "meta l4proto ipv6-icmp",
                    None => "meta l4proto { icmp, ipv6-icmp }",
                }
                .to_owned(),
            );
            None
        }
        Protocol::Any => None,
    };
    if let Some(l4) = l4 {
        if r.source_port.is_none() && r.destination_port.is_none() {
            parts.push(format!("meta l4proto {l4}"));
        }
        if let Some(p) = r.source_port {
            parts.push(format!("{l4} sport {p}"));
        }
        if let Some(p) = r.destination_port {
            parts.push(format!("{l4} dport {p}"));
        }
    }
    parts.push("counter".to_owned());
    parts.push(
        match r.action {
            Action::Accept => "accept",
            Action::Drop => "drop",
            Action::Reject => "reject",
        }
        .to_owned(),
    );
    if let Some(c) = &r.comment {
        parts.push(format!("comment \"{c}\""));
    }
    parts.join(" ")
}

fn render(set: &Ruleset) -> String {
    let mut out = String::new();
    // `table` then `delete table` makes the delete succeed whether or not the table exists,
    // and the whole file is one transaction: the table is replaced, never seen half-built.
    let _ = writeln!(
        out,
        "# Generated by vnf-agent from the controller's firewall configuration.\n\
         # Do not edit: the next update replaces it.\n\
         table inet {TABLE}\n\
         delete table inet {TABLE}\n\
         table inet {TABLE} {{"
    );
    for (chain, policy) in Chain::ALL.iter().zip(set.policies) {
        let name = chain.name();
        let policy = match policy {
            Policy::Accept => "accept",
            Policy::Drop => "drop",
        };
        let _ = writeln!(out, "\tchain {name} {{");
        let _ = writeln!(
            out,
            "\t\ttype filter hook {name} priority 0; policy {policy};"
        );
        if set.allow_established {
            let _ = writeln!(out, "\t\tct state established,related accept");
        }
        for rule in set.rules.iter().filter(|r| r.chain == *chain) {
            let _ = writeln!(out, "\t\t{}", render_rule(rule));
        }
        let _ = writeln!(out, "\t}}");
    }
    out.push_str("}\n");
    out
}

/// Parses, validates and renders a firewall payload to the nftables ruleset text.
pub fn render_payload(payload: &[u8]) -> Result<String, Rejection> {
    let payload: Payload = parse_payload("firewall", payload, MAX_PAYLOAD)?;
    Ok(render(&validate(payload)?))
}

/// Applies `firewall` payloads with `nft`.
#[derive(Debug)]
pub struct FirewallHandler {
    root: Root,
    runner: Arc<dyn CommandRunner>,
}

impl FirewallHandler {
    pub fn new(root: Root, runner: Arc<dyn CommandRunner>) -> FirewallHandler {
        FirewallHandler { root, runner }
    }

    fn nft(&self, args: &[&std::ffi::OsStr], what: &str) -> Result<(), Rejection> {
        let mut cmd = CommandLine::new("nft");
        for a in args {
            cmd = cmd.arg(a);
        }
        let out = self
            .runner
            .run(&cmd)
            .map_err(|e| Rejection::new(format!("could not run nft: {e}")))?;
        if out.success {
            Ok(())
        } else {
            Err(Rejection::new(format!(
                "{what}: {}",
                tool_output(&out.stdout, &out.stderr)
            )))
        }
    }
}

impl Handler for FirewallHandler {
    fn apply(&mut self, update: &ConfigUpdate) -> Result<(), Rejection> {
        let text = render_payload(&update.payload)?;
        if !self.runner.is_installed("nft") {
            return Err(Rejection::new("no firewall backend (nft) installed"));
        }
        let path = RelPath::fixed(RULESET_PATH);
        let mut tx = Transaction::new(&self.root);
        let staged = tx
            .stage(&path, text.as_bytes(), FileMode::Exact(0o644))
            .map_err(|e| Rejection::new(format!("firewall: {e}")))?;
        self.nft(
            &["-c".as_ref(), "-f".as_ref(), staged.as_os_str()],
            "nft rejected the ruleset",
        )?;
        let committed = tx
            .commit()
            .map_err(|e| Rejection::new(format!("firewall: {e}")))?;
        let applied = self.root.host_path(&path);
        match self.nft(
            &["-f".as_ref(), applied.as_os_str()],
            "nft failed to apply the ruleset",
        ) {
            Ok(()) => {
                committed.finish();
                Ok(())
            }
            Err(e) => {
                // nft -f is one transaction: the kernel still has the previous ruleset, so
                // the file must say so too.
                let restored = committed.rollback();
                Err(match restored {
                    Ok(()) => e,
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

    const NFT: &[&str] = &["nft"];

    fn handler(t: &TestDir, fake: &FakeRunner) -> FirewallHandler {
        FirewallHandler::new(t.root.clone(), fake.arc())
    }

    const VALID: &str = r#"{
        "rules": [
            {"position": 20, "action": "drop", "protocol": "any", "source": "192.0.2.0/24"},
            {"position": 10, "action": "accept", "protocol": "tcp", "source": "10.0.0.0/8",
             "destination": "10.1.2.3", "destination_port": "443", "comment": "web in"},
            {"action": "reject", "protocol": "udp", "source_port": "1024:65535",
             "destination_port": "53", "direction": "output"},
            {"position": 5, "action": "accept", "protocol": "icmp", "chain": "input"},
            {"position": 7, "action": "accept", "protocol": "tcp", "destination": "2001:db8::/32",
             "destination_port": "8000-8080"},
            {"position": 8, "action": "accept", "protocol": "icmp", "source": "2001:db8::1"}
        ],
        "default_policy": {"forward": "drop"}
    }"#;

    const GOLDEN: &str = "\
# Generated by vnf-agent from the controller's firewall configuration.
# Do not edit: the next update replaces it.
table inet vnf_firewall
delete table inet vnf_firewall
table inet vnf_firewall {
\tchain input {
\t\ttype filter hook input priority 0; policy accept;
\t\tct state established,related accept
\t\tmeta l4proto { icmp, ipv6-icmp } counter accept
\t}
\tchain forward {
\t\ttype filter hook forward priority 0; policy drop;
\t\tct state established,related accept
\t\tip6 daddr 2001:db8::/32 tcp dport 8000-8080 counter accept
\t\tip6 saddr 2001:db8::1 meta l4proto ipv6-icmp counter accept
\t\tip saddr 10.0.0.0/8 ip daddr 10.1.2.3 tcp dport 443 counter accept comment \"web in\"
\t\tip saddr 192.0.2.0/24 counter drop
\t}
\tchain output {
\t\ttype filter hook output priority 0; policy accept;
\t\tct state established,related accept
\t\tudp sport 1024-65535 udp dport 53 counter reject
\t}
}
";

    #[test]
    fn valid_rules_render_the_golden_ruleset_and_run_nft_check_then_apply() {
        let t = TestDir::new();
        let fake = FakeRunner::with_installed(NFT);
        handler(&t, &fake)
            .apply(&update("firewall", VALID))
            .unwrap();
        assert_eq!(t.read(RULESET_PATH), GOLDEN);
        assert_eq!(
            fake.calls_shown(&t.root),
            [
                "nft -c -f <root>/etc/vnf-agent/.firewall.nft.vnf-agent-tmp",
                "nft -f <root>/etc/vnf-agent/firewall.nft",
            ]
        );
        assert_eq!(t.root_files(), ["/etc/vnf-agent/firewall.nft"]);
        fake.assert_no_shell(NFT, HOSTILE);
    }

    #[test]
    fn an_empty_ruleset_flushes_the_table() {
        let text = render_payload(br#"{"rules": [], "allow_established": false}"#).unwrap();
        assert!(text.contains(
            "\tchain forward {\n\t\ttype filter hook forward priority 0; policy accept;\n\t}\n"
        ));
    }

    #[test]
    fn a_failing_check_keeps_the_previous_ruleset() {
        let t = TestDir::new();
        t.write(RULESET_PATH, "previous\n");
        let fake = FakeRunner::with_installed(NFT);
        fake.respond(
            "nft -c",
            CommandOutput::failed("Error: Could not process rule: No such file or directory"),
        );
        let err = handler(&t, &fake)
            .apply(&update("firewall", VALID))
            .unwrap_err();
        assert_eq!(
            err.0,
            "nft rejected the ruleset: Error: Could not process rule: No such file or directory"
        );
        assert_eq!(t.read(RULESET_PATH), "previous\n");
        assert_eq!(fake.calls().len(), 1, "never applied");
        assert_eq!(t.root_files(), ["/etc/vnf-agent/firewall.nft"]);
    }

    #[test]
    fn a_failing_apply_restores_the_previous_file() {
        let t = TestDir::new();
        t.write(RULESET_PATH, "previous\n");
        let fake = FakeRunner::with_installed(NFT);
        fake.respond("nft -f", CommandOutput::failed("netlink: Error: busy"));
        let err = handler(&t, &fake)
            .apply(&update("firewall", VALID))
            .unwrap_err();
        assert_eq!(
            err.0,
            "nft failed to apply the ruleset: netlink: Error: busy"
        );
        assert_eq!(t.read(RULESET_PATH), "previous\n");
        assert_eq!(t.root_files(), ["/etc/vnf-agent/firewall.nft"]);
    }

    #[test]
    fn without_nft_the_update_is_rejected_and_nothing_written() {
        let t = TestDir::new();
        let fake = FakeRunner::with_installed(&[]);
        let err = handler(&t, &fake)
            .apply(&update("firewall", VALID))
            .unwrap_err();
        assert_eq!(err.0, "no firewall backend (nft) installed");
        assert!(t.root_files().is_empty());
        assert!(fake.calls().is_empty());
    }

    fn rejected(rule: &str) -> String {
        let t = TestDir::new();
        let before = t.outside_snapshot();
        let fake = FakeRunner::with_installed(NFT);
        let payload = format!(r#"{{"rules": [{rule}]}}"#);
        let err = handler(&t, &fake)
            .apply(&update("firewall", payload))
            .unwrap_err();
        assert!(t.root_snapshot().is_empty(), "nothing written for {rule}");
        assert_eq!(t.outside_snapshot(), before);
        assert!(fake.calls().is_empty(), "no command run for {rule}");
        err.0
    }

    #[test]
    fn shell_metacharacters_and_newlines_are_rejected_naming_the_field() {
        let base = r#""action": "accept", "protocol": "tcp""#;
        for hostile in HOSTILE {
            let h = serde_json::to_string(hostile).unwrap();
            for field in ["source", "destination"] {
                let msg = rejected(&format!(r#"{{{base}, "{field}": {h}}}"#));
                assert!(
                    msg.starts_with(&format!("rules[0].{field}: ")),
                    "{field}={hostile:?}: {msg}"
                );
            }
            for field in ["source_port", "destination_port"] {
                let msg = rejected(&format!(r#"{{{base}, "{field}": {h}}}"#));
                assert!(
                    msg.starts_with(&format!("rules[0].{field}: ")),
                    "{field}={hostile:?}: {msg}"
                );
            }
            let msg = rejected(&format!(r#"{{{base}, "comment": {h}}}"#));
            assert!(msg.starts_with("rules[0].comment: "), "{hostile:?}: {msg}");
        }
        // Addresses followed by a command, a quote closing the comment, an unknown verdict.
        let msg = rejected(&format!(
            r#"{{{base}, "source": "10.0.0.0/8 accept; drop"}}"#
        ));
        assert_eq!(
            msg,
            "rules[0].source: \"10.0.0.0/8 accept; drop\" has prefix length \"8 accept; drop\"; \
             expected 0 to 32"
        );
        let msg = rejected(&format!(r#"{{{base}, "destination": "10.0.0.1 accept"}}"#));
        assert_eq!(
            msg,
            "rules[0].destination: \"10.0.0.1 accept\" is not an IPv4 or IPv6 address or CIDR"
        );
        let msg = rejected(&format!(r#"{{{base}, "comment": "x\" ; flush ruleset"}}"#));
        assert!(msg.starts_with("rules[0].comment: "), "{msg}");
        let msg = rejected(r#"{"action": "accept; flush ruleset", "protocol": "tcp"}"#);
        assert!(
            msg.starts_with("firewall payload: rules[0].action: unknown variant"),
            "{msg}"
        );
        let msg = rejected(r#"{"action": "jump", "protocol": "tcp"}"#);
        assert!(msg.contains("rules[0].action"), "{msg}");
        let msg = rejected(&format!(r#"{{{base}, "chain": "prerouting"}}"#));
        assert!(msg.contains("rules[0].chain"), "{msg}");
        let msg = rejected(&format!(r#"{{{base}, "table": "filter"}}"#));
        assert!(msg.contains("unknown field `table`"), "{msg}");
    }

    #[test]
    fn semantic_errors_name_the_rule() {
        let msg = rejected(r#"{"action": "accept", "protocol": "icmp", "destination_port": "80"}"#);
        assert_eq!(
            msg,
            "rules[0].destination_port: ports need protocol \"tcp\" or \"udp\""
        );
        let msg = rejected(
            r#"{"action": "accept", "protocol": "any", "source": "10.0.0.0/8", "destination": "::1"}"#,
        );
        assert!(msg.contains("different address families"), "{msg}");
        let msg = rejected(r#"{"action": "accept", "protocol": "tcp", "source_port": "90-80"}"#);
        assert!(msg.contains("empty range"), "{msg}");
        for bad in ["0", "65536", "+80", "80-", "-80", "1-2-3", " 80"] {
            let msg = rejected(&format!(
                r#"{{"action": "accept", "protocol": "tcp", "destination_port": "{bad}"}}"#
            ));
            assert!(
                msg.starts_with("rules[0].destination_port: "),
                "{bad}: {msg}"
            );
        }
        let msg = rejected(
            r#"{"position": 1, "action": "accept", "protocol": "tcp"},
               {"position": 1, "action": "drop", "protocol": "tcp"}"#,
        );
        assert_eq!(msg, "rules[1].position: 1 is also the position of rules[0]");
    }

    #[test]
    fn oversized_rulesets_and_payloads_are_rejected() {
        let rule = r#"{"action": "accept", "protocol": "any"}"#;
        let many = vec![rule; MAX_RULES + 1].join(",");
        assert_eq!(rejected(&many), "rules: 1025 entries, the limit is 1024");
        let t = TestDir::new();
        let fake = FakeRunner::with_installed(NFT);
        let huge = format!(r#"{{"rules": [], "x": "{}"}}"#, "a".repeat(MAX_PAYLOAD));
        let err = handler(&t, &fake)
            .apply(&update("firewall", huge))
            .unwrap_err();
        assert!(err.0.starts_with("firewall payload is 1048"), "{err}");
        assert!(err.0.ends_with("bytes, the limit is 1048576"), "{err}");
        let long_comment = format!(
            r#"{{"action": "accept", "protocol": "any", "comment": "{}"}}"#,
            "a".repeat(MAX_COMMENT + 1)
        );
        assert_eq!(
            rejected(&long_comment),
            "rules[0].comment: 65 bytes, the limit is 64"
        );
    }

    #[test]
    fn a_symlinked_config_directory_is_refused_and_the_target_untouched() {
        let t = TestDir::new();
        std::fs::create_dir(t.path("/etc")).unwrap();
        std::os::unix::fs::symlink(t.outside(), t.path("/etc/vnf-agent")).unwrap();
        let before = t.outside_snapshot();
        let fake = FakeRunner::with_installed(NFT);
        let err = handler(&t, &fake)
            .apply(&update("firewall", VALID))
            .unwrap_err();
        assert_eq!(
            err.0,
            "firewall: /etc/vnf-agent is a symbolic link; links are never followed"
        );
        assert_eq!(t.outside_snapshot(), before);
        assert!(fake.calls().is_empty());
    }
}
