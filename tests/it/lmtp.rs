//! LMTP over a real socket (TCP and Unix): whole conversations, per
//! recipient replies, quotas, durable delivery and its failures, and the
//! round trip into POP3. Also swaks, the tool the demo tells people to use.

use std::os::unix::fs::PermissionsExt;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::support::*;

const LMTP: &str = "[lmtp]\nlisten = [\"127.0.0.1:0\"]\n";

async fn start(extra: &str) -> TestServer {
    TestServer::start_with(&format!("{LMTP}{extra}")).await
}

async fn lmtp(s: &TestServer) -> Client {
    let mut c = Client::connect(s.lmtp_addr.expect("an LMTP listener")).await;
    let greeting = c.line().await;
    assert!(greeting.starts_with("220 "), "{greeting}");
    c
}

/// Reads one reply, multi-line or not; returns its lines.
async fn reply(c: &mut Client) -> Vec<String> {
    let mut lines = Vec::new();
    loop {
        let line = c.line().await;
        assert!(line.len() >= 4, "short reply line {line:?}");
        let last = line.as_bytes()[3] == b' ';
        lines.push(line);
        if last {
            return lines;
        }
    }
}

async fn lhlo(c: &mut Client) -> Vec<String> {
    c.send(b"LHLO client.example\r\n").await;
    reply(c).await
}

/// One transaction, waiting for each reply; returns the replies after the
/// final dot, one per accepted recipient.
async fn send_message(c: &mut Client, from: &str, to: &[&str], message: &[u8]) -> Vec<String> {
    assert!(c
        .cmd(&format!("MAIL FROM:<{from}>"))
        .await
        .starts_with("250"));
    let mut accepted = 0;
    for rcpt in to {
        if c.cmd(&format!("RCPT TO:<{rcpt}>")).await.starts_with("250") {
            accepted += 1;
        }
    }
    assert!(c.cmd("DATA").await.starts_with("354"));
    c.send(&stuff(message)).await;
    c.send(b".\r\n").await;
    let mut out = Vec::new();
    for _ in 0..accepted {
        out.push(c.line().await);
    }
    out
}

/// SMTP dot-stuffing of a CRLF message.
fn stuff(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for line in message.split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b".") {
            out.push(b'.');
        }
        out.extend_from_slice(line);
    }
    out
}

#[tokio::test]
async fn pipelined_transaction_gets_one_reply_per_accepted_recipient() {
    let s = start("").await;
    let mut c = lmtp(&s).await;
    // Everything in one write: commands, the message and QUIT.
    c.send(
        b"LHLO client.example\r\n\
          MAIL FROM:<sender@example.org> BODY=8BITMIME SIZE=60\r\n\
          RCPT TO:<alice@localhost>\r\n\
          RCPT TO:<nobody@localhost>\r\n\
          RCPT TO:<bob>\r\n\
          DATA\r\n\
          Subject: hi\r\n\r\n..dotted\r\nbody\r\n.\r\n\
          QUIT\r\n",
    )
    .await;
    let ehlo = reply(&mut c).await;
    for cap in [
        "PIPELINING",
        "ENHANCEDSTATUSCODES",
        "8BITMIME",
        "SIZE 10240000",
    ] {
        assert!(
            ehlo.iter().any(|l| l[4..].trim_end() == cap),
            "{cap} in {ehlo:?}"
        );
    }
    let mut rest = Vec::new();
    for _ in 0..8 {
        rest.push(c.line().await);
    }
    assert_eq!(
        rest,
        [
            "250 2.1.0 Sender OK\r\n",
            "250 2.1.5 OK\r\n",
            "550 5.1.1 <nobody@localhost>: no such user here\r\n",
            "250 2.1.5 OK\r\n",
            "354 Start mail input; end with <CRLF>.<CRLF>\r\n",
            "250 2.0.0 <alice@localhost> delivered\r\n",
            "250 2.0.0 <bob> delivered\r\n",
            "221 2.0.0 Bye\r\n",
        ]
    );
    assert!(c.closed().await);

    // Each recipient has its own durable copy with its own trace headers
    // (the full address), stored with LF line endings; W= keeps the CRLF
    // size.
    for (user, rcpt) in [("alice", "alice@localhost"), ("bob", "bob@localhost")] {
        let md = s.maildir(user);
        assert!(maildir_files(&md, "tmp").is_empty());
        let new = maildir_files(&md, "new");
        assert_eq!(new.len(), 1, "{user}");
        let (name, content) = &new[0];
        let want = format!(
            "Return-Path: <sender@example.org>\r\nDelivered-To: {rcpt}\r\n\
             Subject: hi\r\n\r\n.dotted\r\nbody\r\n"
        );
        let lf = want.replace("\r\n", "\n");
        assert_eq!(String::from_utf8_lossy(content), lf);
        assert_eq!(
            size_fields(name),
            (Some(lf.len() as u64), Some(want.len() as u64))
        );
    }
    s.stop().await;
}

#[tokio::test]
async fn message_fed_in_over_lmtp_is_retrieved_byte_exact_over_pop3() {
    let s = start("").await;
    let mut message = b"From: a@example.org\r\nSubject: bytes\r\n\r\n".to_vec();
    message.extend_from_slice(b"NUL \0 and 8-bit \xff\xfe\x80 and a bare CR \r in a line\r\n");
    message.extend_from_slice(b".leading dot\r\n..two dots\r\n.\r\n");
    // A line far longer than any command line.
    message.extend(std::iter::repeat_n(b'x', 100_000));
    message.extend_from_slice(b"\r\nlast line\r\n");
    let mut c = lmtp(&s).await;
    lhlo(&mut c).await;
    let replies = send_message(&mut c, "", &["alice"], &message).await;
    assert_eq!(replies, ["250 2.0.0 <alice> delivered\r\n"]);
    c.cmd("QUIT").await;

    let mut stored = b"Return-Path: <>\r\nDelivered-To: alice@localhost\r\n".to_vec();
    stored.extend_from_slice(&message);
    let mut p = s.login(ALICE).await;
    assert_eq!(p.cmd("LIST 1").await, format!("+OK 1 {}\r\n", stored.len()));
    let (status, body) = p.multi("RETR 1").await;
    assert_eq!(status, format!("+OK {} octets\r\n", stored.len()));
    assert!(body == stored, "RETR differs from what LMTP received");
    p.ok("QUIT").await;
    s.stop().await;
}

#[tokio::test]
async fn delivery_during_a_pop3_session_is_invisible_and_survives_its_quit() {
    let s = start("").await;
    s.deliver("alice", b"Subject: old\r\n\r\nold\r\n");
    let mut p = s.login(ALICE).await;
    let before = p.ok("STAT").await;

    let mut c = lmtp(&s).await;
    lhlo(&mut c).await;
    let replies = send_message(
        &mut c,
        "x@example.org",
        &["alice@localhost"],
        b"Subject: new\r\n\r\nnew\r\n",
    )
    .await;
    assert_eq!(replies, ["250 2.0.0 <alice@localhost> delivered\r\n"]);

    assert_eq!(p.ok("STAT").await, before);
    assert!(p.cmd("RETR 2").await.starts_with("-ERR"));
    p.ok("DELE 1").await;
    p.ok("QUIT").await;

    let mut p = s.login(ALICE).await;
    assert!(p.ok("STAT").await.starts_with("+OK 1 "));
    let (_, body) = p.multi("RETR 1").await;
    assert!(String::from_utf8_lossy(&body).contains("Subject: new"));
    p.ok("QUIT").await;
    s.stop().await;
}

#[tokio::test]
async fn over_quota_is_552_at_rcpt_or_after_data_and_stores_nothing() {
    let s = start(
        "[quota]\nmax_messages = 100\n\
         [quota.users.alice]\nmax_messages = 1\n\
         [quota.users.bob]\nmax_octets = 300\n",
    )
    .await;
    s.deliver("alice", b"Subject: fills the quota\r\n\r\nx\r\n");
    let mut c = lmtp(&s).await;
    lhlo(&mut c).await;
    c.ok_lmtp("MAIL FROM:<x@example.org>").await;
    assert_eq!(
        c.cmd("RCPT TO:<alice@localhost>").await,
        "552 5.2.2 <alice@localhost>: mailbox full\r\n"
    );
    c.ok_lmtp("RSET").await;

    // bob has room for a small message, not for a large one.
    let big = [b"Subject: big\r\n\r\n".as_slice(), &[b'y'; 400], b"\r\n"].concat();
    let replies = send_message(&mut c, "x@example.org", &["bob"], &big).await;
    assert_eq!(replies, ["552 5.2.2 <bob>: mailbox full\r\n"]);
    assert!(maildir_files(&s.maildir("bob"), "new").is_empty());
    assert!(maildir_files(&s.maildir("bob"), "tmp").is_empty());
    let replies = send_message(&mut c, "x@example.org", &["bob"], b"Subject: small\r\n\r\n").await;
    assert_eq!(replies, ["250 2.0.0 <bob> delivered\r\n"]);
    c.cmd("QUIT").await;
    s.stop().await;
}

#[tokio::test]
async fn message_over_the_size_limit_is_refused_whole() {
    let s = start("max_message_octets = 1000\n").await;
    let mut c = lmtp(&s).await;
    let caps = lhlo(&mut c).await;
    assert!(caps.iter().any(|l| l.contains("SIZE 1000")), "{caps:?}");
    assert!(c
        .cmd("MAIL FROM:<x@y> SIZE=1001")
        .await
        .starts_with("552 5.3.4"));
    let big = [vec![b'z'; 2000], b"\r\n".to_vec()].concat();
    let replies = send_message(&mut c, "x@y", &["alice"], &big).await;
    assert!(replies[0].starts_with("552 5.3.4"), "{replies:?}");
    assert!(s.files("alice").is_empty());
    s.stop().await;
}

#[tokio::test]
async fn io_error_is_a_temporary_failure_for_that_recipient_only() {
    let s = start("").await;
    // alice's Maildir cannot be created: a file is in the way.
    std::fs::create_dir_all(s.dir.path().join("mail/localhost")).unwrap();
    std::fs::write(s.dir.path().join("mail/localhost/alice"), b"not a dir").unwrap();
    let mut c = lmtp(&s).await;
    lhlo(&mut c).await;
    let replies = send_message(&mut c, "x@y", &["alice", "bob"], b"Subject: s\r\n\r\n").await;
    assert_eq!(
        replies,
        [
            "451 4.3.0 <alice>: temporary failure, try again later\r\n",
            "250 2.0.0 <bob> delivered\r\n",
        ]
    );
    s.stop().await;
}

#[tokio::test]
async fn full_disk_is_a_temporary_failure_with_no_half_message() {
    let s = start("").await;
    let Some(_fs) = TmpFs::mount(&s.dir.path().join("mail"), "64k") else {
        println!("SKIPPED full_disk_is_a_temporary_failure_with_no_half_message: cannot mount a tmpfs here (needs root); tests/it/deliver.rs covers a full disk with RLIMIT_FSIZE");
        return;
    };
    let mut c = lmtp(&s).await;
    lhlo(&mut c).await;
    let big = [
        b"Subject: big\r\n\r\n".as_slice(),
        &vec![b'w'; 200_000],
        b"\r\n",
    ]
    .concat();
    let replies = send_message(&mut c, "x@y", &["alice"], &big).await;
    assert_eq!(
        replies,
        ["451 4.3.0 <alice>: temporary failure, try again later\r\n"]
    );
    let md = s.maildir("alice");
    assert!(
        maildir_files(&md, "tmp").is_empty(),
        "partial file left in tmp/"
    );
    assert!(maildir_files(&md, "new").is_empty());
    // The space came back with the partial file: the next message fits.
    let replies = send_message(&mut c, "x@y", &["alice"], b"Subject: small\r\n\r\n").await;
    assert_eq!(replies, ["250 2.0.0 <alice> delivered\r\n"]);
    c.cmd("QUIT").await;
    s.stop().await;
}

#[tokio::test]
async fn shutdown_tells_a_waiting_client_to_retry() {
    let mut s = start("").await;
    let mut c = lmtp(&s).await;
    lhlo(&mut c).await;
    c.ok_lmtp("MAIL FROM:<x@y>").await;
    s.shutdown().await;
    assert_eq!(
        c.line().await,
        "421 4.3.2 Server shutting down; try again later\r\n"
    );
    assert!(c.closed().await);
    // The listener is gone too.
    assert!(tokio::net::TcpStream::connect(s.lmtp_addr.unwrap())
        .await
        .is_err());
}

#[tokio::test]
async fn unix_socket_replaces_a_stale_file_and_delivers() {
    // The socket lives in the server's directory; its name is relative to
    // the config file. A previous run's socket file is left behind first.
    let s = TestServer::start_with_dir(|dir| {
        let stale = std::os::unix::net::UnixListener::bind(dir.join("lmtp.sock")).unwrap();
        drop(stale);
        "[lmtp]\nsocket = \"lmtp.sock\"\n".to_string()
    })
    .await;
    let path = s.dir.path().join("lmtp.sock");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o660);
    let stream = tokio::net::UnixStream::connect(&path).await.unwrap();
    let mut r = BufReader::new(stream);
    let mut script = Vec::new();
    r.get_mut()
        .write_all(
            b"LHLO c\r\nMAIL FROM:<x@y>\r\nRCPT TO:<bob@localhost>\r\nDATA\r\n\
              Subject: via socket\r\n\r\n.\r\nQUIT\r\n",
        )
        .await
        .unwrap();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await.unwrap() == 0 {
            break;
        }
        script.push(line);
    }
    assert!(
        script.contains(&"250 2.0.0 <bob@localhost> delivered\r\n".to_string()),
        "{script:?}"
    );
    assert_eq!(script.last().unwrap(), "221 2.0.0 Bye\r\n");
    assert_eq!(maildir_files(&s.maildir("bob"), "new").len(), 1);
    s.stop().await;
    // The socket goes away with the server.
    assert!(!path.exists());
}

#[tokio::test]
async fn swaks_delivers_over_lmtp() {
    if std::process::Command::new("swaks")
        .arg("--version")
        .output()
        .is_err()
    {
        println!(
            "SKIPPED swaks_delivers_over_lmtp: swaks is not installed (Debian package `swaks`)"
        );
        return;
    }
    let s = start("").await;
    let addr = s.lmtp_addr.unwrap();
    let out = tokio::process::Command::new("swaks")
        .args(["--server", &addr.to_string(), "--protocol", "LMTP"])
        .args(["--from", "sender@example.org"])
        .args(["--to", "alice@localhost,nobody@localhost,bob@localhost"])
        .args(["--header", "Subject: via swaks"])
        .args(["--body", "hello from swaks"])
        .output()
        .await
        .unwrap();
    let transcript = String::from_utf8_lossy(&out.stdout);
    // swaks marks refusals with `<**` and exits non-zero for them.
    assert!(
        transcript.contains("<** 550 5.1.1 <nobody@localhost>: no such user here"),
        "{transcript}"
    );
    assert!(
        transcript.contains("<-  250 2.0.0 <alice@localhost> delivered"),
        "{transcript}"
    );
    assert!(
        transcript.contains("<-  250 2.0.0 <bob@localhost> delivered"),
        "{transcript}"
    );
    let mut p = s.login(ALICE).await;
    let (_, body) = p.multi("RETR 1").await;
    let body = String::from_utf8_lossy(&body);
    assert!(
        body.starts_with("Return-Path: <sender@example.org>\r\nDelivered-To: alice@localhost\r\n"),
        "{body}"
    );
    assert!(body.contains("Subject: via swaks\r\n"), "{body}");
    assert!(body.contains("hello from swaks"), "{body}");
    p.ok("QUIT").await;
    s.stop().await;
}

impl Client {
    /// Sends an LMTP command and insists on a 2xx reply.
    async fn ok_lmtp(&mut self, command: &str) -> String {
        let line = self.cmd(command).await;
        assert!(line.starts_with('2'), "{command}: {line}");
        line
    }
}

/// `mailbag_deliveries_total` counts each recipient's delivery by how it
/// ended: every failure under `result="failed"`, with the reason that
/// tells an operator's problem (`temporary`) from a recipient's.
#[tokio::test]
async fn deliveries_are_counted_by_result_and_reason() {
    use crate::observability::{sample, scrape_retrying};
    let s =
        start("[metrics]\nlisten = \"127.0.0.1:0\"\n[quota.users.bob]\nmax_octets = 300\n").await;
    // alice's Maildir cannot be created: a file is in the way.
    std::fs::create_dir_all(s.dir.path().join("mail/localhost")).unwrap();
    std::fs::write(s.dir.path().join("mail/localhost/alice"), b"not a dir").unwrap();
    let mut c = lmtp(&s).await;
    lhlo(&mut c).await;
    let big = [b"Subject: big\r\n\r\n".as_slice(), &[b'y'; 400], b"\r\n"].concat();
    let replies = send_message(&mut c, "x@y", &["alice", "bob"], &big).await;
    assert!(replies[0].starts_with("451 "), "{replies:?}");
    assert!(replies[1].starts_with("552 "), "{replies:?}");
    let replies = send_message(&mut c, "x@y", &["bob"], b"Subject: small\r\n\r\n").await;
    assert!(replies[0].starts_with("250 "), "{replies:?}");
    c.cmd("QUIT").await;
    let body = scrape_retrying(s.metrics_addr.unwrap()).await;
    let count = |labels: &str| sample(&body, &format!("mailbag_deliveries_total{labels}"));
    assert_eq!(count("{result=\"ok\"}"), Some(1.0), "{body}");
    assert_eq!(count("{result=\"failed\",reason=\"temporary\"}"), Some(1.0));
    assert_eq!(
        count("{result=\"failed\",reason=\"over_quota\"}"),
        Some(1.0)
    );
    assert_eq!(count("{result=\"failed\",reason=\"permanent\"}"), Some(0.0));
    s.stop().await;
}
