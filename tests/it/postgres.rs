//! The PostgreSQL backend against a real PostgreSQL server that these
//! tests start themselves (the harness in `support/pg.rs`), and the same
//! behaviour suite run against both backends.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use mailbag::auth::postgres::PgPassDb;
use mailbag::auth::scheme::Scheme;
use mailbag::config::Config;
use mailbag::store::postgres::{PgOptions, PgStore};
use mailbag::store::Store;

use crate::support::pg::*;
use crate::support::*;

/// Runs a generic behaviour against both backends, as two tests.
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn maildir() {
                super::$name(super::Backend::Maildir).await;
            }
            #[tokio::test]
            async fn postgres() {
                super::$name(super::Backend::Postgres).await;
            }
        }
    )*};
}

both_backends!(
    stat_list_uidl_retr_and_top_are_exact,
    large_message_streams_byte_exact,
    dele_then_dropped_connection_deletes_nothing,
    dele_then_quit_deletes_exactly_the_marked_messages,
    delivery_during_a_session_is_invisible_and_survives_quit,
    second_login_gets_in_use_until_the_first_ends,
    passwords_apop_and_unknown_users_authenticate_alike,
    lmtp_delivery_is_retrieved_byte_exact_and_unknown_users_are_refused,
);

// ------------------------------------------------- the shared behaviours

const ONE: &[u8] = b"From: a@example.org\nSubject: one\n\nHello\n.dot line\n";
const TWO: &[u8] = b"Subject: two\r\n\r\nsecond message\r\nline 2\r\n";

fn uids(listing: &[u8]) -> Vec<String> {
    String::from_utf8_lossy(listing)
        .lines()
        .map(|l| l.split(' ').nth(1).unwrap().to_string())
        .collect()
}

async fn stat_list_uidl_retr_and_top_are_exact(backend: Backend) {
    let Some(f) = Fixture::new(backend, "stat_list_uidl_retr_and_top_are_exact").await else {
        return;
    };
    f.deliver("alice", ONE).await;
    f.deliver("alice", TWO).await;
    let node = f.node().await;
    let mut c = node.login(ALICE).await;
    let (one, two) = (crlf(ONE).len(), crlf(TWO).len());
    assert_eq!(c.cmd("STAT").await, format!("+OK 2 {}\r\n", one + two));
    let (_, list) = c.multi("LIST").await;
    assert_eq!(list, format!("1 {one}\r\n2 {two}\r\n").into_bytes());
    let (_, uidl) = c.multi("UIDL").await;
    let first = uids(&uidl);
    assert_eq!(first.len(), 2);
    assert!(first
        .iter()
        .all(|u| !u.is_empty() && u.len() <= 70 && u.bytes().all(|b| (0x21..=0x7e).contains(&b))));
    let (status, body) = c.multi("RETR 1").await;
    assert_eq!(status, format!("+OK {one} octets\r\n"));
    assert_eq!(body, crlf(ONE));
    let (_, top) = c.multi("TOP 2 0").await;
    assert_eq!(top, b"Subject: two\r\n\r\n");
    c.ok("QUIT").await;
    // UIDLs are stable across sessions (and, for PostgreSQL, across nodes).
    let other = f.node().await;
    let mut c = other.login(ALICE).await;
    let (_, uidl) = c.multi("UIDL").await;
    assert_eq!(uids(&uidl), first);
    c.ok("QUIT").await;
}

async fn large_message_streams_byte_exact(backend: Backend) {
    let Some(f) = Fixture::new(backend, "large_message_streams_byte_exact").await else {
        return;
    };
    // Many chunks in several batches, with lines that need dot-stuffing
    // on chunk boundaries somewhere, and 8-bit bytes.
    let mut message = b"Subject: big\n\n".to_vec();
    let mut i = 0u32;
    while message.len() < 1_300_000 {
        message.extend_from_slice(format!(".line {i} ").as_bytes());
        message.extend_from_slice(b"\xe9\xff with some padding text\n");
        i += 1;
    }
    f.deliver("bob", &message).await;
    let node = f.node().await;
    let mut c = node.login(BOB).await;
    let (status, body) = c.multi("RETR 1").await;
    assert_eq!(status, format!("+OK {} octets\r\n", crlf(&message).len()));
    assert!(body == crlf(&message), "RETR differs from the message");
    c.ok("QUIT").await;
}

async fn dele_then_dropped_connection_deletes_nothing(backend: Backend) {
    let Some(f) = Fixture::new(backend, "dele_then_dropped_connection_deletes_nothing").await
    else {
        return;
    };
    f.deliver("alice", ONE).await;
    f.deliver("alice", TWO).await;
    let node = f.node().await;
    let mut c = node.login(ALICE).await;
    c.ok("DELE 1").await;
    c.ok("DELE 2").await;
    drop(c);
    let mut c = login_when_free(&node, ALICE).await;
    assert!(c.cmd("STAT").await.starts_with("+OK 2 "));
    c.ok("QUIT").await;
}

/// Logs in, retrying while the lock of a just-ended session is released.
async fn login_when_free(node: &Node, user: (&str, &str)) -> Client {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (c, reply) = node.try_login(user).await;
        if reply.starts_with("+OK") {
            return c;
        }
        assert!(reply.starts_with("-ERR [IN-USE]"), "{reply}");
        assert!(Instant::now() < deadline, "the maildrop stayed locked");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn dele_then_quit_deletes_exactly_the_marked_messages(backend: Backend) {
    let Some(f) = Fixture::new(
        backend,
        "dele_then_quit_deletes_exactly_the_marked_messages",
    )
    .await
    else {
        return;
    };
    for m in [ONE, TWO, ONE] {
        f.deliver("alice", m).await;
    }
    let node = f.node().await;
    let mut c = node.login(ALICE).await;
    let (_, uidl) = c.multi("UIDL").await;
    let before = uids(&uidl);
    c.ok("RETR 3").await;
    c.body().await;
    c.ok("DELE 2").await;
    c.ok("QUIT").await;
    let mut c = node.login(ALICE).await;
    let (_, uidl) = c.multi("UIDL").await;
    assert_eq!(uids(&uidl), vec![before[0].clone(), before[2].clone()]);
    c.ok("QUIT").await;
}

async fn delivery_during_a_session_is_invisible_and_survives_quit(backend: Backend) {
    let Some(f) = Fixture::new(
        backend,
        "delivery_during_a_session_is_invisible_and_survives_quit",
    )
    .await
    else {
        return;
    };
    f.deliver("alice", ONE).await;
    let node = f.node().await;
    let mut c = node.login(ALICE).await;
    f.deliver("alice", TWO).await;
    assert_eq!(
        c.cmd("STAT").await,
        format!("+OK 1 {}\r\n", crlf(ONE).len())
    );
    c.ok("DELE 1").await;
    c.ok("QUIT").await;
    let mut c = node.login(ALICE).await;
    assert_eq!(
        c.cmd("STAT").await,
        format!("+OK 1 {}\r\n", crlf(TWO).len())
    );
    c.ok("QUIT").await;
}

async fn second_login_gets_in_use_until_the_first_ends(backend: Backend) {
    let Some(f) = Fixture::new(backend, "second_login_gets_in_use_until_the_first_ends").await
    else {
        return;
    };
    let node = f.node().await;
    let mut first = node.login(ALICE).await;
    let (_, reply) = node.try_login(ALICE).await;
    assert!(reply.starts_with("-ERR [IN-USE]"), "{reply}");
    // Another user is not held up.
    node.login(BOB).await.ok("QUIT").await;
    first.ok("QUIT").await;
    node.login(ALICE).await.ok("QUIT").await;
}

// --------------------------------------------- PostgreSQL: across nodes

fn mailbag() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mailbag"))
}

/// Runs `mailbag` with `args` and `stdin`; returns status, stdout, stderr.
fn run(args: &[&str], stdin: &[u8]) -> (std::process::ExitStatus, String, String) {
    use std::io::Write;
    let mut child = mailbag()
        .args(args)
        .env("MAILBAG_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn count_messages(url: &str) -> i64 {
    connect(url)
        .await
        .query_one("SELECT count(*) FROM messages", &[])
        .await
        .unwrap()
        .get(0)
}

/// The cluster that takes TCP clients over TLS only, or `None` (after
/// saying why) when PostgreSQL is not installed; panics under CI.
fn tls_cluster(test: &str) -> Option<&'static Cluster> {
    static CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();
    match CLUSTER.get_or_init(Cluster::start_tls) {
        Ok(cluster) => Some(cluster),
        Err(why) => skip(test, why),
    }
}

/// `sslmode=require`: mailbag speaks TLS to PostgreSQL and verifies the
/// server's certificate; the cluster rejects TCP clients without TLS.
#[tokio::test]
async fn sslmode_require_serves_over_verified_tls() {
    let Some(cluster) = tls_cluster("sslmode_require") else {
        return;
    };
    let url = cluster.database("tls").await;
    let dir = tempfile::tempdir().unwrap();
    let config_path = dir.path().join("mailbag.toml");
    std::fs::write(
        &config_path,
        format!(
            "[pop3]\nlisten = [\"127.0.0.1:0\"]\n[store]\nkind = \"postgres\"\nurl = \"{url}\"\nca_file = \"{}\"\n[auth]\nfailure_delay_ms = 10\n",
            cluster.ca().display()
        ),
    )
    .unwrap();
    let config = Config::load(&config_path).unwrap();
    let store = PgStore::new(&PgOptions {
        url: url.clone(),
        pool_size: 4,
        lock_connections: 2,
        ca_file: config.store.ca_file.clone(),
    })
    .unwrap();
    store.check_schema().await.unwrap();
    let passdb = PgPassDb::new(Arc::clone(store.pool())).await;
    let node = Node::start(config, store, passdb).await;
    // A login takes the maildrop lock (a lock connection) and STAT reads
    // through the pool: both over TLS.
    let mut c = node.login(ALICE).await;
    assert_eq!(c.cmd("STAT").await, "+OK 0 0\r\n");
    c.ok("QUIT").await;
    node.stop().await;

    // Without sslmode=require there is no TLS, and the cluster refuses.
    let plain = pg_store(&url.replace(" sslmode=require", ""));
    assert!(plain.check_schema().await.is_err());
    // A certificate signed by another CA is refused by mailbag.
    let other = dir.path().join("other.crt");
    mailbag::server::tls::write_self_signed(&["localhost"], &other, &dir.path().join("other.key"))
        .unwrap();
    let untrusted = PgStore::new(&PgOptions {
        url: url.clone(),
        pool_size: 1,
        lock_connections: 1,
        ca_file: Some(other),
    })
    .unwrap();
    assert!(untrusted.check_schema().await.is_err());
    // A CA file with no certificate is a configuration error at once.
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "").unwrap();
    assert!(PgStore::new(&PgOptions {
        url,
        pool_size: 1,
        lock_connections: 1,
        ca_file: Some(empty),
    })
    .is_err());
}

#[tokio::test]
async fn in_use_holds_across_nodes_and_quit_on_one_frees_the_other() {
    let Some(f) = Fixture::new(Backend::Postgres, "in_use_across_nodes").await else {
        return;
    };
    f.deliver("alice", ONE).await;
    let (a, b) = (f.node().await, f.node().await);
    let mut on_a = a.login(ALICE).await;
    let (_, reply) = b.try_login(ALICE).await;
    assert!(reply.starts_with("-ERR [IN-USE]"), "{reply}");
    on_a.ok("DELE 1").await;
    on_a.ok("QUIT").await;
    let mut on_b = b.login(ALICE).await;
    assert_eq!(on_b.cmd("STAT").await, "+OK 0 0\r\n");
    on_b.ok("QUIT").await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test]
async fn kill_9_of_a_node_mid_session_releases_the_lock_and_deletes_nothing() {
    let Some(f) = Fixture::new(Backend::Postgres, "kill_9_node").await else {
        return;
    };
    f.deliver("alice", ONE).await;
    f.deliver("alice", TWO).await;
    // Node A is a real process, so that it can die by SIGKILL.
    let port = free_port();
    let text = std::fs::read_to_string(&f.config_path).unwrap().replacen(
        "127.0.0.1:0",
        &format!("127.0.0.1:{port}"),
        1,
    );
    let a_config = f.dir.path().join("a.toml");
    std::fs::write(&a_config, text).unwrap();
    let mut a = mailbag();
    as_unprivileged(&mut a, f.dir.path());
    let mut a = a
        .arg("serve")
        .arg("--config")
        .arg(&a_config)
        .env("MAILBAG_LOG", "warn")
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let a_addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while tokio::net::TcpStream::connect(a_addr).await.is_err() {
        assert!(Instant::now() < deadline, "node A did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut on_a = Client::connect(a_addr).await;
    on_a.line().await;
    on_a.ok("USER alice").await;
    on_a.ok("PASS wonderland").await;
    on_a.ok("DELE 1").await;
    on_a.ok("DELE 2").await;
    let b = f.node().await;
    let (_, reply) = b.try_login(ALICE).await;
    assert!(reply.starts_with("-ERR [IN-USE]"), "{reply}");

    a.kill().unwrap(); // SIGKILL
    a.wait().unwrap();
    let mut on_b = login_when_free(&b, ALICE).await;
    let total = crlf(ONE).len() + crlf(TWO).len();
    assert_eq!(on_b.cmd("STAT").await, format!("+OK 2 {total}\r\n"));
    on_b.ok("QUIT").await;
}

#[tokio::test]
async fn lost_lock_connection_fails_retr_and_quit_with_sys_temp_and_deletes_nothing() {
    let Some(f) = Fixture::new(Backend::Postgres, "lost_lock_connection").await else {
        return;
    };
    f.deliver("alice", ONE).await;
    f.deliver("alice", TWO).await;
    let url = f.url.clone().unwrap();
    let node = f.node().await;
    let mut c = node.login(ALICE).await;
    c.ok("DELE 1").await;
    // What a failover or a network cut does to the connection that holds
    // the lock.
    let killed: i64 = connect(&url)
        .await
        .query_one(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_locks
              WHERE locktype = 'advisory' AND database =
                    (SELECT oid FROM pg_database WHERE datname = current_database())",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(killed, 1);
    // Once the node has noticed, the session reads nothing more.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let reply = c.cmd("RETR 2").await;
        if reply.starts_with("-ERR [SYS/TEMP]") {
            break;
        }
        assert!(reply.starts_with("+OK"), "{reply}");
        c.body().await;
        assert!(Instant::now() < deadline, "the lost lock went unnoticed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let reply = c.cmd("QUIT").await;
    assert!(reply.starts_with("-ERR [SYS/TEMP]"), "{reply}");
    assert_eq!(count_messages(&url).await, 2);
    // A new lock connection serves the next session.
    let mut c = login_when_free(&node, ALICE).await;
    assert!(c.cmd("STAT").await.starts_with("+OK 2 "));
    c.ok("QUIT").await;
}

#[tokio::test]
async fn delivery_while_the_database_restarts_fails_temporarily_and_loses_nothing() {
    let test = "delivery_while_the_database_restarts";
    // Its own cluster: stopping the shared one would fail other tests.
    let cluster = match Cluster::start() {
        Ok(cluster) => cluster,
        Err(why) => {
            skip::<()>(test, &why);
            return;
        }
    };
    let url = cluster.database("restart").await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("mailbag.toml");
    std::fs::write(
        &config,
        format!("[pop3]\nlisten = [\"127.0.0.1:0\"]\n[lmtp]\nlisten = [\"127.0.0.1:0\"]\n[store]\nkind = \"postgres\"\nurl = \"{url}\"\n[auth]\nfailure_delay_ms = 10\n"),
    )
    .unwrap();
    let config_arg = config.to_str().unwrap();
    let deliver = |body: &[u8]| {
        run(
            &["deliver", "--user", "alice", "--config", config_arg],
            body,
        )
    };
    assert!(deliver(b"Subject: 1\n\none\n").0.success());

    let store = pg_store(&url);
    let passdb = PgPassDb::new(Arc::clone(store.pool())).await;
    let node = Node::start(Config::load(&config).unwrap(), store, passdb).await;

    cluster.stop_server();
    let (status, _, stderr) = deliver(b"Subject: 2\n\ntwo\n");
    assert_eq!(status.code(), Some(75), "EX_TEMPFAIL while down: {stderr}");
    let (_, reply) = node.try_login(ALICE).await;
    assert!(reply.starts_with("-ERR [SYS/TEMP]"), "{reply}");
    let lmtp = node.lmtp.unwrap();
    let reply = lmtp_deliver(lmtp, "alice", b"Subject: 3\r\n\r\nthree\r\n").await;
    assert!(reply.starts_with("451"), "LMTP while down: {reply}");

    cluster.start_server().unwrap();
    let reply = lmtp_deliver(lmtp, "alice", b"Subject: 3\r\n\r\nthree\r\n").await;
    assert!(reply.starts_with("250"), "LMTP after the restart: {reply}");
    let (status, _, stderr) = deliver(b"Subject: 2\n\ntwo\n");
    assert!(status.success(), "{stderr}");
    // Exactly the acknowledged messages: none lost, none doubled.
    assert_eq!(count_messages(&url).await, 3);
    // The node's pooled connections died with the server; it reconnects.
    let mut c = node.login(ALICE).await;
    assert!(c.cmd("STAT").await.starts_with("+OK 3 "));
    c.ok("QUIT").await;
    node.stop().await;
}

/// One LMTP transaction for `rcpt`; returns the reply that decided it
/// (RCPT's when refused, else the one after the data).
async fn lmtp_deliver(addr: SocketAddr, rcpt: &str, body: &[u8]) -> String {
    let mut c = Client::connect(addr).await;
    assert!(c.line().await.starts_with("220"));
    c.send(b"LHLO test\r\n").await;
    while c.line().await.as_bytes().get(3) == Some(&b'-') {}
    assert!(c.cmd("MAIL FROM:<x@example.org>").await.starts_with("250"));
    let reply = c.cmd(&format!("RCPT TO:<{rcpt}@localhost>")).await;
    if !reply.starts_with('2') {
        return reply;
    }
    assert!(c.cmd("DATA").await.starts_with("354"));
    c.send(body).await;
    c.cmd(".").await
}

/// Makes a cluster refuse writes (as a standby does) or accept them (as
/// it does once promoted).
async fn set_read_only(cluster: &Cluster, read_only: bool) {
    let admin = connect(&cluster.url("postgres")).await;
    let value = if read_only { "on" } else { "off" };
    admin
        .batch_execute(&format!(
            "ALTER SYSTEM SET default_transaction_read_only = {value}"
        ))
        .await
        .unwrap();
    admin
        .batch_execute("SELECT pg_reload_conf()")
        .await
        .unwrap();
}

#[tokio::test]
async fn nodes_follow_a_failover_through_the_connection_string_alone() {
    let test = "nodes_follow_a_failover";
    // Two clusters of their own: one stands in for the standby (it
    // refuses writes, which is what target_session_attrs looks at), the
    // other for the primary. Copying the data between them is
    // PostgreSQL's replication's job, not what this test shows.
    let (standby, primary) = match (Cluster::start(), Cluster::start()) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(why), _) | (_, Err(why)) => {
            skip::<()>(test, &why);
            return;
        }
    };
    standby.create("mail").await;
    primary.create("mail").await;
    set_read_only(&standby, true).await;
    let url = format!(
        "host=127.0.0.1,127.0.0.1 port={},{} user=postgres dbname=mail \
         target_session_attrs=read-write connect_timeout=5",
        standby.port, primary.port
    );
    let config = Config::parse(
        &format!("[pop3]\nlisten = [\"127.0.0.1:0\"]\n[lmtp]\nlisten = [\"127.0.0.1:0\"]\n[store]\nkind = \"postgres\"\nurl = \"{url}\"\n[auth]\nfailure_delay_ms = 10\n"),
        Path::new("/"),
    )
    .unwrap();
    let store = pg_store(&url);
    let passdb = PgPassDb::new(Arc::clone(store.pool())).await;
    let node = Node::start(config, store, passdb).await;
    let lmtp = node.lmtp.unwrap();

    let reply = lmtp_deliver(lmtp, "alice", b"Subject: before\r\n\r\n1\r\n").await;
    assert!(reply.starts_with("250"), "{reply}");
    assert_eq!(count_messages(&primary.url("mail")).await, 1);
    assert_eq!(count_messages(&standby.url("mail")).await, 0);

    // The primary dies and the standby is promoted; the node's config
    // does not change.
    primary.stop_server();
    set_read_only(&standby, false).await;
    let mut tries = 0;
    loop {
        let reply = lmtp_deliver(lmtp, "alice", b"Subject: after\r\n\r\n2\r\n").await;
        if reply.starts_with("250") {
            break;
        }
        // Connections to the dead primary fail first: a retry, never a loss.
        assert!(reply.starts_with('4'), "{reply}");
        tries += 1;
        assert!(tries < 10, "the node did not find the promoted standby");
    }
    assert_eq!(count_messages(&standby.url("mail")).await, 1);
    let mut c = login_when_free(&node, ALICE).await;
    assert!(c.cmd("STAT").await.starts_with("+OK 1 "));
    c.ok("QUIT").await;
    node.stop().await;
}

#[tokio::test]
async fn many_sessions_share_a_few_database_connections() {
    let Some(f) = Fixture::new(Backend::Postgres, "many_sessions").await else {
        return;
    };
    let url = f.url.clone().unwrap();
    let users = PgPassDb::new(Arc::clone(pg_store(&url).pool())).await;
    let sessions = 40;
    for i in 0..sessions {
        users
            .add_user(&format!("u{i}"), b"pw", Scheme::Plain)
            .await
            .unwrap();
    }
    // The node's own connections carry an application_name to count by.
    let node_url = format!("{url} application_name=node");
    let text = std::fs::read_to_string(&f.config_path)
        .unwrap()
        .replace(&url, &node_url)
        .replace("pool_size = 4", "pool_size = 4\nlock_connections = 2");
    let config = Config::parse(&text, f.dir.path()).unwrap();
    let store = pg_store(&node_url);
    let passdb = PgPassDb::new(Arc::clone(store.pool())).await;
    let node = Node::start(config, store, passdb).await;
    let mut open = Vec::new();
    for i in 0..sessions {
        open.push(node.login((&format!("u{i}"), "pw")).await);
    }
    let used: i64 = connect(&url)
        .await
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'node'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    // At least the lock connections, or the count proves nothing.
    assert!(
        (2..=4 + 2).contains(&used),
        "{sessions} sessions used {used} connections"
    );
    for mut c in open {
        c.ok("QUIT").await;
    }
    node.stop().await;
}

#[tokio::test]
async fn serve_refuses_a_schema_behind_and_migrate_brings_it_up() {
    let test = "serve_refuses_a_schema_behind";
    let Some(cluster) = cluster(test) else { return };
    let admin = connect(&cluster.url("postgres")).await;
    admin
        .batch_execute("CREATE DATABASE unmigrated")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("mailbag.toml");
    std::fs::write(
        &config,
        format!(
            "[pop3]\nlisten = [\"127.0.0.1:0\"]\n[store]\nkind = \"postgres\"\nurl = \"{}\"\n[auth]\n",
            cluster.url("unmigrated")
        ),
    )
    .unwrap();
    let config = config.to_str().unwrap();
    let out = as_unprivileged(&mut mailbag(), dir.path())
        .args(["serve", "--config", config])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("mailbag migrate"), "{stderr}");
    let (status, stdout, stderr) = run(&["migrate", "--config", config], b"");
    assert!(status.success(), "{stderr}");
    assert_eq!(
        stdout,
        "applied migration 1\napplied migration 2\napplied migration 3\napplied migration 4\n"
    );
    let (status, stdout, _) = run(&["migrate", "--config", config], b"");
    assert!(status.success());
    assert!(stdout.starts_with("schema is current"), "{stdout}");
    let (status, stdout, stderr) = run(&["check-config", "--config", config], b"");
    assert!(status.success() && stdout.ends_with(": OK\n"), "{stderr}");
}

#[tokio::test]
async fn user_commands_manage_the_users_table() {
    let Some(f) = Fixture::new(Backend::Postgres, "user_commands").await else {
        return;
    };
    let config = f.config_path.to_str().unwrap();
    let (status, _, stderr) = run(
        &[
            "user",
            "add",
            "carol",
            "--password-stdin",
            "--config",
            config,
        ],
        b"s3cret\n",
    );
    assert!(status.success(), "{stderr}");
    let (status, _, stderr) = run(
        &[
            "user",
            "add",
            "carol",
            "--password-stdin",
            "--config",
            config,
        ],
        b"other\n",
    );
    assert!(!status.success() && stderr.contains("exists"), "{stderr}");
    let (_, stdout, _) = run(&["user", "list", "--config", config], b"");
    assert_eq!(stdout, "alice\nbob\ncarol\n");
    let node = f.node().await;
    node.login(("carol", "s3cret")).await.ok("QUIT").await;
    let (status, _, stderr) = run(
        &[
            "user",
            "passwd",
            "carol",
            "--password-stdin",
            "--config",
            config,
        ],
        b"n3w\n",
    );
    assert!(status.success(), "{stderr}");
    node.login(("carol", "n3w")).await.ok("QUIT").await;
    let (status, _, _) = run(&["user", "del", "carol", "--config", config], b"");
    assert!(status.success());
    let (_, reply) = node.try_login(("carol", "n3w")).await;
    assert!(reply.starts_with("-ERR"), "{reply}");
}

#[tokio::test]
async fn import_copies_maildir_and_mbox_in_and_back_out_to_both_verified() {
    let Some(f) = Fixture::new(Backend::Postgres, "import").await else {
        return;
    };
    let config = f.config_path.to_str().unwrap();
    let source = f.dir.path().join("old/Maildir");
    let bodies: [&[u8]; 2] = [ONE, TWO];
    for body in bodies {
        mailbag::store::maildir::deliver(&source, body).unwrap();
    }
    let from = format!("maildir:{}", source.display());
    let (status, stdout, stderr) = run(
        &[
            "import", "--user", "alice", "--from", &from, "--config", config,
        ],
        b"",
    );
    assert!(status.success(), "{stderr}");
    let octets = crlf(ONE).len() + crlf(TWO).len();
    assert_eq!(
        stdout,
        format!("copied and verified 2 messages ({octets} octets)\n")
    );

    let mbox = f.dir.path().join("mbox");
    std::fs::write(
        &mbox,
        b"From a@b Mon Jan  1 00:00:00 2024\nSubject: m\n\n>From here\n\nFrom c@d Mon Jan  1 00:00:01 2024\nSubject: n\n\nx\n",
    )
    .unwrap();
    let from = format!("mbox:{}", mbox.display());
    let (status, stdout, stderr) = run(
        &[
            "import", "--user", "alice", "--from", &from, "--config", config,
        ],
        b"",
    );
    assert!(status.success(), "{stderr}");
    assert!(
        stdout.starts_with("copied and verified 2 messages"),
        "{stdout}"
    );

    let back = f.dir.path().join("back/Maildir");
    let to = format!("maildir:{}", back.display());
    let (status, stdout, stderr) = run(
        &["import", "--user", "alice", "--to", &to, "--config", config],
        b"",
    );
    assert!(status.success(), "{stderr}");
    assert!(
        stdout.starts_with("copied and verified 4 messages"),
        "{stdout}"
    );
    let mut got: Vec<Vec<u8>> = ["cur", "new"]
        .iter()
        .flat_map(|sub| maildir_files(&back, sub))
        .map(|(_, body)| body)
        .collect();
    got.sort();
    // Mail files get LF line ends, whatever the message came with (TWO
    // came with CRLF); the POP3 sizes, which the import verified, agree.
    let mut want: Vec<Vec<u8>> = vec![
        ONE.to_vec(),
        b"Subject: two\n\nsecond message\nline 2\n".to_vec(),
        b"Subject: m\n\nFrom here\n".to_vec(),
        b"Subject: n\n\nx\n".to_vec(),
    ];
    want.sort();
    assert_eq!(got, want);

    let out = f.dir.path().join("out.mbox");
    let to = format!("mbox:{}", out.display());
    let (status, stdout, stderr) = run(
        &["import", "--user", "alice", "--to", &to, "--config", config],
        b"",
    );
    assert!(status.success(), "{stderr}");
    assert!(
        stdout.starts_with("copied and verified 4 messages"),
        "{stdout}"
    );
    let mut got = mailbag::admin::import::split_mbox(&std::fs::read(&out).unwrap());
    got.sort();
    assert_eq!(got, want);
}

// ---------------------------------------------------------------- figures

/// Sizing figures for docs/DEPLOYMENT.md, printed, never asserted:
/// `cargo test --test it postgres::figures -- --ignored --nocapture`.
/// Runs on its own cluster with fsync on, as in production.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "prints sizing figures; run by hand"]
async fn figures() {
    let cluster = Cluster::start_with(true).expect("PostgreSQL binaries");
    let url = cluster.database("figures").await;
    let store = pg_store(&url);
    let message: Vec<u8> = {
        let mut m = b"Subject: sizing\r\n\r\n".to_vec();
        while m.len() < 10 * 1024 {
            m.extend_from_slice(b"A line of text of the kind that mail is made of.\r\n");
        }
        m
    };

    let n = 400;
    let started = Instant::now();
    for _ in 0..n {
        Store::deliver(&store, "bob".into(), message.clone())
            .await
            .unwrap();
    }
    let serial = n as f64 / started.elapsed().as_secs_f64();
    let started = Instant::now();
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let store = store.clone();
            let message = message.clone();
            tokio::spawn(async move {
                for _ in 0..n / 8 {
                    Store::deliver(&store, "bob".into(), message.clone())
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let parallel = n as f64 / started.elapsed().as_secs_f64();
    println!("deliver 10 KiB: {serial:.0} msg/s one at a time, {parallel:.0} msg/s 8 at once");

    let admin = connect(&url).await;
    let row = admin
        .query_one(
            "SELECT pg_total_relation_size('messages') + pg_total_relation_size('message_chunks'),
                    (SELECT count(*) FROM messages),
                    sum(octet_length(data))::bigint FROM message_chunks",
            &[],
        )
        .await
        .unwrap();
    let (total, count, body): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    println!(
        "storage: {} octets per 10 KiB message on disk ({:.2}x the body)",
        total / count,
        total as f64 / body as f64
    );

    let config = Config::parse(
        &format!("[pop3]\nlisten = [\"127.0.0.1:0\"]\n[store]\nkind = \"postgres\"\nurl = \"{url}\"\npool_size = 8\nlock_connections = 2\n[auth]\nfailure_delay_ms = 10\n[limits]\nmax_connections_per_address = 1000\n"),
        Path::new("/"),
    )
    .unwrap();
    let node_store = PgStore::new(&PgOptions {
        url: url.clone(),
        pool_size: 8,
        lock_connections: 2,
        ca_file: None,
    })
    .unwrap();
    let passdb = PgPassDb::new(Arc::clone(node_store.pool())).await;
    let node = Arc::new(Node::start(config, node_store, passdb).await);

    // Many sessions in TRANSACTION at once: database connections stay at
    // pool_size + lock_connections, whatever the number of sessions.
    for i in 0..200 {
        let name = format!("user{i}");
        PgPassDb::new(Arc::clone(store.pool()))
            .await
            .add_user(&name, b"pw", Scheme::Plain)
            .await
            .unwrap();
    }
    let mut open = Vec::new();
    for i in 0..200 {
        open.push(node.login((&format!("user{i}"), "pw")).await);
    }
    let backends: i64 = admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    println!("200 sessions in TRANSACTION on one node: {backends} database connections (at most: node pool 8 + node locks 2 + the measuring store's pool 4)");
    for mut c in open {
        c.ok("QUIT").await;
    }

    let sessions = 400;
    let started = Instant::now();
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let node = Arc::clone(&node);
            tokio::spawn(async move {
                for i in 0..sessions / 8 {
                    let user = format!("user{}", t * 25 + i % 25);
                    let mut c = node.login((&user, "pw")).await;
                    c.ok("STAT").await;
                    c.multi("UIDL").await;
                    c.ok("QUIT").await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    println!(
        "login (PLAIN secret), STAT, UIDL, QUIT: {:.0} sessions/s with 8 clients",
        sessions as f64 / started.elapsed().as_secs_f64()
    );

    let big: Vec<u8> = message.iter().copied().cycle().take(20 << 20).collect();
    Store::deliver(&store, "carol".into(), big.clone())
        .await
        .unwrap();
    PgPassDb::new(Arc::clone(store.pool()))
        .await
        .add_user("carol", b"pw", Scheme::Plain)
        .await
        .unwrap();
    let mut c = node.login(("carol", "pw")).await;
    let started = Instant::now();
    let (_, body) = c.multi("RETR 1").await;
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(body.len(), crlf(&big).len());
    println!(
        "RETR of a 20 MiB message: {:.0} MB/s (rows of 8,000 octets)",
        big.len() as f64 / secs / 1e6
    );
    c.ok("QUIT").await;
}

// ------------------------------------------- more shared behaviours

fn md5_hex(data: &[u8]) -> String {
    use md5::Digest;
    md5::Md5::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

async fn passwords_apop_and_unknown_users_authenticate_alike(backend: Backend) {
    let Some(f) = Fixture::new(
        backend,
        "passwords_apop_and_unknown_users_authenticate_alike",
    )
    .await
    else {
        return;
    };
    let node = f.node().await;
    node.login(BOB).await.ok("QUIT").await;
    for (user, password) in [("bob", "wrong"), ("nobody", "builder")] {
        let (_, reply) = node.try_login((user, password)).await;
        assert!(reply.starts_with("-ERR [AUTH]"), "{user}: {reply}");
    }
    // alice's secret is plaintext-equivalent, so the greeting offers APOP.
    let mut c = Client::connect(node.addr).await;
    let greeting = c.line().await;
    let ts = &greeting[greeting.find('<').expect("APOP timestamp")..=greeting.rfind('>').unwrap()];
    let digest = md5_hex(format!("{ts}{}", ALICE.1).as_bytes());
    c.ok(&format!("APOP alice {digest}")).await;
    c.ok("QUIT").await;
}

async fn lmtp_delivery_is_retrieved_byte_exact_and_unknown_users_are_refused(backend: Backend) {
    let Some(f) = Fixture::new(
        backend,
        "lmtp_delivery_is_retrieved_byte_exact_and_unknown_users_are_refused",
    )
    .await
    else {
        return;
    };
    let node = f.node().await;
    let lmtp = node.lmtp.unwrap();
    let reply = lmtp_deliver(lmtp, "nobody", b"x\r\n").await;
    assert!(reply.starts_with("550"), "{reply}");
    let body = b"Subject: over lmtp\r\n\r\n..starts with a dot\r\n\xff 8-bit\r\n";
    let reply = lmtp_deliver(lmtp, "alice", body).await;
    assert!(reply.starts_with("250"), "{reply}");
    let mut c = node.login(ALICE).await;
    let (_, got) = c.multi("RETR 1").await;
    // LMTP unstuffs the leading dot; the stored message gains trace headers.
    assert!(
        got.ends_with(b"Subject: over lmtp\r\n\r\n.starts with a dot\r\n\xff 8-bit\r\n"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    assert!(got.starts_with(b"Return-Path: <x@example.org>\r\n"));
    c.ok("QUIT").await;
}

// ------------------------------------------- an unknown COMMIT outcome

/// What a [`relay`] does with one read of a client's bytes.
pub(crate) enum Relay {
    /// Pass them on.
    Forward,
    /// Close the connection without passing them on: the client reads
    /// the end of its connection and nothing else.
    Cut,
    /// Pass them on (the server executes and commits), swallow every
    /// reply, then close the connection after a while.
    LoseReplies,
}

/// A TCP relay to PostgreSQL on `upstream`. `per_connection` makes, for
/// each connection, the function that decides what becomes of each read
/// from the client. Returns the relay's port.
pub(crate) async fn relay<F, D>(upstream: u16, per_connection: F) -> u16
where
    F: Fn() -> D + Send + 'static,
    D: FnMut(&[u8]) -> Relay + Send + 'static,
{
    use std::sync::atomic::AtomicBool;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let mut decide = per_connection();
            tokio::spawn(async move {
                let server = tokio::net::TcpStream::connect(("127.0.0.1", upstream))
                    .await
                    .unwrap();
                let (mut client_rx, mut client_tx) = client.into_split();
                let (mut server_rx, mut server_tx) = server.into_split();
                let muted = Arc::new(AtomicBool::new(false));
                let muted_replies = Arc::clone(&muted);
                let replies = tokio::spawn(async move {
                    let mut buf = vec![0u8; 65536];
                    while let Ok(n @ 1..) = server_rx.read(&mut buf).await {
                        if !muted_replies.load(Ordering::SeqCst)
                            && client_tx.write_all(&buf[..n]).await.is_err()
                        {
                            return;
                        }
                    }
                });
                let mut buf = vec![0u8; 1 << 20];
                while let Ok(n @ 1..) = client_rx.read(&mut buf).await {
                    let chunk = &buf[..n];
                    match decide(chunk) {
                        Relay::Forward => {}
                        Relay::Cut => {
                            replies.abort();
                            return;
                        }
                        Relay::LoseReplies => {
                            muted.store(true, Ordering::SeqCst);
                            let _ = server_tx.write_all(chunk).await;
                            // Long enough for the server to execute and
                            // commit.
                            tokio::time::sleep(Duration::from_millis(500)).await;
                            replies.abort();
                            return;
                        }
                    }
                    if server_tx.write_all(chunk).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

/// A TCP proxy to PostgreSQL that, once, lets the statement after an
/// `INSERT INTO messages` prepare reach the server (so it executes and
/// commits) but never relays the reply, then cuts the connection: what a
/// network failure at the worst moment looks like to the node. Returns
/// its port and whether the cut has happened.
pub(crate) async fn reply_losing_proxy(upstream: u16) -> (u16, Arc<std::sync::atomic::AtomicBool>) {
    use std::sync::atomic::AtomicBool;
    let armed = Arc::new(AtomicBool::new(true));
    let cut = Arc::new(AtomicBool::new(false));
    let cut_out = Arc::clone(&cut);
    let port = relay(upstream, move || {
        let (armed, cut) = (Arc::clone(&armed), Arc::clone(&cut));
        let mut insert_prepared = false;
        move |chunk: &[u8]| {
            if insert_prepared {
                cut.store(true, Ordering::SeqCst);
                return Relay::LoseReplies;
            }
            if chunk.windows(20).any(|w| w == b"INSERT INTO messages")
                && armed.swap(false, Ordering::SeqCst)
            {
                insert_prepared = true;
            }
            Relay::Forward
        }
    })
    .await;
    (port, cut_out)
}

#[tokio::test]
async fn a_delivery_whose_commit_reply_is_lost_is_found_not_repeated() {
    let test = "a_delivery_whose_commit_reply_is_lost";
    let Some(cluster) = cluster(test) else { return };
    let url = cluster.database("lost_reply").await;
    let (port, cut) = reply_losing_proxy(cluster.port).await;
    let store = pg_store(&url.replace(&format!("port={}", cluster.port), &format!("port={port}")));
    // Acknowledged although the reply never came: the node looked the
    // message's UIDL up. Refusing it would make the MTA send it again.
    let uidl = Store::deliver(
        &store,
        "alice".into(),
        b"Subject: once\r\n\r\nx\r\n".to_vec(),
    )
    .await
    .unwrap();
    assert!(cut.load(Ordering::SeqCst), "the proxy never cut");
    let rows: Vec<String> = connect(&url)
        .await
        .query("SELECT uidl FROM messages", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(rows, vec![uidl]);
}

/// `mailbag mailbox` with a PostgreSQL store: `inspect` and `show` read
/// the maildrop through the store, numbered by the POP3 core's rule and
/// under the lock POP3 sessions take; `quarantine` and `release`, which
/// move Maildir files, are refused with nothing done.
#[tokio::test]
async fn mailbox_inspects_and_shows_a_postgres_maildrop_and_moves_nothing() {
    let Some(f) = Fixture::new(Backend::Postgres, "mailbox_commands").await else {
        return;
    };
    let config = f.config_path.to_str().unwrap();
    f.deliver(
        "alice",
        b"From: Carol <carol@example.org>\nSubject: first of two\n\nx\n",
    )
    .await;
    f.deliver("alice", b"Subject: second of two\r\n\r\nbody\r\n")
        .await;
    let mailbox = |args: &[&str]| {
        let mut all = vec!["mailbox"];
        all.extend_from_slice(args);
        all.extend(["--config", config]);
        run(&all, b"")
    };

    let (status, table, stderr) = mailbox(&["inspect", "alice"]);
    assert!(status.success(), "{stderr}");
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("alice: 2 messages ("), "{table}");
    assert_eq!(lines.len(), 3, "{table}");
    for (line, (number, subject)) in lines[1..].iter().zip([("1", "first"), ("2", "second")]) {
        let columns: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(columns[0], number, "{table}");
        assert!(line.contains(&format!("{subject} of two")), "{table}");
    }

    let (status, header, stderr) = mailbox(&["show", "alice", "2"]);
    assert!(status.success(), "{stderr}");
    assert_eq!(header, "Subject: second of two\n");
    for number in ["3", "0", "+1", "1a", "99999999999999999999999"] {
        let (status, _, stderr) = mailbox(&["show", "alice", number]);
        assert!(!status.success(), "show {number} succeeded");
        assert!(stderr.contains("no message"), "{number}: {stderr}");
    }
    let (_, _, stderr) = mailbox(&["show", "alice", "3"]);
    assert!(
        stderr.contains("no message 3: the maildrop has 2 messages"),
        "{stderr}"
    );

    for args in [["quarantine", "alice", "1"], ["release", "alice", "x"]] {
        let (status, _, stderr) = mailbox(&args);
        assert!(!status.success(), "{args:?} succeeded");
        assert!(
            stderr.contains(&format!(
                "mailbox {} moves message files within a Maildir",
                args[0]
            )) && stderr.contains("store.kind is \"postgres\"; nothing was done"),
            "{args:?}: {stderr}"
        );
    }

    let node = f.node().await;
    let mut c = node.login(ALICE).await;
    assert!(c.ok("STAT").await.starts_with("+OK 2 "));
    let (status, _, stderr) = mailbox(&["inspect", "alice"]);
    assert!(!status.success());
    assert!(
        stderr.contains("the maildrop of alice is in use by a POP3 session"),
        "{stderr}"
    );
    c.ok("QUIT").await;
}

/// An admin command that opens a maildrop a moment after a session let
/// it go (its unlock still on the way) waits for it as a login does,
/// instead of answering "in use"; and it releases the maildrop itself
/// before it returns, so that the next session or command finds it free.
#[tokio::test]
async fn mailbox_waits_for_a_maildrop_being_released_and_releases_it_itself() {
    use mailbag::admin::mailbox::{run_with, MailboxCommand};
    let test = "mailbox_waits_for_a_maildrop_being_released";
    let Some(cluster) = cluster(test) else { return };
    let url = cluster.database("admin_waits").await;
    let store = pg_store(&url);
    let config = Config::parse(
        &format!("[pop3]\nlisten = [\"127.0.0.1:0\"]\n[store]\nkind = \"postgres\"\nurl = \"{url}\"\n[auth]\nfailure_delay_ms = 10\n"),
        Path::new("/"),
    )
    .unwrap();
    Store::deliver(&store, "alice".into(), b"Subject: s\r\n\r\nx\r\n".to_vec())
        .await
        .unwrap();
    let inspect = || MailboxCommand::Inspect {
        user: "alice".into(),
    };
    // Connects the lock connection and prepares its statements, so that
    // the next open asks PostgreSQL at once.
    let mut out = Vec::new();
    run_with(&store, &config, inspect(), &mut out)
        .await
        .unwrap();

    // Another node's session holds the maildrop, and lets it go a moment
    // after the command first finds it locked.
    let other = connect(&url).await;
    async fn free(other: &tokio_postgres::Client) -> bool {
        other
            .query_one(
                "SELECT pg_try_advisory_lock(id) FROM maildrops WHERE name = 'alice'",
                &[],
            )
            .await
            .unwrap()
            .get(0)
    }
    assert!(free(&other).await, "the command left the maildrop locked");
    let unlock = async {
        tokio::time::sleep(Duration::from_millis(10)).await;
        other
            .execute(
                "SELECT pg_advisory_unlock(id) FROM maildrops WHERE name = 'alice'",
                &[],
            )
            .await
            .unwrap();
    };
    let mut out = Vec::new();
    let (done, ()) = tokio::join!(run_with(&store, &config, inspect(), &mut out), unlock);
    done.unwrap();
    assert!(String::from_utf8_lossy(&out).starts_with("alice: 1 message "));
    assert!(free(&other).await, "the command left the maildrop locked");
    assert!(
        matches!(
            run_with(&store, &config, inspect(), &mut Vec::new()).await,
            Err(mailbag::admin::mailbox::MailboxError::Locked(_))
        ),
        "a maildrop held all along is in use"
    );
}

/// Frontend messages of the PostgreSQL protocol that a proxy saw go to
/// the server: statements parsed (`P`) and round trips (`S`, each
/// extended-protocol exchange ends with one Sync).
#[derive(Default)]
pub(crate) struct Sent {
    pub(crate) parses: std::sync::atomic::AtomicUsize,
    pub(crate) syncs: std::sync::atomic::AtomicUsize,
    /// Rows the server sent back (`D`, DataRow).
    pub(crate) rows: std::sync::atomic::AtomicUsize,
    /// Octets the server sent back.
    pub(crate) received_octets: std::sync::atomic::AtomicUsize,
}

/// A TCP proxy to PostgreSQL that counts what [`Sent`] counts, reading
/// the backend's message framing and the frontend's (the untyped startup message, then a
/// type octet and a length for each message).
pub(crate) async fn counting_proxy(upstream: u16) -> (u16, Arc<Sent>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let sent = Arc::new(Sent::default());
    let counted = Arc::clone(&sent);
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let sent = Arc::clone(&counted);
            tokio::spawn(async move {
                let server = tokio::net::TcpStream::connect(("127.0.0.1", upstream))
                    .await
                    .unwrap();
                let (mut client_rx, mut client_tx) = client.into_split();
                let (mut server_rx, mut server_tx) = server.into_split();
                let received = Arc::clone(&sent);
                tokio::spawn(async move {
                    // The server's messages are all a type octet and a
                    // length (no TLS is asked for here).
                    let mut pending = Vec::new();
                    let mut buf = vec![0u8; 65536];
                    while let Ok(n @ 1..) = server_rx.read(&mut buf).await {
                        received.received_octets.fetch_add(n, Ordering::SeqCst);
                        pending.extend_from_slice(&buf[..n]);
                        while let Some(len) = pending.get(1..5) {
                            let whole = 1 + u32::from_be_bytes(len.try_into().unwrap()) as usize;
                            if pending.len() < whole {
                                break;
                            }
                            if pending[0] == b'D' {
                                received.rows.fetch_add(1, Ordering::SeqCst);
                            }
                            pending.drain(..whole);
                        }
                        if client_tx.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
                let mut pending = Vec::new();
                let mut started = false;
                let mut buf = vec![0u8; 65536];
                while let Ok(n @ 1..) = client_rx.read(&mut buf).await {
                    pending.extend_from_slice(&buf[..n]);
                    loop {
                        let (kind, at) = if started {
                            (pending.first().copied(), 1)
                        } else {
                            (None, 0)
                        };
                        let Some(len) = pending.get(at..at + 4) else {
                            break;
                        };
                        let whole = at + u32::from_be_bytes(len.try_into().unwrap()) as usize;
                        if pending.len() < whole {
                            break;
                        }
                        match kind {
                            Some(b'P') => sent.parses.fetch_add(1, Ordering::SeqCst),
                            Some(b'S') => sent.syncs.fetch_add(1, Ordering::SeqCst),
                            _ => 0,
                        };
                        pending.drain(..whole);
                        started = true;
                    }
                    if server_tx.write_all(&buf[..n]).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, sent)
}

/// A login cycle (USER, PASS, STAT, QUIT) of a user who has logged in
/// before costs four round trips to PostgreSQL, none of them parsing a
/// statement: the spellings of the name with the secret, the lock with
/// the maildrop's id, the snapshot, and the unlock. The name the
/// password check gave is the maildrop opened, not looked up again. A
/// wrong password and an unknown user each cost the one lookup.
#[tokio::test]
async fn a_warm_login_is_four_round_trips_of_prepared_statements() {
    let test = "a_warm_login_is_four_round_trips";
    let Some(cluster) = cluster(test) else { return };
    let url = cluster.database("round_trips").await;
    let (port, sent) = counting_proxy(cluster.port).await;
    let url = url.replace(&format!("port={}", cluster.port), &format!("port={port}"));
    let config = Config::parse(
        &format!("[pop3]\nlisten = [\"127.0.0.1:0\"]\n[store]\nkind = \"postgres\"\nurl = \"{url}\"\n[auth]\nfailure_delay_ms = 10\n"),
        Path::new("/"),
    )
    .unwrap();
    let store = pg_store(&url);
    let passdb = PgPassDb::new(Arc::clone(store.pool())).await;
    let node = Node::start(config, store, passdb).await;
    let cycle = || async {
        let mut c = node.login(ALICE).await;
        c.ok("STAT").await;
        c.ok("QUIT").await;
    };
    // The first logins prepare the statements on the connections they
    // take (the pool holds up to four) and create the maildrop.
    for _ in 0..8 {
        cycle().await;
    }
    let counts = || {
        (
            sent.parses.load(Ordering::SeqCst),
            sent.syncs.load(Ordering::SeqCst),
        )
    };
    let before = counts();
    const CYCLES: usize = 10;
    for _ in 0..CYCLES {
        cycle().await;
    }
    let after = counts();
    assert_eq!(after.0 - before.0, 0, "statements parsed by warm logins");
    assert_eq!(
        after.1 - before.1,
        4 * CYCLES,
        "round trips of {CYCLES} warm login cycles"
    );
    for (user, password) in [
        (ALICE.0, "wrong"),
        ("nobody", "x"),
        ("ALICE@localhost", "wrong"),
    ] {
        let before = counts();
        let (_c, reply) = node.try_login((user, password)).await;
        assert!(reply.starts_with("-ERR"), "{user}: {reply}");
        assert_eq!(counts(), (before.0, before.1 + 1), "{user}: one lookup");
    }
}

/// A thread with a runtime of its own that runs all along, as each of
/// the server's session threads has, that asks the pool for a connection
/// and says which server process it reached.
struct PoolThread {
    jobs: tokio::sync::mpsc::UnboundedSender<std::sync::mpsc::Sender<i32>>,
}

impl PoolThread {
    fn start(pool: Arc<mailbag::pg::pool::Pool>) -> PoolThread {
        let (jobs, mut rx) = tokio::sync::mpsc::unbounded_channel::<std::sync::mpsc::Sender<i32>>();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                while let Some(reply) = rx.recv().await {
                    let client = pool.get().await.unwrap();
                    let pid = client
                        .query_one("SELECT pg_backend_pid()", &[])
                        .await
                        .unwrap()
                        .get::<_, i32>(0);
                    drop(client);
                    let _ = reply.send(pid);
                }
            });
        });
        PoolThread { jobs }
    }

    /// The backend of the connection the pool gave this thread.
    fn backend(&self) -> i32 {
        let (tx, rx) = std::sync::mpsc::channel();
        self.jobs.send(tx).unwrap();
        rx.recv_timeout(Duration::from_secs(30)).unwrap()
    }
}

/// The pool hands a thread the connection it opened (whose IO runs on
/// that thread's runtime), opens one per thread while it may, and past
/// its size shares the ones it has.
#[test]
fn pooled_connections_stay_with_the_thread_that_opened_them() {
    let test = "pooled_connections_stay_with_their_thread";
    let Some(cluster) = cluster(test) else { return };
    let url = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(cluster.database("affinity"));
    let config: tokio_postgres::Config = url.parse().unwrap();
    let pool = mailbag::pg::pool::Pool::new(config, 2, None);
    let (a, b) = (
        PoolThread::start(Arc::clone(&pool)),
        PoolThread::start(Arc::clone(&pool)),
    );
    let (first_a, first_b) = (a.backend(), b.backend());
    assert_ne!(first_a, first_b, "each thread opens its own");
    for _ in 0..5 {
        assert_eq!(a.backend(), first_a);
        assert_eq!(b.backend(), first_b);
    }
    // A third thread finds two open, the size: it gets one of them.
    let c = PoolThread::start(Arc::clone(&pool));
    let third = c.backend();
    assert!([first_a, first_b].contains(&third), "{third}");
}

/// Bodies that test the canonical form (bare CRs, CR CR LF, a final CR, no
/// final line end, only line ends, NUL and 8-bit octets, `From ` lines
/// that the conversion to LF ends brings to a line start, dots), delivered
/// into PostgreSQL directly, over LMTP and by `mailbag deliver`: LIST
/// announces each one's canonical size, RETR sends exactly that body, TOP
/// and UIDL answer, and `import --to` a Maildir and an mbox file copies
/// them out with LF ends, verified, with their sizes and mboxrd quoting
/// kept.
#[tokio::test]
async fn canonical_bodies_keep_their_size_through_delivery_retr_and_import_out() {
    let test = "canonical_bodies_keep_their_size";
    let Some(f) = Fixture::new(Backend::Postgres, test).await else {
        return;
    };
    let config = f.config_path.to_str().unwrap();
    let bodies: [&[u8]; 14] = [
        b"",
        b"a\rb\r\n\rc\n",
        b"x\r\r\ny\r\r\r\n",
        b"ends in a CR\r",
        b"ends in two CRs\r\r",
        b"no line end",
        b"\r\n\r\n\r\n",
        b"\n\n",
        b"\0\xff\x80\r\0\n\xfe",
        b"Subject: f\r\n\r\nFrom here\r\n>From there\r\n\r\nFrom x\r\n",
        b"s\r\r\nFrom y\r\n\rFrom z\n",
        b".\r\n..\r\n.\r\r\n.",
        b"From \r\n",
        b"\r",
    ];
    for body in bodies {
        f.deliver("alice", body).await;
    }
    let node = f.node().await;
    let lmtp = node.lmtp.unwrap();
    // LMTP brings lines that start with a dot stuffed; these have none.
    for body in [&b"l\r\r\nFrom m\r\n"[..], b"\r\n", b"\xff\r\x00\r\n"] {
        let reply = lmtp_deliver(lmtp, "alice", body).await;
        assert!(reply.starts_with("250"), "{reply}");
    }
    let (status, _, stderr) = run(
        &["deliver", "--user", "alice", "--config", config],
        b"d\r\r\nFrom d\n\r",
    );
    assert!(status.success(), "{stderr}");

    let mut c = node.login(ALICE).await;
    let (_, listing) = c.multi("LIST").await;
    let sizes: Vec<u64> = String::from_utf8(listing)
        .unwrap()
        .lines()
        .map(|l| l.split(' ').nth(1).unwrap().parse().unwrap())
        .collect();
    assert_eq!(sizes.len(), bodies.len() + 4);
    let mut retrieved = Vec::new();
    for (i, &size) in sizes.iter().enumerate() {
        let (_, got) = c.multi(&format!("RETR {}", i + 1)).await;
        assert_eq!(got.len() as u64, size, "message {}", i + 1);
        if let Some(body) = bodies.get(i) {
            assert_eq!(got, crlf(body), "message {}", i + 1);
        }
        let (_, top) = c.multi(&format!("TOP {} 0", i + 1)).await;
        assert!(got.starts_with(&top));
        retrieved.push(got);
    }
    let (_, uidl) = c.multi("UIDL").await;
    assert_eq!(uidl.split(|&b| b == b'\n').count(), sizes.len() + 1);
    c.ok("QUIT").await;
    retrieved.sort();

    let back = f.dir.path().join("back/Maildir");
    let to = format!("maildir:{}", back.display());
    let (status, stdout, stderr) = run(
        &["import", "--user", "alice", "--to", &to, "--config", config],
        b"",
    );
    assert!(status.success(), "{stderr}");
    let total: u64 = sizes.iter().sum();
    assert_eq!(
        stdout,
        format!(
            "copied and verified {} messages ({total} octets)\n",
            sizes.len()
        )
    );
    let mut files: Vec<Vec<u8>> = ["cur", "new"]
        .iter()
        .flat_map(|sub| maildir_files(&back, sub))
        .map(|(_, body)| crlf(&body))
        .collect();
    files.sort();
    assert_eq!(files, retrieved);

    let out = f.dir.path().join("out.mbox");
    let to = format!("mbox:{}", out.display());
    let (status, stdout, stderr) = run(
        &["import", "--user", "alice", "--to", &to, "--config", config],
        b"",
    );
    assert!(status.success(), "{stderr}");
    assert!(stdout.contains(&format!("({total} octets)")), "{stdout}");
    let mbox = std::fs::read(&out).unwrap();
    // Every `From ` at a line start that is no separator is quoted.
    let separators = mbox
        .split(|&b| b == b'\n')
        .filter(|l| l.starts_with(b"From "))
        .count();
    assert_eq!(separators, sizes.len());
    let mut messages: Vec<Vec<u8>> = mailbag::admin::import::split_mbox(&mbox)
        .iter()
        .map(|m| crlf(m))
        .collect();
    messages.sort();
    assert_eq!(messages, retrieved);
}

/// A UIDL the user's maildrop already holds, or one RFC 1939 does not
/// allow: nothing is stored and the message comes back, so that an
/// import delivers it under a new UIDL without holding a copy of its own.
/// Another user's maildrop holding the UIDL takes nothing from this one.
#[tokio::test]
async fn a_uidl_the_maildrop_holds_hands_the_message_back() {
    use crate::support::pg::{pg_store, Backend, Fixture};
    let Some(f) = Fixture::new(Backend::Postgres, "uidl_held_hands_back").await else {
        return;
    };
    let store = pg_store(f.url.as_deref().unwrap());
    let keep = |user: &'static str, message: &'static [u8], uidl: &'static str| {
        let store = &store;
        async move {
            store
                .deliver_with_uidl(user, message.to_vec(), uidl)
                .await
                .unwrap()
        }
    };
    assert_eq!(keep("alice", b"Subject: a\n\nx\n", "KEPT-1").await, Ok(()));
    assert_eq!(
        keep("alice", b"Subject: b\n\ny\n", "KEPT-1").await,
        Err(b"Subject: b\r\n\r\ny\r\n".to_vec())
    );
    assert_eq!(keep("bob", b"Subject: c\n\nz\n", "KEPT-1").await, Ok(()));
    assert_eq!(
        keep("alice", b"Subject: d\n\nw\n", "no spaces").await,
        Err(b"Subject: d\n\nw\n".to_vec())
    );
}
