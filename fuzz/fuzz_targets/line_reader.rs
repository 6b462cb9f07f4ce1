//! Fuzz target: command-line framing. No line is ever longer than the
//! limit allows, the reader never holds much more than one line and one
//! chunk of input (counted by a counting allocator), telnet replies are
//! well-formed refusals, and the events do not depend on how the input is
//! chunked.
#![no_main]

#[path = "common.rs"]
mod common;

use libfuzzer_sys::fuzz_target;
use mailbag_proto::line::{LineEvent, LineReader};

fuzz_target!(|data: &[u8]| {
    let Some((&control, input)) = data.split_first() else {
        return;
    };
    // Limits from tiny (every line overflows) to the POP3 one.
    let limit = match control & 3 {
        0 => 1,
        1 => 2 + usize::from(control >> 2),
        2 => 255,
        _ => 512,
    };
    let whole = events(limit, input, input.len().max(1));
    let chunk = usize::from(control >> 2) % 17 + 1;
    assert_eq!(events(limit, input, chunk), whole, "chunk {chunk}");
    assert_eq!(events(limit, input, 1), whole);
    bounded(limit, input, chunk);
});

fn events(limit: usize, input: &[u8], chunk: usize) -> Vec<LineEvent> {
    let mut reader = LineReader::new(limit);
    let mut out = Vec::new();
    for part in input.chunks(chunk) {
        reader.push(part);
        while let Some(event) = reader.next_event() {
            match &event {
                // The limit counts the line ending: a line of `limit - 1`
                // octets plus LF is the longest that fits.
                LineEvent::Line(line) => assert!(
                    line.len() < limit.max(1),
                    "{} octets with limit {limit}",
                    line.len()
                ),
                LineEvent::Telnet(reply) => {
                    assert_eq!(reply.len(), 3);
                    assert_eq!(reply[0], 255);
                    assert!(matches!(reply[1], 252 | 254));
                }
                LineEvent::TooLong => {}
            }
            out.push(event);
        }
    }
    out
}

/// Whatever the input, the reader's buffers stay within a line and a
/// chunk (twice each, for Vec's doubling).
fn bounded(limit: usize, input: &[u8], chunk: usize) {
    let before = common::live();
    let mut reader = LineReader::new(limit);
    for part in input.chunks(chunk) {
        reader.push(part);
        while let Some(event) = reader.next_event() {
            drop(event);
        }
        let held = common::live().saturating_sub(before);
        assert!(
            held <= 2 * (limit + chunk) + 64,
            "{held} octets held with limit {limit} and chunks of {chunk}"
        );
    }
}
