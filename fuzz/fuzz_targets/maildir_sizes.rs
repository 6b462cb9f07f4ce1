//! Fuzz target: `mailbag.sizes`, the size cache a mailbox owner can
//! rewrite at will. Any bytes give entries whose every base is one path
//! component (1 to 255 octets, no '/', NUL or newline, not "." or ".."),
//! whose sizes have at most 19 digits, at most one entry per line of
//! input, and no panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailbag::store::maildir::parse_sizes;

fuzz_target!(|bytes: &[u8]| {
    let entries = parse_sizes(bytes);
    let lines = bytes.iter().filter(|&&b| b == b'\n').count() + 1;
    assert!(entries.len() <= lines);
    for (base, size) in &entries {
        assert!((1..=255).contains(&base.len()), "{base:?}");
        assert!(!base.contains(&b'/') && !base.contains(&0) && !base.contains(&b'\n'));
        assert!(base != b"." && base != b"..");
        assert!(*size < 10_000_000_000_000_000_000);
        // Each base is a piece of the input, never made up.
        assert!(bytes.windows(base.len()).any(|w| w == base.as_slice()));
    }
});
