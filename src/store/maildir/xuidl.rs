//! The `X-UIDL:` header that qpopper, UW ipop3d and Dovecot (with
//! `pop3_reuse_xuidl`) take a message's UIDL from.
//!
//! Only the header is looked at, and at most [`MAX_HEADER`] octets of it:
//! the first `X-UIDL:` field (any case), unfolded and trimmed, is the
//! UIDL when it is one RFC 1939 allows (1-70 octets of 0x21-0x7E), and
//! ignored otherwise.

use std::io::Read;

/// How much of a message is read to find the header field.
pub(crate) const MAX_HEADER: usize = 64 << 10;

/// The UIDL an `X-UIDL:` field of this header gives, if any.
pub fn parse(message: &[u8]) -> Option<String> {
    let message = &message[..message.len().min(MAX_HEADER)];
    let mut lines = message.split_inclusive(|&b| b == b'\n').peekable();
    while let Some(line) = lines.next() {
        let text = trim_eol(line);
        if text.is_empty() {
            // The end of the header.
            return None;
        }
        let Some(colon) = memchr::memchr(b':', text) else {
            continue;
        };
        if !text[..colon].eq_ignore_ascii_case(b"X-UIDL") {
            continue;
        }
        let mut value = text[colon + 1..].to_vec();
        // Continuation lines (RFC 5322 folding).
        while let Some(next) = lines.peek() {
            if !matches!(next.first(), Some(b' ' | b'\t')) {
                break;
            }
            value.extend_from_slice(trim_eol(next));
            lines.next();
        }
        let value = value.trim_ascii();
        return super::shown::is_uidl(value)
            .then(|| String::from_utf8(value.to_vec()).ok())
            .flatten();
    }
    None
}

fn trim_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Reads at most [`MAX_HEADER`] octets of `file`, up to the end of its
/// header: a piece at a time, stopping at the blank line, so that the
/// first open of a large maildrop reads each message's header, not the
/// first 64 KiB of every message.
pub(crate) fn read_header(file: &mut std::fs::File) -> std::io::Result<Vec<u8>> {
    const PIECE: u64 = 8 << 10;
    let mut buf = Vec::with_capacity(PIECE as usize);
    let mut file = file.take(MAX_HEADER as u64);
    loop {
        let start = buf.len();
        if (&mut file).take(PIECE).read_to_end(&mut buf)? == 0 {
            return Ok(buf);
        }
        // The blank line may straddle the pieces.
        let seen = &buf[start.saturating_sub(2)..];
        let ended = buf.starts_with(b"\n")
            || buf.starts_with(b"\r\n")
            || memchr::memmem::find(seen, b"\n\n").is_some()
            || memchr::memmem::find(seen, b"\n\r\n").is_some();
        if ended {
            return Ok(buf);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_first_valid_field_in_the_header_only() {
        assert_eq!(
            parse(b"From: a\r\nX-UIDL: abc123\r\n\r\nbody"),
            Some("abc123".into())
        );
        assert_eq!(parse(b"x-uidl:\t  <1.2@h>  \n\n"), Some("<1.2@h>".into()));
        assert_eq!(parse(b"X-UIDL:\n folded\n\n"), Some("folded".into()));
        assert_eq!(parse(b"X-UIDL: a\n b\n\n"), None, "a space inside");
        assert_eq!(parse(b"Subject: x\n\nX-UIDL: inbody\n"), None);
        assert_eq!(parse(b"X-UIDL: \n\n"), None);
        assert_eq!(
            parse(format!("X-UIDL: {}\n", "u".repeat(71)).as_bytes()),
            None
        );
        assert_eq!(
            parse(format!("X-UIDL: {}\n", "u".repeat(70)).as_bytes()),
            Some("u".repeat(70))
        );
        assert_eq!(parse(b"X-UIDL: caf\xc3\xa9\n"), None);
        assert_eq!(parse(b"X-UIDL: a\x00b\n"), None);
        // The first field counts, even when it is not valid.
        assert_eq!(parse(b"X-UIDL: bad one\nX-UIDL: good\n\n"), None);
        assert_eq!(parse(b"X-UIDLX: no\nX-UIDL: yes\n"), Some("yes".into()));
        let far = [vec![b'X'; MAX_HEADER], b": y\nX-UIDL: late\n".to_vec()].concat();
        assert_eq!(parse(&far), None);
        assert_eq!(parse(b""), None);
    }

    /// Only the header is read from the file, whatever the size of the
    /// body; a header longer than one piece is read whole.
    #[test]
    fn reads_the_header_and_not_the_body() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m");
        let read = |content: &[u8]| {
            std::fs::write(&path, content).unwrap();
            read_header(&mut std::fs::File::open(&path).unwrap()).unwrap()
        };
        let body = vec![b'b'; 1 << 20];
        let message = [&b"Subject: s\r\nX-UIDL: u1\r\n\r\n"[..], &body].concat();
        let header = read(&message);
        assert!(header.len() <= 8 << 10, "{}", header.len());
        assert_eq!(parse(&header), Some("u1".into()));
        // A header of two pieces and more, its X-UIDL last, the blank line
        // where the second and third pieces meet.
        let mut long = b"X-Long: ".to_vec();
        long.resize((8 << 10) - 1, b'x');
        long.extend_from_slice(b"\n");
        long.resize((16 << 10) - 12, b'y');
        long.extend_from_slice(b"\nX-UIDL: u2\n\n");
        long.extend_from_slice(&body);
        let header = read(&long);
        assert!(header.len() <= 24 << 10, "{}", header.len());
        assert_eq!(parse(&header), Some("u2".into()));
        // No blank line: at most MAX_HEADER octets.
        assert_eq!(read(&vec![b'h'; 1 << 20]).len(), MAX_HEADER);
        assert_eq!(read(&[&b"\n"[..], &body].concat()).len(), 8 << 10);
    }
}
