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
    },
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
        } => {
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
                tokio::spawn(async move {
                    let _ = tokio::signal::ctrl_c().await;
                    signal.cancel();
                });
                controller_stub::serve(listener, AppState { db, auth }, shutdown).await
            });
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("controller-stub: {}", error_chain(&e));
                    ExitCode::from(1)
                }
            }
        }
    }
}
