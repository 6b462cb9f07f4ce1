//! The server secret: 32 random octets in a file (`auth.secret_file`),
//! made at first start, from which every node derives the same made-up
//! values for user names that have none of their own.
//!
//! SCRAM-SHA-256 shows a salt and an iteration count before any proof.
//! For an unknown user (or one whose stored hash SCRAM cannot use) these
//! must look like a real user's, and stay the same across restarts and
//! across nodes, or repeating the first step would tell which users
//! exist. They are HMAC-SHA-256 of the name under this secret: no
//! password derivation, so an unknown name costs what a user with stored
//! SCRAM keys costs. Copy the file to every node that serves the same
//! users.
//!
//! Must not: log the secret, or accept a file anyone else may read or
//! write it with (it is created mode 0600).

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use hmac::{KeyInit, Mac};
use sha2::Sha256;

use super::ScramKeys;

/// Octets of the secret.
const SECRET_OCTETS: usize = 32;

/// Why the secret file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// Reading or creating it failed.
    #[error("cannot {op} the server secret {}", path.display())]
    Io {
        /// What was tried.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The file does not hold 64 hexadecimal digits.
    #[error("{}: not a server secret (64 hexadecimal digits expected); remove it to make a new one, or copy it again from another node", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
    },
}

/// The server secret. Its `Debug` form shows nothing of it.
#[derive(Clone)]
pub struct ServerSecret {
    key: [u8; SECRET_OCTETS],
}

impl std::fmt::Debug for ServerSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerSecret(***)")
    }
}

impl ServerSecret {
    /// A secret for this process only (tests, and passdbs used by the
    /// command line, which answer no SCRAM).
    pub fn random() -> ServerSecret {
        let mut key = [0u8; SECRET_OCTETS];
        rand::fill(&mut key);
        ServerSecret { key }
    }

    /// Reads the secret at `path`, or makes one there (mode 0600) if there
    /// is no file yet.
    ///
    /// The file is read only if it is a regular file (not a symbolic
    /// link, a FIFO or a device) that no group and no other user may read
    /// or write: a secret others could read would let them compute every
    /// made-up SCRAM value. A new secret is written whole under a
    /// temporary name beside `path` and then linked into place, so
    /// servers started at the same moment never read a half-written file:
    /// the first link wins, and the others read what it published.
    pub fn load_or_create(path: &Path) -> Result<ServerSecret, SecretError> {
        ServerSecret::load_or_create_owned(path, None)
    }

    /// [`ServerSecret::load_or_create`], a new file given to `owner`
    /// (uid, gid) before it is linked into place: the server started as
    /// root makes it for the user it becomes, who reads it at every later
    /// start. The ownership is changed on the open file, never by path.
    pub fn load_or_create_owned(
        path: &Path,
        owner: Option<(u32, u32)>,
    ) -> Result<ServerSecret, SecretError> {
        match read_private(path) {
            Ok(text) => return ServerSecret::parse(path, &text),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(SecretError::Io {
                    op: "read",
                    path: path.to_owned(),
                    source,
                })
            }
        }
        let secret = ServerSecret::random();
        let made = |source| SecretError::Io {
            op: "create",
            path: path.to_owned(),
            source,
        };
        let temporary = temporary_beside(path).map_err(made)?;
        let written = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&temporary)
            .and_then(|mut file| {
                if let Some((uid, gid)) = owner {
                    std::os::unix::fs::fchown(&file, Some(uid), Some(gid))?;
                }
                file.write_all(format!("{}\n", hex(&secret.key)).as_bytes())?;
                file.sync_all()
            });
        let linked = written.and_then(|()| fs::hard_link(&temporary, path));
        let _ = fs::remove_file(&temporary);
        match linked {
            Ok(()) => {
                tracing::info!(path = %path.display(),
                    "made a new server secret; copy it to every node that serves the same users");
                Ok(secret)
            }
            // Another process published one first: use theirs.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                let text = read_private(path).map_err(|source| SecretError::Io {
                    op: "read",
                    path: path.to_owned(),
                    source,
                })?;
                ServerSecret::parse(path, &text)
            }
            Err(source) => Err(made(source)),
        }
    }

    fn parse(path: &Path, text: &[u8]) -> Result<ServerSecret, SecretError> {
        let malformed = || SecretError::Malformed {
            path: path.to_owned(),
        };
        let text = std::str::from_utf8(text).map_err(|_| malformed())?.trim();
        if text.len() != 2 * SECRET_OCTETS {
            return Err(malformed());
        }
        let mut key = [0u8; SECRET_OCTETS];
        for (i, octet) in key.iter_mut().enumerate() {
            *octet = text
                .get(2 * i..2 * i + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                .ok_or_else(malformed)?;
        }
        Ok(ServerSecret { key })
    }

    /// HMAC-SHA-256 of `name` under the secret, for the purpose `label`.
    fn derive(&self, label: &str, name: &str) -> [u8; 32] {
        let mut mac = <hmac::Hmac<Sha256> as KeyInit>::new_from_slice(&self.key)
            .expect("HMAC takes any key length");
        // Length-prefixed: no two (label, name) pairs feed the same bytes.
        for part in [label.as_bytes(), name.as_bytes()] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }

    /// The SCRAM salt of `name` where the server makes one up (a
    /// plaintext-equivalent secret, or a user who has no usable keys).
    pub fn scram_salt(&self, name: &str) -> [u8; 16] {
        let mut salt = [0u8; 16];
        salt.copy_from_slice(&self.derive("scram salt", name)[..16]);
        salt
    }

    /// A number below `among` (which must not be 0) drawn from `name` for
    /// the purpose `label`: the same for a name on every node and after
    /// every restart, unpredictable without the secret.
    pub fn choose(&self, label: &str, name: &str, among: u64) -> u64 {
        let octets = self.derive(label, name);
        let mut first = [0u8; 8];
        first.copy_from_slice(&octets[..8]);
        u64::from_be_bytes(first) % among.max(1)
    }

    /// One of `options`, drawn from `name` for the purpose `label`, each
    /// as often as its weight says; `None` if they weigh nothing.
    pub fn choose_weighted<T: Copy>(
        &self,
        label: &str,
        name: &str,
        options: &[(T, u64)],
    ) -> Option<T> {
        let total = options
            .iter()
            .fold(0u64, |sum, (_, weight)| sum.saturating_add(*weight));
        if total == 0 {
            return None;
        }
        let mut left = self.choose(label, name, total);
        for (option, weight) in options {
            if left < *weight {
                return Some(*option);
            }
            left -= weight;
        }
        None
    }

    /// SCRAM keys for a name that has none: the salt it would have, and
    /// keys that look like stored ones but that no password is known to
    /// match. As cheap as reading stored keys.
    pub fn scram_lookalike(&self, name: &str, iterations: u32) -> ScramKeys {
        ScramKeys {
            salt: self.scram_salt(name).to_vec(),
            iterations,
            stored_key: self.derive("scram stored key", name),
            server_key: self.derive("scram server key", name),
        }
    }
}

fn hex(octets: &[u8]) -> String {
    octets.iter().map(|b| format!("{b:02x}")).collect()
}

/// The longest secret file read: the secret, a line end, some slack.
const MAX_FILE_OCTETS: u64 = 4096;

/// The contents of the secret file at `path`, if it is a regular file,
/// not a symbolic link, that only its owner may read or write.
fn read_private(path: &Path) -> io::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    let file = OpenOptions::new()
        .read(true)
        // No link followed, and no wait on a FIFO put in its place.
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| {
            if e.raw_os_error() == Some(nix::libc::ELOOP) {
                io::Error::other("it is a symbolic link; put the file itself there")
            } else {
                e
            }
        })?;
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        return Err(io::Error::other("not a regular file"));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(io::Error::other(format!(
            "mode {mode:04o} lets others read or change it; \
             make it readable by its owner only (chmod 600), \
             and make a new secret if others may have read it"
        )));
    }
    let mut text = Vec::new();
    file.take(MAX_FILE_OCTETS).read_to_end(&mut text)?;
    Ok(text)
}

/// A fresh name in the directory of `path` to write a new secret under
/// before it is linked into place.
fn temporary_beside(path: &Path) -> io::Result<PathBuf> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::other("the path names no file"))?;
    let mut unique = [0u8; 8];
    rand::fill(&mut unique);
    let mut temporary = std::ffi::OsString::from(".");
    temporary.push(name);
    temporary.push(format!(".{}.{}.tmp", std::process::id(), hex(&unique)));
    Ok(path.with_file_name(temporary))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn made_once_mode_0600_then_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        let made = ServerSecret::load_or_create(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let read = ServerSecret::load_or_create(&path).unwrap();
        assert_eq!(made.key, read.key);
        assert_eq!(
            made.scram_lookalike("nobody", 4096),
            read.scram_lookalike("nobody", 4096)
        );
        assert_ne!(made.scram_salt("a"), made.scram_salt("b"));
        assert_ne!(made.scram_salt("a"), ServerSecret::random().scram_salt("a"));
        assert_eq!(format!("{made:?}"), "ServerSecret(***)");
    }

    #[test]
    fn a_damaged_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        fs::write(&path, "abc\n").unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        let e = ServerSecret::load_or_create(&path).unwrap_err();
        assert!(e.to_string().contains("secret"), "{e}");
        assert!(matches!(e, SecretError::Malformed { .. }));
        // Left as it was: a copy from another node may be on its way.
        assert_eq!(fs::read_to_string(&path).unwrap(), "abc\n");
    }
}
