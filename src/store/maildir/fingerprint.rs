//! Content keys of a user's messages, for `mailbag migrate-uidls`
//! (src/admin/migrate.rs), which matches them against what another POP3
//! server sends for its messages.
//!
//! The key of a message is the SHA-256 of its canonical form: CRLF line
//! endings (a bare LF counts as one, a bare CR is data) and a final CRLF
//! unless it is empty, which is what RETR sends before dot-stuffing. So
//! the key does not depend on how either side stores line endings, and a
//! message that differs in one octet anywhere (an added trace header) has
//! another key.
//!
//! Read only, through the same descriptors as the rest of the store (no
//! symlink followed, regular files only); no lock is taken, so a message
//! moved from new/ to cur/ meanwhile may be missed (its base name, which
//! is what a UIDL is recorded for, never changes).

use std::ffi::OsString;
use std::io::Read;

use sha2::{Digest, Sha256};

use super::dirs::{self, Dirs};
use super::{blocking, name, MaildirStore, Sub};
use crate::store::StoreError;

/// The SHA-256 of a message's canonical (CRLF) form, fed in chunks.
#[derive(Debug, Clone, Default)]
pub struct ContentKey {
    sha: Sha256,
    prev: Option<u8>,
    octets: u64,
}

impl ContentKey {
    /// A key over nothing yet.
    pub fn new() -> Self {
        ContentKey::default()
    }

    /// Feeds the next chunk of the message, in any line-ending form.
    pub fn feed(&mut self, chunk: &[u8]) {
        let mut rest = chunk;
        while let Some(i) = memchr::memchr(b'\n', rest) {
            let before = if i > 0 { Some(rest[i - 1]) } else { self.prev };
            self.put(&rest[..i]);
            if before != Some(b'\r') {
                self.put(b"\r");
            }
            self.put(b"\n");
            self.prev = Some(b'\n');
            rest = &rest[i + 1..];
        }
        if let Some(&last) = rest.last() {
            self.put(rest);
            self.prev = Some(last);
        }
    }

    fn put(&mut self, bytes: &[u8]) {
        self.sha.update(bytes);
        self.octets += bytes.len() as u64;
    }

    /// The key, and the message's canonical size in octets.
    pub fn finish(mut self) -> ([u8; 32], u64) {
        if self.octets > 0 && self.prev != Some(b'\n') {
            self.put(b"\r\n");
        }
        (self.sha.finalize().into(), self.octets)
    }
}

/// One message of a user's Maildir, as migration matches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    /// The base name (what a UIDL is recorded for).
    pub base: Vec<u8>,
    /// The canonical (CRLF) size.
    pub size: u64,
    /// The [`ContentKey`].
    pub key: [u8; 32],
}

/// What [`MaildirStore::fingerprints`] found.
#[derive(Debug, Clone, Default)]
pub struct Fingerprints {
    /// The messages keyed, in base-name order.
    pub messages: Vec<Fingerprint>,
    /// Messages left out: larger than the limit, unreadable, not regular
    /// files, or beyond the message limit.
    pub skipped: usize,
}

impl MaildirStore {
    /// The content keys of `user`'s messages in new/ and cur/, at most
    /// `max_messages` of them; a message of more than `max_octets` is
    /// skipped (counted) without being read to its end. A Maildir that
    /// does not exist has no messages.
    pub async fn fingerprints(
        &self,
        user: &str,
        max_messages: usize,
        max_octets: u64,
    ) -> Result<Fingerprints, StoreError> {
        let at = self.location(user)?;
        blocking(move || {
            let Some(dirs) = Dirs::open(&at, false)? else {
                return Ok(Fingerprints::default());
            };
            let mut names: Vec<(Sub, OsString)> = Vec::new();
            for sub in [Sub::New, Sub::Cur] {
                for file in dirs::list_files(dirs.sub(sub))? {
                    names.push((sub, file));
                }
            }
            let mut out = Fingerprints::default();
            if names.len() > max_messages {
                out.skipped = names.len() - max_messages;
            }
            names.sort_by(|a, b| a.1.cmp(&b.1));
            names.truncate(max_messages);
            for (sub, file) in names {
                use std::os::unix::ffi::OsStrExt;
                match key_of(&dirs, sub, &file, max_octets) {
                    Some((key, size)) => out.messages.push(Fingerprint {
                        base: name::parse(file.as_bytes()).base.to_vec(),
                        size,
                        key,
                    }),
                    None => out.skipped += 1,
                }
            }
            Ok(out)
        })
        .await
    }
}

/// The key and canonical size of one message file, or `None` when it
/// cannot be read, is not a regular file, or is over `max_octets`.
fn key_of(dirs: &Dirs, sub: Sub, file: &OsString, max_octets: u64) -> Option<([u8; 32], u64)> {
    let file = dirs::open_read(dirs.sub(sub), file).ok()?;
    let meta = file.metadata().ok()?;
    if !meta.is_file() || meta.len() > max_octets {
        return None;
    }
    let mut key = ContentKey::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut read = 0u64;
    let mut file = file.take(max_octets.saturating_add(1));
    loop {
        let n = file.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        read += n as u64;
        if read > max_octets {
            return None;
        }
        key.feed(&buf[..n]);
    }
    Some(key.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(chunks: &[&[u8]]) -> ([u8; 32], u64) {
        let mut k = ContentKey::new();
        for c in chunks {
            k.feed(c);
        }
        k.finish()
    }

    #[test]
    fn the_key_is_the_canonical_forms_whatever_the_line_endings_and_chunks() {
        for message in [
            &b""[..],
            b"a",
            b"a\nb\n",
            b"a\r\nb",
            b"bare\rcr\r\r\nlf\nend",
            b"\n\n\r",
        ] {
            let canonical = mailbag_proto::dot::canonicalize(message);
            let want = (Sha256::digest(&canonical).into(), canonical.len() as u64);
            assert_eq!(key(&[message]), want, "{message:?}");
            assert_eq!(key(&[&canonical]), want, "{message:?} canonical");
            let bytes: Vec<&[u8]> = message.chunks(1).collect();
            assert_eq!(key(&bytes), want, "{message:?} by octet");
        }
        assert_ne!(key(&[b"a\n"]), key(&[b"a\r\r\n"]));
    }
}
