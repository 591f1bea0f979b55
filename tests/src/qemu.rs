//! Boots a [`GuestImage`] under QEMU (TCG) and gives the test its console log and host ends of
//! the guest's virtio-serial channels and extra UARTs, as UNIX sockets.
//!
//! QEMU listens on every socket (`server=on,wait=off`) and accepts one client at a time; a
//! guest reading a virtio-serial port gets EOF while no host client is connected, and a single
//! guest write to one is capped at 32 KiB.

use std::ffi::OsString;
use std::fs;
use std::io::ErrorKind;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use tempfile::TempDir;

use crate::guest_image::GuestImage;
use crate::{io_err, Error, Result};

/// The emulator; found on `PATH`.
pub const QEMU_BINARY: &str = "qemu-system-x86_64";
/// Printed by the guest's `/init` once modules, ports and loopback are set up.
pub const BOOTED_MARKER: &str = "sfc-guest: booted";
/// Printed by `/init` when setup fails; the guest then powers off.
pub const FATAL_MARKER: &str = "sfc-guest: fatal:";
/// Prefix of the line `/init` prints with the run program's exit code.
pub const EXITED_MARKER: &str = "sfc-guest: run exited ";
/// Generous: TCG boots in about 6 s alone, but CI has 2 cores shared by parallel tests.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(120);

const POLL: Duration = Duration::from_millis(50);
/// `-serial` on the `pc` machine: ttyS0 is the console, ISA has room for three more.
const MAX_UARTS: usize = 3;

/// What to boot and how; [`GuestConfig::launch`] starts it.
#[derive(Debug, Clone)]
pub struct GuestConfig {
    kernel: PathBuf,
    initramfs: PathBuf,
    run: Option<String>,
    args: Vec<String>,
    memory_mib: u32,
    channels: Vec<String>,
    uarts: Vec<String>,
    kernel_args: Vec<String>,
    qemu_args: Vec<OsString>,
}

impl GuestConfig {
    pub fn new(image: &GuestImage) -> Self {
        Self {
            kernel: image.kernel.clone(),
            initramfs: image.initramfs.clone(),
            run: None,
            args: Vec::new(),
            memory_mib: 256,
            channels: Vec::new(),
            uarts: Vec::new(),
            kernel_args: Vec::new(),
            qemu_args: Vec::new(),
        }
    }

    /// The absolute guest path of the program `/init` runs (`sfc.run=`); required.
    pub fn run(mut self, program: impl Into<String>) -> Self {
        self.run = Some(program.into());
        self
    }

    /// Appends an argument for the run program (`sfc.args=`). Arguments travel on the kernel
    /// command line, so they must be non-empty and free of commas, whitespace and quotes.
    pub fn arg(mut self, arg: impl Into<String>) -> Self {
        self.args.push(arg.into());
        self
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    pub fn memory_mib(mut self, mib: u32) -> Self {
        self.memory_mib = mib;
        self
    }

    /// Adds a virtio-serial port; the guest sees `/dev/virtio-ports/<name>` before the run
    /// program starts, the host connects with [`Guest::connect_channel`].
    pub fn channel(mut self, name: impl Into<String>) -> Self {
        self.channels.push(name.into());
        self
    }

    /// Adds a 16550 UART; the n-th one (from 1) is the guest's `/dev/ttyS<n>` (see
    /// [`Guest::uart_guest_device`]), the host connects with [`Guest::connect_uart`].
    pub fn uart(mut self, name: impl Into<String>) -> Self {
        self.uarts.push(name.into());
        self
    }

    /// Appends a raw kernel command line word.
    pub fn kernel_arg(mut self, arg: impl Into<String>) -> Self {
        self.kernel_args.push(arg.into());
        self
    }

    /// Appends a raw QEMU argument (NICs, extra devices).
    pub fn qemu_arg(mut self, arg: impl Into<OsString>) -> Self {
        self.qemu_args.push(arg.into());
        self
    }

    fn validate(&self) -> Result<&str> {
        let bad =
            |s: &str| s.is_empty() || s.chars().any(|c| c.is_whitespace() || "\"'".contains(c));
        let run = self
            .run
            .as_deref()
            .ok_or_else(|| Error::InvalidConfig("no run program set".into()))?;
        if !run.starts_with('/') || bad(run) {
            return Err(Error::InvalidConfig(format!(
                "run program {run:?} must be an absolute path without whitespace or quotes"
            )));
        }
        if let Some(a) = self.args.iter().find(|a| bad(a) || a.contains(',')) {
            return Err(Error::InvalidConfig(format!(
                "argument {a:?} must be non-empty and free of commas, whitespace and quotes"
            )));
        }
        for name in self.channels.iter().chain(&self.uarts) {
            if bad(name) || name.contains([',', '/']) {
                return Err(Error::InvalidConfig(format!(
                    "port name {name:?} must be non-empty and free of commas, slashes, \
                     whitespace and quotes"
                )));
            }
        }
        for (i, name) in self.channels.iter().enumerate() {
            if self.channels[..i].contains(name) {
                return Err(Error::InvalidConfig(format!("duplicate channel {name:?}")));
            }
        }
        for (i, name) in self.uarts.iter().enumerate() {
            if self.uarts[..i].contains(name) {
                return Err(Error::InvalidConfig(format!("duplicate UART {name:?}")));
            }
        }
        if self.uarts.len() > MAX_UARTS {
            return Err(Error::InvalidConfig(format!(
                "at most {MAX_UARTS} extra UARTs fit on the pc machine"
            )));
        }
        Ok(run)
    }

    /// The kernel command line this configuration boots with.
    pub fn cmdline(&self) -> Result<String> {
        let run = self.validate()?;
        let mut words = vec![
            "console=ttyS0".to_owned(),
            // A panic reboots, and -no-reboot turns that into QEMU exiting instead of a hang.
            "panic=-1".to_owned(),
            format!("sfc.run={run}"),
            format!("sfc.vports={}", self.channels.len()),
        ];
        if !self.args.is_empty() {
            words.push(format!("sfc.args={}", self.args.join(",")));
        }
        words.extend(self.kernel_args.iter().cloned());
        Ok(words.join(" "))
    }

    /// Starts QEMU. The guest boots in the background; wait with [`Guest::wait_for_boot`].
    pub fn launch(&self) -> Result<Guest> {
        let cmdline = self.cmdline()?;
        // Under /tmp rather than $TMPDIR: socket paths must stay below ~108 bytes.
        let dir = tempfile::Builder::new()
            .prefix("sfc-qemu-")
            .tempdir_in("/tmp")
            .map_err(io_err("creating the guest's temporary directory"))?;
        let console = dir.path().join("console.log");
        let stderr_path = dir.path().join("qemu.stderr");
        let stderr = fs::File::create(&stderr_path)
            .map_err(io_err(format!("creating {}", stderr_path.display())))?;

        let mut cmd = Command::new(QEMU_BINARY);
        cmd.args(["-accel", "tcg", "-machine", "pc", "-smp", "1"])
            .arg("-m")
            .arg(self.memory_mib.to_string())
            .args(["-nodefaults", "-no-user-config", "-display", "none"])
            .args(["-monitor", "none", "-no-reboot"])
            // Host entropy, as clouds give guests (Nova's hw_rng): without a source, getrandom()
            // in the guest blocks until the CRNG is seeded, which under TCG takes minutes.
            .args(["-device", "virtio-rng-pci"])
            .arg("-kernel")
            .arg(&self.kernel)
            .arg("-initrd")
            .arg(&self.initramfs)
            .arg("-append")
            .arg(&cmdline)
            .arg("-chardev")
            .arg(chardev_arg("file", "console", &console))
            .args(["-serial", "chardev:console"]);

        let mut uarts = Vec::new();
        for (i, name) in self.uarts.iter().enumerate() {
            let id = format!("uart{}", i + 1);
            let path = dir.path().join(format!("{id}.sock"));
            cmd.arg("-chardev")
                .arg(socket_chardev(&id, &path))
                .arg("-serial")
                .arg(format!("chardev:{id}"));
            uarts.push(Port {
                name: name.clone(),
                socket: path,
                guest_device: format!("/dev/ttyS{}", i + 1),
            });
        }

        let mut channels = Vec::new();
        if !self.channels.is_empty() {
            cmd.args(["-device", "virtio-serial-pci,id=vser0"]);
        }
        for (i, name) in self.channels.iter().enumerate() {
            let id = format!("ch{i}");
            let path = dir.path().join(format!("{id}.sock"));
            cmd.arg("-chardev")
                .arg(socket_chardev(&id, &path))
                .arg("-device")
                .arg(format!(
                    "virtserialport,bus=vser0.0,chardev={id},name={name}"
                ));
            channels.push(Port {
                name: name.clone(),
                socket: path,
                guest_device: format!("/dev/virtio-ports/{name}"),
            });
        }
        cmd.args(&self.qemu_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);

        let child = cmd.spawn().map_err(|e| match e.kind() {
            ErrorKind::NotFound => Error::MissingPrerequisite {
                what: format!("{QEMU_BINARY} (package qemu-system-x86)"),
            },
            _ => io_err(format!("starting {QEMU_BINARY}"))(e),
        })?;
        Ok(Guest {
            child,
            status: None,
            console,
            stderr: stderr_path,
            cmdline,
            channels,
            uarts,
            dir,
        })
    }
}

fn chardev_arg(backend: &str, id: &str, path: &Path) -> OsString {
    let mut s = OsString::from(format!("{backend},id={id},path="));
    s.push(path);
    s
}

fn socket_chardev(id: &str, path: &Path) -> OsString {
    let mut s = chardev_arg("socket", id, path);
    s.push(",server=on,wait=off");
    s
}

#[derive(Debug)]
struct Port {
    name: String,
    socket: PathBuf,
    guest_device: String,
}

/// A running guest. Dropping it kills QEMU (also when a test panics, after printing the
/// console log) and deletes its temporary directory.
#[derive(Debug)]
pub struct Guest {
    child: Child,
    status: Option<ExitStatus>,
    console: PathBuf,
    stderr: PathBuf,
    cmdline: String,
    channels: Vec<Port>,
    uarts: Vec<Port>,
    dir: TempDir,
}

impl Guest {
    /// QEMU's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The kernel command line the guest booted with.
    pub fn cmdline(&self) -> &str {
        &self.cmdline
    }

    /// The guest's private temporary directory (sockets, console log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The file receiving everything the guest writes to ttyS0.
    pub fn console_log(&self) -> &Path {
        &self.console
    }

    /// The console output so far.
    pub fn console_output(&self) -> String {
        fs::read(&self.console)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The console tail and QEMU's stderr, for error messages.
    pub fn diagnostics(&self) -> String {
        const TAIL: usize = 8000;
        let console = self.console_output();
        let start = console.char_indices().rev().nth(TAIL).map_or(0, |(i, _)| i);
        let stderr = fs::read_to_string(&self.stderr).unwrap_or_default();
        format!(
            "[cmdline] {}\n[console{}]\n{}\n[qemu stderr]\n{stderr}",
            self.cmdline,
            if start > 0 { ", tail" } else { "" },
            &console[start..]
        )
    }

    /// Waits until the console shows `marker`; fails early if the guest's init reports a fatal
    /// error or QEMU exits.
    pub fn wait_for_console(&mut self, marker: &str, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            // Read after polling the process, so that a QEMU that exited cannot have printed
            // anything this read missed.
            let stopped = self.try_status()?;
            let console = self.console_output();
            if console.contains(marker) {
                return Ok(());
            }
            if console.contains(FATAL_MARKER) {
                return Err(Error::GuestFatal {
                    what: format!("{marker:?}"),
                    console: self.diagnostics(),
                });
            }
            if let Some(status) = stopped {
                return Err(Error::GuestStopped {
                    what: format!("{marker:?}"),
                    status,
                    console: self.diagnostics(),
                });
            }
            if start.elapsed() >= timeout {
                return Err(Error::Timeout {
                    what: format!("{marker:?} on the console"),
                    waited: timeout,
                    console: self.diagnostics(),
                });
            }
            sleep(POLL);
        }
    }

    /// Waits for [`BOOTED_MARKER`]: the run program is about to start.
    pub fn wait_for_boot(&mut self) -> Result<()> {
        self.wait_for_console(BOOTED_MARKER, BOOT_TIMEOUT)
    }

    /// The exit code the run program reported on the console, once it has exited.
    pub fn run_exit_code(&self) -> Option<i32> {
        let console = self.console_output();
        let line = console
            .lines()
            .find_map(|l| l.trim().strip_prefix(EXITED_MARKER))?;
        line.trim().parse().ok()
    }

    /// Waits for QEMU to exit (the guest powers off after the run program exits).
    pub fn wait_for_exit(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let start = Instant::now();
        loop {
            if let Some(status) = self.try_status()? {
                return Ok(status);
            }
            if start.elapsed() >= timeout {
                return Err(Error::Timeout {
                    what: "QEMU to exit".into(),
                    waited: timeout,
                    console: self.diagnostics(),
                });
            }
            sleep(POLL);
        }
    }

    /// Kills QEMU now (idempotent).
    pub fn kill(&mut self) {
        if self.status.is_none() {
            // Fails only if the process already exited, which wait() then reaps.
            let _ = self.child.kill();
            self.status = self.child.wait().ok();
        }
    }

    fn try_status(&mut self) -> Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self
                .child
                .try_wait()
                .map_err(io_err("polling the QEMU process"))?;
        }
        Ok(self.status)
    }

    /// The host socket of virtio-serial channel `name`.
    pub fn channel_socket(&self, name: &str) -> Result<&Path> {
        find_port(&self.channels, "channel", name).map(|p| p.socket.as_path())
    }

    /// Connects to virtio-serial channel `name` (one client at a time). For tokio, convert with
    /// `set_nonblocking(true)` and `tokio::net::UnixStream::from_std`.
    pub fn connect_channel(&self, name: &str) -> Result<UnixStream> {
        connect(self.channel_socket(name)?)
    }

    /// The host socket of UART `name`.
    pub fn uart_socket(&self, name: &str) -> Result<&Path> {
        find_port(&self.uarts, "UART", name).map(|p| p.socket.as_path())
    }

    /// The guest device of UART `name`, e.g. `/dev/ttyS1`.
    pub fn uart_guest_device(&self, name: &str) -> Result<&str> {
        find_port(&self.uarts, "UART", name).map(|p| p.guest_device.as_str())
    }

    /// Connects to UART `name` (one client at a time; bytes the guest sends while no client
    /// is connected are dropped).
    pub fn connect_uart(&self, name: &str) -> Result<UnixStream> {
        connect(self.uart_socket(name)?)
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "--- guest (qemu pid {}) ---\n{}",
                self.child.id(),
                self.diagnostics()
            );
        }
    }
}

fn find_port<'a>(ports: &'a [Port], kind: &'static str, name: &str) -> Result<&'a Port> {
    ports
        .iter()
        .find(|p| p.name == name)
        .ok_or_else(|| Error::UnknownPort {
            kind,
            name: name.to_owned(),
        })
}

/// QEMU creates its listening sockets while starting up, shortly after spawn.
fn connect(path: &Path) -> Result<UnixStream> {
    const STARTUP: Duration = Duration::from_secs(30);
    let start = Instant::now();
    loop {
        match UnixStream::connect(path) {
            Ok(s) => return Ok(s),
            Err(e)
                if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused)
                    && start.elapsed() < STARTUP =>
            {
                sleep(POLL);
            }
            Err(e) => return Err(io_err(format!("connecting to {}", path.display()))(e)),
        }
    }
}
