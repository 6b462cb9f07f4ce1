//! The PostgreSQL backend of [`Store`], for many nodes sharing one
//! database: maildrops and messages live in tables, the maildrop lock is a
//! session-level advisory lock (see [`lock`]), and PostgreSQL's own
//! replication carries the data.
//!
//! - `open` finds (or creates) the maildrop row, takes its lock, then
//!   snapshots `(id, uidl, size)` in delivery order.
//! - `read` streams the body, stored as rows of `message_chunks`, in
//!   batches of rows ([`reader`]).
//! - `commit` deletes and marks seen in one statement, run on the lock
//!   connection itself: if that connection has died, the lock has gone
//!   with it and nothing is deleted.
//! - `deliver` inserts the message and its chunks in one statement, so
//!   in one transaction, which is committed (and, with
//!   `synchronous_commit`, flushed or replicated) before it returns. The
//!   body is stored in canonical form (CRLF line ends, as LMTP brings
//!   it; a message with LF ends is converted once, here), so that its
//!   length is its POP3 size and RETR copies it in long runs instead of a
//!   line at a time. Bodies stored with LF ends before are served as
//!   they are.
//!
//! Every database failure is [`StoreError::Temporary`] (`[SYS/TEMP]`).

pub mod cluster;
pub mod lock;
pub mod reader;
pub mod schema;

use std::io;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mailbag_proto::dot::into_canonical;

use super::{Mailbox, Maildrop, MessageInfo, Store, StoreError, Usage};
use crate::pg::column;
use crate::pg::pool::{Pool, Pooled};
use crate::pg::tls::RustlsConnect;
use tokio_postgres::types::Type;

const TEXT: Type = Type::TEXT;
const INT8: Type = Type::INT8;
const INT8_ARRAY: Type = Type::INT8_ARRAY;
const BYTEA: Type = Type::BYTEA;
pub use crate::pg::PgError;
use lock::{Held, Lock, Locks};
pub use reader::{ChunkReader, CHUNK_OCTETS};

impl From<PgError> for StoreError {
    fn from(e: PgError) -> Self {
        StoreError::Temporary(io::Error::other(e))
    }
}

/// Connection settings of the PostgreSQL backend.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// libpq-style connection string or URL; several hosts and
    /// `target_session_attrs=read-write` are understood.
    pub url: String,
    /// Pooled connections for queries.
    pub pool_size: usize,
    /// Dedicated connections that hold maildrop locks.
    pub lock_connections: usize,
    /// The CA certificates (PEM) that sign the database server's
    /// certificate, for `sslmode=require`; the system's bundle if `None`.
    pub ca_file: Option<PathBuf>,
}

/// Maildrops in a PostgreSQL database.
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: Arc<Pool>,
    locks: Arc<Locks>,
}

impl PgStore {
    /// A store for `options`; connects lazily, so a database that is down
    /// at start gives `[SYS/TEMP]` until it is back.
    pub fn new(options: &PgOptions) -> Result<PgStore, PgError> {
        let config = tokio_postgres::Config::from_str(&options.url).map_err(PgError::Url)?;
        let tls = match config.get_ssl_mode() {
            tokio_postgres::config::SslMode::Require => {
                Some(RustlsConnect::new(options.ca_file.as_deref())?)
            }
            _ => None,
        };
        let pool = Pool::new(config, options.pool_size, tls);
        let locks = Locks::new(Arc::clone(&pool), options.lock_connections);
        Ok(PgStore { pool, locks })
    }

    /// The connection pool (shared with the passdb).
    pub fn pool(&self) -> &Arc<Pool> {
        &self.pool
    }

    /// Fails unless the schema is the one this build needs.
    pub async fn check_schema(&self) -> Result<(), PgError> {
        schema::check(&*self.pool.get().await?).await
    }

    /// Fails when the connections go through a pooler that does not keep
    /// each on one server session (the maildrop locks need that); run at
    /// start, beside [`PgStore::check_schema`].
    pub async fn check_session_bound(&self) -> Result<(), PgError> {
        lock::check_session_bound(&self.pool).await
    }

    /// Applies pending migrations; returns the versions applied.
    pub async fn migrate(&self) -> Result<Vec<i32>, PgError> {
        let mut client = self.pool.get().await?;
        schema::migrate(client.client_mut()).await
    }

    /// The id of `user`'s maildrop, created when missing.
    async fn maildrop_id(&self, user: &str) -> Result<i64, PgError> {
        let mut client = self.pool.get().await?;
        const SELECT: &str = "SELECT id FROM maildrops WHERE name = $1";
        if let Some(row) = client.query_prepared_opt(SELECT, &[(&user, TEXT)]).await? {
            return Ok(row.try_get(0)?);
        }
        create_maildrop(&mut client, user).await?;
        Ok(client
            .query_prepared_one(SELECT, &[(&user, TEXT)])
            .await?
            .try_get(0)?)
    }

    /// Stores `message` for `user` with a UIDL chosen here, so that an
    /// unknown outcome (the connection broke around COMMIT) can be settled
    /// by looking the UIDL up, instead of guessing and losing or
    /// duplicating mail.
    pub async fn deliver(&self, user: &str, message: Vec<u8>) -> Result<String, StoreError> {
        check_user(user)?;
        let uidl = new_uidl();
        let message = into_canonical(message);
        let size = message.len() as i64;
        let id = self.maildrop_id(user).await?;
        let mut client = self.pool.get().await?;
        let inserted = insert_message(&mut client, id, &uidl, size, &message).await;
        drop(client);
        match inserted {
            Ok(_) => Ok(uidl),
            // A statement the server refused was rolled back: nothing of
            // the message is stored.
            Err(e) if e.as_db_error().is_some() => Err(PgError::Db(e).into()),
            Err(e) => {
                let e = PgError::Db(e);
                if self.stored(user, &uidl).await {
                    Ok(uidl)
                } else {
                    Err(e.into())
                }
            }
        }
    }

    /// Stores `message` for `user` under `uidl`, the UIDL it had on
    /// another server (`mailbag import` keeps it, so that clients do not
    /// download the message again). `Ok(Err(message))`, with nothing
    /// stored and the message handed back (no copy is kept for this), when
    /// `user`'s maildrop already holds a message with that UIDL (a UIDL is
    /// unique within its maildrop; other users' maildrops may hold the
    /// same one) or `uidl` is not one RFC 1939 allows; the caller then
    /// delivers it under a new UIDL.
    pub async fn deliver_with_uidl(
        &self,
        user: &str,
        message: Vec<u8>,
        uidl: &str,
    ) -> Result<Result<(), Vec<u8>>, StoreError> {
        check_user(user)?;
        if !valid_uidl(uidl) {
            return Ok(Err(message));
        }
        let message = into_canonical(message);
        let size = message.len() as i64;
        let id = self.maildrop_id(user).await?;
        let mut client = self.pool.get().await?;
        let inserted = insert_message(&mut client, id, uidl, size, &message).await;
        drop(client);
        match inserted {
            Ok(_) => Ok(Ok(())),
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) => {
                Ok(Err(message))
            }
            // Refused, or an unknown outcome (the connection broke around
            // COMMIT): the import stops and says so, and its documented
            // repair (remove what it wrote, import again) applies.
            Err(e) => Err(PgError::Db(e).into()),
        }
    }

    /// Whether a message with `uidl` was committed to `user`'s maildrop;
    /// asked after a failure whose outcome is unknown. `false` when the
    /// database cannot tell us now (then the MTA retries, and at worst the
    /// message arrives twice, never zero times). Only `user`'s maildrop
    /// counts: the same UIDL in another maildrop (a message imported
    /// under the UIDL another server gave it) does not mean this delivery
    /// was stored. One statement, through the maildrop's name and its
    /// (maildrop, UIDL) unique index.
    pub(crate) async fn stored(&self, user: &str, uidl: &str) -> bool {
        for wait in [0, 500, 2000] {
            tokio::time::sleep(Duration::from_millis(wait)).await;
            let Ok(client) = self.pool.get().await else {
                continue;
            };
            if let Ok(row) = client
                .query_typed_opt(
                    "SELECT 1 FROM messages m JOIN maildrops d ON d.id = m.maildrop_id
                      WHERE m.uidl = $1 AND d.name = $2",
                    &[(&uidl, TEXT), (&user, TEXT)],
                )
                .await
            {
                return row.is_some();
            }
        }
        false
    }
}

impl PgStore {
    /// Takes the lock of `user`'s maildrop (created when missing): its id
    /// and the lock.
    async fn lock_maildrop(&self, user: &str) -> Result<(i64, Held), StoreError> {
        match self.locks.lock(user).await? {
            Lock::Held(id, lock) => Ok((id, lock)),
            Lock::Busy => Err(StoreError::Locked),
            Lock::Missing => {
                create_maildrop(&mut self.pool.get().await?, user).await?;
                match self.locks.lock(user).await? {
                    Lock::Held(id, lock) => Ok((id, lock)),
                    Lock::Busy => Err(StoreError::Locked),
                    // Created and removed again at once: only an
                    // administrator deleting it does that.
                    Lock::Missing => Err(StoreError::Temporary(io::Error::other(
                        "maildrop removed while being opened",
                    ))),
                }
            }
        }
    }

    /// The snapshot of the maildrop `id`, whose `lock` is held.
    async fn snapshot(
        &self,
        client: &mut Pooled,
        id: i64,
        lock: Held,
    ) -> Result<PgMaildrop, StoreError> {
        // The snapshot comes after the lock: nothing can delete under it.
        let rows = client
            .query_prepared(
                "SELECT id, uidl, size FROM messages WHERE maildrop_id = $1 ORDER BY id",
                &[(&id, INT8)],
            )
            .await
            .map_err(PgError::from)?;
        let mut ids = Vec::with_capacity(rows.len());
        let mut infos = Vec::with_capacity(rows.len());
        // Columns of another type than this build knows (a schema changed
        // by hand) refuse the login instead of panicking the session.
        for row in rows {
            ids.push(column::<i64>(&row, 0)?);
            infos.push(MessageInfo {
                uid: column(&row, 1)?,
                // The schema refuses a negative size; one written past
                // that shows as 0, and its RETR fails the size check.
                size: u64::try_from(column::<i64>(&row, 2)?).unwrap_or(0),
            });
        }
        Ok(PgMaildrop {
            pool: Arc::clone(&self.pool),
            lock,
            maildrop_id: id,
            ids,
            infos,
        })
    }

    /// Opens `user`'s maildrop as [`Store::open`] does when its row's
    /// state is `active`; otherwise releases the lock and gives the state
    /// (`None`: the row was removed under us), with nothing listed. The
    /// state is read under the maildrop's lock, which every change of it
    /// holds, so it cannot change until the session ends; and before the
    /// listing, so that a maildrop not served costs no listing.
    pub(crate) async fn open_if_active(
        &self,
        user: &str,
    ) -> Result<Result<PgMaildrop, Option<String>>, StoreError> {
        check_user(user)?;
        let (id, lock) = self.lock_maildrop(user).await?;
        // On the lock's own connection: read only while the lock holds.
        // Read as text, and decoded without a panic: a column changed by
        // hand (to an enum, say) still answers, and one that cannot
        // refuses this login rather than ending the session's task.
        let state = lock
            .conn()
            .query_prepared_opt(
                "SELECT state::text FROM maildrops WHERE id = $1",
                &[(&id, INT8)],
            )
            .await
            .map_err(PgError::from)?
            .map(|row| column::<String>(&row, 0))
            .transpose()?;
        if state.as_deref() != Some("active") {
            lock.unlock().await;
            return Ok(Err(state));
        }
        let mut client = self.pool.get().await?;
        self.snapshot(&mut client, id, lock).await.map(Ok)
    }
}

/// Stores a message and its body's chunks in one statement, so in one
/// transaction: all of it or nothing. The body goes to the server once,
/// which cuts it into rows of [`CHUNK_OCTETS`] (an empty body has none).
async fn insert_message(
    client: &mut Pooled,
    maildrop_id: i64,
    uidl: &str,
    size: i64,
    body: &[u8],
) -> Result<u64, tokio_postgres::Error> {
    const CHUNK: i32 = CHUNK_OCTETS as i32;
    client
        .execute_prepared(
            "WITH m AS (
                 INSERT INTO messages (maildrop_id, uidl, size) VALUES ($1, $2, $3)
                 RETURNING id
             )
             INSERT INTO message_chunks (message_id, seq, data)
             SELECT m.id, s.seq, substring($4 FROM s.seq * $5 + 1 FOR $5)
               FROM m, generate_series(0, (octet_length($4) + $5 - 1) / $5 - 1) AS s (seq)",
            &[
                (&maildrop_id, INT8),
                (&uidl, TEXT),
                (&size, INT8),
                (&body, BYTEA),
                (&CHUNK, Type::INT4),
            ],
        )
        .await
}

/// Creates the maildrop `user` unless it exists.
async fn create_maildrop(client: &mut Pooled, user: &str) -> Result<(), PgError> {
    client
        .execute_prepared(
            "INSERT INTO maildrops (name) VALUES ($1) ON CONFLICT (name) DO NOTHING",
            &[(&user, TEXT)],
        )
        .await?;
    Ok(())
}

/// Refuses names that cannot be a user (the passdb checks the rest).
pub(crate) fn check_user(user: &str) -> Result<(), StoreError> {
    if user.is_empty() || user.len() > 255 || user.chars().any(char::is_control) {
        return Err(StoreError::Permanent("user name refused".into()));
    }
    Ok(())
}

/// Whether `uidl` is one RFC 1939 allows (1-70 characters in 0x21-0x7E),
/// as the schema's check does.
pub(crate) fn valid_uidl(uidl: &str) -> bool {
    (1..=70).contains(&uidl.len()) && uidl.bytes().all(|b| (0x21..=0x7E).contains(&b))
}

/// A UIDL unique across nodes: time, then random, in hex (RFC 1939 §7:
/// 1-70 characters in 0x21-0x7E).
pub(crate) fn new_uidl() -> String {
    let micros = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros());
    let mut random = [0u8; 10];
    rand::fill(&mut random);
    let random: String = random.iter().map(|b| format!("{b:02x}")).collect();
    format!("{micros:x}.{random}")
}

impl Store for PgStore {
    type Maildrop = PgMaildrop;
    const KEEPS_CRLF: bool = true;

    /// The maildrop is the user's row: a maildrop from the user's entry
    /// has no meaning here and is ignored.
    async fn open(&self, user: Mailbox<'_>) -> Result<PgMaildrop, StoreError> {
        let user = user.name;
        check_user(user)?;
        let (id, lock) = self.lock_maildrop(user).await?;
        let mut client = self.pool.get().await?;
        self.snapshot(&mut client, id, lock).await
    }

    async fn deliver(&self, user: Mailbox<'_>, message: Vec<u8>) -> Result<String, StoreError> {
        PgStore::deliver(self, user.name, message).await
    }

    async fn usage(&self, user: Mailbox<'_>) -> Result<Usage, StoreError> {
        let user = user.name;
        let mut client = self.pool.get().await?;
        let row = client
            .query_prepared_one(
                "SELECT count(m.id), coalesce(sum(greatest(m.size, 0)), 0)::bigint
                   FROM maildrops d JOIN messages m ON m.maildrop_id = d.id
                  WHERE d.name = $1",
                &[(&user, TEXT)],
            )
            .await
            .map_err(PgError::from)?;
        // A size written negative past the schema's check counts as 0, as
        // in the listing: never a sum that wraps to an exabyte (a quota
        // refusing every delivery) or below what the other messages hold.
        let count = |i| column::<i64>(&row, i).map(|n| u64::try_from(n).unwrap_or(0));
        Ok(Usage {
            messages: count(0)?,
            octets: count(1)?,
        })
    }
}

/// A maildrop locked for one session, with its snapshot.
#[derive(Debug)]
pub struct PgMaildrop {
    pool: Arc<Pool>,
    lock: Held,
    maildrop_id: i64,
    /// Message ids, parallel to `infos`.
    ids: Vec<i64>,
    infos: Vec<MessageInfo>,
}

impl Maildrop for PgMaildrop {
    type Reader = ChunkReader;

    fn messages(&self) -> &[MessageInfo] {
        &self.infos
    }

    async fn read(&mut self, index: usize) -> Result<ChunkReader, StoreError> {
        let id = *self
            .ids
            .get(index)
            .ok_or_else(|| StoreError::Permanent("message index out of range".into()))?;
        if self.lock.conn().is_lost() {
            // Another node may own the maildrop now; this session serves
            // nothing more from it.
            return Err(lock_lost());
        }
        ChunkReader::start(Arc::clone(&self.pool), id)
            .await?
            .ok_or(StoreError::Vanished)
    }

    async fn commit(self, deleted: &[usize], retrieved: &[usize]) -> Result<(), StoreError> {
        let pick = |indices: &[usize]| -> Result<Vec<i64>, StoreError> {
            indices
                .iter()
                .map(|&i| {
                    self.ids
                        .get(i)
                        .copied()
                        .ok_or_else(|| StoreError::Permanent("message index out of range".into()))
                })
                .collect()
        };
        let deleted = pick(deleted)?;
        let mut seen = pick(retrieved)?;
        seen.retain(|id| !deleted.contains(id));
        if deleted.is_empty() && seen.is_empty() {
            // Nothing changes, so a lost lock costs nothing here.
            self.lock.unlock().await;
            return Ok(());
        }
        if self.lock.conn().is_lost() {
            return Err(lock_lost());
        }
        {
            // One statement is one transaction: all deletions or none.
            // It runs on the lock connection, so it cannot run once the
            // lock has gone.
            let conn = self.lock.conn();
            let update = conn
                .execute_prepared(
                    "WITH gone AS (
                     DELETE FROM messages WHERE maildrop_id = $1 AND id = ANY($2)
                 )
                 UPDATE messages SET seen = true
                  WHERE maildrop_id = $1 AND id = ANY($3) AND NOT seen",
                    &[
                        (&self.maildrop_id, INT8),
                        (&deleted, INT8_ARRAY),
                        (&seen, INT8_ARRAY),
                    ],
                )
                .await;
            update.map_err(|e| {
                if self.lock.conn().is_lost() {
                    lock_lost()
                } else {
                    PgError::from(e).into()
                }
            })?;
        }
        self.lock.unlock().await;
        Ok(())
    }
}

fn lock_lost() -> StoreError {
    StoreError::Temporary(io::Error::other(
        "the database connection holding the maildrop lock was lost",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uidls_are_rfc_1939_shaped_and_distinct() {
        let a = new_uidl();
        let b = new_uidl();
        assert_ne!(a, b);
        for u in [a, b] {
            assert!((1..=70).contains(&u.len()), "{u}");
            assert!(u.bytes().all(|c| (0x21..=0x7e).contains(&c)), "{u}");
        }
    }

    #[test]
    fn control_characters_in_user_names_are_refused() {
        assert!(check_user("alice@example.org").is_ok());
        for bad in ["", "a\nb", "a\0b", &"x".repeat(256)] {
            assert!(matches!(check_user(bad), Err(StoreError::Permanent(_))));
        }
    }
}
