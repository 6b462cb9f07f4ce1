//! OAUTHBEARER (RFC 7628) and XOAUTH2 (the form Gmail's and Outlook's
//! clients send): the client presents an OAuth 2.0 bearer token, which
//! the server checks (the driver's job: this core does no IO).
//!
//! OAUTHBEARER's message is a GS2 header and key=value pairs, each ended
//! by `\x01`: `n,a=user,\x01auth=Bearer <token>\x01\x01`. XOAUTH2's is
//! `user=<user>\x01auth=Bearer <token>\x01\x01`. On failure, RFC 7628
//! §3.2.2: the server sends a challenge holding a JSON status, the client
//! answers with a single `\x01`, and only then does the server fail the
//! exchange. XOAUTH2 clients follow the same dance (with an empty
//! response).

use super::{saslprep, Failure, Step};
use crate::secret::Secret;

/// Longest token accepted: the whole SASL line is bounded anyway
/// (`max_sasl_line_octets`); a JWT with a few claims is under 2 KiB.
pub const MAX_TOKEN_OCTETS: usize = 8192;
/// Longest user name accepted in the message.
const MAX_USER_OCTETS: usize = 255;

/// Which of the two message formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// RFC 7628.
    OAuthBearer,
    /// Google's and Microsoft's older form.
    XOAuth2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the client's message.
    Start,
    /// The token was handed over for checking.
    Checking,
    /// The failure status was sent; the next response ends the exchange.
    Failed,
    /// Over.
    Done,
}

/// One OAUTHBEARER or XOAUTH2 exchange.
#[derive(Debug)]
pub struct OAuth {
    format: Format,
    phase: Phase,
    /// Whether an empty first message means "prompt me" (no initial
    /// response was sent) rather than an empty message.
    asked: bool,
}

impl OAuth {
    /// An exchange in `format`; `initial` when the client sent an initial
    /// response with the command.
    pub fn new(format: Format, initial: bool) -> Self {
        OAuth {
            format,
            phase: Phase::Start,
            asked: initial,
        }
    }

    /// Feeds one response.
    pub fn step(&mut self, response: &[u8]) -> Step {
        match self.phase {
            Phase::Start => {
                if response.is_empty() && !self.asked {
                    self.asked = true;
                    return Step::Challenge(Vec::new());
                }
                self.phase = Phase::Done;
                let parsed = match self.format {
                    Format::OAuthBearer => parse_oauthbearer(response),
                    Format::XOAuth2 => parse_xoauth2(response),
                };
                match parsed {
                    Some((user, token)) => {
                        self.phase = Phase::Checking;
                        Step::Token {
                            user,
                            token: Secret::new(token),
                        }
                    }
                    None => Step::Failed(Failure::Malformed),
                }
            }
            // RFC 7628 §3.2.3: the client's response to the error
            // challenge is a single %x01; whatever it sent, the exchange
            // has failed.
            Phase::Failed => {
                self.phase = Phase::Done;
                Step::Failed(Failure::Rejected)
            }
            Phase::Checking | Phase::Done => Step::Failed(Failure::Malformed),
        }
    }

    /// The token was refused: the challenge that carries RFC 7628's JSON
    /// status. The client's next response ends the exchange.
    pub fn rejected(&mut self) -> Step {
        self.phase = Phase::Failed;
        Step::Challenge(br#"{"status":"invalid_token"}"#.to_vec())
    }

    /// Whether the failure status has been sent and the client's dummy
    /// response is awaited.
    pub fn awaiting_dummy(&self) -> bool {
        self.phase == Phase::Failed
    }
}

/// `Bearer <token>` (the scheme name is case-insensitive, RFC 6750 §2.1),
/// with a token of b64token characters only.
fn bearer(value: &[u8]) -> Option<String> {
    let value = std::str::from_utf8(value).ok()?;
    let (scheme, token) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("Bearer") {
        return None;
    }
    let token = token.trim_start_matches(' ');
    let b64token = |c: char| c.is_ascii_alphanumeric() || "-._~+/=".contains(c);
    (!token.is_empty() && token.len() <= MAX_TOKEN_OCTETS && token.chars().all(b64token))
        .then(|| token.to_owned())
}

fn user_name(raw: &[u8]) -> Option<String> {
    if raw.is_empty() || raw.len() > MAX_USER_OCTETS {
        return None;
    }
    saslprep(std::str::from_utf8(raw).ok()?)
}

/// The `\x01`-separated pairs, ended by an empty one (`\x01\x01`).
fn pairs(message: &[u8]) -> Option<Vec<(&[u8], &[u8])>> {
    let body = message.strip_suffix(b"\x01\x01")?;
    body.split(|&b| b == 1)
        .map(|pair| {
            let eq = pair.iter().position(|&b| b == b'=')?;
            Some((&pair[..eq], &pair[eq + 1..]))
        })
        .collect()
}

/// RFC 7628 §3.1: `gs2-header kvsep *kvpair kvsep`; the GS2 header is
/// `n,` (or `y,`; `p=` channel binding is not offered), an optional
/// `a=<authzid>` and `,`. The authzid uses RFC 5801's `=2C`/`=3D`.
fn parse_oauthbearer(message: &[u8]) -> Option<(Option<String>, String)> {
    let rest = message
        .strip_prefix(b"n,")
        .or_else(|| message.strip_prefix(b"y,"))?;
    let comma = rest.iter().position(|&b| b == b',')?;
    let (authzid, rest) = (&rest[..comma], &rest[comma + 1..]);
    let user = match authzid {
        b"" => None,
        a => {
            let a = a.strip_prefix(b"a=")?;
            Some(user_name(
                gs2_decode(std::str::from_utf8(a).ok()?)?.as_bytes(),
            )?)
        }
    };
    let rest = rest.strip_prefix(b"\x01")?;
    let mut token = None;
    for (key, value) in pairs(rest)? {
        // Keys are alphabetic (RFC 7628 §3.1); host and port are
        // informational.
        if key.is_empty() || !key.iter().all(u8::is_ascii_alphabetic) {
            return None;
        }
        if key == b"auth" {
            if token.is_some() {
                return None;
            }
            token = Some(bearer(value)?);
        }
    }
    Some((user, token?))
}

/// RFC 5801 §4: `=2C` is `,` and `=3D` is `=`; any other `=` is an error.
fn gs2_decode(text: &str) -> Option<String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('=') {
        out.push_str(&rest[..at]);
        let escape = rest.get(at..at + 3)?;
        out.push(match escape {
            "=2C" => ',',
            "=3D" => '=',
            _ => return None,
        });
        rest = &rest[at + 3..];
    }
    out.push_str(rest);
    Some(out)
}

/// `user=<name>\x01auth=Bearer <token>\x01\x01`.
fn parse_xoauth2(message: &[u8]) -> Option<(Option<String>, String)> {
    let pairs = pairs(message)?;
    let [(b"user", user), (b"auth", auth)] = pairs.as_slice() else {
        return None;
    };
    Some((Some(user_name(user)?), bearer(auth)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(user: Option<&str>, token: &str) -> Step {
        Step::Token {
            user: user.map(str::to_owned),
            token: Secret::new(token.to_owned()),
        }
    }

    #[test]
    fn rfc7628_example_messages_parse() {
        // RFC 7628 §4.1, with the token of §4.
        let message = b"n,a=user@example.com,\x01host=server.example.com\x01port=143\x01auth=Bearer vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==\x01\x01";
        assert_eq!(
            OAuth::new(Format::OAuthBearer, true).step(message),
            token(
                Some("user@example.com"),
                "vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg=="
            )
        );
        // No authzid: the token alone names the user.
        assert_eq!(
            OAuth::new(Format::OAuthBearer, true).step(b"n,,\x01auth=bearer abc.def.ghi\x01\x01"),
            token(None, "abc.def.ghi")
        );
        assert_eq!(
            OAuth::new(Format::OAuthBearer, true).step(b"n,a=a=2Cb,\x01auth=Bearer t\x01\x01"),
            token(Some("a,b"), "t")
        );
    }

    #[test]
    fn xoauth2_messages_parse() {
        assert_eq!(
            OAuth::new(Format::XOAuth2, true)
                .step(b"user=someuser@example.com\x01auth=Bearer ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg\x01\x01"),
            token(
                Some("someuser@example.com"),
                "ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg"
            )
        );
    }

    #[test]
    fn malformed_messages_fail() {
        for bad in [
            &b""[..],
            b"n,,auth=Bearer t\x01\x01",
            b"n,,\x01auth=Bearer t\x01",
            b"n,,\x01auth=Basic t\x01\x01",
            b"n,,\x01auth=Bearer \x01\x01",
            b"n,,\x01auth=Bearer t t\x01\x01",
            b"n,,\x01auth=Bearer t\x01auth=Bearer u\x01\x01",
            b"n,,\x01host=x\x01\x01",
            b"p=tls-unique,,\x01auth=Bearer t\x01\x01",
            b"n,b=x,\x01auth=Bearer t\x01\x01",
            b"n,a=x=41,\x01auth=Bearer t\x01\x01",
            b"n,a=\x07,\x01auth=Bearer t\x01\x01",
            b"n,,\x01au th=Bearer t\x01\x01",
            b"n,,\x01noequals\x01\x01",
        ] {
            assert_eq!(
                OAuth::new(Format::OAuthBearer, true).step(bad),
                Step::Failed(Failure::Malformed),
                "{bad:?}"
            );
        }
        for bad in [
            &b"auth=Bearer t\x01\x01"[..],
            b"user=\x01auth=Bearer t\x01\x01",
            b"user=a\x01auth=Bearer t\x01",
            b"auth=Bearer t\x01user=a\x01\x01",
        ] {
            assert_eq!(
                OAuth::new(Format::XOAuth2, true).step(bad),
                Step::Failed(Failure::Malformed),
                "{bad:?}"
            );
        }
        let long = [
            b"n,,\x01auth=Bearer ".as_slice(),
            &[b'a'; MAX_TOKEN_OCTETS + 1],
            b"\x01\x01",
        ]
        .concat();
        assert_eq!(
            OAuth::new(Format::OAuthBearer, true).step(&long),
            Step::Failed(Failure::Malformed)
        );
    }

    #[test]
    fn a_refused_token_gets_the_json_status_then_fails_on_the_dummy_response() {
        let mut m = OAuth::new(Format::OAuthBearer, false);
        assert_eq!(m.step(b""), Step::Challenge(Vec::new()));
        assert!(matches!(
            m.step(b"n,,\x01auth=Bearer t\x01\x01"),
            Step::Token { .. }
        ));
        assert_eq!(
            m.rejected(),
            Step::Challenge(br#"{"status":"invalid_token"}"#.to_vec())
        );
        assert!(m.awaiting_dummy());
        assert_eq!(m.step(b"\x01"), Step::Failed(Failure::Rejected));
        assert_eq!(m.step(b"\x01"), Step::Failed(Failure::Malformed));
    }
}
