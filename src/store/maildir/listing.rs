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
//! match, a name that is not one plain file name) means the directories
//! are listed again. Like every file in a Maildir it is the mailbox
//! owner's input: [`parse`] accepts a name only as one path component,
//! and such a name is only ever opened, renamed or unlinked relative to
//! the descriptor of new/ or cur/ (see `dirs.rs`).

use std::io::Write;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::dirs::{self, Dirs};
use super::name;

/// The cache file, beside the lock file.
pub(super) const FILE: &str = "mailbag.listing";
const HEADER: &str = "mailbag-listing 1";
/// How long after the directories' last change a listing must be taken
/// to be trusted.
pub(super) const SETTLE: Duration = Duration::from_secs(2);
/// The largest listing read: about a million names. A larger file is
/// not one mailbag wrote, and is ignored rather than read into memory.
pub(super) const MAX_OCTETS: u64 = 64 << 20;
/// The most names a listing is trusted with. Every name becomes an entry
/// of the snapshot, some hundred octets of memory at each login; a name
/// costs four octets of listing, so without this bound a 64 MiB file of
/// short made-up names would make each login allocate gigabytes. A
/// Maildir with more messages than this is scanned at every login.
pub(super) const MAX_NAMES: usize = 1 << 20;

/// The modification times of new/ and cur/, in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Stamp {
    new: i128,
    cur: i128,
}

fn mtime_ns(dir: std::os::fd::BorrowedFd<'_>) -> std::io::Result<i128> {
    let st = nix::sys::stat::fstat(dir)?;
    Ok(i128::from(st.st_mtime) * 1_000_000_000 + i128::from(st.st_mtime_nsec))
}

fn now_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128)
}

impl Stamp {
    /// The directories' times now.
    pub(super) fn read(dirs: &Dirs) -> std::io::Result<Stamp> {
        Ok(Stamp {
            new: mtime_ns(dirs.new.as_fd())?,
            cur: mtime_ns(dirs.cur.as_fd())?,
        })
    }

    fn settled_before(self, listed_ns: i128) -> bool {
        listed_ns - self.new.max(self.cur) >= SETTLE.as_nanos() as i128
    }
}

/// What a listing file says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    /// The mtime of new/ when listed, in nanoseconds.
    pub new: i128,
    /// The mtime of cur/ when listed, in nanoseconds.
    pub cur: i128,
    /// When the listing was taken, in nanoseconds.
    pub listed: i128,
    /// `(in_cur, name)`, each name one path component that is not a
    /// dotfile and holds no newline.
    pub names: Vec<(bool, Vec<u8>)>,
}

/// Parses a listing file. `None` for anything but a complete, well-formed
/// listing whose every name is one file name as readdir could return it:
/// the file is the mailbox owner's, and a name like `../../x` would
/// otherwise be opened, renamed or unlinked outside the Maildir.
pub fn parse(bytes: &[u8]) -> Option<Listing> {
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
    let count = usize::try_from(count).ok()?;
    // Every name takes at least three octets ("N x"); a larger count is a
    // lie, and must not size an allocation.
    if count > bytes.len() / 3 || count > MAX_NAMES {
        return None;
    }
    let mut names = Vec::with_capacity(count);
    let mut ended = false;
    for line in lines {
        match line {
            _ if ended => {
                // Only the empty piece after the final newline may follow.
                if !line.is_empty() {
                    return None;
                }
            }
            [kind @ (b'C' | b'N'), b' ', name @ ..] if name::is_message_name(name) => {
                if names.len() == count {
                    return None;
                }
                names.push((*kind == b'C', name.to_vec()));
            }
            // The trailer: a file cut short anywhere has none.
            b"." => ended = true,
            _ => return None,
        }
    }
    (ended && names.len() == count).then_some(Listing {
        new,
        cur,
        listed,
        names,
    })
}

/// The cached names (`(in_cur, name)`), when the cache is still true for
/// directories stamped `now`. A cache that cannot be read is no cache.
pub(super) fn load(dirs: &Dirs, now: Stamp) -> Option<Vec<(bool, Vec<u8>)>> {
    let bytes = match dirs::read_small(dirs.maildir.as_fd(), FILE, MAX_OCTETS) {
        Ok(Some(bytes)) => bytes,
        Ok(None) => return None,
        Err(e) => {
            super::warn_once(&dirs.path, "listing cache cannot be read; ignored", &e);
            return None;
        }
    };
    let listing = parse(&bytes)?;
    if (Stamp {
        new: listing.new,
        cur: listing.cur,
    }) != now
        || !now.settled_before(listing.listed)
    {
        return None;
    }
    Some(listing.names)
}

/// Records a listing taken at `listed` (before the scan began) of
/// directories stamped `stamp`, when it can be trusted later: names with a
/// newline, or directories changed too recently, are not cached. A
/// failure to write only costs the next login a scan.
pub(super) fn store<'a>(
    dirs: &Dirs,
    stamp: Stamp,
    listed: i128,
    names: impl Iterator<Item = (bool, &'a [u8])> + Clone,
) {
    let dir = dirs.maildir.as_fd();
    if !stamp.settled_before(listed)
        || names.clone().count() > MAX_NAMES
        || names.clone().any(|(_, n)| n.contains(&b'\n'))
    {
        let _ = dirs::unlink(dir, std::ffi::OsStr::new(FILE));
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
    // No fsync: a cache torn by a crash fails its count check and is
    // ignored.
    if let Err(e) = dirs::replace(dir, FILE, &out, false) {
        super::warn_once(&dirs.path, "listing cache cannot be written", &e);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn listing(names: &[&[u8]]) -> Vec<u8> {
        let mut out = format!("{HEADER}\n1 2 3 {}\n", names.len()).into_bytes();
        for name in names {
            out.extend_from_slice(name);
            out.push(b'\n');
        }
        out.extend_from_slice(b".\n");
        out
    }

    #[test]
    fn only_plain_file_names_are_listed() {
        let good = parse(&listing(&[
            b"N 1.a,S=1,W=2",
            b"C 2.b:2,S",
            b"N odd \xff name",
        ]))
        .unwrap();
        assert_eq!((good.new, good.cur, good.listed), (1, 2, 3));
        assert_eq!(
            good.names,
            vec![
                (false, b"1.a,S=1,W=2".to_vec()),
                (true, b"2.b:2,S".to_vec()),
                (false, b"odd \xff name".to_vec()),
            ]
        );
        let long = [&b"N "[..], &[b'x'; 256]].concat();
        for bad in [
            &b"C ../../../../etc/passwd"[..],
            b"N ../../bob/Maildir/new/1.x",
            b"N /etc/passwd",
            b"N a/b",
            b"C ..",
            b"C .",
            b"N .hidden",
            b"N a\0b",
            b"N ",
            b"X 1.a",
            &long,
        ] {
            assert_eq!(parse(&listing(&[b"N 1.a", bad])), None, "{bad:?}");
        }
        // Counts that do not match, or that no file could hold.
        let mut wrong = listing(&[b"N 1.a"]);
        wrong[HEADER.len() + 7] = b'2';
        assert_eq!(parse(&wrong), None);
        assert_eq!(
            parse(format!("{HEADER}\n1 2 3 99999999999999\n.\n").as_bytes()),
            None
        );
        assert_eq!(parse(b""), None);
    }
}
