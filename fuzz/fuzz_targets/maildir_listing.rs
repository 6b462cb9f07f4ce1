//! Fuzz target: `mailbag.listing`, the listing cache a mailbox owner can
//! rewrite at will. Any bytes are either no listing or a listing whose
//! every name is one plain file name (1 to 255 octets, no '/', NUL or
//! newline, not "." or "..", not a dotfile), never more names than the
//! input could hold, and written back in the same format it parses the
//! same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailbag::store::maildir::parse_listing;

fuzz_target!(|bytes: &[u8]| {
    let Some(listing) = parse_listing(bytes) else {
        return;
    };
    assert!(listing.names.len() <= bytes.len() / 3);
    let mut total = 0;
    for (_, name) in &listing.names {
        assert!((1..=255).contains(&name.len()), "{name:?}");
        assert!(!name.contains(&b'/') && !name.contains(&0) && !name.contains(&b'\n'));
        assert!(name[0] != b'.', "{name:?}");
        total += name.len() + 3;
    }
    assert!(total <= bytes.len());
    let mut again = format!(
        "mailbag-listing 1\n{} {} {} {}\n",
        listing.new,
        listing.cur,
        listing.listed,
        listing.names.len()
    )
    .into_bytes();
    for (in_cur, name) in &listing.names {
        again.extend_from_slice(if *in_cur { b"C " } else { b"N " });
        again.extend_from_slice(name);
        again.push(b'\n');
    }
    again.extend_from_slice(b".\n");
    assert_eq!(parse_listing(&again).as_ref(), Some(&listing));
});
