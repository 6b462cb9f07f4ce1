//! Fuzz target: the POP3 session core driven like the server drives it,
//! with the client's bytes split at points the input chooses and every
//! action completed with an outcome the input chooses (including wrong
//! ones, as a confused driver might give).
//!
//! Invariants: every Send is a whole response (non-empty, CRLF-terminated,
//! no bare LF, starting with `+` or `-`) or a 3-octet telnet refusal; no
//! Act while another is outstanding; no Received transcript line longer
//! than the line limits allow; every Retrieve names a message of the
//! snapshot with a well-formed status line; Commit only after QUIT in
//! TRANSACTION, with indexes in range; after Close, Close forever.
#![no_main]

#[path = "common.rs"]
mod common;

use std::sync::OnceLock;

use common::Input;
use libfuzzer_sys::fuzz_target;
use mailbag_proto::pop3::{
    Action, Conn, Event, MessageInfo, Outcome, Settings, StoreFailure, Verb,
};
use mailbag_proto::sasl::scram::ScramKeys;

fn keys() -> ScramKeys {
    static KEYS: OnceLock<ScramKeys> = OnceLock::new();
    KEYS.get_or_init(|| ScramKeys::derive(b"pencil", b"QSXCR+Q6sek8bf92", 4096))
        .clone()
}

fn failure(b: u8) -> StoreFailure {
    match b % 4 {
        0 => StoreFailure::Locked,
        1 => StoreFailure::Vanished,
        2 => StoreFailure::Temporary,
        _ => StoreFailure::Permanent,
    }
}

fn check_send(bytes: &[u8]) {
    assert!(!bytes.is_empty(), "empty Send");
    if bytes[0] == 0xFF {
        assert_eq!(bytes.len(), 3, "{bytes:?}");
        assert!(matches!(bytes[1], 252 | 254), "{bytes:?}");
        return;
    }
    assert!(
        bytes.ends_with(b"\r\n"),
        "{:?}",
        String::from_utf8_lossy(bytes)
    );
    assert!(
        matches!(bytes[0], b'+' | b'-'),
        "{:?}",
        String::from_utf8_lossy(bytes)
    );
    for (i, &b) in bytes.iter().enumerate() {
        if b == b'\n' {
            assert!(
                i > 0 && bytes[i - 1] == b'\r',
                "bare LF: {:?}",
                String::from_utf8_lossy(bytes)
            );
        }
        // A lone CR would let a client's bytes start a new line for some
        // readers.
        if b == b'\r' {
            assert_eq!(
                bytes.get(i + 1),
                Some(&b'\n'),
                "bare CR: {:?}",
                String::from_utf8_lossy(bytes)
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input { data };
    let flags = input.control();
    let limit_choice = input.control();
    let max_line_octets = if flags & 0x40 != 0 {
        usize::from(limit_choice % 64) + 1
    } else {
        255
    };
    let max_sasl_line_octets = if flags & 0x80 != 0 { 300 } else { 8192 };
    let settings = Settings {
        apop_timestamp: (flags & 1 != 0).then(|| "<1896.697170952@dbc.mtview.ca.us>".into()),
        plaintext_auth: flags & 2 != 0,
        tls_available: flags & 4 != 0,
        tls_active: flags & 8 != 0,
        cram_md5_challenge: (flags & 16 != 0).then(|| "<12345.67890@mailbag.example>".into()),
        transcript: true,
        expire: (flags & 32 != 0).then(|| "NEVER".into()),
        login_delay_secs: (flags & 32 != 0).then_some(900),
        max_line_octets,
        max_sasl_line_octets,
        master_users: vec!["admin".into()],
        ..Settings::default()
    };
    let transcript_limit = max_line_octets.max(max_sasl_line_octets) + 8;
    // Lines, SASL responses and pipelined input are held up to their
    // limits (twice, for Vec's doubling); the rest is small and fixed.
    let bound = 2 * (max_line_octets.max(max_sasl_line_octets) + 64) + 2 * data.len() + 16384;
    let before = common::live();
    let mut conn = Conn::new(settings);

    let mut outstanding: Option<Action> = None;
    // The snapshot's sizes, as the last Opened gave them.
    let mut sizes: Vec<u64> = Vec::new();
    let mut in_transaction = false;
    let mut last_command_quit = false;
    let mut steps = 0u32;
    loop {
        steps += 1;
        assert!(steps < 1_000_000, "the core does not settle");
        match conn.next() {
            Event::Send(bytes) => check_send(&bytes),
            Event::Received(line) => {
                assert!(line.len() <= transcript_limit, "{} octets", line.len());
            }
            Event::Command(verb) => last_command_quit = verb == Verb::Quit,
            Event::Act(action) => {
                assert!(
                    outstanding.is_none(),
                    "{action:?} while {outstanding:?} is outstanding"
                );
                match &action {
                    Action::Retrieve {
                        index,
                        status,
                        top_lines,
                    } => {
                        assert!(in_transaction && index.get() < sizes.len(), "{action:?}");
                        check_send(status);
                        assert!(status.starts_with(b"+OK"));
                        // RFC 1939 §7: RETR's status gives the size LIST gave.
                        if top_lines.is_none() {
                            let expected = format!("+OK {} octets\r\n", sizes[index.get()]);
                            assert_eq!(String::from_utf8_lossy(status), expected);
                        }
                    }
                    Action::Commit { deleted, retrieved } => {
                        assert!(in_transaction && last_command_quit, "{action:?}");
                        assert!(deleted.iter().chain(retrieved).all(|i| i.get() < sizes.len()));
                        assert!(!retrieved.iter().any(|i| deleted.contains(i)));
                    }
                    Action::Summarize { indexes } => {
                        assert!(in_transaction && indexes.iter().all(|i| i.get() < sizes.len()));
                    }
                    Action::OpenMaildrop { user } => assert!(!user.is_empty()),
                    Action::Authenticate { .. }
                    | Action::ScramLookup { .. }
                    | Action::Rejected { .. }
                    | Action::CheckToken { .. }
                    | Action::StartTls => assert!(!in_transaction, "{action:?}"),
                }
                outstanding = Some(action);
            }
            Event::NeedInput => {
                // Sometimes complete at once, sometimes let more client
                // bytes arrive first (a pipelining client).
                if let Some(action) = outstanding.take() {
                    let c = input.control();
                    if c & 0x80 != 0 && !input.data.is_empty() {
                        let n = usize::from(c & 0x3F) + 1;
                        let chunk = input.client(n);
                        conn.receive(chunk);
                        outstanding = Some(action);
                        // Still outstanding: the core must not move on.
                        match conn.next() {
                            Event::NeedInput => {}
                            other => panic!("{other:?} while {outstanding:?} is outstanding"),
                        }
                        continue;
                    }
                    let outcome = complete(&action, c, &mut input, &mut sizes);
                    conn.complete(outcome);
                    in_transaction = conn.in_transaction();
                    continue;
                }
                let held = common::live().saturating_sub(before);
                assert!(held <= bound, "{held} octets held (bound {bound})");
                if input.data.is_empty() {
                    break;
                }
                let c = input.control();
                let n = usize::from(c) % 48 + 1;
                let chunk = input.client(n);
                conn.receive(chunk);
            }
            Event::Close => {
                for _ in 0..3 {
                    assert_eq!(conn.next(), Event::Close);
                }
                conn.receive(b"NOOP\r\nSTAT\r\n");
                conn.complete(Outcome::Sent);
                assert_eq!(conn.next(), Event::Close);
                return;
            }
        }
    }
});

/// A plausible outcome for `action`, chosen by `c`; now and then one that
/// does not belong to the action at all.
fn complete(action: &Action, c: u8, input: &mut Input, sizes: &mut Vec<u64>) -> Outcome {
    if c & 0x40 != 0 && c & 0x20 != 0 && c & 0x10 != 0 {
        // A confused driver.
        return match c % 3 {
            0 => Outcome::Sent,
            1 => Outcome::Committed,
            _ => Outcome::TlsStarted,
        };
    }
    match action {
        Action::Authenticate { user, .. } => match c % 5 {
            0 | 1 => Outcome::Authenticated { user: user.clone() },
            2 => Outcome::AuthRejected,
            3 => Outcome::AuthUnavailable,
            _ => Outcome::LoginDelayed { seconds: 900 },
        },
        Action::OpenMaildrop { .. } => {
            if c % 4 == 3 {
                return Outcome::OpenFailed(failure(c >> 2));
            }
            let n = usize::from(input.control() % 6);
            *sizes = (0..n).map(|_| u64::from(input.control()) * 37).collect();
            Outcome::Opened(
                sizes
                    .iter()
                    .enumerate()
                    .map(|(i, &size)| MessageInfo {
                        uid: format!("1700000000.M{i}P2.host"),
                        size,
                    })
                    .collect(),
            )
        }
        Action::Retrieve { .. } | Action::Summarize { .. } if c % 4 == 3 => {
            Outcome::NotSent(failure(c >> 2))
        }
        Action::Retrieve { .. } => Outcome::Sent,
        Action::Summarize { indexes } => {
            // Now and then the wrong number of lines.
            let n = indexes.len() + usize::from(c % 4 == 2);
            Outcome::Summarized(
                (0..n)
                    .map(|i| format!("{} 120 2024-01-01 a@b.example \"Hi\"", i + 1))
                    .collect(),
            )
        }
        Action::StartTls => {
            if c & 1 == 0 {
                Outcome::TlsStarted
            } else {
                Outcome::AuthUnavailable
            }
        }
        Action::ScramLookup { user } => match c % 3 {
            0 | 1 => Outcome::ScramKeys {
                user: user.clone(),
                keys: keys(),
                nonce: "3rfcNHYJY1ZVvWVs7j".into(),
            },
            _ => Outcome::AuthUnavailable,
        },
        Action::Rejected { .. } => Outcome::AuthRejected,
        Action::CheckToken { .. } => match c % 3 {
            0 => Outcome::Authenticated {
                user: "mrose".into(),
            },
            1 => Outcome::AuthRejected,
            _ => Outcome::AuthUnavailable,
        },
        Action::Commit { .. } => match c % 3 {
            0 | 1 => Outcome::Committed,
            _ => Outcome::CommitFailed(failure(c >> 2)),
        },
    }
}
