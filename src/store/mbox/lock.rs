//! The locks of an mbox spool.
//!
//! Two kinds, held at different times:
//!
//! - the *session lock*: an exclusive `flock` on `<spool>.mailbag`, held
//!   for the whole POP3 session, so that two mailbag sessions never hold
//!   one maildrop (RFC 1939 exclusive access, `[IN-USE]`). No MTA or mail
//!   reader knows this file, so it blocks no delivery;
//! - the *MTA locks*: the dotlock `<spool>.lock` and an `fcntl` (and/or
//!   `flock`) write lock on the spool itself, as Postfix `local(8)`,
//!   procmail and mutt take them. Held only while the snapshot is read
//!   and while UPDATE rewrites the file, so that a delivery during a
//!   session waits for at most those moments.
//!
//! The dotlock is created with `O_CREAT | O_EXCL` as Postfix does, and is
//! stale (removed, then taken) when older than the configured time
//! (5 minutes, Postfix's and procmail's rule). A dotlock that a session
//! takes says so (`mailbag-session <pid>`); found while this process holds
//! the session lock, it can only be left by a mailbag process that died
//! (only the session lock's holder takes one), so it is removed at once.
//! A delivery's dotlock (`mailbag <pid>`) is waited for like any other.

use std::ffi::{OsStr, OsString};
use std::fs::{File, TryLockError};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag};
use nix::libc;
use nix::sys::stat::Mode;
use nix::unistd::UnlinkatFlags;

use crate::store::StoreError;

/// Which MTA locks to take, and their times.
#[derive(Debug, Clone)]
pub struct LockOptions {
    /// Take the dotlock `<spool>.lock`.
    pub dotlock: bool,
    /// Take an `fcntl` write lock on the spool.
    pub fcntl: bool,
    /// Take an `flock` on the spool.
    pub flock: bool,
    /// A dotlock older than this is stale.
    pub stale: Duration,
    /// How long to wait for the MTA locks before giving up (`[SYS/TEMP]`).
    pub wait: Duration,
}

impl Default for LockOptions {
    fn default() -> Self {
        LockOptions {
            dotlock: true,
            fcntl: true,
            flock: false,
            stale: Duration::from_secs(300),
            wait: Duration::from_secs(10),
        }
    }
}

/// How long to sleep between tries for a lock held elsewhere.
const RETRY: Duration = Duration::from_millis(50);
/// What a dotlock made by mailbag starts with.
const MARK: &[u8] = b"mailbag-session ";

/// Flags of every open of a file in the spool directory: no symlink is
/// followed, and a FIFO does not block the open.
pub(crate) const FILE_FLAGS: OFlag = OFlag::O_NOFOLLOW
    .union(OFlag::O_NONBLOCK)
    .union(OFlag::O_CLOEXEC);

/// The name of a file beside the spool: `<spool><suffix>`.
pub(crate) fn beside(spool: &OsStr, suffix: &str) -> OsString {
    let mut n = spool.to_os_string();
    n.push(suffix);
    n
}

/// Opens `name` in `dir` as a regular file, with `flags` (plus
/// [`FILE_FLAGS`]); a symlink, FIFO or device is `[SYS/PERM]`.
pub(crate) fn open_regular(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    flags: OFlag,
    mode: u32,
) -> Result<Option<File>, StoreError> {
    match nix::fcntl::openat(
        dir,
        name,
        flags | FILE_FLAGS,
        Mode::from_bits_truncate(mode),
    ) {
        Ok(fd) => {
            let file = File::from(fd);
            let meta = file.metadata()?;
            if !meta.file_type().is_file() {
                return Err(not_regular(name));
            }
            Ok(Some(file))
        }
        Err(Errno::ENOENT) => Ok(None),
        Err(Errno::ELOOP) | Err(Errno::ENXIO) => Err(not_regular(name)),
        Err(e) => Err(io::Error::from(e).into()),
    }
}

/// Refuses a spool with more than one name: a hard link in the spool
/// directory to another user's spool (or any other file the server may
/// read and write) must not be served, appended to or rewritten as this
/// spool. Postfix `local(8)` refuses such a mailbox too.
pub(crate) fn single_name(file: &File, name: &OsStr) -> Result<(), StoreError> {
    use std::os::unix::fs::MetadataExt;
    let links = file.metadata()?.nlink();
    if links != 1 {
        return Err(StoreError::Permanent(format!(
            "{} has {links} hard links: a spool with another name is refused",
            String::from_utf8_lossy(name.as_bytes())
        )));
    }
    Ok(())
}

pub(crate) fn not_regular(name: &OsStr) -> StoreError {
    StoreError::Permanent(format!(
        "{} is not a regular file (a symlink, FIFO or device is refused)",
        String::from_utf8_lossy(name.as_bytes())
    ))
}

/// The session lock: held until dropped.
#[derive(Debug)]
pub struct SessionLock {
    _file: File,
}

/// Takes the session lock of `spool` in `dir`, or [`StoreError::Locked`].
pub(crate) fn session(dir: BorrowedFd<'_>, spool: &OsStr) -> Result<SessionLock, StoreError> {
    let name = beside(spool, ".mailbag");
    let file = match open_regular(dir, &name, OFlag::O_RDWR | OFlag::O_CREAT, 0o600) {
        Ok(f) => f,
        // Someone else's lock file that this user cannot write: an
        // `flock` works on a descriptor opened for reading too.
        Err(StoreError::Temporary(e)) if e.kind() == io::ErrorKind::PermissionDenied => {
            open_regular(dir, &name, OFlag::O_RDONLY, 0)?
        }
        Err(e) => return Err(e),
    }
    .ok_or_else(|| {
        StoreError::Permanent(format!(
            "cannot create the session lock {} in the spool directory: the server needs \
             write access to it (see docs/DEPLOYMENT.md, \"Serving /var/mail\")",
            String::from_utf8_lossy(name.as_bytes())
        ))
    })?;
    match file.try_lock() {
        Ok(()) => Ok(SessionLock { _file: file }),
        Err(TryLockError::WouldBlock) => Err(StoreError::Locked),
        Err(TryLockError::Error(e)) => Err(e.into()),
    }
}

/// The MTA locks, held until [`MtaLocks::release`] or drop.
#[derive(Debug)]
pub(crate) struct MtaLocks<'a> {
    dir: BorrowedFd<'a>,
    dotlock: Option<OsString>,
    spool: Option<&'a File>,
    fcntl: bool,
    flock: bool,
}

impl<'a> MtaLocks<'a> {
    /// Takes the configured locks on `file` (named `spool` in `dir`),
    /// waiting at most `options.wait`. `session` says this process holds
    /// the session lock (so a mailbag dotlock is a dead process's).
    pub(crate) fn take(
        dir: BorrowedFd<'a>,
        spool: &OsStr,
        file: Option<&'a File>,
        options: &LockOptions,
        session: bool,
    ) -> Result<MtaLocks<'a>, StoreError> {
        let deadline = Instant::now() + options.wait;
        let mut locks = MtaLocks {
            dir,
            dotlock: None,
            spool: None,
            fcntl: false,
            flock: false,
        };
        if options.dotlock {
            let name = beside(spool, ".lock");
            dotlock(dir, &name, options.stale, session, deadline)?;
            locks.dotlock = Some(name);
        }
        if let Some(file) = file {
            locks.spool = Some(file);
            if options.fcntl {
                retry(deadline, "fcntl", || fcntl_lock(file, libc::F_WRLCK as i16))?;
                locks.fcntl = true;
            }
            if options.flock {
                retry(deadline, "flock", || match file.try_lock() {
                    Ok(()) => Ok(true),
                    Err(TryLockError::WouldBlock) => Ok(false),
                    Err(TryLockError::Error(e)) => Err(e),
                })?;
                locks.flock = true;
            }
        }
        Ok(locks)
    }

    /// Releases the locks (also done on drop).
    pub(crate) fn release(mut self) {
        self.unlock();
    }

    fn unlock(&mut self) {
        if let Some(file) = self.spool {
            if self.flock {
                let _ = file.unlock();
                self.flock = false;
            }
            if self.fcntl {
                let _ = fcntl_lock(file, libc::F_UNLCK as i16);
                self.fcntl = false;
            }
        }
        if let Some(name) = self.dotlock.take() {
            if let Err(e) =
                nix::unistd::unlinkat(self.dir, name.as_os_str(), UnlinkatFlags::NoRemoveDir)
            {
                tracing::warn!(error = %e, "cannot remove the spool's dotlock");
            }
        }
    }
}

impl Drop for MtaLocks<'_> {
    fn drop(&mut self) {
        self.unlock();
    }
}

/// Tries `attempt` until it says `true` or the deadline passes.
fn retry(
    deadline: Instant,
    what: &str,
    mut attempt: impl FnMut() -> io::Result<bool>,
) -> Result<(), StoreError> {
    loop {
        if attempt()? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(StoreError::Temporary(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!("the spool's {what} lock is held by another program"),
            )));
        }
        std::thread::sleep(RETRY);
    }
}

/// One non-blocking `fcntl` write lock (or unlock) of the whole file: `false`
/// when another process holds a conflicting lock.
pub(crate) fn fcntl_lock(file: &File, kind: i16) -> io::Result<bool> {
    let lock = libc::flock {
        l_type: kind,
        l_whence: libc::SEEK_SET as i16,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    };
    // An open file description lock: it conflicts with the POSIX locks
    // that MTAs take, but belongs to this descriptor, not to the process,
    // so another descriptor of the spool closed elsewhere in the server
    // does not release it, and a delivery in this process is kept out too.
    match nix::fcntl::fcntl(file.as_fd(), FcntlArg::F_OFD_SETLK(&lock)) {
        Ok(_) => Ok(true),
        Err(Errno::EACCES | Errno::EAGAIN) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Creates the dotlock `name` in `dir`, breaking a stale one.
fn dotlock(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    stale: Duration,
    session: bool,
    deadline: Instant,
) -> Result<(), StoreError> {
    retry(deadline, "dotlock", || {
        let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | FILE_FLAGS;
        match nix::fcntl::openat(dir, name, flags, Mode::from_bits_truncate(0o600)) {
            Ok(fd) => {
                let mut f = File::from(fd);
                // Best effort: the lock is the file, not its content.
                let who = if session {
                    "mailbag-session"
                } else {
                    "mailbag"
                };
                let _ = f.write_all(format!("{who} {}\n", std::process::id()).as_bytes());
                Ok(true)
            }
            Err(Errno::EEXIST) => {
                if is_stale(dir, name, stale, session) {
                    match nix::unistd::unlinkat(dir, name, UnlinkatFlags::NoRemoveDir) {
                        Ok(()) | Err(Errno::ENOENT) => {
                            tracing::info!(
                                lock = %String::from_utf8_lossy(name.as_bytes()),
                                "removed a stale dotlock"
                            );
                        }
                        Err(e) => return Err(e.into()),
                    }
                }
                Ok(false)
            }
            Err(e) => Err(e.into()),
        }
    })
}

/// A dotlock is stale when older than `stale` (by its change time, as
/// Postfix judges it, never by its modification time), or when it is mailbag's and this process holds the
/// session lock.
fn is_stale(dir: BorrowedFd<'_>, name: &OsStr, stale: Duration, session: bool) -> bool {
    let Ok(st) = nix::sys::stat::fstatat(dir, name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
    else {
        return false;
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    // The change time alone: a modification time can be set at will (in
    // the future, by whoever may write the lock), the change time only to
    // now (which a `touch` that keeps a lock fresh does).
    let age = now.saturating_sub(st.st_ctime);
    if age >= stale.as_secs() as i64 {
        return true;
    }
    if !session {
        return false;
    }
    let Ok(Some(mut f)) = open_regular(dir, name, OFlag::O_RDONLY, 0) else {
        return false;
    };
    let mut head = [0u8; MARK.len()];
    matches!(f.read(&mut head), Ok(n) if n == MARK.len()) && head == MARK
}
