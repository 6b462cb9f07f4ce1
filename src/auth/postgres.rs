//! The PostgreSQL password database: the `users` table, with secrets in
//! the passwd-file's `{SCHEME}data` format, checked by the same
//! [`scheme`](super::scheme) code. Shares the store's connection pool.
//!
//! Also the administration behind `mailbag user add|passwd|del|list` when
//! the store is PostgreSQL.
//!
//! `cram_md5_possible` and `apop_possible` are asked synchronously (for
//! CAPA and the greeting), so they are answered from flags that a
//! background task refreshes.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::cache::VerifiedCache;
use super::credential::{credential_matches, presented_bytes, stored_scram_keys, valid_user_name};
use super::name::fold;
use super::scheme::{self, Scheme};
use super::secret::ServerSecret;
use super::timing::CheckTimes;
use super::{AuthError, Credential, PassDb, ScramKeys};
use crate::pg::pool::Pool;
use crate::pg::PgError;
use tokio_postgres::types::Type;

/// How often the APOP and CRAM-MD5 flags are re-read.
const FLAGS_REFRESH: Duration = Duration::from_secs(60);

/// Why a user could not be changed.
#[derive(Debug, thiserror::Error)]
pub enum UserError {
    /// The name is not a valid user name (see [`super::name`]).
    #[error("invalid user name {0:?}: {rule}", rule = super::name::RULE)]
    InvalidName(String),
    /// `add` for a user that exists.
    #[error("user {0} exists already")]
    Exists(String),
    /// `passwd` or `del` for a user that does not exist.
    #[error("no such user: {0}")]
    Missing(String),
    /// The password could not be hashed.
    #[error("cannot hash the password: {0}")]
    Scheme(#[from] scheme::SchemeError),
    /// The database failed.
    #[error(transparent)]
    Db(#[from] PgError),
}

/// Users in PostgreSQL.
#[derive(Debug, Clone)]
pub struct PgPassDb {
    pool: Arc<Pool>,
    flags: Arc<Flags>,
    /// `auth.cache_secs`: recent successful password checks.
    cache: Option<Arc<VerifiedCache>>,
    /// What made-up SCRAM values are derived from.
    secret: ServerSecret,
    /// How long failures wait (see [`timing`](super::timing)).
    times: Arc<CheckTimes>,
    /// How long SCRAM first steps wait.
    scram_times: Arc<CheckTimes>,
    /// `auth.case_insensitive_names`: names match whatever their case.
    case_insensitive: bool,
    /// `auth.rehash_to`: the scheme legacy secrets are re-hashed to after
    /// a successful password login (off unless set).
    rehash_to: Option<Scheme>,
}

#[derive(Debug, Default)]
struct Flags {
    cram: AtomicBool,
    apop: AtomicBool,
    /// The SCRAM iteration counts users show, with how many show each,
    /// in a fixed order: what made-up first steps are drawn from.
    scram_iterations: std::sync::Mutex<Vec<(u32, u64)>>,
}

/// Iteration counts read at most (one per group of stored SCRAM keys).
const MAX_ITERATION_GROUPS: i64 = 64;

/// Two rows that name matching makes one user (written by hand around
/// `mailbag user add`): which one a login means cannot be told, so none
/// is chosen.
fn case_conflict(a: &str, b: &str) -> AuthError {
    AuthError::Temporary(format!(
        "users {a:?} and {b:?} differ only in letter case and \
         auth.case_insensitive_names makes them one user; rename or delete one"
    ))
}

fn temporary(e: impl std::fmt::Display) -> AuthError {
    AuthError::Temporary(e.to_string())
}

/// Column `i` of a `users` row as text: a column changed by hand to
/// another type is a temporary error for this login, never a panic of
/// the session's task.
fn text(row: &tokio_postgres::Row, i: usize) -> Result<String, AuthError> {
    row.try_get(i).map_err(temporary)
}

/// The secret in column `i`. A NULL one (the schema's NOT NULL dropped,
/// a user disabled by hand) is empty: no password matches it, and the
/// login is answered and counted like any wrong password.
fn secret(row: &tokio_postgres::Row, i: usize) -> Result<String, AuthError> {
    Ok(row
        .try_get::<_, Option<String>>(i)
        .map_err(temporary)?
        .unwrap_or_default())
}

impl PgPassDb {
    /// A passdb on `pool`. Reads the flags once now (a database that is
    /// down leaves them off) and keeps refreshing them while the passdb
    /// lives.
    /// With the verified-credential cache (`auth.cache_secs`; `None`
    /// keeps it off).
    pub fn with_cache(mut self, cache: Option<VerifiedCache>) -> PgPassDb {
        self.cache = cache.map(Arc::new);
        self
    }

    /// With the server secret (`auth.secret_file`) that made-up SCRAM
    /// values come from, so that every node shows the same ones.
    pub fn with_secret(mut self, secret: ServerSecret) -> PgPassDb {
        self.secret = secret;
        self
    }

    /// With names matched whatever their letter case or not
    /// (`auth.case_insensitive_names`; on unless turned off).
    pub fn with_case_insensitive_names(mut self, on: bool) -> PgPassDb {
        self.case_insensitive = on;
        self
    }

    /// With legacy secrets re-hashed to `scheme` after a successful
    /// password login (`auth.rehash_to`; `None` keeps it off): an UPDATE
    /// that applies only while the row still holds the secret that was
    /// checked. The login never waits for it, nor fails because of it.
    pub fn with_rehash(mut self, scheme: Option<Scheme>) -> PgPassDb {
        self.rehash_to = scheme;
        self
    }

    /// Re-hashes `name`'s `old` secret with the password that just
    /// matched it, in the background; logged.
    fn spawn_rehash(&self, name: String, old: String, credential: &Credential) {
        let (Some(to), Credential::Password(password)) = (self.rehash_to, credential) else {
            return;
        };
        let password = password.clone();
        let pool = Arc::clone(&self.pool);
        tokio::spawn(async move {
            let from = scheme::scheme_of(&old).map_or("?", Scheme::name);
            let new = match super::hashing(move || scheme::hash(to, password.expose().as_bytes()))
                .await
            {
                Ok(Ok(new)) => new,
                Ok(Err(error)) => {
                    tracing::warn!(user = %name, from, to = %to, %error, "cannot re-hash the user's password");
                    return;
                }
                Err(error) => {
                    tracing::warn!(user = %name, %error, "re-hash task failed");
                    return;
                }
            };
            let updated = async {
                pool.get()
                    .await?
                    .execute(
                        "UPDATE users SET secret = $3 WHERE name = $1 AND secret = $2",
                        &[&name, &old, &new],
                    )
                    .await
                    .map_err(PgError::from)
            }
            .await;
            match updated {
                Ok(0) => tracing::info!(user = %name, "no re-hash: the secret changed meanwhile"),
                Ok(_) => {
                    tracing::info!(user = %name, from, to = %to, "re-hashed the user's password")
                }
                Err(error) => {
                    tracing::warn!(user = %name, from, to = %to, %error, "cannot re-hash the user's password");
                }
            }
        });
    }

    pub async fn new(pool: Arc<Pool>) -> PgPassDb {
        let db = PgPassDb {
            pool,
            flags: Arc::default(),
            cache: None,
            secret: ServerSecret::random(),
            times: Arc::default(),
            scram_times: Arc::default(),
            case_insensitive: true,
            rehash_to: None,
        };
        if let Err(error) = db.refresh_flags().await {
            tracing::warn!(%error, "cannot read the users table; APOP and CRAM-MD5 off for now");
        }
        let weak = Arc::downgrade(&db.flags);
        let pool = Arc::clone(&db.pool);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(FLAGS_REFRESH).await;
                let Some(flags) = weak.upgrade() else { return };
                let db = PgPassDb {
                    pool: Arc::clone(&pool),
                    flags,
                    cache: None,
                    secret: ServerSecret::random(),
                    times: Arc::default(),
                    scram_times: Arc::default(),
                    case_insensitive: true,
                    rehash_to: None,
                };
                let _ = db.refresh_flags().await;
            }
        });
        db
    }

    async fn refresh_flags(&self) -> Result<(), PgError> {
        let row = self
            .pool
            .get()
            .await?
            .query_one(
                r"SELECT coalesce(bool_or(secret ~* '^\{(PLAIN|CLEAR|CLEARTEXT)[.}]'), false),
                         coalesce(bool_or(secret ~* '^\{(PLAIN|CLEAR|CLEARTEXT|CRAM-MD5)[.}]'), false)
                    FROM users",
                &[],
            )
            .await?;
        self.flags.apop.store(row.get(0), Ordering::Relaxed);
        self.flags.cram.store(row.get(1), Ordering::Relaxed);
        // How many users show each SCRAM iteration count: stored keys,
        // grouped by their `{SCRAM-SHA-256}<iterations>` head, and
        // plaintext-equivalent secrets, whose keys are derived.
        let rows = self
            .pool
            .get()
            .await?
            .query(
                r"SELECT min(secret), count(*) FROM users
                   WHERE secret ~* '^\{(SCRAM-SHA-256|PLAIN|CLEAR|CLEARTEXT)[.}]'
                   GROUP BY CASE WHEN secret ~* '^\{SCRAM-SHA-256\}'
                                 THEN split_part(secret, ',', 1) ELSE '' END
                   LIMIT $1",
                &[&MAX_ITERATION_GROUPS],
            )
            .await?;
        let mut counts: std::collections::BTreeMap<u32, u64> = Default::default();
        for row in rows {
            let (sample, users): (String, i64) = (row.get(0), row.get(1));
            let iterations = match scheme::scram_source(&sample) {
                scheme::ScramSource::Stored(iterations) => iterations,
                scheme::ScramSource::Derived => scheme::SCRAM_ITERATIONS,
                scheme::ScramSource::Unusable => continue,
            };
            *counts.entry(iterations).or_default() += u64::try_from(users).unwrap_or(0);
        }
        *self
            .flags
            .scram_iterations
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = counts.into_iter().collect();
        Ok(())
    }

    /// The stored secret of `user` and the name as stored. A name the
    /// name rule refuses (a row written by hand) is no user: the store
    /// could not hold its mail.
    async fn lookup(&self, user: &str) -> Result<Option<(String, String)>, AuthError> {
        if !valid_user_name(user) {
            return Ok(None);
        }
        let mut client = self.pool.get().await.map_err(temporary)?;
        let rows = if self.case_insensitive {
            // lower() under the "C" collation folds ASCII letters only,
            // as `name::fold` does, whatever the database's locale.
            client
                .query_prepared(
                    r#"SELECT name, secret FROM users
                        WHERE lower(name COLLATE "C") = $1 LIMIT 2"#,
                    &[(&fold(user, true).as_ref(), Type::TEXT)],
                )
                .await
        } else {
            client
                .query_prepared(
                    "SELECT name, secret FROM users WHERE name = $1",
                    &[(&user, Type::TEXT)],
                )
                .await
        }
        .map_err(temporary)?;
        match &rows[..] {
            [] => Ok(None),
            [row] => Ok(Some((text(row, 0)?, secret(row, 1)?))),
            [first, second, ..] => {
                // Rows written by hand around `mailbag user add`: which
                // user a login means cannot be told, so none is chosen.
                Err(case_conflict(&text(first, 0)?, &text(second, 0)?))
            }
        }
    }

    /// Adds `user` with `password` hashed by `scheme`.
    pub async fn add_user(
        &self,
        user: &str,
        password: &[u8],
        scheme: Scheme,
    ) -> Result<(), UserError> {
        if !valid_user_name(user) {
            return Err(UserError::InvalidName(user.into()));
        }
        let secret = hash(scheme, password).await?;
        let n = self
            .pool
            .get()
            .await?
            .execute(
                // A name that differs from an existing one only in case
                // would be that user wherever names match
                // case-insensitively (the default).
                r#"INSERT INTO users (name, secret)
                   SELECT $1::text, $2::text WHERE NOT EXISTS
                     (SELECT 1 FROM users WHERE lower(name COLLATE "C") = lower($1::text COLLATE "C"))
                   ON CONFLICT (name) DO NOTHING"#,
                &[&user, &secret],
            )
            .await
            .map_err(PgError::from)?;
        if n == 0 {
            return Err(UserError::Exists(user.into()));
        }
        Ok(())
    }

    /// Replaces the password of `user`.
    pub async fn set_password(
        &self,
        user: &str,
        password: &[u8],
        scheme: Scheme,
    ) -> Result<(), UserError> {
        let secret = hash(scheme, password).await?;
        let n = self
            .pool
            .get()
            .await?
            .execute(
                "UPDATE users SET secret = $2 WHERE name = $1",
                &[&user, &secret],
            )
            .await
            .map_err(PgError::from)?;
        if n == 0 {
            return Err(UserError::Missing(user.into()));
        }
        Ok(())
    }

    /// Deletes `user`; their maildrop stays, as a Maildir stays on disk.
    pub async fn delete_user(&self, user: &str) -> Result<(), UserError> {
        let n = self
            .pool
            .get()
            .await?
            .execute("DELETE FROM users WHERE name = $1", &[&user])
            .await
            .map_err(PgError::from)?;
        if n == 0 {
            return Err(UserError::Missing(user.into()));
        }
        Ok(())
    }

    /// Every user name, sorted.
    pub async fn list_users(&self) -> Result<Vec<String>, UserError> {
        let rows = self
            .pool
            .get()
            .await?
            .query("SELECT name FROM users ORDER BY name", &[])
            .await
            .map_err(PgError::from)?;
        Ok(rows.iter().map(|r| r.get(0)).collect())
    }
}

/// Hashing is slow on purpose; these run from the command line, where
/// blocking the one thread costs nothing.
async fn hash(scheme: Scheme, password: &[u8]) -> Result<String, UserError> {
    Ok(scheme::hash(scheme, password)?)
}

impl PgPassDb {
    /// Checks `credential` against `found`, a stored name and secret, or
    /// against the decoy when no user was found, at the same cost.
    async fn check(
        &self,
        found: Option<(String, String)>,
        credential: &Credential,
    ) -> Result<String, AuthError> {
        let presented = credential.clone();
        let cache = self.cache.clone();
        let rehash = self.rehash_to.is_some() && matches!(credential, Credential::Password(_));
        let (verified, began) = super::hashing(move || {
            let began = Instant::now();
            let credential = presented;
            let verified = match found {
                Some((name, stored)) => {
                    credential_matches(&name, &stored, None, &credential, cache.as_deref())
                        .then(|| {
                            let due = (rehash && scheme::rehash_due(&stored)).then_some(stored);
                            (name, due)
                        })
                        .ok_or(AuthError::Invalid)
                }
                None => {
                    // An unknown user costs what a password check costs.
                    scheme::dummy_verify(presented_bytes(&credential));
                    Err(AuthError::Invalid)
                }
            };
            (verified, began)
        })
        .await
        .map_err(temporary)?;
        self.times.record(began.elapsed());
        match verified {
            Ok((name, due)) => {
                if let Some(old) = due {
                    self.spawn_rehash(name.clone(), old, credential);
                }
                Ok(name)
            }
            Err(error) => {
                // A failure takes as long as the slowest check seen,
                // whoever it was for (see `timing`).
                self.times.pad(began).await;
                Err(error)
            }
        }
    }

    /// Every spelling in one query: what [`lookup`](Self::lookup) says of
    /// each (the stored name and secret), for one round trip instead of
    /// one per spelling.
    async fn spellings(
        &self,
        users: &[String],
    ) -> Result<Vec<Option<(String, String)>>, AuthError> {
        let key = |user: &str| fold(user, self.case_insensitive).into_owned();
        let keys: Vec<String> = users
            .iter()
            .filter(|u| valid_user_name(u))
            .map(|u| key(u))
            .collect();
        if keys.is_empty() {
            return Ok(vec![None; users.len()]);
        }
        // Up to two rows per spelling tell each one's answer: more rows
        // than that mean some spelling has three or more, an error
        // whatever the rest say.
        let limit = i64::try_from(keys.len() * 2 + 1).unwrap_or(i64::MAX);
        let mut client = self.pool.get().await.map_err(temporary)?;
        let rows = if self.case_insensitive {
            client
                .query_prepared(
                    r#"SELECT name, lower(name COLLATE "C"), secret FROM users
                        WHERE lower(name COLLATE "C") = ANY($1) LIMIT $2"#,
                    &[(&keys, Type::TEXT_ARRAY), (&limit, Type::INT8)],
                )
                .await
        } else {
            client
                .query_prepared(
                    "SELECT name, name, secret FROM users WHERE name = ANY($1) LIMIT $2",
                    &[(&keys, Type::TEXT_ARRAY), (&limit, Type::INT8)],
                )
                .await
        }
        .map_err(temporary)?;
        drop(client);
        let found: Vec<(String, String, String)> = rows
            .iter()
            .map(|r| Ok((text(r, 0)?, text(r, 1)?, secret(r, 2)?)))
            .collect::<Result<_, AuthError>>()?;
        users
            .iter()
            .map(|user| {
                if !valid_user_name(user) {
                    return Ok(None);
                }
                let key = key(user);
                let mut matching = found.iter().filter(|(_, k, _)| *k == key);
                match (matching.next(), matching.next()) {
                    (None, _) => Ok(None),
                    (Some((name, _, secret)), None) => Ok(Some((name.clone(), secret.clone()))),
                    (Some((a, ..)), Some((b, ..))) => Err(case_conflict(a, b)),
                }
            })
            .collect()
    }
}

impl PassDb for PgPassDb {
    async fn verify(&self, user: &str, credential: &Credential) -> Result<String, AuthError> {
        let found = self.lookup(user).await?;
        self.check(found, credential).await
    }

    /// The spellings and the secret in one query.
    async fn verify_spellings(
        &self,
        spellings: &[String],
        _unknown: &str,
        pick: &super::PickUser<'_>,
        credential: &Credential,
    ) -> Result<String, AuthError> {
        // No spelling found a user: the decoy is checked, at the cost of
        // a real check, without another lookup.
        let mut found = self.spellings(spellings).await?;
        let names = found
            .iter()
            .map(|f| f.as_ref().map(|(name, _)| name.clone()))
            .collect();
        let entry = pick(names)?.and_then(|chosen| {
            found
                .iter_mut()
                .find_map(|f| f.take().filter(|(name, _)| *name == chosen))
        });
        self.check(entry, credential).await
    }

    async fn user_exists(&self, user: &str) -> Result<Option<String>, AuthError> {
        Ok(self.lookup(user).await?.map(|(name, _)| name))
    }

    async fn users_exist(&self, users: &[String]) -> Result<Vec<Option<String>>, AuthError> {
        Ok(self
            .spellings(users)
            .await?
            .into_iter()
            .map(|f| f.map(|(name, _)| name))
            .collect())
    }

    async fn scram_keys(&self, user: &str) -> Result<(String, ScramKeys), AuthError> {
        let found = self.lookup(user).await?;
        // Made-up values are drawn from the folded name: the spellings of
        // an unknown name agree, as a known user's do.
        let user = fold(user, self.case_insensitive).into_owned();
        let secret = self.secret.clone();
        // A made-up count drawn as users' counts are spread: one fixed
        // count would single out every user whose own count differs.
        let iterations = {
            let spread = self
                .flags
                .scram_iterations
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            secret
                .choose_weighted("scram decoy", &user, &spread)
                .unwrap_or(scheme::SCRAM_ITERATIONS)
        };
        let (found, began) = super::hashing(move || {
            let began = Instant::now();
            // The salt is the stored name's, so every spelling of a
            // name that matches it gets the same keys.
            let keys = found.and_then(|(name, stored)| {
                let keys = stored_scram_keys(&secret, &name, &stored)?;
                Some((name, keys))
            });
            // Made up from the server secret, the same on every node, as
            // cheaply as stored keys are read.
            let found = keys.unwrap_or_else(|| {
                let keys = secret.scram_lookalike(&user, iterations);
                (user, keys)
            });
            (found, began)
        })
        .await
        .map_err(temporary)?;
        // Every name is answered when the slowest kind of lookup would be
        // (a plaintext user's keys are derived; any row may be one).
        self.scram_times.record(began.elapsed());
        self.scram_times.time_scram_derivation().await;
        self.scram_times.pad(began).await;
        Ok(found)
    }

    fn cram_md5_possible(&self) -> bool {
        self.flags.cram.load(Ordering::Relaxed)
    }

    fn apop_possible(&self) -> bool {
        self.flags.apop.load(Ordering::Relaxed)
    }
}
