//! `mailbag.uidls`: the UIDLs this server has shown, where they could
//! otherwise change.
//!
//! A UIDL taken from another server's files (a `dovecot-uidlist`, a
//! `courierpop3dsizelist`, an `X-UIDL:` header, or a list fetched from the
//! old server) is only as stable as those files: Dovecot's IMAP side may
//! keep running on the same Maildir and add a message mailbag has already
//! shown under its own form. So once any such source is in play, every
//! message's UIDL is decided once, at the first open that lists it, and
//! that decision is written here (durably, before the UIDL is first
//! answered); later opens take it from here and never decide again.
//!
//! Format: the line `mailbag-uidls 1`, the line `S <seconds>` (when the
//! record began: messages delivered after it never take their UIDL from
//! an `X-UIDL:` header, which their sender wrote), then one line per
//! message, sorted by base name and each ending in LF: `F <uidl> <base>`
//! for a UIDL
//! other than the base-name form, `O <base>` for a message shown under
//! mailbag's own form. A UIDL is 1-70 octets of 0x21-0x7E (RFC 1939 §7),
//! so the first space after it ends it; a base is one path component
//! without LF (a message whose base has an LF is never recorded, and
//! keeps mailbag's own form).
//!
//! The file is the mailbox owner's input like every file in the Maildir:
//! bounded in octets and lines, malformed lines skipped, every base one
//! path component, the first line for a base the one that counts, and
//! a UIDL already given to another base not given twice.

use std::io;
use std::ops::Range;
use std::os::fd::AsFd;

use super::dirs::{self, Dirs};
use super::name;

/// The file name inside the Maildir.
pub(crate) const FILE: &str = "mailbag.uidls";
const HEADER: &[u8] = b"mailbag-uidls 1\n";
/// The largest file read (about a million lines of long names).
const MAX_OCTETS: u64 = 128 << 20;
/// The most lines trusted, as for the size cache: a file of made-up
/// short lines within [`MAX_OCTETS`] would otherwise cost a login
/// hundreds of megabytes of index.
const MAX_ENTRIES: usize = 1 << 20;

/// Whether `uidl` is a UIDL RFC 1939 §7 allows: 1 to 70 characters in
/// 0x21..=0x7E.
pub(crate) fn is_uidl(uidl: &[u8]) -> bool {
    (1..=70).contains(&uidl.len()) && uidl.iter().all(|&b| (0x21..=0x7E).contains(&b))
}

/// Whether `base` can be recorded: one path component without LF.
pub(crate) fn is_recordable(base: &[u8]) -> bool {
    name::is_component(base) && !base.contains(&b'\n')
}

/// One line: where its base is in the file's bytes, and where its UIDL
/// is (`None`: mailbag's own form).
#[derive(Debug, Clone)]
struct Line {
    base: Range<usize>,
    uidl: Option<Range<usize>>,
}

/// The parsed file.
#[derive(Debug, Default)]
pub(crate) struct Shown {
    bytes: Vec<u8>,
    /// Sorted by base, one line per base.
    lines: Vec<Line>,
    /// When the record began (Unix seconds); 0 when the file does not
    /// say.
    pub(crate) since: u64,
}

/// What the file says of one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decided<'a> {
    /// Shown under mailbag's own form.
    Own,
    /// Shown under this UIDL.
    Uidl(&'a str),
}

impl Shown {
    /// An empty record that begins at `since`.
    pub(crate) fn begun(since: u64) -> Shown {
        Shown {
            since,
            ..Shown::default()
        }
    }

    /// What was decided for `base`, if anything.
    pub(crate) fn get(&self, base: &[u8]) -> Option<Decided<'_>> {
        let at = self
            .lines
            .binary_search_by(|l| self.bytes[l.base.clone()].cmp(base))
            .ok()?;
        Some(self.decided(&self.lines[at]))
    }

    fn decided(&self, line: &Line) -> Decided<'_> {
        match &line.uidl {
            None => Decided::Own,
            // Checked as printable ASCII when parsed.
            Some(r) => Decided::Uidl(std::str::from_utf8(&self.bytes[r.clone()]).unwrap_or("")),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// Every line, `(base, decision)`, in base order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (&[u8], Decided<'_>)> {
        self.lines
            .iter()
            .map(|l| (&self.bytes[l.base.clone()], self.decided(l)))
    }
}

/// Parses the file: malformed lines are skipped, as are lines for a base
/// already seen and `F` lines whose UIDL an earlier line already has.
/// A file that does not start with the header, or has more than
/// [`MAX_ENTRIES`] lines, holds nothing.
pub(crate) fn parse(bytes: Vec<u8>) -> Shown {
    let mut lines = Vec::new();
    if !bytes.starts_with(HEADER) {
        return Shown::default();
    }
    let mut start = HEADER.len();
    let mut since = 0;
    while start < bytes.len() {
        let end = memchr::memchr(b'\n', &bytes[start..]).map_or(bytes.len(), |i| start + i);
        if bytes[start..end].starts_with(b"S ") {
            if since == 0 {
                since = since_line(&bytes[start..end]).unwrap_or(0);
            }
        } else if let Some(line) = parse_line(&bytes[start..end], start) {
            if lines.len() == MAX_ENTRIES {
                return Shown::default();
            }
            lines.push(line);
        }
        start = end + 1;
    }
    let mut shown = Shown {
        bytes,
        lines,
        since,
    };
    let bytes = &shown.bytes;
    // Written sorted; a stable sort keeps the first line of a base first.
    if !shown
        .lines
        .is_sorted_by(|a, b| bytes[a.base.clone()] <= bytes[b.base.clone()])
    {
        shown
            .lines
            .sort_by(|a, b| bytes[a.base.clone()].cmp(&bytes[b.base.clone()]));
    }
    shown
        .lines
        .dedup_by(|later, earlier| bytes[later.base.clone()] == bytes[earlier.base.clone()]);
    // A UIDL given to two bases: the first in file order keeps it.
    let mut by_file_order: Vec<usize> = (0..shown.lines.len())
        .filter(|&i| shown.lines[i].uidl.is_some())
        .collect();
    by_file_order.sort_unstable_by_key(|&i| shown.lines[i].base.start);
    let mut seen = std::collections::HashSet::with_capacity(by_file_order.len());
    let mut drop = vec![false; shown.lines.len()];
    for i in by_file_order {
        if let Some(r) = &shown.lines[i].uidl {
            if !seen.insert(&bytes[r.clone()]) {
                drop[i] = true;
            }
        }
    }
    if drop.contains(&true) {
        let mut i = 0;
        shown.lines.retain(|_| {
            i += 1;
            !drop[i - 1]
        });
    }
    shown
}

/// The time an `S <seconds>` line says the record began, `None` when the
/// line is malformed.
fn since_line(line: &[u8]) -> Option<u64> {
    let digits = line.strip_prefix(b"S ")?;
    (!digits.is_empty() && digits.len() <= 19 && digits.iter().all(u8::is_ascii_digit)).then(|| {
        digits
            .iter()
            .fold(0u64, |n, &d| n * 10 + u64::from(d - b'0'))
    })
}

/// One line at `offset` in the file, `None` when malformed.
fn parse_line(line: &[u8], offset: usize) -> Option<Line> {
    match line {
        [b'O', b' ', base @ ..] => is_recordable(base).then(|| Line {
            base: offset + 2..offset + line.len(),
            uidl: None,
        }),
        [b'F', b' ', rest @ ..] => {
            let sp = memchr::memchr(b' ', rest)?;
            let (uidl, base) = (&rest[..sp], &rest[sp + 1..]);
            (is_uidl(uidl) && is_recordable(base)).then(|| Line {
                base: offset + 2 + sp + 1..offset + line.len(),
                uidl: Some(offset + 2..offset + 2 + sp),
            })
        }
        _ => None,
    }
}

/// One entry of the file: a base and its UIDL, `None` for mailbag's own
/// form.
pub type ShownEntry = (Vec<u8>, Option<String>);

/// The entries of a file in base order; for the fuzz target and tests.
pub fn parse_entries(bytes: &[u8]) -> Vec<ShownEntry> {
    parse_with_since(bytes).1
}

/// When the record began (0: not said) and its entries, as
/// [`parse_entries`]; for the fuzz target.
pub fn parse_with_since(bytes: &[u8]) -> (u64, Vec<ShownEntry>) {
    let shown = parse(bytes.to_vec());
    let entries = shown
        .iter()
        .map(|(base, d)| {
            let uidl = match d {
                Decided::Own => None,
                Decided::Uidl(u) => Some(u.to_owned()),
            };
            (base.to_vec(), uidl)
        })
        .collect();
    (shown.since, entries)
}

/// The file for these entries, begun at `since`: sorted by base; entries
/// whose base or UIDL cannot be recorded are left out, as are later
/// entries for a base already there.
pub fn encode<'a>(
    since: u64,
    entries: impl Iterator<Item = (&'a [u8], Option<&'a str>)>,
) -> Vec<u8> {
    let mut entries: Vec<(&[u8], Option<&str>)> = entries
        .filter(|(base, uidl)| is_recordable(base) && uidl.is_none_or(|u| is_uidl(u.as_bytes())))
        .collect();
    entries.sort_by(|a, b| a.0.cmp(b.0));
    entries.dedup_by(|later, earlier| later.0 == earlier.0);
    let mut out = Vec::with_capacity(HEADER.len() + entries.len() * 48);
    out.extend_from_slice(HEADER);
    out.extend_from_slice(format!("S {since}\n").as_bytes());
    for (base, uidl) in entries {
        match uidl {
            None => out.extend_from_slice(b"O "),
            Some(uidl) => {
                out.extend_from_slice(b"F ");
                out.extend_from_slice(uidl.as_bytes());
                out.push(b' ');
            }
        }
        out.extend_from_slice(base);
        out.push(b'\n');
    }
    out
}

/// The longest line that can be well formed: `F `, a UIDL, a space, a
/// base name, LF.
const MAX_LINE: usize = 2 + 70 + 1 + name::MAX_NAME_OCTETS + 1;

/// Reads the file: `Ok(None)` when there is none, an error when it is
/// there but cannot be read (then nothing may be decided anew: what it
/// says is unknown). Only the first line for each base in `present`
/// (asked for once the file is open) is kept: the file is read a piece at
/// a time, so what a login holds is in proportion to the maildrop, not to
/// the file, which its owner may have forged to its limit.
pub(crate) fn load<'a>(
    dirs: &Dirs,
    present: impl FnOnce() -> std::collections::HashSet<&'a [u8]>,
) -> io::Result<Option<Shown>> {
    use std::io::{BufRead, Read};
    let file = match dirs::open_read(dirs.maildir.as_fd(), std::ffi::OsStr::new(FILE)) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::other(format!("{FILE} is not a regular file")));
    }
    let too_large = || io::Error::other(format!("{FILE} is larger than {MAX_OCTETS} octets"));
    if meta.len() > MAX_OCTETS {
        return Err(too_large());
    }
    let mut present = present();
    let mut reader = io::BufReader::with_capacity(64 << 10, file.take(MAX_OCTETS + 1));
    let mut kept = Vec::new();
    let mut line = Vec::with_capacity(MAX_LINE);
    let (mut read, mut overlong, mut first, mut since_kept) = (0u64, false, true, false);
    loop {
        let buf = reader.fill_buf()?;
        let (take, end) = match memchr::memchr(b'\n', buf) {
            Some(i) => (i + 1, true),
            None => (buf.len(), buf.is_empty()),
        };
        if !overlong && line.len() + take <= MAX_LINE {
            line.extend_from_slice(&buf[..take]);
        } else {
            overlong = true;
        }
        reader.consume(take);
        read += take as u64;
        if read > MAX_OCTETS {
            return Err(too_large());
        }
        if !end {
            continue;
        }
        if first {
            if line != HEADER {
                return Ok(Some(Shown::default()));
            }
            kept.extend_from_slice(HEADER);
            first = false;
        } else if !overlong {
            let text = line.strip_suffix(b"\n").unwrap_or(&line);
            if text.starts_with(b"S ") {
                // The first that says a time counts.
                if !since_kept && since_line(text).is_some_and(|t| t != 0) {
                    kept.extend_from_slice(text);
                    kept.push(b'\n');
                    since_kept = true;
                }
            } else if let Some(l) = parse_line(text, 0) {
                // The first line for a base is the one that counts.
                if present.remove(&text[l.base]) {
                    kept.extend_from_slice(text);
                    kept.push(b'\n');
                }
            }
        }
        line.clear();
        overlong = false;
        if take == 0 {
            return Ok(Some(parse(kept)));
        }
    }
}

/// Replaces the file crash-safely: a temporary file in the Maildir,
/// fsynced, renamed over the old one, the Maildir fsynced. The caller
/// holds the maildrop lock, so the temporary name is ours.
pub(crate) fn store<'a>(
    dirs: &Dirs,
    since: u64,
    entries: impl Iterator<Item = (&'a [u8], Option<&'a str>)>,
) -> io::Result<()> {
    let out = encode(since, entries);
    if out.len() as u64 > MAX_OCTETS {
        return Err(io::Error::other("too many UIDLs to record"));
    }
    dirs::replace(dirs.maildir.as_fd(), FILE, &out, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_in_base_order() {
        let entries: Vec<(&[u8], Option<&str>)> = vec![
            (b"2.b", None),
            (b"1.a", Some("0000000100000005")),
            (b"odd name\xff", Some("UID3-77")),
        ];
        let bytes = encode(1_700_000_000, entries.iter().copied());
        assert_eq!(parse_with_since(&bytes).0, 1_700_000_000);
        assert_eq!(
            parse_entries(&bytes),
            vec![
                (b"1.a".to_vec(), Some("0000000100000005".to_string())),
                (b"2.b".to_vec(), None),
                (b"odd name\xff".to_vec(), Some("UID3-77".to_string())),
            ]
        );
        let shown = parse(bytes);
        assert_eq!(shown.since, 1_700_000_000);
        assert_eq!(shown.get(b"2.b"), Some(Decided::Own));
        assert_eq!(shown.get(b"1.a"), Some(Decided::Uidl("0000000100000005")));
        assert_eq!(shown.get(b"3.c"), None);
    }

    #[test]
    fn hostile_lines_are_skipped() {
        let long_uidl = "u".repeat(71);
        let long_base = "b".repeat(256);
        let text = [format!(
            "mailbag-uidls 1\nF {long_uidl} a\nO {long_base}\nF x ../../etc/passwd\nF x a/b\nO ..\nO .\nF x\nF  a\nF x y\0z\nX y\nO ok\nF d\x7f e\n"
        )
        .into_bytes(), b"F \xff e\nF dup 1\nF dup 2\nO 1\nF uniq 3\n\xff\xfe".to_vec()]
        .concat();
        assert_eq!(
            parse_entries(&text),
            vec![
                (b"1".to_vec(), Some("dup".into())),
                (b"3".to_vec(), Some("uniq".into())),
                (b"ok".to_vec(), None),
            ]
        );
        // No header, another header: nothing.
        assert!(parse_entries(b"O ok\n").is_empty());
        assert!(parse_entries(b"mailbag-uidls 2\nO ok\n").is_empty());
        // Unsorted input is sorted; the first line of a base counts.
        assert_eq!(
            parse_entries(b"mailbag-uidls 1\nO c\nF u1 a\nO a\nF u2 b"),
            vec![
                (b"a".to_vec(), Some("u1".into())),
                (b"b".to_vec(), Some("u2".into())),
                (b"c".to_vec(), None),
            ]
        );
    }

    #[test]
    fn a_file_of_more_lines_than_trusted_holds_nothing() {
        let mut bytes = HEADER.to_vec();
        for _ in 0..=MAX_ENTRIES {
            bytes.extend_from_slice(b"O a\n");
        }
        assert!(parse_entries(&bytes).is_empty());
    }

    /// What `load` keeps is what `parse` makes of the whole file, for
    /// the bases asked for: the first line of each, lines too long to be
    /// well formed skipped, a last line without LF read.
    #[test]
    fn load_keeps_the_first_line_of_each_present_base() {
        let dir = tempfile::tempdir().unwrap();
        let md = dir.path().join("Maildir");
        for sub in ["new", "cur", "tmp"] {
            std::fs::create_dir_all(md.join(sub)).unwrap();
        }
        let dirs = Dirs::open(&dirs::Location::of_path(&md).unwrap(), false)
            .unwrap()
            .unwrap();
        let long = "b".repeat(MAX_LINE);
        let mut file = HEADER.to_vec();
        file.extend_from_slice(b"S 0\nS x\nS 1700000000\nS 5\n");
        for _ in 0..1000 {
            file.extend_from_slice(b"F u-gone gone\nS 7\n");
        }
        file.extend_from_slice(format!("O {long}\nF u1 a\nO a\nF u1 b\nO c\nO d").as_bytes());
        std::fs::write(md.join(FILE), &file).unwrap();
        let present = [&b"a"[..], b"b", b"c", b"d", long.as_bytes()];
        let shown = load(&dirs, || present.iter().copied().collect())
            .unwrap()
            .unwrap();
        let got: Vec<(&[u8], Decided<'_>)> = shown.iter().collect();
        assert_eq!(
            got,
            [
                (&b"a"[..], Decided::Uidl("u1")),
                (b"c", Decided::Own),
                (b"d", Decided::Own)
            ]
        );
        assert_eq!(shown.since, 1_700_000_000);
        assert_eq!(shown.since, parse(file).since);
        assert!(shown.bytes.len() < 80, "{}", shown.bytes.len());
        // Not a record at all: nothing recorded.
        std::fs::write(md.join(FILE), b"mailbag-uidls 2\nO a\n").unwrap();
        let shown = load(&dirs, || present.iter().copied().collect())
            .unwrap()
            .unwrap();
        assert_eq!(shown.iter().count(), 0);
        std::fs::remove_file(md.join(FILE)).unwrap();
        assert!(load(&dirs, || present.iter().copied().collect())
            .unwrap()
            .is_none());
    }

    #[test]
    fn unrecordable_entries_are_not_written() {
        let entries: Vec<(&[u8], Option<&str>)> = vec![
            (b"nl\nname", None),
            (b"a/b", None),
            (b"ok", Some("has space")),
            (b"ok2", Some("fine")),
        ];
        assert_eq!(
            parse_entries(&encode(0, entries.into_iter())),
            vec![(b"ok2".to_vec(), Some("fine".into()))]
        );
    }
}
