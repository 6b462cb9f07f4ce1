//! Names the commit the binary is built from, for `mailbag --version`.
//!
//! `MAILBAG_COMMIT` wins (package builds from a tarball set it); otherwise
//! `git rev-parse --short HEAD` in a git checkout; otherwise `unknown`.
//! Cargo reruns this when HEAD moves (a new commit or a checkout).

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?;
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_string())
}

fn main() {
    println!("cargo:rerun-if-env-changed=MAILBAG_COMMIT");
    let commit = std::env::var("MAILBAG_COMMIT")
        .ok()
        .map(|c| c.trim().to_string())
        .filter(|c| !c.is_empty() && c.bytes().all(|b| b.is_ascii_graphic()));
    let commit = match commit {
        Some(c) => c,
        None => {
            // HEAD itself (a checkout) and the ref it points to (a
            // commit); `--git-path` finds both in a worktree too.
            for path in ["HEAD", "packed-refs"] {
                if let Some(p) = git(&["rev-parse", "--git-path", path]) {
                    println!("cargo:rerun-if-changed={p}");
                }
            }
            if let Some(head_ref) = git(&["symbolic-ref", "-q", "HEAD"]) {
                if let Some(p) = git(&["rev-parse", "--git-path", &head_ref]) {
                    println!("cargo:rerun-if-changed={p}");
                }
            }
            git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".into())
        }
    };
    println!(
        "cargo:rustc-env=MAILBAG_VERSION={} ({commit})",
        std::env::var("CARGO_PKG_VERSION").unwrap_or_default()
    );
}
