//! Fuzz target: an mbox spool, which its owner (and anyone who can mail
//! them) writes. The first byte picks the chunk size. The messages found
//! are the same however the file is chunked; they are in file order,
//! within the file, each after its own `From ` line; each size is the
//! canonical (CRLF) size of exactly the octets a client is sent; UIDLs are
//! unique, 1-70 characters in 0x21..=0x7E; octets before the first `From `
//! line are counted, never lost.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailbag::store::mbox::parse::{parse, uidls, Parser};
use mailbag_proto::dot::canonical_size;

fuzz_target!(|input: &[u8]| {
    let Some((&first, data)) = input.split_first() else {
        return;
    };
    let (entries, junk) = parse(data);
    let mut p = Parser::new();
    for chunk in data.chunks(usize::from(first % 64) + 1) {
        p.feed(chunk);
    }
    assert_eq!(p.finish(), (entries.clone(), junk));
    let len = data.len() as u64;
    let mut previous_end = junk;
    for e in &entries {
        assert!(e.from >= previous_end && e.from < e.start && e.start <= e.end && e.end <= len);
        assert!(data[e.from as usize..].starts_with(b"From "));
        let shown = &data[e.start as usize..e.end as usize];
        assert_eq!(e.size, canonical_size(shown));
        previous_end = e.end;
    }
    assert_eq!(junk, entries.first().map_or(junk, |e| e.from));
    let ids = uidls(&entries);
    let mut sorted = ids.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), ids.len());
    for id in &ids {
        assert!((1..=70).contains(&id.len()), "{id}");
        assert!(id.bytes().all(|b| (0x21..=0x7e).contains(&b)), "{id}");
    }
});
