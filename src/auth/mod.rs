//! Authentication: the password database boundary and password schemes.
//!
//! [`PassDb`] checks a credential for a user name. Hashing is deliberately
//! slow and runs off the async worker threads. An unknown user costs the
//! same time as a known one, and nothing here logs a secret.

pub mod cache;
pub mod passwd_file;
pub mod postgres;
pub mod scheme;

use std::future::Future;

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
}
