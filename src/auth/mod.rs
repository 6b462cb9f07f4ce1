//! Authentication: the password database boundary and password schemes.
//!
//! [`PassDb`] checks a credential for a user name. Hashing is deliberately
//! slow and runs off the async worker threads. An unknown user costs the
//! same time as a known one, and nothing here logs a secret.

pub mod passwd_file;
pub mod scheme;

use std::future::Future;

use mailbag_proto::secret::Secret;

/// What a client presented to prove who it is.
#[derive(Debug, Clone)]
pub enum Credential {
    /// A plaintext password (USER/PASS, AUTH PLAIN, AUTH LOGIN).
    Password(Secret<String>),
    /// RFC 1939 §7 APOP: the hex MD5 of the greeting's timestamp and the
    /// shared secret.
    Apop {
        /// The timestamp from the greeting, angle brackets included.
        timestamp: String,
        /// The client's digest, 32 lowercase hex digits.
        digest: Secret<String>,
    },
}

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

/// A password database.
pub trait PassDb: Send + Sync + 'static {
    /// Checks `credential` for `user`. On success returns the canonical
    /// user name (as stored), which names the maildrop.
    fn verify(
        &self,
        user: &str,
        credential: &Credential,
    ) -> impl Future<Output = Result<String, AuthError>> + Send;

    /// Whether any user has a plaintext-equivalent secret, so that APOP
    /// can work at all and the greeting should carry a timestamp.
    fn apop_possible(&self) -> bool;
}
