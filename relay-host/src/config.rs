//! Configuration: a TOML file (every key optional, unknown keys refused) overridden by command
//! line flags, resolved into one validated [`Config`].
//!
//! Precedence is flag > file > built-in default. The file is `/etc/relay-host/relay-host.toml`
//! unless `--config` names another; the default file may be absent (flags alone suffice), a
//! named one may not. Validation happens once, here, so the daemon and `relay-host check` see
//! the same rules and the same messages.
//!
//! ```toml
//! host = "compute-1"                      # default: the machine's host name
//! controller = "controller.example:7443"  # required
//! server_name = "controller.example"      # default: the host part of `controller`
//! ca = "/etc/relay-host/ca.pem"           # CA that signed the controller's certificate
//! cert = "/etc/relay-host/relay.pem"      # this relay's client certificate (chain)
//! key = "/etc/relay-host/relay.key"       # and its private key
//! libvirt_uri = "qemu:///system"
//! channel = "org.opensfc.relay.0"
//! metrics_listen = "127.0.0.1:9464"       # "off" disables the endpoint
//! hook_socket = "/run/relay-host/hook.sock" # libvirt hook notifications; default: off
//! reconcile_interval_secs = 60
//! heartbeat_interval_secs = 10
//! shutdown_grace_secs = 5
//!
//! [limits]
//! guest_frames_per_sec = 200
//! guest_burst = 400
//! to_guest_queue = 1024
//! to_guest_buffer_mib = 256
//! from_guest_queue = 64
//! uplink_queue = 4096
//!
//! [ovs]                                   # absent: no OVS programming
//! bridge = "br-int"                       # required in the section
//! db = "unix:/run/openvswitch/db.sock"    # default: ovs-vsctl's (honours OVS_RUNDIR)
//! rundir = "/run/openvswitch"             # where <bridge>.mgmt is; default: ovs-ofctl's
//! poll_interval_ms = 1000                 # OVSDB polling for ports appearing
//! verify_interval_secs = 30               # full check of the bridge against the rules
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Where the configuration file is looked for when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/relay-host/relay-host.toml";
/// The libvirt connection used unless configured otherwise.
pub const DEFAULT_LIBVIRT_URI: &str = "qemu:///system";
/// The virtio-serial target name of the relay channel (what Nova's patch adds to guests).
pub const DEFAULT_CHANNEL: &str = "org.opensfc.relay.0";
/// Prometheus endpoint, local only by default.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9464";
/// Where the libvirt hook (`nova-patch hook`) sends its notifications unless told otherwise;
/// the listener is off unless `hook_socket` is set.
pub const DEFAULT_HOOK_SOCKET: &str = "/run/relay-host/hook.sock";

/// A configuration problem, with what to fix.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("cannot read configuration file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("configuration file {path}")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("{0} is not set (in the configuration file or with --{flag})", flag = .0.replace('_', "-"))]
    Missing(&'static str),
    #[error("{field}: {reason}")]
    Invalid { field: &'static str, reason: String },
    #[error("cannot determine the host name; set `host`")]
    Hostname(#[source] std::io::Error),
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        reason: reason.into(),
    }
}

/// Per-guest and uplink bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Frames per second a guest may send (token bucket refill rate); excess is dropped.
    pub guest_frames_per_sec: u32,
    /// Token bucket size: frames a guest may send at once after being quiet.
    pub guest_burst: u32,
    /// Frames queued per guest from the controller; a guest that does not read loses the
    /// excess (the controller redelivers desired state). The default holds one largest
    /// message (16 MiB in 32 KiB frames) twice over: the controller sends a message's frames
    /// back to back and the guest drains them at virtio-serial speed.
    pub to_guest_queue: usize,
    /// Bytes queued towards all guests together, in MiB: what bounds memory when many guests
    /// are slow at once.
    pub to_guest_buffer_mib: usize,
    /// Frames queued per guest towards the uplink.
    pub from_guest_queue: usize,
    /// Guest messages kept while the uplink is down; the oldest go first.
    pub uplink_queue: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            guest_frames_per_sec: 200,
            guest_burst: 400,
            to_guest_queue: 1024,
            to_guest_buffer_mib: 256,
            from_guest_queue: 64,
            uplink_queue: 4096,
        }
    }
}

/// The validated configuration of the daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The host name the controller knows this hypervisor by (Neutron's `binding:host_id`).
    pub host: String,
    /// Controller relay endpoint, `host:port`.
    pub controller: String,
    /// Name the controller's certificate must carry (DNS name or IP address).
    pub server_name: String,
    /// PEM file of the CA(s) that sign the controller's certificate.
    pub ca: PathBuf,
    /// PEM file of this relay's client certificate, then any intermediates.
    pub cert: PathBuf,
    /// PEM file of the client certificate's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    pub libvirt_uri: String,
    /// virtio-serial target name of the relay channel.
    pub channel: String,
    /// Where the Prometheus endpoint listens; `None` disables it.
    pub metrics_listen: Option<SocketAddr>,
    /// UNIX datagram socket for the libvirt hook's notifications (`crate::hook`); `None`
    /// (the default) runs no listener.
    pub hook_socket: Option<PathBuf>,
    /// Period of the full libvirt reconcile behind the domain events.
    pub reconcile_interval: Duration,
    /// Uplink heartbeat period until the controller announces its own in `Registered`.
    pub heartbeat_interval: Duration,
    /// How long shutdown waits for queued frames to be written.
    pub shutdown_grace: Duration,
    pub limits: Limits,
    /// Programming of the local integration bridge with the controller's chain rules;
    /// `None` (no `[ovs]` section) leaves OVS alone.
    pub ovs: Option<crate::ovs::OvsConfig>,
}

impl Config {
    /// A configuration with every default and the four settings that have none; for tests and
    /// embedders. Call [`Config::validate`] after changing fields.
    pub fn new(
        controller: impl Into<String>,
        ca: impl Into<PathBuf>,
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
    ) -> Config {
        let controller = controller.into();
        Config {
            host: "localhost".into(),
            server_name: host_part(&controller).to_owned(),
            controller,
            ca: ca.into(),
            cert: cert.into(),
            key: key.into(),
            libvirt_uri: DEFAULT_LIBVIRT_URI.into(),
            channel: DEFAULT_CHANNEL.into(),
            metrics_listen: None,
            hook_socket: None,
            reconcile_interval: Duration::from_secs(60),
            heartbeat_interval: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(5),
            limits: Limits::default(),
            ovs: None,
        }
    }

    /// Reads the file named by `--config` (or the default file if it exists) and applies the
    /// flags over it.
    pub fn load(args: &Args) -> Result<Config, ConfigError> {
        let file = match &args.config {
            Some(path) => FileConfig::read(path)?,
            None if Path::new(DEFAULT_CONFIG_PATH).exists() => {
                FileConfig::read(Path::new(DEFAULT_CONFIG_PATH))?
            }
            None => FileConfig::default(),
        };
        Config::resolve(file, args)
    }

    /// Merges a parsed file and the flags, then validates.
    pub fn resolve(file: FileConfig, args: &Args) -> Result<Config, ConfigError> {
        let limits_file = file.limits.unwrap_or_default();
        let d = Limits::default();
        let controller = args
            .controller
            .clone()
            .or(file.controller)
            .ok_or(ConfigError::Missing("controller"))?;
        let host = match args.host.clone().or(file.host) {
            Some(h) => h,
            None => hostname().map_err(ConfigError::Hostname)?,
        };
        let server_name = args
            .server_name
            .clone()
            .or(file.server_name)
            .unwrap_or_else(|| host_part(&controller).to_owned());
        let metrics = args
            .metrics_listen
            .clone()
            .or(file.metrics_listen)
            .unwrap_or_else(|| DEFAULT_METRICS_LISTEN.into());
        let metrics_listen = match metrics.trim() {
            "off" | "" => None,
            s => Some(s.parse().map_err(|e| {
                invalid(
                    "metrics_listen",
                    format!("{s:?} is not an address:port ({e})"),
                )
            })?),
        };
        let hook_socket = match args.hook_socket.clone().or(file.hook_socket) {
            Some(s) if s.trim() == "off" || s.trim().is_empty() => None,
            Some(s) => Some(PathBuf::from(s)),
            None => None,
        };
        let secs = |field, flag: Option<u64>, file: Option<u64>, default| {
            let v = flag.or(file).unwrap_or(default);
            if v == 0 {
                return Err(invalid(field, "must be at least 1 second"));
            }
            Ok(Duration::from_secs(v))
        };
        let ovs = file.ovs.map(FileOvs::resolve);
        let config = Config {
            host,
            server_name,
            ca: args
                .ca
                .clone()
                .or(file.ca)
                .ok_or(ConfigError::Missing("ca"))?,
            cert: args
                .cert
                .clone()
                .or(file.cert)
                .ok_or(ConfigError::Missing("cert"))?,
            key: args
                .key
                .clone()
                .or(file.key)
                .ok_or(ConfigError::Missing("key"))?,
            controller,
            libvirt_uri: args
                .libvirt_uri
                .clone()
                .or(file.libvirt_uri)
                .unwrap_or_else(|| DEFAULT_LIBVIRT_URI.into()),
            channel: args
                .channel
                .clone()
                .or(file.channel)
                .unwrap_or_else(|| DEFAULT_CHANNEL.into()),
            metrics_listen,
            hook_socket,
            reconcile_interval: secs(
                "reconcile_interval_secs",
                args.reconcile_interval_secs,
                file.reconcile_interval_secs,
                60,
            )?,
            heartbeat_interval: secs(
                "heartbeat_interval_secs",
                None,
                file.heartbeat_interval_secs,
                10,
            )?,
            shutdown_grace: Duration::from_secs(file.shutdown_grace_secs.unwrap_or(5)),
            limits: Limits {
                guest_frames_per_sec: args
                    .guest_frames_per_sec
                    .or(limits_file.guest_frames_per_sec)
                    .unwrap_or(d.guest_frames_per_sec),
                guest_burst: args
                    .guest_burst
                    .or(limits_file.guest_burst)
                    .unwrap_or(d.guest_burst),
                to_guest_queue: args
                    .to_guest_queue
                    .or(limits_file.to_guest_queue)
                    .unwrap_or(d.to_guest_queue),
                to_guest_buffer_mib: args
                    .to_guest_buffer_mib
                    .or(limits_file.to_guest_buffer_mib)
                    .unwrap_or(d.to_guest_buffer_mib),
                from_guest_queue: args
                    .from_guest_queue
                    .or(limits_file.from_guest_queue)
                    .unwrap_or(d.from_guest_queue),
                uplink_queue: args
                    .uplink_queue
                    .or(limits_file.uplink_queue)
                    .unwrap_or(d.uplink_queue),
            },
            ovs,
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks every rule that does not need the file system or the network.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.host.trim().is_empty() {
            return Err(invalid("host", "is empty"));
        }
        let (h, port) = self.controller.rsplit_once(':').ok_or_else(|| {
            invalid(
                "controller",
                format!("{:?} is not host:port", self.controller),
            )
        })?;
        if h.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(invalid(
                "controller",
                format!("{:?} is not host:port", self.controller),
            ));
        }
        if let Err(e) = rustls_pki_types::ServerName::try_from(self.server_name.as_str()) {
            return Err(invalid(
                "server_name",
                format!(
                    "{:?} is neither a DNS name nor an IP address ({e})",
                    self.server_name
                ),
            ));
        }
        if self.channel.is_empty() {
            return Err(invalid("channel", "is empty"));
        }
        if self.libvirt_uri.is_empty() {
            return Err(invalid("libvirt_uri", "is empty"));
        }
        if let Some(path) = &self.hook_socket {
            crate::hook::check_socket_path(path)
                .map_err(|reason| invalid("hook_socket", reason))?;
        }
        let l = &self.limits;
        if l.guest_frames_per_sec == 0 {
            return Err(invalid("limits.guest_frames_per_sec", "must be at least 1"));
        }
        if l.guest_burst == 0 {
            return Err(invalid("limits.guest_burst", "must be at least 1"));
        }
        for (field, v) in [
            ("limits.to_guest_queue", l.to_guest_queue),
            ("limits.to_guest_buffer_mib", l.to_guest_buffer_mib),
            ("limits.from_guest_queue", l.from_guest_queue),
            ("limits.uplink_queue", l.uplink_queue),
        ] {
            if v == 0 || v > 1 << 20 {
                return Err(invalid(field, format!("{v} is not within 1..=1048576")));
            }
        }
        if self.heartbeat_interval.is_zero() {
            return Err(invalid("heartbeat_interval", "must not be zero"));
        }
        if let Some(ovs) = &self.ovs {
            ovs.validate().map_err(|reason| invalid("ovs", reason))?;
        }
        Ok(())
    }
}

/// `host` of `host:port`, without the brackets of an IPv6 literal.
fn host_part(addr: &str) -> &str {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

/// The kernel's node name, which is what Nova reports as the compute host by default.
fn hostname() -> Result<String, std::io::Error> {
    let uts = rustix::system::uname();
    let name = uts.nodename().to_string_lossy().into_owned();
    if name.is_empty() {
        return Err(std::io::Error::other("the kernel's node name is empty"));
    }
    Ok(name)
}

/// The configuration file as written; every key optional.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub host: Option<String>,
    pub controller: Option<String>,
    pub server_name: Option<String>,
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub libvirt_uri: Option<String>,
    pub channel: Option<String>,
    pub metrics_listen: Option<String>,
    pub hook_socket: Option<String>,
    pub reconcile_interval_secs: Option<u64>,
    pub heartbeat_interval_secs: Option<u64>,
    pub shutdown_grace_secs: Option<u64>,
    pub limits: Option<FileLimits>,
    pub ovs: Option<FileOvs>,
}

/// The `[limits]` table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileLimits {
    pub guest_frames_per_sec: Option<u32>,
    pub guest_burst: Option<u32>,
    pub to_guest_queue: Option<usize>,
    pub to_guest_buffer_mib: Option<usize>,
    pub from_guest_queue: Option<usize>,
    pub uplink_queue: Option<usize>,
}

/// The `[ovs]` table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileOvs {
    pub bridge: String,
    pub db: Option<String>,
    pub rundir: Option<PathBuf>,
    pub poll_interval_ms: Option<u64>,
    pub verify_interval_secs: Option<u64>,
}

impl FileOvs {
    fn resolve(self) -> crate::ovs::OvsConfig {
        let mut c = crate::ovs::OvsConfig::new(self.bridge);
        c.db = self.db;
        c.rundir = self.rundir;
        if let Some(ms) = self.poll_interval_ms {
            c.poll_interval = Duration::from_millis(ms);
        }
        if let Some(s) = self.verify_interval_secs {
            c.verify_interval = Duration::from_secs(s);
        }
        c
    }
}

impl FileConfig {
    pub fn read(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        FileConfig::parse(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    pub fn parse(text: &str) -> Result<FileConfig, toml::de::Error> {
        toml::from_str(text)
    }
}

/// Command line: a subcommand (default `run`) and flags that override the file. Flags are
/// accepted before or after the subcommand.
#[derive(Debug, clap::Parser)]
#[command(
    name = "relay-host",
    version,
    about = "Configuration relay between the controller and the VNF guests of this hypervisor"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub args: Args,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::Subcommand)]
pub enum Command {
    /// Run the daemon (the default).
    Run,
    /// Check the configuration, certificates, libvirt and the controller, one line per check;
    /// exit 0 if everything is in order, 1 otherwise.
    Check,
}

/// Flags; each overrides the configuration file key of the same name.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Args {
    /// Configuration file [default: /etc/relay-host/relay-host.toml, if it exists].
    #[arg(long, short, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Host name the controller knows this hypervisor by [default: the host name].
    #[arg(long, global = true)]
    pub host: Option<String>,
    /// Controller relay endpoint, host:port.
    #[arg(long, global = true, value_name = "HOST:PORT")]
    pub controller: Option<String>,
    /// Name the controller's certificate must carry [default: host of --controller].
    #[arg(long, global = true)]
    pub server_name: Option<String>,
    /// PEM file of the CA that signs the controller's certificate.
    #[arg(long, global = true, value_name = "PATH")]
    pub ca: Option<PathBuf>,
    /// PEM file of this relay's client certificate (and intermediates).
    #[arg(long, global = true, value_name = "PATH")]
    pub cert: Option<PathBuf>,
    /// PEM file of the client certificate's private key.
    #[arg(long, global = true, value_name = "PATH")]
    pub key: Option<PathBuf>,
    /// libvirt connection URI [default: qemu:///system].
    #[arg(long, global = true, value_name = "URI")]
    pub libvirt_uri: Option<String>,
    /// virtio-serial target name of the relay channel [default: org.opensfc.relay.0].
    #[arg(long, global = true)]
    pub channel: Option<String>,
    /// Prometheus endpoint address, or "off" [default: 127.0.0.1:9464].
    #[arg(long, global = true, value_name = "ADDR:PORT")]
    pub metrics_listen: Option<String>,
    /// UNIX socket for the libvirt hook's notifications (e.g. /run/relay-host/hook.sock),
    /// or "off" [default: off].
    #[arg(long, global = true, value_name = "PATH")]
    pub hook_socket: Option<String>,
    /// Seconds between full libvirt reconciles [default: 60].
    #[arg(long, global = true, value_name = "SECS")]
    pub reconcile_interval_secs: Option<u64>,
    /// Frames per second each guest may send [default: 200].
    #[arg(long, global = true, value_name = "N")]
    pub guest_frames_per_sec: Option<u32>,
    /// Frames a guest may send at once after being quiet [default: 400].
    #[arg(long, global = true, value_name = "N")]
    pub guest_burst: Option<u32>,
    /// Frames queued per guest from the controller [default: 1024].
    #[arg(long, global = true, value_name = "N")]
    pub to_guest_queue: Option<usize>,
    /// MiB queued towards all guests together [default: 256].
    #[arg(long, global = true, value_name = "MIB")]
    pub to_guest_buffer_mib: Option<usize>,
    /// Frames queued per guest towards the controller [default: 64].
    #[arg(long, global = true, value_name = "N")]
    pub from_guest_queue: Option<usize>,
    /// Guest messages kept while the uplink is down [default: 4096].
    #[arg(long, global = true, value_name = "N")]
    pub uplink_queue: Option<usize>,
    /// Log filter (`info`, `debug`, `relay_host=trace`, ...).
    #[arg(long, global = true, default_value = "info")]
    pub log: String,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use clap::Parser;

    fn parse(argv: &[&str]) -> Cli {
        Cli::try_parse_from(argv).unwrap()
    }

    const FILE: &str = r#"
        host = "compute-7"
        controller = "ctl.example:7443"
        ca = "/etc/relay-host/ca.pem"
        cert = "/etc/relay-host/relay.pem"
        key = "/etc/relay-host/relay.key"
        metrics_listen = "127.0.0.1:9999"
        [limits]
        guest_frames_per_sec = 50
        uplink_queue = 10
    "#;

    #[test]
    fn file_values_defaults_and_flag_overrides() {
        let file = FileConfig::parse(FILE).unwrap();
        let cli = parse(&["relay-host", "--guest-burst", "7", "--channel", "x.y.0"]);
        let c = Config::resolve(file.clone(), &cli.args).unwrap();
        assert_eq!(c.host, "compute-7");
        assert_eq!(c.server_name, "ctl.example");
        assert_eq!(c.libvirt_uri, DEFAULT_LIBVIRT_URI);
        assert_eq!(c.channel, "x.y.0");
        assert_eq!(c.metrics_listen, Some("127.0.0.1:9999".parse().unwrap()));
        assert_eq!(c.limits.guest_frames_per_sec, 50);
        assert_eq!(c.limits.guest_burst, 7);
        assert_eq!(c.limits.uplink_queue, 10);
        assert_eq!(c.limits.to_guest_queue, Limits::default().to_guest_queue);

        // Flags after the subcommand count too, and win over the file.
        let cli = parse(&[
            "relay-host",
            "check",
            "--controller",
            "[::1]:7443",
            "--metrics-listen",
            "off",
        ]);
        assert_eq!(cli.command, Some(Command::Check));
        let c = Config::resolve(file, &cli.args).unwrap();
        assert_eq!(c.controller, "[::1]:7443");
        assert_eq!(c.server_name, "::1");
        assert_eq!(c.metrics_listen, None);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_with_the_field_named() {
        let err = FileConfig::parse("controler = \"x:1\"").unwrap_err();
        assert!(err.to_string().contains("controler"), "{err}");
        let err = FileConfig::parse("[limits]\nburst = 1").unwrap_err();
        assert!(err.to_string().contains("burst"), "{err}");

        let args = parse(&["relay-host"]).args;
        let err = Config::resolve(FileConfig::default(), &args).unwrap_err();
        assert!(matches!(err, ConfigError::Missing("controller")));
        assert!(err.to_string().contains("--controller"), "{err}");

        let mut file = FileConfig::parse(FILE).unwrap();
        file.controller = Some("no-port".into());
        let err = Config::resolve(file.clone(), &args).unwrap_err();
        assert!(err.to_string().starts_with("controller:"), "{err}");

        file.controller = Some("ctl:7443".into());
        file.limits = Some(FileLimits {
            guest_burst: Some(0),
            ..FileLimits::default()
        });
        let err = Config::resolve(file.clone(), &args).unwrap_err();
        assert!(err.to_string().contains("guest_burst"), "{err}");

        file.limits = None;
        file.server_name = Some("not a name!".into());
        let err = Config::resolve(file.clone(), &args).unwrap_err();
        assert!(err.to_string().starts_with("server_name:"), "{err}");

        file.server_name = None;
        file.hook_socket = Some("relative/hook.sock".into());
        let err = Config::resolve(file, &args).unwrap_err();
        assert!(err.to_string().starts_with("hook_socket:"), "{err}");
    }

    #[test]
    fn the_hook_socket_is_off_unless_set() {
        let file = FileConfig::parse(FILE).unwrap();
        let c = Config::resolve(file.clone(), &parse(&["relay-host"]).args).unwrap();
        assert_eq!(c.hook_socket, None);

        let mut with = file.clone();
        with.hook_socket = Some(DEFAULT_HOOK_SOCKET.into());
        let c = Config::resolve(with.clone(), &parse(&["relay-host"]).args).unwrap();
        assert_eq!(c.hook_socket, Some(PathBuf::from(DEFAULT_HOOK_SOCKET)));

        let args = parse(&["relay-host", "--hook-socket", "off"]).args;
        assert_eq!(Config::resolve(with, &args).unwrap().hook_socket, None);
        let args = parse(&["relay-host", "--hook-socket", "/run/x/h.sock"]).args;
        let c = Config::resolve(file, &args).unwrap();
        assert_eq!(c.hook_socket, Some(PathBuf::from("/run/x/h.sock")));
    }

    #[test]
    fn the_ovs_section_is_optional_and_checked() {
        let args = parse(&["relay-host"]).args;
        let c = Config::resolve(FileConfig::parse(FILE).unwrap(), &args).unwrap();
        assert_eq!(c.ovs, None);

        let text = format!(
            "{FILE}\n[ovs]\nbridge = \"br-int\"\ndb = \"unix:/x/db.sock\"\npoll_interval_ms = 250\n"
        );
        let c = Config::resolve(FileConfig::parse(&text).unwrap(), &args).unwrap();
        let ovs = c.ovs.unwrap();
        assert_eq!(ovs.bridge, "br-int");
        assert_eq!(ovs.db.as_deref(), Some("unix:/x/db.sock"));
        assert_eq!(ovs.rundir, None);
        assert_eq!(ovs.poll_interval, Duration::from_millis(250));
        assert_eq!(ovs.verify_interval, Duration::from_secs(30));

        let bad = format!("{FILE}\n[ovs]\nbridge = \"br int;x\"\n");
        let err = Config::resolve(FileConfig::parse(&bad).unwrap(), &args).unwrap_err();
        assert!(err.to_string().starts_with("ovs: bridge"), "{err}");
        let unknown = format!("{FILE}\n[ovs]\nbridge = \"br-int\"\nbrige = 1\n");
        assert!(FileConfig::parse(&unknown).is_err());
    }

    #[test]
    fn host_defaults_to_the_node_name() {
        let mut file = FileConfig::parse(FILE).unwrap();
        file.host = None;
        let c = Config::resolve(file, &parse(&["relay-host"]).args).unwrap();
        assert!(!c.host.is_empty());
    }
}
