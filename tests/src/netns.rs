//! Network namespaces for tests: stand-ins for VMs (a namespace with one interface) and for
//! service functions (a namespace that forwards between two), plus code that runs inside one.
//!
//! [`Netns`] creates `sfct-<pid>-<n>-<tag>` with `ip netns add` and on drop kills whatever
//! still runs in it and deletes it, which also destroys the veth ends inside; this happens on
//! panic too. Namespaces left by test processes that were killed (the pid in the name is gone)
//! are removed by the next [`Netns::new`].
//!
//! [`Netns::run`] runs a closure on a thread that entered the namespace (`setns`), so a test
//! opens real `std::net` sockets there: the sockets stay in the namespace they were created
//! in. That is how tests send TCP and UDP between "VMs" without `nc` and without sleeping for a
//! listener to come up.
//!
//! Checksum offload: a veth hands the other end packets whose TCP/UDP checksum the kernel
//! never filled in, trusting the peer to be the kernel too. Open vSwitch's userspace datapath
//! forwards them as they are and the receiver drops them (ping works, TCP does not).
//! [`Netns::add_interface`] therefore turns TX checksum offload off with `ethtool` on the
//! namespace end.

use std::fs;
use std::os::fd::AsFd;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::{io_err, Error, Result};

/// Prefix of every test namespace.
pub const PREFIX: &str = "sfct-";
const NETNS_DIR: &str = "/run/netns";

static NEXT: AtomicU32 = AtomicU32::new(0);

/// Runs a program to completion; an error carries its stderr.
pub(crate) fn run(program: &str, args: &[&str]) -> Result<Output> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::MissingPrerequisite {
                what: format!("{program} (scripts/setup.sh installs it)"),
            },
            _ => io_err(format!("running {program}"))(e),
        })?;
    if !out.status.success() {
        return Err(Error::ToolFailed {
            tool: format!("{program} {}", args.join(" ")),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(out)
}

/// Packet and byte counters of an interface.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub rx_bytes: u64,
    pub tx_bytes: u64,
}

/// A network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `sfct-<pid>-<n>-<tag>` with loopback up. `tag` says what it is for, in logs.
    pub fn new(tag: &str) -> Result<Netns> {
        reap_stale();
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("{PREFIX}{}-{n}-{tag}", std::process::id());
        run("ip", &["netns", "add", &name])?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        // No router solicitations or DAD chatter: interface counters then count test traffic.
        ns.exec("sysctl", &["-qw", "net.ipv6.conf.all.disable_ipv6=1"])?;
        ns.exec("sysctl", &["-qw", "net.ipv6.conf.default.disable_ipv6=1"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n <ns> <args>`; its stdout.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut all = vec!["-n", &self.name];
        all.extend_from_slice(args);
        let out = run("ip", &all)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `ip netns exec <ns> <program> <args>`; its stdout.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<String> {
        let mut all = vec!["netns", "exec", &self.name, program];
        all.extend_from_slice(args);
        let out = run("ip", &all)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// A command that runs `program` in the namespace, for the caller to spawn.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Brings up `ifname` (already in the namespace) with `mac` and an `addr/prefix`, checksum
    /// offload off (see the module docs).
    pub fn add_interface(&self, ifname: &str, mac: &str, addr: Option<&str>) -> Result<()> {
        self.ip(&["link", "set", ifname, "address", mac])?;
        if let Some(addr) = addr {
            self.ip(&["addr", "add", addr, "dev", ifname])?;
        }
        self.ip(&["link", "set", ifname, "up"])?;
        self.exec("ethtool", &["-K", ifname, "tx", "off"])?;
        Ok(())
    }

    /// Adds a static neighbour entry, so the first packet needs no ARP round.
    pub fn neighbour(&self, ifname: &str, addr: &str, mac: &str) -> Result<()> {
        self.ip(&[
            "neigh",
            "replace",
            addr,
            "lladdr",
            mac,
            "dev",
            ifname,
            "nud",
            "permanent",
        ])
        .map(drop)
    }

    /// Makes the namespace a one-way bump in the wire, as a service function is: every IP
    /// frame entering `from` leaves by `to`, unchanged (tc `mirred` redirect on ingress).
    /// Only IP, and only one way: an SF that also bridged ARP broadcasts, or frames flooded to
    /// its egress port, back into the switch would make a loop.
    pub fn forward(&self, from: &str, to: &str) -> Result<()> {
        self.exec("tc", &["qdisc", "add", "dev", from, "ingress"])?;
        self.exec(
            "tc",
            &[
                "filter", "add", "dev", from, "parent", "ffff:", "protocol", "ip", "u32", "match",
                "u32", "0", "0", "action", "mirred", "egress", "redirect", "dev", to,
            ],
        )
        .map(drop)
    }

    /// The counters of `ifname`.
    pub fn link_stats(&self, ifname: &str) -> Result<LinkStats> {
        let text = self.ip(&["-s", "-j", "link", "show", "dev", ifname])?;
        let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
            Error::InvalidConfig(format!("ip -s -j link show {ifname}: {e}: {text}"))
        })?;
        let s = &json[0]["stats64"];
        let n = |dir: &str, what: &str| s[dir][what].as_u64().unwrap_or(0);
        Ok(LinkStats {
            rx_packets: n("rx", "packets"),
            tx_packets: n("tx", "packets"),
            rx_bytes: n("rx", "bytes"),
            tx_bytes: n("tx", "bytes"),
        })
    }

    /// Runs `f` on a thread inside the namespace and returns its result.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        let path = Path::new(NETNS_DIR).join(&self.name);
        let file = fs::File::open(&path).map_err(io_err(format!("opening {}", path.display())))?;
        let thread = std::thread::spawn(move || {
            rustix::thread::move_into_link_name_space(
                file.as_fd(),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .map(|()| f())
        });
        match thread.join() {
            Ok(Ok(t)) => Ok(t),
            Ok(Err(e)) => Err(io_err("entering the namespace")(e.into())),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }

    /// Like [`Netns::run`] but leaves the thread running; join the handle for the result.
    pub fn spawn<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<std::thread::JoinHandle<std::io::Result<T>>> {
        let path = Path::new(NETNS_DIR).join(&self.name);
        let file = fs::File::open(&path).map_err(io_err(format!("opening {}", path.display())))?;
        Ok(std::thread::spawn(move || {
            rustix::thread::move_into_link_name_space(
                file.as_fd(),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )?;
            Ok(f())
        }))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        remove(&self.name);
    }
}

/// Kills what runs in namespace `name` and deletes it.
fn remove(name: &str) {
    if let Ok(out) = run("ip", &["netns", "pids", name]) {
        let pids: Vec<i32> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        for pid in &pids {
            if let Some(pid) = rustix::process::Pid::from_raw(*pid) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
        // Give the kernel a moment to tear the processes down before the namespace goes.
        for _ in 0..50 {
            let still = run("ip", &["netns", "pids", name])
                .map(|o| !o.stdout.trim_ascii().is_empty())
                .unwrap_or(false);
            if !still {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    let _ = run("ip", &["netns", "del", name]);
}

/// Deletes test namespaces whose creating process is gone.
fn reap_stale() {
    let Ok(entries) = fs::read_dir(NETNS_DIR) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            remove(&name);
        }
    }
}
