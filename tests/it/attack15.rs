//! Moving from another server: hostile input on the ways issue 15's
//! interoperation opened. An old server that `migrate-uidls` reads, and a
//! mailbox owner's forged foreign UIDL files, against the rule that a
//! UIDL a client has seen names one message only and never changes, and
//! against the server's memory. Real sockets, real files.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use mailbag::admin::migrate::{self, Limits, Login, Security, Source};
use mailbag::store::maildir::MaildirStore;
use mailbag_proto::secret::Secret;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::support::*;

/// The UIDL of each message, by message number, as a client sees it.
async fn uidls(s: &TestServer) -> Vec<String> {
    let mut c = s.login(ALICE).await;
    let (_, body) = c.multi("UIDL").await;
    c.ok("QUIT").await;
    String::from_utf8(body)
        .unwrap()
        .lines()
        .map(|l| l.split(' ').nth(1).unwrap().to_string())
        .collect()
}

/// An old POP3 server that shows `messages` (UIDL, content) and accepts
/// any login.
async fn old_server(messages: Vec<(String, Vec<u8>)>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let messages = messages.clone();
            tokio::spawn(async move {
                let (read, mut write) = stream.into_split();
                let mut lines = BufReader::new(read).lines();
                let _ = write.write_all(b"+OK old server\r\n").await;
                while let Ok(Some(line)) = lines.next_line().await {
                    let mut words = line.split(' ');
                    let verb = words.next().unwrap_or("");
                    let sizes: Vec<usize> = messages.iter().map(|m| crlf(&m.1).len()).collect();
                    let reply: Vec<u8> = match verb {
                        "STAT" => {
                            format!("+OK {} {}\r\n", messages.len(), sizes.iter().sum::<usize>())
                                .into_bytes()
                        }
                        "UIDL" | "LIST" => {
                            let mut out = b"+OK\r\n".to_vec();
                            for (i, (uidl, _)) in messages.iter().enumerate() {
                                let value = if verb == "UIDL" {
                                    uidl.clone()
                                } else {
                                    sizes[i].to_string()
                                };
                                out.extend_from_slice(format!("{} {value}\r\n", i + 1).as_bytes());
                            }
                            out.extend_from_slice(b".\r\n");
                            out
                        }
                        "RETR" => {
                            let n: usize = words.next().unwrap_or("0").parse().unwrap_or(0);
                            let body = crlf(&messages[n - 1].1);
                            [&b"+OK\r\n"[..], &body, b".\r\n"].concat()
                        }
                        _ => b"+OK\r\n".to_vec(),
                    };
                    if write.write_all(&reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

fn store_of(s: &TestServer) -> MaildirStore {
    let config = mailbag::config::Config::load(&s.config_path).unwrap();
    MaildirStore::new(
        config.store.root.clone(),
        config.store.path.clone(),
        config.store.default_domain.clone(),
    )
}

async fn migrate_alice(s: &TestServer, old: SocketAddr) -> migrate::Report {
    let source = Source {
        server: old.to_string(),
        security: Security::Plain,
        tls_name: None,
        ca_file: None,
    };
    let login = Login::Passwords(HashMap::from([(
        "alice".to_string(),
        Secret::new("pw".to_string()),
    )]));
    let limits = Limits {
        max_messages: 100,
        max_message_octets: 1 << 20,
        timeout: Duration::from_secs(10),
    };
    migrate::migrate_user(&store_of(s), &source, &login, limits, "alice", false).await
}

/// An old server that gives one message here the UIDL that mailbag shows
/// for another (its base-name form) cannot make that UIDL name the other
/// message, even when the first message gets a new UIDL in the same run:
/// a client that knew the UIDL would take the second message for the
/// first (never fetch it, or delete it unseen).
#[tokio::test]
async fn an_old_server_cannot_move_a_shown_uidl_to_another_message() {
    let s = TestServer::start().await;
    let a = b"Subject: a\n\nfirst\n".to_vec();
    let b = b"Subject: b\n\nsecond\n".to_vec();
    s.deliver("alice", &a);
    s.deliver("alice", &b);
    let before = uidls(&s).await;
    assert_eq!(before.len(), 2);
    let old = old_server(vec![
        ("old-uidl-of-a".to_string(), a.clone()),
        (before[0].clone(), b.clone()),
    ])
    .await;
    let report = migrate_alice(&s, old).await;
    assert!(report.error.is_none(), "{report}");
    let after = uidls(&s).await;
    assert_ne!(
        after[1], before[0],
        "message 2 took the UIDL message 1 had: {before:?} then {after:?}"
    );
    let unique: std::collections::HashSet<&String> = after.iter().collect();
    assert_eq!(unique.len(), after.len(), "{after:?}");
    s.stop().await;
}

fn vm_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// Starts `mailbag serve` as a process on `dir` (with `extra` in its
/// config), logs in as alice and returns the STAT answer and how much the
/// server's peak memory grew over the login.
async fn login_memory(dir: &std::path::Path, extra: &str) -> (String, u64) {
    let port = free_port();
    let text = config_text(dir, extra).replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    std::fs::write(dir.join("mailbag.toml"), text).unwrap();
    let mut child = as_unprivileged(
        &mut std::process::Command::new(env!("CARGO_BIN_EXE_mailbag")),
        dir,
    )
    .arg("serve")
    .arg("--config")
    .arg(dir.join("mailbag.toml"))
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null())
    .spawn()
    .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut c = loop {
        if let Ok(s) = tokio::net::TcpStream::connect(addr).await {
            break Client {
                stream: tokio::io::BufReader::new(s),
            };
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    c.line().await;
    let before = vm_kib(child.id(), "VmRSS:");
    c.ok("USER alice").await;
    c.ok("PASS wonderland").await;
    let stat = c.ok("STAT").await;
    let peak = vm_kib(child.id(), "VmHWM:");
    child.kill().unwrap();
    child.wait().unwrap();
    (stat, peak.saturating_sub(before))
}

/// A mailbox owner's forged `courierpop3dsizelist` and `dovecot-uidlist`
/// of two million lines each, next to one message, cost a login little
/// memory: what the server reads of another server's files is in
/// proportion to the maildrop. (Every owner can do this at once, so what
/// one login may hold is what bounds the server.)
#[tokio::test]
async fn forged_foreign_uidl_files_of_millions_of_lines_cost_a_login_little_memory() {
    // The server runs as its own process so that its memory is its own.
    let dir = tempfile::tempdir().unwrap();
    write_passwd(dir.path());
    let md = dir.path().join("mail/localhost/alice/Maildir");
    mailbag::store::maildir::deliver(&md, b"Subject: own\n\nmine\n").unwrap();
    const LINES: usize = 2_000_000;
    let mut courier = b"/2 1 1\n".to_vec();
    let mut dovecot = b"3 V1 N1\n".to_vec();
    for i in 1..=LINES {
        courier.extend_from_slice(format!("{i:x} 1 {i}:1\n").as_bytes());
        dovecot.extend_from_slice(format!("{i} :{i:x}\n").as_bytes());
    }
    std::fs::write(md.join("courierpop3dsizelist"), courier).unwrap();
    std::fs::write(md.join("dovecot-uidlist"), dovecot).unwrap();
    let extra = "[store]\nroot = \"mail\"\nuidl_courier = true\nuidl_dovecot = true\n";
    let (stat, grown) = login_memory(dir.path(), extra).await;
    assert!(stat.starts_with("+OK 1 "), "{stat}");
    println!("server peak memory growth for one login: {grown} KiB");
    assert!(grown < 48 * 1024, "one login took {grown} KiB");
}

/// The same for a forged `mailbag.uidls` (the record of UIDLs shown).
#[tokio::test]
async fn a_forged_record_of_uidls_shown_costs_a_login_little_memory() {
    let dir = tempfile::tempdir().unwrap();
    write_passwd(dir.path());
    let md = dir.path().join("mail/localhost/alice/Maildir");
    mailbag::store::maildir::deliver(&md, b"Subject: own\n\nmine\n").unwrap();
    let mut shown = b"mailbag-uidls 1\n".to_vec();
    let pad = "x".repeat(90);
    for i in 0..(1usize << 20) - 1 {
        shown.extend_from_slice(format!("F u{i:x} {pad}{i:x}\n").as_bytes());
    }
    std::fs::write(md.join("mailbag.uidls"), shown).unwrap();
    let extra = "[store]\nroot = \"mail\"\nuidl_dovecot = true\n";
    let (stat, grown) = login_memory(dir.path(), extra).await;
    assert!(stat.starts_with("+OK 1 "), "{stat}");
    println!("server peak memory growth for one login: {grown} KiB");
    assert!(grown < 48 * 1024, "one login took {grown} KiB");
}

/// Spellings that Unicode case mapping, SASLprep or a careless domain
/// split could take for `alice`: those SASLprep maps to `alice`
/// (full-width letters) are alice, under her lock; Turkish and other
/// non-ASCII look-alikes, a trailing dot, `%`, `@@` and a second domain
/// are no one, and answered as any unknown name is.
#[tokio::test]
async fn look_alike_spellings_reach_alices_maildrop_under_her_lock_or_no_one() {
    let s = TestServer::start().await;
    s.deliver("alice", b"Subject: one\n\nthe one message\n");
    let addr = s.addr;
    let try_login = |name: &'static str| async move {
        let mut c = Client::connect(addr).await;
        c.line().await;
        let user = c.cmd(&format!("USER {name}")).await;
        let pass = if user.starts_with("+OK") {
            c.cmd(&format!("PASS {}", ALICE.1)).await
        } else {
            user
        };
        (c, pass)
    };
    let hers = ["\u{ff41}lice", "\u{ff21}LICE@localhost", "alice@LOCALHOST"];
    let no_one = [
        "al\u{130}ce",
        "al\u{131}ce",
        "\u{212a}alice",
        "alice@localhost.",
        "alice%localhost",
        "alice@@localhost",
        "alice@localhost@localhost",
        "alice@other.test",
        "alice\u{200b}",
    ];
    let mut holder = s.login(ALICE).await;
    for name in hers {
        let (_c, reply) = try_login(name).await;
        assert!(reply.starts_with("-ERR [IN-USE]"), "{name:?}: {reply}");
    }
    holder.ok("QUIT").await;
    for name in hers {
        let (mut c, reply) = try_login(name).await;
        assert!(reply.starts_with("+OK"), "{name:?}: {reply}");
        assert!(c.ok("STAT").await.starts_with("+OK 1 "), "{name:?}");
        c.ok("QUIT").await;
    }
    for name in no_one {
        let (_c, reply) = try_login(name).await;
        assert!(reply.starts_with("-ERR [AUTH]"), "{name:?}: {reply}");
    }
    s.stop().await;
}

/// `auth.case_insensitive_names` is read at start: the password database
/// keeps matching names as it did then. A SIGHUP that brings a config
/// with it turned off must not make failures counted under `ALICE`,
/// `Alice` and `aLIce` another user's than `alice`'s, while each of
/// those spellings still logs in as her: guesses spread over the
/// spellings would each start a count of their own.
#[tokio::test]
async fn a_reload_cannot_split_one_users_failures_over_her_spellings() {
    let dir = tempfile::tempdir().unwrap();
    write_passwd(dir.path());
    let port = free_port();
    let config = |reloaded: bool| {
        let (case, delay) = if reloaded {
            ("case_insensitive_names = false\n", "login_delay_secs = 1\n")
        } else {
            ("", "")
        };
        config_text(
            dir.path(),
            &format!(
                "{case}{}[pop3]\nlisten = [\"127.0.0.1:{port}\"]\n{delay}",
                crate::guessing::GUESSING
            ),
        )
    };
    let path = dir.path().join("mailbag.toml");
    std::fs::write(&path, config(false)).unwrap();
    let mut child = as_unprivileged(
        &mut std::process::Command::new(env!("CARGO_BIN_EXE_mailbag")),
        dir.path(),
    )
    .arg("serve")
    .arg("--config")
    .arg(&path)
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null())
    .spawn()
    .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    std::fs::write(&path, config(true)).unwrap();
    let status = std::process::Command::new("kill")
        .args(["-HUP", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    // The reload is seen when CAPA shows its LOGIN-DELAY.
    let mut reloaded = false;
    for _ in 0..100 {
        let mut c = Client::connect(addr).await;
        c.line().await;
        let (_, capa) = c.multi("CAPA").await;
        if String::from_utf8_lossy(&capa).contains("LOGIN-DELAY") {
            reloaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(reloaded, "the config was never reloaded");

    use crate::guessing::connect_from;
    for spelling in ["ALICE", "Alice", "aLIce"] {
        let mut c = connect_from("127.0.0.2", addr).await;
        c.line().await;
        for _ in 0..3 {
            c.ok(&format!("USER {spelling}")).await;
            assert!(c.cmd("PASS typo").await.starts_with("-ERR [AUTH]"));
        }
    }
    let mut c = connect_from("127.0.0.2", addr).await;
    c.line().await;
    c.ok("USER alice").await;
    c.ok("PASS wonderland").await;
    c.ok("QUIT").await;
    // Her login forgave the nine failures: they were hers.
    let mut answers = Vec::new();
    for _ in 0..3 {
        let mut c = connect_from("127.0.0.2", addr).await;
        let greeting = c.line().await;
        if !greeting.starts_with("+OK") {
            answers.push(greeting);
            continue;
        }
        c.ok("USER aLiCe").await;
        answers.push(c.cmd("PASS typo").await);
    }
    child.kill().unwrap();
    child.wait().unwrap();
    for reply in &answers {
        assert!(reply.starts_with("-ERR [AUTH]"), "{answers:?}");
    }
}

/// With names matched without regard to case (the default), `Alice@localhost`
/// is alice's address, as `alice@localhost` is: `user add` refuses it beside
/// `alice` as it refuses the lower-case spelling. Added, it would be a user
/// of its own with a Maildir of its own, and mail for alice@localhost (and
/// alice's USER alice@localhost) would go to it.
#[test]
fn user_add_refuses_a_case_variant_of_an_existing_users_full_address() {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    write_passwd(dir.path());
    let config = dir.path().join("mailbag.toml");
    std::fs::write(&config, config_text(dir.path(), "")).unwrap();
    let add = |name: &str| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_mailbag"));
        let mut child = as_unprivileged(&mut command, dir.path())
            .args(["user", "add", name, "--password-stdin", "--config"])
            .arg(&config)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let _ = child.stdin.take().unwrap().write_all(b"intruder\n");
        let out = child.wait_with_output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for name in ["Alice@localhost", "ALICE@LOCALHOST", "alice@LocalHost"] {
        let (ok, stderr) = add(name);
        assert!(!ok, "{name} was added beside alice");
        assert!(stderr.contains("alice"), "{stderr}");
    }
    // And the other way round: BOB beside bob.
    let (ok, _) = add("BOB");
    assert!(!ok, "BOB was added beside bob");
    // Names of their own still are.
    assert!(add("carol").0);
    assert!(add("Alice@example.org").0);
    let passwd = std::fs::read_to_string(dir.path().join("passwd")).unwrap();
    assert!(
        !passwd.to_ascii_lowercase().contains("alice@localhost"),
        "{passwd}"
    );
}

/// The same with users in PostgreSQL: `Alice@localhost` beside `alice` is
/// refused, and so is `alice@localhost`.
#[tokio::test]
async fn postgres_user_add_refuses_another_spelling_of_an_existing_user() {
    use crate::support::pg::{Backend, Fixture};
    use std::io::Write;
    use std::process::Stdio;
    let Some(f) = Fixture::new(Backend::Postgres, "attack15_user_add").await else {
        return;
    };
    let config = f.config_path.to_str().unwrap().to_string();
    let add = |name: &str| {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_mailbag"))
            .args(["user", "add", name, "--password-stdin", "--config", &config])
            .env("MAILBAG_LOG", "warn")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"intruder\n")
            .unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    for name in ["Alice@localhost", "alice@localhost", "ALICE@LocalHost"] {
        let (ok, stderr) = add(name);
        assert!(!ok, "{name} was added beside alice");
        assert!(stderr.contains("alice"), "{stderr}");
    }
    let (ok, stderr) = add("carol@localhost");
    assert!(ok, "{stderr}");
    let (ok, _) = add("Carol");
    assert!(!ok, "Carol was added beside carol@localhost");
}

/// A passwd-file written by hand can still hold `alice` and
/// `Alice@localhost`, two users that name matching takes for one. Mail
/// for alice@localhost and the login `alice@localhost` then mean either:
/// neither is chosen (a temporary failure, logged), so that alice's mail
/// never lands in the other account's Maildir.
#[tokio::test]
async fn two_stored_users_for_one_name_get_neither_ones_mail() {
    let s = TestServer::start_with_dir(|dir| {
        let mut passwd = std::fs::read_to_string(dir.join("passwd")).unwrap();
        passwd.push_str("Alice@localhost:{PLAIN}other\n");
        std::fs::write(dir.join("passwd"), passwd).unwrap();
        "[lmtp]\nlisten = [\"127.0.0.1:0\"]\n".to_string()
    })
    .await;
    let mut c = Client::connect(s.lmtp_addr.unwrap()).await;
    assert!(c.line().await.starts_with("220"));
    c.send(b"LHLO mx.example.test\r\n").await;
    while c.line().await.starts_with("250-") {}
    assert!(c.cmd("MAIL FROM:<x@example.org>").await.starts_with("250"));
    let rcpt = c.cmd("RCPT TO:<alice@localhost>").await;
    if rcpt.starts_with("250") {
        assert!(c.cmd("DATA").await.starts_with("354"));
        c.send(b"Subject: for alice\r\n\r\nsecret\r\n.\r\n").await;
        c.line().await;
    }
    let other = s.dir.path().join("mail/localhost/Alice/Maildir/new");
    let landed = std::fs::read_dir(&other).map_or(0, |d| d.count());
    assert_eq!(landed, 0, "alice's mail went to Alice@localhost: {rcpt}");
    assert!(rcpt.starts_with("4"), "{rcpt}");
    // Both spellings of alice's own login are refused alike.
    let mut c = s.connect().await;
    c.line().await;
    c.ok("USER alice@localhost").await;
    let reply = c.cmd("PASS other").await;
    assert!(reply.starts_with("-ERR [SYS/TEMP]"), "{reply}");
    s.stop().await;
}

/// Bodies that stress the LF storage conversion, delivered over LMTP:
/// nothing but CRs, CR runs before a CRLF, a lone LF after a CR run, an
/// empty body and a line of a megabyte. Each is stored with LF endings,
/// named with `W=` equal to what RETR sends, and RETR sends the CRLF form
/// of what came.
#[tokio::test]
async fn odd_bodies_over_lmtp_are_sent_back_exactly_as_listed() {
    let s = TestServer::start_with("[lmtp]\nlisten = [\"127.0.0.1:0\"]\n").await;
    let long = [vec![b'l'; 1 << 20], b"\r\n".to_vec()].concat();
    let bodies: Vec<Vec<u8>> = vec![
        b"\r\r\r\r\r\n".to_vec(),
        b"a\r\r\r\nb\r\r\n\r\n".to_vec(),
        b"x\r\r\ny\n\rz\r\n".to_vec(),
        Vec::new(),
        long,
    ];
    let mut c = Client::connect(s.lmtp_addr.unwrap()).await;
    assert!(c.line().await.starts_with("220"));
    c.send(b"LHLO mx.example.test\r\n").await;
    while c.line().await.starts_with("250-") {}
    for body in &bodies {
        assert!(c.cmd("MAIL FROM:<>").await.starts_with("250"));
        assert!(c.cmd("RCPT TO:<ALICE@LOCALHOST>").await.starts_with("250"));
        assert!(c.cmd("DATA").await.starts_with("354"));
        c.send(body).await;
        c.send(b".\r\n").await;
        let done = c.line().await;
        assert!(done.starts_with("250"), "{done}");
    }
    let mut pop = s.login(ALICE).await;
    for (i, body) in bodies.iter().enumerate() {
        let n = i + 1;
        let list = pop.ok(&format!("LIST {n}")).await;
        let size: usize = list.split_whitespace().nth(2).unwrap().parse().unwrap();
        let (_, sent) = pop.multi(&format!("RETR {n}")).await;
        assert_eq!(size, sent.len(), "message {n}");
        let expected = [
            &b"Return-Path: <>\r\nDelivered-To: ALICE@LOCALHOST\r\n"[..],
            &mailbag_proto::dot::canonicalize(body),
        ]
        .concat();
        assert!(
            sent == expected,
            "message {n}: {:?}",
            String::from_utf8_lossy(&sent[..sent.len().min(200)])
        );
    }
    pop.ok("QUIT").await;
    let mut files = maildir_files(&s.maildir("alice"), "new");
    files.extend(maildir_files(&s.maildir("alice"), "cur"));
    assert_eq!(files.len(), bodies.len());
    for (name, content) in files {
        // Stored with LF: a CRLF stays only behind a CR that is data.
        let count = |pat: &[u8]| content.windows(pat.len()).filter(|w| *w == pat).count();
        assert_eq!(count(b"\r\n"), count(b"\r\r\n"), "{name}");
        let (stored, crlf) = size_fields(&name);
        assert_eq!(stored, Some(content.len() as u64), "{name}");
        assert_eq!(
            crlf,
            Some(mailbag_proto::dot::canonical_size(&content)),
            "{name}"
        );
    }
    s.stop().await;
}

/// UIDLs an old server gives twice, or that name another message here,
/// are not taken: the listing stays what it was, one UIDL a message.
#[tokio::test]
async fn an_old_servers_repeated_or_borrowed_uidls_change_nothing() {
    let s = TestServer::start().await;
    let bodies: Vec<Vec<u8>> = (0..3)
        .map(|i| format!("Subject: {i}\n\nbody {i}\n").into_bytes())
        .collect();
    for b in &bodies {
        s.deliver("alice", b);
    }
    let before = uidls(&s).await;
    let old = old_server(vec![
        ("same".to_string(), bodies[0].clone()),
        ("same".to_string(), bodies[1].clone()),
        (before[0].clone(), bodies[2].clone()),
    ])
    .await;
    let report = migrate_alice(&s, old).await;
    assert!(report.error.is_none(), "{report}");
    assert_eq!(report.unusable_uidls, 2, "{report}");
    assert_eq!(uidls(&s).await, before);
    s.stop().await;
}
