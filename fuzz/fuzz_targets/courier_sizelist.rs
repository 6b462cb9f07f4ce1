//! Fuzz target: Courier's `courierpop3dsizelist` (the mailbox owner can
//! write it). Parsed bases are plain file names without ':' and each
//! listed once, no more than the input's lines; every UIDL is 1 or more
//! octets of 0x21-0x7E.
#![no_main]

use std::collections::HashSet;

use libfuzzer_sys::fuzz_target;
use mailbag::store::maildir::parse_courier_sizelist;

fuzz_target!(|bytes: &[u8]| {
    let Some(pairs) = parse_courier_sizelist(bytes) else {
        return;
    };
    assert!(pairs.len() <= bytes.iter().filter(|&&b| b == b'\n').count());
    let mut bases = HashSet::new();
    for (base, uidl) in &pairs {
        assert!((1..=255).contains(&base.len()) && base[0] != b'.');
        assert!(!base
            .iter()
            .any(|&b| b == b'/' || b == 0 || b == b':' || b == b'\n'));
        assert!(bases.insert(base), "a base twice");
        assert!(
            !uidl.is_empty() && uidl.bytes().all(|b| (0x21..=0x7E).contains(&b)),
            "{uidl:?}"
        );
    }
});
