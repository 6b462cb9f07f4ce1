//! The machine's own accounts, checked through PAM (`auth.kind = "pam"`).
//!
//! A login is one PAM transaction for the configured service (default
//! `mailbag`, `/etc/pam.d/mailbag`): `pam_authenticate` with the client's
//! password, then `pam_acct_mgmt`, which refuses locked and expired
//! accounts and ones whose password must be changed first (a POP3 client
//! cannot change it). Accounts below `auth.pam.min_uid` (system and
//! service accounts, root) are refused without asking PAM, so no password
//! of theirs is ever checked or logged as a failure of theirs.
//!
//! Only a plaintext password can be checked: APOP, CRAM-MD5 and SCRAM
//! need a secret PAM never hands out, so this passdb says it cannot do
//! them (CAPA and AUTH offer only PLAIN and LOGIN, the greeting has no
//! APOP timestamp) and an attempt fails like a wrong password.
//!
//! The account lookup (`getpwnam`, which may ask the network through NSS)
//! and the conversation run on the blocking pool, at most
//! [`CONVERSATIONS`] at a time, each with a deadline: a PAM stack that hangs (a network module,
//! a helper that never answers) turns into `[SYS/TEMP]` for that login,
//! never a stuck async thread. A conversation past its deadline keeps its
//! slot until PAM returns, so stuck ones cannot pile up threads.
//!
//! Timing: an unknown name, a name below the minimum UID, a locked
//! account and a wrong password all answer "invalid" after the same
//! padding as the passwd-file ([`super::timing`]): no sooner than the
//! slowest PAM check seen. PAM's own failure delay (`pam_unix` asks for
//! two seconds, which libpam randomises by up to a quarter) would hold a
//! blocking thread and add jitter, so the shipped service file passes
//! `nodelay` and the server's own `auth.failure_delay_ms` applies, as
//! with every other passdb.

use std::ffi::{OsStr, OsString};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nonstick::{AuthnFlags, ConversationAdapter, ErrorCode, Transaction, TransactionBuilder};
use tokio::sync::Semaphore;

use super::timing::CheckTimes;
use super::{AuthError, Credential, PassDb, ScramKeys};

/// PAM conversations running at once. Each holds a blocking thread and
/// may run a helper process (`unix_chkpwd`).
pub const CONVERSATIONS: usize = 16;

/// The PAM passdb.
#[derive(Clone)]
pub struct PamPassDb {
    shared: Arc<Shared>,
}

struct Shared {
    service: String,
    min_uid: u32,
    /// Finds an account ([`super::system::account`]; tests put a slow
    /// one in).
    lookup: fn(&str, u32) -> Option<String>,
    deadline: Duration,
    times: CheckTimes,
    slots: Arc<Semaphore>,
}

impl std::fmt::Debug for PamPassDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PamPassDb")
            .field("service", &self.shared.service)
            .field("min_uid", &self.shared.min_uid)
            .finish_non_exhaustive()
    }
}

/// How one login ended, before padding.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Accepted(String),
    Refused,
}

impl PamPassDb {
    /// A passdb asking PAM service `service`; accounts with a UID below
    /// `min_uid` are refused; a conversation longer than `deadline` is a
    /// temporary failure.
    pub fn new(service: &str, min_uid: u32, deadline: Duration) -> PamPassDb {
        PamPassDb {
            shared: Arc::new(Shared {
                service: service.to_string(),
                min_uid,
                lookup: super::system::account,
                deadline,
                times: CheckTimes::default(),
                slots: Arc::new(Semaphore::new(CONVERSATIONS)),
            }),
        }
    }

    /// The account `user` if it exists and may log in by UID: its name
    /// exactly as the system spells it (the rule `mailbag deliver` uses
    /// for recipients too). Asked on the blocking pool under a slot and
    /// the deadline, as a conversation is: a name service that hangs is
    /// a temporary failure for this login, and stalls no other session.
    async fn account(&self, user: &str) -> Result<Option<String>, AuthError> {
        let deadline = tokio::time::Instant::now() + self.shared.deadline;
        let acquired =
            tokio::time::timeout_at(deadline, Arc::clone(&self.shared.slots).acquire_owned());
        let Ok(Ok(permit)) = acquired.await else {
            return Err(AuthError::Temporary("PAM is busy".into()));
        };
        let (lookup, min_uid, user) = (self.shared.lookup, self.shared.min_uid, user.to_string());
        let work = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            lookup(&user, min_uid)
        });
        match tokio::time::timeout_at(deadline, work).await {
            Ok(Ok(found)) => Ok(found),
            Ok(Err(e)) => Err(AuthError::Temporary(format!("account lookup failed: {e}"))),
            Err(_) => {
                tracing::warn!(
                    "the account lookup (getpwnam) did not answer within {:?}",
                    self.shared.deadline
                );
                Err(AuthError::Temporary(
                    "the account lookup did not answer in time".into(),
                ))
            }
        }
    }
}

/// Answers PAM's prompts: the password to a hidden prompt, the login name
/// to a visible one; messages are dropped (nothing reaches the client).
struct Answers {
    user: OsString,
    password: OsString,
}

impl ConversationAdapter for Answers {
    fn prompt(&self, _request: impl AsRef<OsStr>) -> nonstick::Result<OsString> {
        Ok(self.user.clone())
    }
    fn masked_prompt(&self, _request: impl AsRef<OsStr>) -> nonstick::Result<OsString> {
        Ok(self.password.clone())
    }
    fn error_msg(&self, _message: impl AsRef<OsStr>) {}
    fn info_msg(&self, _message: impl AsRef<OsStr>) {}
}

/// One PAM transaction: authenticate, then account management.
fn converse(service: &str, user: &str, password: &str) -> Result<(), ErrorCode> {
    let answers = Answers {
        user: user.into(),
        password: password.into(),
    };
    let mut pam = TransactionBuilder::new_with_service(service)
        .username(user)
        .build(answers.into_conversation())?;
    let flags = AuthnFlags::SILENT | AuthnFlags::DISALLOW_NULL_AUTHTOK;
    pam.authenticate(flags)?;
    pam.account_management(flags)
}

impl PassDb for PamPassDb {
    async fn verify(&self, user: &str, credential: &Credential) -> Result<String, AuthError> {
        let began = Instant::now();
        let account = match credential {
            Credential::Password(_) => self.account(user).await?,
            _ => None,
        };
        let outcome = match (credential, account) {
            (Credential::Password(password), Some(name)) => {
                let shared = Arc::clone(&self.shared);
                let password = password.expose().to_string();
                // One deadline over the wait for a slot and the
                // conversation: with every slot held by a stack that
                // hangs, a login is a temporary failure in time, not a
                // wait for the first stuck conversation to return.
                let deadline = tokio::time::Instant::now() + self.shared.deadline;
                let acquired =
                    tokio::time::timeout_at(deadline, Arc::clone(&shared.slots).acquire_owned());
                let Ok(permit) = acquired.await else {
                    tracing::warn!(
                        service = %self.shared.service,
                        "all {CONVERSATIONS} PAM conversations busy for {:?}",
                        self.shared.deadline
                    );
                    return Err(AuthError::Temporary("PAM is busy".into()));
                };
                // The slot goes with the work: a conversation past its
                // deadline frees it only when PAM returns.
                let permit = permit.ok();
                let started = Instant::now();
                let work = tokio::task::spawn_blocking(move || {
                    let _permit = permit;
                    match converse(&shared.service, &name, &password) {
                        Ok(()) => Outcome::Accepted(name),
                        Err(code) => {
                            tracing::debug!(code = ?code, "PAM refused a login");
                            Outcome::Refused
                        }
                    }
                });
                let outcome = match tokio::time::timeout_at(deadline, work).await {
                    Ok(Ok(outcome)) => outcome,
                    Ok(Err(e)) => {
                        return Err(AuthError::Temporary(format!("PAM check failed: {e}")));
                    }
                    Err(_) => {
                        tracing::warn!(
                            service = %self.shared.service,
                            "PAM did not answer within {:?}",
                            self.shared.deadline
                        );
                        return Err(AuthError::Temporary("PAM did not answer in time".into()));
                    }
                };
                self.shared.times.record(started.elapsed());
                outcome
            }
            // Unknown, below the minimum UID, or a credential PAM cannot
            // check: refused like a wrong password, after the same wait.
            _ => Outcome::Refused,
        };
        match outcome {
            Outcome::Accepted(name) => Ok(name),
            Outcome::Refused => {
                self.shared.times.pad(began).await;
                Err(AuthError::Invalid)
            }
        }
    }

    async fn user_exists(&self, user: &str) -> Result<Option<String>, AuthError> {
        self.account(user).await
    }

    async fn scram_keys(&self, user: &str) -> Result<(String, ScramKeys), AuthError> {
        // PAM hands out no secret: keys that no proof matches.
        let mut salt = [0u8; 16];
        rand::fill(&mut salt);
        let mut stored = [0u8; 32];
        rand::fill(&mut stored);
        let mut server = [0u8; 32];
        rand::fill(&mut server);
        Ok((
            user.to_string(),
            ScramKeys {
                salt: salt.to_vec(),
                iterations: 4096,
                stored_key: stored,
                server_key: server,
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

    #[tokio::test]
    async fn system_accounts_below_the_minimum_uid_do_not_exist() {
        let db = PamPassDb::new("mailbag", 1000, Duration::from_secs(5));
        assert_eq!(db.account("root").await.unwrap(), None);
        let low = PamPassDb::new("mailbag", 0, Duration::from_secs(5));
        assert_eq!(low.account("root").await.unwrap().as_deref(), Some("root"));
        assert_eq!(low.account("ROOT").await.unwrap(), None);
        assert_eq!(low.account("ro\0ot").await.unwrap(), None);
        assert_eq!(low.account("").await.unwrap(), None);
    }

    /// A name service that hangs (an LDAP or SSSD server gone) makes the
    /// lookup a temporary failure at the deadline, while the session's
    /// thread goes on serving everything else.
    #[tokio::test(flavor = "current_thread")]
    async fn an_account_lookup_that_hangs_is_temporary_and_stalls_nothing_else() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let mut db = PamPassDb::new("mailbag", 0, Duration::from_millis(300));
        Arc::get_mut(&mut db.shared).unwrap().lookup = |_, _| {
            std::thread::sleep(Duration::from_millis(1500));
            None
        };
        let ticks = Arc::new(AtomicUsize::new(0));
        let ticker = tokio::spawn({
            let ticks = Arc::clone(&ticks);
            async move {
                loop {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    ticks.fetch_add(1, Ordering::SeqCst);
                }
            }
        });
        let found = db.user_exists("alice").await;
        assert!(matches!(found, Err(AuthError::Temporary(_))), "{found:?}");
        let password = Credential::Password(mailbag_proto::secret::Secret::new("pw".into()));
        let checked = db.verify("alice", &password).await;
        assert!(
            matches!(checked, Err(AuthError::Temporary(_))),
            "{checked:?}"
        );
        ticker.abort();
        // Two deadlines of 300 ms: the thread ran the ticker all along.
        assert!(ticks.load(Ordering::SeqCst) >= 20, "{ticks:?}");
    }
}
