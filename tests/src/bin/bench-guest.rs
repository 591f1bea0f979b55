//! `bench-guest`: the guest side of the configuration-latency benchmark
//! (`tests/benches/config_latency.rs`). It runs inside a TCG guest (statically linked) and
//! takes turns on one virtio-serial port between a trivial echo (the baseline) and the real
//! `vnf-agent`, as the host says over a second port, so that both measurements go through the
//! same port of the same guest in the same run.
//!
//! ```text
//! bench-guest CHANNEL CONTROL AGENT [ARGS...]
//! ```
//!
//! Commands arrive as lines on the port named CONTROL; each gets one line back:
//!
//! - `echo`: opens CHANNEL and answers `echo open`; then writes back every byte the host sends
//!   on CHANNEL, as it arrives, until the host hangs up CHANNEL; closes it and answers
//!   `echo done <reads> <bytes>`.
//! - `agent`: starts `AGENT ARGS...` (the agent opens CHANNEL itself) and answers
//!   `agent started <pid>`.
//! - `stop`: SIGTERM to the agent, waits for it to exit (SIGKILL after 20 s) and answers
//!   `agent stopped <status>`.
//!
//! When the host hangs up CONTROL the agent is stopped and the program exits (the guest then
//! powers off). A virtio-serial read returns 0 while no host process holds the other end, so
//! before the host first connects a port is polled every 20 ms; after that reads block.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::process::{Child, Command, ExitCode, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use rustix::process::{kill_process, Pid, Signal};

const HOST_POLL: Duration = Duration::from_millis(20);
const AGENT_GRACE: Duration = Duration::from_secs(20);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let [_, channel, control, agent @ ..] = args.as_slice() else {
        eprintln!("usage: bench-guest CHANNEL CONTROL AGENT [ARGS...]");
        return ExitCode::from(2);
    };
    if agent.is_empty() {
        eprintln!("usage: bench-guest CHANNEL CONTROL AGENT [ARGS...]");
        return ExitCode::from(2);
    }
    match run(channel, control, agent) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            println!("bench-guest: {e}");
            ExitCode::from(1)
        }
    }
}

fn open_port(name: &str) -> Result<File, String> {
    let path = format!("/dev/virtio-ports/{name}");
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| format!("{path}: {e}"))
}

/// Reads what the host sent; `Ok(0)` means it hung up. Before `present`, a read of 0 means the
/// host has not connected yet: wait for it.
fn read_port(port: &mut File, buf: &mut [u8], present: &mut bool) -> io::Result<usize> {
    loop {
        let n = port.read(buf)?;
        if n > 0 {
            *present = true;
            return Ok(n);
        }
        if *present {
            return Ok(0);
        }
        sleep(HOST_POLL);
    }
}

/// The command lines of the control port.
struct Control {
    port: File,
    present: bool,
    pending: Vec<u8>,
}

impl Control {
    /// The next command, or `None` when the host hung up.
    fn next(&mut self) -> Result<Option<String>, String> {
        let mut chunk = [0u8; 256];
        loop {
            if let Some(end) = self.pending.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=end).collect();
                return Ok(Some(String::from_utf8_lossy(&line).trim().to_owned()));
            }
            let n = read_port(&mut self.port, &mut chunk, &mut self.present)
                .map_err(|e| format!("reading the control port: {e}"))?;
            if n == 0 {
                return Ok(None);
            }
            self.pending.extend_from_slice(&chunk[..n]);
        }
    }

    fn answer(&mut self, line: &str) -> Result<(), String> {
        self.port
            .write_all(format!("{line}\n").as_bytes())
            .map_err(|e| format!("answering on the control port: {e}"))
    }
}

fn run(channel: &str, control_name: &str, agent: &[String]) -> Result<(), String> {
    let mut control = Control {
        port: open_port(control_name)?,
        present: false,
        pending: Vec::new(),
    };
    println!("bench-guest: waiting for commands on {control_name}, channel {channel}");
    let mut child: Option<Child> = None;
    while let Some(command) = control.next()? {
        let answer = match command.as_str() {
            "echo" if child.is_some() => "error: the agent holds the channel".to_owned(),
            "echo" => {
                let mut port = open_port(channel)?;
                control.answer("echo open")?;
                let (reads, bytes) = echo(&mut port)?;
                format!("echo done {reads} {bytes}")
            }
            "agent" if child.is_some() => "error: the agent runs already".to_owned(),
            "agent" => {
                let c = Command::new(&agent[0])
                    .args(&agent[1..])
                    .stdin(Stdio::null())
                    .spawn()
                    .map_err(|e| format!("starting {}: {e}", agent[0]))?;
                let pid = c.id();
                child = Some(c);
                format!("agent started {pid}")
            }
            "stop" => match child.take() {
                Some(c) => format!("agent stopped {}", stop(c)?),
                None => "error: no agent runs".to_owned(),
            },
            other => format!("error: unknown command {other:?}"),
        };
        control.answer(&answer)?;
    }
    if let Some(c) = child.take() {
        stop(c)?;
    }
    println!("bench-guest: the host hung up the control port");
    Ok(())
}

/// Writes back what arrives until the host hangs up; returns (reads, bytes).
fn echo(port: &mut File) -> Result<(u64, u64), String> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut present = false;
    let (mut reads, mut bytes) = (0u64, 0u64);
    loop {
        let n = read_port(port, &mut buf, &mut present)
            .map_err(|e| format!("reading the channel: {e}"))?;
        if n == 0 {
            return Ok((reads, bytes));
        }
        port.write_all(&buf[..n])
            .map_err(|e| format!("writing the channel: {e}"))?;
        reads += 1;
        bytes += n as u64;
    }
}

/// SIGTERM, then SIGKILL after [`AGENT_GRACE`]; returns how it exited.
fn stop(mut child: Child) -> Result<String, String> {
    if let Some(pid) = Pid::from_raw(child.id() as i32) {
        let _ = kill_process(pid, Signal::TERM);
    }
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(status.to_string()),
            Ok(None) if start.elapsed() < AGENT_GRACE => sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let status = child
                    .wait()
                    .map_err(|e| format!("waiting for the agent: {e}"))?;
                return Ok(format!("{status} (killed after {AGENT_GRACE:?})"));
            }
            Err(e) => return Err(format!("waiting for the agent: {e}")),
        }
    }
}
