//! PLAIN (RFC 4616): one message, `[authzid] NUL authcid NUL passwd`.
//! No IO.

use super::{saslprep, Failure, Step};
use crate::secret::Secret;

/// RFC 4616 §2: each field is at most 255 octets.
const MAX_FIELD_OCTETS: usize = 255;

/// The PLAIN exchange: an empty challenge if there was no initial
/// response, then one message.
#[derive(Debug, Default)]
pub struct Plain {
    asked: bool,
}

impl Plain {
    /// An exchange whose client sent an initial response with the command
    /// (RFC 5034 §4), even an empty one (`=`): nothing more will be asked,
    /// so an empty message fails instead of starting a challenge.
    pub fn with_initial_response() -> Self {
        Plain { asked: true }
    }

    /// Feeds one response.
    pub fn step(&mut self, response: &[u8]) -> Step {
        if response.is_empty() && !self.asked {
            // RFC 4422 §3: no initial response; ask with an empty challenge.
            self.asked = true;
            return Step::Challenge(Vec::new());
        }
        let mut fields = response.split(|&b| b == 0);
        let (Some(authzid), Some(authcid), Some(password), None) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return Step::Failed(Failure::Malformed);
        };
        if [authzid, authcid, password]
            .iter()
            .any(|f| f.len() > MAX_FIELD_OCTETS)
            || authcid.is_empty()
            || password.is_empty()
        {
            return Step::Failed(Failure::Malformed);
        }
        let (Ok(authzid), Ok(authcid), Ok(password)) = (
            std::str::from_utf8(authzid),
            std::str::from_utf8(authcid),
            std::str::from_utf8(password),
        ) else {
            return Step::Failed(Failure::Malformed);
        };
        let (Some(user), Some(password)) = (saslprep(authcid), saslprep(password)) else {
            return Step::Failed(Failure::Malformed);
        };
        let authzid = match authzid {
            "" => None,
            a => match saslprep(a) {
                Some(a) if a == user => None,
                Some(a) if !a.is_empty() => Some(a),
                _ => return Step::Failed(Failure::AuthzidRefused),
            },
        };
        Step::Password {
            user,
            authzid,
            password: Secret::new(password),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn password(user: &str, pw: &str) -> Step {
        Step::Password {
            user: user.into(),
            authzid: None,
            password: Secret::new(pw.into()),
        }
    }

    #[test]
    fn rfc4616_examples() {
        // RFC 4616 §4.
        let mut m = Plain::default();
        assert_eq!(
            m.step(b"\0tim\0tanstaaftanstaaf"),
            password("tim", "tanstaaftanstaaf")
        );
        let mut m = Plain::default();
        assert_eq!(
            m.step(b"Kurt\0tim\0tanstaaftanstaaf"),
            Step::Password {
                user: "tim".into(),
                authzid: Some("Kurt".into()),
                password: Secret::new("tanstaaftanstaaf".into()),
            }
        );
        assert_eq!(
            Plain::default().step(b"K\x07\0tim\0pw"),
            Step::Failed(Failure::AuthzidRefused)
        );
        let mut m = Plain::default();
        assert_eq!(m.step(b"tim\0tim\0pw"), password("tim", "pw"));
    }

    #[test]
    fn empty_initial_response_gets_an_empty_challenge() {
        let mut m = Plain::default();
        assert_eq!(m.step(b""), Step::Challenge(Vec::new()));
        // "AUTH PLAIN =" is an empty message, not a request for a prompt.
        assert_eq!(
            Plain::with_initial_response().step(b""),
            Step::Failed(Failure::Malformed)
        );
        assert_eq!(m.step(b""), Step::Failed(Failure::Malformed));
    }

    #[test]
    fn malformed_messages_fail() {
        for bad in [
            &b"tim"[..],
            b"\0tim",
            b"\0tim\0",
            b"\0\0pw",
            b"\0tim\0pw\0x",
            b"\0t\xffm\0pw",
            b"\0tim\0p\x07w",
            // Characters that SASLprep maps to nothing leave no password
            // (U+034F) and no user (U+00AD).
            b"6\0a\0\xcd\x8f",
            b"\0\xc2\xad\0pw",
        ] {
            assert_eq!(
                Plain::default().step(bad),
                Step::Failed(Failure::Malformed),
                "{bad:?}"
            );
        }
        let long = [b"\0".as_slice(), &[b'a'; 256], b"\0pw"].concat();
        assert_eq!(
            Plain::default().step(&long),
            Step::Failed(Failure::Malformed)
        );
    }
}
