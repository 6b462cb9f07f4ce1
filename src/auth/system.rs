//! The machine's own accounts as recipients, for `mailbag deliver` with
//! `auth.kind = "pam"`: a name exists when `getpwnam` finds an account of
//! exactly that name with a UID of at least `auth.pam.min_uid`, the rule
//! the PAM passdb applies before it asks PAM anything. Delivery needs no
//! PAM (and no password), so this works in a build without the `pam`
//! feature, and the MTA's delivery agent never reads `/etc/shadow`.
//!
//! A locked or expired account still receives mail, as Postfix `local(8)`
//! delivers it: locking stops logins (PAM refuses them), it does not close
//! the mailbox; and the delivery agent, running as the server's user,
//! cannot read `/etc/shadow` to tell.

use super::{AuthError, Credential, PassDb, ScramKeys};

/// The account `user` if it exists with a UID of at least `min_uid`: its
/// name exactly as the system spells it.
pub fn account(user: &str, min_uid: u32) -> Option<String> {
    if user.is_empty() || user.contains('\0') || user.len() > 256 {
        return None;
    }
    let found = nix::unistd::User::from_name(user).ok().flatten()?;
    // Name service lookups may fold case or aliases; the maildrop is
    // named by the name given, so only an exact match counts.
    (found.name == user && found.uid.as_raw() >= min_uid).then_some(found.name)
}

/// Recipients from the system's accounts; checks no password.
#[derive(Debug, Clone)]
pub struct SystemAccounts {
    min_uid: u32,
}

impl SystemAccounts {
    /// Accounts with a UID of at least `min_uid`.
    pub fn new(min_uid: u32) -> SystemAccounts {
        SystemAccounts { min_uid }
    }
}

impl PassDb for SystemAccounts {
    async fn verify(&self, _user: &str, _credential: &Credential) -> Result<String, AuthError> {
        // Delivery only: a login goes through PAM.
        Err(AuthError::Invalid)
    }

    async fn user_exists(&self, user: &str) -> Result<Option<String>, AuthError> {
        Ok(account(user, self.min_uid))
    }

    async fn scram_keys(&self, user: &str) -> Result<(String, ScramKeys), AuthError> {
        let mut stored = [0u8; 32];
        rand::fill(&mut stored);
        Ok((
            user.to_string(),
            ScramKeys {
                salt: stored[..16].to_vec(),
                iterations: 4096,
                stored_key: stored,
                server_key: stored,
            },
        ))
    }

    fn cram_md5_possible(&self) -> bool {
        false
    }

    fn apop_possible(&self) -> bool {
        false
    }

    fn scram_possible(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accounts_below_the_minimum_uid_or_misspelt_do_not_exist() {
        assert_eq!(account("root", 1000), None);
        assert_eq!(account("root", 0).as_deref(), Some("root"));
        assert_eq!(account("ROOT", 0), None);
        assert_eq!(account("ro\0ot", 0), None);
        assert_eq!(account("", 0), None);
    }
}
