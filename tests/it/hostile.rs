//! Hostile input, from the classes of bugs found in POP3 servers over the
//! years: every case gets a clear `-ERR`, the session goes on (or ends
//! cleanly), and no message is lost.

use crate::support::*;

const MESSAGE: &[u8] = b"From: a@example.org\nSubject: keep me\n\nbody\n";

/// Sends raw bytes and returns the next response line.
async fn raw(c: &mut Client, bytes: &[u8]) -> String {
    c.send(bytes).await;
    c.line().await
}

#[tokio::test]
async fn the_tail_of_an_over_long_line_never_runs() {
    let s = TestServer::start().await;
    s.deliver("alice", MESSAGE);
    let mut c = s.login(ALICE).await;
    for pad in [250, 251, 600, 5000, 70_000] {
        let line = format!("NOOP {}DELE 1\r\n", " ".repeat(pad));
        let reply = raw(&mut c, line.as_bytes()).await;
        assert!(reply.starts_with("-ERR Line too long"), "{pad}: {reply}");
    }
    assert!(c.cmd("STAT").await.starts_with("+OK 1 "));
    c.ok("QUIT").await;
    assert_eq!(s.files("alice").len(), 1);
    s.stop().await;
}

#[tokio::test]
async fn format_directives_nul_and_invalid_utf8_are_inert() {
    let s = TestServer::start().await;
    let mut c = s.connect().await;
    c.line().await;
    for line in [
        &b"USER %s%n%x%n%s\r\n"[..],
        b"PASS %s%n%x%n%s\r\n",
        b"USER ali\0ce\r\n",
        b"USER \xc3\x28\r\n",
        b"\xff\xff\xff\xff\r\n",
        b"US\0ER alice\r\n",
        b"%n%n%n%n%n%n\r\n",
        b"USER alice\x1b[2J\r\n",
    ] {
        let reply = raw(&mut c, line).await;
        assert!(
            reply.starts_with("+OK") || reply.starts_with("-ERR"),
            "{line:?}: {reply}"
        );
        assert!(
            !reply.contains('\0') && !reply.contains('\x1b'),
            "{reply:?}"
        );
    }
    // Still a working session.
    c.ok("USER alice").await;
    c.ok("PASS wonderland").await;
    s.stop().await;
}

#[tokio::test]
async fn message_numbers_out_of_every_range_are_refused() {
    let s = TestServer::start_with("\n[limits]\nmax_bad_commands = 1000\n").await;
    s.deliver("alice", MESSAGE);
    let mut c = s.login(ALICE).await;
    for cmd in ["RETR", "DELE", "LIST", "UIDL", "TOP"] {
        for n in [
            "0",
            "-1",
            "1a",
            "2",
            "4294967296",
            "4294967297",
            "99999999999999999999",
            "+1",
            " ",
        ] {
            let line = if cmd == "TOP" {
                format!("{cmd} {n} 1")
            } else {
                format!("{cmd} {n}")
            };
            let reply = c.cmd(&line).await;
            // "LIST  " with only spaces is the whole listing.
            if n == " " && (cmd == "LIST" || cmd == "UIDL") {
                assert!(reply.starts_with("+OK"), "{line}: {reply}");
                c.body().await;
                continue;
            }
            assert!(reply.starts_with("-ERR"), "{line}: {reply}");
        }
    }
    for lines in ["-1", "-99999999999999999999", "1.5", "x"] {
        assert!(
            c.cmd(&format!("TOP 1 {lines}")).await.starts_with("-ERR"),
            "{lines}"
        );
    }
    let (_, body) = c.multi("TOP 1 99999999999999999999").await;
    assert_eq!(body, crlf(MESSAGE));
    c.ok("QUIT").await;
    assert_eq!(s.files("alice").len(), 1);
    s.stop().await;
}

#[tokio::test]
async fn every_command_with_no_one_and_too_many_arguments_in_every_state() {
    let s = TestServer::start_with("\n[limits]\nmax_bad_commands = 1000\n").await;
    s.deliver("alice", MESSAGE);
    let verbs = [
        "USER", "PASS", "APOP", "STAT", "LIST", "RETR", "DELE", "NOOP", "RSET", "QUIT", "TOP",
        "UIDL", "CAPA", "HELP", "AUTH", "STLS", "UTF8", "XYZZY",
    ];
    for state in ["authorization", "transaction"] {
        let mut c = if state == "authorization" {
            let mut c = s.connect().await;
            c.line().await;
            c
        } else {
            s.login(ALICE).await
        };
        for verb in verbs {
            for args in ["", " 1", " 1 2 3 4 5 6 7 8 9"] {
                if verb == "QUIT" && args.is_empty() {
                    continue;
                }
                // USER/PASS with an argument would change the state.
                if state == "authorization"
                    && (verb == "USER" || verb == "PASS" || verb == "APOP")
                    && !args.is_empty()
                {
                    continue;
                }
                let line = format!("{verb}{args}");
                c.send(format!("{line}\r\n").as_bytes()).await;
                let reply = c.line().await;
                assert!(
                    reply.starts_with("+OK") || reply.starts_with("-ERR"),
                    "{state} {line}: {reply}"
                );
                let multi_line = match verb {
                    "CAPA" | "HELP" | "RETR" | "TOP" => true,
                    // Bare AUTH lists the SASL mechanisms (RFC 5034 §4).
                    "LIST" | "UIDL" | "AUTH" => args.is_empty(),
                    _ => false,
                };
                if reply.starts_with("+OK") && multi_line {
                    c.body().await;
                }
            }
            // Empty and blank lines.
            for blank in [&b"\r\n"[..], b"   \r\n", b"\n", b"\t\r\n"] {
                let reply = raw(&mut c, blank).await;
                assert!(reply.starts_with("-ERR"), "{state} {blank:?}: {reply}");
            }
        }
        c.ok("QUIT").await;
        assert!(c.closed().await);
    }
    assert_eq!(s.files("alice").len(), 1);
    s.stop().await;
}

#[tokio::test]
async fn a_client_that_vanishes_mid_transfer_loses_nothing() {
    let s = TestServer::start().await;
    let big = vec![b'x'; 4 * 1024 * 1024];
    s.deliver("alice", &big);
    s.deliver("alice", MESSAGE);
    {
        let mut c = s.login(ALICE).await;
        c.ok("DELE 2").await;
        c.send(b"RETR 1\r\n").await;
        // Read a little of the 4 MiB, then disappear.
        c.line().await;
    }
    // Once the server notices, the maildrop is free and whole.
    let mut c = loop {
        let mut c = s.connect().await;
        c.line().await;
        c.ok("USER alice").await;
        if c.cmd("PASS wonderland").await.starts_with("+OK") {
            break c;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert!(c.cmd("STAT").await.starts_with("+OK 2 "));
    s.stop().await;
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

/// Sends 100 AUTH-and-cancel pairs; false when the server closed.
async fn cancels(c: &mut Client, chunk: &str) -> bool {
    c.send(chunk.as_bytes()).await;
    for _ in 0..200 {
        let line = c.line().await;
        if line.is_empty() {
            return false;
        }
        assert!(line.starts_with("+ ") || line.starts_with("-ERR"), "{line}");
    }
    true
}

#[tokio::test]
async fn ten_thousand_sasl_cancels_keep_memory_flat() {
    // The server runs as its own process so that its memory is its own.
    let dir = tempfile::tempdir().unwrap();
    write_passwd(dir.path());
    let port = free_port();
    let text = config_text(dir.path(), "").replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    std::fs::write(dir.path().join("mailbag.toml"), text).unwrap();
    let mut child = as_unprivileged(
        &mut std::process::Command::new(env!("CARGO_BIN_EXE_mailbag")),
        dir.path(),
    )
    .arg("serve")
    .arg("--config")
    .arg(dir.path().join("mailbag.toml"))
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null())
    .spawn()
    .unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut c = loop {
        if let Ok(s) = tokio::net::TcpStream::connect(addr).await {
            break Client {
                stream: tokio::io::BufReader::new(s),
            };
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    c.line().await;
    // Warm up, then measure.
    let chunk = "AUTH PLAIN\r\n*\r\n".repeat(100);
    assert!(cancels(&mut c, &chunk).await);
    let before = rss_kib(child.id());
    let mut open = true;
    for _ in 0..100 {
        if !cancels(&mut c, &chunk).await {
            open = false;
            break;
        }
    }
    let grown = rss_kib(child.id()).saturating_sub(before);
    if open {
        // Still a working session afterwards.
        c.ok("USER alice").await;
        c.ok("PASS wonderland").await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(grown < 1024, "server memory grew by {grown} KiB");
}

#[tokio::test]
async fn auth_plain_without_nuls_is_refused_cleanly() {
    let s = TestServer::start().await;
    let mut c = s.connect().await;
    c.line().await;
    use base64::Engine;
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    for payload in [
        b64(b"alicewonderland"),
        b64(b"alice\0wonderland"),
        b64(b"\0\0"),
        b64(b""),
        b64(&[0xff; 40]),
    ] {
        // An empty initial response is "=" (RFC 5034 §4).
        let payload = if payload.is_empty() {
            "=".to_string()
        } else {
            payload
        };
        let reply = c.cmd(&format!("AUTH PLAIN {payload}")).await;
        assert!(reply.starts_with("-ERR"), "{payload}: {reply}");
        if reply.contains("closing") {
            // Three failures end a connection; go on in a new one.
            c = s.connect().await;
            c.line().await;
        }
    }
    c.ok("CAPA").await;
    c.body().await;
    s.stop().await;
}

#[tokio::test]
async fn path_traversal_user_names_never_touch_the_file_system() {
    let s = TestServer::start_with("\n[limits]\nmax_bad_commands = 100\n").await;
    let mut c = s.connect().await;
    c.line().await;
    for name in [
        "../../../etc",
        "..",
        "a/b",
        ".hidden",
        "alice/../bob",
        "/etc/passwd",
    ] {
        let reply = c.cmd(&format!("USER {name}")).await;
        if reply.starts_with("+OK") {
            let reply = c.cmd("PASS wonderland").await;
            assert!(reply.starts_with("-ERR [AUTH]"), "{name}: {reply}");
        }
        if c.stream.get_ref().peer_addr().is_err() {
            break;
        }
        if reply.contains("closing") {
            c = s.connect().await;
            c.line().await;
        }
    }
    // Nothing was created outside the one data root, or in it.
    let mail = s.dir.path().join("mail");
    let created: Vec<_> = std::fs::read_dir(&mail)
        .map(|rd| rd.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    assert!(created.is_empty(), "{created:?}");
    assert!(!s.dir.path().parent().unwrap().join("etc").exists());
    s.stop().await;
}

/// Writes `count` small messages straight into a Maildir's new/ (no
/// fsync: only their names and sizes matter here).
pub fn many_messages(maildir: &std::path::Path, count: usize) {
    for sub in ["tmp", "new", "cur"] {
        std::fs::create_dir_all(maildir.join(sub)).unwrap();
    }
    let body = b"Subject: n\n\nbody\n";
    for i in 0..count {
        let name = format!("1700000000.M{i}P1.host,S=17,W=20");
        std::fs::write(maildir.join("new").join(name), body).unwrap();
    }
}

#[tokio::test]
async fn ten_thousand_pipelined_uidls_on_20000_messages_keep_memory_flat() {
    // The server runs as its own process so that its memory is its own.
    let dir = tempfile::tempdir().unwrap();
    write_passwd(dir.path());
    many_messages(&dir.path().join("mail/localhost/alice/Maildir"), 20_000);
    let port = free_port();
    let text = config_text(dir.path(), "").replace("127.0.0.1:0", &format!("127.0.0.1:{port}"));
    std::fs::write(dir.path().join("mailbag.toml"), text).unwrap();
    let mut child = as_unprivileged(
        &mut std::process::Command::new(env!("CARGO_BIN_EXE_mailbag")),
        dir.path(),
    )
    .arg("serve")
    .arg("--config")
    .arg(dir.path().join("mailbag.toml"))
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null())
    .spawn()
    .unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let mut c = loop {
        if let Ok(s) = tokio::net::TcpStream::connect(addr).await {
            break Client {
                stream: tokio::io::BufReader::new(s),
            };
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    c.line().await;
    c.ok("USER alice").await;
    c.ok("PASS wonderland").await;
    // One UIDL first, so that what is measured is the pipeline alone.
    let (_, one) = c.multi("UIDL").await;
    assert_eq!(one.split(|&b| b == b'\n').count(), 20_001);
    let before = rss_kib(child.id());
    // 10,000 UIDLs (9 GB of answers) sent without reading any of them.
    let pipeline = tokio::spawn({
        let (_, mut write) = c.stream.into_inner().into_split();
        async move {
            use tokio::io::AsyncWriteExt;
            let uidls = b"UIDL\r\n".repeat(1000);
            for _ in 0..10 {
                if write.write_all(&uidls).await.is_err() {
                    break;
                }
            }
            write
        }
    });
    let mut grown = 0;
    for _ in 0..20 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        grown = grown.max(rss_kib(child.id()).saturating_sub(before));
    }
    pipeline.abort();
    child.kill().unwrap();
    child.wait().unwrap();
    println!("server RSS growth with 10,000 UIDLs pipelined on 20,000 messages: {grown} KiB");
    assert!(grown < 16 * 1024, "server memory grew by {grown} KiB");
}
