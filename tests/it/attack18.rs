//! The PostgreSQL store under hostile conditions: tables changed under a
//! running node, bodies whose chunks a database administrator edited.

use mailbag::store::postgres::cluster::{ClusterOptions, PgClusters};
use mailbag::store::postgres::PgOptions;
use mailbag::store::{Store, StoreError};
use tokio::io::AsyncBufReadExt;

use crate::support::pg::*;
use crate::support::*;

/// A column's type changed under a running node (by a migration or by
/// hand) changes the result type of statements its connections keep
/// prepared: PostgreSQL then refuses every later execution of them
/// ("cached plan must not change result type"). The pool prepares the
/// statement again instead of failing every login until a restart.
#[tokio::test]
async fn a_column_type_changed_under_a_running_node_does_not_break_logins() {
    let test = "a_column_type_changed_under_a_running_node";
    let Some(f) = Fixture::new(Backend::Postgres, test).await else {
        return;
    };
    f.deliver("alice", b"Subject: one\n\nhello\n").await;
    let node = f.node().await;
    // Logins prepare the maildrop's listing on the pool's connections.
    for _ in 0..3 {
        let mut c = node.login(ALICE).await;
        c.ok("QUIT").await;
    }
    let db = connect(f.url.as_deref().unwrap()).await;
    db.batch_execute("ALTER TABLE messages ALTER COLUMN uidl TYPE varchar(70)")
        .await
        .unwrap();
    for _ in 0..3 {
        let (mut c, reply) = node.try_login(ALICE).await;
        assert!(reply.starts_with("+OK"), "{reply}");
        let (_, listing) = c.multi("UIDL").await;
        assert_eq!(listing.split(|&b| b == b'\n').count(), 2, "one message");
        c.ok("QUIT").await;
    }
}

/// A maildrop's key changed by hand to another integer type: the lock
/// statement's result no longer decodes as this build expects. The login
/// is refused with `[SYS/TEMP]`, as for any database failure, and the
/// session goes on; decoding used to panic the session's task, which
/// closed the connection without an answer.
#[tokio::test]
async fn a_maildrop_key_of_another_type_refuses_the_login_and_keeps_the_session() {
    let test = "a_maildrop_key_of_another_type";
    let Some(f) = Fixture::new(Backend::Postgres, test).await else {
        return;
    };
    f.deliver("alice", b"Subject: one\n\nhello\n").await;
    let node = f.node().await;
    let mut c = node.login(ALICE).await;
    c.ok("QUIT").await;
    let db = connect(f.url.as_deref().unwrap()).await;
    db.batch_execute("ALTER TABLE maildrops ALTER COLUMN id TYPE integer")
        .await
        .unwrap();
    let (mut c, reply) = node.try_login(ALICE).await;
    assert!(reply.starts_with("-ERR [SYS/TEMP]"), "{reply}");
    c.ok("QUIT").await;
}

/// A message's size written negative past the schema's check shows as
/// 0 (it showed as 18446744073709551611), the other messages are served
/// as before, and its RETR fails the size check rather than end a body.
/// The size column changed by hand to another integer type refuses the
/// login with `[SYS/TEMP]` instead of panicking the session.
#[tokio::test]
async fn message_sizes_out_of_range_or_of_another_type_never_panic_or_wrap() {
    let test = "message_sizes_out_of_range";
    let Some(f) = Fixture::new(Backend::Postgres, test).await else {
        return;
    };
    f.deliver("alice", b"Subject: one\n\nhello\n").await;
    f.deliver("alice", b"Subject: two\n\nhello\n").await;
    let node = f.node().await;
    let db = connect(f.url.as_deref().unwrap()).await;
    db.batch_execute(
        "ALTER TABLE messages DROP CONSTRAINT messages_size_check;
         UPDATE messages SET size = -5 WHERE id = (SELECT min(id) FROM messages)",
    )
    .await
    .unwrap();
    let mut c = node.login(ALICE).await;
    let (_, listing) = c.multi("LIST").await;
    let listing = String::from_utf8_lossy(&listing).into_owned();
    assert!(listing.starts_with("1 0\r\n2 "), "{listing}");
    let (status, _) = c.multi("RETR 2").await;
    assert!(status.starts_with("+OK"), "{status}");
    let got = until_closed(&mut c, "RETR 1", 1 << 20).await;
    assert!(!got.ends_with(b"\r\n.\r\n"), "{got:?}");
    drop(c);

    db.batch_execute("ALTER TABLE messages ALTER COLUMN size TYPE integer")
        .await
        .unwrap();
    let (mut c, reply) = node.try_login(ALICE).await;
    assert!(reply.starts_with("-ERR [SYS/TEMP]"), "{reply}");
    c.ok("QUIT").await;
}

/// The same on a lock connection: with several clusters a login reads
/// the maildrop's state on the connection that holds its lock, which
/// keeps that statement prepared. A type changed under it is prepared
/// again there too, instead of failing every login until a restart.
#[tokio::test]
async fn a_column_type_changed_under_a_running_node_does_not_break_lock_connections() {
    let test = "a_column_type_changed_under_lock_connections";
    let Some((a, b, dir)) = three(test).await else {
        return;
    };
    let config_dir = tempfile::tempdir().unwrap();
    let node = node_on(&a, &b, &dir, config_dir.path()).await;
    // Logins prepare the lock and the state read on alice's lock
    // connection (a maildrop always locks on the same one).
    for _ in 0..3 {
        let mut c = node.login(ALICE).await;
        c.ok("QUIT").await;
    }
    connect(&a)
        .await
        .batch_execute("ALTER TABLE maildrops ALTER COLUMN state TYPE varchar(16)")
        .await
        .unwrap();
    for _ in 0..3 {
        let (mut c, reply) = node.try_login(ALICE).await;
        assert!(reply.starts_with("+OK"), "{reply}");
        c.ok("QUIT").await;
    }
}

/// Everything the server sends after `command` until it closes the
/// connection, ends a multi-line answer or refuses the command (or
/// `limit` octets).
async fn until_closed(c: &mut Client, command: &str, limit: usize) -> Vec<u8> {
    c.send(format!("{command}\r\n").as_bytes()).await;
    let mut got = Vec::new();
    loop {
        let mut line = Vec::new();
        match tokio::time::timeout(
            std::time::Duration::from_secs(20),
            c.stream.read_until(b'\n', &mut line),
        )
        .await
        {
            Ok(Ok(0)) | Ok(Err(_)) => return got,
            Ok(Ok(_)) => got.extend_from_slice(&line),
            Err(_) => panic!("{command}: the server neither finished nor closed"),
        }
        if got.len() > limit || got.ends_with(b"\r\n.\r\n") || got.starts_with(b"-ERR") {
            return got;
        }
    }
}

/// Whether `got` (a RETR's answer) ends as a whole body other than
/// `message`.
fn wrong_body_ended(got: &[u8], message: &[u8]) -> bool {
    if !got.starts_with(b"+OK") || !got.ends_with(b"\r\n.\r\n") {
        return false;
    }
    let start = got.iter().position(|&b| b == b'\n').unwrap() + 1;
    unstuff(&got[start..got.len() - 3]) != crlf(message)
}

/// Message bodies whose `message_chunks` rows were edited by hand (a
/// chunk deleted, one added, one made oversize or empty, the size column
/// changed): RETR never ends a body other than the one delivered (a row
/// past a gap in the numbering is not part of it), and never hangs.
#[tokio::test]
async fn edited_chunks_never_end_a_retr_of_the_wrong_size() {
    let test = "edited_chunks_never_end_a_retr";
    let Some(f) = Fixture::new(Backend::Postgres, test).await else {
        return;
    };
    let db = connect(f.url.as_deref().unwrap()).await;
    let line = b"0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz\n";
    let big: Vec<u8> = line.iter().copied().cycle().take(1_200_000).collect();
    let edits = [
        "DELETE FROM message_chunks WHERE seq = 3",
        "DELETE FROM message_chunks WHERE seq = 40",
        "DELETE FROM message_chunks WHERE seq = (SELECT max(seq) FROM message_chunks)",
        "INSERT INTO message_chunks SELECT message_id, 5000, data FROM message_chunks WHERE seq = 0",
        "INSERT INTO message_chunks SELECT message_id, (SELECT max(seq) + 2 FROM message_chunks), data
           FROM message_chunks WHERE seq = 0",
        "UPDATE message_chunks SET data = data || substring(data FOR 100) WHERE seq = 7",
        "UPDATE message_chunks SET data = substring(data FROM 2) WHERE seq = 70",
        "UPDATE message_chunks SET data = '' WHERE seq = 33",
        "UPDATE messages SET size = size + 1",
        "UPDATE messages SET size = size - 1",
        "UPDATE messages SET size = 0",
    ];
    let node = f.node().await;
    for edit in edits {
        db.batch_execute("DELETE FROM messages").await.unwrap();
        f.deliver("alice", &big).await;
        db.batch_execute(edit).await.unwrap();
        let mut c = node.login(ALICE).await;
        let got = until_closed(&mut c, "RETR 1", 3_000_000).await;
        assert!(
            !wrong_body_ended(&got, &big),
            "{edit}: a wrong body ended as if whole"
        );
    }
    // The same for a message of one chunk (handed over whole).
    for edit in [
        "UPDATE message_chunks SET data = data || 'x'::bytea",
        "UPDATE message_chunks SET data = substring(data FROM 2)",
        "INSERT INTO message_chunks SELECT message_id, 1, data FROM message_chunks",
        "DELETE FROM message_chunks",
    ] {
        db.batch_execute("DELETE FROM messages").await.unwrap();
        f.deliver("alice", b"Subject: small\n\nhello\n").await;
        db.batch_execute(edit).await.unwrap();
        let mut c = node.login(ALICE).await;
        let got = until_closed(&mut c, "RETR 1", 100_000).await;
        assert!(
            !wrong_body_ended(&got, b"Subject: small\n\nhello\n"),
            "{edit}: a wrong body ended as if whole"
        );
    }
}

/// `TOP n` past the last line sends a whole message, as clients use it to
/// fetch mail without marking it: a body whose chunk rows were edited to
/// another size never ends such a TOP with the final dot, in one chunk
/// (handed over whole) or many (streamed); a TOP that stops at its line
/// limit still answers.
#[tokio::test]
async fn edited_chunks_never_end_a_top_of_the_whole_message() {
    let test = "edited_chunks_never_end_a_top";
    let Some(f) = Fixture::new(Backend::Postgres, test).await else {
        return;
    };
    let db = connect(f.url.as_deref().unwrap()).await;
    let small = b"Subject: small\n\nhello\n".to_vec();
    let big: Vec<u8> = b"Subject: big\n\n"
        .iter()
        .copied()
        .chain(
            b"a line of the body\n"
                .iter()
                .copied()
                .cycle()
                .take(100_000),
        )
        .collect();
    let node = f.node().await;
    for message in [&small, &big] {
        for edit in [
            "UPDATE message_chunks SET data = data || 'x'::bytea \
             WHERE seq = (SELECT max(seq) FROM message_chunks)",
            "UPDATE message_chunks SET data = substring(data FROM 2) WHERE seq = 0",
        ] {
            db.batch_execute("DELETE FROM messages").await.unwrap();
            f.deliver("alice", message).await;
            db.batch_execute(edit).await.unwrap();
            let mut c = node.login(ALICE).await;
            let got = until_closed(&mut c, "TOP 1 999999", 3_000_000).await;
            assert!(
                !got.starts_with(b"-ERR") && !got.ends_with(b"\r\n.\r\n"),
                "{edit}: a changed body ended a TOP as if whole: {:?}",
                String::from_utf8_lossy(&got[..got.len().min(300)])
            );
            let mut c = node.login(ALICE).await;
            let (_, top) = c.multi("TOP 1 0").await;
            assert!(top.ends_with(b"\r\n\r\n"), "{edit}");
            c.ok("QUIT").await;
        }
    }
}

/// Two databases of the shared postmaster as clusters "a" (takes new
/// users) and "b", and a third as the directory.
async fn three(test: &str) -> Option<(String, String, String)> {
    let cluster = cluster(test)?;
    Some((
        cluster.database("a").await,
        cluster.database("b").await,
        cluster.database("dir").await,
    ))
}

fn clusters_of(a: &str, b: &str, directory: &str) -> PgClusters {
    let options = |url: &str| PgOptions {
        url: url.to_owned(),
        pool_size: 2,
        lock_connections: 1,
        ca_file: None,
    };
    PgClusters::several(
        &[
            ClusterOptions {
                name: "a".into(),
                options: options(a),
                new_users: true,
            },
            ClusterOptions {
                name: "b".into(),
                options: options(b),
                new_users: false,
            },
        ],
        Some(&options(directory)),
    )
    .unwrap()
}

/// Refuses new connections to the database at `url` and ends the ones
/// it has: to mailbag, that database is down.
async fn take_down(url: &str) {
    let db = url
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("dbname="))
        .unwrap();
    let admin = connect(&url.replace(&format!("dbname={db}"), "dbname=postgres")).await;
    admin
        .batch_execute(&format!(
            "ALTER DATABASE {db} ALLOW_CONNECTIONS false;
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}'"
        ))
        .await
        .unwrap();
}

async fn maildrops(url: &str) -> Vec<String> {
    connect(url)
        .await
        .query(
            "SELECT name || ':' || state FROM maildrops ORDER BY name",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// With the directory down, deliveries and logins fail temporarily and
/// nothing is made on any cluster: no maildrop chosen by the hash for a
/// user whose mail is elsewhere. With a cluster down, a user seen for the
/// first time is not placed elsewhere while that cluster may hold their
/// maildrop.
#[tokio::test]
async fn a_database_down_never_places_a_user_on_another_cluster() {
    let test = "a_database_down_never_places_a_user";
    let Some((a, b, dir)) = three(test).await else {
        return;
    };
    // alice's mail is on b from before the clusters; the hash would put
    // a new user on a (the only one that takes new users).
    Store::deliver(
        &pg_store(&b),
        "alice".into(),
        b"Subject: old\n\nx\n".to_vec(),
    )
    .await
    .unwrap();
    Store::deliver(&pg_store(&b), "bob".into(), b"Subject: old\n\nx\n".to_vec())
        .await
        .unwrap();
    let store = clusters_of(&a, &b, &dir);

    // The cluster holding bob's mail is down at his first placement.
    take_down(&b).await;
    let got = Store::deliver(&store, "bob".into(), b"Subject: new\n\ny\n".to_vec()).await;
    assert!(matches!(got, Err(StoreError::Temporary(_))), "{got:?}");
    let got = Store::open(&store, "bob".into()).await.map(|_| ());
    assert!(matches!(got, Err(StoreError::Temporary(_))), "{got:?}");
    assert_eq!(maildrops(&a).await, Vec::<String>::new());
    assert_eq!(
        connect(&dir)
            .await
            .query("SELECT 1 FROM placements", &[])
            .await
            .unwrap()
            .len(),
        0
    );

    // The directory down: nothing is made on a either.
    take_down(&dir).await;
    let got = Store::deliver(&store, "alice".into(), b"Subject: new\n\ny\n".to_vec()).await;
    assert!(matches!(got, Err(StoreError::Temporary(_))), "{got:?}");
    let got = Store::open(&store, "alice".into()).await.map(|_| ());
    assert!(matches!(got, Err(StoreError::Temporary(_))), "{got:?}");
    assert_eq!(maildrops(&a).await, Vec::<String>::new());
}

/// Every backend of the database terminated (an administrator, a
/// restart, a failover) between sessions: the next logins and
/// deliveries are served on new connections, pooled and lock ones alike.
#[tokio::test]
async fn connections_terminated_between_sessions_are_replaced() {
    let test = "connections_terminated_between_sessions";
    let Some(f) = Fixture::new(Backend::Postgres, test).await else {
        return;
    };
    f.deliver("alice", b"Subject: one\n\nhello\n").await;
    let node = f.node().await;
    let url = f.url.clone().unwrap();
    let db = url
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("dbname="))
        .unwrap()
        .to_owned();
    let admin = connect(&url.replace(&format!("dbname={db}"), "dbname=postgres")).await;
    for round in 0..8 {
        let mut c = node.login(ALICE).await;
        c.ok("STAT").await;
        c.ok("QUIT").await;
        admin
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
                &[&db],
            )
            .await
            .unwrap();
        let (mut c, reply) = node.try_login(ALICE).await;
        assert!(reply.starts_with("+OK"), "round {round}: {reply}");
        let (_, body) = c.multi("RETR 1").await;
        assert_eq!(body, crlf(b"Subject: one\n\nhello\n"));
        c.ok("QUIT").await;
    }
}

/// A proxy to PostgreSQL on `upstream` that closes, once, the connection
/// whose client sends `needle`, before the server sees those bytes: the
/// statement is sent, and its connection is gone before any answer.
/// Counts the connections it cut.
async fn cutting_proxy(
    upstream: u16,
    needle: &'static [u8],
) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use crate::postgres::{relay, Relay};
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    let armed = Arc::new(AtomicBool::new(true));
    let cuts = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&cuts);
    let port = relay(upstream, move || {
        let (armed, cuts) = (Arc::clone(&armed), Arc::clone(&counted));
        move |chunk: &[u8]| {
            if chunk.windows(needle.len()).any(|w| w == needle)
                && armed.swap(false, Ordering::SeqCst)
            {
                cuts.fetch_add(1, Ordering::SeqCst);
                Relay::Cut
            } else {
                Relay::Forward
            }
        }
    })
    .await;
    (port, cuts)
}

/// A lock connection that dies under the lock statement itself (sent,
/// then the connection closes before any answer) is replaced at once and
/// the lock taken there: the login succeeds. A proxy forces the death on
/// the first lock statement, so this does not depend on whether the
/// driver noticed a dead connection before the statement, as
/// `connections_terminated_between_sessions_are_replaced` does.
#[tokio::test]
async fn a_lock_connection_that_dies_under_the_lock_statement_is_replaced_at_once() {
    let test = "a_lock_connection_dies_under_the_lock_statement";
    let Some(f) = Fixture::new(Backend::Postgres, test).await else {
        return;
    };
    f.deliver("alice", b"Subject: one\n\nhello\n").await;
    let url = f.url.clone().unwrap();
    let port: u16 = url
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("port="))
        .unwrap()
        .parse()
        .unwrap();
    let (proxy, cuts) = cutting_proxy(port, b"pg_try_advisory_lock").await;
    let store = pg_store(&url.replace(&format!("port={port}"), &format!("port={proxy}")));
    let passdb = mailbag::auth::postgres::PgPassDb::new(std::sync::Arc::clone(store.pool())).await;
    let node = Node::start(f.config(), store, passdb).await;
    let (mut c, reply) = node.try_login(ALICE).await;
    assert_eq!(
        cuts.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "never cut"
    );
    assert!(reply.starts_with("+OK"), "{reply}");
    let (_, body) = c.multi("RETR 1").await;
    assert_eq!(body, crlf(b"Subject: one\n\nhello\n"));
    c.ok("QUIT").await;
}

/// Lets the database at `url` take connections again.
async fn bring_up(url: &str) {
    let db = url
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("dbname="))
        .unwrap();
    let admin = connect(&url.replace(&format!("dbname={db}"), "dbname=postgres")).await;
    admin
        .batch_execute(&format!("ALTER DATABASE {db} ALLOW_CONNECTIONS true"))
        .await
        .unwrap();
}

/// Failed connection attempts, many more than the pool's size, while the
/// database refuses connections leave the pool able to open its full
/// size again: logins and deliveries work as soon as it is back.
#[tokio::test]
async fn failed_connects_leave_the_pool_its_full_size() {
    let test = "failed_connects_leave_the_pool";
    let Some(f) = Fixture::new(Backend::Postgres, test).await else {
        return;
    };
    f.deliver("alice", b"Subject: one\n\nhello\n").await;
    let url = f.url.clone().unwrap();
    let node = f.node().await;
    node.login(ALICE).await.ok("QUIT").await;
    take_down(&url).await;
    // Concurrent attempts, five times the pool's four connections.
    let mut attempts = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let addr = node.addr;
        attempts.spawn(async move {
            let mut c = Client::connect(addr).await;
            c.line().await;
            c.ok(&format!("USER {}", ALICE.0)).await;
            c.cmd(&format!("PASS {}", ALICE.1)).await
        });
    }
    while let Some(reply) = attempts.join_next().await {
        let reply = reply.unwrap();
        assert!(reply.starts_with("-ERR [SYS/TEMP]"), "{reply}");
    }
    bring_up(&url).await;
    // Two sessions at once, on new connections.
    let mut held = Vec::new();
    for user in ["alice", "bob"] {
        let secret = if user == "alice" { ALICE.1 } else { BOB.1 };
        let (c, reply) = node.try_login((user, secret)).await;
        assert!(reply.starts_with("+OK"), "{user}: {reply}");
        held.push(c);
    }
    for mut c in held {
        c.ok("STAT").await;
        c.ok("QUIT").await;
    }
    let (mut c, reply) = node.try_login(ALICE).await;
    assert!(reply.starts_with("+OK"), "{reply}");
    c.ok("QUIT").await;
}

/// Many clients hammering one maildrop that a session holds each get
/// `[IN-USE]` after the bounded retries, and hold nothing meanwhile:
/// another user is served during the storm, and the maildrop opens at
/// once after its session ends.
#[tokio::test]
async fn a_storm_of_logins_on_a_held_maildrop_holds_nothing() {
    let test = "a_storm_of_logins_on_a_held_maildrop";
    let Some(f) = Fixture::new(Backend::Postgres, test).await else {
        return;
    };
    f.deliver("alice", b"Subject: one\n\nhello\n").await;
    f.deliver("bob", b"Subject: two\n\nhello\n").await;
    let node = f.node().await;
    let mut holder = node.login(ALICE).await;
    let mut storm = tokio::task::JoinSet::new();
    for _ in 0..40 {
        let addr = node.addr;
        storm.spawn(async move {
            let mut c = Client::connect(addr).await;
            c.line().await;
            c.ok(&format!("USER {}", ALICE.0)).await;
            c.cmd(&format!("PASS {}", ALICE.1)).await
        });
    }
    let mut other = node.login(BOB).await;
    let (_, body) = other.multi("RETR 1").await;
    assert_eq!(body, crlf(b"Subject: two\n\nhello\n"));
    other.ok("QUIT").await;
    while let Some(reply) = storm.join_next().await {
        let reply = reply.unwrap();
        assert!(reply.starts_with("-ERR [IN-USE]"), "{reply}");
    }
    holder.ok("QUIT").await;
    let mut c = node.login(ALICE).await;
    c.ok("STAT").await;
    c.ok("QUIT").await;
}

/// A node on clusters "a" and "b" with the directory (and the users
/// table) in a database of its own.
async fn node_on(a: &str, b: &str, dir: &str, config_dir: &std::path::Path) -> Node {
    let path = config_dir.join("mailbag.toml");
    std::fs::write(
        &path,
        format!(
            "[pop3]\nlisten = [\"127.0.0.1:0\"]\n[lmtp]\nlisten = [\"127.0.0.1:0\"]\n\
             [store]\nkind = \"postgres\"\npool_size = 2\ndirectory_url = \"{dir}\"\n\
             [[store.clusters]]\nname = \"a\"\nurl = \"{a}\"\n\
             [[store.clusters]]\nname = \"b\"\nurl = \"{b}\"\nnew_users = false\n\
             [auth]\nfailure_delay_ms = 10\n"
        ),
    )
    .unwrap();
    let config = mailbag::config::Config::load(&path).unwrap();
    let store = PgClusters::from_config(&config.store).unwrap();
    let passdb = mailbag::auth::postgres::PgPassDb::new(std::sync::Arc::clone(store.pool())).await;
    Node::start(config, store, passdb).await
}

/// The directory, which also holds the users, down while mail arrives
/// over LMTP and clients log in: every recipient is deferred (4xx, never
/// a 5xx that would bounce the mail), every login fails temporarily,
/// and no cluster gets a maildrop.
#[tokio::test]
async fn the_directory_down_defers_lmtp_and_logins() {
    let test = "the_directory_down_defers_lmtp";
    let Some((a, b, dir)) = three(test).await else {
        return;
    };
    Store::deliver(
        &pg_store(&b),
        "alice".into(),
        b"Subject: old\n\nx\n".to_vec(),
    )
    .await
    .unwrap();
    let config_dir = tempfile::tempdir().unwrap();
    let node = node_on(&a, &b, &dir, config_dir.path()).await;
    take_down(&dir).await;
    let lmtp = node.lmtp.unwrap();
    for rcpt in ["alice", "bob", "nobody"] {
        let mut c = Client::connect(lmtp).await;
        assert!(c.line().await.starts_with("220"));
        c.send(b"LHLO test\r\n").await;
        while c.line().await.as_bytes().get(3) == Some(&b'-') {}
        assert!(c.cmd("MAIL FROM:<x@example.org>").await.starts_with("250"));
        let reply = c.cmd(&format!("RCPT TO:<{rcpt}@localhost>")).await;
        let reply = if reply.starts_with('2') {
            assert!(c.cmd("DATA").await.starts_with("354"));
            c.send(b"Subject: new\r\n\r\ny\r\n").await;
            c.cmd(".").await
        } else {
            reply
        };
        assert!(reply.starts_with('4'), "{rcpt}: {reply}");
    }
    for user in [ALICE, BOB] {
        let (_, reply) = node.try_login(user).await;
        assert!(reply.starts_with("-ERR [SYS/TEMP]"), "{reply}");
    }
    assert_eq!(maildrops(&a).await, Vec::<String>::new());
    assert_eq!(maildrops(&b).await, vec!["alice:active".to_owned()]);
}

/// With several clusters, a login reads the maildrop's state and the
/// directory's placement, and a delivery the state: columns an
/// administrator turned into enums are read as text and served, and a
/// placement whose cluster was set NULL by hand refuses the login with
/// `[SYS/TEMP]` (the session goes on) and defers the delivery. Decoding
/// them used to panic the session's task, which closed the client's
/// connection without an answer.
#[tokio::test]
async fn states_and_placements_changed_by_hand_never_panic_a_session_or_delivery() {
    let test = "states_and_placements_changed_by_hand";
    let Some((a, b, dir)) = three(test).await else {
        return;
    };
    let config_dir = tempfile::tempdir().unwrap();
    let node = node_on(&a, &b, &dir, config_dir.path()).await;
    let mut c = node.login(ALICE).await;
    c.ok("QUIT").await;
    let store = clusters_of(&a, &b, &dir);
    let deliver = |subject: &'static str| {
        let store = &store;
        async move {
            Store::deliver(
                store,
                ALICE.0.into(),
                format!("Subject: {subject}\r\n\r\nx\r\n").into_bytes(),
            )
            .await
        }
    };
    deliver("before").await.unwrap();

    connect(&a)
        .await
        .batch_execute(
            "ALTER TABLE maildrops DROP CONSTRAINT maildrops_state_check;
             ALTER TABLE maildrops ALTER COLUMN state DROP DEFAULT;
             CREATE TYPE maildrop_state AS ENUM ('active', 'moving', 'incoming', 'moved');
             ALTER TABLE maildrops ALTER COLUMN state TYPE maildrop_state
               USING state::maildrop_state;
             ALTER TABLE maildrops ALTER COLUMN state SET DEFAULT 'active'",
        )
        .await
        .unwrap();
    let (mut c, reply) = node.try_login(ALICE).await;
    assert!(reply.starts_with("+OK"), "{reply}");
    let stat = c.ok("STAT").await;
    assert!(stat.starts_with("+OK 1 "), "{stat}");
    c.ok("QUIT").await;
    deliver("enum").await.unwrap();
    // A maildrop the directory does not place yet (made before the
    // clusters): the first login finds it by its state.
    connect(&a)
        .await
        .batch_execute("INSERT INTO maildrops (name) VALUES ('bob')")
        .await
        .unwrap();
    let mut c = node.login(BOB).await;
    c.ok("QUIT").await;

    connect(&dir)
        .await
        .batch_execute(
            "CREATE TYPE cluster_name AS ENUM ('a', 'b');
             ALTER TABLE placements ALTER COLUMN cluster TYPE cluster_name
               USING cluster::cluster_name",
        )
        .await
        .unwrap();
    let (mut c, reply) = node.try_login(ALICE).await;
    assert!(reply.starts_with("+OK"), "{reply}");
    c.ok("QUIT").await;
    deliver("enum placement").await.unwrap();

    connect(&dir)
        .await
        .batch_execute(
            "ALTER TABLE placements ALTER COLUMN cluster DROP NOT NULL;
             UPDATE placements SET cluster = NULL WHERE name = 'alice'",
        )
        .await
        .unwrap();
    let (mut c, reply) = node.try_login(ALICE).await;
    assert!(reply.starts_with("-ERR [SYS/TEMP]"), "{reply}");
    c.ok("QUIT").await;
    let refused = deliver("null").await;
    assert!(
        matches!(refused, Err(StoreError::Temporary(_))),
        "{refused:?}"
    );
}

/// A user's secret set NULL by hand (the schema's NOT NULL dropped, to
/// disable the user, say) reads as empty: the login is answered as a
/// wrong password and the session goes on; other users log in. Decoding
/// it used to panic the session's task.
#[tokio::test]
async fn a_null_secret_is_a_wrong_password_not_a_panic() {
    let test = "a_null_secret_is_a_wrong_password";
    let Some(f) = Fixture::new(Backend::Postgres, test).await else {
        return;
    };
    let node = f.node().await;
    let db = connect(f.url.as_deref().unwrap()).await;
    db.batch_execute(
        "ALTER TABLE users ALTER COLUMN secret DROP NOT NULL;
         UPDATE users SET secret = NULL WHERE name = 'alice'",
    )
    .await
    .unwrap();
    let (mut c, reply) = node.try_login(ALICE).await;
    assert!(
        reply.starts_with("-ERR") && !reply.contains("SYS/TEMP"),
        "{reply}"
    );
    c.ok("QUIT").await;
    let (c, reply) = node.try_login((ALICE.0, "")).await;
    assert!(reply.starts_with("-ERR"), "{reply}");
    drop(c);
    let mut c = node.login(BOB).await;
    c.ok("QUIT").await;
}

/// A message size written negative past the schema's check counts as 0
/// in the maildrop's usage (what the quota and import's verification
/// read), as it does in the listing: the sum neither wraps to an exabyte
/// (a quota that refuses every delivery) nor hides the other messages.
#[tokio::test]
async fn a_negative_size_counts_as_zero_in_usage() {
    let test = "a_negative_size_counts_as_zero_in_usage";
    let Some(f) = Fixture::new(Backend::Postgres, test).await else {
        return;
    };
    let url = f.url.as_deref().unwrap();
    let store = pg_store(url);
    Store::deliver(
        &store,
        "alice".into(),
        b"Subject: one\r\n\r\nx\r\n".to_vec(),
    )
    .await
    .unwrap();
    Store::deliver(
        &store,
        "alice".into(),
        b"Subject: two\r\n\r\nxy\r\n".to_vec(),
    )
    .await
    .unwrap();
    let before = store.usage("alice".into()).await.unwrap();
    connect(url)
        .await
        .batch_execute(
            "ALTER TABLE messages DROP CONSTRAINT messages_size_check;
             UPDATE messages SET size = -1000 WHERE id = (SELECT min(id) FROM messages)",
        )
        .await
        .unwrap();
    let after = store.usage("alice".into()).await.unwrap();
    assert_eq!(after.messages, 2);
    assert_eq!(after.octets, before.octets - 19, "{before:?} {after:?}");
}
