//! The administrator's view of a Maildir: the same lock and snapshot as a
//! POP3 session (so message numbers are the ones the user's client sees
//! now), and the quarantine that moves a message out of that view.
//!
//! The quarantine is a Maildir++ folder, `<maildir>/.Quarantine/{cur,new,
//! tmp}`: IMAP clients see it as the folder "Quarantine", and POP3 reads
//! only the INBOX's new/ and cur/. A message moves by `rename` with its
//! file name unchanged, so its base name, and with it its UIDL, survive a
//! quarantine and a release. Nothing here runs while a session holds the
//! lock: opening refuses with [`StoreError::Locked`].
//!
//! Blocking std code, for the command line.

use std::ffi::OsString;
use std::fs::File;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::{
    deliver, lock, measure, name, open_regular, relocate, snapshot, Entry, MaildirStore, Sub,
};
use crate::store::{MessageInfo, StoreError};

/// The quarantine folder inside a user's Maildir (Maildir++ naming).
pub const FOLDER: &str = ".Quarantine";

/// A user's Maildir locked for the administrator, with the snapshot that
/// numbers its messages as a POP3 session would now. Dropping it unlocks.
#[derive(Debug)]
pub struct AdminMaildrop {
    /// Held only for its `flock`.
    _lock: File,
    maildir: PathBuf,
    entries: Vec<Entry>,
    infos: Vec<MessageInfo>,
}

/// One message in the quarantine folder.
#[derive(Debug, Clone)]
pub struct Quarantined {
    /// Its UIDL, the one it had (and will have again) in the maildrop.
    pub uid: String,
    /// Its size with CRLF line endings.
    pub size: u64,
    /// Where it is.
    pub path: PathBuf,
}

impl MaildirStore {
    /// Locks and snapshots `user`'s existing Maildir for the administrator.
    /// A Maildir that does not exist is an error, not created: a mistyped
    /// user name must not leave directories behind.
    pub fn open_admin(&self, user: &str) -> Result<AdminMaildrop, StoreError> {
        let maildir = self.maildir_path(user)?;
        if !(maildir.join("cur").is_dir() && maildir.join("new").is_dir()) {
            return Err(StoreError::Permanent(format!(
                "no maildrop for {user} at {}",
                maildir.display()
            )));
        }
        let lock = lock(&maildir)?;
        let (entries, infos) = snapshot(&maildir)?;
        Ok(AdminMaildrop {
            _lock: lock,
            maildir,
            entries,
            infos,
        })
    }
}

impl AdminMaildrop {
    /// The Maildir's path.
    pub fn maildir(&self) -> &Path {
        &self.maildir
    }

    /// The snapshot, in message-number order.
    pub fn messages(&self) -> &[MessageInfo] {
        &self.infos
    }

    /// Opens message `index` (0-based) for reading.
    pub fn open(&mut self, index: usize) -> Result<File, StoreError> {
        let entry = self.entries.get(index).ok_or(StoreError::Vanished)?;
        if let Some(file) = open_regular(&entry.path(&self.maildir))? {
            return Ok(file);
        }
        relocate(&self.maildir, &mut self.entries)?;
        open_regular(&self.entries[index].path(&self.maildir))?.ok_or(StoreError::Vanished)
    }

    /// The 0-based index of the message with this UIDL.
    pub fn index_of(&self, uid: &str) -> Option<usize> {
        self.infos.iter().position(|m| m.uid == uid)
    }

    /// Moves message `index` into the quarantine folder, file name (and so
    /// UIDL) unchanged. Returns its UIDL.
    pub fn quarantine(&mut self, index: usize) -> Result<String, StoreError> {
        let uid = self
            .infos
            .get(index)
            .ok_or(StoreError::Vanished)?
            .uid
            .clone();
        let folder = self.maildir.join(FOLDER);
        create_folder(&folder)?;
        let target = folder.join("cur").join(&self.entries[index].name);
        if target.symlink_metadata().is_ok() {
            return Err(StoreError::Permanent(format!(
                "{} already exists",
                target.display()
            )));
        }
        let mut moved = rename_if_there(&self.entries[index].path(&self.maildir), &target)?;
        if !moved {
            relocate(&self.maildir, &mut self.entries)?;
            let target = folder.join("cur").join(&self.entries[index].name);
            moved = rename_if_there(&self.entries[index].path(&self.maildir), &target)?;
        }
        if !moved {
            return Err(StoreError::Vanished);
        }
        deliver::sync_dir(&folder.join("cur"))?;
        deliver::sync_dir(&self.maildir.join(self.entries[index].sub.dir()))?;
        Ok(uid)
    }

    /// The messages in the quarantine folder, by file name.
    pub fn quarantined(&self) -> Result<Vec<Quarantined>, StoreError> {
        let folder = self.maildir.join(FOLDER);
        let mut found = Vec::new();
        for sub in [Sub::Cur, Sub::New] {
            let dir = folder.join(sub.dir());
            let listing = match std::fs::read_dir(&dir) {
                Ok(listing) => listing,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e.into()),
            };
            for dirent in listing {
                let dirent = dirent?;
                let file_name = dirent.file_name();
                if file_name.as_bytes().first().is_none_or(|&b| b == b'.')
                    || !dirent.file_type().is_ok_and(|t| t.is_file())
                {
                    continue;
                }
                let parsed = name::parse(file_name.as_bytes());
                let path = dir.join(&file_name);
                let size = match parsed.crlf_size {
                    Some(size) => size,
                    None => match measure(&path)? {
                        Some(size) => size,
                        None => continue,
                    },
                };
                found.push((
                    file_name.clone(),
                    Quarantined {
                        uid: name::uidl(parsed.base),
                        size,
                        path,
                    },
                ));
            }
        }
        found.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(found.into_iter().map(|(_, q)| q).collect())
    }

    /// Puts the quarantined message with this UIDL back into cur/, file
    /// name unchanged, so POP3 clients see it again under the same UIDL.
    pub fn release(&mut self, uid: &str) -> Result<(), StoreError> {
        let Some(q) = self.quarantined()?.into_iter().find(|q| q.uid == uid) else {
            return Err(StoreError::Permanent(format!(
                "no quarantined message has the UIDL {uid}"
            )));
        };
        if self.index_of(uid).is_some() {
            return Err(StoreError::Permanent(format!(
                "the maildrop already holds a message with the UIDL {uid}"
            )));
        }
        let file_name: OsString = q.path.file_name().map(OsString::from).unwrap_or_default();
        let target = self.maildir.join("cur").join(&file_name);
        if target.symlink_metadata().is_ok() {
            return Err(StoreError::Permanent(format!(
                "{} already exists",
                target.display()
            )));
        }
        if !rename_if_there(&q.path, &target)? {
            return Err(StoreError::Vanished);
        }
        deliver::sync_dir(&self.maildir.join("cur"))?;
        if let Some(dir) = q.path.parent() {
            deliver::sync_dir(dir)?;
        }
        Ok(())
    }
}

/// Creates the Maildir++ folder with its `maildirfolder` marker file.
fn create_folder(folder: &Path) -> io::Result<()> {
    deliver::create_maildir(folder)?;
    let marker = folder.join("maildirfolder");
    if marker.symlink_metadata().is_err() {
        File::create(&marker)?;
    }
    Ok(())
}

/// Renames `from` to `to`; `false` when `from` is not there.
fn rename_if_there(from: &Path, to: &Path) -> io::Result<bool> {
    match std::fs::rename(from, to) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}
