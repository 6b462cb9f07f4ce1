//! Durable delivery of one message into a Maildir (the Maildir spec's
//! tmp/ → new/ protocol): nothing half-written ever appears in new/, and a
//! message is on stable storage before `deliver` returns.
//!
//! Blocking std code: async callers run it in `spawn_blocking`.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;

use mailbag_proto::dot::canonical_size;

use super::dirs::{self, Dirs, Location};
use super::name;
use crate::store::StoreError;

/// How often a name clash in tmp/ is retried with a fresh name before
/// giving up; a clash needs another host with our name and pid.
const NAME_ATTEMPTS: usize = 8;

/// Creates `maildir` with tmp/, new/ and cur/ (mode 0700) where missing.
#[cfg(test)]
/// The Maildir and its subdirectories are opened without following
/// symlinks: one that is a symlink is an error.
pub(crate) fn create_maildir(maildir: &Path) -> io::Result<()> {
    Dirs::open(&Location::of_path(maildir).map_err(to_io)?, true)
        .map_err(to_io)?
        .map(drop)
        .ok_or_else(|| io::Error::other("maildir was not created"))
}

/// A store error as the `io::Error` of the path-based functions.
pub(crate) fn to_io(e: StoreError) -> io::Error {
    match e {
        StoreError::Temporary(e) => e,
        other => io::Error::other(other.to_string()),
    }
}

/// Delivers `message` into `maildir` (created if missing) and returns the
/// base name it got in new/: `<unique>,S=<file length>,W=<CRLF size>`.
///
/// The message is written to tmp/, fsynced, renamed into new/, and new/ is
/// fsynced. On any error the tmp/ file is removed and the error returned.
/// The Maildir (its last component) and its subdirectories are never
/// followed if they are symlinks.
pub fn deliver(maildir: &Path, message: &[u8]) -> io::Result<String> {
    deliver_at(&Location::of_path(maildir).map_err(to_io)?, message).map_err(to_io)
}

/// [`deliver`] into the Maildir at `at`, every directory below its trusted
/// base opened without following symlinks, and the file created and
/// renamed relative to them.
///
/// A Maildir that cannot be opened (a symlink, a file in the way) is a
/// temporary failure: the sender's MTA keeps the message queued until an
/// administrator repairs the Maildir, instead of bouncing it.
pub(crate) fn deliver_at(at: &Location, message: &[u8]) -> Result<String, StoreError> {
    let temporary = |e: StoreError| match e {
        StoreError::Permanent(why) => StoreError::Temporary(io::Error::other(why)),
        other => other,
    };
    let dirs = Dirs::open(at, true)
        .map_err(temporary)?
        .ok_or_else(|| StoreError::Temporary(io::Error::other("maildir was not created")))?;
    let tmp_dir = dirs::open_subdir(
        dirs.maildir.as_fd(),
        OsStr::new("tmp"),
        true,
        &dirs.path.join("tmp"),
    )
    .map_err(temporary)?
    .ok_or_else(|| StoreError::Temporary(io::Error::other("tmp/ was not created")))?;
    let tmp = tmp_dir.as_fd();
    let (unique, mut file) = create_tmp(tmp)?;
    let result = (|| {
        file.write_all(message)?;
        file.sync_all()?;
        drop(file);
        let base = format!("{unique},S={},W={}", message.len(), canonical_size(message));
        nix::fcntl::renameat(tmp, unique.as_str(), dirs.new.as_fd(), base.as_str())?;
        Ok::<_, io::Error>(base)
    })();
    match result {
        Ok(base) => {
            // The message is in new/ now; if this fsync fails the caller
            // must not acknowledge, but the file stays (a duplicate on retry
            // beats a lost message).
            dirs::sync(dirs.new.as_fd())?;
            Ok(base)
        }
        Err(e) => {
            let _ = dirs::unlink(tmp, OsStr::new(&unique));
            Err(e.into())
        }
    }
}

fn create_tmp(tmp: BorrowedFd<'_>) -> io::Result<(String, File)> {
    let mut last = None;
    for _ in 0..NAME_ATTEMPTS {
        let unique = name::unique();
        match nix::fcntl::openat(
            tmp,
            unique.as_str(),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        ) {
            Ok(fd) => return Ok((unique, File::from(fd))),
            Err(Errno::EEXIST) => last = Some(io::Error::from(Errno::EEXIST)),
            Err(e) => return Err(e.into()),
        }
    }
    Err(last.unwrap_or_else(|| io::Error::other("no unique name in tmp/")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::maildir::name::parse;

    #[test]
    fn deliver_leaves_tmp_empty_and_names_the_crlf_size() {
        let dir = tempfile::tempdir().unwrap();
        let md = dir.path().join("a/b/Maildir");
        let msg = b"Subject: hi\n\nline one\nline two\r\nno newline";
        let base = deliver(&md, msg).unwrap();
        assert_eq!(std::fs::read_dir(md.join("tmp")).unwrap().count(), 0);
        assert_eq!(std::fs::read(md.join("new").join(&base)).unwrap(), msg);
        let p = parse(base.as_bytes());
        assert_eq!(p.crlf_size, Some(canonical_size(msg)));
        assert_eq!(p.stored_size, Some(msg.len() as u64));
        assert!(p.flags.is_none());
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(md.join("cur")).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn deliver_into_unwritable_place_fails_cleanly() {
        let dir = tempfile::tempdir().unwrap();
        let blocker = dir.path().join("file");
        std::fs::write(&blocker, b"x").unwrap();
        assert!(deliver(&blocker.join("Maildir"), b"x").is_err());
    }
}
