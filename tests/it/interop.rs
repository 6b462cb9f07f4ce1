//! What an administrator meets behind a real MTA (Postfix) and with real
//! clients: user names in any letter case and with the default domain at
//! every entry point (LMTP, `mailbag deliver`, USER/PASS, APOP, SASL), as
//! one user with one lock and one failure count; one line-ending form in
//! storage with exact octet counts; one `Delivered-To:` per recipient; and
//! no warning in the log for a client that sends an IP address as SNI.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};

use md5::Digest as _;

use crate::guessing::{connect_from, GUESSING};
use crate::sasl::{b64, cram_md5, scram, unb64};
use crate::support::pg::{Backend, Fixture};
use crate::support::*;
use crate::tls::Lines;

const LMTP: &str = "[lmtp]\nlisten = [\"127.0.0.1:0\"]\n";

fn mailbag() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mailbag"))
}

/// One LMTP transaction to `rcpt` (whole, each reply awaited); returns
/// the RCPT reply and, when it was accepted, the reply after the dot.
async fn lmtp_send(addr: SocketAddr, rcpt: &str, message: &[u8]) -> (String, Option<String>) {
    let mut c = Client::connect(addr).await;
    assert!(c.line().await.starts_with("220"));
    c.send(b"LHLO mx.example.test\r\n").await;
    while c.line().await.starts_with("250-") {}
    assert!(c
        .cmd("MAIL FROM:<sender@example.org>")
        .await
        .starts_with("250"));
    let rcpt_reply = c.cmd(&format!("RCPT TO:<{rcpt}>")).await;
    if !rcpt_reply.starts_with("250") {
        return (rcpt_reply, None);
    }
    assert!(c.cmd("DATA").await.starts_with("354"));
    let mut data = Vec::new();
    for line in message.split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b".") {
            data.push(b'.');
        }
        data.extend_from_slice(line);
    }
    c.send(&data).await;
    c.send(b".\r\n").await;
    let done = c.line().await;
    assert!(c.cmd("QUIT").await.starts_with("221"));
    (rcpt_reply, Some(done))
}

/// LIST's size of message 1 and the octets RETR sends for it (before the
/// final dot, unstuffed).
async fn list_and_retr(c: &mut Client, msg: u32) -> (u64, Vec<u8>) {
    let list = c.ok(&format!("LIST {msg}")).await;
    let size = list.split_whitespace().nth(2).unwrap().parse().unwrap();
    let (status, body) = c.multi(&format!("RETR {msg}")).await;
    assert!(status.starts_with("+OK"), "{status}");
    (size, body)
}

#[tokio::test]
async fn lmtp_delivers_to_any_letter_case_and_stores_lf_with_exact_sizes() {
    let s = TestServer::start_with(LMTP).await;
    let lmtp = s.lmtp_addr.unwrap();
    // What Postfix sends for mail to P1@example.test when the user is p1.
    let plain = b"Subject: case\r\n\r\none\r\n.dot line\r\ntwo\r\n";
    let (rcpt, done) = lmtp_send(lmtp, "ALICE@LocalHost", plain).await;
    assert!(rcpt.starts_with("250"), "{rcpt}");
    assert!(done.unwrap().starts_with("250"));
    // Bare CR, a CR before a CRLF, and a bare LF, mixed.
    let mixed = b"Subject: mixed\r\n\r\nbare\rcr\r\r\nlf only\nend\r\n";
    let (rcpt, _) = lmtp_send(lmtp, "Alice", mixed).await;
    assert!(rcpt.starts_with("250"), "{rcpt}");

    let files = maildir_files(&s.maildir("alice"), "new");
    assert_eq!(files.len(), 2, "both went to alice's one Maildir");
    for (name, content) in &files {
        let (stored, crlf_size) = size_fields(name);
        assert_eq!(stored, Some(content.len() as u64), "{name}");
        assert_eq!(
            crlf_size,
            Some(mailbag_proto::dot::canonical_size(content)),
            "{name}"
        );
        // Line endings as Maildir tools expect: LF; only a CR that is
        // data stays (the one before a CRLF keeps that CRLF whole).
        let text = String::from_utf8_lossy(content);
        assert!(
            text.matches("\r\n").count() == text.matches("\r\r\n").count(),
            "CRLF stored: {text:?}"
        );
    }
    let plain_file = files
        .iter()
        .map(|(_, c)| c)
        .find(|c| c.windows(13).any(|w| w == b"Subject: case"))
        .unwrap();
    assert_eq!(
        plain_file.as_slice(),
        b"Return-Path: <sender@example.org>\nDelivered-To: ALICE@LocalHost\n\
          Subject: case\n\none\n.dot line\ntwo\n"
    );

    // RETR sends exactly LIST's octets, and the CRLF form of what came.
    let mut c = s.login(ALICE).await;
    for msg in 1..=2 {
        let (size, body) = list_and_retr(&mut c, msg).await;
        assert_eq!(size, body.len() as u64, "message {msg}");
        let sent = |m: &[u8]| body.ends_with(&mailbag_proto::dot::canonicalize(m));
        assert!(
            sent(plain) || sent(mixed),
            "{:?}",
            String::from_utf8_lossy(&body)
        );
    }
    c.ok("QUIT").await;
    s.stop().await;
}

#[tokio::test]
async fn names_match_exactly_when_case_insensitivity_is_off() {
    let s = TestServer::start_with(&format!("case_insensitive_names = false\n{LMTP}")).await;
    let (rcpt, _) = lmtp_send(
        s.lmtp_addr.unwrap(),
        "ALICE@localhost",
        b"S: x\r\n\r\nx\r\n",
    )
    .await;
    assert!(rcpt.starts_with("550 5.1.1"), "{rcpt}");
    let mut c = Client::connect(s.addr).await;
    c.line().await;
    c.ok("USER ALICE").await;
    assert!(c.cmd("PASS wonderland").await.starts_with("-ERR [AUTH]"));
    // The default domain still goes either way.
    c.ok("USER alice@localhost").await;
    assert!(c.cmd("PASS wonderland").await.starts_with("+OK"));
    c.ok("QUIT").await;
    s.stop().await;
}

/// The greeting's APOP timestamp.
fn timestamp(greeting: &str) -> String {
    let start = greeting.find('<').expect("an APOP timestamp");
    greeting[start..].trim_end().to_string()
}

fn apop_digest(timestamp: &str, secret: &str) -> String {
    let mut md5 = md5::Md5::new();
    md5.update(timestamp.as_bytes());
    md5.update(secret.as_bytes());
    md5.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Logs in as `spelling` of alice by `how`; returns the final reply.
async fn login_as(
    addr: SocketAddr,
    how: &str,
    spelling: &str,
) -> (Lines<tokio::net::TcpStream>, String) {
    let mut c = Lines::new(tokio::net::TcpStream::connect(addr).await.unwrap());
    let greeting = c.line().await;
    let reply = match how {
        "USER" => {
            assert!(c.cmd(&format!("USER {spelling}")).await.starts_with("+OK"));
            c.cmd("PASS wonderland").await
        }
        "APOP" => {
            let digest = apop_digest(&timestamp(&greeting), "wonderland");
            c.cmd(&format!("APOP {spelling} {digest}")).await
        }
        "PLAIN" => {
            let payload = b64(format!("\0{spelling}\0wonderland").as_bytes());
            c.cmd(&format!("AUTH PLAIN {payload}")).await
        }
        "CRAM-MD5" => {
            let challenge = unb64(&c.cmd("AUTH CRAM-MD5").await);
            let answer = format!("{spelling} {}", cram_md5(b"wonderland", &challenge));
            c.cmd(&b64(answer.as_bytes())).await
        }
        "SCRAM" => scram(&mut c, spelling, "wonderland").await,
        _ => unreachable!("no such way in: {how}"),
    };
    (c, reply)
}

const WAYS_IN: [(&str, &str); 7] = [
    ("USER", "ALICE"),
    ("USER", "alice@localhost"),
    ("USER", "Alice@LOCALHOST"),
    ("APOP", "Alice"),
    ("PLAIN", "ALICE@localhost"),
    ("CRAM-MD5", "aLiCe"),
    ("SCRAM", "ALICE"),
];

#[tokio::test]
async fn every_spelling_and_mechanism_opens_the_one_maildrop_under_one_lock() {
    let s = TestServer::start().await;
    s.deliver("alice", b"Subject: one\n\nthe one message\n");
    // While alice's maildrop is open, every other spelling and way in is
    // the same user: its credential is good and the lock is held.
    let mut holder = s.login(ALICE).await;
    for (how, spelling) in WAYS_IN {
        let (_c, reply) = login_as(s.addr, how, spelling).await;
        assert!(
            reply.starts_with("-ERR [IN-USE]"),
            "{how} {spelling}: {reply}"
        );
    }
    holder.ok("QUIT").await;
    // And each of them opens it alone.
    for (how, spelling) in WAYS_IN {
        let (mut c, reply) = login_as(s.addr, how, spelling).await;
        assert!(
            reply.starts_with("+OK") && reply.contains("1 message"),
            "{how} {spelling}: {reply}"
        );
        assert!(c.cmd("QUIT").await.starts_with("+OK"));
    }
    s.stop().await;
}

#[tokio::test]
async fn every_spelling_of_a_name_shows_one_scram_salt_known_or_not() {
    let s = TestServer::start().await;
    let step = |user: &'static str| crate::sasl::scram_first_step_at(s.addr, user);
    assert_eq!(step("alice").await, step("ALICE@localhost").await);
    // An unknown name's spellings agree too, or the difference would
    // tell which names exist.
    assert_eq!(step("zed").await, step("Zed@LocalHost").await);
    s.stop().await;
}

#[tokio::test]
async fn failures_under_every_spelling_are_one_users_and_her_login_clears_them() {
    let s = TestServer::start_with(GUESSING).await;
    // Nine failures for alice, spelt three ways, then her right password
    // as `alice`: they were hers, so the address is not one failure from
    // a block any more.
    for spelling in ["ALICE", "Alice@localhost", "alice@LOCALHOST"] {
        let mut c = connect_from("127.0.0.2", s.addr).await;
        c.line().await;
        for _ in 0..3 {
            c.ok(&format!("USER {spelling}")).await;
            assert!(c.cmd("PASS typo").await.starts_with("-ERR [AUTH]"));
        }
    }
    let mut c = connect_from("127.0.0.2", s.addr).await;
    c.line().await;
    c.ok("USER alice").await;
    c.ok("PASS wonderland").await;
    c.ok("QUIT").await;
    for _ in 0..3 {
        let mut c = connect_from("127.0.0.2", s.addr).await;
        let greeting = c.line().await;
        assert!(greeting.starts_with("+OK"), "{greeting}");
        c.ok("USER aLiCe").await;
        let reply = c.cmd("PASS typo").await;
        assert!(reply.starts_with("-ERR [AUTH]"), "{reply}");
    }
    s.stop().await;
}

fn deliver(config: &Path, user: &str, stdin: &[u8]) -> std::process::Output {
    let mut cmd = mailbag();
    cmd.arg("deliver")
        .arg("--config")
        .arg(config)
        .args(["--user", user]);
    as_unprivileged(&mut cmd, config.parent().unwrap());
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let _ = input.write_all(stdin);
    drop(input);
    child.wait_with_output().unwrap()
}

#[tokio::test]
async fn deliver_behind_postfix_pipe_adds_no_second_delivered_to() {
    let s = TestServer::start().await;
    // Postfix's pipe (flags DRX, user=${user}) has added its own
    // Delivered-To with the full address, and passes the bare user.
    let from_postfix = b"Return-Path: <sender@example.org>\r\n\
        Delivered-To: alice@localhost\r\nSubject: piped\r\n\r\nbody\r\n";
    let out = deliver(&s.config_path, "alice", from_postfix);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    // A recipient in another letter case is the same user, and a message
    // without the header gets the full address.
    let out = deliver(&s.config_path, "ALICE", b"Subject: bare\n\nbody\n");
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let files = maildir_files(&s.maildir("alice"), "new");
    assert_eq!(files.len(), 2);
    for (_, content) in &files {
        let text = String::from_utf8(content.clone()).unwrap();
        assert_eq!(text.matches("Delivered-To:").count(), 1, "{text}");
        assert!(!text.contains('\r'), "stored with CRLF: {text:?}");
        if text.contains("piped") {
            assert!(text.contains("Delivered-To: alice@localhost\n"), "{text}");
        } else {
            assert!(
                text.starts_with("Delivered-To: ALICE@localhost\n"),
                "{text}"
            );
        }
    }
    s.stop().await;
}

#[test]
fn a_passwd_file_with_names_differing_only_in_case_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("passwd"),
        "Ann:{PLAIN}one\nbob:{PLAIN}two\nann:{PLAIN}three\n",
    )
    .unwrap();
    let path = dir.path().join("mailbag.toml");
    std::fs::write(&path, config_text(dir.path(), "")).unwrap();
    let check = || {
        mailbag()
            .arg("check-config")
            .arg("--config")
            .arg(&path)
            .output()
            .unwrap()
    };
    let out = check();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("passwd:3"), "{err}");
    assert!(err.contains("letter case"), "{err}");
    assert!(err.contains("auth.case_insensitive_names"), "{err}");
    // Matched exactly, they are two users and the file is fine.
    std::fs::write(
        &path,
        config_text(dir.path(), "case_insensitive_names = false"),
    )
    .unwrap();
    let out = check();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn postgres_users_match_in_any_case_and_keep_exact_sizes() {
    let test = "postgres_users_match_in_any_case_and_keep_exact_sizes";
    let Some(fixture) = Fixture::new(Backend::Postgres, test).await else {
        return;
    };
    let node = fixture.node().await;
    let mixed = b"Subject: pg\r\n\r\nbare\rcr\r\r\nlf only\nend\r\n";
    let (rcpt, done) = lmtp_send(node.lmtp.unwrap(), "ALICE@localhost", mixed).await;
    assert!(rcpt.starts_with("250"), "{rcpt}");
    assert!(done.unwrap().starts_with("250"));
    for spelling in ["Alice", "alice@LOCALHOST"] {
        let mut c = node.login((spelling, "wonderland")).await;
        let (size, body) = list_and_retr(&mut c, 1).await;
        assert_eq!(size, body.len() as u64);
        assert!(
            body.ends_with(&mailbag_proto::dot::canonicalize(mixed)),
            "{:?}",
            String::from_utf8_lossy(&body)
        );
        c.ok("QUIT").await;
    }
    // `mailbag user add` refuses a case variant of an existing user.
    let store = crate::support::pg::pg_store(fixture.url.as_deref().unwrap());
    let passdb = mailbag::auth::postgres::PgPassDb::new(std::sync::Arc::clone(store.pool())).await;
    let added = passdb
        .add_user("ALICE", b"x", mailbag::auth::scheme::Scheme::Plain)
        .await;
    assert!(
        matches!(added, Err(mailbag::auth::postgres::UserError::Exists(_))),
        "{added:?}"
    );
    // One salt for every spelling, as with the passwd-file.
    let step = |user: &'static str| crate::sasl::scram_first_step_at(node.addr, user);
    assert_eq!(step("alice").await, step("ALICE@localhost").await);
    // A row written by hand around `user add`: which user `alice` means
    // cannot be told, so the login is refused as a temporary failure
    // (and the log says why), never given to either.
    let db = crate::support::pg::connect(fixture.url.as_deref().unwrap()).await;
    db.execute(
        "INSERT INTO users (name, secret) VALUES ('ALICE', '{PLAIN}other')",
        &[],
    )
    .await
    .unwrap();
    let (_, reply) = node.try_login(("alice", "wonderland")).await;
    assert!(reply.starts_with("-ERR [SYS/TEMP]"), "{reply}");
    node.stop().await;
}

/// Starts `mailbag serve` (the binary, so that its log setup is the one
/// tested) with implicit TLS, `MAILBAG_LOG` as given; returns the child,
/// the TLS address and the log file.
fn serve_tls(
    dir: &Path,
    log_spec: Option<&str>,
) -> (std::process::Child, SocketAddr, std::path::PathBuf) {
    write_passwd(dir);
    std::fs::create_dir_all(dir.join("tls")).unwrap();
    mailbag::server::tls::write_self_signed(
        &["localhost", "127.0.0.1"],
        &dir.join("tls/cert.pem"),
        &dir.join("tls/key.pem"),
    )
    .unwrap();
    let (plain, tls) = (free_port(), free_port());
    let text = config_text(dir, "").replace(
        "listen = [\"127.0.0.1:0\"]",
        &format!("listen = [\"127.0.0.1:{plain}\"]\nlisten_tls = [\"127.0.0.1:{tls}\"]"),
    ) + "\n[tls]\ncertificate = \"tls/cert.pem\"\nkey = \"tls/key.pem\"\n";
    std::fs::write(dir.join("mailbag.toml"), text).unwrap();
    let log = dir.join(format!("mailbag-{}.log", log_spec.is_some()));
    let mut cmd = mailbag();
    as_unprivileged(&mut cmd, dir);
    cmd.arg("serve")
        .arg("--config")
        .arg(dir.join("mailbag.toml"))
        .env_remove("MAILBAG_LOG")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap());
    if let Some(spec) = log_spec {
        cmd.env("MAILBAG_LOG", spec);
    }
    let child = cmd.spawn().unwrap();
    (child, format!("127.0.0.1:{tls}").parse().unwrap(), log)
}

/// Greets over implicit TLS with `openssl s_client`, naming the server by
/// its IP address in SNI as mpop does; returns what the client saw.
async fn greet_with_ip_sni(addr: SocketAddr) -> String {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    let mut child = tokio::process::Command::new("openssl")
        .args([
            "s_client",
            "-quiet",
            "-crlf",
            "-servername",
            "127.0.0.1",
            "-connect",
        ])
        .arg(addr.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    use tokio::io::AsyncWriteExt;
    let mut stdin = child.stdin.take().unwrap();
    // Give the greeting time to come before QUIT; s_client exits when the
    // server closes.
    let out = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let _ = stdin.write_all(b"QUIT\n").await;
        drop(stdin);
        child.wait_with_output().await.unwrap()
    })
    .await
    .expect("openssl s_client did not finish");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn a_client_sending_an_ip_address_as_sni_leaves_no_warning_in_the_log() {
    for log_spec in [None, Some("info,rustls=warn")] {
        let dir = tempfile::tempdir().unwrap();
        let (mut child, addr, log) = serve_tls(dir.path(), log_spec);
        let seen = greet_with_ip_sni(addr).await;
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(seen.contains("+OK"), "{seen}");
        let log = std::fs::read_to_string(&log).unwrap();
        if log_spec.is_none() {
            assert!(!log.contains("WARN"), "{log}");
        } else {
            // Asked for, rustls's warning is there: the client did send
            // an IP address, and the log is where it would show.
            assert!(log.contains("WARN") && log.contains("SNI"), "{log}");
        }
    }
}
