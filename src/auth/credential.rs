//! What every passdb shares: checking a presented credential against a
//! stored secret, the SCRAM keys of a stored secret, and the user-name
//! rule.

use md5::Digest as _;
use subtle::ConstantTimeEq;

use super::cache::{self, VerifiedCache};
use super::scheme;
use super::secret::ServerSecret;
use super::{Credential, ScramKeys};

/// Whether `credential` matches the `stored` secret. `decoy`, a typical
/// stored hash, is checked too where the match itself would be instant,
/// so that timing does not tell which users store plaintext.
pub(crate) fn credential_matches(
    user: &str,
    stored: &str,
    decoy: Option<&str>,
    credential: &Credential,
    cache: Option<&VerifiedCache>,
) -> bool {
    match credential {
        Credential::Password(password) => {
            cache::verify_password(cache, user, stored, password.expose().as_bytes())
        }
        Credential::CramMd5 { challenge, digest } => {
            // Like APOP: pay what a password check costs.
            if let Some(decoy) = decoy {
                std::hint::black_box(scheme::verify(decoy, digest.expose().as_bytes()));
            }
            scheme::cram_md5_digest(stored, challenge.as_bytes()).is_some_and(|expected| {
                let expected = scheme::encode_hex(&expected);
                expected.as_bytes().ct_eq(digest.expose().as_bytes()).into()
            })
        }
        Credential::Apop { timestamp, digest } => {
            // The digest check itself is instant; pay what a password
            // check costs so APOP timing does not tell which users store
            // plaintext.
            if let Some(decoy) = decoy {
                std::hint::black_box(scheme::verify(decoy, digest.expose().as_bytes()));
            }
            scheme::plaintext_equivalent(stored)
                .is_some_and(|secret| apop_matches(timestamp, secret, digest.expose()))
        }
    }
}

pub(crate) fn presented_bytes(credential: &Credential) -> &[u8] {
    match credential {
        Credential::Password(password) => password.expose().as_bytes(),
        Credential::Apop { digest, .. } | Credential::CramMd5 { digest, .. } => {
            digest.expose().as_bytes()
        }
    }
}

/// RFC 1939 §7: the digest is the lowercase hex MD5 of the greeting's
/// timestamp followed by the shared secret.
fn apop_matches(timestamp: &str, secret: &str, digest: &str) -> bool {
    let mut md5 = md5::Md5::new();
    md5.update(timestamp.as_bytes());
    md5.update(secret.as_bytes());
    let expected = scheme::encode_hex(&md5.finalize());
    // Clients differ in hex case; RFC 1939 only shows lowercase.
    let presented = digest.to_ascii_lowercase();
    expected.as_bytes().ct_eq(presented.as_bytes()).into()
}

/// The SCRAM keys of `user`'s `stored` secret, with the salt the server
/// secret gives that name; `None` for a hash SCRAM cannot use.
pub(crate) fn stored_scram_keys(
    secret: &ServerSecret,
    user: &str,
    stored: &str,
) -> Option<ScramKeys> {
    scheme::scram_keys(stored, &secret.scram_salt(user))
}

/// Whether `name` may be a user name: the one rule of [`super::name`].
pub fn valid_user_name(name: &str) -> bool {
    super::name::is_valid(name)
}
