//! PostgreSQL connections, shared by the store ([`crate::store::postgres`])
//! and the passdb ([`crate::auth::postgres`]): the connection pool, TLS to
//! the database, and the error type of both.

pub mod pool;
pub mod tls;

use tls::PgTlsError;

/// Column `i` of `row` as a `T`. A column of another type than this build
/// knows (changed by hand) is an error for the statement's caller, never
/// the panic of `Row::get`.
pub(crate) fn column<'a, T: tokio_postgres::types::FromSql<'a>>(
    row: &'a tokio_postgres::Row,
    i: usize,
) -> Result<T, PgError> {
    Ok(row.try_get(i)?)
}

/// How long `mailbag migrate` waits for a lock on a table it changes.
/// While it waits, its request queues every later statement on that table
/// (the deliveries and listings of running nodes), so it gives up rather
/// than stall them behind a session that never ends.
pub const MIGRATE_LOCK_WAIT: &str = "10s";

/// What can go wrong talking to PostgreSQL.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// The connection string does not parse.
    #[error("invalid PostgreSQL connection string: {0}")]
    Url(#[source] tokio_postgres::Error),
    /// A query or connection failed.
    #[error("database error")]
    Db(#[from] tokio_postgres::Error),
    /// No connection within the time allowed.
    #[error("timed out waiting for the database")]
    Timeout,
    /// The database needs `mailbag migrate`.
    #[error(
        "database schema is at version {have} but this mailbag needs {want}: run `mailbag migrate`"
    )]
    SchemaBehind {
        /// The version found.
        have: i32,
        /// The version needed.
        want: i32,
    },
    /// TLS to the database (`sslmode=require`) cannot be set up.
    #[error("store.ca_file: {0}")]
    Tls(#[from] PgTlsError),
    /// The connections go through a pooler (PgBouncer's `pool_mode =
    /// transaction` or `statement`) that hands one client's statements to
    /// different server sessions, so session-level advisory locks (the
    /// maildrop locks) would not hold.
    #[error(
        "the connections go through a pooler that does not keep a client on one server session \
         ({0}); maildrop locks are session-level advisory locks and would not hold: \
         use pool_mode = session in PgBouncer, or connect to PostgreSQL directly"
    )]
    NotSessionBound(String),
    /// One of several clusters (`store.clusters`) or the directory
    /// failed; the text names which.
    #[error("{0}")]
    Clusters(String),
    /// A failure on one database of several: `store.clusters`' `name`,
    /// or the directory.
    #[error("{at}")]
    At {
        /// Which database.
        at: String,
        /// What failed there.
        #[source]
        source: Box<PgError>,
    },
    /// `mailbag migrate` waited [`MIGRATE_LOCK_WAIT`] for a table that
    /// another session keeps in use; it gave up and changed nothing.
    #[error(
        "a table to migrate stayed in use by another session (an open transaction, an idle \
         psql) for {MIGRATE_LOCK_WAIT}; nothing was changed: end that session (see \
         pg_stat_activity) and run `mailbag migrate` again"
    )]
    MigrateLockWait(#[source] tokio_postgres::Error),
    /// The database was migrated by a newer mailbag.
    #[error(
        "database schema is at version {have}, newer than this mailbag's {want}: upgrade mailbag"
    )]
    SchemaAhead {
        /// The version found.
        have: i32,
        /// The version needed.
        want: i32,
    },
}
