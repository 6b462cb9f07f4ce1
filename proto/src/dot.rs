//! The multi-line body transform of RFC 1939 §3 and the exact sizes it
//! implies.
//!
//! This module owns:
//!
//! - the canonical form of a stored message: every LF not preceded by CR
//!   becomes CRLF, CRLF stays, a bare CR stays as data, and a non-empty
//!   message that does not end in LF gets a final CRLF. Its length is the size
//!   STAT and LIST report (RFC 1939 §5) and exactly what RETR sends before
//!   stuffing ([`SizeCounter`], [`canonical_size`], [`canonicalize`]);
//! - the wire form of a RETR or TOP body (RFC 1939 §3, §7 TOP): the canonical
//!   form, dot-stuffed, then the terminating `.` line ([`Stuffer`]);
//! - the decoder for dot-stuffed data ended by CRLF.CRLF, as LMTP DATA sends
//!   it (RFC 5321 §4.5.2, RFC 2033 §4.2) ([`Unstuffer`]).
//!
//! Messages are 8-bit clean. Everything works across arbitrary chunk
//! boundaries. No IO: the driver pipes the store's reader through these.

const LF: u8 = b'\n';
const CR: u8 = b'\r';
const DOT: u8 = b'.';

/// Counts the canonical (CRLF) size of a message fed in chunks.
#[derive(Debug, Clone, Default)]
pub struct SizeCounter {
    /// Canonical octets so far, not counting a final CRLF still to add.
    octets: u64,
    /// The last byte fed, if any.
    last: Option<u8>,
}

impl SizeCounter {
    /// A counter for an empty message.
    pub fn new() -> Self {
        SizeCounter::default()
    }

    /// Counts the next chunk of the message as stored.
    pub fn feed(&mut self, chunk: &[u8]) {
        let mut prev = self.last;
        let mut rest = chunk;
        // Every LF not preceded by CR gains a CR.
        while let Some(i) = memchr::memchr(LF, rest) {
            let before = if i > 0 { Some(rest[i - 1]) } else { prev };
            if before != Some(CR) {
                self.octets += 1;
            }
            prev = Some(LF);
            rest = &rest[i + 1..];
        }
        self.octets += chunk.len() as u64;
        if let Some(&last) = chunk.last() {
            self.last = Some(last);
        }
    }

    /// The canonical size of everything fed.
    pub fn finish(self) -> u64 {
        match self.last {
            Some(LF) | None => self.octets,
            // A non-empty message that does not end in LF gets a CRLF.
            Some(_) => self.octets + 2,
        }
    }
}

/// The canonical (CRLF) size of `message`, as STAT and LIST report it.
pub fn canonical_size(message: &[u8]) -> u64 {
    let mut counter = SizeCounter::new();
    counter.feed(message);
    counter.finish()
}

/// The canonical form of `message`: CRLF line endings, ending in CRLF unless
/// empty. Bare CRs stay as data.
pub fn canonicalize(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + message.len() / 32 + 2);
    let mut rest = message;
    let mut prev = None;
    while let Some(i) = memchr::memchr(LF, rest) {
        let before = if i > 0 { Some(rest[i - 1]) } else { prev };
        out.extend_from_slice(&rest[..i]);
        out.extend_from_slice(if before == Some(CR) { b"\n" } else { b"\r\n" });
        prev = Some(LF);
        rest = &rest[i + 1..];
    }
    out.extend_from_slice(rest);
    if !rest.is_empty() {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// `message` in canonical form, as [`canonicalize`] gives it, without a
/// copy when it already is (as mail that came over LMTP usually is).
pub fn into_canonical(message: Vec<u8>) -> Vec<u8> {
    let ends_a_line = message.last().is_none_or(|&last| last == LF);
    let every_lf_after_cr =
        memchr::memchr_iter(LF, &message).all(|i| i > 0 && message[i - 1] == CR);
    if ends_a_line && every_lf_after_cr {
        message
    } else {
        canonicalize(&message)
    }
}

/// `message` with Unix line ends, as mail files hold it: a CR that only
/// makes a line end CRLF goes. The inverse of [`canonicalize`] for mail
/// with LF ends, and for any message the canonical form (so the POP3
/// size) stays what it was: a CR after a CR is data and stays.
pub fn with_lf_line_ends(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len());
    let mut run = 0;
    for i in memchr::memchr_iter(LF, message) {
        let Some(cr) = i.checked_sub(1) else {
            continue;
        };
        let ending_only = message[cr] == CR && (cr == 0 || message[cr - 1] != CR);
        if ending_only {
            out.extend_from_slice(&message[run..cr]);
            run = i;
        }
    }
    out.extend_from_slice(&message[run..]);
    out
}

/// How much of the message a [`Stuffer`] sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Extent {
    /// RETR: everything.
    Whole,
    /// TOP, in the headers: after the blank line, send `body_lines` more.
    Header { body_lines: u64 },
    /// TOP, in the body: `remaining` lines (at least one) still to send.
    Body { remaining: u64 },
    /// TOP reached its limit.
    Done,
}

/// What the current line holds so far, to find the blank line ending the
/// headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LineSoFar {
    /// Nothing.
    Empty,
    /// Just a CR, so CRLF would make it blank.
    Cr,
    /// Anything else.
    Text,
}

/// Streams a message (as stored, any line endings) into the wire form of a
/// RETR or TOP body: canonical form, dot-stuffed (a line starting with `.`
/// gets one more `.`), then the terminating `.\r\n` (RFC 1939 §3).
#[derive(Debug, Clone)]
pub struct Stuffer {
    extent: Extent,
    /// The next byte starts a line (true before the first byte).
    at_line_start: bool,
    /// The last byte fed was a CR (already sent).
    prev_cr: bool,
    line_so_far: LineSoFar,
    finished: bool,
    /// Canonical octets appended so far (stuffing dots and the terminator
    /// not counted).
    canonical: u64,
}

impl Default for Stuffer {
    fn default() -> Self {
        Stuffer::new()
    }
}

impl Stuffer {
    /// A transform for the whole message (RETR).
    pub fn new() -> Self {
        Stuffer::with_extent(Extent::Whole)
    }

    /// A transform for TOP (RFC 1939 §7): the header lines, the blank line
    /// that ends them, then at most `body_lines` lines of the body. A message
    /// with no blank line is all header and is sent whole.
    pub fn top(body_lines: u64) -> Self {
        Stuffer::with_extent(Extent::Header { body_lines })
    }

    fn with_extent(extent: Extent) -> Self {
        Stuffer {
            extent,
            at_line_start: true,
            prev_cr: false,
            line_so_far: LineSoFar::Empty,
            finished: false,
            canonical: 0,
        }
    }

    /// The canonical size of the input fed so far, as if it ended here
    /// (with the final CRLF that [`Stuffer::finish`] adds to a message not
    /// ending in LF): what [`canonical_size`] gives for that input, counted
    /// on the way, so that a RETR can check the size it announced without
    /// a second pass over the message.
    pub fn canonical_size(&self) -> u64 {
        if self.at_line_start || self.finished {
            self.canonical
        } else {
            self.canonical + 2
        }
    }

    /// The least canonical size that any message beginning with the input
    /// fed so far can have: the octets counted, plus the line end still to
    /// come (one octet, an LF, after a CR; two otherwise). A RETR whose
    /// announced size is below it can stop at once: no continuation of the
    /// message makes it that size again. [`Stuffer::canonical_size`]
    /// counts ahead by up to two octets more, and does not tell this.
    pub fn canonical_at_least(&self) -> u64 {
        if self.at_line_start || self.finished {
            self.canonical
        } else if self.prev_cr {
            self.canonical + 1
        } else {
            self.canonical + 2
        }
    }

    /// Appends the transformed form of `input` to `out`. Returns true once the
    /// transform needs no more input (TOP reached its limit); further input is
    /// ignored.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> bool {
        if self.extent == Extent::Whole && !self.finished {
            self.feed_whole(input, out);
            return false;
        }
        let appended = out.len();
        let mut dots = 0;
        let mut rest = input;
        while !rest.is_empty() {
            if self.extent == Extent::Done || self.finished {
                break;
            }
            if self.at_line_start {
                self.at_line_start = false;
                // RFC 1939 §3: byte-stuff lines that begin with the
                // termination octet.
                if rest[0] == DOT {
                    out.push(DOT);
                    dots += 1;
                }
            }
            let Some(i) = memchr::memchr(LF, rest) else {
                out.extend_from_slice(rest);
                self.note_text(rest);
                self.prev_cr = rest[rest.len() - 1] == CR;
                break;
            };
            let text = &rest[..i];
            out.extend_from_slice(text);
            self.note_text(text);
            let cr_before = if i > 0 {
                text[i - 1] == CR
            } else {
                self.prev_cr
            };
            out.extend_from_slice(if cr_before { b"\n" } else { b"\r\n" });
            self.end_line();
            rest = &rest[i + 1..];
        }
        self.canonical += (out.len() - appended - dots) as u64;
        self.extent == Extent::Done
    }

    /// RETR's transform. Unchanged input is copied in runs, broken only
    /// where a CR or a dot goes in: a message stored with CRLF endings and
    /// no line starting with a dot is one copy, and one stored with LF
    /// endings costs a copy per line, with no per-line bookkeeping.
    fn feed_whole(&mut self, input: &[u8], out: &mut Vec<u8>) {
        let Some(&last) = input.last() else {
            return;
        };
        // Room for LF endings on lines of 16 octets or more, in one go.
        out.reserve(input.len() + input.len() / 8 + 1);
        let appended = out.len();
        let mut dots = 0;
        if self.at_line_start && input[0] == DOT {
            out.push(DOT);
            dots += 1;
        }
        // input[run..] is not copied yet.
        let mut run = 0;
        for i in memchr::memchr_iter(LF, input) {
            let cr_before = match i.checked_sub(1) {
                Some(before) => input[before] == CR,
                None => self.prev_cr,
            };
            if !cr_before {
                out.extend_from_slice(&input[run..i]);
                out.extend_from_slice(b"\r\n");
                run = i + 1;
            }
            if input.get(i + 1) == Some(&DOT) {
                out.extend_from_slice(&input[run..=i]);
                out.push(DOT);
                dots += 1;
                run = i + 1;
            }
        }
        out.extend_from_slice(&input[run..]);
        self.canonical += (out.len() - appended - dots) as u64;
        self.at_line_start = last == LF;
        self.prev_cr = last == CR;
    }

    /// Ends the body: appends CRLF if the canonical form needs one (non-empty
    /// output not ending in LF), then `.\r\n`. Calls after the first append
    /// nothing.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        if self.finished {
            return;
        }
        self.finished = true;
        if !self.at_line_start {
            out.extend_from_slice(b"\r\n");
            self.canonical += 2;
        }
        out.extend_from_slice(b".\r\n");
    }

    /// Tracks whether the current line could still be blank; only TOP asks.
    fn note_text(&mut self, text: &[u8]) {
        self.line_so_far = match (self.line_so_far, text) {
            (_, []) => self.line_so_far,
            (LineSoFar::Empty, [CR]) => LineSoFar::Cr,
            _ => LineSoFar::Text,
        };
    }

    /// A line ended (its LF was sent): count it for TOP.
    fn end_line(&mut self) {
        let blank = self.line_so_far != LineSoFar::Text;
        self.at_line_start = true;
        self.prev_cr = false;
        self.line_so_far = LineSoFar::Empty;
        self.extent = match self.extent {
            Extent::Header { body_lines: 0 } if blank => Extent::Done,
            Extent::Header { body_lines } if blank => Extent::Body {
                remaining: body_lines,
            },
            Extent::Body { remaining: 1 } => Extent::Done,
            Extent::Body { remaining } => Extent::Body {
                remaining: remaining - 1,
            },
            other => other,
        };
    }
}

/// Where an [`Unstuffer`] is within a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum UnstuffState {
    /// At the start of a line.
    LineStart,
    /// After a `.` that began a line (held back).
    Dot,
    /// After `.` CR at the start of a line (both held back).
    DotCr,
    /// Inside a line.
    Text,
    /// The terminator was consumed.
    Done,
}

/// Decoder for dot-stuffed data terminated by CRLF.CRLF (LMTP DATA, RFC 5321
/// §4.5.2): strips the leading dot of stuffed lines and stops at the
/// terminator.
///
/// Lenient as receivers should be: a bare LF ends a line too, so `.` LF also
/// terminates. Line endings are kept as they came.
#[derive(Debug, Clone)]
pub struct Unstuffer {
    state: UnstuffState,
}

impl Default for Unstuffer {
    fn default() -> Self {
        Unstuffer::new()
    }
}

impl Unstuffer {
    /// A decoder at the start of the data (the first line start).
    pub fn new() -> Self {
        Unstuffer {
            state: UnstuffState::LineStart,
        }
    }

    /// Consumes bytes from `input`, appending decoded message bytes to `out`.
    /// Returns (bytes_consumed, done). When done is true the terminator was
    /// consumed and bytes after it (a pipelined command) are NOT consumed.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> (usize, bool) {
        let mut pos = 0;
        while pos < input.len() {
            let byte = input[pos];
            match self.state {
                UnstuffState::Done => break,
                UnstuffState::LineStart if byte == DOT => {
                    pos += 1;
                    self.state = UnstuffState::Dot;
                }
                UnstuffState::Dot | UnstuffState::DotCr if byte == LF => {
                    pos += 1;
                    self.state = UnstuffState::Done;
                }
                UnstuffState::Dot if byte == CR => {
                    pos += 1;
                    self.state = UnstuffState::DotCr;
                }
                UnstuffState::DotCr => {
                    // ". CR x": not the terminator; the leading dot goes, the
                    // CR is data.
                    out.push(CR);
                    self.state = UnstuffState::Text;
                }
                // RFC 5321 §4.5.2: a line that begins with a period and has
                // more on it loses that first period.
                UnstuffState::LineStart | UnstuffState::Dot | UnstuffState::Text => {
                    let rest = &input[pos..];
                    match memchr::memchr(LF, rest) {
                        None => {
                            out.extend_from_slice(rest);
                            pos = input.len();
                            self.state = UnstuffState::Text;
                        }
                        Some(i) => {
                            out.extend_from_slice(&rest[..=i]);
                            pos += i + 1;
                            self.state = UnstuffState::LineStart;
                        }
                    }
                }
            }
        }
        (pos, self.state == UnstuffState::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Chunk sizes every input is fed at.
    fn chunk_sizes() -> impl Iterator<Item = usize> {
        (1..=64).chain([100, 1000, 4096, 65536, usize::MAX])
    }

    fn chunks(input: &[u8], size: usize) -> std::slice::Chunks<'_, u8> {
        input.chunks(size.min(input.len().max(1)))
    }

    /// Runs a stuffer over `input` in chunks of `size`; returns the wire bytes
    /// and whether it reported that it needs no more input.
    fn stuff(mut stuffer: Stuffer, input: &[u8], size: usize) -> (Vec<u8>, bool) {
        let mut out = Vec::new();
        let mut done = false;
        for chunk in chunks(input, size) {
            let now_done = stuffer.feed(chunk, &mut out);
            // Once done, always done, and nothing more is written.
            assert!(!done || now_done);
            done = now_done;
        }
        stuffer.finish(&mut out);
        (out, done)
    }

    fn size(input: &[u8], size: usize) -> u64 {
        let mut counter = SizeCounter::new();
        for chunk in chunks(input, size) {
            counter.feed(chunk);
        }
        counter.finish()
    }

    /// Runs an unstuffer over `input` in chunks of `size`, as a driver would:
    /// unconsumed bytes are carried into the next call. Returns the message,
    /// and the bytes left after the terminator if it was found.
    fn unstuff(input: &[u8], size: usize) -> (Vec<u8>, Option<Vec<u8>>) {
        let mut unstuffer = Unstuffer::new();
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < input.len() {
            let end = input.len().min(pos.saturating_add(size));
            let (used, done) = unstuffer.feed(&input[pos..end], &mut out);
            pos += used;
            if done {
                return (out, Some(input[pos..].to_vec()));
            }
            assert_eq!(pos, end, "not done but did not consume everything");
        }
        (out, None)
    }

    #[test]
    fn canonical_form_and_size() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"", b""),
            (b"a", b"a\r\n"),
            (b"a\n", b"a\r\n"),
            (b"a\r\n", b"a\r\n"),
            (b"\n", b"\r\n"),
            (b"\r\n", b"\r\n"),
            (b"\r", b"\r\r\n"),
            (b"a\r", b"a\r\r\n"),
            (b"a\rb", b"a\rb\r\n"),
            (b"a\r\rb\n", b"a\r\rb\r\n"),
            (b"a\r\r\n", b"a\r\r\n"),
            (b"\n\n\r\n\n", b"\r\n\r\n\r\n\r\n"),
            (b"a\nb\r\nc", b"a\r\nb\r\nc\r\n"),
            (b"\0\xff\x80\n\0", b"\0\xff\x80\r\n\0\r\n"),
            (b".\n..\n", b".\r\n..\r\n"),
        ];
        for &(input, canonical) in cases {
            assert_eq!(canonicalize(input), canonical, "{input:?}");
            assert_eq!(canonical_size(input), canonical.len() as u64, "{input:?}");
            for n in chunk_sizes() {
                assert_eq!(size(input, n), canonical.len() as u64, "{input:?} at {n}");
            }
        }
    }

    #[test]
    fn retr_wire_bytes() {
        let cases: &[(&[u8], &[u8])] = &[
            (b"", b".\r\n"),
            (b"a", b"a\r\n.\r\n"),
            (b"a\n", b"a\r\n.\r\n"),
            (b"a\r\n", b"a\r\n.\r\n"),
            (b".", b"..\r\n.\r\n"),
            (b".\n", b"..\r\n.\r\n"),
            (b".\r\n", b"..\r\n.\r\n"),
            (b"..\n", b"...\r\n.\r\n"),
            (b"a\n.b\n..c\nd.\n", b"a\r\n..b\r\n...c\r\nd.\r\n.\r\n"),
            (b"\r.\n", b"\r.\r\n.\r\n"),
            (b"a\r.\n", b"a\r.\r\n.\r\n"),
            (b"a\r", b"a\r\r\n.\r\n"),
            (b"\r", b"\r\r\n.\r\n"),
            (b"\n.\n", b"\r\n..\r\n.\r\n"),
            (b"\0\xff\n\x80\0", b"\0\xff\r\n\x80\0\r\n.\r\n"),
        ];
        for &(input, wire) in cases {
            for n in chunk_sizes() {
                let (out, done) = stuff(Stuffer::new(), input, n);
                assert_eq!(out, wire, "{input:?} at {n}");
                assert!(!done);
            }
        }
    }

    #[test]
    fn top_wire_bytes() {
        let with_blank: &[u8] = b"From: a\nSubject: b\n\nline 1\n.line 2\nline 3\n";
        let mixed: &[u8] = b"From: a\nTo: b\n\r\nbody 1\r\nbody 2\r\n";
        let no_blank: &[u8] = b"From: a\nSubject: b\n";
        let no_newline: &[u8] = b"From: a\n\nonly";
        let cr_not_blank: &[u8] = b"From: a\n\r\r\nbody\n\nmore\n";
        let cases: &[(&[u8], u64, &[u8], bool)] = &[
            (with_blank, 0, b"From: a\r\nSubject: b\r\n\r\n.\r\n", true),
            (
                with_blank,
                1,
                b"From: a\r\nSubject: b\r\n\r\nline 1\r\n.\r\n",
                true,
            ),
            (
                with_blank,
                2,
                b"From: a\r\nSubject: b\r\n\r\nline 1\r\n..line 2\r\n.\r\n",
                true,
            ),
            (
                with_blank,
                3,
                b"From: a\r\nSubject: b\r\n\r\nline 1\r\n..line 2\r\nline 3\r\n.\r\n",
                true,
            ),
            (
                with_blank,
                u64::MAX,
                b"From: a\r\nSubject: b\r\n\r\nline 1\r\n..line 2\r\nline 3\r\n.\r\n",
                false,
            ),
            (mixed, 0, b"From: a\r\nTo: b\r\n\r\n.\r\n", true),
            (mixed, 1, b"From: a\r\nTo: b\r\n\r\nbody 1\r\n.\r\n", true),
            (
                mixed,
                9,
                b"From: a\r\nTo: b\r\n\r\nbody 1\r\nbody 2\r\n.\r\n",
                false,
            ),
            (no_blank, 0, b"From: a\r\nSubject: b\r\n.\r\n", false),
            (no_blank, 5, b"From: a\r\nSubject: b\r\n.\r\n", false),
            (no_newline, 0, b"From: a\r\n\r\n.\r\n", true),
            (no_newline, 1, b"From: a\r\n\r\nonly\r\n.\r\n", false),
            (b"", 0, b".\r\n", false),
            (b"\n", 0, b"\r\n.\r\n", true),
            (b"\nbody\n", 0, b"\r\n.\r\n", true),
            (b"\r\n.x\n", 1, b"\r\n..x\r\n.\r\n", true),
            // "\r\r\n" is not blank: a CR stays data.
            (cr_not_blank, 0, b"From: a\r\n\r\r\nbody\r\n\r\n.\r\n", true),
        ];
        for &(input, lines, wire, done) in cases {
            for n in chunk_sizes() {
                let what = format!("TOP {lines} of {input:?} at {n}");
                assert_eq!(
                    stuff(Stuffer::top(lines), input, n),
                    (wire.to_vec(), done),
                    "{what}"
                );
            }
        }
    }

    #[test]
    fn top_ignores_input_after_its_limit() {
        let mut stuffer = Stuffer::top(0);
        let mut out = Vec::new();
        assert!(stuffer.feed(b"H: v\n\nbody\n", &mut out));
        assert!(stuffer.feed(b"more\n", &mut out));
        stuffer.finish(&mut out);
        stuffer.finish(&mut out);
        assert_eq!(out, b"H: v\r\n\r\n.\r\n");
    }

    #[test]
    fn unstuff_wire_bytes() {
        // (input, message, bytes left after the terminator or None if absent)
        type Case = (&'static [u8], &'static [u8], Option<&'static [u8]>);
        let cases: &[Case] = &[
            (b".\r\n", b"", Some(b"")),
            (b".\n", b"", Some(b"")),
            (b"a\r\n.\r\nQUIT\r\n", b"a\r\n", Some(b"QUIT\r\n")),
            (b"a\n.\nRSET\n", b"a\n", Some(b"RSET\n")),
            (b"..\r\n.\r\n", b".\r\n", Some(b"")),
            (b"...x\r\n.\r\n", b"..x\r\n", Some(b"")),
            (b".x\r\n.\r\n", b"x\r\n", Some(b"")),
            (b".\rx\r\n.\r\n", b"\rx\r\n", Some(b"")),
            (b".\r.\r\n.\r\n", b"\r.\r\n", Some(b"")),
            (b"a.\r\n.\r\n", b"a.\r\n", Some(b"")),
            (b"a\r.\r\n.\r\n", b"a\r.\r\n", Some(b"")),
            (b"\0\xff\r\n.\r\n\xff", b"\0\xff\r\n", Some(b"\xff")),
            (b"a\r\n", b"a\r\n", None),
            (b"a\r\n.", b"a\r\n", None),
            (b"a\r\n.\r", b"a\r\n", None),
            (b"a\r\n. \r\n", b"a\r\n \r\n", None),
        ];
        for &(input, message, rest) in cases {
            for n in chunk_sizes() {
                let (out, left) = unstuff(input, n);
                assert_eq!(out, message, "{input:?} at {n}");
                assert_eq!(left.as_deref(), rest, "{input:?} at {n}");
            }
        }
    }

    #[test]
    fn unstuffer_consumes_nothing_once_done() {
        let mut unstuffer = Unstuffer::new();
        let mut out = Vec::new();
        assert_eq!(unstuffer.feed(b"x\n.\nA", &mut out), (4, true));
        assert_eq!(unstuffer.feed(b"B\r\n", &mut out), (0, true));
        assert_eq!(out, b"x\n");
    }

    /// xorshift64*: enough randomness for generated messages, no crates.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        /// A message biased towards the bytes that matter here.
        fn message(&mut self) -> Vec<u8> {
            let len = self.below(200) as usize;
            (0..len)
                .map(|_| match self.below(10) {
                    0..=2 => LF,
                    3 | 4 => CR,
                    5 | 6 => DOT,
                    7 => self.next() as u8,
                    _ => b'a',
                })
                .collect()
        }
    }

    #[test]
    fn generated_messages_round_trip_with_exact_sizes() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..2000 {
            let message = rng.message();
            let canonical = canonicalize(&message);
            let size = canonical_size(&message);
            assert_eq!(size, canonical.len() as u64, "{message:?}");

            let (wire, _) = stuff(Stuffer::new(), &message, usize::MAX);
            let stuffed_dots = canonical
                .split(|&b| b == LF)
                .filter(|line| line.first() == Some(&DOT))
                .count() as u64;
            assert_eq!(wire.len() as u64 - stuffed_dots - 3, size, "{message:?}");
            assert!(wire.ends_with(b".\r\n"));

            let (decoded, left) = unstuff(&wire, usize::MAX);
            assert_eq!(decoded, canonical, "{message:?}");
            assert_eq!(left.as_deref(), Some(&b""[..]), "{message:?}");

            // Chunk-size invariance, on a sample of sizes to keep it quick.
            let n = 1 + rng.below(70) as usize;
            assert_eq!(
                stuff(Stuffer::new(), &message, n).0,
                wire,
                "{message:?} at {n}"
            );
            assert_eq!(unstuff(&wire, n).0, canonical, "{message:?} at {n}");
            let mut counter = SizeCounter::new();
            for chunk in chunks(&message, n) {
                counter.feed(chunk);
            }
            assert_eq!(counter.finish(), size, "{message:?} at {n}");

            // TOP is a prefix of RETR, whole lines, ending in the terminator.
            let lines = rng.below(5);
            let (top, _) = stuff(Stuffer::top(lines), &message, n);
            let body = &top[..top.len() - 3];
            assert!(wire.starts_with(body), "TOP {lines} of {message:?}");
            assert!(body.is_empty() || body.ends_with(b"\r\n"));
        }
    }

    #[test]
    fn into_canonical_copies_only_what_needs_it() {
        let mut rng = Rng(0xc0de);
        for _ in 0..2000 {
            let message = rng.message();
            let canonical = canonicalize(&message);
            assert_eq!(into_canonical(message.clone()), canonical, "{message:?}");
            // Canonical input comes back as the same allocation.
            let ptr = canonical.as_ptr();
            let again = into_canonical(canonical);
            assert_eq!(again.as_ptr(), ptr);
            assert_eq!(canonicalize(&again), again);
        }
        assert_eq!(into_canonical(Vec::new()), b"");
        assert_eq!(into_canonical(b"\n".to_vec()), b"\r\n");
        assert_eq!(into_canonical(b"a\r\nb".to_vec()), b"a\r\nb\r\n");
        assert_eq!(into_canonical(b"a\r\r\n".to_vec()), b"a\r\r\n");
    }

    #[test]
    fn lf_line_ends_keep_the_canonical_form() {
        let mut rng = Rng(0x1f);
        for _ in 0..3000 {
            let message = rng.message();
            let unix = with_lf_line_ends(&message);
            assert_eq!(canonicalize(&unix), canonicalize(&message), "{message:?}");
            // Mail with LF ends and a final LF comes back as it was.
            let lf_only: Vec<u8> = message.iter().copied().filter(|&b| b != CR).collect();
            if lf_only.last().is_none_or(|&b| b == LF) {
                assert_eq!(with_lf_line_ends(&canonicalize(&lf_only)), lf_only);
            }
        }
        assert_eq!(with_lf_line_ends(b"a\r\nb\r\r\n\r\n"), b"a\nb\r\r\n\n");
    }

    /// What RETR checks its announced size against: the stuffer's own
    /// count, after every chunk, is the canonical size of what it was fed.
    #[test]
    fn the_stuffer_counts_the_canonical_size_as_it_goes() {
        let mut rng = Rng(0x5eed);
        for _ in 0..300 {
            let message = rng.message();
            for n in chunk_sizes() {
                let mut stuffer = Stuffer::new();
                let mut top = Stuffer::top(u64::MAX);
                let (mut out, mut top_out) = (Vec::new(), Vec::new());
                let mut fed = 0;
                assert_eq!(stuffer.canonical_size(), 0);
                for chunk in chunks(&message, n) {
                    stuffer.feed(chunk, &mut out);
                    top.feed(chunk, &mut top_out);
                    fed += chunk.len();
                    let expected = canonical_size(&message[..fed]);
                    assert_eq!(stuffer.canonical_size(), expected, "{message:?} at {n}");
                    assert_eq!(top.canonical_size(), expected, "TOP {message:?} at {n}");
                }
                stuffer.finish(&mut out);
                assert_eq!(stuffer.canonical_size(), canonical_size(&message));
            }
        }
    }

    /// The early size check's bound: after every chunk (empty chunks too),
    /// no message that begins with what was fed is shorter, and a line
    /// end or the end of the message reaches it.
    #[test]
    fn the_least_canonical_size_is_exact() {
        let mut rng = Rng(0xf100);
        let ends: [&[u8]; 7] = [b"", b"\n", b"\r", b"\r\n", b"a", b".", b"\r\r"];
        for _ in 0..300 {
            let message = rng.message();
            for n in [1, 2, 3, 7, 64] {
                let mut stuffer = Stuffer::new();
                let mut out = Vec::new();
                let mut fed = 0;
                for chunk in chunks(&message, n) {
                    stuffer.feed(&[], &mut out);
                    stuffer.feed(chunk, &mut out);
                    fed += chunk.len();
                    let least = stuffer.canonical_at_least();
                    let sizes = ends.map(|end| canonical_size(&[&message[..fed], end].concat()));
                    assert!(sizes.iter().all(|&s| s >= least), "{message:?} at {fed}");
                    assert_eq!(
                        sizes[..2].iter().min(),
                        Some(&least),
                        "{message:?} at {fed}"
                    );
                    assert!(least <= canonical_size(&message));
                    assert!(least <= stuffer.canonical_size());
                }
                stuffer.finish(&mut out);
                assert_eq!(stuffer.canonical_at_least(), canonical_size(&message));
            }
        }
        // A message cut after a CR: its LF would add one octet, not two.
        let mut stuffer = Stuffer::new();
        stuffer.feed(b"ab\r", &mut Vec::new());
        assert_eq!(
            (stuffer.canonical_at_least(), stuffer.canonical_size()),
            (4, 5)
        );
    }

    /// RETR's wire form, one byte at a time, as RFC 1939 §3 reads.
    fn reference_retr(message: &[u8]) -> Vec<u8> {
        let mut wire = Vec::new();
        for line in canonicalize(message).split_inclusive(|&b| b == LF) {
            if line.first() == Some(&DOT) {
                wire.push(DOT);
            }
            wire.extend_from_slice(line);
        }
        wire.extend_from_slice(b".\r\n");
        wire
    }

    #[test]
    fn retr_matches_the_reference_at_every_chunk_size() {
        let mut rng = Rng(7);
        for _ in 0..300 {
            let message = rng.message();
            let wire = reference_retr(&message);
            for n in chunk_sizes() {
                assert_eq!(
                    stuff(Stuffer::new(), &message, n).0,
                    wire,
                    "{message:?} at {n}"
                );
            }
        }
    }

    #[test]
    fn large_message_in_odd_chunks() {
        let mut rng = Rng(42);
        let mut message = Vec::new();
        while message.len() < 1 << 20 {
            message.extend_from_slice(&rng.message());
        }
        let canonical = canonicalize(&message);
        let (wire, _) = stuff(Stuffer::new(), &message, 8191);
        assert_eq!(stuff(Stuffer::new(), &message, 65536).0, wire);
        assert_eq!(unstuff(&wire, 4097).0, canonical);
        assert_eq!(size(&message, 3), canonical.len() as u64);
    }
}
