//! The libvirt QEMU hook (`/etc/libvirt/hooks/qemu`, or a script in `qemu.d/`).
//!
//! libvirtd runs it synchronously as `<domain> <operation> <sub-operation> <extra>` with the
//! domain XML on standard input (<https://libvirt.org/hooks.html>). It must be quick, must not
//! call back into libvirt, and must not make libvirt fail a domain operation because of the
//! relay, so nothing here is an error to libvirt: problems become warnings on standard error
//! (which libvirtd logs) and the exit status stays 0.
//!
//! - `started` and `stopped`: one datagram to relay-host's hook socket (see relay-host's
//!   `src/hook.rs` for the format), sent with a short timeout and never answered. A missing
//!   relay-host (no socket, nobody listening) is a warning. Sent for every domain: relay-host
//!   decides from libvirt whether the domain has the channel.
//! - `migrate` and `restore`, the two operations whose standard output libvirt takes as the new
//!   domain XML (empty output: unchanged): for a domain that opted into the relay (it carries
//!   a relay key or the channel), the channel and its controller are ensured
//!   ([`crate::ensure_channel`]); the key is never invented. Other domains, and domains that
//!   need nothing, get no output.
//! - Everything else: nothing.
//!
//! Standard input is always read to its end, so libvirtd never writes into a closed pipe.

use std::io::{self, Read};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use uuid::Uuid;

use crate::key::ChannelName;
use crate::{ensure_channel, error_chain, read_xml, Error};

/// relay-host's socket unless configured otherwise (relay-host's suggested `hook_socket`).
pub const DEFAULT_SOCKET: &str = "/run/relay-host/hook.sock";
/// How long sending a notification may block libvirt at most.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_millis(250);
/// Notification format version (relay-host's `VERSION`).
pub const VERSION: u8 = 1;
/// Longest domain name sent, in bytes (relay-host refuses longer ones).
const MAX_NAME: usize = 255;

/// What the hook is configured with.
#[derive(Debug, Clone)]
pub struct HookConfig {
    pub socket: PathBuf,
    pub channel: ChannelName,
    pub timeout: Duration,
}

impl Default for HookConfig {
    fn default() -> Self {
        HookConfig {
            socket: PathBuf::from(DEFAULT_SOCKET),
            channel: ChannelName::default(),
            timeout: DEFAULT_TIMEOUT,
        }
    }
}

/// A libvirt hook operation, as far as the relay cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Started,
    Stopped,
    Migrate,
    Restore,
    Other,
}

impl Operation {
    pub fn from_arg(operation: &str) -> Operation {
        match operation {
            "started" => Operation::Started,
            "stopped" => Operation::Stopped,
            "migrate" => Operation::Migrate,
            "restore" => Operation::Restore,
            _ => Operation::Other,
        }
    }
}

/// What the hook did: the XML to print (only for `migrate` and `restore`), and warnings.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct HookOutcome {
    pub xml: Option<String>,
    pub warnings: Vec<String>,
    /// Whether relay-host was sent a notification.
    pub notified: bool,
}

/// Handles one hook invocation for `domain` and `operation`, the domain XML on `stdin`.
pub fn run(config: &HookConfig, domain: &str, operation: &str, stdin: impl Read) -> HookOutcome {
    let mut outcome = HookOutcome::default();
    let op = Operation::from_arg(operation);
    if op == Operation::Other {
        if let Err(e) = io::copy(&mut { stdin }, &mut io::sink()) {
            outcome
                .warnings
                .push(format!("reading the domain XML: {e}"));
        }
        return outcome;
    }
    let xml = match read_xml(stdin) {
        Ok(xml) => xml,
        Err(e) => {
            outcome.warnings.push(error_chain(&e));
            return outcome;
        }
    };
    match op {
        Operation::Started | Operation::Stopped => {
            let event = if op == Operation::Started {
                "started"
            } else {
                "stopped"
            };
            match notification(event, domain, &xml)
                .and_then(|payload| send(&config.socket, &payload, config.timeout))
            {
                Ok(()) => outcome.notified = true,
                Err(e) => outcome.warnings.push(format!(
                    "relay-host not notified that {domain} {event}: {}",
                    error_chain(&e)
                )),
            }
        }
        Operation::Migrate | Operation::Restore => match ensure_channel(&xml, &config.channel) {
            Ok(xml) => outcome.xml = xml,
            Err(e) => outcome.warnings.push(format!(
                "domain XML of {domain} left unchanged: {}",
                error_chain(&e)
            )),
        },
        Operation::Other => {}
    }
    outcome
}

#[derive(Serialize)]
struct Wire<'a> {
    v: u8,
    event: &'a str,
    name: &'a str,
    uuid: String,
}

/// The datagram for `event` of `domain`: its UUID from the XML; its name from libvirt's
/// argument, or the XML when that one is not sendable.
pub fn notification(event: &str, domain: &str, xml: &str) -> Result<Vec<u8>, Error> {
    let (xml_name, uuid) = crate::inject::domain_identity(xml)?;
    let uuid = uuid
        .and_then(|u| Uuid::parse_str(&u).ok())
        .ok_or(Error::NoUuid)?;
    let sendable =
        |n: &&str| !n.is_empty() && n.len() <= MAX_NAME && !n.chars().any(char::is_control);
    let name = Some(domain)
        .filter(sendable)
        .or(xml_name.as_deref().filter(sendable))
        .unwrap_or("-");
    let wire = Wire {
        v: VERSION,
        event,
        name,
        uuid: uuid.hyphenated().to_string(),
    };
    // Serialising a struct of strings into a Vec cannot fail.
    Ok(serde_json::to_vec(&wire).unwrap_or_default())
}

/// Sends one datagram to `socket`, blocking at most `timeout` when its queue is full.
pub fn send(socket: &Path, payload: &[u8], timeout: Duration) -> Result<(), Error> {
    let err = |source| Error::Notify {
        path: socket.to_owned(),
        source,
    };
    let sender = UnixDatagram::unbound().map_err(err)?;
    sender.set_write_timeout(Some(timeout)).map_err(err)?;
    sender.send_to(payload, socket).map_err(err)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const UUID: &str = "8f1c0c5e-2b7d-4e43-9a51-0d6c1e2f3a4b";
    const KEY: &str = "ef223a72cf97aca146015682f36fbe1074c79730fd8875dcc16274ac78db44ad";

    fn xml(extra: &str) -> String {
        format!(
            "<domain type='kvm'>\n  <name>vnf-1</name>\n  <uuid>{UUID}</uuid>\n{extra}  <os>\n    \
             <type>hvm</type>\n  </os>\n  <devices>\n    <disk type='file'/>\n  </devices>\n</domain>\n"
        )
    }

    fn config(dir: &Path) -> HookConfig {
        HookConfig {
            socket: dir.join("hook.sock"),
            ..HookConfig::default()
        }
    }

    #[test]
    fn notifications_carry_the_uuid_and_a_sendable_name() {
        let payload = notification("started", "vnf-1", &xml("")).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"v": 1, "event": "started", "name": "vnf-1", "uuid": UUID})
        );
        // A name libvirt would never pass is replaced by the XML's.
        let payload = notification("stopped", "bad\nname", &xml("")).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(v["name"], "vnf-1");
        assert!(matches!(
            notification("started", "x", "<domain><name>x</name></domain>"),
            Err(Error::NoUuid)
        ));
    }

    #[test]
    fn started_and_stopped_send_one_datagram_each() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        let listener = UnixDatagram::bind(&config.socket).unwrap();
        for event in ["started", "stopped"] {
            let outcome = run(&config, "vnf-1", event, xml("").as_bytes());
            assert_eq!(
                outcome,
                HookOutcome {
                    xml: None,
                    warnings: vec![],
                    notified: true
                }
            );
            let mut buf = [0u8; 2048];
            let n = listener.recv(&mut buf).unwrap();
            let v: serde_json::Value = serde_json::from_slice(&buf[..n]).unwrap();
            assert_eq!(v["event"], event);
            assert_eq!(v["uuid"], UUID);
        }
    }

    #[test]
    fn a_missing_relay_host_is_only_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        let outcome = run(&config(dir.path()), "vnf-1", "started", xml("").as_bytes());
        assert!(!outcome.notified);
        assert_eq!(outcome.xml, None);
        assert_eq!(outcome.warnings.len(), 1);
        assert!(
            outcome.warnings[0].starts_with(
                "relay-host not notified that vnf-1 started: cannot notify relay-host at"
            ),
            "{:?}",
            outcome.warnings
        );
    }

    #[test]
    fn a_full_socket_blocks_only_for_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let config = HookConfig {
            timeout: Duration::from_millis(50),
            ..config(dir.path())
        };
        // Bound but never read: its queue fills up.
        let _listener = UnixDatagram::bind(&config.socket).unwrap();
        let payload = notification("started", "vnf-1", &xml("")).unwrap();
        let start = std::time::Instant::now();
        let failed = (0..10_000).find_map(|_| send(&config.socket, &payload, config.timeout).err());
        assert!(failed.is_some(), "the queue never filled");
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
    }

    #[test]
    fn migrate_and_restore_ensure_the_channel_of_relay_guests_only() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        let with_key = xml(&format!(
            "  <sysinfo type='smbios'>\n    <oemStrings>\n      \
             <entry>org.opensfc.relay.key:{KEY}</entry>\n    </oemStrings>\n  </sysinfo>\n"
        ));
        for op in ["migrate", "restore"] {
            let outcome = run(&config, "vnf-1", op, with_key.as_bytes());
            assert!(outcome.warnings.is_empty(), "{:?}", outcome.warnings);
            let out = outcome.xml.unwrap();
            assert!(out.contains(
                "    <controller type='virtio-serial'/>\n    <channel type='unix'>\n      \
                 <source mode='bind'/>\n      <target type='virtio' name='org.opensfc.relay.0'/>\n    </channel>\n  </devices>"
            ), "{out}");
            assert!(out.contains(KEY), "the key stays");
            // Already there: no output, libvirt keeps its XML.
            assert_eq!(run(&config, "vnf-1", op, out.as_bytes()).xml, None);
            // Not a relay guest: no output either.
            let plain = run(&config, "vnf-1", op, xml("").as_bytes());
            assert_eq!(plain, HookOutcome::default());
        }
        let broken = run(&config, "vnf-1", "migrate", &b"<domain>"[..]);
        assert_eq!(broken.xml, None);
        assert!(
            broken.warnings[0].contains("not well-formed"),
            "{:?}",
            broken.warnings
        );
    }

    #[test]
    fn other_operations_do_nothing_but_drain_the_input() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        let _listener = UnixDatagram::bind(&config.socket).unwrap();
        for op in [
            "prepare",
            "start",
            "release",
            "reconnect",
            "attach",
            "shutdown",
        ] {
            let input = xml("");
            let mut reader = input.as_bytes();
            assert_eq!(
                run(&config, "vnf-1", op, &mut reader),
                HookOutcome::default()
            );
            assert!(reader.is_empty());
        }
        assert_eq!(Operation::from_arg("started"), Operation::Started);
        assert_eq!(Operation::from_arg("STARTED"), Operation::Other);
    }
}
