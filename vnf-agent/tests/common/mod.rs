//! The controller's end of a session over a UNIX socket (the agent's `unix:` port), shared by
//! the tests that run a real agent program.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::process::Child;
use std::time::Duration;

use bytes::BytesMut;
use relay_protocol::message::capability;
use relay_protocol::{
    Ack, AckOutcome, ConfigPush, Decoded, FrameDecoder, InstanceKey, Message, Pong, ServiceName,
    Session, Uuid, Welcome, RESYNC_MARKER,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::time::timeout;

pub const KEY_HEX: &str = "4242424242424242424242424242424242424242424242424242424242424242";
pub const INSTANCE: Uuid = Uuid::from_u128(0x6f1c_2d3e_4a5b_4c6d_8e7f_9a0b_1c2d_3e4f);
pub const CONFIG: Uuid = Uuid::from_u128(0x0123_4567_89ab_4cde_8f01_2345_6789_abcd);
pub const PATIENCE: Duration = Duration::from_secs(30);

/// Kills the C program if the test fails before it exits.
pub struct Program(pub Child);

impl Drop for Program {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub struct Controller {
    /// Services the Hello must announce.
    pub services: Vec<String>,
    stream: UnixStream,
    session: Session,
    decoder: FrameDecoder,
    rx: BytesMut,
}

impl Controller {
    pub async fn accept(listener: &UnixListener, program: &mut Program) -> Controller {
        let started = std::time::Instant::now();
        let mut stream = loop {
            // Look at the program now and then, so that one that died fails the test at once.
            if let Ok(accepted) = timeout(Duration::from_millis(200), listener.accept()).await {
                break accepted.unwrap().0;
            }
            if let Some(status) = program.0.try_wait().unwrap() {
                panic!("the C program exited ({status}) without connecting");
            }
            assert!(
                started.elapsed() < PATIENCE,
                "the C program did not connect"
            );
        };
        stream.write_all(&RESYNC_MARKER).await.unwrap();
        Controller {
            services: vec!["files".into()],
            stream,
            session: Session::controller(&InstanceKey::from_hex(KEY_HEX).unwrap()),
            decoder: FrameDecoder::new(),
            rx: BytesMut::new(),
        }
    }

    async fn write(&mut self, out: &[u8]) {
        for frame in out.chunks(relay_protocol::MAX_FRAME) {
            self.stream.write_all(frame).await.unwrap();
        }
    }

    /// The next message that is not a Hello (answered) or a Ping (answered); `None` at EOF.
    pub async fn recv(&mut self) -> Option<Message> {
        let mut epoch = 0x7e57;
        loop {
            while let Some(item) = self.decoder.decode(&mut self.rx) {
                let Decoded::Frame(frame) = item else {
                    continue;
                };
                match self.session.open(&frame) {
                    Ok(Some(Message::Hello(hello))) => {
                        let announced: Vec<&str> =
                            hello.services.iter().map(ServiceName::as_str).collect();
                        assert_eq!(announced, self.services);
                        epoch += 1;
                        let mut out = BytesMut::new();
                        let welcome = Welcome {
                            protocol: 1,
                            capabilities: hello.capabilities & capability::ALL,
                            session_epoch: epoch,
                            max_message_len: 16 << 20,
                            heartbeat_interval_ms: 0,
                        };
                        self.session.accept(&welcome, &mut out).unwrap();
                        self.write(&out).await;
                    }
                    Ok(Some(Message::Ping(p))) => {
                        let mut out = BytesMut::new();
                        let pong = Message::Pong(Pong { nonce: p.nonce });
                        self.session.send(&pong, &mut out).unwrap();
                        self.write(&out).await;
                    }
                    Ok(Some(msg)) => return Some(msg),
                    Ok(None) | Err(_) => {}
                }
            }
            let mut buf = [0u8; 4096];
            let n = timeout(PATIENCE, self.stream.read(&mut buf))
                .await
                .expect("the C program went silent")
                .unwrap();
            if n == 0 {
                return None;
            }
            self.rx.extend_from_slice(&buf[..n]);
        }
    }

    pub async fn push(&mut self, service: &str, version: u64, payload: &[u8]) -> Ack {
        let mut out = BytesMut::new();
        let push = Message::ConfigPush(ConfigPush {
            instance: INSTANCE,
            service: ServiceName::new(service).unwrap(),
            config_id: CONFIG,
            version,
            payload: payload.to_vec(),
        });
        self.session.send(&push, &mut out).unwrap();
        self.write(&out).await;
        match self.recv().await {
            Some(Message::Ack(ack)) => ack,
            other => panic!("expected an Ack, got {other:?}"),
        }
    }
}

pub fn rejected(ack: &Ack) -> &str {
    match &ack.outcome {
        AckOutcome::Rejected { reason } => reason,
        AckOutcome::Applied => panic!("{ack:?} was applied"),
    }
}
