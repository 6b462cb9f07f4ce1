//! LMTP command parsing (RFC 2033 §4, RFC 5321 §4.1, RFC 1652, RFC 1870).
//!
//! A command line (already framed by [`crate::line`]) becomes a [`Command`]
//! or a [`ParseError`] that says which reply it deserves. Verbs and
//! parameter keywords are case-insensitive. Paths are the text inside
//! `<...>`: source routes (`@a,@b:`) are dropped (RFC 5321 §4.1.2 says they
//! must be accepted and may be ignored), and unbalanced brackets, control
//! characters and invalid UTF-8 are refused. No IO; no panics on any input.

/// A `BODY=` value (RFC 1652, RFC 6152).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// `BODY=7BIT`.
    SevenBit,
    /// `BODY=8BITMIME`.
    EightBitMime,
}

/// One parsed LMTP command. Variants mirror the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `LHLO domain` (RFC 2033 §4.1).
    Lhlo(String),
    /// `HELO` or `EHLO`: SMTP greetings, which LMTP refuses (RFC 2033 §4.1).
    Helo,
    /// `MAIL FROM:<reverse-path> [SIZE=n] [BODY=7BIT|8BITMIME]`.
    Mail {
        /// The reverse path without brackets; empty for the null path `<>`.
        reverse_path: String,
        /// RFC 1870 `SIZE=`: the client's estimate of the message octets.
        size: Option<u64>,
        /// RFC 1652 `BODY=`.
        body: Option<Body>,
    },
    /// `RCPT TO:<forward-path>`.
    Rcpt {
        /// The forward path without brackets or source route.
        forward_path: String,
    },
    /// `DATA`.
    Data,
    /// `RSET`.
    Rset,
    /// `NOOP [string]`.
    Noop,
    /// `QUIT`.
    Quit,
    /// `VRFY string`: answered 252, never revealing whether a user exists.
    Vrfy,
    /// `HELP [string]`.
    Help,
}

/// Why a command line was not understood, in the shapes the replies
/// distinguish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// Empty line, or a verb this server does not know: `500 5.5.2`.
    Unknown,
    /// A known verb with malformed arguments: `501 5.5.4`.
    Syntax,
    /// The MAIL path is malformed: `501 5.1.7`.
    BadSender,
    /// The RCPT path is malformed: `501 5.1.3`.
    BadRecipient,
    /// A MAIL or RCPT parameter this server does not implement:
    /// `555 5.5.4` (RFC 5321 §4.1.1.11).
    UnknownParameter,
}

/// Parses one command line (without its line ending).
pub fn parse(line: &[u8]) -> Result<Command, ParseError> {
    let line = trim_blanks(line);
    let (verb, rest) = match line.iter().position(|&b| b == b' ') {
        Some(i) => (&line[..i], trim_blanks(&line[i + 1..])),
        None => (line, &[][..]),
    };
    let is = |word: &str| verb.eq_ignore_ascii_case(word.as_bytes());
    let no_args = |command: Command| {
        if rest.is_empty() {
            Ok(command)
        } else {
            Err(ParseError::Syntax)
        }
    };
    if is("LHLO") {
        parse_domain(rest).map(Command::Lhlo)
    } else if is("HELO") || is("EHLO") {
        Ok(Command::Helo)
    } else if is("MAIL") {
        parse_mail(rest)
    } else if is("RCPT") {
        parse_rcpt(rest)
    } else if is("DATA") {
        no_args(Command::Data)
    } else if is("RSET") {
        no_args(Command::Rset)
    } else if is("QUIT") {
        no_args(Command::Quit)
    } else if is("NOOP") {
        // RFC 5321 §4.1.1.9: a NOOP argument is ignored.
        Ok(Command::Noop)
    } else if is("VRFY") {
        if rest.is_empty() {
            Err(ParseError::Syntax)
        } else {
            Ok(Command::Vrfy)
        }
    } else if is("HELP") {
        Ok(Command::Help)
    } else {
        Err(ParseError::Unknown)
    }
}

/// The LHLO argument: one word of printable ASCII or UTF-8 (a domain or an
/// address literal; RFC 2033 servers need not check it further).
fn parse_domain(rest: &[u8]) -> Result<String, ParseError> {
    let text = std::str::from_utf8(rest).map_err(|_| ParseError::Syntax)?;
    if text.is_empty() || text.chars().any(|c| c.is_control() || c == ' ') {
        return Err(ParseError::Syntax);
    }
    Ok(text.to_string())
}

fn parse_mail(rest: &[u8]) -> Result<Command, ParseError> {
    let after = strip_keyword(rest, b"FROM:").ok_or(ParseError::Syntax)?;
    let (reverse_path, params) = parse_path(after).ok_or(ParseError::BadSender)?;
    let mut size = None;
    let mut body = None;
    for (key, value) in params.map_err(|()| ParseError::Syntax)? {
        if key.eq_ignore_ascii_case("SIZE") {
            let value = value.ok_or(ParseError::Syntax)?;
            if size.is_some() || value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
                return Err(ParseError::Syntax);
            }
            // A size beyond u64 is over any limit; saturate rather than refuse
            // the syntax.
            size = Some(value.parse::<u64>().unwrap_or(u64::MAX));
        } else if key.eq_ignore_ascii_case("BODY") {
            let value = value.ok_or(ParseError::Syntax)?;
            if body.is_some() {
                return Err(ParseError::Syntax);
            }
            body = Some(if value.eq_ignore_ascii_case("7BIT") {
                Body::SevenBit
            } else if value.eq_ignore_ascii_case("8BITMIME") {
                Body::EightBitMime
            } else {
                return Err(ParseError::Syntax);
            });
        } else {
            return Err(ParseError::UnknownParameter);
        }
    }
    Ok(Command::Mail {
        reverse_path,
        size,
        body,
    })
}

fn parse_rcpt(rest: &[u8]) -> Result<Command, ParseError> {
    let after = strip_keyword(rest, b"TO:").ok_or(ParseError::Syntax)?;
    let (forward_path, params) = parse_path(after).ok_or(ParseError::BadRecipient)?;
    // RFC 5321 §4.1.1.3: the null path is for senders only.
    if forward_path.is_empty() {
        return Err(ParseError::BadRecipient);
    }
    if !params.map_err(|()| ParseError::Syntax)?.is_empty() {
        return Err(ParseError::UnknownParameter);
    }
    Ok(Command::Rcpt { forward_path })
}

/// Strips `FROM:` or `TO:` (any case) and the spaces some clients put after
/// the colon.
fn strip_keyword<'a>(rest: &'a [u8], keyword: &[u8]) -> Option<&'a [u8]> {
    let head = rest.get(..keyword.len())?;
    if !head.eq_ignore_ascii_case(keyword) {
        return None;
    }
    let mut after = &rest[keyword.len()..];
    while let [b' ', tail @ ..] = after {
        after = tail;
    }
    Some(after)
}

/// A MAIL or RCPT parameter: keyword and optional value.
type Param = (String, Option<String>);

/// Parses `<path>` and what follows it. `None` when the path is malformed;
/// the parameters are `Err` when they are.
fn parse_path(input: &[u8]) -> Option<(String, Result<Vec<Param>, ()>)> {
    let text = std::str::from_utf8(input).ok()?;
    let inner = text.strip_prefix('<')?;
    // Find the closing bracket outside quoted strings (RFC 5321 §4.1.2
    // Quoted-string); any other bracket or control character is an error.
    let mut end = None;
    let mut quoted = false;
    let mut escaped = false;
    for (i, c) in inner.char_indices() {
        if c.is_control() {
            return None;
        }
        if escaped {
            escaped = false;
        } else if quoted {
            match c {
                '\\' => escaped = true,
                '"' => quoted = false,
                _ => {}
            }
        } else {
            match c {
                '"' => quoted = true,
                '<' => return None,
                '>' => {
                    end = Some(i);
                    break;
                }
                _ => {}
            }
        }
    }
    let end = end?;
    let mut path = &inner[..end];
    // RFC 5321 §4.1.2 A-d-l: `@a,@b:` before the mailbox is ignored.
    if path.starts_with('@') {
        path = &path[path.find(':')? + 1..];
        if path.is_empty() {
            return None;
        }
    }
    if path.contains(' ') && !path.contains('"') {
        return None;
    }
    let tail = &inner[end + 1..];
    let params = parse_params(tail);
    Some((path.to_string(), params))
}

/// `SP KEY[=VALUE]` repeated (RFC 5321 §4.1.2 Mail-parameters).
fn parse_params(tail: &str) -> Result<Vec<Param>, ()> {
    if tail.is_empty() {
        return Ok(Vec::new());
    }
    let tail = tail.strip_prefix(' ').ok_or(())?;
    let mut params = Vec::new();
    for word in tail.split(' ').filter(|w| !w.is_empty()) {
        if word.chars().any(|c| c.is_control() || c == '>' || c == '<') {
            return Err(());
        }
        let (key, value) = match word.split_once('=') {
            Some((k, v)) => (k, Some(v.to_string())),
            None => (word, None),
        };
        if key.is_empty() || !key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(());
        }
        params.push((key.to_string(), value));
    }
    Ok(params)
}

fn trim_blanks(mut line: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = line {
        line = rest;
    }
    while let [rest @ .., b' ' | b'\t' | b'\r'] = line {
        line = rest;
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mail(path: &str, size: Option<u64>, body: Option<Body>) -> Command {
        Command::Mail {
            reverse_path: path.into(),
            size,
            body,
        }
    }

    fn rcpt(path: &str) -> Command {
        Command::Rcpt {
            forward_path: path.into(),
        }
    }

    #[test]
    fn parses_every_command() {
        let cases: Vec<(&[u8], Command)> = vec![
            (
                b"LHLO mx.example.org",
                Command::Lhlo("mx.example.org".into()),
            ),
            (b"lhlo [192.0.2.1]", Command::Lhlo("[192.0.2.1]".into())),
            (b"HELO x", Command::Helo),
            (b"ehlo x", Command::Helo),
            (b"MAIL FROM:<a@b>", mail("a@b", None, None)),
            (b"mail from:<a@b>", mail("a@b", None, None)),
            (b"MAIL FROM: <a@b>", mail("a@b", None, None)),
            (b"MAIL FROM:<>", mail("", None, None)),
            (b"MAIL FROM:<@r1,@r2:a@b>", mail("a@b", None, None)),
            (
                b"MAIL FROM:<a@b> SIZE=1000 BODY=8BITMIME",
                mail("a@b", Some(1000), Some(Body::EightBitMime)),
            ),
            (
                b"MAIL FROM:<a@b> body=7bit size=0",
                mail("a@b", Some(0), Some(Body::SevenBit)),
            ),
            (
                b"MAIL FROM:<a@b> SIZE=99999999999999999999999",
                mail("a@b", Some(u64::MAX), None),
            ),
            (
                b"MAIL FROM:<\"odd > local\"@b>",
                mail("\"odd > local\"@b", None, None),
            ),
            (
                "MAIL FROM:<jörg@bücher.example>".as_bytes(),
                mail("jörg@bücher.example", None, None),
            ),
            (b"RCPT TO:<alice@example.org>", rcpt("alice@example.org")),
            (b"rcpt to: <postmaster>", rcpt("postmaster")),
            (b"RCPT TO:<@hop:bob@x>", rcpt("bob@x")),
            (b"DATA", Command::Data),
            (b"data  ", Command::Data),
            (b"RSET", Command::Rset),
            (b"NOOP", Command::Noop),
            (b"NOOP anything", Command::Noop),
            (b"QUIT", Command::Quit),
            (b"VRFY alice", Command::Vrfy),
            (b"HELP", Command::Help),
            (b"help DATA", Command::Help),
        ];
        for (line, want) in cases {
            assert_eq!(parse(line), Ok(want), "{:?}", String::from_utf8_lossy(line));
        }
    }

    #[test]
    fn rejects_malformed_commands() {
        use ParseError::*;
        let cases: Vec<(&[u8], ParseError)> = vec![
            (b"", Unknown),
            (b"   ", Unknown),
            (b"STAT", Unknown),
            (b"\0", Unknown),
            (b"LHLO", Syntax),
            (b"LHLO a b", Syntax),
            (b"LHLO a\x01", Syntax),
            (b"MAIL", Syntax),
            (b"MAIL TO:<a@b>", Syntax),
            (b"MAIL FROM:a@b", BadSender),
            (b"MAIL FROM:<a@b", BadSender),
            (b"MAIL FROM:<<a@b>", BadSender),
            (b"MAIL FROM:<a@b>>", Syntax),
            (b"MAIL FROM:<a\x00@b>", BadSender),
            (b"MAIL FROM:<a\x7f@b>", BadSender),
            (b"MAIL FROM:<a\x1b@b>", BadSender),
            (b"MAIL FROM:<a\xff@b>", BadSender),
            (b"MAIL FROM:<a b@c>", BadSender),
            (b"MAIL FROM:<@r1:>", BadSender),
            (b"MAIL FROM:<@r1>", BadSender),
            (b"MAIL FROM:<a@b>SIZE=1", Syntax),
            (b"MAIL FROM:<a@b> SIZE=", Syntax),
            (b"MAIL FROM:<a@b> SIZE", Syntax),
            (b"MAIL FROM:<a@b> SIZE=-1", Syntax),
            (b"MAIL FROM:<a@b> SIZE=1 SIZE=2", Syntax),
            (b"MAIL FROM:<a@b> BODY=BINARYMIME", Syntax),
            (b"MAIL FROM:<a@b> SMTPUTF8", UnknownParameter),
            (b"MAIL FROM:<a@b> X=\x01", Syntax),
            (b"RCPT TO:<>", BadRecipient),
            (b"RCPT TO:a@b", BadRecipient),
            (b"RCPT TO:<a@b", BadRecipient),
            (b"RCPT FROM:<a@b>", Syntax),
            (b"RCPT TO:<a@b> NOTIFY=NEVER", UnknownParameter),
            (b"DATA x", Syntax),
            (b"QUIT now", Syntax),
            (b"RSET x", Syntax),
            (b"VRFY", Syntax),
        ];
        for (line, want) in cases {
            assert_eq!(
                parse(line),
                Err(want),
                "{:?}",
                String::from_utf8_lossy(line)
            );
        }
    }
}
