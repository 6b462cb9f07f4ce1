//! Fuzz target: `mailbag.update`, the record of an UPDATE in progress,
//! which the next open finishes by unlinking what it names. A mailbox
//! owner can write one. Any bytes are either no record or a record whose
//! every name is one plain file name (1 to 255 octets, no '/' or NUL, not
//! "." or "..", not a dotfile), never more names than the input could
//! hold, and encoded again it parses the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailbag::store::maildir::{encode_update, parse_update};

fuzz_target!(|bytes: &[u8]| {
    let Some(names) = parse_update(bytes) else {
        return;
    };
    assert!(names.len() <= bytes.len() / 3);
    for (_, name) in &names {
        assert!((1..=255).contains(&name.len()), "{name:?}");
        assert!(!name.contains(&b'/') && !name.contains(&0));
        assert!(name[0] != b'.', "{name:?}");
    }
    let again = encode_update(names.iter().map(|(c, n)| (*c, n.as_slice())));
    assert_eq!(parse_update(&again), Some(names));
});
