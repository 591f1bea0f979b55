#!/bin/sh
# /opt/vnf/start: the data plane of a demo VNF guest, then its agent (run by /init, see init.sh).
#   start IN_MAC OUT_MAC DEST NEXT_HOP_MAC [vnf-agent arguments...]
# The VNF is a router between its two NICs: a frame the chain delivers to the NIC with IN_MAC is
# routed out of the NIC with OUT_MAC towards DEST (an IPv4 address), addressed to NEXT_HOP_MAC
# (a static neighbour entry: no ARP, so the NIC sends nothing but forwarded frames). Forwarded
# traffic passes the agent's nftables `table inet vnf_firewall` forward chain.
# Console markers: "vnf: ready in=<if> out=<if>" or "sfc-guest: fatal: <reason>" (init's).

say() { echo "vnf: $*"; }
fatal() {
    echo "sfc-guest: fatal: $*"
    exit 1
}

[ $# -ge 4 ] || fatal "usage: start IN_MAC OUT_MAC DEST NEXT_HOP_MAC [agent args]"
in_mac=$1 out_mac=$2 dest=$3 hop_mac=$4
shift 4

# No IPv6 (router solicitations, DAD, MLD) and no reverse-path filter: the ports' counters then
# count forwarded frames only, and a source address without a route back is forwarded too.
for f in /proc/sys/net/ipv6/conf/all/disable_ipv6 /proc/sys/net/ipv6/conf/default/disable_ipv6; do
    [ -w "$f" ] && echo 1 >"$f"
done
echo 0 >/proc/sys/net/ipv4/conf/all/rp_filter
echo 0 >/proc/sys/net/ipv4/conf/default/rp_filter
echo 1 >/proc/sys/net/ipv4/ip_forward

# NICs by MAC address (the virtio-net driver probed them when init loaded it).
iface() {
    for dev in /sys/class/net/*; do
        [ "$(cat "$dev/address")" = "$1" ] && {
            echo "${dev##*/}"
            return
        }
    done
}
tries=0
while :; do
    in_if=$(iface "$in_mac")
    out_if=$(iface "$out_mac")
    [ -n "$in_if" ] && [ -n "$out_if" ] && break
    tries=$((tries + 1))
    [ "$tries" -lt 100 ] || fatal "no NIC with MAC $in_mac and $out_mac: $(cat /sys/class/net/*/address)"
    sleep 0.1
done
for dev in "$in_if" "$out_if"; do
    echo 0 >"/proc/sys/net/ipv4/conf/$dev/rp_filter"
    ip link set "$dev" up || fatal "cannot bring up $dev"
done
ip route add "$dest/32" dev "$out_if" || fatal "cannot route $dest out of $out_if"
arp -i "$out_if" -s "$dest" "$hop_mac" || fatal "cannot add the neighbour $dest $hop_mac"

say "ready in=$in_if out=$out_if"
mkdir -p /var/lib/vnf-agent /etc/vnf-agent
exec /bin/vnf-agent "$@"
