//! A UNIX stream socket as the channel, for development and tests on a machine without a guest
//! (the C ABI test uses it). Not for production: a guest reaches its host through virtio-serial.
//!
//! It follows the virtio-serial contract so that the agent behaves the same: while no listener
//! is there, or after the peer closed, reads and writes return `Ok(0)` ("host absent"), and the
//! next call tries to connect again.

use std::io;
use std::path::PathBuf;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

use super::{BoxFuture, Connector, Transport, MAX_WRITE};

/// Connects to a UNIX stream socket (`unix:<path>` port specification).
#[derive(Debug, Clone)]
pub struct UnixConnector {
    path: PathBuf,
}

impl UnixConnector {
    pub fn new(path: impl Into<PathBuf>) -> UnixConnector {
        UnixConnector { path: path.into() }
    }
}

impl Connector for UnixConnector {
    fn connect(&mut self) -> BoxFuture<'_, io::Result<Box<dyn Transport>>> {
        let path = self.path.clone();
        Box::pin(
            async move { Ok(Box::new(UnixChannel { path, stream: None }) as Box<dyn Transport>) },
        )
    }

    fn describe(&self) -> String {
        format!("unix:{}", self.path.display())
    }
}

#[derive(Debug)]
struct UnixChannel {
    path: PathBuf,
    stream: Option<UnixStream>,
}

impl UnixChannel {
    /// The connected stream, or `None` while the host (listener) is absent.
    async fn stream(&mut self) -> io::Result<Option<&mut UnixStream>> {
        if self.stream.is_none() {
            match UnixStream::connect(&self.path).await {
                Ok(s) => self.stream = Some(s),
                Err(e) if absent(&e) => return Ok(None),
                Err(e) => return Err(e),
            }
        }
        Ok(self.stream.as_mut())
    }
}

/// Errors that mean "nobody is listening (any more)".
fn absent(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NotFound
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
    )
}

impl Transport for UnixChannel {
    fn read<'a>(&'a mut self, buf: &'a mut [u8]) -> BoxFuture<'a, io::Result<usize>> {
        Box::pin(async move {
            let Some(stream) = self.stream().await? else {
                return Ok(0);
            };
            match stream.read(buf).await {
                Ok(0) => {
                    self.stream = None;
                    Ok(0)
                }
                Ok(n) => Ok(n),
                Err(e) if absent(&e) => {
                    self.stream = None;
                    Ok(0)
                }
                Err(e) => Err(e),
            }
        })
    }

    fn write<'a>(&'a mut self, buf: &'a [u8]) -> BoxFuture<'a, io::Result<usize>> {
        Box::pin(async move {
            let Some(stream) = self.stream().await? else {
                return Ok(0);
            };
            match stream.write(&buf[..buf.len().min(MAX_WRITE)]).await {
                Ok(n) => Ok(n),
                Err(e) if absent(&e) => {
                    self.stream = None;
                    Ok(0)
                }
                Err(e) => Err(e),
            }
        })
    }
}
