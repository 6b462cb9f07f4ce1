//! Failed credential checks answered no sooner than the slowest check.
//!
//! Checking a password costs what its stored scheme costs: microseconds
//! for `{PLAIN}`, tens of milliseconds for Argon2id. An unknown user is
//! checked against one decoy secret, so without more care the time of a
//! failure would tell an Argon2id user from an unknown one whenever the
//! failure delay (`auth.failure_delay_ms`, which may be 0) is shorter
//! than the difference. So every failure is answered no sooner than the
//! slowest check this passdb has seen, counted from when its own check
//! started (time spent queueing for the hashing bound is the same for
//! known and unknown users). Before the first failure is answered, one
//! check of every cost class in the password database (scheme and cost
//! parameters) is timed, so that the padding covers users who have not
//! logged in yet.
//!
//! SCRAM's first step is padded the same way (with its own times): keys
//! derived from a plaintext secret cost a PBKDF2 run that stored keys and
//! made-up ones do not.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::OnceCell;

use super::scheme;
use super::ScramKeys;

/// The longest padding: a check slower than this (a stored value with
/// absurd cost parameters, a machine stalled once) does not make every
/// failure wait longer.
const MAX_PADDING: Duration = Duration::from_secs(10);
/// Cost classes timed at most, across re-reads of the database.
const MAX_CLASSES: usize = 64;

/// The slowest check seen, and which cost classes have been timed.
#[derive(Debug, Default)]
pub struct CheckTimes {
    slowest_micros: AtomicU64,
    /// Set once a class is timed; sessions that need a class timed while
    /// another is timing it wait for that one.
    timed: Mutex<HashMap<String, Arc<OnceCell<()>>>>,
}

impl CheckTimes {
    /// Notes that one check took `took`.
    pub fn record(&self, took: Duration) {
        let micros = u64::try_from(took.min(MAX_PADDING).as_micros()).unwrap_or(u64::MAX);
        self.slowest_micros.fetch_max(micros, Relaxed);
    }

    /// The slowest check seen so far (at most [`MAX_PADDING`]).
    pub fn slowest(&self) -> Duration {
        Duration::from_micros(self.slowest_micros.load(Relaxed))
    }

    /// Times one check of each `(class, stored value)` not timed before.
    pub async fn prime(&self, classes: &[(String, String)]) {
        for (class, stored) in classes {
            let stored = stored.clone();
            self.time_once(class, move || {
                std::hint::black_box(scheme::verify(&stored, b"mailbag timing probe"));
            })
            .await;
        }
    }

    /// Times `work`, one check of `class`, unless that class has been
    /// timed before; if it is being timed now, waits for that.
    pub async fn time_once<F>(&self, class: &str, work: F)
    where
        F: FnOnce() + Send + 'static,
    {
        let cell = {
            let mut timed = self.timed.lock().unwrap_or_else(|p| p.into_inner());
            match timed.get(class) {
                Some(cell) => Arc::clone(cell),
                None if timed.len() >= MAX_CLASSES => return,
                None => Arc::clone(timed.entry(class.to_string()).or_default()),
            }
        };
        cell.get_or_init(|| async {
            let took = super::hashing(move || {
                let began = Instant::now();
                work();
                began.elapsed()
            })
            .await;
            if let Ok(took) = took {
                self.record(took);
            }
        })
        .await;
    }

    /// Times one SCRAM-SHA-256 key derivation from a plaintext secret
    /// (what a SCRAM lookup of a user with a plaintext-equivalent secret
    /// costs), unless timed before.
    pub async fn time_scram_derivation(&self) {
        self.time_once("SCRAM-SHA-256 derived", || {
            std::hint::black_box(ScramKeys::derive(
                b"mailbag timing probe",
                &[0u8; 16],
                scheme::SCRAM_ITERATIONS,
            ));
        })
        .await;
    }

    /// Whether `class` has been timed.
    pub fn timed(&self, class: &str) -> bool {
        self.timed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(class)
            .is_some_and(|cell| cell.initialized())
    }

    /// Waits until the slowest check, started at `began`, would have
    /// ended.
    pub async fn pad(&self, began: Instant) {
        let until = began + self.slowest();
        tokio::time::sleep_until(tokio::time::Instant::from_std(until)).await;
    }
}

/// One stored value of each cost class among `secrets`, at most
/// [`MAX_CLASSES`] of them.
pub fn classes<'a>(secrets: impl IntoIterator<Item = &'a str>) -> Vec<(String, String)> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for stored in secrets {
        if out.len() >= MAX_CLASSES {
            break;
        }
        if let Some(class) = scheme::cost_class(stored) {
            if seen.insert(class.clone()) {
                out.push((class, stored.to_string()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::scheme::Scheme;

    #[test]
    fn classes_group_by_scheme_and_cost_not_salt() {
        let a = scheme::hash(Scheme::Argon2id, b"one").unwrap();
        let b = scheme::hash(Scheme::Argon2id, b"two").unwrap();
        let c = scheme::hash(Scheme::Sha512Crypt, b"three").unwrap();
        let list = classes([a.as_str(), b.as_str(), "{PLAIN}x", "{PLAIN}y", c.as_str()]);
        let names: Vec<&str> = list.iter().map(|(class, _)| class.as_str()).collect();
        assert_eq!(names.len(), 3, "{names:?}");
        assert!(
            names[0].starts_with("ARGON2ID argon2id$v=19$m="),
            "{names:?}"
        );
        assert_eq!(names[1], "PLAIN ");
        assert!(names[2].starts_with("SHA512-CRYPT 6"), "{names:?}");
        assert_eq!(
            scheme::cost_class(
                "{BLF-CRYPT}$2y$05$abcdefghijklmnopqrstuuAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"
            ),
            Some("BLF-CRYPT 2y$05".into())
        );
        assert_eq!(
            scheme::cost_class("{SHA512-CRYPT}$6$rounds=9000$salt$hash"),
            Some("SHA512-CRYPT 6$rounds=9000".into())
        );
    }

    #[tokio::test]
    async fn padding_covers_the_slowest_class_once_timed() {
        let times = CheckTimes::default();
        assert_eq!(times.slowest(), Duration::ZERO);
        let slow = scheme::hash(Scheme::Argon2id, b"one").unwrap();
        let list = classes(["{PLAIN}x", slow.as_str()]);
        times.prime(&list).await;
        assert!(list.iter().all(|(class, _)| times.timed(class)));
        let after_priming = times.slowest();
        assert!(after_priming > Duration::ZERO);
        // Timed once: a second priming changes nothing.
        times.prime(&list).await;
        times.record(Duration::ZERO);
        assert_eq!(times.slowest(), after_priming);
        times.record(Duration::from_secs(3600));
        assert_eq!(times.slowest(), MAX_PADDING);
    }
}
