//! The one rule for user names, shared by every way a name comes in:
//! `mailbag user add`, the passwd-file reader, the PostgreSQL passdb, the
//! Maildir store (a name becomes a path), LMTP `RCPT` and `mailbag
//! deliver`, so that a name one of them accepts is never refused by
//! another (an account that cannot log in, or mail accepted at `RCPT`
//! and lost after `DATA`).
//!
//! A name is 1 to [`MAX_OCTETS`] octets; it holds no white space, no
//! control characters and none of `:` (the passwd-file's separator), `/`
//! and `\` (path separators); at most one `@`, with text on both sides;
//! no part (before or after the `@`) starts with `.`; no `..` anywhere;
//! it does not start with `#` (a passwd-file comment); and it is a name
//! SASLprep (RFC 4013) leaves as it is. USER and every SASL mechanism
//! SASLprep the name a client gives (`ｂｏｂ` and `bob` are one name to
//! them), so a stored name SASLprep would change (`ﬁle`, full-width or
//! decomposed letters) could never log in, and its logins would go to the
//! user it maps to.

/// The longest user name, in octets. USER and APOP take names this long
/// (longer than RFC 2449's 40-character arguments); Dovecot allows 255,
/// and half of that keeps maildrop paths short.
pub const MAX_OCTETS: usize = mailbag_proto::pop3::command::MAX_USER_NAME_OCTETS;

/// What the rule allows, for error messages.
pub const RULE: &str = "a user name is 1 to 128 octets of letters, digits and punctuation \
     other than ':', '/' and '\\', with no spaces or control characters; at most one '@', \
     with text on both sides; no part starting with '.', no '..', and no leading '#'; \
     non-ASCII letters in their composed form, without compatibility characters \
     (such as full-width letters or ligatures), as SASLprep leaves them";

/// Why a name is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid user name {name:?} ({why}): {RULE}")]
pub struct NameError {
    /// The refused name, as given (`Debug`-quoted when shown).
    pub name: String,
    /// The first thing wrong with it.
    pub why: &'static str,
}

/// Checks `name` against the rule.
pub fn check(name: &str) -> Result<(), NameError> {
    let refuse = |why| {
        Err(NameError {
            name: name.chars().take(MAX_OCTETS + 8).collect(),
            why,
        })
    };
    if name.is_empty() {
        return refuse("empty");
    }
    if name.len() > MAX_OCTETS {
        return refuse("too long");
    }
    if name.starts_with('#') {
        return refuse("leading '#'");
    }
    if name
        .chars()
        .any(|c| c == ':' || c == '/' || c == '\\' || c.is_control() || c.is_whitespace())
    {
        return refuse("':', '/', '\\', white space or a control character");
    }
    if name.contains("..") {
        return refuse("'..'");
    }
    let mut parts = name.split('@');
    let local = parts.next();
    let domain = parts.next();
    if parts.next().is_some() {
        return refuse("more than one '@'");
    }
    for part in [local, domain].into_iter().flatten() {
        if part.is_empty() {
            return refuse("nothing before or after '@'");
        }
        if part.starts_with('.') {
            return refuse("a part starts with '.'");
        }
    }
    if mailbag_proto::sasl::saslprep(name).as_deref() != Some(name) {
        return refuse("SASLprep changes or refuses it, so no login could name it");
    }
    Ok(())
}

/// Whether `name` follows the rule.
pub fn is_valid(name: &str) -> bool {
    check(name).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_could_escape_a_directory_or_break_a_file() {
        let long = "a".repeat(MAX_OCTETS + 1);
        for name in [
            "",
            long.as_str(),
            "a:b",
            "a/b",
            "a\\b",
            "a..b",
            "../etc",
            ".",
            "..",
            ".hidden",
            "a b",
            "a\tb",
            "a\0b",
            "a\x7fb",
            "a\u{85}b",
            "a@b@c",
            "@example.org",
            "user@",
            "user@..",
            "user@.example.org",
            "user@example..org",
            "#comment",
            "\u{fb01}le",
            "\u{ff42}ob",
            "bob\u{ff20}example.org",
            "e\u{301}mile",
            "a\u{200b}b",
            "\u{e000}",
        ] {
            let e = check(name).unwrap_err();
            assert!(e.to_string().contains(RULE), "{e}");
        }
        for name in [
            "a",
            "user@example.org",
            "first.last",
            "u-1_2+tag",
            "Ünïcode",
            "a.b.",
            "o'brien",
            "\u{e9}mile",
            "\u{43c}\u{430}\u{448}\u{430}",
        ] {
            assert_eq!(check(name), Ok(()), "{name:?}");
        }
        assert!(is_valid(&"a".repeat(MAX_OCTETS)));
    }

    #[test]
    fn the_message_says_what_is_wrong_and_what_is_allowed() {
        let e = check("a..b").unwrap_err();
        assert_eq!(e.why, "'..'");
        let text = e.to_string();
        assert!(text.starts_with("invalid user name \"a..b\" ('..'): a user name is 1 to 128"));
        assert!(RULE.contains(&MAX_OCTETS.to_string()));
    }
}
