//! The two crypt(3) formats that predate SHA-crypt and that no maintained
//! crate verifies: MD5-crypt (`$1$salt$hash`, Poul-Henning Kamp's, as in
//! glibc, OpenSSL's `passwd -1` and Dovecot's `MD5-CRYPT`) and the
//! traditional 13-character DES crypt (two salt characters, eleven of
//! hash; Dovecot's `DES-CRYPT`).
//!
//! Owns: computing the hash part of either format from a password and the
//! stored salt, so the caller can compare it with the stored one.
//!
//! Must not: be used to make new values (both are broken by today's
//! standards: they are here only to let existing users log in), panic on
//! a malformed salt, or branch on the password's content.

use md5::{Digest as _, Md5};

/// crypt(3)'s base64 alphabet.
const ITOA64: &[u8; 64] = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// MD5-crypt reads at most eight salt characters.
const MD5_CRYPT_MAX_SALT: usize = 8;
const MD5_CRYPT_MAGIC: &[u8] = b"$1$";
const MD5_CRYPT_ROUNDS: usize = 1000;

fn itoa64_value(c: u8) -> Option<u32> {
    ITOA64
        .iter()
        .position(|&d| d == c)
        .and_then(|i| u32::try_from(i).ok())
}

/// Appends the low `chars * 6` bits of `value` in crypt base64, low bits
/// first (as MD5-crypt writes them).
fn push_b64_le(out: &mut String, mut value: u32, chars: usize) {
    for _ in 0..chars {
        out.push(char::from(ITOA64[(value & 0x3f) as usize]));
        value >>= 6;
    }
}

/// The 22-character hash part of an MD5-crypt value for `password` and
/// `salt` (the text between `$1$` and the next `$`; longer salts are cut
/// to eight characters, as every implementation does). `None` for a salt
/// holding a character crypt never writes there.
pub(super) fn md5_crypt_hash(password: &[u8], salt: &str) -> Option<String> {
    let salt = salt.as_bytes();
    let salt = &salt[..salt.len().min(MD5_CRYPT_MAX_SALT)];
    if salt
        .iter()
        .any(|&b| matches!(b, b'$' | b':' | b'\n' | b'\r' | 0))
    {
        return None;
    }
    let alternate = {
        let mut md5 = Md5::new();
        md5.update(password);
        md5.update(salt);
        md5.update(password);
        md5.finalize()
    };
    let mut md5 = Md5::new();
    md5.update(password);
    md5.update(MD5_CRYPT_MAGIC);
    md5.update(salt);
    let mut left = password.len();
    while left > 0 {
        let take = left.min(alternate.len());
        md5.update(&alternate[..take]);
        left -= take;
    }
    // The original's quirk: a zero byte for each set bit of the length,
    // the password's first byte for each clear one.
    let mut bits = password.len();
    while bits > 0 {
        if bits & 1 == 1 {
            md5.update([0u8]);
        } else {
            md5.update(&password[..1.min(password.len())]);
        }
        bits >>= 1;
    }
    let mut digest = md5.finalize();
    for round in 0..MD5_CRYPT_ROUNDS {
        let mut md5 = Md5::new();
        if round % 2 == 1 {
            md5.update(password);
        } else {
            md5.update(digest);
        }
        if round % 3 != 0 {
            md5.update(salt);
        }
        if round % 7 != 0 {
            md5.update(password);
        }
        if round % 2 == 1 {
            md5.update(digest);
        } else {
            md5.update(password);
        }
        digest = md5.finalize();
    }
    let d = |i: usize| u32::from(digest[i]);
    let mut out = String::with_capacity(22);
    for (a, b, c) in [(0, 6, 12), (1, 7, 13), (2, 8, 14), (3, 9, 15), (4, 10, 5)] {
        push_b64_le(&mut out, (d(a) << 16) | (d(b) << 8) | d(c), 4);
    }
    push_b64_le(&mut out, d(11), 2);
    Some(out)
}

// FIPS 46-3's tables, bit positions counted from 1 at the most
// significant bit.
const IP: [u8; 64] = [
    58, 50, 42, 34, 26, 18, 10, 2, 60, 52, 44, 36, 28, 20, 12, 4, 62, 54, 46, 38, 30, 22, 14, 6,
    64, 56, 48, 40, 32, 24, 16, 8, 57, 49, 41, 33, 25, 17, 9, 1, 59, 51, 43, 35, 27, 19, 11, 3, 61,
    53, 45, 37, 29, 21, 13, 5, 63, 55, 47, 39, 31, 23, 15, 7,
];
const FP: [u8; 64] = [
    40, 8, 48, 16, 56, 24, 64, 32, 39, 7, 47, 15, 55, 23, 63, 31, 38, 6, 46, 14, 54, 22, 62, 30,
    37, 5, 45, 13, 53, 21, 61, 29, 36, 4, 44, 12, 52, 20, 60, 28, 35, 3, 43, 11, 51, 19, 59, 27,
    34, 2, 42, 10, 50, 18, 58, 26, 33, 1, 41, 9, 49, 17, 57, 25,
];
const E: [u8; 48] = [
    32, 1, 2, 3, 4, 5, 4, 5, 6, 7, 8, 9, 8, 9, 10, 11, 12, 13, 12, 13, 14, 15, 16, 17, 16, 17, 18,
    19, 20, 21, 20, 21, 22, 23, 24, 25, 24, 25, 26, 27, 28, 29, 28, 29, 30, 31, 32, 1,
];
const P: [u8; 32] = [
    16, 7, 20, 21, 29, 12, 28, 17, 1, 15, 23, 26, 5, 18, 31, 10, 2, 8, 24, 14, 32, 27, 3, 9, 19,
    13, 30, 6, 22, 11, 4, 25,
];
const PC1: [u8; 56] = [
    57, 49, 41, 33, 25, 17, 9, 1, 58, 50, 42, 34, 26, 18, 10, 2, 59, 51, 43, 35, 27, 19, 11, 3, 60,
    52, 44, 36, 63, 55, 47, 39, 31, 23, 15, 7, 62, 54, 46, 38, 30, 22, 14, 6, 61, 53, 45, 37, 29,
    21, 13, 5, 28, 20, 12, 4,
];
const PC2: [u8; 48] = [
    14, 17, 11, 24, 1, 5, 3, 28, 15, 6, 21, 10, 23, 19, 12, 4, 26, 8, 16, 7, 27, 20, 13, 2, 41, 52,
    31, 37, 47, 55, 30, 40, 51, 45, 33, 48, 44, 49, 39, 56, 34, 53, 46, 42, 50, 36, 29, 32,
];
const SHIFTS: [u32; 16] = [1, 1, 2, 2, 2, 2, 2, 2, 1, 2, 2, 2, 2, 2, 2, 1];
const S: [[u8; 64]; 8] = [
    [
        14, 4, 13, 1, 2, 15, 11, 8, 3, 10, 6, 12, 5, 9, 0, 7, 0, 15, 7, 4, 14, 2, 13, 1, 10, 6, 12,
        11, 9, 5, 3, 8, 4, 1, 14, 8, 13, 6, 2, 11, 15, 12, 9, 7, 3, 10, 5, 0, 15, 12, 8, 2, 4, 9,
        1, 7, 5, 11, 3, 14, 10, 0, 6, 13,
    ],
    [
        15, 1, 8, 14, 6, 11, 3, 4, 9, 7, 2, 13, 12, 0, 5, 10, 3, 13, 4, 7, 15, 2, 8, 14, 12, 0, 1,
        10, 6, 9, 11, 5, 0, 14, 7, 11, 10, 4, 13, 1, 5, 8, 12, 6, 9, 3, 2, 15, 13, 8, 10, 1, 3, 15,
        4, 2, 11, 6, 7, 12, 0, 5, 14, 9,
    ],
    [
        10, 0, 9, 14, 6, 3, 15, 5, 1, 13, 12, 7, 11, 4, 2, 8, 13, 7, 0, 9, 3, 4, 6, 10, 2, 8, 5,
        14, 12, 11, 15, 1, 13, 6, 4, 9, 8, 15, 3, 0, 11, 1, 2, 12, 5, 10, 14, 7, 1, 10, 13, 0, 6,
        9, 8, 7, 4, 15, 14, 3, 11, 5, 2, 12,
    ],
    [
        7, 13, 14, 3, 0, 6, 9, 10, 1, 2, 8, 5, 11, 12, 4, 15, 13, 8, 11, 5, 6, 15, 0, 3, 4, 7, 2,
        12, 1, 10, 14, 9, 10, 6, 9, 0, 12, 11, 7, 13, 15, 1, 3, 14, 5, 2, 8, 4, 3, 15, 0, 6, 10, 1,
        13, 8, 9, 4, 5, 11, 12, 7, 2, 14,
    ],
    [
        2, 12, 4, 1, 7, 10, 11, 6, 8, 5, 3, 15, 13, 0, 14, 9, 14, 11, 2, 12, 4, 7, 13, 1, 5, 0, 15,
        10, 3, 9, 8, 6, 4, 2, 1, 11, 10, 13, 7, 8, 15, 9, 12, 5, 6, 3, 0, 14, 11, 8, 12, 7, 1, 14,
        2, 13, 6, 15, 0, 9, 10, 4, 5, 3,
    ],
    [
        12, 1, 10, 15, 9, 2, 6, 8, 0, 13, 3, 4, 14, 7, 5, 11, 10, 15, 4, 2, 7, 12, 9, 5, 6, 1, 13,
        14, 0, 11, 3, 8, 9, 14, 15, 5, 2, 8, 12, 3, 7, 0, 4, 10, 1, 13, 11, 6, 4, 3, 2, 12, 9, 5,
        15, 10, 11, 14, 1, 7, 6, 0, 8, 13,
    ],
    [
        4, 11, 2, 14, 15, 0, 8, 13, 3, 12, 9, 7, 5, 10, 6, 1, 13, 0, 11, 7, 4, 9, 1, 10, 14, 3, 5,
        12, 2, 15, 8, 6, 1, 4, 11, 13, 12, 3, 7, 14, 10, 15, 6, 8, 0, 5, 9, 2, 6, 11, 13, 8, 1, 4,
        10, 7, 9, 5, 0, 15, 14, 2, 3, 12,
    ],
    [
        13, 2, 8, 4, 6, 15, 11, 1, 10, 9, 3, 14, 5, 0, 12, 7, 1, 15, 13, 8, 10, 3, 7, 4, 12, 5, 6,
        11, 0, 14, 9, 2, 7, 11, 4, 1, 9, 12, 14, 2, 0, 6, 10, 13, 15, 3, 5, 8, 2, 1, 14, 7, 4, 10,
        8, 13, 15, 12, 9, 0, 3, 5, 6, 11,
    ],
];

/// The bits of `input` (`width` bits wide) picked by `table`, most
/// significant first.
fn permute(input: u64, width: u32, table: &[u8]) -> u64 {
    table.iter().fold(0u64, |out, &position| {
        (out << 1) | ((input >> (width - u32::from(position))) & 1)
    })
}

/// The sixteen 48-bit round keys of a 64-bit DES key.
fn round_keys(key: u64) -> [u64; 16] {
    const MASK28: u64 = (1 << 28) - 1;
    let cd = permute(key, 64, &PC1);
    let (mut c, mut d) = (cd >> 28, cd & MASK28);
    let mut keys = [0u64; 16];
    for (k, shift) in keys.iter_mut().zip(SHIFTS) {
        c = ((c << shift) | (c >> (28 - shift))) & MASK28;
        d = ((d << shift) | (d >> (28 - shift))) & MASK28;
        *k = permute((c << 28) | d, 56, &PC2);
    }
    keys
}

/// One DES encryption of `block`, with the expansion table `e` (FIPS's
/// `E`, or crypt(3)'s salted variant of it).
fn des_encrypt(block: u64, keys: &[u64; 16], e: &[u8; 48]) -> u64 {
    let permuted = permute(block, 64, &IP);
    let (mut left, mut right) = (permuted >> 32, permuted & 0xffff_ffff);
    for key in keys {
        let mixed = permute(right, 32, e) ^ key;
        let substituted = S.iter().enumerate().fold(0u64, |out, (i, sbox)| {
            let six = ((mixed >> (42 - 6 * i)) & 0x3f) as usize;
            let row = ((six >> 4) & 0b10) | (six & 1);
            let column = (six >> 1) & 0xf;
            (out << 4) | u64::from(sbox[row * 16 + column])
        });
        let next = left ^ permute(substituted, 32, &P);
        left = right;
        right = next;
    }
    permute((right << 32) | left, 64, &FP)
}

/// The 11-character hash part of a traditional DES crypt value for
/// `password` and the stored two-character `salt`. Only the first eight
/// password octets count (their low seven bits each), as in crypt(3).
/// `None` for a salt that is not two crypt base64 characters.
pub(super) fn des_crypt_hash(password: &[u8], salt: &str) -> Option<String> {
    let salt = salt.as_bytes();
    let [first, second] = salt else {
        return None;
    };
    let salt_bits = itoa64_value(*first)? | (itoa64_value(*second)? << 6);
    let mut e = E;
    for bit in 0..12 {
        if (salt_bits >> bit) & 1 == 1 {
            e.swap(bit, bit + 24);
        }
    }
    let key = (0..8).fold(0u64, |key, i| {
        let octet = password.get(i).copied().unwrap_or(0);
        (key << 8) | u64::from(octet << 1)
    });
    let keys = round_keys(key);
    let block = (0..25).fold(0u64, |block, _| des_encrypt(block, &keys, &e));
    // 64 bits as eleven characters, most significant first, two zero
    // bits of padding at the end.
    let padded = u128::from(block) << 2;
    let out = (0..11)
        .map(|i| char::from(ITOA64[((padded >> (60 - 6 * i)) & 0x3f) as usize]))
        .collect();
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn des_matches_the_textbook_example() {
        // The worked example found in most DES course notes.
        let keys = round_keys(0x1334_5779_9BBC_DFF1);
        assert_eq!(
            des_encrypt(0x0123_4567_89AB_CDEF, &keys, &E),
            0x85E8_1354_0F0A_B405
        );
    }

    #[test]
    fn des_crypt_matches_mkpasswd() {
        // `mkpasswd -m descrypt -S <salt> <password>`.
        assert_eq!(des_crypt_hash(b"hunter2", "ab").unwrap(), "0ozUNIgzCZ.");
        assert_eq!(
            des_crypt_hash(b"correct horse", "Zz").unwrap(),
            "iV3MgI7K8nk"
        );
        assert_eq!(des_crypt_hash(b"correcth", "./").unwrap(), "AiYKKR992l6");
        assert_eq!(des_crypt_hash(b"x", "a"), None);
        assert_eq!(des_crypt_hash(b"x", "a!"), None);
        assert_eq!(des_crypt_hash(b"x", "abc"), None);
    }

    #[test]
    fn md5_crypt_matches_openssl_and_mkpasswd() {
        // `openssl passwd -1 -salt x p`.
        assert_eq!(md5_crypt_hash(b"p", "x").unwrap(), "hiN0EG1U2OVhvWQBid7j81");
        // `mkpasswd -m md5crypt -S saltsalt ...`: a password longer than
        // one MD5 digest.
        assert_eq!(
            md5_crypt_hash(b"a password longer than sixteen octets", "saltsalt").unwrap(),
            "9IdYUYmN/G9XPA/CEGhXj/"
        );
        assert_eq!(md5_crypt_hash(b"p", "a$b"), None);
    }
}
