//! Directory descriptors for one Maildir, and every file operation inside
//! it done relative to them.
//!
//! Everything below the configured data root belongs to the mailbox owner,
//! who can replace any directory with a symlink to someone else's. So the
//! components the path template adds below the root, the Maildir itself
//! and its new/, cur/ and tmp/ are each opened with `openat(O_DIRECTORY |
//! O_NOFOLLOW)` from the descriptor of the one above: a symlink anywhere
//! on that walk is refused by the kernel, with no window between a check
//! and a use. Messages and the Maildir's own files (lock, caches, the
//! UPDATE record) are then opened, renamed and unlinked with `openat`,
//! `renameat` and `unlinkat` relative to those descriptors, one path
//! component at a time, never by a path that the kernel would walk again.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag};
use nix::sys::stat::Mode;
use nix::unistd::Uid;

use super::name;
use crate::store::StoreError;

/// Flags of every directory open below the data root.
const DIR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

/// Where a Maildir is: a directory trusted as configured (the data root,
/// opened by its path) and the components below it, which are the mailbox
/// owner's and are walked without following symlinks.
#[derive(Debug, Clone)]
pub(crate) struct Location {
    base: PathBuf,
    below: Vec<OsString>,
}

impl Location {
    /// `maildir` under `root`; every component below `root` must be a
    /// plain name (the store's path template already checks this).
    pub(crate) fn under(root: &Path, maildir: &Path) -> Result<Location, StoreError> {
        let rest = maildir
            .strip_prefix(root)
            .map_err(|_| StoreError::Permanent("maildir path is not under the data root".into()))?;
        let mut below = Vec::new();
        for c in rest.components() {
            match c {
                Component::Normal(part) => below.push(part.to_os_string()),
                _ => {
                    return Err(StoreError::Permanent(
                        "maildir path is not under the data root".into(),
                    ))
                }
            }
        }
        if below.is_empty() {
            return Err(StoreError::Permanent(
                "maildir path is not under the data root".into(),
            ));
        }
        Ok(Location {
            base: root.to_path_buf(),
            below,
        })
    }

    /// A Maildir named by a path alone (delivery from the command line,
    /// import, demo): its parent is trusted, the Maildir itself is not
    /// followed if it is a symlink.
    pub(crate) fn of_path(maildir: &Path) -> Result<Location, StoreError> {
        let Some(last) = maildir.file_name() else {
            return Err(StoreError::Permanent(format!(
                "{} does not name a directory",
                maildir.display()
            )));
        };
        let base = match maildir.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        Ok(Location {
            base,
            below: vec![last.to_os_string()],
        })
    }

    /// The path, for messages and logs only.
    pub(crate) fn path(&self) -> PathBuf {
        let mut p = self.base.clone();
        for part in &self.below {
            p.push(part);
        }
        p
    }

    /// Opens the Maildir's directory; `create` makes missing directories
    /// (mode 0700) on the way. `None` when it does not exist and `create`
    /// is false.
    pub(crate) fn open(&self, create: bool) -> Result<Option<OwnedFd>, StoreError> {
        let open_base = || {
            nix::fcntl::open(
                self.base.as_path(),
                OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
                Mode::empty(),
            )
        };
        let mut dir = match open_base() {
            Ok(fd) => fd,
            Err(Errno::ENOENT) if create => {
                // The base is the administrator's (the data root): made
                // the ordinary way, by its path.
                std::os::unix::fs::DirBuilderExt::mode(
                    std::fs::DirBuilder::new().recursive(true),
                    0o700,
                )
                .create(&self.base)?;
                open_base().map_err(io::Error::from)?
            }
            Err(Errno::ENOENT) => return Ok(None),
            Err(e) => return Err(io::Error::from(e).into()),
        };
        let mut shown = self.base.clone();
        for part in &self.below {
            shown.push(part);
            match open_subdir(dir.as_fd(), part, create, &shown)? {
                Some(next) => dir = next,
                None => return Ok(None),
            }
        }
        Ok(Some(dir))
    }
}

/// Opens directory `name` below `parent` without following a symlink,
/// creating it (mode 0700, then fsyncing `parent`) when `create` says so.
/// `None` when it is missing and not to be created.
pub(crate) fn open_subdir(
    parent: BorrowedFd<'_>,
    name: &OsStr,
    create: bool,
    shown: &Path,
) -> Result<Option<OwnedFd>, StoreError> {
    match nix::fcntl::openat(parent, name, DIR_FLAGS, Mode::empty()) {
        Ok(fd) => return Ok(Some(fd)),
        Err(Errno::ENOENT) if create => {}
        Err(Errno::ENOENT) => return Ok(None),
        Err(e) => return Err(dir_error(e, shown)),
    }
    match nix::sys::stat::mkdirat(parent, name, Mode::S_IRWXU) {
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(e) => return Err(dir_error(e, shown)),
    }
    // The new directory must survive a crash along with what goes in it.
    nix::unistd::fsync(parent).map_err(io::Error::from)?;
    match nix::fcntl::openat(parent, name, DIR_FLAGS, Mode::empty()) {
        Ok(fd) => Ok(Some(fd)),
        Err(e) => Err(dir_error(e, shown)),
    }
}

/// A directory that is a symlink or not a directory at all is a
/// permanent refusal that names it; anything else may pass.
pub(crate) fn dir_error(e: Errno, shown: &Path) -> StoreError {
    match e {
        Errno::ELOOP | Errno::ENOTDIR | Errno::EMLINK => StoreError::Permanent(format!(
            "{} is a symbolic link or not a directory",
            shown.display()
        )),
        e => StoreError::Temporary(e.into()),
    }
}

/// The three directories of an open Maildir.
#[derive(Debug)]
pub(crate) struct Dirs {
    /// The Maildir itself (also what the session lock is taken on).
    pub(crate) maildir: File,
    pub(crate) new: OwnedFd,
    pub(crate) cur: OwnedFd,
    /// The path, for messages and logs only.
    pub(crate) path: PathBuf,
    /// This process's effective user when the Maildir was opened (to tell
    /// unreadable messages from their mode bits without a system call per
    /// message).
    pub(crate) euid: Uid,
}

impl Dirs {
    /// Opens (or with `create`, makes) the Maildir at `at` and its new/
    /// and cur/ (and tmp/, when created). `None` when it does not exist
    /// and `create` is false.
    pub(crate) fn open(at: &Location, create: bool) -> Result<Option<Dirs>, StoreError> {
        let Some(maildir) = at.open(create)? else {
            return Ok(None);
        };
        let path = at.path();
        Dirs::within(maildir, path, create)
    }

    /// new/ and cur/ (and tmp/, when created) of an open Maildir.
    pub(crate) fn within(
        maildir: OwnedFd,
        path: PathBuf,
        create: bool,
    ) -> Result<Option<Dirs>, StoreError> {
        let sub = |name: &str, create: bool| {
            open_subdir(maildir.as_fd(), OsStr::new(name), create, &path.join(name))
        };
        let (new, cur) = match (sub("new", false)?, sub("cur", false)?) {
            (Some(new), Some(cur)) => (new, cur),
            _ if !create => return Ok(None),
            _ => {
                // Made in the order the Maildir spec's readers expect:
                // a Maildir without tmp/ cannot be delivered into.
                sub("tmp", true)?;
                match (sub("new", true)?, sub("cur", true)?) {
                    (Some(new), Some(cur)) => (new, cur),
                    _ => return Ok(None),
                }
            }
        };
        Ok(Some(Dirs {
            maildir: File::from(maildir),
            new,
            cur,
            path,
            euid: nix::unistd::geteuid(),
        }))
    }

    /// The directory of new/ or cur/.
    pub(crate) fn sub(&self, sub: super::Sub) -> BorrowedFd<'_> {
        match sub {
            super::Sub::New => self.new.as_fd(),
            super::Sub::Cur => self.cur.as_fd(),
        }
    }
}

/// The names in one directory, as readdir returns them: every name is one
/// path component; dotfiles and anything but regular files (by d_type, or
/// where the filesystem has none, by `fstatat`) are left out.
pub(crate) fn list_files(dir: BorrowedFd<'_>) -> io::Result<Vec<OsString>> {
    let mut listing = nix::dir::Dir::openat(dir, ".", DIR_FLAGS, Mode::empty())?;
    let mut names = Vec::new();
    for dirent in listing.iter() {
        let dirent = dirent?;
        let name = dirent.file_name().to_bytes();
        if !name::is_message_name(name) {
            continue;
        }
        match dirent.file_type() {
            Some(nix::dir::Type::File) => {}
            // A filesystem without d_type: one `fstatat` tells.
            None => match nix::sys::stat::fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(st) if (st.st_mode & nix::libc::S_IFMT) == nix::libc::S_IFREG => {}
                _ => continue,
            },
            Some(_) => continue,
        }
        names.push(OsStr::from_bytes(name).to_os_string());
    }
    Ok(names)
}

/// Opens `name` in `dir` for reading, not following a symlink and not
/// waiting on a FIFO; the caller checks that it is a regular file.
pub(crate) fn open_read(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<File> {
    nix::fcntl::openat(
        dir,
        name,
        OFlag::O_RDONLY | OFlag::O_CLOEXEC | super::MESSAGE_OPEN_FLAGS,
        Mode::empty(),
    )
    .map(File::from)
    .map_err(io::Error::from)
}

/// Reads a small file of the Maildir (a cache, the UPDATE record) whole,
/// when it is a regular file of at most `limit` octets. `Ok(None)` when
/// it does not exist; an error when it cannot be read or is too large.
pub(crate) fn read_small(
    dir: BorrowedFd<'_>,
    name: &str,
    limit: u64,
) -> io::Result<Option<Vec<u8>>> {
    let file = match open_read(dir, OsStr::new(name)) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::other(format!("{name} is not a regular file")));
    }
    if meta.len() > limit {
        return Err(io::Error::other(format!(
            "{name} is larger than {limit} octets"
        )));
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    file.take(limit + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limit {
        return Err(io::Error::other(format!(
            "{name} is larger than {limit} octets"
        )));
    }
    Ok(Some(bytes))
}

/// Replaces `name` in `dir` with `bytes`: written to `<name>.tmp` (a stale
/// one, or a symlink planted there, is unlinked first; the new one is
/// created exclusively, so nothing else is ever written through), then
/// renamed over `name`. With `durable`, the file and then the directory
/// are fsynced.
pub(crate) fn replace(
    dir: BorrowedFd<'_>,
    name: &str,
    bytes: &[u8],
    durable: bool,
) -> io::Result<()> {
    let tmp = format!("{name}.tmp");
    match nix::unistd::unlinkat(dir, tmp.as_str(), nix::unistd::UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => {}
        Err(e) => return Err(e.into()),
    }
    let result = (|| {
        let mut file = File::from(nix::fcntl::openat(
            dir,
            tmp.as_str(),
            OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::from_bits_truncate(0o600),
        )?);
        file.write_all(bytes)?;
        if durable {
            file.sync_all()?;
        }
        drop(file);
        nix::fcntl::renameat(dir, tmp.as_str(), dir, name)?;
        if durable {
            nix::unistd::fsync(dir)?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = nix::unistd::unlinkat(dir, tmp.as_str(), nix::unistd::UnlinkatFlags::NoRemoveDir);
    }
    result
}

/// Unlinks `name` in `dir`; `Ok(false)` when it was not there.
pub(crate) fn unlink(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<bool> {
    match nix::unistd::unlinkat(dir, name, nix::unistd::UnlinkatFlags::NoRemoveDir) {
        Ok(()) => Ok(true),
        Err(Errno::ENOENT) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// What one `fstatat` says about a message file.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FileInfo {
    pub(crate) len: u64,
    /// The mode bits say this process cannot read it: it is not root, and
    /// the file is its own without owner read permission, or someone
    /// else's without group or other read permission (then no ACL entry
    /// can grant it either: the ACL mask shows in the group bits). A file
    /// only a group of ours may read counts as readable.
    pub(crate) unreadable: bool,
}

/// The length (and readability, see [`FileInfo`]) of regular file `name`
/// in `dir`, not following a symlink; `None` when it is not there, an
/// error of kind `Other` when it is not a regular file.
/// `euid` is this process's effective user (from [`Dirs::euid`]).
pub(crate) fn file_info(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    euid: Uid,
) -> io::Result<Option<FileInfo>> {
    match nix::sys::stat::fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) if (st.st_mode & nix::libc::S_IFMT) == nix::libc::S_IFREG => {
            let unreadable = !euid.is_root()
                && if st.st_uid == euid.as_raw() {
                    st.st_mode & 0o400 == 0
                } else {
                    st.st_mode & 0o044 == 0
                };
            Ok(Some(FileInfo {
                len: st.st_size as u64,
                unreadable,
            }))
        }
        Ok(_) => Err(io::Error::other("not a regular file")),
        Err(Errno::ENOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The length of regular file `name` in `dir`, as [`file_info`].
pub(crate) fn file_len(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Option<u64>> {
    Ok(file_info(dir, name, Uid::from_raw(0))?.map(|i| i.len))
}

/// Flushes a directory's entries to stable storage.
pub(crate) fn sync(dir: BorrowedFd<'_>) -> io::Result<()> {
    nix::unistd::fsync(dir).map_err(io::Error::from)
}
