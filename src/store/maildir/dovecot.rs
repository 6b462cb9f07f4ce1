//! Dovecot's `dovecot-uidlist` and its `pop3_uidl_format`: the UIDLs a
//! Dovecot POP3 server showed for a Maildir.
//!
//! The file (written by Dovecot's `maildir-uidlist.c`) is a header line,
//! `3 V<uidvalidity> N<nextuid> G<mailbox guid> ...` (version 3) or
//! `1 <uidvalidity> <nextuid>` (version 1), then one line per message:
//! `<uid> [<key><value> ...] :<file name>` (version 3; keys are one
//! upper-case letter) or `<uid> <file name>` (version 1). The file name is
//! the base name, or (from old versions) the whole name with its info
//! part. Dovecot appends new lines in place, so a last line without LF may
//! be half written and is ignored.
//!
//! What Dovecot's POP3 server shows for a message (`pop3_get_uid` in
//! Dovecot's `pop3-commands.c`): the record's `P` field when there is one
//! (an empty `P` means the base name), else (with `pop3_reuse_xuidl`) the
//! `X-UIDL:` header, else `pop3_uidl_format` expanded with `%u` (the UID,
//! in decimal), `%v` (the UIDVALIDITY), `%f` (the base name) and `%g` (the
//! record's `G` field, else the base name). `%m` (a header MD5) is not
//! available from a Maildir in Dovecot (its POP3 server refuses the
//! UIDL command), so no client has seen such a UIDL and the template is
//! refused. Expansion follows Dovecot 2.3's `var_expand`:
//! `%[-][0][width][.[0][-]width][modifiers]<key>` or `%{long name}`, where
//! `X` turns a decimal into lower-case hex, `U`/`L` change case, `R`
//! reverses, `T` trims trailing white space and `M` is the MD5 in hex;
//! or Dovecot 2.4's `%{name | filter ...}` with `hex`, `hex(N)`, `lower`
//! and `upper`. The default, `%08Xu%08Xv` (2.4: `%{uid | hex(8)}%{uidvalidity
//! | hex(8)}`), is the UID then the UIDVALIDITY as eight lower-case hex
//! digits each.
//!
//! The file is the mailbox owner's input: bounded in octets, lines and
//! line length; every name must be one path component; UIDs must rise
//! (a line that breaks the order is skipped); a name listed twice counts
//! under its later UID, as in Dovecot.

use std::ops::Range;

use md5::Digest as _;

use super::name;

/// The file name inside the Maildir.
pub(crate) const FILE: &str = "dovecot-uidlist";
/// The largest file read (about a million messages of long names).
pub(crate) const MAX_OCTETS: u64 = 128 << 20;
/// The most records trusted.
const MAX_RECORDS: usize = 1 << 21;
/// The longest line looked at; a longer one is skipped (a base name is at
/// most 255 octets, the rest is a few fields).
const MAX_LINE: usize = 8 << 10;

/// One message's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The IMAP UID.
    pub uid: u32,
    /// The base name (before any ':').
    pub base: Range<usize>,
    /// The `P` field: `Some(empty)` means the base name.
    pub pop3_uidl: Option<Range<usize>>,
    /// The `G` field.
    pub guid: Option<Range<usize>>,
}

/// A parsed `dovecot-uidlist`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uidlist {
    /// 1 or 3.
    pub version: u8,
    /// The mailbox's UIDVALIDITY.
    pub uid_validity: u32,
    /// The records, in the file's (UID) order, a base at most once.
    pub records: Vec<Record>,
}

/// Parses a `dovecot-uidlist`: `None` when the header is not one of
/// version 1 or 3 with a UIDVALIDITY and next UID (Dovecot then starts
/// over, and so do its UIDLs). Malformed lines are skipped.
pub fn parse(bytes: &[u8]) -> Option<Uidlist> {
    let header_end = memchr::memchr(b'\n', bytes)?;
    let header = &bytes[..header_end];
    let (version, uid_validity, next_uid) = parse_header(header)?;
    if uid_validity == 0 || next_uid == 0 {
        return None;
    }
    let mut records: Vec<Record> = Vec::new();
    let mut prev_uid = 0u32;
    let mut start = header_end + 1;
    // Only complete lines: Dovecot appends in place.
    while let Some(len) = memchr::memchr(b'\n', &bytes[start..]) {
        let line = start..start + len;
        start += len + 1;
        if len > MAX_LINE {
            continue;
        }
        let Some(record) = parse_record(bytes, line, version) else {
            continue;
        };
        if record.uid <= prev_uid {
            continue;
        }
        prev_uid = record.uid;
        if records.len() == MAX_RECORDS {
            return None;
        }
        records.push(record);
    }
    // A base listed twice: the later UID counts (Dovecot drops the older).
    let mut order: Vec<usize> = (0..records.len()).collect();
    order.sort_by(|&a, &b| bytes[records[a].base.clone()].cmp(&bytes[records[b].base.clone()]));
    let mut drop = vec![false; records.len()];
    for pair in order.windows(2) {
        if bytes[records[pair[0]].base.clone()] == bytes[records[pair[1]].base.clone()] {
            drop[pair[0].min(pair[1])] = true;
        }
    }
    if drop.contains(&true) {
        let mut i = 0;
        records.retain(|_| {
            i += 1;
            !drop[i - 1]
        });
    }
    Some(Uidlist {
        version,
        uid_validity,
        records,
    })
}

/// `(version, uidvalidity, next uid)` of the header line.
fn parse_header(header: &[u8]) -> Option<(u8, u32, u32)> {
    match header {
        [b'1', b' ', rest @ ..] => {
            let mut fields = rest.split(|&b| b == b' ').filter(|f| !f.is_empty());
            let v = decimal(fields.next()?)?;
            let n = decimal(fields.next()?)?;
            Some((1, v, n))
        }
        [b'3', b' ', rest @ ..] => {
            let (mut v, mut n) = (None, None);
            for field in rest.split(|&b| b == b' ').filter(|f| !f.is_empty()) {
                match field {
                    [b'V', value @ ..] => v = Some(decimal(value)?),
                    [b'N', value @ ..] => n = Some(decimal(value)?),
                    _ => {}
                }
            }
            Some((3, v?, n?))
        }
        _ => None,
    }
}

/// A decimal u32 of at most 10 digits.
fn decimal(digits: &[u8]) -> Option<u32> {
    if digits.is_empty() || digits.len() > 10 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = digits
        .iter()
        .fold(0u64, |n, &d| n * 10 + u64::from(d - b'0'));
    u32::try_from(n).ok()
}

/// One record line (`line` is its range in `bytes`, without the LF).
fn parse_record(bytes: &[u8], line: Range<usize>, version: u8) -> Option<Record> {
    let text = &bytes[line.clone()];
    let digits = text.iter().take_while(|b| b.is_ascii_digit()).count();
    let uid = decimal(&text[..digits])?;
    if uid == 0 || uid == u32::MAX || text.get(digits) != Some(&b' ') {
        return None;
    }
    let mut at = digits;
    while text.get(at) == Some(&b' ') {
        at += 1;
    }
    let (mut pop3_uidl, mut guid) = (None, None);
    if version == 3 {
        // Fields up to the ':' that starts the name.
        while at < text.len() && text[at] != b':' {
            let end = memchr::memchr(b' ', &text[at..]).map_or(text.len(), |i| at + i);
            let key = text[at];
            if !key.is_ascii_uppercase() {
                return None;
            }
            let value = line.start + at + 1..line.start + end;
            match key {
                b'P' => pop3_uidl = Some(value),
                b'G' => guid = Some(value),
                _ => {}
            }
            at = end;
            while text.get(at) == Some(&b' ') {
                at += 1;
            }
        }
        if text.get(at) != Some(&b':') {
            return None;
        }
        at += 1;
    }
    let full = &text[at..];
    let base_len = name::parse(full).base.len();
    let base = &full[..base_len];
    if !name::is_message_name(base) {
        return None;
    }
    Some(Record {
        uid,
        base: line.start + at..line.start + at + base_len,
        pop3_uidl,
        guid,
    })
}

/// One piece of a `pop3_uidl_format` template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Literal(Vec<u8>),
    Var(Var),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Var {
    key: Key,
    offset: i64,
    width: i64,
    zero_padding: bool,
    modifiers: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    Uid,
    UidValidity,
    FileName,
    Guid,
}

/// A Dovecot `pop3_uidl_format`, checked when the configuration is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pieces: Vec<Piece>,
    text: String,
}

/// Dovecot's default `pop3_uidl_format`.
pub const DEFAULT_FORMAT: &str = "%08Xu%08Xv";

/// The most modifiers one variable takes (Dovecot's limit).
const MAX_MODIFIERS: usize = 10;
/// The longest template accepted.
const MAX_TEMPLATE: usize = 256;
/// The largest width or offset accepted (a base name's longest length).
const MAX_WIDTH: i64 = 255;

impl Template {
    /// Parses `format`; the error says what is wrong, for check-config.
    pub fn parse(format: &str) -> Result<Template, String> {
        if format.len() > MAX_TEMPLATE {
            return Err(format!("longer than {MAX_TEMPLATE} characters"));
        }
        let bytes = format.as_bytes();
        let mut pieces: Vec<Piece> = Vec::new();
        let mut literal = Vec::new();
        let mut has_var = false;
        let mut i = 0;
        while i < bytes.len() {
            if bytes[i] != b'%' {
                literal.push(bytes[i]);
                i += 1;
                continue;
            }
            i += 1;
            let mut sign = 1i64;
            let (mut offset, mut width, mut zero_padding) = (0i64, 0i64, false);
            if bytes.get(i) == Some(&b'-') {
                sign = -1;
                i += 1;
            }
            if bytes.get(i) == Some(&b'0') {
                zero_padding = true;
                i += 1;
            }
            let number = |i: &mut usize| {
                let mut n = 0i64;
                while let Some(d @ b'0'..=b'9') = bytes.get(*i) {
                    n = (n * 10 + i64::from(d - b'0')).min(1 << 20);
                    *i += 1;
                }
                n
            };
            width = width.max(number(&mut i));
            if bytes.get(i) == Some(&b'.') {
                i += 1;
                offset = sign * width;
                sign = 1;
                zero_padding = false;
                if bytes.get(i) == Some(&b'0') {
                    zero_padding = true;
                    i += 1;
                }
                if bytes.get(i) == Some(&b'-') {
                    sign = -1;
                    i += 1;
                }
                width = sign * number(&mut i);
            }
            if width.abs() > MAX_WIDTH || offset.abs() > MAX_WIDTH {
                return Err(format!(
                    "a width or offset over {MAX_WIDTH} (a UIDL has at most 70 characters)"
                ));
            }
            let mut modifiers = Vec::new();
            while let Some(&m) = bytes.get(i) {
                if !b"LUEXRHNMDT".contains(&m) || modifiers.len() == MAX_MODIFIERS {
                    break;
                }
                if !b"LUXRMT".contains(&m) {
                    return Err(format!(
                        "the modifier {} is not supported (use X, U, L, R, T or M)",
                        char::from(m)
                    ));
                }
                modifiers.push(m);
                i += 1;
            }
            let Some(&k) = bytes.get(i) else {
                return Err("ends in the middle of a %variable".into());
            };
            let key = if k == b'{' {
                let close = bytes[i..]
                    .iter()
                    .position(|&b| b == b'}')
                    .ok_or("an unclosed %{")?;
                let long = &format[i + 1..i + close];
                i += close + 1;
                // Dovecot 2.4: `%{name | filter | filter(arg)}`.
                let mut parts = long.split('|').map(str::trim);
                let key = match parts.next().unwrap_or("") {
                    "uid" => Key::Uid,
                    "uidvalidity" => Key::UidValidity,
                    "filename" => Key::FileName,
                    "guid" => Key::Guid,
                    "md5" => return Err(md5_refused()),
                    other => return Err(format!("unknown variable %{{{other}}}")),
                };
                for filter in parts {
                    modifiers.extend(parse_filter(filter)?);
                }
                Some(key)
            } else {
                i += 1;
                match k {
                    b'u' => Some(Key::Uid),
                    b'v' => Some(Key::UidValidity),
                    b'f' => Some(Key::FileName),
                    b'g' => Some(Key::Guid),
                    b'%' => None,
                    b'm' => return Err(md5_refused()),
                    other => {
                        return Err(format!(
                            "unknown variable %{} (use %u, %v, %f or %g)",
                            char::from(other)
                        ))
                    }
                }
            };
            match key {
                None => literal.push(b'%'),
                Some(key) => {
                    has_var = true;
                    if !literal.is_empty() {
                        pieces.push(Piece::Literal(std::mem::take(&mut literal)));
                    }
                    pieces.push(Piece::Var(Var {
                        key,
                        offset,
                        width,
                        zero_padding,
                        modifiers,
                    }));
                }
            }
        }
        if !literal.is_empty() {
            pieces.push(Piece::Literal(literal));
        }
        if !has_var {
            // Dovecot refuses a format without a variable it knows.
            return Err("has none of %u, %v, %f, %g: every message would get the same UIDL".into());
        }
        Ok(Template {
            pieces,
            text: format.to_owned(),
        })
    }

    /// The template as configured.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The UIDL for one message, as Dovecot expands it.
    pub fn expand(&self, uid: u32, uid_validity: u32, base: &[u8], guid: Option<&[u8]>) -> Vec<u8> {
        let mut out = Vec::new();
        for piece in &self.pieces {
            match piece {
                Piece::Literal(l) => out.extend_from_slice(l),
                Piece::Var(var) => {
                    let value: Vec<u8> = match var.key {
                        Key::Uid => uid.to_string().into_bytes(),
                        Key::UidValidity => uid_validity.to_string().into_bytes(),
                        Key::FileName => base.to_vec(),
                        Key::Guid => guid.unwrap_or(base).to_vec(),
                    };
                    expand_var(var, value, &mut out);
                }
            }
            if out.len() > 4096 {
                break;
            }
        }
        out
    }
}

/// One Dovecot 2.4 filter, as modifier codes: `hex` and `hex(N)` (lower-
/// case hex, zero-padded to N and cut to its last N digits; a negative N
/// pads and cuts on the right), `lower`, `upper`.
fn parse_filter(filter: &str) -> Result<Vec<u8>, String> {
    match filter {
        "lower" => return Ok(vec![b'L']),
        "upper" => return Ok(vec![b'U']),
        "hex" => return Ok(vec![b'X']),
        _ => {}
    }
    let width = filter
        .strip_prefix("hex(")
        .and_then(|rest| rest.strip_suffix(')'))
        .and_then(|n| n.trim().parse::<i8>().ok())
        .filter(|n| n.unsigned_abs() <= 70)
        .ok_or_else(|| {
            format!("the filter \"{filter}\" is not supported (use hex, hex(N) with N up to 70, lower or upper)")
        })?;
    // `X`, then a width code: 'P' and the width as one octet.
    Ok(vec![b'X', b'P', width as u8])
}

fn md5_refused() -> String {
    "%m (the header MD5) is not available from a Maildir in Dovecot, so no client has seen such \
     a UIDL: use the pop3_uidl_format that Dovecot really served"
        .into()
}

/// One variable with its modifiers, offset and width, as Dovecot 2.3's
/// `var_expand` does it.
fn expand_var(var: &Var, mut value: Vec<u8>, out: &mut Vec<u8>) {
    let mut codes = var.modifiers.iter().copied();
    while let Some(m) = codes.next() {
        value = match m {
            // Dovecot 2.4's hex(N): pad with zeros to |N|, keep the last
            // N digits (N > 0) or pad and keep the first |N| (N < 0).
            b'P' => {
                let n = codes.next().unwrap_or(0) as i8;
                let width = usize::from(n.unsigned_abs());
                if n > 0 {
                    let mut v = vec![b'0'; width.saturating_sub(value.len())];
                    v.extend_from_slice(&value);
                    v.split_off(v.len() - width)
                } else if n < 0 {
                    value.resize(value.len().max(width), b'0');
                    value.truncate(width);
                    value
                } else {
                    value
                }
            }
            b'L' => value.to_ascii_lowercase(),
            b'U' => value.to_ascii_uppercase(),
            // A decimal to lower-case hex; anything else is 0.
            b'X' => {
                let text = std::str::from_utf8(&value).unwrap_or("");
                let n = if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
                    text.parse::<u64>().unwrap_or(0)
                } else {
                    0
                };
                format!("{n:x}").into_bytes()
            }
            b'R' => value.into_iter().rev().collect(),
            b'T' => {
                let keep = value
                    .iter()
                    .rposition(|b| !b" \t\n\r\x0b\x0c".contains(b))
                    .map_or(0, |i| i + 1);
                value.truncate(keep);
                value
            }
            b'M' => {
                let digest = md5::Md5::digest(&value);
                digest
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>()
                    .into_bytes()
            }
            _ => value,
        };
    }
    let mut v: &[u8] = &value;
    if var.offset < 0 {
        let from_end = var.offset.unsigned_abs() as usize;
        if v.len() > from_end {
            v = &v[v.len() - from_end..];
        }
    } else {
        let skip = (var.offset as usize).min(v.len());
        v = &v[skip..];
    }
    if var.width == 0 {
        out.extend_from_slice(v);
    } else if !var.zero_padding {
        let width = if var.width < 0 {
            v.len() as i64 + var.width
        } else {
            var.width
        };
        // A negative width wraps to "no limit" in Dovecot.
        let take = if width < 0 {
            v.len()
        } else {
            (width as usize).min(v.len())
        };
        out.extend_from_slice(&v[..take]);
    } else {
        let width = var.width.max(0) as usize;
        out.extend(std::iter::repeat_n(b'0', width.saturating_sub(v.len())));
        out.extend_from_slice(v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expand(format: &str, uid: u32, v: u32, base: &[u8], guid: Option<&[u8]>) -> String {
        String::from_utf8(Template::parse(format).unwrap().expand(uid, v, base, guid)).unwrap()
    }

    #[test]
    fn templates_expand_as_dovecot_does() {
        assert_eq!(
            expand(DEFAULT_FORMAT, 1, 1_700_000_000, b"b", None),
            "000000016553f100"
        );
        assert_eq!(
            expand("%08Xu%08Xv", 0xABCDEF, 5, b"b", None),
            "00abcdef00000005"
        );
        assert_eq!(expand("%XUu", 255, 0, b"b", None), "FF");
        assert_eq!(expand("%UXu", 255, 0, b"b", None), "ff");
        assert_eq!(expand("%u-%v", 42, 7, b"b", None), "42-7");
        assert_eq!(expand("%v.%u", 42, 7, b"b", None), "7.42");
        assert_eq!(expand("%f", 1, 1, b"123.M1P2.host", None), "123.M1P2.host");
        assert_eq!(expand("%g", 1, 1, b"base", None), "base");
        assert_eq!(expand("%g", 1, 1, b"base", Some(b"abc123")), "abc123");
        assert_eq!(expand("%{uid}x%{uidvalidity}", 3, 4, b"b", None), "3x4");
        assert_eq!(expand("%%%u", 3, 4, b"b", None), "%3");
        assert_eq!(expand("%05u", 3, 4, b"b", None), "00003");
        assert_eq!(expand("%3f", 3, 4, b"abcdef", None), "abc");
        assert_eq!(expand("%2.3f", 3, 4, b"abcdef", None), "cde");
        assert_eq!(expand("%-2.0f", 3, 4, b"abcdef", None), "ef");
        assert_eq!(expand("%.-2f", 3, 4, b"abcdef", None), "abcd");
        assert_eq!(expand("%Rf", 3, 4, b"abc", None), "cba");
        assert_eq!(
            expand("%Mu", 1, 4, b"abc", None),
            "c4ca4238a0b923820dcc509a6f75849b"
        );
        assert_eq!(expand("%Uf", 3, 4, b"abc", None), "ABC");
        assert_eq!(expand("%Lf", 3, 4, b"ABC", None), "abc");
        // Zero padding never truncates.
        assert_eq!(expand("%02u", 12345, 4, b"b", None), "12345");
        // Dovecot 2.4's syntax, its default first.
        let v24 = "%{uid | hex(8)}%{uidvalidity | hex(8)}";
        assert_eq!(
            expand(v24, 1, 1_700_000_000, b"b", None),
            "000000016553f100"
        );
        assert_eq!(expand("%{uid|hex(2)}", 0x1234, 4, b"b", None), "34");
        assert_eq!(expand("%{uid | hex(-6)}", 0xab, 4, b"b", None), "ab0000");
        assert_eq!(expand("%{uid | hex | upper}", 255, 4, b"b", None), "FF");
        assert_eq!(expand("%{filename | upper}", 1, 4, b"ab", None), "AB");
    }

    #[test]
    fn bad_templates_are_refused_with_a_reason() {
        for (bad, why) in [
            ("%m", "header MD5"),
            ("%{md5}", "header MD5"),
            ("%08Xm%08Xv", "header MD5"),
            ("%q", "unknown variable %q"),
            ("%{nope}", "unknown variable"),
            ("%{uid", "unclosed"),
            ("abc", "none of"),
            ("%%", "none of"),
            ("%u%", "middle"),
            ("%Eu", "modifier E"),
            ("%Hu", "modifier H"),
            ("%{uid | sha256}", "filter"),
            ("%{uid | hex(99)}", "filter"),
            ("%{uid | hex(x)}", "filter"),
        ] {
            let e = Template::parse(bad).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
        assert!(Template::parse(&"%u".repeat(200)).is_err());
        assert!(Template::parse("%080000Xu%08Xv").is_err());
        assert!(Template::parse("%300.2u").is_err());
        assert!(Template::parse("%255.255f").is_ok());
    }

    type Got<'a> = (u32, &'a [u8], Option<&'a [u8]>, Option<&'a [u8]>);

    #[test]
    fn version_3_records() {
        let file = b"3 V1700000000 N6 G0123456789abcdef0123456789abcdef\n\
1 :1700000001.M1P1.host,S=10,W=11\n\
2 W11 P :1700000002.M2P2.host\n\
3 PUIDL-3 GGUID3 W5 :1700000003.M3P3.host:2,S\n\
5 S1 :1700000005.M5.host\n\
4 :out.of.order\n\
6 lower :bad.key\n\
7 :../evil\n\
8 :a/b\n\
9 :\n\
10 :.dotfile\n\
10 :nul\0name\n\
x :nouid\n\
0 :zero\n\
11 :1700000001.M1P1.host,S=10,W=11\n\
13 P\xff\xfe :not.utf8\n\
12 :half";
        let list = parse(file).unwrap();
        assert_eq!((list.version, list.uid_validity), (3, 1_700_000_000));
        let got: Vec<Got> = list
            .records
            .iter()
            .map(|r| {
                (
                    r.uid,
                    &file[r.base.clone()],
                    r.pop3_uidl.clone().map(|p| &file[p]),
                    r.guid.clone().map(|g| &file[g]),
                )
            })
            .collect();
        assert_eq!(
            got,
            vec![
                (2, &b"1700000002.M2P2.host"[..], Some(&b""[..]), None),
                (
                    3,
                    &b"1700000003.M3P3.host"[..],
                    Some(&b"UIDL-3"[..]),
                    Some(&b"GUID3"[..])
                ),
                (5, &b"1700000005.M5.host"[..], None, None),
                (11, &b"1700000001.M1P1.host,S=10,W=11"[..], None, None),
                (13, &b"not.utf8"[..], Some(&b"\xff\xfe"[..]), None),
            ]
        );
    }

    #[test]
    fn version_1_and_bad_headers() {
        let list = parse(b"1 1234 10\n1 1.a.host:2,S\n2 2.b.host\n").unwrap();
        assert_eq!((list.version, list.uid_validity), (1, 1234));
        assert_eq!(list.records.len(), 2);
        for bad in [
            &b""[..],
            b"3 V1 N2",
            b"2 V1 N2\n",
            b"3 N2\n",
            b"3 V0 N2\n",
            b"3 V99999999999 N2\n",
            b"1 abc 2\n",
            b"\xff\xfe\n",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
        // Long lines and huge UIDs are skipped, not fatal.
        let long = format!(
            "3 V1 N2\n1 :{}\n4294967295 :max\n4294967296 :over\n2 :ok\n",
            "x".repeat(MAX_LINE)
        );
        let list = parse(long.as_bytes()).unwrap();
        assert_eq!(list.records.len(), 1);
    }
}
