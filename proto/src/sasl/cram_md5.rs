//! CRAM-MD5 (RFC 2195): the server sends a unique challenge, the client
//! answers `user SP hex(HMAC-MD5(password, challenge))`. The digest is
//! checked where the secrets are (the password database). No IO.

use super::{saslprep, Failure, Step};
use crate::secret::Secret;

/// The CRAM-MD5 exchange.
#[derive(Debug)]
pub struct CramMd5 {
    challenge: String,
    sent: bool,
}

impl CramMd5 {
    /// An exchange with a challenge unique to this attempt, in RFC 2195's
    /// `<unique@host>` form.
    pub fn new(challenge: String) -> Self {
        CramMd5 {
            challenge,
            sent: false,
        }
    }

    /// Feeds one response.
    pub fn step(&mut self, response: &[u8]) -> Step {
        if !self.sent {
            if !response.is_empty() {
                // The mechanism is server-first: no initial response.
                return Step::Failed(Failure::Malformed);
            }
            self.sent = true;
            return Step::Challenge(self.challenge.as_bytes().to_vec());
        }
        let Ok(text) = std::str::from_utf8(response) else {
            return Step::Failed(Failure::Malformed);
        };
        let Some((user, digest)) = text.rsplit_once(' ') else {
            return Step::Failed(Failure::Malformed);
        };
        if digest.len() != 32 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Step::Failed(Failure::Malformed);
        }
        let Some(user) = saslprep(user).filter(|u| !u.is_empty()) else {
            return Step::Failed(Failure::Malformed);
        };
        Step::CramMd5 {
            user,
            challenge: self.challenge.clone(),
            digest: Secret::new(digest.to_ascii_lowercase()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc2195_example() {
        let challenge = "<1896.697170952@postoffice.reston.mci.net>";
        let mut m = CramMd5::new(challenge.into());
        assert_eq!(m.step(b""), Step::Challenge(challenge.as_bytes().to_vec()));
        assert_eq!(
            m.step(b"tim b913a602c7eda7a495b4e6e7334d3890"),
            Step::CramMd5 {
                user: "tim".into(),
                challenge: challenge.into(),
                digest: Secret::new("b913a602c7eda7a495b4e6e7334d3890".into()),
            }
        );
    }

    #[test]
    fn malformed_answers_fail() {
        for bad in [
            &b"tim"[..],
            b"tim xyz",
            b" b913a602c7eda7a495b4e6e7334d3890",
        ] {
            let mut m = CramMd5::new("<1@h>".into());
            m.step(b"");
            assert_eq!(m.step(bad), Step::Failed(Failure::Malformed), "{bad:?}");
        }
        assert_eq!(
            CramMd5::new("<1@h>".into()).step(b"initial"),
            Step::Failed(Failure::Malformed)
        );
    }
}
