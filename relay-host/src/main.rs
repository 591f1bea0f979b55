//! `relay-host`: parses arguments, sets up logging, and runs the daemon (or `check`).
//!
//! Exit codes: 0 after a clean shutdown or a passing check; 1 for a failing check or a runtime
//! failure; 2 for configuration errors (arguments, file, certificates).

use std::process::ExitCode;

use clap::Parser;
use relay_host::config::{Cli, Command, Config};
use relay_host::{error_chain, CancellationToken, Error};
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = match EnvFilter::try_new(&cli.args.log) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("relay-host: invalid --log {:?}: {e}", cli.args.log);
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("relay-host: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let config = Config::load(&cli.args);
    match cli.command.unwrap_or(Command::Run) {
        Command::Check => {
            let lines = match &config {
                Ok(config) => runtime.block_on(relay_host::check::check(config)),
                Err(e) => vec![relay_host::check::config_failed(e)],
            };
            for line in &lines {
                println!("{line}");
            }
            if lines.iter().all(|l| l.ok) {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Command::Run => {
            let config = match config {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("relay-host: {}", error_chain(&Error::Config(e)));
                    return ExitCode::from(2);
                }
            };
            let result = runtime.block_on(async {
                let shutdown = CancellationToken::new();
                if let Err(e) = relay_host::cancel_on_signals(shutdown.clone()) {
                    eprintln!("relay-host: cannot watch signals: {e}");
                    return Err(None);
                }
                relay_host::run(config, shutdown).await.map_err(Some)
            });
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(None) => ExitCode::from(1),
                Err(Some(e)) => {
                    eprintln!("relay-host: {}", error_chain(&e));
                    let code = match e {
                        Error::Config(_) | Error::Tls(_) => 2,
                        _ => 1,
                    };
                    ExitCode::from(code)
                }
            }
        }
    }
}
