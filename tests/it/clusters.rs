//! Users spread over two PostgreSQL clusters (two postmasters of their
//! own): the directory sends each user's mail and logins to their
//! cluster, and `mailbag move-user` moves a maildrop between them while
//! mail arrives, losing and doubling nothing and keeping every UIDL.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use mailbag::admin::move_user::{move_user, MoveError, MoveOptions, MOVE_LOCK_CLASS};
use mailbag::auth::postgres::PgPassDb;
use mailbag::config::Config;
use mailbag::store::postgres::cluster::PgClusters;
use mailbag::store::postgres::PgStore;
use mailbag::store::{Store, StoreError};

use crate::support::pg::*;
use crate::support::*;

/// The shared cluster and a second postmaster, each with a fresh
/// database (alice and bob in the users table of both; the first is the
/// directory).
struct Two {
    a: String,
    b: String,
    dir: tempfile::TempDir,
}

fn second(test: &str) -> Option<&'static Cluster> {
    static SECOND: OnceLock<Result<Cluster, String>> = OnceLock::new();
    match SECOND.get_or_init(Cluster::start) {
        Ok(cluster) => Some(cluster),
        Err(why) => skip(test, why),
    }
}

impl Two {
    async fn new(test: &str) -> Option<Two> {
        let a = cluster(test)?.database(test).await;
        let b = second(test)?.database(test).await;
        let two = Two {
            a,
            b,
            dir: tempfile::tempdir().unwrap(),
        };
        std::fs::write(two.config_path(), two.config_text(false)).unwrap();
        Some(two)
    }

    /// `b_new_users`: whether users never seen may go to b (off: every
    /// first placement is a, so a test knows where a user starts).
    fn config_text(&self, b_new_users: bool) -> String {
        format!(
            "[pop3]\nlisten = [\"127.0.0.1:0\"]\n[lmtp]\nlisten = [\"127.0.0.1:0\"]\n\
             [store]\nkind = \"postgres\"\npool_size = 4\n\
             [[store.clusters]]\nname = \"a\"\nurl = \"{}\"\n\
             [[store.clusters]]\nname = \"b\"\nurl = \"{}\"\nnew_users = {b_new_users}\n\
             [auth]\nfailure_delay_ms = 10\n",
            self.a, self.b
        )
    }

    /// The config file, written once (`mailbag` commands read it while
    /// the test runs).
    fn config_path(&self) -> PathBuf {
        self.dir.path().join("mailbag.toml")
    }

    fn config(&self) -> Config {
        Config::load(&self.config_path()).unwrap()
    }

    fn store(&self) -> PgClusters {
        PgClusters::from_config(&self.config().store).unwrap()
    }

    /// The same clusters reached through [`crate::postgres::reply_losing_proxy`]:
    /// the first insert's reply is lost as its connection breaks. Also
    /// whether the cut has happened.
    async fn store_losing_a_reply(&self, test: &str) -> (PgClusters, Arc<AtomicBool>) {
        let port = cluster(test).unwrap().port;
        let (proxy, cut) = crate::postgres::reply_losing_proxy(port).await;
        let text = self
            .config_text(false)
            .replace(&format!("port={port}"), &format!("port={proxy}"));
        let config = Config::parse(&text, std::path::Path::new("/")).unwrap();
        (PgClusters::from_config(&config.store).unwrap(), cut)
    }

    async fn node(&self) -> Node {
        let store = self.store();
        let passdb = PgPassDb::new(Arc::clone(store.pool())).await;
        Node::start(self.config(), store, passdb).await
    }
}

/// (uidl, subject) of every message of `user` in the database at `url`.
async fn held(url: &str, user: &str) -> Vec<(String, String)> {
    connect(url)
        .await
        .query(
            "SELECT m.uidl, substring(convert_from(
                        (SELECT string_agg(data, ''::bytea ORDER BY seq)
                           FROM message_chunks WHERE message_id = m.id),
                        'UTF8') FROM 'Subject: ([^\r\n]*)')
               FROM messages m JOIN maildrops d ON d.id = m.maildrop_id
              WHERE d.name = $1 ORDER BY m.id",
            &[&user],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

async fn placement(url: &str, user: &str) -> Option<String> {
    connect(url)
        .await
        .query_opt("SELECT cluster FROM placements WHERE name = $1", &[&user])
        .await
        .unwrap()
        .map(|r| r.get(0))
}

async fn state(url: &str, user: &str) -> Option<String> {
    connect(url)
        .await
        .query_opt("SELECT state FROM maildrops WHERE name = $1", &[&user])
        .await
        .unwrap()
        .map(|r| r.get(0))
}

/// One LMTP transaction; the reply that decided it.
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

/// The UIDL listing of a POP3 session: uidl by message number.
async fn uidls(c: &mut Client) -> Vec<String> {
    let (status, body) = c.multi("UIDL").await;
    assert!(status.starts_with("+OK"), "{status}");
    String::from_utf8(body)
        .unwrap()
        .lines()
        .map(|l| l.split(' ').nth(1).unwrap().to_owned())
        .collect()
}

fn mailbag() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mailbag"))
}

fn run(args: &[&str], stdin: &[u8], env: &[(&str, &str)]) -> (Option<i32>, String, String) {
    use std::io::Write;
    let mut child = mailbag()
        .args(args)
        .env("MAILBAG_LOG", "warn")
        .envs(env.iter().copied())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn options(wait_ms: u64) -> MoveOptions {
    MoveOptions {
        wait: Duration::from_millis(wait_ms),
        stop_after: None,
        batch_messages: 2,
    }
}

#[tokio::test]
async fn a_move_while_lmtp_and_deliver_keep_arriving_loses_and_doubles_nothing() {
    let test = "move_during_deliveries";
    let Some(two) = Two::new(test).await else {
        return;
    };
    let node = two.node().await;
    let lmtp = node.lmtp.unwrap();
    for i in 0..5 {
        let reply = lmtp_deliver(
            lmtp,
            "alice",
            format!("Subject: before{i}\r\n\r\nx\r\n").as_bytes(),
        )
        .await;
        assert!(reply.starts_with("250"), "{reply}");
    }
    assert_eq!(placement(&two.a, "alice").await.as_deref(), Some("a"));
    assert_eq!(held(&two.a, "alice").await.len(), 5);
    assert!(held(&two.b, "alice").await.is_empty());
    let mut c = node.login(ALICE).await;
    let before = uidls(&mut c).await;
    c.ok("QUIT").await;

    // Two streams, as an MTA runs them: each message is tried until it
    // is acknowledged (a 4xx is retried), bounded in tries.
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let lmtp_stream = {
        let (stop, sent) = (Arc::clone(&stop), Arc::clone(&sent));
        tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            let mut deferred = 0;
            for i in 0..400 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let subject = format!("lmtp{i}");
                for _ in 0..200 {
                    let reply = lmtp_deliver(
                        lmtp,
                        "alice",
                        format!("Subject: {subject}\r\n\r\nx\r\n").as_bytes(),
                    )
                    .await;
                    if reply.starts_with("250") {
                        acknowledged.push(subject.clone());
                        break;
                    }
                    assert!(reply.starts_with('4'), "only temporary failures: {reply}");
                    deferred += 1;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                sent.fetch_add(1, Ordering::SeqCst);
            }
            (acknowledged, deferred)
        })
    };
    let config = two.config_path();
    let deliver_stream = {
        let stop = Arc::clone(&stop);
        let config = config.clone();
        tokio::task::spawn_blocking(move || {
            let mut acknowledged = Vec::new();
            for i in 0..30 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let subject = format!("deliver{i}");
                for _ in 0..100 {
                    let (code, _, stderr) = run(
                        &[
                            "deliver",
                            "--user",
                            "alice",
                            "--config",
                            config.to_str().unwrap(),
                        ],
                        format!("Subject: {subject}\n\nx\n").as_bytes(),
                        &[],
                    );
                    if code == Some(0) {
                        acknowledged.push(subject.clone());
                        break;
                    }
                    assert_eq!(code, Some(75), "only EX_TEMPFAIL: {stderr}");
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
            acknowledged
        })
    };
    while sent.load(Ordering::SeqCst) < 10 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let moved = move_user(&two.store(), "alice", "b", &options(5000))
        .await
        .unwrap();
    assert_eq!(moved.from.as_deref(), Some("a"));
    let after_move = sent.load(Ordering::SeqCst);
    while sent.load(Ordering::SeqCst) < after_move + 10 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let (mut acknowledged, deferred) = lmtp_stream.await.unwrap();
    acknowledged.extend(deliver_stream.await.unwrap());
    eprintln!(
        "{} acknowledged, {deferred} LMTP deferrals",
        acknowledged.len()
    );

    assert_eq!(placement(&two.a, "alice").await.as_deref(), Some("b"));
    assert!(held(&two.a, "alice").await.is_empty(), "nothing left on a");
    assert_eq!(state(&two.a, "alice").await.as_deref(), Some("moved"));
    let on_b = held(&two.b, "alice").await;
    let mut count: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, subject) in &on_b {
        *count.entry(subject.as_str()).or_default() += 1;
    }
    for subject in (0..5)
        .map(|i| format!("before{i}"))
        .chain(acknowledged.iter().cloned())
    {
        assert_eq!(
            count.get(subject.as_str()),
            Some(&1),
            "{subject} exactly once on b"
        );
    }
    assert_eq!(
        on_b.len(),
        5 + acknowledged.len(),
        "nothing unacknowledged or doubled"
    );

    // The same UIDLs for the messages from before, in the same order.
    let mut c = node.login(ALICE).await;
    let after = uidls(&mut c).await;
    assert_eq!(after[..5], before[..]);
    c.ok("QUIT").await;
    node.stop().await;
}

#[tokio::test]
async fn a_pop3_session_holds_off_a_move_and_its_deletes_stay_right() {
    let test = "session_holds_off_a_move";
    let Some(two) = Two::new(test).await else {
        return;
    };
    let node = two.node().await;
    let lmtp = node.lmtp.unwrap();
    for i in 0..3 {
        let reply = lmtp_deliver(
            lmtp,
            "alice",
            format!("Subject: m{i}\r\n\r\nx\r\n").as_bytes(),
        )
        .await;
        assert!(reply.starts_with("250"), "{reply}");
    }
    let mut c = node.login(ALICE).await;
    let listed = uidls(&mut c).await;
    c.ok("DELE 1").await;

    // Without waiting: refused, nothing changed, mail still arrives on a.
    let store = two.store();
    let refused = move_user(&store, "alice", "b", &options(0))
        .await
        .unwrap_err();
    assert!(
        matches!(&refused, MoveError::Refused(why) if why.contains("POP3 session")),
        "{refused}"
    );
    assert_eq!(state(&two.a, "alice").await.as_deref(), Some("active"));
    let reply = lmtp_deliver(lmtp, "alice", b"Subject: m3\r\n\r\nx\r\n").await;
    assert!(reply.starts_with("250"), "{reply}");
    assert_eq!(held(&two.a, "alice").await.len(), 4);

    // Waiting: the move goes ahead once the session has ended, after its
    // deletion.
    let waiting = tokio::spawn({
        let store = store.clone();
        async move { move_user(&store, "alice", "b", &options(20_000)).await }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!waiting.is_finished(), "the move waits for the session");
    assert_eq!(placement(&two.a, "alice").await.as_deref(), Some("a"));
    c.ok("QUIT").await;
    waiting.await.unwrap().unwrap();
    let on_b = held(&two.b, "alice").await;
    let subjects: Vec<&str> = on_b.iter().map(|(_, s)| s.as_str()).collect();
    assert_eq!(subjects, ["m1", "m2", "m3"]);
    assert!(
        !on_b.iter().any(|(u, _)| *u == listed[0]),
        "the deleted one stays deleted"
    );
    assert!(held(&two.a, "alice").await.is_empty());

    let mut c = node.login(ALICE).await;
    assert_eq!(uidls(&mut c).await[..2], listed[1..]);
    c.ok("QUIT").await;

    // And back to a, where the `moved` mark is.
    move_user(&store, "alice", "a", &options(0)).await.unwrap();
    assert_eq!(held(&two.a, "alice").await, on_b);
    assert!(held(&two.b, "alice").await.is_empty());
    let mut c = node.login(ALICE).await;
    assert_eq!(uidls(&mut c).await[..2], listed[1..]);
    c.ok("QUIT").await;
    node.stop().await;
}

#[tokio::test]
async fn a_move_stopped_after_any_step_is_never_half_served_and_finishes_when_run_again() {
    let test = "move_stopped_after_any_step";
    let Some(two) = Two::new(test).await else {
        return;
    };
    let store = two.store();
    for step in 1..=7u32 {
        let user = format!("user{step}");
        let mut delivered = Vec::new();
        let mut bodies = Vec::new();
        for i in 0..5 {
            // Bodies of 0 to 4 chunks and a part.
            let mut body = format!("Subject: {i}\r\n\r\n").into_bytes();
            body.extend((0..i * 8000 + 77).map(|n| b"abcdefghij\r\n"[n % 12]));
            // Stored in canonical form: a final CRLF added.
            bodies.push(crlf(&body));
            delivered.push(
                Store::deliver(&store, user.as_str().into(), body)
                    .await
                    .unwrap(),
            );
        }
        let stopped = move_user(
            &store,
            &user,
            "b",
            &MoveOptions {
                stop_after: Some(step),
                ..options(0)
            },
        )
        .await
        .unwrap_err();
        assert!(
            matches!(stopped, MoveError::Stopped(s) if s == step),
            "{stopped}"
        );

        // In between: a session sees the whole maildrop, or (while the
        // old copy is frozen and the directory still names it) is
        // refused, never a part; a delivery is then deferred.
        let frozen = (2..=5).contains(&step);
        // The stopped move's connections close as a killed process's
        // would: PostgreSQL releases their locks a moment later.
        let mut opened = store.open(user.as_str().into()).await;
        for _ in 0..100 {
            if frozen || !matches!(opened, Err(StoreError::Locked)) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            opened = store.open(user.as_str().into()).await;
        }
        match opened {
            Ok(maildrop) if !frozen => {
                use mailbag::store::Maildrop;
                let seen: Vec<String> = maildrop.messages().iter().map(|m| m.uid.clone()).collect();
                assert_eq!(seen, delivered, "after step {step}: the whole maildrop");
            }
            Err(StoreError::Locked) if frozen => {}
            Ok(_) => panic!("after step {step}: a frozen maildrop was served"),
            Err(e) => panic!("after step {step}: {e}"),
        }
        let body = b"Subject: between\r\n\r\nx\r\n".to_vec();
        match Store::deliver(&store, user.as_str().into(), body).await {
            Ok(uidl) if !frozen => delivered.push(uidl),
            Err(StoreError::Temporary(_)) if frozen => {}
            other => panic!("after step {step}: {other:?}"),
        }

        // (The session above unlocks in a task of its own.)
        move_user(&store, &user, "b", &options(5000)).await.unwrap();
        assert_eq!(placement(&two.a, &user).await.as_deref(), Some("b"));
        let on_b: Vec<String> = held(&two.b, &user)
            .await
            .into_iter()
            .map(|(u, _)| u)
            .collect();
        assert_eq!(
            on_b, delivered,
            "after step {step}: every message once, UIDLs kept"
        );
        assert!(held(&two.a, &user).await.is_empty(), "after step {step}");
        let copied: Vec<Vec<u8>> = connect(&two.b)
            .await
            .query(
                "SELECT coalesce((SELECT string_agg(data, ''::bytea ORDER BY seq)
                                    FROM message_chunks WHERE message_id = m.id), '')
                   FROM messages m JOIN maildrops d ON d.id = m.maildrop_id
                  WHERE d.name = $1 ORDER BY m.id LIMIT 5",
                &[&user],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        assert!(
            copied == bodies,
            "after step {step}: bodies copied octet for octet"
        );
        let maildrop = store.open(user.as_str().into()).await.unwrap();
        use mailbag::store::Maildrop;
        assert_eq!(maildrop.messages().len(), delivered.len());
        drop(maildrop);
    }
}

#[tokio::test]
async fn move_user_from_the_command_line_resumes_after_being_stopped() {
    let test = "move_user_command_line";
    let Some(two) = Two::new(test).await else {
        return;
    };
    let node = two.node().await;
    let lmtp = node.lmtp.unwrap();
    for i in 0..3 {
        let reply =
            lmtp_deliver(lmtp, "bob", format!("Subject: {i}\r\n\r\nx\r\n").as_bytes()).await;
        assert!(reply.starts_with("250"), "{reply}");
    }
    let config = two.config_path();
    let config = config.to_str().unwrap();
    let args = [
        "move-user",
        "bob",
        "--to",
        "b",
        "--wait-secs",
        "0",
        "--config",
        config,
    ];
    let (code, _, stderr) = run(&args, b"", &[("MAILBAG_MOVE_STOP_AFTER", "4")]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("run move-user again"), "{stderr}");
    // Half way: logins are [IN-USE], deliveries deferred.
    let (_, reply) = node.try_login(BOB).await;
    assert!(reply.starts_with("-ERR [IN-USE]"), "{reply}");
    let reply = lmtp_deliver(lmtp, "bob", b"Subject: deferred\r\n\r\nx\r\n").await;
    assert!(reply.starts_with('4'), "{reply}");
    let (code, stdout, stderr) = run(&args, b"", &[]);
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        stdout.starts_with("moved bob from a to b: 3 messages ("),
        "{stdout}"
    );
    let (code, stdout, _) = run(&args, b"", &[]);
    assert_eq!((code, stdout.as_str()), (Some(0), "bob is on b already\n"));
    let mut c = node.login(BOB).await;
    assert!(c.cmd("STAT").await.starts_with("+OK 3 "));
    c.ok("QUIT").await;

    let (code, _, stderr) = run(&["move-user", "--help"], b"", &[]);
    assert_eq!(code, Some(0), "{stderr}");
    node.stop().await;
}

#[tokio::test]
async fn each_users_mail_reaches_their_own_cluster_and_no_other_database() {
    let test = "each_user_on_their_cluster";
    let Some(two) = Two::new(test).await else {
        return;
    };
    // bob's placement, written as a move would have.
    connect(&two.a)
        .await
        .execute(
            "INSERT INTO placements (name, cluster) VALUES ('bob', 'b')",
            &[],
        )
        .await
        .unwrap();
    let node = two.node().await;
    let lmtp = node.lmtp.unwrap();
    for (user, subject) in [("alice", "for alice"), ("bob", "for bob")] {
        let reply = lmtp_deliver(
            lmtp,
            user,
            format!("Subject: {subject}\r\n\r\nx\r\n").as_bytes(),
        )
        .await;
        assert!(reply.starts_with("250"), "{reply}");
    }
    let subjects = |v: Vec<(String, String)>| v.into_iter().map(|(_, s)| s).collect::<Vec<_>>();
    assert_eq!(subjects(held(&two.a, "alice").await), ["for alice"]);
    assert_eq!(subjects(held(&two.b, "bob").await), ["for bob"]);
    // Neither database has a row, let alone a message, of the other's user.
    assert_eq!(state(&two.a, "bob").await, None);
    assert_eq!(state(&two.b, "alice").await, None);
    for (user, creds) in [("alice", ALICE), ("bob", BOB)] {
        let mut c = node.login(creds).await;
        let (_, body) = c.multi("RETR 1").await;
        assert!(
            String::from_utf8_lossy(&body).contains(&format!("for {user}")),
            "{user}"
        );
        c.ok("QUIT").await;
    }
    node.stop().await;
}

#[tokio::test]
async fn hostile_directory_rows_and_move_user_arguments_are_refused_clearly() {
    let test = "hostile_directory";
    let Some(two) = Two::new(test).await else {
        return;
    };
    let directory = connect(&two.a).await;
    directory
        .execute(
            "INSERT INTO placements (name, cluster) VALUES ('alice', 'zz'), ('bob', E'b\\n\\x01')",
            &[],
        )
        .await
        .unwrap();
    let node = two.node().await;
    let lmtp = node.lmtp.unwrap();
    // An unknown cluster: a temporary failure (mail stays queued while
    // the configuration is fixed), never another cluster.
    for user in ["alice", "bob"] {
        let reply = lmtp_deliver(lmtp, user, b"Subject: x\r\n\r\nx\r\n").await;
        assert!(reply.starts_with("451"), "{user}: {reply}");
    }
    let (_, reply) = node.try_login(ALICE).await;
    assert!(reply.starts_with("-ERR [SYS/TEMP]"), "{reply}");
    for (url, user) in [
        (&two.a, "alice"),
        (&two.b, "alice"),
        (&two.a, "bob"),
        (&two.b, "bob"),
    ] {
        assert_eq!(
            state(url, user).await,
            None,
            "{user}: no maildrop made anywhere"
        );
    }
    let store = two.store();
    let refused = move_user(&store, "alice", "b", &options(0))
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("\"zz\""), "{refused}");
    for (user, to, says) in [
        ("alice", "zz", "no cluster named"),
        ("alice", "b\n", "no cluster named"),
        ("a\nb", "b", "user name refused"),
        ("", "b", "user name refused"),
        ("nobody", "b", "nothing to move"),
    ] {
        let refused = move_user(&store, user, to, &options(0)).await.unwrap_err();
        assert!(
            refused.to_string().contains(says),
            "{user:?} {to:?}: {refused}"
        );
    }
    assert_eq!(placement(&two.a, "nobody").await, None, "no row for a typo");
    // A row that makes the home cluster the old end of a move: the home
    // copy is never deleted.
    directory
        .execute(
            "INSERT INTO placements (name, cluster, move_from) VALUES ('carol', 'a', 'a')",
            &[],
        )
        .await
        .unwrap();
    Store::deliver(
        &store,
        "carol".into(),
        b"Subject: keep\r\n\r\nx\r\n".to_vec(),
    )
    .await
    .unwrap();
    let refused = move_user(&store, "carol", "b", &options(0))
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("both ends"), "{refused}");
    assert_eq!(held(&two.a, "carol").await.len(), 1);
    assert_eq!(state(&two.b, "nobody").await, None);
    // A directory row fixed by hand is followed at once: nothing cached.
    directory
        .execute(
            "UPDATE placements SET cluster = 'b' WHERE name = 'alice'",
            &[],
        )
        .await
        .unwrap();
    let reply = lmtp_deliver(lmtp, "alice", b"Subject: fixed\r\n\r\nx\r\n").await;
    assert!(reply.starts_with("250"), "{reply}");
    assert_eq!(held(&two.b, "alice").await.len(), 1);
    node.stop().await;
}

/// Round trips to PostgreSQL of `CYCLES` warm login cycles (login, STAT,
/// QUIT) and of `CYCLES` LMTP deliveries through a node on `config`
/// (whose URLs point at the counting proxy).
/// `plain`: the node's store is a bare `PgStore` (as before the clusters
/// existed) instead of the `PgClusters` the server is built with.
async fn round_trips(
    config: &str,
    plain: bool,
    sent: &crate::postgres::Sent,
    user: (&str, &str),
) -> (usize, usize) {
    let config = Config::parse(config, std::path::Path::new("/")).unwrap();
    if plain {
        let store = pg_store(config.store.url.as_deref().unwrap());
        let passdb = PgPassDb::new(Arc::clone(store.pool())).await;
        return count_round_trips(config, store, passdb, sent, user).await;
    }
    let store = PgClusters::from_config(&config.store).unwrap();
    let passdb = PgPassDb::new(Arc::clone(store.pool())).await;
    count_round_trips(config, store, passdb, sent, user).await
}

async fn count_round_trips<S: Store>(
    config: Config,
    store: S,
    passdb: PgPassDb,
    sent: &crate::postgres::Sent,
    user: (&str, &str),
) -> (usize, usize) {
    const CYCLES: usize = 10;
    let node = Node::start(config, store, passdb).await;
    let lmtp = node.lmtp.unwrap();
    let cycle = || async {
        let mut c = node.login(user).await;
        c.ok("STAT").await;
        c.ok("QUIT").await;
    };
    let syncs = || sent.syncs.load(Ordering::SeqCst);
    for _ in 0..8 {
        cycle().await;
        lmtp_deliver(lmtp, user.0, b"Subject: warm\r\n\r\nx\r\n").await;
    }
    let before = syncs();
    for _ in 0..CYCLES {
        cycle().await;
    }
    let logins = syncs() - before;
    let before = syncs();
    for _ in 0..CYCLES {
        let reply = lmtp_deliver(lmtp, user.0, b"Subject: counted\r\n\r\nx\r\n").await;
        assert!(reply.starts_with("250"), "{reply}");
    }
    let deliveries = syncs() - before;
    node.stop().await;
    (logins / CYCLES, deliveries / CYCLES)
}

#[tokio::test]
async fn one_cluster_adds_no_round_trip_and_clusters_two_per_login() {
    let test = "directory_round_trips";
    let Some(two) = Two::new(test).await else {
        return;
    };
    let port = cluster(test).unwrap().port;
    let (proxy, sent) = crate::postgres::counting_proxy(port).await;
    let via_proxy = |url: &str| url.replace(&format!("port={port}"), &format!("port={proxy}"));
    let lmtp = "[pop3]\nlisten = [\"127.0.0.1:0\"]\n[lmtp]\nlisten = [\"127.0.0.1:0\"]\n\
                [auth]\nfailure_delay_ms = 10\n";
    // store.url: what PgStore alone costs (the figures the PostgreSQL
    // tests pin), through the store the server is built with.
    let one = format!(
        "[store]\nkind = \"postgres\"\nurl = \"{}\"\n{lmtp}",
        via_proxy(&two.a)
    );
    let bare = round_trips(&one, true, &sent, ALICE).await;
    let single = round_trips(&one, false, &sent, ALICE).await;
    assert_eq!(
        single, bare,
        "store.url through PgClusters, against PgStore alone"
    );
    // Two clusters, the user on the first, the directory beside it.
    let several = format!(
        "[store]\nkind = \"postgres\"\n\
         [[store.clusters]]\nname = \"a\"\nurl = \"{}\"\n\
         [[store.clusters]]\nname = \"b\"\nurl = \"{}\"\nnew_users = false\n{lmtp}",
        via_proxy(&two.a),
        two.b
    );
    let clustered = round_trips(&several, false, &sent, BOB).await;
    eprintln!("round trips (login cycle, delivery): one cluster {single:?}, two {clustered:?}");
    // The placement read and the state check under the lock.
    assert_eq!(clustered.0, single.0 + 2, "a warm login with clusters");
    // The placement read replaces the maildrop id lookup.
    assert_eq!(clustered.1, single.1, "an LMTP delivery with clusters");
}

/// A login refused because the maildrop's move has not finished reads
/// the state before anything else of the maildrop: however many
/// messages it holds, and though the login tries the locked maildrop
/// again before it answers `[IN-USE]`, none of them is listed.
#[tokio::test]
async fn a_login_refused_for_an_unfinished_move_lists_nothing() {
    let test = "refused_login_lists_nothing";
    let Some(two) = Two::new(test).await else {
        return;
    };
    let port = cluster(test).unwrap().port;
    let (proxy, sent) = crate::postgres::counting_proxy(port).await;
    let config = format!(
        "[pop3]\nlisten = [\"127.0.0.1:0\"]\n[store]\nkind = \"postgres\"\n\
         [[store.clusters]]\nname = \"a\"\nurl = \"{}\"\n\
         [[store.clusters]]\nname = \"b\"\nurl = \"{}\"\nnew_users = false\n\
         [auth]\nfailure_delay_ms = 10\n",
        two.a
            .replace(&format!("port={port}"), &format!("port={proxy}")),
        two.b
    );
    let config = Config::parse(&config, std::path::Path::new("/")).unwrap();
    let store = PgClusters::from_config(&config.store).unwrap();
    const MESSAGES: usize = 40;
    for i in 0..MESSAGES {
        Store::deliver(
            &store,
            ALICE.0.into(),
            format!("Subject: {i}\r\n\r\nx\r\n").into_bytes(),
        )
        .await
        .unwrap();
    }
    let passdb = PgPassDb::new(Arc::clone(store.pool())).await;
    let node = Node::start(config, store, passdb).await;
    // Served while active: the listing is there to be counted.
    let rows = || sent.rows.load(Ordering::SeqCst);
    let before = rows();
    let mut c = node.login(ALICE).await;
    c.ok("QUIT").await;
    assert!(rows() - before >= MESSAGES, "the listing went unseen");

    for unfinished in ["moving", "incoming"] {
        connect(&two.a)
            .await
            .execute(
                "UPDATE maildrops SET state = $2 WHERE name = $1",
                &[&ALICE.0, &unfinished],
            )
            .await
            .unwrap();
        let before = rows();
        let (_c, reply) = node.try_login(ALICE).await;
        assert!(reply.starts_with("-ERR [IN-USE]"), "{unfinished}: {reply}");
        let listed = rows() - before;
        // The passdb's row, and per try the lock's and the state's.
        assert!(
            listed < MESSAGES,
            "{unfinished}: {listed} rows for a refused login"
        );
    }
    node.stop().await;
}

/// A delivery under a given UIDL (an import keeping another server's
/// UIDLs) whose reply is lost as its connection breaks is settled by
/// looking for that UIDL in the user's own maildrop only: another user
/// holding the same UIDL, while the insert was in fact refused, does not
/// make it count as stored.
#[tokio::test]
async fn an_unknown_outcome_is_settled_in_the_users_own_maildrop() {
    let test = "unknown_outcome_own_maildrop";
    let Some(two) = Two::new(test).await else {
        return;
    };
    const SHARED: &str = "00000001.1700000000";
    let direct = two.store();
    assert_eq!(
        direct
            .deliver_with_uidl(BOB.0, b"Subject: bob's\r\n\r\nx\r\n".to_vec(), SHARED)
            .await
            .unwrap(),
        Ok(())
    );
    // Alice's maildrop exists, so the statement cut is the insert itself.
    Store::deliver(
        &direct,
        ALICE.0.into(),
        b"Subject: first\r\n\r\nx\r\n".to_vec(),
    )
    .await
    .unwrap();

    // Alice's insert is refused (a trigger here; anything the server
    // refuses after the statement is sent), so nothing of it commits.
    connect(&two.a)
        .await
        .batch_execute(&format!(
            "CREATE FUNCTION refuse_alice() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
               IF NEW.uidl = '{SHARED}' AND NEW.maildrop_id =
                    (SELECT id FROM maildrops WHERE name = '{alice}') THEN
                 RAISE EXCEPTION 'refused';
               END IF;
               RETURN NEW;
             END $$;
             CREATE TRIGGER refuse_alice BEFORE INSERT ON messages
               FOR EACH ROW EXECUTE FUNCTION refuse_alice()",
            alice = ALICE.0
        ))
        .await
        .unwrap();

    let (store, cut) = two.store_losing_a_reply(test).await;
    let kept = store
        .deliver_with_uidl(ALICE.0, b"Subject: alice's\r\n\r\ny\r\n".to_vec(), SHARED)
        .await;
    assert!(cut.load(Ordering::SeqCst), "the proxy never cut");
    assert!(
        matches!(kept, Err(StoreError::Temporary(_))),
        "a delivery that stored nothing was taken as stored: {kept:?}"
    );
    let alice: Vec<String> = held(&two.a, ALICE.0)
        .await
        .into_iter()
        .map(|(_, subject)| subject)
        .collect();
    assert_eq!(alice, ["first"]);
    assert_eq!(
        held(&two.a, BOB.0).await,
        [(SHARED.to_owned(), "bob's".to_owned())]
    );
}

/// An import keeping a UIDL the user's own maildrop already holds (an
/// mbox with one X-UIDL twice, an import run again), whose reply is lost
/// as its connection breaks: the server refused the insert on the
/// maildrop's unique key, and finding the UIDL there is the earlier
/// message, not this one. The delivery is not taken as stored; the
/// import stops instead of counting a message that is not there.
#[tokio::test]
async fn an_unknown_outcome_for_a_uidl_the_maildrop_already_holds_is_not_taken_as_stored() {
    let test = "unknown_outcome_own_uidl";
    let Some(two) = Two::new(test).await else {
        return;
    };
    const KEPT: &str = "00000002.1700000000";
    let direct = two.store();
    assert_eq!(
        direct
            .deliver_with_uidl(ALICE.0, b"Subject: first\r\n\r\nx\r\n".to_vec(), KEPT)
            .await
            .unwrap(),
        Ok(())
    );
    // Asked again with a connection that works: nothing is stored, and
    // the message comes back, in canonical form, for a new UIDL.
    assert_eq!(
        direct
            .deliver_with_uidl(ALICE.0, b"Subject: again\n\ny\n".to_vec(), KEPT)
            .await
            .unwrap(),
        Err(b"Subject: again\r\n\r\ny\r\n".to_vec())
    );

    let (store, cut) = two.store_losing_a_reply(test).await;
    let kept = store
        .deliver_with_uidl(ALICE.0, b"Subject: again\r\n\r\ny\r\n".to_vec(), KEPT)
        .await;
    assert!(cut.load(Ordering::SeqCst), "the proxy never cut");
    assert!(
        matches!(kept, Err(StoreError::Temporary(_))),
        "a delivery the unique key refused was taken as stored: {kept:?}"
    );
    assert_eq!(
        held(&two.a, ALICE.0).await,
        [(KEPT.to_owned(), "first".to_owned())]
    );
}

/// The sizing figures of docs/DEPLOYMENT.md ("Several PostgreSQL
/// clusters"): disk per message, deliveries and logins through one
/// cluster and through the directory, and a move's speed. A cluster of
/// its own with `fsync` on; run with `cargo test --test it
/// clusters::sizing -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measures; prints figures"]
async fn sizing() {
    use mailbag::auth::scheme::Scheme;
    use std::time::Instant;
    let server = Cluster::start_with(true).expect("PostgreSQL binaries");
    let line = b"A line of text of the kind that mail is made of.\r\n";
    let message = |octets: usize| {
        let mut m = b"Subject: sizing\r\n\r\n".to_vec();
        while m.len() < octets {
            m.extend_from_slice(line);
        }
        m
    };

    // Disk per message, and per directory row.
    for kib in [10usize, 100] {
        let url = server.database(&format!("size{kib}")).await;
        let store = pg_store(&url);
        let m = message(kib * 1024);
        for i in 0..300 {
            PgStore::deliver(&store, &format!("u{}", i % 30), m.clone())
                .await
                .unwrap();
        }
        let row = connect(&url)
            .await
            .query_one(
                "SELECT (pg_total_relation_size('messages') \
                         + pg_total_relation_size('message_chunks'))::bigint, \
                        (SELECT count(*) FROM messages), \
                        (SELECT sum(octet_length(data)) FROM message_chunks)::bigint, \
                        (pg_indexes_size('messages') + pg_indexes_size('message_chunks'))::bigint",
                &[],
            )
            .await
            .unwrap();
        let (total, count, body, indexes): (i64, i64, i64, i64) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        println!(
            "disk per {kib} KiB message: {} octets ({:.3}x the body; indexes {} of it)",
            total / count,
            total as f64 / body as f64,
            indexes / count
        );
    }
    let directory = server.database("directory").await;
    let admin = connect(&directory).await;
    admin
        .execute(
            "INSERT INTO placements (name, cluster) \
             SELECT 'user' || i || '@example.org', 'c' || (i % 4) FROM generate_series(1, 100000) i",
            &[],
        )
        .await
        .unwrap();
    admin
        .batch_execute("VACUUM ANALYZE placements")
        .await
        .unwrap();
    let per_row: i64 = admin
        .query_one("SELECT pg_total_relation_size('placements') / 100000", &[])
        .await
        .unwrap()
        .get(0);
    println!("directory: {per_row} octets per placement (100,000 rows, table and index)");

    // One database as store.url, then two databases as clusters with the
    // directory on the first: the same deliveries and logins.
    let a = server.database("a").await;
    let b = server.database("b").await;
    for i in 0..200 {
        PgPassDb::new(Arc::clone(pg_store(&a).pool()))
            .await
            .add_user(&format!("user{i}"), b"pw", Scheme::Plain)
            .await
            .unwrap();
    }
    let head = "[pop3]\nlisten = [\"127.0.0.1:0\"]\n[store]\nkind = \"postgres\"\npool_size = 8\n";
    let tail = "[auth]\nfailure_delay_ms = 10\n[limits]\nmax_connections_per_address = 1000\n";
    let setups = [
        (
            "one cluster (store.url)",
            format!("{head}url = \"{a}\"\n{tail}"),
        ),
        (
            "two clusters and the directory",
            format!(
                "{head}[[store.clusters]]\nname = \"a\"\nurl = \"{a}\"\n\
                 [[store.clusters]]\nname = \"b\"\nurl = \"{b}\"\n{tail}"
            ),
        ),
    ];
    let m = message(10 * 1024);
    // Twice each, alternating: the machine's other load varies.
    for (what, text) in setups.iter().chain(&setups) {
        let config = Config::parse(text, std::path::Path::new("/")).unwrap();
        let store = PgClusters::from_config(&config.store).unwrap();
        // Each user's first delivery (the maildrop row, and with clusters
        // the placement) is not what is measured.
        for i in 0..200 {
            let user = format!("user{i}");
            Store::deliver(&store, user.as_str().into(), m.clone())
                .await
                .unwrap();
        }
        let n = 400;
        let started = Instant::now();
        let tasks: Vec<_> = (0..8)
            .map(|t| {
                let (store, m) = (store.clone(), m.clone());
                tokio::spawn(async move {
                    for i in 0..n / 8 {
                        let user = format!("user{}", t * 25 + i % 25);
                        Store::deliver(&store, user.as_str().into(), m.clone())
                            .await
                            .unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let deliveries = n as f64 / started.elapsed().as_secs_f64();
        let passdb = PgPassDb::new(Arc::clone(store.pool())).await;
        let node = Arc::new(Node::start(config, store, passdb).await);
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
        let logins = sessions as f64 / started.elapsed().as_secs_f64();
        println!(
            "{what}: {deliveries:.0} deliveries/s of 10 KiB with 8 concurrent; \
             {logins:.0} sessions/s (login, STAT, UIDL, QUIT) with 8 clients"
        );
        if let Ok(node) = Arc::try_unwrap(node) {
            node.stop().await;
        }
    }

    // The directory's own cost: placement reads, 8 at once.
    let config = Config::parse(&setups[1].1, std::path::Path::new("/")).unwrap();
    let store = PgClusters::from_config(&config.store).unwrap();
    let reads = 4000;
    let started = Instant::now();
    let tasks: Vec<_> = (0..8)
        .map(|t| {
            let store = store.clone();
            tokio::spawn(async move {
                let clusters = store.clusters().unwrap();
                for i in 0..reads / 8 {
                    let user = format!("user{}", t * 25 + i % 25);
                    clusters.placement(&user).await.unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    println!(
        "directory: {:.0} placement reads/s with 8 concurrent",
        reads as f64 / started.elapsed().as_secs_f64()
    );

    // A move: 1,000 messages of 10 KiB.
    for _ in 0..1000 {
        Store::deliver(&store, "mover".into(), m.clone())
            .await
            .unwrap();
    }
    let started = Instant::now();
    let moved = move_user(&store, "mover", "b", &MoveOptions::default())
        .await
        .unwrap();
    let secs = started.elapsed().as_secs_f64();
    println!(
        "move-user: {} messages ({} octets) in {secs:.2} s: {:.0} messages/s, {:.1} MB/s",
        moved.messages,
        moved.octets,
        moved.messages as f64 / secs,
        moved.octets as f64 / secs / 1e6
    );
}

#[tokio::test]
async fn a_stale_placement_never_reaches_the_old_copy() {
    let test = "stale_placement";
    let Some(two) = Two::new(test).await else {
        return;
    };
    let node = two.node().await;
    let lmtp = node.lmtp.unwrap();
    let reply = lmtp_deliver(lmtp, "alice", b"Subject: one\r\n\r\nx\r\n").await;
    assert!(reply.starts_with("250"), "{reply}");
    move_user(&two.store(), "alice", "b", &options(0))
        .await
        .unwrap();
    // What a node that read the directory just before the switch holds:
    // the old placement. (Here the directory itself is set back, so
    // every read is stale.)
    connect(&two.a)
        .await
        .execute(
            "UPDATE placements SET cluster = 'a' WHERE name = 'alice'",
            &[],
        )
        .await
        .unwrap();
    let reply = lmtp_deliver(lmtp, "alice", b"Subject: two\r\n\r\nx\r\n").await;
    assert!(
        reply.starts_with("451"),
        "deferred, not stored on a: {reply}"
    );
    let (_, reply) = node.try_login(ALICE).await;
    assert!(
        reply.starts_with("-ERR [SYS/TEMP]"),
        "the empty old copy is not served: {reply}"
    );
    assert!(held(&two.a, "alice").await.is_empty());
    assert_eq!(state(&two.a, "alice").await.as_deref(), Some("moved"));
    // Once the placement is read afresh, both go to b.
    connect(&two.a)
        .await
        .execute(
            "UPDATE placements SET cluster = 'b' WHERE name = 'alice'",
            &[],
        )
        .await
        .unwrap();
    let reply = lmtp_deliver(lmtp, "alice", b"Subject: three\r\n\r\nx\r\n").await;
    assert!(reply.starts_with("250"), "{reply}");
    let mut c = node.login(ALICE).await;
    assert!(c.cmd("STAT").await.starts_with("+OK 2 "));
    c.ok("QUIT").await;
    node.stop().await;
}

/// A move lock still held a moment after the move that took it ended (a
/// killed move-user's backend that PostgreSQL has not dropped yet) makes
/// the next move wait for it instead of refusing; one held on makes the
/// move refuse, with nothing changed.
#[tokio::test]
async fn a_move_waits_for_a_move_lock_being_released_and_refuses_one_held() {
    let test = "move_lock_being_released";
    let Some(two) = Two::new(test).await else {
        return;
    };
    let store = two.store();
    Store::deliver(&store, "alice".into(), b"Subject: a\r\n\r\nx\r\n".to_vec())
        .await
        .unwrap();
    // The directory is cluster a's database.
    let holder = connect(&two.a).await;
    holder
        .execute(
            "SELECT pg_advisory_lock($1, hashtext($2))",
            &[&MOVE_LOCK_CLASS, &"alice"],
        )
        .await
        .unwrap();
    let refused = move_user(&store, "alice", "b", &options(0))
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("another mailbag move-user"),
        "{refused}"
    );
    assert_eq!(placement(&two.a, "alice").await.as_deref(), Some("a"));
    assert_eq!(state(&two.a, "alice").await.as_deref(), Some("active"));

    // Released while the move waits for it (its waits add up to 250 ms):
    // the move goes ahead.
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        holder
            .execute(
                "SELECT pg_advisory_unlock($1, hashtext($2))",
                &[&MOVE_LOCK_CLASS, &"alice"],
            )
            .await
            .unwrap();
    });
    move_user(&store, "alice", "b", &options(0)).await.unwrap();
    release.await.unwrap();
    assert_eq!(placement(&two.a, "alice").await.as_deref(), Some("b"));
    // The move released its lock before it returned, not as its
    // connection goes away later: the next move can take it at once.
    let free: bool = connect(&two.a)
        .await
        .query_one(
            "SELECT pg_try_advisory_lock($1, hashtext($2))",
            &[&MOVE_LOCK_CLASS, &"alice"],
        )
        .await
        .unwrap()
        .get(0);
    assert!(free, "the move lock is still held after the move returned");
}

/// A UIDL is unique within its maildrop only: another user holding the
/// same UIDL on the destination (as `mailbag import` keeps one from an
/// old server) does not stop a move, and both keep it.
#[tokio::test]
async fn another_users_uidl_on_the_destination_does_not_stop_the_move() {
    let test = "uidl_of_another_user_on_destination";
    let Some(two) = Two::new(test).await else {
        return;
    };
    let store = two.store();
    let uidl = Store::deliver(&store, "alice".into(), b"Subject: a\r\n\r\nx\r\n".to_vec())
        .await
        .unwrap();
    let b = connect(&two.b).await;
    b.batch_execute(&format!(
        "INSERT INTO maildrops (name) VALUES ('carol');
         INSERT INTO messages (maildrop_id, uidl, size)
              SELECT id, '{uidl}', 0 FROM maildrops WHERE name = 'carol'"
    ))
    .await
    .unwrap();
    move_user(&store, "alice", "b", &options(0)).await.unwrap();
    assert_eq!(placement(&two.a, "alice").await.as_deref(), Some("b"));
    use mailbag::store::Maildrop;
    let moved = store.open("alice".into()).await.unwrap();
    let uidls: Vec<&str> = moved.messages().iter().map(|m| m.uid.as_str()).collect();
    assert_eq!(uidls, [uidl.as_str()]);
    drop(moved);
    let carol: i64 = b
        .query_one(
            "SELECT count(*) FROM messages m JOIN maildrops d ON d.id = m.maildrop_id
              WHERE d.name = 'carol' AND m.uidl = $1",
            &[&uidl],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(carol, 1, "carol's message is untouched");
}

/// A destination that does not keep every message of a batch (here a
/// trigger drops one) makes the move undo itself: the source is served
/// again and nothing on the destination is.
#[tokio::test]
async fn a_destination_that_drops_a_message_undoes_the_move() {
    let test = "destination_drops_a_message";
    let Some(two) = Two::new(test).await else {
        return;
    };
    let store = two.store();
    let uidl = Store::deliver(&store, "alice".into(), b"Subject: a\r\n\r\nx\r\n".to_vec())
        .await
        .unwrap();
    let b = connect(&two.b).await;
    b.batch_execute(&format!(
        "CREATE FUNCTION drop_one() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
           IF NEW.uidl = '{uidl}' THEN RETURN NULL; END IF;
           RETURN NEW;
         END $$;
         CREATE TRIGGER drop_one BEFORE INSERT ON messages
           FOR EACH ROW EXECUTE FUNCTION drop_one()"
    ))
    .await
    .unwrap();
    let refused = move_user(&store, "alice", "b", &options(0))
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("undone"), "{refused}");
    assert_eq!(state(&two.a, "alice").await.as_deref(), Some("active"));
    assert_eq!(placement(&two.a, "alice").await.as_deref(), Some("a"));
    let row = connect(&two.a)
        .await
        .query_one("SELECT move_to FROM placements WHERE name = 'alice'", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, Option<String>>(0), None);
    // Served and delivered to as before.
    Store::deliver(&store, "alice".into(), b"Subject: b\r\n\r\nx\r\n".to_vec())
        .await
        .unwrap();
    use mailbag::store::Maildrop;
    assert_eq!(
        store.open("alice".into()).await.unwrap().messages().len(),
        2
    );
    assert_eq!(
        held(&two.b, "alice").await.len(),
        0,
        "nothing of it served on b"
    );

    // The first message deleted, the trigger gone: a new move leaves
    // nothing of the first attempt's copy behind.
    let maildrop = store.open("alice".into()).await.unwrap();
    maildrop.commit(&[0], &[]).await.unwrap();
    b.batch_execute("DROP TRIGGER drop_one ON messages")
        .await
        .unwrap();
    move_user(&store, "alice", "b", &options(0)).await.unwrap();
    let subjects: Vec<String> = held(&two.b, "alice")
        .await
        .into_iter()
        .map(|(_, s)| s)
        .collect();
    assert_eq!(subjects, ["b"]);
}
