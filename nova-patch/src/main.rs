//! `nova-patch`: the domain-XML injector, the libvirt hook and the key derivation, on the
//! command line.
//!
//! Exit codes: 0 on success (always, for `hook`: libvirt must not fail a domain operation
//! because of the relay); 1 when the input or the key is unusable; 2 for usage errors.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use nova_patch::hook::{self, HookConfig};
use nova_patch::key::DEFAULT_CHANNEL;
use nova_patch::{error_chain, ChannelName, Error, RelayKey};

#[derive(Debug, Parser)]
#[command(
    name = "nova-patch",
    version,
    about = "Gives libvirt guests the configuration relay channel"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Adds the relay channel (and the key) to a domain XML: standard input to standard output.
    Inject {
        /// File holding the instance key (64 hex digits).
        #[arg(long, value_name = "PATH", conflicts_with = "key")]
        key_file: Option<PathBuf>,
        /// The instance key as 64 hex digits (visible to other users in the process list:
        /// prefer --key-file).
        #[arg(long, value_name = "HEX")]
        key: Option<String>,
        /// Target name of the channel.
        #[arg(long, default_value = DEFAULT_CHANNEL)]
        name: String,
    },
    /// The libvirt QEMU hook: `hook <domain> <operation> <sub-operation> <extra>`, the domain
    /// XML on standard input.
    Hook {
        /// relay-host's hook socket.
        #[arg(long, value_name = "PATH", default_value = hook::DEFAULT_SOCKET)]
        socket: PathBuf,
        /// Target name of the channel ensured on migrate and restore.
        #[arg(long, default_value = DEFAULT_CHANNEL)]
        name: String,
        /// Longest time a notification may block libvirt, in milliseconds.
        #[arg(long, value_name = "MS", default_value_t = 250)]
        timeout_ms: u64,
        domain: String,
        operation: String,
        #[arg(allow_hyphen_values = true)]
        sub_operation: Option<String>,
        #[arg(allow_hyphen_values = true, num_args = 0..)]
        extra: Vec<String>,
    },
    /// Prints the relay key the Nova patch gives an instance, for the controller.
    DeriveKey {
        /// The deployment secret (`[config_relay] key_secret_file` of nova.conf).
        #[arg(long, value_name = "PATH")]
        secret_file: PathBuf,
        /// The instance UUID.
        #[arg(long, value_name = "UUID")]
        instance: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Inject {
            key_file,
            key,
            name,
        } => inject(key_file, key, &name),
        Command::Hook {
            socket,
            name,
            timeout_ms,
            domain,
            operation,
            ..
        } => return run_hook(socket, &name, timeout_ms, &domain, &operation),
        Command::DeriveKey {
            secret_file,
            instance,
        } => derive_key(&secret_file, &instance),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nova-patch: {}", error_chain(&e));
            ExitCode::from(1)
        }
    }
}

fn inject(key_file: Option<PathBuf>, key: Option<String>, name: &str) -> Result<(), Error> {
    let target: ChannelName = name.parse()?;
    let key = match (key_file, key) {
        (Some(path), _) => Some(RelayKey::from_file(&path)?),
        (None, Some(hex)) => Some(hex.parse()?),
        (None, None) => None,
    };
    let xml = nova_patch::read_xml(std::io::stdin().lock())?;
    let out = nova_patch::inject(&xml, &target, key.as_ref())?;
    write_stdout(&out)
}

fn run_hook(
    socket: PathBuf,
    name: &str,
    timeout_ms: u64,
    domain: &str,
    operation: &str,
) -> ExitCode {
    let channel = match name.parse() {
        Ok(c) => c,
        Err(e) => {
            // Still exit 0: a misconfigured hook must not stop domains.
            eprintln!("nova-patch hook: {}; doing nothing", error_chain(&e));
            return ExitCode::SUCCESS;
        }
    };
    let config = HookConfig {
        socket,
        channel,
        timeout: Duration::from_millis(timeout_ms),
    };
    let outcome = hook::run(&config, domain, operation, std::io::stdin().lock());
    for warning in &outcome.warnings {
        eprintln!("nova-patch hook: warning: {warning}");
    }
    if let Some(xml) = outcome.xml {
        if let Err(e) = write_stdout(&xml) {
            eprintln!("nova-patch hook: warning: {}", error_chain(&e));
        }
    }
    ExitCode::SUCCESS
}

fn derive_key(secret_file: &std::path::Path, instance: &str) -> Result<(), Error> {
    let instance =
        uuid::Uuid::parse_str(instance).map_err(|_| Error::InvalidInstance(instance.to_owned()))?;
    let secret = nova_patch::read_secret(secret_file)?;
    write_stdout(&format!(
        "{}\n",
        nova_patch::derive_key(&secret, instance).to_hex()
    ))
}

fn write_stdout(text: &str) -> Result<(), Error> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|()| out.flush())
        .map_err(Error::Output)
}
