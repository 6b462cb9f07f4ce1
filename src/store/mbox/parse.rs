//! The mbox parser: a byte stream in, in chunks of any size, the messages'
//! places and sizes out. Pure: no IO, so the fuzz target and the unit
//! tests drive it directly.
//!
//! The format, as Postfix `local(8)`, procmail and mutt write it: a
//! message starts at a line beginning `From ` that is the file's first
//! line or follows an empty line (`\n` or `\r\n`); that `From_` line is
//! the separator, not part of the message; the empty line before the next
//! `From_` line (or the last empty line of the file) belongs to the format,
//! not to the message. `>From ` lines are shown as stored (mboxo and
//! mboxrd files cannot be told apart, so unquoting could change a message
//! whose body really says `>From `; Dovecot shows them as stored too).
//! `Content-Length:` is not read. Text before the first `From_` line is no
//! message: it is counted as one unreadable message and kept as it is.
//!
//! Memory is bounded whatever the input: per message, a fixed-size entry;
//! per line, at most [`KEPT_LINE_OCTETS`] octets are kept (for the header
//! digest and `X-UIDL:`), however long the line is.

use sha2::{Digest, Sha256};

/// Octets of one header line kept for the digest and `X-UIDL:`; the rest of
/// a longer line still counts for its size, it is only not hashed.
pub const KEPT_LINE_OCTETS: usize = 1000;
/// The longest `X-UIDL:` value taken as the UIDL (RFC 1939 allows 70
/// characters; room is left for a `-N` suffix among equal values).
pub const MAX_X_UIDL_OCTETS: usize = 60;

/// Header fields that mail readers rewrite in place (read flags, IMAP
/// state, lengths): left out of the digest, so that mutt marking a message
/// read does not change its UIDL.
const VOLATILE: &[&[u8]] = &[
    b"status",
    b"x-status",
    b"x-keywords",
    b"x-uid",
    b"x-imap",
    b"x-imapbase",
    b"content-length",
    b"lines",
    b"x-mozilla-status",
    b"x-mozilla-status2",
];

/// One message found in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Offset of its `From_` line: the message and its separator run from
    /// here to the next message's `from` (or the end of what was parsed).
    pub from: u64,
    /// Offset of its first octet (after the `From_` line).
    pub start: u64,
    /// Offset just past its last octet (the separator's empty line is
    /// not included).
    pub end: u64,
    /// Its size in CRLF octets, as STAT and LIST report it.
    pub size: u64,
    /// SHA-256 of the `From_` line and the header lines other than the
    /// volatile ones (each at most [`KEPT_LINE_OCTETS`]), truncated.
    pub digest: [u8; 16],
    /// The value of its first `X-UIDL:` header, when that is a usable UIDL
    /// (1 to [`MAX_X_UIDL_OCTETS`] octets of 0x21..=0x7E).
    pub x_uidl: Option<String>,
}

/// The message being read.
#[derive(Debug)]
struct Current {
    from: u64,
    start: u64,
    size: u64,
    in_headers: bool,
    /// The header line being continued is hashed.
    hashing: bool,
    hasher: Sha256,
    x_uidl: Option<String>,
    /// An `X-UIDL:` header was seen (only the first counts).
    x_uidl_seen: bool,
}

/// What the parser has made of a file so far.
#[derive(Debug)]
pub struct Parser {
    /// Offset of the next octet fed.
    pos: u64,
    /// Offset where the current line started.
    line_start: u64,
    /// The current line's first octets (at most [`KEPT_LINE_OCTETS`]).
    line: Vec<u8>,
    /// The current line's last octet and the one before it.
    last: [Option<u8>; 2],
    /// The previous line was empty; its start and CRLF size.
    prev_empty: Option<(u64, u64)>,
    current: Option<Current>,
    entries: Vec<Entry>,
    /// Octets before the first `From_` line.
    junk: u64,
}

impl Default for Parser {
    fn default() -> Self {
        Parser::new()
    }
}

impl Parser {
    /// A parser at offset 0.
    pub fn new() -> Self {
        Parser {
            pos: 0,
            line_start: 0,
            line: Vec::new(),
            last: [None, None],
            prev_empty: None,
            current: None,
            entries: Vec::new(),
            junk: 0,
        }
    }

    /// The messages completed so far (the last one is completed by
    /// [`Parser::finish`]).
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Parses the next octets of the file.
    pub fn feed(&mut self, mut chunk: &[u8]) {
        while !chunk.is_empty() {
            let (part, ended) = match memchr::memchr(b'\n', chunk) {
                Some(i) => (&chunk[..=i], true),
                None => (chunk, false),
            };
            let room = self.keep().saturating_sub(self.line.len());
            self.line.extend_from_slice(&part[..part.len().min(room)]);
            match part {
                [.., a, b] => self.last = [Some(*a), Some(*b)],
                [b] => self.last = [self.last[1], Some(*b)],
                [] => {}
            }
            self.pos += part.len() as u64;
            chunk = &chunk[part.len()..];
            if ended {
                self.end_line();
            }
        }
    }

    /// How much of the current line is worth keeping: a header line or a
    /// possible `From_` line whole (up to [`KEPT_LINE_OCTETS`]), for the
    /// digest; of any other line only what tells an empty line or a
    /// `From ` line, so body octets are not copied.
    fn keep(&self) -> usize {
        let may_start = self.line_start == 0 || self.prev_empty.is_some();
        if may_start || self.current.as_ref().is_some_and(|c| c.in_headers) {
            KEPT_LINE_OCTETS
        } else {
            5
        }
    }

    /// Parses `n` zero octets (a hole in a sparse file) in constant time:
    /// the same as feeding them.
    pub fn feed_zeros(&mut self, n: u64) {
        if n == 0 {
            return;
        }
        let room = self.keep().saturating_sub(self.line.len());
        let kept = usize::try_from(n).map_or(room, |n| n.min(room));
        self.line.resize(self.line.len() + kept, 0);
        self.last = if n >= 2 {
            [Some(0), Some(0)]
        } else {
            [self.last[1], Some(0)]
        };
        self.pos += n;
    }

    /// Ends the file: a last line without LF counts as a line, and the
    /// last message is completed. Returns the messages and the count of
    /// octets before the first `From_` line.
    pub fn finish(mut self) -> (Vec<Entry>, u64) {
        if self.pos > self.line_start {
            self.end_line();
        }
        self.close(self.pos);
        (self.entries, self.junk)
    }

    fn end_line(&mut self) {
        let start = self.line_start;
        let len = self.pos - start;
        let ends_lf = self.last[1] == Some(b'\n');
        // The line's CRLF size: an LF not after a CR gains one; a last line
        // without LF gains CRLF only at the message's end (see `close`).
        let crlf = len + u64::from(ends_lf && self.last[0] != Some(b'\r'));
        let line = std::mem::take(&mut self.line);
        let empty = line == b"\n" || line == b"\r\n";
        let separator_ok = start == 0 || self.prev_empty.is_some();
        if separator_ok && line.starts_with(b"From ") {
            self.close(start);
            let mut hasher = Sha256::new();
            hasher.update(&line);
            self.current = Some(Current {
                from: start,
                start: start + len,
                size: 0,
                in_headers: true,
                hashing: false,
                hasher,
                x_uidl: None,
                x_uidl_seen: false,
            });
            self.prev_empty = None;
        } else if let Some(cur) = &mut self.current {
            cur.size += crlf;
            if !ends_lf {
                // Only ever the file's last line: the message gains a CRLF.
                cur.size += 2;
            }
            if cur.in_headers {
                if empty {
                    cur.in_headers = false;
                } else if matches!(line.first(), Some(b' ' | b'\t')) {
                    if cur.hashing {
                        cur.hasher.update(&line);
                    }
                } else {
                    let name_end = memchr::memchr(b':', &line).unwrap_or(line.len());
                    let name = &line[..name_end];
                    cur.hashing = !VOLATILE.iter().any(|v| name.eq_ignore_ascii_case(v));
                    if cur.hashing {
                        cur.hasher.update(&line);
                    }
                    if name.eq_ignore_ascii_case(b"x-uidl") && !cur.x_uidl_seen {
                        cur.x_uidl_seen = true;
                        cur.x_uidl = x_uidl(line.get(name_end + 1..).unwrap_or_default());
                    }
                }
            }
            self.prev_empty = empty.then_some((start, crlf));
        } else {
            self.junk = self.pos;
            self.prev_empty = empty.then_some((start, crlf));
        }
        self.line_start = self.pos;
        self.line = line;
        self.line.clear();
        self.last = [None, None];
    }

    /// Completes the current message, which ends at `end` (before the
    /// empty separator line, when there is one).
    fn close(&mut self, end: u64) {
        let Some(cur) = self.current.take() else {
            return;
        };
        let mut size = cur.size;
        let mut end = end;
        if let Some((at, crlf)) = self.prev_empty {
            if at >= cur.start {
                // The empty line before the end is the separator.
                size -= crlf;
                end = at;
            }
        }
        let hash = cur.hasher.finalize();
        let mut digest = [0u8; 16];
        digest.copy_from_slice(&hash[..16]);
        self.entries.push(Entry {
            from: cur.from,
            start: cur.start,
            end: end.max(cur.start),
            size,
            digest,
            x_uidl: cur.x_uidl,
        });
    }
}

/// The UIDL an `X-UIDL:` value gives, if usable.
fn x_uidl(value: &[u8]) -> Option<String> {
    let value = value.trim_ascii();
    let usable = !value.is_empty()
        && value.len() <= MAX_X_UIDL_OCTETS
        && value.iter().all(|b| (0x21..=0x7e).contains(b));
    usable.then(|| String::from_utf8_lossy(value).into_owned())
}

/// Parses a whole file held in memory.
pub fn parse(data: &[u8]) -> (Vec<Entry>, u64) {
    let mut p = Parser::new();
    p.feed(data);
    p.finish()
}

/// The UIDLs of `entries`, in order: a message's `X-UIDL:` where it has a
/// usable one, else its digest in hex; the second and later messages with
/// the same value get `-2`, `-3`, ... so that every UIDL is unique.
pub fn uidls(entries: &[Entry]) -> Vec<String> {
    use std::collections::{HashMap, HashSet};
    let mut uids: Vec<String> = entries
        .iter()
        .map(|e| e.x_uidl.clone().unwrap_or_else(|| hex(&e.digest)))
        .collect();
    // The usual spool has no two equal values: one pass that borrows
    // them tells, without copying each into the set.
    let distinct: HashSet<&str> = uids.iter().map(String::as_str).collect();
    if distinct.len() == uids.len() {
        return uids;
    }
    drop(distinct);
    let mut issued: HashSet<String> = HashSet::with_capacity(uids.len());
    let mut next: HashMap<String, u64> = HashMap::new();
    for uid in &mut uids {
        if issued.contains(uid.as_str()) {
            // Another message's `X-UIDL:` may already be `base-2`: the
            // next suffix not yet issued.
            let base = std::mem::take(uid);
            let n = next.entry(base.clone()).or_insert(1);
            loop {
                *n += 1;
                *uid = format!("{base}-{n}");
                if !issued.contains(uid.as_str()) {
                    break;
                }
            }
        }
        issued.insert(uid.clone());
    }
    uids
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use mailbag_proto::dot::canonical_size;

    fn bodies(data: &[u8]) -> Vec<Vec<u8>> {
        let (entries, _) = parse(data);
        entries
            .iter()
            .map(|e| data[e.start as usize..e.end as usize].to_vec())
            .collect()
    }

    /// Every split of the input into chunks gives the same result.
    fn check_chunked(data: &[u8]) {
        let whole = parse(data);
        for step in [1, 2, 3, 7, 64] {
            let mut p = Parser::new();
            for c in data.chunks(step) {
                p.feed(c);
            }
            assert_eq!(p.finish(), whole, "step {step}");
        }
    }

    #[test]
    fn splits_at_from_lines_after_empty_lines_and_drops_the_separator() {
        let data = b"From a@b Mon Jan  1 00:00:00 2024\nSubject: 1\n\nbody\nFrom inside\n\n\
From c@d Mon Jan  1 00:00:00 2024\nSubject: 2\n\n>From quoted\n\n";
        assert_eq!(
            bodies(data),
            vec![
                b"Subject: 1\n\nbody\nFrom inside\n".to_vec(),
                b"Subject: 2\n\n>From quoted\n".to_vec()
            ]
        );
        check_chunked(data);
    }

    #[test]
    fn sizes_are_the_canonical_sizes_of_the_shown_bytes() {
        for data in [
            &b"From x\nA: b\n\nno newline at the end"[..],
            b"From x\r\nA: b\r\n\r\nbody\r\n\r\nFrom y\r\n\r\nz\r\n\r\n",
            b"From x\n\n\n\nFrom y\nbare\rcr\n\n",
            b"From x\n",
            b"From x\n\n",
            b"From x",
            b"junk\nFrom not a separator\n\nFrom x\nA: b\n\nc\n",
        ] {
            let (entries, _) = parse(data);
            for e in &entries {
                let shown = &data[e.start as usize..e.end as usize];
                assert_eq!(
                    e.size,
                    canonical_size(shown),
                    "{:?}",
                    String::from_utf8_lossy(data)
                );
            }
            check_chunked(data);
        }
    }

    #[test]
    fn text_before_the_first_from_line_is_junk_and_an_empty_file_is_empty() {
        let data = b"junk\n\nFrom x\n\nbody\n";
        let (entries, junk) = parse(data);
        assert_eq!(junk, 6);
        assert_eq!(entries.len(), 1);
        assert_eq!(parse(b""), (vec![], 0));
    }

    #[test]
    fn uidls_come_from_x_uidl_or_the_headers_and_are_unique() {
        let data = b"From a\nX-UIDL: abc123\nSubject: s\n\nx\n\n\
From a\nX-UIDL:  abc123 \n\ny\n\n\
From b\nSubject: same\nStatus: RO\n\nz\n\n\
From b\nSubject: same\n\nother body\n\n\
From c\nX-UIDL: has space inside\n\n\
From d\nX-UIDL: abc123-2\n\n";
        let (entries, _) = parse(data);
        let u = uidls(&entries);
        assert_eq!(u[0], "abc123");
        assert_eq!(u[1], "abc123-2");
        // Status is volatile: the two `From b` messages have equal digests.
        assert_eq!(u[3], format!("{}-2", u[2]));
        assert_eq!(u[4].len(), 32);
        // Taken by message 2 already: the next free suffix.
        assert_eq!(u[5], "abc123-2-2");
        let mut sorted = u.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), u.len());
    }

    #[test]
    fn zeros_fed_as_a_hole_parse_as_zeros_fed_as_octets() {
        for (before, zeros, after) in [
            (&b"From x\nA: "[..], 5usize, &b"\n\nbody\n"[..]),
            (b"From x\n\n", 1, b"\n\nFrom y\n\nz"),
            (b"", 3, b"\nFrom x\n\n"),
            (b"From x\n\nab", 2000, b""),
        ] {
            let mut a = Parser::new();
            a.feed(before);
            a.feed_zeros(zeros as u64);
            a.feed(after);
            let mut b = Parser::new();
            b.feed(before);
            b.feed(&vec![0; zeros]);
            b.feed(after);
            assert_eq!(a.finish(), b.finish());
        }
    }

    #[test]
    fn a_huge_line_keeps_memory_bounded() {
        let mut data = b"From x\nSubject: ".to_vec();
        data.extend(std::iter::repeat_n(b'a', 5 << 20));
        data.extend_from_slice(b"\n\nbody\n");
        let mut p = Parser::new();
        for c in data.chunks(4096) {
            p.feed(c);
            assert!(p.line.capacity() <= 2 * KEPT_LINE_OCTETS + 4096);
        }
        let (entries, _) = p.finish();
        assert_eq!(entries[0].size, canonical_size(&data[7..]));
    }
}
