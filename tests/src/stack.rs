//! The whole system as an operator runs it, for end-to-end tests, the demo and benchmarks:
//! the real `controller-stub serve` and `relay-host` daemons as child processes, VNF guests as
//! libvirt domains running the static `vnf-agent`, and a small client of the controller's API.
//!
//! Binaries: [`binaries`] builds the host programs once per process into a target directory of
//! their own (`<target>/e2e-host`; the `cargo test` that runs us holds the lock of the main
//! one, and cargo's lock on this one makes concurrent test processes share one build), and the
//! guest programs statically like [`crate::build::static_binary`] does.
//!
//! Daemons: [`ControllerProc`] runs the controller on a SQLite file in its directory, with the
//! relay endpoint's certificates from `controller-stub pki init`; [`RelayProc`] runs
//! `relay-host` with a TOML configuration that points at it, discovering guests through the
//! shared `libvirtd`. Both log to a file in their directory (all runs appended, so a restart
//! keeps the history), can be stopped, killed and started again on the same ports, and are
//! killed and reaped on drop. Every child carries [`OWNER_ENV`] with our pid, so the first
//! [`binaries`] call of a later process kills daemons that a test process killed outright left
//! behind.
//!
//! Guests: several test processes and the demo share one `libvirtd`, and a channel socket
//! takes one client at a time, so a relay must only pick up its own guests. Guests and relays
//! therefore agree on a channel name ([`unique_channel`] for tests; the demo uses
//! [`CHANNEL`]). A [`VnfGuest`] is a persistent TCG domain with a fresh instance key in its
//! SMBIOS OEM strings and a host directory shared over 9p (`/mnt/share` in the guest): the
//! agent keeps its state directory there, so it survives a reboot (destroy and start), and the
//! `files` service's reload command (`/opt/e2e/record`) appends every version it applies to
//! `applied.log` there, which the host reads as the guest's own record of what it applied and
//! in which order.

use std::ffi::OsString;
use std::fs;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, PoisonError};
use std::thread::sleep;
use std::time::{Duration, Instant};

use relay_protocol::{InstanceKey, Uuid};
use reqwest::Method;
use rustix::process::{kill_process, Pid, Signal};
use serde_json::{json, Value};
use tempfile::TempDir;

use crate::guest_image::{GuestImage, GuestImageBuilder};
use crate::libvirt::{virsh, LibvirtGuest, TestDomain};

/// The relay channel's default virtio-serial name (what Nova's patch gives guests).
pub const CHANNEL: &str = "org.opensfc.relay.0";
/// Environment variable every daemon started here carries: the pid of the process that
/// started it.
pub const OWNER_ENV: &str = "SFC_E2E_OWNER";
/// Log filter of the daemons unless `SFC_E2E_LOG` says otherwise.
pub const DEFAULT_LOG: &str = "info";
/// How long a daemon gets to listen, and to exit after SIGTERM.
pub const DAEMON_TIMEOUT: Duration = Duration::from_secs(60);
/// The guest program of a [`VnfGuest`].
pub const RUN_VNF: &str = "/opt/e2e/run-vnf";
/// The `files` reload command of a [`VnfGuest`]'s agent, by name.
pub const RECORD_RELOAD: &str = "record";
/// The file the [`files_payload`] writes, below the agent's root.
pub const VERSION_FILE: &str = "/etc/app/version";
/// Console line a [`VnfGuest`] prints right before it starts the agent.
pub const AGENT_MARKER: &str = "e2e: starting the agent";

const POLL: Duration = Duration::from_millis(50);

/// What can go wrong running the stack.
#[derive(Debug, thiserror::Error)]
pub enum StackError {
    #[error(transparent)]
    Setup(#[from] crate::Error),
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} exited ({status}); its log:\n{log}")]
    Exited {
        what: String,
        status: ExitStatus,
        log: String,
    },
    #[error("timed out after {waited:?} waiting for {what}; {detail}")]
    Timeout {
        what: String,
        waited: Duration,
        detail: String,
    },
    #[error("{what}")]
    Http {
        what: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{method} {url} answered {status}: {body}")]
    Api {
        method: Method,
        url: String,
        status: u16,
        body: String,
    },
    #[error("unexpected answer: {0}")]
    Unexpected(String),
}

pub type Result<T, E = StackError> = std::result::Result<T, E>;

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> StackError {
    let context = context.into();
    move |source| StackError::Io { context, source }
}

// ---------------------------------------------------------------------------------------------
// Binaries

/// The programs of the stack.
#[derive(Debug)]
pub struct Binaries {
    pub controller: PathBuf,
    pub sfc: PathBuf,
    pub relay_host: PathBuf,
    /// Static, for the guest image.
    pub vnf_agent: PathBuf,
    /// Static, for the guest image: the test guests' protocol probe (`src/bin/guest-probe.rs`).
    pub guest_probe: PathBuf,
}

/// Builds the programs once per process (later calls return the same paths). Also kills
/// daemons left behind by test processes that died (see the module docs).
pub fn binaries() -> Result<&'static Binaries> {
    static BUILT: Mutex<Option<&'static Binaries>> = Mutex::new(None);
    let mut built = BUILT.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(b) = *built {
        return Ok(b);
    }
    reap_orphans();
    let host = host_build()?;
    let binaries = Binaries {
        controller: host.join("controller-stub"),
        sfc: host.join("sfc"),
        relay_host: host.join("relay-host"),
        vnf_agent: crate::build::static_binary("vnf-agent", "vnf-agent")?,
        guest_probe: crate::build::static_binary("e2e-tests", "guest-probe")?,
    };
    let leaked: &'static Binaries = Box::leak(Box::new(binaries));
    *built = Some(leaked);
    Ok(leaked)
}

/// `cargo build` of the host programs into `<target>/e2e-host`; returns the directory of the
/// executables.
fn host_build() -> Result<PathBuf> {
    let target_dir = crate::guest_image::target_dir()?.join("e2e-host");
    crate::build::cargo_build(
        &[
            "--package",
            "controller-stub",
            "--package",
            "relay-host",
            "--bin",
            "controller-stub",
            "--bin",
            "sfc",
            "--bin",
            "relay-host",
        ],
        &target_dir,
        None,
    )?;
    Ok(target_dir.join("debug"))
}

/// Kills processes carrying [`OWNER_ENV`] of a process that no longer exists.
fn reap_orphans() {
    let Ok(entries) = fs::read_dir("/proc") else {
        return;
    };
    let marker = format!("{OWNER_ENV}=");
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(environ) = fs::read(entry.path().join("environ")) else {
            continue;
        };
        let owner = environ
            .split(|b| *b == 0)
            .filter_map(|var| std::str::from_utf8(var).ok())
            .find_map(|var| var.strip_prefix(&marker))
            .and_then(|owner| owner.parse::<u32>().ok());
        let Some(owner) = owner else { continue };
        if owner != std::process::id() && !Path::new(&format!("/proc/{owner}")).exists() {
            if let Some(pid) = Pid::from_raw(pid) {
                let _ = kill_process(pid, Signal::KILL);
            }
        }
    }
}

/// A free TCP port on the loopback address (bound, then released for the daemon to take).
fn free_addr() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(io_err("finding a free port"))?;
    listener.local_addr().map_err(io_err("finding a free port"))
}

fn log_filter() -> String {
    std::env::var("SFC_E2E_LOG").unwrap_or_else(|_| DEFAULT_LOG.to_owned())
}

// ---------------------------------------------------------------------------------------------
// Daemons

/// A child process with its command line kept for restarts, logging to a file; killed and
/// reaped on drop.
#[derive(Debug)]
struct Daemon {
    what: String,
    program: PathBuf,
    args: Vec<OsString>,
    log: PathBuf,
    child: Option<Child>,
    runs: u32,
}

impl Daemon {
    fn new(what: impl Into<String>, program: &Path, args: Vec<OsString>, log: PathBuf) -> Self {
        Daemon {
            what: what.into(),
            program: program.to_owned(),
            args,
            log,
            child: None,
            runs: 0,
        }
    }

    fn spawn(&mut self) -> Result<()> {
        self.kill();
        let mut log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .map_err(io_err(format!("opening {}", self.log.display())))?;
        self.runs += 1;
        writeln!(log, "===== {} run {} =====", self.what, self.runs)
            .map_err(io_err(format!("writing {}", self.log.display())))?;
        let stdout = log
            .try_clone()
            .map_err(io_err(format!("opening {}", self.log.display())))?;
        let child = Command::new(&self.program)
            .args(&self.args)
            .env(OWNER_ENV, std::process::id().to_string())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(log)
            .spawn()
            .map_err(io_err(format!("starting {}", self.program.display())))?;
        self.child = Some(child);
        Ok(())
    }

    fn pid(&self) -> Option<Pid> {
        self.child
            .as_ref()
            .and_then(|c| Pid::from_raw(c.id() as i32))
    }

    /// An error if the process has exited (it is then reaped).
    fn check_alive(&mut self) -> Result<()> {
        let Some(child) = self.child.as_mut() else {
            return Err(StackError::Unexpected(format!(
                "{} is not running",
                self.what
            )));
        };
        match child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => {
                self.child = None;
                Err(StackError::Exited {
                    what: self.what.clone(),
                    status,
                    log: tail(&self.log_text(), 6000),
                })
            }
            Err(e) => Err(io_err(format!("waiting for {}", self.what))(e)),
        }
    }

    fn is_running(&mut self) -> bool {
        self.check_alive().is_ok()
    }

    /// Waits until `ready`, failing early if the process exits.
    fn wait_ready(&mut self, what: &str, mut ready: impl FnMut() -> bool) -> Result<()> {
        let start = Instant::now();
        loop {
            self.check_alive()?;
            if ready() {
                return Ok(());
            }
            if start.elapsed() >= DAEMON_TIMEOUT {
                return Err(StackError::Timeout {
                    what: format!("{what} ({})", self.what),
                    waited: DAEMON_TIMEOUT,
                    detail: format!("its log:\n{}", tail(&self.log_text(), 6000)),
                });
            }
            sleep(POLL);
        }
    }

    /// Sends `signal` and waits up to `grace` for the exit; kills it after that. Returns the
    /// exit status, or an error if it had to be killed.
    fn signal_and_wait(&mut self, signal: Signal, grace: Duration) -> Result<ExitStatus> {
        let Some(pid) = self.pid() else {
            return Err(StackError::Unexpected(format!(
                "{} is not running",
                self.what
            )));
        };
        let _ = kill_process(pid, signal);
        let start = Instant::now();
        loop {
            let child = self
                .child
                .as_mut()
                .ok_or_else(|| StackError::Unexpected(format!("{} is not running", self.what)))?;
            match child.try_wait() {
                Ok(Some(status)) => {
                    self.child = None;
                    return Ok(status);
                }
                Ok(None) if start.elapsed() < grace => sleep(POLL),
                Ok(None) => {
                    self.kill();
                    return Err(StackError::Timeout {
                        what: format!("{} to exit after {signal:?} (killed)", self.what),
                        waited: grace,
                        detail: format!("its log:\n{}", tail(&self.log_text(), 4000)),
                    });
                }
                Err(e) => return Err(io_err(format!("waiting for {}", self.what))(e)),
            }
        }
    }

    /// SIGKILL and reap; nothing if it is not running.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log_text(&self) -> String {
        fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if std::thread::panicking() && self.child.is_some() {
            eprintln!(
                "[{} log, {}]\n{}",
                self.what,
                self.log.display(),
                tail(&self.log_text(), 8000)
            );
        }
        self.kill();
    }
}

/// The last `max` bytes of `text` (at a character boundary).
fn tail(text: &str, max: usize) -> String {
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text[start..].to_owned()
}

fn connects(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_ok()
}

// ---------------------------------------------------------------------------------------------
// Controller

/// `controller-stub serve` on a SQLite file, with the relay endpoint (mutual TLS); killed on
/// drop.
#[derive(Debug)]
pub struct ControllerProc {
    /// `http://127.0.0.1:<port>`.
    pub api_url: String,
    pub api_addr: SocketAddr,
    /// The relay endpoint relays connect to (server name `localhost`).
    pub relay_addr: SocketAddr,
    /// Its directory: database, `pki/`, `controller.log`.
    pub dir: PathBuf,
    /// `sqlite:<dir>/controller.db`.
    pub db_url: String,
    daemon: Daemon,
}

impl ControllerProc {
    /// Starts the controller in `dir` (created if missing) with relay certificates for
    /// `relay_hosts` (made by `pki init` on the first start in `dir`) and the SFC `drivers`
    /// (e.g. `["logging"]` or `["ovs"]`), and waits until the API and the relay endpoint
    /// listen.
    pub fn start(dir: &Path, relay_hosts: &[&str], drivers: &[&str]) -> Result<ControllerProc> {
        let bins = binaries()?;
        fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
        let pki = dir.join("pki");
        if !pki.join("ca.pem").exists() {
            let mut cmd = Command::new(&bins.controller);
            cmd.args(["pki", "init", "--dir"]).arg(&pki);
            for host in relay_hosts {
                cmd.args(["--relay", host]);
            }
            let out = cmd
                .stdin(Stdio::null())
                .output()
                .map_err(io_err("running controller-stub pki init"))?;
            if !out.status.success() {
                return Err(crate::Error::ToolFailed {
                    tool: "controller-stub pki init".into(),
                    status: out.status,
                    stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
                }
                .into());
            }
        }
        let api_addr = free_addr()?;
        let relay_addr = free_addr()?;
        let db_url = format!("sqlite:{}", dir.join("controller.db").display());
        let drivers = if drivers.is_empty() {
            "logging".to_owned()
        } else {
            drivers.join(",")
        };
        let args: Vec<OsString> = vec![
            "--log".into(),
            log_filter().into(),
            "serve".into(),
            "--listen".into(),
            api_addr.to_string().into(),
            "--database".into(),
            db_url.clone().into(),
            "--drivers".into(),
            drivers.into(),
            "--relay-listen".into(),
            relay_addr.to_string().into(),
            "--relay-cert".into(),
            pki.join("server.pem").into(),
            "--relay-key".into(),
            pki.join("server.key").into(),
            "--relay-ca".into(),
            pki.join("ca.pem").into(),
        ];
        let mut ctl = ControllerProc {
            api_url: format!("http://{api_addr}"),
            api_addr,
            relay_addr,
            dir: dir.to_owned(),
            db_url,
            daemon: Daemon::new(
                "controller-stub",
                &bins.controller,
                args,
                dir.join("controller.log"),
            ),
        };
        ctl.start_again()?;
        Ok(ctl)
    }

    /// Starts it again (after [`Self::stop`] or [`Self::kill`]): same directory, database,
    /// ports and certificates. Waits until both listeners accept connections.
    pub fn start_again(&mut self) -> Result<()> {
        self.daemon.spawn()?;
        let (api, relay) = (self.api_addr, self.relay_addr);
        self.daemon
            .wait_ready("the API and the relay endpoint to listen", || {
                connects(api) && connects(relay)
            })
    }

    /// A client of its API.
    pub fn client(&self) -> Result<Client> {
        Client::new(&self.api_url)
    }

    /// SIGTERM, and waits for the exit (SIGKILL after [`DAEMON_TIMEOUT`], then an error).
    pub fn stop(&mut self) -> Result<ExitStatus> {
        self.daemon.signal_and_wait(Signal::TERM, DAEMON_TIMEOUT)
    }

    /// SIGKILL, and reaps it.
    pub fn kill(&mut self) {
        self.daemon.kill();
    }

    pub fn is_running(&mut self) -> bool {
        self.daemon.is_running()
    }

    /// The CA, client certificate and key `pki init` issued for relay `host`.
    pub fn relay_tls(&self, host: &str) -> (PathBuf, PathBuf, PathBuf) {
        let d = self.dir.join("pki").join("relays").join(host);
        (d.join("ca.pem"), d.join("relay.pem"), d.join("relay.key"))
    }

    /// Everything it logged, over all its runs.
    pub fn log(&self) -> String {
        self.daemon.log_text()
    }
}

// ---------------------------------------------------------------------------------------------
// Relay

/// How to run a [`RelayProc`].
#[derive(Debug, Clone)]
pub struct RelayOptions {
    /// The host name it registers as (its certificate's name, Neutron's `binding:host_id`).
    pub host: String,
    /// The guests' channel name it looks for.
    pub channel: String,
    /// Seconds between full libvirt reconciles (relay-host's default is 60).
    pub reconcile_interval_secs: Option<u64>,
    /// Lines appended to the top level of the TOML file (before any table).
    pub extra: Vec<String>,
    ovs: Option<OvsSection>,
}

#[derive(Debug, Clone)]
struct OvsSection {
    bridge: String,
    db: String,
    rundir: PathBuf,
}

impl RelayOptions {
    pub fn new(host: impl Into<String>) -> Self {
        RelayOptions {
            host: host.into(),
            channel: CHANNEL.to_owned(),
            reconcile_interval_secs: None,
            extra: Vec::new(),
            ovs: None,
        }
    }

    pub fn channel(mut self, channel: impl Into<String>) -> Self {
        self.channel = channel.into();
        self
    }

    pub fn reconcile_interval_secs(mut self, secs: u64) -> Self {
        self.reconcile_interval_secs = Some(secs);
        self
    }

    /// Programs `bridge` of the private Open vSwitch `ovs` (its database and run directory).
    pub fn ovs(mut self, ovs: &crate::ovs::TestOvs, bridge: &str) -> Self {
        self.ovs = Some(OvsSection {
            bridge: bridge.to_owned(),
            db: ovs.db(),
            rundir: ovs.rundir().to_owned(),
        });
        self
    }

    fn toml(&self, ctl: &ControllerProc, metrics: SocketAddr) -> String {
        let (ca, cert, key) = ctl.relay_tls(&self.host);
        let s = |v: &str| toml_string(v);
        let p = |v: &Path| toml_string(&v.to_string_lossy());
        let mut t = String::new();
        t.push_str(&format!("host = {}\n", s(&self.host)));
        t.push_str(&format!(
            "controller = {}\n",
            s(&ctl.relay_addr.to_string())
        ));
        t.push_str("server_name = \"localhost\"\n");
        t.push_str(&format!(
            "ca = {}\ncert = {}\nkey = {}\n",
            p(&ca),
            p(&cert),
            p(&key)
        ));
        t.push_str(&format!("libvirt_uri = {}\n", s(crate::libvirt::URI)));
        t.push_str(&format!("channel = {}\n", s(&self.channel)));
        t.push_str(&format!("metrics_listen = {}\n", s(&metrics.to_string())));
        if let Some(secs) = self.reconcile_interval_secs {
            t.push_str(&format!("reconcile_interval_secs = {secs}\n"));
        }
        for line in &self.extra {
            t.push_str(line);
            t.push('\n');
        }
        if let Some(ovs) = &self.ovs {
            t.push_str(&format!(
                "\n[ovs]\nbridge = {}\ndb = {}\nrundir = {}\n",
                s(&ovs.bridge),
                s(&ovs.db),
                p(&ovs.rundir)
            ));
        }
        t
    }
}

/// A TOML basic string.
fn toml_string(v: &str) -> String {
    let mut out = String::from("\"");
    for c in v.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// The `relay-host` daemon with its TOML configuration; killed on drop.
#[derive(Debug)]
pub struct RelayProc {
    pub host: String,
    pub channel: String,
    /// Its Prometheus endpoint.
    pub metrics_addr: SocketAddr,
    /// Its configuration file.
    pub config: PathBuf,
    daemon: Daemon,
}

impl RelayProc {
    /// Starts `relay-host` registered as `host` (which must be one of the controller's
    /// `relay_hosts`), for guests on [`CHANNEL`], programming `ovs`'s bridge if given.
    pub fn start(
        dir: &Path,
        ctl: &ControllerProc,
        host: &str,
        ovs: Option<(&crate::ovs::TestOvs, &str)>,
    ) -> Result<RelayProc> {
        let mut options = RelayOptions::new(host);
        if let Some((ovs, bridge)) = ovs {
            options = options.ovs(ovs, bridge);
        }
        RelayProc::start_with(dir, ctl, &options)
    }

    /// Starts it as `options` say, writing `relay-<host>.toml` and `relay-<host>.log` in
    /// `dir`, and waits until its uplink to `ctl` is registered.
    pub fn start_with(dir: &Path, ctl: &ControllerProc, options: &RelayOptions) -> Result<Self> {
        let bins = binaries()?;
        fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
        let metrics_addr = free_addr()?;
        let config = dir.join(format!("relay-{}.toml", options.host));
        fs::write(&config, options.toml(ctl, metrics_addr))
            .map_err(io_err(format!("writing {}", config.display())))?;
        let args: Vec<OsString> = vec![
            "--config".into(),
            config.clone().into(),
            "--log".into(),
            log_filter().into(),
        ];
        let mut relay = RelayProc {
            host: options.host.clone(),
            channel: options.channel.clone(),
            metrics_addr,
            config,
            daemon: Daemon::new(
                format!("relay-host {}", options.host),
                &bins.relay_host,
                args,
                dir.join(format!("relay-{}.log", options.host)),
            ),
        };
        relay.start_again()?;
        Ok(relay)
    }

    /// Starts it again with the same configuration, and waits until its uplink is registered.
    pub fn start_again(&mut self) -> Result<()> {
        self.daemon.spawn()?;
        self.wait_uplink()
    }

    /// Waits until `relay_uplink_connected` is 1.
    pub fn wait_uplink(&mut self) -> Result<()> {
        let addr = self.metrics_addr;
        self.daemon.wait_ready("its uplink to be registered", || {
            fetch_metrics(addr)
                .is_ok_and(|m| metric_value(&m, "relay_uplink_connected", &[]) == Some(1.0))
        })
    }

    /// SIGKILL, and reaps it.
    pub fn kill9(&mut self) {
        self.daemon.kill();
    }

    /// SIGTERM, and waits for the exit (SIGKILL after [`DAEMON_TIMEOUT`], then an error).
    pub fn stop(&mut self) -> Result<ExitStatus> {
        self.daemon.signal_and_wait(Signal::TERM, DAEMON_TIMEOUT)
    }

    pub fn is_running(&mut self) -> bool {
        self.daemon.is_running()
    }

    /// Everything it logged, over all its runs.
    pub fn log(&self) -> String {
        self.daemon.log_text()
    }

    /// `GET /metrics`.
    pub fn metrics(&self) -> Result<String> {
        fetch_metrics(self.metrics_addr)
    }

    /// The sum of the series of `name` carrying all of `labels`, 0 if there is none.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Result<f64> {
        Ok(metric_value(&self.metrics()?, name, labels).unwrap_or(0.0))
    }
}

/// `GET /metrics` over plain HTTP/1.0.
fn fetch_metrics(addr: SocketAddr) -> Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(io_err(format!("connecting to the metrics endpoint {addr}")))?;
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    stream
        .write_all(format!("GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .map_err(io_err("asking for the metrics"))?;
    let mut text = String::new();
    stream
        .read_to_string(&mut text)
        .map_err(io_err("reading the metrics"))?;
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| {
        StackError::Unexpected(format!("a metrics answer without a body: {text}"))
    })?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return Err(StackError::Unexpected(format!("metrics answered {head}")));
    }
    Ok(body.to_owned())
}

/// The sum of the samples of metric `name` (as written, e.g. `relay_frames_dropped_total`)
/// whose labels include all of `labels`, in OpenMetrics text; `None` if there is none.
pub fn metric_value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut sum = None;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (metric, label_text) = match series.split_once('{') {
            Some((m, rest)) => (m, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if metric != name {
            continue;
        }
        let has = |k: &str, v: &str| {
            label_text
                .split(',')
                .any(|pair| pair.split_once('=') == Some((k, &format!("\"{v}\""))))
        };
        if labels.iter().all(|(k, v)| has(k, v)) {
            if let Ok(v) = value.parse::<f64>() {
                *sum.get_or_insert(0.0) += v;
            }
        }
    }
    sum
}

// ---------------------------------------------------------------------------------------------
// API client

/// A configuration as the VNF-config API shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct VnfConfig {
    pub instance_id: String,
    pub service: String,
    pub version: u64,
    pub config_id: String,
    /// `pending`, `delivered`, `applied` or `failed`.
    pub status: String,
    pub applied_version: Option<u64>,
    pub message: Option<String>,
    /// The whole object.
    pub raw: Value,
}

impl VnfConfig {
    fn parse(v: &Value) -> Result<VnfConfig> {
        let obj = v.get("config").unwrap_or(v);
        let text = |k: &str| obj.get(k).and_then(Value::as_str).map(str::to_owned);
        let bad = || StackError::Unexpected(format!("not a VNF configuration: {v}"));
        Ok(VnfConfig {
            instance_id: text("instance_id").ok_or_else(bad)?,
            service: text("service").ok_or_else(bad)?,
            version: obj.get("version").and_then(Value::as_u64).ok_or_else(bad)?,
            config_id: text("config_id").ok_or_else(bad)?,
            status: text("status").ok_or_else(bad)?,
            applied_version: obj.get("applied_version").and_then(Value::as_u64),
            message: text("message"),
            raw: obj.clone(),
        })
    }

    /// Whether the agent applied exactly `version` (and it is the desired one).
    pub fn is_applied(&self, version: u64) -> bool {
        self.status == "applied" && self.version == version && self.applied_version == Some(version)
    }
}

/// A client of the controller's API as an administrator (noauth), async (reqwest).
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
}

impl Client {
    pub fn new(api_url: &str) -> Result<Client> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(60))
            .build()
            .map_err(|source| StackError::Http {
                what: "building the HTTP client".into(),
                source,
            })?;
        Ok(Client {
            http,
            base: api_url.trim_end_matches('/').to_owned(),
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    /// One call; the JSON answer (`Value::Null` for an empty one, e.g. 204), an error for any
    /// status other than 2xx.
    pub async fn request(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Value> {
        let url = format!("{}{path}", self.base);
        let mut request = self
            .http
            .request(method.clone(), &url)
            .header("X-Roles", "admin");
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|source| StackError::Http {
            what: format!("{method} {url}"),
            source,
        })?;
        let status = response.status();
        let text = response.text().await.map_err(|source| StackError::Http {
            what: format!("reading the answer to {method} {url}"),
            source,
        })?;
        if !status.is_success() {
            return Err(StackError::Api {
                method,
                url,
                status: status.as_u16(),
                body: text,
            });
        }
        if text.trim().is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_str(&text)
            .map_err(|e| StackError::Unexpected(format!("{method} {url}: {e}: {text}")))
    }

    pub async fn get(&self, path: &str) -> Result<Value> {
        self.request(Method::GET, path, None).await
    }

    /// Registers `key` as `instance`'s relay key (`POST .../key`, the import form).
    pub async fn set_key(&self, instance: Uuid, key: &InstanceKey) -> Result<()> {
        let body = json!({"key": {"key": key.to_hex()}});
        self.request(
            Method::POST,
            &format!("/v2.0/vnf/instances/{instance}/key"),
            Some(&body),
        )
        .await
        .map(drop)
    }

    /// Sets the desired configuration of `service` on `instance` to the JSON `payload`.
    pub async fn set_config(
        &self,
        instance: Uuid,
        service: &str,
        payload: &Value,
    ) -> Result<VnfConfig> {
        let body = json!({"config": {"payload": payload}});
        let v = self
            .request(
                Method::PUT,
                &format!("/v2.0/vnf/instances/{instance}/configs/{service}"),
                Some(&body),
            )
            .await?;
        VnfConfig::parse(&v)
    }

    /// The configuration of `service` on `instance`, with its delivery status.
    pub async fn config(&self, instance: Uuid, service: &str) -> Result<VnfConfig> {
        let v = self
            .get(&format!("/v2.0/vnf/instances/{instance}/configs/{service}"))
            .await?;
        VnfConfig::parse(&v)
    }

    /// `GET /v2.0/vnf/hosts`: the relay hosts that registered.
    pub async fn hosts(&self) -> Result<Vec<Value>> {
        let v = self.get("/v2.0/vnf/hosts").await?;
        v.get("hosts")
            .and_then(Value::as_array)
            .cloned()
            .ok_or_else(|| StackError::Unexpected(format!("no hosts list: {v}")))
    }

    /// Relay `host` as `GET /v2.0/vnf/hosts` shows it: whether it is connected, and the
    /// instance ids of its guests; `None` if it never registered.
    pub async fn host_state(&self, host: &str) -> Result<Option<(bool, Vec<String>)>> {
        Ok(self.hosts().await?.iter().find_map(|h| {
            (h.get("host").and_then(Value::as_str) == Some(host)).then(|| {
                let connected = h.get("connected").and_then(Value::as_bool) == Some(true);
                let guests = h
                    .get("guests")
                    .and_then(Value::as_array)
                    .map(|gs| {
                        gs.iter()
                            .filter_map(|g| g.get("instance_id").and_then(Value::as_str))
                            .map(str::to_owned)
                            .collect()
                    })
                    .unwrap_or_default();
                (connected, guests)
            })
        }))
    }

    /// Polls the configuration until `done` holds for it (errors, e.g. while the controller
    /// restarts, are retried) or `timeout` passes.
    pub async fn wait_config(
        &self,
        instance: Uuid,
        service: &str,
        what: &str,
        timeout: Duration,
        done: impl Fn(&VnfConfig) -> bool,
    ) -> Result<VnfConfig> {
        let start = Instant::now();
        loop {
            let last = match self.config(instance, service).await {
                Ok(c) if done(&c) => return Ok(c),
                Ok(c) => format!("last seen: {}", c.raw),
                Err(e) => format!("last error: {e}"),
            };
            if start.elapsed() >= timeout {
                return Err(StackError::Timeout {
                    what: format!("{what} ({instance} {service})"),
                    waited: timeout,
                    detail: last,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until `version` of `service` is the applied desired version on `instance`.
    pub async fn wait_applied(
        &self,
        instance: Uuid,
        service: &str,
        version: u64,
        timeout: Duration,
    ) -> Result<VnfConfig> {
        self.wait_config(
            instance,
            service,
            &format!("version {version} applied"),
            timeout,
            |c| c.is_applied(version),
        )
        .await
    }

    /// Polls until `done` holds for relay `host`'s (connected, guests), or `timeout` passes.
    pub async fn wait_host(
        &self,
        host: &str,
        what: &str,
        timeout: Duration,
        done: impl Fn(bool, &[String]) -> bool,
    ) -> Result<()> {
        let start = Instant::now();
        loop {
            let last = match self.host_state(host).await {
                Ok(Some((connected, guests))) if done(connected, &guests) => return Ok(()),
                Ok(state) => format!("last seen: {state:?}"),
                Err(e) => format!("last error: {e}"),
            };
            if start.elapsed() >= timeout {
                return Err(StackError::Timeout {
                    what: format!("relay host {host}: {what}"),
                    waited: timeout,
                    detail: last,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// VNF guests

/// `/opt/e2e/run-vnf CHANNEL MODE`: mounts the share, then acts as [`GuestMode`] says.
const RUN_VNF_SCRIPT: &str = r#"#!/bin/sh
channel=$1
mode=$2
mkdir -p /mnt/share
mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 e2e /mnt/share \
    || { echo "sfc-guest: fatal: cannot mount the 9p share"; exit 1; }
mkdir -p /mnt/share/state /run/vnf/root/etc/app
echo boot >>/mnt/share/boots
echo "e2e: mode $mode on $channel, boot $(wc -l </mnt/share/boots)"
case "$mode" in
agent) ;;
wait-go | attack | isolation)
    echo "e2e: waiting for the go file"
    while [ ! -e /mnt/share/go ]; do sleep 0.2; done
    ;;
*)
    echo "sfc-guest: fatal: unknown mode $mode"
    exit 1
    ;;
esac
case "$mode" in
attack)
    /bin/guest-probe attack "$channel" /mnt/share || echo "e2e: the probe failed ($?)"
    ;;
isolation)
    /bin/guest-probe isolation "$channel" /mnt/share || echo "e2e: the probe failed ($?)"
    echo "e2e: probe finished"
    # Stay up: the relay keeps this guest's series (metrics) while it runs.
    while :; do sleep 3600; done
    ;;
esac
extra=
[ -r /mnt/share/agent-args ] && extra=$(cat /mnt/share/agent-args)
echo "e2e: starting the agent"
exec /bin/vnf-agent --port "$channel" --root /run/vnf/root --state-dir /mnt/share/state \
    --files-allow-dir /etc/app --files-reload record=/opt/e2e/record --log info $extra
"#;

/// The `files` reload command: the guest's own record of every version it applied, in order.
const RECORD_SCRIPT: &str = r#"#!/bin/sh
PATH=/bin:/sbin:/usr/bin:/usr/sbin
v=$(cat /run/vnf/root/etc/app/version)
echo "$v" >/mnt/share/reloading
[ -r /mnt/share/reload-delay ] && sleep "$(cat /mnt/share/reload-delay)"
echo "$v" >>/mnt/share/applied.log
echo "e2e: applied $v" >/dev/console
"#;

/// What a [`VnfGuest`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestMode {
    /// The agent, at once.
    Agent,
    /// The agent once the host calls [`VnfGuest::go`].
    AgentAfterGo,
    /// After [`VnfGuest::go`]: `guest-probe attack` (garbage, forged and replayed frames, see
    /// `src/bin/guest-probe.rs`), then the agent.
    Attack,
    /// After [`VnfGuest::go`]: `guest-probe isolation` (asks for and answers for the instance
    /// in `foreign.json`), then nothing (the guest stays up).
    Isolation,
}

impl GuestMode {
    fn arg(self) -> &'static str {
        match self {
            GuestMode::Agent => "agent",
            GuestMode::AgentAfterGo => "wait-go",
            GuestMode::Attack => "attack",
            GuestMode::Isolation => "isolation",
        }
    }
}

/// The VNF guest image: the test image with the static agent and probe, the scripts above,
/// and the 9p modules. Built once per process.
pub fn vnf_image() -> Result<&'static GuestImage> {
    static IMAGE: Mutex<Option<&'static GuestImage>> = Mutex::new(None);
    let mut image = IMAGE.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(i) = *image {
        return Ok(i);
    }
    let bins = binaries()?;
    let built = GuestImageBuilder::new()
        .file(&bins.vnf_agent, "/bin/vnf-agent", 0o755)
        .file(&bins.guest_probe, "/bin/guest-probe", 0o755)
        .script(RUN_VNF, RUN_VNF_SCRIPT)
        .script("/opt/e2e/record", RECORD_SCRIPT)
        .module("9pnet_virtio")
        .module("9p")
        .build()?;
    let leaked: &'static GuestImage = Box::leak(Box::new(built));
    *image = Some(leaked);
    Ok(leaked)
}

/// A channel name of its own for this process's `n`-th relay: `org.opensfc.e2e.<pid>.<n>`.
pub fn unique_channel() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "org.opensfc.e2e.{}.{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A fresh random instance key.
pub fn random_key() -> Result<InstanceKey> {
    let mut bytes = [0u8; relay_protocol::KEY_LEN];
    fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(io_err("reading /dev/urandom"))?;
    InstanceKey::from_bytes(&bytes)
        .map_err(|e| StackError::Unexpected(format!("an instance key of 32 bytes: {e}")))
}

/// The `files` payload that makes a [`VnfGuest`]'s agent write `marker` to [`VERSION_FILE`]
/// and record it in `applied.log` through the reload command.
pub fn files_payload(marker: u64) -> Value {
    json!({
        "files": [{"path": VERSION_FILE, "content": format!("{marker}\n")}],
        "reload": RECORD_RELOAD,
    })
}

/// A VNF guest: a persistent TCG domain in the shared libvirtd with the relay channel, its
/// instance key in the SMBIOS OEM strings and a 9p share (see the module docs). Destroyed and
/// undefined on drop, then the share is removed.
#[derive(Debug)]
pub struct VnfGuest {
    // Field order is drop order: the domain goes before its share.
    pub domain: TestDomain,
    pub instance: Uuid,
    pub key: InstanceKey,
    pub channel: String,
    share: TempDir,
}

impl VnfGuest {
    /// Defines and starts a guest running `mode` on `channel` with a fresh key; does not wait
    /// for the boot. `prepare` can put files into the share before the guest starts (e.g.
    /// `agent-args`: more arguments of the agent, `reload-delay`: seconds the reload command
    /// sleeps, the probe's `foreign-key`).
    pub fn boot(
        channel: &str,
        mode: GuestMode,
        prepare: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<VnfGuest> {
        VnfGuest::boot_with_key(channel, mode, random_key()?, prepare)
    }

    /// [`Self::boot`] with the given instance key (also written to the share as `key`, for the
    /// probe).
    pub fn boot_with_key(
        channel: &str,
        mode: GuestMode,
        key: InstanceKey,
        prepare: impl FnOnce(&Path) -> Result<()>,
    ) -> Result<VnfGuest> {
        crate::libvirt::ensure_libvirtd()?;
        let image = vnf_image()?;
        let share = tempfile::Builder::new()
            .prefix("sfc-e2e-share-")
            .tempdir_in("/tmp")
            .map_err(io_err("creating the guest's share"))?;
        let key_file = share.path().join("key");
        fs::write(&key_file, key.to_hex())
            .map_err(io_err(format!("writing {}", key_file.display())))?;
        prepare(share.path())?;
        let source = share.path().to_str().ok_or_else(|| {
            StackError::Unexpected(format!("{} is not UTF-8", share.path().display()))
        })?;
        let filesystem = format!(
            "    <filesystem type='mount' accessmode='passthrough'>\n      \
             <source dir='{source}'/>\n      <target dir='e2e'/>\n    </filesystem>\n"
        );
        let domain = LibvirtGuest::new(image)
            .run(RUN_VNF)
            .args([channel, mode.arg()])
            .channel(channel)
            .oem_string(format!("org.opensfc.relay.key:{}", key.to_hex()))
            .define_and_start_filtered(|xml| {
                if xml.matches("</devices>").count() != 1 {
                    return Err("the domain XML has no single <devices>".into());
                }
                Ok(xml.replace("</devices>", &format!("{filesystem}  </devices>")))
            })?;
        let instance = Uuid::parse_str(domain.uuid())
            .map_err(|e| StackError::Unexpected(format!("domain UUID {}: {e}", domain.uuid())))?;
        Ok(VnfGuest {
            domain,
            instance,
            key,
            channel: channel.to_owned(),
            share,
        })
    }

    /// The host directory the guest sees as `/mnt/share`.
    pub fn share(&self) -> &Path {
        self.share.path()
    }

    /// What the guest recorded applying, in order (the markers of [`files_payload`]).
    pub fn applied_log(&self) -> Vec<u64> {
        fs::read_to_string(self.share().join("applied.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// The agent's record of applied versions (`state/applied.json`), if it wrote one.
    pub fn agent_state(&self) -> Option<Value> {
        let text = fs::read_to_string(self.share().join("state/applied.json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    /// How many times the guest booted.
    pub fn boots(&self) -> usize {
        fs::read_to_string(self.share().join("boots"))
            .map(|t| t.lines().count())
            .unwrap_or(0)
    }

    /// Lets an [`GuestMode::AgentAfterGo`] guest start its agent.
    pub fn go(&self) -> Result<()> {
        let path = self.share().join("go");
        fs::write(&path, b"go\n").map_err(io_err(format!("writing {}", path.display())))
    }

    /// Waits until the guest is about to start its agent.
    pub fn wait_agent(&self, timeout: Duration) -> Result<()> {
        Ok(self.domain.wait_for_console(AGENT_MARKER, timeout)?)
    }

    /// Everything on its console since the last start.
    pub fn console(&self) -> String {
        self.domain.console_output()
    }

    /// Powers the guest off at once (`virsh destroy`); the domain stays defined.
    pub fn power_off(&self) -> Result<()> {
        Ok(self.domain.destroy()?)
    }

    /// Starts the defined domain again (same UUID, key and share).
    pub fn power_on(&self) -> Result<()> {
        virsh(&["start", self.domain.name()])?;
        Ok(())
    }

    /// A hard reboot: power off, then on.
    pub fn reboot(&self) -> Result<()> {
        self.power_off()?;
        self.power_on()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn metric_values_sum_the_series_with_the_labels_asked_for() {
        let text = "# TYPE relay_frames_dropped counter\n\
            relay_frames_dropped_total{instance=\"a\",reason=\"garbage\"} 3\n\
            relay_frames_dropped_total{instance=\"a\",reason=\"replay\"} 1\n\
            relay_frames_dropped_total{instance=\"b\",reason=\"garbage\"} 2\n\
            relay_uplink_connected 1\n\
            # EOF\n";
        let m = |name, labels: &[(&str, &str)]| metric_value(text, name, labels);
        assert_eq!(m("relay_frames_dropped_total", &[]), Some(6.0));
        assert_eq!(
            m("relay_frames_dropped_total", &[("reason", "garbage")]),
            Some(5.0)
        );
        assert_eq!(
            m(
                "relay_frames_dropped_total",
                &[("instance", "a"), ("reason", "replay")]
            ),
            Some(1.0)
        );
        assert_eq!(m("relay_frames_dropped_total", &[("instance", "c")]), None);
        assert_eq!(m("relay_uplink_connected", &[]), Some(1.0));
        assert_eq!(m("relay_uplink", &[]), None);
    }

    #[test]
    fn toml_strings_are_escaped() {
        assert_eq!(toml_string(r#"a"b\c"#), r#""a\"b\\c""#);
        assert_eq!(toml_string("x\ny"), r#""x\u000ay""#);
    }
}
