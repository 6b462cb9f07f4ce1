//! Message bodies in PostgreSQL as rows of `message_chunks` (schema
//! version 2): every size around a chunk and a batch boundary comes back
//! byte-exact through RETR and TOP over a real socket, and a database of
//! version 1 with mail in it is migrated by `mailbag migrate` without
//! losing or changing a message.

use std::path::Path;
use std::process::Command;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use mailbag::auth::postgres::PgPassDb;
use mailbag::config::Config;
use mailbag::store::{Maildrop, Store};

use mailbag::store::postgres::schema::MIGRATIONS;
use mailbag::store::postgres::CHUNK_OCTETS;

use crate::support::pg::*;
use crate::support::*;

/// Rows in the reader's first query and in each later one (see
/// `store/postgres/reader.rs`), for sizes on either side of them.
const FIRST_BATCH_ROWS: usize = 32;
const BATCH_ROWS: usize = 64;

/// A message of `len` octets in canonical form, as the store keeps it
/// (CRLF lines; a few sizes too small for that gain a final CRLF): some
/// lines start with a dot (which RETR must stuff), a dot line starts
/// right at the first chunk boundary and a CRLF is split across the
/// second, and 8-bit octets.
fn message_of(len: usize, seed: u32) -> Vec<u8> {
    let mut m = Vec::with_capacity(len + 128);
    let mut i = seed;
    while m.len() < len {
        if i.is_multiple_of(7) {
            m.push(b'.');
        }
        m.extend_from_slice(format!("line {i} ").as_bytes());
        m.extend_from_slice(b"\xe9\xff padding to make lines of different lengths\r\n");
        i = i.wrapping_mul(31).wrapping_add(7) % 1000;
    }
    m.truncate(len);
    if len >= 2 {
        m[len - 2..].copy_from_slice(b"\r\n");
    }
    let c = CHUNK_OCTETS;
    if len > c + 3 {
        m[c - 2..=c].copy_from_slice(b"\r\n.");
    }
    if len > 2 * c + 3 {
        m[2 * c - 1..=2 * c + 1].copy_from_slice(b"\r\n.");
    }
    // What the cuts above split: an LF left without its CR becomes text.
    for i in 0..m.len() {
        if m[i] == b'\n' && (i == 0 || m[i - 1] != b'\r') {
            m[i] = b'x';
        }
    }
    m
}

/// The sizes that matter to the chunked layout.
fn sizes() -> Vec<usize> {
    let c = CHUNK_OCTETS;
    vec![
        0,
        1,
        c - 1,
        c,
        c + 1,
        3 * c,
        FIRST_BATCH_ROWS * c,
        FIRST_BATCH_ROWS * c + 1,
        (FIRST_BATCH_ROWS + BATCH_ROWS) * c,
        (FIRST_BATCH_ROWS + 2 * BATCH_ROWS) * c + c / 2,
    ]
}

#[tokio::test]
async fn bodies_at_every_chunk_and_batch_boundary_come_back_byte_exact() {
    let test = "bodies_at_every_chunk_and_batch_boundary";
    let Some(f) = Fixture::new(Backend::Postgres, test).await else {
        return;
    };
    let messages: Vec<Vec<u8>> = sizes()
        .into_iter()
        .enumerate()
        .map(|(i, len)| message_of(len, i as u32))
        .collect();
    for m in &messages {
        f.deliver("alice", m).await;
    }

    // Stored in canonical form (CRLF line ends, whatever the delivery
    // brought), as rows of at most a chunk, in order, that add up to it.
    let db = connect(f.url.as_deref().unwrap()).await;
    let rows = db
        .query(
            "SELECT m.id, count(c.seq), coalesce(max(octet_length(c.data)), 0),
                    coalesce(string_agg(c.data, ''::bytea ORDER BY c.seq), '')
               FROM messages m LEFT JOIN message_chunks c ON c.message_id = m.id
              GROUP BY m.id ORDER BY m.id",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), messages.len());
    for (row, m) in rows.iter().zip(&messages) {
        let (count, widest, body): (i64, i32, Vec<u8>) = (row.get(1), row.get(2), row.get(3));
        let canonical = crlf(m);
        assert_eq!(
            count as usize,
            canonical.len().div_ceil(CHUNK_OCTETS),
            "{}",
            m.len()
        );
        assert!(widest as usize <= CHUNK_OCTETS);
        assert!(
            body == canonical,
            "stored body of {} octets differs",
            m.len()
        );
    }

    let node = f.node().await;
    let mut c = node.login(ALICE).await;
    for (i, m) in messages.iter().enumerate() {
        let n = i + 1;
        let expected = crlf(m);
        let (status, body) = c.multi(&format!("RETR {n}")).await;
        assert_eq!(status, format!("+OK {} octets\r\n", expected.len()));
        assert!(body == expected, "RETR of {} octets differs", m.len());
        // TOP: the header block and the first lines of the body.
        let (_, top) = c.multi(&format!("TOP {n} 3")).await;
        assert!(expected.starts_with(&top), "TOP of {} octets", m.len());
    }
    // Several RETRs pipelined in one write, large and small mixed.
    let mut pipelined = String::new();
    for n in [9, 1, 10, 2, 8] {
        pipelined.push_str(&format!("RETR {n}\r\n"));
    }
    c.send(pipelined.as_bytes()).await;
    for n in [9, 1, 10, 2, 8] {
        let status = c.line().await;
        assert!(status.starts_with("+OK"), "{status}");
        let body = unstuff(&c.body().await);
        assert!(body == crlf(&messages[n - 1]), "pipelined RETR {n}");
    }
    c.ok("DELE 10").await;
    c.ok("QUIT").await;
    // The deleted message's chunks went with it.
    let left: i64 = db
        .query_one("SELECT count(*) FROM message_chunks", &[])
        .await
        .unwrap()
        .get(0);
    let expected: usize = messages[..9]
        .iter()
        .map(|m| m.len().div_ceil(CHUNK_OCTETS))
        .sum();
    assert_eq!(left as usize, expected);
}

#[tokio::test]
async fn readers_that_stop_reading_large_messages_hold_no_pooled_connection() {
    let test = "readers_that_stop_reading_hold_no_pooled_connection";
    let Some(f) = Fixture::new(Backend::Postgres, test).await else {
        return;
    };
    // More than loopback's socket buffers hold, so the server's writes
    // block while the client does not read.
    let big = message_of(12_000_000, 3);
    let db = connect(f.url.as_deref().unwrap()).await;
    // Five sessions: one more than the fixture's pool of 4 connections.
    let readers: Vec<String> = (0..5).map(|i| format!("reader{i}")).collect();
    for user in &readers {
        db.execute("INSERT INTO users VALUES ($1, '{PLAIN}secret')", &[user])
            .await
            .unwrap();
        f.deliver(user, &big).await;
    }
    f.deliver("bob", b"Subject: small\n\nhello\n").await;
    let node = f.node().await;
    let mut stalled = Vec::new();
    for user in &readers {
        let mut c = node.login((user, "secret")).await;
        c.send(b"RETR 1\r\n").await;
        stalled.push(c);
    }
    // Every stalled reader has its first octets on the way...
    for c in &mut stalled {
        let status = c.line().await;
        assert!(status.starts_with("+OK"), "{status}");
    }
    // ...and none holds a connection: another session is served.
    let mut other = node.login(BOB).await;
    let (_, body) = other.multi("RETR 1").await;
    assert_eq!(body, crlf(b"Subject: small\n\nhello\n"));
    other.ok("QUIT").await;
    // Each stalled reader still gets every octet once it reads.
    for mut c in stalled {
        assert!(unstuff(&c.body().await) == crlf(&big));
        c.ok("QUIT").await;
    }
}

/// A message delivered with LF line ends (as `mailbag deliver` gets it
/// from an MTA) is stored in canonical form, its length its POP3 size;
/// bodies stored with LF ends before that still come back exact.
#[tokio::test]
async fn lf_bodies_are_stored_canonical_and_lf_rows_from_before_still_serve() {
    let test = "lf_bodies_are_stored_canonical";
    let Some(f) = Fixture::new(Backend::Postgres, test).await else {
        return;
    };
    let small = b"Subject: lf\n\n.dot line\nbare\rcr\nend".to_vec();
    let mut big = Vec::new();
    for i in 0..2000 {
        big.extend_from_slice(
            format!("{}line {i} of a long LF message\n", ".".repeat(i % 3)).as_bytes(),
        );
    }
    for m in [&small, &big] {
        f.deliver("alice", m).await;
    }
    let db = connect(f.url.as_deref().unwrap()).await;
    let stored = |id: i64| {
        let db = &db;
        async move {
            let row = db
                .query_one(
                    "SELECT m.size, coalesce(string_agg(c.data, ''::bytea ORDER BY c.seq), '')
                       FROM messages m LEFT JOIN message_chunks c ON c.message_id = m.id
                      WHERE m.id = $1 GROUP BY m.id",
                    &[&id],
                )
                .await
                .unwrap();
            (row.get::<_, i64>(0), row.get::<_, Vec<u8>>(1))
        }
    };
    let ids: Vec<i64> = db
        .query("SELECT id FROM messages ORDER BY id", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for (id, m) in ids.iter().zip([&small, &big]) {
        let (size, body) = stored(*id).await;
        assert!(
            body == crlf(m),
            "stored as delivered, not in canonical form"
        );
        assert_eq!(size as usize, body.len());
    }

    // The same messages as LF rows, the way they were stored before.
    for (id, m) in ids.iter().zip([&small, &big]) {
        db.execute("DELETE FROM message_chunks WHERE message_id = $1", &[id])
            .await
            .unwrap();
        db.execute(
            "INSERT INTO message_chunks (message_id, seq, data)
             SELECT $1, s, substring($2::bytea FROM s * 8000 + 1 FOR 8000)
               FROM generate_series(0, (octet_length($2::bytea) + 7999) / 8000 - 1) AS s",
            &[id, m],
        )
        .await
        .unwrap();
    }
    let node = f.node().await;
    let mut c = node.login(ALICE).await;
    for (n, m) in [&small, &big].into_iter().enumerate() {
        let (status, body) = c.multi(&format!("RETR {}", n + 1)).await;
        assert!(status.starts_with("+OK"), "{status}");
        assert!(body == crlf(m), "RETR {} of an LF row", n + 1);
    }
    c.ok("QUIT").await;
}

#[tokio::test]
async fn migrate_from_version_1_moves_every_body_into_chunks_byte_exact() {
    let test = "migrate_from_version_1_moves_every_body";
    let Some(cluster) = cluster(test) else { return };
    let admin = connect(&cluster.url("postgres")).await;
    admin
        .batch_execute("CREATE DATABASE from_version_1")
        .await
        .unwrap();
    let url = cluster.url("from_version_1");
    // A database as mailbag at schema version 1 left it, with mail.
    let db = connect(&url).await;
    let (version, initial) = MIGRATIONS[0];
    assert_eq!(version, 1);
    db.batch_execute(initial).await.unwrap();
    db.batch_execute(
        "CREATE TABLE schema_migrations (
             version    integer PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now()
         );
         INSERT INTO schema_migrations (version) VALUES (1);
         INSERT INTO users VALUES ('alice', '{PLAIN}wonderland');
         INSERT INTO maildrops (name) VALUES ('alice'), ('empty')",
    )
    .await
    .unwrap();
    let messages: Vec<Vec<u8>> = sizes()
        .into_iter()
        .enumerate()
        .map(|(i, len)| message_of(len, 100 + i as u32))
        .collect();
    for (i, m) in messages.iter().enumerate() {
        let size = crlf(m).len() as i64;
        db.execute(
            "INSERT INTO messages (maildrop_id, uidl, size, body)
             SELECT id, $1, $2, $3 FROM maildrops WHERE name = 'alice'",
            &[&format!("v1-{i}"), &size, m],
        )
        .await
        .unwrap();
    }

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("mailbag.toml");
    std::fs::write(
        &config,
        format!("[pop3]\nlisten = [\"127.0.0.1:0\"]\n[store]\nkind = \"postgres\"\nurl = \"{url}\"\n[auth]\n"),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_mailbag"))
        .args(["migrate", "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "applied migration 2\napplied migration 3\napplied migration 4\n"
    );

    // Every body is now its chunks, and the old column is gone.
    let body_column: i64 = db
        .query_one(
            "SELECT count(*) FROM information_schema.columns
              WHERE table_name = 'messages' AND column_name = 'body'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(body_column, 0);
    let chunks: i64 = db
        .query_one("SELECT count(*) FROM message_chunks", &[])
        .await
        .unwrap()
        .get(0);
    let expected: usize = messages
        .iter()
        .map(|m| m.len().div_ceil(CHUNK_OCTETS))
        .sum();
    assert_eq!(chunks as usize, expected);

    // Version 4: a UIDL is unique within its maildrop, not across them.
    let insert = |maildrop: &'static str| {
        let db = &db;
        async move {
            db.execute(
                "INSERT INTO messages (maildrop_id, uidl, size)
                 SELECT id, 'v1-0', 0 FROM maildrops WHERE name = $1",
                &[&maildrop],
            )
            .await
        }
    };
    let twice = insert("alice").await.unwrap_err();
    assert_eq!(
        twice.code(),
        Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION)
    );
    assert_eq!(insert("empty").await.unwrap(), 1);
    db.execute(
        "DELETE FROM messages
          WHERE maildrop_id = (SELECT id FROM maildrops WHERE name = 'empty')",
        &[],
    )
    .await
    .unwrap();

    // Served byte-exact under the UIDLs they had.
    let store = pg_store(&url);
    store.check_schema().await.unwrap();
    let passdb = mailbag::auth::postgres::PgPassDb::new(std::sync::Arc::clone(store.pool())).await;
    let node = Node::start(
        mailbag::config::Config::load(&config).unwrap(),
        store,
        passdb,
    )
    .await;
    let mut c = node.login(ALICE).await;
    let (_, uidl) = c.multi("UIDL").await;
    let uidl = String::from_utf8_lossy(&uidl).into_owned();
    for (i, m) in messages.iter().enumerate() {
        assert!(uidl.contains(&format!("{} v1-{i}\r\n", i + 1)), "{uidl}");
        let (status, body) = c.multi(&format!("RETR {}", i + 1)).await;
        assert_eq!(status, format!("+OK {} octets\r\n", crlf(m).len()));
        assert!(body == crlf(m), "message {} after the migration", i + 1);
    }
    c.ok("DELE 1").await;
    c.ok("DELE 9").await;
    c.ok("QUIT").await;
    // Delivery and deletion work on the migrated schema.
    let mut c = node.login(ALICE).await;
    let (status, _) = c.multi("LIST").await;
    assert!(
        status.starts_with(&format!("+OK {} messages", messages.len() - 2)),
        "{status}"
    );
    c.ok("QUIT").await;
    let orphans: i64 = db
        .query_one(
            "SELECT count(*) FROM message_chunks c
              WHERE NOT EXISTS (SELECT 1 FROM messages m WHERE m.id = c.message_id)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(orphans, 0);
}

/// A `message_chunks` row larger than a chunk (storage changed by an
/// administrator, a row edited by hand) fails the read that meets it
/// before its octets leave the database: RETR answers `-ERR`, a few
/// octets cross the wire instead of the row's megabyte, the error says
/// what is wrong, and nothing is deleted. A row of exactly a chunk reads
/// as before; one octet more is refused.
#[tokio::test]
async fn a_chunk_row_over_the_bound_fails_the_read_before_its_octets_are_fetched() {
    let test = "a_chunk_row_over_the_bound_fails_the_read";
    let Some(cluster) = cluster(test) else { return };
    let url = cluster.database("oversized_chunk").await;
    let (port, sent) = crate::postgres::counting_proxy(cluster.port).await;
    let proxied = url.replace(&format!("port={}", cluster.port), &format!("port={port}"));
    let config = Config::parse(
        &format!("[pop3]\nlisten = [\"127.0.0.1:0\"]\n[store]\nkind = \"postgres\"\nurl = \"{proxied}\"\n[auth]\nfailure_delay_ms = 10\n"),
        Path::new("/"),
    )
    .unwrap();
    let store = pg_store(&proxied);
    let messages = [
        message_of(3 * CHUNK_OCTETS - 100, 7),
        message_of(2 * CHUNK_OCTETS, 8),
        message_of(2 * CHUNK_OCTETS, 9),
    ];
    for m in &messages {
        Store::deliver(&store, ALICE.0.into(), m.clone())
            .await
            .unwrap();
    }
    // Message 1's second chunk becomes a megabyte, message 2's first one
    // octet too many; message 3's first stays exactly a chunk.
    let db = connect(&url).await;
    // The schema keeps chunks in their heap page; a row of a megabyte
    // needs the storage changed first.
    db.batch_execute("ALTER TABLE message_chunks ALTER COLUMN data SET STORAGE EXTENDED")
        .await
        .unwrap();
    for (number, seq, octets) in [(1i64, 1i32, 1 << 20), (2, 0, CHUNK_OCTETS as i32 + 1)] {
        let changed = db
            .execute(
                "UPDATE message_chunks SET data = decode(repeat('78', $3), 'hex')
                  WHERE seq = $2 AND message_id =
                        (SELECT id FROM messages ORDER BY id OFFSET $1::int8 - 1 LIMIT 1)",
                &[&number, &seq, &octets],
            )
            .await
            .unwrap();
        assert_eq!(changed, 1);
    }

    let passdb = PgPassDb::new(Arc::clone(store.pool())).await;
    let node = Node::start(config, store.clone(), passdb).await;
    let mut c = node.login(ALICE).await;
    let received = || sent.received_octets.load(Ordering::SeqCst);
    for number in [1, 2] {
        let before = received();
        let reply = c.cmd(&format!("RETR {number}")).await;
        assert!(reply.starts_with("-ERR [SYS/TEMP]"), "{number}: {reply}");
        let octets = received() - before;
        assert!(
            octets < 2 * CHUNK_OCTETS,
            "RETR {number}: {octets} octets came from the database"
        );
    }
    let (_, body) = c.multi("RETR 3").await;
    assert!(body == crlf(&messages[2]), "message 3 came back changed");
    c.ok("QUIT").await;
    node.stop().await;

    let mut m = pg_store(&url).open(ALICE.0.into()).await.unwrap();
    assert_eq!(m.messages().len(), 3, "a message was deleted");
    let Err(e) = m.read(0).await else {
        panic!("an oversized chunk was read");
    };
    let chain = format!("{e:?}");
    assert!(
        chain.contains("holds 1048576 octets, more than the 8000 a chunk may hold"),
        "{chain}"
    );
}

/// `mailbag migrate` to version 4 while another session keeps `messages`
/// in use (a transaction left open, an idle psql): waiting for the table
/// would hold the index build's lock, which stops every delivery, and
/// queue every listing behind its request, so it gives up after
/// `MIGRATE_LOCK_WAIT`, says why, and changes nothing; once that session
/// ends, it migrates. (It used to wait for as long as the session lived,
/// and every node's deliveries and logins with it.)
#[tokio::test]
async fn a_migration_behind_a_session_that_never_ends_gives_up_and_changes_nothing() {
    let test = "migration_behind_an_idle_transaction";
    let Some(cluster) = cluster(test) else { return };
    let admin = connect(&cluster.url("postgres")).await;
    admin
        .batch_execute("CREATE DATABASE behind_idle")
        .await
        .unwrap();
    let url = cluster.url("behind_idle");
    let db = connect(&url).await;
    for (_, sql) in &MIGRATIONS[..3] {
        db.batch_execute(sql).await.unwrap();
    }
    db.batch_execute(
        "CREATE TABLE schema_migrations (
             version    integer PRIMARY KEY,
             applied_at timestamptz NOT NULL DEFAULT now()
         );
         INSERT INTO schema_migrations (version) VALUES (1), (2), (3);
         INSERT INTO maildrops (name) VALUES ('alice');
         INSERT INTO messages (maildrop_id, uidl, size)
           SELECT id, 'v3-0', 0 FROM maildrops WHERE name = 'alice'",
    )
    .await
    .unwrap();
    let idle = connect(&url).await;
    idle.batch_execute("BEGIN; SELECT count(*) FROM messages")
        .await
        .unwrap();

    let store = pg_store(&url);
    let migrated = tokio::time::timeout(std::time::Duration::from_secs(120), store.migrate())
        .await
        .expect("the migration waited as long as the other session lived");
    let e = migrated.unwrap_err();
    assert!(
        matches!(e, mailbag::pg::PgError::MigrateLockWait(_)),
        "{e:?}"
    );
    assert!(e.to_string().contains("nothing was changed"), "{e}");
    let version: i32 = db
        .query_one("SELECT max(version) FROM schema_migrations", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(version, 3);

    idle.batch_execute("COMMIT").await.unwrap();
    assert_eq!(store.migrate().await.unwrap(), [4]);
}
