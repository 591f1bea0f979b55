//! `nova-patch inject` on a real domain: a TCG guest's domain XML, rendered without any relay
//! channel or key, goes through the injector, is defined in the real `libvirtd` and started.
//! libvirt places the channel's socket (the live XML names it, the inactive XML has no path),
//! the guest finds `/dev/virtio-ports/org.opensfc.relay.0`, and reads the instance key from
//! its SMBIOS OEM strings (`/sys/firmware/dmi/entries/11-*/raw`), exactly as injected.
//!
//! libvirtd stays running afterwards (other tests share it); the domain is destroyed and
//! undefined on drop, also when the test fails.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use e2e_tests::guest_image::GuestImageBuilder;
use e2e_tests::libvirt::{ensure_libvirtd, LibvirtGuest};
use nova_patch::{ChannelName, RelayKey};

const CHANNEL: &str = "org.opensfc.relay.0";
const KEY: &str = "5fc0a7e4d2b1c9e35fc0a7e4d2b1c9e35fc0a7e4d2b1c9e35fc0a7e4d2b1c9e3";

/// Boot takes about 6 s under TCG; generous for a loaded 2-core CI machine.
const BOOT: Duration = Duration::from_secs(120);

/// Names the port as udev would (init only waits for the ports its command line announces,
/// none here: the channel comes from the injector), then reports what the guest sees.
const PROBE: &str = r#"#!/bin/sh
name=org.opensfc.relay.0
i=0
while [ ! -e "/dev/virtio-ports/$name" ] && [ "$i" -lt 100 ]; do
    for port in /sys/class/virtio-ports/*; do
        [ "$(cat "$port/name" 2>/dev/null)" = "$name" ] && ln -sfn "../${port##*/}" "/dev/virtio-ports/$name"
    done
    i=$((i + 1))
    sleep 0.1
done
if [ -c "/dev/virtio-ports/$name" ]; then echo "relay-test: port $name"; else echo "relay-test: no port $name"; fi
for raw in /sys/firmware/dmi/entries/11-*/raw; do
    [ -r "$raw" ] && tr '\0' '\n' <"$raw"
done | grep -o 'org\.opensfc\.relay\.key:[0-9a-f]*' | sed 's/^/relay-test: oem /'
echo "relay-test: done"
"#;

#[test]
fn an_injected_domain_gives_the_guest_the_channel_and_the_key() {
    ensure_libvirtd().unwrap_or_else(|e| panic!("{e}"));
    let image = GuestImageBuilder::new()
        .script("/opt/test/probe", PROBE)
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let key: RelayKey = KEY.parse().unwrap();
    let target: ChannelName = CHANNEL.parse().unwrap();

    let mut before = String::new();
    let mut injected = String::new();
    let domain = LibvirtGuest::new(&image)
        .run("/opt/test/probe")
        .define_and_start_filtered(|xml| {
            before = xml.to_owned();
            injected = nova_patch::inject(xml, &target, Some(&key))
                .map_err(|e| nova_patch::error_chain(&e))?;
            Ok(injected.clone())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        !before.contains(CHANNEL)
            && !before.contains("oemStrings")
            && !before.contains("virtio-serial"),
        "the rendered domain must come without the relay:\n{before}"
    );
    assert!(
        injected.contains(CHANNEL) && injected.contains(KEY),
        "{injected}"
    );

    // The live XML has the channel with the socket libvirt placed.
    let live = domain.live_xml().unwrap();
    let channel = relay_host::libvirt::guest_channel(&live, CHANNEL)
        .unwrap_or_else(|e| panic!("{e}\n{live}"))
        .unwrap_or_else(|| panic!("no relay channel in the live XML:\n{live}"));
    assert_eq!(channel.uuid.to_string(), domain.uuid());
    assert!(channel.socket.is_absolute(), "{}", channel.socket.display());
    assert!(
        live.contains(&format!("org.opensfc.relay.key:{KEY}")),
        "{live}"
    );

    domain
        .wait_for_console("relay-test: done", BOOT)
        .unwrap_or_else(|e| panic!("{e}"));
    let console = domain.console_output();
    assert!(
        console.contains(&format!("relay-test: port {CHANNEL}")),
        "the guest has no {CHANNEL} port:\n{console}"
    );
    let oem: Vec<&str> = console
        .lines()
        .filter_map(|l| l.trim_end().strip_prefix("relay-test: oem "))
        .collect();
    assert_eq!(
        oem,
        [format!("org.opensfc.relay.key:{KEY}")],
        "the guest reads exactly the injected key:\n{console}"
    );
}
