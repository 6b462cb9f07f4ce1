//! LOGIN (draft-murchison-sasl-login): the server asks `Username:`, then
//! `Password:`. Obsolete, but Outlook and older clients offer nothing
//! else. An initial response, if sent, is the user name. No IO.

use super::{saslprep, Failure, Step};
use crate::secret::Secret;

/// The LOGIN exchange.
#[derive(Debug, Default)]
pub struct Login {
    user: Option<String>,
    asked: bool,
}

impl Login {
    /// Feeds one response.
    pub fn step(&mut self, response: &[u8]) -> Step {
        if !self.asked && self.user.is_none() && response.is_empty() {
            self.asked = true;
            return Step::Challenge(b"Username:".to_vec());
        }
        let Some(text) = std::str::from_utf8(response).ok().and_then(saslprep) else {
            return Step::Failed(Failure::Malformed);
        };
        if text.is_empty() {
            return Step::Failed(Failure::Malformed);
        }
        match self.user.take() {
            None => {
                self.asked = true;
                self.user = Some(text);
                Step::Challenge(b"Password:".to_vec())
            }
            Some(user) => Step::Password {
                user,
                authzid: None,
                password: Secret::new(text),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asks_user_then_password() {
        let mut m = Login::default();
        assert_eq!(m.step(b""), Step::Challenge(b"Username:".to_vec()));
        assert_eq!(m.step(b"tim"), Step::Challenge(b"Password:".to_vec()));
        assert_eq!(
            m.step(b"pw"),
            Step::Password {
                user: "tim".into(),
                authzid: None,
                password: Secret::new("pw".into())
            }
        );
    }

    #[test]
    fn initial_response_is_the_user_name() {
        let mut m = Login::default();
        assert_eq!(m.step(b"tim"), Step::Challenge(b"Password:".to_vec()));
        assert!(matches!(m.step(b"pw"), Step::Password { .. }));
    }

    #[test]
    fn empty_or_invalid_answers_fail() {
        let mut m = Login::default();
        m.step(b"");
        assert_eq!(m.step(b""), Step::Failed(Failure::Malformed));
        let mut m = Login::default();
        assert_eq!(m.step(b"\xff"), Step::Failed(Failure::Malformed));
    }
}
