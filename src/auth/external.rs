//! What the password databases that mailbag does not own (LDAP, the
//! administrator's SQL query) share once a stored secret is found: the
//! check of a credential against it, the decoy check for a user who is
//! not there, the padding of failures to the slowest check seen, and
//! SCRAM keys (made up for unknown users, as every passdb makes them).

use std::sync::Arc;
use std::time::Instant;

use super::cache::VerifiedCache;
use super::credential::{credential_matches, presented_bytes, stored_scram_keys};
use super::name::fold;
use super::scheme;
use super::secret::ServerSecret;
use super::timing::CheckTimes;
use super::{AuthError, Credential, ScramKeys};

pub(crate) fn temporary(e: impl std::fmt::Display) -> AuthError {
    AuthError::Temporary(e.to_string())
}

/// The verifying half of a passdb that only looks secrets up.
#[derive(Debug, Clone)]
pub(crate) struct Checker {
    pub cache: Option<Arc<VerifiedCache>>,
    pub secret: ServerSecret,
    pub times: Arc<CheckTimes>,
    pub scram_times: Arc<CheckTimes>,
    pub case_insensitive: bool,
}

impl Default for Checker {
    fn default() -> Self {
        Checker {
            cache: None,
            secret: ServerSecret::random(),
            times: Arc::default(),
            scram_times: Arc::default(),
            case_insensitive: true,
        }
    }
}

impl Checker {
    /// Checks `credential` against `found` (the canonical name and the
    /// stored secret); an unknown user costs a decoy check. Failures are
    /// answered no sooner than the slowest check seen.
    pub async fn verify(
        &self,
        found: Option<(String, String)>,
        credential: &Credential,
    ) -> Result<String, AuthError> {
        let credential = credential.clone();
        let cache = self.cache.clone();
        let (verified, began) = super::hashing(move || {
            let began = Instant::now();
            let verified = match found {
                Some((name, stored)) => {
                    credential_matches(&name, &stored, None, &credential, cache.as_deref())
                        .then_some(name)
                        .ok_or(AuthError::Invalid)
                }
                None => {
                    scheme::dummy_verify(presented_bytes(&credential));
                    Err(AuthError::Invalid)
                }
            };
            (verified, began)
        })
        .await
        .map_err(temporary)?;
        self.times.record(began.elapsed());
        if verified.is_err() {
            self.times.pad(began).await;
        }
        verified
    }

    /// Pads a failure decided elsewhere (the directory refused a bind)
    /// that began at `began`, and notes how long it took.
    pub async fn pad_failure(&self, began: Instant) {
        self.times.record(began.elapsed());
        self.times.pad(began).await;
    }

    /// SCRAM keys for `user` from `found`, made up when there is no user
    /// or no usable secret, answered when the slowest lookup would be.
    pub async fn scram_keys(
        &self,
        user: &str,
        found: Option<(String, String)>,
    ) -> Result<(String, ScramKeys), AuthError> {
        let user = fold(user, self.case_insensitive).into_owned();
        let secret = self.secret.clone();
        let (found, began) = super::hashing(move || {
            let began = Instant::now();
            let keys = found.and_then(|(name, stored)| {
                let keys = stored_scram_keys(&secret, &name, &stored)?;
                Some((name, keys))
            });
            let found = keys.unwrap_or_else(|| {
                let keys = secret.scram_lookalike(&user, scheme::SCRAM_ITERATIONS);
                (user, keys)
            });
            (found, began)
        })
        .await
        .map_err(temporary)?;
        self.scram_times.record(began.elapsed());
        self.scram_times.time_scram_derivation().await;
        self.scram_times.pad(began).await;
        Ok(found)
    }
}

/// The user name parts that templates and queries may use: `%u` the
/// whole name, `%n` the local part, `%d` the domain (empty without one).
pub(crate) fn name_parts(user: &str) -> (&str, &str) {
    match user.rsplit_once('@') {
        Some((local, domain)) => (local, domain),
        None => (user, ""),
    }
}
