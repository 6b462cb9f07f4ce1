//! Courier's `courierpop3dsizelist`: the UIDLs Courier's POP3 server
//! showed for a Maildir.
//!
//! Courier's `pop3dserver.C` keeps, in the Maildir, a header line
//! `/<version> <next uid> <uidvalidity>` (versions 2 and 3) and one line
//! per message, `<file name> <size> <uid>:<uidvalidity>` (version 2) or
//! `<file name> <size> <uid>:<uidvalidity>:<utf8>` (version 3); the file
//! name may hold spaces (the last two fields are split off from the right)
//! and matches a message by its base name. The UIDL shown is
//! `UID<uid>-<uidvalidity>`, or `UID<uid>` when the UIDVALIDITY is 0, or,
//! for a line with UID 0 (Courier's oldest form), the base name with
//! every octet outside 0x21-0x7E and `'`, `"`, `+` written as `+XX`.
//!
//! The file is the mailbox owner's input: bounded in octets, lines and
//! line length, every name one path component, a base counted once (the
//! first line).

use super::name;

/// The file name inside the Maildir.
pub(crate) const FILE: &str = "courierpop3dsizelist";
/// The largest file read.
pub(crate) const MAX_OCTETS: u64 = 128 << 20;
/// The most lines trusted.
const MAX_LINES: usize = 1 << 21;
/// The longest line Courier reads whole (its buffer is 2048 octets).
const MAX_LINE: usize = 2028;

/// Parses the file into `(base, uidl)` pairs in the file's order, a base
/// at most once; `None` when the header is not version 2 or 3.
/// Malformed lines are skipped.
pub fn parse(bytes: &[u8]) -> Option<Vec<(Vec<u8>, String)>> {
    let header_end = memchr::memchr(b'\n', bytes)?;
    let header = bytes[..header_end].strip_prefix(b"/")?;
    let mut fields = header.split(|&b| b == b' ');
    let version = fields.next()?;
    if version != b"2" && version != b"3" {
        return None;
    }
    decimal(fields.next()?)?;
    let mut out: Vec<(Vec<u8>, String)> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut start = header_end + 1;
    while let Some(len) = memchr::memchr(b'\n', &bytes[start..]) {
        let line = &bytes[start..start + len];
        start += len + 1;
        if len > MAX_LINE {
            continue;
        }
        let Some((base, uidl)) = parse_line(line) else {
            continue;
        };
        if !seen.insert(base) {
            continue;
        }
        if out.len() == MAX_LINES {
            return None;
        }
        out.push((base.to_vec(), uidl));
    }
    Some(out)
}

/// One line: the base and the UIDL Courier shows for it.
fn parse_line(line: &[u8]) -> Option<(&[u8], String)> {
    let last = memchr::memrchr(b' ', line)?;
    let size_at = memchr::memrchr(b' ', &line[..last])?;
    let (file, size, ids) = (
        &line[..size_at],
        &line[size_at + 1..last],
        &line[last + 1..],
    );
    decimal(size)?;
    let mut ids = ids.split(|&b| b == b':');
    let uid = decimal(ids.next()?)?;
    let uidv = decimal(ids.next()?)?;
    if let Some(utf8) = ids.next() {
        decimal(utf8)?;
    }
    if ids.next().is_some() {
        return None;
    }
    let base = name::parse(file).base;
    if !name::is_message_name(base) {
        return None;
    }
    let uidl = match (uid, uidv) {
        (0, _) => escaped(base),
        (n, 0) => format!("UID{n}"),
        (n, v) => format!("UID{n}-{v}"),
    };
    Some((base, uidl))
}

/// Courier's oldest UIDL form: the base name, `+XX` for the octets it
/// cannot show as they are.
fn escaped(base: &[u8]) -> String {
    let mut out = String::with_capacity(base.len());
    for &b in base {
        if !(0x21..=0x7E).contains(&b) || b == b'\'' || b == b'"' || b == b'+' {
            out.push_str(&format!("+{b:02X}"));
        } else {
            out.push(char::from(b));
        }
    }
    out
}

/// A decimal that fits in a u64 (Courier's `unsigned long`).
fn decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        digits
            .iter()
            .fold(0u64, |n, &d| n * 10 + u64::from(d - b'0')),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_2_and_3_and_the_oldest_form() {
        let file = b"/3 9 1700000000\n\
1700000001.M1.host:2,S 120 1:1700000000:0\n\
1700000002.M2.host 130 2:1700000000\n\
name with spaces 5 3:0:1\n\
old+one'\" 5 0:0:0\n\
1700000001.M1.host 1 7:7:0\n\
bad size x 4:1:0\n\
../evil 1 5:1:0\n\
a/b 1 6:1:0\n\
toomany 1 8:1:0:0\n\
huge 1 99999999999999999999:1:0\n\
nul\0name 1 11:1:0\n\
neg 1 -1:1:0\n\
 1 9:1:0\n\
half 1 10:1";
        let got = parse(file).unwrap();
        let got: Vec<(&[u8], &str)> = got
            .iter()
            .map(|(b, u)| (b.as_slice(), u.as_str()))
            .collect();
        assert_eq!(
            got,
            vec![
                (&b"1700000001.M1.host"[..], "UID1-1700000000"),
                (&b"1700000002.M2.host"[..], "UID2-1700000000"),
                (&b"name with spaces"[..], "UID3"),
                (&b"old+one'\""[..], "old+2Bone+27+22"),
            ]
        );
        assert_eq!(
            parse(b"/2 1 5\nm 1 1:5\n").unwrap(),
            vec![(b"m".to_vec(), "UID1-5".into())]
        );
        for bad in [&b""[..], b"/4 1 1\n", b"/3 x 1\n", b"3 1 1\n", b"/3 1 1"] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }
}
