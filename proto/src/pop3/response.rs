//! POP3 response encoding (RFC 1939 §3, RFC 2449 §8 response codes).
//!
//! Status lines are built here and nowhere else, so that no response can
//! carry a stray CR or LF from client input, and every extended response
//! code is spelled one way. No IO.

use std::fmt;

/// RFC 2449 §8 and RFC 3206 extended response codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// `[IN-USE]`: the maildrop is locked by another session.
    InUse,
    /// `[LOGIN-DELAY]`: the user logged in too recently.
    LoginDelay,
    /// `[SYS/TEMP]`: a temporary system failure; try again later.
    SysTemp,
    /// `[SYS/PERM]`: a permanent system failure.
    SysPerm,
    /// `[AUTH]`: the credentials were wrong (RFC 3206).
    Auth,
}

impl Code {
    /// The code as written inside the brackets.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::InUse => "IN-USE",
            Code::LoginDelay => "LOGIN-DELAY",
            Code::SysTemp => "SYS/TEMP",
            Code::SysPerm => "SYS/PERM",
            Code::Auth => "AUTH",
        }
    }
}

/// Human-readable response text: never holds CR, LF or other control
/// characters, whatever it was built from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Text(String);

impl Text {
    /// Builds text, replacing control characters with `?`.
    pub fn new(s: impl Into<String>) -> Self {
        let s = s.into();
        if s.chars().any(char::is_control) {
            Text(
                s.chars()
                    .map(|c| if c.is_control() { '?' } else { c })
                    .collect(),
            )
        } else {
            Text(s)
        }
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `+OK text\r\n`.
pub fn ok(text: impl Into<String>) -> Vec<u8> {
    format!("+OK {}\r\n", Text::new(text)).into_bytes()
}

/// `-ERR [CODE] text\r\n`, or `-ERR text\r\n` without a code.
pub fn err(code: Option<Code>, text: impl Into<String>) -> Vec<u8> {
    match code {
        Some(code) => format!("-ERR [{}] {}\r\n", code.as_str(), Text::new(text)),
        None => format!("-ERR {}\r\n", Text::new(text)),
    }
    .into_bytes()
}

/// A multi-line response: `+OK text`, then each line (dot-stuffed), then
/// the terminating `.`.
pub fn multiline<I, S>(text: impl Into<String>, lines: I) -> Vec<u8>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut out = ok(text);
    for line in lines {
        let line = line.as_ref();
        if line.starts_with('.') {
            out.push(b'.');
        }
        out.extend_from_slice(Text::new(line).0.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_are_exact() {
        assert_eq!(ok("hi"), b"+OK hi\r\n");
        assert_eq!(err(None, "no"), b"-ERR no\r\n");
        assert_eq!(
            err(Some(Code::InUse), "locked"),
            b"-ERR [IN-USE] locked\r\n"
        );
        assert_eq!(err(Some(Code::SysTemp), "x"), b"-ERR [SYS/TEMP] x\r\n");
    }

    #[test]
    fn text_cannot_carry_line_breaks() {
        assert_eq!(ok("a\r\n+OK b"), b"+OK a??+OK b\r\n");
    }

    #[test]
    fn multiline_is_stuffed_and_terminated() {
        assert_eq!(
            multiline("list", ["1 10", ".x"]),
            b"+OK list\r\n1 10\r\n..x\r\n.\r\n"
        );
        assert_eq!(
            multiline("none", Vec::<String>::new()),
            b"+OK none\r\n.\r\n"
        );
    }
}
