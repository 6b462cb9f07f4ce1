//! Issue 9: finding the message that stops a mail program. SUMMARY over a
//! real socket and in the real telnet client, and the `mailbag mailbox`
//! commands that inspect, show, quarantine and release messages.

use crate::support::*;
use crate::telnet::Terminal;

const DATE: &str = "Date: Mon, 23 Nov 2026 09:14:00 +0100\n";
const FROM: &str = "From: Alice Example <alice@example.org>\n";

/// One message of each kind of breakage beside healthy ones, keyed by a
/// subject that names it, with the problem SUMMARY must report.
fn seeds() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let plain = |subject: &str, body: &[u8]| {
        let mut m = format!("{DATE}{FROM}Subject: {subject}\n\n").into_bytes();
        m.extend_from_slice(body);
        m
    };
    let mut large = plain("huge attachment", b"");
    let row = format!("{}\n", "A".repeat(76));
    while large.len() <= 11 * 1024 * 1024 {
        large.extend_from_slice(row.as_bytes());
    }
    vec![
        ("healthy one", plain("healthy one", b"Hello.\n"), "ok"),
        (
            "header never ends",
            format!("{DATE}{FROM}Subject: header never ends\n").into_bytes(),
            "!! no blank line after header",
        ),
        ("nul inside", plain("nul inside", b"a\0b\n"), "!! NUL bytes"),
        ("bare cr", plain("bare cr", b"one\rtwo\n"), "!! bare CR"),
        (
            "long line",
            plain("long line", format!("{}\n", "x".repeat(1200)).as_bytes()),
            "!! line over 998 octets",
        ),
        (
            "latin1 no charset",
            plain("latin1 no charset", b"Gr\xfc\xdfe\n"),
            "!! 8-bit text, no charset",
        ),
        (
            "broken multipart",
            format!(
                "{DATE}{FROM}Subject: broken multipart\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"zz\"\n\n--zz\nContent-Type: text/plain\n\nnever closed\n"
            )
            .into_bytes(),
            "!! MIME does not parse",
        ),
        (
            "no date",
            format!("{FROM}Subject: no date\n\nx\n").into_bytes(),
            "!! no Date",
        ),
        (
            "odd date",
            format!("Date: the day after tomorrow\n{FROM}Subject: odd date\n\nx\n").into_bytes(),
            "!! bad Date",
        ),
        (
            "no from",
            format!("{DATE}Subject: no from\n\nx\n").into_bytes(),
            "!! no From",
        ),
        (
            "bad from",
            format!("{DATE}From: nobody in particular\nSubject: bad from\n\nx\n").into_bytes(),
            "!! bad From",
        ),
        (
            "huge attachment",
            large,
            "!! larger than 10 MiB, not fully checked (too large)",
        ),
        (
            "=?UTF-8?Q?Gr=C3=BC=C3=9Fe?= encoded",
            plain("=?UTF-8?Q?Gr=C3=BC=C3=9Fe?= encoded", b"fine\n"),
            "ok",
        ),
    ]
}

/// The subject as the Subject column shows it.
fn shown(subject: &str) -> &str {
    match subject {
        "=?UTF-8?Q?Gr=C3=BC=C3=9Fe?= encoded" => "Grüße encoded",
        s => s,
    }
}

fn seed(s: &TestServer) -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let seeds = seeds();
    for (_, message, _) in &seeds {
        s.deliver("alice", message);
    }
    seeds
}

#[tokio::test]
async fn summary_names_what_is_wrong_with_each_message() {
    let s = TestServer::start().await;
    let seeds = seed(&s);
    let mut c = s.login(ALICE).await;
    let (status, body) = c.multi("SUMMARY").await;
    assert_eq!(
        status,
        format!(
            "+OK {} messages: number, octets, date, From, Subject, problems\r\n",
            seeds.len()
        )
    );
    let body = String::from_utf8(body).unwrap();
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(lines.len(), seeds.len(), "{body}");
    assert!(!body.contains('\0') && !body.replace("\r\n", "").contains('\r'));
    for (subject, _, verdict) in &seeds {
        let line = lines
            .iter()
            .find(|l| l.contains(&format!("  {}", shown(subject))))
            .unwrap_or_else(|| panic!("no line for {subject:?} in\n{body}"));
        assert!(line.ends_with(verdict), "{subject}: {line}");
        assert!(
            line.chars().count() <= 130 || subject.starts_with("huge"),
            "{line}"
        );
    }
    // Message numbers and sizes agree with LIST.
    let (_, list) = c.multi("LIST").await;
    let list = String::from_utf8(list).unwrap();
    for (l, s) in list.lines().zip(&lines) {
        let (n, size) = l.split_once(' ').unwrap();
        let mut cols = s.split_whitespace();
        assert_eq!((cols.next(), cols.next()), (Some(n), Some(size)), "{s}");
    }
    let healthy = lines.iter().find(|l| l.contains("healthy one")).unwrap();
    assert_eq!(
        healthy[4..],
        format!(
            "  {:>9}  2026-11-23 09:14  Alice Example <alice@ex…  {:<30}  ok",
            crlf(&seeds[0].1).len(),
            "healthy one"
        )
    );
    s.stop().await;
}

#[tokio::test]
async fn summary_of_one_message_and_of_deleted_ones_follows_list() {
    let s = TestServer::start().await;
    s.deliver(
        "alice",
        format!("{DATE}{FROM}Subject: first\n\nx\n").as_bytes(),
    );
    s.deliver("alice", format!("{DATE}Subject: second\n\nx\n").as_bytes());
    let mut c = s.login(ALICE).await;
    let (status, body) = c.multi("SUMMARY 2").await;
    assert!(status.starts_with("+OK 1 message: "), "{status}");
    let body = String::from_utf8(body).unwrap();
    assert!(body.starts_with("   2  "), "{body}");
    assert!(body.ends_with("!! no From\r\n"), "{body}");
    assert_eq!(
        c.cmd("SUMMARY 3").await,
        "-ERR No such message: 3 (there are 2 messages, 1 to 2)\r\n"
    );
    c.ok("DELE 1").await;
    assert_eq!(
        c.cmd("SUMMARY 1").await,
        "-ERR Message 1 is already deleted\r\n"
    );
    let (_, body) = c.multi("SUMMARY").await;
    let body = String::from_utf8(body).unwrap();
    assert_eq!(body.lines().count(), 1);
    assert!(body.starts_with("   2  "), "{body}");
    // Nothing about SUMMARY changes the standard answers.
    assert_eq!(c.cmd("STAT").await.split(' ').nth(1), Some("1"));
    c.ok("RSET").await;
    c.ok("QUIT").await;
    assert!(c.closed().await);
    assert_eq!(s.files("alice").len(), 2);
    s.stop().await;
}

#[tokio::test]
async fn summary_is_announced_in_capa_and_help() {
    let s = TestServer::start().await;
    let mut c = s.connect().await;
    c.line().await;
    let (_, capa) = c.multi("CAPA").await;
    assert!(String::from_utf8(capa).unwrap().contains("X-SUMMARY\r\n"));
    assert!(c
        .cmd("SUMMARY")
        .await
        .starts_with("-ERR SUMMARY is only valid after login"));
    c.ok("USER alice").await;
    c.ok("PASS wonderland").await;
    let (_, help) = c.multi("HELP").await;
    assert!(String::from_utf8(help).unwrap().contains("SUMMARY [msg]"));
    s.stop().await;
}

#[tokio::test]
async fn summary_at_a_real_telnet_prompt() {
    let s = TestServer::start().await;
    for (subject, message, _) in seeds() {
        if !subject.starts_with("huge") {
            s.deliver("alice", &message);
        }
    }
    let Some(t) = Terminal::start(&format!(
        "telnet {} {}; sleep 60",
        s.addr.ip(),
        s.addr.port()
    )) else {
        return;
    };
    t.wait("+OK mailbag POP3 server ready", 1).await;
    t.type_line("USER alice", "+OK Send PASS", 1).await;
    t.type_line("PASS wonderland", "+OK Logged in", 1).await;
    let screen = t.type_line("SUMMARY", "\n.", 1).await;
    assert!(
        screen.contains("+OK 12 messages: number, octets, date, From, Subject, problems"),
        "{screen}"
    );
    for (subject, verdict) in [
        ("healthy one", "ok"),
        ("nul inside", "!! NUL bytes"),
        ("bare cr", "!! bare CR"),
        ("header never ends", "!! no blank line after header"),
        ("long line", "!! line over 998 octets"),
        ("broken multipart", "!! MIME does not parse"),
        ("no date", "!! no Date"),
    ] {
        let want = format!("{subject:<30}  {verdict}");
        assert!(screen.contains(&want), "{want:?} missing in:\n{screen}");
    }
    t.type_line("QUIT", "+OK mailbag signing off", 1).await;
    drop(t);
    s.stop().await;
}

/// Runs `mailbag --config <the test config> mailbox ARGS`.
fn mailbox(s: &TestServer, args: &[&str]) -> (bool, String, String) {
    let out = as_unprivileged(
        &mut std::process::Command::new(env!("CARGO_BIN_EXE_mailbag")),
        s.dir.path(),
    )
    .arg("--config")
    .arg(&s.config_path)
    .arg("mailbox")
    .args(args)
    .output()
    .unwrap();
    (
        out.status.success(),
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8(out.stderr).unwrap(),
    )
}

/// UIDL listing over POP3, as (number, uid) pairs.
async fn uidls(s: &TestServer) -> Vec<(String, String)> {
    let mut c = s.login(ALICE).await;
    let (_, body) = c.multi("UIDL").await;
    c.ok("QUIT").await;
    assert!(c.closed().await);
    String::from_utf8(body)
        .unwrap()
        .lines()
        .map(|l| {
            let (n, u) = l.split_once(' ').unwrap();
            (n.to_string(), u.to_string())
        })
        .collect()
}

#[tokio::test]
async fn inspect_show_quarantine_and_release_keep_the_uidl() {
    let s = TestServer::start().await;
    let seeds: Vec<_> = seeds()
        .into_iter()
        .filter(|(subject, _, _)| !subject.starts_with("huge"))
        .collect();
    for (_, message, _) in &seeds {
        s.deliver("alice", message);
    }
    let before = uidls(&s).await;

    let (ok, table, err) = mailbox(&s, &["inspect", "alice"]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with(&format!("alice: {} messages (", seeds.len())),
        "{table}"
    );
    for (subject, _, verdict) in &seeds {
        let line = lines
            .iter()
            .find(|l| l.contains(&format!("  {}", shown(subject))))
            .unwrap_or_else(|| panic!("no line for {subject} in\n{table}"));
        assert!(line.ends_with(verdict), "{line}");
    }
    // Each line carries the number and UIDL that POP3 shows.
    for (n, uid) in &before {
        let line = lines[n.parse::<usize>().unwrap()];
        let mut cols = line.split_whitespace();
        assert_eq!(
            (cols.next(), cols.next()),
            (Some(n.as_str()), Some(uid.as_str()))
        );
    }

    let (number, uid) = before
        .iter()
        .find(|(n, _)| lines[n.parse::<usize>().unwrap()].contains("  nul inside"))
        .cloned()
        .unwrap();
    let (ok, header, err) = mailbox(&s, &["show", "alice", &number]);
    assert!(ok, "{err}");
    assert_eq!(header, format!("{DATE}{FROM}Subject: nul inside\n"));

    let (ok, said, err) = mailbox(&s, &["quarantine", "alice", &number]);
    assert!(ok, "{err}");
    assert!(said.contains(&format!("(UIDL {uid})")), "{said}");
    let after = uidls(&s).await;
    assert_eq!(after.len(), before.len() - 1);
    assert!(after.iter().all(|(_, u)| u != &uid));
    assert!(s
        .maildir("alice")
        .join(".Quarantine/maildirfolder")
        .is_file());

    let (ok, table, _) = mailbox(&s, &["inspect", "alice"]);
    assert!(ok);
    let q = table
        .lines()
        .skip_while(|l| !l.starts_with("quarantined: 1"))
        .nth(1)
        .unwrap_or_else(|| panic!("{table}"));
    assert!(q.starts_with(&format!("   Q  {uid}")), "{q}");
    assert!(q.ends_with("!! NUL bytes"), "{q}");

    let (ok, _, err) = mailbox(&s, &["release", "alice", &uid]);
    assert!(ok, "{err}");
    let mut back: Vec<String> = uidls(&s).await.into_iter().map(|(_, u)| u).collect();
    let mut want: Vec<String> = before.iter().map(|(_, u)| u.clone()).collect();
    back.sort();
    want.sort();
    assert_eq!(back, want);

    // By UIDL as well; an unknown UIDL or number is refused.
    let (ok, _, err) = mailbox(&s, &["quarantine", "alice", &uid]);
    assert!(ok, "{err}");
    let (ok, _, err) = mailbox(&s, &["quarantine", "alice", "no-such-uidl"]);
    assert!(!ok && err.contains("no-such-uidl"), "{err}");
    let (ok, _, err) = mailbox(&s, &["show", "alice", "99"]);
    assert!(!ok && err.contains("no message 99"), "{err}");
    let (ok, _, err) = mailbox(&s, &["quarantine", "alice", "99999999999999999999999"]);
    assert!(!ok && err.contains("no message with that number"), "{err}");
    let (ok, _, err) = mailbox(&s, &["release", "alice", "no-such-uidl"]);
    assert!(!ok && err.contains("no quarantined message"), "{err}");
    s.stop().await;
}

#[tokio::test]
async fn mailbox_commands_refuse_while_a_session_holds_the_lock() {
    let s = TestServer::start().await;
    s.deliver("alice", format!("{DATE}{FROM}Subject: a\n\nx\n").as_bytes());
    let files = s.files("alice");
    let mut c = s.login(ALICE).await;
    for args in [
        &["inspect", "alice"][..],
        &["show", "alice", "1"],
        &["quarantine", "alice", "1"],
        &["release", "alice", "x"],
    ] {
        let (ok, out, err) = mailbox(&s, args);
        assert!(!ok, "{args:?} succeeded: {out}");
        assert!(
            err.contains("the maildrop of alice is in use by a POP3 session"),
            "{args:?}: {err}"
        );
    }
    assert_eq!(s.files("alice"), files);
    assert!(!s.maildir("alice").join(".Quarantine").exists());
    c.ok("QUIT").await;
    assert!(c.closed().await);
    // The lock is an flock: a process another test forks while the session
    // held it keeps a copy of its descriptor until its exec, so "in use"
    // alone is tried again, for at most a second (see `TestServer::login`).
    let mut result = mailbox(&s, &["quarantine", "alice", "1"]);
    for _ in 0..50 {
        if result.0 || !result.2.contains("is in use by a POP3 session") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        result = mailbox(&s, &["quarantine", "alice", "1"]);
    }
    let (ok, _, err) = result;
    assert!(ok, "{err}");
    assert!(s.files("alice").is_empty());
    // A user without a maildrop is an error, and nothing is created.
    let (ok, _, err) = mailbox(&s, &["inspect", "nobody"]);
    assert!(!ok && err.contains("no maildrop for nobody"), "{err}");
    assert!(!s.maildir("nobody").exists());
    s.stop().await;
}

#[tokio::test]
async fn summary_says_which_message_another_program_removed() {
    let s = TestServer::start().await;
    s.deliver(
        "alice",
        format!("{DATE}{FROM}Subject: stays\n\nx\n").as_bytes(),
    );
    let gone = s.deliver(
        "alice",
        format!("{DATE}{FROM}Subject: goes\n\nx\n").as_bytes(),
    );
    let mut c = s.login(ALICE).await;
    std::fs::remove_file(s.maildir("alice").join("new").join(&gone)).unwrap();
    let (status, body) = c.multi("SUMMARY").await;
    assert!(status.starts_with("+OK 2 messages"), "{status}");
    let body = String::from_utf8(body).unwrap();
    assert!(body.contains("  stays  "), "{body}");
    let lines: Vec<&str> = body.lines().collect();
    assert_eq!(lines.len(), 2, "{body}");
    assert!(
        lines
            .iter()
            .any(|l| l.ends_with("!! removed by another program")),
        "{body}"
    );
    c.ok("QUIT").await;
    s.stop().await;
}

/// Sessions share session threads; SUMMARY reads and parses message after
/// message without waiting for anything, so it must let the others run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn summary_of_a_big_maildrop_does_not_stall_other_sessions() {
    use std::io::{BufRead, Read, Write};

    let s = TestServer::start().await;
    let md = s.maildir(ALICE.0);
    for sub in ["new", "cur", "tmp"] {
        std::fs::create_dir_all(md.join(sub)).unwrap();
    }
    let total = 5000;
    for i in 0..total {
        std::fs::write(
            md.join("cur").join(format!("{i}.summary:2,")),
            format!("From: a@example.org\r\nSubject: {i}\r\nDate: Thu, 26 Nov 2026 12:00:00 +0000\r\n\r\nbody\r\n"),
        )
        .unwrap();
    }
    // Alice's session, on a plain socket, so that what has arrived can be
    // asked of the kernel without reading it.
    let alice = std::net::TcpStream::connect(s.addr).unwrap();
    let mut reader = std::io::BufReader::new(alice.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    (&alice)
        .write_all(format!("USER {}\r\nPASS {}\r\n", ALICE.0, ALICE.1).as_bytes())
        .unwrap();
    for _ in 0..2 {
        line.clear();
        reader.read_line(&mut line).unwrap();
        assert!(line.starts_with("+OK"), "{line}");
    }
    // Connections are dealt to the session threads in turn: after one
    // per thread, the next shares Alice's.
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut others = Vec::new();
    for _ in 0..threads {
        let mut c = s.connect().await;
        c.line().await;
        others.push(c);
    }
    let neighbour = others.last_mut().unwrap();

    (&alice).write_all(b"SUMMARY\r\n").unwrap();
    // Any answer will do; USER needs no login.
    neighbour.ok("USER bob").await;
    alice.set_nonblocking(true).unwrap();
    let mut byte = [0u8; 1];
    let peeked = alice.peek(&mut byte);
    assert!(
        matches!(&peeked, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "the whole SUMMARY was done before a command on the same thread was answered: {peeked:?}"
    );
    alice.set_nonblocking(false).unwrap();
    let mut lines = 0;
    loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        if line == ".\r\n" {
            break;
        }
        lines += 1;
    }
    // The status line and one line per message.
    assert_eq!(lines, total + 1);
    let mut rest = Vec::new();
    (&alice).write_all(b"QUIT\r\n").unwrap();
    reader.read_to_end(&mut rest).unwrap();
    s.stop().await;
}
