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

use tokio_postgres::types::Type;

use crate::pg::pool::Pool;
use crate::pg::PgError;

/// Octets fetched per query.
pub const CHUNK_OCTETS: i32 = 256 * 1024;

/// The body of one message, as it arrives from the database.
#[derive(Debug)]
pub struct ChunkReader {
    /// The chunks after the first, while a task fetches them; `None` when
    /// the first chunk was the whole message.
    rx: Option<mpsc::Receiver<io::Result<Vec<u8>>>>,
    chunk: Vec<u8>,
    pos: usize,
}

impl ChunkReader {
    /// Starts reading message `id`: its length and first chunk come in
    /// one round trip, so a message of up to [`CHUNK_OCTETS`] (most mail)
    /// costs one query and no task. `None` when the message is gone.
    pub(crate) async fn start(pool: Arc<Pool>, id: i64) -> Result<Option<ChunkReader>, PgError> {
        let client = pool.get().await?;
        let row = client
            .query_typed_opt(
                "SELECT octet_length(body), substring(body FROM 1 FOR $2) FROM messages WHERE id = $1",
                &[(&id, Type::INT8), (&CHUNK_OCTETS, Type::INT4)],
            )
            .await?;
        drop(client);
        let Some(row) = row else {
            return Ok(None);
        };
        let length: i32 = row.get(0);
        let first: Vec<u8> = row.get(1);
        let rx = (i64::from(length) > first.len() as i64).then(|| {
            let from = i32::try_from(first.len())
                .unwrap_or(i32::MAX)
                .saturating_add(1);
            Self::fetch_rest(pool, id, from, length)
        });
        Ok(Some(ChunkReader {
            rx,
            chunk: first,
            pos: 0,
        }))
    }

    /// A task that fetches octets `from..=length` (counted from 1) chunk
    /// by chunk, one chunk ahead of the reader.
    fn fetch_rest(
        pool: Arc<Pool>,
        id: i64,
        mut from: i32,
        length: i32,
    ) -> mpsc::Receiver<io::Result<Vec<u8>>> {
        let (tx, rx) = mpsc::channel(1);
        tokio::spawn(async move {
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
        rx
    }
}

async fn fetch(pool: &Arc<Pool>, id: i64, from: i32) -> io::Result<Vec<u8>> {
    let client = pool.get().await.map_err(io::Error::other)?;
    let row = client
        .query_typed_opt(
            "SELECT substring(body FROM $2 FOR $3) FROM messages WHERE id = $1",
            &[
                (&id, Type::INT8),
                (&from, Type::INT4),
                (&CHUNK_OCTETS, Type::INT4),
            ],
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

/// Streamed in chunks from the database, never whole in memory; a
/// message that fits in the first chunk is handed over whole.
impl crate::store::MessageBody for ChunkReader {
    fn in_memory(&self) -> Option<&[u8]> {
        (self.rx.is_none() && self.pos == 0).then_some(self.chunk.as_slice())
    }
}

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
            let Some(rx) = self.rx.as_mut() else {
                return Poll::Ready(Ok(()));
            };
            match rx.poll_recv(cx) {
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
