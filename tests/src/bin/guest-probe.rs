//! `guest-probe`: a hostile guest program for the end-to-end failure tests
//! (`tests/tests/e2e_failures.rs`). It runs inside a VNF guest of [`e2e_tests::stack`]
//! (statically linked) on the relay channel, speaks the wire protocol with `relay-protocol`
//! directly, and records what it did and got as JSON lines in `SHARE/probe.log` (and on the
//! console), which the host reads back.
//!
//! ```text
//! guest-probe attack CHANNEL SHARE     garbage, forged and replayed frames, then exit 0
//! guest-probe isolation CHANNEL SHARE  ask for and answer for another instance
//! ```
//!
//! Inputs in SHARE: `key` (this instance's key, hex), `foreign-key` (another instance's),
//! and for `isolation` `foreign.json` (`{"instance", "service", "config_id", "version"}` of
//! the other instance's configuration).
//!
//! `attack` writes rounds of 4 KiB of random bytes, a Hello sealed with a random key and a
//! Hello sealed with the other instance's key, a round every 100 ms, until `SHARE/stop`
//! exists; then it opens a real session with its own key, sends a ConfigRequest and writes
//! that frame a second time (a replay). The relay must drop the garbage and the replay and
//! the controller must refuse every forged Hello; the agent the guest starts afterwards must
//! get its configuration.
//!
//! `isolation` writes a Hello sealed with the other instance's key (an impostor), then opens a
//! real session with its own key, sends a ConfigRequest listing the other instance's
//! configuration as applied, answers the first push with an Ack naming the other instance, and
//! stops at the controller's Error. Every frame that arrives is tried with both keys: the
//! impostor's session must never open one, and the own session must only see its own
//! instance's configuration.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use relay_protocol::{
    Ack, AckOutcome, AppliedConfig, ConfigRequest, Decoded, FrameDecoder, Hello, InstanceKey,
    Message, Pong, ServiceName, Session, Uuid, MAX_FRAME,
};
use serde_json::{json, Value};

/// Longest the probe waits for the controller's answers.
const TIMEOUT: Duration = Duration::from_secs(180);

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (mode, channel, share) = match args.as_slice() {
        [_, mode, channel, share] => (mode.as_str(), channel.as_str(), PathBuf::from(share)),
        _ => {
            eprintln!("usage: guest-probe attack|isolation CHANNEL SHARE");
            return ExitCode::from(2);
        }
    };
    let mut probe = match Probe::open(channel, &share) {
        Ok(p) => p,
        Err(e) => {
            println!("probe: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    let result = match mode {
        "attack" => probe.attack(),
        "isolation" => probe.isolation(),
        other => Err(format!("unknown mode {other:?}")),
    };
    match result {
        Ok(()) => {
            probe.record(json!({"event": "done"}));
            ExitCode::SUCCESS
        }
        Err(e) => {
            probe.record(json!({"event": "failed", "error": e}));
            ExitCode::from(1)
        }
    }
}

struct Probe {
    port: File,
    incoming: mpsc::Receiver<Vec<u8>>,
    buf: BytesMut,
    decoder: FrameDecoder,
    log: File,
    share: PathBuf,
}

fn read_key(path: &Path) -> Result<InstanceKey, String> {
    let text = fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    InstanceKey::from_hex(text.trim()).map_err(|e| format!("{}: {e}", path.display()))
}

fn random_bytes(n: usize) -> Result<Vec<u8>, String> {
    let mut bytes = vec![0u8; n];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|e| format!("/dev/urandom: {e}"))?;
    Ok(bytes)
}

fn nonce() -> Result<u64, String> {
    let b = random_bytes(8)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(&b);
    Ok(u64::from_le_bytes(a))
}

fn hello() -> Result<Hello, String> {
    Ok(Hello {
        protocol_min: 1,
        protocol_max: 1,
        capabilities: 0,
        agent_name: "guest-probe".into(),
        agent_version: "0".into(),
        services: vec![service("files")?],
    })
}

fn service(name: &str) -> Result<ServiceName, String> {
    ServiceName::new(name).map_err(|e| format!("service {name}: {e}"))
}

impl Probe {
    fn open(channel: &str, share: &Path) -> Result<Probe, String> {
        let path = format!("/dev/virtio-ports/{channel}");
        let port = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| format!("{path}: {e}"))?;
        let mut reader = port.try_clone().map_err(|e| format!("{path}: {e}"))?;
        let (tx, incoming) = mpsc::channel();
        // Reads block; EOF means the host end is absent for now.
        std::thread::spawn(move || {
            let mut chunk = vec![0u8; 64 * 1024];
            loop {
                match reader.read(&mut chunk) {
                    Ok(0) | Err(_) => std::thread::sleep(Duration::from_millis(100)),
                    Ok(n) => {
                        if tx.send(chunk[..n].to_vec()).is_err() {
                            return;
                        }
                    }
                }
            }
        });
        let log_path = share.join("probe.log");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| format!("{}: {e}", log_path.display()))?;
        Ok(Probe {
            port,
            incoming,
            buf: BytesMut::new(),
            decoder: FrameDecoder::new(),
            log,
            share: share.to_owned(),
        })
    }

    fn record(&mut self, event: Value) {
        println!("probe: {event}");
        let _ = writeln!(self.log, "{event}");
        let _ = self.log.flush();
    }

    /// Writes `bytes` a frame's worth at a time (a virtio-serial write takes at most 32 KiB);
    /// blocks while the host end is absent.
    fn write(&mut self, bytes: &[u8]) -> Result<(), String> {
        for chunk in bytes.chunks(MAX_FRAME) {
            self.port
                .write_all(chunk)
                .map_err(|e| format!("writing to the port: {e}"))?;
        }
        Ok(())
    }

    /// The next frame from the host, or `None` at `deadline`.
    fn next_frame(&mut self, deadline: Instant) -> Option<relay_protocol::RawFrame> {
        loop {
            while let Some(item) = self.decoder.decode(&mut self.buf) {
                if let Decoded::Frame(f) = item {
                    return Some(f);
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.incoming.recv_timeout(left) {
                Ok(bytes) => self.buf.extend_from_slice(&bytes),
                Err(_) => return None,
            }
        }
    }

    /// Opens a session with `key`: writes its Hello and waits for the Welcome.
    fn handshake(&mut self, key: &InstanceKey) -> Result<Session, String> {
        let (mut session, _) = self.send_hello(key)?;
        let deadline = Instant::now() + TIMEOUT;
        while let Some(frame) = self.next_frame(deadline) {
            if let Ok(Some(Message::Welcome(w))) = session.open(&frame) {
                self.record(json!({"event": "welcome", "epoch": w.session_epoch}));
                return Ok(session);
            }
        }
        Err("no Welcome".into())
    }

    fn send(&mut self, session: &mut Session, msg: &Message) -> Result<BytesMut, String> {
        let mut out = BytesMut::new();
        session
            .send(msg, &mut out)
            .map_err(|e| format!("sealing {:?}: {e}", msg.kind()))?;
        self.write(&out)?;
        Ok(out)
    }

    /// Begins a guest session with `key` and writes its Hello; returns the session and the
    /// Hello's length.
    fn send_hello(&mut self, key: &InstanceKey) -> Result<(Session, usize), String> {
        let mut session = Session::guest(key);
        let mut out = BytesMut::new();
        session
            .begin(nonce()?, &hello()?, &mut out)
            .map_err(|e| format!("sealing a Hello: {e}"))?;
        self.write(&out)?;
        Ok((session, out.len()))
    }

    fn forged_hello(&mut self, key: &InstanceKey, what: &str, quiet: bool) -> Result<(), String> {
        let (_, bytes) = self.send_hello(key)?;
        if !quiet {
            self.record(json!({"event": "wrote", "what": what, "bytes": bytes}));
        }
        Ok(())
    }

    fn attack(&mut self) -> Result<(), String> {
        let own = read_key(&self.share.join("key"))?;
        let foreign = read_key(&self.share.join("foreign-key"))?;
        // Rounds until the host says stop, so that it can do things while the attack lasts.
        let stop = self.share.join("stop");
        let mut round = 0u32;
        loop {
            round += 1;
            let garbage = random_bytes(4096)?;
            self.write(&garbage)?;
            let random = InstanceKey::from_bytes(&random_bytes(relay_protocol::KEY_LEN)?)
                .map_err(|e| e.to_string())?;
            let quiet = round > 1;
            if !quiet {
                self.record(json!({"event": "wrote", "what": "garbage", "bytes": garbage.len()}));
            }
            self.forged_hello(&random, "hello-wrong-key", quiet)?;
            self.forged_hello(&foreign, "hello-foreign-key", quiet)?;
            if round == 1 {
                self.record(json!({"event": "attacking"}));
            }
            if stop.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.record(json!({"event": "rounds", "rounds": round}));
        let mut session = self.handshake(&own)?;
        let request = Message::ConfigRequest(ConfigRequest { applied: vec![] });
        let frame = self.send(&mut session, &request)?;
        self.write(&frame)?;
        self.record(json!({"event": "wrote", "what": "replay", "bytes": frame.len()}));
        Ok(())
    }

    fn isolation(&mut self) -> Result<(), String> {
        let own = read_key(&self.share.join("key"))?;
        let foreign_key = read_key(&self.share.join("foreign-key"))?;
        let path = self.share.join("foreign.json");
        let foreign: Value = fs::read_to_string(&path)
            .map_err(|e| e.to_string())
            .and_then(|t| serde_json::from_str(&t).map_err(|e| e.to_string()))
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let field = |k: &str| {
            foreign
                .get(k)
                .and_then(Value::as_str)
                .ok_or_else(|| format!("foreign.json has no {k}"))
        };
        let f_instance = Uuid::parse_str(field("instance")?).map_err(|e| e.to_string())?;
        let f_service = service(field("service")?)?;
        let f_config = Uuid::parse_str(field("config_id")?).map_err(|e| e.to_string())?;
        let f_version = foreign
            .get("version")
            .and_then(Value::as_u64)
            .ok_or("foreign.json has no version")?;

        // The impostor: the other instance's key on this instance's channel.
        let (mut impostor, _) = self.send_hello(&foreign_key)?;
        self.record(json!({"event": "wrote", "what": "impostor-hello"}));

        let (mut session, _) = self.send_hello(&own)?;
        let deadline = Instant::now() + TIMEOUT;
        let mut acked = false;
        while let Some(frame) = self.next_frame(deadline) {
            let msg = match session.open(&frame) {
                Ok(Some(m)) => m,
                Ok(None) => continue,
                Err(own_err) => {
                    match impostor.open(&frame) {
                        Ok(Some(m)) => self.record(
                            json!({"event": "impostor-received", "kind": format!("{:?}", m.kind())}),
                        ),
                        _ => self.record(json!({"event": "unopened", "error": own_err.to_string()})),
                    }
                    continue;
                }
            };
            match msg {
                Message::Welcome(w) => {
                    self.record(json!({"event": "welcome", "epoch": w.session_epoch}));
                    let claim = Message::ConfigRequest(ConfigRequest {
                        applied: vec![AppliedConfig {
                            service: f_service.clone(),
                            config_id: f_config,
                            version: f_version,
                        }],
                    });
                    self.send(&mut session, &claim)?;
                    self.record(
                        json!({"event": "wrote", "what": "config-request-claiming-foreign"}),
                    );
                }
                Message::ConfigPush(p) => {
                    self.record(json!({
                        "event": "push",
                        "instance": p.instance.to_string(),
                        "service": p.service.as_str(),
                        "config_id": p.config_id.to_string(),
                        "version": p.version,
                        "payload": String::from_utf8_lossy(&p.payload),
                    }));
                    if !acked {
                        acked = true;
                        let forged = Message::Ack(Ack {
                            instance: f_instance,
                            service: f_service.clone(),
                            config_id: f_config,
                            version: f_version,
                            outcome: AckOutcome::Applied,
                        });
                        self.send(&mut session, &forged)?;
                        self.record(json!({"event": "wrote", "what": "ack-for-foreign"}));
                    }
                }
                Message::Ping(p) => {
                    self.send(&mut session, &Message::Pong(Pong { nonce: p.nonce }))?;
                }
                Message::Error(e) => {
                    self.record(json!({"event": "error", "code": e.code.0, "message": e.message}));
                    if acked {
                        return Ok(());
                    }
                }
                other => {
                    self.record(json!({"event": "other", "kind": format!("{:?}", other.kind())}))
                }
            }
        }
        Err("timed out before the controller refused the forged Ack".into())
    }
}
