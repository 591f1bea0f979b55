//! A real `libvirtd` for end-to-end tests, and test guests as libvirt domains.
//!
//! [`ensure_libvirtd`] makes sure `virtlogd` and `libvirtd` run on this machine (as root, with
//! no systemd: the state directories and the `libvirt-qemu` user and groups the Debian packages
//! would create through systemd-tmpfiles and `libvirt-daemon-system` are created here, and the
//! daemons start with `-d`). It is idempotent and serialised across test processes with a lock
//! file. The daemons are left running on purpose: tests in several processes share them, and
//! starting `libvirtd` costs about a second. [`restart_libvirtd`] kills and restarts it, for
//! tests of what survives a daemon restart; running guests survive it.
//!
//! [`LibvirtGuest`] renders the domain XML of a TCG guest booted from a
//! [`GuestImage`](crate::guest_image::GuestImage) with the same kernel command line contract
//! as [`crate::qemu::GuestConfig`]; [`TestDomain`] starts it under a unique name and destroys
//! and undefines it on drop, also when the test panics. Domains of test processes that died
//! without cleaning up are removed by the next [`ensure_libvirtd`].
//!
//! Permissions: by default libvirt runs QEMU as `libvirt-qemu` and chowns every file the domain
//! uses to that user, restoring ownership afterwards. The guest image is a cache shared by
//! concurrent guests and the console log lives in a root-owned temporary directory, so both
//! would fight over ownership. Each test domain therefore carries a static DAC label instead:
//! `<seclabel type='static' model='dac' relabel='no'><label>+0:+0</label></seclabel>` runs
//! that one QEMU as root and relabels nothing. It needs no change to `/etc/libvirt/qemu.conf`
//! and affects no other domain.

use std::fs;
use std::io::ErrorKind;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::guest_image::GuestImage;
use crate::qemu::{GuestConfig, FATAL_MARKER};
use crate::{io_err, Error, Result};

/// The URI of the system QEMU driver the tests use.
pub const URI: &str = "qemu:///system";
/// Prefix of every test domain's name: `sfc-test-<pid>-<n>`.
pub const DOMAIN_PREFIX: &str = "sfc-test-";
/// How long the daemons get to answer after starting.
pub const DAEMON_TIMEOUT: Duration = Duration::from_secs(60);

const LOCK_FILE: &str = "/tmp/sfc-e2e-libvirtd.lock";
const LIBVIRTD_PID_FILE: &str = "/run/libvirtd.pid";
const VIRTLOGD_SOCKET: &str = "/run/libvirt/virtlogd-sock";
const LIBVIRTD_LOG: &str = "/var/log/libvirt/libvirtd.log";
const QEMU_LOG_DIR: &str = "/var/log/libvirt/qemu";
/// Directories the packages' systemd units or tmpfiles.d would create.
const STATE_DIRS: &[&str] = &[
    "/var/log/libvirt",
    "/run/libvirt",
    "/var/lib/libvirt/qemu",
    "/var/cache/libvirt/qemu",
];
const POLL: Duration = Duration::from_millis(100);

/// Starts `virtlogd` and `libvirtd` unless `libvirtd` already answers on [`URI`], and waits
/// until it does. Also removes domains left behind by dead test processes.
pub fn ensure_libvirtd() -> Result<()> {
    if answers() {
        return reap_stale_domains();
    }
    let _lock = Lock::acquire()?;
    // Another process may have started it while we waited for the lock.
    if !answers() {
        start_daemons()?;
    }
    reap_stale_domains()
}

/// Kills the running `libvirtd` (SIGTERM, as an operator's restart would) and starts it again.
/// Guests keep running meanwhile; clients see their connections close.
pub fn restart_libvirtd() -> Result<()> {
    let _lock = Lock::acquire()?;
    if let Some(pid) = libvirtd_pid() {
        stop_process(pid, "libvirtd")?;
    }
    start_daemons()
}

/// Whether `libvirtd` answers on [`URI`].
pub fn answers() -> bool {
    Command::new("virsh")
        .args(["-q", "-c", URI, "version"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs `virsh -q -c qemu:///system <args>` and returns its standard output.
pub fn virsh(args: &[&str]) -> Result<String> {
    let out = Command::new("virsh")
        .args(["-q", "-c", URI])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| match e.kind() {
            ErrorKind::NotFound => Error::MissingPrerequisite {
                what: "virsh (package libvirt-clients)".into(),
            },
            _ => io_err("running virsh")(e),
        })?;
    if !out.status.success() {
        return Err(Error::ToolFailed {
            tool: format!("virsh {}", args.join(" ")),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// An exclusive lock on [`LOCK_FILE`] for the lifetime of the value.
struct Lock(#[allow(dead_code)] fs::File);

impl Lock {
    fn acquire() -> Result<Self> {
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(LOCK_FILE)
            .map_err(io_err(format!("opening {LOCK_FILE}")))?;
        rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| io_err(format!("locking {LOCK_FILE}"))(e.into()))?;
        Ok(Self(file))
    }
}

fn start_daemons() -> Result<()> {
    for dir in STATE_DIRS {
        fs::create_dir_all(dir).map_err(io_err(format!("creating {dir}")))?;
    }
    ensure_accounts()?;
    if UnixStream::connect(VIRTLOGD_SOCKET).is_err() {
        // A stale pid file from a dead virtlogd is taken over; a live one would answer above.
        run_daemon("virtlogd")?;
        wait_until(
            "virtlogd to listen",
            || UnixStream::connect(VIRTLOGD_SOCKET).is_ok(),
            "",
        )?;
    }
    run_daemon("libvirtd")?;
    wait_until("libvirtd to answer", answers, LIBVIRTD_LOG)
}

/// The user and groups libvirt's QEMU driver refuses to start without (Debian builds it with
/// user `libvirt-qemu`, group `libvirt-qemu`; the `kvm` group owns `/dev/kvm`).
fn ensure_accounts() -> Result<()> {
    for group in ["kvm", "libvirt-qemu"] {
        if !entry_exists("group", group) {
            tool("groupadd", &["--system", group])?;
        }
    }
    if !entry_exists("passwd", "libvirt-qemu") {
        tool(
            "useradd",
            &[
                "--system",
                "--gid",
                "libvirt-qemu",
                "--groups",
                "kvm",
                "--home-dir",
                "/var/lib/libvirt",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                "libvirt-qemu",
            ],
        )?;
    }
    Ok(())
}

fn entry_exists(database: &str, key: &str) -> bool {
    Command::new("getent")
        .args([database, key])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn tool(program: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(io_err(format!("running {program}")))?;
    if !out.status.success() {
        return Err(Error::ToolFailed {
            tool: format!("{program} {}", args.join(" ")),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    Ok(())
}

/// Starts a daemon with `-d`: it forks into the background, so it is no child of this process
/// and outlives it. Its standard streams are detached from the test harness's pipes.
fn run_daemon(program: &str) -> Result<()> {
    let status = Command::new(program)
        .arg("-d")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| match e.kind() {
            ErrorKind::NotFound => Error::MissingPrerequisite {
                what: format!("{program} (package libvirt-daemon)"),
            },
            _ => io_err(format!("starting {program}"))(e),
        })?;
    if !status.success() {
        return Err(Error::ToolFailed {
            tool: format!("{program} -d"),
            status,
            stderr: log_tail(LIBVIRTD_LOG),
        });
    }
    Ok(())
}

fn wait_until(what: &str, mut ready: impl FnMut() -> bool, log: &str) -> Result<()> {
    let start = Instant::now();
    while !ready() {
        if start.elapsed() >= DAEMON_TIMEOUT {
            return Err(Error::Timeout {
                what: what.to_owned(),
                waited: DAEMON_TIMEOUT,
                console: if log.is_empty() {
                    String::new()
                } else {
                    log_tail(log)
                },
            });
        }
        sleep(POLL);
    }
    Ok(())
}

fn log_tail(path: &str) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let start = text.char_indices().rev().nth(4000).map_or(0, |(i, _)| i);
    format!("[{path}]\n{}", &text[start..])
}

fn libvirtd_pid() -> Option<rustix::process::Pid> {
    let text = fs::read_to_string(LIBVIRTD_PID_FILE).ok()?;
    let pid = rustix::process::Pid::from_raw(text.trim().parse().ok()?)?;
    rustix::process::test_kill_process(pid).ok()?;
    Some(pid)
}

/// SIGTERM, then SIGKILL if the process is still there after a grace period.
fn stop_process(pid: rustix::process::Pid, name: &str) -> Result<()> {
    use rustix::process::{kill_process, test_kill_process, Signal};
    const GRACE: Duration = Duration::from_secs(15);
    let _ = kill_process(pid, Signal::TERM);
    let start = Instant::now();
    while test_kill_process(pid).is_ok() {
        if start.elapsed() >= GRACE {
            let _ = kill_process(pid, Signal::KILL);
        }
        if start.elapsed() >= GRACE * 2 {
            return Err(Error::Timeout {
                what: format!("{name} (pid {}) to exit", pid.as_raw_nonzero()),
                waited: GRACE * 2,
                console: log_tail(LIBVIRTD_LOG),
            });
        }
        sleep(POLL);
    }
    Ok(())
}

/// Destroys and undefines `sfc-test-<pid>-*` domains whose test process is gone.
fn reap_stale_domains() -> Result<()> {
    for name in virsh(&["list", "--all", "--name"])?.lines() {
        let Some(pid) = name
            .trim()
            .strip_prefix(DOMAIN_PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let _ = virsh(&["destroy", name.trim()]);
        let _ = virsh(&["undefine", name.trim()]);
        let _ = fs::remove_file(format!("{QEMU_LOG_DIR}/{}.log", name.trim()));
    }
    Ok(())
}

/// A TCG test guest as a libvirt domain: what [`crate::qemu::GuestConfig`] describes for a
/// bare QEMU, rendered as domain XML.
#[derive(Debug, Clone)]
pub struct LibvirtGuest {
    kernel: PathBuf,
    initramfs: PathBuf,
    config: GuestConfig,
    channels: Vec<String>,
    memory_mib: u32,
    oem_strings: Vec<String>,
    nics: Vec<Nic>,
}

/// A virtio-net NIC backed by a tap device the caller created (see [`LibvirtGuest::nic`]).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Nic {
    tap: String,
    mac: String,
}

impl LibvirtGuest {
    pub fn new(image: &GuestImage) -> Self {
        Self {
            kernel: image.kernel.clone(),
            initramfs: image.initramfs.clone(),
            config: GuestConfig::new(image),
            channels: Vec::new(),
            memory_mib: 256,
            oem_strings: Vec::new(),
            nics: Vec::new(),
        }
    }

    /// The absolute guest path of the program `/init` runs; required.
    pub fn run(mut self, program: impl Into<String>) -> Self {
        self.config = self.config.run(program);
        self
    }

    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.config = self.config.arg(arg);
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.config = self.config.args(args);
        self
    }

    /// Adds a virtio-serial channel whose host socket libvirt places and names (it appears
    /// only in the live XML); the guest sees `/dev/virtio-ports/<name>`.
    pub fn channel(mut self, name: impl Into<String>) -> Self {
        let name = name.into();
        self.config = self.config.channel(name.clone());
        self.channels.push(name);
        self
    }

    pub fn memory_mib(mut self, mib: u32) -> Self {
        self.memory_mib = mib;
        self
    }

    /// Appends a raw kernel command line word.
    pub fn kernel_arg(mut self, arg: impl Into<String>) -> Self {
        self.config = self.config.kernel_arg(arg);
        self
    }

    /// Adds an SMBIOS type 11 OEM string (the guest reads it from
    /// `/sys/firmware/dmi/entries/11-*/raw`), e.g. `org.opensfc.relay.key:<hex>`.
    pub fn oem_string(mut self, entry: impl Into<String>) -> Self {
        self.oem_strings.push(entry.into());
        self
    }

    /// Adds a virtio-net NIC with `mac` on the existing tap device `tap` (`ip tuntap add ...
    /// mode tap`), which libvirt opens but neither creates, configures nor deletes
    /// (`managed='no'`): the caller plugs it into its switch, e.g. a private Open vSwitch in
    /// another network namespace (libvirt's own `<virtualport type='openvswitch'>` would talk
    /// to the system OVSDB). Checksum and segmentation offloads are off both ways, so every
    /// frame carries a finished checksum: Open vSwitch's userspace datapath does not complete
    /// partial ones. NICs appear in the guest in the order they were added.
    pub fn nic(mut self, tap: impl Into<String>, mac: impl Into<String>) -> Self {
        self.nics.push(Nic {
            tap: tap.into(),
            mac: mac.into(),
        });
        self
    }

    /// The domain XML for domain `name` writing its console to `console`.
    pub fn domain_xml(&self, name: &str, console: &Path) -> Result<String> {
        let cmdline = self.config.cmdline()?;
        let path = |p: &Path| {
            p.to_str()
                .map(escape)
                .ok_or_else(|| Error::InvalidConfig(format!("path {} is not UTF-8", p.display())))
        };
        let mut xml = String::new();
        xml.push_str("<domain type='qemu'>\n");
        xml.push_str(&format!("  <name>{}</name>\n", escape(name)));
        xml.push_str(&format!(
            "  <memory unit='MiB'>{}</memory>\n  <vcpu>1</vcpu>\n",
            self.memory_mib
        ));
        if !self.oem_strings.is_empty() {
            xml.push_str("  <sysinfo type='smbios'>\n    <oemStrings>\n");
            for entry in &self.oem_strings {
                xml.push_str(&format!("      <entry>{}</entry>\n", escape(entry)));
            }
            xml.push_str("    </oemStrings>\n  </sysinfo>\n");
        }
        xml.push_str("  <os>\n    <type arch='x86_64' machine='pc'>hvm</type>\n");
        xml.push_str(&format!("    <kernel>{}</kernel>\n", path(&self.kernel)?));
        xml.push_str(&format!(
            "    <initrd>{}</initrd>\n",
            path(&self.initramfs)?
        ));
        xml.push_str(&format!("    <cmdline>{}</cmdline>\n", escape(&cmdline)));
        if !self.oem_strings.is_empty() {
            xml.push_str("    <smbios mode='sysinfo'/>\n");
        }
        xml.push_str("  </os>\n");
        // ACPI lets the guest's poweroff end the domain; a panic (panic=-1 reboots) ends it too.
        xml.push_str(
            "  <features><acpi/></features>\n  <on_poweroff>destroy</on_poweroff>\n  \
             <on_reboot>destroy</on_reboot>\n  <on_crash>destroy</on_crash>\n",
        );
        xml.push_str("  <devices>\n");
        xml.push_str(&format!(
            "    <serial type='file'>\n      <source path='{}'/>\n      <target port='0'/>\n    \
             </serial>\n",
            path(console)?
        ));
        if !self.channels.is_empty() {
            xml.push_str("    <controller type='virtio-serial'/>\n");
        }
        for channel in &self.channels {
            xml.push_str(&format!(
                "    <channel type='unix'>\n      <source mode='bind'/>\n      \
                 <target type='virtio' name='{}'/>\n    </channel>\n",
                escape(channel)
            ));
        }
        for nic in &self.nics {
            // QEMU's own virtio-net backend (no vhost: the guest runs under TCG anyway).
            xml.push_str(&format!(
                "    <interface type='ethernet'>\n      <mac address='{}'/>\n      \
                 <target dev='{}' managed='no'/>\n      <model type='virtio'/>\n      \
                 <driver name='qemu'>\n        \
                 <host csum='off' gso='off' tso4='off' tso6='off' ecn='off' ufo='off'/>\n        \
                 <guest csum='off' tso4='off' tso6='off' ecn='off' ufo='off'/>\n      \
                 </driver>\n    </interface>\n",
                escape(&nic.mac),
                escape(&nic.tap)
            ));
        }
        // Host entropy: without it getrandom() in the guest blocks for minutes under TCG.
        xml.push_str(
            "    <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>\n",
        );
        xml.push_str("    <controller type='usb' model='none'/>\n    <memballoon model='none'/>\n");
        xml.push_str("  </devices>\n");
        // See the module docs: QEMU as root, nothing relabelled.
        xml.push_str(
            "  <seclabel type='static' model='dac' relabel='no'><label>+0:+0</label></seclabel>\n",
        );
        xml.push_str("</domain>\n");
        Ok(xml)
    }

    /// Starts the guest as a transient domain (it disappears when it stops).
    pub fn start(&self) -> Result<TestDomain> {
        TestDomain::new(self, false)
    }

    /// Defines the guest as a persistent domain and starts it.
    pub fn define_and_start(&self) -> Result<TestDomain> {
        TestDomain::new(self, true)
    }

    /// Like [`Self::define_and_start`], with the domain XML passed through `filter` first
    /// (e.g. a domain-XML injector under test); an `Err` from it is reported as an invalid
    /// configuration.
    pub fn define_and_start_filtered(
        &self,
        filter: impl FnOnce(&str) -> std::result::Result<String, String>,
    ) -> Result<TestDomain> {
        TestDomain::create(self, true, filter)
    }
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

/// A running test domain named `sfc-test-<pid>-<n>`. Dropping it destroys and undefines it
/// (errors ignored: it may have stopped or been removed already) and deletes its directory.
#[derive(Debug)]
pub struct TestDomain {
    name: String,
    uuid: String,
    console: PathBuf,
    // Dropped after `drop` has destroyed the domain that writes into it.
    dir: TempDir,
}

impl TestDomain {
    fn new(guest: &LibvirtGuest, persistent: bool) -> Result<Self> {
        Self::create(guest, persistent, |xml| Ok(xml.to_owned()))
    }

    fn create(
        guest: &LibvirtGuest,
        persistent: bool,
        filter: impl FnOnce(&str) -> std::result::Result<String, String>,
    ) -> Result<Self> {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "{DOMAIN_PREFIX}{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let dir = tempfile::Builder::new()
            .prefix("sfc-libvirt-")
            .tempdir_in("/tmp")
            .map_err(io_err("creating the domain's temporary directory"))?;
        let console = dir.path().join("console.log");
        let xml = filter(&guest.domain_xml(&name, &console)?).map_err(Error::InvalidConfig)?;
        let xml_path = dir.path().join("domain.xml");
        fs::write(&xml_path, &xml).map_err(io_err(format!("writing {}", xml_path.display())))?;
        let xml_arg = xml_path.to_str().ok_or_else(|| {
            Error::InvalidConfig(format!("path {} is not UTF-8", xml_path.display()))
        })?;
        let mut domain = Self {
            name,
            uuid: String::new(),
            console,
            dir,
        };
        if persistent {
            virsh(&["define", xml_arg])?;
            // From here on `domain` undefines it on drop, also if starting fails.
            virsh(&["start", &domain.name])?;
        } else {
            virsh(&["create", xml_arg])?;
        }
        domain.uuid = virsh(&["domuuid", &domain.name])?.trim().to_owned();
        Ok(domain)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The UUID libvirt generated, in its text form.
    pub fn uuid(&self) -> &str {
        &self.uuid
    }

    /// The domain's private temporary directory (domain XML, console log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The live domain XML, with the generated channel socket paths.
    pub fn live_xml(&self) -> Result<String> {
        virsh(&["dumpxml", &self.name])
    }

    /// Whether the domain is running.
    pub fn is_running(&self) -> bool {
        virsh(&["domstate", &self.name]).is_ok_and(|s| s.trim() == "running")
    }

    /// Everything the guest wrote to its serial console so far.
    pub fn console_output(&self) -> String {
        fs::read(&self.console)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Waits until the console shows `marker`; fails early when the guest's init reports a
    /// fatal error or the domain stops.
    pub fn wait_for_console(&self, marker: &str, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            // Checked before reading, so a guest that printed and stopped is not missed.
            let running = self.is_running();
            let console = self.console_output();
            if console.contains(marker) {
                return Ok(());
            }
            if console.contains(FATAL_MARKER) || !running {
                return Err(Error::GuestFatal {
                    what: format!(
                        "{marker:?} on the console of {} ({})",
                        self.name,
                        if running {
                            "init failed"
                        } else {
                            "the domain stopped"
                        }
                    ),
                    console,
                });
            }
            if start.elapsed() >= timeout {
                return Err(Error::Timeout {
                    what: format!("{marker:?} on the console of {}", self.name),
                    waited: timeout,
                    console,
                });
            }
            sleep(Duration::from_millis(50));
        }
    }

    /// Stops the domain now (a transient one disappears); the drop then only cleans up.
    pub fn destroy(&self) -> Result<()> {
        virsh(&["destroy", &self.name]).map(|_| ())
    }
}

impl Drop for TestDomain {
    fn drop(&mut self) {
        let qemu_log = PathBuf::from(format!("{QEMU_LOG_DIR}/{}.log", self.name));
        if std::thread::panicking() {
            eprintln!(
                "[{} console]\n{}\n{}",
                self.name,
                self.console_output(),
                log_tail(&qemu_log.to_string_lossy())
            );
        }
        let _ = virsh(&["destroy", &self.name]);
        let _ = virsh(&["undefine", &self.name]);
        // libvirt keeps one QEMU log per domain name forever; names are never reused.
        let _ = fs::remove_file(qemu_log);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> GuestImage {
        GuestImage {
            dir: "/cache".into(),
            kernel: "/cache/vmlinuz".into(),
            initramfs: "/cache/initramfs.cpio".into(),
            kernel_release: "6.1.0-test".into(),
        }
    }

    #[test]
    fn domain_xml_carries_the_boot_contract_and_the_channel() {
        let xml = LibvirtGuest::new(&image())
            .run("/opt/test/echo")
            .args(["org.opensfc.relay.0", "echo:"])
            .channel("org.opensfc.relay.0")
            .oem_string("org.opensfc.relay.key:00ff")
            .domain_xml("sfc-test-1-0", Path::new("/tmp/x/console.log"))
            .unwrap();
        for needle in [
            "<domain type='qemu'>",
            "<name>sfc-test-1-0</name>",
            "<memory unit='MiB'>256</memory>",
            "<type arch='x86_64' machine='pc'>hvm</type>",
            "<kernel>/cache/vmlinuz</kernel>",
            "<initrd>/cache/initramfs.cpio</initrd>",
            "<cmdline>console=ttyS0 panic=-1 sfc.run=/opt/test/echo sfc.vports=1 \
             sfc.args=org.opensfc.relay.0,echo:</cmdline>",
            "<smbios mode='sysinfo'/>",
            "<entry>org.opensfc.relay.key:00ff</entry>",
            "<source path='/tmp/x/console.log'/>",
            "<controller type='virtio-serial'/>",
            "<source mode='bind'/>\n      <target type='virtio' name='org.opensfc.relay.0'/>",
            "<backend model='random'>/dev/urandom</backend>",
            "<label>+0:+0</label>",
        ] {
            assert!(xml.contains(needle), "missing {needle:?} in\n{xml}");
        }
    }

    #[test]
    fn domain_xml_escapes_and_validates() {
        let xml = LibvirtGuest::new(&image())
            .run("/bin/true")
            .oem_string("a<b&'c'")
            .domain_xml("n", Path::new("/tmp/x/console.log"))
            .unwrap();
        assert!(
            xml.contains("<entry>a&lt;b&amp;&apos;c&apos;</entry>"),
            "{xml}"
        );
        assert!(
            !xml.contains("virtio-serial"),
            "no channel, no controller: {xml}"
        );
        let err = LibvirtGuest::new(&image())
            .domain_xml("n", Path::new("/tmp/c.log"))
            .unwrap_err();
        assert!(matches!(err, Error::InvalidConfig(_)), "{err}");
    }

    #[test]
    fn domain_xml_has_the_nics_in_order_on_unmanaged_taps_without_offloads() {
        let xml = LibvirtGuest::new(&image())
            .run("/bin/true")
            .nic("tapin", "fa:16:3e:00:00:01")
            .nic("tapout", "fa:16:3e:00:00:02")
            .domain_xml("n", Path::new("/tmp/x/console.log"))
            .unwrap();
        let first = xml.find("<target dev='tapin' managed='no'/>").unwrap();
        let second = xml.find("<target dev='tapout' managed='no'/>").unwrap();
        assert!(first < second, "{xml}");
        assert_eq!(
            xml.matches("<interface type='ethernet'>").count(),
            2,
            "{xml}"
        );
        for needle in [
            "<mac address='fa:16:3e:00:00:01'/>",
            "<mac address='fa:16:3e:00:00:02'/>",
            "<model type='virtio'/>",
            "<driver name='qemu'>",
            "<host csum='off' gso='off' tso4='off' tso6='off' ecn='off' ufo='off'/>",
            "<guest csum='off' tso4='off' tso6='off' ecn='off' ufo='off'/>",
        ] {
            assert!(xml.contains(needle), "missing {needle:?} in\n{xml}");
        }
    }
}
