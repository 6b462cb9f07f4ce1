//! The store over real files: open, locks, reads and UPDATE.

use std::time::{Duration, Instant};

use std::os::unix::fs::MetadataExt;

use super::*;
use crate::store::{Maildrop, Store, StoreError};

fn store(dir: &Path, wait_ms: u64, stale: Duration) -> MboxStore {
    let template = format!("{}/%u", dir.display());
    MboxStore::new(
        &template,
        LockOptions {
            dotlock: true,
            fcntl: true,
            flock: false,
            stale,
            wait: Duration::from_millis(wait_ms),
        },
    )
    .unwrap()
}

const THREE: &[u8] = b"From a@x Mon Jan  1 00:00:00 2024\nSubject: one\n\nbody 1\n\n\
From b@x Mon Jan  1 00:00:00 2024\nSubject: two\n\nbody 2\n>From quoted\n\n\
From c@x Mon Jan  1 00:00:00 2024\nSubject: three\n\nbody 3\n\n";

async fn read_all(m: &mut MboxMaildrop, i: usize) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    m.read(i)
        .await
        .unwrap()
        .read_to_end(&mut out)
        .await
        .unwrap();
    out
}

#[tokio::test]
async fn a_missing_spool_is_an_empty_maildrop_and_stays_missing() {
    let t = tempfile::tempdir().unwrap();
    let s = store(t.path(), 100, Duration::from_secs(300));
    let m = s.open("alice".into()).await.unwrap();
    assert!(m.messages().is_empty());
    m.commit(&[], &[]).await.unwrap();
    assert!(!t.path().join("alice").exists());
    assert_eq!(s.usage("alice".into()).await.unwrap(), Usage::default());
}

#[tokio::test]
async fn messages_are_shown_as_stored_and_a_second_session_is_refused() {
    let t = tempfile::tempdir().unwrap();
    std::fs::write(t.path().join("alice"), THREE).unwrap();
    let s = store(t.path(), 100, Duration::from_secs(300));
    let mut m = s.open("alice".into()).await.unwrap();
    assert_eq!(m.messages().len(), 3);
    let two = b"Subject: two\n\nbody 2\n>From quoted\n";
    assert_eq!(read_all(&mut m, 1).await, two);
    assert_eq!(m.messages()[1].size, two.len() as u64 + 4);
    assert!(matches!(
        s.open("alice".into()).await,
        Err(StoreError::Locked)
    ));
    drop(m);
    s.open("alice".into()).await.unwrap();
}

#[tokio::test]
async fn symlinks_fifos_and_bad_names_are_refused() {
    let t = tempfile::tempdir().unwrap();
    std::fs::write(t.path().join("target"), THREE).unwrap();
    std::os::unix::fs::symlink(t.path().join("target"), t.path().join("alice")).unwrap();
    let fifo = std::process::Command::new("mkfifo")
        .arg(t.path().join("bob"))
        .status()
        .unwrap();
    assert!(fifo.success());
    let s = store(t.path(), 100, Duration::from_secs(300));
    for user in ["alice", "bob"] {
        match s.open(user.into()).await {
            Err(StoreError::Permanent(why)) => assert!(why.contains("regular"), "{why}"),
            other => panic!("{user}: {other:?}"),
        }
    }
    for user in ["../etc", ".hidden", "a/b", ""] {
        assert!(
            matches!(s.open(user.into()).await, Err(StoreError::Permanent(_))),
            "{user}"
        );
    }
    assert!(MboxStore::new("relative/%u", LockOptions::default()).is_err());
    assert!(MboxStore::new("/var/%u/mbox", LockOptions::default()).is_err());
}

#[tokio::test]
async fn a_delivery_during_the_session_is_not_blocked_and_is_kept_at_update() {
    let t = tempfile::tempdir().unwrap();
    std::fs::write(t.path().join("alice"), THREE).unwrap();
    let s = store(t.path(), 2000, Duration::from_secs(300));
    let m = s.open("alice".into()).await.unwrap();
    let uids: Vec<String> = m.messages().iter().map(|i| i.uid.clone()).collect();
    // The MTA's locks are free while the session runs.
    s.deliver("alice".into(), b"Subject: four\n\nFrom me\n".to_vec())
        .await
        .unwrap();
    assert_eq!(m.messages().len(), 3);
    m.commit(&[0], &[1]).await.unwrap();
    let mut m = s.open("alice".into()).await.unwrap();
    let now: Vec<String> = m.messages().iter().map(|i| i.uid.clone()).collect();
    assert_eq!(now.len(), 3);
    // UIDLs do not change when an earlier message goes.
    assert_eq!(now[..2], uids[1..]);
    assert_eq!(read_all(&mut m, 2).await, b"Subject: four\n\n>From me\n");
    let text = std::fs::read(t.path().join("alice")).unwrap();
    assert!(text.starts_with(b"From b@x"));
    // No journal or lock is left; the session lock file stays.
    let mut left: Vec<_> = std::fs::read_dir(t.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    left.sort();
    assert_eq!(left, ["alice", "alice.mailbag"]);
}

#[tokio::test]
async fn the_dotlock_is_waited_for_broken_when_stale_and_a_dead_sessions_is_taken_over() {
    let t = tempfile::tempdir().unwrap();
    std::fs::write(t.path().join("alice"), THREE).unwrap();
    let lock = t.path().join("alice.lock");
    // Held by an MTA: the open waits, then fails as temporary.
    std::fs::write(&lock, b"").unwrap();
    let s = store(t.path(), 200, Duration::from_secs(300));
    assert!(matches!(
        s.open("alice".into()).await,
        Err(StoreError::Temporary(_))
    ));
    assert!(lock.exists());
    // Stale by age: removed.
    let stale = store(t.path(), 200, Duration::ZERO);
    stale.open("alice".into()).await.unwrap();
    assert!(!lock.exists());
    // Left by a mailbag session that died: taken over at once.
    std::fs::write(&lock, b"mailbag-session 4242\n").unwrap();
    let started = Instant::now();
    let slow = store(t.path(), 60_000, Duration::from_secs(300));
    slow.open("alice".into()).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(!lock.exists());
    // A delivery's (another process may be appending): waited for.
    std::fs::write(&lock, b"mailbag 4242\n").unwrap();
    assert!(matches!(
        s.open("alice".into()).await,
        Err(StoreError::Temporary(_))
    ));
    assert!(lock.exists());
}

/// A dotlock whose modification time its writer set far in the future
/// is still stale once its change time is old enough: it cannot keep the
/// spool locked for good.
#[tokio::test]
async fn a_dotlock_dated_in_the_future_still_goes_stale() {
    let t = tempfile::tempdir().unwrap();
    std::fs::write(t.path().join("alice"), THREE).unwrap();
    let lock = t.path().join("alice.lock");
    let f = std::fs::File::create(&lock).unwrap();
    let future = std::time::SystemTime::now() + Duration::from_secs(100 * 365 * 24 * 3600);
    f.set_modified(future).unwrap();
    drop(f);
    let stale = store(t.path(), 200, Duration::ZERO);
    stale.open("alice".into()).await.unwrap();
    assert!(!lock.exists());
}

#[tokio::test]
async fn an_fcntl_lock_held_elsewhere_is_waited_for() {
    let t = tempfile::tempdir().unwrap();
    std::fs::write(t.path().join("alice"), THREE).unwrap();
    let other = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(t.path().join("alice"))
        .unwrap();
    assert!(lock::fcntl_lock(&other, nix::libc::F_WRLCK as i16).unwrap());
    let s = store(t.path(), 200, Duration::from_secs(300));
    assert!(matches!(
        s.open("alice".into()).await,
        Err(StoreError::Temporary(_))
    ));
    assert!(lock::fcntl_lock(&other, nix::libc::F_UNLCK as i16).unwrap());
    s.open("alice".into()).await.unwrap();
    // A classic POSIX lock, as Postfix and procmail take it, also keeps
    // the store out (even from within the same process).
    let mut classic = nix::libc::flock {
        l_type: nix::libc::F_WRLCK as i16,
        l_whence: nix::libc::SEEK_SET as i16,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    };
    nix::fcntl::fcntl(&other, nix::fcntl::FcntlArg::F_SETLK(&classic)).unwrap();
    assert!(matches!(
        s.open("alice".into()).await,
        Err(StoreError::Temporary(_))
    ));
    classic.l_type = nix::libc::F_UNLCK as i16;
    nix::fcntl::fcntl(&other, nix::fcntl::FcntlArg::F_SETLK(&classic)).unwrap();
    s.open("alice".into()).await.unwrap();
}

#[tokio::test]
async fn a_spool_rewritten_during_the_session_is_left_alone_at_update() {
    let t = tempfile::tempdir().unwrap();
    std::fs::write(t.path().join("alice"), THREE).unwrap();
    let s = store(t.path(), 200, Duration::from_secs(300));
    let m = s.open("alice".into()).await.unwrap();
    // A mail reader rewrites the file in place (a message removed).
    let shorter = &THREE[THREE.len() / 2..];
    std::fs::write(t.path().join("alice"), shorter).unwrap();
    assert!(m.commit(&[0], &[]).await.is_err());
    assert_eq!(std::fs::read(t.path().join("alice")).unwrap(), shorter);
    // Replaced by another file: the same.
    std::fs::write(t.path().join("alice"), THREE).unwrap();
    let m = s.open("alice".into()).await.unwrap();
    std::fs::write(t.path().join("new"), b"From z\n\nz\n\n").unwrap();
    std::fs::rename(t.path().join("new"), t.path().join("alice")).unwrap();
    assert!(m.commit(&[0], &[]).await.is_err());
    assert_eq!(
        std::fs::read(t.path().join("alice")).unwrap(),
        b"From z\n\nz\n\n"
    );
}

#[tokio::test]
async fn an_update_cut_short_is_finished_by_the_next_open() {
    for stop in [Stop::AfterJournal, Stop::MidOverwrite, Stop::AfterTruncate] {
        let t = tempfile::tempdir().unwrap();
        std::fs::write(t.path().join("alice"), THREE).unwrap();
        let s = store(t.path(), 200, Duration::from_secs(300));
        let mut m = s.open("alice".into()).await.unwrap();
        m.stop = stop;
        m.commit(&[1], &[]).await.unwrap();
        s.deliver("alice".into(), b"Subject: late\n\nx\n".to_vec())
            .await
            .unwrap();
        let mut m = s.open("alice".into()).await.unwrap();
        assert_eq!(m.messages().len(), 3, "{stop:?}");
        assert_eq!(read_all(&mut m, 0).await, b"Subject: one\n\nbody 1\n");
        assert_eq!(read_all(&mut m, 1).await, b"Subject: three\n\nbody 3\n");
        assert_eq!(read_all(&mut m, 2).await, b"Subject: late\n\nx\n");
    }
}

#[tokio::test]
async fn a_spool_beyond_the_message_limit_is_served_in_parts_and_kept_whole() {
    let t = tempfile::tempdir().unwrap();
    std::fs::write(t.path().join("alice"), THREE).unwrap();
    let opts = LockOptions::default();
    let m = MboxMaildrop::open_within(t.path(), "alice".into(), opts.clone(), 2).unwrap();
    assert_eq!(m.messages().len(), 2);
    m.commit(&[0], &[]).await.unwrap();
    let m = MboxMaildrop::open_within(t.path(), "alice".into(), opts, 2).unwrap();
    assert_eq!(m.messages().len(), 2);
    let text = std::fs::read(t.path().join("alice")).unwrap();
    // The first message's entry is 56 octets; the third, beyond the
    // snapshot, was kept as it was.
    assert_eq!(text, &THREE[56..]);
}

#[tokio::test]
async fn names_that_would_be_another_spools_side_file_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let s = store(t.path(), 100, Duration::from_secs(300));
    for user in [
        "alice.lock",
        "alice.mailbag",
        "alice.mailbag-journal",
        "a.mailbag-journal.new",
    ] {
        assert!(
            matches!(s.open(user.into()).await, Err(StoreError::Permanent(_))),
            "{user}"
        );
        assert!(
            s.deliver(user.into(), b"x\n".to_vec()).await.is_err(),
            "{user}"
        );
    }
    s.open("alice.locksmith".into()).await.unwrap();
}

#[tokio::test]
async fn update_keeps_the_spools_inode_and_mode() {
    use std::os::unix::fs::PermissionsExt;
    let t = tempfile::tempdir().unwrap();
    let path = t.path().join("alice");
    std::fs::write(&path, THREE).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o660)).unwrap();
    let before = std::fs::metadata(&path).unwrap();
    let s = store(t.path(), 100, Duration::from_secs(300));
    s.open("alice".into())
        .await
        .unwrap()
        .commit(&[0, 2], &[])
        .await
        .unwrap();
    let after = std::fs::metadata(&path).unwrap();
    assert_eq!(
        (
            after.ino(),
            after.uid(),
            after.gid(),
            after.permissions().mode()
        ),
        (
            before.ino(),
            before.uid(),
            before.gid(),
            before.permissions().mode()
        )
    );
    assert!(after.len() < before.len());
}

#[tokio::test]
async fn a_sparse_spool_is_parsed_without_reading_its_holes() {
    let t = tempfile::tempdir().unwrap();
    let path = t.path().join("alice");
    let f = std::fs::File::create(&path).unwrap();
    f.write_all_at(b"From a\n\nfirst\n\nFrom b\n\n", 0).unwrap();
    // A terabyte hole: reading it would take hours.
    f.set_len(1 << 40).unwrap();
    f.write_all_at(b"\n\nFrom c\n\nlast\n\n", 1 << 40).unwrap();
    drop(f);
    let s = store(t.path(), 100, Duration::from_secs(300));
    let m = s.open("alice".into()).await.unwrap();
    assert_eq!(m.messages().len(), 3);
    // "\nfirst\n" and "\nlast\n", in CRLF.
    assert_eq!(m.messages()[0].size, 9);
    assert_eq!(m.messages()[2].size, 8);
    // "\n", the hole from offset 23 as one line of zeros, its LF.
    assert_eq!(m.messages()[1].size, 2 + ((1u64 << 40) - 23) + 2);
}

/// A maildrop from the user's entry is the spool's file name in the spool
/// directory: two users naming one spool share it and its session lock;
/// a path of directories, or a name that is another spool's side file,
/// is refused before any file is touched.
#[tokio::test]
async fn a_maildrop_from_the_entry_names_the_spool_file_and_nothing_else() {
    let t = tempfile::tempdir().unwrap();
    std::fs::write(t.path().join("shared"), THREE).unwrap();
    let s = store(t.path(), 100, Duration::from_secs(300));
    let mailbox = |name| crate::store::Mailbox {
        name,
        maildrop: Some("shared"),
    };
    let m = s.open(mailbox("ann")).await.unwrap();
    assert_eq!(m.messages().len(), 3);
    assert!(matches!(
        s.open(mailbox("amy")).await,
        Err(StoreError::Locked)
    ));
    drop(m);
    assert_eq!(s.usage(mailbox("amy")).await.unwrap().messages, 3);
    assert!(!t.path().join("ann").exists() && !t.path().join("amy").exists());
    for bad in [
        "sub/shared",
        "../shared",
        "/etc/passwd",
        "shared.lock",
        "ann.mailbag-journal",
    ] {
        let mailbox = crate::store::Mailbox {
            name: "ann",
            maildrop: Some(bad),
        };
        assert!(
            matches!(s.open(mailbox).await, Err(StoreError::Permanent(_))),
            "{bad}"
        );
        assert!(
            matches!(
                s.deliver(mailbox, b"x\n".to_vec()).await,
                Err(StoreError::Permanent(_))
            ),
            "{bad}"
        );
    }
    assert!(!t.path().join("sub").exists() && !t.path().join("shared.lock").exists());
}
