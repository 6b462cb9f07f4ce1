//! Fuzz target: the SUMMARY of any bytes as a message. Never panics, gives
//! the same summary however the bytes are chunked, and renders a line
//! without control characters and of bounded width.
//!
//! Run from `fuzz/` (cargo-fuzz needs a nightly compiler; stable with
//! `RUSTC_BOOTSTRAP=1` works):
//! `RUSTC_BOOTSTRAP=1 cargo fuzz run -O -s none summary corpus/summary seeds/summary -- -max_total_time=60`
//! `-O` leaves out debug assertions: one inside mail-parser fires on
//! hostile MIME (the seed `parser-debug-assert.eml`); the summariser
//! catches that panic, but libFuzzer's panic hook aborts on any panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailbag::store::summary::{self, Scanner};

fuzz_target!(|data: &[u8]| {
    let whole = summary::summarize(data);
    // The first byte picks a chunk size, so chunk boundaries fall
    // everywhere: inside CRLF, inside a long line, at the parse limit.
    let chunk = data.first().map_or(1, |&b| usize::from(b) + 1);
    let mut scanner = Scanner::new();
    for part in data.chunks(chunk) {
        scanner.feed(part);
    }
    assert_eq!(scanner.finish(), whole);
    let line = summary::line(1, data.len() as u64, None, &whole, 1024);
    assert!(!line.chars().any(char::is_control), "{line:?}");
    // Fixed columns plus every problem label at most once.
    assert!(line.chars().count() <= 400, "{line:?}");
});
