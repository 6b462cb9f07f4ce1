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

use super::dirs::{self, Dirs, Location};
use super::{name, Sub};
use crate::store::{StoreError, Usage};

/// Counts the messages of the Maildir at `at` and their sizes.
pub(crate) fn usage(at: &Location) -> Result<Usage, StoreError> {
    let mut total = Usage::default();
    let Some(dirs) = Dirs::open(at, false)? else {
        return Ok(total);
    };
    for sub in [Sub::New, Sub::Cur] {
        let dir = dirs.sub(sub);
        for file_name in dirs::list_files(dir)? {
            let parsed = name::parse(file_name.as_bytes());
            let octets = match parsed.crlf_size.or(parsed.stored_size) {
                Some(n) => n,
                None => match dirs::file_len(dir, &file_name) {
                    Ok(Some(len)) => len,
                    // Removed by another program since the listing, or
                    // not a message.
                    Ok(None) => continue,
                    Err(e) if e.kind() == io::ErrorKind::Other => continue,
                    Err(e) => return Err(e.into()),
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

    fn usage(md: &std::path::Path) -> Result<Usage, StoreError> {
        super::usage(&Location::of_path(md)?)
    }

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
