//! `vnf-agent`: the reference guest agent. Parses arguments, sets up logging, loads the key,
//! registers the reference handlers and runs the library's [`Agent`] until SIGTERM or SIGINT.
//!
//! Exit codes: 0 after a clean shutdown, 2 for configuration errors (arguments, key, state
//! directory, files policy), 1 for anything else.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tokio::signal::unix::{signal, SignalKind};
use tracing_subscriber::EnvFilter;
use vnf_agent::handlers::{self, FilesPolicy};
use vnf_agent::transport::{PortSpec, DEFAULT_BAUD, DEFAULT_PORT_NAME};
use vnf_agent::{error_chain, key, Agent, AgentError, CancellationToken, Uuid};

#[derive(Debug, Parser)]
#[command(
    version,
    about = "Applies VNF configuration pushed by the controller through the relay"
)]
struct Args {
    /// Channel to the host: a virtio-serial port name, a device path, `uart:/dev/ttyS1[@baud]`,
    /// or `unix:/path` (development only).
    #[arg(long, default_value = DEFAULT_PORT_NAME, conflicts_with = "uart")]
    port: String,
    /// Use this UART (e.g. /dev/ttyS1) instead of a virtio-serial port.
    #[arg(long, value_name = "DEVICE")]
    uart: Option<PathBuf>,
    /// Line speed of --uart.
    #[arg(long, default_value_t = DEFAULT_BAUD, requires = "uart")]
    baud: u32,
    /// File holding the instance key (64 hex digits). Default: the SMBIOS OEM string
    /// `org.opensfc.relay.key:<hex>`.
    #[arg(long, value_name = "PATH")]
    key_file: Option<PathBuf>,
    /// This instance's UUID; pushes for other instances are rejected.
    #[arg(long, value_name = "UUID")]
    instance: Option<Uuid>,
    /// Where the applied versions are kept.
    #[arg(long, default_value = "/var/lib/vnf-agent", value_name = "DIR")]
    state_dir: PathBuf,
    /// Root directory below which the handlers write configuration.
    #[arg(long, default_value = "/", value_name = "DIR")]
    root: PathBuf,
    /// Files the `files` service may write (repeatable).
    #[arg(long = "files-allow-file", value_name = "PATH")]
    files_allow_file: Vec<String>,
    /// Directories below which the `files` service may write (repeatable).
    #[arg(long = "files-allow-dir", value_name = "DIR")]
    files_allow_dir: Vec<String>,
    /// A reload command the `files` service may run, as NAME=PROGRAM ARG... (split on
    /// whitespace, never run through a shell; repeatable).
    #[arg(long = "files-reload", value_name = "NAME=COMMAND")]
    files_reload: Vec<String>,
    /// Log filter (`info`, `debug`, `vnf_agent=trace`, ...).
    #[arg(long, default_value = "info")]
    log: String,
}

/// An error and the exit code it maps to.
struct Failure {
    code: u8,
    message: String,
}

impl Failure {
    fn config(message: impl Into<String>) -> Failure {
        Failure {
            code: 2,
            message: message.into(),
        }
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = match EnvFilter::try_new(&args.log) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("vnf-agent: invalid --log {:?}: {e}", args.log);
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            eprintln!("vnf-agent: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

fn files_policy(args: &Args) -> Result<FilesPolicy, Failure> {
    let bad =
        |e: &dyn std::error::Error| Failure::config(format!("files policy: {}", error_chain(e)));
    let mut policy = FilesPolicy::new();
    for f in &args.files_allow_file {
        policy = policy.allow_file(f).map_err(|e| bad(&e))?;
    }
    for d in &args.files_allow_dir {
        policy = policy.allow_dir(d).map_err(|e| bad(&e))?;
    }
    for r in &args.files_reload {
        let (name, command) = r
            .split_once('=')
            .ok_or_else(|| Failure::config(format!("--files-reload {r:?} is not NAME=COMMAND")))?;
        let argv: Vec<&str> = command.split_whitespace().collect();
        policy = policy.reload_command(name, &argv).map_err(|e| bad(&e))?;
    }
    Ok(policy)
}

fn run(args: Args) -> Result<(), Failure> {
    let port = match &args.uart {
        Some(device) => PortSpec::Uart {
            device: device.clone(),
            baud: args.baud,
        },
        None => args
            .port
            .parse()
            .map_err(|e: vnf_agent::transport::PortSpecError| Failure::config(e.to_string()))?,
    };
    let key = match &args.key_file {
        Some(path) => key::from_file(path),
        None => key::from_smbios(std::path::Path::new(key::DEFAULT_SYSFS)),
    }
    .map_err(|e| Failure::config(format!("instance key: {}", error_chain(&e))))?;
    let policy = files_policy(&args)?;

    let mut builder = Agent::builder(key)
        .port(port)
        .state_dir(&args.state_dir)
        .agent_name("vnf-agent", env!("CARGO_PKG_VERSION"));
    if let Some(instance) = args.instance {
        builder = builder.instance(instance);
    }
    for (service, handler) in handlers::default_set(&args.root, policy) {
        builder = builder.handler(service, handler);
    }
    let agent = builder
        .build()
        .map_err(|e| Failure::config(error_chain(&e)))?;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure {
            code: 1,
            message: error_chain(&AgentError::Runtime(e)),
        })?;
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        let mut term = signal(SignalKind::terminate()).map_err(|e| Failure {
            code: 1,
            message: format!("cannot watch SIGTERM: {e}"),
        })?;
        let mut int = signal(SignalKind::interrupt()).map_err(|e| Failure {
            code: 1,
            message: format!("cannot watch SIGINT: {e}"),
        })?;
        let stop = shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
                _ = int.recv() => tracing::info!("SIGINT: shutting down"),
            }
            stop.cancel();
        });
        agent.run(shutdown).await.map_err(|e| Failure {
            code: 1,
            message: error_chain(&e),
        })
    })
}
