//! A private Open vSwitch for tests: its own OVSDB and `ovs-vswitchd` with the userspace
//! datapath, bridges of `datapath_type=netdev`, and "VM ports": veth pairs whose one end is a
//! bridge port carrying `external_ids:iface-id` (as libvirt sets it for a Neutron port) and
//! whose other end sits in a test namespace with the port's MAC and address.
//!
//! Isolation: every [`TestOvs`] has its own run/log/db directory (`OVS_RUNDIR` and friends for
//! the tools; the relay under test gets the same paths through its `[ovs]` configuration) and
//! runs both daemons inside its own network namespace. The namespace matters: the userspace
//! datapath creates an `ovs-netdev` device and one device per bridge, named after the bridge,
//! which would collide between parallel tests in one namespace. Inside it every test can call
//! its bridge `br-int`, and the bridge side of each veth pair lives there too.
//!
//! Cleanup: dropping a [`TestOvs`] stops both daemons, deletes the namespace (and with it every
//! veth end inside) and the directory, also when the test panics; a test process killed
//! outright leaves a namespace that the next [`crate::netns::Netns::new`] reaps, daemons and
//! all.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

use relay_protocol::Uuid;
use tempfile::TempDir;

use crate::netns::{run, Netns};
use crate::{io_err, Error, Result};

/// The OVSDB schema the Debian package installs.
pub const SCHEMA: &str = "/usr/share/openvswitch/vswitch.ovsschema";
/// How long the daemons get to come up.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(20);

/// A VM port to attach: the Neutron port id, its MAC, and the interface in the VM namespace.
#[derive(Debug, Clone)]
pub struct PortSpec {
    pub iface_id: Uuid,
    pub mac: String,
    /// Interface name inside the namespace, e.g. `eth0`.
    pub ifname: String,
    /// `addr/prefix`, or none for a port without an address (an SF's wire).
    pub addr: Option<String>,
}

/// A port on the bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Port {
    /// The bridge-side interface name (in the OVS namespace).
    pub name: String,
    pub iface_id: Uuid,
    pub mac: String,
    pub ofport: u32,
}

/// A running private Open vSwitch, stopped and removed on drop.
#[derive(Debug)]
pub struct TestOvs {
    // Field order is drop order: the daemons stop before the namespace and directory go.
    ovsdb: Option<Child>,
    vswitchd: Option<Child>,
    netns: Netns,
    dir: TempDir,
    next_port: AtomicU32,
}

impl TestOvs {
    /// Creates the database and starts `ovsdb-server` and `ovs-vswitchd`.
    pub fn start() -> Result<TestOvs> {
        if !Path::new(SCHEMA).exists() {
            return Err(Error::MissingPrerequisite {
                what: format!("{SCHEMA} (package openvswitch-switch)"),
            });
        }
        let dir = tempfile::Builder::new()
            .prefix("sfc-ovs-")
            .tempdir()
            .map_err(io_err("creating the OVS directory"))?;
        let netns = Netns::new("ovs")?;
        let mut ovs = TestOvs {
            ovsdb: None,
            vswitchd: None,
            netns,
            dir,
            next_port: AtomicU32::new(0),
        };
        let d = ovs.dir.path().to_owned();
        let db = d.join("conf.db");
        run("ovsdb-tool", &["create", &db.to_string_lossy(), SCHEMA])?;
        let ovsdb = ovs.spawn(
            "ovsdb-server",
            &[
                db.to_string_lossy().as_ref(),
                &format!("--remote=punix:{}", d.join("db.sock").display()),
                &format!("--unixctl={}", d.join("ovsdb-server.ctl").display()),
                &format!("--log-file={}", d.join("ovsdb-server.log").display()),
            ],
        )?;
        ovs.ovsdb = Some(ovsdb);
        ovs.wait("ovsdb-server", || {
            d.join("db.sock").exists() && ovs.vsctl(&["--no-wait", "init"]).is_ok()
        })?;
        let vswitchd = ovs.spawn(
            "ovs-vswitchd",
            &[
                &ovs.db(),
                &format!("--unixctl={}", d.join("ovs-vswitchd.ctl").display()),
                &format!("--log-file={}", d.join("ovs-vswitchd.log").display()),
            ],
        )?;
        ovs.vswitchd = Some(vswitchd);
        ovs.wait("ovs-vswitchd", || d.join("ovs-vswitchd.ctl").exists())?;
        Ok(ovs)
    }

    fn spawn(&self, program: &str, args: &[&str]) -> Result<Child> {
        let log = fs::File::create(self.dir.path().join(format!("{program}.stderr")))
            .map_err(io_err("creating a log file"))?;
        let mut cmd = self.netns.command(program);
        cmd.args(args)
            .envs(self.env())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        cmd.spawn().map_err(io_err(format!("starting {program}")))
    }

    fn wait(&self, what: &str, mut ready: impl FnMut() -> bool) -> Result<()> {
        let start = Instant::now();
        while !ready() {
            if start.elapsed() > START_TIMEOUT {
                return Err(Error::Timeout {
                    what: what.into(),
                    waited: START_TIMEOUT,
                    console: self.logs(),
                });
            }
            sleep(POLL);
        }
        Ok(())
    }

    /// `OVS_RUNDIR`, `OVS_LOGDIR`, `OVS_DBDIR`, `OVS_SYSCONFDIR`, all the private directory.
    pub fn env(&self) -> Vec<(&'static str, PathBuf)> {
        let d = self.dir.path().to_owned();
        ["OVS_RUNDIR", "OVS_LOGDIR", "OVS_DBDIR", "OVS_SYSCONFDIR"]
            .into_iter()
            .map(|k| (k, d.clone()))
            .collect()
    }

    /// The run directory: where `<bridge>.mgmt` sockets are.
    pub fn rundir(&self) -> &Path {
        self.dir.path()
    }

    /// The OVSDB remote, `unix:<rundir>/db.sock`.
    pub fn db(&self) -> String {
        format!("unix:{}", self.dir.path().join("db.sock").display())
    }

    /// The namespace the daemons and the bridge ends of the ports live in.
    pub fn netns(&self) -> &Netns {
        &self.netns
    }

    /// `ovs-vsctl --db=<ours> --timeout=10 <args>`; its stdout.
    pub fn vsctl(&self, args: &[&str]) -> Result<String> {
        let db = format!("--db={}", self.db());
        let mut all = vec![db.as_str(), "--timeout=10"];
        all.extend_from_slice(args);
        let out = run("ovs-vsctl", &all)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `ovs-ofctl -O OpenFlow15 <args>` against our daemons; its stdout.
    pub fn ofctl(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("ovs-ofctl")
            .args(["-O", "OpenFlow15", "--timeout=10"])
            .args(args)
            .envs(self.env())
            .stdin(Stdio::null())
            .output()
            .map_err(io_err("running ovs-ofctl"))?;
        if !out.status.success() {
            return Err(Error::ToolFailed {
                tool: format!("ovs-ofctl {}", args.join(" ")),
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Adds a userspace-datapath bridge and waits until `ovs-vswitchd` created it.
    pub fn add_bridge(&self, name: &str) -> Result<()> {
        self.vsctl(&[
            "add-br",
            name,
            "--",
            "set",
            "Bridge",
            name,
            "datapath_type=netdev",
        ])?;
        let mgmt = self.dir.path().join(format!("{name}.mgmt"));
        self.wait(&format!("bridge {name}"), || mgmt.exists())
    }

    /// A veth pair: `spec.ifname` in `vm` with the port's MAC and address, the other end a port
    /// of `bridge` with `external_ids:iface-id` and `attached-mac` set as libvirt does.
    pub fn attach(&self, bridge: &str, vm: &Netns, spec: &PortSpec) -> Result<Port> {
        let name = format!("vp{}", self.next_port.fetch_add(1, Ordering::Relaxed));
        self.netns.ip(&[
            "link",
            "add",
            &name,
            "type",
            "veth",
            "peer",
            "name",
            &spec.ifname,
            "netns",
            vm.name(),
        ])?;
        self.netns.ip(&["link", "set", &name, "up"])?;
        vm.add_interface(&spec.ifname, &spec.mac, spec.addr.as_deref())?;
        self.vsctl(&[
            "add-port",
            bridge,
            &name,
            "--",
            "set",
            "Interface",
            &name,
            &format!("external_ids:iface-id={}", spec.iface_id),
            &format!("external_ids:attached-mac=\"{}\"", spec.mac),
            "external_ids:iface-status=active",
        ])?;
        let ofport = self.ofport(&name)?;
        Ok(Port {
            name,
            iface_id: spec.iface_id,
            mac: spec.mac.clone(),
            ofport,
        })
    }

    /// The OpenFlow port number of interface `name`, once assigned.
    pub fn ofport(&self, name: &str) -> Result<u32> {
        let start = Instant::now();
        loop {
            let text = self.vsctl(&["get", "Interface", name, "ofport"])?;
            if let Ok(n) = text.trim().parse::<i64>() {
                if n > 0 {
                    return u32::try_from(n)
                        .map_err(|_| Error::InvalidConfig(format!("ofport {n}")));
                }
            }
            if start.elapsed() > START_TIMEOUT {
                return Err(Error::Timeout {
                    what: format!("an OpenFlow port number for {name}"),
                    waited: START_TIMEOUT,
                    console: self.logs(),
                });
            }
            sleep(POLL);
        }
    }

    /// Removes a port from its bridge (a VM going away); the veth stays.
    pub fn detach(&self, port: &Port) -> Result<()> {
        self.vsctl(&["del-port", &port.name]).map(drop)
    }

    /// The flows of `bridge` without statistics, one per line, as `ovs-ofctl` prints them.
    pub fn flows(&self, bridge: &str) -> Result<Vec<String>> {
        let text = self.ofctl(&["--no-stats", "--no-names", "dump-flows", bridge])?;
        Ok(text
            .lines()
            .map(str::trim)
            .filter(|l| l.contains("actions="))
            .map(str::to_owned)
            .collect())
    }

    /// The tails of the daemons' logs, for failure messages.
    pub fn logs(&self) -> String {
        let mut out = String::new();
        for f in [
            "ovsdb-server.log",
            "ovsdb-server.stderr",
            "ovs-vswitchd.log",
            "ovs-vswitchd.stderr",
        ] {
            let text = fs::read_to_string(self.dir.path().join(f)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            let tail = &lines[lines.len().saturating_sub(20)..];
            out.push_str(&format!("--- {f} ---\n{}\n", tail.join("\n")));
        }
        out
    }
}

/// SIGTERM, a short grace period, then SIGKILL; reaps the child.
fn stop(child: &mut Child) {
    if let Some(pid) = rustix::process::Pid::from_raw(child.id() as i32) {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(2) {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        sleep(POLL);
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for TestOvs {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- private OVS in {} ---\n{}",
                self.dir.path().display(),
                self.logs()
            );
        }
        for child in [self.vswitchd.as_mut(), self.ovsdb.as_mut()]
            .into_iter()
            .flatten()
        {
            stop(child);
        }
    }
}
