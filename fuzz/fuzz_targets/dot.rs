//! Fuzz target: the multi-line body transforms. Stuffing then unstuffing
//! gives the canonical form back, the terminator is found exactly at the
//! end, SizeCounter and the stuffer's own counts agree with the canonical
//! length however the message is chunked, the LF form keeps the canonical
//! form, and TOP's output is a prefix of RETR's.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailbag_proto::dot::{self, SizeCounter, Stuffer, Unstuffer};

fuzz_target!(|data: &[u8]| {
    let Some((&control, message)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(control) % 31 + 1;
    let canonical = dot::canonicalize(message);
    assert_eq!(dot::canonical_size(message), canonical.len() as u64);
    assert!(canonical.is_empty() || canonical.ends_with(b"\r\n"));

    let mut counter = SizeCounter::new();
    for part in message.chunks(chunk) {
        counter.feed(part);
    }
    assert_eq!(counter.finish(), canonical.len() as u64);

    // RETR, fed in chunks: its own count is the canonical size of what
    // it was fed, and the least size any continuation could give is never
    // above the final size and reached by ending the message or a line.
    let mut stuffer = Stuffer::new();
    let mut wire = Vec::new();
    let mut fed = 0;
    for part in message.chunks(chunk) {
        assert!(!stuffer.feed(part, &mut wire));
        fed += part.len();
        let so_far = &message[..fed];
        assert_eq!(stuffer.canonical_size(), dot::canonical_size(so_far));
        let least = stuffer.canonical_at_least();
        assert!(least <= canonical.len() as u64);
        let ended = dot::canonical_size(so_far);
        let lf = dot::canonical_size(&[so_far, b"\n"].concat());
        assert_eq!(least, ended.min(lf));
    }
    stuffer.finish(&mut wire);
    assert_eq!(stuffer.canonical_size(), canonical.len() as u64);

    // The canonical form without a copy, and back to LF ends with the same
    // canonical form.
    assert_eq!(dot::into_canonical(message.to_vec()), canonical);
    assert_eq!(
        dot::canonicalize(&dot::with_lf_line_ends(message)),
        canonical
    );
    stuffer.finish(&mut wire);
    assert!(wire.ends_with(b".\r\n"));
    // Every LF on the wire ends a CRLF (a bare CR stays as data).
    for (i, &b) in wire.iter().enumerate() {
        if b == b'\n' {
            assert!(i > 0 && wire[i - 1] == b'\r', "bare LF at {i}");
        }
    }

    // And back, with a pipelined command after the terminator.
    let mut stream = wire.clone();
    stream.extend_from_slice(b"QUIT\r\n");
    let mut unstuffer = Unstuffer::new();
    let mut decoded = Vec::new();
    let mut used = 0;
    let mut done = false;
    for part in stream.chunks(chunk) {
        let (n, d) = unstuffer.feed(part, &mut decoded);
        used += n;
        if d {
            done = true;
            break;
        }
        assert_eq!(n, part.len());
    }
    assert!(done, "terminator not found");
    assert_eq!(used, wire.len(), "terminator found at the wrong place");
    assert_eq!(decoded, canonical);

    // TOP: a prefix of RETR's body, then the terminator.
    let lines = u64::from(control % 5);
    let mut top = Stuffer::top(lines);
    let mut top_wire = Vec::new();
    for part in message.chunks(chunk) {
        if top.feed(part, &mut top_wire) {
            break;
        }
    }
    top.finish(&mut top_wire);
    let body = &top_wire[..top_wire.len() - 3];
    assert!(wire.starts_with(body), "TOP is not a prefix of RETR");
    assert!(top_wire.ends_with(b".\r\n"));
});
