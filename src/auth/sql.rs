//! The SQL password database with the administrator's own query
//! (`[auth.sql]`): PostfixAdmin, ISPConfig and hand-made user tables on
//! PostgreSQL or MySQL/MariaDB, read where they are.
//!
//! `password_query` takes one parameter, the user name, always bound
//! (`$1` for PostgreSQL, `?` for MySQL/MariaDB), never spliced into the
//! SQL. It returns at most one row with the column `password` (a
//! `{SCHEME}data` value or a bare `$id$` crypt hash, checked by the
//! passwd-file's code) and optionally `user`, the canonical name that
//! names the maildrop. A user the query does not return (unknown, or
//! left out by `AND active = 1`) costs a decoy check and gets the answer
//! a wrong password gets, counted like one.
//!
//! `user_query`, when set, is asked with the canonical name once the
//! password query has found the user (at login, when the maildrop is
//! opened, and for delivery): columns `maildir` (the maildrop, relative
//! to `store.root`, as PostfixAdmin writes it: `example.org/alice/`),
//! `quota` (octets) and `quota_messages`, each optional; NULL or an
//! empty `maildir` means "as `store.path` says", a quota of 0 unlimited.
//!
//! Only the query's secrets are seen, so CRAM-MD5 and APOP are never
//! offered; SCRAM-SHA-256 only with `offer_scram`. A database that
//! cannot be reached, or answers after `timeout_secs`, is a temporary
//! error (`[SYS/TEMP]`), never a wrong password.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use super::cache::VerifiedCache;
use super::credential::valid_user_name;
use super::external::{temporary, Checker};
use super::name::fold;
use super::secret::ServerSecret;
use super::{AuthError, Credential, PassDb, ScramKeys, User, UserAttributes};
use crate::config::SqlConfig;
use crate::pg::pool::Pool;
use crate::pg::tls::RustlsConnect;

/// Rows read at most: a second row means the query does not name one
/// user.
const MAX_ROWS: usize = 2;

/// Which database a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// PostgreSQL, through tokio-postgres and mailbag's own pool.
    Postgres,
    /// MySQL or MariaDB, through mysql_async.
    Mysql,
}

impl Backend {
    /// The backend of `url`, or `None` for one neither speaks.
    pub fn of_url(url: &str) -> Option<Backend> {
        if url.starts_with("mysql://") {
            Some(Backend::Mysql)
        } else if url.starts_with("postgresql://")
            || url.starts_with("postgres://")
            || url.contains("dbname=")
        {
            Some(Backend::Postgres)
        } else {
            None
        }
    }
}

enum Db {
    Postgres(Arc<Pool>),
    Mysql(mysql_async::Pool),
}

/// Why the SQL passdb could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SqlSetupError {
    /// The URL does not parse.
    #[error("auth.sql.url: {0}")]
    Url(String),
    /// The CA file cannot be used.
    #[error("auth.sql.ca_file: {0}")]
    Tls(String),
}

/// Users in the administrator's own SQL table.
#[derive(Clone)]
pub struct SqlPassDb {
    inner: Arc<Inner>,
}

struct Inner {
    db: Db,
    query: String,
    /// PostgreSQL: the query as a subquery with a row limit, so that a
    /// query that matches the whole table is not read whole (MySQL rows
    /// are read one at a time and stop at the limit).
    pg_query: String,
    /// `user_query` as given (MySQL) and wrapped with a row limit
    /// (PostgreSQL).
    user_query: Option<(String, String)>,
    offer_scram: bool,
    timeout: Duration,
    checker: Checker,
}

impl std::fmt::Debug for SqlPassDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let backend = match self.inner.db {
            Db::Postgres(_) => "postgres",
            Db::Mysql(_) => "mysql",
        };
        f.debug_struct("SqlPassDb")
            .field("backend", &backend)
            .finish_non_exhaustive()
    }
}

impl SqlPassDb {
    /// A passdb for `config`; connects on first use, so a database that
    /// is down at start gives `[SYS/TEMP]` until it is back.
    pub fn new(config: &SqlConfig) -> Result<SqlPassDb, SqlSetupError> {
        let timeout = Duration::from_secs(config.timeout_secs);
        let db = match Backend::of_url(&config.url) {
            Some(Backend::Postgres) => {
                let mut pg = tokio_postgres::Config::from_str(&config.url)
                    .map_err(|e| SqlSetupError::Url(e.to_string()))?;
                if pg.get_connect_timeout().is_none() {
                    pg.connect_timeout(timeout);
                }
                let tls = match pg.get_ssl_mode() {
                    tokio_postgres::config::SslMode::Require => Some(
                        RustlsConnect::new(config.ca_file.as_deref())
                            .map_err(|e| SqlSetupError::Tls(e.to_string()))?,
                    ),
                    _ => None,
                };
                Db::Postgres(Pool::new(pg, config.pool_size, tls))
            }
            Some(Backend::Mysql) => {
                let opts = mysql_async::Opts::from_url(&config.url)
                    .map_err(|e| SqlSetupError::Url(e.to_string()))?;
                let constraints = mysql_async::PoolConstraints::new(0, config.pool_size.max(1))
                    .ok_or_else(|| SqlSetupError::Url("bad pool size".into()))?;
                let mut builder = mysql_async::OptsBuilder::from_opts(opts).pool_opts(
                    mysql_async::PoolOpts::default()
                        .with_constraints(constraints)
                        .with_inactive_connection_ttl(Duration::from_secs(60)),
                );
                if let Some(ca) = &config.ca_file {
                    builder = builder.ssl_opts(
                        mysql_async::SslOpts::default().with_root_certs(vec![ca.clone().into()]),
                    );
                }
                Db::Mysql(mysql_async::Pool::new(builder))
            }
            None => {
                return Err(SqlSetupError::Url(
                    "not a postgresql:// or mysql:// URL".into(),
                ))
            }
        };
        Ok(SqlPassDb {
            inner: Arc::new(Inner {
                db,
                query: config.password_query.clone(),
                pg_query: format!(
                    "SELECT * FROM ({}) AS mailbag_password_query LIMIT {MAX_ROWS}",
                    config.password_query.trim().trim_end_matches(';')
                ),
                user_query: config.user_query.as_ref().map(|q| {
                    let pg = format!(
                        "SELECT * FROM ({}) AS mailbag_user_query LIMIT {MAX_ROWS}",
                        q.trim().trim_end_matches(';')
                    );
                    (q.clone(), pg)
                }),
                offer_scram: config.offer_scram,
                timeout,
                checker: Checker::default(),
            }),
        })
    }

    /// With the verified-credential cache (`auth.cache_secs`).
    pub fn with_cache(mut self, cache: Option<VerifiedCache>) -> SqlPassDb {
        self.inner_mut().checker.cache = cache.map(Arc::new);
        self
    }

    /// With the server secret that made-up SCRAM values come from.
    pub fn with_secret(mut self, secret: ServerSecret) -> SqlPassDb {
        self.inner_mut().checker.secret = secret;
        self
    }

    /// With names matched whatever their letter case or not (the query
    /// gets the name folded to lower case when on).
    pub fn with_case_insensitive_names(mut self, on: bool) -> SqlPassDb {
        self.inner_mut().checker.case_insensitive = on;
        self
    }

    fn inner_mut(&mut self) -> &mut Inner {
        Arc::get_mut(&mut self.inner).expect("configured before it is shared")
    }

    /// The rows `password_query` gives for `user`: `(user, password)`,
    /// `user` `None` when the query has no such column.
    async fn query(&self, user: &str) -> Result<Vec<(Option<String>, String)>, AuthError> {
        let work = async {
            match &self.inner.db {
                Db::Postgres(pool) => {
                    let client = pool.get().await.map_err(temporary)?;
                    let rows = client
                        .query(&self.inner.pg_query, &[&user])
                        .await
                        .map_err(|e| temporary(format!("auth.sql.password_query: {e}")))?;
                    rows.iter()
                        .take(MAX_ROWS)
                        .map(|row| {
                            // NULL reads as MySQL's does: an empty name
                            // is no user, an empty secret matches nothing;
                            // neither is an error only a stored user
                            // could cause.
                            let text = |column: &str| {
                                row.try_get::<_, Option<String>>(column)
                                    .map(Option::unwrap_or_default)
                                    .map_err(|e| {
                                        temporary(format!(
                                            "auth.sql.password_query: column {column}: {e}"
                                        ))
                                    })
                            };
                            let name = match row.columns().iter().any(|c| c.name() == "user") {
                                true => Some(text("user")?),
                                false => None,
                            };
                            Ok((name, text("password")?))
                        })
                        .collect()
                }
                Db::Mysql(pool) => {
                    use mysql_async::prelude::Queryable;
                    let mut conn = pool.get_conn().await.map_err(temporary)?;
                    let mut result = conn
                        .exec_iter(self.inner.query.as_str(), (user,))
                        .await
                        .map_err(|e| temporary(format!("auth.sql.password_query: {e}")))?;
                    let mut rows = Vec::new();
                    while rows.len() < MAX_ROWS {
                        let Some(row) = result.next().await.map_err(temporary)? else {
                            break;
                        };
                        rows.push(row);
                    }
                    result.drop_result().await.map_err(temporary)?;
                    rows.into_iter()
                        .map(|mut row| {
                            let name =
                                match row.columns_ref().iter().any(|c| c.name_str() == "user") {
                                    true => Some(mysql_text(&mut row, "user")?),
                                    false => None,
                                };
                            Ok((name, mysql_text(&mut row, "password")?))
                        })
                        .collect()
                }
            }
        };
        tokio::time::timeout(self.inner.timeout, work)
            .await
            .unwrap_or_else(|_| Err(temporary("auth.sql: the database did not answer in time")))
    }

    /// The canonical name and the stored secret of `user`.
    async fn lookup(&self, user: &str) -> Result<Option<(String, String)>, AuthError> {
        if !valid_user_name(user) {
            return Ok(None);
        }
        let asked = fold(user, self.inner.checker.case_insensitive);
        let rows = self.query(&asked).await?;
        match &rows[..] {
            [] => Ok(None),
            [(name, password)] => {
                let name = name.clone().unwrap_or_else(|| asked.into_owned());
                Ok(valid_user_name(&name).then(|| (name, password.clone())))
            }
            _ => Err(AuthError::Temporary(format!(
                "auth.sql.password_query returns more than one row for {user:?}"
            ))),
        }
    }
}

impl SqlPassDb {
    /// The rows `user_query` gives for the canonical name `user`, as
    /// what they say about the maildrop and its quota.
    async fn user_rows(
        &self,
        query: &(String, String),
        user: &str,
    ) -> Result<Vec<UserAttributes>, AuthError> {
        let failed = |e: &dyn std::fmt::Display| temporary(format!("auth.sql.user_query: {e}"));
        let work = async {
            match &self.inner.db {
                Db::Postgres(pool) => {
                    let client = pool.get().await.map_err(temporary)?;
                    let rows = client
                        .query(&query.1, &[&user])
                        .await
                        .map_err(|e| failed(&e))?;
                    rows.iter()
                        .take(MAX_ROWS)
                        .map(|row| {
                            Ok(UserAttributes {
                                maildrop: pg_text(row, "maildir")
                                    .map_err(|e| failed(&e))?
                                    .filter(|m| !m.is_empty()),
                                quota_octets: pg_count(row, "quota").map_err(|e| failed(&e))?,
                                quota_messages: pg_count(row, "quota_messages")
                                    .map_err(|e| failed(&e))?,
                            })
                        })
                        .collect()
                }
                Db::Mysql(pool) => {
                    use mysql_async::prelude::Queryable;
                    let mut conn = pool.get_conn().await.map_err(temporary)?;
                    let mut result = conn
                        .exec_iter(query.0.as_str(), (user,))
                        .await
                        .map_err(|e| failed(&e))?;
                    let mut rows = Vec::new();
                    while rows.len() < MAX_ROWS {
                        let Some(row) = result.next().await.map_err(temporary)? else {
                            break;
                        };
                        rows.push(row);
                    }
                    result.drop_result().await.map_err(temporary)?;
                    rows.into_iter()
                        .map(|row| {
                            Ok(UserAttributes {
                                maildrop: mysql_value(&row, "maildir")
                                    .map(|v| mysql_string(v).ok_or("column maildir: not text"))
                                    .transpose()
                                    .map_err(|e| failed(&e))?
                                    .filter(|m| !m.is_empty()),
                                quota_octets: mysql_value(&row, "quota")
                                    .map(|v| mysql_count(v).ok_or("column quota: not a count"))
                                    .transpose()
                                    .map_err(|e| failed(&e))?,
                                quota_messages: mysql_value(&row, "quota_messages")
                                    .map(|v| {
                                        mysql_count(v).ok_or("column quota_messages: not a count")
                                    })
                                    .transpose()
                                    .map_err(|e| failed(&e))?,
                            })
                        })
                        .collect()
                }
            }
        };
        tokio::time::timeout(self.inner.timeout, work)
            .await
            .unwrap_or_else(|_| Err(temporary("auth.sql: the database did not answer in time")))
    }

    /// What `user_query` says about the canonical user `user`: nothing
    /// when it returns no row, a temporary error when it returns two.
    async fn user_attributes(&self, user: &str) -> Result<UserAttributes, AuthError> {
        let Some(query) = &self.inner.user_query else {
            return Ok(UserAttributes::default());
        };
        let rows = self.user_rows(query, user).await?;
        if rows.len() > 1 {
            return Err(AuthError::Temporary(format!(
                "auth.sql.user_query returns more than one row for {user:?}"
            )));
        }
        Ok(rows.into_iter().next().unwrap_or_default())
    }
}

/// A text column of a PostgreSQL row; `None` when the query has no such
/// column or it is NULL.
fn pg_text(row: &tokio_postgres::Row, column: &str) -> Result<Option<String>, String> {
    if !row.columns().iter().any(|c| c.name() == column) {
        return Ok(None);
    }
    row.try_get::<_, Option<String>>(column)
        .map_err(|e| format!("column {column}: {e}"))
}

/// A count column (octets, messages) of a PostgreSQL row, of any integer
/// type (or text of digits); negative values refused. `None` when the
/// query has no such column or it is NULL.
fn pg_count(row: &tokio_postgres::Row, column: &str) -> Result<Option<u64>, String> {
    if !row.columns().iter().any(|c| c.name() == column) {
        return Ok(None);
    }
    let bad = || format!("column {column}: not a count");
    let value = if let Ok(v) = row.try_get::<_, Option<i64>>(column) {
        v
    } else if let Ok(v) = row.try_get::<_, Option<i32>>(column) {
        v.map(i64::from)
    } else if let Ok(v) = row.try_get::<_, Option<i16>>(column) {
        v.map(i64::from)
    } else {
        let text = row
            .try_get::<_, Option<String>>(column)
            .map_err(|_| bad())?;
        match text {
            Some(t) => Some(t.trim().parse::<i64>().map_err(|_| bad())?),
            None => None,
        }
    };
    value
        .map(|v| u64::try_from(v).map_err(|_| bad()))
        .transpose()
}

/// A column of a MySQL row; `None` when there is no such column or it
/// is NULL.
fn mysql_value<'r>(row: &'r mysql_async::Row, column: &str) -> Option<&'r mysql_async::Value> {
    let i = row
        .columns_ref()
        .iter()
        .position(|c| c.name_str() == column)?;
    match row.as_ref(i)? {
        mysql_async::Value::NULL => None,
        value => Some(value),
    }
}

fn mysql_string(value: &mysql_async::Value) -> Option<String> {
    match value {
        mysql_async::Value::Bytes(b) => String::from_utf8(b.clone()).ok(),
        _ => None,
    }
}

fn mysql_count(value: &mysql_async::Value) -> Option<u64> {
    match value {
        mysql_async::Value::Int(i) => u64::try_from(*i).ok(),
        mysql_async::Value::UInt(u) => Some(*u),
        mysql_async::Value::Bytes(b) => std::str::from_utf8(b).ok()?.trim().parse().ok(),
        _ => None,
    }
}

/// A text column of a MySQL row (NULL is no secret: an empty string,
/// which no password matches).
fn mysql_text(row: &mut mysql_async::Row, column: &str) -> Result<String, AuthError> {
    let value: Option<Option<String>> = row
        .take_opt(column)
        .transpose()
        .map_err(|e| temporary(format!("auth.sql.password_query: column {column}: {e}")))?;
    match value {
        Some(value) => Ok(value.unwrap_or_default()),
        None => Err(temporary(format!(
            "auth.sql.password_query: no column {column}"
        ))),
    }
}

impl PassDb for SqlPassDb {
    async fn verify(&self, user: &str, credential: &Credential) -> Result<String, AuthError> {
        let found = self.lookup(user).await?;
        self.inner.checker.verify(found, credential).await
    }

    async fn user_exists(&self, user: &str) -> Result<Option<String>, AuthError> {
        Ok(self.lookup(user).await?.map(|(name, _)| name))
    }

    fn has_user_attributes(&self) -> bool {
        self.inner.user_query.is_some()
    }

    /// `password_query` says who the user is (and whether active),
    /// `user_query`, asked with the canonical name, where the mail goes.
    async fn find_user(&self, user: &str) -> Result<Option<User>, AuthError> {
        let Some(name) = self.user_exists(user).await? else {
            return Ok(None);
        };
        Ok(Some(User {
            attributes: self.user_attributes(&name).await?,
            name,
        }))
    }

    async fn scram_keys(&self, user: &str) -> Result<(String, ScramKeys), AuthError> {
        let found = self.lookup(user).await?;
        self.inner.checker.scram_keys(user, found).await
    }

    fn cram_md5_possible(&self) -> bool {
        false
    }

    fn apop_possible(&self) -> bool {
        false
    }

    fn scram_possible(&self) -> bool {
        self.inner.offer_scram
    }
}
