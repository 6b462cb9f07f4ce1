//! Moving bytes between a client's socket and a sans-IO protocol core:
//! the read and write steps that the POP3 and LMTP drivers share.
//!
//! A driver's loop is the same for both protocols: drain the core's
//! events, write what it answered with [`write_out`] once no complete
//! command is waiting, then [`wait_for_input`] under the deadline the
//! state allows. What differs (POP3's login stage, LMTP's message budget)
//! stays in the drivers.

use std::future::Future;
use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Writes out and flushes what the core answered, then empties the
/// buffer (keeping its capacity for the next answers).
pub(crate) async fn write_out<T: AsyncWrite + Unpin>(
    stream: &mut T,
    out: &mut Vec<u8>,
) -> io::Result<()> {
    if out.is_empty() {
        return Ok(());
    }
    stream.write_all(out).await?;
    stream.flush().await?;
    out.clear();
    Ok(())
}

/// Writes a last line if the connection takes it at once; never waits on
/// a client that does not read.
pub(crate) async fn write_now<T: AsyncWrite + Unpin>(stream: &mut T, line: &[u8]) {
    let _ = tokio::time::timeout(std::time::Duration::ZERO, async {
        stream.write_all(line).await?;
        stream.flush().await
    })
    .await;
}

/// Reads once into `buf` and hands what came to the core; `Ok(0)` at the
/// end of the stream.
pub(crate) async fn read_into<T: AsyncRead + Unpin>(
    stream: &mut T,
    buf: &mut [u8],
    receive: impl FnOnce(&[u8]),
) -> io::Result<usize> {
    let n = stream.read(buf).await?;
    receive(&buf[..n]);
    Ok(n)
}

/// What waiting for the client's next bytes came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Input {
    /// Bytes came and went to the core.
    Received,
    /// The client closed the connection, or it failed.
    Closed,
    /// Nothing came before the deadline.
    TimedOut,
    /// The server is stopping.
    ShuttingDown,
    /// The connection lost its place to a newer one (POP3 before login).
    Evicted,
}

/// Waits for `read` (a read into the core) until `until`, shutdown or
/// `evicted`, whichever comes first.
pub(crate) async fn wait_for_input(
    read: impl Future<Output = io::Result<usize>>,
    until: Instant,
    shutdown: &CancellationToken,
    evicted: impl Future<Output = ()>,
) -> Input {
    tokio::select! {
        r = tokio::time::timeout_at(until, read) => match r {
            Err(_) => Input::TimedOut,
            Ok(Ok(0)) | Ok(Err(_)) => Input::Closed,
            Ok(Ok(_)) => Input::Received,
        },
        _ = shutdown.cancelled() => Input::ShuttingDown,
        _ = evicted => Input::Evicted,
    }
}
