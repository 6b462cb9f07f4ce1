//! Durable delivery of one message into a Maildir (the Maildir spec's
//! tmp/ → new/ protocol): nothing half-written ever appears in new/, and a
//! message is on stable storage before `deliver` returns.
//!
//! Blocking std code: async callers run it in `spawn_blocking`.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::Path;

use mailbag_proto::dot::canonical_size;

use super::name;

/// How often a name clash in tmp/ is retried with a fresh name before
/// giving up; a clash needs another host with our name and pid.
const NAME_ATTEMPTS: usize = 8;

/// Creates `maildir` with tmp/, new/ and cur/ (mode 0700) where missing.
pub(crate) fn create_maildir(maildir: &Path) -> io::Result<()> {
    if ["tmp", "new", "cur"]
        .iter()
        .all(|sub| maildir.join(sub).is_dir())
    {
        return Ok(());
    }
    let mut builder = DirBuilder::new();
    builder.recursive(true).mode(0o700);
    for sub in ["tmp", "new", "cur"] {
        builder.create(maildir.join(sub))?;
    }
    // The new directories must survive a crash along with the first message.
    sync_dir(maildir)?;
    if let Some(parent) = maildir.parent() {
        sync_dir(parent)?;
    }
    Ok(())
}

/// Flushes a directory's entries (renames, creations) to stable storage.
pub(crate) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Delivers `message` into `maildir` (created if missing) and returns the
/// base name it got in new/: `<unique>,S=<file length>,W=<CRLF size>`.
///
/// The message is written to tmp/, fsynced, renamed into new/, and new/ is
/// fsynced. On any error the tmp/ file is removed and the error returned.
pub fn deliver(maildir: &Path, message: &[u8]) -> io::Result<String> {
    create_maildir(maildir)?;
    let (unique, mut file) = create_tmp(maildir)?;
    let tmp = maildir.join("tmp").join(&unique);
    let result = (|| {
        file.write_all(message)?;
        file.sync_all()?;
        drop(file);
        let base = format!("{unique},S={},W={}", message.len(), canonical_size(message));
        std::fs::rename(&tmp, maildir.join("new").join(&base))?;
        Ok(base)
    })();
    match result {
        Ok(base) => {
            // The message is in new/ now; if this fsync fails the caller
            // must not acknowledge, but the file stays (a duplicate on retry
            // beats a lost message).
            sync_dir(&maildir.join("new"))?;
            Ok(base)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(e)
        }
    }
}

fn create_tmp(maildir: &Path) -> io::Result<(String, File)> {
    let mut last = None;
    for _ in 0..NAME_ATTEMPTS {
        let unique = name::unique();
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(maildir.join("tmp").join(&unique))
        {
            Ok(file) => return Ok((unique, file)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some(e),
            Err(e) => return Err(e),
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
