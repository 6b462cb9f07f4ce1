//! `mailbag deliver` as an MTA runs it: a message on standard input, a
//! sysexits exit code, one line on standard error when it fails, and a
//! durable file (or none at all) in the Maildir.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use crate::support::*;

fn deliver(config: &Path, args: &[&str], stdin: &[u8]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_mailbag"));
    cmd.arg("deliver").arg("--config").arg(config).args(args);
    as_unprivileged(&mut cmd, config.parent().unwrap());
    run(cmd, stdin)
}

fn run(mut cmd: Command, stdin: &[u8]) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    // The child may exit before reading everything (an unknown user).
    let _ = input.write_all(stdin);
    drop(input);
    child.wait_with_output().unwrap()
}

/// A config and passwd-file in a fresh directory, without a server.
fn setup(extra: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    write_passwd(dir.path());
    std::fs::write(
        dir.path().join("mailbag.toml"),
        config_text(dir.path(), extra),
    )
    .unwrap();
    dir
}

fn maildir(dir: &Path, user: &str) -> std::path::PathBuf {
    dir.join("mail/localhost").join(user).join("Maildir")
}

#[tokio::test]
async fn deliver_stores_stdin_as_given_with_trace_headers_for_pop3() {
    let s = TestServer::start().await;
    // LF line endings, an mbox From_ line, a bare CR, NUL and a long line.
    let mut message =
        b"From envelope@example.org Thu Nov 26 10:00:00 2026\nSubject: lf\n\nbody \0 \r x\n"
            .to_vec();
    message.extend(std::iter::repeat_n(b'L', 50_000));
    message.extend_from_slice(b"\nno final newline");
    let out = deliver(&s.config_path, &["--user", "alice@localhost"], &message);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stderr.is_empty());

    let md = s.maildir("alice");
    assert!(maildir_files(&md, "tmp").is_empty());
    let new = maildir_files(&md, "new");
    assert_eq!(new.len(), 1);
    let (name, content) = &new[0];
    // The From_ line is the envelope, not the message; it names the sender.
    let mut want = b"Return-Path: <envelope@example.org>\nDelivered-To: alice@localhost\n".to_vec();
    want.extend_from_slice(&message[message.iter().position(|&b| b == b'\n').unwrap() + 1..]);
    assert!(*content == want, "stored message differs");
    // The name carries the file length and the CRLF size POP3 reports.
    let pop3_form = crlf(&want);
    assert_eq!(
        size_fields(name),
        (Some(want.len() as u64), Some(pop3_form.len() as u64))
    );

    let mut p = s.login(ALICE).await;
    assert_eq!(
        p.cmd("LIST 1").await,
        format!("+OK 1 {}\r\n", pop3_form.len())
    );
    let (_, body) = p.multi("RETR 1").await;
    assert!(body == pop3_form, "RETR differs");
    p.ok("QUIT").await;

    // --from wins over a From_ line; no From_ line and no --from: no
    // Return-Path.
    let out = deliver(
        &s.config_path,
        &["--user", "bob", "--from", "given@example.org"],
        b"From x@y date\r\nSubject: crlf\r\n\r\nbody\r\n",
    );
    assert_eq!(out.status.code(), Some(0));
    let out = deliver(&s.config_path, &["--user", "bob"], b"Subject: bare\n\nb\n");
    assert_eq!(out.status.code(), Some(0));
    let contents: Vec<Vec<u8>> = maildir_files(&s.maildir("bob"), "new")
        .into_iter()
        .map(|(_, c)| c)
        .collect();
    assert!(contents.contains(
        &b"Return-Path: <given@example.org>\nDelivered-To: bob@localhost\nSubject: crlf\n\nbody\n"
            .to_vec()
    ));
    assert!(contents.contains(&b"Delivered-To: bob@localhost\nSubject: bare\n\nb\n".to_vec()));
    s.stop().await;
}

#[test]
fn deliver_exit_codes_follow_sysexits() {
    let dir = setup("[quota]\nmax_messages = 1\n");
    let config = dir.path().join("mailbag.toml");
    let msg = b"Subject: x\n\nx\n";

    let out = deliver(&config, &["--user", "nobody"], msg);
    assert_eq!(out.status.code(), Some(67));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no such user"), "{err}");

    assert_eq!(
        deliver(&config, &["--user", "alice"], msg).status.code(),
        Some(0)
    );
    let out = deliver(&config, &["--user", "alice"], msg);
    assert_eq!(out.status.code(), Some(73), "over quota");
    assert!(String::from_utf8_lossy(&out.stderr).contains("mailbox full"));
    assert_eq!(maildir_files(&maildir(dir.path(), "alice"), "new").len(), 1);

    let out = deliver(&config, &["--user", "bob", "--from", "a@b\nBcc: x"], msg);
    assert_eq!(
        out.status.code(),
        Some(64),
        "header injection through --from"
    );
    assert_eq!(
        deliver(&config, &[], msg).status.code(),
        Some(64),
        "no --user"
    );

    let missing = dir.path().join("missing.toml");
    assert_eq!(
        deliver(&missing, &["--user", "bob"], msg).status.code(),
        Some(78)
    );
    assert!(maildir_files(&maildir(dir.path(), "bob"), "new").is_empty());
}

#[test]
fn deliver_over_the_size_limit_exits_73() {
    let dir = setup("[lmtp]\nmax_message_octets = 100\n");
    let config = dir.path().join("mailbag.toml");
    let out = deliver(&config, &["--user", "bob"], &[b'x'; 101]);
    assert_eq!(out.status.code(), Some(73));
    assert_eq!(
        deliver(&config, &["--user", "bob"], &[b'x'; 100])
            .status
            .code(),
        Some(0)
    );
}

/// A 200 kB message: more than the small file systems below can take.
fn big_message() -> Vec<u8> {
    let mut m = b"Subject: big\n\n".to_vec();
    m.extend(std::iter::repeat_n(b'b', 200_000));
    m.push(b'\n');
    m
}

fn assert_nothing_half_written(md: &Path) {
    assert!(
        maildir_files(md, "tmp").is_empty(),
        "partial file left in tmp/"
    );
    assert!(maildir_files(md, "new").is_empty(), "message in new/");
}

#[test]
fn deliver_on_a_full_disk_exits_75_and_leaves_no_half_message() {
    let dir = setup("");
    let config = dir.path().join("mailbag.toml");
    let Some(fs) = TmpFs::mount(&dir.path().join("mail"), "64k") else {
        println!("SKIPPED the tmpfs half of deliver_on_a_full_disk_exits_75_and_leaves_no_half_message: cannot mount here; the RLIMIT_FSIZE test still runs");
        return;
    };
    let out = deliver(&config, &["--user", "alice"], &big_message());
    assert_eq!(
        out.status.code(),
        Some(75),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("No space left"), "{err}");
    assert_nothing_half_written(&maildir(dir.path(), "alice"));
    // The partial file's space is free again: a small message fits.
    let out = deliver(&config, &["--user", "alice"], b"Subject: small\n\n");
    assert_eq!(out.status.code(), Some(0));
    drop(fs);
}

#[test]
fn deliver_over_the_file_size_rlimit_exits_75_and_leaves_no_half_message() {
    // RLIMIT_FSIZE makes writes past the limit fail (EFBIG) as a full disk
    // would; SIGXFSZ is ignored so that the write fails instead of killing
    // the process. Works without root, in any container.
    let dir = setup("");
    let config = dir.path().join("mailbag.toml");
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("trap '' XFSZ; ulimit -f 64; exec \"$0\" deliver --config \"$1\" --user alice")
        .arg(env!("CARGO_BIN_EXE_mailbag"))
        .arg(&config);
    as_unprivileged(&mut cmd, dir.path());
    let out = run(cmd, &big_message());
    assert_eq!(
        out.status.code(),
        Some(75),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_nothing_half_written(&maildir(dir.path(), "alice"));
}
