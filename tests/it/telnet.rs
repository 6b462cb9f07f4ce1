//! People at a telnet prompt: line editing, telnet negotiation, retries,
//! transcripts, and the tutorial's steps through the real `telnet` client
//! inside `tmux`.

use std::process::Command;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt;

use crate::support::*;

const MESSAGE: &[u8] = b"From: a@example.org\nSubject: first\n\nHello\n";

#[tokio::test]
async fn backspace_and_del_edit_the_line_before_it_is_parsed() {
    let s = TestServer::start().await;
    s.deliver("alice", MESSAGE);
    let mut c = s.connect().await;
    c.line().await;
    c.send(b"USER alicx\x08e\r\n").await;
    assert!(c.line().await.starts_with("+OK"));
    // A mistyped password, corrected with DEL, logs in.
    c.send(b"PASS wonderlanx\x7fd\r\n").await;
    assert!(c.line().await.starts_with("+OK Logged in"));
    c.send(b"STS\x08AT\r\n").await;
    assert!(c.line().await.starts_with("+OK 1 "));
    // A bare LF ends a line as CRLF does.
    c.send(b"NOOP\n").await;
    assert_eq!(c.line().await, "+OK \r\n");
    s.stop().await;
}

#[tokio::test]
async fn telnet_negotiation_is_declined_and_never_part_of_a_command() {
    let s = TestServer::start().await;
    let mut c = s.connect().await;
    c.line().await;
    // IAC WILL LINEMODE, IAC DO ECHO, then a command.
    c.send(b"\xff\xfb\x22\xff\xfd\x01CAPA\r\n").await;
    let mut reply = [0u8; 6];
    c.stream.read_exact(&mut reply).await.unwrap();
    assert_eq!(reply, [0xff, 0xfe, 0x22, 0xff, 0xfc, 0x01]);
    assert!(c.line().await.starts_with("+OK Capability list follows"));
    let capa = String::from_utf8(c.body().await).unwrap();
    assert!(capa.contains("X-HELP\r\n"), "{capa}");
    s.stop().await;
}

#[tokio::test]
async fn help_and_errors_say_what_is_valid_now() {
    let s = TestServer::start().await;
    s.deliver("alice", MESSAGE);
    let mut c = s.connect().await;
    c.line().await;
    let (_, help) = c.multi("HELP").await;
    let help = String::from_utf8(help).unwrap();
    assert!(help.starts_with("USER name"), "{help}");
    assert!(!help.contains("RETR"), "{help}");
    c.ok("USER alice").await;
    c.ok("PASS wonderland").await;
    assert_eq!(
        c.cmd("STS").await,
        "-ERR Unknown command \"STS\". Valid now: STAT LIST RETR TOP DELE RSET UIDL NOOP CAPA QUIT HELP SUMMARY\r\n"
    );
    assert_eq!(
        c.cmd("RETR 5").await,
        "-ERR No such message: 5 (there is 1 message)\r\n"
    );
    let (_, help) = c.multi("HELP").await;
    assert!(String::from_utf8(help).unwrap().contains("RETR msg"));
    s.stop().await;
}

#[tokio::test]
async fn transcript_for_a_chosen_user_never_holds_the_password() {
    let s = TestServer::start_with(
        "\n[transcript]\ndir = \"transcripts\"\nusers = [\"alice\"]\nmax_files = 5\n",
    )
    .await;
    s.deliver("alice", MESSAGE);
    let mut c = s.connect().await;
    c.line().await;
    c.ok("USER alice").await;
    assert!(c.cmd("PASS not-my-password").await.starts_with("-ERR"));
    c.ok("USER alice").await;
    c.ok("PASS wonderland").await;
    c.multi("RETR 1").await;
    c.ok("QUIT").await;
    assert!(c.closed().await);
    // bob's sessions are not transcribed.
    let mut c = s.login(BOB).await;
    c.ok("QUIT").await;
    assert!(c.closed().await);
    let dir = s.dir.path().join("transcripts");
    let text = wait_for_transcript(&dir, "session ended").await;
    for secret in ["wonderland", "not-my-password"] {
        assert!(!text.contains(secret), "{secret} leaked into:\n{text}");
    }
    for want in [
        "C: USER alice",
        "C: PASS ***",
        "S: -ERR [AUTH]",
        "C: RETR 1",
        "S: +OK mailbag signing off",
    ] {
        assert!(text.contains(want), "{want} missing in:\n{text}");
    }
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
}

#[tokio::test]
async fn transcript_by_client_address_starts_at_the_greeting_and_is_capped() {
    let s = TestServer::start_with(
        "\n[transcript]\ndir = \"t\"\naddresses = [\"127.0.0.1\"]\nmax_file_octets = 600\nmax_files = 2\n",
    )
    .await;
    for _ in 0..3 {
        let mut c = s.connect().await;
        c.line().await;
        for _ in 0..10 {
            c.ok("CAPA").await;
            c.body().await;
        }
        c.ok("QUIT").await;
        assert!(c.closed().await);
    }
    let dir = s.dir.path().join("t");
    let text = wait_for_transcript(&dir, "truncated").await;
    assert!(text.contains("S: +OK mailbag POP3 server ready"), "{text}");
    let files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert!(files.len() <= 2, "{files:?}");
    for f in files {
        let len = std::fs::metadata(&f).unwrap().len();
        // The cap plus the one line that says the transcript was cut.
        assert!(len <= 600 + 60, "{}: {len} octets", f.display());
    }
}

async fn wait_for_transcript(dir: &std::path::Path, marker: &str) -> String {
    for _ in 0..200 {
        if let Ok(entries) = std::fs::read_dir(dir) {
            let mut all = String::new();
            for e in entries {
                all.push_str(&std::fs::read_to_string(e.unwrap().path()).unwrap_or_default());
            }
            if all.contains(marker) {
                return all;
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("no transcript with {marker:?} in {}", dir.display());
}

/// A real terminal: tmux runs the `telnet` client, the test types with
/// send-keys and reads the screen with capture-pane.
pub(crate) struct Terminal {
    socket: String,
}

impl Terminal {
    pub(crate) fn start(command: &str) -> Option<Terminal> {
        let have = |tool: &str| {
            Command::new("sh")
                .arg("-c")
                .arg(format!("command -v {tool}"))
                .output()
                .is_ok_and(|o| o.status.success())
        };
        if !(have("tmux") && have("telnet")) {
            // CI installs both (.ci/run); there the test must run.
            assert!(
                std::env::var_os("CI").is_none(),
                "tmux and telnet are required in CI"
            );
            eprintln!("SKIPPED: tmux or telnet is not installed");
            return None;
        }
        let socket = format!("mailbag-test-{}-{}", std::process::id(), rand_suffix());
        let t = Terminal { socket };
        t.tmux(&[
            "new-session",
            "-d",
            "-s",
            "pop",
            "-x",
            "150",
            "-y",
            "60",
            command,
        ]);
        Some(t)
    }

    fn tmux(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .args(["-L", &self.socket])
            .args(args)
            .output()
            .expect("tmux runs");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn screen(&self) -> String {
        self.tmux(&["capture-pane", "-p", "-t", "pop", "-S", "-200"])
    }

    pub(crate) fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "pop"];
        args.extend_from_slice(keys);
        self.tmux(&args);
    }

    /// Types a line and waits until `expect` appears `count` times.
    pub(crate) async fn type_line(&self, line: &str, expect: &str, count: usize) -> String {
        self.keys(&["-l", line]);
        self.keys(&["Enter"]);
        self.wait(expect, count).await
    }

    pub(crate) async fn wait(&self, expect: &str, count: usize) -> String {
        let start = Instant::now();
        loop {
            let screen = self.screen();
            if screen.matches(expect).count() >= count {
                return screen;
            }
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "waited for {expect:?} x{count}; screen:\n{screen}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        self.tmux(&["kill-server"]);
    }
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
}

#[tokio::test]
async fn the_tutorial_at_a_real_telnet_prompt() {
    let s = TestServer::start().await;
    s.deliver("alice", MESSAGE);
    s.deliver("alice", b"From: b@example.org\nSubject: second\n\nWorld\n");
    let before = s.files("alice");
    let Some(t) = Terminal::start(&format!(
        // The shell keeps the pane (and its screen) after telnet exits.
        "telnet {} {}; sleep 60",
        s.addr.ip(),
        s.addr.port()
    )) else {
        return;
    };
    t.wait("+OK mailbag POP3 server ready", 1).await;
    t.type_line("USER alice", "+OK Send PASS", 1).await;
    t.type_line("PASS wonderlnd", "-ERR [AUTH] Authentication failed", 1)
        .await;
    t.type_line("USER alice", "+OK Send PASS", 2).await;
    t.type_line(
        "PASS wonderland",
        "+OK Logged in. Maildrop has 2 messages",
        1,
    )
    .await;
    // A typo mended with backspace (^H reaches the server, which erases).
    t.keys(&["-l", "STS"]);
    t.keys(&["C-h"]);
    t.keys(&["-l", "AT"]);
    t.keys(&["Enter"]);
    t.wait("+OK 2 ", 1).await;
    t.type_line("LIST", "+OK 2 messages", 1).await;
    t.type_line("TOP 1 0", "Subject: first", 1).await;
    t.type_line("DELE 1", "+OK Message 1 marked for deletion at QUIT", 1)
        .await;
    t.type_line("RSET", "+OK Maildrop has 2 messages", 1).await;
    let screen = t
        .type_line("QUIT", "+OK mailbag signing off (2 messages left)", 1)
        .await;
    assert!(!screen.contains("Unknown command"), "{screen}");
    drop(t);
    assert_eq!(s.files("alice"), before);
    s.stop().await;
}
