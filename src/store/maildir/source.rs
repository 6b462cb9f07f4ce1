//! Reading a Maildir that is not a maildrop of this store: the source of
//! `mailbag import`. It is its owner's input like any Maildir: the
//! Maildir itself, its cur/ and new/ are opened without following a
//! symlink, and each message is opened relative to its directory with
//! `O_NOFOLLOW | O_NONBLOCK` and read only when it is a regular file, so
//! a directory or file swapped for a symlink (into another user's mail)
//! or a FIFO between the listing and the read is refused, not followed
//! or waited on.

use std::ffi::OsStr;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::deliver::to_io;
use super::dirs::{self, Location};
use super::name;

/// The subdirectories read, in this order.
const SUBS: [&str; 2] = ["cur", "new"];

/// Opens `sub` of the Maildir `maildir` without following a symlink on
/// either; an error of kind `NotFound` when either is missing.
fn open_sub(maildir: &Path, sub: &str) -> io::Result<OwnedFd> {
    let at = Location::of_path(maildir).map_err(to_io)?;
    let not_found = || io::Error::new(io::ErrorKind::NotFound, "no such directory");
    let top = at.open(false).map_err(to_io)?.ok_or_else(not_found)?;
    dirs::open_subdir(top.as_fd(), OsStr::new(sub), false, &maildir.join(sub))
        .map_err(to_io)?
        .ok_or_else(not_found)
}

/// The message files of the Maildir `maildir`, cur/ then new/: regular
/// files that are not dotfiles, as paths for [`read`].
pub fn files(maildir: &Path) -> Result<Vec<PathBuf>, (PathBuf, io::Error)> {
    let mut found = Vec::new();
    for sub in SUBS {
        let shown = maildir.join(sub);
        let listed = open_sub(maildir, sub).and_then(|dir| dirs::list_files(dir.as_fd()));
        match listed {
            Ok(names) => found.extend(names.into_iter().map(|n| shown.join(n))),
            Err(e) => return Err((shown, e)),
        }
    }
    Ok(found)
}

/// Reads a message file named by [`files`]: `<maildir>/<cur|new>/<name>`,
/// walked again without following a symlink anywhere below the Maildir's
/// parent, and read only when it is a regular file.
pub fn read(path: &Path) -> io::Result<Vec<u8>> {
    let refused = || io::Error::other(format!("{} is not a message file", path.display()));
    let (Some(file_name), Some(sub_dir)) = (path.file_name(), path.parent()) else {
        return Err(refused());
    };
    let (Some(sub), Some(maildir)) = (sub_dir.file_name(), sub_dir.parent()) else {
        return Err(refused());
    };
    let Some(sub) = SUBS.into_iter().find(|s| OsStr::new(s) == sub) else {
        return Err(refused());
    };
    if !name::is_message_name(file_name.as_bytes()) {
        return Err(refused());
    }
    let dir = open_sub(maildir, sub)?;
    let file = match dirs::open_read(dir.as_fd(), file_name) {
        Ok(file) => file,
        Err(e)
            if matches!(
                e.raw_os_error().map(nix::errno::Errno::from_raw),
                Some(nix::errno::Errno::ELOOP | nix::errno::Errno::ENXIO)
            ) =>
        {
            return Err(refused())
        }
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(refused());
    }
    let mut bytes = Vec::new();
    // The length bounds the read: a file that grows meanwhile is read as
    // it was when opened.
    file.take(meta.len()).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Opens an mbox file for reading (its last component not followed if a
/// symlink, not waited on if a FIFO), when it is a regular file, limited
/// to the length it has now: a spool that grows meanwhile is read as it
/// was when opened.
pub fn open_mbox(path: &Path) -> io::Result<std::io::Take<std::fs::File>> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_NONBLOCK)
        .open(path);
    let refused = || io::Error::other(format!("{} is not a regular file", path.display()));
    let file = match file {
        Ok(file) => file,
        Err(e) if matches!(e.raw_os_error(), Some(nix::libc::ELOOP | nix::libc::ENXIO)) => {
            return Err(refused())
        }
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(refused());
    }
    Ok(file.take(meta.len()))
}
