//! Fuzz target: the `X-UIDL:` header of a message (its sender chooses
//! it). A UIDL found is 1-70 octets of 0x21-0x7E, and the same when
//! only the first 64 KiB of the input are given.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailbag::store::maildir::parse_x_uidl;

fuzz_target!(|bytes: &[u8]| {
    let Some(uidl) = parse_x_uidl(bytes) else {
        return;
    };
    assert!((1..=70).contains(&uidl.len()));
    assert!(uidl.bytes().all(|b| (0x21..=0x7E).contains(&b)));
    let head = &bytes[..bytes.len().min(64 << 10)];
    assert_eq!(parse_x_uidl(head), Some(uidl));
});
