//! The passwd-file password database: Dovecot's `user:{SCHEME}hash:…` lines,
//! read by the server and rewritten by `mailbag user add|passwd|del|list`.
//!
//! Owns: parsing the file (only the first two fields count; later ones,
//! comments and blank lines are kept on rewrite), noticing edits while the
//! server runs, checking credentials off the async workers, and atomic,
//! locked rewrites.
//!
//! Must not: log a line of the file or a password (lines hold hashes, and
//! errors name a line by number only), let a refused user name reach the
//! file system, or leave a half-written file behind. The user names it
//! accepts are safe to use as maildrop names.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Instant, SystemTime};

use super::cache::VerifiedCache;
use super::name::fold;
use super::scheme::{self, Scheme, SchemeError, ScramSource};
use super::secret::ServerSecret;
use super::timing::{self, CheckTimes};

pub use super::credential::valid_user_name;
use super::credential::{credential_matches, presented_bytes, stored_scram_keys};
use super::{AuthError, Credential, PassDb, ScramKeys};

/// Longest user name accepted (see [`super::name`]).
pub const MAX_USER_NAME_OCTETS: usize = super::name::MAX_OCTETS;

/// Mode of a passwd-file this module creates: it holds password hashes.
const NEW_FILE_MODE: u32 = 0o600;

/// Why the passwd-file could not be read, parsed or changed.
#[derive(Debug, thiserror::Error)]
pub enum PasswdError {
    /// A file system operation failed.
    #[error("cannot {op} {}", path.display())]
    Io {
        /// What we tried to do ("read", "lock", …).
        op: &'static str,
        /// The file it was done to.
        path: PathBuf,
        /// The operating system's reason.
        #[source]
        source: io::Error,
    },
    /// A line of the file is not a valid entry. The line itself is never
    /// quoted: it may hold a password hash.
    #[error("{}:{line}: {reason}", path.display())]
    Parse {
        /// The passwd-file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The name is not acceptable as a user name (see [`super::name`]).
    #[error("invalid user name {user:?}: {}", super::name::RULE)]
    InvalidUserName {
        /// The refused name.
        user: String,
    },
    /// `add_user` for a name that is already in the file.
    #[error(
        "{}: user {user:?} already exists (names are compared without regard to letter case)",
        path.display()
    )]
    UserExists {
        /// The passwd-file.
        path: PathBuf,
        /// The user.
        user: String,
    },
    /// The user is not in the file.
    #[error("{}: no user {user:?}", path.display())]
    NoSuchUser {
        /// The passwd-file.
        path: PathBuf,
        /// The user.
        user: String,
    },
    /// A re-hash found the user's secret changed since the login checked
    /// it: the newer secret is kept.
    #[error("{}: the secret of user {user:?} changed meanwhile; left as it is", path.display())]
    SecretChanged {
        /// The passwd-file.
        path: PathBuf,
        /// The user.
        user: String,
    },
    /// The new password could not be hashed.
    #[error("cannot hash the password of user {user:?}")]
    Scheme {
        /// The user.
        user: String,
        /// Why.
        #[source]
        source: SchemeError,
    },
}

/// A passwd-file as the server uses it: cheap to clone (all clones share
/// one table), `Send + Sync`, and re-read when the file changes.
#[derive(Clone)]
pub struct PasswdFile {
    shared: Arc<Shared>,
}

struct Shared {
    path: PathBuf,
    /// `auth.case_insensitive_names`: names are looked up case-folded.
    case_insensitive: bool,
    current: RwLock<Loaded>,
    /// `auth.cache_secs`: recent successful password checks.
    cache: Option<VerifiedCache>,
    /// What made-up SCRAM values are derived from.
    secret: ServerSecret,
    /// How long failures wait (see [`timing`]).
    times: CheckTimes,
    /// How long SCRAM first steps wait.
    scram_times: CheckTimes,
    /// `auth.rehash_to`: the scheme legacy secrets are re-hashed to after
    /// a successful password login (off unless set).
    rehash_to: Option<Scheme>,
}

#[derive(Clone)]
struct Loaded {
    stamp: Stamp,
    table: Arc<Table>,
}

/// What identifies one version of the file. mtime alone can miss an edit
/// within its granularity; length, inode (a rename) and ctime catch most.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Stamp {
    mtime: Option<SystemTime>,
    len: u64,
    inode: u64,
    ctime: (i64, i64),
}

impl Stamp {
    fn of(meta: &fs::Metadata) -> Self {
        Stamp {
            mtime: meta.modified().ok(),
            len: meta.len(),
            inode: meta.ino(),
            ctime: (meta.ctime(), meta.ctime_nsec()),
        }
    }
}

struct Table {
    /// Lookup key (the user name, case-folded when names match
    /// case-insensitively) → the name as stored and its `{SCHEME}data`
    /// secret.
    users: HashMap<String, (String, String)>,
    /// Whether keys are case-folded.
    case_insensitive: bool,
    apop_possible: bool,
    /// A stored secret in the file's most common scheme, with its real
    /// parameters: checking a password for an unknown user against it
    /// costs what checking a typical known user costs, without a hash of
    /// our own that could be much slower (ARGON2ID for a PLAIN file) or
    /// much faster than the users' real ones.
    decoy: Option<String>,
    /// Whether any user has a secret CRAM-MD5 can use.
    cram_possible: bool,
    /// One stored secret of each cost class, timed before the first
    /// failure is answered.
    classes: Vec<(String, String)>,
    /// What SCRAM shows for a name without usable keys: how users with
    /// usable keys answer, each way with how many users answer it.
    scram_decoys: Vec<(ScramDecoy, u64)>,
    /// Whether any user's SCRAM keys are derived from a plaintext secret.
    scram_derives: bool,
}

/// How a typical user's SCRAM first step is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct ScramDecoy {
    iterations: u32,
    /// Whether their keys are derived (PBKDF2) from a plaintext secret
    /// rather than read as stored.
    derived: bool,
}

struct Entry<'a> {
    user: &'a str,
    secret: &'a str,
}

impl PasswdFile {
    /// Reads the passwd-file at `path` now; a missing or malformed file is
    /// an error naming the path (and line).
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, PasswdError> {
        PasswdFile::open_with_cache(path, None)
    }

    /// [`PasswdFile::open`], with the verified-credential cache
    /// (`auth.cache_secs`; `None` keeps it off).
    pub fn open_with_cache(
        path: impl Into<PathBuf>,
        cache: Option<VerifiedCache>,
    ) -> Result<Self, PasswdError> {
        PasswdFile::open_with(path, cache, ServerSecret::random())
    }

    /// [`PasswdFile::open_with_cache`], with the server secret
    /// (`auth.secret_file`) that made-up SCRAM values come from, so that
    /// they are the same after a restart and on every node.
    pub fn open_with(
        path: impl Into<PathBuf>,
        cache: Option<VerifiedCache>,
        secret: ServerSecret,
    ) -> Result<Self, PasswdError> {
        PasswdFile::open_with_names(path, cache, secret, true)
    }

    /// [`PasswdFile::open_with`], with names matched whatever their
    /// letter case or not (`auth.case_insensitive_names`). Matched
    /// case-insensitively, a file with two names that differ only in
    /// case (`Ann` and `ann`) is refused, naming the second line: which
    /// of the two a login meant could not be told.
    pub fn open_with_names(
        path: impl Into<PathBuf>,
        cache: Option<VerifiedCache>,
        secret: ServerSecret,
        case_insensitive: bool,
    ) -> Result<Self, PasswdError> {
        let path = path.into();
        let (stamp, table) = load(&path, case_insensitive)?;
        Ok(PasswdFile {
            shared: Arc::new(Shared {
                path,
                case_insensitive,
                current: RwLock::new(Loaded {
                    stamp,
                    table: Arc::new(table),
                }),
                cache,
                secret,
                times: CheckTimes::default(),
                scram_times: CheckTimes::default(),
                rehash_to: None,
            }),
        })
    }

    /// With legacy secrets re-hashed to `scheme` after a successful
    /// password login (`auth.rehash_to`; `None` keeps it off). The file
    /// is rewritten as `mailbag user passwd` does, under its lock, and
    /// only if the user's line still holds the secret that was checked.
    /// The login never waits for it, nor fails because of it.
    ///
    /// Call before the passdb is cloned: clones share one setting.
    pub fn with_rehash(mut self, scheme: Option<Scheme>) -> Self {
        if let Some(shared) = Arc::get_mut(&mut self.shared) {
            shared.rehash_to = scheme;
        } else {
            tracing::warn!("auth.rehash_to set after the passwd-file was shared; ignored");
        }
        self
    }

    /// The path this database reads.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    fn loaded(&self) -> Loaded {
        // A poisoned lock still holds a whole `Loaded`: it is only ever
        // replaced, never modified in place.
        self.shared
            .current
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// The current table, re-read first if the file changed. A file that
    /// cannot be read or parsed keeps the previous table, so a bad edit
    /// does not lock everyone out.
    fn table(&self) -> Arc<Table> {
        let loaded = self.loaded();
        let path = &self.shared.path;
        let stamp = match fs::metadata(path) {
            Ok(meta) => Stamp::of(&meta),
            Err(error) => {
                tracing::warn!(path = %path.display(), %error,
                    "cannot stat passwd-file; keeping the users read before");
                return loaded.table;
            }
        };
        if stamp == loaded.stamp {
            return loaded.table;
        }
        let next = match load(path, self.shared.case_insensitive) {
            Ok((stamp, table)) => Loaded {
                stamp,
                table: Arc::new(table),
            },
            Err(error) => {
                // Remember the stamp so that one bad edit warns once, not
                // on every login.
                tracing::warn!(%error, "passwd-file changed but cannot be used; keeping the users read before");
                Loaded {
                    stamp,
                    table: loaded.table,
                }
            }
        };
        let table = Arc::clone(&next.table);
        *self
            .shared
            .current
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = next;
        table
    }

    /// The canonical name on success, with the secret checked when it is
    /// due a re-hash.
    fn verify_blocking(
        &self,
        user: &str,
        credential: &Credential,
    ) -> Result<(String, Option<String>), AuthError> {
        let table = self.table();
        // An unknown user costs one check against the decoy, as a typical
        // known user costs one check against their own secret. The driver
        // also answers every failure at a fixed delay after the attempt,
        // which hides what differences remain (a user with a rarer scheme).
        let Some((name, stored)) = table.find(user) else {
            match &table.decoy {
                Some(decoy) => {
                    std::hint::black_box(scheme::verify(decoy, presented_bytes(credential)));
                }
                None => scheme::dummy_verify(presented_bytes(credential)),
            }
            return Err(AuthError::Invalid);
        };
        let accepted = credential_matches(
            name,
            stored,
            table.decoy.as_deref(),
            credential,
            self.shared.cache.as_ref(),
        );
        if !accepted {
            return Err(AuthError::Invalid);
        }
        let due = (self.shared.rehash_to.is_some()
            && matches!(credential, Credential::Password(_))
            && scheme::rehash_due(stored))
        .then(|| stored.clone());
        Ok((name.clone(), due))
    }

    /// Re-hashes `name`'s `old` secret with the password that just
    /// matched it, in the background: logged, never the login's concern.
    fn spawn_rehash(&self, name: String, old: String, credential: &Credential) {
        let (Some(to), Credential::Password(password)) = (self.shared.rehash_to, credential) else {
            return;
        };
        let password = password.clone();
        let path = self.shared.path.clone();
        tokio::spawn(async move {
            let from = scheme::scheme_of(&old).map_or("?", Scheme::name);
            let user = name.clone();
            let done = super::hashing(move || {
                let new = hash_for(&name, password.expose().as_bytes(), to)?;
                replace_secret(&path, &name, &old, &new)
            })
            .await;
            match done {
                Ok(Ok(())) => {
                    tracing::info!(%user, from, to = %to, "re-hashed the user's password")
                }
                Ok(Err(error @ PasswdError::SecretChanged { .. })) => {
                    tracing::info!(%user, %error, "no re-hash");
                }
                Ok(Err(error)) => {
                    tracing::warn!(%user, from, to = %to, %error, "cannot re-hash the user's password");
                }
                Err(error) => tracing::warn!(%user, %error, "re-hash task failed"),
            }
        });
    }
}

impl PassDb for PasswdFile {
    async fn verify(&self, user: &str, credential: &Credential) -> Result<String, AuthError> {
        let this = self.clone();
        let user = user.to_owned();
        let presented = credential.clone();
        let (verified, began) = super::hashing(move || {
            let began = Instant::now();
            (this.verify_blocking(&user, &presented), began)
        })
        .await
        .map_err(|error| AuthError::Temporary(format!("password check failed: {error}")))?;
        let times = &self.shared.times;
        times.record(began.elapsed());
        match verified {
            Ok((name, due)) => {
                if let Some(old) = due {
                    self.spawn_rehash(name.clone(), old, credential);
                }
                Ok(name)
            }
            Err(error) => {
                // A failure takes as long as the slowest check, whoever it
                // was for (see `timing`).
                times.prime(&self.table().classes).await;
                times.pad(began).await;
                Err(error)
            }
        }
    }

    async fn user_exists(&self, user: &str) -> Result<Option<String>, AuthError> {
        // A stat and a hash lookup, no password hashing: delivery answers
        // RCPT at once, and the MTA already knows which users exist.
        let table = self.table();
        Ok(table.find(user).map(|(name, _)| name.clone()))
    }

    async fn scram_keys(&self, user: &str) -> Result<(String, ScramKeys), AuthError> {
        let this = self.clone();
        let user = user.to_owned();
        let table = self.table();
        let derives = table.scram_derives;
        let (found, began) = super::hashing(move || {
            let began = Instant::now();
            let secret = &this.shared.secret;
            // The salt is the stored name's, so every spelling of a
            // name that matches it gets the same keys.
            let found = table.find(&user).and_then(|(name, stored)| {
                Some((name.clone(), stored_scram_keys(secret, name, stored)?))
            });
            // An unknown user (or one whose hash SCRAM cannot use) gets
            // keys made up from the server secret, with a salt and
            // iterations drawn, by name, as the users' own are spread and the work a typical
            // user's lookup does, so the exchange looks the same up to
            // the failure, here, after a restart and on every node.
            Ok(found.unwrap_or_else(|| {
                // Drawn from the folded name: the spellings of an unknown
                // name agree, as a known user's do.
                let user = fold(&user, table.case_insensitive).into_owned();
                let decoy = pick_decoy(&table.scram_decoys, secret, &user);
                let keys = secret.scram_lookalike(&user, decoy.iterations);
                if decoy.derived {
                    std::hint::black_box(ScramKeys::derive(
                        b"mailbag decoy",
                        &keys.salt,
                        decoy.iterations,
                    ));
                }
                (user, keys)
            }))
            .map(|found| (found, began))
        })
        .await
        .map_err(|error| AuthError::Temporary(format!("SCRAM lookup failed: {error}")))??;
        // Every name is answered when the slowest kind of lookup would
        // be: a plaintext user's derivation costs more than stored keys
        // or made-up ones.
        let times = &self.shared.scram_times;
        times.record(began.elapsed());
        if derives {
            times.time_scram_derivation().await;
        }
        times.pad(began).await;
        Ok(found)
    }

    fn cram_md5_possible(&self) -> bool {
        self.table().cram_possible
    }

    fn apop_possible(&self) -> bool {
        // A stat (and, after an edit, a read) of a small file: cheap enough
        // for the greeting, and a new plaintext user is noticed at once.
        self.table().apop_possible
    }
}

fn io_error<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> PasswdError + 'a {
    move |source| PasswdError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// Stats, then reads: if the file changes in between, the stamp is the
/// older one and the next lookup reads again.
fn load(path: &Path, case_insensitive: bool) -> Result<(Stamp, Table), PasswdError> {
    let meta = fs::metadata(path).map_err(io_error("read", path))?;
    let text = fs::read(path).map_err(io_error("read", path))?;
    let entries = parse(path, &text, case_insensitive)?;
    let apop_possible = entries
        .iter()
        .any(|entry| scheme::plaintext_equivalent(entry.secret).is_some());
    let decoy = decoy(&entries);
    let cram_possible = entries
        .iter()
        .any(|entry| scheme::cram_md5_digest(entry.secret, b"").is_some());
    let classes = timing::classes(entries.iter().map(|entry| entry.secret));
    let scram_decoys = scram_decoys(&entries);
    let scram_derives = entries
        .iter()
        .any(|entry| scheme::scram_source(entry.secret) == ScramSource::Derived);
    let users = entries
        .into_iter()
        .map(|entry| {
            let key = fold(entry.user, case_insensitive).into_owned();
            (key, (entry.user.to_owned(), entry.secret.to_owned()))
        })
        .collect();
    Ok((
        Stamp::of(&meta),
        Table {
            users,
            case_insensitive,
            apop_possible,
            decoy,
            cram_possible,
            classes,
            scram_decoys,
            scram_derives,
        },
    ))
}

/// The first secret of the most common scheme among `entries`.
fn decoy(entries: &[Entry<'_>]) -> Option<String> {
    let mut counts: HashMap<Option<Scheme>, (usize, &str)> = HashMap::new();
    for entry in entries {
        let slot = counts
            .entry(scheme::scheme_of(entry.secret))
            .or_insert((0, entry.secret));
        slot.0 += 1;
    }
    counts
        .into_values()
        .max_by_key(|(count, _)| *count)
        .map(|(_, secret)| secret.to_owned())
}

/// How the users whose secrets SCRAM can use answer its first step, and
/// how many answer each way, in a fixed order; never empty.
fn scram_decoys(entries: &[Entry<'_>]) -> Vec<(ScramDecoy, u64)> {
    let mut counts: HashMap<ScramDecoy, u64> = HashMap::new();
    for entry in entries {
        let decoy = match scheme::scram_source(entry.secret) {
            ScramSource::Stored(iterations) => ScramDecoy {
                iterations,
                derived: false,
            },
            ScramSource::Derived => ScramDecoy {
                iterations: scheme::SCRAM_ITERATIONS,
                derived: true,
            },
            ScramSource::Unusable => continue,
        };
        *counts.entry(decoy).or_default() += 1;
    }
    let mut decoys: Vec<(ScramDecoy, u64)> = counts.into_iter().collect();
    decoys.sort_by_key(|(decoy, _)| (decoy.iterations, decoy.derived));
    if decoys.is_empty() {
        decoys.push((
            ScramDecoy {
                iterations: scheme::SCRAM_ITERATIONS,
                derived: false,
            },
            1,
        ));
    }
    decoys
}

/// The way a name without usable SCRAM keys answers: one of `decoys`,
/// drawn by the server secret from the name, each as often as users
/// answer it. One fixed iteration count for every made-up name would
/// single out each user whose stored count differs from it; drawn like
/// this, the count a name shows says nothing about whether it exists.
fn pick_decoy(decoys: &[(ScramDecoy, u64)], secret: &ServerSecret, name: &str) -> ScramDecoy {
    secret
        .choose_weighted("scram decoy", name, decoys)
        .unwrap_or(ScramDecoy {
            iterations: scheme::SCRAM_ITERATIONS,
            derived: false,
        })
}

/// The user an entry line names, or `None` for a blank or comment line.
fn entry_user(line: &str) -> Option<&str> {
    let line = line.strip_suffix('\r').unwrap_or(line);
    let trimmed = line.trim_start();
    if trimmed.is_empty() || trimmed.starts_with('#') {
        return None;
    }
    line.split(':').next()
}

impl Table {
    /// The stored name and secret of the user `name` names.
    fn find(&self, name: &str) -> Option<(&String, &String)> {
        self.users
            .get(fold(name, self.case_insensitive).as_ref())
            .map(|(name, secret)| (name, secret))
    }
}

/// The entries of a passwd-file. Two lines for one user are refused, and
/// so are two names that differ only in letter case when names match
/// case-insensitively.
fn parse<'a>(
    path: &Path,
    text: &'a [u8],
    case_insensitive: bool,
) -> Result<Vec<Entry<'a>>, PasswdError> {
    let mut entries: Vec<Entry<'a>> = Vec::new();
    let mut seen = HashMap::new();
    for (index, raw) in text.split(|&b| b == b'\n').enumerate() {
        let bad = |reason| PasswdError::Parse {
            path: path.to_owned(),
            line: index + 1,
            reason,
        };
        let line = std::str::from_utf8(raw).map_err(|_| bad("not UTF-8"))?;
        let line = line.strip_suffix('\r').unwrap_or(line);
        let Some(user) = entry_user(line) else {
            continue;
        };
        if !valid_user_name(user) {
            return Err(bad("invalid user name"));
        }
        if let Some(&earlier) = seen.get(fold(user, case_insensitive).as_ref()) {
            let earlier: &Entry<'_> = &entries[earlier];
            if earlier.user == user {
                return Err(bad("user listed twice"));
            }
            return Err(bad(
                "user listed twice: the name differs from an earlier one only in letter case, \
                 and auth.case_insensitive_names makes them one user",
            ));
        }
        // A missing password field is a user who cannot log in: verify()
        // refuses an empty stored value.
        let secret = line.split(':').nth(1).unwrap_or("");
        seen.insert(fold(user, case_insensitive), entries.len());
        entries.push(Entry { user, secret });
    }
    Ok(entries)
}

fn check_user_name(user: &str) -> Result<(), PasswdError> {
    if valid_user_name(user) {
        Ok(())
    } else {
        Err(PasswdError::InvalidUserName {
            user: user.to_owned(),
        })
    }
}

fn hash_for(user: &str, password: &[u8], scheme: Scheme) -> Result<String, PasswdError> {
    scheme::hash(scheme, password).map_err(|source| PasswdError::Scheme {
        user: user.to_owned(),
        source,
    })
}

/// Adds `user` with `password` hashed by `scheme`. Fails if the user
/// exists; creates the file (mode 0600) if it is missing.
pub fn add_user(
    path: &Path,
    user: &str,
    password: &[u8],
    scheme: Scheme,
) -> Result<(), PasswdError> {
    check_user_name(user)?;
    let stored = hash_for(user, password, scheme)?;
    rewrite(path, true, |lines| {
        // A name that differs from an existing one only in letter case
        // would be that user wherever names match case-insensitively
        // (the default), and the file would no longer load.
        if lines
            .iter()
            .any(|line| entry_user(line).is_some_and(|u| u.eq_ignore_ascii_case(user)))
        {
            return Err(PasswdError::UserExists {
                path: path.to_owned(),
                user: user.to_owned(),
            });
        }
        lines.push(format!("{user}:{stored}"));
        Ok(())
    })
}

/// Replaces the password of an existing `user`, keeping the line's other
/// fields.
pub fn set_password(
    path: &Path,
    user: &str,
    password: &[u8],
    scheme: Scheme,
) -> Result<(), PasswdError> {
    check_user_name(user)?;
    let stored = hash_for(user, password, scheme)?;
    rewrite(path, false, |lines| {
        let line = lines
            .iter_mut()
            .find(|line| entry_user(line) == Some(user))
            .ok_or_else(|| PasswdError::NoSuchUser {
                path: path.to_owned(),
                user: user.to_owned(),
            })?;
        let (body, cr) = match line.strip_suffix('\r') {
            Some(body) => (body, "\r"),
            None => (line.as_str(), ""),
        };
        *line = match body.splitn(3, ':').nth(2) {
            Some(rest) => format!("{user}:{stored}:{rest}{cr}"),
            None => format!("{user}:{stored}{cr}"),
        };
        Ok(())
    })
}

/// Replaces `user`'s secret `old` with `new`, keeping the line's other
/// fields; [`PasswdError::SecretChanged`] (and no write) if the line no
/// longer holds `old`.
pub fn replace_secret(path: &Path, user: &str, old: &str, new: &str) -> Result<(), PasswdError> {
    rewrite(path, false, |lines| {
        let changed = || PasswdError::SecretChanged {
            path: path.to_owned(),
            user: user.to_owned(),
        };
        let line = lines
            .iter_mut()
            .find(|line| entry_user(line) == Some(user))
            .ok_or_else(changed)?;
        let (body, cr) = match line.strip_suffix('\r') {
            Some(body) => (body, "\r"),
            None => (line.as_str(), ""),
        };
        let mut fields = body.splitn(3, ':');
        let (_, secret, rest) = (fields.next(), fields.next(), fields.next());
        if secret != Some(old) {
            return Err(changed());
        }
        *line = match rest {
            Some(rest) => format!("{user}:{new}:{rest}{cr}"),
            None => format!("{user}:{new}{cr}"),
        };
        Ok(())
    })
}

/// Removes `user`'s line.
pub fn delete_user(path: &Path, user: &str) -> Result<(), PasswdError> {
    check_user_name(user)?;
    rewrite(path, false, |lines| {
        let before = lines.len();
        lines.retain(|line| entry_user(line) != Some(user));
        if lines.len() == before {
            return Err(PasswdError::NoSuchUser {
                path: path.to_owned(),
                user: user.to_owned(),
            });
        }
        Ok(())
    })
}

/// The user names in the file, in file order.
pub fn list_users(path: &Path) -> Result<Vec<String>, PasswdError> {
    let text = fs::read(path).map_err(io_error("read", path))?;
    Ok(parse(path, &text, false)?
        .into_iter()
        .map(|entry| entry.user.to_owned())
        .collect())
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Edits the file's lines under an exclusive lock on `<path>.lock`, then
/// replaces the file atomically: write `<path>.tmp.<pid>`, fsync, rename
/// over, fsync the directory. Readers see the old file or the new one.
fn rewrite(
    path: &Path,
    create: bool,
    edit: impl FnOnce(&mut Vec<String>) -> Result<(), PasswdError>,
) -> Result<(), PasswdError> {
    let lock_path = with_suffix(path, ".lock");
    let lock = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(NEW_FILE_MODE)
        .open(&lock_path)
        .map_err(io_error("open the lock file", &lock_path))?;
    lock.lock().map_err(io_error("lock", &lock_path))?;

    let (text, meta) = match fs::read(path) {
        Ok(text) => {
            let meta = fs::metadata(path).map_err(io_error("read", path))?;
            (text, Some(meta))
        }
        Err(error) if create && error.kind() == io::ErrorKind::NotFound => (Vec::new(), None),
        Err(error) => return Err(io_error("read", path)(error)),
    };
    // Refuse to rewrite what the server could not read: the edit would
    // silently carry the damage along. Two names that differ only in
    // case are let through, so that deleting one repairs the file.
    parse(path, &text, false)?;
    let text = String::from_utf8(text).map_err(|_| PasswdError::Parse {
        path: path.to_owned(),
        line: 1,
        reason: "not UTF-8",
    })?;
    let mut lines: Vec<String> = text.split('\n').map(str::to_owned).collect();
    if lines.last().is_some_and(String::is_empty) {
        lines.pop();
    }
    edit(&mut lines)?;
    let mut out = lines.join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    let result = replace(path, out.as_bytes(), meta.as_ref());
    drop(lock);
    result
}

fn replace(path: &Path, content: &[u8], old: Option<&fs::Metadata>) -> Result<(), PasswdError> {
    let tmp = with_suffix(path, &format!(".tmp.{}", std::process::id()));
    let written = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(NEW_FILE_MODE)
            .open(&tmp)
            .map_err(io_error("create", &tmp))?;
        if let Some(old) = old {
            // Root running `mailbag user add` must not leave a file the
            // server's own user can no longer read.
            let created = file.metadata().map_err(io_error("create", &tmp))?;
            if (old.uid(), old.gid()) != (created.uid(), created.gid()) {
                std::os::unix::fs::fchown(&file, Some(old.uid()), Some(old.gid()))
                    .map_err(io_error("preserve the owner of", path))?;
            }
            file.set_permissions(Permissions::from_mode(old.permissions().mode()))
                .map_err(io_error("set the permissions of", &tmp))?;
        } else {
            // The umask may have narrowed the create mode, never widened it;
            // make it exact.
            file.set_permissions(Permissions::from_mode(NEW_FILE_MODE))
                .map_err(io_error("set the permissions of", &tmp))?;
        }
        file.write_all(content).map_err(io_error("write", &tmp))?;
        file.sync_all().map_err(io_error("sync", &tmp))?;
        fs::rename(&tmp, path).map_err(io_error("replace", path))
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
        return written;
    }
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    File::open(dir)
        .and_then(|dir| dir.sync_all())
        .map_err(io_error("sync the directory of", path))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use mailbag_proto::secret::Secret;

    use super::*;

    // `openssl passwd -6 -salt Zq9x 'correct horse'`.
    const BOB_HASH: &str = "{SHA512-CRYPT}$6$Zq9x$jAde8C2WfmLbo0GQzU7HlU2FgJkEe311Yi1d4hs5eEoRNils8NF2c9peCbgavx9NHxGWwnCa6X8U100dJ6pzn.";

    fn password(text: &str) -> Credential {
        Credential::Password(Secret::new(text.to_owned()))
    }

    #[test]
    fn decoy_is_a_secret_of_the_most_common_scheme() {
        let text = format!("a:{{PLAIN}}x\nb:{BOB_HASH}\nc:{{PLAIN}}y\n");
        let entries = parse(Path::new("p"), text.as_bytes(), true).unwrap();
        assert_eq!(decoy(&entries).as_deref(), Some("{PLAIN}x"));
        let text = format!("a:{{PLAIN}}x\nb:{BOB_HASH}\nc:{BOB_HASH}\n");
        let entries = parse(Path::new("p"), text.as_bytes(), true).unwrap();
        assert_eq!(decoy(&entries).as_deref(), Some(BOB_HASH));
        assert_eq!(decoy(&[]), None);
    }

    #[tokio::test]
    async fn a_failure_waits_for_the_slowest_kind_of_check_in_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("passwd");
        let slow = scheme::hash(Scheme::Argon2id, b"pw").unwrap();
        fs::write(
            &path,
            format!("a:{{PLAIN}}x\nb:{{PLAIN}}y\nc:{{PLAIN}}z\nd:{slow}\n"),
        )
        .unwrap();
        let db = PasswdFile::open(&path).unwrap();
        // The decoy for an unknown user is a cheap {PLAIN} check...
        assert!(matches!(
            db.verify("nobody", &password("guess")).await,
            Err(AuthError::Invalid)
        ));
        // ...but before its failure was answered, the Argon2id kind was
        // timed too, and failures wait for the slowest.
        let table = db.table();
        assert_eq!(table.classes.len(), 2);
        let times = &db.shared.times;
        assert!(table.classes.iter().all(|(class, _)| times.timed(class)));
        assert!(times.slowest() > Duration::ZERO);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_failure_is_answered_before_every_kind_of_check_is_timed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("passwd");
        let slow = scheme::hash(Scheme::Argon2id, b"pw").unwrap();
        fs::write(&path, format!("a:{{PLAIN}}x\nb:{{PLAIN}}y\nd:{slow}\n")).unwrap();
        let db = PasswdFile::open(&path).unwrap();
        // Many failures at once, the first after a start: each is answered
        // only once the Argon2id kind has been timed, not with the padding
        // of whichever check happened to finish first.
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let db = db.clone();
                tokio::spawn(async move {
                    let name = if i % 2 == 0 { "nobody" } else { "a" };
                    assert!(db.verify(name, &password("guess")).await.is_err());
                    let table = db.table();
                    table
                        .classes
                        .iter()
                        .all(|(class, _)| db.shared.times.timed(class))
                })
            })
            .collect();
        for task in tasks {
            assert!(task.await.unwrap());
        }
    }

    #[tokio::test]
    async fn scram_keys_for_unknown_names_come_from_the_secret_without_derivation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("passwd");
        let stored = scheme::hash(Scheme::ScramSha256, b"pencil").unwrap();
        fs::write(
            &path,
            format!("user:{stored}\nother:{stored}\nplain:{{PLAIN}}pw\n"),
        )
        .unwrap();
        let secret = ServerSecret::random();
        let one = PasswdFile::open_with(&path, None, secret.clone()).unwrap();
        let two = PasswdFile::open_with(&path, None, secret.clone()).unwrap();
        let (name, keys) = one.scram_keys("nobody").await.unwrap();
        assert_eq!(name, "nobody");
        assert_eq!(
            keys,
            secret.scram_lookalike("nobody", scheme::SCRAM_ITERATIONS)
        );
        assert_eq!(two.scram_keys("nobody").await.unwrap().1, keys);
        // Most users store keys: no PBKDF2 for a made-up user either.
        assert_eq!(
            one.table().scram_decoys,
            vec![
                (
                    ScramDecoy {
                        iterations: scheme::SCRAM_ITERATIONS,
                        derived: false
                    },
                    2
                ),
                (
                    ScramDecoy {
                        iterations: scheme::SCRAM_ITERATIONS,
                        derived: true
                    },
                    1
                )
            ]
        );
        let (_, plain) = one.scram_keys("plain").await.unwrap();
        assert_eq!(plain.salt, secret.scram_salt("plain").to_vec());
        // A plaintext user's keys cost a derivation: every first step is
        // answered no sooner than one would take.
        assert!(one.table().scram_derives);
        assert!(one.shared.scram_times.timed("SCRAM-SHA-256 derived"));
        assert!(one.shared.scram_times.slowest() > Duration::ZERO);
    }

    fn sample(dir: &tempfile::TempDir) -> PathBuf {
        let path = dir.path().join("passwd");
        let text = format!(
            "# mailbag users\n\
             \n\
             alice:{{PLAIN}}wonderland:1000:1000::/home/alice:/bin/sh:userdb_quota=1G\n\
             bob@example.org:{BOB_HASH}::::::\n\
             \x20 # indented comment\n\
             carol\n"
        );
        fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn parses_comments_blank_lines_and_extra_fields() {
        let dir = tempfile::tempdir().unwrap();
        let path = sample(&dir);
        assert_eq!(
            list_users(&path).unwrap(),
            ["alice", "bob@example.org", "carol"]
        );
        let db = PasswdFile::open(&path).unwrap();
        let table = db.table();
        assert_eq!(table.users["alice"].1, "{PLAIN}wonderland");
        assert_eq!(table.users["bob@example.org"].1, BOB_HASH);
        assert_eq!(table.users["carol"].1, "");
    }

    #[tokio::test]
    async fn verify_accepts_good_and_refuses_bad_and_unknown() {
        let dir = tempfile::tempdir().unwrap();
        let db = PasswdFile::open(sample(&dir)).unwrap();
        assert_eq!(
            db.verify("alice", &password("wonderland")).await.unwrap(),
            "alice"
        );
        assert_eq!(
            db.verify("bob@example.org", &password("correct horse"))
                .await
                .unwrap(),
            "bob@example.org"
        );
        // Names match whatever their case by default: the stored name
        // comes back.
        assert_eq!(
            db.verify("ALICE", &password("wonderland")).await.unwrap(),
            "alice"
        );
        assert_eq!(
            db.verify("Bob@Example.ORG", &password("correct horse"))
                .await
                .unwrap(),
            "bob@example.org"
        );
        let exact =
            PasswdFile::open_with_names(sample(&dir), None, ServerSecret::random(), false).unwrap();
        assert!(matches!(
            exact.verify("Alice", &password("wonderland")).await,
            Err(AuthError::Invalid)
        ));
        for (user, pw) in [
            ("alice", "Wonderland"),
            ("Alice", "Wonderland"),
            ("bob@example.org", "wrong"),
            ("carol", ""),
            ("nobody", "wonderland"),
            ("", ""),
        ] {
            assert!(
                matches!(
                    db.verify(user, &password(pw)).await,
                    Err(AuthError::Invalid)
                ),
                "{user}"
            );
        }
    }

    #[tokio::test]
    async fn user_exists_names_the_canonical_user_without_a_password() {
        let dir = tempfile::tempdir().unwrap();
        let path = sample(&dir);
        let db = PasswdFile::open(&path).unwrap();
        for (asked, found) in [
            ("alice", Some("alice")),
            ("bob@example.org", Some("bob@example.org")),
            // A user who cannot log in still receives mail.
            ("carol", Some("carol")),
            ("Alice", Some("alice")),
            ("BOB@example.ORG", Some("bob@example.org")),
            ("bob", None),
            ("nobody", None),
            ("", None),
        ] {
            let got = db.user_exists(asked).await.unwrap();
            assert_eq!(got.as_deref(), found, "{asked}");
        }
        let exact =
            PasswdFile::open_with_names(&path, None, ServerSecret::random(), false).unwrap();
        assert_eq!(exact.user_exists("Alice").await.unwrap(), None);
        delete_user(&path, "carol").unwrap();
        assert_eq!(db.user_exists("carol").await.unwrap(), None);
    }

    #[tokio::test]
    async fn names_differing_only_in_case_are_refused_when_they_would_be_one_user() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("passwd");
        fs::write(&path, "Ann:{PLAIN}one\nbob:{PLAIN}x\nann:{PLAIN}two\n").unwrap();
        let e = PasswdFile::open(&path)
            .err()
            .expect("Ann and ann loaded as one");
        let text = e.to_string();
        assert!(text.contains("passwd:3:"), "{text}");
        assert!(text.contains("letter case"), "{text}");
        assert!(text.contains("auth.case_insensitive_names"), "{text}");
        assert!(!text.contains("{PLAIN}"), "{text}");
        // Matched exactly, they are two users.
        let exact =
            PasswdFile::open_with_names(&path, None, ServerSecret::random(), false).unwrap();
        assert_eq!(exact.verify("ann", &password("two")).await.unwrap(), "ann");
        // The file can still be repaired with `mailbag user del`.
        assert_eq!(list_users(&path).unwrap(), ["Ann", "bob", "ann"]);
        delete_user(&path, "ann").unwrap();
        let db = PasswdFile::open(&path).unwrap();
        assert_eq!(db.verify("ann", &password("one")).await.unwrap(), "Ann");
        // `user add` refuses a case variant of a name it has.
        assert!(matches!(
            add_user(&path, "ANN", b"pw", Scheme::Plain),
            Err(PasswdError::UserExists { .. })
        ));
        // A server that sees the bad edit keeps the users it read.
        fs::write(&path, "Ann:{PLAIN}one\nANN:{PLAIN}two\n").unwrap();
        assert_eq!(db.verify("ann", &password("one")).await.unwrap(), "Ann");
    }

    #[tokio::test]
    async fn scram_values_are_one_users_whatever_the_spelling() {
        let dir = tempfile::tempdir().unwrap();
        let path = sample(&dir);
        let db = PasswdFile::open(&path).unwrap();
        let (name, upper) = db.scram_keys("ALICE").await.unwrap();
        assert_eq!(name, "alice");
        let (_, lower) = db.scram_keys("alice").await.unwrap();
        assert_eq!(
            (upper.salt, upper.stored_key),
            (lower.salt, lower.stored_key)
        );
        // An unknown name's made-up values agree across spellings too.
        let (_, a) = db.scram_keys("Zed").await.unwrap();
        let (_, b) = db.scram_keys("zed").await.unwrap();
        assert_eq!((a.salt, a.iterations), (b.salt, b.iterations));
    }

    #[tokio::test]
    async fn apop_works_for_plaintext_users_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("passwd");
        fs::write(&path, format!("mrose:{{PLAIN}}tanstaaf\nbob:{BOB_HASH}\n")).unwrap();
        let db = PasswdFile::open(&path).unwrap();
        assert!(db.apop_possible());
        // RFC 1939 §7.
        let apop = |user_digest: &str| Credential::Apop {
            timestamp: "<1896.697170952@dbc.mtview.ca.us>".to_owned(),
            digest: Secret::new(user_digest.to_owned()),
        };
        let good = "c4c9334bac560ecc979e58001b3e22fb";
        assert_eq!(db.verify("mrose", &apop(good)).await.unwrap(), "mrose");
        assert_eq!(
            db.verify("mrose", &apop(&good.to_uppercase()))
                .await
                .unwrap(),
            "mrose"
        );
        for (user, digest) in [
            ("mrose", "c4c9334bac560ecc979e58001b3e22fc"),
            ("mrose", ""),
            ("bob", good),
            ("nobody", good),
        ] {
            assert!(matches!(
                db.verify(user, &apop(digest)).await,
                Err(AuthError::Invalid)
            ));
        }
        delete_user(&path, "mrose").unwrap();
        assert!(!db.apop_possible());
    }

    #[tokio::test]
    async fn sees_edits_without_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = sample(&dir);
        let db = PasswdFile::open(&path).unwrap();
        assert!(db.verify("alice", &password("wonderland")).await.is_ok());

        // A rewrite by the CLI renames a new file over the old one.
        set_password(&path, "alice", b"looking-glass", Scheme::Plain).unwrap();
        assert!(db.verify("alice", &password("wonderland")).await.is_err());
        assert!(db.verify("alice", &password("looking-glass")).await.is_ok());

        // An editor writing in place, within the same mtime tick: the length
        // differs.
        fs::write(&path, "dave:{PLAIN}x\n").unwrap();
        assert!(db.verify("dave", &password("x")).await.is_ok());
        assert!(db
            .verify("alice", &password("looking-glass"))
            .await
            .is_err());

        // A broken edit keeps the previous users.
        fs::write(&path, "dave:{PLAIN}y\n:{PLAIN}z\n").unwrap();
        assert!(db.verify("dave", &password("x")).await.is_ok());
        assert!(db.verify("dave", &password("y")).await.is_err());
    }

    #[test]
    fn errors_name_the_line_but_never_quote_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("passwd");
        fs::write(&path, format!("ok:{{PLAIN}}a\nbad user:{BOB_HASH}\n")).unwrap();
        let error = PasswdFile::open(&path).err().unwrap();
        let text = error.to_string();
        assert!(
            matches!(error, PasswdError::Parse { line: 2, .. }),
            "{text}"
        );
        assert!(text.contains(&path.display().to_string()));
        assert!(
            !text.contains("Zq9x") && !text.contains("bad user"),
            "{text}"
        );

        fs::write(&path, "a:{PLAIN}x\na:{PLAIN}y\n").unwrap();
        assert!(matches!(
            PasswdFile::open(&path),
            Err(PasswdError::Parse { line: 2, .. })
        ));
        // The CLI refuses to carry damage into a rewrite.
        assert!(matches!(
            add_user(&path, "b", b"pw", Scheme::Plain),
            Err(PasswdError::Parse { line: 2, .. })
        ));
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "a:{PLAIN}x\na:{PLAIN}y\n"
        );
    }

    #[test]
    fn missing_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent");
        let error = PasswdFile::open(&path).err().unwrap();
        assert!(matches!(error, PasswdError::Io { .. }));
        assert!(error.to_string().contains(&path.display().to_string()));
        assert!(matches!(list_users(&path), Err(PasswdError::Io { .. })));
    }

    #[test]
    fn add_passwd_del_list_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        add_user(&path, "erin", b"pw1", Scheme::Sha512Crypt).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        add_user(&path, "frank@example.org", b"pw2", Scheme::Plain).unwrap();
        assert!(matches!(
            add_user(&path, "erin", b"again", Scheme::Plain),
            Err(PasswdError::UserExists { .. })
        ));
        assert_eq!(list_users(&path).unwrap(), ["erin", "frank@example.org"]);

        set_password(&path, "erin", b"pw3", Scheme::Ssha512).unwrap();
        let db = PasswdFile::open(&path).unwrap();
        assert!(scheme::verify(&db.table().users["erin"].1, b"pw3"));
        assert!(matches!(
            set_password(&path, "ghost", b"x", Scheme::Plain),
            Err(PasswdError::NoSuchUser { .. })
        ));

        delete_user(&path, "erin").unwrap();
        assert!(matches!(
            delete_user(&path, "erin"),
            Err(PasswdError::NoSuchUser { .. })
        ));
        assert_eq!(list_users(&path).unwrap(), ["frank@example.org"]);
        let leftovers: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|name| name.contains(".tmp."))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn rewrites_keep_comments_extra_fields_and_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let path = sample(&dir);
        fs::set_permissions(&path, Permissions::from_mode(0o640)).unwrap();
        let before = fs::read_to_string(&path).unwrap();

        set_password(&path, "alice", b"new", Scheme::Plain).unwrap();
        add_user(&path, "zed", b"z", Scheme::Plain).unwrap();
        delete_user(&path, "zed").unwrap();

        let after = fs::read_to_string(&path).unwrap();
        assert_eq!(
            after,
            before.replace("alice:{PLAIN}wonderland:", "alice:{PLAIN}new:")
        );
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o640
        );
    }

    #[test]
    fn replace_secret_applies_only_while_the_checked_secret_is_there() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("passwd");
        fs::write(
            &path,
            "md5:{MD5}$1$x$hiN0EG1U2OVhvWQBid7j81:1000:1000::/home/md5\r\n",
        )
        .unwrap();
        let before = fs::metadata(&path).unwrap().ino();
        // The user's password changed since the login checked it.
        assert!(matches!(
            replace_secret(&path, "md5", "{MD5}$1$other", "{PLAIN}new"),
            Err(PasswdError::SecretChanged { .. })
        ));
        assert!(matches!(
            replace_secret(&path, "nobody", "x", "{PLAIN}new"),
            Err(PasswdError::SecretChanged { .. })
        ));
        // Nothing was written.
        assert_eq!(fs::metadata(&path).unwrap().ino(), before);
        replace_secret(
            &path,
            "md5",
            "{MD5}$1$x$hiN0EG1U2OVhvWQBid7j81",
            "{PLAIN}new",
        )
        .unwrap();
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            "md5:{PLAIN}new:1000:1000::/home/md5\r\n"
        );
    }

    #[test]
    fn concurrent_adds_lose_no_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("passwd");
        let threads: Vec<_> = (0..16)
            .map(|i| {
                let path = path.clone();
                std::thread::spawn(move || {
                    add_user(&path, &format!("user{i}"), b"pw", Scheme::Plain).unwrap();
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let mut users = list_users(&path).unwrap();
        users.sort();
        let mut expected: Vec<_> = (0..16).map(|i| format!("user{i}")).collect();
        expected.sort();
        assert_eq!(users, expected);
    }

    #[test]
    fn invalid_user_names_are_refused_before_the_file_system() {
        let long = "a".repeat(MAX_USER_NAME_OCTETS + 1);
        let refused = [
            "",
            long.as_str(),
            "a:b",
            "a/b",
            "../etc",
            ".",
            "..",
            ".hidden",
            "a b",
            "a\tb",
            "a\0b",
            "a\x7fb",
            "a\u{85}b",
            "a@b@c",
            "@example.org",
            "user@",
            "user@..",
            "user@.example.org",
            "#comment",
        ];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("passwd");
        for name in refused {
            assert!(!valid_user_name(name), "{name:?}");
            assert!(matches!(
                add_user(&path, name, b"pw", Scheme::Plain),
                Err(PasswdError::InvalidUserName { .. })
            ));
        }
        assert!(!path.exists());
        assert!(fs::read_dir(dir.path()).unwrap().next().is_none());
        for name in [
            "a",
            "user@example.org",
            "first.last",
            "u-1_2+tag",
            "Ünïcode",
        ] {
            assert!(valid_user_name(name), "{name:?}");
        }
        assert!(valid_user_name(&"a".repeat(MAX_USER_NAME_OCTETS)));
    }
}
