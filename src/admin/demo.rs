//! `mailbag demo`: a ready server for trying mailbag by hand.
//!
//! Everything lives in one directory that the demo names and reuses: an
//! ordinary config file (so `mailbag serve --config <dir>/mailbag.toml`
//! serves the same thing), a passwd-file with the demo user, and the
//! user's Maildir seeded with sample messages on first run, and a
//! self-signed certificate for STLS and implicit TLS. Nothing
//! outside that directory is touched.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::store::maildir;

/// The demo user's name.
pub const USER: &str = "demo";
/// The demo user's password.
pub const PASSWORD: &str = "demo";
/// The demo's POP3 address (STLS offered): loopback only.
pub const POP3_ADDR: &str = "127.0.0.1:1110";
/// The demo's LMTP address: loopback only, since LMTP has no login.
pub const LMTP_ADDR: &str = "127.0.0.1:2424";
/// The demo's implicit-TLS address.
pub const POP3S_ADDR: &str = "127.0.0.1:1995";

const SAMPLES: [&[u8]; 5] = [
    include_bytes!("demo/1-welcome.eml"),
    include_bytes!("demo/2-meeting.eml"),
    include_bytes!("demo/3-newsletter.eml"),
    include_bytes!("demo/4-invoice.eml"),
    include_bytes!("demo/5-cron.eml"),
];

fn config_text() -> String {
    format!(
        r#"# mailbag demo configuration, written by `mailbag demo`.
# Relative paths are relative to this file's directory.
# Serve it with: mailbag serve --config <this file>

[pop3]
listen = ["{POP3_ADDR}"]
listen_tls = ["{POP3S_ADDR}"]

# A self-signed certificate that `mailbag demo` generated for localhost.
[tls]
certificate = "tls/cert.pem"
key = "tls/key.pem"

[lmtp]
listen = ["{LMTP_ADDR}"]

[store]
kind = "maildir"
root = "mail"
path = "{{root}}/{{domain}}/{{user}}/Maildir"
default_domain = "localhost"

[auth]
passwd_file = "passwd"
failure_delay_ms = 2000
max_failures = 3
"#
    )
}

/// Creates (or reuses) the demo directory and returns its config file.
pub fn prepare(dir: &Path) -> io::Result<PathBuf> {
    fs::create_dir_all(dir)?;
    let dir = dir.canonicalize()?;
    let config = dir.join("mailbag.toml");
    if !config.exists() {
        write_new(&config, config_text().as_bytes(), 0o644)?;
    }
    let tls = dir.join("tls");
    if !tls.join("cert.pem").exists() {
        fs::create_dir_all(&tls)?;
        let _ = fs::remove_file(tls.join("key.pem"));
        crate::server::tls::write_self_signed(
            &["localhost", "127.0.0.1"],
            &tls.join("cert.pem"),
            &tls.join("key.pem"),
        )?;
    }
    let passwd = dir.join("passwd");
    if !passwd.exists() {
        // A plaintext-equivalent secret, so that APOP works in the demo
        // too; `mailbag user add` writes ARGON2ID hashes for real users.
        write_new(
            &passwd,
            format!("{USER}:{{PLAIN}}{PASSWORD}\n").as_bytes(),
            0o600,
        )?;
    }
    let maildir = dir.join("mail/localhost").join(USER).join("Maildir");
    if !maildir.exists() {
        for sample in SAMPLES {
            maildir::deliver(&maildir, sample)?;
        }
    }
    Ok(config)
}

fn write_new(path: &Path, contents: &[u8], mode: u32) -> io::Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)?;
    f.write_all(contents)?;
    f.sync_all()
}
