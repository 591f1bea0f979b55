#!/bin/busybox sh
# /init of the e2e test guest (PID 1, busybox sh). Contract with the host, all on the kernel
# command line (read from /proc/cmdline because the kernel keeps dotted parameters from init):
#   sfc.run=/path      program to run once the guest is set up (required)
#   sfc.args=a,b,c     its arguments, comma-separated; an argument cannot contain a comma,
#                      a space or a quote (ship a script in the image for anything richer)
#   sfc.vports=N       wait until N named virtio-serial ports exist before running
# Console markers (ttyS0), one per line, all starting with "sfc-guest: ":
#   booted | run <program> <args...> | run exited <code> | fatal: <reason>
# After the program exits (or on fatal) the guest powers off, which ends QEMU (-no-reboot).

export PATH=/bin:/sbin:/usr/bin:/usr/sbin
export HOME=/root

say() { echo "sfc-guest: $*"; }

halt() {
    sync
    poweroff -f
    # poweroff -f does not return; PID 1 must never exit, or the kernel panics.
    while :; do sleep 3600; done
}

fatal() {
    say "fatal: $*"
    halt
}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /dev/shm /dev/virtio-ports
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
# The console is a log file on the host: nobody types, so programs get /dev/null as stdin.
exec </dev/null >/dev/console 2>&1

run=
args=
vports=0
for word in $(cat /proc/cmdline); do
    case "$word" in
    sfc.run=*) run=${word#sfc.run=} ;;
    sfc.args=*) args=${word#sfc.args=} ;;
    sfc.vports=*) vports=${word#sfc.vports=} ;;
    esac
done

# Load order (dependencies first) was resolved on the host from modules.dep; built-in
# drivers are not listed.
while read -r module; do
    [ -n "$module" ] || continue
    insmod "/lib/modules/$module" || fatal "insmod $module failed"
done </etc/sfc-guest/modules

# No udev: name the virtio-serial ports the way its rules would. Ports and their names
# arrive asynchronously from the host after the driver loads, hence the wait.
tries=0
while :; do
    found=0
    for port in /sys/class/virtio-ports/*; do
        [ -r "$port/name" ] || continue
        name=$(cat "$port/name")
        [ -n "$name" ] || continue
        ln -sfn "../${port##*/}" "/dev/virtio-ports/$name"
        found=$((found + 1))
    done
    [ "$found" -ge "$vports" ] && break
    tries=$((tries + 1))
    [ "$tries" -lt 600 ] || fatal "only $found of $vports virtio ports appeared"
    sleep 0.1
done

ip link set lo up || fatal "cannot bring up lo"
hostname sfc-guest

[ -n "$run" ] || fatal "no sfc.run= on the kernel command line"
[ -x "$run" ] || fatal "sfc.run=$run is not an executable file"

old_ifs=$IFS
IFS=,
set -f
set -- $args
set +f
IFS=$old_ifs

say booted
say run "$run" "$@"
"$run" "$@"
say run exited $?
halt
