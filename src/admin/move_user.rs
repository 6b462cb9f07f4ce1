//! `mailbag move-user`: moves one user's maildrop from the PostgreSQL
//! cluster the directory places them on to another, while their mail
//! keeps arriving, keeping every message's UIDL (so a client downloads
//! nothing again), losing and doubling nothing.
//!
//! The steps, each safe to repeat, so a move stopped anywhere is finished
//! by running the same command again:
//!
//! 1. take this user's move lock in the directory (one move at a time)
//!    and the source maildrop's advisory lock, the one a POP3 session
//!    holds: a session in progress makes the move wait (`--wait`), then
//!    refuse with nothing changed; logins during the move get `[IN-USE]`;
//! 2. record `move_to` in the directory, then mark the source `moving`:
//!    the update waits for deliveries that hold the row's share lock and
//!    have not committed, and every later delivery sees `moving` and
//!    answers a temporary failure, which the MTA retries;
//! 3. lock the destination's maildrop and mark it `incoming` (not served);
//! 4. copy the messages in batches, each batch one transaction that skips
//!    UIDLs already there and then checks that every UIDL of the batch is
//!    in the destination maildrop;
//! 5. mark the destination `active`;
//! 6. switch the directory to the destination (`move_from` remembers the
//!    source);
//! 7. delete the source's messages and mark it `moved` in one transaction,
//!    then clear `move_from`.
//!
//! A node that read the old placement before step 6 finds `moving` (a
//! temporary failure or `[IN-USE]`); after step 7 it finds `moved` and
//! asks the directory again. It never serves or fills the old copy.

use std::time::{Duration, Instant};

use tokio_postgres::types::Type;
use tokio_postgres::Client;

use crate::pg::PgError;
use crate::store::postgres::check_user;
use crate::store::postgres::cluster::{PgClusters, Several};
use crate::store::postgres::{PgStore, CHUNK_OCTETS};
use crate::store::{StoreError, LOCKED_WAITS};

/// The directory's advisory lock class for moves: `pg_advisory_lock(class,
/// hashtext(name))`, two 32-bit keys, a space apart from the maildrop
/// locks' 64-bit keys. ("move" in ASCII.)
pub const MOVE_LOCK_CLASS: i32 = 0x6d6f_7665;

/// Messages copied per transaction.
const BATCH_MESSAGES: usize = 100;
/// Octets copied per transaction, above one message; a larger message goes
/// alone.
const BATCH_OCTETS: i64 = 16 * 1024 * 1024;
/// Messages listed per query.
const PAGE: i64 = 1000;
/// Octets per `message_chunks` row, as a delivery cuts them.
const CHUNK: i32 = CHUNK_OCTETS as i32;
/// How often a held maildrop lock is tried again while waiting.
const LOCK_POLL: Duration = Duration::from_millis(200);

/// How a move runs.
#[derive(Debug, Clone, Default)]
pub struct MoveOptions {
    /// How long to wait for a POP3 session that holds the maildrop.
    pub wait: Duration,
    /// Stop (as if killed) after this step; for testing that every step
    /// can be resumed.
    pub stop_after: Option<u32>,
    /// Messages per copy transaction; 0 for the default (100).
    pub batch_messages: usize,
}

/// What a move did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Moved {
    /// The cluster the maildrop left; `None` when it was there already.
    pub from: Option<String>,
    /// The cluster that holds it now.
    pub to: String,
    /// Messages in the destination's copy that came from the source.
    pub messages: u64,
    /// Their octets (as STAT counts them).
    pub octets: u64,
}

/// Why a move did not finish.
#[derive(Debug, thiserror::Error)]
pub enum MoveError {
    /// Refused, with nothing (more) changed; the text says why.
    #[error("{0}")]
    Refused(String),
    /// A database failed; running the command again resumes.
    #[error("database failure (run move-user again to resume)")]
    Pg(#[from] PgError),
    /// The store refused.
    #[error("{0} (run move-user again to resume)")]
    Store(#[from] StoreError),
    /// Stopped on purpose after a step.
    #[error("stopped after step {0}; run move-user again to finish")]
    Stopped(u32),
}

impl From<tokio_postgres::Error> for MoveError {
    fn from(e: tokio_postgres::Error) -> Self {
        MoveError::Pg(PgError::Db(e))
    }
}

/// Moves `user`'s maildrop to cluster `to` (see the module's
/// documentation), or finishes a move of theirs that stopped.
pub async fn move_user(
    store: &PgClusters,
    user: &str,
    to: &str,
    options: &MoveOptions,
) -> Result<Moved, MoveError> {
    let Some(clusters) = store.clusters() else {
        return Err(MoveError::Refused(
            "store.url names one database: there is no other cluster to move to \
             (list the clusters in [[store.clusters]])"
                .into(),
        ));
    };
    check_user(user).map_err(|_| {
        MoveError::Refused(
            "user name refused (empty, over 255 octets, or control characters)".into(),
        )
    })?;
    if clusters.member(to).is_err() {
        let names: Vec<&str> = clusters.names().collect();
        return Err(MoveError::Refused(format!(
            "no cluster named {:?} in store.clusters (there are: {})",
            to.chars().take(64).collect::<String>(),
            names.join(", ")
        )));
    }
    let stop = |step: u32| {
        if options.stop_after == Some(step) {
            Err(MoveError::Stopped(step))
        } else {
            Ok(())
        }
    };

    let directory = clusters.directory().pool().connect().await?;
    take_move_lock(&directory, user).await?;
    // The lock goes with the connection; it is released here too, so that
    // a move run again straight after this one (stopped, or to finish)
    // finds it free rather than waiting for the backend to go.
    let moved: Result<Moved, MoveError> = async {
        // A name the directory does not know and no cluster holds is a typo
        // (or a user who never had mail): nothing to move, and no directory
        // row or maildrop is made for it.
        if clusters.read_placement(user).await?.is_none() && clusters.holding(user).await?.is_empty() {
            return Err(MoveError::Refused(
                "no placement and no maildrop for this user on any cluster: nothing to move \
                 (give the canonical name, as `mailbag user list` shows it)"
                    .into(),
            ));
        }
        let mut placement = clusters.placement(user).await?;

        if placement.move_from.as_ref() == Some(&placement.cluster)
            || placement.move_to.as_ref() == Some(&placement.cluster)
        {
            return Err(MoveError::Refused(
                "the directory's row for this user names one cluster as both ends of a move: \
                 check it by hand"
                    .into(),
            ));
        }
        if let Some(from) = placement.move_from.clone() {
            // An earlier move switched the directory but did not remove the
            // old copy: finish that first. The switch came after a verified
            // copy, and the old copy has been frozen since, so it is only
            // deleted (copying it again could bring back messages the user
            // deleted from the new copy since).
            let source = member(clusters, &from)?;
            let mut source_conn = source.pool().connect().await?;
            let source_id = lock_maildrop(&source_conn, user, &from, "moved", options.wait).await?;
            match state(&source_conn, source_id).await?.as_str() {
                "moving" | "moved" => {}
                other => {
                    return Err(MoveError::Refused(format!(
                        "the directory says the move from {from} switched, but the maildrop there is \
                         {other}: check the clusters by hand"
                    )))
                }
            }
            remove_source(&mut source_conn, source_id).await?;
            drop(source_conn);
            directory
                .execute(
                    "UPDATE placements SET move_from = NULL, changed = now() WHERE name = $1",
                    &[&user],
                )
                .await?;
            placement.move_from = None;
            if placement.cluster == to {
                return Ok(Moved {
                    from: Some(from),
                    to: to.to_owned(),
                    messages: 0,
                    octets: 0,
                });
            }
        }
        if let Some(pending) = &placement.move_to {
            if pending != to {
                let pending: String = pending.chars().take(64).collect();
                return Err(MoveError::Refused(format!(
                    "an unfinished move of this user to {pending:?} is in the directory: \
                     run move-user --to {pending:?} to finish it first"
                )));
            }
        }
        if placement.cluster == to {
            return Ok(Moved {
                from: None,
                to: to.to_owned(),
                messages: 0,
                octets: 0,
            });
        }
        let from = placement.cluster.clone();
        let source = member(clusters, &from)?;
        let destination = member(clusters, to)?;

        // 1. The source maildrop's lock, before anything changes: a refusal
        // here leaves everything as it was.
        let mut source_conn = source.pool().connect().await?;
        let source_id = lock_maildrop(&source_conn, user, &from, "active", options.wait).await?;

        // 2. Record the move, then freeze the source.
        directory
            .execute(
                "UPDATE placements SET move_to = $2, changed = now() WHERE name = $1 AND cluster = $3",
                &[&user, &to, &from],
            )
            .await?;
        stop(1)?;
        let frozen = source_conn
            .execute(
                "UPDATE maildrops SET state = 'moving' WHERE id = $1 AND state IN ('active', 'moving')",
                &[&source_id],
            )
            .await?;
        if frozen == 0 {
            let found = state(&source_conn, source_id).await?;
            return Err(MoveError::Refused(format!(
                "the directory places this user on {from}, but the maildrop there is {found}: \
                 check the clusters by hand"
            )));
        }
        stop(2)?;

        // 3. The destination: locked and not served until it is whole.
        let mut destination_conn = destination.pool().connect().await?;
        let destination_id =
            lock_maildrop(&destination_conn, user, to, "incoming", options.wait).await?;
        if state(&destination_conn, destination_id).await? != "active" {
            // What an earlier attempt left there is copies of messages the
            // source still had then, some perhaps deleted since: they go,
            // and the copy starts over. (An `active` destination is one this
            // move made whole before it stopped, with the source frozen
            // since: it stays.)
            destination_conn
                .execute(
                    "DELETE FROM messages WHERE maildrop_id = $1",
                    &[&destination_id],
                )
                .await?;
        }
        destination_conn
            .execute(
                "UPDATE maildrops SET state = 'incoming' WHERE id = $1",
                &[&destination_id],
            )
            .await?;
        stop(3)?;

        // 4. Copy.
        let copied = copy(
            &mut source_conn,
            source_id,
            &mut destination_conn,
            destination_id,
            to,
            if options.batch_messages == 0 {
                BATCH_MESSAGES
            } else {
                options.batch_messages
            },
            &|batch| if batch == 1 { stop(4) } else { Ok(()) },
        )
        .await;
        let copied = match copied {
            Ok(copied) => copied,
            Err(MoveError::Refused(why)) => {
                // The destination did not keep a batch whole: the move
                // cannot keep every UIDL.
                // Serve the source again, as before the move; the partial
                // copy stays `incoming`, never served (a later move there
                // skips what it already holds).
                source_conn
                    .execute(
                        "UPDATE maildrops SET state = 'active' WHERE id = $1",
                        &[&source_id],
                    )
                    .await?;
                directory
                    .execute(
                        "UPDATE placements SET move_to = NULL, changed = now() WHERE name = $1",
                        &[&user],
                    )
                    .await?;
                return Err(MoveError::Refused(format!(
                    "{why}; the move was undone and the user is served from {from} again"
                )));
            }
            Err(e) => return Err(e),
        };

        // 5. The destination is whole: serve it.
        destination_conn
            .execute(
                "UPDATE maildrops SET state = 'active' WHERE id = $1",
                &[&destination_id],
            )
            .await?;
        stop(5)?;

        // 6. Switch the directory.
        directory
            .execute(
                "UPDATE placements
                    SET cluster = move_to, move_to = NULL, move_from = cluster, changed = now()
                  WHERE name = $1 AND move_to = $2",
                &[&user, &to],
            )
            .await?;
        stop(6)?;

        // 7. Remove the source's copy, leaving the `moved` mark.
        remove_source(&mut source_conn, source_id).await?;
        stop(7)?;
        directory
            .execute(
                "UPDATE placements SET move_from = NULL, changed = now() WHERE name = $1",
                &[&user],
            )
            .await?;
        // Closing the connections releases the maildrop locks.
        drop((source_conn, destination_conn));
        Ok(Moved {
            from: Some(from),
            to: to.to_owned(),
            messages: copied.0,
            octets: copied.1,
        })
    }
    .await;
    let _ = directory
        .execute(
            "SELECT pg_advisory_unlock($1, hashtext($2))",
            &[&MOVE_LOCK_CLASS, &user],
        )
        .await;
    moved
}

/// Takes the advisory lock that keeps two moves of `user` apart, on the
/// directory connection `directory`: tried again after each of
/// [`LOCKED_WAITS`], as a maildrop being released is, since a move that
/// was just killed holds it until the database notices.
async fn take_move_lock(directory: &Client, user: &str) -> Result<(), MoveError> {
    let mut waits = LOCKED_WAITS.iter();
    loop {
        let locked: bool = directory
            .query_one(
                "SELECT pg_try_advisory_lock($1, hashtext($2))",
                &[&MOVE_LOCK_CLASS, &user],
            )
            .await?
            .get(0);
        if locked {
            return Ok(());
        }
        match waits.next() {
            Some(wait) => tokio::time::sleep(*wait).await,
            None => {
                return Err(MoveError::Refused(
                    "another mailbag move-user is moving this user now".into(),
                ))
            }
        }
    }
}

/// The store of cluster `name`; one the configuration does not list (the
/// directory named it) is a refusal.
fn member<'a>(clusters: &'a Several, name: &str) -> Result<&'a PgStore, MoveError> {
    clusters.member(name).map_err(|_| {
        MoveError::Refused(format!(
            "the directory places this user on cluster {:?}, which store.clusters does not list",
            name.chars().take(64).collect::<String>()
        ))
    })
}

/// The id of `user`'s maildrop row on the cluster `conn` reaches (made
/// in state `fresh` when missing), with its advisory lock taken on
/// `conn`, waiting up to `wait` for a session that holds it.
async fn lock_maildrop(
    conn: &Client,
    user: &str,
    cluster: &str,
    fresh: &str,
    wait: Duration,
) -> Result<i64, MoveError> {
    conn.execute_typed(
        "INSERT INTO maildrops (name, state) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
        &[(&user, Type::TEXT), (&fresh, Type::TEXT)],
    )
    .await?;
    let id: i64 = conn
        .query_typed_one(
            "SELECT id FROM maildrops WHERE name = $1",
            &[(&user, Type::TEXT)],
        )
        .await?
        .get(0);
    let deadline = Instant::now() + wait;
    loop {
        let got: bool = conn
            .query_typed_one("SELECT pg_try_advisory_lock($1)", &[(&id, Type::INT8)])
            .await?
            .get(0);
        if got {
            return Ok(id);
        }
        if Instant::now() >= deadline {
            return Err(MoveError::Refused(format!(
                "a POP3 session holds this user's maildrop on {cluster}; \
                 nothing was changed there: try again later, or give a longer --wait"
            )));
        }
        tokio::time::sleep(LOCK_POLL).await;
    }
}

async fn state(conn: &Client, id: i64) -> Result<String, MoveError> {
    Ok(conn
        .query_typed_one(
            "SELECT state FROM maildrops WHERE id = $1",
            &[(&id, Type::INT8)],
        )
        .await?
        .get(0))
}

/// Copies every message of maildrop `source_id` into `destination_id`,
/// batch by batch, each batch one transaction on the destination that
/// skips UIDLs already there and then checks that all of the batch's
/// UIDLs belong to the destination maildrop. `after_batch(n)` runs after
/// the n-th batch commits. Returns the messages and octets of the source.
async fn copy(
    source: &mut Client,
    source_id: i64,
    destination: &mut Client,
    destination_id: i64,
    to: &str,
    batch_messages: usize,
    after_batch: &(dyn Fn(u32) -> Result<(), MoveError> + Send + Sync),
) -> Result<(u64, u64), MoveError> {
    let mut last = 0i64;
    let mut total = (0u64, 0u64);
    let mut batches = 0u32;
    loop {
        let page = source
            .query_typed(
                "SELECT id, size FROM messages WHERE maildrop_id = $1 AND id > $2
                  ORDER BY id LIMIT $3",
                &[
                    (&source_id, Type::INT8),
                    (&last, Type::INT8),
                    (&PAGE, Type::INT8),
                ],
            )
            .await?;
        let Some(end) = page.last() else { break };
        last = end.get(0);
        let mut batch: Vec<i64> = Vec::new();
        let mut octets = 0i64;
        for row in &page {
            let (id, size): (i64, i64) = (row.get(0), row.get(1));
            if !batch.is_empty() && (batch.len() >= batch_messages || octets + size > BATCH_OCTETS)
            {
                copy_batch(source, &batch, destination, destination_id, to).await?;
                batches += 1;
                after_batch(batches)?;
                batch.clear();
                octets = 0;
            }
            batch.push(id);
            octets += size;
            total.0 += 1;
            total.1 += size.max(0) as u64;
        }
        copy_batch(source, &batch, destination, destination_id, to).await?;
        batches += 1;
        after_batch(batches)?;
    }
    Ok(total)
}

async fn copy_batch(
    source: &Client,
    ids: &[i64],
    destination: &mut Client,
    destination_id: i64,
    to: &str,
) -> Result<(), MoveError> {
    let rows = source
        .query_typed(
            "SELECT uidl, size, received::text, seen,
                    coalesce((SELECT string_agg(data, ''::bytea ORDER BY seq)
                                FROM message_chunks WHERE message_id = m.id), ''::bytea)
               FROM messages m WHERE id = ANY($1) ORDER BY id",
            &[(&ids, Type::INT8_ARRAY)],
        )
        .await?;
    let tx = destination.transaction().await?;
    let mut uidls: Vec<String> = Vec::with_capacity(rows.len());
    for row in &rows {
        let uidl: String = row.get(0);
        let size: i64 = row.get(1);
        let received: String = row.get(2);
        let seen: bool = row.get(3);
        let body: &[u8] = row.get(4);
        // The message and its chunks, cut as a delivery cuts them, in
        // one statement; nothing when the UIDL is there already.
        tx.execute_typed(
            "WITH m AS (INSERT INTO messages (maildrop_id, uidl, size, received, seen)
                        VALUES ($1, $2, $3, $4::timestamptz, $5)
                        ON CONFLICT (maildrop_id, uidl) DO NOTHING
                        RETURNING id)
             INSERT INTO message_chunks (message_id, seq, data)
             SELECT m.id, s.seq, substring($6 FROM s.seq * $7 + 1 FOR $7)
               FROM m, generate_series(0, (octet_length($6) + $7 - 1) / $7 - 1) AS s (seq)",
            &[
                (&destination_id, Type::INT8),
                (&uidl, Type::TEXT),
                (&size, Type::INT8),
                (&received, Type::TEXT),
                (&seen, Type::BOOL),
                (&body, Type::BYTEA),
                (&CHUNK, Type::INT4),
            ],
        )
        .await?;
        uidls.push(uidl);
    }
    let present: i64 = tx
        .query_typed_one(
            "SELECT count(*) FROM messages WHERE maildrop_id = $1 AND uidl = ANY($2)",
            &[(&destination_id, Type::INT8), (&uidls, Type::TEXT_ARRAY)],
        )
        .await?
        .get(0);
    if present != uidls.len() as i64 {
        // Rolled back on drop: nothing of this batch stays. A UIDL is
        // unique within a maildrop, and the source's are, so only
        // something on the destination that drops rows (a rule, a
        // trigger) gets here.
        return Err(MoveError::Refused(format!(
            "{to} did not keep every message of a batch under its UIDL"
        )));
    }
    tx.commit().await?;
    Ok(())
}

/// Deletes the source's messages and marks it `moved`, in one
/// transaction.
async fn remove_source(source: &mut Client, source_id: i64) -> Result<(), MoveError> {
    let tx = source.transaction().await?;
    tx.execute("DELETE FROM messages WHERE maildrop_id = $1", &[&source_id])
        .await?;
    tx.execute(
        "UPDATE maildrops SET state = 'moved' WHERE id = $1",
        &[&source_id],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}
