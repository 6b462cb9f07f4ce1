//! The verified-credential cache (`auth.cache_secs`, off by default).
//!
//! A client that polls every minute pays a deliberately slow password
//! hash (Argon2id, bcrypt, SHA-crypt) at every login. With the cache on, a
//! password that was verified for a user within the last `cache_secs` is
//! accepted again without the hash.
//!
//! What is kept: for each recent success, an HMAC-SHA-256 under a key drawn
//! at random when the server starts, over the user name, the stored secret
//! (the passwd-file's or database's hash) and the password; and when it was
//! verified. Never the password, and nothing on disk. Because the stored
//! secret is part of the digest, changing a user's password invalidates
//! that user's entries at once: the next login computes a different digest
//! and pays the full check. Failures are never cached.
//!
//! The cost, and why it is opt-in: someone who can read the server's
//! memory (key included) can test guesses for the cached users at the
//! speed of HMAC-SHA-256 instead of the slow hash. A disabled user keeps
//! no entry once its secret changes; a user removed from the database
//! cannot log in either way (there is no stored secret to match).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hmac::{KeyInit, Mac};
use sha2::Sha256;

use crate::config::AuthConfig;

/// Recent successful password checks.
pub struct VerifiedCache {
    key: [u8; 32],
    ttl: Duration,
    max_entries: usize,
    /// Digest → when it was verified. Touched only at login, never on
    /// a session's hot path.
    entries: Mutex<HashMap<[u8; 32], Instant>>,
}

/// The key and digests stay out of logs and debug output.
impl std::fmt::Debug for VerifiedCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifiedCache")
            .field("ttl", &self.ttl)
            .field("max_entries", &self.max_entries)
            .field("entries", &self.len())
            .finish_non_exhaustive()
    }
}

impl VerifiedCache {
    /// The cache `[auth]` asks for, if any.
    pub fn from_config(auth: &AuthConfig) -> Option<VerifiedCache> {
        VerifiedCache::new(Duration::from_secs(auth.cache_secs), auth.cache_entries)
    }

    /// A cache keeping successes for `ttl`, at most `max_entries` of them;
    /// `None` when `ttl` is zero (the default: off).
    pub fn new(ttl: Duration, max_entries: usize) -> Option<VerifiedCache> {
        if ttl.is_zero() || max_entries == 0 {
            return None;
        }
        let mut key = [0u8; 32];
        rand::fill(&mut key);
        Some(VerifiedCache {
            key,
            ttl,
            max_entries,
            entries: Mutex::new(HashMap::new()),
        })
    }

    fn digest(&self, user: &str, stored: &str, password: &[u8]) -> [u8; 32] {
        let mut mac = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(&self.key)
            .expect("HMAC takes any key length");
        // Length-prefixed, so that no two (user, stored, password) triples
        // feed the same bytes.
        for part in [user.as_bytes(), stored.as_bytes(), password] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }

    /// Whether `password` was verified against `stored` for `user` within
    /// the cache's time.
    pub fn contains(&self, user: &str, stored: &str, password: &[u8], now: Instant) -> bool {
        let digest = self.digest(user, stored, password);
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        match entries.get(&digest) {
            Some(&verified) if now.saturating_duration_since(verified) < self.ttl => true,
            Some(_) => {
                entries.remove(&digest);
                false
            }
            None => false,
        }
    }

    /// Remembers a successful check. When full, expired entries go first,
    /// then the oldest.
    pub fn insert(&self, user: &str, stored: &str, password: &[u8], now: Instant) {
        let digest = self.digest(user, stored, password);
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= self.max_entries && !entries.contains_key(&digest) {
            let ttl = self.ttl;
            entries.retain(|_, verified| now.saturating_duration_since(*verified) < ttl);
            if entries.len() >= self.max_entries {
                let oldest = entries.iter().min_by_key(|(_, at)| **at).map(|(d, _)| *d);
                if let Some(oldest) = oldest {
                    entries.remove(&oldest);
                }
            }
        }
        entries.insert(digest, now);
    }

    /// How many successes are kept (expired ones included until evicted).
    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Whether nothing is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Checks `password` against `stored` for `user`: from the cache when it
/// holds a recent success, else with the stored scheme (remembering a
/// success).
pub fn verify_password(
    cache: Option<&VerifiedCache>,
    user: &str,
    stored: &str,
    password: &[u8],
) -> bool {
    let Some(cache) = cache else {
        return super::scheme::verify(stored, password);
    };
    let now = Instant::now();
    if cache.contains(user, stored, password, now) {
        return true;
    }
    let ok = super::scheme::verify(stored, password);
    if ok {
        cache.insert(user, stored, password, now);
    }
    ok
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::scheme::Scheme;

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn off_unless_configured() {
        assert!(VerifiedCache::new(Duration::ZERO, 100).is_none());
        assert!(VerifiedCache::new(HOUR, 0).is_none());
    }

    #[test]
    fn a_success_is_kept_for_its_time_and_only_for_its_triple() {
        let cache = VerifiedCache::new(HOUR, 100).unwrap();
        let t0 = Instant::now();
        let stored = "{PLAIN}secret";
        assert!(!cache.contains("alice", stored, b"secret", t0));
        cache.insert("alice", stored, b"secret", t0);
        assert!(cache.contains("alice", stored, b"secret", t0 + HOUR / 2));
        // Another password, user or stored secret (a changed password)
        // is not the cached success.
        assert!(!cache.contains("alice", stored, b"secreT", t0));
        assert!(!cache.contains("bob", stored, b"secret", t0));
        assert!(!cache.contains("alice", "{PLAIN}new", b"secret", t0));
        // Parts cannot be shifted between fields.
        assert!(!cache.contains("alic", "e{PLAIN}secret", b"secret", t0));
        // Expired: gone.
        assert!(!cache.contains("alice", stored, b"secret", t0 + HOUR));
        assert!(cache.is_empty());
    }

    #[test]
    fn bounded_evicting_expired_then_oldest() {
        let cache = VerifiedCache::new(HOUR, 3).unwrap();
        let t0 = Instant::now();
        for (i, user) in ["a", "b", "c"].iter().enumerate() {
            cache.insert(user, "s", b"p", t0 + Duration::from_secs(i as u64));
        }
        cache.insert("d", "s", b"p", t0 + Duration::from_secs(10));
        assert_eq!(cache.len(), 3);
        assert!(!cache.contains("a", "s", b"p", t0 + Duration::from_secs(10)));
        assert!(cache.contains("b", "s", b"p", t0 + Duration::from_secs(10)));
        // Once b, c and d expire, a new entry clears them out.
        let later = t0 + HOUR + Duration::from_secs(20);
        cache.insert("e", "s", b"p", later);
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn verify_password_skips_the_hash_only_after_a_success() {
        // SHA512-CRYPT with the minimum rounds: a real scheme.
        let stored = crate::auth::scheme::hash(Scheme::Sha512Crypt, b"pw").unwrap();
        let cache = VerifiedCache::new(HOUR, 10).unwrap();
        assert!(!verify_password(Some(&cache), "u", &stored, b"wrong"));
        assert!(cache.is_empty(), "failures are not cached");
        assert!(verify_password(Some(&cache), "u", &stored, b"pw"));
        assert_eq!(cache.len(), 1);
        assert!(verify_password(Some(&cache), "u", &stored, b"pw"));
        assert!(!verify_password(Some(&cache), "u", &stored, b"wrong"));
        assert!(verify_password(None, "u", &stored, b"pw"));
        // A hit is answered by the cache alone: a success remembered for
        // a stored secret that does not match shows it.
        let other = crate::auth::scheme::hash(Scheme::Sha512Crypt, b"other").unwrap();
        assert!(!verify_password(Some(&cache), "u", &other, b"pw"));
        cache.insert("u", &other, b"pw", Instant::now());
        assert!(verify_password(Some(&cache), "u", &other, b"pw"));
    }
}
