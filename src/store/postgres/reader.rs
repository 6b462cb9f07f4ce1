//! RETR and TOP from PostgreSQL without holding a message in memory: a
//! task fetches the body in chunks (`substring` on uncompressed TOAST
//! reads only the pages it needs) and hands them to an [`AsyncRead`]
//! through a channel of one chunk, so a slow client slows the fetching
//! instead of filling memory. The task takes a pooled connection per chunk
//! and never holds one while the client reads.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::mpsc;

use crate::pg::pool::Pool;

/// Octets fetched per query.
pub const CHUNK_OCTETS: i32 = 256 * 1024;

/// The body of one message, as it arrives from the database.
#[derive(Debug)]
pub struct ChunkReader {
    rx: mpsc::Receiver<io::Result<Vec<u8>>>,
    chunk: Vec<u8>,
    pos: usize,
}

impl ChunkReader {
    /// Starts fetching message `id`, which is `length` octets long.
    pub(crate) fn spawn(pool: Arc<Pool>, id: i64, length: i32) -> ChunkReader {
        let (tx, rx) = mpsc::channel(1);
        tokio::spawn(async move {
            // substring() counts from 1.
            let mut from: i32 = 1;
            while from <= length {
                let chunk = fetch(&pool, id, from).await;
                let failed = chunk.is_err();
                if let Ok(bytes) = &chunk {
                    from = from.saturating_add(CHUNK_OCTETS);
                    if bytes.is_empty() {
                        // Shorter than when it was measured: only an
                        // administrator can do that while we hold the lock.
                        let _ = tx
                            .send(Err(io::Error::other("message shrank while being read")))
                            .await;
                        return;
                    }
                }
                if tx.send(chunk).await.is_err() || failed {
                    return;
                }
            }
        });
        ChunkReader {
            rx,
            chunk: Vec::new(),
            pos: 0,
        }
    }
}

async fn fetch(pool: &Arc<Pool>, id: i64, from: i32) -> io::Result<Vec<u8>> {
    let client = pool.get().await.map_err(io::Error::other)?;
    let row = client
        .query_opt(
            "SELECT substring(body FROM $2 FOR $3) FROM messages WHERE id = $1",
            &[&id, &from, &CHUNK_OCTETS],
        )
        .await
        .map_err(io::Error::other)?;
    match row {
        Some(row) => Ok(row.get(0)),
        None => Err(io::Error::new(
            io::ErrorKind::NotFound,
            "message removed while being read",
        )),
    }
}

/// Streamed in chunks from the database, never whole in memory.
impl crate::store::MessageBody for ChunkReader {}

impl AsyncRead for ChunkReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if self.pos < self.chunk.len() {
                let n = buf.remaining().min(self.chunk.len() - self.pos);
                let pos = self.pos;
                buf.put_slice(&self.chunk[pos..pos + n]);
                self.pos += n;
                return Poll::Ready(Ok(()));
            }
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(Ok(chunk))) => {
                    self.chunk = chunk;
                    self.pos = 0;
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(e)),
                // The task sent everything: end of message.
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}
