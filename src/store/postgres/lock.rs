//! Maildrop locks as PostgreSQL session-level advisory locks, so that they
//! hold across nodes and die with the connection that took them: a node
//! that crashes or loses its network releases its locks when PostgreSQL
//! notices the connection has gone.
//!
//! A node does not spend a connection per POP3 session. It keeps a few
//! dedicated lock connections, and maildrop `k` is always locked on
//! connection `k mod n`. One connection holds many locks; each is released
//! with `pg_advisory_unlock` on the same connection when its session ends.
//!
//! The lock is taken by the maildrop's name, in the query that finds its
//! id, so a login pays one round trip for both. The connection is chosen
//! by the name, so one maildrop always locks and unlocks on the same one.
//!
//! Advisory locks are re-entrant within a connection, so two sessions of
//! one node would both "get" a lock on the same connection: the node
//! therefore also keeps the set of maildrops it holds, and refuses a
//! second session before asking PostgreSQL.
//!
//! When a lock connection breaks, every lock it held is gone. The
//! [`Held`] values that name it see it as lost, and their commits fail
//! (nothing is deleted): another node may already have the maildrop.

use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio_postgres::{Client, Row, Statement};
use tokio_util::sync::CancellationToken;

use crate::pg::pool::{connection_gone, run_prepared, Execute, Params, Pool, QueryOpt, Statements};
use crate::pg::{column, PgError};
use tokio_postgres::types::Type;

/// Connections that [`check_session_bound`] holds in a transaction, one
/// after another, each taking a server session a pooler might otherwise
/// hand back to the first.
const PROBES: usize = 4;

/// How often an idle lock connection is checked; a dead one is noticed
/// within this plus [`PING_TIMEOUT`].
const PING_INTERVAL: Duration = Duration::from_secs(10);
const PING_TIMEOUT: Duration = Duration::from_secs(10);

/// Takes maildrop `name`'s lock if it exists: no row for a maildrop that
/// does not, `false` while another session holds it.
const LOCK: &str = "SELECT id, pg_try_advisory_lock(id) FROM maildrops WHERE name = $1";
const UNLOCK: &str = "SELECT pg_advisory_unlock($1)";

/// One dedicated connection that holds advisory locks.
#[derive(Debug)]
pub(crate) struct LockConn {
    pub(crate) client: Client,
    /// Cancelled when the connection ends: its locks are gone.
    lost: CancellationToken,
    /// Statements prepared on this connection, by their (constant) text.
    statements: Mutex<HashMap<&'static str, Statement>>,
}

impl LockConn {
    pub(crate) fn is_lost(&self) -> bool {
        self.lost.is_cancelled() || self.client.is_closed()
    }

    /// Runs the constant `sql` as a statement prepared on this
    /// connection, for at most one row; prepared again when a changed
    /// table changed its result type, as the pool's are
    /// ([`run_prepared`]).
    pub(crate) async fn query_prepared_opt(
        &self,
        sql: &'static str,
        params: &Params<'_>,
    ) -> Result<Option<Row>, tokio_postgres::Error> {
        let mut conn = self;
        run_prepared::<_, QueryOpt>(&mut conn, sql, params).await
    }

    /// As [`LockConn::query_prepared_opt`], for the number of rows
    /// changed.
    pub(crate) async fn execute_prepared(
        &self,
        sql: &'static str,
        params: &Params<'_>,
    ) -> Result<u64, tokio_postgres::Error> {
        let mut conn = self;
        run_prepared::<_, Execute>(&mut conn, sql, params).await
    }

    fn statements(&self) -> std::sync::MutexGuard<'_, HashMap<&'static str, Statement>> {
        self.statements.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The statements are this program's constants, a handful.
impl Statements for &LockConn {
    fn client(&self) -> &Client {
        &self.client
    }

    fn cached(&mut self, sql: &'static str) -> Option<Statement> {
        self.statements().get(sql).cloned()
    }

    fn keep(&mut self, sql: &'static str, statement: Statement) {
        self.statements().insert(sql, statement);
    }

    fn forget(&mut self, sql: &'static str) {
        self.statements().remove(sql);
    }
}

/// What [`Locks::lock`] found.
#[derive(Debug)]
pub(crate) enum Lock {
    /// The lock, and the maildrop's id.
    Held(i64, Held),
    /// Another session (here or on another node) holds it.
    Busy,
    /// No maildrop has that name.
    Missing,
}

/// The lock connections of one node and the maildrops it holds.
#[derive(Debug)]
pub(crate) struct Locks {
    pool: Arc<Pool>,
    slots: Vec<tokio::sync::Mutex<Option<Arc<LockConn>>>>,
    /// The names of the maildrops this node holds.
    held: Mutex<HashSet<String>>,
}

/// A maildrop lock held by this node. Dropping it unlocks (in a spawned
/// task, since `Drop` cannot wait).
#[derive(Debug)]
pub(crate) struct Held {
    name: String,
    key: i64,
    conn: Arc<LockConn>,
    locks: Arc<Locks>,
    unlocked: bool,
}

impl Locks {
    pub(crate) fn new(pool: Arc<Pool>, connections: usize) -> Arc<Locks> {
        Arc::new(Locks {
            pool,
            slots: (0..connections.max(1))
                .map(|_| tokio::sync::Mutex::new(None))
                .collect(),
            held: Mutex::new(HashSet::new()),
        })
    }

    fn held(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes the lock on the maildrop named `name` without waiting.
    pub(crate) async fn lock(self: &Arc<Self>, name: &str) -> Result<Lock, PgError> {
        if !self.held().insert(name.to_owned()) {
            return Ok(Lock::Busy);
        }
        let result = async {
            let mut conn = self.conn(name).await?;
            let row = match conn.query_prepared_opt(LOCK, &[(&name, Type::TEXT)]).await {
                // The connection went under the statement (a restart, a
                // failover, a terminated backend) before its loss was
                // noticed: its locks went with it, so the lock is taken
                // once more, on a new connection.
                Err(e) if connection_gone(&conn.client, &e) => {
                    conn.lost.cancel();
                    conn = self.conn(name).await?;
                    conn.query_prepared_opt(LOCK, &[(&name, Type::TEXT)])
                        .await?
                }
                row => row?,
            };
            // Columns of another type than this build knows (a schema
            // changed by hand): an error for this login, not a panic of
            // the session's task.
            row.map(|row| {
                Ok::<_, PgError>((column::<i64>(&row, 0)?, column::<bool>(&row, 1)?, conn))
            })
            .transpose()
        }
        .await;
        match result {
            Ok(Some((key, true, conn))) => Ok(Lock::Held(
                key,
                Held {
                    name: name.to_owned(),
                    key,
                    conn,
                    locks: Arc::clone(self),
                    unlocked: false,
                },
            )),
            other => {
                self.held().remove(name);
                match other? {
                    None => Ok(Lock::Missing),
                    Some(_) => Ok(Lock::Busy),
                }
            }
        }
    }

    /// The live lock connection for maildrop `name`, connecting when the
    /// last one broke. One name always gets the same slot.
    async fn conn(&self, name: &str) -> Result<Arc<LockConn>, PgError> {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        name.hash(&mut hasher);
        let index = (hasher.finish() % self.slots.len() as u64) as usize;
        let mut slot = self.slots[index].lock().await;
        if let Some(conn) = slot.as_ref().filter(|c| !c.is_lost()) {
            return Ok(Arc::clone(conn));
        }
        let conn = self.connect().await?;
        *slot = Some(Arc::clone(&conn));
        Ok(conn)
    }

    async fn connect(&self) -> Result<Arc<LockConn>, PgError> {
        let (client, connection) = self.pool.open().await?;
        let lost = CancellationToken::new();
        let conn = Arc::new(LockConn {
            client,
            lost: lost.clone(),
            statements: Mutex::new(HashMap::new()),
        });
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::error!(%error, "lock connection broke; its maildrop locks are lost");
            }
            lost.cancel();
        });
        tokio::spawn(ping(Arc::downgrade(&conn)));
        Ok(conn)
    }
}

/// Fails unless each connection `pool` opens keeps one server session for
/// its whole life, as the advisory locks need. A pooler that assigns a
/// server session per transaction (PgBouncer's `pool_mode = transaction`)
/// gives itself away: while other clients hold server sessions in open
/// transactions, the first connection's statements move to another
/// session, or another client is given the session the first one used.
/// Run at start; it opens `PROBES + 1` connections and closes them.
pub(crate) async fn check_session_bound(pool: &Pool) -> Result<(), PgError> {
    let first = pool.connect().await?;
    let pid = backend_pid(&first).await?;
    let mut holders = Vec::with_capacity(PROBES);
    for _ in 0..PROBES {
        let other = pool.connect().await?;
        // A transaction keeps its server session from every other client
        // in any pooling mode.
        let theirs = match other.simple_query("BEGIN").await {
            Ok(_) => backend_pid(&other).await,
            Err(e) => Err(e.into()),
        };
        let theirs = match theirs {
            Ok(theirs) => theirs,
            // PgBouncer's statement mode ("transaction blocks not allowed
            // in statement pooling mode"); any other refusal (a pooler
            // out of server connections) is an error of its own.
            Err(PgError::Db(e))
                if e.as_db_error()
                    .is_some_and(|d| d.message().contains("pooling mode")) =>
            {
                return Err(PgError::NotSessionBound(format!(
                    "a transaction was refused: {}",
                    e.as_db_error().map_or("", |d| d.message())
                )));
            }
            Err(e) => return Err(e),
        };
        if theirs == pid {
            return Err(PgError::NotSessionBound(
                "another client was given this connection's server session".into(),
            ));
        }
        if backend_pid(&first).await? != pid {
            return Err(PgError::NotSessionBound(
                "one connection's statements ran in two server sessions".into(),
            ));
        }
        holders.push(other);
    }
    for other in holders {
        let _ = other.simple_query("ROLLBACK").await;
    }
    Ok(())
}

/// The server process of `client`'s session, asked without a prepared
/// statement (which a transaction pooler could break on its own).
async fn backend_pid(client: &Client) -> Result<i64, PgError> {
    let messages = client.simple_query("SELECT pg_backend_pid()").await?;
    messages
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0)?.parse().ok(),
            _ => None,
        })
        .ok_or_else(|| PgError::NotSessionBound("pg_backend_pid() gave no answer".into()))
}

/// Notices a lock connection that died without a TCP reset (a network
/// partition), so that its sessions stop trusting their locks.
async fn ping(conn: Weak<LockConn>) {
    loop {
        tokio::time::sleep(PING_INTERVAL).await;
        let Some(conn) = conn.upgrade() else { return };
        if conn.is_lost() {
            return;
        }
        let alive = tokio::time::timeout(PING_TIMEOUT, conn.client.simple_query("")).await;
        if !matches!(alive, Ok(Ok(_))) {
            tracing::error!("lock connection does not answer; its maildrop locks are lost");
            conn.lost.cancel();
            return;
        }
    }
}

impl Held {
    /// The connection that holds the lock: statements run on it succeed
    /// only while the lock is held.
    pub(crate) fn conn(&self) -> &LockConn {
        &self.conn
    }

    /// Unlocks now and waits for it.
    pub(crate) async fn unlock(mut self) {
        if !self.conn.is_lost() {
            let done = unlock(&self.conn, self.key).await;
            if let Err(error) = done {
                tracing::warn!(%error, "maildrop unlock failed");
            }
        }
        self.unlocked = true;
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        // Removed before the unlock runs: a new session of this node then
        // locks on the same connection, where PostgreSQL executes the two
        // in order and the count ends right either way.
        self.locks.held().remove(&self.name);
        if self.unlocked || self.conn.is_lost() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime: the process is ending, and its connections (and
            // locks) with it.
            return;
        };
        let conn = Arc::clone(&self.conn);
        let key = self.key;
        runtime.spawn(async move {
            if let Err(error) = unlock(&conn, key).await {
                tracing::warn!(%error, "maildrop unlock failed");
            }
        });
    }
}

async fn unlock(conn: &LockConn, key: i64) -> Result<u64, tokio_postgres::Error> {
    conn.execute_prepared(UNLOCK, &[(&key, Type::INT8)]).await
}
