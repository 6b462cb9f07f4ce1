//! POP3 over a real socket: every command's success and error paths, exact
//! octets, and the maildrop semantics that are not negotiable.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

const PLAIN: &[u8] = b"From: a@example.org\nSubject: plain\n\nHello\n";

#[tokio::test]
async fn full_session_with_every_command() {
    let s = TestServer::start().await;
    s.deliver("alice", PLAIN);
    s.deliver("alice", b"Subject: two\r\n\r\nsecond message\r\nline 2\r\n");
    let mut c = s.connect().await;
    let greeting = c.line().await;
    assert!(
        greeting.starts_with("+OK mailbag POP3 server ready <"),
        "{greeting}"
    );
    assert!(c
        .cmd("STAT")
        .await
        .starts_with("-ERR STAT is only valid after login."));
    c.ok("USER alice").await;
    let login = c.ok("PASS wonderland").await;
    let second = crlf(b"Subject: two\r\n\r\nsecond message\r\nline 2\r\n").len();
    let total = crlf(PLAIN).len() + second;
    assert_eq!(
        login,
        format!("+OK Logged in. Maildrop has 2 messages ({total} octets)\r\n")
    );
    assert_eq!(c.cmd("STAT").await, format!("+OK 2 {total}\r\n"));
    let (_, list) = c.multi("LIST").await;
    assert_eq!(
        String::from_utf8(list).unwrap(),
        format!("1 {}\r\n2 {second}\r\n", crlf(PLAIN).len())
    );
    assert_eq!(c.cmd("LIST 2").await, format!("+OK 2 {second}\r\n"));
    assert!(c
        .cmd("LIST 3")
        .await
        .starts_with("-ERR No such message: 3 (there are 2 messages"));
    let (_, uidl) = c.multi("UIDL").await;
    let uidl = String::from_utf8(uidl).unwrap();
    let uids: Vec<&str> = uidl.lines().map(|l| l.split(' ').nth(1).unwrap()).collect();
    assert_eq!(uids.len(), 2);
    assert!(uids
        .iter()
        .all(|u| !u.is_empty() && u.len() <= 70 && u.bytes().all(|b| (0x21..=0x7e).contains(&b))));
    assert_eq!(c.cmd("UIDL 1").await, format!("+OK 1 {}\r\n", uids[0]));
    let (status, body) = c.multi("RETR 1").await;
    assert_eq!(status, format!("+OK {} octets\r\n", crlf(PLAIN).len()));
    assert_eq!(body, crlf(PLAIN));
    let (_, top) = c.multi("TOP 2 0").await;
    assert_eq!(top, b"Subject: two\r\n\r\n");
    let (_, top) = c.multi("TOP 2 1").await;
    assert_eq!(top, b"Subject: two\r\n\r\nsecond message\r\n");
    assert_eq!(c.cmd("NOOP").await, "+OK \r\n");
    c.ok("DELE 1").await;
    assert!(c
        .cmd("RETR 1")
        .await
        .starts_with("-ERR Message 1 is already deleted"));
    assert_eq!(c.cmd("STAT").await, format!("+OK 1 {second}\r\n"));
    c.ok("RSET").await;
    assert_eq!(c.cmd("STAT").await, format!("+OK 2 {total}\r\n"));
    let (_, capa) = c.multi("CAPA").await;
    let capa = String::from_utf8(capa).unwrap();
    for cap in ["TOP", "UIDL", "RESP-CODES", "PIPELINING", "AUTH-RESP-CODE"] {
        assert!(capa.lines().any(|l| l == cap), "{cap} in {capa}");
    }
    assert!(c
        .cmd("USER x")
        .await
        .starts_with("-ERR USER is not valid after login"));
    assert!(c.cmd("RETR").await.starts_with("-ERR Usage: RETR msg"));
    assert!(c
        .cmd("RETR 0")
        .await
        .starts_with("-ERR Invalid message number"));
    assert!(c
        .cmd("FOO")
        .await
        .starts_with("-ERR Unknown command \"FOO\". Valid now: STAT"));
    assert_eq!(
        c.cmd("QUIT").await,
        "+OK mailbag signing off (2 messages left)\r\n"
    );
    assert!(c.closed().await);
    s.stop().await;
}

#[tokio::test]
async fn octets_are_exact_for_awkward_messages() {
    let s = TestServer::start().await;
    let mut big = Vec::with_capacity(5 * 1024 * 1024 + 100);
    big.extend_from_slice(b"Subject: big\n\n");
    let mut i = 0u32;
    while big.len() < 5 * 1024 * 1024 {
        // Every 7th line starts with a dot; lines vary in length.
        if i.is_multiple_of(7) {
            big.push(b'.');
        }
        big.extend(std::iter::repeat_n(
            b'a' + (i % 26) as u8,
            (i % 90) as usize,
        ));
        big.push(b'\n');
        i += 1;
    }
    let messages: Vec<Vec<u8>> = vec![
        b"Subject: dots\n\n.leading dot\n..two dots\n.\nend\n".to_vec(),
        b"Subject: lone dot\r\n\r\n.\r\n".to_vec(),
        b"Subject: no final newline\n\nlast line".to_vec(),
        "Subject: 8-bit\n\nGr\u{fc}\u{df}e, \u{4e16}\u{754c}, raw bytes\n"
            .as_bytes()
            .iter()
            .copied()
            .chain([0xff, 0x00, 0x80, b'\n'])
            .collect(),
        b"Subject: bare CR\n\nA\rB\r\n".to_vec(),
        big,
    ];
    for m in &messages {
        s.deliver("alice", m);
    }
    let mut c = s.login(ALICE).await;
    let mut stat_total = 0;
    for (i, m) in messages.iter().enumerate() {
        let n = i + 1;
        let listed: usize = c
            .cmd(&format!("LIST {n}"))
            .await
            .trim_end()
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        let (status, body) = c.multi(&format!("RETR {n}")).await;
        assert_eq!(status, format!("+OK {listed} octets\r\n"));
        assert_eq!(body.len(), listed, "message {n}: octets sent != LIST size");
        assert_eq!(body, crlf(m), "message {n}");
        stat_total += listed;
    }
    assert_eq!(
        c.cmd("STAT").await,
        format!("+OK {} {stat_total}\r\n", messages.len())
    );
    s.stop().await;
}

#[tokio::test]
async fn retr_streams_dot_stuffed_bytes_exactly() {
    let s = TestServer::start().await;
    s.deliver("alice", b"A: b\n\n.x\n.\n");
    let mut c = s.login(ALICE).await;
    c.send(b"RETR 1\r\n").await;
    let want = b"+OK 15 octets\r\nA: b\r\n\r\n..x\r\n..\r\n.\r\n";
    let mut got = vec![0u8; want.len()];
    c.stream.read_exact(&mut got).await.unwrap();
    assert_eq!(got, want);
    s.stop().await;
}

#[tokio::test]
async fn dele_then_dropped_connection_deletes_nothing() {
    let s = TestServer::start().await;
    s.deliver("alice", PLAIN);
    s.deliver("alice", PLAIN);
    let before = s.files("alice");
    let mut c = s.login(ALICE).await;
    c.ok("DELE 1").await;
    c.ok("DELE 2").await;
    drop(c);
    // The lock is released once the server notices the close.
    let mut c = loop {
        let mut c = s.connect().await;
        c.line().await;
        c.ok("USER alice").await;
        if c.cmd("PASS wonderland").await.starts_with("+OK") {
            break c;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(c.cmd("STAT").await.split(' ').nth(1), Some("2"));
    assert_eq!(s.files("alice"), before);
    s.stop().await;
}

#[tokio::test]
async fn dele_then_quit_deletes_exactly_the_marked_messages() {
    let s = TestServer::start().await;
    let names: Vec<String> = (0..4)
        .map(|i| s.deliver("alice", format!("Subject: {i}\n\nbody {i}\n").as_bytes()))
        .collect();
    let mut c = s.login(ALICE).await;
    c.ok("DELE 2").await;
    c.ok("DELE 4").await;
    c.ok("QUIT").await;
    assert!(c.closed().await);
    let files = s.files("alice").join(" ");
    assert!(
        files.contains(&names[0]) && files.contains(&names[2]),
        "{files}"
    );
    assert!(
        !files.contains(&names[1]) && !files.contains(&names[3]),
        "{files}"
    );
    let mut c = s.login(ALICE).await;
    let (_, uidl) = c.multi("UIDL").await;
    let uidl = String::from_utf8(uidl).unwrap();
    assert_eq!(uidl.lines().count(), 2);
    s.stop().await;
}

#[tokio::test]
async fn retrieved_messages_are_marked_seen_and_keep_their_uidl() {
    let s = TestServer::start().await;
    s.deliver("alice", PLAIN);
    s.deliver("alice", PLAIN);
    let mut c = s.login(ALICE).await;
    let (_, before) = c.multi("UIDL").await;
    c.multi("RETR 1").await;
    c.multi("TOP 2 0").await;
    c.ok("QUIT").await;
    assert!(c.closed().await);
    let files = s.files("alice");
    assert!(
        files
            .iter()
            .any(|f| f.starts_with("cur/") && f.ends_with(":2,S")),
        "{files:?}"
    );
    assert!(
        files.iter().any(|f| f.starts_with("new/")),
        "TOP must not mark seen: {files:?}"
    );
    let mut c = s.login(ALICE).await;
    let (_, after) = c.multi("UIDL").await;
    assert_eq!(before, after);
    s.stop().await;
}

#[tokio::test]
async fn delivery_during_a_session_is_invisible_and_survives_quit() {
    let s = TestServer::start().await;
    s.deliver("alice", PLAIN);
    let mut c = s.login(ALICE).await;
    let late = s.deliver("alice", b"Subject: late\n\narrived mid-session\n");
    assert!(c.cmd("STAT").await.starts_with("+OK 1 "));
    assert!(c.cmd("RETR 2").await.starts_with("-ERR No such message: 2"));
    c.ok("DELE 1").await;
    c.ok("QUIT").await;
    assert!(c.closed().await);
    let files = s.files("alice");
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(files[0].contains(&late));
    s.stop().await;
}

#[tokio::test]
async fn second_login_gets_in_use_until_the_first_ends() {
    let s = TestServer::start().await;
    s.deliver("alice", PLAIN);
    let mut first = s.login(ALICE).await;
    let mut second = s.connect().await;
    second.line().await;
    second.ok("USER alice").await;
    let refused = second.cmd("PASS wonderland").await;
    assert!(refused.starts_with("-ERR [IN-USE] "), "{refused}");
    // Still in AUTHORIZATION: the same connection can try again later.
    first.ok("QUIT").await;
    assert!(first.closed().await);
    second.ok("USER alice").await;
    second.ok("PASS wonderland").await;
    s.stop().await;
}

/// A login that meets the lock of a session whose QUIT is a moment
/// behind it waits for that session to end, instead of `[IN-USE]`.
#[tokio::test]
async fn a_login_just_before_the_holder_quits_waits_for_the_lock() {
    let s = TestServer::start().await;
    s.deliver("alice", PLAIN);
    let mut first = s.login(ALICE).await;
    let mut second = s.connect().await;
    second.line().await;
    second.ok("USER alice").await;
    second.send(b"PASS wonderland\r\n").await;
    tokio::time::sleep(Duration::from_millis(10)).await;
    first.ok("QUIT").await;
    let reply = second.line().await;
    assert!(reply.starts_with("+OK"), "{reply}");
    second.ok("QUIT").await;
    s.stop().await;
}

#[tokio::test]
async fn hundred_pipelined_commands_in_one_write() {
    let s = TestServer::start().await;
    s.deliver("alice", PLAIN);
    let mut c = s.connect().await;
    c.line().await;
    let mut script = String::from("USER alice\r\nPASS wonderland\r\n");
    for i in 0..97 {
        script.push_str(match i % 3 {
            0 => "STAT\r\n",
            1 => "LIST 1\r\n",
            _ => "NOOP\r\n",
        });
    }
    script.push_str("QUIT\r\n");
    c.send(script.as_bytes()).await;
    let size = crlf(PLAIN).len();
    assert!(c.line().await.starts_with("+OK Send PASS"));
    assert!(c.line().await.starts_with("+OK Logged in"));
    for i in 0..97 {
        let want = match i % 3 {
            0 => format!("+OK 1 {size}\r\n"),
            1 => format!("+OK 1 {size}\r\n"),
            _ => "+OK \r\n".to_string(),
        };
        assert_eq!(c.line().await, want, "response {i}");
    }
    assert!(c.line().await.starts_with("+OK mailbag signing off"));
    assert!(c.closed().await);
    s.stop().await;
}

#[tokio::test]
async fn over_long_line_is_refused_and_its_tail_never_runs() {
    let s = TestServer::start().await;
    s.deliver("alice", PLAIN);
    let mut c = s.login(ALICE).await;
    let line = format!("NOOP {}DELE 1\r\n", "x".repeat(600));
    let reply = c.cmd(line.trim_end()).await;
    assert!(reply.starts_with("-ERR Line too long"), "{reply}");
    assert!(c.cmd("STAT").await.starts_with("+OK 1 "));
    assert!(c
        .cmd(&format!("RETR {}", "1".repeat(41)))
        .await
        .starts_with("-ERR"));
    c.ok("QUIT").await;
    assert_eq!(s.files("alice").len(), 1);
    s.stop().await;
}

#[tokio::test]
async fn garbage_gets_errors_and_the_session_goes_on() {
    let s = TestServer::start().await;
    let mut c = s.connect().await;
    c.line().await;
    c.send(b"\x00\x01\x02\r\n").await;
    assert!(c
        .line()
        .await
        .starts_with("-ERR Command contains invalid characters"));
    c.send(b"USER \xff\xfe\r\n").await;
    assert!(c.line().await.starts_with("-ERR"));
    c.send(b"\r\n").await;
    assert!(c.line().await.starts_with("-ERR Empty command"));
    assert!(c.cmd("USER %s%n%x").await.starts_with("+OK"));
    assert!(c.cmd("PASS %s%n%x").await.starts_with("-ERR [AUTH]"));
    c.ok("CAPA").await;
    c.body().await;
    s.stop().await;
}

#[tokio::test]
async fn wrong_password_is_retried_then_the_connection_closes() {
    let s = TestServer::start().await;
    let mut c = s.connect().await;
    c.line().await;
    c.ok("USER bob").await;
    assert!(c
        .cmd("PASS wrong")
        .await
        .starts_with("-ERR [AUTH] Authentication failed"));
    c.ok("USER bob").await;
    c.ok("PASS builder").await;
    c.ok("QUIT").await;

    let mut c = s.connect().await;
    c.line().await;
    for _ in 0..2 {
        c.ok("USER nobody").await;
        assert!(c.cmd("PASS x").await.starts_with("-ERR [AUTH]"));
    }
    c.ok("USER nobody").await;
    let last = c.cmd("PASS x").await;
    assert!(last.contains("closing the connection"), "{last}");
    assert!(c.closed().await);
    s.stop().await;
}

#[tokio::test]
async fn apop_works_for_plaintext_equivalent_secrets() {
    let s = TestServer::start().await;
    let mut c = s.connect().await;
    let greeting = c.line().await;
    let ts = &greeting[greeting.find('<').unwrap()..=greeting.rfind('>').unwrap()];
    let digest = md5_hex(format!("{ts}{}", ALICE.1).as_bytes());
    c.ok(&format!("APOP alice {digest}")).await;
    c.ok("QUIT").await;
    let mut c = s.connect().await;
    c.line().await;
    assert!(c
        .cmd(&format!("APOP alice {}", "0".repeat(32)))
        .await
        .starts_with("-ERR [AUTH]"));
    // bob's secret is a hash: APOP cannot work for him.
    let digest = md5_hex(format!("{ts}{}", BOB.1).as_bytes());
    assert!(c
        .cmd(&format!("APOP bob {digest}"))
        .await
        .starts_with("-ERR [AUTH]"));
    s.stop().await;
}

fn md5_hex(data: &[u8]) -> String {
    use md5::Digest;
    md5::Md5::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
async fn failed_login_delay_does_not_slow_other_sessions() {
    // A delay far longer than the test: the failed login's answer must
    // still be held back after another session has logged in and worked.
    let s = TestServer::start_with(
        "failure_delay_ms = 60000\nmax_failure_delay_ms = 60000\n\n[metrics]\nlisten = \"127.0.0.1:0\"\n",
    )
    .await;
    s.deliver("alice", PLAIN);
    let mut slow = s.connect().await;
    slow.line().await;
    slow.ok("USER alice").await;
    slow.send(b"PASS wrong\r\n").await;
    // Wait (bounded) until the server has counted the failure: from then
    // on its answer is only waiting out the delay.
    let mut counted = false;
    for _ in 0..400 {
        if metric(&s, "mailbag_logins_total{result=\"invalid\"}").await == Some(1.0) {
            counted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(counted, "the failed login was never counted");
    // Meanwhile another client logs in and works.
    let mut other = s.login(BOB).await;
    other.ok("STAT").await;
    other.ok("QUIT").await;
    assert!(other.closed().await);
    // The failed login's answer has not been sent yet.
    assert!(slow.stream.buffer().is_empty());
    let mut byte = [0u8; 1];
    let pending = slow.stream.get_ref().try_read(&mut byte);
    assert!(
        matches!(&pending, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the failed login was answered without its delay: {pending:?}"
    );
    // Dropped, not stopped: the held answer would outlast the shutdown
    // grace period, and dropping ends the session uncommitted just the same.
    drop(s);
}

/// One value from the metrics endpoint, `None` when it is not there yet.
async fn metric(s: &TestServer, name: &str) -> Option<f64> {
    let addr = s.metrics_addr.expect("metrics listener");
    let mut http = tokio::net::TcpStream::connect(addr).await.ok()?;
    http.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")
        .await
        .ok()?;
    let mut response = String::new();
    http.read_to_string(&mut response).await.ok()?;
    let (_, body) = response.split_once("\r\n\r\n")?;
    body.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn removed_message_gives_an_error_not_a_crash() {
    let s = TestServer::start().await;
    s.deliver("alice", PLAIN);
    s.deliver("alice", PLAIN);
    let mut c = s.login(ALICE).await;
    for f in s.files("alice").iter().take(1) {
        std::fs::remove_file(s.maildir("alice").join(f)).unwrap();
    }
    let reply = c.cmd("RETR 1").await;
    assert!(reply.starts_with("-ERR"), "{reply}");
    c.multi("RETR 2").await;
    c.ok("DELE 1").await;
    c.ok("QUIT").await;
    s.stop().await;
}

#[tokio::test]
async fn shutdown_tells_the_client_and_deletes_nothing() {
    let mut s = TestServer::start().await;
    s.deliver("alice", PLAIN);
    let mut c = s.login(ALICE).await;
    c.ok("DELE 1").await;
    let files = s.files("alice");
    let dir = s.maildir("alice");
    s.shutdown().await;
    let line = c.line().await;
    assert!(
        line.starts_with("-ERR [SYS/TEMP] Server shutting down"),
        "{line}"
    );
    let mut left: Vec<_> = std::fs::read_dir(dir.join("new"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    left.sort();
    assert_eq!(left.len(), files.len());
}

#[tokio::test]
async fn python_poplib_retrieves_every_message_byte_exact() {
    let s = TestServer::start().await;
    let messages: Vec<&[u8]> = vec![
        PLAIN,
        b"Subject: dots\n\n.leading\n..double\n.\n",
        b"Subject: no newline\n\nend",
        b"Subject: 8bit\n\n\xc3\xa9t\xc3\xa9\n",
    ];
    for m in &messages {
        s.deliver("alice", m);
    }
    let script = r#"
import poplib, sys, hashlib
host, port = sys.argv[1], int(sys.argv[2])
p = poplib.POP3(host, port, timeout=20)
p.user("alice"); p.pass_("wonderland")
count, total = p.stat()
for i in range(1, count + 1):
    resp, lines, octets = p.retr(i)
    # poplib strips CRLF and undoes dot-stuffing; rebuild the octets.
    data = b"".join(l + b"\r\n" for l in lines)
    size = int(p.list(i).split()[2])
    sys.stdout.write("%d %d %d %s\n" % (i, size, len(data), hashlib.sha256(data).hexdigest()))
p.quit()
"#;
    let out = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(s.addr.ip().to_string())
        .arg(s.addr.port().to_string())
        .output()
        .await
        .expect("python3 is on every machine");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), messages.len(), "{stdout}");
    for (line, m) in lines.iter().zip(&messages) {
        let f: Vec<&str> = line.split(' ').collect();
        let want = crlf(m);
        assert_eq!(f[1].parse::<usize>().unwrap(), want.len(), "{line}");
        assert_eq!(f[2].parse::<usize>().unwrap(), want.len(), "{line}");
        assert_eq!(f[3], sha256_hex(&want), "{line}");
    }
    s.stop().await;
}

fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(data)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `auth.cache_secs`: a success is reused, but never for a wrong password,
/// and a password changed in the passwd-file wins at once.
#[tokio::test]
async fn verified_credential_cache_never_outlives_a_password_change() {
    let s = TestServer::start_with("cache_secs = 300\n").await;
    for _ in 0..3 {
        let mut c = s.login(BOB).await;
        c.ok("QUIT").await;
    }
    let mut c = s.connect().await;
    c.line().await;
    c.ok(&format!("USER {}", BOB.0)).await;
    let wrong = c.cmd("PASS not-the-password").await;
    assert!(wrong.starts_with("-ERR"), "{wrong}");

    // The administrator changes Bob's password (a new file, as `mailbag
    // user passwd` writes it).
    let new =
        mailbag::auth::scheme::hash(mailbag::auth::scheme::Scheme::Sha512Crypt, b"new-pw").unwrap();
    let passwd = s.dir.path().join("passwd");
    let text = std::fs::read_to_string(&passwd).unwrap();
    let text: String = text
        .lines()
        .map(|line| match line.split_once(':') {
            Some((user, _)) if user == BOB.0 => format!("{user}:{new}\n"),
            _ => format!("{line}\n"),
        })
        .collect();
    let tmp = s.dir.path().join("passwd.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, &passwd).unwrap();

    let mut c = s.connect().await;
    c.line().await;
    c.ok(&format!("USER {}", BOB.0)).await;
    let old = c.cmd(&format!("PASS {}", BOB.1)).await;
    assert!(
        old.starts_with("-ERR"),
        "the cached old password still worked: {old}"
    );
    let mut c = s.login((BOB.0, "new-pw")).await;
    c.ok("QUIT").await;
    s.stop().await;
}
