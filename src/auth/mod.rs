//! Authentication: the password database boundary and password schemes.
//!
//! [`PassDb`] checks a credential for a user name. Hashing is deliberately
//! slow and runs off the async worker threads. An unknown user costs the
//! same time as a known one, and nothing here logs a secret.

pub mod cache;
pub mod credential;
mod external;
pub mod ldap;
pub mod name;
pub mod oauth;
pub mod oauth_http;
#[cfg(feature = "pam")]
pub mod pam;
pub mod passwd_file;
pub mod postgres;
pub mod scheme;
pub mod secret;
pub mod sql;
pub mod system;
pub mod timing;

use std::future::Future;
use std::sync::{Arc, OnceLock};

use tokio::sync::Semaphore;

pub use mailbag_proto::pop3::Credential;
pub use mailbag_proto::sasl::scram::ScramKeys;

/// Why a credential was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// Wrong user or wrong secret: the client learns nothing more.
    #[error("invalid credentials")]
    Invalid,
    /// The password database could not be read (`[SYS/TEMP]`).
    #[error("password database unavailable: {0}")]
    Temporary(String),
}

/// What a user's entry in the passdb's source says about where the
/// user's mail lives and how much it may hold (`[auth.ldap]`
/// `maildrop_attribute`/`quota_attribute`, `[auth.sql] user_query`).
/// Nothing here is trusted: the maildrop is checked by the store
/// ([`crate::store::check_maildrop`]) before it names any file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserAttributes {
    /// The maildrop as a path relative to the store's root, as the
    /// source gives it (unchecked).
    pub maildrop: Option<String>,
    /// Octets the maildrop may hold (0: unlimited); overrides `[quota]`.
    pub quota_octets: Option<u64>,
    /// Messages the maildrop may hold (0: unlimited); overrides `[quota]`.
    pub quota_messages: Option<u64>,
}

/// A stored user: the canonical name and what the source says about
/// the user's maildrop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// The canonical user name.
    pub name: String,
    /// The maildrop path and quota from the user's entry, if any.
    pub attributes: UserAttributes,
}

impl User {
    /// A user with nothing but a name: the maildrop follows the store's
    /// path template, the quota `[quota]`.
    pub fn named(name: String) -> User {
        User {
            name,
            attributes: UserAttributes::default(),
        }
    }

    /// The maildrop of this user at the store.
    pub fn mailbox(&self) -> crate::store::Mailbox<'_> {
        crate::store::Mailbox {
            name: &self.name,
            maildrop: self.attributes.maildrop.as_deref(),
        }
    }

    /// `configured` (the `[quota]` entry for the user) with what the
    /// user's entry says put over it.
    pub fn quota(&self, configured: crate::config::Quota) -> crate::config::Quota {
        crate::config::Quota {
            max_octets: self
                .attributes
                .quota_octets
                .unwrap_or(configured.max_octets),
            max_messages: self
                .attributes
                .quota_messages
                .unwrap_or(configured.max_messages),
        }
    }
}

/// Chooses the one stored user among what each spelling of a name found
/// ([`name::Matching::pick`]).
pub type PickUser<'a> =
    dyn Fn(Vec<Option<String>>) -> Result<Option<String>, AuthError> + Sync + 'a;

/// A password database.
pub trait PassDb: Send + Sync + 'static {
    /// Checks `credential` for `user`. On success returns the canonical
    /// user name (as stored), which names the maildrop.
    fn verify(
        &self,
        user: &str,
        credential: &Credential,
    ) -> impl Future<Output = Result<String, AuthError>> + Send;

    /// Whether `user` exists, asked without a credential (for mail
    /// delivery). Returns the canonical user name, which names the
    /// maildrop, or `None` for an unknown user.
    fn user_exists(
        &self,
        user: &str,
    ) -> impl Future<Output = Result<Option<String>, AuthError>> + Send;
    /// [`user_exists`](Self::user_exists) for each of `users` (the
    /// spellings name matching tries for one name), in order: one lookup
    /// each, unless the source answers them all in one round trip
    /// (PostgreSQL). An error for any one is the error for all.
    fn users_exist(
        &self,
        users: &[String],
    ) -> impl Future<Output = Result<Vec<Option<String>>, AuthError>> + Send {
        async move {
            let mut found = Vec::with_capacity(users.len());
            for user in users {
                found.push(self.user_exists(user).await?);
            }
            Ok(found)
        }
    }

    /// Checks `credential` for the stored user one of `spellings` (the
    /// spellings name matching tries for one name, in order) finds:
    /// `pick` chooses among what each found ([`name::Matching::pick`]),
    /// and `unknown` is checked, the decoy at the same cost, when none
    /// found a user. Looks the spellings up, then checks, unless the
    /// source finds the spellings and the secret in one round trip
    /// (PostgreSQL).
    fn verify_spellings(
        &self,
        spellings: &[String],
        unknown: &str,
        pick: &PickUser<'_>,
        credential: &Credential,
    ) -> impl Future<Output = Result<String, AuthError>> + Send {
        async move {
            let found = if spellings.is_empty() {
                None
            } else {
                pick(self.users_exist(spellings).await?)?
            };
            self.verify(found.as_deref().unwrap_or(unknown), credential)
                .await
        }
    }

    /// Like [`user_exists`](Self::user_exists), with what the user's
    /// entry says about the maildrop and its quota, read in the same
    /// lookup. Asked only when
    /// [`has_user_attributes`](Self::has_user_attributes) says so
    /// ([`name::Matching::resolve_user`]); a passdb without such
    /// attributes never is, and costs no extra lookup.
    fn find_user(
        &self,
        user: &str,
    ) -> impl Future<Output = Result<Option<User>, AuthError>> + Send {
        let _ = user;
        std::future::ready(Ok(None))
    }

    /// Whether [`find_user`](Self::find_user) may give a maildrop or a
    /// quota (an attribute or query for them is configured). When it
    /// may, a login or delivery whose lookup fails is refused rather
    /// than served from the maildrop the name alone gives.
    fn has_user_attributes(&self) -> bool {
        false
    }

    /// SCRAM-SHA-256 keys for `user` and the canonical name; for an
    /// unknown user (or one whose hash SCRAM cannot use), keys that no
    /// proof matches, so that the exchange fails only at its end.
    fn scram_keys(
        &self,
        user: &str,
    ) -> impl Future<Output = Result<(String, ScramKeys), AuthError>> + Send;

    /// Whether any user's secret can answer CRAM-MD5 (plaintext or a
    /// `{CRAM-MD5}` context), so that the mechanism is worth offering.
    fn cram_md5_possible(&self) -> bool;

    /// Whether any user has a plaintext-equivalent secret, so that APOP
    /// can work at all and the greeting should carry a timestamp.
    fn apop_possible(&self) -> bool;

    /// Whether SCRAM-SHA-256 can work at all: a passdb that never sees
    /// a stored secret (LDAP bind mode, PAM) says no, and CAPA leaves it
    /// out.
    fn scram_possible(&self) -> bool {
        true
    }
}

/// Runs deliberately slow credential work (a password hash, SCRAM key
/// derivation) on the blocking pool, at most one per core at a time.
///
/// The work is CPU-bound: more of it in parallel than there are cores
/// gains nothing, and each Argon2id check holds its memory block (tens of
/// MiB) while it runs. Without a bound, a flood of logins (unknown users
/// cost a decoy check too) could run hundreds at once and exhaust memory.
/// Waiting sessions queue here without a thread. The permit goes with
/// the work, so a client that hangs up mid-check frees it only when the
/// check ends.
pub(crate) async fn hashing<T, F>(work: F) -> Result<T, tokio::task::JoinError>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    static SLOTS: OnceLock<Arc<Semaphore>> = OnceLock::new();
    let slots = SLOTS.get_or_init(|| {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Arc::new(Semaphore::new(cores))
    });
    // The semaphore is never closed.
    let permit = Arc::clone(slots).acquire_owned().await.ok();
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        work()
    })
    .await
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn slow_work_runs_at_most_one_per_core() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let running = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..4 * cores + 4 {
            let (running, most) = (Arc::clone(&running), Arc::clone(&most));
            tasks.push(tokio::spawn(hashing(move || {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(20));
                running.fetch_sub(1, Ordering::SeqCst);
            })));
        }
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        assert_eq!(most.load(Ordering::SeqCst), cores);
    }
}
