#!/usr/bin/env bash
# Installs what the build and the tests need on a fresh Debian machine (run as root).
# Idempotent: packages already present are not reinstalled, and apt is only consulted
# when something is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages the workspace needs, one group per concern.
packages=(
  # build
  build-essential pkg-config
  # guest VMs for the end-to-end tests (tests/): QEMU (TCG), the Debian kernel whose
  # vmlinuz and virtio modules go into the guest image, a static busybox for its userland,
  # and the decompressors for kernels that ship .ko.xz / .ko.zst modules
  qemu-system-x86 linux-image-amd64 busybox-static xz-utils zstd
  # libvirt, for relay-host's discovery (the `virt` crate links libvirt, found through
  # pkg-config) and its end-to-end tests (libvirtd with the QEMU driver, virsh). Not
  # libvirt-daemon-system: it brings polkit, firewall tools and init scripts for a machine
  # without systemd; tests/src/libvirt.rs creates the user, groups and directories it would.
  libvirt-dev libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients
  # `systemd-analyze verify` on the relay's unit file (relay-host/tests/systemd_unit.rs)
  systemd
  # controller-stub's API tests run every test on PostgreSQL too: the harness starts a private
  # cluster from this package's binaries (/usr/lib/postgresql/<version>/bin)
  postgresql
  # (controller-stub/tests/openstack_client.rs drives the stock OpenStack client from a venv it
  # builds from PyPI with python3 and python3-venv, listed below for the Nova patch too)
  # Open vSwitch for the relay's OVS programming and its tests (tests/src/ovs.rs runs private
  # ovsdb-server/ovs-vswitchd daemons with the userspace datapath, not the system service),
  # network namespaces, veths and tc for the test VMs and service functions (tests/src/netns.rs),
  # and ethtool to turn off veth checksum offload, which the userspace datapath does not finish
  openvswitch-switch iproute2 ethtool
  # `make demo`: the VNF guests' firewall is the host's nft (copied into the guest image with
  # its libraries) applying the agent's nftables rulesets
  nftables
  # the Nova patch's unit tests (nova-patch/nova/test.sh): the Nova sdist and its Python
  # dependencies come from PyPI into a cached venv; every pinned dependency is a binary
  # wheel, so no compiler or -dev package is needed beyond build-essential
  python3 python3-venv curl ca-certificates patch
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: missing packages ${missing[*]}; run as root to install them" >&2
    exit 1
  fi
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# The toolchain pinned in rust-toolchain.toml. Only crates.io is reachable, so rustup cannot
# download it; when the machine's stable toolchain is that very version, register it under the
# pinned name, as rustup would have after a download.
want=$(sed -n 's/^channel = "\(.*\)"/\1/p' rust-toolchain.toml)
host=$(rustup show 2>/dev/null | sed -n 's/^Default host: //p')
if ! rustup toolchain list | grep -q "^$want-$host"; then
  have=$(rustup run stable rustc --version | awk '{print $2}')
  if [ "$have" = "$want" ]; then
    echo "setup: registering the installed stable toolchain ($have) as $want"
    ln -sfn "stable-$host" "${RUSTUP_HOME:-$HOME/.rustup}/toolchains/$want-$host"
  else
    rustup toolchain install "$want" --profile minimal --component rustfmt,clippy
  fi
fi
