//! How much a Maildir holds (messages and CRLF octets in new/ and cur/),
//! for quota checks at delivery.
//!
//! Cheap by design: one listing of each directory, sizes from the `W=`
//! field of the name where there is one (all that mailbag delivers), then
//! `S=`, and only for names with neither a `stat`. Never reads a message
//! and never takes the session lock, so a delivery is not held up by an
//! open POP3 session. A missing Maildir holds nothing.

use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::name;
use crate::store::Usage;

/// Counts the messages of `maildir` and their sizes.
pub(crate) fn usage(maildir: &Path) -> io::Result<Usage> {
    let mut total = Usage::default();
    for sub in ["new", "cur"] {
        let dir = match std::fs::read_dir(maildir.join(sub)) {
            Ok(dir) => dir,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for dirent in dir {
            let dirent = dirent?;
            let file_name = dirent.file_name();
            let bytes = file_name.as_bytes();
            // The same files a snapshot counts: no dotfiles, regular files.
            if bytes.first().is_none_or(|&b| b == b'.')
                || !dirent.file_type().is_ok_and(|t| t.is_file())
            {
                continue;
            }
            let parsed = name::parse(bytes);
            let octets = match parsed.crlf_size.or(parsed.stored_size) {
                Some(n) => n,
                None => match dirent.metadata() {
                    Ok(meta) => meta.len(),
                    // Removed by another program since the listing.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                },
            };
            total.messages += 1;
            total.octets = total.octets.saturating_add(octets);
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_new_and_cur_by_name_then_by_length() {
        let dir = tempfile::tempdir().unwrap();
        let md = dir.path().join("Maildir");
        assert_eq!(usage(&md).unwrap(), Usage::default());
        for sub in ["tmp", "new", "cur"] {
            std::fs::create_dir_all(md.join(sub)).unwrap();
        }
        // W= wins over S= and over the real length.
        std::fs::write(md.join("new/1.a,S=5,W=7"), b"x").unwrap();
        std::fs::write(md.join("cur/2.b,S=9:2,S"), b"x").unwrap();
        std::fs::write(md.join("cur/3.c"), b"four").unwrap();
        // Not messages.
        std::fs::write(md.join("tmp/4.d,W=1000"), b"x").unwrap();
        std::fs::write(md.join("cur/.hidden,W=1000"), b"x").unwrap();
        std::fs::create_dir(md.join("new/5.e,W=1000")).unwrap();
        assert_eq!(
            usage(&md).unwrap(),
            Usage {
                messages: 3,
                octets: 7 + 9 + 4
            }
        );
    }
}
