//! Message sizes in CRLF octets (RFC 1939 §5: what LIST reports and RETR
//! sends before dot-stuffing), and `mailbag.sizes`, the per-Maildir cache
//! of sizes for messages whose names carry no `W=` field.
//!
//! The cache is untrusted input: a malformed line is skipped, and a size is
//! only ever looked up for a base name that is on disk. Maildir messages
//! are immutable and base names unique, so a cached size stays valid for
//! as long as its base name exists.
//!
//! Format: the line `mailbag-sizes 1`, then one line per message,
//! `<decimal size> <base name bytes>`, each ending in LF, sorted by base
//! name. Base names that contain LF are never cached.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::fd::AsFd;

use mailbag_proto::dot::SizeCounter;

use super::dirs::{self, Dirs};
use super::name;

/// The file name of the cache inside the Maildir.
pub(crate) const CACHE_FILE: &str = "mailbag.sizes";
/// The largest cache read (about a million entries); a larger file is
/// not one mailbag wrote, and is ignored rather than read into memory.
const MAX_OCTETS: u64 = 64 << 20;
const HEADER: &[u8] = b"mailbag-sizes 1\n";
/// The most entries a cache is trusted with (about a million, as for the
/// listing): each costs a few tens of octets of index at every login,
/// and a short line only four octets of file, so a cache of made-up
/// lines within [`MAX_OCTETS`] would cost hundreds of megabytes. A larger
/// cache is no cache.
const MAX_ENTRIES: usize = 1 << 20;

/// The CRLF size of a file's content, read in chunks.
///
/// Holes are not read: a hole is zeros, which hold no LF, so it adds its
/// length and nothing else. The time a measurement takes is then bounded
/// by the data the file really holds (which a disk quota bounds), not by
/// its length, which a sparse file sets at will (a 10 TB message costs its
/// owner nothing but would cost the server hours of reading at every
/// login). Filesystems without `SEEK_DATA` are read whole.
pub(crate) fn file_crlf_size(file: &mut File) -> io::Result<u64> {
    use nix::errno::Errno;
    use nix::unistd::{lseek, Whence};
    use std::os::unix::fs::FileExt;

    let mut counter = SizeCounter::new();
    // Octets of holes beyond the one zero fed for each.
    let mut zeros: u64 = 0;
    let mut hole = |counter: &mut SizeCounter, from: u64, to: u64| {
        if to > from {
            counter.feed(&[0]);
            zeros = zeros.saturating_add(to - from - 1);
        }
    };
    let mut buf = vec![0u8; 64 * 1024];
    let mut pos: u64 = 0;
    let offset = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
    loop {
        let data = match lseek(file.as_fd(), offset(pos), Whence::SeekData) {
            Ok(at) => u64::try_from(at).unwrap_or(pos),
            // No data at or after `pos`: the rest is one hole.
            Err(Errno::ENXIO) => {
                let end = file.metadata()?.len();
                hole(&mut counter, pos, end);
                break;
            }
            // No hole support here: everything is data.
            Err(_) => pos,
        };
        hole(&mut counter, pos, data);
        pos = data;
        let data_end = match lseek(file.as_fd(), offset(pos), Whence::SeekHole) {
            Ok(at) => u64::try_from(at).unwrap_or(u64::MAX),
            Err(_) => u64::MAX,
        };
        let mut at_end = false;
        while pos < data_end {
            let want = usize::try_from(data_end - pos).map_or(buf.len(), |w| w.min(buf.len()));
            match file.read_at(&mut buf[..want], pos) {
                Ok(0) => {
                    at_end = true;
                    break;
                }
                Ok(n) => {
                    counter.feed(&buf[..n]);
                    pos += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if at_end || data_end == u64::MAX {
            break;
        }
    }
    Ok(counter.finish().saturating_add(zeros))
}

#[derive(Debug, Default)]
pub(crate) struct SizeCache {
    bytes: Vec<u8>,
    lines: Vec<(Range<usize>, u64)>,
    /// Where the previous hit was: a snapshot asks in delivery-time order,
    /// which for timestamped names is the cache's order, so the next
    /// answer is usually the next line and needs no search.
    cursor: usize,
}

impl SizeCache {
    pub(crate) fn get(&mut self, base: &[u8]) -> Option<u64> {
        let line = |i: usize| &self.bytes[self.lines[i].0.clone()];
        let at = if self.cursor < self.lines.len() && line(self.cursor) == base {
            self.cursor
        } else {
            self.lines
                .binary_search_by(|(range, _)| self.bytes[range.clone()].cmp(base))
                .ok()?
        };
        self.cursor = at + 1;
        Some(self.lines[at].1)
    }

    /// Starts the next round of lookups from the first line.
    pub(crate) fn rewind(&mut self) {
        self.cursor = 0;
    }

    pub(crate) fn len(&self) -> usize {
        self.lines.len()
    }
}

/// Reads the cache. A missing, unreadable or foreign file is an empty
/// cache: it only ever saves work.
pub(crate) fn load(dirs: &Dirs) -> SizeCache {
    match dirs::read_small(dirs.maildir.as_fd(), CACHE_FILE, MAX_OCTETS) {
        Ok(Some(bytes)) => parse(bytes),
        Ok(None) => SizeCache::default(),
        Err(e) => {
            super::warn_once(&dirs.path, "size cache cannot be read; ignored", &e);
            SizeCache::default()
        }
    }
}

/// The entries of a cache file, `(base, size)` in the cache's order; for
/// the fuzz target and tests. Every base is one path component.
pub fn parse_entries(bytes: &[u8]) -> Vec<(Vec<u8>, u64)> {
    let cache = parse(bytes.to_vec());
    cache
        .lines
        .iter()
        .map(|(range, size)| (cache.bytes[range.clone()].to_vec(), *size))
        .collect()
}

/// Parses a cache file: malformed lines, and lines whose base is not one
/// path component, are skipped.
pub(crate) fn parse(bytes: Vec<u8>) -> SizeCache {
    let mut lines = Vec::new();
    if bytes.starts_with(HEADER) {
        let mut start = HEADER.len();
        while start < bytes.len() {
            let end = memchr::memchr(b'\n', &bytes[start..]).map_or(bytes.len(), |i| start + i);
            if let Some(size) = parse_line(&bytes[start..end]) {
                if lines.len() == MAX_ENTRIES {
                    return SizeCache::default();
                }
                let sp = memchr::memchr(b' ', &bytes[start..end]).unwrap_or(0);
                lines.push((start + sp + 1..end, size));
            }
            start = end + 1;
        }
    }
    let mut cache = SizeCache {
        bytes,
        lines,
        cursor: 0,
    };
    let bytes = &cache.bytes;
    // Written sorted; sort anyway when someone else wrote it.
    if !cache
        .lines
        .is_sorted_by(|(a, _), (b, _)| bytes[a.clone()] <= bytes[b.clone()])
    {
        cache
            .lines
            .sort_unstable_by(|(a, _), (b, _)| bytes[a.clone()].cmp(&bytes[b.clone()]));
    }
    cache
}

/// The size of one `<size> <base>` line, `None` when malformed.
fn parse_line(line: &[u8]) -> Option<u64> {
    let sp = memchr::memchr(b' ', line)?;
    let (digits, base) = (&line[..sp], &line[sp + 1..]);
    // 19 digits always fit in a u64.
    if !name::is_component(base) || digits.is_empty() || digits.len() > 19 {
        return None;
    }
    if !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        digits
            .iter()
            .fold(0u64, |n, &d| n * 10 + u64::from(d - b'0')),
    )
}

/// Replaces the cache atomically (write a temporary file, fsync, rename,
/// all relative to the Maildir's descriptor). The caller holds the
/// maildrop lock, so the temporary name is ours.
pub(crate) fn store<'a>(
    dirs: &Dirs,
    entries: impl Iterator<Item = (&'a [u8], u64)>,
) -> io::Result<()> {
    let mut entries: Vec<(&[u8], u64)> = entries.collect();
    entries.sort_unstable();
    let mut out = Vec::with_capacity(HEADER.len() + entries.len() * 64);
    out.extend_from_slice(HEADER);
    for (base, size) in entries {
        if base.contains(&b'\n') || !name::is_component(base) {
            continue;
        }
        out.extend_from_slice(size.to_string().as_bytes());
        out.push(b' ');
        out.extend_from_slice(base);
        out.push(b'\n');
    }
    // A torn cache after a crash would give wrong sizes; fsync before
    // the rename makes the file either old or complete.
    dirs::replace(dirs.maildir.as_fd(), CACHE_FILE, &out, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Holes count as the zeros they read as, wherever they are: at the
    /// start, between data (also right after a CR, which a hole's zero
    /// keeps from pairing with a later LF), and at the end.
    #[test]
    fn sparse_files_measure_as_their_zeros() {
        use std::io::{Seek, SeekFrom, Write};
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sparse");
        let cases: Vec<Vec<(u64, &[u8])>> = vec![
            vec![],
            vec![(0, b"a\nb\r\n")],
            vec![(1 << 20, b"x\n")],
            vec![(0, b"head\r"), (3 << 20, b"\nmid\n"), (9 << 20, b"")],
            vec![(0, b"\n"), (5 << 20, b"tail")],
        ];
        for (n, writes) in cases.iter().enumerate() {
            let mut file = File::create(&path).unwrap();
            let mut dense = Vec::new();
            for &(at, bytes) in writes {
                if bytes.is_empty() {
                    file.set_len(at).unwrap();
                } else {
                    file.write_all_at(bytes, at).unwrap();
                }
                let end = (at as usize + bytes.len()).max(dense.len());
                dense.resize(end, 0);
                dense[at as usize..at as usize + bytes.len()].copy_from_slice(bytes);
            }
            file.flush().unwrap();
            let mut file = File::open(&path).unwrap();
            file.seek(SeekFrom::Start(0)).unwrap();
            assert_eq!(
                file_crlf_size(&mut file).unwrap(),
                mailbag_proto::dot::canonical_size(&dense),
                "case {n}"
            );
        }
    }

    #[test]
    fn cache_round_trips_and_skips_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let md = dir.path().join("Maildir");
        let dirs = Dirs::open(&dirs::Location::of_path(&md).unwrap(), true)
            .unwrap()
            .unwrap();
        let names: Vec<(&[u8], u64)> = vec![(b"1.a", 10), (b"odd name\xff", 7), (b"nl\nname", 3)];
        store(&dirs, names.into_iter()).unwrap();
        let mut got = load(&dirs);
        assert_eq!(got.len(), 2);
        assert_eq!(got.get(b"1.a"), Some(10));
        assert_eq!(got.get(b"odd name\xff"), Some(7));
        assert_eq!(got.get(b"nl\nname"), None);

        let garbage =
            b"mailbag-sizes 1\n12\n x\n-1 a\n99999999999999999999 b\n1e3 c\n5 ok\n\xff\xff";
        let mut got = parse(garbage.to_vec());
        assert_eq!(got.len(), 1);
        assert_eq!(got.get(b"ok"), Some(5));
        assert_eq!(parse(b"5 ok\n".to_vec()).len(), 0);
        std::fs::remove_file(md.join(CACHE_FILE)).unwrap();
        assert_eq!(load(&dirs).len(), 0);

        let mut unsorted = parse(b"mailbag-sizes 1\n3 c\n1 a\n2 b".to_vec());
        for (name, size) in [
            (b"a", 1),
            (b"c", 3),
            (b"b", 2),
            (b"b", 2),
            (b"x", 0),
            (b"a", 1),
        ] {
            let want = (size > 0).then_some(size);
            assert_eq!(unsorted.get(name), want);
        }
    }

    #[test]
    fn only_plain_file_names_are_cached_bases() {
        let bytes = b"mailbag-sizes 1\n5 ../../etc/passwd\n6 a/b\n7 ..\n8 .\n9 a\0b\n10 ok\n";
        assert_eq!(parse_entries(bytes), vec![(b"ok".to_vec(), 10)]);
        let long = format!(
            "mailbag-sizes 1\n1 {}\n2 {}\n",
            "x".repeat(256),
            "y".repeat(255)
        );
        assert_eq!(
            parse_entries(long.as_bytes()),
            vec![("y".repeat(255).into_bytes(), 2)]
        );
    }
}
