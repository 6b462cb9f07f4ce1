//! Test data: deterministic messages of an exact size, and Maildirs of
//! them for a range of users (`{root}/{domain}/{name}/Maildir`, messages in
//! new/ named `<base>,S=<octets on disk>,W=<octets with CRLF>` as Dovecot
//! and mailbag write them), plus passwd-file lines (`name:{PLAIN}password`
//! or a given hash) that mailbag and Dovecot both read.
//!
//! Benchmark data, not mail: files are written without fsync.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// A range of user names: `{prefix}{first}` .. `{prefix}{first+count-1}`.
#[derive(Debug, Clone)]
pub struct Users {
    /// Common start of every name.
    pub prefix: String,
    /// The first number.
    pub first: u64,
    /// How many users.
    pub count: u64,
}

impl Users {
    /// The `i`-th name, wrapping around the range.
    pub fn name(&self, i: u64) -> String {
        format!("{}{}", self.prefix, self.first + i % self.count.max(1))
    }
}

/// One message of exactly `size` octets on disk, with LF line endings
/// (as MDAs store them). Every 40th body line starts with '.', so RETR
/// exercises dot-stuffing. Messages shorter than their headers are cut.
pub fn message(seq: u64, size: usize) -> Vec<u8> {
    let mut m = format!(
        "Return-Path: <bench@localhost>\n\
         From: Bench <bench@localhost>\n\
         To: <user@localhost>\n\
         Subject: benchmark message {seq}\n\
         Message-ID: <{seq}.bench@localhost>\n\
         Date: Thu, 26 Nov 2026 10:00:00 +0000\n\
         \n"
    )
    .into_bytes();
    let mut line = 0u64;
    while m.len() < size {
        let lead: &[u8] = if line % 40 == 39 { b"." } else { b"" };
        m.extend_from_slice(lead);
        for i in 0..70u64 {
            m.push(b'a' + ((seq + line + i) % 26) as u8);
        }
        m.push(b'\n');
        line += 1;
    }
    m.truncate(size);
    if let Some(last) = m.last_mut() {
        *last = b'\n';
    }
    m
}

/// The size of `message` as POP3 counts it: every LF becomes CRLF.
pub fn crlf_size(message: &[u8]) -> u64 {
    let lfs = memchr::memchr_iter(b'\n', message).count();
    let crs_before_lf = message.windows(2).filter(|w| w == b"\r\n").count();
    (message.len() + lfs - crs_before_lf) as u64
}

/// `message` as it goes on the wire after `+OK`: CRLF line endings, dot
/// stuffed, and the terminating `.` line.
pub fn wire_form(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + message.len() / 30 + 3);
    for line in message.split_inclusive(|&b| b == b'\n') {
        if line.first() == Some(&b'.') {
            out.push(b'.');
        }
        let body = line.strip_suffix(b"\n").unwrap_or(line);
        let body = body.strip_suffix(b"\r").unwrap_or(body);
        out.extend_from_slice(body);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// What to generate.
pub struct Plan {
    /// The data root.
    pub root: PathBuf,
    /// The `{domain}` directory (mailbag's default_domain).
    pub domain: String,
    /// Whose Maildirs.
    pub users: Users,
    /// Messages per user.
    pub messages: u64,
    /// Octets per message, on disk.
    pub size: usize,
    /// A passwd-file to append the users to.
    pub passwd: Option<PathBuf>,
    /// Everyone's passwd-file field, e.g. `{PLAIN}pw`.
    pub stored: String,
    /// One mbox spool per user, `<root>/<user>`, instead of Maildirs.
    pub mbox: bool,
}

/// Writes the Maildirs and passwd lines; returns the number of files.
pub fn run(plan: &Plan) -> Result<u64> {
    let mut passwd = match &plan.passwd {
        Some(path) => Some(
            fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("open {}", path.display()))?,
        ),
        None => None,
    };
    let mut lines = String::new();
    let mut files = 0;
    for u in 0..plan.users.count {
        let name = plan.users.name(u);
        if plan.mbox {
            fs::create_dir_all(&plan.root)
                .with_context(|| format!("create {}", plan.root.display()))?;
            files += write_mbox(&plan.root.join(&name), plan.messages, plan.size)?;
            lines.push_str(&format!("{name}:{}\n", plan.stored));
            continue;
        }
        let maildir = plan.root.join(&plan.domain).join(&name).join("Maildir");
        for sub in ["new", "cur", "tmp"] {
            fs::create_dir_all(maildir.join(sub))
                .with_context(|| format!("create {}", maildir.display()))?;
        }
        for seq in 0..plan.messages {
            write_message(&maildir, seq, plan.size)?;
            files += 1;
        }
        lines.push_str(&format!("{name}:{}\n", plan.stored));
    }
    if let Some(file) = passwd.as_mut() {
        file.write_all(lines.as_bytes())?;
    }
    Ok(files)
}

/// One spool of `count` messages: each after a `From ` line and followed
/// by an empty line. The messages hold no `From ` lines, so the sizes a
/// server reports are the same as for the Maildir.
fn write_mbox(path: &Path, count: u64, size: usize) -> Result<u64> {
    let file = fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
    let mut out = std::io::BufWriter::with_capacity(1 << 20, file);
    for seq in 0..count {
        out.write_all(b"From bench@localhost Thu Nov 26 10:00:00 2026\n")?;
        out.write_all(&message(seq, size))?;
        out.write_all(b"\n")?;
    }
    out.flush()
        .with_context(|| format!("write {}", path.display()))?;
    Ok(count)
}

fn write_message(maildir: &Path, seq: u64, size: usize) -> Result<()> {
    let m = message(seq, size);
    // Distinct, ordered base names: the timestamp orders delivery.
    let name = format!(
        "{}.M{seq}P{}.bench,S={},W={}",
        1_700_000_000 + seq,
        std::process::id(),
        m.len(),
        crlf_size(&m)
    );
    let path = maildir.join("new").join(name);
    fs::write(&path, &m).with_context(|| format!("write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::body::BodyCounter;

    #[test]
    fn an_mbox_spool_holds_each_message_once_after_its_from_line() {
        let dir = std::env::temp_dir().join(format!("mailbag-bench-mbox-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("user");
        assert_eq!(write_mbox(&path, 3, 500).unwrap(), 3);
        let data = fs::read(&path).unwrap();
        fs::remove_dir_all(&dir).unwrap();
        let mut want = Vec::new();
        for seq in 0..3 {
            want.extend_from_slice(b"From bench@localhost Thu Nov 26 10:00:00 2026\n");
            want.extend_from_slice(&message(seq, 500));
            want.push(b'\n');
        }
        assert_eq!(data, want);
        // No message line starts with "From ": the spool splits in three.
        assert_eq!(data.windows(6).filter(|w| w == b"\nFrom ").count(), 2);
    }

    #[test]
    fn messages_have_the_exact_size_and_count_back_through_the_wire() {
        for size in [300, 301, 2048, 20 * 1024, 100_000] {
            let m = message(7, size);
            assert_eq!(m.len(), size);
            let wire = wire_form(&m);
            if size > 5000 {
                assert!(wire.windows(3).any(|w| w == b"\n.."), "no stuffed line");
            }
            let mut counter = BodyCounter::default();
            assert_eq!(counter.feed(&wire), wire.len());
            assert!(counter.is_done());
            assert_eq!(counter.octets(), crlf_size(&m));
        }
    }
}
