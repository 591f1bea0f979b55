//! The side-effect boundary: what the programmer needs from an Open vSwitch bridge, and the
//! real implementation that runs `ovs-vsctl` and `ovs-ofctl`.
//!
//! Everything on the bridge is handled in `ovs-ofctl`'s own text forms. Desired flows and groups
//! are rendered to text ([`super::render`]) and canonicalised by `ovs-ofctl` itself
//! (`parse-flows`, `parse-group`: offline, no bridge involved), which yields exactly the form
//! `dump-flows`/`dump-groups` print; comparing those strings is how the programmer tells an
//! unchanged flow from a changed one without re-implementing OVS's normalisation (`mod_dl_dst`
//! dumps as `set_field:...->eth_dst`, `mod_vlan_vid` as `push_vlan` + `set_field`, ...).
//!
//! OpenFlow 1.5 throughout: 1.3 silently drops a select group's `selection_method` and
//! `fields(...)` (checked with OVS 3.1), and bundles are native from 1.4 on. The bridge must
//! allow it (`protocols` unset, or including `OpenFlow15`).

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use relay_protocol::Uuid;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use super::render::{parse_dumped_flow, parse_parsed_flow, BundleOp, CanonicalFlow, RenderedFlow};
use super::OvsError;

/// How long one `ovs-vsctl`/`ovs-ofctl` run may take before it is killed.
const TOOL_TIMEOUT: Duration = Duration::from_secs(10);
/// The OpenFlow version every command speaks (see the module docs).
pub const OPENFLOW: &str = "OpenFlow15";

/// Interfaces of the bridge and their OpenFlow port numbers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PortMap {
    /// By `external_ids:iface-id` (the Neutron port UUID). An id on two interfaces at once
    /// (a VM being replugged) is left out: it is not clear which one is meant.
    pub by_iface_id: HashMap<Uuid, u32>,
    /// By interface name.
    pub by_name: HashMap<String, u32>,
}

/// A flow as the bridge dumps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DumpedFlow {
    pub cookie: u64,
    pub flow: CanonicalFlow,
}

/// What the programmer needs from a bridge. The real one is [`OvsBridge`]; unit tests use a
/// fake.
pub trait Bridge: Send {
    /// The bridge's interfaces with an OpenFlow port number.
    fn ports(&mut self) -> impl Future<Output = Result<PortMap, OvsError>> + Send;

    /// The canonical forms of `flows`, in order, as the bridge would dump them; an error if
    /// any is not acceptable to the switch.
    fn canonical_flows(
        &mut self,
        flows: &[RenderedFlow],
    ) -> impl Future<Output = Result<Vec<CanonicalFlow>, OvsError>> + Send;

    /// The canonical form of one group (`group_id=...,type=...,bucket=...`).
    fn canonical_group(
        &mut self,
        group: &str,
    ) -> impl Future<Output = Result<String, OvsError>> + Send;

    /// Flows whose cookie matches `cookie` under `mask`.
    fn dump_flows(
        &mut self,
        cookie: u64,
        mask: u64,
    ) -> impl Future<Output = Result<Vec<DumpedFlow>, OvsError>> + Send;

    /// Every group on the bridge: id and canonical text.
    fn dump_groups(&mut self) -> impl Future<Output = Result<Vec<(u32, String)>, OvsError>> + Send;

    /// Applies `ops` in order as one atomic transaction: all or nothing.
    fn apply(&mut self, ops: &[BundleOp]) -> impl Future<Output = Result<(), OvsError>> + Send;
}

/// The real bridge: `ovs-vsctl` against OVSDB and `ovs-ofctl` against the bridge's management
/// socket.
#[derive(Debug, Clone)]
pub struct OvsBridge {
    bridge: String,
    /// `--db` for `ovs-vsctl`; `None` uses its default (`$OVS_RUNDIR/db.sock`).
    db: Option<String>,
    /// The OpenFlow target for `ovs-ofctl`: `unix:<rundir>/<bridge>.mgmt` or the bridge name
    /// (then `ovs-ofctl` finds the socket under `$OVS_RUNDIR`).
    target: String,
}

impl OvsBridge {
    pub fn new(bridge: &str, db: Option<String>, rundir: Option<PathBuf>) -> OvsBridge {
        let target = match rundir {
            Some(dir) => format!("unix:{}", dir.join(format!("{bridge}.mgmt")).display()),
            None => bridge.to_owned(),
        };
        OvsBridge {
            bridge: bridge.to_owned(),
            db,
            target,
        }
    }

    pub fn name(&self) -> &str {
        &self.bridge
    }

    async fn vsctl(&self, args: &[&str]) -> Result<String, OvsError> {
        let mut cmd = Command::new("ovs-vsctl");
        cmd.arg(format!("--timeout={}", TOOL_TIMEOUT.as_secs()));
        if let Some(db) = &self.db {
            cmd.arg(format!("--db={db}"));
        }
        cmd.args(args);
        run(cmd, "ovs-vsctl", args, None).await
    }

    async fn ofctl(&self, args: &[&str], stdin: Option<String>) -> Result<String, OvsError> {
        let mut cmd = Command::new("ovs-ofctl");
        cmd.args([
            "-O",
            OPENFLOW,
            &format!("--timeout={}", TOOL_TIMEOUT.as_secs()),
        ]);
        cmd.args(args);
        run(cmd, "ovs-ofctl", args, stdin).await
    }
}

/// Runs a tool to completion within [`TOOL_TIMEOUT`]; its stdout, or an error with its stderr.
async fn run(
    mut cmd: Command,
    tool: &'static str,
    args: &[&str],
    stdin: Option<String>,
) -> Result<String, OvsError> {
    let what = || format!("{tool} {}", args.first().copied().unwrap_or_default());
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|source| OvsError::Spawn {
        tool,
        source: std::sync::Arc::new(source),
    })?;
    let work = async {
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            // A tool that exits early (bad input) closes its end; its stderr says why.
            let _ = pipe.write_all(text.as_bytes()).await;
            drop(pipe);
        }
        child.wait_with_output().await
    };
    let out = tokio::time::timeout(TOOL_TIMEOUT, work)
        .await
        .map_err(|_| OvsError::Timeout(what()))?
        .map_err(|source| OvsError::Spawn {
            tool,
            source: std::sync::Arc::new(source),
        })?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(OvsError::Tool {
            command: what(),
            detail: tool_message(&stderr),
        });
    }
    // A match field without its prerequisite is dropped with only this log line; refuse it
    // instead of installing a flow that matches more than asked.
    if let Some(i) = stderr.find("normalization changed ofp_match") {
        return Err(OvsError::Tool {
            command: what(),
            detail: format!(
                "OVS would drop match fields: {}",
                tool_message(&stderr[i..])
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The useful part of a tool's stderr: the lines that are not informational log lines, joined.
fn tool_message(stderr: &str) -> String {
    let lines: Vec<&str> = stderr
        .lines()
        .map(|l| match l.splitn(4, '|').collect::<Vec<_>>()[..] {
            // `2026-...|00001|module|LEVEL|text`: keep the text of the details.
            [_, _, _, rest] => rest.split_once('|').map_or(rest, |(_, t)| t),
            _ => l,
        })
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("OFPAT_SET_MPLS_TTL is deprecated"))
        .collect();
    relay_protocol::flow::bounded_reason(lines.join("; "))
}

impl Bridge for OvsBridge {
    async fn ports(&mut self) -> Result<PortMap, OvsError> {
        // One run: every interface as JSON, then the names of this bridge's interfaces.
        let out = self
            .vsctl(&[
                "--format=json",
                "--",
                "--columns=name,ofport,external_ids",
                "list",
                "Interface",
                "--",
                "list-ifaces",
                &self.bridge,
            ])
            .await?;
        parse_ports(&out)
    }

    async fn canonical_flows(
        &mut self,
        flows: &[RenderedFlow],
    ) -> Result<Vec<CanonicalFlow>, OvsError> {
        if flows.is_empty() {
            return Ok(Vec::new());
        }
        let text: String = flows.iter().map(|f| f.parse_line() + "\n").collect();
        let out = self.ofctl(&["parse-flows", "-"], Some(text)).await?;
        let parsed: Vec<CanonicalFlow> = out
            .lines()
            .filter(|l| l.starts_with("OFPT_FLOW_MOD"))
            .map(parse_parsed_flow)
            .collect::<Result<_, _>>()?;
        if parsed.len() != flows.len() {
            return Err(OvsError::Unexpected(format!(
                "ovs-ofctl parse-flows printed {} flows for {}",
                parsed.len(),
                flows.len()
            )));
        }
        Ok(parsed)
    }

    async fn canonical_group(&mut self, group: &str) -> Result<String, OvsError> {
        let out = self.ofctl(&["parse-group", group], None).await?;
        out.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix("ADD "))
            .map(str::to_owned)
            .ok_or_else(|| {
                OvsError::Unexpected(format!("ovs-ofctl parse-group printed no group: {out}"))
            })
    }

    async fn dump_flows(&mut self, cookie: u64, mask: u64) -> Result<Vec<DumpedFlow>, OvsError> {
        let filter = format!("cookie={cookie:#x}/{mask:#x}");
        let out = self
            .ofctl(
                &[
                    "--no-stats",
                    "--no-names",
                    "dump-flows",
                    &self.target,
                    &filter,
                ],
                None,
            )
            .await?;
        out.lines()
            .filter(|l| l.contains("actions="))
            .map(parse_dumped_flow)
            .collect()
    }

    async fn dump_groups(&mut self) -> Result<Vec<(u32, String)>, OvsError> {
        let out = self
            .ofctl(&["--no-names", "dump-groups", &self.target], None)
            .await?;
        out.lines()
            .map(str::trim)
            .filter(|l| l.starts_with("group_id="))
            .map(|l| {
                let id = l["group_id=".len()..]
                    .split(',')
                    .next()
                    .and_then(|n| n.parse::<u32>().ok())
                    .ok_or_else(|| OvsError::Unexpected(format!("group line {l:?}")))?;
                Ok((id, l.to_owned()))
            })
            .collect()
    }

    async fn apply(&mut self, ops: &[BundleOp]) -> Result<(), OvsError> {
        if ops.is_empty() {
            return Ok(());
        }
        let text: String = ops.iter().map(|op| op.line() + "\n").collect();
        self.ofctl(&["bundle", &self.target, "-"], Some(text))
            .await
            .map(drop)
    }
}

/// Parses `ovs-vsctl --format=json ... list Interface -- list-ifaces BRIDGE`.
fn parse_ports(out: &str) -> Result<PortMap, OvsError> {
    let bad = |why: &str| OvsError::Unexpected(format!("ovs-vsctl interface list: {why}"));
    let mut lines = out.lines();
    let json = lines.next().ok_or_else(|| bad("empty output"))?;
    let on_bridge: std::collections::HashSet<&str> =
        lines.map(str::trim).filter(|l| !l.is_empty()).collect();
    let table: serde_json::Value = serde_json::from_str(json).map_err(|e| bad(&e.to_string()))?;
    let rows = table["data"].as_array().ok_or_else(|| bad("no data"))?;
    let mut map = PortMap::default();
    let mut seen_ids: HashMap<Uuid, usize> = HashMap::new();
    for row in rows {
        let (Some(name), Some(ofport)) = (row[0].as_str(), row[1].as_i64()) else {
            // No port number yet (`["set",[]]`): not usable.
            continue;
        };
        if !on_bridge.contains(name) {
            continue;
        }
        // -1: the interface failed to attach; OFPP_LOCAL and above are not ordinary ports.
        let Ok(ofport) = u32::try_from(ofport) else {
            continue;
        };
        if ofport == 0 || ofport >= 0xff00 {
            continue;
        }
        map.by_name.insert(name.to_owned(), ofport);
        let iface_id = row[2][1].as_array().into_iter().flatten().find_map(|pair| {
            (pair[0].as_str() == Some("iface-id"))
                .then(|| pair[1].as_str())
                .flatten()
        });
        if let Some(id) = iface_id.and_then(|s| Uuid::parse_str(s).ok()) {
            *seen_ids.entry(id).or_default() += 1;
            map.by_iface_id.insert(id, ofport);
        }
    }
    for (id, n) in seen_ids {
        if n > 1 {
            map.by_iface_id.remove(&id);
        }
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn ports_are_read_from_the_interface_table_of_this_bridge_only() {
        let a = Uuid::from_u128(0xa);
        let b = Uuid::from_u128(0xb);
        let out = format!(
            concat!(
                r#"{{"data":[["tap1",5,["map",[["attached-mac","fa:16:3e:00:00:01"],["iface-id","{a}"]]]],"#,
                r#"["tap2",["set",[]],["map",[["iface-id","{b}"]]]],"#,
                r#"["other",7,["map",[["iface-id","{b}"]]]],"#,
                r#"["patch-tun",2,["map",[]]],["br-int",65534,["map",[]]],"#,
                r#"["dupa",8,["map",[["iface-id","not-a-uuid"]]]]],"#,
                r#""headings":["name","ofport","external_ids"]}}"#,
                "\ntap1\ntap2\npatch-tun\nbr-int\ndupa\n"
            ),
            a = a,
            b = b
        );
        let map = parse_ports(&out).unwrap();
        assert_eq!(map.by_iface_id, HashMap::from([(a, 5)]));
        assert_eq!(
            map.by_name,
            HashMap::from([
                ("tap1".into(), 5),
                ("patch-tun".into(), 2),
                ("dupa".into(), 8)
            ])
        );
    }

    #[test]
    fn an_iface_id_on_two_interfaces_is_ambiguous() {
        let a = Uuid::from_u128(0xa);
        let out = format!(
            r#"{{"data":[["t1",5,["map",[["iface-id","{a}"]]]],["t2",6,["map",[["iface-id","{a}"]]]]],"headings":[]}}
t1
t2"#
        );
        assert!(parse_ports(&out).unwrap().by_iface_id.is_empty());
    }

    #[test]
    fn tool_messages_keep_the_text_of_log_lines() {
        let stderr =
            "2026-11-21T06:59:06Z|00001|ofp_match|INFO|normalization changed ofp_match, details:\n\
                      2026-11-21T06:59:06Z|00002|ofp_match|INFO| pre: ip,tp_dst=80\n\
                      ovs-ofctl: no usable protocol\n";
        assert_eq!(
            tool_message(stderr),
            "normalization changed ofp_match, details:; pre: ip,tp_dst=80; ovs-ofctl: no usable protocol"
        );
    }
}
