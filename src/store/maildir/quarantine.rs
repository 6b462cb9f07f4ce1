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

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, RenameFlags};
use nix::sys::stat::Mode;

use super::dirs::{self, Dirs};
use super::{
    finish_interrupted_update, lock, name, open_regular, relocate, size_of, snapshot, Entry,
    MaildirStore, Sub,
};
use crate::store::{MessageInfo, StoreError};

/// The quarantine folder inside a user's Maildir (Maildir++ naming).
pub const FOLDER: &str = ".Quarantine";

/// A user's Maildir locked for the administrator, with the snapshot that
/// numbers its messages as a POP3 session would now. Dropping it unlocks.
#[derive(Debug)]
pub struct AdminMaildrop {
    /// Held only for its `flock`.
    _lock: Option<File>,
    /// The Maildir and its new/ and cur/, opened without following
    /// symlinks (and holding the lock on the Maildir's descriptor).
    dirs: Dirs,
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
    /// Where it is (for display: it is moved relative to the folder's
    /// directory descriptors).
    pub path: PathBuf,
    sub: Sub,
    name: OsString,
}

impl MaildirStore {
    /// Locks and snapshots `user`'s existing Maildir for the administrator.
    /// A Maildir that does not exist is an error, not created: a mistyped
    /// user name must not leave directories behind.
    pub fn open_admin(&self, user: &str) -> Result<AdminMaildrop, StoreError> {
        let at = self.location(user)?;
        let Some(dirs) = Dirs::open(&at, false)? else {
            return Err(StoreError::Permanent(format!(
                "no maildrop for {user} at {}",
                at.path().display()
            )));
        };
        let lock = lock(&dirs)?;
        finish_interrupted_update(&dirs);
        let snap = snapshot(&dirs)?;
        Ok(AdminMaildrop {
            _lock: lock,
            dirs,
            entries: snap.entries,
            infos: snap.infos,
        })
    }
}

impl AdminMaildrop {
    /// The Maildir's path.
    pub fn maildir(&self) -> &Path {
        &self.dirs.path
    }

    /// The snapshot, in message-number order.
    pub fn messages(&self) -> &[MessageInfo] {
        &self.infos
    }

    /// Opens message `index` (0-based) for reading.
    pub fn open(&mut self, index: usize) -> Result<File, StoreError> {
        let dirs = &self.dirs;
        let entry = self.entries.get(index).ok_or(StoreError::Vanished)?;
        if let Some(file) =
            open_regular(dirs.sub(entry.sub), &entry.name, || entry.path(&dirs.path))?
        {
            return Ok(file);
        }
        relocate(dirs, &mut self.entries)?;
        let entry = &self.entries[index];
        open_regular(dirs.sub(entry.sub), &entry.name, || entry.path(&dirs.path))?
            .ok_or(StoreError::Vanished)
    }

    /// Opens a quarantined message for reading, relative to the folder.
    pub fn open_quarantined(&self, q: &Quarantined) -> Result<File, StoreError> {
        let folder = self.folder(false)?.ok_or(StoreError::Vanished)?;
        open_regular(folder.sub(q.sub), &q.name, || q.path.clone())?.ok_or(StoreError::Vanished)
    }

    /// The 0-based index of the message with this UIDL.
    pub fn index_of(&self, uid: &str) -> Option<usize> {
        self.infos.iter().position(|m| m.uid == uid)
    }

    /// The quarantine folder's directories, opened (or with `create`,
    /// made) without following symlinks. `None` when it does not exist.
    fn folder(&self, create: bool) -> Result<Option<Dirs>, StoreError> {
        let path = self.dirs.path.join(FOLDER);
        let Some(fd) =
            dirs::open_subdir(self.dirs.maildir.as_fd(), OsStr::new(FOLDER), create, &path)?
        else {
            return Ok(None);
        };
        if create {
            mark_folder(&fd)?;
        }
        Dirs::within(fd, path, create)
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
        let folder = self
            .folder(true)?
            .ok_or_else(|| StoreError::Permanent("quarantine folder was not created".into()))?;
        let mut moved = self.move_to(index, &folder)?;
        if !moved {
            relocate(&self.dirs, &mut self.entries)?;
            moved = self.move_to(index, &folder)?;
        }
        if !moved {
            return Err(StoreError::Vanished);
        }
        dirs::sync(folder.cur.as_fd())?;
        dirs::sync(self.dirs.sub(self.entries[index].sub))?;
        Ok(uid)
    }

    /// Renames message `index` into the folder's cur/; `false` when it is
    /// not where the entry says.
    fn move_to(&self, index: usize, folder: &Dirs) -> Result<bool, StoreError> {
        let entry = &self.entries[index];
        rename_no_replace(
            self.dirs.sub(entry.sub),
            &entry.name,
            folder.cur.as_fd(),
            &folder.path.join("cur").join(&entry.name),
        )
    }

    /// The messages in the quarantine folder, by file name.
    pub fn quarantined(&self) -> Result<Vec<Quarantined>, StoreError> {
        let Some(folder) = self.folder(false)? else {
            return Ok(Vec::new());
        };
        let mut found = Vec::new();
        for sub in [Sub::Cur, Sub::New] {
            for file_name in dirs::list_files(folder.sub(sub))? {
                let entry = Entry::new(sub, file_name);
                let parsed = name::parse(entry.name.as_bytes());
                let size = match size_of(&folder, &entry, parsed.crlf_size, None) {
                    Ok(Some(s)) => s.size,
                    Ok(None) => continue,
                    // Swapped for a symlink or FIFO since the listing, or
                    // unreadable: not a message to list, and no reason
                    // to list none of the others.
                    Err(e) if super::is_unreadable(&e) => continue,
                    Err(e) => return Err(e),
                };
                found.push(Quarantined {
                    uid: name::uidl(parsed.base),
                    size,
                    path: entry.path(&folder.path),
                    sub,
                    name: entry.name,
                });
            }
        }
        found.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(found)
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
        let folder = self.folder(false)?.ok_or(StoreError::Vanished)?;
        if !rename_no_replace(
            folder.sub(q.sub),
            &q.name,
            self.dirs.cur.as_fd(),
            &self.dirs.path.join("cur").join(&q.name),
        )? {
            return Err(StoreError::Vanished);
        }
        dirs::sync(self.dirs.cur.as_fd())?;
        dirs::sync(folder.sub(q.sub))?;
        Ok(())
    }
}

/// Creates the Maildir++ folder's `maildirfolder` marker file, relative
/// to the folder, never through a symlink.
fn mark_folder(folder: &OwnedFd) -> Result<(), StoreError> {
    match nix::fcntl::openat(
        folder.as_fd(),
        "maildirfolder",
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
        Mode::from_bits_truncate(0o600),
    ) {
        Ok(_) => Ok(()),
        Err(e) => Err(std::io::Error::from(e).into()),
    }
}

/// Renames `name` from one directory to another without replacing
/// anything there; `false` when `name` is not there. `shown` names the
/// target in the error when it exists.
fn rename_no_replace(
    from: std::os::fd::BorrowedFd<'_>,
    name: &OsStr,
    to: std::os::fd::BorrowedFd<'_>,
    shown: &Path,
) -> Result<bool, StoreError> {
    match nix::fcntl::renameat2(from, name, to, name, RenameFlags::RENAME_NOREPLACE) {
        Ok(()) => Ok(true),
        Err(Errno::ENOENT) => Ok(false),
        Err(Errno::EEXIST) => Err(StoreError::Permanent(format!(
            "{} already exists",
            shown.display()
        ))),
        Err(e) => Err(std::io::Error::from(e).into()),
    }
}
