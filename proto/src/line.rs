//! Command-line framing: turns the raw bytes a client sends into command
//! lines, for POP3 and LMTP.
//!
//! This module owns everything between the socket bytes and a command line:
//!
//! - line endings: CRLF (RFC 1939 §3) and, for people at a telnet prompt, a
//!   bare LF; a bare CR is data, and telnet's "CR NUL" loses its NUL;
//! - the length limit: RFC 2449 §4 allows 255 octets per command, counting the
//!   CRLF. An over-long line is read to its end, dropped, and reported once as
//!   [`LineEvent::TooLong`]; its tail never becomes a command;
//! - line editing: backspace (0x08) and DEL (0x7F) erase the previous
//!   character, as a terminal in line mode would have done;
//! - telnet option negotiation (RFC 854, RFC 855): `WILL`/`DO` are refused
//!   once per option, subnegotiation and other commands are skipped.
//!
//! No IO: the driver pushes bytes in and writes [`LineEvent::Telnet`] replies
//! out. The reader never holds more line data than the limit.

/// Line feed: ends a line.
const LF: u8 = b'\n';
/// Carriage return: stripped right before LF, data elsewhere.
const CR: u8 = b'\r';
/// Backspace: erases the previous character.
const BS: u8 = 0x08;
/// Delete: erases the previous character (many terminals send it for backspace).
const DEL: u8 = 0x7f;
/// Telnet "interpret as command" (RFC 854).
const IAC: u8 = 255;
/// Telnet commands (RFC 854).
const DONT: u8 = 254;
const DO: u8 = 253;
const WONT: u8 = 252;
const WILL: u8 = 251;
const SB: u8 = 250;
const SE: u8 = 240;

/// What [`LineReader::next_event`] produces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineEvent {
    /// A complete line, without its line ending, after editing.
    Line(Vec<u8>),
    /// A line exceeded the limit; it was read to its end and dropped.
    /// Emitted once per such line, at its end (LF).
    TooLong,
    /// Bytes to send back to a telnet client (option refusals). The driver
    /// writes them as-is.
    Telnet(Vec<u8>),
}

/// Where the telnet command parser is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Telnet {
    /// Ordinary data.
    Data,
    /// After IAC.
    Iac,
    /// After `IAC WILL|WONT|DO|DONT`, waiting for the option code.
    Option(u8),
    /// Inside `IAC SB ...`, waiting for `IAC SE`.
    Sub,
    /// After an IAC inside a subnegotiation.
    SubIac,
}

/// A set of 256 telnet option codes.
#[derive(Debug, Clone, Copy, Default)]
struct OptionSet([u64; 4]);

impl OptionSet {
    /// Adds `code`; returns true if it was not in the set yet.
    fn insert(&mut self, code: u8) -> bool {
        let (word, bit) = (usize::from(code / 64), 1u64 << (code % 64));
        let fresh = self.0[word] & bit == 0;
        self.0[word] |= bit;
        fresh
    }
}

/// Splits a client's byte stream into command lines; see the module docs for
/// the rules.
#[derive(Debug)]
pub struct LineReader {
    /// Raw bytes pushed but not yet processed start at `raw_pos`.
    raw: Vec<u8>,
    raw_pos: usize,
    /// The current line after editing; may end in a CR that LF will strip.
    /// Never longer than `max_line_octets - 1`, so that its LF still fits.
    line: Vec<u8>,
    /// The last byte added to `line` was a CR received right before now.
    prev_cr: bool,
    /// The current line overflowed: drop bytes up to LF, then report it.
    discarding: bool,
    telnet: Telnet,
    /// Options already refused, so that a client that insists cannot make us
    /// loop.
    refused_will: OptionSet,
    refused_do: OptionSet,
    /// The limit, counting the line ending.
    max_line_octets: usize,
}

impl LineReader {
    /// A reader that accepts lines of at most `max_line_octets` octets,
    /// counting the line ending as RFC 2449 §4 does: with 255, a 253-octet
    /// line plus CRLF is accepted and a 254-octet one is [`LineEvent::TooLong`].
    pub fn new(max_line_octets: usize) -> Self {
        LineReader {
            raw: Vec::new(),
            raw_pos: 0,
            line: Vec::new(),
            prev_cr: false,
            discarding: false,
            telnet: Telnet::Data,
            refused_will: OptionSet::default(),
            refused_do: OptionSet::default(),
            max_line_octets,
        }
    }

    /// Changes the limit, from the line being read on (SASL responses need
    /// longer lines than commands).
    pub fn set_max_line_octets(&mut self, n: usize) {
        self.max_line_octets = n;
    }

    /// Appends raw input. Nothing is processed until [`Self::next_event`].
    pub fn push(&mut self, bytes: &[u8]) {
        if self.raw_pos == self.raw.len() {
            self.raw.clear();
            self.raw_pos = 0;
        } else if self.raw_pos > 0 {
            self.raw.drain(..self.raw_pos);
            self.raw_pos = 0;
        }
        self.raw.extend_from_slice(bytes);
    }

    /// Processes buffered raw bytes until one event is ready. `None` means
    /// more input is needed.
    pub fn next_event(&mut self) -> Option<LineEvent> {
        loop {
            let Some(&byte) = self.raw.get(self.raw_pos) else {
                // Everything consumed: reuse the allocation for the next push.
                self.raw.clear();
                self.raw_pos = 0;
                return None;
            };
            match self.telnet {
                Telnet::Data if self.discarding => {
                    let rest = &self.raw[self.raw_pos..];
                    // Telnet commands are still parsed while discarding, so
                    // that an LF inside a subnegotiation means the same thing
                    // in both modes.
                    match rest.iter().position(|&b| b == LF || b == IAC) {
                        None => self.raw_pos = self.raw.len(),
                        Some(i) => {
                            self.raw_pos += i + 1;
                            if rest[i] == IAC {
                                self.telnet = Telnet::Iac;
                            } else {
                                self.discarding = false;
                                return Some(LineEvent::TooLong);
                            }
                        }
                    }
                }
                Telnet::Data => {
                    if self.prev_cr && byte == 0 {
                        // Telnet sends a bare CR as "CR NUL" (RFC 854).
                        self.raw_pos += 1;
                        self.prev_cr = false;
                        continue;
                    }
                    let rest = &self.raw[self.raw_pos..];
                    let run = rest
                        .iter()
                        .position(|&b| matches!(b, LF | CR | BS | DEL | IAC))
                        .unwrap_or(rest.len());
                    if run > 0 {
                        append(
                            &mut self.line,
                            &mut self.discarding,
                            self.max_line_octets,
                            &rest[..run],
                        );
                        self.raw_pos += run;
                        self.prev_cr = false;
                        continue;
                    }
                    self.raw_pos += 1;
                    match byte {
                        LF => return Some(self.end_line()),
                        CR => {
                            append(
                                &mut self.line,
                                &mut self.discarding,
                                self.max_line_octets,
                                &[CR],
                            );
                            self.prev_cr = !self.discarding;
                        }
                        BS | DEL => {
                            erase_char(&mut self.line);
                            self.prev_cr = false;
                        }
                        _ => self.telnet = Telnet::Iac,
                    }
                }
                Telnet::Iac => {
                    self.raw_pos += 1;
                    self.telnet = match byte {
                        WILL | WONT | DO | DONT => Telnet::Option(byte),
                        SB => Telnet::Sub,
                        // IAC IAC is a literal 0xFF, never valid in a command;
                        // NOP, AYT, IP, GA and the rest need no answer.
                        _ => Telnet::Data,
                    };
                }
                Telnet::Option(command) => {
                    self.raw_pos += 1;
                    self.telnet = Telnet::Data;
                    // RFC 854: refuse what we do not support, but only once
                    // per option, so that two refusing parties cannot loop.
                    let refusal = match command {
                        WILL if self.refused_will.insert(byte) => Some(DONT),
                        DO if self.refused_do.insert(byte) => Some(WONT),
                        _ => None,
                    };
                    if let Some(refusal) = refusal {
                        return Some(LineEvent::Telnet(vec![IAC, refusal, byte]));
                    }
                }
                Telnet::Sub => {
                    let rest = &self.raw[self.raw_pos..];
                    match rest.iter().position(|&b| b == IAC) {
                        None => self.raw_pos = self.raw.len(),
                        Some(i) => {
                            self.raw_pos += i + 1;
                            self.telnet = Telnet::SubIac;
                        }
                    }
                }
                Telnet::SubIac => {
                    self.raw_pos += 1;
                    self.telnet = if byte == SE {
                        Telnet::Data
                    } else {
                        Telnet::Sub
                    };
                }
            }
        }
    }

    /// True while raw unprocessed bytes or a partial line (including one
    /// being discarded) remain.
    pub fn has_buffered_input(&self) -> bool {
        self.raw_pos < self.raw.len() || !self.line.is_empty() || self.discarding
    }

    /// Drops everything buffered: raw bytes, the partial line, and the telnet
    /// state. After STLS, plaintext pipelined behind the command must never be
    /// executed (the STARTTLS injection attacks of RFC 3207 §6 / CVE-2011-0411).
    pub fn discard_buffered(&mut self) {
        *self = LineReader {
            raw: std::mem::take(&mut self.raw),
            line: std::mem::take(&mut self.line),
            ..LineReader::new(self.max_line_octets)
        };
        self.raw.clear();
        self.line.clear();
    }

    /// Takes the raw bytes pushed but not yet processed, leaving the reader
    /// with nothing to process. Telnet and line-editing rules never touch
    /// them, so a protocol that switches to a different framing (LMTP DATA,
    /// RFC 5321 §4.5.2) gets them exactly as the client sent them. Call it
    /// right after a [`LineEvent::Line`], when no partial line is held;
    /// a partial line, if any, stays in the reader.
    pub fn take_buffered(&mut self) -> Vec<u8> {
        let rest = self.raw.split_off(self.raw_pos);
        self.raw.clear();
        self.raw_pos = 0;
        rest
    }

    /// Releases buffer capacity; for sessions that sit idle.
    pub fn shrink(&mut self) {
        self.raw.drain(..self.raw_pos);
        self.raw_pos = 0;
        self.raw.shrink_to_fit();
        self.line.shrink_to_fit();
    }

    /// Handles LF: the line ends here.
    fn end_line(&mut self) -> LineEvent {
        if self.prev_cr {
            self.line.pop();
            self.prev_cr = false;
        }
        // The LF (or CRLF, whose CR `line` held until now) is counted.
        let too_long = self.line.len() + 1 > self.max_line_octets;
        let event = if too_long {
            LineEvent::TooLong
        } else {
            LineEvent::Line(self.line.as_slice().to_vec())
        };
        self.line.clear();
        event
    }
}

/// Appends `bytes` to `line`, or switches to discard mode if the line could no
/// longer fit with its LF.
fn append(line: &mut Vec<u8>, discarding: &mut bool, max_line_octets: usize, bytes: &[u8]) {
    let room = max_line_octets.saturating_sub(1);
    let needed = line.len() + bytes.len();
    if needed > room {
        line.clear();
        *discarding = true;
        return;
    }
    if needed > line.capacity() {
        // Grow as Vec would, but never past the limit: the limit bounds memory.
        let target = needed.max(line.capacity() * 2).max(64).min(room);
        line.reserve_exact(target - line.len());
    }
    line.extend_from_slice(bytes);
}

/// Erases the last character of `line`: a whole UTF-8 sequence if the line
/// ends in one, else one byte.
fn erase_char(line: &mut Vec<u8>) {
    let Some(&last) = line.last() else { return };
    if last >= 0x80 {
        for width in 2..=4 {
            let Some(start) = line.len().checked_sub(width) else {
                break;
            };
            let tail = &line[start..];
            // A valid tail that starts with a lead byte and ends in a non-ASCII
            // byte is exactly one character.
            if tail[0] >= 0xc0 && std::str::from_utf8(tail).is_ok() {
                line.truncate(start);
                return;
            }
        }
    }
    line.pop();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(bytes: &[u8]) -> LineEvent {
        LineEvent::Line(bytes.to_vec())
    }

    fn telnet(bytes: &[u8]) -> LineEvent {
        LineEvent::Telnet(bytes.to_vec())
    }

    /// Chunk sizes every script is fed at.
    fn chunk_sizes() -> impl Iterator<Item = usize> {
        (1..=64).chain([100, 255, 256, 1000, 4096, usize::MAX])
    }

    /// Feeds `input` in chunks of `size`, draining events after each push as
    /// the driver does, and checks the memory bound all along.
    fn run(limit: usize, input: &[u8], size: usize) -> Vec<LineEvent> {
        let mut reader = LineReader::new(limit);
        let mut events = Vec::new();
        for chunk in input.chunks(size.min(input.len().max(1))) {
            reader.push(chunk);
            while let Some(event) = reader.next_event() {
                assert!(reader.line.len() < limit.max(1));
                events.push(event);
            }
            assert!(reader.line.len() < limit.max(1));
            assert!(reader.line.capacity() < limit.max(64));
            assert_eq!(reader.raw_pos, 0);
            assert!(reader.raw.is_empty());
        }
        events
    }

    #[test]
    fn scripts_give_the_same_events_at_every_chunk_size() {
        let long_dele = {
            let mut v = vec![b'x'; 594];
            v.extend_from_slice(b"DELE 1\r\nSTAT\r\n");
            v
        };
        let at = |n: usize, tail: &[u8]| {
            let mut v = vec![b'a'; n];
            v.extend_from_slice(tail);
            v
        };
        let cases: Vec<(&str, usize, Vec<u8>, Vec<LineEvent>)> = vec![
            ("empty input", 255, b"".to_vec(), vec![]),
            ("crlf", 255, b"STAT\r\n".to_vec(), vec![line(b"STAT")]),
            ("bare lf", 255, b"STAT\n".to_vec(), vec![line(b"STAT")]),
            ("partial line waits", 255, b"STAT".to_vec(), vec![]),
            (
                "pipelined",
                255,
                b"USER a\r\nPASS b\nSTAT\r\n".to_vec(),
                vec![line(b"USER a"), line(b"PASS b"), line(b"STAT")],
            ),
            (
                "empty line",
                255,
                b"\r\n\n".to_vec(),
                vec![line(b""), line(b"")],
            ),
            (
                "bare cr is data",
                255,
                b"A\rB\r\r\n".to_vec(),
                vec![line(b"A\rB\r")],
            ),
            (
                "cr nul drops nul",
                255,
                b"A\r\0B\n".to_vec(),
                vec![line(b"A\rB")],
            ),
            (
                "cr nul lf keeps the cr",
                255,
                b"A\r\0\n".to_vec(),
                vec![line(b"A\r")],
            ),
            (
                "nul elsewhere kept",
                255,
                b"\0A\0\n".to_vec(),
                vec![line(b"\0A\0")],
            ),
            (
                "8-bit and controls kept",
                255,
                b"\x01\x80\xfe\t\x1b\n".to_vec(),
                vec![line(b"\x01\x80\xfe\t\x1b")],
            ),
            (
                "backspace",
                255,
                b"STS\x08AT\r\n".to_vec(),
                vec![line(b"STAT")],
            ),
            ("del", 255, b"STS\x7fAT\r\n".to_vec(), vec![line(b"STAT")]),
            (
                "backspace on empty line",
                255,
                b"\x08\x08\x7fQUIT\n".to_vec(),
                vec![line(b"QUIT")],
            ),
            (
                "backspace erases a whole utf-8 character",
                255,
                "Aé€😀\x08\x08\x08B\n".as_bytes().to_vec(),
                vec![line(b"AB")],
            ),
            (
                "backspace erases one byte of invalid utf-8",
                255,
                b"A\x80\x80\x08\n".to_vec(),
                vec![line(b"A\x80")],
            ),
            (
                "backspace erases a truncated sequence byte by byte",
                255,
                b"A\xe2\x82\x08\n".to_vec(),
                vec![line(b"A\xe2")],
            ),
            (
                "backspace erases a cr",
                255,
                b"AB\r\x08\n".to_vec(),
                vec![line(b"AB")],
            ),
            (
                "backspace does not cross lines",
                255,
                b"A\n\x08B\n".to_vec(),
                vec![line(b"A"), line(b"B")],
            ),
            (
                "will and do refused",
                255,
                b"\xff\xfb\x18\xff\xfd\x01USER\n".to_vec(),
                vec![
                    telnet(b"\xff\xfe\x18"),
                    telnet(b"\xff\xfc\x01"),
                    line(b"USER"),
                ],
            ),
            (
                "refused once per option",
                255,
                b"\xff\xfb\x18\xff\xfb\x18\xff\xfd\x18\xff\xfd\x18\xff\xfb\x1f\n".to_vec(),
                vec![
                    telnet(b"\xff\xfe\x18"),
                    telnet(b"\xff\xfc\x18"),
                    telnet(b"\xff\xfe\x1f"),
                    line(b""),
                ],
            ),
            (
                "wont and dont silent",
                255,
                b"S\xff\xfc\x01T\xff\xfe\x03AT\n".to_vec(),
                vec![line(b"STAT")],
            ),
            (
                "subnegotiation skipped, lf inside too",
                255,
                b"ST\xff\xfa\x18\x00xterm\n\xff\xff\r\xff\xf0AT\n".to_vec(),
                vec![line(b"STAT")],
            ),
            (
                "iac iac and other commands dropped",
                255,
                b"S\xff\xffT\xff\xf1A\xff\xf6T\xff\xf4\r\n".to_vec(),
                vec![line(b"STAT")],
            ),
            (
                "iac between cr and lf",
                255,
                b"STAT\r\xff\xf1\n".to_vec(),
                vec![line(b"STAT")],
            ),
            (
                "limit: 253 + crlf fits",
                255,
                at(253, b"\r\n"),
                vec![line(&[b'a'; 253])],
            ),
            (
                "limit: 254 + crlf too long",
                255,
                at(254, b"\r\nNOOP\r\n"),
                vec![LineEvent::TooLong, line(b"NOOP")],
            ),
            (
                "limit: 254 + lf fits",
                255,
                at(254, b"\n"),
                vec![line(&[b'a'; 254])],
            ),
            (
                "limit: 255 + lf too long",
                255,
                at(255, b"\n"),
                vec![LineEvent::TooLong],
            ),
            (
                "limit: counted after editing",
                10,
                b"ABCDEFGH\x08\x08\x08\x08XYZ\r\n".to_vec(),
                vec![line(b"ABCDXYZ")],
            ),
            (
                "limit: overflow is final even if erased later",
                10,
                b"ABCDEFGHIJ\x08\x08\x08\x08\r\nOK\n".to_vec(),
                vec![LineEvent::TooLong, line(b"OK")],
            ),
            (
                "limit: tail never becomes a command",
                255,
                long_dele,
                vec![LineEvent::TooLong, line(b"STAT")],
            ),
            (
                "limit: telnet still answered while discarding",
                4,
                b"ABCDEF\xff\xfd\x05GH\xff\xfa\n\xff\xf0IJ\nOK\n".to_vec(),
                vec![telnet(b"\xff\xfc\x05"), LineEvent::TooLong, line(b"OK")],
            ),
            (
                "limit: zero",
                0,
                b"\nA\n".to_vec(),
                vec![LineEvent::TooLong, LineEvent::TooLong],
            ),
            (
                "limit: one",
                1,
                b"\nA\n".to_vec(),
                vec![line(b""), LineEvent::TooLong],
            ),
            (
                "limit: huge line",
                255,
                at(100_000, b"\r\nQUIT\r\n"),
                vec![LineEvent::TooLong, line(b"QUIT")],
            ),
        ];
        for (name, limit, input, expected) in &cases {
            for size in chunk_sizes() {
                assert_eq!(
                    &run(*limit, input, size),
                    expected,
                    "{name} at chunk size {size}"
                );
            }
        }
    }

    #[test]
    fn raising_the_limit_admits_longer_lines() {
        let mut reader = LineReader::new(8);
        reader.push(b"0123456789\nAUTH PLAIN\n");
        assert_eq!(reader.next_event(), Some(LineEvent::TooLong));
        reader.set_max_line_octets(100);
        reader.push(b"0123456789\n");
        assert_eq!(reader.next_event(), Some(line(b"AUTH PLAIN")));
        assert_eq!(reader.next_event(), Some(line(b"0123456789")));
        assert_eq!(reader.next_event(), None);
    }

    #[test]
    fn lowering_the_limit_applies_to_the_line_in_progress() {
        let mut reader = LineReader::new(100);
        reader.push(b"0123456789");
        assert_eq!(reader.next_event(), None);
        reader.set_max_line_octets(5);
        reader.push(b"\n");
        assert_eq!(reader.next_event(), Some(LineEvent::TooLong));
    }

    #[test]
    fn discard_buffered_drops_pipelined_plaintext() {
        let mut reader = LineReader::new(255);
        reader.push(b"STLS\r\nUSER evil\r\nPASS x\r\nPAR\xff\xfa");
        assert_eq!(reader.next_event(), Some(line(b"STLS")));
        assert!(reader.has_buffered_input());
        reader.discard_buffered();
        assert!(!reader.has_buffered_input());
        assert_eq!(reader.next_event(), None);
        // The subnegotiation state is gone too, and options may be refused again.
        reader.push(b"CAPA\r\n\xff\xfb\x01");
        assert_eq!(reader.next_event(), Some(line(b"CAPA")));
        assert_eq!(reader.next_event(), Some(telnet(b"\xff\xfe\x01")));
    }

    #[test]
    fn take_buffered_returns_unprocessed_bytes_untouched() {
        let mut reader = LineReader::new(255);
        reader.push(b"DATA\r\nbody\x08\xff\xfb\x01\r\n.\r\n");
        assert_eq!(reader.next_event(), Some(line(b"DATA")));
        reader.push(b"QUIT");
        assert_eq!(
            reader.take_buffered(),
            b"body\x08\xff\xfb\x01\r\n.\r\nQUIT".to_vec()
        );
        assert!(!reader.has_buffered_input());
        assert_eq!(reader.next_event(), None);
        assert_eq!(reader.take_buffered(), b"".to_vec());
        // Framing resumes on bytes handed back.
        reader.push(b"NOOP\r\n");
        assert_eq!(reader.next_event(), Some(line(b"NOOP")));
    }

    #[test]
    fn has_buffered_input_tracks_partial_lines() {
        let mut reader = LineReader::new(4);
        assert!(!reader.has_buffered_input());
        reader.push(b"AB");
        assert!(reader.has_buffered_input());
        assert_eq!(reader.next_event(), None);
        assert!(reader.has_buffered_input());
        reader.push(b"CDEF");
        assert_eq!(reader.next_event(), None);
        // Discarding an over-long line is still a partial line.
        assert!(reader.has_buffered_input());
        reader.push(b"\n");
        assert_eq!(reader.next_event(), Some(LineEvent::TooLong));
        assert!(!reader.has_buffered_input());
    }

    #[test]
    fn shrink_releases_capacity_and_keeps_state() {
        let mut reader = LineReader::new(255);
        reader.push(&[b'a'; 200]);
        reader.push(b"");
        assert_eq!(reader.next_event(), None);
        reader.push(b"\nQU");
        assert_eq!(reader.next_event(), Some(line(&[b'a'; 200])));
        reader.shrink();
        assert!(reader.line.capacity() < 200);
        reader.push(b"IT\n");
        assert_eq!(reader.next_event(), Some(line(b"QUIT")));
        assert_eq!(reader.next_event(), None);
        reader.shrink();
        assert_eq!(reader.raw.capacity(), 0);
        assert_eq!(reader.line.capacity(), 0);
    }

    #[test]
    fn push_without_draining_keeps_unread_bytes() {
        let mut reader = LineReader::new(255);
        reader.push(b"A\nB\n");
        assert_eq!(reader.next_event(), Some(line(b"A")));
        reader.push(b"C\n");
        assert_eq!(reader.next_event(), Some(line(b"B")));
        assert_eq!(reader.next_event(), Some(line(b"C")));
        assert_eq!(reader.next_event(), None);
    }
}
