//! The UPDATE record: what makes a POP3 UPDATE all or nothing across a
//! crash.
//!
//! Before the first deleted message is unlinked, the names of all of them
//! are written to `<maildir>/mailbag.update` (a temporary file, fsynced,
//! renamed into place, the Maildir fsynced). Then the messages are
//! unlinked, new/ and cur/ fsynced, and the record removed. A process
//! killed before the rename leaves nothing deleted; one killed after it
//! leaves a record, and the next open of the maildrop (under its lock,
//! before the snapshot) finishes the deletions first. Either way a client
//! sees all of its DELEs done or none.
//!
//! The record is the mailbox owner's input like every file in the Maildir:
//! each name must be one file name as readdir could return it, and
//! finishing a record only ever unlinks files in this Maildir's new/ and
//! cur/ (by base name, so that a message another program renamed since is
//! found too).
//!
//! Format: the line `mailbag-update 1`, then one line per message, `N ` or
//! `C ` (new/ or cur/) and the file name in lowercase hex, then a line `.`.
//! Hex keeps every possible name on one line.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;

use super::dirs::{self, Dirs};
use super::{name, Sub};

/// The record's file name in the Maildir.
pub(super) const FILE: &str = "mailbag.update";
const HEADER: &[u8] = b"mailbag-update 1\n";
/// The largest record written or read: about half a million deletions of
/// typical names in one UPDATE. A larger UPDATE is refused whole (nothing
/// deleted), and a larger file is not read into memory.
const MAX_OCTETS: u64 = 64 << 20;
/// The most deletions one record holds. Each name read costs some tens of
/// octets of memory (twice: the names and their bases), and a short one
/// takes five octets of record, so the octet bound alone would let a
/// record of made-up names cost a login over a gigabyte. A larger UPDATE
/// is refused whole, like one over [`MAX_OCTETS`].
const MAX_NAMES: usize = 1 << 20;

/// Parses a record: `(in_cur, name)` for each message, or `None` when the
/// file is not a complete, well-formed record whose every name is one
/// file name that could be a message.
pub fn parse(bytes: &[u8]) -> Option<Vec<(bool, Vec<u8>)>> {
    let rest = bytes.strip_prefix(HEADER)?;
    let mut names = Vec::new();
    let mut ended = false;
    for line in rest.split(|&b| b == b'\n') {
        match line {
            _ if ended => {
                if !line.is_empty() {
                    return None;
                }
            }
            b"." => ended = true,
            [kind @ (b'C' | b'N'), b' ', hex @ ..] => {
                let name = unhex(hex)?;
                if !name::is_message_name(&name) || names.len() == MAX_NAMES {
                    return None;
                }
                names.push((*kind == b'C', name));
            }
            _ => return None,
        }
    }
    ended.then_some(names)
}

fn unhex(hex: &[u8]) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) || hex.len() > 2 * name::MAX_NAME_OCTETS {
        return None;
    }
    let digit = |d: u8| match d {
        b'0'..=b'9' => Some(d - b'0'),
        b'a'..=b'f' => Some(d - b'a' + 10),
        _ => None,
    };
    hex.chunks(2)
        .map(|pair| Some(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}

/// The record for these messages.
pub fn encode<'a>(names: impl Iterator<Item = (bool, &'a [u8])>) -> Vec<u8> {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = HEADER.to_vec();
    for (in_cur, name) in names {
        out.extend_from_slice(if in_cur { b"C " } else { b"N " });
        for &b in name {
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0x0F)]);
        }
        out.push(b'\n');
    }
    out.extend_from_slice(b".\n");
    out
}

/// Makes the record of the messages about to be deleted durable.
pub(super) fn begin<'a>(
    dirs: &Dirs,
    names: impl Iterator<Item = (Sub, &'a OsStr)> + Clone,
) -> io::Result<()> {
    if names.clone().count() > MAX_NAMES {
        return Err(io::Error::other("too many deletions for one UPDATE record"));
    }
    let record = encode(names.map(|(sub, name)| (sub == Sub::Cur, name.as_bytes())));
    if record.len() as u64 > MAX_OCTETS {
        return Err(io::Error::other("too many deletions for one UPDATE record"));
    }
    dirs::replace(dirs.maildir.as_fd(), FILE, &record, true)
}

/// Removes the record once its deletions are done and durable.
pub(super) fn end(dirs: &Dirs) -> io::Result<()> {
    dirs::unlink(dirs.maildir.as_fd(), OsStr::new(FILE)).map(drop)
}

/// Finishes an UPDATE that a crash interrupted, if the Maildir holds a
/// record of one. The caller holds the maildrop lock. Returns how many
/// messages it removed.
pub(super) fn recover(dirs: &Dirs) -> io::Result<usize> {
    let Some(bytes) = dirs::read_small(dirs.maildir.as_fd(), FILE, MAX_OCTETS)? else {
        return Ok(0);
    };
    let Some(names) = parse(&bytes) else {
        // Not a record mailbag wrote (records are renamed into place
        // whole): nothing in it can be trusted to name a deletion.
        super::warn_once(
            &dirs.path,
            "malformed UPDATE record removed; nothing deleted",
            &FILE,
        );
        end(dirs)?;
        return Ok(0);
    };
    let bases: HashSet<Vec<u8>> = names
        .iter()
        .map(|(_, n)| name::parse(n).base.to_vec())
        .collect();
    let mut removed = 0;
    for sub in [Sub::New, Sub::Cur] {
        let dir = dirs.sub(sub);
        let here: Vec<OsString> = dirs::list_files(dir)?;
        for file in here {
            if bases.contains(name::parse(file.as_bytes()).base) && dirs::unlink(dir, &file)? {
                removed += 1;
            }
        }
    }
    dirs::sync(dirs.new.as_fd())?;
    dirs::sync(dirs.cur.as_fd())?;
    end(dirs)?;
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip_and_only_plain_names_pass() {
        let names: Vec<(bool, &[u8])> = vec![
            (false, b"1.a,S=3,W=4"),
            (true, b"2.b:2,S"),
            (true, b"odd\nname\xff"),
        ];
        let record = encode(names.iter().copied());
        let parsed = parse(&record).unwrap();
        assert_eq!(
            parsed,
            names
                .iter()
                .map(|&(c, n)| (c, n.to_vec()))
                .collect::<Vec<_>>()
        );
        assert_eq!(parse(&encode(std::iter::empty())), Some(vec![]));

        for bad in [
            &b"../../etc/passwd"[..],
            b"..",
            b".",
            b"a/b",
            b"a\0b",
            b".hidden",
            b"",
            &[b'x'; 256][..],
        ] {
            let record = encode([(false, bad)].into_iter());
            assert_eq!(parse(&record), None, "{bad:?}");
        }
        // Torn, foreign, trailing garbage, bad hex.
        assert_eq!(parse(&record[..record.len() - 2]), None);
        assert_eq!(parse(b"mailbag-update 2\n.\n"), None);
        assert_eq!(parse(b"mailbag-update 1\n.\nN 61\n"), None);
        assert_eq!(parse(b"mailbag-update 1\nN 6\n.\n"), None);
        assert_eq!(parse(b"mailbag-update 1\nN 6G\n.\n"), None);
        assert_eq!(
            parse(b"mailbag-update 1\nN 41\n.\n"),
            Some(vec![(false, b"A".to_vec())])
        );
        assert_eq!(parse(b"mailbag-update 1\nN 4A\n.\n"), None);
    }
}
