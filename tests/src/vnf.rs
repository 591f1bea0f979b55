//! The VNF guest of the demo (`make demo`): a TCG guest that is a real service function on a
//! private Open vSwitch and runs `vnf-agent` on the relay channel.
//!
//! Image: the test image ([`crate::guest_image`]) plus the static agent, the host's `nft` with
//! its shared libraries and loader, and the nf_tables modules, so the agent's firewall handler
//! really applies the ruleset it is pushed. `/opt/vnf/start` (`vnf_start.sh`) makes the guest a
//! router from its ingress NIC to its egress NIC (the OVS driver delivers chained frames to the
//! ingress port's MAC and re-classifies what leaves the egress port), so the forwarded traffic
//! crosses the agent's `table inet vnf_firewall`, then it execs the agent.
//!
//! NICs: [`Tap`] creates a tap device in the host's namespace for libvirt to open
//! (`managed='no'`, see [`LibvirtGuest::nic`]), then moves it into the private Open vSwitch's
//! namespace and adds it to the bridge with `external_ids:iface-id` = the Neutron port, as Nova
//! would. A tap device keeps working across namespaces; it is deleted on drop, and with its
//! namespace at the latest. Taps of processes that died are removed by [`reap_stale_taps`].

use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};

use relay_protocol::{InstanceKey, Uuid};

use crate::guest_image::{GuestImage, GuestImageBuilder};
use crate::libvirt::LibvirtGuest;
use crate::ovs::{Port, TestOvs};
use crate::{Error, Result};

/// The guest program: data plane, then the agent.
pub const START: &str = "/opt/vnf/start";
/// Console line the start script prints once the data plane is up (followed by the NIC names).
pub const READY_MARKER: &str = "vnf: ready";
/// Where the host's `nft` is, and where the guest gets it.
pub const NFT: &str = "/usr/sbin/nft";
/// The modules `nft` needs for the agent's rulesets (`ct state`, `counter`, `reject`), after
/// `crc32c_generic`: `libcrc32c` (a dependency of nf_tables) soft-depends on a crc32c
/// implementation, which `modules.dep` does not list.
pub const NFT_MODULES: &[&str] = &["crc32c_generic", "nf_tables", "nft_ct", "nft_reject_inet"];
/// Prefix of the tap devices: `sfcv<pid>t<n>`.
pub const TAP_PREFIX: &str = "sfcv";

const START_SCRIPT: &str = include_str!("vnf_start.sh");

/// Builds (or reuses) the VNF image around the static agent at `agent`.
pub fn image(agent: &Path) -> Result<GuestImage> {
    if !Path::new(NFT).exists() {
        return Err(Error::MissingPrerequisite {
            what: format!("{NFT} (package nftables)"),
        });
    }
    let mut builder = GuestImageBuilder::new()
        .file(agent, "/bin/vnf-agent", 0o755)
        .dynamic_program(NFT, NFT)
        .script(START, START_SCRIPT);
    for module in NFT_MODULES {
        builder = builder.module(*module);
    }
    builder.build()
}

/// What one VNF forwards: its two ports and where it sends what enters the first one.
#[derive(Debug, Clone)]
pub struct DataPlane {
    pub ingress_mac: String,
    pub egress_mac: String,
    /// The IPv4 address chained traffic is routed to.
    pub destination: String,
    /// The MAC the routed frames are addressed to (the destination's port).
    pub next_hop_mac: String,
}

/// The libvirt guest of one VNF: its two NICs on `taps` (ingress, egress), the agent on the
/// virtio-serial `channel` with `key` (from the SMBIOS OEM strings) and `agent_args`.
pub fn guest(
    image: &GuestImage,
    key: &InstanceKey,
    channel: &str,
    taps: (&Tap, &Tap),
    plane: &DataPlane,
    agent_args: &[&str],
) -> LibvirtGuest {
    LibvirtGuest::new(image)
        .run(START)
        .args([
            plane.ingress_mac.as_str(),
            plane.egress_mac.as_str(),
            plane.destination.as_str(),
            plane.next_hop_mac.as_str(),
            "--port",
            channel,
        ])
        .args(agent_args.iter().copied())
        .channel(channel)
        .oem_string(format!("org.opensfc.relay.key:{}", key.to_hex()))
        .nic(taps.0.name(), plane.ingress_mac.as_str())
        .nic(taps.1.name(), plane.egress_mac.as_str())
}

/// A tap device for a guest NIC, deleted on drop.
#[derive(Debug)]
pub struct Tap {
    name: String,
    /// The namespace it was moved to, if any.
    netns: Option<String>,
}

impl Tap {
    /// Creates `sfcv<pid>t<n>` (down, no address) in the host's namespace.
    pub fn create() -> Result<Tap> {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "{TAP_PREFIX}{}t{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["tuntap", "add", "dev", &name, "mode", "tap"])?;
        Ok(Tap { name, netns: None })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Moves the tap into `ovs`'s namespace and adds it to `bridge` as the port of Neutron
    /// port `iface_id` whose VM NIC has `mac`. Call it after the guest started: libvirt opens
    /// the device by name in the host's namespace.
    pub fn plug(&mut self, ovs: &TestOvs, bridge: &str, iface_id: Uuid, mac: &str) -> Result<Port> {
        let ns = ovs.netns().name().to_owned();
        ip(&["link", "set", &self.name, "netns", &ns])?;
        self.netns = Some(ns);
        ovs.netns().ip(&["link", "set", &self.name, "up"])?;
        ovs.vsctl(&[
            "add-port",
            bridge,
            &self.name,
            "--",
            "set",
            "Interface",
            &self.name,
            &format!("external_ids:iface-id={iface_id}"),
            &format!("external_ids:attached-mac=\"{mac}\""),
            "external_ids:iface-status=active",
        ])?;
        let ofport = ovs.ofport(&self.name)?;
        Ok(Port {
            name: self.name.clone(),
            iface_id,
            mac: mac.to_owned(),
            ofport,
        })
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        // Gone already if its namespace was deleted; errors are of no interest.
        let _ = match &self.netns {
            Some(ns) => ip(&["-n", ns, "link", "del", &self.name]),
            None => ip(&["link", "del", &self.name]),
        };
    }
}

/// Deletes `sfcv<pid>t<n>` taps in the host's namespace whose process is gone (taps that were
/// moved into a private Open vSwitch's namespace go with it).
pub fn reap_stale_taps() {
    let Ok(entries) = fs::read_dir("/sys/class/net") else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(TAP_PREFIX)
            .and_then(|rest| rest.split('t').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = ip(&["link", "del", &name]);
        }
    }
}

fn ip(args: &[&str]) -> Result<()> {
    crate::netns::run("ip", args).map(drop)
}
