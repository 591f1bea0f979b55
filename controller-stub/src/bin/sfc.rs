//! `sfc`: the command-line client of the controller. Parses the arguments, runs the command
//! through [`controller_stub::cli::run`], prints its output and maps failures to exit codes:
//! 0 on success, 1 when the controller refuses or cannot be reached, 2 for usage errors.

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use controller_stub::cli::{self, Args, Output};
use controller_stub::error_chain;

fn main() -> ExitCode {
    let args = Args::parse();
    match cli::run(args) {
        Ok(output) => print(&output),
        Err(e) => {
            eprintln!("sfc: {}", error_chain(&e));
            ExitCode::from(e.exit_code())
        }
    }
}

fn print(output: &Output) -> ExitCode {
    let text = match output {
        Output::Text(text) => format!("{text}\n"),
        // A Value always serialises (its map keys are strings).
        Output::Json(value) => match serde_json::to_string_pretty(value) {
            Ok(json) => format!("{json}\n"),
            Err(e) => {
                eprintln!("sfc: cannot print the answer: {e}");
                return ExitCode::from(1);
            }
        },
        Output::Nothing => return ExitCode::SUCCESS,
    };
    // A closed pipe (`sfc port-list | head -1`) is not worth a panic.
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sfc: cannot write the output: {e}");
            ExitCode::from(1)
        }
    }
}
