//! Schema migrations: numbered SQL files under `migrations/`, applied in
//! order by `mailbag migrate`, recorded in `schema_migrations`. A node
//! checks the version at start and refuses to serve a schema it does not
//! match, rather than fail on the first query.

use tokio_postgres::Client;

use super::PgError;

/// Every migration, oldest first: (version, SQL).
pub const MIGRATIONS: &[(i32, &str)] = &[
    (1, include_str!("../../../migrations/0001_initial.sql")),
    (
        2,
        include_str!("../../../migrations/0002_message_chunks.sql"),
    ),
    (3, include_str!("../../../migrations/0003_clusters.sql")),
    (
        4,
        include_str!("../../../migrations/0004_uidl_per_maildrop.sql"),
    ),
];

/// The version this build of mailbag needs.
pub const LATEST: i32 = MIGRATIONS[MIGRATIONS.len() - 1].0;

/// Serialises concurrent `mailbag migrate` runs. Negative, so it never
/// equals a maildrop lock (maildrop ids are positive).
const MIGRATE_LOCK: i64 = -0x006d_6169_6c62_6167;

/// The version the database is at; 0 before the first migration.
pub async fn version(client: &Client) -> Result<i32, PgError> {
    let row = client
        .query_one("SELECT to_regclass('schema_migrations') IS NOT NULL", &[])
        .await?;
    if !row.get::<_, bool>(0) {
        return Ok(0);
    }
    let row = client
        .query_one(
            "SELECT coalesce(max(version), 0) FROM schema_migrations",
            &[],
        )
        .await?;
    Ok(row.get(0))
}

/// Applies every pending migration in one transaction; returns the
/// versions applied (none when the schema is current).
pub async fn migrate(client: &mut Client) -> Result<Vec<i32>, PgError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATE_LOCK])
        .await?;
    // A migration that waits for a table behind a session that never
    // ends (an idle transaction) holds what it took so far and queues
    // every node's statements behind its own request: all deliveries and
    // logins would wait with it. It gives up instead, changing nothing.
    tx.batch_execute(&format!(
        "SET LOCAL lock_timeout = '{}'",
        crate::pg::MIGRATE_LOCK_WAIT
    ))
    .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_migrations (
             version    integer PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now()
         )",
    )
    .await?;
    let current: i32 = tx
        .query_one(
            "SELECT coalesce(max(version), 0) FROM schema_migrations",
            &[],
        )
        .await?
        .get(0);
    if current > LATEST {
        return Err(PgError::SchemaAhead {
            have: current,
            want: LATEST,
        });
    }
    let mut applied = Vec::new();
    for &(version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        tx.batch_execute(sql).await.map_err(|e| {
            if e.code() == Some(&tokio_postgres::error::SqlState::LOCK_NOT_AVAILABLE) {
                PgError::MigrateLockWait(e)
            } else {
                PgError::from(e)
            }
        })?;
        tx.execute(
            "INSERT INTO schema_migrations (version) VALUES ($1)",
            &[&version],
        )
        .await?;
        applied.push(version);
    }
    tx.commit().await?;
    Ok(applied)
}

/// Fails unless the database is at exactly [`LATEST`].
pub async fn check(client: &Client) -> Result<(), PgError> {
    let have = version(client).await?;
    match have.cmp(&LATEST) {
        std::cmp::Ordering::Less => Err(PgError::SchemaBehind { have, want: LATEST }),
        std::cmp::Ordering::Greater => Err(PgError::SchemaAhead { have, want: LATEST }),
        std::cmp::Ordering::Equal => Ok(()),
    }
}
