//! Transcript tests: each `transcripts/*.txt` file is a POP3 dialogue
//! (`C:` lines from the client, `S:` lines from the server) run against
//! the protocol core with an in-memory maildrop and password database.
//!
//! Every file is fed several ways, and each must produce the same bytes:
//! - turn by turn (the client waits for each answer), each turn's bytes in
//!   chunks of 1, 2, 7 and 64 octets and whole, the core drained after
//!   every chunk, the answers checked turn by turn;
//! - pipelined (RFC 2449 PIPELINING): the whole client side at once, whole
//!   and in chunks, checked against all the answers. Not for dialogues
//!   with STLS: RFC 2595 §4 has the server discard what was pipelined
//!   behind it, so what it sees there depends on how the bytes arrived.
//!
//! A file starts with its setup, one `=` line each:
//! - `= setting NAME VALUE`: `apop-timestamp <...>`, `plaintext yes|no`,
//!   `tls none|available|active`, `mechanisms NAME...` (or `none`),
//!   `max-auth-failures N`, `max-bad-commands N`;
//! - `= user NAME PASSWORD`, `= apop NAME DIGEST` (the digest the
//!   password database accepts), `= locked NAME` (the maildrop is in use);
//! - `= message NAME UID`, then its lines as `= | text` (each line is
//!   stored with CRLF, so the size is exact);
//! - `= expect closed` when the server ends the session, and
//!   `= expect commit deleted N... retrieved N...` (message numbers) for
//!   what UPDATE is asked to do; without it, nothing may be committed.
//!
//! `#` lines are comments. Each `C:` and `S:` line stands for its text and
//! a CRLF; `C:` and `S:` alone are an empty line.

use std::collections::BTreeMap;
use std::path::Path;

use mailbag_proto::dot::Stuffer;
use mailbag_proto::pop3::{
    Action, Conn, Credential, Event, Index, MessageInfo, Outcome, Settings, StoreFailure,
};
use mailbag_proto::sasl::scram::ScramKeys;
use mailbag_proto::sasl::Mechanism;

/// The chunk sizes every turn is fed at; `usize::MAX` is "whole".
const CHUNKS: [usize; 5] = [1, 2, 7, 64, usize::MAX];

/// One client turn: what it sends, then what the server must answer.
#[derive(Debug, Default, Clone)]
struct Turn {
    client: Vec<u8>,
    server: Vec<u8>,
}

#[derive(Debug, Default)]
struct Script {
    settings: Settings,
    passwords: BTreeMap<String, String>,
    apop: BTreeMap<String, String>,
    locked: Vec<String>,
    /// Each user's messages: uid and stored text.
    maildrops: BTreeMap<String, Vec<(String, Vec<u8>)>>,
    /// The server's greeting and anything before the first client turn.
    greeting: Vec<u8>,
    turns: Vec<Turn>,
    expect_closed: bool,
    expect_commit: Option<(Vec<usize>, Vec<usize>)>,
    uses_stls: bool,
}

fn parse_script(name: &str, text: &str) -> Script {
    let mut script = Script {
        settings: Settings::default(),
        ..Script::default()
    };
    let mut current: Option<(String, usize)> = None;
    for (n, line) in text.lines().enumerate() {
        let at = || format!("{name}:{}", n + 1);
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("C:") {
            let rest = rest.strip_prefix(' ').unwrap_or(rest);
            if script.turns.last().is_none_or(|t| !t.server.is_empty()) {
                script.turns.push(Turn::default());
            }
            let turn = script.turns.last_mut().expect("a turn");
            turn.client.extend_from_slice(rest.as_bytes());
            turn.client.extend_from_slice(b"\r\n");
            if rest
                .split(' ')
                .next()
                .unwrap_or("")
                .eq_ignore_ascii_case("STLS")
            {
                script.uses_stls = true;
            }
            continue;
        }
        if let Some(rest) = line.strip_prefix("S:") {
            let rest = rest.strip_prefix(' ').unwrap_or(rest);
            let out = match script.turns.last_mut() {
                Some(turn) => &mut turn.server,
                None => &mut script.greeting,
            };
            out.extend_from_slice(rest.as_bytes());
            out.extend_from_slice(b"\r\n");
            continue;
        }
        let Some(directive) = line.strip_prefix("= ") else {
            panic!("{}: not a C:, S:, = or # line: {line:?}", at());
        };
        if let Some(body) = directive
            .strip_prefix('|')
            .map(|b| b.strip_prefix(' ').unwrap_or(b))
        {
            let (user, i) = current.as_ref().unwrap_or_else(|| {
                panic!("{}: message text before `= message`", at());
            });
            let text = &mut script.maildrops.get_mut(user).expect("maildrop")[*i].1;
            text.extend_from_slice(body.as_bytes());
            text.extend_from_slice(b"\r\n");
            continue;
        }
        let words: Vec<&str> = directive.split(' ').collect();
        match words.as_slice() {
            ["setting", "apop-timestamp", ts] => {
                script.settings.apop_timestamp = Some(ts.to_string())
            }
            ["setting", "plaintext", v] => script.settings.plaintext_auth = *v == "yes",
            ["setting", "tls", "none"] => {
                script.settings.tls_available = false;
                script.settings.tls_active = false;
            }
            ["setting", "tls", "available"] => script.settings.tls_available = true,
            ["setting", "tls", "active"] => {
                script.settings.tls_available = true;
                script.settings.tls_active = true;
            }
            ["setting", "mechanisms", "none"] => script.settings.sasl_mechanisms = Vec::new(),
            ["setting", "mechanisms", names @ ..] => {
                script.settings.sasl_mechanisms = names
                    .iter()
                    .map(|m| {
                        Mechanism::from_name(m)
                            .unwrap_or_else(|| panic!("{}: no mechanism {m}", at()))
                    })
                    .collect()
            }
            ["setting", "max-auth-failures", v] => {
                script.settings.max_auth_failures = v.parse().expect("a number")
            }
            ["setting", "max-bad-commands", v] => {
                script.settings.max_bad_commands = v.parse().expect("a number")
            }
            ["user", user, password] => {
                script
                    .passwords
                    .insert(user.to_string(), password.to_string());
                script.maildrops.entry(user.to_string()).or_default();
            }
            ["apop", user, digest] => {
                script.apop.insert(user.to_string(), digest.to_string());
            }
            ["locked", user] => script.locked.push(user.to_string()),
            ["message", user, uid] => {
                let drop = script.maildrops.entry(user.to_string()).or_default();
                drop.push((uid.to_string(), Vec::new()));
                current = Some((user.to_string(), drop.len() - 1));
            }
            ["expect", "closed"] => script.expect_closed = true,
            ["expect", "commit", rest @ ..] => {
                let mut deleted = Vec::new();
                let mut retrieved = Vec::new();
                let mut into = &mut deleted;
                for w in rest {
                    match *w {
                        "deleted" => into = &mut deleted,
                        "retrieved" => into = &mut retrieved,
                        n => into.push(n.parse::<usize>().expect("a message number") - 1),
                    }
                }
                script.expect_commit = Some((deleted, retrieved));
            }
            _ => panic!("{}: unknown directive {directive:?}", at()),
        }
    }
    script
}

/// The driver's side, with everything in memory.
struct Driver<'s> {
    script: &'s Script,
    out: Vec<u8>,
    opened: Option<String>,
    commits: Vec<(Vec<usize>, Vec<usize>)>,
    closed: bool,
}

impl Driver<'_> {
    fn perform(&mut self, action: Action) -> Outcome {
        let s = self.script;
        match action {
            Action::Authenticate { user, credential } => {
                let good = match &credential {
                    Credential::Password(p) => s.passwords.get(&user) == Some(p.expose()),
                    Credential::Apop { digest, .. } => s.apop.get(&user) == Some(digest.expose()),
                    // No MD5 here; CRAM-MD5 is tested in its own module.
                    Credential::CramMd5 { .. } => false,
                };
                if good {
                    Outcome::Authenticated { user }
                } else {
                    Outcome::AuthRejected
                }
            }
            Action::OpenMaildrop { user } => {
                if s.locked.contains(&user) {
                    return Outcome::OpenFailed(StoreFailure::Locked);
                }
                let messages = s.maildrops.get(&user).map_or(Vec::new(), |m| {
                    m.iter()
                        .map(|(uid, text)| MessageInfo {
                            uid: uid.clone(),
                            size: text.len() as u64,
                        })
                        .collect()
                });
                self.opened = Some(user);
                Outcome::Opened(messages)
            }
            Action::Retrieve {
                index,
                top_lines,
                status,
            } => {
                let user = self.opened.as_ref().expect("a maildrop is open");
                let text = &s.maildrops[user][index.get()].1;
                self.out.extend_from_slice(&status);
                let mut stuffer = match top_lines {
                    None => Stuffer::new(),
                    Some(n) => Stuffer::top(n),
                };
                stuffer.feed(text, &mut self.out);
                stuffer.finish(&mut self.out);
                Outcome::Sent
            }
            Action::StartTls => Outcome::TlsStarted,
            Action::ScramLookup { user } => {
                let password = s.passwords.get(&user).map_or("", |p| p.as_str());
                Outcome::ScramKeys {
                    user,
                    keys: ScramKeys::derive(password.as_bytes(), b"salt", 4096),
                    nonce: "SERVERNONCE".into(),
                }
            }
            Action::Rejected { .. } | Action::CheckToken { .. } => Outcome::AuthRejected,
            Action::Commit { deleted, retrieved } => {
                self.commits
                    .push((positions(&deleted), positions(&retrieved)));
                Outcome::Committed
            }
            Action::Summarize { indexes } => Outcome::Summarized(
                indexes
                    .iter()
                    .map(|i| format!("{} summary", i.number()))
                    .collect(),
            ),
        }
    }

    /// Drains the core until it wants input or closes.
    fn drain(&mut self, conn: &mut Conn) {
        if self.closed {
            return;
        }
        loop {
            match conn.next() {
                Event::Send(bytes) => self.out.extend_from_slice(&bytes),
                Event::Act(action) => {
                    let outcome = self.perform(action);
                    conn.complete(outcome);
                }
                Event::Received(_) | Event::Command(_) => {}
                Event::NeedInput => return,
                Event::Close => {
                    self.closed = true;
                    return;
                }
            }
        }
    }

    /// Feeds `bytes` in chunks of `chunk` octets, draining after each, as
    /// a driver does after each read. Nothing is read after the close.
    fn feed(&mut self, conn: &mut Conn, bytes: &[u8], chunk: usize) {
        for piece in bytes.chunks(chunk.min(bytes.len()).max(1)) {
            if self.closed {
                return;
            }
            conn.receive(piece);
            self.drain(conn);
        }
    }

    fn new(script: &Script) -> Driver<'_> {
        Driver {
            script,
            out: Vec::new(),
            opened: None,
            commits: Vec::new(),
            closed: false,
        }
    }
}

/// The positions a store gets for the indexes of an action.
fn positions(indexes: &[Index]) -> Vec<usize> {
    indexes.iter().map(|i| i.get()).collect()
}

fn show(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).replace("\r\n", "\u{21b5}\n")
}

/// Checks how the session ended: closed or not, and what was committed.
fn check_end(name: &str, how: &str, script: &Script, driver: &Driver) {
    assert_eq!(
        driver.closed, script.expect_closed,
        "{name} ({how}): closed is {}",
        driver.closed
    );
    let expected: Vec<_> = script.expect_commit.iter().cloned().collect();
    assert_eq!(driver.commits, expected, "{name} ({how}): commits");
}

fn run_turn_by_turn(name: &str, script: &Script, chunk: usize) {
    let how = format!("turn by turn, chunks of {chunk}");
    let mut conn = Conn::new(script.settings.clone());
    let mut driver = Driver::new(script);
    driver.drain(&mut conn);
    assert!(
        driver.out == script.greeting,
        "{name} ({how}): greeting\n got: {}\nwant: {}",
        show(&driver.out),
        show(&script.greeting)
    );
    for (i, turn) in script.turns.iter().enumerate() {
        driver.out.clear();
        driver.feed(&mut conn, &turn.client, chunk);
        assert!(
            driver.out == turn.server,
            "{name} ({how}): turn {} ({})\n got: {}\nwant: {}",
            i + 1,
            show(&turn.client).trim_end(),
            show(&driver.out),
            show(&turn.server)
        );
    }
    check_end(name, &how, script, &driver);
}

fn run_pipelined(name: &str, script: &Script, chunk: usize) {
    let how = format!("pipelined, chunks of {chunk}");
    let client: Vec<u8> = script.turns.iter().flat_map(|t| t.client.clone()).collect();
    let mut expected = script.greeting.clone();
    expected.extend(script.turns.iter().flat_map(|t| t.server.clone()));
    let mut conn = Conn::new(script.settings.clone());
    let mut driver = Driver::new(script);
    driver.drain(&mut conn);
    driver.feed(&mut conn, &client, chunk);
    assert!(
        driver.out == expected,
        "{name} ({how})\n got: {}\nwant: {}",
        show(&driver.out),
        show(&expected)
    );
    check_end(name, &how, script, &driver);
}

fn print_answers(name: &str, script: &Script) {
    let mut conn = Conn::new(script.settings.clone());
    let mut driver = Driver::new(script);
    driver.drain(&mut conn);
    println!("==== {name}");
    let print = |bytes: &[u8], prefix: &str| {
        for line in String::from_utf8_lossy(bytes).split_terminator("\r\n") {
            println!("{prefix} {line}");
        }
    };
    print(&driver.out, "S:");
    for turn in &script.turns {
        driver.out.clear();
        print(&turn.client, "C:");
        driver.feed(&mut conn, &turn.client, usize::MAX);
        print(&driver.out, "S:");
    }
    println!("closed: {}, commits: {:?}", driver.closed, driver.commits);
}

#[test]
fn every_transcript_gives_the_same_bytes_however_its_input_is_cut() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/transcripts");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("tests/transcripts")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "txt"))
        .collect();
    files.sort();
    assert!(files.len() >= 10, "transcripts missing: {files:?}");
    for path in files {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let text = std::fs::read_to_string(&path).expect("readable transcript");
        let script = parse_script(&name, &text);
        assert!(!script.turns.is_empty(), "{name}: no client lines");
        if std::env::var_os("MAILBAG_PRINT_TRANSCRIPTS").is_some() {
            // For writing a transcript: shows what the core answers (to be
            // checked by hand against the RFC before it is pasted in).
            print_answers(&name, &script);
            continue;
        }
        for chunk in CHUNKS {
            run_turn_by_turn(&name, &script, chunk);
            if !script.uses_stls {
                run_pipelined(&name, &script, chunk);
            }
        }
    }
}
