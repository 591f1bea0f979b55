//! The side-effect boundary for external programs (`nft`, `haproxy`, `systemctl`, `ipsec`).
//!
//! Handlers describe a command as a [`CommandLine`]: a program name fixed in the handler's code
//! (or in the operator's files policy) and an argument vector. It is executed directly with
//! `execve` semantics, never through a shell, so no argument is ever re-parsed. The handlers
//! only pass paths they computed themselves and numbers they parsed, never a string from the
//! controller. [`SystemRunner`] is the production implementation; tests use a recording fake.

use std::ffi::OsString;
use std::fmt;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use wait_timeout::ChildExt;

/// A program and its arguments, run without a shell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandLine {
    /// A bare name looked up in the runner's fixed search path, or an absolute path.
    pub program: String,
    pub args: Vec<OsString>,
}

impl CommandLine {
    pub fn new(program: impl Into<String>) -> CommandLine {
        CommandLine {
            program: program.into(),
            args: Vec::new(),
        }
    }

    pub fn arg(mut self, arg: impl Into<OsString>) -> CommandLine {
        self.args.push(arg.into());
        self
    }
}

impl fmt::Display for CommandLine {
    /// For messages and logs only: arguments are shown lossily and without quoting.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.program)?;
        for arg in &self.args {
            write!(f, " {}", arg.to_string_lossy())?;
        }
        Ok(())
    }
}

/// How a command ended and what it printed (bounded, lossily decoded).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CommandOutput {
    pub success: bool,
    /// `None` when the program was killed by a signal.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CommandOutput {
    /// A successful run with no output (for fakes).
    pub fn ok() -> CommandOutput {
        CommandOutput {
            success: true,
            code: Some(0),
            ..CommandOutput::default()
        }
    }

    /// A failed run with exit code 1 and `stderr` (for fakes).
    pub fn failed(stderr: impl Into<String>) -> CommandOutput {
        CommandOutput {
            success: false,
            code: Some(1),
            stdout: String::new(),
            stderr: stderr.into(),
        }
    }
}

/// Runs fixed programs. Implemented by [`SystemRunner`] in production and by fakes in tests.
pub trait CommandRunner: Send + Sync + fmt::Debug {
    /// Whether `program` is installed, so a handler can refuse a configuration it has no tool
    /// to check or apply.
    fn is_installed(&self, program: &str) -> bool;

    /// Runs `command` to completion. `Err` means it could not be run (not installed, could not
    /// be spawned, timed out); a program that ran and failed is `Ok` with `success == false`.
    fn run(&self, command: &CommandLine) -> io::Result<CommandOutput>;
}

/// Where [`SystemRunner`] looks for bare program names. The agent's own `PATH` is not used:
/// it is whatever started the agent, and a program found through it is not a fixed program.
pub const DEFAULT_SEARCH_PATH: &[&str] = &[
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
];

/// Captured output beyond this is read and discarded.
const MAX_OUTPUT: u64 = 64 * 1024;

/// How long the output pipes may stay open after the program exited: a program that
/// daemonises (`haproxy -D`) can leave them open in its child.
const OUTPUT_GRACE: Duration = Duration::from_millis(500);

/// Runs programs with `std::process::Command`: no shell, a cleared environment (only `PATH`
/// set to the search path and `LC_ALL=C`), stdin from `/dev/null`, and a timeout after which
/// the program is killed.
#[derive(Debug, Clone)]
pub struct SystemRunner {
    search_path: Vec<PathBuf>,
    timeout: Duration,
}

impl Default for SystemRunner {
    fn default() -> SystemRunner {
        SystemRunner {
            search_path: DEFAULT_SEARCH_PATH.iter().map(PathBuf::from).collect(),
            timeout: Duration::from_secs(60),
        }
    }
}

impl SystemRunner {
    pub fn new(search_path: Vec<PathBuf>, timeout: Duration) -> SystemRunner {
        SystemRunner {
            search_path,
            timeout,
        }
    }

    /// The executable a program name stands for: an absolute path as is, a bare name in the
    /// search path. Relative paths with a `/` are never run.
    fn resolve(&self, program: &str) -> Option<PathBuf> {
        let is_executable = |p: &Path| {
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        };
        if program.is_empty() {
            return None;
        }
        if program.starts_with('/') {
            let p = PathBuf::from(program);
            return is_executable(&p).then_some(p);
        }
        if program.contains('/') {
            return None;
        }
        self.search_path
            .iter()
            .map(|dir| dir.join(program))
            .find(|p| is_executable(p))
    }
}

impl CommandRunner for SystemRunner {
    fn is_installed(&self, program: &str) -> bool {
        self.resolve(program).is_some()
    }

    fn run(&self, command: &CommandLine) -> io::Result<CommandOutput> {
        let exe = self.resolve(&command.program).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} is not installed", command.program),
            )
        })?;
        let path = std::env::join_paths(&self.search_path)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let mut child = Command::new(&exe)
            .args(&command.args)
            .env_clear()
            .env("PATH", path)
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let stdout = child.stdout.take().map(read_bounded);
        let stderr = child.stderr.take().map(read_bounded);
        let status = match child.wait_timeout(self.timeout)? {
            Some(status) => status,
            None => {
                // Our own child, by its pid: nothing else is signalled.
                let _ = child.kill();
                let _ = child.wait();
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "{} did not finish within {:?}",
                        command.program, self.timeout
                    ),
                ));
            }
        };
        let collect = |rx: Option<mpsc::Receiver<Vec<u8>>>| {
            rx.and_then(|rx| rx.recv_timeout(OUTPUT_GRACE).ok())
                .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
                .unwrap_or_default()
        };
        Ok(CommandOutput {
            success: status.success(),
            code: status.code(),
            stdout: collect(stdout),
            stderr: collect(stderr),
        })
    }
}

/// Reads a pipe on its own thread (so a full stdout pipe cannot block a program writing
/// stderr), keeping the first [`MAX_OUTPUT`] bytes and discarding the rest.
fn read_bounded(pipe: impl Read + Send + 'static) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut pipe = pipe;
        let mut kept = Vec::new();
        let _ = (&mut pipe).take(MAX_OUTPUT).read_to_end(&mut kept);
        let _ = io::copy(&mut pipe, &mut io::sink());
        let _ = tx.send(kept);
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_a_fixed_program_without_a_shell() {
        let runner = SystemRunner::default();
        assert!(runner.is_installed("true"));
        assert!(!runner.is_installed("definitely-not-installed-vnf"));
        assert!(!runner.is_installed("./true"));
        assert!(!runner.is_installed(""));
        // The argument reaches the program verbatim: no shell expands `$(...)` or `;`.
        let out = runner
            .run(&CommandLine::new("echo").arg("a; echo $(id) `id`"))
            .unwrap();
        assert!(out.success);
        assert_eq!(out.stdout, "a; echo $(id) `id`\n");
        let out = runner.run(&CommandLine::new("false")).unwrap();
        assert!(!out.success);
        assert_eq!(out.code, Some(1));
        let err = runner
            .run(&CommandLine::new("definitely-not-installed-vnf"))
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound);
    }

    #[test]
    fn a_hung_program_is_killed_after_the_timeout() {
        let runner = SystemRunner::new(
            DEFAULT_SEARCH_PATH.iter().map(PathBuf::from).collect(),
            Duration::from_millis(100),
        );
        let err = runner
            .run(&CommandLine::new("sleep").arg("30"))
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[test]
    fn the_environment_is_cleared() {
        let out = SystemRunner::default()
            .run(&CommandLine::new("env"))
            .unwrap();
        let mut vars: Vec<&str> = out.stdout.lines().collect();
        vars.sort();
        assert_eq!(vars.len(), 2, "{vars:?}");
        assert!(vars[0].starts_with("LC_ALL=C"));
        assert!(vars[1].starts_with("PATH=/usr/local/sbin:"));
    }
}
