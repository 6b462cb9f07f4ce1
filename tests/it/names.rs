//! One rule for user names at every entry point: `mailbag user add`, the
//! passwd-file, POP3 USER/APOP (names longer than 40 characters), LMTP
//! RCPT and `mailbag deliver`.

use std::io::Write;
use std::process::{Command, Stdio};

use md5::Digest as _;

use crate::support::*;

fn mailbag() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mailbag"))
}

/// Names the Maildir store refuses, which every other entry point must
/// refuse as well.
const STORE_REFUSES: [&str; 4] = ["a..b", "a\\b", "x@a..b", "a@b@c"];

#[test]
fn user_add_refuses_names_the_store_cannot_hold_and_says_what_is_allowed() {
    let dir = tempfile::tempdir().unwrap();
    write_passwd(dir.path());
    let config = dir.path().join("mailbag.toml");
    std::fs::write(&config, config_text(dir.path(), "")).unwrap();
    for name in STORE_REFUSES {
        let mut command = mailbag();
        let mut child = as_unprivileged(&mut command, dir.path())
            .args(["user", "add", name, "--password-stdin", "--config"])
            .arg(&config)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The name is refused before the password is read.
        let _ = child.stdin.take().unwrap().write_all(b"pw\n");
        let out = child.wait_with_output().unwrap();
        assert!(!out.status.success(), "{name} was accepted");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains(mailbag::auth::name::RULE),
            "{name}: {stderr}"
        );
    }
    let passwd = std::fs::read_to_string(dir.path().join("passwd")).unwrap();
    assert_eq!(passwd.lines().count(), 2, "{passwd}");
}

#[tokio::test]
async fn names_longer_than_forty_characters_log_in_with_user_and_apop() {
    let long = format!("{}@example.org", "l".repeat(100));
    assert!(long.len() > 40 && long.len() <= mailbag::auth::name::MAX_OCTETS);
    let name = long.clone();
    let s = TestServer::start_with_dir(move |dir| {
        let mut passwd = std::fs::read_to_string(dir.join("passwd")).unwrap();
        passwd.push_str(&format!("{name}:{{PLAIN}}secret\n"));
        std::fs::write(dir.join("passwd"), passwd).unwrap();
        String::new()
    })
    .await;
    let mut c = s.connect().await;
    c.line().await;
    c.ok(&format!("USER {long}")).await;
    c.ok("PASS secret").await;
    c.ok("QUIT").await;
    let mut c = s.connect().await;
    let greeting = c.line().await;
    let timestamp = &greeting[greeting.find('<').unwrap()..=greeting.find('>').unwrap()];
    let digest: String = md5::Md5::digest(format!("{timestamp}secret").as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    c.ok(&format!("APOP {long} {digest}")).await;
    c.ok("QUIT").await;
    // One octet more than the rule allows is still refused as a name.
    let mut c = s.connect().await;
    c.line().await;
    let too_long = "l".repeat(mailbag::auth::name::MAX_OCTETS + 1);
    let out = c.cmd(&format!("USER {too_long}")).await;
    assert!(out.starts_with("-ERR Argument too long"), "{out}");
    s.stop().await;
}

#[tokio::test]
async fn lmtp_refuses_at_rcpt_what_the_store_cannot_hold() {
    let s = TestServer::start_with("[lmtp]\nlisten = [\"127.0.0.1:0\"]\n").await;
    // Names written into the passwd-file by hand while the server runs:
    // the file is refused whole (the users read before stay), so none of
    // them is a user that mail is accepted for.
    let mut passwd = std::fs::read_to_string(s.dir.path().join("passwd")).unwrap();
    for name in STORE_REFUSES {
        passwd.push_str(&format!("{name}:{{PLAIN}}x\n"));
    }
    std::fs::write(s.dir.path().join("passwd"), passwd).unwrap();
    let mut c = Client::connect(s.lmtp_addr.unwrap()).await;
    assert!(c.line().await.starts_with("220"));
    c.send(b"LHLO client.example\r\n").await;
    while !c.line().await.starts_with("250 ") {}
    assert!(c.cmd("MAIL FROM:<x@example.org>").await.starts_with("250"));
    for name in ["a..b", "a\\b"] {
        let out = c.cmd(&format!("RCPT TO:<{name}@localhost>")).await;
        assert!(out.starts_with("550"), "{name}: {out}");
    }
    // The users read before still get mail.
    assert!(c.cmd("RCPT TO:<alice@localhost>").await.starts_with("250"));
    s.stop().await;
}

#[test]
fn deliver_refuses_names_the_store_cannot_hold_as_unknown_users() {
    let dir = tempfile::tempdir().unwrap();
    write_passwd(dir.path());
    let config = dir.path().join("mailbag.toml");
    std::fs::write(&config, config_text(dir.path(), "")).unwrap();
    for name in ["a..b", "a\\b"] {
        let mut command = mailbag();
        let mut child = as_unprivileged(&mut command, dir.path())
            .args(["deliver", "--user", name, "--config"])
            .arg(&config)
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"Subject: x\n\nbody\n")
            .unwrap();
        let out = child.wait_with_output().unwrap();
        // EX_NOUSER: the MTA bounces it at once.
        assert_eq!(out.status.code(), Some(67), "{name}: {out:?}");
    }
}
