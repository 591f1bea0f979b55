//! Real UARTs (`/dev/ttyS*`) through `tokio-serial`, for firmware without a virtio console
//! driver.
//!
//! The line is put in raw mode, 8N1, no flow control. A UART has no notion of a peer: it never
//! reports the host absent, bytes written while nobody listens are lost, and a host that comes
//! and goes shows up only as silence. Liveness therefore comes from the agent's handshake and
//! heartbeat timeouts, and the host's resync marker starts a fresh session when it returns.

use std::io;
use std::path::PathBuf;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_serial::{DataBits, FlowControl, Parity, SerialPortBuilderExt, SerialStream, StopBits};

use super::{BoxFuture, Connector, Transport, MAX_WRITE};

/// Default line speed: what QEMU's and most firmware's consoles use.
pub const DEFAULT_BAUD: u32 = 115_200;

/// Opens a UART device.
#[derive(Debug, Clone)]
pub struct UartConnector {
    device: PathBuf,
    baud: u32,
}

impl UartConnector {
    pub fn new(device: impl Into<PathBuf>, baud: u32) -> UartConnector {
        UartConnector {
            device: device.into(),
            baud,
        }
    }
}

impl Connector for UartConnector {
    fn connect(&mut self) -> BoxFuture<'_, io::Result<Box<dyn Transport>>> {
        Box::pin(async move {
            let path = self.device.to_string_lossy().into_owned();
            // serialport's open also takes the line exclusively (TIOCEXCL), so a second agent
            // cannot interleave frames with ours.
            let stream = tokio_serial::new(&path, self.baud)
                .data_bits(DataBits::Eight)
                .parity(Parity::None)
                .stop_bits(StopBits::One)
                .flow_control(FlowControl::None)
                .open_native_async()
                .map_err(|e| {
                    let kind = match e.kind {
                        tokio_serial::ErrorKind::NoDevice => io::ErrorKind::NotFound,
                        tokio_serial::ErrorKind::Io(kind) => kind,
                        _ => io::ErrorKind::Other,
                    };
                    io::Error::new(kind, format!("opening UART {path}: {e}"))
                })?;
            Ok(Box::new(Uart { stream }) as Box<dyn Transport>)
        })
    }

    fn describe(&self) -> String {
        format!("uart:{}@{}", self.device.display(), self.baud)
    }
}

#[derive(Debug)]
struct Uart {
    stream: SerialStream,
}

impl Transport for Uart {
    fn read<'a>(&'a mut self, buf: &'a mut [u8]) -> BoxFuture<'a, io::Result<usize>> {
        // A 0-byte read (possible on a tty) is handed on as "absent": the agent backs off
        // instead of spinning on it.
        Box::pin(async move { self.stream.read(buf).await })
    }

    fn write<'a>(&'a mut self, buf: &'a [u8]) -> BoxFuture<'a, io::Result<usize>> {
        Box::pin(async move { self.stream.write(&buf[..buf.len().min(MAX_WRITE)]).await })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use tokio_serial::SerialPort;

    use super::*;

    /// A pseudo-terminal stands in for the UART: the agent's side opens the slave by path
    /// through `tokio-serial`, the test writes and reads on the master.
    #[tokio::test]
    async fn a_pseudo_terminal_carries_bytes_both_ways() {
        let (mut master, slave) = SerialStream::pair().unwrap();
        let path = slave.name().unwrap();
        // pair() opened the slave exclusively; the connector opens it again by path.
        drop(slave);
        let mut connector = UartConnector::new(&path, DEFAULT_BAUD);
        assert!(connector.describe().starts_with("uart:/dev/pts/"));
        let mut uart = connector.connect().await.unwrap();

        // Raw mode: bytes that a line discipline would eat or translate pass unchanged.
        let bytes = [0x00, 0x03, b'\n', b'\r', 0x7f, 0xff, 0x11, 0x13];
        master.write_all(&bytes).await.unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 64];
        while got.len() < bytes.len() {
            let n = uart.read(&mut buf).await.unwrap();
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, bytes);

        assert_eq!(uart.write(b"frame").await.unwrap(), 5);
        let mut back = [0u8; 5];
        master.read_exact(&mut back).await.unwrap();
        assert_eq!(&back, b"frame");

        let missing = UartConnector::new("/dev/ttyNOPE9", DEFAULT_BAUD)
            .connect()
            .await
            .unwrap_err();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound, "{missing}");
    }
}
