//! One line per message for the person repairing a stuck maildrop: number,
//! size, date, From, Subject, and what looks wrong with the message (the
//! things that make mail programs stop fetching). Used by the POP3
//! `SUMMARY` extension and by `mailbag mailbox inspect`.
//!
//! A message is fed through a [`Scanner`] in chunks of any size. The byte
//! checks (NUL, bare CR, lines over 998 octets, the blank line that ends
//! the header, 8-bit octets) run over the whole message as it streams; the
//! header and MIME structure are parsed with `mail-parser` from at most
//! [`PARSE_PREFIX_OCTETS`] of it, so time and memory per message are
//! bounded whatever the message holds. Beyond that prefix the line says
//! "not fully checked (too large)".
//!
//! The output is UTF-8 (decoded names and subjects keep their letters), cut
//! to fixed columns with `…`, with control characters replaced: no line
//! ever holds CR, LF or an escape sequence. The date is shown as the
//! message's own Date header has it (its own time zone), so no clock is
//! read. Pure functions over bytes, except the two small readers at the
//! end.

use std::io;

use mail_parser::{Address, HeaderName, HeaderValue, Message, MessageParser, MimeHeaders};

/// How much of a message is parsed for its header and MIME structure.
pub const PARSE_PREFIX_OCTETS: usize = 1024 * 1024;
/// How much of one message the byte checks read. A message's length
/// costs its owner nothing when the file is sparse (or one file has many
/// hard links), so reading every octet would let one mailbox make the
/// server read terabytes for one SUMMARY; beyond this the line says "not
/// fully checked (too large)".
pub const SCAN_OCTETS: u64 = 64 * 1024 * 1024;
/// How much one SUMMARY reads in all, over every message: once used up,
/// each further message is read only as far as its header is parsed
/// ([`PARSE_PREFIX_OCTETS`]).
pub const SUMMARY_SCAN_OCTETS: u64 = 256 * 1024 * 1024;
/// RFC 5322 §2.1.1: a line is at most 998 octets before its CRLF.
pub const MAX_LINE_OCTETS: u64 = 998;
/// Width of the From column, in characters.
const FROM_CHARS: usize = 24;
/// Width of the Subject column, in characters.
const SUBJECT_CHARS: usize = 30;
/// Width of the date column: `YYYY-MM-DD HH:MM`.
const DATE_CHARS: usize = 16;
/// How deep nested message/rfc822 parts are searched for problems.
const MAX_NESTING: usize = 4;

/// Something that can stop a mail program from fetching a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Problem {
    /// The header never ends with an empty line.
    NoHeaderEnd,
    /// NUL octets anywhere in the message.
    Nul,
    /// A CR not followed by LF.
    BareCr,
    /// A line longer than 998 octets (RFC 5322 §2.1.1).
    LongLine,
    /// 8-bit text in a part (or header) that names no charset.
    EightBitNoCharset,
    /// A MIME structure that does not parse: a multipart without its
    /// boundary or its closing delimiter, an unparseable Content-Type, or
    /// a broken base64 or quoted-printable body.
    BadMime,
    /// No Date header.
    NoDate,
    /// A Date header that does not parse as a date.
    BadDate,
    /// No From header.
    NoFrom,
    /// A From header without an address.
    BadFrom,
    /// Only the first [`PARSE_PREFIX_OCTETS`] were parsed.
    NotFullyChecked,
}

impl Problem {
    /// The short phrase shown in the problems column.
    pub fn label(self) -> &'static str {
        match self {
            Problem::NoHeaderEnd => "no blank line after header",
            Problem::Nul => "NUL bytes",
            Problem::BareCr => "bare CR",
            Problem::LongLine => "line over 998 octets",
            Problem::EightBitNoCharset => "8-bit text, no charset",
            Problem::BadMime => "MIME does not parse",
            Problem::NoDate => "no Date",
            Problem::BadDate => "bad Date",
            Problem::NoFrom => "no From",
            Problem::BadFrom => "bad From",
            Problem::NotFullyChecked => "not fully checked (too large)",
        }
    }
}

/// What the summary of one message found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// `YYYY-MM-DD HH:MM` from the Date header, in the header's own zone.
    pub date: Option<String>,
    /// The first sender: `Name <address>`, or the address alone, or the
    /// raw header when it holds no address.
    pub from: String,
    /// The Subject, RFC 2047 encoded words decoded.
    pub subject: String,
    /// What looks wrong, in a fixed order, each at most once.
    pub problems: Vec<Problem>,
}

/// Streams one message through the byte checks, keeping the prefix that
/// [`Scanner::finish`] parses.
#[derive(Debug)]
pub struct Scanner {
    prefix: Vec<u8>,
    truncated: bool,
    /// Octets fed through the byte checks, and how many may be.
    scanned: u64,
    limit: u64,
    /// Octets of the current line so far, its LF not counted.
    line_octets: u64,
    prev_cr: bool,
    header_ended: bool,
    nul: bool,
    bare_cr: bool,
    long_line: bool,
    eight_bit: bool,
}

impl Default for Scanner {
    fn default() -> Self {
        Scanner::new()
    }
}

impl Scanner {
    /// A scanner at the start of a message, checking at most
    /// [`SCAN_OCTETS`] of it.
    pub fn new() -> Self {
        Scanner::with_limit(SCAN_OCTETS)
    }

    /// A scanner that checks at most `limit` octets (never less than
    /// the parsed prefix); what follows is left unchecked, and said to be.
    pub fn with_limit(limit: u64) -> Self {
        Scanner {
            prefix: Vec::new(),
            truncated: false,
            scanned: 0,
            limit: limit.max(PARSE_PREFIX_OCTETS as u64),
            line_octets: 0,
            prev_cr: false,
            header_ended: false,
            nul: false,
            bare_cr: false,
            long_line: false,
            eight_bit: false,
        }
    }

    /// Whether the scanner has seen all it will check: the rest of the
    /// message need not be read.
    pub fn done(&self) -> bool {
        self.scanned > self.limit
    }

    /// Octets fed so far (up to one past the limit).
    pub fn scanned(&self) -> u64 {
        self.scanned
    }

    /// Feeds the next bytes of the message.
    pub fn feed(&mut self, bytes: &[u8]) {
        let allowed = self.limit.saturating_sub(self.scanned);
        let bytes = match usize::try_from(allowed) {
            Ok(allowed) if allowed < bytes.len() => {
                // One octet past the limit: there is more than was checked.
                self.truncated = true;
                self.scanned = self.limit + 1;
                &bytes[..allowed]
            }
            _ => {
                self.scanned += bytes.len() as u64;
                bytes
            }
        };
        let room = PARSE_PREFIX_OCTETS - self.prefix.len();
        if bytes.len() > room {
            self.truncated = true;
        }
        self.prefix
            .extend_from_slice(&bytes[..bytes.len().min(room)]);
        for &b in bytes {
            match b {
                b'\n' => {
                    let content = self.line_octets - u64::from(self.prev_cr);
                    self.end_line(content);
                    self.line_octets = 0;
                }
                _ => {
                    if self.prev_cr {
                        self.bare_cr = true;
                    }
                    self.line_octets += 1;
                    // Even if a CR ends it, the line is already too long.
                    if self.line_octets > MAX_LINE_OCTETS + 1 {
                        self.long_line = true;
                    }
                    match b {
                        0 => self.nul = true,
                        0x80..=0xff => self.eight_bit = true,
                        _ => {}
                    }
                }
            }
            self.prev_cr = b == b'\r';
        }
    }

    fn end_line(&mut self, content: u64) {
        if content > MAX_LINE_OCTETS {
            self.long_line = true;
        }
        if content == 0 {
            self.header_ended = true;
        }
    }

    /// Parses the kept prefix and says what the message looks like.
    pub fn finish(mut self) -> Summary {
        if self.prev_cr {
            // A CR as the very last octet has no LF after it.
            self.bare_cr = true;
        }
        // The last line may have no LF; a CR ending it is content here.
        if self.line_octets > MAX_LINE_OCTETS {
            self.long_line = true;
        }
        let mut problems = Vec::new();
        if !self.header_ended {
            problems.push(Problem::NoHeaderEnd);
        }
        if self.nul {
            problems.push(Problem::Nul);
        }
        if self.bare_cr {
            problems.push(Problem::BareCr);
        }
        if self.long_line {
            problems.push(Problem::LongLine);
        }
        let mut summary = Summary::default();
        match parse(&self.prefix) {
            Parsed::Panicked => problems.push(Problem::BadMime),
            Parsed::NoHeader => problems.extend([Problem::NoDate, Problem::NoFrom]),
            Parsed::Message(message) => {
                if self.eight_bit && eight_bit_without_charset(&message, &self.prefix) {
                    problems.push(Problem::EightBitNoCharset);
                }
                if !mime_parses(&message, &self.prefix, self.truncated, self.header_ended, 0) {
                    problems.push(Problem::BadMime);
                }
                match message.header(HeaderName::Date) {
                    None => problems.push(Problem::NoDate),
                    Some(value) => match value.as_datetime().filter(|d| d.is_valid()) {
                        Some(d) => {
                            summary.date = Some(format!(
                                "{:04}-{:02}-{:02} {:02}:{:02}",
                                d.year, d.month, d.day, d.hour, d.minute
                            ))
                        }
                        None => problems.push(Problem::BadDate),
                    },
                }
                match message.header(HeaderName::From) {
                    None => problems.push(Problem::NoFrom),
                    Some(value) => match sender(value) {
                        Some(from) => summary.from = from,
                        None => {
                            problems.push(Problem::BadFrom);
                            summary.from = message
                                .header_raw(HeaderName::From)
                                .unwrap_or_default()
                                .trim()
                                .to_string();
                        }
                    },
                }
                summary.subject = message.subject().unwrap_or_default().to_string();
            }
        }
        if self.truncated {
            problems.push(Problem::NotFullyChecked);
        }
        problems.sort_unstable();
        problems.dedup();
        summary.problems = problems;
        summary
    }
}

enum Parsed<'x> {
    Message(Box<Message<'x>>),
    NoHeader,
    Panicked,
}

/// Parses with `mail-parser`, which promises never to panic but holds a
/// `debug_assert!` that hostile MIME nesting trips (found by the `summary`
/// fuzz target; `parsers/message.rs` "Invalid part ID"). In a debug build
/// that would end the POP3 session; here it is one more broken message.
fn parse(raw: &[u8]) -> Parsed<'_> {
    let parsed = std::panic::catch_unwind(|| MessageParser::new().parse(raw));
    match parsed {
        Ok(Some(message)) => Parsed::Message(Box::new(message)),
        Ok(None) => Parsed::NoHeader,
        Err(_) => Parsed::Panicked,
    }
}

/// The first address of a From header, as `Name <address>` or the address
/// alone; `None` when it holds no address with an `@`.
fn sender(value: &HeaderValue<'_>) -> Option<String> {
    let first = match value.as_address()? {
        Address::List(list) => list.iter().find(|a| has_at(a.address())),
        Address::Group(groups) => groups
            .iter()
            .flat_map(|g| g.addresses.iter())
            .find(|a| has_at(a.address())),
    }?;
    let address = first.address()?;
    Some(
        match first.name().map(str::trim).filter(|n| !n.is_empty()) {
            Some(name) => format!("{name} <{address}>"),
            None => address.to_string(),
        },
    )
}

fn has_at(address: Option<&str>) -> bool {
    address.is_some_and(|a| a.contains('@'))
}

/// 8-bit octets in the header that are not UTF-8 (RFC 6532 allows UTF-8
/// there, nothing else), or in a text part whose Content-Type names no
/// charset: a reader cannot know how to show them.
fn eight_bit_without_charset(message: &Message<'_>, raw: &[u8]) -> bool {
    let Some(root) = message.parts.first() else {
        return false;
    };
    let header = raw.get(..root.offset_body as usize).unwrap_or(raw);
    if !header.is_ascii() && std::str::from_utf8(header).is_err() {
        return true;
    }
    message.parts.iter().any(|part| {
        let text = match part.content_type() {
            None => true,
            Some(ct) => ct.ctype().eq_ignore_ascii_case("text"),
        };
        let charset = part.content_type().and_then(|ct| ct.attribute("charset"));
        let body = raw
            .get(part.offset_body as usize..part.offset_end as usize)
            .unwrap_or_default();
        text && charset.is_none() && !part.is_multipart() && !body.is_ascii()
    })
}

/// Whether the MIME structure holds together: every Content-Type parses,
/// every multipart has a boundary that opens and (when the whole message
/// was seen) closes it, and no base64 or quoted-printable body is broken.
///
/// The parser also flags a header that never ends as an encoding problem;
/// that has its own [`Problem`], so `header_ended` false excuses the root.
fn mime_parses(
    message: &Message<'_>,
    raw: &[u8],
    truncated: bool,
    header_ended: bool,
    depth: usize,
) -> bool {
    message.parts.iter().enumerate().all(|(i, part)| {
        if part.is_encoding_problem && (i != 0 || header_ended) {
            return false;
        }
        let content_type = part
            .headers
            .iter()
            .find(|h| h.name == HeaderName::ContentType);
        if let Some(h) = content_type {
            if h.value.as_content_type().is_none() {
                return false;
            }
        }
        if let Some(ct) = part.content_type() {
            if ct.ctype().eq_ignore_ascii_case("multipart") {
                let Some(boundary) = ct.attribute("boundary").filter(|b| !b.is_empty()) else {
                    return false;
                };
                let from = raw.get(part.offset_header as usize..).unwrap_or(raw);
                let open = format!("--{boundary}");
                let close = format!("--{boundary}--");
                let finder = |needle: &str| memchr::memmem::find(from, needle.as_bytes());
                if !truncated && (finder(&open).is_none() || finder(&close).is_none()) {
                    return false;
                }
            }
        }
        match &part.body {
            mail_parser::PartType::Message(inner) if depth < MAX_NESTING => {
                // A nested message's offsets are into its own bytes, so its
                // boundaries are not searched for; only its encodings.
                mime_parses(inner, &[], true, true, depth + 1)
            }
            _ => true,
        }
    })
}

/// The SUMMARY line of one message. `uid` adds the UIDL column, padded to
/// `uid_width`, for `mailbag mailbox inspect`.
pub fn line(
    number: usize,
    octets: u64,
    uid: Option<(&str, usize)>,
    summary: &Summary,
    large_octets: u64,
) -> String {
    line_labelled(&number.to_string(), octets, uid, summary, large_octets)
}

/// [`line`] with any short label in the number column (`Q` for a
/// quarantined message).
pub fn line_labelled(
    number: &str,
    octets: u64,
    uid: Option<(&str, usize)>,
    summary: &Summary,
    large_octets: u64,
) -> String {
    let mut labels: Vec<String> = Vec::new();
    if octets > large_octets {
        labels.push(format!("larger than {}", human(large_octets)));
    }
    labels.extend(summary.problems.iter().map(|p| p.label().to_string()));
    let verdict = if labels.is_empty() {
        "ok".to_string()
    } else {
        format!("!! {}", labels.join(", "))
    };
    let date = summary.date.as_deref().unwrap_or("-");
    let uid = match uid {
        Some((uid, width)) => format!("{:<width$}  ", clean(uid)),
        None => String::new(),
    };
    format!(
        "{number:>4}  {uid}{octets:>9}  {date:<DATE_CHARS$}  {}  {}  {verdict}",
        column(&summary.from, FROM_CHARS),
        column(&summary.subject, SUBJECT_CHARS),
    )
}

/// A line for a message that could not be read at all.
pub fn unreadable_line(
    number: usize,
    octets: u64,
    uid: Option<(&str, usize)>,
    why: &str,
) -> String {
    let uid = match uid {
        Some((uid, width)) => format!("{:<width$}  ", clean(uid)),
        None => String::new(),
    };
    format!("{number:>4}  {uid}{octets:>9}  !! {}", clean(why))
}

/// Text fitted to exactly `width` characters: control characters and
/// runs of white space become one space, longer text is cut with `…`,
/// shorter text is padded.
fn column(text: &str, width: usize) -> String {
    let text = clean(text);
    let count = text.chars().count();
    if count > width {
        let mut cut: String = text.chars().take(width - 1).collect();
        cut.push('…');
        cut
    } else {
        format!("{text}{}", " ".repeat(width - count))
    }
}

/// No control characters (C0, DEL, C1) and no runs of white space.
fn clean(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        let c = if c.is_control() || c.is_whitespace() {
            ' '
        } else {
            c
        };
        if !(c == ' ' && (out.is_empty() || out.ends_with(' '))) {
            out.push(c);
        }
    }
    let trimmed = out.trim_end().len();
    out.truncate(trimmed);
    out
}

/// Octets as a person reads a threshold: `10 MiB`, `512 KiB`, `999 octets`.
pub fn human(octets: u64) -> String {
    const KIB: u64 = 1024;
    const MIB: u64 = 1024 * 1024;
    if octets >= MIB && octets.is_multiple_of(MIB) {
        format!("{} MiB", octets / MIB)
    } else if octets >= KIB && octets.is_multiple_of(KIB) {
        format!("{} KiB", octets / KIB)
    } else {
        format!("{octets} octets")
    }
}

/// Summarises a message held in memory.
pub fn summarize(message: &[u8]) -> Summary {
    let mut scanner = Scanner::new();
    scanner.feed(message);
    scanner.finish()
}

/// Message bytes read at a time by the readers below.
const CHUNK_OCTETS: usize = 64 * 1024;

/// Summarises a message from a blocking reader (the command line),
/// reading no more of it than [`SCAN_OCTETS`] and one chunk.
pub fn summarize_read(reader: impl io::Read) -> io::Result<Summary> {
    summarize_read_within(reader, SCAN_OCTETS).map(|(summary, _)| summary)
}

/// [`summarize_read`] checking at most `limit` octets; also says how many
/// were read.
pub fn summarize_read_within(mut reader: impl io::Read, limit: u64) -> io::Result<(Summary, u64)> {
    let mut scanner = Scanner::with_limit(limit);
    let mut chunk = vec![0u8; CHUNK_OCTETS];
    loop {
        let n = match reader.read(&mut chunk) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n > 0 {
            scanner.feed(&chunk[..n]);
        }
        if n == 0 || scanner.done() {
            let scanned = scanner.scanned();
            return Ok((scanner.finish(), scanned));
        }
    }
}

/// Summarises a message from an async reader (the POP3 driver), checking
/// at most `limit` octets; also says how many were read.
pub async fn summarize_async(
    mut reader: impl tokio::io::AsyncRead + Unpin,
    limit: u64,
) -> io::Result<(Summary, u64)> {
    use tokio::io::AsyncReadExt;
    let mut scanner = Scanner::with_limit(limit);
    let mut chunk = vec![0u8; CHUNK_OCTETS];
    loop {
        let n = reader.read(&mut chunk).await?;
        if n > 0 {
            scanner.feed(&chunk[..n]);
        }
        if n == 0 || scanner.done() {
            let scanned = scanner.scanned();
            return Ok((scanner.finish(), scanned));
        }
    }
}

/// The line after the table that says how many messages the store found
/// but could not read, and so left out of the maildrop; `None` when none.
pub fn left_out_line(unreadable: usize) -> Option<String> {
    match unreadable {
        0 => None,
        1 => Some("1 message could not be read and is not listed".to_string()),
        n => Some(format!("{n} messages could not be read and are not listed")),
    }
}

/// Performs the POP3 core's `Summarize` action: one line per index, in
/// order. A message that cannot be read gets a line saying so, so that the
/// rest of the maildrop is still described.
pub async fn summarize_maildrop<M: crate::store::Maildrop>(
    maildrop: &mut M,
    indexes: &[mailbag_proto::pop3::Index],
    large_octets: u64,
) -> mailbag_proto::pop3::Outcome {
    use crate::store::StoreError;
    let mut lines = Vec::with_capacity(indexes.len());
    // What this SUMMARY may still read (see [`SUMMARY_SCAN_OCTETS`]).
    let mut budget = SUMMARY_SCAN_OCTETS;
    for &index in indexes {
        // Small messages are read and parsed without ever waiting, and a
        // session thread serves many sessions: let the others run between
        // messages, so that SUMMARY of a big maildrop does not stall them.
        tokio::task::yield_now().await;
        let number = index.number();
        let index = index.get();
        let octets = maildrop.messages().get(index).map_or(0, |m| m.size);
        let why = match maildrop.read(index).await {
            Ok(reader) => match summarize_async(reader, budget.min(SCAN_OCTETS)).await {
                Ok((summary, scanned)) => {
                    budget = budget.saturating_sub(scanned);
                    lines.push(line(number, octets, None, &summary, large_octets));
                    continue;
                }
                Err(e) => {
                    tracing::warn!(error = %e, index, "summary: message read failed");
                    "cannot be read right now"
                }
            },
            Err(StoreError::Vanished) => "removed by another program",
            Err(e) => {
                tracing::warn!(error = %e, index, "summary: message open failed");
                "cannot be read right now"
            }
        };
        lines.push(unreadable_line(number, octets, None, why));
    }
    if let Some(line) = left_out_line(maildrop.unreadable()) {
        lines.push(line);
    }
    mailbag_proto::pop3::Outcome::Summarized(lines)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEALTHY: &[u8] = b"Date: Mon, 23 Nov 2026 09:14:00 +0100\r\n\
From: Alice Example <alice@example.org>\r\n\
Subject: Notes from Tuesday\r\n\
\r\n\
Hello.\r\n";

    fn with_body(header_extra: &str, body: &[u8]) -> Vec<u8> {
        let mut m =
            b"Date: Mon, 23 Nov 2026 09:14:00 +0100\r\nFrom: a@example.org\r\nSubject: s\r\n"
                .to_vec();
        m.extend_from_slice(header_extra.as_bytes());
        m.extend_from_slice(b"\r\n");
        m.extend_from_slice(body);
        m
    }

    #[test]
    fn healthy_message_has_no_problems() {
        let s = summarize(HEALTHY);
        assert_eq!(s.date.as_deref(), Some("2026-11-23 09:14"));
        assert_eq!(s.from, "Alice Example <alice@example.org>");
        assert_eq!(s.subject, "Notes from Tuesday");
        assert_eq!(s.problems, vec![]);
        assert_eq!(
            line(3, 12345, None, &s, 10 << 20),
            "   3      12345  2026-11-23 09:14  Alice Example <alice@ex…  Notes from Tuesday              ok"
        );
    }

    #[test]
    fn each_breakage_is_named() {
        let long = format!("{}\r\n", "x".repeat(999));
        let multipart = "MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b1\"\r\n";
        let cases: Vec<(Vec<u8>, Vec<Problem>)> = vec![
            (
                b"From: a@example.org\r\nDate: Mon, 23 Nov 2026 09:14:00 +0100\r\nSubject: s\r\n"
                    .to_vec(),
                vec![Problem::NoHeaderEnd],
            ),
            (with_body("", b"a\0b\r\n"), vec![Problem::Nul]),
            (with_body("", b"a\rb\r\n"), vec![Problem::BareCr]),
            (with_body("", b"ends in CR\r"), vec![Problem::BareCr]),
            (with_body("", long.as_bytes()), vec![Problem::LongLine]),
            (
                with_body("", format!("{}\r\n", "x".repeat(998)).as_bytes()),
                vec![],
            ),
            (
                with_body("", "x".repeat(999).as_bytes()),
                vec![Problem::LongLine],
            ),
            (
                with_body("", b"Gr\xfc\xdfe\r\n"),
                vec![Problem::EightBitNoCharset],
            ),
            (
                with_body(
                    "Content-Type: text/plain; charset=iso-8859-1\r\n",
                    b"Gr\xfc\xdfe\r\n",
                ),
                vec![],
            ),
            (
                b"Date: Mon, 23 Nov 2026 09:14:00 +0100\r\nFrom: a@example.org\r\nSubject: Gr\xfc\xdfe\r\n\r\nx\r\n".to_vec(),
                vec![Problem::EightBitNoCharset],
            ),
            (
                with_body(multipart, b"--b1\r\nContent-Type: text/plain\r\n\r\nno end\r\n"),
                vec![Problem::BadMime],
            ),
            (
                with_body(multipart, b"--b1\r\nContent-Type: text/plain\r\n\r\nfine\r\n--b1--\r\n"),
                vec![],
            ),
            (
                with_body("Content-Type: multipart/mixed\r\n", b"--x\r\n\r\na\r\n--x--\r\n"),
                vec![Problem::BadMime],
            ),
            (
                with_body(
                    "Content-Type: text/plain; charset=us-ascii\r\nContent-Transfer-Encoding: base64\r\n",
                    b"!!!! not base64 ****\r\n",
                ),
                vec![Problem::BadMime],
            ),
            (
                b"From: a@example.org\r\nSubject: s\r\n\r\nx\r\n".to_vec(),
                vec![Problem::NoDate],
            ),
            (
                b"Date: yesterday-ish\r\nFrom: a@example.org\r\nSubject: s\r\n\r\nx\r\n".to_vec(),
                vec![Problem::BadDate],
            ),
            (
                b"Date: Mon, 23 Nov 2026 09:14:00 +0100\r\nSubject: s\r\n\r\nx\r\n".to_vec(),
                vec![Problem::NoFrom],
            ),
            (
                b"Date: Mon, 23 Nov 2026 09:14:00 +0100\r\nFrom: nobody at all\r\nSubject: s\r\n\r\nx\r\n"
                    .to_vec(),
                vec![Problem::BadFrom],
            ),
            (b"".to_vec(), vec![Problem::NoHeaderEnd, Problem::NoDate, Problem::NoFrom]),
        ];
        for (i, (message, want)) in cases.into_iter().enumerate() {
            let got = summarize(&message).problems;
            assert_eq!(
                got,
                want,
                "case {i}: {:?}",
                String::from_utf8_lossy(&message)
            );
        }
    }

    #[test]
    fn subject_and_sender_are_decoded_from_encoded_words() {
        let s = summarize(
            b"Date: Mon, 23 Nov 2026 09:14:00 +0100\r\nFrom: =?UTF-8?Q?J=C3=BCrgen?= <j@example.de>\r\nSubject: =?ISO-8859-1?Q?Gr=FC=DFe?= aus =?UTF-8?B?S8O2bG4=?=\r\n\r\nx\r\n",
        );
        assert_eq!(s.from, "Jürgen <j@example.de>");
        assert_eq!(s.subject, "Grüße aus Köln");
        assert_eq!(s.problems, vec![]);
    }

    #[test]
    fn columns_are_fixed_and_hold_no_control_characters() {
        let s = Summary {
            date: None,
            from: "x\x1b[31m\r\ny".into(),
            subject: "a\tvery   long subject that goes on and on and on".into(),
            problems: vec![Problem::NoDate, Problem::BareCr],
        };
        let l = line(12, 7, None, &s, 5);
        assert_eq!(
            l,
            "  12          7  -                 x [31m y                  a very long subject that goes…  !! larger than 5 octets, no Date, bare CR"
        );
        assert!(!l.chars().any(char::is_control));
        let l = line(1, 7, Some(("uid-1", 8)), &summarize(HEALTHY), 1 << 20);
        assert!(
            l.starts_with("   1  uid-1             7  2026-11-23 09:14  "),
            "{l}"
        );
    }

    #[test]
    fn the_size_threshold_is_named_in_the_line() {
        let s = summarize(HEALTHY);
        assert!(line(1, 10 << 20, None, &s, 10 << 20).ends_with("  ok"));
        assert!(line(1, (10 << 20) + 1, None, &s, 10 << 20).ends_with("!! larger than 10 MiB"));
        assert_eq!(human(512 * 1024), "512 KiB");
        assert_eq!(human(1000), "1000 octets");
    }

    #[test]
    fn chunked_feeding_finds_the_same_as_whole() {
        let messages: Vec<Vec<u8>> = vec![
            HEALTHY.to_vec(),
            with_body("", b"a\rb\r\nc\0\r\n"),
            with_body("", format!("{}\r\n", "y".repeat(998)).as_bytes()),
            with_body("", format!("{}\r\r\n", "y".repeat(998)).as_bytes()),
            b"Subject: only\r".to_vec(),
        ];
        for m in messages {
            let whole = summarize(&m);
            for size in [1, 2, 3, 7, 64, 999, 1000] {
                let mut s = Scanner::new();
                for chunk in m.chunks(size) {
                    s.feed(chunk);
                }
                assert_eq!(s.finish(), whole, "chunk {size}");
            }
        }
    }

    #[test]
    fn input_that_trips_the_parser_is_broken_mime_not_a_crash() {
        // Found by the fuzz target: multipart nesting that reaches a
        // debug assertion inside mail-parser.
        let crash = include_bytes!("../../fuzz/seeds/summary/parser-debug-assert.eml");
        let s = summarize(crash);
        assert!(s.problems.contains(&Problem::Nul), "{s:?}");
        if cfg!(debug_assertions) {
            assert!(s.problems.contains(&Problem::BadMime), "{s:?}");
        }
    }

    #[test]
    fn a_large_message_is_parsed_only_in_part() {
        let mut m = with_body("", b"");
        let line = format!("{}\r\n", "z".repeat(78));
        while m.len() <= PARSE_PREFIX_OCTETS {
            m.extend_from_slice(line.as_bytes());
        }
        m.extend_from_slice(b"tail \0\r\n");
        let s = summarize(&m);
        // The byte checks still see the end of the message.
        assert_eq!(s.problems, vec![Problem::Nul, Problem::NotFullyChecked]);
        assert_eq!(s.subject, "s");
    }
}
