//! RETR and TOP from PostgreSQL without holding a message in memory.
//!
//! A body is stored as rows of `message_chunks` (schema version 2): chunks
//! of at most [`CHUNK_OCTETS`], small enough that each row stays in its
//! heap page, so a read is one index range scan over a few wide rows
//! instead of thousands of 2 KB TOAST tuples. The reader fetches them in
//! batches of rows: the first batch in one round trip (most mail is in
//! it, and then no task is started), the rest by a task one batch ahead
//! of the client, through a channel of one batch, so that a slow client
//! slows the fetching instead of filling memory. The task takes a pooled
//! connection per batch and never holds one while the client reads.
//!
//! The driver gets each chunk as tokio-postgres received it (a row keeps
//! the buffer it was read into), through [`MessageBody::next_piece`]: no
//! copy on mailbag's side before the dot-stuffer.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::mpsc;
use tokio_postgres::types::Type;
use tokio_postgres::Row;

use crate::pg::pool::{Pool, Pooled};
use crate::pg::PgError;
use crate::store::MessageBody;

/// [`CHUNK_OCTETS`] as a literal, so that the SQL text bounding a row
/// says the same number.
macro_rules! chunk_octets {
    () => {
        8000
    };
}

/// Octets of a body per `message_chunks` row: a row of this much data and
/// its key fits in one 8 KiB heap page (PostgreSQL's largest row there is
/// 8,160 octets), so it is never compressed or moved out of line. The
/// migration to version 2 writes the same size.
pub const CHUNK_OCTETS: usize = chunk_octets!();

/// Rows in the first query: 256,000 octets, so most mail comes whole with
/// the request.
const FIRST_BATCH_ROWS: i32 = 32;

/// Rows per query after the first (512,000 octets): a large message costs
/// a round trip per half megabyte. With the batch the client is reading
/// and the one waiting in the channel, a message being read holds at most
/// three batches (about 1.5 MB) in memory.
const BATCH_ROWS: i32 = 64;

/// The chunks numbered `$2 <= seq < $3` of message `$1`, in order: an
/// index range scan on the primary key, already in `seq` order. A row
/// larger than [`CHUNK_OCTETS`] (a column whose storage an administrator
/// changed, a row edited by hand) fails the query with a message that
/// says so, before its octets are read (`octet_length` reads the stored
/// length only), so that a batch never holds more than its rows' bound.
/// The failure is a text that is no integer, cast to one: plain SQL has
/// no statement that raises an error, and the column reference keeps the
/// planner from evaluating it ahead of the rows.
const SELECT_CHUNKS: &str = concat!(
    "SELECT CASE WHEN octet_length(data) <= ",
    chunk_octets!(),
    " THEN data
  ELSE ('message ' || message_id || ' chunk ' || seq || ' holds ' || octet_length(data)
        || ' octets, more than the ",
    chunk_octets!(),
    " a chunk may hold')::int::text::bytea END
  FROM message_chunks
  WHERE message_id = $1 AND seq >= $2 AND seq < $3
  ORDER BY seq"
);

/// Rows of chunks as they came from the database.
type Batch = Vec<Row>;

/// The body of one message, as it arrives from the database.
#[derive(Debug)]
pub struct ChunkReader {
    /// Later batches, while a task fetches them; `None` when the first
    /// batch was the whole message.
    rx: Option<mpsc::Receiver<io::Result<Batch>>>,
    /// The batch being read, and the row and octet reached in it.
    rows: Batch,
    row: usize,
    pos: usize,
}

impl ChunkReader {
    /// Starts reading message `id`: its first batch comes in one round
    /// trip. `None` when the message is gone.
    pub(crate) async fn start(pool: Arc<Pool>, id: i64) -> Result<Option<ChunkReader>, PgError> {
        let mut client = pool.get().await?;
        let rows = fetch(&mut client, id, 0, FIRST_BATCH_ROWS).await?;
        if rows.is_empty() {
            // An empty message has no chunks; a removed one has no row.
            let exists = client
                .query_prepared_opt("SELECT 1 FROM messages WHERE id = $1", &[(&id, Type::INT8)])
                .await?
                .is_some();
            if !exists {
                return Ok(None);
            }
        }
        drop(client);
        let rx = (rows.len() == FIRST_BATCH_ROWS as usize)
            .then(|| Self::fetch_rest(pool, id, FIRST_BATCH_ROWS));
        Ok(Some(ChunkReader {
            rx,
            rows,
            row: 0,
            pos: 0,
        }))
    }

    /// A task that fetches the chunks from `seq` on, a batch at a time,
    /// one batch ahead of the reader. A batch shorter than asked for is
    /// the last.
    fn fetch_rest(pool: Arc<Pool>, id: i64, mut seq: i32) -> mpsc::Receiver<io::Result<Batch>> {
        let (tx, rx) = mpsc::channel(1);
        tokio::spawn(async move {
            loop {
                let batch = async {
                    let mut client = pool.get().await?;
                    fetch(&mut client, id, seq, BATCH_ROWS).await
                }
                .await
                .map_err(io::Error::other);
                let last = match &batch {
                    Ok(rows) => rows.len() < BATCH_ROWS as usize,
                    Err(_) => true,
                };
                seq = seq.saturating_add(BATCH_ROWS);
                // A message removed while being read ends short here, and
                // the driver's size check refuses to end the RETR.
                if tx.send(batch).await.is_err() || last {
                    return;
                }
            }
        });
        rx
    }

    /// Moves past used-up rows; `false` when the batch has no octet left.
    fn advance(&mut self) -> bool {
        while let Some(row) = self.rows.get(self.row) {
            if self.pos < chunk(row).len() {
                return true;
            }
            self.row += 1;
            self.pos = 0;
        }
        false
    }

    /// The unread part of the current chunk (empty past the batch's end).
    fn remainder(&self) -> &[u8] {
        self.rows
            .get(self.row)
            .map_or(&[], |row| chunk(row).get(self.pos..).unwrap_or_default())
    }

    /// Waits for the next batch; `false` at the end of the message.
    fn poll_batch(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        let Some(rx) = self.rx.as_mut() else {
            return Poll::Ready(Ok(false));
        };
        match rx.poll_recv(cx) {
            Poll::Ready(Some(Ok(rows))) => {
                self.rows = rows;
                self.row = 0;
                self.pos = 0;
                Poll::Ready(Ok(true))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Err(e)),
            // The task sent everything: end of message.
            Poll::Ready(None) => {
                self.rx = None;
                Poll::Ready(Ok(false))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Up to `rows` chunks of message `id` from chunk `seq` on.
async fn fetch(client: &mut Pooled, id: i64, seq: i32, rows: i32) -> Result<Batch, PgError> {
    let end = seq.saturating_add(rows);
    let batch = client
        .query_prepared(
            SELECT_CHUNKS,
            &[(&id, Type::INT8), (&seq, Type::INT4), (&end, Type::INT4)],
        )
        .await?;
    // Checked once here, so that `chunk` cannot fail later.
    for row in &batch {
        row.try_get::<_, &[u8]>(0)?;
    }
    Ok(batch)
}

/// The octets of a row that [`fetch`] returned.
fn chunk(row: &Row) -> &[u8] {
    row.get(0)
}

/// Streamed in batches of chunks from the database, never whole in
/// memory; a message of one chunk is handed over whole.
impl MessageBody for ChunkReader {
    fn in_memory(&self) -> Option<&[u8]> {
        if self.rx.is_some() || self.row != 0 || self.pos != 0 {
            return None;
        }
        match self.rows.as_slice() {
            [] => Some(&[]),
            [only] => Some(chunk(only)),
            _ => None,
        }
    }

    async fn next_piece<'a>(&'a mut self, _buf: &'a mut Vec<u8>) -> io::Result<&'a [u8]> {
        while !self.advance() {
            if !std::future::poll_fn(|cx| self.poll_batch(cx)).await? {
                return Ok(&[]);
            }
        }
        let pos = self.pos;
        let data = chunk(&self.rows[self.row]);
        self.pos = data.len();
        Ok(&data[pos..])
    }
}

impl AsyncRead for ChunkReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        while !this.advance() {
            match this.poll_batch(cx) {
                Poll::Ready(Ok(true)) => {}
                Poll::Ready(Ok(false)) => return Poll::Ready(Ok(())),
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        let data = this.remainder();
        let n = buf.remaining().min(data.len());
        buf.put_slice(&data[..n]);
        this.pos += n;
        Poll::Ready(Ok(()))
    }
}
