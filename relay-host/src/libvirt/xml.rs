//! Reads the relay channel out of a domain's live XML.
//!
//! Only the live XML (`virDomainGetXMLDesc` of a running domain) carries the socket path: when
//! the input XML leaves `<source>` out, libvirt generates the path at start, and where it puts it
//! changed between libvirt versions. So the path is always taken from here, never built.

use std::path::PathBuf;

use relay_protocol::Uuid;

use crate::discovery::GuestChannel;

/// Why a domain XML could not be read as a guest with the relay channel.
#[derive(Debug, thiserror::Error)]
pub enum XmlError {
    #[error("malformed domain XML")]
    Parse(#[from] roxmltree::Error),
    #[error("the root element is <{0}>, not <domain>")]
    NotADomain(String),
    #[error("the domain has no <{0}>")]
    Missing(&'static str),
    #[error("the domain UUID {0:?} is not a UUID")]
    BadUuid(String),
    #[error("channel {channel:?} of domain {domain:?} has no bind-mode source path")]
    NoSocketPath { domain: String, channel: String },
    #[error(
        "channel {channel:?} of domain {domain:?} has source mode {mode:?}; \
         the relay needs mode 'bind' (QEMU listens, the relay connects)"
    )]
    UnsupportedMode {
        domain: String,
        channel: String,
        mode: String,
    },
    #[error("channel {channel:?} of domain {domain:?} has a relative socket path {path:?}")]
    RelativePath {
        domain: String,
        channel: String,
        path: String,
    },
}

/// The relay channel of the domain described by `xml`: `Ok(None)` when the domain has no
/// `<channel type='unix'>` whose virtio target is named `channel`, an error when it has one the
/// relay cannot use.
pub fn guest_channel(xml: &str, channel: &str) -> Result<Option<GuestChannel>, XmlError> {
    let doc = roxmltree::Document::parse(xml)?;
    let domain = doc.root_element();
    if !domain.has_tag_name("domain") {
        return Err(XmlError::NotADomain(domain.tag_name().name().to_owned()));
    }
    let name = child_text(domain, "name").ok_or(XmlError::Missing("name"))?;
    let Some(unix_channel) = domain
        .children()
        .filter(|n| n.has_tag_name("devices"))
        .flat_map(|devices| devices.children())
        .filter(|n| n.has_tag_name("channel") && n.attribute("type") == Some("unix"))
        .find(|ch| {
            ch.children().any(|t| {
                t.has_tag_name("target")
                    && t.attribute("type") == Some("virtio")
                    && t.attribute("name") == Some(channel)
            })
        })
    else {
        return Ok(None);
    };
    // Only now: a domain without the channel is ignored whatever else its XML holds.
    let uuid_text = child_text(domain, "uuid").ok_or(XmlError::Missing("uuid"))?;
    let uuid = Uuid::parse_str(uuid_text).map_err(|_| XmlError::BadUuid(uuid_text.to_owned()))?;

    let source = unix_channel.children().find(|n| n.has_tag_name("source"));
    let mode = source.and_then(|s| s.attribute("mode")).unwrap_or("bind");
    if mode != "bind" {
        return Err(XmlError::UnsupportedMode {
            domain: name.to_owned(),
            channel: channel.to_owned(),
            mode: mode.to_owned(),
        });
    }
    let path = source
        .and_then(|s| s.attribute("path"))
        .filter(|p| !p.is_empty())
        .ok_or_else(|| XmlError::NoSocketPath {
            domain: name.to_owned(),
            channel: channel.to_owned(),
        })?;
    let socket = PathBuf::from(path);
    if !socket.is_absolute() {
        return Err(XmlError::RelativePath {
            domain: name.to_owned(),
            channel: channel.to_owned(),
            path: path.to_owned(),
        });
    }
    Ok(Some(GuestChannel {
        uuid,
        name: name.to_owned(),
        socket,
    }))
}

fn child_text<'a>(node: roxmltree::Node<'a, '_>, tag: &str) -> Option<&'a str> {
    node.children()
        .find(|n| n.has_tag_name(tag))
        .and_then(|n| n.text())
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    const RELAY: &str = "org.opensfc.relay.0";
    const UUID: &str = "6b9f3b4e-1c2d-4e5f-8a9b-0c1d2e3f4a5b";

    /// A live XML as libvirt 9.0 prints it for a running QEMU domain, trimmed to what matters
    /// plus enough of the rest to show it is skipped.
    fn live_xml(channels: &str) -> String {
        format!(
            r#"<domain type='qemu' id='3'>
  <name>instance-0000002a</name>
  <uuid>{UUID}</uuid>
  <memory unit='KiB'>262144</memory>
  <os>
    <type arch='x86_64' machine='pc-i440fx-7.2'>hvm</type>
    <smbios mode='sysinfo'/>
  </os>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <controller type='virtio-serial' index='0'>
      <alias name='virtio-serial0'/>
    </controller>
    <serial type='file'>
      <source path='/var/log/console.log'/>
      <target type='isa-serial' port='0'/>
    </serial>
    {channels}
  </devices>
  <seclabel type='dynamic' model='dac' relabel='yes'/>
</domain>"#
        )
    }

    const RELAY_CHANNEL: &str = r#"<channel type='unix'>
      <source mode='bind' path='/run/libvirt/qemu/channel/3-instance-0000002a/org.opensfc.relay.0'/>
      <target type='virtio' name='org.opensfc.relay.0' state='disconnected'/>
      <alias name='channel1'/>
      <address type='virtio-serial' controller='0' bus='0' port='2'/>
    </channel>"#;

    const QGA_CHANNEL: &str = r#"<channel type='unix'>
      <source mode='bind' path='/run/libvirt/qemu/channel/3-instance-0000002a/org.qemu.guest_agent.0'/>
      <target type='virtio' name='org.qemu.guest_agent.0' state='connected'/>
      <alias name='channel0'/>
    </channel>"#;

    #[test]
    fn finds_the_relay_channel_next_to_the_guest_agent() {
        let xml = live_xml(&format!("{QGA_CHANNEL}\n{RELAY_CHANNEL}"));
        let ch = guest_channel(&xml, RELAY).unwrap().unwrap();
        assert_eq!(ch.uuid, Uuid::parse_str(UUID).unwrap());
        assert_eq!(ch.name, "instance-0000002a");
        assert_eq!(
            ch.socket,
            PathBuf::from("/run/libvirt/qemu/channel/3-instance-0000002a/org.opensfc.relay.0")
        );
    }

    #[test]
    fn the_channel_name_is_configurable() {
        let xml = live_xml(&format!("{QGA_CHANNEL}\n{RELAY_CHANNEL}"));
        let qga = guest_channel(&xml, "org.qemu.guest_agent.0")
            .unwrap()
            .unwrap();
        assert!(qga.socket.ends_with("org.qemu.guest_agent.0"));
        assert_eq!(guest_channel(&xml, "org.example.other.0").unwrap(), None);
    }

    #[test]
    fn a_domain_without_the_channel_is_ignored() {
        assert_eq!(guest_channel(&live_xml(""), RELAY).unwrap(), None);
        assert_eq!(guest_channel(&live_xml(QGA_CHANNEL), RELAY).unwrap(), None);
    }

    #[test]
    fn other_channel_kinds_with_the_same_name_are_ignored() {
        // A pty channel or a spicevmc channel cannot be the relay's socket; neither can a
        // unix channel whose target is not virtio (guestfwd).
        let others = r#"<channel type='pty'>
      <target type='virtio' name='org.opensfc.relay.0'/>
    </channel>
    <channel type='unix'>
      <source mode='bind' path='/tmp/fwd.sock'/>
      <target type='guestfwd' address='10.0.2.1' port='4600'/>
    </channel>"#;
        assert_eq!(guest_channel(&live_xml(others), RELAY).unwrap(), None);
    }

    #[test]
    fn a_missing_path_is_an_error() {
        // What the inactive XML of a domain with a generated path looks like.
        let ch = r#"<channel type='unix'>
      <source mode='bind'/>
      <target type='virtio' name='org.opensfc.relay.0'/>
    </channel>"#;
        let err = guest_channel(&live_xml(ch), RELAY).unwrap_err();
        assert!(matches!(err, XmlError::NoSocketPath { .. }), "{err}");
        let no_source = r#"<channel type='unix'>
      <target type='virtio' name='org.opensfc.relay.0'/>
    </channel>"#;
        let err = guest_channel(&live_xml(no_source), RELAY).unwrap_err();
        assert!(matches!(err, XmlError::NoSocketPath { .. }), "{err}");
    }

    #[test]
    fn connect_mode_and_relative_paths_are_errors() {
        let connect = RELAY_CHANNEL.replace("mode='bind'", "mode='connect'");
        let err = guest_channel(&live_xml(&connect), RELAY).unwrap_err();
        assert!(matches!(err, XmlError::UnsupportedMode { .. }), "{err}");
        let relative = r#"<channel type='unix'>
      <source mode='bind' path='relay.sock'/>
      <target type='virtio' name='org.opensfc.relay.0'/>
    </channel>"#;
        let err = guest_channel(&live_xml(relative), RELAY).unwrap_err();
        assert!(matches!(err, XmlError::RelativePath { .. }), "{err}");
    }

    #[test]
    fn malformed_documents_are_errors() {
        assert!(matches!(
            guest_channel("<domain>", RELAY),
            Err(XmlError::Parse(_))
        ));
        assert!(matches!(
            guest_channel("<network><name>x</name></network>", RELAY),
            Err(XmlError::NotADomain(_))
        ));
        let bad_uuid = live_xml(RELAY_CHANNEL).replace(UUID, "not-a-uuid");
        assert!(matches!(
            guest_channel(&bad_uuid, RELAY),
            Err(XmlError::BadUuid(_))
        ));
        let no_uuid = live_xml(RELAY_CHANNEL).replace(&format!("<uuid>{UUID}</uuid>"), "");
        assert!(matches!(
            guest_channel(&no_uuid, RELAY),
            Err(XmlError::Missing("uuid"))
        ));
    }

    #[test]
    fn xml_escapes_in_paths_are_decoded() {
        let ch = RELAY_CHANNEL.replace("3-instance-0000002a/", "3-a&amp;b/");
        let got = guest_channel(&live_xml(&ch), RELAY).unwrap().unwrap();
        assert_eq!(
            got.socket,
            PathBuf::from("/run/libvirt/qemu/channel/3-a&b/org.opensfc.relay.0")
        );
    }
}
