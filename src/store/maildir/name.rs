//! Maildir file names: parsing `<base>[:2,<flags>]` with the `,S=` and
//! `,W=` size fields that Dovecot, Postfix and mailbag write, deriving the
//! UIDL and the delivery-time order, and making new unique names.
//!
//! Names come from a directory anyone with access to the Maildir can write
//! to, so everything here works on raw bytes and treats every name as
//! untrusted: a name that does not fit the grammar still yields a base, a
//! printable UIDL and a sort key. No IO except reading the hostname.

use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

/// The longest UIDL RFC 1939 §7 allows.
const MAX_UIDL_OCTETS: usize = 70;

/// One parsed file name from new/ or cur/.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ParsedName<'a> {
    /// Everything before the first ':': the part that never changes when
    /// another program moves the message or changes its flags.
    pub base: &'a [u8],
    /// The flags after ":2,", when the info part has that form.
    pub flags: Option<&'a [u8]>,
    /// True when there is a ':' info part that is not ":2,": experimental
    /// semantics (Maildir spec) that we must not rewrite.
    pub foreign_info: bool,
    /// The `S=` field: the on-disk length.
    pub stored_size: Option<u64>,
    /// The `W=` field: the size with CRLF line endings.
    pub crlf_size: Option<u64>,
    /// The leading decimal timestamp (delivery time in seconds).
    pub timestamp: Option<u64>,
}

/// Splits a file name into its parts. Never fails: any byte string is some
/// base name.
pub(crate) fn parse(name: &[u8]) -> ParsedName<'_> {
    let (base, info) = match memchr::memchr(b':', name) {
        Some(i) => (&name[..i], Some(&name[i + 1..])),
        None => (name, None),
    };
    let (flags, foreign_info) = match info {
        None => (None, false),
        Some(info) => match info.strip_prefix(b"2,") {
            Some(flags) => (Some(flags), false),
            None => (None, true),
        },
    };
    let mut stored_size = None;
    let mut crlf_size = None;
    if let Some(i) = memchr::memchr(b',', base) {
        for field in base[i + 1..].split(|&b| b == b',') {
            if let Some(n) = field.strip_prefix(b"S=") {
                stored_size = stored_size.or(parse_decimal(n));
            } else if let Some(n) = field.strip_prefix(b"W=") {
                crlf_size = crlf_size.or(parse_decimal(n));
            }
        }
    }
    let digits = base.iter().take_while(|b| b.is_ascii_digit()).count();
    let timestamp = parse_decimal(&base[..digits]);
    ParsedName {
        base,
        flags,
        foreign_info,
        stored_size,
        crlf_size,
        timestamp,
    }
}

/// The longest file name a directory entry can have (NAME_MAX).
pub(crate) const MAX_NAME_OCTETS: usize = 255;

/// Whether `name` is one path component as readdir could return it: not
/// empty, at most [`MAX_NAME_OCTETS`], no '/' and no NUL, not "." or "..".
/// Every name read from a cache file or a record inside a Maildir is
/// checked with this before it is used: those files are the mailbox
/// owner's, and a name that is a path could reach outside the directory.
pub(crate) fn is_component(name: &[u8]) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_OCTETS
        && name != b"."
        && name != b".."
        && !name.iter().any(|&b| b == b'/' || b == 0)
}

/// Whether `name` can be a message in new/ or cur/: one path component
/// that is not a dotfile.
pub(crate) fn is_message_name(name: &[u8]) -> bool {
    is_component(name) && name[0] != b'.'
}

/// A non-empty run of ASCII digits that fits in a u64.
fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    digits.iter().try_fold(0u64, |n, &d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// The UIDL of a base name: the name itself when it is a valid UIDL
/// (RFC 1939 §7: 1 to 70 characters in 0x21..=0x7E), else a digest, so
/// that it stays the same for the life of the message either way.
pub(crate) fn uidl(base: &[u8]) -> String {
    let printable = base.iter().all(|&b| (0x21..=0x7E).contains(&b));
    if !base.is_empty() && base.len() <= MAX_UIDL_OCTETS && printable {
        if let Ok(ascii) = std::str::from_utf8(base) {
            return ascii.to_owned();
        }
    }
    let digest = Sha256::digest(base);
    let mut hex = String::with_capacity(40);
    for b in &digest[..20] {
        hex.push(char::from(HEX[usize::from(b >> 4)]));
        hex.push(char::from(HEX[usize::from(b & 0x0F)]));
    }
    hex
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// The first sort key of a message: its delivery time, with names that
/// have no leading timestamp after all that do. Ties go by base name.
pub(crate) fn time_key(timestamp: Option<u64>) -> u128 {
    timestamp.map_or(u128::MAX, u128::from)
}

/// The file name in cur/ for a message that has been retrieved: the same
/// base with the S (seen) flag added, flags sorted by ASCII and without
/// repeats as the Maildir spec requires. `None` when the name already has
/// it or carries an info part we do not understand.
pub(crate) fn seen_name(name: &[u8]) -> Option<Vec<u8>> {
    let parsed = parse(name);
    if parsed.foreign_info {
        return None;
    }
    let mut flags: Vec<u8> = parsed.flags.unwrap_or_default().to_vec();
    if flags.contains(&b'S') {
        return None;
    }
    flags.push(b'S');
    flags.sort_unstable();
    flags.dedup();
    let mut out = Vec::with_capacity(parsed.base.len() + 3 + flags.len());
    out.extend_from_slice(parsed.base);
    out.extend_from_slice(b":2,");
    out.extend_from_slice(&flags);
    Some(out)
}

/// Distinguishes deliveries by one process within one microsecond.
static DELIVERIES: AtomicU64 = AtomicU64::new(0);

/// A fresh unique base name: `<secs>.M<micros>P<pid>Q<counter>.<host>`
/// (the Maildir spec's modern form; Dovecot writes the same shape). The
/// microseconds have six digits, so that names of one second sort in
/// delivery order: the snapshot orders by time, then by base name.
pub(crate) fn unique() -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let counter = DELIVERIES.fetch_add(1, AtomicOrdering::Relaxed);
    format!(
        "{}.M{:06}P{}Q{}.{}",
        now.as_secs(),
        now.subsec_micros(),
        std::process::id(),
        counter,
        hostname()
    )
}

/// The host name for unique names, escaped so that it cannot end the base
/// (':'), leave the directory ('/'), or start a size field (',').
fn hostname() -> &'static str {
    static HOST: OnceLock<String> = OnceLock::new();
    HOST.get_or_init(|| {
        let raw = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .or_else(|_| std::fs::read_to_string("/etc/hostname"))
            .unwrap_or_default();
        let raw = raw.trim();
        escape_hostname(if raw.is_empty() { "localhost" } else { raw })
    })
}

fn escape_hostname(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for b in raw.bytes() {
        // The Maildir spec escapes '/' and ':' as octal; ',' because our
        // size fields follow the first comma; the rest keeps UIDLs printable.
        if b == b'/' || b == b':' || b == b',' || b == b'\\' || !(0x21..=0x7E).contains(&b) {
            out.push_str(&format!("\\{b:03o}"));
        } else {
            out.push(char::from(b));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_with_sizes_and_flags() {
        let p = parse(b"1700000000.M1P2.host,S=1234,W=1260:2,RS");
        assert_eq!(p.base, b"1700000000.M1P2.host,S=1234,W=1260");
        assert_eq!(p.flags, Some(&b"RS"[..]));
        assert!(!p.foreign_info);
        assert_eq!(p.stored_size, Some(1234));
        assert_eq!(p.crlf_size, Some(1260));
        assert_eq!(p.timestamp, Some(1_700_000_000));
    }

    #[test]
    fn name_without_fields() {
        let p = parse(b"1700000000.12345.host");
        assert_eq!(p.base, b"1700000000.12345.host");
        assert_eq!((p.flags, p.stored_size, p.crlf_size), (None, None, None));
        assert_eq!(p.timestamp, Some(1_700_000_000));

        let p = parse(b"abc,S=12:2,");
        assert_eq!(p.base, b"abc,S=12");
        assert_eq!(p.flags, Some(&b""[..]));
        assert_eq!(
            (p.stored_size, p.crlf_size, p.timestamp),
            (Some(12), None, None)
        );
    }

    #[test]
    fn hostile_names_are_values() {
        for name in [
            &b""[..],
            b":",
            b",,,",
            b"1,S=,W=x:1,junk",
            b"99999999999999999999999.x,W=99999999999999999999999",
            b"\xff\xfe,W=-1",
            b"a:2,S:2,T",
        ] {
            let p = parse(name);
            let uid = uidl(p.base);
            assert!((1..=70).contains(&uid.len()));
            assert!(uid.bytes().all(|b| (0x21..=0x7E).contains(&b)));
        }
        assert!(parse(b"1,S=1:1,junk").foreign_info);
        assert_eq!(parse(b"1,S=1:1,junk").stored_size, Some(1));
    }

    #[test]
    fn any_bytes_give_a_valid_uidl_and_seen_name() {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let alphabet = b"0123456789.,:=SW2aFRT \xff\x00\n";
        for _ in 0..20_000 {
            let len = (next() % 90) as usize;
            let name: Vec<u8> = (0..len)
                .map(|_| alphabet[(next() % alphabet.len() as u64) as usize])
                .collect();
            let p = parse(&name);
            let uid = uidl(p.base);
            assert!((1..=70).contains(&uid.len()), "{name:?}");
            assert!(uid.bytes().all(|b| (0x21..=0x7E).contains(&b)));
            if let Some(seen) = seen_name(&name) {
                let q = parse(&seen);
                assert_eq!(q.base, p.base);
                assert!(q.flags.is_some_and(|f| f.contains(&b'S') && f.is_sorted()));
                assert_eq!(seen_name(&seen), None);
            }
        }
    }

    #[test]
    fn uidl_is_base_or_digest() {
        assert_eq!(
            uidl(b"1700000000.M1P2.host,S=12"),
            "1700000000.M1P2.host,S=12"
        );
        let long = [b'a'; 71];
        let d = uidl(&long);
        assert_eq!(d.len(), 40);
        assert!(d.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_eq!(d, uidl(&long));
        assert_eq!(uidl(b"has space").len(), 40);
        assert_ne!(uidl(b"has space"), uidl(b"has  space"));
        assert_eq!(uidl(&[b'b'; 70]).len(), 70);
    }

    #[test]
    fn seen_name_adds_s_sorted() {
        assert_eq!(seen_name(b"x").as_deref(), Some(&b"x:2,S"[..]));
        assert_eq!(seen_name(b"x:2,").as_deref(), Some(&b"x:2,S"[..]));
        assert_eq!(seen_name(b"x:2,TFR").as_deref(), Some(&b"x:2,FRST"[..]));
        assert_eq!(seen_name(b"x:2,aT").as_deref(), Some(&b"x:2,STa"[..]));
        assert_eq!(seen_name(b"x:2,FS"), None);
        assert_eq!(seen_name(b"x:1,whatever"), None);
    }

    #[test]
    fn order_by_time_then_name_untimed_last() {
        let mut v: Vec<&[u8]> = vec![b"zz", b"20.a", b"3.b", b"3.a", b"aa", b"100"];
        v.sort_by_key(|name| (time_key(parse(name).timestamp), *name));
        assert_eq!(v, vec![&b"3.a"[..], b"3.b", b"20.a", b"100", b"aa", b"zz"]);
    }

    #[test]
    fn unique_names_differ_and_hostname_is_escaped() {
        assert_ne!(unique(), unique());
        assert_eq!(escape_hostname("a/b:c,d"), "a\\057b\\072c\\054d");
        let u = unique();
        assert!(!u.contains([':', '/', ',']));
        let micros = u.split_once(".M").unwrap().1.split_once('P').unwrap().0;
        assert_eq!(micros.len(), 6, "{u}");
        assert_eq!(uidl(u.as_bytes()), u);
    }
}
