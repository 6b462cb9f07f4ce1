//! Reading a PROXY protocol header (v1 or v2) from a trusted load
//! balancer, without consuming a single byte past it: the header is
//! peeked until complete and only then read, so a TLS handshake or a
//! pipelined command behind it stays in the socket.

use std::io;
use std::time::Duration;

pub use mailbag_proto::proxy::Header;
use mailbag_proto::proxy::{self, Parsed};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// How long a balancer may take to send its header.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// A header arriving in pieces is looked at again after this pause.
const REPEEK_PAUSE: Duration = Duration::from_millis(5);

/// Reads the PROXY header at the start of `stream`.
pub async fn read_header(stream: &mut TcpStream) -> io::Result<Header> {
    tokio::time::timeout(HEADER_TIMEOUT, async {
        let mut buf = vec![0u8; proxy::V2_MAX_OCTETS];
        loop {
            let n = stream.peek(&mut buf).await?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed before the PROXY header",
                ));
            }
            match proxy::parse(&buf[..n]) {
                Parsed::Done { header, octets } => {
                    stream.read_exact(&mut buf[..octets]).await?;
                    return Ok(header);
                }
                Parsed::Invalid(why) => {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, why));
                }
                // peek() returns at once while any byte is waiting, so
                // wait a moment for the rest instead of spinning.
                Parsed::Incomplete => tokio::time::sleep(REPEEK_PAUSE).await,
            }
        }
    })
    .await
    .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no PROXY header in time"))?
}
