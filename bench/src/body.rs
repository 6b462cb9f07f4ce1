//! Counting the octets of a POP3 multi-line response body (RFC 1939 §3)
//! as it streams in, without keeping it: the terminating `.` line ends
//! it, and a leading `.` that the server added by dot-stuffing is not
//! counted. The count is what RFC 1939 says LIST reports for RETR: the
//! message's octets with CRLF line endings, before stuffing.
//!
//! Pure and incremental, so that it can be fed whatever chunks a socket
//! returns; no IO.

/// Where the counter is within the current line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the first octet of a line.
    LineStart,
    /// Inside a line that did not start with a '.'.
    Inside,
    /// A line began with '.': it is the terminator or a stuffed line.
    Dot,
    /// A line began with ".\r": the terminator if LF follows.
    DotCr,
    /// The terminating line has been read.
    Done,
}

/// Counts the unstuffed octets of one multi-line body.
#[derive(Debug, Clone)]
pub struct BodyCounter {
    state: State,
    octets: u64,
    lines: u64,
}

impl Default for BodyCounter {
    fn default() -> Self {
        BodyCounter {
            state: State::LineStart,
            octets: 0,
            lines: 0,
        }
    }
}

impl BodyCounter {
    /// Feeds the next chunk and returns how many of its octets belong to
    /// the body (all of them unless the terminator ends inside the chunk;
    /// what follows it is the next response).
    pub fn feed(&mut self, chunk: &[u8]) -> usize {
        let mut i = 0;
        while i < chunk.len() {
            match self.state {
                State::Done => return i,
                State::LineStart => {
                    if chunk[i] == b'.' {
                        self.state = State::Dot;
                        i += 1;
                    } else {
                        self.state = State::Inside;
                    }
                }
                State::Inside => match memchr::memchr(b'\n', &chunk[i..]) {
                    Some(at) => {
                        self.octets += at as u64 + 1;
                        self.lines += 1;
                        i += at + 1;
                        self.state = State::LineStart;
                    }
                    None => {
                        self.octets += (chunk.len() - i) as u64;
                        i = chunk.len();
                    }
                },
                State::Dot => {
                    if chunk[i] == b'\r' {
                        self.state = State::DotCr;
                        i += 1;
                    } else {
                        // RFC 1939 §3: a stuffed line; its first '.' is
                        // not part of the message.
                        self.state = State::Inside;
                    }
                }
                State::DotCr => {
                    if chunk[i] == b'\n' {
                        self.state = State::Done;
                        i += 1;
                    } else {
                        // ".\r" then something other than LF: a stuffed
                        // line whose content starts with CR.
                        self.octets += 1;
                        self.state = State::Inside;
                    }
                }
            }
        }
        i
    }

    /// True once the terminating `.` line has been read.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Complete lines so far, the terminator not counted.
    pub fn lines(&self) -> u64 {
        self.lines
    }

    /// The body's octets so far, unstuffed.
    pub fn octets(&self) -> u64 {
        self.octets
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `wire` in chunks of `size` and returns (octets, consumed).
    fn count(wire: &[u8], size: usize) -> (u64, usize) {
        let (octets, _, consumed) = count_lines(wire, size);
        (octets, consumed)
    }

    /// Feeds `wire` in chunks of `size`: (octets, lines, consumed).
    fn count_lines(wire: &[u8], size: usize) -> (u64, u64, usize) {
        let mut counter = BodyCounter::default();
        let mut consumed = 0;
        for chunk in wire.chunks(size) {
            consumed += counter.feed(chunk);
            if counter.is_done() {
                break;
            }
        }
        assert!(counter.is_done(), "no terminator at chunk size {size}");
        (counter.octets(), counter.lines(), consumed)
    }

    #[test]
    fn counts_lines_without_the_terminator() {
        let wire = b"1 a\r\n2 .b\r\n..\r\n.\r\n";
        for size in 1..=wire.len() {
            assert_eq!(count_lines(wire, size), (14, 3, wire.len()));
        }
    }

    #[test]
    fn counts_unstuffed_octets_at_every_chunk_size() {
        let cases: &[(&[u8], u64)] = &[
            (b".\r\n", 0),
            (b"a\r\n.\r\n", 3),
            (b"Subject: x\r\n\r\nbody\r\n.\r\n", 20),
            (b"..\r\n.\r\n", 3),
            (b"..hidden\r\n.\r\n", 9),
            (b"...\r\n.\r\n", 4),
            (b".\rx\r\n.\r\n", 4),
            (b"a.\r\n.b\r\n.\r\n", 7),
        ];
        for &(wire, octets) in cases {
            for size in 1..=wire.len() {
                assert_eq!(count(wire, size), (octets, wire.len()), "{wire:?}");
            }
        }
    }

    #[test]
    fn leaves_the_next_response_unconsumed() {
        let wire = b"x\r\n.\r\n+OK next\r\n";
        for size in 1..=wire.len() {
            assert_eq!(count(wire, size), (3, 6));
        }
    }
}
