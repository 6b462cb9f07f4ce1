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

/// Why the server ends a session on its own, or turns a connection away
/// before a session began: the last line the driver writes when the core
/// has no say (no command is being answered). The one place for their
/// wire text, as the core's replies are for every other status line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Farewell {
    /// Every connection the server takes is open.
    Busy,
    /// The client's address holds every connection it may.
    AddressBusy,
    /// The address failed to log in too often: refused for `seconds` more.
    AddressBlocked {
        /// Seconds until the address may connect again (at least 1).
        seconds: u64,
    },
    /// A login attempt from an address that failed too often meanwhile.
    LoginsBlocked,
    /// The server is stopping; an open maildrop is released unchanged.
    ShuttingDown,
    /// RFC 1939 §3 autologout, after login.
    Autologout,
    /// The authorization deadline passed before login.
    LoginTimeout,
    /// The pre-login table was full and this was the oldest connection of
    /// the address holding the most.
    Evicted,
}

impl Farewell {
    /// The code the line carries, if any.
    fn code(self) -> Option<Code> {
        match self {
            Farewell::Autologout => None,
            _ => Some(Code::SysTemp),
        }
    }

    /// The whole line, `-ERR …\r\n`.
    pub fn line(self) -> Vec<u8> {
        err(self.code(), self.to_string())
    }
}

/// The text of the line, without its status and code (for logs).
impl fmt::Display for Farewell {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Farewell::Busy => f.write_str("Too many connections; try again later"),
            Farewell::AddressBusy => {
                f.write_str("Too many connections from your address; try again later")
            }
            Farewell::AddressBlocked { seconds } => write!(
                f,
                "Too many failed logins from your address; try again in {seconds} seconds"
            ),
            Farewell::LoginsBlocked => {
                f.write_str("Too many failed logins from your address; try again later")
            }
            Farewell::ShuttingDown => f.write_str("Server shutting down; nothing was deleted"),
            Farewell::Autologout => {
                f.write_str("Autologout: idle for too long; nothing was deleted")
            }
            Farewell::LoginTimeout => f.write_str("Too long without logging in; closing"),
            Farewell::Evicted => {
                f.write_str("Too many connections waiting to log in; closing the oldest")
            }
        }
    }
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
    fn farewell_lines_are_exact() {
        let cases: [(Farewell, &[u8]); 8] = [
            (
                Farewell::Busy,
                b"-ERR [SYS/TEMP] Too many connections; try again later\r\n",
            ),
            (
                Farewell::AddressBusy,
                b"-ERR [SYS/TEMP] Too many connections from your address; try again later\r\n",
            ),
            (
                Farewell::AddressBlocked { seconds: 7 },
                b"-ERR [SYS/TEMP] Too many failed logins from your address; try again in 7 seconds\r\n",
            ),
            (
                Farewell::LoginsBlocked,
                b"-ERR [SYS/TEMP] Too many failed logins from your address; try again later\r\n",
            ),
            (
                Farewell::ShuttingDown,
                b"-ERR [SYS/TEMP] Server shutting down; nothing was deleted\r\n",
            ),
            (
                Farewell::Autologout,
                b"-ERR Autologout: idle for too long; nothing was deleted\r\n",
            ),
            (
                Farewell::LoginTimeout,
                b"-ERR [SYS/TEMP] Too long without logging in; closing\r\n",
            ),
            (
                Farewell::Evicted,
                b"-ERR [SYS/TEMP] Too many connections waiting to log in; closing the oldest\r\n",
            ),
        ];
        for (farewell, line) in cases {
            assert_eq!(farewell.line(), line, "{farewell:?}");
        }
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
