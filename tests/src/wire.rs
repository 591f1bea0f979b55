//! A blocking controller end of the relay protocol over any byte stream, for tests that talk
//! to a real agent in a guest directly (no relay in between).

use std::io::{ErrorKind, Read, Write};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use relay_protocol::{
    message::capability, Decoded, FrameDecoder, Hello, InstanceKey, Message, Ping, Pong, Session,
    Welcome, RESYNC_MARKER,
};

use crate::{io_err, Error, Result};

/// The controller's end of one agent session.
#[derive(Debug)]
pub struct TestController<S> {
    stream: S,
    session: Session,
    decoder: FrameDecoder,
    buf: BytesMut,
    /// Frames the session rejected, with the reason: tests assert on them.
    pub rejected: Vec<relay_protocol::Error>,
    /// Bytes received and bytes the decoder skipped, for diagnostics.
    pub received: usize,
    pub discarded: usize,
    /// Hellos answered: sessions the agent started.
    pub hellos: usize,
    epoch: u64,
}

/// A byte stream with a read timeout.
pub trait Stream: Read + Write {
    fn set_timeout(&mut self, timeout: Option<Duration>) -> std::io::Result<()>;
}

impl Stream for std::os::unix::net::UnixStream {
    fn set_timeout(&mut self, timeout: Option<Duration>) -> std::io::Result<()> {
        self.set_read_timeout(timeout)
    }
}

impl<S: Stream> TestController<S> {
    /// Wraps a freshly opened stream and writes the resync marker, as a relay does after every
    /// open of a guest's channel.
    pub fn open(mut stream: S, key: &InstanceKey) -> Result<Self> {
        stream
            .write_all(&RESYNC_MARKER)
            .map_err(io_err("writing the resync marker"))?;
        Ok(TestController {
            stream,
            session: Session::controller(key),
            decoder: FrameDecoder::new(),
            buf: BytesMut::new(),
            rejected: Vec::new(),
            received: 0,
            discarded: 0,
            hellos: 0,
            epoch: 0x7e57_0000_0000_0001,
        })
    }

    /// Waits for the agent's Hello and answers it; returns the Hello.
    pub fn handshake(&mut self, timeout: Duration) -> Result<Hello> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Message::Hello(hello) = self.recv_until(deadline, "the agent's Hello", true)? {
                return Ok(hello);
            }
        }
    }

    /// Answers a Hello with a Welcome in a fresh epoch.
    fn accept(&mut self, hello: &Hello) -> Result<()> {
        self.epoch += 1;
        let welcome = Welcome {
            protocol: 1,
            capabilities: hello.capabilities & capability::ALL,
            session_epoch: self.epoch,
            max_message_len: 16 * 1024 * 1024 + 64 * 1024,
            heartbeat_interval_ms: 15_000,
        };
        let mut out = BytesMut::new();
        self.session.accept(&welcome, &mut out)?;
        self.hellos += 1;
        self.write(&out)
    }

    /// Seals and sends one message.
    pub fn send(&mut self, msg: &Message) -> Result<()> {
        let mut out = BytesMut::new();
        self.session.send(msg, &mut out)?;
        self.write(&out)
    }

    /// The next message from the agent.
    pub fn recv(&mut self, timeout: Duration) -> Result<Message> {
        self.recv_until(Instant::now() + timeout, "a message from the agent", false)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        // One frame per write: a virtio-serial port takes at most 32 KiB at a time.
        for frame in bytes.chunks(relay_protocol::MAX_FRAME) {
            self.stream
                .write_all(frame)
                .map_err(io_err("writing to the agent"))?;
        }
        Ok(())
    }

    /// The next message other than heartbeats; a Hello is answered and returned only when
    /// `hello` is set, otherwise answered and skipped (the agent started a new session, as it
    /// does on every resync marker).
    fn recv_until(&mut self, deadline: Instant, what: &str, hello: bool) -> Result<Message> {
        let started = Instant::now();
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            while let Some(item) = self.decoder.decode(&mut self.buf) {
                match item {
                    Decoded::Frame(f) => match self.session.open(&f) {
                        // Heartbeats are answered here, as the controller does.
                        Ok(Some(Message::Ping(Ping { nonce }))) => {
                            self.send(&Message::Pong(Pong { nonce }))?
                        }
                        Ok(Some(Message::Hello(h))) => {
                            self.accept(&h)?;
                            if hello {
                                return Ok(Message::Hello(h));
                            }
                        }
                        Ok(Some(m)) => return Ok(m),
                        Ok(None) => {}
                        Err(e) => self.rejected.push(e),
                    },
                    Decoded::Discarded { bytes, .. } => self.discarded += bytes,
                    Decoded::Resync => {}
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::NoMessage {
                    what: what.to_owned(),
                    waited: started.elapsed(),
                    rejected: format!(
                        "{:?} ({} bytes received, {} skipped)",
                        self.rejected, self.received, self.discarded
                    ),
                });
            }
            self.stream
                .set_timeout(Some(left))
                .map_err(io_err("setting a read timeout"))?;
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(Error::StreamClosed(what.to_owned())),
                Ok(n) => {
                    self.received += n;
                    self.buf.extend_from_slice(&chunk[..n]);
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(io_err(format!("reading while waiting for {what}"))(e)),
            }
        }
    }
}
