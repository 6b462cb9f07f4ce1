//! `mailbag mailbox` on an mbox spool: the administrator's view (the
//! session lock and snapshot a POP3 session takes, so message numbers are
//! the ones the user's client sees), and the quarantine that takes one
//! message out of the spool and puts it back.
//!
//! **Where.** `store.mbox.quarantine_dir`, never the spool directory (the
//! MTA, and on some systems the spools' owners, write there): one
//! directory per user, named after the user, made by the server's
//! user with mode 0700 and opened without following a symlink; one owned
//! by another user, or that others may write, is refused. In it, one file
//! per quarantined message, named after its UIDL (`%XX` for every octet
//! but letters, digits, `-`, `_` and a `.` that is not the first), holding
//! the message as an mbox of one: its `From_` line, its octets as they
//! were in the spool, and the empty line that ends it. mutt opens it; the
//! parser reads it as it reads a spool.
//!
//! **Quarantine**, under the session lock and then the MTA locks (dotlock,
//! `fcntl`, `flock`, as configured), once the spool is known to hold the
//! snapshot unchanged: (1) the copy is written under a temporary name
//! (`.new-…`), synced, renamed to its name and the directory synced;
//! (2) the spool is rewritten without the message, as UPDATE does it
//! (`update.rs`: behind a journal, in place). A crash before (1) ends
//! leaves the spool as it was and a temporary file that the next
//! quarantine of that UIDL replaces; a crash in (2) is finished by the
//! next open of the spool, as for UPDATE. A crash between (1) and (2)
//! leaves the message in both places: `inspect` shows it so, running
//! `quarantine` again finds the same message in quarantine and only
//! rewrites the spool, and `release` finds the same message in the spool
//! and only removes the copy. "The same" is byte-for-byte: its `From_`
//! line and octets (a UIDL alone could be an `X-UIDL:` that another
//! message repeats).
//!
//! **Release**: the copy is appended to the spool with its `From_` line,
//! as an MTA appends (after an empty line, under the MTA locks, synced;
//! cut back on failure), then the copy is removed. A crash between the
//! two leaves it in both places, handled as above. The message's UIDL,
//! a digest of its `From_` line and headers or its `X-UIDL:`, comes back
//! with it; only a message that shared its UIDL with another (the `-2`
//! ones) may come back under another suffix, which the command says, and
//! a message that took the UIDL meanwhile (the `-2` one, when the first
//! was quarantined) does not keep the quarantined one out.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read, Seek};
use std::ops::Range;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileExt};
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{OFlag, RenameFlags};
use nix::sys::stat::Mode;
use nix::unistd::UnlinkatFlags;
use sha2::{Digest, Sha256};

use super::lock::{self, open_regular, MtaLocks};
use super::update;
#[cfg(test)]
use super::update::Stop;
use super::{parse, parse_file, still_named, MboxMaildrop, MboxStore};
use crate::store::{MessageInfo, StoreError};

/// The most quarantined messages listed for one user.
pub const MAX_LISTED: usize = 10_000;
/// What the name of a copy being written starts with (no UIDL's name
/// does: see [`encode`]).
const TEMP_PREFIX: &str = ".new-";
/// Copy buffer.
const CHUNK: usize = 1 << 20;

/// Checks `store.mbox.quarantine_dir` against the spool path template:
/// absolute, without `..`, and neither the spool directory, nor inside
/// it, nor above it.
pub fn check_quarantine_dir(template: &str, dir: &Path) -> Result<(), String> {
    if !dir.is_absolute() {
        return Err("must be an absolute path, e.g. /var/lib/mailbag/quarantine".into());
    }
    if dir.components().any(|c| c == Component::ParentDir) {
        return Err("must not contain '..'".into());
    }
    let spool_dir = Path::new(template).parent().unwrap_or(Path::new("/"));
    if dir.starts_with(spool_dir) || spool_dir.starts_with(dir) {
        return Err(format!(
            "must be outside the spool directory {}, which the MTA (and on some systems \
             every user) writes, and not above it (a user's quarantine would be it); \
             e.g. /var/lib/mailbag/quarantine",
            spool_dir.display()
        ));
    }
    Ok(())
}

/// A UIDL as a file name: letters, digits, `-`, `_` and a `.` that is not
/// the first octet as they are, every other octet as `%XX`. Never `.`,
/// `..`, empty, or holding `/`; never starting with `.`.
pub(crate) fn encode(uid: &str) -> String {
    use std::fmt::Write;
    let mut out = String::with_capacity(uid.len() * 3);
    for (i, b) in uid.bytes().enumerate() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || (b == b'.' && i > 0) {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// The UIDL a file name stands for, when it is one that [`encode`] makes.
pub(crate) fn decode(name: &[u8]) -> Option<String> {
    let mut out = Vec::with_capacity(name.len());
    let mut i = 0;
    while i < name.len() {
        if name[i] == b'%' {
            let hex = std::str::from_utf8(name.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(name[i]);
            i += 1;
        }
    }
    let uid = String::from_utf8(out).ok()?;
    (is_uidl(&uid) && encode(&uid).as_bytes() == name).then_some(uid)
}

/// Whether `uid` can be a UIDL (RFC 1939: 1 to 70 octets of 0x21..=0x7E).
fn is_uidl(uid: &str) -> bool {
    (1..=70).contains(&uid.len()) && uid.bytes().all(|b| (0x21..=0x7e).contains(&b))
}

/// One message in a user's quarantine.
#[derive(Debug, Clone)]
pub struct MboxQuarantined {
    /// Its UIDL, the one it had in the spool.
    pub uid: String,
    /// Its size with CRLF line endings.
    pub size: u64,
    /// The spool holds the same message too: a quarantine or release
    /// that stopped half-way.
    pub in_spool: bool,
    name: OsString,
}

/// What `release` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Released {
    /// Appended to the spool; the UIDL it has there now (the one it had,
    /// unless another message shares its `From_` line and headers).
    Appended(String),
    /// The spool still held the same message (a quarantine or release
    /// that stopped half-way): only the copy was removed.
    WasInSpool,
}

/// A user's spool under the session lock, for the administrator.
#[derive(Debug)]
pub struct MboxAdmin {
    drop: MboxMaildrop,
    base: Option<PathBuf>,
    path: PathBuf,
    /// The user name, which names the quarantine directory: one path
    /// component by the name rule (`auth::name`), not starting with `.`.
    user: OsString,
}

impl MboxStore {
    /// Takes `user`'s session lock ([`StoreError::Locked`] while a POP3
    /// session holds it), finishes an interrupted UPDATE, and reads the
    /// snapshot, as a login does.
    pub fn open_admin(&self, user: &str) -> Result<MboxAdmin, StoreError> {
        let (dir, name) = self.spool(user)?;
        let path = dir.join(&name);
        let drop = MboxMaildrop::open(&dir, name, self.locks.clone())?;
        Ok(MboxAdmin {
            drop,
            base: self.quarantine.clone(),
            path,
            user: OsString::from(user),
        })
    }
}

fn not_configured() -> StoreError {
    StoreError::Permanent(
        "store.mbox.quarantine_dir is not set: set it to a directory outside the spool \
         directory that the server's user may create (e.g. /var/lib/mailbag/quarantine); \
         nothing was done"
            .into(),
    )
}

impl MboxAdmin {
    /// The spool's path.
    pub fn spool(&self) -> &Path {
        &self.path
    }

    /// The snapshot, in message-number order.
    pub fn messages(&self) -> &[MessageInfo] {
        &self.drop.infos
    }

    /// The maildrop, to read messages through the [`crate::store::Maildrop`]
    /// trait.
    pub fn maildrop(&mut self) -> &mut MboxMaildrop {
        &mut self.drop
    }

    /// The 0-based index of the message with this UIDL.
    pub fn index_of(&self, uid: &str) -> Option<usize> {
        self.drop.infos.iter().position(|m| m.uid == uid)
    }

    /// Where crash tests stop.
    #[cfg(test)]
    pub(crate) fn stop_at(&mut self, stop: Stop) {
        self.drop.stop = stop;
    }

    /// The user's quarantine directory, opened (with `create`, made)
    /// without following a symlink; `None` when it does not exist.
    fn user_dir(&self, create: bool) -> Result<Option<OwnedFd>, StoreError> {
        let base_path = self.base.as_ref().ok_or_else(not_configured)?;
        if create {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(base_path)?;
        }
        let base = match nix::fcntl::open(
            base_path.as_path(),
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) if !create => return Ok(None),
            Err(Errno::ENOTDIR) => {
                return Err(StoreError::Permanent(format!(
                    "store.mbox.quarantine_dir {} is not a directory",
                    base_path.display()
                )))
            }
            Err(e) => return Err(io::Error::from(e).into()),
        };
        let (b, s) = (
            nix::sys::stat::fstat(base.as_fd()).map_err(io::Error::from)?,
            nix::sys::stat::fstat(self.drop.dir.as_fd()).map_err(io::Error::from)?,
        );
        if (b.st_dev, b.st_ino) == (s.st_dev, s.st_ino) {
            return Err(StoreError::Permanent(format!(
                "store.mbox.quarantine_dir {} is the spool directory: choose another; nothing was done",
                base_path.display()
            )));
        }
        // Checked by the name rule already (`MboxStore::spool`); kept
        // here as this function's own guarantee.
        let name = self.user.as_os_str();
        if name.is_empty()
            || name.as_bytes().first() == Some(&b'.')
            || name.as_bytes().contains(&b'/')
        {
            return Err(StoreError::Permanent(
                "a user name that is not one path component has no quarantine".into(),
            ));
        }
        let shown = || base_path.join(name).display().to_string();
        let mut created = false;
        if create {
            match nix::sys::stat::mkdirat(base.as_fd(), name, Mode::from_bits_truncate(0o700)) {
                Ok(()) => created = true,
                Err(Errno::EEXIST) => {}
                Err(e) => return Err(io::Error::from(e).into()),
            }
        }
        let dir = match nix::fcntl::openat(
            base.as_fd(),
            name,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        ) {
            Ok(fd) => fd,
            Err(Errno::ENOENT) if !create => return Ok(None),
            Err(Errno::ELOOP | Errno::ENOTDIR) => {
                return Err(StoreError::Permanent(format!(
                    "{} is not a directory (a symlink is refused); nothing was done",
                    shown()
                )))
            }
            Err(e) => return Err(io::Error::from(e).into()),
        };
        let st = nix::sys::stat::fstat(dir.as_fd()).map_err(io::Error::from)?;
        if (st.st_dev, st.st_ino) == (s.st_dev, s.st_ino) {
            return Err(StoreError::Permanent(format!(
                "{} is the spool directory: store.mbox.quarantine_dir must not be above it; \
                 nothing was done",
                shown()
            )));
        }
        if st.st_uid != nix::unistd::geteuid().as_raw() || st.st_mode & 0o022 != 0 {
            return Err(StoreError::Permanent(format!(
                "{} belongs to uid {} with mode {:04o}: the quarantine must be the server's \
                 user's alone (mode 0700); nothing was done",
                shown(),
                st.st_uid,
                st.st_mode & 0o7777
            )));
        }
        if created {
            update::sync_dir(base.as_fd())?;
        }
        Ok(Some(dir))
    }

    /// The messages in the user's quarantine, by UIDL (at most
    /// [`MAX_LISTED`]). A file that is not one mbox message of a UIDL's
    /// name, or not a regular file, is not listed.
    pub fn quarantined(&self) -> Result<Vec<MboxQuarantined>, StoreError> {
        if self.base.is_none() {
            return Ok(Vec::new());
        }
        let Some(dir) = self.user_dir(false)? else {
            return Ok(Vec::new());
        };
        let mut listing = nix::dir::Dir::openat(
            dir.as_fd(),
            ".",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(io::Error::from)?;
        let mut names = Vec::new();
        for dirent in listing.iter() {
            let dirent = dirent.map_err(io::Error::from)?;
            let name = dirent.file_name().to_bytes();
            if let Some(uid) = decode(name) {
                names.push((uid, OsStr::from_bytes(name).to_os_string()));
                if names.len() >= MAX_LISTED {
                    break;
                }
            }
        }
        names.sort();
        let mut found = Vec::with_capacity(names.len());
        for (uid, name) in names {
            let entry = match open_copy(dir.as_fd(), &name) {
                Ok((_, entry)) => entry,
                Err(StoreError::Permanent(_) | StoreError::Vanished) => continue,
                Err(e) => return Err(e),
            };
            let in_spool = match self.index_of(&uid) {
                Some(i) => self.same_as_spool(i, dir.as_fd(), &name)?,
                None => false,
            };
            found.push(MboxQuarantined {
                uid,
                size: entry.size,
                in_spool,
                name,
            });
        }
        Ok(found)
    }

    /// A quarantined message's octets (without its `From_` line), opened
    /// relative to the quarantine directory, never through a symlink.
    pub fn open_quarantined(&self, q: &MboxQuarantined) -> Result<impl Read, StoreError> {
        let dir = self.user_dir(false)?.ok_or(StoreError::Vanished)?;
        let (mut file, entry) = open_copy(dir.as_fd(), &q.name)?;
        file.seek(io::SeekFrom::Start(entry.start))?;
        Ok(file.take(entry.end - entry.start))
    }

    /// Whether message `index` of the spool is, octet for octet, the copy
    /// `name` in `dir`.
    fn same_as_spool(
        &self,
        index: usize,
        dir: BorrowedFd<'_>,
        name: &OsStr,
    ) -> Result<bool, StoreError> {
        let (Some(place), Some(spool)) = (self.drop.places.get(index), &self.drop.file) else {
            return Ok(false);
        };
        let (copy, entry) = open_copy(dir, name)?;
        Ok(same(spool, place.from..place.end, &copy, 0..entry.end)?)
    }

    /// Moves message `index` (0-based) into the quarantine, crash-safe
    /// (see the module documentation). Returns its UIDL.
    pub fn quarantine(self, index: usize) -> Result<String, StoreError> {
        let uid = self
            .drop
            .infos
            .get(index)
            .ok_or(StoreError::Vanished)?
            .uid
            .clone();
        let dir = self
            .user_dir(true)?
            .ok_or_else(|| StoreError::Permanent("the quarantine was not created".into()))?;
        let name = OsString::from(encode(&uid));
        let place = self.drop.places[index].clone();
        let stop = self.drop.stop;
        let len = self.drop.len;
        self.drop.rewrite_without(&[index], |spool| {
            // A spool with holes is not rewritten: refused before a copy
            // is made, so the message is not left in both places.
            update::no_holes(spool, len)?;
            let core = place.from..place.end;
            match open_copy(dir.as_fd(), &name) {
                // Left by a quarantine that stopped half-way.
                Ok((copy, entry)) => {
                    if !same(spool, core, &copy, 0..entry.end)? {
                        return Err(StoreError::Permanent(format!(
                            "another message with the UIDL {uid} is in quarantine already; \
                             nothing was done"
                        )));
                    }
                }
                Err(StoreError::Vanished) => write_copy(dir.as_fd(), &name, spool, core)?,
                Err(e) => return Err(e),
            }
            #[cfg(test)]
            if stop == Stop::AfterQuarantineCopy {
                return Err(StoreError::Temporary(io::Error::other("stopped (test)")));
            }
            let _ = stop;
            Ok(())
        })?;
        Ok(uid)
    }

    /// Puts the quarantined message with this UIDL back at the end of the
    /// spool, crash-safe (see the module documentation).
    pub fn release(self, uid: &str) -> Result<Released, StoreError> {
        let missing = || {
            StoreError::Permanent(format!(
                "no quarantined message has the UIDL {uid}; nothing was done"
            ))
        };
        if !is_uidl(uid) {
            return Err(missing());
        }
        let dir = self.user_dir(false)?.ok_or_else(missing)?;
        let name = OsString::from(encode(uid));
        let (copy, entry) = match open_copy(dir.as_fd(), &name) {
            Err(StoreError::Vanished) => return Err(missing()),
            other => other?,
        };
        // Another message may have taken this UIDL since (the second of
        // two with the same `From_` line and headers becomes the first's
        // when that one leaves): appended all the same, it gets the next
        // free suffix, which `Released::Appended` says.
        if let Some(i) = self.index_of(uid) {
            if self.same_as_spool(i, dir.as_fd(), &name)? {
                remove(dir.as_fd(), &name)?;
                return Ok(Released::WasInSpool);
            }
        }
        self.append(&copy, 0..entry.end)?;
        #[cfg(test)]
        if self.drop.stop == Stop::AfterReleaseAppend {
            return Ok(Released::WasInSpool);
        }
        remove(dir.as_fd(), &name)?;
        let mut entries = self.drop.entries.clone();
        entries.push(entry);
        let now = parse::uidls(&entries).pop().unwrap_or_default();
        Ok(Released::Appended(now))
    }

    /// Appends `range` of `copy` (a `From_` line and a message) to the
    /// spool as an MTA does: under the MTA locks, after an empty line,
    /// with an empty line after it, synced; cut back on failure.
    fn append(&self, copy: &File, range: Range<u64>) -> Result<(), StoreError> {
        let d = &self.drop;
        let dir = d.dir.as_fd();
        let file = open_regular(dir, &d.name, OFlag::O_RDWR | OFlag::O_CREAT, 0o600)?
            .ok_or_else(|| StoreError::Permanent("spool vanished".into()))?;
        lock::single_name(&file, &d.name)?;
        let locks = MtaLocks::take(dir, &d.name, Some(&file), &d.locks, true)?;
        if !still_named(&d.dir, &d.name, &file)? {
            return Err(StoreError::Temporary(io::Error::other(
                "the spool was replaced while it was locked; nothing was done",
            )));
        }
        let len = file.metadata()?.len();
        let mut tail = [0u8; 2];
        let have = len.min(2) as usize;
        file.read_exact_at(&mut tail[..have], len - have as u64)?;
        let prefix: &[u8] = match (len, &tail[..have]) {
            (0, _) | (_, b"\n\n") => b"",
            (_, [.., b'\n']) => b"\n",
            _ => b"\n\n",
        };
        let written = (|| -> io::Result<()> {
            file.write_all_at(prefix, len)?;
            let at = copy_range(copy, range, &file, len + prefix.len() as u64)?;
            file.write_all_at(b"\n", at)?;
            file.sync_data()
        })();
        if let Err(e) = written {
            let _ = file.set_len(len).and_then(|()| file.sync_data());
            return Err(e.into());
        }
        locks.release();
        Ok(())
    }
}

/// Opens the copy `name` in `dir`: a regular file with one name, holding
/// one mbox message and nothing else. Missing: [`StoreError::Vanished`].
fn open_copy(dir: BorrowedFd<'_>, name: &OsStr) -> Result<(File, parse::Entry), StoreError> {
    let file = open_regular(dir, name, OFlag::O_RDONLY, 0)?.ok_or(StoreError::Vanished)?;
    lock::single_name(&file, name)?;
    let len = file.metadata()?.len();
    let (mut entries, junk) = parse_file(&file, len)?;
    if entries.len() != 1 || junk != 0 {
        return Err(StoreError::Permanent(format!(
            "{} in the quarantine is not one mbox message",
            String::from_utf8_lossy(name.as_bytes())
        )));
    }
    Ok((file, entries.remove(0)))
}

/// Writes `range` of `spool` (a `From_` line and a message, the last line
/// given its line feed) and an empty line as the copy `name` in `dir`:
/// under a temporary name, synced, renamed, the directory synced.
fn write_copy(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    spool: &File,
    range: Range<u64>,
) -> Result<(), StoreError> {
    let mut temp = OsString::from(TEMP_PREFIX);
    temp.push(name);
    // What a crashed quarantine left, or whatever else holds the name.
    match nix::unistd::unlinkat(dir, temp.as_os_str(), UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(Errno::ENOENT) => {}
        Err(e) => return Err(io::Error::from(e).into()),
    }
    let file = open_regular(
        dir,
        &temp,
        OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_EXCL,
        0o600,
    )?
    .ok_or_else(|| StoreError::Permanent("quarantine copy vanished".into()))?;
    let written = (|| -> io::Result<()> {
        let at = copy_range(spool, range, &file, 0)?;
        file.write_all_at(b"\n", at)?;
        file.sync_all()
    })();
    let renamed = written.map_err(StoreError::from).and_then(|()| {
        match nix::fcntl::renameat2(
            dir,
            temp.as_os_str(),
            dir,
            name,
            RenameFlags::RENAME_NOREPLACE,
        ) {
            Ok(()) => Ok(()),
            Err(Errno::EEXIST) => Err(StoreError::Permanent(format!(
                "{} appeared in the quarantine meanwhile; nothing was done",
                String::from_utf8_lossy(name.as_bytes())
            ))),
            Err(e) => Err(io::Error::from(e).into()),
        }
    });
    if let Err(e) = renamed {
        let _ = nix::unistd::unlinkat(dir, temp.as_os_str(), UnlinkatFlags::NoRemoveDir);
        return Err(e);
    }
    update::sync_dir(dir)?;
    Ok(())
}

/// Removes the copy `name` from `dir`, durably.
fn remove(dir: BorrowedFd<'_>, name: &OsStr) -> Result<(), StoreError> {
    nix::unistd::unlinkat(dir, name, UnlinkatFlags::NoRemoveDir).map_err(io::Error::from)?;
    update::sync_dir(dir)?;
    Ok(())
}

/// Copies `range` of `src` to `dst` at `at`, adding a line feed when the
/// range does not end in one; returns where it ended.
fn copy_range(src: &File, range: Range<u64>, dst: &File, mut at: u64) -> io::Result<u64> {
    let mut last = None;
    feed(src, range, |chunk| {
        dst.write_all_at(chunk, at)?;
        at += chunk.len() as u64;
        last = chunk.last().copied();
        Ok(())
    })?;
    if last != Some(b'\n') {
        dst.write_all_at(b"\n", at)?;
        at += 1;
    }
    Ok(at)
}

/// Whether two ranges hold the same `From_` line and message, a missing
/// last line feed counted as present (the copy has one).
fn same(a: &File, ra: Range<u64>, b: &File, rb: Range<u64>) -> io::Result<bool> {
    Ok(digest(a, ra)? == digest(b, rb)?)
}

fn digest(file: &File, range: Range<u64>) -> io::Result<([u8; 32], u64)> {
    let mut sum = Sha256::new();
    let mut len = range.end - range.start;
    let mut last = None;
    feed(file, range, |chunk| {
        sum.update(chunk);
        last = chunk.last().copied();
        Ok(())
    })?;
    if last != Some(b'\n') {
        sum.update(b"\n");
        len += 1;
    }
    Ok((sum.finalize().into(), len))
}

/// Reads `range` of `file` in chunks.
fn feed(
    file: &File,
    range: Range<u64>,
    mut f: impl FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<()> {
    let mut buf = vec![0u8; CHUNK.min((range.end - range.start) as usize)];
    let mut at = range.start;
    while at < range.end {
        let n = ((range.end - at) as usize).min(buf.len());
        file.read_exact_at(&mut buf[..n], at)?;
        f(&buf[..n])?;
        at += n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
