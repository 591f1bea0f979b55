//! `controller-stub`: parses arguments, sets up logging, and runs the controller.
//!
//! Exit codes: 0 after a clean shutdown; 1 for a runtime failure; 2 for bad arguments.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use controller_stub::api::AppState;
use controller_stub::auth::{Auth, TokenTable};
use controller_stub::db::Db;
use controller_stub::{error_chain, CancellationToken};
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(version, about = "networking-sfc compatible controller")]
struct Cli {
    /// Log filter (tracing EnvFilter syntax).
    #[arg(long, global = true, default_value = "info")]
    log: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the API server.
    Serve {
        /// Address of the REST API.
        #[arg(long, default_value = "127.0.0.1:9696")]
        listen: std::net::SocketAddr,
        /// `sqlite:PATH` (created if missing) or `postgres://user@host/db`.
        #[arg(long, default_value = "sqlite:/var/lib/sfc-controller/controller.db")]
        database: String,
        /// `noauth` (project from X-Project-Id, for local use) or `token` (needs --tokens).
        #[arg(long, default_value = "noauth")]
        auth: String,
        /// TOML file of `[[token]]` entries for `--auth token`.
        #[arg(long)]
        tokens: Option<std::path::PathBuf>,
        /// Project of header-less requests in noauth mode.
        #[arg(long, default_value = "admin")]
        noauth_project: String,
        /// SFC drivers to load, in call order (comma-separated names).
        #[arg(long, value_delimiter = ',', default_value = "logging")]
        drivers: Vec<String>,
        /// Address of the relay endpoint (mutual TLS); off unless given, and then
        /// --relay-cert, --relay-key and --relay-ca are required.
        #[arg(long)]
        relay_listen: Option<std::net::SocketAddr>,
        /// PEM certificate (chain) of the relay endpoint.
        #[arg(long)]
        relay_cert: Option<std::path::PathBuf>,
        /// PEM private key of the relay endpoint.
        #[arg(long)]
        relay_key: Option<std::path::PathBuf>,
        /// PEM CA certificate(s) that relay client certificates must chain to.
        #[arg(long)]
        relay_ca: Option<std::path::PathBuf>,
    },
    /// Certificates for the relay endpoint and the relays, for local use.
    Pki {
        #[command(subcommand)]
        command: PkiCommand,
    },
}

#[derive(Debug, Subcommand)]
enum PkiCommand {
    /// Creates a CA, the relay endpoint's certificate and relay client certificates in DIR.
    Init {
        /// Output directory (created if missing).
        #[arg(long)]
        dir: std::path::PathBuf,
        /// DNS names and IP addresses of the endpoint's certificate (default localhost,127.0.0.1).
        #[arg(long = "server-name", value_delimiter = ',')]
        server_names: Vec<String>,
        /// Host name of a relay to issue a client certificate for (repeatable).
        #[arg(long = "relay")]
        relays: Vec<String>,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
}

/// The relay endpoint's address and TLS configuration, if `serve` was asked for one.
type RelaySettings = Option<(std::net::SocketAddr, std::sync::Arc<rustls::ServerConfig>)>;

fn relay_settings(
    listen: Option<std::net::SocketAddr>,
    cert: Option<std::path::PathBuf>,
    key: Option<std::path::PathBuf>,
    ca: Option<std::path::PathBuf>,
) -> Result<RelaySettings, String> {
    match (listen, cert, key, ca) {
        (None, None, None, None) => Ok(None),
        (Some(listen), Some(cert), Some(key), Some(ca)) => {
            controller_stub::relay::server_config(&cert, &key, &ca)
                .map(|tls| Some((listen, tls)))
                .map_err(|e| error_chain(&e))
        }
        _ => Err(
            "the relay endpoint needs all of --relay-listen, --relay-cert, --relay-key and \
             --relay-ca"
                .into(),
        ),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = match EnvFilter::try_new(&cli.log) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("controller-stub: invalid --log {:?}: {e}", cli.log);
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("controller-stub: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match cli.command {
        Command::Serve {
            listen,
            database,
            auth,
            tokens,
            noauth_project,
            drivers,
            relay_listen,
            relay_cert,
            relay_key,
            relay_ca,
        } => {
            let relay = match relay_settings(relay_listen, relay_cert, relay_key, relay_ca) {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("controller-stub: {e}");
                    return ExitCode::from(2);
                }
            };
            // The relay endpoint's host links, shared with the OVS driver that sends through
            // them.
            let host_links = controller_stub::relay::HostLinks::default();
            let ovs_driver = controller_stub::drivers::ovs::OvsDriver::new(host_links.clone());
            let mut registry = controller_stub::drivers::Registry::default();
            ovs_driver.register(&mut registry);
            let uses_ovs = drivers
                .iter()
                .any(|d| d == controller_stub::drivers::ovs::NAME);
            let drivers =
                match controller_stub::drivers::DriverManager::from_names(&drivers, &registry) {
                    Ok(d) => d,
                    Err(e) => {
                        eprintln!("controller-stub: {e}");
                        return ExitCode::from(2);
                    }
                };
            let auth = match (auth.as_str(), tokens) {
                ("noauth", _) => Auth::NoAuth {
                    default_project: noauth_project,
                },
                ("token", Some(path)) => match TokenTable::load(&path) {
                    Ok(t) => Auth::Token(t),
                    Err(e) => {
                        eprintln!("controller-stub: {}", error_chain(&e));
                        return ExitCode::from(2);
                    }
                },
                ("token", None) => {
                    eprintln!("controller-stub: --auth token needs --tokens FILE");
                    return ExitCode::from(2);
                }
                (other, _) => {
                    eprintln!("controller-stub: unknown --auth {other:?} (noauth or token)");
                    return ExitCode::from(2);
                }
            };
            let result = runtime.block_on(async move {
                let db = Db::connect(&database).await?;
                let listener = tokio::net::TcpListener::bind(listen)
                    .await
                    .map_err(controller_stub::Error::Serve)?;
                tracing::info!(%listen, "serving the API");
                let shutdown = CancellationToken::new();
                let signal = shutdown.clone();
                // SIGTERM is how service managers and operators stop a daemon; SIGINT is Ctrl-C.
                let mut term =
                    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                        .map_err(controller_stub::Error::Serve)?;
                tokio::spawn(async move {
                    tokio::select! {
                        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT: shutting down"),
                        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
                    }
                    signal.cancel();
                });
                let state = AppState::new(db, auth).with_drivers(drivers);
                let relay_task = match relay {
                    Some((addr, tls)) => {
                        let listener = tokio::net::TcpListener::bind(addr)
                            .await
                            .map_err(controller_stub::Error::RelayListen)?;
                        let endpoint = controller_stub::relay::Endpoint {
                            db: state.db.clone(),
                            notifier: state.vnf.clone(),
                            hosts: host_links.clone(),
                            tls,
                            options: controller_stub::relay::RelayOptions::default(),
                        };
                        if uses_ovs {
                            let (db, stop) = (state.db.clone(), shutdown.clone());
                            tokio::spawn(async move {
                                ovs_driver
                                    .run(db, std::time::Duration::from_secs(30), stop)
                                    .await
                            });
                        }
                        let stop = shutdown.clone();
                        Some(tokio::spawn(controller_stub::relay::serve(
                            listener, endpoint, stop,
                        )))
                    }
                    None => None,
                };
                let served = controller_stub::serve(listener, state, shutdown.clone()).await;
                shutdown.cancel();
                if let Some(task) = relay_task {
                    let _ = task.await;
                }
                served
            });
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("controller-stub: {}", error_chain(&e));
                    ExitCode::from(1)
                }
            }
        }
        Command::Pki {
            command:
                PkiCommand::Init {
                    dir,
                    server_names,
                    relays,
                    force,
                },
        } => {
            let options = controller_stub::pki::PkiOptions {
                dir,
                server_names,
                relays,
                force,
            };
            match controller_stub::pki::init(&options) {
                Ok(written) => {
                    for w in written {
                        println!("wrote {}: {}", w.path.display(), w.purpose);
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("controller-stub: {}", error_chain(&e));
                    match e {
                        controller_stub::pki::PkiError::Invalid(_)
                        | controller_stub::pki::PkiError::Exists(_) => ExitCode::from(2),
                        _ => ExitCode::from(1),
                    }
                }
            }
        }
    }
}
