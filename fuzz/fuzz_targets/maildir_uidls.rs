//! Fuzz target: `mailbag.uidls`, the record of the UIDLs shown, which
//! the mailbox owner can write. Any bytes parse to entries whose every
//! base is one plain file name without LF and whose every UIDL is 1-70
//! octets of 0x21-0x7E; bases and UIDLs are each unique, in base order,
//! no more entries than input lines; encoded again (with the time the
//! record began), it parses the same.
#![no_main]

use std::collections::HashSet;

use libfuzzer_sys::fuzz_target;
use mailbag::store::maildir::{encode_shown, parse_shown, parse_shown_since};

fuzz_target!(|bytes: &[u8]| {
    let entries = parse_shown(bytes);
    assert!(entries.len() <= bytes.iter().filter(|&&b| b == b'\n').count() + 1);
    let mut uidls = HashSet::new();
    for (base, uidl) in &entries {
        assert!((1..=255).contains(&base.len()), "{base:?}");
        assert!(!base.iter().any(|&b| b == b'/' || b == 0 || b == b'\n'));
        assert!(base != b"." && base != b"..");
        if let Some(u) = uidl {
            assert!((1..=70).contains(&u.len()) && u.bytes().all(|b| (0x21..=0x7E).contains(&b)));
            assert!(uidls.insert(u.clone()), "UIDL {u} twice");
        }
    }
    assert!(
        entries.windows(2).all(|w| w[0].0 < w[1].0),
        "not in base order"
    );
    let (since, same) = parse_shown_since(bytes);
    assert_eq!(same, entries);
    let again = encode_shown(
        since,
        entries.iter().map(|(b, u)| (b.as_slice(), u.as_deref())),
    );
    assert_eq!(parse_shown_since(&again), (since, entries));
});
