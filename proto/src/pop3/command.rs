//! POP3 command parsing (RFC 1939 §§4–7, RFC 2449 §§4–5).
//!
//! A command line (already framed and edited by [`crate::line`]) becomes a
//! [`Command`] or a [`ParseError`] that says what was wrong. Keywords are
//! case-insensitive; arguments are separated by single or repeated spaces.
//! No IO; no panics on any input.

use std::fmt;
use std::num::NonZeroU32;

use crate::secret::Secret;

/// RFC 2449 §4: "Each argument may be up to 40 characters long."
/// PASS is the exception: its argument is the rest of the line, spaces
/// included (RFC 1939 §7), and passwords may be longer than 40 characters.
pub const MAX_ARG_CHARS: usize = 40;

/// The longest user name USER and APOP take, in octets: the longest the
/// server's name rule allows. Names are accepted this long by AUTH PLAIN
/// (whose argument is limited only by the line), so USER and APOP must
/// take them too; the 255-octet line limit still holds.
pub const MAX_USER_NAME_OCTETS: usize = 128;

/// A message number as the client writes it: 1-based (RFC 1939 §5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MessageNumber(NonZeroU32);

impl MessageNumber {
    /// A message number from its 1-based value; `None` for 0.
    pub fn new(n: u32) -> Option<Self> {
        NonZeroU32::new(n).map(MessageNumber)
    }

    /// The number as written on the wire.
    pub fn get(self) -> u32 {
        self.0.get()
    }

    /// The 0-based position this number names, whether or not a message
    /// is there (see [`Index::of`] for the checked one).
    pub fn index(self) -> usize {
        self.0.get() as usize - 1
    }

    /// The message number of a 0-based snapshot index.
    pub fn from_index(index: usize) -> Option<Self> {
        u32::try_from(index + 1).ok().and_then(Self::new)
    }
}

impl fmt::Display for MessageNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A 0-based position in a maildrop snapshot, checked against it: made
/// only by [`Index::of`] (from a message number) or by the core walking
/// its own snapshot, so an `Index` always names a message of the snapshot
/// it came from and `RETR 0` can never mean message 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Index(usize);

impl Index {
    /// The message that number `n` names in a snapshot of `count`
    /// messages; `None` past its end. The one rule from a client's (or an
    /// administrator's) number to a message.
    pub fn of(n: MessageNumber, count: usize) -> Option<Index> {
        let i = n.index();
        (i < count).then_some(Index(i))
    }

    /// Every index of a snapshot of `count` messages, in order.
    pub(crate) fn all(count: usize) -> impl Iterator<Item = Index> {
        (0..count).map(Index)
    }

    /// The 0-based position, for the store.
    pub fn get(self) -> usize {
        self.0
    }

    /// The 1-based message number the client sees for it.
    pub fn number(self) -> usize {
        self.0 + 1
    }
}

/// One parsed POP3 command. Variants mirror the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `USER name` (RFC 1939 §7).
    User(String),
    /// `PASS string` (RFC 1939 §7).
    Pass(Secret<String>),
    /// `APOP name digest` (RFC 1939 §7).
    Apop {
        /// The mailbox name.
        name: String,
        /// The MD5 digest in hex.
        digest: Secret<String>,
    },
    /// `STAT`.
    Stat,
    /// `LIST [msg]`.
    List(Option<MessageNumber>),
    /// `RETR msg`.
    Retr(MessageNumber),
    /// `DELE msg`.
    Dele(MessageNumber),
    /// `NOOP`.
    Noop,
    /// `RSET`.
    Rset,
    /// `QUIT`.
    Quit,
    /// `TOP msg n`.
    Top {
        /// The message.
        msg: MessageNumber,
        /// Body lines to send after the header.
        lines: u64,
    },
    /// `UIDL [msg]`.
    Uidl(Option<MessageNumber>),
    /// `CAPA` (RFC 2449 §5).
    Capa,
    /// `HELP`: mailbag's extension for people at a telnet prompt.
    Help,
    /// `STLS` (RFC 2595 §4).
    Stls,
    /// `AUTH [mechanism [initial-response]]` (RFC 5034 §4). Bare `AUTH`
    /// lists the mechanisms, for clients older than CAPA.
    Auth {
        /// The SASL mechanism, upper-cased; `None` for bare `AUTH`.
        mechanism: Option<String>,
        /// The initial response, still base64 (`=` for an empty one).
        initial: Option<Secret<String>>,
    },
    /// `UTF8` (RFC 6856 §2).
    Utf8,
    /// `SUMMARY [msg]`: mailbag's extension (CAPA `X-SUMMARY`) that lists
    /// each message's date, sender, subject and what looks broken in it.
    Summary(Option<MessageNumber>),
}

/// Where a command is valid (RFC 1939 §3 states), and what must hold for a
/// command valid before login to be offered on this connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Valid {
    /// Only before login (AUTHORIZATION), and listed as valid when the
    /// [`Offer`] holds.
    Authorization(Offer),
    /// Only after login (TRANSACTION).
    Transaction,
    /// Before and after login.
    Both,
}

/// What must hold for a command to be listed as valid before login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Always offered.
    Always,
    /// Plaintext logins are allowed on this connection.
    Plaintext,
    /// Plaintext logins are allowed and the greeting carried a timestamp.
    Apop,
    /// At least one SASL mechanism is usable on this connection.
    Sasl,
    /// STLS is offered on this connection.
    Stls,
}

/// The command table. Each row is one verb: its [`Command`] variant, its
/// keyword, its syntax and description as HELP shows them, and where it is
/// valid. The order of the rows is the order HELP and "Valid now" list
/// them. Adding a command is a row here, its arm in [`parse`] and its
/// handler in the state machine.
macro_rules! command_table {
    ($(
        $(#[$doc:meta])*
        $verb:ident ($pattern:pat) $keyword:literal, $syntax:literal, $description:literal, $valid:expr;
    )*) => {
        /// The keywords this server knows, in the order HELP lists them.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Verb {
            $($(#[$doc])* $verb,)*
        }

        impl Verb {
            /// Every verb, in the order HELP lists them.
            pub const ALL: &'static [Verb] = &[$(Verb::$verb),*];

            /// The keyword as written on the wire.
            pub fn keyword(self) -> &'static str {
                match self {
                    $(Verb::$verb => $keyword,)*
                }
            }

            /// The command's syntax, as its usage errors show it.
            pub fn syntax(self) -> &'static str {
                match self {
                    $(Verb::$verb => $syntax,)*
                }
            }

            /// What the command does, in a few words.
            pub fn description(self) -> &'static str {
                match self {
                    $(Verb::$verb => $description,)*
                }
            }

            /// Where the command is valid.
            pub fn valid(self) -> Valid {
                match self {
                    $(Verb::$verb => $valid,)*
                }
            }
        }

        impl Command {
            /// The verb this command was written with.
            pub fn verb(&self) -> Verb {
                match self {
                    $($pattern => Verb::$verb,)*
                }
            }
        }
    };
}

command_table! {
    /// USER
    User(Command::User(_)) "USER", "USER name", "give your user name",
        Valid::Authorization(Offer::Plaintext);
    /// PASS
    Pass(Command::Pass(_)) "PASS", "PASS password", "give your password",
        Valid::Authorization(Offer::Plaintext);
    /// APOP
    Apop(Command::Apop { .. }) "APOP", "APOP name digest", "log in with a digest (RFC 1939 APOP)",
        Valid::Authorization(Offer::Apop);
    /// AUTH
    Auth(Command::Auth { .. }) "AUTH", "AUTH [mechanism]", "log in with SASL, or list the mechanisms",
        Valid::Authorization(Offer::Sasl);
    /// STLS
    Stls(Command::Stls) "STLS", "STLS", "switch this connection to TLS",
        Valid::Authorization(Offer::Stls);
    /// UTF8
    Utf8(Command::Utf8) "UTF8", "UTF8", "enable UTF-8 user names and passwords",
        Valid::Authorization(Offer::Always);
    /// STAT
    Stat(Command::Stat) "STAT", "STAT", "number of messages and total octets",
        Valid::Transaction;
    /// LIST
    List(Command::List(_)) "LIST", "LIST [msg]", "size of each message, or of one",
        Valid::Transaction;
    /// RETR
    Retr(Command::Retr(_)) "RETR", "RETR msg", "show a whole message",
        Valid::Transaction;
    /// TOP
    Top(Command::Top { .. }) "TOP", "TOP msg lines", "show the header and the first lines of the body",
        Valid::Transaction;
    /// DELE
    Dele(Command::Dele(_)) "DELE", "DELE msg", "mark a message for deletion at QUIT",
        Valid::Transaction;
    /// RSET
    Rset(Command::Rset) "RSET", "RSET", "unmark all messages marked for deletion",
        Valid::Transaction;
    /// UIDL
    Uidl(Command::Uidl(_)) "UIDL", "UIDL [msg]", "unique id of each message, or of one",
        Valid::Transaction;
    /// NOOP
    Noop(Command::Noop) "NOOP", "NOOP", "do nothing; keeps the session alive",
        Valid::Transaction;
    /// CAPA
    Capa(Command::Capa) "CAPA", "CAPA", "list the server's capabilities",
        Valid::Both;
    /// QUIT
    Quit(Command::Quit) "QUIT", "QUIT", "end the session; delete marked messages",
        Valid::Both;
    /// HELP
    Help(Command::Help) "HELP", "HELP", "this list",
        Valid::Both;
    /// SUMMARY
    Summary(Command::Summary(_)) "SUMMARY", "SUMMARY [msg]",
        "date, sender, subject and problems of each message, or of one",
        Valid::Transaction;
}

impl Verb {
    /// One line of usage, as HELP shows it: the syntax, padded to a
    /// column, then the description.
    pub fn usage(self) -> String {
        format!("{:<18} {}", self.syntax(), self.description())
    }

    /// Looks a keyword up, case-insensitively.
    pub fn from_keyword(word: &[u8]) -> Option<Verb> {
        Verb::ALL
            .iter()
            .copied()
            .find(|v| v.keyword().as_bytes().eq_ignore_ascii_case(word))
    }
}

/// Why a command line was not understood.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseError {
    /// An empty line.
    Empty,
    /// The line holds NUL, control characters or invalid UTF-8.
    InvalidBytes,
    /// The keyword is not a command this server knows. Holds the keyword,
    /// made printable and cut short, for the error text.
    Unknown(String),
    /// A known command with the wrong number or form of arguments.
    Usage(Verb),
    /// A message number that is not a decimal number from 1 to 2^32-1.
    BadNumber(Verb),
    /// An argument longer than [`MAX_ARG_CHARS`].
    ArgTooLong(Verb),
}

/// Parses one command line (without its line ending).
pub fn parse(line: &[u8]) -> Result<Command, ParseError> {
    let line = trim_trailing_blanks(line);
    if line.is_empty() {
        return Err(ParseError::Empty);
    }
    let (word, rest) = match line.iter().position(|&b| b == b' ') {
        Some(i) => (&line[..i], &line[i + 1..]),
        None => (line, &[][..]),
    };
    let Some(verb) = Verb::from_keyword(word) else {
        if line.contains(&0) || std::str::from_utf8(word).is_err() {
            return Err(ParseError::InvalidBytes);
        }
        return Err(ParseError::Unknown(printable(word)));
    };
    // PASS keeps its argument verbatim (spaces are part of a password), so
    // check the bytes before splitting into words.
    let text = match std::str::from_utf8(rest) {
        Ok(t) if !t.chars().any(|c| c.is_control()) => t,
        _ => return Err(ParseError::InvalidBytes),
    };
    if verb == Verb::Pass {
        let password = text.trim_start_matches(' ');
        if password.is_empty() {
            return Err(ParseError::Usage(verb));
        }
        return Ok(Command::Pass(Secret::new(password.to_string())));
    }
    let args: Vec<&str> = text.split(' ').filter(|a| !a.is_empty()).collect();
    if verb == Verb::Auth {
        // RFC 5034 §4: the initial response is base64, limited only by the
        // 255-octet line, not by the 40-character argument limit.
        return match args.as_slice() {
            [] => Ok(Command::Auth {
                mechanism: None,
                initial: None,
            }),
            [m] if m.len() <= MAX_ARG_CHARS => Ok(Command::Auth {
                mechanism: Some(m.to_ascii_uppercase()),
                initial: None,
            }),
            [m, initial] if m.len() <= MAX_ARG_CHARS => Ok(Command::Auth {
                mechanism: Some(m.to_ascii_uppercase()),
                initial: Some(Secret::new(initial.to_string())),
            }),
            _ => Err(ParseError::Usage(verb)),
        };
    }
    let too_long = |(i, a): (usize, &&str)| {
        if matches!(verb, Verb::User | Verb::Apop) && i == 0 {
            a.len() > MAX_USER_NAME_OCTETS
        } else {
            a.chars().count() > MAX_ARG_CHARS
        }
    };
    if args.iter().enumerate().any(too_long) {
        return Err(ParseError::ArgTooLong(verb));
    }
    let number = |s: &str| parse_message_number(s).ok_or(ParseError::BadNumber(verb));
    let usage = Err(ParseError::Usage(verb));
    match (verb, args.as_slice()) {
        (Verb::User, [name]) => Ok(Command::User(name.to_string())),
        (Verb::Apop, [name, digest]) => Ok(Command::Apop {
            name: name.to_string(),
            digest: Secret::new(digest.to_string()),
        }),
        (Verb::Stat, []) => Ok(Command::Stat),
        (Verb::List, []) => Ok(Command::List(None)),
        (Verb::List, [n]) => Ok(Command::List(Some(number(n)?))),
        (Verb::Retr, [n]) => Ok(Command::Retr(number(n)?)),
        (Verb::Dele, [n]) => Ok(Command::Dele(number(n)?)),
        (Verb::Noop, []) => Ok(Command::Noop),
        (Verb::Rset, []) => Ok(Command::Rset),
        (Verb::Quit, []) => Ok(Command::Quit),
        (Verb::Top, [n, lines]) => Ok(Command::Top {
            msg: number(n)?,
            lines: parse_line_count(lines).ok_or(ParseError::Usage(verb))?,
        }),
        (Verb::Uidl, []) => Ok(Command::Uidl(None)),
        (Verb::Uidl, [n]) => Ok(Command::Uidl(Some(number(n)?))),
        (Verb::Capa, []) => Ok(Command::Capa),
        (Verb::Help, _) => Ok(Command::Help),
        (Verb::Stls, []) => Ok(Command::Stls),
        (Verb::Utf8, []) => Ok(Command::Utf8),
        (Verb::Summary, []) => Ok(Command::Summary(None)),
        (Verb::Summary, [n]) => Ok(Command::Summary(Some(number(n)?))),
        _ => usage,
    }
}

/// The command line as a transcript may show it: the PASS argument and the
/// APOP digest become `***`. Whatever the line holds, no secret survives:
/// an unparseable PASS or APOP line is redacted whole after its keyword.
pub fn redact(line: &[u8]) -> Vec<u8> {
    let word_end = line.iter().position(|&b| b == b' ').unwrap_or(line.len());
    let word = &line[..word_end];
    let verb = Verb::from_keyword(word);
    if verb == Some(Verb::Pass) {
        let mut out = word.to_vec();
        out.extend_from_slice(b" ***");
        return out;
    }
    if verb == Some(Verb::Auth) {
        // Keep the mechanism; an initial response is a secret.
        let mut words = line.split(|&b| b == b' ').filter(|w| !w.is_empty());
        let mut out = words.next().unwrap_or_default().to_vec();
        if let Some(mechanism) = words.next() {
            out.push(b' ');
            out.extend_from_slice(mechanism);
        }
        if words.next().is_some() {
            out.extend_from_slice(b" ***");
        }
        return out;
    }
    if verb == Some(Verb::Apop) {
        let rest = &line[word_end..];
        let name: Vec<u8> = rest
            .iter()
            .skip_while(|&&b| b == b' ')
            .take_while(|&&b| b != b' ')
            .copied()
            .collect();
        let mut out = word.to_vec();
        out.push(b' ');
        out.extend_from_slice(&name);
        out.extend_from_slice(b" ***");
        return out;
    }
    line.to_vec()
}

/// A message number: decimal digits only, 1 to 2^32-1. Anything else
/// (`0`, `-1`, `1a`, `+1`, `4294967297`) is `None`, so `RETR 0` can never
/// mean message 1.
pub fn parse_message_number(s: &str) -> Option<MessageNumber> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse::<u32>().ok().and_then(MessageNumber::new)
}

/// TOP's line count: a non-negative decimal number. A count larger than
/// any message can hold simply means "the whole body", so it saturates.
fn parse_line_count(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(s.parse::<u64>().unwrap_or(u64::MAX))
}

fn trim_trailing_blanks(mut line: &[u8]) -> &[u8] {
    while let [rest @ .., b' ' | b'\t' | b'\r'] = line {
        line = rest;
    }
    line
}

/// The keyword as it may be echoed in an error: printable ASCII only, at
/// most 16 characters, so that no client bytes beyond that reach the wire.
fn printable(word: &[u8]) -> String {
    let mut s: String = word
        .iter()
        .take(16)
        .map(|&b| if b.is_ascii_graphic() { b as char } else { '?' })
        .collect();
    if word.len() > 16 {
        s.push_str("...");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(v: u32) -> MessageNumber {
        MessageNumber::new(v).unwrap()
    }

    #[test]
    fn command_table_rows_are_consistent_and_help_text_is_pinned() {
        let help: Vec<String> = Verb::ALL.iter().map(|v| v.usage()).collect();
        assert_eq!(
            help,
            [
                "USER name          give your user name",
                "PASS password      give your password",
                "APOP name digest   log in with a digest (RFC 1939 APOP)",
                "AUTH [mechanism]   log in with SASL, or list the mechanisms",
                "STLS               switch this connection to TLS",
                "UTF8               enable UTF-8 user names and passwords",
                "STAT               number of messages and total octets",
                "LIST [msg]         size of each message, or of one",
                "RETR msg           show a whole message",
                "TOP msg lines      show the header and the first lines of the body",
                "DELE msg           mark a message for deletion at QUIT",
                "RSET               unmark all messages marked for deletion",
                "UIDL [msg]         unique id of each message, or of one",
                "NOOP               do nothing; keeps the session alive",
                "CAPA               list the server's capabilities",
                "QUIT               end the session; delete marked messages",
                "HELP               this list",
                "SUMMARY [msg]      date, sender, subject and problems of each message, or of one",
            ]
        );
        for (i, verb) in Verb::ALL.iter().enumerate() {
            let keyword = verb.keyword();
            assert!(verb.syntax().starts_with(keyword), "{verb:?}");
            assert_eq!(Verb::from_keyword(keyword.as_bytes()), Some(*verb));
            let lower = keyword.to_ascii_lowercase();
            assert_eq!(Verb::from_keyword(lower.as_bytes()), Some(*verb));
            assert!(
                Verb::ALL[..i].iter().all(|v| v.keyword() != keyword),
                "{keyword} appears twice"
            );
            // Each keyword alone (or with the arguments HELP shows) parses
            // to a command of the same verb.
            let line = match verb {
                Verb::User => "USER a",
                Verb::Pass => "PASS a",
                Verb::Apop => "APOP a b",
                Verb::Retr | Verb::Dele => "RETR 1",
                Verb::Top => "TOP 1 1",
                _ => keyword,
            };
            let line = line.replacen(&line[..line.find(' ').unwrap_or(line.len())], keyword, 1);
            assert_eq!(parse(line.as_bytes()).map(|c| c.verb()), Ok(*verb));
        }
    }

    #[test]
    fn parses_every_rfc1939_command() {
        let cases: Vec<(&[u8], Command)> = vec![
            (b"USER mrose", Command::User("mrose".into())),
            (b"user mrose", Command::User("mrose".into())),
            (b"PASS secret", Command::Pass(Secret::new("secret".into()))),
            (
                b"PASS with spaces  inside ",
                Command::Pass(Secret::new("with spaces  inside".into())),
            ),
            (
                b"APOP mrose c4c9334bac560ecc979e58001b3e22fb",
                Command::Apop {
                    name: "mrose".into(),
                    digest: Secret::new("c4c9334bac560ecc979e58001b3e22fb".into()),
                },
            ),
            (b"STAT", Command::Stat),
            (b"stat  ", Command::Stat),
            (b"LIST", Command::List(None)),
            (b"LIST 2", Command::List(Some(n(2)))),
            (b"RETR 1", Command::Retr(n(1))),
            (b"DELE  3", Command::Dele(n(3))),
            (b"NOOP", Command::Noop),
            (b"RSET", Command::Rset),
            (b"QUIT", Command::Quit),
            (
                b"TOP 1 10",
                Command::Top {
                    msg: n(1),
                    lines: 10,
                },
            ),
            (
                b"TOP 1 0",
                Command::Top {
                    msg: n(1),
                    lines: 0,
                },
            ),
            (
                b"TOP 1 99999999999999999999999",
                Command::Top {
                    msg: n(1),
                    lines: u64::MAX,
                },
            ),
            (b"UIDL", Command::Uidl(None)),
            (b"UIDL 4294967295", Command::Uidl(Some(n(u32::MAX)))),
            (b"CAPA", Command::Capa),
            (b"help", Command::Help),
            (b"SUMMARY", Command::Summary(None)),
            (b"summary 3", Command::Summary(Some(n(3)))),
        ];
        for (line, want) in cases {
            assert_eq!(parse(line), Ok(want), "{:?}", String::from_utf8_lossy(line));
        }
    }

    #[test]
    fn rejects_bad_message_numbers() {
        for arg in [
            "0",
            "-1",
            "1a",
            "+1",
            "4294967296",
            "4294967297",
            "99999999999999999999",
            "0x1",
            "１",
        ] {
            let line = format!("RETR {arg}");
            assert_eq!(
                parse(line.as_bytes()),
                Err(ParseError::BadNumber(Verb::Retr)),
                "{arg}"
            );
        }
        assert_eq!(parse(b"TOP 1 -1"), Err(ParseError::Usage(Verb::Top)));
        assert_eq!(parse(b"TOP 0 1"), Err(ParseError::BadNumber(Verb::Top)));
    }

    #[test]
    fn rejects_wrong_argument_counts() {
        for line in [
            &b"STAT 1"[..],
            b"RETR",
            b"RETR 1 2",
            b"DELE",
            b"TOP 1",
            b"TOP",
            b"TOP 1 2 3",
            b"USER",
            b"USER a b",
            b"PASS",
            b"PASS   ",
            b"APOP name",
            b"QUIT now",
            b"NOOP x",
            b"RSET 1",
            b"LIST 1 2",
            b"CAPA x",
            b"SUMMARY 1 2",
        ] {
            assert!(
                matches!(parse(line), Err(ParseError::Usage(_))),
                "{:?} gave {:?}",
                String::from_utf8_lossy(line),
                parse(line)
            );
        }
    }

    #[test]
    fn rejects_garbage_without_panicking() {
        assert_eq!(parse(b""), Err(ParseError::Empty));
        assert_eq!(parse(b"   "), Err(ParseError::Empty));
        assert_eq!(parse(b"STS"), Err(ParseError::Unknown("STS".into())));
        assert_eq!(parse(b"ST\0T"), Err(ParseError::InvalidBytes));
        assert_eq!(parse(b"\xff\xfe"), Err(ParseError::InvalidBytes));
        assert_eq!(parse(b"USER a\0b"), Err(ParseError::InvalidBytes));
        assert_eq!(parse(b"USER \xc3\x28"), Err(ParseError::InvalidBytes));
        assert_eq!(parse(b"PASS a\x01b"), Err(ParseError::InvalidBytes));
        assert_eq!(
            parse(b"XXXXXXXXXXXXXXXXXXXXXXXXXXX"),
            Err(ParseError::Unknown("XXXXXXXXXXXXXXXX...".into()))
        );
        assert_eq!(parse(b"%s%n%x"), Err(ParseError::Unknown("%s%n%x".into())));
        assert_eq!(parse(b"USER %s%n%x"), Ok(Command::User("%s%n%x".into())));
    }

    #[test]
    fn limits_arguments_to_forty_characters_except_pass_and_user_names() {
        let long = "a".repeat(41);
        assert_eq!(
            parse(format!("UIDL {long}").as_bytes()),
            Err(ParseError::ArgTooLong(Verb::Uidl))
        );
        // User names as long as the name rule allows.
        let name = "n".repeat(MAX_USER_NAME_OCTETS);
        assert_eq!(
            parse(format!("USER {name}").as_bytes()),
            Ok(Command::User(name.clone()))
        );
        assert_eq!(
            parse(format!("USER {name}x").as_bytes()),
            Err(ParseError::ArgTooLong(Verb::User))
        );
        let digest = "c4c9334bac560ecc979e58001b3e22fb";
        assert_eq!(
            parse(format!("APOP {name} {digest}").as_bytes()),
            Ok(Command::Apop {
                name: name.clone(),
                digest: Secret::new(digest.into())
            })
        );
        assert_eq!(
            parse(format!("APOP a {digest}{long}").as_bytes()),
            Err(ParseError::ArgTooLong(Verb::Apop))
        );
        assert_eq!(
            parse(format!("PASS {long}").as_bytes()),
            Ok(Command::Pass(Secret::new(long.clone())))
        );
    }

    #[test]
    fn redaction_hides_passwords_and_digests() {
        assert_eq!(redact(b"PASS hunter2"), b"PASS ***");
        assert_eq!(redact(b"pass  hunter2 with spaces"), b"pass ***");
        assert_eq!(redact(b"PASS"), b"PASS ***");
        assert_eq!(
            redact(b"APOP mrose c4c9334bac560ecc979e58001b3e22fb"),
            b"APOP mrose ***"
        );
        assert_eq!(redact(b"USER mrose"), b"USER mrose");
        assert_eq!(redact(b"AUTH PLAIN AGZvbwBiYXI="), b"AUTH PLAIN ***");
        assert_eq!(redact(b"AUTH LOGIN"), b"AUTH LOGIN");
        assert_eq!(redact(b"RETR 1"), b"RETR 1");
    }

    #[test]
    fn message_number_converts_to_index() {
        assert_eq!(n(1).index(), 0);
        assert_eq!(MessageNumber::from_index(0), Some(n(1)));
        assert_eq!(Index::of(n(1), 1).map(Index::get), Some(0));
        assert_eq!(Index::of(n(2), 1), None);
        assert_eq!(Index::of(n(1), 0), None);
        assert_eq!(
            Index::of(n(u32::MAX), usize::MAX).map(Index::number),
            Some(u32::MAX as usize)
        );
        assert_eq!(parse_message_number("007"), Some(n(7)));
    }
}
