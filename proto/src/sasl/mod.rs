//! SASL mechanisms (RFC 4422) as small step machines, for POP3 AUTH
//! (RFC 5034).
//!
//! Each mechanism takes the client's decoded responses one at a time and
//! answers with a [`Step`]: a challenge to send, a credential for the
//! password database to check, a request for SCRAM's stored keys, success
//! or failure. Base64 framing and `*` cancellation belong to the protocol
//! (`pop3::conn`); randomness (nonces, challenges) comes from the driver.
//! No IO; every input is untrusted and may be anything.

pub mod cram_md5;
pub mod login;
pub mod oauth;
pub mod plain;
pub mod scram;

use crate::secret::Secret;

/// The mechanisms this server implements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    /// RFC 4616.
    Plain,
    /// The obsolete but widespread LOGIN (draft-murchison-sasl-login).
    Login,
    /// RFC 2195.
    CramMd5,
    /// RFC 7677.
    ScramSha256,
    /// RFC 7628: an OAuth 2.0 bearer token.
    OAuthBearer,
    /// Google's and Microsoft's bearer-token form.
    XOAuth2,
}

impl Mechanism {
    /// Every mechanism, strongest first (the order CAPA lists them).
    pub const ALL: [Mechanism; 6] = [
        Mechanism::ScramSha256,
        Mechanism::CramMd5,
        Mechanism::Plain,
        Mechanism::Login,
        Mechanism::OAuthBearer,
        Mechanism::XOAuth2,
    ];

    /// The registered name.
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::Login => "LOGIN",
            Mechanism::CramMd5 => "CRAM-MD5",
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
            Mechanism::OAuthBearer => "OAUTHBEARER",
            Mechanism::XOAuth2 => "XOAUTH2",
        }
    }

    /// Looks a name up, case-insensitively.
    pub fn from_name(name: &str) -> Option<Mechanism> {
        Mechanism::ALL
            .into_iter()
            .find(|m| m.name().eq_ignore_ascii_case(name))
    }

    /// Whether the mechanism sends the password itself, so that it needs
    /// TLS or a trusted network.
    pub fn is_plaintext(self) -> bool {
        matches!(self, Mechanism::Plain | Mechanism::Login)
    }

    /// Whether the mechanism carries a bearer token: whoever reads it may
    /// use it anywhere until it expires, so it is offered and accepted
    /// only over TLS (a trusted network is not enough).
    pub fn is_bearer(self) -> bool {
        matches!(self, Mechanism::OAuthBearer | Mechanism::XOAuth2)
    }
}

/// What a mechanism wants next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Send this challenge (raw; the protocol encodes it) and wait for
    /// the client's response.
    Challenge(Vec<u8>),
    /// The client presented a password for `user`.
    Password {
        /// The authentication identity.
        user: String,
        /// RFC 4422 §3.4.1: the user to act as, when it is not `user`
        /// itself. Whether `user` may is the server's policy.
        authzid: Option<String>,
        /// The password.
        password: Secret<String>,
    },
    /// RFC 2195: the client's keyed digest of `challenge`.
    CramMd5 {
        /// The user name.
        user: String,
        /// The challenge the server sent.
        challenge: String,
        /// The client's lowercase hex HMAC-MD5.
        digest: Secret<String>,
    },
    /// SCRAM needs `user`'s salt, iteration count and keys, and a server
    /// nonce: call [`scram::ScramSha256::keys`] with them.
    ScramLookup {
        /// The SASLprepped user name.
        user: String,
        /// The user to act as, when it is not `user` itself.
        authzid: Option<String>,
    },
    /// The client presented an OAuth 2.0 bearer token: check it, and
    /// call [`oauth::OAuth::rejected`] if it is refused.
    Token {
        /// The user the client named, if any; the token's own claim
        /// decides, and must name the same user.
        user: Option<String>,
        /// The token.
        token: Secret<String>,
    },
    /// The client proved who it is (SCRAM).
    Authenticated,
    /// The exchange failed.
    Failed(Failure),
}

/// Why an exchange failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The response does not follow the mechanism's syntax.
    Malformed,
    /// The authorization identity is not a valid user name, or acting
    /// as another user is not allowed.
    AuthzidRefused,
    /// Wrong proof (SCRAM) or wrong user.
    Rejected,
}

/// A mechanism in progress.
#[derive(Debug)]
pub enum Exchange {
    /// PLAIN.
    Plain(plain::Plain),
    /// LOGIN.
    Login(login::Login),
    /// CRAM-MD5.
    CramMd5(cram_md5::CramMd5),
    /// SCRAM-SHA-256.
    ScramSha256(Box<scram::ScramSha256>),
    /// OAUTHBEARER or XOAUTH2.
    OAuth(oauth::OAuth),
}

impl Exchange {
    /// Feeds one decoded client response (the initial response first, if
    /// the client sent one; an empty one otherwise).
    pub fn step(&mut self, response: &[u8]) -> Step {
        match self {
            Exchange::Plain(m) => m.step(response),
            Exchange::Login(m) => m.step(response),
            Exchange::CramMd5(m) => m.step(response),
            Exchange::ScramSha256(m) => m.step(response),
            Exchange::OAuth(m) => m.step(response),
        }
    }
}

/// RFC 4013 SASLprep of a user name or password; `None` when the string
/// holds prohibited characters (RFC 5034 §4: then authentication fails),
/// and when a string of characters that map to nothing (U+00AD, U+034F,
/// ...) prepares to the empty string: an identity or a password holds at
/// least one character (RFC 4616 §2), and an empty password must never
/// reach a check.
pub fn saslprep(s: &str) -> Option<String> {
    if s.is_ascii() && s.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        // Printable ASCII maps to itself; skip the tables.
        return Some(s.to_owned());
    }
    let prepared = stringprep::saslprep(s).ok()?.into_owned();
    (!prepared.is_empty()).then_some(prepared)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saslprep_follows_rfc4013_examples() {
        // RFC 4013 §3.
        assert_eq!(saslprep("I\u{AD}X").as_deref(), Some("IX"));
        assert_eq!(saslprep("user").as_deref(), Some("user"));
        assert_eq!(saslprep("\u{AA}").as_deref(), Some("a"));
        assert_eq!(saslprep("\u{2168}").as_deref(), Some("IX"));
        assert_eq!(saslprep("\u{7}"), None);
        // Only characters mapped to nothing: no identity, no password.
        assert_eq!(saslprep("\u{34F}"), None);
        assert_eq!(saslprep("\u{AD}\u{FE0F}"), None);
        assert_eq!(saslprep("\u{627}1"), None);
    }

    #[test]
    fn names_round_trip() {
        for m in Mechanism::ALL {
            assert_eq!(Mechanism::from_name(&m.name().to_lowercase()), Some(m));
        }
        assert_eq!(Mechanism::from_name("GSSAPI"), None);
    }
}
