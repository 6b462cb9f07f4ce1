//! Fuzz target: Maildir file names from a directory anyone may write to.
//! Any bytes give a base that prefixes the name, a valid UIDL (1 to 70
//! characters in 0x21..=0x7E, RFC 1939 §7) that the flags and info part
//! never change, and a cur/ name for a retrieved message that keeps the
//! base and has S among sorted, unique flags.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailbag::store::maildir::fuzz_name;

fuzz_target!(|name: &[u8]| {
    let parsed = fuzz_name(name);
    assert!(name.starts_with(&parsed.base));
    assert!(!parsed.base.contains(&b':'));
    let uidl = &parsed.uidl;
    assert!((1..=70).contains(&uidl.len()), "{uidl:?}");
    assert!(uidl.bytes().all(|b| (0x21..=0x7E).contains(&b)), "{uidl:?}");
    // Deterministic, and a function of the base alone.
    assert_eq!(fuzz_name(&parsed.base).uidl, *uidl);
    let mut moved = parsed.base.clone();
    moved.extend_from_slice(b":2,FRS");
    assert_eq!(fuzz_name(&moved).uidl, *uidl);

    if let Some(seen) = &parsed.seen_name {
        let again = fuzz_name(seen);
        assert_eq!(again.base, parsed.base);
        assert_eq!(again.uidl, *uidl);
        let flags = &seen[parsed.base.len()..];
        let flags = flags.strip_prefix(b":2,").expect("seen name has :2,");
        assert!(flags.contains(&b'S'));
        assert!(flags.windows(2).all(|w| w[0] < w[1]), "{flags:?}");
        // Already seen: nothing more to rename.
        assert_eq!(again.seen_name, None);
    }
});
