//! Throwaway system accounts and PAM service files for the tests that
//! log in through PAM or have Postfix deliver to them. Every name starts
//! with [`PREFIX`]; accounts and files are removed when their guard is
//! dropped (a failed assertion included), and [`sweep`] removes what a
//! killed test run left behind. All of it needs root.

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// What every throwaway account and PAM service file is named after.
pub const PREFIX: &str = "mbt";

/// A system account made for one test, removed when dropped.
pub struct Account {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

fn run(program: &str, args: &[&str]) {
    let out = Command::new(program).args(args).output().expect(program);
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A name no other account has: the prefix, a tag, this process and a
/// counter
/// (at most 32 characters, as useradd requires).
pub fn unique_name(tag: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{PREFIX}{tag}-{:x}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

impl Account {
    /// A login account (`system`: a UID below 1000 instead) with
    /// `password`, in its own group plus `groups`.
    pub fn create(tag: &str, password: &str, system: bool, groups: &[&str]) -> Account {
        let name = unique_name(tag);
        let mut args = vec![
            "--no-create-home",
            "--user-group",
            "--shell",
            "/usr/sbin/nologin",
        ];
        if system {
            args.push("--system");
        }
        let joined = groups.join(",");
        if !groups.is_empty() {
            args.extend(["--groups", joined.as_str()]);
        }
        args.push(&name);
        run("useradd", &args);
        // Removed from here on, whatever happens next.
        let mut account = Account {
            name,
            uid: 0,
            gid: 0,
        };
        let found = nix::unistd::User::from_name(&account.name)
            .unwrap()
            .expect("the new account");
        (account.uid, account.gid) = (found.uid.as_raw(), found.gid.as_raw());
        assert_ne!(account.uid, 0);
        account.set_password(password);
        account
    }

    /// Sets the account's system password (hashed by chpasswd as the
    /// system is set to: yescrypt on Debian 12).
    pub fn set_password(&self, password: &str) {
        use std::io::Write;
        let mut child = Command::new("chpasswd")
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("chpasswd");
        writeln!(child.stdin.take().unwrap(), "{}:{password}", self.name).unwrap();
        assert!(child.wait().unwrap().success(), "chpasswd {}", self.name);
    }

    #[cfg_attr(not(feature = "pam"), allow(dead_code))]
    /// `usermod -L`: a `!` before the stored hash.
    pub fn lock(&self) {
        run("usermod", &["-L", &self.name]);
    }

    #[cfg_attr(not(feature = "pam"), allow(dead_code))]
    /// `chage -E 0`: expired since 1 January 1970.
    pub fn expire(&self) {
        run("chage", &["-E", "0", &self.name]);
    }
}

impl Drop for Account {
    fn drop(&mut self) {
        remove_account(&self.name);
    }
}

fn remove_account(name: &str) {
    let _ = Command::new("userdel").arg(name).output();
    let _ = Command::new("groupdel").arg(name).output();
}

#[cfg_attr(not(feature = "pam"), allow(dead_code))]
/// A PAM service file `/etc/pam.d/<name>` for one test, removed when
/// dropped.
pub struct PamService {
    pub name: String,
    path: PathBuf,
}

#[cfg_attr(not(feature = "pam"), allow(dead_code))]
impl PamService {
    /// The service, with the text of the shipped `contrib/pam.d/mailbag`.
    pub fn shipped() -> PamService {
        let text = std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/pam.d/mailbag"),
        )
        .unwrap();
        PamService::with_text(&text)
    }

    /// A service file with `text`.
    pub fn with_text(text: &str) -> PamService {
        let name = unique_name("pam");
        let path = PathBuf::from("/etc/pam.d").join(&name);
        std::fs::write(&path, text).unwrap();
        PamService { name, path }
    }
}

impl Drop for PamService {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg_attr(not(feature = "pam"), allow(dead_code))]
/// Whether the tests can make accounts (root, with useradd); if not,
/// says so as a skipped test.
pub fn can_make_accounts(test: &str) -> bool {
    let ok =
        nix::unistd::geteuid().is_root() && Command::new("useradd").arg("--help").output().is_ok();
    if !ok {
        println!("SKIPPED {test}: it makes system accounts, which needs root and useradd");
    }
    ok
}

/// Removes accounts and PAM service files left by an earlier run that
/// was killed, except this process's own (other tests of this run may be
/// using them).
pub fn sweep() {
    let own = format!("-{:x}-", std::process::id());
    let ours = |name: &str| name.starts_with(PREFIX) && !name.contains(&own);
    // Only names this module makes: the prefix, a tag, `-pid-n`.
    let ours = |name: &str| {
        ours(name)
            && name[PREFIX.len()..]
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && name.contains('-')
    };
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
    for line in passwd.lines() {
        let name = line.split(':').next().unwrap_or("");
        if ours(name) {
            remove_account(name);
        }
    }
    for entry in std::fs::read_dir("/etc/pam.d")
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = entry.file_name().to_string_lossy().into_owned();
        if ours(&name) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}
