//! A small pool of PostgreSQL connections: at most `size` open at once,
//! idle ones kept for reuse, broken ones dropped.
//!
//! Hand-rolled rather than a crate: it needs nothing but a semaphore and a
//! stack, and the connection string (several hosts,
//! `target_session_attrs=read-write`) is tokio-postgres's own, so a new
//! connection after a failover finds the promoted primary by itself.
//!
//! A connection is handed, when one is idle, to a task on the thread that
//! opened it: its IO task runs on that thread's runtime (the server runs
//! one single-threaded runtime per core), so a query then wakes no other
//! thread on its way out and back.
//!
//! Each connection keeps the statements the hot paths run prepared
//! ([`Pooled::prepared`]): PostgreSQL parses and plans each once per
//! connection, and every later use is one round trip with no parsing.

use std::collections::HashMap;
use std::future::Future;
use std::ops::Deref;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, Config, NoTls, Row, Statement};

use super::tls::RustlsConnect;
use super::PgError;

/// How long one connection attempt may take, all hosts together.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Prepared statements kept per connection. The statements are constants
/// of this program, far fewer than this; the bound only keeps a mistake
/// (a statement built at run time) from growing the server's memory.
const MAX_STATEMENTS: usize = 64;

/// A connection and the statements prepared on it.
struct Conn {
    client: Client,
    statements: HashMap<&'static str, Statement>,
    /// The thread whose runtime runs its IO task.
    home: std::thread::ThreadId,
    /// Counted in [`Pool::open`] while it lives.
    _open: Open,
}

/// One connection counted in [`Pool::open`] until dropped.
struct Open(Arc<AtomicUsize>);

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("statements", &self.statements.len())
            .finish_non_exhaustive()
    }
}

/// Connections to one database.
#[derive(Debug)]
pub struct Pool {
    config: Config,
    /// Set when the connection string says `sslmode=require`.
    tls: Option<RustlsConnect>,
    idle: Mutex<Vec<Conn>>,
    permits: Arc<Semaphore>,
    /// Connections open, idle or not: at most `size`.
    open: Arc<AtomicUsize>,
    size: usize,
}

/// A connection's IO task: it runs until the connection ends.
pub type Driver = Pin<Box<dyn Future<Output = Result<(), tokio_postgres::Error>> + Send>>;

/// A connection taken from the pool; returned to it on drop unless broken.
pub struct Pooled {
    conn: Option<Conn>,
    pool: Arc<Pool>,
    _permit: OwnedSemaphorePermit,
}

impl Pool {
    /// A pool of at most `size` connections (at least one), over TLS when
    /// `tls` is given.
    pub fn new(mut config: Config, size: usize, tls: Option<RustlsConnect>) -> Arc<Pool> {
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        Arc::new(Pool {
            config,
            tls,
            idle: Mutex::new(Vec::new()),
            permits: Arc::new(Semaphore::new(size.max(1))),
            open: Arc::new(AtomicUsize::new(0)),
            size: size.max(1),
        })
    }

    /// Connects (over TLS when the pool has it); the caller runs the
    /// returned driver.
    pub async fn open(&self) -> Result<(Client, Driver), PgError> {
        let opened = async {
            Ok::<_, tokio_postgres::Error>(match &self.tls {
                None => {
                    let (client, connection) = self.config.connect(NoTls).await?;
                    (client, Box::pin(connection) as Driver)
                }
                Some(tls) => {
                    let (client, connection) = self.config.connect(tls.clone()).await?;
                    (client, Box::pin(connection) as Driver)
                }
            })
        };
        Ok(tokio::time::timeout(CONNECT_TIMEOUT, opened)
            .await
            .map_err(|_| PgError::Timeout)??)
    }

    /// Opens a new connection outside the pool (its task is spawned).
    pub async fn connect(&self) -> Result<Client, PgError> {
        let (client, connection) = self.open().await?;
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::warn!(%error, "database connection ended");
            }
        });
        Ok(client)
    }

    /// A connection: an idle one this thread opened, else a new one
    /// while fewer than `size` are open, else any idle one. At most
    /// `size` are out at once.
    pub async fn get(self: &Arc<Self>) -> Result<Pooled, PgError> {
        let permit = tokio::time::timeout(CONNECT_TIMEOUT, self.permits.clone().acquire_owned())
            .await
            .map_err(|_| PgError::Timeout)?
            .map_err(|_| PgError::Timeout)?;
        let here = std::thread::current().id();
        let reused = {
            let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
            idle.retain(|c| !c.client.is_closed());
            match idle.iter().rposition(|c| c.home == here) {
                Some(i) => Ok(idle.swap_remove(i)),
                // Every connection is open: one of another thread's (with
                // a permit held, fewer than `size` are out, so one is
                // idle), else a new one after all.
                None => match self.reserve() {
                    Some(open) => Err(open),
                    None => idle.pop().ok_or_else(|| self.count()),
                },
            }
        };
        let conn = match reused {
            Ok(conn) => conn,
            // Counted from the reservation on, released if it fails.
            Err(open) => Conn {
                client: self.connect().await?,
                statements: HashMap::new(),
                home: here,
                _open: open,
            },
        };
        Ok(Pooled {
            conn: Some(conn),
            pool: Arc::clone(self),
            _permit: permit,
        })
    }
}

impl Pool {
    /// Counts one more open connection, unless `size` are open.
    fn reserve(&self) -> Option<Open> {
        self.open
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.size).then_some(n + 1)
            })
            .ok()
            .map(|_| Open(Arc::clone(&self.open)))
    }

    /// Counts one more open connection.
    fn count(&self) -> Open {
        self.open.fetch_add(1, Ordering::SeqCst);
        Open(Arc::clone(&self.open))
    }
}

impl Deref for Pooled {
    type Target = Client;
    fn deref(&self) -> &Client {
        &self.conn().client
    }
}

/// A statement's parameters, each with its type (so that preparing it
/// asks the server nothing more).
pub type Params<'a> = [(&'a (dyn ToSql + Sync), Type)];

impl Pooled {
    fn conn(&self) -> &Conn {
        self.conn.as_ref().expect("present until drop")
    }

    /// The connection, for a transaction (which needs `&mut`).
    pub fn client_mut(&mut self) -> &mut Client {
        &mut self.conn.as_mut().expect("present until drop").client
    }

    /// `sql` prepared on this connection with the parameter types
    /// `types`: prepared at its first use here, then reused. `sql` must
    /// be a constant: the cache is keyed by it.
    pub async fn prepared(
        &mut self,
        sql: &'static str,
        types: &[Type],
    ) -> Result<Statement, tokio_postgres::Error> {
        prepared(self.conn_mut(), sql, types).await
    }

    fn conn_mut(&mut self) -> &mut Conn {
        self.conn.as_mut().expect("present until drop")
    }

    /// Runs the constant `sql`, a query that changes nothing, as a
    /// prepared statement ([`prepared`](Self::prepared)). When the
    /// connection turns out to have died (a backend terminated, a
    /// restart: an idle connection cannot know before its next use), the
    /// query runs once more on a new connection, as a read may.
    pub async fn query_prepared(
        &mut self,
        sql: &'static str,
        params: &Params<'_>,
    ) -> Result<Vec<Row>, tokio_postgres::Error> {
        match self.query_prepared_here(sql, params).await {
            Err(e) if self.gone(&e) && self.replace().await => {
                self.query_prepared_here(sql, params).await
            }
            done => done,
        }
    }

    async fn query_prepared_here(
        &mut self,
        sql: &'static str,
        params: &Params<'_>,
    ) -> Result<Vec<Row>, tokio_postgres::Error> {
        run_prepared::<_, Query>(self.conn_mut(), sql, params).await
    }

    /// As [`query_prepared`](Self::query_prepared) (a read, run again on
    /// a new connection when this one died), for at most one row.
    pub async fn query_prepared_opt(
        &mut self,
        sql: &'static str,
        params: &Params<'_>,
    ) -> Result<Option<Row>, tokio_postgres::Error> {
        match self.query_prepared_opt_here(sql, params).await {
            Err(e) if self.gone(&e) && self.replace().await => {
                self.query_prepared_opt_here(sql, params).await
            }
            done => done,
        }
    }

    async fn query_prepared_opt_here(
        &mut self,
        sql: &'static str,
        params: &Params<'_>,
    ) -> Result<Option<Row>, tokio_postgres::Error> {
        run_prepared::<_, QueryOpt>(self.conn_mut(), sql, params).await
    }

    /// As [`query_prepared`](Self::query_prepared), for exactly one row.
    pub async fn query_prepared_one(
        &mut self,
        sql: &'static str,
        params: &Params<'_>,
    ) -> Result<Row, tokio_postgres::Error> {
        run_prepared::<_, QueryOne>(self.conn_mut(), sql, params).await
    }

    /// As [`query_prepared`](Self::query_prepared), for the number of rows
    /// changed.
    pub async fn execute_prepared(
        &mut self,
        sql: &'static str,
        params: &Params<'_>,
    ) -> Result<u64, tokio_postgres::Error> {
        run_prepared::<_, Execute>(self.conn_mut(), sql, params).await
    }

    /// Whether `e` says this connection is gone (so that whatever ran
    /// on it ended with it).
    fn gone(&self, e: &tokio_postgres::Error) -> bool {
        connection_gone(&self.conn().client, e)
    }

    /// Swaps this dead connection for a new one, counted in its place;
    /// `false` (keeping the dead one, which is not returned to the pool)
    /// when none can be opened.
    async fn replace(&mut self) -> bool {
        let Ok(client) = self.pool.connect().await else {
            return false;
        };
        let Some(old) = self.conn.take() else {
            return false;
        };
        self.conn = Some(Conn {
            client,
            statements: HashMap::new(),
            home: std::thread::current().id(),
            _open: old._open,
        });
        true
    }
}

/// Whether `e`, from a statement on `client`, says that connection is
/// gone (closed, or its backend terminated or crashed), so that whatever
/// ran on it ended with it: its session's advisory locks too.
pub(crate) fn connection_gone(client: &Client, e: &tokio_postgres::Error) -> bool {
    use tokio_postgres::error::SqlState;
    client.is_closed()
        || e.is_closed()
        || e.code() == Some(&SqlState::ADMIN_SHUTDOWN)
        || e.code() == Some(&SqlState::CRASH_SHUTDOWN)
}

/// Whether PostgreSQL refused a prepared statement because a table it
/// reads changed the type of a column it returns (a migration, or an
/// administrator's `ALTER TABLE`): the statement ran no part of itself,
/// and preparing it again gives one that works. Kept in the cache, it
/// would fail every later use on this connection.
fn replanned(e: &tokio_postgres::Error) -> bool {
    e.as_db_error().is_some_and(|db| {
        *db.code() == tokio_postgres::error::SqlState::FEATURE_NOT_SUPPORTED
            && db
                .message()
                .starts_with("cached plan must not change result type")
    })
}

/// A connection that keeps statements prepared, by their constant text:
/// a pooled connection, or one that holds maildrop locks
/// (`store::postgres::lock`).
pub(crate) trait Statements {
    /// The connection.
    fn client(&self) -> &Client;
    /// The statement prepared for `sql`, if any.
    fn cached(&mut self, sql: &'static str) -> Option<Statement>;
    /// Keeps `statement`, prepared for `sql`.
    fn keep(&mut self, sql: &'static str, statement: Statement);
    /// Forgets the statement prepared for `sql`.
    fn forget(&mut self, sql: &'static str);
}

impl Statements for Conn {
    fn client(&self) -> &Client {
        &self.client
    }

    fn cached(&mut self, sql: &'static str) -> Option<Statement> {
        self.statements.get(sql).cloned()
    }

    fn keep(&mut self, sql: &'static str, statement: Statement) {
        if self.statements.len() >= MAX_STATEMENTS {
            self.statements.clear();
        }
        self.statements.insert(sql, statement);
    }

    fn forget(&mut self, sql: &'static str) {
        self.statements.remove(sql);
    }
}

/// `sql` (a constant) prepared on `conn` with the parameter types
/// `types`, once: later uses are one round trip each and parse nothing.
pub(crate) async fn prepared<C: Statements + Send>(
    conn: &mut C,
    sql: &'static str,
    types: &[Type],
) -> Result<Statement, tokio_postgres::Error> {
    if let Some(statement) = conn.cached(sql) {
        return Ok(statement);
    }
    let statement = conn.client().prepare_typed(sql, types).await?;
    conn.keep(sql, statement.clone());
    Ok(statement)
}

/// One way to run a prepared statement, and what it gives.
pub(crate) trait Run {
    type Output: Send;
    fn run<'a>(
        client: &'a Client,
        statement: &'a Statement,
        params: &'a [&'a (dyn ToSql + Sync)],
    ) -> impl Future<Output = Result<Self::Output, tokio_postgres::Error>> + Send + 'a;
}

/// Every row.
pub(crate) struct Query;
/// At most one row.
pub(crate) struct QueryOpt;
/// Exactly one row.
pub(crate) struct QueryOne;
/// The number of rows changed.
pub(crate) struct Execute;

impl Run for Query {
    type Output = Vec<Row>;
    fn run<'a>(
        client: &'a Client,
        statement: &'a Statement,
        params: &'a [&'a (dyn ToSql + Sync)],
    ) -> impl Future<Output = Result<Vec<Row>, tokio_postgres::Error>> + Send + 'a {
        client.query(statement, params)
    }
}

impl Run for QueryOpt {
    type Output = Option<Row>;
    fn run<'a>(
        client: &'a Client,
        statement: &'a Statement,
        params: &'a [&'a (dyn ToSql + Sync)],
    ) -> impl Future<Output = Result<Option<Row>, tokio_postgres::Error>> + Send + 'a {
        client.query_opt(statement, params)
    }
}

impl Run for QueryOne {
    type Output = Row;
    fn run<'a>(
        client: &'a Client,
        statement: &'a Statement,
        params: &'a [&'a (dyn ToSql + Sync)],
    ) -> impl Future<Output = Result<Row, tokio_postgres::Error>> + Send + 'a {
        client.query_one(statement, params)
    }
}

impl Run for Execute {
    type Output = u64;
    fn run<'a>(
        client: &'a Client,
        statement: &'a Statement,
        params: &'a [&'a (dyn ToSql + Sync)],
    ) -> impl Future<Output = Result<u64, tokio_postgres::Error>> + Send + 'a {
        client.execute(statement, params)
    }
}

/// Runs the constant `sql` with `params` as a statement prepared on
/// `conn` ([`prepared`]). When PostgreSQL refuses the statement it has
/// cached because a result type changed ([`replanned`]), which ran no
/// part of it, the statement is prepared again and run once more.
pub(crate) async fn run_prepared<C: Statements + Send, R: Run>(
    conn: &mut C,
    sql: &'static str,
    params: &Params<'_>,
) -> Result<R::Output, tokio_postgres::Error> {
    let types: Vec<Type> = params.iter().map(|(_, t)| t.clone()).collect();
    let values: Vec<&(dyn ToSql + Sync)> = params.iter().map(|(v, _)| *v).collect();
    let statement = prepared(conn, sql, &types).await?;
    match R::run(conn.client(), &statement, &values).await {
        Err(e) if replanned(&e) => {
            conn.forget(sql);
            let statement = prepared(conn, sql, &types).await?;
            R::run(conn.client(), &statement, &values).await
        }
        done => done,
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            // A connection that failed mid-query may sit in a broken
            // transaction state; only a healthy one goes back.
            if !conn.client.is_closed() {
                self.pool
                    .idle
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(conn);
            }
        }
    }
}
