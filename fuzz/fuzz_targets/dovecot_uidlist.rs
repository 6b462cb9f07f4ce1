//! Fuzz target: Dovecot's `dovecot-uidlist` (the mailbox owner can write
//! it) and `pop3_uidl_format` templates. The input's first line is a
//! template, the rest the file. Templates are refused as values; a parsed
//! file's records have strictly rising UIDs, ranges inside the input,
//! bases that are plain file names without ':' and each listed once; an
//! expansion is bounded.
#![no_main]

use std::collections::HashSet;

use libfuzzer_sys::fuzz_target;
use mailbag::store::maildir::{
    parse_dovecot_uidlist, DovecotUidlFormat, DOVECOT_DEFAULT_UIDL_FORMAT,
};

fuzz_target!(|bytes: &[u8]| {
    let (first, file) = match bytes.iter().position(|&b| b == b'\n') {
        Some(i) => (&bytes[..i], &bytes[i + 1..]),
        None => (bytes, &[][..]),
    };
    let template = std::str::from_utf8(first)
        .ok()
        .and_then(|t| DovecotUidlFormat::parse(t).ok())
        .unwrap_or_else(|| DovecotUidlFormat::parse(DOVECOT_DEFAULT_UIDL_FORMAT).unwrap());
    let Some(list) = parse_dovecot_uidlist(file) else {
        return;
    };
    assert!(list.version == 1 || list.version == 3);
    assert!(list.uid_validity > 0);
    let mut bases = HashSet::new();
    let mut prev = 0;
    for r in &list.records {
        assert!(r.uid > prev);
        prev = r.uid;
        let base = &file[r.base.clone()];
        assert!((1..=255).contains(&base.len()) && base[0] != b'.');
        assert!(!base
            .iter()
            .any(|&b| b == b'/' || b == 0 || b == b':' || b == b'\n'));
        assert!(bases.insert(base), "a base twice");
        let guid = r.guid.clone().map(|g| &file[g]);
        if let Some(p) = r.pop3_uidl.clone() {
            assert!(!file[p].contains(&b' '));
        }
        let out = template.expand(r.uid, list.uid_validity, base, guid);
        assert!(out.len() <= 4096 + 8192, "{}", out.len());
    }
});
