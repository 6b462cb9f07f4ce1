//! Fuzz target: the LMTP session core driven like the delivery listener
//! drives it, with the client's bytes split at points the input chooses
//! and every action completed with an outcome the input chooses.
//!
//! Invariants: every Send is one or more whole replies (a 3-digit code,
//! then ` ` or `-`, CRLF-terminated, no bare CR or LF); after DATA there
//! is exactly one final reply per accepted recipient (RFC 2033 §4.2);
//! Deliver names as many users as addresses and never carries a message
//! over the size limit; no Act while another is outstanding; after Close,
//! Close forever.
#![no_main]

#[path = "common.rs"]
mod common;

use common::Input;
use libfuzzer_sys::fuzz_target;
use mailbag_proto::lmtp::conn::{
    Action, Conn, DeliveryResult, Event, Outcome, RcptResult, Settings,
};

/// Checks the reply syntax; returns the number of final replies (lines
/// whose code is followed by a space).
fn check_send(bytes: &[u8]) -> usize {
    assert!(!bytes.is_empty(), "empty Send");
    assert!(
        bytes.ends_with(b"\r\n"),
        "{:?}",
        String::from_utf8_lossy(bytes)
    );
    let mut finals = 0;
    let text = String::from_utf8_lossy(bytes);
    for line in bytes.split_inclusive(|&b| b == b'\n') {
        let line = line
            .strip_suffix(b"\r\n")
            .unwrap_or_else(|| panic!("bare LF: {text:?}"));
        assert!(!line.contains(&b'\r'), "bare CR: {text:?}");
        assert!(line.len() >= 4, "{text:?}");
        assert!(line[..3].iter().all(u8::is_ascii_digit), "{text:?}");
        assert!(matches!(line[0], b'2'..=b'5'), "{text:?}");
        match line[3] {
            b' ' => finals += 1,
            b'-' => {}
            _ => panic!("{text:?}"),
        }
    }
    finals
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input { data };
    let flags = input.control();
    let settings = Settings {
        hostname: "mx.example.org".into(),
        max_message_octets: if flags & 1 != 0 { 64 } else { 10_240_000 },
        max_recipients: usize::from(flags >> 1 & 3) + 1,
        max_bad_commands: if flags & 8 != 0 { 3 } else { 20 },
        max_line_octets: if flags & 16 != 0 { 40 } else { 512 },
        ..Settings::default()
    };
    let max_message = settings.max_message_octets;
    // The command line, the message (with a small limit) and the chunk
    // being read (twice, for Vec's doubling); the rest is small and fixed.
    let bound = 2 * (settings.max_line_octets + max_message.min(1 << 20) as usize + 64)
        + 2 * data.len()
        + 16384;
    let before = common::live();
    let mut conn = Conn::new(settings);

    let mut outstanding: Option<Action> = None;
    // Final replies owed for the last Deliver, checked on the next Send.
    let mut owed: Option<usize> = None;
    let mut steps = 0u32;
    loop {
        steps += 1;
        assert!(steps < 1_000_000, "the core does not settle");
        match conn.next() {
            Event::Send(bytes) => {
                let finals = check_send(&bytes);
                if let Some(n) = owed.take() {
                    assert_eq!(finals, n, "{:?}", String::from_utf8_lossy(&bytes));
                }
            }
            Event::Act(action) => {
                assert!(outstanding.is_none(), "{action:?} while {outstanding:?}");
                assert!(owed.is_none());
                if let Action::Deliver {
                    recipients,
                    addresses,
                    message,
                    ..
                } = &action
                {
                    assert!(!recipients.is_empty());
                    assert_eq!(recipients.len(), addresses.len());
                    assert!(message.len() as u64 <= max_message);
                }
                outstanding = Some(action);
            }
            Event::NeedInput => {
                if let Some(action) = outstanding.take() {
                    let c = input.control();
                    if c & 0x80 != 0 && !input.data.is_empty() {
                        // Pipelined bytes arrive while the action runs.
                        let chunk = input.client(usize::from(c & 0x3F) + 1);
                        conn.receive(chunk);
                        outstanding = Some(action);
                        match conn.next() {
                            Event::NeedInput => {}
                            other => panic!("{other:?} while {outstanding:?} is outstanding"),
                        }
                        continue;
                    }
                    let outcome = match &action {
                        Action::CheckRecipient { address } => Outcome::Recipient(match c % 5 {
                            0 | 1 => RcptResult::Accepted {
                                user: address.split('@').next().unwrap_or("u").into(),
                            },
                            2 => RcptResult::Unknown,
                            3 => RcptResult::OverQuota,
                            _ => RcptResult::TemporaryFailure,
                        }),
                        Action::Deliver { recipients, .. } => {
                            owed = Some(recipients.len());
                            // Sometimes too few results: the rest count as
                            // temporary failures.
                            let n = recipients.len() - usize::from(c & 0x40 != 0);
                            Outcome::Delivered(
                                (0..n)
                                    .map(|_| match input.control() % 4 {
                                        0 | 1 => DeliveryResult::Delivered,
                                        2 => DeliveryResult::OverQuota,
                                        _ => DeliveryResult::TemporaryFailure,
                                    })
                                    .collect(),
                            )
                        }
                    };
                    conn.complete(outcome);
                    continue;
                }
                let held = common::live().saturating_sub(before);
                assert!(held <= bound, "{held} octets held (bound {bound})");
                if input.data.is_empty() {
                    break;
                }
                let n = usize::from(input.control()) % 64 + 1;
                let chunk = input.client(n);
                conn.receive(chunk);
            }
            Event::Close => {
                assert!(owed.is_none());
                for _ in 0..3 {
                    assert_eq!(conn.next(), Event::Close);
                }
                conn.receive(b"NOOP\r\n");
                assert_eq!(conn.next(), Event::Close);
                return;
            }
        }
    }
});
