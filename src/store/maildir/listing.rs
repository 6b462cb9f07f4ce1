//! The listing cache: the names in new/ and cur/ as last listed, so that
//! a login to a large Maildir that has not changed needs no directory
//! scan (100,000 entries cost tens of milliseconds of kernel time).
//!
//! `<maildir>/mailbag.listing` holds the mtimes of new/ and cur/, the
//! time of the listing, and the names. It is trusted only while both
//! directories still have exactly those mtimes *and* the listing was taken
//! at least [`SETTLE`] after their last change: file times have a coarse
//! tick, so a change in the same tick as the listing could leave the mtime
//! as it was; a change after a settled listing always moves it. Anything
//! else (a different mtime, a torn or foreign file, a count that does not
//! match) means the directories are listed again. Like the size cache, it
//! is untrusted input: it can only name files, which are then opened with
//! the usual checks, and a missing one is a vanished message.

use std::fs;
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The cache file, beside the lock file.
pub(super) const FILE: &str = "mailbag.listing";
const HEADER: &str = "mailbag-listing 1";
/// How long after the directories' last change a listing must be taken
/// to be trusted.
pub(super) const SETTLE: Duration = Duration::from_secs(2);

/// The modification times of new/ and cur/, in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Stamp {
    new: i128,
    cur: i128,
}

fn mtime_ns(path: &Path) -> io::Result<i128> {
    let m = fs::metadata(path)?;
    Ok(i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()))
}

fn now_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128)
}

impl Stamp {
    /// The directories' times now.
    pub(super) fn read(maildir: &Path) -> io::Result<Stamp> {
        Ok(Stamp {
            new: mtime_ns(&maildir.join("new"))?,
            cur: mtime_ns(&maildir.join("cur"))?,
        })
    }

    fn settled_before(self, listed_ns: i128) -> bool {
        listed_ns - self.new.max(self.cur) >= SETTLE.as_nanos() as i128
    }
}

/// The cached names (`(in_cur, name)`), when the cache is still true for
/// directories stamped `now`.
pub(super) fn load(maildir: &Path, now: Stamp) -> Option<Vec<(bool, Vec<u8>)>> {
    let bytes = fs::read(maildir.join(FILE)).ok()?;
    let mut lines = bytes.split(|&b| b == b'\n');
    if lines.next()? != HEADER.as_bytes() {
        return None;
    }
    let numbers = |line: &[u8]| -> Option<Vec<i128>> {
        std::str::from_utf8(line)
            .ok()?
            .split(' ')
            .map(|n| n.parse().ok())
            .collect()
    };
    let head = numbers(lines.next()?)?;
    let [new, cur, listed, count] = head[..] else {
        return None;
    };
    if (Stamp { new, cur }) != now || !now.settled_before(listed) {
        return None;
    }
    let count = usize::try_from(count).ok()?;
    let mut names = Vec::with_capacity(count.min(1 << 20));
    let mut ended = false;
    for line in lines {
        match line {
            _ if ended => {
                // Only the empty piece after the final newline may follow.
                if !line.is_empty() {
                    return None;
                }
            }
            [b'C', b' ', name @ ..] if !name.is_empty() => names.push((true, name.to_vec())),
            [b'N', b' ', name @ ..] if !name.is_empty() => names.push((false, name.to_vec())),
            // The trailer: a file cut short anywhere has none.
            b"." => ended = true,
            _ => return None,
        }
    }
    (ended && names.len() == count).then_some(names)
}

/// Records a listing taken at `listed` (before the scan began) of
/// directories stamped `stamp`, when it can be trusted later: names with a
/// newline, or directories changed too recently, are not cached. A
/// failure to write only costs the next login a scan.
pub(super) fn store<'a>(
    maildir: &Path,
    stamp: Stamp,
    listed: i128,
    names: impl Iterator<Item = (bool, &'a [u8])> + Clone,
) {
    if !stamp.settled_before(listed) || names.clone().any(|(_, n)| n.contains(&b'\n')) {
        let _ = fs::remove_file(maildir.join(FILE));
        return;
    }
    let count = names.clone().count();
    let mut out = Vec::with_capacity(64 + count * 48);
    let _ = writeln!(
        out,
        "{HEADER}\n{} {} {listed} {count}",
        stamp.new, stamp.cur
    );
    for (in_cur, name) in names {
        out.extend_from_slice(if in_cur { b"C " } else { b"N " });
        out.extend_from_slice(name);
        out.push(b'\n');
    }
    out.extend_from_slice(b".\n");
    let tmp = maildir.join(format!("{FILE}.tmp.{}", std::process::id()));
    // No fsync: a cache torn by a crash fails its count check and is
    // ignored.
    if fs::write(&tmp, &out).is_err() || fs::rename(&tmp, maildir.join(FILE)).is_err() {
        let _ = fs::remove_file(&tmp);
    }
}

/// The time a listing starts, for [`store`].
pub(super) fn listing_time() -> i128 {
    now_ns()
}

/// A name as the cache keeps it.
pub(super) fn bytes(name: &std::ffi::OsStr) -> &[u8] {
    name.as_bytes()
}
