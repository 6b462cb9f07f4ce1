//! UPDATE of an mbox spool: the kept messages, and whatever was appended
//! since the snapshot, rewritten in place, crash-safe.
//!
//! In place, because the spool's inode, owner, group and mode must stay:
//! Postfix `local(8)` refuses to deliver into a spool whose owner is not
//! the recipient, and a process other than root cannot give a new file
//! away. So the file is overwritten from offset 0 and truncated, behind a
//! journal that makes every moment of it recoverable:
//!
//! 1. the new content (`N` octets) goes into `<spool>.mailbag-journal.new`
//!    with a header (the spool's device and inode, its length `L` now,
//!    `N`, and a SHA-256 of the spool's octets `N..L`) and a SHA-256 of it
//!    all at the end; it is synced and renamed to `<spool>.mailbag-journal`,
//!    and the directory is synced. A crash before the rename leaves the
//!    spool untouched (a `.new` file is removed at the next open);
//! 2. the spool's octets `0..N` are overwritten from the journal, the
//!    spool is truncated to `N` and synced;
//! 3. the journal is removed and the directory synced.
//!
//! A crash in step 2 or 3 leaves a whole journal. The next open (under the
//! same locks) finishes it before reading the spool: the journal's content
//! plus whatever the MTA appended since. Appended octets start at `L` when
//! the truncation had not happened (octets `N..L` are then still the old
//! ones, which the header's hash recognises), else at `N`. The result is
//! written through a new journal in the same way, so a crash during the
//! recovery is recovered too. A journal that does not check out (a crash in
//! step 1, or not one mailbag wrote, or longer than the spool) is removed,
//! and the spool is left as it is: the spool is only ever written while a
//! whole journal exists.
//!
//! The spool directory's writers include the spool's owner: the journal is
//! created anew with `O_EXCL` (after unlinking whatever holds its name) and
//! applied from the descriptor it was written through, never reopened by
//! name; and a spool with holes (a sparse file) is not rewritten, as its
//! holes would be written out as zeros.
//!
//! A full disk fails step 1 (the journal is as large as the new content),
//! before the spool is touched. Step 2 writes only within the spool's
//! existing length, which needs no new space on the filesystems /var/mail
//! lives on.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::{FileExt, MetadataExt};

use nix::fcntl::OFlag;
use nix::unistd::UnlinkatFlags;
use sha2::{Digest, Sha256};

use super::lock::{beside, open_regular};
use crate::store::StoreError;

const MAGIC: &[u8; 16] = b"mailbag-mbox-j1\n";
/// MAGIC, device, inode, old length, new length, hash of the old tail.
const HEADER: u64 = 16 + 8 * 4 + 32;
const TRAILER: u64 = 32;
/// Copy buffer.
const CHUNK: usize = 1 << 20;

/// Where one part of the new content comes from.
#[derive(Debug, Clone)]
pub(crate) enum Piece {
    /// A range of the spool.
    Spool(Range<u64>),
    /// A range of the existing journal's data.
    Journal(Range<u64>),
}

/// Where a test stops the rewrite, as a crash would.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    Never,
    #[cfg(test)]
    BeforeRename,
    #[cfg(test)]
    AfterJournal,
    #[cfg(test)]
    MidOverwrite,
    #[cfg(test)]
    AfterTruncate,
    /// Not a crash: another file put under the journal's name right after
    /// the rename, then the rewrite goes on.
    #[cfg(test)]
    SwapJournal,
    /// `mailbag mailbox quarantine`: after the quarantine copy is
    /// durable, before the spool is touched.
    #[cfg(test)]
    AfterQuarantineCopy,
    /// `mailbag mailbox release`: after the message is appended to the
    /// spool, before its quarantine copy is removed.
    #[cfg(test)]
    AfterReleaseAppend,
}

fn journal_name(spool: &OsStr) -> std::ffi::OsString {
    beside(spool, ".mailbag-journal")
}

fn temp_name(spool: &OsStr) -> std::ffi::OsString {
    beside(spool, ".mailbag-journal.new")
}

/// Replaces the spool's content with `pieces`, crash-safe (see the module
/// documentation). The caller holds the MTA locks.
pub(crate) fn rewrite(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    spool: &File,
    pieces: &[Piece],
    stop: Stop,
) -> Result<(), StoreError> {
    rewrite_with(dir, name, spool, None, pieces, stop)
}

fn rewrite_with(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    spool: &File,
    old: Option<&File>,
    pieces: &[Piece],
    stop: Stop,
) -> Result<(), StoreError> {
    let meta = spool.metadata()?;
    let old_len = meta.len();
    let new_len: u64 = pieces
        .iter()
        .map(|p| match p {
            Piece::Spool(r) | Piece::Journal(r) => r.end - r.start,
        })
        .sum();
    if new_len > old_len {
        return Err(StoreError::Permanent(
            "mbox rewrite would grow the spool".into(),
        ));
    }
    no_holes(spool, old_len)?;
    let temp = temp_name(name);
    let journal = journal_name(name);
    // Whatever the spool's owner left under the temporary name (a hard
    // link to another file would otherwise be truncated and written) is
    // unlinked, and the journal is a new file of this process's own.
    match nix::unistd::unlinkat(dir, temp.as_os_str(), UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => return Err(io::Error::from(e).into()),
    }
    let file = open_regular(
        dir,
        &temp,
        OFlag::O_RDWR | OFlag::O_CREAT | OFlag::O_EXCL,
        0o600,
    )?
    .ok_or_else(|| StoreError::Permanent("journal vanished".into()))?;
    let written = (|| -> Result<(), StoreError> {
        let mut header = Vec::with_capacity(HEADER as usize);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&meta.dev().to_le_bytes());
        header.extend_from_slice(&meta.ino().to_le_bytes());
        header.extend_from_slice(&old_len.to_le_bytes());
        header.extend_from_slice(&new_len.to_le_bytes());
        header.extend_from_slice(&hash_range(spool, new_len..old_len)?);
        let mut sum = Sha256::new();
        sum.update(&header);
        file.write_all_at(&header, 0)?;
        let mut at = HEADER;
        for piece in pieces {
            let (src, range) = match piece {
                Piece::Spool(r) => (spool, r.clone()),
                Piece::Journal(r) => (
                    old.ok_or_else(|| StoreError::Permanent("no journal to copy from".into()))?,
                    r.start + HEADER..r.end + HEADER,
                ),
            };
            at = copy(src, range, &file, at, Some(&mut sum))?;
        }
        file.write_all_at(&sum.finalize(), at)?;
        file.sync_all()?;
        Ok(())
    })();
    if let Err(e) = written {
        let _ = nix::unistd::unlinkat(dir, temp.as_os_str(), UnlinkatFlags::NoRemoveDir);
        return Err(e);
    }
    #[cfg(test)]
    if stop == Stop::BeforeRename {
        return Ok(());
    }
    nix::fcntl::renameat(dir, temp.as_os_str(), dir, journal.as_os_str())
        .map_err(io::Error::from)?;
    sync_dir(dir)?;
    #[cfg(test)]
    if stop == Stop::AfterJournal {
        return Ok(());
    }
    #[cfg(test)]
    if stop == Stop::SwapJournal {
        let other = beside(name, ".other");
        let f = open_regular(dir, &other, OFlag::O_RDWR | OFlag::O_CREAT, 0o600)?
            .ok_or_else(|| StoreError::Permanent("vanished".into()))?;
        f.write_all_at(&vec![b'X'; (HEADER + new_len + TRAILER) as usize], 0)?;
        nix::fcntl::renameat(dir, other.as_os_str(), dir, journal.as_os_str())
            .map_err(io::Error::from)?;
    }
    // Applied from the descriptor written above: what the directory's
    // writers put under the journal's name since is never read.
    apply(dir, name, spool, &file, new_len, stop)
}

/// Step 2 and 3: the journal's data over the spool, then the journal goes.
fn apply(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    spool: &File,
    journal: &File,
    new_len: u64,
    stop: Stop,
) -> Result<(), StoreError> {
    #[cfg(test)]
    if stop == Stop::MidOverwrite {
        copy(journal, HEADER..HEADER + new_len / 2, spool, 0, None)?;
        return Ok(());
    }
    copy(journal, HEADER..HEADER + new_len, spool, 0, None)?;
    spool.set_len(new_len)?;
    spool.sync_all()?;
    #[cfg(test)]
    if stop == Stop::AfterTruncate {
        return Ok(());
    }
    let _ = stop;
    nix::unistd::unlinkat(
        dir,
        journal_name(name).as_os_str(),
        UnlinkatFlags::NoRemoveDir,
    )
    .map_err(io::Error::from)?;
    sync_dir(dir)?;
    Ok(())
}

/// Finishes a rewrite that a crash interrupted, if there is one; removes
/// what is left of one that never got as far as touching the spool.
/// Returns whether the spool was rewritten. The caller holds the MTA locks.
pub(crate) fn recover(dir: BorrowedFd<'_>, name: &OsStr, spool: &File) -> Result<bool, StoreError> {
    match nix::unistd::unlinkat(dir, temp_name(name).as_os_str(), UnlinkatFlags::NoRemoveDir) {
        Ok(()) | Err(nix::errno::Errno::ENOENT) => {}
        Err(e) => return Err(io::Error::from(e).into()),
    }
    let jname = journal_name(name);
    let journal = match open_regular(dir, &jname, OFlag::O_RDONLY, 0) {
        Ok(Some(journal)) => Some(journal),
        Ok(None) => return Ok(false),
        // A symlink or FIFO under the journal's name: not one mailbag
        // wrote, removed as such (left there, it would lock the user
        // out for good).
        Err(StoreError::Permanent(_)) => None,
        Err(e) => return Err(e),
    };
    let now = spool.metadata()?.len();
    no_holes(spool, now)?;
    let head = match &journal {
        Some(journal) => check(journal, spool)?,
        None => None,
    };
    let (Some(journal), Some(head)) = (journal, head) else {
        tracing::warn!(
            spool = %String::from_utf8_lossy(std::os::unix::ffi::OsStrExt::as_bytes(name)),
            "removed an mbox journal that does not check out; the spool is as it was"
        );
        nix::unistd::unlinkat(dir, jname.as_os_str(), UnlinkatFlags::NoRemoveDir)
            .map_err(io::Error::from)?;
        sync_dir(dir)?;
        return Ok(false);
    };
    let appended = if now >= head.old_len
        && hash_range(spool, head.new_len..head.old_len)? == head.tail_hash
    {
        head.old_len..now
    } else {
        // `check` made sure the spool is at least `new_len` long.
        head.new_len..now
    };
    if appended.is_empty() {
        apply(dir, name, spool, &journal, head.new_len, Stop::Never)?;
    } else {
        let pieces = [Piece::Journal(0..head.new_len), Piece::Spool(appended)];
        rewrite_with(dir, name, spool, Some(&journal), &pieces, Stop::Never)?;
    }
    Ok(true)
}

struct Head {
    old_len: u64,
    new_len: u64,
    tail_hash: [u8; 32],
}

/// The journal's header, when the whole journal checks out and is about
/// this spool.
fn check(journal: &File, spool: &File) -> Result<Option<Head>, StoreError> {
    let len = journal.metadata()?.len();
    if len < HEADER + TRAILER {
        return Ok(None);
    }
    let mut header = [0u8; HEADER as usize];
    journal.read_exact_at(&mut header, 0)?;
    let word = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&header[16 + 8 * i..24 + 8 * i]);
        u64::from_le_bytes(b)
    };
    let meta = spool.metadata()?;
    let (dev, ino, old_len, new_len) = (word(0), word(1), word(2), word(3));
    if &header[..16] != MAGIC
        || dev != meta.dev()
        || ino != meta.ino()
        || new_len > old_len
        // The journal holds the kept part of a spool at least as long,
        // so its hash costs no more than reading the spool.
        || new_len > meta.len()
        || Some(len) != new_len.checked_add(HEADER + TRAILER)
    {
        return Ok(None);
    }
    let mut sum = Sha256::new();
    sum.update(header);
    feed(journal, HEADER..HEADER + new_len, |b| sum.update(b))?;
    let mut trailer = [0u8; 32];
    journal.read_exact_at(&mut trailer, HEADER + new_len)?;
    if sum.finalize()[..] != trailer {
        return Ok(None);
    }
    let mut tail_hash = [0u8; 32];
    tail_hash.copy_from_slice(&header[48..80]);
    Ok(Some(Head {
        old_len,
        new_len,
        tail_hash,
    }))
}

/// Refuses a spool with holes in its first `len` octets: no mail program
/// writes them, and a rewrite would copy them out as real zeros into the
/// journal (space in the spool directory charged to the server, not to
/// the spool's owner) and hash them, at a cost set by the length alone.
pub(crate) fn no_holes(spool: &File, len: u64) -> Result<(), StoreError> {
    use nix::unistd::{lseek, Whence};
    match lseek(spool.as_fd(), 0, Whence::SeekHole) {
        Ok(hole) if u64::try_from(hole).unwrap_or(0) < len => Err(StoreError::Permanent(
            "the spool is a sparse file (it has holes): it is not rewritten; \
             nothing was deleted"
                .into(),
        )),
        _ => Ok(()),
    }
}

/// Reads `range` of `file` in chunks; a file shorter than the range is an
/// error.
fn feed(file: &File, range: Range<u64>, mut f: impl FnMut(&[u8])) -> io::Result<()> {
    let mut buf = vec![0u8; CHUNK.min((range.end - range.start) as usize)];
    let mut at = range.start;
    while at < range.end {
        let n = ((range.end - at) as usize).min(buf.len());
        file.read_exact_at(&mut buf[..n], at)?;
        f(&buf[..n]);
        at += n as u64;
    }
    Ok(())
}

fn hash_range(file: &File, range: Range<u64>) -> io::Result<[u8; 32]> {
    let mut sum = Sha256::new();
    feed(file, range, |b| sum.update(b))?;
    Ok(sum.finalize().into())
}

/// Copies `range` of `src` to `dst` at `at`; returns where it ended.
fn copy(
    src: &File,
    range: Range<u64>,
    dst: &File,
    mut at: u64,
    mut sum: Option<&mut Sha256>,
) -> io::Result<u64> {
    let mut result = Ok(());
    feed(src, range, |b| {
        if result.is_ok() {
            result = dst.write_all_at(b, at);
            if let Some(sum) = sum.as_deref_mut() {
                sum.update(b);
            }
            at += b.len() as u64;
        }
    })?;
    result.map(|()| at)
}

pub(crate) fn sync_dir(dir: BorrowedFd<'_>) -> io::Result<()> {
    nix::unistd::fsync(dir.as_fd()).map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::OwnedFd;

    fn setup(content: &[u8]) -> (tempfile::TempDir, OwnedFd, File) {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("alice"), content).unwrap();
        let dir: OwnedFd = File::open(t.path()).unwrap().into();
        let spool = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(t.path().join("alice"))
            .unwrap();
        (t, dir, spool)
    }

    /// A crash at every step, with and without a delivery appended before
    /// the recovery, ends with exactly the kept octets and the appended
    /// ones.
    #[test]
    fn every_crash_point_recovers_to_the_kept_and_appended_octets() {
        let old = b"From a\n\nkeep 1\n\nFrom b\n\ndelete\n\nFrom c\n\nkeep 2\n\n".to_vec();
        let kept = b"From a\n\nkeep 1\n\nFrom c\n\nkeep 2\n\n".to_vec();
        let pieces = [Piece::Spool(0..16), Piece::Spool(32..48)];
        assert_eq!([&old[0..16], &old[32..48]].concat(), kept);
        for stop in [
            Stop::BeforeRename,
            Stop::AfterJournal,
            Stop::MidOverwrite,
            Stop::AfterTruncate,
        ] {
            for appended in [
                &b""[..],
                b"From d\n\nnew\n\n",
                b"From d\n\nnew and longer message\n\n",
            ] {
                let (t, dir, spool) = setup(&old);
                rewrite(dir.as_fd(), OsStr::new("alice"), &spool, &pieces, stop).unwrap();
                let mut f = std::fs::OpenOptions::new()
                    .append(true)
                    .open(t.path().join("alice"))
                    .unwrap();
                io::Write::write_all(&mut f, appended).unwrap();
                let done = recover(dir.as_fd(), OsStr::new("alice"), &spool).unwrap();
                let got = std::fs::read(t.path().join("alice")).unwrap();
                let want = if stop == Stop::BeforeRename {
                    assert!(!done);
                    [&old[..], appended].concat()
                } else {
                    [&kept[..], appended].concat()
                };
                assert_eq!(
                    String::from_utf8_lossy(&got),
                    String::from_utf8_lossy(&want),
                    "{stop:?} {appended:?}"
                );
                let left: Vec<_> = std::fs::read_dir(t.path())
                    .unwrap()
                    .map(|e| e.unwrap().file_name())
                    .collect();
                assert_eq!(left, vec![std::ffi::OsString::from("alice")], "{stop:?}");
                // Nothing more to do afterwards.
                assert!(!recover(dir.as_fd(), OsStr::new("alice"), &spool).unwrap());
            }
        }
    }

    /// What the directory's writers put under the journal's name during
    /// the rewrite is never copied into the spool.
    #[test]
    fn the_journal_is_applied_from_the_file_written_not_from_its_name() {
        let old = b"From a\n\nkeep 1\n\nFrom b\n\ndelete\n\nFrom c\n\nkeep 2\n\n".to_vec();
        let kept = b"From a\n\nkeep 1\n\nFrom c\n\nkeep 2\n\n".to_vec();
        let (t, dir, spool) = setup(&old);
        let pieces = [Piece::Spool(0..16), Piece::Spool(32..48)];
        rewrite(
            dir.as_fd(),
            OsStr::new("alice"),
            &spool,
            &pieces,
            Stop::SwapJournal,
        )
        .unwrap();
        assert_eq!(std::fs::read(t.path().join("alice")).unwrap(), kept);
    }

    #[test]
    fn a_journal_that_does_not_check_out_is_removed_and_the_spool_kept() {
        let old = b"From a\n\nx\n\n".to_vec();
        for bad in [
            &b""[..],
            b"garbage",
            &[0u8; 200][..],
            b"mailbag-mbox-j1\n\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0",
        ] {
            let (t, dir, spool) = setup(&old);
            std::fs::write(t.path().join("alice.mailbag-journal"), bad).unwrap();
            assert!(!recover(dir.as_fd(), OsStr::new("alice"), &spool).unwrap());
            assert_eq!(std::fs::read(t.path().join("alice")).unwrap(), old);
            assert!(!t.path().join("alice.mailbag-journal").exists());
        }
        // A whole journal about another file is not applied either.
        let (t, dir, spool) = setup(&old);
        let (_t2, dir2, other) = setup(b"From z\n\nlonger content here\n\n");
        rewrite(
            dir2.as_fd(),
            OsStr::new("alice"),
            &other,
            &[Piece::Spool(0..3)],
            Stop::AfterJournal,
        )
        .unwrap();
        std::fs::copy(
            _t2.path().join("alice.mailbag-journal"),
            t.path().join("alice.mailbag-journal"),
        )
        .unwrap();
        assert!(!recover(dir.as_fd(), OsStr::new("alice"), &spool).unwrap());
        assert_eq!(std::fs::read(t.path().join("alice")).unwrap(), old);
    }
}
