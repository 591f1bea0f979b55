//! `make demo`: the whole path as an operator runs it, on this machine, with a readable report.
//!
//! A private Open vSwitch (userspace datapath, bridge `br-int`), the shared `libvirtd`, the
//! controller (`controller-stub serve`, SQLite, `ovs` driver, relay endpoint with mutual TLS)
//! and `relay-host` (registered as [`HOST`], programming `br-int`) run as real processes
//! ([`e2e_tests::stack`]). Three TCG guests ([`e2e_tests::vnf`]) with two virtio-net ports each
//! route between their ports and run `vnf-agent`. Then the networking-sfc seed workflow goes
//! through the `sfc` CLI: network `net1`, ports `p1`..`p6` (the guests' NICs, MACs chosen by the
//! controller as Nova would get them), port pairs, groups `PG1` (PP1, PP2) and `PG2` (PP3),
//! classifier `FC1` (TCP 22.1.20.1:23 -> 171.4.5.6:100 from port `src`) and chain `PC1`. A
//! firewall configuration goes to each VNF through the relay (VNF-config API), and TCP
//! connections from a source namespace to a destination namespace show where traffic goes:
//! the frames each VNF forwarded are the packets its egress port sent into the bridge
//! (`ovs-ofctl dump-ports`), measured per connection.
//!
//! Everything is removed on exit, on SIGINT/SIGTERM too (the steps poll a flag the signal
//! thread sets, then the resources drop in reverse order), and what a killed earlier run left
//! behind (domains, namespaces, daemons, taps, its work directory) is removed at the start.
//! Exit status 0 only if every step worked.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

use e2e_tests::libvirt::{ensure_libvirtd, TestDomain};
use e2e_tests::netns::Netns;
use e2e_tests::ovs::{PortSpec, TestOvs};
use e2e_tests::stack::{self, Binaries, Client, ControllerProc, RelayOptions, RelayProc};
use e2e_tests::vnf::{self, DataPlane, Tap};
use relay_protocol::{InstanceKey, Uuid};
use serde_json::{json, Value};

/// The relay's host name: its certificate's name and the ports' `binding:host_id`.
const HOST: &str = "compute1";
const BRIDGE: &str = "br-int";
/// The relay channel of the demo's guests. Not the default name: a test running on the same
/// machine with its own relay must not pick up our guests, nor ours theirs.
const CHANNEL: &str = "org.opensfc.relay.demo";
const SRC_IP: &str = "22.1.20.1";
const DST_IP: &str = "171.4.5.6";
/// The classifier's ports.
const SRC_PORT: u16 = 23;
const DST_PORT: u16 = 100;
/// A destination port the classifier does not match.
const OTHER_DST_PORT: u16 = 101;
/// A source port the classifier does not match.
const OTHER_SRC_PORT: u16 = 40023;
const BOOT_TIMEOUT: Duration = Duration::from_secs(180);
const WAIT: Duration = Duration::from_secs(120);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Prefix of the work directory, `/tmp/sfc-demo-<pid>`.
const WORKDIR_PREFIX: &str = "sfc-demo-";

type Result<T, E = Failure> = std::result::Result<T, E>;

/// Why the demo stopped.
#[derive(Debug)]
enum Failure {
    Interrupted,
    Failed(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Interrupted => f.write_str("interrupted"),
            Failure::Failed(m) => f.write_str(m),
        }
    }
}

impl From<stack::StackError> for Failure {
    fn from(e: stack::StackError) -> Self {
        Failure::Failed(e.to_string())
    }
}

impl From<e2e_tests::Error> for Failure {
    fn from(e: e2e_tests::Error) -> Self {
        Failure::Failed(e.to_string())
    }
}

fn fail<T>(message: impl Into<String>) -> Result<T> {
    Err(Failure::Failed(message.into()))
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

fn check_interrupt() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        Err(Failure::Interrupted)
    } else {
        Ok(())
    }
}

/// Sleeps `d`, or less when interrupted.
fn pause(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    while Instant::now() < end {
        check_interrupt()?;
        sleep(Duration::from_millis(50).min(end.saturating_duration_since(Instant::now())));
    }
    check_interrupt()
}

/// Installs the SIGINT/SIGTERM handlers (before any child exists) and a thread that sets
/// [`INTERRUPTED`] when one arrives.
fn watch_signals() -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Failed(format!("starting the signal runtime: {e}")))?;
    let (mut int, mut term) = {
        let _guard = rt.enter();
        let int = signal(SignalKind::interrupt());
        let term = signal(SignalKind::terminate());
        match (int, term) {
            (Ok(i), Ok(t)) => (i, t),
            (Err(e), _) | (_, Err(e)) => return fail(format!("installing signal handlers: {e}")),
        }
    };
    std::thread::spawn(move || {
        rt.block_on(async move {
            loop {
                std::future::poll_fn(|cx| {
                    let a = int.poll_recv(cx).is_ready();
                    let b = term.poll_recv(cx).is_ready();
                    if a || b {
                        std::task::Poll::Ready(())
                    } else {
                        std::task::Poll::Pending
                    }
                })
                .await;
                if INTERRUPTED.swap(true, Ordering::SeqCst) {
                    eprintln!("\n*** still cleaning up, please wait");
                } else {
                    eprintln!("\n*** interrupted: stopping and cleaning up");
                }
            }
        });
    });
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The report

#[derive(Debug, Default)]
struct Report {
    /// Name, outcome (`ok`, `FAIL`, `int`), duration.
    steps: Vec<(String, &'static str, Duration)>,
}

impl Report {
    /// Runs one step, printing its name before and its outcome after.
    fn step<T>(&mut self, name: &str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        check_interrupt()?;
        println!("\n==> {name}");
        let start = Instant::now();
        let result = match f() {
            // A Ctrl-C from the terminal reaches the step's child processes too, which then
            // fail: that is the interruption, not a failure of the step.
            Err(_) if INTERRUPTED.load(Ordering::SeqCst) => Err(Failure::Interrupted),
            r => r,
        };
        let took = start.elapsed();
        let outcome = match &result {
            Ok(_) => " ok ",
            Err(Failure::Interrupted) => "int.",
            Err(Failure::Failed(_)) => "FAIL",
        };
        match &result {
            Ok(_) => println!("    ok ({:.1} s)", took.as_secs_f64()),
            Err(Failure::Interrupted) => println!("    interrupted ({:.1} s)", took.as_secs_f64()),
            Err(e) => println!("    FAILED ({:.1} s): {e}", took.as_secs_f64()),
        }
        self.steps.push((name.to_owned(), outcome, took));
        result
    }
}

// ---------------------------------------------------------------------------------------------
// The `sfc` CLI

#[derive(Debug, Clone)]
struct Cli {
    program: PathBuf,
    url: String,
}

impl Cli {
    /// Runs `sfc --url <api> ARGS`, echoing the command; its standard output.
    fn run(&self, args: &[&str]) -> Result<String> {
        check_interrupt()?;
        println!("    $ sfc {}", shell_words(&redacted(args)));
        let out = Command::new(&self.program)
            .arg("--url")
            .arg(&self.url)
            .args(args)
            .env_remove("SFC_URL")
            .env_remove("SFC_PROJECT")
            .env_remove("SFC_TOKEN")
            .stdin(Stdio::null())
            .output()
            .map_err(|e| Failure::Failed(format!("running {}: {e}", self.program.display())))?;
        if !out.status.success() {
            return fail(format!(
                "sfc {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs it with `--json` and parses the answer.
    fn json(&self, args: &[&str]) -> Result<Value> {
        let mut all = args.to_vec();
        all.push("--json");
        let text = self.run(&all)?;
        serde_json::from_str(&text)
            .map_err(|e| Failure::Failed(format!("sfc {}: not JSON ({e}): {text}", args.join(" "))))
    }

    /// Runs it and prints its (table) output indented.
    fn show(&self, args: &[&str]) -> Result<String> {
        let text = self.run(args)?;
        for line in text.lines() {
            println!("      {line}");
        }
        Ok(text)
    }
}

/// `args` with the value of `--key` (an instance key) elided, for the echo.
fn redacted<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut out = args.to_vec();
    for i in 1..out.len() {
        if out[i - 1] == "--key" {
            out[i] = "<the instance key, also in the guest SMBIOS OEM strings>";
        }
    }
    out
}

fn shell_words(args: &[&str]) -> String {
    args.iter()
        .map(|a| {
            if a.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_=:./,@".contains(c))
            {
                (*a).to_owned()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn id_of(v: &Value) -> Result<String> {
    v.get("id")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| Failure::Failed(format!("no id in {v}")))
}

fn text_of(v: &Value, key: &str) -> Result<String> {
    v.get(key)
        .and_then(Value::as_str)
        .map(str::to_owned)
        .ok_or_else(|| Failure::Failed(format!("no {key} in {v}")))
}

// ---------------------------------------------------------------------------------------------
// Async calls of the harness's API client, interruptible

fn block<T>(
    rt: &tokio::runtime::Runtime,
    fut: impl std::future::Future<Output = stack::Result<T>>,
) -> Result<T> {
    rt.block_on(async {
        let mut fut = std::pin::pin!(fut);
        loop {
            match tokio::time::timeout(Duration::from_millis(200), &mut fut).await {
                Ok(r) => return r.map_err(Failure::from),
                Err(_) => check_interrupt()?,
            }
        }
    })
}

// ---------------------------------------------------------------------------------------------
// The world the demo builds. Field order is drop order: guests and their taps first, then the
// namespaces, the daemons, Open vSwitch, and the work directory last.

/// One VNF guest and its two ports.
struct VnfInfo {
    name: String,
    pair: String,
    /// Neutron ports (name, id, mac), ingress then egress.
    ports: [(String, String, String); 2],
    domain: Option<TestDomain>,
    instance: Uuid,
    key: Option<InstanceKey>,
    taps: Vec<Tap>,
    /// Bridge port names of the taps (ingress, egress).
    tap_names: [String; 2],
}

#[derive(Default)]
struct World {
    vnfs: Vec<VnfInfo>,
    src: Option<Netns>,
    dst: Option<Netns>,
    relay: Option<RelayProc>,
    ctl: Option<ControllerProc>,
    ovs: Option<TestOvs>,
    workdir: Option<WorkDir>,
}

impl World {
    fn ovs(&self) -> Result<&TestOvs> {
        self.ovs
            .as_ref()
            .ok_or_else(|| Failure::Failed("Open vSwitch is not running".into()))
    }

    /// Removes everything, in order, saying what went.
    fn cleanup(&mut self) {
        println!("\n==> Cleaning up");
        let domains = self.vnfs.iter().filter(|v| v.domain.is_some()).count();
        for v in &mut self.vnfs {
            v.domain = None;
        }
        if domains > 0 {
            println!("    destroyed {domains} VNF domain(s)");
        }
        let taps: usize = self.vnfs.iter().map(|v| v.taps.len()).sum();
        self.vnfs.clear();
        if taps > 0 {
            println!("    deleted {taps} tap device(s)");
        }
        if self.src.take().is_some() | self.dst.take().is_some() {
            println!("    deleted the source and destination namespaces");
        }
        if self.relay.take().is_some() {
            println!("    stopped relay-host");
        }
        if self.ctl.take().is_some() {
            println!("    stopped the controller");
        }
        if self.ovs.take().is_some() {
            println!("    stopped Open vSwitch and deleted its namespace");
        }
        if self.workdir.take().is_some() {
            println!("    removed the work directory");
        }
    }
}

/// `/tmp/sfc-demo-<pid>`, removed on drop; directories of dead processes are removed by
/// [`WorkDir::create`].
struct WorkDir(PathBuf);

impl WorkDir {
    fn create() -> Result<WorkDir> {
        if let Ok(entries) = std::fs::read_dir("/tmp") {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                let Some(pid) = name
                    .strip_prefix(WORKDIR_PREFIX)
                    .and_then(|p| p.parse::<u32>().ok())
                else {
                    continue;
                };
                if !Path::new(&format!("/proc/{pid}")).exists() {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
        let dir = PathBuf::from(format!("/tmp/{WORKDIR_PREFIX}{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .map_err(|e| Failure::Failed(format!("creating {}: {e}", dir.display())))?;
        Ok(WorkDir(dir))
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------------------------
// Traffic

/// A TCP listener in the destination namespace that echoes what it reads, then closes; its
/// thread serves until the demo ends ([`STOP_SERVERS`]) or is interrupted.
fn echo_server(ns: &Netns, port: u16) -> Result<()> {
    let listener = ns
        .run(move || TcpListener::bind((DST_IP, port)))
        .map_err(Failure::from)?
        .map_err(|e| Failure::Failed(format!("listening on {DST_IP}:{port}: {e}")))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| Failure::Failed(format!("listener: {e}")))?;
    std::thread::spawn(move || {
        while !INTERRUPTED.load(Ordering::SeqCst) && !STOP_SERVERS.load(Ordering::SeqCst) {
            match listener.accept() {
                Ok((mut s, _)) => {
                    let _ = s.set_nonblocking(false);
                    let _ = s.set_read_timeout(Some(CONNECT_TIMEOUT));
                    let mut buf = [0u8; 1024];
                    if let Ok(n) = s.read(&mut buf) {
                        let _ = s.write_all(&buf[..n]);
                    }
                    // The server closes first: the TIME_WAIT stays here, and the client can
                    // bind its source port again at once.
                    drop(s);
                }
                Err(_) => sleep(Duration::from_millis(20)),
            }
        }
    });
    Ok(())
}

static STOP_SERVERS: AtomicBool = AtomicBool::new(false);

/// A TCP connection from `SRC_IP:sport` to `DST_IP:dport` made in `ns`: sends a line and
/// reads the echo. `Ok(false)` if it could not connect (timeout).
fn tcp_exchange(ns: &Netns, sport: u16, dport: u16, message: &str) -> Result<bool> {
    let message = message.to_owned();
    ns.run(move || -> std::io::Result<bool> {
        use rustix::net::{sockopt, AddressFamily, SocketType};
        let fd: OwnedFd = rustix::net::socket(AddressFamily::INET, SocketType::STREAM, None)?;
        sockopt::set_socket_reuseaddr(&fd, true)?;
        // connect() gives up after the send timeout.
        sockopt::set_socket_timeout(&fd, sockopt::Timeout::Send, Some(CONNECT_TIMEOUT))?;
        let src: Ipv4Addr = SRC_IP.parse().map_err(std::io::Error::other)?;
        let dst: Ipv4Addr = DST_IP.parse().map_err(std::io::Error::other)?;
        rustix::net::bind(&fd, &SocketAddrV4::new(src, sport))?;
        match rustix::net::connect(&fd, &SocketAddrV4::new(dst, dport)) {
            Ok(()) => {}
            Err(e) if e == rustix::io::Errno::INPROGRESS || e == rustix::io::Errno::AGAIN => {
                return Ok(false)
            }
            Err(e) => return Err(e.into()),
        }
        let mut stream = TcpStream::from(fd);
        stream.set_read_timeout(Some(CONNECT_TIMEOUT))?;
        stream.write_all(message.as_bytes())?;
        let mut echo = Vec::new();
        stream.read_to_end(&mut echo)?;
        if echo != message.as_bytes() {
            return Err(std::io::Error::other(format!(
                "the echo was {:?}",
                String::from_utf8_lossy(&echo)
            )));
        }
        Ok(true)
    })
    .map_err(Failure::from)?
    .map_err(|e| Failure::Failed(format!("TCP {SRC_IP}:{sport} -> {DST_IP}:{dport}: {e}")))
}

/// Packets received from (`rx`) and sent to (`tx`) each bridge port, by OpenFlow port number.
fn port_counters(ovs: &TestOvs) -> Result<BTreeMap<u32, (u64, u64)>> {
    let text = ovs.ofctl(&["dump-ports", BRIDGE])?;
    let mut out = BTreeMap::new();
    let mut current: Option<u32> = None;
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("port") {
            let (num, rest) = rest.trim().split_once(':').unwrap_or(("", ""));
            current = num.trim().parse().ok();
            if let (Some(p), Some(n)) = (current, field(rest, "pkts=")) {
                out.entry(p).or_insert((0, 0)).0 = n;
            }
        } else if let Some(rest) = line.strip_prefix("tx") {
            if let (Some(p), Some(n)) = (current, field(rest, "pkts=")) {
                out.entry(p).or_insert((0, 0)).1 = n;
            }
        }
    }
    Ok(out)
}

/// The counters once the last frames of a connection (its close, the TCG guests' queues) are
/// through: two snapshots 300 ms apart agree, or 5 s have passed.
fn settled_counters(ovs: &TestOvs) -> Result<BTreeMap<u32, (u64, u64)>> {
    let start = Instant::now();
    let mut last = port_counters(ovs)?;
    loop {
        pause(Duration::from_millis(300))?;
        let now = port_counters(ovs)?;
        if now == last || start.elapsed() > Duration::from_secs(5) {
            return Ok(now);
        }
        last = now;
    }
}

fn field(text: &str, key: &str) -> Option<u64> {
    let start = text.find(key)? + key.len();
    let rest = &text[start..];
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

/// One measured connection.
#[derive(Debug)]
struct FlowResult {
    label: String,
    tuple: String,
    connected: bool,
    /// Frames each VNF forwarded (by VNF name, in VNF order).
    forwarded: Vec<(String, u64)>,
    ok: bool,
    verdict: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Through one of PG1's VNFs, then PG2's.
    Chained,
    /// Straight to the destination, no VNF.
    Bypass,
    /// Dropped by the firewall of the VNF named.
    Blocked,
}

// ---------------------------------------------------------------------------------------------
// The demo

fn main() -> ExitCode {
    let started = Instant::now();
    println!(
        "sfc-relay demo: the networking-sfc seed workflow on QEMU guests, libvirt and Open vSwitch"
    );
    if let Err(e) = watch_signals() {
        eprintln!("demo: {e}");
        return ExitCode::from(2);
    }
    if !rustix::process::geteuid().is_root() {
        eprintln!("demo: run it as root (it starts libvirtd, Open vSwitch and network namespaces)");
        return ExitCode::from(2);
    }
    let mut world = World::default();
    let mut report = Report::default();
    let mut summary = String::new();
    let result = run(&mut world, &mut report, &mut summary);
    STOP_SERVERS.store(true, Ordering::SeqCst);
    if let Err(e) = &result {
        // What the daemons said, while their logs still exist.
        if !matches!(e, Failure::Interrupted) {
            print_diagnostics(&world);
        }
    }
    world.cleanup();

    println!("\n======================================================================");
    println!("Summary");
    println!("======================================================================");
    println!("Steps:");
    for (name, outcome, took) in &report.steps {
        println!("  [{outcome}] {name} ({:.1} s)", took.as_secs_f64());
    }
    print!("{summary}");
    let total = started.elapsed().as_secs_f64();
    match result {
        Ok(()) => {
            println!("\nDEMO PASSED: every step worked ({total:.0} s).");
            ExitCode::SUCCESS
        }
        Err(Failure::Interrupted) => {
            println!("\nDEMO INTERRUPTED after {total:.0} s; everything it started was removed.");
            ExitCode::from(130)
        }
        Err(Failure::Failed(e)) => {
            println!("\nDEMO FAILED after {total:.0} s: {e}");
            ExitCode::FAILURE
        }
    }
}

fn print_diagnostics(world: &World) {
    if let Some(ctl) = &world.ctl {
        println!(
            "\n--- controller log (tail) ---\n{}",
            tail(&ctl.log(), 3000)
        );
    }
    if let Some(relay) = &world.relay {
        println!(
            "\n--- relay-host log (tail) ---\n{}",
            tail(&relay.log(), 3000)
        );
    }
    for v in &world.vnfs {
        if let Some(d) = &v.domain {
            println!(
                "\n--- {} console (tail) ---\n{}",
                v.name,
                tail(&d.console_output(), 2000)
            );
        }
    }
}

fn tail(text: &str, max: usize) -> String {
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    text[start..].to_owned()
}

fn run(world: &mut World, report: &mut Report, summary: &mut String) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure::Failed(format!("starting a runtime: {e}")))?;

    let bins: &Binaries = report.step(
        "Build controller-stub, sfc, relay-host and the static vnf-agent; remove what a killed \
         earlier run left behind",
        || {
            println!("    (cargo build into target/e2e-host and target/guest-static: minutes the first time)");
            vnf::reap_stale_taps();
            world.workdir = Some(WorkDir::create()?);
            // Also kills daemons a killed earlier run left behind.
            Ok(stack::binaries()?)
        },
    )?;
    let workdir = world
        .workdir
        .as_ref()
        .map(|w| w.0.clone())
        .ok_or_else(|| Failure::Failed("no work directory".into()))?;

    let image = report.step(
        "Build the VNF guest image (Debian kernel, busybox, vnf-agent, nft, nf_tables modules)",
        || {
            let image = vnf::image(&bins.vnf_agent)?;
            println!("    {}", image.dir.display());
            Ok(image)
        },
    )?;

    report.step(
        "Start a private Open vSwitch (userspace datapath) with bridge br-int",
        || {
            let ovs = TestOvs::start()?;
            ovs.add_bridge(BRIDGE)?;
            println!("    daemons in network namespace {}", ovs.netns().name());
            world.ovs = Some(ovs);
            Ok(())
        },
    )?;

    report.step("Make sure libvirtd runs (shared, qemu:///system)", || {
        ensure_libvirtd()?;
        Ok(())
    })?;

    let cli = report.step(
        "Start the controller (SQLite, ovs driver, relay endpoint with mutual TLS)",
        || {
            let ctl = ControllerProc::start(&workdir.join("controller"), &[HOST], &["ovs"])?;
            println!("    API {}  relay endpoint {}", ctl.api_url, ctl.relay_addr);
            let cli = Cli {
                program: bins.sfc.clone(),
                url: ctl.api_url.clone(),
            };
            world.ctl = Some(ctl);
            Ok(cli)
        },
    )?;
    let client: Client = world
        .ctl
        .as_ref()
        .ok_or_else(|| Failure::Failed("no controller".into()))?
        .client()?;

    report.step(
        &format!("Start relay-host as {HOST} (uplink to the controller, programs br-int)"),
        || {
            let ctl = world
                .ctl
                .as_ref()
                .ok_or_else(|| Failure::Failed("no controller".into()))?;
            let options = RelayOptions::new(HOST)
                .channel(CHANNEL)
                .ovs(world.ovs()?, BRIDGE);
            let relay = RelayProc::start_with(&workdir.join("relay"), ctl, &options)?;
            println!("    uplink registered; guest channel {CHANNEL}");
            world.relay = Some(relay);
            Ok(())
        },
    )?;

    let (src_port, dst_port) = report.step(
        "Seed workflow, part 1: network net1, the source and destination ports, ports p1..p6 \
         for the VNFs (sfc CLI)",
        || create_ports(world, &cli),
    )?;

    report.step(
        "Boot VNF1..VNF3: TCG guests with two virtio-net ports each on br-int, running vnf-agent",
        || boot_vnfs(world, &image, &cli, &dst_port.mac),
    )?;

    report.step(
        "Attach the source (22.1.20.1) and destination (171.4.5.6) namespaces to br-int",
        || attach_endpoints(world, &src_port, &dst_port),
    )?;

    let chain_id = report.step(
        "Seed workflow, part 2: port pairs PP1..PP3, groups PG1 (PP1, PP2) and PG2 (PP3), \
         classifier FC1, chain PC1 (sfc CLI)",
        || create_chain(world, &cli),
    )?;

    report.step(
        &format!("Wait until the OVS driver's rules of PC1 are installed on {HOST}'s br-int"),
        || wait_installed(world, &client, &rt, &chain_id),
    )?;

    report.step(
        "Push a firewall configuration to each VNF through the relay (VNF-config API) and wait \
         until each agent applied it",
        || push_firewalls(world, &cli, &client, &rt),
    )?;

    let flows = report.step(
        "Send matching and non-matching TCP traffic from the source namespace",
        || send_traffic(world),
    )?;

    let firewall_flows = report.step(
        "Show the firewall at work: VNF3 gets a ruleset that drops the chained TCP port, then \
         the accepting one again",
        || firewall_effect(world, &cli, &client, &rt),
    )?;

    report.step(
        "Relay hosts and their guests as the controller sees them",
        || {
            cli.show(&["vnf-host-list"])?;
            Ok(())
        },
    )?;

    let all: Vec<&FlowResult> = flows.iter().chain(&firewall_flows).collect();
    write_summary(summary, world, &client, &rt, &all, &chain_id)?;
    if all.iter().any(|f| !f.ok) {
        return fail("traffic did not go where the chain says (see Traffic above)");
    }
    Ok(())
}

/// A Neutron port of a namespace endpoint.
struct Endpoint {
    id: String,
    mac: String,
}

/// The network, two subnets, the endpoints' ports and the VNFs' ports (MACs picked by the
/// controller; the guests get them as Nova would give them).
fn create_ports(world: &mut World, cli: &Cli) -> Result<(Endpoint, Endpoint)> {
    cli.run(&["net-create", "net1"])?;
    cli.run(&[
        "subnet-create",
        "net1",
        "22.1.20.0/24",
        "--name",
        "src-subnet",
    ])?;
    cli.run(&[
        "subnet-create",
        "net1",
        "171.4.5.0/24",
        "--name",
        "dst-subnet",
    ])?;
    let mut endpoints = Vec::new();
    for (name, subnet, ip) in [("src", "src-subnet", SRC_IP), ("dst", "dst-subnet", DST_IP)] {
        let p = cli.json(&[
            "port-create",
            "net1",
            "--name",
            name,
            "--device-id",
            &format!("vm-{name}"),
            "--host",
            HOST,
            "--fixed-ip",
            &format!("subnet_id={subnet},ip_address={ip}"),
        ])?;
        endpoints.push(Endpoint {
            id: id_of(&p)?,
            mac: text_of(&p, "mac_address")?,
        });
    }
    for (i, name) in ["VNF1", "VNF2", "VNF3"].iter().enumerate() {
        let port = |n: usize| -> Result<(String, String, String)> {
            let p = cli.json(&["port-create", "net1", "--name", &format!("p{n}")])?;
            Ok((format!("p{n}"), id_of(&p)?, text_of(&p, "mac_address")?))
        };
        let ports = [port(2 * i + 1)?, port(2 * i + 2)?];
        world.vnfs.push(VnfInfo {
            name: (*name).to_owned(),
            pair: format!("PP{}", i + 1),
            ports,
            domain: None,
            instance: Uuid::nil(),
            key: None,
            taps: Vec::new(),
            tap_names: [String::new(), String::new()],
        });
    }
    cli.show(&[
        "port-list",
        "-f",
        "name",
        "-f",
        "mac_address",
        "-f",
        "fixed_ips",
    ])?;
    let dst = endpoints.pop();
    let src = endpoints.pop();
    src.zip(dst)
        .ok_or_else(|| Failure::Failed("the endpoints' ports".into()))
}

/// The source and destination "VMs": namespaces with a port each on the bridge.
fn attach_endpoints(world: &mut World, src_port: &Endpoint, dst_port: &Endpoint) -> Result<()> {
    let ovs = world.ovs()?;
    let src = Netns::new("demo-src")?;
    let dst = Netns::new("demo-dst")?;
    for (ns, port, ip) in [(&src, src_port, SRC_IP), (&dst, dst_port, DST_IP)] {
        let iface_id = Uuid::parse_str(&port.id)
            .map_err(|e| Failure::Failed(format!("port id {}: {e}", port.id)))?;
        ovs.attach(
            BRIDGE,
            ns,
            &PortSpec {
                iface_id,
                mac: port.mac.clone(),
                ifname: "eth0".into(),
                addr: Some(format!("{ip}/24")),
            },
        )?;
    }
    // The two /24s share one L2 segment: direct routes and static neighbours, so no ARP is
    // needed and the bridge sees nothing but the demo's TCP.
    src.ip(&["route", "add", &format!("{DST_IP}/32"), "dev", "eth0"])?;
    src.neighbour("eth0", DST_IP, &dst_port.mac)?;
    dst.ip(&["route", "add", &format!("{SRC_IP}/32"), "dev", "eth0"])?;
    dst.neighbour("eth0", SRC_IP, &src_port.mac)?;
    println!(
        "    src {SRC_IP} ({}), dst {DST_IP} ({})",
        src_port.mac, dst_port.mac
    );
    world.src = Some(src);
    world.dst = Some(dst);
    Ok(())
}

/// The seed's port pairs, groups, classifier (plus the logical source port the OVS driver
/// needs) and chain; the chain's id.
fn create_chain(world: &World, cli: &Cli) -> Result<String> {
    for v in &world.vnfs {
        cli.run(&[
            "port-pair-create",
            &format!("--ingress={}", v.ports[0].0),
            &format!("--egress={}", v.ports[1].0),
            &v.pair,
        ])?;
    }
    cli.run(&[
        "port-pair-group-create",
        "--port-pair",
        "PP1",
        "--port-pair",
        "PP2",
        "PG1",
    ])?;
    cli.run(&["port-pair-group-create", "--port-pair", "PP3", "PG2"])?;
    cli.run(&[
        "flow-classifier-create",
        "--ethertype",
        "IPv4",
        "--source-ip-prefix",
        &format!("{SRC_IP}/32"),
        "--destination-ip-prefix",
        &format!("{DST_IP}/32"),
        "--protocol",
        "tcp",
        "--source-port",
        &format!("{SRC_PORT}:{SRC_PORT}"),
        "--destination-port",
        &format!("{DST_PORT}:{DST_PORT}"),
        "--logical-source-port",
        "src",
        "FC1",
    ])?;
    let pc = cli.json(&[
        "port-chain-create",
        "--port-pair-group",
        "PG1",
        "--port-pair-group",
        "PG2",
        "--flow-classifier",
        "FC1",
        "PC1",
    ])?;
    cli.show(&["port-chain-show", "PC1"])?;
    id_of(&pc)
}

/// Polls the chain's status until the relay reported its rules installed, then shows them.
fn wait_installed(
    world: &World,
    client: &Client,
    rt: &tokio::runtime::Runtime,
    chain_id: &str,
) -> Result<()> {
    let start = Instant::now();
    loop {
        let v = block(
            rt,
            client.get(&format!("/v2.0/sfc/port_chains/{chain_id}/status")),
        )?;
        let hosts = v["port_chain_status"]["hosts"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if let Some(h) = hosts.iter().find(|h| h["host"] == HOST) {
            if h["state"] == "installed" {
                println!(
                    "    {HOST}: installed, version {}, {} flows, {} groups; br-int's flows \
                     (ovs-ofctl dump-flows):",
                    h["version"], h["flows"], h["groups"]
                );
                for flow in world.ovs()?.flows(BRIDGE)? {
                    println!("      {flow}");
                }
                return Ok(());
            }
        }
        if start.elapsed() > WAIT {
            return fail(format!("PC1 not installed after {WAIT:?}: {hosts:?}"));
        }
        pause(Duration::from_millis(200))?;
    }
}

/// The summary's sections after the step list: the VNFs' configurations as the controller
/// reports them now, the traffic, the chain.
fn write_summary(
    summary: &mut String,
    world: &World,
    client: &Client,
    rt: &tokio::runtime::Runtime,
    flows: &[&FlowResult],
    chain_id: &str,
) -> Result<()> {
    let _ = writeln!(
        summary,
        "\nVNFs (service firewall, pushed through relay-host {HOST}; status from the \
         VNF-config API):"
    );
    for v in &world.vnfs {
        let c = block(rt, client.config(v.instance, "firewall"))?;
        let _ = writeln!(
            summary,
            "  {:<5} {:<4} instance {}  ports {}->{}  version {} {} (applied version {})",
            v.name,
            v.pair,
            v.instance,
            v.ports[0].0,
            v.ports[1].0,
            c.version,
            c.status,
            c.applied_version
                .map_or_else(|| "none".to_owned(), |a| a.to_string())
        );
    }
    let _ = writeln!(
        summary,
        "\nTraffic (frames each VNF forwarded, from its egress port's counters):"
    );
    for f in flows {
        let through: Vec<String> = f
            .forwarded
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(name, n)| format!("{name} ({n})"))
            .collect();
        let _ = writeln!(
            summary,
            "  [{}] {:<26} {:<37} {:<13} {}",
            if f.ok { " ok " } else { "FAIL" },
            f.label,
            f.tuple,
            if f.connected {
                "connected"
            } else {
                "no connection"
            },
            if through.is_empty() {
                "via no VNF".to_owned()
            } else {
                format!("via {}", through.join(" -> "))
            }
        );
        let _ = writeln!(summary, "         {}", f.verdict);
    }
    let _ = writeln!(summary, "\nChain PC1 ({chain_id}):");
    if let Some(matching) = flows.first() {
        summary.push_str(&diagram(world, matching));
    }
    Ok(())
}

/// Creates the taps, boots the three guests in parallel, registers their keys, plugs the taps
/// and binds the ports, then waits for each guest's data plane and agent.
fn boot_vnfs(
    world: &mut World,
    image: &e2e_tests::guest_image::GuestImage,
    cli: &Cli,
    dst_mac: &str,
) -> Result<()> {
    let ovs = world
        .ovs
        .as_ref()
        .ok_or_else(|| Failure::Failed("no OVS".into()))?;
    let mut starts = Vec::new();
    for v in &mut world.vnfs {
        let t_in = Tap::create()?;
        let t_out = Tap::create()?;
        let key = stack::random_key()?;
        let plane = DataPlane {
            ingress_mac: v.ports[0].2.clone(),
            egress_mac: v.ports[1].2.clone(),
            destination: DST_IP.to_owned(),
            next_hop_mac: dst_mac.to_owned(),
        };
        let guest = vnf::guest(
            image,
            &key,
            CHANNEL,
            (&t_in, &t_out),
            &plane,
            &["--log", "info"],
        );
        v.tap_names = [t_in.name().to_owned(), t_out.name().to_owned()];
        v.taps = vec![t_in, t_out];
        v.key = Some(key);
        // virsh create returns once QEMU runs; three in parallel.
        starts.push(std::thread::spawn(move || guest.start()));
    }
    let mut failure = None;
    for (v, start) in world.vnfs.iter_mut().zip(starts) {
        match start.join() {
            Ok(Ok(domain)) => {
                v.instance = Uuid::parse_str(domain.uuid())
                    .map_err(|e| Failure::Failed(format!("domain UUID: {e}")))?;
                println!(
                    "    {} is domain {} (instance {})",
                    v.name,
                    domain.name(),
                    v.instance
                );
                v.domain = Some(domain);
            }
            Ok(Err(e)) => failure = Some(format!("starting {}: {e}", v.name)),
            Err(_) => failure = Some(format!("starting {}: the thread panicked", v.name)),
        }
    }
    if let Some(f) = failure {
        return fail(f);
    }
    for v in &mut world.vnfs {
        let key = v
            .key
            .as_ref()
            .ok_or_else(|| Failure::Failed("no key".into()))?;
        // The instance key, as Nova's patch would have the controller create it; imported here
        // because the guest already carries it in its SMBIOS OEM strings.
        cli.run(&[
            "vnf-key-create",
            &v.instance.to_string(),
            "--key",
            &key.to_hex(),
        ])
        .map(drop)?;
        for (i, tap) in v.taps.iter_mut().enumerate() {
            let (name, id, mac) = &v.ports[i];
            let iface_id =
                Uuid::parse_str(id).map_err(|e| Failure::Failed(format!("port {name}: {e}")))?;
            tap.plug(ovs, BRIDGE, iface_id, mac)?;
            // What Nova does once the VM has its NIC: the port's device and host binding.
            cli.run(&[
                "port-update",
                name,
                "--device-id",
                &v.instance.to_string(),
                "--device-owner",
                "compute:nova",
                "--host",
                HOST,
            ])?;
        }
    }
    let start = Instant::now();
    for v in &world.vnfs {
        let domain = v
            .domain
            .as_ref()
            .ok_or_else(|| Failure::Failed("no domain".into()))?;
        loop {
            check_interrupt()?;
            match domain.wait_for_console(vnf::READY_MARKER, Duration::from_millis(500)) {
                Ok(()) => break,
                Err(e2e_tests::Error::Timeout { .. }) if start.elapsed() < BOOT_TIMEOUT => {}
                Err(e) => return fail(format!("{} did not come up: {e}", v.name)),
            }
        }
        let console = domain.console_output();
        let line = console
            .lines()
            .find(|l| l.contains(vnf::READY_MARKER))
            .unwrap_or_default()
            .trim();
        println!(
            "    {} booted after {:.1} s: {line} (taps {} {})",
            v.name,
            start.elapsed().as_secs_f64(),
            v.tap_names[0],
            v.tap_names[1]
        );
    }
    Ok(())
}

/// The firewall each VNF gets: accept the chained service traffic, drop every other forwarded
/// packet.
fn firewall(accept_service: bool, version_note: &str) -> Value {
    json!({
        "rules": [
            {"position": 10,
             "action": if accept_service { "accept" } else { "drop" },
             "protocol": "tcp", "destination": format!("{DST_IP}/32"),
             "destination_port": DST_PORT.to_string(),
             "comment": format!("PC1 service traffic {version_note}")},
            {"position": 20, "action": "drop", "protocol": "any",
             "comment": "anything else"}
        ],
        "default_policy": {"forward": "drop"}
    })
}

fn push_firewalls(
    world: &mut World,
    cli: &Cli,
    client: &Client,
    rt: &tokio::runtime::Runtime,
) -> Result<()> {
    let payload = firewall(true, "v1").to_string();
    for v in &world.vnfs {
        cli.run(&[
            "vnf-config-set",
            &v.instance.to_string(),
            "firewall",
            "--payload",
            &payload,
        ])?;
    }
    for v in &world.vnfs {
        let c = block(
            rt,
            client.wait_config(
                v.instance,
                "firewall",
                "the firewall applied",
                BOOT_TIMEOUT,
                |c| c.status == "applied" || c.status == "failed",
            ),
        )?;
        if c.status != "applied" {
            return fail(format!(
                "{}: the agent did not apply the firewall: {}",
                v.name,
                c.message.unwrap_or_default()
            ));
        }
        println!("    {}: version {} {}", v.name, c.version, c.status);
    }
    if let Some(v) = world.vnfs.first() {
        cli.show(&["vnf-config-show", &v.instance.to_string()])?;
    }
    Ok(())
}

/// Frames forwarded per VNF (rx on its egress port) between two counter snapshots.
fn forwarded(
    world: &World,
    before: &BTreeMap<u32, (u64, u64)>,
    after: &BTreeMap<u32, (u64, u64)>,
) -> Result<Vec<(String, u64)>> {
    let ovs = world.ovs()?;
    let mut out = Vec::new();
    for v in &world.vnfs {
        let port = ovs.ofport(&v.tap_names[1])?;
        let b = before.get(&port).map_or(0, |c| c.0);
        let a = after.get(&port).map_or(0, |c| c.0);
        out.push((v.name.clone(), a.saturating_sub(b)));
    }
    Ok(out)
}

/// Runs one connection and judges where its frames went.
fn measure(
    world: &World,
    label: &str,
    sport: u16,
    dport: u16,
    expectation: Expect,
) -> Result<FlowResult> {
    let ovs = world.ovs()?;
    let src = world
        .src
        .as_ref()
        .ok_or_else(|| Failure::Failed("no source namespace".into()))?;
    let before = port_counters(ovs)?;
    let connected = tcp_exchange(src, sport, dport, &format!("hello from {label}\n"))?;
    let after = settled_counters(ovs)?;
    let fw = forwarded(world, &before, &after)?;
    let count = |name: &str| fw.iter().find(|(n, _)| n == name).map_or(0, |(_, c)| *c);
    let (v1, v2, v3) = (count("VNF1"), count("VNF2"), count("VNF3"));
    let (ok, verdict) = match expectation {
        Expect::Chained => {
            let pg1 = [("VNF1", v1), ("VNF2", v2)];
            let chosen: Vec<&str> = pg1
                .iter()
                .filter(|(_, c)| *c > 0)
                .map(|(n, _)| *n)
                .collect();
            let ok = connected && chosen.len() == 1 && v3 > 0;
            (
                ok,
                if ok {
                    format!(
                        "as expected: PG1 ({}, picked by the group's hash) then PG2 (VNF3)",
                        chosen[0]
                    )
                } else {
                    format!(
                        "expected one of VNF1/VNF2 then VNF3, and a connection; got VNF1 {v1}, \
                         VNF2 {v2}, VNF3 {v3}, connected: {connected}"
                    )
                },
            )
        }
        Expect::Bypass => {
            let ok = connected && v1 + v2 + v3 == 0;
            (
                ok,
                if ok {
                    "as expected: not classified by FC1, bypassed all VNFs (NORMAL switching)"
                        .to_owned()
                } else {
                    format!(
                        "expected a direct connection through no VNF; got VNF1 {v1}, VNF2 {v2}, \
                         VNF3 {v3}"
                    )
                },
            )
        }
        Expect::Blocked => {
            let ok = !connected && v3 == 0 && v1 + v2 > 0;
            (
                ok,
                if ok {
                    format!(
                        "as expected: through PG1 ({} frames), dropped by VNF3's firewall",
                        v1 + v2
                    )
                } else {
                    format!(
                        "expected frames through PG1 and none out of VNF3 (dropped); got VNF1 \
                         {v1}, VNF2 {v2}, VNF3 {v3}, connected: {connected}"
                    )
                },
            )
        }
    };
    println!(
        "    {label}: {} -> {}",
        if connected {
            "connected"
        } else {
            "no connection"
        },
        verdict
    );
    Ok(FlowResult {
        label: label.to_owned(),
        tuple: format!("tcp {SRC_IP}:{sport} -> {DST_IP}:{dport}"),
        connected,
        forwarded: fw,
        ok,
        verdict,
    })
}

fn send_traffic(world: &World) -> Result<Vec<FlowResult>> {
    let dst = world
        .dst
        .as_ref()
        .ok_or_else(|| Failure::Failed("no destination namespace".into()))?;
    // Listeners on both destination ports, for this step and the next.
    echo_server(dst, DST_PORT)?;
    echo_server(dst, OTHER_DST_PORT)?;
    let flows = vec![
        measure(world, "matches FC1", SRC_PORT, DST_PORT, Expect::Chained)?,
        measure(
            world,
            "other destination port",
            SRC_PORT,
            OTHER_DST_PORT,
            Expect::Bypass,
        )?,
        measure(
            world,
            "other source port",
            OTHER_SRC_PORT,
            DST_PORT,
            Expect::Bypass,
        )?,
    ];
    if let Some(bad) = flows.iter().find(|f| !f.ok) {
        return fail(format!("{}: {}", bad.label, bad.verdict));
    }
    Ok(flows)
}

fn firewall_effect(
    world: &World,
    cli: &Cli,
    client: &Client,
    rt: &tokio::runtime::Runtime,
) -> Result<Vec<FlowResult>> {
    let vnf3 = world
        .vnfs
        .iter()
        .find(|v| v.name == "VNF3")
        .map(|v| v.instance)
        .ok_or_else(|| Failure::Failed("no VNF3".into()))?;
    let set = |accept: bool, note: &str| -> Result<u64> {
        let payload = firewall(accept, note).to_string();
        let c = cli.json(&[
            "vnf-config-set",
            &vnf3.to_string(),
            "firewall",
            "--payload",
            &payload,
        ])?;
        let version = c
            .get("version")
            .and_then(Value::as_u64)
            .ok_or_else(|| Failure::Failed(format!("no version in {c}")))?;
        block(rt, client.wait_applied(vnf3, "firewall", version, WAIT))?;
        println!("    VNF3: firewall version {version} applied");
        Ok(version)
    };
    set(false, "v2 blocked")?;
    let flow = measure(
        world,
        "matches FC1, VNF3 drops",
        SRC_PORT,
        DST_PORT,
        Expect::Blocked,
    )?;
    set(true, "v3")?;
    let again = measure(
        world,
        "matches FC1 again",
        SRC_PORT,
        DST_PORT,
        Expect::Chained,
    )?;
    if !flow.ok {
        return fail(flow.verdict.clone());
    }
    if !again.ok {
        return fail(format!(
            "after restoring VNF3's firewall: {}",
            again.verdict
        ));
    }
    Ok(vec![flow, again])
}

/// The chain as text, with the VNFs the matching connection went through marked `*`.
fn diagram(world: &World, matching: &FlowResult) -> String {
    let used = |name: &str| matching.forwarded.iter().any(|(n, c)| n == name && *c > 0);
    let node = |i: usize| -> String {
        world.vnfs.get(i).map_or_else(String::new, |v| {
            format!(
                "{}{} {} [{}->{}]",
                if used(&v.name) { "*" } else { " " },
                v.pair,
                v.name,
                v.ports[0].0,
                v.ports[1].0
            )
        })
    };
    let mut d = String::new();
    let _ = writeln!(
        d,
        "  FC1: tcp {SRC_IP}/32:{SRC_PORT} -> {DST_IP}/32:{DST_PORT}, logical source port src"
    );
    let _ = writeln!(d);
    let _ = writeln!(
        d,
        "  src {SRC_IP} --FC1--> PG1 +--{}--+--> PG2 ---{}---> dst {DST_IP}",
        node(0),
        node(2)
    );
    let _ = writeln!(d, "                            +--{}--+", node(1));
    let _ = writeln!(
        d,
        "\n  * = the VNFs the matching connection went through (measured); anything else goes \
         src -> dst directly."
    );
    d
}
